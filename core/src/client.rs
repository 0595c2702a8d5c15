//! Client mode (SPEC §10): a system whose store another process's broker holds. Every operation
//! goes to that broker over the control socket (`control.rs`); progress and completion come back
//! on a second connection, a feed read by one thread (`btb-feed`), which calls this process's
//! handlers. When the feed ends while the client is open, the broker is gone (or closed): the
//! client takes the store and becomes the broker itself, or — if another process was faster —
//! connects to the new one (takeover).

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::broker::threads::ThreadSet;
use crate::broker::{AppCall, Backend, Broker, Handlers, Registration};
use crate::control::{Client, Greeting, Reply, Request, Subscription};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::TaskRecord;
use crate::options::SystemOptions;
use crate::protocol::HandedRun;
use crate::store::{Held, Store};

/// How long opening (or recovering) waits for the broker that holds the store to answer: it
/// binds its socket after taking the store, and its first platform readings may take seconds.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads that run the runs handed over the feed (when the ready connection is busy); more runs
/// wait in a queue of [`HANDED_QUEUE`], and past that are not taken (the broker's start deadline
/// gives them to another client, or fails them).
const RUN_THREADS: usize = 4;
const HANDED_QUEUE: usize = 16;

/// Runs handed over the feed, waiting for a run thread.
#[derive(Default)]
struct Handed {
    queue: VecDeque<(HandedRun, Option<Presumed>)>,
    /// Run threads started and not ended.
    threads: usize,
}

pub(crate) struct Remote {
    pub(crate) manifest: Arc<Manifest>,
    /// How this process opened the system (used again to take the store over).
    pub(crate) options: SystemOptions,
    /// The store's canonical path: a broker must name it in its hello.
    canonical: String,
    /// The request connection; `None` after it broke (the next call reconnects or takes over).
    conn: Mutex<Option<Client>>,
    /// This process's handlers (entry points, activation, progress, completed); moved into the
    /// broker on takeover.
    pub(crate) handlers: RwLock<Handlers>,
    /// The registrations this client has seen: notices reach handlers with them.
    records: Mutex<HashMap<Uuid, Arc<TaskRecord>>>,
    /// The broker this process became (takeover); from then on every call goes there.
    pub(crate) taken: OnceLock<Arc<Broker>>,
    /// Held while reconnecting or taking over: one attempt at a time.
    moving: Mutex<()>,
    closed: AtomicBool,
    broker_pid: AtomicU32,
    /// The process that opened it: a forked child must not speak on the parent's connections.
    /// Refuses use in a forked child.
    opener: crate::broker::Opener,
    /// A clone of the feed's socket: offers go out on it; shut down at close to end the feed.
    feed_socket: Mutex<Option<UnixStream>>,
    /// The connection the runner thread keeps ready for runs (shut down at close).
    runner_socket: Mutex<Option<UnixStream>>,
    /// Counts feeds: a feed that ends after a newer one started says nothing about the broker.
    feed_generation: AtomicU64,
    /// The current feed has not ended: its broker is there. A call it does not answer in time
    /// is no sign that it is gone — only the end of its feed is — so while this holds, a broken
    /// call opens a new request connection and never a second feed.
    feed_live: AtomicBool,
    /// Every thread of this client (feed, runner and its reader, run threads), joined by `close`
    /// up to the grace plus a margin.
    threads: Arc<ThreadSet>,
    handed: Mutex<Handed>,
    /// Counts what may change the runs left for this process — each notice of the feed but
    /// progress (a run that ended anywhere, a run handed here), the feed's end, a takeover, the
    /// close: `serve_activation` waits for it to move before it asks the broker again (no timer).
    activity: (Mutex<u64>, std::sync::Condvar),
    /// How many `serve_activation` calls wait on `activity`: only then is it counted (a feed's
    /// notices cost no lock and no wake-up otherwise).
    serving: std::sync::atomic::AtomicUsize,
    /// This process was started by the broker for background work (`BTB_ACTIVATION=1` for this
    /// app) and has not called `serve_activation` yet: its offer says so
    /// ([`crate::control::Offer::activated`]), and the runs the broker hands it meanwhile wait
    /// for their handler to be registered (SPEC §12).
    presuming: AtomicBool,
    /// Changes of this process's handlers, and the runs taken on presumption not yet ended.
    offered: (Mutex<Offered>, std::sync::Condvar),
}

/// What runs taken on presumption (see `Remote::presuming`) wait for, and what waits for them.
#[derive(Default)]
struct Offered {
    /// Counts changes of this process's handlers (and the end of `presuming`): a run that waits
    /// for its handler looks again when it moves.
    changes: u64,
    /// Runs handed on presumption and not ended: `serve_activation` waits for them (the broker
    /// counts a run only for the handlers an offer names).
    presumed: usize,
}

/// A run handed to this process while it presumed, until it ends (however: run, failed, taken
/// back, dropped at close): counted in `Offered::presumed` while it lives.
struct Presumed(Weak<Remote>);

impl Drop for Presumed {
    fn drop(&mut self) {
        if let Some(remote) = self.0.upgrade() {
            lock(&remote.offered.0).presumed -= 1;
            remote.offered.1.notify_all();
        }
    }
}

/// A handed run's instance, for the runner, with its count if it was taken on presumption.
type ForRunner = (crate::Instance, Option<Presumed>);

/// What a process with `handlers` can run (what `offer` tells the broker); `activated`: it was
/// started for background work and does not serve yet.
fn offer_of(h: &Handlers, activated: bool) -> crate::control::Offer {
    // Pull-queue handlers are served by `next_event`, which only a broker's process has.
    let callable = |handler: &crate::Handler| matches!(handler, crate::Handler::Call(_));
    let mut activation: Vec<Option<String>> = h
        .activation
        .iter()
        .filter(|(_, handler)| callable(handler))
        .map(|(key, _)| key.clone())
        .collect();
    // The process-wide handlers of task groups (objects bound by use) too.
    activation.extend(crate::broker::groups::with_handlers().into_iter().map(Some));
    crate::control::Offer {
        entry_points: h
            .entry_points
            .iter()
            .filter(|(_, handler)| callable(handler))
            .map(|(name, _)| name.clone())
            .collect(),
        activation,
        resolver: h.resolver.is_some(),
        starts: true,
        activated,
    }
}

/// Whether this process was started by the broker of `app_id` for background work.
fn started_for_background_work(app_id: &str) -> bool {
    std::env::var_os("BTB_ACTIVATION").is_some_and(|v| v == "1")
        && std::env::var_os("BTB_APP_ID").is_some_and(|v| v == app_id)
}

