//! The serving thread: the listening socket and every connection in one `poll`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::sockopt;
use uuid::Uuid;

use super::listener::Handler;
use super::routing::{Broadcast, locked};
use super::socket::{our_uid, peer_uid};
use super::wire::{Reply, Request, check_name};
use super::{IDLE_TIMEOUT, MAX_CONNECTIONS};
use crate::protocol::{self, Decoder};
use crate::{Error, ErrorKind};

/// Replies queued for a peer that does not read: past this, the connection is dropped.
const MAX_QUEUED: usize = 2 * protocol::MAX_REPLY;

/// Reply to a peer of another uid.
const NOT_YOUR_BROKER: &str = "not your broker";
/// One connection being served.
struct Conn {
    /// Names the connection in [`Broadcast`] (offers, runs handed to it).
    id: u64,
    /// The peer's pid.
    pid: u32,
    /// Attached to this run ([`Request::Attach`]): handed over to the broker.
    attach: Option<Uuid>,
    /// Waiting for a run ([`Request::Ready`]): handed over to the broker.
    ready: bool,
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
    /// When it is closed if no complete request arrives (or, closing, if `out` is not written);
    /// none for a subscriber that is up to date.
    deadline: Option<Instant>,
}

impl Conn {
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
}

/// The serving thread: the listening socket and every connection in one `poll`.
pub(super) struct Server {
    listener: UnixListener,
    handler: Handler,
    app_id: String,
    hello: Reply,
    broadcast: Arc<Broadcast>,
    uid: u32,
    conns: Vec<Conn>,
    next_id: u64,
}

impl Server {
    pub(super) fn new(
        listener: UnixListener,
        handler: Handler,
        app_id: String,
        hello: Reply,
        broadcast: &Arc<Broadcast>,
    ) -> Server {
        Server {
            listener,
            handler,
            app_id,
            hello,
            broadcast: Arc::clone(broadcast),
            uid: our_uid(),
            conns: Vec::new(),
            next_id: 0,
        }
    }

