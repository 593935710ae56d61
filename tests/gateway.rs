//! The gateway as a separate process, with a credentialing office process and the
//! hospital-a fixtures imported: every policy rule allowed and denied over HTTP,
//! tokenization checked against the source identifiers, JWE, detokenize, replay, and the
//! outbox holding an event for every decision.

mod support;

#[path = "gateway/fhir_source.rs"]
mod fhir_source;

/// A stopped gateway's database (its process held the file; it is free once it exited).
fn gateway_db(gw: &Gateway) -> gateway::db::Db {
    let data = gw.dir.join("data");
    gateway::db::open(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()))
}

/// The entries of tree `name` of a stopped gateway's database, decoded.
fn stored<T: serde::de::DeserializeOwned>(gw: &Gateway, name: &str) -> Vec<T> {
    gateway_db(gw)
        .tree(name)
        .entries()
        .unwrap()
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect()
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{contract, Gateway, GatewaySpec, Office, MRN_SYSTEM};
use serde_json::{json, Value};
use support::{exe, repo, CUSTODIAN, OFFICE, REQUESTER_ORG};

const OTHER_ORG: &str = "did:web:clinic-c.test";

fn fixtures() -> Vec<PathBuf> {
    fedgate::harness::fixtures("hospital-a").unwrap()
}

/// A fixture patient: MRN and every direct identifier value of the source record.
struct FixturePatient {
    mrn: String,
    id: String,
    /// Every direct identifier value: identifiers, telecom, address lines.
    secrets: Vec<String>,
    /// Identifier values other than the MRN (SSN, passport, other ids): never in clear
    /// for treatment.
    vaulted: Vec<String>,
    names: Vec<String>,
}

fn fixture_patient(file: &Path) -> FixturePatient {
    let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap()
        .clone();
    let mut secrets = Vec::new();
    let mut vaulted = Vec::new();
    let mut mrn = String::new();
    for ident in patient["identifier"].as_array().unwrap() {
        let v = ident["value"].as_str().unwrap().to_string();
        if ident["system"] == MRN_SYSTEM {
            mrn = v.clone();
        } else {
            vaulted.push(v.clone());
        }
        secrets.push(v);
    }
    for t in patient["telecom"].as_array().into_iter().flatten() {
        secrets.push(t["value"].as_str().unwrap().to_string());
    }
    for a in patient["address"].as_array().into_iter().flatten() {
        for l in a["line"].as_array().into_iter().flatten() {
            secrets.push(l.as_str().unwrap().to_string());
        }
    }
    let mut names = Vec::new();
    for n in patient["name"].as_array().into_iter().flatten() {
        names.push(n["family"].as_str().unwrap().to_string());
    }
    FixturePatient {
        mrn,
        id: patient["id"].as_str().unwrap().to_string(),
        secrets,
        vaulted,
        names,
    }
}

struct Fed {
    office: Office,
    gateway: Gateway,
    /// Last: fields drop in order, and the processes stop before their data goes.
    _dir: tempfile::TempDir,
}

fn extra_toml(office: &Office, policies_note: &str) -> String {
    extra_toml_with(office, policies_note, "")
}

/// As [`extra_toml`], with more `[custodian]` settings.
fn extra_toml_with(office: &Office, policies_note: &str, custodian: &str) -> String {
    format!(
        r#"
challenge_ttl_secs = 120
status_push = ["{office}v1/status/events"]
[trust]
ClinicianPrivilegeCredential = ["{OFFICE}"]
ResearchStudyCredential = ["{OFFICE}"]
[did_web]
"{OFFICE}" = "{office}"
[custodian]
break_glass_minutes = 30
min_cell_size = 3
shifts = [{{ roles = ["pharmacist"], days = [], from_minute = 0, to_minute = 1 }}]
{custodian}
{contract}# {policies_note}
"#,
        office = office.url(),
        contract = contract(
            CUSTODIAN,
            REQUESTER_ORG,
            &["clinical", "billing", "research", "detokenize"],
            &["TREAT", "ETREAT", "BTG", "HPAYMT", "HRESCH"]
        )
    )
}

async fn federation_with(policies: PathBuf, more_toml: &str) -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let spec = GatewaySpec {
        port: 0,
        did: CUSTODIAN.into(),
        records: fixtures(),
        policies,
        extra_toml: format!("{}\n{more_toml}", extra_toml(&office, "test")),
    };
    let gateway = Gateway::start(&exe(), &dir.path().join("gateway"), &spec).unwrap();
    Fed {
        _dir: dir,
        office,
        gateway,
    }
}

async fn federation() -> Fed {
    federation_with(repo("policies"), "").await
}

fn privilege(
    clinician: &str,
    role: &str,
    facility: &str,
    domains: &[&str],
    actions: &[&str],
    org: &str,
) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Requesting Clinician",
        "npi": "1234567893",
        "role": role,
        "specialty": "207R00000X",
        "organization": org,
        "privileges": [{"facility": facility, "domains": domains, "actions": actions}]
    })
}

async fn consent(
    patient: &KeyPair,
    mrn: &str,
    grantee: &str,
    provision: &str,
    purposes: &[&str],
    domains: &[&str],
) -> Value {
    let subject = json!({
        "id": patient.did(),
        "patientIdentifiers": [{"custodian": CUSTODIAN, "system": MRN_SYSTEM, "value": mrn}],
        "custodians": [CUSTODIAN],
        "grantee": {"id": grantee, "kind": if grantee.starts_with("did:key") { "clinician" } else { "organization" }},
        "provision": provision,
        "domains": domains,
        "purposes": purposes,
        "dataClasses": ["Patient", "Observation", "Condition", "Encounter", "DocumentReference", "Claim", "Coverage", "ExplanationOfBenefit"],
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"}
    });
    let vc = credentials::unsigned_credential(
        CredentialKind::PatientConsent,
        patient.did(),
        subject,
        chrono::Utc::now() - chrono::Duration::minutes(1),
        None,
        None,
    );
    credentials::issue(vc, patient, ProofFormat::Jwt)
        .await
        .unwrap()
}

/// A consent self-issued by `patient`, whose DID the gateway's custodian first links to
/// the patient `mrn` (as its registration desk would).
async fn linked_consent(
    gw: &Gateway,
    patient: &KeyPair,
    mrn: &str,
    grantee: &str,
    provision: &str,
    purposes: &[&str],
    domains: &[&str],
) -> Value {
    gw.link_patient(mrn, patient.did()).await.unwrap();
    consent(patient, mrn, grantee, provision, purposes, domains).await
}

async fn vp(gw: &Gateway, holder: &KeyPair, creds: &[Value]) -> (Value, PresentationBinding) {
    let binding = gw.challenge().await.unwrap();
    assert_eq!(binding.domain, CUSTODIAN);
    let vp = credentials::present(creds, holder, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    (vp, binding)
}

fn exchange_body(
    purpose: &str,
    mrn: &str,
    classes: &[&str],
    vp: &Value,
    justification: Option<&str>,
) -> Value {
    let mut b = json!({
        "purpose": purpose,
        "patient": {"system": MRN_SYSTEM, "value": mrn},
        "data_classes": classes,
        "presentation": vp,
    });
    if let Some(j) = justification {
        b["justification"] = json!(j);
    }
    b
}

/// The resources of an answer (not its OperationOutcome).
fn entries(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| &e["resource"])
        .collect()
}

fn types(bundle: &Value) -> std::collections::BTreeSet<String> {
    entries(bundle)
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap().to_string())
        .collect()
}

struct Clinician {
    key: KeyPair,
    credential: Value,
    id: String,
}

async fn clinician(
    fed: &Fed,
    role: &str,
    facility: &str,
    domains: &[&str],
    actions: &[&str],
    org: &str,
) -> Clinician {
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (id, credential) = fed
        .office
        .joiner(
            &privilege(key.did(), role, facility, domains, actions, org),
            "jwt",
        )
        .await
        .unwrap();
    Clinician {
        key,
        credential,
        id,
    }
}

