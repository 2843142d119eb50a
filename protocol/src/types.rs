//! Position newtypes shared by every crate: [`Lsn`], [`Timeline`] and [`TxId`].
//!
//! They are never bare integers in an API, so a timeline cannot be passed where an Lsn is meant.

use std::fmt;
use std::str::FromStr;

/// A byte position in the WAL stream.
///
/// Printed PostgreSQL-style as `X/Y` (upper 32 bits in hex, `/`, lower 32 bits in hex, e.g.
/// `0/1A2B3C8`) and parsed the same way.
///
/// Invariants:
/// - Lsns grow along the WAL and continue across timelines.
/// - `Lsn::ZERO` is never the position of a record (every segment starts with a header).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before any WAL.
    pub const ZERO: Lsn = Lsn(0);

    /// The Lsn `bytes` further along the WAL.
    pub fn add(self, bytes: u64) -> Lsn {
        Lsn(self.0.checked_add(bytes).expect("Lsn overflow"))
    }

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The error of parsing an [`Lsn`], [`Timeline`] or [`TxId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{text}': {why}")]
pub struct ParseError {
    /// What was being parsed ("Lsn", "timeline", "TxId").
    pub what: &'static str,
    /// The text that did not parse.
    pub text: String,
    /// Why it did not parse.
    pub why: &'static str,
}

impl FromStr for Lsn {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Lsn, ParseError> {
        let err = |why| ParseError { what: "Lsn", text: text.to_string(), why };
        let (high, low) =
            text.trim().split_once('/').ok_or_else(|| err("expected X/Y in hex, e.g. 0/1A2B3C8"))?;
        let high = u32::from_str_radix(high, 16)
            .map_err(|_| err("the part before '/' is not a 32-bit hex number"))?;
        let low =
            u32::from_str_radix(low, 16).map_err(|_| err("the part after '/' is not a 32-bit hex number"))?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// A timeline: starts at 1, and each promotion starts the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Timeline(pub u32);

impl Timeline {
    /// The timeline a new cluster starts on.
    pub const FIRST: Timeline = Timeline(1);

    /// The timeline a promotion from this one starts.
    pub fn next(self) -> Timeline {
        Timeline(self.0.checked_add(1).expect("timeline overflow"))
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Timeline {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Timeline, ParseError> {
        match text.trim().parse::<u32>() {
            Ok(0) => Err(ParseError { what: "timeline", text: text.into(), why: "timelines start at 1" }),
            Ok(n) => Ok(Timeline(n)),
            Err(_) => Err(ParseError { what: "timeline", text: text.into(), why: "not a number" }),
        }
    }
}

/// A transaction id, assigned **at commit** in commit order: TxId order = Lsn order = commit
/// order. The first committed transaction of a cluster is `TxId(1)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TxId(pub u64);

impl TxId {
    /// The id before the first transaction.
    pub const ZERO: TxId = TxId(0);

    /// The id of the transaction committed after this one.
    pub fn next(self) -> TxId {
        TxId(self.0.checked_add(1).expect("TxId overflow"))
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TxId {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<TxId, ParseError> {
        text.trim().parse::<u64>().map(TxId).map_err(|_| ParseError {
            what: "TxId",
            text: text.into(),
            why: "not a non-negative integer",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_and_parses_postgres_style() {
        let lsn = Lsn(0x1_1A2B_3C8D);
        assert_eq!(lsn.to_string(), "1/1A2B3C8D");
        assert_eq!("1/1A2B3C8D".parse::<Lsn>().unwrap(), lsn);
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!(Lsn(0x1A2B3C8).to_string(), "0/1A2B3C8");
        assert!("12".parse::<Lsn>().is_err());
        assert!("0/XYZ".parse::<Lsn>().is_err());
        assert!("100000000/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn timeline_and_txid_parse() {
        assert_eq!("3".parse::<Timeline>().unwrap(), Timeline(3));
        assert!("0".parse::<Timeline>().is_err());
        assert_eq!("42".parse::<TxId>().unwrap(), TxId(42));
        assert!("-1".parse::<TxId>().is_err());
    }
}
