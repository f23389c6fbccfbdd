//! The only reader of "now" in the core.
//!
//! Everything that needs the current time asks a [`Clock`], so tests can drive time by hand. A
//! manual clock also tells interested waiters when it moves ([`Clock::watch`]), so a scheduler
//! sleeping until a due time under a manual clock wakes as soon as the test moves time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// A callback run after a manual clock moves.
pub type Watcher = dyn Fn() + Send + Sync;

/// The state of a manual clock: the time, and who to tell when it changes.
#[derive(Debug, Default)]
pub struct ManualTime {
    micros: AtomicI64,
    watchers: Mutex<Vec<WeakWatcher>>,
}

/// A watcher held weakly: the clock never keeps its waiters alive.
struct WeakWatcher(Weak<Watcher>);

impl std::fmt::Debug for WeakWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// A source of the current wall-clock time, in microseconds since the Unix epoch (UTC).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's real-time clock.
    #[default]
    System,
    /// A manually driven clock for tests and simulations.
    Manual(Arc<ManualTime>),
}

impl Clock {
    /// A manual clock starting at `micros` since the epoch.
    pub fn manual(micros: i64) -> Self {
        Clock::Manual(Arc::new(ManualTime {
            micros: AtomicI64::new(micros),
            watchers: Mutex::new(Vec::new()),
        }))
    }

    /// Microseconds since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
            Clock::Manual(m) => m.micros.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock to `micros` and runs its live watchers (no effect on the system
    /// clock).
    pub fn set_micros(&self, micros: i64) {
        if let Clock::Manual(m) = self {
            m.micros.store(micros, Ordering::Release);
            // Watchers are collected first and run outside the lock, so a watcher may itself
            // read the clock or register another watcher without deadlocking.
            let live: Vec<Arc<Watcher>> = {
                let mut ws = m.watchers.lock().unwrap_or_else(|e| e.into_inner());
                ws.retain(|w| w.0.strong_count() > 0);
                ws.iter().filter_map(|w| w.0.upgrade()).collect()
            };
            for w in live {
                w();
            }
        }
    }

    /// Calls `watcher` after every later move of a manual clock, for as long as the caller keeps
    /// the `Arc` alive. The system clock moves continuously and calls nobody: waiters on it use
    /// timeouts.
    pub fn watch(&self, watcher: &Arc<Watcher>) {
        if let Clock::Manual(m) = self {
            let mut ws = m.watchers.lock().unwrap_or_else(|e| e.into_inner());
            ws.retain(|w| w.0.strong_count() > 0);
            ws.push(WeakWatcher(Arc::downgrade(watcher)));
        }
    }

    /// Whether this clock is driven by hand.
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(5);
        assert_eq!(c.now_micros(), 5);
        c.set_micros(42);
        assert_eq!(c.now_micros(), 42);
        assert!(c.is_manual());
        assert!(Clock::System.now_micros() > 1_600_000_000_000_000);
    }

    #[test]
    fn watchers_run_on_every_move_until_dropped() {
        let c = Clock::manual(0);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let w: Arc<Watcher> = Arc::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        c.watch(&w);
        c.clone().set_micros(1);
        c.set_micros(2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(w);
        c.set_micros(3);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
