//! The WAL writer: appends framed records to the current segment and makes them durable with
//! one `fdatasync` for every record appended since the last one (group commit).
//!
//! Owned by exactly one thread (the committer). A failed write or fsync is latched: every later
//! call fails with [`Error::Poisoned`] and nothing is retried, because after a failed fsync the
//! kernel may have dropped dirty pages and a retry could report success for lost data.

use super::record::{frame_record, RecordKind, RECORD_HEADER_LEN, RECORD_LEN_MAX};
use super::segment::{
    first_record_lsn, segment_file_name, segment_of, SegmentHeader, SEGMENT_END_MARKER, SEGMENT_HEADER_LEN,
};
use crate::error::{Error, Result};
use hindsight_protocol::{Lsn, Timeline};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Appended bytes buffered in memory before they are written to the file (without fsync).
pub const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
const _: () = assert!(RECORD_LEN_MAX <= WRITE_BUFFER_BYTES);

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// Creates segment `segment_no` full-size: header, then zeros; durable before it appears under
/// its name (written to a temporary name, fsynced, renamed, directory fsynced).
pub fn create_segment(
    dir: &Path,
    system_id: u64,
    timeline: Timeline,
    segment_size_bytes: u64,
    segment_no: u64,
) -> Result<File> {
    let file = prepare_segment(dir, system_id, timeline, segment_size_bytes, segment_no)?;
    install_segment(dir, timeline, segment_no)?;
    Ok(file)
}

/// The temporary name a segment is prepared under.
fn prepared_path(dir: &Path, timeline: Timeline, segment_no: u64) -> PathBuf {
    dir.join(format!("{}.tmp", segment_file_name(timeline, segment_no)))
}

/// Moves a prepared segment to its real name and makes the rename durable.
fn install_segment(dir: &Path, timeline: Timeline, segment_no: u64) -> Result<()> {
    let path = dir.join(segment_file_name(timeline, segment_no));
    std::fs::rename(prepared_path(dir, timeline, segment_no), &path)
        .map_err(|e| Error::io(format!("install WAL segment {}", path.display()), e))?;
    sync_dir(dir)
}

/// Removes segments prepared by a process that crashed before using them. Recovery calls it;
/// prepared files never hold records, and the reader ignores their names anyway.
pub fn remove_prepared_segments(dir: &Path) -> Result<()> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("list WAL directory {}", dir.display()), e))?;
    for entry in rd.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Writes segment `segment_no` full-size under its temporary name and fsyncs it; it does not
/// exist as a segment until [`install_segment`] renames it.
fn prepare_segment(
    dir: &Path,
    system_id: u64,
    timeline: Timeline,
    segment_size_bytes: u64,
    segment_no: u64,
) -> Result<File> {
    let path = dir.join(segment_file_name(timeline, segment_no));
    let tmp = prepared_path(dir, timeline, segment_no);
    let io = |e| Error::io(format!("create WAL segment {}", path.display()), e);
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
    let header = SegmentHeader { system_id, timeline, segment_size_bytes, segment_no }.encode();
    file.write_all(&header).map_err(io)?;
    let zeros = vec![0u8; 1024 * 1024];
    let mut left = segment_size_bytes as usize - SEGMENT_HEADER_LEN;
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n]).map_err(io)?;
        left -= n;
    }
    file.sync_all().map_err(io)?;
    Ok(file)
}

/// A segment being prepared by a background thread.
struct Prepared {
    segment_no: u64,
    thread: std::thread::JoinHandle<Result<File>>,
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        // Finish the background preparation before the directory lock can be released, so a
        // later writer on the same directory never races it for the temporary file.
        if let Some(p) = self.prepared.take() {
            let _ = p.thread.join();
        }
    }
}

