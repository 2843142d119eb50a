//! The one WAL decoder, fed bytes incrementally: crash recovery feeds it segment files, replicas
//! will feed it the replication stream, the archive tools archived segments.
//!
//! The input is the WAL byte stream from a starting Lsn on, segment headers and end-of-segment
//! padding included, exactly as it lies in segment files. The decoder checks every segment
//! header (magic, checksum, system id, segment number and size), every record's length, CRC32C
//! and `prev_lsn` link, and the body's encoding.

use super::record::{Record, RecordKind, RECORD_HEADER_LEN, RECORD_LEN_MAX};
use super::segment::{SegmentHeader, SEGMENT_END_MARKER, SEGMENT_HEADER_LEN};
use hindsight_protocol::{Lsn, Timeline};
use std::fmt;

/// Buffered-but-undecoded bytes beyond which the decoder compacts its buffer.
const COMPACT_AT_BYTES: usize = 1024 * 1024;

/// One decoded record and where it lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalEntry {
    /// The record's start Lsn (its identity; what `prev_lsn` links to).
    pub lsn: Lsn,
    /// The Lsn just past the record. For a commit, this is the commit Lsn: its changes are
    /// visible at `end_lsn` and later.
    pub end_lsn: Lsn,
    /// The record.
    pub record: Record,
}

/// What failed a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The length field is zero: nothing was ever written here (the end of the WAL in a
    /// zero-filled segment).
    Unwritten,
    /// The length is impossible (too small, past the limit or past the segment end).
    BadLength,
    /// The CRC does not match.
    BadChecksum,
    /// The record does not link to the one before it.
    BadLink,
    /// The body does not decode.
    BadBody,
    /// A segment header is damaged, or belongs to another cluster or position.
    BadSegmentHeader,
}

/// A decoding failure at an Lsn. Whether it is a torn tail or corruption is for the caller to
/// decide: only it knows whether this is the newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Where the bad record (or segment header) starts.
    pub lsn: Lsn,
    /// What failed.
    pub kind: DecodeErrorKind,
    /// Detail for the operator.
    pub detail: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid WAL at {}: {}", self.lsn, self.detail)
    }
}

impl std::error::Error for DecodeError {}

/// The incremental decoder.
///
/// Invariants:
/// - `pos` is the Lsn of `buf[head]`; bytes before `head` are consumed.
/// - `prev_lsn`, when set, is the start Lsn of the last record returned.
pub struct Decoder {
    buf: Vec<u8>,
    head: usize,
    pos: Lsn,
    segment_size_bytes: u64,
    system_id: u64,
    prev_lsn: Option<Lsn>,
    timeline: Option<Timeline>,
}

impl Decoder {
    /// A decoder for the stream starting at `start`, which must be a record boundary (or a
    /// segment start). `prev_lsn` is the start of the record before `start`, if known; the
    /// first record's link is checked against it.
    pub fn new(start: Lsn, prev_lsn: Option<Lsn>, segment_size_bytes: u64, system_id: u64) -> Decoder {
        Decoder {
            buf: Vec::new(),
            head: 0,
            pos: start,
            segment_size_bytes,
            system_id,
            prev_lsn,
            timeline: None,
        }
    }

    /// Appends the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.head > 0 && (self.head >= COMPACT_AT_BYTES || self.head == self.buf.len()) {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The Lsn of the next byte to decode: the end of the last record returned (or a later
    /// segment boundary, once padding and headers are consumed).
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// The start of the last record returned.
    pub fn prev_lsn(&self) -> Option<Lsn> {
        self.prev_lsn
    }

    /// The timeline of the last segment header read.
    pub fn timeline(&self) -> Option<Timeline> {
        self.timeline
    }

    /// Bytes fed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.head
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        self.pos = self.pos.add(n as u64);
    }

    /// The next record, `Ok(None)` when more bytes are needed.
    // Not `Iterator::next`: a decoder is fed more bytes between calls, so `Ok(None)` means
    // "not yet", never "finished".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<WalEntry>, DecodeError> {
        loop {
            let offset = self.pos.0 % self.segment_size_bytes;
            let remaining_in_segment = (self.segment_size_bytes - offset) as usize;
            if offset == 0 {
                if self.avail().len() < SEGMENT_HEADER_LEN {
                    return Ok(None);
                }
                self.check_segment_header()?;
                self.consume(SEGMENT_HEADER_LEN);
                continue;
            }
            if remaining_in_segment < 4 {
                // Too little room for even a marker: the rest of the segment is padding.
                if self.avail().len() < remaining_in_segment {
                    return Ok(None);
                }
                self.consume(remaining_in_segment);
                continue;
            }
            let avail = self.avail();
            if avail.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_le_bytes(avail[0..4].try_into().expect("4 bytes"));
            if len == SEGMENT_END_MARKER {
                if avail.len() < remaining_in_segment {
                    return Ok(None);
                }
                self.consume(remaining_in_segment);
                continue;
            }
            let lsn = self.pos;
            let err = |kind, detail: String| Err(DecodeError { lsn, kind, detail });
            if len == 0 {
                return err(DecodeErrorKind::Unwritten, "no record here (zero length)".into());
            }
            let len = len as usize;
            if !(RECORD_HEADER_LEN..=RECORD_LEN_MAX).contains(&len) || len > remaining_in_segment {
                return err(
                    DecodeErrorKind::BadLength,
                    format!(
                        "record length {len} is impossible ({remaining_in_segment} bytes left in segment)"
                    ),
                );
            }
            if avail.len() < len {
                return Ok(None);
            }
            let rec = &avail[..len];
            let crc = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
            if crc32c::crc32c(&rec[8..]) != crc {
                return err(DecodeErrorKind::BadChecksum, format!("record checksum mismatch (length {len})"));
            }
            let prev = Lsn(u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes")));
            if let Some(expected) = self.prev_lsn {
                if prev != expected {
                    return err(
                        DecodeErrorKind::BadLink,
                        format!("record links to previous record {prev}, expected {expected}"),
                    );
                }
            }
            let Some(kind) = RecordKind::from_u8(rec[16]) else {
                return err(DecodeErrorKind::BadBody, format!("unknown record kind {}", rec[16]));
            };
            let record = match Record::decode_body(kind, &rec[RECORD_HEADER_LEN..]) {
                Ok(r) => r,
                Err(e) => return err(DecodeErrorKind::BadBody, format!("{kind:?} record body: {e}")),
            };
            self.consume(len);
            self.prev_lsn = Some(lsn);
            return Ok(Some(WalEntry { lsn, end_lsn: self.pos, record }));
        }
    }

    fn check_segment_header(&mut self) -> Result<(), DecodeError> {
        let lsn = self.pos;
        let bad = |detail: String| Err(DecodeError { lsn, kind: DecodeErrorKind::BadSegmentHeader, detail });
        let h = match SegmentHeader::decode(&self.avail()[..SEGMENT_HEADER_LEN]) {
            Ok(h) => h,
            Err(e) => return bad(e),
        };
        if h.system_id != self.system_id {
            return bad(format!(
                "segment belongs to system id {:016X}, this cluster is {:016X}",
                h.system_id, self.system_id
            ));
        }
        if h.segment_size_bytes != self.segment_size_bytes {
            return bad(format!(
                "segment size {} (expected {})",
                h.segment_size_bytes, self.segment_size_bytes
            ));
        }
        let expected_no = lsn.0 / self.segment_size_bytes;
        if h.segment_no != expected_no {
            return bad(format!("segment number {} where {} was expected", h.segment_no, expected_no));
        }
        self.timeline = Some(h.timeline);
        Ok(())
    }
}
