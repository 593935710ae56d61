//! Holders and the load loop.

use anyhow::anyhow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{contract, repo_root, Federation, MRN_SYSTEM};
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use serde::Serialize;
use serde_json::{json, Value};

use super::*;

/// One holder: a key, the credentials it presents and the request body it sends.
pub(super) struct Holder {
    pub(super) key: KeyPair,
    pub(super) credentials: Vec<Value>,
    /// The request without its presentation.
    pub(super) body: Value,
    /// More requests the holder makes in turn after the first, each with the credentials
    /// it presents (`bench exchange --patients`: the same privilege with another patient's
    /// consent).
    pub(super) more: Vec<(Vec<Value>, Value)>,
}

impl Holder {
    /// The credentials and request of the holder's `turn`th request: its requests in turn.
    fn turn(&self, turn: usize) -> (&[Value], &Value) {
        match turn % (self.more.len() + 1) {
            0 => (&self.credentials, &self.body),
            k => {
                let (credentials, body) = &self.more[k - 1];
                (credentials, body)
            }
        }
    }
}

/// What one holder measured.
#[derive(Default)]
pub(super) struct Tally {
    latencies: Vec<Duration>,
    /// Latencies of the challenges asked for (`POST /v1/challenges`).
    challenges: Vec<Duration>,
    /// Requests that answered the challenge the answer before them offered.
    carried: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(super) fn error(&mut self, key: String) {
        *self.errors.entry(key).or_default() += 1;
    }
}

/// When the measured window ends: after a duration, or after a number of requests.
pub(super) struct Stop {
    deadline: Instant,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Stop {
    /// Whether another request may start.
    pub(super) fn next(&self) -> bool {
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => Instant::now() < self.deadline,
        }
    }
}

/// What every request of a run asks.
#[derive(Clone, Copy)]
pub(super) struct Ask {
    /// The measured request's path under a gateway's base URL.
    pub(super) path: &'static str,
    pub(super) format: ProofFormat,
    /// Whether a holder answers the challenge its previous answer offered
    /// (`Fedgate-Next-Challenge`) instead of asking `POST /v1/challenges` every time.
    pub(super) carry: bool,
}

/// Bytes the holder signs in the first holder's first request: what the gateway's check of
/// its signature hashes (the presentation's JWS signing input), for the floor.
async fn signed_len(http: &Http, target: &Target, holders: &[Holder]) -> anyhow::Result<usize> {
    let (Some(holder), Some(base)) = (holders.first(), target.bases.first()) else {
        return Err(anyhow!("no holder to measure a presentation of"));
    };
    let binding = http
        .challenge(base)
        .await
        .map_err(|_| anyhow!("asking a challenge to measure a presentation"))?;
    let vp = credentials::present(
        &holder.credentials,
        &holder.key,
        &binding,
        target.ask.format,
    )
    .await
    .map_err(|e| anyhow!("presenting: {e}"))?;
    Ok(match &vp {
        // A JWS: everything before its signature.
        Value::String(jws) => jws.rfind('.').unwrap_or(jws.len()),
        // A Data Integrity presentation signs its canonical form; its JSON is as long.
        other => serde_json::to_vec(other)?.len(),
    })
}

