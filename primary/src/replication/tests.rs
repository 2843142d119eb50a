//! Tests of [`Replication`] over a real database in a temporary directory.

use super::*;
use hindsight_engine::db::Config;
use hindsight_engine::reply::ReplyRx;
use hindsight_engine::txn::CommitInfo;
use hindsight_protocol::TxId;

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

type Answer = ReplyRx<hindsight_engine::Result<CommitInfo>>;

/// Relays a durable commit ending at `lsn`, as the engine's flusher does; returns where its
/// answer arrives.
fn relayed(r: &Replication, lsn: u64, level: SyncLevel) -> Answer {
    let (pending, answer) = durable_at(lsn);
    r.relay(level, pending);
    answer
}

/// A durable commit ending at `lsn`, not relayed yet, and where its answer arrives.
fn durable_at(lsn: u64) -> (PendingCommit, Answer) {
    PendingCommit::detached(CommitInfo { txid: TxId(1), lsn: Lsn(lsn), commit_time_us: 0 })
}

/// Checks the commit is not answered yet, and gives its answer slot back.
#[track_caller]
fn not_yet(answer: Answer, why: &str) -> Answer {
    match answer.try_recv() {
        Err(answer) => answer,
        Ok(got) => panic!("answered too early ({why}): {got:?}"),
    }
}

/// Checks the commit was answered, as committed at `lsn`. Relays answer on the acknowledging
/// thread, so the answer is there as soon as the call that satisfied it returns.
#[track_caller]
fn confirmed(answer: Answer, lsn: u64) {
    match answer.try_recv() {
        Ok(Some(Ok(info))) => assert_eq!(info.lsn, Lsn(lsn)),
        Ok(other) => panic!("expected a confirmation at {lsn}, got {other:?}"),
        Err(_) => panic!("the commit at {lsn} is still waiting"),
    }
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

#[test]
fn relayed_commits_are_answered_by_acks() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a)");
    // Local and Off never wait: their commits are answered by the engine itself.
    assert!(r.commit_relay("local").is_none() && r.commit_relay("off").is_none());
    assert!(r.commit_relay("remote_apply").is_some());

    let a = r.register("A".into(), peer(1), None).unwrap();
    let wait = not_yet(relayed(&r, 100, SyncLevel::RemoteFlush), "a is still catching up");
    a.set_state(StandbyState::Streaming);
    a.ack(StandbyPositions { received: Lsn(150), written: Lsn(120), flushed: Lsn(90), replayed: Lsn(10) });
    let wait = not_yet(wait, "flushed 90 < 100");
    a.ack(StandbyPositions { received: Lsn(150), written: Lsn(120), flushed: Lsn(100), replayed: Lsn(10) });
    confirmed(wait, 100);
    // Already confirmed at write level; not at apply level.
    confirmed(relayed(&r, 120, SyncLevel::RemoteWrite), 120);
    let apply = not_yet(relayed(&r, 100, SyncLevel::RemoteApply), "replayed 10 < 100");
    // Shutdown answers it, saying the commit is durable here, and answers later ones at once.
    r.end_waits();
    let e = apply.recv().expect("answered").expect_err("not confirmed");
    assert_eq!(e.to_sql_error().code, ErrorCode::Shutdown);
    assert!(e.to_string().contains("committed locally at 0/64"), "{e}");
    let late = relayed(&r, 200, SyncLevel::RemoteWrite).recv().expect("answered at once");
    assert!(late.expect_err("after shutdown").to_string().contains("committed locally at 0/C8"));
    assert_eq!(r.queued_waits(), 0);
}

#[test]
fn an_ack_answers_only_the_commits_it_satisfies() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a)");
    let a = streaming(&r, "a", 1);
    let apply_100 = not_yet(relayed(&r, 100, SyncLevel::RemoteApply), "nothing confirmed yet");
    let apply_200 = not_yet(relayed(&r, 200, SyncLevel::RemoteApply), "nothing confirmed yet");
    let write_150 = not_yet(relayed(&r, 150, SyncLevel::RemoteWrite), "nothing confirmed yet");
    let flush_150 = not_yet(relayed(&r, 150, SyncLevel::RemoteFlush), "nothing confirmed yet");
    assert_eq!(r.queued_waits(), 4);
    a.ack(StandbyPositions { received: Lsn(160), written: Lsn(160), flushed: Lsn(140), replayed: Lsn(120) });
    confirmed(apply_100, 100);
    confirmed(write_150, 150);
    let apply_200 = not_yet(apply_200, "replayed 120 < 200");
    let flush_150 = not_yet(flush_150, "flushed 140 < 150");
    assert_eq!(r.queued_waits(), 2, "the answered commits left the queue");

    // A session that went away (its client left) leaves a commit that the next confirmation
    // past it answers into the void.
    drop(apply_200);
    a.ack(at(300));
    confirmed(flush_150, 150);
    assert_eq!(r.queued_waits(), 0);
}

