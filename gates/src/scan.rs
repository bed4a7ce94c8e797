//! The static gate: parse each hot-path file with `syn`, resolve every path it writes to the full
//! path it names ([`crate::resolve`]), and report with file:line and a reason every item that is
//! prohibited or that the contract's allowlist does not name.
//!
//! What is looked at: paths (types, expressions, patterns, trait bounds, `use` trees, `extern
//! crate`, macro names, derives, attribute names), method calls, macro invocations, and
//! `Box<dyn Error>`. Macro bodies that do not parse as Rust expressions (`tokio::select!`,
//! `macro_rules!` definitions) are scanned token by token, with the same resolution.
//!
//! Two layers, both applied after resolution:
//! - the `[[prohibitions]]`: each names what it bans and why (`std::sync::Mutex`, `format!`,
//!   `.to_string()`); a path ban on a single segment (`block_on`) also catches a method call and
//!   a macro of that name;
//! - the `[hot_path] allow` list: a path that resolves outside the scanned code must start with
//!   an allowed entry, so anything new is a violation ([`NOT_ALLOWLISTED`]) until the contract
//!   names it. Attributes must be in `allow_attributes`.
//!
//! Structural rules of the scanner: a glob import of anything but a scanned module or a local
//! item ([`GLOB_IMPORT`]), `#[path]` ([`MOD_PATH`]), and `mod x;` whose file is not under the
//! hot-path globs ([`MOD_OUTSIDE`]).
//!
//! Items whose `cfg` implies `test` are skipped (see [`resolve::implies_test`]); tracing macros
//! are allowed in functions whose documentation says they are off the request path, with a
//! reason ([`OFF_PATH_MARKER`]), and in branches that run for sampled requests only. `#[cold]`
//! exempts nothing: it is a code-layout hint, and on an `async fn` it does not even reach the body
//! ([`COLD_ASYNC`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Spacing, Span, TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::visit::{self, Visit};
use syn::{Attribute, Expr, Meta, Token};

use crate::contract::{BanKind, Contract, Prohibition, glob_match};
use crate::resolve::{self, Binding, CrateContext, Index, Ns, Res, ResolveError, Resolver, Scope, Segs, unraw};

/// What keeps the static gate from scanning: a file it cannot list, read or parse, or nothing to
/// scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{}", dir.display())]
    List { dir: PathBuf, source: std::io::Error },
    /// `file`: relative to the workspace root.
    #[error("{}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}: cannot parse", file.display())]
    Parse { file: PathBuf, line: usize, source: syn::Error },
    #[error("no file matches the hot_path globs {0:?}: a scan of nothing cannot pass")]
    NothingToScan(Vec<String>),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub prohibition: String,
    /// What was found, e.g. `std::sync::Mutex` or `format!`; with the written form when
    /// resolution changed it (`std::sync::Mutex::new (written `M::new`)`).
    pub item: String,
    pub reason: String,
}

/// A path outside the scanned code that the contract's `[hot_path] allow` does not name.
pub const NOT_ALLOWLISTED: &str = "not-allowlisted";
/// The id of a violation of a `[[hot_path.layers]]` rule.
pub const LAYERING: &str = "layering";
/// A glob import of a module that is not scanned: what it brings in cannot be checked.
pub const GLOB_IMPORT: &str = "glob-import";
/// `#[path = ".."]`: would compile a file the scan does not see into the hot path.
pub const MOD_PATH: &str = "mod-path-attribute";
/// `mod x;` whose file is not under the contract's hot-path globs.
pub const MOD_OUTSIDE: &str = "mod-outside-hot-path";
/// `#[cold]` on an `async fn`: it marks the function that builds the future, not the body that
/// runs when the future is polled, so it does not do what it says.
pub const COLD_ASYNC: &str = "cold-async-fn";
/// An [`OFF_PATH_MARKER`] line with no reason after it: it exempts nothing.
pub const OFF_PATH_NO_REASON: &str = "off-path-without-reason";

/// The doc line that takes a function off the request path for this scan: the tracing macros (the
/// `macro-unsampled` bans) are allowed in its body (closures and nested items included). The rest
/// of the line must give the reason (`/// Off the request path: accept errors, backed off 10 ms`);
/// a marker without one is [`OFF_PATH_NO_REASON`]. Every other ban still applies. The scan cannot
/// check that the reason is true: a reviewer reads it where the function is.
pub const OFF_PATH_MARKER: &str = "Off the request path:";

/// Attributes whose arguments are never code (their arguments are not scanned).
const NON_CODE_ATTRIBUTES: &[&str] = &[
    "cfg",
    "cfg_attr",
    "derive",
    "allow",
    "warn",
    "deny",
    "forbid",
    "expect",
    "doc",
    "inline",
    "cold",
    "repr",
    "must_use",
    "deprecated",
    "non_exhaustive",
    "track_caller",
    "automatically_derived",
];

/// Scans every hot-path file of `contract` under `root`. `features`: the cargo features of the
/// build being checked (an `exclude` entry lapses when one of its `unless_features` is on).
pub fn scan_contract(root: &Path, contract: &Contract, features: &[String]) -> Result<(Vec<Violation>, usize), ScanError> {
    let mut files = Vec::new();
    collect_rs(root, root, &mut files)?;
    files.sort();
    let mut by_package: BTreeMap<PathBuf, Vec<(PathBuf, String)>> = BTreeMap::new();
    let mut scanned = 0;
    for rel in files {
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let excluded = contract.hot_path.exclude.iter().any(|e| e.path == rel_s && !e.unless_features.iter().any(|f| features.contains(f)));
        if !contract.hot_path.paths.iter().any(|g| glob_match(g, &rel_s)) || excluded {
            continue;
        }
        let src = std::fs::read_to_string(root.join(&rel)).map_err(|source| ScanError::Read { file: PathBuf::from(&rel_s), source })?;
        let (package, _, _) = resolve::module_of(&rel);
        by_package.entry(package).or_default().push((rel, src));
        scanned += 1;
    }
    if scanned == 0 {
        return Err(ScanError::NothingToScan(contract.hot_path.paths.clone()));
    }
    let mut violations = Vec::new();
    for (package, files) in by_package {
        let cx = CrateContext::load(root, &package)?;
        violations.extend(scan_files(&files, contract, &cx)?);
    }
    Ok((violations, scanned))
}

fn collect_rs(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScanError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ScanError::List { dir: dir.to_path_buf(), source })?;
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

