//! Interoperability with independent implementations from the npm registry, both ways
//! (tests/peers/vc-interop.mjs; versions pinned in tests/peers/package-lock.json):
//! - digitalbazaar's `@digitalbazaar/vc` with `@digitalbazaar/data-integrity` and
//!   `@digitalbazaar/eddsa-rdfc-2022-cryptosuite` (Data Integrity), contexts from npm
//!   packages and an offline document loader;
//! - panva's `jose` (VC-JOSE).
//!
//! The peer issues generic credentials (an issuer object, a proof set of two proofs; a
//! `vc+jwt` with `alg: Ed25519`, the JWT registered claims and a header parameter fedgate
//! does not know) and the issuer's and a gateway's `/credentials/verify` accept them;
//! fedgate's office issues generic credentials in both formats, and a proof set, and the
//! peer verifies them. Without node or the packages (`scripts/peers` installs them) this
//! test fails, saying so: it never skips.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{Gateway, GatewaySpec, Office};
use serde_json::{json, Value};
use support::{exe, repo};

const OFFICE: &str = "did:web:credentialing.test";
const HOSPITAL: &str = "did:web:hospital-a.test";
const TRAINING_CONTEXT: &str = "https://training.example/contexts/v1";
const TRAINING_SCHEMA: &str = "https://training.example/schemas/training.json";

fn fixture(name: &str) -> PathBuf {
    repo("tests/fixtures/conformance").join(name)
}

fn training_context() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("training-v1.jsonld")).unwrap()).unwrap()
}

/// Runs the peer script with `input` on stdin; its JSON answer, or a panic that says what
/// is missing.
fn peer(mode: &str, input: &Value) -> (bool, Value) {
    let dir = repo("tests/peers");
    assert!(
        dir.join("node_modules/@digitalbazaar/vc").is_dir()
            && dir.join("node_modules/jose").is_dir(),
        "the interop peers are not installed: run scripts/peers (npm ci in tests/peers)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("vc-interop.mjs"))
        .arg(mode)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node is needed for the interop test and did not start: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(input).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("vc-interop.mjs {mode} gave no answer: {stderr}"));
    (out.status.success(), answer)
}

fn office_toml() -> String {
    format!(
        r#"[[other_types]]
type = "TrainingCertificateCredential"
schema = "{TRAINING_SCHEMA}"
context = "{TRAINING_CONTEXT}"
[bundle.contexts]
"{TRAINING_CONTEXT}" = "{}"
[bundle.schemas]
"{TRAINING_SCHEMA}" = "{}"
"#,
        fixture("training-v1.jsonld").display(),
        fixture("training.schema.json").display(),
    )
}

