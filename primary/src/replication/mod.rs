//! Replication state on a server that standbys stream from: who is connected, what each has
//! confirmed, how far behind it is, replication slots, and synchronous commit waits.
//!
//! How data moves:
//! - In: the engine's publish hook calls [`Replication::on_published`] on the flusher thread
//!   after every group commit (a lag sample). A WAL sender connection calls
//!   [`Replication::register`] when a standby starts streaming or takes a base backup, and then
//!   reports through its [`StandbyHandle`]: [`StandbyHandle::set_state`],
//!   [`StandbyHandle::sent`], and [`StandbyHandle::ack`] for each `StandbyStatus`.
//! - Out: commits at `remote_write`/`remote_flush`/`remote_apply` reach
//!   [`Replication::relay`] from the engine's flusher once durable (through the per-level
//!   relay that [`ReplicationHost::commit_relay`] gives their sessions), queued by Lsn; when
//!   the confirmed positions move, only the commits they satisfy are answered (never by
//!   polling, never all of them on every acknowledgement). The session's thread sleeps once
//!   per commit, from its COMMIT until the standbys confirmed it. SQL sessions read and change
//!   the state through the [`ReplicationHost`] implementation: `SHOW REPLICATION`,
//!   `CREATE`/`DROP REPLICATION SLOT`. Slots go to `DATA_DIR/replication_slots` ([`slots`]),
//!   and WAL the standbys still need is kept through engine WAL holds: `slot:<name>` per slot
//!   and `walsender:<n>` per connection, both capped by `max_slot_wal_keep_bytes`.
//!
//! Modules: [`syncrep`] (the `synchronous_standbys` rule, pure), [`lag`] (lag samples and
//! clocks, pure), [`slots`] (the slot file).
//!
//! Locks, always taken in this order: `persist` (the slot file writer), `state`, `samples`,
//! `waits`, then the engine's WAL holds. None is held across an `.await`. Every lock is held
//! for memory work only, except that creating or dropping a slot and dropping a slotted
//! [`StandbyHandle`] write the small slot file (one fsync) — rare events; `ack` writes it at
//! most once per [`SLOT_PERSIST_INTERVAL`] and skips a turn rather than wait for another
//! writer.

pub mod lag;
pub mod slots;
pub mod syncrep;

pub use lag::LAG_SAMPLES_MAX;
pub use slots::SLOTS_MAX;
pub use syncrep::{parse_sync_standbys, SyncLevel, SyncMethod, SyncRule, SyncState};

use crate::walsender::WalPush;
use hindsight_engine::error::{ErrorCode, SqlError};
use hindsight_engine::sql::{Column, ReplicationHost, StatementResult};
use hindsight_engine::txn::{CommitRelay, PendingCommit};
use hindsight_engine::value::{DataType, Value};
use hindsight_engine::wal::holds::{HoldError, WAL_HOLDS_MAX};
use hindsight_engine::Database;
use hindsight_protocol::{error_code, Lsn};
use lag::{LagClock, LagSamples};
use slots::SlotRecord;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The most standbys (streaming or taking a base backup) registered at once.
pub const STANDBYS_MAX: usize = 64;
/// A slot's restart Lsn moved by acknowledgements is written to disk at most this often (a
/// crash may leave it up to this much older on disk, which keeps more WAL, never less).
pub const SLOT_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
// Every slot and every connection may hold WAL at once, with room for base backups.
const _: () = assert!(SLOTS_MAX + STANDBYS_MAX < WAL_HOLDS_MAX);

/// What a standby reported in its latest `StandbyStatus`: the Lsn ladder.
///
/// Invariants (after [`StandbyHandle::ack`] clamps what arrived):
/// `received >= written >= flushed >= replayed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyPositions {
    /// WAL received from the network.
    pub received: Lsn,
    /// WAL written to the standby's files (not necessarily flushed).
    pub written: Lsn,
    /// WAL flushed (durable) on the standby.
    pub flushed: Lsn,
    /// WAL replayed (visible to the standby's queries).
    pub replayed: Lsn,
}

impl StandbyPositions {
    /// The same positions with the ladder enforced: each clamped to the one above it.
    fn clamped(self) -> StandbyPositions {
        let written = self.written.min(self.received);
        let flushed = self.flushed.min(written);
        StandbyPositions { received: self.received, written, flushed, replayed: self.replayed.min(flushed) }
    }

