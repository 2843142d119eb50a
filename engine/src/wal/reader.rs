//! Reading the WAL in a data directory, for crash recovery: segment by segment through the one
//! [`Decoder`], deciding what a decoding failure means.
//!
//! Recovery policy ([`TailPolicy`]): a failure in the newest segment whose bytes are not followed
//! by a valid record chain is a torn tail — the WAL ends there, with a warning, and the caller
//! truncates it. Any other failure (in an older segment, a bad link, a damaged segment header, a
//! record whose successor is intact, a missing segment) is corruption: recovery stops with an
//! error naming the file and the Lsn.

use super::decoder::{DecodeErrorKind, Decoder, WalEntry};
use super::record::{RECORD_HEADER_LEN, RECORD_LEN_MAX};
use super::segment::{parse_segment_file_name, segment_file_name, segment_of};
use crate::error::{Error, Result};
use hindsight_protocol::{Lsn, Timeline};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read from a segment file at a time.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// What to do with a bad record in the newest segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailPolicy {
    /// A torn tail ends the WAL (crash recovery).
    TruncateTornTail,
    /// Every failure is an error (verification of a finished, archived WAL).
    Strict,
}

/// Where the WAL scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalEnd {
    /// The end of the last good record: where the next record goes.
    pub end_lsn: Lsn,
    /// The start of the last good record.
    pub prev_lsn: Option<Lsn>,
    /// Set when the scan stopped at a torn tail: its Lsn, file and what was wrong.
    pub torn: Option<(Lsn, PathBuf, String)>,
}

