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
//!
//! SD-JWT VC (tests/peers/sd-jwt-interop.mjs), with the OpenWallet Foundation's
//! `@sd-jwt/sd-jwt-vc`, `@sd-jwt/crypto-nodejs` and `@sd-jwt/jwt-status-list`: fedgate's
//! office issues and fedgate's holder presents (with a key binding JWT), their verifier
//! verifies (and reads the vct's type metadata and the office's Token Status List); their
//! issuer issues and their holder presents, fedgate's pipeline verifies; their status list
//! reader reads a leaver's revocation from the office's Token Status List.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{Gateway, GatewaySpec, Office};
use serde_json::{json, Value};
use support::{exe, node_peer, office_jwk, repo, spawn_node};

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
    let mut child = spawn_node(
        node_peer("vc-interop.mjs", &["@digitalbazaar/vc", "jose"])
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
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

/// Runs tests/peers/sd-jwt-interop.mjs with `input` on stdin.
fn sd_jwt_peer(mode: &str, input: &Value) -> (bool, Value) {
    let packages = [
        "@sd-jwt/sd-jwt-vc",
        "@sd-jwt/crypto-nodejs",
        "@sd-jwt/jwt-status-list",
    ];
    let mut child = spawn_node(
        node_peer("sd-jwt-interop.mjs", &packages)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(input).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("sd-jwt-interop.mjs {mode} gave no answer: {stderr}"));
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

fn sd_jwt_privilege_subject(clinician: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Ada Interop",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": HOSPITAL,
        "privileges": [
            {"facility": HOSPITAL, "domains": ["clinical"], "actions": ["read"]},
            {"facility": "did:web:hospital-b.test", "domains": ["clinical", "research"], "actions": ["query"]}
        ]
    })
}

/// fedgate issues and presents (KB-JWT over their audience and nonce); their SD-JWT VC
/// verifier verifies it, with the status from fedgate's Token Status List and the vct's
/// type metadata; after a leaver, their verifier and their status list reader see the
/// revocation.
#[tokio::test]
async fn their_sd_jwt_vc_verifier_verifies_fedgates_and_reads_its_token_status_list() {
    use federation::sdjwt;
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let issuer_jwk = office_jwk(&http, &office).await;
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::Ed25519] {
        let clinician = KeyPair::generate_did_key(alg).unwrap();
        let (id, vc) = office
            .joiner(&sd_jwt_privilege_subject(clinician.did()), "sd-jwt")
            .await
            .unwrap();
        let sd_jwt = vc.as_str().unwrap();
        let aud = "decentralized_identifier:did:web:verifier.example";
        let nonce = format!("nonce-{alg}");
        let presented = sdjwt::present(
            sd_jwt,
            &[
                vec![json!("organization")],
                vec![json!("privileges"), json!(1)],
            ],
            aud,
            &nonce,
            &clinician,
        )
        .unwrap();
        let input =
            json!({"presentation": presented, "issuerJwk": issuer_jwk, "aud": aud, "nonce": nonce});
        let (ok, answer) = sd_jwt_peer("verify", &input);
        assert!(ok, "{alg}: {answer}");
        assert_eq!(answer["header"]["typ"], "dc+sd-jwt");
        assert_eq!(answer["kb"]["header"]["typ"], "kb+jwt");
        assert_eq!(answer["kb"]["payload"]["aud"], aud);
        let claims = &answer["claims"];
        assert_eq!(claims["organization"], HOSPITAL);
        assert_eq!(claims["privileges"].as_array().unwrap().len(), 1);
        assert_eq!(
            claims["privileges"][0]["facility"],
            "did:web:hospital-b.test"
        );
        assert!(
            claims.get("name").is_none() && claims.get("npi").is_none(),
            "{claims}"
        );
        assert_eq!(claims["sub"], clinician.did());
        // The vct's type metadata, fetched and validated by their schema.
        assert_eq!(answer["typeMetadata"]["vct"], claims["vct"]);
        // Another nonce: their verifier refuses it.
        let (ok, answer) = sd_jwt_peer(
            "verify",
            &json!({"presentation": presented, "issuerJwk": issuer_jwk, "aud": aud, "nonce": "other"}),
        );
        assert!(!ok, "{answer}");

        // Their status list reader on the office's Token Status List, before and after.
        let status = &sdjwt::revealed_claims(sd_jwt).unwrap()["status"]["status_list"];
        let read = json!({"uri": status["uri"], "idx": status["idx"], "issuerJwk": issuer_jwk});
        let (ok, answer) = sd_jwt_peer("status", &read);
        assert!(ok, "{answer}");
        assert_eq!(answer["status"], 0, "{answer}");
        assert_eq!(answer["bits"], 1);
        assert_eq!(answer["sub"], status["uri"]);
        assert_eq!(answer["contentType"], "application/statuslist+jwt");
        office.revoke(&id).await.unwrap();
        let (ok, answer) = sd_jwt_peer("status", &read);
        assert!(ok, "{answer}");
        assert_eq!(answer["status"], 1, "{answer}");
        // And their verifier now refuses the presentation on its status.
        let (ok, answer) = sd_jwt_peer("verify", &input);
        assert!(!ok, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("status"),
            "{answer}"
        );
    }
}

