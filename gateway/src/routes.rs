//! The gateway's HTTP service: shared state, the router, and thin handlers that hand each
//! request to the flow in [`crate::exchange`].

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use federation::credentials::PresentationBinding;
use serde::Deserialize;
use serde_json::{json, Value};
use service::http::StrictJson;

use crate::detokenize::detokenize_handler;
use crate::error::GatewayError;
use crate::exchange::{self, ExchangeRequest};
use crate::registration::{link_patient, register_consents, unlink_patient, withdraw_consents};
use crate::research::research_handler;
use crate::state::GatewayState;

type AppState = State<Arc<GatewayState>>;

pub fn router(state: Arc<GatewayState>) -> Router {
    let limits = state.config.limits.clone();
    let router = Router::new()
        .route("/.well-known/did.json", get(did_document))
        .route("/v1/challenges", post(challenge))
        .route("/v1/exchange/{domain}", post(exchange_handler))
        .route("/v1/exchange/{domain}/pages/{cursor}", get(page_handler))
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
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
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
    service::params::domain("domain", &domain)?;
    exchange::exchange(&s, &domain, req, &headers).await
}

async fn page_handler(
    State(s): AppState,
    Path((domain, cursor)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    service::params::domain("domain", &domain)?;
    if cursor.len() > 128 {
        return Err(GatewayError::Page(crate::paging::PageError::UnknownCursor));
    }
    // The query is exactly `page=N` (N from 2): the next links say so.
    let page = query
        .as_deref()
        .and_then(|q| q.strip_prefix("page="))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            GatewayError::bad_request("invalid-page", "the query must be page=N, N a number")
        })?;
    exchange::next_page(&s, &domain, &cursor, page, &headers).await
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
        service::http::service_unavailable(if policy.is_none() {
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
