//! Synchronous replication rules: which standbys a `remote_*` commit waits for, and how far
//! they have all confirmed the WAL. Pure functions over plain data; the waiting is in
//! [`super::Replication::relay`].
//!
//! The rule is PostgreSQL's `synchronous_standby_names`, here the `synchronous_standbys`
//! setting:
//! - `FIRST n (a, b, c)`: the `n` connected standbys that come first in the list (their
//!   *priority*) are synchronous; a commit waits until all of them confirmed it. With fewer
//!   than `n` of them connected, commits wait.
//! - `ANY n (a, b, c)`: a commit waits until any `n` of the listed connected standbys confirmed
//!   it (a quorum).
//! - `a, b` (a bare list) means `FIRST 1 (a, b)`, and `n (a, b)` means `FIRST n (a, b)`, as in
//!   PostgreSQL.
//! - empty: no synchronous standbys; `remote_*` commits wait only for the local flush.
//!
//! Names match standby names case-insensitively; `*` matches any standby. Names may be
//! double-quoted to use other characters. Only standbys that are streaming count (a standby
//! taking a base backup or catching up is not a candidate, as in PostgreSQL).

use super::{StandbyPositions, StandbyState};
use hindsight_protocol::Lsn;

/// The most names in a `synchronous_standbys` list.
pub const SYNC_STANDBY_NAMES_MAX: usize = 64;
/// The longest standby name in the list, in bytes.
pub const SYNC_STANDBY_NAME_LEN_MAX: usize = 63;

/// How long a commit waits, PostgreSQL's `synchronous_commit` levels in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncLevel {
    /// Not even for the local flush.
    Off,
    /// For the local WAL flush only.
    Local,
    /// Also until the synchronous standbys wrote the WAL (not necessarily flushed).
    RemoteWrite,
    /// Also until they flushed it.
    RemoteFlush,
    /// Also until they replayed it (it is visible to their queries).
    RemoteApply,
}

impl SyncLevel {
    /// Parses a session's stored `synchronous_commit` value: `off`, `local`, `remote_write`,
    /// `remote_flush` or `remote_apply` (the session stores `on` as `remote_flush`).
    pub fn from_setting(value: &str) -> Option<SyncLevel> {
        Some(match value {
            "off" => SyncLevel::Off,
            "local" => SyncLevel::Local,
            "remote_write" => SyncLevel::RemoteWrite,
            "remote_flush" => SyncLevel::RemoteFlush,
            "remote_apply" => SyncLevel::RemoteApply,
            _ => return None,
        })
    }

    /// The position a standby must confirm for this level; `None` for `Off` and `Local`, which
    /// do not wait for standbys.
    pub fn position(self, pos: &StandbyPositions) -> Option<Lsn> {
        match self {
            SyncLevel::Off | SyncLevel::Local => None,
            SyncLevel::RemoteWrite => Some(pos.written),
            SyncLevel::RemoteFlush => Some(pos.flushed),
            SyncLevel::RemoteApply => Some(pos.replayed),
        }
    }
}

/// `FIRST` (priority) or `ANY` (quorum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMethod {
    /// The `n` highest-priority connected standbys.
    First,
    /// Any `n` listed connected standbys.
    Any,
}

/// A parsed `synchronous_standbys` rule.
///
/// Invariants:
/// - `names` are lower case, at most [`SYNC_STANDBY_NAMES_MAX`], each 1 to
///   [`SYNC_STANDBY_NAME_LEN_MAX`] bytes.
/// - Either `names` is empty and `count == 0` (no synchronous standbys), or
///   `1 <= count <= names.len()`, or `count >= 1` and `names` contains `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRule {
    /// FIRST or ANY.
    pub method: SyncMethod,
    /// How many standbys must confirm.
    pub count: usize,
    /// The standby names in priority order (lower case; `*` matches any).
    pub names: Vec<String>,
}

