//! The compiled engine against the interpreter, and the bundle under injected errors.
//!
//! The VM turns an error inside a rule body into an undefined rule (see `vm.rs`). The
//! bundle is written so that this can only remove an allow: these tests inject an error
//! into every rule body of the shipped bundle, one at a time, and check that no input the
//! intact bundle denies is then allowed, and that no allow gets wider.

use super::engine::{read_policy_files, vm_bundle_from};
use super::failclosed::{bodies, inject, INJECTED};
use super::*;
use std::path::{Path, PathBuf};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn bundle_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rego") && !n.ends_with("_test.rego"))
        .map(|n| {
            let content = std::fs::read_to_string(dir.join(&n)).unwrap();
            (n, content)
        })
        .collect();
    files.sort();
    files
}

fn write_bundle(files: &[(String, String)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(tmp.path().join(name), content).unwrap();
    }
    tmp
}

/// The shipped bundle, with one file edited, in a temporary folder.
fn shipped_with(file: &str, edit: impl FnOnce(&mut String)) -> tempfile::TempDir {
    let mut files = bundle_files(&policies_dir());
    let (_, text) = files.iter_mut().find(|(name, _)| name == file).unwrap();
    edit(text);
    write_bundle(&files)
}

fn interpreter() -> PolicyBundle {
    let options = PolicyOptions {
        engine: EngineKind::Interpreter,
        cache_entries: 0,
        time_limit: std::time::Duration::from_secs(5),
        ..PolicyOptions::default()
    };
    PolicyBundle::load_with(&policies_dir(), options).unwrap()
}

fn vm(dir: &Path) -> PolicyBundle {
    let files = read_policy_files(dir, false).unwrap();
    vm_bundle_from(files, std::time::Duration::from_secs(5)).unwrap()
}

#[test]
fn the_vm_decides_every_variant_as_the_interpreter_does() {
    let interpreter = interpreter();
    let compiled = vm(&policies_dir());
    let mut compared = 0;
    for domain in DOMAINS {
        for (name, input) in variants(domain) {
            let expected = interpreter.evaluate(domain, &input);
            let got = compiled.evaluate(domain, &input);
            if expected
                .reasons
                .iter()
                .any(|r| r == "policy evaluation failed: error")
            {
                // The interpreter failed the whole decision (an unreadable date): the VM
                // must deny too, for its own reasons.
                assert!(
                    !got.allow,
                    "{domain}/{name}: the VM allowed {:?}",
                    got.reasons
                );
                continue;
            }
            assert_eq!(
                (
                    got.allow,
                    &got.reasons,
                    &got.data_classes,
                    &got.obligations,
                    got.break_glass
                ),
                (
                    expected.allow,
                    &expected.reasons,
                    &expected.data_classes,
                    &expected.obligations,
                    expected.break_glass
                ),
                "{domain}/{name}"
            );
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} decisions compared");
}

#[test]
fn an_error_in_any_rule_body_never_allows_what_the_bundle_denies() {
    // The variants reach both answers in every domain.
    let intact = vm(&policies_dir());
    for domain in DOMAINS {
        let answers: Vec<bool> = variants(domain)
            .iter()
            .map(|(_, i)| intact.evaluate(domain, i).allow)
            .collect();
        assert!(
            answers.contains(&true) && answers.contains(&false),
            "{domain}"
        );
    }
    let report = check_fail_closed(&policies_dir()).unwrap();
    assert!(report.bodies > 60, "only {} bodies found", report.bodies);
    assert_eq!(report.inputs, DOMAINS.len() * variants("clinical").len());
    // The injection does reach the decisions.
    assert!(
        report.changed > report.bodies,
        "only {} changed",
        report.changed
    );
    let found: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
    // Every allow of every domain was compared with its refusals, and none applies.
    let allows: usize = DOMAINS
        .iter()
        .map(|d| {
            variants(d)
                .iter()
                .filter(|(_, i)| intact.evaluate(d, i).allow)
                .count()
        })
        .sum();
    assert!(allows >= DOMAINS.len() * 2, "only {allows} allows");
    assert_eq!(report.allows_compared, allows);
    let disagree: Vec<String> = report.disagreements.iter().map(|d| d.to_string()).collect();
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    assert!(report.is_clean());
}

#[test]
fn the_check_finds_an_allow_to_which_a_refusal_applies() {
    // A domain's refusals are not evaluated on an allow: a `permitted` that forgets the
    // contract allows what the contract refusal refuses, with no error anywhere to inject.
    let tmp = shipped_with("clinical.rego", |text| {
        let before = text.clone();
        assert_eq!(text.matches("\n\tcontract\n").count(), 1);
        *text = text.replace("\n\tcontract\n", "\n");
        assert_ne!(*text, before);
    });
    let report = check_fail_closed(tmp.path()).unwrap();
    assert!(!report.is_clean());
    let text: Vec<String> = report.disagreements.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("clinical allows input \"no contract\"")
                && t.contains("no registry contract between this custodian")),
        "{}",
        text.join("\n")
    );
    assert!(report.disagreements.iter().all(|d| d.domain == "clinical"));
}

