//! The state of the machine as conditions see it: the readings of every source (the simulated one,
//! or the platform's of `platform/`), the winner per state, and what a change means. A state
//! nobody knows is unknown, and an unknown state does not hold (SPEC §6).

use std::collections::HashMap;

use crate::model::{BackgroundWorkCostValue, SystemConditionType, SystemTriggerType};
use crate::platform::Source;

/// The other half of a contradictory pair.
fn opposite(condition: SystemConditionType) -> Option<SystemConditionType> {
    use SystemConditionType::*;
    Some(match condition {
        UserPresent => UserNotPresent,
        UserNotPresent => UserPresent,
        InternetAvailable => InternetNotAvailable,
        InternetNotAvailable => InternetAvailable,
        SessionConnected => SessionDisconnected,
        SessionDisconnected => SessionConnected,
        _ => return None,
    })
}

/// The half of a pair that is stored (the positive one), and the value for it.
fn stored(condition: SystemConditionType, value: bool) -> (SystemConditionType, bool) {
    use SystemConditionType::*;
    match condition {
        UserNotPresent | InternetNotAvailable | SessionDisconnected => {
            (opposite(condition).unwrap_or(condition), !value)
        }
        _ => (condition, value),
    }
}

/// The states a change of which means something to triggers.
const WATCHED: [SystemConditionType; 6] = [
    SystemConditionType::InternetAvailable,
    SystemConditionType::FreeNetworkAvailable,
    SystemConditionType::UserPresent,
    SystemConditionType::SessionConnected,
    SystemConditionType::OnAcPower,
    SystemConditionType::BatteryNotLow,
];

/// What triggers care about, before and after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    watched: [Option<bool>; 6],
    cost: Option<BackgroundWorkCostValue>,
}

#[derive(Debug, Default, Clone)]
pub struct States {
    /// Per stored state, the reading of each source that knows it.
    readings: HashMap<SystemConditionType, Vec<(Source, bool)>>,
}

impl States {
    /// Records a source's reading of a state (`None`: the source no longer knows it). Setting one
    /// half of a pair sets the other (INTERNET_NOT_AVAILABLE is the negation of INTERNET_AVAILABLE).
    pub(crate) fn report(
        &mut self,
        source: Source,
        condition: SystemConditionType,
        value: Option<bool>,
    ) {
        let (condition, value) = match value {
            Some(v) => {
                let (c, v) = stored(condition, v);
                (c, Some(v))
            }
            None => (stored(condition, false).0, None),
        };
        let readings = self.readings.entry(condition).or_default();
        readings.retain(|(s, _)| *s != source);
        if let Some(v) = value {
            readings.push((source, v));
            readings.sort_by_key(|r| std::cmp::Reverse(r.0)); // highest rank first
        }
    }

    /// The winning reading of a stored state.
    fn reading(&self, condition: SystemConditionType) -> Option<(Source, bool)> {
        self.readings
            .get(&condition)
            .and_then(|r| r.first())
            .copied()
    }

    /// `Some(value)` when some source knows it, `None` when unknown.
    pub fn get(&self, condition: SystemConditionType) -> Option<bool> {
        if condition == SystemConditionType::BackgroundWorkCostNotHigh
            && self.reading(condition).is_none()
        {
            return self
                .background_work_cost()
                .map(|c| c != BackgroundWorkCostValue::High);
        }
        let (stored_as, _) = stored(condition, true);
        let value = self.reading(stored_as)?.1;
        Some(if stored_as == condition {
            value
        } else {
            !value
        })
    }

    /// The source whose reading wins, if any knows the state.
    pub(crate) fn source(&self, condition: SystemConditionType) -> Option<Source> {
        if condition == SystemConditionType::BackgroundWorkCostNotHigh
            && self.reading(condition).is_none()
        {
            // Derived from power (and network): named after the power source.
            return self.reading(SystemConditionType::OnAcPower).map(|r| r.0);
        }
        self.reading(stored(condition, true).0).map(|r| r.0)
    }

    /// Whether a condition holds (unknown = does not hold).
    pub fn holds(&self, condition: SystemConditionType) -> bool {
        self.get(condition) == Some(true)
    }

    /// Windows' `BackgroundWorkCost`: `LOW` on AC power and a free network, `HIGH` when the battery
    /// is low, `MEDIUM` otherwise; unknown while the power state is unknown.
    pub fn background_work_cost(&self) -> Option<BackgroundWorkCostValue> {
        let ac = self.get(SystemConditionType::OnAcPower);
        let battery_ok = self.get(SystemConditionType::BatteryNotLow);
        let free = self.get(SystemConditionType::FreeNetworkAvailable);
        match (ac, battery_ok) {
            (_, Some(false)) => Some(BackgroundWorkCostValue::High),
            (Some(true), _) if free == Some(true) => Some(BackgroundWorkCostValue::Low),
            (None, None) => None,
            _ => Some(BackgroundWorkCostValue::Medium),
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            watched: WATCHED.map(|c| self.get(c)),
            cost: self.background_work_cost(),
        }
    }
}

