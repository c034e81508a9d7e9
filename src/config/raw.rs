//! The configuration file as written: TOML in twemproxy's vocabulary, read by serde (names of
//! hashes, distributions and modes as enums; unknown keys rejected). A file that does not
//! read is reported with the dotted key the error is at, and a hint when a top-level key was
//! written inside a pool's table.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{BackendProtocol, ConfigError, RetrievalFailure};
use crate::ring::{Distribution, HashFunction};

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
    /// The admin listener serves HTTPS with this certificate chain (PEM)…
    pub admin_tls_cert: Option<String>,
    /// … and this key (PEM).
    pub admin_tls_key: Option<String>,
    /// On SIGTERM/SIGINT, how long clients' in-flight requests may take to finish.
    pub shutdown_timeout: Option<RawDuration>,
    /// The pools, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// Routes over the pools, by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
}

/// A route's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteType {
    /// The longest matching key prefix picks the route.
    Prefix,
    /// Copies of the data in several pools.
    Replicated,
    /// A pool whose failures go to another pool.
    Gutter,
    /// A route whose requests are also sent, in part, to another pool.
    Shadow,
}

/// How a replicated route answers a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePolicy {
    /// Waits for every copy; answers the worst reply (mcrouter's AllSyncRoute).
    AllSync,
    /// Answers the first copy's reply; the others finish in the background (mcrouter's
    /// AllInitialRoute).
    AllInitial,
}

impl std::fmt::Display for WritePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WritePolicy::AllSync => "all_sync",
            WritePolicy::AllInitial => "all_initial",
        })
    }
}

/// How a replicated route reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    /// The next copy only after an error or timeout: a miss is an answer (mcrouter's
    /// FailoverRoute).
    Failover,
    /// The next copy after a miss too (mcrouter's MissFailoverRoute).
    MissFailover,
}

impl std::fmt::Display for ReadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadPolicy::Failover => "failover",
            ReadPolicy::MissFailover => "miss_failover",
        })
    }
}

/// One route as written. Which keys apply depends on `type`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The kind of route.
    #[serde(rename = "type")]
    pub kind: RouteType,
    /// Address clients connect to, if the route has a listener of its own.
    pub listen: Option<String>,
    /// prefix: key prefix → the route or pool it picks.
    #[serde(default)]
    pub prefixes: BTreeMap<String, String>,
    /// prefix: the route or pool for keys matching no prefix.
    pub default: Option<String>,
    /// replicated: the pools holding the copies, the first being the designated one.
    #[serde(default)]
    pub copies: Vec<String>,
    /// replicated: how writes are answered.
    pub write: Option<WritePolicy>,
    /// replicated: when a read moves on to the next copy.
    pub read: Option<ReadPolicy>,
    /// replicated: start reads at a copy chosen by the key's hash, instead of the first.
    pub spread_reads: Option<bool>,
    /// gutter, shadow: the route or pool that serves.
    pub primary: Option<String>,
    /// gutter: the pool that takes over a failed primary's requests.
    pub gutter: Option<String>,
    /// gutter: the longest TTL a write gets in the gutter, e.g. `"300s"` (an integer:
    /// seconds).
    pub failover_ttl: Option<RawDuration>,
    /// shadow: the pool that gets a copy of part of the traffic.
    pub shadow: Option<String>,
    /// shadow: the part of the keys (by hash) whose requests are copied, 0 to 1.
    pub fraction: Option<f64>,
    /// Listener: largest value accepted from clients.
    pub item_size_max: Option<RawSize>,
    /// Listener: requests of one client in flight at most.
    pub max_client_inflight: Option<usize>,
    /// Listener: reply bytes held and reserved for one client at most.
    pub max_client_buffer: Option<RawSize>,
    /// Listener: client connections it accepts at most.
    pub max_client_connections: Option<usize>,
    /// Listener: close a client connection idle this long.
    pub client_timeout: Option<RawDuration>,
    /// Listener: client networks allowed.
    #[serde(default)]
    pub client_allow: Vec<String>,
    /// Listener: client networks refused.
    #[serde(default)]
    pub client_deny: Vec<String>,
    /// Listener TLS: the certificate chain served (PEM).
    pub tls_cert: Option<String>,
    /// Listener TLS: its private key (PEM).
    pub tls_key: Option<String>,
    /// Listener TLS: clients must present a certificate chaining to this CA (PEM).
    pub tls_client_ca: Option<String>,
    /// Listener TLS: client identities (SAN DNS names or URIs) allowed; empty: any verified.
    #[serde(default)]
    pub tls_client_names: Vec<String>,
    /// Listener TLS: a handshake not finished in this long is dropped.
    pub tls_handshake_timeout: Option<RawDuration>,
}

