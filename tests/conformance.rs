//! Standards conformance at the edges, through the HTTP endpoints of real processes, in
//! both formats (Data Integrity and `vc+jwt`): the issuer's generic VC API profile, the
//! verification of any VC Data Model 2.0 credential on the issuer and on a gateway, the
//! VCDM 2.0 details (issuer objects, language maps, caller-supplied status, schemas,
//! related resources), proof sets and chains, and JOSE as RFC 7515, 7519 and 9864 say.
//! docs/conformance.md lists what is and is not implemented.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{Gateway, GatewaySpec, Office};
use serde_json::{json, Value};
use support::{exe, repo};

const OFFICE: &str = "did:web:credentialing.test";
const HOSPITAL: &str = "did:web:hospital-a.test";
pub const TRAINING_CONTEXT: &str = "https://training.example/contexts/v1";
pub const TRAINING_SCHEMA: &str = "https://training.example/schemas/training.json";
const SYLLABUS: &str = "https://training.example/syllabus.txt";
const SYLLABUS_TEXT: &str = "Hand hygiene: the five moments.\n";

fn fixture(name: &str) -> PathBuf {
    repo("tests/fixtures/conformance").join(name)
}

/// The office's configuration beyond the harness's: one type beyond the three, with its
/// bundled context and schema, and a bundled related resource.
fn office_toml(dir: &Path, sandbox: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("syllabus.txt"), SYLLABUS_TEXT).unwrap();
    format!(
        r#"issue_any_type = {sandbox}
[[other_types]]
type = "TrainingCertificateCredential"
schema = "{TRAINING_SCHEMA}"
context = "{TRAINING_CONTEXT}"
[bundle.contexts]
"{TRAINING_CONTEXT}" = "{}"
[bundle.schemas]
"{TRAINING_SCHEMA}" = "{}"
[bundle.resources]
"{SYLLABUS}" = "syllabus.txt"
"#,
        fixture("training-v1.jsonld").display(),
        fixture("training.schema.json").display(),
    )
}

struct Services {
    office: Office,
    token: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn start(sandbox: bool) -> Services {
    let dir = tempfile::tempdir().unwrap();
    let office_dir = dir.path().join("office");
    let office = Office::start_with(
        &exe(),
        &office_dir,
        OFFICE,
        &office_toml(&office_dir, sandbox),
    )
    .unwrap();
    let token = std::fs::read_to_string(office_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    Services {
        office,
        token,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        dir,
    }
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
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{url}: {body}");
    }
    (status, body)
}

impl Services {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.office.url().trim_end_matches('/'), path)
    }

    async fn issue(&self, credential: Value, options: Value) -> (u16, Value) {
        post(
            &self.http,
            self.url("/credentials/issue"),
            &json!({"credential": credential, "options": options}),
            Some(&self.token),
        )
        .await
    }

    async fn verify(&self, vc: &Value) -> (u16, Value) {
        post(
            &self.http,
            self.url("/credentials/verify"),
            &json!({"verifiableCredential": vc, "options": {"checks": ["proof"]}}),
            None,
        )
        .await
    }
}

fn training(subject: &str) -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", TRAINING_CONTEXT],
        "type": ["VerifiableCredential", "TrainingCertificateCredential"],
        "name": "Hand hygiene",
        "description": [
            {"@value": "Completed the hand hygiene course", "@language": "en"},
            {"@value": "A suivi le cours d'hygiène des mains", "@language": "fr"}
        ],
        "credentialSubject": {"id": subject, "course": "Hand hygiene", "provider": "Ward 7"},
    })
}

/// The office's bundled context, for signing presentations over its credentials here.
fn bundle() -> federation::bundle::Bundle {
    let text = std::fs::read_to_string(fixture("training-v1.jsonld")).unwrap();
    federation::bundle::Bundle::empty()
        .with_contexts(std::collections::HashMap::from([(
            TRAINING_CONTEXT.to_string(),
            text,
        )]))
        .unwrap()
}

fn sri(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(bytes))
    )
}

const FORMATS: [&str; 2] = ["data-integrity", "jwt"];

/// The payload of a `vc+jwt`, or the credential itself.
fn claims(vc: &Value) -> Value {
    match vc {
        Value::String(jwt) => {
            let payload = jwt.split('.').nth(1).unwrap();
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap(),
            )
            .unwrap()
        }
        other => other.clone(),
    }
}

