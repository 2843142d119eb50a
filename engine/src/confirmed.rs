//! A replica's confirmed Lsn: how far it has shown its WAL, which its upstream had reported
//! durable (decision #34). A replica writes WAL it was sent before its upstream made it
//! durable; after a restart, crash recovery replays only up to this Lsn and keeps the rest
//! as a pending tail, compared byte for byte with what the upstream sends again.
//!
//! The file `confirmed` in the data directory holds 16 bytes: the magic `HSCF`, the Lsn as a
//! little-endian `u64`, and the CRC32C of the first 12 bytes, little-endian. It is rewritten
//! in place after every publish without an fsync, and fsynced at each checkpoint and at
//! shutdown. A stale value is safe: it is one the upstream reported, so it never names WAL
//! the upstream could lose; recovery only shows less until the upstream confirms the rest
//! again. A missing or damaged file counts as the checkpoint's Lsn, which is safe for the
//! same reason (a replica snapshots only what it has shown).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hindsight_protocol::Lsn;

use crate::error::{Error, Result};

/// The file's name in the data directory.
pub const CONFIRMED_FILE: &str = "confirmed";
/// The file's first four bytes.
pub const CONFIRMED_MAGIC: [u8; 4] = *b"HSCF";
/// The file's length.
pub const CONFIRMED_LEN: usize = 16;

/// Encodes `lsn` as the file's contents.
pub fn encode_confirmed(lsn: Lsn) -> [u8; CONFIRMED_LEN] {
    let mut out = [0u8; CONFIRMED_LEN];
    out[..4].copy_from_slice(&CONFIRMED_MAGIC);
    out[4..12].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the file's contents: `Err` says what is wrong with them.
pub fn decode_confirmed(bytes: &[u8]) -> std::result::Result<Lsn, String> {
    if bytes.len() != CONFIRMED_LEN {
        return Err(format!("{} bytes, expected {CONFIRMED_LEN}", bytes.len()));
    }
    if bytes[..4] != CONFIRMED_MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[..12]) {
        return Err("checksum mismatch".into());
    }
    Ok(Lsn(u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"))))
}

/// The open file, written by whoever publishes (under the flush queue's lock).
pub(crate) struct ConfirmedFile {
    file: File,
    path: PathBuf,
    /// The newest Lsn written.
    written: Lsn,
    /// A write failed (logged once; the value on disk stays older, which is safe).
    failed: bool,
}

impl ConfirmedFile {
    /// Opens (creating) the file in `dir`, and returns what it held: `None` when it is new or
    /// damaged (with a warning).
    pub(crate) fn open(dir: &Path) -> Result<(ConfirmedFile, Option<Lsn>)> {
        let path = dir.join(CONFIRMED_FILE);
        let io = |e| Error::io(format!("open {}", path.display()), e);
        let existed = path.exists();
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let mut held = None;
        if existed {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
            match decode_confirmed(&bytes) {
                Ok(lsn) => held = Some(lsn),
                Err(why) => tracing::warn!(
                    file = %path.display(), why,
                    "the confirmed Lsn is unreadable; showing only what the last checkpoint holds until the upstream confirms the rest"
                ),
            }
        }
        let written = held.unwrap_or(Lsn::ZERO);
        Ok((ConfirmedFile { file, path, written, failed: false }, held))
    }

    /// Records that everything up to `lsn` was confirmed and shown. Never moves backwards.
    pub(crate) fn record(&mut self, lsn: Lsn) {
        if lsn <= self.written {
            return;
        }
        match self.file.write_all_at(&encode_confirmed(lsn), 0) {
            Ok(()) => self.written = lsn,
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::warn!(
                    file = %self.path.display(), error = %e,
                    "could not record the confirmed Lsn; after a restart this replica shows less until its upstream confirms the rest"
                );
            }
            Err(_) => {}
        }
    }

    /// Makes the newest value durable (a checkpoint, a shutdown).
    pub(crate) fn sync(&self) {
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(file = %self.path.display(), error = %e, "could not fsync the confirmed Lsn");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_damage_is_named() {
        let bytes = encode_confirmed(Lsn(0x1_2345_6789));
        assert_eq!(decode_confirmed(&bytes), Ok(Lsn(0x1_2345_6789)));
        assert_eq!(decode_confirmed(&bytes[..15]), Err("15 bytes, expected 16".into()));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(decode_confirmed(&bad), Err("bad magic".into()));
        let mut bad = bytes;
        bad[7] ^= 1;
        assert_eq!(decode_confirmed(&bad), Err("checksum mismatch".into()));
    }

    #[test]
    fn the_file_keeps_the_newest_value_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, None);
        f.record(Lsn(300));
        f.record(Lsn(200));
        f.sync();
        drop(f);
        let (_, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, Some(Lsn(300)));
        std::fs::write(dir.path().join(CONFIRMED_FILE), b"garbage").unwrap();
        let (_, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, None);
    }
}
