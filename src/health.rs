//! Backend health: twemproxy's ejection (`auto_eject_hosts`, `server_failure_limit`,
//! `server_retry_timeout`). Failures are counted passively where they happen (upstream
//! connections); this watcher keeps the rings in step with who is ejected and, once an
//! ejected backend's retry timeout has passed, probes it with `version` and brings it back
//! when it answers. It ages the value sizes reply room is estimated from, and rebuilds the generation when a warm-up period ends, so the
//! connections kept only for warm-up are closed.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{Backend, Kind};
use crate::generation::{Generation, EJECTION_CHECK};
use crate::shared::Shared;

/// How long a large value keeps raising reply room estimates after it was last seen (one
/// to two periods).
const VALUE_SIZE_PERIOD: Duration = Duration::from_secs(60);

/// Runs in worker 0 until `stop`.
pub async fn watch(shared: Arc<Shared>, worker: usize, mut stop: watch::Receiver<bool>) {
    if worker != 0 {
        return;
    }
    let mut sizes_rotated = Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(EJECTION_CHECK) => {}
        }
        let generation = shared.generation();
        if sizes_rotated.elapsed() >= VALUE_SIZE_PERIOD {
            sizes_rotated = Instant::now();
            for pool in &generation.pools {
                for (backend, _) in pool.all_backends() {
                    backend.value_sizes.rotate();
                }
            }
        }
        // A finished warm-up: a rebuild drops the previous ring, and workers close the
        // connections kept only for it.
        let warm_up_over = generation.pools.iter().any(|p| {
            p.previous
                .as_ref()
                .is_some_and(|w| w.until <= Instant::now())
        });
        let mut changed = rings_out_of_date(&generation) || warm_up_over;
        for pool in &generation.pools {
            for backend in &pool.backends {
                let due = backend.ejected_until().is_some_and(|t| t <= Instant::now());
                if due && probe(backend, pool.config.connect_timeout).await {
                    changed |= backend.readmit();
                } else if due {
                    backend.extend_ejection();
                }
            }
        }
        if changed {
            shared.rebuild();
        }
    }
}

/// Whether some ring includes an ejected backend or leaves out a live one.
fn rings_out_of_date(generation: &Generation) -> bool {
    generation.pools.iter().any(|pool| {
        let on_ring = |i: usize| pool.ring_backends.contains(&i);
        let all_ejected = pool.backends.iter().all(|b| b.is_ejected());
        !all_ejected
            && pool
                .backends
                .iter()
                .enumerate()
                .any(|(i, b)| b.is_ejected() == on_ring(i))
    })
}

/// Sends `version` and expects `VERSION …` back.
async fn probe(backend: &Arc<Backend>, timeout: Duration) -> bool {
    let Kind::Remote(addr) = backend.kind else {
        return true;
    };
    let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"version\r\n")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"VERSION "))
    });
    matches!(attempt.await, Ok(Ok(true)))
}
