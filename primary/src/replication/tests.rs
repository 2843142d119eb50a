//! Tests of [`Replication`] over a real database in a temporary directory.

use super::*;
use hindsight_engine::db::Config;
use std::future::Future;

const DEADLINE: Duration = Duration::from_secs(10);

fn open(config: Config) -> (tempfile::TempDir, Arc<Database>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::open(dir.path(), Config { fsync: false, ..config }).expect("open database");
    (dir, db)
}

fn replication(dir: &tempfile::TempDir, db: &Arc<Database>, rule: &str) -> Arc<Replication> {
    Replication::new(Arc::clone(db), dir.path(), rule).expect("replication state")
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn at(lsn: u64) -> StandbyPositions {
    StandbyPositions { received: Lsn(lsn), written: Lsn(lsn), flushed: Lsn(lsn), replayed: Lsn(lsn) }
}

fn streaming(r: &Arc<Replication>, name: &str, port: u16) -> StandbyHandle {
    let h = r.register(name.into(), peer(port), None).expect("register");
    h.set_state(StandbyState::Streaming);
    h
}

/// Whether `fut` is still pending after the others had a chance to run.
async fn still_pending<F: Future + Unpin>(fut: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(50), fut).await.is_err()
}

fn rows(result: StatementResult) -> Vec<Vec<Value>> {
    match result {
        StatementResult::Rows { rows, .. } => rows,
        other => panic!("expected rows, got {other:?}"),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[tokio::test]
async fn wait_for_is_woken_by_acks() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a)");
    let cancel = CancellationToken::new();
    // Local and Off never wait.
    r.wait_for(Lsn(1000), SyncLevel::Local, &cancel).await.unwrap();
    r.wait_for(Lsn(1000), SyncLevel::Off, &cancel).await.unwrap();

    let a = r.register("A".into(), peer(1), None).unwrap();
    let mut wait = Box::pin(r.wait_for(Lsn(100), SyncLevel::RemoteFlush, &cancel));
    assert!(still_pending(&mut wait).await, "a is still catching up");
    a.set_state(StandbyState::Streaming);
    a.ack(StandbyPositions { received: Lsn(150), written: Lsn(120), flushed: Lsn(90), replayed: Lsn(10) });
    assert!(still_pending(&mut wait).await, "flushed 90 < 100");
    a.ack(StandbyPositions { received: Lsn(150), written: Lsn(120), flushed: Lsn(100), replayed: Lsn(10) });
    tokio::time::timeout(DEADLINE, wait).await.expect("woken by the ack").unwrap();
    // Already confirmed at write level; not at apply level.
    r.wait_for(Lsn(120), SyncLevel::RemoteWrite, &cancel).await.unwrap();
    let mut apply = Box::pin(r.wait_for(Lsn(100), SyncLevel::RemoteApply, &cancel));
    assert!(still_pending(&mut apply).await);
    cancel.cancel();
    assert_eq!(tokio::time::timeout(DEADLINE, apply).await.expect("cancelled"), Err(WaitCancelled));
}