#[test]
fn a_domain_without_refusals_is_not_compared() {
    // Billing's refusals folded back into its denials: its allows are not compared
    // (nothing to compare with), the other domains' are.
    let tmp = shipped_with("billing.rego", |text| {
        let gate = "denials contains msg if {\n\tnot permitted\n\tsome msg in refusals\n}\n";
        assert!(text.contains(gate));
        *text = text
            .replace(gate, "")
            .replace("refusals contains", "denials contains");
    });
    let report = check_fail_closed(tmp.path()).unwrap();
    let shipped = check_fail_closed(&policies_dir()).unwrap();
    let intact = vm(&policies_dir());
    let billing_allows = variants("billing")
        .iter()
        .filter(|(_, i)| intact.evaluate("billing", i).allow)
        .count();
    assert!(billing_allows > 0);
    assert_eq!(
        report.allows_compared + billing_allows,
        shipped.allows_compared
    );
    assert!(report.is_clean());
}

#[test]
fn the_check_finds_an_allow_that_only_asks_for_no_denials() {
    // Billing's allow written the usual way, without `permitted`: a failing denial rule
    // now lets requests through, and the check names the rule and the input.
    let tmp = shipped_with("billing.rego", |text| {
        let before = text.clone();
        *text = text.replace(
            "\tcount(denials) == 0\n\tpermitted\n",
            "\tcount(denials) == 0\n",
        );
        *text = text.replace(
            "\tnot permitted\n\tsome msg in refusals\n",
            "\tsome msg in refusals\n",
        );
        assert_ne!(*text, before);
    });
    let report = check_fail_closed(tmp.path()).unwrap();
    assert!(!report.findings.is_empty());
    let text: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        text.iter().any(|t| t.starts_with("billing.rego:")
            && t.contains("allows what the bundle denies")
            && t.contains("billing input \"no contract\"")),
        "{}",
        text.join("\n")
    );
    assert!(report.findings.iter().all(|f| f.domain == "billing"));
}

#[test]
fn the_injection_finds_and_breaks_every_kind_of_body() {
    let text = "package p\n\nx if {\n\ta\n}\n\ny := 1 if b == 2\n\nf(v) := {\n\t\"k\": v,\n}\n\nz contains m if {\n\tevery c in s {\n\t\tc\n\t}\n}\n";
    let found = bodies(text);
    assert_eq!(found, [2, 6, 12]);
    let once = inject(text, 6);
    assert!(once.contains(&format!("y := 1 if {{ {INJECTED}; b == 2 }}")));
    let block = inject(text, 2);
    assert!(block.contains(&format!("x if {{\n\t{INJECTED}\n\ta")));
}

