//! The snapshot loader: streamed input in any slicing, and every damaged file refused with a
//! clear error, never a panic and never a partly loaded store reported as good.

mod common;
use common::*;
use hindsight_engine::checkpoint::{load_snapshot, load_snapshot_from, LoadedSnapshot};
use hindsight_engine::store::Store;
use hindsight_engine::{Database, Error};
use hindsight_protocol::Lsn;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A database with two tables of rows, checkpointed; returns its directory, the snapshot's
/// path, the system id and the digest at the snapshot.
fn checkpointed(rows: i64) -> (tempfile::TempDir, PathBuf, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), small_config()).unwrap();
    let def = create_accounts(&db);
    let changes: Vec<(i64, Option<i64>)> = (0..rows).map(|i| (i, Some(i * 3))).collect();
    db.commit(writes(&def, db.read_view().lsn(), &changes)).unwrap();
    let lsn = db.checkpoint().unwrap();
    let status = db.status();
    let path = dir.path().join("snapshots").join(hindsight_engine::checkpoint::snapshot_file_name(lsn));
    assert!(path.exists(), "{} was written", path.display());
    (dir, path, status.system_id, status.digest)
}

/// Hands out at most `step` bytes per read, cycling through 1..=step, like a network stream.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
    turn: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.turn = self.turn % self.step + 1;
        let n = self.turn.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn load_bytes(data: &[u8], path: &Path, system_id: u64) -> Result<Store, Error> {
    let store = Store::new(Lsn::ZERO);
    let input = Trickle { data: data.to_vec(), pos: 0, step: 7, turn: 0 };
    load_snapshot_from(input, data.len() as u64, path, &store, system_id).map(|_| store)
}

#[test]
fn a_streamed_snapshot_loads_the_same_state_as_the_file() {
    let (_dir, path, system_id, digest) = checkpointed(5_000);
    let from_file = Store::new(Lsn::ZERO);
    let meta = load_snapshot(&path, &from_file, system_id).unwrap();
    assert_eq!(meta.digest, digest);
    assert_eq!(from_file.recompute_digest(), digest);
    assert_eq!(from_file.stats().rows, 5_000);

    let data = std::fs::read(&path).unwrap();
    let streamed = load_bytes(&data, &path, system_id).unwrap();
    assert_eq!(streamed.recompute_digest(), digest);
    assert_eq!(streamed.stats().rows, 5_000);
    assert_eq!(streamed.visible_lsn(), meta.lsn);

    let loaded = LoadedSnapshot::load(&data[..], data.len() as u64, &path, system_id).unwrap();
    assert_eq!(loaded.meta, meta);
}

#[test]
fn another_clusters_snapshot_is_refused() {
    let (_dir, path, system_id, _) = checkpointed(10);
    let err = load_snapshot(&path, &Store::new(Lsn::ZERO), system_id ^ 1).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)), "{err}");
    assert!(err.to_string().contains("belongs to system id"), "{err}");
}

/// Every truncation and every single-byte change of a small snapshot is refused as corrupt,
/// naming the file.
#[test]
fn every_truncation_and_flipped_byte_is_refused() {
    let (_dir, path, system_id, _) = checkpointed(40);
    let data = std::fs::read(&path).unwrap();
    let refused = |damaged: &[u8], what: &str| match load_bytes(damaged, &path, system_id) {
        Err(Error::Corrupt { file, detail, .. }) => {
            assert_eq!(file, path, "{what}: {detail}");
            assert!(!detail.is_empty(), "{what}");
        }
        Err(other) => panic!("{what}: expected a corruption error, got {other}"),
        Ok(_) => panic!("{what}: a damaged snapshot was loaded"),
    };
    for len in 0..data.len() {
        refused(&data[..len], &format!("truncated to {len} bytes"));
    }
    for at in 0..data.len() {
        let mut damaged = data.clone();
        damaged[at] ^= 0x5A;
        refused(&damaged, &format!("byte {at} changed"));
    }
    let mut longer = data.clone();
    longer.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4]);
    refused(&longer, "bytes appended");
}
