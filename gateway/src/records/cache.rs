//! Parsed records of the embedded store kept for the next request about the same patient.
//!
//! Reading a record is mostly parsing its JSON (two thirds of the read, for the clinical
//! bench's records: `benches/records.rs`); a copy of the parsed record costs a third. The
//! tokenizer works on its own copy, so what is kept here is never changed.
//!
//! Bounded in bytes (of the stored JSON, which the parsed form exceeds by a small factor),
//! in two generations: a hit promotes its entry into the current one, and when the current
//! one is full the older one is dropped whole. A record larger than a generation is not
//! kept. Every entry carries the store's generation when it was read; any import bumps it
//! (in the import's own write), so an entry read before an import is never used after it,
//! on this process or on a replica sharing the store.
//!
//! The same bounded, generation-checked map keeps tokenized answers (`crate::answers`):
//! [`Kept`] holds any value that is cheap to clone (an `Arc`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone)]
struct Cached<V> {
    generation: u64,
    bytes: usize,
    value: V,
}

struct Generations<V> {
    current: HashMap<[u8; 32], Cached<V>>,
    current_bytes: usize,
    previous: HashMap<[u8; 32], Cached<V>>,
}

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Generations {
            current: HashMap::new(),
            current_bytes: 0,
            previous: HashMap::new(),
        }
    }
}

/// Values kept by key, each with the store generation it was made at; bounded in bytes.
pub(crate) struct Kept<V> {
    /// Bytes of one generation (half the whole); 0: nothing is kept.
    generation_bytes: usize,
    maps: Mutex<Generations<V>>,
}

/// Parsed records, by patient and types asked for.
pub(crate) type RecordCache = Kept<Arc<[Value]>>;

impl RecordCache {
    /// The key of one question: the patient and the types asked for, in order.
    pub(crate) fn key<'a>(patient_id: &str, types: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(patient_id.as_bytes());
        for ty in types {
            h.update([0u8]);
            h.update(ty.as_bytes());
        }
        h.finalize().into()
    }
}

impl<V: Clone> Kept<V> {
    /// At most `max_bytes` (as the caller counts them); 0 keeps nothing.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Kept {
            generation_bytes: max_bytes / 2,
            maps: Mutex::new(Generations::default()),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.generation_bytes > 0
    }

    /// The largest value it keeps, in bytes (0 when off).
    pub(crate) fn largest(&self) -> usize {
        self.generation_bytes
    }

    /// The value under `key` if it was made at `generation` of the store, and its size.
    pub(crate) fn get(&self, key: &[u8; 32], generation: u64) -> Option<(V, usize)> {
        if !self.is_enabled() {
            return None;
        }
        // A poisoned lock means a panic mid-update: behave as a miss.
        let mut m = self.maps.lock().ok()?;
        if let Some(c) = m.current.get(key) {
            if c.generation == generation {
                return Some((c.value.clone(), c.bytes));
            }
            if let Some(stale) = m.current.remove(key) {
                m.current_bytes = m.current_bytes.saturating_sub(stale.bytes);
            }
            return None;
        }
        let c = m.previous.remove(key)?;
        if c.generation != generation {
            return None;
        }
        let found = (c.value.clone(), c.bytes);
        self.insert_locked(&mut m, *key, c);
        Some(found)
    }

    /// Keeps `value` (`bytes` of it, made at `generation`) under `key`.
    pub(crate) fn insert(&self, key: [u8; 32], generation: u64, bytes: usize, value: V) {
        if bytes > self.generation_bytes {
            return;
        }
        if let Ok(mut m) = self.maps.lock() {
            let c = Cached {
                generation,
                bytes,
                value,
            };
            self.insert_locked(&mut m, key, c);
        }
    }

    fn insert_locked(&self, m: &mut Generations<V>, key: [u8; 32], c: Cached<V>) {
        if let Some(old) = m.current.remove(&key) {
            m.current_bytes = m.current_bytes.saturating_sub(old.bytes);
        }
        if m.current_bytes + c.bytes > self.generation_bytes {
            m.previous = std::mem::take(&mut m.current);
            m.current_bytes = 0;
        }
        m.current_bytes += c.bytes;
        m.current.insert(key, c);
    }

    /// Bytes held, both generations.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.maps
            .lock()
            .map(|m| m.current_bytes + m.previous.values().map(|c| c.bytes).sum::<usize>())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: usize) -> Arc<[Value]> {
        (0..n)
            .map(|i| json!({"resourceType": "Condition", "id": format!("c{i}")}))
            .collect()
    }

    #[test]
    fn a_record_is_kept_per_question_and_generation() {
        let cache = RecordCache::new(1000);
        let k = RecordCache::key("p1", ["Condition", "Patient"]);
        assert_ne!(k, RecordCache::key("p1", ["Condition"]));
        assert_ne!(k, RecordCache::key("p2", ["Condition", "Patient"]));
        // The separator keeps the parts apart.
        assert_ne!(
            RecordCache::key("p", ["1Condition"]),
            RecordCache::key("p1", ["Condition"])
        );
        assert!(cache.get(&k, 1).is_none());
        cache.insert(k, 1, 100, record(3));
        assert_eq!(
            cache.get(&k, 1).map(|(r, bytes)| (r.len(), bytes)),
            Some((3, 100))
        );
        // Read before an import: never used after it, and dropped.
        assert!(cache.get(&k, 2).is_none());
        assert!(cache.get(&k, 1).is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_cache_holds_at_most_its_bytes_and_keeps_what_is_used() {
        let cache = RecordCache::new(1000);
        let keys: Vec<[u8; 32]> = (0..20)
            .map(|i| RecordCache::key(&format!("p{i}"), ["Patient"]))
            .collect();
        cache.insert(keys[0], 1, 200, record(1));
        for (i, k) in keys.iter().enumerate().skip(1) {
            cache.insert(*k, 1, 200, record(1));
            // The first one, used all along, is never dropped.
            assert!(cache.get(&keys[0], 1).is_some(), "after {i}");
            assert!(cache.bytes() <= 1000, "{}", cache.bytes());
        }
        // Larger than a generation: not kept.
        let big = RecordCache::key("big", ["Patient"]);
        cache.insert(big, 1, 501, record(1));
        assert!(cache.get(&big, 1).is_none());
        // Off: nothing kept.
        let off = RecordCache::new(0);
        off.insert(big, 1, 0, record(1));
        assert!(off.get(&big, 1).is_none());
        assert_eq!(off.bytes(), 0);
    }
}
