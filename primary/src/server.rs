//! The server: opens the database, accepts connections, and shuts down cleanly.
//!
//! One accept loop owns the listener. Each accepted connection is served on a thread of its own
//! (see [`crate::connection`] and docs/decisions.md #21), holding one permit of the connection
//! semaphore, so at most `max_connections` are served at once; a connection beyond that is told
//! `too_many_connections` by a small, separately bounded pool of rejecting tasks, and beyond
//! that pool it is simply closed.
//!
//! Shutdown ([`ServerHandle::shutdown`]) cancels one [`CancellationToken`]: the accept loop stops
//! and drops the listener, idle sessions are told `shutting_down` and closed, a running
//! statement finishes and its answer is sent first; when every connection task has ended
//! ([`TaskTracker`]) the database's committer is stopped. Every acknowledged commit is durable
//! before it is acknowledged, so nothing is flushed at shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hindsight_engine::sql::ReplicationHost;
use hindsight_engine::Database;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{AdminSecretSource, Authenticator};
use crate::config::ServerConfig;
use crate::connection::{self, Placement};
use crate::replication::Replication;
use crate::{Error, Result};

/// The most over-limit connections being told `too_many_connections` at once. Past this,
/// further connections are closed without a reply (rule: nothing grows without bound).
pub const REJECTING_CONNECTIONS_MAX: usize = 64;

/// How long the accept loop waits after a failed `accept` (e.g. out of file descriptors)
/// before trying again, so a persistent failure does not spin a core.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How long shutdown waits for connections to finish (a running statement, an answer a slow
/// client is not reading) before it stops the database anyway. A statement still running then
/// fails with `shutdown`; nothing acknowledged is lost, because acknowledged means durable.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection task shares.
pub(crate) struct Shared {
    /// The database.
    pub db: Arc<Database>,
    /// Role and password checks.
    pub auth: Authenticator,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Connected standbys, slots and synchronous commit waits.
    pub replication: Arc<Replication>,
    /// What sessions' replication statements run against.
    pub host: Arc<dyn ReplicationHost>,
    /// The sessions' default `synchronous_commit` (a stored setting value).
    pub synchronous_commit: &'static str,
}

