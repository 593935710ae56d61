//! Signed documents are read with the strict JSON reader: a `vc+jwt`, a `vp+jwt`, a status
//! list credential, a did:web document, an event batch and a Data Integrity document given
//! as bytes, each validly signed (or served) but with a key twice, invalid UTF-8, a lone
//! surrogate or nesting beyond the limit, are refused with the check `format` before
//! anything in them is acted on. (The manifest's cases are in federation's `registry.rs` unit tests.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::did::DidResolver;
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::status::{Bitstring, StatusCache};
use federation::trust::StaticTrust;
use federation::verify::Verifier;
use federation::Check;
use serde_json::{json, Value};
use test_support::forge::*;
use test_support::*;

fn binding() -> PresentationBinding {
    PresentationBinding {
        challenge: "nonce-123".into(),
        domain: HOSPITAL_B.into(),
    }
}

#[tokio::test]
async fn a_credential_signed_over_ambiguous_json_fails_format() {
    let fed = federation().await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent = self_issued_consent(&patient, "did:key:z6MkGrantee", ProofFormat::Jwt).await;
    let (header, payload) = jws_parts(consent.as_str().unwrap());

    // The same bytes signed the same way verify: what fails below is the JSON alone.
    let resigned = sign_raw_jws(&header, &payload, &patient);
    let ok = fed.verifier.verify_credential(&json!(resigned)).await;
    assert_eq!(ok.unwrap().subject["provision"], "permit");

    // The patient's software wrote "deny" then "permit": serde_json alone keeps the last.
    for (case, hostile) in hostile_json(&payload, "provision", "\"deny\"") {
        let jws = sign_raw_jws(&header, &hostile, &patient);
        let err = fed
            .verifier
            .verify_credential(&json!(jws))
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Format, "{case}: {err}");
        assert!(err.detail.contains("payload is not strict JSON"), "{case}");
    }
    // The protected header too: `alg` twice.
    let kid = patient.verification_method();
    let header = format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}","typ":"vc+jwt"}}"#);
    let jws = sign_raw_jws(header.as_bytes(), &payload, &patient);
    let err = fed
        .verifier
        .verify_credential(&json!(jws))
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Format, "{err}");
    assert!(err.detail.contains("protected header is not strict JSON"));
}

#[tokio::test]
async fn a_presentation_signed_over_ambiguous_json_fails_format() {
    let fed = federation().await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent = self_issued_consent(&patient, "did:key:z6MkGrantee", ProofFormat::Jwt).await;
    let vp = credentials::present(&[consent], &patient, &binding(), ProofFormat::Jwt)
        .await
        .unwrap();
    let (header, payload) = jws_parts(vp.as_str().unwrap());
    let resigned = sign_raw_jws(&header, &payload, &patient);
    fed.verifier
        .verify_presentation(&json!(resigned), &binding())
        .await
        .unwrap();

    for (case, hostile) in hostile_json(&payload, "nonce", "\"another-verifiers-nonce\"") {
        let jws = json!(sign_raw_jws(&header, &hostile, &patient));
        let err = fed
            .verifier
            .verify_presentation(&jws, &binding())
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Format, "{case}: {err}");
        assert_eq!(err.credential, None);
        // Reading the challenge refuses it the same way.
        assert_eq!(
            federation::verify::claimed_challenge(&jws).unwrap_err(),
            err
        );
    }
}

/// An issuer whose DID document and status list are whatever bytes the test serves.
struct HostileIssuer {
    key: KeyPair,
    base: reqwest::Url,
    did_doc: Arc<Mutex<Vec<u8>>>,
    list: Arc<Mutex<Vec<u8>>>,
}

