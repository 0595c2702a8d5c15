//! The serving thread (`btb-control`): the listening socket and every connection in one `poll`.
//! It only moves bytes: it reads and decodes requests, answers the ones that need nothing but the
//! connection (hello, subscribe, offer, ready, attach), hands the others to the answerers
//! (`answer.rs`) and writes their answers when they come back. Every buffer it keeps is bounded
//! (`docs/limits.md`).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::sockopt;
use uuid::Uuid;

use super::answer::{Answerers, Job};
use super::routing::{Broadcast, locked};
use super::socket::{our_uid, peer_uid};
use super::wire::{Reply, Request, check_name};
use super::{IDLE_TIMEOUT, MAX_CONNECTIONS};
use crate::protocol::{self, Decoder};
use crate::{Error, ErrorKind};

/// Reply bytes a request connection may have unwritten before its next request is read: a peer
/// that sends requests without reading the replies is served no further until it reads.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Notice bytes a feed may have unwritten (beside what its socket buffer holds): a subscriber
/// that falls further behind is dropped, and its client sees the end of its feed.
pub const MAX_FEED_BACKLOG: usize = 4 << 20;
/// Unwritten output of every connection together: a reply that would pass it is answered with an
/// error instead (`STATE`, try again).
pub const MAX_OUTPUT_TOTAL: usize = 4 * protocol::MAX_REPLY;
/// Connections taken from the listen backlog between two polls, so that connections already
/// closed by their peers are reaped before more are taken (and never count against the cap).
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses when the process is out of file descriptors (or memory), unless a
/// connection closes sooner.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Reply to a peer of another uid.
const NOT_YOUR_BROKER: &str = "not your broker";

/// One connection being served.
struct Conn {
    /// Names the connection in [`Broadcast`] (offers, runs handed to it, ready connections).
    id: u64,
    /// The peer's pid.
    pid: u32,
    /// Attached to this run ([`Request::Attach`]): handed over to the broker.
    attach: Option<Uuid>,
    /// Waiting for a run ([`Request::Ready`]): once `pooled`, a clone waits in [`Broadcast`] and
    /// this copy only watches for the peer's end (and counts against the connection cap).
    ready: bool,
    /// Its clone is in [`Broadcast`]'s pool of ready connections.
    pooled: bool,
    /// A request of it is with the answerers: nothing more is read until its answer is written.
    busy: bool,
    /// The peer went away, or the watched ready connection was taken: drop without writing.
    gone: bool,
    stream: UnixStream,
    decoder: Decoder,
    /// Reply bytes not written yet.
    out: Vec<u8>,
    greeted: bool,
    /// A notice feed ([`Request::Subscribe`]).
    subscribed: bool,
    /// A client process's request connection: no idle deadline between requests.
    keep_alive: bool,
    /// Close once `out` is written.
    closing: bool,
    /// When it is closed if no complete request arrives (or, with output pending, if the peer
    /// does not read it); none while a request is answered, for a kept-alive connection or a
    /// subscriber that is up to date, and for a ready connection.
    deadline: Option<Instant>,
}

impl Conn {
    fn new(id: u64, pid: u32, stream: UnixStream, deadline: Option<Instant>) -> Conn {
        Conn {
            id,
            pid,
            attach: None,
            ready: false,
            pooled: false,
            busy: false,
            gone: false,
            stream,
            decoder: Decoder::default(),
            out: Vec::new(),
            greeted: false,
            subscribed: false,
            keep_alive: false,
            closing: false,
            deadline,
        }
    }

    fn reply(&mut self, reply: &Reply) {
        self.out.extend_from_slice(&protocol::encode(reply));
    }

    fn refuse(&mut self, kind: ErrorKind, message: String) {
        self.reply(&Reply::Error {
            kind: kind.name().to_owned(),
            message,
        });
        self.closing = true;
    }

    /// Whether its next request may be read and served now.
    fn takes_requests(&self) -> bool {
        !(self.closing
            || self.gone
            || self.busy
            || self.ready
            || self.attach.is_some()
            || self.out.len() > MAX_PENDING_OUTPUT)
    }
}

/// The serving thread's state.
pub(super) struct Server {
    listener: UnixListener,
    answerers: Arc<Answerers>,
    hello: Reply,
    broadcast: Arc<Broadcast>,
    uid: u32,
    conns: Vec<Conn>,
    next_id: u64,
    /// Accepting is paused until then (out of file descriptors).
    accept_paused: Option<Instant>,
}

