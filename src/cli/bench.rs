//! `fedgate bench exchange|research|ingest`: load against a federation, with the figures
//! the performance issue asks for: requests/s, latency percentiles, errors by status, the
//! server's peak RSS and CPU, and the floor of the same work measured in the same run.
//!
//! With no target URL the command starts its own federation of real processes on loopback
//! (the same harness as `fedgate demo`): a credentialing office, the visibility service
//! and hospital A's gateway over `examples/data/fhir/hospital-a`. Every holder has its own
//! did:key and its own credentials, and every request answers a fresh challenge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    contract, fixture_mrn, fixtures, repo_root, Custodian, Federation, MRN_SYSTEM,
};
use clap::{Args, Subcommand};
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use serde::Serialize;
use serde_json::{json, Value};

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
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// How long to measure, in seconds (after one warm-up request per holder).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (all holders together) instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
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
    /// FHIR resource types asked for in every request.
    #[arg(long, value_delimiter = ',', default_value = "Patient,Condition")]
    data_classes: Vec<String>,
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
}

#[derive(Args)]
pub struct RevocationArgs {
    /// Revocations to time, one clinician each.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the started federation's data in this folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(command: BenchCommand) -> Result<(), String> {
    let printed = match command {
        BenchCommand::Exchange(args) => exchange(args).await?,
        BenchCommand::Research(args) => research(args).await?,
        BenchCommand::Ingest(args) => ingest(args).await?,
        BenchCommand::Revocation(args) => revocation(args).await?,
    };
    if printed.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&printed.value).map_err(|e| e.to_string())?
        );
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
    fn of(report: &Report, json: bool) -> Result<Printed, String> {
        Ok(Printed {
            value: serde_json::to_value(report).map_err(|e| e.to_string())?,
            text: report.text(),
            json,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    /// Concurrent holders (or senders).
    pub concurrency: usize,
    /// Requests completed in the measured window, successful or not.
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by HTTP status, or `transport` when no answer came.
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Latency of the measured request alone (not the challenge before it), ms.
    pub latency_ms: Latency,
    /// Latency of fetching the challenge, ms (exchange and research).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestFigures>,
    /// The server process under load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUsage>,
    /// Cores this load generator kept busy in the window: on a small machine it competes
    /// with the server for them.
    pub load_generator_cores_busy: f64,
    pub floor: Floor,
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |p: f64| ms(samples[((samples.len() - 1) as f64 * p).round() as usize]);
        let total: Duration = samples.iter().sum();
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: ms(total) / samples.len() as f64,
        }
    }
}

#[derive(Serialize)]
pub struct IngestFigures {
    pub events_per_batch: usize,
    pub events_appended: u64,
    pub events_per_second: f64,
    /// New checkpoints (tree heads) seen in the answers during the window.
    pub checkpoints: u64,
    pub checkpoints_per_second: f64,
    /// Longest time between two successive new checkpoints, ms.
    pub max_checkpoint_interval_ms: f64,
    pub tree_size: u64,
}

#[derive(Serialize)]
pub struct ServerUsage {
    pub name: String,
    pub pid: u32,
    /// Resident set once the service was up, before any holder was set up (fixtures
    /// loaded, nothing asked yet); absent for a service the bench did not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_rss_mb: Option<f64>,
    /// VmHWM: the process's peak resident set since it started.
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
    /// CPU time the process used during the measured window.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per second of the window: cores the server kept busy.
    pub cores_busy: f64,
}

/// The least work the measured operation needs, measured in this process in this run.
#[derive(Serialize)]
pub struct Floor {
    /// What the floor is made of, in words.
    pub made_of: String,
    pub per_request_us: f64,
    /// The floor's throughput on `cores` cores.
    pub cores: usize,
    pub per_second: f64,
    /// Measured throughput ÷ the floor's.
    pub ratio: f64,
    /// The parts, µs each.
    pub parts_us: BTreeMap<String, f64>,
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        out.push_str(&format!(
            "fedgate bench {}: {} concurrent, {} requests in {:.1} s\n",
            self.scenario, self.concurrency, self.requests, self.seconds
        ));
        out.push_str(&format!(
            "  throughput   {:>10.0} requests/s ({} ok)\n",
            self.requests_per_second, self.ok
        ));
        out.push_str(&format!(
            "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}\n",
            l.p50, l.p90, l.p99, l.max, l.mean
        ));
        if let Some(c) = &self.challenge_latency_ms {
            out.push_str(&format!(
                "  challenge ms p50 {:.2}  p99 {:.2}\n",
                c.p50, c.p99
            ));
        }
        if let Some(i) = &self.ingest {
            out.push_str(&format!(
                "  events       {:>10.0} events/s appended ({} events, {} per batch), tree size {}\n",
                i.events_per_second, i.events_appended, i.events_per_batch, i.tree_size
            ));
            out.push_str(&format!(
                "  checkpoints  {} ({:.1}/s), longest interval {:.0} ms\n",
                i.checkpoints, i.checkpoints_per_second, i.max_checkpoint_interval_ms
            ));
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("  errors       {errors}\n"));
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "  {} (pid {})  peak RSS {:.1} MB (idle {}), RSS {:.1} MB, {:.2} cores busy (load generator: {:.2})\n",
                s.name,
                s.pid,
                s.peak_rss_mb,
                s.idle_rss_mb.map(|m| format!("{m:.1} MB")).unwrap_or_else(|| "-".into()),
                s.rss_mb,
                s.cores_busy,
                self.load_generator_cores_busy
            ));
        }
        let f = &self.floor;
        out.push_str(&format!(
            "  floor        {:.1} µs per request ({}) = {:.0}/s on {} cores; measured is {:.3} of it\n",
            f.per_request_us, f.made_of, f.per_second, f.cores, f.ratio
        ));
        out
    }
}

