//! The gateway's HTTP service: the router, and thin handlers that hand each request to the
//! flow in [`crate::exchange`]. The router and the OpenAPI document served at
//! `/openapi.json` are both built from [`routes`].

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use service::http::StrictJson;
use service::openapi::{JsonBodyErrors, NotFound, Unavailable};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::detokenize;
use crate::error::Denied;
use crate::error::GatewayError;
use crate::exchange::{self, ExchangeRequest};
use crate::registration;
use crate::state::GatewayState;

type AppState = State<Arc<GatewayState>>;

/// Every route of the gateway, each with its OpenAPI operation: the router and the document
/// at `/openapi.json` are both built from this list.
pub fn routes() -> service::openapi::Routes<Arc<GatewayState>> {
    vec![
        routes!(did_document),
        routes!(challenge),
        routes!(exchange_handler),
        routes!(page_handler),
        routes!(oid4vp_start),
        routes!(oid4vp_request_object),
        routes!(oid4vp_response),
        routes!(oid4vp_collect),
        routes!(crate::research::request::research_handler),
        routes!(registration::register_consents),
        routes!(registration::withdraw_consents),
        routes!(registration::link_patient),
        routes!(registration::unlink_patient),
        routes!(detokenize::detokenize_handler),
        routes!(verify_credential),
        routes!(verify_presentation),
        routes!(inventory),
        routes!(adopted_checkpoint),
        routes!(healthz),
        routes!(readyz),
        routes!(metrics_handler),
    ]
}

/// The gateway's OpenAPI document (without the state it is served with).
pub fn openapi() -> utoipa::openapi::OpenApi {
    service::openapi::document(base_document(), routes()).1
}

fn base_document() -> utoipa::openapi::OpenApi {
    service::openapi::base(
        "fedgate gateway",
        env!("CARGO_PKG_VERSION"),
        "An organization's gateway: every request is verified (W3C Verifiable Presentations \
         bound to a challenge and this gateway's DID), decided by Rego policy for its data \
         domain, fetched locally, tokenized, recorded as an access event, and only then \
         answered. Errors are RFC 9457 problem+json.",
    )
}

pub fn router(state: Arc<GatewayState>) -> Router {
    let limits = state.config.limits.clone();
    let (router, _) = service::openapi::document(base_document(), routes());
    let router = router
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// This organization's DID document, with its gateway service endpoint.
#[utoipa::path(get, path = "/.well-known/did.json", tag = "identity",
    responses((status = 200, description = "DID document", body = Object)))]
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
#[utoipa::path(get, path = "/v1/log/checkpoint", tag = "visibility",
    responses((status = 200, description = "A C2SP signed note by the log's key", body = String,
        content_type = "text/plain"), NotFound, Unavailable))]
async fn adopted_checkpoint(State(s): AppState) -> Result<Response, GatewayError> {
    let adopted = crate::shipper::Adopted::load(&s.db.tree(crate::shipper::LOG_STATE))
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

/// This gateway's keys: ids, algorithms and purposes (never private material).
#[utoipa::path(get, path = "/v1/keys", tag = "identity",
    responses((status = 200, description = "`{keys}`", body = Object)))]
async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({ "keys": [s.key.info()] }))
}

/// A single-use challenge, to be bound into a presentation with this gateway's DID.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Challenge {
    challenge: String,
    /// This gateway's DID: the presentation's domain (`aud`).
    domain: String,
    /// RFC 3339 date-time.
    expires_at: String,
}

/// A single-use challenge for a presentation. Answers to requests that carry a
/// presentation offer the next one in `Fedgate-Next-Challenge`.
#[utoipa::path(post, path = "/v1/challenges", tag = "exchange",
    responses((status = 200, description = "Challenge", body = Challenge), Unavailable))]
async fn challenge(State(s): AppState) -> Response {
    let (challenge, expires) = s.nonces.issue();
    (
        StatusCode::OK,
        Json(Challenge {
            challenge,
            domain: s.config.did.clone(),
            expires_at: federation::time::rfc3339(expires),
        }),
    )
        .into_response()
}

/// Clinical or billing records of one patient, tokenized per policy.
#[utoipa::path(post, path = "/v1/exchange/{domain}", tag = "exchange",
    params(("domain" = String, Path, description = "`clinical` or `billing`"),
        ("Accept" = Option<String>, Header,
            description = "`application/jose` for the Bundle as a JWE to the presentation's holder")),
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "A FHIR R4 searchset Bundle, or a compact JWE (ECDH-ES, A256GCM)",
            headers(("Fedgate-Decision-Id" = String, description = "The decision, as recorded"),
                ("Fedgate-Break-Glass" = String, description = "Present when access was by break-glass"),
                ("Fedgate-Access-Expires" = String, description = "RFC 3339: when the grant ends"),
                ("Fedgate-Next-Challenge" = String, description = "A fresh challenge for the holder's next presentation (on refusals too)")),
            content((Object = "application/fhir+json"), (String = "application/jose"))),
        Denied, JsonBodyErrors, NotFound, Unavailable))]
