//! The fast path for the commonest large statement: `INSERT INTO t [(cols)] VALUES (…), (…)`
//! where every value is a literal.
//!
//! `sqlparser` builds a token vector and an AST node of several hundred bytes per value, so a
//! million-row INSERT costs it about ten seconds and 2.5 GB. This hand parser recognises exactly
//! the simple form — identifiers, numbers, `'strings'`, NULL, TRUE, FALSE — and gives anything
//! else (comments, expressions, `E'…'`, ON CONFLICT, …) back to `sqlparser`, so it never changes
//! what a statement means: values are coerced by the same rules ([`coerce_to`]) as the general
//! path. It makes two passes, one to check that the whole statement fits the simple form and
//! one to insert, so it needs no memory beyond the rows it writes.

use super::compile::{coerce_to, number_literal, Typed};
use super::exec::insert_row;
use super::expr::Expr;
use super::plan::{column_label, insert_targets, lookup_table_name};
use super::transaction::Txn;
use crate::error::SqlError;
use crate::value::{DataType, Value};

/// A simple INSERT, checked to consist of literal rows only.
#[derive(Debug, PartialEq)]
pub(crate) struct BulkInsert<'a> {
    pub table: String,
    pub columns: Vec<String>,
    /// The text from the first row's `(` to the end.
    rows: &'a str,
    /// How many rows there are.
    pub row_count: usize,
}

/// A literal as written; strings stay "unknown" until coerced to their column's type.
#[derive(Debug, PartialEq)]
enum Lit {
    Number { text: String, negative: bool },
    Str(String),
    Bool(bool),
    Null,
}

struct Scanner<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.pos;
        if !self.peek().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') {
            return None;
        }
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            self.pos += 1;
        }
        Some(&self.text[start..self.pos])
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let save = self.pos;
        match self.word() {
            Some(w) if w.eq_ignore_ascii_case(kw) => true,
            _ => {
                self.pos = save;
                false
            }
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                let rest = &self.text[self.pos..];
                let q = rest.find('"')?;
                out.push_str(&rest[..q]);
                self.pos += q + 1;
                if self.peek() == Some(b'"') {
                    out.push('"');
                    self.pos += 1;
                } else {
                    break;
                }
            }
            return (!out.is_empty()).then_some(out);
        }
        self.word().map(str::to_lowercase)
    }

    /// A literal; `keep` false only checks it. `None` means "not the simple form".
    fn literal(&mut self, keep: bool) -> Option<Lit> {
        self.ws();
        match self.peek()? {
            b'\'' => {
                self.pos += 1;
                let mut out = String::new();
                loop {
                    let rest = &self.text[self.pos..];
                    let q = rest.find('\'')?;
                    if keep {
                        out.push_str(&rest[..q]);
                    }
                    self.pos += q + 1;
                    if self.peek() == Some(b'\'') {
                        if keep {
                            out.push('\'');
                        }
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Some(Lit::Str(out))
            }
            b'-' | b'+' | b'0'..=b'9' | b'.' => {
                let negative = self.peek() == Some(b'-');
                if matches!(self.peek(), Some(b'-' | b'+')) {
                    self.pos += 1;
                }
                let start = self.pos;
                let digits = |sc: &mut Scanner<'_>| {
                    let from = sc.pos;
                    while sc.peek().is_some_and(|b| b.is_ascii_digit()) {
                        sc.pos += 1;
                    }
                    sc.pos - from
                };
                let mut n = digits(self);
                if self.peek() == Some(b'.') {
                    self.pos += 1;
                    n += digits(self);
                }
                if n == 0 {
                    return None;
                }
                if matches!(self.peek(), Some(b'e' | b'E')) {
                    self.pos += 1;
                    if matches!(self.peek(), Some(b'-' | b'+')) {
                        self.pos += 1;
                    }
                    if digits(self) == 0 {
                        return None;
                    }
                }
                Some(Lit::Number {
                    text: if keep { self.text[start..self.pos].to_string() } else { String::new() },
                    negative,
                })
            }
            _ => {
                let w = self.word()?;
                if w.eq_ignore_ascii_case("null") {
                    Some(Lit::Null)
                } else if w.eq_ignore_ascii_case("true") {
                    Some(Lit::Bool(true))
                } else if w.eq_ignore_ascii_case("false") {
                    Some(Lit::Bool(false))
                } else {
                    None
                }
            }
        }
    }

    /// One `(lit, …)` row; returns its width.
    fn row(&mut self, mut out: Option<&mut Vec<Lit>>) -> Option<usize> {
        if !self.eat(b'(') {
            return None;
        }
        let mut n = 0;
        loop {
            let lit = self.literal(out.is_some())?;
            if let Some(out) = out.as_deref_mut() {
                out.push(lit);
            }
            n += 1;
            // Only a delimiter may follow a literal (`1x`, `'a' 'b'` go to the full parser).
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b')' => {
                    self.pos += 1;
                    return Some(n);
                }
                _ => return None,
            }
        }
    }
}