// ---------------------------------------------------------------------------------------
// Processes: memory and CPU from /proc
// ---------------------------------------------------------------------------------------

/// A `kB` field of `/proc/PID/status` (VmHWM, VmRSS), in MB.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU seconds of a process so far.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

struct Watched {
    name: String,
    pid: u32,
    cpu_at_start: f64,
    idle_rss_mb: Option<f64>,
}

impl Watched {
    fn start(name: &str, pid: Option<u32>, idle_rss_mb: Option<f64>) -> Option<Watched> {
        let pid = pid?;
        Some(Watched {
            name: name.to_string(),
            pid,
            cpu_at_start: proc_cpu_seconds(pid).unwrap_or(0.0),
            idle_rss_mb,
        })
    }

    fn finish(self, seconds: f64) -> ServerUsage {
        let cpu = proc_cpu_seconds(self.pid).unwrap_or(0.0) - self.cpu_at_start;
        ServerUsage {
            name: self.name,
            pid: self.pid,
            idle_rss_mb: self.idle_rss_mb,
            peak_rss_mb: proc_status_mb(self.pid, "VmHWM:").unwrap_or(0.0),
            rss_mb: proc_status_mb(self.pid, "VmRSS:").unwrap_or(0.0),
            cpu_seconds: cpu,
            cores_busy: cpu / seconds.max(f64::MIN_POSITIVE),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Floors, measured here
// ---------------------------------------------------------------------------------------

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Mean time of `f` over about `budget`, after one warm-up call, µs.
fn mean_us(budget: Duration, mut f: impl FnMut() -> bool) -> Result<f64, String> {
    if !f() {
        return Err("a floor measurement failed".into());
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        if !f() {
            return Err("a floor measurement failed".into());
        }
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64)
}

/// One Ed25519 verification (ed25519-dalek, key already parsed) over `message_len`
/// bytes, µs.
fn ed25519_verify_us(message_len: usize) -> Result<f64, String> {
    use base64::Engine;
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
    let signing = key
        .ed25519_signing_key()
        .ok_or("no Ed25519 signing key for the floor")?;
    let payload = json!({ "pad": "x".repeat(message_len.saturating_sub(40)) });
    let jws = federation::jose::sign(&payload, &key, "floor").map_err(|e| e.to_string())?;
    let (input, sig) = jws.rsplit_once('.').ok_or("malformed JWS for the floor")?;
    let sig_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|e| e.to_string())?;
    let signature = TryFrom::try_from(sig_bytes.as_slice())
        .ok()
        .ok_or("malformed signature for the floor")?;
    let verifying = signing.verifying_key();
    let message = input.as_bytes();
    mean_us(Duration::from_millis(500), || {
        verifying.verify_strict(message, &signature).is_ok()
    })
}

/// One policy decision of `domain` on the gateway's sample input with the repository's
/// policies, µs.
async fn decision_us(policies: &Path, domain: &'static str) -> Result<f64, String> {
    let bundle =
        gateway::policy::PolicyBundle::load(policies).map_err(|e| format!("policies: {e}"))?;
    tokio::task::spawn_blocking(move || {
        let input = gateway::policy::sample_input(domain);
        mean_us(Duration::from_millis(500), || {
            bundle.evaluate(domain, &input).allow
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The floor of a request that needs `signatures` signature checks and one decision.
async fn request_floor(
    policies: &Path,
    domain: &'static str,
    signatures: usize,
    measured_per_second: f64,
) -> Result<Floor, String> {
    let sig = ed25519_verify_us(1024)?;
    let decision = decision_us(policies, domain).await?;
    let per_request = signatures as f64 * sig + decision;
    let cores = cores();
    let per_second = cores as f64 * 1e6 / per_request;
    Ok(Floor {
        made_of: format!(
            "{signatures} Ed25519 verification{} + one {domain} decision",
            if signatures == 1 { "" } else { "s" }
        ),
        per_request_us: per_request,
        cores,
        per_second,
        ratio: measured_per_second / per_second,
        parts_us: BTreeMap::from([
            ("ed25519_verify".to_string(), sig),
            (format!("{domain}_decision"), decision),
        ]),
    })
}

// ---------------------------------------------------------------------------------------
// The federation under test
// ---------------------------------------------------------------------------------------

/// The data folder: removed when the bench made it, kept when the user named it.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(dir: Option<PathBuf>) -> Result<Scratch, String> {
        let (path, keep) = match dir {
            Some(d) => (d, true),
            None => (
                std::env::temp_dir().join(format!("fedgate-bench-{}", uuid::Uuid::new_v4())),
                false,
            ),
        };
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The MRN of the Patient in each of hospital A's fixture bundles.
fn fixture_mrns() -> Result<Vec<String>, String> {
    let mrns: Vec<String> = fixtures("hospital-a")?
        .iter()
        .filter_map(|file| fixture_mrn(file).ok())
        .collect();
    if mrns.is_empty() {
        return Err("no fixture patient with an MRN".into());
    }
    Ok(mrns)
}

/// An office, the visibility service and hospital A's gateway with `contracts`.
fn start_federation(
    dir: &Path,
    contracts: &str,
    say: &dyn Fn(String),
) -> Result<Federation, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find fedgate itself: {e}"))?;
    let started = Instant::now();
    // Events ship at the gateway's default pace, as in the figures of docs/performance.md.
    let fed = Federation::builder(&exe, dir, OFFICE, VISIBILITY)
        .status_push()
        .gateway(
            Custodian::new(HOSPITAL_A)
                .records(fixtures("hospital-a")?)
                .config("[custodian]\nmin_cell_size = 3\n")
                .config(contracts),
        )
        .start()?;
    let gateway = fed.gateway(HOSPITAL_A)?;
    say(format!(
        "federation up in {:.1} s: office {}, visibility {}, gateway {} (pid {})",
        started.elapsed().as_secs_f64(),
        fed.office.process.addr,
        fed.visibility.process.addr,
        gateway.process.addr,
        gateway.process.pid()
    ));
    Ok(fed)
}

// ---------------------------------------------------------------------------------------
// HTTP with one shared client (connections are reused, as a real requester would)
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
}

/// An answer: status, or no answer at all.
enum Answer {
    Status(u16, Value),
    Transport(String),
}

impl Http {
    fn new(connections: usize) -> Result<Http, String> {
        let client = federation::client::http_client_builder()
            .pool_max_idle_per_host(connections.max(1))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Http { client })
    }

    async fn post(&self, url: &str, body: &Value, token: Option<&str>) -> Answer {
        let mut req = self.client.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) => Answer::Status(
                        status,
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    ),
                    Err(e) => Answer::Transport(e.without_url().to_string()),
                }
            }
            Err(e) => Answer::Transport(e.without_url().to_string()),
        }
    }

