//! CREATE TABLE, DROP TABLE and TRUNCATE, applied to a transaction.
//!
//! DDL is transactional: it changes the transaction's private catalog and is logged in
//! statement order with the transaction's rows at COMMIT.

use super::compile::{data_type, ident_name, name_span, table_name, At};
use super::plan::lookup_table;
use super::transaction::Txn;
use crate::error::{ErrorCode, SqlError};
use crate::schema::{ColumnDef, TableDef, TableId};
use sqlparser::ast;

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not supported"))
}

const PK_HINT: &str =
    "declare exactly one column PRIMARY KEY, e.g. CREATE TABLE t (id BIGINT PRIMARY KEY, …)";

/// Builds the definition a CREATE TABLE describes (with id `id`).
pub(crate) fn table_def(ct: &ast::CreateTable, id: TableId) -> Result<TableDef, SqlError> {
    if ct.or_replace
        || ct.temporary
        || ct.external
        || ct.query.is_some()
        || ct.like.is_some()
        || ct.clone.is_some()
    {
        return Err(unsupported("CREATE TABLE with OR REPLACE, TEMPORARY, EXTERNAL, AS, LIKE or CLONE"));
    }
    let name = table_name(&ct.name)?;
    let mut columns = Vec::with_capacity(ct.columns.len());
    let mut pk: Option<usize> = None;
    let set_pk = |i: usize, pk: &mut Option<usize>| -> Result<(), SqlError> {
        if pk.is_some_and(|p| p != i) {
            return Err(SqlError::new(
                ErrorCode::SyntaxError,
                format!("multiple primary keys for table \"{name}\" are not allowed"),
            )
            .with_hint(PK_HINT));
        }
        *pk = Some(i);
        Ok(())
    };
    for (i, c) in ct.columns.iter().enumerate() {
        let col_name = ident_name(&c.name);
        let ty = data_type(&c.data_type).map_err(|e| e.at(Some(c.name.span)))?;
        let mut nullable = true;
        for opt in &c.options {
            match &opt.option {
                ast::ColumnOption::Null => nullable = true,
                ast::ColumnOption::NotNull => nullable = false,
                ast::ColumnOption::PrimaryKey(_) => {
                    set_pk(i, &mut pk)?;
                    nullable = false;
                }
                ast::ColumnOption::Comment(_) => {}
                ast::ColumnOption::Unique(_) => {
                    return Err(unsupported(format!("UNIQUE on column \"{col_name}\""))
                        .with_hint("the primary key is the only unique index"))
                }
                ast::ColumnOption::Default(_) => {
                    return Err(unsupported(format!("DEFAULT on column \"{col_name}\"")))
                }
                other => return Err(unsupported(format!("the column option {other}"))),
            }
        }
        columns.push(ColumnDef { name: col_name, data_type: ty, nullable });
    }
    for constraint in &ct.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(p) => {
                let [col] = p.columns.as_slice() else {
                    return Err(SqlError::new(
                        ErrorCode::FeatureNotSupported,
                        format!("a composite primary key ({} columns) is not supported", p.columns.len()),
                    )
                    .with_hint(PK_HINT));
                };
                let ast::Expr::Identifier(id) = &col.column.expr else {
                    return Err(unsupported(format!("PRIMARY KEY ({})", col.column.expr)));
                };
                let col_name = ident_name(id);
                let i = columns.iter().position(|c| c.name == col_name).ok_or_else(|| {
                    SqlError::new(
                        ErrorCode::UndefinedColumn,
                        format!("column \"{col_name}\" named in key does not exist"),
                    )
                    .at(Some(id.span))
                })?;
                set_pk(i, &mut pk)?;
            }
            other => return Err(unsupported(format!("the constraint {other}"))),
        }
    }
    let Some(pk) = pk else {
        return Err(SqlError::new(
            ErrorCode::FeatureNotSupported,
            format!("table \"{name}\" has no primary key"),
        )
        .with_hint(PK_HINT)
        .at(name_span(&ct.name)));
    };
    TableDef::new(id, name, columns, pk)
}

