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

/// The earliest instant btb handles: 0001-01-01T00:00:00Z, in ms since the Unix epoch.
pub const MIN_INSTANT_MS: i64 = -62_135_596_800_000;
/// The latest instant btb handles: 9999-12-31T23:59:59.999Z. A due time past it is never reached,
/// and with every instant bounded so, no sum of an instant and a policy duration can overflow.
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

/// `ms` if it is an instant btb handles.
pub(crate) fn in_range(ms: i64) -> Option<i64> {
    (MIN_INSTANT_MS..=MAX_INSTANT_MS)
        .contains(&ms)
        .then_some(ms)
}

fn out_of_range(what: &str, ms: i128) -> crate::Error {
    crate::Error::invalid(format!(
        "{what} {ms} ms is outside the instants btb handles \
         ({MIN_INSTANT_MS}..={MAX_INSTANT_MS} ms since the Unix epoch: years 1 to 9999, UTC)"
    ))
}

impl ManualClock {
    /// A clock standing at `start_ms` milliseconds since the Unix epoch (UTC); `InvalidArgument`
    /// outside years 1–9999 ([`MIN_INSTANT_MS`]..=[`MAX_INSTANT_MS`]).
    pub fn new(start_ms: i64) -> crate::Result<ManualClock> {
        in_range(start_ms)
            .ok_or_else(|| out_of_range("a manual clock start of", start_ms.into()))?;
        Ok(ManualClock {
            now_ms: Arc::new(Mutex::new(start_ms)),
            listeners: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn now_ms(&self) -> i64 {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `ms`; a negative amount, or one that would pass
    /// [`MAX_INSTANT_MS`], is `InvalidArgument` and leaves the clock where it was (time never runs
    /// backwards, and a silent clamp would hide the caller's bug).
    pub fn advance_ms(&self, ms: i64) -> crate::Result<()> {
        if ms < 0 {
            return Err(crate::Error::invalid(format!(
                "cannot advance a manual clock by {ms} ms: time never runs backwards"
            )));
        }
        {
            let mut now = self.now_ms.lock().unwrap_or_else(|p| p.into_inner());
            let to = i128::from(*now) + i128::from(ms);
            *now = i64::try_from(to)
                .ok()
                .and_then(in_range)
                .ok_or_else(|| out_of_range("advancing the manual clock to", to))?;
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
        let clock = ManualClock::new(0).unwrap();
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

    #[test]
    fn instants_outside_years_1_to_9999_are_refused_and_change_nothing() {
        assert!(ManualClock::new(i64::MAX).is_err());
        assert!(ManualClock::new(MIN_INSTANT_MS - 1).is_err());
        let clock = ManualClock::new(MAX_INSTANT_MS - 10).unwrap();
        let err = clock.advance_ms(i64::MAX).unwrap_err();
        assert!(err.message().contains("years 1 to 9999"), "{err}");
        assert!(clock.advance_ms(11).is_err());
        assert_eq!(clock.now_ms(), MAX_INSTANT_MS - 10);
        clock.advance_ms(10).unwrap();
        assert_eq!(clock.now_ms(), MAX_INSTANT_MS);
    }
}