/// One request of one holder: a challenge (the one `next` holds, offered by the answer
/// before, else asked from `base`), the presentation answering it, and the measured POST
/// to `exchange_base` (another replica, when there are several). `next` is left holding
/// the challenge this answer offers, when the run carries them.
pub(super) async fn one_request(
    http: &Http,
    base: &str,
    exchange_base: &str,
    ask: Ask,
    (holder, turn): (&Holder, usize),
    next: &mut Option<PresentationBinding>,
    mut tally: Option<&mut Tally>,
) -> anyhow::Result<()> {
    let binding = match next.take() {
        Some(carried) => {
            if let Some(t) = tally.as_deref_mut() {
                t.carried += 1;
            }
            carried
        }
        None => {
            let t0 = Instant::now();
            match http.challenge(base).await {
                Ok(b) => {
                    if let Some(t) = tally.as_deref_mut() {
                        t.challenges.push(t0.elapsed());
                    }
                    b
                }
                Err(answer) => {
                    let key = match answer {
                        Answer::Status(s, _) => format!("challenge {s}"),
                        Answer::Transport(_) => "challenge transport".to_string(),
                    };
                    if let Some(t) = tally {
                        t.error(key.clone());
                        return Ok(());
                    }
                    return Err(anyhow!(key));
                }
            }
        }
    };
    let (presented, body) = holder.turn(turn);
    let vp = credentials::present(presented, &holder.key, &binding, ask.format)
        .await
        .map_err(|e| anyhow!("presenting: {e}"))?;
    let mut body = body.clone();
    body["presentation"] = vp;
    let t1 = Instant::now();
    let (answer, offered) = http
        .post_offered(&format!("{exchange_base}{}", ask.path), &body, None)
        .await;
    let elapsed = t1.elapsed();
    if ask.carry {
        // Replicas of one gateway share its DID: the domain stays the same.
        *next = offered.map(|challenge| PresentationBinding {
            challenge,
            domain: binding.domain,
        });
    }
    match tally {
        Some(t) => {
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
            Answer::Status(s, v) => Err(anyhow!(
                "HTTP {s}: {}",
                v.to_string().chars().take(300).collect::<String>()
            )),
            Answer::Transport(e) => Err(anyhow!(e)),
        },
    }
}

/// Where the load goes.
pub(super) struct Target {
    /// The gateway's base URLs, with a trailing slash: one per replica. Each request takes
    /// its challenge from one and is answered by the next.
    bases: Vec<String>,
    ask: Ask,
    /// The gateway's process, for memory and CPU.
    pid: Option<u32>,
    idle_rss_mb: Option<f64>,
}

/// Warms every holder up with one request (which must succeed): the gateway has fetched
/// their DID documents and status lists, and minted the tokens of their first patient.
/// A holder's other patients (`--patients`) are first asked for in the measured window,
/// as a gateway meets new patients.
pub(super) async fn warm_up(
    http: &Http,
    target: &Target,
    holders: &[Holder],
) -> anyhow::Result<()> {
    let bases = &target.bases;
    if bases.is_empty() {
        return Err(anyhow!("no gateway to load"));
    }
    let at = |k: usize| bases[k % bases.len()].clone();
    for (i, h) in holders.iter().enumerate() {
        one_request(
            http,
            &at(i),
            &at(i + 1),
            target.ask,
            (h, 0),
            &mut None,
            None,
        )
        .await
        .map_err(|e| anyhow!("holder {i}: the warm-up request failed: {e}"))?;
    }
    Ok(())
}

