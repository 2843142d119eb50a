//! Executing plans against a transaction.
//!
//! Reads go through the plan's access path ([`for_each_row`]); writes are buffered in the
//! [`Txn`]. UPDATE and DELETE first collect the rows they change and then change them, so a
//! statement never sees its own effects (no Halloween problem), and primary-key uniqueness is
//! checked when the statement's changes are applied: `UPDATE t SET id = id + 1` succeeds when
//! the new keys are distinct, as the SQL standard (not PostgreSQL's per-row check) says.

use super::compile::AggFunc;
use super::expr::{cast, compare, encode_group_value, mismatch, out_of_range, type_name};
use super::plan::{
    column_label, normalize_key_value, order_values, Access, DeletePlan, InsertPlan, InsertSource,
    SelectPlan, SortExpr, UpdatePlan,
};
use super::transaction::Txn;
use super::{compile::AggSpec, Column};
use crate::error::{ErrorCode, SqlError};
use crate::schema::TableDef;
use crate::value::{decode_row, encode_row, Key, Value};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

/// Counters of how statements read tables, for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Point lookups by primary key.
    pub point_lookups: u64,
    /// Scans of a primary-key range.
    pub range_scans: u64,
    /// Scans of a whole table.
    pub full_scans: u64,
    /// Rows read (before WHERE).
    pub rows_examined: u64,
}

fn corrupt(def: &TableDef) -> SqlError {
    SqlError::new(ErrorCode::InternalError, format!("a stored row of table \"{}\" does not decode", def.name))
}

/// Decodes a stored row.
pub(crate) fn decode(def: &TableDef, bytes: &[u8]) -> Result<Vec<Value>, SqlError> {
    decode_row(&def.types, bytes).map_err(|_| corrupt(def))
}

/// Calls `f(key, row)` for every row of `def` the access path reads, in key order, until it
/// returns `Ok(false)` or an error.
pub(crate) fn for_each_row(
    txn: &Txn,
    def: &TableDef,
    access: &Access,
    stats: &mut SessionStats,
    mut f: impl FnMut(&Key, &[u8]) -> Result<bool, SqlError>,
) -> Result<(), SqlError> {
    let mut result = Ok(());
    let mut examined = 0u64;
    let mut visit = |k: &Key, row: &[u8]| {
        examined += 1;
        match f(k, row) {
            Ok(go_on) => go_on,
            Err(e) => {
                result = Err(e);
                false
            }
        }
    };
    match access {
        Access::Empty => {}
        Access::Points(keys) => {
            for k in keys {
                stats.point_lookups += 1;
                if let Some(row) = txn.get(def, k) {
                    if !visit(k, &row) {
                        break;
                    }
                }
            }
        }
        Access::Range(lower, upper) => {
            stats.range_scans += 1;
            txn.scan(def, lower.as_ref(), upper.as_ref(), visit);
        }
        Access::Full => {
            stats.full_scans += 1;
            txn.scan(def, Bound::Unbounded, Bound::Unbounded, visit);
        }
    }
    stats.rows_examined += examined;
    result
}

/// The running state of one aggregate.
enum Acc {
    Count(i64),
    SumInt(Option<i128>),
    SumDouble(Option<f64>),
    AvgInt(i128, i64),
    AvgDouble(f64, i64),
    Min(Option<Value>),
    Max(Option<Value>),
}

struct AggState {
    acc: Acc,
    /// Values seen, for DISTINCT aggregates.
    seen: Option<HashSet<Vec<u8>>>,
}

impl AggState {
    fn new(spec: &AggSpec) -> AggState {
        use crate::value::DataType;
        let double = spec.arg_ty == Some(DataType::Double);
        let acc = match spec.func {
            AggFunc::Count => Acc::Count(0),
            AggFunc::Sum if double => Acc::SumDouble(None),
            AggFunc::Sum => Acc::SumInt(None),
            AggFunc::Avg if double => Acc::AvgDouble(0.0, 0),
            AggFunc::Avg => Acc::AvgInt(0, 0),
            AggFunc::Min => Acc::Min(None),
            AggFunc::Max => Acc::Max(None),
        };
        AggState { acc, seen: spec.distinct.then(HashSet::new) }
    }