#[tokio::test]
async fn an_ack_wakes_only_the_waits_it_satisfies() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a)");
    let cancel = CancellationToken::new();
    let a = streaming(&r, "a", 1);
    let mut apply_100 = Box::pin(r.wait_for(Lsn(100), SyncLevel::RemoteApply, &cancel));
    let mut apply_200 = Box::pin(r.wait_for(Lsn(200), SyncLevel::RemoteApply, &cancel));
    let mut write_150 = Box::pin(r.wait_for(Lsn(150), SyncLevel::RemoteWrite, &cancel));
    let mut flush_150 = Box::pin(r.wait_for(Lsn(150), SyncLevel::RemoteFlush, &cancel));
    for wait in [&mut apply_100, &mut apply_200, &mut write_150, &mut flush_150] {
        assert!(still_pending(wait).await, "nothing confirmed yet");
    }
    assert_eq!(r.queued_waits(), 4);
    a.ack(StandbyPositions { received: Lsn(160), written: Lsn(160), flushed: Lsn(140), replayed: Lsn(120) });
    tokio::time::timeout(DEADLINE, apply_100).await.expect("replayed 120 >= 100").unwrap();
    tokio::time::timeout(DEADLINE, write_150).await.expect("written 160 >= 150").unwrap();
    assert!(still_pending(&mut apply_200).await, "replayed 120 < 200");
    assert!(still_pending(&mut flush_150).await, "flushed 140 < 150");
    assert_eq!(r.queued_waits(), 2, "the woken waits left the queue");

    // A session that stops waiting (its client left) leaves a wait that the next
    // confirmation past it removes; a cancelled wait removes itself.
    drop(apply_200);
    a.ack(at(300));
    tokio::time::timeout(DEADLINE, flush_150).await.expect("flushed 300 >= 150").unwrap();
    assert_eq!(r.queued_waits(), 0);
    let mut apply_400 = Box::pin(r.wait_for(Lsn(400), SyncLevel::RemoteApply, &cancel));
    assert!(still_pending(&mut apply_400).await);
    cancel.cancel();
    assert_eq!(tokio::time::timeout(DEADLINE, apply_400).await.expect("cancelled"), Err(WaitCancelled));
    assert_eq!(r.queued_waits(), 0);
}

#[tokio::test]
async fn without_synchronous_standbys_nothing_waits() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "");
    let cancel = CancellationToken::new();
    for level in [SyncLevel::RemoteWrite, SyncLevel::RemoteFlush, SyncLevel::RemoteApply] {
        tokio::time::timeout(DEADLINE, r.wait_for(Lsn(u64::MAX), level, &cancel)).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_disconnect_hands_the_wait_to_the_next_standby() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a, b)");
    let cancel = CancellationToken::new();
    let a = streaming(&r, "a", 1);
    let b = streaming(&r, "b", 2);
    a.ack(at(50));
    b.ack(at(200));
    let mut wait = Box::pin(r.wait_for(Lsn(100), SyncLevel::RemoteApply, &cancel));
    assert!(still_pending(&mut wait).await, "a (priority 1) is at 50");
    drop(a);
    tokio::time::timeout(DEADLINE, wait).await.expect("woken by the disconnect").unwrap();

    // ANY 2: the second standby's confirmation completes the quorum.
    let r = replication(&dir, &db, "ANY 2 (x, y, z)");
    let x = streaming(&r, "x", 3);
    let y = streaming(&r, "y", 4);
    x.ack(at(500));
    let mut wait = Box::pin(r.wait_for(Lsn(300), SyncLevel::RemoteWrite, &cancel));
    assert!(still_pending(&mut wait).await);
    y.ack(at(300));
    tokio::time::timeout(DEADLINE, wait).await.expect("quorum reached").unwrap();
}

#[test]
fn acks_clamp_the_ladder_and_never_go_back() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "");
    let h = r.register("a".into(), peer(1), None).unwrap();
    // A confused standby: flushed past written, replayed past flushed.
    h.ack(StandbyPositions { received: Lsn(100), written: Lsn(80), flushed: Lsn(90), replayed: Lsn(95) });
    h.ack(at(10)); // older: ignored
    h.sent(Lsn(120));
    h.sent(Lsn(110));
    let rows = rows(r.show_replication().unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][..7],
        [
            text("a"),
            text("127.0.0.1:1"),
            text("catchup"),
            text("0/78"),
            text("0/50"),
            text("0/50"),
            text("0/50")
        ]
    );
    assert_eq!(rows[0][10], text("async"));
    assert_eq!(rows[0][11..], [Value::Null, Value::Null, Value::Null]);
}

