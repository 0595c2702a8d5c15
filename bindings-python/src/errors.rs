//! The one error→exception table: every core [`ErrorKind`] maps to a class of `btb._errors`.

use btb_core::{Error, ErrorKind};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// The `btb._errors` class raised for a kind. An exhaustive match: a new core kind fails to
/// compile until it is mapped here.
pub(crate) fn exception_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NullArgument => "NullArgumentError",
        ErrorKind::InvalidHandle => "InvalidHandleError",
        ErrorKind::InvalidArgument => "InvalidArgumentError",
        ErrorKind::InvalidUtf8 => "InvalidUtf8Error",
        ErrorKind::NoTrigger => "NoTriggerError",
        ErrorKind::NoEntryPoint => "NoEntryPointError",
        ErrorKind::NotDeclared => "NotDeclaredError",
        ErrorKind::Conflict => "ConflictError",
        ErrorKind::Store => "StoreError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::State => "StateError",
        ErrorKind::Unsupported => "UnsupportedError",
        ErrorKind::Policy => "PolicyError",
        ErrorKind::Internal => "InternalError",
    }
}

/// Converts a core error into the matching Python exception, carrying the status and message.
pub(crate) fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let exception = MODULE
        .get_or_try_init(py, || py.import("btb._errors").map(Bound::unbind))
        .and_then(|module| module.bind(py).getattr(exception_name(error.kind())))
        .and_then(|class| class.call1((error.message(), error.kind().code())));
    match exception {
        Ok(value) => PyErr::from_value(value),
        Err(failure) => failure,
    }
}

/// A core error as a Python exception (attaches to the interpreter if needed).
pub(crate) fn raise(error: Error) -> PyErr {
    Python::attach(|py| to_py_err(py, &error))
}

/// `?`-friendly conversion of core results.
pub(crate) trait OrRaise<T> {
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for btb_core::Result<T> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(raise)
    }
}

/// An `InvalidArgumentError` raised by the binding itself, for a value Python can hold but the
/// core's types cannot (a negative freshness, a naive datetime).
pub(crate) fn invalid(message: impl Into<String>) -> PyErr {
    raise(Error::invalid(message))
}
