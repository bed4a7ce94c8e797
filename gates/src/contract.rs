//! `contracts/*.toml`: the contract as data. Every key is documented in `contracts/README.md`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The contract format this runner understands.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub schema_version: u32,
    pub phase: u32,
    pub name: String,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// Required with a static gate; a contract without one (phase 2: its modules are in phase 1's
    /// hot path, which covers every data-plane file) may leave it out.
    #[serde(default)]
    pub hot_path: HotPath,
    #[serde(default)]
    pub prohibitions: Vec<Prohibition>,
    pub gates: Gates,
    /// File the contract was read from (set after parsing).
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub id: String,
    pub text: String,
    pub protected_by: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotPath {
    /// Globs relative to the workspace root (`**` any depth, `*` within a name).
    pub paths: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<Exclude>,
    pub sampled_branch_marker: String,
    /// What the hot path may name: path prefixes, matched after resolution (use aliases,
    /// renamed crates, relative paths). Anything else is a violation until the contract allows it.
    #[serde(default)]
    pub allow: Vec<Allowed>,
    /// Attributes the hot path may carry, by name (`inline`) or full path.
    #[serde(default)]
    pub allow_attributes: Vec<Allowed>,
    /// Which hot-path module may use which: each rule forbids the files of some modules to name
    /// paths under others (after resolution, like the allowlist).
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// A layering rule of the hot path: files whose module starts with one of `modules` may not name
/// anything under `may_not_use`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub modules: Vec<String>,
    pub may_not_use: Vec<String>,
    pub reason: String,
}

/// One allowlist entry: a bare path, or a table with the reason it is allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Allowed {
    Plain(String),
    Reasoned(AllowEntry),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub path: String,
    pub reason: String,
}

