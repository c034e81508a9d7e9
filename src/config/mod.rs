//! Configuration: the file as written ([`RawConfig`], TOML in twemproxy's vocabulary, read by
//! serde) → `validate()` → the typed [`Config`]. Every error names the key it is about.
//!
//! - [`raw`]: the file as written, and errors that say which key they are at.
//! - `validate`: one small check per key.
//! - `routes`: routes and listeners: references resolved, circles refused.
//! - `diff`: what a reload changes, for the log.

mod diff;
mod raw;
mod routes;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::admission::AccessList;
use crate::ring::{server_identity, Distribution, HashFunction, HashTag};
use crate::tls::{BackendTls, ListenerTls};

pub use diff::changes;
pub use raw::{
    MemoryFull, RawConfig, RawDuration, RawPool, RawRoute, RawSize, ReadPolicy, WritePolicy,
};
pub use validate::{parse_duration, parse_server, parse_size};

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
    /// TLS served by the admin listener.
    pub admin_tls: Option<Arc<ListenerTls>>,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// The pools.
    pub pools: Vec<PoolConfig>,
    /// The routes over them.
    pub routes: Vec<RouteConfig>,
    /// Where clients connect: every pool and route with a `listen`.
    pub listeners: Vec<ListenerConfig>,
}

impl Config {
    /// Every TLS file the configuration reads (certificates, keys, CAs).
    pub fn tls_files(&self) -> Vec<std::path::PathBuf> {
        let listeners = self.listeners.iter().filter_map(|l| l.client.tls.as_ref());
        let served = listeners
            .chain(self.admin_tls.as_ref())
            .flat_map(|t| t.files.iter());
        let backends = self
            .pools
            .iter()
            .filter_map(|p| p.server_tls.as_ref())
            .flat_map(|t| t.files.iter());
        let mut files: Vec<_> = served.chain(backends).cloned().collect();
        files.sort();
        files.dedup();
        files
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// What a listener or a route hands requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A pool (its ring).
    Pool(String),
    /// A route.
    Route(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pool(p) => write!(f, "pool {p}"),
            Target::Route(r) => write!(f, "route {r}"),
        }
    }
}

/// A validated route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    /// Its name.
    pub name: String,
    /// What it does.
    pub kind: RouteKind,
}

/// The kinds of route, with their settings.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteKind {
    /// The longest matching key prefix picks the target; `default` takes the rest.
    Prefix {
        /// Prefixes and their targets, longest prefix first.
        prefixes: Vec<(String, Target)>,
        /// For keys matching no prefix.
        default: Target,
    },
    /// Copies of the data in several pools (the first is the designated copy).
    Replicated {
        /// The pools, by name.
        copies: Vec<String>,
        /// How writes are answered.
        write: WritePolicy,
        /// When reads move on to the next copy.
        read: ReadPolicy,
        /// Reads start at a copy picked by the key's hash.
        spread_reads: bool,
    },
    /// A pool whose failed requests go to a gutter pool, writes with a capped TTL.
    Gutter {
        /// The pool that serves.
        primary: String,
        /// The pool that takes over.
        gutter: String,
        /// Longest TTL of a write in the gutter, seconds.
        failover_ttl: u32,
    },
    /// A route whose requests for part of the keys are also sent to a shadow pool.
    Shadow {
        /// The route or pool that serves.
        primary: Target,
        /// The pool that gets the copies (its answers are dropped).
        shadow: String,
        /// The part of the key hash space copied, 0 to 1.
        fraction: f64,
    },
}

/// A listener's settings for the clients it serves.
#[derive(Clone, Debug)]
pub struct ClientSettings {
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
    /// TLS, when the listener serves it.
    pub tls: Option<Arc<ListenerTls>>,
}

/// A listener: a pool's or a route's `listen`.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// The pool's or route's name.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// What it serves.
    pub target: Target,
    /// Its clients' settings.
    pub client: ClientSettings,
}

/// A validated pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The pool's name.
    pub name: String,
    /// Where it listens, if it has a listener of its own (else it is a route target only).
    pub listen: Option<SocketAddr>,
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
    /// Active health checks of the backends (none: off).
    pub health_check: Option<HealthCheck>,
    /// Embedded caches evict least-recently-used items when full (else they refuse).
    pub memory_evict: bool,
    /// TLS served by the pool's own listener.
    pub tls: Option<Arc<ListenerTls>>,
    /// TLS to the servers.
    pub server_tls: Option<Arc<BackendTls>>,
}

/// Active health checks: each backend probed with `version` on a connection of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// How often.
    pub interval: Duration,
    /// Consecutive failed probes that mark a backend down.
    pub failures: u32,
}

/// twemproxy's ejection settings (`auto_eject_hosts = true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive failures that eject a backend.
    pub failure_limit: u32,
    /// How long it stays out before a probe may bring it back.
    pub retry_timeout: Duration,
}

/// The value a name in the configuration stands for (a hash, a distribution, a mode), as the
/// file's reader takes it: for command-line flags that mirror the file's keys.
pub fn parse_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.into_deserializer();
    T::deserialize(de).map_err(|e| e.to_string())
}

/// What to do with a retrieval fragment whose backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalFailure {
    /// Answer the failed keys as misses (safe for a cache; counted as errors).
    Miss,
    /// Answer the whole retrieval with the backend's error.
    Error,
}

/// The protocol a pool's servers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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

impl Endpoint {
    /// The address of a server over TCP.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Endpoint::Tcp { addr, .. } => Some(*addr),
            Endpoint::Memory { .. } => None,
        }
    }
}

