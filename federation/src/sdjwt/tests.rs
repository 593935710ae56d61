//! SD-JWT VC: issuing, presenting and the pipeline's checks, against an office on loopback
//! (DID document and Token Status List served over HTTP).

use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use super::*;
use crate::credentials::{self, ProofFormat, StatusEntry};
use crate::did::DidResolver;
use crate::keys::{KeyAlgorithm, KeyPair};
use crate::status::{Bitstring, StatusCache};
use crate::trust::StaticTrust;
use crate::verify::{Check, VerifiedPresentation, Verifier, VerifyError};

const OFFICE: &str = "did:web:office.sdjwt.test";
const AUD: &str = "decentralized_identifier:did:web:hospital-b.example";

struct Office {
    key: KeyPair,
    base: String,
    list_url: String,
    bits: Arc<Mutex<Bitstring>>,
    verifier: Verifier,
}

async fn office(alg: KeyAlgorithm) -> Office {
    let key = KeyPair::generate_did_web(OFFICE, alg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let list_url = format!("{base}/status/revocation");
    let bits = Arc::new(Mutex::new(Bitstring::new()));
    let (signer, uri, served) = (key.clone(), list_url.clone(), bits.clone());
    let doc = key.did_document().unwrap();
    let app = axum::Router::new()
        .route(
            "/.well-known/did.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .route(
            "/status/revocation",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let bits = served.lock().unwrap().clone();
                let wants_token = headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains(crate::status::TOKEN_LIST_MEDIA_TYPE));
                // Only the Token Status List is read for SD-JWT VCs; the Bitstring list
                // at the same URL must never be taken for it.
                let body = if wants_token {
                    crate::status::sign_token_list(&signer, &uri, &bits, Duration::minutes(5))
                        .unwrap()
                } else {
                    let list = crate::status::list_credential(
                        signer.did(),
                        &uri,
                        &bits,
                        Duration::minutes(5),
                    )
                    .unwrap();
                    crate::status::sign_list(&list, &signer).unwrap()
                };
                async move { body }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let resolver = Arc::new(DidResolver::new(true));
    resolver.allow_web(OFFICE, reqwest::Url::parse(&format!("{base}/")).unwrap());
    let trust = StaticTrust::new();
    for kind in CredentialKind::ALL {
        trust.add(kind, OFFICE);
    }
    let status = Arc::new(StatusCache::new(
        resolver.clone(),
        std::time::Duration::from_secs(60),
        true,
    ));
    let verifier = Verifier::new(resolver, Arc::new(trust), status);
    Office {
        key,
        base,
        list_url,
        bits,
        verifier,
    }
}

fn privilege_subject(holder: &str) -> Value {
    json!({
        "id": holder,
        "name": "Dr. Ana Example",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": "did:web:hospital-a.example",
        "privileges": [
            {"facility": "did:web:hospital-a.example", "domains": ["clinical"], "actions": ["read", "detokenize"]},
            {"facility": "did:web:hospital-b.example", "domains": ["clinical", "research"], "actions": ["query"]},
            {"facility": "did:web:clinic-c.example", "domains": ["billing"], "actions": ["read"]}
        ]
    })
}

fn consent_subject(holder: &str) -> Value {
    json!({
        "id": holder,
        "patientIdentifiers": [
            {"custodian": "did:web:hospital-a.example", "system": "urn:oid:2.16.840.1.113883.3.1001", "value": "MRN-000123"},
            {"custodian": "did:web:hospital-b.example", "system": "https://hospital-b.example/fhir/mrn", "value": "B-77-0042"},
            {"custodian": "did:web:clinic-c.example", "system": "https://clinic-c.example/id", "value": "C-9"}
        ],
        "custodians": ["did:web:hospital-a.example", "did:web:hospital-b.example", "did:web:clinic-c.example"],
        "grantee": {"id": "did:web:hospital-b.example", "kind": "organization"},
        "provision": "permit",
        "domains": ["clinical", "research"],
        "purposes": ["TREAT", "HRESCH"],
        "dataClasses": ["Observation", "Condition"],
        "period": {"start": "2025-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"}
    })
}

fn study_subject(sponsor: &str) -> Value {
    json!({
        "id": "urn:fedgate:study:diabetes-outcomes-2025",
        "title": "Diabetes outcomes across two hospitals",
        "sponsor": sponsor,
        "irb": "IRB-2024-0117",
        "purposes": ["HRESCH"],
        "dataClasses": ["Observation", "Condition", "MedicationRequest"],
        "aggregateOnly": true,
        "minCellSize": 11
    })
}

fn subject_for(kind: CredentialKind, holder: &str) -> Value {
    match kind {
        CredentialKind::ClinicianPrivilege => privilege_subject(holder),
        CredentialKind::PatientConsent => consent_subject(holder),
        CredentialKind::ResearchStudy => study_subject(holder),
    }
}

impl Office {
    async fn issue(&self, kind: CredentialKind, holder: &KeyPair, index: usize) -> String {
        let status = StatusEntry::revocation(&self.list_url, index);
        let vc = credentials::unsigned_credential(
            kind,
            OFFICE,
            subject_for(kind, holder.did()),
            Utc::now() - Duration::hours(1),
            Some(Utc::now() + Duration::days(30)),
            Some(&status),
        );
        match credentials::issue(vc, &self.key, ProofFormat::SdJwt)
            .await
            .unwrap()
        {
            Value::String(s) => s,
            other => panic!("{other}"),
        }
    }

    /// The SD-JWT with its issuer-signed payload changed by `f` and signed again by the
    /// office: what a careless or hostile issuer could make.
    fn resign(&self, sd_jwt: &str, f: impl FnOnce(&mut Value)) -> String {
        let parts = split(sd_jwt).unwrap();
        let mut payload = unverified_payload(parts.jwt).unwrap();
        f(&mut payload);
        let jws = crate::jose::sign(&payload, &self.key, MEDIA_TYPE).unwrap();
        let mut out = format!("{jws}~");
        for d in parts.disclosures {
            out.push_str(d);
            out.push('~');
        }
        out
    }

    async fn verify(
        &self,
        presentation: &str,
    ) -> Result<crate::verify::VerifiedCredential, VerifyError> {
        self.verifier
            .verify_sd_jwt_presentation(presentation, AUD, "n-0S6_WzA2Mj")
            .await
    }
}

fn holder(alg: KeyAlgorithm) -> KeyPair {
    KeyPair::generate_did_key(alg).unwrap()
}

fn all_paths(sd_jwt: &str) -> Vec<ClaimPath> {
    claim_paths(sd_jwt).unwrap()
}

fn path(p: Value) -> ClaimPath {
    p.as_array().unwrap().clone()
}

fn check_of(r: Result<crate::verify::VerifiedCredential, VerifyError>) -> Check {
    match r {
        Ok(v) => panic!("verified: {:?}", v.subject),
        Err(e) => e.check,
    }
}

/// A disclosure of `[salt, name, value]` (or `[salt, value]` without a name).
fn disclosure(name: Option<&str>, value: Value) -> String {
    let arr = match name {
        Some(n) => json!(["c2FsdHNhbHRzYWx0", n, value]),
        None => json!(["c2FsdHNhbHRzYWx0", value]),
    };
    crate::b64::encode(&serde_json::to_vec(&arr).unwrap())
}

#[tokio::test]
async fn every_type_round_trips_fully_disclosed_for_both_key_types() {
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
        let office = office(alg).await;
        for (i, kind) in CredentialKind::ALL.into_iter().enumerate() {
            let h = holder(alg);
            let sd_jwt = office.issue(kind, &h, 10 + i).await;
            assert!(sd_jwt.ends_with('~'));
            let header: Value = serde_json::from_slice(
                &crate::b64::decode(sd_jwt.split('.').next().unwrap()).unwrap(),
            )
            .unwrap();
            assert_eq!(header["typ"], "dc+sd-jwt");
            assert_eq!(header["kid"], office.key.verification_method());
            // As a credential (a wallet importing it): no key binding needed.
            let held = office
                .verifier
                .verify_credential(&Value::String(sd_jwt.clone()))
                .await
                .unwrap();
            assert_eq!(held.format, ProofFormat::SdJwt);
            assert_eq!(*held.subject, subject_for(kind, h.did()), "{kind}");
            // Presented with everything disclosed: the subject is the credential's.
            let everything = all_paths(&sd_jwt);
            let presented = present(&sd_jwt, &everything, AUD, "n-0S6_WzA2Mj", &h).unwrap();
            let v = office.verify(&presented).await.unwrap();
            assert_eq!(v.kind, kind);
            assert_eq!(v.issuer, OFFICE);
            assert_eq!(*v.subject, subject_for(kind, h.did()), "{kind}");
            assert_eq!(v.holder.as_deref(), Some(h.did()));
            assert!(v
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with("urn:uuid:")));
            assert!(v.valid_until.is_some());
            for check in [
                Check::Format,
                Check::Proof,
                Check::Disclosure,
                Check::Validity,
                Check::Schema,
                Check::IssuerTrust,
                Check::HolderBinding,
                Check::Challenge,
                Check::Domain,
                Check::Status,
            ] {
                assert!(v.checks.contains(&check), "{kind}: {check}");
            }
            let mut disclosed = v.disclosed.unwrap();
            sort_paths(&mut disclosed);
            assert_eq!(disclosed, everything);
        }
    }
}

