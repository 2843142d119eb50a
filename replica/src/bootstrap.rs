//! Bootstrap: an empty data directory becomes a replica's from a base backup streamed by the
//! upstream (see `hindsight_engine::backup` for what a base backup is).
//!
//! The snapshot is written to `snapshots/<name>.tmp` as it arrives and, at the same time, loaded
//! into memory by a thread of its own, so the replica opens without reading the file back and
//! a bootstrap takes about as long as the slower of the transfer and the load, not their sum.
//! The role secrets go to `roles`; [`install_base_backup`] then installs the snapshot and the
//! WAL segment prefix and writes the control file last. A directory without a control file is an interrupted
//! bootstrap: [`prepare_dir`] removes what it left and the bootstrap starts over. The
//! connection stays open afterwards and streams from the backup Lsn, so the upstream's hold on
//! that WAL never lapses in between.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;
use tokio::sync::mpsc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hindsight_engine::backup::install_base_backup;
use hindsight_engine::checkpoint::{snapshot_file_name, LoadedSnapshot, SnapshotMeta};
use hindsight_primary::auth::Authenticator;
use hindsight_primary::client::Client;
use hindsight_primary::ConnectOptions;
use hindsight_protocol::wire::{server_message::Msg, BaseBackupRequest, Purpose};
use hindsight_protocol::{ClientMessage, Lsn, Timeline, TxId};

use crate::receiver::Upstream;
use crate::{Error, ReplicaConfig};

/// What an interrupted bootstrap may leave in a directory without a control file.
const BOOTSTRAP_LEFTOVERS: &[&str] = &["snapshots", "wal", "roles", "roles.tmp", "lock"];
/// The snapshot's length is not known before it ends: the bound given to the loader's sizing.
const SNAPSHOT_SIZE_HINT: u64 = 1 << 40;
/// The largest role-secrets part accepted.
const ROLES_LEN_MAX: usize = 64 * 1024;

