//! The compiled engine: each domain's decision rule compiled for regorus's VM (RVM).
//!
//! Why: on this bundle the VM decides in a fraction of the interpreter's time
//! (`benches/decision.rs`, docs/performance.md), and the interpreter's per-rule bookkeeping
//! (paths, modules, a whole imported module evaluated on first reference) is most of a
//! decision's cost.
//!
//! Why it stays fail closed: the VM differs from the interpreter in one way that matters.
//! An error inside a rule's body — a builtin that fails on a malformed date, two complete
//! definitions that disagree — makes that rule undefined instead of failing the whole
//! evaluation, and `not` of an undefined rule is true. The bundle is written for that
//! (policies/README.md, "Fail closed under the VM"): every allow is a conjunction of facts
//! each established positively, and nothing an allow needs is the absence of a rule, so an
//! error can remove an allow and never add one. `tests::an_error_in_any_rule_body_*` inject
//! an error into every rule body of the bundle in turn and check exactly that. Errors the
//! VM does not swallow (limits, anything at the top of the decision) and an undefined
//! decision are denies, as with the interpreter.
//!
//! Where it runs: a compiled decision costs tens of microseconds, less than handing it to
//! another thread and back, so the gateway first runs it on the request's own thread with a
//! short time limit ([`super::PolicyOptions::inline_time_limit`], 1 ms by default). One that
//! outruns it is stopped there (the VM's timer) and evaluated again on the blocking pool
//! under the decision's full limit; after [`OUTRUNS_BEFORE_POOL`] such runs in a row its
//! domain goes to the pool for the next [`POOL_AFTER_OUTRUN`]. An operator's heavy policy,
//! or an input that takes a long path, holds an async worker for at most that short limit,
//! and a decision is the same wherever it ran. (The limit is wall time: on a busy machine
//! the kernel can preempt a worker in the middle of a cheap decision, which is why one
//! outrun alone does not move the domain.) Stack: the VM recurses only on rule and function calls, whose depth is bounded
//! by the bundle (recursion is refused at load), and the runtime's workers have the same
//! 16 MiB stacks as its blocking pool.
//!
//! A bundle is compiled at load, after the interpreter's checks, and refused when the VM
//! and the interpreter decide any of the sample inputs differently: an operator's policy
//! that uses something the compiler treats otherwise runs under `policy_engine =
//! "interpreter"` instead of deciding differently in production.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::VmError;
use regorus::rvm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Rc, Value};

use super::engine::{decision_rule, PolicyError, DOMAINS, TIMER_CHECK_INTERVAL};

/// Instructions one decision may execute; the time limit is the real bound, this one
/// stops a loop that never reads the clock.
const MAX_INSTRUCTIONS: usize = 5_000_000;

/// Idle machines kept per domain: enough for every blocking thread deciding at once; more
/// are made when needed and dropped after use.
const POOL_SIZE: usize = 64;

/// Runs in a row that outran the inline limit before their domain goes to the pool.
pub(crate) const OUTRUNS_BEFORE_POOL: u32 = 3;

/// How long a domain whose decisions outran the inline limit is evaluated on the blocking
/// pool only: long enough that a heavy policy does not pay for a stopped run on most of its
/// decisions, short enough that one slow input (or a preempted thread) costs little.
pub(crate) const POOL_AFTER_OUTRUN: Duration = Duration::from_secs(10);

/// Which limit stopped a run, or that the run failed otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmFailure {
    Time,
    Instructions,
    Memory,
    /// Any other error: its text can quote input values, so only the kind is kept.
    Error,
}

/// One compiled program per domain and a pool of machines ready to run it.
pub(crate) struct Programs {
    domains: Vec<Compiled>,
    time_limit: Duration,
    /// Limit of a run on the request's own thread (see the module docs).
    inline_limit: Duration,
    /// What [`Compiled::pool_until`] counts from.
    born: Instant,
}

struct Compiled {
    domain: &'static str,
    program: Arc<Program>,
    idle: Mutex<Vec<RegoVM>>,
    /// Nanoseconds after `born` before which this domain runs on the blocking pool only (0:
    /// it was never sent there).
    pool_until: AtomicU64,
    /// Runs on a request's thread that outran the inline limit since the last that did not.
    outruns: AtomicU32,
}

impl Programs {
    /// Compiles every domain's decision rule of a prepared engine.
    pub(crate) fn compile(engine: &Engine, time_limit: Duration) -> Result<Programs, PolicyError> {
        let mut domains = Vec::with_capacity(DOMAINS.len());
        for domain in DOMAINS {
            let rule = decision_rule(domain);
            let mut engine = engine.clone();
            let failed = |text: String| PolicyError::Vm(format!("{domain}: {}", first_line(&text)));
            let policy = engine
                .compile_with_entrypoint(&Rc::from(rule.as_str()))
                .map_err(|e| failed(e.to_string()))?;
            let program = Compiler::compile_from_policy(&policy, &[rule.as_str()])
                .map_err(|e| failed(e.to_string()))?;
            domains.push(Compiled {
                domain,
                program,
                idle: Mutex::new(Vec::new()),
                pool_until: AtomicU64::new(0),
                outruns: AtomicU32::new(0),
            });
        }
        Ok(Programs {
            domains,
            time_limit,
            inline_limit: time_limit,
            born: Instant::now(),
        })
    }

