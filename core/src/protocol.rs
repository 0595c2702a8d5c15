//! The instance protocol (SPEC §5): what a broker and a process that runs one instance say to each
//! other over one stream socket — an `exec` host's inherited `BTB_HOST_FD`, or the connection a
//! client process of the broker attaches for a run it was handed (`client.rs`). Frames are a
//! 4-byte big-endian length and a JSON message (serde; no hand-written parser), at most
//! [`MAX_FRAME`] bytes: a longer one is refused by its length prefix, before its body is read.
//!
//! Evolution (SPEC §5): each side's first frame is its hello with the range of versions it speaks
//! (`min_version`..=`version`; a hello without `min_version` speaks only `version`); the answer
//! names the highest version both speak ([`negotiate`]), or refuses naming both ranges. Within a
//! version, messages grow only by optional fields; a receiver ignores fields it does not know and
//! takes a message type it does not know as `Unknown` (a request is answered `UNSUPPORTED`, a
//! notice is ignored) — the connection stays up. The frames of every released version are kept
//! under `core/tests/golden/` and must keep decoding.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// The newest protocol version this build speaks (control and instance protocols share it).
pub const VERSION: u32 = 2;
/// The oldest version it still speaks: version 1 peers (released builds that match versions
/// exactly) are served as they were.
pub const MIN_VERSION: u32 = 1;

/// The version two sides speak: the highest in both ranges, or why there is none (naming both
/// ranges). `peer_min` `None`: the peer speaks only `peer_max` (a version 1 hello).
pub fn negotiate(peer_min: Option<u32>, peer_max: u32) -> std::result::Result<u32, String> {
    let peer_min = peer_min.unwrap_or(peer_max).min(peer_max);
    let chosen = VERSION.min(peer_max);
    if chosen >= MIN_VERSION.max(peer_min) {
        Ok(chosen)
    } else {
        Err(format!(
            "no protocol version in common: this build speaks {}, the peer {}",
            range(MIN_VERSION, VERSION),
            range(peer_min, peer_max)
        ))
    }
}

fn range(min: u32, max: u32) -> String {
    if min == max {
        format!("version {max}")
    } else {
        format!("versions {min}–{max}")
    }
}
/// The largest frame a broker accepts, and an instance's host (requests and instance messages
/// are small: a failure message is the largest).
pub const MAX_FRAME: usize = 64 * 1024;
/// The largest reply a control client accepts (a listing of many thousand registrations).
pub const MAX_REPLY: usize = 64 << 20;

/// From the process that runs the instance to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToBroker {
    /// First frame: the versions this process speaks and the instance it runs.
    Hello {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_version: Option<u32>,
        instance_id: Uuid,
    },
    Progress {
        value: u32,
    },
    DeferralTaken,
    DeferralCompleted,
    /// The run failed (the last report wins, as in-process).
    Failure {
        message: String,
    },
    /// Version 2: the run asks for another attempt (`after_ms`: instead of the policy's delay).
    Retry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Version 2: what the run hands back (a JSON object of at most 64 KiB).
    Output {
        output: serde_json::Value,
    },
    /// The run ended (its function returned and its deferrals completed): what a client process
    /// that ran it says last. An `exec` host need not: its exit ends the run.
    Finished,
    /// A message of a newer version (ignored).
    #[serde(other)]
    Unknown,
}

/// From the broker to the process that runs the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHost {
    /// Answer to a hello: the version both speak, the cancellation if one came first, and whether
    /// the broker holds a sleep inhibitor for the run (`is_network_requested`).
    Welcome {
        version: u32,
        canceled: Option<u32>,
        network_granted: bool,
        /// The trigger details of an `exec` host's run when they are too large for its
        /// environment (`BTB_TRIGGER_DETAILS` is then unset); absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger_details: Option<serde_json::Value>,
        /// Version 2, to an `exec` host: the registration it runs (what a client's handed run
        /// carries as [`HandedRun::task`]); absent to a client, which has it with the run, and
        /// from older brokers (the host then knows its task from its `BTB_*` environment).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<Box<WireTask>>,
    },
    /// The instance was canceled (a `CancellationReason` value); the grace period runs.
    Canceled { reason: u32 },
    /// The hello was refused (another version, another instance); the broker closes the socket.
    Refused { message: String },
    /// On a connection a client process keeps ready for runs (`Ready`): run this instance here.
    /// It stands for the hello and welcome: what follows is the rest of the protocol.
    Run {
        run: Box<HandedRun>,
        canceled: Option<u32>,
        network_granted: bool,
    },
    /// A message of a newer version (ignored).
    #[serde(other)]
    Unknown,
}

