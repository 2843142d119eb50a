//! Base backups: the consistent image a replica starts from, taken from a running database
//! without blocking writers, and turned back into a data directory on the other side.
//!
//! A base backup is three things at one Lsn `L` (the visible Lsn when it started):
//! - the snapshot of a read view at `L`, in the snapshot file format ([`encode_snapshot`]);
//! - the WAL of the segment holding `L`, from the segment's start up to `L` (its header and the
//!   records before `L`), so the replica's segments are byte-identical copies of the source's
//!   and it can serve them to replicas of its own;
//! - the metadata: system id, timeline, segment size, `L` and the record before it.
//!
//! The WAL from `L` on follows by streaming. The source must keep that WAL until the replica
//! has it: the WAL sender places a hold at `L` before it starts (see [`crate::wal::holds`]).
//!
//! [`install_base_backup`] writes the replica's directory; the control file comes last, so a
//! directory without one is an interrupted bootstrap that can be thrown away and redone.

use crate::checkpoint::{snapshot_file_name, Control, SnapshotMeta};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::store::ReadView;
use crate::wal::segment::{segment_of, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::wal::writer::{create_segment, sync_dir};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use crate::checkpoint::encode_snapshot;

/// A base backup being taken: the view pins the versions the snapshot needs.
pub struct BaseBackup {
    /// What the snapshot holds.
    pub meta: SnapshotMeta,
    /// The cluster's WAL segment size.
    pub segment_size_bytes: u64,
    /// The state at `meta.lsn`.
    pub view: ReadView,
    /// The segment holding `meta.lsn`, from its start up to `meta.lsn`.
    pub wal_prefix: Vec<u8>,
}

impl Database {
    /// Starts a base backup at the visible Lsn. The caller must hold the WAL from
    /// `meta.lsn` on (see [`Database::hold_wal`]) until the replica has streamed past it;
    /// `hold` is the hold's name, placed here before anything is read.
    pub fn start_base_backup(&self, hold: &str) -> Result<BaseBackup> {
        let (meta, view) = self.snapshot_point();
        let lsn = meta.lsn;
        self.hold_wal(hold, lsn, false).map_err(|e| Error::Mismatch(format!("base backup: {e}")))?;
        let seg = self.segment_size_bytes();
        let segment_no = segment_of(lsn, seg);
        let path = self.wal_dir().join(crate::wal::segment::segment_file_name(self.timeline(), segment_no));
        let len = (lsn.0 - segment_no * seg) as usize;
        let mut wal_prefix = vec![0u8; len];
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::io(format!("open WAL segment {} for a base backup", path.display()), e))?;
        file.read_exact_at(&mut wal_prefix, 0)
            .map_err(|e| Error::io(format!("read WAL segment {} for a base backup", path.display()), e))?;
        Ok(BaseBackup { meta, segment_size_bytes: seg, view, wal_prefix })
    }
}

/// Makes `dir` a replica's data directory from a base backup whose snapshot was written to
/// `dir/snapshots/<name>.tmp` (the name [`snapshot_file_name`] gives `meta.lsn`, plus `.tmp`).
/// Installs the snapshot, the WAL segment prefix and, last, the control file.
pub fn install_base_backup(
    dir: &Path,
    meta: &SnapshotMeta,
    segment_size_bytes: u64,
    wal_prefix: &[u8],
) -> Result<()> {
    let snap_dir = dir.join("snapshots");
    let wal_dir = dir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(|e| Error::io(format!("create {}", wal_dir.display()), e))?;
    let name = snapshot_file_name(meta.lsn);
    let tmp = snap_dir.join(format!("{name}.tmp"));
    std::fs::rename(&tmp, snap_dir.join(&name))
        .map_err(|e| Error::io(format!("install snapshot {}", tmp.display()), e))?;
    sync_dir(&snap_dir)?;
    let segment_no = segment_of(meta.lsn, segment_size_bytes);
    let expected_len = (meta.lsn.0 - segment_no * segment_size_bytes) as usize;
    let header =
        SegmentHeader { system_id: meta.system_id, timeline: meta.timeline, segment_size_bytes, segment_no }
            .encode();
    if wal_prefix.len() != expected_len
        || wal_prefix.len() < SEGMENT_HEADER_LEN
        || wal_prefix[..SEGMENT_HEADER_LEN] != header
    {
        return Err(Error::Corrupt {
            lsn: meta.lsn,
            file: wal_dir.clone(),
            detail: format!(
                "the base backup's WAL prefix ({} bytes) does not start segment {segment_no} of this cluster up to {}",
                wal_prefix.len(),
                meta.lsn
            ),
        });
    }
    let file = create_segment(&wal_dir, meta.system_id, meta.timeline, segment_size_bytes, segment_no)?;
    file.write_all_at(wal_prefix, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("write WAL segment {segment_no} of the base backup"), e))?;
    let control = Control {
        system_id: meta.system_id,
        timeline: meta.timeline,
        segment_size_bytes,
        checkpoint_lsn: meta.lsn,
        checkpoint_prev_lsn: meta.prev_lsn,
        snapshot: Some(name),
        initialized_time_us: meta.last_commit_time_us,
    };
    control.write(&dir.join("control"))?;
    sync_dir(dir)
}
