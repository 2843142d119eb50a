//! Splitting SQL text into statements at top-level semicolons.
//!
//! Statements are split before parsing so that administration commands (which `sqlparser` does
//! not know) can be hand-parsed, and so that each statement is parsed only when it runs. The
//! splitter understands just enough lexical structure to not split inside a literal or comment:
//! `'…'` strings (with `''`), `E'…'` strings (with backslash escapes), `"…"` identifiers,
//! `$tag$…$tag$` strings, `--` line comments and nested `/* … */` comments. An unterminated
//! literal or comment runs to the end of the text, where the parser reports it.

use crate::error::Position;

/// One statement's text and where it starts in the whole input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece<'a> {
    /// The statement, without the terminating `;` and leading whitespace.
    pub text: &'a str,
    /// 1-based line of the first byte of `text` in the whole input.
    pub line: u32,
    /// 1-based column (in characters) of the first byte of `text`.
    pub column: u32,
}

impl Piece<'_> {
    /// Maps a position relative to this piece (as the parser reports it) to the whole input.
    pub fn translate(&self, p: Position) -> Position {
        if p.line <= 1 {
            Position { line: self.line, column: self.column.saturating_add(p.column.saturating_sub(1)) }
        } else {
            Position { line: self.line.saturating_add(p.line - 1), column: p.column }
        }
    }
}

/// Moves from `from` to `end` (clamped to the text), counting the newlines passed.
fn advance(bytes: &[u8], from: usize, end: usize, line: &mut u32, line_start: &mut usize) -> usize {
    let end = end.min(bytes.len());
    for (k, &c) in bytes[from..end].iter().enumerate() {
        if c == b'\n' {
            *line = line.saturating_add(1);
            *line_start = from + k + 1;
        }
    }
    end
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Splits `sql` into statements; pieces holding only whitespace and comments are dropped.
/// Linear in the length of the text.
pub(crate) fn split_statements(sql: &str) -> Vec<Piece<'_>> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut line: u32 = 1;
    let mut line_start = 0usize;
    // Start of the current piece, and its position, fixed at the first non-whitespace byte.
    let mut start: Option<(usize, u32, u32)> = None;
    // Whether the current piece has anything besides comments.
    let mut significant = false;
    let mut i = 0usize;

    let column_of = |line_start: usize, at: usize| -> u32 {
        let chars = sql.get(line_start..at).map_or(at - line_start, |s| s.chars().count());
        u32::try_from(chars + 1).unwrap_or(u32::MAX)
    };

    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line = line.saturating_add(1);
            line_start = i + 1;
            i += 1;
            continue;
        }
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if start.is_none() {
            start = Some((i, line, column_of(line_start, i)));
        }
        match b {
            b';' => {
                if let Some((s, l, c)) = start.take() {
                    if significant {
                        pieces.push(Piece { text: sql[s..i].trim_end(), line: l, column: c });
                    }
                }
                significant = false;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p);
                i = advance(bytes, i, end, &mut line, &mut line_start);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                let mut j = i;
                while j < bytes.len() {
                    if bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                i = advance(bytes, i, j, &mut line, &mut line_start);
            }
            b'\'' | b'"' => {
                significant = true;
                let escapes = b == b'\''
                    && i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                let mut j = i + 1;
                while j < bytes.len() {
                    if escapes && bytes[j] == b'\\' {
                        j += 2;
                        continue;
                    }
                    if bytes[j] == b {
                        if bytes.get(j + 1) == Some(&b) {
                            j += 2;
                            continue;
                        }
                        j += 1;
                        break;
                    }
                    j += 1;
                }
                i = advance(bytes, i, j, &mut line, &mut line_start);
            }
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                significant = true;
                // `$tag$` with an optional identifier tag; `$1` is a placeholder, not a quote.
                let tag_len =
                    bytes[i + 1..].iter().take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_').count();
                let first_ok = tag_len == 0 || !bytes[i + 1].is_ascii_digit();
                if first_ok && bytes.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &sql[i..i + tag_len + 2];
                    let body = i + tag.len();
                    let end = sql[body..].find(tag).map_or(bytes.len(), |p| body + p + tag.len());
                    i = advance(bytes, i, end, &mut line, &mut line_start);
                } else {
                    i += 1;
                }
            }
            _ => {
                significant = true;
                i += 1;
            }
        }
    }
    if let Some((s, l, c)) = start {
        if significant {
            pieces.push(Piece { text: sql[s..].trim_end(), line: l, column: c });
        }
    }
    pieces
}

