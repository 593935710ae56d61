//! `fedgate policy check`: does a bundle fail closed under the compiled VM?
//!
//! The VM turns an error inside a rule body into an undefined rule (`vm.rs`), so a bundle
//! is safe under it only if a failing rule can take an allow away and never add one
//! (policies/README.md, "Fail closed under the VM"). This checks exactly that, by trying
//! it: a failing statement is injected into every rule body of the bundle in turn (each
//! `if { … }` block and one-line `if` of a rule head), each injected bundle is compiled for
//! the VM, and every domain decides [`variants`] of its sample input, which take every
//! path of the shipped policies. A finding is a deny that became an allow, or an allow
//! that returns more classes or other obligations. Rules without a body (tables, constant
//! documents) are not injected: they call no rule that can fail.
//!
//! It also holds a domain's allow and its own reasons to agreement. The shipped policies
//! evaluate a domain's `refusals` (the reasons of its denials) only when the request is not
//! permitted, because evaluating them on an allow was a quarter of its time; so every
//! condition a refusal names must also be one `permitted` establishes. Every allowed input is
//! decided again for `data.fedgate.<domain>.refusals` (by the interpreter, where an error
//! fails instead of vanishing): an allow to which a refusal applies is a finding. A domain
//! without a `refusals` rule is not compared. (`denials` an operator adds are evaluated on
//! every decision and need no such check.)

use std::path::Path;
use std::time::Duration;

use super::engine::{engine_input, read_policy_files, vm_bundle_from, PolicyFile};
use super::{
    sample_input, Decision, EngineKind, PolicyBundle, PolicyError, PolicyInput, PolicyOptions,
    DOMAINS,
};

/// The statement injected: a builtin that fails, under strict builtin errors.
pub const INJECTED: &str = "to_number(\"injected error\") == 0";

/// Room for each decision of the check: the point is the answer, not the time.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(5);

/// What the check found.
#[derive(Debug, Clone)]
pub struct FailClosedReport {
    /// Rule bodies injected, one bundle each.
    pub bodies: usize,
    /// Inputs decided per injected bundle (all domains).
    pub inputs: usize,
    /// (body, input) pairs whose decision changed at all: the injection reached them.
    pub changed: usize,
    pub findings: Vec<Finding>,
    /// Allowed inputs whose refusals were evaluated (see the module docs).
    pub allows_compared: usize,
    pub disagreements: Vec<Disagreement>,
}

impl FailClosedReport {
    /// Nothing found: no widening, no allow to which one of its refusals applies.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.disagreements.is_empty()
    }
}

/// An input the intact bundle allows although one of the domain's refusals applies to it:
/// `permitted` misses a condition that refusal names.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub domain: &'static str,
    pub input: &'static str,
    /// The refusals that apply (the policy's reasons, which name no input value).
    pub refusals: Vec<String>,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} allows input \"{}\" although its refusals apply ({}): `permitted` misses what they name",
            self.domain,
            self.input,
            self.refusals.join("; ")
        )
    }
}

/// A deny that became an allow, or an allow that got wider.
#[derive(Debug, Clone)]
pub struct Finding {
    pub file: String,
    /// 1-based line of the rule head whose body was injected.
    pub line: usize,
    pub domain: &'static str,
    pub input: &'static str,
    pub why: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: an error in this rule body {} ({} input \"{}\")",
            self.file, self.line, self.why, self.domain, self.input
        )
    }
}

/// Runs the check on the bundle of `dir` (its `*_test.rego` files are not part of it).
/// Fails when the bundle does not load under the VM.
pub fn check_fail_closed(dir: &Path) -> Result<FailClosedReport, PolicyError> {
    let files = read_policy_files(dir, false)?;
    let options = PolicyOptions {
        time_limit: CHECK_TIME_LIMIT,
        cache_entries: 0,
        engine: EngineKind::Vm,
        ..PolicyOptions::default()
    };
    let intact = PolicyBundle::load_with(dir, options)?;
    let cases: Vec<(&'static str, &'static str, PolicyInput, Decision)> = DOMAINS
        .iter()
        .flat_map(|domain| {
            variants(domain).into_iter().map(|(name, input)| {
                let d = intact.evaluate(domain, &input);
                (*domain, name, input, d)
            })
        })
        .collect();
    let mut report = FailClosedReport {
        bodies: 0,
        inputs: cases.len(),
        changed: 0,
        findings: Vec::new(),
        allows_compared: 0,
        disagreements: Vec::new(),
    };
    for (domain, name, input, decision) in &cases {
        if !decision.allow {
            continue;
        }
        if let Some(refusals) = refusals_of(&intact, domain, input) {
            report.allows_compared += 1;
            if !refusals.is_empty() {
                report.disagreements.push(Disagreement {
                    domain,
                    input: name,
                    refusals,
                });
            }
        }
    }
    for (i, file) in files.iter().enumerate() {
        for at in bodies(&file.content) {
            let mutated: Vec<PolicyFile> = files
                .iter()
                .enumerate()
                .map(|(j, f)| PolicyFile {
                    name: f.name.clone(),
                    content: if i == j {
                        inject(&f.content, at)
                    } else {
                        f.content.clone()
                    },
                })
                .collect();
            let bundle = vm_bundle_from(mutated, CHECK_TIME_LIMIT)?;
            report.bodies += 1;
            for (domain, input_name, input, before) in &cases {
                let after = bundle.evaluate(domain, input);
                if after.allow != before.allow || after.data_classes != before.data_classes {
                    report.changed += 1;
                }
                if let Some(why) = widened(before, &after) {
                    report.findings.push(Finding {
                        file: file.name.clone(),
                        line: at + 1,
                        domain,
                        input: input_name,
                        why,
                    });
                }
            }
        }
    }
    Ok(report)
}