impl Snapshot {
    /// The system triggers that the change from `self` to `after` means (SPEC §6): internet became
    /// available; the network changed; the user came or went; a session connected; the power
    /// state changed; the work cost changed.
    pub(crate) fn fires(&self, after: &Snapshot) -> Vec<SystemTriggerType> {
        use SystemTriggerType as T;
        let [net, free, present, session, ac, battery] = self.watched;
        let [net2, free2, present2, session2, ac2, battery2] = after.watched;
        let mut fires = Vec::new();
        let mut became = |before: Option<bool>, now: Option<bool>, value: bool, t: T| {
            if before != now && now == Some(value) {
                fires.push(t);
            }
        };
        became(net, net2, true, T::InternetAvailable);
        became(present, present2, true, T::UserPresent);
        became(present, present2, false, T::UserAway);
        became(session, session2, true, T::SessionConnected);
        if (net, free) != (net2, free2) {
            fires.push(T::NetworkStateChange);
        }
        if (ac, battery) != (ac2, battery2) {
            fires.push(T::PowerStateChange);
        }
        if self.cost != after.cost {
            fires.push(T::BackgroundWorkCostChange);
        }
        fires
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SystemConditionType::*;
    use SystemTriggerType as T;

    const SIM: Source = Source::Simulated;

    #[test]
    fn unknown_does_not_hold_and_pairs_mirror() {
        let mut s = States::default();
        assert!(!s.holds(InternetAvailable) && !s.holds(InternetNotAvailable));
        s.report(SIM, InternetAvailable, Some(true));
        assert!(s.holds(InternetAvailable) && !s.holds(InternetNotAvailable));
        s.report(SIM, UserNotPresent, Some(true));
        assert_eq!(s.get(UserPresent), Some(false));
        s.report(SIM, InternetNotAvailable, Some(true));
        assert!(!s.holds(InternetAvailable) && s.holds(InternetNotAvailable));
        s.report(SIM, InternetNotAvailable, None);
        assert_eq!(s.get(InternetAvailable), None, "forgotten: unknown again");
    }

    #[test]
    fn the_highest_ranked_source_that_knows_wins() {
        let mut s = States::default();
        s.report(Source::Netlink, InternetAvailable, Some(true));
        assert_eq!(s.source(InternetAvailable), Some(Source::Netlink));
        s.report(Source::NetworkManager, InternetAvailable, Some(false));
        assert_eq!(s.get(InternetAvailable), Some(false));
        assert_eq!(s.source(InternetNotAvailable), Some(Source::NetworkManager));
        // NetworkManager leaves the bus: netlink's reading shows through.
        s.report(Source::NetworkManager, InternetAvailable, None);
        assert_eq!(s.get(InternetAvailable), Some(true));
        assert_eq!(s.source(InternetAvailable), Some(Source::Netlink));
    }

    #[test]
    fn work_cost() {
        let mut s = States::default();
        assert_eq!(s.background_work_cost(), None);
        assert!(!s.holds(BackgroundWorkCostNotHigh));
        s.report(Source::Sysfs, OnAcPower, Some(true));
        assert_eq!(
            s.background_work_cost(),
            Some(BackgroundWorkCostValue::Medium)
        );
        assert_eq!(s.source(BackgroundWorkCostNotHigh), Some(Source::Sysfs));
        s.report(SIM, FreeNetworkAvailable, Some(true));
        assert_eq!(s.background_work_cost(), Some(BackgroundWorkCostValue::Low));
        s.report(Source::Sysfs, BatteryNotLow, Some(false));
        assert_eq!(
            s.background_work_cost(),
            Some(BackgroundWorkCostValue::High)
        );
        assert!(!s.holds(BackgroundWorkCostNotHigh));
        s.report(SIM, BackgroundWorkCostNotHigh, Some(true));
        assert!(
            s.holds(BackgroundWorkCostNotHigh),
            "an explicit report wins"
        );
    }

    #[test]
    fn what_a_change_means() {
        let mut s = States::default();
        let step = |s: &mut States, c, v| {
            let before = s.snapshot();
            s.report(Source::Simulated, c, v);
            before.fires(&s.snapshot())
        };
        assert_eq!(
            step(&mut s, InternetAvailable, Some(true)),
            [T::InternetAvailable, T::NetworkStateChange]
        );
        assert_eq!(step(&mut s, InternetAvailable, Some(true)), []);
        assert_eq!(
            step(&mut s, InternetNotAvailable, Some(true)),
            [T::NetworkStateChange]
        );
        assert_eq!(step(&mut s, UserPresent, Some(true)), [T::UserPresent]);
        assert_eq!(step(&mut s, UserNotPresent, Some(true)), [T::UserAway]);
        assert_eq!(step(&mut s, UserPresent, None), [], "unknown is no news");
        assert_eq!(
            step(&mut s, SessionConnected, Some(true)),
            [T::SessionConnected]
        );
        assert_eq!(step(&mut s, SessionDisconnected, Some(true)), []);
        assert_eq!(
            step(&mut s, OnAcPower, Some(false)),
            [T::PowerStateChange, T::BackgroundWorkCostChange]
        );
        assert_eq!(
            step(&mut s, BatteryNotLow, Some(true)),
            [T::PowerStateChange],
            "still MEDIUM"
        );
        assert_eq!(step(&mut s, StorageNotLow, Some(false)), []);
    }
}
