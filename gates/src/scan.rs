//! The static gate: parse each hot-path file with `syn` and report every prohibited item with
//! file:line and the contract's reason.
//!
//! What is looked at: paths (types, expressions, patterns, `use` trees flattened, attribute and
//! macro names), method calls, macro invocations, and `Box<dyn Error>`. Macro bodies that do not
//! parse as Rust expressions (`tokio::select!`) are scanned token by token for nested macros,
//! paths and method calls, so code inside them is not a blind spot. `#[cfg(test)]` items are
//! skipped: tests are not the hot path.

use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Attribute, Expr, Token};

use crate::contract::{BanKind, Contract, Prohibition, glob_match};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub prohibition: String,
    /// What was found, e.g. `std::sync::Mutex` or `format!`.
    pub item: String,
    pub reason: String,
}

/// Scans every hot-path file of `contract` under `root`.
pub fn scan_contract(root: &Path, contract: &Contract, features: &[String]) -> Result<(Vec<Violation>, usize), String> {
    let mut files = Vec::new();
    collect_rs(root, root, &mut files)?;
    files.sort();
    let mut violations = Vec::new();
    let mut scanned = 0;
    for rel in files {
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let excluded = contract.hot_path.exclude.iter().any(|e| e.path == rel_s && !e.unless_features.iter().any(|f| features.contains(f)));
        if !contract.hot_path.paths.iter().any(|g| glob_match(g, &rel_s)) || excluded {
            continue;
        }
        let src = std::fs::read_to_string(root.join(&rel)).map_err(|e| format!("{rel_s}: {e}"))?;
        violations.extend(scan_source(&rel, &src, &contract.prohibitions, &contract.hot_path.sampled_branch_marker)?);
        scanned += 1;
    }
    if scanned == 0 {
        return Err(format!("no file matches the hot_path globs {:?}: a scan of nothing cannot pass", contract.hot_path.paths));
    }
    Ok((violations, scanned))
}

fn collect_rs(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_rs(root, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs")
            && let Ok(rel) = p.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// Scans one source text; `file` is only used in the report.
pub fn scan_source(file: &Path, src: &str, rules: &[Prohibition], marker: &str) -> Result<Vec<Violation>, String> {
    let ast = syn::parse_file(src).map_err(|e| format!("{}:{}: cannot parse: {e}", file.display(), e.span().start().line))?;
    let mut v = Scanner { file, rules, marker, cold: 0, sampled: 0, found: Vec::new() };
    v.visit_file(&ast);
    v.found.sort_by_key(|x| x.line);
    Ok(v.found)
}

struct Scanner<'a> {
    file: &'a Path,
    rules: &'a [Prohibition],
    marker: &'a str,
    /// Depth of `#[cold]` functions around the current node.
    cold: usize,
    /// Depth of sampled branches around the current node.
    sampled: usize,
    found: Vec<Violation>,
}

impl Scanner<'_> {
    fn report(&mut self, rule: &Prohibition, item: String, span: Span) {
        self.found.push(Violation {
            file: self.file.to_path_buf(),
            line: span.start().line,
            prohibition: rule.id.clone(),
            item,
            reason: rule.reason.clone(),
        });
    }

    fn check_path(&mut self, segments: &[String], span: Span) {
        for rule in self.rules.iter().filter(|r| r.kind == BanKind::Path) {
            for m in &rule.matches {
                let want: Vec<&str> = m.split("::").collect();
                if segments.windows(want.len()).any(|w| w.iter().zip(&want).all(|(a, b)| a == b)) {
                    self.report(rule, segments.join("::"), span);
                    return;
                }
            }
        }
    }

    fn check_macro(&mut self, name: &str, span: Span) {
        let allowed_tracing = self.cold > 0 || self.sampled > 0;
        for rule in self.rules {
            let applies = match rule.kind {
                BanKind::Macro => true,
                BanKind::MacroUnsampled => !allowed_tracing,
                _ => false,
            };
            if applies && rule.matches.iter().any(|m| m == name) {
                self.report(rule, format!("{name}!"), span);
                return;
            }
        }
    }

    fn check_method(&mut self, name: &str, span: Span) {
        for rule in self.rules.iter().filter(|r| r.kind == BanKind::Method) {
            if rule.matches.iter().any(|m| m == name) {
                self.report(rule, format!(".{name}()"), span);
                return;
            }
        }
    }

    /// Token-level scan of a macro body that is not plain expressions.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let toks: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                TokenTree::Group(g) => self.scan_tokens(g.stream()),
                TokenTree::Ident(id) => {
                    // a path: ident (:: ident)*
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < toks.len() + 1 && is_colon2(&toks, j) {
                        if let Some(TokenTree::Ident(next)) = toks.get(j + 2) {
                            segs.push(next.to_string());
                            j += 3;
                        } else {
                            break;
                        }
                    }
                    let prev_dot = i > 0 && matches!(&toks[i - 1], TokenTree::Punct(p) if p.as_char() == '.');
                    let next_bang = matches!(toks.get(j), Some(TokenTree::Punct(p)) if p.as_char() == '!');
                    let next_call = matches!(toks.get(j), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
                    if next_bang {
                        if let Some(last) = segs.last().cloned() {
                            self.check_macro(&last, id.span());
                        }
                        self.check_path(&segs, id.span());
                    } else if prev_dot && segs.len() == 1 && next_call {
                        self.check_method(&segs[0], id.span());
                    } else {
                        self.check_path(&segs, id.span());
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn condition_is_sampled(&self, cond: &Expr) -> bool {
        let mut found = false;
        let marker = self.marker;
        struct Find<'m> {
            marker: &'m str,
            found: &'m mut bool,
        }
        impl<'ast> Visit<'ast> for Find<'_> {
            fn visit_ident(&mut self, i: &'ast proc_macro2::Ident) {
                if i.to_string().contains(self.marker) {
                    *self.found = true;
                }
            }
        }
        Find { marker, found: &mut found }.visit_expr(cond);
        found
    }
}

fn is_colon2(toks: &[TokenTree], j: usize) -> bool {
    matches!((toks.get(j), toks.get(j + 1)), (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':')
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().split(|c: char| !c.is_alphanumeric() && c != '_').any(|t| t == "test"))
    })
}

