//! One worker's connections to one backend.
//!
//! deadpool manages the connections' lifecycle (create with a connect timeout, recycle only
//! live ones, at most `server_connections`). Its objects are cheap handles to multiplexed
//! connection tasks, so a checkout lasts only long enough to clone the handle: many clients
//! share each connection, and a client keeps its handle (and so its request order) until
//! that connection ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolError, QueueMode, RecycleResult, Timeouts};
use tokio::time::Instant;

use super::connection::{connect, ConnHandle, ConnSettings, Retire};
use super::Backend;
use crate::error::UpstreamError;

/// Creates and checks connection handles for deadpool.
pub struct ConnManager {
    addr: SocketAddr,
    retire: Arc<Retire>,
    backend: Arc<Backend>,
    settings: ConnSettings,
}

impl managed::Manager for ConnManager {
    type Type = ConnHandle;
    type Error = std::io::Error;

    async fn create(&self) -> Result<ConnHandle, std::io::Error> {
        connect(
            self.addr,
            self.settings.clone(),
            self.backend.clone(),
            self.retire.clone(),
        )
        .await
    }

    async fn recycle(&self, conn: &mut ConnHandle, _: &Metrics) -> RecycleResult<std::io::Error> {
        if conn.is_closed() {
            Err(managed::RecycleError::message("connection ended"))
        } else {
            Ok(())
        }
    }
}

/// First and longest pause between connection attempts to a failing backend.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One worker's connections to one backend.
pub struct Connections {
    backend: Arc<Backend>,
    /// deadpool's pool of connection handles.
    handles: Pool<ConnManager>,
    connect_timeout: Duration,
    /// While set and in the future, requests fail at once instead of trying to connect.
    backoff: Mutex<Option<(Instant, Duration)>>,
    /// Shared with these connections.
    retire: Arc<Retire>,
}

/// Why no handle could be had.
enum Failure {
    /// Connecting failed: the backend is down.
    Connect(String),
    /// Every connection was held by others for the whole wait.
    Busy,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("backend", &self.backend.name)
            .field("status", &self.handles.status())
            .finish()
    }
}

impl Connections {
    /// At most `connections` connections to `backend`; nothing is opened yet.
    pub fn new(
        addr: SocketAddr,
        backend: Arc<Backend>,
        settings: ConnSettings,
        connections: usize,
    ) -> Self {
        let retire = Arc::new(Retire::default());
        let connect_timeout = settings.connect_timeout;
        let handles = Pool::builder(ConnManager {
            addr,
            retire: retire.clone(),
            backend: backend.clone(),
            settings,
        })
        .max_size(connections.max(1))
        .queue_mode(QueueMode::Fifo)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is configured");
        Connections {
            backend,
            handles,
            retire,
            connect_timeout,
            backoff: Mutex::new(None),
        }
    }

    /// The backend left the configuration: no new connections; the open ones finish what
    /// is in flight and close, even while clients still hold handles to them.
    pub fn retire(&self) {
        self.handles.close();
        self.retire.retire();
    }

    /// A handle to a live connection, opening connections up to `server_connections` first so
    /// that clients spread over all of them (FIFO checkout then rotates through them).
    pub async fn handle(&self) -> Result<ConnHandle, UpstreamError> {
        if let Some((until, _)) = *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) {
            // Another worker reaching the backend since ends this worker's pause too.
            if Instant::now() < until && !self.backend.is_up() {
                return Err(UpstreamError::Unavailable);
            }
        }
        let status = self.handles.status();
        let result = match status.size < status.max_size {
            true => self.grow().await,
            false => Ok(None),
        };
        let result = match result {
            Ok(Some(h)) => Ok(h),
            // Every connection exists (or is being created by another client): share one.
            Ok(None) => self.checkout(Some(self.connect_timeout)).await,
            Err(e) => Err(e),
        };
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(h) => {
                *backoff = None;
                self.backend.set_up(true, &"connected");
                Ok(h)
            }
            Err(Failure::Busy) => Err(UpstreamError::Unavailable),
            Err(Failure::Connect(e)) => {
                self.backend.stats.connect_failures.inc();
                self.backend.record_failure();
                self.backend.set_up(false, &e);
                let pause = backoff.map_or(BACKOFF_MIN, |(_, p)| (p * 2).min(BACKOFF_MAX));
                *backoff = Some((Instant::now() + pause, pause));
                Err(UpstreamError::Unavailable)
            }
        }
    }

    async fn checkout(&self, wait: Option<Duration>) -> Result<ConnHandle, Failure> {
        let timeouts = Timeouts {
            wait,
            create: Some(self.connect_timeout),
            recycle: None,
        };
        match self.handles.timeout_get(&timeouts).await {
            Ok(obj) => Ok((*obj).clone()),
            Err(PoolError::Backend(e)) => Err(Failure::Connect(e.to_string())),
            Err(PoolError::Timeout(deadpool::managed::TimeoutType::Create)) => {
                Err(Failure::Connect("connect timed out".into()))
            }
            Err(_) => Err(Failure::Busy),
        }
    }

    /// Holds checked-out objects while asking for more, which makes deadpool create them.
    async fn grow(&self) -> Result<Option<ConnHandle>, Failure> {
        let mut held = Vec::new();
        while held.len() < self.handles.status().max_size {
            let timeouts = Timeouts {
                wait: Some(Duration::ZERO),
                create: Some(self.connect_timeout),
                recycle: None,
            };
            match self.handles.timeout_get(&timeouts).await {
                Ok(obj) => held.push(obj),
                Err(PoolError::Backend(e)) if held.is_empty() => {
                    return Err(Failure::Connect(e.to_string()))
                }
                // Others hold the rest right now, or one more failed: use what we have.
                Err(_) => break,
            }
        }
        Ok(held.first().map(|obj| (**obj).clone()))
    }
}
