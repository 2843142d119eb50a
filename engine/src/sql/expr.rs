//! Typed expressions over one input row, and their evaluation with SQL's three-valued logic.
//!
//! [`compile`](super::compile) turns `sqlparser` expressions into [`Expr`]s with every column
//! resolved to an index and every type checked, so evaluation only moves values. Evaluation
//! borrows where it can (`Cow`), because the hot statements (`WHERE id = 42`,
//! `SET balance = balance + 1`) should not copy strings to compare them.

use crate::error::{ErrorCode, SqlError};
use crate::value::{format_timestamp, parse_timestamp, DataType, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    /// The operator with its operands swapped: `a < b` is `b > a`.
    pub fn flip(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::NotEq => CmpOp::NotEq,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::LtEq => CmpOp::GtEq,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::GtEq => CmpOp::LtEq,
        }
    }

    /// Whether the comparison holds for operands ordered `ord`.
    pub fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::NotEq => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::LtEq => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::GtEq => ord != Ordering::Less,
        }
    }
}

/// An arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

/// A scalar function evaluated per row. Functions whose value is fixed for a statement
/// (`now()`, `current_lsn()`, …) are folded to constants when compiled instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Lower,
    Upper,
    Length,
    Abs,
    Coalesce,
    NullIf,
}

/// A compiled expression. Column indexes refer to the input row the expression is evaluated on
/// (a table row, or a group row of group values followed by aggregate results).
///
/// Invariants:
/// - Every operand combination was type-checked when compiled; evaluation still returns an
///   error rather than panicking if that check was wrong.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Const(Value),
    Column(usize),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Concat(Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `IS [NOT] TRUE` / `IS [NOT] FALSE`: never NULL.
    IsBool {
        expr: Box<Expr>,
        value: bool,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        negated: bool,
        case_insensitive: bool,
    },
    Cast(Box<Expr>, DataType),
    Func(Func, Vec<Expr>),
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
}

pub(crate) fn mismatch(message: impl Into<String>) -> SqlError {
    SqlError::new(ErrorCode::DatatypeMismatch, message)
}

pub(crate) fn out_of_range(message: impl Into<String>) -> SqlError {
    SqlError::new(ErrorCode::NumericValueOutOfRange, message)
}

pub(crate) fn division_by_zero() -> SqlError {
    SqlError::new(ErrorCode::NumericValueOutOfRange, "division by zero")
}

/// The type name of a value for messages (`NULL` for NULL).
pub(crate) fn type_name(v: &Value) -> &'static str {
    v.data_type().map_or("NULL", DataType::name)
}

fn truth(v: &Value) -> Result<Option<bool>, SqlError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => {
            Err(mismatch(format!("argument of a logical operator must be BOOLEAN, not {}", type_name(other))))
        }
    }
}

fn from_truth(t: Option<bool>) -> Value {
    t.map_or(Value::Null, Value::Bool)
}

impl Expr {
    /// Evaluates the expression on `row`.
    ///
    /// Each operator is evaluated in its own function so that this recursive function's frame
    /// stays small (expressions may nest [`EXPR_DEPTH_MAX`](super::EXPR_DEPTH_MAX) deep on a
    /// 2 MiB thread stack, in debug builds too).
    pub fn eval<'a>(&'a self, row: &'a [Value]) -> Result<Cow<'a, Value>, SqlError> {
        match self {
            Expr::Const(v) => Ok(Cow::Borrowed(v)),
            Expr::Column(i) => match row.get(*i) {
                Some(v) => Ok(Cow::Borrowed(v)),
                None => Err(SqlError::new(ErrorCode::InternalError, "column index out of range")),
            },
            Expr::Cmp(op, a, b) => eval_cmp(*op, a, b, row).map(Cow::Owned),
            Expr::Arith(op, a, b) => eval_arith(*op, a, b, row).map(Cow::Owned),
            Expr::And(a, b) => eval_and(a, b, row).map(Cow::Owned),
            Expr::Or(a, b) => eval_or(a, b, row).map(Cow::Owned),
            Expr::Case { operand, whens, otherwise } => {
                eval_case(operand.as_deref(), whens, otherwise.as_deref(), row)
            }
            other => other.eval_other(row).map(Cow::Owned),
        }
    }

