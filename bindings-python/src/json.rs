//! Application trigger arguments and run outputs: a Python `dict` of JSON values ↔ the core's
//! JSON object.
//!
//! Converted by hand rather than through the `json` module: no text round trip on the request path,
//! and errors name the offending key.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::convert::utf8;
use crate::errors::invalid;

/// Nesting deeper than this is refused (it also stops reference cycles).
const MAX_DEPTH: usize = 128;

/// `None` → no arguments; a `dict` with `str` keys and JSON values → a JSON object. Anything else
/// is a `TypeError` (as `json.dumps` raises); values JSON cannot represent (NaN, infinities,
/// integers beyond 64 bits) are `InvalidArgumentError`.
pub(crate) fn arguments(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Value>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if !value.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "application trigger arguments must be a dict (or None), not {}",
            value.get_type().name()?
        )));
    }
    to_json(value, ARGUMENTS, "arguments", 0).map(Some)
}

const ARGUMENTS: &str = "application trigger arguments";

/// A run's output (SPEC §12): a `dict` with `str` keys and JSON values → a JSON object. Anything
/// but a dict (`None` included) is `InvalidArgumentError`, as the core refuses any JSON but an
/// object; values JSON cannot hold are `TypeError` (as `json.dumps` raises) or
/// `InvalidArgumentError` (NaN, infinities, integers beyond 64 bits). The 64 KiB bound is the
/// core's.
pub(crate) fn output(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if !value.is_instance_of::<PyDict>() {
        return Err(invalid(format!(
            "a run's output must be a dict (a JSON object), not {}",
            value.get_type().name()?
        )));
    }
    to_json(value, "a run's output", "output", 0)
}

fn to_json(value: &Bound<'_, PyAny>, what: &str, path: &str, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!(
            "{what}: nested more than {MAX_DEPTH} levels deep at {path}"
        )));
    }
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(utf8(s, path)?));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = value.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        return Err(invalid(format!(
            "{path} = {value} does not fit in 64 bits (JSON numbers in btb are 64-bit)"
        )));
    }
    if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract()?;
        return Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            invalid(format!(
                "{path} = {f} is not a JSON number (NaN and infinities are not allowed)"
            ))
        });
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, item) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "keys of {path} must be str, not {} ({})",
                    key.get_type().name()?,
                    key.repr()?
                )));
            };
            let key = utf8(key, &format!("a key of {path}"))?;
            let item = to_json(&item, what, &format!("{path}[{key:?}]"), depth + 1)?;
            map.insert(key, item);
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in value.try_iter()?.enumerate() {
            items.push(to_json(&item?, what, &format!("{path}[{i}]"), depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    Err(PyTypeError::new_err(format!(
        "{path} is a {}, which is not JSON: {what} may hold None, bool, int, float, str, list, \
         tuple and dict values",
        value.get_type().name()?
    )))
}

/// A JSON value as Python (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`).
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// Stored trigger details (JSON text) as Python; text that does not parse is returned as a str.
pub(crate) fn text_to_python<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => to_python(py, &value),
        Err(_) => Ok(PyString::new(py, text).into_any()),
    }
}
