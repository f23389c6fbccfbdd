//! A bounded in-process cache: least-recently-used entries are evicted once the entries' total
//! size passes a byte budget.
//!
//! The caller states each entry's size (the byte length of a result, of a parsed config file's
//! source, ...), so the cache needs no knowledge of what it holds. Every operation is O(1): a hash
//! map points into a slab of nodes that form an intrusive doubly linked list, most recent first.
//! The cache is not synchronised; wrap it in a `Mutex` to share it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Marks the absence of a neighbour in the linked list.
const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    size: usize,
    prev: usize,
    next: usize,
}

/// A least-recently-used cache bounded by the sum of its entries' caller-supplied sizes.
pub struct ByteLru<K, V> {
    map: HashMap<K, usize>,
    slots: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    /// Most recently used slot.
    head: usize,
    /// Least recently used slot: the next to go.
    tail: usize,
    used: usize,
    capacity: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> ByteLru<K, V> {
    /// An empty cache holding at most `capacity_bytes` of entries (by their stated sizes).
    pub fn new(capacity_bytes: usize) -> Self {
        ByteLru {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            used: 0,
            capacity: capacity_bytes,
            evictions: 0,
        }
    }

    /// The value for `key`, which becomes the most recently used entry.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = *self.map.get(key)?;
        self.unlink(idx);
        self.push_front(idx);
        self.slots[idx].as_ref().map(|n| &n.value)
    }

    /// The value for `key` without changing its recency.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = *self.map.get(key)?;
        self.slots[idx].as_ref().map(|n| &n.value)
    }

    /// Whether `key` is cached (without changing its recency).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    /// Stores `value` under `key` as the most recently used entry, replacing any previous value,
    /// and evicts least-recently-used entries until the total size fits the budget again.
    ///
    /// Returns false, and caches nothing (dropping any previous value for `key`), when `size`
    /// alone exceeds the capacity: one oversized entry must not flush everything else.
    pub fn insert(&mut self, key: K, value: V, size: usize) -> bool {
        self.remove(&key);
        if size > self.capacity {
            return false;
        }
        self.used += size;
        let node = Node {
            key: key.clone(),
            value,
            size,
            prev: NIL,
            next: NIL,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(node);
                i
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.map.insert(key, idx);
        self.push_front(idx);
        self.shrink_to_budget();
        true
    }

    /// Removes `key` and returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = self.map.remove(key)?;
        self.take(idx).map(|n| n.value)
    }

    /// Keeps only the entries whose key `keep` accepts (O(n); for invalidating a group of keys).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let doomed: Vec<K> = self.map.keys().filter(|k| !keep(k)).cloned().collect();
        for k in doomed {
            self.remove(&k);
        }
    }

    /// Changes the byte budget, evicting least-recently-used entries to fit it.
    pub fn set_capacity(&mut self, capacity_bytes: usize) {
        self.capacity = capacity_bytes;
        self.shrink_to_budget();
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.used = 0;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of the sizes of the cached entries.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// The byte budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries have been evicted to respect the budget since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn shrink_to_budget(&mut self) {
        while self.used > self.capacity && self.tail != NIL {
            let idx = self.tail;
            if let Some(node) = self.take(idx) {
                self.map.remove(&node.key);
                self.evictions += 1;
            }
        }
    }

    /// Unlinks slot `idx`, frees it and returns its node (the map entry is the caller's business).
    fn take(&mut self, idx: usize) -> Option<Node<K, V>> {
        self.unlink(idx);
        let node = self.slots.get_mut(idx)?.take()?;
        self.used -= node.size;
        self.free.push(idx);
        Some(node)
    }

    fn unlink(&mut self, idx: usize) {
        let (prev, next) = match &self.slots[idx] {
            Some(n) => (n.prev, n.next),
            None => return,
        };
        match prev {
            NIL => self.head = next,
            p => self.set_next(p, next),
        }
        match next {
            NIL => self.tail = prev,
            n => self.set_prev(n, prev),
        }
        self.set_prev(idx, NIL);
        self.set_next(idx, NIL);
    }

    fn push_front(&mut self, idx: usize) {
        let old = self.head;
        self.set_next(idx, old);
        self.set_prev(idx, NIL);
        match old {
            NIL => self.tail = idx,
            o => self.set_prev(o, idx),
        }
        self.head = idx;
    }

    fn set_prev(&mut self, idx: usize, prev: usize) {
        if let Some(n) = &mut self.slots[idx] {
            n.prev = prev;
        }
    }

    fn set_next(&mut self, idx: usize, next: usize) {
        if let Some(n) = &mut self.slots[idx] {
            n.next = next;
        }
    }
}

