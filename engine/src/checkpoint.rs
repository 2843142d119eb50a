//! Snapshots (checkpoints) and the control file.
//!
//! A snapshot is the whole store as seen by one read view, written in the background while
//! commits continue (the view pins the versions it needs; nobody waits for it). Crash recovery
//! loads the newest snapshot named by the control file, then replays the WAL from its Lsn.
//!
//! Snapshot file `snapshots/<lsn as 16 hex digits>.snap`, little-endian:
//!
//! | magic [u8; 8] "HSSNAP01" | header_len u32 | header | header_crc32c u32 | block* |
//!
//! header: | system_id u64 | timeline u32 | lsn u64 | prev_lsn u64 | last_txid u64 |
//!         | last_commit_time_us i64 | digest u64 | next_table_id u32 |
//!
//! block: | payload_len u32 | crc32c(payload) u32 | payload |, payload = entries:
//!   `1 | table definition | expected_rows uvarint` (schema encoding; the row count is a sizing
//!   hint only), `2 | table_id uvarint | n uvarint | (len uvarint | row)*`,
//!   `3 | total_rows u64` (the end entry; the file must end right after its block).
//!
//! Control file `control`, replaced atomically (temp → fsync → rename → fsync dir):
//!
//! | magic u32 "HSCT" | format u32 | body_len u32 | crc32c(body) u32 | body |
//!
//! body: | system_id u64 | timeline u32 | segment_size_bytes u64 | checkpoint_lsn u64 |
//!       | checkpoint_prev_lsn u64 | snapshot name str (empty = none: empty database) |
//!       | initialized_time_us i64 |

use crate::error::{Error, Result};
use crate::schema::{put_str, TableDef, TableId};
use crate::store::{Chain, ReadView, Store, TableLoader};
use crate::value::{put_uvarint, row_key, Key, Reader, ROW_LEN_MAX};
use crate::wal::writer::sync_dir;
use hindsight_protocol::{Lsn, Timeline, TxId};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Target payload bytes per snapshot block.
pub const SNAPSHOT_BLOCK_BYTES: usize = 256 * 1024;
/// The longest block accepted when reading.
pub const SNAPSHOT_BLOCK_LEN_MAX: usize = 4 * SNAPSHOT_BLOCK_BYTES;
const _: () = assert!(ROW_LEN_MAX + 16 < SNAPSHOT_BLOCK_LEN_MAX - SNAPSHOT_BLOCK_BYTES);

const SNAPSHOT_MAGIC: &[u8; 8] = b"HSSNAP01";
/// Rows handed from the parsing thread to the inserting thread at a time, while loading.
const LOAD_BATCH_ROWS: usize = 4096;
/// Batches in flight between them.
const LOAD_QUEUE_BATCHES: usize = 16;

type RowBatch = (Arc<crate::store::TableData>, Vec<(Key, Arc<Chain>)>);
const SNAPSHOT_HEADER_LEN: usize = 56;
const CONTROL_MAGIC: u32 = 0x5443_5348; // "HSCT"
/// The control-file format this build reads and writes.
pub const CONTROL_FORMAT: u32 = 1;
/// The largest control file accepted.
const CONTROL_LEN_MAX: usize = 4096;

/// What a snapshot says about the state it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The cluster.
    pub system_id: u64,
    /// The timeline it was taken on.
    pub timeline: Timeline,
    /// The state is exactly that at this Lsn.
    pub lsn: Lsn,
    /// The start of the record ending at `lsn` (the WAL link for the record after it).
    pub prev_lsn: Lsn,
    /// The newest transaction in it.
    pub last_txid: TxId,
    /// Its commit time.
    pub last_commit_time_us: i64,
    /// The state digest.
    pub digest: u64,
    /// The next table id to allocate.
    pub next_table_id: u32,
}

/// The snapshot file name for an Lsn.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{:016X}.snap", lsn.0)
}

/// What writing a snapshot produced.
#[derive(Clone, Debug)]
pub struct SnapshotWritten {
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
}

struct BlockWriter<W: Write> {
    out: W,
    payload: Vec<u8>,
    bytes: u64,
}

