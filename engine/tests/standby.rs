//! A replica in process: base backup from a primary, install, open as a standby, feed it the
//! primary's raw WAL in odd-sized slices across segment boundaries (a large transaction's
//! chunks included), reopen it mid-stream, and check it reaches the primary's exact state.

mod common;
use common::*;
use hindsight_engine::backup::{encode_snapshot, install_base_backup};
use hindsight_engine::checkpoint::snapshot_file_name;
use hindsight_engine::wal::reader::RawWalReader;
use hindsight_engine::Database;
use hindsight_protocol::Lsn;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config() -> hindsight_engine::db::Config {
    hindsight_engine::db::Config { fsync: false, ..small_config() }
}

/// Feeds the replica everything the primary has flushed, in slices of varying size.
/// `pos` is where the replica's input continues (queued slices are not written yet, so the
/// replica's own insert Lsn may lag behind it).
fn stream(primary: &Database, replica: &Database, slice: &mut usize, pos: &mut Lsn) {
    let mut reader = RawWalReader::new(&primary.wal_dir(), primary.timeline(), primary.segment_size_bytes());
    let upto = primary.flushed_lsn();
    while *pos < upto {
        *slice = (*slice * 7 + 13) % 70_000 + 1;
        let mut buf = Vec::new();
        let n = reader.read(*pos, upto, *slice, &mut buf).unwrap();
        // Every other slice goes the receiver's way: without blocking first, and with
        // blocking only when the queue hands the slice back whole.
        if *slice % 2 == 0 {
            replica.apply_wal(*pos, buf).unwrap();
        } else if let Some(back) = replica.try_apply_wal(*pos, buf).unwrap() {
            assert_eq!(back.len(), n, "a full queue gives the whole slice back");
            replica.apply_wal(*pos, back).unwrap();
        }
        *pos = pos.add(n as u64);
    }
    // Everything fed was durable on the primary.
    replica.confirm_upstream(upto);
}

/// Streams until the replica shows everything the primary has published (a checkpoint's own
/// record is published a moment after CHECKPOINT returns, so one pass may not be enough).
fn wait_caught_up(primary: &Database, replica: &Database, slice: &mut usize, pos: &mut Lsn) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut want = Lsn::ZERO;
    while replica.status().visible_lsn < want || want != primary.status().visible_lsn {
        want = primary.status().visible_lsn;
        stream(primary, replica, slice, pos);
        assert!(Instant::now() < deadline, "replica stuck at {} < {want}", replica.status().visible_lsn);
        assert_eq!(replica.status().replay_error, None);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(replica.status().visible_lsn, want);
    assert_eq!(replica.status().digest, primary.status().digest);
    assert_eq!(replica.status().last_txid, primary.status().last_txid);
    assert_eq!(dump(replica), dump(primary));
}

fn take_backup(primary: &Database, dir: &Path) {
    let bb = primary.start_base_backup("backup").unwrap();
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    let tmp = dir.join("snapshots").join(format!("{}.tmp", snapshot_file_name(bb.meta.lsn)));
    let file = std::fs::File::create(&tmp).unwrap();
    encode_snapshot(BufWriter::new(file), &bb.view, bb.meta).unwrap();
    install_base_backup(dir, &bb.meta, bb.segment_size_bytes, &bb.wal_prefix).unwrap();
}

#[test]
fn a_standby_follows_the_raw_wal_and_survives_reopen() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let primary = Database::open(pdir.path(), config()).unwrap();
    let def = create_accounts(&primary);
    for i in 0..500 {
        primary.commit(writes(&def, primary.read_view().lsn(), &[(i, Some(i))])).unwrap();
    }
    take_backup(&primary, rdir.path());
    // The backup's hold keeps its WAL even across checkpoints.
    assert!(primary.wal_hold("backup").is_some());
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert!(replica.is_read_only());
    assert_eq!(replica.status().role, "replica");
    let mut slice = 1;
    let mut pos = replica.status().insert_lsn;
    // Many commits and one transaction large enough for chunk records, across 1 MiB segments.
    for round in 0..3 {
        for i in 0..2000 {
            let id = (i * 31 + round) % 3000;
            primary.commit(writes(&def, primary.read_view().lsn(), &[(id, Some(i + round))])).unwrap();
        }
        let big: Vec<(i64, Option<i64>)> = (10_000..40_000).map(|i| (i, Some(i * 2 + round))).collect();
        primary.commit(writes(&def, primary.read_view().lsn(), &big)).unwrap();
        primary.checkpoint().unwrap();
        wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    }
    // Writes are refused.
    let err = replica.commit(writes(&def, replica.read_view().lsn(), &[(1, Some(1))])).unwrap_err();
    assert!(err.to_string().contains("read-only replica"), "{err}");
    // A restart point on the replica, more WAL, then a reopen mid-record.
    replica.checkpoint().unwrap();
    for i in 0..300 {
        primary.commit(writes(&def, primary.read_view().lsn(), &[(i, None)])).unwrap();
    }
    let mut reader = RawWalReader::new(&primary.wal_dir(), primary.timeline(), primary.segment_size_bytes());
    let mut buf = Vec::new();
    let n = reader.read(pos, primary.flushed_lsn(), 1000, &mut buf).unwrap();
    replica.apply_wal(pos, buf).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.status().insert_lsn < pos.add(n as u64) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(replica);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    // Recovery cut the partial record off; streaming resumes where the replica's WAL ends.
    let mut pos = replica.status().insert_lsn;
    wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    assert_eq!(replica.store().recompute_digest(), primary.status().digest);
}

