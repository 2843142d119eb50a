//! The database handle: open (with crash recovery), read views, commits, checkpoints.
//!
//! Data directory layout:
//!
//! ```text
//! DIR/control        the control file (checkpoint Lsn, snapshot name, system id, timeline)
//! DIR/lock           held with flock(2) while a process has the directory open
//! DIR/wal/           WAL segments
//! DIR/snapshots/     snapshot files
//! DIR/confirmed      a replica's confirmed Lsn (see [`crate::confirmed`])
//! ```
//!
//! A replica's committer takes WAL bytes instead of write sets; that side, with the pending
//! tail it keeps past what its upstream confirmed durable, is in `standby`.
//!
//! One committer thread owns the WAL writer and every store mutation. Sessions send it write
//! sets through its bounded inbox (`inbox`); it takes every request waiting (group commit), checks each for
//! conflicts, appends and applies it, makes the batch durable with one fdatasync, publishes the
//! new visible Lsn and only then acknowledges. Snapshots are written by a background thread from
//! a read view; the committer records them when they finish.

use crate::checkpoint::{
    load_snapshot, snapshot_file_name, write_snapshot, Control, LoadedSnapshot, SnapshotMeta, SnapshotWritten,
};
mod standby;

pub use self::standby::HELD_GROUPS_MAX;
use self::standby::{sync_wal_range, Standby, Tail};
use crate::confirmed::{ConfirmedFile, Recorded, CONFIRMED_SYNC_INTERVAL};
use crate::error::{Error, ErrorCode, Result, SqlError};
use crate::inbox::{Inbox, Lane, RecvError, SendError};
use crate::replay::{Replayer, TXN_CHANGE_BYTES_MAX};
use crate::reply::{reply_slot, ReplyTx};
use crate::schema::TableId;
use crate::store::{ReadView, Store};
use crate::txn::{AfterCommit, CommitInfo, PendingCommit, WriteSet};
use crate::wal::decoder::Decoder;
use crate::wal::holds::{HoldError, WalHold, WalHolds};
use crate::wal::reader::{list_segments, scan_wal, TailPolicy, WalDir};
use crate::wal::record::{
    change_encoded_len, encode_changes, Change, ChangeOp, CommitRecord, Record, RecordKind, TableChanges,
    RECORD_HEADER_LEN, RECORD_LEN_MAX, RESTORE_POINT_NAME_MAX,
};
use crate::wal::segment::{
    first_record_lsn, segment_file_name, segment_of, valid_segment_size, SEGMENT_SIZE_DEFAULT,
};
use crate::wal::writer::{create_segment, sync_dir, truncate_wal, WalWriter};
use crossbeam_channel::bounded;
use hindsight_protocol::{Lsn, Timeline, TxId};
use parking_lot::Mutex;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Requests waiting for the committer; senders block when it is full (back-pressure).
pub const COMMIT_QUEUE_MAX: usize = 1024;
/// The most requests one group commit takes.
pub const GROUP_COMMIT_MAX: usize = 512;
/// The longest the flusher waits for more commits to join a group before an fdatasync: after
/// acknowledging n commits it expects their writers back soon and waits (at most this long)
/// for about n commits to queue, so writers that would fall into alternating half-size groups
/// share one fsync instead (PostgreSQL's `commit_delay`, made adaptive).
pub const COMMIT_DELAY: Duration = Duration::from_micros(100);
/// WAL slices waiting for a replica's committer (each at most a replication frame, 1 MiB).
pub const WAL_QUEUE_MAX: usize = 64;
/// Payload bytes per chunk record of a large transaction.
const CHUNK_TARGET_BYTES: usize = RECORD_LEN_MAX - 4096;

/// Engine settings. `segment_size_bytes` only matters when a directory is initialised.
#[derive(Clone, Debug)]
pub struct Config {
    /// WAL segment size for a new data directory (power of two, 1 MiB..1 GiB).
    pub segment_size_bytes: u64,
    /// fdatasync the WAL before acknowledging commits. Off only for tests and benchmarks that
    /// say so: an acknowledged commit may then be lost in an OS crash (not in a process crash).
    pub fsync: bool,
    /// Take a snapshot after this much WAL since the last one.
    pub checkpoint_wal_bytes: u64,
    /// Take a snapshot at least this often when anything was written.
    pub checkpoint_interval: Duration,
    /// Keep old row versions this long (commit time), for reads in the past.
    pub version_retention: Duration,
    /// The most WAL a replication slot or a connected standby may hold back (bytes behind the
    /// insert position) before its hold is invalidated; `None` for no limit.
    pub max_slot_wal_keep_bytes: Option<u64>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT,
            fsync: true,
            checkpoint_wal_bytes: 256 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(300),
            version_retention: Duration::ZERO,
            max_slot_wal_keep_bytes: None,
        }
    }
}

/// A snapshot of the database's status for `SHOW STATUS` and functions.
#[derive(Clone, Debug)]
pub struct Status {
    /// "primary" or "replica".
    pub role: &'static str,
    /// The cluster's system id.
    pub system_id: u64,
    /// The current timeline.
    pub timeline: Timeline,
    /// Everything up to here is committed, durable and visible.
    pub visible_lsn: Lsn,
    /// The WAL insert position (may be ahead of visible while a flush is in progress). On a
    /// replica: the end of the WAL taken from its upstream since the stream (re)started,
    /// written or found equal to its pending tail (decision #34).
    pub insert_lsn: Lsn,
    /// The end of the WAL made durable (on a replica, possibly inside a record).
    pub flushed_lsn: Lsn,
    /// Why a replica stopped replaying, if it did.
    pub replay_error: Option<String>,
    /// The newest committed transaction.
    pub last_txid: TxId,
    /// Its commit time.
    pub last_commit_time_us: i64,
    /// The state digest at `visible_lsn`.
    pub digest: u64,
    /// The newest snapshot's Lsn.
    pub checkpoint_lsn: Lsn,
    /// Live rows in all tables.
    pub rows: u64,
    /// Tables.
    pub tables: usize,
    /// WAL fdatasyncs since open.
    pub wal_syncs: u64,
    /// Microseconds spent in them.
    pub wal_sync_us: u64,
    /// Commits (and restore points) acknowledged since open.
    pub commits: u64,
}

/// What recovery found when the database opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot_lsn: Option<Lsn>,
    /// Rows loaded from it.
    pub snapshot_rows: u64,
    /// Transactions replayed from the WAL.
    pub replayed_txns: u64,
    /// WAL bytes replayed.
    pub replayed_bytes: u64,
    /// Where the WAL ended.
    pub end_lsn: Lsn,
    /// Set when a torn tail (or an incomplete large transaction) was cut off: from where.
    pub truncated_at: Option<Lsn>,
    /// A replica: the WAL it holds past the Lsn its upstream confirmed, `(from, to)`, kept on
    /// disk unreplayed until the upstream sends it again (decision #34).
    pub pending_tail: Option<(Lsn, Lsn)>,
    /// Time spent loading the snapshot.
    pub snapshot_elapsed: Duration,
    /// Time spent reading and replaying the WAL.
    pub replay_elapsed: Duration,
    /// Time spent in all.
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Published {
    lsn: Lsn,
    prev_lsn: Lsn,
    txid: TxId,
    commit_time_us: i64,
    digest: u64,
}

/// Called with the visible Lsn after every publish, on the thread that published (the flusher,
/// or a replica's receiver confirming upstream durability), and on a replica also after a
/// flush that made nothing visible: it must not block.
pub type PublishHook = Arc<dyn Fn(Lsn) + Send + Sync>;

/// Called on a primary's committer with the end of the WAL it has just written to the page
/// cache, before that WAL is durable: it must not block.
pub type WrittenHook = Arc<dyn Fn(Lsn) + Send + Sync>;

struct Shared {
    /// A replica: it takes its WAL from an upstream.
    standby: bool,
    published: Mutex<Published>,
    flushed_lsn: AtomicU64,
    /// How far the upstream reported its WAL durable (a replica): nothing past it is made
    /// visible. `u64::MAX` on a primary, which has no upstream.
    upstream_durable: AtomicU64,
    publish_hooks: parking_lot::RwLock<Vec<PublishHook>>,
    written_hooks: parking_lot::RwLock<Vec<WrittenHook>>,
    holds: WalHolds,
    /// Set when a replica's committer stopped on bad WAL.
    replay_error: Mutex<Option<String>>,
    wal_syncs: AtomicU64,
    wal_sync_us: AtomicU64,
    commits: AtomicU64,
    insert_lsn: AtomicU64,
    checkpoint_lsn: AtomicU64,
}

