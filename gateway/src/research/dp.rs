//! The noisy release of one research query, with OpenDP's measurements and their privacy
//! maps (docs/privacy.md).
//!
//! Each consenting patient is one row (the cohort is deduplicated by patient), so the
//! neighbouring datasets are "add or remove one patient": `d_in = 1` under
//! `SymmetricDistance`. A query releases
//! - the count of every age band at once: `make_count_by_categories` (one patient moves one
//!   band's count by one, L1 sensitivity 1) then discrete Laplace noise on the `i64`
//!   vector, so counts stay integers;
//! - with an observation, the sum of each band's values, clamped to the declared bounds,
//!   with Laplace noise. The bands partition the patients by a function of the patient's
//!   own record, so one patient changes one band's sum: the per-band releases compose in
//!   parallel and the query is charged one band's ε (every band gets the same
//!   measurement). The mean is the noisy sum over the noisy count (post-processing).
//!
//! The ε charged is what the measurements' privacy maps say (`map(&1)`), rounded up to
//! whole micro-ε, never the ε the requester asked for. Measurements are `!Send`: they are
//! built and invoked inside one blocking task, and rebuilt for every query.

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::{L1Distance, SymmetricDistance};
use opendp::transformations::{make_clamp, make_count_by_categories, make_sum};
use opendp::utilities::fallible_binary_search;

/// One ε in micro-ε: budgets and charges are whole numbers of these.
pub const MICRO: f64 = 1_000_000.0;
/// Most age bands a custodian may configure (band indices are `u8`).
pub const MAX_BANDS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum DpError {
    /// OpenDP refused to build or run a measurement. Its message names parameters, never
    /// data; the backtrace is dropped.
    #[error("the privacy mechanism failed: {0}")]
    Mechanism(String),
    /// A mechanism came out with a zero, negative or non-finite noise scale or ε: it would
    /// release exact values, so it is refused.
    #[error("the privacy mechanism has no usable noise scale")]
    Degenerate,
    #[error("{0}")]
    Invalid(&'static str),
}

impl From<opendp::error::Error> for DpError {
    fn from(e: opendp::error::Error) -> Self {
        DpError::Mechanism(format!(
            "{:?}: {}",
            e.variant,
            e.message.unwrap_or_default()
        ))
    }
}

/// The parameters of one query's release: plain numbers (`Send`), from which the
/// measurements are rebuilt where they run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub bands: usize,
    pub count_scale: f64,
    /// The clamping bounds and the noise scale of each band's sum, with an observation.
    pub sum: Option<((f64, f64), f64)>,
    /// What the measurements' maps say the release costs, rounded up to micro-ε.
    pub charge_micro: u64,
}

/// What leaves: noisy counts per band, and noisy clamped sums per band with an observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Noisy {
    pub counts: Vec<i64>,
    pub sums: Option<Vec<f64>>,
}

type CountMeasurement =
    Measurement<VectorDomain<AtomDomain<u8>>, SymmetricDistance, MaxDivergence, Vec<i64>>;
type SumMeasurement =
    Measurement<VectorDomain<AtomDomain<f64>>, SymmetricDistance, MaxDivergence, f64>;

fn band_categories(bands: usize) -> Result<Vec<u8>, DpError> {
    let n = u8::try_from(bands)
        .ok()
        .filter(|n| (1..=MAX_BANDS as u8).contains(n))
        .ok_or(DpError::Invalid("1 to 20 age bands"))?;
    Ok((0..n).collect())
}

/// Counts of every band (band index per patient), discrete Laplace noise of `scale`.
fn count_measurement(bands: usize, scale: f64) -> Result<CountMeasurement, DpError> {
    positive_scale(scale)?;
    let t = make_count_by_categories::<L1Distance<i64>, u8, i64>(
        VectorDomain::new(AtomDomain::default()),
        SymmetricDistance,
        band_categories(bands)?,
        false,
    )?;
    let noise = make_laplace(
        t.output_domain.clone(),
        t.output_metric.clone(),
        scale,
        None,
    )?;
    Ok((t >> noise)?)
}

/// The sum of one band's values, clamped to `bounds` (always), Laplace noise of `scale`.
fn sum_measurement(bounds: (f64, f64), scale: f64) -> Result<SumMeasurement, DpError> {
    positive_scale(scale)?;
    let clamp = make_clamp(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        SymmetricDistance,
        bounds,
    )?;
    let sum = make_sum(clamp.output_domain.clone(), clamp.output_metric.clone())?;
    let noise = make_laplace(
        sum.output_domain.clone(),
        sum.output_metric.clone(),
        scale,
        None,
    )?;
    Ok(((clamp >> sum)? >> noise)?)
}

