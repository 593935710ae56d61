//! Aggregate-only cohort queries for research: counts and means per age band over the
//! patients who registered research consent, with small-cell and complementary
//! suppression. No record-level value or identifier is ever part of a result.

use crate::records::{is_fhir_id, RecordError, RecordSource};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};

pub const MAX_CODES: usize = 50;
pub const MAX_BANDS: usize = 20;
pub const MAX_AGE: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum ResearchError {
    #[error("invalid cohort query: {0}")]
    Invalid(String),
    #[error(transparent)]
    Records(#[from] RecordError),
}

/// A cohort: patients with any of `conditions` (empty: no condition filter), whose latest
/// `observation` value is in range, of `sex`, counted per age band (inclusive bounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCohortQuery")]
pub struct CohortQuery {
    pub conditions: Vec<String>,
    pub observation: Option<ObservationFilter>,
    pub sex: Option<String>,
    pub age_bands: Vec<(u32, u32)>,
}

/// The latest Observation with this LOINC `code` (in `code` or a `component`), its value
/// within `[min, max]` when given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationFilter {
    pub code: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCohortQuery {
    #[serde(default)]
    conditions: Vec<String>,
    #[serde(default)]
    observation: Option<ObservationFilter>,
    #[serde(default)]
    sex: Option<String>,
    #[serde(default = "default_bands")]
    age_bands: Vec<(u32, u32)>,
}

fn default_bands() -> Vec<(u32, u32)> {
    vec![(0, 17), (18, 44), (45, 64), (65, 200)]
}

impl TryFrom<RawCohortQuery> for CohortQuery {
    type Error = ResearchError;

    fn try_from(raw: RawCohortQuery) -> Result<Self, Self::Error> {
        let q = CohortQuery {
            conditions: raw.conditions,
            observation: raw.observation,
            sex: raw.sex,
            age_bands: raw.age_bands,
        };
        q.validate()?;
        Ok(q)
    }
}

impl Default for CohortQuery {
    fn default() -> Self {
        CohortQuery {
            conditions: Vec::new(),
            observation: None,
            sex: None,
            age_bands: default_bands(),
        }
    }
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

impl CohortQuery {
    pub fn validate(&self) -> Result<(), ResearchError> {
        let invalid = |m: String| Err(ResearchError::Invalid(m));
        if self.conditions.len() > MAX_CODES {
            return invalid(format!("at most {MAX_CODES} condition codes"));
        }
        if let Some(c) = self.conditions.iter().find(|c| !is_code(c)) {
            return invalid(format!(
                "condition code {:?} is not a code",
                c.chars().take(64).collect::<String>()
            ));
        }
        if let Some(o) = &self.observation {
            if !is_code(&o.code) {
                return invalid("observation.code is not a code".into());
            }
            if o.min.is_some_and(|v| !v.is_finite()) || o.max.is_some_and(|v| !v.is_finite()) {
                return invalid("observation bounds must be finite numbers".into());
            }
            if let (Some(min), Some(max)) = (o.min, o.max) {
                if min > max {
                    return invalid("observation.min is above observation.max".into());
                }
            }
        }
        if let Some(sex) = &self.sex {
            if sex != "male" && sex != "female" {
                return invalid("sex is male or female".into());
            }
        }
        if self.age_bands.is_empty() || self.age_bands.len() > MAX_BANDS {
            return invalid(format!("1 to {MAX_BANDS} age bands"));
        }
        let mut bands = self.age_bands.clone();
        bands.sort();
        for (lo, hi) in &bands {
            if lo > hi || *hi > MAX_AGE {
                return invalid(format!(
                    "age band [{lo}, {hi}] is not within 0..={MAX_AGE} in order"
                ));
            }
        }
        if bands.windows(2).any(|w| w[1].0 <= w[0].1) {
            return invalid("age bands overlap".into());
        }
        Ok(())
    }
}

/// One age band of a result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub age_min: u32,
    pub age_max: u32,
    /// `null` when suppressed.
    pub count: Option<u32>,
    /// Mean of each matching patient's latest observation value (2 decimals); `null` when
    /// suppressed, empty, or without an observation filter.
    pub mean: Option<f64>,
    pub suppressed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateResult {
    pub cells: Vec<Cell>,
    /// Matching patients over all bands; `null` when it would reveal a suppressed cell.
    pub total: Option<u32>,
    pub min_cell_size: u32,
}

/// What one patient contributes: a band and maybe a value.
struct Contribution {
    band: usize,
    value: Option<f64>,
}

/// Runs `query` over `patients` (those with registered research consent) and suppresses
/// every cell with fewer than `min_cell_size` patients, plus one more cell when a single
/// suppressed cell could be recovered from the total.
pub async fn aggregate(
    source: &RecordSource,
    patients: &[String],
    query: &CohortQuery,
    min_cell_size: u32,
    now: DateTime<Utc>,
) -> Result<AggregateResult, ResearchError> {
    query.validate()?;
    let mut types = vec!["Patient".to_string()];
    if !query.conditions.is_empty() {
        types.push("Condition".into());
    }
    if query.observation.is_some() {
        types.push("Observation".into());
    }
    let unique: BTreeSet<&str> = patients
        .iter()
        .map(String::as_str)
        .filter(|p| is_fhir_id(p))
        .collect();
    let mut contributions = Vec::new();
    for pid in unique {
        let resources = source.patient_resources(pid, &types).await?;
        if let Some(c) = evaluate(&resources, query, now) {
            contributions.push(c);
        }
    }
    Ok(tabulate(query, &contributions, min_cell_size))
}

/// Whether one patient's record matches, and where it counts.
fn evaluate(resources: &[Value], query: &CohortQuery, now: DateTime<Utc>) -> Option<Contribution> {
    let patient = resources.iter().find(|r| r["resourceType"] == "Patient")?;
    if let Some(sex) = &query.sex {
        if patient["gender"].as_str() != Some(sex.as_str()) {
            return None;
        }
    }
    let age = age_at(patient["birthDate"].as_str()?, now)?;
    let band = query
        .age_bands
        .iter()
        .position(|(lo, hi)| (*lo..=*hi).contains(&age))?;
    if !query.conditions.is_empty() {
        let wanted: HashSet<&str> = query.conditions.iter().map(String::as_str).collect();
        let has = resources
            .iter()
            .filter(|r| r["resourceType"] == "Condition")
            .filter(|r| !condition_voided(r))
            .any(|r| codes(&r["code"]).any(|c| wanted.contains(c)));
        if !has {
            return None;
        }
    }
    let value = match &query.observation {
        None => None,
        Some(filter) => {
            let v = latest_value(resources, &filter.code)?;
            if filter.min.is_some_and(|m| v < m) || filter.max.is_some_and(|m| v > m) {
                return None;
            }
            Some(v)
        }
    };
    Some(Contribution { band, value })
}

fn codes(concept: &Value) -> impl Iterator<Item = &str> {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["code"].as_str())
}

/// A condition recorded in error or refuted does not place a patient in a cohort.
fn condition_voided(c: &Value) -> bool {
    codes(&c["verificationStatus"]).any(|s| s == "entered-in-error" || s == "refuted")
}

/// The value of the patient's latest Observation with `code` (the Observation's own code
/// or a component's), ties broken by the larger value.
fn latest_value(resources: &[Value], code: &str) -> Option<f64> {
    let mut best: Option<(DateTime<Utc>, f64)> = None;
    for o in resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
    {
        if matches!(o["status"].as_str(), Some("entered-in-error" | "cancelled")) {
            continue;
        }
        let Some(when) = observation_time(o) else {
            continue;
        };
        let mut values = Vec::new();
        if codes(&o["code"]).any(|c| c == code) {
            values.extend(o["valueQuantity"]["value"].as_f64());
        }
        for comp in o["component"].as_array().into_iter().flatten() {
            if codes(&comp["code"]).any(|c| c == code) {
                values.extend(comp["valueQuantity"]["value"].as_f64());
            }
        }
        for v in values.into_iter().filter(|v| v.is_finite()) {
            if best.is_none_or(|(t, bv)| (when, v) > (t, bv)) {
                best = Some((when, v));
            }
        }
    }
    best.map(|(_, v)| v)
}

fn observation_time(o: &Value) -> Option<DateTime<Utc>> {
    [
        &o["effectiveDateTime"],
        &o["effectiveInstant"],
        &o["effectivePeriod"]["start"],
        &o["issued"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().and_then(parse_time))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let (y, m, d) = split_date(s)?;
    NaiveDate::from_ymd_opt(y, m, d)?
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
}

/// Year, month and day of a FHIR date (missing parts count as 1).
fn split_date(s: &str) -> Option<(i32, u32, u32)> {
    let date = s.get(..10).unwrap_or(s);
    let mut parts = date.split('-');
    let y: i32 = parts.next().filter(|p| p.len() == 4)?.parse().ok()?;
    let m: u32 = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 1,
    };
    let d: u32 = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 1,
    };
    Some((y, m, d))
}

