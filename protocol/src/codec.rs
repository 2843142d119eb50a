//! Framing: how messages become bytes on a connection and back, and the protocol's limits.
//!
//! Every message travels in one frame:
//!
//! ```text
//! | len u32 big-endian | protobuf body (len bytes) |
//! ```
//!
//! `len` counts the body only, not the prefix itself, and is at most [`FRAME_LEN_MAX`]. A client
//! writes `ClientMessage` bodies and reads `ServerMessage` bodies; a server does the reverse. This
//! is exactly the default layout of [`LengthDelimitedCodec`], which does the splitting on the
//! decode side.
//!
//! Two ways in:
//! - [`ClientCodec`] / [`ServerCodec`] implement tokio-util's [`Decoder`] and [`Encoder`], for
//!   `Framed` over a socket;
//! - [`encode_frame`] / [`decode_frame`] turn one message into one frame and back, with no tokio
//!   involved (tests, fuzzing, tools).
//!
//! Both check the envelope invariants ([`Envelope::validate`]) on the way out and on the way in,
//! so an empty envelope is refused by the sender as well as by the receiver.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::message::Envelope;
use crate::wire::{ClientMessage, ServerMessage};
use crate::{Error, Result};

/// The protocol version this crate speaks, sent in `Startup.protocol_version` and
/// `AuthOk.protocol_version`. Bumped on any change an older peer would misread; adding fields or
/// messages that older peers can ignore does not bump it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of the length prefix in front of every frame body (a big-endian `u32`).
pub const FRAME_HEADER_LEN: usize = 4;

/// The largest frame body, in bytes, either side accepts or sends. A longer length prefix is
/// refused as soon as it arrives, before the body is buffered.
pub const FRAME_LEN_MAX: usize = 64 * 1024 * 1024;

/// The most buffer capacity the decoder reserves ahead of the bytes actually received for a
/// partial frame. A peer that announces a large frame and then stalls costs at most this much
/// beyond what it really sent; bigger frames grow the buffer as their bytes arrive.
pub const FRAME_RESERVE_AHEAD_MAX: usize = 1024 * 1024;

/// The most bytes beyond its payload (`data`) that a `WalData` or `BackupChunk` adds to a frame
/// body: the envelope's tag and length and every other field at its largest encoding.
pub const ENVELOPE_OVERHEAD_MAX: usize = 64;

/// The most WAL bytes a sender puts in one `WalData`. Small enough that keepalives and standby
/// status never wait long behind one frame; large enough that the per-frame cost is negligible.
pub const WAL_DATA_LEN_MAX: usize = 1024 * 1024;

/// The most backup bytes a sender puts in one `BackupChunk`.
pub const BACKUP_CHUNK_LEN_MAX: usize = 1024 * 1024;

/// The most rows a server puts in one `DataRows` (see [`DataRowsBatcher`](crate::DataRowsBatcher)).
pub const DATA_ROWS_BATCH_ROWS_MAX: usize = 1024;

/// The encoded size at which a server stops adding rows to a `DataRows` and sends it. A batch
/// can exceed it by its last row; a single row is limited only by [`FRAME_LEN_MAX`].
pub const DATA_ROWS_BATCH_BYTES_TARGET: usize = 256 * 1024;

const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize, "the length prefix is a u32");
const _: () = assert!(FRAME_RESERVE_AHEAD_MAX <= FRAME_LEN_MAX);
const _: () = assert!(WAL_DATA_LEN_MAX + ENVELOPE_OVERHEAD_MAX <= FRAME_LEN_MAX);
const _: () = assert!(BACKUP_CHUNK_LEN_MAX + ENVELOPE_OVERHEAD_MAX <= FRAME_LEN_MAX);
const _: () =
    assert!(DATA_ROWS_BATCH_BYTES_TARGET < FRAME_LEN_MAX / 2, "a batch plus a large row must still fit");