/// OpenDP accepts a scale of 0 (infinite ε, exact release): never here.
fn positive_scale(scale: f64) -> Result<(), DpError> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(DpError::Degenerate)
    }
}

/// The smallest number of micro-ε whose value is at least `epsilon`.
pub fn micro_up(epsilon: f64) -> Result<u64, DpError> {
    if !epsilon.is_finite() || epsilon <= 0.0 || epsilon > 1e6 {
        return Err(DpError::Degenerate);
    }
    // In range: at most 1e12, exact in f64 and in u64.
    let mut m = (epsilon * MICRO).ceil() as u64;
    while m > 1 && (m - 1) as f64 / MICRO >= epsilon {
        m -= 1;
    }
    while (m as f64 / MICRO) < epsilon {
        m += 1;
    }
    Ok(m)
}

/// The smallest noise scale whose measurement `check`s at `d_in = 1` within `epsilon`.
fn scale_for<M>(epsilon: f64, build: impl Fn(f64) -> Result<M, DpError>) -> Result<f64, DpError>
where
    M: Checks,
{
    let scale = fallible_binary_search(
        |s: &f64| {
            if !(s.is_finite() && *s > 0.0) {
                return Ok(false);
            }
            match build(*s) {
                Ok(m) => m.check_one(epsilon),
                Err(_) => Ok(false),
            }
        },
        (),
    )?;
    positive_scale(scale)?;
    Ok(scale)
}

/// `check(&1, &ε)` and `map(&1)` of the two measurement types.
trait Checks {
    fn check_one(&self, epsilon: f64) -> opendp::error::Fallible<bool>;
    fn map_one(&self) -> opendp::error::Fallible<f64>;
}

impl<TO> Checks
    for Measurement<VectorDomain<AtomDomain<u8>>, SymmetricDistance, MaxDivergence, TO>
{
    fn check_one(&self, epsilon: f64) -> opendp::error::Fallible<bool> {
        self.check(&1, &epsilon)
    }
    fn map_one(&self) -> opendp::error::Fallible<f64> {
        self.map(&1)
    }
}

impl<TO> Checks
    for Measurement<VectorDomain<AtomDomain<f64>>, SymmetricDistance, MaxDivergence, TO>
{
    fn check_one(&self, epsilon: f64) -> opendp::error::Fallible<bool> {
        self.check(&1, &epsilon)
    }
    fn map_one(&self) -> opendp::error::Fallible<f64> {
        self.map(&1)
    }
}

/// Plans a release of `bands` counts (and sums over `bounds`) within `epsilon_micro`: half
/// of it for the counts and half for the sums when there are sums. Blocking (OpenDP).
pub fn plan(bands: usize, bounds: Option<(f64, f64)>, epsilon_micro: u64) -> Result<Plan, DpError> {
    if epsilon_micro == 0 {
        return Err(DpError::Degenerate);
    }
    band_categories(bands)?;
    if let Some((lo, hi)) = bounds {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(DpError::Invalid(
                "the bounds must be finite, lower below upper",
            ));
        }
    }
    let (count_micro, sum_micro) = match bounds {
        None => (epsilon_micro, 0),
        Some(_) => (epsilon_micro / 2, epsilon_micro - epsilon_micro / 2),
    };
    if count_micro == 0 {
        return Err(DpError::Degenerate);
    }
    let count_eps = count_micro as f64 / MICRO;
    let count_scale = scale_for(count_eps, |s| count_measurement(bands, s))?;
    let mut spent = count_measurement(bands, count_scale)?.map_one()?;
    let sum = match bounds {
        None => None,
        Some(b) => {
            let sum_eps = sum_micro as f64 / MICRO;
            let scale = scale_for(sum_eps, |s| sum_measurement(b, s))?;
            // Parallel composition over the bands: one band's ε.
            spent += sum_measurement(b, scale)?.map_one()?;
            Some((b, scale))
        }
    };
    let charge_micro = micro_up(spent)?;
    Ok(Plan {
        bands,
        count_scale,
        sum,
        charge_micro,
    })
}

/// Runs the planned release: `band_of` holds each patient's band, `values[b]` the values
/// of band `b`'s patients (with an observation). Blocking (OpenDP).
pub fn release(plan: &Plan, band_of: &[u8], values: &[Vec<f64>]) -> Result<Noisy, DpError> {
    let counts = count_measurement(plan.bands, plan.count_scale)?.invoke(&band_of.to_vec())?;
    if counts.len() != plan.bands {
        return Err(DpError::Invalid("the count release has the wrong length"));
    }
    let sums = match plan.sum {
        None => None,
        Some((bounds, scale)) => {
            if values.len() != plan.bands {
                return Err(DpError::Invalid("values are not given per band"));
            }
            let m = sum_measurement(bounds, scale)?;
            let mut sums = Vec::with_capacity(plan.bands);
            for band in values {
                sums.push(m.invoke(band)?);
            }
            Some(sums)
        }
    };
    Ok(Noisy { counts, sums })
}

