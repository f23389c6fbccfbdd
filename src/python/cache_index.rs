//! `tm._tm.CacheIndex`: the cached-call index of a store, plus a bounded in-memory copy of
//! recently used results so that a hit costs one indexed query and no disk read.
//!
//! Every verb asks the database (so a newer result from another process wins); only the result
//! comes from memory, looked up by the content hash the database returned. What is kept is the
//! caller's choice: a file's bytes, or an object decoded from them that the caller copies before
//! handing it out. All database work runs detached.

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::cache::ByteLru;
use crate::store::{
    CacheEntry, CacheFilter, CallFacts, CallState, Claim, ClaimRequest, Owner, Store, StoredResult,
};

use super::store::PyStoreCore;

/// A key's state and its newest entry, as dicts.
type Found<'py> = (Bound<'py, PyDict>, Option<Bound<'py, PyDict>>);

/// Results by content hash, bounded by their files' total size.
type Hot = Mutex<ByteLru<String, Py<PyAny>>>;

/// The cache verbs of one store, and its hot result bytes.
#[pyclass(name = "CacheIndex", module = "tm._tm", frozen)]
pub struct PyCacheIndex {
    store: Arc<Store>,
    hot: Hot,
}

fn entry_dict<'py>(py: Python<'py>, e: &CacheEntry) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", e.id)?;
    d.set_item("key", &e.facts.key)?;
    d.set_item("module", &e.facts.module)?;
    d.set_item("func", &e.facts.func)?;
    d.set_item("seed", &e.facts.seed)?;
    d.set_item("inputs_json", &e.facts.inputs_json)?;
    d.set_item("version", &e.facts.version)?;
    d.set_item("result_path", &e.result.result_path)?;
    d.set_item("format", &e.result.format)?;
    d.set_item("content_hash", &e.result.content_hash)?;
    d.set_item("size", e.result.size)?;
    d.set_item("created_us", e.created_us)?;
    d.set_item("expires_us", e.result.expires_us)?;
    d.set_item("duration_us", e.result.duration_us)?;
    Ok(d)
}

fn state_dict<'py>(py: Python<'py>, s: &CallState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("key", &s.key)?;
    d.set_item("module", &s.module)?;
    d.set_item("func", &s.func)?;
    d.set_item("status", &s.status)?;
    d.set_item("entry_id", s.entry_id)?;
    d.set_item("started_us", s.started_us)?;
    d.set_item("ended_us", s.ended_us)?;
    d.set_item("duration_us", s.duration_us)?;
    d.set_item("error_type", &s.error_type)?;
    d.set_item("error_message", &s.error_message)?;
    d.set_item("owner_pid", s.owner.as_ref().map(|o| o.pid))?;
    d.set_item("owner_host", s.owner.as_ref().map(|o| o.host.as_str()))?;
    d.set_item("lease_until_us", s.lease_until_us)?;
    Ok(d)
}

impl PyCacheIndex {
    fn hot(&self) -> std::sync::MutexGuard<'_, ByteLru<String, Py<PyAny>>> {
        // Held only for O(1) map operations; no Python code runs under it.
        self.hot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(format, content_hash, result_path, kept object or None)`: what a hit needs (a tuple, not
    /// the entry's dict: this is the whole cost of a hit beside the query and the decoding).
    fn hit<'py>(&self, py: Python<'py>, e: &CacheEntry) -> PyResult<Bound<'py, PyTuple>> {
        let kept = self
            .hot()
            .get(e.result.content_hash.as_str())
            .map(|b| b.clone_ref(py));
        let r = &e.result;
        (&r.format, &r.content_hash, &r.result_path, kept).into_pyobject(py)
    }
}

#[pymethods]
impl PyCacheIndex {
    /// The cache index of `store`, keeping up to `hot_bytes` of result bytes in memory.
    #[new]
    #[pyo3(signature = (store, hot_bytes = 67_108_864))]
    fn new(store: &Bound<'_, PyStoreCore>, hot_bytes: usize) -> Self {
        PyCacheIndex {
            store: store.get().shared(),
            hot: Mutex::new(ByteLru::new(hot_bytes)),
        }
    }

    /// The newest unexpired entry of `key` as `(format, content_hash, result_path, kept object or
    /// None)`, or None.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        now_us: i64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let found = py.detach(|| self.store.cache_lookup(key, now_us))?;
        found.map(|e| self.hit(py, &e)).transpose()
    }

    /// Keeps `value` (the bytes of the result file whose hash is `content_hash`, or the object
    /// decoded from them) in memory, counted as `size` bytes.
    fn remember(&self, content_hash: String, value: Bound<'_, PyAny>, size: usize) {
        self.hot().insert(content_hash, value.unbind(), size);
    }

    /// Forgets the bytes kept for `content_hash` (say, after they failed verification).
    fn forget(&self, content_hash: &str) {
        self.hot().remove(content_hash);
    }

