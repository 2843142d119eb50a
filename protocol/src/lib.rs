//! The hindsight protocol crate: the [`Lsn`], [`Timeline`] and [`TxId`] newtypes every crate
//! speaks in (wire messages and framing arrive with the primary server).

mod types;

pub use types::{Lsn, ParseError, Timeline, TxId};
