//! Compiling `sqlparser` expressions into typed [`Expr`]s.
//!
//! Compilation resolves column names against a [`Scope`] (the one table a statement reads),
//! checks operand types the way PostgreSQL does for our five types, coerces string literals to
//! the type they are compared with or assigned to (PostgreSQL's "unknown" literals, which is what
//! makes `WHERE created_at > '2026-01-01'` work), folds constant subexpressions, and evaluates the
//! functions whose value is fixed for a statement (`now()`, `current_lsn()`, …).
//!
//! Aggregated queries compile in two scopes: GROUP BY expressions over table rows, then the
//! select list, HAVING and ORDER BY over *group rows* — the group values followed by the results
//! of every aggregate call the query makes ([`AggCtx`]). A subexpression equal to a GROUP BY
//! expression becomes a reference to its group value; a bare column that is neither grouped nor
//! inside an aggregate is a `grouping_error`, as in PostgreSQL.

use super::expr::{cast, castable, mismatch, out_of_range, ArithOp, CmpOp, Expr, Func};
use super::EXPR_DEPTH_MAX;
use crate::db::Status;
use crate::error::{ErrorCode, Position, SqlError};
use crate::schema::TableDef;
use crate::value::{DataType, Value};
use sqlparser::ast;
use std::cell::OnceCell;

/// A compiled expression and its static type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Typed {
    pub expr: Expr,
    /// `None` when the type is unknown: a bare NULL.
    pub ty: Option<DataType>,
    /// A string literal not yet given a type (PostgreSQL's "unknown"): it takes the type of what
    /// it is compared with or assigned to. Always a `Const(Text)`.
    pub unknown: bool,
}

impl Typed {
    fn new(expr: Expr, ty: Option<DataType>) -> Typed {
        Typed { expr, ty, unknown: false }
    }

    fn constant(v: Value) -> Typed {
        let ty = v.data_type();
        Typed::new(Expr::Const(v), ty)
    }
}

/// The values of the functions that are fixed for one statement.
pub(crate) struct Env<'a> {
    /// `now()`: the transaction's start time.
    pub now_us: i64,
    status_fn: &'a dyn Fn() -> Status,
    status: OnceCell<Status>,
}

impl<'a> Env<'a> {
    /// An environment; `status` is called at most once, and only if a function needs it.
    pub fn new(now_us: i64, status: &'a dyn Fn() -> Status) -> Env<'a> {
        Env { now_us, status_fn: status, status: OnceCell::new() }
    }

    fn status(&self) -> &Status {
        self.status.get_or_init(|| (self.status_fn)())
    }
}

/// The table a statement reads, if any, and the name it is known by in the statement.
pub(crate) struct Scope<'a> {
    pub table: Option<&'a TableDef>,
    /// The alias, or the table's name when there is none.
    pub qualifier: String,
}

impl<'a> Scope<'a> {
    /// A scope without a table (`SELECT 1`, `VALUES`).
    pub fn empty() -> Scope<'static> {
        Scope { table: None, qualifier: String::new() }
    }

    /// The scope of `table`, called `alias` if one is given.
    pub fn of(table: &'a TableDef, alias: Option<String>) -> Scope<'a> {
        Scope { table: Some(table), qualifier: alias.unwrap_or_else(|| table.name.clone()) }
    }

    /// The index of the column `parts` (`col` or `qualifier.col`) names.
    pub fn resolve(&self, parts: &[ast::Ident]) -> Result<usize, SqlError> {
        let (qualifier, col) = match parts {
            [col] => (None, col),
            [q, col] => (Some(q), col),
            _ => {
                let name = parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".");
                return Err(SqlError::new(
                    ErrorCode::FeatureNotSupported,
                    format!("column reference \"{name}\" has too many parts"),
                )
                .at(parts.first().map(|p| p.span)));
            }
        };
        if let Some(q) = qualifier {
            let q_name = ident_name(q);
            if self.table.is_none() || q_name != self.qualifier {
                return Err(SqlError::new(
                    ErrorCode::UndefinedTable,
                    format!("missing FROM-clause entry for table \"{q_name}\""),
                )
                .at(Some(q.span)));
            }
        }
        let name = ident_name(col);
        match self.table {
            Some(t) => t.column_index(&name).ok_or_else(|| {
                SqlError::new(
                    ErrorCode::UndefinedColumn,
                    format!("column \"{name}\" of table \"{}\" does not exist", t.name),
                )
                .at(Some(col.span))
            }),
            None => {
                Err(SqlError::new(ErrorCode::UndefinedColumn, format!("column \"{name}\" does not exist"))
                    .with_hint("there is no FROM clause, so there are no columns to refer to")
                    .at(Some(col.span)))
            }
        }
    }
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate call of a query: `func(DISTINCT? arg)`; `COUNT(*)` has no argument.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AggSpec {
    pub func: AggFunc,
    pub arg: Option<Expr>,
    pub distinct: bool,
    /// The type of the argument.
    pub arg_ty: Option<DataType>,
}

impl AggSpec {
    /// The result type.
    pub fn result_type(&self) -> Option<DataType> {
        match self.func {
            AggFunc::Count => Some(DataType::BigInt),
            AggFunc::Avg => Some(DataType::Double),
            AggFunc::Sum | AggFunc::Min | AggFunc::Max => self.arg_ty,
        }
    }
}

/// The group-row layout of an aggregated query, built while compiling it.
#[derive(Debug, Default)]
pub(crate) struct AggCtx {
    /// GROUP BY expressions over table rows; group row column `i` holds the value of `groups[i]`.
    pub groups: Vec<Typed>,
    /// Aggregate calls; group row column `groups.len() + j` holds the result of `aggs[j]`.
    pub aggs: Vec<AggSpec>,
}

/// Adds a position to an error.
pub(crate) trait At {
    /// The error with the start of `span` as its position, when the span is known.
    fn at(self, span: Option<sqlparser::tokenizer::Span>) -> Self;
}

impl At for SqlError {
    fn at(mut self, span: Option<sqlparser::tokenizer::Span>) -> SqlError {
        if let Some(s) = span {
            if s.start.line > 0 && self.position.is_none() {
                self.position = Some(Position {
                    line: u32::try_from(s.start.line).unwrap_or(u32::MAX),
                    column: u32::try_from(s.start.column).unwrap_or(u32::MAX),
                });
            }
        }
        self
    }
}

