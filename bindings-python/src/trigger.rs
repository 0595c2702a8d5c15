//! Triggers and conditions (SPEC §1). Each trigger class extends `IBackgroundTrigger`, which holds
//! the core value; enum-valued arguments take any int so that an unknown value is reported by
//! `register`, as the core validates there.

use btb_core::{CustomRecurrence, SystemConditionType, SystemTriggerType, Trigger};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::convert::{enum_or_int, py_repr, uint, utf8};
use crate::system::{System, request_trigger};

/// The common base of every trigger (WinRT `IBackgroundTrigger`); not constructible itself.
#[pyclass(frozen, subclass, module = "btb")]
pub struct IBackgroundTrigger {
    pub(crate) trigger: Trigger,
}

impl IBackgroundTrigger {
    /// A Python object of the right class for a core trigger.
    pub(crate) fn to_object<'py>(
        py: Python<'py>,
        trigger: &Trigger,
    ) -> PyResult<Bound<'py, PyAny>> {
        let base = PyClassInitializer::from(IBackgroundTrigger {
            trigger: trigger.clone(),
        });
        let object = match trigger {
            Trigger::Time { .. } => Bound::new(py, base.add_subclass(TimeTrigger))?.into_any(),
            Trigger::Maintenance { .. } => {
                Bound::new(py, base.add_subclass(MaintenanceTrigger))?.into_any()
            }
            Trigger::System { .. } => Bound::new(py, base.add_subclass(SystemTrigger))?.into_any(),
            Trigger::Application { .. } => {
                Bound::new(py, base.add_subclass(ApplicationTrigger))?.into_any()
            }
            Trigger::CustomEvent { .. } => {
                Bound::new(py, base.add_subclass(CustomSystemEventTrigger))?.into_any()
            }
            Trigger::Calendar { .. } => {
                Bound::new(py, base.add_subclass(CalendarTrigger))?.into_any()
            }
        };
        Ok(object)
    }
}

#[pymethods]
impl IBackgroundTrigger {
    fn __eq__(&self, other: &Self) -> bool {
        self.trigger == other.trigger
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(match &self.trigger {
            Trigger::Time {
                freshness_minutes,
                one_shot,
            } => format!(
                "TimeTrigger(freshness_time={freshness_minutes}, one_shot={})",
                py_bool(*one_shot)
            ),
            Trigger::Maintenance {
                freshness_minutes,
                one_shot,
            } => format!(
                "MaintenanceTrigger(freshness_time={freshness_minutes}, one_shot={})",
                py_bool(*one_shot)
            ),
            Trigger::System {
                trigger_type,
                one_shot,
            } => format!(
                "SystemTrigger({}, one_shot={})",
                system_trigger_type(py, *trigger_type)?.repr()?,
                py_bool(*one_shot)
            ),
            Trigger::Application { .. } => "ApplicationTrigger()".to_owned(),
            Trigger::CustomEvent {
                trigger_id,
                recurrence,
            } => format!(
                "CustomSystemEventTrigger({}, {})",
                py_repr(py, trigger_id)?,
                recurrence_value(py, *recurrence)?.repr()?
            ),
            Trigger::Calendar { expression } => {
                format!("CalendarTrigger({})", py_repr(py, expression)?)
            }
        })
    }
}

fn py_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