#[tokio::test]
async fn an_office_issues_and_verifies_types_beyond_the_three_in_both_formats() {
    let s = start(false);
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        let mut vc = training(nurse.did());
        vc["issuer"] =
            json!({"id": OFFICE, "name": {"@value": "Credentialing office", "@language": "en"}});
        vc["relatedResource"] =
            json!([{"id": SYLLABUS, "digestSRI": sri(SYLLABUS_TEXT.as_bytes())}]);
        // Supplied by the caller: an entry of this office's own list, completed by it.
        vc["credentialStatus"] =
            json!({"type": "BitstringStatusListEntry", "statusPurpose": "revocation"});
        let id = format!("urn:uuid:{}", uuid_like(format));
        let (status, body) = s
            .issue(vc, json!({"format": format, "credentialId": id}))
            .await;
        assert_eq!(status, 201, "{format}: {body}");
        let issued = body["verifiableCredential"].clone();
        let c = claims(&issued);
        assert_eq!(c["id"], id.as_str(), "{format}");
        assert_eq!(c["issuer"]["id"], OFFICE);
        assert_eq!(c["credentialSchema"]["id"], TRAINING_SCHEMA);
        assert_eq!(c["credentialSchema"]["type"], "JsonSchema");
        assert!(c["credentialStatus"]["statusListIndex"].is_string(), "{c}");
        assert_eq!(issued.is_string(), format == "jwt");

        let (status, body) = s.verify(&issued).await;
        assert_eq!(status, 200, "{format}: {body}");
        let checks: Vec<&str> = body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            [
                "format",
                "proof",
                "validity",
                "schema",
                "issuer-trust",
                "status"
            ],
            "{format}"
        );
        assert_eq!(body["warnings"], json!([]));
        assert_eq!(body["credential"]["issuer"], OFFICE);
        assert!(body["credential"]["types"]
            .as_array()
            .unwrap()
            .contains(&json!("TrainingCertificateCredential")));

        // Revoked: the status check refuses it, naming the check.
        let (status, _) = post(
            &s.http,
            s.url(&format!("/v1/credentials/{id}/revoke")),
            &json!({}),
            Some(&s.token),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = s.verify(&issued).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["check"], "status", "{body}");
        assert!(body["type"]
            .as_str()
            .unwrap()
            .ends_with("verification-failed"));
    }
}

fn uuid_like(salt: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(
        format!("{salt}{:?}", std::time::SystemTime::now()).as_bytes(),
    ));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[tokio::test]
