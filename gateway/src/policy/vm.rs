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
//! A bundle is compiled at load, after the interpreter's checks, and refused when the VM
//! and the interpreter decide any of the sample inputs differently: an operator's policy
//! that uses something the compiler treats otherwise runs under `policy_engine =
//! "interpreter"` instead of deciding differently in production.

use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

struct Compiled {
    domain: &'static str,
    program: Arc<Program>,
    idle: Mutex<Vec<RegoVM>>,
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
            });
        }
        Ok(Programs {
            domains,
            time_limit,
        })
    }

    /// The same programs with another time limit and no machine made under the old one.
    pub(crate) fn with_time_limit(self, time_limit: Duration) -> Programs {
        Programs {
            domains: self
                .domains
                .into_iter()
                .map(|c| Compiled {
                    idle: Mutex::new(Vec::new()),
                    ..c
                })
                .collect(),
            time_limit,
        }
    }

    /// The decision document of `domain` for an input already converted.
    pub(crate) fn run(&self, domain: &str, input: Value) -> Result<Value, VmFailure> {
        let Some(compiled) = self.domains.iter().find(|c| c.domain == domain) else {
            return Err(VmFailure::Error);
        };
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
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit: self.time_limit,
            check_interval: TIMER_CHECK_INTERVAL,
        }));
        Ok(vm)
    }
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