/// Their issuer issues a PatientConsentCredential as an SD-JWT VC (ES256, did:jwk issuer and
/// holder, every claim and array element disclosable), their holder presents some claims
/// with a key binding JWT; fedgate's pipeline verifies it, and sees only what was
/// disclosed. A replay to another audience or nonce is refused.
#[tokio::test]
async fn fedgates_pipeline_verifies_their_sd_jwt_vc() {
    use federation::verify::Verifier;
    use federation::CredentialKind;
    use std::sync::Arc;
    let origin = "https://consent-registry.example";
    let aud = "decentralized_identifier:did:web:hospital-a.test";
    let subject = json!({
        "patientIdentifiers": [
            {"custodian": HOSPITAL, "system": "urn:oid:2.16.840.1.113883.3.1001", "value": "MRN-0042"},
            {"custodian": "did:web:hospital-b.test", "system": "https://hospital-b.test/mrn", "value": "B-7"},
            {"custodian": "did:web:clinic-c.test", "system": "https://clinic-c.test/id", "value": "C-1"}
        ],
        "custodians": [HOSPITAL, "did:web:hospital-b.test"],
        "grantee": {"id": "did:web:hospital-b.test", "kind": "organization"},
        "provision": "permit",
        "domains": ["clinical"],
        "purposes": ["TREAT"],
        "dataClasses": ["Observation", "Condition"],
        "period": {"start": "2025-01-01T00:00:00Z"}
    });
    let (ok, answer) = sd_jwt_peer(
        "issue",
        &json!({
            "vct": format!("{origin}/vct/PatientConsentCredential"),
            "subject": subject,
            "aud": aud,
            "nonce": "their-nonce-1",
            "presentationFrame": {"provision": true, "grantee": true, "patientIdentifiers": {"0": true, "2": true}},
        }),
    );
    assert!(ok, "{answer}");
    let issuer = answer["issuer"].as_str().unwrap();
    let holder = answer["holder"].as_str().unwrap();
    let presented = answer["presented"].as_str().unwrap();

    let resolver = Arc::new(federation::did::DidResolver::new(false));
    // The issuer's registered origin: where its vct may be.
    resolver.allow_web(issuer, reqwest::Url::parse(origin).unwrap());
    let trust = federation::trust::StaticTrust::new();
    trust.add(CredentialKind::PatientConsent, issuer);
    let status = Arc::new(federation::status::StatusCache::new(
        resolver.clone(),
        std::time::Duration::from_secs(60),
        false,
    ));
    let verifier = Verifier::new(resolver, Arc::new(trust), status);
    let v = verifier
        .verify_sd_jwt_presentation(presented, aud, "their-nonce-1")
        .await
        .unwrap();
    assert_eq!(v.kind, CredentialKind::PatientConsent);
    assert_eq!(v.issuer, issuer);
    assert_eq!(v.holder.as_deref(), Some(holder));
    assert_eq!(v.subject["provision"], "permit");
    assert_eq!(v.subject["grantee"]["id"], "did:web:hospital-b.test");
    let values: Vec<&str> = v.subject["patientIdentifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["MRN-0042", "C-1"]);
    assert!(v.subject.get("custodians").is_none(), "{}", v.subject);
    assert!(v.checks.contains(&federation::Check::Disclosure));
    // The same presentation for another verifier, or another nonce: refused.
    let e = verifier
        .verify_sd_jwt_presentation(
            presented,
            "decentralized_identifier:did:web:x.test",
            "their-nonce-1",
        )
        .await
        .unwrap_err();
    assert_eq!(e.check, federation::Check::Domain);
    let e = verifier
        .verify_sd_jwt_presentation(presented, aud, "their-nonce-2")
        .await
        .unwrap_err();
    assert_eq!(e.check, federation::Check::Challenge);
    // Their issued credential, every disclosure revealed, as a single credential.
    let issued = answer["issued"].as_str().unwrap();
    let whole = verifier.verify_credential(&json!(issued)).await.unwrap();
    assert_eq!(whole.subject["custodians"].as_array().unwrap().len(), 2);
    assert_eq!(
        whole.subject["patientIdentifiers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
