//! The auditor API behind the dashboard, on a realistic log (hundreds of events of two
//! custodians over four months, a real `fedgate visibility serve`): every filter, cursor
//! paging, one leaf with its proof, the exports (FHIR, CSV, evidence package verified
//! offline by `fedgate visibility verify-evidence`, and refused once tampered with), the
//! review queue and its decisions, the chart figures, and clean 4xx for bad input.

mod support;

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use chrono::{Duration, Utc};
use federation::checkpoint::{self, NoteVerifier};
use federation::events::Outcome;
use federation::log::{leaf_hash, verify_inclusion, Hash};
use fedgate::harness::events::{patient_digest, STUDY};
use serde_json::Value;
use support::audit::{
    all_pages, assert_clean_problem, client, expected, start, AuditLog, HOSPITAL_A, REVIEW_HOURS,
};
use support::AUDITOR_ORG;

const COUNT: usize = 640;

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The most frequent patient reference at hospital A.
fn busiest_patient(log: &AuditLog) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in log.logged() {
        if e.custodian == HOSPITAL_A {
            if let Some(r) = &e.patient_ref {
                *counts.entry(r.as_str()).or_default() += 1;
            }
        }
    }
    let (r, _) = counts.into_iter().max_by_key(|(r, n)| (*n, *r)).unwrap();
    r.to_string()
}

async fn filters_and_paging(log: &AuditLog) {
    // Paging through everything, 37 a page: every event once, newest leaf first.
    let (ids, pages) = all_pages(log, "", 37).await;
    assert_eq!(ids.len(), COUNT);
    assert_eq!(pages, COUNT.div_ceil(37));
    assert_eq!(ids, expected(log, |_| true));

    // By failing check.
    for check in ["proof", "challenge", "status"] {
        let (ids, _) = all_pages(log, &format!("failed_check={check}"), 25).await;
        let want = expected(log, |e| e.failed_check.as_deref() == Some(check));
        assert!(!want.is_empty(), "the generated log has {check} failures");
        assert_eq!(ids, want, "failed_check={check}");
    }
    // By patient: reference, and DID digest.
    let patient = busiest_patient(log);
    let want = expected(log, |e| e.patient_ref.as_deref() == Some(patient.as_str()));
    assert!(
        want.len() >= 4,
        "the busiest patient has {} events",
        want.len()
    );
    // Pages of a third of them: more than one page for the patient.
    let (ids, _) = all_pages(log, &format!("patient_ref={patient}"), want.len() / 3).await;
    assert_eq!(ids, want);
    let digest = patient_digest(3);
    let (ids, _) = all_pages(log, &format!("patient_did_digest={digest}"), 100).await;
    assert_eq!(
        ids,
        expected(log, |e| e.patient_did_digests.contains(&digest))
    );
    // Several filters at once.
    let org = "did:web:clinic-c.test";
    let q = format!("requester_org={org}&purpose=TREAT&domain=clinical&decision=allow");
    let (ids, _) = all_pages(log, &q, 50).await;
    let want = expected(log, |e| {
        e.requester_org.as_deref() == Some(org)
            && e.purpose == "TREAT"
            && e.domain == "clinical"
            && e.decision == Outcome::Allow
    });
    assert!(!want.is_empty());
    assert_eq!(ids, want);
    // Break-glass, and its review state (nothing resolved yet: overdue or pending).
    let deadline = Utc::now() - Duration::hours(REVIEW_HOURS);
    let (ids, _) = all_pages(log, "break_glass=true&review=overdue", 50).await;
    let overdue = expected(log, |e| e.break_glass && e.time < deadline);
    assert!(!overdue.is_empty());
    assert_eq!(set(&ids), set(&overdue));
    let (ids, _) = all_pages(log, "review=resolved", 50).await;
    assert!(ids.is_empty());
    let (ids, _) = all_pages(
        log,
        "break_glass=false&custodian=did:web:hospital-b.test",
        80,
    )
    .await;
    assert_eq!(
        ids,
        expected(log, |e| !e.break_glass
            && e.custodian == "did:web:hospital-b.test")
    );
    // A time range.
    let (from, to) = (
        Utc::now() - Duration::days(60),
        Utc::now() - Duration::days(30),
    );
    let q = format!("from={}&to={}", rfc3339(from), rfc3339(to));
    let (ids, _) = all_pages(log, &q, 100).await;
    let want = expected(log, |e| e.time >= from && e.time <= to);
    assert!(!want.is_empty());
    assert_eq!(ids, want);
}