    /// The position-wise maximum (of two valid ladders, itself a valid ladder).
    fn max(self, other: StandbyPositions) -> StandbyPositions {
        StandbyPositions {
            received: self.received.max(other.received),
            written: self.written.max(other.written),
            flushed: self.flushed.max(other.flushed),
            replayed: self.replayed.max(other.replayed),
        }
    }

    fn ladder_holds(&self) -> bool {
        self.received >= self.written && self.written >= self.flushed && self.flushed >= self.replayed
    }
}

/// What a connected standby is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyState {
    /// Taking a base backup.
    Backup,
    /// Streaming WAL it is behind on (the state a streaming standby registers in).
    Catchup,
    /// Streaming, caught up at least once; only these count for synchronous commit.
    Streaming,
}

impl StandbyState {
    /// The name shown in SHOW REPLICATION.
    pub fn as_str(self) -> &'static str {
        match self {
            StandbyState::Backup => "backup",
            StandbyState::Catchup => "catchup",
            StandbyState::Streaming => "streaming",
        }
    }
}

/// Why a standby may not connect, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterError {
    /// The stable code (a [`hindsight_protocol::error_code`] constant).
    pub code: &'static str,
    /// What went wrong, naming the slot.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegisterError {}

/// What a commit still waiting for synchronous standbys is answered at shutdown: it is durable
/// here, and may or may not have reached them.
pub fn unconfirmed_at_shutdown(lsn: Lsn) -> hindsight_engine::Error {
    let message = format!(
        "the transaction committed locally at {lsn}, but the server shut down before the synchronous standbys confirmed it"
    );
    SqlError::new(ErrorCode::Shutdown, message)
        .with_hint("check on the primary or a replica whether it is there before retrying")
        .into()
}

/// The relay for one `synchronous_commit` level, handed to sessions by
/// [`ReplicationHost::commit_relay`].
#[derive(Debug)]
struct LevelRelay {
    /// Weak: the database holds the relay in its flusher queue, and the registry holds the
    /// database (see the publish hook in the server).
    replication: Weak<Replication>,
    level: SyncLevel,
}

impl CommitRelay for LevelRelay {
    fn relay(&self, pending: PendingCommit) {
        match self.replication.upgrade() {
            Some(r) => r.relay(self.level, pending),
            None => {
                let lsn = pending.info().lsn;
                pending.fail(unconfirmed_at_shutdown(lsn));
            }
        }
    }
}

/// One registered standby connection.
#[derive(Debug)]
struct Standby {
    name: String,
    peer: SocketAddr,
    slot: Option<String>,
    state: StandbyState,
    sent: Option<Lsn>,
    /// The connection's send side, once it streams: the publish hook sends new WAL through it.
    push: Option<Arc<WalPush>>,
    /// `None` until its first acknowledgement.
    positions: Option<StandbyPositions>,
    write_lag: LagClock,
    flush_lag: LagClock,
    replay_lag: LagClock,
}

/// One replication slot in memory.
#[derive(Debug)]
struct Slot {
    restart_lsn: Lsn,
    invalidated: Option<String>,
    /// The standby connection using it.
    active: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// By connection id, in connection order.
    standbys: BTreeMap<u64, Standby>,
    slots: BTreeMap<String, Slot>,
    /// A slot changed since the file was last written.
    slots_dirty: bool,
    slots_persisted_at: Option<Instant>,
}

impl State {
    fn records(&self) -> Vec<SlotRecord> {
        self.slots
            .iter()
            .map(|(name, s)| SlotRecord {
                name: name.clone(),
                restart_lsn: s.restart_lsn,
                invalidated: s.invalidated.clone(),
            })
            .collect()
    }

    fn candidates(&self) -> Vec<syncrep::Candidate<'_>> {
        self.standbys
            .iter()
            .map(|(id, s)| syncrep::Candidate {
                id: *id,
                name: &s.name,
                state: s.state,
                positions: s.positions.unwrap_or_default(),
            })
            .collect()
    }
}

