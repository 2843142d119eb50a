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
    let upto = primary.durable_lsn();
    while *pos < upto {
        *slice = (*slice * 7 + 13) % 70_000 + 1;
        let mut buf = Vec::new();
        let n = reader.read(*pos, upto, *slice, &mut buf).unwrap();
        // Every other slice goes the receiver's way: without blocking first, and with
        // blocking only when the queue hands the slice back whole.
        if *slice & 1 == 0 {
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
    let n = reader.read(pos, primary.durable_lsn(), 1000, &mut buf).unwrap();
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
    reader.read(start, primary.durable_lsn(), 1 << 20, &mut buf).unwrap();
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
        ends.push(primary.durable_lsn());
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
    assert_eq!(replica.durable_lsn(), start, "a cascade sends nothing unconfirmed");
    assert_eq!(replica.lsn_ladder(), (ends[2], ends[2], start), "flushed is the replica's own");
    // Confirmed one commit at a time, the replica shows exactly each commit's state.
    for (i, end) in ends.iter().enumerate() {
        replica.confirm_upstream(*end);
        assert_eq!(replica.status().visible_lsn, *end);
        assert_eq!(replica.durable_lsn(), *end);
        let view = replica.read_view();
        assert_eq!(view.lsn(), *end);
        assert_eq!(dump(&replica).len(), i + 1, "commit {i} shows, and no later one");
    }
    assert_eq!(replica.status().digest, primary.status().digest);
    // The other order: the upstream reports durability before the replica has the WAL.
    primary.commit(writes(&def, primary.read_view().lsn(), &[(7, Some(70))])).unwrap();
    let end = primary.durable_lsn();
    replica.confirm_upstream(end);
    assert_eq!(replica.status().visible_lsn, ends[2], "a report alone shows nothing");
    let mut buf = Vec::new();
    reader.read(ends[2], end, 1 << 20, &mut buf).unwrap();
    replica.apply_wal(ends[2], buf).unwrap();
    wait_for(&replica, "the flush publishes what was confirmed first", |s| s.visible_lsn == end);
    assert_eq!(dump(&replica), dump(&primary));
}

/// Feeds the replica the primary's WAL from `from` to `to` in slices of varying size, without
/// any report of the primary's durable end.
fn feed(primary: &Database, replica: &Database, from: Lsn, to: Lsn) {
    feed_until_refused(primary, replica, from, to).unwrap();
}

/// [`feed`], then waits until the replica has flushed all of it.
fn feed_flushed(primary: &Database, replica: &Database, from: Lsn, to: Lsn) {
    feed(primary, replica, from, to);
    wait_for(replica, &format!("the replica flushes the WAL up to {to}"), |s| s.flushed_lsn == to);
}

/// [`feed`], stopping at the first slice the replica refuses (replay stopped).
fn feed_until_refused(
    primary: &Database,
    replica: &Database,
    from: Lsn,
    to: Lsn,
) -> hindsight_engine::Result<()> {
    let mut reader = RawWalReader::new(&primary.wal_dir(), primary.timeline(), primary.segment_size_bytes());
    let (mut pos, mut slice) = (from, 5usize);
    while pos < to {
        slice = (slice * 7 + 13) % 3_000 + 1;
        let mut buf = Vec::new();
        let n = reader.read(pos, to, slice, &mut buf).unwrap();
        replica.apply_wal(pos, buf)?;
        pos = pos.add(n as u64);
    }
    Ok(())
}

/// Commits `n` one-row transactions with keys from `first` and values `value`.
fn commit_rows(
    primary: &Database,
    def: &Arc<hindsight_engine::schema::TableDef>,
    first: i64,
    n: i64,
    value: i64,
) -> Lsn {
    for i in first..first + n {
        primary.commit(writes(def, primary.read_view().lsn(), &[(i, Some(value))])).unwrap();
    }
    primary.durable_lsn()
}

/// A primary with the accounts table, and a replica made from its backup that shows 20
/// one-row commits (to `e1`), confirmed. `lost_dir` is for a copy of the primary's disk.
struct Confirmed {
    pdir: tempfile::TempDir,
    lost_dir: tempfile::TempDir,
    rdir: tempfile::TempDir,
    primary: Arc<Database>,
    def: Arc<hindsight_engine::schema::TableDef>,
    replica: Arc<Database>,
    e1: Lsn,
}

fn confirmed() -> Confirmed {
    let (pdir, lost_dir, rdir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Database::open(pdir.path(), config()).unwrap();
    let def = create_accounts(&primary);
    take_backup(&primary, rdir.path());
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    let start = replica.resume_stream().unwrap();
    let e1 = commit_rows(&primary, &def, 0, 20, 1);
    feed(&primary, &replica, start, e1);
    replica.confirm_upstream(e1);
    wait_for(&replica, "the confirmed WAL shows", |s| s.visible_lsn == e1);
    Confirmed { pdir, lost_dir, rdir, primary, def, replica, e1 }
}

/// Copies the primary's directory to `aside`, as its disk will be after a crash that loses
/// everything it writes from now on (its page cache), and reopens it.
fn copy_disk_aside(primary: Arc<Database>, dir: &Path, aside: &Path) -> Arc<Database> {
    drop(primary);
    copy_dir(dir, aside);
    Database::open(dir, config()).unwrap()
}

/// A replica restarted while holding WAL its upstream had not confirmed shows only what was
/// confirmed, keeps the rest on disk, and takes it once the upstream sends the same bytes.
#[test]
fn a_restarted_standby_shows_only_what_was_confirmed_and_keeps_the_rest() {
    let Confirmed { pdir: _pdir, rdir, primary, def, replica, e1, .. } = confirmed();
    let e2 = commit_rows(&primary, &def, 20, 20, 2);
    feed_flushed(&primary, &replica, e1, e2);
    assert_eq!(replica.status().visible_lsn, e1);
    drop(replica);

    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, Some((e1, e2)));
    assert_eq!(replica.status().visible_lsn, e1, "nothing past the confirmed Lsn shows");
    assert_eq!(replica.lsn_ladder(), (e1, e1, e1), "the tail is not reported written or flushed");
    assert_eq!(dump(&replica).len(), 20);
    assert_eq!(replica.resume_stream().unwrap(), e1, "the stream starts at the confirmed Lsn");
    // The same bytes again: taken as they are (replayed from what arrives), then confirmed.
    feed_flushed(&primary, &replica, e1, e2);
    assert_eq!(replica.status().visible_lsn, e1, "matched is not confirmed");
    replica.confirm_upstream(e2);
    wait_for(&replica, "the tail shows once confirmed", |s| s.visible_lsn == e2);
    assert_eq!(dump(&replica), dump(&primary));
    assert_eq!(replica.status().digest, primary.status().digest);
    // Streaming goes on past the tail's end.
    let e3 = commit_rows(&primary, &def, 40, 10, 3);
    let mut slice = 1;
    let mut pos = e2;
    wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    assert_eq!(replica.status().visible_lsn, e3);
    drop(replica);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, None);
    assert_eq!(replica.status().visible_lsn, e3);
    assert_eq!(dump(&replica), dump(&primary));
}

