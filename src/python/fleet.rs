//! `tm._tm.Fleet`: one executor process's handle on the distributed runs of a PostgreSQL
//! database (see `store::fleet`). Every database call and every wait runs detached.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::store::{Claimed, Ended, Fleet, FleetTask, NewRun, Outcome, TaskProgress};

/// A claimed task as Python sees it: (run_id, rid, graph_key, node, attempt, started_us, inputs)
/// with inputs a list of (node, format, bytes).
type ClaimTuple<'py> = (
    String,
    i64,
    String,
    u32,
    u32,
    i64,
    Vec<(u32, String, Bound<'py, PyBytes>)>,
);

/// The identity of a claim, passed back to end it: (rid, graph_key, node, attempt, started_us).
type ClaimRef = (i64, String, u32, u32, i64);

fn claimed((rid, graph_key, node, attempt, started_us): ClaimRef) -> Claimed {
    Claimed {
        run_id: String::new(),
        rid,
        graph_key,
        node,
        attempt,
        started_us,
        inputs: Vec::new(),
    }
}

/// What `end` did: None when refused (the lease was lost), else (task state, run's final state).
type EndTuple = Option<(String, Option<String>)>;

fn end_tuple(e: Ended) -> EndTuple {
    match e {
        Ended::Refused => None,
        Ended::Recorded { state, run_ended } => Some((state, run_ended)),
    }
}

#[pyclass(name = "Fleet", module = "tm._tm", frozen)]
pub struct PyFleet {
    fleet: Fleet,
}

#[pymethods]
impl PyFleet {
    /// Connects as executor `owner`; claims last `lease_seconds` unless renewed (a Rust thread
    /// renews them every third of that); up to `connections` (1..16) connections serve claims
    /// and completions.
    #[new]
    #[pyo3(signature = (url, owner, lease_seconds, connections = 1))]
    fn new(
        py: Python<'_>,
        url: &str,
        owner: &str,
        lease_seconds: f64,
        connections: usize,
    ) -> PyResult<PyFleet> {
        if !(lease_seconds.is_finite() && lease_seconds > 0.0) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "lease must be a positive number of seconds, got {lease_seconds}"
            )));
        }
        let lease = Duration::from_secs_f64(lease_seconds);
        let fleet = py.detach(|| Fleet::open(url, owner, lease, connections.clamp(1, 16)))?;
        Ok(PyFleet { fleet })
    }

    #[getter]
    fn owner(&self) -> &str {
        self.fleet.owner()
    }

    /// Serves graph `graph_key`, whose node `i` has parents `parents[i]`.
    fn register(&self, graph_key: &str, parents: Vec<Vec<u32>>) {
        self.fleet.register(graph_key, parents);
    }

    /// Records a distributed run; `tasks` are (name, tag, priority, retries) by node.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (run_id, graph, graph_key, trigger, params, tasks, parents, *,
                        scheduled_us = None, meta_json = None, config_json = None))]
    fn submit(
        &self,
        py: Python<'_>,
        run_id: String,
        graph: String,
        graph_key: String,
        trigger: String,
        params: Vec<u8>,
        tasks: Vec<(String, String, i64, u32)>,
        parents: Vec<Vec<u32>>,
        scheduled_us: Option<i64>,
        meta_json: Option<String>,
        config_json: Option<String>,
    ) -> PyResult<()> {
        let run = NewRun {
            run_id,
            graph,
            graph_key,
            trigger,
            scheduled_us,
            params,
            meta_json,
            config_json,
            tasks: tasks
                .into_iter()
                .map(|(name, tag, priority, retries)| FleetTask {
                    name,
                    tag,
                    priority,
                    retries,
                })
                .collect(),
            parents,
        };
        Ok(py.detach(|| self.fleet.submit(&run))?)
    }

    /// Claims up to `n` ready tasks of the registered graphs (of these tags only, if given).
    #[pyo3(signature = (n, tags = None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        tags: Option<Vec<String>>,
    ) -> PyResult<Vec<ClaimTuple<'py>>> {
        let got = py.detach(|| self.fleet.claim(n, tags.as_deref()))?;
        Ok(got
            .into_iter()
            .map(|c| {
                let inputs = c
                    .inputs
                    .into_iter()
                    .map(|(node, format, data)| (node, format, PyBytes::new(py, &data)))
                    .collect();
                (
                    c.run_id,
                    c.rid,
                    c.graph_key,
                    c.node,
                    c.attempt,
                    c.started_us,
                    inputs,
                )
            })
            .collect())
    }

    /// Ends a claimed attempt with its result.
    fn complete(
        &self,
        py: Python<'_>,
        claim: ClaimRef,
        format: String,
        data: Vec<u8>,
    ) -> PyResult<EndTuple> {
        let outcome = Outcome::Completed { format, data };
        let c = claimed(claim);
        Ok(end_tuple(py.detach(|| self.fleet.end(&c, &outcome))?))
    }

    /// Ends a claimed attempt with an error; retried at `retry_at_us` if `retryable` and retries
    /// remain.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        py: Python<'_>,
        claim: ClaimRef,
        error_type: String,
        message: String,
        traceback: Option<String>,
        retryable: bool,
        retry_at_us: i64,
    ) -> PyResult<EndTuple> {
        let outcome = Outcome::Failed {
            error_type,
            message,
            traceback,
            retryable,
            retry_at_us,
        };
        let c = claimed(claim);
        Ok(end_tuple(py.detach(|| self.fleet.end(&c, &outcome))?))
    }

    /// Cancels a run's tasks that have not started; False if the run is unknown or over.
    fn cancel(&self, py: Python<'_>, run_id: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.fleet.cancel(run_id))?)
    }

    /// (graph_key, params) of a run by its integer key, or None.
    fn run_params<'py>(
        &self,
        py: Python<'py>,
        rid: i64,
    ) -> PyResult<Option<(String, Bound<'py, PyBytes>)>> {
        let got = py.detach(|| self.fleet.run_params(rid))?;
        Ok(got.map(|(key, params)| (key, PyBytes::new(py, &params))))
    }

    /// (node, state, attempt, owner) of every task of a run.
    fn progress(&self, py: Python<'_>, run_id: &str) -> PyResult<Vec<TaskProgress>> {
        Ok(py.detach(|| self.fleet.progress(run_id))?)
    }

    /// A run's state, or None.
    fn run_state(&self, py: Python<'_>, run_id: &str) -> PyResult<Option<String>> {
        Ok(py.detach(|| self.fleet.run_state(run_id))?)
    }

    /// The wake-up counter.
    fn wakes(&self) -> u64 {
        self.fleet.wakes()
    }

    /// Sleeps until a wake-up after `seen` or `timeout` seconds; returns the counter.
    fn wait(&self, py: Python<'_>, seen: u64, timeout: f64) -> u64 {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        py.detach(|| self.fleet.wait(seen, t))
    }

    /// Wakes `wait`.
    fn poke(&self) {
        self.fleet.poke();
    }

    /// Stops renewing leases and disconnects. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.fleet.close());
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFleet>()
}
