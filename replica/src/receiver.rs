//! The WAL receiver: streams WAL from the upstream into the standby database and reports the
//! Lsn ladder back (received ≥ written ≥ flushed ≥ replayed) after every publish, so the
//! upstream measures lag from real acknowledgements. Reconnects with capped exponential backoff
//! when the link drops or the upstream restarts; the reason is shown in SHOW RECOVERY.
//!
//! The report after a publish is written by the engine's flusher thread itself, straight after
//! the fdatasync that made the WAL durable ([`StatusReporter`], a publish hook): the
//! acknowledgement a `remote_apply` commit waits for does not wait for this task to wake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hindsight_engine::Database;
use hindsight_primary::sidewrite::SideWriter;
use hindsight_protocol::wire::{server_message::Msg, StandbyStatus, StartReplication, Terminate};
use hindsight_protocol::{encode_frame, ClientCodec, ClientMessage, Lsn};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::ReplicaConfig;

/// A replication connection to the upstream.
pub type Upstream = Framed<TcpStream, ClientCodec>;

/// The first wait before reconnecting.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A status report goes upstream at least this often, even with nothing new.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// An upstream silent for this long (it sends keepalives every second) is dropped.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What SHOW RECOVERY reports about the receiver.
#[derive(Clone, Debug)]
pub struct RecoveryInfo {
    /// `bootstrapping`, `connecting`, `streaming`, `waiting to reconnect`, `stopped`.
    pub phase: &'static str,
    /// The upstream address.
    pub upstream: String,
    /// The end of the WAL received.
    pub received_lsn: Lsn,
    /// The upstream's durable WAL end, as it last said.
    pub upstream_flush_lsn: Lsn,
    /// The latest problem, if any (cleared once streaming resumes).
    pub last_error: Option<String>,
    /// Reconnections since start.
    pub reconnects: u64,
}

/// The receiver's state, shared with SHOW RECOVERY.
#[derive(Debug)]
pub struct RecoveryState {
    info: Mutex<RecoveryInfo>,
}

impl RecoveryState {
    pub(crate) fn new(upstream: &str) -> RecoveryState {
        RecoveryState {
            info: Mutex::new(RecoveryInfo {
                phase: "connecting",
                upstream: upstream.to_string(),
                received_lsn: Lsn::ZERO,
                upstream_flush_lsn: Lsn::ZERO,
                last_error: None,
                reconnects: 0,
            }),
        }
    }

    /// A copy of the current state.
    pub fn info(&self) -> RecoveryInfo {
        self.info.lock().clone()
    }

