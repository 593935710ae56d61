//! HTTP serving for every fedgate service: RFC 9457 problem details, a strict JSON body
//! extractor, the common middleware stack (limits, timeouts, security headers, request ids),
//! and TLS/loopback serving. The outbound client policy is `federation::client`'s.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, TRANSFER_ENCODING, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

mod conn;

pub use conn::fd_headroom;
use federation::json::StrictJsonError;

/// Base URI of fedgate problem types; a slug is appended.
pub const PROBLEM_TYPE_BASE: &str = "https://w3id.org/fedgate/problems/";

/// Media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Maximum nesting of arrays/objects accepted by [`parse_strict_json`].
pub use federation::json::MAX_JSON_DEPTH;

/// Header carrying the per-request correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

const MAX_REQUEST_ID_LEN: usize = 64;

/// Client-controlled text echoed in a problem detail is cut to this many characters, so
/// a hostile body cannot inflate error responses or logs.
const MAX_ECHOED_CHARS: usize = 200;

const PROBLEM_FIELDS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

// ---------------------------------------------------------------------------------------
// Problem details
// ---------------------------------------------------------------------------------------

/// An RFC 9457 problem details document, also usable as an error value. Boxed so that
/// `Result<_, Problem>` stays small on the success path; fields are reached through
/// `Deref` (`problem.detail`, `problem.extensions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Problem(Box<ProblemDetails>);

/// The members of a [`Problem`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemDetails {
    /// `about:blank` or `https://w3id.org/fedgate/problems/<slug>`.
    #[serde(rename = "type", default = "about_blank")]
    pub r#type: String,
    #[serde(default)]
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension members such as `check`, `decision_id` or `reasons`.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    /// Response headers that belong to the problem (e.g. `WWW-Authenticate`).
    #[serde(skip)]
    headers: HeaderMap,
}

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;

    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    /// A problem of type `https://w3id.org/fedgate/problems/<slug>`, or `about:blank` when
    /// `slug` is empty.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        let r#type = if slug.is_empty() || slug == "about:blank" {
            about_blank()
        } else {
            format!("{PROBLEM_TYPE_BASE}{slug}")
        };
        Self(Box::new(ProblemDetails {
            r#type,
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            extensions: Map::new(),
            headers: HeaderMap::new(),
        }))
    }

    /// Adds an extension member. The standard members cannot be overridden this way,
    /// because a flattened duplicate would produce a document with repeated keys.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if PROBLEM_FIELDS.contains(&key) {
            tracing::warn!(
                key,
                "ignoring problem extension that shadows a standard member"
            );
        } else {
            self.extensions.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Sets the `instance` member.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds a header sent along with this problem.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Headers sent along with this problem.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The HTTP status (500 if the stored number is not a valid status).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The slug of a fedgate problem type, `None` for `about:blank` or foreign types.
    pub fn slug(&self) -> Option<&str> {
        self.r#type.strip_prefix(PROBLEM_TYPE_BASE)
    }

    /// The generic problem for a bare status, used when something other than a handler
    /// (router, limits, timeouts) produced the error.
    pub fn for_status(status: StatusCode) -> Self {
        let (slug, detail) = match status {
            StatusCode::BAD_REQUEST => ("bad-request", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "authentication is required"),
            StatusCode::FORBIDDEN => ("forbidden", "the request is not allowed"),
            StatusCode::NOT_FOUND => ("not-found", "no resource at this path"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method-not-allowed",
                "the method is not allowed for this resource",
            ),
            StatusCode::REQUEST_TIMEOUT => {
                ("request-timeout", "the request was not completed in time")
            }
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload-too-large",
                "the request body exceeds the size limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported-media-type",
                "the request content type is not supported",
            ),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ("invalid-request", "the request could not be processed")
            }
            StatusCode::SERVICE_UNAVAILABLE => (
                "service-unavailable",
                "the service is temporarily unavailable",
            ),
            StatusCode::INTERNAL_SERVER_ERROR => ("internal-error", GENERIC_INTERNAL_DETAIL),
            _ => ("", ""),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let detail = if detail.is_empty() { title } else { detail };
        Self::new(status, slug, title, detail)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(%err, "cannot serialize problem details");
                br#"{"type":"about:blank","title":"Internal Server Error","status":500}"#.to_vec()
            }
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

