//! The gateway's HTTP service: shared state, the router, and thin handlers that hand each
//! request to the flow in [`crate::exchange`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use federation::credentials::{CredentialKind, PresentationBinding};
use federation::did::DidResolver;
use federation::http::StrictJson;
use federation::keys::KeyPair;
use federation::registry::{ManifestSource, Registry, SignedManifest};
use federation::status::StatusCache;
use federation::trust::{StaticTrust, TrustSource};
use federation::verify::Verifier;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{GatewayConfig, RecordsConfig};
use crate::consents::ConsentStore;
use crate::error::GatewayError;
use crate::exchange::{self, ExchangeRequest, Ledger};
use crate::nonce::Nonces;
use crate::outbox::Outbox;
use crate::policy::PolicyHolder;
use crate::records::RecordSource;
use crate::vault::Vault;

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
    pub secret: [u8; 32],
    pub db: sled::Db,
    /// The admin endpoints' token; without one they refuse every call.
    admin: Option<federation::admin::AdminToken>,
    trust_mode: TrustMode,
    metrics: PrometheusHandle,
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
    ) -> Result<Arc<Self>, String> {
        let admin = match &config.admin_token_file {
            Some(path) => Some(federation::admin::AdminToken::load(path)?),
            None => None,
        };
        let key = KeyPair::load_or_create(&config.key_file, || {
            KeyPair::generate_did_web(&config.did, Default::default())
                .map(|k| k.with_purpose("gateway organization key"))
        })
        .map_err(|e| e.to_string())?;
        if key.did() != config.did {
            return Err(format!(
                "key_file belongs to {}, not to the configured did {}",
                key.did(),
                config.did
            ));
        }
        let secret = Vault::key_from_file(&config.secret_file).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
        let db = federation::db::open(&config.data_dir.join("gateway.sled"))
            .map_err(|e| e.to_string())?;
        let nonces = Nonces::new(
            db.open_tree("nonces").map_err(|e| e.to_string())?,
            Duration::from_secs(config.challenge_ttl_secs),
        );
        let outbox = Outbox::start(&db, config.outbox_max_events).map_err(|e| e.to_string())?;
        let consents = ConsentStore::open(&db)?;
        let vault = Arc::new(Vault::open(
            db.open_tree("vault").map_err(|e| e.to_string())?,
            secret,
        ));
        let records = match &config.records {
            RecordsConfig::Embedded => RecordSource::embedded(&config.data_dir.join("records"))
                .map_err(|e| e.to_string())?,
            RecordsConfig::Fhir { url } => {
                RecordSource::fhir_server(url, config.dev_mode).map_err(|e| e.to_string())?
            }
        };
        let policy = Arc::new(PolicyHolder::new(&config.policies));

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let mut allow = HashMap::new();
        for (did, url) in &config.did_web {
            let url = reqwest::Url::parse(url).map_err(|e| format!("did_web {did}: {e}"))?;
            allow.insert(did.clone(), url);
        }
        allow.insert(config.did.clone(), public_url);
        resolver.set_web_allow_map(allow);
        resolver.pin(key.did_document().map_err(|e| e.to_string())?);
        let (trust, trust_mode): (Arc<dyn TrustSource>, TrustMode) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(Registry::journaled_in(
                    &db,
                    rc.governance.clone(),
                    config.dev_mode,
                )?);
                let source = if rc.is_url() {
                    ManifestSource::Url(
                        reqwest::Url::parse(&rc.signed)
                            .map_err(|e| format!("registry.signed: {e}"))?,
                    )
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
        let verifier = Verifier::new(resolver, trust, status);
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
            secret,
            db,
            admin,
            metrics,
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
    pub fn contracts_between(&self, custodian: &str, requester: &str) -> Vec<Value> {
        let now = chrono::Utc::now();
        let contracts = match &self.trust_mode {
            TrustMode::Registry(r) => {
                return r
                    .contracts_between(custodian, requester)
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
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
            .cloned()
            .collect()
    }

    /// The pseudonym of a patient in access events: keyed by this custodian's secret, so
    /// only the custodian can map it back (by recomputing it over its own patients).
    pub fn patient_ref(&self, patient_id: &str) -> String {
        crate::tokenize::keyed_pseudonym(&self.secret, "patient-ref", patient_id)
    }
}

type AppState = State<Arc<GatewayState>>;

pub fn router(state: Arc<GatewayState>) -> Router {
    let limits = state.config.limits.clone();
    let router = Router::new()
        .route("/.well-known/did.json", get(did_document))
        .route("/v1/challenges", post(challenge))
        .route("/v1/exchange/{domain}", post(exchange_handler))
        .route("/v1/research/queries", post(research_handler))
        .route("/v1/consents", post(register_consents))
        .route("/v1/consents/withdrawals", post(withdraw_consents))
        .route("/v1/patient-links", post(link_patient))
        .route("/v1/patient-links/removals", post(unlink_patient))
        .route("/v1/detokenize", post(detokenize_handler))
        .route("/credentials/verify", post(verify_credential))
        .route("/presentations/verify", post(verify_presentation))
        .route("/v1/keys", get(inventory))
        .route("/v1/log/checkpoint", get(adopted_checkpoint))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/openapi.json", get(openapi))
        .fallback(federation::http::problem_fallback)
        .with_state(state);
    federation::http::common_layers(router, &limits)
}

async fn did_document(State(s): AppState) -> Result<Json<Value>, GatewayError> {
    let mut doc = s
        .key
        .did_document()
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    doc["service"] = json!([{
        "id": format!("{}#gateway", s.config.did),
        "type": "FedgateGateway",
        "serviceEndpoint": s.config.public_url.clone().unwrap_or_default(),
    }]);
    Ok(Json(doc))
}

/// The log checkpoint this gateway adopted last, as the log signed it (a C2SP signed
/// note): what peer gateways compare with theirs (see `gossip`). Public: a tree size and a
/// root hash, nothing about any patient.
async fn adopted_checkpoint(State(s): AppState) -> Result<Response, GatewayError> {
    let state =
        s.db.open_tree(crate::shipper::LOG_STATE)
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    let adopted = crate::shipper::Adopted::load(&state)
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    match adopted.and_then(|a| a.note) {
        Some(note) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response()),
        None => Err(GatewayError::NotFound("an adopted log checkpoint".into())),
    }
}

async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({ "keys": [s.key.info()] }))
}

