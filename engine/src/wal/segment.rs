//! WAL segment files: names, sizes and the segment header.
//!
//! A segment is a fixed-size file named `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment
//! number's upper and lower 32 bits, 24 hex digits, as PostgreSQL users expect). Segment `n`
//! holds Lsns `[n * size, (n + 1) * size)`. It is created full-size and zero-filled, with its
//! header written, so appends never change the file size and `fdatasync` stays cheap.
//!
//! Segment header (little-endian, [`SEGMENT_HEADER_LEN`] bytes):
//!
//! | magic u32 | format u16 | reserved u16 | system_id u64 | timeline u32 | segment_size_bytes u32 | segment_no u64 | crc32c u32 | reserved u32 |
//!
//! The CRC covers the 32 bytes before it. Records never cross a segment boundary: when the next
//! record does not fit, the writer puts [`SEGMENT_END_MARKER`] where its length would go (if at
//! least 4 bytes remain) and continues after the next segment's header.

use hindsight_protocol::{Lsn, Timeline};

/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// "HSWL".
pub const SEGMENT_MAGIC: u32 = 0x4C57_5348;
/// The segment format version.
pub const SEGMENT_FORMAT: u16 = 1;
/// In the length slot of a record: the rest of this segment is unused.
pub const SEGMENT_END_MARKER: u32 = u32::MAX;
/// The default segment size.
pub const SEGMENT_SIZE_DEFAULT: u64 = 16 * 1024 * 1024;
/// The smallest allowed segment size.
pub const SEGMENT_SIZE_MIN: u64 = 1024 * 1024;
/// The largest allowed segment size.
pub const SEGMENT_SIZE_MAX: u64 = 1024 * 1024 * 1024;

const _: () = assert!(super::record::RECORD_LEN_MAX as u64 * 2 < SEGMENT_SIZE_MIN);

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The cluster.
    pub system_id: u64,
    /// The timeline the segment belongs to.
    pub timeline: Timeline,
    /// The segment size.
    pub segment_size_bytes: u64,
    /// The segment number.
    pub segment_no: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
        b[8..16].copy_from_slice(&self.system_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.timeline.0.to_le_bytes());
        b[20..24].copy_from_slice(&(self.segment_size_bytes as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_no.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header's bytes; the error says which check failed.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err("segment header truncated".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != SEGMENT_MAGIC {
            return Err("not a hindsight WAL segment (bad magic)".into());
        }
        if crc32c::crc32c(&b[0..32]) != u32_at(32) {
            return Err("segment header checksum mismatch".into());
        }
        let format = u16::from_le_bytes([b[4], b[5]]);
        if format != SEGMENT_FORMAT {
            return Err(format!("segment format {format}, this build reads {SEGMENT_FORMAT}"));
        }
        Ok(SegmentHeader {
            system_id: u64_at(8),
            timeline: Timeline(u32_at(16)),
            segment_size_bytes: u64::from(u32_at(20)),
            segment_no: u64_at(24),
        })
    }
}

/// The file name of segment `segment_no` on `timeline`.
pub fn segment_file_name(timeline: Timeline, segment_no: u64) -> String {
    format!("{:08X}{:08X}{:08X}", timeline.0, segment_no >> 32, segment_no & 0xFFFF_FFFF)
}

/// Parses a segment file name into (timeline, segment number).
pub fn parse_segment_file_name(name: &str) -> Option<(Timeline, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tl = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    if tl == 0 || lo > 0xFFFF_FFFF {
        return None;
    }
    Some((Timeline(tl), (hi << 32) | lo))
}

/// The segment holding `lsn`.
pub fn segment_of(lsn: Lsn, segment_size_bytes: u64) -> u64 {
    lsn.0 / segment_size_bytes
}

/// The Lsn of the first record of segment `segment_no`.
pub fn first_record_lsn(segment_no: u64, segment_size_bytes: u64) -> Lsn {
    Lsn(segment_no * segment_size_bytes + SEGMENT_HEADER_LEN as u64)
}

/// Whether `size` is a valid segment size (a power of two within the limits).
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_file_name(Timeline(2), 0x1_0000_0003);
        assert_eq!(name, "000000020000000100000003");
        assert_eq!(parse_segment_file_name(&name), Some((Timeline(2), 0x1_0000_0003)));
        assert_eq!(parse_segment_file_name("00000002000000010000000"), None);
        assert_eq!(parse_segment_file_name("000000000000000100000003"), None);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h =
            SegmentHeader { system_id: 7, timeline: Timeline(3), segment_size_bytes: 1 << 24, segment_no: 9 };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[10] ^= 1;
        assert!(SegmentHeader::decode(&b).unwrap_err().contains("checksum"));
    }
}