/// The half-width `h` with P(|Z| > h) <= `alpha` for discrete Laplace noise Z of `scale`:
/// P(Z = k) ∝ exp(-|k|/scale), so P(|Z| >= t) = 2 q^t / (1 + q) with q = exp(-1/scale).
pub fn discrete_half_width(scale: f64, alpha: f64) -> u64 {
    let q = (-1.0 / scale).exp();
    if !(q > 0.0 && q < 1.0) {
        return 0;
    }
    let t = ((alpha * (1.0 + q) / 2.0).ln() / q.ln()).ceil();
    (t - 1.0).max(0.0) as u64
}

/// The half-width `h` with P(|Z| > h) = `alpha` for Laplace noise Z of `scale`.
pub fn continuous_half_width(scale: f64, alpha: f64) -> f64 {
    scale * (1.0 / alpha).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_what_the_maps_say_rounded_up() {
        let p = plan(5, None, 500_000).unwrap();
        assert_eq!(p.charge_micro, 500_000);
        assert!((p.count_scale - 2.0).abs() < 1e-6, "{}", p.count_scale);
        let p = plan(5, Some((0.0, 250.0)), 1_000_000).unwrap();
        assert!(
            p.charge_micro <= 1_000_000 && p.charge_micro >= 999_990,
            "{p:?}"
        );
        let ((lo, hi), s) = p.sum.unwrap();
        assert_eq!((lo, hi), (0.0, 250.0));
        // Sensitivity 250 at ε = 0.5: a scale of about 500.
        assert!((499.0..=501.0).contains(&s), "{s}");
        assert_eq!(micro_up(0.25).unwrap(), 250_000);
        assert_eq!(micro_up(0.250_000_000_1).unwrap(), 250_001);
        assert_eq!(micro_up(1e-9).unwrap(), 1);
    }

    #[test]
    fn the_smallest_and_largest_queries_plan() {
        // One micro-ε (the bench's queries): a scale of a million, charged one micro-ε.
        let p = plan(5, None, 1).unwrap();
        assert_eq!(p.charge_micro, 1);
        assert!(p.count_scale > 999_000.0, "{}", p.count_scale);
        let p = plan(20, Some((-1e4, 1e4)), 1_000_000).unwrap();
        assert!(p.charge_micro <= 1_000_000);
    }

    #[test]
    fn degenerate_parameters_are_refused() {
        assert!(matches!(plan(5, None, 0), Err(DpError::Degenerate)));
        assert!(plan(0, None, 1000).is_err());
        assert!(plan(21, None, 1000).is_err());
        assert!(plan(5, Some((1.0, 1.0)), 1000).is_err());
        assert!(plan(5, Some((f64::NAN, 1.0)), 1000).is_err());
        assert!(count_measurement(5, 0.0).is_err());
        assert!(sum_measurement((0.0, 1.0), 0.0).is_err());
        assert!(sum_measurement((0.0, 1.0), f64::INFINITY).is_err());
        for e in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(micro_up(e).is_err());
        }
    }

    #[test]
    fn values_are_clamped_to_the_bounds() {
        let p = plan(1, Some((0.0, 10.0)), 2_000_000).unwrap();
        // A huge value counts as 10; the noise is small next to 1e6.
        let mut total = 0.0;
        for _ in 0..50 {
            let r = release(&p, &[0], &[vec![1e6]]).unwrap();
            total += r.sums.unwrap()[0];
        }
        assert!((total / 50.0 - 10.0).abs() < 10.0, "{}", total / 50.0);
    }

    #[test]
    fn intervals_cover_the_noise() {
        let p = plan(1, None, 200_000).unwrap();
        let h = discrete_half_width(p.count_scale, 0.05) as i64;
        let n = 4000;
        let mut outside = 0;
        for _ in 0..n {
            let c = release(&p, &[0; 100], &[]).unwrap().counts[0];
            if (c - 100).abs() > h {
                outside += 1;
            }
        }
        // At most 5% expected; allow sampling error.
        assert!(outside < n * 7 / 100, "{outside} of {n} outside ±{h}");
        assert!(outside > 0, "no noise at all");
        assert_eq!(discrete_half_width(f64::INFINITY, 0.05), 0);
        assert!((continuous_half_width(1.0, 0.05) - 20f64.ln()).abs() < 1e-12);
    }
}
