//! The crate's one error type.

use crate::error_code;

/// Everything that can go wrong moving messages through frames.
///
/// Grouped by what the caller must do:
/// - [`Error::FrameTooLarge`], [`Error::Malformed`], [`Error::EmptyEnvelope`] and
///   [`Error::Truncated`] mean the peer broke the protocol (or, when encoding, that this side
///   tried to): reply with an `Error` whose code is [`Error::code`] (`protocol_violation`) where
///   that is still possible, then close the connection. The byte stream cannot be trusted to be
///   in step after any of them.
/// - [`Error::Io`] means the transport failed: close the connection; a client may reconnect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame's length prefix (or a message to encode) is over the limit. When decoding, it is
    /// refused as soon as the 4-byte prefix arrives, before any of the body is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The body length the prefix announced (or the encoded length of the message).
        len: usize,
        /// The limit in force.
        max: usize,
    },

    /// A frame's body is not a valid protobuf encoding of the expected envelope, or a part of it
    /// that must be set is not (e.g. a row value with no kind).
    #[error("malformed message: {0}")]
    Malformed(String),

    /// An envelope (`ClientMessage` / `ServerMessage`) with no message in its `oneof`: either the
    /// peer sent an empty envelope or it sent a message kind this version does not know.
    #[error("{envelope} carries no message (empty, or a kind this version does not know)")]
    EmptyEnvelope {
        /// The envelope's name, `ClientMessage` or `ServerMessage`.
        envelope: &'static str,
    },

    /// The input ended in the middle of a frame: at end of stream, or a buffer given to
    /// [`decode_frame`](crate::decode_frame) that is shorter than its length prefix says.
    #[error("truncated frame: {expected} bytes expected, {available} available")]
    Truncated {
        /// Bytes the frame needs, prefix included (or the prefix's own 4 bytes when even it is
        /// incomplete).
        expected: usize,
        /// Bytes there were.
        available: usize,
    },

    /// Reading or writing the transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The stable wire error code to report this error to the peer with, when it can still be
    /// reported: [`error_code::PROTOCOL_VIOLATION`] for every protocol error and
    /// [`error_code::IO_ERROR`] for [`Error::Io`] (which is normally not reportable at all).
    pub fn code(&self) -> &'static str {
        match self {
            Error::FrameTooLarge { .. }
            | Error::Malformed(_)
            | Error::EmptyEnvelope { .. }
            | Error::Truncated { .. } => error_code::PROTOCOL_VIOLATION,
            Error::Io(_) => error_code::IO_ERROR,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
