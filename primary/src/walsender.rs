//! The WAL sender: a replication connection's server side. Serves base backups and streams
//! WAL from the segments on disk, on primaries and (cascading) on replicas alike.
//!
//! ```text
//! AuthOk ─► BaseBackupRequest ─► BackupStart, BackupChunk* (snapshot, wal_prefix, roles, last)
//!       └─► StartReplication{timeline, start_lsn, slot, standby_name}
//!             ─► WalData* as WAL becomes durable here, Keepalive when idle
//!             ◄─ StandbyStatus (received ≥ written ≥ flushed ≥ replayed) at any time
//! ```
//!
//! Only durable WAL is sent (on a primary the published Lsn, which the flusher publishes after
//! fdatasync; on a replica its flushed Lsn), so a replica never holds WAL its upstream could
//! lose in a crash. The connection holds the WAL from its standby's flushed Lsn (a capped
//! hold, moved on every acknowledgement), and a base backup holds the WAL from the backup Lsn
//! until the replica streams from it on the same connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hindsight_engine::backup::encode_snapshot;
use hindsight_engine::wal::reader::{RawReadError, RawWalReader};
use hindsight_engine::Database;
use hindsight_protocol::wire::{
    client_message::Msg, BackupChunk, BackupStart, Keepalive, StartReplication, WalData,
};
use hindsight_protocol::{
    encode_frame, error_code, ClientMessage, Lsn, ServerMessage, BACKUP_CHUNK_LEN_MAX, WAL_DATA_LEN_MAX,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::connection::{incoming, recv, refuse, refuse_shutting_down, Incoming, Transport};
use crate::replication::{StandbyHandle, StandbyPositions, StandbyState};
use crate::server::Shared;
use crate::sidewrite::SideWriter;

/// Sent when no WAL flowed for this long, asking the standby to report.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A standby silent for this long is gone: the connection is closed.
pub const STANDBY_TIMEOUT: Duration = Duration::from_secs(30);
/// Snapshot chunks in flight between the encoding thread and the connection.
const BACKUP_QUEUE_CHUNKS: usize = 8;

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Serves a replication connection until it ends.
pub(crate) async fn serve_replication(
    shared: &Shared,
    transport: &mut Transport,
    peer: SocketAddr,
    application: String,
) {
    let mut handle: Option<StandbyHandle> = None;
    loop {
        let message = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => {
                refuse_shutting_down(transport).await;
                return;
            }
            incoming = recv(transport) => match incoming {
                Incoming::Message(m) => m,
                Incoming::Eof | Incoming::Failed(_) => return,
                Incoming::Violation(e) => {
                    refuse(transport, error_code::PROTOCOL_VIOLATION, e.to_string(), "").await;
                    return;
                }
            },
        };
        match message.msg {
            Some(Msg::BaseBackupRequest(_)) => {
                if handle.is_some() {
                    let message = "a base backup was already sent on this connection".to_string();
                    refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
                    return;
                }
                let h = match shared.replication.register(application.clone(), peer, None) {
                    Ok(h) => h,
                    Err(e) => {
                        return refuse(transport, e.code, e.message, e.hint.as_deref().unwrap_or("")).await
                    }
                };
                h.set_state(StandbyState::Backup);
                if !send_base_backup(shared, transport, &h).await {
                    return;
                }
                handle = Some(h);
            }
            Some(Msg::StartReplication(start)) => {
                stream(shared, transport, peer, &application, handle.take(), start).await;
                return;
            }
            Some(Msg::Terminate(_)) => return,
            other => {
                let kind = hindsight_protocol::Envelope::kind(&ClientMessage { msg: other });
                let message =
                    format!("{kind} is not accepted on a replication connection before StartReplication");
                refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
                return;
            }
        }
    }
}

