//! The state of the machine as conditions see it. The simulated source holds what the app sets;
//! the Linux sources (next release) feed the same table. A state nobody has reported is unknown,
//! and an unknown state does not hold (SPEC §6).

use std::collections::HashMap;

use crate::model::{BackgroundWorkCostValue, SystemConditionType};

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

#[derive(Debug, Default, Clone)]
pub struct States {
    known: HashMap<SystemConditionType, bool>,
}

impl States {
    /// Records a state (and so the opposite of its pair: INTERNET_AVAILABLE is the negation of
    /// INTERNET_NOT_AVAILABLE, and so on); returns whether it changed.
    pub fn set(&mut self, condition: SystemConditionType, value: bool) -> bool {
        let before = self.get(condition);
        if let Some(opposite) = opposite(condition) {
            self.known.remove(&opposite);
        }
        self.known.insert(condition, value);
        before != Some(value)
    }

    /// `Some(value)` when reported, `None` when unknown.
    pub fn get(&self, condition: SystemConditionType) -> Option<bool> {
        use SystemConditionType::*;
        if let Some(v) = self.known.get(&condition) {
            return Some(*v);
        }
        if condition == BackgroundWorkCostNotHigh {
            return self
                .background_work_cost()
                .map(|c| c != BackgroundWorkCostValue::High);
        }
        // Each half of a pair is the negation of the other (only one half is ever stored).
        opposite(condition).and_then(|o| self.known.get(&o).map(|v| !v))
    }

    /// Whether a condition holds (unknown = does not hold).
    pub fn holds(&self, condition: SystemConditionType) -> bool {
        self.get(condition) == Some(true)
    }

    /// Windows' `BackgroundWorkCost`: `LOW` on AC power and a free network, `HIGH` when the battery
    /// is low, `MEDIUM` otherwise; unknown while the power state is unknown.
    pub fn background_work_cost(&self) -> Option<BackgroundWorkCostValue> {
        let ac = self.known.get(&SystemConditionType::OnAcPower).copied();
        let battery_ok = self.known.get(&SystemConditionType::BatteryNotLow).copied();
        let free = self
            .known
            .get(&SystemConditionType::FreeNetworkAvailable)
            .copied();
        match (ac, battery_ok) {
            (_, Some(false)) => Some(BackgroundWorkCostValue::High),
            (Some(true), _) if free == Some(true) => Some(BackgroundWorkCostValue::Low),
            (None, None) => None,
            _ => Some(BackgroundWorkCostValue::Medium),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SystemConditionType::*;

    #[test]
    fn unknown_does_not_hold_and_pairs_mirror() {
        let mut s = States::default();
        assert!(!s.holds(InternetAvailable) && !s.holds(InternetNotAvailable));
        assert!(s.set(InternetAvailable, true));
        assert!(!s.set(InternetAvailable, true));
        assert!(s.holds(InternetAvailable) && !s.holds(InternetNotAvailable));
        s.set(UserNotPresent, true);
        assert!(!s.holds(UserPresent));
        // Setting one half overrides the other: never both true.
        s.set(InternetNotAvailable, true);
        assert!(!s.holds(InternetAvailable) && s.holds(InternetNotAvailable));
        assert!(s.set(InternetAvailable, true));
        assert!(s.holds(InternetAvailable) && !s.holds(InternetNotAvailable));
        assert!(
            !s.set(InternetNotAvailable, false),
            "already false: no change"
        );
    }

    #[test]
    fn work_cost() {
        let mut s = States::default();
        assert_eq!(s.background_work_cost(), None);
        assert!(!s.holds(BackgroundWorkCostNotHigh));
        s.set(OnAcPower, true);
        assert_eq!(
            s.background_work_cost(),
            Some(BackgroundWorkCostValue::Medium)
        );
        s.set(FreeNetworkAvailable, true);
        assert_eq!(s.background_work_cost(), Some(BackgroundWorkCostValue::Low));
        s.set(BatteryNotLow, false);
        assert_eq!(
            s.background_work_cost(),
            Some(BackgroundWorkCostValue::High)
        );
        assert!(!s.holds(BackgroundWorkCostNotHigh));
        s.set(BackgroundWorkCostNotHigh, true);
        assert!(
            s.holds(BackgroundWorkCostNotHigh),
            "an explicit report wins"
        );
    }
}
