//! `btb.host`: the child's side of an out-of-process host (SPEC §5). A program started by a broker
//! for an `exec` entry point calls `btb.host.connect()` and gets a `BackgroundTaskInstance`, the
//! same type a run function gets in-process, so a run function written for in-process use runs
//! unchanged.

use pyo3::prelude::*;

use crate::errors::OrRaise;
use crate::runtime::BackgroundTaskInstance;
use crate::system::System;

/// Connects to the instance this process was started for (through `BTB_HOST_FD`). Once per
/// process; `StateError` when not started by a btb broker.
#[pyfunction(name = "_host_connect")]
pub(crate) fn connect(py: Python<'_>) -> PyResult<Py<BackgroundTaskInstance>> {
    let instance = py.detach(btb_core::host::connect).or_raise()?;
    // The system of its task: a view that answers what needs the app's system `UnsupportedError`.
    let system = System::view(py, instance.task().system())?;
    Ok(BackgroundTaskInstance::wrap(py, instance, system)?.unbind())
}