/// Replication state on a server that standbys stream from. See the module docs.
///
/// Invariants:
/// - Every valid slot has an engine WAL hold `slot:<name>` at its `restart_lsn`; a slot's
///   `restart_lsn` only moves forward.
/// - A slot is used by at most one connection; an active slot is never dropped.
/// - A standby's positions never move backwards and keep the Lsn ladder.
/// - `waits.confirmed` holds the positions the synchronous standbys confirmed under `rule`
///   for the current standbys (all zero when the rule cannot be met), recomputed on every
///   change; no queued wait is satisfied by it (see [`Waits`]).
pub struct Replication {
    db: Arc<Database>,
    slots_path: PathBuf,
    rule: SyncRule,
    next_id: AtomicU64,
    /// Serialises writers of the slot file, so the newest state is written last.
    persist: Mutex<()>,
    state: Mutex<State>,
    samples: Mutex<LagSamples>,
    waits: Mutex<Waits>,
    /// The send sides of the streaming standbys, by standby id (at most [`STANDBYS_MAX`]), in a
    /// lock of their own so the publish hook never waits behind acknowledgements.
    pushes: Mutex<Vec<(u64, Arc<WalPush>)>>,
    /// One per level above `local`.
    relays: Vec<Arc<LevelRelay>>,
}

/// Commits waiting for synchronous standbys, and what those confirmed.
///
/// Invariants:
/// - Every queued commit's Lsn is above its level's position in `confirmed` (a commit that
///   `confirmed` satisfies is taken out in the same critical section that moved it, or never
///   queued).
/// - Once `ended` is set (shutdown) the queue is empty and stays empty.
#[derive(Debug, Default)]
struct Waits {
    confirmed: StandbyPositions,
    /// By (Lsn, wait id): the level waited for and the commit to answer.
    queue: BTreeMap<(Lsn, u64), (SyncLevel, PendingCommit)>,
    next_id: u64,
    ended: bool,
}

impl Waits {
    /// Sets `confirmed` and takes out the commits it satisfies, in Lsn order, for the caller
    /// to answer once the lock is released. Positions keep the ladder written ≥ flushed ≥
    /// replayed, so nothing above `written` can be satisfied.
    fn confirm(&mut self, confirmed: StandbyPositions) -> Vec<PendingCommit> {
        self.confirmed = confirmed;
        let satisfied: Vec<(Lsn, u64)> = self
            .queue
            .range(..=(confirmed.written, u64::MAX))
            .filter(|((lsn, _), (level, _))| level.position(&confirmed).is_some_and(|at| at >= *lsn))
            .map(|(key, _)| *key)
            .collect();
        satisfied.iter().filter_map(|key| self.queue.remove(key)).map(|(_, pending)| pending).collect()
    }
}

impl fmt::Debug for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replication").field("rule", &self.rule).field("slots_path", &self.slots_path).finish()
    }
}

/// Locks a mutex; a panic while it was held is a bug elsewhere, and the data it guards (plain
/// positions) stays usable, so the poison is ignored rather than spreading the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An engine invalidation reason without its leading "invalidated: ".
fn reason(engine_reason: &str) -> String {
    slots::bounded_reason(engine_reason.strip_prefix("invalidated: ").unwrap_or(engine_reason))
}

fn lsn_text(lsn: Option<Lsn>) -> Value {
    lsn.map_or(Value::Null, |l| Value::Text(l.to_string()))
}

fn lag_ms(lag: Option<Duration>) -> Value {
    lag.map_or(Value::Null, |d| Value::Double(d.as_secs_f64() * 1000.0))
}

impl Replication {
    /// Loads DATA_DIR/replication_slots if present and re-places each valid slot's hold
    /// (`db.hold_wal("slot:NAME", restart_lsn, true)`); parses synchronous_standbys (empty =
    /// none). A slot whose WAL is already gone is marked invalidated (and logged).
    pub fn new(
        db: Arc<Database>,
        data_dir: &Path,
        synchronous_standbys: &str,
    ) -> crate::Result<Arc<Replication>> {
        let rule = parse_sync_standbys(synchronous_standbys).map_err(crate::Error::config)?;
        let slots_path = data_dir.join(slots::SLOTS_FILE);
        let mut state = State::default();
        for record in slots::load(&slots_path)? {
            let mut invalidated = record.invalidated;
            if invalidated.is_none() {
                if let Err(e) = db.hold_wal(&slots::hold_name(&record.name), record.restart_lsn, true) {
                    let why = reason(&format!("its WAL is gone after a restart: {e}"));
                    tracing::error!(slot = %record.name, lsn = %record.restart_lsn, "replication slot invalidated: {why}");
                    invalidated = Some(why);
                    state.slots_dirty = true;
                }
            }
            state
                .slots
                .insert(record.name, Slot { restart_lsn: record.restart_lsn, invalidated, active: None });
        }
        let replication = Arc::new_cyclic(|weak| Replication {
            db,
            slots_path,
            rule,
            next_id: AtomicU64::new(1),
            persist: Mutex::new(()),
            state: Mutex::new(state),
            samples: Mutex::new(LagSamples::new()),
            waits: Mutex::new(Waits::default()),
            pushes: Mutex::new(Vec::new()),
            relays: [SyncLevel::RemoteWrite, SyncLevel::RemoteFlush, SyncLevel::RemoteApply]
                .into_iter()
                .map(|level| Arc::new(LevelRelay { replication: Weak::clone(weak), level }))
                .collect(),
        });
        if lock(&replication.state).slots_dirty {
            replication.persist_slots()?;
        }
        Ok(replication)
    }