#[tokio::test]
async fn claims_and_array_elements_are_disclosures_with_decoys_and_sorted_digests() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::Ed25519);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 3)
        .await;
    let parts = split(&sd_jwt).unwrap();
    // 6 claims + 3 privileges.
    assert_eq!(parts.disclosures.len(), 9);
    let payload = unverified_payload(parts.jwt).unwrap();
    for never in [
        "iss", "sub", "jti", "iat", "nbf", "exp", "vct", "cnf", "status",
    ] {
        assert!(payload.get(never).is_some(), "{never} is always visible");
    }
    for hidden in ["name", "npi", "role", "privileges", "organization"] {
        assert!(payload.get(hidden).is_none(), "{hidden} is a disclosure");
    }
    assert_eq!(payload["_sd_alg"], "sha-256");
    assert_eq!(
        payload["vct"],
        format!("{}/vct/ClinicianPrivilegeCredential", office.base)
    );
    assert_eq!(payload["status"]["status_list"]["idx"], 3);
    assert_eq!(payload["status"]["status_list"]["uri"], office.list_url);
    assert_eq!(payload["cnf"]["jwk"]["crv"], "Ed25519");
    assert!(payload["cnf"]["jwk"].get("d").is_none());
    let sd: Vec<&str> = payload["_sd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    // Decoys: more digests than top-level disclosures, in sorted order.
    assert!(sd.len() > 6, "{}", sd.len());
    let mut sorted = sd.clone();
    sorted.sort();
    assert_eq!(sd, sorted);
    // The privileges array is made of element digests once revealed.
    let full = revealed_claims(&sd_jwt).unwrap();
    assert_eq!(full["privileges"].as_array().unwrap().len(), 3);
    assert!(full.get("_sd").is_none());
    assert_eq!(
        all_paths(&sd_jwt),
        vec![
            path(json!(["name"])),
            path(json!(["npi"])),
            path(json!(["organization"])),
            path(json!(["privileges"])),
            path(json!(["privileges", 0])),
            path(json!(["privileges", 1])),
            path(json!(["privileges", 2])),
            path(json!(["role"])),
            path(json!(["specialty"])),
        ]
    );
}

