use super::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of the shipped policies (without tests) in a fresh temporary folder.
fn policy_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            std::fs::copy(entry.path(), tmp.path().join(&name)).unwrap();
        }
    }
    tmp
}

/// Debug builds on a busy machine can exceed the 50 ms production limit; the limit itself
/// is tested with the looping bundle.
fn slow_ok() -> PolicyOptions {
    PolicyOptions {
        time_limit: Duration::from_secs(2),
        ..PolicyOptions::default()
    }
}

fn holder(dir: &Path) -> PolicyHolder {
    PolicyHolder::with_options(dir, slow_ok())
}

fn reasons(d: &Decision) -> String {
    d.reasons.join(" | ")
}

#[test]
fn policy_each_domain_allows_the_sample_request() {
    let holder = holder(&policies_dir());
    let digest = holder.current_digest().expect("shipped policies load");
    for domain in DOMAINS {
        let d = holder.evaluate(domain, &sample_input(domain));
        assert!(d.allow, "{domain}: {}", reasons(&d));
        assert_eq!(d.policy_digest, digest, "{domain}");
        assert_eq!(d.obligations.max_records, Some(5000), "{domain}");
    }
}

#[test]
fn policy_clinical_treatment_decision() {
    let holder = holder(&policies_dir());
    let d = holder.evaluate("clinical", &sample_input("clinical"));
    assert_eq!(d.data_classes, ["Condition", "Observation"]);
    assert_eq!(
        d.obligations.reveal,
        ["address", "birth-date", "mrn", "name", "telecom"]
    );
    assert_eq!(
        d.obligations.tokenize,
        ["drivers-license", "other-identifiers", "passport", "ssn"]
    );
    assert!(!d.break_glass && !d.review_required && d.expires_at.is_none());
}

#[test]
fn policy_clinical_without_consent_is_denied() {
    let holder = holder(&policies_dir());
    let mut input = sample_input("clinical");
    input.consents.clear();
    let d = holder.evaluate("clinical", &input);
    assert!(!d.allow);
    assert!(
        reasons(&d).contains("no consent permits clinical/TREAT"),
        "{}",
        reasons(&d)
    );
    assert!(d.data_classes.is_empty());
    assert!(!d.policy_digest.is_empty());
}

#[test]
fn policy_clinical_break_glass() {
    let holder = holder(&policies_dir());
    let mut input = sample_input("clinical");
    input.consents.clear();
    input.request.purpose = "ETREAT".into();
    input.request.justification = "patient unconscious after a road accident".into();
    let d = holder.evaluate("clinical", &input);
    assert!(d.allow, "{}", reasons(&d));
    assert!(d.break_glass && d.review_required);
    assert_eq!(d.expires_at.as_deref(), Some("2026-11-27T11:00:00Z"));
    assert_eq!(d.obligations.reveal, ["name"]);

    input.request.justification = "urgent".into();
    let d = holder.evaluate("clinical", &input);
    assert!(!d.allow);
    assert!(reasons(&d).contains("justification of at least 20 characters"));
}

#[test]
fn policy_billing_allows_payment_and_denies_treatment() {
    let holder = holder(&policies_dir());
    let d = holder.evaluate("billing", &sample_input("billing"));
    assert!(d.allow);
    assert_eq!(d.data_classes, ["Claim", "Coverage"]);
    assert!(d.obligations.redact.contains(&"narrative".to_string()));

    let mut input = sample_input("billing");
    input.request.purpose = "TREAT".into();
    let d = holder.evaluate("billing", &input);
    assert!(!d.allow);
    assert!(reasons(&d).contains("not a billing purpose"));
}

#[test]
fn policy_research_requires_the_sponsor() {
    let holder = holder(&policies_dir());
    let d = holder.evaluate("research", &sample_input("research"));
    assert!(d.allow);
    assert!(d.obligations.aggregate_only);
    assert_eq!(d.obligations.min_cell_size, Some(11));

    let mut input = sample_input("research");
    input.request.requester_org = Some("did:web:someone-else.example".into());
    let d = holder.evaluate("research", &input);
    assert!(!d.allow);
    assert!(reasons(&d).contains("not the study's sponsor"));
}

#[test]
fn policy_detokenize_requires_the_recipient() {
    let holder = holder(&policies_dir());
    let d = holder.evaluate("detokenize", &sample_input("detokenize"));
    assert!(d.allow);
    assert_eq!(d.obligations.reveal, ["ssn"]);

    let mut input = sample_input("detokenize");
    if let Some(token) = input.token.as_mut() {
        token.recipient = "did:web:someone-else.example".into();
    }
    let d = holder.evaluate("detokenize", &input);
    assert!(!d.allow);
    assert!(reasons(&d).contains("not issued to the requester's organization"));
}

#[test]
fn policy_unknown_domain_is_denied() {
    let holder = holder(&policies_dir());
    let d = holder.evaluate("pharmacy", &sample_input("clinical"));
    assert!(!d.allow);
    assert_eq!(d.reasons, ["no policy for this domain"]);
    assert_eq!(Some(d.policy_digest), holder.current_digest());
}