    /// The synchronous standby rule in effect.
    pub fn rule(&self) -> &SyncRule {
        &self.rule
    }

    /// From the engine's publish hook on the flusher thread: never blocks on async code or on
    /// a socket. Records (lsn, Instant) in a bounded ring for lag measurement, then sends the
    /// new WAL to every streaming standby that can take it at once: one `pread` and one
    /// non-blocking `write` each (see [`WalPush`]). Takes only the samples and pushes locks,
    /// which nothing holds for long.
    pub fn on_published(&self, lsn: Lsn) {
        lock(&self.samples).record(lsn, Instant::now());
        self.on_written();
    }

    /// From the engine's written hook on the committer thread (a primary): sends the WAL just
    /// written, not yet durable, to every streaming standby that can take it at once, so
    /// their fdatasync runs alongside this server's (decision #34). Never blocks.
    pub fn on_written(&self) {
        for (_, push) in lock(&self.pushes).iter() {
            push.on_new_wal(&self.db);
        }
    }

    /// A standby connected (after its StartReplication or BaseBackupRequest). Fails with a
    /// client-facing (code, message, hint) when the slot does not exist, is invalidated, or is
    /// in use by another connection, or when [`STANDBYS_MAX`] standbys are connected. The
    /// standby starts in [`StandbyState::Catchup`].
    pub fn register(
        self: &Arc<Self>,
        name: String,
        peer: SocketAddr,
        slot: Option<String>,
    ) -> Result<StandbyHandle, RegisterError> {
        let slot = match slot {
            None => None,
            Some(s) => Some(hindsight_engine::sql::slot_name(&s).map_err(|e| RegisterError {
                code: error_code::INVALID_PARAMETER_VALUE,
                message: e.message,
                hint: e.hint,
            })?),
        };
        let mut st = lock(&self.state);
        if st.standbys.len() >= STANDBYS_MAX {
            return Err(RegisterError {
                code: error_code::TOO_MANY_CONNECTIONS,
                message: format!("too many standbys: at most {STANDBYS_MAX} may be connected at once"),
                hint: Some("disconnect a standby, or chain replicas (a replica serves standbys too)".into()),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(name) = &slot {
            self.refresh_invalidated(&mut st, Some(name));
            let users = &st.standbys;
            let Some(s) = st.slots.get(name) else {
                return Err(RegisterError {
                    code: error_code::UNDEFINED_OBJECT,
                    message: format!("replication slot \"{name}\" does not exist"),
                    hint: Some(format!(
                        "create it on this server with CREATE REPLICATION SLOT {name}, or connect without a slot"
                    )),
                });
            };
            if let Some(why) = &s.invalidated {
                return Err(RegisterError {
                    code: error_code::WAL_MISSING,
                    message: format!("replication slot \"{name}\" is invalidated: {why}"),
                    hint: Some(format!(
                        "the WAL this replica needs is gone: run DROP REPLICATION SLOT {name} and \
                         CREATE REPLICATION SLOT {name} on this server, then re-bootstrap the replica \
                         from a new base backup"
                    )),
                });
            }
            if let Some(user) = s.active.and_then(|other| users.get(&other)) {
                return Err(RegisterError {
                    code: error_code::OBJECT_IN_USE,
                    message: format!(
                        "replication slot \"{name}\" is in use by standby \"{}\" from {}",
                        user.name, user.peer
                    ),
                    hint: Some(
                        "each standby needs its own slot: stop the other standby or use another slot".into(),
                    ),
                });
            }
            st.slots.get_mut(name).expect("checked above").active = Some(id);
        }
        let now = Instant::now();
        st.standbys.insert(
            id,
            Standby {
                name,
                peer,
                slot,
                state: StandbyState::Catchup,
                sent: None,
                push: None,
                positions: None,
                write_lag: LagClock::new(now),
                flush_lag: LagClock::new(now),
                replay_lag: LagClock::new(now),
            },
        );
        self.publish_confirmed(&st);
        drop(st);
        Ok(StandbyHandle { replication: Arc::clone(self), id, hold_name: format!("walsender:{id}") })
    }

    /// Answers `pending` once enough synchronous standbys confirmed its Lsn at `level`: at
    /// once when they already have (or when nothing waits for standbys at `level` any more),
    /// otherwise when acknowledgements, connections or disconnections move the confirmed
    /// positions past it. Never polls. After [`Replication::end_waits`], at once with
    /// [`unconfirmed_at_shutdown`]. Called on the engine's flusher thread: takes one lock and
    /// does not block.
    pub fn relay(&self, level: SyncLevel, pending: PendingCommit) {
        let lsn = pending.info().lsn;
        let mut waits = lock(&self.waits);
        if waits.ended {
            drop(waits);
            return pending.fail(unconfirmed_at_shutdown(lsn));
        }
        if !self.commit_waits(level) || level.position(&waits.confirmed).is_some_and(|at| at >= lsn) {
            drop(waits);
            return pending.complete();
        }
        let id = waits.next_id;
        waits.next_id += 1;
        waits.queue.insert((lsn, id), (level, pending));
    }

    /// Shutdown: answers every queued commit with [`unconfirmed_at_shutdown`], and every later
    /// one at once, so no session sleeps through the server's drain.
    pub fn end_waits(&self) {
        let queued = {
            let mut waits = lock(&self.waits);
            waits.ended = true;
            std::mem::take(&mut waits.queue)
        };
        for ((lsn, _), (_, pending)) in queued {
            pending.fail(unconfirmed_at_shutdown(lsn));
        }
    }

    /// How many commit waits are queued.
    #[cfg(test)]
    pub(crate) fn queued_waits(&self) -> usize {
        lock(&self.waits).queue.len()
    }

    /// Whether a commit at `level` waits for standbys at all: not at `off` or `local`, and not
    /// while `synchronous_standbys` names none.
    pub fn commit_waits(&self, level: SyncLevel) -> bool {
        !self.rule.is_none() && level.position(&StandbyPositions::default()).is_some()
    }

    /// Recomputes what the synchronous standbys confirmed and answers the commits it now
    /// satisfies.
    fn publish_confirmed(&self, st: &State) {
        let confirmed = self.rule.confirmed(&st.candidates()).unwrap_or_default();
        let mut waits = lock(&self.waits);
        if waits.confirmed != confirmed {
            let satisfied = waits.confirm(confirmed);
            drop(waits);
            satisfied.into_iter().for_each(PendingCommit::complete);
        }
    }

    /// Copies engine invalidations of slot holds into the slots (all, or just `only`); marks
    /// the slot file dirty when one is new.
    fn refresh_invalidated(&self, st: &mut State, only: Option<&str>) {
        let mut changed = false;
        for (name, slot) in st.slots.iter_mut().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            if slot.invalidated.is_some() {
                continue;
            }
            if let Some(why) = self.db.wal_hold(&slots::hold_name(name)).and_then(|h| h.invalidated) {
                // The engine logged it when it happened.
                slot.invalidated = Some(reason(&why));
                changed = true;
            }
        }
        if changed {
            st.slots_dirty = true;
        }
    }

    /// Writes the slot file from the current state (waiting for another writer to finish).
    fn persist_slots(&self) -> crate::Result<()> {
        let _writer = lock(&self.persist);
        self.persist_slots_locked()
    }

    /// Writes the slot file; the caller holds `persist`.
    fn persist_slots_locked(&self) -> crate::Result<()> {
        let records = {
            let mut st = lock(&self.state);
            st.slots_dirty = false;
            st.slots_persisted_at = Some(Instant::now());
            st.records()
        };
        slots::store(&self.slots_path, &records).inspect_err(|_| {
            // Written next time.
            lock(&self.state).slots_dirty = true;
        })
    }

    /// Writes the slot file if dirty, logging a failure (the caller has no client to tell).
    fn persist_slots_logged(&self, writer: MutexGuard<'_, ()>) {
        if !lock(&self.state).slots_dirty {
            return;
        }
        if let Err(e) = self.persist_slots_locked() {
            tracing::error!(error = %e, "could not save replication slots; will retry on the next change");
        }
        drop(writer);
    }

    fn slot_error(code: ErrorCode, message: String, hint: impl Into<String>) -> SqlError {
        SqlError::new(code, message).with_hint(hint)
    }
}

/// A registered standby connection. Dropping it deregisters the standby, releases the
/// connection's WAL hold, frees its slot (persisting the slot's restart Lsn) and wakes commit
/// waiters (the synchronous set may have changed).
pub struct StandbyHandle {
    replication: Arc<Replication>,
    id: u64,
    hold_name: String,
}

impl fmt::Debug for StandbyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandbyHandle").field("id", &self.id).field("hold_name", &self.hold_name).finish()
    }
}