/// Sends a base backup; returns false when the connection is finished.
async fn send_base_backup(shared: &Shared, transport: &mut Transport, handle: &StandbyHandle) -> bool {
    let db = std::sync::Arc::clone(&shared.db);
    let hold = handle.hold_name().to_string();
    let started = Instant::now();
    let backup = match tokio::task::spawn_blocking(move || db.start_base_backup(&hold)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "base backup failed");
            refuse(transport, error_code::IO_ERROR, format!("base backup failed: {e}"), "").await;
            return false;
        }
        Err(e) => {
            refuse(transport, error_code::INTERNAL_ERROR, format!("base backup failed: {e}"), "").await;
            return false;
        }
    };
    let meta = backup.meta;
    tracing::info!(lsn = %meta.lsn, "sending a base backup");
    let start = BackupStart {
        system_id: meta.system_id,
        timeline: meta.timeline.0,
        segment_size_bytes: backup.segment_size_bytes,
        lsn: meta.lsn.0,
        prev_lsn: meta.prev_lsn.0,
        last_txid: meta.last_txid.0,
        last_commit_time_us: meta.last_commit_time_us,
        digest: meta.digest,
        next_table_id: meta.next_table_id,
    };
    if transport.send(ServerMessage::from(start)).await.is_err() {
        return false;
    }
    // The snapshot is encoded on a blocking thread into bounded chunks; the connection sends
    // them as they come, so memory stays at BACKUP_QUEUE_CHUNKS chunks whatever the size.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(BACKUP_QUEUE_CHUNKS);
    let encoder = tokio::task::spawn_blocking(move || {
        let sink = ChunkSink { tx, buf: Vec::with_capacity(BACKUP_CHUNK_LEN_MAX) };
        encode_snapshot(sink, &backup.view, backup.meta)
            .map(|(_, bytes, rows)| (bytes, rows, backup.wal_prefix))
    });
    let mut sent_bytes = 0u64;
    while let Some(chunk) = rx.recv().await {
        sent_bytes += chunk.len() as u64;
        let message = BackupChunk { data: Bytes::from(chunk), last: false, part: "snapshot".into() };
        if transport.feed(ServerMessage::from(message)).await.is_err() {
            return false;
        }
    }
    let (bytes, rows, wal_prefix) = match encoder.await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            refuse(transport, error_code::IO_ERROR, format!("base backup failed: {e}"), "").await;
            return false;
        }
        Err(e) => {
            refuse(transport, error_code::INTERNAL_ERROR, format!("base backup failed: {e}"), "").await;
            return false;
        }
    };
    debug_assert_eq!(bytes, sent_bytes, "every snapshot byte was sent");
    let roles = shared.auth.export().into_bytes();
    for (part, data) in [("wal_prefix", wal_prefix), ("roles", roles)] {
        for piece in data.chunks(BACKUP_CHUNK_LEN_MAX) {
            let message = BackupChunk { data: Bytes::copy_from_slice(piece), last: false, part: part.into() };
            if transport.feed(ServerMessage::from(message)).await.is_err() {
                return false;
            }
        }
    }
    let last = BackupChunk { data: Bytes::new(), last: true, part: String::new() };
    if transport.send(ServerMessage::from(last)).await.is_err() {
        return false;
    }
    tracing::info!(
        lsn = %meta.lsn, rows, bytes, elapsed_ms = started.elapsed().as_millis() as u64,
        "base backup sent"
    );
    true
}

/// A `Write` that hands fixed-size chunks to the connection task.
struct ChunkSink {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn ship(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK_LEN_MAX));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the replica went away"))
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(BACKUP_CHUNK_LEN_MAX - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BACKUP_CHUNK_LEN_MAX {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.ship()
    }
}

/// The largest span of new WAL a hook sends itself; a longer one is left to the WAL sender
/// task, so a catch-up read never holds up the engine's committer or flusher.
pub const PUSH_BYTES_MAX: u64 = 256 * 1024;

const _: () = assert!(PUSH_BYTES_MAX <= WAL_DATA_LEN_MAX as u64, "a push is one frame");

/// A streaming connection's send side, shared by its WAL sender task and the engine's hooks
/// ([`WalPush::on_new_wal`]): on a primary, the committer's after it writes each group and
/// the flusher's after each publish; on a replica, the publish hook.
///
/// In the steady state a hook writes each new span of WAL as one `WalData` frame itself, on a
/// duplicate of the socket, without blocking: the task stays asleep, so a commit reaches its
/// standbys without a thread hand-off. A primary sends WAL as soon as it is written, before it
/// is durable, so the standby's fdatasync runs alongside its own (decision #34); every frame
/// carries the durable end, and after a publish that moved it past what the standby was last
/// told, a `Keepalive` without a reply request tells it: the standby makes nothing visible
/// past it. Whatever a hook cannot do at once (the task holds the lock, the socket is full,
/// the span is long, a read failed) it leaves to the task and wakes it; the task then sends
/// frame by frame, catching up, and the durable end last.
///
/// Invariants:
/// - `pos` is the end of the WAL sent (whole frames, or frames whose rest is in the writer's
///   backlog); both sides send from `pos` under the lock, so every byte is sent once, in order.
/// - `told` is the durable end last sent, and never more than the durable end.
/// - Once `closed` is set the hooks write nothing more, so the task may use the connection's
///   own writer for a last error frame after draining the backlog.
pub(crate) struct WalPush {
    state: Mutex<PushState>,
    /// Wakes the task: a backlog to drain, a failure, or WAL the hook left to it.
    wake: Notify,
    /// The end of the WAL handed to the socket (`pos`, readable without the lock), for SHOW
    /// REPLICATION.
    sent: AtomicU64,
}