/// A tokio-util codec that encodes `Out` envelopes and decodes `In` envelopes, one per frame.
/// Use the aliases [`ClientCodec`] and [`ServerCodec`].
///
/// After any decode error the connection must be closed: the stream is not in step any more
/// (an oversized prefix, for one, stays in the buffer and fails every later call).
///
/// Invariants:
/// - every frame this codec writes has a body of at most [`FrameCodec::frame_len_max`] bytes and
///   a valid envelope;
/// - every message it yields came from such a frame;
/// - between calls the inner [`LengthDelimitedCodec`] is always waiting for a length prefix, so
///   all decode state lives in the caller's buffer.
#[derive(Debug)]
pub struct FrameCodec<Out, In> {
    /// Splits frames off the buffer. Only ever called with a whole frame buffered.
    frames: LengthDelimitedCodec,
    /// The body limit in force, at most [`FRAME_LEN_MAX`].
    frame_len_max: usize,
    /// The envelope types; `fn` so the codec is `Send` and `Sync` whatever they are.
    messages: PhantomData<fn(Out) -> In>,
}

/// The client's end of a connection: writes [`ClientMessage`], reads [`ServerMessage`].
pub type ClientCodec = FrameCodec<ClientMessage, ServerMessage>;

/// The server's end of a connection: writes [`ServerMessage`], reads [`ClientMessage`].
pub type ServerCodec = FrameCodec<ServerMessage, ClientMessage>;

impl<Out, In> FrameCodec<Out, In> {
    /// A codec with the protocol's limit, [`FRAME_LEN_MAX`].
    pub fn new() -> Self {
        Self::with_frame_len_max(FRAME_LEN_MAX)
    }

    /// A codec with a tighter body limit, e.g. for a server that wants smaller client frames.
    ///
    /// Panics if `frame_len_max` is above [`FRAME_LEN_MAX`]: that is a programming error, as
    /// the peer would refuse such frames anyway.
    pub fn with_frame_len_max(frame_len_max: usize) -> Self {
        assert!(
            frame_len_max <= FRAME_LEN_MAX,
            "frame limit {frame_len_max} is above the protocol's FRAME_LEN_MAX {FRAME_LEN_MAX}"
        );
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(FRAME_HEADER_LEN)
            .big_endian()
            .max_frame_length(frame_len_max)
            .new_codec();
        FrameCodec { frames, frame_len_max, messages: PhantomData }
    }

    /// The largest frame body this codec accepts and sends, in bytes.
    pub fn frame_len_max(&self) -> usize {
        self.frame_len_max
    }
}

impl<Out, In> Default for FrameCodec<Out, In> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Out, In: Envelope> Decoder for FrameCodec<Out, In> {
    type Item = In;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>> {
        let Some(body_len) = peek_body_len(src) else {
            return Ok(None);
        };
        if body_len > self.frame_len_max {
            return Err(Error::FrameTooLarge { len: body_len, max: self.frame_len_max });
        }
        let frame_len = FRAME_HEADER_LEN + body_len;
        if src.len() < frame_len {
            src.reserve((frame_len - src.len()).min(FRAME_RESERVE_AHEAD_MAX));
            return Ok(None);
        }
        // The whole frame is buffered, so the inner codec goes from "waiting for a prefix"
        // straight back to it and yields the body.
        let Some(body) = self.frames.decode(src)? else {
            return Err(Error::Io(io::Error::other("length-delimited codec held back a complete frame")));
        };
        decode_body(body.freeze()).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Truncated {
                expected: peek_body_len(src).map_or(FRAME_HEADER_LEN, |body_len| FRAME_HEADER_LEN + body_len),
                available: src.len(),
            }),
        }
    }
}

impl<Out: Envelope, In> Encoder<Out> for FrameCodec<Out, In> {
    type Error = Error;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<()> {
        encode_into(&message, self.frame_len_max, dst)
    }
}

impl<Out: Envelope, In> Encoder<&Out> for FrameCodec<Out, In> {
    type Error = Error;

    fn encode(&mut self, message: &Out, dst: &mut BytesMut) -> Result<()> {
        encode_into(message, self.frame_len_max, dst)
    }
}