impl StandbyHandle {
    fn with_standby<R>(&self, f: impl FnOnce(&mut Standby) -> R) -> (MutexGuard<'_, State>, R) {
        let mut st = lock(&self.replication.state);
        let standby = st.standbys.get_mut(&self.id).expect("a live handle's standby is registered");
        let r = f(standby);
        (st, r)
    }

    /// The standby moved to a new state (a standby counts for synchronous commit only while
    /// streaming).
    pub fn set_state(&self, state: StandbyState) {
        let (st, ()) = self.with_standby(|s| s.state = state);
        self.replication.publish_confirmed(&st);
    }

    /// New WAL goes to the standby through `push` from the publish hook on.
    pub(crate) fn set_push(&self, push: Arc<WalPush>) {
        let (_state, ()) = self.with_standby(|s| s.push = Some(Arc::clone(&push)));
        let mut pushes = lock(&self.replication.pushes);
        pushes.retain(|(id, _)| *id != self.id);
        pushes.push((self.id, push));
    }

    /// WAL up to `lsn` was sent to the standby.
    pub fn sent(&self, lsn: Lsn) {
        let (_state, ()) = self.with_standby(|s| s.sent = Some(s.sent.map_or(lsn, |old| old.max(lsn))));
    }

    /// A StandbyStatus arrived: record positions (clamp the ladder
    /// received>=written>=flushed>=replayed, and never move backwards), measure write/flush/
    /// replay lag (see [`lag`]), move the slot's restart Lsn to `replayed`, never past this server's durable end (persisted at most
    /// once per [`SLOT_PERSIST_INTERVAL`]), move this connection's capped hold to `replayed` if
    /// the server placed it, and wake waiters.
    pub fn ack(&self, pos: StandbyPositions) {
        let r = &*self.replication;
        let now = Instant::now();
        let mut st = lock(&r.state);
        let standby = st.standbys.get_mut(&self.id).expect("a live handle's standby is registered");
        let pos = standby.positions.map_or(pos.clamped(), |old| old.max(pos.clamped()));
        assert!(pos.ladder_holds(), "standby Lsn ladder broken after clamping: {pos:?}");
        standby.positions = Some(pos);
        let slot_name = standby.slot.clone();
        {
            let samples = lock(&r.samples);
            standby.write_lag.observe(&samples, pos.written, now);
            standby.flush_lag.observe(&samples, pos.flushed, now);
            standby.replay_lag.observe(&samples, pos.replayed, now);
        }
        // A standby flushes WAL before this server has made it durable (decision #34), and
        // after a restart it streams again from what it had shown: holds follow `replayed`,
        // and never pass what a crash here would keep.
        let keep = pos.replayed.min(r.db.durable_lsn());
        if let Some(name) = &slot_name {
            r.refresh_invalidated(&mut st, Some(name));
            let slot = st.slots.get_mut(name).expect("an active slot is never dropped");
            if slot.invalidated.is_none() && keep > slot.restart_lsn {
                match r.db.hold_wal(&slots::hold_name(name), keep, true) {
                    Ok(()) => {
                        slot.restart_lsn = keep;
                        st.slots_dirty = true;
                    }
                    Err(e) => {
                        tracing::warn!(slot = %name, lsn = %keep, "could not move the slot's WAL hold: {e}")
                    }
                }
            }
        }
        if let Some(hold) = r.db.wal_hold(&self.hold_name) {
            if hold.invalidated.is_none() && keep > hold.lsn {
                if let Err(e) = r.db.hold_wal(&self.hold_name, keep, true) {
                    tracing::warn!(hold = %self.hold_name, lsn = %keep, "could not move the WAL hold: {e}");
                }
            }
        }
        // Samples below what every standby replayed are of no more use.
        if let Some(lowest) = st
            .standbys
            .values()
            .map(|s| s.positions.map(|p| p.replayed))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
        {
            lock(&r.samples).forget_below(lowest);
        }
        r.publish_confirmed(&st);
        let due = st.slots_dirty
            && st.slots_persisted_at.is_none_or(|at| now.duration_since(at) >= SLOT_PERSIST_INTERVAL);
        drop(st);
        if due {
            // Another writer is at it: leave the slot dirty for the next acknowledgement rather
            // than wait on this (async) task.
            if let Ok(writer) = r.persist.try_lock() {
                r.persist_slots_logged(writer);
            }
        }
    }

