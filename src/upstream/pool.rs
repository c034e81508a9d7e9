//! A pool of pipelined connections to one backend, per worker thread.
//!
//! deadpool manages the connections' lifecycle (create with a connect timeout, recycle only
//! live ones, at most `server_connections`). A pooled object is a cheap handle to a
//! multiplexed connection task, so a checkout lasts only long enough to clone the handle:
//! many clients share each connection, and a client keeps its handle (and so its request
//! order) until that connection ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolError, QueueMode, RecycleResult, Timeouts};
use tokio::time::Instant;

use super::connection::{connect, ConnHandle, ConnSettings};
use super::BackendState;

/// Creates and checks connection handles for deadpool.
pub struct ConnManager {
    backend: Arc<BackendState>,
    settings: ConnSettings,
}

impl managed::Manager for ConnManager {
    type Type = ConnHandle;
    type Error = std::io::Error;

    async fn create(&self) -> Result<ConnHandle, std::io::Error> {
        connect(self.backend.addr, self.settings, self.backend.clone()).await
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
pub struct BackendPool {
    backend: Arc<BackendState>,
    pool: Pool<ConnManager>,
    connect_timeout: Duration,
    /// While set and in the future, requests fail at once instead of trying to connect.
    backoff: Mutex<Option<(Instant, Duration)>>,
}

/// The backend could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("backend {0} unavailable")]
pub struct Unavailable(pub String);

impl BackendPool {
    /// A pool of at most `connections` connections to `backend`; nothing is opened yet.
    pub fn new(backend: Arc<BackendState>, settings: ConnSettings, connections: usize) -> Self {
        let pool = Pool::builder(ConnManager {
            backend: backend.clone(),
            settings,
        })
        .max_size(connections.max(1))
        .queue_mode(QueueMode::Fifo)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is configured");
        BackendPool {
            backend,
            pool,
            connect_timeout: settings.connect_timeout,
            backoff: Mutex::new(None),
        }
    }

    /// The shared state of this pool's backend.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }

    /// A handle to a live connection, opening connections up to the pool's size first so
    /// that clients spread over all of them (FIFO checkout then rotates through them).
    pub async fn handle(&self) -> Result<ConnHandle, Unavailable> {
        if let Some((until, _)) = *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) {
            if Instant::now() < until {
                return Err(Unavailable(self.backend.name.clone()));
            }
        }
        let status = self.pool.status();
        let result = if status.size < status.max_size {
            self.grow().await
        } else {
            self.checkout(None).await
        };
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(h) => {
                *backoff = None;
                self.backend.set_up(true, &"connected");
                Ok(h)
            }
            Err(e) => {
                self.backend.stats.connect_failures.inc();
                self.backend.set_up(false, &e);
                let pause = backoff.map_or(BACKOFF_MIN, |(_, p)| (p * 2).min(BACKOFF_MAX));
                *backoff = Some((Instant::now() + pause, pause));
                Err(Unavailable(self.backend.name.clone()))
            }
        }
    }

    async fn checkout(&self, wait: Option<Duration>) -> Result<ConnHandle, String> {
        let timeouts = Timeouts {
            wait,
            create: Some(self.connect_timeout),
            recycle: None,
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(obj) => Ok((*obj).clone()),
            Err(PoolError::Backend(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Holds checked-out objects while asking for more, which makes deadpool create them.
    async fn grow(&self) -> Result<ConnHandle, String> {
        let mut held = Vec::new();
        let mut first_err = None;
        while held.len() < self.pool.status().max_size {
            let timeouts = Timeouts {
                wait: Some(Duration::ZERO),
                create: Some(self.connect_timeout),
                recycle: None,
            };
            match self.pool.timeout_get(&timeouts).await {
                Ok(obj) => held.push(obj),
                Err(PoolError::Backend(e)) => {
                    first_err = Some(e.to_string());
                    break;
                }
                // Others hold the rest right now; what we have is enough.
                Err(_) => break,
            }
        }
        match held.first() {
            Some(obj) => Ok((**obj).clone()),
            None => Err(first_err.unwrap_or_else(|| "no connection available".into())),
        }
    }
}