    /// POSTs and insists on `expected`; any other answer is an error naming `what`.
    async fn expect(
        &self,
        what: &str,
        url: &str,
        body: &Value,
        token: Option<&str>,
        expected: u16,
    ) -> Result<Value, String> {
        match self.post(url, body, token).await {
            Answer::Status(s, v) if s == expected => Ok(v),
            Answer::Status(s, v) => Err(format!(
                "{what}: HTTP {s}: {}",
                v.to_string().chars().take(300).collect::<String>()
            )),
            Answer::Transport(e) => Err(format!("{what}: {e}")),
        }
    }

    async fn challenge(&self, base: &str) -> Result<PresentationBinding, Answer> {
        match self
            .post(&format!("{base}v1/challenges"), &json!({}), None)
            .await
        {
            Answer::Status(200, body) => {
                match (body["challenge"].as_str(), body["domain"].as_str()) {
                    (Some(c), Some(d)) => Ok(PresentationBinding {
                        challenge: c.to_string(),
                        domain: d.to_string(),
                    }),
                    _ => Err(Answer::Status(200, body)),
                }
            }
            other => Err(other),
        }
    }
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

// ---------------------------------------------------------------------------------------
// Holders and the load loop
// ---------------------------------------------------------------------------------------

/// One holder: a key, the credentials it presents and the request body it sends.
struct Holder {
    key: KeyPair,
    credentials: Vec<Value>,
    /// The request without its presentation.
    body: Value,
}

/// What one holder measured.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    challenges: Vec<Duration>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, key: String) {
        *self.errors.entry(key).or_default() += 1;
    }
}

/// When the measured window ends: after a duration, or after a number of requests.
struct Stop {
    deadline: Instant,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Stop {
    /// Whether another request may start.
    fn next(&self) -> bool {
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => Instant::now() < self.deadline,
        }
    }
}

/// One request of one holder: challenge, presentation, the measured POST.
async fn one_request(
    http: &Http,
    base: &str,
    path: &str,
    holder: &Holder,
    format: ProofFormat,
    tally: Option<&mut Tally>,
) -> Result<(), String> {
    let t0 = Instant::now();
    let binding = match http.challenge(base).await {
        Ok(b) => b,
        Err(answer) => {
            let key = match answer {
                Answer::Status(s, _) => format!("challenge {s}"),
                Answer::Transport(_) => "challenge transport".to_string(),
            };
            if let Some(t) = tally {
                t.error(key.clone());
                return Ok(());
            }
            return Err(key);
        }
    };
    let challenge_time = t0.elapsed();
    let vp = credentials::present(&holder.credentials, &holder.key, &binding, format)
        .await
        .map_err(|e| format!("presenting: {e}"))?;
    let mut body = holder.body.clone();
    body["presentation"] = vp;
    let t1 = Instant::now();
    let answer = http.post(&format!("{base}{path}"), &body, None).await;
    let elapsed = t1.elapsed();
    match tally {
        Some(t) => {
            t.challenges.push(challenge_time);
            t.latencies.push(elapsed);
            match answer {
                Answer::Status(200, _) => t.ok += 1,
                Answer::Status(s, _) => t.error(s.to_string()),
                Answer::Transport(_) => t.error("transport".into()),
            }
            Ok(())
        }
        None => match answer {
            Answer::Status(200, _) => Ok(()),
            Answer::Status(s, v) => Err(format!(
                "HTTP {s}: {}",
                v.to_string().chars().take(300).collect::<String>()
            )),
            Answer::Transport(e) => Err(e),
        },
    }
}

/// Where the load goes.
struct Target {
    /// The gateway's base URL, with a trailing slash.
    base: String,
    /// The measured request's path under it.
    path: &'static str,
    format: ProofFormat,
    /// The gateway's process, for memory and CPU.
    pid: Option<u32>,
    idle_rss_mb: Option<f64>,
}