/// A duration: a string with a unit (`"500ms"`, `"2s"`, `"5m"`, `"1h"`), or an integer in the
/// key's own unit (milliseconds, twemproxy's, for timeouts and periods; seconds,
/// memcached's, for TTLs).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// In the key's unit.
    Number(u64),
    /// With a unit.
    Text(String),
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

/// What embedded caches do when full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFull {
    /// Evict the least recently used items.
    Evict,
    /// Refuse the store (`SERVER_ERROR out of memory storing object`, memcached's `-M`).
    Refuse,
}

/// One pool as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Address clients connect to.
    pub listen: Option<String>,
    /// Key hash function.
    pub hash: Option<HashFunction>,
    /// Two characters delimiting the part of a key that is hashed.
    pub hash_tag: Option<String>,
    /// `ketama`, `modula` or `random`.
    pub distribution: Option<Distribution>,
    /// Upstream request timeout.
    pub timeout: Option<RawDuration>,
    /// Upstream connect timeout.
    pub connect_timeout: Option<RawDuration>,
    /// Connections per backend per worker thread.
    pub server_connections: Option<usize>,
    /// `host:port:weight [name]` entries.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Largest value accepted.
    pub item_size_max: Option<RawSize>,
    /// Requests of one client in flight at most before memroute stops reading from it.
    pub max_client_inflight: Option<usize>,
    /// Reply bytes held and reserved for one client at most before memroute stops reading
    /// from it.
    pub max_client_buffer: Option<RawSize>,
    /// Client connections this listener accepts at most (besides the process's `max_clients`).
    pub max_client_connections: Option<usize>,
    /// Close a client connection idle (no request, nothing in flight) this long, e.g.
    /// `"300s"`; absent or `"0s"`: never, as memcached.
    pub client_timeout: Option<RawDuration>,
    /// Client networks allowed on this listener (CIDR or address); empty: all.
    #[serde(default)]
    pub client_allow: Vec<String>,
    /// Client networks refused on this listener; checked before `client_allow`.
    #[serde(default)]
    pub client_deny: Vec<String>,
    /// How a failed backend's part of a retrieval is answered.
    pub retrieval_failure: Option<RetrievalFailure>,
    /// What the pool's servers speak.
    pub protocol: Option<BackendProtocol>,
    /// Tokyo Tyrant pools: keep client flags by storing them inside the value.
    pub preserve_flags: Option<bool>,
    /// After a reload moves keys, how long a miss on a key's new owner is retried on its
    /// previous owner, e.g. `"30s"`; `"0s"` turns warm-up off.
    pub warmup: Option<RawDuration>,
    /// TTL of values copied to their new owner during warm-up (an integer: seconds).
    pub warmup_ttl: Option<RawDuration>,
    /// Embedded caches of this pool when full.
    pub memory_full: Option<MemoryFull>,
    /// twemproxy's: take a failing backend off the ring.
    pub auto_eject_hosts: Option<bool>,
    /// twemproxy's: consecutive failures that eject a backend.
    pub server_failure_limit: Option<u32>,
    /// twemproxy's: how long an ejected backend stays out before it is probed.
    pub server_retry_timeout: Option<RawDuration>,
    /// How often each backend is probed with `version` on a connection of its own; `"0s"`
    /// turns active health checks off.
    pub health_check_interval: Option<RawDuration>,
    /// Consecutive failed probes that mark a backend down.
    pub health_check_failures: Option<u32>,
    /// Listener TLS: the certificate chain served (PEM).
    pub tls_cert: Option<String>,
    /// Listener TLS: its private key (PEM).
    pub tls_key: Option<String>,
    /// Listener TLS: clients must present a certificate chaining to this CA (PEM).
    pub tls_client_ca: Option<String>,
    /// Listener TLS: client identities (SAN DNS names or URIs) allowed; empty: any verified.
    #[serde(default)]
    pub tls_client_names: Vec<String>,
    /// Listener TLS: a handshake not finished in this long is dropped.
    pub tls_handshake_timeout: Option<RawDuration>,
    /// Connect to the servers with TLS.
    pub server_tls: Option<bool>,
    /// Backend TLS: the CA (PEM) the servers' certificates must chain to; default: the
    /// system's CAs.
    pub server_tls_ca: Option<String>,
    /// Backend TLS: the name the servers' certificates must carry; default: each one's host.
    pub server_tls_name: Option<String>,
    /// Backend TLS: a client certificate (PEM) for servers that require one.
    pub server_tls_cert: Option<String>,
    /// Backend TLS: its private key (PEM).
    pub server_tls_key: Option<String>,
}

