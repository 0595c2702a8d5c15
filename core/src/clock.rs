//! Clocks: the real wall clock, or a manual clock that moves only by `advance` (tests, simulations).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A clock that moves only when told. Cheap to clone; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<Mutex<i64>>,
}

impl ManualClock {
    /// A clock standing at `start_ms` milliseconds since the Unix epoch (UTC).
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(Mutex::new(start_ms)),
        }
    }

    pub fn now_ms(&self) -> i64 {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `ms` (negative values are ignored: time never runs backwards).
    pub fn advance_ms(&self, ms: i64) {
        let mut now = self.now_ms.lock().unwrap_or_else(|p| p.into_inner());
        *now = now.saturating_add(ms.max(0));
    }
}

/// The clock a system uses.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    Real,
    Manual(ManualClock),
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::Real => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            Clock::Manual(m) => m.now_ms(),
        }
    }
}
