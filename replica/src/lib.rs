//! The replica: a standby that follows a primary (or another replica) live and serves
//! read-only queries while it does.
//!
//! - [`bootstrap`]: an empty data directory becomes a replica's from a base backup streamed over
//!   the protocol (snapshot at an Lsn, the WAL segment prefix before it, the role secrets).
//! - [`receiver`]: the WAL receiver. It streams from the upstream's WAL sender, hands every
//!   slice to the engine's standby committer ([`hindsight_engine::Database::apply_wal`]), which
//!   writes it at the same Lsns, replays it, flushes and publishes it, and reports the Lsn
//!   ladder back after every publish. It reconnects with capped exponential backoff.
//! - [`host`]: `SHOW RECOVERY` (and, for replicas of this replica, `SHOW REPLICATION`).
//!
//! Sessions are served by the primary crate's server on the standby database: every query
//! reads the MVCC snapshot at the replay Lsn it started at; replay never waits for queries and
//! never cancels them (old versions stay while a reader needs them). Writes get `read_only`.
//!
//! Data enters as WAL bytes from the upstream and leaves as query results, as WAL for cascaded
//! replicas, and as acknowledgements upstream.

pub mod bootstrap;
pub mod host;
pub mod receiver;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hindsight_engine::Database;
use hindsight_primary::auth::{AdminSecretSource, Authenticator};
use hindsight_primary::config::ServerConfig;
use hindsight_primary::server::{Server, ServerHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use receiver::{RecoveryState, StatusReporter};

/// What a replica needs to know.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The data directory: empty (bootstrap) or a replica's (resume).
    pub data_dir: PathBuf,
    /// The upstream server's address.
    pub primary: String,
    /// The role to log in upstream as (`replication` or `admin`).
    pub role: String,
    /// Its secret.
    pub password: String,
    /// A replication slot on the upstream, created beforehand with CREATE REPLICATION SLOT.
    pub slot: Option<String>,
    /// This standby's name upstream (matched against `synchronous_standbys`).
    pub name: String,
    /// The server settings: listen address, connection limit, engine settings.
    pub server: ServerConfig,
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bootstrap failed.
    #[error("bootstrap from {primary}: {detail}")]
    Bootstrap {
        /// The upstream.
        primary: String,
        /// What failed.
        detail: String,
    },
    /// The data directory cannot be used.
    #[error("{0}")]
    DataDir(String),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] hindsight_engine::Error),
    /// The server could not start.
    #[error(transparent)]
    Server(#[from] hindsight_primary::Error),
}

/// A running replica.
pub struct ReplicaHandle {
    server: ServerHandle,
    receiver: Option<JoinHandle<()>>,
    stop_receiver: CancellationToken,
    state: Arc<RecoveryState>,
}

impl ReplicaHandle {
    /// The address sessions connect to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The cluster's system id.
    pub fn system_id(&self) -> u64 {
        self.server.system_id()
    }

    /// The standby database.
    pub fn database(&self) -> &Arc<Database> {
        self.server.database()
    }

    /// The receiver's state.
    pub fn recovery(&self) -> &Arc<RecoveryState> {
        &self.state
    }

    /// Stops the receiver, then the server (draining sessions), then the database.
    pub async fn shutdown(mut self) {
        self.stop_receiver.cancel();
        if let Some(r) = self.receiver.take() {
            let _ = r.await;
        }
        self.server.shutdown().await;
    }
}

/// Starts a replica: bootstraps an empty directory (or resumes a replica's), opens the standby
/// database, serves sessions, and follows the upstream. Returns once it serves queries.
pub async fn start(config: ReplicaConfig) -> Result<ReplicaHandle, Error> {
    let dir = config.data_dir.clone();
    let state = Arc::new(RecoveryState::new(&config.primary));
    let (connection, loaded) = if dir.join("control").exists() {
        (None, None)
    } else {
        bootstrap::prepare_dir(&dir)?;
        state.set_phase("bootstrapping");
        let (upstream, loaded) = bootstrap::bootstrap(&config).await?;
        (Some(upstream), Some(loaded))
    };
    let engine_config = config.server.engine_config();
    let open_dir = dir.clone();
    let db = tokio::task::spawn_blocking(move || match loaded {
        Some(loaded) => Database::open_standby_loaded(&open_dir, engine_config, loaded),
        None => Database::open_standby(&open_dir, engine_config),
    })
    .await
    .map_err(|e| Error::DataDir(format!("open the standby database: {e}")))??;
    let auth = load_roles(&dir)?;
    let host_state = Arc::clone(&state);
    let host_db = Arc::clone(&db);
    let server = Server::serve(
        Arc::clone(&db),
        auth,
        AdminSecretSource::Config,
        &dir,
        config.server.clone(),
        move |replication| Arc::new(host::ReplicaHost::new(host_db, host_state, replication)),
    )
    .await?;
    // The report upstream after each publish is written on the flusher thread, right away.
    let reporter = StatusReporter::new(&db);
    let on_publish = Arc::clone(&reporter);
    db.add_publish_hook(Arc::new(move |_| on_publish.report()));
    let stop_receiver = CancellationToken::new();
    let receiver = tokio::spawn(receiver::run(
        db,
        config,
        Arc::clone(&state),
        reporter,
        connection,
        stop_receiver.clone(),
    ));
    Ok(ReplicaHandle { server, receiver: Some(receiver), stop_receiver, state })
}

fn load_roles(dir: &Path) -> Result<Authenticator, Error> {
    Authenticator::load(dir).map_err(|e| {
        Error::DataDir(format!(
            "{e}; a replica's data directory holds its primary's roles (from the base backup)"
        ))
    })
}
