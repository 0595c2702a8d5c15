//! The frame decoder of both socket protocols (`btb_core::protocol::Decoder`), fed bytes as a peer
//! sends them: the first input byte picks how the rest is cut into reads (1..=32 bytes each, or
//! all at once). Decoding control requests and instance messages never panics and never takes
//! more than the bytes given; every decoded message encodes back to a frame that decodes to the
//! same message; after an error the decoder is not read again (the server closes the connection).
#![no_main]

use btb_core::control::Request;
use btb_core::protocol::{Decoder, ToBroker, encode};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn feed<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(chunk: usize, data: &[u8]) {
    let mut decoder = Decoder::default();
    let pieces: Box<dyn Iterator<Item = &[u8]>> = if chunk == 0 {
        Box::new(std::iter::once(data))
    } else {
        Box::new(data.chunks(chunk))
    };
    for piece in pieces {
        decoder.push(piece);
        loop {
            match decoder.next_message::<T>() {
                Ok(Some(message)) => {
                    let mut again = Decoder::default();
                    again.push(&encode(&message));
                    assert_eq!(again.next_message::<T>().unwrap().as_ref(), Some(&message));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 33);
    feed::<Request>(chunk, rest);
    feed::<ToBroker>(chunk, rest);
});