async fn issue_requests_are_refused_with_reasons() {
    let s = start(false);
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let detail = |body: &Value| body["detail"].as_str().unwrap_or_default().to_string();
    let cases: Vec<(&str, Value, Value, &str)> = vec![
        (
            "a type the office does not issue",
            json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential", "DriverLicenseCredential"], "credentialSubject": {"id": nurse.did()}}),
            json!({}),
            "unknown credential type",
        ),
        (
            "a status entry of another list",
            {
                let mut vc = training(nurse.did());
                vc["credentialStatus"] = json!({"type": "BitstringStatusListEntry", "statusPurpose": "revocation", "statusListCredential": "https://elsewhere.example/status/1"});
                vc
            },
            json!({}),
            "statusListCredential is not this office's status list",
        ),
        (
            "a status index chosen by the caller",
            {
                let mut vc = training(nurse.did());
                vc["credentialStatus"] =
                    json!({"type": "BitstringStatusListEntry", "statusListIndex": "7"});
                vc
            },
            json!({}),
            "assigns the entry's id and statusListIndex",
        ),
        (
            "another status type",
            {
                let mut vc = training(nurse.did());
                vc["credentialStatus"] = json!({"type": "StatusList2021Entry"});
                vc
            },
            json!({}),
            "BitstringStatusListEntry",
        ),
        (
            "another issuer",
            {
                let mut vc = training(nurse.did());
                vc["issuer"] = json!({"id": "did:web:elsewhere.test"});
                vc
            },
            json!({}),
            "issuer must be",
        ),
        (
            "the type's schema",
            {
                let mut vc = training(nurse.did());
                vc["credentialSubject"] = json!({"id": nurse.did(), "course": ""});
                vc
            },
            json!({}),
            "/credentialSubject/course",
        ),
        (
            "an id that is not a URL",
            {
                let mut vc = training(nurse.did());
                vc["id"] = json!("certificate 7");
                vc
            },
            json!({}),
            "id must be a URL",
        ),
        (
            "validFrom without a time zone",
            {
                let mut vc = training(nurse.did());
                vc["validFrom"] = json!("2026-01-01T00:00:00");
                vc
            },
            json!({}),
            "time zone",
        ),
        (
            "a name that is neither a string nor a language value",
            {
                let mut vc = training(nurse.did());
                vc["name"] = json!({"en": "Hand hygiene"});
                vc
            },
            json!({}),
            "name must be",
        ),
        (
            "a related resource whose digest does not match the bundled one",
            {
                let mut vc = training(nurse.did());
                vc["relatedResource"] =
                    json!([{"id": SYLLABUS, "digestSRI": sri(b"another syllabus")}]);
                vc
            },
            json!({}),
            "does not match the bundled resource",
        ),
        (
            "a term no context defines, with Data Integrity",
            {
                let mut vc = training(nurse.did());
                vc["credentialSubject"]["favouriteColour"] = json!("blue");
                vc
            },
            json!({"format": "data-integrity"}),
            "cannot be secured with Data Integrity",
        ),
        (
            "selective disclosure",
            training(nurse.did()),
            json!({"mandatoryPointers": ["/issuer"]}),
            "mandatoryPointers is not supported",
        ),
        (
            "a cryptosuite the office's key does not sign",
            training(nurse.did()),
            json!({"cryptosuite": "ecdsa-rdfc-2019"}),
            "this office's key signs eddsa-rdfc-2022",
        ),
        (
            "a proof type it does not make",
            training(nurse.did()),
            json!({"proofType": "BbsBlsSignature2020"}),
            "proofType",
        ),
        (
            "options that disagree",
            training(nurse.did()),
            json!({"format": "jwt", "proofType": "DataIntegrityProof"}),
            "different proofs",
        ),
    ];
    for (what, credential, options, expected) in cases {
        let (status, body) = s.issue(credential, options).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert!(detail(&body).contains(expected), "{what}: {body}");
    }
    // The undefined term is refused only where it matters: a vc+jwt is not JSON-LD processed.
    let mut vc = training(nurse.did());
    vc["credentialSubject"]["favouriteColour"] = json!("blue");
    let (status, body) = s.issue(vc, json!({"format": "jwt"})).await;
    assert_eq!(status, 201, "{body}");
    // proofType and cryptosuite choose the format.
    let (status, body) = s
        .issue(
            training(nurse.did()),
            json!({"proofType": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["verifiableCredential"]["proof"].is_object());
    let (status, body) = s
        .issue(training(nurse.did()), json!({"proofType": "vc+jwt"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["verifiableCredential"].is_string());
}

#[tokio::test]
async fn a_sandbox_office_issues_any_type_and_the_three_keep_their_schemas() {
    let s = start(true);
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let board = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiableCredential", "BoardCertificationCredential"],
        "credentialSubject": {"id": nurse.did(), "board": "ABIM", "since": 2019},
    });
    // Any type as vc+jwt (no JSON-LD); with Data Integrity its terms must be defined.
    let (status, body) = s.issue(board.clone(), json!({"format": "jwt"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, verified) = s.verify(&body["verifiableCredential"]).await;
    assert_eq!(status, 200, "{verified}");
    // No trust is configured for this type: verified without an issuer-trust check.
    assert_eq!(
        verified["checks"],
        json!(["format", "proof", "validity", "status"])
    );
    let (status, body) = s.issue(board, json!({"format": "data-integrity"})).await;
    assert_eq!(status, 422, "{body}");
    // The healthcare types keep their strict schemas.
    let privilege = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "type": ["VerifiableCredential", "ClinicianPrivilegeCredential"],
        "credentialSubject": {"id": nurse.did(), "name": "N", "npi": "123", "role": "nurse",
            "specialty": "x", "organization": HOSPITAL, "privileges": []},
    });
    let (status, body) = s.issue(privilege, json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("/credentialSubject/npi"),
        "{body}"
    );
}

/// A compact JWS over exactly these bytes, validly signed by `key` (Ed25519).
fn sign_raw(header: &Value, payload: &Value, key: &KeyPair) -> String {
    use ed25519_dalek::Signer;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = key.ed25519_signing_key().unwrap().sign(input.as_bytes());
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// A generic credential by a did:key issuer, as a JWT payload with the registered claims.
fn peer_payload(issuer: &KeyPair, subject: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "id": "urn:uuid:0b0f7a8e-8f5e-4d43-9c57-6f3f1d3b2a10",
        "type": ["VerifiableCredential", "LicenceCredential"],
        "issuer": {"id": issuer.did(), "name": "A licensing board"},
        "validFrom": "2026-01-01T00:00:00+01:00",
        "credentialSubject": {"id": subject, "licence": "RN-7"},
        "termsOfUse": {"type": "LicencePolicy", "id": "https://board.example/terms"},
        "refreshService": {"type": "ManualRefresh", "id": "https://board.example/refresh"},
        "iss": issuer.did(), "sub": subject, "jti": "urn:uuid:0b0f7a8e-8f5e-4d43-9c57-6f3f1d3b2a10",
        "iat": now, "nbf": now - 5, "exp": now + 600,
    })
}

/// The verify endpoints of every service: the issuer's and a gateway's answer alike.
async fn verify_everywhere(
    http: &reqwest::Client,
    services: &[String],
    vc: &Value,
) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    for base in services {
        out.push(
            post(
                http,
                format!("{base}/credentials/verify"),
                &json!({"verifiableCredential": vc}),
                None,
            )
            .await,
        );
    }
    out
}

