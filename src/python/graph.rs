//! `tm._tm.GraphCore`: the graph builder behind `tm.Graph` (names, edges, incremental cycle checks).

use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;

use crate::dag::{DagBuilder, NodeId, Plan};

/// Nodes are identified by name; the payload is the Python task object (compared by identity).
#[pyclass(name = "GraphCore", module = "tm._tm", frozen)]
pub struct PyGraphCore {
    inner: Mutex<Core>,
}

struct Core {
    builder: DagBuilder<Py<PyAny>>,
    plan: Option<Arc<Plan>>,
}

impl PyGraphCore {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frozen plan (cached until the graph changes).
    pub(crate) fn plan(&self) -> Arc<Plan> {
        let mut core = self.lock();
        if let Some(p) = &core.plan {
            return p.clone();
        }
        let p = Arc::new(core.builder.plan());
        core.plan = Some(p.clone());
        p
    }
}

#[pymethods]
impl PyGraphCore {
    #[new]
    fn new() -> Self {
        PyGraphCore {
            inner: Mutex::new(Core {
                builder: DagBuilder::new(),
                plan: None,
            }),
        }
    }

    /// Adds a node (idempotent for the same object); returns its index.
    fn add_node(&self, name: &str, task: Bound<'_, PyAny>) -> PyResult<u32> {
        let mut core = self.lock();
        let id = core.builder.add_node(name, task.unbind(), |a, b| a.is(b))?;
        core.plan = None;
        Ok(id)
    }

    /// Adds a task that is not in the graph yet after `parents` (nodes already in it), in one
    /// step: edges into a new node close no cycle, so none is searched for.
    fn add_node_after(
        &self,
        name: &str,
        task: Bound<'_, PyAny>,
        parents: Vec<u32>,
    ) -> PyResult<u32> {
        let mut core = self.lock();
        let n = core.builder.len() as u32;
        if let Some(p) = parents.iter().find(|p| **p >= n) {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "no node {p}"
            )));
        }
        let id = core.builder.add_node(name, task.unbind(), |a, b| a.is(b))?;
        if id != n {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "task {name:?} is already in the graph"
            )));
        }
        for p in parents {
            core.builder.add_edge(p, id)?;
        }
        core.plan = None;
        Ok(id)
    }

    /// Adds edges parent -> child for every pair, all or nothing: on a cycle none are kept.
    fn add_edges(&self, edges: Vec<(u32, u32)>) -> PyResult<()> {
        let mut core = self.lock();
        let n = core.builder.len() as u32;
        if let Some((p, c)) = edges.iter().find(|(p, c)| *p >= n || *c >= n) {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "no node {}",
                p.max(c)
            )));
        }
        let mut added: Vec<(u32, u32)> = Vec::new();
        for &(p, c) in &edges {
            let before = core.builder.edge_count();
            if let Err(e) = core.builder.add_edge(p, c) {
                for &(ap, ac) in added.iter().rev() {
                    core.builder.remove_edge(ap, ac);
                }
                core.plan = None;
                return Err(e.into());
            }
            if core.builder.edge_count() > before {
                added.push((p, c));
            }
        }
        core.plan = None;
        Ok(())
    }

    /// Removes nodes with index `len` or above and their edges (undoes a failed change).
    fn truncate(&self, len: usize) {
        let mut core = self.lock();
        core.builder.truncate(len);
        core.plan = None;
    }

    /// The index of `name`, or None.
    fn find(&self, name: &str) -> Option<u32> {
        self.lock().builder.find(name)
    }

    /// The task object of node `i`.
    fn task(&self, py: Python<'_>, i: u32) -> PyResult<Py<PyAny>> {
        let core = self.lock();
        if i as usize >= core.builder.len() {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "no node {i}"
            )));
        }
        Ok(core.builder.payload(i).clone_ref(py))
    }

    /// Node names in index order.
    fn names(&self) -> Vec<String> {
        let core = self.lock();
        (0..core.builder.len() as NodeId)
            .map(|i| core.builder.name(i).to_string())
            .collect()
    }

    /// Parents of node `i`.
    fn parents(&self, i: u32) -> Vec<u32> {
        let core = self.lock();
        if i as usize >= core.builder.len() {
            return Vec::new();
        }
        core.builder.parents(i).to_vec()
    }

    /// The parents of every node, in index order (one call for a whole graph's compile).
    fn parent_lists(&self) -> Vec<Vec<u32>> {
        let core = self.lock();
        (0..core.builder.len() as NodeId)
            .map(|i| core.builder.parents(i).to_vec())
            .collect()
    }

    /// Children of node `i`.
    fn children(&self, i: u32) -> Vec<u32> {
        let core = self.lock();
        if i as usize >= core.builder.len() {
            return Vec::new();
        }
        core.builder.children(i).to_vec()
    }

    /// Every node, parents before children.
    fn topological_order(&self) -> Vec<u32> {
        self.plan().topological_order().to_vec()
    }

    /// All edges as (parent, child) pairs.
    fn edges(&self) -> Vec<(u32, u32)> {
        let core = self.lock();
        (0..core.builder.len() as NodeId)
            .flat_map(|p| {
                core.builder
                    .children(p)
                    .iter()
                    .map(move |c| (p, *c))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn __len__(&self) -> usize {
        self.lock().builder.len()
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Ok(core) = self.inner.try_lock() {
            for i in 0..core.builder.len() as NodeId {
                visit.call(core.builder.payload(i))?;
            }
        }
        Ok(())
    }
}