#[test]
fn lag_is_measured_from_publish_samples() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "a");
    let h = streaming(&r, "a", 1);
    r.on_published(Lsn(100));
    std::thread::sleep(Duration::from_millis(20));
    r.on_published(Lsn(200));
    h.ack(StandbyPositions { received: Lsn(200), written: Lsn(200), flushed: Lsn(150), replayed: Lsn(50) });
    let row = rows(r.show_replication().unwrap()).remove(0);
    let ms = |v: &Value| match v {
        Value::Double(ms) => *ms,
        other => panic!("expected a lag, got {other:?}"),
    };
    assert!(ms(&row[7]) < ms(&row[8]), "write passed the newer sample: {row:?}");
    assert!(ms(&row[8]) >= 20.0, "flush is timed from the sample at 100: {row:?}");
    assert_eq!(row[9], Value::Null, "replay passed no sample yet");
    assert_eq!(row[10], text("sync"));
}

#[test]
fn slots_are_created_used_dropped_and_survive_restarts() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "");
    let flushed = db.flushed_lsn();
    let created = rows(r.create_replication_slot("r1").unwrap());
    assert_eq!(created, vec![vec![text("r1"), text(&flushed.to_string())]]);
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, flushed);
    let e = r.create_replication_slot("r1").unwrap_err();
    assert_eq!(e.code, ErrorCode::DuplicateObject);
    assert!(e.message.contains("\"r1\""), "{e}");

    // Unknown slot: refused.
    let e = r.register("a".into(), peer(1), Some("nope".into())).unwrap_err();
    assert_eq!(e.code, error_code::UNDEFINED_OBJECT);
    assert!(
        e.message.contains("\"nope\"") && e.hint.as_deref().unwrap().contains("CREATE REPLICATION SLOT"),
        "{e}"
    );
    // In use: refused, naming the user; the slot cannot be dropped either.
    let h = r.register("a".into(), peer(1), Some("R1".into())).unwrap();
    let e = r.register("b".into(), peer(2), Some("r1".into())).unwrap_err();
    assert_eq!(e.code, error_code::OBJECT_IN_USE);
    assert!(e.message.contains("\"a\""), "{e}");
    assert_eq!(r.drop_replication_slot("r1").unwrap_err().code, ErrorCode::ObjectInUse);

    // Acks move the slot and the connection hold (once the server placed it).
    db.hold_wal(h.hold_name(), flushed, true).unwrap();
    h.ack(at(flushed.0 + 10));
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, Lsn(flushed.0 + 10));
    assert_eq!(db.wal_hold(h.hold_name()).unwrap().lsn, Lsn(flushed.0 + 10));
    let row = rows(r.show_replication().unwrap()).remove(0);
    assert_eq!(row[11..], [text("r1"), text(&Lsn(flushed.0 + 10).to_string()), text("reserved")]);
    let hold = h.hold_name().to_string();
    drop(h);
    assert!(db.wal_hold(&hold).is_none(), "the connection's hold goes with it");
    let row = rows(r.show_replication().unwrap()).remove(0);
    assert_eq!(row[..3], [text("r1"), Value::Null, text("disconnected")]);

    // A restart brings the slot back at its last restart Lsn, hold included.
    drop(r);
    db.release_wal("slot:r1");
    let r = replication(&dir, &db, "");
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, Lsn(flushed.0 + 10));
    assert_eq!(r.drop_replication_slot("r1").unwrap(), StatementResult::tag("DROP REPLICATION SLOT"));
    assert!(db.wal_hold("slot:r1").is_none());
    assert_eq!(r.drop_replication_slot("r1").unwrap_err().code, ErrorCode::UndefinedObject);
    assert_eq!(slots::load(&dir.path().join(slots::SLOTS_FILE)).unwrap(), vec![]);
    assert_eq!(r.show_recovery().unwrap_err().code, ErrorCode::FeatureNotSupported);
}