/// A name as SQL folds it: unquoted identifiers are case-insensitive (lower-cased), quoted ones
/// keep their case.
pub(crate) fn ident_name(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// The one-part name of a table (`public.t` is accepted as `t`: there is one schema).
pub(crate) fn table_name(name: &ast::ObjectName) -> Result<String, SqlError> {
    let parts: Vec<&ast::Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    match parts.as_slice() {
        [t] if name.0.len() == 1 => Ok(ident_name(t)),
        [s, t] if name.0.len() == 2 && ident_name(s) == "public" => Ok(ident_name(t)),
        _ => Err(SqlError::new(
            ErrorCode::FeatureNotSupported,
            format!("qualified table name {name} is not supported; there is one schema"),
        )),
    }
}

/// The span of an object name's first part, for error positions.
pub(crate) fn name_span(name: &ast::ObjectName) -> Option<sqlparser::tokenizer::Span> {
    name.0.first().and_then(|p| p.as_ident()).map(|i| i.span)
}

/// Parses a numeric literal: digits only is BIGINT (out of range is an error, not a silent
/// DOUBLE), anything with `.` or an exponent is DOUBLE. `negative` folds a leading minus in, so
/// `-9223372036854775808` is a valid BIGINT.
pub(crate) fn number_literal(text: &str, negative: bool) -> Result<Value, SqlError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let v = text
            .parse::<i128>()
            .ok()
            .map(|v| if negative { -v } else { v })
            .and_then(|v| i64::try_from(v).ok());
        return v.map(Value::Int).ok_or_else(|| {
            out_of_range(format!(
                "integer literal {}{text} is out of range for BIGINT",
                if negative { "-" } else { "" }
            ))
        });
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Value::Double(if negative { -v } else { v })),
        Ok(_) => Err(out_of_range(format!("numeric literal {text} is out of range for DOUBLE"))),
        Err(_) => Err(SqlError::new(ErrorCode::SyntaxError, format!("invalid numeric literal {text}"))),
    }
}

/// Maps a declared SQL type to a column type.
pub(crate) fn data_type(t: &ast::DataType) -> Result<DataType, SqlError> {
    use ast::DataType as A;
    Ok(match t {
        A::BigInt(_)
        | A::Int(_)
        | A::Integer(_)
        | A::SmallInt(_)
        | A::TinyInt(_)
        | A::Int2(_)
        | A::Int4(_)
        | A::Int8(_)
        | A::Int16
        | A::Int32
        | A::Int64 => DataType::BigInt,
        A::Double(_)
        | A::DoublePrecision
        | A::Float(_)
        | A::Real
        | A::Float4
        | A::Float8
        | A::Float32
        | A::Float64 => DataType::Double,
        A::Text
        | A::Varchar(_)
        | A::Char(_)
        | A::Character(_)
        | A::CharacterVarying(_)
        | A::CharVarying(_)
        | A::Nvarchar(_)
        | A::String(_) => DataType::Text,
        A::Boolean | A::Bool => DataType::Boolean,
        A::Timestamp(_, _) | A::TimestampNtz(_) | A::Datetime(_) => DataType::Timestamp,
        A::Custom(name, _) if name.to_string().eq_ignore_ascii_case("timestamptz") => DataType::Timestamp,
        A::Numeric(_) | A::Decimal(_) | A::Dec(_) => {
            return Err(SqlError::new(ErrorCode::FeatureNotSupported, format!("type {t} is not supported"))
                .with_hint("use DOUBLE for fractional numbers or BIGINT for exact integers (e.g. cents)"))
        }
        other => {
            return Err(SqlError::new(
                ErrorCode::FeatureNotSupported,
                format!("type {other} is not supported"),
            )
            .with_hint("the types are BIGINT, DOUBLE, TEXT, BOOLEAN and TIMESTAMP"))
        }
    })
}

/// Coerces `t` for storing in a column of type `target`; `column` names the column in messages
/// (e.g. `column "balance" of table "accounts"`).
pub(crate) fn coerce_to(t: Typed, target: DataType, column: &dyn Fn() -> String) -> Result<Expr, SqlError> {
    if t.unknown {
        if let Expr::Const(v) = t.expr {
            return cast(v, target).map(Expr::Const).map_err(|e| {
                let message = format!("{} for {}", e.message, column());
                SqlError { message, ..e }
            });
        }
    }
    match t.ty {
        None => Ok(t.expr),
        Some(ty) if ty == target => Ok(t.expr),
        Some(DataType::BigInt) if target == DataType::Double => fold(Expr::Cast(Box::new(t.expr), target)),
        Some(ty) => Err(mismatch(format!("{} is of type {target} but expression is of type {ty}", column()))
            .with_hint("rewrite or cast the expression")),
    }
}

/// Evaluates `e` now if its direct operands are all constants (they were folded bottom-up).
fn fold(e: Expr) -> Result<Expr, SqlError> {
    let operands_constant = match &e {
        Expr::Const(_) | Expr::Column(_) | Expr::Case { .. } => false,
        Expr::Not(a) | Expr::Neg(a) | Expr::Cast(a, _) => is_const(a),
        Expr::IsNull { expr, .. } | Expr::IsBool { expr, .. } => is_const(expr),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) | Expr::Arith(_, a, b) | Expr::Concat(a, b) => {
            is_const(a) && is_const(b)
        }
        Expr::InList { expr, list, .. } => is_const(expr) && list.iter().all(is_const),
        Expr::Between { expr, low, high, .. } => is_const(expr) && is_const(low) && is_const(high),
        Expr::Like { expr, pattern, .. } => is_const(expr) && is_const(pattern),
        Expr::Func(_, args) => args.iter().all(is_const),
    };
    if operands_constant {
        Ok(Expr::Const(e.eval(&[])?.into_owned()))
    } else {
        Ok(e)
    }
}

fn is_const(e: &Expr) -> bool {
    matches!(e, Expr::Const(_))
}

fn is_numeric(t: Option<DataType>) -> bool {
    matches!(t, Some(DataType::BigInt | DataType::Double))
}

fn ty_name(t: Option<DataType>) -> &'static str {
    t.map_or("unknown", DataType::name)
}

/// Gives an unknown literal the type `to`.
fn resolve_unknown(t: Typed, to: DataType) -> Result<Typed, SqlError> {
    match t.expr {
        Expr::Const(v) if t.unknown => Ok(Typed::new(Expr::Const(cast(v, to)?), Some(to))),
        expr => Ok(Typed { expr, ..t }),
    }
}