const GENERIC_INTERNAL_DETAIL: &str = "an internal error occurred";

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// Bad request (400) with a fedgate problem type.
pub fn bad_request(slug: &str, detail: impl Into<String>) -> Problem {
    let status = StatusCode::BAD_REQUEST;
    Problem::new(status, slug, reason(status), detail)
}

/// Unprocessable content (422) with a fedgate problem type.
pub fn unprocessable(slug: &str, detail: impl Into<String>) -> Problem {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    Problem::new(status, slug, reason(status), detail)
}

/// Unauthorized (401) with `WWW-Authenticate: Bearer`.
pub fn unauthorized(detail: impl Into<String>) -> Problem {
    let status = StatusCode::UNAUTHORIZED;
    Problem::new(status, "unauthorized", reason(status), detail)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// Forbidden (403) with a fedgate problem type.
pub fn forbidden(slug: &str, detail: impl Into<String>) -> Problem {
    let status = StatusCode::FORBIDDEN;
    Problem::new(status, slug, reason(status), detail)
}

/// Not found (404).
pub fn not_found(detail: impl Into<String>) -> Problem {
    let status = StatusCode::NOT_FOUND;
    Problem::new(status, "not-found", reason(status), detail)
}

/// Payload too large (413).
pub fn payload_too_large(detail: impl Into<String>) -> Problem {
    let status = StatusCode::PAYLOAD_TOO_LARGE;
    Problem::new(status, "payload-too-large", reason(status), detail)
}

/// Unsupported media type (415).
pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
    let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    Problem::new(status, "unsupported-media-type", reason(status), detail)
}

/// Service unavailable (503).
pub fn service_unavailable(detail: impl Into<String>) -> Problem {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    Problem::new(status, "service-unavailable", reason(status), detail)
}

/// Internal error (500). The detail goes to the log only; the client gets a generic
/// text, so that paths, keys and database errors never leak.
pub fn internal(detail: impl fmt::Display) -> Problem {
    tracing::error!(detail = %detail, "internal error");
    Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Strict JSON
// ---------------------------------------------------------------------------------------

/// Request body extractor replacing `axum::Json`: JSON content type, size limit, UTF-8,
/// bounded nesting and unique object keys are enforced before `T` is deserialized.
/// Every rejection is a [`Problem`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrictJson<T>(pub T);

impl<T> StrictJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T, S> FromRequest<S> for StrictJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(unsupported_media_type(
                "expected Content-Type: application/json",
            ));
        }
        // Bytes honours DefaultBodyLimit and RequestBodyLimitLayer.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                payload_too_large("the request body exceeds the size limit")
            } else {
                bad_request("unreadable-body", "the request body could not be read")
            }
        })?;
        let value = parse_strict_json(&bytes)?;
        T::deserialize(value).map(StrictJson).map_err(|err| {
            unprocessable(
                "invalid-request",
                truncate_chars(&err.to_string(), MAX_ECHOED_CHARS),
            )
        })
    }
}

