//! The server's configuration: a TOML file (every setting optional) plus command-line overrides.
//!
//! ```toml
//! listen = "127.0.0.1:7340"
//! max_connections = 256
//! synchronous_commit = "local"
//!
//! [engine]
//! fsync = true
//! checkpoint_wal_bytes = 268435456
//! checkpoint_interval = "5m"
//! version_retention = "0s"
//! segment_size_bytes = 16777216
//!
//! [auth]
//! admin = "a long random secret"
//! readonly = "another one"
//! ```
//!
//! Unknown keys are an error naming the key, so a typo never silently falls back to a default.
//! `docs/configuration.md` documents every setting; a test checks that it names each one.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use hindsight_engine::wal::segment::{valid_segment_size, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// The address a server listens on unless told otherwise.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7340";

/// The most client connections a server serves at once unless told otherwise.
pub const MAX_CONNECTIONS_DEFAULT: usize = 256;

/// The highest `max_connections` accepted: every connection costs a task, a session and its
/// buffers, and a blocking thread while a statement runs.
pub const MAX_CONNECTIONS_LIMIT: usize = 16_384;

/// The default `max_slot_wal_keep_bytes`: 1 GiB. PostgreSQL's default is no limit, which lets
/// one forgotten slot fill the primary's disk; a replica that falls this far behind is
/// re-bootstrapped instead (see docs/decisions.md).
pub const MAX_SLOT_WAL_KEEP_BYTES_DEFAULT: u64 = 1 << 30;

/// The longest configuration file read, in bytes. Configuration files are a few hundred bytes;
/// anything near this is not one.
pub const CONFIG_FILE_LEN_MAX: u64 = 1024 * 1024;

const _: () = assert!(MAX_CONNECTIONS_DEFAULT <= MAX_CONNECTIONS_LIMIT);