impl Shared {
    /// Makes the newest held group that the upstream has reported durable visible, dropping
    /// it and the older ones from `held`. Returns the new visible Lsn, if it moved. Called
    /// with the flush queue locked, by whichever of the flusher and the upstream's report
    /// comes second, so a group is published once both have happened.
    fn publish_confirmed(&self, store: &Store, q: &mut FlushQueue) -> Option<Lsn> {
        let durable = self.upstream_durable.load(Ordering::Acquire);
        let mut newest = None;
        while q.held.front().is_some_and(|state| state.lsn.0 <= durable) {
            newest = q.held.pop_front();
        }
        newest.map(|state| {
            // Recorded before it shows, so a restart never shows less than a reader saw.
            if let Some(file) = &mut q.confirmed {
                file.record(state.lsn);
            }
            let mut published = self.published.lock();
            store.publish(state.lsn, state.commit_time_us);
            *published = state;
            state.lsn
        })
    }

    fn run_publish_hooks(&self, lsn: Lsn) {
        self.publish_hooks.read().iter().for_each(|hook| hook(lsn));
    }

    /// A read view at the published Lsn and the metadata of a snapshot of it (a checkpoint's
    /// or a base backup's).
    fn snapshot_point(
        &self,
        store: &Arc<Store>,
        system_id: u64,
        timeline: Timeline,
    ) -> (SnapshotMeta, ReadView) {
        // The flusher changes the published state and the visible Lsn together under this lock.
        let published = self.published.lock();
        let p = *published;
        let view = store.read_view();
        drop(published);
        assert_eq!(view.lsn(), p.lsn, "published state and visible Lsn agree");
        let meta = SnapshotMeta {
            system_id,
            timeline,
            lsn: p.lsn,
            prev_lsn: p.prev_lsn,
            last_txid: p.txid,
            last_commit_time_us: p.commit_time_us,
            digest: p.digest,
            next_table_id: store.next_table_id(),
        };
        (meta, view)
    }
}

/// An acknowledgement waiting for its group's fdatasync.
enum Ack {
    Commit(ReplyTx<Result<CommitInfo>>, CommitInfo, AfterCommit),
    Lsn(ReplyTx<Result<Lsn>>, Lsn),
}

impl Ack {
    fn fail(self, why: &str) {
        match self {
            Ack::Commit(reply, _, _) => reply.send(Err(Error::Poisoned(why.to_string()))),
            Ack::Lsn(reply, _) => reply.send(Err(Error::Poisoned(why.to_string()))),
        }
    }

    fn succeed(self) {
        match self {
            Ack::Commit(reply, info, AfterCommit::Returns) => reply.send(Ok(info)),
            Ack::Commit(reply, info, AfterCommit::Relayed(relay)) => {
                relay.relay(PendingCommit::new(info, reply))
            }
            Ack::Lsn(reply, lsn) => reply.send(Ok(lsn)),
        }
    }

    /// Whether the writer comes straight back after this acknowledgement (see [`AfterCommit`]).
    fn writer_returns(&self) -> bool {
        match self {
            Ack::Commit(_, _, after) => after.returns(),
            Ack::Lsn(..) => true,
        }
    }
}

/// One group of records written to the page cache, waiting for the flusher.
struct Group {
    /// The state after the group's last record.
    state: Published,
    /// The end of the WAL bytes written (past `state.lsn` on a replica mid-record).
    written: Lsn,
    acks: Vec<Ack>,
}

/// What the committer hands the flusher. The committer appends and writes group after group;
/// the flusher fdatasyncs whatever is written when it gets to it (so one fsync covers every
/// group that arrived during the previous one), publishes, and acknowledges.
///
/// Invariants:
/// - `groups` are in Lsn order; `file` is the segment holding the newest group's records
///   (older segments were fsynced by the committer when it switched away from them).
/// - Once `poisoned` is set it stays set and every waiting and later acknowledgement fails.
#[derive(Default)]
struct FlushQueue {
    groups: std::collections::VecDeque<Group>,
    /// A replica's flushed groups whose Lsn its upstream has not reported durable yet, oldest
    /// first: they become visible when it does ([`Database::confirm_upstream`]).
    held: std::collections::VecDeque<Published>,
    /// A replica's record of what it has shown, for crash recovery (see [`crate::confirmed`]).
    confirmed: Option<ConfirmedFile>,
    file: Option<Arc<File>>,
    flushed: Option<Lsn>,
    poisoned: Option<String>,
    stop: bool,
}

struct Flusher {
    queue: Mutex<FlushQueue>,
    wake: parking_lot::Condvar,
    /// Signalled after each publish, for the committer waiting on a checkpoint or shutdown.
    done: parking_lot::Condvar,
}

impl Flusher {
    fn run(&self, store: &Store, shared: &Shared, fsync: bool) {
        let queued = |q: &FlushQueue| q.groups.iter().map(|g| g.acks.len()).sum::<usize>();
        let mut last_acked = 0usize;
        loop {
            let (file, target) = {
                let mut q = self.queue.lock();
                while q.groups.is_empty() && !q.stop {
                    self.wake.wait(&mut q);
                }
                if q.groups.is_empty() && q.stop {
                    return;
                }
                if fsync && !q.stop && queued(&q) < last_acked {
                    let deadline = Instant::now() + COMMIT_DELAY;
                    while queued(&q) < last_acked && !q.stop {
                        if self.wake.wait_until(&mut q, deadline).timed_out() {
                            break;
                        }
                    }
                }
                let target = q.groups.back().expect("not empty").written;
                (q.file.clone().expect("a group comes with its file"), target)
            };
            let started = Instant::now();
            let synced = if fsync { file.sync_data() } else { Ok(()) };
            shared.wal_syncs.fetch_add(1, Ordering::Relaxed);
            shared.wal_sync_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let mut q = self.queue.lock();
            if let Err(e) = synced {
                let why = format!("fsync WAL: {e}");
                tracing::error!(error = %why, "WAL fsync failed; refusing further writes until restart");
                q.poisoned.get_or_insert(why.clone());
                for g in q.groups.drain(..) {
                    g.acks.into_iter().for_each(|a| a.fail(&why));
                }
                self.done.notify_all();
                continue;
            }
            let mut acks = Vec::new();
            while q.groups.front().is_some_and(|g| g.written <= target) {
                let g = q.groups.pop_front().expect("front exists");
                if q.held.len() == HELD_GROUPS_MAX {
                    // A newer state shows everything an older one would: only later.
                    q.held.pop_front();
                }
                q.held.push_back(g.state);
                acks.extend(g.acks);
            }
            shared.flushed_lsn.fetch_max(target.0, Ordering::AcqRel);
            q.flushed = Some(target);
            let published_lsn = shared.publish_confirmed(store, &mut q);
            let sync = q.confirmed.as_mut().and_then(ConfirmedFile::due_sync);
            drop(q);
            self.done.notify_all();
            last_acked = acks.iter().filter(|a| a.writer_returns()).count();
            shared.commits.fetch_add(acks.len() as u64, Ordering::Relaxed);
            // The hooks may write to sockets (a primary sends the new WAL to its standbys from
            // here). A group with commits waiting for standbys runs them first, since that send
            // starts those commits' round trip; any other group is acknowledged first, so a
            // local commit does not wait for the send.
            // A replica reports a new flushed Lsn upstream even when nothing became visible
            // (its upstream has not confirmed it yet): `remote_flush` commits wait for it.
            let hook_lsn = published_lsn.or_else(|| shared.standby.then(|| shared.published.lock().lsn));
            let run_hooks = || {
                if let Some(lsn) = hook_lsn {
                    shared.run_publish_hooks(lsn);
                }
            };
            let waits_for_standbys = last_acked < acks.len();
            if waits_for_standbys {
                run_hooks();
            }
            acks.into_iter().for_each(Ack::succeed);
            if !waits_for_standbys {
                run_hooks();
            }
            if let Some(sync) = sync {
                sync.sync_in_background();
            }
        }
    }
}

enum Request {
    Commit(WriteSet, AfterCommit, ReplyTx<Result<CommitInfo>>),
    /// A replica's input: WAL bytes at their Lsn.
    Wal(Lsn, Vec<u8>),
    /// A replica connects to its upstream: where should the stream start?
    Resume(ReplyTx<Result<Lsn>>),
    RestorePoint(String, ReplyTx<Result<Lsn>>),
    Checkpoint(ReplyTx<Result<Lsn>>),
    CheckpointDone(Result<SnapshotWritten>),
    Shutdown,
}

