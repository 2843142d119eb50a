//! Byte-level recovery tests: cut the WAL at every byte offset of its last records and reopen —
//! exactly the whole committed transactions survive; flip a byte in a middle record — a clear
//! error naming the Lsn and the file.

mod common;
use common::*;
use hindsight_engine::wal::reader::list_segments;
use hindsight_engine::{Database, Error};
use hindsight_protocol::Lsn;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

struct History {
    /// (commit Lsn, state after it), in commit order; index 0 is the empty table.
    states: Vec<(Lsn, BTreeMap<i64, i64>)>,
}

/// Builds a database whose WAL ends with small commits and a large (chunked) transaction,
/// and returns the state after every commit.
fn build(dir: &Path, large_rows: i64) -> History {
    let db = Database::open(dir, small_config()).unwrap();
    let def = create_accounts(&db);
    let mut model = BTreeMap::new();
    let mut states = vec![(db.status().visible_lsn, model.clone())];
    for i in 0..20i64 {
        let ops: Vec<(i64, Option<i64>)> = if i % 5 == 4 {
            vec![(i - 2, None), (i, Some(i))]
        } else {
            vec![(i, Some(i * 7)), (i + 100, Some(1))]
        };
        let info = db.commit(writes(&def, db.read_view().lsn(), &ops)).unwrap();
        for (id, bal) in ops {
            match bal {
                Some(b) => model.insert(id, b),
                None => model.remove(&id),
            };
        }
        states.push((info.lsn, model.clone()));
    }
    if large_rows > 0 {
        let ops: Vec<(i64, Option<i64>)> = (1000..1000 + large_rows).map(|i| (i, Some(i))).collect();
        let info = db.commit(writes(&def, db.read_view().lsn(), &ops)).unwrap();
        for (id, b) in &ops {
            model.insert(*id, b.unwrap());
        }
        states.push((info.lsn, model.clone()));
    }
    let info = db.commit(writes(&def, db.read_view().lsn(), &[(7, Some(-7))])).unwrap();
    model.insert(7, -7);
    states.push((info.lsn, model));
    History { states }
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    list_segments(&dir.join("wal")).unwrap().pop().unwrap().2
}

/// Zeroes the segment from `cut` on, as a crash before those bytes reached the disk leaves it.
fn cut_at(segment: &Path, segment_size: u64, cut: Lsn) {
    let f = std::fs::OpenOptions::new().write(true).open(segment).unwrap();
    let off = cut.0 % segment_size;
    f.write_all_at(&vec![0u8; (segment_size - off) as usize], off).unwrap();
}

#[test]
fn every_cut_in_the_last_records_keeps_exactly_the_whole_transactions() {
    let base = tempfile::tempdir().unwrap();
    let history = build(base.path(), 0);
    let seg = small_config().segment_size_bytes;
    let end = history.states.last().unwrap().0;
    let from = history.states[history.states.len() - 4].0; // the last three commits
    for cut in from.0..=end.0 {
        let cut = Lsn(cut);
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        cut_at(&last_segment(work.path()), seg, cut);
        let db = Database::open(work.path(), small_config()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let expected = history.states.iter().rev().find(|(lsn, _)| *lsn <= cut).unwrap();
        assert_eq!(db.status().visible_lsn, expected.0, "cut at {cut}");
        assert_eq!(dump(&db), expected.1, "cut at {cut}");
        assert_eq!(db.status().digest, db.store().recompute_digest(), "cut at {cut}");
        // The database keeps working after the cut, and the new commit survives a reopen.
        let def = db.read_view().table("accounts").cloned().unwrap();
        db.commit(writes(&def, db.read_view().lsn(), &[(424242, Some(1))])).unwrap();
        drop(db);
        let db = Database::open(work.path(), small_config()).unwrap();
        assert_eq!(dump(&db).get(&424242), Some(&1), "cut at {cut}: commit after recovery");
    }
}

#[test]
fn cuts_inside_a_large_transaction_drop_it_whole() {
    let base = tempfile::tempdir().unwrap();
    // ~30 bytes a row: 40,000 rows make several chunk records.
    let history = build(base.path(), 40_000);
    let seg = small_config().segment_size_bytes;
    let n = history.states.len();
    let before_large = history.states[n - 3].0;
    let large = history.states[n - 2].0;
    let step = ((large.0 - before_large.0) / 97).max(1);
    let mut cut = before_large.0;
    while cut < large.0 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        // The large transaction may span segments: zero every later segment too.
        for (_, no, path) in list_segments(&work.path().join("wal")).unwrap() {
            if no > cut / seg {
                std::fs::remove_file(path).unwrap();
            }
        }
        cut_at(
            &work.path().join("wal").join(hindsight_engine::wal::segment::segment_file_name(
                hindsight_protocol::Timeline(1),
                cut / seg,
            )),
            seg,
            Lsn(cut),
        );
        let db = Database::open(work.path(), small_config())
            .unwrap_or_else(|e| panic!("cut at {}: {e}", Lsn(cut)));
        assert_eq!(db.status().visible_lsn, before_large, "cut at {}", Lsn(cut));
        assert_eq!(dump(&db), history.states[n - 3].1, "cut at {}", Lsn(cut));
        cut += step;
    }
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_an_error_naming_the_lsn_and_file() {
    let base = tempfile::tempdir().unwrap();
    let history = build(base.path(), 0);
    let seg = small_config().segment_size_bytes;
    let start = history.states[9].0; // the record after commit 9 starts here
    let next = history.states[10].0;
    for byte in start.0..next.0 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let path = last_segment(work.path());
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, byte % seg).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], byte % seg).unwrap();
        match Database::open(work.path(), small_config()) {
            Err(Error::Corrupt { lsn, file, detail }) => {
                assert_eq!(lsn, start, "flip at {}: {detail}", Lsn(byte));
                assert_eq!(file, path, "flip at {}", Lsn(byte));
                let msg = Error::Corrupt { lsn, file, detail }.to_string();
                assert!(msg.contains(&start.to_string()), "message names the Lsn: {msg}");
            }
            Err(e) => panic!("flip at {}: wrong error {e}", Lsn(byte)),
            Ok(_) => panic!("flip at {}: opened a corrupt WAL", Lsn(byte)),
        }
    }
}

