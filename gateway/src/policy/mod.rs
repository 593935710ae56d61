//! Rego policies per data domain (regorus), their input and their decision.
//!
//! - [`engine`](PolicyBundle): loading, checking and evaluating a bundle, hot reload
//!   ([`PolicyHolder`]), limits, and the `policy test` runner.
//! - [`PolicyInput`]: the one typed input every decision is made on, built from verified
//!   claims only (docs/gateway-contract.md §1, `schemas/policy-input.schema.json`).
//! - [`check_fail_closed`] (`fedgate policy check`): whether a bundle stays fail closed
//!   under the compiled VM, tried by injecting an error into every rule body.
//! - [`Decision`] and its [`Obligations`]: what a policy answers (§2,
//!   `schemas/decision.schema.json`), used as they are by the tokenizer.

mod ast;
mod decision;
mod engine;
mod failclosed;
mod input;
mod rego_value;
mod vm;

pub use decision::{Decision, Obligations, UnknownClass, IDENTIFIER_CLASSES};
pub use engine::{
    decision_rule, decode_decision, engine_input, run_tests, DecisionCacheStats, EngineKind,
    Lookup, Pending, PolicyBundle, PolicyError, PolicyHolder, PolicyOptions, TestOutcome,
    TestReport, TestResult, DEFAULT_DECISION_CACHE_ENTRIES, DEFAULT_INLINE_TIME_LIMIT,
    DEFAULT_TIME_LIMIT, DOMAINS, EVAL_STACK_BYTES,
};
pub use failclosed::{check_fail_closed, variants, Disagreement, FailClosedReport, Finding};
pub use input::{
    claims_of, holder_privilege, holder_study, is_self_issued, requester_org, sample_input,
    sample_inputs, Claimed, ConsentFacts, ConsentInput, ContractInput, CredentialInput,
    CustodianInput, PolicyInput, PrivilegeFacts, RequestInput, StudyFacts, TokenInput,
    UnreadableClaims,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vm_tests;