/// `application/json` or `application/<anything>+json`; a charset, if given, must be UTF-8.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // Missing, or ambiguous because repeated.
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    let json = subtype == "json"
        || subtype
            .strip_suffix("+json")
            .is_some_and(|prefix| !prefix.is_empty());
    if !json {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

/// Parses a JSON document with the checks every fedgate input gets (see [`federation::json`]):
/// valid UTF-8, at most [`federation::json::MAX_JSON_DEPTH`] levels of nesting, no duplicate object keys at
/// any depth, no lone surrogate escapes, no trailing data. Errors are 400 problems with
/// slugs `invalid-utf8`, `too-deep`, `duplicate-key` or `malformed-json`.
pub fn parse_strict_json(bytes: &[u8]) -> Result<Value, Problem> {
    federation::json::parse_strict(bytes).map_err(|err| {
        let slug = match &err {
            StrictJsonError::InvalidUtf8 { .. } => "invalid-utf8",
            StrictJsonError::TooDeep => "too-deep",
            StrictJsonError::DuplicateKey { .. } => "duplicate-key",
            StrictJsonError::LoneSurrogate | StrictJsonError::Malformed(_) => "malformed-json",
        };
        bad_request(slug, err.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------------------

/// Limits applied by [`common_layers`] and [`serve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout_secs: u64,
    pub max_concurrent: usize,
    /// How long a client may take to send a request's headers. The first request of a
    /// connection must also arrive within it, counted from the accept (TLS handshake
    /// included), so a connection that sends nothing is closed after this long.
    pub header_read_timeout_secs: u64,
    /// How long a client may take to send its whole body. Bodies are read before the
    /// request takes a `max_concurrent` slot, so a slow one holds a connection, not a slot.
    pub body_read_timeout_secs: u64,
    /// Open connections at most. At the cap the connection idle longest is closed to make
    /// room; only when every connection has a request in flight do new ones wait in the
    /// kernel's listen backlog. Lowered at start when the file-descriptor limit cannot
    /// hold it (see [`fd_headroom`]).
    pub max_connections: usize,
    /// A keep-alive connection with no request in flight is closed after this long. On
    /// HTTP/1.1 the next request's headers must also arrive within the header read
    /// timeout, so there the shorter of the two applies; this one bounds HTTP/2.
    pub idle_timeout_secs: u64,
    /// Requests served on one connection before it is closed (HTTP/1.1 answers the last
    /// one with `connection: close`, HTTP/2 sends GOAWAY).
    pub max_requests_per_connection: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            max_concurrent: 512,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            max_connections: 1024,
            idle_timeout_secs: 10,
            max_requests_per_connection: 1000,
        }
    }
}

/// The most `max_connections` accepted: far beyond any descriptor limit in use, and small
/// enough to count in a `u32` (the drain at shutdown waits for every slot at once).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

impl HttpLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Zero for any limit would either refuse everything or hang every request.
    pub fn validate(&self) -> Result<(), HttpError> {
        let zero = [
            ("max_body_bytes", self.max_body_bytes == 0),
            ("request_timeout_secs", self.request_timeout_secs == 0),
            ("max_concurrent", self.max_concurrent == 0),
            (
                "header_read_timeout_secs",
                self.header_read_timeout_secs == 0,
            ),
            ("body_read_timeout_secs", self.body_read_timeout_secs == 0),
            ("max_connections", self.max_connections == 0),
            ("idle_timeout_secs", self.idle_timeout_secs == 0),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection == 0,
            ),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(HttpError::InvalidLimits(format!("{name} must be > 0")));
        }
        if self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(HttpError::InvalidLimits(format!(
                "max_connections must be at most {MAX_CONNECTIONS_LIMIT}"
            )));
        }
        Ok(())
    }
}

/// The request id of the current request, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

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
        .layer(middleware::from_fn(problem_for_empty_errors))
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

/// Fallback handler for unknown routes: a 404 problem.
pub async fn problem_fallback() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}

/// Middleware turning any 4xx/5xx response that is not `application/problem+json` (axum's
/// text/plain rejections, empty 404/405, 408 from the timeout, 413 from the body limit)
/// into a problem with the same status, keeping headers such as `Allow` and
/// `WWW-Authenticate`. The original body is dropped: it may be plain text meant for
/// nobody, or carry internal details.
pub async fn problem_for_empty_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem_json(&response) {
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

fn is_valid_request_id(id: &str) -> bool {
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
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
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

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

/// Where and how a service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "plain HTTP is allowed only on loopback; set tls_cert and tls_key (listen address {addr})"
    )]
    PlainHttpNotLoopback { addr: SocketAddr },
    #[error("tls_cert and tls_key must be set together")]
    IncompleteTls,
    #[error("cannot load TLS certificate {} / key {}: {source}", .cert.display(), .key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] io::Error),
    #[error("invalid HTTP limits: {0}")]
    InvalidLimits(String),
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