/// Starts servers. See [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Opens (or initialises) the database in `data_dir`, running crash recovery, sets up the
    /// role secrets (making `data_dir/admin.secret` on first start when no admin secret is
    /// configured), binds `config.listen` and starts accepting connections.
    ///
    /// Must be called inside a multi-threaded tokio runtime. Fails when the configuration is
    /// invalid, the directory is locked by another process or is not a hindsight directory,
    /// recovery finds corruption, or the address cannot be bound.
    pub async fn start(data_dir: &Path, config: ServerConfig) -> Result<ServerHandle> {
        config.validate()?;
        let dir = data_dir.to_path_buf();
        let engine_config = config.engine_config();
        // Recovery reads and replays WAL: blocking work that must not stall the executor.
        let db = tokio::task::spawn_blocking(move || Database::open(&dir, engine_config))
            .await
            .map_err(|e| Error::io("open the database", std::io::Error::other(e)))??;
        // The database initialises an empty directory first (it refuses to initialise over
        // foreign files), so the admin secret is written only after it opened.
        let (auth, admin_secret) = Authenticator::for_data_dir(&config.auth, data_dir)?;
        Server::serve(db, auth, admin_secret, data_dir, config, |replication| replication).await
    }

    /// Serves an open database: binds `config.listen` and accepts sessions and replication
    /// connections. A primary comes here from [`Server::start`]; a replica with its standby
    /// database, its primary's roles and its own SQL host (`host` wraps the replication
    /// registry, for SHOW RECOVERY).
    pub async fn serve(
        db: Arc<Database>,
        auth: Authenticator,
        admin_secret: AdminSecretSource,
        data_dir: &Path,
        config: ServerConfig,
        host: impl FnOnce(Arc<Replication>) -> Arc<dyn ReplicationHost>,
    ) -> Result<ServerHandle> {
        match &admin_secret {
            AdminSecretSource::Created(path) => tracing::info!(
                path = %path.display(),
                "wrote a new admin secret (mode 0600); log in as role admin with the file's content"
            ),
            AdminSecretSource::File(path) => tracing::debug!(path = %path.display(), "admin secret read"),
            AdminSecretSource::Config => tracing::debug!("admin secret from the configuration"),
        }
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::io(format!("listen on {}", config.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("read the address of {}", config.listen), e))?;
        let replication = Replication::new(Arc::clone(&db), data_dir, &config.synchronous_standbys)?;
        // Weak: the registry holds the database, so a strong reference here would be a cycle
        // that keeps the database (and its directory lock) alive after shutdown.
        let on_publish = Arc::downgrade(&replication);
        db.add_publish_hook(Arc::new(move |lsn| {
            if let Some(replication) = on_publish.upgrade() {
                replication.on_published(lsn);
            }
        }));
        // Only a primary's committer calls it: a replica sends only what its upstream confirmed.
        let on_written = Arc::downgrade(&replication);
        db.add_written_hook(Arc::new(move |_| {
            if let Some(replication) = on_written.upgrade() {
                replication.on_written();
            }
        }));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            db: Arc::clone(&db),
            auth,
            shutdown: shutdown.clone(),
            host: host(Arc::clone(&replication)),
            replication: Arc::clone(&replication),
            synchronous_commit: config.synchronous_commit.as_str(),
        });
        let accept = AcceptLoop {
            listener,
            shared,
            tracker: tracker.clone(),
            connection_permits: Arc::new(Semaphore::new(config.max_connections)),
            reject_permits: Arc::new(Semaphore::new(REJECTING_CONNECTIONS_MAX)),
            max_connections: config.max_connections,
        };
        let accept_task =
            tokio::spawn(accept.run().instrument(tracing::info_span!("server", addr = %local_addr)));
        tracing::info!(
            addr = %local_addr,
            system_id = format!("{:016X}", db.system_id()),
            max_connections = config.max_connections,
            "accepting connections"
        );
        Ok(ServerHandle {
            local_addr,
            db,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            tracker,
            accept_task: Some(accept_task),
            admin_secret,
            replication,
        })
    }
}

/// A running server. Dropping it without [`ServerHandle::shutdown`] stops accepting and closes
/// idle sessions, but does not wait for them or stop the database's committer until the last
/// reference to the database is gone.
pub struct ServerHandle {
    local_addr: SocketAddr,
    db: Arc<Database>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    accept_task: Option<JoinHandle<()>>,
    admin_secret: AdminSecretSource,
    replication: Arc<Replication>,
}

impl ServerHandle {
    /// The replication registry (standbys, slots, synchronous waits).
    pub fn replication(&self) -> &Arc<Replication> {
        &self.replication
    }

    /// The address the server listens on (with the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The cluster's system id.
    pub fn system_id(&self) -> u64 {
        self.db.system_id()
    }

    /// The open database.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the admin secret came from.
    pub fn admin_secret_source(&self) -> &AdminSecretSource {
        &self.admin_secret
    }

    /// Stops the server: no new connections, idle sessions told `shutting_down` and closed,
    /// running statements finished and answered, then the database's committer stopped.
    pub async fn shutdown(mut self) {
        tracing::info!(addr = %self.local_addr, "shutting down");
        self.shutdown.cancel();
        // Commits waiting for synchronous standbys are answered now (committed locally, not
        // confirmed), so their sessions finish instead of sleeping through the drain.
        self.replication.end_waits();
        if let Some(task) = self.accept_task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the accept loop failed");
            }
        }
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = self.tracker.len(),
                "connections still busy after {SHUTDOWN_DRAIN_TIMEOUT:?}; stopping the database anyway"
            );
        }
        let db = Arc::clone(&self.db);
        if let Err(e) = tokio::task::spawn_blocking(move || db.shutdown()).await {
            tracing::error!(error = %e, "stopping the database failed");
        }
        tracing::info!(addr = %self.local_addr, "stopped");
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("system_id", &format_args!("{:016X}", self.db.system_id()))
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.replication.end_waits();
    }
}

