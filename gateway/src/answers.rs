//! Tokenized pages kept for the next request that would make the same one.
//!
//! A page of an answer is a function of what it is made from: the record as stored (its
//! generation), the patient and the data classes the decision granted, the page's number
//! and the decision's obligations, the recipient organization and the domain (tokens and
//! pseudonyms are per recipient and domain), and the day (an age over 89 is generalized
//! as of the decision's day). The vault never removes a token, and the pseudonym key and
//! date offsets are this gateway's for its lifetime. So a page made once, for a request
//! that was decided anew, is the page it would make again: its entries' JSON, its notes
//! and counts are kept here under all of those, and written into the next Bundle as
//! they are.
//!
//! Only what the embedded store serves is kept (a FHIR server's record has no generation
//! to check). Nothing here skips a decision or an event: a request is verified, decided
//! and recorded as any other; only the fetch and the tokenizer's walk are spared.
//! Bounded in bytes like the records kept parsed (`records::cache`), in two generations.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::outcome::Note;
use crate::policy::Obligations;
use crate::records::cache::Kept;

/// One page as made: what the next Bundle needs without the record.
#[derive(Debug)]
pub struct Answer {
    /// The page's entries as written into the Bundle (comma-separated JSON objects).
    pub entries: Vec<u8>,
    /// How many entries `entries` holds.
    pub entry_count: usize,
    /// Resources served on this page.
    pub count: u64,
    /// Resources of the whole answer (every page).
    pub total: usize,
    /// Pages of the whole answer.
    pub pages: u32,
    /// What the record and the tokenizer left out of this page (Provenance withheld,
    /// references to resources not served, values withheld).
    pub notes: Vec<Note>,
}

impl Answer {
    /// What it holds, as counted against the bound.
    fn bytes(&self) -> usize {
        let notes: usize = self
            .notes
            .iter()
            .map(|n| n.diagnostics.len() + n.expression.as_ref().map_or(0, String::len) + 64)
            .sum();
        self.entries.len() + notes + 128
    }
}

/// Everything a page depends on besides the record's generation.
pub struct Question<'a> {
    pub patient_id: &'a str,
    /// The data classes granted, in the decision's order.
    pub data_classes: &'a [String],
    pub obligations: &'a Obligations,
    pub recipient_org: &'a str,
    pub domain: &'a str,
    /// From 1.
    pub page: u32,
    /// The decision's time (its UTC day is what counts).
    pub time: DateTime<Utc>,
}

impl Question<'_> {
    /// A digest of every part, each length-prefixed (no two questions share one).
    /// `None` if the obligations cannot be written as JSON (then nothing is kept).
    fn key(&self) -> Option<[u8; 32]> {
        let obligations = serde_json::to_vec(self.obligations).ok()?;
        let day = self.time.date_naive().to_string();
        let page = self.page.to_be_bytes();
        let mut classes: Vec<&str> = self.data_classes.iter().map(String::as_str).collect();
        classes.sort_unstable();
        classes.dedup();
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        part(self.patient_id.as_bytes());
        part(&(classes.len() as u64).to_be_bytes());
        for class in classes {
            part(class.as_bytes());
        }
        part(&obligations);
        part(self.recipient_org.as_bytes());
        part(self.domain.as_bytes());
        part(&page);
        part(day.as_bytes());
        Some(h.finalize().into())
    }
}

/// Pages kept, by question and record generation.
pub struct AnswerCache {
    kept: Kept<Arc<Answer>>,
}

impl AnswerCache {
    /// At most `max_bytes` of entries and notes; 0 keeps nothing.
    pub fn new(max_bytes: usize) -> Self {
        AnswerCache {
            kept: Kept::new(max_bytes),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.kept.is_enabled()
    }

    /// The largest page's entries it may keep, in bytes (0 when off).
    pub fn largest(&self) -> usize {
        self.kept.largest()
    }

    /// The page made for `question` from the record at `generation`, if kept.
    pub fn get(&self, question: &Question<'_>, generation: u64) -> Option<Arc<Answer>> {
        if !self.is_enabled() {
            return None;
        }
        let found = question
            .key()
            .and_then(|key| self.kept.get(&key, generation))
            .map(|(answer, _)| answer);
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("fedgate_answers_cache_total", "result" => result).increment(1);
        found
    }

    /// Keeps `answer`, made for `question` from the record at `generation`.
    pub fn insert(&self, question: &Question<'_>, generation: u64, answer: Answer) {
        if let Some(key) = question.key() {
            let bytes = answer.bytes();
            self.kept.insert(key, generation, bytes, Arc::new(answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn answer(n: usize) -> Answer {
        Answer {
            entries: vec![b'x'; n],
            entry_count: 1,
            count: 1,
            total: 1,
            pages: 1,
            notes: vec![Note {
                code: "suppressed",
                diagnostics: "1 Provenance resource(s) withheld".into(),
                expression: None,
            }],
        }
    }

    #[test]
    fn a_page_is_kept_per_question_record_generation_and_day() {
        let cache = AnswerCache::new(1 << 20);
        let classes = ["Condition".to_string(), "Patient".to_string()];
        let obligations = Obligations::default();
        let noon = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
        let q = Question {
            patient_id: "p1",
            data_classes: &classes,
            obligations: &obligations,
            recipient_org: "did:web:b.example",
            domain: "clinical",
            page: 1,
            time: noon,
        };
        assert!(cache.get(&q, 7).is_none());
        cache.insert(&q, 7, answer(100));
        assert_eq!(cache.get(&q, 7).map(|a| a.entries.len()), Some(100));
        // Later the same day, the classes in another order: the same page.
        let reordered = ["Patient".to_string(), "Condition".to_string()];
        let evening = Utc.with_ymd_and_hms(2026, 12, 4, 23, 59, 59).unwrap();
        let same = Question {
            data_classes: &reordered,
            time: evening,
            ..q
        };
        assert!(cache.get(&same, 7).is_some());
        // Another day, record generation, page, recipient, domain, patient, class set or
        // obligation: another page.
        let next_day = Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap();
        let one = ["Condition".to_string()];
        let mut redacting = Obligations::default();
        redacting.redact.push("narrative".into());
        let others = [
            Question {
                time: next_day,
                ..q
            },
            Question { page: 2, ..q },
            Question {
                recipient_org: "did:web:c.example",
                ..q
            },
            Question {
                domain: "billing",
                ..q
            },
            Question {
                patient_id: "p10",
                ..q
            },
            Question {
                data_classes: &one,
                ..q
            },
            Question {
                obligations: &redacting,
                ..q
            },
        ];
        for other in &others {
            assert!(cache.get(other, 7).is_none());
        }
        assert!(
            cache.get(&q, 8).is_none(),
            "a newer record is not this page"
        );
        // The stale entry was dropped with the miss.
        assert!(cache.get(&q, 7).is_none());
    }

    #[test]
    fn nothing_is_kept_when_off_or_when_a_page_is_larger_than_a_generation() {
        let classes = ["Condition".to_string()];
        let obligations = Obligations::default();
        let q = Question {
            patient_id: "p1",
            data_classes: &classes,
            obligations: &obligations,
            recipient_org: "did:web:b.example",
            domain: "clinical",
            page: 1,
            time: Utc::now(),
        };
        let off = AnswerCache::new(0);
        off.insert(&q, 1, answer(10));
        assert!(off.get(&q, 1).is_none());
        let small = AnswerCache::new(1000);
        small.insert(&q, 1, answer(600));
        assert!(small.get(&q, 1).is_none());
        small.insert(&q, 1, answer(200));
        assert!(small.get(&q, 1).is_some());
    }
}