impl<W: Write> BlockWriter<W> {
    fn flush_block(&mut self) -> std::io::Result<()> {
        if self.payload.is_empty() {
            return Ok(());
        }
        self.out.write_all(&(self.payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&crc32c::crc32c(&self.payload).to_le_bytes())?;
        self.out.write_all(&self.payload)?;
        self.bytes += 8 + self.payload.len() as u64;
        self.payload.clear();
        Ok(())
    }
}

/// Writes the state seen by `view` to `dir/<name>`: to a temporary name, fsynced, then renamed.
pub fn write_snapshot(dir: &Path, view: &ReadView, meta: SnapshotMeta) -> Result<SnapshotWritten> {
    let path = dir.join(snapshot_file_name(meta.lsn));
    let tmp = dir.join(format!("{}.tmp", snapshot_file_name(meta.lsn)));
    let io = |e| Error::io(format!("write snapshot {}", path.display()), e);
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
    let (out, bytes, total_rows) =
        encode_snapshot(BufWriter::with_capacity(1 << 20, file), view, meta).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    sync_dir(dir)?;
    Ok(SnapshotWritten { meta, path, bytes, rows: total_rows })
}

/// Writes the snapshot of `view` to `out` in the snapshot file format (a base backup streams it
/// to a replica this way); returns `out`, the bytes written and the rows.
pub fn encode_snapshot<W: Write>(
    out: W,
    view: &ReadView,
    meta: SnapshotMeta,
) -> std::io::Result<(W, u64, u64)> {
    assert_eq!(view.lsn(), meta.lsn, "snapshot metadata must describe the view's Lsn");
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_LEN);
    header.extend_from_slice(&meta.system_id.to_le_bytes());
    header.extend_from_slice(&meta.timeline.0.to_le_bytes());
    header.extend_from_slice(&meta.lsn.0.to_le_bytes());
    header.extend_from_slice(&meta.prev_lsn.0.to_le_bytes());
    header.extend_from_slice(&meta.last_txid.0.to_le_bytes());
    header.extend_from_slice(&meta.last_commit_time_us.to_le_bytes());
    header.extend_from_slice(&meta.digest.to_le_bytes());
    header.extend_from_slice(&meta.next_table_id.to_le_bytes());
    assert_eq!(header.len(), SNAPSHOT_HEADER_LEN);
    let mut w = BlockWriter { out, payload: Vec::new(), bytes: 0 };
    let mut prefix = Vec::new();
    prefix.extend_from_slice(SNAPSHOT_MAGIC);
    prefix.extend_from_slice(&(SNAPSHOT_HEADER_LEN as u32).to_le_bytes());
    prefix.extend_from_slice(&header);
    prefix.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    w.out.write_all(&prefix)?;
    w.bytes += prefix.len() as u64;
    let mut total_rows = 0u64;
    let mut failed = None;
    for def in view.catalog().tables() {
        w.payload.push(1);
        def.encode(&mut w.payload);
        put_uvarint(&mut w.payload, view.store().row_count(def.id));
        // Rows go in runs: | 2 | table_id | n | rows |, n patched when the run ends.
        let mut run: Vec<u8> = Vec::new();
        let mut n = 0u64;
        let emit = |w: &mut BlockWriter<W>, run: &mut Vec<u8>, n: &mut u64| {
            if *n == 0 {
                return Ok(());
            }
            w.payload.push(2);
            put_uvarint(&mut w.payload, u64::from(def.id.0));
            put_uvarint(&mut w.payload, *n);
            w.payload.extend_from_slice(run);
            run.clear();
            *n = 0;
            w.flush_block()
        };
        view.scan(def, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, |_, row| {
            put_uvarint(&mut run, row.len() as u64);
            run.extend_from_slice(row);
            n += 1;
            total_rows += 1;
            if run.len() >= SNAPSHOT_BLOCK_BYTES {
                if let Err(e) = emit(&mut w, &mut run, &mut n) {
                    failed = Some(e);
                    return false;
                }
            }
            true
        });
        if let Some(e) = failed.take() {
            return Err(e);
        }
        emit(&mut w, &mut run, &mut n)?;
    }
    w.payload.push(3);
    w.payload.extend_from_slice(&total_rows.to_le_bytes());
    w.flush_block()?;
    w.out.flush()?;
    Ok((w.out, w.bytes, total_rows))
}

/// Loads a snapshot file into an empty store (see [`load_snapshot_from`]).
pub fn load_snapshot(path: &Path, store: &Store, expected_system_id: u64) -> Result<SnapshotMeta> {
    let io = |e| Error::io(format!("read snapshot {}", path.display()), e);
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    load_snapshot_from(BufReader::with_capacity(1 << 20, file), len, path, store, expected_system_id)
}