    pub(crate) fn set_phase(&self, phase: &'static str) {
        self.info.lock().phase = phase;
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Writes `StandbyStatus` reports upstream from whichever thread has one: the engine's flusher
/// after every publish (a publish hook), or the receiver task (keepalive replies, the periodic
/// report). A report is one whole frame written without blocking on a duplicate of the
/// connection's socket ([`SideWriter`]); what the socket does not take at once waits in the
/// writer's backlog, which the receiver task writes before anything else, so frames never
/// interleave.
///
/// Invariants:
/// - While the writer's backlog or `link.next` holds bytes, only [`StatusReporter::drain`]
///   writes to the socket, and a wake-up of `backlog_waiting` is pending or `drain` is running.
/// - The backlog is at most two frames: the rest of one the socket took part of (or one it
///   took none of), and the newest in `next` (reports are cumulative, so a newer one replaces
///   an older one unsent).
/// - Reports may leave in a different order than their positions were read (the flusher and
///   the receiver task both send); the upstream keeps the highest positions it was told.
#[derive(Debug)]
pub struct StatusReporter {
    /// Weak: the database holds this reporter in its publish hooks.
    db: Weak<Database>,
    /// The end of the WAL received (handed to the engine) on the current connection.
    received: AtomicU64,
    link: Mutex<Link>,
    /// Signalled when the link's backlog has bytes, or its writer failed.
    backlog_waiting: Notify,
}

#[derive(Debug, Default)]
struct Link {
    /// Writes on a duplicate of the streaming connection's socket; `None` while not streaming.
    writer: Option<SideWriter>,
    /// The newest frame not started yet, waiting behind the writer's backlog.
    next: Option<bytes::Bytes>,
}

impl StatusReporter {
    pub(crate) fn new(db: &Arc<Database>) -> Arc<StatusReporter> {
        Arc::new(StatusReporter {
            db: Arc::downgrade(db),
            received: AtomicU64::new(0),
            link: Mutex::new(Link::default()),
            backlog_waiting: Notify::new(),
        })
    }

    /// Reports go to `upstream` from now on (after its StartReplication).
    fn attach(&self, upstream: &TcpStream, received: Lsn) -> Result<(), String> {
        let writer = SideWriter::new(upstream).map_err(|e| format!("duplicate the socket: {e}"))?;
        self.received.store(received.0, Ordering::Release);
        *self.link.lock() = Link { writer: Some(writer), next: None };
        Ok(())
    }

    /// The connection ended: reports stop until the next `attach`.
    fn detach(&self) {
        *self.link.lock() = Link::default();
    }

    fn set_received(&self, received: Lsn) {
        self.received.store(received.0, Ordering::Release);
    }

    /// Reports the Lsn ladder upstream now, if streaming. Never blocks.
    ///
    /// The ladder is read with the link locked: a ladder read while one connection was
    /// attached never goes out on the next one, whose stream may start lower (decision #34).
    pub fn report(&self) {
        let link = self.link.lock();
        if link.writer.is_none() {
            return;
        }
        let Some(db) = self.db.upgrade() else { return };
        let (written, flushed, replayed) = db.lsn_ladder();
        let flushed = flushed.max(replayed);
        let written = written.max(flushed);
        let received = Lsn(self.received.load(Ordering::Acquire)).max(written);
        let status = StandbyStatus {
            received_lsn: received.0,
            written_lsn: written.0,
            flushed_lsn: flushed.0,
            replayed_lsn: replayed.0,
            client_time_us: now_us(),
            reply_requested: false,
        };
        self.send_on(link, &ClientMessage::from(status));
    }

    /// Writes one message's frame, or queues what the socket does not take. Never blocks.
    fn send(&self, message: &ClientMessage) {
        self.send_on(self.link.lock(), message)
    }

    /// [`send`](StatusReporter::send) with the link already locked.
    fn send_on(&self, mut link: parking_lot::MutexGuard<'_, Link>, message: &ClientMessage) {
        let frame = match encode_frame(message) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(error = %e, "could not encode a message for the upstream");
                return;
            }
        };
        let Link { writer: Some(writer), next } = &mut *link else { return };
        if !writer.is_clear() || next.is_some() {
            *next = Some(frame);
            return;
        }
        if !writer.write(&frame, "a status report") {
            drop(link);
            self.backlog_waiting.notify_one();
        }
    }

