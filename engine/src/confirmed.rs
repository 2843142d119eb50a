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
//! It is rewritten in place before every publish without an fsync, and fsynced at most once
//! per [`CONFIRMED_SYNC_INTERVAL`] on a short-lived thread the flusher starts, at each
//! checkpoint and at shutdown. A stale value is safe: it is one the upstream reported, so it never names WAL the
//! upstream could lose; recovery only shows less until the upstream confirms the rest again.
//! A damaged file counts as the checkpoint's Lsn, which is safe for the same reason (a replica
//! snapshots only what it has shown). The file is created whole (a temporary name, fsync,
//! rename, directory fsync) once a replica's first crash recovery ends, so a missing file
//! means a data directory from before decision #34, when a replica only ever received durable
//! WAL: all of its WAL counts as confirmed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set while an fsync handed out runs.
    syncing: Arc<AtomicBool>,
    /// Whether to fsync at all (`[engine] fsync`).
    fsync: bool,
    /// A write failed (logged once; the value on disk stays older, which is safe).
    failed: bool,
}

impl ConfirmedFile {
    /// What the file in `dir` holds.
    pub(crate) fn read(dir: &Path) -> Result<Recorded> {
        let path = dir.join(CONFIRMED_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::Nothing),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        Ok(match decode_confirmed(&bytes) {
            Ok(lsn) => Recorded::At(lsn),
            Err(why) => {
                tracing::warn!(
                    file = %path.display(), why,
                    "the confirmed Lsn is unreadable; showing only what the last checkpoint holds until the upstream confirms the rest"
                );
                Recorded::Unreadable
            }
        })
    }

    /// Opens the file in `dir` for writing once crash recovery showed `lsn`, and records
    /// `lsn` (made durable when `fsync`). A missing file is created whole, under a temporary
    /// name first, so a crash before then still finds no file.
    pub(crate) fn open(dir: &Path, recorded: Recorded, lsn: Lsn, fsync: bool) -> Result<ConfirmedFile> {
        let path = dir.join(CONFIRMED_FILE);
        let io = |e| Error::io(format!("create {}", path.display()), e);
        if recorded == Recorded::Nothing {
            let tmp = dir.join(format!("{CONFIRMED_FILE}.tmp"));
            let file = File::create(&tmp).map_err(io)?;
            file.write_all_at(&encode_confirmed(lsn), 0).map_err(io)?;
            if fsync {
                file.sync_all().map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            if fsync {
                crate::wal::writer::sync_dir(dir)?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let written = match recorded {
            Recorded::At(at) => at,
            Recorded::Nothing => lsn,
            Recorded::Unreadable => Lsn::ZERO,
        };
        let mut confirmed = ConfirmedFile {
            file: Arc::new(file),
            path,
            written,
            synced: written,
            synced_at: Instant::now(),
            syncing: Arc::new(AtomicBool::new(false)),
            fsync,
            failed: false,
        };
        confirmed.record(lsn);
        if fsync {
            confirmed.sync_handle().sync();
        }
        Ok(confirmed)
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
        let due = self.fsync
            && self.written > self.synced
            && self.synced_at.elapsed() >= CONFIRMED_SYNC_INTERVAL
            && !self.syncing.load(Ordering::Acquire);
        due.then(|| self.sync_handle())
    }

    /// The file to fsync now (a checkpoint, a shutdown).
    pub(crate) fn sync_handle(&mut self) -> Synced {
        self.synced = self.written;
        self.synced_at = Instant::now();
        self.syncing.store(true, Ordering::Release);
        Synced { file: Arc::clone(&self.file), path: self.path.clone(), syncing: Arc::clone(&self.syncing) }
    }
}

/// A handle to fsync the file with, away from the lock that guards its writes.
pub(crate) struct Synced {
    file: Arc<File>,
    path: PathBuf,
    /// Set until this handle is used or dropped: [`ConfirmedFile::due_sync`] hands out no
    /// other meanwhile.
    syncing: Arc<AtomicBool>,
}

impl Drop for Synced {
    fn drop(&mut self) {
        self.syncing.store(false, Ordering::Release);
    }
}

impl Synced {
    /// fsyncs the file; a failure is logged (the value on disk may then be older, which is
    /// safe).
    pub(crate) fn sync(self) {
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(file = %self.path.display(), error = %e, "could not fsync the confirmed Lsn");
        }
    }

    /// [`sync`](Synced::sync) on a short-lived thread, so the flusher does not wait for it.
    /// When no thread can be started the fsync is skipped: the value on disk stays older,
    /// which is safe, and the next checkpoint fsyncs it.
    pub(crate) fn sync_in_background(self) {
        let spawned =
            std::thread::Builder::new().name("hindsight-confirmed-sync".into()).spawn(move || self.sync());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to fsync the confirmed Lsn");
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
        assert_eq!(ConfirmedFile::read(dir.path()).unwrap(), Recorded::Nothing);
        let mut f = ConfirmedFile::open(dir.path(), Recorded::Nothing, Lsn(100), true).unwrap();
        assert_eq!(ConfirmedFile::read(dir.path()).unwrap(), Recorded::At(Lsn(100)));
        f.record(Lsn(300));
        f.record(Lsn(200));
        assert!(f.due_sync().is_none(), "not due within the interval");
        f.sync_handle().sync();
        drop(f);
        assert_eq!(ConfirmedFile::read(dir.path()).unwrap(), Recorded::At(Lsn(300)));
        std::fs::write(dir.path().join(CONFIRMED_FILE), b"garbage").unwrap();
        assert_eq!(ConfirmedFile::read(dir.path()).unwrap(), Recorded::Unreadable);
        let f = ConfirmedFile::open(dir.path(), Recorded::Unreadable, Lsn(50), true).unwrap();
        drop(f);
        assert_eq!(ConfirmedFile::read(dir.path()).unwrap(), Recorded::At(Lsn(50)));
    }
}