impl Allowed {
    pub fn path(&self) -> &str {
        match self {
            Allowed::Plain(p) => p,
            Allowed::Reasoned(e) => &e.path,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    pub path: String,
    pub reason: String,
    /// The exclusion lapses when the run builds with any of these features.
    #[serde(default)]
    pub unless_features: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BanKind {
    /// A path (in a type, expression, pattern, `use` or macro name) containing these segments.
    Path,
    /// A macro invocation whose last path segment is one of these.
    Macro,
    /// Like `macro`, but allowed in functions marked off the request path (`scan::OFF_PATH_MARKER`)
    /// and inside the sampled branch.
    MacroUnsampled,
    /// A method call with one of these names.
    Method,
    /// `Box<dyn ...>` where the trait's last segment is one of these.
    DynError,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prohibition {
    pub id: String,
    pub kind: BanKind,
    pub matches: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(rename = "static")]
    pub static_: Option<StaticGate>,
    pub alloc: Option<AllocGate>,
    pub instructions: Option<InstructionsGate>,
    pub latency: Option<LatencyGate>,
    pub syscalls: Option<FloorGate>,
    pub floor: Option<FloorGate>,
    pub memory: Option<MemoryGate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticGate {
    pub metric: String,
    pub unit: String,
    pub hard_limit: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocGate {
    /// The probe's name for the gate's own shape, the row `alloc` (default `get`).
    pub shape: Option<String>,
    pub metric: String,
    pub unit: String,
    pub workload: String,
    pub requests: u64,
    pub warmup: u64,
    pub body_bytes: usize,
    pub hard_limit: f64,
    pub soft_limit_pct: Option<f64>,
    #[serde(default)]
    pub report_engines: Vec<String>,
    /// Further request shapes (`[[gates.alloc.shapes]]`), each its own row `alloc[<name>]`;
    /// the keys above are the gate's own shape's (`shape`).
    #[serde(default)]
    pub shapes: Vec<AllocShape>,
}

/// One request shape of the alloc gate, measured by `alloc-probe --shape <name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocShape {
    /// The probe's name for the shape (`alloc-probe --list`).
    pub name: String,
    /// Allocations per exchange; above it the row fails.
    pub hard_limit: f64,
    /// Why the limit is not 0 (the gate refuses a limit above 0 without one).
    pub reason: Option<String>,
    /// Measured exchanges and warm-up exchanges (default: the gate's `requests` and `warmup`).
    pub requests: Option<u64>,
    pub warmup: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionsGate {
    /// The gate's own row's name: its key is then `instructions@<name>`, like its `rows`' (a gate
    /// whose figures are all of one kind, phase 3's HTTP/3 rows); without it, `instructions`.
    pub name: Option<String>,
    pub metric: String,
    pub unit: String,
    pub workload: String,
    pub requests: u64,
    pub body_bytes: usize,
    pub hard_limit: f64,
    pub soft_limit_pct: Option<f64>,
    /// The bench group to run (`exchanges`, the default; `tls`).
    pub group: Option<String>,
    /// The figure is `target − base` per request, each from its bench functions `<name>_n` and
    /// `<name>_2n` (default: `proxied − direct`).
    pub base: Option<String>,
    pub target: Option<String>,
    /// A floor measured beside it (`<name>_n`, `<name>_2n`): the figure may be at most
    /// `floor_ratio_limit` times the floor's per-request count.
    pub floor: Option<String>,
    pub floor_ratio_limit: Option<f64>,
    /// The floor's figure is its bench's per-request count minus the base's (a floor that, like
    /// the target, runs between the same client and origin as the base: HTTP/2's relay).
    #[serde(default)]
    pub floor_minus_base: bool,
    /// Further figures of the same gate (`[[gates.instructions.rows]]`), each its own row
    /// `instructions@<name>`; the keys above are the gate's own row's (`instructions`).
    #[serde(default)]
    pub rows: Vec<InstructionsRow>,
}

/// One more row of the instruction gate: its own bench functions and limits; `metric`, `unit`,
/// `workload` default to the gate's. Rows that name the same `group` are judged from one run of
/// that group, so they must ask for the same `requests` and `body_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionsRow {
    /// The row key's suffix: `phase2:instructions@<name>`.
    pub name: String,
    pub metric: Option<String>,
    pub unit: Option<String>,
    pub workload: Option<String>,
    pub requests: u64,
    pub body_bytes: usize,
    pub group: String,
    pub base: String,
    pub target: String,
    pub floor: Option<String>,
    pub floor_ratio_limit: Option<f64>,
    #[serde(default)]
    pub floor_minus_base: bool,
    pub hard_limit: f64,
    pub soft_limit_pct: Option<f64>,
}

impl InstructionsGate {
    /// Every row of the gate as a gate of its own, with its key's suffix (`""` for the gate's own
    /// row, `@<name>` for each of `rows`).
    pub fn all_rows(&self) -> Vec<(String, InstructionsGate)> {
        let own = self.name.as_ref().map(|n| format!("@{n}")).unwrap_or_default();
        let mut out = vec![(own, InstructionsGate { rows: Vec::new(), ..self.clone() })];
        for r in &self.rows {
            let g = InstructionsGate {
                name: Some(r.name.clone()),
                metric: r.metric.clone().unwrap_or_else(|| self.metric.clone()),
                unit: r.unit.clone().unwrap_or_else(|| self.unit.clone()),
                workload: r.workload.clone().unwrap_or_else(|| self.workload.clone()),
                requests: r.requests,
                body_bytes: r.body_bytes,
                hard_limit: r.hard_limit,
                soft_limit_pct: r.soft_limit_pct,
                group: Some(r.group.clone()),
                base: Some(r.base.clone()),
                target: Some(r.target.clone()),
                floor: r.floor.clone(),
                floor_ratio_limit: r.floor_ratio_limit,
                floor_minus_base: r.floor_minus_base,
                rows: Vec::new(),
            };
            out.push((format!("@{}", r.name), g));
        }
        out
    }

    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("exchanges")
    }

    pub fn base(&self) -> &str {
        self.base.as_deref().unwrap_or("direct")
    }

    pub fn target(&self) -> &str {
        self.target.as_deref().unwrap_or("proxied")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyGate {
    pub metric: String,
    pub unit: String,
    pub workload: String,
    pub rate: u64,
    pub connections: u32,
    pub duration: String,
    pub warmup: String,
    pub rounds: u32,
    pub body_bytes: usize,
    /// Largest generator send lag (P99) before a round is discarded as invalid (loadgen --max-lag).
    pub max_lag: String,
    /// µs: a round in which the byte-relay floor's own P99 exceeds this is too noisy to judge the
    /// proxy by (the machine, not the proxy, is slow: the floor sits where the proxy sits).
    pub floor_p99_limit: f64,
    pub hard_limit: f64,
    pub soft_limit_pct: Option<f64>,
    pub errors_limit: u64,
    /// HTTP/2 with this many concurrent streams per connection (h2c, prior knowledge): loadgen
    /// runs `--http2 --streams N`, the proxy's listener takes h2c and its upstream group speaks
    /// h2c to the origin, and the floor is the relay built on `h2` alone (`loadgen relay --h2`).
    /// Absent: HTTP/1.1, the byte relay.
    pub http2_streams: Option<u32>,
    /// In a noisy round (the floor's P99 over `floor_p99_limit`), the proxy counts as worse beyond
    /// doubt when its P99 is over this many times the floor's beside it (default
    /// [`crate::runner::NOISY_FAIL_RATIO`], 1.5): the clean tree's ratio in noisy rounds differs
    /// by protocol.
    pub noisy_fail_ratio: Option<f64>,
}

/// The distance-to-the-floor rows (`syscalls`, `floor`): the proxy against the byte relay
/// (`loadgen relay`) in the same run. Without `hard_limit` a row is reported, not gated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorGate {
    /// The client speaks TLS 1.3 to the proxy and to the relay floor (`loadgen relay --tls`).
    #[serde(default)]
    pub tls: bool,
    pub metric: String,
    pub unit: String,
    pub workload: String,
    pub rate: u64,
    pub connections: u32,
    pub duration: String,
    pub warmup: String,
    /// Interleaved rounds (`floor` only; `syscalls` is one traced run per target).
    #[serde(default = "one")]
    pub rounds: u32,
    pub body_bytes: usize,
    pub hard_limit: Option<f64>,
    pub soft_limit_pct: Option<f64>,
    /// The goal the row is reported against (issue 8), shown in the note; not a limit.
    pub goal: Option<f64>,
    /// `syscalls` only: the largest rise, per request, of the proxy's non-waiting system calls
    /// (every call but the event-loop waits, whose count moves with load) over the relay's in the
    /// same run. Reads and writes per request are exact, so this catches an extra call on a
    /// fraction of the requests that the total's `hard_limit` cannot.
    pub io_delta_limit: Option<f64>,
}

/// Resident memory per idle keep-alive client connection, and whether it goes back (issue 14):
/// `loadgen hold` against the release proxy (1 worker, pinned), rows `memory:per_conn@N` for each
/// of `connections` and `memory:after_release@N` for the largest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryGate {
    /// The proxy's listener terminates TLS (a certificate made at start, as the syscall gate's
    /// TLS stage) and every held connection handshakes first (`loadgen hold` over `https://`,
    /// trusting it with `--ca`): memory per idle TLS connection (phase 2).
    #[serde(default)]
    pub tls: bool,
    /// Metric and unit of the `per_conn` rows (the `after_release` row is a ratio).
    pub metric: String,
    pub unit: String,
    pub workload: String,
    /// Connection counts held in turn (closing all between), each its own `per_conn` row.
    pub connections: Vec<u64>,
    /// Connections opened, verified and closed once before the first measured count, so the
    /// figures are those of a proxy that has served traffic (its one-time first-use costs paid),
    /// not of one that never has. 0: none. Its figures are kept in the rows' details.
    #[serde(default)]
    pub warmup: u64,
    /// How many times the counts are held in turn. Each row is judged on every round: PASS when
    /// all pass, FAIL when all fail, INCONCLUSIVE when they straddle the limit; the figure shown
    /// is the median.
    #[serde(default = "one")]
    pub rounds: u32,
    /// KiB of proxy RSS per idle keep-alive connection: (held − before) / connections.
    pub per_conn_kib_limit: f64,
    /// RSS after the largest crowd left ÷ RSS before it came.
    pub after_ratio_limit: f64,
    /// Connection counts held part-way through a request head (`loadgen hold --partial-head`:
    /// one verified GET, then all of the next head but its final CRLF), each its own
    /// `partial_head@N` row, judged over the same rounds. Empty: not measured.
    #[serde(default)]
    pub partial_head_connections: Vec<u64>,
    /// KiB of proxy RSS per connection part-way through a head.
    #[serde(default)]
    pub partial_head_kib_limit: f64,
    /// Connection counts held as idle HTTP/2 connections (`loadgen hold --http2`: ALPN h2 over
    /// TLS; needs `tls`), by the same proxy after the rows above, a warm-up of `warmup` first,
    /// then the counts in turn, once per round: each its own `http2@N` row, and
    /// `http2_after_release@<largest>`. Empty: not measured.
    #[serde(default)]
    pub http2_connections: Vec<u64>,
    /// KiB of proxy RSS per idle HTTP/2 connection.
    #[serde(default)]
    pub http2_kib_limit: f64,
    /// RSS after the largest crowd of HTTP/2 connections left ÷ RSS before it came.
    #[serde(default)]
    pub http2_after_ratio_limit: f64,
    /// Idleness before the held figure is read, and again after closing (loadgen hold --settle).
    pub settle: String,
    pub body_bytes: usize,
    /// TOML appended to the proxy config the gate writes (listener, route, upstream): the keys
    /// this measurement needs, e.g. `[limits]` with `max_connections` above the largest count.
    #[serde(default)]
    pub proxy_config: String,
}

fn one() -> u32 {
    1
}

/// The gates a decision may name in `protected_by`.
const GATE_IDS: [&str; 7] = ["static", "alloc", "instructions", "latency", "syscalls", "floor", "memory"];

/// A contract file that cannot be used: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{}: cannot list", dir.display())]
    List { dir: PathBuf, source: std::io::Error },
    #[error("{}: cannot read", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// Not TOML, or not this format (an unknown key, a missing one, a wrong type).
    #[error("{}{}", file.display(), AtLine(*line))]
    Toml { file: PathBuf, line: Option<usize>, source: TomlMessage },
    #[error("{}: {problem}", file.display())]
    Invalid { file: PathBuf, problem: Invalid },
}

impl ContractError {
    /// The file the error is about (the `contracts` directory when it cannot be listed).
    pub fn file(&self) -> &Path {
        match self {
            ContractError::List { dir, .. } => dir,
            ContractError::Read { file, .. } | ContractError::Toml { file, .. } | ContractError::Invalid { file, .. } => file,
        }
    }
}

/// `: line N` when the line is known.
struct AtLine(Option<usize>);

impl fmt::Display for AtLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, ": line {l}"),
            None => Ok(()),
        }
    }
}