    pub(super) fn run(mut self, stop: &OwnedFd) {
        loop {
            let now = Instant::now();
            // A deadline only while connections are open: an idle broker sleeps without one.
            let timeout = self.conns.iter().filter_map(|c| c.deadline).min().map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            let (stopped, accept, notices, ready) = {
                let mut fds = vec![
                    PollFd::new(stop, PollFlags::IN),
                    PollFd::new(&self.listener, PollFlags::IN),
                    PollFd::new(&self.broadcast.wake, PollFlags::IN),
                ];
                for c in &self.conns {
                    // A closing connection is only written to: polling it for input would wake
                    // this thread again and again for bytes it will not read (or for the end
                    // of a half-closed peer's stream) while its replies wait for the peer.
                    let mut flags = if c.closing {
                        PollFlags::empty()
                    } else {
                        PollFlags::IN
                    };
                    if !c.out.is_empty() {
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
                let ready: Vec<PollFlags> = fds[3..].iter().map(PollFd::revents).collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    !fds[2].revents().is_empty(),
                    ready,
                )
            };
            if stopped {
                return;
            }
            if notices {
                self.hand_out_notices(Instant::now());
            }
            for (i, flags) in ready.iter().enumerate() {
                if flags.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.read(i);
                }
            }
            if accept {
                self.accept();
            }
            self.flush_and_reap(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all taken. Out of descriptors: the pending ones wait for the next
                // readiness (connections closing free some).
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            let pid = sockopt::socket_peercred(&stream)
                .map_or(0, |c| c.pid.as_raw_nonzero().get() as u32);
            let mut conn = Conn {
                id: self.next_id,
                pid,
                attach: None,
                ready: false,
                stream,
                decoder: Decoder::default(),
                out: Vec::new(),
                greeted: false,
                subscribed: false,
                keep_alive: false,
                closing: false,
                deadline: Some(Instant::now() + IDLE_TIMEOUT),
            };
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

    fn read(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.closing {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&conn.stream).read(&mut buf) {
                Ok(0) => {
                    // The peer is done sending (maybe half-closed, still reading its replies).
                    conn.closing = true;
                    break;
                }
                Ok(n) => conn.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.closing = true;
                    conn.out.clear();
                    return;
                }
            }
        }
        loop {
            let conn = &mut self.conns[i];
            match conn.decoder.next_framed::<Request>() {
                Ok(Some(protocol::Framed::Unreadable(e))) if conn.greeted => {
                    // A whole frame: the stream is still in step, so only this request fails.
                    conn.reply(&Reply::error(&Error::invalid(e)));
                }
                Ok(Some(protocol::Framed::Unreadable(e))) => {
                    conn.refuse(ErrorKind::InvalidArgument, e);
                    return;
                }
                Ok(Some(protocol::Framed::Message(request))) => {
                    conn.deadline = (!conn.keep_alive).then(|| Instant::now() + IDLE_TIMEOUT);
                    let Some(reply) = self.serve(i, request) else {
                        let conn = &self.conns[i];
                        if conn.attach.is_some() || conn.ready {
                            return; // what follows is the instance protocol, not requests
                        }
                        continue;
                    };
                    let conn = &mut self.conns[i];
                    conn.reply(&reply);
                    if conn.out.len() > MAX_QUEUED {
                        conn.out.clear();
                        conn.closing = true;
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    conn.refuse(ErrorKind::InvalidArgument, format!("{e}"));
                    return;
                }
            }
        }
    }

    /// Serves one request; `None` for one that is not answered (an offer).
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
                on_offer();
            }
            return None;
        }
        if conn.greeted
            && !conn.subscribed
            && let Request::Attach { instance_id } = request
        {
            conn.attach = Some(instance_id);
            return None;
        }
        if conn.greeted && !conn.subscribed && request == Request::Ready {
            conn.ready = true;
            return None;
        }
        Some(self.serve_answered(i, request))
    }

    fn serve_answered(&mut self, i: usize, request: Request) -> Reply {
        let conn = &mut self.conns[i];
        if !conn.greeted {
            return match request {
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
            };
        }
        if conn.subscribed {
            // A feed only carries notices: a request on it is a confused client.
            conn.closing = true;
            return Reply::error(&Error::invalid("a subscribed connection takes no requests"));
        }
        if request == Request::Subscribe {
            conn.subscribed = true;
            conn.deadline = None;
            self.broadcast
                .subscribers
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            return Reply::Done;
        }
        if let Request::Signal { name } = &request
            && let Err(why) = check_name(name)
        {
            return Reply::error(&Error::invalid(why));
        }
        let handler = Arc::clone(&self.handler);
        let describe = format!("{request:?}");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request))).unwrap_or_else(
            |_| {
                Reply::error(&Error::new(
                    ErrorKind::Internal,
                    format!(
                        "internal: the broker of app {:?} failed handling {describe}",
                        self.app_id
                    ),
                ))
            },
        )
    }

    /// Appends the queued notices to every subscriber's output; a subscriber that fell more
    /// than [`MAX_QUEUED`] bytes behind is dropped (its client sees the end of its feed).
    fn hand_out_notices(&mut self, now: Instant) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.broadcast.wake, &mut count);
        let frames = std::mem::take(&mut *locked(&self.broadcast.queue));
        for (to, bytes) in frames {
            let mut reached = false;
            for c in self
                .conns
                .iter_mut()
                .filter(|c| c.subscribed && !c.closing && to.is_none_or(|id| id == c.id))
            {
                reached = true;
                c.out.extend_from_slice(&bytes);
                // A subscriber that does not read within the idle timeout is dropped too.
                c.deadline.get_or_insert(now + IDLE_TIMEOUT);
                if c.out.len() > MAX_QUEUED {
                    c.out.clear();
                    c.closing = true;
                }
            }
            if let Some(gone) = to.filter(|_| !reached) {
                // A run handed to a client that left meanwhile: its worker hears so at once.
                locked(&self.broadcast.attaching).retain(|_, (conn, _)| *conn != gone);
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
        let mut attached = Vec::new();
        self.conns.retain_mut(|c| {
            let mut keep = Self::flush_one(c, now);
            if keep && c.ready {
                if let Ok(stream) = c.stream.try_clone() {
                    let rest = std::mem::take(&mut c.decoder);
                    locked(&broadcast.ready)
                        .entry(c.pid)
                        .or_default()
                        .push((stream, rest));
                    broadcast.alive(c.pid);
                }
                return false; // handed over (the clone); this copy closes
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
                unsubscribe(c);
            }
            keep
        });
        for (instance_id, stream, rest) in attached {
            let waiting = locked(&broadcast.attaching).remove(&instance_id);
            if let (Some((_, tx)), Ok(stream)) = (waiting, stream) {
                let _ = tx.send((stream, rest));
            } // else no run waits for it (given up, or never handed): the client sees the end
        }
    }

    fn flush_one(c: &mut Conn, now: Instant) -> bool {
        {
            while !c.out.is_empty() {
                match (&c.stream).write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            if c.closing && c.out.is_empty() {
                // Half-close first so the client reads our reply before any reset.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                return false;
            }
            if c.subscribed && c.out.is_empty() {
                c.deadline = None; // up to date: a feed may stay quiet for ever
            }
            if c.deadline.is_some_and(|d| d <= now) {
                if c.closing || c.subscribed {
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
}