/// The accept loop's state; it owns the listener.
struct AcceptLoop {
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// One permit per connection being served.
    connection_permits: Arc<Semaphore>,
    /// One permit per over-limit connection being told so.
    reject_permits: Arc<Semaphore>,
    max_connections: usize,
}

impl AcceptLoop {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.dispatch(stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::select! {
                        () = self.shared.shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
        // Dropping the listener here refuses new connections while the sessions drain.
        drop(self.listener);
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let span = tracing::info_span!("connection", peer = %peer);
        if let Ok(permit) = Arc::clone(&self.connection_permits).try_acquire_owned() {
            let Err((stream, permit)) = self.serve_on_own_thread(stream, peer, permit, span.clone()) else {
                return;
            };
            let shared = Arc::clone(&self.shared);
            let serve = connection::serve(shared, stream, peer, permit, Placement::SharedRuntime);
            self.tracker.spawn(serve.instrument(span));
            return;
        }
        match Arc::clone(&self.reject_permits).try_acquire_owned() {
            Ok(permit) => {
                let max_connections = self.max_connections;
                let shutdown = self.shared.shutdown.clone();
                self.tracker
                    .spawn(reject_over_limit(stream, max_connections, shutdown, permit).instrument(span));
            }
            Err(_) => {
                let _span = span.entered();
                tracing::warn!(
                    "connection limit reached and {REJECTING_CONNECTIONS_MAX} refusals already pending; \
                     closing without a reply"
                );
            }
        }
    }
}

impl AcceptLoop {
    /// Serves a connection on a thread of its own running a current-thread runtime for the
    /// connection's I/O: its statements run where its queries are read and a commit's wait
    /// blocks only that thread. As a task on the shared multi-threaded runtime, every query
    /// handed the worker to another thread and back (`block_in_place`), several context
    /// switches per commit on a machine where those are what a commit costs. Threads are
    /// bounded by the connection permits. Gives the connection back when no thread can be
    /// started, to be served as a task.
    fn serve_on_own_thread(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        span: tracing::Span,
    ) -> std::result::Result<(), (TcpStream, OwnedSemaphorePermit)> {
        // The thread starts first and gets the socket once it runs, so that a failed start
        // leaves the connection here to be served another way.
        let (socket_tx, socket_rx) =
            std::sync::mpsc::sync_channel::<(std::net::TcpStream, OwnedSemaphorePermit)>(1);
        let shared = Arc::clone(&self.shared);
        // Tracked from now on: shutdown waits for the thread to finish serving.
        let token = self.tracker.token();
        let spawned = std::thread::Builder::new().name("hindsight-conn".into()).spawn(move || {
            let _tracked = token;
            let Ok((socket, permit)) = socket_rx.recv() else { return };
            let _span = span.enter();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "could not start a connection's runtime; closing it");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpStream::from_std(socket) {
                    Ok(stream) => connection::serve(shared, stream, peer, permit, Placement::OwnThread).await,
                    Err(e) => tracing::error!(error = %e, "could not register a connection; closing it"),
                }
            });
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a connection thread; serving it as a task");
            return Err((stream, permit));
        }
        match stream.into_std() {
            // The thread is waiting for it (it ends only after a receive).
            Ok(socket) => drop(socket_tx.send((socket, permit))),
            // The thread sees the channel close and ends.
            Err(e) => tracing::error!(error = %e, "could not hand a connection to its thread; closing it"),
        }
        Ok(())
    }
}

async fn reject_over_limit(
    stream: TcpStream,
    max_connections: usize,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    tracing::warn!(max_connections, "refusing a connection: the server is at its connection limit");
    connection::refuse_over_limit(stream, max_connections, shutdown).await;
}