/// A TOML error as the contract's message shows it: its message alone (the line is the
/// [`ContractError::Toml`]'s; the error's own rendering repeats the source text). Boxed: the
/// error is large, and a contract that loads should not pay for it.
#[derive(Debug)]
pub struct TomlMessage(pub Box<toml::de::Error>);

impl fmt::Display for TomlMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message().trim())
    }
}

impl std::error::Error for TomlMessage {}

/// A value the format accepts but the runner does not: the key, the entry and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("schema_version {0} is not supported (this runner reads {SCHEMA_VERSION})")]
    SchemaVersion(u32),
    #[error("decision {decision:?} names unknown gate {gate:?} (known: {})", GATE_IDS.join(", "))]
    UnknownGate { decision: String, gate: String },
    #[error("prohibition {0:?} needs at least one match and a reason")]
    ProhibitionIncomplete(String),
    #[error("prohibition {id:?}: {entry:?} is not a path (segments separated by ::)")]
    ProhibitionNotAPath { id: String, entry: String },
    #[error("hot_path.sampled_branch_marker {0:?} must be a non-empty identifier part (every name contains the empty string)")]
    Marker(String),
    #[error("[hot_path] is scanned only by a static gate: this contract has [hot_path] paths but no [gates.static]")]
    HotPathWithoutStaticGate,
    #[error("hot_path.exclude {0:?} needs a reason")]
    ExcludeWithoutReason(String),
    /// `key` is `allow` or `allow_attributes`.
    #[error("hot_path.{key}: {entry:?} is not a path (segments separated by ::)")]
    AllowNotAPath { key: &'static str, entry: String },
    #[error("hot_path.{key}: {entry:?} has an empty reason")]
    AllowEmptyReason { key: &'static str, entry: String },
    #[error("hot_path.{key}: {entry:?} is listed twice")]
    AllowedTwice { key: &'static str, entry: String },
    #[error("hot_path.allow_attributes may not name `path`: #[path] pulls a file the scan does not see into the hot path")]
    PathAttribute,
    #[error("gates.instructions: row name {0:?} must be a non-empty name of letters, digits and '-', used once")]
    InstructionsRowName(String),
    #[error(
        "gates.instructions: the rows of group {group:?} ask for different requests or body_bytes (one run of a group serves them all)"
    )]
    InstructionsGroupMismatch { group: String },
    #[error("gates.latency.http2_streams must be at least 1")]
    NoStreams,
    #[error("gates.latency.noisy_fail_ratio {0} must be a number above 1 (the proxy's P99 as a multiple of the floor's)")]
    NoisyFailRatio(String),
}

