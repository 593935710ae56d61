//! The visibility log's wire types: what a gateway sends (signed batches of access events,
//! receipt queries) and gets back (receipts, checkpoints), and the log's leaves, so that a
//! gateway or an auditor can recompute a leaf and check its inclusion without the
//! service's code.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::AccessEvent;

/// The JWS `typ` of a batch.
pub const BATCH_TYP: &str = "fedgate-batch+jwt";
/// Most events one batch may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Largest batch JWS accepted (larger than `jose::MAX_JWS_BYTES`, which is sized for
/// credentials): a batch of [`MAX_BATCH_EVENTS`] typical events (~1 KiB each once signed)
/// fits with room to spare, so an over-count batch is refused by the count check, which
/// names the count. The service's body limit (`limits.max_body_bytes`) must stay above it.
pub const MAX_BATCH_JWS_BYTES: usize = 4 * 1024 * 1024;

/// One leaf of the log.
// Unboxed: gateways build `Access { event }` themselves to recompute their leaves, and
// entries are short-lived, so the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LogEntry {
    /// An access decision reported by its custodian.
    Access { event: AccessEvent },
    /// An auditor resolved a break-glass review; the note itself stays off the log.
    Review {
        event_id: String,
        resolved_by: String,
        note_digest: String,
        time: DateTime<Utc>,
    },
}

/// The leaf data of an entry: its JSON, fields in declaration order, so that a gateway can
/// recompute the leaf of its own event and check its inclusion.
pub fn leaf_bytes(entry: &LogEntry) -> Vec<u8> {
    // Serializing these plain structs cannot fail (string keys, no non-finite floats);
    // an empty leaf would only ever fail inclusion checks, never pass one.
    serde_json::to_vec(entry).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub batch: String,
}

/// The signed content of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPayload {
    pub custodian: String,
    pub events: Vec<AccessEvent>,
}

/// [`BatchPayload`] as a reporter writes it, borrowing its events: a batch of hundreds of
/// events is signed without copying them or building them as JSON values first.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BatchPayloadRef<'a> {
    pub custodian: &'a str,
    pub events: &'a [AccessEvent],
}

/// [`BatchRequest`] as a reporter writes it, borrowing the signed batch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BatchRequestRef<'a> {
    pub batch: &'a str,
}

/// What a reporter gets back for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub event_id: String,
    pub leaf_index: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub receipts: Vec<Receipt>,
    pub tree_size: u64,
    pub checkpoint: String,
}

/// Each asked-for event names its id and its leaf hash; an index is given only when the
/// stored leaf has exactly that hash. The answer thus tells nothing to someone who does not
/// already hold the event, and needs no signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsRequest {
    pub custodian: String,
    pub events: Vec<ReceiptQuery>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReceiptQuery {
    pub id: String,
    /// Hex SHA-256 RFC 6962 leaf hash of the event's log entry.
    pub leaf_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptsResponse {
    /// Events found, each at an index below `treeSize`.
    pub receipts: Vec<Receipt>,
    /// Ids logged with a different leaf: the log disagrees with the reporter.
    pub conflicts: Vec<String>,
    pub tree_size: u64,
    pub checkpoint: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;

    #[test]
    fn leaf_bytes_are_tagged_struct_ordered_json() {
        let time = "2026-03-01T10:00:00Z".parse().unwrap();
        let review = LogEntry::Review {
            event_id: "e1".into(),
            resolved_by: "did:key:zA".into(),
            note_digest: "ab".into(),
            time,
        };
        assert_eq!(
            String::from_utf8(leaf_bytes(&review)).unwrap(),
            r#"{"kind":"review","event_id":"e1","resolved_by":"did:key:zA","note_digest":"ab","time":"2026-03-01T10:00:00Z"}"#
        );
        let event = AccessEvent {
            id: "0190".into(),
            time,
            custodian: "did:web:b.test".into(),
            requester_org: None,
            requester: None,
            patient_ref: None,
            patient_did_digests: vec![],
            domain: "clinical".into(),
            purpose: "TREAT".into(),
            data_classes: vec![],
            record_count: 0,
            decision: Outcome::Deny,
            decision_id: "d".into(),
            reasons: vec![],
            policy_digest: String::new(),
            credential_ids: vec![],
            failed_check: None,
            break_glass: false,
            justification: None,
            review_required: false,
            expires_at: None,
            privacy: None,
        };
        let entry = LogEntry::Access { event };
        let bytes = leaf_bytes(&entry);
        assert!(String::from_utf8(bytes.clone())
            .unwrap()
            .starts_with(r#"{"kind":"access","event":{"id":"0190","time":"2026-03-01T10:00:00Z","custodian":"did:web:b.test","domain""#));
        // What a gateway recomputes from the parsed leaf is the same bytes.
        let back: LogEntry = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(leaf_bytes(&back), bytes);
    }

    #[test]
    fn a_batch_written_borrowed_reads_back_as_the_owned_wire_types() {
        let LogEntry::Access { event } = sample_access() else {
            unreachable!()
        };
        let mut second = event.clone();
        second.id = "0191".into();
        second.reasons = vec!["a \"quoted\" reason\n".into()];
        let events = vec![event, second];
        let written = serde_json::to_vec(&BatchPayloadRef {
            custodian: "did:web:b.test",
            events: &events,
        })
        .unwrap();
        let read: BatchPayload = serde_json::from_slice(&written).unwrap();
        assert_eq!(read.custodian, "did:web:b.test");
        assert_eq!(read.events, events);
        assert_eq!(
            serde_json::to_vec(&read).unwrap(),
            written,
            "the same bytes as the owned type"
        );
        let body = serde_json::to_vec(&BatchRequestRef { batch: "a.b.c" }).unwrap();
        let read: BatchRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(read.batch, "a.b.c");
    }

    fn sample_access() -> LogEntry {
        let bytes = br#"{"kind":"access","event":{"id":"0190","time":"2026-03-01T10:00:00Z","custodian":"did:web:b.test","domain":"clinical","purpose":"TREAT","decision":"deny","decisionId":"d"}}"#;
        serde_json::from_slice(bytes).unwrap()
    }
}
