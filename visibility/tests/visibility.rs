//! The visibility service in-process on loopback: signed batches, receipts and proofs,
//! refusals, restarts, auditor sessions and reviews, patients' history.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use chrono::Utc;
use federation::checkpoint::{self, Checkpoint, NoteVerifier};
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::events::{patient_did_digest, AccessEvent, Outcome};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::log::{self, Hash};
use federation::registry::{Governance, Manifest, Member, Role, SignedManifest};
use federation::wire::{leaf_bytes, LogEntry};
use serde_json::{json, Value};
use test_support::*;
use tokio::sync::oneshot;
use visibility::VisibilityConfig;

const SERVICE_DID: &str = "did:web:visibility.test";
const AUDITOR_ORG: &str = "did:web:auditor.test";

struct Orgs {
    a: Office,
    b: Office,
    office: Office,
    stranger: Office,
}

async fn orgs() -> Orgs {
    Orgs {
        a: start_office("hospital-a.test").await,
        b: start_office("hospital-b.test").await,
        office: start_office("credentialing.test").await,
        stranger: start_office("stranger.test").await,
    }
}

fn static_config(dir: &Path, orgs: &Orgs) -> VisibilityConfig {
    let mut members = BTreeMap::new();
    for o in [&orgs.a, &orgs.b, &orgs.office] {
        members.insert(o.key.did().to_string(), o.base.to_string());
    }
    let text = format!(
        r#"
listen = "127.0.0.1:0"
did = "{SERVICE_DID}"
key_file = "visibility.key.json"
data_dir = "data"
dev_mode = true
checkpoint_interval_ms = 100
auditors = ["{AUDITOR_ORG}"]
[trust]
ClinicianPrivilegeCredential = ["{}"]
"#,
        orgs.office.key.did()
    );
    let mut cfg = VisibilityConfig::from_toml(&text).unwrap();
    cfg.members = members;
    cfg.resolve_paths(dir);
    cfg.validate("visibility.toml").unwrap();
    cfg
}

struct Service {
    base: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), visibility::RunError>>,
}

impl Service {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn start(cfg: VisibilityConfig) -> Service {
    let (ready_tx, ready_rx) = oneshot::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(visibility::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let Ok(addr) = ready_rx.await else {
        panic!("the service did not start: {:?}", task.await)
    };
    Service {
        base: format!("http://{addr}"),
        stop: stop_tx,
        task,
    }
}

fn client() -> reqwest::Client {
    federation::client::http_client()
}

fn event(custodian: &str) -> AccessEvent {
    AccessEvent {
        requester_org: Some(HOSPITAL_A.to_string()),
        requester: Some("did:key:z6MkrequesterRequesterRequester".to_string()),
        data_classes: vec!["Observation".into()],
        record_count: 3,
        decision_id: uuid::Uuid::new_v4().to_string(),
        reasons: vec!["consent permits TREAT for Observation".into()],
        policy_digest: "0".repeat(64),
        ..test_support::allowed_event(custodian)
    }
}

fn sign_batch(key: &KeyPair, custodian: &str, events: &[AccessEvent]) -> String {
    federation::jose::sign(
        &json!({"custodian": custodian, "events": events}),
        key,
        "fedgate-batch+jwt",
    )
    .unwrap()
}

async fn post_batch(base: &str, jws: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/batches"))
        .json(&json!({ "batch": jws }))
        .send()
        .await
        .unwrap()
}

async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], service::http::PROBLEM_JSON);
    resp.json().await.unwrap()
}