/// An open database.
pub struct Database {
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// The committer's input: requests, and a replica's WAL slices.
    inbox: Arc<Inbox<Request>>,
    /// The committer's flusher: a replica's upstream reports publish the groups it holds.
    flusher: Arc<Flusher>,
    standby: bool,
    committer: Mutex<Option<JoinHandle<()>>>,
    system_id: u64,
    timeline: Timeline,
    segment_size_bytes: u64,
    dir: PathBuf,
    recovery: RecoveryReport,
    _lock: File,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open lock file {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Mismatch(format!(
            "data directory {} is in use by another hindsight process (lock file {} is held)",
            dir.display(),
            path.display()
        )));
    }
    Ok(file)
}

impl Database {
    /// Opens the data directory `dir`, initialising it when it is empty or missing, and runs
    /// crash recovery: newest snapshot + WAL replay, torn tail cut with a warning.
    pub fn open(dir: &Path, config: Config) -> Result<Arc<Database>> {
        Database::open_mode(dir, config, false, None)
    }

    /// Opens an initialised data directory as a replica (a standby): crash recovery as for a
    /// primary, then the committer takes WAL bytes from [`Database::apply_wal`] instead of
    /// write sets, writes them to its own segments at the same Lsns, and replays them. Writes
    /// are refused with `read_only`. The directory must exist with a control file (made by
    /// [`crate::backup::install_base_backup`]).
    pub fn open_standby(dir: &Path, config: Config) -> Result<Arc<Database>> {
        Database::open_standby_with(dir, config, None)
    }

    /// [`Database::open_standby`] for a directory just made from a base backup whose snapshot
    /// was loaded as it arrived: `loaded` must be the snapshot the control file names.
    pub fn open_standby_loaded(dir: &Path, config: Config, loaded: LoadedSnapshot) -> Result<Arc<Database>> {
        Database::open_standby_with(dir, config, Some(loaded))
    }

    fn open_standby_with(
        dir: &Path,
        config: Config,
        loaded: Option<LoadedSnapshot>,
    ) -> Result<Arc<Database>> {
        if !dir.join("control").exists() {
            return Err(Error::Mismatch(format!(
                "{} has no control file: a replica's data directory is made from a base backup",
                dir.display()
            )));
        }
        Database::open_mode(dir, config, true, loaded)
    }