#[test]
fn a_bundle_the_vm_decides_differently_is_refused_at_load_and_runs_under_the_interpreter() {
    // An error only on the "no consent" path: the interpreter fails that decision (a deny),
    // the VM drops the failing rule and decides otherwise. The load says so and names the
    // way out; the interpreter takes the same bundle.
    let tmp = shipped_with("clinical.rego", |text| {
        text.push_str(
            "\ndenials contains \"no consent at all\" if {\n\tcount(input.consents) == 0\n\tto_number(\"x\") == 0\n}\n",
        )
    });
    let err = PolicyBundle::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("decides sample input"), "{err}");
    assert!(err.contains("policy_engine = \"interpreter\""), "{err}");
    let options = PolicyOptions {
        engine: EngineKind::Interpreter,
        time_limit: std::time::Duration::from_secs(5),
        ..PolicyOptions::default()
    };
    let bundle = PolicyBundle::load_with(tmp.path(), options).unwrap();
    assert!(bundle.evaluate("clinical", &sample_input("clinical")).allow);
}

#[test]
fn machines_are_shared_by_threads_deciding_at_once() {
    let bundle = std::sync::Arc::new(vm(&policies_dir()));
    let inputs: Vec<(String, PolicyInput)> = DOMAINS
        .iter()
        .flat_map(|d| {
            variants(d)
                .into_iter()
                .map(move |(_, i)| (d.to_string(), i))
        })
        .collect();
    // Decided one at a time first.
    let expected: Vec<Decision> = inputs.iter().map(|(d, i)| bundle.evaluate(d, i)).collect();
    let inputs = std::sync::Arc::new(inputs);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let bundle = bundle.clone();
            let inputs = inputs.clone();
            std::thread::Builder::new()
                .stack_size(EVAL_STACK_BYTES)
                .spawn(move || {
                    // Each thread starts elsewhere, so different inputs run side by side.
                    (0..inputs.len())
                        .map(|k| (t * 7 + k) % inputs.len())
                        .map(|k| (k, bundle.evaluate(&inputs[k].0, &inputs[k].1)))
                        .collect::<Vec<_>>()
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        for (k, got) in t.join().unwrap() {
            let want = &expected[k];
            assert_eq!(
                (got.allow, &got.reasons, &got.data_classes),
                (want.allow, &want.reasons, &want.data_classes),
                "input {k}"
            );
        }
    }
}

#[test]
fn a_denial_an_operator_adds_denies_an_allow_in_every_domain() {
    // The domains' own refusals are skipped on an allow; a denial added to `denials` is
    // not: it refuses exactly the requests it names, under both engines.
    let tmp = shipped_with("common.rego", |text| text.push('\n'));
    for domain in DOMAINS {
        let path = tmp.path().join(format!("{domain}.rego"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(
            "\ndenials contains \"requester suspended\" if input.request.requester_org == \"did:web:hospital-a.example\"\n",
        );
        std::fs::write(&path, text).unwrap();
    }
    let interpreter = PolicyBundle::load_with(
        tmp.path(),
        PolicyOptions {
            engine: EngineKind::Interpreter,
            time_limit: std::time::Duration::from_secs(5),
            ..PolicyOptions::default()
        },
    )
    .unwrap();
    for bundle in [vm(tmp.path()), interpreter] {
        let shipped = vm(&policies_dir());
        for domain in DOMAINS {
            let sample = sample_input(domain);
            assert!(shipped.evaluate(domain, &sample).allow, "{domain}");
            let d = bundle.evaluate(domain, &sample);
            assert!(!d.allow, "{domain}");
            assert_eq!(d.reasons, ["requester suspended"], "{domain}");
            // Another organization is not suspended: it gets the domain's own answer.
            let mut other = sample.clone();
            other.request.requester_org = Some("did:web:other.example".into());
            let d = bundle.evaluate(domain, &other);
            assert!(!d.allow);
            assert!(!d.reasons.iter().any(|r| r == "requester suspended"));
        }
    }
}
