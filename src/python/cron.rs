//! `tm._tm.Expression`: the cron core seen from Python.
//!
//! Datetimes cross the boundary through their pickle state (10 bytes: year, month|fold, day, hour,
//! minute, second, microsecond), one call each way; this is several times cheaper than reading
//! seven attributes and works under the limited API, where the datetime C API is not available.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::Timestamp;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use pyo3::{intern, IntoPyObjectExt};

use super::errors::exc;
use crate::cron::{Civil, Expression};

/// Cached handles to the `datetime` module's types and `zoneinfo.ZoneInfo`.
struct DateTimeApi {
    datetime: Py<PyType>,
    timezone: Py<PyType>,
    zoneinfo: Py<PyType>,
}

static API: PyOnceLock<DateTimeApi> = PyOnceLock::new();

fn api(py: Python<'_>) -> PyResult<&'static DateTimeApi> {
    API.get_or_try_init(py, || {
        let m = py.import("datetime")?;
        Ok(DateTimeApi {
            datetime: m.getattr("datetime")?.cast_into::<PyType>()?.unbind(),
            timezone: m.getattr("timezone")?.cast_into::<PyType>()?.unbind(),
            zoneinfo: py
                .import("zoneinfo")?
                .getattr("ZoneInfo")?
                .cast_into::<PyType>()?
                .unbind(),
        })
    })
}

/// A Python datetime taken apart: wall time, microseconds, fold and tzinfo (None when naive).
pub(crate) struct PyWall<'py> {
    pub civil: Civil,
    pub micro: u32,
    pub fold: bool,
    pub tzinfo: Option<Bound<'py, PyAny>>,
}

/// Reads a `datetime.datetime` (or subclass) through its pickle state.
pub(crate) fn read_datetime<'py>(t: &Bound<'py, PyAny>) -> PyResult<PyWall<'py>> {
    let py = t.py();
    if !t.is_instance(api(py)?.datetime.bind(py))? {
        return Err(PyTypeError::new_err(format!(
            "expected a datetime.datetime, got {}",
            t.get_type().name()?
        )));
    }
    // Protocol 4 is the first whose state carries `fold` (in the month byte's high bit).
    let reduced = t.call_method1(intern!(py, "__reduce_ex__"), (4,))?;
    let args = reduced.get_item(1)?;
    let args = args.cast::<PyTuple>()?;
    let state = args.get_item(0)?;
    let b = state.cast::<PyBytes>()?.as_bytes();
    if b.len() != 10 {
        return Err(PyTypeError::new_err("unsupported datetime pickle state"));
    }
    let civil = Civil {
        year: (b[0] as i32) << 8 | b[1] as i32,
        month: b[2] & 0x7f,
        day: b[3],
        hour: b[4],
        minute: b[5],
        second: b[6],
    };
    let micro = (b[7] as u32) << 16 | (b[8] as u32) << 8 | b[9] as u32;
    let tzinfo = if args.len() > 1 {
        let tz = args.get_item(1)?;
        (!tz.is_none()).then_some(tz)
    } else {
        None
    };
    Ok(PyWall {
        civil,
        micro,
        fold: b[2] & 0x80 != 0,
        tzinfo,
    })
}

/// Builds a `datetime.datetime` from wall time, fold and tzinfo.
pub(crate) fn make_datetime<'py>(
    py: Python<'py>,
    c: Civil,
    micro: u32,
    fold: bool,
    tzinfo: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    if !(1..=9999).contains(&c.year) {
        return Err(PyOverflowError::new_err("date value out of range"));
    }
    let state = [
        (c.year >> 8) as u8,
        (c.year & 0xff) as u8,
        c.month | if fold { 0x80 } else { 0 },
        c.day,
        c.hour,
        c.minute,
        c.second,
        (micro >> 16) as u8,
        (micro >> 8) as u8,
        micro as u8,
    ];
    let bytes = PyBytes::new(py, &state);
    let cls = api(py)?.datetime.bind(py);
    match tzinfo {
        Some(tz) => cls.call1((bytes, tz)),
        None => cls.call1((bytes,)),
    }
}

