//! Arbitrary bytes into both frame decoders, as a socket would deliver them.
//!
//! The first input byte picks the read size; the rest is the stream. Each decoder must return a
//! message, "need more bytes" or a typed error, never panic; every message it yields must
//! survive its own round trip. `decode_frame` gets the same bytes as one frame.

#![no_main]

use bytes::BytesMut;
use hindsight_protocol::{
    decode_frame, encode_frame, ClientCodec, ClientMessage, Envelope, Error, ServerCodec, ServerMessage,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, stream)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(read_size).max(1);
    feed::<ClientMessage, _>(&mut ServerCodec::new(), stream, read_size);
    feed::<ServerMessage, _>(&mut ClientCodec::new(), stream, read_size);
    check_frame::<ClientMessage>(stream);
    check_frame::<ServerMessage>(stream);
});

/// Feeds `stream` in reads of `read_size` bytes the way `FramedRead` does, stopping at the
/// first error, and round-trips every message decoded.
fn feed<M: Envelope + std::fmt::Debug, D: Decoder<Item = M, Error = Error>>(
    decoder: &mut D,
    stream: &[u8],
    read_size: usize,
) {
    let mut buffer = BytesMut::new();
    for read in stream.chunks(read_size) {
        buffer.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(message)) => round_trip(&message),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(message)) = decoder.decode_eof(&mut buffer) {
        round_trip(&message);
    }
}

fn check_frame<M: Envelope + std::fmt::Debug>(frame: &[u8]) {
    if let Ok(message) = decode_frame::<M>(frame) {
        round_trip(&message);
    }
}

/// A decoded message re-encodes, and decoding that gives the same encoding again (compared as
/// bytes, since a NaN double is not equal to itself).
fn round_trip<M: Envelope + std::fmt::Debug>(message: &M) {
    let frame = encode_frame(message).expect("a decoded message re-encodes");
    let reread: M = decode_frame(&frame).expect("a re-encoded message decodes");
    let again = encode_frame(&reread).expect("and re-encodes again");
    assert_eq!(frame, again, "round trip changed {message:?}");
}
