//! How the shell prints results and errors: aligned tables (like psql), CSV, JSON lines.
//!
//! Pure functions from a [`QueryResult`] or [`ServerError`] to text, so the formats are tested
//! without a server.

use std::fmt::Write as _;

use hindsight_primary::client::{QueryResult, ServerError, Value};

/// An output format for results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header and a `(n rows)` footer; command tags as they come.
    Table,
    /// RFC 4180 CSV: a header line then one line per row; command tags are not printed.
    Csv,
    /// One JSON object per statement, one per line.
    Json,
}

/// Renders one statement's result in `format`, ending with a newline (or empty: CSV prints
/// nothing for commands).
pub fn render(result: &QueryResult, format: Format) -> String {
    match format {
        Format::Table if result.has_result_set => table(result),
        Format::Table => format!("{}\n", command_line(result)),
        Format::Csv if result.has_result_set => csv(result),
        Format::Csv => String::new(),
        Format::Json => json(result),
    }
}

/// A command's tag, with the transaction it committed: `INSERT 0 1 (txid 5, lsn 0/16B3A8)`.
fn command_line(result: &QueryResult) -> String {
    let mut line = result.tag.clone();
    match (result.txid, result.lsn) {
        (Some(txid), Some(lsn)) => {
            let _ = write!(line, " (txid {txid}, lsn {lsn})");
        }
        (None, Some(lsn)) => {
            let _ = write!(line, " (lsn {lsn})");
        }
        (Some(txid), None) => {
            let _ = write!(line, " (txid {txid})");
        }
        (None, None) => {}
    }
    line
}

/// A value as a table or CSV cell: NULL is empty, control characters are escaped so one row
/// stays one line.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Text(text) if text.chars().any(char::is_control) => text
            .chars()
            .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
            .collect(),
        other => other.to_string(),
    }
}

fn table(result: &QueryResult) -> String {
    let cells: Vec<Vec<String>> = result.rows.iter().map(|row| row.iter().map(cell).collect()).collect();
    let columns = result.columns.len();
    let mut widths: Vec<usize> = result.columns.iter().map(|c| c.name.chars().count()).collect();
    for row in &cells {
        for (i, text) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(text.chars().count());
        }
    }
    let mut out = String::new();
    // Header: names centred, as psql does.
    let header: Vec<String> = result
        .columns
        .iter()
        .zip(&widths)
        .map(|(column, &width)| {
            let len = column.name.chars().count();
            let left = (width - len) / 2;
            format!("{}{}{}", " ".repeat(left), column.name, " ".repeat(width - len - left))
        })
        .collect();
    push_line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|&width| "-".repeat(width + 2)).collect();
    out.push_str(&rule.join("+"));
    out.push('\n');
    for row in &cells {
        let padded: Vec<String> = (0..columns)
            .map(|i| {
                let text = row.get(i).map(String::as_str).unwrap_or("");
                let pad = " ".repeat(widths[i] - text.chars().count());
                if result.columns[i].column_type.is_numeric() {
                    format!("{pad}{text}")
                } else {
                    format!("{text}{pad}")
                }
            })
            .collect();
        push_line(&mut out, &padded);
    }
    let count = result.rows.len();
    let _ = writeln!(out, "({count} {})", if count == 1 { "row" } else { "rows" });
    out.push('\n');
    out
}

/// ` a | b | c` with no trailing spaces.
fn push_line(out: &mut String, cells: &[String]) {
    let line: Vec<String> = cells.iter().map(|text| format!(" {text} ")).collect();
    out.push_str(line.join("|").trim_end());
    out.push('\n');
}