fn announce(addr: SocketAddr, tls: bool, ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>) {
    tracing::info!(%addr, tls, "listening");
    if let Some(ready) = ready {
        // The receiver may have lost interest; serving goes on regardless.
        let _ = ready.send(addr);
    }
}

/// Binds the listen address without serving yet, so a caller can learn the real port
/// (when configured as 0) before building its router. Refuses plain HTTP off loopback
/// before any bind is attempted.
pub fn bind(cfg: &ListenConfig) -> Result<std::net::TcpListener, HttpError> {
    check_listen(cfg, cfg.listen)?;
    let bind_err = |source| HttpError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(bind_err)?;
    // Required by tokio, which takes the listener over.
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Serves `router` on a listener from [`bind`]: HTTPS when `tls_cert` and `tls_key` are
/// set, else plain HTTP (loopback only). See [`serve`].
pub async fn serve_on(
    listener: std::net::TcpListener,
    router: Router,
    cfg: &ListenConfig,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    limits.validate()?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: cfg.listen,
        source,
    })?;
    // Checked again on the real address: the listener may not come from `bind`.
    check_listen(cfg, addr)?;
    let rules = conn::Rules::new(limits, fd_headroom(limits.max_connections));
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            serve_tls(listener, addr, router, cert, key, rules, shutdown, ready).await
        }
        _ => serve_plain(listener, addr, router, rules, shutdown, ready).await,
    }
}

/// Binds and serves `router` (already wrapped by [`common_layers`]; this does not add
/// them) until `shutdown` completes, then drains connections for at most the request
/// timeout. HTTPS when `tls_cert` and `tls_key` are set; plain HTTP only on a loopback
/// address. The bound address (useful with port 0) is sent on `ready` once listening.
pub async fn serve(
    router: Router,
    cfg: &ListenConfig,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    limits.validate()?;
    let listener = bind(cfg)?;
    serve_on(listener, router, cfg, limits, shutdown, ready).await
}

fn check_listen(cfg: &ListenConfig, addr: SocketAddr) -> Result<(), HttpError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(_), Some(_)) => Ok(()),
        (None, None) if is_loopback(addr.ip()) => Ok(()),
        (None, None) => Err(HttpError::PlainHttpNotLoopback { addr }),
        _ => Err(HttpError::IncompleteTls),
    }
}

