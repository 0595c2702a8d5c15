//! Clocks: the real wall clock, or a manual clock that moves only by `advance` (tests, simulations).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A clock that moves only when told. Cheap to clone; clones share one time.
/// Told of each advance; returns `false` once its system is gone (it is then dropped).
type Listener = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
pub struct ManualClock {
    now_ms: Arc<Mutex<i64>>,
    /// Told after every `advance` (systems using this clock wake their broker).
    listeners: Arc<Mutex<Vec<Listener>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `start_ms` milliseconds since the Unix epoch (UTC).
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(Mutex::new(start_ms)),
            listeners: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now_ms(&self) -> i64 {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `ms`; a negative amount is `InvalidArgument` (time never runs
    /// backwards, and a silent clamp would hide the caller's bug).
    pub fn advance_ms(&self, ms: i64) -> crate::Result<()> {
        if ms < 0 {
            return Err(crate::Error::invalid(format!(
                "cannot advance a manual clock by {ms} ms: time never runs backwards"
            )));
        }
        {
            let mut now = self.now_ms.lock().unwrap_or_else(|p| p.into_inner());
            *now = now.saturating_add(ms);
        }
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let gone: Vec<Listener> = listeners.into_iter().filter(|l| !l()).collect();
        if !gone.is_empty() {
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|l| !gone.iter().any(|g| Arc::ptr_eq(g, l)));
        }
        Ok(())
    }

    /// Calls `listener` after every advance, until it returns `false`.
    pub(crate) fn subscribe(&self, listener: Listener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn listeners_are_told_until_they_unsubscribe() {
        let clock = ManualClock::new(0);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        clock.subscribe(Arc::new(move || c.fetch_add(1, Ordering::SeqCst) < 1));
        clock.advance_ms(1).unwrap(); // told; stays
        clock.advance_ms(1).unwrap(); // told; answers false and is dropped
        clock.advance_ms(1).unwrap(); // not told
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(clock.listeners.lock().unwrap().is_empty());
        assert_eq!(clock.now_ms(), 3);
    }
}
