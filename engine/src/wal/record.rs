//! WAL record kinds, their bodies, and the record frame.
//!
//! Record frame (all integers little-endian):
//!
//! | len u32 | crc32c u32 | prev_lsn u64 | kind u8 | body |
//!
//! `len` is the whole record, header included; the CRC covers `prev_lsn..body`. `prev_lsn` is
//! the Lsn of the record before this one, so a reader notices a skipped or misplaced record.
//!
//! Commit body:
//!
//! | txid uvarint | commit_time_us ivarint | digest u64 | n_ddl uvarint | ddl* | changes |
//!
//! Changes (also the whole body of a chunk record):
//!
//! | n_tables uvarint | (table_id uvarint | n uvarint | (op u8 | len uvarint | bytes)*)* |
//!
//! `op` 1 = put (bytes = the encoded row), 2 = delete (bytes = the encoded key). Grouping by
//! table is what lets the archive tools say which tables a transaction touched and how many rows.

use crate::schema::{put_str, TableDef, TableId, NAME_LEN_MAX};
use crate::value::{put_ivarint, put_uvarint, CodecError, Reader, ROW_LEN_MAX};
use hindsight_protocol::{Lsn, Timeline, TxId};

/// Bytes of the record header: len, crc, prev_lsn, kind.
pub const RECORD_HEADER_LEN: usize = 17;
/// The largest record. Transactions whose changes do not fit are split into chunk records
/// followed by their commit.
pub const RECORD_LEN_MAX: usize = 256 * 1024;
/// The largest number of changes one record may claim (a decoder bound, not a transaction bound).
pub const RECORD_CHANGES_MAX: usize = RECORD_LEN_MAX / 2;
/// Restore point names are at most this many bytes.
pub const RESTORE_POINT_NAME_MAX: usize = 200;

const _: () = assert!(ROW_LEN_MAX + 64 < RECORD_LEN_MAX / 2, "a single row change must fit in a chunk");

/// The kind byte of each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A committed transaction (its last or only record).
    Commit = 1,
    /// Part of a large transaction's changes; its commit follows.
    Chunk = 2,
    /// A snapshot finished at `snapshot_lsn`.
    Checkpoint = 3,
    /// A named restore point.
    RestorePoint = 4,
    /// A timeline switch at the end of a recovery (promotion).
    EndOfRecovery = 5,
}

impl RecordKind {
    /// The kind of a byte.
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Commit,
            2 => RecordKind::Chunk,
            3 => RecordKind::Checkpoint,
            4 => RecordKind::RestorePoint,
            5 => RecordKind::EndOfRecovery,
            _ => return None,
        })
    }
}

/// Put or delete of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChangeOp {
    /// Insert or replace; bytes are the encoded row.
    Put = 1,
    /// Delete; bytes are the encoded key.
    Delete = 2,
}

/// One row change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Put or delete.
    pub op: ChangeOp,
    /// The row (put) or key (delete) encoding.
    pub bytes: Box<[u8]>,
}

/// The changes to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChanges {
    /// The table.
    pub table: TableId,
    /// Its changes, at most one per key.
    pub changes: Vec<Change>,
}

/// A DDL operation; self-describing so archive tools can show it without the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DdlOp {
    /// CREATE TABLE.
    Create(TableDef),
    /// DROP TABLE.
    Drop {
        /// The dropped table's id.
        id: TableId,
        /// Its name.
        name: String,
    },
    /// TRUNCATE: the name moves to a new, empty id with the same columns.
    Truncate {
        /// The old id.
        old_id: TableId,
        /// The new id.
        new_id: TableId,
        /// The table's name.
        name: String,
    },
}

/// A transaction's commit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    /// Assigned at commit, in commit order.
    pub txid: TxId,
    /// Microseconds since the epoch, non-decreasing along the WAL.
    pub commit_time_us: i64,
    /// The state digest after this transaction.
    pub digest: u64,
    /// DDL, applied before the row changes.
    pub ddl: Vec<DdlOp>,
    /// Row changes not already sent in chunk records.
    pub changes: Vec<TableChanges>,
}

/// One decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A commit.
    Commit(CommitRecord),
    /// A chunk of a large transaction.
    Chunk(Vec<TableChanges>),
    /// A snapshot was taken at `snapshot_lsn`.
    Checkpoint {
        /// The snapshot's Lsn.
        snapshot_lsn: Lsn,
        /// When.
        time_us: i64,
    },
    /// A restore point.
    RestorePoint {
        /// Its name.
        name: String,
        /// When.
        time_us: i64,
    },
    /// The end of a recovery: the WAL continues on `new_timeline`.
    EndOfRecovery {
        /// The timeline that starts here.
        new_timeline: Timeline,
        /// The timeline that ends here.
        prev_timeline: Timeline,
        /// When.
        time_us: i64,
    },
}

