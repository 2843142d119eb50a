//! Plans: what a SELECT, INSERT, UPDATE or DELETE will read, compute and write.
//!
//! Planning looks the table up in the transaction's catalog, compiles every expression
//! ([`compile`](super::compile)), and picks the access path: the primary key is the only index,
//! so a WHERE clause whose top-level AND terms constrain it with `=`, `IN`, `<`, `<=`, `>`, `>=`
//! or `BETWEEN` against constants becomes a set of point lookups or one range scan
//! ([`access_path`]). The whole WHERE clause is still evaluated on every row read, so the access
//! path only ever narrows what is read, never what matches.

use super::compile::{
    coerce_to, function_name, ident_name, name_span, table_name, AggCtx, AggSpec, At, Compiler, Env, Scope,
    Typed,
};
use super::expr::{cmp_f64, CmpOp, Expr};
use super::transaction::range_nonempty;
use super::Column;
use crate::error::{ErrorCode, SqlError};
use crate::schema::{Catalog, TableDef};
use crate::value::{DataType, Key, Value};
use sqlparser::ast;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

/// How rows of a table are read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Access {
    /// Every row, in key order.
    Full,
    /// These keys (sorted, distinct), by point lookup.
    Points(Vec<Key>),
    /// The keys in a range, in key order.
    Range(Bound<Key>, Bound<Key>),
    /// Nothing can match.
    Empty,
}

/// Normalises a DOUBLE primary-key value so that SQL-equal values have one key: -0 becomes 0
/// and every NaN the same NaN (keys order by `total_cmp`, which tells them apart).
pub(crate) fn normalize_key_value(v: &mut Value) {
    if let Value::Double(x) = v {
        if x.is_nan() {
            *x = f64::NAN;
        } else if *x == 0.0 {
            *x = 0.0;
        }
    }
}

enum KeyOf {
    Key(Key),
    /// NULL: a comparison with it is never true.
    Null,
    /// Not exactly a key of this type (e.g. 2.5 against a BIGINT key): do not use the index.
    Unusable,
}

fn key_of(v: &Value, ty: DataType) -> KeyOf {
    let mut v = match (v, ty) {
        (Value::Null, _) => return KeyOf::Null,
        (Value::Int(x), DataType::Double) => Value::Double(*x as f64),
        (Value::Double(x), DataType::BigInt)
            if x.fract() == 0.0 && *x >= i64::MIN as f64 && *x < i64::MAX as f64 =>
        {
            Value::Int(*x as i64)
        }
        (Value::Double(_), DataType::BigInt) => return KeyOf::Unusable,
        (v, ty) if v.data_type() == Some(ty) => v.clone(),
        _ => return KeyOf::Unusable,
    };
    normalize_key_value(&mut v);
    v.to_key().map_or(KeyOf::Null, KeyOf::Key)
}

fn tighten_lower(cur: &mut Bound<Key>, new: Bound<Key>) {
    let replace = match (&*cur, &new) {
        (_, Bound::Unbounded) => false,
        (Bound::Unbounded, _) => true,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) => b > a,
        (Bound::Included(a), Bound::Excluded(b)) => b >= a,
        (Bound::Excluded(a), Bound::Excluded(b)) => b > a,
    };
    if replace {
        *cur = new;
    }
}

fn tighten_upper(cur: &mut Bound<Key>, new: Bound<Key>) {
    let replace = match (&*cur, &new) {
        (_, Bound::Unbounded) => false,
        (Bound::Unbounded, _) => true,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) => b < a,
        (Bound::Included(a), Bound::Excluded(b)) => b <= a,
        (Bound::Excluded(a), Bound::Excluded(b)) => b < a,
    };
    if replace {
        *cur = new;
    }
}

fn within(k: &Key, lower: &Bound<Key>, upper: &Bound<Key>) -> bool {
    (match lower {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= l,
        Bound::Excluded(l) => k > l,
    }) && (match upper {
        Bound::Unbounded => true,
        Bound::Included(u) => k <= u,
        Bound::Excluded(u) => k < u,
    })
}

fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    if let Expr::And(a, b) = e {
        conjuncts(a, out);
        conjuncts(b, out);
    } else {
        out.push(e);
    }
}

