//! The Rego engine (regorus): loading and checking bundles, hot reload, limits, evaluation,
//! and the `policy test` runner.
//!
//! A bundle is every `*.rego` file of one folder that is not a `*_test.rego`. Each domain
//! has a complete rule `data.fedgate.<domain>.decision` that yields the decision document
//! of `docs/gateway-contract.md` §2. Anything else — an evaluation error, a timeout, an
//! undefined or malformed decision, an unknown domain, a bundle that failed to load — is a
//! deny with a reason that never carries the input.
//!
//! Engines ([`EngineKind`]): decisions are made by each domain's rule compiled for
//! regorus's VM (the default, [`super::vm`], which explains why that stays fail closed) or
//! by the regorus interpreter. The interpreter always loads the bundle first: it checks
//! every domain on a sample input, runs `policy test`, and is what the VM must agree with
//! on the sample inputs before a bundle goes into service. With the interpreter and strict
//! builtins every error fails the decision, which denies.
//!
//! Stack: the interpreter recurses over the policy's syntax tree. Recursive Rego functions
//! are rejected at load (regorus accepts them, and a deep one overflows the stack and aborts
//! the process); the remaining depth is small but callers should still evaluate on threads
//! with big stacks: the gateway runs a [`Pending`] evaluation inside
//! `tokio::task::spawn_blocking` on a runtime configured with 16 MiB thread stacks (workers
//! and blocking pool alike), and the loader and test runner here use their own 16 MiB
//! threads. A compiled decision is first tried on the request's own thread, under a short
//! time limit ([`Pending::evaluate_here`], [`super::vm`] says why that is safe).

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};
use sha2::{Digest, Sha256};

use super::ast;
use super::decision::Decision;
use super::input::{sample_input, sample_inputs, PolicyInput};
use super::vm::{Inline, Programs, VmFailure};

/// Domains with a decision rule; a bundle must define all of them.
pub const DOMAINS: [&str; 4] = ["clinical", "billing", "research", "detokenize"];

/// Default wall-clock limit of one decision.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(50);

/// Stack size of the threads this module starts (see the module docs).
pub const EVAL_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Limit of the load-time checks, which include preparing the engine.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Per-test limit of the test runner: tests evaluate several decisions each.
const TEST_TIME_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policies at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no policy files in {0}")]
    Empty(PathBuf),
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("recursion is not allowed in policies: {0}")]
    Recursion(String),
    #[error("a policy may decide from its input alone (decisions are cached by input): {0}")]
    Impure(String),
    #[error("the {domain} decision fails on a sample input: {message}")]
    Check { domain: String, message: String },
    #[error(
        "the compiled VM cannot run this bundle: {0} (policy_engine = \"interpreter\" runs it)"
    )]
    Vm(String),
    #[error("policy engine: {0}")]
    Engine(String),
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct PolicyOptions {
    /// Wall-clock limit of one decision.
    pub time_limit: Duration,
    /// Decisions remembered per bundle (0: none), see [`PolicyBundle::evaluate`].
    pub cache_entries: usize,
    /// What makes decisions.
    pub engine: EngineKind,
    /// Longest a compiled decision may run on the request's own thread before it is
    /// stopped there and evaluated on the blocking pool ([`Pending::evaluate_here`]).
    pub inline_time_limit: Duration,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            time_limit: DEFAULT_TIME_LIMIT,
            cache_entries: DEFAULT_DECISION_CACHE_ENTRIES,
            engine: EngineKind::default(),
            inline_time_limit: DEFAULT_INLINE_TIME_LIMIT,
        }
    }
}

/// Default limit of a compiled decision on the request's own thread: tens of times what
/// the shipped bundle's decisions take, short enough that an async worker is never held
/// for long.
pub const DEFAULT_INLINE_TIME_LIMIT: Duration = Duration::from_millis(1);

/// What makes decisions (`policy_engine` in the gateway's configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Each domain's decision rule compiled for regorus's VM; see [`super::vm`].
    #[default]
    Vm,
    /// The regorus interpreter: slower, and an error anywhere fails the whole decision.
    Interpreter,
}

/// Decisions a bundle remembers by default.
pub const DEFAULT_DECISION_CACHE_ENTRIES: usize = 4096;

/// One policy file as read from disk.
pub(super) struct PolicyFile {
    pub(super) name: String,
    pub(super) content: String,
}

