//! The gateway's shared state: configuration, keys, verifier, policy, record source,
//! consents, vault, outbox and metrics, built once at start and shared by every handler;
//! and the steps every request kind takes with it (verify, decide, tokenize, record).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use federation::did::DidResolver;
use federation::events::Outcome;
use federation::keys::KeyPair;
use federation::registry::{ManifestSource, Registry, SignedManifest};
use federation::status::StatusCache;
use federation::trust::{StaticTrust, TrustSource};
use federation::verify::{VerifiedPresentation, Verifier, VerifyError};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::Value;
use service::nonce::{NonceError, Nonces, Unspent};

use crate::config::{GatewayConfig, RecordsConfig};
use crate::consents::ConsentStore;
use crate::error::{GatewayError, StartError};
use crate::ledger::Ledger;
use crate::outbox::{Outbox, OutboxError};
use crate::policy::{
    ContractInput, CustodianInput, Decision, Lookup, Obligations, PolicyHolder, PolicyInput,
    RequestInput,
};
use crate::records::RecordSource;
use crate::vault::Vault;

/// The header of every answer to a request that carries a presentation: a fresh challenge
/// for the holder's next one, with the same domain and lifetime as one from
/// `POST /v1/challenges` (in the way DPoP servers offer their next nonce, RFC 9449 §8).
/// A holder making several requests then asks for a challenge once: every round trip for
/// one after the first is spared, to it and to this gateway. Issuing one writes nothing.
pub const NEXT_CHALLENGE: axum::http::HeaderName =
    axum::http::HeaderName::from_static("fedgate-next-challenge");

/// Largest page (of JSON, roughly) tokenized on the request's own thread. A patient with
/// a few conditions is a few kilobytes; `benches/tokenize.rs` times the small cases.
const INLINE_TOKENIZE_BYTES: usize = 32 * 1024;

pub struct GatewayState {
    pub config: GatewayConfig,
    pub key: KeyPair,
    pub verifier: Verifier,
    pub nonces: Nonces,
    pub outbox: Outbox,
    pub consents: ConsentStore,
    pub policy: Arc<PolicyHolder>,
    pub records: RecordSource,
    /// Shared with tokenization on the blocking pool.
    pub vault: Arc<Vault>,
    /// What each study has spent of its privacy budget here (research).
    pub research_budget: crate::research::budget::BudgetStore,
    pub secret: [u8; 32],
    /// The gateway's database (`data_dir/gateway.redb`).
    pub db: crate::db::Db,
    /// The admin endpoints' token; without one they refuse every call.
    pub(crate) admin: Option<service::admin::AdminToken>,
    trust_mode: TrustMode,
    pub(crate) metrics: PrometheusHandle,
    /// Where requesters reach this gateway (for the links of paged answers).
    pub public_url: reqwest::Url,
    /// Cursors of paged answers (in the database: any replica honours them).
    pub pages: crate::paging::Pages,
    /// OpenID4VP transactions (in the database: any replica honours them).
    pub oid4vp: crate::oid4vp::store::Transactions,
    /// Tokenized pages kept for the next request that would make the same one.
    pub answers: crate::answers::AnswerCache,
}

/// Why an allowed decision's data did not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    /// The record store or the organization's FHIR server failed.
    RecordSource,
    /// Tokenization or serialization failed.
    Preparation,
}

impl NotServed {
    fn kind(self) -> &'static str {
        match self {
            NotServed::RecordSource => "record-source",
            NotServed::Preparation => "preparation",
        }
    }

    /// The event's reason (in the federation's reason vocabulary).
    pub fn reason(self) -> &'static str {
        match self {
            NotServed::RecordSource => "not served: the record source failed",
            NotServed::Preparation => "not served: the answer could not be prepared",
        }
    }
}