#[test]
fn a_missing_segment_and_a_foreign_segment_are_errors() {
    let base = tempfile::tempdir().unwrap();
    build(base.path(), 150_000); // spans several 1 MiB segments
    let segments = list_segments(&base.path().join("wal")).unwrap();
    assert!(segments.len() >= 3, "need several segments, have {}", segments.len());
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    std::fs::remove_file(work.path().join("wal").join(segments[1].2.file_name().unwrap())).unwrap();
    let err = Database::open(work.path(), small_config()).err().expect("missing segment must fail");
    assert!(err.to_string().contains("missing"), "{err}");

    // A segment from another cluster in the middle.
    let other = tempfile::tempdir().unwrap();
    build(other.path(), 150_000);
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    let name = segments[1].2.file_name().unwrap();
    std::fs::copy(other.path().join("wal").join(name), work.path().join("wal").join(name)).unwrap();
    let err = Database::open(work.path(), small_config()).err().expect("foreign segment must fail");
    assert!(err.to_string().contains("system id"), "{err}");
}

#[test]
fn records_that_would_end_exactly_at_a_segment_boundary_are_read_back_in_order() {
    use hindsight_engine::wal::reader::{scan_wal, TailPolicy, WalDir};
    use hindsight_engine::wal::segment::first_record_lsn;
    use hindsight_engine::wal::writer::{create_segment, WalWriter};
    use hindsight_engine::wal::{Record, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let seg = 1024 * 1024u64;
    let (system_id, tl) = (7u64, hindsight_protocol::Timeline(1));
    create_segment(dir.path(), system_id, tl, seg, 0).unwrap();
    let mut w =
        WalWriter::open(dir.path(), system_id, tl, seg, first_record_lsn(0, seg), Lsn::ZERO, false).unwrap();
    let mut names = Vec::new();
    let mut exact_fits = 0;
    // Fill three segments; whenever a restore-point record can end exactly at the segment end,
    // make it that long.
    while w.insert_lsn().0 < 3 * seg {
        let remaining = (seg - w.insert_lsn().0 % seg) as usize;
        // Record = 17 header + 1 name length + name + 1..2 time varint (time 0 → 1 byte).
        let name_len = if (20..=200 + 19).contains(&remaining) { remaining - 19 } else { 150 };
        if name_len != 150 {
            exact_fits += 1;
        }
        let name = "n".repeat(name_len.clamp(1, 200));
        let mut body = Vec::new();
        Record::RestorePoint { name: name.clone(), time_us: 0 }.encode_body(&mut body);
        let (start, end) = w.append(RecordKind::RestorePoint, &body).unwrap();
        assert!(end.0 % seg != 0, "record at {start} ends exactly at a segment boundary");
        assert_eq!(start.0 / seg, (end.0 - 1) / seg, "record at {start} crosses a segment boundary");
        names.push(name);
    }
    w.sync().unwrap();
    assert!(exact_fits > 0, "the test must try records that would fill a segment exactly");
    let mut read = Vec::new();
    let wal = WalDir { path: dir.path(), system_id, timeline: tl, segment_size_bytes: seg };
    scan_wal(wal, first_record_lsn(0, seg), Some(Lsn::ZERO), TailPolicy::Strict, |e| {
        if let Record::RestorePoint { name, .. } = e.record {
            read.push(name);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(read, names);
}

#[test]
fn a_zeroed_length_inside_written_wal_is_corruption_not_an_end() {
    let base = tempfile::tempdir().unwrap();
    let history = build(base.path(), 0);
    let seg = small_config().segment_size_bytes;
    let start = history.states[9].0;
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    let path = last_segment(work.path());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0, 0, 0, 0], start.0 % seg).unwrap();
    match Database::open(work.path(), small_config()) {
        Err(Error::Corrupt { lsn, .. }) => assert_eq!(lsn, start),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a WAL with a hole, dropping acknowledged commits"),
    }
}