/// The cheapest way to read the rows of `def` that can satisfy `filter`.
pub(crate) fn access_path(filter: Option<&Expr>, def: &TableDef) -> Access {
    let Some(filter) = filter else { return Access::Full };
    let (pk, ty) = (def.pk, def.key_type());
    let mut terms = Vec::new();
    conjuncts(filter, &mut terms);
    let mut lower = Bound::Unbounded;
    let mut upper = Bound::Unbounded;
    let mut points: Option<BTreeSet<Key>> = None;
    let restrict = |set: BTreeSet<Key>, points: &mut Option<BTreeSet<Key>>| {
        *points = Some(match points.take() {
            None => set,
            Some(p) => p.intersection(&set).cloned().collect(),
        });
    };
    for term in terms {
        match term {
            Expr::Const(Value::Bool(false) | Value::Null) => return Access::Empty,
            Expr::Cmp(op, a, b) => {
                let (op, v) = match (&**a, &**b) {
                    (Expr::Column(c), Expr::Const(v)) if *c == pk => (*op, v),
                    (Expr::Const(v), Expr::Column(c)) if *c == pk => (op.flip(), v),
                    _ => continue,
                };
                let k = match key_of(v, ty) {
                    KeyOf::Key(k) => k,
                    KeyOf::Null => return Access::Empty,
                    KeyOf::Unusable => continue,
                };
                match op {
                    CmpOp::Eq => restrict(BTreeSet::from([k]), &mut points),
                    CmpOp::NotEq => {}
                    CmpOp::Lt => tighten_upper(&mut upper, Bound::Excluded(k)),
                    CmpOp::LtEq => tighten_upper(&mut upper, Bound::Included(k)),
                    CmpOp::Gt => tighten_lower(&mut lower, Bound::Excluded(k)),
                    CmpOp::GtEq => tighten_lower(&mut lower, Bound::Included(k)),
                }
            }
            Expr::InList { expr, list, negated: false } if matches!(**expr, Expr::Column(c) if c == pk) => {
                let mut set = BTreeSet::new();
                let mut usable = true;
                for item in list {
                    match item {
                        Expr::Const(v) => match key_of(v, ty) {
                            KeyOf::Key(k) => {
                                set.insert(k);
                            }
                            KeyOf::Null => {}
                            KeyOf::Unusable => usable = false,
                        },
                        _ => usable = false,
                    }
                }
                if usable {
                    restrict(set, &mut points);
                }
            }
            Expr::Between { expr, low, high, negated: false } if matches!(**expr, Expr::Column(c) if c == pk) => {
                for (bound, is_low) in [(low, true), (high, false)] {
                    if let Expr::Const(v) = &**bound {
                        match key_of(v, ty) {
                            KeyOf::Key(k) if is_low => tighten_lower(&mut lower, Bound::Included(k)),
                            KeyOf::Key(k) => tighten_upper(&mut upper, Bound::Included(k)),
                            KeyOf::Null => return Access::Empty,
                            KeyOf::Unusable => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(points) = points {
        let keys: Vec<Key> = points.into_iter().filter(|k| within(k, &lower, &upper)).collect();
        return if keys.is_empty() { Access::Empty } else { Access::Points(keys) };
    }
    match (&lower, &upper) {
        (Bound::Unbounded, Bound::Unbounded) => Access::Full,
        _ if !range_nonempty(lower.as_ref(), upper.as_ref()) => Access::Empty,
        _ => Access::Range(lower, upper),
    }
}

/// One ORDER BY key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SortKey {
    pub key: SortExpr,
    pub desc: bool,
    pub nulls_first: bool,
}

/// What an ORDER BY key sorts on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SortExpr {
    /// An output column.
    Output(usize),
    /// An expression over the input row (table row or group row).
    Expr(Expr),
}

/// Grouping and aggregation of a SELECT.
#[derive(Clone, Debug)]
pub(crate) struct AggPlan {
    /// GROUP BY expressions over table rows.
    pub groups: Vec<Expr>,
    /// Aggregates over table rows; the group row is `groups ++ aggs`.
    pub aggs: Vec<AggSpec>,
    /// HAVING over group rows.
    pub having: Option<Expr>,
}

/// A planned SELECT.
#[derive(Clone, Debug)]
pub(crate) struct SelectPlan {
    /// The table and how to read it; `None` for `SELECT` without FROM (one empty input row).
    pub source: Option<(Arc<TableDef>, Access)>,
    /// WHERE over table rows.
    pub filter: Option<Expr>,
    pub columns: Vec<Column>,
    /// One per column, over table rows (or group rows when `aggregate` is set).
    pub outputs: Vec<Expr>,
    pub aggregate: Option<AggPlan>,
    /// Empty when no sort is needed (including ORDER BY the primary key, which is scan order).
    pub order: Vec<SortKey>,
    pub distinct: bool,
    pub limit: Option<u64>,
    pub offset: u64,
}

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not supported"))
}

/// Looks a table up by its (folded) name.
pub(crate) fn lookup_table_name(catalog: &Catalog, name: &str) -> Result<Arc<TableDef>, SqlError> {
    catalog
        .get(name)
        .cloned()
        .ok_or_else(|| SqlError::new(ErrorCode::UndefinedTable, format!("table \"{name}\" does not exist")))
}

/// Looks a table up, with the error PostgreSQL users expect and its position.
pub(crate) fn lookup_table(catalog: &Catalog, name: &ast::ObjectName) -> Result<Arc<TableDef>, SqlError> {
    lookup_table_name(catalog, &table_name(name)?).map_err(|e| e.at(name_span(name)))
}

/// A table a statement reads and the alias it is given, if any.
type TableRef = (Arc<TableDef>, Option<String>);

/// The one table of a FROM clause and its alias.
fn single_table(catalog: &Catalog, from: &[ast::TableWithJoins]) -> Result<Option<TableRef>, SqlError> {
    match from {
        [] => Ok(None),
        [twj] => {
            if !twj.joins.is_empty() {
                return Err(unsupported("JOIN").with_hint("a query reads one table"));
            }
            match &twj.relation {
                ast::TableFactor::Table { name, alias, args: None, with_hints, version: None, .. }
                    if with_hints.is_empty() =>
                {
                    let def = lookup_table(catalog, name)?;
                    let alias = match alias {
                        Some(a) if !a.columns.is_empty() => {
                            return Err(unsupported("column aliases in FROM"))
                        }
                        Some(a) => Some(ident_name(&a.name)),
                        None => None,
                    };
                    Ok(Some((def, alias)))
                }
                ast::TableFactor::Derived { .. } => Err(unsupported("a subquery in FROM")),
                other => Err(unsupported(format!("FROM {other}"))),
            }
        }
        _ => Err(unsupported("more than one table in FROM").with_hint("a query reads one table")),
    }
}

/// The name PostgreSQL gives an unaliased output column.
fn output_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(id) => ident_name(id),
        ast::Expr::CompoundIdentifier(ids) => ids.last().map_or_else(|| "?column?".into(), ident_name),
        ast::Expr::Function(f) => function_name(f),
        ast::Expr::Cast { expr, .. } => match &**expr {
            ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => output_name(expr),
            _ => "?column?".into(),
        },
        ast::Expr::Nested(inner) => output_name(inner),
        ast::Expr::Case { .. } => "case".into(),
        _ => "?column?".into(),
    }
}

/// A select-list item after `*` expansion.
enum Item<'q> {
    Ast(&'q ast::Expr),
    Column(usize),
}

fn constant_u64(e: &ast::Expr, env: &Env<'_>, what: &'static str) -> Result<Option<u64>, SqlError> {
    let scope = Scope::empty();
    let t = Compiler::rows(&scope, env, what).compile(e)?;
    match t.expr {
        Expr::Const(Value::Null) => Ok(None),
        Expr::Const(Value::Int(n)) if n >= 0 => Ok(Some(n as u64)),
        Expr::Const(Value::Int(_)) => {
            Err(SqlError::new(ErrorCode::InvalidParameterValue, format!("{what} must not be negative")))
        }
        _ => Err(SqlError::new(ErrorCode::DatatypeMismatch, format!("{what} must be a constant integer"))),
    }
}

fn position_literal(e: &ast::Expr) -> Option<&str> {
    match e {
        ast::Expr::Value(ast::ValueWithSpan { value: ast::Value::Number(n, _), .. }) => Some(n),
        _ => None,
    }
}

/// Plans a query (`SELECT …`).
pub(crate) fn plan_select(
    catalog: &Catalog,
    env: &Env<'_>,
    query: &ast::Query,
) -> Result<SelectPlan, SqlError> {
    if query.with.is_some() {
        return Err(unsupported("WITH"));
    }
    if query.fetch.is_some()
        || !query.locks.is_empty()
        || query.for_clause.is_some()
        || !query.pipe_operators.is_empty()
    {
        return Err(unsupported("FETCH, FOR UPDATE/SHARE, FOR XML or pipe operators"));
    }
    let select = match &*query.body {
        ast::SetExpr::Select(s) => s,
        ast::SetExpr::Query(_) => return Err(unsupported("a parenthesised query")),
        ast::SetExpr::SetOperation { op, .. } => return Err(unsupported(op)),
        ast::SetExpr::Values(_) => return Err(unsupported("VALUES as a query").with_hint("use SELECT")),
        other => return Err(unsupported(other)),
    };
    if select.top.is_some()
        || select.into.is_some()
        || !select.lateral_views.is_empty()
        || select.prewhere.is_some()
    {
        return Err(unsupported("TOP, SELECT INTO, LATERAL VIEW or PREWHERE"));
    }
    if !select.cluster_by.is_empty() || !select.distribute_by.is_empty() || !select.sort_by.is_empty() {
        return Err(unsupported("CLUSTER BY, DISTRIBUTE BY or SORT BY"));
    }
    if !select.named_window.is_empty() || select.qualify.is_some() || !select.connect_by.is_empty() {
        return Err(unsupported("WINDOW, QUALIFY or CONNECT BY"));
    }
    let distinct = match &select.distinct {
        None | Some(ast::Distinct::All) => false,
        Some(ast::Distinct::Distinct) => true,
        Some(other) => return Err(unsupported(other)),
    };
    let source = single_table(catalog, &select.from)?;
    let scope = match &source {
        Some((def, alias)) => Scope::of(def, alias.clone()),
        None => Scope::empty(),
    };

    // The select list, with `*` expanded.
    let mut items: Vec<(String, Item<'_>)> = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            ast::SelectItem::UnnamedExpr(e) => items.push((output_name(e), Item::Ast(e))),
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                items.push((ident_name(alias), Item::Ast(expr)))
            }
            ast::SelectItem::Wildcard(opts) | ast::SelectItem::QualifiedWildcard(_, opts) => {
                if *opts != ast::WildcardAdditionalOptions::default() {
                    return Err(unsupported("options after *"));
                }
                if let ast::SelectItem::QualifiedWildcard(kind, _) = item {
                    let ok = match kind {
                        ast::SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            table_name(n).is_ok_and(|n| source.is_some() && n == scope.qualifier)
                        }
                        ast::SelectItemQualifiedWildcardKind::Expr(_) => false,
                    };
                    if !ok {
                        return Err(SqlError::new(
                            ErrorCode::UndefinedTable,
                            format!("missing FROM-clause entry for {kind}.*"),
                        ));
                    }
                }
                let Some(def) = scope.table else {
                    return Err(SqlError::new(
                        ErrorCode::SyntaxError,
                        "SELECT * with no tables specified is not valid",
                    ));
                };
                items.extend(def.columns.iter().enumerate().map(|(i, c)| (c.name.clone(), Item::Column(i))));
            }
            ast::SelectItem::ExprWithAliases { .. } => {
                return Err(unsupported("multiple aliases for one expression"))
            }
        }
    }

    let filter = match &select.selection {
        Some(w) => Some(Compiler::rows(&scope, env, "WHERE").condition(w)?),
        None => None,
    };
    let group_by: &[ast::Expr] = match &select.group_by {
        ast::GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs,
        _ => return Err(unsupported("GROUP BY ALL, ROLLUP, CUBE or GROUPING SETS")),
    };
    let order_by: &[ast::OrderByExpr] = match &query.order_by {
        None => &[],
        Some(ob) => match &ob.kind {
            ast::OrderByKind::Expressions(e) if ob.interpolate.is_none() => e,
            _ => return Err(unsupported("ORDER BY ALL or INTERPOLATE")),
        },
    };
    let item_ast = |i: usize| match items.get(i) {
        Some((_, Item::Ast(e))) => Some(*e),
        _ => None,
    };

    // Whether the query aggregates: GROUP BY, HAVING, or an aggregate call anywhere in the
    // select list or ORDER BY (found by compiling over table rows and seeing it refused).
    let mut aggregated = !group_by.is_empty() || select.having.is_some();
    let mut row_outputs = Vec::with_capacity(items.len());
    if !aggregated {
        for (_, item) in &items {
            match item {
                Item::Column(i) => row_outputs.push(Typed {
                    expr: Expr::Column(*i),
                    ty: scope.table.map(|t| t.types[*i]),
                    unknown: false,
                }),
                Item::Ast(e) => {
                    let mut c = Compiler::rows(&scope, env, "SELECT");
                    match c.compile(e) {
                        Ok(t) => row_outputs.push(t),
                        Err(_) if c.saw_aggregate() => {
                            aggregated = true;
                            break;
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        // An aggregate in ORDER BY (`ORDER BY count(*) DESC`) also makes the query aggregate.
        if !aggregated {
            for o in order_by {
                if position_literal(&o.expr).is_some() {
                    continue;
                }
                let mut c = Compiler::rows(&scope, env, "ORDER BY");
                if c.compile(&o.expr).is_err() && c.saw_aggregate() {
                    aggregated = true;
                    break;
                }
            }
        }
    }

    let mut agg_ctx = AggCtx::default();
    let outputs: Vec<Typed> = if aggregated {
        for g in group_by {
            // GROUP BY may name a select-list position or an output alias.
            let target = match position_literal(g) {
                Some(n) => {
                    let pos = n.parse::<usize>().ok().filter(|p| *p >= 1 && *p <= items.len()).ok_or_else(
                        || {
                            SqlError::new(
                                ErrorCode::InvalidParameterValue,
                                format!("GROUP BY position {n} is not in select list"),
                            )
                        },
                    )?;
                    match &items[pos - 1].1 {
                        Item::Ast(e) => Some(*e),
                        Item::Column(i) => {
                            agg_ctx.groups.push(Typed {
                                expr: Expr::Column(*i),
                                ty: scope.table.map(|t| t.types[*i]),
                                unknown: false,
                            });
                            continue;
                        }
                    }
                }
                None => match g {
                    ast::Expr::Identifier(id)
                        if scope.table.is_none_or(|t| t.column_index(&ident_name(id)).is_none()) =>
                    {
                        let name = ident_name(id);
                        items.iter().position(|(n, _)| *n == name).and_then(item_ast)
                    }
                    _ => None,
                },
            };
            let g = Compiler::rows(&scope, env, "GROUP BY").compile(target.unwrap_or(g))?;
            agg_ctx.groups.push(g);
        }
        let mut outs = Vec::with_capacity(items.len());
        for (name, item) in &items {
            let t = match item {
                Item::Ast(e) => Compiler::groups(&scope, env, &mut agg_ctx, "SELECT").compile(e)?,
                Item::Column(i) => match agg_ctx.groups.iter().position(|g| g.expr == Expr::Column(*i)) {
                    Some(gi) => Typed { expr: Expr::Column(gi), ..agg_ctx.groups[gi].clone() },
                    None => {
                        return Err(SqlError::new(
                            ErrorCode::GroupingError,
                            format!("column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"),
                        ))
                    }
                },
            };
            outs.push(t);
        }
        outs
    } else {
        row_outputs
    };
    let having = match &select.having {
        Some(h) => Some(Compiler::groups(&scope, env, &mut agg_ctx, "HAVING").condition(h)?),
        None => None,
    };

    let mut order = Vec::with_capacity(order_by.len());
    for o in order_by {
        if o.with_fill.is_some() {
            return Err(unsupported("WITH FILL"));
        }
        let desc = match o.options.sort {
            None | Some(ast::OrderBySort::Asc) => false,
            Some(ast::OrderBySort::Desc) => true,
            Some(ast::OrderBySort::Using(_)) => return Err(unsupported("ORDER BY … USING")),
        };
        let nulls_first = o.options.nulls_first.unwrap_or(desc);
        let key = if let Some(n) = position_literal(&o.expr) {
            let pos = n.parse::<usize>().ok().filter(|p| *p >= 1 && *p <= items.len()).ok_or_else(|| {
                SqlError::new(
                    ErrorCode::InvalidParameterValue,
                    format!("ORDER BY position {n} is not in select list"),
                )
            })?;
            SortExpr::Output(pos - 1)
        } else if let Some(i) = match &o.expr {
            ast::Expr::Identifier(id) => {
                let name = ident_name(id);
                items.iter().position(|(n, _)| *n == name)
            }
            _ => None,
        } {
            SortExpr::Output(i)
        } else {
            let t = if aggregated {
                Compiler::groups(&scope, env, &mut agg_ctx, "ORDER BY").compile(&o.expr)?
            } else {
                Compiler::rows(&scope, env, "ORDER BY").compile(&o.expr)?
            };
            match outputs.iter().position(|out| out.expr == t.expr) {
                Some(i) => SortExpr::Output(i),
                None if distinct => {
                    return Err(SqlError::new(
                        ErrorCode::InvalidParameterValue,
                        "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
                    ))
                }
                None => SortExpr::Expr(t.expr),
            }
        };
        order.push(SortKey { key, desc, nulls_first });
    }

    let (limit, offset) = match &query.limit_clause {
        None => (None, 0),
        Some(ast::LimitClause::LimitOffset { limit, offset, limit_by }) => {
            if !limit_by.is_empty() {
                return Err(unsupported("LIMIT BY"));
            }
            let limit = match limit {
                Some(l) => constant_u64(l, env, "LIMIT")?,
                None => None,
            };
            let offset = match offset {
                Some(o) => constant_u64(&o.value, env, "OFFSET")?.unwrap_or(0),
                None => 0,
            };
            (limit, offset)
        }
        Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => {
            (constant_u64(limit, env, "LIMIT")?, constant_u64(offset, env, "OFFSET")?.unwrap_or(0))
        }
    };

    let columns = items
        .iter()
        .zip(&outputs)
        .map(|((name, _), t)| Column { name: name.clone(), data_type: t.ty.unwrap_or(DataType::Text) })
        .collect();
    let outputs: Vec<Expr> = outputs.into_iter().map(|t| t.expr).collect();
    let source = source.map(|(def, _)| {
        let access = access_path(filter.as_ref(), &def);
        (def, access)
    });
    // Rows come in primary-key order, so ORDER BY the key (ascending) needs no sort and lets
    // LIMIT stop the scan early.
    if let (Some((def, _)), false, false, [SortKey { key, desc: false, .. }]) =
        (&source, aggregated, distinct, order.as_slice())
    {
        let pk = Expr::Column(def.pk);
        let by_key = match key {
            SortExpr::Output(i) => outputs.get(*i) == Some(&pk),
            SortExpr::Expr(e) => *e == pk,
        };
        if by_key {
            order.clear();
        }
    }
    let aggregate = aggregated.then(|| AggPlan {
        groups: agg_ctx.groups.into_iter().map(|g| g.expr).collect(),
        aggs: agg_ctx.aggs,
        having,
    });
    Ok(SelectPlan { source, filter, columns, outputs, aggregate, order, distinct, limit, offset })
}

/// A planned INSERT.
pub(crate) struct InsertPlan {
    pub table: Arc<TableDef>,
    /// The column each provided value goes to.
    pub targets: Vec<usize>,
    pub source: InsertSource,
}

/// Where an INSERT's rows come from.
pub(crate) enum InsertSource {
    /// Constant-free expressions already coerced to the target columns' types.
    Values(Vec<Vec<Expr>>),
    /// A query; `casts[i]` converts its column `i` to the target type where needed.
    Query(Box<SelectPlan>, Vec<Option<DataType>>),
}

/// The target columns of an INSERT: the listed ones, or all in table order.
pub(crate) fn insert_targets(def: &TableDef, names: &[String]) -> Result<Vec<usize>, SqlError> {
    if names.is_empty() {
        return Ok((0..def.columns.len()).collect());
    }
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let i = def.column_index(name).ok_or_else(|| {
            SqlError::new(
                ErrorCode::UndefinedColumn,
                format!("column \"{name}\" of table \"{}\" does not exist", def.name),
            )
        })?;
        if targets.contains(&i) {
            return Err(SqlError::new(
                ErrorCode::SyntaxError,
                format!("column \"{name}\" specified more than once"),
            ));
        }
        targets.push(i);
    }
    Ok(targets)
}

/// How a column is named in messages.
pub(crate) fn column_label(def: &TableDef, i: usize) -> String {
    format!("column \"{}\" of table \"{}\"", def.columns[i].name, def.name)
}

/// Plans an INSERT.
pub(crate) fn plan_insert(
    catalog: &Catalog,
    env: &Env<'_>,
    ins: &ast::Insert,
) -> Result<InsertPlan, SqlError> {
    if ins.or.is_some()
        || ins.ignore
        || ins.overwrite
        || ins.partitioned.is_some()
        || !ins.after_columns.is_empty()
    {
        return Err(unsupported("this form of INSERT"));
    }
    if ins.on.is_some() {
        return Err(unsupported("ON CONFLICT / ON DUPLICATE KEY"));
    }
    if ins.returning.is_some() || ins.output.is_some() {
        return Err(unsupported("RETURNING"));
    }
    if !ins.assignments.is_empty()
        || ins.replace_into
        || ins.format_clause.is_some()
        || ins.settings.is_some()
    {
        return Err(unsupported("this form of INSERT"));
    }
    let name = match &ins.table {
        ast::TableObject::TableName(n) => n,
        other => return Err(unsupported(format!("INSERT INTO {other}"))),
    };
    let def = lookup_table(catalog, name)?;
    let names: Vec<String> = ins
        .columns
        .iter()
        .map(|c| match c.0.last().and_then(|p| p.as_ident()) {
            Some(id) if c.0.len() == 1 => Ok(ident_name(id)),
            _ => Err(unsupported(format!("the column reference {c}"))),
        })
        .collect::<Result<_, _>>()?;
    let targets = insert_targets(&def, &names)?;
    let source = match &ins.source {
        None => InsertSource::Values(vec![Vec::new()]),
        Some(q) => match &*q.body {
            ast::SetExpr::Values(values)
                if q.order_by.is_none() && q.limit_clause.is_none() && q.with.is_none() =>
            {
                if values.rows.len() > super::VALUES_ROWS_MAX {
                    return Err(SqlError::new(ErrorCode::ProgramLimitExceeded, "too many rows in VALUES"));
                }
                let scope = Scope::empty();
                let mut rows = Vec::with_capacity(values.rows.len());
                for row in &values.rows {
                    rows.push(values_row(&def, &targets, &row.content, &scope, env)?);
                }
                InsertSource::Values(rows)
            }
            _ => {
                let plan = plan_select(catalog, env, q)?;
                if plan.columns.len() != targets.len() {
                    return Err(SqlError::new(
                        ErrorCode::SyntaxError,
                        format!(
                            "INSERT has {} target columns but the query returns {}",
                            targets.len(),
                            plan.columns.len()
                        ),
                    ));
                }
                let mut casts = Vec::with_capacity(targets.len());
                for (i, (col, &t)) in plan.columns.iter().zip(&targets).enumerate() {
                    let want = def.types[t];
                    casts.push(match (col.data_type, want) {
                        (a, b) if a == b => None,
                        (DataType::BigInt, DataType::Double) => Some(DataType::Double),
                        // A column of unknown type that is all NULLs (e.g. `SELECT NULL`).
                        (DataType::Text, _) if plan.outputs[i] == Expr::Const(Value::Null) => None,
                        (a, b) => {
                            return Err(SqlError::new(
                                ErrorCode::DatatypeMismatch,
                                format!(
                                    "{} is of type {b} but expression is of type {a}",
                                    column_label(&def, t)
                                ),
                            ))
                        }
                    });
                }
                InsertSource::Query(Box::new(plan), casts)
            }
        },
    };
    Ok(InsertPlan { table: def, targets, source })
}

fn values_row(
    def: &TableDef,
    targets: &[usize],
    row: &[ast::Expr],
    scope: &Scope<'_>,
    env: &Env<'_>,
) -> Result<Vec<Expr>, SqlError> {
    if row.len() != targets.len() {
        let more = if row.len() > targets.len() {
            "more expressions than target columns"
        } else {
            "more target columns than expressions"
        };
        return Err(SqlError::new(ErrorCode::SyntaxError, format!("INSERT has {more}")));
    }
    let mut out = Vec::with_capacity(row.len());
    for (e, &t) in row.iter().zip(targets) {
        let typed = Compiler::rows(scope, env, "VALUES").compile(e)?;
        out.push(coerce_to(typed, def.types[t], &|| column_label(def, t))?);
    }
    Ok(out)
}

/// A planned UPDATE.
pub(crate) struct UpdatePlan {
    pub table: Arc<TableDef>,
    pub access: Access,
    pub filter: Option<Expr>,
    /// `(column, value over the old row)`, coerced to the column's type.
    pub sets: Vec<(usize, Expr)>,
}

fn dml_table(catalog: &Catalog, twj: &ast::TableWithJoins) -> Result<TableRef, SqlError> {
    single_table(catalog, std::slice::from_ref(twj))?
        .ok_or_else(|| SqlError::new(ErrorCode::SyntaxError, "no table"))
}

/// Plans an UPDATE.
pub(crate) fn plan_update(
    catalog: &Catalog,
    env: &Env<'_>,
    up: &ast::Update,
) -> Result<UpdatePlan, SqlError> {
    if up.from.is_some() {
        return Err(unsupported("UPDATE … FROM"));
    }
    if up.returning.is_some() || up.output.is_some() {
        return Err(unsupported("RETURNING"));
    }
    if up.or.is_some() || !up.order_by.is_empty() || up.limit.is_some() {
        return Err(unsupported("UPDATE with OR, ORDER BY or LIMIT"));
    }
    let (def, alias) = dml_table(catalog, &up.table)?;
    let scope = Scope::of(&def, alias);
    let mut sets: Vec<(usize, Expr)> = Vec::with_capacity(up.assignments.len());
    for a in &up.assignments {
        let ast::AssignmentTarget::ColumnName(name) = &a.target else {
            return Err(unsupported("assigning a tuple of columns"));
        };
        let parts: Vec<ast::Ident> = name.0.iter().filter_map(|p| p.as_ident().cloned()).collect();
        let col = scope.resolve(&parts)?;
        if sets.iter().any(|(c, _)| *c == col) {
            return Err(SqlError::new(
                ErrorCode::SyntaxError,
                format!("multiple assignments to same column \"{}\"", def.columns[col].name),
            ));
        }
        let typed = Compiler::rows(&scope, env, "UPDATE").compile(&a.value)?;
        sets.push((col, coerce_to(typed, def.types[col], &|| column_label(&def, col))?));
    }
    let filter = match &up.selection {
        Some(w) => Some(Compiler::rows(&scope, env, "WHERE").condition(w)?),
        None => None,
    };
    let access = access_path(filter.as_ref(), &def);
    Ok(UpdatePlan { table: def, access, filter, sets })
}

/// A planned DELETE.
pub(crate) struct DeletePlan {
    pub table: Arc<TableDef>,
    pub access: Access,
    pub filter: Option<Expr>,
}

/// Plans a DELETE.
pub(crate) fn plan_delete(
    catalog: &Catalog,
    env: &Env<'_>,
    del: &ast::Delete,
) -> Result<DeletePlan, SqlError> {
    if !del.tables.is_empty() || del.using.is_some() {
        return Err(unsupported("DELETE of several tables or with USING"));
    }
    if del.returning.is_some() || del.output.is_some() {
        return Err(unsupported("RETURNING"));
    }
    if !del.order_by.is_empty() || del.limit.is_some() {
        return Err(unsupported("DELETE with ORDER BY or LIMIT"));
    }
    let from = match &del.from {
        ast::FromTable::WithFromKeyword(f) | ast::FromTable::WithoutKeyword(f) => f,
    };
    let [twj] = from.as_slice() else {
        return Err(unsupported("DELETE from several tables"));
    };
    let (def, alias) = dml_table(catalog, twj)?;
    let scope = Scope::of(&def, alias);
    let filter = match &del.selection {
        Some(w) => Some(Compiler::rows(&scope, env, "WHERE").condition(w)?),
        None => None,
    };
    let access = access_path(filter.as_ref(), &def);
    Ok(DeletePlan { table: def, access, filter })
}

/// Compares two values as ORDER BY does for one key.
pub(crate) fn order_values(a: &Value, b: &Value, desc: bool, nulls_first: bool) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => {
            if nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (_, Value::Null) => {
            if nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        _ => {
            let o = match (a, b) {
                (Value::Double(x), Value::Double(y)) => cmp_f64(*x, *y),
                _ => super::expr::sort_compare(a, b),
            };
            if desc {
                o.reverse()
            } else {
                o
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, TableId};
    use crate::value::OrdF64;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn table(key: DataType) -> TableDef {
        let cols = vec![
            ColumnDef { name: "id".into(), data_type: key, nullable: false },
            ColumnDef { name: "v".into(), data_type: DataType::BigInt, nullable: true },
        ];
        TableDef::new(TableId(1), "t".into(), cols, 0).unwrap()
    }

    fn access(key: DataType, cond: &str) -> Access {
        let def = table(key);
        let e = Parser::new(&PostgreSqlDialect {}).try_with_sql(cond).unwrap().parse_expr().unwrap();
        let scope = Scope::of(&def, None);
        let status = super::super::compile::tests::fake_status;
        let env = Env::new(0, &status);
        let f = Compiler::rows(&scope, &env, "WHERE").condition(&e).unwrap();
        access_path(Some(&f), &def)
    }

    fn ints(keys: &[i64]) -> Access {
        Access::Points(keys.iter().map(|k| Key::Int(*k)).collect())
    }

    #[test]
    fn primary_key_terms_choose_points_or_ranges() {
        use Bound::*;
        let b = DataType::BigInt;
        assert_eq!(access(b, "id = 42"), ints(&[42]));
        assert_eq!(access(b, "42 = id AND v > 3"), ints(&[42]));
        assert_eq!(access(b, "id IN (3, 1, 2, 1, NULL) AND id >= 2"), ints(&[2, 3]));
        assert_eq!(access(b, "id = 1 AND id = 2"), Access::Empty);
        assert_eq!(access(b, "id = NULL"), Access::Empty);
        assert_eq!(
            access(b, "id > 5 AND id <= 10"),
            Access::Range(Excluded(Key::Int(5)), Included(Key::Int(10)))
        );
        assert_eq!(
            access(b, "id BETWEEN 1 AND 9 AND id < 9"),
            Access::Range(Included(Key::Int(1)), Excluded(Key::Int(9)))
        );
        assert_eq!(access(b, "5 < id"), Access::Range(Excluded(Key::Int(5)), Unbounded));
        assert_eq!(access(b, "id > 5 AND id < 5"), Access::Empty);
        assert_eq!(access(b, "id = 2.0"), ints(&[2]));
        assert_eq!(access(b, "id = 2.5"), Access::Full, "not a BIGINT key: evaluate the predicate");
        assert_eq!(access(b, "id = 1 OR id = 2"), Access::Full);
        assert_eq!(access(b, "v = 1"), Access::Full);
        assert_eq!(access(b, "id <> 1"), Access::Full);
        assert_eq!(access(b, "NOT id BETWEEN 1 AND 2"), Access::Full);
        assert_eq!(access(b, "id + 0 = 1"), Access::Full);
        assert_eq!(access(b, "1 = 0"), Access::Empty);
        assert_eq!(access(DataType::Double, "id = 2"), Access::Points(vec![Key::Double(OrdF64(2.0))]));
        assert_eq!(access(DataType::Double, "id = -0.0"), Access::Points(vec![Key::Double(OrdF64(0.0))]));
        assert_eq!(
            access(DataType::Timestamp, "id >= '1970-01-01 00:00:01'"),
            Access::Range(Included(Key::Int(1_000_000)), Unbounded)
        );
        assert_eq!(access(DataType::Text, "id = 'a'"), Access::Points(vec![Key::Text("a".into())]));
    }

    #[test]
    fn order_puts_nulls_last_ascending_and_first_descending() {
        let (one, null) = (Value::Int(1), Value::Null);
        assert_eq!(order_values(&one, &null, false, false), Ordering::Less);
        assert_eq!(order_values(&one, &null, true, true), Ordering::Greater);
        assert_eq!(order_values(&Value::Int(1), &Value::Int(2), true, true), Ordering::Greater);
    }
}