/// Where trust, the allow-map and contracts come from.
enum TrustMode {
    /// From this gateway's configuration (a single organization trying fedgate out).
    Static { contracts: Vec<Value> },
    /// From the federation's signed manifest, followed live.
    Registry(Arc<Registry>),
}

impl GatewayState {
    /// Builds the state: keys, storage, policies, record source, verifier.
    pub async fn new(
        config: GatewayConfig,
        public_url: reqwest::Url,
        metrics: PrometheusHandle,
    ) -> Result<Arc<Self>, StartError> {
        let admin = match &config.admin_token_file {
            Some(path) => Some(
                service::admin::AdminToken::load(path)
                    .map_err(|e| StartError::AdminToken(e.to_string()))?,
            ),
            None => None,
        };
        let key = KeyPair::load_or_create(&config.key_file, || {
            KeyPair::generate_did_web(&config.did, Default::default())
                .map(|k| k.with_purpose("gateway organization key"))
        })
        .map_err(StartError::Key)?;
        if key.did() != config.did {
            return Err(StartError::WrongKey {
                found: key.did().to_string(),
                configured: config.did.clone(),
            });
        }
        let secret = Vault::key_from_file(&config.secret_file).map_err(StartError::Secret)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let db = crate::db::open_configured(&config.storage, &config.data_dir)?;
        // Replicas share the secret, so a challenge issued by one is answered at another.
        // One part without a NUL: no pseudonym (several parts joined by NULs) can equal it.
        let nonces = Nonces::new(
            db.tree("nonces"),
            Duration::from_secs(config.challenge_ttl_secs),
            crate::vault::hmac_sha256(&secret, &[b"fedgate/challenges/v1"]),
        );
        let outbox = Outbox::open(&db, config.outbox_max_events);
        let consents = ConsentStore::open(&db)?;
        let vault = Arc::new(Vault::open(db.tree("vault"), secret));
        vault.check_secret().await.map_err(|e| match e {
            crate::vault::VaultError::OtherSecret => {
                StartError::Secret(crate::vault::VaultError::KeyFile {
                    path: config.secret_file.display().to_string(),
                    reason: e.to_string(),
                })
            }
            e => StartError::Secret(e),
        })?;
        let research_budget = crate::research::budget::BudgetStore::open(&db);
        let records = match &config.records {
            RecordsConfig::Embedded => {
                RecordSource::embedded_configured(&config.storage, &config.data_dir)?
                    .with_record_cache(config.records_cache_bytes())
            }
            RecordsConfig::Fhir {
                url,
                page_size,
                everything,
                ..
            } => {
                let mut server = crate::records::FhirServer::connect(
                    url,
                    config.dev_mode,
                    &config.records.fhir_auth(),
                )?
                .with_page_size(*page_size);
                if !everything {
                    server = server.without_everything();
                }
                RecordSource::Fhir(server)
            }
        };
        if let RecordSource::Fhir(server) = &records {
            // Read and log what the server supports now, not at the first exchange; a
            // server that is down is asked again then.
            let server = server.clone();
            tokio::spawn(async move {
                if let Err(e) = server.capabilities().await {
                    tracing::warn!(error = %e, "FHIR server capabilities not read");
                }
            });
        }
        let policy = Arc::new(PolicyHolder::with_options(
            &config.policies,
            crate::policy::PolicyOptions {
                time_limit: Duration::from_millis(config.policy_time_limit_ms),
                cache_entries: config.policy_decision_cache_entries,
                engine: config.policy_engine,
                ..crate::policy::PolicyOptions::default()
            },
        ));

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let mut allow = HashMap::new();
        let web = config.did_web.iter().map(|e| ("did_web", e));
        let keys = config.status_origins.iter().map(|e| ("status_origins", e));
        for (setting, (did, url)) in web.chain(keys) {
            let url = reqwest::Url::parse(url).map_err(|e| StartError::Url {
                setting: format!("{setting} {did}"),
                reason: e.to_string(),
            })?;
            allow.insert(did.clone(), url);
        }
        allow.insert(config.did.clone(), public_url.clone());
        resolver.set_web_allow_map(allow);
        resolver.pin(key.did_document().map_err(StartError::DidDocument)?);
        let (trust, trust_mode): (Arc<dyn TrustSource>, TrustMode) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(service::db::journaled_registry(
                    &db,
                    rc.governance.clone(),
                    config.dev_mode,
                )?);
                let source = if rc.is_url() {
                    ManifestSource::Url(reqwest::Url::parse(&rc.signed).map_err(|e| {
                        StartError::Url {
                            setting: "registry.signed".into(),
                            reason: e.to_string(),
                        }
                    })?)
                } else {
                    let path = std::path::PathBuf::from(&rc.signed);
                    // Start with the manifest in force when it is on disk; a bad one is
                    // logged and the gateway trusts nobody until a good one arrives.
                    match SignedManifest::load(&path).and_then(|m| registry.install(&m)) {
                        Ok(outcome) => tracing::info!(?outcome, "federation manifest installed"),
                        Err(e) => tracing::warn!(error = %e, "federation manifest refused"),
                    }
                    ManifestSource::File(path)
                };
                registry.apply_to(&resolver);
                registry.spawn_watch(
                    source,
                    Duration::from_secs(rc.poll_secs),
                    Some(resolver.clone()),
                );
                (registry.clone(), TrustMode::Registry(registry))
            }
            None => {
                let trust = StaticTrust::new();
                for (kind, issuers) in &config.trust {
                    for issuer in issuers {
                        trust.add(*kind, issuer);
                    }
                }
                for (type_name, issuers) in &config.trust_types {
                    for issuer in issuers {
                        trust.add_type(type_name, issuer);
                    }
                }
                (
                    Arc::new(trust),
                    TrustMode::Static {
                        contracts: config.contracts.clone(),
                    },
                )
            }
        };
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(config.status_cache_ttl_secs),
            config.dev_mode,
        ));
        for url in &config.status_push {
            if let Ok(url) = reqwest::Url::parse(url) {
                status.spawn_push_listener(url);
            }
        }
        let bundle = config.bundle.load("gateway config")?;
        let verifier = Verifier::new(resolver, trust, status).with_bundle(bundle);
        let pages = crate::paging::Pages::open(&db);
        let oid4vp = crate::oid4vp::store::Transactions::open(&db);
        let answers = crate::answers::AnswerCache::new(config.answers_cache_bytes());
        Ok(Arc::new(GatewayState {
            trust_mode,
            config,
            key,
            verifier,
            nonces,
            outbox,
            consents,
            policy,
            records,
            vault,
            research_budget,
            secret,
            db,
            admin,
            metrics,
            public_url,
            pages,
            oid4vp,
            answers,
        }))
    }

    /// The signed federation manifest in force, when the gateway follows one.
    pub fn registry(&self) -> Option<Arc<Registry>> {
        match &self.trust_mode {
            TrustMode::Registry(r) => Some(r.clone()),
            TrustMode::Static { .. } => None,
        }
    }

    /// Registry contracts from custodian to requester that have not expired.
    pub fn contracts_between(&self, custodian: &str, requester: &str) -> Vec<ContractInput> {
        let now = chrono::Utc::now();
        let contracts = match &self.trust_mode {
            TrustMode::Registry(r) => {
                return r
                    .contracts_between(custodian, requester)
                    .iter()
                    .map(ContractInput::from)
                    .collect()
            }
            TrustMode::Static { contracts } => contracts,
        };
        contracts
            .iter()
            .filter(|c| c["custodian"] == custodian && c["requester"] == requester)
            .filter(|c| {
                c["expires"]
                    .as_str()
                    .and_then(federation::time::parse)
                    .is_none_or(|e| e > now)
            })
            // A contract only grants: one that does not read as a contract grants nothing.
            .filter_map(|c| match ContractInput::deserialize(c) {
                Ok(contract) => Some(contract),
                Err(_) => {
                    tracing::warn!(
                        "a [[contracts]] entry of the configuration is not a contract; ignored"
                    );
                    None
                }
            })
            .collect()
    }

    /// Admits a call that carries the gateway's admin token (patient links); there is no
    /// default token, so without `admin_token_file` every such call is refused.
    pub(crate) fn require_admin(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), GatewayError> {
        match &self.admin {
            Some(token) if token.admits(headers) => Ok(()),
            _ => Err(GatewayError::Unauthorized),
        }
    }

    /// The pseudonym of a patient in access events: keyed by this custodian's secret, so
    /// only the custodian can map it back (by recomputing it over its own patients).
    pub fn patient_ref(&self, patient_id: &str) -> String {
        crate::tokenize::keyed_pseudonym(&self.secret, "patient-ref", patient_id)
    }
}

