//! The state of the machine as conditions see it. The simulated source holds what the app sets;
//! the Linux sources (next release) feed the same table. A state nobody has reported is unknown,
//! and an unknown state does not hold (SPEC §6).

use std::collections::HashMap;

use crate::model::{BackgroundWorkCostValue, SystemConditionType};

#[derive(Debug, Default, Clone)]
pub struct States {
    known: HashMap<SystemConditionType, bool>,
}

impl States {
    /// Records a state; returns whether it changed.
    pub fn set(&mut self, condition: SystemConditionType, value: bool) -> bool {
        self.known.insert(condition, value) != Some(value)
    }

    /// `Some(value)` when reported, `None` when unknown.
    pub fn get(&self, condition: SystemConditionType) -> Option<bool> {
        use SystemConditionType::*;
        if let Some(v) = self.known.get(&condition) {
            return Some(*v);
        }
        // Each half of a pair is the negation of the other.
        let opposite = match condition {
            UserPresent => UserNotPresent,
            UserNotPresent => UserPresent,
            InternetAvailable => InternetNotAvailable,
            InternetNotAvailable => InternetAvailable,
            SessionConnected => SessionDisconnected,
            SessionDisconnected => SessionConnected,
            BackgroundWorkCostNotHigh => {
                return self
                    .background_work_cost()
                    .map(|c| c != BackgroundWorkCostValue::High);
            }
            _ => return None,
        };
        self.known.get(&opposite).map(|v| !v)
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
