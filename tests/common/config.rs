//! memroute config files for the tests: a small TOML builder (top-level keys, then
//! `[pools.<name>]` tables), files in a temp folder replaced atomically, memroute started
//! from one pool, and where `memroute route` places keys under a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{free_port, text, wait_for_port_only, Memcached, Proxy};

/// One `[pools.<name>]` table listening on 127.0.0.1:`port` over `servers` (entries as
/// written in the file, e.g. `127.0.0.1:11211:1 a`); `keys` are further lines of the same
/// table (e.g. `hash = "md5"`), or empty.
pub fn pool_toml(name: &str, port: u16, servers: &[String], keys: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[pools.{name}]\nlisten = \"127.0.0.1:{port}\"\nservers = [{}]\n{keys}\n",
        list.join(", ")
    )
}

/// One `[pools.<name>]` table like [`pool_toml`], hashed md5 on a ketama ring.
pub fn md5_pool_toml(name: &str, port: u16, servers: &[String], extra: &str) -> String {
    let keys = format!("hash = \"md5\"\ndistribution = \"ketama\"\n{extra}");
    pool_toml(name, port, servers, &keys)
}

/// `servers` entries for `mcs`, named `a`, `b`, `c`… in order, so that ring positions do not
/// depend on random ports.
pub fn named(mcs: &[Memcached]) -> Vec<String> {
    mcs.iter()
        .zip('a'..='z')
        .map(|(m, name)| format!("{} {name}", m.server(1)))
        .collect()
}

/// A whole file: top-level keys `top` (lines, or empty), then the pool tables.
pub fn config_toml(top: &str, pools: &[String]) -> String {
    format!("{top}\n\n{}", pools.join("\n"))
}

/// Replaces the file at `path` atomically (a temp file in the same folder renamed over it),
/// so a watching memroute never reads it half written.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, contents).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

/// A temp folder for config and log files, removed when dropped.
pub struct TempFiles {
    dir: tempfile::TempDir,
}

impl TempFiles {
    /// A new, empty folder.
    pub fn new() -> TempFiles {
        TempFiles {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The path of `name` in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` (atomically, see [`replace_file`]) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        replace_file(&p, contents);
        p
    }
}

/// memroute started from a config file: top-level keys `top`, then one pool `main` on a free
/// port over `servers`, with extra pool keys `pool_keys`. The folder holding the file lives
/// as long as the returned [`TempFiles`].
pub fn proxy_with_pool(top: &str, servers: &[String], pool_keys: &str) -> (Proxy, TempFiles) {
    let port = free_port();
    let files = TempFiles::new();
    let config = files.write(
        "memroute.toml",
        &config_toml(top, &[pool_toml("main", port, servers, pool_keys)]),
    );
    (Proxy::start_config(&config, port, &[]), files)
}

/// What memroute under test from a config file starts from: `n` memcached, a temp folder for
/// the file, a free port for pool `main`, and the top-level settings (`threads` worker
/// threads and, when asked, an admin listener on another free port).
pub struct ConfigRig {
    /// The memcached, in the order [`named`] names them.
    pub mcs: Vec<Memcached>,
    /// The folder for config and log files.
    pub files: TempFiles,
    /// Pool `main`'s port.
    pub port: u16,
    /// The admin listener's port, if there is one.
    pub admin: Option<u16>,
    /// The top-level settings.
    pub top: String,
}

impl ConfigRig {
    /// Starts `n` memcached and picks the ports.
    pub fn new(n: usize, threads: usize, admin: bool) -> ConfigRig {
        let mcs: Vec<Memcached> = (0..n).map(|_| Memcached::start()).collect();
        let files = TempFiles::new();
        let port = free_port();
        let admin = admin.then(free_port);
        let mut top = format!("threads = {threads}");
        if let Some(admin) = admin {
            top.push_str(&format!("\nadmin = \"127.0.0.1:{admin}\""));
        }
        ConfigRig {
            mcs,
            files,
            port,
            admin,
            top,
        }
    }

    /// The admin listener's port (the rig must have one).
    pub fn admin(&self) -> u16 {
        self.admin.expect("a rig with an admin listener")
    }

    /// A whole file: the top-level settings, then pool `main` (see [`md5_pool_toml`]) over the
    /// first `n` memcached, with pool settings `extra`.
    pub fn file(&self, n: usize, extra: &str) -> String {
        let servers = named(&self.mcs[..n]);
        config_toml(
            &self.top,
            &[md5_pool_toml("main", self.port, &servers, extra)],
        )
    }

    /// Writes `contents` as `memroute.toml` and starts memroute on it (waiting for its admin
    /// listener, if any); returns the file's path and memroute.
    pub fn start(&self, contents: &str) -> (PathBuf, Proxy) {
        let path = self.files.write("memroute.toml", contents);
        let proxy = Proxy::start_config(&path, self.port, &[]);
        if let Some(admin) = self.admin {
            wait_for_port_only(admin);
        }
        (path, proxy)
    }
}

/// Runs `memroute route <args> <keys>…`, asserts it succeeds, and returns its stdout.
pub fn run_route(args: &[&str], keys: &[impl AsRef<str>]) -> String {
    let out = std::process::Command::new(Proxy::binary())
        .arg("route")
        .args(args)
        .args(keys.iter().map(|k| k.as_ref()))
        .output()
        .expect("run memroute route");
    assert!(
        out.status.success(),
        "memroute route {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One line of `memroute route` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLine {
    /// The pool's name.
    pub pool: String,
    /// The key.
    pub key: String,
    /// The backend (`host:port`) that holds it.
    pub owner: String,
    /// The backend that held it before a ring change, while warm-up lasts.
    pub previous: Option<String>,
}

/// Parses `pool <name>: <key> -> <host:port>[ (previously <host:port>, warming up)]` lines.
pub fn parse_route(out: &str) -> Vec<RouteLine> {
    out.lines()
        .map(|line| {
            let rest = line
                .strip_prefix("pool ")
                .unwrap_or_else(|| panic!("route line {line:?}"));
            let (pool, rest) = rest
                .split_once(": ")
                .unwrap_or_else(|| panic!("route line {line:?}"));
            let (key, rest) = rest
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("route line {line:?}"));
            let (owner, previous) = match rest.split_once(' ') {
                None => (rest.to_string(), None),
                Some((owner, tail)) => {
                    let prev = tail
                        .strip_prefix("(previously ")
                        .and_then(|t| t.strip_suffix(", warming up)"))
                        .unwrap_or_else(|| panic!("route line {line:?}"));
                    (owner.to_string(), Some(prev.to_string()))
                }
            };
            RouteLine {
                pool: pool.to_string(),
                key: key.to_string(),
                owner,
                previous,
            }
        })
        .collect()
}

/// The owner (`host:port`) of each key in pool `main` of the config file at `path`, by
/// `memroute route --config`.
pub fn route_owners(path: &Path, keys: &[impl AsRef<str>]) -> HashMap<String, String> {
    let lines = parse_route(&run_route(&["--config", path.to_str().unwrap()], keys));
    assert_eq!(lines.len(), keys.len(), "one route line per key");
    lines
        .into_iter()
        .map(|l| {
            assert_eq!(l.pool, "main");
            assert!(
                l.previous.is_none(),
                "--config knows no previous owner: {l:?}"
            );
            (l.key, l.owner)
        })
        .collect()
}