/// A loaded, checked and prepared set of policies.
#[derive(Clone)]
pub struct PolicyBundle {
    /// Prepared once (the load-time checks evaluate it), then cloned per decision: a clone
    /// shares the parsed modules and the schedule.
    engine: Engine,
    digest: String,
    files: Vec<String>,
    /// Wall-clock limit of one decision, named in the reason when it is hit.
    time_limit: Duration,
    /// Decisions this bundle made, by input; shared by clones, dropped with the bundle.
    cache: Arc<DecisionCache>,
    /// The compiled decision rules, when the VM decides.
    vm: Option<Arc<Programs>>,
}

/// Decisions already made, keyed by the SHA-256 of the domain and the input as serialized.
///
/// Why this is exact: a decision is a function of the bundle, the domain and the input and
/// of nothing else. The bundle owns the cache, so a reload starts an empty one; builtins
/// that read the clock, randomness or the host are refused at load
/// ([`PolicyError::Impure`]); and everything a policy may read of the world is in the
/// input, including the decision time (whole seconds, `request.time`, with the weekday and
/// minute derived from it). An entry is therefore reused only within the second it was made
/// in and never across any time boundary a policy can test. Only decisions from an
/// evaluation that completed are kept: a timeout or an engine error is a deny now and is
/// evaluated again next time.
struct DecisionCache {
    entries: federation::cache::Generations<Decision>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters of a bundle's decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// What [`PolicyBundle::look_up`] found.
// Returned and matched at once, never stored: boxing the decision would only add an
// allocation to every hit.
#[allow(clippy::large_enum_variant)]
enum Looked {
    Decided(Decision),
    /// Not in the cache: evaluate, and keep the decision under this key.
    Evaluate([u8; 32]),
}

fn unusable_input() -> Decision {
    Decision::deny("policy evaluation failed: unusable input")
}

impl DecisionCache {
    fn new(capacity: usize) -> Self {
        DecisionCache {
            entries: federation::cache::Generations::new(capacity),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn key(domain: &str, input: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        h.update([0u8]);
        h.update(input);
        h.finalize().into()
    }

    /// A remembered decision, counting hits and misses (every miss is an evaluation, with
    /// or without a cache).
    fn get(&self, key: &[u8; 32]) -> Option<Decision> {
        let found = self.entries.get(key, |_| true);
        let (counter, result) = match found {
            Some(_) => (&self.hits, "hit"),
            None => (&self.misses, "miss"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fedgate_policy_decision_cache_total", "result" => result).increment(1);
        found
    }
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("digest", &self.digest)
            .field("files", &self.files)
            .finish()
    }
}

impl PolicyBundle {
    /// Loads the bundle of `dir` with the default options.
    pub fn load(dir: &Path) -> Result<PolicyBundle, PolicyError> {
        PolicyBundle::load_with(dir, PolicyOptions::default())
    }

    /// Loads every `*.rego` that is not a `*_test.rego`, in file-name order, rejects
    /// recursion, and evaluates each domain's decision on a sample input so that unknown
    /// builtins and unsafe variables fail the load instead of the first request.
    pub fn load_with(dir: &Path, options: PolicyOptions) -> Result<PolicyBundle, PolicyError> {
        PolicyBundle::from_files(read_policy_files(dir, false)?, options)
    }

    /// The bundle of files already read: every load reads each file once, and nothing
    /// after that touches the disk.
    fn from_files(
        files: Vec<PolicyFile>,
        options: PolicyOptions,
    ) -> Result<PolicyBundle, PolicyError> {
        let digest = digest_of(&files);
        on_big_stack(move || {
            // The first evaluation also prepares the engine (analysis, scheduling): give the
            // checks room, then arm the per-decision limit that clones inherit.
            let mut engine = engine_with(&files, LOAD_TIME_LIMIT.max(options.time_limit))?;
            for domain in DOMAINS {
                check_domain(&mut engine, domain)?;
            }
            if let Some(call) = ast::impure_call(engine.get_modules()) {
                return Err(PolicyError::Impure(call));
            }
            let vm = match options.engine {
                EngineKind::Interpreter => None,
                EngineKind::Vm => {
                    // Checked with the load's room, then armed with the decision's limit.
                    let programs =
                        Programs::compile(&engine, LOAD_TIME_LIMIT.max(options.time_limit))?;
                    check_vm_agrees(&engine, &programs)?;
                    Some(Arc::new(
                        programs.with_limits(options.time_limit, options.inline_time_limit),
                    ))
                }
            };
            set_time_limit(&mut engine, options.time_limit);
            Ok(PolicyBundle {
                engine,
                digest,
                files: files.into_iter().map(|f| f.name).collect(),
                time_limit: options.time_limit,
                cache: Arc::new(DecisionCache::new(options.cache_entries)),
                vm,
            })
        })?
    }

    /// sha256 hex over each file's name, NUL, content, NUL, in file-name order.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The file names of the bundle, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The decision of `domain` for `input`; never fails, every failure is a deny.
    ///
    /// A decision this bundle already made for the same domain and the same input (byte for
    /// byte, as serialized) is answered from its cache (see `DecisionCache`).
    pub fn evaluate(&self, domain: &str, input: &PolicyInput) -> Decision {
        self.decide(domain, input).with_digest(&self.digest)
    }

    /// Hits, misses and entries of this bundle's decision cache.
    pub fn cache_stats(&self) -> DecisionCacheStats {
        DecisionCacheStats {
            hits: self.cache.hits.load(Ordering::Relaxed),
            misses: self.cache.misses.load(Ordering::Relaxed),
            entries: self.cache.entries.len(),
        }
    }

    fn decide(&self, domain: &str, input: &PolicyInput) -> Decision {
        match self.look_up(domain, input) {
            Looked::Decided(d) => d,
            Looked::Evaluate(key) => self.evaluate_uncached(domain, input, key),
        }
    }

    /// The decision when it needs no evaluation (from the cache, or a deny of an unknown
    /// domain or an input that cannot be serialized); otherwise the cache key to evaluate
    /// under. Cheap and without deep recursion: it runs on any thread.
    fn look_up(&self, domain: &str, input: &PolicyInput) -> Looked {
        if !DOMAINS.contains(&domain) {
            return Looked::Decided(Decision::deny("no policy for this domain"));
        }
        // The text for the key (a hit costs only this); regorus values for a miss.
        let Ok(serialized) = serde_json::to_vec(input) else {
            return Looked::Decided(unusable_input());
        };
        let key = DecisionCache::key(domain, &serialized);
        match self.cache.get(&key) {
            Some(d) => Looked::Decided(d),
            None => Looked::Evaluate(key),
        }
    }

    /// Evaluates a decision the cache did not hold, and keeps it under `key`.
    fn evaluate_uncached(&self, domain: &str, input: &PolicyInput, key: [u8; 32]) -> Decision {
        let Some(converted) = engine_input(input) else {
            return unusable_input();
        };
        let result = match &self.vm {
            Some(programs) => programs.run(domain, converted).map_err(Failed::Vm),
            None => {
                let mut engine = self.engine.clone();
                engine.set_input(converted);
                engine
                    .eval_rule(decision_rule(domain))
                    .map_err(Failed::Interpreter)
            }
        };
        self.conclude(domain, input, key, result)
    }

    /// As [`PolicyBundle::evaluate_uncached`], on the calling thread under the inline
    /// limit, when the VM decides and the domain is not sent to the pool; `None` when the
    /// decision has to be evaluated there instead.
    fn evaluate_inline(
        &self,
        domain: &str,
        input: &PolicyInput,
        key: [u8; 32],
    ) -> Option<Decision> {
        let programs = self.vm.as_ref().filter(|p| p.runs_inline(domain))?;
        let Some(converted) = engine_input(input) else {
            return Some(unusable_input());
        };
        let result = match programs.run_inline(domain, converted) {
            Ok(value) => Ok(value),
            Err(Inline::Outran) => return None,
            Err(Inline::Failed(e)) => Err(Failed::Vm(e)),
        };
        Some(self.conclude(domain, input, key, result))
    }

    /// The decision from an evaluation's result, kept under `key` when it is one.
    fn conclude(
        &self,
        domain: &str,
        input: &PolicyInput,
        key: [u8; 32],
        result: Result<Value, Failed>,
    ) -> Decision {
        match result {
            Ok(value) => match decision_from_value(&value) {
                Ok(d) => {
                    let d = check_decision(d, input);
                    self.cache.entries.insert(key, d.clone());
                    d
                }
                Err(why) => {
                    tracing::warn!(domain, why, "policy produced an unusable decision");
                    Decision::deny(format!("policy evaluation failed: {why}"))
                }
            },
            Err(e) => match e.limit() {
                Some(Limit::Time) => {
                    let limit = limit_text(self.time_limit);
                    tracing::warn!(domain, limit, "policy evaluation hit its time limit");
                    Decision::deny(format!(
                        "policy evaluation failed: time limit of {limit} exceeded"
                    ))
                }
                Some(Limit::Memory) => {
                    tracing::warn!(domain, "policy evaluation hit its memory limit");
                    Decision::deny("policy evaluation failed: memory limit exceeded")
                }
                Some(Limit::Instructions) => {
                    tracing::warn!(domain, "policy evaluation hit its instruction limit");
                    Decision::deny("policy evaluation failed: instruction limit exceeded")
                }
                None => {
                    // Only where it failed: regorus messages can quote values from the input.
                    tracing::warn!(domain, at = %e.location(), "policy evaluation error");
                    Decision::deny("policy evaluation failed: error")
                }
            },
        }
    }

    /// A clone of the prepared engine, for measuring the engine against raw regorus.
    #[doc(hidden)]
    pub fn prepared_engine(&self) -> Engine {
        self.engine.clone()
    }
}

/// A bundle decided by the VM without the load's checks (sample inputs, agreement with the
/// interpreter, purity): for `policy check`, which injects errors the interpreter would
/// refuse, to see what the VM makes of them.
pub(super) fn vm_bundle_from(
    files: Vec<PolicyFile>,
    time_limit: Duration,
) -> Result<PolicyBundle, PolicyError> {
    let digest = digest_of(&files);
    on_big_stack(move || {
        let engine = engine_with(&files, time_limit)?;
        let programs = Programs::compile(&engine, time_limit)?;
        Ok(PolicyBundle {
            engine,
            digest,
            files: files.into_iter().map(|f| f.name).collect(),
            time_limit,
            cache: Arc::new(DecisionCache::new(0)),
            vm: Some(Arc::new(programs)),
        })
    })?
}

/// Why an evaluation gave no value.
enum Failed {
    Interpreter(anyhow::Error),
    Vm(VmFailure),
}

impl Failed {
    fn limit(&self) -> Option<Limit> {
        match self {
            Failed::Interpreter(e) => limit_hit(e),
            Failed::Vm(VmFailure::Time) => Some(Limit::Time),
            Failed::Vm(VmFailure::Memory) => Some(Limit::Memory),
            Failed::Vm(VmFailure::Instructions) => Some(Limit::Instructions),
            Failed::Vm(VmFailure::Error) => None,
        }
    }

    /// Where it failed, never what with: messages can quote values from the input.
    fn location(&self) -> String {
        match self {
            Failed::Interpreter(e) => error_location(e),
            Failed::Vm(_) => "compiled decision".into(),
        }
    }
}

/// The VM must decide every sample input exactly as the interpreter does.
fn check_vm_agrees(engine: &Engine, programs: &Programs) -> Result<(), PolicyError> {
    for domain in DOMAINS {
        for (i, input) in sample_inputs(domain).iter().enumerate() {
            let Some(value) = engine_input(input) else {
                return Err(PolicyError::Vm(format!(
                    "{domain}: sample input does not serialize"
                )));
            };
            let mut interpreter = engine.clone();
            interpreter.set_input(value.clone());
            let expected = interpreter.eval_rule(decision_rule(domain)).ok();
            let compiled = programs.run(domain, value).ok();
            if expected.is_none() || expected != compiled {
                return Err(PolicyError::Vm(format!(
                    "{domain}: it decides sample input {} differently from the interpreter",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}

/// The input as the engine holds it, serialized straight into regorus values (see
/// `rego_value`; public for the decision benchmark).
#[doc(hidden)]
pub fn engine_input(input: &PolicyInput) -> Option<Value> {
    super::rego_value::to_rego(input).ok()
}

/// `data.fedgate.<domain>.decision`.
pub fn decision_rule(domain: &str) -> String {
    format!("data.fedgate.{domain}.decision")
}

fn decision_from_value(value: &Value) -> Result<Decision, &'static str> {
    if *value == Value::Undefined {
        return Err("undefined decision");
    }
    // Read from the value itself (`rego_value::from_rego`): writing it as JSON text and
    // reading that back cost as much again.
    super::rego_value::from_rego(value).map_err(|_| "malformed decision")
}

/// [`decision_from_value`], for the decision benchmark.
#[doc(hidden)]
pub fn decode_decision(value: &Value) -> Option<Decision> {
    decision_from_value(value).ok()
}

/// Invariants no policy may break, whatever it says: an allow names only known identifier
/// classes and never returns a type that was not asked for.
fn check_decision(d: Decision, input: &PolicyInput) -> Decision {
    if !d.allow {
        if d.reasons.is_empty() {
            return Decision::deny("denied by policy");
        }
        return d;
    }
    if d.obligations.validate().is_err() {
        return Decision::deny("policy evaluation failed: unknown identifier class in obligations");
    }
    let requested: BTreeSet<&str> = input
        .request
        .data_classes
        .iter()
        .map(String::as_str)
        .collect();
    if d.data_classes
        .iter()
        .any(|c| !requested.contains(c.as_str()))
    {
        return Decision::deny(
            "policy evaluation failed: decision widens the requested data classes",
        );
    }
    if d.break_glass && d.expires_at.is_none() {
        return Decision::deny("policy evaluation failed: break-glass without an expiry");
    }
    d
}

/// Which of regorus's limits stopped an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Time,
    Memory,
    Instructions,
}

/// The limit an evaluation error reports, if any: by type where regorus kept the
/// `LimitError`, else by its message, which some evaluation paths fold into a located
/// error (seen under load as a bare "error").
fn limit_hit(e: &anyhow::Error) -> Option<Limit> {
    for cause in e.chain() {
        match cause.downcast_ref::<LimitError>() {
            Some(LimitError::TimeLimitExceeded { .. }) => return Some(Limit::Time),
            Some(LimitError::MemoryLimitExceeded { .. }) => return Some(Limit::Memory),
            Some(_) => {}
            None => {
                let text = cause.to_string();
                if text.contains("execution exceeded time limit") {
                    return Some(Limit::Time);
                }
                if text.contains("execution exceeded memory limit") {
                    return Some(Limit::Memory);
                }
            }
        }
    }
    None
}

fn is_limit_error(e: &anyhow::Error) -> bool {
    limit_hit(e).is_some()
}

/// "250 ms", "2 s": a limit as an operator configured it.
fn limit_text(limit: Duration) -> String {
    if limit.as_millis() >= 1000 && limit.as_millis().is_multiple_of(1000) {
        format!("{} s", limit.as_secs())
    } else {
        format!("{} ms", limit.as_millis().max(1))
    }
}

/// The first line of a regorus error (`file:line:col: error: message`), without the quoted
/// source lines that follow it.
fn first_line(e: &anyhow::Error) -> String {
    let text = e.to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    line.chars().take(300).collect()
}

/// `file:line:col` of a regorus error: its message can quote values from the input.
fn error_location(e: &anyhow::Error) -> String {
    let line = first_line(e);
    let mut parts = line.splitn(4, ':');
    let located: Vec<&str> = parts.by_ref().take(3).collect();
    located.join(":")
}

/// Runs `f` on a thread with a 16 MiB stack and waits for it.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, PolicyError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("fedgate-policy".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| PolicyError::Engine(format!("cannot start a policy thread: {e}")))?
            .join()
            .map_err(|_| PolicyError::Engine("the policy thread panicked".into()))
    })
}

pub(super) fn read_policy_files(
    dir: &Path,
    with_tests: bool,
) -> Result<Vec<PolicyFile>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rego") || (!with_tests && name.ends_with("_test.rego")) {
            continue;
        }
        if !entry.file_type().map_err(io)?.is_file() {
            continue;
        }
        let path = entry.path();
        let content =
            std::fs::read_to_string(&path).map_err(|source| PolicyError::Io { path, source })?;
        files.push(PolicyFile { name, content });
    }
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_path_buf()));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn digest_of(files: &[PolicyFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.content.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// What the watcher compares between polls: the name, size, inode and modification and
/// change times of each bundle file, hashed. Taken from the folder listing and `stat`,
/// without opening a file, so that a process short of descriptors can still poll (the
/// listing itself needs one, briefly). A missing folder has a fingerprint of its own, so
/// that losing it triggers a (failing, hence fail-closed) reload; any other error means
/// the folder could not be looked at, which is no news about the policies.
fn fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("missing".into()),
        Err(e) => return Err(e),
    };
    let mut stamps = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rego") || name.ends_with("_test.rego") {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Removed since the listing: the next poll sees it gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        stamps.push((name, file_stamp(&meta)));
    }
    stamps.sort();
    for (name, stamp) in stamps {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(stamp.as_bytes());
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Size and modification time; on Unix also the inode and change time, which a replace
/// by rename or an edit that keeps size and mtime still changes.
fn file_stamp(meta: &std::fs::Metadata) -> String {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!(
            "{} {modified} {} {} {}.{}",
            meta.len(),
            meta.dev(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        )
    }
    #[cfg(not(unix))]
    {
        format!("{} {modified}", meta.len())
    }
}

fn engine_with(files: &[PolicyFile], time_limit: Duration) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    // The default already, stated because the opposite turns `not f(bad)` into true.
    engine.set_strict_builtin_errors(true);
    set_time_limit(&mut engine, time_limit);
    for f in files {
        engine
            .add_policy(f.name.clone(), f.content.clone())
            .map_err(|e| PolicyError::Syntax {
                file: f.name.clone(),
                message: first_line(&e),
            })?;
    }
    if let Some(cycle) = ast::find_cycle(engine.get_modules()) {
        return Err(PolicyError::Recursion(cycle));
    }
    Ok(engine)
}

fn set_time_limit(engine: &mut Engine, limit: Duration) {
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    });
}

