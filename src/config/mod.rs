//! Configuration: raw TOML (twemproxy's vocabulary, unknown keys rejected) → `validate()` →
//! typed [`Config`]. Every error names the field it is about.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::admission::AccessList;
use crate::reply_queue::RetrievalFailure;
use crate::ring::{server_identity, Distribution, HashFunction, HashTag};

/// A configuration that cannot be used, with the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys / wrong types.
    #[error("{0}")]
    Syntax(String),
    /// A value is out of range or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `pools.main.hash`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Worker threads; 0 or absent means one per core.
    pub threads: Option<usize>,
    /// Client connections accepted at most, over all pools.
    pub max_clients: Option<usize>,
    /// Reply memory (held and reserved) over all clients beyond which only clients holding
    /// nothing are read.
    pub max_client_memory: Option<RawSize>,
    /// Address of the admin HTTP listener (`/metrics`, `/health`); none by default.
    pub admin: Option<String>,
    /// On SIGTERM/SIGINT, how long clients' in-flight requests may take to finish (ms).
    pub shutdown_timeout: Option<u64>,
    /// The pools, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
}

/// A byte size: a number, or a string with a `k`, `m` or `g` suffix.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// E.g. `"1m"`.
    Text(String),
}

/// One pool as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Address clients connect to.
    pub listen: Option<String>,
    /// Key hash function.
    pub hash: Option<String>,
    /// Two characters delimiting the part of a key that is hashed.
    pub hash_tag: Option<String>,
    /// `ketama`, `modula` or `random`.
    pub distribution: Option<String>,
    /// Upstream request timeout in milliseconds.
    pub timeout: Option<u64>,
    /// Upstream connect timeout in milliseconds.
    pub connect_timeout: Option<u64>,
    /// Connections per backend per worker thread.
    pub server_connections: Option<usize>,
    /// `host:port:weight [name]` entries.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Largest value accepted.
    pub item_size_max: Option<RawSize>,
    /// Requests of one client in flight at most before memroute stops reading from it.
    pub max_client_inflight: Option<usize>,
    /// Reply bytes buffered for one client at most before memroute stops reading from it.
    pub max_client_buffer: Option<RawSize>,
    /// Client connections this listener accepts at most (besides the process's `max_clients`).
    pub max_client_connections: Option<usize>,
    /// Close a client connection idle (no request, nothing in flight) this long, e.g.
    /// `"300s"`; absent or `"0s"`: never, as memcached.
    pub client_timeout: Option<String>,
    /// Client networks allowed on this listener (CIDR or address); empty: all.
    #[serde(default)]
    pub client_allow: Vec<String>,
    /// Client networks refused on this listener; checked before `client_allow`.
    #[serde(default)]
    pub client_deny: Vec<String>,
    /// `miss` or `error`: how a failed backend's part of a retrieval is answered.
    pub retrieval_failure: Option<String>,
    /// `memcached` (default) or `tokyotyrant`: what the pool's servers speak.
    pub protocol: Option<String>,
    /// Tokyo Tyrant pools: keep client flags by storing them inside the value.
    pub preserve_flags: Option<bool>,
    /// After a reload moves keys, how long a miss on a key's new owner is retried on its
    /// previous owner, e.g. `"30s"`; `"0s"` turns warm-up off.
    pub warmup: Option<String>,
    /// TTL (seconds) of values copied to their new owner during warm-up.
    pub warmup_ttl: Option<u32>,
    /// Embedded caches of this pool when full: `evict` (LRU, default) or `refuse`
    /// (`SERVER_ERROR out of memory storing object`, like memcached's `-M`).
    pub memory_full: Option<String>,
    /// twemproxy's: take a failing backend off the ring.
    pub auto_eject_hosts: Option<bool>,
    /// twemproxy's: consecutive failures that eject a backend.
    pub server_failure_limit: Option<u32>,
    /// twemproxy's: how long an ejected backend stays out before it is probed (ms).
    pub server_retry_timeout: Option<u64>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads.
    pub threads: usize,
    /// Client connections accepted at most.
    pub max_clients: usize,
    /// Reply memory over all clients beyond which only clients holding nothing are read.
    pub max_client_memory: usize,
    /// Admin HTTP listener.
    pub admin: Option<SocketAddr>,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// The pools.
    pub pools: Vec<PoolConfig>,
}

