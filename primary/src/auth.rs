//! Roles, their secrets, and checking a `Startup`'s role and password.
//!
//! Three fixed roles:
//!
//! | role          | sessions                  | replication connections |
//! |---------------|---------------------------|-------------------------|
//! | `admin`       | everything                | yes                     |
//! | `replication` | read-only queries         | yes                     |
//! | `readonly`    | read-only queries         | no                      |
//!
//! A role logs in with its secret from the `[auth]` table of the configuration. A role with no
//! secret cannot log in, except `admin`: without a configured secret the server uses
//! `DATA_DIR/admin.secret`, and writes a random one there (mode 0600) on first start.
//!
//! Passwords are compared in constant time, and an unknown role costs the same comparisons as a
//! known one, so neither the timing nor the reply (`invalid_password` in both cases) tells an
//! attacker which roles exist or how much of a password was right.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::AuthConfig;
use crate::{Error, Result};

/// The file in a replica's data directory holding its primary's role secrets (from the base
/// backup), so one password works on both.
pub const ROLES_FILE: &str = "roles";

/// A role name quoted in an error, cut short.
fn clip_name(name: &str) -> String {
    name.chars().take(32).collect()
}

/// The file in the data directory holding the admin secret when none is configured.
pub const ADMIN_SECRET_FILE: &str = "admin.secret";

/// Random bytes in a generated admin secret (written as twice as many hex digits).
pub const ADMIN_SECRET_RANDOM_BYTES: usize = 32;

/// The longest secret accepted, in bytes, from the configuration or `admin.secret`.
pub const SECRET_LEN_MAX: usize = 4096;

/// What a connection is allowed to do, decided once at authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: reads, writes, DDL, administration, replication.
    Admin,
    /// Replication connections (WAL streaming, base backups) and read-only queries.
    Replication,
    /// Read-only queries.
    ReadOnly,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Replication, Role::ReadOnly];

    /// The role's name as clients send it in `Startup.role`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Replication => "replication",
            Role::ReadOnly => "readonly",
        }
    }

    /// The role of a name, if it is one.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// Whether the role's sessions may change data (otherwise they are read-only).
    pub fn may_write(self) -> bool {
        self == Role::Admin
    }

    /// Whether the role may open replication connections.
    pub fn may_replicate(self) -> bool {
        matches!(self, Role::Admin | Role::Replication)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Compares two byte strings in time that depends only on their lengths, never on where they
/// differ. (The length of a secret is not treated as secret: generated ones are all 64 bytes.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    // Fold every byte pair, padding the shorter input with zeros, so the loop always runs over
    // the longer length and has no data-dependent exit.
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Where the admin secret came from, for the startup log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminSecretSource {
    /// `auth.admin` in the configuration.
    Config,
    /// An existing `admin.secret` file.
    File(PathBuf),
    /// A new `admin.secret` file written on this start.
    Created(PathBuf),
}

/// Checks role names and passwords.
///
/// Invariants: every secret is non-empty and at most [`SECRET_LEN_MAX`] bytes; roles without a
/// secret can never authenticate.
#[derive(Clone)]
pub struct Authenticator {
    /// One entry per role in [`Role::ALL`] order.
    secrets: [(Role, Option<Vec<u8>>); 3],
}

/// Secrets never reach logs.
impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<&str> =
            self.secrets.iter().filter(|(_, secret)| secret.is_some()).map(|(role, _)| role.name()).collect();
        f.debug_struct("Authenticator").field("roles_with_secrets", &roles).finish()
    }
}

impl Authenticator {
    /// An authenticator with these secrets; `None` disables a role.
    pub fn new(
        admin: Option<&str>,
        replication: Option<&str>,
        readonly: Option<&str>,
    ) -> Result<Authenticator> {
        let check = |role: Role, secret: Option<&str>| -> Result<Option<Vec<u8>>> {
            match secret {
                None => Ok(None),
                Some("") => Err(Error::config(format!(
                    "auth.{role} is empty; give it a secret or remove the line to disable the role"
                ))),
                Some(secret) if secret.len() > SECRET_LEN_MAX => Err(Error::config(format!(
                    "auth.{role} is {} bytes long, more than the limit of {SECRET_LEN_MAX}",
                    secret.len()
                ))),
                Some(secret) => Ok(Some(secret.as_bytes().to_vec())),
            }
        };
        Ok(Authenticator {
            secrets: [
                (Role::Admin, check(Role::Admin, admin)?),
                (Role::Replication, check(Role::Replication, replication)?),
                (Role::ReadOnly, check(Role::ReadOnly, readonly)?),
            ],
        })
    }