/// The upstream crashed and lost WAL it had sent (its page cache): the replica, restarted,
/// cuts its pending tail where the restarted upstream's new WAL first differs, and follows
/// the new history without ever showing the lost one.
#[test]
fn a_standby_cuts_its_pending_tail_where_a_restarted_upstream_differs() {
    let Confirmed { pdir, lost_dir, rdir, primary, def, replica, e1 } = confirmed();
    // What the primary's disk will hold after its crash: everything up to e1.
    let primary = copy_disk_aside(primary, pdir.path(), lost_dir.path());
    let e2 = commit_rows(&primary, &def, 20, 20, 1000);
    feed_flushed(&primary, &replica, e1, e2);
    drop(replica);
    drop(primary);

    // The primary comes back without that WAL and commits something else, shorter.
    let primary = Database::open(lost_dir.path(), config()).unwrap();
    assert_eq!(primary.durable_lsn(), e1);
    let e2b = commit_rows(&primary, &def, 500, 3, 7);
    assert!(e2b < e2);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, Some((e1, e2)));
    assert_eq!(replica.resume_stream().unwrap(), e1);
    feed(&primary, &replica, e1, e2b);
    replica.confirm_upstream(e2b);
    wait_for(&replica, "the new history shows", |s| s.visible_lsn == e2b);
    assert_eq!(replica.status().replay_error, None);
    assert_eq!(dump(&replica), dump(&primary));
    assert!(dump(&replica).values().all(|v| *v != 1000), "the lost rows never show");
    // The cut is on disk: a reopen finds no tail and the same state, and streaming goes on.
    drop(replica);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, None);
    assert_eq!(replica.status().visible_lsn, e2b);
    commit_rows(&primary, &def, 600, 30, 8);
    let (mut slice, mut pos) = (1, replica.resume_stream().unwrap());
    wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    assert_eq!(replica.store().recompute_digest(), primary.status().digest);
}