#[test]
fn policy_evaluation_error_is_a_deny_without_the_input() {
    let mut input = sample_input("clinical");
    input.request.time = "MRN-4711 at noon".into();
    // The interpreter fails the whole decision.
    let options = PolicyOptions {
        engine: EngineKind::Interpreter,
        ..slow_ok()
    };
    let interpreter = PolicyHolder::with_options(&policies_dir(), options);
    let d = interpreter.evaluate("clinical", &input);
    assert!(!d.allow);
    assert_eq!(d.reasons, ["policy evaluation failed: error"]);
    // The VM leaves every rule that needs the time undefined: still a deny, and no reason
    // quotes the input.
    let d = holder(&policies_dir()).evaluate("clinical", &input);
    assert!(!d.allow, "{:?}", d.reasons);
    assert!(!d.reasons.is_empty());
    assert!(
        d.reasons.iter().all(|r| !r.contains("MRN")),
        "{:?}",
        d.reasons
    );
}

#[test]
fn policy_reasons_never_quote_patient_identifiers() {
    let holder = holder(&policies_dir());
    let mut input = sample_input("clinical");
    for purpose in ["TREAT", "HPAYMT", "ETREAT"] {
        input.request.purpose = purpose.into();
        let d = holder.evaluate("clinical", &input);
        let all = reasons(&d);
        assert!(
            !all.contains("MRN-4711") && !all.contains("SamplePatient"),
            "{all}"
        );
    }
}

#[test]
fn policy_digest_covers_bundle_files_only() {
    let tmp = policy_copy();
    let a = PolicyBundle::load(tmp.path()).unwrap();
    std::fs::write(
        tmp.path().join("extra_test.rego"),
        "package x_test\n\ntest_y if true\n",
    )
    .unwrap();
    let b = PolicyBundle::load(tmp.path()).unwrap();
    assert_eq!(
        a.digest(),
        b.digest(),
        "test files are not part of the bundle"
    );
    assert_eq!(a.digest().len(), 64);
    let path = tmp.path().join("common.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{src}\n# changed\n")).unwrap();
    let c = PolicyBundle::load(tmp.path()).unwrap();
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn policy_broken_file_denies_everything_until_a_good_reload() {
    let tmp = policy_copy();
    let holder = holder(tmp.path());
    let good = holder.current_digest().expect("copy loads");
    assert!(holder.evaluate("clinical", &sample_input("clinical")).allow);

    let path = tmp.path().join("billing.rego");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{original}\nsecret_marker := {{ unbalanced\n"),
    )
    .unwrap();
    let err = holder.reload().unwrap_err();
    assert!(matches!(err, PolicyError::Syntax { .. }), "{err}");
    assert_eq!(holder.current_digest(), None);
    for domain in DOMAINS {
        let d = holder.evaluate(domain, &sample_input(domain));
        assert!(!d.allow, "{domain}");
        assert_eq!(d.reasons.len(), 1);
        assert!(
            d.reasons[0].starts_with("policy bundle failed to load: billing.rego"),
            "{}",
            d.reasons[0]
        );
        assert!(!d.reasons[0].contains("secret_marker"), "{}", d.reasons[0]);
    }

    std::fs::write(&path, original).unwrap();
    assert_eq!(holder.reload().unwrap(), good);
    assert!(holder.evaluate("billing", &sample_input("billing")).allow);
    assert_eq!(holder.broken_reason(), None);
}

#[test]
fn policy_missing_folder_gives_a_broken_holder() {
    let holder = PolicyHolder::new(Path::new("/nonexistent/fedgate/policies"));
    assert_eq!(holder.current_digest(), None);
    let d = holder.evaluate("clinical", &sample_input("clinical"));
    assert!(!d.allow);
    assert!(d.reasons[0].starts_with("policy bundle failed to load: cannot read policies"));
}

#[test]
fn policy_missing_domain_fails_the_load() {
    let tmp = policy_copy();
    std::fs::remove_file(tmp.path().join("research.rego")).unwrap();
    let err = PolicyBundle::load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Check { domain, .. } if domain == "research"),
        "{err}"
    );
}

#[test]
fn policy_unknown_builtin_fails_the_load() {
    let tmp = policy_copy();
    let path = tmp.path().join("detokenize.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        src.replace("token := input.token", "token := crypto.nope(input.token)"),
    )
    .unwrap();
    let err = PolicyBundle::load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Check { domain, .. } if domain == "detokenize"),
        "{err}"
    );
}

#[test]
fn policy_recursion_is_rejected_at_load() {
    let tmp = policy_copy();
    std::fs::write(
        tmp.path().join("zz_loop.rego"),
        "package fedgate.zz\n\nimport data.fedgate.zz as self\n\nf(n) := g(n + 1)\n\ng(n) := self.f(n)\n",
    )
    .unwrap();
    let err = PolicyBundle::load(tmp.path()).unwrap_err();
    match &err {
        PolicyError::Recursion(cycle) => assert!(cycle.contains("data.fedgate.zz.f"), "{cycle}"),
        other => panic!("expected recursion, got {other}"),
    }
    let holder = PolicyHolder::new(tmp.path());
    assert!(holder
        .broken_reason()
        .is_some_and(|r| r.contains("recursion")));
}