    /// Loads, runs or waits: `("hit", (format, content_hash, result_path, kept))`, `("run", token)` or
    /// `("busy", state)`. An owner on this host found dead is passed as `takeover`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, module, func, seed, inputs_json, version, *, use_cache, pid, host,
                        now_us, lease_us, takeover = None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        key: String,
        module: String,
        func: String,
        seed: Option<String>,
        inputs_json: String,
        version: String,
        use_cache: bool,
        pid: i64,
        host: String,
        now_us: i64,
        lease_us: i64,
        takeover: Option<(i64, String)>,
    ) -> PyResult<(&'static str, Bound<'py, PyAny>)> {
        let req = ClaimRequest {
            facts: CallFacts {
                key,
                module,
                func,
                seed,
                inputs_json,
                version,
            },
            use_cache,
            owner: Owner { pid, host },
            now_us,
            lease_us,
            takeover: takeover.map(|(pid, host)| Owner { pid, host }),
        };
        Ok(match py.detach(|| self.store.cache_claim(&req))? {
            Claim::Hit(e) => ("hit", self.hit(py, &e)?.into_any()),
            Claim::Run { token } => ("run", token.into_pyobject(py)?.into_any()),
            Claim::Busy(s) => ("busy", state_dict(py, &s)?.into_any()),
        })
    }

    /// Sleeps (detached) until a cached call ends in any process, or `timeout` seconds: True when
    /// woken, False on timeout, None where the database cannot signal (SQLite: sleep instead).
    fn wait_for_end(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<bool>> {
        let t = std::time::Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        Ok(py.detach(|| self.store.cache_wait(t))?)
    }

    /// Extends the lease of an owned key; False when it was taken over.
    fn heartbeat(
        &self,
        py: Python<'_>,
        key: &str,
        token: i64,
        lease_until_us: i64,
    ) -> PyResult<bool> {
        Ok(py.detach(|| self.store.cache_heartbeat(key, token, lease_until_us))?)
    }

    /// Records a stored result (and keeps `keep` in memory, counted as `size`); returns the entry.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, module, func, seed, inputs_json, version, *, token, result_path,
                        format, content_hash, size, now_us, expires_us = None, duration_us = None,
                        keep = None))]
    fn complete<'py>(
        &self,
        py: Python<'py>,
        key: String,
        module: String,
        func: String,
        seed: Option<String>,
        inputs_json: String,
        version: String,
        token: i64,
        result_path: String,
        format: String,
        content_hash: String,
        size: i64,
        now_us: i64,
        expires_us: Option<i64>,
        duration_us: Option<i64>,
        keep: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let facts = CallFacts {
            key,
            module,
            func,
            seed,
            inputs_json,
            version,
        };
        let result = StoredResult {
            result_path,
            format,
            content_hash,
            size,
            expires_us,
            duration_us,
        };
        let entry = py.detach(|| self.store.cache_complete(&facts, token, &result, now_us))?;
        if let (Some(keep), Ok(size)) = (keep, usize::try_from(size)) {
            self.remember(entry.result.content_hash.clone(), keep, size);
        }
        entry_dict(py, &entry)
    }

    /// Gives up an owned key with `status` FAILED or SKIPPED; False when it was taken over.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, token, status, now_us, error_type = None, error_message = None))]
    fn release(
        &self,
        py: Python<'_>,
        key: &str,
        token: i64,
        status: &str,
        now_us: i64,
        error_type: Option<&str>,
        error_message: Option<&str>,
    ) -> PyResult<bool> {
        let error = error_type.map(|t| (t, error_message.unwrap_or("")));
        Ok(py.detach(|| self.store.cache_release(key, token, status, error, now_us))?)
    }

    /// Entries, newest first, as dicts.
    #[pyo3(signature = (*, func = None, created_before_us = None, limit = None))]
    fn entries<'py>(
        &self,
        py: Python<'py>,
        func: Option<String>,
        created_before_us: Option<i64>,
        limit: Option<usize>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let filter = CacheFilter {
            func,
            created_before_us,
            limit,
        };
        let rows = py.detach(|| self.store.cache_entries(&filter))?;
        rows.iter().map(|e| entry_dict(py, e)).collect()
    }

    /// Every key's state (of one function), as dicts.
    #[pyo3(signature = (*, func = None))]
    fn states<'py>(
        &self,
        py: Python<'py>,
        func: Option<String>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let filter = CacheFilter {
            func,
            ..Default::default()
        };
        let rows = py.detach(|| self.store.cache_states(&filter))?;
        rows.iter().map(|s| state_dict(py, s)).collect()
    }

    /// The keys starting with `key`: a list of `(state, newest entry or None)`.
    fn find<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Vec<Found<'py>>> {
        let rows = py.detach(|| self.store.cache_find(key))?;
        rows.iter()
            .map(|(s, e)| {
                Ok((
                    state_dict(py, s)?,
                    e.as_ref().map(|e| entry_dict(py, e)).transpose()?,
                ))
            })
            .collect()
    }

    /// Deletes the entries of `key` older than its entry `newest_id`; returns them (their files
    /// are the caller's to delete, and the caller forgets their kept results).
    fn supersede<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        newest_id: i64,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let gone = py.detach(|| self.store.cache_supersede(key, newest_id))?;
        gone.iter().map(|e| entry_dict(py, e)).collect()
    }

    /// Deletes matching entries; returns them (their files are the caller's to delete).
    #[pyo3(signature = (*, func = None, created_before_us = None))]
    fn clear<'py>(
        &self,
        py: Python<'py>,
        func: Option<String>,
        created_before_us: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let filter = CacheFilter {
            func,
            created_before_us,
            limit: None,
        };
        let gone = py.detach(|| self.store.cache_clear(&filter))?;
        let mut hot = self.hot();
        for e in &gone {
            hot.remove(e.result.content_hash.as_str());
        }
        drop(hot);
        gone.iter().map(|e| entry_dict(py, e)).collect()
    }

    /// Bytes (by the files' sizes) of results held in memory.
    #[getter]
    fn hot_bytes(&self) -> usize {
        self.hot().bytes()
    }

    fn __repr__(&self) -> String {
        format!("CacheIndex({:?})", self.store.location())
    }
}

/// Adds `CacheIndex` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCacheIndex>()
}