/// An upper bound on the nesting depth of the expressions in one statement, from its text.
///
/// `sqlparser` parses a chain of infix operators (`a OR b OR c …`) in a loop, so it builds an
/// arbitrarily deep left-nested tree without recursing, but dropping (or printing) that tree
/// recurses once per level and overflows the stack near 100,000 levels. This scan bounds the
/// depth before parsing: per parenthesis level and comma-separated segment it counts operator
/// tokens, adding the depth of nested parentheses. It over-counts (every operator counts), which
/// is harmless: the bound is only compared with a generous limit.
pub(crate) fn expression_depth_bound(text: &str) -> usize {
    const WORD_OPERATORS: &[&str] =
        &["and", "or", "not", "is", "like", "ilike", "between", "similar", "collate", "at", "in", "overlaps"];
    let bytes = text.as_bytes();
    // Per open parenthesis level: (deepest finished segment, current segment).
    let mut levels: Vec<(usize, usize)> = vec![(0, 0)];
    let mut deepest = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        let top = levels.len() - 1;
        match b {
            b'\'' | b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p);
                continue;
            }
            b'(' | b'[' => levels.push((0, 0)),
            b')' | b']' if levels.len() > 1 => {
                let (max, cur) = levels.pop().unwrap_or((0, 0));
                let inner = max.max(cur) + 1;
                let outer = levels.len() - 1;
                levels[outer].1 += inner;
            }
            b',' => {
                let (max, cur) = levels[top];
                levels[top] = (max.max(cur), 0);
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'|' | b'&' | b'<' | b'>' | b'=' | b'!' | b'~'
            | b'#' | b'@' | b'?' | b':' => {
                levels[top].1 += 1;
                while i + 1 < bytes.len() && b"+-*/%^|&<>=!~#@?:".contains(&bytes[i + 1]) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &text[start..i];
                if WORD_OPERATORS.iter().any(|w| w.eq_ignore_ascii_case(word)) {
                    levels[top].1 += 1;
                }
                deepest = deepest.max(levels[top].1);
                continue;
            }
            _ => {}
        }
        let top = levels.len() - 1;
        deepest = deepest.max(levels[top].1).max(levels.len());
        i += 1;
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        split_statements(sql).iter().map(|p| p.text).collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(texts("SELECT 1; SELECT 2"), vec!["SELECT 1", "SELECT 2"]);
        assert_eq!(texts("SELECT 'a;b'; SELECT \"x;y\""), vec!["SELECT 'a;b'", "SELECT \"x;y\""]);
        assert_eq!(texts("SELECT 'it''s;'; x"), vec!["SELECT 'it''s;'", "x"]);
        assert_eq!(texts("SELECT E'\\';'; y"), vec!["SELECT E'\\';'", "y"]);
        assert_eq!(texts("SELECT 1 -- c;omment\n; z"), vec!["SELECT 1 -- c;omment", "z"]);
        assert_eq!(
            texts("SELECT /* a; /* nested; */ b; */ 1; w"),
            vec!["SELECT /* a; /* nested; */ b; */ 1", "w"]
        );
        assert_eq!(texts("SELECT $$a;b$$; SELECT $t$;$t$"), vec!["SELECT $$a;b$$", "SELECT $t$;$t$"]);
        assert_eq!(texts("SELECT $1; v"), vec!["SELECT $1", "v"]);
    }

    #[test]
    fn drops_empty_and_comment_only_pieces() {
        assert!(texts("").is_empty());
        assert!(texts(" ; ;\n -- nothing\n ; /* x */").is_empty());
        assert_eq!(texts(";;SELECT 1;;"), vec!["SELECT 1"]);
    }

    #[test]
    fn unterminated_constructs_run_to_the_end() {
        assert_eq!(texts("SELECT 'abc; def"), vec!["SELECT 'abc; def"]);
        assert_eq!(texts("SELECT /* abc; def"), vec!["SELECT /* abc; def"]);
        assert_eq!(texts("SELECT $$ abc; def"), vec!["SELECT $$ abc; def"]);
        assert_eq!(texts("x $"), vec!["x $"]);
        assert_eq!(texts("x '"), vec!["x '"]);
    }

    #[test]
    fn depth_bound_grows_with_operator_chains_not_lists() {
        let chain = (0..1000).map(|i| format!("id = {i}")).collect::<Vec<_>>().join(" OR ");
        assert!(expression_depth_bound(&format!("SELECT * FROM t WHERE {chain}")) >= 1999);
        let nested = (0..1000).map(|i| format!("f({i}, 2)")).collect::<Vec<_>>().join(" + ");
        assert!(
            expression_depth_bound(&format!("SELECT {nested}")) >= 1000,
            "inner commas do not reset the chain"
        );
        let rows = (0..10_000).map(|i| format!("({i}, 'a-b', -1.5)")).collect::<Vec<_>>().join(", ");
        assert!(expression_depth_bound(&format!("INSERT INTO t VALUES {rows}")) < 10);
        let list = (0..10_000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        assert!(expression_depth_bound(&format!("SELECT * FROM t WHERE id IN ({list})")) < 10);
        assert!(expression_depth_bound("SELECT ')))' || '-- x'") < 5);
        assert_eq!(expression_depth_bound(""), 0);
    }

    #[test]
    fn positions_map_back_to_the_whole_text() {
        let pieces = split_statements("SELECT 1;\n  SELECT\n 2; é; SELECT 3");
        assert_eq!((pieces[1].line, pieces[1].column), (2, 3));
        assert_eq!(pieces[1].translate(Position { line: 1, column: 4 }), Position { line: 2, column: 6 });
        assert_eq!(pieces[1].translate(Position { line: 2, column: 2 }), Position { line: 3, column: 2 });
        assert_eq!(pieces[2].text, "é");
        assert_eq!((pieces[3].line, pieces[3].column), (3, 8), "columns count characters, not bytes");
    }
}
