//! Policy: the system-wide knobs of SPEC §2–§4, each visible, none applied silently.

use crate::error::{Error, Result};
use crate::model::TriggerKind;

/// How hard a registration is pushed to disk before `register` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum Durability {
    /// `synchronous=FULL`: a returned registration survives power loss (default).
    #[default]
    Full = 0,
    /// `synchronous=NORMAL`: survives a process crash; the last commits may be lost on power loss.
    Normal = 1,
}

impl Durability {
    pub fn from_u32(value: u32) -> Result<Durability> {
        match value {
            0 => Ok(Durability::Full),
            1 => Ok(Durability::Normal),
            v => Err(Error::invalid(format!(
                "unknown durability value {v} (0 = FULL, 1 = NORMAL)"
            ))),
        }
    }
}

/// Windows' minimum freshness for time and maintenance triggers.
pub const WINDOWS_MIN_FRESHNESS_MINUTES: u32 = 15;
/// Windows' maximum freshness: 30 days.
pub const MAX_FRESHNESS_MINUTES: u32 = 43_200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lowest accepted freshness for time and maintenance triggers (default 15, as Windows).
    pub min_freshness_minutes: u32,
    /// A due timer runs within `[due, due + window]` (default 900 s, as Windows; 0 = exact).
    pub timer_window_seconds: u32,
    /// Time a canceled task gets to finish (default 5 s).
    pub grace_ms: u32,
    /// Run-time limit per trigger kind in seconds, indexed by `TriggerKind` (0 = none).
    pub time_limit_seconds: [u32; 6],
    /// Worker pool size; 0 (the default) = one worker per CPU this process may use, counted by
    /// the broker when it opens ([`Policy::pool_size`]): a client never dispatches, and opening
    /// one does not pay for the count (the CPU quota files of its cgroup).
    pub max_concurrent: u32,
    pub durability: Durability,
    /// Runs kept in the history of each registration (default 100).
    pub history_limit: u32,
    /// Whether application triggers may run tasks (default true; false makes `request` answer
    /// `DISABLED_BY_POLICY`, as Windows does under the user's background-activity policy).
    pub allow_application_triggers: bool,
    /// `STORAGE_NOT_LOW` holds while more than this percentage of the store's file system is
    /// available (default 10; 0..=100).
    pub storage_low_percent: u8,
    /// How long a run waits for the app that the manifest's `activate` started to offer its
    /// handler before it fails, saying so (default 30 s; SPEC §12).
    pub activation_timeout_ms: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_freshness_minutes: WINDOWS_MIN_FRESHNESS_MINUTES,
            timer_window_seconds: 900,
            grace_ms: 5_000,
            time_limit_seconds: [25, 600, 25, 600, 25, 25],
            max_concurrent: 0,
            durability: Durability::Full,
            history_limit: 100,
            allow_application_triggers: true,
            storage_low_percent: 10,
            activation_timeout_ms: 30_000,
        }
    }
}

impl Policy {
    pub fn time_limit(&self, kind: TriggerKind) -> u32 {
        self.time_limit_seconds[kind as usize]
    }

    pub fn set_time_limit(&mut self, kind: TriggerKind, seconds: u32) {
        self.time_limit_seconds[kind as usize] = seconds;
    }

    /// The worker pool's size: `max_concurrent`, or for 0 the number of CPUs this process may
    /// use (its CPU affinity, bounded by its cgroup's CPU quota; 1 if unknown).
    pub fn pool_size(&self) -> u32 {
        match self.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }

    /// The policy a broker applies: `max_concurrent` counted ([`Policy::pool_size`]).
    pub(crate) fn counted(&self) -> Policy {
        Policy {
            max_concurrent: self.pool_size(),
            ..self.clone()
        }
    }

    /// Checks the ranges; called when a system opens.
    pub fn validate(&self) -> Result<()> {
        if self.storage_low_percent > 100 {
            return Err(Error::invalid(format!(
                "policy storage_low_percent {} is above 100",
                self.storage_low_percent
            )));
        }
        if self.min_freshness_minutes == 0 || self.min_freshness_minutes > MAX_FRESHNESS_MINUTES {
            return Err(Error::invalid(format!(
                "policy min_freshness_minutes {} is out of range 1..{MAX_FRESHNESS_MINUTES}",
                self.min_freshness_minutes
            )));
        }
        if self.max_concurrent > 4096 {
            return Err(Error::invalid(format!(
                "policy max_concurrent {} is out of range 0..4096 (0 = one per CPU)",
                self.max_concurrent
            )));
        }
        if self.timer_window_seconds > 86_400 {
            return Err(Error::invalid(format!(
                "policy timer_window_seconds {} is above one day",
                self.timer_window_seconds
            )));
        }
        if self.history_limit > 100_000 {
            return Err(Error::invalid(format!(
                "policy history_limit {} is above 100000",
                self.history_limit
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_counted_by_the_broker_not_by_the_default() {
        let policy = Policy::default();
        assert_eq!(
            policy.max_concurrent, 0,
            "the default leaves the count to the broker"
        );
        policy.validate().unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(policy.pool_size(), cpus);
        assert_eq!(policy.counted().max_concurrent, cpus);
        let set = Policy {
            max_concurrent: 3,
            ..Policy::default()
        };
        assert_eq!((set.pool_size(), set.counted().max_concurrent), (3, 3));
        let over = Policy {
            max_concurrent: 4097,
            ..Policy::default()
        };
        assert!(over.validate().unwrap_err().message().contains("0..4096"));
    }
}
