//! `tm._tm.ByteCache`: the core's byte-bounded LRU holding Python objects (parsed config files).

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::cache::ByteLru;

/// A least-recently-used cache of Python objects bounded by the sum of their stated sizes.
/// Thread-safe; every operation is O(1).
#[pyclass(name = "ByteCache", module = "tm._tm", frozen)]
pub struct PyByteCache {
    lru: Mutex<ByteLru<String, Py<PyAny>>>,
}

impl PyByteCache {
    fn with<T>(&self, f: impl FnOnce(&mut ByteLru<String, Py<PyAny>>) -> T) -> T {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut lru)
    }
}

#[pymethods]
impl PyByteCache {
    #[new]
    fn new(capacity_bytes: usize) -> Self {
        PyByteCache {
            lru: Mutex::new(ByteLru::new(capacity_bytes)),
        }
    }

    /// The object stored under `key` (now the most recently used), or None.
    fn get(&self, py: Python<'_>, key: &str) -> Option<Py<PyAny>> {
        self.with(|lru| lru.get(key).map(|v| v.clone_ref(py)))
    }

    /// Stores `value` under `key` as `size` bytes, evicting the least recently used entries
    /// beyond the budget; returns False (storing nothing) when it alone exceeds the budget.
    fn put(&self, key: String, value: Py<PyAny>, size: usize) -> bool {
        // Objects evicted here are dropped while attached (the caller holds the GIL).
        self.with(|lru| lru.insert(key, value, size))
    }

    /// Forgets `key`; returns whether it was there.
    fn discard(&self, key: &str) -> bool {
        self.with(|lru| lru.remove(key).is_some())
    }

    fn clear(&self) {
        let drained = self.with(|lru| std::mem::replace(lru, ByteLru::new(lru.capacity())));
        drop(drained);
    }

    fn __len__(&self) -> usize {
        self.with(|lru| lru.len())
    }

    /// Entries, bytes, capacity and evictions.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (entries, bytes, capacity, evictions) =
            self.with(|lru| (lru.len(), lru.bytes(), lru.capacity(), lru.evictions()));
        let d = PyDict::new(py);
        d.set_item("entries", entries)?;
        d.set_item("bytes", bytes)?;
        d.set_item("capacity", capacity)?;
        d.set_item("evictions", evictions)?;
        Ok(d)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyByteCache>()
}
