//! `btb._btb`: the Python binding of btb-core (SPEC §9). It calls the core directly and adds no
//! logic of its own beyond converting values at the boundary; the pure-Python parts of the
//! package (`IntEnum`s, the exception classes, the default-system class attributes and the exit
//! hook) live in `python/btb/`.

mod aio;
mod builder;
mod convert;
mod errors;
mod host;
mod json;
mod manifest;
mod policy;
mod retry;
mod runtime;
mod system;
mod trigger;

use pyo3::prelude::*;

#[pymodule]
mod _btb {
    use btb_core::{
        ApplicationTriggerResult, BackgroundWorkCostValue, BackoffPolicy, CancellationReason,
        CustomRecurrence, Durability, ErrorKind, NamePolicy, SystemConditionType,
        SystemTriggerType, TaskOutcome,
    };
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    #[pymodule_export]
    use crate::builder::BackgroundTaskBuilder;
    #[pymodule_export]
    use crate::host::connect as _host_connect;
    #[pymodule_export]
    use crate::manifest::{Manifest, TaskDeclaration};
    #[pymodule_export]
    use crate::policy::{ManualClock, Policy};
    #[pymodule_export]
    use crate::retry::RetryPolicy;
    #[pymodule_export]
    use crate::runtime::{
        _wait_python_idle, BackgroundActivatedEventArgs, BackgroundTaskCompletedEventArgs,
        BackgroundTaskDeferral, BackgroundTaskInstance, BackgroundTaskProgressEventArgs, RunRecord,
    };
    #[pymodule_export]
    use crate::system::{
        _ctrl_c_while_closing, _interrupted, BackgroundTaskRegistration,
        BackgroundTaskRegistrationGroup, System, py_default_system, set_default_system,
        signal_event,
    };
    #[pymodule_export]
    use crate::trigger::{
        ApplicationTrigger, CalendarTrigger, CustomSystemEventTrigger, IBackgroundTrigger,
        MaintenanceTrigger, SystemCondition, SystemTrigger, TimeTrigger,
    };

    /// Every core enum as `name → value`, keyed by the Python class name: the tests check
    /// `btb._enums` against it.
    fn enum_values(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        macro_rules! table {
            ($ty:ty) => {
                <$ty>::ALL
                    .iter()
                    .map(|&e| (e.name(), e as u32))
                    .collect::<Vec<_>>()
            };
        }
        let dict = PyDict::new(py);
        dict.set_item("SystemTriggerType", table!(SystemTriggerType))?;
        dict.set_item("SystemConditionType", table!(SystemConditionType))?;
        dict.set_item(
            "BackgroundTaskCancellationReason",
            table!(CancellationReason),
        )?;
        dict.set_item("ApplicationTriggerResult", table!(ApplicationTriggerResult))?;
        dict.set_item(
            "CustomSystemEventTriggerRecurrence",
            table!(CustomRecurrence),
        )?;
        dict.set_item("BackgroundWorkCostValue", table!(BackgroundWorkCostValue))?;
        dict.set_item("NamePolicy", table!(NamePolicy))?;
        dict.set_item("TaskOutcome", table!(TaskOutcome))?;
        dict.set_item("BackoffPolicy", table!(BackoffPolicy))?;
        dict.set_item(
            "Durability",
            vec![
                ("FULL", Durability::Full as u32),
                ("NORMAL", Durability::Normal as u32),
            ],
        )?;
        Ok(dict)
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", btb_core::VERSION)?;
        // The core logs through `log` (target "btb"): its records go to Python's `logging`,
        // logger "btb". If another extension installed a `log` logger first, they go there.
        let _ = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::Loggers)?.install();
        let errors: Vec<(u32, &str, &str)> = ErrorKind::ALL
            .iter()
            .map(|&k| (k.code(), k.name(), crate::errors::exception_name(k)))
            .collect();
        m.add("_ERROR_CLASSES", errors)?;
        m.add("_ENUM_VALUES", enum_values(m.py())?)?;
        Ok(())
    }
}