/// Reads a ready connection (`btb-run-reader`): each run the broker starts on it goes to the
/// runner, and each cancellation to the run it is for, until the connection ends.
fn read_runs(
    remote: &Weak<Remote>,
    link: UnixStream,
    mut reader: UnixStream,
    runner: &std::sync::mpsc::SyncSender<ForRunner>,
) {
    use crate::protocol::ToHost;
    let mut current: Option<crate::Instance> = None;
    while let Ok(Some(message)) = crate::protocol::read_frame::<ToHost>(&mut reader) {
        match message {
            ToHost::Run {
                run,
                canceled,
                network_granted: _,
            } => {
                // Counted from now if taken on presumption: `serve_activation` waits for it.
                let presumed = remote.upgrade().and_then(|r| r.presume());
                // Hello first, and run it only once welcomed: a broker that took the run back
                // meanwhile (this process was stopped past the start deadline, or the run ended)
                // hangs up instead, and the run is not run here.
                let hello = crate::protocol::ToBroker::Hello {
                    version: crate::protocol::VERSION,
                    min_version: Some(crate::protocol::MIN_VERSION),
                    instance_id: run.instance_id,
                };
                // Held before the hello: a broker that welcomes it and dies leaves the next one
                // a run it must not start again while it goes on here (SPEC §11).
                let run_file = remote
                    .upgrade()
                    .and_then(|r| r.claim_run_file(run.instance_id));
                if crate::protocol::write_frame(&mut &link, &hello).is_err() {
                    crate::runfile::RunFile::discard(run_file);
                    return;
                }
                let (canceled, network_granted) = loop {
                    match crate::protocol::read_frame::<ToHost>(&mut reader) {
                        Ok(Some(ToHost::Welcome {
                            canceled: now_canceled,
                            network_granted,
                            ..
                        })) => break (now_canceled.or(canceled), network_granted),
                        Ok(Some(ToHost::Unknown)) => {}
                        _ => {
                            log::info!(target: "btb", "instance {} was taken back before this process started it", run.instance_id);
                            crate::runfile::RunFile::discard(run_file);
                            return;
                        }
                    }
                };
                let (Some(remote), Ok(link)) = (remote.upgrade(), link.try_clone()) else {
                    crate::runfile::RunFile::discard(run_file);
                    return;
                };
                let instance =
                    remote.handed_instance(link, *run, run_file, canceled, network_granted);
                current = Some(instance.clone());
                if runner.send((instance, presumed)).is_err() {
                    return;
                }
            }
            ToHost::Canceled { reason } => {
                if let Some(instance) = &current {
                    instance.canceled_by_broker(crate::link::cancellation_reason(reason));
                    // A run waiting for its handler hears it too.
                    if let Some(remote) = remote.upgrade() {
                        remote.handlers_moved();
                    }
                }
            }
            ToHost::Welcome { .. } | ToHost::Refused { .. } => return, // not on this connection
            ToHost::Unknown => {}                                      // a notice of a newer broker
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Remote {
    /// Connects to the broker that holds `held`, waiting for it to answer; takes the store if
    /// its holder goes away meanwhile. `Ok(Err(store))`: the store is ours now (open a broker).
    pub(crate) fn connect(
        manifest: Manifest,
        options: SystemOptions,
        held: Held,
    ) -> Result<std::result::Result<Arc<Remote>, Store>> {
        let canonical = held.canonical.to_string_lossy().into_owned();
        // What it offers before it registers anything: the handlers of task groups (process-wide),
        // and whether its broker started it for background work.
        let offer = offer_of(
            &Handlers::default(),
            started_for_background_work(manifest.app_id()),
        );
        let (client, greeted) = match reach(&manifest, &options, &canonical, held.error, &offer)? {
            Ok(reached) => reached,
            Err(store) => return Ok(Err(store)),
        };
        let presuming = offer.activated;
        let remote = Arc::new(Remote {
            broker_pid: AtomicU32::new(client.broker_pid),
            manifest: Arc::new(manifest),
            options,
            canonical,
            conn: Mutex::new(Some(client)),
            handlers: RwLock::new(Handlers::default()),
            records: Mutex::new(HashMap::new()),
            taken: OnceLock::new(),
            moving: Mutex::new(()),
            closed: AtomicBool::new(false),
            opener: crate::broker::Opener::this_process(),
            feed_socket: Mutex::new(None),
            feed_generation: AtomicU64::new(0),
            feed_live: AtomicBool::new(false),
            runner_socket: Mutex::new(None),
            threads: Arc::default(),
            handed: Mutex::new(Handed::default()),
            activity: (Mutex::new(0), std::sync::Condvar::new()),
            serving: std::sync::atomic::AtomicUsize::new(0),
            presuming: AtomicBool::new(presuming),
            offered: (Mutex::default(), std::sync::Condvar::new()),
        });
        remote.start_feed(greeted)?;
        // Task-group handlers are process-wide: a change may change what this process offers.
        crate::broker::groups::observe(Arc::downgrade(&remote) as _);
        Ok(Ok(remote))
    }

    /// For a process its broker started for background work (`BTB_ACTIVATION=1`, and the store
    /// it opens is the `BTB_STORE` that broker named): the store, as held by that broker — so
    /// `connect` greets the broker at once and probes the store (open, header, lock) only if it
    /// does not answer. `None` otherwise, and when the path cannot be resolved.
    pub(crate) fn held_by_activator(manifest: &Manifest, options: &SystemOptions) -> Option<Held> {
        let app_id = manifest.app_id();
        if !started_for_background_work(app_id) {
            return None;
        }
        let path = match &options.store {
            crate::store::StoreLocation::File(path) => path.clone(),
            crate::store::StoreLocation::Default => {
                crate::store::StoreLocation::default_path(app_id).ok()?
            }
            crate::store::StoreLocation::Memory => return None,
        };
        if std::env::var_os("BTB_STORE")? != path.as_os_str() {
            return None;
        }
        let canonical = std::fs::canonicalize(&path).ok()?;
        Some(Held {
            canonical,
            error: Error::store(
                &path.display().to_string(),
                "is in use by the btb broker that started this process for background work",
            ),
        })
    }

    /// The process id of the broker this client talks to.
    pub(crate) fn broker_pid(&self) -> u32 {
        self.broker_pid.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.opener.check()?;
        if self.is_closed() {
            return Err(crate::broker::closed());
        }
        Ok(())
    }

    pub(crate) fn handlers(&self) -> std::sync::RwLockReadGuard<'_, Handlers> {
        self.handlers.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn handlers_mut(&self) -> std::sync::RwLockWriteGuard<'_, Handlers> {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers a registration this client saw; returns the shared record.
    pub(crate) fn remember(&self, record: TaskRecord) -> Arc<TaskRecord> {
        let record = Arc::new(record);
        lock(&self.records).insert(record.task_id, Arc::clone(&record));
        record
    }

    /// Whether a registration this client saw was made with application trigger `id`.
    pub(crate) fn knows_application_trigger(&self, id: &Uuid) -> bool {
        lock(&self.records).values().any(
            |r| matches!(&r.trigger, crate::model::TaskTrigger::Application { id: t } if t == id),
        )
    }

    /// The store path as this process named it.
    pub(crate) fn store_path(&self) -> &str {
        match &self.options.store {
            crate::store::StoreLocation::File(p) => p.to_str().unwrap_or(&self.canonical),
            _ => &self.canonical,
        }
    }

    pub(crate) fn forget(&self, task_id: &Uuid) {
        lock(&self.records).remove(task_id);
        let gone = self.handlers_mut().forget(task_id);
        drop(gone); // unlocked: a handler may hold references that call back into btb
    }

    /// Sends a request to the broker and returns its answer (an error reply as the error it
    /// names). A broker that is gone is replaced first — by this process if it can take the
    /// store — and a request that was not delivered, or only reads, is sent again; a change that
    /// was delivered but not answered is not repeated (it may have been done) and fails with
    /// `STATE`.
    pub(crate) fn ask(self: &Arc<Self>, request: &Request) -> Result<Reply> {
        for _ in 0..3 {
            self.check_open()?;
            if let Some(broker) = self.taken.get() {
                return answer_locally(broker, request);
            }
            let mut conn = lock(&self.conn);
            let Some(client) = conn.as_mut() else {
                drop(conn);
                self.recover()?;
                continue;
            };
            match client.exchange(request) {
                Ok(Err(e)) if crate::broker::is_closed(&e) => {
                    // Its broker is closing (it hands the store on): the call was not done; it
                    // goes to whoever holds the store next (this process, maybe).
                    let closing = client.broker_pid;
                    *conn = None;
                    drop(conn);
                    self.await_handover(closing)?;
                    continue;
                }
                Ok(reply) => return reply,
                Err(failure) if failure.unreadable => {
                    // The broker is there and answered: the call fails, and is not asked again
                    // (the answer would be the same). The connection, out of step, is dropped.
                    *conn = None;
                    return Err(failure.error);
                }
                Err(failure) if failure.timed_out => {
                    // A broker that does not answer in time is stopped or stuck, not gone (its
                    // feed would have ended): the connection, out of step now, is dropped and
                    // the call fails; the next call opens a new one. Nothing is asked again.
                    *conn = None;
                    drop(conn);
                    return Err(Error::state(format!(
                        "the btb broker of app {:?} (pid {}) did not answer within {} s{}: {}",
                        self.manifest.app_id(),
                        failure.pid,
                        crate::control::CLIENT_TIMEOUT.as_secs(),
                        if request.is_read_only() {
                            ""
                        } else {
                            "; the call may or may not have been done"
                        },
                        failure.error.message(),
                    )));
                }
                Err(failure) => {
                    *conn = None;
                    drop(conn);
                    // A read is asked again; a change that may have been made is not.
                    let doubtful = failure.delivered && !request.is_read_only();
                    self.recover()?;
                    if doubtful {
                        return Err(Error::state(format!(
                            "the btb broker of app {:?} (pid {}) went away during the call; it \
                             may or may not have been done ({}); this process now reaches the \
                             store through {}",
                            self.manifest.app_id(),
                            failure.pid,
                            failure.error.message(),
                            if self.taken.get().is_some() {
                                "itself (it became the broker)".to_owned()
                            } else {
                                format!("the broker in pid {}", self.broker_pid())
                            }
                        )));
                    }
                }
            }
        }
        Err(Error::state(format!(
            "the btb broker of app {:?} keeps going away",
            self.manifest.app_id()
        )))
    }

    /// After the broker went away: take the store (become the broker) or reach its new holder.
    fn recover(self: &Arc<Self>) -> Result<()> {
        let _moving = lock(&self.moving);
        self.check_open()?;
        if self.taken.get().is_some() || lock(&self.conn).is_some() {
            return Ok(()); // another thread recovered meanwhile
        }
        let held = match Store::try_open(
            &self.options.store,
            self.manifest.app_id(),
            self.options.policy.durability,
        )? {
            Ok(store) => return self.take_over(store),
            Err(held) => held,
        };
        if self.feed_live.load(Ordering::Acquire) {
            // The feed is up, so its broker is there: only the request connection is new (a
            // second feed would deliver every notice twice).
            match Client::connect_kept(self.manifest.app_id()) {
                Ok(client)
                    if client.broker_pid == self.broker_pid()
                        && client.broker_store.as_deref() == Some(self.canonical.as_str()) =>
                {
                    *lock(&self.conn) = Some(client);
                    return Ok(());
                }
                // Another broker answers, or none: the feed's end is on its way.
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e), // stopped or stuck: the next call tries again
            }
        }
        let offer = self.current_offer();
        match reach(
            &self.manifest,
            &self.options,
            &self.canonical,
            held.error,
            &offer,
        )? {
            Ok((client, greeted)) => {
                self.broker_pid.store(client.broker_pid, Ordering::Relaxed);
                *lock(&self.conn) = Some(client);
                self.start_feed(greeted)
            }
            Err(store) => self.take_over(store),
        }
    }

    /// Waits until the broker `closing` (which answers that it is closed) has let go of its
    /// socket, or another broker answers: then `recover` reaches the store's next holder. Like
    /// `reach`, with short growing pauses: a library broker's process outlives its close, so there
    /// is no process end to wait on.
    fn await_handover(&self, closing: u32) -> Result<()> {
        let app_id = self.manifest.app_id();
        // Its close waits out the grace of its runs (twice, for exec hosts: SIGTERM, then SIGKILL)
        // and a margin before it lets go of its socket.
        let grace = Duration::from_millis(u64::from(self.options.policy.grace_ms));
        let waited = REACH_TIMEOUT + grace * 2 + Duration::from_secs(1);
        let deadline = Instant::now() + waited;
        let mut pause = Duration::from_millis(2);
        loop {
            match Client::connect_kept(app_id) {
                Ok(c) if c.broker_pid != closing => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::state(format!(
                    "the btb broker of app {app_id:?} (pid {closing}) is closing and did not hand its \
                     store on within {} s",
                    waited.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Becomes the broker of the store: this process's handlers move into it, and it runs at
    /// once (a client has nothing to start).
    fn take_over(self: &Arc<Self>, store: Store) -> Result<()> {
        let handlers = std::mem::take(&mut *self.handlers_mut());
        let options = SystemOptions {
            paused: false,
            ..self.options.clone()
        };
        let broker = Broker::open((*self.manifest).clone(), &options, store, handlers)?;
        log::info!(target: "btb", "app {:?}: the broker (pid {}) went away; this process (pid {}) is the broker now",
            self.manifest.app_id(), self.broker_pid(), std::process::id());
        self.broker_pid.store(std::process::id(), Ordering::Relaxed);
        // Runs handed here before that wait for their handler in the broker's table now.
        let weak = Arc::downgrade(self);
        let _ = broker.on_handlers.set(Box::new(move || {
            if let Some(remote) = weak.upgrade() {
                remote.handlers_moved();
            }
        }));
        let _ = self.taken.set(broker);
        self.handlers_moved();
        self.stir(); // a `serve_activation` waiting goes on with this process's broker
        Ok(())
    }

    /// Opens the feed of notices (greeted by `reach`) and starts the thread that reads it.
    fn start_feed(self: &Arc<Self>, greeted: Greeted) -> Result<()> {
        let feed = greeted.feed?.welcome()?.subscribed()?;
        *lock(&self.feed_socket) = feed.socket().ok();
        // Offered with the greeting: again only if the handlers changed since.
        if self.current_offer() != greeted.offer {
            self.send_offer();
        }
        let generation = self.feed_generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.feed_live.store(true, Ordering::Release);
        self.start_runner(generation, greeted.ready);
        let weak = Arc::downgrade(self);
        // A previous feed's thread ends by itself (its feed ended); the set joins it.
        self.threads
            .spawn("btb-feed", move || feed_loop(&weak, feed, generation))
            .map_err(|e| Error::state(format!("cannot start the feed thread: {e}")))?;
        Ok(())
    }

    /// Tells the broker what this process can run (after its handlers changed, and on each new
    /// feed). Best effort: a broker that is gone hears it from the next feed.
    pub(crate) fn send_offer(&self) {
        // Built under the socket's lock: offers go out in the order of what they say (the last
        // one written says whether this process still presumes).
        let socket = lock(&self.feed_socket);
        if let Some(socket) = socket.as_ref() {
            let offer = self.current_offer();
            let _ = socket.set_write_timeout(Some(crate::control::CLIENT_TIMEOUT));
            let _ = crate::protocol::write_frame(&mut &*socket, &Request::Offer { offer });
        }
    }

    /// What this process can run now (what `offer` tells the broker).
    pub(crate) fn current_offer(&self) -> crate::control::Offer {
        offer_of(&self.handlers(), self.presuming.load(Ordering::Acquire))
    }

    /// Claims the run file of a run handed to this process (`runfile.rs`); `None` when it cannot
    /// be written (the run still runs here; a broker that dies during it may start it again).
    fn claim_run_file(&self, instance_id: Uuid) -> Option<crate::runfile::RunFile> {
        crate::runfile::RunFile::claim(&self.canonical, instance_id)
            .inspect_err(|e| {
                log::warn!(target: "btb", "instance {instance_id} was handed to this process, which cannot hold its run file beside the store: {e}");
            })
            .ok()
    }

    /// Runs an instance the broker handed to this process over its feed (on a thread of its
    /// own, when the ready connection was busy): attaches a connection for it, then runs it.
    fn run_handed(self: &Arc<Self>, run: HandedRun, presumed: Option<Presumed>) {
        use crate::protocol::{ToBroker, ToHost};
        let instance_id = run.instance_id;
        // The attach and the instance's hello in one write: the broker hands both to the worker
        // that supervises the run, which answers with its welcome.
        let mut frames = crate::protocol::encode(&Request::Attach { instance_id });
        frames.extend_from_slice(&crate::protocol::encode(&ToBroker::Hello {
            version: crate::protocol::VERSION,
            min_version: Some(crate::protocol::MIN_VERSION),
            instance_id,
        }));
        let run_file = self.claim_run_file(instance_id);
        let attached = Client::connect_kept(self.manifest.app_id()).and_then(|client| {
            let mut stream = client
                .into_stream()
                .map_err(|e| Error::state(format!("cannot use the run's connection: {e}")))?;
            let welcome = std::io::Write::write_all(&mut stream, &frames)
                .and_then(|()| crate::protocol::read_frame::<ToHost>(&mut stream));
            match welcome {
                Ok(Some(ToHost::Welcome {
                    canceled,
                    network_granted,
                    ..
                })) => Ok((stream, canceled, network_granted)),
                other => Err(Error::state(format!(
                    "the broker did not welcome this process: {other:?}"
                ))),
            }
        });
        match attached {
            Ok((stream, canceled, network_granted)) => {
                self.run_here(stream, run, run_file, canceled, network_granted, presumed);
            }
            Err(e) => {
                crate::runfile::RunFile::discard(run_file);
                log::warn!(target: "btb", "instance {instance_id} was handed to this process, but it cannot attach to the broker: {e}");
            }
        }
    }

    /// Keeps one connection ready for the broker to start runs on (`Request::Ready`): a run
    /// then starts with a single message, and the connection serves the next run once this one
    /// has finished. `btb-run-reader` reads it (each run, then that run's cancellations) and
    /// `btb-runner` runs what it reads; the first connection and both threads are up when this
    /// returns (before any run comes). They end with the feed of `generation` (the broker went
    /// away) or with the client; a connection that ends otherwise (a run abandoned after its
    /// grace, or taken back) is replaced.
    fn start_runner(self: &Arc<Self>, generation: u64, first: Result<Greeting>) {
        let Some(mut runs) = self.keep_ready(first) else {
            return;
        };
        let weak = Arc::downgrade(self);
        let runner = move || {
            loop {
                while let Ok((instance, presumed)) = runs.recv() {
                    let Some(remote) = weak.upgrade() else { return };
                    remote.execute(&instance, presumed);
                }
                let Some(remote) = weak.upgrade() else { return };
                if remote.feed_generation.load(Ordering::Acquire) != generation {
                    return;
                }
                match remote.ready_connection() {
                    Some(next) => runs = next,
                    None => return,
                }
            }
        };
        if let Err(e) = self.threads.spawn("btb-runner", runner) {
            log::warn!(target: "btb", "cannot start the runner thread (runs will attach instead): {e}");
        }
    }

    /// Opens a ready connection and starts the thread that reads it; the runs it reads come on
    /// the returned channel, which ends with the connection. `None` when closed or unreachable.
    fn ready_connection(self: &Arc<Self>) -> Option<std::sync::mpsc::Receiver<ForRunner>> {
        if self.is_closed() {
            return None;
        }
        self.keep_ready(Client::greet(
            self.manifest.app_id(),
            true,
            &[Request::Ready],
        ))
    }

    /// [`Self::ready_connection`] for a connection greeted with its `Ready` already sent.
    fn keep_ready(
        self: &Arc<Self>,
        greeting: Result<Greeting>,
    ) -> Option<std::sync::mpsc::Receiver<ForRunner>> {
        if self.is_closed() {
            return None;
        }
        let ready = greeting
            .and_then(Greeting::welcome)
            .and_then(|c| {
                c.into_stream()
                    .map_err(|e| Error::state(format!("cannot use a connection: {e}")))
            })
            .and_then(|stream| {
                let link = stream
                    .try_clone()
                    .map_err(|e| Error::state(format!("cannot use a connection: {e}")))?;
                Ok((link, stream))
            });
        let (link, reader) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                log::info!(target: "btb", "app {:?}: no connection ready for runs (runs will attach instead): {e}", self.manifest.app_id());
                return None;
            }
        };
        {
            // Checked under the slot's lock: `close` (which sets `closed` first) either finds
            // this connection there, or it is not kept.
            let mut slot = lock(&self.runner_socket);
            if self.is_closed() {
                let _ = link.shutdown(std::net::Shutdown::Both);
                return None;
            }
            *slot = link.try_clone().ok();
        }
        // One run at a time on a ready connection: the broker starts the next one there only
        // after this one finished.
        let (tx, rx) = std::sync::mpsc::sync_channel::<ForRunner>(1);
        let reading = Arc::downgrade(self);
        self.threads
            .spawn("btb-run-reader", move || {
                read_runs(&reading, link, reader, &tx);
            })
            .ok()?;
        Some(rx)
    }

    /// Runs a handed instance here, reporting over `stream` in the instance protocol.
    fn run_here(
        self: &Arc<Self>,
        stream: UnixStream,
        run: HandedRun,
        run_file: Option<crate::runfile::RunFile>,
        canceled: Option<u32>,
        network_granted: bool,
        presumed: Option<Presumed>,
    ) {
        let (Ok(mut reader), Ok(stop)) = (stream.try_clone(), stream.try_clone()) else {
            return;
        };
        let instance = self.handed_instance(stream, run, run_file, canceled, network_granted);
        // The run's cancellations are read by a thread of this run's, joined when it ends.
        std::thread::scope(|scope| {
            let hearing = std::thread::Builder::new()
                .name("btb-run-reader".into())
                .spawn_scoped(scope, || {
                    crate::link::hear_cancellations(&mut reader, |reason| {
                        instance.canceled_by_broker(reason);
                        self.handlers_moved(); // a run waiting for its handler hears it too
                    });
                });
            if let Err(e) = hearing {
                log::warn!(target: "btb", "instance {}: cannot start the thread that hears its cancellation: {e}", instance.instance_id());
            }
            self.execute(&instance, presumed);
            // Its end is said: stop reading (even if the broker does not hang up now).
            let _ = stop.shutdown(std::net::Shutdown::Read);
        });
    }

    /// Queues a run handed over the feed for a run thread (at most [`RUN_THREADS`], started
    /// as needed; each ends when the queue is empty).
    fn queue_run(self: &Arc<Self>, run: HandedRun) {
        let presumed = self.presume();
        let mut handed = lock(&self.handed);
        if self.is_closed() || handed.queue.len() >= HANDED_QUEUE {
            log::warn!(target: "btb", "instance {} was handed to this process, which has {} runs waiting already: not taken", run.instance_id, handed.queue.len());
            return;
        }
        handed.queue.push_back((run, presumed));
        if handed.threads >= RUN_THREADS {
            return;
        }
        handed.threads += 1;
        drop(handed);
        let weak = Arc::downgrade(self);
        let spawned = self.threads.spawn("btb-run", move || {
            while let Some(remote) = weak.upgrade() {
                let next = {
                    let mut handed = lock(&remote.handed);
                    let next = handed.queue.pop_front();
                    if next.is_none() {
                        handed.threads -= 1;
                    }
                    next
                };
                let Some((run, presumed)) = next else { return };
                remote.run_handed(run, presumed);
            }
        });
        if let Err(e) = spawned {
            lock(&self.handed).threads -= 1;
            log::error!(target: "btb", "cannot start a thread for a run handed to this process: {e}");
        }
    }

    /// The instance of a handed run, reporting over `stream`.
    /// `canceled` and `network_granted` come with the run or in the broker's welcome.
    fn handed_instance(
        self: &Arc<Self>,
        stream: UnixStream,
        run: HandedRun,
        run_file: Option<crate::runfile::RunFile>,
        canceled: Option<u32>,
        network_granted: bool,
    ) -> crate::Instance {
        let record = self.remember(run.task);
        let instance = crate::Instance::with_sink(
            run.instance_id,
            Registration::new(Arc::clone(self) as Arc<dyn Backend>, record),
            run.trigger_details,
            run.started_ms,
            run.attempt,
            Arc::new(crate::link::Link::with_run_file(stream, run_file)),
        );
        instance
            .0
            .network_granted
            .store(network_granted, Ordering::Release);
        if let Some(r) = canceled {
            instance.canceled_by_broker(crate::link::cancellation_reason(r));
        }
        instance
    }

    /// This process's handlers changed, or it stopped presuming: a handed run waiting for its
    /// handler looks again.
    fn handlers_moved(&self) {
        lock(&self.offered.0).changes += 1;
        self.offered.1.notify_all();
    }

    /// A run was handed to this process: counted as taken on presumption if it presumes (under
    /// the lock `stop_presuming` flips the flag under, so `serve_activation` waits for it).
    fn presume(self: &Arc<Self>) -> Option<Presumed> {
        let mut offered = lock(&self.offered.0);
        if !self.presuming.load(Ordering::Acquire) {
            return None;
        }
        offered.presumed += 1;
        Some(Presumed(Arc::downgrade(self)))
    }

    /// Stops taking runs before their handlers are registered (`serve_activation` was called):
    /// the broker is told, and a run waiting for its handler looks a last time. (`close` needs
    /// no call: a waiting run sees the system closed.)
    fn stop_presuming(&self) {
        let was = {
            let _offered = lock(&self.offered.0);
            self.presuming.swap(false, Ordering::AcqRel)
        };
        if was {
            self.send_offer();
            self.handlers_moved();
        }
    }

    /// Waits until the runs taken on presumption have ended (`false` at `deadline`): the
    /// broker's count of what is left for this process does not see them.
    fn await_presumed(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let (offered, waited) = self
            .offered
            .1
            .wait_timeout_while(lock(&self.offered.0), left, |o| o.presumed > 0)
            .unwrap_or_else(PoisonError::into_inner);
        drop(offered);
        !waited.timed_out()
    }

    /// What runs `record` here: this process's handlers, or — once it took the store over — the
    /// broker's it became (they moved there).
    fn resolve_current(&self, record: &TaskRecord) -> std::result::Result<crate::Handler, String> {
        match self.taken.get() {
            Some(broker) => crate::broker::resolve(Backend::handler_table(&**broker), record, true),
            None => crate::broker::resolve(&self.handlers, record, true),
        }
    }

    /// The handler of a run handed to this process while it presumed (it was started for
    /// background work and handed the run before registering its handlers): waits until the
    /// handler is registered, the process serves or closes, or the activation timeout passes.
    fn await_handler(
        &self,
        instance: &crate::Instance,
    ) -> std::result::Result<crate::Handler, String> {
        let record = instance.task().record();
        let deadline = Instant::now()
            + Duration::from_millis(u64::from(self.options.policy.activation_timeout_ms));
        let resolve = || self.resolve_current(record);
        let why = loop {
            let seen = lock(&self.offered.0).changes;
            let found = resolve();
            if found.is_ok() {
                return found;
            }
            if self.is_closed() {
                break "closed".to_owned();
            }
            if instance.canceled() {
                break "was canceled".to_owned();
            }
            if !self.presuming.load(Ordering::Acquire) {
                break "called serve_activation".to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (count, waited) = self
                .offered
                .1
                .wait_timeout_while(lock(&self.offered.0), left, |o| o.changes == seen)
                .unwrap_or_else(PoisonError::into_inner);
            drop(count);
            if waited.timed_out() {
                break format!(
                    "let its activation timeout ({} ms) pass",
                    self.options.policy.activation_timeout_ms
                );
            }
        };
        resolve().map_err(|e| {
            format!(
                "{e} (in process {}, which was started for it and {why} without registering one)",
                std::process::id()
            )
        })
    }

    /// Runs a handed instance with this process's handler for it, and ends it.
    /// `presumed`: it was handed while this process presumed (counted until it ends).
    fn execute(&self, instance: &crate::Instance, presumed: Option<Presumed>) {
        let record = instance.task().record();
        let mut resolved = self.resolve_current(record);
        let presumed = presumed.filter(|_| resolved.is_err());
        if presumed.is_some() {
            resolved = self.await_handler(instance);
        }
        match resolved {
            Ok(crate::Handler::Call(run)) => {
                let call = AppCall::enter();
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(instance)));
                drop(call);
                if let Err(panic) = result {
                    instance.report_failure(format!(
                        "the run function panicked: {}",
                        crate::broker::panic_message(&panic)
                    ));
                }
            }
            Ok(crate::Handler::Queued) => instance.report_failure(format!(
                "the handler in client process {} is a pull-queue handler, which only the broker's process serves",
                std::process::id()
            )),
            // Canceled while it waited: it ends canceled, no failure of its own.
            Err(_) if presumed.is_some() && instance.canceled() => {}
            Err(message) if presumed.is_some() => instance.report_failure(message),
            Err(message) => instance.report_failure(format!(
                "{message} (in client process {}, which offered to run it)",
                std::process::id()
            )),
        }
        let _ = instance.finish_run();
        drop(presumed); // ended: `serve_activation` may go on
    }

    /// Delivers one notice to this process's handlers (on the feed thread, no lock held).
    fn deliver(self: &Arc<Self>, notice: Reply) {
        if !matches!(notice, Reply::Progress { .. }) {
            self.stir();
        }
        type Call = Box<dyn Fn(&crate::Registration)>;
        let (task_id, call): (Uuid, Call) = match notice {
            Reply::Progress {
                task_id,
                instance_id,
                value,
            } => {
                let list = self.handlers().progress.get(&task_id).cloned();
                let Some(list) = list else { return };
                (
                    task_id,
                    Box::new(move |r| {
                        for (_, h) in &list {
                            h(r, instance_id, value);
                        }
                    }),
                )
            }
            Reply::Run { run } => {
                self.queue_run(*run);
                return;
            }
            Reply::Completed {
                task_id,
                completion,
            } => {
                let list = self.handlers().completed.get(&task_id).cloned();
                let Some(list) = list else { return };
                (
                    task_id,
                    Box::new(move |r| {
                        for (_, h) in &list {
                            h(r, &completion);
                        }
                    }),
                )
            }
            _ => return,
        };
        let record = lock(&self.records).get(&task_id).cloned();
        let record = match record {
            Some(r) => r,
            None => match self.ask(&Request::Registrations {
                filter: crate::control::Filter::Task { task_id },
            }) {
                Ok(Reply::Registrations { mut records }) if !records.is_empty() => {
                    self.remember(records.remove(0))
                }
                _ => return, // unregistered meanwhile: nothing to hand the handlers
            },
        };
        let registration = Registration::new(Arc::clone(self) as Arc<dyn Backend>, record);
        let _call = AppCall::enter();
        if let Err(panic) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&registration)))
        {
            log::error!(target: "btb", "a handler panicked: {}", crate::broker::panic_message(&panic));
        }
    }

    /// Something happened that may change the runs left for this process (see `activity`).
    fn stir(&self) {
        // A call that starts serving after this load asks the broker after it, too.
        if self.serving.load(Ordering::SeqCst) == 0 {
            return;
        }
        *lock(&self.activity.0) += 1;
        self.activity.1.notify_all();
    }

    /// Closes the client (and the broker it became): later calls fail with `STATE`. Its threads
    /// end (their connections are shut down) and are joined, waiting at most the grace plus a
    /// margin for those in app code (a run function, a handler that blocks), which are then
    /// abandoned, named in the log.
    pub(crate) fn close(&self) -> Result<()> {
        let moving = lock(&self.moving); // not in the middle of a takeover
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // After the flag: a `serve_activation` that wakes finds the system closed, and returns;
        // a run waiting for its handler fails.
        self.stir();
        self.handlers_moved();
        let deadline = Instant::now()
            + Duration::from_millis(u64::from(self.options.policy.grace_ms))
            + crate::broker::CLOSE_MARGIN;
        if let Some(stop) = lock(&self.feed_socket).take() {
            let _ = stop.shutdown(std::net::Shutdown::Both);
        }
        // Let go before waiting for the threads: the feed thread may be about to recover (and
        // find the client closed).
        drop(moving);
        lock(&self.handed).queue.clear();
        drop(lock(&self.conn).take());
        if let Some(ready) = lock(&self.runner_socket).take() {
            let _ = ready.shutdown(std::net::Shutdown::Both);
        }
        let abandoned = self.threads.join_until(deadline);
        if !abandoned.is_empty() {
            log::warn!(
                target: "btb",
                "app {:?}: the client closed without waiting for {} thread(s) still in app code: {}",
                self.manifest.app_id(),
                abandoned.len(),
                abandoned.join(", ")
            );
        }
        let handlers = std::mem::take(&mut *self.handlers_mut());
        drop(handlers);
        match self.taken.get() {
            Some(broker) => broker.close(),
            None => Ok(()),
        }
    }
}

/// Reads notices until the feed ends; then, if the client is still open, recovers.
fn feed_loop(weak: &Weak<Remote>, mut feed: Subscription, generation: u64) {
    while let Some(notice) = feed.next_notice() {
        let Some(remote) = weak.upgrade() else { return };
        remote.deliver(notice);
    }
    let Some(remote) = weak.upgrade() else { return };
    {
        // Under `moving`, which a recovery holds while it starts a feed: this one's end never
        // marks a newer feed dead.
        let _moving = lock(&remote.moving);
        if remote.is_closed() || remote.feed_generation.load(Ordering::Acquire) != generation {
            return; // closing, or another thread already recovered
        }
        remote.feed_live.store(false, Ordering::Release);
    }
    // The broker went away: the request connection is dead too.
    drop(lock(&remote.conn).take());
    if let Err(e) = remote.recover() {
        log::warn!(target: "btb", "app {:?}: the broker went away and this client could not recover: {e}", remote.manifest.app_id());
    }
    // Notices of the time without a feed are lost: a `serve_activation` waiting asks again.
    remote.stir();
}

/// Answers a request in this process's own broker (after a takeover).
fn answer_locally(broker: &Arc<Broker>, request: &Request) -> Result<Reply> {
    match broker.answer(request.clone()) {
        Reply::Error { kind, message } => Err(Error::new(ErrorKind::named(&kind), message)),
        reply => Ok(reply),
    }
}

/// A client's feed and first ready connection, greeted with the request connection (their
/// hellos, the subscribe and the `Ready` sent; the answers not read yet): the three connections
/// of a client cost one round trip, not four in a row.
struct Greeted {
    feed: Result<Greeting>,
    ready: Result<Greeting>,
    /// The offer sent on the feed with its hello and subscription.
    offer: crate::control::Offer,
}

impl Greeted {
    /// Greets the feed — its subscription and this process's offer in the same write, so that
    /// the broker knows what it runs (an app it started for background work: that it takes the
    /// runs it was started for, SPEC §12) before its first answer is read — and a ready
    /// connection.
    fn send(app_id: &str, offer: crate::control::Offer) -> Greeted {
        // The ready connection first: a run the offer brings at once finds it pooled.
        let ready = Client::greet(app_id, true, &[Request::Ready]);
        Greeted {
            feed: Client::greet(
                app_id,
                false,
                &[
                    Request::Subscribe,
                    Request::Offer {
                        offer: offer.clone(),
                    },
                ],
            ),
            ready,
            offer,
        }
    }
}

/// Connects to the broker of a store that another system holds, waiting for it to bind its
/// socket; if the holder lets go of the store meanwhile, takes it (`Ok(Err(store))`). With the
/// request connection, greets the feed and the first ready connection (dropped when the broker
/// serves another store).
fn reach(
    manifest: &Manifest,
    options: &SystemOptions,
    canonical: &str,
    in_use: Error,
    offer: &crate::control::Offer,
) -> Result<std::result::Result<(Client, Greeted), Store>> {
    let app_id = manifest.app_id();
    let deadline = Instant::now() + REACH_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let reached = Client::greet(app_id, true, &[]).and_then(|request| {
            // A broker is there: the other two connections are greeted before its answer is read.
            let greeted = Greeted::send(app_id, offer.clone());
            Ok((request.welcome()?, greeted))
        });
        let why = match reached {
            Ok((client, greeted)) if client.broker_store.as_deref() == Some(canonical) => {
                return Ok(Ok((client, greeted)));
            }
            Ok((client, _)) => {
                return Err(Error::store(
                    canonical,
                    format!(
                        "{}; the broker listening for app {app_id:?} (pid {}) serves {}, not this \
                         store, so this process cannot be its client",
                        in_use.message(),
                        client.broker_pid,
                        client
                            .broker_store
                            .as_deref()
                            .map_or_else(|| "no store".to_owned(), |s| format!("store {s}")),
                    ),
                ));
            }
            Err(e) => e,
        };
        // A broker that listens where this process does not look (another runtime directory)
        // cannot be reached by waiting.
        if let Ok(ours) = crate::control::socket_path(app_id)
            && let Some(theirs) = crate::socket_note::elsewhere(canonical, &ours)
        {
            return Err(Error::store(
                canonical,
                format!(
                    "{}; its broker listens on {}, but this process looks for it at {} (the two \
                     processes see different XDG_RUNTIME_DIRs: give this one the broker's, SPEC §10)",
                    in_use.message(),
                    theirs.display(),
                    ours.display()
                ),
            ));
        }
        // The holder may be starting (its socket comes after the store) or gone.
        match Store::try_open(&options.store, app_id, options.policy.durability)? {
            Ok(store) => return Ok(Err(store)),
            Err(_) if Instant::now() < deadline => {
                // A short, growing pause: the other process is between taking the store and
                // binding its socket, which nothing here can wait on.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(held) => {
                return Err(Error::new(
                    held.error.kind(),
                    format!(
                        "{}; and its broker does not answer on its control socket within {} s ({}), \
                         so this process cannot be its client",
                        in_use.message(),
                        REACH_TIMEOUT.as_secs(),
                        why.message()
                    ),
                ));
            }
        }
    }
}