    fn open_mode(
        dir: &Path,
        config: Config,
        standby: bool,
        loaded: Option<LoadedSnapshot>,
    ) -> Result<Arc<Database>> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create data directory {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let control_path = dir.join("control");
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snapshots");
        if !control_path.exists() {
            init_dir(dir, &config)?;
        }
        let control = Control::read(&control_path)?;
        if !valid_segment_size(control.segment_size_bytes) {
            return Err(Error::Corrupt {
                lsn: Lsn::ZERO,
                file: control_path,
                detail: format!("segment size {} is invalid", control.segment_size_bytes),
            });
        }
        let seg = control.segment_size_bytes;
        let (store, loaded_meta) = match loaded {
            None => (Arc::new(Store::new(control.checkpoint_lsn)), None),
            Some(l)
                if control.snapshot.as_deref() == Some(snapshot_file_name(l.meta.lsn).as_str())
                    && l.meta.system_id == control.system_id =>
            {
                (l.store, Some(l.meta))
            }
            Some(l) => {
                return Err(Error::Mismatch(format!(
                    "the snapshot loaded ahead ({} of system {:016X}) is not the one {} names",
                    snapshot_file_name(l.meta.lsn),
                    l.meta.system_id,
                    control_path.display()
                )))
            }
        };
        store.set_retention_us(config.version_retention.as_micros() as u64);
        let mut report = RecoveryReport::default();
        let (mut last_txid, mut last_time) = (TxId::ZERO, 0i64);
        if let Some(name) = &control.snapshot {
            let meta = match loaded_meta {
                Some(meta) => meta,
                None => load_snapshot(&snap_dir.join(name), &store, control.system_id)?,
            };
            if meta.lsn != control.checkpoint_lsn {
                return Err(Error::Corrupt {
                    lsn: meta.lsn,
                    file: snap_dir.join(name),
                    detail: format!(
                        "snapshot is at {}, the control file says {}",
                        meta.lsn, control.checkpoint_lsn
                    ),
                });
            }
            last_txid = meta.last_txid;
            last_time = meta.last_commit_time_us;
            report.snapshot_lsn = Some(meta.lsn);
            report.snapshot_rows = store.stats().rows;
        }
        // The retention window starts at the snapshot: replay restores every version after it,
        // so reads at any Lsn from there on are served (the first sample marks that floor).
        store.publish(control.checkpoint_lsn, last_time);
        report.snapshot_elapsed = started.elapsed();
        let replay_started = Instant::now();
        crate::wal::writer::remove_prepared_segments(&wal_dir)?;
        let replayer = Replayer::new(Arc::clone(&store), last_txid, last_time, control.checkpoint_lsn);
        let start = control.checkpoint_lsn;
        let wal = WalDir {
            path: &wal_dir,
            system_id: control.system_id,
            timeline: control.timeline,
            segment_size_bytes: seg,
        };
        // A replica shows only what its upstream confirmed durable: replay stops there, and the
        // WAL after it stays as a pending tail, compared with what the upstream sends again
        // (decision #34). A primary replays everything.
        let recorded = if standby { Some(ConfirmedFile::read(dir)?) } else { None };
        let stop = match recorded {
            None | Some(Recorded::Nothing) => None,
            Some(Recorded::Unreadable) => Some(control.checkpoint_lsn),
            Some(Recorded::At(lsn)) => Some(lsn.max(control.checkpoint_lsn)),
        };
        let (end, replayer, replayed, stopped) =
            replay_wal(wal, start, Some(control.checkpoint_prev_lsn), replayer, stop)?;
        report.replay_elapsed = replay_started.elapsed();
        let (complete_end, complete_prev) = replayer.complete_end();
        let prev = complete_prev.unwrap_or(control.checkpoint_prev_lsn);
        if let Some((lsn, file, detail)) = &end.torn {
            tracing::warn!(lsn = %lsn, file = %file.display(), detail, "torn WAL tail truncated");
        }
        // Cut the WAL after a torn tail, or after the chunks of a large transaction whose commit
        // never made it. Otherwise the WAL ends where the scan ended (which may be past the
        // padding of a segment that was just switched away from). A replica's pending tail is
        // kept whole, open transaction included: only a torn end is cut from it.
        let truncate = stopped.is_none() && (end.torn.is_some() || replayer.in_transaction());
        let wal_end = match stopped {
            Some(_) => end.end_lsn,
            None if truncate => complete_end,
            None => end.end_lsn,
        };
        if stopped.is_some() && end.torn.is_some() {
            truncate_wal(&wal_dir, control.timeline, seg, wal_end)?;
            report.truncated_at = Some(wal_end);
        }
        if let Some(at) = stopped {
            tracing::info!(
                confirmed = %at.end, end = %wal_end,
                "replayed up to the Lsn the upstream confirmed; the WAL after it waits to be compared with what the upstream sends again"
            );
            report.pending_tail = Some((at.end, wal_end));
        }
        if truncate {
            if replayer.in_transaction() {
                tracing::warn!(
                    from = %complete_end, to = %end.end_lsn,
                    "WAL ends inside a large transaction that never committed; cutting it off"
                );
            }
            truncate_wal(&wal_dir, control.timeline, seg, complete_end)?;
            report.truncated_at = Some(complete_end);
        }
        report.replayed_txns = replayed;
        report.replayed_bytes = stopped.map_or(wal_end, |at| at.end).bytes_since(start);
        report.end_lsn = wal_end;
        // Segments past the end belonging to this timeline were removed by truncate_wal; make
        // sure the writer's segment exists (a fresh directory has segment 0 from init).
        let writer =
            WalWriter::open(&wal_dir, control.system_id, control.timeline, seg, wal_end, prev, config.fsync)?;
        let txid = replayer.last_txid();
        let time = replayer.last_commit_time_us();
        let (visible, visible_prev) = match stopped {
            Some(_) => (complete_end, prev),
            None => (wal_end, prev),
        };
        store.publish(visible, time);
        let oldest_lsn = list_segments(&wal_dir)?
            .iter()
            .filter(|(tl, _, _)| *tl == control.timeline)
            .map(|(_, no, _)| Lsn(no * seg))
            .min()
            .unwrap_or(wal_end);
        // Where a replica's input continues: the end of what it replayed.
        let (received, received_prev) = match stopped {
            Some(at) => (at.end, at.prev),
            None => (writer.insert_lsn(), prev),
        };
        if config.fsync {
            // After a kill -9 the WAL's end may sit in the page cache only. A primary reports
            // what it replayed as durable to its standbys, and a replica counts a matched tail
            // as flushed: make it durable first.
            sync_wal_range(&wal_dir, control.timeline, seg, start, writer.insert_lsn())?;
        }
        let standby_state = standby.then(|| Standby {
            decoder: Decoder::new(received, Some(received_prev), seg, control.system_id),
            received,
            decoded: received,
            tail: stopped.map(|_| Tail {
                end: writer.insert_lsn(),
                shown: Published {
                    lsn: visible,
                    prev_lsn: visible_prev,
                    txid,
                    commit_time_us: time,
                    digest: store.digest(),
                },
            }),
        });
        let shared = Arc::new(Shared {
            standby,
            published: Mutex::new(Published {
                lsn: visible,
                prev_lsn: visible_prev,
                txid,
                commit_time_us: time,
                digest: store.digest(),
            }),
            insert_lsn: AtomicU64::new(received.0),
            flushed_lsn: AtomicU64::new(received.0),
            // A replica's WAL from before decision #34 (no `confirmed` file) was all durable
            // upstream when it arrived.
            upstream_durable: AtomicU64::new(match (standby, stop) {
                (false, _) => u64::MAX,
                (true, Some(lsn)) => lsn.0,
                (true, None) => received.0,
            }),
            publish_hooks: parking_lot::RwLock::new(Vec::new()),
            written_hooks: parking_lot::RwLock::new(Vec::new()),
            holds: WalHolds::new(oldest_lsn, config.max_slot_wal_keep_bytes),
            replay_error: Mutex::new(None),
            wal_syncs: AtomicU64::new(0),
            wal_sync_us: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            checkpoint_lsn: AtomicU64::new(control.checkpoint_lsn.0),
        });
        report.elapsed = started.elapsed();
        tracing::info!(
            dir = %dir.display(), lsn = %wal_end, txid = %txid, replayed_txns = replayed,
            elapsed_ms = report.elapsed.as_millis() as u64, "database open"
        );
        let confirmed = match recorded {
            Some(recorded) => Some(ConfirmedFile::open(dir, recorded, visible, config.fsync)?),
            None => None,
        };
        let inbox = Arc::new(Inbox::new(COMMIT_QUEUE_MAX, WAL_QUEUE_MAX));
        let flusher = Arc::new(Flusher {
            queue: Mutex::new(FlushQueue { confirmed, ..FlushQueue::default() }),
            wake: parking_lot::Condvar::new(),
            done: parking_lot::Condvar::new(),
        });
        let enqueued_written = received;
        let committer = Committer {
            standby: standby_state,
            enqueued_written,
            store: Arc::clone(&store),
            replayer,
            writer,
            shared: Arc::clone(&shared),
            dir: dir.to_path_buf(),
            control: control.clone(),
            inbox: Arc::clone(&inbox),
            config,
            body: Vec::new(),
            poisoned: None,
            checkpoint_running: false,
            checkpoint_waiters: Vec::new(),
            last_checkpoint: Instant::now(),
            wal_at_checkpoint: wal_end,
            flusher: Arc::clone(&flusher),
            flusher_thread: None,
            snapshot_thread: None,
            enqueued: visible,
        };
        let handle = std::thread::Builder::new()
            .name("hindsight-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| Error::io("start the committer thread", e))?;
        Ok(Arc::new(Database {
            store,
            shared,
            inbox,
            flusher,
            standby,
            committer: Mutex::new(Some(handle)),
            system_id: control.system_id,
            timeline: control.timeline,
            segment_size_bytes: seg,
            dir: dir.to_path_buf(),
            recovery: report,
            _lock: lock,
        }))
    }

    /// What crash recovery did when this database opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The WAL directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// The cluster's system id.
    pub fn system_id(&self) -> u64 {
        self.system_id
    }

    /// The WAL segment size.
    pub fn segment_size_bytes(&self) -> u64 {
        self.segment_size_bytes
    }

    /// The store (read side and statistics).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A consistent read view at the newest visible Lsn.
    pub fn read_view(&self) -> ReadView {
        self.store.read_view()
    }

    /// A read view at an older Lsn, if still retained.
    pub fn read_view_at(&self, lsn: Lsn) -> Option<ReadView> {
        self.store.read_view_at(lsn)
    }

    fn request<T>(&self, make: impl FnOnce(ReplyTx<Result<T>>) -> Request) -> Result<T> {
        self.request_on(Lane::Requests, make)
    }

    fn request_on<T>(&self, lane: Lane, make: impl FnOnce(ReplyTx<Result<T>>) -> Request) -> Result<T> {
        let (reply_tx, reply_rx) = reply_slot();
        self.inbox.send(lane, make(reply_tx)).map_err(|_| Error::Shutdown)?;
        reply_rx.recv().ok_or(Error::Shutdown)?
    }

    /// Commits a write set: conflict check, WAL append, group-commit fsync, apply, publish.
    /// A write–write conflict fails with `serialization_failure` and changes nothing. An empty
    /// write set logs nothing and reports the newest committed transaction.
    pub fn commit(&self, ws: WriteSet) -> Result<CommitInfo> {
        self.commit_then(ws, AfterCommit::Returns)
    }

    /// [`commit`](Database::commit), saying what the writer does once acknowledged, so the
    /// group commit does not hold an fdatasync for a writer that will not be back soon.
    pub fn commit_then(&self, ws: WriteSet, after: AfterCommit) -> Result<CommitInfo> {
        if self.standby && !ws.is_empty() {
            return Err(Error::Sql(crate::sql::read_only_error("COMMIT")));
        }
        if ws.is_empty() {
            let p = *self.shared.published.lock();
            return Ok(CommitInfo { txid: p.txid, lsn: p.lsn, commit_time_us: p.commit_time_us });
        }
        self.request(|reply| Request::Commit(ws, after, reply))
    }

    /// A table id for CREATE TABLE or TRUNCATE.
    pub fn allocate_table_id(&self) -> TableId {
        self.store.allocate_table_id()
    }

    /// Takes a snapshot now and waits for it; returns its Lsn.
    pub fn checkpoint(&self) -> Result<Lsn> {
        self.request(Request::Checkpoint)
    }

    /// Logs a named restore point; returns its Lsn (the end of its record).
    pub fn create_restore_point(&self, name: &str) -> Result<Lsn> {
        if name.is_empty() || name.len() > RESTORE_POINT_NAME_MAX {
            return Err(Error::Sql(SqlError::new(
                ErrorCode::InvalidParameterValue,
                format!("restore point name must be 1 to {RESTORE_POINT_NAME_MAX} bytes"),
            )));
        }
        if self.standby {
            return Err(Error::Sql(crate::sql::read_only_error("CREATE RESTORE POINT")));
        }
        self.request(|reply| Request::RestorePoint(name.to_string(), reply))
    }

    /// Whether the database refuses writes (a replica).
    pub fn is_read_only(&self) -> bool {
        self.standby
    }

    /// A replica's input: the WAL bytes starting at `start`, which must be where the previous
    /// slice ended (at first, [`Status::insert_lsn`]). Queued for the committer, which writes,
    /// flushes, replays and publishes them; blocks while [`WAL_QUEUE_MAX`] slices wait. Fails
    /// once replay has stopped on bad WAL (the reason is in [`Status::replay_error`]).
    pub fn apply_wal(&self, start: Lsn, bytes: Vec<u8>) -> Result<()> {
        self.check_replaying()?;
        self.inbox.send(Lane::Wal, Request::Wal(start, bytes)).map_err(|_| Error::Shutdown)
    }

    /// A replica connecting to its upstream: where its stream should start. Usually where its
    /// input ended; but when it holds WAL past what its upstream confirmed durable, the
    /// confirmed Lsn, since the upstream may have lost the rest in a crash: the WAL from there
    /// is compared with what the upstream sends again, and nothing past the match is reported
    /// written or flushed (decision #34). Waits for the committer.
    pub fn resume_stream(&self) -> Result<Lsn> {
        self.check_replaying()?;
        // Behind the WAL slices already queued, so it answers after they are taken.
        self.request_on(Lane::Wal, Request::Resume)
    }

    /// Refuses WAL input on a primary (a bug) and once replay has stopped on bad WAL.
    fn check_replaying(&self) -> Result<()> {
        assert!(self.standby, "WAL input on a primary");
        match self.shared.replay_error.lock().clone() {
            Some(why) => Err(Error::Poisoned(why)),
            None => Ok(()),
        }
    }

    /// [`apply_wal`](Database::apply_wal) without blocking: `Ok(Some(bytes))` gives the slice
    /// back when [`WAL_QUEUE_MAX`] slices already wait, for the caller to send with
    /// `apply_wal` where it may block. An async receiver calls this first, so its worker
    /// thread is handed over (`block_in_place`) only under back-pressure, not once per slice.
    pub fn try_apply_wal(&self, start: Lsn, bytes: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.check_replaying()?;
        match self.inbox.try_send(Lane::Wal, Request::Wal(start, bytes)) {
            Ok(()) => Ok(None),
            Err(SendError::Full(Request::Wal(_, bytes))) => Ok(Some(bytes)),
            Err(SendError::Full(_)) => unreachable!("a full lane gives back what was sent"),
            Err(SendError::Closed(_)) => Err(Error::Shutdown),
        }
    }

    /// Adds a function called after every publish with the new visible Lsn, after those added
    /// before it (a primary pushes new WAL to its standbys from it, lag is timed from it, a replica reports upstream from
    /// it).
    pub fn add_publish_hook(&self, hook: PublishHook) {
        self.shared.publish_hooks.write().push(hook);
    }

    /// Adds a function the committer of a primary calls after writing a group that has commits
    /// waiting for standbys, with the end of the WAL written (not yet durable): a primary
    /// starts sending it to its standbys there, so their fdatasync runs alongside its own
    /// (decision #34).
    pub fn add_written_hook(&self, hook: WrittenHook) {
        self.shared.written_hooks.write().push(hook);
    }

    /// A replica: the upstream reported its WAL durable up to `lsn`. Flushed WAL up to there
    /// becomes visible (and the publish hooks run on this thread); WAL past it stays
    /// invisible, since the upstream could still lose it in a crash.
    pub fn confirm_upstream(&self, lsn: Lsn) {
        assert!(self.standby, "a primary has no upstream");
        let before = self.shared.upstream_durable.fetch_max(lsn.0, Ordering::AcqRel);
        if before >= lsn.0 {
            return;
        }
        let mut q = self.flusher.queue.lock();
        let published = self.shared.publish_confirmed(&self.store, &mut q);
        let sync = q.confirmed.as_mut().and_then(ConfirmedFile::due_sync);
        drop(q);
        if let Some(lsn) = published {
            self.flusher.done.notify_all();
            self.shared.run_publish_hooks(lsn);
        }
        if let Some(sync) = sync {
            sync.sync_in_background();
        }
    }

    /// Keeps the WAL from `lsn` on until the hold is moved or released (see [`WalHolds`]);
    /// `capped` holds are invalidated past `max_slot_wal_keep_bytes`.
    pub fn hold_wal(&self, name: &str, lsn: Lsn, capped: bool) -> std::result::Result<(), HoldError> {
        self.shared.holds.hold(name, lsn, capped)
    }

    /// Releases a WAL hold.
    pub fn release_wal(&self, name: &str) {
        self.shared.holds.release(name)
    }

    /// One WAL hold.
    pub fn wal_hold(&self, name: &str) -> Option<WalHold> {
        self.shared.holds.get(name)
    }

    /// Every WAL hold.
    pub fn wal_holds(&self) -> Vec<WalHold> {
        self.shared.holds.list()
    }

    /// The start of the oldest WAL segment on disk.
    pub fn oldest_wal_lsn(&self) -> Lsn {
        self.shared.holds.oldest_lsn()
    }

    /// The end of the WAL that no crash can take back: on a primary, what it has made durable
    /// and visible; on a replica, what it has flushed and its upstream reported durable. A WAL
    /// sender reports it to its standbys, which show nothing past it.
    pub fn durable_lsn(&self) -> Lsn {
        if self.standby {
            let own = self.shared.flushed_lsn.load(Ordering::Acquire);
            Lsn(own.min(self.shared.upstream_durable.load(Ordering::Acquire)))
        } else {
            self.shared.published.lock().lsn
        }
    }

    /// The end of the WAL a WAL sender may send: on a primary, everything written, durable
    /// or not (its standbys hold what is not durable invisible until [`durable_lsn`] passes
    /// it); on a replica, only [`durable_lsn`], so a cascade never sends early.
    ///
    /// [`durable_lsn`]: Database::durable_lsn
    pub fn sendable_lsn(&self) -> Lsn {
        if self.standby {
            self.durable_lsn()
        } else {
            let written = Lsn(self.shared.insert_lsn.load(Ordering::Acquire));
            written.max(self.durable_lsn())
        }
    }

    /// A read view at the visible Lsn and the snapshot metadata describing exactly that state.
    pub(crate) fn snapshot_point(&self) -> (SnapshotMeta, ReadView) {
        self.shared.snapshot_point(&self.store, self.system_id, self.timeline)
    }

    /// The current timeline.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let p = *self.shared.published.lock();
        let stats = self.store.stats();
        Status {
            role: if self.standby { "replica" } else { "primary" },
            flushed_lsn: if self.standby {
                Lsn(self.shared.flushed_lsn.load(Ordering::Acquire))
            } else {
                p.lsn
            },
            replay_error: self.shared.replay_error.lock().clone(),
            system_id: self.system_id,
            timeline: self.timeline,
            visible_lsn: p.lsn,
            insert_lsn: Lsn(self.shared.insert_lsn.load(Ordering::Acquire)),
            last_txid: p.txid,
            last_commit_time_us: p.commit_time_us,
            digest: p.digest,
            checkpoint_lsn: Lsn(self.shared.checkpoint_lsn.load(Ordering::Acquire)),
            rows: stats.rows,
            tables: stats.tables,
            wal_syncs: self.shared.wal_syncs.load(Ordering::Relaxed),
            wal_sync_us: self.shared.wal_sync_us.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
        }
    }

