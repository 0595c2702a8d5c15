//! The client side of the control socket: a connection to a running broker, a feed of its
//! notices, and `signal_event`.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use super::CLIENT_TIMEOUT;
use super::socket::{connect_with_timeout, our_uid, peer_uid, socket_path};
use super::wire::{Reply, Request, check_name};
use crate::protocol;
use crate::{Error, ErrorKind, Result};

/// A connection to a running broker (`btbctl`, `signal_event`).
pub struct Client {
    stream: UnixStream,
    app_id: String,
    /// The broker's process id.
    pub broker_pid: u32,
    /// The canonical path of the store the broker holds, as its hello named it.
    pub broker_store: Option<String>,
}

impl Client {
    /// Connects to the broker of `app_id` and greets it. `NotFound` when none runs; `Policy` for
    /// a socket that another user serves or that we cannot reach; `State` when it does not answer.
    pub fn connect(app_id: &str) -> Result<Client> {
        Self::connect_with(app_id, false)
    }

    /// As [`Client::connect`], for a connection kept open between requests (a client process's):
    /// the broker does not close it when it is idle.
    pub fn connect_kept(app_id: &str) -> Result<Client> {
        Self::connect_with(app_id, true)
    }

    fn connect_with(app_id: &str, keep_alive: bool) -> Result<Client> {
        Self::greet(app_id, keep_alive, &[])?.welcome()
    }

    /// Connects to the broker of `app_id` and sends its hello, then `then`, in one write, without
    /// waiting for the answer ([`Greeting::welcome`] reads it): a process that opens several
    /// connections greets them all before it reads, one round trip for all. `keep_alive` as in
    /// [`Client::connect_kept`]. The errors of [`Client::connect`] for the connection.
    pub fn greet(app_id: &str, keep_alive: bool, then: &[Request]) -> Result<Greeting> {
        let path = socket_path(app_id)?;
        let shown = path.display();
        let stream = match connect_with_timeout(&path, CLIENT_TIMEOUT) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no running btb broker for app {app_id:?} (socket {shown})"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::new(
                    ErrorKind::Policy,
                    format!(
                        "cannot reach the btb broker for app {app_id:?}: permission denied on socket {shown} (a broker of another user?)"
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::state(format!(
                    "the btb broker for app {app_id:?} did not accept a connection within {} s (socket {shown})",
                    CLIENT_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot connect to the btb broker for app {app_id:?} (socket {shown}): {e}"
                )));
            }
        };
        // Send nothing to a socket that someone else serves.
        let uid = our_uid();
        match peer_uid(&stream) {
            Ok(peer) if peer == uid => {}
            Ok(peer) => {
                return Err(Error::new(
                    ErrorKind::Policy,
                    format!(
                        "socket {shown} for app {app_id:?} is served by uid {peer}, not by us (uid {uid})"
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot check who serves socket {shown} for app {app_id:?}: {e}"
                )));
            }
        }
        // Every exchange waits at most this long; kept until the connection becomes a feed or a
        // run's stream.
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .and_then(|()| stream.set_read_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(|e| {
                Error::state(format!(
                    "cannot set the timeouts of a connection to the btb broker for app {app_id:?}: {e}"
                ))
            })?;
        let mut client = Client {
            stream,
            app_id: app_id.to_owned(),
            broker_pid: 0,
            broker_store: None,
        };
        let mut frames = protocol::encode(&Request::Hello {
            version: protocol::VERSION,
            min_version: Some(protocol::MIN_VERSION),
            keep_alive,
        });
        for request in then {
            frames.extend_from_slice(&protocol::encode(request));
        }
        let sent = client.send(&frames);
        Ok(Greeting { client, sent })
    }

    /// Turns this connection into a feed of notices ([`Request::Subscribe`]).
    pub fn subscribe(mut self) -> Result<Subscription> {
        let sent = self.send(&protocol::encode(&Request::Subscribe));
        self.into_feed(sent)
    }

    /// The feed of a connection greeted with its [`Request::Subscribe`] ([`Client::greet`]), once
    /// the broker answered it.
    pub fn subscribed(self) -> Result<Subscription> {
        self.into_feed(Ok(()))
    }

    /// The feed, once the broker answered the subscribe whose sending ended in `sent`.
    fn into_feed(mut self, sent: io::Result<()>) -> Result<Subscription> {
        match self
            .receive(sent)
            .unwrap_or_else(|failure| Err(failure.error))?
        {
            Reply::Done => {}
            other => return Err(self.unexpected(&other)),
        }
        self.stream
            .set_read_timeout(None)
            .map_err(|e| Error::state(format!("cannot make the feed blocking: {e}")))?;
        Ok(Subscription {
            stream: self.stream,
        })
    }

    /// The connection itself (after [`Request::Attach`]: for the instance protocol), with no
    /// read timeout and the client's write timeout.
    pub fn into_stream(self) -> io::Result<UnixStream> {
        self.stream.set_read_timeout(None)?;
        self.stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(self.stream)
    }

    /// An error for a reply that does not answer the request.
    fn unexpected(&self, reply: &Reply) -> Error {
        Error::state(format!(
            "the btb broker for app {:?} answered {reply:?}",
            self.app_id
        ))
    }

    /// Sends a request and waits (at most [`CLIENT_TIMEOUT`]) for its reply; an error reply is
    /// returned as the error it names.
    pub fn call(&mut self, request: &Request) -> Result<Reply> {
        self.exchange(request)
            .unwrap_or_else(|failure| Err(failure.error))
    }

    /// As [`Client::call`], telling a broken exchange (the outer error) from an answer.
    pub fn exchange(&mut self, request: &Request) -> std::result::Result<Result<Reply>, Failure> {
        let sent = self.send(&protocol::encode(request));
        self.receive(sent)
    }

    /// Writes encoded requests (within the write timeout set at connect).
    fn send(&mut self, frames: &[u8]) -> io::Result<()> {
        self.stream.write_all(frames)
    }

    /// Reads the reply to the request whose sending ended in `sent`.
    fn receive(&mut self, sent: io::Result<()>) -> std::result::Result<Result<Reply>, Failure> {
        let pid = self.broker_pid;
        let broken = |delivered: bool, what: String| Failure {
            delivered,
            timed_out: false,
            unreadable: false,
            pid,
            error: Error::state(format!(
                "talking to the btb broker for app {:?}: {what}",
                self.app_id
            )),
        };
        // Even if sending failed, the broker may have answered (and closed) first: read its reply.
        let reply = match (
            protocol::read_frame_max::<Reply>(&mut self.stream, protocol::MAX_REPLY),
            sent,
        ) {
            (Ok(Some(reply)), _) => reply,
            (_, Err(e)) => return Err(broken(false, format!("cannot send: {e}"))),
            (Ok(None), Ok(())) => {
                return Err(broken(
                    true,
                    "the broker closed the connection without a reply".into(),
                ));
            }
            (Err(e), Ok(()))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure {
                    timed_out: true,
                    ..broken(
                        true,
                        format!(
                            "no reply within {} s (the broker is stopped or stuck; the connection \
                             was dropped)",
                            CLIENT_TIMEOUT.as_secs()
                        ),
                    )
                });
            }
            (Err(e), Ok(())) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Failure {
                    unreadable: true,
                    ..broken(true, format!("cannot read the reply: {e}"))
                });
            }
            (Err(e), Ok(())) => return Err(broken(true, format!("cannot read the reply: {e}"))),
        };
        Ok(match reply {
            Reply::Error { kind, message } => Err(Error::new(ErrorKind::named(&kind), message)),
            reply => Ok(reply),
        })
    }
}