/// Reads and checks one contract file.
pub fn load(file: &Path) -> Result<Contract, ContractError> {
    let invalid = |problem: Invalid| ContractError::Invalid { file: file.to_path_buf(), problem };
    let text = std::fs::read_to_string(file).map_err(|source| ContractError::Read { file: file.to_path_buf(), source })?;
    let mut c: Contract = toml::from_str(&text).map_err(|e| ContractError::Toml {
        file: file.to_path_buf(),
        line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        source: TomlMessage(Box::new(e)),
    })?;
    if c.schema_version != SCHEMA_VERSION {
        return Err(invalid(Invalid::SchemaVersion(c.schema_version)));
    }
    for d in &c.decisions {
        for g in &d.protected_by {
            if !GATE_IDS.contains(&g.as_str()) {
                return Err(invalid(Invalid::UnknownGate { decision: d.id.clone(), gate: g.clone() }));
            }
        }
    }
    for p in &c.prohibitions {
        if p.matches.is_empty() || p.reason.trim().is_empty() {
            return Err(invalid(Invalid::ProhibitionIncomplete(p.id.clone())));
        }
        if p.kind == BanKind::Path
            && let Some(m) = p.matches.iter().find(|m| !is_path(m))
        {
            return Err(invalid(Invalid::ProhibitionNotAPath { id: p.id.clone(), entry: m.clone() }));
        }
    }
    if let Some(g) = &c.gates.instructions {
        check_instruction_rows(g).map_err(invalid)?;
    }
    if c.gates.latency.as_ref().is_some_and(|g| g.http2_streams == Some(0)) {
        return Err(invalid(Invalid::NoStreams));
    }
    if let Some(r) = c.gates.latency.as_ref().and_then(|g| g.noisy_fail_ratio).filter(|r| !(r.is_finite() && *r > 1.0)) {
        return Err(invalid(Invalid::NoisyFailRatio(r.to_string())));
    }
    if c.gates.static_.is_some() {
        check_hot_path(&c.hot_path).map_err(invalid)?;
    } else if !c.hot_path.paths.is_empty() {
        return Err(invalid(Invalid::HotPathWithoutStaticGate));
    }
    c.file = file.to_path_buf();
    Ok(c)
}