/// Warms every holder up with one request (which must succeed), then runs all of them
/// concurrently until `stop`, and returns the merged tally and the window's length.
async fn drive(
    http: &Http,
    target: &Target,
    holders: Vec<Holder>,
    run: &RunArgs,
) -> Result<(Tally, f64, Option<ServerUsage>, f64), String> {
    let (base, path, format) = (target.base.as_str(), target.path, target.format);
    for (i, h) in holders.iter().enumerate() {
        one_request(http, base, path, h, format, None)
            .await
            .map_err(|e| format!("holder {i}: the warm-up request failed: {e}"))?;
    }
    let watched = Watched::start("gateway", target.pid, target.idle_rss_mb);
    let me = Watched::start("load generator", Some(std::process::id()), None);
    let stop = Arc::new(Stop {
        deadline: Instant::now() + Duration::from_secs_f64(run.duration),
        limit: run.requests,
        issued: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for holder in holders {
        let (http, base, stop) = (http.clone(), base.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while stop.next() {
                one_request(&http, &base, path, &holder, format, Some(&mut tally)).await?;
            }
            Ok::<Tally, String>(tally)
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| e.to_string())??;
        total.latencies.extend(t.latencies);
        total.challenges.extend(t.challenges);
        total.ok += t.ok;
        for (k, v) in t.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let load = me.map(|m| m.finish(seconds).cores_busy).unwrap_or(0.0);
    Ok((total, seconds, watched.map(|w| w.finish(seconds)), load))
}

fn report_of(
    scenario: &str,
    concurrency: usize,
    tally: Tally,
    seconds: f64,
    server: Option<ServerUsage>,
    floor: Floor,
) -> Report {
    let requests = tally.latencies.len() as u64;
    Report {
        scenario: scenario.to_string(),
        concurrency,
        requests,
        ok: tally.ok,
        errors: tally.errors,
        seconds,
        requests_per_second: requests as f64 / seconds.max(f64::MIN_POSITIVE),
        latency_ms: Latency::of(tally.latencies),
        challenge_latency_ms: Some(Latency::of(tally.challenges)),
        ingest: None,
        server,
        load_generator_cores_busy: 0.0,
        floor,
    }
}

fn check_run(run: &RunArgs, concurrency: usize, what: &str) -> Result<(), String> {
    if concurrency == 0 {
        return Err(format!("--{what} must be at least 1"));
    }
    if !(run.duration.is_finite() && run.duration > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if run.requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    Ok(())
}

fn privilege_subject(clinician: &str, facility: &str, org: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Bench Clinician",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": org,
        "privileges": [{"facility": facility, "domains": ["clinical"], "actions": ["read"]}]
    })
}

/// A consent the patient issues to themselves, for their record at `custodian`.
async fn self_issued_consent(
    patient: &KeyPair,
    custodian: &str,
    mrn: &str,
    grantee: Value,
    domain: &str,
    purpose: &str,
    format: ProofFormat,
) -> Result<Value, String> {
    let subject = json!({
        "id": patient.did(),
        "patientIdentifiers": [{"custodian": custodian, "system": MRN_SYSTEM, "value": mrn}],
        "custodians": [custodian],
        "grantee": grantee,
        "provision": "permit",
        "domains": [domain],
        "purposes": [purpose],
        "dataClasses": ["Patient", "Observation", "Condition", "Encounter", "Procedure",
                        "MedicationRequest", "Immunization", "DiagnosticReport", "AllergyIntolerance"],
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
    credentials::issue(vc, patient, format)
        .await
        .map_err(|e| format!("issuing a consent: {e}"))
}

fn read_token(path: &Path) -> Result<String, String> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .to_string())
}

/// The custodian's admin token, and the MRN whose patient a consent's DID is linked to.
type Link<'a> = Option<(&'a str, &'a str)>;

/// The custodian links the patient's DID to their record (when `link` is given: its admin
/// token and the MRN), then the patient registers the consent with the custodian (a
/// presentation of their own).
async fn register_consent(
    http: &Http,
    base: &str,
    patient: &KeyPair,
    consent: &Value,
    format: ProofFormat,
    link: Link<'_>,
) -> Result<(), String> {
    if let Some((token, mrn)) = link {
        http.expect(
            "linking a patient DID",
            &format!("{base}v1/patient-links"),
            &json!({"patient": {"system": MRN_SYSTEM, "value": mrn}, "did": patient.did()}),
            Some(token),
            200,
        )
        .await?;
    }
    let binding = http
        .challenge(base)
        .await
        .map_err(|_| "registering a consent: no challenge".to_string())?;
    let vp = credentials::present(std::slice::from_ref(consent), patient, &binding, format)
        .await
        .map_err(|e| e.to_string())?;
    http.expect(
        "registering a consent",
        &format!("{base}v1/consents"),
        &json!({"presentation": vp}),
        None,
        201,
    )
    .await
    .map(|_| ())
}

fn say_fn(json_out: bool) -> impl Fn(String) {
    move |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// exchange
// ---------------------------------------------------------------------------------------

async fn exchange(args: ExchangeArgs) -> Result<Printed, String> {
    check_run(&args.run, args.holders, "holders")?;
    let format: ProofFormat = args.format.parse()?;
    if let Some(c) = args
        .data_classes
        .iter()
        .find(|c| !gateway::exchange::is_resource_type(c))
    {
        return Err(format!("--data-classes: {c:?} is not a FHIR resource type"));
    }
    let say = say_fn(args.run.json);
    let root = repo_root()?;
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.holders * 2)?;

    // Where the load goes: our own federation, or the one named on the command line.
    let mut idle_rss = None;
    let (fed, base, office_url, token, org, pid, gateway_token) = match &args.gateway {
        None => {
            let fed = start_federation(
                &scratch.path,
                &contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]),
                &say,
            )?;
            let gateway = fed.gateway(HOSPITAL_A)?;
            let base = gateway.url();
            let office = fed.office.url();
            let token = fed.office.token.clone();
            let pid = gateway.process.pid();
            let gateway_token = read_token(&gateway.dir.join("admin-token"))?;
            idle_rss = proc_status_mb(pid, "VmRSS:");
            (
                Some(fed),
                base,
                office,
                token,
                REQUESTER_ORG.to_string(),
                Some(pid),
                Some(gateway_token),
            )
        }
        Some(gw) => {
            let (Some(office), Some(token_file)) = (&args.office, &args.office_token_file) else {
                return Err("--gateway needs --office and --office-token-file".into());
            };
            let token = read_token(token_file)?;
            let gateway_token = args
                .gateway_token_file
                .as_deref()
                .map(read_token)
                .transpose()?;
            (
                None,
                with_slash(gw),
                with_slash(office),
                token,
                args.org.clone(),
                args.pid,
                gateway_token,
            )
        }
    };
    let custodian = http
        .challenge(&base)
        .await
        .map_err(|_| format!("{base}: no challenge from the gateway"))?
        .domain;
    let mrns = fixture_mrns()?;

    let started = Instant::now();
    let mut holders = Vec::with_capacity(args.holders);
    for i in 0..args.holders {
        let clinician =
            KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
        let answer = http
            .expect(
                "issuing a privilege",
                &format!("{office_url}v1/privileges"),
                &json!({
                    "subject": privilege_subject(clinician.did(), &custodian, &org),
                    "format": match format { ProofFormat::Jwt => "jwt", ProofFormat::DataIntegrity => "data-integrity" },
                }),
                Some(&token),
                201,
            )
            .await?;
        let privilege = answer["verifiableCredential"].clone();
        let patient =
            KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
        let mrn = &mrns[i % mrns.len()];
        let consent = self_issued_consent(
            &patient,
            &custodian,
            mrn,
            json!({"id": clinician.did(), "kind": "clinician"}),
            "clinical",
            "TREAT",
            format,
        )
        .await?;
        let link = gateway_token.as_deref().map(|t| (t, mrn.as_str()));
        register_consent(&http, &base, &patient, &consent, format, link).await?;
        holders.push(Holder {
            key: clinician,
            credentials: vec![privilege, consent],
            body: json!({
                "purpose": "TREAT",
                "patient": {"system": MRN_SYSTEM, "value": mrn},
                "data_classes": args.data_classes,
            }),
        });
    }
    say(format!(
        "{} holders with a privilege and a registered consent in {:.1} s; measuring {}",
        args.holders,
        started.elapsed().as_secs_f64(),
        match args.run.requests {
            Some(n) => format!("{n} requests"),
            None => format!("{} s", args.run.duration),
        }
    ));

    let target = Target {
        base,
        path: "v1/exchange/clinical",
        format,
        pid,
        idle_rss_mb: idle_rss,
    };
    let (tally, seconds, server, load) = drive(&http, &target, holders, &args.run).await?;
    let rps = tally.latencies.len() as f64 / seconds.max(f64::MIN_POSITIVE);
    // With the proof cache warm, the gateway checks one signature per request: the
    // holder's, over the presentation that answers the fresh challenge.
    let floor = request_floor(&root.join("policies"), "clinical", 1, rps).await?;
    let mut report = report_of("exchange", args.holders, tally, seconds, server, floor);
    report.load_generator_cores_busy = load;
    drop(fed);
    drop(scratch);
    Printed::of(&report, args.run.json)
}