    /// The Lsn ladder a replica reports upstream, `(written, flushed, replayed)`: its insert,
    /// flushed and visible Lsns, read from atomics and one short lock (cheaper than
    /// [`status`](Database::status), which also counts rows; a replica reports after every
    /// publish).
    pub fn lsn_ladder(&self) -> (Lsn, Lsn, Lsn) {
        let visible = self.shared.published.lock().lsn;
        let flushed = Lsn(self.shared.flushed_lsn.load(Ordering::Acquire));
        let insert = Lsn(self.shared.insert_lsn.load(Ordering::Acquire));
        (insert, flushed, visible)
    }

    /// Stops the committer after it finishes what is queued; every acknowledged commit is
    /// durable already. Later calls fail with `Shutdown`. Idempotent.
    pub fn shutdown(&self) {
        let handle = self.committer.lock().take();
        if let Some(handle) = handle {
            let _ = self.inbox.send(Lane::Requests, Request::Shutdown);
            let _ = handle.join();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Decoded records handed from the WAL reader to the replaying thread at a time.
const REPLAY_BATCH_RECORDS: usize = 1024;
/// Batches in flight between them.
const REPLAY_QUEUE_BATCHES: usize = 16;

/// Where crash recovery's replay stopped short of the WAL's end (see [`replay_wal`]).
#[derive(Clone, Copy, Debug)]
struct StoppedAt {
    /// The end of the last record replayed: the pending tail starts here.
    end: Lsn,
    /// The start of that record.
    prev: Lsn,
}

/// Crash recovery's WAL pass: one thread reads and decodes segments while another applies the
/// records, so decoding (CRC, parsing) overlaps applying (index probes, digest). A replica
/// passes `stop`, its confirmed Lsn: records ending past it are read (the scan still finds the
/// WAL's end) but not replayed. Returns where the WAL ends, the replayer, the number of commits
/// replayed, and where replay stopped if it skipped any record.
fn replay_wal(
    wal: WalDir<'_>,
    start: Lsn,
    prev_lsn: Option<Lsn>,
    mut replayer: Replayer,
    stop: Option<Lsn>,
) -> Result<(crate::wal::reader::WalEnd, Replayer, u64, Option<StoppedAt>)> {
    let (tx, rx) = bounded::<Vec<crate::wal::WalEntry>>(REPLAY_QUEUE_BATCHES);
    std::thread::scope(|scope| {
        let applier = scope.spawn(move || -> Result<(Replayer, u64, Option<StoppedAt>)> {
            let mut replayed = 0u64;
            let mut last = StoppedAt { end: start, prev: prev_lsn.unwrap_or(Lsn::ZERO) };
            let mut stopped = false;
            for batch in rx {
                for entry in batch {
                    if stopped || stop.is_some_and(|stop| entry.end_lsn > stop) {
                        stopped = true;
                        continue;
                    }
                    last = StoppedAt { end: entry.end_lsn, prev: entry.lsn };
                    let lsn = entry.lsn;
                    let is_commit = matches!(entry.record, Record::Commit(_));
                    replayer.apply(entry).map_err(|e| match e {
                        Error::Corrupt { detail, .. } => Error::Corrupt {
                            lsn,
                            file: wal.path.join(segment_file_name(
                                wal.timeline,
                                segment_of(lsn, wal.segment_size_bytes),
                            )),
                            detail,
                        },
                        other => other,
                    })?;
                    replayed += u64::from(is_commit);
                }
            }
            Ok((replayer, replayed, stopped.then_some(last)))
        });
        let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS);
        let scanned = scan_wal(wal, start, prev_lsn, TailPolicy::TruncateTornTail, |entry| {
            batch.push(entry);
            if batch.len() == REPLAY_BATCH_RECORDS {
                // A send fails only when the applier stopped on an error; it reports that.
                tx.send(std::mem::replace(&mut batch, Vec::with_capacity(REPLAY_BATCH_RECORDS)))
                    .map_err(|_| Error::Shutdown)?;
            }
            Ok(())
        });
        if scanned.is_ok() && !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let applied = applier.join().expect("the replay thread does not panic");
        match (scanned, applied) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(end), Ok((replayer, replayed, stopped))) => Ok((end, replayer, replayed, stopped)),
        }
    })
}

