//! Event queries shared by the auditor API, its exports and the dashboard: the filters as
//! a request names them, checked once, and the walk over the log that applies them.
//!
//! Every filter value is checked before anything is read: codes against the federation's
//! closed vocabularies (purpose, domain, verification check), digests as lowercase hex,
//! times as RFC 3339 with a range of at most [`MAX_RANGE_DAYS`] days, other values bounded
//! in length. A bad value is a 400 naming the parameter, never a search that finds nothing.
//!
//! Paging is newest first. A page's `cursor` is opaque: the leaf to continue below, bound
//! by a MAC to the filters it was issued for, so that a cursor altered or replayed with
//! other filters is refused (400) instead of silently paging something else. The plain
//! `before` leaf bound of earlier clients is still read.

use std::ops::ControlFlow;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use federation::events::{AccessEvent, Outcome, DOMAINS, PURPOSES, VERIFICATION_CHECKS};

use crate::store::{Index, Store};
use crate::{LogEntry, VisibilityError, VisibilityState};

/// Most events one query returns.
pub(crate) const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Most leaves one query examines; past this it returns a cursor to continue from.
const MAX_SCAN: usize = 100_000;
/// Longest filter value accepted (DIDs, pseudonyms).
const MAX_VALUE_BYTES: usize = 512;
/// Widest time range one query may name (a leap year).
pub(crate) const MAX_RANGE_DAYS: i64 = 366;

type CursorMac = Hmac<Sha256>;

/// The query string of the event endpoints (`/v1/audit/events`, its exports, the
/// evidence package).
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// The patient's pseudonym at its custodian.
    pub(crate) patient_ref: Option<String>,
    /// SHA-256 of the patient's DID, 64 lowercase hex digits.
    pub(crate) patient_did_digest: Option<String>,
    /// The custodian organization's DID.
    pub(crate) custodian: Option<String>,
    /// The requester or the requester's organization (either matches).
    pub(crate) requester: Option<String>,
    /// The requester's organization.
    pub(crate) requester_org: Option<String>,
    /// A purpose of use (HL7 v3 code, e.g. `TREAT`).
    pub(crate) purpose: Option<String>,
    /// `clinical`, `billing`, `research`, `consent` or `detokenize`.
    pub(crate) domain: Option<String>,
    /// `allow` or `deny`.
    pub(crate) decision: Option<String>,
    /// The verification check that failed (`format`, `proof`, `challenge`, ...).
    pub(crate) failed_check: Option<String>,
    /// `true`: break-glass accesses only; `false`: none of them.
    pub(crate) break_glass: Option<String>,
    /// `pending`, `overdue` or `resolved`: break-glass accesses in that review state.
    pub(crate) review: Option<String>,
    /// From this time (RFC 3339), inclusive.
    pub(crate) from: Option<String>,
    /// Up to this time (RFC 3339), inclusive.
    pub(crate) to: Option<String>,
    /// Events per page, 1 to 1000 (100 by default).
    pub(crate) limit: Option<usize>,
    /// Only leaves below this index (the `next` of a previous answer).
    pub(crate) before: Option<u64>,
    /// The `cursor` of a previous answer with the same filters.
    pub(crate) cursor: Option<String>,
}

/// Where a break-glass access stands in its review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReviewState {
    /// Awaiting review, before its deadline.
    Pending,
    /// Awaiting review past its deadline.
    Overdue,
    /// Resolved with a note.
    Resolved,
}

impl ReviewState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReviewState::Pending => "pending",
            ReviewState::Overdue => "overdue",
            ReviewState::Resolved => "resolved",
        }
    }
}

/// The filters of an events query, checked.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Filter {
    pub(crate) patient_ref: Option<String>,
    pub(crate) patient_did_digest: Option<String>,
    pub(crate) custodian: Option<String>,
    pub(crate) requester: Option<String>,
    pub(crate) requester_org: Option<String>,
    pub(crate) purpose: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) decision: Option<Outcome>,
    pub(crate) failed_check: Option<String>,
    pub(crate) break_glass: Option<bool>,
    pub(crate) review: Option<ReviewState>,
    pub(crate) from: Option<DateTime<Utc>>,
    pub(crate) to: Option<DateTime<Utc>>,
}