    #[inline(never)]
    fn eval_other(&self, row: &[Value]) -> Result<Value, SqlError> {
        Ok(match self {
            Expr::Const(_)
            | Expr::Column(_)
            | Expr::Cmp(..)
            | Expr::Arith(..)
            | Expr::And(..)
            | Expr::Or(..)
            | Expr::Case { .. } => self.eval(row)?.into_owned(),
            Expr::Not(e) => from_truth(truth(&*e.eval(row)?)?.map(|b| !b)),
            Expr::Neg(e) => negate(&*e.eval(row)?)?,
            Expr::Concat(a, b) => {
                let (l, r) = (a.eval(row)?, b.eval(row)?);
                match (&*l, &*r) {
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    (l, r) => Value::Text(format!("{}{}", text_of(l), text_of(r))),
                }
            }
            Expr::IsNull { expr, negated } => {
                Value::Bool(matches!(*expr.eval(row)?, Value::Null) != *negated)
            }
            Expr::IsBool { expr, value, negated } => {
                let t = truth(&*expr.eval(row)?)?;
                Value::Bool((t == Some(*value)) != *negated)
            }
            Expr::InList { expr, list, negated } => {
                let v = expr.eval(row)?;
                if matches!(*v, Value::Null) {
                    return Ok(Value::Null);
                }
                let mut saw_null = false;
                for item in list {
                    match compare(&v, &*item.eval(row)?)? {
                        Some(Ordering::Equal) => return Ok(Value::Bool(!negated)),
                        Some(_) => {}
                        None => saw_null = true,
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                }
            }
            Expr::Between { expr, low, high, negated } => {
                let v = expr.eval(row)?;
                let lo = compare(&v, &*low.eval(row)?)?.map(|o| o != Ordering::Less);
                let hi = compare(&v, &*high.eval(row)?)?.map(|o| o != Ordering::Greater);
                let within = match (lo, hi) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                from_truth(within.map(|w| w != *negated))
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => {
                let (v, p) = (expr.eval(row)?, pattern.eval(row)?);
                match (&*v, &*p) {
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    (Value::Text(s), Value::Text(p)) => {
                        let m = if *case_insensitive {
                            like(&s.to_lowercase(), &p.to_lowercase())
                        } else {
                            like(s, p)
                        };
                        Value::Bool(m != *negated)
                    }
                    (a, b) => {
                        return Err(mismatch(format!(
                            "LIKE needs TEXT operands, not {} and {}",
                            type_name(a),
                            type_name(b)
                        )))
                    }
                }
            }
            Expr::Cast(e, to) => cast(e.eval(row)?.into_owned(), *to)?,
            Expr::Func(f, args) => call(*f, args, row)?,
        })
    }

    /// Evaluates a WHERE / HAVING condition: only TRUE passes (NULL does not).
    pub fn matches(&self, row: &[Value]) -> Result<bool, SqlError> {
        Ok(truth(&*self.eval(row)?)? == Some(true))
    }

    /// Whether the expression reads no column (its value is the same for every row).
    pub fn is_constant(&self) -> bool {
        let mut constant = true;
        self.visit(&mut |e| {
            if matches!(e, Expr::Column(_)) {
                constant = false;
            }
        });
        constant
    }

    /// Calls `f` on this expression and every subexpression.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Const(_) | Expr::Column(_) => {}
            Expr::Not(e) | Expr::Neg(e) | Expr::Cast(e, _) => e.visit(f),
            Expr::IsNull { expr, .. } | Expr::IsBool { expr, .. } => expr.visit(f),
            Expr::And(a, b)
            | Expr::Or(a, b)
            | Expr::Cmp(_, a, b)
            | Expr::Arith(_, a, b)
            | Expr::Concat(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::InList { expr, list, .. } => {
                expr.visit(f);
                list.iter().for_each(|e| e.visit(f));
            }
            Expr::Between { expr, low, high, .. } => {
                expr.visit(f);
                low.visit(f);
                high.visit(f);
            }
            Expr::Like { expr, pattern, .. } => {
                expr.visit(f);
                pattern.visit(f);
            }
            Expr::Func(_, args) => args.iter().for_each(|e| e.visit(f)),
            Expr::Case { operand, whens, otherwise } => {
                if let Some(o) = operand {
                    o.visit(f);
                }
                for (w, t) in whens {
                    w.visit(f);
                    t.visit(f);
                }
                if let Some(o) = otherwise {
                    o.visit(f);
                }
            }
        }
    }
}

#[inline(never)]
fn eval_cmp(op: CmpOp, a: &Expr, b: &Expr, row: &[Value]) -> Result<Value, SqlError> {
    let (l, r) = (a.eval(row)?, b.eval(row)?);
    Ok(from_truth(compare(&l, &r)?.map(|o| op.holds(o))))
}

#[inline(never)]
fn eval_arith(op: ArithOp, a: &Expr, b: &Expr, row: &[Value]) -> Result<Value, SqlError> {
    arith(op, &*a.eval(row)?, &*b.eval(row)?)
}

#[inline(never)]
fn eval_and(a: &Expr, b: &Expr, row: &[Value]) -> Result<Value, SqlError> {
    let l = truth(&*a.eval(row)?)?;
    if l == Some(false) {
        return Ok(Value::Bool(false));
    }
    let r = truth(&*b.eval(row)?)?;
    Ok(from_truth(match (l, r) {
        (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }))
}

#[inline(never)]
fn eval_or(a: &Expr, b: &Expr, row: &[Value]) -> Result<Value, SqlError> {
    let l = truth(&*a.eval(row)?)?;
    if l == Some(true) {
        return Ok(Value::Bool(true));
    }
    let r = truth(&*b.eval(row)?)?;
    Ok(from_truth(match (l, r) {
        (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }))
}

#[inline(never)]
fn eval_case<'a>(
    operand: Option<&'a Expr>,
    whens: &'a [(Expr, Expr)],
    otherwise: Option<&'a Expr>,
    row: &'a [Value],
) -> Result<Cow<'a, Value>, SqlError> {
    let subject = match operand {
        Some(o) => Some(o.eval(row)?),
        None => None,
    };
    for (when, then) in whens {
        let w = when.eval(row)?;
        let hit = match &subject {
            Some(s) => compare(s, &w)? == Some(Ordering::Equal),
            None => truth(&w)? == Some(true),
        };
        if hit {
            return then.eval(row);
        }
    }
    match otherwise {
        Some(e) => e.eval(row),
        None => Ok(Cow::Owned(Value::Null)),
    }
}

/// The text form of a non-NULL value, as `||` and casts to TEXT use it.
pub(crate) fn text_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::Text(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// Compares two doubles with PostgreSQL's order: NaN equals NaN and is above every number;
/// -0 equals 0.
pub(crate) fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// SQL comparison: `None` when either side is NULL; an error for incomparable types.
pub(crate) fn compare(a: &Value, b: &Value) -> Result<Option<Ordering>, SqlError> {
    use Value::*;
    Ok(Some(match (a, b) {
        (Null, _) | (_, Null) => return Ok(None),
        (Int(x), Int(y)) | (Timestamp(x), Timestamp(y)) => x.cmp(y),
        (Int(x), Double(y)) => cmp_f64(*x as f64, *y),
        (Double(x), Int(y)) => cmp_f64(*x, *y as f64),
        (Double(x), Double(y)) => cmp_f64(*x, *y),
        (Text(x), Text(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        (x, y) => return Err(mismatch(format!("cannot compare {} with {}", type_name(x), type_name(y)))),
    }))
}

/// The ORDER BY order of two values of one column: NULL sorts after every value (as in
/// PostgreSQL's default `NULLS LAST` for ascending order).
pub(crate) fn sort_compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        _ => match compare(a, b) {
            Ok(Some(o)) => o,
            _ => a.sort_cmp(b),
        },
    }
}

fn negate(v: &Value) -> Result<Value, SqlError> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Int(x) => x.checked_neg().map(Value::Int).ok_or_else(|| out_of_range("bigint out of range")),
        Value::Double(x) => Ok(Value::Double(-x)),
        other => Err(mismatch(format!("cannot negate a {} value", type_name(other)))),
    }
}