/// Runs every holder (warmed up by [`warm_up`]) concurrently until `stop`, and returns the
/// merged tally and the window's length.
pub(super) async fn drive(
    http: &Http,
    target: &Target,
    holders: Vec<Holder>,
    run: &RunArgs,
) -> anyhow::Result<(Tally, f64, Option<ServerUsage>, f64)> {
    let (bases, ask) = (Arc::new(target.bases.clone()), target.ask);
    if bases.is_empty() {
        return Err(anyhow!("no gateway to load"));
    }
    let at = |bases: &[String], k: usize| bases[k % bases.len()].clone();
    let watched = Watched::start("gateway", target.pid, target.idle_rss_mb);
    let me = Watched::start("load generator", Some(std::process::id()), None);
    let stop = Arc::new(Stop {
        deadline: Instant::now() + Duration::from_secs_f64(run.duration),
        limit: run.requests,
        issued: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, holder) in holders.into_iter().enumerate() {
        let (http, bases, stop) = (http.clone(), bases.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut next = None;
            let mut k = i;
            // The first request (turn 0) was the warm-up's.
            let mut turn = 1;
            while stop.next() {
                let (from, to) = (at(&bases, k), at(&bases, k + 1));
                k += 1;
                let tally = Some(&mut tally);
                let asked = (&holder, turn);
                turn += 1;
                one_request(&http, &from, &to, ask, asked, &mut next, tally).await?;
            }
            Ok::<Tally, anyhow::Error>(tally)
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await??;
        total.latencies.extend(t.latencies);
        total.challenges.extend(t.challenges);
        total.carried += t.carried;
        total.ok += t.ok;
        for (k, v) in t.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let load = me.map(|m| m.finish(seconds).cores_busy).unwrap_or(0.0);
    Ok((total, seconds, watched.map(|w| w.finish(seconds)), load))
}

pub(super) fn report_of(
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
        server_latency_ms: None,
        challenges: Some(ChallengeFigures {
            asked: tally.challenges.len() as u64,
            carried: tally.carried,
            latency_ms: Latency::of(tally.challenges),
        }),
        ingest: None,
        patients: None,
        decisions: None,
        records: None,
        answers: None,
        storage: None,
        shipping: None,
        server,
        load_generator_cores_busy: 0.0,
        floor,
    }
}

pub(super) fn check_run(run: &RunArgs, concurrency: usize, what: &str) -> anyhow::Result<()> {
    if concurrency == 0 {
        return Err(anyhow!("--{what} must be at least 1"));
    }
    if !(run.duration.is_finite() && run.duration > 0.0) {
        return Err(anyhow!("--duration must be a positive number of seconds"));
    }
    if run.requests == Some(0) {
        return Err(anyhow!("--requests must be at least 1"));
    }
    Ok(())
}

pub(super) fn privilege_subject(clinician: &str, facility: &str, org: &str) -> Value {
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

/// The resource types the bench's consents cover.
pub(super) const CONSENTED_CLASSES: [&str; 9] = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Procedure",
    "MedicationRequest",
    "Immunization",
    "DiagnosticReport",
    "AllergyIntolerance",
];

/// A consent the patient issues to themselves, for their record at `custodian`.
pub(super) async fn self_issued_consent(
    patient: &KeyPair,
    custodian: &str,
    mrn: &str,
    grantee: Value,
    domain: &str,
    purpose: &str,
    format: ProofFormat,
) -> anyhow::Result<Value> {
    let scope = Scope {
        domain,
        purpose,
        classes: &CONSENTED_CLASSES,
    };
    consent_for(patient, custodian, mrn, grantee, &scope, format).await
}

/// What a consent permits.
pub(super) struct Scope<'a> {
    pub(super) domain: &'a str,
    pub(super) purpose: &'a str,
    pub(super) classes: &'a [&'a str],
}

/// A consent the patient issues to themselves for `scope`, for their record at `custodian`.
pub(super) async fn consent_for(
    patient: &KeyPair,
    custodian: &str,
    mrn: &str,
    grantee: Value,
    scope: &Scope<'_>,
    format: ProofFormat,
) -> anyhow::Result<Value> {
    let Scope {
        domain,
        purpose,
        classes,
    } = *scope;
    let subject = json!({
        "id": patient.did(),
        "patientIdentifiers": [{"custodian": custodian, "system": MRN_SYSTEM, "value": mrn}],
        "custodians": [custodian],
        "grantee": grantee,
        "provision": "permit",
        "domains": [domain],
        "purposes": [purpose],
        "dataClasses": classes,
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
        .map_err(|e| anyhow!("issuing a consent: {e}"))
}

pub(super) fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .trim()
        .to_string())
}

/// The custodian's admin token, and the MRN whose patient a consent's DID is linked to.
type Link<'a> = Option<(&'a str, &'a str)>;

