//! WAL holds: named claims on the WAL from an Lsn on, so segments a consumer still needs are not
//! removed after a checkpoint.
//!
//! Holders are replication slots (persistent, named `slot:<name>` by the server), connected WAL
//! senders (their standby's flushed Lsn), and base backups in flight (the backup's start Lsn).
//! The committer asks [`WalHolds::needed_from`] before it removes segments; holds marked
//! `capped` that fall further behind than `max_keep_bytes` are invalidated there (with an error
//! in the log) instead of keeping WAL without bound, like PostgreSQL's `max_slot_wal_keep_size`.

use hindsight_protocol::Lsn;
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// The most holds at a time (slots, senders and backups together).
pub const WAL_HOLDS_MAX: usize = 1024;

/// One hold, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalHold {
    /// Its name.
    pub name: String,
    /// WAL from here on is kept.
    pub lsn: Lsn,
    /// Whether `max_keep_bytes` applies to it.
    pub capped: bool,
    /// Set once the hold fell too far behind and stopped keeping WAL: why.
    pub invalidated: Option<String>,
}

/// The set of holds, shared by the committer (which removes WAL) and the server (which moves
/// holds as standbys confirm WAL).
///
/// Invariants:
/// - An invalidated hold never keeps WAL again; only releasing and re-creating it does.
/// - `oldest_lsn` is the start of the oldest segment on disk; no hold is created below it.
#[derive(Debug)]
pub struct WalHolds {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    holds: BTreeMap<String, WalHold>,
    max_keep_bytes: Option<u64>,
    oldest_lsn: Lsn,
}

/// Why a hold could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// The WAL it asks for is already gone.
    #[error("WAL from {wanted} was already removed; the oldest WAL on this server starts at {oldest}")]
    Removed {
        /// The Lsn asked for.
        wanted: Lsn,
        /// The oldest Lsn still on disk.
        oldest: Lsn,
    },
    /// Too many holds.
    #[error("too many WAL holds (at most {WAL_HOLDS_MAX})")]
    TooMany,
}

impl WalHolds {
    /// No holds; WAL on disk starts at `oldest_lsn`.
    pub fn new(oldest_lsn: Lsn, max_keep_bytes: Option<u64>) -> WalHolds {
        WalHolds { inner: Mutex::new(Inner { holds: BTreeMap::new(), max_keep_bytes, oldest_lsn }) }
    }

    /// Places or moves the hold `name` to `lsn`. Moving an invalidated hold does not revive it.
    pub fn hold(&self, name: &str, lsn: Lsn, capped: bool) -> Result<(), HoldError> {
        let mut inner = self.inner.lock();
        if lsn < inner.oldest_lsn {
            return Err(HoldError::Removed { wanted: lsn, oldest: inner.oldest_lsn });
        }
        if !inner.holds.contains_key(name) && inner.holds.len() >= WAL_HOLDS_MAX {
            return Err(HoldError::TooMany);
        }
        let entry = inner.holds.entry(name.to_string()).or_insert_with(|| WalHold {
            name: name.to_string(),
            lsn,
            capped,
            invalidated: None,
        });
        entry.lsn = lsn;
        entry.capped = capped;
        Ok(())
    }

    /// Removes the hold `name` (nothing if there is none).
    pub fn release(&self, name: &str) {
        self.inner.lock().holds.remove(name);
    }

    /// Every hold.
    pub fn list(&self) -> Vec<WalHold> {
        self.inner.lock().holds.values().cloned().collect()
    }

    /// The hold `name`.
    pub fn get(&self, name: &str) -> Option<WalHold> {
        self.inner.lock().holds.get(name).cloned()
    }

    /// The oldest WAL still on disk.
    pub fn oldest_lsn(&self) -> Lsn {
        self.inner.lock().oldest_lsn
    }

    /// Changes the cap (`None`: holds keep WAL without limit).
    pub fn set_max_keep_bytes(&self, max_keep_bytes: Option<u64>) {
        self.inner.lock().max_keep_bytes = max_keep_bytes;
    }

    /// Decides what WAL may go: invalidates capped holds more than `max_keep_bytes` behind
    /// `insert_lsn`, then returns the oldest Lsn a valid hold or `recovery_lsn` needs, and calls
    /// `remove(keep)` under the lock so no hold can be placed on WAL while it is removed. `remove`
    /// returns the new oldest Lsn on disk.
    pub fn remove_unneeded(&self, insert_lsn: Lsn, recovery_lsn: Lsn, remove: impl FnOnce(Lsn) -> Lsn) {
        let mut inner = self.inner.lock();
        let cap = inner.max_keep_bytes;
        let mut keep = recovery_lsn;
        for h in inner.holds.values_mut() {
            if h.invalidated.is_some() {
                continue;
            }
            let behind = insert_lsn.bytes_since(h.lsn.min(insert_lsn));
            if let Some(cap) = cap.filter(|_| h.capped) {
                if behind > cap {
                    let why = format!(
                        "invalidated: it needed WAL from {} but fell {behind} bytes behind {insert_lsn}, past max_slot_wal_keep_bytes ({cap})",
                        h.lsn
                    );
                    tracing::error!(hold = %h.name, lsn = %h.lsn, behind, cap, "WAL hold {why}");
                    h.invalidated = Some(why);
                    continue;
                }
            }
            keep = keep.min(h.lsn);
        }
        let oldest = remove(keep);
        inner.oldest_lsn = inner.oldest_lsn.max(oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_keep_wal_until_they_fall_past_the_cap() {
        let holds = WalHolds::new(Lsn(40), Some(1000));
        holds.hold("slot:a", Lsn(500), true).unwrap();
        holds.hold("backup", Lsn(100), false).unwrap();
        let mut kept = Lsn::ZERO;
        holds.remove_unneeded(Lsn(1200), Lsn(1100), |keep| {
            kept = keep;
            Lsn(40)
        });
        assert_eq!(kept, Lsn(100), "the uncapped backup hold keeps the oldest WAL");
        holds.release("backup");
        holds.remove_unneeded(Lsn(1600), Lsn(1500), |keep| {
            kept = keep;
            keep
        });
        assert_eq!(kept, Lsn(1500), "the slot fell 1100 bytes behind and no longer keeps WAL");
        let slot = holds.get("slot:a").unwrap();
        assert!(slot.invalidated.as_deref().unwrap().contains("max_slot_wal_keep_bytes"), "{slot:?}");
        holds.hold("slot:a", Lsn(1550), true).unwrap();
        assert!(holds.get("slot:a").unwrap().invalidated.is_some(), "moving does not revive it");
        assert_eq!(
            holds.hold("late", Lsn(1000), true),
            Err(HoldError::Removed { wanted: Lsn(1000), oldest: Lsn(1500) })
        );
    }
}
