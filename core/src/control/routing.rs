//! Run routing: notices for subscribed clients, what each client offers to run, which client a
//! run is handed to, and the connections that carry handed runs to the broker's workers.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use uuid::Uuid;

use super::wire::{Offer, Reply};
use crate::protocol::{self, Decoder};

/// Notices for subscribed connections ([`Request::Subscribe`]), sent from any thread; what the
/// subscribed clients offer to run; and the runs waiting for a client to attach.
pub struct Broadcast {
    /// Frames for every subscriber (`None`) or for one connection, and their size in bytes
    /// (at most [`MAX_BROADCAST_QUEUED`] of notices for every subscriber).
    pub(super) queue: std::sync::Mutex<Notices>,
    /// Signalled when the serving thread took the queue.
    pub(super) drained: std::sync::Condvar,
    /// Wakes the serving thread to hand the queue out.
    pub(super) wake: OwnedFd,
    pub(super) subscribers: std::sync::atomic::AtomicUsize,
    /// By connection: the client's pid and offer.
    pub(super) offers: std::sync::Mutex<std::collections::HashMap<u64, (u32, Offer)>>,
    /// Runs handed to a client, waiting for its connection.
    /// (By the connection it was handed to: dropping the sender tells the waiting worker that
    /// the client went away.)
    pub(super) attaching: std::sync::Mutex<std::collections::HashMap<Uuid, (u64, Attached)>>,
    /// By client pid: connections waiting for a run ([`Request::Ready`]), each with the id of
    /// the serving thread's connection that watches it for its end (0: given back, not watched
    /// yet). The serving thread drops its watch when the entry goes, and the entry when its
    /// peer hangs up.
    pub(super) ready: std::sync::Mutex<std::collections::HashMap<u32, Vec<ReadyConn>>>,
    /// Called (on an answering thread, no lock held) when a client offers what it can run: runs
    /// that wait for a handler are tried again.
    pub(super) on_offer: std::sync::OnceLock<std::sync::Arc<dyn Fn() + Send + Sync>>,
    /// By client pid: how it took the runs handed to it (which client the next run goes to).
    pub(super) health: std::sync::Mutex<std::collections::HashMap<u32, Health>>,
    /// Counts runs handed to clients (round robin: the client handed one least recently first).
    pub(super) hands: std::sync::atomic::AtomicU64,
    /// The pid of the app process the broker started for background work (0: none): its offer
    /// may say [`Offer::activated`].
    pub(super) activated: std::sync::atomic::AtomicU32,
    /// A run is handed to that process on presumption and not settled: one at a time, on its
    /// ready connection (the others wait, parked, for its offer of their handlers).
    pub(super) presumed: std::sync::atomic::AtomicBool,
}

/// Notices waiting for the serving thread, in bytes: past this, [`Broadcast::send`] waits for the
/// serving thread to take them (it takes the whole queue on every wake-up and never blocks, so
/// only a burst between two wake-ups fills it) — at most [`MAX_BROADCAST_WAIT`], after which the
/// notice is dropped with a warning.
pub const MAX_BROADCAST_QUEUED: usize = 8 << 20;
/// How long [`Broadcast::send`] waits for room in a full queue.
pub const MAX_BROADCAST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Frames for every subscriber (`None`) or for one connection, and the bytes of those for every
/// subscriber.
#[derive(Default)]
pub(super) struct Notices {
    pub(super) frames: Vec<(Option<u64>, Vec<u8>)>,
    pub(super) bytes: usize,
}

/// A connection kept ready for a run: the id of its watch, the stream, and what it sent after
/// `Ready`.
pub(super) type ReadyConn = (u64, UnixStream, Decoder);

/// How a client process took the runs handed to it.
#[derive(Default, Clone, Copy)]
pub(super) struct Health {
    /// When it was last handed a run (a value of `Broadcast::hands`).
    last_hand: u64,
    /// Runs handed to it that it has not started yet.
    unstarted: usize,
    /// It let a start deadline pass and has shown no sign of life since (a new ready connection,
    /// an offer, a run started).
    stalled: bool,
}

/// How a run handed to a client ended its start ([`Broadcast::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The client started it (its hello or attach came).
    Started,
    /// The client let the start deadline pass: the run was taken back.
    Missed,
    /// The run ended otherwise before it started (abandoned, or the client went away).
    Dropped,
}

/// The client [`Broadcast::pick`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Its feed connection.
    pub conn: u64,
    pub pid: u32,
    /// It says hello before it runs a run started on a ready connection ([`Offer::starts`]).
    pub starts: bool,
    /// It let a start deadline pass and showed no sign of life since.
    pub stalled: bool,
    /// Picked on presumption: the app the broker started, before it offered this handler
    /// ([`Offer::activated`]); hand it the run with [`Broadcast::presume`].
    pub presumed: bool,
}