/// Age in whole years at `now`; `None` for an unreadable or future birth date.
pub fn age_at(birth_date: &str, now: DateTime<Utc>) -> Option<u32> {
    let (y, m, d) = split_date(birth_date)?;
    let mut age = now.year() - y;
    if (now.month(), now.day()) < (m, d) {
        age -= 1;
    }
    u32::try_from(age).ok()
}

fn tabulate(
    query: &CohortQuery,
    contributions: &[Contribution],
    min_cell_size: u32,
) -> AggregateResult {
    let k = min_cell_size.max(1);
    let n = query.age_bands.len();
    let mut counts = vec![0u32; n];
    let mut sums = vec![0f64; n];
    let mut valued = vec![0u32; n];
    for c in contributions {
        counts[c.band] += 1;
        if let Some(v) = c.value {
            sums[c.band] += v;
            valued[c.band] += 1;
        }
    }
    let mut suppressed: Vec<bool> = counts.iter().map(|&c| c > 0 && c < k).collect();
    let primary = suppressed.iter().filter(|&&s| s).count();
    if primary == 1 {
        // A lone suppressed cell is the total minus the others: hide the smallest
        // non-empty other cell too.
        let partner = (0..n)
            .filter(|&i| !suppressed[i] && counts[i] > 0)
            .min_by_key(|&i| (counts[i], i));
        if let Some(i) = partner {
            suppressed[i] = true;
        }
    }
    let hidden = suppressed.iter().filter(|&&s| s).count();
    let total: u32 = counts.iter().sum();
    let total = (hidden == 0 || (hidden >= 2 && total >= k)).then_some(total);
    let cells = query
        .age_bands
        .iter()
        .enumerate()
        .map(|(i, &(lo, hi))| Cell {
            age_min: lo,
            age_max: hi,
            count: (!suppressed[i]).then_some(counts[i]),
            mean: (!suppressed[i] && valued[i] > 0)
                .then(|| (sums[i] / f64::from(valued[i]) * 100.0).round() / 100.0),
            suppressed: suppressed[i],
        })
        .collect();
    AggregateResult {
        cells,
        total,
        min_cell_size: k,
    }
}

