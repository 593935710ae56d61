//! Aggregate-only cohort queries for research: noisy counts (and means) per age band over
//! the patients who registered research consent, released with differential privacy
//! (OpenDP, [`dp`]) and charged to the study's privacy budget at this custodian
//! ([`budget`]). What the guarantee is, and what it is not: docs/privacy.md.
//!
//! No record-level value, identifier, exact count, zero cell or total is ever part of a
//! result: every count is noisy, cells whose noisy count is below the minimum cell size
//! are suppressed, and there is no total.

pub mod budget;
pub mod dp;

use crate::config::{is_code, ResearchSettings, MAX_AGE_BANDS};
use crate::records::{is_fhir_id, RecordError, RecordSource};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};

pub const MAX_CODES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ResearchError {
    #[error("invalid cohort query: {0}")]
    Invalid(String),
    #[error(transparent)]
    Records(#[from] RecordError),
}

/// A cohort: patients with any of `conditions` (empty: no condition filter), whose latest
/// `observation` value is in range, of `sex`, counted per age band of the custodian. The
/// query states the ε it spends, or is charged the custodian's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCohortQuery")]
pub struct CohortQuery {
    pub conditions: Vec<String>,
    pub observation: Option<ObservationFilter>,
    pub sex: Option<String>,
    pub epsilon: Option<f64>,
}

/// The latest Observation with this LOINC `code` (in `code` or a `component`), its value
/// within `[min, max]` when given. Its mean is of values clamped to `bounds`: the
/// custodian's for the code, which the query may narrow, or the query's own within the
/// custodian's cap when the custodian declared none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationFilter {
    pub code: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub bounds: Option<(f64, f64)>,
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
    /// Read as any JSON value, so that a string or a null says what is wrong with it.
    #[serde(default)]
    epsilon: Option<Value>,
    // Named only to be refused with a clear message.
    #[serde(default)]
    age_bands: Option<Value>,
    #[serde(default)]
    budget: Option<Value>,
    #[serde(default)]
    epsilon_budget: Option<Value>,
}

impl TryFrom<RawCohortQuery> for CohortQuery {
    type Error = ResearchError;

    fn try_from(raw: RawCohortQuery) -> Result<Self, Self::Error> {
        if raw.age_bands.is_some() {
            return Err(ResearchError::Invalid(
                "age_bands: the age bands are fixed by the custodian and cannot be chosen per \
                 query; leave age_bands out"
                    .into(),
            ));
        }
        if raw.budget.is_some() || raw.epsilon_budget.is_some() {
            return Err(ResearchError::Invalid(
                "a privacy budget is set by the custodian and the study credential, never by \
                 a query; state only the query's epsilon"
                    .into(),
            ));
        }
        let epsilon = match raw.epsilon {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(_) => {
                return Err(ResearchError::Invalid(
                    "epsilon must be a positive number".into(),
                ))
            }
        };
        let q = CohortQuery {
            conditions: raw.conditions,
            observation: raw.observation,
            sex: raw.sex,
            epsilon,
        };
        q.validate()?;
        Ok(q)
    }
}