// ---------------------------------------------------------------------------------------
// research
// ---------------------------------------------------------------------------------------

async fn research(args: ResearchArgs) -> Result<Printed, String> {
    check_run(&args.run, args.holders, "holders")?;
    let say = say_fn(args.run.json);
    let root = repo_root()?;
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.holders * 2)?;
    // Each network needs a research contract with the custodian, so the keys exist
    // before the gateway's configuration is written.
    let networks: Vec<KeyPair> = (0..args.holders)
        .map(|_| KeyPair::generate_did_key(KeyAlgorithm::Ed25519))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let contracts: String = networks
        .iter()
        .map(|n| contract(HOSPITAL_A, n.did(), &["research"], &["HRESCH"]))
        .collect();
    let fed = start_federation(&scratch.path, &contracts, &say)?;
    let gateway = fed.gateway(HOSPITAL_A)?;
    let idle_rss = proc_status_mb(gateway.process.pid(), "VmRSS:");
    let base = gateway.url();
    let gateway_token = read_token(&gateway.dir.join("admin-token"))?;
    let started = Instant::now();
    // Every fixture patient consents to the study.
    for mrn in fixture_mrns()? {
        let patient =
            KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
        let consent = self_issued_consent(
            &patient,
            HOSPITAL_A,
            &mrn,
            json!({"id": STUDY_ID, "kind": "study"}),
            "research",
            "HRESCH",
            ProofFormat::Jwt,
        )
        .await?;
        let link = Some((gateway_token.as_str(), mrn.as_str()));
        register_consent(&http, &base, &patient, &consent, ProofFormat::Jwt, link).await?;
    }
    let mut holders = Vec::with_capacity(args.holders);
    for network in networks {
        let answer = http
            .expect(
                "issuing a study credential",
                &format!("{}credentials/issue", fed.office.url()),
                &json!({"credential": {
                    "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
                    "type": ["VerifiableCredential", "ResearchStudyCredential"],
                    "credentialSubject": {
                        "id": STUDY_ID, "title": "Bench cohort", "sponsor": network.did(),
                        "purposes": ["HRESCH"], "dataClasses": ["Condition", "Observation", "Patient"],
                        "aggregateOnly": true, "minCellSize": 3
                    },
                    "validUntil": "2036-01-01T00:00:00Z"
                }, "options": {"format": "jwt"}}),
                Some(&fed.office.token),
                201,
            )
            .await?;
        holders.push(Holder {
            key: network,
            credentials: vec![answer["verifiableCredential"].clone()],
            body: json!({
                "purpose": "HRESCH",
                "query": {"conditions": [], "age_bands": [[0, 17], [18, 200]]},
            }),
        });
    }
    say(format!(
        "{} research networks with a study credential in {:.1} s; measuring",
        args.holders,
        started.elapsed().as_secs_f64()
    ));
    let target = Target {
        base,
        path: "v1/research/queries",
        format: ProofFormat::Jwt,
        pid: Some(gateway.process.pid()),
        idle_rss_mb: idle_rss,
    };
    let (tally, seconds, server, load) = drive(&http, &target, holders, &args.run).await?;
    let rps = tally.latencies.len() as f64 / seconds.max(f64::MIN_POSITIVE);
    let floor = request_floor(&root.join("policies"), "research", 1, rps).await?;
    let mut report = report_of("research", args.holders, tally, seconds, server, floor);
    report.load_generator_cores_busy = load;
    drop(fed);
    drop(scratch);
    Printed::of(&report, args.run.json)
}

