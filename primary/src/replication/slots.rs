//! Replication slots on disk: `DATA_DIR/replication_slots`.
//!
//! A slot is a name, the Lsn from which its standby still needs WAL (`restart_lsn`), and, once
//! the engine gave up keeping WAL for it, why. While the server runs, each valid slot is a
//! capped WAL hold named `slot:<name>` in the engine ([`hold_name`]); this file is what makes
//! slots survive a restart. It is small and replaced whole, atomically (temporary file →
//! fsync → rename → fsync directory), like the engine's control file.
//!
//! Layout (little-endian), checked on read and built the same way on write:
//!
//! ```text
//! | magic u32 "HSRS" | format u32 (1) | body_len u32 | crc32c(body) u32 | body |
//! body: | count u32 | slot* |
//! slot: | name_len u8 | name (1..=63 bytes of [a-z0-9_]) | restart_lsn u64 |
//!       | invalidated_len u16 | invalidated (UTF-8, 0 bytes = valid) |
//! ```
//!
//! A missing file means no slots. Anything else that does not check out (magic, format,
//! checksum, lengths, names, duplicates) is a startup error naming the file: guessing would
//! either drop WAL a standby needs or keep WAL forever.

use hindsight_protocol::Lsn;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// The most replication slots on one server.
pub const SLOTS_MAX: usize = 64;
/// The slot file's name in the data directory.
pub const SLOTS_FILE: &str = "replication_slots";
/// The longest invalidation reason kept, in bytes (longer ones are cut at a char boundary).
pub const INVALIDATED_LEN_MAX: usize = 1024;

const SLOTS_MAGIC: u32 = u32::from_le_bytes(*b"HSRS");
const SLOTS_FORMAT: u32 = 1;
const HEADER_LEN: usize = 16;
const SLOT_NAME_LEN_MAX: usize = hindsight_engine::sql::SLOT_NAME_LEN_MAX;
/// The largest possible file: header, count, and every slot at its longest.
const SLOTS_FILE_LEN_MAX: usize =
    HEADER_LEN + 4 + SLOTS_MAX * (1 + SLOT_NAME_LEN_MAX + 8 + 2 + INVALIDATED_LEN_MAX);
const _: () = assert!(SLOT_NAME_LEN_MAX <= u8::MAX as usize && INVALIDATED_LEN_MAX <= u16::MAX as usize);

/// One slot as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    /// The slot's name (valid per [`hindsight_engine::sql::slot_name`]).
    pub name: String,
    /// WAL from here on is kept for the slot's standby.
    pub restart_lsn: Lsn,
    /// Set once the engine stopped keeping WAL for it: why.
    pub invalidated: Option<String>,
}

/// The engine WAL hold of slot `name`.
pub fn hold_name(name: &str) -> String {
    format!("slot:{name}")
}

/// Cuts `reason` to at most [`INVALIDATED_LEN_MAX`] bytes at a char boundary.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(INVALIDATED_LEN_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// The file's bytes for these slots.
pub fn encode(slots: &[SlotRecord]) -> Vec<u8> {
    assert!(slots.len() <= SLOTS_MAX, "{} slots, more than SLOTS_MAX", slots.len());
    let mut body = Vec::new();
    body.extend_from_slice(&(slots.len() as u32).to_le_bytes());
    for s in slots {
        assert!(
            hindsight_engine::sql::slot_name(&s.name).is_ok_and(|n| n == s.name),
            "invalid slot name {:?}",
            s.name
        );
        body.push(s.name.len() as u8);
        body.extend_from_slice(s.name.as_bytes());
        body.extend_from_slice(&s.restart_lsn.0.to_le_bytes());
        let why = s.invalidated.as_deref().map(bounded_reason).unwrap_or_default();
        body.extend_from_slice(&(why.len() as u16).to_le_bytes());
        body.extend_from_slice(why.as_bytes());
    }
    let mut data = Vec::with_capacity(HEADER_LEN + body.len());
    data.extend_from_slice(&SLOTS_MAGIC.to_le_bytes());
    data.extend_from_slice(&SLOTS_FORMAT.to_le_bytes());
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    data.extend_from_slice(&body);
    assert!(data.len() <= SLOTS_FILE_LEN_MAX, "slot file over its bound");
    data
}