/// A registration as the instance protocol carries it (a handed run's task, an exec host's
/// welcome): one type for both, so the two cannot drift apart.
pub type WireTask = crate::model::TaskRecord;

/// A run a broker hands to a client process (on the client's feed, or on a connection it keeps
/// ready): what the client needs to start the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedRun {
    pub instance_id: Uuid,
    pub task: WireTask,
    pub trigger_details: Option<serde_json::Value>,
    pub started_ms: i64,
    /// Version 2: which attempt it is.
    #[serde(default = "crate::model::first_attempt")]
    pub attempt: u32,
}

/// Encodes one frame.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("protocol messages always serialize");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Writes one frame (blocking).
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> io::Result<()> {
    w.write_all(&encode(message))
}

/// Reads one frame of at most [`MAX_FRAME`] bytes (blocking); `None` at a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    read_frame_max(r, MAX_FRAME)
}

/// Reads one frame of at most `max` bytes (blocking); `None` at a clean end of stream.
pub fn read_frame_max<T: DeserializeOwned>(r: &mut impl Read, max: usize) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = check_len(u32::from_be_bytes(len), max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

fn check_len(len: u32, max: usize) -> io::Result<usize> {
    let len = len as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {max}"),
        ));
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("a bad frame: {e}")))
}

/// Frames from a non-blocking stream: bytes go in as they arrive, whole messages come out.
/// Linear in what passes through it: taken frames are cut off the buffer once they are at least
/// half of it, not one by one.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
}

/// What one whole frame held.
#[derive(Debug)]
pub enum Framed<T> {
    Message(T),
    /// A JSON value that is not a message this build can take (a known type with a wrong
    /// field, say). The frame was whole, so the stream is still in step.
    Unreadable(String),
}

impl Decoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until one has arrived; an error for an oversized or
    /// malformed frame (the stream cannot be trusted after it).
    pub fn next_message<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        match self.next_framed()? {
            None => Ok(None),
            Some(Framed::Message(m)) => Ok(Some(m)),
            Some(Framed::Unreadable(e)) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// The next whole frame: a message, or a JSON value that is none (the stream stays in
    /// step); an error for an oversized frame (refused by its length, before its body arrives)
    /// or one that is not JSON (the stream cannot be trusted after either).
    pub fn next_framed<T: DeserializeOwned>(&mut self) -> io::Result<Option<Framed<T>>> {
        let pending = &self.buf[self.start..];
        let Some(len) = pending.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = check_len(u32::from_be_bytes(*len), MAX_FRAME)?;
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let body = &pending[4..4 + len];
        self.start += 4 + len;
        match serde_json::from_slice::<T>(body) {
            Ok(m) => Ok(Some(Framed::Message(m))),
            Err(e) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => Ok(Some(
                Framed::Unreadable(format!("a message this build cannot take: {e}")),
            )),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a bad frame: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_or_in_pieces() {
        let id = Uuid::new_v4();
        let messages = [
            ToBroker::Hello {
                version: VERSION,
                min_version: Some(MIN_VERSION),
                instance_id: id,
            },
            ToBroker::Progress { value: 42 },
            ToBroker::DeferralTaken,
            ToBroker::Failure {
                message: "disk full".into(),
            },
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b)); // one byte at a time
            while let Some(m) = d.next_message::<ToBroker>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, messages);
        let mut r = &bytes[..];
        assert_eq!(
            read_frame::<ToBroker>(&mut r).unwrap(),
            Some(messages[0].clone())
        );
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut d = Decoder::default();
        d.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(
            d.next_message::<ToBroker>()
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        let mut d = Decoder::default();
        d.push(&encode(
            &serde_json::json!({"type": "progress", "value": -1}),
        ));
        assert!(d.next_message::<ToBroker>().is_err());
        let mut d = Decoder::default();
        d.push(&encode(&serde_json::json!({"type": "launch_missiles"})));
        assert_eq!(
            d.next_message::<ToBroker>().unwrap(),
            Some(ToBroker::Unknown)
        );
        assert_eq!(
            read_frame::<ToHost>(&mut &[][..]).unwrap(),
            None,
            "clean end"
        );
        assert!(
            read_frame::<ToHost>(&mut &[0, 0, 0, 9, b'{'][..]).is_err(),
            "cut short"
        );
    }
}