fn checked_f64(op: ArithOp, x: f64, y: f64) -> Result<Value, SqlError> {
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div | ArithOp::Rem if y == 0.0 => return Err(division_by_zero()),
        ArithOp::Div => x / y,
        ArithOp::Rem => x % y,
    };
    if r.is_infinite() && x.is_finite() && y.is_finite() {
        return Err(out_of_range("value out of range: overflow"));
    }
    Ok(Value::Double(r))
}

/// Applies an arithmetic operator: checked for BIGINT (overflow is an error, never a wrap),
/// IEEE for DOUBLE with overflow to infinity reported as an error, NULL if either side is NULL.
pub(crate) fn arith(op: ArithOp, a: &Value, b: &Value) -> Result<Value, SqlError> {
    use Value::*;
    match (a, b) {
        (Null, _) | (_, Null) => Ok(Null),
        (Int(x), Int(y)) => {
            let r = match op {
                ArithOp::Add => x.checked_add(*y),
                ArithOp::Sub => x.checked_sub(*y),
                ArithOp::Mul => x.checked_mul(*y),
                ArithOp::Div | ArithOp::Rem if *y == 0 => return Err(division_by_zero()),
                ArithOp::Div => x.checked_div(*y),
                // i64::MIN % -1 is mathematically 0; only the machine instruction overflows.
                ArithOp::Rem => Some(x.wrapping_rem(*y)),
            };
            r.map(Int).ok_or_else(|| out_of_range("bigint out of range"))
        }
        (Int(x), Double(y)) => checked_f64(op, *x as f64, *y),
        (Double(x), Int(y)) => checked_f64(op, *x, *y as f64),
        (Double(x), Double(y)) => checked_f64(op, *x, *y),
        (x, y) => Err(mismatch(format!(
            "operator does not exist: {} {} {}",
            type_name(x),
            op.symbol(),
            type_name(y)
        ))),
    }
}