/// Scans the hot-path files of one crate, given as (path relative to the workspace root,
/// source). The paths give each file its module (`proxy/src/data/conn.rs` is
/// `crate::data::conn`); names used across these files are resolved through each other.
pub fn scan_files(files: &[(PathBuf, String)], contract: &Contract, cx: &CrateContext) -> Result<Vec<Violation>, ScanError> {
    let mut asts = Vec::with_capacity(files.len());
    for (rel, src) in files {
        let ast =
            syn::parse_file(src).map_err(|source| ScanError::Parse { file: rel.clone(), line: source.span().start().line, source })?;
        asts.push(ast);
    }
    let mut index = Index::default();
    let mut roots = Vec::with_capacity(files.len());
    for ((rel, _), ast) in files.iter().zip(&asts) {
        let (_, module, dir) = resolve::module_of(rel);
        let id = (!resolve::is_test_only(&ast.attrs)).then(|| index.add_module(module, &ast.items));
        roots.push((id, dir));
    }
    let allow = split_all(contract.hot_path.allow.iter().map(|a| a.path()));
    let mut found = Vec::new();
    for (((rel, _), ast), (id, dir)) in files.iter().zip(&asts).zip(roots) {
        let Some(id) = id else { continue };
        let mut s = Scanner {
            file: rel,
            contract,
            cx,
            allow: &allow,
            index: &mut index,
            scopes: vec![id],
            dirs: vec![dir],
            off_path: 0,
            sampled: 0,
            found: Vec::new(),
        };
        for a in &ast.attrs {
            s.visit_attribute(a);
        }
        for item in &ast.items {
            s.visit_item(item);
        }
        found.extend(s.found);
    }
    found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(found)
}

/// Scans one source text as the file `file` (relative to the workspace root; it gives the
/// module path), alone.
pub fn scan_source(file: &Path, src: &str, contract: &Contract, cx: &CrateContext) -> Result<Vec<Violation>, ScanError> {
    scan_files(&[(file.to_path_buf(), src.to_owned())], contract, cx)
}

fn split_all<'s>(paths: impl Iterator<Item = &'s str>) -> Vec<Segs> {
    paths.map(|p| p.split("::").map(str::to_owned).collect()).collect()
}

struct Scanner<'a> {
    file: &'a Path,
    contract: &'a Contract,
    cx: &'a CrateContext,
    /// `[hot_path] allow`, split into segments.
    allow: &'a [Segs],
    index: &'a mut Index,
    /// The scopes around the current node, innermost last.
    scopes: Vec<usize>,
    /// Where the current module's `mod x;` files live.
    dirs: Vec<PathBuf>,
    /// Depth of functions marked off the request path ([`OFF_PATH_MARKER`]) around the current
    /// node.
    off_path: usize,
    /// Depth of sampled branches around the current node.
    sampled: usize,
    found: Vec<Violation>,
}

fn path_segs(p: &syn::Path) -> Segs {
    let mut v: Segs = if p.leading_colon.is_some() { vec!["::".to_owned()] } else { Vec::new() };
    v.extend(p.segments.iter().map(|s| unraw(&s.ident)));
    v
}

fn path_span(p: &syn::Path) -> Span {
    p.segments.first().map_or_else(Span::call_site, |s| s.ident.span())
}

fn show(segs: &[String]) -> String {
    match segs.split_first() {
        Some((first, rest)) if first == "::" => format!("::{}", rest.join("::")),
        _ => segs.join("::"),
    }
}

/// `resolved (written `w`)` when resolution changed the path.
fn describe(written: &[String], res: &Res) -> String {
    let w = show(written);
    match res {
        Res::Path(p) | Res::Unknown(p) | Res::Module(p) => {
            let r = show(p);
            if r == w { r } else { format!("{r} (written `{w}`)") }
        }
        Res::Local | Res::Builtin => w,
    }
}

fn windows_match(segs: &[String], want: &[&str]) -> bool {
    segs.windows(want.len()).any(|w| w.iter().zip(want).all(|(a, b)| a == b))
}

fn is_prefix(prefix: &[String], of: &[String]) -> bool {
    prefix.len() <= of.len() && prefix.iter().zip(of).all(|(a, b)| a == b)
}

/// A type's name (`String`, `str`, `Self`), as opposed to a module's.
fn is_type_name(s: &str) -> bool {
    s.starts_with(char::is_uppercase) || resolve::PRIMITIVES.contains(&s)
}

/// The `#[cold]` among `attrs`, written directly or inside a `cfg_attr`.
fn cold_attr(attrs: &[Attribute]) -> Option<&Attribute> {
    attrs.iter().find(|a| {
        a.path().is_ident("cold")
            || (a.path().is_ident("cfg_attr")
                && resolve::parse_cfg_attr(&a.meta).is_some_and(|(_, inner)| inner.iter().any(|m| m.path().is_ident("cold"))))
    })
}

/// What a function's documentation says about the request path.
enum OffPath {
    /// No [`OFF_PATH_MARKER`] line.
    Unmarked,
    /// A marker line with a reason.
    Marked,
    /// A marker line with no reason (its span): reported, and it exempts nothing.
    NoReason(Span),
}

/// Reads the [`OFF_PATH_MARKER`] from the doc attributes (`///` lines, `/** */` blocks and
/// `#[doc = ".."]`) written on a function; one inside `cfg_attr` does not count. The reason is the
/// rest of the marker's line and must contain a letter or digit.
fn off_path(attrs: &[Attribute]) -> OffPath {
    let mut found = OffPath::Unmarked;
    for a in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        let Meta::NameValue(nv) = &a.meta else { continue };
        let Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(text), .. }) = &nv.value else { continue };
        for line in text.value().lines() {
            let line = line.trim_start().trim_start_matches('*').trim_start();
            let Some(reason) = line.strip_prefix(OFF_PATH_MARKER) else { continue };
            if !reason.chars().any(char::is_alphanumeric) {
                return OffPath::NoReason(a.span());
            }
            found = OffPath::Marked;
        }
    }
    found
}

/// The condition of an `if` whose block runs for sampled requests only: a name, field or
/// argument-less method call containing `marker` (possibly in parentheses), or an `&&` chain
/// with such an operand. Negation, `||` and comparisons do not count.
pub fn sampled_condition(cond: &Expr, marker: &str) -> bool {
    match cond {
        Expr::Paren(p) => sampled_condition(&p.expr, marker),
        Expr::Group(g) => sampled_condition(&g.expr, marker),
        Expr::Path(p) => p.qself.is_none() && p.path.get_ident().is_some_and(|i| unraw(i).contains(marker)),
        Expr::Field(f) => matches!(&f.member, syn::Member::Named(i) if unraw(i).contains(marker)),
        Expr::MethodCall(m) => m.args.is_empty() && unraw(&m.method).contains(marker),
        Expr::Binary(b) if matches!(b.op, syn::BinOp::And(_)) => sampled_condition(&b.left, marker) || sampled_condition(&b.right, marker),
        _ => false,
    }
}