    /// The same programs with other limits, no machine made under the old ones, and no
    /// domain sent to the pool.
    pub(crate) fn with_limits(self, time_limit: Duration, inline_limit: Duration) -> Programs {
        Programs {
            domains: self
                .domains
                .into_iter()
                .map(|c| Compiled {
                    idle: Mutex::new(Vec::new()),
                    pool_until: AtomicU64::new(0),
                    outruns: AtomicU32::new(0),
                    ..c
                })
                .collect(),
            time_limit,
            inline_limit: inline_limit.min(time_limit),
            born: Instant::now(),
        }
    }

    /// The decision document of `domain` for an input already converted, under the
    /// decision's full time limit.
    pub(crate) fn run(&self, domain: &str, input: Value) -> Result<Value, VmFailure> {
        let compiled = self.compiled(domain)?;
        self.run_with(compiled, input, self.time_limit)
    }

    /// Whether `domain` may run on the request's thread now: no run of it outran the
    /// inline limit within the last [`POOL_AFTER_OUTRUN`].
    pub(crate) fn runs_inline(&self, domain: &str) -> bool {
        self.compiled(domain)
            .is_ok_and(|c| self.since_born() >= c.pool_until.load(Ordering::Relaxed))
    }

    /// As [`Programs::run`], stopped at the inline limit. `Outran`: the caller evaluates
    /// again on the blocking pool; the [`OUTRUNS_BEFORE_POOL`]th in a row also sends the
    /// domain there for [`POOL_AFTER_OUTRUN`].
    pub(crate) fn run_inline(&self, domain: &str, input: Value) -> Result<Value, Inline> {
        let compiled = self.compiled(domain).map_err(Inline::Failed)?;
        let result = self.run_with(compiled, input, self.inline_limit);
        if !matches!(result, Err(VmFailure::Time)) {
            // Relaxed and racy on purpose: a count, not a guard.
            if compiled.outruns.load(Ordering::Relaxed) != 0 {
                compiled.outruns.store(0, Ordering::Relaxed);
            }
        }
        match result {
            Ok(value) => Ok(value),
            Err(VmFailure::Time) if self.inline_limit < self.time_limit => {
                let outruns = compiled.outruns.fetch_add(1, Ordering::Relaxed) + 1;
                if outruns >= OUTRUNS_BEFORE_POOL {
                    compiled.outruns.store(0, Ordering::Relaxed);
                    let until = self.since_born().saturating_add(nanos(POOL_AFTER_OUTRUN));
                    compiled.pool_until.fetch_max(until, Ordering::Relaxed);
                    tracing::info!(
                        domain,
                        inline_limit_us = self.inline_limit.as_micros() as u64,
                        pool_for_s = POOL_AFTER_OUTRUN.as_secs(),
                        "decisions outran the request thread's limit: evaluated on the blocking pool"
                    );
                }
                Err(Inline::Outran)
            }
            Err(e) => Err(Inline::Failed(e)),
        }
    }

    fn compiled(&self, domain: &str) -> Result<&Compiled, VmFailure> {
        self.domains
            .iter()
            .find(|c| c.domain == domain)
            .ok_or(VmFailure::Error)
    }

    fn since_born(&self) -> u64 {
        nanos(self.born.elapsed())
    }

    fn run_with(
        &self,
        compiled: &Compiled,
        input: Value,
        limit: Duration,
    ) -> Result<Value, VmFailure> {
        let pooled = compiled
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => self.machine(&compiled.program)?,
        };
        vm.set_input(input);
        // Set on every run: the same machines serve both limits.
        vm.set_execution_timer_config(Some(timer(limit)));
        let result = vm.execute();
        match result {
            Ok(value) => {
                // Only a machine that finished cleanly goes back; the input it holds is
                // replaced by the next run's.
                let mut idle = compiled.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < POOL_SIZE {
                    idle.push(vm);
                }
                Ok(value)
            }
            Err(e) => Err(failure(&e)),
        }
    }

    fn machine(&self, program: &Arc<Program>) -> Result<RegoVM, VmFailure> {
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_data(Value::new_object())
            .map_err(|_| VmFailure::Error)?;
        // As with the interpreter: a failing builtin is an error, not an undefined value.
        vm.set_strict_builtin_errors(true);
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        vm.set_execution_timer_config(Some(timer(self.time_limit)));
        Ok(vm)
    }
}

/// Why a run on the request's thread gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inline {
    /// Stopped at the inline limit: evaluate again on the blocking pool.
    Outran,
    /// Failed as it would have anywhere.
    Failed(VmFailure),
}

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn failure(e: &VmError) -> VmFailure {
    match e {
        VmError::TimeLimitExceeded { .. } => VmFailure::Time,
        VmError::InstructionLimitExceeded { .. } => VmFailure::Instructions,
        VmError::MemoryLimitExceeded { .. } | VmError::MemoryBudgetExceeded { .. } => {
            VmFailure::Memory
        }
        _ => VmFailure::Error,
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}