#[tokio::test]
async fn clinical_exchange_allowed_with_consent_and_tokenized() {
    let fed = federation().await;
    let files = fixtures();
    let p = fixture_patient(&files[0]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read", "detokenize"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (vp1, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
    let body = exchange_body(
        "TREAT",
        &p.mrn,
        &["Patient", "Observation", "Condition"],
        &vp1,
        None,
    );
    let (status, headers, bytes) = fed
        .gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert_eq!(status, 200, "{text}");
    let decision_id = headers["fedgate-decision-id"].to_str().unwrap().to_string();
    assert_eq!(headers["fedgate-policy-digest"].len(), 64);
    let bundle: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["identifier"]["value"], decision_id.as_str());
    let got = types(&bundle);
    assert!(
        got.contains("Patient") && got.contains("Observation"),
        "{got:?}"
    );
    assert!(!got.contains("Claim") && !got.contains("DocumentReference"));
    // Treatment with consent reveals name and MRN; SSN and passport are tokens; the
    // custodian's own Patient.id never leaves.
    assert!(text.contains(&p.mrn));
    assert!(!text.contains(&p.id), "custodian patient id leaked");
    assert!(!p.vaulted.is_empty());
    for secret in &p.vaulted {
        assert!(
            !text.contains(secret.as_str()),
            "identifier {secret} left in clear"
        );
    }
    let patient_res = entries(&bundle)
        .into_iter()
        .find(|r| r["resourceType"] == "Patient")
        .unwrap()
        .clone();
    let ssn = patient_res["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ssn.starts_with("tok_"), "{ssn}");
    // References stay consistent: every Observation points at the returned Patient.
    let pid = patient_res["id"].as_str().unwrap();
    for r in entries(&bundle)
        .into_iter()
        .filter(|r| r["resourceType"] == "Observation")
    {
        assert_eq!(r["subject"]["reference"], format!("Patient/{pid}"));
    }

    // The same request again gets the same pseudonym for the same recipient.
    let (vp2, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
    let (status, _, bytes) = fed
        .gateway
        .post_raw(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &p.mrn, &["Patient"], &vp2, None),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let again: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(entries(&again)[0]["id"], pid);

    // Detokenize the SSN token: allowed for this clinician's organization, recorded.
    let (vp3, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, body) = fed
        .gateway
        .post(
            "/v1/detokenize",
            &json!({"token": ssn, "purpose": "TREAT", "presentation": vp3}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(p
        .secrets
        .contains(&body["value"].as_str().unwrap().to_string()));

    // Replaying a used presentation is denied and names the challenge.
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&vp1, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(problem["check"], "challenge");
    assert!(problem["decision_id"].is_string());
}

fn body_of(vp: &Value, mrn: &str) -> Value {
    exchange_body("TREAT", mrn, &["Patient"], vp, None)
}

#[tokio::test]
async fn pseudonyms_differ_across_recipients_and_jwe_reaches_only_the_requester() {
    let fed = federation().await;
    let p = fixture_patient(&fixtures()[1]);
    let a = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent_a = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        a.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (vp_a, _) = vp(&fed.gateway, &a.key, &[a.credential.clone(), consent_a]).await;
    let (status, headers, bytes) = fed
        .gateway
        .post_raw(
            "/v1/exchange/clinical",
            &body_of(&vp_a, &p.mrn),
            Some("application/jose"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["content-type"], "application/jose");
    let jwe = String::from_utf8(bytes).unwrap();
    assert!(!jwe.contains(&p.mrn));
    let plain = gateway::jwe::decrypt_with(&a.key, &jwe).unwrap();
    let bundle_a: Value = serde_json::from_slice(&plain).unwrap();
    let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    assert!(gateway::jwe::decrypt_with(&stranger, &jwe).is_err());

    // A second recipient organization has a contract? No: add one via another clinician of
    // the same org but check the other org is denied without a contract.
    let c = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        OTHER_ORG,
    )
    .await;
    let consent_c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        c.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (vp_c, _) = vp(&fed.gateway, &c.key, &[c.credential.clone(), consent_c]).await;
    let (status, headers, bytes) = fed
        .gateway
        .post_raw("/v1/exchange/clinical", &body_of(&vp_c, &p.mrn), None)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 403, "{problem}");
    // A refusal carries its decision in the same headers as an answer.
    assert_eq!(
        headers["fedgate-decision-id"].to_str().unwrap(),
        problem["decision_id"].as_str().unwrap()
    );
    assert_eq!(
        headers["fedgate-policy-digest"].to_str().unwrap(),
        problem["policy_digest"].as_str().unwrap()
    );
    let reasons = problem["reasons"].to_string();
    assert!(reasons.contains("contract"), "{reasons}");
    assert!(!reasons.contains(&p.mrn));

    // Pseudonyms: same patient, same recipient, same value; tokenizer unit tests cover
    // unlinkability across recipients with the same key.
    let pid = entries(&bundle_a)[0]["id"].as_str().unwrap().to_string();
    assert_ne!(pid, p.id);
}

/// A page made once is served again to the next request that would make the same one
/// (same patient, classes, obligations, recipient, domain and day), byte for byte; every
/// request is still decided and recorded on its own; another question makes its own page.
#[tokio::test]
async fn a_page_made_once_is_served_again_to_the_same_question() {
    let mut fed = federation().await;
    let p = fixture_patient(&fixtures()[2]);
    let a = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        a.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let creds = [a.credential.clone(), consent];
    let counts = || async {
        let gw = &fed.gateway;
        let hits = gw.metric(r#"fedgate_answers_cache_total{result="hit"}"#);
        let misses = gw.metric(r#"fedgate_answers_cache_total{result="miss"}"#);
        (hits.await.unwrap(), misses.await.unwrap())
    };
    let ask = |classes: &'static [&'static str]| {
        let (gw, key, creds, mrn) = (&fed.gateway, &a.key, &creds, p.mrn.clone());
        async move {
            let (vp, _) = vp(gw, key, creds).await;
            let (status, bundle) = gw
                .post(
                    "/v1/exchange/clinical",
                    &exchange_body("TREAT", &mrn, classes, &vp, None),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{bundle}");
            bundle
        }
    };
    let both: &[&str] = &["Patient", "Condition"];
    let first = ask(both).await;
    assert_eq!(counts().await, (0.0, 1.0));
    let second = ask(both).await;
    assert_eq!(counts().await, (1.0, 1.0));
    // The same entries, total and notes; each answer its own decision.
    assert_eq!(first["entry"], second["entry"]);
    assert_eq!(first["total"], second["total"]);
    assert!(entries(&first).len() > 1, "{first}");
    // Tokenized as any answer: the Patient's id is a pseudonym.
    assert_ne!(entries(&first)[0]["id"], p.id.as_str());
    let ids = [&first, &second].map(|b| b["identifier"]["value"].as_str().unwrap().to_string());
    assert_ne!(ids[0], ids[1]);
    // Another set of classes is another question.
    let patient_only = ask(&["Patient"]).await;
    assert_eq!(counts().await, (1.0, 2.0));
    assert_eq!(types(&patient_only), ["Patient".to_string()].into());
    assert_eq!(entries(&patient_only)[0], entries(&first)[0]);

    // Every answer left its own event, with its count.
    fed.gateway.process.stop();
    let events: Vec<Value> = stored(&fed.gateway, "outbox");
    for (id, bundle) in ids.iter().zip([&first, &second]) {
        let e = events
            .iter()
            .find(|e| e["decisionId"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(e["decision"], "allow", "{e}");
        assert_eq!(e["recordCount"], entries(bundle).len(), "{e}");
    }
}

/// The challenge an answer offers for the holder's next presentation.
fn offered(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("fedgate-next-challenge")
        .unwrap_or_else(|| panic!("no next challenge offered: {headers:?}"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_answer_to_a_presentation_offers_the_next_challenge() {
    let fed = federation().await;
    let gw = &fed.gateway;
    let p = fixture_patient(&fixtures()[2]);
    let a = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let consent = linked_consent(
        gw,
        &patient,
        &p.mrn,
        a.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let creds = [a.credential.clone(), consent];
    let answering = |challenge: &str| {
        let binding = PresentationBinding {
            challenge: challenge.to_string(),
            domain: CUSTODIAN.to_string(),
        };
        let (creds, key, mrn) = (&creds, &a.key, &p.mrn);
        async move {
            let vp = credentials::present(creds, key, &binding, ProofFormat::Jwt)
                .await
                .unwrap();
            body_of(&vp, mrn)
        }
    };
    let exchange = |body: Value| async move {
        let (status, headers, bytes) = gw
            .post_raw("/v1/exchange/clinical", &body, None)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        (status, offered(&headers), body)
    };

    // The first challenge is asked for; the answer offers the next.
    let (first, _) = vp(gw, &a.key, &creds).await;
    let (status, next, bundle) = exchange(body_of(&first, &p.mrn)).await;
    assert_eq!(status, 200, "{bundle}");
    // Answered without asking: the offered challenge is as good as an asked one.
    let second = answering(&next).await;
    let (status, after_second, bundle) = exchange(second.clone()).await;
    assert_eq!(status, 200, "{bundle}");
    assert_ne!(after_second, next);
    // And as single-use: the same presentation again is a replay, refused as any. The
    // refusal offers a fresh challenge, which the holder answers at once.
    let (status, after_replay, problem) = exchange(second).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "challenge", "{problem}");
    assert_ne!(after_replay, after_second);
    let (status, _, bundle) = exchange(answering(&after_replay).await).await;
    assert_eq!(status, 200, "{bundle}");
    // An offered challenge altered by one character was never issued.
    let mut forged = after_second.clone().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let (status, _, problem) = exchange(answering(&String::from_utf8(forged).unwrap()).await).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "challenge", "{problem}");

    // Every route that takes a presentation offers one, on a client's mistake too.
    for (path, body) in [
        ("/v1/exchange/no-such-domain", body_of(&first, &p.mrn)),
        (
            "/v1/consents",
            json!({"presentation": {"type": ["VerifiablePresentation"]}}),
        ),
        (
            "/v1/consents/withdrawals",
            json!({"presentation": "not.a.jwt"}),
        ),
        (
            "/v1/detokenize",
            json!({"purpose": "TREAT", "token": "tok", "presentation": "not.a.jwt"}),
        ),
    ] {
        let (status, headers, _) = gw.post_raw(path, &body, None).await.unwrap();
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(!offered(&headers).is_empty(), "{path}");
    }
    // A challenge is asked for with a POST, and offered nowhere else.
    let (status, headers, _) = gw
        .post_raw("/v1/challenges", &json!({}), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(headers.get("fedgate-next-challenge").is_none());
}

#[tokio::test]
async fn policy_denials_over_http() {
    let fed = federation().await;
    let p = fixture_patient(&fixtures()[2]);
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();

    // No consent → denied.
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        problem["reasons"].to_string().contains("consent"),
        "{problem}"
    );

    // Explicit deny beside a permit: the deny wins.
    let permit = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let deny = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "deny",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        &[doc.credential.clone(), permit.clone(), deny],
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
    assert!(problem["reasons"].to_string().contains("deny"), "{problem}");

    // Privilege for another facility → denied.
    let elsewhere = clinician(
        &fed,
        "physician",
        "did:web:elsewhere.test",
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let permit_e = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        elsewhere.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &elsewhere.key,
        &[elsewhere.credential.clone(), permit_e],
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        problem["reasons"].to_string().contains("privilege"),
        "{problem}"
    );

    // Consent for another purpose → denied; consent for another patient → denied.
    let other_purpose = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["CAREMGT"],
        &["clinical"],
    )
    .await;
    let other_patient = consent(
        &patient,
        "0000000",
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    for c in [other_purpose, other_patient] {
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c]).await;
        let (status, _) = fed
            .gateway
            .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
            .await
            .unwrap();
        assert_eq!(status, 403);
    }

    // Role → classes: a nurse asking only for DocumentReference is denied.
    let nurse = clinician(
        &fed,
        "nurse",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let permit_n = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        nurse.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &nurse.key,
        &[nurse.credential.clone(), permit_n],
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &p.mrn, &["DocumentReference"], &v, None),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");

    // Shift window: pharmacists have a window that is never open here.
    let pharm = clinician(
        &fed,
        "pharmacist",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let permit_p = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        pharm.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &pharm.key,
        &[pharm.credential.clone(), permit_p],
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &p.mrn, &["Observation"], &v, None),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["reasons"].to_string().contains("shift"),
        "{problem}"
    );

    // Unknown domain and purpose are client errors; a presentation for another gateway is
    // refused with the domain check.
    let (status, _) = fed
        .gateway
        .post("/v1/exchange/psychic", &body_of(&json!("x"), &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 404);
    // A domain that is no name at all is malformed: 400, naming the parameter.
    for bad in ["..%2f..%2fetc", "Clinical", "clinical%00"] {
        let (status, problem) = fed
            .gateway
            .post(
                &format!("/v1/exchange/{bad}"),
                &body_of(&json!("x"), &p.mrn),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["parameter"], "domain", "{problem}");
    }
    let (status, _) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &exchange_body("SHOPPING", &p.mrn, &["Patient"], &json!("x"), None),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let binding = fed.gateway.challenge().await.unwrap();
    let wrong = PresentationBinding {
        domain: "did:web:hospital-z.test".into(),
        ..binding
    };
    let v = credentials::present(
        std::slice::from_ref(&doc.credential),
        &doc.key,
        &wrong,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(problem["check"], "domain");
    // A malformed presentation is a recorded refusal, not a crash.
    let (status, problem) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &body_of(&json!({"not": "a presentation"}), &p.mrn),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
}

#[tokio::test]
async fn break_glass_billing_and_revocation() {
    let fed = federation().await;
    let p = fixture_patient(&fixtures()[0]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;

    // Break-glass without a justification: denied.
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, _) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &exchange_body("ETREAT", &p.mrn, &["Observation"], &v, None),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    // With one: allowed, time-limited, flagged.
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, headers, bytes) = fed
        .gateway
        .post_raw(
            "/v1/exchange/clinical",
            &exchange_body(
                "ETREAT",
                &p.mrn,
                &["Patient", "Observation"],
                &v,
                Some("unconscious patient in the emergency department, no consent on file"),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["fedgate-break-glass"], "true");
    assert!(headers.contains_key("fedgate-access-expires"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&p.mrn), "break-glass tokenizes the MRN");

    // Billing specialist with HPAYMT: Claim, Coverage, EOB only.
    let biller = clinician(
        &fed,
        "billing-specialist",
        CUSTODIAN,
        &["billing"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        REQUESTER_ORG,
        "permit",
        &["HPAYMT"],
        &["billing"],
    )
    .await;
    let (v, _) = vp(&fed.gateway, &biller.key, &[biller.credential.clone(), c]).await;
    let (status, _, bytes) = fed
        .gateway
        .post_raw(
            "/v1/exchange/billing",
            &exchange_body(
                "HPAYMT",
                &p.mrn,
                &[
                    "Claim",
                    "Coverage",
                    "ExplanationOfBenefit",
                    "Observation",
                    "DocumentReference",
                ],
                &v,
                None,
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let bundle: Value = serde_json::from_slice(&bytes).unwrap();
    let got = types(&bundle);
    assert!(got.contains("Claim"), "{got:?}");
    // The OperationOutcome says what was withheld; nothing clinical comes.
    assert!(
        got.iter().all(|t| [
            "Claim",
            "Coverage",
            "ExplanationOfBenefit",
            "Patient",
            "OperationOutcome"
        ]
        .contains(&t.as_str())),
        "{got:?}"
    );

    // Leaver: the office revokes the clinician; the push makes the next request fail.
    fed.office.revoke(&doc.id).await.unwrap();
    let started = std::time::Instant::now();
    let mut denied = false;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let (v, _) = vp(
            &fed.gateway,
            &doc.key,
            std::slice::from_ref(&doc.credential),
        )
        .await;
        let (status, problem) = fed
            .gateway
            .post(
                "/v1/exchange/clinical",
                &exchange_body(
                    "ETREAT",
                    &p.mrn,
                    &["Observation"],
                    &v,
                    Some("unconscious patient in the emergency department, no consent on file"),
                ),
            )
            .await
            .unwrap();
        if status == 403 {
            assert_eq!(problem["check"], "status", "{problem}");
            denied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(denied, "revocation never took effect");
}

#[tokio::test]
async fn every_decision_leaves_an_event_in_the_outbox() {
    let mut fed = federation().await;
    let p = fixture_patient(&fixtures()[3]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let mut ids = Vec::new();
    // allow
    let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
    let (status, headers, _) = fed
        .gateway
        .post_raw("/v1/exchange/clinical", &body_of(&v, &p.mrn), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    ids.push(headers["fedgate-decision-id"].to_str().unwrap().to_string());
    // policy deny
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    ids.push(problem["decision_id"].as_str().unwrap().to_string());
    // verification refusal (replay)
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);
    ids.push(problem["decision_id"].as_str().unwrap().to_string());
    // One allowed presentation sent eight times at once: its challenge is spent by the
    // write of the one event served; every other copy is refused as a replay.
    let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c]).await;
    let (url, body) = (
        format!("{}v1/exchange/clinical", fed.gateway.url()),
        body_of(&v, &p.mrn),
    );
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, body) = (url.clone(), body.clone());
        racing.spawn(async move {
            let r = reqwest::Client::new()
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let id = r.headers()["fedgate-decision-id"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = r.json().await.unwrap();
            (status, id, body)
        });
    }
    let (mut served, mut replays) = (Vec::new(), Vec::new());
    while let Some(answer) = racing.join_next().await {
        let (status, id, body) = answer.unwrap();
        match status {
            200 => served.push(id),
            403 => {
                assert_eq!(body["check"], "challenge", "{body}");
                assert_eq!(body["decision_id"].as_str(), Some(id.as_str()));
                replays.push(id);
            }
            other => panic!("HTTP {other}: {body}"),
        }
    }
    assert_eq!(
        (served.len(), replays.len()),
        (1, 7),
        "{served:?} {replays:?}"
    );
    // verification refusal whose detail quotes the credential: a self-signed privilege
    // whose NPI is an SSN fails the schema check, and the schema error quotes the value.
    let ssn = "123-45-6789";
    let mut subject = privilege(
        doc.key.did(),
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    );
    subject["npi"] = json!(ssn);
    let unsigned = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        doc.key.did(),
        subject,
        chrono::Utc::now() - chrono::Duration::minutes(1),
        None,
        None,
    );
    let forged = Value::String(federation::jose::sign(&unsigned, &doc.key, "vc+jwt").unwrap());
    let (v, _) = vp(&fed.gateway, &doc.key, &[forged]).await;
    let (status, problem) = fed
        .gateway
        .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "schema", "{problem}");
    // The requester, who sent the value, is told the detail.
    assert!(problem["reasons"].to_string().contains(ssn), "{problem}");
    ids.push(problem["decision_id"].as_str().unwrap().to_string());

    // Metrics count them.
    let metrics = reqwest::get(format!("{}metrics", fed.gateway.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fedgate_decisions_total"), "{metrics}");

    // Stop the gateway and read its outbox from disk.
    fed.gateway.process.stop();
    let events: Vec<Value> = stored(&fed.gateway, "outbox");
    for id in &ids {
        let e = events
            .iter()
            .find(|e| e["decisionId"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(e["custodian"], CUSTODIAN);
        assert!(e["patientRef"].is_string() || e["failedCheck"].is_string());
    }
    let allow = events
        .iter()
        .find(|e| e["decisionId"] == ids[0].as_str())
        .unwrap();
    assert_eq!(allow["decision"], "allow");
    assert!(allow["recordCount"].as_u64().unwrap() > 0);
    // Of the racing copies, one allow that was served, and seven refusals, none an allow.
    let of =
        |id: &str| -> Vec<&Value> { events.iter().filter(|e| e["decisionId"] == id).collect() };
    let winner = of(&served[0]);
    assert_eq!(winner.len(), 1, "{winner:?}");
    assert_eq!(winner[0]["decision"], "allow");
    assert!(winner[0]["recordCount"].as_u64().unwrap() > 0);
    for id in &replays {
        let refused = of(id);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0]["decision"], "deny");
        assert_eq!(refused[0]["failedCheck"], "challenge");
        assert_eq!(refused[0]["recordCount"], 0);
    }
    assert_eq!(
        events
            .iter()
            .find(|e| e["decisionId"] == ids[2].as_str())
            .unwrap()["failedCheck"],
        "challenge"
    );
    // The schema refusal is recorded with the check's fixed text, not the detail.
    let schema = events
        .iter()
        .find(|e| e["decisionId"] == ids[3].as_str())
        .unwrap();
    assert_eq!(schema["failedCheck"], "schema");
    assert_eq!(schema["reasons"], json!(["verification failed: schema"]));
    assert!(!schema.to_string().contains("6789"), "{schema}");
    // Every recorded event is one the visibility service takes.
    for e in &events {
        let e: federation::events::AccessEvent = serde_json::from_value(e.clone()).unwrap();
        federation::events::check_free_text(&e).unwrap();
    }
    // No PHI in any event.
    let all = serde_json::to_string(&events).unwrap();
    for s in p
        .secrets
        .iter()
        .chain(p.names.iter())
        .chain(std::iter::once(&p.id))
    {
        assert!(!all.contains(s.as_str()), "event leaks {s}");
    }
}

#[tokio::test]
async fn broken_policy_denies_everything_until_a_good_reload() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for e in std::fs::read_dir(repo("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), policies.join(e.file_name())).unwrap();
    }
    let fed = federation_with(policies.clone(), "").await;
    let p = fixture_patient(&fixtures()[4]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let ask = |v: Value| exchange_body("TREAT", &p.mrn, &["Observation"], &v, None);

    let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
    assert_eq!(
        fed.gateway
            .post("/v1/exchange/clinical", &ask(v))
            .await
            .unwrap()
            .0,
        200
    );

    let good = std::fs::read_to_string(policies.join("clinical.rego")).unwrap();
    std::fs::write(
        policies.join("clinical.rego"),
        "package fedgate.clinical\n this is not rego {",
    )
    .unwrap();
    let mut broken = false;
    for _ in 0..100 {
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
        let (status, problem) = fed
            .gateway
            .post("/v1/exchange/clinical", &ask(v))
            .await
            .unwrap();
        if status == 403 {
            assert!(
                problem["reasons"].to_string().contains("polic"),
                "{problem}"
            );
            broken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(broken, "a broken policy file was never noticed");
    let ready = reqwest::get(format!("{}readyz", fed.gateway.url()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    std::fs::write(policies.join("clinical.rego"), good).unwrap();
    let mut restored = false;
    for _ in 0..100 {
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
        if fed
            .gateway
            .post("/v1/exchange/clinical", &ask(v))
            .await
            .unwrap()
            .0
            == 200
        {
            restored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(restored, "the good reload did not restore service");
}

#[tokio::test]
async fn research_answers_are_noisy_and_charged_to_the_study_budget_until_it_runs_out() {
    // The research network's agent key, and a research contract for it.
    let network = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let contract = contract(CUSTODIAN, network.did(), &["research"], &["HRESCH"]);
    let mut fed = federation_with(repo("policies"), &contract).await;
    let files = fixtures();
    // Five of the six fixture patients register research consent for the study, from
    // their own wallets; the custodian has linked the DIDs of four of them. The fifth
    // consent speaks for nobody (anyone can sign a consent naming any patient), so the
    // cohort is four.
    let study_id = "urn:fedgate:study:cohort-1";
    for (i, f) in files.iter().take(5).enumerate() {
        let p = fixture_patient(f);
        let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let linked = i < 4;
        if linked {
            fed.gateway
                .link_patient(&p.mrn, patient.did())
                .await
                .unwrap();
        }
        let subject = json!({
            "id": patient.did(),
            "patientIdentifiers": [{"custodian": CUSTODIAN, "system": MRN_SYSTEM, "value": p.mrn}],
            "custodians": [CUSTODIAN],
            "grantee": {"id": study_id, "kind": "study"},
            "provision": "permit",
            "domains": ["research"],
            "purposes": ["HRESCH"],
            "dataClasses": ["Condition", "Observation", "Patient"],
            "period": {"start": "2026-01-01T00:00:00Z"}
        });
        let vc = credentials::unsigned_credential(
            CredentialKind::PatientConsent,
            patient.did(),
            subject,
            chrono::Utc::now() - chrono::Duration::minutes(1),
            None,
            None,
        );
        let vc = credentials::issue(vc, &patient, ProofFormat::Jwt)
            .await
            .unwrap();
        let (v, _) = vp(&fed.gateway, &patient, &[vc]).await;
        let (status, body) = fed
            .gateway
            .post("/v1/consents", &json!({"presentation": v}))
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["registered"][0]["patientKnown"], true);
        assert_eq!(body["registered"][0]["speaksForPatient"], linked);
    }
    let study = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "type": ["VerifiableCredential", "ResearchStudyCredential"],
        "credentialSubject": {
            "id": study_id, "title": "Cohort", "sponsor": network.did(),
            "purposes": ["HRESCH"], "dataClasses": ["Condition", "Observation", "Patient"],
            "aggregateOnly": true, "minCellSize": 3, "epsilonBudget": 4.0
        },
        "validUntil": "2030-01-01T00:00:00Z"
    });
    let study_vc = fed.office.issue(study, "jwt").await.unwrap();
    let ask =
        |query: Value, v: Value| json!({"purpose": "HRESCH", "query": query, "presentation": v});

    let query = |q: Value| {
        let (gateway, network, study_vc) = (&fed.gateway, &network, &study_vc);
        async move {
            let (v, _) = vp(gateway, network, std::slice::from_ref(study_vc)).await;
            gateway
                .post("/v1/research/queries", &ask(q, v))
                .await
                .unwrap()
        }
    };
    let mut decisions: Vec<(String, u16)> = Vec::new();

    // The custodian's bands, noisy counts, what it cost and what is left. The custodian's
    // default budget is 5 epsilon (0.5 per query, at most 1); the IRB capped the study at 4.
    let (status, body) = query(json!({"conditions": []})).await;
    assert_eq!(status, 200, "{body}");
    decisions.push((body["decisionId"].as_str().unwrap().into(), status));
    assert_eq!(body["privacy"]["epsilonSpentMicro"], 500_000, "{body}");
    assert_eq!(body["privacy"]["budgetLeftMicro"], 3_500_000, "{body}");
    assert_eq!(body["privacy"]["budget"], 4.0, "{body}");
    assert!(body["privacy"]["countNoiseScale"].as_f64().unwrap() > 1.0);
    let cells = body["result"]["cells"].as_array().unwrap();
    let bands: Vec<&str> = cells
        .iter()
        .map(|c| c["age_band"].as_str().unwrap())
        .collect();
    assert_eq!(bands, ["0-17", "18-44", "45-64", "65-89", "90+"]);
    assert!(body["result"].get("total").is_none(), "{body}");
    for c in cells {
        // A shown count is at least the cell size (3 here) and comes with its interval.
        match c["count"].as_i64() {
            Some(n) => assert!(n >= 3 && c["count_ci95"].is_array(), "{c}"),
            None => assert_eq!(c["suppressed"], true),
        }
    }
    let text = body.to_string();
    for f in &files {
        let p = fixture_patient(f);
        assert!(
            !text.contains(&p.mrn) && !text.contains(&p.id),
            "record-level data left"
        );
    }

    // Bad input: refused with a problem, before anything is read or spent.
    for (q, says) in [
        (
            json!({"age_bands": [[0, 98], [99, 200]]}),
            "fixed by the custodian",
        ),
        (json!({"budget": 100}), "never by a query"),
        (json!({"epsilon_budget": 100}), "never by a query"),
        (json!({"epsilon": 0}), "positive"),
        (json!({"epsilon": -1}), "positive"),
        (json!({"epsilon": "NaN"}), "epsilon"),
        (json!({"epsilon": 1.5}), "most per query"),
        (json!({"epsilon": 1e300}), "most per query"),
        (json!({"epsilon": 1e-9}), "at least"),
        (json!({"observation": {"code": "8302-2"}}), "bounds"),
        (
            json!({"observation": {"code": "8302-2", "bounds": [0, 1e9]}}),
            "bounds",
        ),
    ] {
        let (status, body) = query(q.clone()).await;
        assert_eq!(status, 422, "{q}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{q}: {body}"
        );
        assert!(body.get("privacy").is_none());
    }
    let (v, _) = vp(&fed.gateway, &network, std::slice::from_ref(&study_vc)).await;
    let (status, body) = fed
        .gateway
        .post(
            "/v1/research/queries",
            &json!({"purpose": "HRESCH", "query": {}, "budget": 9, "presentation": v}),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");

    // Three queries of 1 epsilon (one a mean of heights clamped to declared bounds): what
    // is left shows the refusals above spent nothing.
    for i in 0..3 {
        let q = if i == 0 {
            json!({"epsilon": 1.0, "observation": {"code": "8302-2", "bounds": [40, 200]}})
        } else {
            json!({"epsilon": 1.0})
        };
        let (status, body) = query(q).await;
        assert_eq!(status, 200, "{body}");
        decisions.push((body["decisionId"].as_str().unwrap().into(), status));
        assert_eq!(
            body["privacy"]["budgetLeftMicro"],
            2_500_000 - i * 1_000_000
        );
        if i == 0 {
            assert_eq!(body["privacy"]["bounds"], json!([40.0, 200.0]), "{body}");
            assert!(body["privacy"]["sumNoiseScale"].as_f64().unwrap() > 100.0);
        }
    }
    // 0.5 left: a query of 1 is refused with the reason, and spends nothing.
    let (status, body) = query(json!({"epsilon": 1.0})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("privacy budget"),
        "{body}"
    );
    decisions.push((body["decision_id"].as_str().unwrap().into(), status));
    let (status, body) = query(json!({"epsilon": 0.5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["privacy"]["budgetLeftMicro"], 0);
    decisions.push((body["decisionId"].as_str().unwrap().into(), status));
    // Spent: every later query is refused.
    for q in [json!({}), json!({"epsilon": 0.000001})] {
        let (status, body) = query(q).await;
        assert_eq!(status, 403, "{body}");
        decisions.push((body["decision_id"].as_str().unwrap().into(), status));
    }

    // A clinician's privilege is no study: refused.
    let doc = clinician(
        &fed,
        "researcher",
        CUSTODIAN,
        &["research"],
        &["query"],
        REQUESTER_ORG,
    )
    .await;
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, _) = fed
        .gateway
        .post("/v1/research/queries", &ask(json!({"conditions": []}), v))
        .await
        .unwrap();
    assert_eq!(status, 403);

    // On disk: the study spent exactly its budget, and every query's event says what it
    // spent or that it was refused for want of budget.
    fed.gateway.process.stop();
    let spent = gateway_db(&fed.gateway)
        .tree("research_budget")
        .get(study_id.as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(spent.as_slice().try_into().unwrap()),
        4_000_000
    );
    let events: Vec<federation::events::AccessEvent> = stored(&fed.gateway, "outbox");
    let mut total = 0;
    for (id, status) in &decisions {
        let e = events
            .iter()
            .find(|e| &e.decision_id == id)
            .unwrap_or_else(|| panic!("no event for {id}"));
        federation::events::check_free_text(e).unwrap();
        let p = e
            .privacy
            .as_ref()
            .expect("a research event says what it spent");
        assert_eq!(p.study, study_id);
        assert_eq!(e.record_count, 0);
        if *status == 200 {
            assert_eq!(e.decision, federation::events::Outcome::Allow);
            assert!(p.epsilon_micro > 0);
        } else {
            assert_eq!(e.decision, federation::events::Outcome::Deny);
            assert_eq!(p.epsilon_micro, 0);
            assert_eq!(e.reasons, [federation::events::PRIVACY_BUDGET_REASON]);
        }
        total += p.epsilon_micro;
    }
    assert_eq!(total, 4_000_000);
}

#[tokio::test]
async fn gateway_follows_the_signed_federation_manifest() {
    use federation::registry::{Contract, Governance, Manifest, Member, Role, SignedManifest};
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let governors: Vec<KeyPair> = (0..3)
        .map(|_| KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap())
        .collect();
    let governance = Governance {
        threshold: 2,
        keys: governors
            .iter()
            .map(|k| k.verification_method().to_string())
            .collect(),
    };
    let member = |did: &str, role: Role, base: &str| Member {
        did: did.into(),
        name: did.into(),
        roles: vec![role],
        endpoints: Default::default(),
        base_url: base.into(),
    };
    let mut manifest = Manifest::new("test federation", governance.clone());
    manifest.members = vec![
        member(OFFICE, Role::CredentialingOffice, &office.url()),
        member(CUSTODIAN, Role::Custodian, "http://127.0.0.1:9/"),
        member(REQUESTER_ORG, Role::Requester, "http://127.0.0.1:9/"),
    ];
    manifest
        .trusted_issuers
        .insert(CredentialKind::ClinicianPrivilege, vec![OFFICE.into()]);
    manifest.contracts = vec![Contract {
        custodian: CUSTODIAN.into(),
        requester: REQUESTER_ORG.into(),
        domains: vec![federation::credentials::Domain::Clinical],
        purposes: vec!["TREAT".into()],
        expires: None,
    }];
    let signed_path = dir.path().join("federation.signed.json");
    SignedManifest::sign(&manifest, &[&governors[0], &governors[1]])
        .unwrap()
        .save(&signed_path)
        .unwrap();
    let keys: Vec<String> = governance.keys.iter().map(|k| format!("\"{k}\"")).collect();
    let extra = format!(
        "status_push = [\"{}v1/status/events\"]\n[registry]\nsigned = \"{}\"\npoll_secs = 1\ngovernance = {{ threshold = 2, keys = [{}] }}\n",
        office.url(),
        signed_path.display(),
        keys.join(", ")
    );
    let gateway = Gateway::start(
        &exe(),
        &dir.path().join("gateway"),
        &GatewaySpec {
            port: 0,
            did: CUSTODIAN.into(),
            records: fixtures(),
            policies: repo("policies"),
            extra_toml: extra,
        },
    )
    .unwrap();
    let fed = Fed {
        _dir: dir,
        office,
        gateway,
    };
    let p = fixture_patient(&fixtures()[5]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let ask = |v: Value| body_of(&v, &p.mrn);
    let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
    let (status, body) = fed
        .gateway
        .post("/v1/exchange/clinical", &ask(v))
        .await
        .unwrap();
    assert_eq!(status, 200, "trust and contract from the manifest: {body}");

    // v2 drops the contract, signed by two other governors: picked up live.
    let mut v2 = manifest.clone();
    v2.version = 2;
    v2.contracts.clear();
    SignedManifest::sign(&v2, &[&governors[1], &governors[2]])
        .unwrap()
        .save(&signed_path)
        .unwrap();
    let mut denied = false;
    for _ in 0..60 {
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
        let (status, problem) = fed
            .gateway
            .post("/v1/exchange/clinical", &ask(v))
            .await
            .unwrap();
        if status == 403 {
            assert!(
                problem["reasons"].to_string().contains("contract"),
                "{problem}"
            );
            denied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(denied, "the newer manifest was never picked up");

    // An under-signed v3 (1 of 3) restoring the contract, and a rollback to v1: both
    // refused; v2 stays in force.
    let mut v3 = manifest.clone();
    v3.version = 3;
    for bad in [
        SignedManifest::sign(&v3, &[&governors[0]]).unwrap(),
        SignedManifest::sign(&manifest, &[&governors[0], &governors[1]]).unwrap(),
    ] {
        bad.save(&signed_path).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
        let (status, _) = fed
            .gateway
            .post("/v1/exchange/clinical", &ask(v))
            .await
            .unwrap();
        assert_eq!(
            status, 403,
            "a refused manifest changed what the gateway allows"
        );
    }
}

#[tokio::test]
async fn patient_links_are_the_custodians_to_make_and_unmake() {
    let fed = federation().await;
    let p = fixture_patient(&fixtures()[1]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = consent(
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let ask = || async {
        let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c.clone()]).await;
        fed.gateway
            .post("/v1/exchange/clinical", &body_of(&v, &p.mrn))
            .await
            .unwrap()
    };
    let (status, problem) = ask().await;
    assert_eq!(status, 403);
    assert!(
        problem["reasons"].to_string().contains("not linked"),
        "{problem}"
    );

    // Only the custodian links: no token, a wrong token, an unknown patient, no DID.
    let url = format!("{}v1/patient-links", fed.gateway.url());
    let link = json!({"patient": {"system": MRN_SYSTEM, "value": p.mrn}, "did": patient.did()});
    let http = reqwest::Client::new();
    for token in [None, Some("not-the-admin-token-at-all")] {
        let mut req = http.post(&url).json(&link);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let token = std::fs::read_to_string(fed.gateway.dir.join("admin-token")).unwrap();
    for (body, want) in [
        (
            json!({"patient": {"system": MRN_SYSTEM, "value": "0000000"}, "did": patient.did()}),
            404,
        ),
        (
            json!({"patient": {"system": MRN_SYSTEM, "value": p.mrn}, "did": "nobody"}),
            400,
        ),
        (
            json!({"patient": {"system": MRN_SYSTEM, "value": p.mrn}}),
            422,
        ),
    ] {
        let resp = http
            .post(&url)
            .bearer_auth(token.trim())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            !problem.to_string().contains(&p.mrn),
            "the answer echoed the MRN"
        );
    }

    // Linked: the patient's own consent now speaks for them. Unlinked: no more.
    fed.gateway
        .link_patient(&p.mrn, patient.did())
        .await
        .unwrap();
    assert_eq!(ask().await.0, 200);
    let resp = http
        .post(format!("{url}/removals"))
        .bearer_auth(token.trim())
        .json(&link)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["removed"], true);
    assert_eq!(ask().await.0, 403);
}

/// A gateway whose custodian holds the hospital-a fixtures and `patients` more, with
/// `custodian` settings.
async fn federation_holding(patients: &[synth::Patient], custodian: &str) -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let mut records = fixtures();
    for (i, p) in patients.iter().enumerate() {
        let path = dir.path().join(format!("synth-{i}.json"));
        std::fs::write(&path, serde_json::to_vec(&p.bundle).unwrap()).unwrap();
        records.push(path);
    }
    let spec = GatewaySpec {
        port: 0,
        did: CUSTODIAN.into(),
        records,
        policies: repo("policies"),
        extra_toml: extra_toml_with(&office, "test", custodian),
    };
    let gateway = Gateway::start(&exe(), &dir.path().join("gateway"), &spec).unwrap();
    Fed {
        _dir: dir,
        office,
        gateway,
    }
}

async fn get_page(url: &str, proof: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(p) = proof {
        req = req.header("fedgate-page-proof", p);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

/// The cursor and page number of a page link.
fn cursor_of(url: &str) -> (String, u32) {
    let (path, query) = url.split_once('?').unwrap();
    let cursor = path.rsplit('/').next().unwrap().to_string();
    (
        cursor,
        query.strip_prefix("page=").unwrap().parse().unwrap(),
    )
}

/// An answer larger than `max_records` comes in pages, each fetched by the requester
/// alone without a new presentation and each recorded; what policy withholds is said in
/// an OperationOutcome; references to what stays behind say so.
#[tokio::test]
async fn large_answers_come_in_pages_that_say_what_they_leave_out() {
    let patient_record = synth::Generator::new(synth::Options {
        seed: 41,
        min_resources: 700,
        max_resources: 700,
        ..synth::Options::default()
    })
    .patient();
    let mrn = patient_record.identity.mrn.clone();
    let mut fed =
        federation_holding(std::slice::from_ref(&patient_record), "max_records = 100").await;
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let other = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        &fed.gateway,
        &patient,
        &mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let (v, _) = vp(&fed.gateway, &doc.key, &[doc.credential.clone(), c]).await;
    let classes = [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "DocumentReference",
        "ImagingStudy",
    ];
    let (status, first) = fed
        .gateway
        .post(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &mrn, &classes, &v, None),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{first}");
    let granted = [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "DocumentReference",
    ];
    let expected: usize = granted.iter().map(|t| patient_record.count(t)).sum();
    assert!(expected > 300, "{expected}");
    assert_eq!(first["total"], expected, "total counts the whole answer");
    let decision_id = first["identifier"]["value"].as_str().unwrap().to_string();

    // The OperationOutcome says what was withheld, without a value from the record.
    let outcome = |b: &Value| -> String {
        let e: Vec<&Value> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "outcome")
            .collect();
        assert_eq!(e.len(), 1, "one OperationOutcome per page");
        assert_eq!(e[0]["resource"]["resourceType"], "OperationOutcome");
        e[0]["resource"].to_string()
    };
    let said = outcome(&first);
    assert!(said.contains("ImagingStudy withheld"), "{said}");
    assert!(
        said.contains("reference(s) to Practitioner withheld"),
        "{said}"
    );
    assert!(
        !said.contains(&mrn) && !said.contains(&patient_record.identity.family),
        "{said}"
    );
    let masked = first
        .to_string()
        .matches("\"valueCode\":\"masked\"")
        .count();
    assert!(masked > 0, "references to withheld targets are marked");

    // Pages: 100 resources each (the patient heads each), the requester's proof each time.
    let mut seen = std::collections::HashSet::new();
    let mut bundle = first.clone();
    let mut pages: u32 = 0;
    loop {
        pages += 1;
        let matches: Vec<&Value> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] != "outcome")
            .collect();
        assert!(matches.len() <= 100, "page {pages} has {}", matches.len());
        assert_eq!(matches[0]["resource"]["resourceType"], "Patient");
        for e in &matches[1..] {
            let r = &e["resource"];
            assert!(
                seen.insert(format!("{}/{}", r["resourceType"], r["id"])),
                "{r} twice"
            );
        }
        assert_eq!(bundle["identifier"]["value"], decision_id.as_str());
        let Some(next) = next_link(&bundle) else {
            break;
        };
        let (cursor, n) = cursor_of(&next);
        assert_eq!(n, pages + 1);
        if pages == 1 {
            // No proof, a proof by another clinician, a forged cursor, a page past the
            // end, a stale proof, a malformed page number: refused, nothing served.
            assert_eq!(get_page(&next, None).await.0, 401);
            let theirs = gateway::paging::sign_proof(&other.key, CUSTODIAN, &cursor, n).unwrap();
            let (status, problem) = get_page(&next, Some(&theirs)).await;
            assert_eq!(status, 403, "{problem}");
            assert_eq!(
                problem["type"]
                    .as_str()
                    .map(|t| t.ends_with("page-requester")),
                Some(true),
                "{problem}"
            );
            let forged = next.replace(&cursor, &"A".repeat(cursor.len()));
            let proof =
                gateway::paging::sign_proof(&doc.key, CUSTODIAN, &"A".repeat(cursor.len()), n)
                    .unwrap();
            assert_eq!(get_page(&forged, Some(&proof)).await.0, 404);
            let far = next.replace(&format!("page={n}"), "page=999");
            let proof = gateway::paging::sign_proof(&doc.key, CUSTODIAN, &cursor, 999).unwrap();
            assert_eq!(get_page(&far, Some(&proof)).await.0, 404);
            let wrong_page =
                gateway::paging::sign_proof(&doc.key, CUSTODIAN, &cursor, n + 1).unwrap();
            assert_eq!(get_page(&next, Some(&wrong_page)).await.0, 401);
            let bad = next.replace(&format!("page={n}"), "page=two");
            assert_eq!(get_page(&bad, Some(&wrong_page)).await.0, 400);
        }
        let proof = gateway::paging::sign_proof(&doc.key, CUSTODIAN, &cursor, n).unwrap();
        let (status, page) = get_page(&next, Some(&proof)).await;
        assert_eq!(status, 200, "{page}");
        assert!(outcome(&page).contains("ImagingStudy withheld"));
        bundle = page;
    }
    assert_eq!(
        seen.len() + 1,
        expected,
        "every resource exactly once over the pages"
    );
    assert_eq!(pages as usize, (expected - 1).div_ceil(99), "{pages} pages");

    // Every page was recorded as an event of the decision.
    fed.gateway.process.stop();
    let events: Vec<Value> = stored(&fed.gateway, "outbox")
        .into_iter()
        .filter(|e: &Value| e["decisionId"] == decision_id.as_str())
        .collect();
    assert_eq!(events.len(), pages as usize, "one event per page");
    let served: u64 = events
        .iter()
        .map(|e| e["recordCount"].as_u64().unwrap())
        .sum();
    assert_eq!(
        served as usize,
        expected + pages as usize - 1,
        "the patient heads each page"
    );
    let event_ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), pages as usize);
}

/// Without a permitting consent, a patient who is not known here and one who is get the
/// same answer: a denial is no oracle for MRNs.
#[tokio::test]
async fn unknown_and_unconsented_patients_get_the_same_answer() {
    let fed = federation().await;
    let p = fixture_patient(&fixtures()[1]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let mut answers = Vec::new();
    for mrn in [p.mrn.as_str(), "0000000404"] {
        let (v, _) = vp(
            &fed.gateway,
            &doc.key,
            std::slice::from_ref(&doc.credential),
        )
        .await;
        let (status, mut problem) = fed
            .gateway
            .post("/v1/exchange/clinical", &body_of(&v, mrn))
            .await
            .unwrap();
        assert_eq!(status, 403, "{problem}");
        problem.as_object_mut().unwrap().remove("decision_id");
        problem.as_object_mut().unwrap().remove("instance");
        answers.push(problem);
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        !answers[1].to_string().contains("not known"),
        "{}",
        answers[1]
    );
}

/// Break-glass tokenizes the birth date, and moves every date by one offset for this
/// patient and requester: a condition recorded at birth no longer gives the birth date,
/// intervals stay exact, and the answer says so.
#[tokio::test]
async fn break_glass_shifts_every_date_by_one_offset() {
    let record = synth::Generator::new(synth::Options {
        seed: 77,
        min_resources: 150,
        max_resources: 150,
        ..synth::Options::default()
    })
    .patient();
    let who = &record.identity;
    let fed = federation_holding(std::slice::from_ref(&record), "").await;
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let ask = |v: Value| {
        exchange_body(
            "ETREAT",
            &who.mrn,
            &["Patient", "Condition", "Encounter", "DocumentReference"],
            &v,
            Some("unconscious patient in the emergency department, no consent on file"),
        )
    };
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, bundle) = fed
        .gateway
        .post("/v1/exchange/clinical", &ask(v))
        .await
        .unwrap();
    assert_eq!(status, 200, "{bundle}");

    let source_starts = |ty: &str, field: &str| -> Vec<chrono::NaiveDate> {
        let mut d: Vec<_> = record.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == ty)
            .filter_map(|r| r.pointer(field)?.as_str().map(|s| s[..10].parse().unwrap()))
            .collect();
        d.sort();
        d
    };
    let answer_starts = |b: &Value, ty: &str, field: &str| -> Vec<chrono::NaiveDate> {
        let mut d: Vec<_> = entries(b)
            .into_iter()
            .filter(|r| r["resourceType"] == ty)
            .filter_map(|r| r.pointer(field)?.as_str().map(|s| s[..10].parse().unwrap()))
            .collect();
        d.sort();
        d
    };
    let before = source_starts("Encounter", "/period/start");
    let after = answer_starts(&bundle, "Encounter", "/period/start");
    assert_eq!(before.len(), after.len());
    let offset = (after[0] - before[0]).num_days();
    assert!(offset != 0 && offset.abs() <= 365, "{offset}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((*a - *b).num_days(), offset, "one offset for every date");
    }
    let onsets = answer_starts(&bundle, "Condition", "/onsetDateTime");
    assert_eq!(
        onsets[0] - (who.birth_date + chrono::Duration::days(offset)),
        chrono::Duration::zero()
    );
    // Neither the birth date nor the real calendar dates leave, in any form.
    let text = bundle.to_string();
    for form in who.forms().iter().filter(|f| f.class == "birth_date") {
        assert!(
            !text.contains(&form.text),
            "birth date {:?} left",
            form.text
        );
    }
    // A real visit date may still appear where some other shifted date happens to fall
    // on it; every other real visit date must be gone.
    let source = record.bundle.to_string();
    let shifted_onto = |d: &chrono::NaiveDate| {
        let from = *d - chrono::Duration::days(offset);
        source.contains(&from.format("%Y-%m-%d").to_string())
    };
    for d in before.iter().filter(|d| !shifted_onto(d)) {
        assert!(
            !text.contains(&d.format("%Y-%m-%dT").to_string()),
            "an exact visit date left"
        );
    }
    assert!(text.contains("every date is shifted"), "the answer says so");

    // The same requester again: the same offset (the pages and later answers agree).
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let (status, again) = fed
        .gateway
        .post("/v1/exchange/clinical", &ask(v))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer_starts(&again, "Encounter", "/period/start"), after);
}

/// A FHIR server that knows one patient and fails every other request (or every
/// request, with `fail_all`).
async fn failing_fhir_server(mrn: &str, fail_all: bool) -> String {
    use axum::extract::Path as UrlPath;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}]});
    let app = axum::Router::new()
        .route(
            "/fhir/{ty}",
            get(move |UrlPath(ty): UrlPath<String>| {
                let patient = patient.clone();
                async move {
                    if ty == "Patient" && !fail_all {
                        axum::Json(json!({"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": patient}]}))
                        .into_response()
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }),
        )
        .route(
            "/fhir/{ty}/{id}",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("{origin}/fhir")
}

/// When the record source fails, before or after the decision, the requester gets 503
/// (try again) and the access still leaves exactly one event saying it was not served.
#[tokio::test]
async fn record_source_failures_are_503_and_recorded() {
    let mrn = "7700001";
    let after = failing_fhir_server(mrn, false).await;
    let before = failing_fhir_server(mrn, true).await;
    for (url, allowed) in [(after, true), (before, false)] {
        let mut fed = fhir_source::gateway_reading(&url);
        let doc = clinician(
            &fed,
            "physician",
            CUSTODIAN,
            &["clinical"],
            &["read"],
            REQUESTER_ORG,
        )
        .await;
        let (v, _) = vp(
            &fed.gateway,
            &doc.key,
            std::slice::from_ref(&doc.credential),
        )
        .await;
        let body = exchange_body(
            "ETREAT",
            mrn,
            &["Patient", "Observation"],
            &v,
            Some("unconscious patient in the emergency department, no consent on file"),
        );
        let (status, problem) = fed
            .gateway
            .post("/v1/exchange/clinical", &body)
            .await
            .unwrap();
        assert_eq!(status, 503, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("record source"),
            "{problem}"
        );
        let not_served = fed
            .gateway
            .metric("fedgate_not_served_total")
            .await
            .unwrap();
        assert_eq!(not_served, 1.0);
        let decisions = fed.gateway.metric("fedgate_decisions_total").await.unwrap();
        assert_eq!(decisions, 1.0, "one decision recorded");

        fed.gateway.process.stop();
        let events: Vec<Value> = stored(&fed.gateway, "outbox");
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["decision"], if allowed { "allow" } else { "deny" }, "{e}");
        assert_eq!(e["recordCount"], 0);
        assert!(
            e["reasons"]
                .to_string()
                .contains("not served: the record source failed"),
            "{e}"
        );
        let parsed: federation::events::AccessEvent = serde_json::from_value(e.clone()).unwrap();
        federation::events::check_free_text(&parsed).unwrap();
    }
}

/// The office and a gateway whose state is in a PostgreSQL server of its own (started in
/// the federation's folder; drop the server before the federation).
fn federation_on_postgres(note: &str) -> (Fed, fedgate::harness::Postgres) {
    let dir = tempfile::tempdir().unwrap();
    let pg = fedgate::harness::Postgres::start(&dir.path().join("db")).unwrap();
    pg.create_database("fedgate").unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let spec = GatewaySpec {
        port: 0,
        did: CUSTODIAN.into(),
        records: fixtures(),
        policies: repo("policies"),
        extra_toml: format!(
            "{}\n{}",
            extra_toml(&office, note),
            pg.storage("fedgate", "gateway_a").toml()
        ),
    };
    let gateway = Gateway::start(&exe(), &dir.path().join("gateway"), &spec).unwrap();
    (
        Fed {
            office,
            gateway,
            _dir: dir,
        },
        pg,
    )
}

/// Three processes of one gateway on one PostgreSQL schema, as behind a load balancer: a
/// challenge from one is accepted at another and single use across all three; a consent
/// withdrawn at one is in force at the others at once; a token from one detokenizes at
/// another; and every decision of every replica is in the one shared outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_postgres_share_challenges_consents_tokens_and_the_outbox() {
    let (fed, _pg) = federation_on_postgres("replicas");
    let a = &fed.gateway;
    let b = a.start_replica(&exe(), 1, 0, &[]).unwrap();
    let c = a.start_replica(&exe(), 2, 0, &[]).unwrap();
    let ready: Value = reqwest::get(format!("{}readyz", b.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"]["backend"], "postgres", "{ready}");

    let p = fixture_patient(&fixtures()[0]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read", "detokenize"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    // Linked at replica A (admin), used at B: the records imported once serve all three.
    let consent_vc = linked_consent(
        a,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;

    // Challenge at A, exchange at B.
    let (vp1, _) = vp(a, &doc.key, &[doc.credential.clone(), consent_vc.clone()]).await;
    let (status, _, bytes) = b
        .post_raw(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &p.mrn, &["Patient", "Observation"], &vp1, None),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let bundle: Value = serde_json::from_slice(&bytes).unwrap();
    let ssn = entries(&bundle)
        .into_iter()
        .find(|r| r["resourceType"] == "Patient")
        .and_then(|r| {
            r["identifier"]
                .as_array()?
                .iter()
                .find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
                .and_then(|i| i["value"].as_str())
                .map(str::to_string)
        })
        .unwrap();
    assert!(ssn.starts_with("tok_"), "{ssn}");

    // The same presentation again, at C: the challenge was spent at B.
    let (status, problem) = c
        .post("/v1/exchange/clinical", &body_of(&vp1, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "challenge");
    // And at A, where it was issued.
    let (status, _) = a
        .post("/v1/exchange/clinical", &body_of(&vp1, &p.mrn))
        .await
        .unwrap();
    assert_eq!(status, 403);

    // The token minted at B detokenizes at C, with a challenge from A.
    let (vp2, _) = vp(a, &doc.key, std::slice::from_ref(&doc.credential)).await;
    let (status, body) = c
        .post(
            "/v1/detokenize",
            &json!({"token": ssn, "purpose": "TREAT", "presentation": vp2}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(p
        .secrets
        .contains(&body["value"].as_str().unwrap().to_string()));

    // The patient withdraws the consent at C; at A, at once, the same request is denied.
    let (vw, _) = vp(&c, &patient, std::slice::from_ref(&consent_vc)).await;
    let (status, body) = c
        .post("/v1/consents/withdrawals", &json!({"presentation": vw}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (vp3, _) = vp(&b, &doc.key, &[doc.credential.clone(), consent_vc.clone()]).await;
    let (status, _, bytes) = a
        .post_raw(
            "/v1/exchange/clinical",
            &exchange_body("TREAT", &p.mrn, &["Patient"], &vp3, None),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&bytes));

    // Every decision of every replica (allow, replay denials, detokenize, withdrawal's
    // denial) waits in the one outbox the replicas share.
    let mut seen = Vec::new();
    for g in [a, &b, &c] {
        seen.push(g.outbox_pending().await.unwrap());
    }
    assert!(seen[0] >= 5, "{seen:?} events in the shared outbox");
    assert!(seen.iter().all(|n| *n == seen[0]), "one outbox: {seen:?}");
}

/// The database stops for 30 s while requests keep coming: the gateway answers 503 and
/// serves nothing it could not record (it still issues challenges, which need no database), says so on /readyz, and recovers by itself when the
/// database is back, with every decision it answered in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_fails_closed_and_recovers_by_itself() {
    let (fed, mut pg) = federation_on_postgres("outage");
    let gw = &fed.gateway;
    let p = fixture_patient(&fixtures()[0]);
    let doc = clinician(
        &fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let c = linked_consent(
        gw,
        &patient,
        &p.mrn,
        doc.key.did(),
        "permit",
        &["TREAT"],
        &["clinical"],
    )
    .await;
    let creds = [doc.credential.clone(), c.clone()];
    let mut answered = 0u64;
    let (v, _) = vp(gw, &doc.key, &creds).await;
    let (status, _, _) = gw
        .post_raw("/v1/exchange/clinical", &body_of(&v, &p.mrn), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    answered += 1;
    // Challenges taken before the outage, presented during and after it.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(vp(gw, &doc.key, &creds).await.0);
    }

    pg.stop().unwrap();
    let outage = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut challenges = std::collections::BTreeMap::<u16, u64>::new();
    let mut ready_said = None;
    while outage.elapsed() < Duration::from_secs(30) {
        let (status, _, bytes) = gw
            .post_raw("/v1/exchange/clinical", &body_of(&held[0], &p.mrn), None)
            .await
            .unwrap();
        *statuses.entry(status).or_default() += 1;
        if status == 503 {
            let problem: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(problem["status"], 503, "{problem}");
        }
        let challenge = reqwest::Client::new()
            .post(format!("{}v1/challenges", gw.url()))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        *challenges.entry(challenge.status().as_u16()).or_default() += 1;
        let ready = reqwest::get(format!("{}readyz", gw.url())).await.unwrap();
        assert_eq!(ready.status(), 503);
        ready_said.get_or_insert(ready.json::<Value>().await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing was served while the database was away: no 200, no decision.
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![503],
        "{statuses:?}"
    );
    // Issuing a challenge needs no database (it carries its expiry under the gateway's
    // MAC); only using one does, and that failed closed above.
    assert_eq!(
        challenges.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{challenges:?}"
    );
    let (during, _) = vp(gw, &doc.key, &creds).await;
    let ready_said = ready_said.unwrap();
    assert_eq!(
        ready_said["state"]["database"]["ready"], false,
        "{ready_said}"
    );
    assert!(ready_said["state"]["database"]["error"].is_string());

    pg.start_again().unwrap();
    // Back without a restart, and ready again with no request but the probe's: a load
    // balancer sends nothing to a replica that is not ready.
    let back = Instant::now();
    loop {
        let ready = reqwest::get(format!("{}readyz", gw.url())).await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not ready in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The held presentation (its challenge never consumed) works.
    loop {
        let (status, _, bytes) = gw
            .post_raw("/v1/exchange/clinical", &body_of(&held[1], &p.mrn), None)
            .await
            .unwrap();
        if status == 200 {
            answered += 1;
            break;
        }
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&bytes));
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "no recovery in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _, bytes) = gw
        .post_raw("/v1/exchange/clinical", &body_of(&held[0], &p.mrn), None)
        .await
        .unwrap();
    assert_eq!(
        status,
        200,
        "the challenge refused during the outage is still unspent: {}",
        String::from_utf8_lossy(&bytes)
    );
    answered += 1;
    // A challenge issued while the database was away is good once it is back, and once.
    let (status, _, bytes) = gw
        .post_raw("/v1/exchange/clinical", &body_of(&during, &p.mrn), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    answered += 1;
    let (status, _, _) = gw
        .post_raw("/v1/exchange/clinical", &body_of(&during, &p.mrn), None)
        .await
        .unwrap();
    assert_eq!(status, 403, "a replay is refused");
    answered += 1; // a refusal is a decision, recorded like any other
    let ready = reqwest::get(format!("{}readyz", gw.url())).await.unwrap();
    assert_eq!(ready.status(), 200);
    // Every decision answered is in the outbox; nothing was recorded for the 503s.
    assert_eq!(gw.outbox_pending().await.unwrap(), answered);
}
