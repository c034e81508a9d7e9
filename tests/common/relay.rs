//! A logging TCP relay on loopback: every connection accepted is relayed to an upstream
//! port, byte for byte both ways, and what the client sent is recorded, per connection
//! (used to see what a real client library puts on the wire). Its threads stop when it is
//! dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
struct Shared {
    /// What each client sent, in accept order.
    sent: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    /// Both sockets of every relayed connection, shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A relay listening on 127.0.0.1:`port` in front of 127.0.0.1:`upstream`.
pub struct Relay {
    /// Its port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts relaying connections to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let log = Arc::new(Mutex::new(Vec::new()));
                accepting.sent.lock().unwrap().push(log.clone());
                {
                    let mut sockets = accepting.sockets.lock().unwrap();
                    sockets.extend(client.try_clone().ok());
                    sockets.extend(server.try_clone().ok());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(client, server, Some(log)));
                thread::spawn(move || pump(s2, c2, None));
            }
        });
        Relay { port, shared }
    }

    /// What each connection's client sent so far, in accept order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.shared
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|log| log.lock().unwrap().clone())
            .collect()
    }
}

/// Copies `from` to `to` until either side ends, recording the bytes in `log`; then passes
/// the end on (a half close).
fn pump(mut from: TcpStream, mut to: TcpStream, log: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(log) = &log {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
