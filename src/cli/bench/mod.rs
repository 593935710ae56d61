//! `fedgate bench exchange|research|ingest`: load against a federation, with the figures
//! the performance issue asks for: requests/s, latency percentiles, errors by status, the
//! server's peak RSS and CPU, and the floor of the same work measured in the same run.
//!
//! With no target URL the command starts its own federation of real processes on loopback
//! (the same harness as `fedgate demo`): a credentialing office, the visibility service
//! and hospital A's gateway over `examples/data/fhir/hospital-a`. Every holder has its own
//! did:key and its own credentials, and every request answers a fresh challenge: the one the
//! answer to its previous request offered, as a wallet making several requests would
//! (`--challenge-per-request` asks for each).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

mod fhir_source;
mod floors;
mod http;
mod load;
mod memory;
mod procs;
mod report;
mod setup;

use floors::*;
use http::*;
use load::*;
use memory::*;
use procs::*;
use report::*;
use setup::*;

const OFFICE: &str = "did:web:credentialing.bench.fedgate";
const VISIBILITY: &str = "did:web:visibility.bench.fedgate";
const HOSPITAL_A: &str = "did:web:hospital-a.bench.fedgate";
const REQUESTER_ORG: &str = "did:web:hospital-b.bench.fedgate";
const STUDY_ID: &str = "urn:fedgate:study:bench";
/// Linux reports process CPU time in clock ticks of 1/100 s on every architecture fedgate
/// runs on (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Clinical exchanges (`POST /v1/exchange/clinical`) by concurrent clinicians, each with
    /// a privilege and a patient's consent, a fresh challenge per request.
    Exchange(ExchangeArgs),
    /// Research queries (`POST /v1/research/queries`) by concurrent research networks, each
    /// with its own IRB study credential, a fresh challenge per request.
    Research(ResearchArgs),
    /// Signed event batches straight to the visibility service (`POST /v1/batches`).
    Ingest(IngestArgs),
    /// Time from revoking a clinician's privilege at the office to the gateway's first
    /// deny (check `status`), with the revocation pushed to the gateway.
    Revocation(RevocationArgs),
    /// The gateway's memory (RSS and peak) across large clinical exchanges: synthetic
    /// patients of 3,000 to 6,600 resources each, every answer a full page.
    Memory(MemoryArgs),
    /// Exchange latency for one large patient with the records on a FHIR server against
    /// the embedded store, in one run.
    FhirSource(fhir_source::FhirSourceArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// How long to measure, in seconds (after one warm-up request per holder).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (all holders together) instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Ask `POST /v1/challenges` before every request, instead of answering the challenge
    /// the gateway's previous answer offered (`Fedgate-Next-Challenge`), as a wallet
    /// making several requests does.
    #[arg(long)]
    challenge_per_request: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the started federation's data in this folder (default: a temporary folder,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct ExchangeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Concurrent holders (clinicians), each with its own DID, privilege and consent.
    #[arg(long, default_value_t = 50)]
    holders: usize,
    /// Policy decisions the started gateway remembers (`policy_decision_cache_entries`;
    /// 0 evaluates every decision). Default: the gateway's default.
    #[arg(long)]
    decision_cache: Option<usize>,
    /// Megabytes of records the started gateway keeps parsed (`records_cache_mb`; 0 reads
    /// and parses the record in every request). Default: the gateway's default.
    #[arg(long, conflicts_with = "gateway")]
    records_cache_mb: Option<usize>,
    /// Megabytes of tokenized pages the started gateway keeps for the next request that
    /// would make the same page (`answers_cache_mb`; 0 fetches and tokenizes every
    /// answer). Default: the gateway's default.
    #[arg(long, conflicts_with = "gateway")]
    answers_cache_mb: Option<usize>,
    /// Microseconds each started service's writer waits under load for more writes per
    /// commit (`[storage] commit_delay_us`; 0 commits what has arrived at once). Default:
    /// the services' default.
    #[arg(long, conflicts_with = "gateway")]
    commit_delay_us: Option<u64>,
    /// FHIR resource types asked for in every request.
    #[arg(long, value_delimiter = ',', default_value = "Patient,Condition")]
    data_classes: Vec<String>,
    /// Ask for this many synthetic patients (40 to 160 resources each, identifiers in
    /// free text, some over 89) instead of hospital A's six fixture patients: each holder
    /// asks for its share of them in turn, with a consent from each. 0: the fixtures.
    #[arg(long, default_value_t = 0, conflicts_with = "gateway")]
    patients: usize,
    /// Proof format of credentials and presentations: jwt or di (Data Integrity).
    #[arg(long, default_value = "jwt")]
    format: String,
    /// A running gateway to load instead of starting a federation (needs --office and
    /// --office-token-file; the gateway must trust that office, hold the hospital-a
    /// fixtures and have a clinical TREAT contract with --org).
    #[arg(long)]
    gateway: Option<String>,
    /// The credentialing office that issues the holders' privileges (with --gateway).
    #[arg(long)]
    office: Option<String>,
    /// File holding the office's admin token (with --gateway).
    #[arg(long)]
    office_token_file: Option<PathBuf>,
    /// File holding the gateway's admin token, to link each holder's patient DID to the
    /// patient's record (with --gateway; without it the gateway must accept unlinked
    /// self-issued consents, `require_patient_links = false`).
    #[arg(long)]
    gateway_token_file: Option<PathBuf>,
    /// The requesting organization named in the privileges (with --gateway).
    #[arg(long, default_value = REQUESTER_ORG)]
    org: String,
    /// Process id of the gateway, for its memory and CPU figures (with --gateway).
    #[arg(long)]
    pid: Option<u32>,
    /// Keep every started service's state in PostgreSQL (a server the bench starts).
    #[arg(long, conflicts_with = "gateway")]
    postgres: bool,
    /// Run the started gateway as this many replicas sharing their state (needs
    /// --postgres); each request takes its challenge from one and is answered by the next.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

#[derive(Args)]
pub struct ResearchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Concurrent holders (research networks), each with its own DID, study credential and
    /// research contract.
    #[arg(long, default_value_t = 50)]
    holders: usize,
}