#[test]
fn a_standby_refuses_a_gap_and_stops_on_corrupt_wal() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let primary = Database::open(pdir.path(), config()).unwrap();
    let def = create_accounts(&primary);
    take_backup(&primary, rdir.path());
    for i in 0..50 {
        primary.commit(writes(&def, primary.read_view().lsn(), &[(i, Some(i))])).unwrap();
    }
    let replica = Arc::new(Database::open_standby(rdir.path(), config()).unwrap());
    let start = replica.status().insert_lsn;
    let mut reader = RawWalReader::new(&primary.wal_dir(), primary.timeline(), primary.segment_size_bytes());
    let mut buf = Vec::new();
    reader.read(start, primary.flushed_lsn(), 1 << 20, &mut buf).unwrap();
    // Flip a byte inside the tenth record's body.
    let mut bad = buf.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x55;
    replica.apply_wal(start, bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        if let Some(e) = replica.status().replay_error {
            break e;
        }
        assert!(Instant::now() < deadline, "corrupt WAL was not noticed");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(error.contains("replication stream") || error.contains("digest"), "{error}");
    assert!(replica.status().visible_lsn < primary.status().visible_lsn);
    let again = replica.apply_wal(Lsn(start.0 + buf.len() as u64), vec![0]).unwrap_err();
    assert!(again.to_string().contains(&error[..20]), "{again}");
    let again = replica.try_apply_wal(Lsn(start.0 + buf.len() as u64), vec![0]).unwrap_err();
    assert!(again.to_string().contains(&error[..20]), "{again}");
}

/// Waits until `cond` holds for the replica, or fails after 10 s.
fn wait_for(replica: &Database, what: &str, cond: impl Fn(&hindsight_engine::db::Status) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(&replica.status()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", replica.status());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A primary sends WAL before it is durable (decision #34): a replica writes, flushes and
/// replays it at once but shows nothing past what its upstream reported durable, whatever the
/// order of its own flush and the upstream's report.
#[test]
fn a_standby_shows_only_what_its_upstream_reported_durable() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let primary = Database::open(pdir.path(), config()).unwrap();
    let def = create_accounts(&primary);
    take_backup(&primary, rdir.path());
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    let start = replica.status().insert_lsn;
    let mut reader = RawWalReader::new(&primary.wal_dir(), primary.timeline(), primary.segment_size_bytes());
    let mut ends = Vec::new();
    for i in 0..3 {
        primary.commit(writes(&def, primary.read_view().lsn(), &[(i, Some(i * 10))])).unwrap();
        ends.push(primary.flushed_lsn());
    }
    // A slice per commit, as the primary sends them.
    let mut from = start;
    for end in &ends {
        let mut buf = Vec::new();
        reader.read(from, *end, 1 << 20, &mut buf).unwrap();
        replica.apply_wal(from, buf).unwrap();
        from = *end;
    }
    // Flushed here, but the upstream has said nothing: nothing shows.
    wait_for(&replica, "the replica flushes the WAL", |s| s.flushed_lsn == ends[2]);
    let status = replica.status();
    assert_eq!(status.visible_lsn, start, "nothing past the upstream's durable end shows");
    assert_eq!(replica.flushed_lsn(), start, "a cascade sends nothing unconfirmed");
    assert_eq!(replica.lsn_ladder(), (ends[2], ends[2], start), "flushed is the replica's own");
    // Confirmed one commit at a time, the replica shows exactly each commit's state.
    for (i, end) in ends.iter().enumerate() {
        replica.confirm_upstream(*end);
        assert_eq!(replica.status().visible_lsn, *end);
        assert_eq!(replica.flushed_lsn(), *end);
        let view = replica.read_view();
        assert_eq!(view.lsn(), *end);
        assert_eq!(dump(&replica).len(), i + 1, "commit {i} shows, and no later one");
    }
    assert_eq!(replica.status().digest, primary.status().digest);
    // The other order: the upstream reports durability before the replica has the WAL.
    primary.commit(writes(&def, primary.read_view().lsn(), &[(7, Some(70))])).unwrap();
    let end = primary.flushed_lsn();
    replica.confirm_upstream(end);
    assert_eq!(replica.status().visible_lsn, ends[2], "a report alone shows nothing");
    let mut buf = Vec::new();
    reader.read(ends[2], end, 1 << 20, &mut buf).unwrap();
    replica.apply_wal(ends[2], buf).unwrap();
    wait_for(&replica, "the flush publishes what was confirmed first", |s| s.visible_lsn == end);
    assert_eq!(dump(&replica), dump(&primary));
}