impl HostileIssuer {
    async fn start(host: &str) -> HostileIssuer {
        let key =
            KeyPair::generate_did_web(&format!("did:web:{host}"), KeyAlgorithm::Ed25519).unwrap();
        let did_doc = Arc::new(Mutex::new(
            serde_json::to_vec(&key.did_document().unwrap()).unwrap(),
        ));
        let list = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base =
            reqwest::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        type Served = (Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<u8>>>);
        let app = Router::new()
            .route(
                "/.well-known/did.json",
                get(|State((doc, _)): State<Served>| async move { doc.lock().unwrap().clone() }),
            )
            .route(
                "/status/revocation",
                get(|State((_, list)): State<Served>| async move { list.lock().unwrap().clone() }),
            )
            .with_state((did_doc.clone(), list.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HostileIssuer {
            key,
            base,
            did_doc,
            list,
        }
    }

    fn list_url(&self) -> String {
        format!("{}status/revocation", self.base)
    }

    /// A fresh verifier (nothing cached) that trusts this issuer for privileges.
    fn verifier(&self) -> Verifier {
        let resolver = Arc::new(DidResolver::new(true));
        resolver.allow_web(self.key.did(), self.base.clone());
        let trust =
            Arc::new(StaticTrust::new().trust(CredentialKind::ClinicianPrivilege, self.key.did()));
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(60),
            true,
        ));
        Verifier::new(resolver, trust, status)
    }

    /// The list credential's payload with `bits`, and its signed header.
    fn list_parts(&self, bits: &Bitstring) -> (Vec<u8>, Vec<u8>) {
        let list = federation::status::list_credential(
            self.key.did(),
            &self.list_url(),
            bits,
            chrono::Duration::minutes(5),
        )
        .unwrap();
        let jws = federation::status::sign_list(&list, &self.key).unwrap();
        jws_parts(&jws)
    }

    async fn privilege(&self, index: usize) -> Value {
        let vc = credentials::unsigned_credential(
            CredentialKind::ClinicianPrivilege,
            self.key.did(),
            privilege_subject("did:key:z6MkClinician"),
            Utc::now() - chrono::Duration::minutes(1),
            Some(Utc::now() + chrono::Duration::days(30)),
            Some(&credentials::StatusEntry::revocation(
                &self.list_url(),
                index,
            )),
        );
        credentials::issue(vc, &self.key, ProofFormat::Jwt)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_status_list_signed_over_ambiguous_json_fails_format() {
    let issuer = HostileIssuer::start("lists.test").await;
    let index = 42;
    let vc = issuer.privilege(index).await;
    let (header, payload) = issuer.list_parts(&Bitstring::new());
    *issuer.list.lock().unwrap() = sign_raw_jws(&header, &payload, &issuer.key).into_bytes();
    issuer.verifier().verify_credential(&vc).await.unwrap();

    // The list says "revoked" first and "valid" second; a last-wins reader sees valid.
    let mut revoked = Bitstring::new();
    revoked.set(index, true);
    let first = format!("\"{}\"", revoked.encode().unwrap());
    for (case, hostile) in hostile_json(&payload, "encodedList", &first) {
        *issuer.list.lock().unwrap() = sign_raw_jws(&header, &hostile, &issuer.key).into_bytes();
        let err = issuer.verifier().verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::Format, "{case}: {err}");
        assert!(err.detail.contains("status list"), "{case}: {err}");
    }
}

#[tokio::test]
async fn an_ambiguous_did_web_document_fails_format() {
    let issuer = HostileIssuer::start("documents.test").await;
    let (header, payload) = issuer.list_parts(&Bitstring::new());
    *issuer.list.lock().unwrap() = sign_raw_jws(&header, &payload, &issuer.key).into_bytes();
    let vc = issuer.privilege(7).await;
    issuer.verifier().verify_credential(&vc).await.unwrap();

    let good = issuer.did_doc.lock().unwrap().clone();
    for (case, hostile) in hostile_json(&good, "assertionMethod", "[]") {
        *issuer.did_doc.lock().unwrap() = hostile;
        let err = issuer.verifier().verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::Format, "{case}: {err}");
        assert!(err.detail.contains("not strict JSON"), "{case}: {err}");
    }
}