/// A replica that reconnects while holding WAL its upstream had not confirmed starts the new
/// stream at the confirmed Lsn and compares: the same bytes go on without being replayed
/// twice; different ones stop replay with an error naming the Lsn, and a restart drops the
/// unconfirmed WAL and follows the upstream's new history.
#[test]
fn a_reconnecting_standby_compares_what_it_holds_unconfirmed() {
    let Confirmed { pdir, lost_dir, rdir, primary, def, replica, e1 } = confirmed();
    let e2 = commit_rows(&primary, &def, 20, 20, 2);
    feed_flushed(&primary, &replica, e1, e2);
    assert_eq!(replica.resume_stream().unwrap(), e1, "a new stream starts at the confirmed Lsn");
    assert_eq!(replica.lsn_ladder(), (e1, e1, e1), "nothing unmatched is reported");
    feed(&primary, &replica, e1, e2);
    replica.confirm_upstream(e2);
    wait_for(&replica, "the matched WAL shows once confirmed", |s| s.visible_lsn == e2);
    assert_eq!(dump(&replica), dump(&primary));
    assert_eq!(replica.status().digest, primary.status().digest);
    assert_eq!(replica.store().recompute_digest(), primary.status().digest, "nothing replayed twice");

    // Now the upstream loses WAL it sent: the same stream again, from a copy taken before.
    let primary = copy_disk_aside(primary, pdir.path(), lost_dir.path());
    let e3 = commit_rows(&primary, &def, 40, 20, 1000);
    feed_flushed(&primary, &replica, e2, e3);
    drop(primary);
    let primary = Database::open(lost_dir.path(), config()).unwrap();
    let e3b = commit_rows(&primary, &def, 500, 30, 7);
    assert_eq!(replica.resume_stream().unwrap(), e2);
    let _ = feed_until_refused(&primary, &replica, e2, e3b);
    wait_for(&replica, "replay stops on the difference", |s| s.replay_error.is_some());
    let why = replica.status().replay_error.unwrap();
    assert!(why.contains("differs from this replica's") && why.contains("restart this replica"), "{why}");
    assert_eq!(replica.status().visible_lsn, e2, "the lost WAL never showed");
    replica.confirm_upstream(e3b);
    assert_eq!(replica.status().visible_lsn, e2, "nor does a later report show it");
    drop(replica);

    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, Some((e2, e3)));
    let (mut slice, mut pos) = (1, replica.resume_stream().unwrap());
    assert_eq!(pos, e2);
    wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    assert!(dump(&replica).values().all(|v| *v != 1000), "the lost rows never show");
    assert_eq!(replica.store().recompute_digest(), primary.status().digest);
}