/// How a standby takes part in synchronous replication, PostgreSQL's `sync_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Not listed: commits never wait for it.
    Async,
    /// Chosen by a FIRST rule: commits wait for it now.
    Sync,
    /// Listed in a FIRST rule but not chosen now; takes over if a sync standby goes.
    Potential,
    /// Listed in an ANY rule: counts towards the quorum.
    Quorum,
}

impl SyncState {
    /// The name shown in SHOW REPLICATION.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Async => "async",
            SyncState::Sync => "sync",
            SyncState::Potential => "potential",
            SyncState::Quorum => "quorum",
        }
    }
}

/// One connected standby, as the rule sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The connection's id (ties between equal priorities go to the older connection).
    pub id: u64,
    /// The standby's name.
    pub name: &'a str,
    /// What it is doing; only streaming standbys count.
    pub state: StandbyState,
    /// What it confirmed.
    pub positions: StandbyPositions,
}

impl SyncRule {
    /// The rule for an empty setting: no synchronous standbys.
    pub fn none() -> SyncRule {
        SyncRule { method: SyncMethod::First, count: 0, names: Vec::new() }
    }

    /// Whether commits never wait for standbys under this rule.
    pub fn is_none(&self) -> bool {
        self.count == 0
    }

    /// A standby's priority: the 0-based position of the first list entry naming it (or `*`);
    /// `None` when it is not listed.
    pub fn priority(&self, standby: &str) -> Option<usize> {
        self.names.iter().position(|n| n == "*" || n.eq_ignore_ascii_case(standby))
    }

