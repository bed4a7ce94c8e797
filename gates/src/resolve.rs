//! Name resolution for the static gate ([`crate::scan`]): every path a hot-path file writes is
//! turned into the full path it names, so that a ban or the allowlist cannot be slipped past with
//! a `use` alias, a renamed crate or a relative path.
//!
//! - `crate::`, `self::`, `super::` are taken relative to the file's module (derived from its
//!   path: `proxy/src/data/conn.rs` is `crate::data::conn`, `mod.rs` is its directory's module)
//!   and to inline `mod x { }` blocks.
//! - A first segment bound in scope is substituted: `use` aliases (file level, inline modules,
//!   blocks), `extern crate x as y`, globs of scanned modules, and paths through a scanned
//!   module are looked up in that module (`crate::data::conn::M` where conn.rs has
//!   `use std::sync::Mutex as M` is `std::sync::Mutex`).
//! - Local items and generic parameters are local ([`Res::Local`]).
//! - A dependency key is mapped to its package (`h = { package = "hyper" }`: `h::Client` is
//!   `hyper::Client`), as is an `extern crate` alias in the crate root; `core` and `alloc` are
//!   folded into `std`.
//! - Prelude names (`Vec`, `Some`, `drop`, ...) and macros (`format`, `vec`, ...) resolve to
//!   their std paths; an unknown single-segment macro or derive resolves to `crate::name`, where
//!   `#[macro_export]` puts it (a macro defined elsewhere in the crate is not visible here).
//! - Anything else with one segment is local (variables, fields, enum variants); with more
//!   segments an unknown first segment can only be a crate the manifest does not name, and
//!   stays as written.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Attribute, Item, Meta, Token, UseTree};

/// A path as segments: `["crate", "data", "conn"]`. A leading `::` is the segment `"::"`.
pub type Segs = Vec<String>;

/// What a crate's manifests and crate roots say about the names of other crates.
#[derive(Debug, Clone, Default)]
pub struct CrateContext {
    /// Dependency keys (as identifiers) → crate names (package names as identifiers).
    pub deps: BTreeMap<String, String>,
    /// Names usable as the first segment of a path into another crate: the dependency keys and
    /// the crate roots' `extern crate x as y` aliases. `"crate"` for `extern crate self as y`.
    pub externs: BTreeMap<String, String>,
}

/// A manifest or crate root that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", path.display())]
    Manifest { path: PathBuf, source: toml::de::Error },
    /// A manifest given as text ([`CrateContext::from_sources`]): `which` is `Cargo.toml` or
    /// `workspace Cargo.toml`.
    #[error("{which}")]
    ManifestText { which: &'static str, source: toml::de::Error },
    #[error("{}:{line}: cannot parse", path.display())]
    Parse { path: PathBuf, line: usize, source: syn::Error },
}

fn ident_of(name: &str) -> String {
    name.replace('-', "_")
}