    /// The authenticator for a server: the configured secrets, with the admin secret read
    /// from (or created in) `data_dir/admin.secret` when the configuration has none.
    pub fn for_data_dir(auth: &AuthConfig, data_dir: &Path) -> Result<(Authenticator, AdminSecretSource)> {
        let (admin, source) = match &auth.admin {
            Some(secret) => (secret.clone(), AdminSecretSource::Config),
            None => load_or_create_admin_secret(data_dir)?,
        };
        let authenticator =
            Authenticator::new(Some(&admin), auth.replication.as_deref(), auth.readonly.as_deref())?;
        Ok((authenticator, source))
    }

    /// The secrets as `role=secret` lines, for a base backup: a replica accepts the same
    /// credentials as its primary.
    pub fn export(&self) -> String {
        let mut out = String::new();
        for (role, secret) in &self.secrets {
            if let Some(secret) = secret {
                out.push_str(role.name());
                out.push('=');
                out.push_str(&String::from_utf8_lossy(secret));
                out.push('\n');
            }
        }
        out
    }

    /// Reads what [`Authenticator::export`] wrote.
    pub fn import(text: &str) -> Result<Authenticator> {
        let mut secrets: [Option<&str>; 3] = [None; 3];
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (name, secret) = line
                .split_once('=')
                .ok_or_else(|| Error::config("the roles file has a line without `role=secret`"))?;
            let role = Role::from_name(name).ok_or_else(|| {
                Error::config(format!("the roles file names an unknown role \"{}\"", clip_name(name)))
            })?;
            secrets[role as usize] = Some(secret);
        }
        Authenticator::new(secrets[0], secrets[1], secrets[2])
    }

    /// Writes the secrets to `dir/ROLES_FILE` (mode 0600, temp → fsync → rename → fsync dir).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(ROLES_FILE);
        let tmp = dir.join(format!("{ROLES_FILE}.tmp"));
        let io = |e| Error::io(format!("write {}", path.display()), e);
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        file.write_all(self.export().as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Reads `dir/ROLES_FILE`.
    pub fn load(dir: &Path) -> Result<Authenticator> {
        let path = dir.join(ROLES_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Authenticator::import(&text)
    }

    /// The role `role_name` authenticated by `password`, or `None` for an unknown role, a role
    /// without a secret, or a wrong password. Every call compares against every role's secret,
    /// so the time taken does not depend on which of these it was.
    pub fn authenticate(&self, role_name: &str, password: &str) -> Option<Role> {
        // A stand-in for roles without a secret: compared against but never accepted.
        const NO_SECRET: &[u8] = &[0u8; 64];
        let mut found = None;
        for (role, secret) in &self.secrets {
            let name_matches = constant_time_eq(role_name.as_bytes(), role.name().as_bytes());
            let password_matches =
                constant_time_eq(password.as_bytes(), secret.as_deref().unwrap_or(NO_SECRET));
            if name_matches & password_matches & secret.is_some() {
                found = Some(*role);
            }
        }
        found
    }
}

/// Reads `dir/admin.secret`, or writes a new random one there (mode 0600) when it is missing.
pub fn load_or_create_admin_secret(dir: &Path) -> Result<(String, AdminSecretSource)> {
    let path = dir.join(ADMIN_SECRET_FILE);
    let secret = format!("{}\n", random_hex(ADMIN_SECRET_RANDOM_BYTES));
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
            // The new directory entry must survive a crash too, or the next start would make
            // another secret and lock out everyone who saved this one.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("sync directory {}", dir.display()), e))?;
            Ok((secret.trim_end().to_string(), AdminSecretSource::Created(path)))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let secret = read_secret_file(&path)?;
            Ok((secret, AdminSecretSource::File(path)))
        }
        Err(e) => Err(Error::io(format!("create {}", path.display()), e)),
    }
}