/// Recently seen tzinfo objects and their jiff zones (strong refs keep identities unique).
static ZONES: Mutex<Vec<(Py<PyAny>, TimeZone)>> = Mutex::new(Vec::new());

/// Resolves a Python tzinfo to a jiff time zone: `zoneinfo.ZoneInfo` by key, `datetime.timezone`
/// by its fixed offset. Any other tzinfo is refused, even one with a `key` attribute: its own
/// `utcoffset` may disagree with the zone the key names, and tm would compute in the wrong one.
pub(crate) fn zone_of(tz: &Bound<'_, PyAny>) -> PyResult<TimeZone> {
    let py = tz.py();
    if let Ok(cache) = ZONES.lock() {
        if let Some((_, z)) = cache.iter().find(|(o, _)| o.as_ptr() == tz.as_ptr()) {
            return Ok(z.clone());
        }
    }
    let zone = if tz.is_instance(api(py)?.timezone.bind(py))? {
        let off = tz.call_method1(intern!(py, "utcoffset"), (py.None(),))?;
        let secs: f64 = off.call_method0(intern!(py, "total_seconds"))?.extract()?;
        let offset = Offset::from_seconds(secs as i32)
            .map_err(|e| PyValueError::new_err(format!("unsupported UTC offset: {e}")))?;
        TimeZone::fixed(offset)
    } else if tz.is_instance(api(py)?.zoneinfo.bind(py))? {
        let key: String = tz
            .getattr(intern!(py, "key"))
            .and_then(|k| k.extract())
            .map_err(|_| unsupported_tz(tz))?;
        TimeZone::get(&key)
            .map_err(|e| PyValueError::new_err(format!("unknown time zone {key:?}: {e}")))?
    } else {
        return Err(unsupported_tz(tz));
    };
    if let Ok(mut cache) = ZONES.lock() {
        if cache.len() >= 32 {
            cache.remove(0);
        }
        cache.push((tz.clone().unbind(), zone.clone()));
    }
    Ok(zone)
}

fn unsupported_tz(tz: &Bound<'_, PyAny>) -> PyErr {
    let name = tz
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    PyTypeError::new_err(format!(
        "unsupported tzinfo {name}: use zoneinfo.ZoneInfo or datetime.timezone"
    ))
}

fn to_jiff_civil(c: Civil, micro: u32) -> PyResult<jiff::civil::DateTime> {
    jiff::civil::DateTime::new(
        c.year as i16,
        c.month as i8,
        c.day as i8,
        c.hour as i8,
        c.minute as i8,
        c.second as i8,
        micro as i32 * 1000,
    )
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The instant a Python wall time denotes, with PEP 495 semantics: fold=0 takes the offset in
/// force before a transition, fold=1 the one after (for both gaps and repeats).
pub(crate) fn instant_of(tz: &TimeZone, w: &PyWall<'_>) -> PyResult<Timestamp> {
    let dt = to_jiff_civil(w.civil, w.micro)?;
    let amb = tz.to_ambiguous_timestamp(dt);
    let offset = match amb.offset() {
        AmbiguousOffset::Unambiguous { offset } => offset,
        AmbiguousOffset::Gap { before, after } | AmbiguousOffset::Fold { before, after } => {
            if w.fold {
                after
            } else {
                before
            }
        }
    };
    offset.to_timestamp(dt).map_err(|_| beyond_timestamps(w))
}

/// The first instant jiff cannot represent: its timestamps end at 9999-12-30 22:00 UTC, so that
/// the wall time of every instant stays within years 1..9999 at any UTC offset.
fn beyond_timestamps(w: &PyWall<'_>) -> PyErr {
    let c = w.civil;
    PyOverflowError::new_err(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02} is out of range: aware times are supported up to \
         9999-12-30T22:00:00Z (so that every UTC offset stays within year 9999); fire times past \
         year 9999 do not exist",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    ))
}

/// The wall time and fold of an instant in a zone.
pub(crate) fn wall_of(tz: &TimeZone, ts: Timestamp) -> (Civil, u32, bool) {
    let offset = tz.to_offset(ts);
    let dt = offset.to_datetime(ts);
    let fold = match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Fold { after, before } => offset == after && after != before,
        _ => false,
    };
    let c = Civil {
        year: dt.year() as i32,
        month: dt.month() as u8,
        day: dt.day() as u8,
        hour: dt.hour() as u8,
        minute: dt.minute() as u8,
        second: dt.second() as u8,
    };
    (c, (dt.subsec_nanosecond() / 1000) as u32, fold)
}

