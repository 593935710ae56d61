//! The compiled engine against the interpreter, and the bundle under injected errors.
//!
//! The VM turns an error inside a rule body into an undefined rule (see `vm.rs`). The
//! bundle is written so that this can only remove an allow: these tests inject an error
//! into every rule body of the shipped bundle, one at a time, and check that no input the
//! intact bundle denies is then allowed, and that no allow gets wider.

use super::engine::vm_bundle_unchecked;
use super::*;
use std::path::{Path, PathBuf};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// The statement injected: a builtin that fails, under strict builtin errors.
const INJECTED: &str = "to_number(\"injected error\") == 0";

/// Inputs of a domain that take every path of the shipped policies: allows, break-glass,
/// and one deny per condition, each a single change from the domain's sample.
fn variants(domain: &str) -> Vec<(&'static str, PolicyInput)> {
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
fn bodies(content: &str) -> Vec<usize> {
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
fn inject(content: &str, at: usize) -> String {
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

fn interpreter() -> PolicyBundle {
    let options = PolicyOptions {
        engine: EngineKind::Interpreter,
        cache_entries: 0,
        time_limit: std::time::Duration::from_secs(5),
    };
    PolicyBundle::load_with(&policies_dir(), options).unwrap()
}

fn vm(dir: &Path) -> PolicyBundle {
    vm_bundle_unchecked(dir, std::time::Duration::from_secs(5)).unwrap()
}

/// An allow of `injected` that `intact` does not cover: the intact bundle denied, or the
/// injected allow returns a class the intact one did not (a break-glass grant, flagged
/// for review, is what the requester gets by presenting no consent at all, and is
/// checked separately), or it drops an obligation.
fn widened(intact: &Decision, injected: &Decision) -> Option<String> {
    if !injected.allow {
        return None;
    }
    if !intact.allow {
        return Some(format!(
            "allowed what the bundle denies ({:?})",
            intact.reasons
        ));
    }
    if injected.break_glass {
        if !injected.review_required || injected.expires_at.is_none() {
            return Some("break-glass without review or expiry".into());
        }
        return None;
    }
    let wider = injected
        .data_classes
        .iter()
        .find(|c| !intact.data_classes.contains(c));
    if let Some(c) = wider {
        return Some(format!("returned {c}, which the bundle does not"));
    }
    if injected.obligations != intact.obligations {
        return Some("other obligations".into());
    }
    None
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
    let files = bundle_files(&policies_dir());
    let intact = vm(&policies_dir());
    let cases: Vec<(&str, &str, PolicyInput, Decision)> = DOMAINS
        .iter()
        .flat_map(|domain| {
            variants(domain)
                .into_iter()
                .map(|(name, input)| {
                    let d = intact.evaluate(domain, &input);
                    (*domain, name, input, d)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // The variants reach both answers in every domain.
    for domain in DOMAINS {
        assert!(cases.iter().any(|c| c.0 == domain && c.3.allow), "{domain}");
        assert!(
            cases.iter().any(|c| c.0 == domain && !c.3.allow),
            "{domain}"
        );
    }

    let mut injected_bodies = 0;
    let mut changed = 0;
    let mut failures = Vec::new();
    for (i, (name, content)) in files.iter().enumerate() {
        for at in bodies(content) {
            let mut mutated = files.clone();
            mutated[i].1 = inject(content, at);
            let tmp = write_bundle(&mutated);
            let bundle = match vm_bundle_unchecked(tmp.path(), std::time::Duration::from_secs(5)) {
                Ok(b) => b,
                Err(e) => panic!(
                    "{name}:{}: the injected bundle does not compile: {e}",
                    at + 1
                ),
            };
            injected_bodies += 1;
            for (domain, variant, input, before) in &cases {
                let after = bundle.evaluate(domain, input);
                if after.allow != before.allow || after.data_classes != before.data_classes {
                    changed += 1;
                }
                if let Some(why) = widened(before, &after) {
                    failures.push(format!("{name}:{} ({domain}/{variant}): {why}", at + 1));
                }
            }
        }
    }
    assert!(injected_bodies > 60, "only {injected_bodies} bodies found");
    // The injection does reach the decisions.
    assert!(
        changed > injected_bodies,
        "only {changed} decisions changed"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
    let mut files = bundle_files(&policies_dir());
    let clinical = files
        .iter_mut()
        .find(|(name, _)| name == "clinical.rego")
        .unwrap();
    clinical.1.push_str(
        "\ndenials contains \"no consent at all\" if {\n\tcount(input.consents) == 0\n\tto_number(\"x\") == 0\n}\n",
    );
    let tmp = write_bundle(&files);
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
    let expected: Vec<(String, Decision)> = DOMAINS
        .iter()
        .flat_map(|d| {
            variants(d)
                .into_iter()
                .map(move |(_, i)| (d.to_string(), i))
        })
        .map(|(d, i)| {
            let decision = bundle.evaluate(&d, &i);
            (d, decision)
        })
        .collect();
    let inputs: Vec<(String, PolicyInput)> = DOMAINS
        .iter()
        .flat_map(|d| {
            variants(d)
                .into_iter()
                .map(move |(_, i)| (d.to_string(), i))
        })
        .collect();
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
            let want = &expected[k].1;
            assert_eq!(
                (got.allow, &got.reasons, &got.data_classes),
                (want.allow, &want.reasons, &want.data_classes),
                "input {k}"
            );
        }
    }
}