/// Lists the segment files in `dir` as (timeline, segment number, path), sorted.
pub fn list_segments(dir: &Path) -> Result<Vec<(Timeline, u64, PathBuf)>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("list WAL directory {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("list WAL directory {}", dir.display()), e))?;
        let name = entry.file_name();
        if let Some((tl, no)) = name.to_str().and_then(parse_segment_file_name) {
            out.push((tl, no, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A WAL directory and what its segments must say about themselves.
#[derive(Clone, Copy, Debug)]
pub struct WalDir<'a> {
    /// The directory holding the segments.
    pub path: &'a Path,
    /// The cluster every segment must belong to.
    pub system_id: u64,
    /// Read segments of this timeline and its ancestors (the highest timeline per segment).
    pub timeline: Timeline,
    /// The segment size.
    pub segment_size_bytes: u64,
}

/// Reads every record from `start` to the end of the WAL in `wal.path`, calling `f` on each,
/// and says where the WAL ends. `prev_lsn` is the start of the record before `start`, if known.
/// For each segment number, the file of the highest timeline not above `wal.timeline` is read.
pub fn scan_wal(
    wal: WalDir<'_>,
    start: Lsn,
    prev_lsn: Option<Lsn>,
    policy: TailPolicy,
    mut f: impl FnMut(WalEntry) -> Result<()>,
) -> Result<WalEnd> {
    let WalDir { path: dir, system_id, timeline, segment_size_bytes } = wal;
    let mut segments: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for (tl, no, path) in list_segments(dir)? {
        if tl <= timeline {
            segments.insert(no, path); // sorted by timeline, so the highest wins
        }
    }
    let first = segment_of(start, segment_size_bytes);
    let Some((&last, _)) = segments.iter().next_back() else {
        return Err(Error::Corrupt {
            lsn: start,
            file: dir.join(segment_file_name(timeline, first)),
            detail: "WAL segment missing: no segment files at all".into(),
        });
    };
    let mut decoder = Decoder::new(start, prev_lsn, segment_size_bytes, system_id);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    for no in first..=last {
        let Some(path) = segments.get(&no) else {
            return Err(Error::Corrupt {
                lsn: Lsn(no * segment_size_bytes),
                file: dir.join(segment_file_name(timeline, no)),
                detail: format!("WAL segment missing (segments {first:X}..{last:X} are needed)"),
            });
        };
        let is_last = no == last;
        let io = |e| Error::io(format!("read WAL segment {}", path.display()), e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let skip = if no == first { start.0 % segment_size_bytes } else { 0 };
        if skip > 0 {
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(skip)).map_err(io)?;
        }
        let mut file_pos = skip;
        'segment: loop {
            let n = read_full(&mut file, &mut chunk).map_err(io)?;
            if n == 0 {
                break;
            }
            file_pos += n as u64;
            decoder.feed(&chunk[..n]);
            loop {
                match decoder.next() {
                    Ok(Some(entry)) => f(entry)?,
                    Ok(None) => break,
                    Err(e) if e.kind == DecodeErrorKind::Unwritten && is_last => {
                        // Zeros where a record should be: the end, unless intact records follow
                        // (a zeroed block inside written WAL is corruption, never an end).
                        if policy == TailPolicy::TruncateTornTail {
                            let (follows, dirty) = scan_after(path, segment_size_bytes, e.lsn)?;
                            if follows {
                                return Err(Error::Corrupt {
                                    lsn: e.lsn,
                                    file: path.clone(),
                                    detail: "zeroed bytes where a record should be, with intact records after them"
                                        .into(),
                                });
                            }
                            if dirty {
                                // Leftovers of a torn write after the end: cut so a later
                                // recovery never mistakes them for records.
                                return Ok(WalEnd {
                                    end_lsn: e.lsn,
                                    prev_lsn: decoder.prev_lsn(),
                                    torn: Some((
                                        e.lsn,
                                        path.clone(),
                                        "non-zero bytes after the end of the WAL".into(),
                                    )),
                                });
                            }
                        }
                        return Ok(WalEnd { end_lsn: e.lsn, prev_lsn: decoder.prev_lsn(), torn: None });
                    }
                    Err(e) => {
                        let torn = is_last
                            && policy == TailPolicy::TruncateTornTail
                            && matches!(
                                e.kind,
                                DecodeErrorKind::BadChecksum
                                    | DecodeErrorKind::BadLength
                                    | DecodeErrorKind::BadBody
                            )
                            && !scan_after(path, segment_size_bytes, e.lsn)?.0;
                        if torn {
                            return Ok(WalEnd {
                                end_lsn: e.lsn,
                                prev_lsn: decoder.prev_lsn(),
                                torn: Some((e.lsn, path.clone(), e.detail)),
                            });
                        }
                        return Err(Error::Corrupt { lsn: e.lsn, file: path.clone(), detail: e.detail });
                    }
                }
                if decoder.position().0 / segment_size_bytes > no {
                    break 'segment; // padding consumed: the rest of this segment is unused
                }
            }
        }
        let reached = decoder.position();
        if reached.0 / segment_size_bytes == no && file_pos < segment_size_bytes {
            // The file is shorter than a segment: only acceptable as a torn newest segment.
            if is_last && policy == TailPolicy::TruncateTornTail {
                return Ok(WalEnd {
                    end_lsn: reached,
                    prev_lsn: decoder.prev_lsn(),
                    torn: Some((reached, path.clone(), "segment file shorter than the segment size".into())),
                });
            }
            return Err(Error::Corrupt {
                lsn: reached,
                file: path.clone(),
                detail: format!("segment file is {file_pos} bytes, shorter than the segment size"),
            });
        }
    }
    Ok(WalEnd { end_lsn: decoder.position(), prev_lsn: decoder.prev_lsn(), torn: None })
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What lies after `bad` in its segment: whether any valid record does (a torn write leaves
/// only garbage and zeros after the tear; a flipped or zeroed byte inside old records leaves
/// intact records after it, and that is corruption, never a tail to cut), and whether any
/// non-zero byte does. Runs only at recovery, so it may read the whole segment.
fn scan_after(path: &Path, segment_size_bytes: u64, bad: Lsn) -> Result<(bool, bool)> {
    let io = |e| Error::io(format!("read WAL segment {}", path.display()), e);
    let start = bad.0 % segment_size_bytes;
    // The usual case, a clean end of WAL, is zeros to the end: check those a chunk at a time
    // rather than reading the whole segment into memory.
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let dirty = loop {
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break false;
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            break true;
        }
    };
    if !dirty {
        return Ok((false, false));
    }
    let data = std::fs::read(path).map_err(io)?;
    let start = (start as usize).min(data.len());
    let mut off = start + 1;
    while off + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        if (RECORD_HEADER_LEN..=RECORD_LEN_MAX).contains(&len) && off + len <= data.len() {
            let rec = &data[off..off + len];
            let crc = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
            if crc32c::crc32c(&rec[8..]) == crc {
                return Ok((true, true));
            }
        }
        off += 1;
    }
    Ok((false, true))
}

/// How much of a segment's tail [`scan_after`] reads at a time while it finds only zeros.
const SCAN_CHUNK_BYTES: usize = 256 * 1024;

/// Reads raw WAL bytes, segment headers and padding included, for a WAL sender or a base
/// backup: the byte stream a replica writes at the same Lsns.
///
/// Invariants: `segment` is the open file of segment `segment_no`, when set.
pub struct RawWalReader {
    dir: PathBuf,
    timeline: Timeline,
    segment_size_bytes: u64,
    segment: Option<(u64, std::fs::File)>,
}

/// Why raw WAL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RawReadError {
    /// The segment holding the Lsn is not on disk (removed, or never written on this timeline).
    #[error("WAL segment {file} holding {lsn} is not on this server")]
    Missing {
        /// The Lsn asked for.
        lsn: Lsn,
        /// The segment file name.
        file: String,
    },
    /// Reading failed.
    #[error("read WAL segment {file}: {source}")]
    Io {
        /// The segment file name.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl RawWalReader {
    /// A reader of `dir`'s WAL on `timeline`.
    pub fn new(dir: &Path, timeline: Timeline, segment_size_bytes: u64) -> RawWalReader {
        RawWalReader { dir: dir.to_path_buf(), timeline, segment_size_bytes, segment: None }
    }

    /// Reads the bytes from `from` up to `upto` (exclusive), at most `max` of them and never
    /// past the end of `from`'s segment, appending them to `out`; returns how many.
    pub fn read(
        &mut self,
        from: Lsn,
        upto: Lsn,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, RawReadError> {
        use std::os::unix::fs::FileExt;
        if upto <= from {
            return Ok(0);
        }
        let segment_no = segment_of(from, self.segment_size_bytes);
        let offset = from.0 % self.segment_size_bytes;
        let n = (upto.0 - from.0).min(self.segment_size_bytes - offset).min(max as u64) as usize;
        let name = segment_file_name(self.timeline, segment_no);
        if self.segment.as_ref().is_none_or(|(no, _)| *no != segment_no) {
            let file = std::fs::File::open(self.dir.join(&name)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    RawReadError::Missing { lsn: from, file: name.clone() }
                } else {
                    RawReadError::Io { file: name.clone(), source: e }
                }
            })?;
            self.segment = Some((segment_no, file));
        }
        let (_, file) = self.segment.as_ref().expect("opened above");
        let start = out.len();
        out.resize(start + n, 0);
        file.read_exact_at(&mut out[start..], offset).map_err(|e| {
            out.truncate(start);
            RawReadError::Io { file: name, source: e }
        })?;
        Ok(n)
    }
}
