//! `fedgate bench fhir-source`: exchange latency with the records on the organization's
//! FHIR server against the embedded store, in one run.
//!
//! One synthetic patient of `--resources` resources is stored in the FHIR server at
//! `--fhir-url` (one transaction) and imported into an embedded store. The same clinical
//! exchanges are then timed twice, one federation after the other on this machine: with
//! the gateway reading the embedded store, and with it reading the FHIR server. The ratio
//! of the medians is the figure to compare across machines. A load tool, not a test.

use anyhow::anyhow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::contract;
use serde::Serialize;

use super::memory::{clinicians_with_consent, exchange_body, CLINICAL_CLASSES};
use super::*;

#[derive(Args)]
pub struct FhirSourceArgs {
    /// Base URL of a FHIR R4 server that accepts a transaction Bundle at its base (http
    /// only to loopback). The patient is added to it.
    #[arg(long)]
    fhir_url: String,
    /// Resources in the synthetic patient's record.
    #[arg(long, default_value_t = 3000)]
    resources: usize,
    /// Seed of the synthetic record.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Timed exchanges per record source (after one warm-up exchange).
    #[arg(long, default_value_t = 10)]
    exchanges: usize,
    /// FHIR resource types asked for (and consented to).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = CLINICAL_CLASSES
    )]
    data_classes: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the started federations' data in this folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The exchange times with one record source.
#[derive(Serialize)]
struct SourceTimes {
    source: String,
    /// Resources in each answer.
    resources_per_answer: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct FhirSourceReport {
    scenario: String,
    record_resources: usize,
    exchanges: usize,
    sources: Vec<SourceTimes>,
    /// Median with the FHIR server over median with the embedded store.
    ratio: f64,
}

impl FhirSourceReport {
    fn text(&self) -> String {
        let mut out = format!(
            "fedgate bench fhir-source: {} exchanges per source, one patient of {} resources\n  \
             {:<16} {:>10} {:>10} {:>10} {:>10}\n",
            self.exchanges,
            self.record_resources,
            "source",
            "resources",
            "median ms",
            "min ms",
            "max ms"
        );
        for s in &self.sources {
            out.push_str(&format!(
                "  {:<16} {:>10} {:>10.0} {:>10.0} {:>10.0}\n",
                s.source, s.resources_per_answer, s.median_ms, s.min_ms, s.max_ms
            ));
        }
        out.push_str(&format!(
            "  FHIR server / embedded store: {:.2}x\n",
            self.ratio
        ));
        out
    }
}

pub(super) async fn fhir_source(args: FhirSourceArgs) -> anyhow::Result<Printed> {
    if args.resources < 50 || args.exchanges == 0 {
        return Err(anyhow!(
            "--resources must be at least 50 and --exchanges at least 1"
        ));
    }
    reqwest::Url::parse(&args.fhir_url).map_err(|e| anyhow!("--fhir-url: {e}"))?;
    let fhir_url = args.fhir_url.trim_end_matches('/');
    if let Some(c) = args
        .data_classes
        .iter()
        .find(|c| !gateway::exchange::is_resource_type(c))
    {
        return Err(anyhow!("--data-classes: {c:?} is not a FHIR resource type"));
    }
    let say = say_fn(args.json);
    let scratch = Scratch::new(args.dir.clone())?;
    let http = Http::patient(Duration::from_secs(600))?;

    let patient = synth::Generator::new(synth::Options {
        seed: args.seed,
        min_resources: args.resources,
        max_resources: args.resources,
        ..synth::Options::default()
    })
    .patient();
    let file = scratch.path.join("patient.json");
    let bytes = serde_json::to_vec(&patient.bundle)?;
    std::fs::write(&file, &bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let started = Instant::now();
    let (status, answer) = http
        .post_raw_with_type(&format!("{fhir_url}/"), bytes, "application/fhir+json")
        .await?;
    if !(200..300).contains(&status) {
        return Err(anyhow!(
            "the FHIR server refused the patient's transaction (HTTP {status}): {}",
            String::from_utf8_lossy(&answer)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    say(format!(
        "a patient of {} resources stored in the FHIR server in {:.1} s",
        patient.len(),
        started.elapsed().as_secs_f64()
    ));

    let patients = vec![(patient.identity.mrn.clone(), patient.len())];
    let contracts = contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]);
    let fhir_config = format!("\n[records]\nsource = \"fhir\"\nurl = \"{fhir_url}\"\n");
    let mut sources = Vec::new();
    for (name, records, config) in [
        ("embedded store", vec![file.clone()], String::new()),
        ("FHIR server", Vec::new(), fhir_config),
    ] {
        let dir = scratch.path.join(name.replace(' ', "-"));
        let fed = start_federation_with(&dir, &contracts, records, &config, &say)?;
        let base = fed.gateway(HOSPITAL_A)?.url();
        let holders = clinicians_with_consent(&http, &fed, &patients, &args.data_classes).await?;
        let holder = holders.first().ok_or_else(|| anyhow!("no clinician"))?;
        let (warm, _) = exchange_body(&http, &base, holder).await?;
        let mut times = Vec::with_capacity(args.exchanges);
        for _ in 0..args.exchanges {
            let (answer, took) = exchange_body(&http, &base, holder).await?;
            if answer.resources != warm.resources {
                return Err(anyhow!(
                    "{name}: answers of {} and {} resources",
                    warm.resources,
                    answer.resources
                ));
            }
            times.push(took.as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        say(format!(
            "{name}: median {:.0} ms over {} exchanges",
            times[times.len() / 2],
            times.len()
        ));
        sources.push(SourceTimes {
            source: name.into(),
            resources_per_answer: warm.resources,
            median_ms: times[times.len() / 2],
            min_ms: times[0],
            max_ms: times[times.len() - 1],
        });
        drop(fed);
    }
    if sources[0].resources_per_answer != sources[1].resources_per_answer {
        return Err(anyhow!(
            "the embedded store answered {} resources and the FHIR server {}",
            sources[0].resources_per_answer,
            sources[1].resources_per_answer
        ));
    }
    let report = FhirSourceReport {
        scenario: "fhir-source".into(),
        record_resources: patient.len(),
        exchanges: args.exchanges,
        ratio: sources[1].median_ms / sources[0].median_ms,
        sources,
    };
    drop(scratch);
    Ok(Printed {
        value: serde_json::to_value(&report)?,
        text: report.text(),
        json: args.json,
    })
}