/// A validated pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The pool's name.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Key hash.
    pub hash: HashFunction,
    /// Hash tag, if any.
    pub hash_tag: Option<HashTag>,
    /// Key distribution.
    pub distribution: Distribution,
    /// Upstream request timeout.
    pub timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Connections per backend per worker.
    pub server_connections: usize,
    /// The backends, in config order.
    pub servers: Vec<ServerConfig>,
    /// Largest value accepted.
    pub item_size_max: usize,
    /// Per-client cap on requests in flight.
    pub max_client_inflight: usize,
    /// Per-client cap on buffered reply bytes.
    pub max_client_buffer: usize,
    /// Cap on this listener's client connections.
    pub max_client_connections: Option<usize>,
    /// Idle client connections are closed after this long.
    pub client_timeout: Option<Duration>,
    /// Which client networks may connect.
    pub access: AccessList,
    /// How a failed retrieval fragment is answered.
    pub retrieval_failure: RetrievalFailure,
    /// What the servers speak.
    pub protocol: BackendProtocol,
    /// Tokyo Tyrant pools: flags stored inside values.
    pub preserve_flags: bool,
    /// Warm-up period after a reload moves keys (zero: off).
    pub warmup: Duration,
    /// TTL of values copied during warm-up, seconds.
    pub warmup_ttl: u32,
    /// Ejection of failing backends.
    pub ejection: Option<Ejection>,
    /// Embedded caches evict least-recently-used items when full (else they refuse).
    pub memory_evict: bool,
}

/// twemproxy's ejection settings (`auto_eject_hosts = true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive failures that eject a backend.
    pub failure_limit: u32,
    /// How long it stays out before a probe may bring it back.
    pub retry_timeout: Duration,
}

/// Parses `"30s"`, `"500ms"`, `"5m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        invalid(
            field,
            format!("'{text}' is not a duration (e.g. \"30s\", \"500ms\")"),
        )
    })?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(invalid(
                field,
                format!("'{text}': unknown unit (ms, s, m, h)"),
            ))
        }
    };
    Ok(d)
}

/// The protocol a pool's servers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// memcached's text protocol, in full.
    Memcached,
    /// Tokyo Tyrant's subset of it: only commands ttserver understands are forwarded.
    TokyoTyrant,
}

/// A validated backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the backend is.
    pub endpoint: Endpoint,
    /// Ring weight (> 0).
    pub weight: u32,
    /// Optional explicit name (its ring identity).
    pub name: Option<String>,
}

/// Where a backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A server over TCP.
    Tcp {
        /// Host as written.
        host: String,
        /// Port.
        port: u16,
        /// Resolved address.
        addr: SocketAddr,
    },
    /// memroute's embedded cache (`memory:<size>`), holding at most `limit` bytes.
    Memory {
        /// Size as written, e.g. `64mb`.
        size: String,
        /// Memory limit in bytes.
        limit: usize,
    },
}

impl ServerConfig {
    /// The identity string the ring hashes, as twemproxy computes it.
    pub fn identity(&self) -> String {
        match (&self.endpoint, &self.name) {
            (_, Some(name)) => name.clone(),
            (Endpoint::Tcp { host, port, .. }, None) => server_identity(host, *port, None),
            (Endpoint::Memory { .. }, None) => self.address(),
        }
    }

    /// `host:port` (or `memory:<size>`), for logs and stats.
    pub fn address(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
            Endpoint::Memory { size, .. } => format!("memory:{size}"),
        }
    }
}