/// Everything a primary server needs to know besides its data directory.
///
/// Invariants (checked by [`ServerConfig::validate`], which every constructor here runs):
/// - `1 <= max_connections <= MAX_CONNECTIONS_LIMIT`;
/// - the engine settings are ones the engine accepts (see [`EngineConfig`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address to listen on, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// The most client connections served at once; one more is refused with
    /// `too_many_connections`.
    pub max_connections: usize,
    /// The default commit durability for sessions (`SET synchronous_commit` overrides it).
    pub synchronous_commit: SynchronousCommit,
    /// Which standbys a `remote_*` commit waits for: `FIRST n (a, b, …)` (the n connected
    /// standbys listed first), `ANY n (a, b, …)` (any n of them), or empty for none (such
    /// commits then wait only for the local flush, as in PostgreSQL).
    pub synchronous_standbys: String,
    /// The most WAL a replication slot or a connected standby may hold back on this server,
    /// in bytes behind the insert position; past it the hold is invalidated (logged, and shown
    /// in SHOW REPLICATION) rather than filling the disk. 0 means no limit.
    pub max_slot_wal_keep_bytes: u64,
    /// The same limit under PostgreSQL's name and units, for those who bring its settings: an
    /// integer is megabytes, a string may carry `kB`, `MB`, `GB` or `TB` (powers of 1024), and
    /// -1 means no limit. Held here in bytes (0 = no limit); it replaces
    /// `max_slot_wal_keep_bytes`, and giving both is refused.
    #[serde(deserialize_with = "deserialize_wal_keep_size")]
    pub max_slot_wal_keep_size: Option<u64>,
    /// Whether the server process may back its memory with transparent huge pages. Off by
    /// default: the store's memory is mostly touched once, while a snapshot loads, and a huge
    /// page's first touch zeroes 2 MiB at once, fresh from the host on a VM. Measured, a
    /// replica's bootstrap of a million rows took twice as long with them (docs/decisions.md,
    /// #24). Redis and MongoDB also turn them off, for latency spikes and memory bloat.
    pub transparent_huge_pages: bool,
    /// Storage engine settings.
    pub engine: EngineConfig,
    /// Role secrets.
    pub auth: AuthConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: LISTEN_DEFAULT.to_string(),
            max_connections: MAX_CONNECTIONS_DEFAULT,
            synchronous_commit: SynchronousCommit::default(),
            synchronous_standbys: String::new(),
            max_slot_wal_keep_bytes: MAX_SLOT_WAL_KEEP_BYTES_DEFAULT,
            max_slot_wal_keep_size: None,
            transparent_huge_pages: false,
            engine: EngineConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads and checks a TOML configuration file.
    pub fn load(path: &Path) -> Result<ServerConfig> {
        let error = |detail: String| Error::Config { path: Some(path.to_path_buf()), detail };
        let metadata = std::fs::metadata(path).map_err(|e| error(format!("cannot read the file: {e}")))?;
        if metadata.len() > CONFIG_FILE_LEN_MAX {
            return Err(error(format!(
                "the file is {} bytes, more than the limit of {CONFIG_FILE_LEN_MAX}",
                metadata.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read the file: {e}")))?;
        ServerConfig::from_toml(&text).map_err(|e| match e {
            Error::Config { path: None, detail } => error(detail),
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<ServerConfig> {
        let config: ServerConfig =
            toml::from_str(text).map_err(|e| Error::config(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations serde cannot: ranges and engine constraints.
    pub fn validate(&self) -> Result<()> {
        if self.listen.trim().is_empty() {
            return Err(Error::config("listen must be an address like 127.0.0.1:7340"));
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            return Err(Error::config(format!(
                "max_connections = {} is out of range: it must be between 1 and {MAX_CONNECTIONS_LIMIT}",
                self.max_connections
            )));
        }
        if self.max_slot_wal_keep_size.is_some()
            && self.max_slot_wal_keep_bytes != MAX_SLOT_WAL_KEEP_BYTES_DEFAULT
        {
            return Err(Error::config(
                "max_slot_wal_keep_size and max_slot_wal_keep_bytes are the same limit: give one of them",
            ));
        }
        self.engine.validate()
    }

    /// The slot WAL limit in bytes (0 = no limit), from whichever of the two names was given.
    pub fn slot_wal_keep_bytes(&self) -> u64 {
        self.max_slot_wal_keep_size.unwrap_or(self.max_slot_wal_keep_bytes)
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> hindsight_engine::db::Config {
        hindsight_engine::db::Config {
            segment_size_bytes: self.engine.segment_size_bytes,
            fsync: self.engine.fsync,
            checkpoint_wal_bytes: self.engine.checkpoint_wal_bytes,
            checkpoint_interval: self.engine.checkpoint_interval,
            version_retention: self.engine.version_retention,
            max_slot_wal_keep_bytes: Some(self.slot_wal_keep_bytes()).filter(|&bytes| bytes > 0),
        }
    }
}

/// toml's errors span several lines (a source excerpt with a caret); the first line and the
/// message are what an operator needs in a one-line cause.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `[engine]` table: how the database stores and checkpoints data.
///
/// Invariants: `segment_size_bytes` is a power of two between 1 MiB and 1 GiB;
/// `checkpoint_wal_bytes > 0`; `checkpoint_interval > 0`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// fdatasync the WAL before acknowledging a commit. Turning it off risks losing
    /// acknowledged commits in an operating-system crash (not in a process crash).
    pub fsync: bool,
    /// Take a snapshot after this many bytes of WAL since the last one.
    pub checkpoint_wal_bytes: u64,
    /// Take a snapshot at least this often when anything was written.
    #[serde(deserialize_with = "deserialize_duration")]
    pub checkpoint_interval: Duration,
    /// Keep old row versions this long after they were replaced, for reads in the past.
    #[serde(deserialize_with = "deserialize_duration")]
    pub version_retention: Duration,
    /// The WAL segment size of a new data directory. Only read when the directory is
    /// initialised; an existing directory keeps the size it was made with.
    #[serde(alias = "segment_size")]
    pub segment_size_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        let engine = hindsight_engine::db::Config::default();
        EngineConfig {
            fsync: engine.fsync,
            checkpoint_wal_bytes: engine.checkpoint_wal_bytes,
            checkpoint_interval: engine.checkpoint_interval,
            version_retention: engine.version_retention,
            segment_size_bytes: engine.segment_size_bytes,
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<()> {
        let size = self.segment_size_bytes;
        if !valid_segment_size(size) {
            return Err(Error::config(format!(
                "engine.segment_size_bytes = {size} must be a power of two between \
                 {SEGMENT_SIZE_MIN} (1 MiB) and {SEGMENT_SIZE_MAX} (1 GiB)"
            )));
        }
        if self.checkpoint_wal_bytes == 0 {
            return Err(Error::config("engine.checkpoint_wal_bytes must be more than 0"));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(Error::config("engine.checkpoint_interval must be more than 0s"));
        }
        Ok(())
    }
}

/// The `[auth]` table: one secret per role. A role without a secret cannot log in, except
/// `admin`, whose secret then comes from `DATA_DIR/admin.secret` (made on first start).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `admin` role's secret: may do everything.
    pub admin: Option<String>,
    /// The `replication` role's secret: replication connections and read-only queries.
    pub replication: Option<String>,
    /// The `readonly` role's secret: read-only queries.
    pub readonly: Option<String>,
}

/// Secrets never reach logs, not even through `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |secret: &Option<String>| if secret.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("AuthConfig")
            .field("admin", &shown(&self.admin))
            .field("replication", &shown(&self.replication))
            .field("readonly", &shown(&self.readonly))
            .finish()
    }
}

/// When a commit is acknowledged, PostgreSQL's names and meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousCommit {
    /// Acknowledge before the WAL is flushed (a crash may lose the newest commits).
    Off,
    /// Acknowledge once the WAL is flushed on the primary. The default.
    #[default]
    Local,
    /// Also wait until a synchronous replica has written it.
    RemoteWrite,
    /// Also wait until a synchronous replica has flushed it.
    RemoteFlush,
    /// Also wait until a synchronous replica has applied it (visible to its queries).
    RemoteApply,
}

impl SynchronousCommit {
    /// The setting's name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SynchronousCommit::Off => "off",
            SynchronousCommit::Local => "local",
            SynchronousCommit::RemoteWrite => "remote_write",
            SynchronousCommit::RemoteFlush => "remote_flush",
            SynchronousCommit::RemoteApply => "remote_apply",
        }
    }
}

/// The error of parsing a duration such as `500ms` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration '{text}': {why} (write e.g. 500ms, 30s, 5m, 1h or 1h30m)")]
pub struct DurationParseError {
    /// The text that did not parse.
    pub text: String,
    /// Why.
    pub why: &'static str,
}

/// Parses a duration: one or more `<integer><unit>` parts with unit `ms`, `s`, `m` or `h`, e.g.
/// `500ms`, `30s`, `5m`, `1h`, `1h30m`. A bare `0` is zero. Spaces around the text are ignored.
pub fn parse_duration(text: &str) -> Result<Duration, DurationParseError> {
    let err = |why| DurationParseError { text: text.to_string(), why };
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if rest.starts_with('.') => {
                return Err(err("fractions are not accepted (write 1500ms, not 1.5s)"))
            }
            "" => return Err(err("a number needs a unit right after it: ms, s, m or h")),
            _ => return Err(err("unknown unit: use ms, s, m or h")),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| err("it is too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A [`Duration`] that prints and parses the way configuration files write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(text: &str) -> Result<HumanDuration, DurationParseError> {
        parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1_000) => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses a PostgreSQL-style size: a number with an optional unit (`kB`, `MB`, `GB`, `TB`,
/// powers of 1024; megabytes without one), or -1 for no limit. Returns bytes, 0 for no limit.
pub fn parse_wal_keep_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    if text == "-1" {
        return Ok(0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let number: u64 = number.parse().map_err(|_| {
        format!("max_slot_wal_keep_size = {text:?}: expected a size such as \"1GB\" or \"512MB\", or -1")
    })?;
    let scale: u64 = match unit {
        "kB" => 1 << 10,
        "" | "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => {
            return Err(format!(
                "max_slot_wal_keep_size = {text:?}: unknown unit {other:?} (use kB, MB, GB or TB)"
            ))
        }
    };
    match number.checked_mul(scale) {
        Some(0) => {
            Err(format!("max_slot_wal_keep_size = {text:?}: 0 keeps no WAL at all; use -1 for no limit"))
        }
        Some(bytes) => Ok(bytes),
        None => Err(format!("max_slot_wal_keep_size = {text:?} is too large")),
    }
}

fn deserialize_wal_keep_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Megabytes(i64),
        Text(String),
    }
    let text = match Size::deserialize(deserializer)? {
        Size::Megabytes(n) => n.to_string(),
        Size::Text(text) => text,
    };
    parse_wal_keep_size(&text).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keep_size_takes_postgresql_units() {
        let bytes =
            |toml: &str| ServerConfig::from_toml(toml).map(|c| c.engine_config().max_slot_wal_keep_bytes);
        assert_eq!(bytes("max_slot_wal_keep_size = 1024").unwrap(), Some(1 << 30));
        assert_eq!(bytes("max_slot_wal_keep_size = \"2GB\"").unwrap(), Some(2 << 30));
        assert_eq!(bytes("max_slot_wal_keep_size = \"512MB\"").unwrap(), Some(512 << 20));
        assert_eq!(bytes("max_slot_wal_keep_size = \"64kB\"").unwrap(), Some(64 << 10));
        assert_eq!(bytes("max_slot_wal_keep_size = -1").unwrap(), None);
        assert_eq!(bytes("max_slot_wal_keep_size = \"-1\"").unwrap(), None);
        assert_eq!(bytes("max_slot_wal_keep_bytes = 4096").unwrap(), Some(4096));
        assert_eq!(bytes("").unwrap(), Some(MAX_SLOT_WAL_KEEP_BYTES_DEFAULT));
        for (toml, why) in [
            ("max_slot_wal_keep_size = 0", "use -1 for no limit"),
            ("max_slot_wal_keep_size = -2", "expected a size"),
            ("max_slot_wal_keep_size = \"1 GiB\"", "unknown unit"),
            ("max_slot_wal_keep_size = \"1PB\"", "unknown unit"),
            ("max_slot_wal_keep_size = \"99999999999TB\"", "too large"),
            ("max_slot_wal_keep_size = \"1GB\"\nmax_slot_wal_keep_bytes = 4096", "give one of them"),
        ] {
            let err = ServerConfig::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(why), "{toml}: {err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 0s ").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("5", "needs a unit"),
            ("5 m", "needs a unit"),
            ("5d", "unknown unit"),
            ("m", "expected a number"),
            ("1.5s", "fractions"),
            ("-1s", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999h", "too long"),
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.to_string().contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_print_as_they_are_written() {
        for text in ["0s", "500ms", "30s", "5m", "1h", "90m", "1500ms"] {
            assert_eq!(text.parse::<HumanDuration>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = ServerConfig::from_toml("").unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.listen, "127.0.0.1:7340");
        assert_eq!(config.max_connections, MAX_CONNECTIONS_DEFAULT);
        assert_eq!(config.synchronous_commit, SynchronousCommit::Local);
        assert!(!config.transparent_huge_pages);
        assert!(config.engine.fsync);
        assert_eq!(config.engine.checkpoint_interval, Duration::from_secs(300));
        assert_eq!(config.engine.version_retention, Duration::ZERO);
        assert_eq!(config.auth, AuthConfig::default());
    }

    #[test]
    fn every_setting_parses() {
        let config = ServerConfig::from_toml(
            r#"
            listen = "0.0.0.0:0"
            max_connections = 2
            synchronous_commit = "remote_apply"
            transparent_huge_pages = true
            [engine]
            fsync = false
            checkpoint_wal_bytes = 1048576
            checkpoint_interval = "30s"
            version_retention = "1h"
            segment_size_bytes = 2097152
            [auth]
            admin = "a"
            replication = "r"
            readonly = "o"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:0");
        assert_eq!(config.max_connections, 2);
        assert_eq!(config.synchronous_commit, SynchronousCommit::RemoteApply);
        assert!(config.transparent_huge_pages);
        let engine = config.engine_config();
        assert!(!engine.fsync);
        assert_eq!(engine.checkpoint_wal_bytes, 1 << 20);
        assert_eq!(engine.checkpoint_interval, Duration::from_secs(30));
        assert_eq!(engine.version_retention, Duration::from_secs(3600));
        assert_eq!(engine.segment_size_bytes, 2 << 20);
        assert_eq!(config.auth.admin.as_deref(), Some("a"));
        assert_eq!(config.auth.replication.as_deref(), Some("r"));
        assert_eq!(config.auth.readonly.as_deref(), Some("o"));
    }

    #[test]
    fn segment_size_is_accepted_as_an_alias() {
        let config = ServerConfig::from_toml("[engine]\nsegment_size = 4194304\n").unwrap();
        assert_eq!(config.engine.segment_size_bytes, 4 << 20);
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("listne = \"x\"", "listne"),
            ("[engine]\nfsycn = true", "fsycn"),
            ("[auth]\nroot = \"x\"", "root"),
            ("[storage]\nx = 1", "storage"),
        ] {
            let err = ServerConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("max_connections = 0", "max_connections"),
            ("max_connections = 100000", "max_connections"),
            ("synchronous_commit = \"sometimes\"", "sometimes"),
            ("[engine]\ncheckpoint_interval = \"5 minutes\"", "5 minutes"),
            ("[engine]\ncheckpoint_interval = \"0s\"", "checkpoint_interval"),
            ("[engine]\nsegment_size_bytes = 1000", "segment_size_bytes"),
            ("[engine]\ncheckpoint_wal_bytes = 0", "checkpoint_wal_bytes"),
            ("listen = 7340", "listen"),
        ] {
            let err = ServerConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = ServerConfig::from_toml("[auth]\nadmin = \"hunter2\"").unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hindsight.toml");
        std::fs::write(&path, "max_connections = 2\n").unwrap();
        assert_eq!(ServerConfig::load(&path).unwrap().max_connections, 2);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("hindsight.toml") && err.contains("bogus"), "{err}");
        let err = ServerConfig::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn docs_describe_every_setting() {
        let doc = include_str!("../../docs/configuration.md");
        for key in [
            "listen",
            "max_connections",
            "synchronous_commit",
            "synchronous_standbys",
            "max_slot_wal_keep_bytes",
            "max_slot_wal_keep_size",
            "transparent_huge_pages",
            "engine.fsync",
            "engine.checkpoint_wal_bytes",
            "engine.checkpoint_interval",
            "engine.version_retention",
            "engine.segment_size_bytes",
            "auth.admin",
            "auth.replication",
            "auth.readonly",
        ] {
            assert!(doc.contains(&format!("`{key}`")), "docs/configuration.md does not describe `{key}`");
        }
    }
}