impl CohortQuery {
    pub fn validate(&self) -> Result<(), ResearchError> {
        let invalid = |m: String| Err(ResearchError::Invalid(m));
        if self.conditions.len() > MAX_CODES {
            return invalid(format!("at most {MAX_CODES} condition codes"));
        }
        if self.conditions.iter().any(|c| !is_code(c)) {
            return invalid("a condition code is not a code".into());
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
            if let Some((lo, hi)) = o.bounds {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return invalid(
                        "observation.bounds is [lower, upper], finite, lower below upper".into(),
                    );
                }
            }
        }
        if let Some(sex) = &self.sex {
            if sex != "male" && sex != "female" {
                return invalid("sex is male or female".into());
            }
        }
        if let Some(e) = self.epsilon {
            if !e.is_finite() || e <= 0.0 {
                return invalid("epsilon must be a positive number".into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The custodian's terms: age bands, ε, bounds
// ---------------------------------------------------------------------------------------

/// The custodian's age bands: lower bounds ascending from 0, the last open-ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeBands(Vec<u32>);

impl AgeBands {
    /// From validated settings (`ResearchSettings::problem`).
    pub fn new(starts: &[u32]) -> Result<Self, ResearchError> {
        let ok = starts.first() == Some(&0)
            && starts.len() <= MAX_AGE_BANDS.min(dp::MAX_BANDS)
            && starts.windows(2).all(|w| w[0] < w[1])
            && starts.last().is_some_and(|&top| top <= 90);
        if !ok {
            return Err(ResearchError::Invalid(
                "the custodian's age bands are unusable".into(),
            ));
        }
        Ok(AgeBands(starts.to_vec()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The band of `age`; ages past the last lower bound are all in the last band.
    pub fn band_of(&self, age: u32) -> usize {
        self.0.iter().rposition(|&lo| lo <= age).unwrap_or(0)
    }

    /// `(lowest age, highest age or None for the open band, label)` of band `i`.
    pub fn describe(&self, i: usize) -> (u32, Option<u32>, String) {
        let lo = self.0[i];
        match self.0.get(i + 1) {
            Some(&next) => (lo, Some(next - 1), format!("{lo}-{}", next - 1)),
            None => (lo, None, format!("{lo}+")),
        }
    }
}

/// What a query will be charged and may spend, from the custodian's settings: decided
/// before anything is read or spent.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    /// The ε the query states, or the custodian's default, in micro-ε.
    pub epsilon_micro: u64,
    /// The clamping bounds of the observation's values.
    pub bounds: Option<(f64, f64)>,
}

fn micro_down(e: f64) -> u64 {
    // Settings and credentials are validated to at most 1e6: exact in u64.
    (e * dp::MICRO).floor().max(0.0) as u64
}

impl Terms {
    pub fn new(settings: &ResearchSettings, query: &CohortQuery) -> Result<Terms, ResearchError> {
        let invalid = |m: String| Err(ResearchError::Invalid(m));
        let epsilon = query.epsilon.unwrap_or(settings.epsilon_per_query);
        if !epsilon.is_finite() || epsilon <= 0.0 {
            return invalid("epsilon must be a positive number".into());
        }
        if epsilon > settings.epsilon_per_query_max {
            return invalid(format!(
                "epsilon {epsilon} is above this custodian's most per query, {}",
                settings.epsilon_per_query_max
            ));
        }
        let epsilon_micro = (epsilon * dp::MICRO).round() as u64;
        if epsilon_micro == 0 {
            return invalid("epsilon must be at least 0.000001".into());
        }
        let bounds = match &query.observation {
            None => None,
            Some(o) => Some(bounds_for(settings, o)?),
        };
        Ok(Terms {
            epsilon_micro,
            bounds,
        })
    }
}

fn bounds_for(
    settings: &ResearchSettings,
    o: &ObservationFilter,
) -> Result<(f64, f64), ResearchError> {
    let invalid = |m: String| Err(ResearchError::Invalid(m));
    match (settings.observation_bounds.get(&o.code), o.bounds) {
        (Some(&(clo, chi)), None) => Ok((clo, chi)),
        (Some(&(clo, chi)), Some((lo, hi))) => {
            if lo < clo || hi > chi {
                return invalid(format!(
                    "observation.bounds must lie within this custodian's bounds for the \
                     code, [{clo}, {chi}]"
                ));
            }
            Ok((lo, hi))
        }
        (None, Some((lo, hi))) => {
            let cap = settings.max_declared_bound;
            if lo < -cap || hi > cap {
                return invalid(format!(
                    "observation.bounds must lie within [-{cap}, {cap}]"
                ));
            }
            Ok((lo, hi))
        }
        (None, None) => invalid(
            "this custodian declares no bounds for the observation's code: state \
             observation.bounds [lower, upper], the range its values are clamped to"
                .into(),
        ),
    }
}

/// The total ε (micro) a study may spend here: the custodian's budget, lowered by the
/// study credential's `epsilonBudget` when it has one.
pub fn study_budget_micro(settings: &ResearchSettings, credential: Option<f64>) -> u64 {
    let custodian = micro_down(settings.epsilon_budget);
    match credential {
        // A claim that is not a positive finite number allows nothing (fail closed).
        Some(c) if !(c.is_finite() && c > 0.0) => 0,
        Some(c) => custodian.min(micro_down(c.min(1e6))),
        None => custodian,
    }
}

// ---------------------------------------------------------------------------------------
// The cohort, exactly (it never leaves as such)
// ---------------------------------------------------------------------------------------

/// What one patient contributes: a band and maybe a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Contribution {
    band: usize,
    value: Option<f64>,
}

/// Each consenting patient's contribution to `query`, at most one per patient.
pub(crate) async fn contributions(
    source: &RecordSource,
    patients: &[String],
    query: &CohortQuery,
    bands: &AgeBands,
    now: DateTime<Utc>,
) -> Result<Vec<Contribution>, ResearchError> {
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
    let mut out = Vec::new();
    for pid in unique {
        let resources = source.patient_resources(pid, &types).await?;
        if let Some(c) = evaluate(&resources, query, bands, now) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The age that places a patient: at death for a deceased patient, else at `now`. `None`
/// when it cannot be known (no readable birth date, or deceased without a date).
fn patient_age(patient: &Value, now: DateTime<Utc>) -> Option<u32> {
    let at = match &patient["deceasedDateTime"] {
        Value::String(s) => parse_time(s)?,
        _ if patient["deceasedBoolean"] == Value::Bool(true) => return None,
        _ => now,
    };
    age_at(patient["birthDate"].as_str()?, at.min(now))
}

/// Whether one patient's record matches, and where it counts.
fn evaluate(
    resources: &[Value],
    query: &CohortQuery,
    bands: &AgeBands,
    now: DateTime<Utc>,
) -> Option<Contribution> {
    let patient = resources.iter().find(|r| r["resourceType"] == "Patient")?;
    if let Some(sex) = &query.sex {
        if patient["gender"].as_str() != Some(sex.as_str()) {
            return None;
        }
    }
    let band = bands.band_of(patient_age(patient, now)?);
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

// ---------------------------------------------------------------------------------------
// The release: what leaves
// ---------------------------------------------------------------------------------------

/// One age band of a result. Every number is noisy; a suppressed cell shows none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// `"18-44"`, or `"90+"` for the top-coded band.
    pub age_band: String,
    pub age_min: u32,
    /// `null` for the open top band.
    pub age_max: Option<u32>,
    /// The noisy count; `null` when suppressed.
    pub count: Option<i64>,
    /// An interval that holds the true count with probability at least 95%.
    pub count_ci95: Option<[i64; 2]>,
    /// Noisy clamped sum ÷ noisy count (2 decimals), with an observation; `null` when
    /// suppressed or without an observation filter.
    pub mean: Option<f64>,
    /// An interval that holds the mean of the clamped values with probability at least 95%
    /// (97.5% for the sum and for the count, union bound), within the bounds.
    pub mean_ci95: Option<[f64; 2]>,
    pub suppressed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateResult {
    pub cells: Vec<Cell>,
    pub min_cell_size: u32,
}

/// Runs the planned release over the exact contributions. Blocking: OpenDP's measurements
/// are built and invoked here, on the calling thread (they are not `Send`).
pub(crate) fn release(
    plan: &dp::Plan,
    contributions: &[Contribution],
) -> Result<dp::Noisy, dp::DpError> {
    let mut band_of = Vec::with_capacity(contributions.len());
    let mut values = vec![Vec::new(); plan.bands];
    for c in contributions {
        let band = u8::try_from(c.band)
            .ok()
            .filter(|&b| usize::from(b) < plan.bands)
            .ok_or(dp::DpError::Invalid("a contribution outside the bands"))?;
        band_of.push(band);
        if plan.sum.is_some() {
            // With an observation every contribution has a value (evaluate).
            let v = c
                .value
                .filter(|v| v.is_finite())
                .ok_or(dp::DpError::Invalid("a contribution without a value"))?;
            values[usize::from(band)].push(v);
        }
    }
    dp::release(plan, &band_of, &values)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The result as it leaves: noisy counts below `min_cell_size` suppressed (a second line
/// after the noise, post-processing only), intervals per cell, no total.
pub fn present(
    noisy: &dp::Noisy,
    plan: &dp::Plan,
    bands: &AgeBands,
    min_cell_size: u32,
) -> AggregateResult {
    let k = i64::from(min_cell_size.max(1));
    let h95 = dp::discrete_half_width(plan.count_scale, 0.05) as i64;
    let h975 = dp::discrete_half_width(plan.count_scale, 0.025) as i64;
    let cells = (0..bands.len())
        .map(|i| {
            let (age_min, age_max, age_band) = bands.describe(i);
            let c = noisy.counts.get(i).copied().unwrap_or(0);
            let suppressed = c < k;
            let mut cell = Cell {
                age_band,
                age_min,
                age_max,
                count: None,
                count_ci95: None,
                mean: None,
                mean_ci95: None,
                suppressed,
            };
            if suppressed {
                return cell;
            }
            cell.count = Some(c);
            cell.count_ci95 = Some([(c - h95).max(0), c + h95]);
            if let (Some(sums), Some(((lo, hi), scale))) = (&noisy.sums, plan.sum) {
                let s = sums.get(i).copied().unwrap_or(0.0);
                // c >= k >= 1 here.
                cell.mean = Some(round2((s / c as f64).clamp(lo, hi)));
                let hs = dp::continuous_half_width(scale, 0.025);
                let (cmin, cmax) = ((c - h975) as f64, (c + h975) as f64);
                let interval = if cmin >= 1.0 {
                    let corners = [
                        (s - hs) / cmin,
                        (s - hs) / cmax,
                        (s + hs) / cmin,
                        (s + hs) / cmax,
                    ];
                    let a = corners.iter().copied().fold(f64::INFINITY, f64::min);
                    let b = corners.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    [a.clamp(lo, hi), b.clamp(lo, hi)]
                } else {
                    [lo, hi]
                };
                cell.mean_ci95 = Some([
                    (interval[0] * 100.0).floor() / 100.0,
                    (interval[1] * 100.0).ceil() / 100.0,
                ]);
            }
            cell
        })
        .collect();
    AggregateResult {
        cells,
        min_cell_size: min_cell_size.max(1),
    }
}

// ---------------------------------------------------------------------------------------
// The request: `POST /v1/research/queries`
// ---------------------------------------------------------------------------------------

pub(crate) mod request {
    use axum::extract::State;
    use std::sync::Arc;

    use super::budget::{BudgetError, Debit};
    use super::{dp, AgeBands, Terms};
    use crate::error::GatewayError;
    use crate::exchange;
    use crate::ledger::Ledger;
    use crate::policy::{CredentialInput, Decision, StudyFacts};
    use crate::state::{GatewayState, NotServed};
    use axum::response::Response;
    use federation::events::{PrivacySpend, PRIVACY_BUDGET_REASON, PRIVACY_MECHANISM_REASON};
    use serde::Deserialize;
    use serde_json::{json, Value};
    use service::http::StrictJson;

    type AppState = State<Arc<GatewayState>>;

    /// A cohort query under a research presentation.
    #[derive(Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ResearchRequest {
        /// Always `HRESCH`.
        purpose: String,
        /// The cohort (conditions, an observation with its bounds, sex) and the ε the
        /// query spends; the age bands are the custodian's.
        #[schema(value_type = Object)]
        query: crate::research::CohortQuery,
        /// A VP: a compact JWS (`vp+jwt`) or a Data Integrity JSON object.
        #[schema(value_type = Object)]
        presentation: Value,
    }

    fn micro(m: u64) -> f64 {
        m as f64 / dp::MICRO
    }

    fn budget_error(e: BudgetError) -> GatewayError {
        match e {
            BudgetError::Storage(_) => GatewayError::Unavailable(e.to_string()),
            BudgetError::Corrupt => GatewayError::Internal(e.to_string()),
        }
    }

    fn dp_error(e: dp::DpError) -> GatewayError {
        GatewayError::Internal(e.to_string())
    }

    /// Aggregate cohort counts and means per age band, with differential privacy charged to
    /// the study's budget at this custodian; no record-level data (docs/privacy.md).
    #[utoipa::path(post, path = "/v1/research/queries", tag = "research",
        request_body = ResearchRequest,
        responses((status = 200, description = "Noisy aggregates, with ε spent and left", body = Object),
            crate::error::Denied, service::openapi::JsonBodyErrors, service::openapi::Unavailable))]
    pub(crate) async fn research_handler(
        State(s): AppState,
        StrictJson(req): StrictJson<ResearchRequest>,
    ) -> Response {
        let answer = research(s.clone(), req).await;
        s.offering_next_challenge(answer)
    }

    async fn research(
        s: Arc<GatewayState>,
        req: ResearchRequest,
    ) -> Result<Response, GatewayError> {
        if req.purpose != "HRESCH" {
            return Err(GatewayError::bad_request(
                "unknown-purpose",
                "research queries use purpose HRESCH",
            ));
        }
        // The custodian's terms first: a query they refuse spends nothing and reads nothing.
        let settings = &s.config.research;
        let terms = Terms::new(settings, &req.query)
            .map_err(|e| GatewayError::Unprocessable(e.to_string()))?;
        let bands = AgeBands::new(&settings.age_bands)
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
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
        let study_id = study.claims.id.clone();
        let total = super::study_budget_micro(settings, study.claims.epsilon_budget);
        let cohort = s.consents.research_cohort(
            &study_id,
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
        // After the allow, every way out leaves the decision's event: a record source
        // that fails is 503/504 (not the requester's mistake) and recorded as not served.
        let contributions = match super::contributions(
            &s.records,
            &cohort,
            &req.query,
            &bands,
            ledger.time,
        )
        .await
        {
            Ok(contributions) => contributions,
            Err(super::ResearchError::Records(e)) => {
                let error = GatewayError::record_source(e);
                let why = NotServed::RecordSource;
                return Err(s.record_not_served(&ledger, &decision, why, error).await);
            }
            Err(e) => {
                let error = GatewayError::Unprocessable(e.to_string());
                let why = NotServed::Preparation;
                return Err(s.record_not_served(&ledger, &decision, why, error).await);
            }
        };

        // The measurements: planned (what they cost, by their privacy maps), then paid for
        // (durably, before anything is released), then run.
        let (n, bounds, asked) = (bands.len(), terms.bounds, terms.epsilon_micro);
        let plan = tokio::task::spawn_blocking(move || dp::plan(n, bounds, asked))
            .await
            .map_err(|e| GatewayError::Internal(format!("the privacy mechanism aborted: {e}")))?
            .map_err(dp_error)?;
        let left = match s
            .research_budget
            .debit(&study_id, plan.charge_micro, total)
            .await
            .map_err(budget_error)?
        {
            Debit::Spent { left } => left,
            Debit::Refused { left } => {
                ledger.privacy = Some(PrivacySpend {
                    study: study_id,
                    epsilon_micro: 0,
                    budget_left_micro: left,
                });
                let mut refusal = Decision::deny(PRIVACY_BUDGET_REASON);
                refusal.policy_digest = decision.policy_digest.clone();
                s.record(&ledger, &refusal, 0).await?;
                return Err(GatewayError::Denied {
                    decision_id: ledger.decision_id.clone(),
                    reasons: vec![format!(
                        "{PRIVACY_BUDGET_REASON}: the query costs epsilon {} and {} is left of \
                         the study's {}",
                        micro(plan.charge_micro),
                        micro(left),
                        micro(total)
                    )],
                    check: None,
                    policy: Some(decision.policy_digest.clone()),
                });
            }
        };
        ledger.privacy = Some(PrivacySpend {
            study: study_id.clone(),
            epsilon_micro: plan.charge_micro,
            budget_left_micro: left,
        });
        let outcome = {
            let plan = plan.clone();
            tokio::task::spawn_blocking(move || super::release(&plan, &contributions))
                .await
                .map_err(|e| GatewayError::Internal(format!("the privacy mechanism aborted: {e}")))
                .and_then(|r| r.map_err(dp_error))
        };
        let released = match outcome {
            Ok(released) => released,
            Err(e) => {
                // Spent and recorded as spent: the budget is never given back.
                let mut failure = Decision::deny(PRIVACY_MECHANISM_REASON);
                failure.policy_digest = decision.policy_digest.clone();
                s.record(&ledger, &failure, 0).await?;
                return Err(e);
            }
        };
        let result = super::present(&released, &plan, &bands, min_cell);
        // An aggregate releases no records: the event's count stays 0, and the cohort's
        // exact size is not written anywhere that leaves.
        s.record(&ledger, &decision, 0).await?;
        let body = json!({
            "decisionId": ledger.decision_id,
            "study": study_id,
            "minCellSize": result.min_cell_size,
            "privacy": {
                "guarantee": "pure epsilon-differential privacy per query, add/remove one patient (docs/privacy.md)",
                "epsilonSpent": micro(plan.charge_micro),
                "epsilonSpentMicro": plan.charge_micro,
                "budget": micro(total),
                "budgetLeft": micro(left),
                "budgetLeftMicro": left,
                "countMechanism": "discrete Laplace",
                "countNoiseScale": plan.count_scale,
                "sumMechanism": plan.sum.map(|_| "Laplace on values clamped to bounds"),
                "sumNoiseScale": plan.sum.map(|(_, scale)| scale),
                "bounds": plan.sum.map(|((lo, hi), _)| [lo, hi]),
                "interval": "count_ci95 and mean_ci95 hold the true value with probability at least 95%",
            },
            "result": result,
        });
        exchange::respond(&ledger, &decision, body, None)
    }
}

#[cfg(test)]
mod tests {
    use super::budget::{BudgetStore, Debit};
    use super::*;
    use serde_json::json;

    fn settings() -> ResearchSettings {
        let mut s = ResearchSettings::default();
        s.observation_bounds.insert("8302-2".into(), (0.0, 250.0));
        s
    }

    fn bands() -> AgeBands {
        AgeBands::new(&[0, 18, 45, 65, 90]).unwrap()
    }

    fn parse(v: Value) -> Result<CohortQuery, serde_json::Error> {
        serde_json::from_value::<CohortQuery>(v)
    }

    #[test]
    fn validation() {
        assert_eq!(parse(json!({})).unwrap(), CohortQuery::default());
        assert!(parse(json!({"sex": "other"})).is_err());
        assert!(parse(json!({"conditions": vec!["1"; 51]})).is_err());
        assert!(parse(json!({"conditions": ["E11; drop"]})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "min": 9, "max": 1}})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "unit": "%"}})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "bounds": [5, 5]}})).is_err());
        assert!(parse(json!({"observation": {"code": "4548-4", "bounds": [5, 1]}})).is_err());
        assert!(parse(json!({"extra": 1})).is_err());
        assert!(parse(
            json!({"conditions": ["44054006"], "sex": "female", "epsilon": 0.25,
            "observation": {"code": "4548-4", "min": 6.5, "bounds": [4, 15]}})
        )
        .is_ok());
    }

    #[test]
    fn requesters_choose_neither_bands_nor_budgets_nor_a_bad_epsilon() {
        let err = parse(json!({"age_bands": [[0, 98]]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fixed by the custodian"), "{err}");
        for v in [json!({"budget": 100}), json!({"epsilon_budget": 100})] {
            let err = parse(v).unwrap_err().to_string();
            assert!(err.contains("never by a query"), "{err}");
        }
        for e in [json!(0), json!(-1), json!(-0.0), json!("0.5"), json!("NaN")] {
            let err = parse(json!({ "epsilon": e })).unwrap_err().to_string();
            assert!(
                err.contains("epsilon must be a positive number"),
                "{e}: {err}"
            );
        }
        // NaN and infinity cannot be written in JSON; should one arrive by another way,
        // validation refuses it too.
        for e in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.5] {
            let q = CohortQuery {
                epsilon: Some(e),
                ..CohortQuery::default()
            };
            assert!(q.validate().is_err(), "{e}");
            assert!(Terms::new(&settings(), &q).is_err(), "{e}");
        }
    }

    #[test]
    fn terms_follow_the_custodian() {
        let s = settings();
        let t = Terms::new(&s, &CohortQuery::default()).unwrap();
        assert_eq!(t.epsilon_micro, 500_000);
        assert_eq!(t.bounds, None);
        let q = |v: Value| parse(v).unwrap();
        let t = Terms::new(&s, &q(json!({"epsilon": 0.1}))).unwrap();
        assert_eq!(t.epsilon_micro, 100_000);
        // Above the per-query maximum, or below one micro-ε.
        let err = Terms::new(&s, &q(json!({"epsilon": 1.5}))).unwrap_err();
        assert!(err.to_string().contains("most per query"), "{err}");
        assert!(Terms::new(&s, &q(json!({"epsilon": 1e300}))).is_err());
        assert!(Terms::new(&s, &q(json!({"epsilon": 1e-9}))).is_err());
        // Bounds: the custodian's, narrowed, never widened; declared within the cap.
        let t = Terms::new(&s, &q(json!({"observation": {"code": "8302-2"}}))).unwrap();
        assert_eq!(t.bounds, Some((0.0, 250.0)));
        let t = Terms::new(
            &s,
            &q(json!({"observation": {"code": "8302-2", "bounds": [100, 220]}})),
        )
        .unwrap();
        assert_eq!(t.bounds, Some((100.0, 220.0)));
        assert!(Terms::new(
            &s,
            &q(json!({"observation": {"code": "8302-2", "bounds": [0, 300]}}))
        )
        .is_err());
        let err = Terms::new(&s, &q(json!({"observation": {"code": "4548-4"}}))).unwrap_err();
        assert!(
            err.to_string().contains("state observation.bounds"),
            "{err}"
        );
        let t = Terms::new(
            &s,
            &q(json!({"observation": {"code": "4548-4", "bounds": [3, 20]}})),
        )
        .unwrap();
        assert_eq!(t.bounds, Some((3.0, 20.0)));
        assert!(Terms::new(
            &s,
            &q(json!({"observation": {"code": "4548-4", "bounds": [0, 1e9]}}))
        )
        .is_err());
    }

    #[test]
    fn the_study_credential_can_only_lower_the_budget() {
        let s = settings();
        assert_eq!(study_budget_micro(&s, None), 5_000_000);
        assert_eq!(study_budget_micro(&s, Some(2.0)), 2_000_000);
        assert_eq!(study_budget_micro(&s, Some(50.0)), 5_000_000);
        assert_eq!(study_budget_micro(&s, Some(-1.0)), 0);
        assert_eq!(study_budget_micro(&s, Some(f64::NAN)), 0);
    }

    #[test]
    fn bands_are_fixed_and_top_coded() {
        let b = bands();
        assert_eq!(b.band_of(0), 0);
        assert_eq!(b.band_of(17), 0);
        assert_eq!(b.band_of(18), 1);
        assert_eq!(b.band_of(89), 3);
        assert_eq!(b.band_of(90), 4);
        assert_eq!(b.band_of(117), 4);
        assert_eq!(b.describe(3), (65, Some(89), "65-89".to_string()));
        assert_eq!(b.describe(4), (90, None, "90+".to_string()));
        assert!(AgeBands::new(&[0, 18, 95]).is_err());
        assert!(AgeBands::new(&[5, 18]).is_err());
        assert!(AgeBands::new(&[0, 18, 18]).is_err());
        assert!(AgeBands::new(&[]).is_err());
    }

    #[test]
    fn a_deceased_patient_is_counted_at_the_age_of_death() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let alive = json!({"resourceType": "Patient", "birthDate": "1931-02-14"});
        assert_eq!(patient_age(&alive, now), Some(95));
        let died = json!({"resourceType": "Patient", "birthDate": "1931-02-14",
            "deceasedDateTime": "2001-02-13T23:00:00Z"});
        assert_eq!(patient_age(&died, now), Some(69));
        let unknown = json!({"resourceType": "Patient", "birthDate": "1931-02-14",
            "deceasedBoolean": true});
        assert_eq!(patient_age(&unknown, now), None);
        let q = CohortQuery::default();
        let c = evaluate(&[died], &q, &bands(), now).unwrap();
        assert_eq!(c.band, 3);
        let c = evaluate(&[alive], &q, &bands(), now).unwrap();
        assert_eq!(c.band, 4);
    }

    fn contributions_of(per_band: &[(usize, f64)]) -> Vec<Contribution> {
        per_band
            .iter()
            .map(|&(band, v)| Contribution {
                band,
                value: Some(v),
            })
            .collect()
    }

    #[test]
    fn what_leaves_is_noisy_suppressed_below_the_cell_size_and_has_no_total() {
        let b = bands();
        let plan = dp::plan(b.len(), Some((0.0, 250.0)), 1_000_000).unwrap();
        // 200 patients in band 1, 3 in band 2, none elsewhere.
        let mut c: Vec<(usize, f64)> = (0..200).map(|i| (1, 150.0 + f64::from(i % 40))).collect();
        c.extend([(2, 170.0), (2, 171.0), (2, 172.0)]);
        let c = contributions_of(&c);
        let mut exact_seen = 0;
        for _ in 0..50 {
            let noisy = release(&plan, &c).unwrap();
            let r = present(&noisy, &plan, &b, 11);
            let json = serde_json::to_value(&r).unwrap();
            assert!(json.get("total").is_none());
            assert_eq!(r.cells.len(), 5);
            let big = &r.cells[1];
            assert!(!big.suppressed, "{big:?}");
            let n = big.count.unwrap();
            if n == 200 {
                exact_seen += 1;
            }
            let [lo, hi] = big.count_ci95.unwrap();
            assert!(lo <= n && n <= hi);
            let m = big.mean.unwrap();
            assert!((0.0..=250.0).contains(&m));
            let [mlo, mhi] = big.mean_ci95.unwrap();
            assert!(mlo <= m && m <= mhi, "{big:?}");
            // Every shown count is at least the cell size; an empty or tiny band shows
            // nothing, never a zero.
            for cell in &r.cells {
                match cell.count {
                    Some(n) => assert!(n >= 11 && !cell.suppressed),
                    None => assert!(cell.suppressed && cell.mean.is_none()),
                }
            }
        }
        // The count is noisy: the scale is 2, so it is exactly right about a quarter of
        // the time, not every time.
        assert!(exact_seen < 35, "{exact_seen} of 50 exact");
    }

    /// The issue's attack: two overlapping queries whose cohorts differ by one patient (a
    /// filter that excludes the target), then n₂·mean₂ − n₁·mean₁, or sum₂ − sum₁, is the
    /// target's value. Under DP the recovered value carries the difference of two Laplace
    /// draws; its error follows that distribution, and the budget ends the game.
    #[tokio::test]
    async fn differencing_recovers_nothing_beyond_what_epsilon_allows() {
        let b = bands();
        let target = 187.3;
        let others: Vec<(usize, f64)> = (0..120).map(|i| (1, 150.0 + f64::from(i % 35))).collect();
        let without = contributions_of(&others);
        let mut with = others.clone();
        with.push((1, target));
        let with = contributions_of(&with);

        let eps = 1_000_000;
        let plan = dp::plan(b.len(), Some((0.0, 250.0)), eps).unwrap();
        let ((_, _), sum_scale) = plan.sum.unwrap();
        let runs = 2000;
        let mut errors = Vec::with_capacity(runs);
        let mut from_means = Vec::with_capacity(runs);
        for _ in 0..runs {
            let a = release(&plan, &with).unwrap();
            let z = release(&plan, &without).unwrap();
            let sa = a.sums.as_ref().unwrap()[1];
            let sz = z.sums.as_ref().unwrap()[1];
            errors.push(sa - sz - target);
            // The issue's own arithmetic on the released counts and means.
            let ra = present(&a, &plan, &b, 1);
            let rz = present(&z, &plan, &b, 1);
            let (na, ma) = (ra.cells[1].count.unwrap(), ra.cells[1].mean.unwrap());
            let (nz, mz) = (rz.cells[1].count.unwrap(), rz.cells[1].mean.unwrap());
            from_means.push(na as f64 * ma - nz as f64 * mz - target);
        }
        // The difference of two Laplace(b) draws has standard deviation 2b (b ≈ 500 here):
        // the estimate is off by hundreds, as the noise says, not exact.
        let sd = (errors.iter().map(|e| e * e).sum::<f64>() / runs as f64).sqrt();
        assert!(
            (1.6 * sum_scale..2.4 * sum_scale).contains(&sd),
            "sd {sd} for scale {sum_scale}"
        );
        let mean_err = errors.iter().sum::<f64>() / runs as f64;
        assert!(mean_err.abs() < 0.2 * sd, "biased: {mean_err}");
        // P(|error| <= 1) for that distribution is about 1/(2b) ≈ 0.1%: a few hits at most.
        let close = errors.iter().filter(|e| e.abs() <= 1.0).count();
        assert!(close <= runs / 100, "{close} of {runs} within 1 unit");
        let close = from_means.iter().filter(|e| e.abs() <= 1.0).count();
        assert!(
            close <= runs / 50,
            "{close} of {runs} within 1 unit by the means"
        );

        // What ε allows, checked directly: the odds of any outcome move by at most e^ε
        // between the neighbours. Here: "the band's count is at least 121".
        let count_plan = dp::plan(b.len(), None, 500_000).unwrap();
        let trials = 20_000;
        let hits = |c: &[Contribution]| {
            (0..trials)
                .filter(|_| release(&count_plan, c).unwrap().counts[1] >= 121)
                .count() as f64
                / trials as f64
        };
        let (p_with, p_without) = (hits(&with), hits(&without));
        let bound = (0.5f64).exp();
        assert!(p_with / p_without <= bound * 1.1, "{p_with} / {p_without}");
        assert!(
            p_with > p_without,
            "the neighbours are told apart by nothing at all?"
        );

        // The budget runs out: a study with 3 ε at 1 ε per query gets three answers, then
        // every query is refused and nothing more is spent.
        let db = crate::db::temporary().unwrap();
        let store = BudgetStore::open(&db);
        let study = "urn:fedgate:study:differencing";
        let total = 3_000_000;
        let mut answered = 0;
        for _ in 0..10 {
            match store.debit(study, plan.charge_micro, total).await.unwrap() {
                Debit::Spent { .. } => {
                    release(&plan, &with).unwrap();
                    answered += 1;
                }
                Debit::Refused { left } => assert!(left < plan.charge_micro),
            }
        }
        assert_eq!(answered, 3);
        assert!(store.spent(study).unwrap() <= total);
    }

    use crate::records::{import_paths, EmbeddedStore};
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
        let starts = [0u32, 18, 45, 65, 90];
        let mut cells = vec![(0u32, 0f64); starts.len()];
        for f in fx.iter().filter(|f| consented.contains(&f.id)) {
            let (y, m, d) = f.birth;
            let age = (2026 - y - i32::from((11, 28) < (m, d))) as u32;
            let band = starts.iter().rposition(|&lo| lo <= age).unwrap();
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
        let store = EmbeddedStore::open(&dir.path().join("r")).unwrap();
        import_paths(&store, &fixture_dirs()).unwrap();
        (dir, RecordSource::Embedded(store))
    }

    fn query(v: Value) -> CohortQuery {
        serde_json::from_value(v).unwrap()
    }

    fn tally(contributions: &[Contribution]) -> Vec<(u32, Option<f64>)> {
        let mut cells = vec![(0u32, 0f64, 0u32); 5];
        for c in contributions {
            cells[c.band].0 += 1;
            if let Some(v) = c.value {
                cells[c.band].1 += v;
                cells[c.band].2 += 1;
            }
        }
        cells
            .into_iter()
            .map(|(n, sum, valued)| {
                (
                    n,
                    (valued > 0).then(|| (sum / f64::from(valued) * 100.0).round() / 100.0),
                )
            })
            .collect()
    }

    /// The exact cohort behind the noise, against the fixtures' own JSON.
    #[tokio::test]
    async fn cohorts_match_the_fixtures() {
        let (_dir, src) = source().await;
        let fx = fixtures();
        let all: Vec<String> = fx.iter().map(|f| f.id.clone()).collect();
        let cases = [
            query(json!({})),
            query(json!({"sex": "female"})),
            query(json!({"conditions": ["E66.9", "E78.5"]})),
            query(json!({"observation": {"code": "8480-6"}})),
            query(json!({"observation": {"code": "4548-4", "min": 5.0}})),
            query(
                json!({"conditions": ["314529007"], "observation": {"code": "29463-7", "max": 30}}),
            ),
        ];
        for q in &cases {
            let want = expected(&fx, &all, q);
            let got = contributions(&src, &all, q, &bands(), test_now())
                .await
                .unwrap();
            assert_eq!(tally(&got), want, "{q:?}");
        }
        // Plain numbers, so that the expectation itself is checked too.
        let by_band: Vec<u32> = expected(&fx, &all, &cases[0]).iter().map(|c| c.0).collect();
        assert_eq!(by_band, [6, 7, 2, 3, 0]);

        // Only consenting patients count, once each; unknown ids add nothing.
        let mut some: Vec<String> = all[6..].to_vec();
        some.push("not-a-patient".into());
        some.push(all[7].clone());
        let got = contributions(&src, &some, &cases[0], &bands(), test_now())
            .await
            .unwrap();
        assert_eq!(got.len(), 12);
    }

    /// Hundreds of generated patients, a fifth over 89 and a fifth deceased: each counts
    /// in the band of its age at death (or today), every age over 89 in the one top band,
    /// and the released answer is useful yet noisy.
    #[tokio::test]
    async fn a_generated_cohort_with_the_very_old_and_the_dead() {
        let mut generator = synth::Generator::new(synth::Options {
            seed: 14,
            min_resources: 5,
            max_resources: 12,
            over_89: 0.2,
            deceased: 0.2,
            ..synth::Options::default()
        });
        let today = generator.options().today;
        let patients = generator.patients(300);
        let dir = tempfile::tempdir().unwrap();
        let bundles = dir.path().join("bundles");
        std::fs::create_dir_all(&bundles).unwrap();
        for (i, p) in patients.iter().enumerate() {
            let bytes = serde_json::to_vec(&p.bundle).unwrap();
            std::fs::write(bundles.join(format!("p{i}.json")), bytes).unwrap();
        }
        let store = EmbeddedStore::open(&dir.path().join("r")).unwrap();
        import_paths(&store, &[bundles]).unwrap();
        let src = RecordSource::Embedded(store);
        let now = today.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let ids: Vec<String> = patients
            .iter()
            .map(|p| p.identity.patient_id.clone())
            .collect();

        let b = bands();
        let mut want = vec![0u32; b.len()];
        for p in &patients {
            want[b.band_of(p.identity.age_on(today))] += 1;
        }
        let got = contributions(&src, &ids, &CohortQuery::default(), &b, now)
            .await
            .unwrap();
        let counts: Vec<u32> = tally(&got).iter().map(|c| c.0).collect();
        assert_eq!(counts, want);
        // The generator did make the cases that matter: people who would be over 89 today
        // but died younger, and people over 89.
        let died_young = patients.iter().filter(|p| {
            p.identity.deceased.is_some()
                && p.identity.age_on(today) < 90
                && age_at(&p.identity.birth_date.to_string(), now).unwrap() >= 90
        });
        assert!(died_young.count() > 0);
        assert!(want[4] > 10, "{want:?}");

        // What leaves: noisy, most bands shown at k = 11, ε as planned.
        let plan = dp::plan(b.len(), None, 500_000).unwrap();
        assert_eq!(plan.charge_micro, 500_000);
        let r = present(&release(&plan, &got).unwrap(), &plan, &b, 11);
        assert!(
            r.cells.iter().filter(|c| !c.suppressed).count() >= 4,
            "{r:?}"
        );
        for (cell, n) in r.cells.iter().zip(&want) {
            if let (Some(c), Some([lo, hi])) = (cell.count, cell.count_ci95) {
                // Scale 2: the 95% interval is a few units wide.
                assert!(
                    hi - lo <= 20 && (c - i64::from(*n)).abs() <= 40,
                    "{cell:?} vs {n}"
                );
            }
        }
        let text = serde_json::to_string(&r).unwrap();
        assert!(ids.iter().all(|id| !text.contains(id.as_str())));
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
