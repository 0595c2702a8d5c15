//! Opening a broker on a store this process holds (a system's own, or one a client took over).

use std::sync::Arc;

use super::handlers::Handlers;
use super::{Broker, State};
use crate::clock::Clock;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::options::SystemOptions;
use crate::registry::Registry;
use crate::store::{Store, StoreLocation};

impl Broker {
    /// Opens a broker on a store this process holds: loads its registrations, catches up on time
    /// that passed while nothing ran, starts the broker's threads and sources and its control socket.
    /// `handlers` are those a client had before it took the store over.
    pub(crate) fn open(
        manifest: Manifest,
        options: &SystemOptions,
        mut store: Store,
        handlers: Handlers,
    ) -> Result<Arc<Broker>> {
        let stored = store.load()?;
        // Until this broker binds its socket, no note says where it listens (a client waits).
        // After the load: a store refused at open is left as it was.
        if let Ok(canonical) = std::fs::canonicalize(store.path()) {
            crate::socket_note::write(&canonical.to_string_lossy(), None);
        }
        let servicing = store.get_meta("manifest_version")?;
        if servicing.as_deref() != Some(manifest.version()) {
            store.set_meta("manifest_version", manifest.version())?;
        }
        let mut registry = Registry::with_capacity(stored.len());
        let mut latched = Vec::new();
        for t in stored {
            if t.spent {
                registry.mark_spent(t.record.task_id);
            }
            if let Some(details) = t.pending {
                latched.push((t.record.task_id, details));
            }
            registry.add(Arc::new(t.record));
        }
        // Before anything runs: no registration starts again while a host of a broker of this
        // store that died still runs it.
        let now = options.clock.now_ms();
        let mut retries = super::stop_orphans(&mut store, &registry, &options.policy, now);
        // Runs cut off by the death of the broker that started them: recorded, retried under a
        // policy (SPEC §11, §12). A fire already latched for the task runs instead of its retry.
        let mut recovered =
            super::recover_cut_off(&mut store, &registry, options.policy.history_limit, now)?;
        // A parked run's fire, loaded above, is gone when a client was handed that run.
        latched.retain(|(id, _)| !recovered.handed.contains(id));
        retries.extend(std::mem::take(&mut recovered.retries));
        for (task_id, retry) in retries {
            if !latched.iter().any(|(id, _)| *id == task_id) {
                latched.push((task_id, retry));
            }
        }
        let store_path = store.path().to_owned();
        // STORAGE_NOT_LOW measures the store's file system; an in-memory store, the state directory.
        let storage_dir = match &options.store {
            StoreLocation::Memory => StoreLocation::default_path(manifest.app_id()).ok(),
            _ => Some(std::path::PathBuf::from(&store_path)),
        }
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
        let shared = Arc::new(Broker::new(
            manifest,
            options.clock.clone(),
            options.simulated,
            options.platform.clone(),
            // A client's options leave the pool's size to the broker it becomes.
            options.policy.counted(),
            storage_dir,
            store,
            State::new(registry, options.paused),
        )?);
        *shared.handlers_mut() = handlers;
        {
            let mut st = shared.lock();
            for run in &recovered.recorded {
                shared.announce(&mut st, run);
            }
        }
        // Before anything runs: a task whose run goes on in a client counts as running.
        if let Some(dir) = shared.run_files.clone() {
            shared.watch_elsewhere(dir, recovered.elsewhere);
        }
        {
            let mut st = shared.lock();
            shared.restore(
                &mut st,
                latched,
                servicing.is_some() && servicing.as_deref() != Some(shared.manifest().version()),
            )?;
        }
        shared.start_threads()?;
        if !shared.simulated {
            shared.start_platform();
        }
        // Task-group handlers are process-wide: a change may serve runs that wait for a handler.
        super::groups::observe(Arc::downgrade(&shared) as _);
        if let Clock::Manual(clock) = &shared.clock {
            let weak = Arc::downgrade(&shared);
            clock.subscribe(Arc::new(move || {
                let Some(shared) = weak.upgrade() else {
                    return false; // the system is gone: unsubscribe
                };
                shared.clock_advanced();
                true
            }));
        }
        if options.store != StoreLocation::Memory {
            let weak = Arc::downgrade(&shared);
            let handler: crate::control::Handler = Arc::new(move |request| match weak.upgrade() {
                Some(shared) => shared.answer(request),
                None => crate::control::Reply::error(&super::closed()),
            });
            // Clients check that they reached the broker of their store by its canonical path.
            let canonical = std::fs::canonicalize(&shared.store_path)
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
            let noted = canonical.clone();
            let bound = crate::control::ControlListener::bind_for_store(
                shared.app_id.as_str(),
                canonical,
                handler,
            );
            if let Some(store) = &noted {
                crate::socket_note::write(store, bound.as_ref().ok().map(|l| l.path()));
            }
            match bound {
                Ok(l) => {
                    let weak = Arc::downgrade(&shared);
                    l.broadcast().set_on_offer(Box::new(move || {
                        if let Some(shared) = weak.upgrade() {
                            shared.handlers_changed();
                        }
                    }));
                    let _ = shared.broadcast.set(l.broadcast());
                    *shared.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
                }
                Err(e) => {
                    log::warn!(target: "btb", "other processes (clients, btbctl, signal_event) will not reach this system: {e}");
                    let _ = shared.unreachable.set(e);
                }
            }
        }
        Ok(shared)
    }
}
