//! `btb.Policy` (the system-wide knobs of SPEC §2–§4) and `btb.ManualClock`.

use btb_core::{Durability, TriggerKind};
use pyo3::prelude::*;
use pyo3::types::{
    PyDateTime, PyDelta, PyDeltaAccess, PyDict, PyFloat, PyInt, PyString, PyTzInfoAccess,
};

use crate::convert::{datetime_from_ms, enum_or_int, uint, unix_epoch, utf8};
use crate::errors::{OrRaise, invalid};

/// The policy a system is opened with. Every argument is optional and keyword-only; omitted ones
/// keep the core defaults (Windows' values).
#[pyclass(frozen, eq, module = "btb")]
#[derive(PartialEq)]
pub struct Policy {
    pub(crate) inner: btb_core::Policy,
}

#[pymethods]
impl Policy {
    #[new]
    #[pyo3(signature = (
        *,
        min_freshness_minutes = None,
        timer_window_seconds = None,
        grace_seconds = None,
        max_concurrent = None,
        durability = None,
        time_limits = None,
        history_limit = None,
        allow_application_triggers = None,
        storage_low_percent = None,
        activation_timeout = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        min_freshness_minutes: Option<&Bound<'_, PyAny>>,
        timer_window_seconds: Option<&Bound<'_, PyAny>>,
        grace_seconds: Option<f64>,
        max_concurrent: Option<&Bound<'_, PyAny>>,
        durability: Option<&Bound<'_, PyAny>>,
        time_limits: Option<&Bound<'_, PyAny>>,
        history_limit: Option<&Bound<'_, PyAny>>,
        allow_application_triggers: Option<bool>,
        storage_low_percent: Option<&Bound<'_, PyAny>>,
        activation_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut policy = btb_core::Policy::default();
        if let Some(v) = min_freshness_minutes {
            policy.min_freshness_minutes = uint(v, "policy min_freshness_minutes")?;
        }
        if let Some(v) = timer_window_seconds {
            policy.timer_window_seconds = uint(v, "policy timer_window_seconds")?;
        }
        if let Some(seconds) = grace_seconds {
            let ms = milliseconds(seconds, "policy grace_seconds")?;
            policy.grace_ms = u32::try_from(ms)
                .map_err(|_| invalid(format!("policy grace_seconds {seconds} is out of range")))?;
        }
        if let Some(v) = max_concurrent {
            policy.max_concurrent = uint(v, "policy max_concurrent")?;
            // Omitted (None) means one per CPU; an explicit 0 is a mistake here.
            if policy.max_concurrent == 0 {
                return Err(invalid(
                    "policy max_concurrent 0 is out of range 1..4096 (omit it for one per CPU)"
                        .to_owned(),
                ));
            }
        }
        if let Some(v) = durability {
            policy.durability = durability_of(v)?;
        }
        if let Some(limits) = time_limits {
            for item in limits.call_method0("items")?.try_iter()? {
                let (kind, seconds): (Bound<'_, PyString>, Bound<'_, PyAny>) = item?.extract()?;
                let kind = utf8(&kind, "trigger kind")?;
                let known = TriggerKind::ALL
                    .iter()
                    .find(|k| k.name().eq_ignore_ascii_case(&kind))
                    .ok_or_else(|| {
                        invalid(format!(
                            "policy time_limits: unknown trigger kind {kind:?} (known: {})",
                            kind_names().join(", ")
                        ))
                    })?;
                policy.set_time_limit(
                    *known,
                    uint(&seconds, &format!("policy time limit for {kind:?}"))?,
                );
            }
        }
        if let Some(v) = history_limit {
            policy.history_limit = uint(v, "policy history_limit")?;
        }
        if let Some(v) = allow_application_triggers {
            policy.allow_application_triggers = v;
        }
        if let Some(v) = storage_low_percent {
            let percent = uint(v, "policy storage_low_percent")?;
            policy.storage_low_percent = u8::try_from(percent).unwrap_or(u8::MAX);
        }
        if let Some(v) = activation_timeout {
            let ms = crate::retry::delay_ms(v, "policy activation_timeout")?;
            policy.activation_timeout_ms = u32::try_from(ms).map_err(|_| {
                invalid(format!(
                    "policy activation_timeout {} is out of range (at most {} days)",
                    v.repr().map(|r| r.to_string()).unwrap_or_default(),
                    u32::MAX / 86_400_000
                ))
            })?;
        }
        policy.validate().or_raise()?;
        Ok(Policy { inner: policy })
    }

    #[getter]
    fn min_freshness_minutes(&self) -> u32 {
        self.inner.min_freshness_minutes
    }

    #[getter]
    fn timer_window_seconds(&self) -> u32 {
        self.inner.timer_window_seconds
    }

    #[getter]
    fn grace_seconds(&self) -> f64 {
        f64::from(self.inner.grace_ms) / 1000.0
    }

    #[getter]
    fn max_concurrent(&self) -> u32 {
        self.inner.pool_size() // the default, 0, counted: one per CPU
    }

    /// A `btb.Durability`.
    #[getter]
    fn durability<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        enum_or_int(py, "Durability", self.inner.durability as u32, true)
    }

    /// Run-time limit in seconds per trigger kind (`"time"`, `"maintenance"`, `"system"`,
    /// `"application"`, `"custom_event"`, `"calendar"`); 0 = none.
    #[getter]
    fn time_limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for kind in TriggerKind::ALL {
            dict.set_item(
                kind.name().to_ascii_lowercase(),
                self.inner.time_limit(*kind),
            )?;
        }
        Ok(dict)
    }

    #[getter]
    fn history_limit(&self) -> u32 {
        self.inner.history_limit
    }

    /// False makes `request` answer `DISABLED_BY_POLICY`.
    #[getter]
    fn allow_application_triggers(&self) -> bool {
        self.inner.allow_application_triggers
    }

    /// `STORAGE_NOT_LOW` holds while more than this percentage of the store's file system is
    /// available.
    #[getter]
    fn storage_low_percent(&self) -> u8 {
        self.inner.storage_low_percent
    }

    /// How long a run waits for the app that the manifest's `activate` started to offer its
    /// handler before it fails, saying so (a `timedelta`; default 30 s; SPEC §12).
    #[getter]
    fn activation_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.inner.activation_timeout_ms))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Policy(min_freshness_minutes={}, timer_window_seconds={}, grace_seconds={:?}, \
             max_concurrent={}, durability={}, time_limits={}, history_limit={}, \
             allow_application_triggers={}, activation_timeout={})",
            self.inner.min_freshness_minutes,
            self.inner.timer_window_seconds,
            self.grace_seconds(),
            self.max_concurrent(),
            self.durability(py)?.repr()?,
            self.time_limits(py)?.repr()?,
            self.inner.history_limit,
            if self.inner.allow_application_triggers {
                "True"
            } else {
                "False"
            },
            self.activation_timeout().into_pyobject(py)?.repr()?
        ))
    }
}