/// The custodian links the patient's DID to their record (when `link` is given: its admin
/// token and the MRN), then the patient registers the consent with the custodian (a
/// presentation of their own).
pub(super) async fn register_consent(
    http: &Http,
    base: &str,
    patient: &KeyPair,
    consent: &Value,
    format: ProofFormat,
    link: Link<'_>,
) -> anyhow::Result<()> {
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
        .map_err(|_| anyhow!("registering a consent: no challenge"))?;
    let vp = credentials::present(std::slice::from_ref(consent), patient, &binding, format).await?;
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

pub(super) fn say_fn(json_out: bool) -> impl Fn(String) {
    move |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// exchange
// ---------------------------------------------------------------------------------------

pub(super) async fn exchange(args: ExchangeArgs) -> anyhow::Result<Printed> {
    check_run(&args.run, args.holders, "holders")?;
    let format: ProofFormat = args.format.parse().map_err(|e| anyhow!("{e}"))?;
    if let Some(c) = args
        .data_classes
        .iter()
        .find(|c| !gateway::exchange::is_resource_type(c))
    {
        return Err(anyhow!("--data-classes: {c:?} is not a FHIR resource type"));
    }
    let say = say_fn(args.run.json);
    let root = repo_root()?;
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.holders * 2)?;

    // Where the load goes: our own federation, or the one named on the command line.
    let mut idle_rss = None;
    let mut bases = Vec::new();
    if !(1..=8).contains(&args.replicas) {
        return Err(anyhow!("--replicas must be 1 to 8"));
    }
    if args.replicas > 1 && !args.postgres {
        return Err(anyhow!(
            "--replicas needs --postgres: replicas share their state through PostgreSQL"
        ));
    }
    let pg = if args.postgres {
        let pg = crate::harness::Postgres::start(&scratch.path.join("db"))?;
        say(format!("state in PostgreSQL on 127.0.0.1:{}", pg.port()));
        Some(pg)
    } else {
        None
    };
    // The patients asked for: generated ones (imported by the gateway started here), or
    // hospital A's fixtures.
    let synthetic = if args.patients > 0 {
        let t = Instant::now();
        let made = synthetic_patients(&scratch.path.join("synth"), args.patients)?;
        say(format!(
            "{} synthetic patients written in {:.1} s",
            args.patients,
            t.elapsed().as_secs_f64()
        ));
        made
    } else {
        (Vec::new(), Vec::new())
    };
    let (fed, base, office_url, token, org, pid, gateway_token) = match &args.gateway {
        None => {
            let terms = contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]);
            let mut settings = args
                .decision_cache
                .map(|n| format!("policy_decision_cache_entries = {n}\n"))
                .unwrap_or_default();
            if let Some(mb) = args.records_cache_mb {
                settings.push_str(&format!("records_cache_mb = {mb}\n"));
            }
            if let Some(mb) = args.answers_cache_mb {
                settings.push_str(&format!("answers_cache_mb = {mb}\n"));
            }
            let replicated = pg.as_ref().map(|pg| (pg, args.replicas));
            let fed = start_exchange_federation(
                &scratch.path,
                &terms,
                synthetic.0.clone(),
                &settings,
                args.commit_delay_us,
                replicated,
                &say,
            )?;
            let gateway = fed.gateway(HOSPITAL_A)?;
            bases = fed.replicas(HOSPITAL_A).iter().map(|g| g.url()).collect();
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
                return Err(anyhow!("--gateway needs --office and --office-token-file"));
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
        .map_err(|_| anyhow!("{base}: no challenge from the gateway"))?
        .domain;
    // Synthetic patients are shared out among the holders; with the fixtures each holder
    // asks for one patient's record, as it always has (so that figures compare).
    let (mrns, assigned) = if synthetic.1.is_empty() {
        let mrns = fixture_mrns()?;
        let one_each = (0..args.holders).map(|i| vec![i % mrns.len()]).collect();
        (mrns, one_each)
    } else {
        let shared = shares(args.holders, synthetic.1.len());
        (synthetic.1.clone(), shared)
    };

    let asked_for = assigned
        .iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .len();

    let started = Instant::now();
    let mut holders = Vec::with_capacity(args.holders);
    for share in assigned {
        let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
        let answer = http
            .expect(
                "issuing a privilege",
                &format!("{office_url}v1/privileges"),
                &json!({
                    "subject": privilege_subject(clinician.did(), &custodian, &org),
                    "format": match format { ProofFormat::Jwt => "jwt", ProofFormat::DataIntegrity => "data-integrity", ProofFormat::SdJwt => "sd-jwt" },
                }),
                Some(&token),
                201,
            )
            .await?;
        let privilege = answer["verifiableCredential"].clone();
        // One consent per patient of the holder's share, each from that patient.
        let mut asks = Vec::with_capacity(share.len());
        for mrn in share.iter().filter_map(|&k| mrns.get(k)) {
            let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
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
            asks.push((
                vec![privilege.clone(), consent],
                json!({
                    "purpose": "TREAT",
                    "patient": {"system": MRN_SYSTEM, "value": mrn},
                    "data_classes": args.data_classes,
                }),
            ));
        }
        let mut asks = asks.into_iter();
        let Some((credentials, body)) = asks.next() else {
            return Err(anyhow!("a holder with no patient to ask for"));
        };
        holders.push(Holder {
            key: clinician,
            credentials,
            body,
            more: asks.collect(),
        });
    }
    say(format!(
        "{} holders with a privilege and a registered consent for each of {} patients in {:.1} s; measuring {}",
        args.holders,
        asked_for,
        started.elapsed().as_secs_f64(),
        match args.run.requests {
            Some(n) => format!("{n} requests"),
            None => format!("{} s", args.run.duration),
        }
    ));

    if bases.is_empty() {
        bases.push(base);
    }
    let target_bases = bases.clone();
    let target = Target {
        bases,
        ask: Ask {
            path: "v1/exchange/clinical",
            format,
            carry: !args.run.challenge_per_request,
        },
        pid,
        idle_rss_mb: idle_rss,
    };
    warm_up(&http, &target, &holders).await?;
    let signed_len = signed_len(&http, &target, &holders).await?;
    // Counted from here: set-up and warm-up writes are not the requests'.
    let storage_before = storage_counts(&http, &target_bases).await;
    let shipping_before = shipping_counts(&http, &target_bases).await;
    let (tally, seconds, server, load) = drive(&http, &target, holders, &args.run).await?;
    let rps = tally.latencies.len() as f64 / seconds.max(f64::MIN_POSITIVE);
    // With the proof cache warm, the gateway checks one signature per request: the
    // holder's, over the presentation that answers the fresh challenge.
    let floor = request_floor(&root.join("policies"), "clinical", 1, signed_len, rps).await?;
    let mut report = report_of("exchange", args.holders, tally, seconds, server, floor);
    report.load_generator_cores_busy = load;
    report.patients = Some(asked_for);
    let decisions =
        misses_and_hits(&http, &target_bases, "fedgate_policy_decision_cache_total").await;
    if decisions != (0, 0) {
        let quantile = |q: &'static str| {
            let labels = format!("domain=\"clinical\",quantile=\"{q}\"");
            let first = target_bases.first().cloned().unwrap_or_default();
            let http = &http;
            async move {
                http.series(&first, "fedgate_decision_seconds", &labels)
                    .await
                    .map(|s| s * 1e6)
            }
        };
        let mut threads = (0, 0);
        for b in &target_bases {
            let evaluations = "fedgate_decision_evaluations_total";
            let on = |thread: &str| format!("thread=\"{thread}\"");
            threads.0 += http
                .counter(b, evaluations, &on("request"))
                .await
                .unwrap_or(0);
            threads.1 += http.counter(b, evaluations, &on("pool")).await.unwrap_or(0);
        }
        report.decisions = Some(DecisionFigures {
            evaluated: decisions.0,
            from_cache: decisions.1,
            p50_us: quantile("0.5").await,
            p99_us: quantile("0.99").await,
            on_request_thread: threads.0,
            on_pool: threads.1,
        });
    }
    report.server_latency_ms = server_latency(&http, &target_bases, "POST", EXCHANGE_ROUTE).await;
    let records = misses_and_hits(&http, &target_bases, "fedgate_records_cache_total").await;
    if records != (0, 0) {
        report.records = Some(RecordFigures {
            read: records.0,
            kept: records.1,
        });
    }
    let answers = misses_and_hits(&http, &target_bases, "fedgate_answers_cache_total").await;
    if answers != (0, 0) {
        report.answers = Some(AnswerFigures {
            made: answers.0,
            kept: answers.1,
        });
    }
    report.storage = match (storage_before, storage_counts(&http, &target_bases).await) {
        (Some(before), Some(after)) => Some(storage_figures(before, after, report.requests)),
        _ => None,
    };
    let shipped = shipping_counts(&http, &target_bases).await;
    let (batches, events) = (shipped.0 - shipping_before.0, shipped.1 - shipping_before.1);
    if batches > 0.0 {
        report.shipping = Some(ShippingFigures {
            batches: batches as u64,
            events: events as u64,
            events_per_batch: events / batches,
        });
    }
    drop(fed);
    drop(scratch);
    Printed::of(&report, args.run.json)
}

