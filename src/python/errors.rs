//! The single mapping from core errors to Python exceptions (defined in `tm/exceptions.py`).

use pyo3::PyErr;

use crate::cron::CronError;

/// The Python exception classes, imported lazily from `tm.exceptions` on first use.
pub(crate) mod exc {
    pyo3::import_exception!(tm.exceptions, CronError);
}

impl From<CronError> for PyErr {
    fn from(e: CronError) -> PyErr {
        exc::CronError::new_err(e.to_string())
    }
}