/// The checkpoint verifier as any peer builds it: from the service's DID document.
async fn note_verifier(base: &str) -> NoteVerifier {
    let doc: Value = ok_json(
        client()
            .get(format!("{base}/.well-known/did.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(doc["id"], SERVICE_DID);
    let mb = doc["verificationMethod"][0]["publicKeyMultibase"]
        .as_str()
        .unwrap();
    let (_, bytes) = multibase::decode(mb).unwrap();
    // Multicodec 0xed01: Ed25519 public key.
    assert_eq!(&bytes[..2], &[0xed, 0x01]);
    NoteVerifier::new(SERVICE_DID, bytes[2..].try_into().unwrap()).unwrap()
}

async fn current_checkpoint(base: &str, verifier: &NoteVerifier) -> Checkpoint {
    let resp = client()
        .get(format!("{base}/v1/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    checkpoint::open(&resp.text().await.unwrap(), std::slice::from_ref(verifier)).unwrap()
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

async fn assert_included(base: &str, entry: &LogEntry, index: u64, cp: &Checkpoint) {
    let v = ok_json(
        client()
            .get(format!(
                "{base}/v1/proofs/inclusion?index={index}&size={}",
                cp.size
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["index"], index);
    assert_eq!(v["size"], cp.size);
    log::verify_inclusion(
        &log::leaf_hash(&leaf_bytes(entry)),
        index,
        cp.size,
        &hashes(&v["proof"]),
        &cp.root,
    )
    .unwrap_or_else(|e| panic!("leaf {index} in size {}: {e}", cp.size));
}

fn access(event: &AccessEvent) -> LogEntry {
    LogEntry::Access {
        event: event.clone(),
    }
}

/// Posts a batch that must be accepted; returns the response and the checkpoint in it.
async fn accepted(
    base: &str,
    key: &KeyPair,
    events: &[AccessEvent],
    verifier: &NoteVerifier,
) -> (Value, Checkpoint) {
    let body = ok_json(post_batch(base, &sign_batch(key, key.did(), events)).await).await;
    let cp = checkpoint::open(
        body["checkpoint"].as_str().unwrap(),
        std::slice::from_ref(verifier),
    )
    .unwrap();
    assert_eq!(cp.origin, SERVICE_DID);
    assert_eq!(body["treeSize"], cp.size);
    (body, cp)
}

#[tokio::test]
async fn visibility_receipts_verify_against_the_signed_checkpoint_and_events_are_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let svc = start(static_config(dir.path(), &orgs)).await;
    let verifier = note_verifier(&svc.base).await;
    let empty = current_checkpoint(&svc.base, &verifier).await;
    assert_eq!((empty.size, empty.root), (0, log::empty_root()));

    let events: Vec<AccessEvent> = (0..3).map(|_| event(orgs.a.key.did())).collect();
    let jws = sign_batch(&orgs.a.key, orgs.a.key.did(), &events);
    let body = ok_json(post_batch(&svc.base, &jws).await).await;
    let cp = checkpoint::open(
        body["checkpoint"].as_str().unwrap(),
        std::slice::from_ref(&verifier),
    )
    .unwrap();
    assert_eq!(cp.size, 3);
    assert_eq!(body["treeSize"], 3);
    let receipts = body["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 3);
    for (i, (r, e)) in receipts.iter().zip(&events).enumerate() {
        assert_eq!(r["eventId"], e.id.as_str());
        assert_eq!(r["leafIndex"], i as u64);
        assert_eq!(r["duplicate"], false);
        assert_included(&svc.base, &access(e), i as u64, &cp).await;
    }
    // The checkpoint endpoint serves the same note.
    assert_eq!(current_checkpoint(&svc.base, &verifier).await, cp);

    // The same batch again: all duplicates, nothing appended.
    let again = ok_json(post_batch(&svc.base, &jws).await).await;
    assert_eq!(again["treeSize"], 3);
    for (i, r) in again["receipts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["leafIndex"], i as u64);
        assert_eq!(r["duplicate"], true);
    }
    // A batch mixing a logged event, a new one and a repeat of the new one.
    let fresh = event(orgs.a.key.did());
    let mixed = vec![events[1].clone(), fresh.clone(), fresh.clone()];
    let (body, cp) = accepted(&svc.base, &orgs.a.key, &mixed, &verifier).await;
    let indexes: Vec<(u64, bool)> = body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["leafIndex"].as_u64().unwrap(),
                r["duplicate"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(indexes, vec![(1, true), (3, false), (3, true)]);
    assert_eq!(cp.size, 4);
    assert_included(&svc.base, &access(&fresh), 3, &cp).await;

    // The same id with other content is a conflict, and nothing is appended.
    let mut altered = events[0].clone();
    altered.purpose = "HPAYMT".into();
    let resp = post_batch(
        &svc.base,
        &sign_batch(
            &orgs.a.key,
            orgs.a.key.did(),
            &[event(orgs.a.key.did()), altered.clone()],
        ),
    )
    .await;
    problem(resp, 409).await;
    assert_eq!(current_checkpoint(&svc.base, &verifier).await.size, 4);

    // Ids are per custodian: B may use an id A used.
    let mut same_id = event(orgs.b.key.did());
    same_id.id = events[0].id.clone();
    let (body, _) = accepted(&svc.base, &orgs.b.key, &[same_id], &verifier).await;
    assert_eq!(body["receipts"][0]["leafIndex"], 4);
    assert_eq!(body["receipts"][0]["duplicate"], false);

    // Receipts by leaf hash, for events that came by another path: found only with the
    // exact content, a different leaf is a conflict, unknown ids are left out.
    let leaf_hex = |e: &AccessEvent| hex::encode(log::leaf_hash(&leaf_bytes(&access(e))));
    let receipts_of = |body: Value| {
        let base = svc.base.clone();
        async move {
            client()
                .post(format!("{base}/v1/receipts"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let unknown = event(orgs.a.key.did());
    let body = ok_json(
        receipts_of(json!({"custodian": orgs.a.key.did(), "events": [
            {"id": events[2].id, "leafHash": leaf_hex(&events[2])},
            {"id": events[0].id, "leafHash": leaf_hex(&altered)},
            {"id": unknown.id, "leafHash": leaf_hex(&unknown)},
        ]}))
        .await,
    )
    .await;
    assert_eq!(body["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(body["receipts"][0]["eventId"], events[2].id.as_str());
    assert_eq!(body["receipts"][0]["leafIndex"], 2);
    assert_eq!(body["conflicts"], json!([events[0].id]));
    let cp = checkpoint::open(
        body["checkpoint"].as_str().unwrap(),
        std::slice::from_ref(&verifier),
    )
    .unwrap();
    assert_eq!(body["treeSize"], cp.size);
    assert_included(&svc.base, &access(&events[2]), 2, &cp).await;
    // Another custodian's view of the same id finds B's event, not A's.
    let body = ok_json(
        receipts_of(json!({"custodian": orgs.b.key.did(), "events": [
            {"id": events[2].id, "leafHash": leaf_hex(&events[2])},
        ]}))
        .await,
    )
    .await;
    assert_eq!(body["receipts"], json!([]));
    // Bad requests: a malformed hash, unknown fields, too many at once.
    let bad = receipts_of(json!({"custodian": orgs.a.key.did(), "events": [
        {"id": events[2].id, "leafHash": "xyz"},
    ]}))
    .await;
    problem(bad, 422).await;
    let bad = receipts_of(json!({"custodian": orgs.a.key.did(), "events": [], "extra": 1})).await;
    assert!(bad.status().is_client_error());
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("e{i}"), "leafHash": leaf_hex(&events[0])}))
        .collect();
    problem(
        receipts_of(json!({"custodian": orgs.a.key.did(), "events": many})).await,
        413,
    )
    .await;
    assert_eq!(current_checkpoint(&svc.base, &verifier).await.size, 5);

    let keys = ok_json(
        client()
            .get(format!("{}/v1/keys", svc.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(keys["keys"][0]["did"], SERVICE_DID);
    assert_eq!(keys["checkpointVerifierKey"], verifier.vkey());
    svc.stop().await;
}

#[tokio::test]
async fn visibility_refused_batches_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let svc = start(static_config(dir.path(), &orgs)).await;
    let verifier = note_verifier(&svc.base).await;
    let a = orgs.a.key.did();
    let b = orgs.b.key.did();
    accepted(&svc.base, &orgs.a.key, &[event(a)], &verifier).await;

    // An event whose custodian is another organization.
    let jws = sign_batch(&orgs.a.key, a, &[event(a), event(b)]);
    let p = problem(post_batch(&svc.base, &jws).await, 403).await;
    assert!(p["type"].as_str().unwrap().ends_with("custodian-mismatch"));
    // Signed by A, claiming to be B's batch of B's events.
    let jws = sign_batch(&orgs.a.key, b, &[event(b)]);
    problem(post_batch(&svc.base, &jws).await, 403).await;
    // Signed by a non-member.
    let stranger = orgs.stranger.key.did();
    let jws = sign_batch(&orgs.stranger.key, stranger, &[event(stranger)]);
    let p = problem(post_batch(&svc.base, &jws).await, 403).await;
    assert!(p["type"].as_str().unwrap().ends_with("not-a-member"));
    // A key that claims to be B's but is not in B's DID document.
    let impostor = KeyPair::generate_did_web(b, KeyAlgorithm::Ed25519).unwrap();
    let jws = sign_batch(&impostor, b, &[event(b)]);
    let p = problem(post_batch(&svc.base, &jws).await, 403).await;
    assert!(p["type"].as_str().unwrap().ends_with("bad-signature"));
    // Unsigned: alg none, no signature, not a JWS at all.
    let enc = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let payload = enc(&json!({"custodian": a, "events": [event(a)]}));
    let kid = orgs.a.key.verification_method();
    for jws in [
        format!(
            "{}.{payload}.",
            enc(&json!({"alg": "none", "kid": kid, "typ": "fedgate-batch+jwt"}))
        ),
        format!(
            "{}.{payload}.",
            enc(&json!({"alg": "EdDSA", "kid": kid, "typ": "fedgate-batch+jwt"}))
        ),
        "not a jws".to_string(),
    ] {
        problem(post_batch(&svc.base, &jws).await, 400).await;
    }
    // A tampered payload under A's signature.
    let good = sign_batch(&orgs.a.key, a, &[event(a)]);
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    problem(post_batch(&svc.base, &forged).await, 403).await;
    // Another JWS type (a credential) is not a batch.
    let vc = federation::jose::sign(
        &json!({"custodian": a, "events": []}),
        &orgs.a.key,
        "vc+jwt",
    )
    .unwrap();
    problem(post_batch(&svc.base, &vc).await, 400).await;
    // A malformed event: an unknown field.
    let mut raw = serde_json::to_value(event(a)).unwrap();
    raw["patientName"] = json!("nobody");
    let jws = federation::jose::sign(
        &json!({"custodian": a, "events": [raw]}),
        &orgs.a.key,
        "fedgate-batch+jwt",
    )
    .unwrap();
    problem(post_batch(&svc.base, &jws).await, 422).await;
    // Identifier-shaped free text: an SSN in a reason, a phone number in a justification.
    // The whole batch is refused, naming the event; the value is not echoed.
    let mut ssn = event(a);
    ssn.reasons = vec!["patient 123-45-6789 is not known at this custodian".into()];
    let jws = sign_batch(&orgs.a.key, a, &[event(a), ssn.clone()]);
    let p = problem(post_batch(&svc.base, &jws).await, 422).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(&ssn.id), "{p}");
    assert!(detail.contains("reasons[0]"), "{p}");
    assert!(!p.to_string().contains("6789"), "{p}");
    let mut glass = event(a);
    glass.break_glass = true;
    glass.justification = Some("unconscious; wife at 555-201-7788".into());
    let jws = sign_batch(&orgs.a.key, a, &[glass]);
    problem(post_batch(&svc.base, &jws).await, 422).await;
    // Free text outside the event vocabulary, even without any identifier in it.
    let mut chatty = event(a);
    chatty.reasons = vec!["Jane Doe asked for it".into()];
    let jws = sign_batch(&orgs.a.key, a, &[chatty]);
    problem(post_batch(&svc.base, &jws).await, 422).await;
    // 1,001 events: small enough in bytes, refused by the count check.
    let many: Vec<AccessEvent> = (0..1001).map(|_| event(a)).collect();
    let jws = sign_batch(&orgs.a.key, a, &many);
    assert!(jws.len() < federation::wire::MAX_BATCH_JWS_BYTES);
    let p = problem(post_batch(&svc.base, &jws).await, 413).await;
    assert!(
        p["detail"].as_str().unwrap().contains("this one 1001"),
        "{p}"
    );
    // Bodies that are not a batch request.
    let resp = client()
        .post(format!("{}/v1/batches", svc.base))
        .json(&json!({"batch": good, "extra": true}))
        .send()
        .await
        .unwrap();
    problem(resp, 422).await;
    let resp = client()
        .post(format!("{}/v1/batches", svc.base))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    problem(resp, 415).await;

    assert_eq!(current_checkpoint(&svc.base, &verifier).await.size, 1);
    svc.stop().await;
}

#[tokio::test]
async fn visibility_consistency_proofs_verify_and_requests_beyond_the_log_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let svc = start(static_config(dir.path(), &orgs)).await;
    let verifier = note_verifier(&svc.base).await;
    let a = orgs.a.key.did();
    let (_, first) = accepted(
        &svc.base,
        &orgs.a.key,
        &[event(a), event(a), event(a)],
        &verifier,
    )
    .await;
    let (_, second) = accepted(&svc.base, &orgs.a.key, &[event(a), event(a)], &verifier).await;
    assert_eq!((first.size, second.size), (3, 5));
    let v = ok_json(
        client()
            .get(format!("{}/v1/proofs/consistency?old=3&new=5", svc.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((v["old"].as_u64(), v["new"].as_u64()), (Some(3), Some(5)));
    log::verify_consistency(3, 5, &first.root, &second.root, &hashes(&v["proof"])).unwrap();
    // The proof does not fit another pair of roots.
    assert!(
        log::verify_consistency(3, 5, &second.root, &first.root, &hashes(&v["proof"])).is_err()
    );

    for query in [
        "inclusion?index=5&size=5",
        "inclusion?index=0&size=6",
        "inclusion?index=0&size=0",
        "inclusion?index=0&size=18446744073709551615",
        "inclusion?index=-1&size=5",
        "inclusion?index=x&size=5",
        "inclusion?size=5",
        "inclusion?index=0&size=5&extra=1",
        "consistency?old=4&new=3",
        "consistency?old=3&new=6",
        "consistency?old=0&new=5",
        "consistency?old=3",
    ] {
        let resp = client()
            .get(format!("{}/v1/proofs/{query}", svc.base))
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    svc.stop().await;
}

#[tokio::test]
async fn visibility_the_log_and_its_checkpoint_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let cfg = static_config(dir.path(), &orgs);
    let svc = start(cfg.clone()).await;
    let verifier = note_verifier(&svc.base).await;
    let a = orgs.a.key.did();
    let first: Vec<AccessEvent> = (0..3).map(|_| event(a)).collect();
    let second: Vec<AccessEvent> = (0..2).map(|_| event(a)).collect();
    accepted(&svc.base, &orgs.a.key, &first, &verifier).await;
    let (_, before) = accepted(&svc.base, &orgs.a.key, &second, &verifier).await;
    let note_before = client()
        .get(format!("{}/v1/checkpoint", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    svc.stop().await;

    let svc = start(cfg).await;
    // Same key, same note, same size and root.
    assert_eq!(note_verifier(&svc.base).await, verifier);
    let note_after = client()
        .get(format!("{}/v1/checkpoint", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(note_after, note_before);
    let after = current_checkpoint(&svc.base, &verifier).await;
    assert_eq!((after.size, after.root), (before.size, before.root));
    for (i, e) in first.iter().chain(&second).enumerate() {
        assert_included(&svc.base, &access(e), i as u64, &after).await;
    }
    // Exactly once across the restart too.
    let body = ok_json(post_batch(&svc.base, &sign_batch(&orgs.a.key, a, &second)).await).await;
    assert_eq!(body["treeSize"], 5);
    assert_eq!(body["receipts"][1]["leafIndex"], 4);
    assert_eq!(body["receipts"][1]["duplicate"], true);
    svc.stop().await;
}

async fn challenge(base: &str) -> PresentationBinding {
    let v = ok_json(
        client()
            .post(format!("{base}/v1/challenges"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["domain"], SERVICE_DID);
    assert!(v["expiresAt"].is_string());
    PresentationBinding {
        challenge: v["challenge"].as_str().unwrap().to_string(),
        domain: v["domain"].as_str().unwrap().to_string(),
    }
}

async fn staff_credential(office: &Office, holder: &KeyPair, role: &str, org: &str) -> Value {
    let mut subject = privilege_subject(holder.did());
    subject["role"] = json!(role);
    subject["organization"] = json!(org);
    let status = office.next_status();
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        office.key.did(),
        subject,
        Utc::now() - chrono::Duration::minutes(1),
        Some(Utc::now() + chrono::Duration::days(30)),
        Some(&status),
    );
    credentials::issue(vc, &office.key, ProofFormat::Jwt)
        .await
        .unwrap()
}

async fn open_session(base: &str, vp: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/audit/sessions"))
        .json(&json!({ "presentation": vp }))
        .send()
        .await
        .unwrap()
}

async fn audit_get(base: &str, token: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn event_ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn visibility_auditors_query_events_and_resolve_break_glass_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let svc = start(static_config(dir.path(), &orgs)).await;
    let verifier = note_verifier(&svc.base).await;
    let (a, b) = (orgs.a.key.did(), orgs.b.key.did());

    let a1 = event(a);
    let mut a2 = event(a);
    a2.patient_ref = Some("ref-2".into());
    a2.decision = Outcome::Deny;
    let mut glass = event(a);
    glass.break_glass = true;
    glass.review_required = true;
    glass.justification = Some("unconscious patient in the ED".into());
    accepted(
        &svc.base,
        &orgs.a.key,
        &[a1.clone(), a2.clone(), glass.clone()],
        &verifier,
    )
    .await;
    let b1 = event(b);
    accepted(&svc.base, &orgs.b.key, std::slice::from_ref(&b1), &verifier).await;

    // No session, or a made-up one: 401.
    for path in ["/v1/audit/events", "/v1/audit/reviews", "/v1/audit/export"] {
        problem(audit_get(&svc.base, None, path).await, 401).await;
        problem(audit_get(&svc.base, Some("made-up"), path).await, 401).await;
    }
    let resp = client()
        .post(format!(
            "{}/v1/audit/reviews/{}/resolve",
            svc.base, glass.id
        ))
        .json(&json!({"note": "fine"}))
        .send()
        .await
        .unwrap();
    problem(resp, 401).await;

    // A physician is not an auditor, nor is an auditor at an organization that is not one.
    let physician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let vc = staff_credential(&orgs.office, &physician, "physician", AUDITOR_ORG).await;
    let vp = credentials::present(
        &[vc],
        &physician,
        &challenge(&svc.base).await,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    problem(open_session(&svc.base, &vp).await, 403).await;
    let outsider = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let vc = staff_credential(&orgs.office, &outsider, "auditor", HOSPITAL_A).await;
    let vp = credentials::present(
        &[vc],
        &outsider,
        &challenge(&svc.base).await,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    problem(open_session(&svc.base, &vp).await, 403).await;

    // The auditor, with a Data Integrity presentation.
    let auditor = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let vc = staff_credential(&orgs.office, &auditor, "auditor", AUDITOR_ORG).await;
    let vp = credentials::present(
        std::slice::from_ref(&vc),
        &auditor,
        &challenge(&svc.base).await,
        ProofFormat::DataIntegrity,
    )
    .await
    .unwrap();
    let session = ok_json(open_session(&svc.base, &vp).await).await;
    let token = session["token"].as_str().unwrap().to_string();
    assert!(session["expiresAt"].is_string());
    // The challenge was used up.
    problem(open_session(&svc.base, &vp).await, 401).await;
    // A presentation bound to a challenge this service never issued.
    let forged = PresentationBinding {
        challenge: "never-issued".into(),
        domain: SERVICE_DID.into(),
    };
    let vp = credentials::present(&[vc], &auditor, &forged, ProofFormat::Jwt)
        .await
        .unwrap();
    problem(open_session(&svc.base, &vp).await, 401).await;

    let t = Some(token.as_str());
    let by_ref = ok_json(audit_get(&svc.base, t, "/v1/audit/events?patient_ref=ref-1").await).await;
    assert_eq!(
        event_ids(&by_ref, "events"),
        vec![b1.id.clone(), glass.id.clone(), a1.id.clone()],
        "newest first"
    );
    let by_custodian =
        ok_json(audit_get(&svc.base, t, &format!("/v1/audit/events?custodian={b}")).await).await;
    assert_eq!(event_ids(&by_custodian, "events"), vec![b1.id.clone()]);
    let denied = ok_json(
        audit_get(
            &svc.base,
            t,
            &format!("/v1/audit/events?custodian={a}&decision=deny"),
        )
        .await,
    )
    .await;
    assert_eq!(event_ids(&denied, "events"), vec![a2.id.clone()]);
    let combined = ok_json(
        audit_get(
            &svc.base,
            t,
            &format!("/v1/audit/events?patient_ref=ref-1&custodian={a}&purpose=TREAT"),
        )
        .await,
    )
    .await;
    assert_eq!(
        event_ids(&combined, "events"),
        vec![glass.id.clone(), a1.id.clone()]
    );
    // Paging with limit and the cursor.
    let page = ok_json(audit_get(&svc.base, t, "/v1/audit/events?limit=2").await).await;
    assert_eq!(
        event_ids(&page, "events"),
        vec![b1.id.clone(), glass.id.clone()]
    );
    let next = page["next"].as_u64().unwrap();
    let rest = ok_json(
        audit_get(
            &svc.base,
            t,
            &format!("/v1/audit/events?limit=2&before={next}"),
        )
        .await,
    )
    .await;
    assert_eq!(
        event_ids(&rest, "events"),
        vec![a2.id.clone(), a1.id.clone()]
    );
    let future = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none =
        ok_json(audit_get(&svc.base, t, &format!("/v1/audit/events?from={future}")).await).await;
    assert!(none["events"].as_array().unwrap().is_empty());
    let none =
        ok_json(audit_get(&svc.base, t, &format!("/v1/audit/export?from={future}")).await).await;
    assert_eq!(none["resourceType"], "Bundle");
    assert!(none.get("entry").is_none(), "FHIR JSON has no empty arrays");
    for bad in [
        "limit=1001",
        "limit=0",
        "decision=maybe",
        "from=yesterday",
        "patientRef=x",
    ] {
        problem(
            audit_get(&svc.base, t, &format!("/v1/audit/events?{bad}")).await,
            400,
        )
        .await;
    }

    // The same queries as a FHIR Bundle of AuditEvents.
    let resp = audit_get(&svc.base, t, &format!("/v1/audit/export?custodian={a}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/fhir+json"
    );
    let bundle: Value = resp.json().await.unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    assert!(bundle.get("link").is_none());
    let entries = bundle["entry"].as_array().unwrap();
    let expected = [&glass, &a2, &a1];
    assert_eq!(entries.len(), expected.len());
    for (entry, e) in entries.iter().zip(expected) {
        assert_eq!(entry["fullUrl"], format!("urn:uuid:{}", e.id));
        let ae = &entry["resource"];
        assert_eq!(ae["resourceType"], "AuditEvent");
        assert_eq!(ae["id"], e.id.as_str());
        assert!(ae["type"]["system"].is_string() && ae["type"]["code"].is_string());
        assert!(ae["recorded"].is_string());
        let agents = ae["agent"].as_array().unwrap();
        assert!(agents.iter().all(|x| x["requestor"].is_boolean()));
        assert!(agents.iter().any(|x| x["requestor"] == true));
        assert_eq!(ae["source"]["observer"]["identifier"]["value"], a);
        assert_eq!(
            ae["outcome"],
            if e.decision == Outcome::Allow {
                "0"
            } else {
                "4"
            }
        );
        assert_eq!(
            ae["entity"][0]["what"]["identifier"]["value"],
            e.patient_ref.as_deref().unwrap()
        );
        assert!(!ae.to_string().contains("unconscious"), "no justification");
    }
    let glass_ae = &entries[0]["resource"];
    assert_eq!(glass_ae["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
    // Filters and paging as for /v1/audit/events; the next link carries the cursor.
    let page: Value = audit_get(&svc.base, t, "/v1/audit/export?decision=allow&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entry"].as_array().unwrap().len(), 1);
    assert_eq!(page["entry"][0]["fullUrl"], format!("urn:uuid:{}", b1.id));
    let next = page["link"][0]["url"].as_str().unwrap();
    assert!(next.starts_with("/v1/audit/export?decision=allow&limit=1&before="));
    let rest: Value = audit_get(&svc.base, t, next).await.json().await.unwrap();
    assert_eq!(
        rest["entry"][0]["fullUrl"],
        format!("urn:uuid:{}", glass.id)
    );
    problem(
        audit_get(&svc.base, t, "/v1/audit/export?decision=maybe").await,
        400,
    )
    .await;

    // The break-glass event waits for review; resolving it appends a review leaf.
    let queue = ok_json(audit_get(&svc.base, t, "/v1/audit/reviews").await).await;
    assert_eq!(event_ids(&queue, "reviews"), vec![glass.id.clone()]);
    assert_eq!(queue["reviews"][0]["leafIndex"], 2);
    let note = "justified: patient arrived unconscious";
    let resolved = ok_json(
        client()
            .post(format!(
                "{}/v1/audit/reviews/{}/resolve",
                svc.base, glass.id
            ))
            .bearer_auth(&token)
            .json(&json!({ "note": note }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resolved["leafIndex"], 4);
    assert_eq!(resolved["treeSize"], 5);
    let cp = checkpoint::open(
        resolved["checkpoint"].as_str().unwrap(),
        std::slice::from_ref(&verifier),
    )
    .unwrap();
    assert_eq!(cp.size, 5);
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(note.as_bytes()))
    };
    assert_eq!(resolved["noteDigest"], digest.as_str());
    let review = LogEntry::Review {
        event_id: glass.id.clone(),
        resolved_by: auditor.did().to_string(),
        note_digest: digest.clone(),
        time: serde_json::from_value(resolved["time"].clone()).unwrap(),
    };
    assert_included(&svc.base, &review, 4, &cp).await;
    // The note text itself is not in the log, only beside it, for auditors.
    let queue = ok_json(audit_get(&svc.base, t, "/v1/audit/reviews").await).await;
    assert!(queue["reviews"].as_array().unwrap().is_empty());
    let notes = ok_json(
        audit_get(
            &svc.base,
            t,
            &format!("/v1/audit/reviews/{}/notes", glass.id),
        )
        .await,
    )
    .await;
    assert_eq!(notes["notes"][0]["note"], note);
    assert_eq!(notes["notes"][0]["resolvedBy"], auditor.did());
    // The event id in a review's path is a UUID: anything else is a 400 naming the
    // parameter, a UUID that is no break-glass review a 404.
    for bad in ["..%2f..%2fetc", "not-an-id", "0190"] {
        let p = problem(
            audit_get(&svc.base, t, &format!("/v1/audit/reviews/{bad}/notes")).await,
            400,
        )
        .await;
        assert_eq!(p["parameter"], "event_id", "{p}");
        let resp = client()
            .post(format!("{}/v1/audit/reviews/{bad}/resolve", svc.base))
            .bearer_auth(&token)
            .json(&json!({ "note": "fine" }))
            .send()
            .await
            .unwrap();
        assert_eq!(problem(resp, 400).await["parameter"], "event_id");
    }
    let unknown = AccessEvent::new_id();
    for id in [unknown.as_str(), a1.id.as_str()] {
        problem(
            audit_get(&svc.base, t, &format!("/v1/audit/reviews/{id}/notes")).await,
            404,
        )
        .await;
    }
    // Resolved already, never queued, or unknown: 404.
    for id in [glass.id.as_str(), a1.id.as_str(), unknown.as_str()] {
        let resp = client()
            .post(format!("{}/v1/audit/reviews/{id}/resolve", svc.base))
            .bearer_auth(&token)
            .json(&json!({ "note": "again" }))
            .send()
            .await
            .unwrap();
        problem(resp, 404).await;
    }
    // Review leaves are not access events.
    let all = ok_json(audit_get(&svc.base, t, "/v1/audit/events").await).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 4);
    svc.stop().await;
}

#[tokio::test]
async fn visibility_a_patient_sees_exactly_the_events_naming_their_did() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let svc = start(static_config(dir.path(), &orgs)).await;
    let verifier = note_verifier(&svc.base).await;
    let (a, b) = (orgs.a.key.did(), orgs.b.key.did());
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let other = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();

    let mut mine_a = event(a);
    mine_a.patient_did_digests = vec![patient_did_digest(patient.did())];
    let mut theirs = event(a);
    theirs.patient_did_digests = vec![patient_did_digest(other.did())];
    let unnamed = event(a);
    accepted(
        &svc.base,
        &orgs.a.key,
        &[mine_a.clone(), theirs, unnamed],
        &verifier,
    )
    .await;
    let mut mine_b = event(b);
    mine_b.patient_did_digests = vec![
        patient_did_digest(other.did()),
        patient_did_digest(patient.did()),
    ];
    accepted(&svc.base, &orgs.b.key, &[mine_b.clone()], &verifier).await;

    let consent = self_issued_consent(&patient, HOSPITAL_A, ProofFormat::Jwt).await;
    let vp = credentials::present(
        std::slice::from_ref(&consent),
        &patient,
        &challenge(&svc.base).await,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let history = ok_json(
        client()
            .post(format!("{}/v1/patients/history", svc.base))
            .json(&json!({ "presentation": vp }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        event_ids(&history, "events"),
        vec![mine_b.id.clone(), mine_a.id.clone()]
    );
    assert_eq!(history["events"][0]["leafIndex"], 3);
    assert_eq!(history["truncated"], false);

    // Replaying the presentation, or presenting someone else's consent, gets nothing.
    let resp = client()
        .post(format!("{}/v1/patients/history", svc.base))
        .json(&json!({ "presentation": vp }))
        .send()
        .await
        .unwrap();
    problem(resp, 401).await;
    let vp = credentials::present(
        &[consent],
        &other,
        &challenge(&svc.base).await,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let resp = client()
        .post(format!("{}/v1/patients/history", svc.base))
        .json(&json!({ "presentation": vp }))
        .send()
        .await
        .unwrap();
    let p = problem(resp, 401).await;
    assert_eq!(p["check"], "holder-binding");
    svc.stop().await;
}

#[tokio::test]
async fn visibility_registry_membership_decides_who_may_report() {
    let dir = tempfile::tempdir().unwrap();
    let orgs = orgs().await;
    let governor = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let governance = Governance {
        threshold: 1,
        keys: vec![governor.verification_method().to_string()],
    };
    let mut manifest = Manifest::new("visibility-test", governance.clone());
    manifest.members.push(Member {
        did: orgs.a.key.did().to_string(),
        name: "Hospital A".into(),
        roles: vec![Role::Custodian],
        endpoints: Default::default(),
        base_url: orgs.a.base.to_string(),
    });
    SignedManifest::sign(&manifest, &[&governor])
        .unwrap()
        .save(&dir.path().join("manifest.signed.json"))
        .unwrap();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
did = "{SERVICE_DID}"
key_file = "visibility.key.json"
data_dir = "data"
dev_mode = true
[registry]
signed = "manifest.signed.json"
poll_secs = 1
governance = {{ threshold = 1, keys = ["{}"] }}
"#,
        governor.verification_method()
    );
    let mut cfg = VisibilityConfig::from_toml(&text).unwrap();
    cfg.resolve_paths(dir.path());
    cfg.validate("visibility.toml").unwrap();
    let svc = start(cfg).await;
    let verifier = note_verifier(&svc.base).await;
    let (a, b) = (orgs.a.key.did(), orgs.b.key.did());
    accepted(&svc.base, &orgs.a.key, &[event(a)], &verifier).await;
    let jws = sign_batch(&orgs.b.key, b, &[event(b)]);
    problem(post_batch(&svc.base, &jws).await, 403).await;
    assert_eq!(current_checkpoint(&svc.base, &verifier).await.size, 1);
    svc.stop().await;
}
