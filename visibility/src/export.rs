//! Exports of the auditor API besides the FHIR Bundle (`audit::export`): the same events
//! as CSV, and the signed evidence package ([`crate::evidence`]) an outside auditor
//! verifies offline.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Value};

use crate::evidence::{Entry, Package, FORMAT};
use crate::query::{find_events, query, read_back, EventsQuery, Parsed, MAX_LIMIT};
use crate::store::Store;
use crate::{VisibilityError, VisibilityState};

type AppState = State<Arc<VisibilityState>>;

/// A CSV document (RFC 4180, CRLF line ends). Cells that a spreadsheet would read as a
/// formula are prefixed with `'`.
pub(crate) struct Csv {
    text: String,
}

impl Csv {
    pub(crate) fn new(header: &[&str]) -> Csv {
        let mut csv = Csv {
            text: String::new(),
        };
        csv.row(&header.iter().map(|h| (*h).to_string()).collect::<Vec<_>>());
        csv
    }

    fn cell(value: &str) -> String {
        let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{value}")
        } else {
            value.to_string()
        };
        if value.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value
        }
    }

    pub(crate) fn row(&mut self, cells: &[String]) {
        let line: Vec<String> = cells.iter().map(|c| Self::cell(c)).collect();
        self.text.push_str(&line.join(","));
        self.text.push_str("\r\n");
    }

    pub(crate) fn response(self, filename: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{filename}\""),
                ),
            ],
            self.text,
        )
            .into_response()
    }
}

/// The page size of the exports when none is given: as much as one answer holds.
fn export_limit(q: &EventsQuery) -> EventsQuery {
    EventsQuery {
        limit: Some(q.limit.unwrap_or(MAX_LIMIT)),
        ..q.clone()
    }
}

/// Adds the cursor of the next page as a header, when there is one.
fn with_next(mut response: Response, cursor: Option<String>) -> Response {
    if let Some(value) = cursor.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert("fedgate-next-cursor", value);
    }
    response
}