async fn post(
    http: &reqwest::Client,
    url: String,
    body: &Value,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = http.post(&url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn independent_libraries_verify_fedgate_and_fedgate_verifies_them() {
    let dir = tempfile::tempdir().unwrap();
    let office_dir = dir.path().join("office");
    let office = Office::start_with(&exe(), &office_dir, OFFICE, &office_toml()).unwrap();
    let token = std::fs::read_to_string(office_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let gateway = Gateway::start(
        &exe(),
        &dir.path().join("gateway"),
        &GatewaySpec {
            did: HOSPITAL.into(),
            port: 0,
            records: vec![],
            policies: repo("policies"),
            extra_toml: format!(
                "[did_web]\n\"{OFFICE}\" = \"{}\"\n[bundle.contexts]\n\"{TRAINING_CONTEXT}\" = \"{}\"\n",
                office.url(),
                fixture("training-v1.jsonld").display()
            ),
        },
    )
    .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let services = [
        office.url().trim_end_matches('/').to_string(),
        gateway.url().trim_end_matches('/').to_string(),
    ];
    let contexts = json!({ TRAINING_CONTEXT: training_context() });

    // The peer issues; every fedgate service verifies.
    let template = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", TRAINING_CONTEXT],
        "type": ["VerifiableCredential", "CourseCompletionCredential"],
        "validFrom": "2026-01-01T00:00:00Z",
        "credentialSubject": {"id": "did:web:staff.hospital-a.test:nurse-7", "course": "Hand hygiene", "provider": "Ward 7"},
    });
    let (ok, issued) = peer(
        "issue",
        &json!({"contexts": contexts, "credential": template}),
    );
    assert!(ok, "the peer failed to issue: {issued}");
    let di = &issued["dataIntegrity"];
    assert_eq!(
        di["proof"].as_array().map(Vec::len),
        Some(2),
        "a proof set: {di}"
    );
    assert!(di["issuer"].is_object());
    for base in &services {
        for (what, vc) in [
            ("Data Integrity proof set", di.clone()),
            ("vc+jwt", issued["jwt"].clone()),
        ] {
            let (status, body) = post(
                &http,
                format!("{base}/credentials/verify"),
                &json!({"verifiableCredential": vc}),
                None,
            )
            .await;
            assert_eq!(status, 200, "{what} at {base}: {body}");
            assert_eq!(body["credential"]["issuer"], issued["did"], "{what}");
            assert_eq!(
                body["checks"],
                json!(["format", "proof", "validity"]),
                "{what} at {base}"
            );
        }
        // A peer credential with one byte changed is refused as a forgery.
        let mut tampered = di.clone();
        tampered["credentialSubject"]["course"] = json!("Hand hygiene, advanced");
        let (status, body) = post(
            &http,
            format!("{base}/credentials/verify"),
            &json!({"verifiableCredential": tampered}),
            None,
        )
        .await;
        assert_eq!(
            (status, body["check"].as_str()),
            (422, Some("proof")),
            "{body}"
        );
    }

    // fedgate issues; the peer verifies.
    let mut fedgate_issued = Vec::new();
    for format in ["data-integrity", "jwt"] {
        let credential = json!({
            "@context": ["https://www.w3.org/ns/credentials/v2", TRAINING_CONTEXT],
            "type": ["VerifiableCredential", "TrainingCertificateCredential"],
            "issuer": {"id": OFFICE, "name": "Credentialing office"},
            "name": {"@value": "Hand hygiene", "@language": "en"},
            "credentialSubject": {"id": "did:web:staff.hospital-a.test:nurse-7", "course": "Hand hygiene"},
        });
        let (status, body) = post(
            &http,
            format!("{}/credentials/issue", services[0]),
            &json!({"credential": credential, "options": {"format": format}}),
            Some(&token),
        )
        .await;
        assert_eq!(status, 201, "{format}: {body}");
        fedgate_issued.push(body["verifiableCredential"].clone());
    }
    // And a proof set of fedgate's own making, by a did:key issuer.
    let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let unsigned = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", TRAINING_CONTEXT],
        "id": "urn:uuid:5d0f3f8a-3c4e-4f0e-9a59-3c7b0f8d2e11",
        "type": ["VerifiableCredential", "CourseCompletionCredential"],
        "issuer": {"id": board.did(), "name": "A training board"},
        "validFrom": "2026-01-01T00:00:00Z",
        "credentialSubject": {"id": "did:web:staff.hospital-a.test:nurse-7", "course": "Hand hygiene"},
    });
    let bundle = federation::bundle::Bundle::empty()
        .with_contexts(std::collections::HashMap::from([(
            TRAINING_CONTEXT.to_string(),
            training_context().to_string(),
        )]))
        .unwrap();
    let one = federation::credentials::add_proof(unsigned, &board, None, &bundle)
        .await
        .unwrap();
    let set = federation::credentials::add_proof(one, &board, None, &bundle)
        .await
        .unwrap();
    let office_doc: Value = http
        .get(format!("{}/.well-known/did.json", services[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let input = json!({
        "contexts": contexts,
        "didDocuments": {OFFICE: office_doc, board.did(): board.did_document().unwrap()},
        "dataIntegrity": [fedgate_issued[0], set],
        "jwt": [fedgate_issued[1]],
    });
    let (ok, verified) = peer("verify", &input);
    assert!(ok, "the peer refused what fedgate issued: {verified}");
    let results = verified["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{verified}");
    assert_eq!(results[1]["proofs"], 2, "{verified}");
    assert!(results.iter().all(|r| r["verified"] == true), "{verified}");
}