impl<K, V> std::fmt::Debug for ByteLru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteLru")
            .field("len", &self.map.len())
            .field("bytes", &self.used)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys from most to least recently used, by walking the list.
    fn order(c: &ByteLru<String, u32>) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = c.head;
        while i != NIL {
            let n = c.slots[i].as_ref().expect("linked slot is occupied");
            out.push(n.key.clone());
            i = n.next;
        }
        out
    }

    fn s(k: &str) -> String {
        k.to_string()
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let mut c = ByteLru::new(10);
        assert!(c.insert(s("a"), 1, 4));
        assert!(c.insert(s("b"), 2, 4));
        assert_eq!(c.bytes(), 8);
        // Touch `a`, so `b` is the least recently used when `c` needs room.
        assert_eq!(c.get("a"), Some(&1));
        assert!(c.insert(s("c"), 3, 4));
        assert_eq!(order(&c), ["c", "a"]);
        assert!(!c.contains_key("b"));
        assert_eq!(c.bytes(), 8);
        assert_eq!(c.evictions(), 1);
    }

    #[test]
    fn one_big_entry_evicts_several() {
        let mut c = ByteLru::new(10);
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.insert(s(k), i as u32, 2);
        }
        assert_eq!(c.len(), 5);
        c.insert(s("big"), 9, 7);
        assert_eq!(order(&c), ["big", "e"]);
        assert_eq!(c.bytes(), 9);
    }

    #[test]
    fn replacing_a_key_updates_value_size_and_recency() {
        let mut c = ByteLru::new(10);
        c.insert(s("a"), 1, 3);
        c.insert(s("b"), 2, 3);
        c.insert(s("a"), 10, 5);
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 8);
        assert_eq!(order(&c), ["a", "b"]);
        assert_eq!(c.peek("a"), Some(&10));
    }

    #[test]
    fn oversized_entry_is_refused_and_drops_the_old_value() {
        let mut c = ByteLru::new(10);
        c.insert(s("a"), 1, 3);
        c.insert(s("b"), 2, 3);
        assert!(!c.insert(s("a"), 5, 11));
        assert!(!c.contains_key("a"));
        assert_eq!(order(&c), ["b"]);
        assert_eq!(c.bytes(), 3);
    }

    #[test]
    fn peek_does_not_touch_recency() {
        let mut c = ByteLru::new(4);
        c.insert(s("a"), 1, 2);
        c.insert(s("b"), 2, 2);
        assert_eq!(c.peek("a"), Some(&1));
        c.insert(s("c"), 3, 2);
        assert!(!c.contains_key("a"));
    }

    #[test]
    fn remove_retain_clear_and_capacity() {
        let mut c = ByteLru::new(100);
        for i in 0..10u32 {
            c.insert(format!("k{i}"), i, 10);
        }
        assert_eq!(c.remove("k3"), Some(3));
        assert_eq!(c.remove("k3"), None);
        assert_eq!(c.bytes(), 90);
        c.retain(|k| k != "k5" && k != "k6");
        assert_eq!(c.len(), 7);
        c.set_capacity(30);
        assert_eq!(c.bytes(), 30);
        assert_eq!(order(&c), ["k9", "k8", "k7"]);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        c.insert(s("x"), 1, 1);
        assert_eq!(order(&c), ["x"]);
    }

    #[test]
    fn zero_sized_entries_and_zero_capacity() {
        let mut c: ByteLru<String, u32> = ByteLru::new(0);
        assert!(c.insert(s("a"), 1, 0));
        assert!(!c.insert(s("b"), 1, 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn slots_are_reused_and_list_stays_consistent() {
        // A deterministic pseudo-random workload checked against a naive model.
        let mut c = ByteLru::new(50);
        let mut model: Vec<(u32, usize)> = Vec::new(); // most recent first
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 20) as u32;
            let size = (x >> 8) as usize % 12;
            if x.is_multiple_of(3) {
                let got = c.get(&key).copied();
                let pos = model.iter().position(|(k, _)| *k == key);
                assert_eq!(got.is_some(), pos.is_some());
                if let Some(p) = pos {
                    let e = model.remove(p);
                    model.insert(0, e);
                }
            } else {
                c.insert(key, key, size);
                model.retain(|(k, _)| *k != key);
                model.insert(0, (key, size));
                while model.iter().map(|(_, s)| s).sum::<usize>() > 50 {
                    model.pop();
                }
            }
            assert_eq!(c.len(), model.len());
            assert_eq!(c.bytes(), model.iter().map(|(_, s)| s).sum::<usize>());
        }
        assert!(c.slots.len() <= 21);
    }
}