/// Where a client's connection for a run goes: the connection and the bytes it sent after its
/// `Attach` request (the start of the instance protocol).
pub type Attached = std::sync::mpsc::Sender<(UnixStream, Decoder)>;

pub(super) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broadcast {
    /// An empty one, which wakes the serving thread through `wake` (an eventfd).
    pub(super) fn new(wake: OwnedFd) -> Broadcast {
        Broadcast {
            queue: Default::default(),
            drained: Default::default(),
            wake,
            subscribers: 0.into(),
            offers: Default::default(),
            attaching: Default::default(),
            ready: Default::default(),
            on_offer: Default::default(),
            health: Default::default(),
            hands: 0.into(),
            activated: 0.into(),
            presumed: false.into(),
        }
    }

    /// Sets what is called when a client offers what it can run (once).
    pub fn set_on_offer(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_offer.set(std::sync::Arc::from(f));
    }

    /// Queues `notice` for every subscriber (nothing, and no wake-up, while there is none); waits
    /// while [`MAX_BROADCAST_QUEUED`] bytes of notices are queued already (call it with no lock held).
    pub fn send(&self, notice: &Reply) {
        if self.subscribers.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        let frame = protocol::encode(notice);
        let mut queue = locked(&self.queue);
        let give_up = std::time::Instant::now() + MAX_BROADCAST_WAIT;
        while queue.bytes > 0 && queue.bytes + frame.len() > MAX_BROADCAST_QUEUED {
            // The serving thread takes the whole queue on its next wake-up (already signalled).
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                drop(queue);
                log::warn!(target: "btb", "control socket: {MAX_BROADCAST_QUEUED} bytes of notices have waited {} s for the serving thread: a notice is dropped", MAX_BROADCAST_WAIT.as_secs());
                return;
            }
            queue = self
                .drained
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        queue.bytes += frame.len();
        queue.frames.push((None, frame));
        drop(queue);
        self.wake();
    }

    /// The subscribed client that can run a task best, at least as well as `fit` (see
    /// [`Offer::covers`]), leaving out the processes in `besides`: among those that fit best,
    /// one that has not let a start deadline pass, then one with the fewest runs handed to it
    /// and not started, then the one handed a run least recently (round robin), then the
    /// longest-connected. Its connection, pid and whether it starts runs ([`Offer::starts`]);
    /// also how many clients there are.
    pub fn pick(
        &self,
        entry_point: Option<&str>,
        group: Option<&str>,
        fit: u8,
        besides: &[u32],
    ) -> (Option<Picked>, usize) {
        // Presumption, only while no run handed on it is unsettled and the app has a ready
        // connection for the next.
        let activated = match self.activated.load(std::sync::atomic::Ordering::Acquire) {
            0 => 0,
            _ if self.presumed.load(std::sync::atomic::Ordering::Acquire) => 0,
            pid => pid,
        };
        let offers = locked(&self.offers);
        let activated = if activated != 0
            && locked(&self.ready)
                .get(&activated)
                .is_some_and(|conns| !conns.is_empty())
        {
            activated
        } else {
            0
        };
        let health = locked(&self.health);
        let best = offers
            .iter()
            .filter(|(_, (pid, _))| !besides.contains(pid))
            .map(|(conn, (pid, offer))| {
                let h = health.get(pid).copied().unwrap_or_default();
                // The app started for background work takes what it was started for before it
                // registers its handlers — as a resolver would: a handler by name comes first.
                let covers = offer.covers(entry_point, group);
                let presumed = covers == 0 && offer.activated && *pid == activated;
                let fit = if presumed { 1 } else { covers };
                (
                    (
                        fit,
                        !h.stalled,
                        std::cmp::Reverse(h.unstarted),
                        std::cmp::Reverse(h.last_hand),
                        std::cmp::Reverse(*conn),
                    ),
                    Picked {
                        conn: *conn,
                        pid: *pid,
                        starts: offer.starts,
                        stalled: h.stalled,
                        presumed,
                    },
                )
            })
            .filter(|(rank, _)| rank.0 >= fit.max(1))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, picked)| picked);
        (best, offers.len())
    }

    /// The app process the broker started for background work is `pid` (0: none now).
    pub fn set_activated(&self, pid: u32) {
        self.activated
            .store(pid, std::sync::atomic::Ordering::Release);
    }

    /// Takes the one hand-over on presumption (`false`: another run holds it); give it back
    /// with [`Broadcast::unpresume`] once that run is settled.
    pub fn presume(&self) -> bool {
        self.presumed
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// The run handed on presumption is settled (started, ended, or never handed).
    pub fn unpresume(&self) {
        self.presumed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// A run is being handed to client process `pid` (settle it with [`Broadcast::settle`]).
    pub fn handing(&self, pid: u32) {
        let hand = self.hands.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        let mut health = locked(&self.health);
        let h = health.entry(pid).or_default();
        h.last_hand = hand;
        h.unstarted += 1;
    }

    /// How a run handed to client process `pid` ended its start.
    pub fn settle(&self, pid: u32, start: Start) {
        let mut health = locked(&self.health);
        if let Some(h) = health.get_mut(&pid) {
            h.unstarted = h.unstarted.saturating_sub(1);
            match start {
                Start::Started => h.stalled = false,
                Start::Missed => h.stalled = true,
                Start::Dropped => {}
            }
        }
    }

    /// Client process `pid` showed a sign of life (a new ready connection, an offer).
    pub(super) fn alive(&self, pid: u32) {
        if let Some(h) = locked(&self.health).get_mut(&pid) {
            h.stalled = false;
        }
    }

    /// Hands a run to the client on connection `conn`; the connection it attaches for the run
    /// arrives on the returned channel, which is disconnected if that client goes away first.
    pub fn hand_run(
        &self,
        conn: u64,
        instance_id: Uuid,
        run: &Reply,
    ) -> std::sync::mpsc::Receiver<(UnixStream, Decoder)> {
        let (tx, rx) = std::sync::mpsc::channel();
        locked(&self.attaching).insert(instance_id, (conn, tx));
        // Not counted against the bound: one per run being handed, which workers bound.
        locked(&self.queue)
            .frames
            .push((Some(conn), protocol::encode(run)));
        self.wake();
        rx
    }

    /// A connection that client process `pid` keeps ready for a run, if it has one.
    pub fn take_ready(&self, pid: u32) -> Option<(UnixStream, Decoder)> {
        let (_, stream, decoder) = locked(&self.ready).get_mut(&pid)?.pop()?;
        self.wake(); // the serving thread drops its watch
        Some((stream, decoder))
    }

    /// Wakes the serving thread.
    fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Takes back a ready connection whose run finished, for the next run — if its client
    /// process still offers anything (else it is dropped: the client sees the end).
    pub fn give_back_ready(&self, pid: u32, stream: UnixStream, decoder: Decoder) {
        let offers = locked(&self.offers);
        if offers.values().any(|(p, _)| *p == pid) {
            locked(&self.ready)
                .entry(pid)
                .or_default()
                .push((0, stream, decoder));
            drop(offers);
            self.wake(); // the serving thread watches it again
        }
    }

    /// Forgets a run no client attached to.
    pub fn cancel_hand(&self, instance_id: &Uuid) {
        locked(&self.attaching).remove(instance_id);
    }

    /// Whether any connection subscribed.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast() -> Broadcast {
        Broadcast::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap())
    }

    fn offer(entry_points: &[&str], activated: bool) -> Offer {
        Offer {
            entry_points: entry_points.iter().map(|e| (*e).to_owned()).collect(),
            starts: true,
            activated,
            ..Offer::default()
        }
    }

    #[test]
    fn only_the_process_the_broker_started_takes_runs_before_offering_their_handlers() {
        let b = broadcast();
        // Both say `activated` (a child of the started app inherits its environment).
        locked(&b.offers).insert(1, (100, offer(&[], true)));
        locked(&b.offers).insert(2, (200, offer(&[], true)));
        assert_eq!(b.pick(Some("a.Run"), None, 1, &[]).0, None, "none started");
        b.set_activated(200);
        assert_eq!(
            b.pick(Some("a.Run"), None, 1, &[]).0,
            None,
            "no ready connection to hand it on"
        );
        let (ready, _peer) = UnixStream::pair().unwrap();
        locked(&b.ready)
            .entry(200)
            .or_default()
            .push((0, ready, Decoder::default()));
        let picked = b.pick(Some("a.Run"), None, 1, &[]).0.unwrap();
        assert_eq!((picked.pid, picked.presumed), (200, true));
        // One run at a time on presumption.
        assert!(b.presume());
        assert_eq!(b.pick(Some("a.Run"), None, 1, &[]).0, None, "one is out");
        assert!(!b.presume());
        b.unpresume();
        assert_eq!(
            b.pick(None, Some("g"), 1, &[]).0.unwrap().pid,
            200,
            "a group's too"
        );
        assert_eq!(
            b.pick(Some("a.Run"), None, 2, &[]).0,
            None,
            "as a resolver, not by name"
        );
        // A process offering the handler by name comes first.
        locked(&b.offers).insert(3, (300, offer(&["a.Run"], false)));
        let picked = b.pick(Some("a.Run"), None, 1, &[]).0.unwrap();
        assert_eq!((picked.pid, picked.presumed), (300, false));
        b.set_activated(0);
        assert_eq!(b.pick(Some("b.Run"), None, 1, &[]).0, None, "it exited");
    }
}