fn system_trigger_type(py: Python<'_>, value: u32) -> PyResult<Bound<'_, PyAny>> {
    enum_or_int(
        py,
        "SystemTriggerType",
        value,
        SystemTriggerType::from_u32(value).is_ok(),
    )
}

fn recurrence_value(py: Python<'_>, value: u32) -> PyResult<Bound<'_, PyAny>> {
    enum_or_int(
        py,
        "CustomSystemEventTriggerRecurrence",
        value,
        CustomRecurrence::from_u32(value).is_ok(),
    )
}

fn base<'a, T: pyo3::PyClass<BaseType = IBackgroundTrigger>>(slf: &'a Bound<'_, T>) -> &'a Trigger {
    &slf.as_super().get().trigger
}

fn freshness(trigger: &Trigger) -> u32 {
    trigger.freshness_minutes().unwrap_or_default()
}

/// `TimeTrigger(freshness_time, one_shot)`: due `freshness_time` minutes after registration.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct TimeTrigger;

#[pymethods]
impl TimeTrigger {
    #[new]
    #[pyo3(signature = (freshness_time, one_shot = false))]
    fn new(
        freshness_time: &Bound<'_, PyAny>,
        one_shot: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let freshness_minutes = uint(freshness_time, "time trigger freshness_time")?;
        Ok(PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::Time {
                freshness_minutes,
                one_shot,
            },
        })
        .add_subclass(TimeTrigger))
    }

    /// Minutes until due (WinRT `FreshnessTime`).
    #[getter]
    fn freshness_time(slf: &Bound<'_, Self>) -> u32 {
        freshness(base(slf))
    }

    #[getter]
    fn one_shot(slf: &Bound<'_, Self>) -> bool {
        base(slf).one_shot()
    }
}

/// `MaintenanceTrigger(freshness_time, one_shot)`: like a time trigger, but only on AC power.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct MaintenanceTrigger;

#[pymethods]
impl MaintenanceTrigger {
    #[new]
    #[pyo3(signature = (freshness_time, one_shot = false))]
    fn new(
        freshness_time: &Bound<'_, PyAny>,
        one_shot: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let freshness_minutes = uint(freshness_time, "maintenance trigger freshness_time")?;
        Ok(PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::Maintenance {
                freshness_minutes,
                one_shot,
            },
        })
        .add_subclass(MaintenanceTrigger))
    }

    #[getter]
    fn freshness_time(slf: &Bound<'_, Self>) -> u32 {
        freshness(base(slf))
    }

    #[getter]
    fn one_shot(slf: &Bound<'_, Self>) -> bool {
        base(slf).one_shot()
    }
}

/// `SystemTrigger(trigger_type, one_shot)`: fires when the platform reports that event.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct SystemTrigger;

#[pymethods]
impl SystemTrigger {
    #[new]
    #[pyo3(signature = (trigger_type, one_shot = false))]
    fn new(trigger_type: &Bound<'_, PyAny>, one_shot: bool) -> PyResult<PyClassInitializer<Self>> {
        let trigger_type = uint(trigger_type, "system trigger type")?;
        Ok(PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::System {
                trigger_type,
                one_shot,
            },
        })
        .add_subclass(SystemTrigger))
    }

    /// A `SystemTriggerType` (or the int given, when it is not a known type).
    #[getter]
    fn trigger_type<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        match base(slf) {
            Trigger::System { trigger_type, .. } => system_trigger_type(slf.py(), *trigger_type),
            _ => unreachable!("a SystemTrigger holds a system trigger"),
        }
    }

    #[getter]
    fn one_shot(slf: &Bound<'_, Self>) -> bool {
        base(slf).one_shot()
    }
}

/// `ApplicationTrigger()`: fires when the app requests it.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct ApplicationTrigger;

#[pymethods]
impl ApplicationTrigger {
    #[new]
    fn new() -> PyClassInitializer<Self> {
        PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::application(),
        })
        .add_subclass(ApplicationTrigger)
    }

    /// Fires the tasks registered with this trigger (WinRT `RequestAsync`), in `system` (default:
    /// the default system). `arguments` (a dict of JSON values) become each instance's
    /// `trigger_details`. Returns an `ApplicationTriggerResult`: `ALLOWED`, `CURRENTLY_RUNNING`
    /// (a run is in progress; nothing is queued), `DISABLED_BY_POLICY`, or `UNKNOWN_ERROR` (no
    /// task is registered with this trigger).
    #[pyo3(signature = (arguments = None, system = None))]
    fn request<'py>(
        slf: &Bound<'py, Self>,
        arguments: Option<&Bound<'py, PyAny>>,
        system: Option<Py<System>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        request_trigger(slf.py(), base(slf), arguments, system, false)
    }

    /// `await trigger.request_async(arguments)`: `request` on the running event loop's default
    /// executor. The arguments are checked at the call.
    #[pyo3(signature = (arguments = None, system = None))]
    fn request_async<'py>(
        slf: &Bound<'py, Self>,
        arguments: Option<&Bound<'py, PyAny>>,
        system: Option<Py<System>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        request_trigger(slf.py(), base(slf), arguments, system, true)
    }
}

