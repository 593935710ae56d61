//! The middleware every service runs behind (`common_layers`): limits, timeouts, the body
//! read before a slot is taken, request ids and tracing spans, security headers, and
//! problems for errors that come without one. Apart from serving, which decides where and
//! how connections are accepted; these layers decide what each request may do.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, TRANSFER_ENCODING, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::http::config::HttpLimits;
use crate::http::problem::{bad_request, Problem, PROBLEM_JSON};

/// Header carrying the per-request correlation id.
const REQUEST_ID_HEADER: &str = "x-request-id";

const MAX_REQUEST_ID_LEN: usize = 64;

/// The request id of the current request, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestId(pub(crate) String);

/// Applies the stack every fedgate service runs behind, outermost first: request id and
/// tracing span, security headers, problem+json for bare errors, request timeout (408),
/// the whole body read within its own deadline (408) and size (413), concurrency limit
/// (excess requests queue, and the timeout bounds the wait), body limit (413). No CORS: browsers get no cross-origin access. Routes and fallbacks must be added
/// before calling this; unknown routes and wrong methods become 404/405 problems.
pub fn common_layers(router: Router, cfg: &HttpLimits) -> Router {
    // Separate Router::layer calls (innermost first) rather than one ServiceBuilder: each
    // call re-boxes into axum's Response, which the timeout and from_fn layers require.
    router
        .layer(RequestBodyLimitLayer::new(cfg.max_body_bytes))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        // Global, not per instance: Router::layer wraps each route separately.
        .layer(GlobalConcurrencyLimitLayer::new(cfg.max_concurrent.max(1)))
        .layer(middleware::from_fn_with_state(
            BodyRules {
                max_bytes: cfg.max_body_bytes,
                deadline: cfg.body_read_timeout().max(Duration::from_millis(1)),
            },
            read_body_first,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout().max(Duration::from_millis(1)),
        ))
        // Also turns bare errors into problems (`problem_for_bare_error`): one middleware
        // rather than two, each of which would clone the routes' service per request.
        .layer(middleware::from_fn(request_context))
}

#[derive(Clone, Copy)]
struct BodyRules {
    max_bytes: usize,
    deadline: Duration,
}

/// Reads the whole request body, within its deadline and size, before the request takes
/// one of the `max_concurrent` slots: a client that trickles its body, or never sends it,
/// holds its connection, not a slot that a prompt client needs, and gets a 408.
async fn read_body_first(
    axum::extract::State(rules): axum::extract::State<BodyRules>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > rules.max_bytes as u64) {
        return Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response();
    }
    match tokio::time::timeout(rules.deadline, axum::body::to_bytes(body, rules.max_bytes)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            if e.into_inner().is::<http_body_util::LengthLimitError>() {
                Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response()
            } else {
                bad_request("unreadable-body", "the request body could not be read").into_response()
            }
        }
        Err(_) => Problem::for_status(StatusCode::REQUEST_TIMEOUT).into_response(),
    }
}

/// A response extension marking an error answered in a protocol's own error format (an
/// OAuth 2.0 / OpenID `{"error", "error_description"}` body): such a response is passed
/// through as it is, not turned into problem+json, because that protocol's clients read
/// only their own format.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolErrorBody;

/// Fallback handler for unknown routes: a 404 problem.
pub async fn problem_fallback() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}

/// Turns any 4xx/5xx response that is not `application/problem+json` (axum's
/// text/plain rejections, empty 404/405, 408 from the timeout, 413 from the body limit)
/// into a problem with the same status, keeping headers such as `Allow` and
/// `WWW-Authenticate`. The original body is dropped: it may be plain text meant for
/// nobody, or carry internal details.
fn problem_for_bare_error(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_problem_json(&response)
        || response.extensions().get::<ProtocolErrorBody>().is_some()
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let (_, body) = Problem::for_status(status).into_response().into_parts();
    for stale in [CONTENT_LENGTH, CONTENT_ENCODING, TRANSFER_ENCODING] {
        parts.headers.remove(stale);
    }
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(parts, body)
}

fn is_problem_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(PROBLEM_JSON))
}

pub(super) fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::new_v4().to_string();
    // A hyphenated UUID is always a valid header value; the fallback is never used.
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (CACHE_CONTROL, "no-store"),
    (X_FRAME_OPTIONS, "DENY"),
    (
        CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (REFERRER_POLICY, "no-referrer"),
];

/// A method as a metric label: the usual ones by name, anything else as "other" (a client
/// picks the method, and must not make new series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

async fn request_context(mut req: Request, next: Next) -> Response {
    let request_id_header = HeaderName::from_static(REQUEST_ID_HEADER);
    let id = req
        .headers()
        .get(&request_id_header)
        .filter(|value| value.to_str().is_ok_and(is_valid_request_id))
        .cloned()
        .unwrap_or_else(new_request_id);
    let id_text = id.to_str().unwrap_or_default().to_owned();
    req.headers_mut().insert(&request_id_header, id.clone());
    req.extensions_mut().insert(RequestId(id_text.clone()));

    // The route template rather than the path: paths may carry patient identifiers.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("-", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id_text,
        method = %req.method(),
        route = %route,
    );
    let started = Instant::now();
    let method = method_label(req.method());
    let mut response = problem_for_bare_error(next.run(req).instrument(span.clone()).await);
    let elapsed = started.elapsed();
    // By route template, method and status class: a bounded set of series (an unmatched
    // path is "-"), and the server's own share of a request's time, which a client's
    // latency adds its network and its own scheduling to.
    metrics::histogram!(
        "fedgate_http_request_seconds",
        "route" => route,
        "method" => method,
        "status" => status_class(response.status()),
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            "request finished"
        );
    });

    let headers = response.headers_mut();
    headers.insert(request_id_header, id);
    for (name, value) in SECURITY_HEADERS {
        // Only when absent, so a route can deliberately allow caching (e.g. status lists).
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    // Closed to cross-origin browsers whatever a handler sets.
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
    response
}