/// The clinical decision of `policies/` replaced by one that loops on request.
fn looping_bundle() -> tempfile::TempDir {
    let tmp = policy_copy();
    std::fs::write(
        tmp.path().join("clinical.rego"),
        r#"package fedgate.clinical

default decision := {"allow": false, "reasons": ["default"], "data_classes": [],
  "obligations": {"reveal": [], "tokenize": [], "pseudonymize": [], "generalize": [], "redact": [],
    "aggregate_only": false, "min_cell_size": null, "max_records": null},
  "break_glass": false, "review_required": false, "expires_at": null}

# Eight billion iterations, each in small builtin calls the timer can interrupt.
decision := {"allow": true, "reasons": [sprintf("%d", [n])], "data_classes": [],
  "obligations": {"reveal": [], "tokenize": [], "pseudonymize": [], "generalize": [], "redact": [],
    "aggregate_only": false, "min_cell_size": null, "max_records": null},
  "break_glass": false, "review_required": false, "expires_at": null} if {
	input.request.justification == "loop"
	n := count([1 |
		some i in numbers.range(1, 2000)
		some j in numbers.range(1, 2000)
		some k in numbers.range(1, 2000)
	])
}
"#,
    )
    .unwrap();
    tmp
}

#[test]
fn policy_runaway_evaluation_is_stopped_by_the_timer() {
    let tmp = looping_bundle();
    let holder = PolicyHolder::new(tmp.path());
    assert!(
        holder.current_digest().is_some(),
        "{:?}",
        holder.broken_reason()
    );
    let mut input = sample_input("clinical");
    input.request.justification = "loop".into();
    let started = Instant::now();
    let d = holder.evaluate("clinical", &input);
    let took = started.elapsed();
    assert!(!d.allow);
    assert_eq!(
        d.reasons,
        ["policy evaluation failed: time limit of 50 ms exceeded"]
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The other domains are unaffected.
    assert!(holder.evaluate("billing", &sample_input("billing")).allow);
}

#[test]
fn policy_time_limit_comes_from_the_options() {
    let tmp = looping_bundle();
    let options = PolicyOptions {
        time_limit: Duration::from_millis(5),
        ..PolicyOptions::default()
    };
    let holder = PolicyHolder::with_options(tmp.path(), options);
    let mut input = sample_input("clinical");
    input.request.justification = "loop".into();
    let started = Instant::now();
    let d = holder.evaluate("clinical", &input);
    assert_eq!(
        d.reasons,
        ["policy evaluation failed: time limit of 5 ms exceeded"]
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// Looks `input` up in `holder`, which must not have decided it already.
fn pending(holder: &PolicyHolder, domain: &str, input: &PolicyInput) -> Pending {
    match holder.look_up(domain, input) {
        Lookup::Evaluate(pending) => pending,
        Lookup::Decided(d) => panic!("{domain}: decided without an evaluation: {d:?}"),
    }
}

#[test]
fn a_compiled_decision_made_on_the_calling_thread_is_the_one_the_pool_makes() {
    // Limits far above any decision's time: where it runs must not depend on speed here.
    let options = PolicyOptions {
        time_limit: Duration::from_secs(30),
        inline_time_limit: Duration::from_secs(30),
        cache_entries: 0,
        engine: EngineKind::Vm,
    };
    let holder = PolicyHolder::with_options(&policies_dir(), options);
    let mut allowed = 0;
    for domain in DOMAINS {
        for (name, input) in variants(domain) {
            let here = pending(&holder, domain, &input).evaluate_here(&input);
            let pooled = pending(&holder, domain, &input).evaluate(&input);
            assert_eq!(here.as_ref(), Some(&pooled), "{domain}: {name}");
            allowed += usize::from(pooled.allow);
        }
    }
    // Allows and denies both compared.
    assert!(allowed >= DOMAINS.len(), "{allowed}");
}

#[test]
fn the_interpreter_never_decides_on_the_calling_thread() {
    let options = PolicyOptions {
        engine: EngineKind::Interpreter,
        inline_time_limit: Duration::from_secs(30),
        cache_entries: 0,
        ..slow_ok()
    };
    let holder = PolicyHolder::with_options(&policies_dir(), options);
    for domain in DOMAINS {
        let input = sample_input(domain);
        let pending = pending(&holder, domain, &input);
        assert_eq!(pending.evaluate_here(&input), None, "{domain}");
        assert!(pending.evaluate(&input).allow, "{domain}");
    }
}

#[test]
fn a_decision_that_outruns_the_inline_limit_is_made_on_the_pool_with_its_domain() {
    let tmp = looping_bundle();
    // The loop runs for minutes; an ordinary decision takes far less than 100 ms even in a
    // debug build on a busy machine.
    let options = PolicyOptions {
        time_limit: Duration::from_millis(300),
        inline_time_limit: Duration::from_millis(100),
        cache_entries: 0,
        engine: EngineKind::Vm,
    };
    let holder = PolicyHolder::with_options(tmp.path(), options);
    let mut looping = sample_input("clinical");
    looping.request.justification = "loop".into();
    let ordinary = sample_input("clinical");
    // Stopped at the inline limit (at the decision's own, it would be a deny): `None`.
    let pending_loop = pending(&holder, "clinical", &looping);
    assert_eq!(pending_loop.evaluate_here(&looping), None);
    // The pool decides it under the full limit: a deny naming that limit, as ever.
    let d = pending_loop.evaluate(&looping);
    assert!(!d.allow);
    assert_eq!(
        d.reasons,
        ["policy evaluation failed: time limit of 300 ms exceeded"]
    );
    // One outrun does not move the domain (a preempted thread outruns too)...
    let here = pending(&holder, "clinical", &ordinary).evaluate_here(&ordinary);
    // (This bundle's clinical decision allows only the loop.)
    assert_eq!(here.map(|d| d.reasons), Some(vec!["default".to_string()]));
    // ...several in a row do.
    for _ in 0..3 {
        assert_eq!(
            pending(&holder, "clinical", &looping).evaluate_here(&looping),
            None
        );
    }
    // The domain goes to the pool for a while, ordinary inputs too; the others stay here.
    let clinical = pending(&holder, "clinical", &ordinary);
    assert_eq!(clinical.evaluate_here(&ordinary), None);
    // (This bundle's clinical decision allows only the loop.)
    assert_eq!(clinical.evaluate(&ordinary).reasons, ["default"]);
    let billing_input = sample_input("billing");
    let billing = pending(&holder, "billing", &billing_input)
        .evaluate_here(&billing_input)
        .expect("billing still decided on the calling thread");
    assert!(billing.allow, "{}", reasons(&billing));
    // A reload (a new bundle) starts with every domain on the calling thread again.
    std::fs::write(
        tmp.path().join("zz_extra.rego"),
        "package fedgate.zz\n\nx := 1\n",
    )
    .unwrap();
    holder.reload().unwrap();
    let again = pending(&holder, "clinical", &ordinary)
        .evaluate_here(&ordinary)
        .expect("clinical decided on the calling thread after a reload");
    assert_eq!(again.reasons, ["default"]);
}

#[test]
fn policy_decision_may_not_widen_the_request() {
    let tmp = policy_copy();
    let path = tmp.path().join("clinical.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        src.replace(
            "granted := consent_granted if not break_glass",
            "granted := consent_granted | {\"Everything\"} if not break_glass",
        ),
    )
    .unwrap();
    let bundle = PolicyBundle::load_with(tmp.path(), slow_ok()).unwrap();
    let d = bundle.evaluate("clinical", &sample_input("clinical"));
    assert!(!d.allow);
    assert_eq!(
        d.reasons,
        ["policy evaluation failed: decision widens the requested data classes"]
    );
}

#[test]
fn policy_malformed_decision_is_a_deny() {
    let tmp = policy_copy();
    std::fs::write(
        tmp.path().join("detokenize.rego"),
        "package fedgate.detokenize\n\ndecision := {\"allow\": true}\n",
    )
    .unwrap();
    // A malformed decision on the sample input fails the load ...
    assert!(matches!(
        PolicyBundle::load(tmp.path()),
        Err(PolicyError::Check { .. })
    ));
    // ... and at run time, when only some inputs produce it, it is a deny.
    std::fs::write(
        tmp.path().join("detokenize.rego"),
        "package fedgate.detokenize\n\ndefault decision := {\"allow\": false, \"reasons\": [\"x\"], \"data_classes\": [], \"obligations\": {\"reveal\": [], \"tokenize\": [], \"pseudonymize\": [], \"generalize\": [], \"redact\": [], \"aggregate_only\": false, \"min_cell_size\": null, \"max_records\": null}, \"break_glass\": false, \"review_required\": false, \"expires_at\": null}\n\ndecision := {\"allow\": true} if input.request.purpose == \"ETREAT\"\n",
    )
    .unwrap();
    let bundle = PolicyBundle::load_with(tmp.path(), slow_ok()).unwrap();
    let mut input = sample_input("detokenize");
    input.request.purpose = "ETREAT".into();
    let d = bundle.evaluate("detokenize", &input);
    assert!(!d.allow);
    assert_eq!(d.reasons, ["policy evaluation failed: malformed decision"]);
}

/// Replaces a file at once (write beside it, then rename), so that a watcher never reads
/// it half written.
fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn policy_watch_reloads_on_change() {
    let tmp = policy_copy();
    let holder = Arc::new(holder(tmp.path()));
    let first = holder.current_digest().unwrap();
    let _watch = holder.spawn_watch(Duration::from_millis(20)).unwrap();
    let path = tmp.path().join("research.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    replace_file(&path, &format!("{src}\n# reviewed\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.current_digest().as_deref() == Some(first.as_str()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = holder.current_digest().expect("still loaded");
    assert_ne!(first, second);

    replace_file(&path, "package fedgate.research\n\ndecision := {");
    while holder.current_digest().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!holder.evaluate("research", &sample_input("research")).allow);
    assert!(
        holder.reload_if_changed().is_none(),
        "unchanged files are not reloaded again"
    );
}

/// The shipped policy tests, as `fedgate policy test policies/` runs them.
#[test]
fn policy_shipped_rego_tests_pass() {
    let report = run_tests(&policies_dir()).unwrap();
    for r in &report.results {
        if r.outcome != TestOutcome::Pass {
            eprintln!("{} {:?} {:?}", r.name, r.outcome, r.prints);
        }
    }
    eprintln!("{}", report.summary());
    assert!(report.passed() >= 100, "{}", report.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(report.is_success());
    let names: Vec<&str> = report.results.iter().map(|r| r.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"data.fedgate.clinical_test.test_break_glass_allowed"));
}

#[test]
fn policy_runner_reports_failures_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a_test.rego"),
        "package a_test\n\ntest_ok if 1 == 1\n\ntest_false if 1 == 2\n\ntest_value := 3\n\n\
         test_error if time.parse_rfc3339_ns(\"not a time\") > 0\n\nhelper := 1\n",
    )
    .unwrap();
    let report = run_tests(tmp.path()).unwrap();
    let by_name: BTreeMap<&str, &TestOutcome> = report
        .results
        .iter()
        .map(|r| (r.name.as_str(), &r.outcome))
        .collect();
    assert_eq!(by_name.len(), 4, "{by_name:?}");
    assert_eq!(by_name["data.a_test.test_ok"], &TestOutcome::Pass);
    assert_eq!(
        by_name["data.a_test.test_false"],
        &TestOutcome::Fail("undefined".into())
    );
    assert_eq!(
        by_name["data.a_test.test_value"],
        &TestOutcome::Fail("got 3".into())
    );
    assert!(matches!(
        by_name["data.a_test.test_error"],
        TestOutcome::Error(_)
    ));
    assert_eq!(report.summary(), "1 passed, 3 failed");
    assert!(!report.is_success());
}