#[derive(Args)]
pub struct IngestArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Concurrent senders of batches.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Events per batch (the service accepts at most 1,000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// A running visibility service instead of starting one (needs --key).
    #[arg(long)]
    visibility: Option<String>,
    /// Key file of a member organization of that service (with --visibility).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Process id of the visibility service, for its memory and CPU figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Keep the started service's log in PostgreSQL (a server the bench starts) instead of
    /// the embedded file.
    #[arg(long, conflicts_with = "visibility")]
    postgres: bool,
}

#[derive(Args)]
pub struct RevocationArgs {
    /// Revocations to time, one clinician each.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Ask `POST /v1/challenges` before every request, instead of answering the challenge
    /// the gateway's previous answer offered (`Fedgate-Next-Challenge`), as a wallet
    /// making several requests does.
    #[arg(long)]
    challenge_per_request: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the started federation's data in this folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let printed = match command {
        BenchCommand::Exchange(args) => exchange(args).await?,
        BenchCommand::Research(args) => research(args).await?,
        BenchCommand::Ingest(args) => ingest(args).await?,
        BenchCommand::Revocation(args) => revocation(args).await?,
        BenchCommand::Memory(args) => memory(args).await?,
        BenchCommand::FhirSource(args) => fhir_source::fhir_source(args).await?,
    };
    if printed.json {
        println!("{}", serde_json::to_string_pretty(&printed.value)?);
    } else {
        print!("{}", printed.text);
    }
    Ok(())
}

/// A finished report, as JSON and as text.
struct Printed {
    value: Value,
    text: String,
    json: bool,
}

impl Printed {
    fn of(report: &Report, json: bool) -> anyhow::Result<Printed> {
        Ok(Printed {
            value: serde_json::to_value(report)?,
            text: report.text(),
            json,
        })
    }
}