/// The domain's refusals for `input`, by the interpreter; `None` when the domain has no
/// `refusals` rule (a query of it is undefined). One that cannot be evaluated is reported
/// as such: the interpreter would not have allowed.
fn refusals_of(bundle: &PolicyBundle, domain: &str, input: &PolicyInput) -> Option<Vec<String>> {
    let mut engine = bundle.prepared_engine();
    engine.set_input(engine_input(input)?);
    // An error's text can quote input values: only that it failed.
    let Ok(results) = engine.eval_query(format!("data.fedgate.{domain}.refusals"), false) else {
        return Some(vec!["(the refusals could not be evaluated)".into()]);
    };
    let value = &results.result.first()?.expressions.first()?.value;
    let Ok(set) = value.as_set() else {
        return Some(vec!["(the refusals are not a set)".into()]);
    };
    Some(
        set.iter()
            .map(|v| {
                v.as_string()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| v.to_string())
            })
            .collect(),
    )
}

/// Inputs of a domain that take every path of the shipped policies: allows, break-glass,
/// and one deny per condition, each a single change from the domain's sample.
pub fn variants(domain: &str) -> Vec<(&'static str, PolicyInput)> {
    let base = sample_input(domain);
    let mut out: Vec<(&'static str, PolicyInput)> = Vec::new();
    let mut with = |name: &'static str, change: &dyn Fn(&mut PolicyInput)| {
        let mut input = base.clone();
        change(&mut input);
        out.push((name, input));
    };
    with("sample", &|_| {});
    with("no consent", &|i| i.consents.clear());
    with("another organization", &|i| {
        i.request.requester_org = Some("did:web:other.example".into())
    });
    with("emergency without consent", &|i| {
        i.consents.clear();
        i.request.purpose = "ETREAT".into();
        i.request.justification = "unconscious patient, no consent on file".into();
    });
    with("emergency with a consent for one class", &|i| {
        i.request.purpose = "ETREAT".into();
        i.request.justification = "unconscious patient, consent covers labs only".into();
        for c in &mut i.consents {
            c.subject.purposes = vec!["ETREAT".into()];
            c.subject.data_classes = vec!["Observation".into()];
        }
    });
    with("emergency without justification", &|i| {
        i.consents.clear();
        i.request.purpose = "BTG".into();
        i.request.justification = "short".into();
    });
    let deny_of = |i: &mut PolicyInput, classes: &[&str]| {
        if let Some(first) = i.consents.first().cloned() {
            let mut deny = first;
            deny.subject.provision = "deny".into();
            deny.subject.data_classes = classes.iter().map(|c| c.to_string()).collect();
            i.consents.push(deny);
        }
    };
    with("deny consent on a requested class", &|i| {
        deny_of(i, &["Condition", "Claim"])
    });
    with("deny consent on other classes", &|i| {
        deny_of(i, &["Immunization"])
    });
    with("deny consent with an unreadable start", &|i| {
        deny_of(i, &["Observation", "Condition", "Claim", "Coverage"]);
        if let Some(c) = i.consents.last_mut() {
            c.subject.period.start = "MRN-4711".into();
        }
    });
    with("deny consent with an unreadable end", &|i| {
        deny_of(i, &["Observation", "Condition", "Claim", "Coverage"]);
        if let Some(c) = i.consents.last_mut() {
            c.subject.period.end = Some("not a date".into());
        }
    });
    with("permit with an unreadable start", &|i| {
        for c in &mut i.consents {
            c.subject.period.start = "yesterday".into();
        }
    });
    with("nurse outside the shift", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "nurse".into();
        }
        i.request.minute_of_day = 1300;
    });
    with("nurse in the shift", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "nurse".into();
        }
    });
    with("nurse on a weekend", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "nurse".into();
        }
        i.request.weekday = "Sun".into();
    });
    with("no contract", &|i| i.contracts.clear());
    with("expired contract", &|i| {
        for c in &mut i.contracts {
            c.expires = Some("2026-01-01T00:00:00Z".into());
        }
    });
    with("contract with an unreadable expiry", &|i| {
        for c in &mut i.contracts {
            c.expires = Some("soon".into());
        }
    });
    with("consent ended", &|i| {
        for c in &mut i.consents {
            c.subject.period.end = Some("2026-06-01T00:00:00Z".into());
        }
    });
    with("consent not started", &|i| {
        for c in &mut i.consents {
            c.subject.period.start = "2026-12-01T00:00:00Z".into();
        }
    });
    with("self-issued consent not linked", &|i| {
        for c in &mut i.consents {
            c.patient_linked = false;
        }
    });
    with("no privilege", &|i| i.privilege = None);
    with("privilege at another facility", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            for entry in &mut p.subject.privileges {
                entry.facility = "did:web:elsewhere.example".into();
            }
        }
    });
    with("pharmacist asking for notes", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "pharmacist".into();
        }
        i.request.data_classes = vec!["DocumentReference".into(), "Observation".into()];
    });
    with("psychiatrist asking for notes", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.specialty = "2084P0800X".into();
        }
        i.request.data_classes = vec!["DocumentReference".into(), "Observation".into()];
        for c in &mut i.consents {
            c.subject.data_classes.push("DocumentReference".into());
        }
    });
    with("auditor", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "auditor".into();
        }
    });
    with("purpose of another domain", &|i| {
        i.request.purpose = "HPAYMT".into()
    });
    with("nothing requested", &|i| i.request.data_classes.clear());
    with("study of another sponsor", &|i| {
        if let Some(s) = i.study.as_mut() {
            s.subject.sponsor = "did:web:other.example".into();
        }
    });
    with("classes outside the study", &|i| {
        i.request.data_classes.push("DocumentReference".into())
    });
    with("no study", &|i| i.study = None);
    with("token of another recipient", &|i| {
        if let Some(t) = i.token.as_mut() {
            t.recipient = "did:web:other.example".into();
        }
    });
    with("token of the billing domain", &|i| {
        if let Some(t) = i.token.as_mut() {
            t.domain = "billing".into();
        }
    });
    with("token of an unknown class", &|i| {
        if let Some(t) = i.token.as_mut() {
            t.class = "favourite-colour".into();
        }
    });
    with("no token", &|i| i.token = None);
    with("billing specialist detokenizing", &|i| {
        if let Some(p) = i.privilege.as_mut() {
            p.subject.role = "billing-specialist".into();
        }
    });
    out
}