    /// The streaming, listed candidates, highest priority first (ties: older connection).
    fn ranked<'c, 'a>(&self, candidates: &'c [Candidate<'a>]) -> Vec<(usize, &'c Candidate<'a>)> {
        let mut ranked: Vec<_> = candidates
            .iter()
            .filter(|c| c.state == StandbyState::Streaming)
            .filter_map(|c| self.priority(c.name).map(|p| (p, c)))
            .collect();
        ranked.sort_by_key(|(p, c)| (*p, c.id));
        ranked
    }

    /// How far the synchronous standbys have all confirmed the WAL, per level: a commit at
    /// `level` may return once `level.position(&confirmed) >= commit_lsn`. `None` when too few
    /// listed standbys are streaming to satisfy the rule (commits wait), and for the empty rule
    /// (which [`super::Replication::relay`] never asks about).
    ///
    /// FIRST n: the minimum, per position, over the `n` highest-priority streaming standbys.
    /// ANY n: per position, the `n`-th highest among the listed streaming standbys.
    pub fn confirmed(&self, candidates: &[Candidate<'_>]) -> Option<StandbyPositions> {
        if self.is_none() {
            return None;
        }
        let ranked = self.ranked(candidates);
        if ranked.len() < self.count {
            return None;
        }
        let chosen: Vec<StandbyPositions> = match self.method {
            SyncMethod::First => ranked.iter().take(self.count).map(|(_, c)| c.positions).collect(),
            SyncMethod::Any => ranked.iter().map(|(_, c)| c.positions).collect(),
        };
        let n = self.count;
        // The n-th highest of each position (for FIRST, `chosen` has exactly n entries, so
        // that is their minimum).
        let nth = |get: fn(&StandbyPositions) -> Lsn| -> Lsn {
            let mut v: Vec<Lsn> = chosen.iter().map(get).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v[n - 1]
        };
        Some(StandbyPositions {
            received: nth(|p| p.received),
            written: nth(|p| p.written),
            flushed: nth(|p| p.flushed),
            replayed: nth(|p| p.replayed),
        })
    }

    /// Each candidate's sync state, in the order given.
    pub fn sync_states(&self, candidates: &[Candidate<'_>]) -> Vec<SyncState> {
        let chosen: Vec<u64> = match self.method {
            SyncMethod::First => self.ranked(candidates).iter().take(self.count).map(|(_, c)| c.id).collect(),
            SyncMethod::Any => Vec::new(),
        };
        candidates
            .iter()
            .map(|c| match (self.priority(c.name), self.method) {
                (None, _) => SyncState::Async,
                (Some(_), _) if self.is_none() => SyncState::Async,
                (Some(_), SyncMethod::Any) => SyncState::Quorum,
                (Some(_), SyncMethod::First) if chosen.contains(&c.id) => SyncState::Sync,
                (Some(_), SyncMethod::First) => SyncState::Potential,
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Number(usize),
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            ',' => tokens.push(Token::Comma),
            '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err("a double-quoted standby name is not terminated".into()),
                    }
                }
                tokens.push(Token::Quoted(name));
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*') => {
                let mut word = c.to_string();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*')) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                if word.bytes().all(|b| b.is_ascii_digit()) {
                    let n = word.parse().map_err(|_| format!("the number {word} is too large"))?;
                    tokens.push(Token::Number(n));
                } else {
                    tokens.push(Token::Word(word));
                }
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(tokens)
}

/// Parses `synchronous_standbys`: `FIRST n (a, b, …)`, `ANY n (a, b, …)`, `n (a, b, …)` (FIRST),
/// `a, b, …` (FIRST 1), or empty (no synchronous standbys, [`SyncRule::none`]). The error says
/// what is wrong and shows the accepted forms.
pub fn parse_sync_standbys(text: &str) -> Result<SyncRule, String> {
    parse_rule(text).map_err(|why| {
        format!(
            "synchronous_standbys '{text}': {why} (write e.g. 'FIRST 1 (replica_a, replica_b)', \
             'ANY 2 (a, b, c)' or 'a, b'; empty for none)"
        )
    })
}

fn parse_rule(text: &str) -> Result<SyncRule, String> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(SyncRule::none());
    }
    let keyword = |t: &Token, kw: &str| matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(kw));
    let (method, count, list) = match tokens.as_slice() {
        [m, Token::Number(n), Token::Open, rest @ ..] if keyword(m, "FIRST") || keyword(m, "ANY") => {
            let method = if keyword(m, "ANY") { SyncMethod::Any } else { SyncMethod::First };
            (method, *n, parenthesised(rest)?)
        }
        // FIRST and ANY followed by a comma are standby names.
        [m, ..]
            if (keyword(m, "FIRST") || keyword(m, "ANY")) && !matches!(tokens.get(1), Some(Token::Comma)) =>
        {
            return Err(format!("expected a number and a parenthesised list after {}", word_of(m)));
        }
        [Token::Number(n), Token::Open, rest @ ..] => (SyncMethod::First, *n, parenthesised(rest)?),
        list => (SyncMethod::First, 1, list),
    };
    let names = names(list)?;
    if count == 0 {
        return Err("the number of synchronous standbys must be at least 1".into());
    }
    if count > names.len() && !names.iter().any(|n| n == "*") {
        return Err(format!(
            "it asks for {count} synchronous standbys but names only {}, so commits would wait forever",
            names.len()
        ));
    }
    Ok(SyncRule { method, count, names })
}

fn word_of(t: &Token) -> String {
    match t {
        Token::Word(w) | Token::Quoted(w) => w.clone(),
        Token::Number(n) => n.to_string(),
        Token::Open => "(".into(),
        Token::Close => ")".into(),
        Token::Comma => ",".into(),
    }
}

/// The tokens inside `( … )`, which must end the text.
fn parenthesised(rest: &[Token]) -> Result<&[Token], String> {
    match rest.iter().position(|t| *t == Token::Close) {
        None => Err("the list is missing its closing parenthesis".into()),
        Some(end) if end + 1 != rest.len() => {
            Err(format!("unexpected {} after the closing parenthesis", word_of(&rest[end + 1])))
        }
        Some(end) => Ok(&rest[..end]),
    }
}