fn expr_attrs(e: &Expr) -> &[Attribute] {
    match e {
        Expr::Array(x) => &x.attrs,
        Expr::Assign(x) => &x.attrs,
        Expr::Async(x) => &x.attrs,
        Expr::Await(x) => &x.attrs,
        Expr::Binary(x) => &x.attrs,
        Expr::Block(x) => &x.attrs,
        Expr::Call(x) => &x.attrs,
        Expr::Closure(x) => &x.attrs,
        Expr::Field(x) => &x.attrs,
        Expr::ForLoop(x) => &x.attrs,
        Expr::If(x) => &x.attrs,
        Expr::Let(x) => &x.attrs,
        Expr::Loop(x) => &x.attrs,
        Expr::Macro(x) => &x.attrs,
        Expr::Match(x) => &x.attrs,
        Expr::MethodCall(x) => &x.attrs,
        Expr::Paren(x) => &x.attrs,
        Expr::Path(x) => &x.attrs,
        Expr::Reference(x) => &x.attrs,
        Expr::Return(x) => &x.attrs,
        Expr::Struct(x) => &x.attrs,
        Expr::Try(x) => &x.attrs,
        Expr::Tuple(x) => &x.attrs,
        Expr::Unary(x) => &x.attrs,
        Expr::Unsafe(x) => &x.attrs,
        Expr::While(x) => &x.attrs,
        _ => &[],
    }
}