impl std::fmt::Debug for WalPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // try_lock: Debug must never wait for (or deadlock on) the task's lock.
        f.debug_struct("WalPush").field("pos", &self.state.try_lock().map(|s| s.pos).ok()).finish()
    }
}

/// What the hook and the task share under [`WalPush`]'s lock.
struct PushState {
    /// Writes on a duplicate of the connection's socket; its backlog goes out first.
    writer: SideWriter,
    /// Reads the WAL segments from `pos` on.
    reader: RawWalReader,
    /// The end of the WAL sent (see the invariants on [`WalPush`]).
    pos: Lsn,
    /// The durable end last sent to the standby.
    told: Lsn,
    /// The task has stopped streaming: the hook writes nothing more.
    closed: bool,
}

/// What one [`WalPush::step`] of the task did.
enum Step {
    /// One frame went out (or into the backlog).
    Sent,
    /// The socket is full: wait until it is writable.
    Blocked,
    /// Everything written and the durable end were sent; the hooks send what comes next.
    CaughtUp,
}

/// Why a step of the task could not go on.
enum StepError {
    Read(RawReadError),
    Send(String),
}

fn lock(m: &Mutex<PushState>) -> MutexGuard<'_, PushState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PushState {
    /// Reads the WAL from `pos` toward `limit` (one frame's worth) and encodes it as a
    /// `WalData` frame carrying the durable end; `pos` and `told` move only when both worked.
    fn next_frame(&mut self, limit: Lsn, durable: Lsn) -> Result<Bytes, StepError> {
        let mut data = Vec::new();
        let n = self.reader.read(self.pos, limit, WAL_DATA_LEN_MAX, &mut data).map_err(StepError::Read)?;
        let message = WalData {
            start_lsn: self.pos.0,
            data: Bytes::from(data),
            server_flush_lsn: durable.0,
            server_time_us: now_us(),
        };
        let frame =
            encode_frame(&ServerMessage::from(message)).map_err(|e| StepError::Send(e.to_string()))?;
        self.pos = self.pos.add(n as u64);
        self.told = self.told.max(durable);
        Ok(frame)
    }

    /// Whether the standby has WAL whose durability it has not been told yet.
    fn owes_durable(&self, durable: Lsn) -> bool {
        self.told < durable && self.told < self.pos
    }

    /// Tells the standby the durable end with a `Keepalive` that asks for no reply. True when
    /// it went out whole.
    fn tell_durable(&mut self, durable: Lsn) -> bool {
        let message =
            Keepalive { server_flush_lsn: durable.0, server_time_us: now_us(), reply_requested: false };
        let Ok(frame) = encode_frame(&ServerMessage::from(message)) else { return false };
        let whole = self.writer.write(&frame, "the durable end");
        self.told = durable;
        whole
    }
}

impl WalPush {
    /// Starts at `pos`, the standby's requested start. It may have received WAL past `durable`
    /// before a reconnect, so it is told the durable end again once that passes it.
    fn new(writer: SideWriter, reader: RawWalReader, pos: Lsn, durable: Lsn) -> WalPush {
        WalPush {
            state: Mutex::new(PushState { writer, reader, pos, told: pos.min(durable), closed: false }),
            wake: Notify::new(),
            sent: AtomicU64::new(pos.0),
        }
    }

    /// The end of the WAL sent to the standby.
    pub(crate) fn sent(&self) -> Lsn {
        Lsn(self.sent.load(Ordering::Acquire))
    }