#[test]
fn policy_runner_with_no_tests_is_not_a_success() {
    let tmp = policy_copy();
    let report = run_tests(tmp.path()).unwrap();
    assert!(report.results.is_empty());
    assert!(!report.is_success());
    assert!(matches!(
        run_tests(Path::new("/nonexistent/x")),
        Err(PolicyError::Io { .. })
    ));
}

#[test]
fn policy_types_are_shareable() {
    fn is<T: Send + Sync>() {}
    is::<PolicyBundle>();
    is::<PolicyHolder>();
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(name);
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft202012::new(&value).unwrap()
}

fn schema_errors(schema: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    schema.iter_errors(value).map(|e| e.to_string()).collect()
}

/// The sample input is the production type: what the schema says of it holds for the
/// gateway's inputs, and the decisions the shipped policies make on it (allow, deny,
/// break-glass) are what the decision schema describes.
#[test]
fn policy_sample_inputs_and_decisions_match_the_schemas() {
    let input_schema = schema("policy-input.schema.json");
    let decision_schema = schema("decision.schema.json");
    let holder = holder(&policies_dir());
    for domain in DOMAINS {
        let input = sample_input(domain);
        let value = serde_json::to_value(&input).unwrap();
        let errors = schema_errors(&input_schema, &value);
        assert!(errors.is_empty(), "{domain}: {errors:?}");
        let mut denied = input.clone();
        denied.request.purpose = "PUBHLTH".into();
        let mut emergency = input.clone();
        emergency.consents.clear();
        emergency.request.purpose = "ETREAT".into();
        emergency.request.justification = "patient unconscious after a road accident".into();
        let decisions = [
            holder.evaluate(domain, &input),
            holder.evaluate(domain, &denied),
            holder.evaluate(domain, &emergency),
            Decision::deny("x"),
        ];
        assert!(decisions[0].allow && !decisions[1].allow, "{domain}");
        if domain == "clinical" {
            assert!(decisions[2].allow && decisions[2].break_glass);
        }
        for d in decisions {
            let v = serde_json::to_value(&d).unwrap();
            let errors = schema_errors(&decision_schema, &v);
            assert!(errors.is_empty(), "{domain}: {errors:?} in {v}");
        }
    }
    let mut bad = serde_json::to_value(sample_input("clinical")).unwrap();
    bad["request"]["surprise"] = json!(1);
    assert!(!input_schema.is_valid(&bad));
}

