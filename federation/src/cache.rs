//! A bounded map of digests to values in two generations, shared by the verifier's proof
//! cache and the gateway's decision cache.
//!
//! Keys are SHA-256 digests of everything the cached value depends on, so two inputs that
//! differ in a single byte never share an entry. Eviction keeps two generations: a lookup
//! promotes its entry into the current one, and when the current one is full the older
//! generation is dropped whole. That bounds the size at `capacity` with O(1) work per
//! operation and keeps whatever is in use. A capacity of 0 caches nothing.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct Generations<V> {
    maps: Mutex<Maps<V>>,
    capacity: usize,
}

struct Maps<V> {
    current: HashMap<[u8; 32], V>,
    previous: HashMap<[u8; 32], V>,
}

impl<V: Clone> Generations<V> {
    /// At most `capacity` entries; 0 disables the cache.
    pub fn new(capacity: usize) -> Self {
        Generations {
            maps: Mutex::new(Maps {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn generation_size(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    /// The value under `key` while `fresh` holds for it; a stale entry is removed.
    pub fn get(&self, key: &[u8; 32], fresh: impl Fn(&V) -> bool) -> Option<V> {
        if self.capacity == 0 {
            return None;
        }
        // A poisoned lock means a panic mid-update: behave as a miss.
        let mut m = self.maps.lock().ok()?;
        if let Some(v) = m.current.get(key) {
            if fresh(v) {
                return Some(v.clone());
            }
            m.current.remove(key);
            return None;
        }
        let v = m.previous.remove(key)?;
        if !fresh(&v) {
            return None;
        }
        self.insert_locked(&mut m, *key, v.clone());
        Some(v)
    }

    pub fn insert(&self, key: [u8; 32], value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut m) = self.maps.lock() {
            self.insert_locked(&mut m, key, value);
        }
    }

    fn insert_locked(&self, m: &mut Maps<V>, key: [u8; 32], value: V) {
        if m.current.len() >= self.generation_size() && !m.current.contains_key(&key) {
            m.previous = std::mem::take(&mut m.current);
        }
        m.current.insert(key, value);
    }

    /// Entries held, both generations.
    pub fn len(&self) -> usize {
        self.maps
            .lock()
            .map(|m| m.current.len() + m.previous.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_stays_within_its_capacity_and_keeps_what_is_used() {
        let cache = Generations::new(8);
        let hot = [0xffu8; 32];
        cache.insert(hot, 0u32);
        for i in 0..100u8 {
            cache.insert([i; 32], u32::from(i));
            assert!(cache.len() <= 8);
            // The hot entry is used between inserts, so it is never evicted.
            assert_eq!(
                cache.get(&hot, |_| true),
                Some(0),
                "hot entry evicted at {i}"
            );
        }
        assert_eq!(cache.get(&[0u8; 32], |_| true), None, "old entry kept");
        assert_eq!(cache.get(&[99u8; 32], |_| true), Some(99));
    }

    #[test]
    fn a_stale_entry_is_a_miss_and_is_dropped() {
        let cache = Generations::new(8);
        cache.insert([1; 32], 5u32);
        assert_eq!(cache.get(&[1; 32], |v| *v > 10), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = Generations::new(0);
        cache.insert([1; 32], 5u32);
        assert_eq!(cache.get(&[1; 32], |_| true), None);
        assert!(cache.is_empty());
    }
}