impl Record {
    /// The kind byte.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Commit(_) => RecordKind::Commit,
            Record::Chunk(_) => RecordKind::Chunk,
            Record::Checkpoint { .. } => RecordKind::Checkpoint,
            Record::RestorePoint { .. } => RecordKind::RestorePoint,
            Record::EndOfRecovery { .. } => RecordKind::EndOfRecovery,
        }
    }

    /// Appends the body encoding.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Record::Commit(c) => {
                put_uvarint(out, c.txid.0);
                put_ivarint(out, c.commit_time_us);
                out.extend_from_slice(&c.digest.to_le_bytes());
                put_uvarint(out, c.ddl.len() as u64);
                for op in &c.ddl {
                    encode_ddl(op, out);
                }
                encode_changes(&c.changes, out);
            }
            Record::Chunk(changes) => encode_changes(changes, out),
            Record::Checkpoint { snapshot_lsn, time_us } => {
                out.extend_from_slice(&snapshot_lsn.0.to_le_bytes());
                put_ivarint(out, *time_us);
            }
            Record::RestorePoint { name, time_us } => {
                put_str(out, name);
                put_ivarint(out, *time_us);
            }
            Record::EndOfRecovery { new_timeline, prev_timeline, time_us } => {
                out.extend_from_slice(&new_timeline.0.to_le_bytes());
                out.extend_from_slice(&prev_timeline.0.to_le_bytes());
                put_ivarint(out, *time_us);
            }
        }
    }

    /// Decodes a body of `kind`. Every byte must be consumed.
    pub fn decode_body(kind: RecordKind, body: &[u8]) -> Result<Record, CodecError> {
        let mut r = Reader::new(body);
        let rec = match kind {
            RecordKind::Commit => {
                let txid = TxId(r.uvarint()?);
                let commit_time_us = r.ivarint()?;
                let digest = r.u64()?;
                let n_ddl = r.len(RECORD_CHANGES_MAX)?;
                let mut ddl = Vec::with_capacity(n_ddl.min(16));
                for _ in 0..n_ddl {
                    ddl.push(decode_ddl(&mut r)?);
                }
                let changes = decode_changes(&mut r)?;
                Record::Commit(CommitRecord { txid, commit_time_us, digest, ddl, changes })
            }
            RecordKind::Chunk => Record::Chunk(decode_changes(&mut r)?),
            RecordKind::Checkpoint => {
                Record::Checkpoint { snapshot_lsn: Lsn(r.u64()?), time_us: r.ivarint()? }
            }
            RecordKind::RestorePoint => Record::RestorePoint {
                name: r.string(RESTORE_POINT_NAME_MAX)?.to_string(),
                time_us: r.ivarint()?,
            },
            RecordKind::EndOfRecovery => Record::EndOfRecovery {
                new_timeline: Timeline(r.u32()?),
                prev_timeline: Timeline(r.u32()?),
                time_us: r.ivarint()?,
            },
        };
        if !r.is_empty() {
            return Err(CodecError("trailing bytes after record body"));
        }
        Ok(rec)
    }
}

fn encode_ddl(op: &DdlOp, out: &mut Vec<u8>) {
    match op {
        DdlOp::Create(def) => {
            out.push(1);
            def.encode(out);
        }
        DdlOp::Drop { id, name } => {
            out.push(2);
            put_uvarint(out, u64::from(id.0));
            put_str(out, name);
        }
        DdlOp::Truncate { old_id, new_id, name } => {
            out.push(3);
            put_uvarint(out, u64::from(old_id.0));
            put_uvarint(out, u64::from(new_id.0));
            put_str(out, name);
        }
    }
}

fn table_id(r: &mut Reader<'_>) -> Result<TableId, CodecError> {
    Ok(TableId(u32::try_from(r.uvarint()?).map_err(|_| CodecError("table id past u32"))?))
}

fn decode_ddl(r: &mut Reader<'_>) -> Result<DdlOp, CodecError> {
    Ok(match r.u8()? {
        1 => DdlOp::Create(TableDef::decode(r)?),
        2 => DdlOp::Drop { id: table_id(r)?, name: r.string(NAME_LEN_MAX)?.to_string() },
        3 => DdlOp::Truncate {
            old_id: table_id(r)?,
            new_id: table_id(r)?,
            name: r.string(NAME_LEN_MAX)?.to_string(),
        },
        _ => return Err(CodecError("unknown DDL op")),
    })
}

/// Appends a change list.
pub fn encode_changes(tables: &[TableChanges], out: &mut Vec<u8>) {
    put_uvarint(out, tables.len() as u64);
    for t in tables {
        put_uvarint(out, u64::from(t.table.0));
        put_uvarint(out, t.changes.len() as u64);
        for c in &t.changes {
            out.push(c.op as u8);
            put_uvarint(out, c.bytes.len() as u64);
            out.extend_from_slice(&c.bytes);
        }
    }
}

fn decode_changes(r: &mut Reader<'_>) -> Result<Vec<TableChanges>, CodecError> {
    let n_tables = r.len(RECORD_CHANGES_MAX)?;
    let mut tables = Vec::with_capacity(n_tables.min(64));
    for _ in 0..n_tables {
        let table = table_id(r)?;
        let n = r.len(RECORD_CHANGES_MAX)?;
        // Each change takes at least 2 bytes; refuse counts the body cannot hold before allocating.
        if n > r.remaining() / 2 {
            return Err(CodecError("change count larger than the record"));
        }
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let op = match r.u8()? {
                1 => ChangeOp::Put,
                2 => ChangeOp::Delete,
                _ => return Err(CodecError("unknown change op")),
            };
            let len = r.len(ROW_LEN_MAX)?;
            changes.push(Change { op, bytes: r.bytes(len)?.into() });
        }
        tables.push(TableChanges { table, changes });
    }
    Ok(tables)
}

/// Appends a framed record: header, then `body`, which must already be encoded.
pub fn frame_record(prev_lsn: Lsn, kind: RecordKind, body: &[u8], out: &mut Vec<u8>) {
    let len = RECORD_HEADER_LEN + body.len();
    assert!(len <= RECORD_LEN_MAX, "record of {len} bytes past RECORD_LEN_MAX");
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&prev_lsn.0.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The encoded size of a change list entry for one change, for chunk planning.
pub fn change_encoded_len(bytes_len: usize) -> usize {
    1 + 3 + bytes_len
}