/// A verified credential of `kind` with `subject`, as the verifier hands it on.
fn verified(
    kind: federation::CredentialKind,
    issuer: &str,
    subject: serde_json::Value,
) -> federation::verify::VerifiedCredential {
    federation::verify::VerifiedCredential {
        id: Some(format!("urn:uuid:{}", kind.type_name())),
        kind,
        format: Default::default(),
        issuer: issuer.into(),
        subject: subject.into(),
        valid_from: None,
        valid_until: None,
        status: None,
        digest: "00".repeat(32),
        checks: Vec::new(),
        holder: None,
        disclosed: None,
    }
}

/// Built from full verified subjects, the input carries what the policies read and the
/// schema allows, and nothing else: no patient identifier, no clinician name or NPI.
#[test]
fn policy_input_from_verified_claims_matches_the_schema_and_leaves_the_rest_out() {
    use federation::credentials::{ConsentSubject, PrivilegeSubject, StudySubject};
    use federation::CredentialKind;
    let custodian = "did:web:hospital-b.example";
    let org = "did:web:hospital-a.example";
    let privilege = verified(
        CredentialKind::ClinicianPrivilege,
        "did:web:credentialing.example",
        json!({
            "id": "did:key:z6MkSampleClinician", "name": "Dr. Irena Kowalczyk",
            "npi": "1234567893", "role": "physician", "specialty": "207R00000X",
            "organization": org,
            "privileges": [{"facility": custodian, "domains": ["clinical"], "actions": ["read"]}],
        }),
    );
    let patient = "did:key:z6MkSamplePatient";
    let consent = verified(
        CredentialKind::PatientConsent,
        patient,
        json!({
            "id": patient,
            "patientIdentifiers": [{"custodian": custodian, "system": "urn:mrn", "value": "MRN-4711"}],
            "custodians": [custodian],
            "grantee": {"id": org, "kind": "organization"},
            "provision": "permit", "domains": ["clinical"], "purposes": ["TREAT"],
            "dataClasses": ["Observation"], "period": {"start": "2026-01-01T00:00:00Z"},
        }),
    );
    let study = verified(
        CredentialKind::ResearchStudy,
        "did:web:irb.example",
        json!({
            "id": "urn:fedgate:study:s1", "title": "Secret title", "sponsor": org,
            "irb": "IRB-2026-17", "purposes": ["HRESCH"], "dataClasses": ["Observation"],
            "aggregateOnly": true, "minCellSize": 11,
        }),
    );
    let privilege_claims: PrivilegeSubject =
        serde_json::from_value(serde_json::Value::clone(&privilege.subject)).unwrap();
    let consent_claims: ConsentSubject =
        serde_json::from_value(serde_json::Value::clone(&consent.subject)).unwrap();
    let study_claims: StudySubject =
        serde_json::from_value(serde_json::Value::clone(&study.subject)).unwrap();

    let mut input = sample_input("clinical");
    input.privilege = Some(CredentialInput::new(
        &privilege,
        PrivilegeFacts::from(&privilege_claims),
    ));
    input.consents = vec![ConsentInput::new(&consent, &consent_claims, false)];
    input.study = Some(CredentialInput::new(
        &study,
        StudyFacts::from(&study_claims),
    ));
    let value = serde_json::to_value(&input).unwrap();
    let errors = schema_errors(&schema("policy-input.schema.json"), &value);
    assert!(errors.is_empty(), "{errors:?}");
    let text = value.to_string();
    for gone in [
        "MRN-4711",
        "patientIdentifiers",
        "Kowalczyk",
        "1234567893",
        "Secret title",
        "IRB-2026-17",
    ] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
    assert_eq!(value["consents"][0]["self_issued"], true);
    assert_eq!(value["consents"][0]["patient_linked"], false);
    assert_eq!(
        value["consents"][0]["subject"]["dataClasses"],
        json!(["Observation"])
    );
    assert_eq!(value["study"]["subject"]["minCellSize"], 11);
    assert_eq!(value["privilege"]["subject"]["specialty"], "207R00000X");
    // The open-ended period has no end, rather than a null one the schema would refuse.
    assert!(value["consents"][0]["subject"]["period"]
        .get("end")
        .is_none());

    // And the policies read it as before: an unlinked self-issued consent grants nothing.
    let holder = holder(&policies_dir());
    let d = holder.evaluate("clinical", &input);
    assert!(!d.allow);
    assert!(
        reasons(&d).contains("has not linked to the patient"),
        "{}",
        reasons(&d)
    );
    input.consents[0].patient_linked = true;
    let d = holder.evaluate("clinical", &input);
    assert!(d.allow, "{}", reasons(&d));
    assert_eq!(d.data_classes, ["Observation"]);
}