fn init_dir(dir: &Path, config: &Config) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("list data directory {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "lock")
        .count();
    if entries > 0 {
        return Err(Error::Mismatch(format!(
            "{} is not empty and has no control file: not a hindsight data directory (refusing to initialise over it)",
            dir.display()
        )));
    }
    if !valid_segment_size(config.segment_size_bytes) {
        return Err(Error::Mismatch(format!(
            "segment size {} must be a power of two between 1 MiB and 1 GiB",
            config.segment_size_bytes
        )));
    }
    let mut system_id = rand::random::<u64>();
    while system_id == 0 {
        system_id = rand::random::<u64>();
    }
    let wal_dir = dir.join("wal");
    for d in [&wal_dir, &dir.join("snapshots")] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    create_segment(&wal_dir, system_id, Timeline::FIRST, config.segment_size_bytes, 0)?;
    sync_dir(dir)?;
    let control = Control {
        system_id,
        timeline: Timeline::FIRST,
        segment_size_bytes: config.segment_size_bytes,
        checkpoint_lsn: first_record_lsn(0, config.segment_size_bytes),
        checkpoint_prev_lsn: Lsn::ZERO,
        snapshot: None,
        initialized_time_us: now_us(),
    };
    control.write(&dir.join("control"))?;
    tracing::info!(dir = %dir.display(), system_id = format!("{system_id:016X}"), "initialised data directory");
    Ok(())
}

/// The committer: owns the WAL writer and every store mutation. On a replica it takes WAL
/// bytes instead of write sets: it writes them at their Lsns, replays every complete record and
/// hands the result to the flusher, which makes it durable and then visible.
struct Committer {
    standby: Option<Standby>,
    /// The end of the WAL bytes handed to the flusher.
    enqueued_written: Lsn,
    store: Arc<Store>,
    replayer: Replayer,
    writer: WalWriter,
    shared: Arc<Shared>,
    dir: PathBuf,
    control: Control,
    /// Requests and WAL slices; closed when the committer stops.
    inbox: Arc<Inbox<Request>>,
    config: Config,
    body: Vec<u8>,
    poisoned: Option<String>,
    checkpoint_running: bool,
    checkpoint_waiters: Vec<ReplyTx<Result<Lsn>>>,
    last_checkpoint: Instant,
    wal_at_checkpoint: Lsn,
    flusher: Arc<Flusher>,
    flusher_thread: Option<JoinHandle<()>>,
    /// The background snapshot writer, joined at shutdown so no thread outlives the lock.
    snapshot_thread: Option<JoinHandle<()>>,
    /// The end of the last group handed to the flusher.
    enqueued: Lsn,
}

impl Drop for Committer {
    /// However the committer ends (shutdown, or a panic unwinding), later requests fail with
    /// `Shutdown` instead of waiting for an answer that cannot come.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

fn conflict(message: String) -> Error {
    Error::Sql(SqlError::new(ErrorCode::SerializationFailure, message).with_hint("retry the transaction"))
}

impl Committer {
    fn run(mut self) {
        let flusher = Arc::clone(&self.flusher);
        let (store, shared, fsync) =
            (Arc::clone(&self.store), Arc::clone(&self.shared), self.writer.fsync_enabled());
        let spawned = std::thread::Builder::new()
            .name("hindsight-flusher".into())
            .spawn(move || flusher.run(&store, &shared, fsync));
        match spawned {
            Ok(h) => self.flusher_thread = Some(h),
            Err(e) => {
                self.poison(&Error::io("start the WAL flusher thread", e));
            }
        }
        let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
        loop {
            let mut wait = self.config.checkpoint_interval.saturating_sub(self.last_checkpoint.elapsed());
            if self.standby.is_some() {
                // An idle replica still makes its confirmed Lsn durable within about a second.
                wait = wait.min(CONFIRMED_SYNC_INTERVAL);
            }
            let deadline = Instant::now() + wait.max(Duration::from_millis(10));
            match self.inbox.recv_batch(&mut batch, GROUP_COMMIT_MAX, deadline) {
                Ok(()) => {}
                Err(RecvError::Timeout) => {
                    let sync = self.flusher.queue.lock().confirmed.as_mut().and_then(ConfirmedFile::due_sync);
                    if let Some(sync) = sync {
                        sync.sync();
                    }
                    self.maybe_checkpoint(false);
                    continue;
                }
                Err(RecvError::Closed) => return,
            }
            let stop = self.process(&mut batch);
            if stop {
                let _ = self.wait_flushed();
                self.flusher.queue.lock().stop = true;
                self.flusher.wake.notify_all();
                if let Some(h) = self.flusher_thread.take() {
                    let _ = h.join();
                }
                self.sync_confirmed();
                if let Some(h) = self.snapshot_thread.take() {
                    let _ = h.join();
                }
                for w in self.checkpoint_waiters.drain(..) {
                    w.send(Err(Error::Shutdown));
                }
                return;
            }
        }
    }

    /// Handles one group of requests; returns true on shutdown.
    fn process(&mut self, batch: &mut Vec<Request>) -> bool {
        let mut acks = Vec::new();
        let mut want_checkpoint = false;
        let mut stop = false;
        for req in batch.drain(..) {
            match req {
                Request::Commit(ws, after, reply) => match self.commit(ws) {
                    Ok(info) => acks.push(Ack::Commit(reply, info, after)),
                    Err(e) => {
                        reply.send(Err(e));
                    }
                },
                Request::RestorePoint(name, reply) => {
                    match self.append_simple(&Record::RestorePoint { name, time_us: now_us() }) {
                        Ok(end) => acks.push(Ack::Lsn(reply, end)),
                        Err(e) => {
                            reply.send(Err(e));
                        }
                    }
                }
                Request::Checkpoint(reply) => {
                    self.checkpoint_waiters.push(reply);
                    want_checkpoint = true;
                }
                Request::CheckpointDone(result) => self.finish_checkpoint(result),
                Request::Wal(lsn, bytes) => {
                    if let Err(e) = self.ingest(lsn, &bytes) {
                        tracing::error!(error = %e, lsn = %lsn, "replay stopped");
                        self.shared.replay_error.lock().get_or_insert_with(|| e.to_string());
                        self.poison(&e);
                    }
                    // A group per slice: the upstream reports durability at the ends of the
                    // slices it sends, and a group becomes visible only whole, so a group
                    // spanning two slices would wait for the later one's report.
                    self.hand_to_flusher(Vec::new());
                }
                Request::Resume(reply) => {
                    self.hand_to_flusher(Vec::new());
                    reply.send(self.resume());
                }
                Request::Shutdown => stop = true,
            }
        }
        self.hand_to_flusher(acks);
        if !stop {
            self.maybe_checkpoint(want_checkpoint);
        }
        stop
    }