/// Encodes one envelope as one frame (length prefix and body), without tokio.
///
/// Fails with [`Error::FrameTooLarge`] if the body would exceed [`FRAME_LEN_MAX`] and with
/// [`Error::EmptyEnvelope`] / [`Error::Malformed`] if the envelope breaks its invariants.
pub fn encode_frame<M: Envelope>(message: &M) -> Result<Bytes> {
    let mut frame = BytesMut::new();
    encode_into(message, FRAME_LEN_MAX, &mut frame)?;
    Ok(frame.freeze())
}

/// Decodes exactly one frame (length prefix and body, nothing after it), without tokio.
///
/// Fails with [`Error::Truncated`] if `frame` is shorter than its prefix says, with
/// [`Error::Malformed`] if bytes follow the frame or the body is not a valid envelope, and with
/// [`Error::FrameTooLarge`] / [`Error::EmptyEnvelope`] like the codecs.
pub fn decode_frame<M: Envelope>(frame: &[u8]) -> Result<M> {
    let Some(body_len) = peek_body_len(frame) else {
        return Err(Error::Truncated { expected: FRAME_HEADER_LEN, available: frame.len() });
    };
    if body_len > FRAME_LEN_MAX {
        return Err(Error::FrameTooLarge { len: body_len, max: FRAME_LEN_MAX });
    }
    let frame_len = FRAME_HEADER_LEN + body_len;
    match frame.get(FRAME_HEADER_LEN..frame_len) {
        None => Err(Error::Truncated { expected: frame_len, available: frame.len() }),
        Some(_) if frame.len() > frame_len => Err(Error::Malformed(format!(
            "{} bytes follow a {frame_len}-byte {} frame",
            frame.len() - frame_len,
            M::NAME
        ))),
        Some(body) => decode_body(body),
    }
}

/// The body length announced by the prefix at the start of `buf`, or `None` while fewer than
/// [`FRAME_HEADER_LEN`] bytes are there.
fn peek_body_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    // A prefix that does not fit in usize (16-bit targets) is over any limit anyway.
    Some(usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX))
}

/// Decodes and checks one body. `bytes` fields share `body`'s buffer when it is [`Bytes`].
fn decode_body<M: Envelope>(body: impl Buf) -> Result<M> {
    let message = M::decode(body).map_err(|err| Error::Malformed(format!("{}: {err}", M::NAME)))?;
    message.validate()?;
    Ok(message)
}