async fn challenge(State(s): AppState) -> Result<Response, GatewayError> {
    let (challenge, expires) = s
        .nonces
        .issue()
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "challenge": challenge,
            "domain": s.config.did,
            "expiresAt": federation::time::rfc3339(expires),
        })),
    )
        .into_response())
}

async fn exchange_handler(
    State(s): AppState,
    Path(domain): Path<String>,
    headers: HeaderMap,
    StrictJson(req): StrictJson<ExchangeRequest>,
) -> Result<Response, GatewayError> {
    // A domain is a lowercase name; anything else is malformed (400), a name that is no
    // exchange domain is unknown (404, in `exchange`).
    federation::params::domain("domain", &domain)?;
    exchange::exchange(&s, &domain, req, &headers).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResearchRequest {
    purpose: String,
    query: crate::research::CohortQuery,
    presentation: Value,
}

async fn research_handler(
    State(s): AppState,
    StrictJson(req): StrictJson<ResearchRequest>,
) -> Result<Response, GatewayError> {
    if req.purpose != "HRESCH" {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            "research queries use purpose HRESCH",
        ));
    }
    if !s.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full".into(),
        ));
    }
    let mut ledger = Ledger::new("research", &req.purpose, &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let Some(study) = vp
        .of_kind(CredentialKind::ResearchStudy)
        .find(|c| c.subject["sponsor"] == vp.holder.as_str())
    else {
        return Err(s
            .refuse(
                &ledger,
                "holder-binding",
                "no study credential of the presenter".into(),
            )
            .await);
    };
    let classes: Vec<String> = study.subject["dataClasses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ledger.data_classes = classes;
    let study_input = json!({"issuer": study.issuer, "id": study.id, "subject": study.subject});
    let input = json!({
        "request": s.request_input(&ledger, true),
        "privilege": null,
        "consents": [],
        "study": study_input,
        "contracts": s.contracts_between(&s.config.did, ledger.requester_org.as_deref().unwrap_or_default()),
        "custodian": s.custodian_input(),
        "token": null,
    });
    let decision = s.decide("research", input).await;
    if !decision.allow {
        s.record(&ledger, &decision, 0).await?;
        return Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        });
    }
    let study_id = study.subject["id"].as_str().unwrap_or_default();
    let cohort = s.consents.research_cohort(
        study_id,
        &vp.holder,
        &req.purpose,
        ledger.time,
        s.config.custodian.require_patient_links,
    );
    let min_cell = decision
        .obligations
        .min_cell_size
        .unwrap_or(s.config.custodian.min_cell_size)
        .max(s.config.custodian.min_cell_size);
    let result = crate::research::aggregate(&s.records, &cohort, &req.query, min_cell, ledger.time)
        .await
        .map_err(|e| GatewayError::Unprocessable(e.to_string()))?;
    s.record(&ledger, &decision, cohort.len() as u64).await?;
    let body = json!({
        "decisionId": ledger.decision_id,
        "study": study_id,
        "minCellSize": min_cell,
        "result": result,
    });
    exchange::respond(&ledger, &decision, body, None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresentationBody {
    presentation: Value,
}

/// Consents in a patient's presentation that are theirs and name this custodian.
fn own_consents<'a>(
    vp: &'a federation::verify::VerifiedPresentation,
    custodian: &'a str,
) -> impl Iterator<Item = &'a federation::verify::VerifiedCredential> {
    vp.of_kind(CredentialKind::PatientConsent)
        .filter(move |c| c.subject["id"] == vp.holder.as_str())
        .filter(move |c| {
            c.subject["custodians"]
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d == custodian))
        })
}

