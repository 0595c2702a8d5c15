//! `btb.Manifest` and `btb.TaskDeclaration` (SPEC §5): a TOML file or declarations made in code.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::convert::{opt_utf8, py_repr, utf8, utf8_list};
use crate::errors::OrRaise;

/// One declared entry point and the Windows task types it may use.
#[pyclass(frozen, eq, module = "btb")]
#[derive(PartialEq)]
pub struct TaskDeclaration {
    pub(crate) inner: btb_core::TaskDeclaration,
}

#[pymethods]
impl TaskDeclaration {
    #[new]
    #[pyo3(signature = (entry_point, types, exec = None))]
    fn new(
        entry_point: &Bound<'_, PyString>,
        types: &Bound<'_, PyAny>,
        exec: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let entry_point = utf8(entry_point, "entry point")?;
        let types = utf8_list(types, "task types")?;
        let mut inner = btb_core::TaskDeclaration::new(&entry_point, &types).or_raise()?;
        if let Some(exec) = exec {
            inner = inner.with_exec(utf8_list(exec, "exec")?).or_raise()?;
        }
        Ok(TaskDeclaration { inner })
    }

    #[getter]
    fn entry_point(&self) -> &str {
        &self.inner.entry_point
    }

    /// The task types as a manifest spells them (`"timer"`, `"systemEvent"`, …).
    #[getter]
    fn types(&self) -> Vec<&'static str> {
        self.inner.types.iter().map(|t| t.name()).collect()
    }

    /// The out-of-process host command, if any.
    #[getter]
    fn exec(&self) -> Option<Vec<String>> {
        self.inner.exec.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let exec = match &self.inner.exec {
            Some(argv) => format!(", exec={}", py_repr(py, argv)?),
            None => String::new(),
        };
        Ok(format!(
            "TaskDeclaration({}, {}{exec})",
            py_repr(py, &self.inner.entry_point)?,
            py_repr(py, self.types())?
        ))
    }
}

/// The app's identity and the entry points it declares.
#[pyclass(frozen, eq, module = "btb")]
#[derive(PartialEq)]
pub struct Manifest {
    pub(crate) inner: btb_core::Manifest,
}

#[pymethods]
impl Manifest {
    #[new]
    #[pyo3(signature = (app_id, version = None, tasks = None, activate = None))]
    fn new(
        app_id: &Bound<'_, PyString>,
        version: Option<&Bound<'_, PyString>>,
        tasks: Option<&Bound<'_, PyAny>>,
        activate: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let version = opt_utf8(version, "manifest version")?.unwrap_or_default();
        let mut inner = btb_core::Manifest::new(&utf8(app_id, "app id")?, &version).or_raise()?;
        if let Some(argv) = activate {
            inner = inner.with_activate(argv).or_raise()?;
        }
        if let Some(tasks) = tasks {
            for task in tasks.try_iter()? {
                let task = task?;
                let declaration = task.cast::<TaskDeclaration>()?;
                inner.declare(declaration.get().inner.clone()).or_raise()?;
            }
        }
        Ok(Manifest { inner })
    }

    /// How the broker starts the app for background work (SPEC §12), or `None`.
    #[getter]
    fn activate(&self) -> Option<Vec<String>> {
        self.inner.activate().map(<[String]>::to_vec)
    }

    /// Reads a TOML manifest file.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| btb_core::Manifest::load(&path)).or_raise()?;
        Ok(Manifest { inner })
    }

    /// Parses TOML text.
    #[staticmethod]
    fn from_toml(text: &Bound<'_, PyString>) -> PyResult<Self> {
        let source = utf8(text, "manifest text")?;
        let inner = btb_core::Manifest::from_toml(&source).or_raise()?;
        Ok(Manifest { inner })
    }

    #[getter]
    fn app_id(&self) -> &str {
        self.inner.app_id()
    }

    #[getter]
    fn version(&self) -> &str {
        self.inner.version()
    }

    #[getter]
    fn tasks(&self) -> Vec<TaskDeclaration> {
        self.inner
            .tasks()
            .iter()
            .map(|t| TaskDeclaration { inner: t.clone() })
            .collect()
    }

    /// The file the manifest was loaded from, or `None`.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.inner.path().map(PathBuf::from)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Manifest(app_id={}, version={}, tasks={})",
            py_repr(py, self.inner.app_id())?,
            py_repr(py, self.inner.version())?,
            py_repr(py, self.tasks())?
        ))
    }
}