/// No fire time in the direction asked before the calendar ends.
fn out_of_range(forward: bool, aware: bool) -> PyErr {
    PyOverflowError::new_err(match (forward, aware) {
        (true, false) => "no fire time after this one within year 9999: the next is past year 9999",
        (true, true) => {
            "no fire time after this one up to 9999-12-30T22:00:00Z, where aware times end: \
             the next is past year 9999 (or in the last hours of it)"
        }
        (false, _) => "no fire time before this one from year 1 on",
    })
}

/// One step of evaluation: forward or backward from a datetime, naive or aware.
fn step<'py>(
    expr: &Expression,
    t: &Bound<'py, PyAny>,
    forward: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = t.py();
    let w = read_datetime(t)?;
    match &w.tzinfo {
        None => {
            let c = naive_step(expr, w.civil, w.micro, forward)
                .ok_or_else(|| out_of_range(forward, false))?;
            make_datetime(py, c, 0, false, None)
        }
        Some(tzinfo) => {
            let tz = zone_of(tzinfo)?;
            let ts = instant_of(&tz, &w)?;
            let next = if forward {
                expr.next_after_in(&tz, ts)
            } else {
                expr.prev_before_in(&tz, ts)
            }
            .ok_or_else(|| out_of_range(forward, true))?;
            let (c, micro, fold) = wall_of(&tz, next);
            make_datetime(py, c, micro, fold, Some(tzinfo))
        }
    }
}

/// Naive evaluation: the core works in whole seconds, so a fraction only matters backwards.
fn naive_step(expr: &Expression, c: Civil, micro: u32, forward: bool) -> Option<Civil> {
    if forward {
        expr.next_after(c)
    } else if micro > 0 && expr.matches(c) {
        Some(c)
    } else {
        expr.prev_before(c)
    }
}

/// A cron expression, parsed and compiled once.
#[pyclass(name = "Expression", module = "tm._tm", frozen)]
pub struct PyExpression {
    pub(crate) inner: Expression,
}