impl CrateContext {
    /// Reads `root/package_dir/Cargo.toml`, the workspace manifest `root/Cargo.toml` and the
    /// crate roots (`[lib]`/`[[bin]]` paths, `src/lib.rs`, `src/main.rs`). Missing files are
    /// skipped (a fixture tree may have none): the resolution then knows no renames.
    pub fn load(root: &Path, package_dir: &Path) -> Result<Self, ResolveError> {
        let read = |p: &Path| -> Result<Option<String>, ResolveError> {
            match std::fs::read_to_string(p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ResolveError::Read { path: p.to_path_buf(), source }),
            }
        };
        let pkg_manifest = root.join(package_dir).join("Cargo.toml");
        let manifest = read(&pkg_manifest)?;
        let ws_manifest = root.join("Cargo.toml");
        let workspace = if ws_manifest == pkg_manifest { None } else { read(&ws_manifest)? };
        let mut root_files: Vec<PathBuf> = vec![PathBuf::from("src/lib.rs"), PathBuf::from("src/main.rs")];
        if let Some(m) = &manifest {
            let t: toml::Table = toml::from_str(m).map_err(|source| ResolveError::Manifest { path: pkg_manifest.clone(), source })?;
            if let Some(p) = t.get("lib").and_then(|l| l.get("path")).and_then(|p| p.as_str()) {
                root_files.push(PathBuf::from(p));
            }
            for b in t.get("bin").and_then(|b| b.as_array()).into_iter().flatten() {
                if let Some(p) = b.get("path").and_then(|p| p.as_str()) {
                    root_files.push(PathBuf::from(p));
                }
            }
        }
        root_files.sort();
        root_files.dedup();
        let mut roots = Vec::new();
        for f in root_files {
            let p = root.join(package_dir).join(&f);
            if let Some(src) = read(&p)? {
                roots.push((p, src));
            }
        }
        let roots_ref: Vec<(&Path, &str)> = roots.iter().map(|(p, s)| (p.as_path(), s.as_str())).collect();
        Self::from_sources(manifest.as_deref(), workspace.as_deref(), &roots_ref)
    }

    /// The same from texts: the package manifest, the workspace manifest and the crate roots.
    pub fn from_sources(manifest: Option<&str>, workspace: Option<&str>, roots: &[(&Path, &str)]) -> Result<Self, ResolveError> {
        let mut cx = CrateContext::default();
        let ws_deps = match workspace {
            Some(w) => {
                let t: toml::Table =
                    toml::from_str(w).map_err(|source| ResolveError::ManifestText { which: "workspace Cargo.toml", source })?;
                t.get("workspace").and_then(|w| w.get("dependencies")).and_then(|d| d.as_table()).cloned().unwrap_or_default()
            }
            None => toml::Table::new(),
        };
        if let Some(m) = manifest {
            let t: toml::Table = toml::from_str(m).map_err(|source| ResolveError::ManifestText { which: "Cargo.toml", source })?;
            let mut tables: Vec<&toml::Table> = Vec::new();
            for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
                tables.extend(t.get(key).and_then(|d| d.as_table()));
            }
            for target in t.get("target").and_then(|t| t.as_table()).into_iter().flat_map(|t| t.values()) {
                for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
                    tables.extend(target.get(key).and_then(|d| d.as_table()));
                }
            }
            for deps in tables {
                for (key, spec) in deps {
                    let mut package = spec.get("package").and_then(|p| p.as_str()).map(str::to_owned);
                    if package.is_none() && spec.get("workspace").and_then(|w| w.as_bool()) == Some(true) {
                        package = ws_deps.get(key).and_then(|w| w.get("package")).and_then(|p| p.as_str()).map(str::to_owned);
                    }
                    let package = package.unwrap_or_else(|| key.clone());
                    cx.deps.insert(ident_of(key), ident_of(&package));
                }
            }
        }
        cx.externs = cx.deps.clone();
        for (path, src) in roots {
            let file = syn::parse_file(src).map_err(|source| ResolveError::Parse {
                path: path.to_path_buf(),
                line: source.span().start().line,
                source,
            })?;
            for item in &file.items {
                if let Item::ExternCrate(e) = item {
                    let target = cx.crate_of(&unraw(&e.ident));
                    let name = e.rename.as_ref().map_or_else(|| unraw(&e.ident), |(_, r)| unraw(r));
                    cx.externs.insert(name, target);
                }
            }
        }
        Ok(cx)
    }

    /// The crate an `extern crate NAME` names: the dependency's package, or `crate` for `self`.
    pub fn crate_of(&self, name: &str) -> String {
        if name == "self" {
            return "crate".to_owned();
        }
        if matches!(name, "std" | "core" | "alloc") {
            return "std".to_owned();
        }
        self.deps.get(name).cloned().unwrap_or_else(|| name.to_owned())
    }
}

/// An identifier without its `r#`.
pub fn unraw(i: &proc_macro2::Ident) -> String {
    let s = i.to_string();
    s.strip_prefix("r#").map_or(s.clone(), str::to_owned)
}

/// The package directory, module path and child-module directory of a source file given
/// relative to the workspace root: `proxy/src/data/conn.rs` → (`proxy`, `crate::data::conn`,
/// `proxy/src/data/conn`). A file outside any `src/` directory is a crate root.
pub fn module_of(rel: &Path) -> (PathBuf, Segs, PathBuf) {
    let comps: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let Some(src) = comps.iter().position(|c| c == "src") else {
        return (parent.clone(), vec!["crate".to_owned()], parent);
    };
    let package: PathBuf = comps[..src].iter().collect();
    let mut module = vec!["crate".to_owned()];
    let inner = &comps[src + 1..];
    for (i, c) in inner.iter().enumerate() {
        if i + 1 == inner.len() {
            let stem = c.strip_suffix(".rs").unwrap_or(c);
            let is_root = (i == 0 && (stem == "lib" || stem == "main")) || stem == "mod";
            if is_root {
                return (package, module, parent);
            }
            module.push(stem.to_owned());
        } else {
            module.push(c.clone());
        }
    }
    let dir = rel.with_extension("");
    (package, module, dir)
}