/// A cache counter's misses and hits (`result="miss"`, `result="hit"`), summed over `bases`.
/// The gateway's route of an exchange, as its metrics name it.
const EXCHANGE_ROUTE: &str = "/v1/exchange/{domain}";

/// The p50 and p99 of the (first) server's own timing of `route`'s successful answers,
/// ms.
async fn server_latency(
    http: &Http,
    bases: &[String],
    method: &str,
    route: &str,
) -> Option<ServerLatency> {
    let first = bases.first()?;
    let quantile = |q: &str| {
        // In the order the server's recorder was given them.
        format!("route=\"{route}\",method=\"{method}\",status=\"2xx\",quantile=\"{q}\"")
    };
    let series = "fedgate_http_request_seconds";
    let p50 = http.series(first, series, &quantile("0.5")).await?;
    let p99 = http.series(first, series, &quantile("0.99")).await?;
    Some(ServerLatency {
        p50: p50 * 1e3,
        p99: p99 * 1e3,
    })
}

async fn misses_and_hits(http: &Http, bases: &[String], series: &str) -> (u64, u64) {
    let mut counts = (0, 0);
    for b in bases {
        counts.0 += http
            .counter(b, series, "result=\"miss\"")
            .await
            .unwrap_or(0);
        counts.1 += http.counter(b, series, "result=\"hit\"").await.unwrap_or(0);
    }
    counts
}