    /// Writes what was appended to the page cache and queues it, with its acknowledgements,
    /// for the flusher's next fdatasync. Does not wait.
    fn hand_to_flusher(&mut self, acks: Vec<Ack>) {
        // A replica's group ends where its input does, which is behind its writer while a
        // pending tail is matched; while a replayed tail is matched it shows nothing new.
        let (written, shown) = match &self.standby {
            Some(s) => (s.received, s.tail.filter(|_| s.received < s.decoded).map(|t| t.shown)),
            None => (self.writer.insert_lsn(), None),
        };
        if acks.is_empty() && written == self.enqueued_written {
            return;
        }
        if let Err(e) = self.check_poisoned().and_then(|()| self.writer.write_out()) {
            self.poison(&e);
            let why = e.to_string();
            acks.into_iter().for_each(|a| a.fail(&why));
            return;
        }
        let (lsn, prev_lsn) = if self.standby.is_some() {
            let (end, prev) = self.replayer.complete_end();
            (end, prev.unwrap_or(self.shared.published.lock().prev_lsn))
        } else {
            (self.writer.insert_lsn(), self.writer.prev_lsn())
        };
        let state = shown.unwrap_or_else(|| Published {
            lsn,
            prev_lsn,
            txid: self.replayer.last_txid(),
            commit_time_us: self.replayer.last_commit_time_us(),
            digest: self.store.digest(),
        });
        self.enqueued = state.lsn;
        self.enqueued_written = written;
        self.shared.insert_lsn.store(written.0, Ordering::Release);
        let mut q = self.flusher.queue.lock();
        if let Some(why) = q.poisoned.clone() {
            drop(q);
            acks.into_iter().for_each(|a| a.fail(&why));
            return;
        }
        q.file = Some(self.writer.file());
        // Only a group with commits that wait for standbys is sent before it is durable: that
        // starts their round trip. Any other group goes out after its publish, as before
        // (decision #30), so `local` commits do not pay for a send on the committer.
        let early = self.standby.is_none() && acks.iter().any(|a| !a.writer_returns());
        q.groups.push_back(Group { state, written, acks });
        drop(q);
        self.flusher.wake.notify_one();
        if early {
            self.shared.written_hooks.read().iter().for_each(|hook| hook(written));
        }
    }

    /// Waits until everything handed to the flusher is durable and published.
    fn wait_flushed(&mut self) -> Result<()> {
        self.hand_to_flusher(Vec::new());
        let mut q = self.flusher.queue.lock();
        loop {
            if let Some(why) = &q.poisoned {
                return Err(Error::Poisoned(why.clone()));
            }
            if q.groups.is_empty() {
                break;
            }
            self.flusher.done.wait(&mut q);
        }
        if let Some(lsn) = q.flushed {
            self.writer.note_flushed(lsn);
        }
        Ok(())
    }