#[pymethods]
impl PyExpression {
    #[new]
    fn new(text: &Bound<'_, PyString>) -> PyResult<Self> {
        // A str with a lone surrogate has no UTF-8 form: it cannot be a cron expression.
        let text = text.to_str().map_err(|_| {
            exc::CronError::new_err(format!(
                "cron expression {} is not valid Unicode text (it holds a lone surrogate)",
                text.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        Ok(PyExpression {
            inner: Expression::parse(text)?,
        })
    }

    /// The first fire time strictly after `t`.
    fn next<'py>(&self, t: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        step(&self.inner, t, true)
    }

    /// The last fire time strictly before `t`.
    fn prev<'py>(&self, t: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        step(&self.inner, t, false)
    }

    /// Whether `t` is a fire time.
    fn matches(&self, t: &Bound<'_, PyAny>) -> PyResult<bool> {
        let w = read_datetime(t)?;
        if w.micro != 0 {
            return Ok(false);
        }
        match &w.tzinfo {
            None => Ok(self.inner.matches(w.civil)),
            Some(tzinfo) => {
                let tz = zone_of(tzinfo)?;
                let ts = instant_of(&tz, &w)?;
                // A fire time is the instant the policy picks, so ask for the next one after t - 1s.
                let before = ts
                    .checked_sub(jiff::SignedDuration::from_secs(1))
                    .map_err(|e| PyOverflowError::new_err(e.to_string()))?;
                Ok(self.inner.next_after_in(&tz, before) == Some(ts))
            }
        }
    }

    /// Successive fire times after `t` (or before it, with `reverse=True`).
    #[pyo3(signature = (t, reverse = false))]
    fn iter(
        slf: Bound<'_, Self>,
        t: &Bound<'_, PyAny>,
        reverse: bool,
    ) -> PyResult<PyExpressionIter> {
        let w = read_datetime(t)?;
        let state = match &w.tzinfo {
            None => Cursor::Naive {
                at: w.civil,
                micro: w.micro,
            },
            Some(tzinfo) => {
                let tz = zone_of(tzinfo)?;
                let ts = instant_of(&tz, &w)?;
                Cursor::Aware {
                    at: ts,
                    tz,
                    tzinfo: tzinfo.clone().unbind(),
                }
            }
        };
        Ok(PyExpressionIter {
            expr: slf.unbind(),
            forward: !reverse,
            state: Mutex::new(Some(state)),
        })
    }

    /// Whether the expression has a leading seconds field.
    #[getter]
    fn has_seconds(&self) -> bool {
        self.inner.has_seconds()
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let text = pyo3::types::PyString::new(py, &self.inner.to_string());
        Ok(format!("Expression({})", text.repr()?))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match other.cast::<PyExpression>() {
            Ok(o) => (self.inner == o.get().inner).into_py_any(py),
            Err(_) => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self) -> isize {
        let mut h = DefaultHasher::new();
        self.inner.hash(&mut h);
        h.finish() as isize
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyType>, (String,))> {
        Ok((py.get_type::<PyExpression>(), (self.inner.to_string(),)))
    }
}

enum Cursor {
    Naive {
        at: Civil,
        micro: u32,
    },
    Aware {
        at: Timestamp,
        tz: TimeZone,
        tzinfo: Py<PyAny>,
    },
}

/// Iterator over successive fire times; ends (instead of raising) at the edge of years 1..9999.
#[pyclass(name = "ExpressionIter", module = "tm._tm", frozen)]
pub struct PyExpressionIter {
    expr: Py<PyExpression>,
    forward: bool,
    state: Mutex<Option<Cursor>>,
}

#[pymethods]
impl PyExpressionIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let expr = &self.expr.get().inner;
        // The lock is held only for pure Rust arithmetic and one datetime construction (no user code).
        let mut guard = self
            .state
            .lock()
            .map_err(|_| PyValueError::new_err("iterator state poisoned"))?;
        let Some(cursor) = guard.as_mut() else {
            return Ok(None);
        };
        match cursor {
            Cursor::Naive { at, micro } => match naive_step(expr, *at, *micro, self.forward) {
                Some(c) => {
                    *at = c;
                    *micro = 0;
                    make_datetime(py, c, 0, false, None).map(Some)
                }
                None => {
                    *guard = None;
                    Ok(None)
                }
            },
            Cursor::Aware { at, tz, tzinfo } => {
                let next = if self.forward {
                    expr.next_after_in(tz, *at)
                } else {
                    expr.prev_before_in(tz, *at)
                };
                match next {
                    Some(ts) => {
                        *at = ts;
                        let (c, micro, fold) = wall_of(tz, ts);
                        let tzinfo = tzinfo.bind(py).clone();
                        make_datetime(py, c, micro, fold, Some(&tzinfo)).map(Some)
                    }
                    None => {
                        *guard = None;
                        Ok(None)
                    }
                }
            }
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyExpression>()?;
    m.add_class::<PyExpressionIter>()?;
    Ok(())
}
