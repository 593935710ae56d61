//! `fedgate bench memory`: the gateway's memory across large clinical exchanges.
//!
//! Starts the federation as the other benches do, with synthetic patients whose records
//! are the size of an elderly patient's history (`synth::Options::large`: 3,000 to 6,600
//! resources each) imported beside the fixtures. One clinician per patient, each with a
//! privilege and the patient's consent to every clinical class the records hold, then
//! exchanges one after another (each a full page of `max_records` resources), with the
//! gateway's RSS (VmRSS) and peak (VmHWM) read before, after every `--every` exchanges,
//! and once more after `--idle` seconds without requests. A load tool, not a test.

use anyhow::anyhow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{contract, MRN_SYSTEM};
use federation::credentials::ProofFormat;
use federation::keys::{KeyAlgorithm, KeyPair};
use serde::Serialize;
use serde_json::json;

use super::*;

/// Every clinical class the synthetic records hold: what the large-record benches ask for
/// (and consent to) by default.
pub(super) const CLINICAL_CLASSES: &str = "Patient,AllergyIntolerance,Condition,DiagnosticReport,DocumentReference,Encounter,Immunization,MedicationRequest,Observation,Procedure";

#[derive(Args)]
pub struct MemoryArgs {
    /// Synthetic patients with large records (3,000 to 6,600 resources each).
    #[arg(long, default_value_t = 4)]
    synth_patients: usize,
    /// Seed of the synthetic records (the same seed makes the same patients).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fewest resources per synthetic record.
    #[arg(long, default_value_t = 3000)]
    min_resources: usize,
    /// Most resources per synthetic record (at about 7,200, the clinical classes alone
    /// fill a 5,000-resource page).
    #[arg(long, default_value_t = 6600)]
    max_resources: usize,
    /// Exchanges in all, one after another, going round the synthetic patients.
    #[arg(long, default_value_t = 20)]
    exchanges: usize,
    /// Read the gateway's memory after every this many exchanges.
    #[arg(long, default_value_t = 5)]
    every: usize,
    /// Seconds without requests before the last reading.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// FHIR resource types asked for (and consented to): by default every clinical class
    /// the synthetic records hold.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = CLINICAL_CLASSES
    )]
    data_classes: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the started federation's data in this folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The gateway's memory at one point of the run.
#[derive(Serialize)]
struct Reading {
    /// Exchanges answered so far.
    exchanges: usize,
    /// `before`, `after N exchanges`, `idle`.
    when: String,
    /// VmRSS, MB.
    rss_mb: f64,
    /// VmHWM (the peak RSS so far), MB.
    peak_rss_mb: f64,
}

#[derive(Serialize)]
struct MemoryReport {
    scenario: String,
    synth_patients: usize,
    /// Resources in each synthetic patient's record.
    record_sizes: Vec<usize>,
    exchanges: usize,
    /// Resources in the answers (entries besides the OperationOutcome), fewest and most.
    resources_per_answer: (usize, usize),
    /// Bytes of the answers, fewest and most.
    answer_bytes: (usize, usize),
    /// Mean time of one exchange (the POST alone), ms.
    mean_exchange_ms: f64,
    /// Exchanges asked again after a decision overran the policy's time limit.
    retried: usize,
    readings: Vec<Reading>,
}

impl MemoryReport {
    fn text(&self) -> String {
        let mut out = format!(
            "fedgate bench memory: {} exchanges over {} synthetic patients ({} resources)\n  \
             answers: {}–{} resources, {:.1}–{:.1} MB; mean exchange {:.0} ms; {} asked again\n  \
             {:<22} {:>10} {:>10}\n",
            self.exchanges,
            self.synth_patients,
            self.record_sizes
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.resources_per_answer.0,
            self.resources_per_answer.1,
            self.answer_bytes.0 as f64 / 1e6,
            self.answer_bytes.1 as f64 / 1e6,
            self.mean_exchange_ms,
            self.retried,
            "gateway",
            "RSS MB",
            "peak MB",
        );
        for r in &self.readings {
            out.push_str(&format!(
                "  {:<22} {:>10.1} {:>10.1}\n",
                r.when, r.rss_mb, r.peak_rss_mb
            ));
        }
        out
    }
}