/// Names of the std prelude (edition 2024) and the paths they stand for.
const PRELUDE: &[(&str, &str)] = &[
    ("Copy", "std::marker::Copy"),
    ("Send", "std::marker::Send"),
    ("Sized", "std::marker::Sized"),
    ("Sync", "std::marker::Sync"),
    ("Unpin", "std::marker::Unpin"),
    ("Drop", "std::ops::Drop"),
    ("Fn", "std::ops::Fn"),
    ("FnMut", "std::ops::FnMut"),
    ("FnOnce", "std::ops::FnOnce"),
    ("AsyncFn", "std::ops::AsyncFn"),
    ("AsyncFnMut", "std::ops::AsyncFnMut"),
    ("AsyncFnOnce", "std::ops::AsyncFnOnce"),
    ("drop", "std::mem::drop"),
    ("size_of", "std::mem::size_of"),
    ("size_of_val", "std::mem::size_of_val"),
    ("align_of", "std::mem::align_of"),
    ("align_of_val", "std::mem::align_of_val"),
    ("Box", "std::boxed::Box"),
    ("ToOwned", "std::borrow::ToOwned"),
    ("Clone", "std::clone::Clone"),
    ("PartialEq", "std::cmp::PartialEq"),
    ("PartialOrd", "std::cmp::PartialOrd"),
    ("Eq", "std::cmp::Eq"),
    ("Ord", "std::cmp::Ord"),
    ("AsRef", "std::convert::AsRef"),
    ("AsMut", "std::convert::AsMut"),
    ("Into", "std::convert::Into"),
    ("From", "std::convert::From"),
    ("TryFrom", "std::convert::TryFrom"),
    ("TryInto", "std::convert::TryInto"),
    ("Default", "std::default::Default"),
    ("Iterator", "std::iter::Iterator"),
    ("Extend", "std::iter::Extend"),
    ("IntoIterator", "std::iter::IntoIterator"),
    ("DoubleEndedIterator", "std::iter::DoubleEndedIterator"),
    ("ExactSizeIterator", "std::iter::ExactSizeIterator"),
    ("FromIterator", "std::iter::FromIterator"),
    ("Option", "std::option::Option"),
    ("Some", "std::option::Option::Some"),
    ("None", "std::option::Option::None"),
    ("Result", "std::result::Result"),
    ("Ok", "std::result::Result::Ok"),
    ("Err", "std::result::Result::Err"),
    ("String", "std::string::String"),
    ("ToString", "std::string::ToString"),
    ("Vec", "std::vec::Vec"),
    ("Future", "std::future::Future"),
    ("IntoFuture", "std::future::IntoFuture"),
];

/// Derive macros of the prelude that are not also trait names above.
const PRELUDE_DERIVES: &[(&str, &str)] = &[("Debug", "std::fmt::Debug"), ("Hash", "std::hash::Hash")];

/// Macros usable everywhere without an import (std's `#[macro_use]` prelude and builtins).
const PRELUDE_MACROS: &[&str] = &[
    "assert",
    "assert_eq",
    "assert_ne",
    "cfg",
    "column",
    "compile_error",
    "concat",
    "concat_idents",
    "const_format_args",
    "dbg",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "env",
    "eprint",
    "eprintln",
    "file",
    "format",
    "format_args",
    "format_args_nl",
    "include",
    "include_bytes",
    "include_str",
    "is_x86_feature_detected",
    "line",
    "log_syntax",
    "matches",
    "module_path",
    "option_env",
    "panic",
    "print",
    "println",
    "stringify",
    "thread_local",
    "todo",
    "trace_macros",
    "try",
    "unimplemented",
    "unreachable",
    "vec",
    "write",
    "writeln",
];

pub const PRIMITIVES: &[&str] = &[
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f16", "f32", "f64",
    "f128",
];

/// Rust keywords (strict and reserved): never a path segment on their own, except the four
/// that start paths.
pub const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn", "for", "if", "impl",
    "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "gen", "macro", "override", "priv",
    "typeof", "unsized", "virtual", "yield", "try", "_",
];