/// A gateway that knows the office's did:web and bundles the same context and schema.
fn start_gateway(s: &Services) -> Gateway {
    start_gateway_with(s, "")
}

/// [`start_gateway`] with more TOML tables of its own.
fn start_gateway_with(s: &Services, more: &str) -> Gateway {
    let extra_toml = format!(
        r#"{more}
[trust_types]
BoardCertificationCredential = ["did:web:certification-board.test"]
[did_web]
"{OFFICE}" = "{}"
[bundle.contexts]
"{TRAINING_CONTEXT}" = "{}"
[bundle.schemas]
"{TRAINING_SCHEMA}" = "{}"
"#,
        s.office.url(),
        fixture("training-v1.jsonld").display(),
        fixture("training.schema.json").display(),
    );
    Gateway::start(
        &exe(),
        &s.dir.path().join("gateway"),
        &GatewaySpec {
            did: HOSPITAL.into(),
            port: 0,
            records: vec![],
            policies: repo("policies"),
            extra_toml,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn jose_registered_claims_algorithms_and_headers_on_every_service() {
    let s = start(false);
    let gateway = start_gateway(&s);
    let services = [
        s.office.url().trim_end_matches('/').to_string(),
        gateway.url().trim_end_matches('/').to_string(),
    ];
    let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let kid = board.verification_method().to_string();
    let header = |alg: &str| json!({"alg": alg, "kid": kid, "typ": "vc+jwt"});
    let ok = peer_payload(&board, nurse.did());

    // Accepted: both names of the Ed25519 signature, registered claims, unknown
    // non-critical header parameters.
    let mut extra = header("Ed25519");
    extra["cty"] = json!("vc");
    extra["x-vendor"] = json!({"trace": 7});
    for (what, h) in [
        ("EdDSA", header("EdDSA")),
        ("Ed25519", header("Ed25519")),
        ("extra header", extra),
    ] {
        let jwt = json!(sign_raw(&h, &ok, &board));
        for (status, body) in verify_everywhere(&s.http, &services, &jwt).await {
            assert_eq!(status, 200, "{what}: {body}");
            assert_eq!(body["credential"]["issuer"], board.did().to_string());
            assert_eq!(body["credential"]["id"], ok["id"]);
            assert_eq!(body["credential"]["subject"]["id"], nurse.did().to_string());
        }
    }

    // Trust for a type beyond the three where it is configured: the gateway trusts only
    // one board for board certifications, the office has no trust for them.
    let mut certification = ok.clone();
    certification["type"] = json!(["VerifiableCredential", "BoardCertificationCredential"]);
    let jwt = json!(sign_raw(&header("EdDSA"), &certification, &board));
    let at = verify_everywhere(&s.http, &services, &jwt).await;
    assert_eq!(at[0].0, 200, "{}", at[0].1);
    assert_eq!(
        (at[1].0, at[1].1["check"].as_str()),
        (422, Some("issuer-trust")),
        "{}",
        at[1].1
    );

    // Refused, each naming its check, alike on every service.
    let now = chrono::Utc::now().timestamp();
    let with = |key: &str, v: Value| {
        let mut p = ok.clone();
        p[key] = v;
        p
    };
    let vc11 = json!({"iss": board.did(), "sub": nurse.did(), "vc": {"@context": ["https://www.w3.org/2018/credentials/v1"], "type": ["VerifiableCredential"], "credentialSubject": {"id": nurse.did()}}});
    let cases: Vec<(&str, Value, Value, &str, &str)> = vec![
        (
            "iss of another",
            header("EdDSA"),
            with("iss", json!("did:web:elsewhere.test")),
            "format",
            "iss is not the credential's issuer",
        ),
        (
            "sub of another",
            header("EdDSA"),
            with("sub", json!("did:key:z6Mkother")),
            "format",
            "sub is not the id",
        ),
        (
            "jti of another",
            header("EdDSA"),
            with("jti", json!("urn:uuid:other")),
            "format",
            "jti is not the credential's id",
        ),
        (
            "exp passed",
            header("EdDSA"),
            with("exp", json!(now - 600)),
            "validity",
            "expired (exp)",
        ),
        (
            "nbf ahead",
            header("EdDSA"),
            with("nbf", json!(now + 600)),
            "validity",
            "not yet valid (nbf)",
        ),
        (
            "iat ahead",
            header("EdDSA"),
            with("iat", json!(now + 600)),
            "validity",
            "issued in the future (iat)",
        ),
        (
            "exp not a number",
            header("EdDSA"),
            with("exp", json!("tomorrow")),
            "validity",
            "exp is not a NumericDate",
        ),
        (
            "VC 1.1",
            header("EdDSA"),
            vc11,
            "format",
            "VC Data Model 1.1 JWT (`vc` claim) is not supported",
        ),
        (
            "crit",
            json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"], "exp": 1}),
            ok.clone(),
            "proof",
            "crit",
        ),
        (
            "b64 false",
            json!({"alg": "EdDSA", "kid": kid, "b64": false}),
            ok.clone(),
            "proof",
            "b64",
        ),
        (
            "jku",
            json!({"alg": "EdDSA", "kid": kid, "jku": "https://evil.example/jwks"}),
            ok.clone(),
            "proof",
            "jku",
        ),
        (
            "x5u",
            json!({"alg": "EdDSA", "kid": kid, "x5u": "https://evil.example/x"}),
            ok.clone(),
            "proof",
            "x5u",
        ),
        (
            "x5c",
            json!({"alg": "EdDSA", "kid": kid, "x5c": ["MIIB"]}),
            ok.clone(),
            "proof",
            "x5c",
        ),
        (
            "jwk",
            json!({"alg": "EdDSA", "kid": kid, "jwk": {"kty": "OKP"}}),
            ok.clone(),
            "proof",
            "jwk",
        ),
        ("none", header("none"), ok.clone(), "proof", "none"),
        ("HS256", header("HS256"), ok.clone(), "proof", "HS256"),
        ("ES384", header("ES384"), ok.clone(), "proof", "ES384"),
        (
            "ES256 over an Ed25519 key",
            json!({"alg": "ES256", "kid": kid}),
            ok.clone(),
            "proof",
            "",
        ),
    ];
    for (what, h, payload, check, detail) in cases {
        let jwt = json!(sign_raw(&h, &payload, &board));
        for (status, body) in verify_everywhere(&s.http, &services, &jwt).await {
            assert_eq!(status, 422, "{what}: {body}");
            assert_eq!(body["check"], check, "{what}: {body}");
            assert!(
                body["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("/verification-failed"),
                "{what}: {body}"
            );
            assert!(
                body["detail"].as_str().unwrap().contains(detail),
                "{what}: {body}"
            );
            assert!(body.get("credential").is_some(), "{what}: {body}");
        }
    }
}

#[tokio::test]
async fn proof_sets_and_chains_through_the_verify_endpoints() {
    use federation::bundle::Bundle;
    use federation::credentials::add_proof;
    let s = start(false);
    let gateway = start_gateway(&s);
    let services = [
        s.office.url().trim_end_matches('/').to_string(),
        gateway.url().trim_end_matches('/').to_string(),
    ];
    let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    // A generic credential signed by a did:key issuer with the v2 context only.
    let unsigned = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "id": "urn:uuid:1c5e1d55-7d87-4c1d-8b1b-2f0f5a7e9c01",
        "type": ["VerifiableCredential"],
        "issuer": {"id": board.did(), "name": "A licensing board"},
        "name": "Licence",
        "validFrom": "2026-01-01T00:00:00Z",
        "credentialSubject": {"id": nurse.did()},
    });
    let bundle = Bundle::empty();
    let one = add_proof(unsigned, &board, None, &bundle).await.unwrap();
    let first_id = one["proof"][0]["id"].as_str().unwrap().to_string();
    let set = add_proof(one.clone(), &board, None, &bundle).await.unwrap();
    let chain = add_proof(one.clone(), &board, Some(&first_id), &bundle)
        .await
        .unwrap();
    assert_eq!(chain["proof"][1]["previousProof"], first_id.as_str());
    for (what, vc) in [
        ("one proof", &one),
        ("a proof set", &set),
        ("a proof chain", &chain),
    ] {
        for (status, body) in verify_everywhere(&s.http, &services, vc).await {
            assert_eq!(status, 200, "{what}: {body}");
        }
    }
    // Every proof of a set must verify: a forged second proof fails the whole.
    let mut forged = set.clone();
    forged["proof"][1]["proofValue"] = set["proof"][0]["proofValue"].clone();
    // A chained proof must name a proof that is present...
    let mut dangling = chain.clone();
    dangling["proof"][1]["previousProof"] = json!("urn:uuid:not-there");
    // ...and signed over it: without the proof it chains to, it does not verify.
    let mut cut = chain.clone();
    cut["proof"] = json!([chain["proof"][1].clone(), {
        "id": first_id, "type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
        "proofPurpose": "assertionMethod", "verificationMethod": chain["proof"][0]["verificationMethod"],
        "created": chain["proof"][0]["created"], "proofValue": set["proof"][1]["proofValue"]}]);
    // A proof by another DID than the issuer's.
    let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let strangers = add_proof(one.clone(), &stranger, None, &bundle)
        .await
        .unwrap();
    // A term no context defines (there is no @vocab): an error for Data Integrity, even
    // where the signature would not cover it.
    let mut undefined = one.clone();
    undefined["credentialSubject"]["favouriteColour"] = json!("blue");
    // A term defined by a context the verifier does not bundle (never fetched).
    let mut unknown_context = one.clone();
    unknown_context["@context"] = json!([
        "https://www.w3.org/ns/credentials/v2",
        "https://contexts.example/never-fetched/v1"
    ]);
    for (what, vc, check) in [
        ("an undefined term", &undefined, "proof"),
        ("a context that is not bundled", &unknown_context, "proof"),
        ("forged second proof", &forged, "proof"),
        ("dangling previousProof", &dangling, "proof"),
        ("chain over another proof", &cut, "proof"),
        ("a stranger's proof in the set", &strangers, "proof"),
    ] {
        for (status, body) in verify_everywhere(&s.http, &services, vc).await {
            assert_eq!(status, 422, "{what}: {body}");
            assert_eq!(body["check"], check, "{what}: {body}");
        }
    }
}

#[tokio::test]
async fn presentations_of_any_credentials_without_a_holder_and_the_same_problems() {
    use federation::credentials::{present, PresentationBinding, ProofFormat};
    let s = start(false);
    let gateway = start_gateway(&s);
    let services = [
        s.office.url().trim_end_matches('/').to_string(),
        gateway.url().trim_end_matches('/').to_string(),
    ];
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let binding = PresentationBinding {
        challenge: "c-0123456789abcdef".into(),
        domain: HOSPITAL.into(),
    };
    for format in FORMATS {
        let (status, body) = s
            .issue(training(nurse.did()), json!({"format": format}))
            .await;
        assert_eq!(status, 201, "{body}");
        let vc = body["verifiableCredential"].clone();
        let proof_format = if format == "jwt" {
            ProofFormat::Jwt
        } else {
            ProofFormat::DataIntegrity
        };
        let vp = match proof_format {
            ProofFormat::Jwt => present(std::slice::from_ref(&vc), &nurse, &binding, proof_format)
                .await
                .unwrap(),
            // The credential's context must be at hand to sign over it.
            ProofFormat::DataIntegrity => {
                let unsigned = json!({
                    "@context": ["https://www.w3.org/ns/credentials/v2"],
                    "type": ["VerifiablePresentation"],
                    "holder": nurse.did(),
                    "verifiableCredential": [vc],
                });
                federation::credentials::add_presentation_proof(
                    unsigned,
                    &nurse,
                    &binding,
                    &bundle(),
                )
                .await
                .unwrap()
            }
            ProofFormat::SdJwt => unreachable!("only data-integrity and jwt are presented here"),
        };
        for base in &services {
            let url = format!("{base}/presentations/verify");
            // Bound: the challenge and domain are compared; unknown options are ignored.
            let bound = json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": binding.domain, "checks": ["proof"]}});
            let (status, body) = post(&s.http, url.clone(), &bound, None).await;
            assert_eq!(status, 200, "{format} {base}: {body}");
            assert_eq!(
                body["checks"],
                json!(["format", "proof", "validity", "challenge", "domain"])
            );
            assert_eq!(body["presentation"]["holder"], nurse.did().to_string());
            // Without options: the proof and the credentials, no binding.
            let (status, body) = post(
                &s.http,
                url.clone(),
                &json!({"verifiablePresentation": vp}),
                None,
            )
            .await;
            assert_eq!(status, 200, "{format} {base}: {body}");
            assert_eq!(body["checks"], json!(["format", "proof", "validity"]));
            // A wrong challenge: the same problem shape on every service.
            let wrong = json!({"verifiablePresentation": vp, "options": {"challenge": "other", "domain": binding.domain}});
            let (status, body) = post(&s.http, url.clone(), &wrong, None).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["check"], "challenge");
            assert!(body["type"]
                .as_str()
                .unwrap()
                .ends_with("/verification-failed"));
            // Half a binding is a bad request.
            let half = json!({"verifiablePresentation": vp, "options": {"challenge": "c"}});
            let (status, _) = post(&s.http, url.clone(), &half, None).await;
            assert_eq!(status, 400);
        }
    }
    // A Data Integrity presentation without a holder, signed by the nurse's key.
    let (_, body) = s
        .issue(training(nurse.did()), json!({"format": "data-integrity"}))
        .await;
    let vc = body["verifiableCredential"].clone();
    let unsigned = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiablePresentation"],
        "verifiableCredential": [vc],
    });
    let vp = federation::credentials::add_presentation_proof(unsigned, &nurse, &binding, &bundle())
        .await
        .unwrap();
    for base in &services {
        let bound = json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": binding.domain}});
        let (status, body) = post(
            &s.http,
            format!("{base}/presentations/verify"),
            &bound,
            None,
        )
        .await;
        assert_eq!(status, 200, "{base}: {body}");
        assert!(body["presentation"]["holder"].is_null(), "{body}");
    }
}