/// `GET /v1/audit/export/csv`: the events `/v1/audit/events` would return (same filters;
/// 1000 a page unless `limit` says otherwise), newest first, as CSV. The next page's
/// cursor, when the answer was cut, is in the `Fedgate-Next-Cursor` header.
#[utoipa::path(get, path = "/v1/audit/export/csv", tag = "audit", params(EventsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "CSV, one event a row", body = String,
            content_type = "text/csv"),
        (status = 400, description = "Malformed parameters", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn csv(
    State(s): AppState,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, VisibilityError> {
    s.sessions.check(&headers)?;
    let p = Parsed::new(&s, &export_limit(&query(q)?))?;
    let page = find_events(&s, &p.filter, p.limit, p.before)?;
    let mut csv = Csv::new(&[
        "leafIndex",
        "time",
        "custodian",
        "requesterOrg",
        "requester",
        "domain",
        "purpose",
        "decision",
        "failedCheck",
        "reasons",
        "dataClasses",
        "recordCount",
        "breakGlass",
        "review",
        "reviewDue",
        "patientRef",
        "decisionId",
        "eventId",
    ]);
    for found in &page.events {
        let e = read_back(found)?;
        let text = |k: &str| found[k].as_str().unwrap_or("").to_string();
        csv.row(&[
            found["leafIndex"].to_string(),
            federation::time::rfc3339(e.time),
            e.custodian,
            e.requester_org.unwrap_or_default(),
            e.requester.unwrap_or_default(),
            e.domain,
            e.purpose,
            format!("{:?}", e.decision).to_lowercase(),
            e.failed_check.unwrap_or_default(),
            e.reasons.join("; "),
            e.data_classes.join(" "),
            e.record_count.to_string(),
            e.break_glass.to_string(),
            text("review"),
            text("reviewDue"),
            e.patient_ref.unwrap_or_default(),
            e.decision_id,
            e.id,
        ]);
    }
    let cursor = page
        .next
        .map(|n| crate::query::encode_cursor(&s.cursor_key, &p.filter, n));
    Ok(with_next(csv.response("audit-events.csv"), cursor))
}

/// `GET /v1/audit/evidence`: a signed evidence package for one patient (`patient_ref` or
/// `patient_did_digest`) or one time range (`from` and `to`), with any other filters: the
/// matching events' leaves exactly as logged, each with its inclusion proof in the signed
/// checkpoint in force, the checkpoint, and the query; signed as a whole by the log's
/// checkpoint key. Up to 1000 events (`limit`); `complete` is false and
/// `Fedgate-Next-Cursor` continues when more matched. Verify offline with
/// `fedgate visibility verify-evidence FILE`.
/// A signed evidence package for one patient or one time range (auditor session).
#[utoipa::path(get, path = "/v1/audit/evidence", tag = "audit", params(EventsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{format, package, signature, signer}`", body = Object),
        (status = 400, description = "Malformed parameters, or neither a patient nor a time range",
            body = service::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn evidence(
    State(s): AppState,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, VisibilityError> {
    let session = s.sessions.check(&headers)?;
    let q = export_limit(&query(q)?);
    let p = Parsed::new(&s, &q)?;
    let f = &p.filter;
    let scoped = f.patient_ref.is_some()
        || f.patient_did_digest.is_some()
        || (f.from.is_some() && f.to.is_some());
    if !scoped {
        return Err(VisibilityError::bad_request(
            "evidence-scope",
            "an evidence package covers one patient (patient_ref or patient_did_digest) \
             or one time range (from and to)",
        ));
    }
    if f.review.is_some() {
        return Err(VisibilityError::bad_request(
            "evidence-scope",
            "review states change after the fact: an evidence package cannot be filtered by one",
        ));
    }
    let page = find_events(&s, f, p.limit, p.before)?;
    let highest = page
        .events
        .iter()
        .filter_map(|e| e["leafIndex"].as_u64())
        .max();
    let published = s.covering(highest.map_or(0, |h| h + 1)).await?;
    let snapshot = s.store.db.read()?;
    let mut view = s.store.log.view(&snapshot)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::with_capacity(page.events.len());
    for found in &page.events {
        let Some(index) = found["leafIndex"].as_u64() else {
            continue;
        };
        let leaf = view.leaf(index)?;
        entries.push(Entry {
            leaf_index: index,
            leaf: b64.encode(&leaf),
            entry: serde_json::to_value(Store::entry_in(&view, index)?)
                .map_err(|e| VisibilityError::Storage(format!("{:?}", e.classify())))?,
            proof: view
                .inclusion_proof(index, published.size)?
                .iter()
                .map(hex::encode)
                .collect(),
        });
    }
    drop(view);
    drop(snapshot);
    let mut scope = serde_json::to_value(EventsQuery {
        limit: None,
        before: None,
        cursor: None,
        ..q.clone()
    })
    .map_err(|e| VisibilityError::Storage(format!("{:?}", e.classify())))?;
    if let Value::Object(m) = &mut scope {
        m.retain(|_, v| !v.is_null());
    }
    let package = Package {
        log: s.config.did.clone(),
        created_at: federation::time::rfc3339(Utc::now()),
        created_by: session.auditor.clone(),
        query: scope,
        checkpoint: published.note.clone(),
        complete: page.next.is_none(),
        entries,
    };
    let text = serde_json::to_string(&package)
        .map_err(|e| VisibilityError::Storage(format!("{:?}", e.classify())))?;
    let signature = b64.encode(s.signer.sign_bytes(text.as_bytes()));
    tracing::info!(organization = %session.organization, events = package.entries.len(), "evidence package issued");
    let file = json!({
        "format": FORMAT,
        "package": text,
        "signature": signature,
        "signer": s.note_verifier.vkey(),
        "verify": "fedgate visibility verify-evidence FILE [--key CHECKPOINT-VERIFIER-KEY]",
    });
    let cursor = page
        .next
        .map(|n| crate::query::encode_cursor(&s.cursor_key, f, n));
    let response = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"evidence.json\"",
            ),
        ],
        axum::Json(file),
    )
        .into_response();
    Ok(with_next(response, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let mut csv = Csv::new(&["a", "b"]);
        csv.row(&["x,y".into(), "say \"hi\"".into()]);
        csv.row(&["=HYPERLINK(1)".into(), "line\nbreak".into()]);
        assert_eq!(
            csv.text,
            "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n'=HYPERLINK(1),\"line\nbreak\"\r\n"
        );
    }
}