/// Makes two operands comparable: unknown literals take the other side's type; BIGINT and
/// DOUBLE compare as numbers; anything else must match exactly.
fn unify(l: Typed, r: Typed, op: &str) -> Result<(Typed, Typed), SqlError> {
    let (l, r) = match (l.unknown, r.unknown, l.ty, r.ty) {
        (true, false, _, Some(t)) => (resolve_unknown(l, t)?, r),
        (false, true, Some(t), _) => (l, resolve_unknown(r, t)?),
        _ => (l, r),
    };
    match (l.ty, r.ty) {
        (None, _) | (_, None) => Ok((l, r)),
        (a, b) if a == b => Ok((l, r)),
        (a, b) if is_numeric(a) && is_numeric(b) => Ok((l, r)),
        (a, b) => Err(mismatch(format!("operator does not exist: {} {op} {}", ty_name(a), ty_name(b)))
            .with_hint("the operands have different types; CAST one of them")),
    }
}

/// The common type of the branches of CASE or COALESCE, coercing each expression to it.
fn common_type(items: Vec<Typed>, what: &str) -> Result<(Vec<Expr>, Option<DataType>), SqlError> {
    let mut ty: Option<DataType> = None;
    for t in items.iter().filter(|t| !t.unknown) {
        ty = match (ty, t.ty) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) if a == b => Some(a),
            (Some(a), Some(b)) if is_numeric(Some(a)) && is_numeric(Some(b)) => Some(DataType::Double),
            (Some(a), Some(b)) => {
                return Err(mismatch(format!("{what} types {a} and {b} cannot be matched")))
            }
        };
    }
    let ty = ty.or_else(|| items.iter().any(|t| t.unknown).then_some(DataType::Text));
    let exprs = items
        .into_iter()
        .map(|t| match ty {
            Some(target) if t.unknown => resolve_unknown(t, target).map(|t| t.expr),
            Some(DataType::Double) if t.ty == Some(DataType::BigInt) => {
                fold(Expr::Cast(Box::new(t.expr), DataType::Double))
            }
            _ => Ok(t.expr),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((exprs, ty))
}

fn boolean(t: Typed, what: &str) -> Result<Expr, SqlError> {
    let t = if t.unknown { resolve_unknown(t, DataType::Boolean)? } else { t };
    match t.ty {
        None | Some(DataType::Boolean) => Ok(t.expr),
        Some(other) => Err(mismatch(format!("argument of {what} must be type BOOLEAN, not type {other}"))),
    }
}

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not supported"))
}

#[inline(never)]
fn unsupported_expr(e: &ast::Expr) -> SqlError {
    unsupported(format!("the expression {e}"))
}

/// `TIMESTAMP '…'` and friends: a literal of a named type.
#[inline(never)]
fn typed_string(ts: &ast::TypedString) -> Result<Typed, SqlError> {
    let to = data_type(&ts.data_type)?;
    let text =
        ts.value.clone().into_string().ok_or_else(|| unsupported(format!("the literal {}", ts.value)))?;
    Ok(Typed::new(Expr::Const(cast(Value::Text(text), to)?), Some(to)))
}

fn agg_func(name: &str) -> Option<AggFunc> {
    Some(match name {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "avg" => AggFunc::Avg,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        _ => return None,
    })
}

/// The lower-cased name of a function call.
pub(crate) fn function_name(f: &ast::Function) -> String {
    match f.name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(i)] => ident_name(i),
        _ => f.name.to_string().to_lowercase(),
    }
}

/// Compiles expressions in one scope.
pub(crate) struct Compiler<'a, 'c> {
    scope: &'a Scope<'a>,
    env: &'a Env<'a>,
    /// Set when compiling over group rows.
    agg: Option<&'c mut AggCtx>,
    /// The clause being compiled, for messages ("WHERE", "VALUES", …).
    clause: &'static str,
    /// Set when an aggregate call was refused because this compiler works on table rows.
    saw_aggregate: bool,
    depth: usize,
}

impl<'a, 'c> Compiler<'a, 'c> {
    /// A compiler over table rows (aggregate calls are refused).
    pub fn rows(scope: &'a Scope<'a>, env: &'a Env<'a>, clause: &'static str) -> Compiler<'a, 'c> {
        Compiler { scope, env, agg: None, clause, saw_aggregate: false, depth: 0 }
    }

    /// A compiler over group rows laid out by `agg`; new aggregate calls are added to it.
    pub fn groups(
        scope: &'a Scope<'a>,
        env: &'a Env<'a>,
        agg: &'c mut AggCtx,
        clause: &'static str,
    ) -> Compiler<'a, 'c> {
        Compiler { scope, env, agg: Some(agg), clause, saw_aggregate: false, depth: 0 }
    }

