//! Replicated soak: when each backend restarted, seen directly, for the final check's "up
//! since that write". A prober keeps a sentinel key (of this run, not a soak key) on each
//! backend and reads it every `PROBE_EVERY`: a miss means a new, empty incarnation. The
//! restart is dated when that miss is read, so after the new process started: a write sent
//! later reached that incarnation (a write sent between its start and the probe is taken as
//! possibly lost, the safe side). Restarts are counted when the incarnation before held the
//! sentinel, so a kill and restart counts once however long the backend was down.

use super::bookkeeping::Soak;
use crate::protocol::{connect, frame_get, frame_line, line, RBuf};
use crate::shared::lock;
use crate::values::format_hex8;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const PROBE_EVERY: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One backend's restarts.
#[derive(Default)]
pub struct Watch {
    /// Restarts seen.
    pub restarts: AtomicU64,
    /// When the last one was seen (none: the backend served the whole run from one process,
    /// as far as the probes saw).
    last_restart: Mutex<Option<Instant>>,
}

impl Watch {
    pub fn last_restart(&self) -> Option<Instant> {
        *lock(&self.last_restart)
    }
}

/// A prober's view of its backend.
struct Prober {
    addr: String,
    key: Vec<u8>,
    conn: Option<(TcpStream, RBuf)>,
    /// An incarnation was seen (the first one is the run's start, not a restart).
    known: bool,
    /// The current incarnation holds the sentinel.
    stored: bool,
}

impl Prober {
    /// One probe: reads the sentinel, sets it on a new incarnation. A failure drops the
    /// connection (the backend is down or restarting); the next probe reconnects.
    async fn probe(&mut self, w: &Watch) {
        if self.probe_inner(w).await.is_err() {
            self.conn = None;
        }
    }

    async fn probe_inner(&mut self, w: &Watch) -> Result<(), ()> {
        if self.conn.is_none() {
            let s = timeout(PROBE_TIMEOUT, connect(&self.addr)).await;
            self.conn = Some((s.map_err(|_| ())?.map_err(|_| ())?, RBuf::new()));
        }
        let (s, rb) = self.conn.as_mut().expect("connected");
        let mut deadline = Box::pin(sleep(PROBE_TIMEOUT));
        let mut w_buf = b"get ".to_vec();
        w_buf.extend_from_slice(&self.key);
        w_buf.extend_from_slice(b"\r\n");
        s.write_all(&w_buf).await.map_err(|_| ())?;
        let len = rb
            .next_frame(s, &mut deadline, frame_get)
            .await
            .map_err(|_| ())?;
        let miss = &rb.data()[..len] == b"END\r\n";
        rb.consume(len);
        if !miss {
            self.known = true;
            return Ok(());
        }
        if self.known {
            *lock(&w.last_restart) = Some(Instant::now());
            if self.stored {
                w.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.known = true;
        self.stored = false;
        w_buf.clear();
        w_buf.extend_from_slice(b"set ");
        w_buf.extend_from_slice(&self.key);
        w_buf.extend_from_slice(b" 0 0 1\r\n1\r\n");
        s.write_all(&w_buf).await.map_err(|_| ())?;
        let len = rb
            .next_frame(s, &mut deadline, frame_line)
            .await
            .map_err(|_| ())?;
        self.stored = line(rb.data()).is_some_and(|(l, _)| l == b"STORED");
        rb.consume(len);
        Ok(())
    }
}

/// Probes server `i` until the run ends, then once more (so that the final check knows of
/// every restart before it).
pub async fn watch_backend(sk: std::sync::Arc<Soak>, i: usize) {
    let Some(addr) = sk.servers[i].addr else {
        return;
    };
    let mut key = b"soak:sentinel:".to_vec();
    key.extend_from_slice(&format_hex8(sk.sh.run_id));
    let mut p = Prober {
        addr: addr.to_string(),
        key,
        conn: None,
        known: false,
        stored: false,
    };
    while Instant::now() < sk.end {
        p.probe(&sk.watch[i]).await;
        sleep(PROBE_EVERY).await;
    }
    p.probe(&sk.watch[i]).await;
}
