//! `fedgate demo`: starts a federation of real processes on loopback and runs the scenarios
//! against them over HTTP, printing what was expected, what happened, and whether they
//! agree. Exit status is non-zero if any scenario differs from what was expected.
//!
//! Cast: a credentialing office and an IRB (`fedgate issuer serve`), hospital A's gateway
//! holding the `hospital-a` fixtures (the custodian asked) and 300 synthetic patients (the
//! research cohort), hospital B's gateway holding the
//! `hospital-b` fixtures (where the requesting clinicians work), a research network, and
//! patients with wallets.

use anyhow::anyhow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use federation::credentials::{self, CredentialKind, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::{
    contract, fixture_patient, fixtures, patient_consent, ConsentSpec, Custodian, Federation,
    Gateway, Office, Staff, MRN_SYSTEM,
};
use serde::Serialize;
use serde_json::{json, Value};

const OFFICE: &str = "did:web:credentialing.demo.fedgate";
const IRB: &str = "did:web:irb.demo.fedgate";
const VISIBILITY: &str = "did:web:visibility.demo.fedgate";
const AUDITORS: &str = "did:web:audit.demo.fedgate";
const HOSPITAL_A: &str = "did:web:hospital-a.demo.fedgate";
const HOSPITAL_B: &str = "did:web:hospital-b.demo.fedgate";
const HOSPITAL_B_ID_SYSTEM: &str = "urn:uuid:6f2a1d3e-9c47-5b8a-a1f0-2d4e6c8b0a17";
const HOSPITAL_B_PATIENT: &str = "BC909B9D";
const JUSTIFICATION: &str = "unresponsive patient in the emergency department; no consent on file";

/// Hospital A's terms for research (the study's IRB sets its budget lower, 1.5); HbA1c
/// values are clamped to 4-14 % for means.
const RESEARCH_TERMS: &str = "[research]\nepsilon_budget = 5.0\nepsilon_per_query = 0.5\nepsilon_per_query_max = 1.0\n[research.observation_bounds]\n\"4548-4\" = [4.0, 14.0]\n";

/// Registers each patient's research consent for `study_id` from their own wallet, once
/// the registration desk has linked it.
async fn enrol(gw: &Gateway, patients: &[(PathBuf, String)], study_id: &str) -> anyhow::Result<()> {
    for (_, mrn) in patients {
        let p = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
        gw.link_patient(mrn, p.did()).await?;
        let c = consent(
            &p,
            mrn,
            &json!({"id": study_id, "kind": "study"}),
            &["research"],
            &["HRESCH"],
        )
        .await?;
        let vp = present(gw, &p, &[c]).await?;
        let (status, body) = gw
            .post("/v1/consents", &json!({"presentation": vp}))
            .await?;
        if status != 201 {
            return Err(anyhow!("registering a research consent failed: {body}"));
        }
    }
    Ok(())
}

/// Patients in the research scenario's cohort.
const COHORT: usize = 300;

/// Writes `COHORT` synthetic patients (small records) as bundles into `dir`: their files
/// and MRNs.
fn synth_cohort(dir: &std::path::Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let mut generator = synth::Generator::new(synth::Options {
        seed: 2026,
        min_resources: 10,
        max_resources: 30,
        ..synth::Options::default()
    });
    let mut out = Vec::with_capacity(COHORT);
    for i in 0..COHORT {
        let patient = generator.patient();
        let path = dir.join(format!("patient-{i:04}.json"));
        let bytes = serde_json::to_vec(&patient.bundle)?;
        std::fs::write(&path, bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        out.push((path, patient.identity.mrn));
    }
    Ok(out)
}

#[derive(Serialize)]
struct Outcome {
    scenario: String,
    expected: String,
    outcome: String,
    ok: bool,
    decision_id: Option<String>,
    /// Where the decision's access event sits in the visibility log.
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<String>,
}

struct Demo {
    results: Vec<Outcome>,
}

impl Demo {
    fn record(
        &mut self,
        scenario: &str,
        expected: &str,
        outcome: String,
        ok: bool,
        decision_id: Option<String>,
    ) {
        self.results.push(Outcome {
            scenario: scenario.into(),
            expected: expected.into(),
            outcome,
            ok,
            decision_id,
            receipt: None,
        });
    }
}

fn privilege(clinician: &str, role: &str, facility: &str, domain: &str) -> Value {
    Staff {
        holder: clinician,
        role,
        organization: HOSPITAL_B,
        facility,
        domains: &[domain],
        actions: &["read", "detokenize"],
    }
    .subject()
}

async fn consent(
    patient: &KeyPair,
    mrn: &str,
    grantee: &Value,
    domains: &[&str],
    purposes: &[&str],
) -> anyhow::Result<Value> {
    consent_at(
        HOSPITAL_A, MRN_SYSTEM, patient, mrn, grantee, domains, purposes,
    )
    .await
}

async fn consent_at(
    custodian: &str,
    system: &str,
    patient: &KeyPair,
    mrn: &str,
    grantee: &Value,
    domains: &[&str],
    purposes: &[&str],
) -> anyhow::Result<Value> {
    let spec = ConsentSpec {
        custodian,
        system,
        value: mrn,
        grantee: grantee.clone(),
        domains,
        purposes,
        data_classes: &[
            "Patient",
            "Observation",
            "Condition",
            "Encounter",
            "Claim",
            "Coverage",
            "ExplanationOfBenefit",
        ],
    };
    patient_consent(patient, &spec).await
}

async fn present(gw: &Gateway, holder: &KeyPair, creds: &[Value]) -> anyhow::Result<Value> {
    let binding = gw.challenge().await?;
    credentials::present(creds, holder, &binding, ProofFormat::Jwt)
        .await
        .map_err(anyhow::Error::from)
}

/// POSTs an exchange; returns (status, decision id, body as JSON or problem).
async fn exchange(
    gw: &Gateway,
    domain: &str,
    purpose: &str,
    mrn: &str,
    classes: &[&str],
    vp: &Value,
    justification: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Value, reqwest::header::HeaderMap)> {
    exchange_as(
        gw,
        MRN_SYSTEM,
        domain,
        purpose,
        mrn,
        classes,
        vp,
        justification,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn exchange_as(
    gw: &Gateway,
    system: &str,
    domain: &str,
    purpose: &str,
    mrn: &str,
    classes: &[&str],
    vp: &Value,
    justification: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Value, reqwest::header::HeaderMap)> {
    let mut body = json!({
        "purpose": purpose,
        "patient": {"system": system, "value": mrn},
        "data_classes": classes,
        "presentation": vp,
    });
    if let Some(j) = justification {
        body["justification"] = json!(j);
    }
    let (status, headers, bytes) = gw
        .post_raw(&format!("/v1/exchange/{domain}"), &body, None)
        .await?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = headers
        .get("fedgate-decision-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| value["decision_id"].as_str().map(str::to_string));
    Ok((status, id, value, headers))
}

fn types(bundle: &Value) -> Vec<String> {
    let mut t: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "outcome")
        .filter_map(|e| e["resource"]["resourceType"].as_str().map(str::to_string))
        .collect();
    t.sort();
    t.dedup();
    t
}

fn reason(problem: &Value) -> String {
    problem["reasons"][0]
        .as_str()
        .or_else(|| problem["detail"].as_str())
        .unwrap_or("-")
        .chars()
        .take(110)
        .collect()
}

pub(crate) async fn run(
    dir: Option<PathBuf>,
    json_out: bool,
    serve: bool,
    replicas: usize,
) -> anyhow::Result<bool> {
    if !(1..=8).contains(&replicas) {
        return Err(anyhow!("--replicas must be 1 to 8"));
    }
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find fedgate itself: {e}"))?;
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("fedgate-demo-{}", uuid::Uuid::new_v4())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };

    let irb = Office::start(&exe, &dir.join("irb"), IRB)?;
    let network = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let fixtures_a = fixtures("hospital-a")?;
    // Hospital A also holds a few hundred synthetic patients (no real person): a cohort
    // large enough for differentially private answers to say something.
    let cohort = synth_cohort(&dir.join("synth-a"))?;
    let mut records_a = fixtures_a.clone();
    records_a.extend(cohort.iter().map(|(path, _)| path.clone()));
    // Replicas share their state through PostgreSQL: a real server in the demo's folder.
    let pg = if replicas > 1 {
        let pg = fedgate::harness::Postgres::start(&dir.join("db"))
            .map_err(|e| anyhow!("--replicas needs PostgreSQL: {e:#}"))?;
        say(format!(
            "PostgreSQL on 127.0.0.1:{} (data in {})",
            pg.port(),
            dir.join("db").display()
        ));
        Some(pg)
    } else {
        None
    };
    let mut builder = Federation::builder(&exe, &dir, OFFICE, VISIBILITY);
    if let Some(pg) = &pg {
        builder = builder.postgres(pg);
    }
    let fed = builder
        .auditors(AUDITORS)
        .irb(&irb)
        .status_push()
        .ship_every(Duration::from_millis(100))
        .gossip_every(Duration::from_millis(500))
        .gateway(
            Custodian::new(HOSPITAL_A)
                .replicas(replicas)
                .records(records_a)
                .config("[custodian]\nbreak_glass_minutes = 30\nmin_cell_size = 3\n")
                .config(RESEARCH_TERMS)
                .config(&contract(
                    HOSPITAL_A,
                    HOSPITAL_B,
                    &["clinical", "billing", "detokenize"],
                    &["TREAT", "ETREAT", "BTG", "HPAYMT"],
                ))
                .config(&contract(
                    HOSPITAL_A,
                    network.did(),
                    &["research"],
                    &["HRESCH"],
                )),
        )
        .gateway(
            Custodian::new(HOSPITAL_B)
                .records(fixtures("hospital-b")?)
                .config(&contract(HOSPITAL_B, HOSPITAL_B, &["clinical"], &["TREAT"])),
        )
        .start()?;
    let (office, visibility) = (&fed.office, &fed.visibility);
    let (gw_a, gw_b) = (fed.gateway(HOSPITAL_A)?, fed.gateway(HOSPITAL_B)?);
    // The visibility service's second process, on the same log.
    let visibility_pair = match &pg {
        Some(_) => Some(visibility.start_replica(&exe, 1, 0)?),
        None => None,
    };
    if let Some(second) = &visibility_pair {
        let a: Vec<String> = fed
            .replicas(HOSPITAL_A)
            .iter()
            .map(|g| g.process.addr.clone())
            .collect();
        say(format!(
            "hospital A's gateway runs as {} replicas ({}) on one PostgreSQL schema; the visibility service as a pair ({} and {}) on one log",
            a.len(),
            a.join(", "),
            visibility.process.addr,
            second.process.addr
        ));
    }
    say(format!(
        "federation up in {} ms: credentialing office {}, IRB {}, hospital A gateway {}, hospital B gateway {}, visibility {}\n",
        started.elapsed().as_millis(),
        office.process.addr,
        irb.process.addr,
        gw_a.process.addr,
        gw_b.process.addr,
        visibility.process.addr
    ));

    let mut demo = Demo {
        results: Vec::new(),
    };
    let (_, mrn) = fixture_patient()?;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let (priv_id, priv_vc) = office
        .joiner(
            &privilege(clinician.did(), "physician", HOSPITAL_A, "clinical"),
            "jwt",
        )
        .await?;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    // Hospital A's registration desk links the patient's wallet DID to her record: only
    // then do consents she signs herself speak for her there.
    gw_a.link_patient(&mrn, patient.did()).await?;
    let treat = consent(
        &patient,
        &mrn,
        &json!({"id": clinician.did(), "kind": "clinician"}),
        &["clinical"],
        &["TREAT"],
    )
    .await?;
    // The patient registers the consent with hospital A: from then on A can tie every
    // access to this record, consented or not, to the patient's DID (digest only).
    let vp = present(gw_a, &patient, std::slice::from_ref(&treat)).await?;
    let (status, body) = gw_a
        .post("/v1/consents", &json!({"presentation": vp}))
        .await?;
    if status != 201 || body["registered"][0]["patientKnown"] != true {
        return Err(anyhow!("registering the patient's consent failed: {body}"));
    }

    // 1. Consented clinical exchange.
    let vp = present(gw_a, &clinician, &[priv_vc.clone(), treat.clone()]).await?;
    let (status, id, bundle, _) = exchange(
        gw_a,
        "clinical",
        "TREAT",
        &mrn,
        &["Patient", "Observation", "Condition"],
        &vp,
        None,
    )
    .await?;
    let text = bundle.to_string();
    let ssn_clear = text.contains("999-");
    demo.record(
        "1. clinician at B, with privilege and the patient's consent, asks A for clinical records",
        "allowed; SSN tokenized",
        format!(
            "HTTP {status}; {} resources of {:?}; SSN in clear: {ssn_clear}",
            bundle["total"],
            types(&bundle)
        ),
        status == 200 && !ssn_clear,
        id,
    );
    let replay = vp;

    // 2. Without consent.
    let vp = present(gw_a, &clinician, std::slice::from_ref(&priv_vc)).await?;
    let (status, id, problem, _) =
        exchange(gw_a, "clinical", "TREAT", &mrn, &["Observation"], &vp, None).await?;
    demo.record(
        "2. the same request without consent",
        "denied",
        format!("HTTP {status}: {}", reason(&problem)),
        status == 403,
        id,
    );

    // 3. Break-glass.
    let vp = present(gw_a, &clinician, std::slice::from_ref(&priv_vc)).await?;
    let (status, id, bundle, headers) = exchange(
        gw_a,
        "clinical",
        "ETREAT",
        &mrn,
        &["Patient", "Observation", "Condition"],
        &vp,
        Some(JUSTIFICATION),
    )
    .await?;
    let expires = headers
        .get("fedgate-access-expires")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    // The birth date is a token and every date moves by one offset for this patient and
    // requester: a condition recorded at birth does not give the birth date back.
    let shifted = bundle.to_string().contains("every date is shifted");
    let birth_in_clear = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["resource"]["birthDate"].is_string());
    demo.record(
        "3. break-glass: ETREAT with a justification, no consent",
        "allowed, time-limited, flagged for review; birth date a token, dates shifted",
        format!(
            "HTTP {status}; break-glass until {expires}; dates shifted: {shifted}; birth date in clear: {birth_in_clear}"
        ),
        status == 200 && headers.contains_key("fedgate-break-glass") && shifted && !birth_in_clear,
        id,
    );

    // 8. Replay (before the leaver, so the only failing check is the challenge).
    let (status, id, problem, _) =
        exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &replay, None).await?;
    demo.record(
        "8. replay of a used presentation",
        "denied, check challenge",
        format!(
            "HTTP {status}, check {}",
            problem["check"].as_str().unwrap_or("-")
        ),
        status == 403 && problem["check"] == "challenge",
        id,
    );

    // 9. Forged privilege: the office's name, another key.
    let forger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let mut forged = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        OFFICE,
        privilege(clinician.did(), "physician", HOSPITAL_A, "clinical"),
        chrono::Utc::now(),
        None,
        Some(&credentials::StatusEntry::revocation(
            &format!("{}status/revocation", office.url()),
            1,
        )),
    );
    forged["issuer"] = json!(OFFICE);
    let forged = federation::jose::sign(&forged, &forger, "vc+jwt")?;
    let vp = present(gw_a, &clinician, &[json!(forged), treat.clone()]).await?;
    let (status, id, problem, _) =
        exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
    demo.record(
        "9. a forged privilege (the office's name, another key)",
        "denied, failing check named",
        format!(
            "HTTP {status}, check {}",
            problem["check"].as_str().unwrap_or("-")
        ),
        status == 403 && problem["check"] == "proof",
        id,
    );

    // 12. A consent signed by a stranger, naming the patient: anyone can make a DID and
    // sign a consent for any MRN, so hospital A honours a self-issued consent only under
    // a DID it has linked to the patient.
    let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let fake = consent(
        &stranger,
        &mrn,
        &json!({"id": clinician.did(), "kind": "clinician"}),
        &["clinical"],
        &["TREAT"],
    )
    .await?;
    let vp = present(gw_a, &clinician, &[priv_vc.clone(), fake.clone()]).await?;
    let (status, id, problem, _) =
        exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
    let unlinked = problem["reasons"].to_string().contains("not linked");
    demo.record(
        "12. a consent signed by a stranger's DID, naming the patient",
        "denied: the DID is not linked to the patient at hospital A",
        format!("HTTP {status}; reason names the missing link: {unlinked}"),
        status == 403 && unlinked,
        id,
    );
    let stranger_consent = fake;

    // 6. Billing.
    let biller = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let (_, bill_vc) = office
        .joiner(
            &privilege(biller.did(), "billing-specialist", HOSPITAL_A, "billing"),
            "jwt",
        )
        .await?;
    let pay = consent(
        &patient,
        &mrn,
        &json!({"id": HOSPITAL_B, "kind": "organization"}),
        &["billing"],
        &["HPAYMT"],
    )
    .await?;
    let vp = present(gw_a, &biller, &[bill_vc, pay]).await?;
    let (status, id, bundle, _) = exchange(
        gw_a,
        "billing",
        "HPAYMT",
        &mrn,
        &["Claim", "Coverage", "ExplanationOfBenefit", "Observation"],
        &vp,
        None,
    )
    .await?;
    let t = types(&bundle);
    let only_billing = !t.is_empty()
        && t.iter().all(|x| {
            [
                "Claim",
                "Coverage",
                "ExplanationOfBenefit",
                "Patient",
                "OperationOutcome",
            ]
            .contains(&x.as_str())
        });
    demo.record(
        "6. billing specialist with HPAYMT",
        "Claim/Coverage/EOB only, clinical content withheld",
        format!("HTTP {status}; types {t:?}"),
        status == 200 && only_billing,
        id,
    );

    // 7. Research: every synthetic patient consents to the study from their own wallet,
    // once the registration desk has linked it; the network asks for mean HbA1c per band.
    let study_id = "urn:fedgate:study:demo-hba1c";
    // Four enrolment desks at once: each patient is a link, a challenge and a registration.
    let quarter = cohort.len().div_ceil(4);
    let mut desks = cohort.chunks(quarter);
    let mut next = || desks.next().unwrap_or_default();
    tokio::try_join!(
        enrol(gw_a, next(), study_id),
        enrol(gw_a, next(), study_id),
        enrol(gw_a, next(), study_id),
        enrol(gw_a, next(), study_id),
    )?;
    let study = irb
        .issue(
            json!({
                "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
                "type": ["VerifiableCredential", "ResearchStudyCredential"],
                "credentialSubject": {
                    "id": study_id, "title": "HbA1c by age", "sponsor": network.did(),
                    "purposes": ["HRESCH"], "dataClasses": ["Condition", "Observation", "Patient"],
                    "aggregateOnly": true, "minCellSize": 11, "epsilonBudget": 1.5
                },
                "validUntil": "2030-01-01T00:00:00Z"
            }),
            "jwt",
        )
        .await?;
    let hba1c = json!({"observation": {"code": "4548-4"}, "epsilon": 1.0});
    let vp = present(gw_a, &network, std::slice::from_ref(&study)).await?;
    let (status, body) = gw_a
        .post(
            "/v1/research/queries",
            &json!({"purpose": "HRESCH", "query": hba1c, "presentation": vp}),
        )
        .await?;
    // The same again: the study's 1.5 epsilon cannot pay for a second query of 1.
    let vp = present(gw_a, &network, std::slice::from_ref(&study)).await?;
    let (again, refusal) = gw_a
        .post(
            "/v1/research/queries",
            &json!({"purpose": "HRESCH", "query": hba1c, "presentation": vp}),
        )
        .await?;
    let cells: Vec<String> = body["result"]["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| match (c["count"].as_i64(), c["mean"].as_f64()) {
            (Some(n), Some(m)) => {
                format!("{} n≈{n} HbA1c≈{m}%", c["age_band"].as_str().unwrap_or("?"))
            }
            _ => format!("{} suppressed", c["age_band"].as_str().unwrap_or("?")),
        })
        .collect();
    let useful = body["result"]["cells"]
        .as_array()
        .is_some_and(|c| c.iter().filter(|c| c["mean"].is_number()).count() >= 2);
    let text = body.to_string();
    demo.record(
        "7. research network with an IRB study credential",
        &format!(
            "noisy counts and mean HbA1c per age band over {} consenting patients (epsilon-DP), \
             epsilon spent and left; the next query past the study's budget refused",
            cohort.len()
        ),
        format!(
            "HTTP {status}; epsilon spent {}, left {} of {}; {}; then HTTP {again}: {}",
            body["privacy"]["epsilonSpent"],
            body["privacy"]["budgetLeft"],
            body["privacy"]["budget"],
            cells.join(", "),
            reason(&refusal)
        ),
        status == 200
            && useful
            && again == 403
            && cohort.iter().all(|(_, m)| !text.contains(m.as_str()))
            && !text.contains(&mrn),
        body["decisionId"].as_str().map(str::to_string),
    );

    // 5. Mover: privileges from A to B's own facility.
    let (_, moved_vc) = office
        .mover(
            &priv_id,
            &json!([{"facility": HOSPITAL_B, "domains": ["clinical"], "actions": ["read"]}]),
        )
        .await?;
    let mut old_denied = false;
    for _ in 0..40 {
        let vp = present(gw_a, &clinician, &[priv_vc.clone(), treat.clone()]).await?;
        let (status, _, _, _) =
            exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
        if status == 403 {
            old_denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vp = present(gw_a, &clinician, &[moved_vc.clone(), treat.clone()]).await?;
    let (a_status, _, _, _) =
        exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
    // At B: one of B's own patients (hospital-b fixtures), with her consent.
    let b_patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    gw_b.link_patient_by(HOSPITAL_B_ID_SYSTEM, HOSPITAL_B_PATIENT, b_patient.did())
        .await?;
    let b_consent = consent_at(
        HOSPITAL_B,
        HOSPITAL_B_ID_SYSTEM,
        &b_patient,
        HOSPITAL_B_PATIENT,
        &json!({"id": clinician.did(), "kind": "clinician"}),
        &["clinical"],
        &["TREAT"],
    )
    .await?;
    let vp = present(gw_b, &clinician, &[moved_vc.clone(), b_consent]).await?;
    let (b_status, id, _, _) = exchange_as(
        gw_b,
        HOSPITAL_B_ID_SYSTEM,
        "clinical",
        "TREAT",
        HOSPITAL_B_PATIENT,
        &["Patient", "Observation"],
        &vp,
        None,
    )
    .await?;
    demo.record(
        "5. mover: privileges move from hospital A to hospital B",
        "old facility (A) denied; new facility (B) allowed",
        format!("old credential at A denied: {old_denied}; new credential at A HTTP {a_status}; at B HTTP {b_status}"),
        old_denied && a_status == 403 && b_status == 200,
        id,
    );

    // 13. Standard wallet protocols: the office offers a privilege by OpenID4VCI, the
    // clinician's wallet receives it as an SD-JWT VC, and the clinician's EHR asks
    // hospital A by OpenID4VP; the wallet discloses only what A's DCQL query asks for.
    let phone = phone_wallet_exchange(&dir, office, gw_a, &patient, &mrn).await?;
    demo.record(
        "13. a phone wallet receives a privilege by OpenID4VCI (SD-JWT VC) and presents it by OpenID4VP",
        "allowed; the gateway's DCQL asks less than the credential holds and only that is disclosed",
        format!(
            "{}; credential holds {} claims, query asked {}, disclosed {} (name, NPI withheld: {})",
            phone.outcome, phone.held, phone.asked, phone.disclosed, phone.withheld
        ),
        phone.ok,
        phone.decision_id,
    );

    // 4. Leaver: revoke and measure revocation to first deny.
    let (_, leaver_vc) = office
        .joiner(
            &privilege(clinician.did(), "physician", HOSPITAL_A, "clinical"),
            "jwt",
        )
        .await?;
    let leaver_id = {
        // The newest privilege of the clinician: the one just issued.
        let vp = present(gw_a, &clinician, &[leaver_vc.clone(), treat.clone()]).await?;
        let (status, _, _, _) =
            exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
        if status != 200 {
            return Err(anyhow!(
                "the leaver's privilege did not work before revocation ({status})"
            ));
        }
        federation::jose::decode(leaver_vc.as_str().unwrap_or_default())
            .map(|d| d.payload["id"].as_str().unwrap_or_default().to_string())?
    };
    let t0 = Instant::now();
    office.revoke(&leaver_id).await?;
    let mut first_deny = None;
    let mut last_id = None;
    while t0.elapsed() < Duration::from_secs(10) {
        let vp = present(gw_a, &clinician, &[leaver_vc.clone(), treat.clone()]).await?;
        let (status, id, problem, _) =
            exchange(gw_a, "clinical", "TREAT", &mrn, &["Patient"], &vp, None).await?;
        last_id = id;
        if status == 403 && problem["check"] == "status" {
            first_deny = Some(t0.elapsed());
            break;
        }
    }
    demo.record(
        "4. leaver: the credentialing office revokes the clinician",
        "next request denied (check status); time from revocation to first deny",
        match first_deny {
            Some(d) => format!("denied {} ms after revocation", d.as_millis()),
            None => "still allowed after 10 s".into(),
        },
        first_deny.is_some(),
        last_id,
    );

    // Every access reaches the visibility log; each decision gets its receipt.
    for gw in [gw_a, gw_b] {
        if !gw.drained(Duration::from_secs(30)).await {
            return Err(anyhow!(
                "access events did not reach the visibility log within 30 s"
            ));
        }
    }
    let token = visibility.auditor_login(office, AUDITORS).await?;
    let cp = visibility.checkpoint().await?;
    let mut logged = visibility.events_of(&token, HOSPITAL_A).await?;
    logged.extend(visibility.events_of(&token, HOSPITAL_B).await?);
    for r in demo.results.iter_mut() {
        let Some(id) = r.decision_id.clone() else {
            continue;
        };
        let hits: Vec<&(u64, federation::events::AccessEvent)> =
            logged.iter().filter(|(_, e)| e.decision_id == id).collect();
        r.receipt = Some(match hits.as_slice() {
            [(index, event)] => match visibility.verify_inclusion(&cp, *index, event).await {
                Ok(()) => format!(
                    "leaf {index} of {}, inclusion verified against the signed checkpoint",
                    cp.size
                ),
                Err(e) => {
                    r.ok = false;
                    format!("leaf {index}: inclusion proof FAILED: {e}")
                }
            },
            [] => {
                r.ok = false;
                "not in the log".into()
            }
            more => {
                r.ok = false;
                format!("logged {} times", more.len())
            }
        });
    }

    // 10. The patient's own history, across the federation.
    let history = visibility
        .patient_history(&patient, std::slice::from_ref(&treat))
        .await?;
    let wanted: Vec<String> = demo
        .results
        .iter()
        .filter(|r| {
            ["1.", "2.", "3.", "12."]
                .iter()
                .any(|p| r.scenario.starts_with(p))
        })
        .filter_map(|r| r.decision_id.clone())
        .collect();
    let seen = wanted
        .iter()
        .filter(|id| history.iter().any(|e| &e.decision_id == *id))
        .count();
    let break_glass = history.iter().filter(|e| e.break_glass).count();
    // The stranger's DID proves nothing about the patient: it opens no history.
    let strangers = visibility
        .patient_history(&stranger, std::slice::from_ref(&stranger_consent))
        .await?;
    demo.record(
        "10. the patient fetches their own access history from the visibility layer",
        "sees scenarios 1-3 and 12 (the break-glass access, the stranger's attempt); the stranger's DID sees nothing",
        format!(
            "{} events in their history; scenarios 1-3 and 12 found: {seen} of 4; break-glass: {break_glass}; events for the stranger's DID: {}",
            history.len(),
            strangers.len()
        ),
        seen == 4 && wanted.len() == 4 && break_glass >= 1 && strangers.is_empty(),
        None,
    );

    // 11. Every gateway checked each new checkpoint against the last one it accepted, and
    // compared the one it adopted last with the other gateway's (split views).
    let consistent = "fedgate_gossip_checks_total{result=\"consistent\"}";
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(10) {
        let mut compared = true;
        for gw in [gw_a, gw_b] {
            compared &= gw.metric(consistent).await? >= 1.0;
        }
        if compared {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut alarms, mut splits, mut shipped, mut compared) = (0u64, 0u64, 0u64, 0u64);
    for gw in [gw_a, gw_b] {
        alarms += gw.metric("fedgate_log_inconsistency_total").await? as u64;
        splits += gw.metric("fedgate_log_split_view_total").await? as u64;
        compared += gw.metric(consistent).await?.min(1.0) as u64;
    }
    // Replicas share one outbox and each ships part of it: count what every process shipped.
    for gw in fed.replicas(HOSPITAL_A).into_iter().chain([gw_b]) {
        shipped += gw.metric("fedgate_events_shipped_total").await? as u64;
        alarms += gw.metric("fedgate_log_inconsistency_total").await? as u64;
    }
    demo.record(
        "11. the visibility log stays consistent across the whole run",
        "every event shipped; no inconsistency alarm; both gateways see the same log",
        format!(
            "{shipped} events shipped with receipts; inconsistency alarms: {alarms}; gateways that compared checkpoints with a peer: {compared} of 2, split views: {splits}; log size {}",
            cp.size
        ),
        alarms == 0 && splits == 0 && compared == 2 && shipped >= cp.size && cp.size > 0,
        None,
    );

    demo.results.sort_by_key(|r| {
        r.scenario
            .split('.')
            .next()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(99)
    });
    let all_ok = demo.results.iter().all(|r| r.ok);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&demo.results)?);
    } else {
        for r in &demo.results {
            println!(
                "[{}] {}\n       expected: {}\n       happened: {}\n       decision: {}\n       log:      {}\n",
                if r.ok { " ok " } else { "FAIL" },
                r.scenario,
                r.expected,
                r.outcome,
                r.decision_id.as_deref().unwrap_or("-"),
                r.receipt.as_deref().unwrap_or("-")
            );
        }
        println!(
            "{} of {} scenarios as expected in {:.1} s; data in {}",
            demo.results.iter().filter(|r| r.ok).count(),
            demo.results.len(),
            started.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    if serve {
        // The dashboard's charts need a history: the two hospitals report generated
        // events of the last 120 days (pseudonyms only, as every event), signed with
        // their gateways' own keys, beside the scenarios' real ones.
        let history = seed_history(&visibility.url(), gw_a, gw_b).await?;
        eprintln!(
            "\nthe log also holds {history} generated access events of the last 120 days (clinical reads, denials by policy and by each verification check, break-glass accesses past their review deadline, research queries), for the dashboard's charts"
        );
        // Everything stays up for a person to explore; the auditor token is the one the
        // report used (it expires in an hour).
        eprintln!(
            "\nthe federation keeps running (Ctrl-C stops it):\n  credentialing office  {}\n  IRB                   {}\n  hospital A gateway    {}  (OpenAPI: {}openapi.json)\n  hospital B gateway    {}\n  visibility layer      {}\n  auditor dashboard     {}dashboard#token={token}",
            office.url(),
            irb.url(),
            gw_a.url(),
            gw_a.url(),
            gw_b.url(),
            visibility.url(),
            visibility.url(),
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(all_ok)
}

/// Generated events reported to the log by hospital A's and B's gateways' keys; returns
/// how many.
async fn seed_history(visibility: &str, gw_a: &Gateway, gw_b: &Gateway) -> anyhow::Result<usize> {
    use fedgate::harness::events::{generate, report, LogSpec};
    let custodians = [HOSPITAL_A, HOSPITAL_B];
    let requesters = [
        HOSPITAL_B,
        HOSPITAL_A,
        "did:web:clinic-c.demo.fedgate",
        "did:web:insurer-d.demo.fedgate",
        "did:web:research-e.demo.fedgate",
    ];
    let events = generate(&LogSpec {
        custodians: &custodians,
        requester_orgs: &requesters,
        count: 900,
        span: chrono::Duration::days(120),
        end: chrono::Utc::now(),
        seed: 19,
    });
    for gw in [gw_a, gw_b] {
        let key = KeyPair::load(&gw.dir.join("gateway.key.json"))?;
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.custodian == gw.did)
            .cloned()
            .collect();
        report(visibility, &key, &mine).await?;
    }
    Ok(events.len())
}

/// What scenario 13 saw.
struct PhoneExchange {
    outcome: String,
    ok: bool,
    decision_id: Option<String>,
    held: usize,
    asked: usize,
    disclosed: usize,
    withheld: bool,
}

/// Scenario 13: OpenID4VCI to a wallet, then OpenID4VP from it, as real HTTP exchanges.
async fn phone_wallet_exchange(
    dir: &std::path::Path,
    office: &Office,
    gw: &Gateway,
    patient: &KeyPair,
    mrn: &str,
) -> anyhow::Result<PhoneExchange> {
    let wdir = dir.join("phone-wallet");
    let phone = wallet::Wallet::init(&wdir, KeyAlgorithm::Ed25519)?;
    let trust = json!({
        "trustedIssuers": {"ClinicianPrivilegeCredential": [OFFICE]},
        "didWeb": {OFFICE: office.url(), HOSPITAL_A: gw.url()},
        "devMode": true
    });
    let trust_file = wdir.join("trust.json");
    std::fs::write(&trust_file, trust.to_string())
        .map_err(|e| anyhow!("{}: {e}", trust_file.display()))?;
    let trust = wallet::TrustConfig::load(&trust_file)?;
    let verifier = trust.verifier()?;

    // The office makes the offer; the clinician types the transaction code it gave apart.
    let subject = privilege(phone.did(), "physician", HOSPITAL_A, "clinical");
    let (offer, tx_code) = office.offer_privilege(&subject, &["dc+sd-jwt"]).await?;
    let received = phone
        .receive(&offer, Some(&tx_code), Some("dc+sd-jwt"), &verifier, true)
        .await?;
    let sd_jwt = received
        .stored
        .credential
        .as_str()
        .ok_or_else(|| anyhow!("the received credential is not an SD-JWT"))?
        .to_string();
    let held = federation::sdjwt::claim_paths(&sd_jwt)?.len();
    // The patient's consent for this clinician, kept in the same wallet.
    let treat = consent(
        patient,
        mrn,
        &json!({"id": phone.did(), "kind": "clinician"}),
        &["clinical"],
        &["TREAT"],
    )
    .await?;
    phone.import(treat, &verifier).await?;

    // The EHR starts the request (cross-device: the wallet scans the QR code).
    let (status, started) = gw
        .post(
            "/v1/oid4vp/clinical/requests",
            &json!({
                "purpose": "TREAT",
                "patient": {"system": MRN_SYSTEM, "value": mrn},
                "data_classes": ["Patient", "Observation"],
                "response_mode": "direct_post.jwt",
            }),
        )
        .await?;
    if status != 201 {
        return Err(anyhow!(
            "starting an OpenID4VP request failed ({status}): {started}"
        ));
    }
    let url = started["authorization_request"]
        .as_str()
        .ok_or_else(|| anyhow!("no authorization request: {started}"))?;
    let resolver = verifier.resolver.clone();
    let request = wallet::oid4vp::fetch_request(url, &resolver, true).await?;
    let asked = request.dcql_query["credentials"]
        .as_array()
        .and_then(|qs| {
            qs.iter()
                .find(|q| q["format"] == "dc+sd-jwt")
                .and_then(|q| q["claims"].as_array())
        })
        .map_or(0, Vec::len);
    let token = wallet::oid4vp::build_vp_token(&phone, &request, Some(patient.did())).await?;
    let presented: Vec<federation::sdjwt::ClaimPath> = token
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .filter(|p| p.contains('~') && !p.starts_with('{'))
        .filter_map(|p| federation::sdjwt::claim_paths(p).ok())
        .flatten()
        .collect();
    let disclosed = presented.len();
    let withheld = !presented
        .iter()
        .any(|p| p.first().is_some_and(|k| k == "name" || k == "npi"));
    wallet::oid4vp::post_response(&request, Some(&token), None, true).await?;
    let (status, bundle) = gw
        .post(
            &format!(
                "/v1/oid4vp/transactions/{}/result",
                started["transaction_id"].as_str().unwrap_or_default()
            ),
            &json!({"requester_secret": started["requester_secret"]}),
        )
        .await?;
    let decision_id = bundle["identifier"]["value"].as_str().map(str::to_string);
    let types = types(&bundle);
    Ok(PhoneExchange {
        outcome: format!("HTTP {status}, {}", types.join(" and ")),
        ok: status == 200 && !types.is_empty() && disclosed > 0 && disclosed < held && withheld,
        decision_id,
        held,
        asked,
        disclosed,
        withheld,
    })
}