// ---------------------------------------------------------------------------------------
// ingest
// ---------------------------------------------------------------------------------------

/// A batch of `n` fresh events of `custodian`, signed as the service expects.
fn signed_batch(key: &KeyPair, template: &Value, n: usize) -> Result<String, String> {
    let events: Vec<Value> = (0..n)
        .map(|_| {
            let mut e = template.clone();
            let id = federation::events::AccessEvent::new_id();
            e["decisionId"] = json!(id);
            e["id"] = json!(id);
            e
        })
        .collect();
    let payload = json!({"custodian": key.did(), "events": events});
    federation::jose::sign(&payload, key, federation::wire::BATCH_TYP).map_err(|e| e.to_string())
}

/// A typical allowed clinical access event of `custodian` (no PHI, as always).
fn event_template(custodian: &str) -> Result<Value, String> {
    let event = federation::events::AccessEvent {
        id: String::new(),
        time: chrono::Utc::now(),
        custodian: custodian.to_string(),
        requester_org: Some(REQUESTER_ORG.into()),
        requester: Some("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into()),
        patient_ref: Some(hex::encode([7u8; 32])),
        patient_did_digests: vec![federation::events::patient_did_digest(
            "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH",
        )],
        domain: "clinical".into(),
        purpose: "TREAT".into(),
        data_classes: vec!["Patient".into(), "Condition".into()],
        record_count: 12,
        decision: federation::events::Outcome::Allow,
        decision_id: String::new(),
        reasons: vec!["consent permits TREAT for Condition, Patient".into()],
        policy_digest: hex::encode([9u8; 32]),
        credential_ids: vec![
            format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        ],
        failed_check: None,
        break_glass: false,
        justification: None,
        review_required: false,
        expires_at: None,
    };
    serde_json::to_value(event).map_err(|e| e.to_string())
}

/// What the senders saw: time and tree size of every answer.
#[derive(Default)]
struct IngestTally {
    latencies: Vec<Duration>,
    heads: Vec<(Instant, u64)>,
    appended: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

async fn ingest(args: IngestArgs) -> Result<Printed, String> {
    check_run(&args.run, args.senders, "senders")?;
    let max = federation::wire::MAX_BATCH_EVENTS;
    if args.batch == 0 || args.batch > max {
        return Err(format!("--batch must be 1 to {max} events"));
    }
    let say = say_fn(args.run.json);
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.senders * 2)?;

    let mut idle_rss = None;
    // The member whose batches we send: the office of our own federation (its DID
    // document is served by the office itself), or the key given with --visibility.
    let (processes, base, key, pid) = match &args.visibility {
        None => {
            let exe =
                std::env::current_exe().map_err(|e| format!("cannot find fedgate itself: {e}"))?;
            let fed = Federation::builder(&exe, &scratch.path, OFFICE, VISIBILITY).start()?;
            let key = KeyPair::load(&fed.office.dir.join("issuer.key.json"))
                .map_err(|e| e.to_string())?;
            let base = fed.visibility.url();
            let pid = fed.visibility.process.pid();
            idle_rss = proc_status_mb(pid, "VmRSS:");
            say(format!(
                "visibility service {} (pid {pid}), member {}",
                fed.visibility.process.addr,
                key.did()
            ));
            (Some(fed), base, key, Some(pid))
        }
        Some(url) => {
            let file = args
                .key
                .as_ref()
                .ok_or("--visibility needs --key (a member's key file)")?;
            let key = KeyPair::load(file).map_err(|e| format!("{}: {e}", file.display()))?;
            (None, with_slash(url), key, args.pid)
        }
    };
    let template = event_template(key.did())?;
    let url = format!("{base}v1/batches");
    // One batch first: the member's DID document is fetched and the path is warm.
    let warm = signed_batch(&key, &template, args.batch)?;
    http.expect("the first batch", &url, &json!({"batch": warm}), None, 200)
        .await?;

    let key = Arc::new(key);
    let template = Arc::new(template);
    let watched = Watched::start("visibility", pid, idle_rss);
    let me = Watched::start("load generator", Some(std::process::id()), None);
    let stop = Arc::new(Stop {
        deadline: Instant::now() + Duration::from_secs_f64(args.run.duration),
        limit: args.run.requests,
        issued: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.senders {
        let (http, url, stop, key, template) = (
            http.clone(),
            url.clone(),
            stop.clone(),
            key.clone(),
            template.clone(),
        );
        let n = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut tally = IngestTally::default();
            while stop.next() {
                // Signing is the sender's work, kept off the runtime like any CPU work.
                let (k, t) = (key.clone(), template.clone());
                let jws = tokio::task::spawn_blocking(move || signed_batch(&k, &t, n))
                    .await
                    .map_err(|e| e.to_string())??;
                let t0 = Instant::now();
                let answer = http.post(&url, &json!({"batch": jws}), None).await;
                tally.latencies.push(t0.elapsed());
                match answer {
                    Answer::Status(200, body) => {
                        tally.ok += 1;
                        let receipts = body["receipts"].as_array();
                        tally.appended += receipts
                            .map(|r| r.iter().filter(|x| x["duplicate"] == false).count())
                            .unwrap_or(0) as u64;
                        if let Some(size) = body["treeSize"].as_u64() {
                            tally.heads.push((Instant::now(), size));
                        }
                    }
                    Answer::Status(s, _) => {
                        *tally.errors.entry(s.to_string()).or_default() += 1;
                    }
                    Answer::Transport(_) => {
                        *tally.errors.entry("transport".into()).or_default() += 1;
                    }
                }
            }
            Ok::<IngestTally, String>(tally)
        }));
    }
    let mut total = IngestTally::default();
    for task in tasks {
        let t = task.await.map_err(|e| e.to_string())??;
        total.latencies.extend(t.latencies);
        total.heads.extend(t.heads);
        total.appended += t.appended;
        total.ok += t.ok;
        for (k, v) in t.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let server = watched.map(|w| w.finish(seconds));
    let load = me.map(|m| m.finish(seconds).cores_busy).unwrap_or(0.0);

    // New tree heads in the order they were seen; the gaps between them, from the start
    // of the window to its end.
    total.heads.sort();
    let mut last_size = 0u64;
    let mut last_time = started;
    let mut checkpoints = 0u64;
    let mut max_gap = Duration::ZERO;
    for (at, size) in &total.heads {
        if *size > last_size {
            checkpoints += 1;
            max_gap = max_gap.max(at.saturating_duration_since(last_time));
            last_time = *at;
            last_size = *size;
        }
    }
    max_gap = max_gap.max(
        started
            .elapsed()
            .saturating_sub(last_time.duration_since(started)),
    );
    let requests = total.latencies.len() as u64;
    let events_per_second = total.appended as f64 / seconds.max(f64::MIN_POSITIVE);

    // Floor per batch: the batch signature over its bytes, one leaf hash per event, and
    // one fsync (an append is durable before it is answered).
    let sample = signed_batch(&key, &template, args.batch)?;
    let verify = ed25519_verify_us(sample.len())?;
    let event: federation::events::AccessEvent =
        serde_json::from_value((*template).clone()).map_err(|e| e.to_string())?;
    let leaf = federation::wire::leaf_bytes(&federation::wire::LogEntry::Access { event });
    let leaf_hash = mean_us(Duration::from_millis(300), || {
        std::hint::black_box(federation::log::leaf_hash(std::hint::black_box(&leaf)));
        true
    })?;
    let fsync = fsync_us(&scratch.path)?;
    let per_batch = verify + args.batch as f64 * leaf_hash + fsync;
    let cores = cores();
    // Appends are serialized by the log's writer: one core's worth, whatever the cores.
    let floor_batches = 1e6 / per_batch;
    let floor_events = floor_batches * args.batch as f64;
    let floor = Floor {
        made_of: format!(
            "per batch of {}: its signature check, a leaf hash per event, one fsync; appends are serialized",
            args.batch
        ),
        per_request_us: per_batch,
        cores,
        per_second: floor_batches,
        ratio: (requests as f64 / seconds.max(f64::MIN_POSITIVE)) / floor_batches,
        parts_us: BTreeMap::from([
            ("ed25519_verify_of_batch".to_string(), verify),
            ("leaf_hash".to_string(), leaf_hash),
            ("fsync".to_string(), fsync),
            ("events_per_second".to_string(), floor_events),
        ]),
    };
    let report = Report {
        scenario: "ingest".into(),
        concurrency: args.senders,
        requests,
        ok: total.ok,
        errors: total.errors,
        seconds,
        requests_per_second: requests as f64 / seconds.max(f64::MIN_POSITIVE),
        latency_ms: Latency::of(total.latencies),
        challenge_latency_ms: None,
        ingest: Some(IngestFigures {
            events_per_batch: args.batch,
            events_appended: total.appended,
            events_per_second,
            checkpoints,
            checkpoints_per_second: checkpoints as f64 / seconds.max(f64::MIN_POSITIVE),
            max_checkpoint_interval_ms: max_gap.as_secs_f64() * 1e3,
            tree_size: last_size,
        }),
        server,
        load_generator_cores_busy: load,
        floor,
    };
    drop(processes);
    drop(scratch);
    Printed::of(&report, args.run.json)
}

/// One small write and fsync in `dir`, µs: the durability every append pays.
fn fsync_us(dir: &Path) -> Result<f64, String> {
    use std::io::Write;
    let path = dir.join("fsync-floor");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0u8; 4096];
    let us = mean_us(Duration::from_millis(300), || {
        file.write_all(&block).is_ok() && file.sync_data().is_ok()
    });
    let _ = std::fs::remove_file(&path);
    us
}