/// A visibility service on loopback for which `member` reports.
async fn visibility_for(
    dir: &std::path::Path,
    member: &Office,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndid = \"did:web:visibility.test\"\nkey_file = \"visibility.key.json\"\ndata_dir = \"data\"\ndev_mode = true\ncheckpoint_interval_ms = 100\n[members]\n\"{}\" = \"{}\"\n",
        member.key.did(),
        member.base
    );
    let mut cfg = visibility::VisibilityConfig::from_toml(&text).unwrap();
    cfg.resolve_paths(dir);
    cfg.validate("visibility.toml").unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(visibility::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let addr = ready_rx.await.expect("the visibility service started");
    (format!("http://{addr}"), stop_tx)
}

fn access_event(custodian: &str) -> federation::events::AccessEvent {
    serde_json::from_value(json!({
        "id": federation::events::AccessEvent::new_id(),
        "time": Utc::now(),
        "custodian": custodian,
        "domain": "clinical",
        "purpose": "TREAT",
        "dataClasses": ["Observation"],
        "recordCount": 1,
        "decision": "allow",
        "decisionId": uuid::Uuid::new_v4().to_string(),
        "reasons": [],
        "policyDigest": "0".repeat(64),
    }))
    .unwrap()
}

#[tokio::test]
async fn an_event_batch_signed_over_ambiguous_json_fails_format_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_office("hospital-a.test").await;
    let (base, _stop) = visibility_for(dir.path(), &a).await;
    let client = federation::client::http_client();
    let post = |jws: String| {
        let request = client
            .post(format!("{base}/v1/batches"))
            .json(&json!({ "batch": jws }));
        async move { request.send().await.unwrap() }
    };
    let batch = json!({"custodian": a.key.did(), "events": [access_event(a.key.did())]});
    let good = federation::jose::sign(&batch, &a.key, "fedgate-batch+jwt").unwrap();
    let (header, payload) = jws_parts(&good);

    // The first custodian named is another organization's: readers disagree on whose
    // accesses these are.
    for (case, hostile) in hostile_json(&payload, "custodian", "\"did:web:hospital-b.test\"") {
        let resp = post(sign_raw_jws(&header, &hostile, &a.key)).await;
        assert_eq!(resp.status(), 400, "{case}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["check"], "format", "{case}: {problem}");
        assert!(problem["type"].as_str().unwrap().ends_with("invalid-batch"));
    }
    // Nothing was appended: the batch that is accepted is the log's first leaf.
    let resp = post(good).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["receipts"][0]["leafIndex"], 0, "{body}");
    assert_eq!(body["treeSize"], 1);
}

/// A Data Integrity document arriving as bytes (a file handed to the wallet, a message) is
/// read with the same strict reader before it is canonicalized and verified.
#[tokio::test]
async fn a_data_integrity_document_given_as_bytes_is_read_strictly() {
    let fed = federation().await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent =
        self_issued_consent(&patient, "did:key:z6MkGrantee", ProofFormat::DataIntegrity).await;
    let bytes = serde_json::to_vec(&consent).unwrap();
    let read = federation::verify::read_secured(&bytes).unwrap();
    fed.verifier.verify_credential(&read).await.unwrap();
    // A JWT, bare or as a JSON string, is passed on to the JWS reader.
    let jwt = self_issued_consent(&patient, "did:key:z6MkGrantee", ProofFormat::Jwt).await;
    for form in [
        jwt.as_str().unwrap().to_string(),
        serde_json::to_string(&jwt).unwrap(),
    ] {
        assert_eq!(
            federation::verify::read_secured(form.as_bytes()).unwrap(),
            jwt
        );
    }

    for (case, hostile) in hostile_json(&bytes, "provision", "\"deny\"") {
        let err = federation::verify::read_secured(&hostile).unwrap_err();
        assert_eq!(err.check, Check::Format, "{case}: {err}");
    }
}