/// Reads a secret file: its content without surrounding whitespace, refused when empty or
/// oversized. Warns when other users may read it.
pub fn read_secret_file(path: &Path) -> Result<String> {
    let error = |detail: String| Error::Config { path: Some(path.to_path_buf()), detail };
    let metadata = std::fs::metadata(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    if metadata.len() > SECRET_LEN_MAX as u64 {
        return Err(error(format!("the secret file is longer than {SECRET_LEN_MAX} bytes")));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the secret file is readable by other users; restrict it with chmod 600"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(error("the secret file is empty; delete it to have a new secret made".into()));
    }
    Ok(secret.to_string())
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret\0"));
        assert!(!constant_time_eq(b"secret\0", b"secret"));
        assert!(!constant_time_eq(b"", b"\0"));
        assert!(!constant_time_eq(b"a", b""));
        for a in 0u8..=255 {
            assert_eq!(constant_time_eq(&[a], &[7]), a == 7);
        }
    }

    #[test]
    fn roles_authenticate_with_their_own_secret_only() {
        let auth = Authenticator::new(Some("adm"), Some("rep"), None).unwrap();
        assert_eq!(auth.authenticate("admin", "adm"), Some(Role::Admin));
        assert_eq!(auth.authenticate("replication", "rep"), Some(Role::Replication));
        assert_eq!(auth.authenticate("admin", "rep"), None);
        assert_eq!(auth.authenticate("replication", "adm"), None);
        assert_eq!(auth.authenticate("admin", ""), None);
        assert_eq!(auth.authenticate("admin", "adm "), None);
        assert_eq!(auth.authenticate("Admin", "adm"), None);
        assert_eq!(auth.authenticate("root", "adm"), None);
        // No secret: the role is disabled, whatever is sent (the stand-in included).
        assert_eq!(auth.authenticate("readonly", ""), None);
        assert_eq!(auth.authenticate("readonly", &"\0".repeat(64)), None);
    }

    #[test]
    fn empty_and_oversized_secrets_are_refused() {
        let err = Authenticator::new(Some(""), None, None).unwrap_err().to_string();
        assert!(err.contains("auth.admin"), "{err}");
        let long = "x".repeat(SECRET_LEN_MAX + 1);
        let err = Authenticator::new(None, None, Some(&long)).unwrap_err().to_string();
        assert!(err.contains("auth.readonly"), "{err}");
    }

    #[test]
    fn role_permissions() {
        assert!(Role::Admin.may_write() && Role::Admin.may_replicate());
        assert!(!Role::Replication.may_write() && Role::Replication.may_replicate());
        assert!(!Role::ReadOnly.may_write() && !Role::ReadOnly.may_replicate());
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("superuser"), None);
    }

    #[test]
    fn admin_secret_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, source) = load_or_create_admin_secret(dir.path()).unwrap();
        let path = dir.path().join(ADMIN_SECRET_FILE);
        assert_eq!(source, AdminSecretSource::Created(path.clone()));
        assert_eq!(secret.len(), 2 * ADMIN_SECRET_RANDOM_BYTES);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, source) = load_or_create_admin_secret(dir.path()).unwrap();
        assert_eq!(again, secret);
        assert_eq!(source, AdminSecretSource::File(path));
    }

    #[test]
    fn configured_admin_secret_leaves_the_directory_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig { admin: Some("configured".into()), ..AuthConfig::default() };
        let (auth, source) = Authenticator::for_data_dir(&config, dir.path()).unwrap();
        assert_eq!(source, AdminSecretSource::Config);
        assert_eq!(auth.authenticate("admin", "configured"), Some(Role::Admin));
        assert!(!dir.path().join(ADMIN_SECRET_FILE).exists());
    }

    #[test]
    fn an_empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ADMIN_SECRET_FILE), "\n").unwrap();
        let err = load_or_create_admin_secret(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let auth = Authenticator::new(Some("hunter2"), None, None).unwrap();
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2") && shown.contains("admin"), "{shown}");
    }
}