#[tokio::test]
async fn a_partial_presentation_discloses_only_what_was_chosen() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::Ed25519);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 4)
        .await;
    // The organization and the second privilege only.
    let chosen = [
        path(json!(["organization"])),
        path(json!(["privileges", 1])),
    ];
    let presented = present(&sd_jwt, &chosen, AUD, "n-0S6_WzA2Mj", &h).unwrap();
    let v = office.verify(&presented).await.unwrap();
    assert_eq!(
        *v.subject,
        json!({
            "id": h.did(),
            "organization": "did:web:hospital-a.example",
            "privileges": [{"facility": "did:web:hospital-b.example", "domains": ["clinical", "research"], "actions": ["query"]}]
        })
    );
    let mut disclosed = v.disclosed.unwrap();
    sort_paths(&mut disclosed);
    assert_eq!(
        disclosed,
        vec![
            path(json!(["organization"])),
            path(json!(["privileges"])),
            path(json!(["privileges", 0]))
        ]
    );
    // Every element (null), and nothing but always-visible claims.
    let all = present(
        &sd_jwt,
        &[path(json!(["privileges", null]))],
        AUD,
        "n-0S6_WzA2Mj",
        &h,
    )
    .unwrap();
    let v = office.verify(&all).await.unwrap();
    assert_eq!(v.subject["privileges"].as_array().unwrap().len(), 3);
    assert!(v.subject.get("name").is_none());
    let none = present(&sd_jwt, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    let v = office.verify(&none).await.unwrap();
    assert_eq!(*v.subject, json!({"id": h.did()}));
    assert_eq!(v.disclosed, Some(vec![]));
    // A consent: two of three patient identifiers.
    let consent = office.issue(CredentialKind::PatientConsent, &h, 5).await;
    let chosen = [
        path(json!(["patientIdentifiers", 0])),
        path(json!(["patientIdentifiers", 2])),
        path(json!(["provision"])),
    ];
    let v = office
        .verify(&present(&consent, &chosen, AUD, "n-0S6_WzA2Mj", &h).unwrap())
        .await
        .unwrap();
    let ids: Vec<&str> = v.subject["patientIdentifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["MRN-000123", "C-9"]);
    assert_eq!(v.subject["provision"], "permit");
    // A path the credential does not have is refused by the holder.
    for bad in [
        json!(["nope"]),
        json!(["privileges", 7]),
        json!([]),
        json!([true]),
    ] {
        assert!(matches!(
            present(&sd_jwt, &[path(bad)], AUD, "n", &h),
            Err(SdJwtError::NoSuchClaim(_))
        ));
    }
}

#[tokio::test]
async fn disclosures_that_rfc_9901_refuses_fail_disclosure() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::Ed25519);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 6)
        .await;
    let other = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 7)
        .await;
    let with_kb = |presented: String| {
        let kb = key_binding_jwt(&presented, AUD, "n-0S6_WzA2Mj", &h).unwrap();
        format!("{presented}{kb}")
    };
    let parts = split(&sd_jwt).unwrap();
    let foreign = split(&other).unwrap().disclosures[0].to_string();

    // A disclosure whose digest is not in the SD-JWT (another credential's).
    let p = with_kb(format!("{sd_jwt}{foreign}~"));
    let e = office.verify(&p).await.unwrap_err();
    assert_eq!(e.check, Check::Disclosure, "{e}");
    assert!(e.detail.contains("not in the SD-JWT"), "{e}");

    // A disclosure repeated.
    let p = with_kb(format!("{sd_jwt}{}~", parts.disclosures[0]));
    let e = office.verify(&p).await.unwrap_err();
    assert_eq!(e.check, Check::Disclosure, "{e}");
    assert!(e.detail.contains("twice"), "{e}");

    // `_sd_alg` other than sha-256, signed by the issuer.
    let p = with_kb(office.resign(&sd_jwt, |p| p["_sd_alg"] = json!("sha-512")));
    assert_eq!(check_of(office.verify(&p).await), Check::Disclosure);
    // No `_sd_alg` at all means sha-256 (RFC 9901 §4.1.1).
    let p = with_kb(office.resign(&sd_jwt, |p| {
        p.as_object_mut().unwrap().remove("_sd_alg");
    }));
    office.verify(&p).await.unwrap();

    // Disclosures named `_sd` and `...`, their digests signed into the payload.
    for name in ["_sd", "..."] {
        let d = disclosure(Some(name), json!(["x"]));
        let signed = office.resign(&sd_jwt, |p| {
            p["_sd"].as_array_mut().unwrap().push(json!(digest(&d)));
        });
        let e = office
            .verify(&with_kb(format!("{signed}{d}~")))
            .await
            .unwrap_err();
        assert_eq!(e.check, Check::Disclosure, "{name}: {e}");
    }

    // A digest twice in the payload.
    let signed = office.resign(&sd_jwt, |p| {
        let first = p["_sd"][0].clone();
        p["_sd"].as_array_mut().unwrap().push(first);
    });
    assert_eq!(
        check_of(office.verify(&with_kb(signed)).await),
        Check::Disclosure
    );

    // A disclosed claim that overwrites an always-visible one (`iss`).
    let d = disclosure(Some("iss"), json!("did:web:evil.example"));
    let signed = office.resign(&sd_jwt, |p| {
        p["_sd"].as_array_mut().unwrap().push(json!(digest(&d)));
    });
    assert_eq!(
        check_of(office.verify(&with_kb(format!("{signed}{d}~"))).await),
        Check::Disclosure
    );

    // An array element's disclosure put where a property's digest is, and malformed ones.
    let element = disclosure(None, json!("x"));
    let signed = office.resign(&sd_jwt, |p| {
        p["_sd"]
            .as_array_mut()
            .unwrap()
            .push(json!(digest(&element)));
    });
    assert_eq!(
        check_of(office.verify(&with_kb(format!("{signed}{element}~"))).await),
        Check::Disclosure
    );
    for bad in [
        crate::b64::encode(b"[\"salt\"]"),
        crate::b64::encode(b"{\"a\":1}"),
        crate::b64::encode(b"[\"salt\", 5, \"x\"]"),
        crate::b64::encode(b"[\"s\",\"a\",1,\"a\",2]"),
        "!!not-base64!!".to_string(),
    ] {
        let e = office
            .verify(&with_kb(format!("{sd_jwt}{bad}~")))
            .await
            .unwrap_err();
        assert_eq!(e.check, Check::Disclosure, "{bad}: {e}");
    }
    // A changed disclosure is one whose digest is not there.
    let mut tampered = crate::b64::decode(parts.disclosures[0]).unwrap();
    tampered.extend_from_slice(b" ");
    let p = with_kb(format!("{sd_jwt}{}~", crate::b64::encode(&tampered)));
    assert_eq!(check_of(office.verify(&p).await), Check::Disclosure);
}