/// Loads a snapshot read from `input` into an empty store, checking every block checksum and,
/// at the end, the digest recomputed from the loaded rows against the one in the header. The
/// input is read block by block, never whole: a replica feeds its base backup's snapshot here
/// as it arrives. `size_hint` (the snapshot's length, or an upper bound) caps the row-count
/// hints used for sizing; `path` names the snapshot in errors.
pub fn load_snapshot_from(
    mut input: impl Read,
    size_hint: u64,
    path: &Path,
    store: &Store,
    expected_system_id: u64,
) -> Result<SnapshotMeta> {
    let corrupt = |detail: String, lsn: Lsn| Error::Corrupt { lsn, file: path.to_path_buf(), detail };
    let io = |e| Error::io(format!("read snapshot {}", path.display()), e);
    let mut prefix = [0u8; 12];
    if read_full(&mut input, &mut prefix).map_err(io)? < prefix.len() || &prefix[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a hindsight snapshot (bad magic)".into(), Lsn::ZERO));
    }
    let header_len = u32::from_le_bytes(prefix[8..].try_into().expect("4 bytes")) as usize;
    if header_len != SNAPSHOT_HEADER_LEN {
        return Err(corrupt(format!("snapshot header length {header_len}"), Lsn::ZERO));
    }
    let mut header = [0u8; SNAPSHOT_HEADER_LEN + 4];
    if read_full(&mut input, &mut header).map_err(io)? < header.len() {
        return Err(corrupt("snapshot is truncated in its header".into(), Lsn::ZERO));
    }
    let (header, crc) = header.split_at(SNAPSHOT_HEADER_LEN);
    if crc32c::crc32c(header) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("snapshot header checksum mismatch".into(), Lsn::ZERO));
    }
    let mut h = Reader::new(header);
    let meta = (|| -> std::result::Result<SnapshotMeta, crate::value::CodecError> {
        Ok(SnapshotMeta {
            system_id: h.u64()?,
            timeline: Timeline(h.u32()?),
            lsn: Lsn(h.u64()?),
            prev_lsn: Lsn(h.u64()?),
            last_txid: TxId(h.u64()?),
            last_commit_time_us: h.u64()? as i64,
            digest: h.u64()?,
            next_table_id: h.u32()?,
        })
    })()
    .map_err(|e| corrupt(format!("snapshot header: {e}"), Lsn::ZERO))?;
    let lsn = meta.lsn;
    if meta.system_id != expected_system_id {
        return Err(Error::Mismatch(format!(
            "snapshot {} belongs to system id {:016X}, this data directory is {:016X}",
            path.display(),
            meta.system_id,
            expected_system_id
        )));
    }
    let rows_hint_max = usize::try_from(size_hint / 2).unwrap_or(usize::MAX);
    let mut tables: Vec<TableLoader> = Vec::new();
    let mut rows_seen = 0u64;
    let mut ended = false;
    // This thread reads, checks and parses the rows and makes their version chains; a second
    // one links them into the ordered index, so the two halves of loading a large snapshot
    // overlap (see `TableLoader`).
    let (tx, rx) = crossbeam_channel::bounded::<RowBatch>(LOAD_QUEUE_BATCHES);
    std::thread::scope(|scope| -> Result<()> {
        let inserter = scope.spawn(move || {
            for (table, rows) in rx {
                for (key, chain) in rows {
                    table.load_ordered(key, chain);
                }
            }
        });
        let mut batch: Vec<(Key, Arc<Chain>)> = Vec::with_capacity(LOAD_BATCH_ROWS);
        let mut block_head = [0u8; 8];
        let mut payload = Vec::new();
        // Where the block being read starts in the file.
        let mut pos = (prefix.len() + SNAPSHOT_HEADER_LEN + 4) as u64;
        let parsed = (|| -> Result<()> {
            loop {
                let n = read_full(&mut input, &mut block_head).map_err(io)?;
                if n == 0 {
                    break;
                }
                if ended {
                    return Err(corrupt(format!("bytes after the snapshot's end block, at byte {pos}"), lsn));
                }
                if n < block_head.len() {
                    return Err(corrupt(format!("snapshot is truncated in the block at byte {pos}"), lsn));
                }
                let len = u32::from_le_bytes(block_head[..4].try_into().expect("4 bytes")) as usize;
                if len > SNAPSHOT_BLOCK_LEN_MAX {
                    return Err(corrupt(
                        format!("snapshot block of {len} bytes at byte {pos} is past the limit"),
                        lsn,
                    ));
                }
                let crc = u32::from_le_bytes(block_head[4..].try_into().expect("4 bytes"));
                payload.resize(len, 0);
                if read_full(&mut input, &mut payload).map_err(io)? < len {
                    return Err(corrupt(format!("snapshot is truncated in the block at byte {pos}"), lsn));
                }
                if crc32c::crc32c(&payload) != crc {
                    return Err(corrupt(format!("snapshot block checksum mismatch at byte {pos}"), lsn));
                }
                let block_pos = pos;
                pos += (block_head.len() + len) as u64;
                let fail = |e: crate::value::CodecError| {
                    corrupt(format!("snapshot block at byte {block_pos}: {e}"), lsn)
                };
                let mut p = Reader::new(&payload);
                while !p.is_empty() {
                    match p.u8().map_err(fail)? {
                        1 => {
                            let def = TableDef::decode(&mut p).map_err(fail)?;
                            let expected_rows = p.uvarint().map_err(fail)?;
                            if tables.iter().any(|t| t.table().def.id == def.id) {
                                return Err(corrupt(format!("table id {} is defined twice", def.id), lsn));
                            }
                            store.create_table(Arc::new(def.clone()), lsn);
                            let t = store.table_data(def.id).expect("table just created");
                            // A hint only: never reserve for more rows than the input could hold.
                            tables.push(TableLoader::new(t, (expected_rows as usize).min(rows_hint_max)));
                        }
                        2 => {
                            let id = TableId(p.uvarint().map_err(fail)? as u32);
                            let Some(t) = tables.iter_mut().find(|t| t.table().def.id == id) else {
                                return Err(corrupt(format!("rows for unknown table id {id}"), lsn));
                            };
                            let n = p.uvarint().map_err(fail)?;
                            for _ in 0..n {
                                let len = p.len(ROW_LEN_MAX).map_err(fail)?;
                                let row = p.bytes(len).map_err(fail)?;
                                let def = &t.table().def;
                                let key = row_key(&def.types, def.pk, row).map_err(fail)?;
                                crate::value::validate_row(&def.types, row).map_err(fail)?;
                                batch.push(t.add(key, row.into(), lsn));
                                rows_seen += 1;
                                if batch.len() == LOAD_BATCH_ROWS {
                                    let full =
                                        std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH_ROWS));
                                    tx.send((Arc::clone(t.table()), full))
                                        .expect("the inserter runs until the channel closes");
                                }
                            }
                            if !batch.is_empty() {
                                tx.send((Arc::clone(t.table()), std::mem::take(&mut batch)))
                                    .expect("the inserter runs until the channel closes");
                            }
                        }
                        3 => {
                            let total = p.u64().map_err(fail)?;
                            if total != rows_seen {
                                return Err(corrupt(
                                    format!("snapshot says {total} rows, holds {rows_seen}"),
                                    lsn,
                                ));
                            }
                            ended = true;
                        }
                        t => {
                            return Err(corrupt(
                                format!("unknown snapshot entry {t} at byte {block_pos}"),
                                lsn,
                            ))
                        }
                    }
                }
            }
            if !ended {
                return Err(corrupt("snapshot is truncated (no end block)".into(), lsn));
            }
            Ok(())
        })();
        drop(tx);
        // The hash indexes are built while the inserter finishes the ordered ones.
        let indexed = parsed.and_then(|()| {
            for t in tables {
                let id = t.table().def.id;
                t.finish(store)
                    .map_err(|key| corrupt(format!("table id {id} holds key {key:?} twice"), lsn))?;
            }
            Ok(())
        });
        inserter.join().expect("the snapshot inserter does not panic");
        indexed
    })?;

    if store.digest() != meta.digest {
        return Err(corrupt(
            format!(
                "snapshot digest mismatch: rows hash to {:016x}, header says {:016x}",
                store.digest(),
                meta.digest
            ),
            lsn,
        ));
    }
    store.note_table_id(TableId(meta.next_table_id.saturating_sub(1)));
    store.reset_visible(lsn);
    Ok(meta)
}