/// Typed claims of a presentation: the holder's privilege gives the organization, and a
/// subject that does not read as its type's claims is an error naming only the type (a
/// consent skipped might have been a deny).
#[test]
fn policy_claims_of_a_presentation_are_typed_and_fail_whole() {
    use federation::credentials::ConsentSubject;
    use federation::verify::VerifiedPresentation;
    use federation::CredentialKind;
    let org = "did:web:hospital-a.example";
    let clinician = "did:key:z6MkSampleClinician";
    let privilege = verified(
        CredentialKind::ClinicianPrivilege,
        "did:web:credentialing.example",
        json!({
            "id": clinician, "name": "N", "npi": "1234567893", "role": "nurse",
            "specialty": "163W00000X", "organization": org,
            "privileges": [{"facility": org, "domains": ["clinical"], "actions": ["read"]}],
        }),
    );
    let mut vp = VerifiedPresentation {
        id: None,
        holder: clinician.into(),
        format: Default::default(),
        credentials: vec![privilege],
        checks: Vec::new(),
    };
    assert_eq!(requester_org(&vp).as_deref(), Some(org));
    let own = holder_privilege(&vp).unwrap().unwrap();
    assert_eq!(own.claims.role, "nurse");
    assert!(
        claims_of::<ConsentSubject>(&vp, CredentialKind::PatientConsent)
            .unwrap()
            .is_empty()
    );

    vp.credentials.push(verified(
        CredentialKind::PatientConsent,
        "did:key:z6MkSamplePatient",
        json!({"id": "did:key:z6MkSamplePatient", "provision": "deny", "mrn": "MRN-4711"}),
    ));
    let err = claims_of::<ConsentSubject>(&vp, CredentialKind::PatientConsent).unwrap_err();
    assert_eq!(err, UnreadableClaims(CredentialKind::PatientConsent));
    assert!(!err.to_string().contains("MRN-4711"), "{err}");
    // Somebody else's privilege is not the holder's.
    vp.holder = "did:key:z6MkSomebodyElse".into();
    assert_eq!(holder_privilege(&vp).unwrap().map(|c| c.claims.id), None);
}

/// `policy eval` reads the same type: a document in the gateway's shape round-trips, and
/// a field the gateway never sends is refused rather than silently ignored.
#[test]
fn policy_input_reads_back_and_refuses_unknown_fields() {
    for domain in DOMAINS {
        let input = sample_input(domain);
        let value = serde_json::to_value(&input).unwrap();
        let back: PolicyInput = serde_json::from_value(value).unwrap();
        assert_eq!(back, input);
    }
    let mut value = serde_json::to_value(sample_input("clinical")).unwrap();
    value["consents"][0]["subject"]["patientIdentifiers"] = json!([]);
    assert!(serde_json::from_value::<PolicyInput>(value).is_err());
}