/// The upstream kept part of what the replica holds unconfirmed: that part stays and shows
/// once confirmed (nothing is cut before the first difference), and a reconnect before the
/// difference arrives compares from the confirmed Lsn again and cuts only there.
#[test]
fn a_standby_keeps_the_part_of_its_tail_the_upstream_kept() {
    let Confirmed { pdir, lost_dir, rdir, primary, def, replica, e1 } = confirmed();
    let kept = commit_rows(&primary, &def, 20, 10, 1);
    let primary = copy_disk_aside(primary, pdir.path(), lost_dir.path());
    let e2 = commit_rows(&primary, &def, 30, 10, 1000);
    feed_flushed(&primary, &replica, e1, e2);
    drop(replica);
    drop(primary);

    let primary = Database::open(lost_dir.path(), config()).unwrap();
    assert_eq!(primary.durable_lsn(), kept);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.resume_stream().unwrap(), e1);
    feed(&primary, &replica, e1, kept);
    replica.confirm_upstream(kept);
    wait_for(&replica, "the kept part shows", |s| s.visible_lsn == kept);
    assert_eq!(dump(&replica), dump(&primary));
    assert_eq!(dump(&replica).len(), 30);
    // The rest of the tail is still on disk: nothing was cut before a difference.
    drop(replica);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, Some((kept, e2)));
    assert_eq!(replica.status().visible_lsn, kept);
    // A reconnect before the upstream writes anything new: from the confirmed Lsn, with the
    // rest of the tail still held and not reported.
    assert_eq!(replica.resume_stream().unwrap(), kept);
    assert_eq!(replica.lsn_ladder(), (kept, kept, kept));
    let e3 = commit_rows(&primary, &def, 700, 5, 9);
    feed(&primary, &replica, kept, e3);
    replica.confirm_upstream(e3);
    wait_for(&replica, "the new history shows", |s| s.visible_lsn == e3);
    assert_eq!(replica.status().replay_error, None, "cut where it differs, past what was replayed");
    assert_eq!(dump(&replica), dump(&primary));
    drop(replica);
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.recovery_report().pending_tail, None);
    assert_eq!(dump(&replica), dump(&primary));
}

/// A replica restarted with a pending tail matches part of it, unconfirmed, and reconnects to
/// an upstream that lost that part: the new stream starts at the confirmed Lsn again, nothing
/// matched on the earlier connection is reported or shown, and the difference inside what it
/// replayed stops replay until a restart, after which it follows the new history.
#[test]
fn a_reconnect_while_matching_a_tail_compares_again_from_the_confirmed_lsn() {
    let Confirmed { pdir, lost_dir, rdir, primary, def, replica, e1 } = confirmed();
    let kept = commit_rows(&primary, &def, 20, 10, 1);
    let primary = copy_disk_aside(primary, pdir.path(), lost_dir.path());
    let e2 = commit_rows(&primary, &def, 30, 10, 1000);
    feed_flushed(&primary, &replica, e1, e2);
    drop(replica);

    // Restarted, it matches most of the tail against the primary, which confirms only e1.
    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    assert_eq!(replica.resume_stream().unwrap(), e1);
    let mid = Lsn((kept.0 + e2.0) / 2);
    feed_flushed(&primary, &replica, e1, mid);
    assert_eq!(replica.status().visible_lsn, e1);
    drop(primary);
    // The primary comes back without the WAL after `kept`.
    let primary = Database::open(lost_dir.path(), config()).unwrap();
    assert_eq!(replica.resume_stream().unwrap(), e1, "from the confirmed Lsn, not from what was matched");
    assert_eq!(replica.lsn_ladder(), (e1, e1, e1), "nothing matched before is reported");
    let e3 = commit_rows(&primary, &def, 700, 5, 9);
    let _ = feed_until_refused(&primary, &replica, e1, e3);
    replica.confirm_upstream(e3);
    wait_for(&replica, "replay stops on the difference", |s| s.replay_error.is_some());
    let why = replica.status().replay_error.unwrap();
    assert!(why.contains("restart this replica"), "{why}");
    assert_eq!(replica.status().visible_lsn, e1, "nothing past the confirmed Lsn shows");
    assert!(dump(&replica).values().all(|v| *v != 1000), "the lost rows never show");
    drop(replica);

    let replica = Database::open_standby(rdir.path(), config()).unwrap();
    let (mut slice, mut pos) = (1, replica.resume_stream().unwrap());
    wait_caught_up(&primary, &replica, &mut slice, &mut pos);
    assert!(dump(&replica).values().all(|v| *v != 1000), "the lost rows never show");
    assert_eq!(replica.store().recompute_digest(), primary.status().digest);
}