fn kind_names() -> Vec<String> {
    TriggerKind::ALL
        .iter()
        .map(|k| k.name().to_ascii_lowercase())
        .collect()
}

/// `"full"` / `"normal"` (any case) or a `btb.Durability` / int.
fn durability_of(value: &Bound<'_, PyAny>) -> PyResult<Durability> {
    if let Ok(name) = value.cast::<PyString>() {
        return match utf8(name, "durability")?.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(invalid(format!(
                "unknown durability {other:?} (\"full\" or \"normal\")"
            ))),
        };
    }
    Durability::from_u32(uint(value, "durability")?).or_raise()
}

/// Seconds (int or float) as whole milliseconds; NaN and infinities are refused.
fn milliseconds(seconds: f64, what: &str) -> PyResult<i64> {
    let ms = (seconds * 1000.0).round();
    if !ms.is_finite() || ms.abs() > 9.0e15 {
        return Err(invalid(format!(
            "{what} {seconds} is not a usable number of seconds"
        )));
    }
    Ok(ms as i64)
}

fn delta_ms(delta: &Bound<'_, PyDelta>) -> i64 {
    i64::from(delta.get_days()) * 86_400_000
        + i64::from(delta.get_seconds()) * 1000
        + i64::from(delta.get_microseconds()) / 1000
}

/// A clock that moves only by `advance` (tests, simulations). Systems opened with it share it.
#[pyclass(frozen, module = "btb")]
pub struct ManualClock {
    pub(crate) inner: btb_core::ManualClock,
}

#[pymethods]
impl ManualClock {
    /// `start`: an aware `datetime`, or seconds since the Unix epoch.
    #[new]
    fn new(start: &Bound<'_, PyAny>) -> PyResult<Self> {
        let start_ms = if let Ok(instant) = start.cast::<PyDateTime>() {
            if instant.get_tzinfo().is_none() {
                return Err(invalid(format!(
                    "ManualClock start {} is a naive datetime: give it a tzinfo (e.g. datetime.timezone.utc)",
                    instant.repr()?
                )));
            }
            delta_ms(instant.sub(unix_epoch(start.py())?)?.cast::<PyDelta>()?)
        } else if start.is_instance_of::<PyInt>() || start.is_instance_of::<PyFloat>() {
            milliseconds(start.extract()?, "ManualClock start")?
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "ManualClock start must be an aware datetime or seconds since the epoch, not {}",
                start.get_type().name()?
            )));
        };
        Ok(ManualClock {
            inner: btb_core::ManualClock::new(start_ms).or_raise()?,
        })
    }

    /// The clock's time, an aware UTC `datetime`.
    #[getter]
    fn now<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_from_ms(py, self.inner.now_ms())
    }

    /// Moves the clock forward by a `timedelta` or a number of seconds, and wakes the systems
    /// using it: what became due runs (`System.wait_idle` waits for it).
    fn advance(&self, py: Python<'_>, delta: &Bound<'_, PyAny>) -> PyResult<()> {
        let ms = if let Ok(delta) = delta.cast::<PyDelta>() {
            delta_ms(delta)
        } else {
            milliseconds(delta.extract()?, "ManualClock.advance amount")?
        };
        // Detached: waking a system takes its lock, and a task may hold the interpreter.
        py.detach(|| self.inner.advance_ms(ms)).or_raise()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("ManualClock({})", self.now(py)?.repr()?))
    }
}