/// Makes sure `dir` can be bootstrapped: missing, empty, or holding only what an interrupted
/// bootstrap left (removed here). Anything else is refused, never overwritten.
pub fn prepare_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::DataDir(format!("create {}: {e}", dir.display())))?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::DataDir(format!("list {}: {e}", dir.display())))?;
    let mut leftovers = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !BOOTSTRAP_LEFTOVERS.contains(&name.as_str()) {
            return Err(Error::DataDir(format!(
                "{} is not empty and has no control file ({name} is there): refusing to bootstrap a replica over it",
                dir.display()
            )));
        }
        leftovers.push(entry.path());
    }
    for path in leftovers {
        if path.file_name().is_some_and(|n| n == "lock") {
            continue;
        }
        tracing::warn!(path = %path.display(), "removing what an interrupted bootstrap left");
        let removed =
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| Error::DataDir(format!("remove {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Connects upstream for replication.
pub(crate) async fn connect(config: &ReplicaConfig, expected_system_id: u64) -> Result<Upstream, String> {
    let options = ConnectOptions {
        role: config.role.clone(),
        password: config.password.clone(),
        expected_system_id,
        application_name: config.name.clone(),
    };
    let (transport, _auth_ok) = Client::handshake(config.primary.as_str(), options, Purpose::Replication)
        .await
        .map_err(|e| e.to_string())?;
    Ok(transport)
}

/// Snapshot chunks queued for the loading thread; when it falls behind, receiving waits.
const LOAD_QUEUE_CHUNKS: usize = 64;

/// The snapshot part of a base backup as the loading thread reads it: the chunks in order, then
/// the end of input when the sender is dropped.
struct ChunkReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Takes a base backup from the upstream into `config.data_dir` (already prepared); returns the
/// connection, ready for `StartReplication` at the backup Lsn, and the snapshot loaded.
pub async fn bootstrap(config: &ReplicaConfig) -> Result<(Upstream, LoadedSnapshot), Error> {
    let fail = |detail: String| Error::Bootstrap { primary: config.primary.clone(), detail };
    let started = Instant::now();
    let dir = &config.data_dir;
    let mut upstream = connect(config, 0).await.map_err(fail)?;
    upstream.send(ClientMessage::from(BaseBackupRequest {})).await.map_err(|e| fail(e.to_string()))?;
    let start = match upstream.next().await {
        Some(Ok(m)) => match m.msg {
            Some(Msg::BackupStart(s)) => s,
            Some(Msg::Error(e)) => return Err(fail(format!("{} ({})", e.message, e.code))),
            _ => return Err(fail("expected BackupStart".into())),
        },
        Some(Err(e)) => return Err(fail(e.to_string())),
        None => return Err(fail("the upstream closed the connection".into())),
    };
    let meta = SnapshotMeta {
        system_id: start.system_id,
        timeline: Timeline(start.timeline),
        lsn: Lsn(start.lsn),
        prev_lsn: Lsn(start.prev_lsn),
        last_txid: TxId(start.last_txid),
        last_commit_time_us: start.last_commit_time_us,
        digest: start.digest,
        next_table_id: start.next_table_id,
    };
    tracing::info!(lsn = %meta.lsn, system_id = format!("{:016X}", meta.system_id), "receiving a base backup");
    let snap_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir).map_err(|e| fail(format!("create {}: {e}", snap_dir.display())))?;
    let tmp = snap_dir.join(format!("{}.tmp", snapshot_file_name(meta.lsn)));
    let file = std::fs::File::create(&tmp).map_err(|e| fail(format!("create {}: {e}", tmp.display())))?;
    let mut snapshot = std::io::BufWriter::with_capacity(1 << 20, file);
    let (load_tx, chunks) = mpsc::channel(LOAD_QUEUE_CHUNKS);
    let mut load_tx = Some(load_tx);
    let load_path = tmp.clone();
    let loader = std::thread::Builder::new()
        .name("hindsight-snapshot-load".into())
        .spawn(move || {
            let input = ChunkReader { chunks, current: Bytes::new() };
            LoadedSnapshot::load(input, SNAPSHOT_SIZE_HINT, &load_path, meta.system_id)
        })
        .map_err(|e| fail(format!("start the snapshot loader: {e}")))?;
    let mut wal_prefix = Vec::new();
    let mut roles = Vec::new();
    let mut snapshot_bytes = 0u64;
    loop {
        let chunk = match upstream.next().await {
            Some(Ok(m)) => match m.msg {
                Some(Msg::BackupChunk(c)) => c,
                Some(Msg::Error(e)) => return Err(fail(format!("{} ({})", e.message, e.code))),
                _ => return Err(fail("expected BackupChunk".into())),
            },
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => return Err(fail("the upstream closed the connection mid-backup".into())),
        };
        if chunk.last {
            break;
        }
        match chunk.part.as_str() {
            "snapshot" => {
                snapshot_bytes += chunk.data.len() as u64;
                snapshot.write_all(&chunk.data).map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
                // A loader that stopped early has an error, reported when it is joined below.
                if let Some(tx) = &load_tx {
                    if tx.send(chunk.data).await.is_err() {
                        load_tx = None;
                    }
                }
            }
            "wal_prefix" if wal_prefix.len() + chunk.data.len() <= start.segment_size_bytes as usize => {
                wal_prefix.extend_from_slice(&chunk.data)
            }
            "roles" if roles.len() + chunk.data.len() <= ROLES_LEN_MAX => {
                roles.extend_from_slice(&chunk.data)
            }
            other => return Err(fail(format!("unexpected or oversized backup part \"{other}\""))),
        }
    }
    drop(load_tx);
    let file = snapshot.into_inner().map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
    file.sync_all().map_err(|e| fail(format!("fsync {}: {e}", tmp.display())))?;
    let loaded = tokio::task::spawn_blocking(move || loader.join())
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|_| fail("the snapshot loader panicked".into()))?
        .map_err(|e| fail(format!("load the snapshot: {e}")))?;
    let roles = String::from_utf8(roles).map_err(|_| fail("the role secrets are not UTF-8".into()))?;
    let auth = Authenticator::import(&roles).map_err(|e| fail(e.to_string()))?;
    auth.save(dir).map_err(|e| fail(e.to_string()))?;
    let seg = start.segment_size_bytes;
    let install_dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || install_base_backup(&install_dir, &meta, seg, &wal_prefix))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        lsn = %meta.lsn, snapshot_bytes, elapsed_ms = started.elapsed().as_millis() as u64,
        "base backup installed"
    );
    Ok((upstream, loaded))
}