/// `POST /v1/patient-links` and `/removals`: the custodian (its registration desk or
/// patient portal, holding the admin token) confirms that a DID belongs to one of its
/// patients, or withdraws that.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientLinkBody {
    patient: crate::exchange::PatientRef,
    did: String,
}

impl GatewayState {
    fn require_admin(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        match &self.admin {
            Some(token) if token.admits(headers) => Ok(()),
            _ => Err(GatewayError::Unauthorized),
        }
    }

    /// Checks an admin link request and finds its patient (never echoed: PHI).
    async fn link_target(
        &self,
        headers: &HeaderMap,
        body: &PatientLinkBody,
    ) -> Result<String, GatewayError> {
        self.require_admin(headers)?;
        if !body.did.starts_with("did:") || body.did.len() > 2048 {
            return Err(GatewayError::bad_request(
                "invalid-did",
                "did must be a DID",
            ));
        }
        self.records
            .find_patient(&body.patient.system, &body.patient.value)
            .await
            .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?
            .ok_or_else(|| GatewayError::NotFound("a patient with this identifier".into()))
    }
}

async fn link_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = s.link_target(&headers, &body).await?;
    s.consents
        .link(&patient_id, &body.did)
        .await
        .map_err(GatewayError::Unavailable)?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), "patient DID linked");
    Ok(Json(json!({"did": body.did, "linked": true})).into_response())
}

async fn unlink_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = s.link_target(&headers, &body).await?;
    let removed = s
        .consents
        .unlink(&patient_id, &body.did)
        .await
        .map_err(GatewayError::Unavailable)?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), removed, "patient DID unlinked");
    Ok(Json(json!({"did": body.did, "linked": false, "removed": removed})).into_response())
}

