//! The one line `hindsight primary` prints on stdout when it is ready, and its parser.
//!
//! `hindsight primary listening on ADDR (system id XXXXXXXXXXXXXXXX, data DIR)`, and the same
//! with `replica` for `hindsight replica`.
//!
//! Scripts, the demo, the benchmark and the end-to-end tests start a primary on port 0 and read
//! the address from this line, so its format is defined here once.

use std::fmt;
use std::path::Path;

const PREFIX: &str = "hindsight ";
const LISTENING: &str = " listening on ";

/// What the ready line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyLine {
    /// `primary` or `replica`.
    pub role: String,
    /// The address the server listens on.
    pub addr: String,
    /// The cluster's system id.
    pub system_id: u64,
    /// The data directory, as given on the command line.
    pub data: String,
}

impl ReadyLine {
    /// The line for a server on `addr` with `system_id` serving `data`.
    pub fn new(addr: impl fmt::Display, system_id: u64, data: &Path) -> ReadyLine {
        ReadyLine {
            role: "primary".into(),
            addr: addr.to_string(),
            system_id,
            data: data.display().to_string(),
        }
    }

    /// The line for a replica.
    pub fn replica(addr: impl fmt::Display, system_id: u64, data: &Path) -> ReadyLine {
        ReadyLine { role: "replica".into(), ..ReadyLine::new(addr, system_id, data) }
    }

    /// Parses a line printed by [`ReadyLine`]'s `Display`; `None` for any other line.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let (role, rest) = line.strip_prefix(PREFIX)?.split_once(LISTENING)?;
        if role != "primary" && role != "replica" {
            return None;
        }
        let (addr, rest) = rest.split_once(" (system id ")?;
        let (system_id, rest) = rest.split_once(", data ")?;
        if system_id.len() != 16 {
            return None;
        }
        let system_id = u64::from_str_radix(system_id, 16).ok()?;
        let data = rest.strip_suffix(')')?;
        Some(ReadyLine { role: role.to_string(), addr: addr.to_string(), system_id, data: data.to_string() })
    }
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}{LISTENING}{} (system id {:016X}, data {})",
            self.role, self.addr, self.system_id, self.data
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_round_trips() {
        let line = ReadyLine::new("127.0.0.1:40123", 0x0123_ABCD, Path::new("/tmp/x (1)"));
        let text = line.to_string();
        assert_eq!(
            text,
            "hindsight primary listening on 127.0.0.1:40123 (system id 000000000123ABCD, data /tmp/x (1))"
        );
        assert_eq!(ReadyLine::parse(&text), Some(line));
        assert_eq!(ReadyLine::parse("hindsight primary listening on x"), None);
        assert_eq!(ReadyLine::parse("something else"), None);
    }
}