/// The appender.
///
/// Invariants:
/// - `buf` holds the bytes from `buf_lsn` to `insert_lsn`, all inside segment `segment_no`.
/// - `flushed_lsn <= insert_lsn`; everything below `flushed_lsn` is durable.
/// - Records never cross a segment boundary.
pub struct WalWriter {
    dir: PathBuf,
    system_id: u64,
    timeline: Timeline,
    segment_size_bytes: u64,
    fsync: bool,
    file: Arc<File>,
    segment_no: u64,
    buf: Vec<u8>,
    buf_lsn: Lsn,
    insert_lsn: Lsn,
    prev_lsn: Lsn,
    flushed_lsn: Lsn,
    failed: Option<String>,
    /// The next segment, prepared in the background so a switch does not wait for 16 MiB of
    /// zeros to reach the disk.
    prepared: Option<Prepared>,
}

impl WalWriter {
    /// Opens for appending at `end` (a record boundary from recovery); `prev_lsn` is the start
    /// of the record before it. Creates the segment if `end` is the first record position of a
    /// segment that does not exist yet.
    pub fn open(
        dir: &Path,
        system_id: u64,
        timeline: Timeline,
        segment_size_bytes: u64,
        end: Lsn,
        prev_lsn: Lsn,
        fsync: bool,
    ) -> Result<WalWriter> {
        let mut end = end;
        if end.0.is_multiple_of(segment_size_bytes) {
            end = end.add(SEGMENT_HEADER_LEN as u64);
        }
        let segment_no = segment_of(end, segment_size_bytes);
        let path = dir.join(segment_file_name(timeline, segment_no));
        let file = if path.exists() {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("open WAL segment {}", path.display()), e))?
        } else {
            assert_eq!(
                end,
                first_record_lsn(segment_no, segment_size_bytes),
                "WAL end inside a missing segment"
            );
            create_segment(dir, system_id, timeline, segment_size_bytes, segment_no)?
        };
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            system_id,
            timeline,
            segment_size_bytes,
            fsync,
            file: Arc::new(file),
            segment_no,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES + RECORD_LEN_MAX),
            buf_lsn: end,
            insert_lsn: end,
            prev_lsn,
            flushed_lsn: end,
            failed: None,
            prepared: None,
        })
        .map(|mut w| {
            w.prepare_next();
            w
        })
    }

    /// Starts preparing the segment after the current one.
    fn prepare_next(&mut self) {
        let (dir, system_id, timeline, size, no) =
            (self.dir.clone(), self.system_id, self.timeline, self.segment_size_bytes, self.segment_no + 1);
        let spawned = std::thread::Builder::new()
            .name("hindsight-wal-prealloc".into())
            .spawn(move || prepare_segment(&dir, system_id, timeline, size, no));
        // If no thread can be started, the switch creates the segment itself.
        self.prepared = spawned.ok().map(|thread| Prepared { segment_no: no, thread });
    }

    /// Where the next record will start if it is `len` bytes long (header included).
    pub fn next_record_lsn(&self, len: usize) -> Lsn {
        let offset = self.insert_lsn.0 % self.segment_size_bytes;
        // `>=`: a record never ends exactly at a segment's end, so the insert position always
        // stays inside the current segment and the next append switches when it must.
        if offset + len as u64 >= self.segment_size_bytes {
            first_record_lsn(self.segment_no + 1, self.segment_size_bytes)
        } else {
            self.insert_lsn
        }
    }

    /// The Lsn the next record is appended at (before any segment switch).
    pub fn insert_lsn(&self) -> Lsn {
        self.insert_lsn
    }

    /// Everything before this is durable.
    pub fn flushed_lsn(&self) -> Lsn {
        self.flushed_lsn
    }

    /// The start of the last record appended.
    pub fn prev_lsn(&self) -> Lsn {
        self.prev_lsn
    }

    /// The timeline being written.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn latch<T>(&mut self, what: &str, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| {
            let why = format!("{what}: {e}");
            tracing::error!(error = %why, "WAL write failed; refusing further writes until restart");
            self.failed = Some(why.clone());
            Error::Poisoned(why)
        })
    }

    /// Appends one record; returns its (start, end) Lsns. Not durable until [`WalWriter::sync`].
    pub fn append(&mut self, kind: RecordKind, body: &[u8]) -> Result<(Lsn, Lsn)> {
        self.check()?;
        let len = RECORD_HEADER_LEN + body.len();
        assert!(len <= RECORD_LEN_MAX, "record of {len} bytes past RECORD_LEN_MAX");
        if self.next_record_lsn(len) != self.insert_lsn {
            self.switch_segment()?;
        }
        let start = self.insert_lsn;
        frame_record(self.prev_lsn, kind, body, &mut self.buf);
        self.insert_lsn = start.add(len as u64);
        self.prev_lsn = start;
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        Ok((start, self.insert_lsn))
    }

    /// The current segment file, for a flusher that fdatasyncs it on another thread.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Whether appends are fsynced at all.
    pub fn fsync_enabled(&self) -> bool {
        self.fsync
    }

    /// Records that another thread made everything up to `lsn` durable.
    pub fn note_flushed(&mut self, lsn: Lsn) {
        if lsn > self.flushed_lsn {
            self.flushed_lsn = lsn;
        }
    }

    /// Latches a failure seen by another thread (a flusher's fsync).
    pub fn poison(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }

    /// Writes buffered records to the file without fsync: they are in the page cache, ready
    /// for an fdatasync by whoever makes them durable.
    pub fn write_out(&mut self) -> Result<()> {
        self.check()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let offset = self.buf_lsn.0 % self.segment_size_bytes;
        let r = self.file.write_all_at(&self.buf, offset);
        self.latch("write WAL", r)?;
        self.buf_lsn = self.buf_lsn.add(self.buf.len() as u64);
        self.buf.clear();
        Ok(())
    }

    fn switch_segment(&mut self) -> Result<()> {
        let offset = self.insert_lsn.0 % self.segment_size_bytes;
        let remaining = self.segment_size_bytes - offset;
        if remaining >= 4 {
            self.buf.extend_from_slice(&SEGMENT_END_MARKER.to_le_bytes());
        }
        self.write_out()?;
        if self.fsync {
            let r = self.file.sync_data();
            self.latch("fsync WAL segment", r)?;
        }
        // The marker and every record before it are durable before the next segment exists, so
        // recovery never finds a new segment after an unterminated one.
        self.flushed_lsn = self.insert_lsn;
        self.open_next_segment()?;
        self.insert_lsn = first_record_lsn(self.segment_no, self.segment_size_bytes);
        self.buf_lsn = self.insert_lsn;
        self.flushed_lsn = self.insert_lsn;
        Ok(())
    }

    /// Makes the next segment current: the one prepared in the background if it is ready,
    /// else created now; then starts preparing the one after it. A failure is latched.
    fn open_next_segment(&mut self) -> Result<()> {
        self.segment_no += 1;
        let prepared = match self.prepared.take() {
            Some(p) if p.segment_no == self.segment_no => p.thread.join().ok().and_then(|r| r.ok()),
            _ => None,
        };
        let created = match prepared {
            Some(file) => install_segment(&self.dir, self.timeline, self.segment_no).map(|()| file),
            None => create_segment(
                &self.dir,
                self.system_id,
                self.timeline,
                self.segment_size_bytes,
                self.segment_no,
            ),
        };
        match created {
            Ok(file) => self.file = Arc::new(file),
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        }
        self.prepare_next();
        Ok(())
    }

    /// Writes a slice of another server's WAL byte stream (a replica's input) at `start`, its
    /// own Lsn: the bytes land at the same offsets of the same segments as on the server they
    /// came from, segment headers and padding included, so the two WALs are byte-identical.
    /// Crossing into the next segment fsyncs the one being left, as [`WalWriter::append`] does.
    /// Not durable until the file is fsynced; a gap (start past the bytes written) is refused.
    pub fn write_raw(&mut self, start: Lsn, bytes: &[u8]) -> Result<()> {
        self.check()?;
        assert!(self.buf.is_empty(), "raw writes and record appends are not mixed");
        if start != self.insert_lsn {
            return Err(out_of_order(self.insert_lsn, start, bytes.len()));
        }
        let mut pos = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let segment_no = segment_of(pos, self.segment_size_bytes);
            if segment_no != self.segment_no {
                assert_eq!(segment_no, self.segment_no + 1, "raw WAL moves one segment at a time");
                self.switch_raw()?;
            }
            let offset = pos.0 % self.segment_size_bytes;
            let n = rest.len().min((self.segment_size_bytes - offset) as usize);
            let r = self.file.write_all_at(&rest[..n], offset);
            self.latch("write WAL", r)?;
            pos = pos.add(n as u64);
            rest = &rest[n..];
        }
        self.insert_lsn = pos;
        self.buf_lsn = pos;
        Ok(())
    }

    /// Moves a raw writer to the next segment: fsyncs the old one, installs the new one (its
    /// header is written again by the stream, with the same bytes).
    fn switch_raw(&mut self) -> Result<()> {
        if self.fsync {
            let r = self.file.sync_data();
            self.latch("fsync WAL segment", r)?;
        }
        self.flushed_lsn = self.insert_lsn;
        self.open_next_segment()
    }

    /// Cuts a raw writer's WAL at `at`, before its insert position (a replica's pending tail
    /// that its upstream no longer has): zero-fills the rest of that segment, removes later
    /// ones ([`truncate_wal`]), and writes on from `at`.
    pub fn cut_at(&mut self, at: Lsn) -> Result<()> {
        self.check()?;
        assert!(self.buf.is_empty() && at <= self.insert_lsn, "a cut moves a raw writer back");
        // The segment being prepared may be one the cut removes: let it finish first.
        if let Some(p) = self.prepared.take() {
            let _ = p.thread.join();
        }
        truncate_wal(&self.dir, self.timeline, self.segment_size_bytes, at)?;
        let (dir, system_id, timeline, size) =
            (self.dir.clone(), self.system_id, self.timeline, self.segment_size_bytes);
        *self = WalWriter::open(&dir, system_id, timeline, size, at, self.prev_lsn, self.fsync)?;
        Ok(())
    }

    /// Writes and fdatasyncs everything appended; returns the new flushed Lsn.
    pub fn sync(&mut self) -> Result<Lsn> {
        self.check()?;
        if self.flushed_lsn == self.insert_lsn {
            return Ok(self.flushed_lsn);
        }
        self.write_out()?;
        if self.fsync {
            let r = self.file.sync_data();
            self.latch("fsync WAL", r)?;
        }
        self.flushed_lsn = self.insert_lsn;
        Ok(self.flushed_lsn)
    }
}

