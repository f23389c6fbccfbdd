//! The single mapping from core errors to Python exceptions (defined in `tm/exceptions.py`).

use pyo3::PyErr;

use crate::cron::CronError;
use crate::dag::DagError;

/// The Python exception classes, imported lazily from `tm.exceptions` on first use.
pub(crate) mod exc {
    pyo3::import_exception!(tm.exceptions, CronError);
    pyo3::import_exception!(tm.exceptions, GraphError);
    pyo3::import_exception!(tm.exceptions, CycleError);
    pyo3::import_exception!(tm.exceptions, ExecutorError);
    pyo3::import_exception!(tm.exceptions, TaskTimeout);
    pyo3::import_exception!(tm.exceptions, TaskCancelled);
}

impl From<CronError> for PyErr {
    fn from(e: CronError) -> PyErr {
        exc::CronError::new_err(e.to_string())
    }
}

impl From<DagError> for PyErr {
    fn from(e: DagError) -> PyErr {
        match &e {
            DagError::Cycle { path } => exc::CycleError::new_err((e.to_string(), path.clone())),
            _ => exc::GraphError::new_err(e.to_string()),
        }
    }
}