/// Defaults, chosen for a production proxy (twemproxy's where it has one).
pub mod defaults {
    /// twemproxy's default hash.
    pub const HASH: &str = "fnv1a_64";
    /// twemproxy's default distribution.
    pub const DISTRIBUTION: &str = "ketama";
    /// Every request gets a deadline (twemproxy's default is none).
    pub const TIMEOUT_MS: u64 = 1000;
    /// Connect timeout.
    pub const CONNECT_TIMEOUT_MS: u64 = 1000;
    /// memcached's default item size limit.
    pub const ITEM_SIZE_MAX: u64 = 1024 * 1024;
    /// Requests in flight per client.
    pub const MAX_CLIENT_INFLIGHT: usize = 1024;
    /// Buffered reply bytes per client.
    pub const MAX_CLIENT_BUFFER: u64 = 8 * 1024 * 1024;
    /// Client connections over all pools.
    pub const MAX_CLIENTS: usize = 50_000;
    /// Reply memory held and reserved for all clients together.
    pub const MAX_CLIENT_MEMORY: u64 = 1024 * 1024 * 1024;
    /// Warm-up after a ring change.
    pub const WARMUP_SECS: u64 = 60;
    /// TTL of values copied to their new owner during warm-up.
    pub const WARMUP_TTL: u32 = 3600;
}

impl RawConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Checks every value and produces the typed configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if self.pools.is_empty() {
            return Err(invalid("pools", "at least one pool is required"));
        }
        let threads = match self.threads {
            None | Some(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if n > 1024 => return Err(invalid("threads", "at most 1024")),
            Some(n) => n,
        };
        let max_clients = self.max_clients.unwrap_or(defaults::MAX_CLIENTS);
        if max_clients == 0 {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        let mut pools = Vec::new();
        for (name, raw) in &self.pools {
            pools.push(raw.validate(name)?);
        }
        for (i, a) in pools.iter().enumerate() {
            if let Some(b) = pools[..i].iter().find(|b| b.listen == a.listen) {
                return Err(invalid(
                    format!("pools.{}.listen", a.name),
                    format!("{} is already used by pool {}", a.listen, b.name),
                ));
            }
        }
        let admin = match &self.admin {
            None => None,
            Some(a) => Some(
                a.to_socket_addrs()
                    .ok()
                    .and_then(|mut it| it.next())
                    .ok_or_else(|| invalid("admin", format!("'{a}' is not host:port")))?,
            ),
        };
        let shutdown_timeout = Duration::from_millis(self.shutdown_timeout.unwrap_or(10_000));
        let max_client_memory = match &self.max_client_memory {
            None => defaults::MAX_CLIENT_MEMORY,
            Some(s) => parse_size("max_client_memory", s)?,
        };
        if max_client_memory < 1024 * 1024 {
            return Err(invalid("max_client_memory", "must be at least 1m"));
        }
        Ok(Config {
            threads,
            max_clients,
            max_client_memory: max_client_memory as usize,
            admin,
            shutdown_timeout,
            pools,
        })
    }
}

fn parse_size(field: &str, raw: &RawSize) -> Result<u64, ConfigError> {
    match raw {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(s) => {
            let t = s.trim().to_ascii_lowercase();
            let (digits, mult) = match t.char_indices().last() {
                Some((i, 'k')) => (&t[..i], 1024),
                Some((i, 'm')) => (&t[..i], 1024 * 1024),
                Some((i, 'g')) => (&t[..i], 1024 * 1024 * 1024),
                _ => (&t[..], 1),
            };
            digits
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!("'{s}' is not a size (e.g. 1048576 or \"1m\")"),
                    )
                })
        }
    }
}