fn prelude(name: &str, table: &[(&str, &str)]) -> Option<Segs> {
    table.iter().find(|(n, _)| *n == name).map(|(_, p)| p.split("::").map(str::to_owned).collect())
}

/// The namespace a path is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// Types, values, modules: expressions, types, patterns.
    Path,
    /// A `use` tree (or `extern crate`): a single segment may name a crate.
    Use,
    /// A bang macro's path.
    Macro,
    /// A `#[derive(..)]` path (or an attribute macro's).
    Derive,
}

/// What a name is bound to in a scope.
#[derive(Debug, Clone)]
pub enum Binding {
    /// `use` target as written, resolved lazily from the declaring scope.
    Use(Segs),
    /// An item declared in the scope. `path`: its full path for items of a module (None for
    /// items in a block); `module`: it is a `mod`.
    Item { path: Option<Segs>, module: bool },
    /// A `macro_rules!` macro defined in the scope.
    Macro,
    /// `extern crate x as y`: the crate's name (or `crate`).
    Crate(String),
    /// A generic parameter.
    Generic,
}

/// A module (no parent: names of enclosing modules are not in scope) or a block, generics list
/// or other nested scope (parent: the enclosing scope).
#[derive(Debug, Clone)]
pub struct Scope {
    pub parent: Option<usize>,
    /// The module this scope is in (for `self::` and `super::`).
    pub module: Segs,
    pub names: HashMap<String, Binding>,
    /// Glob imports (`use x::*`) as written.
    pub globs: Vec<Segs>,
}

/// The scopes of one crate's scanned files: one per module (file or inline `mod`), plus the
/// block and generics scopes added while scanning.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub scopes: Vec<Scope>,
    /// Module path → its scope (only modules whose source is scanned).
    pub modules: HashMap<Segs, usize>,
    next_anon: usize,
    /// (scope, glob index) → the scanned module the glob imports, resolved once (`None` while
    /// being resolved, so a glob is never consulted to resolve itself).
    globs: RefCell<HashMap<(usize, usize), Option<usize>>>,
}

/// One leaf of a flattened `use` tree.
#[derive(Debug, Clone)]
pub struct UseLeaf {
    /// The path as written (leading `::` as the segment `"::"`).
    pub target: Segs,
    /// The name it binds (`None` for `as _` and globs).
    pub name: Option<String>,
    pub glob: bool,
    pub span: proc_macro2::Span,
}

/// Flattens a `use` tree into its leaves.
pub fn flatten_use(leading_colon: bool, tree: &UseTree) -> Vec<UseLeaf> {
    fn go(prefix: &mut Segs, tree: &UseTree, out: &mut Vec<UseLeaf>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(unraw(&p.ident));
                go(prefix, &p.tree, out);
                prefix.pop();
            }
            UseTree::Name(n) => {
                let name = unraw(&n.ident);
                if name == "self" {
                    let bound = prefix.last().cloned();
                    out.push(UseLeaf { target: prefix.clone(), name: bound, glob: false, span: n.ident.span() });
                } else {
                    let mut t = prefix.clone();
                    t.push(name.clone());
                    out.push(UseLeaf { target: t, name: Some(name), glob: false, span: n.ident.span() });
                }
            }
            UseTree::Rename(r) => {
                let name = unraw(&r.ident);
                let mut t = prefix.clone();
                if name != "self" {
                    t.push(name);
                }
                let bound = unraw(&r.rename);
                out.push(UseLeaf { target: t, name: (bound != "_").then_some(bound), glob: false, span: r.ident.span() });
            }
            UseTree::Glob(g) => out.push(UseLeaf { target: prefix.clone(), name: None, glob: true, span: g.star_token.spans[0] }),
            UseTree::Group(g) => {
                for t in &g.items {
                    go(prefix, t, out);
                }
            }
        }
    }
    let mut prefix = if leading_colon { vec!["::".to_owned()] } else { Vec::new() };
    let mut out = Vec::new();
    go(&mut prefix, tree, &mut out);
    out
}

