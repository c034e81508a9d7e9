//! The registry of open client connections that `stats conns` lists, as memcached lists
//! its own: each one's address, the listener it came in on, and how long ago it last sent a
//! command. memroute's connections to its backends are not listed; they are counted in
//! `stats backends`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::generation::Generation;

/// Every open client connection, by id.
#[derive(Debug)]
pub struct Clients {
    started: Instant,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
}

/// One client connection.
#[derive(Debug)]
pub struct ClientInfo {
    peer: SocketAddr,
    listen: SocketAddr,
    /// Seconds after the registry started when the client last sent a command.
    last_command: AtomicU64,
}

impl ClientInfo {
    /// Notes that the client sent a command now.
    pub fn touch(&self, registry: &Clients) {
        let now = registry.started.elapsed().as_secs();
        if self.last_command.load(Ordering::Relaxed) != now {
            self.last_command.store(now, Ordering::Relaxed);
        }
    }
}

/// A connection's place in the registry, given up when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<Clients>,
    info: Arc<ClientInfo>,
}

impl Registration {
    /// Notes that the client sent a command now.
    pub fn touch(&self) {
        self.info.touch(&self.registry);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            started: Instant::now(),
            // Numbers below are the listeners'.
            next: AtomicU64::new(1000),
            open: Mutex::default(),
        }
    }
}

/// memcached's form of an address: `tcp:1.2.3.4:5` or `tcp6:[::1]:5`.
fn address(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(_) => format!("tcp:{a}"),
        SocketAddr::V6(_) => format!("tcp6:{a}"),
    }
}

impl Clients {
    /// Registers a client connection from `peer` on the listener at `listen`.
    pub fn register(self: &Arc<Self>, peer: SocketAddr, listen: SocketAddr) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo {
            peer,
            listen,
            last_command: AtomicU64::new(self.started.elapsed().as_secs()),
        });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, info.clone());
        Registration {
            id,
            registry: self.clone(),
            info,
        }
    }

    /// Writes `stats conns`: the listeners, then every client connection.
    pub fn render(&self, generation: &Generation, stat: &mut dyn FnMut(&str, &dyn Display)) {
        for (i, listener) in generation.config.listeners.iter().enumerate() {
            stat(&format!("{i}:addr"), &address(&listener.listen));
            stat(&format!("{i}:state"), &"conn_listening");
        }
        let now = self.started.elapsed().as_secs();
        let open: Vec<(u64, Arc<ClientInfo>)> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, c) in open {
            stat(&format!("{id}:addr"), &address(&c.peer));
            stat(&format!("{id}:listen_addr"), &address(&c.listen));
            stat(&format!("{id}:state"), &"conn_read");
            let idle = now.saturating_sub(c.last_command.load(Ordering::Relaxed));
            stat(&format!("{id}:secs_since_last_cmd"), &idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_listed_while_open() {
        let registry = Arc::new(Clients::default());
        let a = registry.register(
            "10.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:11211".parse().unwrap(),
        );
        let b = registry.register(
            "[::1]:6000".parse().unwrap(),
            "[::1]:11211".parse().unwrap(),
        );
        a.touch();
        let render = |r: &Clients| {
            let mut out = Vec::new();
            let generation_free =
                |name: &str, value: &dyn Display| out.push(format!("{name} {value}"));
            let mut stat = generation_free;
            let open = r.open.lock().unwrap().len();
            for (id, c) in r.open.lock().unwrap().iter() {
                stat(&format!("{id}:addr"), &address(&c.peer));
            }
            (open, out)
        };
        let (open, lines) = render(&registry);
        assert_eq!(open, 2);
        assert_eq!(
            lines,
            ["1000:addr tcp:10.0.0.1:5000", "1001:addr tcp6:[::1]:6000"]
        );
        drop(b);
        assert_eq!(render(&registry).0, 1);
    }
}
