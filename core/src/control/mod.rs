//! The control socket (SPEC §10): how other processes of the same user reach a running broker —
//! `btbctl`, `signal_event`, and (later) client processes of the app.
//!
//! A running broker listens on a Unix stream socket, `$XDG_RUNTIME_DIR/btb/<app_id>.sock`. The
//! protocol is frames of `protocol.rs` (4-byte length, JSON, bounded): the client's first frame is
//! [`Request::Hello`] with the range of protocol versions it speaks, answered by [`Reply::Hello`]
//! with the version both speak (or an error naming both ranges, and the connection is closed);
//! then any number of requests, one reply each. A request of a type this build does not know is
//! answered `UNSUPPORTED`, one it cannot read `INVALID_ARGUMENT`; the connection stays up.
//!
//! One thread serves every connection with `poll` and only moves bytes; requests that call the
//! broker are answered on a few answering threads, so a slow request, or a slow, silent or
//! half-closed peer, holds only its own connection, which is closed after [`IDLE_TIMEOUT`]
//! without a complete request. No timer runs while no connection is open. Every buffer is
//! bounded (`docs/limits.md`).
//!
//! Security: the directory is `0700` and must be ours, the socket `0600`; on top of that the broker
//! checks each peer's uid (`SO_PEERCRED`) and answers "not your broker" to anyone else, and the
//! client checks that the socket is served by its own uid before it sends anything.
//!
//! One listener per app: `bind` takes an exclusive lock on `<app_id>.sock.lock` beside the socket
//! for the listener's lifetime, so two brokers starting at once cannot both remove and rebind the
//! socket. The lock file stays after `Drop` (removing a lock file races with its next taker).
//!
//! By concern: [`socket`] (where the socket lives, who may use it), [`wire`] (the messages),
//! `listener` and `server` (the transport: bind, the poll loop, frames, caps, peer checks),
//! [`routing`] (notices, offers, which client a run is handed to), [`client`] (the other end).

use std::time::Duration;

mod answer;
mod client;
mod listener;
pub mod routing;
mod server;
pub mod socket;
pub mod wire;

pub use answer::MAX_ANSWERERS;
pub use client::{Client, Failure, Greeting, Subscription, signal_event};
pub use listener::{ControlListener, Handler};
pub use routing::{Attached, Broadcast, MAX_BROADCAST_QUEUED, MAX_BROADCAST_WAIT, Picked, Start};
pub use server::{MAX_FEED_BACKLOG, MAX_OUTPUT_TOTAL, MAX_PENDING_OUTPUT};
pub use socket::socket_path;
pub(crate) use wire::check_name;
pub use wire::{Filter, MAX_NAME, Offer, Reply, Request};

/// How long the broker waits for a connection's next complete request before closing it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for a reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client process has to start a run handed to it (its hello, or its attach) before
/// the broker gives the run to another client that offers to run it (if there is one).
pub const START_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 4096;
