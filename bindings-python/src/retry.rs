//! `btb.RetryPolicy` (SPEC §12): when and how often a run is tried again, after WorkManager's
//! backoff criteria (`setBackoffCriteria`, `BackoffPolicy`). Beyond Windows.

use std::time::Duration;

use btb_core::{BackoffPolicy, RetryPolicy as CoreRetryPolicy};
use pyo3::prelude::*;
use pyo3::types::{PyDelta, PyDeltaAccess, PyFloat, PyInt};

use crate::convert::{member, uint};
use crate::errors::{OrRaise, invalid};

/// A retry policy (WorkManager's backoff criteria): the delay after attempt n is
/// `initial_delay·2^(n−1)` (`EXPONENTIAL`) or `initial_delay·n` (`LINEAR`), capped at `max_delay`,
/// moved at random by up to `jitter` of itself. Immutable. What the arguments' types cannot hold
/// (an unknown backoff, a negative delay, a jitter outside 0–1) is refused here; the bounds of
/// SPEC §12 (delays 10 s – 5 h, `max_delay` not below `initial_delay`, `max_attempts` ≥ 1) are
/// checked by `register`.
#[pyclass(frozen, eq, module = "btb")]
#[derive(PartialEq)]
pub struct RetryPolicy {
    pub(crate) inner: CoreRetryPolicy,
}

#[pymethods]
impl RetryPolicy {
    #[new]
    #[pyo3(signature = (
        backoff = None,
        initial_delay = None,
        max_delay = None,
        max_attempts = None,
        retry_on_failure = false,
        jitter = 0.0,
    ))]
    fn new(
        backoff: Option<&Bound<'_, PyAny>>,
        initial_delay: Option<&Bound<'_, PyAny>>,
        max_delay: Option<&Bound<'_, PyAny>>,
        max_attempts: Option<&Bound<'_, PyAny>>,
        retry_on_failure: bool,
        jitter: f64,
    ) -> PyResult<Self> {
        let mut inner = CoreRetryPolicy::default();
        if let Some(backoff) = backoff {
            inner.backoff = BackoffPolicy::from_u32(uint(backoff, "backoff policy")?).or_raise()?;
        }
        if let Some(delay) = initial_delay {
            inner.initial_delay_ms = delay_ms(delay, "retry policy initial_delay")?;
        }
        if let Some(delay) = max_delay {
            inner.max_delay_ms = delay_ms(delay, "retry policy max_delay")?;
        }
        if let Some(n) = max_attempts {
            inner.max_attempts = Some(uint(n, "retry policy max_attempts")?);
        }
        inner.retry_on_failure = retry_on_failure;
        if !(0.0..=1.0).contains(&jitter) {
            return Err(invalid(format!(
                "retry policy: jitter {jitter} is outside 0–1 (a fraction of the delay)"
            )));
        }
        inner.jitter_permille = (jitter * 1000.0).round() as u32;
        Ok(RetryPolicy { inner })
    }

    /// A `BackoffPolicy` (WorkManager's `BackoffPolicy`).
    #[getter]
    fn backoff<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        member(py, "BackoffPolicy", self.inner.backoff as u32)
    }

    /// The delay after the first attempt (a `timedelta`).
    #[getter]
    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.inner.initial_delay_ms)
    }

    /// No delay is longer (a `timedelta`).
    #[getter]
    fn max_delay(&self) -> Duration {
        Duration::from_millis(self.inner.max_delay_ms)
    }

    /// The most attempts in all, the first included; `None`: no limit.
    #[getter]
    fn max_attempts(&self) -> Option<u32> {
        self.inner.max_attempts
    }

    /// Whether failed runs are retried too, not only those that ask or are cut off.
    #[getter]
    fn retry_on_failure(&self) -> bool {
        self.inner.retry_on_failure
    }

    /// Each delay moves at random by up to this fraction of it (0–1).
    #[getter]
    fn jitter(&self) -> f64 {
        f64::from(self.inner.jitter_permille) / 1000.0
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "RetryPolicy(backoff={}, initial_delay={}, max_delay={}, max_attempts={}, \
             retry_on_failure={}, jitter={:?})",
            self.backoff(py)?.repr()?,
            self.initial_delay().into_pyobject(py)?.repr()?,
            self.max_delay().into_pyobject(py)?.repr()?,
            self.inner
                .max_attempts
                .map_or_else(|| "None".to_owned(), |n| n.to_string()),
            if self.inner.retry_on_failure {
                "True"
            } else {
                "False"
            },
            self.jitter()
        ))
    }
}

/// A `timedelta` or a number of seconds as whole milliseconds, not negative.
/// The arguments of `request_retry(after=None, message=None)`, in-process and in a host.
pub(crate) fn retry_request(
    after: Option<&Bound<'_, PyAny>>,
    message: Option<&Bound<'_, pyo3::types::PyString>>,
) -> PyResult<(Option<std::time::Duration>, Option<String>)> {
    let after = after
        .map(|a| delay_ms(a, "request_retry after").map(std::time::Duration::from_millis))
        .transpose()?;
    Ok((after, crate::convert::opt_utf8(message, "retry message")?))
}

pub(crate) fn delay_ms(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    let ms = if let Ok(delta) = value.cast::<PyDelta>() {
        i64::from(delta.get_days()) * 86_400_000
            + i64::from(delta.get_seconds()) * 1000
            + i64::from(delta.get_microseconds()) / 1000
    } else if value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
        let seconds: f64 = value.extract()?;
        let ms = (seconds * 1000.0).round();
        if !ms.is_finite() || ms.abs() > 9.0e15 {
            return Err(invalid(format!(
                "{what} {seconds} is not a usable number of seconds"
            )));
        }
        ms as i64
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a timedelta or a number of seconds, not {}",
            value.get_type().name()?
        )));
    };
    u64::try_from(ms).map_err(|_| {
        invalid(format!(
            "{what} {} is negative",
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}