fn is_cold(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cold"))
}

fn path_segments(p: &syn::Path) -> Vec<String> {
    p.segments.iter().map(|s| s.ident.to_string()).collect()
}

fn flatten_use(prefix: &mut Vec<String>, tree: &syn::UseTree, out: &mut Vec<(Vec<String>, Span)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(prefix, &p.tree, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut v = prefix.clone();
            v.push(n.ident.to_string());
            out.push((v, n.ident.span()));
        }
        syn::UseTree::Rename(r) => {
            let mut v = prefix.clone();
            v.push(r.ident.to_string());
            out.push((v, r.ident.span()));
        }
        syn::UseTree::Glob(g) => out.push((prefix.clone(), g.star_token.spans[0])),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(prefix, t, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Scanner<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs: &[Attribute] = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            return;
        }
        visit::visit_item(self, i);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let cold = is_cold(&f.attrs);
        self.cold += usize::from(cold);
        visit::visit_item_fn(self, f);
        self.cold -= usize::from(cold);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_cfg_test(&f.attrs) {
            return;
        }
        let cold = is_cold(&f.attrs);
        self.cold += usize::from(cold);
        visit::visit_impl_item_fn(self, f);
        self.cold -= usize::from(cold);
    }

    fn visit_attribute(&mut self, a: &'ast Attribute) {
        // `#[instrument]` and friends are macros too.
        if let Some(last) = a.path().segments.last() {
            let name = last.ident.to_string();
            // Lint attributes (`#[warn(..)]`) and thiserror's `#[error(..)]` share names with
            // tracing macros but are not events.
            if !matches!(name.as_str(), "allow" | "warn" | "deny" | "forbid" | "expect" | "error" | "cold" | "inline" | "cfg" | "derive") {
                self.check_macro(&name, last.ident.span());
            }
        }
    }

    fn visit_expr_if(&mut self, e: &'ast syn::ExprIf) {
        self.visit_expr(&e.cond);
        let sampled = self.condition_is_sampled(&e.cond);
        self.sampled += usize::from(sampled);
        self.visit_block(&e.then_branch);
        self.sampled -= usize::from(sampled);
        if let Some((_, els)) = &e.else_branch {
            self.visit_expr(els);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        flatten_use(&mut Vec::new(), &u.tree, &mut out);
        for (segs, span) in out {
            self.check_path(&segs, span);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if let Some(first) = p.segments.first() {
            self.check_path(&path_segments(p), first.ident.span());
        }
        visit::visit_path(self, p);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        self.check_method(&m.method.to_string(), m.method.span());
        visit::visit_expr_method_call(self, m);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        if let Some(last) = m.path.segments.last() {
            self.check_macro(&last.ident.to_string(), last.ident.span());
        }
        // The macro's own path (e.g. anyhow::bail!) against path bans.
        let segs = path_segments(&m.path);
        if let Some(first) = m.path.segments.first() {
            self.check_path(&segs, first.ident.span());
        }
        match m.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            Ok(exprs) => {
                for e in &exprs {
                    self.visit_expr(e);
                }
            }
            Err(_) => self.scan_tokens(m.tokens.clone()),
        }
    }

    fn visit_type_path(&mut self, t: &'ast syn::TypePath) {
        if let Some(last) = t.path.segments.last()
            && last.ident == "Box"
            && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        {
            for a in &args.args {
                if let syn::GenericArgument::Type(syn::Type::TraitObject(obj)) = a {
                    for b in &obj.bounds {
                        if let syn::TypeParamBound::Trait(tb) = b
                            && let Some(tr) = tb.path.segments.last()
                        {
                            let name = tr.ident.to_string();
                            for rule in self.rules.iter().filter(|r| r.kind == BanKind::DynError) {
                                if rule.matches.contains(&name) {
                                    self.report(rule, format!("Box<dyn {name}>"), last.ident.span());
                                }
                            }
                        }
                    }
                }
            }
        }
        visit::visit_type_path(self, t);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::contract;

    fn rules() -> Contract {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        contract::load(&root.join("contracts/phase1.toml")).unwrap()
    }

    fn scan(src: &str) -> Vec<(String, String)> {
        let c = rules();
        scan_source(Path::new("fixture.rs"), src, &c.prohibitions, &c.hot_path.sampled_branch_marker)
            .unwrap()
            .into_iter()
            .map(|v| (v.prohibition, v.item))
            .collect()
    }

    #[test]
    fn the_committed_hot_path_is_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (v, n) = scan_contract(root, &rules(), &[]).unwrap();
        assert!(n >= 5, "scanned only {n} files");
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn planted_mutex_format_and_friends_are_caught() {
        let src = r#"
            use std::sync::{Arc, Mutex};
            fn handle(x: usize) -> Result<(), Box<dyn std::error::Error>> {
                let m: parking_lot::FairMutex<u8> = todo_();
                let s = format!("{x}");
                let t = x.to_string();
                println!("{s}{t}");
                tracing::info!("request");
                std::thread::sleep(std::time::Duration::from_millis(1));
                Ok(())
            }
        "#;
        let got = scan(src);
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        for want in ["std-mutex", "box-dyn-error", "parking-lot", "format", "string-building", "print", "tracing-unsampled", "blocking-io"]
        {
            assert!(ids.contains(&want), "{want} not caught: {got:?}");
        }
    }

    #[test]
    fn planted_file_is_scanned_when_its_feature_is_built() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (v, _) = scan_contract(root, &rules(), &["planted-lock".to_owned()]).unwrap();
        assert!(v.iter().any(|v| v.prohibition == "std-mutex" && v.file.ends_with("planted.rs")), "{v:#?}");
    }

    #[test]
    fn inside_select_bodies_too() {
        let got = scan("async fn f() { tokio::select! { _ = a() => { let s = format!(\"x\"); } } }");
        assert!(got.iter().any(|(id, _)| id == "format"), "{got:?}");
    }

    #[test]
    fn cold_sampled_and_test_code_are_allowed() {
        let src = r#"
            #[cold]
            fn on_error() { tracing::warn!("bad"); }
            fn f(sampled: bool) { if sampled { tracing::info!("x"); } }
            #[cfg(test)]
            mod tests { fn t() { let _ = format!("ok"); let m = std::sync::Mutex::new(1); } }
        "#;
        assert!(scan(src).is_empty(), "{:?}", scan(src));
        assert!(!scan("fn f(on: bool) { if on { tracing::info!(\"x\"); } }").is_empty());
    }

    #[test]
    fn lines_are_reported() {
        let c = rules();
        let v = scan_source(Path::new("x.rs"), "fn a() {}\n\nfn b() { let _ = format!(\"\"); }\n", &c.prohibitions, "sampled").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].line, 3);
    }
}