async fn exchange_handler(
    State(s): AppState,
    Path(domain): Path<String>,
    headers: HeaderMap,
    StrictJson(req): StrictJson<ExchangeRequest>,
) -> Response {
    // A domain is a lowercase name; anything else is malformed (400), a name that is no
    // exchange domain is unknown (404, in `exchange`).
    let answer = match service::params::domain("domain", &domain) {
        Ok(_) => exchange::exchange(&s, &domain, req, &headers).await,
        Err(e) => Err(e.into()),
    };
    s.offering_next_challenge(answer)
}

/// A later page of a paged answer, without a new presentation (docs/gateway-contract.md §4).
#[utoipa::path(get, path = "/v1/exchange/{domain}/pages/{cursor}", tag = "exchange",
    params(("domain" = String, Path, description = "`clinical` or `billing`"),
        ("cursor" = String, Path, description = "The cursor of the answer's `next` link"),
        ("page" = u32, Query, description = "The page, from 2"),
        ("fedgate-page-proof" = String, Header,
            description = "A compact JWS (`fedgate-page+jwt`) by the requester's DID over `{aud, cursor, page, iat}`"),
        ("Accept" = Option<String>, Header,
            description = "`application/jose` for the Bundle as a JWE to the requester")),
    responses(
        (status = 200, description = "The page: a FHIR R4 searchset Bundle, or a compact JWE",
            content((Object = "application/fhir+json"), (String = "application/jose"))),
        (status = 400, description = "The query is not `page=N`"),
        (status = 401, description = "No page proof, or one that does not verify"),
        (status = 403, description = "The cursor was issued to another requester"),
        (status = 404, description = "Unknown, expired or forged cursor, or a page past the end"),
        Unavailable))]
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

/// OpenID4VP 1.0: start an exchange with an authorization request instead of a
/// presentation (docs/openid4vp.md). The body is that of `POST /v1/exchange/{domain}`
/// without `presentation`, with the response mode and, for the same-device flow, the URL
/// the wallet sends the user back to.
#[utoipa::path(post, path = "/v1/oid4vp/{domain}/requests", tag = "openid4vp",
    params(("domain" = String, Path, description = "`clinical` or `billing`")),
    request_body = crate::oid4vp::StartRequest,
    responses(
        (status = 201, description = "The authorization request (URL and QR code), the transaction id and the requester's secret",
            body = crate::oid4vp::Started),
        JsonBodyErrors, NotFound, Unavailable))]
async fn oid4vp_start(
    State(s): AppState,
    Path(domain): Path<String>,
    StrictJson(req): StrictJson<crate::oid4vp::StartRequest>,
) -> Result<Response, GatewayError> {
    service::params::domain("domain", &domain)?;
    let started = crate::oid4vp::start(&s, &domain, req).await?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(started),
    )
        .into_response())
}

/// OpenID4VP 1.0: the signed request object a wallet fetches at `request_uri`
/// (`typ` `oauth-authz-req+jwt`, signed with the gateway's DID key). Errors are OAuth
/// error JSON.
#[utoipa::path(get, path = "/v1/oid4vp/requests/{state}", tag = "openid4vp",
    params(("state" = String, Path, description = "The request's state")),
    responses(
        (status = 200, description = "The request object", body = String,
            content_type = "application/oauth-authz-req+jwt"),
        (status = 404, description = "`invalid_request_uri`: unknown, answered or expired", body = Object)))]
async fn oid4vp_request_object(State(s): AppState, Path(state): Path<String>) -> Response {
    if state.len() > 128 {
        return crate::oid4vp::OAuthError::invalid_request("state too long").into_response();
    }
    match crate::oid4vp::request_object(&s, &state).await {
        Ok(jwt) => (
            StatusCode::OK,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/oauth-authz-req+jwt",
                ),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            jwt,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// OpenID4VP 1.0: the response endpoint (`response_uri`). A form with `vp_token` and
/// `state` (`direct_post`), or `response`, a JWE holding them (`direct_post.jwt`), or
/// `error` and `state`. Answers `{"redirect_uri": "…#response_code=…"}` (same device) or
/// `{}` (cross device); errors are OAuth error JSON (`invalid_request`,
/// `vp_formats_not_supported`, `server_error`).
#[utoipa::path(post, path = "/v1/oid4vp/responses", tag = "openid4vp",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{redirect_uri}` or `{}`", body = Object),
        (status = 400, description = "OAuth error JSON", body = Object),
        (status = 503, description = "`server_error`", body = Object)))]