/// Work units between two clock reads of the execution timer.
pub(crate) const TIMER_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(16) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// Evaluates a domain's decision on a sample input: this prepares the engine (so clones
/// start prepared) and surfaces unknown builtins, unsafe variables and missing rules now.
fn check_domain(engine: &mut Engine, domain: &str) -> Result<(), PolicyError> {
    let fail = |message: String| PolicyError::Check {
        domain: domain.to_string(),
        message,
    };
    let input = engine_input(&sample_input(domain))
        .ok_or_else(|| fail("the sample input does not serialize".into()))?;
    engine.set_input(input);
    let value = engine.eval_rule(decision_rule(domain)).map_err(|e| {
        if is_limit_error(&e) {
            fail("timeout".into())
        } else {
            fail(first_line(&e))
        }
    })?;
    decision_from_value(&value).map_err(|why| fail(why.into()))?;
    engine.set_input(Value::new_object());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Holder: the bundle in service, hot reload, fail closed
// ---------------------------------------------------------------------------------------

enum State {
    Loaded(Box<PolicyBundle>),
    Broken(String),
}

/// The bundle in service. A bundle that fails to load (at start or on reload) leaves the
/// holder Broken: every decision is then a deny naming the load error, until a reload
/// succeeds. A reload that cannot read the files keeps the bundle in service (see
/// [`PolicyHolder::reload`]).
pub struct PolicyHolder {
    dir: PathBuf,
    options: PolicyOptions,
    state: RwLock<Arc<State>>,
    /// Fingerprint of the files at the last load attempt; also serialises reloads.
    seen: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for PolicyHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHolder")
            .field("dir", &self.dir)
            .field("digest", &self.current_digest())
            .finish()
    }
}

