//! The only place that uses pyo3: thin wrappers over the core and the one error mapping.

use pyo3::prelude::*;

mod cache;
mod cache_index;
mod cron;
mod engine;
mod errors;
mod fleet;
mod graph;
mod queue;
mod store;
mod timetable;

/// The extension module `tm._tm`. Registering classes starts nothing: no thread, no runtime, no file.
#[pymodule(gil_used = false)]
fn _tm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    cache::register(m)?;
    cache_index::register(m)?;
    cron::register(m)?;
    engine::register(m)?;
    fleet::register(m)?;
    queue::register(m)?;
    store::register(m)?;
    timetable::register(m)?;
    Ok(())
}