fn is_colon2(toks: &[TokenTree], j: usize) -> bool {
    matches!((toks.get(j), toks.get(j + 1)), (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
        if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
}

fn is_punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

impl Scanner<'_> {
    fn cur(&self) -> usize {
        self.scopes.last().copied().unwrap_or(0)
    }

    fn resolver(&self) -> Resolver<'_> {
        Resolver { index: self.index, cx: self.cx }
    }

    fn resolve(&self, segs: &[String], ns: Ns) -> Res {
        self.resolver().resolve(segs, self.cur(), ns)
    }

    fn report(&mut self, id: &str, item: String, reason: String, span: Span) {
        self.found.push(Violation { file: self.file.to_path_buf(), line: span.start().line, prohibition: id.to_owned(), item, reason });
    }

    fn report_rule(&mut self, rule: &Prohibition, item: String, span: Span) {
        self.report(&rule.id, item, rule.reason.clone(), span);
    }

    fn push_scope(&mut self, names: std::collections::HashMap<String, Binding>, globs: Vec<Segs>) {
        let module = self.index.scopes[self.cur()].module.clone();
        let id = self.index.push(Scope { parent: Some(self.cur()), module, names, globs });
        self.scopes.push(id);
    }

    /// The first `path` prohibition matching the written or the resolved path.
    fn path_ban(&self, written: &[String], resolved: Option<&[String]>) -> Option<&Prohibition> {
        self.contract.prohibitions.iter().filter(|r| r.kind == BanKind::Path).find(|rule| {
            rule.matches.iter().any(|m| {
                let want: Vec<&str> = m.split("::").collect();
                windows_match(written, &want) || resolved.is_some_and(|r| windows_match(r, &want))
            })
        })
    }

    /// A `path` prohibition of a single segment equal to `name` (a method or macro of that name).
    fn single_segment_ban(&self, names: &[&str]) -> Option<&Prohibition> {
        self.contract
            .prohibitions
            .iter()
            .filter(|r| r.kind == BanKind::Path)
            .find(|rule| rule.matches.iter().any(|m| !m.contains("::") && names.contains(&m.as_str())))
    }

    /// The deepest scanned module `written` passes through (`crate::data::h1::head` for
    /// `super::h1::head::Head` written in `crate::data::accept`), if any: what a layering rule
    /// judges. Items of scanned modules resolve as local, so the module is found prefix by prefix.
    fn module_reached(&self, written: &[String]) -> Option<Segs> {
        (1..=written.len()).rev().find_map(|i| match self.resolve(&written[..i], Ns::Use) {
            Res::Module(p) => Some(p),
            _ => None,
        })
    }

    /// The reason of a `[[hot_path.layers]]` rule that forbids the current module to name `p`.
    fn layer_ban(&self, p: &[String]) -> Option<String> {
        let module = &self.index.scopes[self.cur()].module;
        let under = |prefix: &str, of: &[String]| {
            let want: Vec<&str> = prefix.split("::").collect();
            of.len() >= want.len() && of.iter().zip(&want).all(|(a, b)| a == b)
        };
        self.contract.hot_path.layers.iter().find_map(|l| {
            let applies = l.modules.iter().any(|m| under(m, module));
            let hit = l.may_not_use.iter().find(|f| under(f, p))?;
            applies.then(|| format!("{} may not use {hit}: {}", show(module), l.reason))
        })
    }

    fn allowed(&self, p: &[String]) -> bool {
        self.allow.iter().any(|a| is_prefix(a, p))
    }

    /// A module on the way to an allowed entry (`std::io` when `std::io::ErrorKind` is allowed).
    fn on_the_way(&self, p: &[String]) -> bool {
        self.allow.iter().any(|a| a.len() > p.len() && is_prefix(p, a))
    }

    /// Checks a path against the bans and the allowlist. `prefix_ok`: a module on the way to an
    /// allowed entry is fine (a `use` of it, or a bare name, cannot do anything by itself).
    fn check_path(&mut self, written: &[String], span: Span, ns: Ns, prefix_ok: bool) {
        if let Some(m) = self.module_reached(written)
            && let Some(reason) = self.layer_ban(&m)
        {
            self.report(LAYERING, show(written), reason, span);
            return;
        }
        let res = self.resolve(written, ns);
        self.check_resolved(written, &res, span, prefix_ok, "");
    }

    fn check_resolved(&mut self, written: &[String], res: &Res, span: Span, prefix_ok: bool, suffix: &str) {
        let resolved = match res {
            Res::Path(p) | Res::Unknown(p) | Res::Module(p) => Some(p.as_slice()),
            Res::Local | Res::Builtin => None,
        };
        if let Some(rule) = self.path_ban(written, resolved).cloned() {
            self.report_rule(&rule, format!("{}{suffix}", describe(written, res)), span);
            return;
        }

        match res {
            Res::Path(p) if !(self.allowed(p) || (prefix_ok && self.on_the_way(p))) => self.report(
                NOT_ALLOWLISTED,
                format!("{}{suffix}", describe(written, res)),
                format!("{} is not in the contract's [hot_path] allow list; the contract must name it (with a reason) before the hot path may use it", show(p)),
                span,
            ),
            Res::Unknown(_) => self.report(
                NOT_ALLOWLISTED,
                format!("{}{suffix}", describe(written, res)),
                "cannot be resolved to a path the contract's [hot_path] allow list could name".to_owned(),
                span,
            ),
            _ => {}
        }
    }

    fn check_macro(&mut self, written: &[String], span: Span) {
        if written == ["macro_rules"] {
            return;
        }
        let res = self.resolve(written, Ns::Macro);
        let mut names: Vec<&str> = written.last().map(String::as_str).into_iter().collect();
        if let Res::Path(p) | Res::Unknown(p) = &res
            && let Some(last) = p.last()
        {
            names.push(last);
        }
        let tracing_ok = self.off_path > 0 || self.sampled > 0;
        let rule = self
            .contract
            .prohibitions
            .iter()
            .find(|r| {
                let applies = match r.kind {
                    BanKind::Macro => true,
                    BanKind::MacroUnsampled => !tracing_ok,
                    _ => false,
                };
                applies && r.matches.iter().any(|m| names.contains(&m.as_str()))
            })
            .or_else(|| self.single_segment_ban(&names))
            .cloned();
        if let Some(rule) = rule {
            self.report_rule(&rule, format!("{}!", describe(written, &res)), span);
            return;
        }
        self.check_resolved(written, &res, span, false, "!");
    }

    fn check_method(&mut self, name: &str, span: Span) {
        let rule = self
            .contract
            .prohibitions
            .iter()
            .find(|r| r.kind == BanKind::Method && r.matches.iter().any(|m| m == name))
            .or_else(|| self.single_segment_ban(&[name]))
            .cloned();
        if let Some(rule) = rule {
            self.report_rule(&rule, format!(".{name}()"), span);
        }
    }

    /// `Type::method` / `<T as Trait>::method` in an expression: a method ban applies to it too.
    /// (Only after a type: `std::iter::repeat` is a function, not `str::repeat`.)
    fn check_qualified_call(&mut self, name: &str, span: Span) {
        if let Some(rule) =
            self.contract.prohibitions.iter().find(|r| r.kind == BanKind::Method && r.matches.iter().any(|m| m == name)).cloned()
        {
            self.report_rule(&rule, format!("::{name}"), span);
        }
    }

    fn check_glob(&mut self, target: &[String], span: Span) {
        let res = self.resolve(target, Ns::Use);
        let resolved = match &res {
            Res::Path(p) | Res::Unknown(p) | Res::Module(p) => Some(p.as_slice()),
            Res::Local | Res::Builtin => None,
        };
        if let Some(rule) = self.path_ban(target, resolved).cloned() {
            self.report_rule(&rule, format!("{}::*", describe(target, &res)), span);
            return;
        }
        if let Res::Path(_) | Res::Unknown(_) = res {
            self.report(
                GLOB_IMPORT,
                format!("{}::*", describe(target, &res)),
                "a glob import of a module the scan does not see brings in names it cannot check; import the items by name".to_owned(),
                span,
            );
        }
    }

    /// `mod x;`: its file must be one the scan sees.
    fn check_mod_file(&mut self, name: &str, span: Span) {
        let dir = self.dirs.last().cloned().unwrap_or_default();
        let candidates = [dir.join(format!("{name}.rs")), dir.join(name).join("mod.rs")];
        let shown: Vec<String> = candidates.iter().map(|c| c.to_string_lossy().replace('\\', "/")).collect();
        if !shown.iter().any(|c| self.contract.hot_path.paths.iter().any(|g| glob_match(g, c))) {
            self.report(
                MOD_OUTSIDE,
                format!("mod {name}"),
                format!(
                    "its file ({}) is not under the contract's hot_path paths, so the static gate would not scan it",
                    shown.join(" or ")
                ),
                span,
            );
        }
    }

    fn attr_allowed(&self, name: &str) -> bool {
        self.contract.hot_path.allow_attributes.iter().any(|a| a.path() == name)
    }

    fn check_attr(&mut self, meta: &Meta, span: Span) {
        let written = path_segs(meta.path());
        let w = show(&written);
        if w == "path" {
            self.report(
                MOD_PATH,
                "#[path]".to_owned(),
                "#[path] compiles a file chosen by the attribute into the hot path; the scan only sees files under the hot_path globs"
                    .to_owned(),
                span,
            );
            return;
        }
        if w == "cfg_attr" {
            match resolve::parse_cfg_attr(meta) {
                Some((pred, _)) if resolve::implies_test(&pred) => {}
                Some((_, inner)) => {
                    for m in &inner {
                        self.check_attr(m, span);
                    }
                }
                None => self.report(NOT_ALLOWLISTED, "#[cfg_attr(..)]".to_owned(), "a cfg_attr the scan cannot parse".to_owned(), span),
            }
            return;
        }
        if w == "derive"
            && let Meta::List(l) = meta
        {
            match l.parse_args_with(Punctuated::<syn::Path, Token![,]>::parse_terminated) {
                Ok(paths) => {
                    for p in &paths {
                        self.check_path(&path_segs(p), path_span(p), Ns::Derive, false);
                    }
                }
                Err(_) => self.report(NOT_ALLOWLISTED, "#[derive(..)]".to_owned(), "a derive list the scan cannot parse".to_owned(), span),
            }
        }
        let res = self.resolver().resolve_attribute(&written, self.cur());
        let full = match &res {
            Some(Res::Path(p) | Res::Unknown(p) | Res::Module(p)) => show(p),
            _ => w.clone(),
        };
        if self.attr_allowed(&full) {
            if !NON_CODE_ATTRIBUTES.contains(&w.as_str()) {
                match meta {
                    Meta::List(l) => self.scan_tokens(l.tokens.clone()),
                    Meta::NameValue(nv) => self.visit_expr(&nv.value),
                    Meta::Path(_) => {}
                }
            }
            return;
        }
        // Not allowed: say why as precisely as possible (a ban's own reason first).
        let res = res.unwrap_or(Res::Local);
        let resolved = match &res {
            Res::Path(p) | Res::Unknown(p) | Res::Module(p) => Some(p.clone()),
            Res::Local | Res::Builtin => None,
        };
        let mut names: Vec<&str> = written.last().map(String::as_str).into_iter().collect();
        if let Some(last) = resolved.as_ref().and_then(|p| p.last()) {
            names.push(last);
        }
        let tracing_ok = self.off_path > 0 || self.sampled > 0;
        let rule = self
            .contract
            .prohibitions
            .iter()
            .find(|r| match r.kind {
                BanKind::Macro => r.matches.iter().any(|m| names.contains(&m.as_str())),
                BanKind::MacroUnsampled => !tracing_ok && r.matches.iter().any(|m| names.contains(&m.as_str())),
                _ => false,
            })
            .or_else(|| self.path_ban(&written, resolved.as_deref()))
            .cloned();
        let item = format!("#[{}]", describe(&written, &res));
        match rule {
            Some(rule) => self.report_rule(&rule, item, span),
            None => self.report(
                NOT_ALLOWLISTED,
                item,
                format!("attribute {full} is not in the contract's [hot_path] allow_attributes; the contract must name it before the hot path may carry it"),
                span,
            ),
        }
    }

    /// `<Q as Trait>::x` / `<Q>::x` / a plain path, in an expression (`expr`) or a type.
    fn qualified_path(&mut self, qself: Option<&syn::QSelf>, path: &syn::Path, expr: bool) {
        match qself {
            None => {
                self.visit_path(path);
                let n = path.segments.len();
                if expr && n >= 2 && is_type_name(&unraw(&path.segments[n - 2].ident)) {
                    let last = &path.segments[n - 1];
                    self.check_qualified_call(&unraw(&last.ident), last.ident.span());
                }
            }
            Some(q) => {
                self.visit_type(&q.ty);
                let trait_segs: Segs = path.segments.iter().take(q.position).map(|s| unraw(&s.ident)).collect();
                if !trait_segs.is_empty() {
                    let mut w = if path.leading_colon.is_some() { vec!["::".to_owned()] } else { Vec::new() };
                    w.extend(trait_segs);
                    self.check_path(&w, path_span(path), Ns::Path, false);
                }
                for seg in &path.segments {
                    self.visit_path_arguments(&seg.arguments);
                }
                if expr && let Some(last) = path.segments.last() {
                    self.check_qualified_call(&unraw(&last.ident), last.ident.span());
                }
            }
        }
    }

    fn check_box_dyn(&mut self, t: &syn::TypePath) {
        let Some(last) = t.path.segments.last() else { return };
        let written = path_segs(&t.path);
        let res = self.resolve(&written, Ns::Path);
        let is_box = last.ident == "Box" || matches!(&res, Res::Path(p) if p.last().is_some_and(|s| s == "Box"));
        let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return };
        if !is_box {
            return;
        }
        for a in &args.args {
            let syn::GenericArgument::Type(syn::Type::TraitObject(obj)) = a else { continue };
            for b in &obj.bounds {
                let syn::TypeParamBound::Trait(tb) = b else { continue };
                let Some(tr) = tb.path.segments.last() else { continue };
                let mut names = vec![unraw(&tr.ident)];
                if let Res::Path(p) = self.resolve(&path_segs(&tb.path), Ns::Path)
                    && let Some(l) = p.last()
                {
                    names.push(l.clone());
                }
                let rule = self
                    .contract
                    .prohibitions
                    .iter()
                    .find(|r| r.kind == BanKind::DynError && r.matches.iter().any(|m| names.contains(m)))
                    .cloned();
                if let Some(rule) = rule {
                    self.report_rule(&rule, format!("Box<dyn {}>", names[0]), last.ident.span());
                }
            }
        }
    }

    fn with_generics(&mut self, g: &syn::Generics, f: impl FnOnce(&mut Self)) {
        let names: std::collections::HashMap<String, Binding> = g
            .params
            .iter()
            .filter_map(|p| match p {
                syn::GenericParam::Type(t) => Some(unraw(&t.ident)),
                syn::GenericParam::Const(c) => Some(unraw(&c.ident)),
                syn::GenericParam::Lifetime(_) => None,
            })
            .map(|n| (n, Binding::Generic))
            .collect();
        if names.is_empty() {
            f(self);
            return;
        }
        self.push_scope(names, Vec::new());
        f(self);
        self.scopes.pop();
    }

    /// Visits a function: `#[cold]` on an `async fn` is reported, and the body is off the request
    /// path when the function's documentation says so with a reason.
    fn in_fn(&mut self, attrs: &[Attribute], sig: &syn::Signature, f: impl FnOnce(&mut Self)) {
        if sig.asyncness.is_some()
            && let Some(cold) = cold_attr(attrs)
        {
            self.report(
                COLD_ASYNC,
                format!("#[cold] async fn {}", unraw(&sig.ident)),
                "#[cold] on an async fn marks only the function that builds its future, not the body that runs when it is polled; it exempts nothing from this scan either: say why the function is off the request path in a doc line `Off the request path: <reason>` if it needs the exemption".to_owned(),
                cold.span(),
            );
        }
        let off = match off_path(attrs) {
            OffPath::Unmarked => 0,
            OffPath::Marked => 1,
            OffPath::NoReason(span) => {
                self.report(
                    OFF_PATH_NO_REASON,
                    format!("`{OFF_PATH_MARKER}` on fn {}", unraw(&sig.ident)),
                    format!("`{OFF_PATH_MARKER}` exempts a function from the tracing ban only with a reason on the same line, for a reader to check; this one has none, so it exempts nothing"),
                    span,
                );
                0
            }
        };
        self.off_path += off;
        f(self);
        self.off_path -= off;
    }

    /// Token-level scan of a macro body that is not plain expressions: paths (resolved), macro
    /// invocations, method calls, attributes.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let toks: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < toks.len() {
            let prev = i.checked_sub(1).and_then(|j| toks.get(j));
            match &toks[i] {
                TokenTree::Group(g) => {
                    let attr = g.delimiter() == Delimiter::Bracket
                        && (is_punct(prev, '#') || (is_punct(prev, '!') && is_punct(i.checked_sub(2).and_then(|j| toks.get(j)), '#')));
                    match syn::parse2::<Meta>(g.stream()) {
                        Ok(meta) if attr => self.check_attr(&meta, g.span()),
                        _ => self.scan_tokens(g.stream()),
                    }
                    i += 1;
                }
                TokenTree::Punct(p)
                    if p.as_char() == ':'
                        && is_colon2(&toks, i)
                        && matches!(toks.get(i + 2), Some(TokenTree::Ident(_)))
                        && !matches!(prev, Some(TokenTree::Ident(_) | TokenTree::Group(_)))
                        && !is_punct(prev, '>')
                        && !is_punct(prev, ':') =>
                {
                    // A global path: `::name::..`.
                    let mut segs = vec!["::".to_owned()];
                    let mut j = i;
                    while is_colon2(&toks, j) {
                        let Some(TokenTree::Ident(next)) = toks.get(j + 2) else { break };
                        segs.push(unraw(next));
                        j += 3;
                    }
                    self.token_path(&toks, &segs, j, p.span(), false);
                    i = j;
                }
                TokenTree::Ident(id) => {
                    let mut segs = vec![unraw(id)];
                    if is_punct(prev, '$') && segs[0] == "crate" {
                        segs[0] = "crate".to_owned();
                    } else if is_punct(prev, '$') || is_punct(prev, '\'') {
                        // A macro_rules metavariable or a lifetime.
                        i += 1;
                        continue;
                    }
                    let mut j = i + 1;
                    while is_colon2(&toks, j) {
                        let Some(TokenTree::Ident(next)) = toks.get(j + 2) else { break };
                        segs.push(unraw(next));
                        j += 3;
                    }
                    let prev_dot = is_punct(prev, '.');
                    self.token_path(&toks, &segs, j, id.span(), prev_dot);
                    i = j;
                }
                _ => i += 1,
            }
        }
    }

    /// A path found in a token stream, ending before `toks[j]`.
    fn token_path(&mut self, toks: &[TokenTree], segs: &[String], j: usize, span: Span, prev_dot: bool) {
        let next = toks.get(j);
        let next_bang = is_punct(next, '!') && !is_punct(toks.get(j + 1), '=');
        let next_call = matches!(next, Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
        if prev_dot && segs.len() == 1 {
            // `.name(..)` or `.name::<T>(..)` is a method call; `.name` alone a field.
            if next_call || is_colon2(toks, j) {
                self.check_method(&segs[0], span);
            }
            return;
        }
        let first = segs[0].as_str();
        // A keyword is never a macro name: `if !done` in a `select!` branch is a negation.
        if segs.len() == 1 && resolve::KEYWORDS.contains(&first) {
            return;
        }
        if next_bang {
            self.check_macro(segs, span);
            return;
        }
        if segs.len() > 1 && resolve::KEYWORDS.contains(&first) && !matches!(first, "crate" | "self" | "super" | "Self") {
            return;
        }
        let single_colon = is_punct(next, ':') && !is_colon2(toks, j);
        let single_eq = matches!(next, Some(TokenTree::Punct(p)) if p.as_char() == '=' && p.spacing() == Spacing::Alone);
        if segs.len() == 1 && (single_colon || single_eq) {
            // A field name, a named macro argument (`target: ..`, `field = ..`) or a binding.
            return;
        }
        self.check_path(segs, span, Ns::Path, segs.len() == 1);
        if segs.len() >= 2 && next_call && is_type_name(&segs[segs.len() - 2]) {
            self.check_qualified_call(&segs[segs.len() - 1], span);
        }
    }
}

