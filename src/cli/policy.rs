//! `fedgate policy`: run the Rego policy tests (like `opa test`), check that a bundle fails
//! closed under the compiled VM, and evaluate a decision.

use anyhow::anyhow;
use std::path::PathBuf;

use gateway::policy::{self, PolicyBundle, PolicyInput, TestOutcome};

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule of the folder's `.rego` files; fails on any failure or error,
    /// and when no test is found.
    Test {
        /// Folder of policies and their `*_test.rego` files.
        dir: PathBuf,
        /// Also print durations and the `print()` output of each test.
        #[arg(long)]
        verbose: bool,
    },
    /// Check that the bundle fails closed under the compiled VM: inject an error into every
    /// rule body in turn and decide each domain's sample variants; fails if an error turns
    /// a deny into an allow or widens an allow (policies/README.md, "Fail closed under the VM").
    Check {
        /// Folder of policies (its `*_test.rego` files are ignored).
        dir: PathBuf,
    },
    /// Evaluate one domain's decision for an input document (docs/gateway-contract.md §1).
    Eval {
        /// Folder of policies.
        dir: PathBuf,
        /// clinical, billing, research or detokenize.
        #[arg(long)]
        domain: String,
        /// JSON file holding the policy input.
        #[arg(long)]
        input: PathBuf,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Test { dir, verbose } => test(&dir, verbose),
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Eval { dir, domain, input } => eval(&dir, &domain, &input),
    }
}

fn check(dir: &std::path::Path) -> anyhow::Result<()> {
    let report = policy::check_fail_closed(dir)?;
    for finding in &report.findings {
        println!("FAIL {finding}");
    }
    for disagreement in &report.disagreements {
        println!("FAIL {disagreement}");
    }
    println!(
        "{} rule bodies injected, {} inputs each: {} decisions changed, {} widened; {} allows compared with their refusals, {} disagree",
        report.bodies,
        report.inputs,
        report.changed,
        report.findings.len(),
        report.allows_compared,
        report.disagreements.len()
    );
    if !report.findings.is_empty() {
        return Err(anyhow!(
            "the bundle does not fail closed under the compiled VM: run it with policy_engine = \"interpreter\" or rewrite the rules named above"
        ));
    }
    if !report.disagreements.is_empty() {
        return Err(anyhow!(
            "the bundle allows inputs its own refusals refuse: add what they name to `permitted`"
        ));
    }
    Ok(())
}

fn test(dir: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    let report = policy::run_tests(dir)?;
    for r in &report.results {
        let line = match &r.outcome {
            TestOutcome::Pass => format!("PASS {}", r.name),
            TestOutcome::Fail(got) => format!("FAIL {} ({got})", r.name),
            TestOutcome::Error(e) => format!("ERROR {}: {e}", r.name),
        };
        if verbose {
            println!("{line} [{:.1} ms]", r.duration.as_secs_f64() * 1000.0);
            for p in &r.prints {
                println!("    {p}");
            }
        } else {
            println!("{line}");
        }
    }
    println!("{}", report.summary());
    if report.results.is_empty() {
        return Err(anyhow!("no test_* rules found in {}", dir.display()));
    }
    if !report.is_success() {
        return Err(anyhow!("{} policy test(s) failed", report.failed()));
    }
    Ok(())
}

fn eval(dir: &std::path::Path, domain: &str, input: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).map_err(|e| anyhow!("{}: {e}", input.display()))?;
    // Read as the gateway's own input type: a document the gateway could not have sent
    // (a missing part, a field it never sets) is an error here, not a decision.
    let value: PolicyInput = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not a policy input: {e}", input.display()))?;
    let bundle = PolicyBundle::load(dir)?;
    let decision = bundle.evaluate(domain, &value);
    let out = serde_json::to_string_pretty(&decision)?;
    println!("{out}");
    Ok(())
}