    /// The name of this connection's WAL hold ("walsender:<n>"); the server places it at the
    /// stream's start Lsn before streaming; [`StandbyHandle::ack`] moves it.
    pub fn hold_name(&self) -> &str {
        &self.hold_name
    }
}

impl Drop for StandbyHandle {
    fn drop(&mut self) {
        let r = &*self.replication;
        let mut st = lock(&r.state);
        let standby = st.standbys.remove(&self.id);
        lock(&r.pushes).retain(|(id, _)| *id != self.id);
        let slot = standby.as_ref().and_then(|s| s.slot.clone());
        if let Some(name) = &slot {
            if let Some(s) = st.slots.get_mut(name) {
                s.active = None;
                st.slots_dirty = true;
            }
        }
        r.publish_confirmed(&st);
        drop(st);
        r.db.release_wal(&self.hold_name);
        if slot.is_some() {
            // Save the slot's newest restart Lsn now: this standby acknowledges nothing more.
            r.persist_slots_logged(lock(&r.persist));
        }
    }
}

impl ReplicationHost for Replication {
    fn commit_relay(&self, synchronous_commit: &str) -> Option<Arc<dyn CommitRelay>> {
        let level = SyncLevel::from_setting(synchronous_commit).filter(|level| self.commit_waits(*level))?;
        let relay = self.relays.iter().find(|relay| relay.level == level)?;
        Some(Arc::clone(relay) as Arc<dyn CommitRelay>)
    }