/// Plain HTTP and TLS share one server ([`conn`]): the connection cap, the first-request,
/// header and idle deadlines, the keep-alive limit, and a graceful shutdown that drains
/// requests for at most the request timeout.
async fn serve_plain(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    router: Router,
    rules: conn::Rules,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(HttpError::Serve)?;
    announce(addr, false, ready);
    conn::serve(listener, router, rules, None, shutdown).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    router: Router,
    cert: &std::path::Path,
    key: &std::path::Path,
    rules: conn::Rules,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), HttpError> {
    install_crypto_provider();
    let tls = conn::tls_acceptor(cert, key).map_err(|source| HttpError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(HttpError::Serve)?;
    announce(addr, true, ready);
    conn::serve(listener, router, rules, Some(tls), shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use axum::Json;
    use federation::client::{http_client, http_client_builder, try_http_client};
    use tokio::sync::oneshot;

    #[derive(Debug, Deserialize, Serialize)]
    struct Registration {
        name: String,
        count: u32,
    }

    async fn echo(StrictJson(value): StrictJson<Value>) -> Json<Value> {
        Json(value)
    }

    async fn typed(StrictJson(reg): StrictJson<Registration>) -> Json<Registration> {
        Json(reg)
    }

    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "done"
    }

    fn app(limits: &HttpLimits) -> Router {
        let router = Router::new()
            .route("/echo", post(echo))
            .route("/typed", post(typed))
            .route("/health", get(|| async { "ok" }))
            .route("/slow", get(slow))
            .route(
                "/secret",
                get(|| async { internal("db password is hunter2") }),
            )
            .route("/auth", get(|| async { unauthorized("token missing") }))
            .route(
                "/teapot",
                get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .route(
                "/redirect",
                get(|| async { axum::response::Redirect::temporary("/health") }),
            )
            .route(
                "/ua",
                get(|headers: HeaderMap| async move {
                    headers
                        .get(axum::http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                }),
            )
            .route(
                "/cors",
                get(|| async { ([("access-control-allow-origin", "*")], "x") }),
            )
            .route(
                "/denied",
                get(|| async {
                    forbidden("policy-denied", "not allowed")
                        .with("decision_id", "d-1")
                        .with("reasons", vec!["no consent"])
                        .with("status", 200)
                }),
            );
        common_layers(router, limits)
    }

    struct Server {
        base: String,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), HttpError>>,
    }

    impl Server {
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                stop.send(()).unwrap();
            }
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    async fn start(limits: HttpLimits) -> Server {
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let router = app(&limits);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        let addr = ready_rx.await.unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        Server {
            base: format!("http://{addr}"),
            stop: Some(stop_tx),
            task,
        }
    }

    fn client() -> reqwest::Client {
        try_http_client().unwrap()
    }

    fn assert_common_headers(resp: &reqwest::Response) {
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(h["referrer-policy"], "no-referrer");
        let id = h["x-request-id"].to_str().unwrap();
        assert!(is_valid_request_id(id), "{id}");
        assert!(
            h.keys().all(|k| !k.as_str().starts_with("access-control-")),
            "{h:?}"
        );
    }

    /// Asserts a problem+json response and returns the parsed problem.
    async fn problem(resp: reqwest::Response, status: u16, slug: &str) -> Value {
        assert_eq!(resp.status().as_u16(), status);
        assert_common_headers(&resp);
        assert_eq!(resp.headers()["content-type"], PROBLEM_JSON);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], status);
        assert!(
            body["type"].as_str().unwrap().ends_with(slug),
            "expected {slug}: {body}"
        );
        assert!(body["title"].is_string() && body["detail"].is_string());
        body
    }

    async fn post_json(
        srv: &Server,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        client()
            .post(format!("{}{path}", srv.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn strict_json_over_http() {
        let srv = start(HttpLimits::default()).await;

        let resp = post_json(&srv, "/echo", r#"{"a":[1,{"b":null}]}"#).await;
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            serde_json::json!({"a":[1,{"b":null}]})
        );

        let resp = client()
            .post(format!("{}/echo", srv.base))
            .header("content-type", "application/ld+json; charset=utf-8")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        for ct in [
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ] {
            let mut req = client().post(format!("{}/echo", srv.base)).body("{}");
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            problem(req.send().await.unwrap(), 415, "unsupported-media-type").await;
        }

        problem(
            post_json(&srv, "/echo", "{\"a\":").await,
            400,
            "malformed-json",
        )
        .await;
        problem(
            post_json(&srv, "/echo", "{} x").await,
            400,
            "malformed-json",
        )
        .await;
        problem(post_json(&srv, "/echo", "").await, 400, "malformed-json").await;

        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        problem(post_json(&srv, "/echo", deep).await, 400, "too-deep").await;
        let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        problem(
            post_json(&srv, "/echo", deep_objects).await,
            400,
            "too-deep",
        )
        .await;
        let resp = client()
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        let body = problem(
            post_json(&srv, "/echo", r#"{"x":{"k":1,"k":2}}"#).await,
            400,
            "duplicate-key",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("\"k\""));

        problem(
            post_json(&srv, "/echo", b"{\"a\":\"\xff\xfe\"}".to_vec()).await,
            400,
            "invalid-utf8",
        )
        .await;

        let big = format!("\"{}\"", "a".repeat(2 * 1024 * 1024));
        problem(
            post_json(&srv, "/echo", big).await,
            413,
            "payload-too-large",
        )
        .await;

        let resp = post_json(&srv, "/typed", r#"{"name":"clinic","count":3}"#).await;
        assert_eq!(resp.status(), 200);
        let body = problem(
            post_json(&srv, "/typed", r#"{"name":"clinic"}"#).await,
            422,
            "invalid-request",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("count"), "{body}");
        let body = problem(
            post_json(&srv, "/typed", r#"{"name":"clinic","count":"x"}"#).await,
            422,
            "invalid-request",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains("invalid type"),
            "{body}"
        );

        srv.stop().await;
    }

    #[tokio::test]
    async fn chunked_body_over_limit_is_413() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let srv = start(HttpLimits::default()).await;
        // No Content-Length, so the limit is only hit while StrictJson reads the body.
        let addr = srv.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        for _ in 0..40 {
            // The server may answer and close before everything is sent.
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains(PROBLEM_JSON), "{response}");
        assert!(response.contains("payload-too-large"), "{response}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn router_errors_are_problems() {
        let srv = start(HttpLimits::default()).await;
        let c = client();

        problem(
            c.get(format!("{}/nope", srv.base)).send().await.unwrap(),
            404,
            "not-found",
        )
        .await;

        let resp = c.get(format!("{}/echo", srv.base)).send().await.unwrap();
        assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));
        problem(resp, 405, "method-not-allowed").await;

        let resp = c.get(format!("{}/auth", srv.base)).send().await.unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        problem(resp, 401, "unauthorized").await;

        let body = problem(
            c.get(format!("{}/secret", srv.base)).send().await.unwrap(),
            500,
            "internal-error",
        )
        .await;
        assert!(!body.to_string().contains("hunter2"));

        let body = problem(
            c.get(format!("{}/teapot", srv.base)).send().await.unwrap(),
            418,
            "about:blank",
        )
        .await;
        assert!(!body.to_string().contains("stout"));

        let body = problem(
            c.get(format!("{}/denied", srv.base)).send().await.unwrap(),
            403,
            "policy-denied",
        )
        .await;
        assert_eq!(body["decision_id"], "d-1");
        assert_eq!(body["reasons"][0], "no consent");

        let resp = c.get(format!("{}/cors", srv.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);

        srv.stop().await;
    }

    #[tokio::test]
    async fn request_id_is_kept_or_generated() {
        let srv = start(HttpLimits::default()).await;
        let c = client();
        let url = format!("{}/health", srv.base);

        let resp = c
            .get(&url)
            .header("x-request-id", "abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "abc-123");

        for bad in ["has space", "semi;colon", &"a".repeat(65)] {
            let resp = c
                .get(&url)
                .header("x-request-id", bad)
                .send()
                .await
                .unwrap();
            let id = resp.headers()["x-request-id"].to_str().unwrap();
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        }

        let a = c.get(&url).send().await.unwrap();
        let b = c.get(&url).send().await.unwrap();
        assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
        srv.stop().await;
    }

    #[tokio::test]
    async fn timeout_is_408_problem() {
        let app = Router::new().route(
            "/sleep",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let limits = HttpLimits {
            request_timeout_secs: 1,
            ..HttpLimits::default()
        };
        let router = common_layers(app, &limits);
        let (ready_tx, ready_rx) = oneshot::channel();
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let task = tokio::spawn(async move {
            serve(
                router,
                &cfg,
                &limits,
                std::future::pending(),
                Some(ready_tx),
            )
            .await
        });
        let addr = ready_rx.await.unwrap();
        let resp = client()
            .get(format!("http://{addr}/sleep"))
            .send()
            .await
            .unwrap();
        problem(resp, 408, "request-timeout").await;
        task.abort();
    }

    #[tokio::test]
    async fn concurrency_limit_queues() {
        let srv = start(HttpLimits {
            max_concurrent: 1,
            ..HttpLimits::default()
        })
        .await;
        let c = client();
        let url = format!("{}/slow", srv.base);
        let started = Instant::now();
        let (a, b) = tokio::join!(c.get(&url).send(), c.get(&url).send());
        assert_eq!(a.unwrap().status(), 200);
        assert_eq!(b.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(600));
        srv.stop().await;
    }

    #[tokio::test]
    async fn plain_http_refused_off_loopback() {
        for listen in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0", "10.1.2.3:8443"] {
            let cfg = ListenConfig {
                listen: listen.parse().unwrap(),
                tls_cert: None,
                tls_key: None,
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let err = serve(
                Router::new(),
                &cfg,
                &HttpLimits::default(),
                async {},
                Some(ready_tx),
            )
            .await
            .unwrap_err();
            // 192.0.2.1 is not assigned here: a bind attempt would have been a Bind error.
            assert!(
                matches!(err, HttpError::PlainHttpNotLoopback { .. }),
                "{listen}: {err}"
            );
            assert!(err
                .to_string()
                .contains("plain HTTP is allowed only on loopback; set tls_cert and tls_key"));
            assert!(ready_rx.await.is_err());
        }

        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some("cert.pem".into()),
            tls_key: None,
        };
        let err = serve(Router::new(), &cfg, &HttpLimits::default(), async {}, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::IncompleteTls));

        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let limits = HttpLimits {
            max_concurrent: 0,
            ..HttpLimits::default()
        };
        let err = serve(Router::new(), &cfg, &limits, async {}, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::InvalidLimits(_)));
    }

    #[tokio::test]
    async fn bind_then_serve_on() {
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let listener = bind(&cfg).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let limits = HttpLimits::default();
        let router = app(&limits);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve_on(listener, router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        assert_eq!(ready_rx.await.unwrap(), addr);
        let resp = http_client()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();

        // The rule holds on the real address too, whatever the config claims.
        let wildcard = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let claims_loopback = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let err = serve_on(
            wildcard,
            Router::new(),
            &claims_loopback,
            &HttpLimits::default(),
            async {},
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, HttpError::PlainHttpNotLoopback { .. }),
            "{err}"
        );

        let off_loopback = ListenConfig {
            listen: "192.0.2.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        assert!(matches!(
            bind(&off_loopback),
            Err(HttpError::PlainHttpNotLoopback { .. })
        ));
    }

    #[test]
    fn loopback_ipv6_and_mapped_are_allowed() {
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("127.5.6.7".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }

    #[tokio::test]
    async fn tls_with_self_signed_cert() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, key.cert.pem()).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();

        let limits = HttpLimits::default();
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
        };
        let router = app(&limits);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        let addr = ready_rx.await.unwrap();

        let root = reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap();
        let trusting = http_client_builder()
            .tls_certs_only([root])
            .resolve("localhost", addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/health", addr.port());
        let resp = trusting.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);
        assert_eq!(resp.text().await.unwrap(), "ok");

        let resp = trusting
            .post(format!("https://localhost:{}/echo", addr.port()))
            .header("content-type", "application/json")
            .body(r#"{"a":1,"a":2}"#)
            .send()
            .await
            .unwrap();
        problem(resp, 400, "duplicate-key").await;

        let untrusting = http_client_builder()
            .resolve("localhost", addr)
            .build()
            .unwrap();
        assert!(untrusting.get(&url).send().await.is_err());

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn client_policy() {
        let srv = start(HttpLimits::default()).await;
        let c = client();
        let resp = c
            .get(format!("{}/redirect", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307, "redirects must not be followed");
        let ua = c.get(format!("{}/ua", srv.base)).send().await.unwrap();
        assert_eq!(
            ua.text().await.unwrap(),
            format!("fedgate/{}", env!("CARGO_PKG_VERSION"))
        );
        srv.stop().await;
    }

    #[test]
    fn strict_parse_rules() {
        let slug = |b: &[u8]| parse_strict_json(b).unwrap_err().slug().map(str::to_owned);
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_strict_json(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            slug(nested(MAX_JSON_DEPTH + 1).as_bytes()).as_deref(),
            Some("too-deep")
        );
        // Brackets inside strings, including after escaped quotes, do not count.
        let in_string = format!(r#"{{"k":"\"{}\\"}}"#, "[".repeat(1000));
        assert!(
            parse_strict_json(in_string.as_bytes()).is_ok(),
            "{in_string}"
        );

        assert_eq!(slug(br#"{"a":1,"a":1}"#).as_deref(), Some("duplicate-key"));
        assert_eq!(
            slug(br#"[{"b":{"c":[{"d":1,"d":2}]}}]"#).as_deref(),
            Some("duplicate-key")
        );
        // Same key after unescaping.
        assert_eq!(
            slug(br#"{"a":1,"\u0061":2}"#).as_deref(),
            Some("duplicate-key")
        );
        assert!(parse_strict_json(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#).is_ok());

        assert_eq!(slug(b"\"\xc3\x28\"").as_deref(), Some("invalid-utf8"));
        assert_eq!(slug(b"{").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"[1,]").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"\"\\ud800\"").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"1 2").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"\xef\xbb\xbf{}").as_deref(), Some("malformed-json"));
        assert_eq!(
            parse_strict_json(
                br#"{"n":-1,"f":1.5,"u":18446744073709551615,"s":"\u00e9","z":null,"t":true}"#
            )
            .unwrap(),
            serde_json::json!({"n":-1,"f":1.5,"u":18446744073709551615u64,"s":"é","z":null,"t":true})
        );
        let err = parse_strict_json(b"{").unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_content_types() {
        let check = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            is_json_content_type(&headers)
        };
        assert!(check(&["application/json"]));
        assert!(check(&["Application/JSON; charset=UTF-8"]));
        assert!(check(&["application/vc+json"]));
        assert!(check(&["application/problem+json"]));
        assert!(!check(&[]));
        assert!(!check(&["application/+json"]));
        assert!(!check(&["text/json"]));
        assert!(!check(&["application/jsonx"]));
        assert!(!check(&["application/json; charset=utf-16"]));
        assert!(!check(&["application/json", "application/json"]));
    }

    #[test]
    fn problem_document_shape() {
        let p = bad_request("malformed-json", "oops")
            .with("check", "schema")
            .with("title", "shadow")
            .with_instance("/x");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "https://w3id.org/fedgate/problems/malformed-json",
                "title": "Bad Request",
                "status": 400,
                "detail": "oops",
                "instance": "/x",
                "check": "schema",
            })
        );
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.extensions["check"], "schema");
        assert_eq!(back.slug(), Some("malformed-json"));
        assert_eq!(
            Problem::new(StatusCode::CONFLICT, "", "Conflict", "x").r#type,
            "about:blank"
        );

        let resp = unauthorized("no token").into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(resp.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(internal("secret").detail, GENERIC_INTERNAL_DETAIL);
    }

    #[test]
    fn limits_config() {
        let limits: HttpLimits = toml_like(r#"{"max_body_bytes": 10}"#);
        assert_eq!(limits.max_body_bytes, 10);
        assert_eq!(limits.request_timeout_secs, 30);
        assert_eq!(limits.max_concurrent, 512);
        assert_eq!(limits.header_read_timeout_secs, 10);
        assert!(serde_json::from_str::<HttpLimits>(r#"{"max_body_byte": 10}"#).is_err());
        let listen: ListenConfig = toml_like(r#"{"listen": "127.0.0.1:8443"}"#);
        assert!(listen.tls_cert.is_none() && listen.tls_key.is_none());
    }

    fn toml_like<T: DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