async fn bad_input_is_a_clean_4xx(log: &AuditLog) {
    // A cursor from a real answer, then forged ones.
    let (_, page) = log.get("/v1/audit/events?decision=deny&limit=5").await;
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let (leaf, tag) = cursor.split_once('.').unwrap();
    let bumped = format!("{}.{tag}", leaf.parse::<u64>().unwrap() + 100);
    for forged in [
        format!("decision=deny&cursor={bumped}"),
        format!("decision=allow&cursor={cursor}"),
        "cursor=42".to_string(),
        "cursor=x.y".to_string(),
        format!("cursor={cursor}&before=3"),
    ] {
        let (status, body) = log.get(&format!("/v1/audit/events?{forged}")).await;
        assert_clean_problem(status, &body, 400);
    }
    let (status, _) = log
        .get(&format!(
            "/v1/audit/events?decision=deny&limit=5&cursor={cursor}"
        ))
        .await;
    assert_eq!(status, 200, "the genuine cursor pages on");
    let huge = "from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z";
    let long = format!("custodian={}", "a".repeat(2000));
    for bad in [
        "purpose=GOSSIP",
        "domain=payroll",
        "failed_check=vibes",
        "break_glass=maybe",
        "review=someday",
        "decision=maybe",
        "limit=100000",
        "limit=-1",
        "before=-1",
        "patient_did_digest=NOTHEX",
        "from=yesterday",
        "from=2026-03-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        huge,
        long.as_str(),
        "unknown=1",
    ] {
        for path in [
            "/v1/audit/events",
            "/v1/audit/export",
            "/v1/audit/export/csv",
            "/v1/audit/evidence",
        ] {
            let (status, body) = log.get(&format!("{path}?{bad}")).await;
            assert_clean_problem(status, &body, 400);
        }
    }
    for bad in [
        "from=2026-01-01T00:00:00Z&to=2026-01-01T00:10:00Z",
        huge,
        "bucket=minute",
        "from=soon",
    ] {
        let (status, body) = log.get(&format!("/v1/audit/stats?{bad}")).await;
        assert_clean_problem(status, &body, 400);
    }
    let (status, body) = log.get("/v1/audit/reviews?overdue=perhaps").await;
    assert_clean_problem(status, &body, 400);
    for bad in ["abc", "-1", "99999999999999999999999"] {
        let (status, body) = log.get(&format!("/v1/audit/leaves/{bad}")).await;
        assert_clean_problem(status, &body, 400);
    }
    let (status, body) = log.get("/v1/audit/leaves/1000000").await;
    assert_clean_problem(status, &body, 404);
    // An evidence package covers one patient or one time range.
    let (status, body) = log.get("/v1/audit/evidence?decision=deny").await;
    assert_clean_problem(status, &body, 400);

    // Tokens of another role, or none: the session endpoints refuse, nothing is read.
    let (status, body) = log.session("physician", AUDITOR_ORG).await;
    assert_clean_problem(status, &body, 403);
    let (status, body) = log.session("auditor", "did:web:hospital-b.test").await;
    assert_clean_problem(status, &body, 403);
    let vkey = log.vkey().await;
    for path in [
        "/v1/audit/events",
        "/v1/audit/leaves/0",
        "/v1/audit/export/csv",
        "/v1/audit/evidence?patient_ref=x",
        "/v1/audit/stats",
        "/v1/audit/reviews",
        "/v1/audit/reviews/decisions",
    ] {
        for token in [None, Some("not-a-session"), Some(vkey.as_str())] {
            let (status, body) = log.get_as(token, path).await;
            assert_clean_problem(status, &body, 401);
        }
    }
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect()
}

async fn one_leaf_with_its_proof(log: &AuditLog) {
    let verifier = NoteVerifier::parse_vkey(&log.vkey().await).unwrap();
    for index in [0u64, 1, 317, COUNT as u64 - 1] {
        let (status, d) = log.get(&format!("/v1/audit/leaves/{index}")).await;
        assert_eq!(status, 200, "{d}");
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(d["leaf"].as_str().unwrap())
            .unwrap();
        let cp = checkpoint::open(
            d["checkpoint"].as_str().unwrap(),
            std::slice::from_ref(&verifier),
        )
        .unwrap();
        assert_eq!(cp.size, d["treeSize"].as_u64().unwrap());
        verify_inclusion(
            &leaf_hash(&leaf),
            index,
            cp.size,
            &hashes(&d["proof"]),
            &cp.root,
        )
        .unwrap();
        let entry: Value = serde_json::from_slice(&leaf).unwrap();
        assert_eq!(entry, d["entry"]);
        assert_eq!(
            entry["event"]["id"],
            log.logged()[index as usize].id.as_str()
        );
    }
}

