//! `fedgate bench`: a tiny run of each load tool against the federation it starts itself,
//! checking the report's shape and that every request succeeded. The figures themselves
//! are measured on a release build (docs/performance.md); here only the plumbing counts.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FEDGATE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedgate bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_common_shape(report: &Value, scenario: &str, requests: u64) {
    assert_eq!(report["scenario"], scenario, "{report}");
    assert_eq!(report["requests"], requests, "{report}");
    assert_eq!(report["ok"], requests, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
    let l = &report["latency_ms"];
    let (p50, p90, p99, max) = (
        l["p50"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{l}");
    let server = &report["server"];
    assert!(server["pid"].as_u64().unwrap() > 0);
    let peak = server["peak_rss_mb"].as_f64().unwrap();
    assert!(peak > 1.0 && peak >= server["rss_mb"].as_f64().unwrap() - 0.01);
    let floor = &report["floor"];
    assert!(floor["per_request_us"].as_f64().unwrap() > 0.0);
    assert!(floor["ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn exchange_with_two_holders() {
    let report = bench(&["exchange", "--holders", "2", "--requests", "20"]);
    assert_common_shape(&report, "exchange", 20);
    assert_eq!(report["concurrency"], 2);
    // Without --patients, hospital A's fixture patients.
    assert!(report["patients"].as_u64().unwrap() >= 1, "{report}");
    // Each holder asked for its first challenge; every later request answered the one the
    // answer before it offered.
    let c = &report["challenges"];
    let (asked, carried) = (c["asked"].as_u64().unwrap(), c["carried"].as_u64().unwrap());
    assert!((1..=2).contains(&asked), "{c}");
    assert_eq!(asked + carried, 20, "{c}");
    assert!(c["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{c}");
    assert_eq!(report["server"]["name"], "gateway");
    assert!(
        report["floor"]["parts_us"]["ed25519_verify"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        report["floor"]["parts_us"]["clinical_decision"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Every request (and each holder's warm-up) took one decision, evaluated or remembered.
    let d = &report["decisions"];
    let all = d["evaluated"].as_u64().unwrap() + d["from_cache"].as_u64().unwrap();
    assert!(all >= 22, "{d}");
    assert!(d["evaluated"].as_u64().unwrap() >= 1, "{d}");
    let threads = d["on_request_thread"].as_u64().unwrap() + d["on_pool"].as_u64().unwrap();
    assert_eq!(threads, d["evaluated"].as_u64().unwrap(), "{d}");
    // The exchanges as the gateway timed them, from its metrics' summary of the route.
    let sl = &report["server_latency_ms"];
    let (s50, s99) = (sl["p50"].as_f64().unwrap(), sl["p99"].as_f64().unwrap());
    assert!(0.0 < s50 && s50 <= s99, "{sl}");
    // A decision's time as the gateway made it, from its metrics' summary.
    let (p50, p99) = (d["p50_us"].as_f64().unwrap(), d["p99_us"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{d}");
    // The warm-up made each holder's page (reading the record from the store); the
    // measured requests were served the page kept (a page is made again, once per holder,
    // if the day changes during the run).
    let a = &report["answers"];
    let (made, kept) = (a["made"].as_u64().unwrap(), a["kept"].as_u64().unwrap());
    assert!(made >= 1 && made + kept >= 22, "{a}");
    assert!(kept >= 18, "{a}");
    assert!(report["records"]["read"].as_u64().unwrap() >= 1, "{report}");
    // Counted over the measured requests: each records its access event and, in the same
    // write, its challenge's use (the shipper's claims and settlements add writes of their
    // own, as time passes); commits carry one or more writes each.
    let st = &report["storage"];
    let (commits, writes) = (
        st["commits"].as_u64().unwrap(),
        st["writes"].as_u64().unwrap(),
    );
    assert!(writes >= 20, "{st}");
    // Both figures come from one metrics page, but a commit's two histograms are recorded
    // one after the other, so a page may hold the one and not yet the other.
    assert!(commits >= 1 && commits <= writes + 1, "{st}");
    assert!(st["writes_per_request"].as_f64().unwrap() >= 1.0, "{st}");
}

#[test]
fn exchange_without_caches_evaluates_every_decision_and_reads_every_record_and_asks_every_challenge(
) {
    let report = bench(&[
        "exchange",
        "--holders",
        "2",
        "--requests",
        "20",
        "--decision-cache",
        "0",
        "--records-cache-mb",
        "0",
        "--answers-cache-mb",
        "0",
        "--challenge-per-request",
    ]);
    assert_common_shape(&report, "exchange", 20);
    let c = &report["challenges"];
    assert_eq!(c["asked"], 20, "{c}");
    assert_eq!(c["carried"], 0, "{c}");
    let d = &report["decisions"];
    assert_eq!(d["from_cache"], 0, "{d}");
    let evaluated = d["evaluated"].as_u64().unwrap();
    assert!(evaluated >= 22, "{d}");
    // Every evaluation ran somewhere: on the request's thread, or on the blocking pool
    // when it outran the inline limit (a debug build on a busy machine can).
    let (here, pool) = (
        d["on_request_thread"].as_u64().unwrap(),
        d["on_pool"].as_u64().unwrap(),
    );
    assert_eq!(here + pool, evaluated, "{d}");
    // A gateway that keeps no records or pages counts none kept or read from its store.
    assert!(report.get("records").is_none(), "{report}");
    assert!(report.get("answers").is_none(), "{report}");
}

#[test]
fn exchange_without_kept_pages_copies_the_records_kept_parsed() {
    let report = bench(&[
        "exchange",
        "--holders",
        "2",
        "--requests",
        "20",
        "--answers-cache-mb",
        "0",
    ]);
    assert_common_shape(&report, "exchange", 20);
    // Every page was made: the warm-up read each holder's record from the store, the
    // measured requests copied it from those kept parsed.
    assert!(report.get("answers").is_none(), "{report}");
    let r = &report["records"];
    assert!(r["read"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["kept"].as_u64().unwrap() >= 20, "{r}");
}

#[test]
fn exchange_over_many_synthetic_patients_asks_for_each_in_turn() {
    let report = bench(&[
        "exchange",
        "--holders",
        "2",
        "--requests",
        "20",
        "--patients",
        "8",
    ]);
    assert_common_shape(&report, "exchange", 20);
    assert_eq!(report["patients"], 8, "{report}");
    // Each holder asks for its four patients in turn (ten requests each after its
    // warm-up), so every patient's page was made, each record read from the store once.
    let a = &report["answers"];
    let (made, kept) = (a["made"].as_u64().unwrap(), a["kept"].as_u64().unwrap());
    assert!(made >= 8, "{a}");
    assert!(made + kept >= 22, "{a}");
    assert!(report["records"]["read"].as_u64().unwrap() >= 8, "{report}");
}

#[test]
fn exchange_across_two_replicas_on_postgres() {
    // Every request takes its challenge from one replica and is answered by the other.
    let report = bench(&[
        "exchange",
        "--holders",
        "2",
        "--requests",
        "20",
        "--postgres",
        "--replicas",
        "2",
    ]);
    assert_common_shape(&report, "exchange", 20);
}

#[test]
fn ingest_into_a_log_on_postgres() {
    let report = bench(&[
        "ingest",
        "--senders",
        "2",
        "--requests",
        "4",
        "--batch",
        "50",
        "--postgres",
    ]);
    assert_common_shape(&report, "ingest", 4);
    assert_eq!(report["ingest"]["tree_size"], 250);
}

#[test]
fn research_with_two_networks() {
    let report = bench(&["research", "--holders", "2", "--requests", "6"]);
    assert_common_shape(&report, "research", 6);
    assert!(
        report["floor"]["parts_us"]["research_decision"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn ingest_of_signed_batches() {
    let report = bench(&[
        "ingest",
        "--senders",
        "2",
        "--requests",
        "4",
        "--batch",
        "50",
    ]);
    assert_common_shape(&report, "ingest", 4);
    let ingest = &report["ingest"];
    assert_eq!(ingest["events_appended"], 200);
    // The warm-up batch came first: 50 more leaves than the measured ones.
    assert_eq!(ingest["tree_size"], 250);
    assert!(ingest["checkpoints"].as_u64().unwrap() >= 1);
    assert_eq!(report["server"]["name"], "visibility");
}

#[test]
fn revocation_is_timed_until_the_first_deny() {
    let report = bench(&["revocation", "--samples", "2"]);
    assert_eq!(report["scenario"], "revocation", "{report}");
    assert_eq!(report["samples"], 2);
    let l = &report["revocation_to_deny_ms"];
    assert!(l["p50"].as_f64().unwrap() > 0.0 && l["p50"].as_f64() <= l["max"].as_f64());
    assert!(report["one_request_ms"]["p50"].as_f64().unwrap() > 0.0);
}

/// The same patient's exchanges timed with the records on a real FHIR server and in the
/// embedded store: both answer the same resources.
#[test]
fn fhir_source_against_the_embedded_store() {
    let fhir = test_support::fhir_server::FhirServer::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    let report = bench(&[
        "fhir-source",
        "--fhir-url",
        &fhir.base,
        "--resources",
        "300",
        "--exchanges",
        "2",
    ]);
    assert_eq!(report["scenario"], "fhir-source", "{report}");
    assert!(
        report["record_resources"].as_u64().unwrap() >= 300,
        "{report}"
    );
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert!(sources[0]["resources_per_answer"].as_u64().unwrap() > 50);
    assert_eq!(
        sources[0]["resources_per_answer"],
        sources[1]["resources_per_answer"]
    );
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        vec!["exchange", "--holders", "0"],
        vec!["exchange", "--format", "paper"],
        vec!["exchange", "--data-classes", "patient"],
        vec!["exchange", "--gateway", "http://127.0.0.1:9/"],
        vec!["exchange", "--replicas", "2"],
        vec!["exchange", "--postgres", "--replicas", "9"],
        vec!["ingest", "--batch", "1001"],
        vec!["ingest", "--visibility", "http://127.0.0.1:9/"],
        vec!["revocation", "--samples", "0"],
        vec!["memory", "--exchanges", "0"],
        vec!["memory", "--synth-patients", "0"],
        vec!["memory", "--idle", "NaN"],
        vec!["memory", "--data-classes", "patient"],
        vec!["fhir-source", "--fhir-url", "not a url"],
        vec![
            "fhir-source",
            "--fhir-url",
            "http://127.0.0.1:9",
            "--exchanges",
            "0",
        ],
        vec!["fhir-source", "--fhir-url", "http://127.0.0.1:9"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .arg("bench")
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("fedgate: "), "{args:?}: {err}");
    }
}