/// A checked query: its filters, page size and where the page starts.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) filter: Filter,
    pub(crate) limit: usize,
    /// Leaves below this index only.
    pub(crate) before: u64,
}

fn invalid(detail: impl Into<String>) -> VisibilityError {
    VisibilityError::bad_request("invalid-query", detail)
}

fn code(
    name: &str,
    value: Option<String>,
    set: &[&str],
) -> Result<Option<String>, VisibilityError> {
    match value {
        Some(v) if !set.contains(&v.as_str()) => {
            Err(invalid(format!("{name} must be one of {}", set.join(", "))))
        }
        other => Ok(other),
    }
}

fn bounded(name: &str, value: Option<String>) -> Result<Option<String>, VisibilityError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_VALUE_BYTES || v.chars().any(char::is_control) => {
            Err(invalid(format!(
                "{name} must have 1 to {MAX_VALUE_BYTES} bytes and no control characters"
            )))
        }
        other => Ok(other),
    }
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, VisibilityError> {
    value
        .map(|t| {
            federation::time::parse(&t)
                .ok_or_else(|| invalid(format!("{name} must be an RFC 3339 date-time")))
        })
        .transpose()
}

impl Filter {
    /// Checks every filter of `q` (not its paging).
    pub(crate) fn from_query(q: &EventsQuery) -> Result<Filter, VisibilityError> {
        let q = q.clone();
        let decision = match q.decision.as_deref() {
            None => None,
            Some("allow") => Some(Outcome::Allow),
            Some("deny") => Some(Outcome::Deny),
            Some(_) => return Err(invalid("decision must be allow or deny")),
        };
        let break_glass = match q.break_glass.as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(invalid("break_glass must be true or false")),
        };
        let review = match q.review.as_deref() {
            None => None,
            Some("pending") => Some(ReviewState::Pending),
            Some("overdue") => Some(ReviewState::Overdue),
            Some("resolved") => Some(ReviewState::Resolved),
            Some(_) => return Err(invalid("review must be pending, overdue or resolved")),
        };
        if let Some(d) = &q.patient_did_digest {
            let hex = d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(invalid(
                    "patient_did_digest must be a SHA-256 digest: 64 lowercase hex digits",
                ));
            }
        }
        let (from, to) = (time("from", q.from)?, time("to", q.to)?);
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(invalid("from must not be after to"));
            }
            if t - f > chrono::Duration::days(MAX_RANGE_DAYS) {
                return Err(invalid(format!(
                    "the time range may span at most {MAX_RANGE_DAYS} days"
                )));
            }
        }
        Ok(Filter {
            patient_ref: bounded("patient_ref", q.patient_ref)?,
            patient_did_digest: q.patient_did_digest,
            custodian: bounded("custodian", q.custodian)?,
            requester: bounded("requester", q.requester)?,
            requester_org: bounded("requester_org", q.requester_org)?,
            purpose: code("purpose", q.purpose, &PURPOSES)?,
            domain: code("domain", q.domain, &DOMAINS)?,
            decision,
            failed_check: code("failed_check", q.failed_check, &VERIFICATION_CHECKS)?,
            break_glass,
            review,
            from,
            to,
        })
    }

    /// Whether `e`, whose review stands at `review` (None: it needs none), matches.
    pub(crate) fn matches(&self, e: &AccessEvent, review: Option<ReviewState>) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        eq(&self.custodian, Some(&e.custodian))
            && eq(&self.patient_ref, e.patient_ref.as_ref())
            && self
                .patient_did_digest
                .as_ref()
                .is_none_or(|d| e.patient_did_digests.contains(d))
            && self.requester.as_ref().is_none_or(|r| {
                e.requester.as_ref() == Some(r) || e.requester_org.as_ref() == Some(r)
            })
            && eq(&self.requester_org, e.requester_org.as_ref())
            && eq(&self.purpose, Some(&e.purpose))
            && eq(&self.domain, Some(&e.domain))
            && self.decision.is_none_or(|d| e.decision == d)
            && eq(&self.failed_check, e.failed_check.as_ref())
            && self.break_glass.is_none_or(|b| e.break_glass == b)
            && self.review.is_none_or(|r| review == Some(r))
            && self.from.is_none_or(|f| e.time >= f)
            && self.to.is_none_or(|t| e.time <= t)
    }

    /// The bytes a cursor's MAC covers besides its leaf: every filter, unambiguously.
    fn canonical(&self) -> Vec<u8> {
        let time = |t: &Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros().to_string());
        let parts: [Option<String>; 13] = [
            self.patient_ref.clone(),
            self.patient_did_digest.clone(),
            self.custodian.clone(),
            self.requester.clone(),
            self.requester_org.clone(),
            self.purpose.clone(),
            self.domain.clone(),
            self.decision.map(|d| format!("{d:?}")),
            self.failed_check.clone(),
            self.break_glass.map(|b| b.to_string()),
            self.review.map(|r| r.as_str().to_string()),
            time(&self.from),
            time(&self.to),
        ];
        let mut out = Vec::new();
        for p in parts {
            match p {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out
    }
}

