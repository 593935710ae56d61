//! Consents patients register with this custodian, and withdrawals.
//!
//! Clinical and billing requests carry their consents in the presentation; research queries
//! cannot (a study has no relation to each patient), so the cohort is formed only from
//! consents patients registered here. A withdrawal is remembered by credential id and wins
//! over any presentation of the same consent.

use chrono::{DateTime, Utc};
use federation::verify::VerifiedCredential;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredConsent {
    pub id: String,
    pub patient_did: String,
    /// The custodian's Patient.id the consent's identifiers resolved to at registration.
    pub patient_id: Option<String>,
    pub issuer: String,
    pub subject: Value,
    pub registered_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct ConsentStore {
    consents: sled::Tree,
    withdrawn: sled::Tree,
}

fn storage(e: impl std::fmt::Display) -> String {
    format!("consent store: {e}")
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a consent's period covers `now`.
pub fn period_covers(subject: &Value, now: DateTime<Utc>) -> bool {
    let period = &subject["period"];
    let start = period["start"].as_str().and_then(federation::time::parse);
    let end = period["end"].as_str().and_then(federation::time::parse);
    start.is_some_and(|s| s <= now) && end.is_none_or(|e| now <= e)
}

impl ConsentStore {
    pub fn open(db: &sled::Db) -> Result<Self, String> {
        Ok(ConsentStore {
            consents: db.open_tree("consents").map_err(storage)?,
            withdrawn: db.open_tree("consent_withdrawals").map_err(storage)?,
        })
    }

    pub fn register(
        &self,
        vc: &VerifiedCredential,
        patient_id: Option<String>,
    ) -> Result<StoredConsent, String> {
        let id = vc.id.clone().unwrap_or_else(|| vc.digest.clone());
        let stored = StoredConsent {
            id: id.clone(),
            patient_did: vc.subject["id"].as_str().unwrap_or_default().to_string(),
            patient_id,
            issuer: vc.issuer.clone(),
            subject: vc.subject.clone(),
            registered_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(storage)?;
        self.consents
            .insert(id.as_bytes(), bytes)
            .map_err(storage)?;
        self.consents.flush().map_err(storage)?;
        Ok(stored)
    }

    pub fn withdraw(&self, id: &str) -> Result<(), String> {
        self.withdrawn
            .insert(id.as_bytes(), Utc::now().to_rfc3339().as_bytes())
            .map_err(storage)?;
        self.withdrawn.flush().map_err(storage)?;
        Ok(())
    }

    pub fn is_withdrawn(&self, id: &str) -> bool {
        // If the store cannot answer, treat the consent as withdrawn (fail closed).
        self.withdrawn.contains_key(id.as_bytes()).unwrap_or(true)
    }

    pub fn get(&self, id: &str) -> Option<StoredConsent> {
        let v = self.consents.get(id.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    pub fn all(&self) -> Vec<StoredConsent> {
        self.consents
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .filter(|c: &StoredConsent| !self.is_withdrawn(&c.id))
            .collect()
    }

    /// DIDs of the patient behind a custodian patient id, from consents registered here
    /// (withdrawn ones included: the history is still theirs).
    pub fn dids_for_patient(&self, patient_id: &str) -> Vec<String> {
        let mut dids: Vec<String> = self
            .consents
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<StoredConsent>(&v).ok())
            .filter(|c| c.patient_id.as_deref() == Some(patient_id))
            .map(|c| c.patient_did)
            .filter(|d| !d.is_empty())
            .collect();
        dids.sort();
        dids.dedup();
        dids
    }

    /// Patients (custodian ids) whose registered consent permits `purpose` in the research
    /// domain to this study or its sponsor now, unless any registered deny for them matches.
    pub fn research_cohort(
        &self,
        study_id: &str,
        sponsor: &str,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let all = self.all();
        let matches = |c: &StoredConsent| {
            let grantee = c.subject["grantee"]["id"].as_str().unwrap_or_default();
            (grantee == study_id || grantee == sponsor)
                && strs(&c.subject, "domains").iter().any(|d| d == "research")
                && strs(&c.subject, "purposes").iter().any(|p| p == purpose)
                && period_covers(&c.subject, now)
        };
        let denied: Vec<&str> = all
            .iter()
            .filter(|c| c.subject["provision"] == "deny" && matches(c))
            .filter_map(|c| c.patient_id.as_deref())
            .collect();
        let mut out: Vec<String> = all
            .iter()
            .filter(|c| c.subject["provision"] == "permit" && matches(c))
            .filter_map(|c| c.patient_id.clone())
            .filter(|p| !denied.contains(&p.as_str()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
