//! The strict JSON body extractor (`StrictJson`, in place of `axum::Json`): content type,
//! size, UTF-8, nesting and duplicate keys are checked by `federation::json` before a
//! handler's type is deserialized, and every refusal is a problem. Separate from the
//! middleware: it runs per handler, on the body the middleware already read.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use federation::json::StrictJsonError;

use crate::http::problem::{
    bad_request, payload_too_large, truncate_chars, unprocessable, unsupported_media_type, Problem,
    MAX_ECHOED_CHARS,
};

/// Request body extractor replacing `axum::Json`: JSON content type, size limit, UTF-8,
/// bounded nesting and unique object keys are enforced before `T` is deserialized.
/// Every rejection is a [`Problem`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrictJson<T>(pub T);

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
pub(super) fn is_json_content_type(headers: &HeaderMap) -> bool {
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
pub(crate) fn parse_strict_json(bytes: &[u8]) -> Result<Value, Problem> {
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