/// Set in the child process of [`policy_unreadable_files_keep_the_last_good_bundle`].
const CHILD_ENV: &str = "FEDGATE_POLICY_TEST_CHILD";

/// Running out of file descriptors (a connection flood) makes the policy files unreadable
/// for a while: the bundle in service must stay, and the edit waiting on disk loads once
/// descriptors are back. The descriptor limit is the whole process's, so the test runs in
/// a process of its own.
#[test]
fn policy_unreadable_files_keep_the_last_good_bundle() {
    let child = "policy::tests::policy_unreadable_files_keep_the_last_good_bundle_in_child";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
}

#[test]
#[ignore = "run in a process of its own by policy_unreadable_files_keep_the_last_good_bundle"]
fn policy_unreadable_files_keep_the_last_good_bundle_in_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "lowers the process's descriptor limit: run it through its parent test"
    );
    let tmp = policy_copy();
    let holder = holder(tmp.path());
    let good = holder.current_digest().expect("copy loads");
    // An operator's edit, waiting to be loaded.
    let path = tmp.path().join("research.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    replace_file(&path, &format!("{src}\n# reviewed\n"));

    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(64, hard).unwrap();
    let mut hog = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => break e,
        }
    };
    let reload = holder.reload();
    let poll = holder.reload_if_changed();
    let digest = holder.current_digest();
    let decision = holder.evaluate("clinical", &sample_input("clinical"));
    drop(hog);

    assert_eq!(exhausted.raw_os_error(), Some(24), "EMFILE: {exhausted}");
    let err = reload.unwrap_err();
    assert!(
        matches!(&err, PolicyError::Io { source, .. } if source.raw_os_error() == Some(24)),
        "{err}"
    );
    assert!(poll.is_none(), "an unreadable folder is no change");
    assert_eq!(
        digest.as_deref(),
        Some(good.as_str()),
        "the bundle in service stays"
    );
    assert!(decision.allow, "{}", reasons(&decision));

    let reloaded = holder
        .reload_if_changed()
        .expect("the edit is still to be loaded")
        .unwrap();
    assert_ne!(reloaded, good);
    assert!(holder.evaluate("research", &sample_input("research")).allow);
}

// ---------------------------------------------------------------------------------------
// The decision cache
// ---------------------------------------------------------------------------------------

/// The same input is decided once; a second later is another input, and a consent that
/// ended in between denies: the cache never carries a decision across a time boundary.
#[test]
fn policy_decisions_are_reused_only_for_the_same_input_and_second() {
    let bundle = PolicyBundle::load_with(&policies_dir(), slow_ok()).unwrap();
    let mut input = sample_input("clinical");
    input.request.time = "2026-11-27T10:00:00Z".into();
    input.consents[0].subject.period.end = Some("2026-11-27T10:00:01Z".into());

    let first = bundle.evaluate("clinical", &input);
    assert!(first.allow, "{}", reasons(&first));
    let again = bundle.evaluate("clinical", &input);
    assert_eq!(again, first);
    let stats = bundle.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));

    input.request.time = "2026-11-27T10:00:01Z".into();
    let later = bundle.evaluate("clinical", &input);
    assert!(!later.allow, "the consent ended: {}", reasons(&later));
    assert_eq!(bundle.cache_stats().misses, 2);

    // Another domain with the same input is another decision.
    let billing = bundle.evaluate("billing", &input);
    assert_eq!(bundle.cache_stats().misses, 3);
    assert_eq!(billing.allow, bundle.evaluate("billing", &input).allow);
    assert_eq!(bundle.cache_stats().hits, 2);
}

/// Any change to what the policy reads is a miss: a withdrawn consent, a revoked patient
/// link, a different requester.
#[test]
fn policy_every_part_of_the_input_is_in_the_cache_key() {
    let bundle = PolicyBundle::load_with(&policies_dir(), slow_ok()).unwrap();
    let base = sample_input("clinical");
    assert!(bundle.evaluate("clinical", &base).allow);
    let mut no_consent = base.clone();
    no_consent.consents.clear();
    assert!(!bundle.evaluate("clinical", &no_consent).allow);
    let mut other = base.clone();
    other.request.requester_org = Some("did:web:other.example".into());
    assert!(!bundle.evaluate("clinical", &other).allow);
    let mut unlinked = base.clone();
    unlinked.consents[0].self_issued = true;
    unlinked.consents[0].patient_linked = false;
    let d = bundle.evaluate("clinical", &unlinked);
    assert!(!d.allow, "{}", reasons(&d));
    assert_eq!(bundle.cache_stats().hits, 0);
    assert!(bundle.evaluate("clinical", &base).allow);
    assert_eq!(bundle.cache_stats().hits, 1);
}