    fn check_poisoned(&mut self) -> Result<()> {
        if self.poisoned.is_none() {
            if let Some(why) = self.flusher.queue.lock().poisoned.clone() {
                self.writer.poison(why.clone());
                self.poisoned = Some(why);
            }
        }
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Stops all writing: this committer's and the flusher's. Groups waiting for an fsync fail
    /// too, because their bytes may sit in a segment whose fsync already failed (the kernel
    /// reports a failed writeback once, so the flusher's own fsync could wrongly succeed).
    fn poison(&mut self, e: &Error) {
        tracing::error!(error = %e, "committer stopped accepting writes");
        let why = e.to_string();
        self.poisoned = Some(why.clone());
        let mut q = self.flusher.queue.lock();
        q.poisoned.get_or_insert(why.clone());
        let groups: Vec<Group> = q.groups.drain(..).collect();
        drop(q);
        self.flusher.done.notify_all();
        for g in groups {
            g.acks.into_iter().for_each(|a| a.fail(&why));
        }
    }

    fn append_simple(&mut self, record: &Record) -> Result<Lsn> {
        self.check_poisoned()?;
        self.body.clear();
        record.encode_body(&mut self.body);
        let (_, end) = self.writer.append(record.kind(), &self.body)?;
        Ok(end)
    }

    /// Checks a write set against everything committed after its snapshot.
    fn validate(&self, ws: &WriteSet) -> Result<()> {
        // Shared, not copied: only DDL (rare) builds a new catalog to check later ops against.
        let mut catalog = self.store.newest_catalog();
        let mut fresh: Vec<TableId> = Vec::new();
        for op in &ws.ddl {
            use crate::wal::record::DdlOp;
            match op {
                DdlOp::Create(def) => {
                    if catalog.get(&def.name).is_some() {
                        return Err(conflict(format!(
                            "table \"{}\" was created by a concurrent transaction",
                            def.name
                        )));
                    }
                    fresh.push(def.id);
                    catalog = Arc::new(catalog.with(Arc::new(def.clone())));
                }
                DdlOp::Drop { id, name } => {
                    if catalog.get(name).map(|d| d.id) != Some(*id) {
                        return Err(conflict(format!(
                            "table \"{name}\" was dropped or changed by a concurrent transaction"
                        )));
                    }
                    catalog = Arc::new(catalog.without(name));
                }
                DdlOp::Truncate { old_id, new_id, name } => {
                    let Some(def) = catalog.get(name).filter(|d| d.id == *old_id).cloned() else {
                        return Err(conflict(format!(
                            "table \"{name}\" was dropped or changed by a concurrent transaction"
                        )));
                    };
                    fresh.push(*new_id);
                    catalog = Arc::new(
                        catalog.with(Arc::new(crate::schema::TableDef { id: *new_id, ..(*def).clone() })),
                    );
                }
            }
        }
        for (id, tw) in &ws.rows {
            if catalog.get(&tw.def.name).map(|d| d.id) != Some(*id) {
                return Err(conflict(format!(
                    "table \"{}\" was dropped, truncated or replaced by a concurrent transaction",
                    tw.def.name
                )));
            }
            if fresh.contains(id) {
                continue;
            }
            let data = self.store.table_data(*id).expect("a live table has data");
            for key in tw.rows.keys() {
                if let Some(lsn) = self.store.newest_version_lsn(&data, key) {
                    if lsn > ws.snapshot_lsn {
                        return Err(conflict(format!(
                            "could not serialize access: row {key} of table \"{}\" was changed by a concurrent transaction",
                            tw.def.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, ws: WriteSet) -> Result<CommitInfo> {
        self.check_poisoned()?;
        self.validate(&ws)?;
        // Every limit is checked before anything is appended: a transaction refused after its
        // chunk records were written would leave chunks without a commit in the WAL.
        let row_bytes: usize = ws
            .rows
            .values()
            .flat_map(|t| t.rows.iter())
            .map(|(_, r)| r.as_ref().map_or(16, |b| b.len()))
            .sum();
        if row_bytes > TXN_CHANGE_BYTES_MAX {
            return Err(Error::Sql(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!("transaction changes more than {TXN_CHANGE_BYTES_MAX} bytes of rows"),
            )));
        }
        let ddl_bytes = if ws.ddl.is_empty() {
            0
        } else {
            let mut b = Vec::new();
            let probe = CommitRecord {
                txid: TxId(u64::MAX),
                commit_time_us: i64::MAX,
                digest: 0,
                ddl: ws.ddl.clone(),
                changes: Vec::new(),
            };
            Record::Commit(probe).encode_body(&mut b);
            b.len()
        };
        if ddl_bytes > RECORD_LEN_MAX / 2 {
            return Err(Error::Sql(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!("the transaction's DDL takes {ddl_bytes} bytes, more than one WAL record may hold"),
            )));
        }
        // The commit record carries the DDL and the last part of the rows: leave room for both.
        let tail_limit = CHUNK_TARGET_BYTES - ddl_bytes;
        // Turn the write set into change lists, splitting off chunk records when it is large.
        let mut chunks: Vec<TableChanges> = Vec::new();
        let mut tail: Vec<TableChanges> = Vec::new();
        let mut tail_bytes = 0usize;
        for (id, tw) in ws.rows {
            let mut current = TableChanges { table: id, changes: Vec::new() };
            for (key, row) in tw.rows {
                let change = match row {
                    Some(bytes) => Change { op: ChangeOp::Put, bytes },
                    None => {
                        let mut b = Vec::new();
                        key.encode(&mut b);
                        Change { op: ChangeOp::Delete, bytes: b.into() }
                    }
                };
                let len = change_encoded_len(change.bytes.len());
                if tail_bytes + len > tail_limit {
                    // Move what has gathered into a chunk record.
                    if !current.changes.is_empty() {
                        tail.push(std::mem::replace(
                            &mut current,
                            TableChanges { table: id, changes: Vec::new() },
                        ));
                    }
                    self.body.clear();
                    encode_changes(&tail, &mut self.body);
                    if let Err(e) = self.writer.append(RecordKind::Chunk, &self.body) {
                        self.poison(&e);
                        return Err(e);
                    }
                    chunks.append(&mut tail);
                    tail_bytes = 0;
                }
                tail_bytes += len;
                current.changes.push(change);
            }
            if !current.changes.is_empty() {
                tail.push(current);
            }
        }
        let txid = self.replayer.last_txid().next();
        let commit_time_us = now_us().max(self.replayer.last_commit_time_us());
        let record =
            Record::Commit(CommitRecord { txid, commit_time_us, digest: 0, ddl: ws.ddl, changes: tail });
        self.body.clear();
        record.encode_body(&mut self.body);
        let Record::Commit(record) = record else { unreachable!("built as a commit") };
        let len = RECORD_HEADER_LEN + self.body.len();
        assert!(
            len <= RECORD_LEN_MAX,
            "commit record of {len} bytes: the DDL and tail limits above keep it smaller"
        );
        let start = self.writer.next_record_lsn(len);
        let end = start.add(len as u64);
        let digest = match self.replayer.apply_commit(record, chunks, end) {
            Ok(d) => d,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        // Patch the digest into the encoded body: it follows the txid and time varints.
        let offset = {
            let mut r = crate::value::Reader::new(&self.body);
            r.uvarint().expect("just encoded");
            r.ivarint().expect("just encoded");
            r.pos
        };
        self.body[offset..offset + 8].copy_from_slice(&digest.to_le_bytes());
        // Pair assertion: the record reads back with the digest it will be replayed against.
        debug_assert!(
            matches!(Record::decode_body(RecordKind::Commit, &self.body), Ok(Record::Commit(c)) if c.digest == digest && c.txid == txid),
            "commit record must read back as written"
        );
        match self.writer.append(RecordKind::Commit, &self.body) {
            Ok((s, e)) => assert_eq!((s, e), (start, end), "commit record landed where it was stamped"),
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        }
        Ok(CommitInfo { txid, lsn: end, commit_time_us })
    }

    fn maybe_checkpoint(&mut self, requested: bool) {
        let wal_bytes = self.writer.insert_lsn().bytes_since(self.wal_at_checkpoint);
        let due = requested
            || wal_bytes >= self.config.checkpoint_wal_bytes
            || (wal_bytes > 0 && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval);
        if !due || self.checkpoint_running || self.poisoned.is_some() {
            if let Some(why) = &self.poisoned {
                for w in self.checkpoint_waiters.drain(..) {
                    w.send(Err(Error::Poisoned(why.clone())));
                }
            }
            return;
        }
        if let Err(e) = self.wait_flushed() {
            for w in self.checkpoint_waiters.drain(..) {
                w.send(Err(Error::Poisoned(e.to_string())));
            }
            return;
        }
        let (meta, view) =
            self.shared.snapshot_point(&self.store, self.control.system_id, self.control.timeline);
        if meta.lsn == self.control.checkpoint_lsn {
            // Nothing new since the last snapshot.
            for w in self.checkpoint_waiters.drain(..) {
                w.send(Ok(meta.lsn));
            }
            self.last_checkpoint = Instant::now();
            return;
        }
        let snap_dir = self.dir.join("snapshots");
        let inbox = Arc::clone(&self.inbox);
        self.checkpoint_running = true;
        self.last_checkpoint = Instant::now();
        self.wal_at_checkpoint = meta.lsn;
        let spawned = std::thread::Builder::new().name("hindsight-snapshot".into()).spawn(move || {
            let started = Instant::now();
            // A panic here must still reach the committer, or CHECKPOINT waiters would hang.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_snapshot(&snap_dir, &view, meta)
            }))
            .unwrap_or_else(|_| {
                Err(Error::Mismatch("the snapshot writer panicked (a bug); see the log".into()))
            });
            if let Ok(w) = &result {
                tracing::info!(
                    lsn = %w.meta.lsn, rows = w.rows, bytes = w.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written"
                );
            }
            drop(view);
            let _ = inbox.send(Lane::Requests, Request::CheckpointDone(result));
        });
        let spawned = spawned.map(|handle| {
            // Only one snapshot runs at a time, so the previous thread has finished: reap it.
            if let Some(old) = self.snapshot_thread.replace(handle) {
                let _ = old.join();
            }
        });
        if let Err(e) = spawned {
            self.checkpoint_running = false;
            for w in self.checkpoint_waiters.drain(..) {
                let source = std::io::Error::new(e.kind(), e.to_string());
                w.send(Err(Error::io("start the snapshot thread", source)));
            }
        }
    }

    fn finish_checkpoint(&mut self, result: Result<SnapshotWritten>) {
        self.checkpoint_running = false;
        let written = match result {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed; the previous one stays in use");
                let msg = e.to_string();
                for w in self.checkpoint_waiters.drain(..) {
                    w.send(Err(Error::Mismatch(format!("checkpoint failed: {msg}"))));
                }
                return;
            }
        };
        let lsn = written.meta.lsn;
        let mut control = self.control.clone();
        control.checkpoint_lsn = lsn;
        control.checkpoint_prev_lsn = written.meta.prev_lsn;
        control.snapshot = Some(snapshot_file_name(lsn));
        if let Err(e) = control.write(&self.dir.join("control")) {
            tracing::error!(error = %e, "could not record the snapshot in the control file");
            let msg = e.to_string();
            for w in self.checkpoint_waiters.drain(..) {
                w.send(Err(Error::Mismatch(format!("checkpoint failed: {msg}"))));
            }
            return;
        }
        self.control = control;
        self.shared.checkpoint_lsn.store(lsn.0, Ordering::Release);
        self.sync_confirmed();
        // A replica's WAL is a copy of its upstream's: it logs nothing of its own.
        if self.standby.is_none() {
            if let Err(e) = self.append_simple(&Record::Checkpoint { snapshot_lsn: lsn, time_us: now_us() }) {
                tracing::error!(error = %e, "could not log the checkpoint record");
            }
        }
        self.remove_old_snapshots(lsn);
        self.remove_unneeded_wal();
        self.store.vacuum();
        for w in self.checkpoint_waiters.drain(..) {
            w.send(Ok(lsn));
        }
    }

    /// Makes a replica's confirmed Lsn durable (see [`crate::confirmed`]); a no-op on a primary.
    fn sync_confirmed(&self) {
        let sync = self.flusher.queue.lock().confirmed.as_mut().map(ConfirmedFile::sync_handle);
        if let Some(sync) = sync {
            sync.sync();
        }
    }

    fn remove_old_snapshots(&self, keep: Lsn) {
        let dir = self.dir.join("snapshots");
        let keep_name = snapshot_file_name(keep);
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name != keep_name && (name.ends_with(".snap") || name.ends_with(".snap.tmp")) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove an old snapshot");
                }
            }
        }
    }

    /// Removes WAL segments that end before the oldest Lsn some consumer still needs: crash
    /// recovery (the newest snapshot) and every valid WAL hold (slots, standbys, backups). The
    /// one place WAL is deleted.
    fn remove_unneeded_wal(&self) {
        let seg = self.control.segment_size_bytes;
        let wal_dir = self.dir.join("wal");
        let timeline = self.control.timeline;
        self.shared.holds.remove_unneeded(self.writer.insert_lsn(), self.control.checkpoint_lsn, |keep| {
            let Ok(segments) = list_segments(&wal_dir) else { return Lsn::ZERO };
            let mut removed = false;
            let mut oldest = u64::MAX;
            for (tl, no, path) in segments {
                if (no + 1) * seg < keep.0 {
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed = true,
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %e, "could not remove a WAL segment")
                        }
                    }
                } else if tl == timeline {
                    oldest = oldest.min(no);
                }
            }
            if removed {
                let _ = sync_dir(&wal_dir);
            }
            if oldest == u64::MAX { Lsn::ZERO } else { Lsn(oldest * seg) }
        });
    }
}
