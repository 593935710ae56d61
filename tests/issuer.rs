//! The issuer service as a separate process: VC API round trips in both formats, the
//! joiner/mover/leaver lifecycle, revocation push, and bad input.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::Service;

const OFFICE: &str = "did:web:credentialing.test";
const TOKEN: &str = "test-admin-token-0123456789abcdef";
const HOSPITAL_A: &str = "did:web:hospital-a.test";
const HOSPITAL_B: &str = "did:web:hospital-b.test";
const HOSPITAL_C: &str = "did:web:hospital-c.test";

struct Office {
    svc: Service,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn start_office() -> Office {
    let (svc, dir) = support::start_office(
        OFFICE,
        TOKEN,
        "status_list_ttl_secs = 30\n[limits]\nmax_body_bytes = 65536\n",
    );
    Office {
        svc,
        http: support::unpooled_client(),
        _dir: dir,
    }
}

impl Office {
    async fn post(&self, path: &str, body: &Value, admin: bool) -> (u16, Value) {
        let mut req = self.http.post(self.svc.url(path)).json(body);
        if admin {
            req = req.bearer_auth(TOKEN);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(ct, "application/problem+json", "{path}: {body}");
        }
        (status, body)
    }

    async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .post(self.svc.url(path))
            .header("content-type", content_type)
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn verify(&self, vc: &Value) -> (u16, Value) {
        self.post(
            "/credentials/verify",
            &json!({"verifiableCredential": vc}),
            false,
        )
        .await
    }
}

fn privilege_subject(clinician: &str, facility: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Ada Test",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": HOSPITAL_A,
        "privileges": [{"facility": facility, "domains": ["clinical"], "actions": ["read"]}]
    })
}

fn credential(kind: &str, subject: Value) -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "type": ["VerifiableCredential", kind],
        "credentialSubject": subject,
    })
}

fn subjects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "ClinicianPrivilegeCredential",
            privilege_subject(
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                HOSPITAL_B,
            ),
        ),
        (
            "PatientConsentCredential",
            json!({
                "id": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                "patientIdentifiers": [{"custodian": HOSPITAL_B, "system": "urn:oid:1.2.3", "value": "MRN-1"}],
                "custodians": [HOSPITAL_B],
                "grantee": {"id": HOSPITAL_A, "kind": "organization"},
                "provision": "permit",
                "domains": ["clinical"],
                "purposes": ["TREAT"],
                "dataClasses": ["Observation"],
                "period": {"start": "2026-01-01T00:00:00Z"}
            }),
        ),
        (
            "ResearchStudyCredential",
            json!({
                "id": "urn:fedgate:study:s1",
                "title": "Study",
                "sponsor": "did:web:research.test",
                "purposes": ["HRESCH"],
                "dataClasses": ["Condition"],
                "aggregateOnly": true,
                "minCellSize": 11
            }),
        ),
    ]
}