/// Parses `host:port[:weight] [name]` or `memory:<size>[:weight] [name]`.
pub fn parse_server(field: &str, text: &str) -> Result<ServerConfig, ConfigError> {
    let mut words = text.split_whitespace();
    let spec = words
        .next()
        .ok_or_else(|| invalid(field, "empty server entry"))?;
    let name = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(invalid(
            field,
            format!("'{text}': expected \"host:port:weight [name]\""),
        ));
    }
    if let Some(rest) = spec.strip_prefix("memory:") {
        let (size, weight) = match rest.split_once(':') {
            Some((size, w)) => (size, Some(w)),
            None => (rest, None),
        };
        let limit = parse_size(
            field,
            &RawSize::Text(size.trim_end_matches(['b', 'B']).into()),
        )?;
        if limit < 1024 * 1024 {
            return Err(invalid(
                field,
                format!("'{text}': an embedded cache needs at least 1mb"),
            ));
        }
        return Ok(ServerConfig {
            endpoint: Endpoint::Memory {
                size: size.to_owned(),
                limit: limit as usize,
            },
            weight: parse_weight(field, text, weight)?,
            name,
        });
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host, port, weight) = match parts.as_slice() {
        [w, p, h] => (*h, *p, Some(*w)),
        [p, h] => (*h, *p, None),
        _ => {
            return Err(invalid(
                field,
                format!("'{text}': expected \"host:port:weight [name]\""),
            ))
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(field, format!("'{text}': bad port '{port}'")))?;
    let weight = parse_weight(field, text, weight)?;
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| invalid(field, format!("'{text}': cannot resolve host '{host}'")))?;
    Ok(ServerConfig {
        endpoint: Endpoint::Tcp {
            host: host.to_owned(),
            port,
            addr,
        },
        weight,
        name,
    })
}

fn parse_weight(field: &str, text: &str, weight: Option<&str>) -> Result<u32, ConfigError> {
    match weight {
        None => Ok(1),
        Some(w) => w.parse().ok().filter(|w| *w > 0).ok_or_else(|| {
            invalid(
                field,
                format!("'{text}': weight must be a positive integer"),
            )
        }),
    }
}