/// Reads the slots back from the file's bytes; the error says which check failed.
pub fn decode(data: &[u8]) -> std::result::Result<Vec<SlotRecord>, String> {
    if data.len() < HEADER_LEN || data.len() > SLOTS_FILE_LEN_MAX {
        return Err(format!("impossible size of {} bytes", data.len()));
    }
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    if u32_at(0) != SLOTS_MAGIC {
        return Err("not a hindsight replication slot file (bad magic)".into());
    }
    if u32_at(4) != SLOTS_FORMAT {
        return Err(format!("format {} is not the format {SLOTS_FORMAT} this build reads", u32_at(4)));
    }
    let body = &data[HEADER_LEN..];
    if body.len() != u32_at(8) as usize {
        return Err(format!("the body is {} bytes but the header says {}", body.len(), u32_at(8)));
    }
    if crc32c::crc32c(body) != u32_at(12) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader { data: body, pos: 0 };
    let count = r.u32()? as usize;
    if count > SLOTS_MAX {
        return Err(format!("{count} slots, more than {SLOTS_MAX}"));
    }
    let mut slots: Vec<SlotRecord> = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = r.take(1)?[0] as usize;
        let name =
            std::str::from_utf8(r.take(name_len)?).map_err(|_| "a slot name is not UTF-8".to_string())?;
        if hindsight_engine::sql::slot_name(name).ok().as_deref() != Some(name) {
            return Err(format!("invalid slot name {name:?}"));
        }
        if slots.iter().any(|s| s.name == name) {
            return Err(format!("slot {name:?} appears twice"));
        }
        let restart_lsn = Lsn(u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")));
        let why_len = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
        if why_len > INVALIDATED_LEN_MAX {
            return Err(format!("slot {name:?} has an invalidation reason of {why_len} bytes"));
        }
        let why = std::str::from_utf8(r.take(why_len)?)
            .map_err(|_| format!("slot {name:?} has an invalidation reason that is not UTF-8"))?;
        slots.push(SlotRecord {
            name: name.to_string(),
            restart_lsn,
            invalidated: (!why.is_empty()).then(|| why.to_string()),
        });
    }
    if r.pos != body.len() {
        return Err(format!("{} bytes after the last slot", body.len() - r.pos));
    }
    Ok(slots)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let bytes =
            self.data.get(self.pos..self.pos + n).ok_or_else(|| "the body is cut short".to_string())?;
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

/// Reads `path`; a missing file is no slots.
pub fn load(path: &Path) -> Result<Vec<SlotRecord>> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read replication slot file {}", path.display()), e)),
    };
    decode(&data).map_err(|why| {
        Error::io(
            format!("read replication slot file {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the file is corrupt: {why}; restore it from a backup, or move it aside to start \
                     without slots (replicas that used them must then be re-bootstrapped)"
                ),
            ),
        )
    })
}

/// Replaces `path` atomically with these slots.
pub fn store(path: &Path, slots: &[SlotRecord]) -> Result<()> {
    let data = encode(slots);
    // Pair the assertion: what is written must read back as what was meant.
    debug_assert_eq!(decode(&data).as_deref(), Ok(slots));
    let io = |e| Error::io(format!("write replication slot file {}", path.display()), e);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = path.parent().expect("the slot file is in the data directory");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<SlotRecord> {
        vec![
            SlotRecord { name: "replica_a".into(), restart_lsn: Lsn(0x1_0000_0040), invalidated: None },
            SlotRecord {
                name: "b".into(),
                restart_lsn: Lsn(7),
                invalidated: Some("it fell 2000 bytes behind — past max_slot_wal_keep_size".into()),
            },
        ]
    }

    #[test]
    fn slots_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SLOTS_FILE);
        assert_eq!(load(&path).unwrap(), vec![], "no file: no slots");
        store(&path, &slots()).unwrap();
        assert_eq!(load(&path).unwrap(), slots());
        store(&path, &[]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![]);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn every_damage_is_a_clear_error() {
        let good = encode(&slots());
        // Every single-bit flip and every truncation is caught.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {i}");
            assert!(decode(&good[..i]).is_err(), "cut at {i}");
        }
        let mut bad = good.clone();
        bad[HEADER_LEN + 5] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), "checksum mismatch");
        // Through load: the error names the file and says what to do.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SLOTS_FILE);
        std::fs::write(&path, &bad).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("replication_slots") && e.contains("checksum mismatch") && e.contains("move it aside"),
            "{e}"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("impossible size"));
    }

    #[test]
    fn checks_names_and_duplicates_behind_a_valid_checksum() {
        // Build bodies by hand with a correct CRC, so the shape checks are what fails.
        let framed = |body: Vec<u8>| {
            let mut data = Vec::new();
            data.extend_from_slice(&SLOTS_MAGIC.to_le_bytes());
            data.extend_from_slice(&SLOTS_FORMAT.to_le_bytes());
            data.extend_from_slice(&(body.len() as u32).to_le_bytes());
            data.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            data.extend_from_slice(&body);
            data
        };
        let slot = |name: &str| {
            let mut b = vec![name.len() as u8];
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b
        };
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend(slot("a"));
        body.extend(slot("a"));
        assert!(decode(&framed(body)).unwrap_err().contains("twice"));
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend(slot("Bad-Name"));
        assert!(decode(&framed(body)).unwrap_err().contains("invalid slot name"));
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend(slot("a"));
        body.push(0);
        assert!(decode(&framed(body)).unwrap_err().contains("after the last slot"));
        assert!(decode(&framed(9999u32.to_le_bytes().to_vec())).unwrap_err().contains("more than"));
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(INVALIDATED_LEN_MAX);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= INVALIDATED_LEN_MAX && cut.chars().all(|c| c == 'é'));
    }
}