#[tokio::test]
async fn issue_and_verify_every_type_in_both_formats_over_http() {
    let office = start_office();
    let (status, doc) = {
        let r = office
            .http
            .get(office.svc.url("/.well-known/did.json"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(doc["id"], OFFICE);

    for (kind, subject) in subjects() {
        for format in ["jwt", "data-integrity"] {
            let (status, body) = office
                .post(
                    "/credentials/issue",
                    &json!({"credential": credential(kind, subject.clone()), "options": {"format": format}}),
                    true,
                )
                .await;
            assert_eq!(status, 201, "{kind} {format}: {body}");
            let vc = &body["verifiableCredential"];
            assert_eq!(vc.is_string(), format == "jwt");
            let (status, verified) = office.verify(vc).await;
            assert_eq!(status, 200, "{kind} {format}: {verified}");
            assert!(verified["checks"]
                .as_array()
                .unwrap()
                .contains(&json!("status")));
            assert_eq!(verified["credential"]["kind"], kind);
        }
    }
}

#[tokio::test]
async fn admin_endpoints_need_the_token() {
    let office = start_office();
    let body =
        json!({"credential": credential("ClinicianPrivilegeCredential", subjects()[0].1.clone())});
    let (status, problem) = office.post("/credentials/issue", &body, false).await;
    assert_eq!(status, 401);
    assert_eq!(problem["status"], 401);
    let resp = office
        .http
        .post(office.svc.url("/credentials/issue"))
        .bearer_auth("wrong-token-wrong-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    for path in [
        "/v1/privileges",
        "/v1/credentials/urn:uuid:x/revoke",
        "/v1/privileges/urn:uuid:x/move",
    ] {
        let (status, _) = office.post(path, &json!({}), false).await;
        assert!(status == 401 || status == 422, "{path}: {status}");
    }
    let resp = office
        .http
        .get(
            office
                .svc
                .url(&format!("/v1/subjects/{HOSPITAL_A}/credentials")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn joiner_mover_leaver_with_revocation_push() {
    let office = start_office();
    let clinician = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

    // Subscribe to revocation events first.
    let mut events = office
        .http
        .get(office.svc.url("/v1/status/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    // Joiner.
    let (status, joined) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(clinician, HOSPITAL_B), "format": "jwt"}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let old_id = joined["id"].as_str().unwrap().to_string();
    let old_vc = joined["verifiableCredential"].clone();
    assert_eq!(office.verify(&old_vc).await.0, 200);

    // Mover: B -> C. The old one is revoked in the same step.
    let (status, moved) = office
        .post(
            &format!("/v1/privileges/{old_id}/move"),
            &json!({"privileges": [{"facility": HOSPITAL_C, "domains": ["clinical"], "actions": ["read"]}]}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{moved}");
    assert_eq!(moved["replaces"], old_id.as_str());
    let new_vc = moved["verifiableCredential"].clone();
    let (status, problem) = office.verify(&old_vc).await;
    assert_eq!(status, 422);
    assert_eq!(problem["check"], "status");
    let (status, verified) = office.verify(&new_vc).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(
        verified["credential"]["subject"]["privileges"][0]["facility"],
        HOSPITAL_C
    );

    // The push event for the mover arrived.
    let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .expect("revocation event in time")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("statusListCredential"), "{text}");

    // Listing by subject shows both, the old one revoked and replaced.
    let list: Value = office
        .http
        .get(
            office
                .svc
                .url(&format!("/v1/subjects/{clinician}/credentials")),
        )
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let creds = list["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2);
    let old = creds.iter().find(|c| c["id"] == old_id.as_str()).unwrap();
    assert!(old["revokedAt"].is_string());
    assert_eq!(old["replacedBy"], moved["id"]);

    // Leaver.
    let new_id = moved["id"].as_str().unwrap();
    let (status, revoked) = office
        .post(
            &format!("/v1/credentials/{new_id}/revoke"),
            &json!({}),
            true,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, problem) = office.verify(&new_vc).await;
    assert_eq!(status, 422);
    assert_eq!(problem["check"], "status");
    // Revoking twice is a conflict.
    let (status, _) = office
        .post(
            &format!("/v1/credentials/{new_id}/revoke"),
            &json!({}),
            true,
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn path_parameters_are_checked_malformed_400_unknown_404() {
    let office = start_office();
    let clinician = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
    let stranger = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH";
    let (status, joined) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(clinician, HOSPITAL_B), "format": "jwt"}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let id = joined["id"].as_str().unwrap().to_string();
    let get = |path: String| {
        let req = office.http.get(office.svc.url(&path)).bearer_auth(TOKEN);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };

    // Malformed: 400, naming the parameter, never echoing the value.
    for bad in [
        "..%2f..%2fetc",
        "did:web:..%2f..%2fetc",
        "did:key:abc",
        "did:example:x",
    ] {
        let (status, problem) = get(format!("/v1/subjects/{bad}/credentials")).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["parameter"], "did", "{problem}");
        assert!(!problem.to_string().contains("etc"), "{problem}");
    }
    for bad in ["..%2f..%2fetc", "no-scheme", "urn:a%20b"] {
        let (status, problem) = get(format!("/v1/credentials/{bad}")).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["parameter"], "id", "{problem}");
        let (status, _) = office
            .post(&format!("/v1/credentials/{bad}/revoke"), &json!({}), true)
            .await;
        assert_eq!(status, 400, "{bad}");
        let (status, _) = office
            .post(
                &format!("/v1/privileges/{bad}/move"),
                &json!({"privileges": [{"facility": HOSPITAL_C, "domains": ["clinical"], "actions": ["read"]}]}),
                true,
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }

    // Well-formed but unknown: 404.
    let (status, _) = get(format!("/v1/subjects/{stranger}/credentials")).await;
    assert_eq!(status, 404);
    let (status, _) = get("/v1/subjects/did:web:nobody.test/credentials".into()).await;
    assert_eq!(status, 404);
    let unknown = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (status, _) = get(format!("/v1/credentials/{unknown}")).await;
    assert_eq!(status, 404);
    let (status, _) = office
        .post(
            &format!("/v1/credentials/{unknown}/revoke"),
            &json!({}),
            true,
        )
        .await;
    assert_eq!(status, 404);

    // Known: 200.
    let (status, list) = get(format!("/v1/subjects/{clinician}/credentials")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["credentials"][0]["id"], id.as_str());
    let (status, record) = get(format!("/v1/credentials/{id}")).await;
    assert_eq!(status, 200, "{record}");
}

#[tokio::test]
async fn presentations_verify_endpoint_checks_the_binding() {
    use federation::credentials::{present, PresentationBinding, ProofFormat};
    use federation::keys::{KeyAlgorithm, KeyPair};
    let office = start_office();
    let holder = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (_, joined) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(holder.did(), HOSPITAL_B)}),
            true,
        )
        .await;
    let binding = PresentationBinding {
        challenge: "c-0123456789abcdef".into(),
        domain: HOSPITAL_B.into(),
    };
    for format in [ProofFormat::Jwt, ProofFormat::DataIntegrity] {
        let vp = present(
            &[joined["verifiableCredential"].clone()],
            &holder,
            &binding,
            format,
        )
        .await
        .unwrap();
        let ok = json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": binding.domain}});
        let (status, body) = office.post("/presentations/verify", &ok, false).await;
        assert_eq!(status, 200, "{body}");
        let wrong = json!({"verifiablePresentation": vp, "options": {"challenge": "other-challenge", "domain": binding.domain}});
        let (status, body) = office.post("/presentations/verify", &wrong, false).await;
        assert_eq!(status, 422);
        assert_eq!(body["check"], "challenge");
        let wrong = json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": HOSPITAL_A}});
        let (status, body) = office.post("/presentations/verify", &wrong, false).await;
        assert_eq!(status, 422);
        assert_eq!(body["check"], "domain");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    use base64::Engine;
    let office = start_office();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    // Malformed JSON.
    let (status, body) = office
        .raw(
            "/credentials/issue",
            "application/json",
            b"{\"credential\": ".to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["type"].as_str().unwrap().ends_with("malformed-json"));
    // Not JSON at all.
    let (status, _) = office
        .raw("/credentials/issue", "text/plain", b"hello".to_vec())
        .await;
    assert_eq!(status, 415);
    // Deeply nested.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, body) = office
        .raw("/credentials/verify", "application/json", deep.into_bytes())
        .await;
    assert_eq!(status, 400, "{body}");
    // Oversized (limit 64 KiB in this config).
    let big = json!({"credential": {"pad": "x".repeat(200_000)}});
    let (status, body) = office
        .raw(
            "/credentials/issue",
            "application/json",
            serde_json::to_vec(&big).unwrap(),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // Unknown credential type.
    let (status, body) = office
        .post(
            "/credentials/issue",
            &json!({"credential": credential("DriverLicenseCredential", json!({"id": "did:key:z"}))}),
            true,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("unknown credential type"));
    // Claims that violate the schema: the detail names the field.
    let mut subject = subjects()[0].1.clone();
    subject["role"] = json!("wizard");
    let (status, body) = office
        .post(
            "/credentials/issue",
            &json!({"credential": credential("ClinicianPrivilegeCredential", subject)}),
            true,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("/credentialSubject/role"));
    // Unknown option / proof format.
    let (status, _) = office
        .post(
            "/credentials/issue",
            &json!({"credential": credential("ClinicianPrivilegeCredential", subjects()[0].1.clone()), "options": {"format": "ldp_vc_zkp"}}),
            true,
        )
        .await;
    assert_eq!(status, 422);
    // alg: none, HS256 and an embedded jwk on verify.
    let payload = b64(&json!({"issuer": OFFICE}));
    for header in [
        json!({"alg": "none", "kid": format!("{OFFICE}#key-1")}),
        json!({"alg": "HS256", "kid": format!("{OFFICE}#key-1")}),
        json!({"alg": "EdDSA", "kid": format!("{OFFICE}#key-1"), "jwk": {"kty": "OKP"}}),
    ] {
        let jwt = format!("{}.{payload}.AAAA", b64(&header));
        let (status, body) = office.verify(&json!(jwt)).await;
        assert_eq!(status, 422, "{header}: {body}");
        assert_eq!(body["check"], "proof", "{header}: {body}");
    }
    // An unsupported Data Integrity suite.
    let mut vc = credential("ClinicianPrivilegeCredential", subjects()[0].1.clone());
    vc["issuer"] = json!(OFFICE);
    vc["proof"] = json!({"type": "Ed25519Signature2018", "proofPurpose": "assertionMethod", "verificationMethod": format!("{OFFICE}#key-1")});
    let (status, body) = office.verify(&vc).await;
    assert_eq!(status, 422);
    assert_eq!(body["check"], "proof");
    // The service is still serving.
    let resp = office
        .http
        .get(office.svc.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn key_inventory_lists_the_office_key() {
    let office = start_office();
    let inv: Value = office
        .http
        .get(office.svc.url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &inv["keys"][0];
    assert_eq!(key["did"], OFFICE);
    assert_eq!(key["verificationMethod"], format!("{OFFICE}#key-1"));
    assert_eq!(key["algorithm"], "Ed25519");
    assert!(key["created"].is_string());
    assert!(key.get("jwk").is_none() && key.get("privateJwk").is_none());
}

/// The SD-JWT VC of a joiner verifies (at the office's own verify endpoint and through a
/// verifier's pipeline over HTTP), its type metadata is served at its vct, and a leaver
/// shows on both lists the office publishes at one URL: the Bitstring Status List and the
/// Token Status List, at the same index.
#[tokio::test]
async fn sd_jwt_joiner_verifies_and_a_leaver_shows_on_both_status_lists() {
    use federation::keys::{KeyAlgorithm, KeyPair};
    use federation::sdjwt;
    use federation::status::Bitstring;
    let office = start_office();
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
    let (status, joined) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(clinician.did(), HOSPITAL_B), "format": "sd-jwt"}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let sd_jwt = joined["verifiableCredential"].as_str().unwrap().to_string();
    let index = joined["statusListIndex"].as_u64().unwrap() as usize;
    assert!(sd_jwt.ends_with('~'), "{sd_jwt}");

    // The office's own verify endpoint takes it as one credential.
    let (status, verified) = office.verify(&json!(sd_jwt)).await;
    assert_eq!(status, 200, "{verified}");
    assert!(
        verified["checks"]
            .as_array()
            .unwrap()
            .contains(&json!("disclosure")),
        "{verified}"
    );

    // The vct is served, with the type's metadata.
    let claims = sdjwt::revealed_claims(&sd_jwt).unwrap();
    let vct = claims["vct"].as_str().unwrap();
    assert_eq!(
        vct,
        office.svc.url("/vct/ClinicianPrivilegeCredential").as_str()
    );
    let meta: Value = office
        .http
        .get(vct)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["vct"], vct);
    let missing = office
        .http
        .get(office.svc.url("/vct/Nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // A verifier that knows the office presents nothing but the facility it needs.
    let resolver = std::sync::Arc::new(federation::did::DidResolver::new(true));
    resolver.allow_web(OFFICE, reqwest::Url::parse(&office.svc.url("/")).unwrap());
    let trust = federation::trust::StaticTrust::new();
    trust.add(federation::CredentialKind::ClinicianPrivilege, OFFICE);
    let status_cache = std::sync::Arc::new(federation::status::StatusCache::new(
        resolver.clone(),
        Duration::from_secs(60),
        true,
    ));
    let verifier = federation::verify::Verifier::new(
        resolver,
        std::sync::Arc::new(trust),
        status_cache.clone(),
    );
    let aud = "decentralized_identifier:did:web:hospital-b.test";
    let presented = sdjwt::present(
        &sd_jwt,
        &[vec![json!("privileges"), json!(0)]],
        aud,
        "nonce-1",
        &clinician,
    )
    .unwrap();
    let v = verifier
        .verify_sd_jwt_presentation(&presented, aud, "nonce-1")
        .await
        .unwrap();
    assert_eq!(v.subject["privileges"][0]["facility"], HOSPITAL_B);
    assert!(v.subject.get("name").is_none());

    // Leaver.
    let id = joined["id"].as_str().unwrap();
    let (status, revoked) = office
        .post(&format!("/v1/credentials/{id}/revoke"), &json!({}), true)
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["statusListIndex"], index);

    // Both lists, read from the wire.
    let list_url = office.svc.url("/status/revocation");
    let bitstring_jwt = office.http.get(&list_url).send().await.unwrap();
    assert_eq!(
        bitstring_jwt.headers()["content-type"],
        "application/vc+jwt"
    );
    let bitstring_jwt = bitstring_jwt.text().await.unwrap();
    let list = federation::jose::decode(&bitstring_jwt).unwrap().payload;
    let encoded = list["credentialSubject"]["encodedList"].as_str().unwrap();
    assert_eq!(Bitstring::decode(encoded).unwrap().get(index), Some(true));
    let token = office
        .http
        .get(&list_url)
        .header("accept", "application/statuslist+jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        token.headers()["content-type"],
        "application/statuslist+jwt"
    );
    let token = federation::jose::decode(&token.text().await.unwrap()).unwrap();
    assert_eq!(token.typ.as_deref(), Some("statuslist+jwt"));
    assert_eq!(token.payload["sub"], list_url);
    let lst = token.payload["status_list"]["lst"].as_str().unwrap();
    let bits = Bitstring::decode_token_list(lst).unwrap();
    assert_eq!(bits.get(index), Some(true));
    let revoked_bits = (0..bits.as_bytes().len() * 8)
        .filter(|i| bits.get(*i) == Some(true))
        .count();
    assert_eq!(revoked_bits, 1);

    // And verification fails on status, at the office and at the verifier.
    let (status, problem) = office.verify(&json!(sd_jwt)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["check"], "status");
    status_cache.invalidate(&list_url);
    let e = verifier
        .verify_sd_jwt_presentation(&presented, aud, "nonce-1")
        .await
        .unwrap_err();
    assert_eq!(e.check, federation::Check::Status, "{e}");
}

/// A mover of an SD-JWT VC privilege gets an SD-JWT VC (its old format) and the old one is
/// revoked; other types than the healthcare three are refused in sd-jwt.
#[tokio::test]
async fn sd_jwt_mover_keeps_the_format_and_revokes_the_old_one() {
    use federation::keys::{KeyAlgorithm, KeyPair};
    let office = start_office();
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (status, joined) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(clinician.did(), HOSPITAL_B), "format": "dc+sd-jwt"}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let old_id = joined["id"].as_str().unwrap();
    let (status, moved) = office
        .post(
            &format!("/v1/privileges/{old_id}/move"),
            &json!({"privileges": [{"facility": HOSPITAL_C, "domains": ["clinical"], "actions": ["read"]}]}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{moved}");
    let new = moved["verifiableCredential"].as_str().unwrap();
    let claims = federation::sdjwt::revealed_claims(new).unwrap();
    assert_eq!(claims["privileges"][0]["facility"], HOSPITAL_C);
    assert_eq!(claims["name"], "Dr. Ada Test");
    let (status, problem) = office.verify(&joined["verifiableCredential"]).await;
    assert_eq!(status, 422);
    assert_eq!(problem["check"], "status");
    assert_eq!(office.verify(&moved["verifiableCredential"]).await.0, 200);
    // A holder whose key is not in its DID cannot be given an SD-JWT VC.
    let (status, problem) = office
        .post(
            "/v1/privileges",
            &json!({"subject": privilege_subject(HOSPITAL_A, HOSPITAL_B), "format": "sd-jwt"}),
            true,
        )
        .await;
    assert_eq!(status, 422, "{problem}");
}
