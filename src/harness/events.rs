//! A realistic access log for the demo and the dashboard's tests: hundreds of events over
//! a simulated time range, as a federation's gateways would report them (clinical reads
//! by several organizations, billing and research, denials by policy and by each failing
//! verification check, break-glass accesses some of which are long past their review
//! deadline, research queries spending a study's privacy budget). Deterministic for a
//! seed. No PHI: patients are pseudonyms and DID digests, as in every event.

use anyhow::anyhow;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use federation::events::{patient_did_digest, AccessEvent, Outcome, PrivacySpend};
use federation::keys::KeyPair;

/// The justification of the generated break-glass accesses.
pub const JUSTIFICATION: &str =
    "unconscious patient in the emergency department, no consent on file";
/// The study whose budget the generated research queries spend.
pub const STUDY: &str = "urn:fedgate:study:diabetes-outcomes";
/// Verification checks the generated denials fail, most frequent first.
pub const FAILED_CHECKS: [&str; 6] = [
    "proof",
    "challenge",
    "status",
    "validity",
    "holder-binding",
    "issuer-trust",
];
const CLASSES: [&str; 6] = [
    "Patient",
    "Observation",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "Procedure",
];

/// xorshift64*: small, deterministic, good enough to spread test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What to generate.
pub struct LogSpec<'a> {
    /// The custodians reporting (each event names one).
    pub custodians: &'a [&'a str],
    /// The requesting organizations, the first ones most active.
    pub requester_orgs: &'a [&'a str],
    /// How many events.
    pub count: usize,
    /// Over how long before `end`.
    pub span: Duration,
    pub end: DateTime<Utc>,
    pub seed: u64,
}

/// The pseudonym of generated patient `n` at `custodian` (what a gateway would log).
pub fn patient_ref(custodian: &str, n: u64) -> String {
    let digest = federation::events::patient_did_digest(&format!("{custodian}#patient-{n}"));
    format!("pt-{}", &digest[..24])
}

/// The DID digest of generated patient `n` (patients 0 to 9 have a DID).
pub fn patient_digest(n: u64) -> String {
    patient_did_digest(&format!("did:key:z6MkgeneratedPatient{n}"))
}