/// The error for a slice of a WAL stream that does not start where the last one ended.
pub(crate) fn out_of_order(expected: Lsn, start: Lsn, len: usize) -> Error {
    Error::Mismatch(format!(
        "WAL stream out of order: expected bytes at {expected}, got {start} ({len} bytes)"
    ))
}

/// Cuts the WAL at `at` after recovery found a torn tail (or an incomplete large transaction)
/// there: zero-fills the rest of that segment and removes every later segment, so the next
/// record written at `at` is the end of the WAL.
pub fn truncate_wal(dir: &Path, timeline: Timeline, segment_size_bytes: u64, at: Lsn) -> Result<()> {
    // A cut at a segment boundary keeps the next segment's header.
    let at = if at.0.is_multiple_of(segment_size_bytes) { at.add(SEGMENT_HEADER_LEN as u64) } else { at };
    let segment_no = segment_of(at, segment_size_bytes);
    let path = dir.join(segment_file_name(timeline, segment_no));
    let io = |e| Error::io(format!("truncate WAL segment {} at {at}", path.display()), e);
    let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
    let offset = at.0 % segment_size_bytes;
    let zeros = vec![0u8; 1024 * 1024];
    let mut pos = offset;
    while pos < segment_size_bytes {
        let n = (segment_size_bytes - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos).map_err(io)?;
        pos += n as u64;
    }
    file.sync_all().map_err(io)?;
    for (tl, no, p) in super::reader::list_segments(dir)? {
        if no > segment_no && tl == timeline {
            std::fs::remove_file(&p)
                .map_err(|e| Error::io(format!("remove WAL segment {}", p.display()), e))?;
        }
    }
    sync_dir(dir)
}
