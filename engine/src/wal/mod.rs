//! The write-ahead log: records, segments, the incremental decoder, the group-commit writer and
//! the recovery reader.

pub mod decoder;
pub mod holds;
pub mod reader;
pub mod record;
pub mod segment;
pub mod writer;

pub use decoder::{DecodeError, DecodeErrorKind, Decoder, WalEntry};
pub use record::{Change, ChangeOp, CommitRecord, DdlOp, Record, RecordKind, TableChanges};
