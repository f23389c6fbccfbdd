//! The timetable: when each scheduled graph (cron or interval) fires next, and what to do about fires that came
//! due while nobody was looking.
//!
//! A [`Timetable`] keeps one slot per graph and a min-heap of due times. [`Timetable::wait`] sleeps
//! on a condition variable until the earliest due time, a [`Timetable::wake`], or a move of a
//! manual clock, then returns every fire due at the clock's "now". It never polls on a tick: under
//! the system clock it sleeps exactly until the next due time (or the caller's slice ends, so the
//! caller can look at signals); under a manual clock it sleeps until the clock moves.
//!
//! Lateness decides a fire's kind. A fire handled at most `grace` after its due time is
//! [`FireKind::Scheduled`]. Older ones were *missed* (the process was down, suspended, or the
//! clock jumped) and the [`Catchup`] policy picks which of them still run ([`FireKind::Catchup`]);
//! the rest are returned as [`FireKind::Missed`] so the caller can log and record every one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::clock::{Clock, Watcher};
use crate::cron::Expression;

/// Missed fires listed one by one per graph and wake-up; older ones are summarised in one fire.
const MAX_LISTED: usize = 1000;

/// What happens to fires that were missed by more than the grace window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catchup {
    /// None of them run.
    None,
    /// The newest one runs, unless an on-time fire follows it in the same wake-up.
    Latest,
    /// The newest `max_catchup` run, oldest first.
    All,
}

/// When a graph's logical fire times fall.
#[derive(Clone, Debug)]
pub enum Rule {
    /// Wall-clock times matching a cron expression, read in `tz` (DST policy: see
    /// [`Expression::next_after_in`]).
    Cron {
        /// The cron expression.
        expr: Expression,
        /// The zone its wall times are read in.
        tz: TimeZone,
    },
    /// Every `period_us` of elapsed time from `anchor_us` (both in microseconds; the anchor is a
    /// Unix time): no zone, so daylight saving changes nothing.
    Every {
        /// The interval, positive.
        period_us: i64,
        /// One fire time; the others are whole periods before and after it.
        anchor_us: i64,
    },
}

impl Rule {
    /// The first fire time strictly after `after_us`, or None past the representable range.
    pub fn next_after(&self, after_us: i64) -> Option<i64> {
        match self {
            Rule::Cron { expr, tz } => {
                let at = Timestamp::from_microsecond(after_us).ok()?;
                expr.next_after_in(tz, at).map(|ts| ts.as_microsecond())
            }
            Rule::Every {
                period_us,
                anchor_us,
            } => {
                let periods = after_us.checked_sub(*anchor_us)?.div_euclid(*period_us);
                let next = periods
                    .checked_add(1)?
                    .checked_mul(*period_us)?
                    .checked_add(*anchor_us)?;
                Timestamp::from_microsecond(next).ok().map(|_| next)
            }
        }
    }
}

/// How one graph is scheduled.
#[derive(Clone, Debug)]
pub struct Timing {
    /// When its fires fall.
    pub rule: Rule,
    /// Upper bound of the graph's deterministic delay, in microseconds (0: none).
    pub jitter_us: i64,
    /// How late a fire may be handled and still count as on time, in microseconds.
    pub grace_us: i64,
    /// The policy for fires missed by more than `grace_us`.
    pub catchup: Catchup,
    /// At most this many missed fires run under [`Catchup::All`].
    pub max_catchup: usize,
}

/// How a fire is to be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireKind {
    /// On time: run it.
    Scheduled,
    /// Missed, and the catch-up policy runs it.
    Catchup,
    /// Missed and not run: record it.
    Missed,
}

/// One fire time of one graph (or, for [`FireKind::Missed`], a run of consecutive ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fire {
    /// The graph.
    pub graph: String,
    /// The logical fire time (the cron time, without jitter), microseconds since the epoch.
    pub scheduled_us: i64,
    /// When it came due: `scheduled_us` plus the graph's jitter.
    pub due_us: i64,
    /// What to do with it.
    pub kind: FireKind,
    /// How many fire times it stands for: 1, except for a summary of many missed fires.
    pub count: u64,
    /// The last fire time it stands for (`scheduled_us` unless `count > 1`).
    pub through_us: i64,
}

/// The delay of `name`'s fires: a hash of the name, below `jitter_us` (stable across processes).
pub fn jitter_offset(name: &str, jitter_us: i64) -> i64 {
    if jitter_us <= 0 {
        return 0;
    }
    // FNV-1a: fixed, unlike std's randomly keyed hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % jitter_us as u64) as i64
}

