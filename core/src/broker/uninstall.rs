//! `System::uninstall` in the broker (SPEC §10): the app is going away.

use std::path::Path;

use uuid::Uuid;

use super::{Broker, closed};
use crate::Result;
use crate::model::CancellationReason;

impl Broker {
    /// Cancels every run with UNINSTALL, unregisters every task durably, then removes the store's
    /// files and the control socket's (no process reaches this broker any more; a process of
    /// the app started later opens a new store). The system stays open, holding nothing, until
    /// closed. Returns how many tasks were registered.
    pub(crate) fn uninstall(self: &std::sync::Arc<Self>) -> Result<usize> {
        self.check_pid()?;
        // As `unregister`: the store first (never taken under the state lock), then the state.
        let mut store = self.store();
        let Some(s) = store.as_mut() else {
            return Err(closed());
        };
        let ids: Vec<Uuid> = self
            .lock_open()?
            .registry
            .records()
            .map(|r| r.task_id)
            .collect();
        for id in &ids {
            s.delete(id)?;
        }
        let mut st = self.lock();
        let now = self.clock.now_ms();
        self.cancel_all(&mut st, CancellationReason::Uninstall, now);
        for id in &ids {
            self.unregistered(&mut st, id, false);
        }
        drop(store);
        drop(st);
        log::info!(target: "btb", "app {:?} uninstalled: {} task(s) unregistered; removing store {} and the control socket",
            self.app_id.as_str(), ids.len(), self.store_path);
        if self.store_path != ":memory:" {
            crate::uninstall::remove_store_files(Path::new(&self.store_path))?;
        }
        if self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            crate::uninstall::remove_control_socket(self.app_id.as_str())?;
        }
        Ok(ids.len())
    }
}