/// The batches the gateways' shippers sent to the log and the events they carried, summed
/// over `bases` (none before the first batch).
async fn shipping_counts(http: &Http, bases: &[String]) -> (f64, f64) {
    let mut counts = (0.0, 0.0);
    for b in bases {
        let names = [
            "fedgate_shipper_batch_events_count",
            "fedgate_shipper_batch_events_sum",
        ];
        if let Some([batches, events]) = http.series_sums(b, names).await {
            counts.0 += batches;
            counts.1 += events;
        }
    }
    counts
}

/// The gateways' durable commits and the writes they carried, summed over `bases`.
async fn storage_counts(http: &Http, bases: &[String]) -> Option<(f64, f64)> {
    let (mut commits, mut writes) = (0.0, 0.0);
    for b in bases {
        // One page per gateway: a commit between two fetches would count in one figure
        // and not the other.
        let [c, w] = http
            .series_sums(
                b,
                [
                    "fedgate_db_commit_seconds_count",
                    "fedgate_db_commit_writes_sum",
                ],
            )
            .await?;
        commits += c;
        writes += w;
    }
    Some((commits, writes))
}

/// The commits and writes of the measured requests, from the counts before and after.
fn storage_figures(before: (f64, f64), after: (f64, f64), requests: u64) -> StorageFigures {
    let (commits, writes) = ((after.0 - before.0).max(0.0), (after.1 - before.1).max(0.0));
    let per = |n: f64| n / requests.max(1) as f64;
    StorageFigures {
        commits: commits as u64,
        writes: writes as u64,
        writes_per_request: per(writes),
        commits_per_request: per(commits),
    }
}

// ---------------------------------------------------------------------------------------
// research
// ---------------------------------------------------------------------------------------