    /// Compiles one expression.
    pub fn compile(&mut self, e: &ast::Expr) -> Result<Typed, SqlError> {
        if self.depth >= EXPR_DEPTH_MAX {
            return Err(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!("expression nested deeper than {EXPR_DEPTH_MAX} levels"),
            ));
        }
        self.depth += 1;
        let r = self.compile_inner(e);
        self.depth -= 1;
        r
    }

    /// Whether an aggregate call was refused because this compiler works on table rows (the
    /// query aggregates after all).
    pub fn saw_aggregate(&self) -> bool {
        self.saw_aggregate
    }

    /// Compiles a condition (WHERE, HAVING): it must be BOOLEAN.
    pub fn condition(&mut self, e: &ast::Expr) -> Result<Expr, SqlError> {
        let t = self.compile(e)?;
        boolean(t, self.clause)
    }

    fn row_compiler(&self) -> Compiler<'a, 'static> {
        Compiler {
            scope: self.scope,
            env: self.env,
            agg: None,
            clause: self.clause,
            saw_aggregate: false,
            depth: self.depth,
        }
    }

    /// Over group rows: an aggregate call becomes a group-row column; a subexpression that
    /// equals a GROUP BY expression becomes its group value; a constant stays as it is.
    /// `None` means compile structurally.
    #[inline(never)]
    fn intercept_group(&mut self, e: &ast::Expr) -> Result<Option<Typed>, SqlError> {
        if let ast::Expr::Function(f) = e {
            if let Some(func) = agg_func(&function_name(f)) {
                return self.aggregate(func, f).map(Some);
            }
        }
        let mut sub = self.row_compiler();
        match sub.compile(e) {
            Ok(t) => {
                let agg = self.agg.as_deref().expect("group compiler has a layout");
                if let Some(i) = agg.groups.iter().position(|g| g.expr == t.expr) {
                    return Ok(Some(Typed { expr: Expr::Column(i), ..t }));
                }
                Ok(t.expr.is_constant().then_some(t))
            }
            Err(_) if sub.saw_aggregate => Ok(None),
            Err(err) => Err(err),
        }
    }

    #[inline(never)]
    fn aggregate(&mut self, func: AggFunc, f: &ast::Function) -> Result<Typed, SqlError> {
        let name = function_name(f);
        let ast::FunctionArguments::List(list) = &f.args else {
            return Err(SqlError::new(ErrorCode::SyntaxError, format!("{name} needs an argument list")));
        };
        if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() || !list.clauses.is_empty() {
            return Err(unsupported(format!("FILTER, OVER, WITHIN GROUP or ORDER BY in {name}()")));
        }
        let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
        let (arg, arg_ty) = match list.args.as_slice() {
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard)]
                if func == AggFunc::Count && !distinct =>
            {
                (None, None)
            }
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(a))] => {
                let mut sub = self.row_compiler();
                let t = match sub.compile(a) {
                    Err(_) if sub.saw_aggregate => {
                        return Err(SqlError::new(
                            ErrorCode::GroupingError,
                            "aggregate function calls cannot be nested",
                        ))
                    }
                    r => r?,
                };
                let t = if t.unknown { resolve_unknown(t, DataType::Text)? } else { t };
                (Some(t.expr), t.ty)
            }
            _ => {
                return Err(SqlError::new(
                    ErrorCode::UndefinedFunction,
                    format!(
                        "function {name} takes exactly one argument{}",
                        if func == AggFunc::Count { " or *" } else { "" }
                    ),
                ))
            }
        };
        if matches!(func, AggFunc::Sum | AggFunc::Avg) && !(arg_ty.is_none() || is_numeric(arg_ty)) {
            return Err(SqlError::new(
                ErrorCode::UndefinedFunction,
                format!("function {name}({}) does not exist", ty_name(arg_ty)),
            )
            .with_hint("sum and avg take BIGINT or DOUBLE"));
        }
        let spec = AggSpec { func, arg, distinct, arg_ty };
        let ty = spec.result_type();
        let agg = self.agg.as_deref_mut().expect("group compiler has a layout");
        let slot = match agg.aggs.iter().position(|a| *a == spec) {
            Some(j) => j,
            None => {
                agg.aggs.push(spec);
                agg.aggs.len() - 1
            }
        };
        Ok(Typed::new(Expr::Column(agg.groups.len() + slot), ty))
    }

    // Each arm is its own function so that the frame of this recursive function stays small:
    // in a debug build one frame holding every arm's temporaries took about 19 KB per level.
    fn compile_inner(&mut self, e: &ast::Expr) -> Result<Typed, SqlError> {
        use ast::Expr as A;
        if self.agg.is_some() {
            if let Some(t) = self.intercept_group(e)? {
                return Ok(t);
            }
        }
        match e {
            A::Identifier(id) => self.column(std::slice::from_ref(id)),
            A::CompoundIdentifier(ids) => self.column(ids),
            A::Value(v) => self.literal(v),
            A::Nested(inner) => self.compile(inner),
            A::UnaryOp { op, expr } => self.unary(*op, expr),
            A::BinaryOp { left, op, right } => self.binary(left, op, right),
            A::IsNull(x) => self.is_null(x, false),
            A::IsNotNull(x) => self.is_null(x, true),
            A::IsTrue(x) => self.is_bool(x, Some(true), false),
            A::IsNotTrue(x) => self.is_bool(x, Some(true), true),
            A::IsFalse(x) => self.is_bool(x, Some(false), false),
            A::IsNotFalse(x) => self.is_bool(x, Some(false), true),
            A::IsUnknown(x) => self.is_bool(x, None, false),
            A::IsNotUnknown(x) => self.is_bool(x, None, true),
            A::InList { expr, list, negated } => self.in_list(expr, list, *negated),
            A::Between { expr, negated, low, high } => self.between(expr, low, high, *negated),
            A::Like { negated, any, expr, pattern, escape_char } => {
                self.like(expr, pattern, *negated, *any || escape_char.is_some(), false)
            }
            A::ILike { negated, any, expr, pattern, escape_char } => {
                self.like(expr, pattern, *negated, *any || escape_char.is_some(), true)
            }
            A::Cast { kind, expr, data_type: target, format } => {
                if format.is_some() || !matches!(kind, ast::CastKind::Cast | ast::CastKind::DoubleColon) {
                    return Err(unsupported("this form of CAST"));
                }
                self.cast(expr, target)
            }
            A::TypedString(ts) => typed_string(ts),
            A::Function(f) => self.function(f),
            A::Case { operand, conditions, else_result, .. } => {
                self.case(operand.as_deref(), conditions, else_result.as_deref())
            }
            A::Subquery(_) | A::InSubquery { .. } | A::Exists { .. } => Err(unsupported("a subquery")),
            other => Err(unsupported_expr(other)),
        }
    }

    #[inline(never)]
    fn is_null(&mut self, x: &ast::Expr, negated: bool) -> Result<Typed, SqlError> {
        let t = self.compile(x)?;
        Ok(Typed::new(fold(Expr::IsNull { expr: Box::new(t.expr), negated })?, Some(DataType::Boolean)))
    }

    /// `IS [NOT] TRUE|FALSE`, or `IS [NOT] UNKNOWN` when `value` is `None`.
    #[inline(never)]
    fn is_bool(&mut self, x: &ast::Expr, value: Option<bool>, negated: bool) -> Result<Typed, SqlError> {
        let t = self.compile(x)?;
        let inner = Box::new(boolean(t, "IS TRUE / IS FALSE / IS UNKNOWN")?);
        let e = match value {
            Some(value) => Expr::IsBool { expr: inner, value, negated },
            None => Expr::IsNull { expr: inner, negated },
        };
        Ok(Typed::new(fold(e)?, Some(DataType::Boolean)))
    }

    #[inline(never)]
    fn in_list(&mut self, expr: &ast::Expr, list: &[ast::Expr], negated: bool) -> Result<Typed, SqlError> {
        if list.len() > super::VALUES_ROWS_MAX {
            return Err(SqlError::new(ErrorCode::ProgramLimitExceeded, "IN list too long"));
        }
        let mut subject = self.compile(expr)?;
        let mut items = Vec::with_capacity(list.len());
        for item in list {
            let (s, i) = unify(subject, self.compile(item)?, "=")?;
            subject = s;
            items.push(i.expr);
        }
        let e = Expr::InList { expr: Box::new(subject.expr), list: items, negated };
        Ok(Typed::new(fold(e)?, Some(DataType::Boolean)))
    }

    #[inline(never)]
    fn between(
        &mut self,
        expr: &ast::Expr,
        low: &ast::Expr,
        high: &ast::Expr,
        negated: bool,
    ) -> Result<Typed, SqlError> {
        let subject = self.compile(expr)?;
        let (subject, low) = unify(subject, self.compile(low)?, ">=")?;
        let (subject, high) = unify(subject, self.compile(high)?, "<=")?;
        let e = Expr::Between {
            expr: Box::new(subject.expr),
            low: Box::new(low.expr),
            high: Box::new(high.expr),
            negated,
        };
        Ok(Typed::new(fold(e)?, Some(DataType::Boolean)))
    }

    #[inline(never)]
    fn like(
        &mut self,
        expr: &ast::Expr,
        pattern: &ast::Expr,
        negated: bool,
        unsupported_form: bool,
        case_insensitive: bool,
    ) -> Result<Typed, SqlError> {
        if unsupported_form {
            return Err(unsupported("LIKE ANY or LIKE … ESCAPE"));
        }
        fn text(t: Typed) -> Result<Expr, SqlError> {
            let t = if t.unknown { resolve_unknown(t, DataType::Text)? } else { t };
            match t.ty {
                None | Some(DataType::Text) => Ok(t.expr),
                Some(other) => Err(mismatch(format!("operator does not exist: {other} LIKE TEXT"))),
            }
        }
        let expr = Box::new(text(self.compile(expr)?)?);
        let pattern = Box::new(text(self.compile(pattern)?)?);
        Ok(Typed::new(
            fold(Expr::Like { expr, pattern, negated, case_insensitive })?,
            Some(DataType::Boolean),
        ))
    }

    #[inline(never)]
    fn cast(&mut self, expr: &ast::Expr, target: &ast::DataType) -> Result<Typed, SqlError> {
        let to = data_type(target)?;
        let t = self.compile(expr)?;
        if let Some(from) = t.ty {
            if !castable(from, to) {
                return Err(mismatch(format!("cannot cast type {from} to {to}")));
            }
        }
        Ok(Typed::new(fold(Expr::Cast(Box::new(t.expr), to))?, Some(to)))
    }

    #[inline(never)]
    fn column(&mut self, parts: &[ast::Ident]) -> Result<Typed, SqlError> {
        let i = self.scope.resolve(parts)?;
        if self.agg.is_some() {
            let name = parts.iter().map(ident_name).collect::<Vec<_>>().join(".");
            return Err(SqlError::new(
                ErrorCode::GroupingError,
                format!("column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"),
            )
            .at(parts.last().map(|p| p.span)));
        }
        let ty = self.scope.table.map(|t| t.types[i]);
        Ok(Typed::new(Expr::Column(i), ty))
    }

    #[inline(never)]
    fn literal(&mut self, v: &ast::ValueWithSpan) -> Result<Typed, SqlError> {
        use ast::Value as V;
        Ok(match &v.value {
            V::Number(n, _) => Typed::constant(number_literal(n, false).map_err(|e| e.at(Some(v.span)))?),
            V::SingleQuotedString(s)
            | V::EscapedStringLiteral(s)
            | V::UnicodeStringLiteral(s)
            | V::NationalStringLiteral(s) => {
                Typed { expr: Expr::Const(Value::Text(s.clone())), ty: Some(DataType::Text), unknown: true }
            }
            V::DollarQuotedString(d) => Typed {
                expr: Expr::Const(Value::Text(d.value.clone())),
                ty: Some(DataType::Text),
                unknown: true,
            },
            V::Boolean(b) => Typed::constant(Value::Bool(*b)),
            V::Null => Typed::new(Expr::Const(Value::Null), None),
            V::Placeholder(p) => {
                return Err(
                    unsupported(format!("the parameter {p}")).with_hint("write the value into the statement")
                )
            }
            other => return Err(unsupported(format!("the literal {other}")).at(Some(v.span))),
        })
    }

    #[inline(never)]
    fn unary(&mut self, op: ast::UnaryOperator, expr: &ast::Expr) -> Result<Typed, SqlError> {
        match op {
            ast::UnaryOperator::Not => {
                let t = self.compile(expr)?;
                Ok(Typed::new(fold(Expr::Not(Box::new(boolean(t, "NOT")?)))?, Some(DataType::Boolean)))
            }
            ast::UnaryOperator::Minus => {
                // Fold the sign into a number literal so that i64::MIN is expressible.
                if let ast::Expr::Value(ast::ValueWithSpan { value: ast::Value::Number(n, _), span }) = expr {
                    return Ok(Typed::constant(number_literal(n, true).map_err(|e| e.at(Some(*span)))?));
                }
                let t = self.compile(expr)?;
                let t = if t.unknown { resolve_unknown(t, DataType::Double)? } else { t };
                if !(t.ty.is_none() || is_numeric(t.ty)) {
                    return Err(mismatch(format!("operator does not exist: - {}", ty_name(t.ty))));
                }
                Ok(Typed::new(fold(Expr::Neg(Box::new(t.expr)))?, t.ty))
            }
            ast::UnaryOperator::Plus => {
                let t = self.compile(expr)?;
                if !(t.ty.is_none() || is_numeric(t.ty)) {
                    return Err(mismatch(format!("operator does not exist: + {}", ty_name(t.ty))));
                }
                Ok(t)
            }
            other => Err(unsupported(format!("the operator {other}"))),
        }
    }

    #[inline(never)]
    fn binary(
        &mut self,
        left: &ast::Expr,
        op: &ast::BinaryOperator,
        right: &ast::Expr,
    ) -> Result<Typed, SqlError> {
        let l = self.compile(left)?;
        let r = self.compile(right)?;
        binary_op(l, op, r)
    }

    #[inline(never)]
    fn case(
        &mut self,
        operand: Option<&ast::Expr>,
        conditions: &[ast::CaseWhen],
        else_result: Option<&ast::Expr>,
    ) -> Result<Typed, SqlError> {
        let mut subject = match operand {
            Some(o) => Some(self.compile(o)?),
            None => None,
        };
        let mut whens = Vec::with_capacity(conditions.len());
        let mut results = Vec::with_capacity(conditions.len() + 1);
        for c in conditions {
            let w = self.compile(&c.condition)?;
            let w = match subject.take() {
                Some(s) => {
                    let (s, w) = unify(s, w, "=")?;
                    subject = Some(s);
                    w.expr
                }
                None => boolean(w, "CASE WHEN")?,
            };
            whens.push(w);
            results.push(self.compile(&c.result)?);
        }
        let has_else = else_result.is_some();
        if let Some(e) = else_result {
            results.push(self.compile(e)?);
        }
        let (mut exprs, ty) = common_type(results, "CASE")?;
        let otherwise = if has_else { exprs.pop().map(Box::new) } else { None };
        let e = Expr::Case {
            operand: subject.map(|s| Box::new(s.expr)),
            whens: whens.into_iter().zip(exprs).collect(),
            otherwise,
        };
        Ok(Typed::new(e, ty))
    }

    #[inline(never)]
    fn function(&mut self, f: &ast::Function) -> Result<Typed, SqlError> {
        let name = function_name(f);
        if let Some(func) = agg_func(&name) {
            if self.agg.is_none() {
                self.saw_aggregate = true;
                return Err(SqlError::new(
                    ErrorCode::GroupingError,
                    format!("aggregate functions are not allowed in {}", self.clause),
                )
                .at(name_span(&f.name)));
            }
            return self.aggregate(func, f);
        }
        if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(format!("FILTER, OVER or WITHIN GROUP on {name}()")));
        }
        let args: Vec<&ast::Expr> = match &f.args {
            ast::FunctionArguments::None => Vec::new(),
            ast::FunctionArguments::List(list) => {
                if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                    return Err(unsupported(format!("DISTINCT or ORDER BY in {name}()")));
                }
                list.args
                    .iter()
                    .map(|a| match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Ok(e),
                        other => Err(unsupported(format!("the function argument {other}"))),
                    })
                    .collect::<Result<_, _>>()?
            }
            ast::FunctionArguments::Subquery(_) => return Err(unsupported("a subquery")),
        };
        let arity = |n: usize| -> Result<(), SqlError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(SqlError::new(
                    ErrorCode::UndefinedFunction,
                    format!(
                        "function {name}() takes {n} argument{}, not {}",
                        if n == 1 { "" } else { "s" },
                        args.len()
                    ),
                ))
            }
        };
        let status = || self.env.status();
        let constant = match name.as_str() {
            "now" | "current_timestamp" | "transaction_timestamp" | "localtimestamp" => {
                arity(0)?;
                Some(Value::Timestamp(self.env.now_us))
            }
            "clock_timestamp" | "statement_timestamp" => {
                arity(0)?;
                Some(Value::Timestamp(now_us()))
            }
            "current_lsn" => {
                arity(0)?;
                Some(Value::Text(status().visible_lsn.to_string()))
            }
            "replay_lsn" => {
                arity(0)?;
                // A primary replays nothing. Replicas (the next milestone) report their replay
                // position here.
                return Ok(Typed::new(Expr::Const(Value::Null), Some(DataType::Text)));
            }
            "last_committed_txid" => {
                arity(0)?;
                Some(Value::Int(i64::try_from(status().last_txid.0).unwrap_or(i64::MAX)))
            }
            "timeline" => {
                arity(0)?;
                Some(Value::Int(i64::from(status().timeline.0)))
            }
            _ => None,
        };
        if let Some(v) = constant {
            return Ok(Typed::constant(v));
        }
        let mut compiled = Vec::with_capacity(args.len());
        for a in &args {
            compiled.push(self.compile(a)?);
        }
        let text_arg = |t: Typed| -> Result<Expr, SqlError> {
            let t = if t.unknown { resolve_unknown(t, DataType::Text)? } else { t };
            match t.ty {
                None | Some(DataType::Text) => Ok(t.expr),
                Some(other) => Err(SqlError::new(
                    ErrorCode::UndefinedFunction,
                    format!("function {name}({other}) does not exist"),
                )),
            }
        };
        let (func, exprs, ty) = match name.as_str() {
            "lower" | "upper" | "length" | "char_length" | "character_length" => {
                arity(1)?;
                let arg = compiled.pop().map(text_arg).transpose()?.unwrap_or(Expr::Const(Value::Null));
                let (func, ty) = match name.as_str() {
                    "lower" => (Func::Lower, DataType::Text),
                    "upper" => (Func::Upper, DataType::Text),
                    _ => (Func::Length, DataType::BigInt),
                };
                (func, vec![arg], Some(ty))
            }
            "abs" => {
                arity(1)?;
                let t = compiled.pop().map(|t| resolve_unknown(t, DataType::Double)).transpose()?;
                let t = t.unwrap_or_else(|| Typed::new(Expr::Const(Value::Null), None));
                if !(t.ty.is_none() || is_numeric(t.ty)) {
                    return Err(SqlError::new(
                        ErrorCode::UndefinedFunction,
                        format!("function abs({}) does not exist", ty_name(t.ty)),
                    ));
                }
                (Func::Abs, vec![t.expr], t.ty)
            }
            "coalesce" => {
                if compiled.is_empty() {
                    return Err(SqlError::new(ErrorCode::UndefinedFunction, "coalesce() needs at least one argument"));
                }
                let (exprs, ty) = common_type(compiled, "COALESCE")?;
                (Func::Coalesce, exprs, ty)
            }
            "nullif" => {
                arity(2)?;
                let r = compiled.pop().unwrap_or_else(|| Typed::new(Expr::Const(Value::Null), None));
                let l = compiled.pop().unwrap_or_else(|| Typed::new(Expr::Const(Value::Null), None));
                let (l, r) = unify(l, r, "=")?;
                let ty = l.ty;
                (Func::NullIf, vec![l.expr, r.expr], ty)
            }
            _ => {
                return Err(SqlError::new(ErrorCode::UndefinedFunction, format!("function {name}() does not exist"))
                    .with_hint(
                        "the functions are now(), current_lsn(), replay_lsn(), last_committed_txid(), timeline(), \
                         lower, upper, length, abs, coalesce, nullif and the aggregates count, sum, avg, min, max",
                    )
                    .at(name_span(&f.name)))
            }
        };
        Ok(Typed::new(fold(Expr::Func(func, exprs))?, ty))
    }
}

