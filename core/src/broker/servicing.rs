//! Servicing (SPEC §10): the app was updated under a running broker — its manifest's `version`
//! changed. Windows cancels the app's background tasks with `SERVICING_UPDATE`, installs the new
//! package, then raises `SERVICING_COMPLETE`; so does the broker.

use std::sync::{Arc, PoisonError};

use super::{Broker, closed};
use crate::manifest::Manifest;
use crate::model::{CancellationReason, SystemTriggerType};
use crate::registry::EventKey;
use crate::{Error, Result};

impl Broker {
    /// The manifest in force (replaced by `service`).
    pub(crate) fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.manifest.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Takes `manifest` if its `version` differs from the one in force: cancels every run with
    /// SERVICING_UPDATE, records the version in the store (so the next open raises nothing),
    /// replaces the manifest (runs started from now on use its declarations) and fires
    /// SERVICING_COMPLETE. `Ok(false)`, changing nothing, for the same version. `INVALID_ARGUMENT`
    /// for another app's manifest.
    pub(crate) fn service(self: &Arc<Self>, manifest: Manifest) -> Result<bool> {
        self.check_pid()?;
        if manifest.app_id() != self.app_id {
            return Err(Error::invalid(format!(
                "the manifest is of app {:?}, not {:?}: a serviced app keeps its id",
                manifest.app_id(),
                self.app_id
            )));
        }
        let old = self.manifest();
        if manifest.version() == old.version() {
            return Ok(false);
        }
        {
            // The store first (never taken under the state lock), as `unregister`.
            let mut store = self.store();
            let Some(s) = store.as_mut() else {
                return Err(closed());
            };
            s.set_meta("manifest_version", manifest.version())?;
        }
        let mut st = self.lock_open()?;
        log::info!(target: "btb", "app {:?} serviced: manifest version {:?} → {:?}",
            self.app_id, old.version(), manifest.version());
        let now = self.clock.now_ms();
        self.cancel_all(&mut st, CancellationReason::ServicingUpdate, now);
        *self
            .manifest
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(manifest);
        self.fire_key(
            &mut st,
            &EventKey::System(SystemTriggerType::ServicingComplete),
        );
        self.acknowledge(st)?;
        Ok(true)
    }
}