/// CREATE TABLE. Returns false when the table existed and IF NOT EXISTS was given.
pub(crate) fn create_table(
    txn: &mut Txn,
    ct: &ast::CreateTable,
    allocate: &dyn Fn() -> TableId,
) -> Result<bool, SqlError> {
    let name = table_name(&ct.name)?;
    if txn.table(&name).is_some() {
        if ct.if_not_exists {
            // Still reject what we could not have created, so the statement is not silently wrong.
            table_def(ct, TableId(0))?;
            return Ok(false);
        }
        return Err(SqlError::new(ErrorCode::DuplicateTable, format!("table \"{name}\" already exists"))
            .at(name_span(&ct.name)));
    }
    let def = table_def(ct, TableId(0))?;
    txn.create_table(TableDef { id: allocate(), ..def });
    Ok(true)
}

/// DROP TABLE [IF EXISTS] a, b, …
pub(crate) fn drop_tables(txn: &mut Txn, names: &[ast::ObjectName], if_exists: bool) -> Result<(), SqlError> {
    for name in names {
        match lookup_table(txn.catalog(), name) {
            Ok(def) => txn.drop_table(&def),
            Err(e) if if_exists && e.code == ErrorCode::UndefinedTable => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// TRUNCATE [TABLE] a, b, …
pub(crate) fn truncate_tables(
    txn: &mut Txn,
    t: &ast::Truncate,
    allocate: &dyn Fn() -> TableId,
) -> Result<(), SqlError> {
    if t.partitions.is_some() || t.on_cluster.is_some() {
        return Err(unsupported("TRUNCATE with PARTITION or ON CLUSTER"));
    }
    for target in &t.table_names {
        let def = match lookup_table(txn.catalog(), &target.name) {
            Ok(def) => def,
            Err(e) if t.if_exists && e.code == ErrorCode::UndefinedTable => continue,
            Err(e) => return Err(e),
        };
        let new_id = if txn.is_fresh(def.id) { def.id } else { allocate() };
        txn.truncate_table(&def, new_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::DataType;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn def(sql: &str) -> Result<TableDef, SqlError> {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let ast::Statement::CreateTable(ct) = &stmts[0] else { panic!("not CREATE TABLE") };
        table_def(ct, TableId(5))
    }

    #[test]
    fn create_table_maps_types_keys_and_nullability() {
        let d = def(
            "CREATE TABLE Accounts (id INT PRIMARY KEY, \"Owner\" VARCHAR(20) NOT NULL, bal DOUBLE PRECISION, \
             ok BOOL NULL, at TIMESTAMP, n SMALLINT, f REAL, c CHAR(3))",
        )
        .unwrap();
        assert_eq!(d.name, "accounts");
        assert_eq!(d.pk, 0);
        assert_eq!(
            d.types,
            vec![
                DataType::BigInt,
                DataType::Text,
                DataType::Double,
                DataType::Boolean,
                DataType::Timestamp,
                DataType::BigInt,
                DataType::Double,
                DataType::Text
            ]
        );
        assert_eq!(d.columns[1].name, "Owner");
        assert!(!d.columns[0].nullable && !d.columns[1].nullable && d.columns[2].nullable);
        let d = def("CREATE TABLE t (a TEXT, b BIGINT, PRIMARY KEY (b))").unwrap();
        assert_eq!((d.pk, d.columns[1].nullable), (1, false));
    }

    #[test]
    fn create_table_refuses_what_it_cannot_honour() {
        let e = def("CREATE TABLE t (a BIGINT, b BIGINT)").unwrap_err();
        assert_eq!(e.code, ErrorCode::FeatureNotSupported);
        assert!(e.hint.is_some() && e.message.contains("no primary key"));
        let e = def("CREATE TABLE t (a BIGINT, b BIGINT, PRIMARY KEY (a, b))").unwrap_err();
        assert_eq!(e.code, ErrorCode::FeatureNotSupported);
        assert!(e.message.contains("composite"));
        assert!(def("CREATE TABLE t (a BIGINT PRIMARY KEY, b BIGINT PRIMARY KEY)").is_err());
        assert_eq!(
            def("CREATE TABLE t (a BIGINT PRIMARY KEY, b NUMERIC)").unwrap_err().code,
            ErrorCode::FeatureNotSupported
        );
        assert_eq!(
            def("CREATE TABLE t (a BIGINT PRIMARY KEY DEFAULT 1)").unwrap_err().code,
            ErrorCode::FeatureNotSupported
        );
        assert_eq!(
            def("CREATE TABLE t (a BIGINT PRIMARY KEY, a TEXT)").unwrap_err().code,
            ErrorCode::SyntaxError
        );
        assert_eq!(
            def("CREATE TABLE t (a BIGINT, PRIMARY KEY (b))").unwrap_err().code,
            ErrorCode::UndefinedColumn
        );
    }
}
