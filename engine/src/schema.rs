//! Table definitions and the catalog.
//!
//! A [`Catalog`] is immutable; every DDL commit makes a new one, and the store keeps the versions
//! that some snapshot can still see, so a reader at Lsn s resolves names exactly as at s.

use crate::error::{ErrorCode, SqlError};
use crate::value::{put_uvarint, CodecError, DataType, Reader, COLUMNS_MAX};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest table or column name, in bytes.
pub const NAME_LEN_MAX: usize = 63;

/// A table's storage identity. A name maps to a new id on CREATE and on TRUNCATE, so a
/// transaction that wrote an id that is no longer current knows it raced with DDL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u32);

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    /// Lower-case name.
    pub name: String,
    /// Its type.
    pub data_type: DataType,
    /// Whether NULL is allowed (never for the primary key).
    pub nullable: bool,
}

/// A table definition.
///
/// Invariants:
/// - `pk < columns.len()` and the primary-key column is not nullable.
/// - Column names are distinct; `types` mirrors `columns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDef {
    /// The storage id.
    pub id: TableId,
    /// Lower-case name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<ColumnDef>,
    /// Index of the primary-key column.
    pub pk: usize,
    /// The column types, for the row codec.
    pub types: Vec<DataType>,
}

impl TableDef {
    /// A checked definition.
    pub fn new(id: TableId, name: String, columns: Vec<ColumnDef>, pk: usize) -> Result<TableDef, SqlError> {
        if columns.is_empty() || columns.len() > COLUMNS_MAX {
            return Err(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!("table \"{name}\" must have between 1 and {COLUMNS_MAX} columns"),
            ));
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].iter().any(|o| o.name == c.name) {
                return Err(SqlError::new(
                    ErrorCode::SyntaxError,
                    format!("column \"{}\" appears twice in table \"{name}\"", c.name),
                ));
            }
            if c.name.len() > NAME_LEN_MAX {
                return Err(SqlError::new(
                    ErrorCode::ProgramLimitExceeded,
                    format!("column name \"{}\" is longer than {NAME_LEN_MAX} bytes", c.name),
                ));
            }
        }
        if name.len() > NAME_LEN_MAX {
            return Err(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!("table name \"{name}\" is longer than {NAME_LEN_MAX} bytes"),
            ));
        }
        assert!(pk < columns.len(), "primary key index out of range");
        let mut columns = columns;
        columns[pk].nullable = false;
        let types = columns.iter().map(|c| c.data_type).collect();
        Ok(TableDef { id, name, columns, pk, types })
    }

    /// The index of a column by (lower-case) name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The primary-key column's type.
    pub fn key_type(&self) -> DataType {
        self.types[self.pk]
    }

    /// Appends the self-describing encoding used in WAL DDL and snapshots:
    /// `| id varint | name str | pk varint | ncols varint | (name str | type u8 | nullable u8)* |`
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uvarint(out, u64::from(self.id.0));
        put_str(out, &self.name);
        put_uvarint(out, self.pk as u64);
        put_uvarint(out, self.columns.len() as u64);
        for c in &self.columns {
            put_str(out, &c.name);
            out.push(c.data_type.tag());
            out.push(u8::from(c.nullable));
        }
    }

    /// Decodes [`TableDef::encode`]'s bytes, checking every invariant.
    pub fn decode(r: &mut Reader<'_>) -> Result<TableDef, CodecError> {
        let id = TableId(u32::try_from(r.uvarint()?).map_err(|_| CodecError("table id past u32"))?);
        let name = r.string(NAME_LEN_MAX)?.to_string();
        let pk = r.len(COLUMNS_MAX)?;
        let ncols = r.len(COLUMNS_MAX)?;
        let mut columns = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            let cname = r.string(NAME_LEN_MAX)?.to_string();
            let data_type = DataType::from_tag(r.u8()?).ok_or(CodecError("unknown column type tag"))?;
            let nullable = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(CodecError("nullable byte is not 0 or 1")),
            };
            columns.push(ColumnDef { name: cname, data_type, nullable });
        }
        if pk >= columns.len() {
            return Err(CodecError("primary key index out of range"));
        }
        TableDef::new(id, name, columns, pk).map_err(|_| CodecError("invalid table definition"))
    }
}

/// Appends a length-prefixed string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The set of tables at one point of the WAL.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    tables: BTreeMap<String, Arc<TableDef>>,
}

impl Catalog {
    /// The table of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(name)
    }

    /// The table currently holding that id.
    pub fn by_id(&self, id: TableId) -> Option<&Arc<TableDef>> {
        self.tables.values().find(|t| t.id == id)
    }

    /// All tables by name.
    pub fn tables(&self) -> impl Iterator<Item = &Arc<TableDef>> {
        self.tables.values()
    }

    /// Number of tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether there are no tables.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// A copy with `def` added or replacing the table of the same name.
    pub fn with(&self, def: Arc<TableDef>) -> Catalog {
        let mut c = self.clone();
        c.tables.insert(def.name.clone(), def);
        c
    }

    /// A copy without the table `name`.
    pub fn without(&self, name: &str) -> Catalog {
        let mut c = self.clone();
        c.tables.remove(name);
        c
    }
}
