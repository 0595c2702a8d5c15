//! Where the machine's state comes from (SPEC §6). One file per family of states; each reads the
//! current value (true, false, or unknown) from the real machine. The simulated source (states the
//! app sets, `source.rs`) replaces all of them in a system opened with `simulated`.
//!
//! So far: storage (`statvfs`, read on each decision). Network, power, presence and session, and
//! the time zone arrive with their event sources; until then they read unknown (which does not
//! hold) and their source is `unknown`.

pub(crate) mod storage;

use crate::model::SystemConditionType;

/// The name of what a condition's state is read from (`system.state_source`).
pub(crate) fn source_name(simulated: bool, condition: SystemConditionType) -> &'static str {
    if simulated {
        return "simulated";
    }
    match condition {
        SystemConditionType::StorageNotLow => storage::SOURCE,
        _ => "unknown",
    }
}