/// The key of page cursors: derived from the service's signing key, so that every process
/// sharing a log (and a restarted one) reads the cursors the others issued.
pub(crate) fn cursor_key(signing_key: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"fedgate visibility page cursor v1\0")
        .chain_update(signing_key)
        .finalize()
        .into()
}

fn cursor_mac(key: &[u8; 32], filter: &Filter, before: u64) -> CursorMac {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <CursorMac as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(&filter.canonical());
    mac.update(&before.to_be_bytes());
    mac
}

/// The opaque cursor continuing `filter` below leaf `before`.
pub(crate) fn encode_cursor(key: &[u8; 32], filter: &Filter, before: u64) -> String {
    let tag = cursor_mac(key, filter, before).finalize().into_bytes();
    format!("{before}.{}", hex::encode(&tag[..16]))
}

/// The leaf a cursor continues below, if this service issued it for `filter`.
fn decode_cursor(key: &[u8; 32], filter: &Filter, cursor: &str) -> Result<u64, VisibilityError> {
    let forged = || {
        VisibilityError::bad_request(
            "invalid-cursor",
            "the cursor is not one this service issued for these filters",
        )
    };
    let (leaf, tag) = cursor.split_once('.').ok_or_else(forged)?;
    if leaf.is_empty() || leaf.len() > 20 || !leaf.bytes().all(|b| b.is_ascii_digit()) {
        return Err(forged());
    }
    let before: u64 = leaf.parse().map_err(|_| forged())?;
    let tag = hex::decode(tag).map_err(|_| forged())?;
    if tag.len() != 16 {
        return Err(forged());
    }
    cursor_mac(key, filter, before)
        .verify_truncated_left(&tag)
        .map_err(|_| forged())?;
    Ok(before)
}

impl Parsed {
    /// Checks a whole query: filters, page size, cursor.
    pub(crate) fn new(s: &VisibilityState, q: &EventsQuery) -> Result<Parsed, VisibilityError> {
        let filter = Filter::from_query(q)?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let before = match (&q.cursor, q.before) {
            (Some(_), Some(_)) => return Err(invalid("give either cursor or before, not both")),
            (Some(c), None) => decode_cursor(&s.cursor_key, &filter, c)?,
            (None, Some(b)) => b,
            (None, None) => u64::MAX,
        };
        Ok(Parsed {
            filter,
            limit,
            before,
        })
    }
}