/// A comma-separated list of names.
fn names(list: &[Token]) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Err("the list of standby names is empty".into());
    }
    let mut names = Vec::new();
    for (i, chunk) in list.split(|t| *t == Token::Comma).enumerate() {
        let name = match chunk {
            [Token::Word(w) | Token::Quoted(w)] => w.to_lowercase(),
            // A name that is all digits: allowed, like PostgreSQL's application names.
            [Token::Number(n)] => n.to_string(),
            [] => return Err(format!("standby name {} in the list is missing", i + 1)),
            [other] => return Err(format!("expected a standby name, found {}", word_of(other))),
            [first, second, ..] => {
                return Err(format!(
                    "expected a comma between standby names, found {} {}",
                    word_of(first),
                    word_of(second)
                ))
            }
        };
        if name.is_empty() || name.len() > SYNC_STANDBY_NAME_LEN_MAX {
            return Err(format!("standby name \"{name}\" must be 1 to {SYNC_STANDBY_NAME_LEN_MAX} bytes"));
        }
        if name.contains('*') && name != "*" {
            return Err(format!("standby name \"{name}\": * matches any standby and must stand alone"));
        }
        names.push(name);
        if names.len() > SYNC_STANDBY_NAMES_MAX {
            return Err(format!("more than {SYNC_STANDBY_NAMES_MAX} standby names"));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: SyncMethod, count: usize, names: &[&str]) -> SyncRule {
        SyncRule { method, count, names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn parses_every_form() {
        use SyncMethod::{Any, First};
        assert!(parse_sync_standbys("").unwrap().is_none());
        assert!(parse_sync_standbys("   ").unwrap().is_none());
        assert_eq!(parse_sync_standbys("FIRST 2 (a, B, c)").unwrap(), rule(First, 2, &["a", "b", "c"]));
        assert_eq!(parse_sync_standbys("any 1 (a,b)").unwrap(), rule(Any, 1, &["a", "b"]));
        assert_eq!(parse_sync_standbys("a, b").unwrap(), rule(First, 1, &["a", "b"]));
        assert_eq!(parse_sync_standbys("replica-1").unwrap(), rule(First, 1, &["replica-1"]));
        assert_eq!(parse_sync_standbys("2 (a, b)").unwrap(), rule(First, 2, &["a", "b"]));
        assert_eq!(parse_sync_standbys("ANY 3 (*)").unwrap(), rule(Any, 3, &["*"]));
        assert_eq!(
            parse_sync_standbys(r#"FIRST 1 ("My ""odd"" Name")"#).unwrap(),
            rule(First, 1, &[r#"my "odd" name"#])
        );
        // FIRST and ANY are names when they are not followed by a count.
        assert_eq!(parse_sync_standbys("first, any").unwrap(), rule(First, 1, &["first", "any"]));
    }

    #[test]
    fn bad_rules_say_why() {
        for (bad, says) in [
            ("FIRST 0 (a)", "at least 1"),
            ("ANY 3 (a, b)", "names only 2"),
            ("FIRST 1 (a, b", "closing parenthesis"),
            ("FIRST 1 (a) b", "after the closing parenthesis"),
            ("FIRST (a)", "expected a number"),
            ("ANY", "expected a number"),
            ("FIRST 1 ()", "empty"),
            ("a,,b", "missing"),
            ("a b", "expected a comma"),
            ("a; drop", "unexpected character"),
            ("FIRST 1 (\"a)", "not terminated"),
            ("FIRST 1 (a*)", "must stand alone"),
            ("FIRST 99999999999999999999999 (a)", "too large"),
        ] {
            let e = parse_sync_standbys(bad).unwrap_err();
            assert!(
                e.contains(says) && e.contains("synchronous_standbys") && e.contains("FIRST 1"),
                "{bad}: {e}"
            );
        }
        let many = (0..=SYNC_STANDBY_NAMES_MAX).map(|i| format!("s{i}")).collect::<Vec<_>>().join(", ");
        assert!(parse_sync_standbys(&many).unwrap_err().contains("more than"));
        assert!(parse_sync_standbys(&"x".repeat(64)).unwrap_err().contains("1 to 63"));
    }

    fn pos(l: u64) -> StandbyPositions {
        StandbyPositions { received: Lsn(l), written: Lsn(l), flushed: Lsn(l), replayed: Lsn(l) }
    }

    fn c(id: u64, name: &str, at: u64) -> Candidate<'_> {
        Candidate { id, name, state: StandbyState::Streaming, positions: pos(at) }
    }

    #[test]
    fn first_waits_for_the_highest_priority_connected_standbys() {
        let r = parse_sync_standbys("FIRST 2 (a, b, c)").unwrap();
        // Only a is connected: two are needed, so commits wait.
        assert_eq!(r.confirmed(&[c(1, "a", 100)]), None);
        // b is catching up: not a candidate yet.
        let mut b = c(2, "b", 50);
        b.state = StandbyState::Catchup;
        assert_eq!(r.confirmed(&[c(1, "a", 100), b.clone()]), None);
        b.state = StandbyState::Streaming;
        assert_eq!(r.confirmed(&[c(1, "a", 100), b.clone()]), Some(pos(50)));
        // c connects further ahead but has lower priority than a and b: still 50.
        let all = [c(1, "a", 100), b.clone(), c(3, "C", 200), c(4, "x", 300)];
        assert_eq!(r.confirmed(&all), Some(pos(50)));
        use SyncState::*;
        assert_eq!(r.sync_states(&all), vec![Sync, Sync, Potential, Async]);
        // a disconnects: b and c are the synchronous pair now.
        let rest = [b.clone(), c(3, "c", 200)];
        assert_eq!(r.confirmed(&rest), Some(pos(50)));
        assert_eq!(r.sync_states(&rest), vec![Sync, Sync]);
        // Per-position minimum: written from one, replayed from the other.
        let mut lagging = c(1, "a", 100);
        lagging.positions.replayed = Lsn(10);
        let got = r.confirmed(&[lagging, c(3, "c", 80)]).unwrap();
        assert_eq!((got.written, got.replayed), (Lsn(80), Lsn(10)));
    }

    #[test]
    fn any_waits_for_a_quorum_of_listed_standbys() {
        let r = parse_sync_standbys("ANY 2 (a, b, c)").unwrap();
        assert_eq!(r.confirmed(&[c(1, "a", 100), c(9, "stranger", 500)]), None);
        let all = [c(1, "a", 100), c(2, "b", 30), c(3, "c", 70)];
        assert_eq!(r.confirmed(&all), Some(pos(70)), "the second highest");
        assert_eq!(r.sync_states(&all), vec![SyncState::Quorum; 3]);
        assert_eq!(r.confirmed(&[c(2, "b", 30), c(3, "c", 70)]), Some(pos(30)));
        // * counts every standby, duplicates included.
        let star = parse_sync_standbys("ANY 2 (*)").unwrap();
        assert_eq!(star.confirmed(&[c(1, "x", 10), c(2, "x", 20)]), Some(pos(10)));
        // A bare list is FIRST 1: the first listed connected standby alone.
        let bare = parse_sync_standbys("b, a").unwrap();
        assert_eq!(bare.confirmed(&all), Some(pos(30)));
        assert_eq!(bare.sync_states(&all), vec![SyncState::Potential, SyncState::Sync, SyncState::Async]);
        // No rule: everyone is async and nothing is confirmed.
        assert_eq!(SyncRule::none().confirmed(&all), None);
        assert_eq!(SyncRule::none().sync_states(&all), vec![SyncState::Async; 3]);
    }

    #[test]
    fn levels_order_and_parse() {
        assert!(SyncLevel::Off < SyncLevel::Local && SyncLevel::RemoteFlush < SyncLevel::RemoteApply);
        for (s, l) in
            [("off", SyncLevel::Off), ("local", SyncLevel::Local), ("remote_apply", SyncLevel::RemoteApply)]
        {
            assert_eq!(SyncLevel::from_setting(s), Some(l));
        }
        assert_eq!(SyncLevel::from_setting("on"), None);
        let p = StandbyPositions { received: Lsn(4), written: Lsn(3), flushed: Lsn(2), replayed: Lsn(1) };
        assert_eq!(SyncLevel::RemoteWrite.position(&p), Some(Lsn(3)));
        assert_eq!(SyncLevel::RemoteApply.position(&p), Some(Lsn(1)));
        assert_eq!(SyncLevel::Local.position(&p), None);
    }
}