async fn register_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
) -> Result<Response, GatewayError> {
    let mut ledger = Ledger::new("consent", "PATRQT", &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let mut registered = Vec::new();
    for c in own_consents(&vp, &s.config.did) {
        let mut patient_id = None;
        for ident in c.subject["patientIdentifiers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if ident["custodian"] != s.config.did.as_str() {
                continue;
            }
            let (Some(system), Some(value)) = (ident["system"].as_str(), ident["value"].as_str())
            else {
                continue;
            };
            patient_id = s
                .records
                .find_patient(system, value)
                .await
                .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?;
            if patient_id.is_some() {
                break;
            }
        }
        let stored = s
            .consents
            .register(c, patient_id.clone())
            .await
            .map_err(GatewayError::Internal)?;
        // Whether it speaks for the patient yet (a self-issued one needs a link).
        let speaks = patient_id.as_deref().is_some_and(|pid| {
            s.consents.speaks_for(
                pid,
                &stored.patient_did,
                &stored.issuer,
                s.config.custodian.require_patient_links,
            )
        });
        registered.push(json!({
            "id": stored.id,
            "patientKnown": patient_id.is_some(),
            "speaksForPatient": speaks,
        }));
    }
    if registered.is_empty() {
        return Err(GatewayError::Unprocessable(
            "the presentation holds no consent of the presenter naming this custodian".into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(json!({"registered": registered}))).into_response())
}

async fn withdraw_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
) -> Result<Json<Value>, GatewayError> {
    let mut ledger = Ledger::new("consent", "PATRQT", &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let mut withdrawn = Vec::new();
    for c in own_consents(&vp, &s.config.did) {
        let id = c.id.clone().unwrap_or_else(|| c.digest.clone());
        s.consents
            .withdraw(&id)
            .await
            .map_err(GatewayError::Internal)?;
        withdrawn.push(id);
    }
    if withdrawn.is_empty() {
        return Err(GatewayError::Unprocessable(
            "the presentation holds no consent of the presenter naming this custodian".into(),
        ));
    }
    Ok(Json(json!({"withdrawn": withdrawn})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    token: String,
    purpose: String,
    presentation: Value,
}

async fn detokenize_handler(
    State(s): AppState,
    StrictJson(req): StrictJson<DetokenizeRequest>,
) -> Result<Response, GatewayError> {
    if !exchange::PURPOSES.contains(&req.purpose.as_str()) {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            "unknown purpose code",
        ));
    }
    if req.token.len() > 128 {
        return Err(GatewayError::bad_request("invalid-token", "token too long"));
    }
    if !s.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full".into(),
        ));
    }
    let mut ledger = Ledger::new("detokenize", &req.purpose, &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let info = s.vault.get(&req.token).ok();
    let token_input = info
        .as_ref()
        .map(|i| json!({"recipient": i.recipient_org, "domain": i.domain, "class": i.class}));
    let privilege = vp
        .of_kind(CredentialKind::ClinicianPrivilege)
        .find(|c| c.subject["id"] == vp.holder.as_str())
        .map(|c| json!({"issuer": c.issuer, "id": c.id, "subject": c.subject}));
    let input = json!({
        "request": s.request_input(&ledger, info.is_some()),
        "privilege": privilege,
        "consents": [],
        "study": null,
        "contracts": s.contracts_between(&s.config.did, ledger.requester_org.as_deref().unwrap_or_default()),
        "custodian": s.custodian_input(),
        "token": token_input,
    });
    let mut decision = s.decide("detokenize", input).await;
    if decision.allow && info.is_none() {
        decision = crate::policy::Decision::deny("unknown token");
    }
    let value = if decision.allow {
        match s.vault.reveal(
            &req.token,
            ledger.requester_org.as_deref().unwrap_or_default(),
        ) {
            Ok(v) => Some(v),
            Err(_) => {
                decision =
                    crate::policy::Decision::deny("the token was not issued to this organization");
                None
            }
        }
    } else {
        None
    };
    s.record(&ledger, &decision, u64::from(value.is_some()))
        .await?;
    match value {
        Some(v) => {
            let class = info.map(|i| i.class).unwrap_or_default();
            exchange::respond(
                &ledger,
                &decision,
                json!({"value": v, "class": class, "decisionId": ledger.decision_id}),
                None,
            )
        }
        None => Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyCredentialRequest {
    verifiable_credential: Value,
}

async fn verify_credential(
    State(s): AppState,
    StrictJson(req): StrictJson<VerifyCredentialRequest>,
) -> Result<Json<Value>, GatewayError> {
    match s
        .verifier
        .verify_credential(&req.verifiable_credential)
        .await
    {
        Ok(v) => Ok(Json(
            json!({"checks": v.checks, "warnings": [], "errors": [], "credential": v}),
        )),
        Err(e) => Err(verification_problem(e)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyPresentationRequest {
    verifiable_presentation: Value,
    options: PresentationBinding,
}

async fn verify_presentation(
    State(s): AppState,
    StrictJson(req): StrictJson<VerifyPresentationRequest>,
) -> Result<Json<Value>, GatewayError> {
    match s
        .verifier
        .verify_presentation(&req.verifiable_presentation, &req.options)
        .await
    {
        Ok(v) => Ok(Json(
            json!({"checks": v.checks, "warnings": [], "errors": [], "presentation": v}),
        )),
        Err(e) => Err(verification_problem(e)),
    }
}

fn verification_problem(e: federation::VerifyError) -> GatewayError {
    GatewayError::Unprocessable(e.to_string())
}

async fn readyz(State(s): AppState) -> Response {
    let policy = s.policy.current_digest();
    let outbox_ok = s.outbox.has_room();
    let body = json!({
        "policy": policy,
        // `pending`: events without a receipt; `unpublished` counts against `max`.
        "outbox": {
            "pending": s.outbox.unconfirmed_len(),
            "unpublished": s.outbox.len(),
            "awaitingReceipt": s.outbox.awaiting_len(),
            "max": s.config.outbox_max_events,
        },
    });
    if policy.is_some() && outbox_ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        federation::http::service_unavailable(if policy.is_none() {
            "policies failed to load; every request is denied"
        } else {
            "the access-event outbox is full"
        })
        .with("state", body)
        .into_response()
    }
}

async fn metrics_handler(State(s): AppState) -> Response {
    metrics::gauge!("fedgate_outbox_pending").set(s.outbox.len() as f64);
    metrics::gauge!("fedgate_outbox_awaiting_receipt").set(s.outbox.awaiting_len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}