#[test]
fn without_synchronous_standbys_nothing_waits() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "");
    for level in ["remote_write", "remote_flush", "remote_apply"] {
        assert!(r.commit_relay(level).is_none(), "{level}");
    }
    // A commit relayed before the rule stopped naming standbys is answered at once.
    for level in [SyncLevel::RemoteWrite, SyncLevel::RemoteFlush, SyncLevel::RemoteApply] {
        confirmed(relayed(&r, u64::MAX, level), u64::MAX);
    }
}

#[test]
fn a_disconnect_hands_the_wait_to_the_next_standby() {
    let (dir, db) = open(Config::default());
    let r = replication(&dir, &db, "FIRST 1 (a, b)");
    let a = streaming(&r, "a", 1);
    let b = streaming(&r, "b", 2);
    a.ack(at(50));
    b.ack(at(200));
    let wait = not_yet(relayed(&r, 100, SyncLevel::RemoteApply), "a (priority 1) is at 50");
    drop(a);
    confirmed(wait, 100);

    // ANY 2: the second standby's confirmation completes the quorum.
    let r = replication(&dir, &db, "ANY 2 (x, y, z)");
    let x = streaming(&r, "x", 3);
    let y = streaming(&r, "y", 4);
    x.ack(at(500));
    let wait = not_yet(relayed(&r, 300, SyncLevel::RemoteWrite), "only x confirmed");
    y.ack(at(300));
    confirmed(wait, 300);
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
    let flushed = db.durable_lsn();
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

    // Acks move the slot and the connection hold (once the server placed it), never past
    // this server's durable end: a standby may have flushed WAL sent before it was durable.
    db.hold_wal(h.hold_name(), flushed, true).unwrap();
    let far = flushed.0 + 1_000_000;
    // Flushed far ahead, nothing more replayed: the holds stay, since a restarted standby
    // streams again from what it had shown.
    let flushed_only = StandbyPositions { replayed: flushed, ..at(far) };
    h.ack(flushed_only);
    let moved = db.create_restore_point("later").unwrap();
    assert!(moved > flushed && Lsn(far) > moved);
    h.ack(flushed_only);
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, flushed);
    assert_eq!(db.wal_hold(h.hold_name()).unwrap().lsn, flushed);
    // Replayed far ahead: they move, never past this server's durable end.
    h.ack(at(far));
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, moved);
    assert_eq!(db.wal_hold(h.hold_name()).unwrap().lsn, moved);
    let row = rows(r.show_replication().unwrap()).remove(0);
    assert_eq!(row[11..], [text("r1"), text(&moved.to_string()), text("reserved")]);
    let hold = h.hold_name().to_string();
    drop(h);
    assert!(db.wal_hold(&hold).is_none(), "the connection's hold goes with it");
    let row = rows(r.show_replication().unwrap()).remove(0);
    assert_eq!(row[..3], [text("r1"), Value::Null, text("disconnected")]);

    // A restart brings the slot back at its last restart Lsn, hold included.
    drop(r);
    db.release_wal("slot:r1");
    let r = replication(&dir, &db, "");
    assert_eq!(db.wal_hold("slot:r1").unwrap().lsn, moved);
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
fn sessions_get_a_relay_for_the_level_they_wait_at() {
    let (dir, db) = open(Config::default());
    let with_rule = replication(&dir, &db, "ANY 1 (a, b)");
    for level in ["off", "local", "not_a_level"] {
        assert!(with_rule.commit_relay(level).is_none(), "{level} never waits for standbys");
    }
    // Each level's relay waits for its own position: after this acknowledgement only the
    // remote_write commit is confirmed.
    let a = streaming(&with_rule, "a", 1);
    let answers: Vec<(&str, Answer)> = ["remote_write", "remote_flush", "remote_apply"]
        .into_iter()
        .map(|level| {
            let relay = with_rule.commit_relay(level).expect("waits when synchronous standbys are named");
            let (pending, answer) = durable_at(100);
            relay.relay(pending);
            (level, answer)
        })
        .collect();
    a.ack(StandbyPositions { received: Lsn(100), written: Lsn(100), flushed: Lsn(50), replayed: Lsn(10) });
    let mut answers = answers.into_iter();
    confirmed(answers.next().expect("remote_write").1, 100);
    for (level, answer) in answers {
        not_yet(answer, level);
    }
    drop((a, with_rule));
    let (dir, db) = open(Config::default());
    let without_rule = replication(&dir, &db, "");
    assert!(
        without_rule.commit_relay("remote_apply").is_none(),
        "no synchronous standbys: nothing to wait for"
    );
}