#[test]
fn an_invalidated_slot_is_shown_persisted_and_refused() {
    let config = Config { max_slot_wal_keep_bytes: Some(1), ..Config::default() };
    let (dir, db) = open(config.clone());
    let r = replication(&dir, &db, "");
    r.create_replication_slot("far_behind").unwrap();
    let mut session = hindsight_engine::sql::Session::new(Arc::clone(&db));
    for sql in ["CREATE TABLE t (id BIGINT PRIMARY KEY)", "INSERT INTO t VALUES (1)", "CHECKPOINT"] {
        session.execute(sql).pop().unwrap().unwrap();
    }
    assert!(db.wal_hold("slot:far_behind").unwrap().invalidated.is_some(), "the engine gave up on the slot");
    let row = rows(r.show_replication().unwrap()).remove(0);
    let Value::Text(status) = &row[13] else { panic!("{row:?}") };
    assert!(status.starts_with("invalidated: ") && status.contains("max_slot_wal_keep_bytes"), "{status}");
    assert!(!status.contains("invalidated: invalidated"), "{status}");
    let e = r.register("a".into(), peer(1), Some("far_behind".into())).unwrap_err();
    assert_eq!(e.code, error_code::WAL_MISSING);
    let hint = e.hint.unwrap();
    assert!(hint.contains("DROP REPLICATION SLOT far_behind") && hint.contains("base backup"), "{hint}");

    // Persisted: after a restart (of the server, not the engine) it is still invalidated.
    drop(r);
    db.release_wal("slot:far_behind");
    let r = replication(&dir, &db, "");
    assert!(db.wal_hold("slot:far_behind").is_none(), "an invalidated slot keeps no WAL");
    assert_eq!(
        r.register("a".into(), peer(1), Some("far_behind".into())).unwrap_err().code,
        error_code::WAL_MISSING
    );
    // Dropping and re-creating it is the way out.
    r.drop_replication_slot("far_behind").unwrap();
    r.create_replication_slot("far_behind").unwrap();
    r.register("a".into(), peer(1), Some("far_behind".into())).unwrap();
}

#[test]
fn a_corrupt_slot_file_or_bad_rule_stops_startup() {
    let (dir, db) = open(Config::default());
    std::fs::write(dir.path().join(slots::SLOTS_FILE), b"HSRS but not really a slot file").unwrap();
    let e = Replication::new(Arc::clone(&db), dir.path(), "").unwrap_err().to_string();
    assert!(e.contains("replication_slots") && e.contains("corrupt"), "{e}");
    std::fs::remove_file(dir.path().join(slots::SLOTS_FILE)).unwrap();
    let e = Replication::new(Arc::clone(&db), dir.path(), "FIRST 3 (a)").unwrap_err().to_string();
    assert!(e.contains("invalid configuration") && e.contains("synchronous_standbys"), "{e}");
}

#[test]
fn standbys_are_bounded() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "");
    let handles: Vec<_> =
        (0..STANDBYS_MAX).map(|i| r.register(format!("s{i}"), peer(1), None).unwrap()).collect();
    let e = r.register("one_more".into(), peer(1), None).unwrap_err();
    assert_eq!(e.code, error_code::TOO_MANY_CONNECTIONS);
    drop(handles);
    r.register("one_more".into(), peer(1), None).unwrap();
}

#[test]
fn sessions_tell_the_engine_which_commits_wait_for_standbys() {
    let (dir, db) = open(Config::default());
    let with_rule = replication(&dir, &db, "ANY 1 (a, b)");
    let waits = |r: &Replication, level: &str| r.commit_waits_for_standbys(level);
    for level in ["remote_write", "remote_flush", "remote_apply"] {
        assert!(waits(&with_rule, level), "{level} waits when synchronous standbys are named");
    }
    for level in ["off", "local", "not_a_level"] {
        assert!(!waits(&with_rule, level), "{level} never waits for standbys");
    }
    drop(with_rule);
    let (dir, db) = open(Config::default());
    let without_rule = replication(&dir, &db, "");
    assert!(!waits(&without_rule, "remote_apply"), "no synchronous standbys: nothing to wait for");
}