fn invalid_input(to: DataType, text: &str) -> SqlError {
    SqlError::new(ErrorCode::InvalidParameterValue, format!("invalid input syntax for type {to}: \"{text}\""))
}

/// Converts a value to another type (`CAST`, `::`), as PostgreSQL does for these types.
pub(crate) fn cast(v: Value, to: DataType) -> Result<Value, SqlError> {
    use DataType as T;
    Ok(match (v, to) {
        (Value::Null, _) => Value::Null,
        (v, to) if v.data_type() == Some(to) => v,
        (Value::Int(x), T::Double) => Value::Double(x as f64),
        (Value::Double(x), T::BigInt) => {
            let r = x.round_ties_even();
            // i64::MAX as f64 rounds up to 2^63, which does not fit; the check is exclusive.
            if !r.is_finite() || r < i64::MIN as f64 || r >= i64::MAX as f64 {
                return Err(out_of_range("bigint out of range"));
            }
            Value::Int(r as i64)
        }
        (Value::Int(x), T::Boolean) => Value::Bool(x != 0),
        (Value::Bool(b), T::BigInt) => Value::Int(i64::from(b)),
        (Value::Text(s), T::BigInt) => Value::Int(s.trim().parse().map_err(|_| invalid_input(to, &s))?),
        (Value::Text(s), T::Double) => Value::Double(s.trim().parse().map_err(|_| invalid_input(to, &s))?),
        (Value::Text(s), T::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => Value::Bool(true),
            "f" | "false" | "n" | "no" | "off" | "0" => Value::Bool(false),
            _ => return Err(invalid_input(to, &s)),
        },
        (Value::Text(s), T::Timestamp) => {
            Value::Timestamp(parse_timestamp(&s).ok_or_else(|| invalid_input(to, &s))?)
        }
        (Value::Timestamp(t), T::Text) => Value::Text(format_timestamp(t)),
        (v, T::Text) => Value::Text(v.to_string()),
        (v, to) => return Err(mismatch(format!("cannot cast {} to {to}", type_name(&v)))),
    })
}

