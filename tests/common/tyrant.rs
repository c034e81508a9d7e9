//! A fake ttserver (Tokyo Tyrant 1.1.x memcached emulation) that follows DESIGN.md §4 to the
//! letter, because no Debian package of ttserver exists.
//!
//! It supports get/gets (without a cas column), set, add, replace, append, prepend, delete,
//! incr, decr, stats, flush_all, version and quit; it never stores flags and ignores exptime.
//! On anything else it sends nothing and closes the connection, unless more bytes are already
//! buffered, in which case it silently skips the bad line (a `cas` line without its data
//! block, which is then executed as a command). It records every byte and command it gets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What ttserver 1.1.41 calls itself.
pub const TT_VERSION: &str = "1.1.41";

#[derive(Default)]
struct State {
    store: HashMap<Vec<u8>, Vec<u8>>,
    connections: usize,
    /// Bytes received, per accepted connection.
    received: Vec<Vec<u8>>,
    /// First word of every command line parsed, in arrival order.
    commands: Vec<String>,
    /// Clones of every accepted stream, to close them on drop.
    streams: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    shutdown: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake ttserver on 127.0.0.1.
pub struct FakeTyrant {
    /// Its port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeTyrant {
    /// Starts listening on a free loopback port.
    pub fn start() -> FakeTyrant {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake ttserver");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            shutdown: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, s));
        FakeTyrant {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:port:weight`, as a server entry.
    pub fn server(&self, weight: u32) -> String {
        format!("127.0.0.1:{}:{weight}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Every byte received, across connections (each connection's bytes in order,
    /// connections in accept order).
    pub fn received(&self) -> Vec<u8> {
        self.shared.lock().received.concat()
    }

    /// Bytes received on each connection, in accept order.
    pub fn received_per_connection(&self) -> Vec<Vec<u8>> {
        self.shared.lock().received.clone()
    }

    /// The first word of every command line parsed (data blocks excluded, unless executed).
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// The stored value of `key`, as ttserver holds it.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.lock().store.get(key.as_bytes()).cloned()
    }

    /// Number of stored items.
    pub fn items(&self) -> usize {
        self.shared.lock().store.len()
    }
}

impl Drop for FakeTyrant {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for s in self.shared.lock().streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = {
            let mut st = shared.lock();
            st.connections += 1;
            st.received.push(Vec::new());
            if let Ok(clone) = stream.try_clone() {
                st.streams.push(clone);
            }
            st.received.len() - 1
        };
        let s = shared.clone();
        std::thread::spawn(move || Conn::new(stream, s, id).run());
    }
}

/// Why a connection stops.
enum Stop {
    /// The peer left, `quit`, or a read/write failed.
    Gone,
}

struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    id: usize,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// What to do with one parsed command line.
enum Outcome {
    /// Executed; `consumed` bytes of the buffer are used (line plus any data block).
    Done(usize),
    /// Need more bytes before the command can be executed.
    Incomplete,
    /// Not something ttserver understands: the line (only) is `consumed` bytes long.
    Bad(usize),
    /// `quit`.
    Quit,
}

impl Conn {
    fn new(stream: TcpStream, shared: Arc<Shared>, id: usize) -> Conn {
        Conn {
            stream,
            shared,
            id,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }

    fn run(mut self) {
        let _ = self.serve();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads once (blocking); false on EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.record(&chunk[..n]);
                true
            }
        }
    }

    /// Pulls whatever the kernel already holds for us, without waiting.
    fn drain_ready(&mut self) {
        if self.stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.record(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = self.stream.set_nonblocking(false);
    }

    fn record(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.shared.lock().received[self.id].extend_from_slice(bytes);
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).map_err(|_| Stop::Gone)?;
            self.out.clear();
        }
        Ok(())
    }

    fn serve(&mut self) -> Result<(), Stop> {
        loop {
            // Execute every complete command buffered.
            loop {
                match self.step() {
                    Outcome::Done(n) => {
                        self.buf.drain(..n);
                    }
                    Outcome::Incomplete => break,
                    Outcome::Bad(n) => {
                        self.drain_ready();
                        if self.buf.len() > n {
                            // More bytes are buffered: skip the bad line silently.
                            self.buf.drain(..n);
                        } else {
                            // Nothing else: send nothing more, close.
                            self.flush()?;
                            return Err(Stop::Gone);
                        }
                    }
                    Outcome::Quit => {
                        self.flush()?;
                        return Err(Stop::Gone);
                    }
                }
            }
            self.flush()?;
            if !self.fill() {
                return Err(Stop::Gone);
            }
        }
    }

    /// Parses and (when complete and valid) executes the command at the start of the buffer.
    fn step(&mut self) -> Outcome {
        let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
            return Outcome::Incomplete;
        };
        let line_len = nl + 1;
        let text_end = if nl > 0 && self.buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = self.buf[..text_end].to_vec();
        let toks: Vec<&[u8]> = line
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty())
            .collect();
        let Some(first) = toks.first() else {
            self.note("");
            return Outcome::Bad(line_len);
        };
        let word = String::from_utf8_lossy(first).into_owned();
        self.note(&word);
        // ttserver accepts a trailing noreply on the commands that take one.
        let (args, noreply) = match toks.last() {
            Some(&b"noreply") if toks.len() > 1 => (&toks[1..toks.len() - 1], true),
            _ => (&toks[1..], false),
        };
        match word.as_str() {
            "get" | "gets" => {
                if toks.len() < 2 {
                    return Outcome::Bad(line_len);
                }
                let st = self.shared.lock();
                let mut out = Vec::new();
                for key in &toks[1..] {
                    if let Some(v) = st.store.get(*key) {
                        out.extend_from_slice(b"VALUE ");
                        out.extend_from_slice(key);
                        out.extend_from_slice(format!(" 0 {}\r\n", v.len()).as_bytes());
                        out.extend_from_slice(v);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                drop(st);
                self.out.extend_from_slice(&out);
                self.out.extend_from_slice(b"END\r\n");
                Outcome::Done(line_len)
            }
            "set" | "add" | "replace" | "append" | "prepend" => {
                if args.len() != 4 {
                    return Outcome::Bad(line_len);
                }
                let (key, flags, exptime, len) = (args[0], args[1], args[2], args[3]);
                if number(flags).is_none() || signed(exptime).is_none() {
                    return Outcome::Bad(line_len);
                }
                let Some(len) = number(len).map(|l| l as usize) else {
                    return Outcome::Bad(line_len);
                };
                if self.buf.len() < line_len + len + 2 {
                    return Outcome::Incomplete;
                }
                if &self.buf[line_len + len..line_len + len + 2] != b"\r\n" {
                    return Outcome::Bad(line_len);
                }
                let data = self.buf[line_len..line_len + len].to_vec();
                let key = key.to_vec();
                let mut st = self.shared.lock();
                let exists = st.store.contains_key(&key);
                let stored = match word.as_str() {
                    "set" => {
                        st.store.insert(key, data);
                        true
                    }
                    "add" if !exists => {
                        st.store.insert(key, data);
                        true
                    }
                    "replace" if exists => {
                        st.store.insert(key, data);
                        true
                    }
                    "append" if exists => {
                        st.store.get_mut(&key).unwrap().extend_from_slice(&data);
                        true
                    }
                    "prepend" if exists => {
                        let v = st.store.get_mut(&key).unwrap();
                        let mut new = data;
                        new.extend_from_slice(v);
                        *v = new;
                        true
                    }
                    _ => false,
                };
                drop(st);
                if !noreply {
                    self.out.extend_from_slice(match stored {
                        true => b"STORED\r\n".as_slice(),
                        false => b"NOT_STORED\r\n".as_slice(),
                    });
                }
                Outcome::Done(line_len + len + 2)
            }
            "delete" => {
                // `delete k <anything>` deletes at once.
                if args.is_empty() || args.len() > 2 {
                    return Outcome::Bad(line_len);
                }
                let found = self.shared.lock().store.remove(args[0]).is_some();
                if !noreply {
                    self.out.extend_from_slice(match found {
                        true => b"DELETED\r\n".as_slice(),
                        false => b"NOT_FOUND\r\n".as_slice(),
                    });
                }
                Outcome::Done(line_len)
            }
            "incr" | "decr" => {
                if args.len() != 2 {
                    return Outcome::Bad(line_len);
                }
                let Some(delta) = number(args[1]) else {
                    return Outcome::Bad(line_len);
                };
                let mut st = self.shared.lock();
                let reply = match st.store.get_mut(args[0]) {
                    None => b"NOT_FOUND\r\n".to_vec(),
                    Some(v) => {
                        // A non-numeric value counts as 0.
                        let cur = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .unwrap_or(0);
                        let new = match word.as_str() {
                            "incr" => cur.wrapping_add(delta),
                            _ => cur.saturating_sub(delta),
                        };
                        *v = new.to_string().into_bytes();
                        format!("{new}\r\n").into_bytes()
                    }
                };
                drop(st);
                if !noreply {
                    self.out.extend_from_slice(&reply);
                }
                Outcome::Done(line_len)
            }
            "stats" => {
                let items = self.shared.lock().store.len();
                let pid = std::process::id();
                self.out.extend_from_slice(
                    format!(
                        "STAT pid {pid}\r\nSTAT version {TT_VERSION}\r\nSTAT curr_items {items}\r\nEND\r\n"
                    )
                    .as_bytes(),
                );
                Outcome::Done(line_len)
            }
            "flush_all" => {
                if args.len() > 1 {
                    return Outcome::Bad(line_len);
                }
                self.shared.lock().store.clear();
                if !noreply {
                    self.out.extend_from_slice(b"OK\r\n");
                }
                Outcome::Done(line_len)
            }
            "version" => {
                self.out
                    .extend_from_slice(format!("VERSION {TT_VERSION}\r\n").as_bytes());
                Outcome::Done(line_len)
            }
            "quit" => Outcome::Quit,
            // cas (its data block stays buffered and is read as a command), touch, gat, gats,
            // verbosity, meta commands, unknown words.
            _ => Outcome::Bad(line_len),
        }
    }

    fn note(&self, word: &str) {
        self.shared.lock().commands.push(word.to_string());
    }
}

fn number(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(tok).ok()?.parse().ok()
}

fn signed(tok: &[u8]) -> Option<i64> {
    std::str::from_utf8(tok).ok()?.parse().ok()
}