/// Row names are unique key suffixes; rows of one bench group share its request count.
fn check_instruction_rows(g: &InstructionsGate) -> Result<(), Invalid> {
    let mut seen = std::collections::BTreeSet::new();
    for name in g.name.iter().chain(g.rows.iter().map(|r| &r.name)) {
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok || !seen.insert(name.as_str()) {
            return Err(Invalid::InstructionsRowName(name.clone()));
        }
    }
    let rows = g.all_rows();
    for (_, a) in &rows {
        if rows.iter().any(|(_, b)| a.group() == b.group() && (a.requests, a.body_bytes) != (b.requests, b.body_bytes)) {
            return Err(Invalid::InstructionsGroupMismatch { group: a.group().to_owned() });
        }
    }
    Ok(())
}

/// `a::b::c`: identifiers separated by `::`.
fn is_path(s: &str) -> bool {
    s.split("::").all(|seg| {
        seg.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') && seg.chars().all(|c| c.is_alphanumeric() || c == '_')
    })
}

fn check_hot_path(h: &HotPath) -> Result<(), Invalid> {
    let marker = &h.sampled_branch_marker;
    if marker.is_empty() || !marker.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(Invalid::Marker(marker.clone()));
    }
    for e in &h.exclude {
        if e.reason.trim().is_empty() {
            return Err(Invalid::ExcludeWithoutReason(e.path.clone()));
        }
    }
    for (key, list) in [("allow", &h.allow), ("allow_attributes", &h.allow_attributes)] {
        let mut seen = std::collections::BTreeSet::new();
        for a in list {
            let entry = || a.path().to_owned();
            if !is_path(a.path()) {
                return Err(Invalid::AllowNotAPath { key, entry: entry() });
            }
            if let Allowed::Reasoned(e) = a
                && e.reason.trim().is_empty()
            {
                return Err(Invalid::AllowEmptyReason { key, entry: entry() });
            }
            if !seen.insert(a.path()) {
                return Err(Invalid::AllowedTwice { key, entry: entry() });
            }
        }
    }
    if h.allow_attributes.iter().any(|a| a.path() == "path") {
        return Err(Invalid::PathAttribute);
    }
    Ok(())
}