// ---------------------------------------------------------------------------------------
// revocation
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
pub struct RevocationReport {
    pub scenario: String,
    pub samples: usize,
    /// From the office's revocation call to the gateway's first deny with check
    /// `status`, ms.
    pub revocation_to_deny_ms: Latency,
    /// Requests that were still allowed after the revocation was requested.
    pub allowed_after_revocation: u64,
    /// The floor: one request round (challenge + exchange) just before each revocation,
    /// since a deny cannot be seen sooner than the next request; ms.
    pub one_request_ms: Latency,
    /// Floor p50 ÷ measured p50.
    pub ratio: f64,
}

impl RevocationReport {
    fn text(&self) -> String {
        let l = &self.revocation_to_deny_ms;
        format!(
            "fedgate bench revocation: {} revocations\n  revocation → first deny ms  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}\n  allowed after revocation     {}\n  floor (one request) ms       p50 {:.1}; measured p50 is {:.1}× it ({:.3} of the floor's speed)\n",
            self.samples,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            self.allowed_after_revocation,
            self.one_request_ms.p50,
            l.p50 / self.one_request_ms.p50.max(f64::MIN_POSITIVE),
            self.ratio
        )
    }
}

/// One exchange round by `holder`: its status and the problem's `check`, if any.
async fn exchange_once(
    http: &Http,
    base: &str,
    holder: &Holder,
) -> Result<(u16, Option<String>), String> {
    let binding = http
        .challenge(base)
        .await
        .map_err(|_| "no challenge from the gateway".to_string())?;
    let vp = credentials::present(&holder.credentials, &holder.key, &binding, ProofFormat::Jwt)
        .await
        .map_err(|e| format!("presenting: {e}"))?;
    let mut body = holder.body.clone();
    body["presentation"] = vp;
    match http
        .post(&format!("{base}v1/exchange/clinical"), &body, None)
        .await
    {
        Answer::Status(s, v) => Ok((s, v["check"].as_str().map(str::to_string))),
        Answer::Transport(e) => Err(e),
    }
}