/// The events, oldest first.
pub fn generate(spec: &LogSpec<'_>) -> Vec<AccessEvent> {
    let mut rng = Rng(spec.seed | 1);
    let span_ms = spec.span.num_milliseconds().max(1) as u64;
    let mut times: Vec<DateTime<Utc>> = (0..spec.count)
        .map(|_| spec.end - Duration::milliseconds(rng.below(span_ms) as i64))
        .collect();
    times.sort();
    let mut budget_left: u64 = 10_000_000;
    let mut out = Vec::with_capacity(spec.count);
    for time in times {
        let custodian = (*rng.pick(spec.custodians)).to_string();
        // The first organizations ask most: pick among the first k, k random.
        let k = 1 + rng.below(spec.requester_orgs.len() as u64) as usize;
        let requester_org = spec.requester_orgs[rng.below(k as u64) as usize].to_string();
        let clinician = rng.below(30);
        let patient = rng.below(80);
        let domain = match rng.below(100) {
            0..=74 => "clinical",
            75..=84 => "billing",
            85..=94 => "research",
            _ => "detokenize",
        };
        let purpose = match domain {
            "clinical" => *rng.pick(&["TREAT", "TREAT", "TREAT", "CAREMGT", "ETREAT"]),
            "billing" => "HPAYMT",
            "research" => "HRESCH",
            _ => "TREAT",
        };
        let n_classes = 1 + rng.below(3) as usize;
        let start = rng.below(CLASSES.len() as u64) as usize;
        let mut classes: Vec<String> = (0..n_classes)
            .map(|i| CLASSES[(start + i) % CLASSES.len()].to_string())
            .collect();
        classes.dedup();
        let mut e = AccessEvent {
            id: AccessEvent::new_id(),
            time,
            custodian: custodian.clone(),
            requester_org: Some(requester_org),
            requester: Some(format!("did:key:z6MkgeneratedClinician{clinician:02}")),
            patient_ref: (domain != "research").then(|| patient_ref(&custodian, patient)),
            patient_did_digests: if patient < 10 && domain != "research" {
                vec![patient_digest(patient)]
            } else {
                vec![]
            },
            domain: domain.into(),
            purpose: purpose.into(),
            data_classes: classes.clone(),
            record_count: 0,
            decision: Outcome::Allow,
            decision_id: uuid::Uuid::new_v4().to_string(),
            reasons: vec![],
            policy_digest: "5f2c".repeat(16),
            credential_ids: vec![format!("urn:uuid:{}", uuid::Uuid::new_v4())],
            failed_check: None,
            break_glass: false,
            justification: None,
            review_required: false,
            expires_at: None,
            privacy: None,
        };
        let roll = rng.below(100);
        if roll < 8 {
            // A presentation that failed verification: never reached policy.
            let check = if rng.percent(50) {
                FAILED_CHECKS[0]
            } else {
                *rng.pick(&FAILED_CHECKS)
            };
            e.decision = Outcome::Deny;
            e.failed_check = Some(check.into());
            e.reasons = vec![format!("verification failed: {check}")];
            e.credential_ids.clear();
        } else if roll < 18 {
            e.decision = Outcome::Deny;
            e.reasons = vec![if rng.percent(50) {
                format!("denied by default: no {domain} rule applied")
            } else {
                format!("no consent permits {domain}/{purpose} for the requested data classes")
            }];
        } else if domain == "clinical" && roll < 24 {
            e.purpose = "ETREAT".into();
            e.break_glass = true;
            e.review_required = true;
            e.justification = Some(JUSTIFICATION.into());
            e.expires_at = Some(time + Duration::minutes(30));
            e.reasons = vec![format!(
                "break-glass ETREAT without consent for {}; review required",
                classes.join(", ")
            )];
            e.record_count = 1 + rng.below(40);
        } else if domain == "research" {
            let spend = 100_000 * (1 + rng.below(5));
            if budget_left >= spend {
                budget_left -= spend;
                e.privacy = Some(PrivacySpend {
                    study: STUDY.into(),
                    epsilon_micro: spend,
                    budget_left_micro: budget_left,
                });
                e.reasons = vec![format!(
                    "the study may query {} in aggregate",
                    classes.join(", ")
                )];
                e.record_count = 1;
            } else {
                e.decision = Outcome::Deny;
                e.reasons = vec![federation::events::PRIVACY_BUDGET_REASON.into()];
                e.privacy = Some(PrivacySpend {
                    study: STUDY.into(),
                    epsilon_micro: 0,
                    budget_left_micro: budget_left,
                });
            }
        } else {
            e.reasons = vec![format!(
                "consent permits {purpose} for {}",
                classes.join(", ")
            )];
            e.record_count = 1 + rng.below(40);
        }
        out.push(e);
    }
    out
}

/// Reports `events` to the visibility service at `base` (its URL, ending in `/`) as
/// `key`'s organization, in signed batches of at most 500, as a gateway's shipper does.
/// Every event must name `key`'s DID as custodian.
pub async fn report(base: &str, key: &KeyPair, events: &[AccessEvent]) -> anyhow::Result<()> {
    let client = federation::client::http_client();
    for chunk in events.chunks(500) {
        let jws = federation::jose::sign(
            &json!({"custodian": key.did(), "events": chunk}),
            key,
            federation::wire::BATCH_TYP,
        )?;
        let res = client
            .post(format!("{base}v1/batches"))
            .json(&json!({ "batch": jws }))
            .send()
            .await?;
        if !res.status().is_success() {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            return Err(anyhow!("the log refused a batch: {status} {body}"));
        }
    }
    Ok(())
}
