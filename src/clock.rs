//! The only reader of "now" in the core.
//!
//! Everything that needs the current time asks a [`Clock`], so tests can drive time by hand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time, in microseconds since the Unix epoch (UTC).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's real-time clock.
    #[default]
    System,
    /// A manually driven clock for tests and simulations.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `micros` since the epoch.
    pub fn manual(micros: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(micros)))
    }

    /// Microseconds since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
            Clock::Manual(v) => v.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock to `micros` (no effect on the system clock).
    pub fn set_micros(&self, micros: i64) {
        if let Clock::Manual(v) = self {
            v.store(micros, Ordering::Release);
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

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(5);
        assert_eq!(c.now_micros(), 5);
        c.set_micros(42);
        assert_eq!(c.now_micros(), 42);
        assert!(c.is_manual());
        assert!(Clock::System.now_micros() > 1_600_000_000_000_000);
    }
}
