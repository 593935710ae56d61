//! The visibility layer with real processes: a gateway's access events reach the log with
//! inclusion proofs against a signed checkpoint; an outage of the log loses nothing and
//! duplicates nothing; a full outbox fails closed (503) and recovers by itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use federation::checkpoint::{self, NoteVerifier};
use federation::credentials::{self, CredentialKind, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::log;
use federation::visibility::{leaf_bytes, LogEntry};
use fedgate::harness::{free_port, Gateway, GatewaySpec, Office, Visibility};
use serde_json::{json, Value};

const OFFICE: &str = "did:web:credentialing.test";
const CUSTODIAN: &str = "did:web:hospital-a.test";
const REQUESTER_ORG: &str = "did:web:hospital-b.test";
const AUDITOR_ORG: &str = "did:web:auditor.test";
const VISIBILITY: &str = "did:web:visibility.test";
const MRN_SYSTEM: &str = "http://hospital.smarthealthit.org";

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fedgate"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fixture() -> (PathBuf, String) {
    let file = repo("examples/data/fhir/hospital-a/Della_Hettinger_8386e1d9.json");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mrn = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["resource"]["identifier"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|i| i["system"] == MRN_SYSTEM)
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    (file, mrn)
}

struct Setup {
    dir: tempfile::TempDir,
    office: Office,
    visibility: Visibility,
    gateway: Gateway,
    mrn: String,
}

async fn setup(outbox_max: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let gw_port = free_port().unwrap();
    let vis_port = free_port().unwrap();
    let visibility = Visibility::start(
        &exe(),
        &dir.path().join("visibility"),
        VISIBILITY,
        vis_port,
        &format!(
            "auditors = [\"{AUDITOR_ORG}\"]\n[members]\n\"{CUSTODIAN}\" = \"http://127.0.0.1:{gw_port}/\"\n\"{OFFICE}\" = \"{}\"\n[trust]\nClinicianPrivilegeCredential = [\"{OFFICE}\"]\n",
            office.url()
        ),
    )
    .unwrap();
    let (file, mrn) = fixture();
    let extra = format!(
        r#"
outbox_max_events = {outbox_max}
[visibility]
endpoint = "{vis}"
did = "{VISIBILITY}"
interval_ms = 100
[trust]
ClinicianPrivilegeCredential = ["{OFFICE}"]
[did_web]
"{OFFICE}" = "{office}"
"{VISIBILITY}" = "{vis}"
[[contracts]]
custodian = "{CUSTODIAN}"
requester = "{REQUESTER_ORG}"
domains = ["clinical"]
purposes = ["TREAT"]
"#,
        vis = visibility.url(),
        office = office.url()
    );
    let gateway = Gateway::start(
        &exe(),
        &dir.path().join("gateway"),
        &GatewaySpec {
            did: CUSTODIAN.into(),
            port: gw_port,
            records: vec![file],
            policies: repo("policies"),
            extra_toml: extra,
        },
    )
    .unwrap();
    Setup {
        dir,
        office,
        visibility,
        gateway,
        mrn,
    }
}

struct Requester {
    key: KeyPair,
    credentials: Vec<Value>,
}

async fn requester(s: &Setup) -> Requester {
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (_, privilege) = s
        .office
        .joiner(
            &json!({
                "id": key.did(), "name": "Dr. Test", "npi": "1234567893", "role": "physician",
                "specialty": "207R00000X", "organization": REQUESTER_ORG,
                "privileges": [{"facility": CUSTODIAN, "domains": ["clinical"], "actions": ["read"]}]
            }),
            "jwt",
        )
        .await
        .unwrap();
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent = credentials::unsigned_credential(
        CredentialKind::PatientConsent,
        patient.did(),
        json!({
            "id": patient.did(),
            "patientIdentifiers": [{"custodian": CUSTODIAN, "system": MRN_SYSTEM, "value": s.mrn}],
            "custodians": [CUSTODIAN],
            "grantee": {"id": key.did(), "kind": "clinician"},
            "provision": "permit", "domains": ["clinical"], "purposes": ["TREAT"],
            "dataClasses": ["Patient", "Observation"],
            "period": {"start": "2026-01-01T00:00:00Z"}
        }),
        chrono::Utc::now() - chrono::Duration::minutes(1),
        None,
        None,
    );
    let consent = credentials::issue(consent, &patient, ProofFormat::Jwt)
        .await
        .unwrap();
    Requester {
        key,
        credentials: vec![privilege, consent],
    }
}

