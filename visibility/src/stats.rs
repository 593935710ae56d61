//! `GET /v1/audit/stats`: the figures behind the dashboard's charts, counted over the log
//! for one time range (an hour to a year) in buckets of an hour, a day or a week.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use federation::events::Outcome;

use crate::query::{query, walk, EventsQuery, Filter, ReviewState, MAX_RANGE_DAYS};
use crate::{VisibilityError, VisibilityState};

type AppState = State<Arc<VisibilityState>>;

/// Organizations named in the top list.
const TOP: usize = 10;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatsQuery {
    /// Start of the range (RFC 3339); by default 30 days before `to`.
    from: Option<String>,
    /// End of the range (RFC 3339); by default now.
    to: Option<String>,
    /// Only this custodian's events.
    custodian: Option<String>,
    /// `hour`, `day` or `week`; by default the one that gives at most ~200 buckets.
    bucket: Option<String>,
}

fn invalid(detail: impl Into<String>) -> VisibilityError {
    VisibilityError::bad_request("invalid-query", detail)
}

fn bucket_of(name: &str) -> Option<Duration> {
    match name {
        "hour" => Some(Duration::hours(1)),
        "day" => Some(Duration::days(1)),
        "week" => Some(Duration::weeks(1)),
        _ => None,
    }
}

fn bucket_name(d: Duration) -> &'static str {
    if d == Duration::hours(1) {
        "hour"
    } else if d == Duration::days(1) {
        "day"
    } else {
        "week"
    }
}

/// Counts per bucket, for one series.
fn series<'a>(map: &'a mut BTreeMap<String, Vec<u64>>, name: &str, n: usize) -> &'a mut Vec<u64> {
    map.entry(name.to_string()).or_insert_with(|| vec![0; n])
}

/// A study's budget at one custodian: spent, queries, left, and when last seen.
type Budget = (u64, u64, u64, DateTime<Utc>);