/// A connection whose hello is sent and not yet answered ([`Client::greet`]).
pub struct Greeting {
    client: Client,
    /// How sending the hello (and what followed it) ended.
    sent: io::Result<()>,
}

impl Greeting {
    /// Reads the broker's answer to the hello: the connection, greeted.
    pub fn welcome(self) -> Result<Client> {
        let Greeting { mut client, sent } = self;
        match client
            .receive(sent)
            .unwrap_or_else(|failure| Err(failure.error))?
        {
            Reply::Hello { pid, store, .. } => {
                client.broker_pid = pid;
                client.broker_store = store;
            }
            other => return Err(client.unexpected(&other)),
        }
        Ok(client)
    }
}

/// A broken exchange with a broker.
#[derive(Debug)]
pub struct Failure {
    /// The request was sent (the broker may have acted on it).
    pub delivered: bool,
    /// No reply came in time: the broker is there but did not answer (stopped, stuck). Its
    /// connection is out of step and must be dropped; its feed says whether it is gone.
    pub timed_out: bool,
    /// The broker answered, but its reply cannot be read (over the limit, not JSON): the
    /// connection is out of step and must be dropped; asking again would get the same.
    pub unreadable: bool,
    /// The broker's process id.
    pub pid: u32,
    pub error: Error,
}

/// A connection that receives the broker's notices ([`Reply::Progress`], [`Reply::Completed`]).
pub struct Subscription {
    stream: UnixStream,
}

impl Subscription {
    /// Waits for the next notice; `None` when the feed ends (the broker closed, died, or dropped
    /// us for not reading, or [`Subscription::stopper`] was used).
    pub fn next_notice(&mut self) -> Option<Reply> {
        protocol::read_frame_max::<Reply>(&mut self.stream, protocol::MAX_REPLY)
            .ok()
            .flatten()
    }

    /// A clone of the feed's socket: to send [`Request::Offer`]s on it, and to end the feed
    /// from another thread (`shutdown`).
    pub fn socket(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }
}

/// Signals a custom event to the running broker of `app_id` (any process of the same user).
///
/// Errors: a bad app id or name → `InvalidArgument`; no broker listening → `NotFound`; a socket not
/// reachable for us or served by another uid, or the broker's "not your broker" → `Policy`; other
/// refusals as the broker names them; no answer in time or a broken exchange → `State`.
pub fn signal_event(app_id: &str, name: &str) -> Result<()> {
    check_name(name).map_err(|why| Error::invalid(format!("{why} (app {app_id:?})")))?;
    let mut client = Client::connect(app_id)?;
    match client.call(&Request::Signal {
        name: name.to_owned(),
    }) {
        Ok(Reply::Fired { .. } | Reply::Done) => Ok(()),
        Ok(other) => Err(client.unexpected(&other)),
        Err(e) => Err(Error::new(
            e.kind(),
            format!(
                "the btb broker for app {app_id:?} refused event {name:?}: {}",
                e.message()
            ),
        )),
    }
}
