//! The hindsight protocol crate: the [`Lsn`], [`Timeline`] and [`TxId`] newtypes every crate
//! speaks in, the wire messages (`.proto` schemas under `proto/`, compiled by prost-build with
//! `protox` so no system `protoc` is needed) and the length-delimited framing codec.
//!
//! Bytes enter as frames from a socket, are checked against [`FRAME_LEN_MAX`] and decoded into
//! messages; messages leave the same way. Nothing here does I/O itself.
//!
//! ```text
//! | len u32 big-endian | protobuf body: ClientMessage or ServerMessage (len bytes) |
//! ```
//!
//! - [`wire`] holds the generated messages; [`ClientMessage`] and [`ServerMessage`] are the two
//!   envelopes, each carrying exactly one message in its `msg` oneof. `From` conversions wrap a
//!   message in its envelope: `ClientMessage::from(wire::Query { sql })`.
//! - [`ClientCodec`] / [`ServerCodec`] frame envelopes for `tokio_util::codec::Framed`;
//!   [`encode_frame`] / [`decode_frame`] do one frame without tokio.
//! - [`DataRowsBatcher`] cuts a result set into `DataRows` batches.
//! - [`error_code`] lists the stable codes of `wire::Error`.
//! - Every bound is a named constant ([`FRAME_LEN_MAX`], [`WAL_DATA_LEN_MAX`], ...), their
//!   relations checked at compile time.
//!
//! Wire integers stay plain (`uint64 start_lsn`); convert to [`Lsn`] / [`Timeline`] / [`TxId`] at
//! the edge, where the message is read. `docs/protocol.md` describes the sequences.

#![warn(missing_docs)]

mod codec;
mod error;
pub mod error_code;
mod message;
mod rows;
// `Lsn::add(self, u64)` predates this lint; `types.rs` belongs to the lead, who may rename it or
// implement `std::ops::Add<u64>` instead.
#[allow(clippy::should_implement_trait)]
mod types;

/// The generated wire messages of `proto/hindsight.proto` (package `hindsight.v1`). Field and
/// message docs come from the comments in the `.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/hindsight.v1.rs"));
}

pub use codec::{
    decode_frame, encode_frame, ClientCodec, FrameCodec, ServerCodec, BACKUP_CHUNK_LEN_MAX,
    DATA_ROWS_BATCH_BYTES_TARGET, DATA_ROWS_BATCH_ROWS_MAX, ENVELOPE_OVERHEAD_MAX, FRAME_HEADER_LEN,
    FRAME_LEN_MAX, FRAME_RESERVE_AHEAD_MAX, PROTOCOL_VERSION, WAL_DATA_LEN_MAX,
};
pub use error::{Error, Result};
pub use message::Envelope;
pub use rows::DataRowsBatcher;
pub use types::{Lsn, ParseError, Timeline, TxId};
pub use wire::{ClientMessage, ServerMessage};