/// Whether a `#[cfg(..)]` predicate can only hold when compiling tests: `test`; `all(..)` with
/// an argument that implies it; `any(..)` all of whose arguments imply it. `not(..)` never does.
pub fn implies_test(meta: &Meta) -> bool {
    match meta {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(l) => {
            let Ok(args) = l.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else { return false };
            if l.path.is_ident("all") {
                args.iter().any(implies_test)
            } else if l.path.is_ident("any") {
                args.iter().all(implies_test)
            } else {
                false
            }
        }
        Meta::NameValue(_) => false,
    }
}

/// Whether these attributes make their item exist only in test builds (`#[cfg(P)]` with `P`
/// implying `test`, or `#[test]`). A `cfg` inside `cfg_attr` is not counted (scanning more is
/// the safe side).
pub fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("test") || (a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| implies_test(&m))))
}

/// `#[cfg_attr(predicate, attr, ...)]` split into its predicate and attributes.
pub fn parse_cfg_attr(a: &Meta) -> Option<(Meta, Vec<Meta>)> {
    let Meta::List(l) = a else { return None };
    let parser = |input: ParseStream| -> syn::Result<(Meta, Vec<Meta>)> {
        let pred: Meta = input.parse()?;
        let mut attrs = Vec::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            attrs.push(input.parse::<Meta>()?);
        }
        Ok((pred, attrs))
    };
    parser.parse2(l.tokens.clone()).ok()
}

pub fn item_attrs(i: &Item) -> &[Attribute] {
    match i {
        Item::Const(x) => &x.attrs,
        Item::Enum(x) => &x.attrs,
        Item::ExternCrate(x) => &x.attrs,
        Item::Fn(x) => &x.attrs,
        Item::ForeignMod(x) => &x.attrs,
        Item::Impl(x) => &x.attrs,
        Item::Macro(x) => &x.attrs,
        Item::Mod(x) => &x.attrs,
        Item::Static(x) => &x.attrs,
        Item::Struct(x) => &x.attrs,
        Item::Trait(x) => &x.attrs,
        Item::TraitAlias(x) => &x.attrs,
        Item::Type(x) => &x.attrs,
        Item::Union(x) => &x.attrs,
        Item::Use(x) => &x.attrs,
        _ => &[],
    }
}

impl Index {
    /// Adds a scope; returns its id.
    pub fn push(&mut self, scope: Scope) -> usize {
        self.scopes.push(scope);
        self.scopes.len() - 1
    }

    /// A path for a module declared where it has none (a `mod` inside a function body).
    pub fn anon_module(&mut self, module: &[String], name: &str) -> Segs {
        self.next_anon += 1;
        let mut p = module.to_vec();
        p.push(format!("{{block#{}}}", self.next_anon));
        p.push(name.to_owned());
        p
    }

    /// Adds the scope of module `path` with `items` (and, recursively, of its inline modules).
    /// Test-only items are left out: they do not exist in the build the gate checks.
    pub fn add_module(&mut self, path: Segs, items: &[Item]) -> usize {
        if let Some(&id) = self.modules.get(&path) {
            return id;
        }
        let id = self.push(Scope { parent: None, module: path.clone(), names: HashMap::new(), globs: Vec::new() });
        self.modules.insert(path.clone(), id);
        let (names, globs) = self.collect(&path, false, items.iter());
        self.scopes[id].names = names;
        self.scopes[id].globs = globs;
        for item in items {
            if let Item::Mod(m) = item
                && let Some((_, inner)) = &m.content
                && !is_test_only(&m.attrs)
            {
                let mut p = path.clone();
                p.push(unraw(&m.ident));
                self.add_module(p, inner);
            }
        }
        id
    }

