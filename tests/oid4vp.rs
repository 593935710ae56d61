//! OpenID4VP 1.0 at the gateway, end to end: a credentialing office and a gateway as
//! separate processes, fedgate's wallet (the library, and `fedgate wallet respond`) as the
//! wallet. Authorization request → request object → vp_token → verified → decided →
//! collected records, same device and cross device, in both W3C formats; and bad input
//! answered in OAuth error JSON with nothing released.

mod support;

use std::path::{Path, PathBuf};

use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{contract, fixture_patient, Gateway, GatewaySpec, Office, MRN_SYSTEM};
use serde_json::{json, Value};
use support::{exe, node_peer, repo, spawn_node, CUSTODIAN, OFFICE, REQUESTER_ORG};

struct Fed {
    office: Office,
    gateway: Gateway,
    mrn: String,
    dir: tempfile::TempDir,
}

fn gateway_toml(office: &Office, ttl: u64) -> String {
    format!(
        r#"
challenge_ttl_secs = {ttl}
[trust]
ClinicianPrivilegeCredential = ["{OFFICE}"]
[did_web]
"{OFFICE}" = "{office}"
{contract}"#,
        office = office.url(),
        contract = contract(CUSTODIAN, REQUESTER_ORG, &["clinical"], &["TREAT"])
    )
}

fn start_gateway(office: &Office, dir: &Path, ttl: u64) -> Gateway {
    let (file, _) = fixture_patient().unwrap();
    let spec = GatewaySpec {
        port: 0,
        did: CUSTODIAN.into(),
        records: vec![file],
        policies: repo("policies"),
        extra_toml: gateway_toml(office, ttl),
    };
    Gateway::start(&exe(), dir, &spec).unwrap()
}

async fn federation() -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let gateway = start_gateway(&office, &dir.path().join("gateway"), 120);
    let (_, mrn) = fixture_patient().unwrap();
    Fed {
        office,
        gateway,
        mrn,
        dir,
    }
}

/// A clinician's wallet holding a privilege at the custodian and a patient's consent,
/// both in `format`; the patient's DID is linked at the gateway.
struct Clinician {
    dir: PathBuf,
    wallet: wallet::Wallet,
    patient: KeyPair,
    trust: wallet::TrustConfig,
}

async fn clinician(fed: &Fed, name: &str, format: ProofFormat) -> Clinician {
    let dir = fed.dir.path().join(name);
    let w = wallet::Wallet::init(&dir, KeyAlgorithm::Ed25519).unwrap();
    let trust = json!({
        "trustedIssuers": {"ClinicianPrivilegeCredential": [OFFICE]},
        "didWeb": {OFFICE: fed.office.url(), CUSTODIAN: fed.gateway.url()},
        "devMode": true
    });
    let trust_file = dir.join("trust.json");
    std::fs::write(&trust_file, trust.to_string()).unwrap();
    let trust = wallet::TrustConfig::load(&trust_file).unwrap();
    let verifier = trust.verifier().unwrap();
    let privilege_subject = json!({
        "id": w.did(),
        "name": "Dr. Requesting Clinician",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": REQUESTER_ORG,
        "privileges": [{"facility": CUSTODIAN, "domains": ["clinical"], "actions": ["read"]}]
    });
    let office_format = match format {
        ProofFormat::Jwt => "jwt",
        ProofFormat::SdJwt => "sd-jwt",
        _ => "data-integrity",
    };
    let (_, privilege) = fed
        .office
        .joiner(&privilege_subject, office_format)
        .await
        .unwrap();
    w.import(privilege, &verifier).await.unwrap();
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let subject = json!({
        "id": patient.did(),
        "patientIdentifiers": [{"custodian": CUSTODIAN, "system": MRN_SYSTEM, "value": fed.mrn}],
        "custodians": [CUSTODIAN],
        "grantee": {"id": w.did(), "kind": "clinician"},
        "provision": "permit",
        "domains": ["clinical"],
        "purposes": ["TREAT"],
        "dataClasses": ["Patient", "Observation", "Condition"],
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2031-01-01T00:00:00Z"}
    });
    let vc = credentials::unsigned_credential(
        CredentialKind::PatientConsent,
        patient.did(),
        subject,
        chrono::Utc::now() - chrono::Duration::minutes(1),
        None,
        None,
    );
    // A patient's self-issued consent has no SD-JWT VC form here: it travels as a JWT
    // beside an SD-JWT VC privilege.
    let consent_format = match format {
        ProofFormat::SdJwt => ProofFormat::Jwt,
        f => f,
    };
    let consent = credentials::issue(vc, &patient, consent_format)
        .await
        .unwrap();
    w.import(consent, &verifier).await.unwrap();
    fed.gateway
        .link_patient(&fed.mrn, patient.did())
        .await
        .unwrap();
    Clinician {
        dir,
        wallet: w,
        patient,
        trust,
    }
}

