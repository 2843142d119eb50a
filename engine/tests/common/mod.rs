//! Helpers for engine tests: build write sets for an `accounts(id, balance, note)` table
//! without going through SQL, so storage tests do not depend on the SQL layer.
#![allow(dead_code)]

use hindsight_engine::db::Config;
use hindsight_engine::schema::{ColumnDef, TableDef};
use hindsight_engine::txn::{TableWrites, WriteSet};
use hindsight_engine::value::{encode_row, DataType, Key, Value};
use hindsight_engine::wal::DdlOp;
use hindsight_engine::Database;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const TYPES: [DataType; 3] = [DataType::BigInt, DataType::BigInt, DataType::Text];

/// A config with small segments so tests cross segment boundaries.
pub fn small_config() -> Config {
    Config { segment_size_bytes: 1024 * 1024, ..Config::default() }
}

pub fn create_accounts(db: &Database) -> Arc<TableDef> {
    let def = TableDef::new(
        db.allocate_table_id(),
        "accounts".into(),
        vec![
            ColumnDef { name: "id".into(), data_type: DataType::BigInt, nullable: false },
            ColumnDef { name: "balance".into(), data_type: DataType::BigInt, nullable: false },
            ColumnDef { name: "note".into(), data_type: DataType::Text, nullable: false },
        ],
        0,
    )
    .unwrap();
    let ws = WriteSet {
        snapshot_lsn: db.read_view().lsn(),
        ddl: vec![DdlOp::Create(def.clone())],
        ..Default::default()
    };
    db.commit(ws).unwrap();
    Arc::clone(db.read_view().table("accounts").unwrap())
}

pub fn row(id: i64, balance: i64, note: &str) -> Box<[u8]> {
    let mut b = Vec::new();
    encode_row(&TYPES, &[Value::Int(id), Value::Int(balance), Value::Text(note.into())], &mut b).unwrap();
    b.into()
}

/// A write set putting (id, balance) rows and deleting ids (balance None).
pub fn writes(
    def: &Arc<TableDef>,
    snapshot: hindsight_protocol::Lsn,
    rows: &[(i64, Option<i64>)],
) -> WriteSet {
    let mut map = BTreeMap::new();
    for &(id, bal) in rows {
        map.insert(Key::Int(id), bal.map(|b| row(id, b, &format!("note-{id}"))));
    }
    let mut tables = BTreeMap::new();
    tables.insert(def.id, TableWrites { def: Arc::clone(def), rows: map });
    WriteSet { snapshot_lsn: snapshot, ddl: vec![], rows: tables, view: None }
}

/// All (id, balance) rows of accounts as of the newest state.
pub fn dump(db: &Database) -> BTreeMap<i64, i64> {
    let view = db.read_view();
    let Some(def) = view.table("accounts").cloned() else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    view.scan(&def, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, |_, raw| {
        let v = hindsight_engine::value::decode_row(&def.types, raw).unwrap();
        if let (Value::Int(id), Value::Int(b)) = (&v[0], &v[1]) {
            out.insert(*id, *b);
        }
        true
    });
    out
}

/// Copies a data directory (not its lock file): a cold copy of what its disk holds now.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