#[tokio::test]
async fn credential_schema_checks_use_bundled_schemas_only() {
    let s = start(false);
    let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let kid = board.verification_method().to_string();
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "vc+jwt"});
    let mut training_vc = training(nurse.did());
    training_vc["issuer"] = json!(board.did());
    training_vc["credentialSchema"] = json!({"id": TRAINING_SCHEMA, "type": "JsonSchema"});
    // The office trusts only itself for the type it issues beyond the three.
    let (status, body) = s
        .verify(&json!(sign_raw(&header, &training_vc, &board)))
        .await;
    assert_eq!(
        (status, body["check"].as_str()),
        (422, Some("issuer-trust")),
        "{body}"
    );
    // A type no trust is configured for is verified without an issuer-trust check.
    training_vc["type"] = json!(["VerifiableCredential", "CourseCompletionCredential"]);
    let (status, body) = s
        .verify(&json!(sign_raw(&header, &training_vc, &board)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["checks"]
        .as_array()
        .unwrap()
        .contains(&json!("schema")));
    // Against the bundled schema: a missing course fails `schema`.
    let mut broken = training_vc.clone();
    broken["credentialSubject"] = json!({"id": nurse.did()});
    let (status, body) = s.verify(&json!(sign_raw(&header, &broken, &board))).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["check"], "schema");
    // A schema that is not bundled is never fetched: the check cannot be made.
    let mut elsewhere = training_vc.clone();
    elsewhere["credentialSchema"] =
        json!({"id": "https://schemas.example/other.json", "type": "JsonSchema"});
    let (status, body) = s
        .verify(&json!(sign_raw(&header, &elsewhere, &board)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["check"], "schema");
    assert!(body["detail"].as_str().unwrap().contains("never fetched"));
    // A related resource this service does not bundle is carried, with a warning.
    let mut related = training_vc.clone();
    related["relatedResource"] =
        json!([{"id": "https://training.example/other.pdf", "digestSRI": sri(b"x")}]);
    let (status, body) = s.verify(&json!(sign_raw(&header, &related, &board))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warnings"].as_array().unwrap().len(), 1, "{body}");
    // The shape of VC Data Model 2.0.
    for (what, mutate) in [
        ("issuer object without id", json!({"issuer": {"name": "x"}})),
        (
            "subject id not a URL",
            json!({"credentialSubject": {"id": "nurse 7"}}),
        ),
        (
            "VC 1.1 context",
            json!({"@context": ["https://www.w3.org/2018/credentials/v1"]}),
        ),
        ("description as a number", json!({"description": 7})),
    ] {
        let mut vc = training_vc.clone();
        for (k, v) in mutate.as_object().unwrap() {
            vc[k] = v.clone();
        }
        let (status, body) = s.verify(&json!(sign_raw(&header, &vc, &board))).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["check"], "format", "{what}: {body}");
    }
}