/// A timeout is a deny now and an evaluation again next time: failures are not kept.
#[test]
fn policy_a_failed_evaluation_is_not_remembered() {
    let tmp = looping_bundle();
    let options = PolicyOptions {
        time_limit: Duration::from_millis(5),
        ..PolicyOptions::default()
    };
    let bundle = PolicyBundle::load_with(tmp.path(), options).unwrap();
    let mut input = sample_input("clinical");
    input.request.justification = "loop".into();
    for _ in 0..2 {
        let d = bundle.evaluate("clinical", &input);
        assert!(!d.allow);
        assert!(reasons(&d).contains("time limit"), "{}", reasons(&d));
    }
    let stats = bundle.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (0, 2, 0));
}

/// Adds a clinical denial that always applies to the bundle in `dir`, and reloads it.
fn close_for_maintenance(dir: &Path, holder: &PolicyHolder) {
    let path = dir.join("clinical.rego");
    let src = std::fs::read_to_string(&path).unwrap();
    replace_file(
        &path,
        &format!("{src}\ndenials contains \"closed for maintenance\" if true\n"),
    );
    holder.reload().unwrap();
}

/// A reload is a new bundle with an empty cache: the new policy decides at once.
#[test]
fn policy_a_reload_starts_with_an_empty_cache() {
    let tmp = policy_copy();
    let holder = PolicyHolder::with_options(tmp.path(), slow_ok());
    let input = sample_input("clinical");
    assert!(holder.evaluate("clinical", &input).allow);
    assert!(holder.evaluate("clinical", &input).allow);
    close_for_maintenance(tmp.path(), &holder);
    let d = holder.evaluate("clinical", &input);
    assert!(!d.allow);
    assert!(
        reasons(&d).contains("closed for maintenance"),
        "{}",
        reasons(&d)
    );
}

/// A look-up answers a decision already made at once, as `evaluate` would, digest
/// included; a miss is evaluated by the bundle it was looked up in, even if another was
/// loaded meanwhile (its decision names that bundle); a broken holder denies at once.
#[test]
fn policy_a_look_up_answers_from_the_cache_or_hands_over_the_evaluation() {
    let tmp = policy_copy();
    let holder = PolicyHolder::with_options(tmp.path(), slow_ok());
    let input = sample_input("clinical");
    let first_digest = holder.current_digest().unwrap();
    let Lookup::Evaluate(pending) = holder.look_up("clinical", &input) else {
        panic!("an empty cache cannot answer");
    };
    // Another bundle is loaded before the evaluation runs.
    close_for_maintenance(tmp.path(), &holder);
    assert_ne!(holder.current_digest().unwrap(), first_digest);
    let old = pending.evaluate(&input);
    assert!(old.allow, "{}", reasons(&old));
    assert_eq!(old.policy_digest, first_digest);

    // The new bundle: a miss, then the same decision from its cache.
    let Lookup::Evaluate(pending) = holder.look_up("clinical", &input) else {
        panic!("a new bundle starts with an empty cache");
    };
    let new = pending.evaluate(&input);
    assert!(!new.allow);
    assert!(
        reasons(&new).contains("closed for maintenance"),
        "{}",
        reasons(&new)
    );
    let Lookup::Decided(cached) = holder.look_up("clinical", &input) else {
        panic!("the decision just made is in the cache");
    };
    assert_eq!(cached, new);
    assert_eq!(cached, holder.evaluate("clinical", &input));

    // An unknown domain is a deny without evaluation.
    let Lookup::Decided(unknown) = holder.look_up("dental", &input) else {
        panic!("no evaluation for an unknown domain");
    };
    assert!(!unknown.allow);

    let broken = PolicyHolder::new(Path::new("/nonexistent/fedgate/policies"));
    let Lookup::Decided(d) = broken.look_up("clinical", &input) else {
        panic!("a broken holder evaluates nothing");
    };
    assert!(!d.allow);
    assert!(reasons(&d).contains("failed to load"), "{}", reasons(&d));
}

/// With no cache every decision is evaluated.
#[test]
fn policy_a_cache_of_zero_entries_keeps_nothing() {
    let options = PolicyOptions {
        cache_entries: 0,
        ..slow_ok()
    };
    let bundle = PolicyBundle::load_with(&policies_dir(), options).unwrap();
    let input = sample_input("clinical");
    assert_eq!(
        bundle.evaluate("clinical", &input),
        bundle.evaluate("clinical", &input)
    );
    assert_eq!(bundle.cache_stats().hits, 0);
    assert_eq!(bundle.cache_stats().entries, 0);
}

/// The clock, randomness and the host are refused at load, wherever they are called: a
/// decision must be a function of its input for the cache to be exact.
#[test]
fn policy_impure_builtins_are_refused_at_load() {
    for (call, name) in [
        ("time.now_ns()", "time.now_ns"),
        ("rand.intn(\"x\", 10)", "rand.intn"),
        ("uuid.rfc4122(\"x\")", "uuid.rfc4122"),
        ("opa.runtime()", "opa.runtime"),
    ] {
        let tmp = policy_copy();
        std::fs::write(
            tmp.path().join("zz_impure.rego"),
            format!("package fedgate.zz\n\nhelper := x if {{\n\tx := {call}\n}}\n"),
        )
        .unwrap();
        let err = PolicyBundle::load(tmp.path()).unwrap_err();
        match &err {
            PolicyError::Impure(what) => {
                assert!(what.contains(name), "{what}");
                assert!(what.contains("data.fedgate.zz.helper"), "{what}");
            }
            other => panic!("{call}: expected Impure, got {other}"),
        }
    }
}