/// Appends one frame to `dst`. On error `dst` is left as it was.
fn encode_into<M: Envelope>(message: &M, frame_len_max: usize, dst: &mut BytesMut) -> Result<()> {
    message.validate()?;
    let body_len = message.encoded_len();
    if body_len > frame_len_max {
        return Err(Error::FrameTooLarge { len: body_len, max: frame_len_max });
    }
    // Cannot fail: frame_len_max <= FRAME_LEN_MAX <= u32::MAX, checked at compile time and in
    // `with_frame_len_max`.
    let prefix =
        u32::try_from(body_len).map_err(|_| Error::FrameTooLarge { len: body_len, max: frame_len_max })?;
    dst.reserve(FRAME_HEADER_LEN + body_len);
    dst.put_u32(prefix);
    // Cannot fail either: a BytesMut grows as needed and was just reserved.
    message.encode(dst).map_err(io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        self, client_message, server_message, value, AuthOk, BackupChunk, BaseBackupRequest, Column,
        CommandComplete, DataRows, Keepalive, Position, Purpose, Query, ReadyForQuery, Row, RowDescription,
        StandbyStatus, StartReplication, Startup, Terminate, TimelineSwitch, Value, WalData,
    };
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use prost::Message;

    // ---- strategies for arbitrary messages ----

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z_ ]{1,12}", ".{0,24}"]
    }

    fn blob() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..96).prop_map(Bytes::from)
    }

    /// Any double but NaN, which is not equal to itself; NaN has its own test.
    fn double() -> impl Strategy<Value = f64> {
        use proptest::num::f64::{INFINITE, NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(value::Kind::NULL),
            any::<i64>().prop_map(value::Kind::Int64),
            double().prop_map(value::Kind::Double),
            text().prop_map(value::Kind::Text),
            any::<bool>().prop_map(value::Kind::Boolean),
            any::<i64>().prop_map(value::Kind::TimestampUs),
        ]
        .prop_map(|kind| Value { kind: Some(kind) })
    }

    fn rows() -> impl Strategy<Value = DataRows> {
        vec(vec(value(), 0..6).prop_map(|values| Row { values }), 0..8).prop_map(|rows| DataRows { rows })
    }

    fn client_message() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            // Enums are open on the wire: any i32 must survive, known or not.
            (any::<u32>(), text(), text(), any::<u64>(), text(), any::<i32>()).prop_map(
                |(protocol_version, role, password, expected_system_id, application_name, purpose)| {
                    ClientMessage::from(Startup {
                        protocol_version,
                        role,
                        password,
                        expected_system_id,
                        application_name,
                        purpose,
                    })
                }
            ),
            text().prop_map(|sql| ClientMessage::from(Query { sql })),
            Just(ClientMessage::from(Terminate {})),
            (any::<u32>(), any::<u64>(), text(), text()).prop_map(
                |(timeline, start_lsn, slot, standby_name)| {
                    ClientMessage::from(StartReplication { timeline, start_lsn, slot, standby_name })
                }
            ),
            Just(ClientMessage::from(BaseBackupRequest {})),
            (any::<[u64; 4]>(), any::<i64>(), any::<bool>()).prop_map(
                |(lsns, client_time_us, reply_requested)| {
                    ClientMessage::from(StandbyStatus {
                        received_lsn: lsns[0],
                        written_lsn: lsns[1],
                        flushed_lsn: lsns[2],
                        replayed_lsn: lsns[3],
                        client_time_us,
                        reply_requested,
                    })
                }
            ),
        ]
    }

    fn server_message() -> impl Strategy<Value = ServerMessage> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u32>(), text(), any::<bool>(), text()).prop_map(
                |(protocol_version, system_id, timeline, role, read_only, server_version)| {
                    ServerMessage::from(AuthOk {
                        protocol_version,
                        system_id,
                        timeline,
                        role,
                        read_only,
                        server_version,
                    })
                }
            ),
            (text(), text(), text(), option::of(any::<(u32, u32)>())).prop_map(
                |(code, message, hint, position)| {
                    let position = position.map(|(line, column)| Position { line, column });
                    ServerMessage::from(wire::Error { code, message, hint, position })
                }
            ),
            vec((text(), any::<i32>()), 0..6).prop_map(|columns| {
                let columns = columns.into_iter().map(|(name, r#type)| Column { name, r#type }).collect();
                ServerMessage::from(RowDescription { columns })
            }),
            rows().prop_map(ServerMessage::from),
            (text(), any::<u64>(), option::of(any::<u64>()), option::of(any::<u64>())).prop_map(
                |(tag, rows_affected, txid, lsn)| {
                    ServerMessage::from(CommandComplete { tag, rows_affected, txid, lsn })
                }
            ),
            any::<(bool, bool)>().prop_map(|(in_transaction, failed_transaction)| {
                ServerMessage::from(ReadyForQuery { in_transaction, failed_transaction })
            }),
            (any::<u64>(), blob(), any::<u64>(), any::<i64>()).prop_map(
                |(start_lsn, data, server_flush_lsn, server_time_us)| {
                    ServerMessage::from(WalData { start_lsn, data, server_flush_lsn, server_time_us })
                }
            ),
            any::<(u32, u64)>().prop_map(|(timeline, switch_lsn)| {
                ServerMessage::from(TimelineSwitch { timeline, switch_lsn })
            }),
            any::<(u64, i64, bool)>().prop_map(|(server_flush_lsn, server_time_us, reply_requested)| {
                ServerMessage::from(Keepalive { server_flush_lsn, server_time_us, reply_requested })
            }),
            (blob(), any::<bool>()).prop_map(|(data, last)| ServerMessage::from(BackupChunk {
                data,
                last,
                part: "snapshot".into()
            })),
        ]
    }

    /// Chunk sizes as a socket might deliver them.
    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        vec(1usize..48, 1..16)
    }

    // ---- helpers ----

    /// Feeds `bytes` to `decoder` in chunks of the given sizes (cycled), the way `FramedRead`
    /// does: decode until it wants more, append the next chunk, and at the end `decode_eof`
    /// until it yields nothing. Stops at the first error.
    fn feed<D: Decoder>(
        decoder: &mut D,
        bytes: &[u8],
        chunk_sizes: &[usize],
    ) -> Result<Vec<D::Item>, D::Error> {
        let mut buffer = BytesMut::new();
        let mut items = Vec::new();
        let mut rest = bytes;
        for &size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            buffer.extend_from_slice(chunk);
            while let Some(item) = decoder.decode(&mut buffer)? {
                items.push(item);
            }
        }
        while let Some(item) = decoder.decode_eof(&mut buffer)? {
            items.push(item);
        }
        Ok(items)
    }

    fn encode_all<M: Envelope, D>(codec: &mut FrameCodec<M, D>, messages: &[M]) -> BytesMut {
        let mut bytes = BytesMut::new();
        for message in messages {
            codec.encode(message, &mut bytes).expect("encode a valid message");
        }
        bytes
    }

    fn prefix(len: u32) -> BytesMut {
        BytesMut::from(&len.to_be_bytes()[..])
    }

    // ---- properties ----

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn client_messages_round_trip(messages in vec(client_message(), 1..8), chunks in chunk_sizes()) {
            let bytes = encode_all(&mut ClientCodec::new(), &messages);
            let via_helper: Vec<u8> =
                messages.iter().flat_map(|m| encode_frame(m).expect("encode a valid message")).collect();
            prop_assert_eq!(&bytes[..], &via_helper[..]);
            let decoded = feed(&mut ServerCodec::new(), &bytes, &chunks).expect("decode what was encoded");
            prop_assert_eq!(decoded, messages);
        }

        #[test]
        fn server_messages_round_trip(messages in vec(server_message(), 1..8), chunks in chunk_sizes()) {
            let bytes = encode_all(&mut ServerCodec::new(), &messages);
            let via_helper: Vec<u8> =
                messages.iter().flat_map(|m| encode_frame(m).expect("encode a valid message")).collect();
            prop_assert_eq!(&bytes[..], &via_helper[..]);
            let decoded = feed(&mut ClientCodec::new(), &bytes, &chunks).expect("decode what was encoded");
            prop_assert_eq!(decoded, messages);
        }

        #[test]
        fn single_frames_round_trip_without_tokio(client in client_message(), server in server_message()) {
            let frame = encode_frame(&client).expect("encode");
            prop_assert_eq!(decode_frame::<ClientMessage>(&frame).expect("decode"), client);
            let frame = encode_frame(&server).expect("encode");
            prop_assert_eq!(decode_frame::<ServerMessage>(&frame).expect("decode"), server);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), chunks in chunk_sizes()) {
            let _ = feed(&mut ClientCodec::new(), &bytes, &chunks);
            let _ = feed(&mut ServerCodec::new(), &bytes, &chunks);
            let _ = decode_frame::<ClientMessage>(&bytes);
            let _ = decode_frame::<ServerMessage>(&bytes);
        }

        /// Garbage behind a valid prefix reaches the protobuf decoder. Whatever it accepts must
        /// re-encode to a frame that decodes to the same message.
        #[test]
        fn arbitrary_bodies_never_panic(body in vec(any::<u8>(), 0..256), chunks in chunk_sizes()) {
            let mut frame = prefix(u32::try_from(body.len()).expect("small body")).to_vec();
            frame.extend_from_slice(&body);
            if let Ok(messages) = feed(&mut ServerCodec::new(), &frame, &chunks) {
                prop_assert_eq!(messages.len(), 1);
                let again = encode_frame(&messages[0]).expect("re-encode a decoded message");
                let reread: ClientMessage = decode_frame(&again).expect("decode a re-encoded message");
                prop_assert_eq!(reread.encode_to_vec(), messages[0].encode_to_vec());
            }
            if let Ok(messages) = feed(&mut ClientCodec::new(), &frame, &chunks) {
                prop_assert_eq!(messages.len(), 1);
                let again = encode_frame(&messages[0]).expect("re-encode a decoded message");
                let reread: ServerMessage = decode_frame(&again).expect("decode a re-encoded message");
                prop_assert_eq!(reread.encode_to_vec(), messages[0].encode_to_vec());
            }
        }

        /// Valid frames with a few bytes overwritten reach deep into the protobuf decoder; it
        /// must fail cleanly or yield a message that survives its own round trip.
        #[test]
        fn mutated_frames_never_panic(
            client in client_message(),
            server in server_message(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            for mut body in [client.encode_to_vec(), server.encode_to_vec()] {
                if body.is_empty() {
                    continue;
                }
                for (at, byte) in &edits {
                    let at = at.index(body.len());
                    body[at] = *byte;
                }
                let mut frame = prefix(u32::try_from(body.len()).expect("small body"));
                frame.extend_from_slice(&body);
                if let Ok(Some(message)) = ServerCodec::new().decode(&mut frame.clone()) {
                    let again = encode_frame(&message).expect("re-encode a decoded message");
                    prop_assert_eq!(decode_frame::<ClientMessage>(&again).expect("decode"), message);
                }
                if let Ok(Some(message)) = ClientCodec::new().decode(&mut frame) {
                    let again = encode_frame(&message).expect("re-encode a decoded message");
                    let reread: ServerMessage = decode_frame(&again).expect("decode");
                    prop_assert_eq!(reread.encode_to_vec(), message.encode_to_vec());
                }
            }
        }

        /// Every prefix of a valid stream is "need more bytes", never an error or a message
        /// from a partial frame.
        #[test]
        fn truncated_frames_wait_for_the_rest(
            message in server_message(),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = encode_frame(&message).expect("encode");
            let cut = cut.index(frame.len());
            let mut buffer = BytesMut::from(&frame[..cut]);
            let mut codec = ClientCodec::new();
            prop_assert!(matches!(codec.decode(&mut buffer), Ok(None)));
            prop_assert_eq!(buffer.len(), cut, "a partial frame is not consumed");
            buffer.extend_from_slice(&frame[cut..]);
            prop_assert_eq!(codec.decode(&mut buffer).expect("decode"), Some(message));
            prop_assert!(buffer.is_empty());
        }
    }

    // ---- examples ----

    #[test]
    fn query_frame_bytes_are_stable() {
        let frame = encode_frame(&ClientMessage::from(Query { sql: "SELECT 1".into() })).unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 0, 0, 12,        // len u32 BE: the body is 12 bytes
            0x12, 10,           // ClientMessage field 2 (query), 10 bytes
            0x0a, 8,            // Query field 1 (sql), 8 bytes
            b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1',
        ];
        assert_eq!(&frame[..], expected);
    }

    #[test]
    fn frames_are_plain_length_delimited_frames() {
        let message = ServerMessage::from(CommandComplete {
            tag: "INSERT".into(),
            rows_affected: 3,
            txid: Some(7),
            lsn: None,
        });
        let ours = encode_frame(&message).unwrap();
        let body = LengthDelimitedCodec::new().decode(&mut BytesMut::from(&ours[..])).unwrap().unwrap();
        assert_eq!(&body[..], &message.encode_to_vec()[..]);

        let mut theirs = BytesMut::new();
        LengthDelimitedCodec::new().encode(Bytes::from(message.encode_to_vec()), &mut theirs).unwrap();
        assert_eq!(ClientCodec::new().decode(&mut theirs).unwrap(), Some(message));
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_the_body() {
        for len in [FRAME_LEN_MAX as u32 + 1, u32::MAX] {
            let mut buffer = prefix(len);
            let capacity = buffer.capacity();
            let err = ServerCodec::new().decode(&mut buffer).unwrap_err();
            assert!(
                matches!(err, Error::FrameTooLarge { len: l, max: FRAME_LEN_MAX } if l == len as usize),
                "{err}"
            );
            assert_eq!(buffer.capacity(), capacity, "nothing was reserved for the body");
            assert_eq!(err.code(), crate::error_code::PROTOCOL_VIOLATION);
        }

        // A tighter limit works the same way, and a prefix at the limit is fine.
        let mut codec = ServerCodec::with_frame_len_max(16);
        assert!(matches!(codec.decode(&mut prefix(17)), Err(Error::FrameTooLarge { len: 17, max: 16 })));
        assert!(matches!(codec.decode(&mut prefix(16)), Ok(None)));
        assert!(matches!(decode_frame::<ClientMessage>(&prefix(u32::MAX)), Err(Error::FrameTooLarge { .. })));
    }

    #[test]
    fn a_large_announced_frame_reserves_a_bounded_buffer() {
        let mut buffer = prefix(FRAME_LEN_MAX as u32);
        assert!(matches!(ServerCodec::new().decode(&mut buffer), Ok(None)));
        assert!(buffer.capacity() <= FRAME_HEADER_LEN + 2 * FRAME_RESERVE_AHEAD_MAX, "{}", buffer.capacity());
    }

    #[test]
    fn oversized_messages_are_not_sent() {
        let mut codec = ClientCodec::with_frame_len_max(8);
        let mut dst = BytesMut::new();
        let err =
            codec.encode(ClientMessage::from(Query { sql: "SELECT 1 + 1".into() }), &mut dst).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 16, max: 8 }), "{err}");
        assert!(dst.is_empty(), "nothing written on error");
    }

    #[test]
    fn empty_envelopes_are_refused_both_ways() {
        let mut dst = BytesMut::new();
        let err = ClientCodec::new().encode(ClientMessage::default(), &mut dst).unwrap_err();
        assert!(matches!(err, Error::EmptyEnvelope { envelope: "ClientMessage" }), "{err}");
        assert!(dst.is_empty());

        // A zero-length body is a valid protobuf encoding of an empty envelope.
        let err = ServerCodec::new().decode(&mut prefix(0)).unwrap_err();
        assert!(matches!(err, Error::EmptyEnvelope { envelope: "ClientMessage" }), "{err}");

        // So is an envelope holding only a message kind from the future (field 99, varint 1).
        let mut frame = prefix(3);
        frame.extend_from_slice(&[0x98, 0x06, 0x01]);
        let err = ClientCodec::new().decode(&mut frame).unwrap_err();
        assert!(matches!(err, Error::EmptyEnvelope { envelope: "ServerMessage" }), "{err}");
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let mut frame = prefix(1);
        frame.extend_from_slice(&[0xff]);
        let err = ServerCodec::new().decode(&mut frame).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");

        // A row value with no kind.
        let rows = ServerMessage {
            msg: Some(server_message::Msg::DataRows(DataRows {
                rows: vec![Row { values: vec![Value::default()] }],
            })),
        };
        let mut frame = prefix(u32::try_from(rows.encoded_len()).unwrap());
        frame.extend_from_slice(&rows.encode_to_vec());
        let err = ClientCodec::new().decode(&mut frame).unwrap_err();
        assert!(matches!(&err, Error::Malformed(detail) if detail.contains("no kind")), "{err}");
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncation() {
        let frame = encode_frame(&ClientMessage::from(Terminate {})).unwrap();
        let mut codec = ServerCodec::new();
        assert!(matches!(codec.decode_eof(&mut BytesMut::new()), Ok(None)), "a clean end");
        for cut in 1..frame.len() {
            let err = codec.decode_eof(&mut BytesMut::from(&frame[..cut])).unwrap_err();
            assert!(matches!(err, Error::Truncated { available, .. } if available == cut), "{err}");
        }
        let mut whole = BytesMut::from(&frame[..]);
        assert_eq!(codec.decode_eof(&mut whole).unwrap(), Some(ClientMessage::from(Terminate {})));
        assert!(matches!(codec.decode_eof(&mut whole), Ok(None)));
    }

    #[test]
    fn decode_frame_wants_exactly_one_frame() {
        let frame = encode_frame(&ClientMessage::from(BaseBackupRequest {})).unwrap();
        assert!(matches!(
            decode_frame::<ClientMessage>(&frame[..2]),
            Err(Error::Truncated { expected: 4, available: 2 })
        ));
        assert!(matches!(
            decode_frame::<ClientMessage>(&frame[..frame.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut longer = frame.to_vec();
        longer.push(0);
        assert!(matches!(decode_frame::<ClientMessage>(&longer), Err(Error::Malformed(_))));
        assert_eq!(decode_frame::<ClientMessage>(&frame).unwrap(), ClientMessage::from(BaseBackupRequest {}));
    }

    #[test]
    fn nan_bits_survive() {
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let rows =
            DataRows { rows: vec![Row { values: vec![Value { kind: Some(value::Kind::Double(nan)) }] }] };
        let frame = encode_frame(&ServerMessage::from(rows)).unwrap();
        let decoded: ServerMessage = decode_frame(&frame).unwrap();
        let Some(server_message::Msg::DataRows(rows)) = decoded.msg else {
            panic!("not DataRows: {decoded:?}")
        };
        let Some(value::Kind::Double(bits)) = rows.rows[0].values[0].kind else { panic!("not a double") };
        assert_eq!(bits.to_bits(), nan.to_bits());
    }

    #[test]
    fn wal_data_payload_limit_leaves_room_for_the_envelope() {
        let largest = ServerMessage::from(WalData {
            start_lsn: u64::MAX,
            data: Bytes::from(vec![0xAB; WAL_DATA_LEN_MAX]),
            server_flush_lsn: u64::MAX,
            server_time_us: i64::MIN,
        });
        assert!(
            largest.encoded_len() <= WAL_DATA_LEN_MAX + ENVELOPE_OVERHEAD_MAX,
            "{}",
            largest.encoded_len()
        );
        let chunk = ServerMessage::from(BackupChunk {
            data: Bytes::from(vec![1; BACKUP_CHUNK_LEN_MAX]),
            last: true,
            part: "snapshot".into(),
        });
        assert!(chunk.encoded_len() <= BACKUP_CHUNK_LEN_MAX + ENVELOPE_OVERHEAD_MAX);
    }

    #[test]
    fn decoded_wal_data_shares_the_frame_buffer() {
        let data = Bytes::from(vec![7; 4096]);
        let frame = encode_frame(&ServerMessage::from(WalData {
            start_lsn: 1,
            data,
            server_flush_lsn: 2,
            server_time_us: 3,
        }))
        .unwrap();
        let mut buffer = BytesMut::from(&frame[..]);
        let start = buffer.as_ptr() as usize;
        let end = start + buffer.len();
        let decoded = ClientCodec::new().decode(&mut buffer).unwrap();
        let Some(ServerMessage { msg: Some(server_message::Msg::WalData(wal)) }) = decoded else {
            panic!("not WalData")
        };
        let at = wal.data.as_ptr() as usize;
        assert!((start..end).contains(&at), "WAL bytes were copied out of the frame");
    }

    #[test]
    fn startup_purpose_names() {
        let startup = Startup { purpose: Purpose::Replication.into(), ..Startup::default() };
        assert_eq!(startup.purpose(), Purpose::Replication);
        assert_eq!(Startup::default().purpose(), Purpose::Unspecified);
        assert_eq!(
            ClientMessage::from(startup).msg.map(|m| matches!(m, client_message::Msg::Startup(_))),
            Some(true)
        );
    }
}