/// `GET /v1/audit/stats`: accesses per bucket by custodian and by decision, denials by
/// failing check (in total and per bucket), break-glass accesses per week with how many
/// are still unreviewed past their deadline, the top requester organizations, and each
/// research study's privacy budget (last figures seen per study and custodian).
/// Chart figures over a time range (auditor session).
#[utoipa::path(get, path = "/v1/audit/stats", tag = "audit", params(StatsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{from, to, bucket, buckets, byCustodian, byDecision, denialsByCheck, denialsByCheckOverTime, breakGlassWeekly, topRequesterOrgs, privacy, counted, truncated}`",
            body = Object),
        (status = 400, description = "Malformed parameters, or a range under an hour or over a year",
            body = service::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn stats(
    State(s): AppState,
    headers: HeaderMap,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    let q = query(q)?;
    let now = Utc::now();
    let parse =
        |name: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, VisibilityError> {
            v.as_ref()
                .map(|t| {
                    federation::time::parse(t)
                        .ok_or_else(|| invalid(format!("{name} must be an RFC 3339 date-time")))
                })
                .transpose()
        };
    let to = parse("to", &q.to)?.unwrap_or(now);
    let from = parse("from", &q.from)?.unwrap_or(to - Duration::days(30));
    if to - from < Duration::hours(1) || to - from > Duration::days(MAX_RANGE_DAYS) {
        return Err(invalid(format!(
            "the range must span an hour to {MAX_RANGE_DAYS} days"
        )));
    }
    let bucket = match q.bucket.as_deref() {
        Some(b) => bucket_of(b).ok_or_else(|| invalid("bucket must be hour, day or week"))?,
        None if to - from <= Duration::days(7) => Duration::hours(1),
        None if to - from <= Duration::days(120) => Duration::days(1),
        None => Duration::weeks(1),
    };
    let start = from
        .duration_trunc(bucket)
        .map_err(|_| invalid("from is out of range"))?;
    let n = usize::try_from(((to - start).num_seconds() / bucket.num_seconds()) + 1)
        .unwrap_or(1)
        .max(1);
    if n > 24 * 31 + 1 {
        return Err(invalid(
            "too many buckets: choose a longer bucket for this range",
        ));
    }
    let week = Duration::weeks(1);
    let week_start = from
        .duration_trunc(week)
        .map_err(|_| invalid("from is out of range"))?;
    let weeks = usize::try_from(((to - week_start).num_seconds() / week.num_seconds()) + 1)
        .unwrap_or(1)
        .max(1);
    // The range's filters, checked as the events' are.
    let filter = Filter::from_query(&EventsQuery {
        custodian: q.custodian.clone(),
        from: Some(federation::time::rfc3339(from)),
        to: Some(federation::time::rfc3339(to)),
        ..EventsQuery::default()
    })?;

    let mut by_custodian: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut by_decision: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut checks_over_time: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut denials: BTreeMap<String, u64> = BTreeMap::new();
    let mut glass = vec![0u64; weeks];
    let mut glass_overdue = vec![0u64; weeks];
    let mut orgs: HashMap<String, (u64, u64)> = HashMap::new();
    let mut privacy: BTreeMap<(String, String), Budget> = BTreeMap::new();
    let mut counted = 0u64;
    let next = walk(&s, &filter, u64::MAX, |_, e, review| {
        counted += 1;
        let slot = usize::try_from((e.time - start).num_seconds() / bucket.num_seconds())
            .unwrap_or(0)
            .min(n - 1);
        series(&mut by_custodian, &e.custodian, n)[slot] += 1;
        let decision = match e.decision {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        };
        series(&mut by_decision, decision, n)[slot] += 1;
        if e.decision == Outcome::Deny {
            let check = e.failed_check.as_deref().unwrap_or("policy");
            *denials.entry(check.to_string()).or_default() += 1;
            series(&mut checks_over_time, check, n)[slot] += 1;
        }
        if e.break_glass {
            let w = usize::try_from((e.time - week_start).num_seconds() / week.num_seconds())
                .unwrap_or(0)
                .min(weeks - 1);
            glass[w] += 1;
            if review == Some(ReviewState::Overdue) {
                glass_overdue[w] += 1;
            }
        }
        if let Some(org) = &e.requester_org {
            let entry = orgs.entry(org.clone()).or_default();
            entry.0 += 1;
            if e.decision == Outcome::Deny {
                entry.1 += 1;
            }
        }
        if let Some(p) = &e.privacy {
            let k = (p.study.clone(), e.custodian.clone());
            let row = privacy.entry(k).or_insert((0, 0, u64::MAX, e.time));
            row.0 += p.epsilon_micro;
            row.1 += 1;
            // Newest first: the first figure seen is the latest.
            if row.2 == u64::MAX {
                row.2 = p.budget_left_micro;
                row.3 = e.time;
            }
        }
        ControlFlow::Continue(())
    })?;
    let mut top: Vec<(String, (u64, u64))> = orgs.into_iter().collect();
    top.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP);
    let buckets: Vec<String> = (0..n)
        .map(|i| federation::time::rfc3339(start + bucket * i as i32))
        .collect();
    let week_labels: Vec<String> = (0..weeks)
        .map(|i| federation::time::rfc3339(week_start + week * i as i32))
        .collect();
    Ok(Json(json!({
        "from": federation::time::rfc3339(from),
        "to": federation::time::rfc3339(to),
        "bucket": bucket_name(bucket),
        "buckets": buckets,
        "byCustodian": by_custodian,
        "byDecision": by_decision,
        "denialsByCheck": denials,
        "denialsByCheckOverTime": checks_over_time,
        "breakGlassWeekly": {
            "weeks": week_labels,
            "count": glass,
            "unreviewedOverdue": glass_overdue,
        },
        "topRequesterOrgs": top.into_iter().map(|(org, (count, denied))| json!({
            "org": org, "count": count, "denied": denied,
        })).collect::<Vec<_>>(),
        "privacy": privacy.into_iter().map(|((study, custodian), (spent, queries, left, at))| json!({
            "study": study,
            "custodian": custodian,
            "queries": queries,
            "epsilonSpentMicro": spent,
            "budgetLeftMicro": left,
            "asOf": federation::time::rfc3339(at),
        })).collect::<Vec<_>>(),
        "counted": counted,
        "truncated": next.is_some(),
    })))
}