async fn exports(log: &AuditLog) {
    // FHIR, same filters.
    let want = expected(log, |e| e.failed_check.as_deref() == Some("proof"));
    let res = client()
        .get(log.url("/v1/audit/export?failed_check=proof&limit=1000"))
        .bearer_auth(&log.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/fhir+json");
    let bundle: Value = res.json().await.unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), want.len());
    for (entry, id) in entries.iter().zip(&want) {
        assert_eq!(entry["resource"]["id"], id.as_str());
        assert_eq!(entry["resource"]["outcome"], "4");
        assert!(entry["resource"]["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("failed check: proof"));
    }
    // The FHIR Bundle pages by cursor when asked to.
    let (status, body) = log
        .get("/v1/audit/export?decision=deny&limit=3&cursor=")
        .await;
    assert_clean_problem(status, &body, 400);
    let (status, page) = log
        .get("/v1/audit/export?decision=deny&limit=3&cursor=0.00")
        .await;
    assert_clean_problem(status, &page, 400);

    // CSV.
    let res = client()
        .get(log.url("/v1/audit/export/csv?failed_check=proof"))
        .bearer_auth(&log.token)
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("leafIndex,time,custodian,requesterOrg"));
    assert_eq!(lines.len(), want.len() + 1);
    assert!(lines[1..].iter().all(|l| l.contains(",deny,proof,")));

    // The evidence package for one patient: verified offline, refused once tampered with.
    let patient = busiest_patient(log);
    let res = client()
        .get(log.url(&format!("/v1/audit/evidence?patient_ref={patient}")))
        .bearer_auth(&log.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap().to_vec();
    let vkey = log.vkey().await;
    let verified = visibility::evidence::verify(&bytes, Some(&vkey)).unwrap();
    let want = expected(log, |e| e.patient_ref.as_deref() == Some(patient.as_str()));
    assert_eq!(verified.accesses, want.len());
    assert!(verified.complete && verified.pinned);
    assert_eq!(verified.log, support::VISIBILITY);
    let file = log.dir.path().join("evidence.json");
    std::fs::write(&file, &bytes).unwrap();
    let out = support::fedgate()
        .args(["visibility", "verify-evidence"])
        .arg(&file)
        .args(["--key", &vkey])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} access event(s)", want.len())),
        "{stdout}"
    );

    // Tampering: an event changed inside the signed package, the readable entry alone, a
    // proof hash, another key pinned.
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let package = doc["package"].as_str().unwrap();
    let mut tampered = Vec::new();
    let swapped = package.replacen("\"purpose\":\"TREAT\"", "\"purpose\":\"HPAYMT\"", 1);
    assert_ne!(swapped, package);
    let mut t = doc.clone();
    t["package"] = Value::String(swapped);
    tampered.push(("an event's purpose", t));
    let mut p: Value = serde_json::from_str(package).unwrap();
    let flipped = if p["entries"][0]["entry"]["event"]["decision"] == "deny" {
        "allow"
    } else {
        "deny"
    };
    p["entries"][0]["entry"]["event"]["decision"] = Value::String(flipped.into());
    let mut t = doc.clone();
    t["package"] = Value::String(p.to_string());
    tampered.push(("a readable entry", t));
    let mut t = doc.clone();
    t["signature"] = Value::String(base64::engine::general_purpose::STANDARD.encode([7u8; 64]));
    tampered.push(("the signature", t));
    for (what, t) in tampered {
        let bytes = serde_json::to_vec(&t).unwrap();
        assert!(
            visibility::evidence::verify(&bytes, None).is_err(),
            "{what} changed and still verified"
        );
        std::fs::write(&file, &bytes).unwrap();
        let out = support::fedgate()
            .args(["visibility", "verify-evidence"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{what} changed and the CLI verified it"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("NOT VERIFIED"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let other = "did:web:other.test+01020304+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(visibility::evidence::verify(&bytes, Some(other)).is_err());

    // A time range package.
    let (from, to) = (Utc::now() - Duration::days(10), Utc::now());
    let res = client()
        .get(log.url(&format!(
            "/v1/audit/evidence?from={}&to={}",
            rfc3339(from),
            rfc3339(to)
        )))
        .bearer_auth(&log.token)
        .send()
        .await
        .unwrap();
    let bytes = res.bytes().await.unwrap();
    let verified = visibility::evidence::verify(&bytes, Some(&vkey)).unwrap();
    assert_eq!(
        verified.accesses,
        expected(log, |e| e.time >= from && e.time <= to).len()
    );
}

async fn reviews_and_their_decisions(log: &AuditLog) {
    let deadline = Utc::now() - Duration::hours(REVIEW_HOURS);
    let (status, body) = log.get("/v1/audit/reviews?overdue=true").await;
    assert_eq!(status, 200);
    let overdue = body["reviews"].as_array().unwrap().clone();
    assert_eq!(
        overdue.len(),
        log.logged()
            .iter()
            .filter(|e| e.break_glass && e.time < deadline)
            .count()
    );
    assert!(overdue
        .iter()
        .all(|r| r["overdue"] == true && r["review"] == "overdue"));
    let (_, body) = log
        .get(&format!(
            "/v1/audit/reviews?custodian={HOSPITAL_A}&overdue=false"
        ))
        .await;
    assert!(body["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["overdue"] == false && r["event"]["custodian"] == HOSPITAL_A));
    let target = overdue[0]["event"]["id"].as_str().unwrap().to_string();
    let res = client()
        .post(log.url(&format!("/v1/audit/reviews/{target}/resolve")))
        .bearer_auth(&log.token)
        .json(&serde_json::json!({"note": "confirmed with the attending: ED admission, justified"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, body) = log.get("/v1/audit/reviews?overdue=true").await;
    assert_eq!(body["reviews"].as_array().unwrap().len(), overdue.len() - 1);
    let (ids, _) = all_pages(log, "review=resolved", 50).await;
    assert_eq!(ids, vec![target.clone()]);
    let res = client()
        .get(log.url("/v1/audit/reviews/decisions"))
        .bearer_auth(&log.token)
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("review-decisions.csv"));
    let csv = res.text().await.unwrap();
    let event = log.logged().iter().find(|e| e.id == target).unwrap();
    let row = csv.lines().find(|l| l.starts_with(&target)).unwrap();
    assert!(row.contains(&event.custodian), "{row}");
    assert!(
        row.contains("\"confirmed with the attending: ED admission, justified\""),
        "{row}"
    );
}

async fn chart_figures(log: &AuditLog) {
    let (from, to) = (Utc::now() - Duration::days(125), Utc::now());
    let (status, s) = log
        .get(&format!(
            "/v1/audit/stats?from={}&to={}",
            rfc3339(from),
            rfc3339(to)
        ))
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["bucket"], "week");
    assert_eq!(s["counted"], COUNT as u64);
    let sum = |v: &Value| -> u64 {
        v.as_object()
            .unwrap()
            .values()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum()
    };
    assert_eq!(sum(&s["byCustodian"]), COUNT as u64);
    assert_eq!(sum(&s["byDecision"]), COUNT as u64);
    let proof = log
        .logged()
        .iter()
        .filter(|e| e.failed_check.as_deref() == Some("proof"))
        .count() as u64;
    assert_eq!(s["denialsByCheck"]["proof"], proof);
    let glass: u64 = s["breakGlassWeekly"]["count"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        glass,
        log.logged().iter().filter(|e| e.break_glass).count() as u64
    );
    assert!(s["topRequesterOrgs"].as_array().unwrap().len() >= 3);
    assert_eq!(s["privacy"][0]["study"], STUDY);
    // An hour, and a day by the hour.
    let (status, s) = log
        .get("/v1/audit/stats?bucket=hour&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["buckets"].as_array().unwrap().len(), 25);
}

#[tokio::test]
async fn auditors_search_page_export_and_review_a_realistic_log() {
    let log = start(COUNT, 19).await;
    filters_and_paging(&log).await;
    bad_input_is_a_clean_4xx(&log).await;
    one_leaf_with_its_proof(&log).await;
    exports(&log).await;
    chart_figures(&log).await;
    reviews_and_their_decisions(&log).await;
    // The service logged requests at debug level; the session token is in none of it.
    let logged = std::fs::read_to_string(&log.log_file).unwrap();
    assert!(!logged.is_empty());
    assert!(
        !logged.contains(&log.token),
        "the session token reached the log"
    );
}