fn csv(result: &QueryResult) -> String {
    let mut out = String::new();
    let header: Vec<String> = result.columns.iter().map(|c| csv_field(&c.name, false)).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in &result.rows {
        let fields: Vec<String> = row
            .iter()
            .map(|value| match value {
                // NULL is an empty field, the empty string a quoted one: they stay apart.
                Value::Null => String::new(),
                Value::Text(text) => csv_field(text, true),
                other => csv_field(&other.to_string(), false),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(text: &str, quote_empty: bool) -> String {
    let needs_quotes = (quote_empty && text.is_empty())
        || text.contains([',', '"', '\n', '\r'])
        || text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace);
    if needs_quotes {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn json(result: &QueryResult) -> String {
    // Written by hand rather than through a map so the keys keep this order.
    let mut out = String::from("{");
    let _ = write!(out, "\"tag\":{}", json_string(&result.tag));
    if result.has_result_set {
        out.push_str(",\"columns\":[");
        for (i, column) in result.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"name\":{},\"type\":{}}}",
                json_string(&column.name),
                json_string(column.column_type.name())
            );
        }
        out.push_str("],\"rows\":[");
        for (i, row) in result.rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('[');
            for (j, value) in row.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&json_value(value));
            }
            out.push(']');
        }
        out.push(']');
    }
    let _ = write!(out, ",\"rows_affected\":{}", result.rows_affected);
    if let Some(txid) = result.txid {
        let _ = write!(out, ",\"txid\":{txid}");
    }
    if let Some(lsn) = result.lsn {
        let _ = write!(out, ",\"lsn\":{}", json_string(&lsn.to_string()));
    }
    out.push_str("}\n");
    out
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Numbers stay numbers (64-bit integers exactly); doubles that JSON cannot hold (NaN,
/// infinities) and timestamps (RFC 3339) are strings.
fn json_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Int(v) => v.to_string(),
        Value::Double(v) if v.is_finite() => serde_json::Value::from(*v).to_string(),
        Value::Bool(v) => v.to_string(),
        Value::Text(text) => json_string(text),
        other => json_string(&other.to_string()),
    }
}