#[tokio::test]
async fn the_key_binding_jwt_is_mandatory_and_bound_to_audience_nonce_time_and_key() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::P256);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 8)
        .await;
    let chosen = [path(json!(["role"]))];
    let good = present(&sd_jwt, &chosen, AUD, "n-0S6_WzA2Mj", &h).unwrap();
    office.verify(&good).await.unwrap();
    let presented = &good[..good.rfind('~').unwrap() + 1];

    // Missing.
    let e = office.verify(presented).await.unwrap_err();
    assert_eq!(e.check, Check::HolderBinding);
    assert!(e.detail.contains("no key binding"), "{e}");
    // For another audience, another nonce.
    let p = present(
        &sd_jwt,
        &chosen,
        "decentralized_identifier:did:web:other.example",
        "n-0S6_WzA2Mj",
        &h,
    )
    .unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Domain);
    let p = present(&sd_jwt, &chosen, AUD, "another-nonce", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Challenge);
    // Too old, and from the future.
    for iat in [
        Utc::now().timestamp() - KB_MAX_AGE_SECS - 3600,
        Utc::now().timestamp() + 3600,
    ] {
        let kb = key_binding_jwt_at(presented, AUD, "n-0S6_WzA2Mj", &h, iat).unwrap();
        let e = office
            .verify(&format!("{presented}{kb}"))
            .await
            .unwrap_err();
        assert_eq!(e.check, Check::Validity, "{e}");
    }
    // A KB-JWT over another presentation (wrong sd_hash): here, one disclosure dropped.
    let fewer = format!("{}~", parts_jwt(&sd_jwt));
    let kb = good.rsplit('~').next().unwrap();
    let e = office.verify(&format!("{fewer}{kb}")).await.unwrap_err();
    assert_eq!(e.check, Check::HolderBinding, "{e}");
    assert!(e.detail.contains("sd_hash"), "{e}");
    // Signed by another key than cnf (the same algorithm, and the other one).
    for thief in [holder(KeyAlgorithm::P256), holder(KeyAlgorithm::Ed25519)] {
        let kb = key_binding_jwt(presented, AUD, "n-0S6_WzA2Mj", &thief).unwrap();
        let e = office
            .verify(&format!("{presented}{kb}"))
            .await
            .unwrap_err();
        assert_eq!(e.check, Check::HolderBinding, "{e}");
    }
    // typ other than kb+jwt, alg none.
    let kb = good.rsplit('~').next().unwrap();
    let (_, rest) = kb.split_once('.').unwrap();
    for header in [
        json!({"alg": "ES256", "typ": "JWT"}),
        json!({"alg": "none", "typ": "kb+jwt"}),
    ] {
        let forged = format!(
            "{}.{rest}",
            crate::b64::encode(&serde_json::to_vec(&header).unwrap())
        );
        let e = office
            .verify(&format!("{presented}{forged}"))
            .await
            .unwrap_err();
        assert_eq!(e.check, Check::Format, "{e}");
    }
    // A KB-JWT replayed to another verifier fails there on its audience; the same one
    // twice at one verifier is the verifier's nonce to consume (single use).
    let e = office
        .verifier
        .verify_sd_jwt_presentation(
            &good,
            "decentralized_identifier:did:web:c.example",
            "n-0S6_WzA2Mj",
        )
        .await
        .unwrap_err();
    assert_eq!(e.check, Check::Domain);
}

