//! Access events: what a gateway reports about every decision it makes.
//!
//! No PHI: the patient appears only as a pseudonym the custodian can map back with its own
//! key, and, where the patient has a DID, as a digest of that DID so that the patient can
//! find their own history across the federation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessEvent {
    /// UUIDv7: time-ordered, unique, the idempotency key end to end.
    pub id: String,
    pub time: DateTime<Utc>,
    pub custodian: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// Pseudonym of the custodian's patient, keyed by the custodian's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<String>,
    /// SHA-256 of the patient's DID, when known from a consent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patient_did_digests: Vec<String>,
    pub domain: String,
    pub purpose: String,
    #[serde(default)]
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub record_count: u64,
    pub decision: Outcome,
    pub decision_id: String,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub policy_digest: String,
    #[serde(default)]
    pub credential_ids: Vec<String>,
    /// The verification check that failed, when the request never reached policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_check: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    #[serde(default)]
    pub review_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl AccessEvent {
    /// A new event id (UUIDv7).
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// The digest under which a patient's DID appears in events.
pub fn patient_did_digest(did: &str) -> String {
    hex::encode(Sha256::digest(did.as_bytes()))
}