/// One page of events.
pub(crate) struct Page {
    /// `{leafIndex, event, review?, reviewDue?}`, newest first.
    pub(crate) events: Vec<Value>,
    /// The leaf to continue below, when the page was cut.
    pub(crate) next: Option<u64>,
}

impl Page {
    /// The answer of `/v1/audit/events`: `{events, next, cursor}`.
    pub(crate) fn to_json(&self, s: &VisibilityState, filter: &Filter) -> Value {
        json!({
            "events": self.events,
            "next": self.next,
            "cursor": self.next.map(|n| encode_cursor(&s.cursor_key, filter, n)),
        })
    }
}

impl VisibilityState {
    /// When a break-glass access's review is due.
    pub(crate) fn review_due(&self, e: &AccessEvent) -> DateTime<Utc> {
        let hours = i64::try_from(self.config.review_deadline_hours).unwrap_or(72);
        e.time + chrono::Duration::hours(hours)
    }

    /// Where `e`'s review stands (None: it needs none), given whether it is queued.
    pub(crate) fn review_state(
        &self,
        e: &AccessEvent,
        queued: bool,
        now: DateTime<Utc>,
    ) -> Option<ReviewState> {
        if !(e.break_glass && e.review_required) {
            None
        } else if !queued {
            Some(ReviewState::Resolved)
        } else if self.review_due(e) < now {
            Some(ReviewState::Overdue)
        } else {
            Some(ReviewState::Pending)
        }
    }
}

/// The JSON of one found event: `{leafIndex, event, review?, reviewDue?}`.
pub(crate) fn found_json(
    s: &VisibilityState,
    index: u64,
    event: &AccessEvent,
    review: Option<ReviewState>,
) -> Value {
    let mut v = json!({"leafIndex": index, "event": event});
    if let Some(r) = review {
        v["review"] = json!(r.as_str());
        v["reviewDue"] = json!(federation::time::rfc3339(s.review_due(event)));
    }
    v
}

/// Calls `f` with each access event matching `filter` below leaf `before`, newest first,
/// with its leaf index and review state, until `f` breaks or [`MAX_SCAN`] leaves were
/// examined. Returns the leaf to continue below when the walk was cut by `f` or the bound.
/// Read from one snapshot: the index, the leaves and the review queue agree.
pub(crate) fn walk(
    s: &VisibilityState,
    filter: &Filter,
    before: u64,
    mut f: impl FnMut(u64, AccessEvent, Option<ReviewState>) -> ControlFlow<()>,
) -> Result<Option<u64>, VisibilityError> {
    let snapshot = s.store.db.read()?;
    let view = s.store.log.view(&snapshot)?;
    let now = Utc::now();
    let mut next = None;
    let mut scanned = 0usize;
    let mut failed: Option<VisibilityError> = None;
    let mut visit = |index: u64| -> ControlFlow<()> {
        if scanned >= MAX_SCAN {
            next = Some(index + 1);
            return ControlFlow::Break(());
        }
        scanned += 1;
        let event = match Store::entry_in(&view, index) {
            Ok(LogEntry::Access { event }) => event,
            Ok(_) => return ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e.into());
                return ControlFlow::Break(());
            }
        };
        let review = if event.break_glass && event.review_required {
            match s.store.is_queued_at(&snapshot, &event.id) {
                Ok(queued) => s.review_state(&event, queued, now),
                Err(e) => {
                    failed = Some(e.into());
                    return ControlFlow::Break(());
                }
            }
        } else {
            None
        };
        if !filter.matches(&event, review) {
            return ControlFlow::Continue(());
        }
        let flow = f(index, event, review);
        if flow.is_break() {
            next = Some(index);
        }
        flow
    };
    let walked = if let Some(d) = &filter.patient_did_digest {
        s.store
            .lookup(&snapshot, Index::PatientDid, d, before, &mut visit)
    } else if let Some(r) = &filter.patient_ref {
        s.store
            .lookup(&snapshot, Index::PatientRef, r, before, &mut visit)
    } else if let Some(c) = &filter.custodian {
        s.store
            .lookup(&snapshot, Index::Custodian, c, before, &mut visit)
    } else {
        for index in (0..view.size().min(before)).rev() {
            if visit(index).is_break() {
                break;
            }
        }
        Ok(())
    };
    walked?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(next)
}