/// All `contracts/phase*.toml` under `root`, sorted by phase.
pub fn load_all(root: &Path) -> Result<Vec<Contract>, ContractError> {
    let dir = root.join("contracts");
    let entries = std::fs::read_dir(&dir).map_err(|source| ContractError::List { dir: dir.clone(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("phase")))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(load(&f)?);
    }
    out.sort_by_key(|c| c.phase);
    Ok(out)
}

/// `**` matches any number of path components, `*` any run of characters within one.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn seg(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => s.starts_with(head) && (head.len()..=s.len()).any(|i| s.is_char_boundary(i) && seg(tail, &s[i..])),
        }
    }
    fn rec(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => rec(&p[1..], s) || (!s.is_empty() && rec(p, &s[1..])),
            (Some(a), Some(b)) => seg(a, b) && rec(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    rec(&p, &s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::error::chain;

    #[test]
    fn globs() {
        assert!(glob_match("proxy/src/data/**/*.rs", "proxy/src/data/conn.rs"));
        assert!(glob_match("proxy/src/data/**/*.rs", "proxy/src/data/x/y.rs"));
        assert!(!glob_match("proxy/src/data/**/*.rs", "proxy/src/config/mod.rs"));
        assert!(glob_match("proxy/src/snapshot.rs", "proxy/src/snapshot.rs"));
        assert!(!glob_match("proxy/src/*.rs", "proxy/src/data/conn.rs"));
    }

    #[test]
    fn the_committed_contracts_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let all = load_all(root).unwrap();
        assert!(all.iter().any(|c| c.phase == 1));
        let c = &all[0];
        assert!(c.gates.alloc.is_some() && c.gates.static_.is_some() && c.gates.latency.is_some());
        assert!(c.decisions.iter().all(|d| !d.protected_by.is_empty()));
    }

    /// Phase 2's instruction gate: its own row and the two per-connection rows, one group.
    #[test]
    fn instruction_rows_inherit_and_share_their_group() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let all = load_all(root).unwrap();
        let g = all.iter().find(|c| c.phase == 2).and_then(|c| c.gates.instructions.as_ref()).unwrap();
        let rows = g.all_rows();
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["", "@tls-full-handshake", "@tls-resumed-handshake", "@h2-streams-1", "@h2-streams-10", "@h2-streams-100"]);
        assert_eq!((rows[0].1.group(), rows[0].1.base(), rows[0].1.soft_limit_pct), ("tls", "proxied_clear", Some(2.0)));
        let full = &rows[1].1;
        assert_eq!(
            (full.group(), full.base(), full.target(), full.floor.as_deref()),
            ("tls_handshakes", "proxied_clear_conn", "proxied_tls_full", Some("tls_floor_full"))
        );
        assert_eq!(full.soft_limit_pct, None, "a row's soft limit is its own, not the gate's");
        assert!(full.rows.is_empty() && rows[0].1.rows.is_empty());
        assert!(!full.floor_minus_base, "a floor's own figure unless the row says otherwise");
        let h2 = &rows[3].1;
        assert_eq!((h2.group(), h2.base(), h2.floor.as_deref(), h2.floor_minus_base), ("h2", "h2_direct_s1", Some("h2_relay_s1"), true));
    }

    #[test]
    fn instruction_rows_with_a_bad_name_or_a_split_group_are_refused() {
        let dir = std::env::temp_dir().join(format!("gates-contract-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("phase9.toml");
        let gate = "schema_version = 1\nphase = 9\nname = \"x\"\n[gates.instructions]\nmetric = \"m\"\nunit = \"u\"\nworkload = \"w\"\nrequests = 10\nbody_bytes = 1\nhard_limit = 1\n";
        let row = |name: &str, requests: u64| {
            format!(
                "[[gates.instructions.rows]]\nname = \"{name}\"\ngroup = \"g\"\nbase = \"b\"\ntarget = \"t\"\nrequests = {requests}\nbody_bytes = 1\nhard_limit = 1\n"
            )
        };
        std::fs::write(&f, format!("{gate}{}{}", row("a", 10), row("b", 10))).unwrap();
        assert_eq!(load(&f).unwrap().gates.instructions.unwrap().rows.len(), 2);
        // A gate whose own row is named: keyed like its rows, and the name is one of theirs.
        let named = gate.replace("[gates.instructions]\n", "[gates.instructions]\nname = \"own\"\n");
        std::fs::write(&f, format!("{named}{}", row("a", 10))).unwrap();
        let keys: Vec<String> = load(&f).unwrap().gates.instructions.unwrap().all_rows().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["@own", "@a"]);
        for (text, want) in [
            (format!("{gate}{}{}", row("a", 10), row("a", 10)), "\"a\" must be a non-empty name"),
            (format!("{named}{}", row("own", 10)), "\"own\" must be a non-empty name"),
            (named.replace("\"own\"", "\"o wn\""), "\"o wn\" must be"),
            (format!("{gate}{}", row("a b", 10)), "\"a b\" must be"),
            (format!("{gate}{}{}", row("a", 10), row("b", 20)), "group \"g\" ask for different requests"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Phase 2's latency gate runs over HTTP/2 with streams; zero streams is refused.
    #[test]
    fn the_latency_gate_over_http2_needs_streams() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let all = load_all(root).unwrap();
        assert_eq!(all.iter().find(|c| c.phase == 1).and_then(|c| c.gates.latency.as_ref()).unwrap().http2_streams, None);
        let h2 = all.iter().find(|c| c.phase == 2).and_then(|c| c.gates.latency.as_ref()).unwrap();
        assert!(h2.http2_streams.is_some_and(|n| n > 1), "{h2:?}");
        let dir = std::env::temp_dir().join(format!("gates-contract-latency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("phase9.toml");
        let gate = "schema_version = 1\nphase = 9\nname = \"x\"\n[gates.latency]\nmetric = \"m\"\nunit = \"u\"\nworkload = \"w\"\nrate = 1\nconnections = 1\nduration = \"1s\"\nwarmup = \"1s\"\nrounds = 1\nbody_bytes = 1\nmax_lag = \"1ms\"\nfloor_p99_limit = 1\nhard_limit = 1\nerrors_limit = 0\n";
        std::fs::write(&f, format!("{gate}http2_streams = 4\n")).unwrap();
        assert_eq!(load(&f).unwrap().gates.latency.unwrap().http2_streams, Some(4));
        std::fs::write(&f, format!("{gate}http2_streams = 0\n")).unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.to_string().contains("http2_streams must be at least 1"), "{e}");
        for bad in ["1.0", "0.5", "nan"] {
            std::fs::write(&f, format!("{gate}noisy_fail_ratio = {bad}\n")).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.to_string().contains("noisy_fail_ratio"), "{bad}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_and_gates_are_refused() {
        let dir = std::env::temp_dir().join(format!("gates-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("phase9.toml");
        std::fs::write(
            &f,
            "schema_version = 1\nphase = 9\nname = \"x\"\nbogus = 1\n[hot_path]\npaths = []\nsampled_branch_marker = \"s\"\n[gates]\n",
        )
        .unwrap();
        let e = load(&f).unwrap_err();
        assert!(matches!(e, ContractError::Toml { line: Some(4), .. }), "{e:?}");
        assert!(chain(&e).contains("line 4: unknown field `bogus`"), "{e}");
        std::fs::write(&f, "schema_version = 1\nphase = 9\nname = \"x\"\n[[decisions]]\nid = \"d\"\ntext = \"t\"\nprotected_by = [\"speed\"]\n[hot_path]\npaths = []\nsampled_branch_marker = \"s\"\n[gates]\n").unwrap();
        let e = load(&f).unwrap_err();
        assert!(matches!(&e, ContractError::Invalid { problem: Invalid::UnknownGate { gate, .. }, .. } if gate == "speed"), "{e:?}");
        assert!(e.to_string().contains("unknown gate \"speed\" (known: static, alloc,"), "{e}");
        assert_eq!(e.file(), f);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
