//! `STORAGE_NOT_LOW` as the broker sees it (SPEC §6): read with `statvfs` off every lock — on a
//! remote or failing file system the call can block, and it must not stall the broker under its
//! state lock — when the broker thread wakes, after each store write, and before a fire is
//! taken. Decisions under the lock use the last reading; a reading that changes it is handled as
//! any state change (latched fires start, runs that need it are canceled).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::Broker;

const UNKNOWN: u8 = 0;
const LOW: u8 = 1;
const NOT_LOW: u8 = 2;

/// The last reading.
#[derive(Default)]
pub(crate) struct Gauge(AtomicU8);

impl Gauge {
    pub(crate) fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            LOW => Some(false),
            NOT_LOW => Some(true),
            _ => None,
        }
    }

    /// Stores a reading; whether it changed.
    pub(super) fn set(&self, value: Option<bool>) -> bool {
        let v = match value {
            None => UNKNOWN,
            Some(false) => LOW,
            Some(true) => NOT_LOW,
        };
        self.0.swap(v, Ordering::AcqRel) != v
    }
}

/// Reads the file system holding `dir` (`None`: unknown).
pub(crate) fn read(dir: &std::path::Path, low_percent: u8) -> Option<bool> {
    let dir = crate::platform::storage::existing(dir)?;
    crate::platform::storage::not_low(&dir, low_percent)
}

impl Broker {
    /// Reads `STORAGE_NOT_LOW` now (no lock held) and handles a change. A simulated system's
    /// app sets its states itself.
    pub(crate) fn refresh_storage(self: &Arc<Self>) {
        if self.simulated {
            return;
        }
        let value = read(&self.storage_dir, self.policy.storage_low_percent);
        if self.storage.set(value)
            && let Ok(mut st) = self.open_state()
        {
            self.conditions_changed(&mut st);
            let now = self.clock.now_ms();
            self.dispatch(&mut st, now);
        }
    }
}