fn parts_jwt(sd_jwt: &str) -> &str {
    split(sd_jwt).unwrap().jwt
}

#[tokio::test]
async fn the_holder_key_must_be_the_subjects_and_the_issuer_must_be_trusted() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::Ed25519);
    let other = holder(KeyAlgorithm::Ed25519);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 9)
        .await;
    // cnf is another key than the subject DID's: the holder of that key cannot pass as sub.
    let signed = office.resign(&sd_jwt, |p| {
        p["cnf"]["jwk"] = serde_json::to_value(other.public_jwk()).unwrap();
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &other).unwrap();
    let e = office.verify(&p).await.unwrap_err();
    assert_eq!(e.check, Check::HolderBinding, "{e}");
    // No cnf at all.
    let signed = office.resign(&sd_jwt, |p| {
        p.as_object_mut().unwrap().remove("cnf");
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::HolderBinding);
    // Another typ, a vct that names no type, a vct on another origin.
    let jws = {
        let payload = unverified_payload(parts_jwt(&sd_jwt)).unwrap();
        crate::jose::sign(&payload, &office.key, "vc+sd-jwt").unwrap()
    };
    let p = present(&format!("{jws}~"), &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Format);
    let signed = office.resign(&sd_jwt, |p| {
        p["vct"] = json!(format!("{}/vct/Other", office.base));
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Format);
    let signed = office.resign(&sd_jwt, |p| {
        p["vct"] = json!("https://elsewhere.example/vct/ClinicianPrivilegeCredential");
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::IssuerTrust);
    // A tampered signature, an issuer that is not the signer.
    let mut forged = sd_jwt.clone();
    let dot = forged.find('~').unwrap() - 3;
    forged.replace_range(dot..dot + 2, "AA");
    let p = present(&forged, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Proof);
    let signed = office.resign(&sd_jwt, |p| {
        p["iss"] = json!("did:web:someone-else.example")
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Proof);
    // Expired.
    let signed = office.resign(&sd_jwt, |p| {
        p["exp"] = json!(Utc::now().timestamp() - 3600);
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Validity);
    // A privilege without status.
    let signed = office.resign(&sd_jwt, |p| {
        p.as_object_mut().unwrap().remove("status");
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    assert_eq!(check_of(office.verify(&p).await), Check::Status);
    // A disclosed value the type's schema refuses (an unknown role shape).
    let d = disclosure(Some("role"), json!(42));
    let signed = office.resign(&sd_jwt, |p| {
        p["_sd"].as_array_mut().unwrap().push(json!(digest(&d)));
    });
    let stripped = {
        // Without the real `role` disclosure, so that the forged one is the only role.
        let everything = all_paths(&sd_jwt);
        let keep: Vec<ClaimPath> = everything.into_iter().filter(|p| p[0] != "role").collect();
        let chosen = present(&signed, &keep, AUD, "x", &h).unwrap();
        chosen[..chosen.rfind('~').unwrap() + 1].to_string()
    };
    let presented = format!("{stripped}{d}~");
    let kb = key_binding_jwt(&presented, AUD, "n-0S6_WzA2Mj", &h).unwrap();
    let e = office
        .verify(&format!("{presented}{kb}"))
        .await
        .unwrap_err();
    assert_eq!(e.check, Check::Schema, "{e}");
}

#[tokio::test]
async fn a_revoked_credential_fails_status_through_the_token_status_list() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let h = holder(KeyAlgorithm::Ed25519);
    let sd_jwt = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 42)
        .await;
    let p = present(&sd_jwt, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    office.verify(&p).await.unwrap();
    office.bits.lock().unwrap().set(42, true);
    office.verifier.status.invalidate(&office.list_url);
    let e = office.verify(&p).await.unwrap_err();
    assert_eq!(e.check, Check::Status, "{e}");
    assert!(e.detail.contains("revoked"), "{e}");
    // Index 41 is still good: the bit order is the Token Status List's.
    let neighbour = office
        .issue(CredentialKind::ClinicianPrivilege, &h, 41)
        .await;
    let p = present(&neighbour, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    office.verify(&p).await.unwrap();
    // A status URI off the issuer's registered origin is never fetched.
    let signed = office.resign(&sd_jwt, |p| {
        p["status"]["status_list"]["uri"] = json!("http://127.0.0.1:9/status/revocation");
    });
    let p = present(&signed, &[], AUD, "n-0S6_WzA2Mj", &h).unwrap();
    let e = office.verify(&p).await.unwrap_err();
    assert_eq!(e.check, Check::Status, "{e}");
    assert!(e.detail.contains("registered origin"), "{e}");
}

#[tokio::test]
async fn did_jwk_holders_are_resolved_locally() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let key = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
    let did = crate::did::did_jwk_of(&key.public_jwk()).unwrap();
    assert!(did.starts_with("did:jwk:"));
    crate::did::parse_did(&did).unwrap();
    assert_eq!(
        crate::did::local_public_key(&did).unwrap().params,
        key.public_jwk().params
    );
    // A credential for the did:jwk subject, presented with that key.
    let status = StatusEntry::revocation(&office.list_url, 77);
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        OFFICE,
        privilege_subject(&did),
        Utc::now() - Duration::hours(1),
        None,
        Some(&status),
    );
    let Value::String(sd_jwt) = credentials::issue(vc, &office.key, ProofFormat::SdJwt)
        .await
        .unwrap()
    else {
        panic!()
    };
    let p = present(&sd_jwt, &[path(json!(["npi"]))], AUD, "n-0S6_WzA2Mj", &key).unwrap();
    let v = office.verify(&p).await.unwrap();
    assert_eq!(v.holder.as_deref(), Some(did.as_str()));
    assert_eq!(v.subject["npi"], "1234567893");
    // Private material in a did:jwk is refused.
    let mut private = serde_json::to_value(key.jwk()).unwrap();
    private.as_object_mut().unwrap().remove("kid");
    let leaked = format!(
        "did:jwk:{}",
        crate::b64::encode(&serde_json::to_vec(&private).unwrap())
    );
    assert!(matches!(
        crate::did::parse_did(&leaked),
        Err(crate::did::DidError::InvalidDidJwk { .. })
    ));
    assert!(crate::did::parse_did("did:jwk:e30").is_err());
    // A holder with a did:web cannot be given an SD-JWT VC (its key is not local).
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        OFFICE,
        privilege_subject("did:web:hospital-a.example"),
        Utc::now(),
        None,
        Some(&status),
    );
    assert!(credentials::issue(vc, &office.key, ProofFormat::SdJwt)
        .await
        .is_err());
}

#[tokio::test]
async fn credentials_of_one_holder_make_a_presentation_and_others_do_not() {
    let office = office(KeyAlgorithm::Ed25519).await;
    let clinician = holder(KeyAlgorithm::Ed25519);
    let privilege = office
        .issue(CredentialKind::ClinicianPrivilege, &clinician, 20)
        .await;
    let study = office
        .issue(CredentialKind::ResearchStudy, &clinician, 21)
        .await;
    let a = office
        .verify(
            &present(
                &privilege,
                &[path(json!(["organization"]))],
                AUD,
                "n-0S6_WzA2Mj",
                &clinician,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let b = office
        .verify(
            &present(
                &study,
                &[path(json!(["purposes"]))],
                AUD,
                "n-0S6_WzA2Mj",
                &clinician,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(b.holder.as_deref(), Some(clinician.did()));
    assert_eq!(b.subject["sponsor"], clinician.did());
    let vp = VerifiedPresentation::from_credentials(clinician.did(), vec![a.clone(), b]).unwrap();
    assert_eq!(vp.holder, clinician.did());
    assert_eq!(vp.format, ProofFormat::SdJwt);
    assert_eq!(vp.credentials.len(), 2);
    let stranger = holder(KeyAlgorithm::Ed25519);
    let e = VerifiedPresentation::from_credentials(stranger.did(), vec![a]).unwrap_err();
    assert_eq!(e.check, Check::HolderBinding);
    assert!(VerifiedPresentation::from_credentials(clinician.did(), vec![]).is_err());
}

#[test]
fn vct_names_a_type_under_a_base() {
    let v = vct(
        "https://office.example.org/",
        CredentialKind::PatientConsent,
    );
    assert_eq!(v, "https://office.example.org/vct/PatientConsentCredential");
    assert_eq!(kind_of_vct(&v), Some(CredentialKind::PatientConsent));
    assert_eq!(vct_base(&v), Some("https://office.example.org"));
    assert_eq!(kind_of_vct("https://office.example.org/vct/Other"), None);
    assert_eq!(kind_of_vct("urn:x"), None);
    let meta = type_metadata(
        "https://office.example.org",
        CredentialKind::ClinicianPrivilege,
    );
    assert_eq!(
        meta["vct"],
        "https://office.example.org/vct/ClinicianPrivilegeCredential"
    );
    assert!(meta["claims"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == json!(["privileges", null]) && c["sd"] == "always"));
}

#[test]
fn the_disclosure_check_is_in_the_access_event_vocabulary() {
    // A refused SD-JWT presentation is recorded with the check that failed.
    assert!(crate::events::VERIFICATION_CHECKS.contains(&Check::Disclosure.as_str()));
    assert_eq!(
        serde_json::to_value(Check::Disclosure).unwrap(),
        json!("disclosure")
    );
}