/// Whether `cast` can ever succeed from `from` to `to` (checked when compiling).
pub(crate) fn castable(from: DataType, to: DataType) -> bool {
    use DataType as T;
    from == to
        || to == T::Text
        || from == T::Text
        || matches!(
            (from, to),
            (T::BigInt, T::Double | T::Boolean) | (T::Double, T::BigInt) | (T::Boolean, T::BigInt)
        )
}

fn call(f: Func, args: &[Expr], row: &[Value]) -> Result<Value, SqlError> {
    let arg = |i: usize| -> Result<Cow<'_, Value>, SqlError> {
        args.get(i)
            .ok_or_else(|| SqlError::new(ErrorCode::InternalError, "function argument missing"))?
            .eval(row)
    };
    Ok(match f {
        Func::Lower | Func::Upper | Func::Length => match &*arg(0)? {
            Value::Null => Value::Null,
            Value::Text(s) => match f {
                Func::Lower => Value::Text(s.to_lowercase()),
                Func::Upper => Value::Text(s.to_uppercase()),
                _ => Value::Int(s.chars().count() as i64),
            },
            other => {
                return Err(mismatch(format!("function argument must be TEXT, not {}", type_name(other))))
            }
        },
        Func::Abs => match &*arg(0)? {
            Value::Null => Value::Null,
            Value::Int(x) => {
                x.checked_abs().map(Value::Int).ok_or_else(|| out_of_range("bigint out of range"))?
            }
            Value::Double(x) => Value::Double(x.abs()),
            other => return Err(mismatch(format!("abs() needs a number, not {}", type_name(other)))),
        },
        Func::Coalesce => {
            for e in args {
                let v = e.eval(row)?;
                if !matches!(*v, Value::Null) {
                    return Ok(v.into_owned());
                }
            }
            Value::Null
        }
        Func::NullIf => {
            let a = arg(0)?;
            if compare(&a, &*arg(1)?)? == Some(Ordering::Equal) {
                Value::Null
            } else {
                a.into_owned()
            }
        }
    })
}

