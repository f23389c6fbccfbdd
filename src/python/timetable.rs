//! `tm._tm.ManualClock` and `tm._tm.Timetable`: the scheduler's clock and cron timetable, behind
//! `tm.VirtualClock` and `tm.Executor.start`. Every wait is detached and bounded by the caller's
//! slice, so the Python loop around it can look at signals between slices.

use std::time::Duration;

use jiff::tz::TimeZone;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::cron::PyExpression;
use crate::clock::Clock;
use crate::engine::{Catchup, FireKind, Rule, Timetable, Timing};

/// A clock moved by hand, in microseconds since the epoch.
#[pyclass(name = "ManualClock", module = "tm._tm", frozen)]
pub struct PyManualClock {
    clock: Clock,
}

#[pymethods]
impl PyManualClock {
    #[new]
    fn new(start_us: i64) -> Self {
        PyManualClock {
            clock: Clock::manual(start_us),
        }
    }

    fn now_us(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Moves the clock; waiters whose due time has come wake up.
    fn set_us(&self, us: i64) {
        self.clock.set_micros(us);
    }
}

/// A fire as Python sees it: (graph, scheduled_us, due_us, kind, count, through_us).
type FireTuple = (String, i64, i64, &'static str, u64, i64);

/// The cron timetable of an executor.
#[pyclass(name = "Timetable", module = "tm._tm", frozen)]
pub struct PyTimetable {
    inner: Timetable,
}

fn slice(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("invalid duration: {seconds} s")))
}

#[pymethods]
impl PyTimetable {
    #[new]
    #[pyo3(signature = (clock = None))]
    fn new(clock: Option<&PyManualClock>) -> Self {
        let clock = clock.map(|c| c.clock.clone()).unwrap_or_default();
        PyTimetable {
            inner: Timetable::new(clock),
        }
    }

    fn now_us(&self) -> i64 {
        self.inner.clock().now_micros()
    }

    /// Schedules `graph` on a cron expression (read in `tz`) or, with `every` =
    /// (period_us, anchor_us), on an interval of elapsed time.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (graph, expr, tz, jitter_us, grace_us, catchup, max_catchup, last_fire_us = None, every = None))]
    fn add(
        &self,
        graph: &str,
        expr: Option<&PyExpression>,
        tz: Option<&str>,
        jitter_us: i64,
        grace_us: i64,
        catchup: &str,
        max_catchup: usize,
        last_fire_us: Option<i64>,
        every: Option<(i64, i64)>,
    ) -> PyResult<()> {
        let tz = match tz {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|e| PyValueError::new_err(format!("unknown time zone {name:?}: {e}")))?,
        };
        let catchup = match catchup {
            "none" => Catchup::None,
            "latest" => Catchup::Latest,
            "all" => Catchup::All,
            other => {
                return Err(PyValueError::new_err(format!(
                    "catchup must be 'none', 'latest' or 'all', got {other:?}"
                )))
            }
        };
        let rule = match (expr, every) {
            (Some(expr), None) => Rule::Cron {
                expr: expr.inner.clone(),
                tz,
            },
            (None, Some((period_us, anchor_us))) if period_us > 0 => Rule::Every {
                period_us,
                anchor_us,
            },
            _ => {
                return Err(PyValueError::new_err(
                    "a schedule is a cron expression or a positive interval, not both",
                ))
            }
        };
        let timing = Timing {
            rule,
            jitter_us: jitter_us.max(0),
            grace_us: grace_us.max(0),
            catchup,
            max_catchup,
        };
        self.inner.add(graph, timing, last_fire_us);
        Ok(())
    }

    fn remove(&self, graph: &str) -> bool {
        self.inner.remove(graph)
    }

    fn graphs(&self) -> Vec<String> {
        self.inner.graphs()
    }

    /// (logical fire time, due time with jitter) of `graph`'s next fire.
    fn next_fire(&self, graph: &str) -> Option<(i64, i64)> {
        self.inner.next_fire(graph)
    }

    fn next_due(&self) -> Option<i64> {
        self.inner.next_due()
    }

    fn wake(&self) {
        self.inner.wake();
    }

    /// Waits (detached) at most `seconds` for due fires; returns them and the clock time used.
    fn wait(&self, py: Python<'_>, seconds: f64) -> PyResult<(Vec<FireTuple>, i64)> {
        let d = slice(seconds)?;
        let (fires, now) = py.detach(|| self.inner.wait(d));
        let fires = fires
            .into_iter()
            .map(|f| {
                let kind = match f.kind {
                    FireKind::Scheduled => "schedule",
                    FireKind::Catchup => "catchup",
                    FireKind::Missed => "missed",
                };
                (
                    f.graph,
                    f.scheduled_us,
                    f.due_us,
                    kind,
                    f.count,
                    f.through_us,
                )
            })
            .collect();
        Ok((fires, now))
    }

    fn handled(&self, now_us: i64) {
        self.inner.handled(now_us);
    }

    /// Waits (detached) until the fires due now are handled; False after `seconds`.
    fn settle(&self, py: Python<'_>, seconds: f64) -> PyResult<bool> {
        let d = slice(seconds)?;
        Ok(py.detach(|| self.inner.settle(d)))
    }
}

/// The fixed delay (µs, below `jitter_us`) of every fire of the graph called `graph`: the one the
/// scheduler applies, derived from the name alone so every process agrees.
#[pyfunction]
fn jitter_offset(graph: &str, jitter_us: i64) -> i64 {
    crate::engine::jitter_offset(graph, jitter_us)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(jitter_offset, m)?)?;
    m.add_class::<PyManualClock>()?;
    m.add_class::<PyTimetable>()?;
    Ok(())
}
