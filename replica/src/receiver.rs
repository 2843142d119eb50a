//! The WAL receiver: streams WAL from the upstream into the standby database and reports the
//! Lsn ladder back (received ≥ written ≥ flushed ≥ replayed) after every publish, so the
//! upstream measures lag from real acknowledgements. Reconnects with capped exponential backoff
//! when the link drops or the upstream restarts; the reason is shown in SHOW RECOVERY.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hindsight_engine::Database;
use hindsight_protocol::wire::{server_message::Msg, StandbyStatus, StartReplication, Terminate};
use hindsight_protocol::{ClientCodec, ClientMessage, Lsn};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::watch;
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

/// Runs until `stop`: streams, and on any failure waits (50 ms doubling to 5 s) and reconnects.
/// `connection` is the bootstrap's connection, already positioned at the backup Lsn.
pub(crate) async fn run(
    db: Arc<Database>,
    config: ReplicaConfig,
    state: Arc<RecoveryState>,
    mut published: watch::Receiver<Lsn>,
    mut connection: Option<Upstream>,
    stop: CancellationToken,
) {
    let mut received = db.status().insert_lsn;
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
                stream(&db, &config, &state, &mut published, upstream, &mut received, &stop).await
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
    published: &mut watch::Receiver<Lsn>,
    mut upstream: Upstream,
    received: &mut Lsn,
    stop: &CancellationToken,
) -> Result<(), (String, bool)> {
    let start = StartReplication {
        timeline: db.timeline().0,
        start_lsn: received.0,
        slot: config.slot.clone().unwrap_or_default(),
        standby_name: config.name.clone(),
    };
    let mut streamed = false;
    let fail = |e: String, streamed: bool| (e, streamed);
    upstream.send(ClientMessage::from(start)).await.map_err(|e| fail(e.to_string(), false))?;
    state.set_phase("streaming");
    tracing::info!(upstream = %config.primary, start = %received, "streaming WAL");
    let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                let _ = upstream.send(ClientMessage::from(Terminate {})).await;
                return Ok(());
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
                        if !streamed {
                            streamed = true;
                            state.info.lock().last_error = None;
                        }
                        let mut info = state.info.lock();
                        info.received_lsn = *received;
                        info.upstream_flush_lsn = Lsn(wal.server_flush_lsn);
                    }
                    Some(Msg::Keepalive(k)) => {
                        {
                            let mut info = state.info.lock();
                            info.upstream_flush_lsn = Lsn(k.server_flush_lsn);
                            info.received_lsn = *received;
                        }
                        if k.reply_requested {
                            send_status(db, &mut upstream, *received).await.map_err(|e| fail(e, streamed))?;
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
            changed = published.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                send_status(db, &mut upstream, *received).await.map_err(|e| fail(e, streamed))?;
            }
            _ = status_timer.tick() => {
                if last_heard.elapsed() > UPSTREAM_TIMEOUT {
                    return Err(fail(format!("the upstream was silent for {} s", UPSTREAM_TIMEOUT.as_secs()), streamed));
                }
                send_status(db, &mut upstream, *received).await.map_err(|e| fail(e, streamed))?;
            }
        }
    }
}

/// Reports the Lsn ladder upstream.
async fn send_status(db: &Database, upstream: &mut Upstream, received: Lsn) -> Result<(), String> {
    let s = db.status();
    let replayed = s.visible_lsn;
    let flushed = s.flushed_lsn.max(replayed);
    let written = s.insert_lsn.max(flushed);
    let received = received.max(written);
    let status = StandbyStatus {
        received_lsn: received.0,
        written_lsn: written.0,
        flushed_lsn: flushed.0,
        replayed_lsn: replayed.0,
        client_time_us: now_us(),
        reply_requested: false,
    };
    upstream.send(ClientMessage::from(status)).await.map_err(|e| e.to_string())
}