pub(super) async fn research(args: ResearchArgs) -> anyhow::Result<Printed> {
    check_run(&args.run, args.holders, "holders")?;
    let say = say_fn(args.run.json);
    let root = repo_root()?;
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.holders * 2)?;
    // Each network needs a research contract with the custodian, so the keys exist
    // before the gateway's configuration is written.
    let networks: Vec<KeyPair> = (0..args.holders)
        .map(|_| KeyPair::generate_did_key(KeyAlgorithm::Ed25519))
        .collect::<Result<_, _>>()?;
    let contracts: String = networks
        .iter()
        .map(|n| contract(HOSPITAL_A, n.did(), &["research"], &["HRESCH"]))
        .collect();
    let fed = start_federation(&scratch.path, &contracts, Vec::new(), &say)?;
    let gateway = fed.gateway(HOSPITAL_A)?;
    let idle_rss = proc_status_mb(gateway.process.pid(), "VmRSS:");
    let base = gateway.url();
    let gateway_token = read_token(&gateway.dir.join("admin-token"))?;
    let started = Instant::now();
    // Every fixture patient consents to the study.
    for mrn in fixture_mrns()? {
        let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
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
            more: Vec::new(),
            body: json!({
                "purpose": "HRESCH",
                // The study's privacy budget is shared by every holder: one micro-epsilon
                // per query keeps a long run inside the custodian's default budget.
                "query": {"conditions": [], "epsilon": 0.000001},
            }),
        });
    }
    say(format!(
        "{} research networks with a study credential in {:.1} s; measuring",
        args.holders,
        started.elapsed().as_secs_f64()
    ));
    let target = Target {
        bases: vec![base],
        ask: Ask {
            path: "v1/research/queries",
            format: ProofFormat::Jwt,
            carry: !args.run.challenge_per_request,
        },
        pid: Some(gateway.process.pid()),
        idle_rss_mb: idle_rss,
    };
    warm_up(&http, &target, &holders).await?;
    let signed_len = signed_len(&http, &target, &holders).await?;
    let (tally, seconds, server, load) = drive(&http, &target, holders, &args.run).await?;
    let rps = tally.latencies.len() as f64 / seconds.max(f64::MIN_POSITIVE);
    let floor = request_floor(&root.join("policies"), "research", 1, signed_len, rps).await?;
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
pub(super) fn signed_batch(key: &KeyPair, template: &Value, n: usize) -> anyhow::Result<String> {
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
    federation::jose::sign(&payload, key, federation::wire::BATCH_TYP).map_err(anyhow::Error::from)
}

/// A typical allowed clinical access event of `custodian` (no PHI, as always).
pub(super) fn event_template(custodian: &str) -> anyhow::Result<Value> {
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
        privacy: None,
    };
    serde_json::to_value(event).map_err(anyhow::Error::from)
}

/// What the senders saw: time and tree size of every answer.
#[derive(Default)]
pub(super) struct IngestTally {
    latencies: Vec<Duration>,
    heads: Vec<(Instant, u64)>,
    appended: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

pub(super) async fn ingest(args: IngestArgs) -> anyhow::Result<Printed> {
    check_run(&args.run, args.senders, "senders")?;
    let max = federation::wire::MAX_BATCH_EVENTS;
    if args.batch == 0 || args.batch > max {
        return Err(anyhow!("--batch must be 1 to {max} events"));
    }
    let say = say_fn(args.run.json);
    let scratch = Scratch::new(args.run.dir.clone())?;
    let http = Http::new(args.senders * 2)?;

    let mut idle_rss = None;
    let mut _pg_server = None;
    // The member whose batches we send: the office of our own federation (its DID
    // document is served by the office itself), or the key given with --visibility.
    let (processes, base, key, pid) = match &args.visibility {
        None => {
            let exe =
                std::env::current_exe().map_err(|e| anyhow!("cannot find fedgate itself: {e}"))?;
            let pg = if args.postgres {
                Some(crate::harness::Postgres::start(&scratch.path.join("db"))?)
            } else {
                None
            };
            let mut builder = Federation::builder(&exe, &scratch.path, OFFICE, VISIBILITY);
            if let Some(pg) = &pg {
                builder = builder.postgres(pg);
                say(format!("the log in PostgreSQL on 127.0.0.1:{}", pg.port()));
            }
            let fed = builder.start()?;
            // Kept until the bench ends, like the federation.
            _pg_server = pg;
            let key = KeyPair::load(&fed.office.dir.join("issuer.key.json"))?;
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
                .ok_or_else(|| anyhow!("--visibility needs --key (a member's key file)"))?;
            let key = KeyPair::load(file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
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
                let jws = tokio::task::spawn_blocking(move || signed_batch(&k, &t, n)).await??;
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
            Ok::<IngestTally, anyhow::Error>(tally)
        }));
    }
    let mut total = IngestTally::default();
    for task in tasks {
        let t = task.await??;
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
    let event: federation::events::AccessEvent = serde_json::from_value((*template).clone())?;
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
        server_latency_ms: None,
        challenges: None,
        patients: None,
        ingest: Some(IngestFigures {
            events_per_batch: args.batch,
            events_appended: total.appended,
            events_per_second,
            checkpoints,
            checkpoints_per_second: checkpoints as f64 / seconds.max(f64::MIN_POSITIVE),
            max_checkpoint_interval_ms: max_gap.as_secs_f64() * 1e3,
            tree_size: last_size,
        }),
        decisions: None,
        records: None,
        answers: None,
        storage: None,
        shipping: None,
        server,
        load_generator_cores_busy: load,
        floor,
    };
    drop(processes);
    drop(scratch);
    Printed::of(&report, args.run.json)
}