impl Server {
    pub(super) fn new(
        listener: UnixListener,
        answerers: Arc<Answerers>,
        hello: Reply,
        broadcast: &Arc<Broadcast>,
    ) -> Server {
        Server {
            listener,
            answerers,
            hello,
            broadcast: Arc::clone(broadcast),
            uid: our_uid(),
            conns: Vec::new(),
            next_id: 0,
            accept_paused: None,
        }
    }

    pub(super) fn run(mut self, stop: &OwnedFd) {
        loop {
            let now = Instant::now();
            // A deadline only while connections are open (or accepting is paused): an idle broker
            // sleeps without one.
            let timeout = self
                .conns
                .iter()
                .filter_map(|c| c.deadline)
                .chain(self.accept_paused)
                .min()
                .map(|d| {
                    let left = d.saturating_duration_since(now);
                    rustix::time::Timespec {
                        tv_sec: left.as_secs() as i64,
                        tv_nsec: i64::from(left.subsec_nanos()),
                    }
                });
            let (stopped, accept, notices, answers, ready) = {
                let accepting = if self.accept_paused.is_some() {
                    PollFlags::empty()
                } else {
                    PollFlags::IN
                };
                let mut fds = vec![
                    PollFd::new(stop, PollFlags::IN),
                    PollFd::new(&self.listener, accepting),
                    PollFd::new(&self.broadcast.wake, PollFlags::IN),
                    PollFd::new(&self.answerers.wake, PollFlags::IN),
                ];
                for c in &self.conns {
                    // Input only from a connection whose next request may be served now: a
                    // closing, busy or backed-up one is not read, and polling it for input would
                    // wake this thread again and again for bytes it will not read. Hang-ups and
                    // errors are reported regardless.
                    let mut flags = if c.takes_requests() {
                        PollFlags::IN
                    } else {
                        PollFlags::empty()
                    };
                    if !c.out.is_empty() && !c.gone {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::from_borrowed_fd(c.stream.as_fd(), flags));
                }
                match poll(&mut fds, timeout.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        log::error!(target: "btb", "the control socket stopped: poll failed: {e}");
                        return;
                    }
                }
                let ready: Vec<PollFlags> = fds[4..].iter().map(PollFd::revents).collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    !fds[2].revents().is_empty(),
                    !fds[3].revents().is_empty(),
                    ready,
                )
            };
            if stopped {
                return;
            }
            if notices {
                self.hand_out_notices(Instant::now());
            }
            if answers {
                self.deliver_answers();
            }
            for (i, flags) in ready.iter().enumerate() {
                let c = &mut self.conns[i];
                if flags.intersects(PollFlags::HUP | PollFlags::ERR) && (c.busy || c.pooled) {
                    // Its answer (or run) has no one to go to.
                    c.gone = true;
                } else if flags.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.pump(i);
                }
            }
            self.watch_ready();
            if self
                .accept_paused
                .is_some_and(|until| until <= Instant::now())
            {
                self.accept_paused = None;
            }
            if accept {
                self.accept();
            }
            self.flush_and_reap(Instant::now());
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the pending connections
                    // wait; the listener stays readable, so polling it now would spin.
                    if self.accept_paused.is_none() {
                        log::warn!(target: "btb", "control socket: cannot accept a connection ({e}): pausing until one closes");
                    }
                    self.accept_paused = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            let pid = sockopt::socket_peercred(&stream)
                .map_or(0, |c| c.pid.as_raw_nonzero().get() as u32);
            let mut conn = Conn::new(
                self.next_id,
                pid,
                stream,
                Some(Instant::now() + IDLE_TIMEOUT),
            );
            match peer_uid(&conn.stream) {
                Ok(peer) if peer == self.uid => {}
                _ => conn.refuse(ErrorKind::Policy, NOT_YOUR_BROKER.to_owned()),
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                conn.refuse(
                    ErrorKind::State,
                    format!("the broker serves {MAX_CONNECTIONS} connections already; try again"),
                );
            }
            self.conns.push(conn);
        }
    }

    /// Serves what connection `i` sent, reading more while it takes requests. Its input is
    /// bounded: at most one frame ([`protocol::MAX_FRAME`], refused by its length prefix) plus
    /// one read is buffered, and nothing is read while a request of it is answered.
    fn pump(&mut self, i: usize) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if !self.serve_buffered(i) {
                return;
            }
            let conn = &mut self.conns[i];
            if !conn.takes_requests() {
                return;
            }
            match (&conn.stream).read(&mut buf) {
                Ok(0) => {
                    // The peer is done sending (maybe half-closed, still reading its replies).
                    conn.closing = true;
                    return;
                }
                Ok(n) => conn.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    conn.closing = true;
                    conn.out.clear();
                    return;
                }
            }
        }
    }

    /// Serves the whole requests connection `i` has buffered while it takes requests; false when
    /// it must not be read further (closing, refused).
    fn serve_buffered(&mut self, i: usize) -> bool {
        while self.conns[i].takes_requests() {
            let conn = &mut self.conns[i];
            match conn.decoder.next_framed::<Request>() {
                Ok(Some(protocol::Framed::Unreadable(e))) if conn.greeted => {
                    // A whole frame: the stream is still in step, so only this request fails.
                    conn.reply(&Reply::error(&Error::invalid(e)));
                }
                Ok(Some(protocol::Framed::Unreadable(e))) => {
                    conn.refuse(ErrorKind::InvalidArgument, e);
                    return false;
                }
                Ok(Some(protocol::Framed::Message(request))) => {
                    conn.deadline = (!conn.keep_alive).then(|| Instant::now() + IDLE_TIMEOUT);
                    if let Some(reply) = self.serve(i, request) {
                        self.conns[i].reply(&reply);
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    // Oversized (by its length prefix) or not JSON: the stream is out of step.
                    conn.refuse(ErrorKind::InvalidArgument, format!("{e}"));
                    return false;
                }
            }
        }
        true
    }

    /// Serves one request; `None` for one that is not answered here (an offer, a request handed
    /// to the answerers).
    fn serve(&mut self, i: usize, request: Request) -> Option<Reply> {
        let conn = &mut self.conns[i];
        if request == Request::Unknown && conn.greeted {
            // A newer client's: a notice on a feed is ignored, a request is answered.
            return (!conn.subscribed).then(|| {
                Reply::error(&Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "this broker (protocol versions {}–{}) does not know this request",
                        protocol::MIN_VERSION,
                        protocol::VERSION
                    ),
                ))
            });
        }
        if conn.subscribed
            && let Request::Offer { offer } = request
        {
            locked(&self.broadcast.offers).insert(conn.id, (conn.pid, offer));
            self.broadcast.alive(conn.pid);
            if let Some(on_offer) = self.broadcast.on_offer.get() {
                self.answerers.submit(Job::Offered(Arc::clone(on_offer)));
            }
            return None;
        }
        if conn.greeted
            && !conn.subscribed
            && let Request::Attach { instance_id } = request
        {
            conn.attach = Some(instance_id);
            conn.deadline = None;
            return None;
        }
        if conn.greeted && !conn.subscribed && request == Request::Ready {
            // Pooled once its replies are written (`flush_and_reap`): a run started on it must
            // not be interleaved with them.
            conn.ready = true;
            conn.deadline = None;
            return None;
        }
        if !conn.greeted {
            return Some(self.greet(i, request));
        }
        if conn.subscribed {
            // A feed only carries notices: a request on it is a confused client.
            conn.closing = true;
            return Some(Reply::error(&Error::invalid(
                "a subscribed connection takes no requests",
            )));
        }
        if request == Request::Subscribe {
            conn.subscribed = true;
            conn.deadline = None;
            self.broadcast
                .subscribers
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            return Some(Reply::Done);
        }
        if let Request::Signal { name } = &request
            && let Err(why) = check_name(name)
        {
            return Some(Reply::error(&Error::invalid(why)));
        }
        conn.busy = true;
        conn.deadline = None;
        self.answerers.submit(Job::Answer {
            conn: conn.id,
            request,
        });
        None
    }

    /// Answers the first request of a connection, which must be a hello.
    fn greet(&mut self, i: usize, request: Request) -> Reply {
        let conn = &mut self.conns[i];
        match request {
            Request::Hello {
                version,
                min_version,
                keep_alive,
            } => match protocol::negotiate(min_version, version) {
                Ok(chosen) => {
                    conn.greeted = true;
                    conn.keep_alive = keep_alive;
                    if keep_alive {
                        conn.deadline = None;
                    }
                    let mut hello = self.hello.clone();
                    if let Reply::Hello { version, .. } = &mut hello {
                        *version = chosen;
                    }
                    hello
                }
                Err(e) => {
                    conn.closing = true;
                    Reply::error(&Error::new(
                        ErrorKind::Unsupported,
                        format!("control protocol: {e}"),
                    ))
                }
            },
            _ => {
                conn.closing = true;
                Reply::error(&Error::invalid("the first request must be a hello"))
            }
        }
    }

    /// Writes the answers the answerers sent back into their connections' output, and serves
    /// what those connections sent meanwhile.
    fn deliver_answers(&mut self) {
        for (id, reply) in self.answerers.take() {
            // Gone meanwhile: the request took effect, its answer has no one to go to.
            let Some(i) = self.conns.iter().position(|c| c.id == id) else {
                continue;
            };
            let mut bytes = protocol::encode(&reply);
            let total: usize = self.conns.iter().map(|c| c.out.len()).sum();
            if total + bytes.len() > MAX_OUTPUT_TOTAL {
                bytes = protocol::encode(&Reply::error(&Error::state(format!(
                    "the broker has {total} bytes of replies unread by its clients; try again"
                ))));
            }
            let conn = &mut self.conns[i];
            conn.busy = false;
            if conn.out.is_empty() {
                conn.out = bytes; // no copy of a big reply
            } else {
                conn.out.extend_from_slice(&bytes);
            }
            conn.deadline = (!conn.keep_alive).then(|| Instant::now() + IDLE_TIMEOUT);
            if !conn.gone {
                self.pump(i);
            }
        }
    }

    /// Appends the queued notices to every subscriber's output; a subscriber that fell more
    /// than [`MAX_FEED_BACKLOG`] bytes behind is dropped (its client sees the end of its feed).
    fn hand_out_notices(&mut self, now: Instant) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.broadcast.wake, &mut count);
        let frames = std::mem::take(&mut *locked(&self.broadcast.queue)).frames;
        self.broadcast.drained.notify_all();
        for (to, bytes) in frames {
            let mut reached = false;
            for c in self
                .conns
                .iter_mut()
                .filter(|c| c.subscribed && !c.closing && !c.gone && to.is_none_or(|id| id == c.id))
            {
                reached = true;
                if !c.out.is_empty() && c.out.len() + bytes.len() > MAX_FEED_BACKLOG {
                    c.out = Vec::new();
                    c.gone = true;
                    continue;
                }
                c.out.extend_from_slice(&bytes);
                // A subscriber that does not read within the idle timeout is dropped too.
                c.deadline.get_or_insert(now + IDLE_TIMEOUT);
            }
            if let Some(gone) = to.filter(|_| !reached) {
                // A run handed to a client that left meanwhile: its worker hears so at once.
                locked(&self.broadcast.attaching).retain(|_, (conn, _)| *conn != gone);
            }
        }
    }

    /// Keeps the watches of ready connections in step with [`Broadcast`]: a watch whose
    /// connection was taken for a run (or dropped with its client's offer) goes; a connection
    /// given back after a run is watched again; one whose peer hung up leaves the pool.
    fn watch_ready(&mut self) {
        let hung_up: Vec<u64> = self
            .conns
            .iter()
            .filter(|c| c.pooled && c.gone)
            .map(|c| c.id)
            .collect();
        let mut ready = locked(&self.broadcast.ready);
        if !hung_up.is_empty() {
            for conns in ready.values_mut() {
                conns.retain(|(id, _, _)| !hung_up.contains(id));
            }
        }
        ready.retain(|_, conns| !conns.is_empty());
        let mut pooled = HashSet::new();
        for (pid, conns) in ready.iter_mut() {
            for (id, stream, _) in conns.iter_mut() {
                if *id == 0 {
                    let Ok(watch) = stream.try_clone() else {
                        continue;
                    };
                    self.next_id += 1;
                    *id = self.next_id;
                    let mut conn = Conn::new(*id, *pid, watch, None);
                    conn.greeted = true;
                    conn.ready = true;
                    conn.pooled = true;
                    self.conns.push(conn);
                }
                pooled.insert(*id);
            }
        }
        drop(ready);
        for c in self.conns.iter_mut().filter(|c| c.pooled) {
            if !pooled.contains(&c.id) {
                c.gone = true;
            }
        }
    }

    /// Writes what can be written; closes what is done, expired or broken.
    fn flush_and_reap(&mut self, now: Instant) {
        let broadcast = Arc::clone(&self.broadcast);
        let unsubscribe = |c: &Conn| {
            if c.subscribed {
                broadcast
                    .subscribers
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                // Together: a worker told that its client is gone finds no offer of it left.
                let mut offers = locked(&broadcast.offers);
                offers.remove(&c.id);
                locked(&broadcast.attaching).retain(|_, (conn, _)| *conn != c.id);
                locked(&broadcast.ready).remove(&c.pid);
                if !offers.values().any(|(pid, _)| *pid == c.pid) {
                    locked(&broadcast.health).remove(&c.pid);
                }
                drop(offers);
            }
        };
        let before = self.conns.len();
        let mut attached = Vec::new();
        let mut unsubscribed = false;
        let mut unpooled = Vec::new();
        // The app started for background work can be handed a run on presumption only once it
        // has a ready connection: the runs that wait are tried again then.
        let activated = broadcast
            .activated
            .load(std::sync::atomic::Ordering::Acquire);
        let mut activated_ready = false;
        self.conns.retain_mut(|c| {
            let mut keep = Self::flush_one(c, now);
            if keep && c.ready && !c.pooled && c.out.is_empty() {
                match c.stream.try_clone() {
                    Ok(stream) => {
                        let rest = std::mem::take(&mut c.decoder);
                        locked(&broadcast.ready)
                            .entry(c.pid)
                            .or_default()
                            .push((c.id, stream, rest));
                        broadcast.alive(c.pid);
                        c.pooled = true;
                        activated_ready |= activated != 0 && c.pid == activated;
                    }
                    Err(_) => keep = false,
                }
            }
            if !keep && c.pooled {
                unpooled.push(c.id);
            }
            if keep
                && c.out.is_empty()
                && let Some(instance_id) = c.attach
            {
                let rest = std::mem::take(&mut c.decoder);
                attached.push((instance_id, c.stream.try_clone(), rest));
                keep = false; // handed over (the clone) below; this copy closes
            }
            if !keep {
                unsubscribed |= c.subscribed;
                unsubscribe(c);
            }
            keep
        });
        if activated_ready && let Some(on_offer) = broadcast.on_offer.get() {
            self.answerers.submit(Job::Offered(Arc::clone(on_offer)));
        }
        for (instance_id, stream, rest) in attached {
            let waiting = locked(&broadcast.attaching).remove(&instance_id);
            if let (Some((_, tx)), Ok(stream)) = (waiting, stream) {
                let _ = tx.send((stream, rest));
            } // else no run waits for it (given up, or never handed): the client sees the end
        }
        if !unpooled.is_empty() {
            let mut ready = locked(&broadcast.ready);
            for conns in ready.values_mut() {
                conns.retain(|(id, _, _)| !unpooled.contains(id));
            }
            ready.retain(|_, conns| !conns.is_empty());
        }
        if unsubscribed {
            // Its ready connections left the pool with its offers: drop their watches too.
            self.watch_ready();
            self.conns.retain(|c| !(c.pooled && c.gone));
        }
        if self.conns.len() < before {
            self.accept_paused = None; // a descriptor was freed
        }
    }

    fn flush_one(c: &mut Conn, now: Instant) -> bool {
        if c.gone {
            // Dropped without a shutdown: a ready connection's socket lives on in its clone.
            return false;
        }
        let mut wrote = false;
        while !c.out.is_empty() {
            match (&c.stream).write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                    wrote |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        if c.out.is_empty() && c.out.capacity() > MAX_PENDING_OUTPUT {
            c.out = Vec::new(); // a big reply's buffer is not kept for the connection's life
        }
        if c.closing && c.out.is_empty() && !c.busy {
            // Half-close first so the client reads our reply before any reset.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            return false;
        }
        if c.busy || c.pooled {
            return true; // no deadline: its answer (or its run) is on the way
        }
        if (c.subscribed || c.keep_alive) && c.out.is_empty() && !c.closing {
            c.deadline = None; // up to date: a feed or a kept connection may stay quiet for ever
        }
        if !c.out.is_empty() && (wrote || c.deadline.is_none()) {
            // A peer that reads nothing of its output for that long is dropped; one that reads a
            // big reply slowly is not.
            c.deadline = Some(now + IDLE_TIMEOUT);
        }
        if c.deadline.is_some_and(|d| d <= now) {
            if c.closing || c.subscribed || !c.out.is_empty() {
                return false; // a peer that does not read what it asked for
            }
            c.refuse(
                ErrorKind::State,
                format!(
                    "no complete request within {} s: closing the connection",
                    IDLE_TIMEOUT.as_secs()
                ),
            );
            c.deadline = Some(now + IDLE_TIMEOUT);
        }
        true
    }
}