impl PolicyHolder {
    /// Loads `dir` now; a failure gives a Broken holder, not an error.
    pub fn new(dir: &Path) -> PolicyHolder {
        PolicyHolder::with_options(dir, PolicyOptions::default())
    }

    pub fn with_options(dir: &Path, options: PolicyOptions) -> PolicyHolder {
        let holder = PolicyHolder {
            dir: dir.to_path_buf(),
            options,
            state: RwLock::new(Arc::new(State::Broken(
                "policy bundle not loaded yet".into(),
            ))),
            seen: std::sync::Mutex::new(None),
        };
        if let Err(e) = holder.reload() {
            tracing::error!(dir = %dir.display(), error = %e, "policy bundle failed to load; denying everything");
        }
        holder
    }

    /// Loads the folder again and swaps the result in atomically. Files that load badly,
    /// a folder that is gone or holds no policy, switch the holder to Broken (fail closed)
    /// and return the error. Files that cannot be read (out of file descriptors, an I/O
    /// error) say nothing about the policies: the bundle in service stays, the error is
    /// logged and counted (`fedgate_policy_reload_failures_total{cause="unreadable"}`), and
    /// the watcher tries again at its next poll. At start there is no bundle to keep, so
    /// the holder is Broken then.
    pub fn reload(&self) -> Result<String, PolicyError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Before reading: a change made while the files are read shows at the next poll.
        let print = fingerprint(&self.dir).ok();
        let result = read_policy_files(&self.dir, false)
            .and_then(|files| PolicyBundle::from_files(files, self.options));
        let err = match result {
            Ok(bundle) => {
                let digest = bundle.digest().to_string();
                tracing::info!(digest, files = bundle.files().len(), "policy bundle loaded");
                *seen = print;
                self.set_state(State::Loaded(Box::new(bundle)));
                return Ok(digest);
            }
            Err(e) => e,
        };
        if self.is_read_failure(&err) && self.current_digest().is_some() {
            metrics::counter!("fedgate_policy_reload_failures_total", "cause" => "unreadable")
                .increment(1);
            tracing::error!(error = %err, "cannot read the policy files; the bundle in service stays");
            // `seen` keeps the last load's fingerprint, so the next poll tries again.
            return Err(err);
        }
        metrics::counter!("fedgate_policy_reload_failures_total", "cause" => "invalid")
            .increment(1);
        *seen = print;
        self.set_state(State::Broken(err.to_string()));
        Err(err)
    }

    fn set_state(&self, state: State) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
    }

    /// A failure to read the files, rather than files that are wrong: every I/O error
    /// but a missing folder (the operator removed it) and content that is not UTF-8.
    fn is_read_failure(&self, e: &PolicyError) -> bool {
        use std::io::ErrorKind;
        match e {
            PolicyError::Io { path, source } => match source.kind() {
                ErrorKind::InvalidData => false,
                ErrorKind::NotFound => path != &self.dir,
                _ => true,
            },
            _ => false,
        }
    }

    /// Reloads when the folder's fingerprint differs from the last attempt's. A folder
    /// that cannot be looked at now (out of file descriptors) is no change.
    pub fn reload_if_changed(&self) -> Option<Result<String, PolicyError>> {
        let now = match fingerprint(&self.dir) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the policy folder for changes; the bundle in service stays");
                return None;
            }
        };
        let changed = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.as_deref() != Some(now.as_str())
        };
        if !changed {
            return None;
        }
        let result = self.reload();
        if let Err(e) = &result {
            if self.current_digest().is_none() {
                tracing::error!(error = %e, "policy reload failed; denying everything until a good reload");
            }
        }
        Some(result)
    }

    /// Polls the folder every `interval` and reloads on change, until the holder is dropped.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<PolicyHolder> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("fedgate-policy-watch".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(holder) = weak.upgrade() else { return };
                holder.reload_if_changed();
            })
    }

    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The digest of the bundle in service; None while Broken.
    pub fn current_digest(&self) -> Option<String> {
        match self.state().as_ref() {
            State::Loaded(b) => Some(b.digest().to_string()),
            State::Broken(_) => None,
        }
    }

    /// Why the holder is Broken, if it is.
    pub fn broken_reason(&self) -> Option<String> {
        match self.state().as_ref() {
            State::Loaded(_) => None,
            State::Broken(why) => Some(why.clone()),
        }
    }

    /// The decision of the bundle in service; a deny while Broken.
    pub fn evaluate(&self, domain: &str, input: &PolicyInput) -> Decision {
        match self.look_up(domain, input) {
            Lookup::Decided(d) => d,
            Lookup::Evaluate(pending) => pending.evaluate(input),
        }
    }

    /// The decision at once when it needs no evaluation (most often: the bundle in service
    /// made it already, within the same second), or what evaluating it takes, to be run
    /// where evaluation may run (deep stacks, off the async workers). The evaluation uses
    /// the bundle looked up here even if another is loaded meanwhile.
    pub fn look_up(&self, domain: &str, input: &PolicyInput) -> Lookup {
        let state = self.state();
        match state.as_ref() {
            State::Loaded(b) => match b.look_up(domain, input) {
                Looked::Decided(d) => Lookup::Decided(d.with_digest(&b.digest)),
                Looked::Evaluate(key) => Lookup::Evaluate(Pending {
                    state: state.clone(),
                    domain: domain.to_string(),
                    key,
                }),
            },
            State::Broken(why) => Lookup::Decided(Decision::deny(format!(
                "policy bundle failed to load: {why}"
            ))),
        }
    }
}