    fn show_replication(&self) -> Result<StatementResult, SqlError> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        self.refresh_invalidated(&mut st, None);
        let dirty = st.slots_dirty;
        let candidates = st.candidates();
        let sync_states = self.rule.sync_states(&candidates);
        let samples = lock(&self.samples);
        let slot_columns = |name: &Option<String>| -> [Value; 3] {
            match name.as_ref().and_then(|n| st.slots.get(n).map(|s| (n, s))) {
                None => [Value::Null, Value::Null, Value::Null],
                Some((n, s)) => [
                    Value::Text(n.clone()),
                    Value::Text(s.restart_lsn.to_string()),
                    Value::Text(
                        s.invalidated
                            .as_ref()
                            .map_or("reserved".to_string(), |w| format!("invalidated: {w}")),
                    ),
                ],
            }
        };
        let mut rows = Vec::new();
        for (standby, sync_state) in st.standbys.values().zip(&sync_states) {
            let p = standby.positions;
            let lag = |clock: &LagClock, at: Option<Lsn>| at.and_then(|at| clock.shown(&samples, at, now));
            let mut row = vec![
                Value::Text(standby.name.clone()),
                Value::Text(standby.peer.to_string()),
                Value::Text(standby.state.as_str().into()),
                lsn_text(standby.push.as_ref().map(|p| p.sent()).max(standby.sent)),
                lsn_text(p.map(|p| p.written)),
                lsn_text(p.map(|p| p.flushed)),
                lsn_text(p.map(|p| p.replayed)),
                lag_ms(lag(&standby.write_lag, p.map(|p| p.written))),
                lag_ms(lag(&standby.flush_lag, p.map(|p| p.flushed))),
                lag_ms(lag(&standby.replay_lag, p.map(|p| p.replayed))),
                Value::Text(sync_state.as_str().into()),
            ];
            row.extend(slot_columns(&standby.slot));
            rows.push(row);
        }
        for name in st.slots.iter().filter(|(_, s)| s.active.is_none()).map(|(n, _)| n) {
            let mut row = vec![
                Value::Text(name.clone()),
                Value::Null,
                Value::Text("disconnected".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ];
            row.extend(slot_columns(&Some(name.clone())));
            rows.push(row);
        }
        drop(samples);
        drop(st);
        if dirty {
            self.persist_slots_logged(lock(&self.persist));
        }
        let text = |n: &str| Column::new(n, DataType::Text);
        let double = |n: &str| Column::new(n, DataType::Double);
        Ok(StatementResult::Rows {
            columns: vec![
                text("name"),
                text("client_addr"),
                text("state"),
                text("sent_lsn"),
                text("write_lsn"),
                text("flush_lsn"),
                text("replay_lsn"),
                double("write_lag_ms"),
                double("flush_lag_ms"),
                double("replay_lag_ms"),
                text("sync_state"),
                text("slot"),
                text("slot_restart_lsn"),
                text("slot_status"),
            ],
            rows,
        })
    }