/// Events matching `filter`, newest first, at most `limit`, and the leaf to continue below
/// when the page was cut by `limit` or by the scan bound.
pub(crate) fn find_events(
    s: &VisibilityState,
    filter: &Filter,
    limit: usize,
    before: u64,
) -> Result<Page, VisibilityError> {
    let mut events = Vec::new();
    let mut full = false;
    let next = walk(s, filter, before, |index, event, review| {
        if events.len() == limit {
            // One more match exists: the page ends at the last one kept.
            full = true;
            return ControlFlow::Break(());
        }
        events.push(found_json(s, index, &event, review));
        ControlFlow::Continue(())
    })?;
    let next = if full {
        events.last().and_then(|v| v["leafIndex"].as_u64())
    } else {
        next
    };
    Ok(Page { events, next })
}

/// The event of a found item, read back. `find_events` serialized these AccessEvents
/// itself, so reading them back succeeds; if it ever did not, the export fails rather
/// than leave an event out of an audit.
pub(crate) fn read_back(found: &Value) -> Result<AccessEvent, VisibilityError> {
    serde_json::from_value::<AccessEvent>(found["event"].clone())
        // The category only: serde's message may quote the event's values.
        .map_err(|e| {
            VisibilityError::Storage(format!(
                "an event in the log does not read back ({:?})",
                e.classify()
            ))
        })
}

/// The query string, or a 400 naming what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, VisibilityError> {
    q.map(|Query(q)| q)
        .map_err(|e| VisibilityError::bad_request("invalid-query", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Filter, VisibilityError> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        let q = Query::<EventsQuery>::try_from_uri(&uri).unwrap().0;
        Filter::from_query(&q)
    }

    #[test]
    fn filters_are_checked_against_the_vocabularies() {
        assert!(parse("decision=maybe").is_err());
        assert!(parse("from=yesterday").is_err());
        assert!(parse("purpose=GOSSIP").is_err());
        assert!(parse("domain=payroll").is_err());
        assert!(parse("failed_check=vibes").is_err());
        assert!(parse("break_glass=yes").is_err());
        assert!(parse("review=later").is_err());
        assert!(parse("patient_did_digest=ABC").is_err());
        assert!(parse(&format!("custodian={}", "x".repeat(600))).is_err());
        assert!(parse("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z").is_err());
        assert!(parse("from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z").is_err());
        let f = parse("failed_check=proof&decision=deny&break_glass=false&review=overdue").unwrap();
        assert_eq!(f.failed_check.as_deref(), Some("proof"));
        assert_eq!(f.decision, Some(Outcome::Deny));
        assert_eq!(f.break_glass, Some(false));
        assert_eq!(f.review, Some(ReviewState::Overdue));
    }

    #[test]
    fn cursors_are_bound_to_their_filters_and_leaf() {
        let key = cursor_key(&[9; 32]);
        let deny = parse("decision=deny").unwrap();
        let allow = parse("decision=allow").unwrap();
        let c = encode_cursor(&key, &deny, 42);
        assert_eq!(decode_cursor(&key, &deny, &c).unwrap(), 42);
        assert!(decode_cursor(&key, &allow, &c).is_err(), "other filters");
        let (_, tag) = c.split_once('.').unwrap();
        assert!(decode_cursor(&key, &deny, &format!("41.{tag}")).is_err());
        assert!(decode_cursor(&cursor_key(&[8; 32]), &deny, &c).is_err());
        for junk in [
            "",
            ".",
            "42",
            "42.",
            "x.00",
            "42.zz",
            "99999999999999999999999.00",
        ] {
            assert!(decode_cursor(&key, &deny, junk).is_err(), "{junk}");
        }
    }
}
