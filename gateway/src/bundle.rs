//! A searchset Bundle serialized one entry at a time.
//!
//! An answer of thousands of resources is written straight into the bytes that leave,
//! each resource dropped as soon as it is written, instead of being moved into a Bundle
//! `Value` that is then serialized whole: the record set and its JSON text are never held
//! in full at the same time. The bytes are exactly those `serde_json::to_vec` gives for the
//! same Bundle built as a `Value` (the tests check it), whatever the order of the keys.

use serde_json::Value;

/// The key the entries go under, as serde_json writes it with an empty array.
const ENTRY_SLOT: &[u8] = b"\"entry\":[]";

/// The bytes of a Bundle, written entry by entry.
pub struct BundleWriter {
    out: Vec<u8>,
    /// What follows the entries: `]` and the rest of the Bundle.
    tail: Vec<u8>,
    entries: usize,
}

impl BundleWriter {
    /// Starts from `skeleton`, a Bundle with every member but its entries, which must be an
    /// empty array (`"entry": []`); `capacity` is a guess of the final size in bytes.
    pub fn new(skeleton: &Value, capacity: usize) -> Result<BundleWriter, BundleError> {
        if skeleton
            .get("entry")
            .and_then(Value::as_array)
            .map(Vec::len)
            != Some(0)
        {
            return Err(BundleError::NoEntrySlot);
        }
        let head = serde_json::to_vec(skeleton)?;
        // Only the skeleton's own `entry` key can appear unescaped: a string holding the
        // same characters is written with its quotes escaped.
        let at = head
            .windows(ENTRY_SLOT.len())
            .position(|w| w == ENTRY_SLOT)
            .ok_or(BundleError::NoEntrySlot)?;
        let split = at + ENTRY_SLOT.len() - 1;
        let mut out = Vec::with_capacity(capacity.max(head.len()));
        out.extend_from_slice(&head[..split]);
        Ok(BundleWriter {
            out,
            tail: head[split..].to_vec(),
            entries: 0,
        })
    }

    fn separate(&mut self) {
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.entries += 1;
    }

    /// Writes the entry `{"resource": resource, "search": {"mode": mode}}`.
    pub fn resource(&mut self, resource: &Value, mode: &str) -> Result<(), BundleError> {
        self.separate();
        self.out.extend_from_slice(b"{\"resource\":");
        serde_json::to_writer(&mut self.out, resource)?;
        self.out.extend_from_slice(b",\"search\":{\"mode\":");
        serde_json::to_writer(&mut self.out, mode)?;
        self.out.extend_from_slice(b"}}");
        Ok(())
    }

    /// Writes an entry given whole.
    pub fn entry(&mut self, entry: &Value) -> Result<(), BundleError> {
        self.separate();
        serde_json::to_writer(&mut self.out, entry)?;
        Ok(())
    }

    /// The Bundle's bytes.
    /// Where the next entry will start: [`BundleWriter::written_since`] takes what follows.
    pub fn mark(&self) -> Mark {
        Mark {
            at: self.out.len(),
            entries: self.entries,
        }
    }

    /// The entries written since `mark`, as [`BundleWriter::append`] takes them (without
    /// the separator before the first), and how many they are.
    pub fn written_since(&self, mark: Mark) -> (Vec<u8>, usize) {
        let mut bytes = self.out.get(mark.at..).unwrap_or_default();
        if mark.entries > 0 {
            bytes = bytes.strip_prefix(b",").unwrap_or(bytes);
        }
        (bytes.to_vec(), self.entries.saturating_sub(mark.entries))
    }

    /// Bytes written since `mark`.
    pub fn bytes_since(&self, mark: Mark) -> usize {
        self.out.len().saturating_sub(mark.at)
    }

    /// Appends `count` entries written by another writer (see
    /// [`BundleWriter::written_since`]).
    pub fn append(&mut self, entries: &[u8], count: usize) {
        if count == 0 {
            return;
        }
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(entries);
        self.entries += count;
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&self.tail);
        self.out
    }
}

