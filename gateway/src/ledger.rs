//! The ledger of one request: what its access event is made of, filled in as the request
//! goes, so that every way out of a request (refused, denied, allowed, failed) records
//! the same event.

use std::time::Instant;

use chrono::{DateTime, Utc};
use federation::events::{AccessEvent, Outcome, PrivacySpend};
use federation::verify::VerifiedPresentation;
use serde::{Deserialize, Serialize};
use service::nonce::Unspent;

use crate::policy::requester_org;

/// What the event of a decision is made of, filled in as the request goes. It is kept
/// with a paged answer's cursor ([`crate::paging`]), for the events of its later pages.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ledger {
    pub decision_id: String,
    /// The event's own id when it is not the decision's first (a later page of a paged
    /// answer is recorded as another event of the same decision).
    pub event_id: Option<String>,
    /// When this process started on the request (for its latency), so not kept: a ledger
    /// read back is one of a later request, which starts it again.
    #[serde(skip, default = "Instant::now")]
    pub started: Instant,
    pub time: DateTime<Utc>,
    pub domain: String,
    pub purpose: String,
    pub data_classes: Vec<String>,
    pub requester: Option<String>,
    pub requester_org: Option<String>,
    pub patient_ref: Option<String>,
    pub patient_did_digests: Vec<String>,
    pub credential_ids: Vec<String>,
    pub justification: Option<String>,
    /// What a research query spent of its study's privacy budget.
    pub privacy: Option<PrivacySpend>,
    /// The presentation's challenge, checked but not yet recorded as used: the write of
    /// this request's event records its use ([`crate::outbox::Outbox::append_spending`]).
    /// Never kept with a cursor: a later page presents no challenge.
    #[serde(skip)]
    pub challenge: Option<Unspent>,
}

impl Ledger {
    pub fn new(domain: &str, purpose: &str, data_classes: &[String]) -> Self {
        Ledger {
            decision_id: AccessEvent::new_id(),
            event_id: None,
            started: Instant::now(),
            time: Utc::now(),
            domain: domain.to_string(),
            purpose: purpose.to_string(),
            data_classes: data_classes.to_vec(),
            requester: None,
            requester_org: None,
            patient_ref: None,
            patient_did_digests: Vec::new(),
            credential_ids: Vec::new(),
            justification: None,
            privacy: None,
            challenge: None,
        }
    }

    /// The ledger of a later event of the same decision (a page fetched later), at now.
    pub fn follow_up(&self) -> Ledger {
        Ledger {
            event_id: Some(AccessEvent::new_id()),
            started: Instant::now(),
            time: Utc::now(),
            challenge: None,
            ..self.clone()
        }
    }

    pub fn note_presentation(&mut self, vp: &VerifiedPresentation) {
        self.requester = Some(vp.holder.clone());
        self.requester_org = requester_org(vp);
        self.credential_ids = vp
            .credentials
            .iter()
            .map(|c| c.id.clone().unwrap_or_else(|| c.digest.clone()))
            .collect();
    }

    pub(crate) fn event(&self, custodian: &str, outcome: Outcome) -> AccessEvent {
        AccessEvent {
            id: self
                .event_id
                .clone()
                .unwrap_or_else(|| self.decision_id.clone()),
            time: self.time,
            custodian: custodian.to_string(),
            requester_org: self.requester_org.clone(),
            requester: self.requester.clone(),
            patient_ref: self.patient_ref.clone(),
            patient_did_digests: self.patient_did_digests.clone(),
            domain: self.domain.clone(),
            purpose: self.purpose.clone(),
            data_classes: self.data_classes.clone(),
            record_count: 0,
            decision: outcome,
            decision_id: self.decision_id.clone(),
            reasons: Vec::new(),
            policy_digest: String::new(),
            credential_ids: self.credential_ids.clone(),
            failed_check: None,
            break_glass: false,
            justification: self.justification.clone(),
            review_required: false,
            expires_at: None,
            privacy: self.privacy.clone(),
        }
    }
}
