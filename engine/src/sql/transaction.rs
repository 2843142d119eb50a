//! A transaction's view of the database: its snapshot plus its own buffered writes and DDL.
//!
//! Reads see the [`ReadView`] taken at the transaction's first statement, overlaid with what
//! the transaction itself wrote (read-your-writes), including in range scans, which merge the
//! buffered puts and deletes into the snapshot's key order. DDL is applied to a private copy of
//! the catalog, so a table created in the transaction can be written and read by its later
//! statements. At COMMIT everything becomes one [`WriteSet`].

use crate::schema::{Catalog, TableDef, TableId};
use crate::store::ReadView;
use crate::txn::{TableWrites, WriteSet};
use crate::value::Key;
use crate::wal::record::DdlOp;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

/// Whether a key range can hold any key (and is safe to pass to `BTreeMap::range`, which
/// panics on inverted ranges).
pub(crate) fn range_nonempty(lower: Bound<&Key>, upper: Bound<&Key>) -> bool {
    use Bound::*;
    match (lower, upper) {
        (Unbounded, _) | (_, Unbounded) => true,
        (Included(l), Included(u)) => l <= u,
        (Included(l) | Excluded(l), Included(u) | Excluded(u)) => l < u,
    }
}

/// A transaction's snapshot and buffered changes.
///
/// Invariants:
/// - `writes` holds final images per key, only for tables in `catalog()`.
/// - `fresh` holds the ids of tables created or truncated by this transaction: the store has no
///   rows for them, so reads of them come from `writes` alone.
/// - `ddl` holds no operation that a later one cancelled (CREATE then DROP logs nothing).
pub(crate) struct Txn {
    view: ReadView,
    /// The transaction's start time (`now()`), microseconds since the epoch.
    pub start_us: i64,
    /// The catalog after this transaction's DDL; `None` while it made none.
    catalog: Option<Catalog>,
    ddl: Vec<DdlOp>,
    writes: BTreeMap<TableId, TableWrites>,
    fresh: HashSet<TableId>,
}

impl Txn {
    /// A transaction reading at `view`.
    pub fn new(view: ReadView, start_us: i64) -> Txn {
        Txn { view, start_us, catalog: None, ddl: Vec::new(), writes: BTreeMap::new(), fresh: HashSet::new() }
    }

    /// The tables as this transaction sees them.
    pub fn catalog(&self) -> &Catalog {
        self.catalog.as_ref().unwrap_or_else(|| self.view.catalog())
    }

    /// The table `name` as this transaction sees it.
    pub fn table(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.catalog().get(name)
    }

    /// Whether the transaction has written or changed anything.
    pub fn has_writes(&self) -> bool {
        !self.ddl.is_empty() || self.writes.values().any(|t| !t.rows.is_empty())
    }

