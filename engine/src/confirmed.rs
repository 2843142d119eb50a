//! A replica's confirmed Lsn: how far it has shown its WAL, which its upstream had reported
//! durable (decision #34). A replica writes WAL it was sent before its upstream made it
//! durable; after a restart, crash recovery replays only up to this Lsn and keeps the rest
//! as a pending tail, compared byte for byte with what the upstream sends again.
//!
//! The file `confirmed` in the data directory:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `HSCF` |
//! | 4..12 | the Lsn, `u64` little-endian |
//! | 12..16 | CRC32C of bytes 0..12, little-endian |
//!
//! It is rewritten in place after every publish without an fsync, and fsynced at most once per
//! [`CONFIRMED_SYNC_INTERVAL`] by the flusher (off its lock), at each checkpoint and at
//! shutdown. A stale value is safe: it is one the upstream reported, so it never names WAL the
//! upstream could lose; recovery only shows less until the upstream confirms the rest again.
//! A damaged file counts as the checkpoint's Lsn, which is safe for the same reason (a replica
//! snapshots only what it has shown). The file is created, fsynced with its directory, the
//! first time a replica opens, so a missing file means a data directory from before decision
//! #34, when a replica only ever received durable WAL: all of its WAL counts as confirmed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hindsight_protocol::Lsn;

use crate::error::{Error, Result};

/// The file's name in the data directory.
pub const CONFIRMED_FILE: &str = "confirmed";
/// The file's first four bytes.
pub const CONFIRMED_MAGIC: [u8; 4] = *b"HSCF";
/// The file's length.
pub const CONFIRMED_LEN: usize = 16;
/// The flusher fsyncs the file at most this often (when it changed).
pub const CONFIRMED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What a replica's data directory recorded, when it opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// No file: made before decision #34, when all of a replica's WAL was durable upstream.
    Nothing,
    /// A file that fails its checks (warned about).
    Unreadable,
    /// The confirmed Lsn.
    At(Lsn),
}

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
///
/// Invariants:
/// - `synced <= written`, and the file holds `written` (or, after a failed write, an older
///   value).
/// - Every value written is one the upstream reported durable and this replica has flushed.
pub(crate) struct ConfirmedFile {
    file: Arc<File>,
    path: PathBuf,
    /// The newest Lsn written.
    written: Lsn,
    /// The newest Lsn handed out for an fsync, and when.
    synced: Lsn,
    synced_at: Instant,
    /// A write failed (logged once; the value on disk stays older, which is safe).
    failed: bool,
}

impl ConfirmedFile {
    /// Opens the file in `dir`, creating it (durably) when missing, and returns what it held.
    pub(crate) fn open(dir: &Path) -> Result<(ConfirmedFile, Recorded)> {
        let path = dir.join(CONFIRMED_FILE);
        let io = |e| Error::io(format!("open {}", path.display()), e);
        let existed = path.exists();
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let recorded = if existed {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
            match decode_confirmed(&bytes) {
                Ok(lsn) => Recorded::At(lsn),
                Err(why) => {
                    tracing::warn!(
                        file = %path.display(), why,
                        "the confirmed Lsn is unreadable; showing only what the last checkpoint holds until the upstream confirms the rest"
                    );
                    Recorded::Unreadable
                }
            }
        } else {
            // Empty until the first record, which reads as damaged: never as "no file".
            file.sync_all().map_err(io)?;
            crate::wal::writer::sync_dir(dir)?;
            Recorded::Nothing
        };
        let written = match recorded {
            Recorded::At(lsn) => lsn,
            _ => Lsn::ZERO,
        };
        let file = Arc::new(file);
        Ok((
            ConfirmedFile { file, path, written, synced: written, synced_at: Instant::now(), failed: false },
            recorded,
        ))
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

    /// The file to fsync, when its value changed and the last fsync is
    /// [`CONFIRMED_SYNC_INTERVAL`] old: the caller fsyncs it after letting go of the lock.
    pub(crate) fn due_sync(&mut self) -> Option<Synced> {
        (self.written > self.synced && self.synced_at.elapsed() >= CONFIRMED_SYNC_INTERVAL)
            .then(|| self.sync_handle())
    }

    /// The file to fsync now (a checkpoint, a shutdown).
    pub(crate) fn sync_handle(&mut self) -> Synced {
        self.synced = self.written;
        self.synced_at = Instant::now();
        Synced { file: Arc::clone(&self.file), path: self.path.clone() }
    }
}

/// A handle to fsync the file with, away from the lock that guards its writes.
pub(crate) struct Synced {
    file: Arc<File>,
    path: PathBuf,
}

impl Synced {
    /// fsyncs the file; a failure is logged (the value on disk may then be older, which is
    /// safe).
    pub(crate) fn sync(self) {
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

    proptest::proptest! {
        /// Any bytes decode to the value they encode, or to an error: never a panic, and a
        /// single flipped bit is always caught.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), lsn: u64, bit in 0usize..128) {
            if let Ok(lsn) = decode_confirmed(&bytes) {
                let encoded = encode_confirmed(lsn);
                proptest::prop_assert_eq!(encoded.as_slice(), bytes.as_slice());
            }
            let mut flipped = encode_confirmed(Lsn(lsn));
            flipped[bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert!(decode_confirmed(&flipped).is_err());
        }
    }

    #[test]
    fn the_file_keeps_the_newest_value_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (f, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, Recorded::Nothing);
        drop(f);
        let (mut f, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, Recorded::Unreadable, "created, never written: not taken for a missing file");
        f.record(Lsn(300));
        f.record(Lsn(200));
        assert!(f.due_sync().is_none(), "not due within the interval");
        f.sync_handle().sync();
        drop(f);
        let (_, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, Recorded::At(Lsn(300)));
        std::fs::write(dir.path().join(CONFIRMED_FILE), b"garbage").unwrap();
        let (_, held) = ConfirmedFile::open(dir.path()).unwrap();
        assert_eq!(held, Recorded::Unreadable);
    }
}