/// One exchange; returns (status, decision id).
async fn exchange(s: &Setup, r: &Requester, with_consent: bool) -> (u16, Option<String>) {
    let binding = s.gateway.challenge().await.unwrap();
    let creds = if with_consent {
        &r.credentials[..]
    } else {
        &r.credentials[..1]
    };
    let vp = credentials::present(creds, &r.key, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": s.mrn},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, headers, bytes) = s
        .gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = headers
        .get("fedgate-decision-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| problem["decision_id"].as_str().map(str::to_string));
    (status, id)
}

async fn outbox_pending(s: &Setup) -> u64 {
    let v: Value = reqwest::get(format!("{}readyz", s.gateway.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    v["outbox"]["pending"]
        .as_u64()
        .or_else(|| v["state"]["outbox"]["pending"].as_u64())
        .unwrap_or(u64::MAX)
}

async fn wait_drained(s: &Setup) {
    let t0 = Instant::now();
    while outbox_pending(s).await != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An auditor session on the visibility service.
async fn auditor_token(s: &Setup) -> String {
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (_, privilege) = s
        .office
        .joiner(
            &json!({
                "id": key.did(), "name": "Auditor", "npi": "1234567893", "role": "auditor",
                "specialty": "207R00000X", "organization": AUDITOR_ORG,
                "privileges": [{"facility": VISIBILITY, "domains": ["clinical"], "actions": ["query"]}]
            }),
            "jwt",
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let ch: Value = http
        .post(format!("{}v1/challenges", s.visibility.url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let binding = credentials::PresentationBinding {
        challenge: ch["challenge"].as_str().unwrap().into(),
        domain: ch["domain"].as_str().unwrap().into(),
    };
    let vp = credentials::present(&[privilege], &key, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let session: Value = http
        .post(format!("{}v1/audit/sessions", s.visibility.url()))
        .json(&json!({"presentation": vp}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{session}"))
        .to_string()
}

/// The log's events for the custodian (all pages), as (leaf index, event).
async fn logged(s: &Setup, token: &str) -> Vec<(u64, federation::events::AccessEvent)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!(
            "{}v1/audit/events?custodian={CUSTODIAN}&limit=1000",
            s.visibility.url()
        );
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in page["events"].as_array().unwrap() {
            out.push((
                e["leafIndex"].as_u64().unwrap(),
                serde_json::from_value(e["event"].clone()).unwrap(),
            ));
        }
        match page["next"].as_u64() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    out
}

async fn checkpoint_of(s: &Setup) -> checkpoint::Checkpoint {
    let doc: Value = reqwest::get(format!("{}.well-known/did.json", s.visibility.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mb = doc["verificationMethod"][0]["publicKeyMultibase"]
        .as_str()
        .unwrap();
    let (_, bytes) = multibase::decode(mb).unwrap();
    let pk: [u8; 32] = bytes[2..].try_into().unwrap();
    let verifier = NoteVerifier::new(VISIBILITY, pk).unwrap();
    let note = reqwest::get(format!("{}v1/checkpoint", s.visibility.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    checkpoint::open(&note, &[verifier]).unwrap()
}

async fn verify_inclusion(
    s: &Setup,
    cp: &checkpoint::Checkpoint,
    index: u64,
    event: &federation::events::AccessEvent,
) {
    let proof: Value = reqwest::get(format!(
        "{}v1/proofs/inclusion?index={index}&size={}",
        s.visibility.url(),
        cp.size
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let hashes: Vec<log::Hash> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access {
        event: event.clone(),
    }));
    log::verify_inclusion(&leaf, index, cp.size, &hashes, &cp.root).unwrap();
}

#[tokio::test]
async fn events_reach_the_log_with_inclusion_proofs() {
    let s = setup(10_000).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, id) = exchange(&s, &r, i % 3 != 0).await;
        assert!(status == 200 || status == 403, "{status}");
        ids.push(id.unwrap());
    }
    wait_drained(&s).await;
    let token = auditor_token(&s).await;
    let events = logged(&s, &token).await;
    let cp = checkpoint_of(&s).await;
    assert!(cp.size >= 6);
    for id in &ids {
        let hits: Vec<_> = events
            .iter()
            .filter(|(_, e)| &e.decision_id == id)
            .collect();
        assert_eq!(hits.len(), 1, "decision {id} logged {} times", hits.len());
        verify_inclusion(&s, &cp, hits[0].0, &hits[0].1).await;
    }
    let _ = &s.dir;
}

#[tokio::test]
async fn outage_loses_nothing_and_a_full_outbox_fails_closed() {
    let mut s = setup(4).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    let (status, id) = exchange(&s, &r, true).await;
    assert_eq!(status, 200);
    ids.push(id.unwrap());
    wait_drained(&s).await;

    // The log goes away; exchanges go on until the outbox is full, then fail closed.
    s.visibility.process.stop();
    let mut refused = false;
    for _ in 0..10 {
        let (status, id) = exchange(&s, &r, true).await;
        match status {
            200 => ids.push(id.unwrap()),
            503 => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "a full outbox must refuse new exchanges");
    assert!(ids.len() >= 4);

    // The log comes back on the same data: the outbox drains by itself, service resumes.
    s.visibility = Visibility::restart(&exe(), VISIBILITY, &s.visibility.config.clone()).unwrap();
    wait_drained(&s).await;
    let (status, id) = exchange(&s, &r, true).await;
    assert_eq!(status, 200);
    ids.push(id.unwrap());
    wait_drained(&s).await;

    let token = auditor_token(&s).await;
    let events = logged(&s, &token).await;
    let cp = checkpoint_of(&s).await;
    for id in &ids {
        let hits: Vec<_> = events
            .iter()
            .filter(|(_, e)| &e.decision_id == id)
            .collect();
        assert_eq!(hits.len(), 1, "decision {id} logged {} times", hits.len());
        verify_inclusion(&s, &cp, hits[0].0, &hits[0].1).await;
    }
}

/// Rewrites history in a stopped visibility service's database the way an operator with
/// write access could without the service noticing at start: leaf 0 gets other content,
/// every stored subtree hash is recomputed from the leaves, and the stored checkpoint is
/// deleted so that the service signs the rewritten tree afresh.
fn rewrite_history(visibility_dir: &Path) {
    let db = sled::open(visibility_dir.join("data").join("visibility.sled")).unwrap();
    let leaves = db.open_tree("fedgate.log/visibility/leaves").unwrap();
    let nodes = db.open_tree("fedgate.log/visibility/nodes").unwrap();
    let meta = db.open_tree("visibility/meta").unwrap();

    let first = 0u64.to_be_bytes();
    let mut entry: LogEntry = serde_json::from_slice(&leaves.get(first).unwrap().unwrap()).unwrap();
    match &mut entry {
        LogEntry::Access { event } => event.purpose = "RESEARCH".into(),
        other => panic!("leaf 0 is not an access event: {other:?}"),
    }
    leaves.insert(first, leaf_bytes(&entry)).unwrap();

    // Every complete subtree, level by level, in tiles of 256 hashes (see federation::log).
    let mut level_hashes: Vec<log::Hash> = leaves
        .iter()
        .values()
        .map(|v| log::leaf_hash(&v.unwrap()))
        .collect();
    assert!(!level_hashes.is_empty());
    nodes.clear().unwrap();
    let mut level = 0u8;
    while !level_hashes.is_empty() {
        for (tile, chunk) in (0u64..).zip(level_hashes.chunks(log::TILE_WIDTH as usize)) {
            let mut key = vec![level];
            key.extend_from_slice(&tile.to_be_bytes());
            nodes.insert(key, chunk.concat()).unwrap();
        }
        level_hashes = level_hashes
            .chunks_exact(2)
            .map(|pair| log::node_hash(&pair[0], &pair[1]))
            .collect();
        level += 1;
    }
    assert!(meta.remove(b"checkpoint").unwrap().is_some());
    db.flush().unwrap();
}

async fn inconsistency_alarms(s: &Setup) -> f64 {
    let text = reqwest::get(format!("{}metrics", s.gateway.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("fedgate_log_inconsistency_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_rewritten_log_raises_the_alarm_and_keeps_the_event() {
    let mut s = setup(10_000).await;
    let r = requester(&s).await;
    for _ in 0..3 {
        let (status, _) = exchange(&s, &r, true).await;
        assert_eq!(status, 200);
        wait_drained(&s).await;
    }
    // The outbox drained: the gateway accepted a checkpoint covering these events.
    let accepted = checkpoint_of(&s).await;
    assert!(accepted.size >= 3);
    assert_eq!(inconsistency_alarms(&s).await, 0.0);

    // The operator rewrites leaf 0 and everything above it, then restarts the service.
    s.visibility.process.stop();
    rewrite_history(&s.dir.path().join("visibility"));
    s.visibility = Visibility::restart(&exe(), VISIBILITY, &s.visibility.config.clone()).unwrap();
    let forged = checkpoint_of(&s).await;
    assert_eq!(forged.size, accepted.size);
    assert_ne!(
        forged.root, accepted.root,
        "the tampering must change the served root"
    );

    // The next event's checkpoint does not extend the accepted one: alarm, no ack.
    let (status, _) = exchange(&s, &r, true).await;
    assert_eq!(status, 200);
    let t0 = Instant::now();
    while inconsistency_alarms(&s).await < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the gateway never noticed the rewritten log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(outbox_pending(&s).await >= 1);
    // It keeps refusing: the event is never acknowledged against this log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(outbox_pending(&s).await >= 1);
    assert!(inconsistency_alarms(&s).await >= 1.0);
}
