//! RFC 9457 problem details: the one error document every fedgate service answers with,
//! and the constructors handlers and layers use. A file of its own because every other
//! part of the HTTP layer (strict JSON, the middleware, the services' error enums) speaks
//! in problems, while problems depend on none of them.

use std::fmt;

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Base URI of fedgate problem types; a slug is appended.
const PROBLEM_TYPE_BASE: &str = "https://w3id.org/fedgate/problems/";

/// Media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Client-controlled text echoed in a problem detail is cut to this many characters, so
/// a hostile body cannot inflate error responses or logs.
pub(super) const MAX_ECHOED_CHARS: usize = 200;

const PROBLEM_FIELDS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

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
    pub(crate) r#type: String,
    #[serde(default)]
    title: String,
    status: u16,
    #[serde(default)]
    pub(crate) detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// Extension members such as `check`, `decision_id` or `reasons`.
    #[serde(flatten)]
    pub(crate) extensions: Map<String, Value>,
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
    #[cfg(test)]
    pub(crate) fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds a header sent along with this problem.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The HTTP status (500 if the stored number is not a valid status).
    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The slug of a fedgate problem type, `None` for `about:blank` or foreign types.
    #[cfg(test)]
    pub(crate) fn slug(&self) -> Option<&str> {
        self.r#type.strip_prefix(PROBLEM_TYPE_BASE)
    }

    /// The generic problem for a bare status, used when something other than a handler
    /// (router, limits, timeouts) produced the error.
    pub(crate) fn for_status(status: StatusCode) -> Self {
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

pub(super) const GENERIC_INTERNAL_DETAIL: &str = "an internal error occurred";

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
pub(crate) fn unsupported_media_type(detail: impl Into<String>) -> Problem {
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

pub(super) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