/// Rego bodies of the bundle, as (file, line) of the line that opens each one.
pub(crate) fn bodies(content: &str) -> Vec<usize> {
    content
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let rule_head = !line.starts_with(char::is_whitespace) && !line.starts_with('#');
            line.trim_end().ends_with(" if {")
                || (rule_head && line.contains(" if ") && !line.trim_end().ends_with('{'))
        })
        .map(|(n, _)| n)
        .collect()
}

/// `content` with the injected statement first in the body opened on line `at`.
pub(crate) fn inject(content: &str, at: usize) -> String {
    let mut out = String::with_capacity(content.len() + 64);
    for (n, line) in content.lines().enumerate() {
        if n != at {
            out.push_str(line);
        } else if line.trim_end().ends_with(" if {") {
            out.push_str(line);
            out.push_str("\n\t");
            out.push_str(INJECTED);
        } else {
            // A one-line body `head if expr` becomes `head if { injected; expr }`.
            let (head, body) = line.split_once(" if ").unwrap_or((line, "true"));
            out.push_str(&format!("{head} if {{ {INJECTED}; {body} }}"));
        }
        out.push('\n');
    }
    out
}

/// An allow of `injected` that `intact` does not cover: the intact bundle denied, or the
/// injected allow returns a class the intact one did not, or has other obligations. A
/// break-glass grant is accepted when it is flagged for review and expires: it is what the
/// requester gets by presenting no consent at all.
fn widened(intact: &Decision, injected: &Decision) -> Option<String> {
    if !injected.allow {
        return None;
    }
    if !intact.allow {
        return Some(format!(
            "allows what the bundle denies ({})",
            intact.reasons.join("; ")
        ));
    }
    if injected.break_glass {
        if !injected.review_required || injected.expires_at.is_none() {
            return Some("grants break-glass without review or expiry".into());
        }
        return None;
    }
    let wider = injected
        .data_classes
        .iter()
        .find(|c| !intact.data_classes.contains(c));
    if let Some(c) = wider {
        return Some(format!("returns {c}, which the bundle does not"));
    }
    if injected.obligations != intact.obligations {
        return Some("allows with other obligations".into());
    }
    None
}