/// Keys of a pool's table (for the hint when one is written at the top of the file).
const POOL_KEYS: &[&str] = &[
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "connect_timeout",
    "server_connections",
    "servers",
    "item_size_max",
    "max_client_inflight",
    "max_client_buffer",
    "max_client_connections",
    "client_timeout",
    "client_allow",
    "client_deny",
    "retrieval_failure",
    "protocol",
    "preserve_flags",
    "warmup",
    "warmup_ttl",
    "memory_full",
    "auto_eject_hosts",
    "server_failure_limit",
    "server_retry_timeout",
    "health_check_interval",
    "health_check_failures",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_client_names",
    "tls_handshake_timeout",
    "server_tls",
    "server_tls_ca",
    "server_tls_name",
    "server_tls_cert",
    "server_tls_key",
];

/// Keys that belong at the top of the file, before any `[pools.*]` table.
const TOP_LEVEL_KEYS: &[&str] = &[
    "threads",
    "max_clients",
    "max_client_memory",
    "admin",
    "admin_tls_cert",
    "admin_tls_key",
    "shutdown_timeout",
];

impl RawConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| syntax_error(text, &e))
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// A TOML error as one line: the dotted key it is at, what is wrong, and where a top-level
/// key written inside a pool's table belongs.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    let Some(span) = e.span() else {
        return ConfigError::Syntax(message);
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let (table, key) = key_at(text, span.start);
    let field = match (table.as_str(), key.as_deref()) {
        ("", Some(k)) => k.to_string(),
        (t, Some(k)) => format!("{t}.{k}"),
        (t, None) => t.to_string(),
    };
    let misplaced = key
        .as_deref()
        .filter(|k| !table.is_empty() && TOP_LEVEL_KEYS.contains(k));
    let pool_key_at_top = key
        .as_deref()
        .filter(|k| table.is_empty() && !TOP_LEVEL_KEYS.contains(k) && POOL_KEYS.contains(k));
    let hint = match (misplaced, pool_key_at_top) {
        (Some(k), _) => format!(
            " ({k} is a top-level key: put it above the first [pools.*] or [routes.*] table, \
             or it is read as part of [{table}])"
        ),
        (None, Some(k)) => {
            format!(" ({k} is a key of a pool: put it inside a [pools.<name>] table)")
        }
        (None, None) => String::new(),
    };
    ConfigError::Syntax(format!("line {line_no}: {field}: {message}{hint}"))
}

/// The table header in force at byte `at` of `text`, and the key of the line there.
fn key_at(text: &str, at: usize) -> (String, Option<String>) {
    let mut table = String::new();
    let mut key = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = header.trim().to_string();
        }
        if at < pos + line.len() {
            key = trimmed
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string());
            break;
        }
        pos += line.len();
    }
    (table, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        RawConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_syntax_error_names_its_key_in_one_line() {
        let e = error("[pools.main]\nlisten = \"127.0.0.1:1\"\nretrieval_failure = \"ignore\"\n");
        assert!(
            e.starts_with("line 3: pools.main.retrieval_failure: unknown variant `ignore`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = error("[pools.main]\nhash = \"sha1\"\n");
        assert!(
            e.contains("pools.main.hash") && e.contains("fnv1a_64"),
            "{e}"
        );
        let e = error("[pools.main]\ntimeout = true\n");
        assert!(e.contains("pools.main.timeout"), "{e}");
    }

    #[test]
    fn a_pool_key_at_the_top_says_where_it_belongs() {
        let e = error("listen = \"127.0.0.1:1\"\n[pools.main]\n");
        assert!(e.contains("listen is a key of a pool"), "{e}");
    }

    #[test]
    fn a_top_level_key_inside_a_pool_says_where_it_belongs() {
        let e = error("[pools.main]\nlisten = \"127.0.0.1:1\"\nthreads = 2\n");
        assert!(e.contains("pools.main.threads"), "{e}");
        assert!(e.contains("threads is a top-level key"), "{e}");
    }
}