/// A snapshot loaded into a store of its own ahead of opening the database: a replica loads
/// its base backup's snapshot while the bytes stream in, then opens the database with it
/// ([`crate::Database::open_standby_loaded`]) instead of reading the file back.
pub struct LoadedSnapshot {
    pub(crate) store: Arc<Store>,
    /// What the snapshot holds.
    pub meta: SnapshotMeta,
}

impl LoadedSnapshot {
    /// Loads a snapshot from `input` (see [`load_snapshot_from`] for the arguments).
    pub fn load(input: impl Read, size_hint: u64, path: &Path, expected_system_id: u64) -> Result<Self> {
        let store = Arc::new(Store::new(Lsn::ZERO));
        let meta = load_snapshot_from(input, size_hint, path, &store, expected_system_id)?;
        Ok(LoadedSnapshot { store, meta })
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The control file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The cluster.
    pub system_id: u64,
    /// The current timeline.
    pub timeline: Timeline,
    /// WAL segment size, fixed at init.
    pub segment_size_bytes: u64,
    /// Recovery starts here.
    pub checkpoint_lsn: Lsn,
    /// The start of the record ending at `checkpoint_lsn`.
    pub checkpoint_prev_lsn: Lsn,
    /// The snapshot file (under `snapshots/`), or none for an empty database.
    pub snapshot: Option<String>,
    /// When the cluster was created.
    pub initialized_time_us: i64,
}

impl Control {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Control> {
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("read control file {}", path.display()), e))?;
        let corrupt =
            |detail: &str| Error::Corrupt { lsn: Lsn::ZERO, file: path.to_path_buf(), detail: detail.into() };
        if data.len() < 16 || data.len() > CONTROL_LEN_MAX {
            return Err(corrupt("control file has an impossible size"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(0) != CONTROL_MAGIC {
            return Err(corrupt("not a hindsight control file (bad magic)"));
        }
        let format = u32_at(4);
        if format != CONTROL_FORMAT {
            return Err(Error::Mismatch(format!(
                "data directory format {format} is not the format {CONTROL_FORMAT} this build reads; \
                 use the hindsight version that created it"
            )));
        }
        let len = u32_at(8) as usize;
        let body = data.get(16..16 + len).ok_or_else(|| corrupt("control file truncated"))?;
        if crc32c::crc32c(body) != u32_at(12) {
            return Err(corrupt("control file checksum mismatch"));
        }
        let mut r = Reader::new(body);
        let mut parse = || -> std::result::Result<Control, crate::value::CodecError> {
            let system_id = r.u64()?;
            let timeline = Timeline(r.u32()?);
            let segment_size_bytes = r.u64()?;
            let checkpoint_lsn = Lsn(r.u64()?);
            let checkpoint_prev_lsn = Lsn(r.u64()?);
            let name = r.string(255)?.to_string();
            let initialized_time_us = r.u64()? as i64;
            Ok(Control {
                system_id,
                timeline,
                segment_size_bytes,
                checkpoint_lsn,
                checkpoint_prev_lsn,
                snapshot: (!name.is_empty()).then_some(name),
                initialized_time_us,
            })
        };
        parse().map_err(|e| corrupt(&format!("control file body: {e}")))
    }

    /// Replaces `path` atomically with these contents.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.system_id.to_le_bytes());
        body.extend_from_slice(&self.timeline.0.to_le_bytes());
        body.extend_from_slice(&self.segment_size_bytes.to_le_bytes());
        body.extend_from_slice(&self.checkpoint_lsn.0.to_le_bytes());
        body.extend_from_slice(&self.checkpoint_prev_lsn.0.to_le_bytes());
        put_str(&mut body, self.snapshot.as_deref().unwrap_or(""));
        body.extend_from_slice(&self.initialized_time_us.to_le_bytes());
        let mut data = Vec::with_capacity(16 + body.len());
        data.extend_from_slice(&CONTROL_MAGIC.to_le_bytes());
        data.extend_from_slice(&CONTROL_FORMAT.to_le_bytes());
        data.extend_from_slice(&(body.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        data.extend_from_slice(&body);
        let tmp = path.with_extension("tmp");
        let io = |e| Error::io(format!("write control file {}", path.display()), e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_dir(path.parent().expect("control file has a directory"))
    }
}