    /// A hook's part, on the engine's committer or flusher thread: sends the new WAL, or else
    /// the new durable end, now if that is quick, and otherwise wakes the task to. Never
    /// blocks: it only tries the lock, and a poisoned lock (a panic in the task) counts as
    /// taken, leaving the connection to the task.
    pub(crate) fn on_new_wal(&self, db: &Database) {
        let Ok(mut s) = self.state.try_lock() else {
            // The task is sending; it looks at both ends again before it sleeps.
            self.wake.notify_one();
            return;
        };
        let (limit, durable) = (db.sendable_lsn(), db.durable_lsn());
        if s.closed || (s.pos >= limit && !s.owes_durable(durable)) {
            return;
        }
        if !s.writer.is_clear() || limit.0.saturating_sub(s.pos.0) > PUSH_BYTES_MAX {
            drop(s);
            self.wake.notify_one();
            return;
        }
        let whole = if s.pos < limit {
            self.send_next(&mut s, limit, durable).unwrap_or(false)
        } else {
            s.tell_durable(durable)
        };
        // A frame stops at a segment's end: the task sends the rest.
        let more = s.pos < limit;
        drop(s);
        // A backlog, a failure, a read error or more to send: the task handles each (it reads
        // again and reports a read error to the standby).
        if !whole || more {
            self.wake.notify_one();
        }
    }

    /// The end of the WAL sent.
    fn pos(&self) -> Lsn {
        lock(&self.state).pos
    }

    /// The task's part: drains the backlog through the connection's own socket, then sends one
    /// frame of durable WAL if there is any.
    fn step(&self, db: &Database, owner: &TcpStream) -> Result<Step, StepError> {
        let mut s = lock(&self.state);
        if !s.writer.drain_into(owner).map_err(StepError::Send)? {
            return Ok(Step::Blocked);
        }
        let (limit, durable) = (db.sendable_lsn(), db.durable_lsn());
        // A failed write shows at the next step's drain.
        if s.pos < limit {
            self.send_next(&mut s, limit, durable)?;
        } else if s.owes_durable(durable) {
            s.tell_durable(durable);
        } else {
            return Ok(Step::CaughtUp);
        }
        Ok(Step::Sent)
    }

    /// Sends the next frame of WAL toward `limit` (what the socket does not take joins the
    /// backlog) and records it as sent unless the write failed. True when it went out whole.
    fn send_next(&self, s: &mut PushState, limit: Lsn, durable: Lsn) -> Result<bool, StepError> {
        let frame = s.next_frame(limit, durable)?;
        let whole = s.writer.write(&frame, "WAL");
        if s.writer.failed().is_none() {
            self.sent.store(s.pos.0, Ordering::Release);
        }
        Ok(whole)
    }

    /// Sends a keepalive if nothing waits ahead of it (a standby that does not read gets none;
    /// its silence ends the connection at [`STANDBY_TIMEOUT`]).
    fn keepalive(&self, db: &Database) {
        let mut s = lock(&self.state);
        if !s.writer.is_clear() {
            return;
        }
        let durable = db.durable_lsn();
        let message =
            Keepalive { server_flush_lsn: durable.0, server_time_us: now_us(), reply_requested: true };
        if let Ok(frame) = encode_frame(&ServerMessage::from(message)) {
            s.writer.write(&frame, "a keepalive");
            s.told = s.told.max(durable);
        }
    }

    /// Stops the hook and writes out the backlog, so the connection's own writer may send a
    /// last frame. False when the backlog could not be written (the connection is dead or
    /// `within` passed).
    async fn close(&self, owner: &TcpStream, within: Duration) -> bool {
        let drained = tokio::time::timeout(within, async {
            loop {
                {
                    let mut s = lock(&self.state);
                    s.closed = true;
                    match s.writer.drain_into(owner) {
                        Ok(true) => return true,
                        Ok(false) => {}
                        Err(_) => return false,
                    }
                }
                if owner.writable().await.is_err() {
                    return false;
                }
            }
        });
        drained.await.unwrap_or(false)
    }
}

/// How long a closing WAL sender waits for its backlog to go out before its last frame.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the WAL sender waits for while its socket is full.
enum BlockedOn {
    Writable(std::io::Result<()>),
    Message(Incoming),
}