/// A server error as the shell prints it (to stderr):
///
/// ```text
/// ERROR: message (code)
/// LINE 1: SELECT * FROM nope
///                       ^
/// HINT: hint
/// ```
///
/// `sql` is the text that was sent; the `LINE` part appears when the error has a position in it.
pub fn render_error(error: &ServerError, sql: &str) -> String {
    let mut out = format!("ERROR: {} ({})\n", error.message, error.code);
    if let Some(position) = error.position {
        let line_index = (position.line as usize).saturating_sub(1);
        if let Some(line) = sql.lines().nth(line_index) {
            let prefix = format!("LINE {}: ", position.line);
            // Tabs would move the caret; show them as spaces.
            let line = line.replace('\t', " ");
            let _ = writeln!(out, "{prefix}{line}");
            let column = (position.column as usize).saturating_sub(1).min(line.chars().count());
            let _ = writeln!(out, "{}^", " ".repeat(prefix.chars().count() + column));
        }
    }
    if let Some(hint) = &error.hint {
        let _ = writeln!(out, "HINT: {hint}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hindsight_primary::client::{Column, ColumnType, Position};
    use hindsight_protocol::{Lsn, TxId};

    fn people() -> QueryResult {
        QueryResult {
            has_result_set: true,
            columns: vec![
                Column { name: "id".into(), column_type: ColumnType::BigInt },
                Column { name: "name".into(), column_type: ColumnType::Text },
                Column { name: "balance".into(), column_type: ColumnType::Double },
            ],
            rows: vec![
                vec![Value::Int(1), Value::Text("alice".into()), Value::Double(100.5)],
                vec![Value::Int(20), Value::Null, Value::Double(-3.0)],
                vec![Value::Int(3), Value::Text("a, \"b\"".into()), Value::Null],
            ],
            tag: "SELECT 3".into(),
            rows_affected: 3,
            txid: None,
            lsn: None,
        }
    }

    #[test]
    fn tables_align_like_psql() {
        let expected = concat!(
            " id |  name  | balance\n",
            "----+--------+---------\n",
            "  1 | alice  |   100.5\n",
            " 20 |        |      -3\n",
            "  3 | a, \"b\" |\n",
            "(3 rows)\n",
            "\n",
        );
        assert_eq!(render(&people(), Format::Table), expected);
    }

    #[test]
    fn empty_and_single_row_footers() {
        let mut result = people();
        result.rows.truncate(1);
        assert!(render(&result, Format::Table).ends_with("(1 row)\n\n"));
        result.rows.clear();
        assert_eq!(
            render(&result, Format::Table),
            " id | name | balance\n----+------+---------\n(0 rows)\n\n"
        );
    }

    #[test]
    fn commands_show_their_commit() {
        let result = QueryResult {
            tag: "INSERT 0 2".into(),
            rows_affected: 2,
            txid: Some(TxId(5)),
            lsn: Some(Lsn(0x16B3A8)),
            ..QueryResult::default()
        };
        assert_eq!(render(&result, Format::Table), "INSERT 0 2 (txid 5, lsn 0/16B3A8)\n");
        assert_eq!(render(&result, Format::Csv), "");
        assert_eq!(
            render(&result, Format::Json),
            "{\"tag\":\"INSERT 0 2\",\"rows_affected\":2,\"txid\":5,\"lsn\":\"0/16B3A8\"}\n"
        );
        let plain = QueryResult { tag: "CREATE TABLE".into(), ..QueryResult::default() };
        assert_eq!(render(&plain, Format::Table), "CREATE TABLE\n");
    }

    #[test]
    fn csv_quotes_what_it_must() {
        let mut result = people();
        result.rows.push(vec![Value::Int(4), Value::Text(String::new()), Value::Double(f64::NAN)]);
        let expected = "id,name,balance\n1,alice,100.5\n20,,-3\n3,\"a, \"\"b\"\"\",\n4,\"\",NaN\n";
        assert_eq!(render(&result, Format::Csv), expected);
    }

    #[test]
    fn json_keeps_types() {
        let mut result = people();
        result.rows.truncate(2);
        result.columns.push(Column { name: "at".into(), column_type: ColumnType::Timestamp });
        result.rows[0].push(Value::Timestamp(0));
        result.rows[1].push(Value::Bool(true));
        let expected = concat!(
            r#"{"tag":"SELECT 3","columns":[{"name":"id","type":"BIGINT"},{"name":"name","type":"TEXT"},"#,
            r#"{"name":"balance","type":"DOUBLE"},{"name":"at","type":"TIMESTAMP"}],"#,
            r#""rows":[[1,"alice",100.5,"1970-01-01T00:00:00Z"],[20,null,-3.0,true]],"rows_affected":3}"#,
            "\n"
        );
        assert_eq!(render(&result, Format::Json), expected);
        let parsed: serde_json::Value = serde_json::from_str(&render(&result, Format::Json)).unwrap();
        assert_eq!(parsed["rows"][0][0], 1);
    }

    #[test]
    fn control_characters_stay_on_one_line() {
        let result = QueryResult {
            has_result_set: true,
            columns: vec![Column { name: "t".into(), column_type: ColumnType::Text }],
            rows: vec![vec![Value::Text("a\nb\tc".into())]],
            ..QueryResult::default()
        };
        assert_eq!(render(&result, Format::Table), "    t\n---------\n a\\nb\\tc\n(1 row)\n\n");
    }

    #[test]
    fn errors_point_at_their_position() {
        let error = ServerError {
            code: "syntax_error".into(),
            message: "syntax error: Expected an expression, found: FROM".into(),
            hint: Some("check the statement".into()),
            position: Some(Position { line: 2, column: 8 }),
        };
        let expected = "\
ERROR: syntax error: Expected an expression, found: FROM (syntax_error)
LINE 2: SELECT FROM t
               ^
HINT: check the statement
";
        assert_eq!(render_error(&error, "BEGIN;\nSELECT FROM t"), expected);
        let plain = ServerError { position: None, hint: None, ..error };
        assert_eq!(
            render_error(&plain, "x"),
            "ERROR: syntax error: Expected an expression, found: FROM (syntax_error)\n"
        );
    }
}