/// `CustomSystemEventTrigger(trigger_id, recurrence)`: fires when any process of the user
/// signals `trigger_id`.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct CustomSystemEventTrigger;

#[pymethods]
impl CustomSystemEventTrigger {
    #[new]
    fn new(
        trigger_id: &Bound<'_, PyString>,
        recurrence: &Bound<'_, PyAny>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let trigger_id = utf8(trigger_id, "custom event trigger id")?;
        let recurrence = uint(recurrence, "custom system event trigger recurrence")?;
        Ok(PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::CustomEvent {
                trigger_id,
                recurrence,
            },
        })
        .add_subclass(CustomSystemEventTrigger))
    }

    #[getter]
    fn trigger_id(slf: &Bound<'_, Self>) -> String {
        match base(slf) {
            Trigger::CustomEvent { trigger_id, .. } => trigger_id.clone(),
            _ => unreachable!("a CustomSystemEventTrigger holds a custom event trigger"),
        }
    }

    /// A `CustomSystemEventTriggerRecurrence` (or the int given, when unknown).
    #[getter]
    fn recurrence<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        match base(slf) {
            Trigger::CustomEvent { recurrence, .. } => recurrence_value(slf.py(), *recurrence),
            _ => unreachable!("a CustomSystemEventTrigger holds a custom event trigger"),
        }
    }
}

/// `CalendarTrigger(expression)` (beyond Windows): a systemd `OnCalendar`-style expression.
#[pyclass(frozen, extends = IBackgroundTrigger, module = "btb")]
pub struct CalendarTrigger;

#[pymethods]
impl CalendarTrigger {
    #[new]
    fn new(expression: &Bound<'_, PyString>) -> PyResult<PyClassInitializer<Self>> {
        let expression = utf8(expression, "calendar expression")?;
        Ok(PyClassInitializer::from(IBackgroundTrigger {
            trigger: Trigger::Calendar { expression },
        })
        .add_subclass(CalendarTrigger))
    }

    #[getter]
    fn expression(slf: &Bound<'_, Self>) -> String {
        match base(slf) {
            Trigger::Calendar { expression } => expression.clone(),
            _ => unreachable!("a CalendarTrigger holds a calendar trigger"),
        }
    }

    /// The expression in systemd's normalized form (what `systemd-analyze calendar` prints as
    /// "Normalized form"); raises `InvalidArgumentError` naming the offending part when the
    /// expression does not parse (as registering it would).
    #[getter]
    fn normalized(slf: &Bound<'_, Self>) -> PyResult<String> {
        match base(slf) {
            Trigger::Calendar { expression } => btb_core::calendar::CalendarSpec::parse(expression)
                .map(|spec| spec.normalized())
                .map_err(|e| crate::errors::to_py_err(slf.py(), &e)),
            _ => unreachable!("a CalendarTrigger holds a calendar trigger"),
        }
    }
}

/// `SystemCondition(condition_type)`: a state that must hold for the task to start.
#[pyclass(frozen, eq, hash, module = "btb")]
#[derive(PartialEq, Eq, Hash)]
pub struct SystemCondition {
    pub(crate) condition_type: u32,
}

#[pymethods]
impl SystemCondition {
    #[new]
    fn new(condition_type: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(SystemCondition {
            condition_type: uint(condition_type, "system condition type")?,
        })
    }

    /// A `SystemConditionType` (or the int given, when unknown).
    #[getter]
    fn condition_type<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        condition_value(py, self.condition_type)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "SystemCondition({})",
            condition_value(py, self.condition_type)?.repr()?
        ))
    }
}

pub(crate) fn condition_value(py: Python<'_>, value: u32) -> PyResult<Bound<'_, PyAny>> {
    enum_or_int(
        py,
        "SystemConditionType",
        value,
        SystemConditionType::from_u32(value).is_ok(),
    )
}