/// A place in a Bundle being written ([`BundleWriter::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    at: usize,
    entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the Bundle skeleton has no empty entry array")]
    NoEntrySlot,
    #[error("serializing the Bundle: {0}")]
    Json(#[from] serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn skeleton(links: bool) -> Value {
        let mut bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            // Strings that look like the slot must not be taken for it.
            "identifier": {"system": "urn:fedgate:decision", "value": "\"entry\":[] é \u{1F600}"},
            "meta": {"lastUpdated": "2026-12-02T02:00:00Z"},
            "total": 3,
            "entry": [],
        });
        if links {
            bundle["link"] = json!([{"relation": "next", "url": "https://gw.example/p?page=2"}]);
        }
        bundle
    }

    fn resources() -> Vec<Value> {
        vec![
            json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ñandú", "given": ["Zoë"]}],
                   "entry": [], "extension": [{"url": "x", "valueDecimal": 1.5}]}),
            json!({"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 162.77},
                   "note": [{"text": "line\nbreak \"quoted\" \\ tab\t"}], "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "DocumentReference", "id": "d1", "content": [{"attachment":
                   {"contentType": "text/plain", "data": "SGVsbG8="}}], "status": null, "n": -0, "big": u64::MAX}),
        ]
    }

    /// The same Bundle as the exchange built it before: a `Value`, serialized whole.
    fn as_value(links: bool, outcome: Option<Value>) -> Vec<u8> {
        let mut entries: Vec<Value> = resources()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let mode = if i == 0 { "include" } else { "match" };
                json!({"resource": r, "search": {"mode": mode}})
            })
            .collect();
        entries.extend(outcome);
        let mut bundle = skeleton(links);
        bundle["entry"] = json!(entries);
        serde_json::to_vec(&bundle).unwrap()
    }

    fn written(links: bool, outcome: Option<Value>) -> Vec<u8> {
        let mut w = BundleWriter::new(&skeleton(links), 0).unwrap();
        for (i, r) in resources().into_iter().enumerate() {
            w.resource(&r, if i == 0 { "include" } else { "match" })
                .unwrap();
        }
        if let Some(o) = &outcome {
            w.entry(o).unwrap();
        }
        w.finish()
    }

    fn outcome() -> Value {
        json!({"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "suppressed", "diagnostics": "2 Provenance withheld"}]},
            "search": {"mode": "outcome"}})
    }

    #[test]
    fn byte_for_byte_the_value_form() {
        for links in [false, true] {
            for o in [None, Some(outcome())] {
                let (a, b) = (written(links, o.clone()), as_value(links, o));
                assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            }
        }
    }

    #[test]
    fn entries_taken_from_one_writer_and_appended_to_another_are_the_same_bundle() {
        for links in [false, true] {
            for o in [None, Some(outcome())] {
                let mut first = BundleWriter::new(&skeleton(links), 0).unwrap();
                let mark = first.mark();
                for (i, r) in resources().into_iter().enumerate() {
                    first
                        .resource(&r, if i == 0 { "include" } else { "match" })
                        .unwrap();
                }
                let (entries, count) = first.written_since(mark);
                assert_eq!(count, 3);
                let mut second = BundleWriter::new(&skeleton(links), 0).unwrap();
                second.append(&entries, count);
                second.append(b"", 0);
                if let Some(o) = &o {
                    second.entry(o).unwrap();
                }
                assert_eq!(second.finish(), as_value(links, o));
            }
        }
        // From a mark after an entry: the separator stays with the writer.
        let mut w = BundleWriter::new(&skeleton(false), 0).unwrap();
        w.entry(&outcome()).unwrap();
        let mark = w.mark();
        w.resource(&resources()[1], "match").unwrap();
        let (entries, count) = w.written_since(mark);
        assert_eq!((entries[0], count), (b'{', 1));
        let mut other = BundleWriter::new(&skeleton(false), 0).unwrap();
        other.entry(&outcome()).unwrap();
        other.append(&entries, count);
        assert_eq!(other.finish(), w.finish());
    }

    #[test]
    fn no_entries_is_an_empty_array() {
        let w = BundleWriter::new(&skeleton(false), 16).unwrap();
        let bytes = w.finish();
        assert_eq!(bytes, serde_json::to_vec(&skeleton(false)).unwrap());
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back["entry"], json!([]));
    }

    #[test]
    fn a_skeleton_without_an_empty_entry_array_is_refused() {
        let mut s = skeleton(false);
        s["entry"] = json!([{"resource": {}}]);
        assert!(matches!(
            BundleWriter::new(&s, 0),
            Err(BundleError::NoEntrySlot)
        ));
        let missing = json!({"resourceType": "Bundle", "note": "\"entry\":[]"});
        assert!(matches!(
            BundleWriter::new(&missing, 0),
            Err(BundleError::NoEntrySlot)
        ));
    }
}