fn comparison(l: Typed, op: CmpOp, symbol: &str, r: Typed) -> Result<Typed, SqlError> {
    let (l, r) = unify(l, r, symbol)?;
    Ok(Typed::new(fold(Expr::Cmp(op, Box::new(l.expr), Box::new(r.expr)))?, Some(DataType::Boolean)))
}

fn arithmetic(l: Typed, op: ArithOp, symbol: &str, r: Typed) -> Result<Typed, SqlError> {
    // An unknown literal next to a number is a number of that type (`balance + '1'`).
    let (l, r) = match (l.unknown, r.unknown, l.ty, r.ty) {
        (true, false, _, Some(t @ (DataType::BigInt | DataType::Double))) => (resolve_unknown(l, t)?, r),
        (false, true, Some(t @ (DataType::BigInt | DataType::Double)), _) => (l, resolve_unknown(r, t)?),
        _ => (l, r),
    };
    let ty = match (l.ty, r.ty) {
        (Some(DataType::BigInt), Some(DataType::BigInt)) => Some(DataType::BigInt),
        (a, b) if is_numeric(a) && is_numeric(b) => Some(DataType::Double),
        (None, b) if is_numeric(b) || b.is_none() => b,
        (a, None) if is_numeric(a) => a,
        (a, b) => {
            return Err(mismatch(format!("operator does not exist: {} {symbol} {}", ty_name(a), ty_name(b)))
                .with_hint("arithmetic takes BIGINT and DOUBLE operands"))
        }
    };
    Ok(Typed::new(fold(Expr::Arith(op, Box::new(l.expr), Box::new(r.expr)))?, ty))
}