impl RawPool {
    /// Validates one pool.
    pub fn validate(&self, name: &str) -> Result<PoolConfig, ConfigError> {
        let f = |key: &str| format!("pools.{name}.{key}");
        let listen_text = self
            .listen
            .as_deref()
            .ok_or_else(|| invalid(f("listen"), "missing"))?;
        let listen = listen_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| invalid(f("listen"), format!("'{listen_text}' is not host:port")))?;
        let hash_text = self.hash.as_deref().unwrap_or(defaults::HASH);
        let hash: HashFunction = hash_text.parse().map_err(|_| {
            let names: Vec<&str> = HashFunction::ALL.iter().map(|h| h.name()).collect();
            invalid(
                f("hash"),
                format!("unknown hash '{hash_text}' (one of: {})", names.join(", ")),
            )
        })?;
        let dist_text = self
            .distribution
            .as_deref()
            .unwrap_or(defaults::DISTRIBUTION);
        let distribution: Distribution = dist_text.parse().map_err(|_| {
            invalid(
                f("distribution"),
                format!("unknown distribution '{dist_text}' (ketama, modula or random)"),
            )
        })?;
        let hash_tag = match &self.hash_tag {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) => Some(HashTag::new(t).map_err(|_| {
                invalid(
                    f("hash_tag"),
                    format!("'{t}' must be exactly two characters, e.g. \"{{}}\""),
                )
            })?),
        };
        let ms = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(f(key), "must be at least 1 (milliseconds)")),
                n => Ok(Duration::from_millis(n)),
            }
        };
        let timeout = ms("timeout", self.timeout, defaults::TIMEOUT_MS)?;
        let connect_timeout = ms(
            "connect_timeout",
            self.connect_timeout,
            defaults::CONNECT_TIMEOUT_MS,
        )?;
        let server_connections = self.server_connections.unwrap_or(1);
        if server_connections == 0 || server_connections > 1024 {
            return Err(invalid(
                f("server_connections"),
                "must be between 1 and 1024",
            ));
        }
        if self.servers.is_empty() {
            return Err(invalid(f("servers"), "at least one server is required"));
        }
        let mut servers: Vec<ServerConfig> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            let field = format!("{}[{i}]", f("servers"));
            let server = parse_server(&field, s)?;
            if servers.iter().any(|o| o.identity() == server.identity()) {
                return Err(invalid(
                    field,
                    format!("'{s}' duplicates another server's ring name"),
                ));
            }
            servers.push(server);
        }
        let item_size_max = match &self.item_size_max {
            None => defaults::ITEM_SIZE_MAX,
            Some(s) => parse_size(&f("item_size_max"), s)?,
        };
        if !(1024..=1024 * 1024 * 1024).contains(&item_size_max) {
            return Err(invalid(f("item_size_max"), "must be between 1k and 1g"));
        }
        let max_client_inflight = self
            .max_client_inflight
            .unwrap_or(defaults::MAX_CLIENT_INFLIGHT);
        if max_client_inflight == 0 {
            return Err(invalid(f("max_client_inflight"), "must be at least 1"));
        }
        let max_client_buffer = match &self.max_client_buffer {
            None => defaults::MAX_CLIENT_BUFFER,
            Some(s) => parse_size(&f("max_client_buffer"), s)?,
        };
        if max_client_buffer < 4096 {
            return Err(invalid(f("max_client_buffer"), "must be at least 4k"));
        }
        if self.max_client_connections == Some(0) {
            return Err(invalid(f("max_client_connections"), "must be at least 1"));
        }
        let client_timeout = match &self.client_timeout {
            None => None,
            Some(t) => Some(parse_duration(&f("client_timeout"), t)?).filter(|d| !d.is_zero()),
        };
        let access = AccessList::parse(&self.client_allow, &self.client_deny).map_err(|e| {
            let key = if AccessList::parse(&self.client_allow, &[]).is_err() {
                "client_allow"
            } else {
                "client_deny"
            };
            invalid(f(key), e)
        })?;
        let retrieval_failure = match self.retrieval_failure.as_deref() {
            None | Some("miss") => RetrievalFailure::Miss,
            Some("error") => RetrievalFailure::Error,
            Some(other) => {
                return Err(invalid(
                    f("retrieval_failure"),
                    format!("'{other}' is not one of: miss, error"),
                ))
            }
        };
        let protocol = match self.protocol.as_deref() {
            None | Some("memcached") => BackendProtocol::Memcached,
            Some("tokyotyrant") => BackendProtocol::TokyoTyrant,
            Some(other) => {
                return Err(invalid(
                    f("protocol"),
                    format!("'{other}' is not one of: memcached, tokyotyrant"),
                ))
            }
        };
        if protocol == BackendProtocol::TokyoTyrant
            && servers
                .iter()
                .any(|s| matches!(s.endpoint, Endpoint::Memory { .. }))
        {
            return Err(invalid(
                f("servers"),
                "a tokyotyrant pool cannot hold memory: servers",
            ));
        }
        let preserve_flags = self.preserve_flags.unwrap_or(false);
        if preserve_flags && protocol != BackendProtocol::TokyoTyrant {
            return Err(invalid(
                f("preserve_flags"),
                "only applies to protocol = \"tokyotyrant\" (memcached keeps flags itself)",
            ));
        }
        let warmup = match &self.warmup {
            None => Duration::from_secs(defaults::WARMUP_SECS),
            Some(t) => parse_duration(&f("warmup"), t)?,
        };
        let warmup_ttl = self.warmup_ttl.unwrap_or(defaults::WARMUP_TTL);
        let ejection = match self.auto_eject_hosts.unwrap_or(false) {
            false => None,
            true => Some(Ejection {
                failure_limit: match self.server_failure_limit.unwrap_or(2) {
                    0 => return Err(invalid(f("server_failure_limit"), "must be at least 1")),
                    n => n,
                },
                retry_timeout: ms("server_retry_timeout", self.server_retry_timeout, 30_000)?,
            }),
        };
        if protocol == BackendProtocol::TokyoTyrant && !warmup.is_zero() && self.warmup.is_some() {
            return Err(invalid(f("warmup"), "not available for tokyotyrant pools"));
        }
        let memory_evict = match self.memory_full.as_deref() {
            None | Some("evict") => true,
            Some("refuse") => false,
            Some(other) => {
                return Err(invalid(
                    f("memory_full"),
                    format!("'{other}' is not one of: evict, refuse"),
                ))
            }
        };
        Ok(PoolConfig {
            name: name.to_owned(),
            listen,
            hash,
            hash_tag,
            distribution,
            timeout,
            connect_timeout,
            server_connections,
            servers,
            item_size_max: item_size_max as usize,
            max_client_inflight,
            max_client_buffer: max_client_buffer as usize,
            max_client_connections: self.max_client_connections,
            client_timeout,
            access,
            retrieval_failure,
            protocol,
            preserve_flags,
            warmup,
            warmup_ttl,
            ejection,
            memory_evict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match RawConfig::parse(text).and_then(|r| r.validate()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    const OK: &str = r#"
        threads = 2
        [pools.main]
        listen = "127.0.0.1:22121"
        hash = "md5"
        hash_tag = "{}"
        distribution = "ketama"
        timeout = 400
        server_connections = 2
        item_size_max = "2m"
        retrieval_failure = "error"
        servers = ["127.0.0.1:11211:1", "127.0.0.1:11212:2 cache-b"]
    "#;

    #[test]
    fn parses_a_full_pool() {
        let c = RawConfig::parse(OK).unwrap().validate().unwrap();
        assert_eq!(c.threads, 2);
        let p = &c.pools[0];
        assert_eq!(p.name, "main");
        assert_eq!(p.hash, HashFunction::Md5);
        assert_eq!(p.timeout, Duration::from_millis(400));
        assert_eq!(p.item_size_max, 2 * 1024 * 1024);
        assert_eq!(p.retrieval_failure, RetrievalFailure::Error);
        assert_eq!(p.servers[0].identity(), "127.0.0.1");
        assert_eq!(p.servers[1].identity(), "cache-b");
        assert_eq!(p.servers[1].weight, 2);
    }

    #[test]
    fn client_keys_default_to_open_and_unlimited() {
        let c = RawConfig::parse(OK).unwrap().validate().unwrap();
        let p = &c.pools[0];
        assert_eq!((p.max_client_connections, p.client_timeout), (None, None));
        assert!(p.access.is_open());
        let off = OK.replace("timeout = 400", "timeout = 400\nclient_timeout = \"0s\"");
        let c = RawConfig::parse(&off).unwrap().validate().unwrap();
        assert_eq!(c.pools[0].client_timeout, None);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&OK.replace("hash = \"md5\"", "hash = \"sha1\"")).contains("pools.main.hash"));
        assert!(err(&OK.replace("timeout = 400", "timeout = 0")).contains("pools.main.timeout"));
        assert!(err(&OK.replace("timeout = 400", "timout = 400")).contains("timout"));
        assert!(err(&OK.replace("\"{}\"", "\"{\"")).contains("pools.main.hash_tag"));
        assert!(err(&OK.replace(":11212:2", ":11212:0")).contains("pools.main.servers[1]"));
        assert!(err(&OK.replace(":11212:2", ":notaport:2")).contains("pools.main.servers[1]"));
        assert!(err(&OK.replace("\"ketama\"", "\"maglev\"")).contains("pools.main.distribution"));
        assert!(
            err(&OK.replace("\"error\"", "\"ignore\"")).contains("pools.main.retrieval_failure")
        );
        assert!(err(&OK.replace("\"2m\"", "\"lots\"")).contains("pools.main.item_size_max"));
        assert!(err("threads = 1").contains("pools"));
        let client = |keys: &str| OK.replace("timeout = 400", &format!("timeout = 400\n{keys}"));
        assert!(err(&client("max_client_connections = 0"))
            .contains("pools.main.max_client_connections"));
        assert!(err(&client("client_timeout = \"soon\"")).contains("pools.main.client_timeout"));
        assert!(err(&client("client_allow = [\"10.0.0.0/8\", \"nope\"]"))
            .contains("pools.main.client_allow"));
        assert!(err(&OK.replace("timeout = 400", "protocol = \"redis\""))
            .contains("pools.main.protocol"));
        assert!(err(&OK.replace("timeout = 400", "preserve_flags = true"))
            .contains("pools.main.preserve_flags"));
    }

    #[test]
    fn duplicate_ring_names_and_listeners_are_rejected() {
        assert!(err(&OK.replace("cache-b", "127.0.0.1")).contains("servers[1]"));
        let two = format!("{OK}\n[pools.other]\nlisten = \"127.0.0.1:22121\"\nservers = [\"127.0.0.1:11213:1\"]\n");
        assert!(err(&two).contains("pools.other.listen"));
    }
}