impl PoolConfig {
    /// The settings of a pool's own listener.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            item_size_max: self.item_size_max,
            max_client_inflight: self.max_client_inflight,
            max_client_buffer: self.max_client_buffer,
            max_client_connections: self.max_client_connections,
            client_timeout: self.client_timeout,
            access: self.access.clone(),
            tls: self.tls.clone(),
        }
    }
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
            Endpoint::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
            Endpoint::Memory { size, .. } => format!("memory:{size}"),
        }
    }
}

/// Defaults, chosen for a production proxy (twemproxy's where it has one).
pub mod defaults {
    use std::time::Duration;

    use crate::ring::{Distribution, HashFunction};

    /// twemproxy's default hash.
    pub const HASH: HashFunction = HashFunction::Fnv1a_64;
    /// twemproxy's default distribution.
    pub const DISTRIBUTION: Distribution = Distribution::Ketama;
    /// Every request gets a deadline (twemproxy's default is none).
    pub const TIMEOUT: Duration = Duration::from_millis(1000);
    /// Connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
    /// How often each backend is probed.
    pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);
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
    /// Longest TTL of a write failed over to a gutter pool (mcrouter's and routelib's usual
    /// 300 s: short enough that the gutter forgets what the primary will serve again).
    pub const FAILOVER_TTL: u32 = 300;
    /// TTL of values copied to their new owner during warm-up.
    pub const WARMUP_TTL: u32 = 3600;
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
    fn durations_take_units_and_integers_keep_their_twemproxy_meaning() {
        let with = |keys: &str| {
            let text = OK.replace("timeout = 400", keys);
            RawConfig::parse(&text).and_then(|r| r.validate())
        };
        let p = |keys: &str| with(keys).unwrap().pools.remove(0);
        assert_eq!(p("timeout = 250").timeout, Duration::from_millis(250));
        assert_eq!(p("timeout = \"250ms\"").timeout, Duration::from_millis(250));
        assert_eq!(p("timeout = \"2s\"").timeout, Duration::from_secs(2));
        assert_eq!(p("timeout = \"1.5s\"").timeout, Duration::from_millis(1500));
        assert_eq!(p("timeout = \"0.25m\"").timeout, Duration::from_secs(15));
        assert!(with("timeout = \"1.2.3s\"").is_err());
        assert!(with("timeout = \".s\"").is_err());
        assert_eq!(p("warmup = \"5m\"").warmup, Duration::from_secs(300));
        assert_eq!(p("warmup = 1500").warmup, Duration::from_millis(1500));
        assert_eq!(
            p("client_timeout = \"1h\"").client_timeout,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            p("server_retry_timeout = \"10s\"\nauto_eject_hosts = true")
                .ejection
                .unwrap()
                .retry_timeout,
            Duration::from_secs(10)
        );
        // TTLs are memcached's seconds.
        assert_eq!(p("warmup_ttl = 600").warmup_ttl, 600);
        assert_eq!(p("warmup_ttl = \"2h\"").warmup_ttl, 7200);
        assert_eq!(
            p("health_check_interval = \"500ms\"").health_check,
            Some(HealthCheck {
                interval: Duration::from_millis(500),
                failures: 2
            })
        );
        assert_eq!(p("health_check_interval = 0").health_check, None);
        let e = with("warmup = \"60\"").unwrap_err().to_string();
        assert!(
            e.contains("pools.main.warmup") && e.contains("needs a unit"),
            "{e}"
        );
        let e = with("timeout = \"2 fortnights\"").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let e = with("timeout = 0").unwrap_err().to_string();
        assert!(e.contains("pools.main.timeout"), "{e}");
        let shutdown = RawConfig::parse(&format!("shutdown_timeout = \"3s\"\n{OK}"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(shutdown.shutdown_timeout, Duration::from_secs(3));
    }

    #[test]
    fn sizes_take_units_and_servers_take_bracketed_ipv6() {
        let c = RawConfig::parse(&OK.replace("\"2m\"", "\"2mb\""))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.pools[0].item_size_max, 2 * 1024 * 1024);
        let c = RawConfig::parse(&OK.replace("\"2m\"", "\"512KiB\""))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.pools[0].item_size_max, 512 * 1024);
        assert!(err(&OK.replace("\"2m\"", "\"2 parsecs\"")).contains("item_size_max"));
        let v6 = OK.replace("\"127.0.0.1:11211:1\"", "\"[::1]:11211:3\"");
        let c = RawConfig::parse(&v6).unwrap().validate().unwrap();
        let s = &c.pools[0].servers[0];
        assert_eq!((s.address(), s.weight), ("[::1]:11211".to_string(), 3));
        assert_eq!(s.endpoint.addr().unwrap(), "[::1]:11211".parse().unwrap());
        let v6 = OK.replace("\"127.0.0.1:11211:1\"", "\"[::1]:11211\"");
        assert!(RawConfig::parse(&v6).unwrap().validate().is_ok());
        assert!(err(&OK.replace("\"127.0.0.1:11211:1\"", "\"[::1:11211\"")).contains("servers[0]"));
    }

    #[test]
    fn admin_may_not_share_a_listen_address() {
        let e = err(&format!("admin = \"127.0.0.1:22121\"\n{OK}"));
        assert!(e.contains("admin") && e.contains("pool main"), "{e}");
    }

    #[test]
    fn duplicate_ring_names_and_listeners_are_rejected() {
        assert!(err(&OK.replace("cache-b", "127.0.0.1")).contains("servers[1]"));
        let two = format!("{OK}\n[pools.other]\nlisten = \"127.0.0.1:22121\"\nservers = [\"127.0.0.1:11213:1\"]\n");
        assert!(err(&two).contains("pools.other.listen"));
    }
}