// ---------------------------------------------------------------------------------------
// The request: `POST /v1/research/queries`
// ---------------------------------------------------------------------------------------

pub(crate) use request::research_handler;

mod request {
    use axum::extract::State;
    use std::sync::Arc;

    use crate::error::GatewayError;
    use crate::exchange;
    use crate::ledger::Ledger;
    use crate::policy::{CredentialInput, StudyFacts};
    use crate::state::GatewayState;
    use axum::response::Response;
    use serde::Deserialize;
    use serde_json::{json, Value};
    use service::http::StrictJson;

    type AppState = State<Arc<GatewayState>>;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ResearchRequest {
        purpose: String,
        query: crate::research::CohortQuery,
        presentation: Value,
    }

    pub(crate) async fn research_handler(
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
        let study = match crate::policy::holder_study(&vp) {
            Ok(study) => study,
            Err(e) => return Err(s.deny_unasked(&ledger, e.to_string()).await?),
        };
        let Some(study) = study else {
            return Err(s
                .refuse(
                    &ledger,
                    "holder-binding",
                    "no study credential of the presenter".into(),
                )
                .await);
        };
        ledger.data_classes = study.claims.data_classes.clone();
        let mut input = s.policy_input(&ledger, true);
        input.study = Some(CredentialInput::new(
            study.credential,
            StudyFacts::from(&study.claims),
        ));
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
        let study_id = study.claims.id.as_str();
        let cohort = s.consents.research_cohort(
            study_id,
            &vp.holder,
            &req.purpose,
            ledger.time,
            s.config.custodian.require_patient_links,
        )?;
        let min_cell = decision
            .obligations
            .min_cell_size
            .unwrap_or(s.config.custodian.min_cell_size)
            .max(s.config.custodian.min_cell_size);
        let result =
            crate::research::aggregate(&s.records, &cohort, &req.query, min_cell, ledger.time)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(bands: Vec<(u32, u32)>) -> CohortQuery {
        CohortQuery {
            age_bands: bands,
            ..CohortQuery::default()
        }
    }

    fn contributions(per_band: &[u32]) -> Vec<Contribution> {
        per_band
            .iter()
            .enumerate()
            .flat_map(|(band, &n)| {
                (0..n).map(move |_| Contribution {
                    band,
                    value: Some(1.0),
                })
            })
            .collect()
    }

    #[test]
    fn validation() {
        let parse = |v: Value| serde_json::from_value::<CohortQuery>(v);
        assert_eq!(parse(json!({})).unwrap().age_bands, default_bands());
        assert!(parse(json!({"age_bands": [[0, 20], [20, 30]]})).is_err());
        assert!(parse(json!({"age_bands": [[30, 20]]})).is_err());
        assert!(parse(json!({"age_bands": []})).is_err());
        assert!(parse(json!({"sex": "other"})).is_err());
        assert!(parse(json!({"conditions": vec!["1"; 51]})).is_err());
        assert!(parse(json!({"conditions": ["E11; drop"]})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "min": 9, "max": 1}})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "unit": "%"}})).is_err());
        assert!(parse(json!({"extra": 1})).is_err());
        assert!(parse(json!({"conditions": ["44054006"], "sex": "female",
            "observation": {"code": "4548-4", "min": 6.5}, "age_bands": [[0, 49], [50, 120]]}))
        .is_ok());
    }

    #[test]
    fn no_suppression_reports_total() {
        let r = tabulate(&q(vec![(0, 9), (10, 19)]), &contributions(&[12, 0]), 11);
        assert_eq!(r.total, Some(12));
        assert!(r.cells.iter().all(|c| !c.suppressed));
        assert_eq!(r.cells[1].count, Some(0));
    }

    #[test]
    fn single_small_cell_gets_a_complementary_partner() {
        let r = tabulate(
            &q(vec![(0, 9), (10, 19), (20, 29)]),
            &contributions(&[3, 20, 15]),
            11,
        );
        let sup: Vec<bool> = r.cells.iter().map(|c| c.suppressed).collect();
        assert_eq!(sup, [true, false, true]);
        assert_eq!(r.cells[0].count, None);
        assert_eq!(r.cells[0].mean, None);
        assert_eq!(r.total, Some(38));
    }

    #[test]
    fn lone_small_cell_hides_the_total() {
        let r = tabulate(&q(vec![(0, 9), (10, 19)]), &contributions(&[3, 0]), 11);
        assert!(r.cells[0].suppressed);
        assert!(!r.cells[1].suppressed);
        assert_eq!(r.total, None);
    }

    #[test]
    fn small_total_is_hidden() {
        let r = tabulate(&q(vec![(0, 9), (10, 19)]), &contributions(&[3, 4]), 11);
        assert!(r.cells.iter().all(|c| c.suppressed));
        assert_eq!(r.total, None);
    }

    // -----------------------------------------------------------------------------------
    // Against the fixtures, with the expectation computed directly from their JSON
    // -----------------------------------------------------------------------------------

    use crate::records::{import_paths, SledStore};
    use std::path::{Path, PathBuf};

    /// One fixture patient as read from its bundle.
    struct Fixture {
        id: String,
        gender: String,
        birth: (i32, u32, u32),
        conditions: Vec<String>,
        /// (effectiveDateTime, LOINC code, value) of every observation and component.
        observations: Vec<(String, String, f64)>,
    }

    fn fixture_dirs() -> Vec<PathBuf> {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/fhir");
        vec![base.join("hospital-a"), base.join("hospital-b")]
    }

    fn fixtures() -> Vec<Fixture> {
        let mut out = Vec::new();
        for dir in fixture_dirs() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files {
                let b: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                let entries = b["entry"].as_array().unwrap();
                let pe = entries
                    .iter()
                    .find(|e| e["resource"]["resourceType"] == "Patient")
                    .unwrap();
                let p = &pe["resource"];
                let id = p["id"].as_str().map(str::to_string).unwrap_or_else(|| {
                    pe["fullUrl"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("urn:uuid:")
                        .to_string()
                });
                let bd: Vec<i64> = p["birthDate"]
                    .as_str()
                    .unwrap()
                    .split('-')
                    .map(|x| x.parse().unwrap())
                    .collect();
                let mut fx = Fixture {
                    id,
                    gender: p["gender"].as_str().unwrap().to_string(),
                    birth: (bd[0] as i32, bd[1] as u32, bd[2] as u32),
                    conditions: Vec::new(),
                    observations: Vec::new(),
                };
                // Each fixture bundle holds one patient's record.
                for r in entries.iter().map(|e| &e["resource"]) {
                    match r["resourceType"].as_str().unwrap() {
                        "Condition" => fx
                            .conditions
                            .push(r["code"]["coding"][0]["code"].as_str().unwrap().into()),
                        "Observation" => {
                            let t = r["effectiveDateTime"].as_str().unwrap().to_string();
                            let mut push = |c: &Value, v: &Value| {
                                if let Some(v) = v["valueQuantity"]["value"].as_f64() {
                                    fx.observations.push((
                                        t.clone(),
                                        c["coding"][0]["code"].as_str().unwrap().into(),
                                        v,
                                    ));
                                }
                            };
                            push(&r["code"], r);
                            for comp in r["component"].as_array().into_iter().flatten() {
                                push(&comp["code"], comp);
                            }
                        }
                        _ => {}
                    }
                }
                out.push(fx);
            }
        }
        out
    }

    fn test_now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Counts and means per band, written out plainly.
    fn expected(fx: &[Fixture], consented: &[String], q: &CohortQuery) -> Vec<(u32, Option<f64>)> {
        let mut cells = vec![(0u32, 0f64); q.age_bands.len()];
        for f in fx.iter().filter(|f| consented.contains(&f.id)) {
            let (y, m, d) = f.birth;
            let age = (2026 - y - i32::from((11, 28) < (m, d))) as u32;
            let Some(band) = q
                .age_bands
                .iter()
                .position(|(lo, hi)| *lo <= age && age <= *hi)
            else {
                continue;
            };
            if q.sex.as_ref().is_some_and(|s| *s != f.gender) {
                continue;
            }
            if !q.conditions.is_empty() && !f.conditions.iter().any(|c| q.conditions.contains(c)) {
                continue;
            }
            let mut value = 0.0;
            if let Some(filter) = &q.observation {
                let latest = f
                    .observations
                    .iter()
                    .filter(|(_, c, _)| *c == filter.code)
                    .max_by(|a, b| {
                        let ta = DateTime::parse_from_rfc3339(&a.0).unwrap();
                        let tb = DateTime::parse_from_rfc3339(&b.0).unwrap();
                        ta.cmp(&tb).then(a.2.total_cmp(&b.2))
                    });
                let Some((_, _, v)) = latest else { continue };
                if filter.min.is_some_and(|m| *v < m) || filter.max.is_some_and(|m| *v > m) {
                    continue;
                }
                value = *v;
            }
            cells[band].0 += 1;
            cells[band].1 += value;
        }
        cells
            .into_iter()
            .map(|(n, sum)| {
                (
                    n,
                    (n > 0 && q.observation.is_some())
                        .then(|| (sum / f64::from(n) * 100.0).round() / 100.0),
                )
            })
            .collect()
    }

    async fn source() -> (tempfile::TempDir, RecordSource) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("r")).unwrap();
        import_paths(&store, &fixture_dirs()).unwrap();
        (dir, RecordSource::Embedded(store))
    }

    fn query(v: Value) -> CohortQuery {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn counts_and_means_match_the_fixtures() {
        let (_dir, src) = source().await;
        let fx = fixtures();
        let all: Vec<String> = fx.iter().map(|f| f.id.clone()).collect();
        let cases = [
            query(json!({})),
            query(json!({"sex": "female"})),
            query(json!({"conditions": ["E66.9", "E78.5"]})),
            query(
                json!({"observation": {"code": "8480-6"}, "age_bands": [[0, 17], [18, 64], [65, 120]]}),
            ),
            query(json!({"observation": {"code": "4548-4", "min": 5.0}})),
            query(
                json!({"conditions": ["314529007"], "observation": {"code": "29463-7", "max": 30}}),
            ),
        ];
        for q in &cases {
            let want = expected(&fx, &all, q);
            let got = aggregate(&src, &all, q, 1, test_now()).await.unwrap();
            let got_cells: Vec<(u32, Option<f64>)> = got
                .cells
                .iter()
                .map(|c| (c.count.unwrap(), c.mean))
                .collect();
            assert_eq!(got_cells, want, "{q:?}");
            assert_eq!(got.total, Some(want.iter().map(|c| c.0).sum()));
        }
        // Plain numbers, so that the expectation itself is checked too.
        let by_band: Vec<u32> = expected(&fx, &all, &cases[0]).iter().map(|c| c.0).collect();
        assert_eq!(by_band, [6, 7, 2, 3]);

        // Only consenting patients count; unknown ids add nothing.
        let mut some: Vec<String> = all[6..].to_vec();
        some.push("not-a-patient".into());
        some.push(all[7].clone());
        let got = aggregate(&src, &some, &cases[0], 1, test_now())
            .await
            .unwrap();
        assert_eq!(got.cells[0].count, Some(0));
        assert_eq!(got.total, Some(12));
    }

    #[tokio::test]
    async fn small_cells_are_suppressed() {
        let (_dir, src) = source().await;
        let fx = fixtures();
        let all: Vec<String> = fx.iter().map(|f| f.id.clone()).collect();
        let q = CohortQuery::default();
        let want: Vec<u32> = expected(&fx, &all, &q).iter().map(|c| c.0).collect();
        assert_eq!(want, [6, 7, 2, 3]);

        // k = 5: the two small cells hide each other; the total (18) may show.
        let r = aggregate(&src, &all, &q, 5, test_now()).await.unwrap();
        let cells: Vec<Option<u32>> = r.cells.iter().map(|c| c.count).collect();
        assert_eq!(cells, [Some(6), Some(7), None, None]);
        assert_eq!(r.total, Some(18));

        // k = 3: one small cell (2), so the smallest other cell (3) is hidden with it.
        let r = aggregate(&src, &all, &q, 3, test_now()).await.unwrap();
        let sup: Vec<bool> = r.cells.iter().map(|c| c.suppressed).collect();
        assert_eq!(sup, [false, false, true, true]);
        assert_eq!(r.total, Some(18));

        // k = 11: every cell is small, the total is not.
        let r = aggregate(&src, &all, &q, 11, test_now()).await.unwrap();
        assert!(r
            .cells
            .iter()
            .all(|c| c.suppressed && c.count.is_none() && c.mean.is_none()));
        assert_eq!(r.total, Some(18));

        // k = 20: the total is small too.
        let r = aggregate(&src, &all, &q, 20, test_now()).await.unwrap();
        assert!(r.cells.iter().all(|c| c.suppressed));
        assert_eq!(r.total, None);

        // Obesity: 4 patients of 18-44, one of 45-64, one of 65+: k = 3 hides both ones.
        let ob = query(json!({"conditions": ["E66.9"], "observation": {"code": "39156-5"}}));
        let want = expected(&fx, &all, &ob);
        assert_eq!(want.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 4, 1, 1]);
        let r = aggregate(&src, &all, &ob, 3, test_now()).await.unwrap();
        assert_eq!(r.cells[1].count, Some(4));
        assert_eq!(r.cells[1].mean, want[1].1);
        assert_eq!(r.cells[0].count, Some(0));
        assert!(r.cells[2].suppressed && r.cells[3].suppressed);
        assert_eq!(r.total, Some(6));
        // Nothing record-level in the result.
        let text = serde_json::to_string(&r).unwrap();
        assert!(all.iter().all(|id| !text.contains(id.as_str())));
    }

    #[test]
    fn ages() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(age_at("2000-03-01", now), Some(26));
        assert_eq!(age_at("2000-03-02", now), Some(25));
        assert_eq!(age_at("2000", now), Some(26));
        assert_eq!(age_at("2030-01-01", now), None);
        assert_eq!(age_at("x", now), None);
    }
}