    /// The encoded row of `key`, if it exists for this transaction.
    pub fn get(&self, def: &TableDef, key: &Key) -> Option<Cow<'_, [u8]>> {
        if let Some(own) = self.writes.get(&def.id).and_then(|w| w.rows.get(key)) {
            return own.as_deref().map(Cow::Borrowed);
        }
        if self.fresh.contains(&def.id) {
            return None;
        }
        self.view.get_raw(def, key).map(|b| Cow::Owned(b.into_vec()))
    }

    /// Whether `key` exists for this transaction.
    pub fn exists(&self, def: &TableDef, key: &Key) -> bool {
        if let Some(own) = self.writes.get(&def.id).and_then(|w| w.rows.get(key)) {
            return own.is_some();
        }
        !self.fresh.contains(&def.id) && self.view.get_raw(def, key).is_some()
    }

    /// Calls `f(key, row)` for each row with a key in the range, in key order, until it returns
    /// false: the snapshot's rows merged with this transaction's puts and deletes.
    pub fn scan(
        &self,
        def: &TableDef,
        lower: Bound<&Key>,
        upper: Bound<&Key>,
        mut f: impl FnMut(&Key, &[u8]) -> bool,
    ) {
        if !range_nonempty(lower, upper) {
            return;
        }
        let fresh = self.fresh.contains(&def.id);
        let own = match self.writes.get(&def.id) {
            Some(w) if !w.rows.is_empty() => w,
            _ => {
                if !fresh {
                    self.view.scan(def, lower, upper, f);
                }
                return;
            }
        };
        let mut pending = own.rows.range::<Key, _>((lower, upper)).peekable();
        let mut stopped = false;
        if !fresh {
            self.view.scan(def, lower, upper, |key, row| {
                // Own writes to keys before this one come first.
                while let Some((k, image)) = pending.next_if(|(k, _)| *k < key) {
                    if let Some(r) = image {
                        if !f(k, r) {
                            stopped = true;
                            return false;
                        }
                    }
                }
                // An own write to this key replaces the snapshot's row (or deletes it).
                let row = match pending.next_if(|(k, _)| *k == key) {
                    Some((_, image)) => match image {
                        Some(r) => &r[..],
                        None => return true,
                    },
                    None => row,
                };
                if !f(key, row) {
                    stopped = true;
                    return false;
                }
                true
            });
        }
        if stopped {
            return;
        }
        for (k, image) in pending {
            if let Some(r) = image {
                if !f(k, r) {
                    return;
                }
            }
        }
    }

    fn table_writes(&mut self, def: &Arc<TableDef>) -> &mut TableWrites {
        self.writes
            .entry(def.id)
            .or_insert_with(|| TableWrites { def: Arc::clone(def), rows: BTreeMap::new() })
    }

    /// Buffers `row` as the new image of `key`.
    pub fn put(&mut self, def: &Arc<TableDef>, key: Key, row: Box<[u8]>) {
        self.table_writes(def).rows.insert(key, Some(row));
    }

    /// Buffers the deletion of `key`, which exists for this transaction. A key that only this
    /// transaction wrote is simply forgotten, so no delete of a row the snapshot never had is
    /// logged.
    pub fn delete(&mut self, def: &Arc<TableDef>, key: Key) {
        let buffered = self.writes.get(&def.id).is_some_and(|w| w.rows.contains_key(&key));
        let in_snapshot =
            !self.fresh.contains(&def.id) && (!buffered || self.view.get_raw(def, &key).is_some());
        if in_snapshot {
            self.table_writes(def).rows.insert(key, None);
        } else if let Some(w) = self.writes.get_mut(&def.id) {
            w.rows.remove(&key);
        }
    }

    /// Whether `id` was created or truncated by this transaction (the store has none of its rows).
    pub fn is_fresh(&self, id: TableId) -> bool {
        self.fresh.contains(&id)
    }

    /// CREATE TABLE: `def` must have a new id and a name not in `catalog()`.
    pub fn create_table(&mut self, def: TableDef) {
        let def = Arc::new(def);
        self.catalog = Some(self.catalog().with(Arc::clone(&def)));
        self.fresh.insert(def.id);
        self.ddl.push(DdlOp::Create((*def).clone()));
    }

    /// DROP TABLE of a table in `catalog()`. Dropping a table this transaction created (or
    /// truncated) unwinds those operations instead of logging them.
    pub fn drop_table(&mut self, def: &TableDef) {
        self.catalog = Some(self.catalog().without(&def.name));
        let mut id = def.id;
        loop {
            self.writes.remove(&id);
            self.fresh.remove(&id);
            let truncated_from =
                self.ddl.iter().position(|op| matches!(op, DdlOp::Truncate { new_id, .. } if *new_id == id));
            if let Some(pos) = truncated_from {
                if let DdlOp::Truncate { old_id, .. } = self.ddl.remove(pos) {
                    id = old_id;
                }
                continue;
            }
            let created = self.ddl.iter().position(|op| matches!(op, DdlOp::Create(d) if d.id == id));
            if let Some(pos) = created {
                self.ddl.remove(pos);
                return;
            }
            break;
        }
        self.ddl.push(DdlOp::Drop { id, name: def.name.clone() });
    }

    /// TRUNCATE of a table in `catalog()`: its name moves to `new_id` (from
    /// `Database::allocate_table_id`), with no rows. A table this transaction created or
    /// truncated already just loses its buffered rows (`new_id` is then unused).
    pub fn truncate_table(&mut self, def: &TableDef, new_id: TableId) {
        self.writes.remove(&def.id);
        if self.fresh.contains(&def.id) {
            return;
        }
        let new_def = Arc::new(TableDef { id: new_id, ..def.clone() });
        self.catalog = Some(self.catalog().with(new_def));
        self.fresh.insert(new_id);
        self.ddl.push(DdlOp::Truncate { old_id: def.id, new_id, name: def.name.clone() });
    }

    /// The write set to commit.
    pub fn into_write_set(self) -> WriteSet {
        let mut rows = self.writes;
        rows.retain(|_, w| !w.rows.is_empty());
        WriteSet { snapshot_lsn: self.view.lsn(), ddl: self.ddl, rows, view: Some(self.view) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnDef;
    use crate::store::Store;
    use crate::value::{encode_row, DataType, Value};
    use hindsight_protocol::Lsn;

    fn def(id: u32, name: &str) -> TableDef {
        let cols = vec![
            ColumnDef { name: "id".into(), data_type: DataType::BigInt, nullable: false },
            ColumnDef { name: "v".into(), data_type: DataType::Text, nullable: true },
        ];
        TableDef::new(TableId(id), name.into(), cols, 0).unwrap()
    }

    fn row(id: i64, v: &str) -> Box<[u8]> {
        let mut out = Vec::new();
        encode_row(&[DataType::BigInt, DataType::Text], &[Value::Int(id), Value::Text(v.into())], &mut out)
            .unwrap();
        out.into_boxed_slice()
    }

    /// A store holding table "t" (id 1) with keys 1, 3, 5 visible at Lsn 10.
    fn store() -> (Arc<Store>, Arc<TableDef>) {
        let store = Arc::new(Store::new(Lsn(0)));
        let t = Arc::new(def(1, "t"));
        store.note_table_id(TableId(1));
        store.create_table(Arc::clone(&t), Lsn(10));
        let data = store.table_data(t.id).unwrap();
        for k in [1, 3, 5] {
            store.write(&data, Key::Int(k), Some(row(k, "s")), Lsn(10), store.horizon()).unwrap();
        }
        store.publish(Lsn(10), 0);
        (store, t)
    }

    fn keys(txn: &Txn, t: &TableDef, lower: Bound<&Key>, upper: Bound<&Key>) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        txn.scan(t, lower, upper, |k, r| {
            let Key::Int(k) = k else { panic!("int key") };
            let vals = crate::value::decode_row(&t.types, r).unwrap();
            out.push((*k, vals[1].to_string()));
            true
        });
        out
    }

    #[test]
    fn scans_merge_own_writes_in_key_order() {
        let (store, t) = store();
        let mut txn = Txn::new(store.read_view(), 0);
        txn.put(&t, Key::Int(0), row(0, "new"));
        txn.put(&t, Key::Int(3), row(3, "upd"));
        txn.delete(&t, Key::Int(5));
        txn.put(&t, Key::Int(9), row(9, "new"));
        let all = keys(&txn, &t, Bound::Unbounded, Bound::Unbounded);
        let want: Vec<(i64, String)> =
            [(0, "new"), (1, "s"), (3, "upd"), (9, "new")].iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(all, want);
        let mid = keys(&txn, &t, Bound::Excluded(&Key::Int(0)), Bound::Included(&Key::Int(5)));
        assert_eq!(mid, want[1..3].to_vec());
        assert!(keys(&txn, &t, Bound::Excluded(&Key::Int(3)), Bound::Excluded(&Key::Int(3))).is_empty());
        assert!(keys(&txn, &t, Bound::Included(&Key::Int(5)), Bound::Included(&Key::Int(2))).is_empty());
        // Stopping early stops both sources.
        let mut n = 0;
        txn.scan(&t, Bound::Unbounded, Bound::Unbounded, |_, _| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2);
        assert!(
            txn.exists(&t, &Key::Int(9)) && !txn.exists(&t, &Key::Int(5)) && txn.exists(&t, &Key::Int(1))
        );
        assert_eq!(txn.get(&t, &Key::Int(3)).as_deref(), Some(&row(3, "upd")[..]));
    }

    #[test]
    fn deleting_own_inserts_logs_nothing() {
        let (store, t) = store();
        let mut txn = Txn::new(store.read_view(), 0);
        txn.put(&t, Key::Int(7), row(7, "x"));
        txn.delete(&t, Key::Int(7));
        txn.put(&t, Key::Int(1), row(1, "x"));
        txn.delete(&t, Key::Int(1));
        let ws = txn.into_write_set();
        assert_eq!(ws.snapshot_lsn, Lsn(10));
        let rows: Vec<_> = ws.rows[&TableId(1)].rows.iter().map(|(k, v)| (k.clone(), v.is_some())).collect();
        assert_eq!(rows, vec![(Key::Int(1), false)], "only the snapshot's row is deleted");
    }

    #[test]
    fn ddl_is_private_and_cancels_out() {
        let (store, t) = store();
        let mut txn = Txn::new(store.read_view(), 0);
        txn.create_table(def(7, "u"));
        let u = Arc::clone(txn.table("u").unwrap());
        txn.put(&u, Key::Int(1), row(1, "x"));
        assert_eq!(keys(&txn, &u, Bound::Unbounded, Bound::Unbounded).len(), 1);
        txn.truncate_table(&u, TableId(99));
        assert!(keys(&txn, &u, Bound::Unbounded, Bound::Unbounded).is_empty());
        assert_eq!(txn.table("u").unwrap().id, TableId(7), "truncating a fresh table keeps its id");
        txn.drop_table(&u);
        assert!(txn.table("u").is_none());
        assert!(!txn.has_writes(), "CREATE then DROP leaves nothing");

        txn.put(&t, Key::Int(8), row(8, "x"));
        txn.truncate_table(&t, TableId(8));
        let t2 = Arc::clone(txn.table("t").unwrap());
        assert_eq!(t2.id, TableId(8));
        assert!(keys(&txn, &t2, Bound::Unbounded, Bound::Unbounded).is_empty());
        txn.drop_table(&t2);
        let ws = txn.into_write_set();
        assert_eq!(ws.ddl, vec![DdlOp::Drop { id: TableId(1), name: "t".into() }]);
        assert!(ws.rows.is_empty());
        assert!(store.read_view().table("t").is_some(), "nothing reached the store");
    }
}