struct Slot {
    timing: Timing,
    offset_us: i64,
    /// The next logical fire time not handled yet (None: the schedule has ended).
    next_us: Option<i64>,
    /// The last logical fire time handled.
    last_us: Option<i64>,
    /// Bumped on every change, so stale heap entries are ignored.
    generation: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// (due time, slot generation, graph): lazily deleted entries are skipped on pop.
    heap: BinaryHeap<Reverse<(i64, u64, String)>>,
    generation: u64,
    woken: bool,
    /// The clock time up to which every due fire has been handled by the caller.
    handled_us: i64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every mutation is a few
        // assignments that cannot unwind halfway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The schedules of a set of graphs and the fires they produce. `Send + Sync`.
pub struct Timetable {
    clock: Clock,
    shared: Arc<Shared>,
    // Kept alive for as long as the timetable: the clock only holds it weakly.
    _watcher: Arc<Watcher>,
}

fn next_fire(t: &Timing, after_us: i64) -> Option<i64> {
    t.rule.next_after(after_us)
}

impl Timetable {
    /// An empty timetable reading time from `clock`.
    pub fn new(clock: Clock) -> Timetable {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        let watcher: Arc<Watcher> = Arc::new(move || {
            if let Some(s) = weak.upgrade() {
                // Taking the lock orders this notification after a waiter's check of the time.
                let _st = s.lock();
                s.changed.notify_all();
            }
        });
        clock.watch(&watcher);
        Timetable {
            clock,
            shared,
            _watcher: watcher,
        }
    }

    /// The clock this timetable reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Adds `graph` (or replaces its timing). Its first fire is the first cron time after
    /// `last_fire_us` (the last fire handled, e.g. by a previous process), else after the graph's
    /// own last handled fire if it was already here, else after now.
    pub fn add(&self, graph: &str, timing: Timing, last_fire_us: Option<i64>) {
        let now = self.clock.now_micros();
        let mut st = self.shared.lock();
        let last = last_fire_us.or_else(|| st.slots.get(graph).and_then(|s| s.last_us));
        let next_us = next_fire(&timing, last.unwrap_or(now));
        st.generation += 1;
        let generation = st.generation;
        let offset_us = jitter_offset(graph, timing.jitter_us);
        if let Some(n) = next_us {
            st.heap.push(Reverse((
                n.saturating_add(offset_us),
                generation,
                graph.to_string(),
            )));
        }
        st.slots.insert(
            graph.to_string(),
            Slot {
                timing,
                offset_us,
                next_us,
                last_us: last,
                generation,
            },
        );
        st.woken = true;
        self.shared.changed.notify_all();
    }

    /// Removes `graph`; returns whether it was there.
    pub fn remove(&self, graph: &str) -> bool {
        let mut st = self.shared.lock();
        let had = st.slots.remove(graph).is_some();
        // Drop the heap entries of removed graphs now rather than when they come due, so a
        // churn of add/remove cannot grow the heap.
        if had {
            let st = &mut *st;
            let slots = &st.slots;
            st.heap
                .retain(|Reverse((_, g, n))| slots.get(n).is_some_and(|s| s.generation == *g));
            st.woken = true;
        }
        self.shared.changed.notify_all();
        had
    }

    /// The graphs, by name.
    pub fn graphs(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().slots.keys().cloned().collect();
        names.sort();
        names
    }

    /// `graph`'s next logical fire time and its due time (with jitter).
    pub fn next_fire(&self, graph: &str) -> Option<(i64, i64)> {
        let st = self.shared.lock();
        let s = st.slots.get(graph)?;
        s.next_us.map(|n| (n, n.saturating_add(s.offset_us)))
    }