/// One small write and fsync in `dir`, µs: the durability every append pays.
pub(super) fn fsync_us(dir: &Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-floor");
    let mut file = std::fs::File::create(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
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
struct RevocationReport {
    scenario: String,
    samples: usize,
    /// From the office's revocation call to the gateway's first deny with check
    /// `status`, ms.
    revocation_to_deny_ms: Latency,
    /// Requests that were still allowed after the revocation was requested.
    allowed_after_revocation: u64,
    /// The floor: one request round (challenge + exchange) just before each revocation,
    /// since a deny cannot be seen sooner than the next request; ms.
    one_request_ms: Latency,
    /// Floor p50 ÷ measured p50.
    ratio: f64,
}

impl RevocationReport {
    pub(super) fn text(&self) -> String {
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
pub(super) async fn exchange_once(
    http: &Http,
    base: &str,
    holder: &Holder,
) -> anyhow::Result<(u16, Option<String>)> {
    let binding = http
        .challenge(base)
        .await
        .map_err(|_| anyhow!("no challenge from the gateway"))?;
    let vp = credentials::present(&holder.credentials, &holder.key, &binding, ProofFormat::Jwt)
        .await
        .map_err(|e| anyhow!("presenting: {e}"))?;
    let mut body = holder.body.clone();
    body["presentation"] = vp;
    match http
        .post(&format!("{base}v1/exchange/clinical"), &body, None)
        .await
    {
        Answer::Status(s, v) => Ok((s, v["check"].as_str().map(str::to_string))),
        Answer::Transport(e) => Err(anyhow!(e)),
    }
}

pub(super) async fn revocation(args: RevocationArgs) -> anyhow::Result<Printed> {
    if args.samples == 0 {
        return Err(anyhow!("--samples must be at least 1"));
    }
    let say = say_fn(args.json);
    let scratch = Scratch::new(args.dir.clone())?;
    let http = Http::new(4)?;
    let fed = start_federation(
        &scratch.path,
        &contract(HOSPITAL_A, REQUESTER_ORG, &["clinical"], &["TREAT"]),
        Vec::new(),
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
        let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
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
            .ok_or_else(|| anyhow!("the office issued a privilege without an id"))?;
        let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
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
            more: Vec::new(),
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
                return Err(anyhow!(
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
                    return Err(anyhow!(
                        "sample {i}: unexpected answer after revocation (HTTP {s}, check {check:?})"
                    ))
                }
            }
        };
        to_deny.push(
            denied.ok_or_else(|| anyhow!("sample {i}: still allowed 10 s after revocation"))?,
        );
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
        value: serde_json::to_value(&report)?,
        text: report.text(),
        json: args.json,
    })
}