/// Type-checks and builds a binary operation on compiled operands.
#[inline(never)]
fn binary_op(l: Typed, op: &ast::BinaryOperator, r: Typed) -> Result<Typed, SqlError> {
    use ast::BinaryOperator as B;
    match op {
        B::And | B::Or => {
            let name = if *op == B::And { "AND" } else { "OR" };
            let (a, b) = (Box::new(boolean(l, name)?), Box::new(boolean(r, name)?));
            let e = if *op == B::And { Expr::And(a, b) } else { Expr::Or(a, b) };
            Ok(Typed::new(fold(e)?, Some(DataType::Boolean)))
        }
        B::Eq => comparison(l, CmpOp::Eq, "=", r),
        B::NotEq => comparison(l, CmpOp::NotEq, "<>", r),
        B::Lt => comparison(l, CmpOp::Lt, "<", r),
        B::LtEq => comparison(l, CmpOp::LtEq, "<=", r),
        B::Gt => comparison(l, CmpOp::Gt, ">", r),
        B::GtEq => comparison(l, CmpOp::GtEq, ">=", r),
        B::Plus => arithmetic(l, ArithOp::Add, "+", r),
        B::Minus => arithmetic(l, ArithOp::Sub, "-", r),
        B::Multiply => arithmetic(l, ArithOp::Mul, "*", r),
        B::Divide => arithmetic(l, ArithOp::Div, "/", r),
        B::Modulo => arithmetic(l, ArithOp::Rem, "%", r),
        B::StringConcat => {
            let texty = |t: &Typed| t.unknown || t.ty == Some(DataType::Text);
            if !(texty(&l) || texty(&r) || l.ty.is_none() || r.ty.is_none()) {
                return Err(mismatch(format!(
                    "operator does not exist: {} || {}",
                    ty_name(l.ty),
                    ty_name(r.ty)
                ))
                .with_hint("|| concatenates TEXT; CAST one operand to TEXT"));
            }
            Ok(Typed::new(fold(Expr::Concat(Box::new(l.expr), Box::new(r.expr)))?, Some(DataType::Text)))
        }
        other => Err(unsupported(format!("the operator {other}"))),
    }
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::{ColumnDef, TableId};
    use hindsight_protocol::{Lsn, Timeline, TxId};
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    pub(crate) fn fake_status() -> Status {
        Status {
            role: "primary",
            system_id: 7,
            timeline: Timeline(3),
            visible_lsn: Lsn(0x1_0000_0010),
            insert_lsn: Lsn(0x1_0000_0010),
            flushed_lsn: Lsn(0x1_0000_0010),
            replay_error: None,
            last_txid: TxId(42),
            last_commit_time_us: 0,
            digest: 0xABCD,
            checkpoint_lsn: Lsn(0),
            rows: 0,
            tables: 1,
            wal_syncs: 0,
            wal_sync_us: 0,
            commits: 0,
        }
    }

    fn table() -> TableDef {
        let col = |name: &str, data_type, nullable| ColumnDef { name: name.into(), data_type, nullable };
        TableDef::new(
            TableId(1),
            "t".into(),
            vec![
                col("id", DataType::BigInt, false),
                col("name", DataType::Text, true),
                col("x", DataType::Double, true),
                col("ts", DataType::Timestamp, true),
                col("ok", DataType::Boolean, true),
            ],
            0,
        )
        .unwrap()
    }

    fn parse(sql: &str) -> ast::Expr {
        Parser::new(&PostgreSqlDialect {}).try_with_sql(sql).unwrap().parse_expr().unwrap()
    }

    fn compile(sql: &str) -> Result<Typed, SqlError> {
        let t = table();
        let scope = Scope::of(&t, None);
        let status = fake_status;
        let env = Env::new(1_000_000, &status);
        Compiler::rows(&scope, &env, "WHERE").compile(&parse(sql))
    }

    fn eval(sql: &str, row: &[Value]) -> Result<Value, SqlError> {
        compile(sql)?.expr.eval(row).map(std::borrow::Cow::into_owned)
    }

    fn row() -> Vec<Value> {
        vec![Value::Int(7), Value::Text("Ann".into()), Value::Double(2.5), Value::Timestamp(0), Value::Null]
    }

    #[test]
    fn resolves_columns_and_folds_constants() {
        assert_eq!(compile("id").unwrap().expr, Expr::Column(0));
        assert_eq!(compile("T.Name").unwrap().expr, Expr::Column(1));
        assert_eq!(compile("\"ID\"").unwrap_err().code, ErrorCode::UndefinedColumn, "quoted names keep case");
        let e = compile("balnce").unwrap_err();
        assert_eq!(e.message, "column \"balnce\" of table \"t\" does not exist");
        assert_eq!(e.position, Some(Position { line: 1, column: 1 }));
        assert_eq!(compile("u.id").unwrap_err().code, ErrorCode::UndefinedTable);
        assert_eq!(compile("1 + 2 * 3").unwrap().expr, Expr::Const(Value::Int(7)));
        assert_eq!(compile("-9223372036854775808").unwrap().expr, Expr::Const(Value::Int(i64::MIN)));
        assert_eq!(compile("9223372036854775808").unwrap_err().code, ErrorCode::NumericValueOutOfRange);
        assert_eq!(compile("1 / 0").unwrap_err().message, "division by zero");
        let t = compile("id = 40 + 2").unwrap();
        assert_eq!(
            t.expr,
            Expr::Cmp(CmpOp::Eq, Box::new(Expr::Column(0)), Box::new(Expr::Const(Value::Int(42))))
        );
    }

    #[test]
    fn type_checks_and_coerces_literals() {
        assert_eq!(eval("ts = '1970-01-01T00:00:00Z'", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("ts < '1970-01-02'", &row()).unwrap(), Value::Bool(true));
        assert_eq!(compile("ts < 'soon'").unwrap_err().code, ErrorCode::InvalidParameterValue);
        assert_eq!(compile("name = 5").unwrap_err().code, ErrorCode::DatatypeMismatch);
        assert_eq!(compile("id + name").unwrap_err().code, ErrorCode::DatatypeMismatch);
        assert_eq!(compile("id AND ok").unwrap_err().code, ErrorCode::DatatypeMismatch);
        assert_eq!(eval("id + x", &row()).unwrap(), Value::Double(9.5));
        assert_eq!(compile("id * 2").unwrap().ty, Some(DataType::BigInt));
        assert_eq!(eval("name || '!' || id", &row()).unwrap(), Value::Text("Ann!7".into()));
        assert_eq!(compile("id || id").unwrap_err().code, ErrorCode::DatatypeMismatch);
        assert_eq!(eval("id IN (1, 7.0, NULL)", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("id BETWEEN 1 AND 10 AND name LIKE 'A%'", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("name ILIKE 'ann'", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("ok IS NULL AND NOT (ok IS TRUE)", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("CAST(x AS BIGINT)", &row()).unwrap(), Value::Int(2));
        assert_eq!(eval("id::text", &row()).unwrap(), Value::Text("7".into()));
        assert_eq!(eval("TIMESTAMP '1970-01-01 00:00:01'", &row()).unwrap(), Value::Timestamp(1_000_000));
        assert_eq!(compile("CAST(ts AS BOOLEAN)").unwrap_err().code, ErrorCode::DatatypeMismatch);
        let case = "CASE WHEN id > 5 THEN 1 WHEN id > 2 THEN 2.5 ELSE NULL END";
        assert_eq!(eval(case, &row()).unwrap(), Value::Double(1.0));
        assert_eq!(
            eval("CASE id WHEN 7 THEN 'seven' ELSE 'other' END", &row()).unwrap(),
            Value::Text("seven".into())
        );
        assert_eq!(eval("coalesce(ok, id > 3)", &row()).unwrap(), Value::Bool(true));
        assert_eq!(eval("upper(name) || length(name)", &row()).unwrap(), Value::Text("ANN3".into()));
        assert_eq!(eval("nullif(id, 7)", &row()).unwrap(), Value::Null);
        assert_eq!(eval("abs(-x)", &row()).unwrap(), Value::Double(2.5));
    }

    #[test]
    fn nesting_is_bounded_without_exhausting_the_stack() {
        // Runs on a test thread (2 MiB stack), like a server session thread.
        let chain = |n: usize| vec!["(x + id)"; n].join(" * ");
        let ok = compile(&chain(EXPR_DEPTH_MAX / 2 - 2)).unwrap();
        assert!(ok.expr.eval(&row()).is_ok());
        let deep = compile(&chain(EXPR_DEPTH_MAX + 10)).unwrap_err();
        assert_eq!(deep.code, ErrorCode::ProgramLimitExceeded);
        let ors = vec!["id = 1"; 200].join(" OR ");
        assert_eq!(eval(&ors, &row()).unwrap(), Value::Bool(false));
    }

    #[test]
    fn statement_functions_fold_to_constants() {
        assert_eq!(compile("now()").unwrap().expr, Expr::Const(Value::Timestamp(1_000_000)));
        assert_eq!(compile("current_lsn()").unwrap().expr, Expr::Const(Value::Text("1/10".into())));
        assert_eq!(compile("last_committed_txid()").unwrap().expr, Expr::Const(Value::Int(42)));
        assert_eq!(compile("timeline()").unwrap().expr, Expr::Const(Value::Int(3)));
        let r = compile("replay_lsn()").unwrap();
        assert_eq!((r.expr, r.ty), (Expr::Const(Value::Null), Some(DataType::Text)));
        let e = compile("nosuch(1)").unwrap_err();
        assert_eq!(e.code, ErrorCode::UndefinedFunction);
        assert!(e.message.contains("nosuch"), "{}", e.message);
        assert_eq!(compile("now(1)").unwrap_err().code, ErrorCode::UndefinedFunction);
        assert_eq!(compile("count(*)").unwrap_err().code, ErrorCode::GroupingError);
        assert_eq!(compile("(SELECT 1)").unwrap_err().code, ErrorCode::FeatureNotSupported);
    }

    #[test]
    fn group_scope_maps_groups_and_aggregates() {
        let t = table();
        let scope = Scope::of(&t, None);
        let status = fake_status;
        let env = Env::new(0, &status);
        let mut agg = AggCtx::default();
        let g = Compiler::rows(&scope, &env, "GROUP BY").compile(&parse("lower(name)")).unwrap();
        agg.groups.push(g);
        let mut c = Compiler::groups(&scope, &env, &mut agg, "SELECT");
        assert_eq!(c.compile(&parse("LOWER(name)")).unwrap().expr, Expr::Column(0));
        let sum = c.compile(&parse("sum(x) + count(*)")).unwrap();
        assert_eq!(sum.ty, Some(DataType::Double));
        assert_eq!(c.compile(&parse("count(*)")).unwrap().expr, Expr::Column(2), "deduplicated");
        assert_eq!(c.compile(&parse("id")).unwrap_err().code, ErrorCode::GroupingError);
        assert_eq!(c.compile(&parse("sum(count(*))")).unwrap_err().code, ErrorCode::GroupingError);
        assert_eq!(c.compile(&parse("sum(name)")).unwrap_err().code, ErrorCode::UndefinedFunction);
        assert_eq!(c.compile(&parse("1 + 1")).unwrap().expr, Expr::Const(Value::Int(2)));
        assert_eq!(agg.aggs.len(), 2);
    }
}