async fn http_post(url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", gateway::oid4vp::urlencoding(v)))
        .collect();
    let body = body.join("&");
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::String(text)),
    )
}

/// Starts an exchange; `redirect` makes it same-device.
async fn start(fed: &Fed, mode: &str, redirect: Option<&str>) -> Value {
    let mut body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": fed.mrn},
        "data_classes": ["Patient", "Observation"],
        "response_mode": mode,
    });
    if let Some(r) = redirect {
        body["redirect_uri"] = json!(r);
    }
    let (status, started) = http_post(
        &format!("{}v1/oid4vp/clinical/requests", fed.gateway.url()),
        &body,
    )
    .await;
    assert_eq!(status, 201, "{started}");
    started
}

async fn collect(fed: &Fed, started: &Value, body: Value) -> (u16, Value) {
    http_post(
        &format!(
            "{}v1/oid4vp/transactions/{}/result",
            fed.gateway.url(),
            started["transaction_id"].as_str().unwrap()
        ),
        &body,
    )
    .await
}

fn resource_types(bundle: &Value) -> Vec<String> {
    let mut t: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t.dedup();
    t
}

fn response_code(answer: &Value) -> String {
    let uri = answer["redirect_uri"].as_str().unwrap();
    uri.split_once("#response_code=").unwrap().1.to_string()
}

