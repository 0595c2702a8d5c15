//! The writing side of the instance protocol (SPEC §5, §10): what a run that executes in another
//! process than its broker's — an `exec` host (`host.rs`), or a run handed to a client
//! (`client.rs`) — tells its broker. One write lock, so frames written by several threads (a
//! progress report, a deferral completed on another thread) never interleave; and one rule for
//! long messages, cut to fit a frame. And one loop that hears the broker's cancellations.

use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};

use crate::protocol::{self, ToBroker};

/// One run's connection to its broker.
pub(crate) struct Link {
    socket: UnixStream,
    write: Mutex<()>,
    /// The run file a client holds while it runs a run handed to it (`runfile.rs`): the run's
    /// last word is written there first, and it is let go of once that is said.
    run_file: Mutex<Option<crate::runfile::RunFile>>,
}

impl Link {
    pub(crate) fn new(socket: UnixStream) -> Link {
        Self::with_run_file(socket, None)
    }

    pub(crate) fn with_run_file(
        socket: UnixStream,
        run_file: Option<crate::runfile::RunFile>,
    ) -> Link {
        Link {
            socket,
            write: Mutex::new(()),
            run_file: Mutex::new(run_file),
        }
    }

    /// Sends the run's last messages in one write — kept in the run file first, if there is one:
    /// a broker that dies before it hears them leaves them to the next one (SPEC §11), which
    /// records the run as it ended here.
    pub(crate) fn last_word(&self, messages: Vec<ToBroker>) {
        let mut word = Vec::new();
        for m in messages {
            word.extend(protocol::encode(&fitted(m)));
        }
        let mut run_file = self
            .run_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(file) = run_file.as_mut() {
            file.last_word(&word);
        }
        self.write(&word);
        drop(run_file); // let go of (after the broker was told): the run is over here
    }

    /// Sends a message (blocking, bounded by the socket's write timeout, if any); a broker that
    /// is gone no longer hears anything of the run (an exec host's exit status still tells).
    pub(crate) fn send(&self, message: ToBroker) {
        self.write(&protocol::encode(&fitted(message)));
    }

    /// Writes whole frames, one writer at a time.
    fn write(&self, frames: &[u8]) {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = std::io::Write::write_all(&mut &self.socket, frames);
    }
}

/// Reads the broker's side of a run's connection until the broker hangs up (or the reading
/// side is shut down): each cancellation goes to `canceled`. The one reader loop of a run in
/// another process than its broker's — a client's handed run, an exec host's.
pub(crate) fn hear_cancellations(
    reader: &mut UnixStream,
    mut canceled: impl FnMut(crate::model::CancellationReason),
) {
    while let Ok(Some(message)) = protocol::read_frame::<protocol::ToHost>(reader) {
        if let protocol::ToHost::Canceled { reason } = message {
            canceled(cancellation_reason(reason));
        }
    }
}

/// A cancellation reason the broker sent; one a newer broker knows is still a cancellation.
pub(crate) fn cancellation_reason(value: u32) -> crate::model::CancellationReason {
    crate::model::CancellationReason::from_u32(value)
        .unwrap_or(crate::model::CancellationReason::Abort)
}

/// A message whose free text fits one frame: a failure message up to the frame limit (with room
/// for the envelope), a retry's message up to half of it.
fn fitted(message: ToBroker) -> ToBroker {
    match message {
        ToBroker::Failure { message } => ToBroker::Failure {
            message: trim(message, protocol::MAX_FRAME - 64),
        },
        ToBroker::Retry { after_ms, message } => ToBroker::Retry {
            after_ms,
            message: message.map(|m| trim(m, protocol::MAX_FRAME / 2)),
        },
        other => other,
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn trim(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of several threads arrive whole, each one readable, and a failure message longer
    /// than a frame arrives cut, not as a frame the broker refuses.
    #[test]
    fn concurrent_long_messages_arrive_as_whole_frames() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let link = std::sync::Arc::new(Link::new(ours));
        let long = "é".repeat(protocol::MAX_FRAME); // twice the frame limit, in bytes
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let link = std::sync::Arc::clone(&link);
                let long = long.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        link.send(ToBroker::Failure {
                            message: long.clone(),
                        });
                    }
                })
            })
            .collect();
        let reader = std::thread::spawn(move || {
            let mut lengths = Vec::new();
            for _ in 0..80 {
                match protocol::read_frame::<ToBroker>(&mut theirs).unwrap() {
                    Some(ToBroker::Failure { message }) => lengths.push(message.len()),
                    other => panic!("expected a failure, read {other:?}"),
                }
            }
            lengths
        });
        for w in writers {
            w.join().unwrap();
        }
        let lengths = reader.join().unwrap();
        assert_eq!(lengths.len(), 80);
        assert!(
            lengths
                .iter()
                .all(|&n| n <= protocol::MAX_FRAME - 64 && n > 0)
        );
    }
}