    fn update(&mut self, spec: &AggSpec, row: &[Value]) -> Result<(), SqlError> {
        let Some(arg) = &spec.arg else {
            if let Acc::Count(n) = &mut self.acc {
                *n += 1;
            }
            return Ok(());
        };
        let v = arg.eval(row)?;
        if matches!(*v, Value::Null) {
            return Ok(());
        }
        if let Some(seen) = &mut self.seen {
            let mut k = Vec::new();
            encode_group_value(&v, &mut k);
            if !seen.insert(k) {
                return Ok(());
            }
        }
        let bad = || mismatch(format!("aggregate over a {} value", type_name(&v)));
        match (&mut self.acc, &*v) {
            (Acc::Count(n), _) => *n += 1,
            (Acc::SumInt(s), Value::Int(x)) => *s = Some(s.unwrap_or(0) + i128::from(*x)),
            (Acc::SumDouble(s), Value::Double(x)) => *s = Some(s.unwrap_or(0.0) + x),
            (Acc::SumDouble(s), Value::Int(x)) => *s = Some(s.unwrap_or(0.0) + *x as f64),
            (Acc::AvgInt(s, n), Value::Int(x)) => {
                *s += i128::from(*x);
                *n += 1;
            }
            (Acc::AvgDouble(s, n), Value::Double(x)) => {
                *s += x;
                *n += 1;
            }
            (Acc::Min(m), _) => {
                if m.as_ref().map_or(Ok(true), |cur| compare(&v, cur).map(|o| o == Some(Ordering::Less)))? {
                    *m = Some(v.into_owned());
                }
            }
            (Acc::Max(m), _) => {
                if m.as_ref()
                    .map_or(Ok(true), |cur| compare(&v, cur).map(|o| o == Some(Ordering::Greater)))?
                {
                    *m = Some(v.into_owned());
                }
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    fn finish(self) -> Result<Value, SqlError> {
        Ok(match self.acc {
            Acc::Count(n) => Value::Int(n),
            Acc::SumInt(s) => match s {
                None => Value::Null,
                Some(s) => {
                    Value::Int(i64::try_from(s).map_err(|_| out_of_range("bigint out of range in sum()"))?)
                }
            },
            Acc::SumDouble(s) => s.map_or(Value::Null, Value::Double),
            Acc::AvgInt(_, 0) | Acc::AvgDouble(_, 0) => Value::Null,
            Acc::AvgInt(s, n) => Value::Double(s as f64 / n as f64),
            Acc::AvgDouble(s, n) => Value::Double(s / n as f64),
            Acc::Min(m) | Acc::Max(m) => m.unwrap_or(Value::Null),
        })
    }
}

/// An output row and its sort keys.
struct OutRow {
    values: Vec<Value>,
    keys: Vec<Value>,
}

fn project(plan: &SelectPlan, input: &[Value]) -> Result<OutRow, SqlError> {
    let mut values = Vec::with_capacity(plan.outputs.len());
    for e in &plan.outputs {
        values.push(e.eval(input)?.into_owned());
    }
    let mut keys = Vec::new();
    for k in &plan.order {
        if let SortExpr::Expr(e) = &k.key {
            keys.push(e.eval(input)?.into_owned());
        }
    }
    Ok(OutRow { values, keys })
}

/// Runs a SELECT. `txn` is `None` only for a query without FROM.
pub(crate) fn select(
    txn: Option<&Txn>,
    plan: &SelectPlan,
    stats: &mut SessionStats,
) -> Result<(Vec<Column>, Vec<Vec<Value>>), SqlError> {
    let mut out: Vec<OutRow> = Vec::new();
    // Without sorting, de-duplication or aggregation the first offset + limit rows are the
    // answer, so the scan can stop there.
    let wanted = match (plan.order.is_empty() && !plan.distinct && plan.aggregate.is_none(), plan.limit) {
        (true, Some(limit)) => Some(plan.offset.saturating_add(limit)),
        _ => None,
    };
    if wanted == Some(0) {
        return Ok((plan.columns.clone(), Vec::new()));
    }

    match &plan.aggregate {
        None => {
            let mut take = |row: &[Value]| -> Result<bool, SqlError> {
                if let Some(f) = &plan.filter {
                    if !f.matches(row)? {
                        return Ok(true);
                    }
                }
                out.push(project(plan, row)?);
                Ok(wanted.is_none_or(|w| (out.len() as u64) < w))
            };
            match (&plan.source, txn) {
                (Some((def, access)), Some(txn)) => {
                    for_each_row(txn, def, access, stats, |_, bytes| take(&decode(def, bytes)?))?;
                }
                _ => {
                    take(&[])?;
                }
            }
        }
        Some(agg) => {
            let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut groups: Vec<(Vec<Value>, Vec<AggState>)> = Vec::new();
            let mut key = Vec::new();
            let mut add = |row: &[Value]| -> Result<bool, SqlError> {
                if let Some(f) = &plan.filter {
                    if !f.matches(row)? {
                        return Ok(true);
                    }
                }
                let mut values = Vec::with_capacity(agg.groups.len());
                key.clear();
                for g in &agg.groups {
                    let v = g.eval(row)?.into_owned();
                    encode_group_value(&v, &mut key);
                    values.push(v);
                }
                let i = match index.get(&key) {
                    Some(i) => *i,
                    None => {
                        groups.push((values, agg.aggs.iter().map(AggState::new).collect()));
                        index.insert(key.clone(), groups.len() - 1);
                        groups.len() - 1
                    }
                };
                let states = &mut groups[i].1;
                for (state, spec) in states.iter_mut().zip(&agg.aggs) {
                    state.update(spec, row)?;
                }
                Ok(true)
            };
            match (&plan.source, txn) {
                (Some((def, access)), Some(txn)) => {
                    for_each_row(txn, def, access, stats, |_, bytes| add(&decode(def, bytes)?))?;
                }
                _ => {
                    add(&[])?;
                }
            }
            // Aggregates without GROUP BY make one row even from no input.
            if agg.groups.is_empty() && groups.is_empty() {
                groups.push((Vec::new(), agg.aggs.iter().map(AggState::new).collect()));
            }
            for (mut row, states) in groups {
                for s in states {
                    row.push(s.finish()?);
                }
                if let Some(h) = &agg.having {
                    if !h.matches(&row)? {
                        continue;
                    }
                }
                out.push(project(plan, &row)?);
            }
        }
    }

    if plan.distinct {
        let mut seen = HashSet::new();
        out.retain(|r| {
            let mut k = Vec::new();
            r.values.iter().for_each(|v| encode_group_value(v, &mut k));
            seen.insert(k)
        });
    }
    if !plan.order.is_empty() {
        out.sort_by(|a, b| {
            let mut expr_i = 0;
            for k in &plan.order {
                let (x, y) = match &k.key {
                    SortExpr::Output(i) => (&a.values[*i], &b.values[*i]),
                    SortExpr::Expr(_) => {
                        expr_i += 1;
                        (&a.keys[expr_i - 1], &b.keys[expr_i - 1])
                    }
                };
                let o = order_values(x, y, k.desc, k.nulls_first);
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let offset = usize::try_from(plan.offset).unwrap_or(usize::MAX);
    let limit = plan.limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let rows = out.into_iter().skip(offset).take(limit).map(|r| r.values).collect();
    Ok((plan.columns.clone(), rows))
}

/// Checks, normalises and encodes a complete row for `def`, returning its key.
pub(crate) fn encode_checked(
    def: &TableDef,
    values: &mut [Value],
    buf: &mut Vec<u8>,
) -> Result<Key, SqlError> {
    for (i, (c, v)) in def.columns.iter().zip(values.iter()).enumerate() {
        match v.data_type() {
            None if !c.nullable => {
                return Err(SqlError::new(
                    ErrorCode::NotNullViolation,
                    format!(
                        "null value in column \"{}\" of table \"{}\" violates not-null constraint",
                        c.name, def.name
                    ),
                ))
            }
            Some(t) if t != c.data_type => {
                return Err(mismatch(format!(
                    "{} is of type {} but the value is of type {t}",
                    column_label(def, i),
                    c.data_type
                )))
            }
            _ => {}
        }
    }
    normalize_key_value(&mut values[def.pk]);
    let key =
        values[def.pk].to_key().ok_or_else(|| SqlError::new(ErrorCode::InternalError, "NULL primary key"))?;
    buf.clear();
    encode_row(&def.types, values, buf)?;
    Ok(key)
}

fn duplicate(def: &TableDef, key: &Key) -> SqlError {
    SqlError::new(
        ErrorCode::UniqueViolation,
        format!(
            "duplicate key value violates unique constraint \"{}_pkey\": key ({})=({key}) already exists in table \"{}\"",
            def.name, def.columns[def.pk].name, def.name
        ),
    )
}

/// Inserts one complete row, refusing an existing key.
pub(crate) fn insert_row(
    txn: &mut Txn,
    def: &Arc<TableDef>,
    mut values: Vec<Value>,
    buf: &mut Vec<u8>,
) -> Result<(), SqlError> {
    let key = encode_checked(def, &mut values, buf)?;
    if txn.exists(def, &key) {
        return Err(duplicate(def, &key));
    }
    txn.put(def, key, buf.as_slice().into());
    Ok(())
}

/// Runs an INSERT; returns the number of rows inserted.
pub(crate) fn insert(txn: &mut Txn, plan: &InsertPlan, stats: &mut SessionStats) -> Result<u64, SqlError> {
    let def = &plan.table;
    let width = def.columns.len();
    let mut buf = Vec::new();
    let mut n = 0u64;
    match &plan.source {
        InsertSource::Values(rows) => {
            for row in rows {
                let mut values = vec![Value::Null; width];
                for (e, &t) in row.iter().zip(&plan.targets) {
                    values[t] = e.eval(&[])?.into_owned();
                }
                insert_row(txn, def, values, &mut buf)?;
                n += 1;
            }
        }
        InsertSource::Query(query, casts) => {
            let (_, rows) = select(Some(txn), query, stats)?;
            for row in rows {
                let mut values = vec![Value::Null; width];
                for ((v, &t), c) in row.into_iter().zip(&plan.targets).zip(casts) {
                    values[t] = match c {
                        Some(to) => cast(v, *to)?,
                        None => v,
                    };
                }
                insert_row(txn, def, values, &mut buf)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The rows (key and values) of `def` that the access path reads and `filter` accepts.
fn matching_rows(
    txn: &Txn,
    def: &TableDef,
    access: &Access,
    filter: Option<&super::expr::Expr>,
    stats: &mut SessionStats,
) -> Result<Vec<(Key, Vec<Value>)>, SqlError> {
    let mut rows = Vec::new();
    for_each_row(txn, def, access, stats, |k, bytes| {
        let values = decode(def, bytes)?;
        if filter.map_or(Ok(true), |f| f.matches(&values))? {
            rows.push((k.clone(), values));
        }
        Ok(true)
    })?;
    Ok(rows)
}

/// Runs an UPDATE; returns the number of rows updated.
pub(crate) fn update(txn: &mut Txn, plan: &UpdatePlan, stats: &mut SessionStats) -> Result<u64, SqlError> {
    let def = &plan.table;
    let targets = matching_rows(txn, def, &plan.access, plan.filter.as_ref(), stats)?;
    let n = targets.len() as u64;
    let mut buf = Vec::new();
    let mut moved = Vec::new();
    let mut new_values = Vec::with_capacity(plan.sets.len());
    for (old_key, mut row) in targets {
        // Every SET expression sees the old row.
        new_values.clear();
        for (_, e) in &plan.sets {
            new_values.push(e.eval(&row)?.into_owned());
        }
        for ((col, _), v) in plan.sets.iter().zip(new_values.drain(..)) {
            row[*col] = v;
        }
        let key = encode_checked(def, &mut row, &mut buf)?;
        if key == old_key {
            txn.put(def, key, buf.as_slice().into());
        } else {
            moved.push((old_key, key, Box::<[u8]>::from(buf.as_slice())));
        }
    }
    // Rows whose key changed: delete all old keys first, then check and add the new ones.
    for (old_key, _, _) in &moved {
        txn.delete(def, old_key.clone());
    }
    for (_, key, row) in moved {
        if txn.exists(def, &key) {
            return Err(duplicate(def, &key));
        }
        txn.put(def, key, row);
    }
    Ok(n)
}

/// Runs a DELETE; returns the number of rows deleted.
pub(crate) fn delete(txn: &mut Txn, plan: &DeletePlan, stats: &mut SessionStats) -> Result<u64, SqlError> {
    let def = &plan.table;
    let mut keys = Vec::new();
    for_each_row(txn, def, &plan.access, stats, |k, bytes| {
        let keep = match &plan.filter {
            None => true,
            Some(f) => f.matches(&decode(def, bytes)?)?,
        };
        if keep {
            keys.push(k.clone());
        }
        Ok(true)
    })?;
    let n = keys.len() as u64;
    for k in keys {
        txn.delete(def, k);
    }
    Ok(n)
}