/// Streams WAL from `start.start_lsn` until the connection ends.
async fn stream(
    shared: &Shared,
    transport: &mut Transport,
    peer: SocketAddr,
    application: &str,
    handle: Option<StandbyHandle>,
    start: StartReplication,
) {
    let db = &shared.db;
    let timeline = db.timeline();
    let name =
        if start.standby_name.is_empty() { application.to_string() } else { start.standby_name.clone() };
    if start.timeline != timeline.0 {
        let message =
            format!("timeline {} was requested, but this server is on timeline {timeline}", start.timeline);
        return refuse(
            transport,
            error_code::WAL_MISSING,
            message,
            "timeline switches arrive with promotion",
        )
        .await;
    }
    let pos = Lsn(start.start_lsn);
    // A standby may hold WAL this server wrote but had not made durable when it was sent.
    let sendable = db.sendable_lsn();
    if pos > sendable {
        let message = format!("requested start {pos} is ahead of this server's WAL end {sendable}");
        let hint = "the replica has WAL this server does not: it belongs to another history; re-bootstrap it";
        return refuse(transport, error_code::WAL_MISSING, message, hint).await;
    }
    let slot = (!start.slot.is_empty()).then(|| start.slot.clone());
    let handle = match handle {
        // After a base backup on this connection: the backup's hold already keeps the WAL.
        Some(h) if slot.is_none() => h,
        other => {
            drop(other);
            match shared.replication.register(name.clone(), peer, slot) {
                Ok(h) => h,
                Err(e) => return refuse(transport, e.code, e.message, e.hint.as_deref().unwrap_or("")).await,
            }
        }
    };
    if let Err(e) = db.hold_wal(handle.hold_name(), pos, true) {
        let message = format!("cannot stream from {pos}: {e}");
        let hint = "re-bootstrap the replica from a new base backup (empty its data directory), and use a replication slot so the primary keeps the WAL it needs";
        tracing::warn!(standby = %name, error = %message, "refusing to stream removed WAL");
        return refuse(transport, error_code::WAL_MISSING, message, hint).await;
    }
    let writer = match SideWriter::new(transport.get_ref()) {
        Ok(w) => w,
        Err(e) => {
            let message = format!("duplicate the connection's socket: {e}");
            return refuse(transport, error_code::IO_ERROR, message, "").await;
        }
    };
    let reader = RawWalReader::new(&db.wal_dir(), timeline, db.segment_size_bytes());
    let push = Arc::new(WalPush::new(writer, reader, pos, db.durable_lsn()));
    handle.set_state(StandbyState::Catchup);
    handle.set_push(Arc::clone(&push));
    tracing::info!(standby = %name, start = %pos, "streaming WAL");
    let end = send_wal(shared, transport, &handle, &name, &push).await;
    // From here on nothing else writes: the hook is stopped and the backlog is out (or the
    // connection is dead), so a last frame cannot land inside a WAL frame.
    let drained = push.close(transport.get_ref(), CLOSE_DRAIN_TIMEOUT).await;
    match end {
        End::Quiet => {}
        End::ShuttingDown if drained => refuse_shutting_down(transport).await,
        End::Refuse { code, message, hint } if drained => refuse(transport, code, message, &hint).await,
        End::ShuttingDown | End::Refuse { .. } => {}
    }
}