pub(super) async fn memory(args: MemoryArgs) -> anyhow::Result<Printed> {
    if args.synth_patients == 0 || args.exchanges == 0 || args.every == 0 {
        return Err(anyhow!(
            "--synth-patients, --exchanges and --every must be at least 1"
        ));
    }
    if !(args.idle.is_finite() && args.idle >= 0.0) {
        return Err(anyhow!("--idle must be a number of seconds"));
    }
    if let Some(c) = args
        .data_classes
        .iter()
        .find(|c| !gateway::exchange::is_resource_type(c))
    {
        return Err(anyhow!("--data-classes: {c:?} is not a FHIR resource type"));
    }
    let say = say_fn(args.json);
    let scratch = Scratch::new(args.dir.clone())?;
    let http = Http::patient(Duration::from_secs(300))?;

    // The synthetic records, one transaction Bundle per patient.
    let started = Instant::now();
    let records = scratch.path.join("synth");
    std::fs::create_dir_all(&records).map_err(|e| anyhow!("{}: {e}", records.display()))?;
    if args.min_resources == 0 || args.min_resources > args.max_resources {
        return Err(anyhow!(
            "--min-resources must be at least 1 and at most --max-resources"
        ));
    }
    let mut generator = synth::Generator::new(synth::Options {
        min_resources: args.min_resources,
        max_resources: args.max_resources,
        ..synth::Options::large(args.seed)
    });
    let mut files = Vec::new();
    let mut patients = Vec::new();
    for i in 0..args.synth_patients {
        let patient = generator.patient();
        let path = records.join(format!("patient-{i:04}.json"));
        let bytes = serde_json::to_vec(&patient.bundle)?;
        std::fs::write(&path, bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        files.push(path);
        patients.push((patient.identity.mrn.clone(), patient.len()));
    }
    say(format!(
        "{} synthetic patients ({} resources) written in {:.1} s; importing",
        patients.len(),
        patients.iter().map(|p| p.1).sum::<usize>(),
        started.elapsed().as_secs_f64()
    ));

    let fed = start_federation(
        &scratch.path,
        &contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]),
        files,
        &say,
    )?;
    let gateway = fed.gateway(HOSPITAL_A)?;
    let base = gateway.url();
    let pid = gateway.process.pid();

    let holders = clinicians_with_consent(&http, &fed, &patients, &args.data_classes).await?;
    let reading = |exchanges: usize, when: String| Reading {
        exchanges,
        when,
        rss_mb: proc_status_mb(pid, "VmRSS:").unwrap_or(0.0),
        peak_rss_mb: proc_status_mb(pid, "VmHWM:").unwrap_or(0.0),
    };
    let mut readings = vec![reading(0, "before".into())];
    say(format!(
        "{} clinicians with a privilege and a consent; gateway RSS {:.1} MB; {} exchanges",
        holders.len(),
        readings[0].rss_mb,
        args.exchanges
    ));
    let mut resources = (usize::MAX, 0);
    let mut bytes = (usize::MAX, 0);
    let mut spent = Duration::ZERO;
    let mut retried = 0;
    for i in 0..args.exchanges {
        let holder = &holders[i % holders.len()];
        // A loaded machine can make a decision overrun the policy's time limit (a 403 that
        // says so): such an exchange is asked again, and counted.
        let mut tries = 0;
        let (answer, took) = loop {
            match exchange_body(&http, &base, holder).await {
                Ok(done) => break done,
                Err(e) if tries < 3 && e.to_string().contains("policy evaluation failed") => {
                    tries += 1;
                    retried += 1;
                }
                Err(e) => return Err(e),
            }
        };
        spent += took;
        let entries = answer.resources;
        resources = (resources.0.min(entries), resources.1.max(entries));
        bytes = (bytes.0.min(answer.bytes), bytes.1.max(answer.bytes));
        if (i + 1) % args.every == 0 || i + 1 == args.exchanges {
            readings.push(reading(i + 1, format!("after {} exchanges", i + 1)));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
    readings.push(reading(
        args.exchanges,
        format!("idle {:.0} s later", args.idle),
    ));

    let report = MemoryReport {
        scenario: "memory".into(),
        synth_patients: patients.len(),
        record_sizes: patients.iter().map(|p| p.1).collect(),
        exchanges: args.exchanges,
        resources_per_answer: resources,
        answer_bytes: bytes,
        mean_exchange_ms: spent.as_secs_f64() * 1e3 / args.exchanges as f64,
        retried,
        readings,
    };
    drop(fed);
    drop(scratch);
    Ok(Printed {
        value: serde_json::to_value(&report)?,
        text: report.text(),
        json: args.json,
    })
}

/// What one exchange answered.
pub(super) struct Answered {
    /// Resources in the Bundle (entries besides the OperationOutcome).
    pub(super) resources: usize,
    pub(super) bytes: usize,
}

/// One exchange by `holder` (challenge, presentation, POST), which must be answered with a
/// Bundle; the time is that of the POST alone.
pub(super) async fn exchange_body(
    http: &Http,
    base: &str,
    holder: &Holder,
) -> anyhow::Result<(Answered, Duration)> {
    let binding = http
        .challenge(base)
        .await
        .map_err(|_| anyhow!("no challenge from the gateway"))?;
    let vp = federation::credentials::present(
        &holder.credentials,
        &holder.key,
        &binding,
        ProofFormat::Jwt,
    )
    .await
    .map_err(|e| anyhow!("presenting: {e}"))?;
    let mut body = holder.body.clone();
    body["presentation"] = vp;
    let t0 = Instant::now();
    let (status, bytes) = http
        .post_raw(&format!("{base}v1/exchange/clinical"), &body)
        .await?;
    let took = t0.elapsed();
    let bundle: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status != 200 || bundle["resourceType"] != "Bundle" {
        return Err(anyhow!(
            "exchange: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let resources = bundle["entry"].as_array().map_or(0, |e| {
        e.iter()
            .filter(|e| e["search"]["mode"] != "outcome")
            .count()
    });
    Ok((
        Answered {
            resources,
            bytes: bytes.len(),
        },
        took,
    ))
}

/// One clinician per patient (MRN, record size) at the federation's gateway, each with a
/// privilege and the patient's consent to `data_classes`, the patient linked to the
/// consent's DID.
pub(super) async fn clinicians_with_consent(
    http: &Http,
    fed: &crate::harness::Federation,
    patients: &[(String, usize)],
    data_classes: &[String],
) -> anyhow::Result<Vec<Holder>> {
    let gateway = fed.gateway(HOSPITAL_A)?;
    let base = gateway.url();
    let gateway_token = read_token(&gateway.dir.join("admin-token"))?;
    let office = fed.office.url();
    let classes: Vec<&str> = data_classes.iter().map(String::as_str).collect();
    let scope = Scope {
        domain: "clinical",
        purpose: "TREAT",
        classes: &classes,
    };
    let mut holders = Vec::with_capacity(patients.len());
    for (mrn, _) in patients {
        let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
        let answer = http
            .expect(
                "issuing a privilege",
                &format!("{office}v1/privileges"),
                &json!({
                    "subject": privilege_subject(clinician.did(), HOSPITAL_A, REQUESTER_ORG),
                    "format": "jwt",
                }),
                Some(&fed.office.token),
                201,
            )
            .await?;
        let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
        let grantee = json!({"id": clinician.did(), "kind": "clinician"});
        let consent =
            consent_for(&patient, HOSPITAL_A, mrn, grantee, &scope, ProofFormat::Jwt).await?;
        let link = Some((gateway_token.as_str(), mrn.as_str()));
        register_consent(http, &base, &patient, &consent, ProofFormat::Jwt, link).await?;
        holders.push(Holder {
            key: clinician,
            credentials: vec![answer["verifiableCredential"].clone(), consent],
            more: Vec::new(),
            body: json!({
                "purpose": "TREAT",
                "patient": {"system": MRN_SYSTEM, "value": mrn},
                "data_classes": data_classes,
            }),
        });
    }
    Ok(holders)
}
