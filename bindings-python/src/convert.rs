//! Conversions at the boundary: Python values the core's types cannot hold become
//! `InvalidArgumentError`/`InvalidUtf8Error` naming the value; known enum values become the
//! `IntEnum` members of `btb._enums`.

use btb_core::{Error, ErrorKind};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDateTime, PyDelta, PyInt, PyModule, PyString, PyTzInfo};

use crate::errors::{invalid, raise};

/// A `str` as UTF-8. A str that has no UTF-8 form (lone surrogates) is `InvalidUtf8Error`.
pub(crate) fn utf8(value: &Bound<'_, PyString>, what: &str) -> PyResult<String> {
    match value.to_cow() {
        Ok(s) => Ok(s.into_owned()),
        Err(_) => {
            let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
            Err(raise(Error::new(
                ErrorKind::InvalidUtf8,
                format!("{what} {shown} is not valid UTF-8 (it contains a lone surrogate)"),
            )))
        }
    }
}

pub(crate) fn opt_utf8(
    value: Option<&Bound<'_, PyString>>,
    what: &str,
) -> PyResult<Option<String>> {
    value.map(|v| utf8(v, what)).transpose()
}

/// Every item of an iterable of `str` (a bare `str` is refused: it would be split into letters).
pub(crate) fn utf8_list(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a list of str, not a str"
        )));
    }
    value
        .try_iter()?
        .map(|item| utf8(item?.cast::<PyString>()?, what))
        .collect()
}

/// An `int` as `u32`; an int outside `0..=u32::MAX` is `InvalidArgumentError` naming it.
pub(crate) fn uint(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u32> {
    value.extract::<u32>().map_err(|e| {
        if value.is_instance_of::<PyInt>() {
            invalid(format!("{what} {value} is out of range 0..={}", u32::MAX))
        } else {
            e
        }
    })
}

/// The `btb._enums` member for a known value, else the plain int (core reports unknown values
/// at registration).
pub(crate) fn enum_or_int<'py>(
    py: Python<'py>,
    class: &str,
    value: u32,
    known: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if !known {
        return Ok(value.into_pyobject(py)?.into_any());
    }
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || py.import("btb._enums").map(Bound::unbind))?
        .bind(py)
        .getattr(class)?
        .call1((value,))
}

/// The Python `repr()` of a value, so that `__repr__`s read as Python (`'sync'`, `['timer']`).
pub(crate) fn py_repr<'py>(py: Python<'py>, value: impl IntoPyObject<'py>) -> PyResult<String> {
    Ok(value.into_bound_py_any(py)?.repr()?.to_string())
}

/// 1970-01-01T00:00:00Z as an aware `datetime`.
pub(crate) fn unix_epoch(py: Python<'_>) -> PyResult<&Bound<'_, PyDateTime>> {
    static EPOCH: PyOnceLock<Py<PyDateTime>> = PyOnceLock::new();
    Ok(EPOCH
        .get_or_try_init(py, || {
            let utc = PyTzInfo::utc(py)?;
            PyResult::Ok(PyDateTime::new(py, 1970, 1, 1, 0, 0, 0, 0, Some(&utc))?.unbind())
        })?
        .bind(py))
}

/// Milliseconds since the Unix epoch as an aware UTC `datetime`.
pub(crate) fn datetime_from_ms(py: Python<'_>, ms: i64) -> PyResult<Bound<'_, PyAny>> {
    let rest = ms.rem_euclid(86_400_000);
    let days = i32::try_from(ms.div_euclid(86_400_000))?;
    let delta = PyDelta::new(
        py,
        days,
        (rest / 1000) as i32,
        ((rest % 1000) * 1000) as i32,
        false,
    )?;
    unix_epoch(py)?.add(delta)
}

/// A known enum value as its `btb._enums` member (for values the core produced itself).
pub(crate) fn member<'py>(py: Python<'py>, class: &str, value: u32) -> PyResult<Bound<'py, PyAny>> {
    enum_or_int(py, class, value, true)
}