/// A credential of another type verifies at the gateway's `/credentials/verify`, and is
/// refused all the same when it is presented for access: access decisions take only the
/// three healthcare types.
#[tokio::test]
async fn access_decisions_still_take_only_the_three_types() {
    use federation::credentials::{present, ProofFormat};
    let s = start(false);
    let gateway = start_gateway(&s);
    let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let header = json!({"alg": "EdDSA", "kid": board.verification_method(), "typ": "vc+jwt"});
    let licence = json!(sign_raw(
        &header,
        &peer_payload(&board, nurse.did()),
        &board
    ));
    let base = gateway.url().trim_end_matches('/').to_string();
    let (status, body) = verify_everywhere(&s.http, std::slice::from_ref(&base), &licence)
        .await
        .remove(0);
    assert_eq!(status, 200, "{body}");

    let binding = gateway.challenge().await.unwrap();
    let vp = present(&[licence], &nurse, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let request = json!({
        "purpose": "TREAT",
        "patient": {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-1"},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, _, bytes) = gateway
        .post_raw("/v1/exchange/clinical", &request, None)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "format", "{problem}");
    assert!(
        problem.to_string().contains("unknown credential type"),
        "{problem}"
    );
}

/// An office whose DID is the did:key of its own key (`did = "did:key"`): it fills that
/// DID in as the issuer, keeps it across a restart, and what it issues verifies at the
/// office and at a gateway that knows nothing of it beyond the bundled context and schema.
#[tokio::test]
async fn a_did_key_office_issues_credentials_that_verify_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let office_dir = dir.path().join("office");
    let toml = office_toml(&office_dir, false);
    let office = Office::start_with(&exe(), &office_dir, "did:key", &toml).unwrap();
    let token = std::fs::read_to_string(office_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let mut s = Services {
        office,
        token,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        dir,
    };
    let nurse = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (status, body) = s.issue(training(nurse.did()), json!({})).await;
    assert_eq!(status, 201, "{body}");
    let issuer_did = claims(&body["verifiableCredential"])["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(issuer_did.starts_with("did:key:z6Mk"), "{issuer_did}");

    // A gateway that has not registered where this did:key serves its status lists
    // refuses its credentials at the status check: a credential must not choose the
    // address a verifier fetches.
    let unregistered = start_gateway(&s);
    let (status, body) = post(
        &s.http,
        format!("{}credentials/verify", unregistered.url()),
        &json!({"verifiableCredential": body["verifiableCredential"]}),
        None,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["check"], "status", "{body}");
    drop(unregistered);

    let gateway = start_gateway_with(
        &s,
        &format!(
            "[status_origins]\n\"{issuer_did}\" = \"{}\"",
            s.office.url()
        ),
    );
    for format in FORMATS {
        let (status, body) = s
            .issue(training(nurse.did()), json!({"format": format}))
            .await;
        assert_eq!(status, 201, "{format}: {body}");
        let issued = body["verifiableCredential"].clone();
        assert_eq!(claims(&issued)["issuer"], issuer_did.as_str(), "{format}");
        let services = [
            s.office.url().trim_end_matches('/').to_string(),
            gateway.url().trim_end_matches('/').to_string(),
        ];
        for (status, body) in verify_everywhere(&s.http, &services, &issued).await {
            assert_eq!(status, 200, "{format}: {body}");
            assert_eq!(body["credential"]["issuer"], issuer_did.as_str());
        }
    }
    // Another DID as the issuer is refused, naming this office's.
    let mut vc = training(nurse.did());
    vc["issuer"] = json!(OFFICE);
    let (status, body) = s.issue(vc, json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(&issuer_did),
        "{body}"
    );

    // The key file is the DID: after a restart the office is the same did:key.
    s.office.process.stop();
    let office = Office::start_with(&exe(), &office_dir, "did:key", &toml).unwrap();
    let keys: Value = s
        .http
        .get(format!("{}v1/keys", office.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(keys.to_string().contains(&issuer_did), "{keys}");
}
