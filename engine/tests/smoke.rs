mod common;
use common::*;
use hindsight_engine::Database;

#[test]
fn commit_reopen_checkpoint_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let db = Database::open(dir.path(), small_config()).unwrap();
        let def = create_accounts(&db);
        for i in 0..100 {
            let ws = writes(&def, db.read_view().lsn(), &[(i, Some(i * 10))]);
            db.commit(ws).unwrap();
        }
        let ws = writes(&def, db.read_view().lsn(), &[(5, None)]);
        db.commit(ws).unwrap();
        assert_eq!(dump(&db).len(), 99);
        digest = db.status().digest;
        assert_eq!(digest, db.store().recompute_digest());
    }
    let db = Database::open(dir.path(), small_config()).unwrap();
    assert_eq!(db.recovery_report().replayed_txns, 102);
    assert_eq!(db.status().digest, digest);
    assert_eq!(dump(&db).len(), 99);
    // The snapshot is of the state before CHECKPOINT; its own record may be published (and
    // visible) by the time it returns, so compare with the Lsn read before.
    let before = db.status().visible_lsn;
    let lsn = db.checkpoint().unwrap();
    assert_eq!(lsn, before);
    drop(db);
    let db = Database::open(dir.path(), small_config()).unwrap();
    assert_eq!(db.recovery_report().snapshot_lsn, Some(lsn));
    assert_eq!(db.status().digest, digest);
    assert_eq!(db.status().last_txid.0, 102);
    assert_eq!(dump(&db)[&7], 70);
}
