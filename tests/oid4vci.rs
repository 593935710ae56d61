//! OpenID4VCI 1.0 (pre-authorized code) at the issuer as a separate process, with
//! `fedgate wallet receive` as its client: offer → token → nonce → credential → stored,
//! in each format and by reference; the mover's new privilege offered and the old one
//! revoked when it is received; and bad input, each refused in the protocol's own error
//! format with nothing issued.

mod support;

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::Signer as _;
use federation::keys::{KeyAlgorithm, KeyPair};
use serde_json::{json, Value};
use support::{fedgate, start, Service};

const OFFICE: &str = "did:web:credentialing.test";
const TOKEN: &str = "test-admin-token-0123456789abcdef";
const HOSPITAL_A: &str = "did:web:hospital-a.test";
const HOSPITAL_B: &str = "did:web:hospital-b.test";
const PRE_AUTH: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";

struct Office {
    svc: Service,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn start_office() -> Office {
    let (svc, dir) = support::start_office(OFFICE, TOKEN, "[oid4vci]\ntx_code_tries = 3\n");
    Office {
        svc,
        http: support::unpooled_client(),
        dir,
    }
}

/// The credential issuer identifier: the public URL without its final slash.
fn issuer_id(office: &Office) -> String {
    format!("http://{}", office.svc.addr)
}

fn subject(did: &str, facility: &str) -> Value {
    json!({
        "id": did,
        "name": "Dr. Ada Test",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": HOSPITAL_A,
        "privileges": [{"facility": facility, "domains": ["clinical"], "actions": ["read"]}]
    })
}

impl Office {
    async fn admin(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.svc.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get_admin(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.svc.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An offer of a joiner's privilege for `did` (or, with `did` None, for whoever's key
    /// proves it), in `formats`.
    async fn offer(&self, did: Option<&str>, options: Value) -> Value {
        let mut credential = json!({
            "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
            "type": ["VerifiableCredential", "ClinicianPrivilegeCredential"],
            "credentialSubject": subject(did.unwrap_or("did:key:placeholder"), HOSPITAL_B),
        });
        if did.is_none() {
            credential["credentialSubject"]
                .as_object_mut()
                .unwrap()
                .remove("id");
        }
        let mut body = options;
        body["credential"] = credential;
        let (status, answer) = self.admin("/v1/oid4vci/offers", &body).await;
        assert_eq!(status, 201, "{answer}");
        answer
    }

    /// POST to a protocol endpoint; asserts an error is the protocol's JSON, never
    /// problem+json.
    async fn protocol(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(ct, "application/json", "{body}");
            assert!(body["error"].is_string(), "{body}");
        }
        (status, body)
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.protocol(
            self.http
                .post(self.svc.url("/oid4vci/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    async fn token_for(&self, offer: &Value) -> String {
        let (status, answer) = self
            .token(&[
                ("grant_type", PRE_AUTH),
                ("pre-authorized_code", code(offer)),
                ("tx_code", offer["txCode"].as_str().unwrap()),
            ])
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["token_type"], "Bearer");
        answer["access_token"].as_str().unwrap().to_string()
    }

    async fn nonce(&self) -> String {
        let resp = self
            .http
            .post(self.svc.url("/oid4vci/nonce"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()
                .get("cache-control")
                .unwrap()
                .to_str()
                .unwrap(),
            "no-store"
        );
        let body: Value = resp.json().await.unwrap();
        body["c_nonce"].as_str().unwrap().to_string()
    }

    async fn credential(&self, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.svc.url("/oid4vci/credential"))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.protocol(req).await
    }

    /// How many credentials the office has issued to `did`.
    async fn issued_to(&self, did: &str) -> usize {
        let (status, body) = self
            .get_admin(&format!("/v1/subjects/{}/credentials", urlencode(did)))
            .await;
        match status {
            404 => 0,
            200 => body["credentials"].as_array().unwrap().len(),
            other => panic!("{other}: {body}"),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn code(offer: &Value) -> &str {
    offer["credentialOffer"]["grants"][PRE_AUTH]["pre-authorized_code"]
        .as_str()
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    federation::b64::encode(bytes)
}

/// A key proof with any header, signed by an Ed25519 did:key.
fn proof_with(header: Value, payload: Value, key: &KeyPair) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&payload).unwrap())
    );
    let sig = key
        .ed25519_signing_key()
        .unwrap()
        .sign(input.as_bytes())
        .to_bytes();
    format!("{input}.{}", b64(&sig))
}

fn header(key: &KeyPair) -> Value {
    json!({"alg": "EdDSA", "typ": "openid4vci-proof+jwt", "kid": key.verification_method()})
}

fn claims(aud: &str, nonce: &str) -> Value {
    json!({"aud": aud, "iat": chrono::Utc::now().timestamp(), "nonce": nonce})
}

fn request(configuration: &str, proof: &str) -> Value {
    json!({"credential_configuration_id": configuration, "proofs": {"jwt": [proof]}})
}

fn wallet(dir: &Path, office: &Office) -> String {
    wallet_trusting(
        dir,
        &json!({
            "trustedIssuers": {"ClinicianPrivilegeCredential": [OFFICE]},
            "didWeb": {OFFICE: office.svc.url("/")},
            "devMode": true
        }),
    )
}

/// A new wallet in `dir` with `trust` as its trust file; its holder DID.
fn wallet_trusting(dir: &Path, trust: &Value) -> String {
    let out = fedgate()
        .args(["wallet", "--json", "init", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    support::assert_ok(&out);
    let init: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::fs::write(dir.join("trust.json"), trust.to_string()).unwrap();
    init["did"].as_str().unwrap().to_string()
}

fn receive(dir: &Path, offer: &str, tx_code: Option<&str>) -> (bool, Value, String) {
    let mut args = vec![
        "wallet",
        "--json",
        "receive",
        "--dir",
        dir.to_str().unwrap(),
        offer,
        "--dev",
    ];
    if let Some(code) = tx_code {
        args.extend(["--tx-code", code]);
    }
    let out = fedgate().args(&args).output().unwrap();
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn metadata_names_the_issuer_and_every_configuration() {
    let office = start_office();
    let id = issuer_id(&office);
    let meta: Value = office
        .http
        .get(office.svc.url("/.well-known/openid-credential-issuer"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["credential_issuer"], id.as_str());
    assert_eq!(
        meta["credential_endpoint"],
        format!("{id}/oid4vci/credential")
    );
    assert_eq!(meta["nonce_endpoint"], format!("{id}/oid4vci/nonce"));
    let configs = meta["credential_configurations_supported"]
        .as_object()
        .unwrap();
    for type_name in [
        "ClinicianPrivilegeCredential",
        "PatientConsentCredential",
        "ResearchStudyCredential",
    ] {
        assert_eq!(configs[&format!("{type_name}_ldp")]["format"], "ldp_vc");
        assert_eq!(
            configs[&format!("{type_name}_jwt")]["format"],
            "jwt_vc_json"
        );
        let algs = &configs[&format!("{type_name}_jwt")]["proof_types_supported"]["jwt"]
            ["proof_signing_alg_values_supported"];
        assert!(algs.as_array().unwrap().contains(&json!("ES256")), "{algs}");
        let sd = &configs[&format!("{type_name}_sd_jwt")];
        assert_eq!(sd["format"], "dc+sd-jwt");
        assert_eq!(sd["vct"], format!("{id}/vct/{type_name}"));
    }
    let oauth: Value = office
        .http
        .get(office.svc.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oauth["issuer"], id.as_str());
    assert_eq!(oauth["token_endpoint"], format!("{id}/oid4vci/token"));
    assert_eq!(oauth["grant_types_supported"], json!([PRE_AUTH]));
    // The OpenAPI document lists the endpoints.
    let doc: Value = office
        .http
        .get(office.svc.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/.well-known/openid-credential-issuer",
        "/.well-known/oauth-authorization-server",
        "/oid4vci/token",
        "/oid4vci/nonce",
        "/oid4vci/credential",
        "/oid4vci/offers/{id}",
        "/v1/oid4vci/offers",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} not in the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn the_wallet_receives_each_format_by_value_and_by_reference() {
    let office = start_office();
    let wdir = office.dir.path().join("wallet");
    let did = wallet(&wdir, &office);
    let joiner = office.dir.path().join("joiner.json");
    std::fs::write(
        &joiner,
        json!({"subject": subject(&did, HOSPITAL_B)}).to_string(),
    )
    .unwrap();
    for (format, by_reference) in [
        ("ldp_vc", false),
        ("jwt_vc_json", false),
        ("dc+sd-jwt", false),
        ("ldp_vc", true),
    ] {
        // The office's CLI makes the offer through the admin API, and writes its QR codes.
        let png = office.dir.path().join("offer.png");
        let svg = office.dir.path().join("offer.svg");
        let out = fedgate()
            .args([
                "issuer",
                "offer",
                "--issuer",
                &office.svc.url("/"),
                "--token-file",
                office.dir.path().join("admin-token").to_str().unwrap(),
                "--joiner",
                joiner.to_str().unwrap(),
                "--format",
                format,
                "--qr-png",
                png.to_str().unwrap(),
                "--qr-svg",
                svg.to_str().unwrap(),
                "--dev",
                "--json",
            ])
            .output()
            .unwrap();
        support::assert_ok(&out);
        let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let tx = offer["txCode"].as_str().unwrap();
        assert_eq!(tx.len(), 6);
        let url = if by_reference {
            offer["credentialOfferUriUrl"].as_str().unwrap()
        } else {
            offer["credentialOfferUrl"].as_str().unwrap()
        };
        assert!(
            url.starts_with("openid-credential-offer://?credential_offer"),
            "{url}"
        );
        // Without its transaction code the wallet asks nothing of the issuer.
        let (ok, _, err) = receive(&wdir, url, None);
        assert!(!ok && err.contains("--tx-code"), "{err}");
        let (ok, received, err) = receive(&wdir, url, Some(tx));
        assert!(ok, "{format}: {err}");
        assert_eq!(received["oid4vciFormat"], format);
        assert_eq!(received["subject"], did.as_str());
        assert_eq!(received["kind"], "ClinicianPrivilegeCredential");
        // Issued through the office's one path: a record with a status list index.
        let id = received["id"].as_str().unwrap();
        let (status, record) = office
            .get_admin(&format!("/v1/credentials/{}", urlencode(id)))
            .await;
        assert_eq!(status, 200, "{record}");
        assert!(record["statusIndex"].is_u64(), "{record}");
        // The offer is single use: the same URL again is refused in OAuth's words.
        let (ok, _, err) = receive(&wdir, url, Some(tx));
        assert!(!ok, "a used offer was redeemed again");
        if by_reference {
            assert!(err.contains("404") || err.contains("not found"), "{err}");
        } else {
            assert!(err.contains("invalid_grant"), "{err}");
        }
    }
    assert_eq!(office.issued_to(&did).await, 4);
}

#[tokio::test]
async fn a_movers_new_privilege_is_offered_and_the_old_one_revoked_when_received() {
    let office = start_office();
    let wdir = office.dir.path().join("wallet");
    let did = wallet(&wdir, &office);
    let (status, joined) = office
        .admin(
            "/v1/privileges",
            &json!({"subject": subject(&did, HOSPITAL_B), "format": "jwt"}),
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    let old = joined["id"].as_str().unwrap().to_string();
    let (status, offer) = office
        .admin(
            &format!("/v1/privileges/{}/move", urlencode(&old)),
            &json!({
                "privileges": [{"facility": HOSPITAL_A, "domains": ["clinical"], "actions": ["read"]}],
                "offer": {"formats": ["jwt_vc_json"]}
            }),
        )
        .await;
    assert_eq!(status, 201, "{offer}");
    assert_eq!(offer["replaces"], old.as_str());
    // Until the wallet receives the new privilege, the old one stands.
    let (_, record) = office
        .get_admin(&format!("/v1/credentials/{}", urlencode(&old)))
        .await;
    assert!(record["revokedAt"].is_null(), "{record}");
    let (ok, received, err) = receive(
        &wdir,
        offer["credentialOfferUrl"].as_str().unwrap(),
        offer["txCode"].as_str(),
    );
    assert!(ok, "{err}");
    let new = received["id"].as_str().unwrap();
    let (_, record) = office
        .get_admin(&format!("/v1/credentials/{}", urlencode(&old)))
        .await;
    assert!(record["revokedAt"].is_string(), "{record}");
    assert_eq!(record["replacedBy"], new);
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_codes_in_oauth_errors() {
    let office = start_office();
    let offer = office.offer(None, json!({})).await;
    let c = code(&offer);
    // Missing transaction code; wrong grant type; missing code.
    let (s, e) = office
        .token(&[("grant_type", PRE_AUTH), ("pre-authorized_code", c)])
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    let (s, e) = office
        .token(&[("grant_type", "authorization_code"), ("code", c)])
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, e) = office.token(&[("grant_type", PRE_AUTH)]).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_request")));
    // Wrong transaction codes are capped: after three, the right one is refused too.
    let wrong = if offer["txCode"] == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        let (s, e) = office
            .token(&[
                ("grant_type", PRE_AUTH),
                ("pre-authorized_code", c),
                ("tx_code", wrong),
            ])
            .await;
        assert_eq!(
            (s, e["error"].as_str()),
            (400, Some("invalid_grant")),
            "{e}"
        );
    }
    let right = offer["txCode"].as_str().unwrap();
    let (s, e) = office
        .token(&[
            ("grant_type", PRE_AUTH),
            ("pre-authorized_code", c),
            ("tx_code", right),
        ])
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    // A used code; an offer without a transaction code given one; an expired offer.
    let used = office.offer(None, json!({})).await;
    office.token_for(&used).await;
    let (s, e) = office
        .token(&[
            ("grant_type", PRE_AUTH),
            ("pre-authorized_code", code(&used)),
            ("tx_code", used["txCode"].as_str().unwrap()),
        ])
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    let plain = office.offer(None, json!({"txCode": false})).await;
    assert!(plain["txCode"].is_null());
    let (s, e) = office
        .token(&[
            ("grant_type", PRE_AUTH),
            ("pre-authorized_code", code(&plain)),
            ("tx_code", "1"),
        ])
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_request")));
    let short = office.offer(None, json!({"expiresInSecs": 1})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, e) = office
        .token(&[
            ("grant_type", PRE_AUTH),
            ("pre-authorized_code", code(&short)),
            ("tx_code", short["txCode"].as_str().unwrap()),
        ])
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    // The expired offer is no longer served by reference either.
    let uri = short["credentialOfferUri"].as_str().unwrap();
    let status = office.http.get(uri).send().await.unwrap().status().as_u16();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_credential_endpoint_refuses_bad_proofs_and_issues_nothing() {
    let office = start_office();
    let aud = issuer_id(&office);
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let did = key.did().to_string();
    let offer = office
        .offer(Some(&did), json!({"formats": ["jwt_vc_json"]}))
        .await;
    let token = office.token_for(&offer).await;
    let config = "ClinicianPrivilegeCredential_jwt";

    // No access token.
    let nonce = office.nonce().await;
    let good = proof_with(header(&key), claims(&aud, &nonce), &key);
    let (s, e) = office.credential(None, &request(config, &good)).await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_token")));
    let (s, e) = office
        .credential(Some("not-a-token"), &request(config, &good))
        .await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_token")));
    // Unknown configuration; one not offered; no proofs; a draft `proof`.
    let (s, e) = office
        .credential(Some(&token), &request("NoSuchCredential_jwt", &good))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("unknown_credential_configuration"))
    );
    let (s, e) = office
        .credential(
            Some(&token),
            &request("ClinicianPrivilegeCredential_ldp", &good),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("credential_request_denied"))
    );
    let (s, e) = office
        .credential(
            Some(&token),
            &json!({"credential_configuration_id": config}),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_proof")));
    let (s, e) = office
        .credential(
            Some(&token),
            &json!({"credential_configuration_id": config, "proof": {"proof_type": "jwt", "jwt": good}}),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_credential_request"))
    );

    // Bad key proofs, each over a fresh nonce.
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    let n = office.nonce().await;
    cases.push((
        "another audience",
        proof_with(header(&key), claims("https://elsewhere.example", &n), &key),
        "invalid_proof",
    ));
    let n = office.nonce().await;
    let mut stale = claims(&aud, &n);
    stale["iat"] = json!(chrono::Utc::now().timestamp() - 3600);
    cases.push((
        "stale iat",
        proof_with(header(&key), stale, &key),
        "invalid_proof",
    ));
    let n = office.nonce().await;
    let mut untyped = header(&key);
    untyped.as_object_mut().unwrap().remove("typ");
    cases.push((
        "typ missing",
        proof_with(untyped, claims(&aud, &n), &key),
        "invalid_proof",
    ));
    let n = office.nonce().await;
    let none =
        json!({"alg": "none", "typ": "openid4vci-proof+jwt", "kid": key.verification_method()});
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::to_vec(&none).unwrap()),
        b64(&serde_json::to_vec(&claims(&aud, &n)).unwrap())
    );
    cases.push(("alg none", unsigned, "invalid_proof"));
    let other = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let n = office.nonce().await;
    cases.push((
        "another key than the offered subject's",
        proof_with(header(&other), claims(&aud, &n), &other),
        "invalid_proof",
    ));
    let n = office.nonce().await;
    let forged = proof_with(header(&key), claims(&aud, &n), &other);
    cases.push(("a signature by another key", forged, "invalid_proof"));
    cases.push((
        "a nonce the issuer never gave",
        proof_with(header(&key), claims(&aud, "made-up-nonce-0123456789"), &key),
        "invalid_nonce",
    ));
    for (what, proof, error) in &cases {
        let (s, e) = office
            .credential(Some(&token), &request(config, proof))
            .await;
        assert_eq!((s, e["error"].as_str()), (400, Some(*error)), "{what}: {e}");
    }
    assert_eq!(office.issued_to(&did).await, 0, "something was issued");

    // The good proof: one credential, a VC-JOSE JWT for the offered subject.
    let (s, answer) = office
        .credential(Some(&token), &request(config, &good))
        .await;
    assert_eq!(s, 200, "{answer}");
    let jwt = answer["credentials"][0]["credential"].as_str().unwrap();
    let payload = federation::jose::decode(jwt).unwrap().payload;
    assert_eq!(payload["credentialSubject"]["id"], did.as_str());
    assert_eq!(office.issued_to(&did).await, 1);
    // The office's own verifier accepts it.
    let (s, v) = office
        .admin("/credentials/verify", &json!({"verifiableCredential": jwt}))
        .await;
    assert_eq!(s, 200, "{v}");

    // The access token is spent; a c_nonce is single use.
    let n2 = office.nonce().await;
    let again = proof_with(header(&key), claims(&aud, &n2), &key);
    let (s, e) = office
        .credential(Some(&token), &request(config, &again))
        .await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_token")));
    let second = office
        .offer(Some(&did), json!({"formats": ["jwt_vc_json"]}))
        .await;
    let token2 = office.token_for(&second).await;
    let (s, e) = office
        .credential(Some(&token2), &request(config, &good))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_nonce")),
        "reused c_nonce: {e}"
    );
    assert_eq!(office.issued_to(&did).await, 1);
}

#[tokio::test]
async fn a_jwk_proof_makes_the_subject_the_did_jwk_of_that_key() {
    let office = start_office();
    let aud = issuer_id(&office);
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let jwk = serde_json::to_value(key.public_jwk()).unwrap();
    let mut subject = String::new();
    for (format, config) in [
        ("ldp_vc", "ClinicianPrivilegeCredential_ldp"),
        ("dc+sd-jwt", "ClinicianPrivilegeCredential_sd_jwt"),
    ] {
        let offer = office.offer(None, json!({"formats": [format]})).await;
        let token = office.token_for(&offer).await;
        let n = office.nonce().await;
        let proof = proof_with(
            json!({"alg": "EdDSA", "typ": "openid4vci-proof+jwt", "jwk": jwk}),
            claims(&aud, &n),
            &key,
        );
        let (s, answer) = office
            .credential(Some(&token), &request(config, &proof))
            .await;
        assert_eq!(s, 200, "{answer}");
        let credential = &answer["credentials"][0]["credential"];
        // The office's own verifier accepts what it issued.
        let (s, v) = office
            .admin(
                "/credentials/verify",
                &json!({"verifiableCredential": credential}),
            )
            .await;
        assert_eq!(s, 200, "{format}: {v}");
        match credential {
            Value::Object(vc) => {
                subject = vc["credentialSubject"]["id"].as_str().unwrap().to_string();
                assert!(vc["proof"].is_object());
            }
            Value::String(sd_jwt) => {
                assert!(sd_jwt.ends_with('~'), "{sd_jwt}");
                let jws = sd_jwt.split('~').next().unwrap();
                let payload = jws.split('.').nth(1).unwrap();
                let payload: Value =
                    serde_json::from_slice(&federation::b64::decode(payload).unwrap()).unwrap();
                // The holder key in cnf is the proof's key, and sub its did:jwk.
                assert_eq!(payload["cnf"]["jwk"]["x"], jwk["x"], "{payload}");
                assert_eq!(payload["sub"], subject.as_str());
            }
            other => panic!("{other}"),
        }
    }
    assert!(subject.starts_with("did:jwk:"), "{subject}");
    assert_eq!(office.issued_to(&subject).await, 2);
}

/// Runs the independent wallet (tests/peers/oid4vci-wallet.mjs: `@openid4vc/openid4vci`
/// 0.4.6) against an offer; its JSON answer.
fn independent_wallet(offer: &str, tx_code: &str, format: &str) -> (bool, Value) {
    let out = support::spawn_node(
        support::node_peer("oid4vci-wallet.mjs", &["@openid4vc/openid4vci"])
            .args([offer, tx_code, format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
    .wait_with_output()
    .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "oid4vci-wallet.mjs gave no answer: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), answer)
}

#[tokio::test]
async fn an_independent_wallet_receives_every_format_from_fedgates_issuer() {
    let office = start_office();
    for (format, by_reference) in [
        ("ldp_vc", false),
        ("jwt_vc_json", true),
        ("dc+sd-jwt", false),
    ] {
        let offer = office.offer(None, json!({"formats": [format]})).await;
        let url = if by_reference {
            offer["credentialOfferUriUrl"].as_str().unwrap()
        } else {
            offer["credentialOfferUrl"].as_str().unwrap()
        };
        let (ok, answer) = independent_wallet(url, offer["txCode"].as_str().unwrap(), format);
        assert!(ok, "{format}: {answer}");
        let credentials = answer["credentials"].as_array().unwrap();
        assert_eq!(credentials.len(), 1, "{answer}");
        let credential = &credentials[0]["credential"];
        // fedgate verifies what the independent wallet got: proof, validity, status, schema.
        let (s, v) = office
            .admin(
                "/credentials/verify",
                &json!({"verifiableCredential": credential}),
            )
            .await;
        assert_eq!(s, 200, "{format}: {v}");
        // Its key (a jwk header) named the subject: a did:jwk holding that P-256 key.
        let subject = match credential {
            Value::Object(vc) => vc["credentialSubject"]["id"].clone(),
            Value::String(token) => {
                let jws = token.split('~').next().unwrap();
                let payload: Value = serde_json::from_slice(
                    &federation::b64::decode(jws.split('.').nth(1).unwrap()).unwrap(),
                )
                .unwrap();
                match payload.get("sub") {
                    Some(sub) => sub.clone(),
                    None => payload["credentialSubject"]["id"].clone(),
                }
            }
            other => panic!("{other}"),
        };
        let did = subject.as_str().unwrap();
        let held: Value = serde_json::from_slice(
            &federation::b64::decode(did.strip_prefix("did:jwk:").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(held["x"], answer["holderJwk"]["x"], "{format}: {did}");
        assert_eq!(held["crv"], "P-256");
    }
}

#[tokio::test]
async fn codes_nonces_and_tokens_stay_spent_across_a_restart() {
    let mut office = start_office();
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let did = key.did().to_string();
    let offer = office
        .offer(Some(&did), json!({"formats": ["ldp_vc"]}))
        .await;
    let token = office.token_for(&offer).await;
    let nonce = office.nonce().await;
    let proof = proof_with(header(&key), claims(&issuer_id(&office), &nonce), &key);
    let config = "ClinicianPrivilegeCredential_ldp";
    let (s, answer) = office
        .credential(Some(&token), &request(config, &proof))
        .await;
    assert_eq!(s, 200, "{answer}");
    // An unredeemed offer made before the restart is still good after it.
    let pending = office
        .offer(Some(&did), json!({"formats": ["ldp_vc"]}))
        .await;

    // The same process again, on the same data folder.
    let config_path = office.dir.path().join("issuer.toml");
    office.svc.child.kill().unwrap();
    office.svc.child.wait().unwrap();
    office.svc = start(&["issuer", "serve", "--config", config_path.to_str().unwrap()]);
    let (s, e) = office
        .token(&[
            ("grant_type", PRE_AUTH),
            ("pre-authorized_code", code(&offer)),
            ("tx_code", offer["txCode"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    let token2 = office.token_for(&pending).await;
    // The old proof (its nonce spent before the restart), against the new issuer address.
    let aud = issuer_id(&office);
    let replay = proof_with(header(&key), claims(&aud, &nonce), &key);
    let (s, e) = office
        .credential(Some(&token2), &request(config, &replay))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_nonce")),
        "{e}"
    );
    let (s, e) = office
        .credential(Some(&token), &request(config, &replay))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (401, Some("invalid_token")),
        "{e}"
    );
    let fresh = office.nonce().await;
    let proof = proof_with(header(&key), claims(&aud, &fresh), &key);
    let (s, answer) = office
        .credential(Some(&token2), &request(config, &proof))
        .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(office.issued_to(&did).await, 2);
}

/// The did:web the independent issuer is known by (mapped to its loopback address in the
/// wallet's trust file, as any did:web issuer must be).
const PEER_ISSUER: &str = "did:web:vci-peer.test";

/// The independent issuer (tests/peers/oid4vci-issuer.mjs: `@openid4vc/openid4vci` and
/// `@openid4vc/oauth2` 0.4.6, `@sd-jwt/sd-jwt-vc` 0.19.0) as a running process: its first
/// line (`hello`: offer, transaction code, identity), later lines on demand.
struct PeerIssuer {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    hello: Value,
}

impl PeerIssuer {
    /// Starts it; `options` are added to its input. Without node or the packages this fails,
    /// saying so: it never skips.
    fn start(options: Value) -> PeerIssuer {
        use std::io::{BufRead, Write};
        let packages = [
            "@openid4vc/openid4vci",
            "@openid4vc/oauth2",
            "@sd-jwt/sd-jwt-vc",
        ];
        let mut child = support::spawn_node(
            support::node_peer("oid4vci-issuer.mjs", &packages)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped()),
        );
        let mut input = json!({
            "did": PEER_ISSUER,
            "subject": {
                "name": "Dr. Ada Test",
                "npi": "1234567893",
                "role": "physician",
                "specialty": "207R00000X",
                "organization": HOSPITAL_A,
                "privileges": [{"facility": HOSPITAL_B, "domains": ["clinical"], "actions": ["read"]}]
            }
        });
        input
            .as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "{input}").unwrap();
        stdin.flush().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let hello = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_else(|| panic!("oid4vci-issuer.mjs did not start (see its stderr)"));
        PeerIssuer {
            child,
            lines,
            hello,
        }
    }

    fn next_line(&mut self) -> Value {
        let line = self.lines.next().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Closes its stdin (it stops); every request it served, in order.
    fn finish(mut self) -> Vec<String> {
        drop(self.child.stdin.take());
        let mut served = None;
        while let Some(Ok(line)) = self.lines.next() {
            let v: Value = serde_json::from_str(&line).unwrap();
            if let Some(list) = v.get("served") {
                served = Some(serde_json::from_value(list.clone()).unwrap());
            }
        }
        let _ = self.child.wait();
        served.expect("the peer issuer stopped without its summary")
    }

    /// A trust file that trusts this issuer for privileges (`trusted`) or only knows where
    /// its did:web lives.
    fn trust(&self, trusted: bool) -> Value {
        let base = format!("{}/", self.hello["credentialIssuer"].as_str().unwrap());
        let issuers: Vec<&str> = if trusted { vec![PEER_ISSUER] } else { vec![] };
        json!({
            "trustedIssuers": {"ClinicianPrivilegeCredential": issuers},
            "didWeb": {PEER_ISSUER: base},
            "devMode": true
        })
    }
}

fn list(dir: &Path) -> Vec<Value> {
    let out = fedgate()
        .args(["wallet", "--json", "list", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    support::assert_ok(&out);
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn jwt_part(jwt: &str, i: usize) -> Value {
    let part = jwt.split('~').next().unwrap().split('.').nth(i).unwrap();
    serde_json::from_slice(&federation::b64::decode(part).unwrap()).unwrap()
}

/// fedgate's wallet against an independent OpenID4VCI 1.0 issuer: `@openid4vc/openid4vci`'s
/// `Openid4vciIssuer` with `@openid4vc/oauth2`'s authorization server (its own identifier,
/// `…/as`, with JWT access tokens) and resource server, issuing an SD-JWT VC
/// (`@sd-jwt/sd-jwt-vc`) of a fedgate privilege under a did:web, with a Token Status List.
/// `fedgate wallet receive` takes the offer: a wrong transaction code is refused at the
/// token endpoint and nothing is stored; the right one gets the credential the peer issued,
/// bound to the wallet's key, verified against the wallet's trust file and stored. A wallet
/// that does not trust the peer refuses to store what it gets; an authorization server
/// whose metadata names another issuer is never asked for a token.
#[test]
fn fedgate_wallet_receives_from_an_independent_openid4vci_issuer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = PeerIssuer::start(json!({}));
    let wdir = tmp.path().join("wallet");
    let did = wallet_trusting(&wdir, &peer.trust(true));
    let offer = peer.hello["offer"].as_str().unwrap().to_string();
    let tx = peer.hello["txCode"].as_str().unwrap().to_string();
    assert!(
        offer.starts_with("openid-credential-offer://?credential_offer="),
        "{offer}"
    );

    // A wrong transaction code: the library's token endpoint refuses, in one line.
    let wrong = if tx == "000000" { "111111" } else { "000000" };
    let (ok, _, err) = receive(&wdir, &offer, Some(wrong));
    assert!(!ok, "a wrong transaction code was accepted");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("invalid_grant") && err.contains("/as/token"),
        "{err}"
    );
    assert_eq!(peer.next_line()["refused"], "POST /as/token");
    assert!(list(&wdir).is_empty(), "something was stored");

    // The right one: the credential the peer issued, stored.
    let (ok, received, err) = receive(&wdir, &offer, Some(&tx));
    assert!(ok, "{err}");
    let issued = peer.next_line();
    let credential = issued["issued"]
        .as_str()
        .unwrap_or_else(|| panic!("the peer issued nothing: {issued}"));
    assert_eq!(issued["holder"], did.as_str());
    assert_eq!(
        received["configuration"],
        "ClinicianPrivilegeCredential_sd_jwt"
    );
    assert_eq!(received["oid4vciFormat"], "dc+sd-jwt");
    assert_eq!(received["kind"], "ClinicianPrivilegeCredential");
    assert_eq!(received["issuer"], PEER_ISSUER);
    assert_eq!(received["subject"], did.as_str());
    let held = list(&wdir);
    assert_eq!(held.len(), 1, "{held:?}");
    let id = held[0]["id"].as_str().unwrap();
    let out = fedgate()
        .args([
            "wallet",
            "--json",
            "show",
            "--dir",
            wdir.to_str().unwrap(),
            id,
        ])
        .output()
        .unwrap();
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stored["credential"], credential,
        "not the credential the peer issued"
    );
    assert_eq!(
        stored["credentialSubject"]["privileges"][0]["facility"],
        HOSPITAL_B
    );
    // What the peer signed: its vct, its status list, the holder's did:key as sub, and the
    // wallet's own key (the one its key proof was signed with) in cnf.
    let header = jwt_part(credential, 0);
    let payload = jwt_part(credential, 1);
    assert_eq!(header["typ"], "dc+sd-jwt");
    assert_eq!(header["kid"], format!("{PEER_ISSUER}#key-1"));
    assert_eq!(payload["vct"], peer.hello["vct"]);
    assert_eq!(payload["sub"], did.as_str());
    let (_, key) = multibase::decode(did.strip_prefix("did:key:").unwrap()).unwrap();
    assert_eq!(key[..2], [0xed, 0x01], "an Ed25519 did:key");
    assert_eq!(payload["cnf"]["jwk"]["x"], b64(&key[2..]));
    assert!(payload["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .starts_with(peer.hello["credentialIssuer"].as_str().unwrap()));
    // The offer is spent.
    let (ok, _, err) = receive(&wdir, &offer, Some(&tx));
    assert!(!ok && err.contains("invalid_grant"), "{err}");
    assert_eq!(list(&wdir).len(), 1);
    let served = peer.finish();
    for route in [
        "GET /.well-known/openid-credential-issuer",
        "GET /.well-known/oauth-authorization-server/as",
        "POST /nonce",
        "POST /credential",
        "GET /.well-known/did.json",
        "GET /status/1",
    ] {
        assert!(
            served.iter().any(|r| r == route),
            "{route} not in {served:?}"
        );
    }

    // A wallet that knows where the peer's did:web lives but does not trust it for
    // privileges: the credential comes, and is refused, not stored.
    let peer = PeerIssuer::start(json!({}));
    let untrusting = tmp.path().join("untrusting");
    wallet_trusting(&untrusting, &peer.trust(false));
    let (ok, _, err) = receive(
        &untrusting,
        peer.hello["offer"].as_str().unwrap(),
        peer.hello["txCode"].as_str(),
    );
    assert!(!ok, "an untrusted issuer's credential was stored");
    assert!(err.contains("not trusted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(list(&untrusting).is_empty());
    peer.finish();

    // Authorization server metadata that names another issuer (a mix-up): refused before
    // the code is sent anywhere.
    let peer = PeerIssuer::start(json!({"asMetadataIssuer": "https://elsewhere.example"}));
    let mixed = tmp.path().join("mixed");
    wallet_trusting(&mixed, &peer.trust(true));
    let (ok, _, err) = receive(
        &mixed,
        peer.hello["offerByReference"].as_str().unwrap(),
        peer.hello["txCode"].as_str(),
    );
    assert!(!ok, "a mixed-up authorization server was used");
    assert!(err.contains("another issuer"), "{err}");
    assert!(list(&mixed).is_empty());
    let served = peer.finish();
    assert!(served.iter().any(|r| r == "GET /offer"), "{served:?}");
    assert!(
        !served.iter().any(|r| r.starts_with("POST")),
        "the wallet sent the code to a mixed-up server: {served:?}"
    );
}