impl crate::broker::groups::GroupObserver for Remote {
    fn groups_changed(self: Arc<Self>) {
        // A client that took the store over: its broker observes for itself.
        if self.taken.get().is_none() {
            self.send_offer();
        }
        self.handlers_moved(); // a run waiting for a group's handler looks again
    }
}

/// A client: every call is a request to its broker (`ask`), and goes to this process's own
/// broker once it took the store over.
impl Backend for Remote {
    fn current(self: Arc<Self>) -> Arc<dyn Backend> {
        match self.taken.get() {
            Some(broker) => Arc::clone(broker) as Arc<dyn Backend>,
            None => self,
        }
    }

    fn is_broker(&self) -> bool {
        false
    }

    fn close(self: Arc<Self>) -> Result<()> {
        Remote::close(&self)
    }

    fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.manifest)
    }

    fn app_id(&self) -> &str {
        self.manifest.app_id()
    }

    fn policy(&self) -> &crate::policy::Policy {
        &self.options.policy
    }

    fn clock(&self) -> &crate::clock::Clock {
        &self.options.clock
    }

    fn is_simulated(&self) -> bool {
        self.options.simulated
    }

    fn store_path(&self) -> &str {
        Remote::store_path(self)
    }

    /// A client reaches its broker through the broker's socket.
    fn control_socket(&self) -> Result<std::path::PathBuf> {
        crate::control::socket_path(self.manifest.app_id())
    }

    fn broker_pid(&self) -> u32 {
        Remote::broker_pid(self)
    }

    fn is_closed(&self) -> bool {
        Remote::is_closed(self)
    }

    fn check(&self) -> Result<()> {
        self.check_open()
    }

    /// Its broker runs: nothing to start.
    fn start(self: Arc<Self>) -> Result<()> {
        self.check_open()
    }

    fn handler_table(&self) -> &RwLock<Handlers> {
        &self.handlers
    }

    fn offer(self: Arc<Self>) {
        self.send_offer();
        self.handlers_moved();
    }

    fn register(self: Arc<Self>, builder: &crate::model::Builder) -> Result<Arc<TaskRecord>> {
        let this: Arc<dyn Backend> = Arc::clone(&self) as Arc<dyn Backend>;
        let activation = this.has_activation(builder.task_group.as_ref().map(|g| g.id.as_str()));
        match self.ask(&Request::Register {
            builder: builder.clone(),
            activation,
        })? {
            Reply::Registered { record } => Ok(self.remember(record)),
            other => Err(unexpected(&other)),
        }
    }

    fn unregister(self: Arc<Self>, task_id: &Uuid, cancel_task: bool) -> Result<()> {
        self.ask(&Request::Unregister {
            task: task_id.to_string(),
            cancel_task,
        })?;
        self.forget(task_id);
        Ok(())
    }

    fn list(self: Arc<Self>, filter: crate::control::Filter) -> Result<Vec<Arc<TaskRecord>>> {
        match self.ask(&Request::Registrations { filter })? {
            Reply::Registrations { records } => Ok(records
                .into_iter()
                .map(|record| self.remember(record))
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    fn all_task_groups(self: Arc<Self>) -> Result<Vec<crate::model::TaskGroup>> {
        match self.ask(&Request::Groups)? {
            Reply::Groups { groups } => Ok(groups),
            other => Err(unexpected(&other)),
        }
    }

    fn history(self: Arc<Self>, task_id: &Uuid) -> Result<Vec<crate::model::RunRecord>> {
        match self.ask(&Request::RunHistory { task_id: *task_id })? {
            Reply::History { runs } => Ok(runs),
            other => Err(unexpected(&other)),
        }
    }

    fn due(self: Arc<Self>, task_id: &Uuid) -> Result<(Option<i64>, bool)> {
        match self.ask(&Request::Due { task_id: *task_id })? {
            Reply::Due { next_due_ms, spent } => Ok((next_due_ms, spent)),
            other => Err(unexpected(&other)),
        }
    }

    fn request(
        self: Arc<Self>,
        trigger_id: &Uuid,
        arguments: Option<serde_json::Value>,
    ) -> Result<crate::model::ApplicationTriggerResult> {
        crate::broker::backend::check_arguments(arguments.as_ref())?;
        match self.ask(&Request::Request {
            trigger_id: *trigger_id,
            arguments,
        })? {
            Reply::Requested { result } => Ok(result),
            other => Err(unexpected(&other)),
        }
    }

    /// A client holds what it registered or listed.
    fn holds_application_trigger(&self, id: &Uuid) -> bool {
        !Remote::is_closed(self) && self.knows_application_trigger(id)
    }

    fn raise_event(self: Arc<Self>, event: crate::model::SystemTriggerType) -> Result<usize> {
        fired(self.ask(&Request::Raise { event })?)
    }

    fn signal_event(self: Arc<Self>, name: &str) -> Result<usize> {
        fired(self.ask(&Request::Signal {
            name: name.to_owned(),
        })?)
    }

    fn set_state(
        self: Arc<Self>,
        condition: crate::model::SystemConditionType,
        value: bool,
    ) -> Result<()> {
        self.ask(&Request::SetState { condition, value }).map(drop)
    }

    fn state(
        self: Arc<Self>,
        condition: crate::model::SystemConditionType,
    ) -> Result<Option<bool>> {
        Ok(self.state_of(condition)?.0)
    }

    fn state_source(
        self: Arc<Self>,
        condition: crate::model::SystemConditionType,
    ) -> Result<&'static str> {
        Ok(self.state_of(condition)?.1)
    }

    fn background_work_cost(
        self: Arc<Self>,
    ) -> Result<Option<crate::model::BackgroundWorkCostValue>> {
        match self.ask(&Request::WorkCost)? {
            Reply::WorkCost { cost } => Ok(cost),
            other => Err(unexpected(&other)),
        }
    }

    fn wait_idle(&self, _timeout: Duration) -> Result<bool> {
        Err(crate::broker::backend::client_only_broker(
            Remote::broker_pid(self),
            "wait_idle",
        ))
    }

    fn next_event(&self, _timeout: Duration) -> Result<Option<crate::broker::Event>> {
        Err(crate::broker::backend::client_only_broker(
            Remote::broker_pid(self),
            "next_event",
        ))
    }

    fn serve_activation(self: Arc<Self>, timeout: Duration) -> Result<bool> {
        struct Serving<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Serving<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.serving.fetch_add(1, Ordering::SeqCst);
        let _serving = Serving(&self.serving);
        // What it serves is what it registered: a run it took before that and has no handler
        // for fails now, and the broker hands it nothing more on presumption.
        self.stop_presuming();
        let deadline = std::time::Instant::now() + timeout;
        if !self.await_presumed(deadline) {
            return Ok(false);
        }
        loop {
            // Read before asking: what happens during the question wakes the wait below.
            let seen = *lock(&self.activity.0);
            self.check_open()?;
            if let Some(broker) = self.taken.get() {
                // This process took the store over: its broker's runs end with no notice here.
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                return Arc::clone(broker).serve_activation(left);
            }
            let offer = self.current_offer();
            match self.ask(&Request::Waiting { offer })? {
                // Unless the store was taken over meanwhile: this process's handlers moved into
                // its broker, the offer asked with may be empty (the loop goes on there).
                Reply::Waiting { runs: 0 } if self.taken.get().is_none() => return Ok(true),
                Reply::Waiting { .. } => {}
                other => return Err(unexpected(&other)),
            }
            // A run left ends with a notice on the feed (a run's end, wherever it ran, is told to
            // every client's feed): ask again then, or when the system closes.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (count, waited) = self
                .activity
                .1
                .wait_timeout_while(lock(&self.activity.0), left, |n| *n == seen)
                .unwrap_or_else(PoisonError::into_inner);
            if waited.timed_out() && *count == seen {
                return Ok(false);
            }
        }
    }

    fn service(self: Arc<Self>, _manifest: Manifest) -> Result<bool> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "servicing is for the broker; this system is a client of the btb broker in pid {}",
                Remote::broker_pid(&self)
            ),
        ))
    }

    fn uninstall(self: Arc<Self>) -> Result<usize> {
        match self.ask(&Request::Uninstall)? {
            Reply::Uninstalled { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }
}

impl Remote {
    /// A condition's state and the name of its source, from the broker.
    fn state_of(
        self: &Arc<Self>,
        condition: crate::model::SystemConditionType,
    ) -> Result<(Option<bool>, &'static str)> {
        match self.ask(&Request::StateOf { condition })? {
            Reply::StateOf { state, source } => Ok((state, crate::platform::source_named(&source))),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::state(format!("the btb broker answered {reply:?}"))
}

fn fired(reply: Reply) -> Result<usize> {
    match reply {
        Reply::Fired { count } => Ok(count),
        other => Err(unexpected(&other)),
    }
}