    /// The names `items` declare, in `module` (`in_block`: in a block of it, where items have no
    /// path and an inline module gets an anonymous one).
    pub fn collect<'i>(
        &mut self,
        module: &Segs,
        in_block: bool,
        items: impl Iterator<Item = &'i Item>,
    ) -> (HashMap<String, Binding>, Vec<Segs>) {
        let mut names = HashMap::new();
        let mut globs = Vec::new();
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            let plain = |names: &mut HashMap<String, Binding>, ident: &proc_macro2::Ident| {
                let n = unraw(ident);
                let path = (!in_block).then(|| {
                    let mut p = module.clone();
                    p.push(n.clone());
                    p
                });
                names.entry(n).or_insert(Binding::Item { path, module: false });
            };
            match item {
                Item::Use(u) => {
                    for leaf in flatten_use(u.leading_colon.is_some(), &u.tree) {
                        if leaf.glob {
                            globs.push(leaf.target);
                        } else if let Some(n) = leaf.name {
                            names.entry(n).or_insert(Binding::Use(leaf.target));
                        }
                    }
                }
                Item::Mod(m) => {
                    let n = unraw(&m.ident);
                    let path = if in_block {
                        self.anon_module(module, &n)
                    } else {
                        let mut p = module.clone();
                        p.push(n.clone());
                        p
                    };
                    names.entry(n).or_insert(Binding::Item { path: Some(path), module: true });
                }
                Item::Fn(x) => plain(&mut names, &x.sig.ident),
                Item::Struct(x) => plain(&mut names, &x.ident),
                Item::Enum(x) => plain(&mut names, &x.ident),
                Item::Union(x) => plain(&mut names, &x.ident),
                Item::Type(x) => plain(&mut names, &x.ident),
                Item::Trait(x) => plain(&mut names, &x.ident),
                Item::TraitAlias(x) => plain(&mut names, &x.ident),
                Item::Const(x) if x.ident != "_" => plain(&mut names, &x.ident),
                Item::Static(x) => plain(&mut names, &x.ident),
                Item::Macro(x) => {
                    if let Some(i) = &x.ident {
                        names.entry(unraw(i)).or_insert(Binding::Macro);
                    }
                }
                Item::ExternCrate(e) => {
                    let n = e.rename.as_ref().map_or_else(|| unraw(&e.ident), |(_, r)| unraw(r));
                    names.entry(n).or_insert(Binding::Crate(unraw(&e.ident)));
                }
                Item::ForeignMod(f) => {
                    for fi in &f.items {
                        match fi {
                            syn::ForeignItem::Fn(x) => plain(&mut names, &x.sig.ident),
                            syn::ForeignItem::Static(x) => plain(&mut names, &x.ident),
                            syn::ForeignItem::Type(x) => plain(&mut names, &x.ident),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        (names, globs)
    }
}

/// The result of resolving a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Res {
    /// A local name, or an item defined in scanned code: nothing to check beyond what is written.
    Local,
    /// A module whose source is scanned (`crate::data`): what is used from it is resolved there.
    Module(Segs),
    /// A primitive type (`u16::MAX`).
    Builtin,
    /// A full path: `crate::..`, `std::..` (core and alloc folded in), or `<crate>::..`.
    Path(Segs),
    /// Cannot be resolved (more `super`s than modules, a cycle of aliases): reported as written.
    Unknown(Segs),
}

/// Resolves paths against an [`Index`] and a [`CrateContext`].
#[derive(Debug, Clone, Copy)]
pub struct Resolver<'a> {
    pub index: &'a Index,
    pub cx: &'a CrateContext,
}

/// How deep alias chains may go before a path counts as unresolvable.
const MAX_DEPTH: usize = 32;

impl Resolver<'_> {
    /// Resolves `segs` written in scope `from`.
    pub fn resolve(&self, segs: &[String], from: usize, ns: Ns) -> Res {
        self.go(segs, from, ns, 0)
    }

    fn go(&self, segs: &[String], from: usize, ns: Ns, depth: usize) -> Res {
        if depth > MAX_DEPTH {
            return Res::Unknown(segs.to_vec());
        }
        let Some(first) = segs.first() else { return Res::Local };
        let rest = &segs[1..];
        let module = &self.index.scopes[from].module;
        match first.as_str() {
            "::" => {
                let Some(name) = rest.first() else { return Res::Unknown(segs.to_vec()) };
                let mut p = self.extern_root(name);
                p.extend_from_slice(&rest[1..]);
                return self.absolute(p, ns, depth + 1);
            }
            "crate" | "$crate" => {
                let mut p = vec!["crate".to_owned()];
                p.extend_from_slice(rest);
                return self.absolute(p, ns, depth + 1);
            }
            "self" if !rest.is_empty() || ns == Ns::Use => {
                let mut p = module.clone();
                p.extend_from_slice(rest);
                return self.absolute(p, ns, depth + 1);
            }
            "self" | "Self" => return Res::Local,
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                if ups >= module.len() {
                    return Res::Unknown(segs.to_vec());
                }
                let mut p = module[..module.len() - ups].to_vec();
                p.extend_from_slice(&segs[ups..]);
                return self.absolute(p, ns, depth + 1);
            }
            _ => {}
        }
        let first_ns = if rest.is_empty() { ns } else { Ns::Path };
        if let Some(r) = self.lookup(first, from, first_ns, depth + 1) {
            return self.join(r, rest, ns, depth + 1);
        }
        if rest.is_empty() {
            match ns {
                Ns::Macro | Ns::Derive => {
                    if ns == Ns::Macro && PRELUDE_MACROS.contains(&first.as_str()) {
                        return Res::Path(vec!["std".to_owned(), first.clone()]);
                    }
                    if ns == Ns::Derive
                        && let Some(p) = prelude(first, PRELUDE_DERIVES).or_else(|| prelude(first, PRELUDE))
                    {
                        return Res::Path(p);
                    }
                    return Res::Path(vec!["crate".to_owned(), first.clone()]);
                }
                Ns::Path | Ns::Use => {}
            }
        }
        if !rest.is_empty() || ns == Ns::Use {
            // Extern names first: `extern crate x as std;` in the crate root shadows std.
            if let Some(c) = self.cx.externs.get(first) {
                let mut p = vec![c.clone()];
                p.extend_from_slice(rest);
                return self.absolute(p, ns, depth + 1);
            }
            if matches!(first.as_str(), "std" | "core" | "alloc") {
                let mut p = vec!["std".to_owned()];
                p.extend_from_slice(rest);
                return Res::Path(p);
            }
        }
        if let Some(mut p) = prelude(first, PRELUDE) {
            p.extend_from_slice(rest);
            return Res::Path(p);
        }
        if PRIMITIVES.contains(&first.as_str()) {
            return Res::Builtin;
        }
        if rest.is_empty() && ns != Ns::Use {
            return Res::Local;
        }
        // Not in scope, not a dependency: only a crate could be named so.
        Res::Path(segs.to_vec())
    }

    /// An attribute's path: a single segment is resolved only if a name in scope binds it
    /// (`use tracing::instrument; #[instrument]`); otherwise it is a builtin, tool or derive
    /// helper attribute and `None` is returned.
    pub fn resolve_attribute(&self, segs: &[String], from: usize) -> Option<Res> {
        match segs {
            [one] => self.lookup(one, from, Ns::Derive, 0),
            _ => Some(self.resolve(segs, from, Ns::Derive)),
        }
    }

    /// The scanned module glob `gi` of scope `scope` imports, if it is one.
    fn glob_module(&self, scope: usize, gi: usize, depth: usize) -> Option<usize> {
        if let Some(m) = self.index.globs.borrow().get(&(scope, gi)) {
            return *m;
        }
        self.index.globs.borrow_mut().insert((scope, gi), None);
        let m = match self.go(&self.index.scopes[scope].globs[gi], scope, Ns::Use, depth + 1) {
            Res::Module(p) => self.index.modules.get(&p).copied(),
            _ => None,
        };
        self.index.globs.borrow_mut().insert((scope, gi), m);
        m
    }

    /// `name` as the first segment after a leading `::`: a crate.
    fn extern_root(&self, name: &str) -> Segs {
        if let Some(c) = self.cx.externs.get(name) {
            return vec![c.clone()];
        }
        if matches!(name, "std" | "core" | "alloc") {
            return vec!["std".to_owned()];
        }
        vec![name.to_owned()]
    }

    /// `r` followed by the segments `rest`.
    fn join(&self, r: Res, rest: &[String], ns: Ns, depth: usize) -> Res {
        match r {
            Res::Path(mut p) | Res::Module(mut p) => {
                p.extend_from_slice(rest);
                if p.first().is_some_and(|s| s == "crate") { self.absolute(p, ns, depth + 1) } else { Res::Path(p) }
            }
            Res::Unknown(mut p) => {
                p.extend_from_slice(rest);
                Res::Unknown(p)
            }
            // `Enum::Variant`, `Type::assoc`, `T::Output`: part of a local item or generic.
            Res::Local => Res::Local,
            Res::Builtin => Res::Builtin,
        }
    }

    /// A full path: through a scanned module, the name it declares there is looked up (an alias
    /// there is followed); otherwise the path is what it says.
    fn absolute(&self, p: Segs, ns: Ns, depth: usize) -> Res {
        if depth > MAX_DEPTH {
            return Res::Unknown(p);
        }
        if p.first().is_none_or(|s| s != "crate") {
            return Res::Path(p);
        }
        if self.index.modules.contains_key(&p) {
            return Res::Module(p);
        }
        for i in (1..p.len()).rev() {
            let Some(&m) = self.index.modules.get(&p[..i]) else { continue };
            let ns_i = if i + 1 == p.len() { ns } else { Ns::Path };
            return match self.lookup(&p[i], m, ns_i, depth + 1) {
                // An item defined in a scanned module: checked where it is defined.
                Some(Res::Local) => Res::Local,
                // A `mod` whose source is not scanned (it would have been found as a module).
                Some(Res::Path(q)) if q[..] == p[..=i] => Res::Path(p),
                Some(r) => self.join(r, &p[i + 1..], ns, depth + 1),
                None => Res::Path(p),
            };
        }
        Res::Path(p)
    }

    /// The binding of `name` seen from scope `from` (walking out through blocks up to the
    /// module, and into globs of scanned modules).
    fn lookup(&self, name: &str, from: usize, ns: Ns, depth: usize) -> Option<Res> {
        if depth > MAX_DEPTH {
            return Some(Res::Unknown(vec![name.to_owned()]));
        }
        let mut cur = Some(from);
        while let Some(id) = cur {
            let s = &self.index.scopes[id];
            if let Some(b) = s.names.get(name) {
                let macro_ns = matches!(ns, Ns::Macro | Ns::Derive);
                match b {
                    Binding::Use(target) => return Some(self.go(target, id, Ns::Use, depth + 1)),
                    // Followed by `join`/`absolute`: into the module if it is scanned.
                    Binding::Item { path: Some(p), module: true } if !macro_ns => return Some(Res::Path(p.clone())),
                    Binding::Item { .. } | Binding::Generic if !macro_ns => return Some(Res::Local),
                    Binding::Macro if macro_ns => return Some(Res::Local),
                    Binding::Crate(c) if !macro_ns => return Some(Res::Path(vec![self.cx.crate_of(c)])),
                    _ => {}
                }
            }
            for gi in 0..s.globs.len() {
                if let Some(m) = self.glob_module(id, gi, depth + 1)
                    && m != id
                    && let Some(r) = self.lookup(name, m, ns, depth + 1)
                {
                    return Some(r);
                }
            }
            cur = s.parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn segs(s: &str) -> Segs {
        s.split("::").map(str::to_owned).collect()
    }

    #[test]
    fn module_paths_follow_the_file_tree() {
        let m = |p: &str| module_of(Path::new(p));
        assert_eq!(m("proxy/src/data/conn.rs"), (PathBuf::from("proxy"), segs("crate::data::conn"), PathBuf::from("proxy/src/data/conn")));
        assert_eq!(m("proxy/src/data/mod.rs"), (PathBuf::from("proxy"), segs("crate::data"), PathBuf::from("proxy/src/data")));
        assert_eq!(m("proxy/src/lib.rs").1, segs("crate"));
        assert_eq!(m("proxy/src/snapshot.rs").1, segs("crate::snapshot"));
    }

    #[test]
    fn cfg_predicates_that_imply_test() {
        let p = |s: &str| implies_test(&syn::parse_str::<Meta>(s).unwrap());
        assert!(p("test"));
        assert!(p("all(test, feature = \"x\")"));
        assert!(p("any(test, all(test, unix))"));
        assert!(!p("not(test)"));
        assert!(!p("any(test, feature = \"x\")"));
        assert!(!p("feature = \"test\""));
        assert!(!p("all(unix, not(test))"));
    }

    #[test]
    fn manifests_resolve_renames() {
        let ws = "[workspace.dependencies]\nh2x = { package = \"hyper\", version = \"1\" }\narc-swap = \"1\"\n";
        let m = "[dependencies]\nh = { package = \"hyper\", version = \"1\" }\nh2x = { workspace = true }\narc-swap.workspace = true\n";
        let root = "extern crate tokio as rt;\nextern crate self as me;\n";
        let cx = CrateContext::from_sources(Some(m), Some(ws), &[(Path::new("lib.rs"), root)]).unwrap();
        assert_eq!(cx.externs["h"], "hyper");
        assert_eq!(cx.externs["h2x"], "hyper");
        assert_eq!(cx.externs["arc_swap"], "arc_swap");
        assert_eq!(cx.externs["rt"], "tokio");
        assert_eq!(cx.externs["me"], "crate");
    }
}