    /// The earliest due time over every graph.
    pub fn next_due(&self) -> Option<i64> {
        let st = self.shared.lock();
        st.heap.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Makes a current or the next [`wait`](Timetable::wait) return at once (for stop requests
    /// and finished runs).
    pub fn wake(&self) {
        let mut st = self.shared.lock();
        st.woken = true;
        self.shared.changed.notify_all();
    }

    /// Waits at most `slice` of real time for fires to come due, and returns them with the clock
    /// time they were computed at (pass it to [`handled`](Timetable::handled) once they are dealt
    /// with). Returns early, possibly with no fires, after a [`wake`](Timetable::wake).
    pub fn wait(&self, slice: Duration) -> (Vec<Fire>, i64) {
        let started = Instant::now();
        let mut st = self.shared.lock();
        loop {
            let now = self.clock.now_micros();
            let fires = collect(&mut st, now);
            if !fires.is_empty() {
                return (fires, now);
            }
            if now > st.handled_us {
                st.handled_us = now;
                self.shared.changed.notify_all();
            }
            if std::mem::take(&mut st.woken) {
                return (fires, now);
            }
            let Some(left) = slice
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
            else {
                return (fires, now);
            };
            let timeout = match (&self.clock, st.heap.peek()) {
                (Clock::System, Some(Reverse((due, _, _)))) => {
                    let ahead = Duration::from_micros(due.saturating_sub(now).max(0) as u64);
                    ahead.min(left)
                }
                _ => left,
            };
            st = self
                .shared
                .changed
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records that every fire due at clock time `now_us` (from [`wait`](Timetable::wait)) has
    /// been dealt with, releasing [`settle`](Timetable::settle) callers.
    pub fn handled(&self, now_us: i64) {
        let mut st = self.shared.lock();
        if now_us > st.handled_us {
            st.handled_us = now_us;
        }
        self.shared.changed.notify_all();
    }

    /// Blocks until every fire due at the clock's current time has been handled by the waiting
    /// caller, or `timeout` passes; returns whether it got there. For manual-clock tests.
    pub fn settle(&self, timeout: Duration) -> bool {
        let target = self.clock.now_micros();
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.handled_us < target {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Pops every slot due at `now` and turns its due fire times into [`Fire`]s.
fn collect(st: &mut State, now: i64) -> Vec<Fire> {
    let mut out = Vec::new();
    while let Some(Reverse((due, generation, _))) = st.heap.peek() {
        if *due > now {
            break;
        }
        let generation = *generation;
        let Some(Reverse((_, _, name))) = st.heap.pop() else {
            break;
        };
        let Some(slot) = st.slots.get_mut(&name) else {
            continue;
        };
        if slot.generation != generation {
            continue;
        }
        fires_of(&name, slot, now, &mut out);
        if let Some(n) = slot.next_us {
            st.heap.push(Reverse((
                n.saturating_add(slot.offset_us),
                generation,
                name,
            )));
        }
    }
    out
}

/// Appends the fires of `slot` due at `now`, oldest first, and moves the slot past them.
fn fires_of(name: &str, slot: &mut Slot, now: i64, out: &mut Vec<Fire>) {
    let off = slot.offset_us;
    let t = &slot.timing;
    let keep = match t.catchup {
        Catchup::None => 0,
        Catchup::Latest => 1,
        Catchup::All => t.max_catchup,
    };
    let fire = |at: i64, kind| Fire {
        graph: name.to_string(),
        scheduled_us: at,
        due_us: at.saturating_add(off),
        kind,
        count: 1,
        through_us: at,
    };
    // Missed fires: the newest `keep` wait in `candidates`; older ones are listed, then summarised.
    let mut candidates: VecDeque<i64> = VecDeque::new();
    let mut listed = 0usize;
    let mut summary: Option<Fire> = None;
    let mut on_time: Vec<Fire> = Vec::new();
    let mut miss = |at: i64, out: &mut Vec<Fire>| {
        if listed < MAX_LISTED {
            listed += 1;
            out.push(fire(at, FireKind::Missed));
        } else if let Some(s) = summary.as_mut() {
            s.count += 1;
            s.through_us = at;
        } else {
            summary = Some(fire(at, FireKind::Missed));
        }
    };
    let mut next = slot.next_us;
    while let Some(at) = next {
        let due = at.saturating_add(off);
        if due > now {
            break;
        }
        if now - due > t.grace_us {
            candidates.push_back(at);
            if candidates.len() > keep {
                if let Some(old) = candidates.pop_front() {
                    miss(old, out);
                }
            }
        } else {
            on_time.push(fire(at, FireKind::Scheduled));
        }
        slot.last_us = Some(at);
        next = next_fire(t, at);
    }
    slot.next_us = next;
    if let Some(s) = summary {
        out.push(s);
    }
    // Under `Latest`, an on-time fire already brings the graph up to date.
    let run_missed = t.catchup != Catchup::Latest || on_time.is_empty();
    for at in candidates {
        let kind = if run_missed {
            FireKind::Catchup
        } else {
            FireKind::Missed
        };
        out.push(fire(at, kind));
    }
    out.extend(on_time);
}

#[cfg(test)]
#[path = "timetable_tests.rs"]
mod tests;