/// Recognises a simple literal INSERT; `None` hands the statement to the full parser.
pub(crate) fn parse(text: &str) -> Option<BulkInsert<'_>> {
    let mut sc = Scanner { s: text.as_bytes(), text, pos: 0 };
    if !(sc.keyword("INSERT") && sc.keyword("INTO")) {
        return None;
    }
    let table = sc.ident()?;
    let mut columns = Vec::new();
    if sc.eat(b'(') {
        loop {
            columns.push(sc.ident()?);
            if sc.eat(b')') {
                break;
            }
            if !sc.eat(b',') {
                return None;
            }
        }
    }
    if !sc.keyword("VALUES") {
        return None;
    }
    sc.ws();
    let rows_start = sc.pos;
    let mut row_count = 0;
    loop {
        sc.row(None)?;
        row_count += 1;
        if !sc.eat(b',') {
            break;
        }
    }
    sc.ws();
    if sc.pos != text.len() {
        return None;
    }
    Some(BulkInsert { table, columns, rows: &text[rows_start..], row_count })
}

fn typed(lit: Lit) -> Result<Typed, SqlError> {
    Ok(match lit {
        Lit::Number { text, negative } => {
            let v = number_literal(&text, negative)?;
            let ty = v.data_type();
            Typed { expr: Expr::Const(v), ty, unknown: false }
        }
        Lit::Str(s) => Typed { expr: Expr::Const(Value::Text(s)), ty: Some(DataType::Text), unknown: true },
        Lit::Bool(b) => {
            Typed { expr: Expr::Const(Value::Bool(b)), ty: Some(DataType::Boolean), unknown: false }
        }
        Lit::Null => Typed { expr: Expr::Const(Value::Null), ty: None, unknown: false },
    })
}

/// Inserts the rows; returns how many.
pub(crate) fn execute(txn: &mut Txn, ins: &BulkInsert<'_>) -> Result<u64, SqlError> {
    let def = lookup_table_name(txn.catalog(), &ins.table)?;
    let targets = insert_targets(&def, &ins.columns)?;
    let mut sc = Scanner { s: ins.rows.as_bytes(), text: ins.rows, pos: 0 };
    let mut lits = Vec::with_capacity(targets.len());
    let mut buf = Vec::new();
    for i in 0..ins.row_count {
        if i > 0 && !sc.eat(b',') {
            return Err(SqlError::new(
                crate::error::ErrorCode::InternalError,
                "bulk insert rows changed under us",
            ));
        }
        lits.clear();
        sc.row(Some(&mut lits));
        if lits.len() != targets.len() {
            let more = if lits.len() > targets.len() {
                "more expressions than target columns"
            } else {
                "more target columns than expressions"
            };
            return Err(SqlError::new(crate::error::ErrorCode::SyntaxError, format!("INSERT has {more}")));
        }
        let mut values = vec![Value::Null; def.columns.len()];
        for (lit, &t) in lits.drain(..).zip(&targets) {
            let e = coerce_to(typed(lit)?, def.types[t], &|| column_label(&def, t))?;
            values[t] = match e {
                Expr::Const(v) => v,
                other => other.eval(&[])?.into_owned(),
            };
        }
        insert_row(txn, &def, values, &mut buf)?;
    }
    Ok(ins.row_count as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_simple_form() {
        let b = parse("insert into T (A, \"B\") values (1, 'x''y'), (-2.5e3, NULL),(true,FALSE)").unwrap();
        assert_eq!(
            (b.table.as_str(), b.columns.clone(), b.row_count),
            ("t", vec!["a".to_string(), "B".to_string()], 3)
        );
        assert_eq!(parse("INSERT INTO t VALUES (1)\n").unwrap().row_count, 1);
        for sql in [
            "INSERT INTO t VALUES (1 + 1)",
            "INSERT INTO t VALUES (now())",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "INSERT INTO t VALUES (1), ",
            "INSERT INTO t VALUES (E'x')",
            "INSERT INTO t VALUES ('a' 'b')",
            "INSERT INTO t VALUES (1) -- comment",
            "INSERT INTO s.t VALUES (1)",
            "INSERT INTO t SELECT 1",
            "INSERT INTO t VALUES (- 1)",
            "INSERT INTO t VALUES (1x)",
            "INSERT INTO t VALUES ('unterminated)",
            "INSERT INTO t VALUES ()",
            "INSERT INTO t () VALUES (1)",
            "INSERT t VALUES (1)",
            "INSERT INTO t DEFAULT VALUES",
            "INSERT INTO t VALUES (.)",
            "INSERT INTO t VALUES (1e)",
        ] {
            assert!(parse(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn literals_scan_as_the_sql_parser_reads_them() {
        let mut sc =
            Scanner { s: b"(007, -9223372036854775808, '', 'it''s', 1.5, .5, 5., 1E+2)", text: "", pos: 0 };
        sc.text = std::str::from_utf8(sc.s).unwrap();
        let mut lits = Vec::new();
        assert_eq!(sc.row(Some(&mut lits)), Some(8));
        let values: Vec<Value> = lits
            .into_iter()
            .map(|l| match typed(l).unwrap().expr {
                Expr::Const(v) => v,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            values,
            vec![
                Value::Int(7),
                Value::Int(i64::MIN),
                Value::Text(String::new()),
                Value::Text("it's".into()),
                Value::Double(1.5),
                Value::Double(0.5),
                Value::Double(5.0),
                Value::Double(100.0)
            ]
        );
    }
}