    /// Writes the backlog through the connection's own socket, waiting for it to take it.
    async fn drain(&self, upstream: &TcpStream) -> Result<(), String> {
        loop {
            {
                let mut link = self.link.lock();
                let Link { writer: Some(writer), next } = &mut *link else { return Ok(()) };
                if writer.drain_into(upstream)? {
                    match next.take() {
                        Some(frame) => {
                            writer.enqueue(&frame);
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
            }
            upstream.writable().await.map_err(|e| format!("send a status report: {e}"))?;
        }
    }
}

/// Runs until `stop`: streams, and on any failure waits (50 ms doubling to 5 s) and reconnects.
/// `connection` is the bootstrap's connection, already positioned at the backup Lsn.
pub(crate) async fn run(
    db: Arc<Database>,
    config: ReplicaConfig,
    state: Arc<RecoveryState>,
    reporter: Arc<StatusReporter>,
    mut connection: Option<Upstream>,
    stop: CancellationToken,
) {
    let mut received = Lsn::ZERO;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        let upstream = match connection.take() {
            Some(c) => Ok(c),
            None => {
                state.set_phase("connecting");
                tokio::select! {
                    () = stop.cancelled() => return,
                    c = crate::bootstrap::connect(&config, db.system_id()) => c,
                }
            }
        };
        let outcome = match upstream {
            Ok(upstream) => {
                let streamed = stream(&db, &config, &state, &reporter, upstream, &mut received, &stop).await;
                reporter.detach();
                streamed
            }
            Err(e) => Err((e, false)),
        };
        let streamed = match outcome {
            Ok(()) => return,
            Err((why, streamed)) => {
                tracing::warn!(upstream = %config.primary, error = %why, "replication stopped; reconnecting");
                let mut info = state.info.lock();
                info.last_error = Some(why);
                info.reconnects += 1;
                streamed
            }
        };
        if db.status().replay_error.is_some() {
            state.set_phase("stopped");
            tracing::error!("replay stopped on bad WAL; the receiver stops too (see SHOW RECOVERY)");
            return;
        }
        if streamed {
            backoff = RECONNECT_BACKOFF_MIN;
        }
        state.set_phase("waiting to reconnect");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// One connection's streaming. `Ok` on stop; otherwise why it ended and whether WAL flowed.
async fn stream(
    db: &Arc<Database>,
    config: &ReplicaConfig,
    state: &RecoveryState,
    reporter: &StatusReporter,
    mut upstream: Upstream,
    received: &mut Lsn,
    stop: &CancellationToken,
) -> Result<(), (String, bool)> {
    let fail = |e: String, streamed: bool| (e, streamed);
    // Usually where the last connection's WAL ended; the Lsn the upstream last confirmed
    // durable if this replica holds WAL past it, which the upstream may have lost in a crash
    // (decision #34): what it sends again is compared with that WAL.
    *received = tokio::task::block_in_place(|| db.resume_stream())
        .map_err(|e| fail(format!("replay stopped: {e}"), false))?;
    let start = StartReplication {
        timeline: db.timeline().0,
        start_lsn: received.0,
        slot: config.slot.clone().unwrap_or_default(),
        standby_name: config.name.clone(),
    };
    let mut streamed = false;
    upstream.send(ClientMessage::from(start)).await.map_err(|e| fail(e.to_string(), false))?;
    // From here on every message upstream goes through the reporter, so frames never interleave.
    reporter.attach(upstream.get_ref(), *received).map_err(|e| fail(e, false))?;
    state.set_phase("streaming");
    tracing::info!(upstream = %config.primary, start = %received, "streaming WAL");
    let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                // Best effort: an upstream that is not reading does not hold up the stop.
                reporter.send(&ClientMessage::from(Terminate {}));
                return Ok(());
            }
            // Reports the socket did not take go out before more WAL is read, so the upstream
            // hears them soon; an upstream that takes none for UPSTREAM_TIMEOUT is dropped.
            () = reporter.backlog_waiting.notified() => {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    drained = tokio::time::timeout(UPSTREAM_TIMEOUT, reporter.drain(upstream.get_ref())) => match drained {
                        Ok(drained) => drained.map_err(|e| fail(e, streamed))?,
                        Err(_) => return Err(fail(format!("the upstream took no status report for {} s", UPSTREAM_TIMEOUT.as_secs()), streamed)),
                    },
                }
            }
            message = upstream.next() => {
                last_heard = Instant::now();
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(fail(e.to_string(), streamed)),
                    None => return Err(fail("the upstream closed the connection".into(), streamed)),
                };
                match message.msg {
                    Some(Msg::WalData(wal)) => {
                        if wal.start_lsn != received.0 {
                            return Err(fail(format!("WAL arrived at {} where {} was due", Lsn(wal.start_lsn), received), streamed));
                        }
                        let len = wal.data.len() as u64;
                        let start = *received;
                        // Blocks (handing this worker's other tasks to another thread) only
                        // while the committer's bounded queue is full: back-pressure.
                        let applied = match db.try_apply_wal(start, wal.data.to_vec()) {
                            Ok(Some(bytes)) => tokio::task::block_in_place(|| db.apply_wal(start, bytes)),
                            other => other.map(|_| ()),
                        };
                        applied.map_err(|e| fail(format!("replay stopped: {e}"), streamed))?;
                        *received = start.add(len);
                        reporter.set_received(*received);
                        if !streamed {
                            streamed = true;
                            state.info.lock().last_error = None;
                        }
                        {
                            let mut info = state.info.lock();
                            info.received_lsn = *received;
                            info.upstream_flush_lsn = Lsn(wal.server_flush_lsn);
                        }
                        // The upstream sends WAL before it is durable (decision #34): what it
                        // reports durable may become visible, the rest waits.
                        db.confirm_upstream(Lsn(wal.server_flush_lsn).min(*received));
                    }
                    Some(Msg::Keepalive(k)) => {
                        {
                            let mut info = state.info.lock();
                            info.upstream_flush_lsn = Lsn(k.server_flush_lsn);
                            info.received_lsn = *received;
                        }
                        db.confirm_upstream(Lsn(k.server_flush_lsn).min(*received));
                        if k.reply_requested {
                            reporter.report();
                        }
                    }
                    Some(Msg::Error(e)) => {
                        let hint = if e.hint.is_empty() { String::new() } else { format!("; hint: {}", e.hint) };
                        return Err(fail(format!("{} ({}){hint}", e.message, e.code), streamed));
                    }
                    Some(Msg::TimelineSwitch(t)) => {
                        return Err(fail(format!("the upstream switched to timeline {}; following timelines arrives with promotion", t.timeline), streamed));
                    }
                    _ => return Err(fail("unexpected message while streaming".into(), streamed)),
                }
            }
            _ = status_timer.tick() => {
                if last_heard.elapsed() > UPSTREAM_TIMEOUT {
                    return Err(fail(format!("the upstream was silent for {} s", UPSTREAM_TIMEOUT.as_secs()), streamed));
                }
                reporter.report();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hindsight_protocol::wire::client_message::Msg as ClientMsg;
    use hindsight_protocol::ServerCodec;

    fn status(n: u64) -> ClientMessage {
        ClientMessage::from(StandbyStatus {
            received_lsn: n,
            written_lsn: n,
            flushed_lsn: n,
            replayed_lsn: n,
            client_time_us: 0,
            reply_requested: false,
        })
    }

    #[tokio::test]
    async fn reports_the_socket_cannot_take_wait_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reporter = StatusReporter {
            db: Weak::new(),
            received: AtomicU64::new(0),
            link: Mutex::new(Link::default()),
            backlog_waiting: Notify::new(),
        };
        reporter.attach(&client, Lsn(0)).unwrap();
        // Nobody reads yet: send until the socket refuses part of a report.
        let mut sent = 0u64;
        let backlogged = |r: &StatusReporter| {
            let link = r.link.lock();
            link.writer.as_ref().is_some_and(|w| w.backlog_len() > 0) || link.next.is_some()
        };
        while !backlogged(&reporter) {
            sent += 1;
            assert!(sent < 10_000_000, "the socket never filled");
            reporter.send(&status(sent));
        }
        let first_refused = sent;
        // Later reports wait behind the backlog, never ahead of it, and only the newest waits.
        for _ in 0..10 {
            sent += 1;
            reporter.send(&status(sent));
        }
        let reader = tokio::spawn(async move {
            let mut frames = Framed::new(server, ServerCodec::new());
            let mut got = Vec::new();
            while got.last() != Some(&sent) {
                match frames.next().await.expect("a frame").expect("a whole frame").msg {
                    Some(ClientMsg::StandbyStatus(s)) => got.push(s.received_lsn),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        });
        tokio::time::timeout(Duration::from_secs(10), reporter.backlog_waiting.notified())
            .await
            .expect("the backlog was signalled");
        tokio::time::timeout(Duration::from_secs(10), reporter.drain(&client)).await.unwrap().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
        // Every report before the refusal, the refused one if the socket took part of it, then
        // the newest: whole frames, in order.
        let (last, before) = got.split_last().expect("reports arrived");
        assert_eq!(*last, sent);
        let k = before.len() as u64;
        assert!(k == first_refused || k == first_refused - 1, "{k} reports before the newest");
        assert_eq!(before, (1..=k).collect::<Vec<_>>());
    }
}