impl<'ast> Visit<'ast> for Scanner<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        if resolve::is_test_only(resolve::item_attrs(i)) {
            return;
        }
        visit::visit_item(self, i);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        for a in &m.attrs {
            self.visit_attribute(a);
        }
        let name = unraw(&m.ident);
        let Some((_, items)) = &m.content else {
            if !m.attrs.iter().any(|a| a.path().is_ident("path")) {
                self.check_mod_file(&name, m.ident.span());
            }
            return;
        };
        let path = match self.index.scopes[self.cur()].names.get(&name) {
            Some(Binding::Item { path: Some(p), module: true }) => p.clone(),
            _ => {
                let mut p = self.index.scopes[self.cur()].module.clone();
                p.push(name.clone());
                p
            }
        };
        let id = self.index.add_module(path, items);
        let dir = self.dirs.last().cloned().unwrap_or_default().join(&name);
        self.scopes.push(id);
        self.dirs.push(dir);
        for item in items {
            self.visit_item(item);
        }
        self.dirs.pop();
        self.scopes.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        for a in &u.attrs {
            self.visit_attribute(a);
        }
        for leaf in resolve::flatten_use(u.leading_colon.is_some(), &u.tree) {
            if leaf.glob {
                self.check_glob(&leaf.target, leaf.span);
            } else {
                self.check_path(&leaf.target, leaf.span, Ns::Use, true);
            }
        }
    }

    fn visit_item_extern_crate(&mut self, e: &'ast syn::ItemExternCrate) {
        for a in &e.attrs {
            self.visit_attribute(a);
        }
        let name = unraw(&e.ident);
        if name != "self" {
            let res = Res::Path(vec![self.cx.crate_of(&name)]);
            self.check_resolved(&[name], &res, e.ident.span(), false, "");
        }
    }

    fn visit_item_macro(&mut self, i: &'ast syn::ItemMacro) {
        for a in &i.attrs {
            self.visit_attribute(a);
        }
        if i.ident.is_some() && i.mac.path.is_ident("macro_rules") {
            // A macro definition: its expansion lands wherever it is used.
            self.scan_tokens(i.mac.tokens.clone());
        } else {
            self.visit_macro(&i.mac);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.in_fn(&f.attrs, &f.sig, |s| s.with_generics(&f.sig.generics, |s| visit::visit_item_fn(s, f)));
    }

    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        let attrs: &[Attribute] = match i {
            syn::ImplItem::Const(x) => &x.attrs,
            syn::ImplItem::Fn(x) => &x.attrs,
            syn::ImplItem::Type(x) => &x.attrs,
            syn::ImplItem::Macro(x) => &x.attrs,
            _ => &[],
        };
        if resolve::is_test_only(attrs) {
            return;
        }
        visit::visit_impl_item(self, i);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.in_fn(&f.attrs, &f.sig, |s| s.with_generics(&f.sig.generics, |s| visit::visit_impl_item_fn(s, f)));
    }

    fn visit_trait_item(&mut self, i: &'ast syn::TraitItem) {
        let attrs: &[Attribute] = match i {
            syn::TraitItem::Const(x) => &x.attrs,
            syn::TraitItem::Fn(x) => &x.attrs,
            syn::TraitItem::Type(x) => &x.attrs,
            syn::TraitItem::Macro(x) => &x.attrs,
            _ => &[],
        };
        if resolve::is_test_only(attrs) {
            return;
        }
        visit::visit_trait_item(self, i);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        self.in_fn(&f.attrs, &f.sig, |s| s.with_generics(&f.sig.generics, |s| visit::visit_trait_item_fn(s, f)));
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        self.with_generics(&i.generics, |s| visit::visit_item_impl(s, i));
    }

    fn visit_item_struct(&mut self, i: &'ast syn::ItemStruct) {
        self.with_generics(&i.generics, |s| visit::visit_item_struct(s, i));
    }

    fn visit_item_enum(&mut self, i: &'ast syn::ItemEnum) {
        self.with_generics(&i.generics, |s| visit::visit_item_enum(s, i));
    }

    fn visit_item_union(&mut self, i: &'ast syn::ItemUnion) {
        self.with_generics(&i.generics, |s| visit::visit_item_union(s, i));
    }

    fn visit_item_trait(&mut self, i: &'ast syn::ItemTrait) {
        self.with_generics(&i.generics, |s| visit::visit_item_trait(s, i));
    }

    fn visit_item_type(&mut self, i: &'ast syn::ItemType) {
        self.with_generics(&i.generics, |s| visit::visit_item_type(s, i));
    }

    fn visit_block(&mut self, b: &'ast syn::Block) {
        let items = b.stmts.iter().filter_map(|s| if let syn::Stmt::Item(i) = s { Some(i) } else { None });
        let module = self.index.scopes[self.cur()].module.clone();
        let (names, globs) = self.index.collect(&module, true, items);
        if names.is_empty() && globs.is_empty() {
            visit::visit_block(self, b);
            return;
        }
        self.push_scope(names, globs);
        visit::visit_block(self, b);
        self.scopes.pop();
    }

    fn visit_stmt(&mut self, s: &'ast syn::Stmt) {
        let attrs: &[Attribute] = match s {
            syn::Stmt::Local(l) => &l.attrs,
            syn::Stmt::Macro(m) => &m.attrs,
            syn::Stmt::Expr(e, _) => expr_attrs(e),
            syn::Stmt::Item(_) => &[],
        };
        if resolve::is_test_only(attrs) {
            return;
        }
        visit::visit_stmt(self, s);
    }

    fn visit_expr(&mut self, e: &'ast Expr) {
        if resolve::is_test_only(expr_attrs(e)) {
            return;
        }
        visit::visit_expr(self, e);
    }

    fn visit_arm(&mut self, a: &'ast syn::Arm) {
        if resolve::is_test_only(&a.attrs) {
            return;
        }
        visit::visit_arm(self, a);
    }

    fn visit_field(&mut self, f: &'ast syn::Field) {
        if resolve::is_test_only(&f.attrs) {
            return;
        }
        visit::visit_field(self, f);
    }

    fn visit_variant(&mut self, v: &'ast syn::Variant) {
        if resolve::is_test_only(&v.attrs) {
            return;
        }
        visit::visit_variant(self, v);
    }

    fn visit_field_value(&mut self, f: &'ast syn::FieldValue) {
        if resolve::is_test_only(&f.attrs) {
            return;
        }
        visit::visit_field_value(self, f);
    }

    fn visit_attribute(&mut self, a: &'ast Attribute) {
        let span = a.path().segments.first().map_or(a.pound_token.span, |s| s.ident.span());
        self.check_attr(&a.meta, span);
    }

    fn visit_vis_restricted(&mut self, _: &'ast syn::VisRestricted) {}

    fn visit_expr_if(&mut self, e: &'ast syn::ExprIf) {
        for a in &e.attrs {
            self.visit_attribute(a);
        }
        self.visit_expr(&e.cond);
        let sampled = usize::from(sampled_condition(&e.cond, &self.contract.hot_path.sampled_branch_marker));
        self.sampled += sampled;
        self.visit_block(&e.then_branch);
        self.sampled -= sampled;
        if let Some((_, els)) = &e.else_branch {
            self.visit_expr(els);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let written = path_segs(p);
        let bare = written.len() == 1;
        self.check_path(&written, path_span(p), Ns::Path, bare);
        for seg in &p.segments {
            self.visit_path_arguments(&seg.arguments);
        }
    }

    fn visit_expr_path(&mut self, e: &'ast syn::ExprPath) {
        for a in &e.attrs {
            self.visit_attribute(a);
        }
        self.qualified_path(e.qself.as_ref(), &e.path, true);
    }

    fn visit_type_path(&mut self, t: &'ast syn::TypePath) {
        self.check_box_dyn(t);
        self.qualified_path(t.qself.as_ref(), &t.path, false);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        self.check_method(&unraw(&m.method), m.method.span());
        visit::visit_expr_method_call(self, m);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.check_macro(&path_segs(&m.path), path_span(&m.path));
        match m.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            Ok(exprs) => {
                for e in &exprs {
                    self.visit_expr(e);
                }
            }
            Err(_) => self.scan_tokens(m.tokens.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::contract;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    fn rules() -> Contract {
        contract::load(&root().join("contracts/phase1.toml")).unwrap()
    }

    /// Scans `src` as `proxy/src/data/conn.rs` of a crate with no manifest.
    fn scan(src: &str) -> Vec<(String, String)> {
        scan_source(Path::new("proxy/src/data/conn.rs"), src, &rules(), &CrateContext::default())
            .unwrap()
            .into_iter()
            .map(|v| (v.prohibition, v.item))
            .collect()
    }

    #[test]
    fn the_committed_hot_path_is_clean() {
        let (v, n) = scan_contract(root(), &rules(), &[]).unwrap();
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

    /// The planted file is excluded, and scanned once the build has one of the features its
    /// exclusion names (read from the contract, whatever they are).
    #[test]
    fn planted_file_is_scanned_when_its_feature_is_built() {
        let c = rules();
        let planted = c.hot_path.exclude.iter().find(|e| e.path.ends_with("planted.rs")).expect("the contract excludes the planted file");
        assert!(!planted.unless_features.is_empty(), "the planted exclusion names the features that compile it");
        let (clean, _) = scan_contract(root(), &c, &[]).unwrap();
        assert!(!clean.iter().any(|v| v.file.ends_with("planted.rs")), "{clean:#?}");
        for f in &planted.unless_features {
            let (v, _) = scan_contract(root(), &c, std::slice::from_ref(f)).unwrap();
            assert!(v.iter().any(|v| v.prohibition == "std-mutex" && v.file.ends_with("planted.rs")), "feature {f}: {v:#?}");
        }
    }

    #[test]
    fn a_select_branch_precondition_is_not_a_macro() {
        let got = scan("async fn f() { tokio::select! { r = a(), if !done => {} _ = b() => {} } }");
        assert!(got.iter().all(|(_, item)| !item.contains("::if")), "{got:#?}");
    }

    #[test]
    fn inside_select_bodies_too() {
        let got = scan("async fn f() { tokio::select! { _ = a() => { let s = format!(\"x\"); } } }");
        assert!(got.iter().any(|(id, _)| id == "format"), "{got:?}");
    }

    #[test]
    fn off_path_sampled_and_test_code_are_allowed() {
        let src = r#"
            /// Off the request path: accept errors, backed off 10 ms each.
            fn on_error() { tracing::warn!("bad"); }
            fn f(sampled: bool) { if sampled { tracing::info!("x"); } }
            #[cfg(test)]
            mod tests { fn t() { let _ = format!("ok"); let m = std::sync::Mutex::new(1); } }
        "#;
        assert!(scan(src).is_empty(), "{:?}", scan(src));
        assert!(!scan("fn f(on: bool) { if on { tracing::info!(\"x\"); } }").is_empty());
    }

    fn ids(src: &str) -> Vec<String> {
        scan(src).into_iter().map(|(id, _)| id).collect()
    }

    /// The marker exempts the function's body, async or not, whichever way the doc is written,
    /// closures and nested items included; its reason may follow other doc lines.
    #[test]
    fn the_off_path_marker_exempts() {
        let src = r#"
            /// Closes the span of a sampled request.
            ///
            /// Off the request path: tracing sampling only, never at rate 0.
            #[cold]
            fn end(s: bool) { tracing::info!("done"); let _ = || tracing::warn!("x"); }
            /// Off the request path: the accept loop's back-off after an accept error.
            async fn backoff() { tracing::warn!("accept failed"); }
            #[doc = "Off the request path: a doc attribute counts too"]
            fn attr() { tracing::warn!("x"); }
            /** Waits.
             * Off the request path: a block doc counts too */
            fn block() { tracing::warn!("x"); }
            struct S;
            impl S {
                /// Off the request path: in an impl as well.
                fn m(&self) { tracing::info_span!("x"); }
            }
        "#;
        assert!(scan(src).is_empty(), "{:?}", scan(src));
        // The exemption is the tracing ban's only: every other ban still applies.
        assert_eq!(
            ids("/// Off the request path: errors.
fn f() { let _ = format!(\"x\"); }"),
            ["format"]
        );
        // Only the marked function: the one after it is scanned as usual.
        assert_eq!(
            ids("/// Off the request path: errors.
fn f() {}
fn g() { tracing::warn!(\"x\"); }"),
            ["tracing-unsampled"]
        );
    }

    /// A marker must carry a reason on its line: without one it is reported and exempts nothing.
    #[test]
    fn an_off_path_marker_without_a_reason_is_rejected() {
        for doc in [
            "/// Off the request path:",
            "/// Off the request path:   ",
            "/// Off the request path: --.",
            "#[doc = \"Off the request path:\"]",
        ] {
            let got = scan(&format!("{doc}\nfn f() {{ tracing::warn!(\"x\"); }}\n"));
            let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, [OFF_PATH_NO_REASON, "tracing-unsampled"], "{doc}: {got:?}");
        }
        // Not a marker at all (the words elsewhere in a line, another wording): no exemption.
        assert_eq!(ids("/// Called when off the request path: errors.\nfn f() { tracing::warn!(\"x\"); }"), ["tracing-unsampled"]);
        assert_eq!(ids("/// Off the request path (errors).\nfn f() { tracing::warn!(\"x\"); }"), ["tracing-unsampled"]);
        // Conditional documentation does not count.
        assert_eq!(
            ids("#[cfg_attr(feature = \"x\", doc = \"Off the request path: errors\")]\nfn f() { tracing::warn!(\"x\"); }"),
            ["tracing-unsampled"]
        );
    }

    /// `#[cold]` is a code-layout hint, not an exemption.
    #[test]
    fn cold_alone_no_longer_exempts() {
        let got = ids("#[cold]\nfn on_error() { tracing::warn!(\"bad\"); }");
        assert_eq!(got, ["tracing-unsampled"]);
        let got = ids("struct S;\nimpl S {\n#[cold]\n#[inline(never)]\nfn e(&self) { tracing::info!(\"x\"); }\n}");
        assert_eq!(got, ["tracing-unsampled"]);
        // Where it is a real hint (a sync fn that needs no exemption), it is fine.
        assert!(scan("#[cold]\nfn error_response() -> u8 { 4 }").is_empty());
    }

    /// `#[cold]` on an `async fn` marks the constructor of its future, not its body: reported at
    /// the attribute, however it is attached, marker or not.
    #[test]
    fn cold_on_an_async_fn_is_flagged() {
        let cases = [
            ("#[cold]\nasync fn connect() {}", 1),
            ("fn a() {}\n\n#[cold]\nasync fn fail() {}", 3),
            ("struct S;\nimpl S {\n    #[cold]\n    async fn tunnel(&self) {}\n}", 3),
            ("trait T {\n    #[cold]\n    async fn t(&self);\n}", 2),
            ("/// Off the request path: errors.\n#[cold]\nasync fn f() { tracing::warn!(\"x\"); }", 2),
            ("#[cfg_attr(feature = \"x\", cold)]\nasync fn f() {}", 1),
        ];
        for (src, line) in cases {
            let v = scan_source(Path::new("proxy/src/data/conn.rs"), src, &rules(), &CrateContext::default()).unwrap();
            let got: Vec<(&str, usize)> = v.iter().map(|v| (v.prohibition.as_str(), v.line)).collect();
            assert_eq!(got, [(COLD_ASYNC, line)], "{src}");
        }
        assert!(scan("#[cold]\nfn sync_error() {}\nasync fn not_cold() {}").is_empty());
    }

    #[test]
    fn lines_are_reported() {
        let v = scan_source(
            Path::new("proxy/src/data/conn.rs"),
            "fn a() {}\n\nfn b() { let _ = format!(\"\"); }\n",
            &rules(),
            &CrateContext::default(),
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].line, 3);
    }

    #[test]
    fn sampled_conditions() {
        let yes = |s: &str| sampled_condition(&syn::parse_str::<Expr>(s).unwrap(), "sampled");
        assert!(yes("sampled"));
        assert!(yes("(self.sampled)"));
        assert!(yes("self.is_sampled()"));
        assert!(yes("x && sampled"));
        assert!(yes("sampled && y > 3"));
        assert!(!yes("!sampled"));
        assert!(!yes("sampled || true"));
        assert!(!yes("sampled == false"));
        assert!(!yes("self.sampled(1)"));
        assert!(!yes("x && (sampled || y)"));
        assert!(!yes("on"));
    }

    #[test]
    fn resolution_through_aliases_modules_and_globs() {
        let got = scan(
            r#"
            use std::sync::Mutex as M;
            mod inner { use super::*; pub fn f() { let _ = M::new(0); } }
            fn g() { let _ = crate::data::conn::M::new(0); let _ = self::inner::f(); }
            "#,
        );
        let mutexes = got.iter().filter(|(id, _)| id == "std-mutex").count();
        assert_eq!(mutexes, 3, "the use, M::new in the inline module, crate::data::conn::M::new: {got:?}");
    }

    /// The `[hot_path]` keys are validated: no `#[path]` allowance, no empty marker, paths only.
    #[test]
    fn the_contract_refuses_a_weakened_hot_path() {
        let text = std::fs::read_to_string(root().join("contracts/phase1.toml")).unwrap();
        let dir = std::env::temp_dir().join(format!("gates-scan-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("phase1.toml");
        let cases = [
            ("allow_attributes = [", "allow_attributes = [\"path\", ", "may not name `path`"),
            ("sampled_branch_marker = \"sampled\"", "sampled_branch_marker = \"\"", "non-empty"),
            ("allow = [", "allow = [\"std::sync::*\", ", "is not a path"),
            ("allow = [", "allow = [\"std::rc::Rc\", ", "listed twice"),
        ];
        for (from, to, want) in cases {
            assert!(text.contains(from), "{from}");
            std::fs::write(&f, text.replacen(from, to, 1)).unwrap();
            let e = contract::load(&f).unwrap_err();
            assert!(e.to_string().contains(want), "{to}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn method_bans_catch_qualified_calls_after_a_type_only() {
        let got = scan("fn f() { let _ = str::to_owned(\"x\"); let _ = Vec::<u8>::repeat; let _ = std::iter::repeat(1); }");
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["string-building", "string-building", "not-allowlisted"], "{got:?}");
    }

    #[test]
    fn local_items_generics_and_prelude_are_fine() {
        let got = scan(
            r#"
            use std::rc::Rc;
            struct S<T> { v: Vec<T>, r: Rc<u8> }
            enum E { A, B }
            impl<T: Clone> S<T> {
                fn f(&self) -> Option<E> { let _ = T::clone; let x = E::A; matches!(x, E::B); Some(x) }
            }
            "#,
        );
        assert!(got.is_empty(), "{got:?}");
    }
}