async fn revocation(args: RevocationArgs) -> Result<Printed, String> {
    if args.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let say = say_fn(args.json);
    let scratch = Scratch::new(args.dir.clone())?;
    let http = Http::new(4)?;
    let fed = start_federation(
        &scratch.path,
        &contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]),
        &say,
    )?;
    let base = fed.gateway(HOSPITAL_A)?.url();
    let gateway_token = read_token(&fed.gateway(HOSPITAL_A)?.dir.join("admin-token"))?;
    let office = fed.office.url();
    let mrns = fixture_mrns()?;
    let mut to_deny = Vec::with_capacity(args.samples);
    let mut rounds = Vec::with_capacity(args.samples);
    let mut allowed_after = 0u64;
    for i in 0..args.samples {
        let clinician =
            KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
        let answer = http
            .expect(
                "issuing a privilege",
                &format!("{office}v1/privileges"),
                &json!({"subject": privilege_subject(clinician.did(), HOSPITAL_A, REQUESTER_ORG), "format": "jwt"}),
                Some(&fed.office.token),
                201,
            )
            .await?;
        let privilege = answer["verifiableCredential"].clone();
        let credential_id = federation::jose::decode(privilege.as_str().unwrap_or_default())
            .ok()
            .and_then(|d| d.payload["id"].as_str().map(str::to_string))
            .ok_or("the office issued a privilege without an id")?;
        let patient =
            KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
        let mrn = &mrns[i % mrns.len()];
        let consent = self_issued_consent(
            &patient,
            HOSPITAL_A,
            mrn,
            json!({"id": clinician.did(), "kind": "clinician"}),
            "clinical",
            "TREAT",
            ProofFormat::Jwt,
        )
        .await?;
        let link = Some((gateway_token.as_str(), mrn.as_str()));
        register_consent(&http, &base, &patient, &consent, ProofFormat::Jwt, link).await?;
        let holder = Holder {
            key: clinician,
            credentials: vec![privilege, consent],
            body: json!({
                "purpose": "TREAT",
                "patient": {"system": MRN_SYSTEM, "value": mrn},
                "data_classes": ["Patient"],
            }),
        };
        // Allowed before: the proof and the status list are cached, as in steady state.
        let t = Instant::now();
        match exchange_once(&http, &base, &holder).await? {
            (200, _) => rounds.push(t.elapsed()),
            (s, check) => {
                return Err(format!(
                "sample {i}: allowed request refused before revocation (HTTP {s}, check {check:?})"
            ))
            }
        }
        let t0 = Instant::now();
        http.expect(
            "revoking",
            &format!("{office}v1/credentials/{credential_id}/revoke"),
            &json!({}),
            Some(&fed.office.token),
            200,
        )
        .await?;
        let denied = loop {
            if t0.elapsed() > Duration::from_secs(10) {
                break None;
            }
            match exchange_once(&http, &base, &holder).await? {
                (403, Some(check)) if check == "status" => break Some(t0.elapsed()),
                (200, _) => allowed_after += 1,
                (s, check) => {
                    return Err(format!(
                        "sample {i}: unexpected answer after revocation (HTTP {s}, check {check:?})"
                    ))
                }
            }
        };
        to_deny.push(denied.ok_or(format!("sample {i}: still allowed 10 s after revocation"))?);
    }
    let one = Latency::of(rounds);
    let measured = Latency::of(to_deny);
    let report = RevocationReport {
        scenario: "revocation".into(),
        samples: args.samples,
        ratio: one.p50 / measured.p50.max(f64::MIN_POSITIVE),
        revocation_to_deny_ms: measured,
        allowed_after_revocation: allowed_after,
        one_request_ms: one,
    };
    drop(fed);
    drop(scratch);
    Ok(Printed {
        value: serde_json::to_value(&report).map_err(|e| e.to_string())?,
        text: report.text(),
        json: args.json,
    })
}