// ---------------------------------------------------------------------------------------
// The steps every request kind takes: verify, decide, tokenize, record
// ---------------------------------------------------------------------------------------

impl GatewayState {
    /// Records a refusal that happened before policy, then returns the 403 to send.
    ///
    /// The event names the failed check in fixed text only: `reason`'s detail can quote
    /// the presentation (a schema error quotes the field it refuses), which its sender may
    /// read in the answer but the federation's log must never keep.
    pub async fn refuse(&self, ledger: &Ledger, check: &str, reason: String) -> GatewayError {
        let mut event = ledger.event(&self.config.did, Outcome::Deny);
        event.failed_check = Some(check.to_string());
        event.reasons = vec![federation::events::verification_reason(check)];
        metrics::counter!("fedgate_verification_failures_total", "check" => check.to_string())
            .increment(1);
        metrics::counter!("fedgate_decisions_total", "domain" => ledger.domain.clone(), "outcome" => "deny")
            .increment(1);
        match self
            .outbox
            .append_spending(event, ledger.challenge.as_ref())
            .await
        {
            Ok(()) => {}
            Err(OutboxError::Replayed) => return Box::pin(self.refuse_replay(ledger)).await,
            Err(e) => return GatewayError::Unavailable(e.to_string()),
        }
        GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: vec![reason],
            check: Some(check.to_string()),
            policy: None,
        }
    }

    /// Records the refusal of a request whose challenge another request used first
    /// (found when its event's write tried to spend it), and returns the 403 to send.
    async fn refuse_replay(&self, ledger: &Ledger) -> GatewayError {
        let ledger = Ledger {
            challenge: None,
            ..ledger.clone()
        };
        self.refuse(&ledger, "challenge", NonceError::Unknown.to_string())
            .await
    }

    /// Records a failed verification under the check that failed.
    pub(crate) async fn refuse_verification(
        &self,
        ledger: &Ledger,
        e: &VerifyError,
    ) -> GatewayError {
        let reason = match e.credential {
            Some(i) => format!("credential #{i}: {}", e.check),
            None => format!("presentation: {}", e.check),
        };
        let reason = format!("{reason} check failed: {}", e.detail);
        self.refuse(ledger, e.check.as_str(), reason).await
    }

    /// Verifies a presentation bound to one of our challenges and consumes the challenge
    /// (one durable write, before this returns).
    pub async fn verify_presentation(
        &self,
        ledger: &mut Ledger,
        presentation: &Value,
    ) -> Result<VerifiedPresentation, GatewayError> {
        let vp = self.verify_checking_challenge(ledger, presentation).await?;
        if let Some(challenge) = ledger.challenge.take() {
            if let Err(e) = challenge.spend_alone().await {
                return Err(self.refuse(ledger, "challenge", e.to_string()).await);
            }
        }
        Ok(vp)
    }

    /// Verifies a presentation bound to one of our challenges, and leaves the challenge in
    /// `ledger`, checked but unused: the write of the request's event spends it
    /// ([`GatewayState::record`]), one durable write per request instead of two. The
    /// caller must end the request by recording an event, or spend the challenge itself
    /// ([`GatewayState::spend_leftover`]) when it ends otherwise.
    ///
    /// Of two requests racing with one presentation, both may get past this check (it is
    /// a read); only one event's write can spend the challenge, and the other request is
    /// refused then, before anything is sent. Nothing is served before the spend is on
    /// disk, so a crash before it leaves the challenge unused and nothing disclosed.
    pub async fn verify_presentation_spent_with_event(
        &self,
        ledger: &mut Ledger,
        presentation: &Value,
    ) -> Result<VerifiedPresentation, GatewayError> {
        self.verify_checking_challenge(ledger, presentation).await
    }

    async fn verify_checking_challenge(
        &self,
        ledger: &mut Ledger,
        presentation: &Value,
    ) -> Result<VerifiedPresentation, GatewayError> {
        // Verified bound to this gateway and to the challenge the presentation answers,
        // read in the same pass; whether this gateway issued that challenge, and it is
        // unspent, is checked after the proof (a forged presentation is refused as
        // `proof`, never reported as a replay).
        let (vp, challenge) = match self
            .verifier
            .verify_presentation_answering(presentation, &self.config.did)
            .await
        {
            Ok(verified) => verified,
            Err(e) => return Err(self.refuse_verification(ledger, &e).await),
        };
        ledger.note_presentation(&vp);
        // Checked only after the proof verified: a forged presentation cannot burn
        // somebody else's challenge.
        match self.nonces.check(&challenge) {
            Ok(unspent) => ledger.challenge = Some(unspent),
            Err(e) => return Err(self.refuse(ledger, "challenge", e.to_string()).await),
        }
        Ok(vp)
    }

    /// `answer`, with a fresh challenge for the holder's next presentation
    /// ([`NEXT_CHALLENGE`]): on refusals too, so that a holder whose challenge had expired or
    /// was used tries again without another round trip.
    pub fn offering_next_challenge(
        &self,
        answer: impl axum::response::IntoResponse,
    ) -> axum::response::Response {
        let mut response = answer.into_response();
        let (challenge, _) = self.nonces.issue();
        // A challenge is base64url, always a valid header value.
        if let Ok(value) = axum::http::HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(NEXT_CHALLENGE, value);
        }
        response
    }

    /// Spends a challenge left unspent by a request that ended without recording an event
    /// (an error no event records): the presentation must not be good for another try.
    pub async fn spend_leftover(&self, challenge: &Unspent) {
        let spent = match challenge.is_spent() {
            Ok(true) => Ok(()),
            Ok(false) => challenge.spend_alone().await,
            Err(e) => Err(e),
        };
        match spent {
            // Already used: by this request's event, or by the request that won a race.
            Ok(()) | Err(NonceError::Unknown) => {}
            Err(e) => tracing::warn!(error = %e, "a challenge could not be recorded as used"),
        }
    }

    /// Decides: from the decision cache on this thread (a hit costs a few microseconds),
    /// otherwise evaluated here too when the VM decides (tens of microseconds, less than
    /// the hand-off to another thread and back), stopped after a short limit and then
    /// evaluated on the blocking pool (see `policy::vm`): as is anything the interpreter
    /// decides.
    pub async fn decide(&self, domain: &str, input: PolicyInput) -> Decision {
        let started = Instant::now();
        let aborted = || Decision::deny("policy evaluation aborted");
        let decision = match self.policy.look_up(domain, &input) {
            Lookup::Decided(decision) => decision,
            Lookup::Evaluate(pending) => {
                // A panic ends as on the pool: a deny, not a dropped connection.
                let here = std::panic::AssertUnwindSafe(|| pending.evaluate_here(&input));
                match std::panic::catch_unwind(here) {
                    Ok(Some(decision)) => {
                        metrics::counter!("fedgate_decision_evaluations_total", "thread" => "request")
                            .increment(1);
                        decision
                    }
                    Ok(None) => {
                        metrics::counter!("fedgate_decision_evaluations_total", "thread" => "pool")
                            .increment(1);
                        tokio::task::spawn_blocking(move || pending.evaluate(&input))
                            .await
                            .unwrap_or_else(|_| aborted())
                    }
                    Err(_) => aborted(),
                }
            }
        };
        metrics::histogram!("fedgate_decision_seconds", "domain" => domain.to_string())
            .record(started.elapsed().as_secs_f64());
        decision
    }

    /// Tokenizes what leaves, then runs `then` on the output on the same thread, while the
    /// resources are still in that core's cache (the exchange writes them into the response
    /// there, and holds only the bytes while the event is recorded). A small page whose
    /// tokens are read from a local file is tokenized on this thread, like the copy of a
    /// small kept record: less work than the two hand-offs to the blocking pool and back;
    /// if it minted tokens, their write (on disk before anything leaves) and `then` go to
    /// the blocking pool. Anything larger goes there whole: it hashes, encrypts and scans
    /// text for longer than an async worker may run between two waits.
    pub async fn tokenize<T: Send + 'static>(
        &self,
        resources: Vec<Value>,
        obligations: Obligations,
        recipient_org: String,
        domain: &str,
        now: DateTime<Utc>,
        then: impl FnOnce(crate::tokenize::Tokenized) -> T + Send + 'static,
    ) -> Result<T, GatewayError> {
        let failed = |e: crate::tokenize::TokenizeError| {
            GatewayError::Internal(format!("tokenization failed: {e}"))
        };
        let aborted = |e: tokio::task::JoinError| {
            GatewayError::Internal(format!("tokenization aborted: {e}"))
        };
        let panicked = || GatewayError::Internal("tokenization aborted: it panicked".into());
        let key = self.secret;
        if self.vault.reads_locally()
            && crate::tokenize::at_most_bytes(&resources, INLINE_TOKENIZE_BYTES)
        {
            let ctx = crate::tokenize::TokenizeContext {
                recipient_org: &recipient_org,
                domain,
                pseudonym_key: &key,
                vault: &self.vault,
                now,
            };
            // A panic here ends like one on the blocking pool: an error the exchange records
            // as not served, not a dropped connection without an event.
            let inline = std::panic::AssertUnwindSafe(|| {
                crate::tokenize::walk(resources, &obligations, &ctx)
            });
            let walked = std::panic::catch_unwind(inline)
                .map_err(|_| panicked())?
                .map_err(failed)?;
            if !walked.writes() {
                let vault = &self.vault;
                let finish = std::panic::AssertUnwindSafe(|| walked.commit(vault).map(then));
                return std::panic::catch_unwind(finish)
                    .map_err(|_| panicked())?
                    .map_err(failed);
            }
            let vault = self.vault.clone();
            return tokio::task::spawn_blocking(move || walked.commit(&vault).map(then))
                .await
                .map_err(aborted)?
                .map_err(failed);
        }
        let vault = self.vault.clone();
        let domain = domain.to_string();
        tokio::task::spawn_blocking(move || {
            let ctx = crate::tokenize::TokenizeContext {
                recipient_org: &recipient_org,
                domain: &domain,
                pseudonym_key: &key,
                vault: &vault,
                now,
            };
            crate::tokenize::apply(resources, &obligations, &ctx).map(then)
        })
        .await
        .map_err(aborted)?
        .map_err(failed)
    }

    /// Records the decision's event (on disk) — before any response is sent.
    pub async fn record(
        &self,
        ledger: &Ledger,
        decision: &Decision,
        record_count: u64,
    ) -> Result<(), GatewayError> {
        let outcome = if decision.allow {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let mut event = ledger.event(&self.config.did, outcome);
        event.reasons = decision.reasons.clone();
        event.policy_digest = decision.policy_digest.clone();
        event.break_glass = decision.break_glass;
        event.review_required = decision.review_required;
        event.expires_at = decision
            .expires_at
            .as_deref()
            .and_then(federation::time::parse);
        event.record_count = record_count;
        if decision.allow {
            event.data_classes = decision.data_classes.clone();
        }
        match self
            .outbox
            .append_spending(event, ledger.challenge.as_ref())
            .await
        {
            Ok(()) => {
                metrics::counter!(
                    "fedgate_decisions_total",
                    "domain" => ledger.domain.clone(),
                    "outcome" => if decision.allow { "allow" } else { "deny" }
                )
                .increment(1);
                Ok(())
            }
            // Nothing of this request is recorded or sent; its refusal is.
            Err(OutboxError::Replayed) => Err(self.refuse_replay(ledger).await),
            Err(e) => Err(GatewayError::Unavailable(e.to_string())),
        }
    }

    /// Records an allowed decision whose data could not be served (the record source
    /// failed, or the answer could not be prepared), and returns the error to send: every
    /// request that reaches a decision leaves exactly one event, whatever happens after.
    pub async fn record_not_served(
        &self,
        ledger: &Ledger,
        decision: &Decision,
        why: NotServed,
        error: GatewayError,
    ) -> GatewayError {
        metrics::counter!("fedgate_not_served_total", "kind" => why.kind()).increment(1);
        tracing::warn!(decision_id = %ledger.decision_id, kind = why.kind(), error = %error, "allowed access not served");
        let mut decision = decision.clone();
        if !decision.reasons.iter().any(|r| r == why.reason()) {
            decision.reasons.push(why.reason().to_string());
        }
        match self.record(ledger, &decision, 0).await {
            Ok(()) => error,
            Err(e) => e,
        }
    }

    /// The policy input of the request in `ledger` with its `request`, `contracts` and
    /// `custodian` parts; the credentials and the token are the caller's to add.
    pub fn policy_input(&self, ledger: &Ledger, patient_found: bool) -> PolicyInput {
        let custodian = &self.config.custodian;
        let offset = chrono::Duration::minutes(i64::from(custodian.utc_offset_minutes));
        let local = ledger.time + offset;
        let weekday = match local.weekday() {
            chrono::Weekday::Mon => "Mon",
            chrono::Weekday::Tue => "Tue",
            chrono::Weekday::Wed => "Wed",
            chrono::Weekday::Thu => "Thu",
            chrono::Weekday::Fri => "Fri",
            chrono::Weekday::Sat => "Sat",
            chrono::Weekday::Sun => "Sun",
        };
        use chrono::Timelike;
        PolicyInput {
            request: RequestInput {
                domain: ledger.domain.clone(),
                purpose: ledger.purpose.clone(),
                data_classes: ledger.data_classes.clone(),
                patient_found,
                justification: ledger.justification.clone().unwrap_or_default(),
                time: federation::time::rfc3339(ledger.time),
                weekday: weekday.to_string(),
                minute_of_day: local.hour() * 60 + local.minute(),
                requester: ledger.requester.clone(),
                requester_org: ledger.requester_org.clone(),
            },
            privilege: None,
            consents: Vec::new(),
            study: None,
            contracts: self.contracts_between(
                &self.config.did,
                ledger.requester_org.as_deref().unwrap_or_default(),
            ),
            custodian: CustodianInput::new(&self.config.did, custodian),
            token: None,
        }
    }

    /// Records a deny made before policy could be asked, and returns the error to send.
    pub async fn deny_unasked(
        &self,
        ledger: &Ledger,
        reason: String,
    ) -> Result<GatewayError, GatewayError> {
        let decision = Decision::deny(reason);
        self.record(ledger, &decision, 0).await?;
        Ok(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons,
            check: None,
            policy: None,
        })
    }
}
