//! Test support shared by the crates' tests: a small federation for library tests (a
//! credentialing office with a did:web and a real HTTP server publishing its DID document
//! and signed status list on loopback) and a stub gateway for the wallet's tests.

pub mod fhir_server;
pub mod forge;
pub mod fuzzing;
pub mod stub;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use federation::credentials::{self, CredentialKind, ProofFormat, StatusEntry};
use federation::did::DidResolver;
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::status::{Bitstring, StatusCache};
use federation::trust::StaticTrust;
use federation::verify::Verifier;
use serde_json::{json, Value};

pub struct Office {
    pub key: KeyPair,
    pub base: reqwest::Url,
    bits: Arc<Mutex<Bitstring>>,
    next_index: Mutex<usize>,
}

impl Office {
    fn list_url(&self) -> String {
        format!("{}status/revocation", self.base)
    }

    pub fn next_status(&self) -> StatusEntry {
        let mut n = self.next_index.lock().unwrap();
        *n += 7;
        StatusEntry::revocation(&self.list_url(), *n)
    }

    pub fn revoke(&self, entry: &StatusEntry) {
        let i: usize = entry.status_list_index.parse().unwrap();
        self.bits.lock().unwrap().set(i, true);
    }
}

#[derive(Clone)]
struct Served {
    key: Arc<KeyPair>,
    url: String,
    bits: Arc<Mutex<Bitstring>>,
}

/// Starts an office with `host` as its did:web name on a loopback port.
pub async fn start_office(host: &str) -> Office {
    let did = format!("did:web:{host}");
    let key = KeyPair::generate_did_web(&did, KeyAlgorithm::Ed25519).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = reqwest::Url::parse(&format!("http://{addr}/")).unwrap();
    let bits = Arc::new(Mutex::new(Bitstring::new()));
    let served = Served {
        key: Arc::new(key.clone()),
        url: format!("{base}status/revocation"),
        bits: bits.clone(),
    };
    let app = Router::new()
        .route(
            "/.well-known/did.json",
            get(|State(s): State<Served>| async move { Json(s.key.did_document().unwrap()) }),
        )
        .route(
            "/status/revocation",
            get(
                |State(s): State<Served>, headers: axum::http::HeaderMap| async move {
                    let bits = s.bits.lock().unwrap().clone();
                    // The same bits as a Token Status List to a client that asks for one,
                    // as `fedgate issuer` serves them (for SD-JWT VCs).
                    let wants_token_list = headers
                        .get("accept")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|a| a.contains(federation::status::TOKEN_LIST_MEDIA_TYPE));
                    if wants_token_list {
                        return federation::status::sign_token_list(
                            &s.key,
                            &s.url,
                            &bits,
                            chrono::Duration::minutes(5),
                        )
                        .unwrap();
                    }
                    let list = federation::status::list_credential(
                        s.key.did(),
                        &s.url,
                        &bits,
                        chrono::Duration::minutes(5),
                    )
                    .unwrap();
                    federation::status::sign_list(&list, &s.key).unwrap()
                },
            ),
        )
        .with_state(served);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Office {
        key,
        base,
        bits,
        next_index: Mutex::new(0),
    }
}

pub struct Fed {
    pub office: Office,
    pub other_office: Office,
    pub irb: Office,
    pub verifier: Verifier,
    pub trust: Arc<StaticTrust>,
}

pub async fn federation() -> Fed {
    let office = start_office("credentialing.test").await;
    let other_office = start_office("rogue.test").await;
    let irb = start_office("irb.test").await;
    let resolver = Arc::new(DidResolver::new(true));
    for o in [&office, &other_office, &irb] {
        resolver.allow_web(o.key.did(), o.base.clone());
    }
    let trust = Arc::new(
        StaticTrust::new()
            .trust(CredentialKind::ClinicianPrivilege, office.key.did())
            .trust(CredentialKind::ResearchStudy, irb.key.did())
            .trust(CredentialKind::PatientConsent, office.key.did()),
    );
    let status = Arc::new(StatusCache::new(
        resolver.clone(),
        Duration::from_secs(60),
        true,
    ));
    let verifier = Verifier::new(resolver, trust.clone(), status);
    Fed {
        office,
        other_office,
        irb,
        verifier,
        trust,
    }
}

pub const HOSPITAL_A: &str = "did:web:hospital-a.test";
pub const HOSPITAL_B: &str = "did:web:hospital-b.test";

pub fn privilege_subject(clinician: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Test Clinician",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": HOSPITAL_A,
        "privileges": [{"facility": HOSPITAL_B, "domains": ["clinical"], "actions": ["read"]}]
    })
}

pub fn consent_subject(patient: &str, grantee: &str) -> Value {
    json!({
        "id": patient,
        "patientIdentifiers": [{"custodian": HOSPITAL_B, "system": "urn:oid:2.16.840.1.113883.4.1", "value": "MRN-0001"}],
        "custodians": [HOSPITAL_B],
        "grantee": {"id": grantee, "kind": "clinician"},
        "provision": "permit",
        "domains": ["clinical"],
        "purposes": ["TREAT"],
        "dataClasses": ["Observation", "Condition"],
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"}
    })
}

pub fn study_subject(sponsor: &str) -> Value {
    json!({
        "id": "urn:fedgate:study:diabetes-2026",
        "title": "HbA1c outcomes",
        "sponsor": sponsor,
        "purposes": ["HRESCH"],
        "dataClasses": ["Condition", "Observation"],
        "aggregateOnly": true,
        "minCellSize": 11
    })
}

/// Issues a privilege from `office` with a status entry.
pub async fn privilege(
    office: &Office,
    clinician: &str,
    format: ProofFormat,
) -> (Value, StatusEntry) {
    let status = office.next_status();
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        office.key.did(),
        privilege_subject(clinician),
        Utc::now() - chrono::Duration::minutes(1),
        Some(Utc::now() + chrono::Duration::days(30)),
        Some(&status),
    );
    (
        credentials::issue(vc, &office.key, format).await.unwrap(),
        status,
    )
}

/// A consent self-issued by `patient`.
pub async fn self_issued_consent(patient: &KeyPair, grantee: &str, format: ProofFormat) -> Value {
    let vc = credentials::unsigned_credential(
        CredentialKind::PatientConsent,
        patient.did(),
        consent_subject(patient.did(), grantee),
        Utc::now() - chrono::Duration::minutes(1),
        Some(Utc::now() + chrono::Duration::days(30)),
        None,
    );
    credentials::issue(vc, patient, format).await.unwrap()
}

/// An allowed clinical access (purpose TREAT) by a requester at `custodian`, with a fresh
/// id and the current time, and nothing else set: tests change what they look at with
/// struct update syntax.
pub fn allowed_event(custodian: &str) -> federation::events::AccessEvent {
    use federation::events::{AccessEvent, Outcome};
    AccessEvent {
        id: AccessEvent::new_id(),
        time: chrono::Utc::now(),
        custodian: custodian.into(),
        requester_org: None,
        requester: Some("did:key:z6Mkrequester".into()),
        patient_ref: Some("ref-1".into()),
        patient_did_digests: vec![],
        domain: "clinical".into(),
        purpose: "TREAT".into(),
        data_classes: vec![],
        record_count: 1,
        decision: Outcome::Allow,
        decision_id: "d".into(),
        reasons: vec![],
        policy_digest: String::new(),
        credential_ids: vec![],
        failed_check: None,
        break_glass: false,
        justification: None,
        review_required: false,
        expires_at: None,
        privacy: None,
    }
}