/// How a WAL stream ends.
enum End {
    /// The standby left, said goodbye, went silent, or the connection failed: nothing to send.
    Quiet,
    /// The server is shutting down: say so.
    ShuttingDown,
    /// Send this error.
    Refuse { code: &'static str, message: String, hint: String },
}

/// Sends WAL until the stream ends: catch-up frame by frame, then whatever the publish hook
/// leaves to this task (see [`WalPush`]), reading the standby's reports throughout.
async fn send_wal(
    shared: &Shared,
    transport: &mut Transport,
    handle: &StandbyHandle,
    name: &str,
    push: &WalPush,
) -> End {
    let db = &shared.db;
    let mut last_heard = Instant::now();
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaming = false;
    loop {
        let step = match push.step(db, transport.get_ref()) {
            Ok(step) => step,
            Err(StepError::Read(e)) => {
                let (code, message, hint) = match e {
                    RawReadError::Missing { .. } => (
                        error_code::WAL_MISSING,
                        format!(
                            "{e}: WAL from {} on was removed before this standby received it",
                            push.pos()
                        ),
                        "re-bootstrap the replica, and use a replication slot so the primary keeps its WAL",
                    ),
                    RawReadError::Io { .. } => (error_code::IO_ERROR, e.to_string(), ""),
                };
                tracing::error!(standby = %name, error = %message, "WAL sender stopped");
                return End::Refuse { code, message, hint: hint.into() };
            }
            Err(StepError::Send(why)) => {
                tracing::info!(standby = %name, error = %why, "standby connection lost");
                return End::Quiet;
            }
        };
        match step {
            Step::Sent => {
                if shared.shutdown.is_cancelled() {
                    return End::ShuttingDown;
                }
                // Between frames, take what the standby sent without waiting.
                while let Some(Some(Ok(message))) = futures::FutureExt::now_or_never(transport.next()) {
                    last_heard = Instant::now();
                    if let Err(end) = on_standby_message(handle, message) {
                        return end;
                    }
                }
                // Frames go out through the duplicate socket, which never tells the runtime
                // this task did work; let the connection's other work run between frames.
                tokio::task::yield_now().await;
            }
            Step::Blocked => {
                // Wait for room, and keep reading the standby's reports meanwhile.
                let ready = std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = transport.get_ref().poll_write_ready(cx) {
                        return Poll::Ready(BlockedOn::Writable(r));
                    }
                    transport.poll_next_unpin(cx).map(|m| BlockedOn::Message(incoming(m)))
                });
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled() => return End::ShuttingDown,
                    ready = ready => match ready {
                        BlockedOn::Writable(Ok(())) => {}
                        BlockedOn::Writable(Err(e)) => {
                            tracing::info!(standby = %name, error = %e, "standby connection lost");
                            return End::Quiet;
                        }
                        BlockedOn::Message(incoming) => {
                            if let Err(end) = on_incoming(handle, name, incoming, &mut last_heard) {
                                return end;
                            }
                        }
                    },
                    _ = keepalive.tick() => {
                        if last_heard.elapsed() > STANDBY_TIMEOUT {
                            tracing::warn!(standby = %name, "standby silent for {STANDBY_TIMEOUT:?}; closing");
                            return End::Quiet;
                        }
                    }
                }
            }
            Step::CaughtUp => {
                if !streaming {
                    streaming = true;
                    handle.set_state(StandbyState::Streaming);
                }
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled() => return End::ShuttingDown,
                    message = recv(transport) => {
                        if let Err(end) = on_incoming(handle, name, message, &mut last_heard) {
                            return end;
                        }
                    }
                    () = push.wake.notified() => {}
                    _ = keepalive.tick() => {
                        if last_heard.elapsed() > STANDBY_TIMEOUT {
                            tracing::warn!(standby = %name, "standby silent for {STANDBY_TIMEOUT:?}; closing");
                            return End::Quiet;
                        }
                        push.keepalive(db);
                    }
                }
            }
        }
    }
}

/// Handles what reading from a streaming standby gave; `Err` ends the stream.
fn on_incoming(
    handle: &StandbyHandle,
    name: &str,
    incoming: Incoming,
    last_heard: &mut Instant,
) -> Result<(), End> {
    match incoming {
        Incoming::Message(message) => {
            *last_heard = Instant::now();
            on_standby_message(handle, message)
        }
        Incoming::Eof | Incoming::Failed(_) => {
            tracing::info!(standby = %name, "standby disconnected");
            Err(End::Quiet)
        }
        Incoming::Violation(e) => Err(End::Refuse {
            code: error_code::PROTOCOL_VIOLATION,
            message: e.to_string(),
            hint: String::new(),
        }),
    }
}

/// Handles a message from a streaming standby; `Err` ends the stream.
fn on_standby_message(handle: &StandbyHandle, message: ClientMessage) -> Result<(), End> {
    match message.msg {
        Some(Msg::StandbyStatus(s)) => {
            handle.ack(StandbyPositions {
                received: Lsn(s.received_lsn),
                written: Lsn(s.written_lsn),
                flushed: Lsn(s.flushed_lsn),
                replayed: Lsn(s.replayed_lsn),
            });
            Ok(())
        }
        Some(Msg::Terminate(_)) => Err(End::Quiet),
        other => {
            let kind = hindsight_protocol::Envelope::kind(&ClientMessage { msg: other });
            let message = format!("{kind} is not accepted while WAL streams");
            Err(End::Refuse { code: error_code::PROTOCOL_VIOLATION, message, hint: String::new() })
        }
    }
}