    fn show_recovery(&self) -> Result<StatementResult, SqlError> {
        Err(SqlError::new(
            ErrorCode::FeatureNotSupported,
            "SHOW RECOVERY: this server is a primary and is not in recovery",
        )
        .with_hint("run SHOW RECOVERY on a replica; SHOW REPLICATION shows the replicas of this primary"))
    }

    fn create_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
        let name = hindsight_engine::sql::slot_name(name)?;
        let _writer = lock(&self.persist);
        let mut st = lock(&self.state);
        if st.slots.contains_key(&name) {
            return Err(Replication::slot_error(
                ErrorCode::DuplicateObject,
                format!("replication slot \"{name}\" already exists"),
                format!("use it, or DROP REPLICATION SLOT {name} first"),
            ));
        }
        if st.slots.len() >= SLOTS_MAX {
            return Err(Replication::slot_error(
                ErrorCode::ProgramLimitExceeded,
                format!("cannot create replication slot \"{name}\": there are already {SLOTS_MAX} slots"),
                "drop a slot that is no longer used (SHOW REPLICATION lists them)",
            ));
        }
        let restart_lsn = self.db.durable_lsn();
        let hold = slots::hold_name(&name);
        self.db.hold_wal(&hold, restart_lsn, true).map_err(|e| match e {
            HoldError::TooMany => Replication::slot_error(
                ErrorCode::ProgramLimitExceeded,
                format!("cannot create replication slot \"{name}\": {e}"),
                "drop an unused slot, or wait for base backups to finish",
            ),
            HoldError::Removed { .. } => SqlError::new(
                ErrorCode::InternalError,
                format!("cannot create replication slot \"{name}\": {e}"),
            ),
        })?;
        st.slots.insert(name.clone(), Slot { restart_lsn, invalidated: None, active: None });
        let records = st.records();
        // Written while holding `state` so no registration sees the slot before it is durable.
        if let Err(e) = slots::store(&self.slots_path, &records) {
            st.slots.remove(&name);
            self.db.release_wal(&hold);
            return Err(SqlError::new(
                ErrorCode::IoError,
                format!("cannot create replication slot \"{name}\": {e}"),
            ));
        }
        st.slots_dirty = false;
        st.slots_persisted_at = Some(Instant::now());
        tracing::info!(slot = %name, lsn = %restart_lsn, "created replication slot");
        Ok(StatementResult::Rows {
            columns: vec![
                Column::new("slot_name", DataType::Text),
                Column::new("restart_lsn", DataType::Text),
            ],
            rows: vec![vec![Value::Text(name), Value::Text(restart_lsn.to_string())]],
        })
    }

    fn drop_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
        let name = hindsight_engine::sql::slot_name(name)?;
        let _writer = lock(&self.persist);
        let mut st = lock(&self.state);
        let Some(slot) = st.slots.get(&name) else {
            return Err(Replication::slot_error(
                ErrorCode::UndefinedObject,
                format!("replication slot \"{name}\" does not exist"),
                "SHOW REPLICATION lists the slots",
            ));
        };
        if let Some(user) = slot.active.and_then(|id| st.standbys.get(&id)) {
            return Err(Replication::slot_error(
                ErrorCode::ObjectInUse,
                format!(
                    "replication slot \"{name}\" is in use by standby \"{}\" from {}",
                    user.name, user.peer
                ),
                "stop that standby first, then drop the slot",
            ));
        }
        let slot = st.slots.remove(&name).expect("checked above");
        if let Err(e) = slots::store(&self.slots_path, &st.records()) {
            // Keep it: the file still has it, and a restart would bring it back anyway.
            st.slots.insert(name.clone(), slot);
            return Err(SqlError::new(
                ErrorCode::IoError,
                format!("cannot drop replication slot \"{name}\": {e}"),
            ));
        }
        st.slots_dirty = false;
        st.slots_persisted_at = Some(Instant::now());
        self.db.release_wal(&slots::hold_name(&name));
        tracing::info!(slot = %name, "dropped replication slot");
        Ok(StatementResult::tag("DROP REPLICATION SLOT"))
    }
}

#[cfg(test)]
mod tests;