/// SQL LIKE: `%` matches any run of characters, `_` one character, `\` escapes the next one.
/// Greedy matching with backtracking to the last `%`, so linear in practice and
/// O(len(text) × len(pattern)) at worst.
pub(crate) fn like(text: &str, pattern: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Lit(char),
    }
    let mut pat = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pat.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => P::Lit(chars.next().unwrap_or('\\')),
            c => P::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(P::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(P::One) => {
                t += 1;
                p += 1;
            }
            Some(P::Lit(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == P::Any)
}

/// Appends a byte encoding of `v` under which two values are equal exactly when SQL's GROUP BY
/// and DISTINCT treat them as the same (NULLs together, -0 with 0, all NaNs together).
pub(crate) fn encode_group_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Int(x) => {
            out.push(1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Double(x) => {
            out.push(2);
            let x = if x.is_nan() {
                f64::NAN
            } else if *x == 0.0 {
                0.0
            } else {
                *x
            };
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Text(s) => {
            out.push(3);
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => out.extend_from_slice(&[4, u8::from(*b)]),
        Value::Timestamp(x) => {
            out.push(5);
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: Value) -> Box<Expr> {
        Box::new(Expr::Const(v))
    }

    fn eval(e: &Expr) -> Result<Value, SqlError> {
        e.eval(&[]).map(Cow::into_owned)
    }

    #[test]
    fn three_valued_logic() {
        let (t, f, n) = (Value::Bool(true), Value::Bool(false), Value::Null);
        let and = |a: &Value, b: &Value| eval(&Expr::And(c(a.clone()), c(b.clone()))).unwrap();
        let or = |a: &Value, b: &Value| eval(&Expr::Or(c(a.clone()), c(b.clone()))).unwrap();
        assert_eq!(and(&t, &n), n);
        assert_eq!(and(&n, &f), f);
        assert_eq!(and(&f, &n), f);
        assert_eq!(and(&t, &t), t);
        assert_eq!(or(&n, &t), t);
        assert_eq!(or(&f, &n), n);
        assert_eq!(or(&f, &f), f);
        assert_eq!(eval(&Expr::Not(c(n.clone()))).unwrap(), n);
        let cmp = Expr::Cmp(CmpOp::Eq, c(Value::Int(1)), c(Value::Null));
        assert_eq!(eval(&cmp).unwrap(), Value::Null);
        assert!(!cmp.matches(&[]).unwrap(), "NULL does not pass a WHERE");
    }

    #[test]
    fn in_list_and_between_follow_sql() {
        let list = |negated, items: Vec<Value>| Expr::InList {
            expr: c(Value::Int(2)),
            list: items.into_iter().map(Expr::Const).collect(),
            negated,
        };
        assert_eq!(eval(&list(false, vec![Value::Int(1), Value::Int(2)])).unwrap(), Value::Bool(true));
        assert_eq!(eval(&list(false, vec![Value::Int(1), Value::Null])).unwrap(), Value::Null);
        assert_eq!(eval(&list(true, vec![Value::Int(1), Value::Null])).unwrap(), Value::Null);
        assert_eq!(eval(&list(true, vec![Value::Int(1)])).unwrap(), Value::Bool(true));
        assert_eq!(eval(&list(false, vec![Value::Double(2.0)])).unwrap(), Value::Bool(true));
        let between =
            |lo, hi, negated| Expr::Between { expr: c(Value::Int(5)), low: c(lo), high: c(hi), negated };
        assert_eq!(eval(&between(Value::Int(5), Value::Int(9), false)).unwrap(), Value::Bool(true));
        assert_eq!(eval(&between(Value::Int(6), Value::Null, false)).unwrap(), Value::Bool(false));
        assert_eq!(eval(&between(Value::Int(1), Value::Null, false)).unwrap(), Value::Null);
        assert_eq!(eval(&between(Value::Int(1), Value::Int(4), true)).unwrap(), Value::Bool(true));
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = |op, x, y| arith(op, &x, &y);
        assert_eq!(a(ArithOp::Add, Value::Int(2), Value::Int(3)).unwrap(), Value::Int(5));
        assert_eq!(a(ArithOp::Div, Value::Int(7), Value::Int(2)).unwrap(), Value::Int(3));
        assert_eq!(a(ArithOp::Rem, Value::Int(-7), Value::Int(2)).unwrap(), Value::Int(-1));
        assert_eq!(a(ArithOp::Rem, Value::Int(i64::MIN), Value::Int(-1)).unwrap(), Value::Int(0));
        assert_eq!(a(ArithOp::Mul, Value::Int(2), Value::Double(1.5)).unwrap(), Value::Double(3.0));
        assert_eq!(a(ArithOp::Add, Value::Null, Value::Int(1)).unwrap(), Value::Null);
        for (op, x, y) in [
            (ArithOp::Add, i64::MAX, 1),
            (ArithOp::Sub, i64::MIN, 1),
            (ArithOp::Mul, i64::MAX, 2),
            (ArithOp::Div, i64::MIN, -1),
        ] {
            let e = a(op, Value::Int(x), Value::Int(y)).unwrap_err();
            assert_eq!(e.code, ErrorCode::NumericValueOutOfRange, "{op:?}");
        }
        let e = a(ArithOp::Div, Value::Int(1), Value::Int(0)).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::NumericValueOutOfRange, "division by zero"));
        assert_eq!(
            a(ArithOp::Div, Value::Double(1.0), Value::Double(0.0)).unwrap_err().message,
            "division by zero"
        );
        assert!(a(ArithOp::Mul, Value::Double(1e308), Value::Double(10.0)).is_err());
        assert_eq!(
            a(ArithOp::Add, Value::Text("a".into()), Value::Int(1)).unwrap_err().code,
            ErrorCode::DatatypeMismatch
        );
        assert_eq!(negate(&Value::Int(i64::MIN)).unwrap_err().code, ErrorCode::NumericValueOutOfRange);
    }

    #[test]
    fn comparisons_and_sorting() {
        assert_eq!(compare(&Value::Int(1), &Value::Double(1.5)).unwrap(), Some(Ordering::Less));
        assert_eq!(
            compare(&Value::Double(f64::NAN), &Value::Double(f64::INFINITY)).unwrap(),
            Some(Ordering::Greater)
        );
        assert_eq!(compare(&Value::Double(-0.0), &Value::Double(0.0)).unwrap(), Some(Ordering::Equal));
        assert!(compare(&Value::Int(1), &Value::Text("1".into())).is_err());
        assert_eq!(sort_compare(&Value::Null, &Value::Int(1)), Ordering::Greater);
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello", "h%o"));
        assert!(like("hello", "%"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("hello", "_ello"));
        assert!(!like("hello", "hell"));
        assert!(like("50%", "50\\%"));
        assert!(!like("500", "50\\%"));
        assert!(like("abcabcabd", "%abd"));
        assert!(like("a%b", "a%%b"));
        assert!(like("日本語", "日_語"));
    }

    #[test]
    fn casts() {
        assert_eq!(cast(Value::Double(2.5), DataType::BigInt).unwrap(), Value::Int(2));
        assert_eq!(cast(Value::Double(3.5), DataType::BigInt).unwrap(), Value::Int(4));
        assert!(cast(Value::Double(1e19), DataType::BigInt).is_err());
        assert!(cast(Value::Double(f64::NAN), DataType::BigInt).is_err());
        assert_eq!(cast(Value::Text(" 42 ".into()), DataType::BigInt).unwrap(), Value::Int(42));
        assert_eq!(
            cast(Value::Text("x".into()), DataType::BigInt).unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(cast(Value::Text("yes".into()), DataType::Boolean).unwrap(), Value::Bool(true));
        assert_eq!(
            cast(Value::Timestamp(0), DataType::Text).unwrap(),
            Value::Text("1970-01-01T00:00:00Z".into())
        );
        assert_eq!(cast(Value::Text("1970-01-01".into()), DataType::Timestamp).unwrap(), Value::Timestamp(0));
        assert!(cast(Value::Timestamp(0), DataType::Boolean).is_err());
    }

    #[test]
    fn group_encoding_identifies_sql_equal_values() {
        let enc = |v: Value| {
            let mut out = Vec::new();
            encode_group_value(&v, &mut out);
            out
        };
        assert_eq!(enc(Value::Double(-0.0)), enc(Value::Double(0.0)));
        assert_eq!(enc(Value::Double(f64::NAN)), enc(Value::Double(-f64::NAN)));
        assert_ne!(enc(Value::Int(1)), enc(Value::Timestamp(1)));
        assert_ne!(enc(Value::Text("a".into())), enc(Value::Null));
    }
}