async fn oid4vp_response(
    State(s): AppState,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return crate::oid4vp::OAuthError::invalid_request(
            "the response must be application/x-www-form-urlencoded",
        )
        .into_response();
    }
    if body.len() > crate::oid4vp::MAX_RESPONSE_BYTES {
        return crate::oid4vp::OAuthError::invalid_request("response too large").into_response();
    }
    let mut form = crate::oid4vp::ResponseForm::default();
    for (key, value) in url::form_urlencoded::parse(&body) {
        let slot = match key.as_ref() {
            "vp_token" => &mut form.vp_token,
            "state" => &mut form.state,
            "response" => &mut form.response,
            "error" => &mut form.error,
            "error_description" => &mut form.error_description,
            _ => continue,
        };
        if slot.is_some() {
            return crate::oid4vp::OAuthError::invalid_request(format!("{key} given twice"))
                .into_response();
        }
        *slot = Some(value.into_owned());
    }
    match crate::oid4vp::respond(&s, form).await {
        Ok(answer) => (
            StatusCode::OK,
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            Json(answer),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// OpenID4VP: the requester collects the result of its exchange, once: with the response
/// code the wallet's redirect carried (same device) or its secret (cross device). 202
/// while the wallet has not answered; then the records, as `POST /v1/exchange/{domain}`
/// answers them, or its problem.
#[utoipa::path(post, path = "/v1/oid4vp/transactions/{id}/result", tag = "openid4vp",
    params(("id" = String, Path, description = "The transaction id"),
        ("Accept" = Option<String>, Header,
            description = "`application/jose` for the Bundle as a JWE to the presentation's holder")),
    request_body = crate::oid4vp::CollectRequest,
    responses(
        (status = 200, description = "A FHIR R4 searchset Bundle, or a compact JWE",
            content((Object = "application/fhir+json"), (String = "application/jose"))),
        (status = 202, description = "`{\"status\": \"pending\"}`: the wallet has not answered", body = Object),
        (status = 401, description = "Wrong secret or response code"),
        Denied, JsonBodyErrors, NotFound, Unavailable))]
async fn oid4vp_collect(
    State(s): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictJson(req): StrictJson<crate::oid4vp::CollectRequest>,
) -> Result<Response, GatewayError> {
    if id.len() > 128 {
        return Err(GatewayError::NotFound("an OpenID4VP transaction".into()));
    }
    crate::oid4vp::collect(&s, &id, req, &headers).await
}

/// W3C VC API: verify a credential of any type (format, proof, validity, status; schema
/// and issuer trust where they apply). Access decisions take only fedgate's three types.
#[utoipa::path(post, path = "/credentials/verify", tag = "credentials",
    request_body = service::vcapi::VerifyCredentialRequest,
    responses((status = 200, description = "`{checks, warnings, errors, credential}`", body = Object),
        (status = 422, description = "Verification failed: `check` names the check", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors))]
async fn verify_credential(
    State(s): AppState,
    StrictJson(req): StrictJson<service::vcapi::VerifyCredentialRequest>,
) -> Result<Json<Value>, service::http::Problem> {
    service::vcapi::verify_credential(&s.verifier, req).await
}

/// W3C VC API: verify a presentation (bound to `options.challenge` and `options.domain`
/// when given) and its credentials, of any type.
#[utoipa::path(post, path = "/presentations/verify", tag = "credentials",
    request_body = service::vcapi::VerifyPresentationRequest,
    responses((status = 200, description = "`{checks, warnings, errors, presentation}`", body = Object),
        (status = 422, description = "Verification failed: `check` names the check, `credential` the position", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors))]
async fn verify_presentation(
    State(s): AppState,
    StrictJson(req): StrictJson<service::vcapi::VerifyPresentationRequest>,
) -> Result<Json<Value>, service::http::Problem> {
    service::vcapi::verify_presentation(&s.verifier, req).await
}

/// Readiness: policies loaded, the database writable, and the outbox has room.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{policy, database, outbox}`", body = Object), Unavailable))]
async fn readyz(State(s): AppState) -> Response {
    let policy = s.policy.current_digest();
    let outbox_ok = s.outbox.has_room();
    let (database_ok, database) = service::db::readiness(&s.db);
    let body = json!({
        "policy": policy,
        "database": database,
        // `pending`: events without a receipt; `unpublished` counts against `max`.
        "outbox": {
            "pending": s.outbox.unconfirmed_len(),
            "unpublished": s.outbox.len(),
            "awaitingReceipt": s.outbox.awaiting_len(),
            "max": s.config.outbox_max_events,
        },
    });
    if policy.is_some() && outbox_ok && database_ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        service::http::service_unavailable(if policy.is_none() {
            "policies failed to load; every request is denied"
        } else if !database_ok {
            "the gateway's database refuses writes; restart the gateway"
        } else {
            "the access-event outbox is full"
        })
        .with("state", body)
        .into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics (text exposition format 0.0.4)", body = String,
        content_type = "text/plain")))]
async fn metrics_handler(State(s): AppState) -> Response {
    metrics::gauge!("fedgate_outbox_pending").set(s.outbox.len() as f64);
    s.db.record_metrics();
    metrics::gauge!("fedgate_outbox_awaiting_receipt").set(s.outbox.awaiting_len() as f64);
    service::metrics::response(&s.metrics)
}