/// What [`PolicyHolder::look_up`] found.
// As `Looked`: returned and matched at once.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    Decided(Decision),
    Evaluate(Pending),
}

/// A decision to evaluate: the bundle, the domain and the cache key it was looked up with.
pub struct Pending {
    state: Arc<State>,
    domain: String,
    key: [u8; 32],
}

impl Pending {
    /// Evaluates the decision for the same `input` it was looked up with, on this thread,
    /// when that is cheap: a compiled decision, stopped if it outruns the inline time limit
    /// ([`PolicyOptions::inline_time_limit`]). `None`: run [`Pending::evaluate`] where
    /// evaluation may take long (the blocking pool). Never a different decision from the
    /// one `evaluate` makes.
    pub fn evaluate_here(&self, input: &PolicyInput) -> Option<Decision> {
        match self.state.as_ref() {
            State::Loaded(b) => b
                .evaluate_inline(&self.domain, input, self.key)
                .map(|d| d.with_digest(&b.digest)),
            State::Broken(_) => None,
        }
    }

    /// Evaluates the decision for the same `input` it was looked up with.
    pub fn evaluate(self, input: &PolicyInput) -> Decision {
        match self.state.as_ref() {
            State::Loaded(b) => b
                .evaluate_uncached(&self.domain, input, self.key)
                .with_digest(&b.digest),
            State::Broken(why) => Decision::deny(format!("policy bundle failed to load: {why}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test runner (`fedgate policy test`)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    Pass,
    /// The rule was not `true`: what it was instead.
    Fail(String),
    /// Evaluation failed: the error.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    /// Full rule path, e.g. `data.fedgate.clinical_test.test_treat_allowed`.
    pub name: String,
    pub outcome: TestOutcome,
    pub duration: Duration,
    /// `print()` output of the test.
    pub prints: Vec<String>,
}

/// Results sorted by rule path.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == TestOutcome::Pass)
            .count()
    }

    /// Failures and errors.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// At least one test, and no failure or error.
    pub fn is_success(&self) -> bool {
        !self.results.is_empty() && self.failed() == 0
    }

    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Loads every `*.rego` of `dir`, tests included, and evaluates each rule whose name starts
/// with `test_`: `true` passes, anything else fails, an error is an error.
pub fn run_tests(dir: &Path) -> Result<TestReport, PolicyError> {
    let files = read_policy_files(dir, true)?;
    on_big_stack(move || {
        let mut engine = engine_with(&files, TEST_TIME_LIMIT)?;
        engine.set_gather_prints(true);
        let tests: Vec<String> = ast::rule_paths(engine.get_modules())
            .into_iter()
            .filter(|p| p.rsplit('.').next().is_some_and(|n| n.starts_with("test_")))
            .collect();
        let mut results = Vec::with_capacity(tests.len());
        for name in tests {
            let started = Instant::now();
            let outcome = match engine.eval_rule(name.clone()) {
                Ok(Value::Bool(true)) => TestOutcome::Pass,
                Ok(Value::Undefined) => TestOutcome::Fail("undefined".into()),
                Ok(other) => TestOutcome::Fail(format!("got {}", short_json(&other))),
                Err(e) if is_limit_error(&e) => TestOutcome::Error("timeout".into()),
                Err(e) => TestOutcome::Error(first_line(&e)),
            };
            let prints = engine.take_prints().unwrap_or_default();
            results.push(TestResult {
                name,
                outcome,
                duration: started.elapsed(),
                prints,
            });
        }
        Ok(TestReport { results })
    })?
}

fn short_json(v: &Value) -> String {
    let s = v.to_json_str().unwrap_or_else(|_| "<unprintable>".into());
    if s.chars().count() > 200 {
        let cut: String = s.chars().take(200).collect();
        format!("{cut}…")
    } else {
        s
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn a_limit_is_recognized_by_type_or_by_message_and_named() {
        let typed = anyhow::Error::new(LimitError::TimeLimitExceeded {
            elapsed: Duration::from_millis(300),
            limit: Duration::from_millis(250),
        });
        assert_eq!(limit_hit(&typed), Some(Limit::Time));
        // Folded into a located message by some evaluation paths.
        let folded = anyhow::anyhow!(
            "policy.rego:3:5: error: execution exceeded time limit (elapsed=3ns, limit=1ns)"
        )
        .context("while evaluating");
        assert_eq!(limit_hit(&folded), Some(Limit::Time));
        let memory =
            anyhow::anyhow!("execution exceeded memory limit (usage=9 bytes, limit=1 bytes)");
        assert_eq!(limit_hit(&memory), Some(Limit::Memory));
        assert_eq!(limit_hit(&anyhow::anyhow!("undefined variable x")), None);
        assert_eq!(limit_text(Duration::from_millis(250)), "250 ms");
        assert_eq!(limit_text(Duration::from_secs(2)), "2 s");
        assert_eq!(limit_text(Duration::from_micros(10)), "1 ms");
    }
}