#[tokio::test]
async fn authorization_request_to_records_same_device_and_cross_device_in_each_format() {
    let fed = federation().await;
    let resolver = |c: &Clinician| c.trust.verifier().unwrap().resolver.clone();
    for format in [ProofFormat::Jwt, ProofFormat::DataIntegrity] {
        let c = clinician(&fed, &format!("wallet-{format:?}"), format).await;

        // Same device, direct_post.jwt: the wallet is sent back with a response code.
        let started = start(&fed, "direct_post.jwt", Some("https://ehr.example/back")).await;
        let url = started["authorization_request"].as_str().unwrap();
        assert!(url.starts_with("openid4vp://?client_id=decentralized_identifier%3Adid%3Aweb%3A"));
        assert!(started["qr_svg"].as_str().unwrap().contains("<svg"));
        assert!(started["qr_png"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR"));
        // Before the wallet answers, the secret learns it is pending.
        let (status, _) = collect(
            &fed,
            &started,
            json!({"requester_secret": started["requester_secret"]}),
        )
        .await;
        assert_eq!(status, 202);
        let request = wallet::oid4vp::fetch_request(url, &resolver(&c), true)
            .await
            .unwrap();
        assert_eq!(
            request.client_id,
            format!("decentralized_identifier:{CUSTODIAN}")
        );
        assert_eq!(request.response_mode, "direct_post.jwt");
        let answer =
            wallet::oid4vp::respond(&c.wallet, url, &resolver(&c), Some(c.patient.did()), true)
                .await
                .unwrap();
        assert!(answer["redirect_uri"]
            .as_str()
            .unwrap()
            .starts_with("https://ehr.example/back#response_code="));
        let code = response_code(&answer);
        // Same device: the secret alone does not collect (the response code does).
        let (status, _) = collect(
            &fed,
            &started,
            json!({"requester_secret": started["requester_secret"]}),
        )
        .await;
        assert_eq!(status, 401);
        let (status, bundle) = collect(&fed, &started, json!({"response_code": code})).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(resource_types(&bundle), ["Observation", "Patient"]);
        // Once.
        let (status, _) = collect(&fed, &started, json!({"response_code": code})).await;
        assert_eq!(status, 404);

        // Cross device, direct_post, answered by `fedgate wallet respond` (the store is
        // one process's at a time).
        drop(c.wallet);
        let started = start(&fed, "direct_post", None).await;
        let url = started["authorization_request"].as_str().unwrap();
        let out = std::process::Command::new(exe())
            .args([
                "wallet",
                "respond",
                "--dir",
                c.dir.to_str().unwrap(),
                "--patient",
                c.patient.did(),
                "--dev",
                "--json",
                url,
            ])
            .output()
            .unwrap();
        support::assert_ok(&out);
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(printed, json!({}));
        let (status, _) = collect(
            &fed,
            &started,
            json!({"requester_secret": "not-the-secret"}),
        )
        .await;
        assert_eq!(status, 401);
        let (status, bundle) = collect(
            &fed,
            &started,
            json!({"requester_secret": started["requester_secret"]}),
        )
        .await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(resource_types(&bundle), ["Observation", "Patient"]);
        let (status, _) = collect(
            &fed,
            &started,
            json!({"requester_secret": started["requester_secret"]}),
        )
        .await;
        assert_eq!(status, 404);
    }
    // The plain exchange still works beside it.
    let c = clinician(&fed, "plain", ProofFormat::Jwt).await;
    let binding = fed.gateway.challenge().await.unwrap();
    let held: Vec<Value> = c
        .wallet
        .list()
        .unwrap()
        .into_iter()
        .map(|s| s.credential)
        .collect();
    let vp = credentials::present(&held, &key_of(&c), &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let (status, bundle) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &json!({
                "purpose": "TREAT",
                "patient": {"system": MRN_SYSTEM, "value": fed.mrn},
                "data_classes": ["Patient", "Observation"],
                "presentation": vp,
            }),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{bundle}");
}

fn key_of(c: &Clinician) -> KeyPair {
    KeyPair::load(&c.dir.join("holder.key.json")).unwrap()
}

/// A presentation of the wallet's credentials bound to `nonce` and `domain`, as a
/// vp_token answering the JWT queries.
async fn token(c: &Clinician, nonce: &str, domain: &str) -> Value {
    let held = c.wallet.list().unwrap();
    let key = key_of(c);
    let binding = PresentationBinding {
        challenge: nonce.into(),
        domain: domain.into(),
    };
    let mut t = serde_json::Map::new();
    for (id, kind) in [
        ("privilege_jwt", CredentialKind::ClinicianPrivilege),
        ("consent_jwt", CredentialKind::PatientConsent),
    ] {
        let creds: Vec<Value> = held
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.credential.clone())
            .collect();
        let vp = credentials::present(&creds, &key, &binding, ProofFormat::Jwt)
            .await
            .unwrap();
        t.insert(id.into(), json!([vp]));
    }
    Value::Object(t)
}

#[tokio::test]
async fn bad_responses_get_oauth_errors_and_release_nothing() {
    let fed = federation().await;
    let c = clinician(&fed, "wallet", ProofFormat::Jwt).await;
    let resolver = c.trust.verifier().unwrap().resolver.clone();
    let response_uri = format!("{}v1/oid4vp/responses", fed.gateway.url());
    let client_id = format!("decentralized_identifier:{CUSTODIAN}");
    let refusals = || async {
        fed.gateway
            .metric("fedgate_verification_failures_total")
            .await
            .unwrap()
    };

    let a = start(&fed, "direct_post", None).await;
    let b = start(&fed, "direct_post", None).await;
    let ra = wallet::oid4vp::fetch_request(
        a["authorization_request"].as_str().unwrap(),
        &resolver,
        true,
    )
    .await
    .unwrap();
    let rb = wallet::oid4vp::fetch_request(
        b["authorization_request"].as_str().unwrap(),
        &resolver,
        true,
    )
    .await
    .unwrap();

    // The OpenAPI document lists the endpoints.
    let openapi: Value = reqwest::get(format!("{}openapi.json", fed.gateway.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/oid4vp/{domain}/requests",
        "/v1/oid4vp/requests/{state}",
        "/v1/oid4vp/responses",
        "/v1/oid4vp/transactions/{id}/result",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path}");
    }

    // A vp_token made for A's nonce, posted under B's state: refused and recorded.
    let before = refusals().await;
    let ta = token(&c, &ra.nonce, &client_id).await.to_string();
    let (status, err) = post_form(&response_uri, &[("vp_token", &ta), ("state", &rb.state)]).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_request", "{err}");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("challenge"),
        "{err}"
    );
    assert_eq!(refusals().await, before + 1.0);

    // A presentation for another audience (the bare DID, not the prefixed client_id).
    let other = token(&c, &rb.nonce, CUSTODIAN).await.to_string();
    let (status, err) =
        post_form(&response_uri, &[("vp_token", &other), ("state", &rb.state)]).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_request");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("domain"),
        "{err}"
    );

    // The wrong format for a query id.
    let wrong = json!({"privilege_ldp": ["a.b.c"]}).to_string();
    let (status, err) =
        post_form(&response_uri, &[("vp_token", &wrong), ("state", &rb.state)]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("vp_formats_not_supported"))
    );

    // Unknown state, missing vp_token, not a form.
    let (status, err) = post_form(&response_uri, &[("vp_token", &ta), ("state", "nope")]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, err) = post_form(&response_uri, &[("state", &ra.state)]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, err) = http_post(&response_uri, &json!({"vp_token": {}})).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // A's own token goes through once; the same token again is a replay.
    let (status, answer) =
        post_form(&response_uri, &[("vp_token", &ta), ("state", &ra.state)]).await;
    assert_eq!((status, &answer), (200, &json!({})));
    let (status, err) = post_form(&response_uri, &[("vp_token", &ta), ("state", &ra.state)]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, bundle) =
        collect(&fed, &a, json!({"requester_secret": a["requester_secret"]})).await;
    assert_eq!(status, 200, "{bundle}");

    // A request object changed after signing is refused by the wallet.
    let jwt = reqwest::get(b["request_uri"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    let mut claims = wallet::oid4vp::decode_part(&parts[1]).unwrap();
    claims["response_uri"] = json!("https://attacker.example/responses");
    parts[1] = federation::b64::encode(&serde_json::to_vec(&claims).unwrap());
    let tampered = parts.join(".");
    let err = wallet::oid4vp::check_request(&tampered, &client_id, &resolver, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    // Signed by the right key but fetched for another client_id.
    let err = wallet::oid4vp::check_request(
        &jwt,
        "decentralized_identifier:did:web:other.test",
        &resolver,
        true,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("another DID"), "{err}");

    // The wallet declines: the requester learns it, nothing is released.
    let (status, _) = post_form(
        &response_uri,
        &[("error", "access_denied"), ("state", &rb.state)],
    )
    .await;
    assert_eq!(status, 200);
    let (status, problem) =
        collect(&fed, &b, json!({"requester_secret": b["requester_secret"]})).await;
    assert_eq!(status, 422, "{problem}");

    // A deny by policy: recorded at the response, the requester gets the problem.
    let d = start(&fed, "direct_post", None).await;
    let rd = wallet::oid4vp::fetch_request(
        d["authorization_request"].as_str().unwrap(),
        &resolver,
        true,
    )
    .await
    .unwrap();
    let mut privilege_only = token(&c, &rd.nonce, &client_id).await;
    privilege_only
        .as_object_mut()
        .unwrap()
        .remove("consent_jwt");
    let (status, _) = post_form(
        &response_uri,
        &[
            ("vp_token", &privilege_only.to_string()),
            ("state", &rd.state),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (status, problem) =
        collect(&fed, &d, json!({"requester_secret": d["requester_secret"]})).await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["decision_id"].is_string());

    // Expired: a gateway whose transactions last one second.
    let short = start_gateway(&fed.office, &fed.dir.path().join("short"), 1);
    let (status, e) = http_post(
        &format!("{}v1/oid4vp/clinical/requests", short.url()),
        &json!({"purpose": "TREAT", "patient": {"system": MRN_SYSTEM, "value": fed.mrn},
                "data_classes": ["Patient"], "response_mode": "direct_post"}),
    )
    .await;
    assert_eq!(status, 201);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let status = reqwest::get(e["request_uri"].as_str().unwrap())
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);
    let (status, _) = http_post(
        &format!(
            "{}v1/oid4vp/transactions/{}/result",
            short.url(),
            e["transaction_id"].as_str().unwrap()
        ),
        &json!({"requester_secret": e["requester_secret"]}),
    )
    .await;
    assert_eq!(status, 404);
}

/// SD-JWT VC by OpenID4VP: the DCQL query asks for less than the privilege holds (not its
/// name or NPI), the wallet discloses only that, with a key-binding JWT over the full
/// client_id and the nonce; same device, direct_post.jwt.
#[tokio::test]
async fn sd_jwt_vc_selective_disclosure_by_openid4vp() {
    let fed = federation().await;
    let c = clinician(&fed, "wallet-sd-jwt", ProofFormat::SdJwt).await;
    let resolver = c.trust.verifier().unwrap().resolver.clone();
    let started = start(&fed, "direct_post.jwt", Some("https://ehr.example/back")).await;
    let url = started["authorization_request"].as_str().unwrap();
    let request = wallet::oid4vp::fetch_request(url, &resolver, true)
        .await
        .unwrap();
    let q = &request.dcql_query["credentials"][0];
    assert_eq!(q["format"], "dc+sd-jwt");
    assert_eq!(
        q["meta"]["vct_values"][0],
        format!(
            "{}/vct/ClinicianPrivilegeCredential",
            fed.office.url().trim_end_matches('/')
        )
    );
    let paths: Vec<&Value> = q["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["path"])
        .collect();
    assert!(!paths.contains(&&json!(["name"])) && !paths.contains(&&json!(["npi"])));
    let token = wallet::oid4vp::build_vp_token(&c.wallet, &request, Some(c.patient.did()))
        .await
        .unwrap();
    let sd = token["privilege_sd_jwt"][0].as_str().unwrap();
    let disclosed = federation::sdjwt::claim_paths(sd).unwrap();
    assert!(
        !disclosed.iter().any(|p| p[0] == "name" || p[0] == "npi"),
        "{disclosed:?}"
    );
    // A key-binding JWT for another audience (the bare DID) or another nonce: refused,
    // in OAuth error JSON, and the transaction stays open for the right answer.
    let held = c.wallet.list().unwrap();
    let stored = held
        .iter()
        .find(|s| s.kind == CredentialKind::ClinicianPrivilege)
        .unwrap();
    let paths: Vec<Vec<Value>> = q["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_array().unwrap().clone())
        .collect();
    let key = key_of(&c);
    for (aud, nonce) in [
        (CUSTODIAN, request.nonce.as_str()),
        (request.client_id.as_str(), "another-nonce-of-sixteen-chars"),
    ] {
        let sd = federation::sdjwt::present(
            stored.credential.as_str().unwrap(),
            &paths,
            aud,
            nonce,
            &key,
        )
        .unwrap();
        let mut bad = token.clone();
        bad["privilege_sd_jwt"] = json!([sd]);
        let err = wallet::oid4vp::post_response(&request, Some(&bad), None, true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid_request"), "{err}");
    }
    let answer = wallet::oid4vp::post_response(&request, Some(&token), None, true)
        .await
        .unwrap();
    // The same vp_token again: a replay.
    let err = wallet::oid4vp::post_response(&request, Some(&token), None, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already answered"), "{err}");
    let (status, bundle) = collect(
        &fed,
        &started,
        json!({"response_code": response_code(&answer)}),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(resource_types(&bundle), ["Observation", "Patient"]);
}

/// Runs tests/peers/oid4vp-interop.mjs (@openid4vc/openid4vp, pinned in
/// tests/peers/package-lock.json) with `input`; its JSON answer. Without node or the
/// package (`scripts/peers` installs it) this fails, saying so: it never skips.
fn openid4vp_peer(input: &Value) -> Value {
    use std::io::Write;
    let mut child = spawn_node(
        node_peer("oid4vp-interop.mjs", &["@openid4vc/openid4vp"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(input).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "oid4vp-interop.mjs gave no answer: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An independent OpenID4VP implementation's wallet side (@openid4vc/openid4vp 0.4.6,
/// `Openid4vpClient`) against fedgate's gateway: it parses the `openid4vp://` URL, fetches
/// and validates the signed request object (decentralized_identifier client, JAR by
/// reference, version 1.0), and, given a vp_token fedgate's wallet made for its nonce,
/// builds and submits the authorization response itself (for direct_post.jwt, encrypting
/// it to the gateway's ephemeral key); the gateway verifies, decides and releases the
/// records to the requester.
#[tokio::test]
async fn an_independent_openid4vp_wallet_library_answers_the_gateway() {
    let fed = federation().await;
    for (format, mode) in [
        (ProofFormat::SdJwt, "direct_post.jwt"),
        (ProofFormat::Jwt, "direct_post"),
    ] {
        let c = clinician(&fed, &format!("peer-{format:?}"), format).await;
        let resolver = c.trust.verifier().unwrap().resolver.clone();
        let started = start(&fed, mode, None).await;
        let url = started["authorization_request"].as_str().unwrap();
        let request = wallet::oid4vp::fetch_request(url, &resolver, true)
            .await
            .unwrap();
        let kid = federation::jose::decode(
            &reqwest::get(started["request_uri"].as_str().unwrap())
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap()
        .kid;
        let (jwk, _) = resolver
            .public_key(&kid, federation::did::Relationship::AssertionMethod)
            .await
            .unwrap();
        let vp_token = wallet::oid4vp::build_vp_token(&c.wallet, &request, Some(c.patient.did()))
            .await
            .unwrap();
        let answer = openid4vp_peer(&json!({
            "url": url,
            "verifierDid": CUSTODIAN,
            "verifierJwk": serde_json::to_value(&jwk).unwrap(),
            "vpToken": vp_token,
        }));
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["version"], 100, "read as OpenID4VP 1.0: {answer}");
        assert_eq!(
            answer["client"]["prefix"], "decentralized_identifier",
            "{answer}"
        );
        assert_eq!(answer["jar"]["sendBy"], "reference", "{answer}");
        assert_eq!(answer["jar"]["typ"], "oauth-authz-req+jwt", "{answer}");
        assert_eq!(answer["responseMode"], mode);
        assert_eq!(answer["nonce"], request.nonce.as_str());
        assert_eq!(answer["dcql"], request.dcql_query, "{answer}");
        assert_eq!(answer["encrypted"], mode == "direct_post.jwt", "{answer}");
        assert_eq!(
            (answer["status"].as_u64(), &answer["body"]),
            (Some(200), &json!({})),
            "{answer}"
        );
        let (status, bundle) = collect(
            &fed,
            &started,
            json!({"requester_secret": started["requester_secret"]}),
        )
        .await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(resource_types(&bundle), ["Observation", "Patient"]);
    }
}

/// tests/peers/oid4vp-verifier.mjs (@openid4vc/openid4vp's `Openid4vpVerifier`, pinned in
/// tests/peers/package-lock.json) started with `input`: the process, its output lines after
/// the first, and the first's verifier DID and `openid4vp://` URL. Without node or the
/// package this fails, saying so: it never skips.
struct PeerVerifier {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    did: String,
    url: String,
}

fn peer_verifier(input: &Value) -> PeerVerifier {
    use std::io::{BufRead, Write};
    let mut child = spawn_node(
        node_peer(
            "oid4vp-verifier.mjs",
            &["@openid4vc/openid4vp", "@sd-jwt/sd-jwt-vc"],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    PeerVerifier {
        child,
        lines,
        did: first["did"].as_str().unwrap().to_string(),
        url: first["url"].as_str().unwrap().to_string(),
    }
}

impl PeerVerifier {
    /// Ends a verifier that is not to be answered.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the verifier made of the wallet's response (its second line).
    fn outcome(mut self) -> Value {
        let line = self.lines.next().unwrap().unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap()
    }
}

/// A wallet in `name` whose privilege (issued by the office in `format`: `jwt`, `sd-jwt`)
/// is at each of `facilities`; with its trust configuration (the office's did:web on
/// loopback).
async fn wallet_with_privilege(
    fed: &Fed,
    name: &str,
    facilities: &[&str],
    format: &str,
) -> (PathBuf, wallet::Wallet, federation::verify::Verifier) {
    let wdir = fed.dir.path().join(name);
    let w = wallet::Wallet::init(&wdir, KeyAlgorithm::Ed25519).unwrap();
    let trust = json!({
        "trustedIssuers": {"ClinicianPrivilegeCredential": [OFFICE]},
        "didWeb": {OFFICE: fed.office.url()},
        "devMode": true
    });
    std::fs::write(wdir.join("trust.json"), trust.to_string()).unwrap();
    let verifier = wallet::TrustConfig::load(&wdir.join("trust.json"))
        .unwrap()
        .verifier()
        .unwrap();
    let (_, privilege) = fed
        .office
        .joiner(
            &json!({
                "id": w.did(), "name": "Dr. Requesting Clinician", "npi": "1234567893",
                "role": "physician", "specialty": "207R00000X", "organization": REQUESTER_ORG,
                "privileges": facilities.iter().map(|f| json!(
                    {"facility": f, "domains": ["clinical"], "actions": ["read"]}
                )).collect::<Vec<_>>()
            }),
            format,
        )
        .await
        .unwrap();
    w.import(privilege, &verifier).await.unwrap();
    (wdir, w, verifier)
}

/// fedgate's wallet against an independent verifier: @openid4vc/openid4vp 0.4.6's
/// `Openid4vpVerifier` (tests/peers/oid4vp-verifier.mjs) makes a did:key, signs a request
/// object by reference for a fedgate privilege (jwt_vc_json, direct_post) and serves it;
/// `wallet::oid4vp::respond` checks it, answers, and the library parses and validates the
/// response. The presentation it received verifies with fedgate's pipeline against the
/// library's nonce and client_id.
#[tokio::test]
async fn fedgate_wallet_answers_an_independent_openid4vp_verifier() {
    let fed = federation().await;
    let nonce = federation::client::random_token();
    let peer = peer_verifier(&json!({"nonce": nonce}));
    let verifier_did = peer.did.clone();
    // A wallet whose privilege is at the peer's facility.
    let (_, w, verifier) =
        wallet_with_privilege(&fed, "wallet-peer-verifier", &[&verifier_did], "jwt").await;

    let answer = wallet::oid4vp::respond(&w, &peer.url, &verifier.resolver, None, true)
        .await
        .unwrap();
    assert_eq!(answer, json!({}));
    let second = peer.outcome();
    assert_eq!(second["ok"], true, "{second}");
    assert_eq!(second["expectedNonce"], nonce.as_str());
    assert_eq!(second["state"], "state-of-the-peer-verifier");
    // The library hands the form's vp_token over as it came: JSON text.
    let token: Value = match &second["vpToken"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    let vp = &token["privilege"][0];
    assert!(vp.is_string(), "{second}");
    let binding = PresentationBinding {
        challenge: nonce.clone(),
        domain: format!("decentralized_identifier:{verifier_did}"),
    };
    let verified = verifier.verify_presentation(vp, &binding).await.unwrap();
    assert_eq!(verified.holder, w.did());
}

/// fedgate's wallet (`fedgate wallet respond`) presents an SD-JWT VC privilege to the
/// independent verifier, which asks by DCQL for `dc+sd-jwt` of fedgate's vct with only the
/// role and the organization (`response_mode`: `direct_post`, then `direct_post.jwt` with
/// the response encrypted to the verifier's ephemeral key, A128GCM and then A256GCM, the one
/// the verifier lists, and decrypted by the library with jose). The library parses the
/// response; the OpenWallet Foundation's @sd-jwt/sd-jwt-vc 0.19.0 verifies the
/// presentation: the office's signature, its Token Status List, the key binding JWT (the
/// wallet's cnf key, the nonce sent, `sd_hash`), whose `aud` is the verifier's full
/// client_id. Only the claims asked for are disclosed. A verifier asking for another
/// office's vct of the same type is not answered.
#[tokio::test]
async fn fedgate_wallet_presents_an_sd_jwt_vc_to_an_independent_openid4vp_verifier() {
    let fed = federation().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let issuer_jwk = support::office_jwk(&http, &fed.office).await;
    let vct = format!(
        "{}/vct/ClinicianPrivilegeCredential",
        fed.office.url().trim_end_matches('/')
    );
    // direct_post; direct_post.jwt with the default A128GCM; and with A256GCM, the one
    // content encryption the verifier lists.
    let modes = [
        ("direct_post", None),
        ("direct_post.jwt", None),
        ("direct_post.jwt", Some("A256GCM")),
    ];
    for (i, (mode, enc)) in modes.into_iter().enumerate() {
        let nonce = federation::client::random_token();
        let peer = peer_verifier(&json!({
            "nonce": nonce, "format": "dc+sd-jwt", "vct": vct,
            "issuerJwk": issuer_jwk, "responseMode": mode, "enc": enc,
        }));
        let client_id = format!("decentralized_identifier:{}", peer.did);
        // First, a verifier asking for the same type under another office's vct: the
        // wallet's privilege (at that verifier too) is not of a type the query allows, and
        // nothing is sent.
        let other = (i == 0).then(|| {
            peer_verifier(&json!({
                "nonce": nonce, "format": "dc+sd-jwt",
                "vct": "https://other-office.example/vct/ClinicianPrivilegeCredential",
                "issuerJwk": issuer_jwk,
            }))
        });
        let mut facilities = vec![peer.did.as_str()];
        facilities.extend(other.as_ref().map(|o| o.did.as_str()));
        let (wdir, w, verifier) = wallet_with_privilege(
            &fed,
            &format!("wallet-peer-sd-jwt-{i}"),
            &facilities,
            "sd-jwt",
        )
        .await;
        let holder = w.did().to_string();
        if let Some(other) = other {
            let err = wallet::oid4vp::respond(&w, &other.url, &verifier.resolver, None, true)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("no stored credential"), "{err}");
            other.stop();
        }
        // `fedgate wallet respond` opens the store itself: one process's at a time.
        drop(w);
        let out = std::process::Command::new(exe())
            .args(["wallet", "respond", "--dir", wdir.to_str().unwrap()])
            .args(["--dev", "--json", &peer.url])
            .output()
            .unwrap();
        support::assert_ok(&out);
        let outcome = peer.outcome();
        assert_eq!(outcome["ok"], true, "{outcome}");
        assert_eq!(outcome["type"], "dcql", "{outcome}");
        assert_eq!(outcome["expectedNonce"], nonce.as_str());
        assert_eq!(outcome["state"], "state-of-the-peer-verifier");
        if mode == "direct_post.jwt" {
            assert_eq!(outcome["form"], json!(["response"]), "{outcome}");
            assert_eq!(outcome["jarm"]["type"], "Encrypted", "{outcome}");
            assert_eq!(outcome["jarm"]["header"]["alg"], "ECDH-ES", "{outcome}");
            assert_eq!(
                outcome["jarm"]["header"]["enc"],
                enc.unwrap_or("A128GCM"),
                "{outcome}"
            );
            assert_eq!(
                outcome["jarm"]["header"]["kid"], "response-encryption",
                "{outcome}"
            );
        } else {
            assert_eq!(outcome["form"], json!(["state", "vp_token"]), "{outcome}");
        }
        let sd = &outcome["sdJwt"];
        assert_eq!(sd["verified"], true, "{outcome}");
        assert_eq!(sd["header"]["typ"], "dc+sd-jwt", "{outcome}");
        assert_eq!(sd["kb"]["header"]["typ"], "kb+jwt", "{outcome}");
        assert_eq!(sd["kb"]["payload"]["aud"], client_id.as_str());
        assert_eq!(sd["kb"]["payload"]["nonce"], nonce.as_str());
        let claims = &sd["claims"];
        assert_eq!(claims["iss"], OFFICE);
        assert_eq!(claims["vct"], vct.as_str());
        assert_eq!(claims["sub"], holder.as_str());
        assert_eq!(claims["role"], "physician");
        assert_eq!(claims["organization"], REQUESTER_ORG);
        // Only what was asked: no name, no NPI, nothing else of the subject.
        let mut disclosed: Vec<&str> = sd["disclosed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        disclosed.sort_unstable();
        assert_eq!(disclosed, ["organization", "role"], "{outcome}");
        for absent in ["name", "npi", "specialty", "privileges"] {
            assert!(claims.get(absent).is_none(), "{absent}: {claims}");
        }
    }
}
