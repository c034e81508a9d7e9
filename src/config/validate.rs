//! From the file as written to the typed configuration: one small check per key, each
//! naming the key it is about (`pools.main.timeout: must be at least 1 (milliseconds)`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{MemoryFull, RawConfig, RawDuration, RawPool, RawSize};
use super::{
    defaults, BackendProtocol, Config, ConfigError, Ejection, Endpoint, HealthCheck, PoolConfig,
    RetrievalFailure, ServerConfig,
};
use crate::admission::AccessList;
use crate::ring::HashTag;
use crate::tls::{BackendTls, ListenerTls};

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl RawConfig {
    /// Checks every value and produces the typed configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if self.pools.is_empty() {
            return Err(invalid("pools", "at least one pool is required"));
        }
        let pools = self
            .pools
            .iter()
            .map(|(name, raw)| raw.validate(name))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = super::routes::validate(&self.routes, &pools)?;
        let listeners = super::routes::listeners(&self.routes, &pools)?;
        let admin = self
            .admin
            .as_deref()
            .map(|a| address("admin", a))
            .transpose()?;
        if let Some(l) = listeners.iter().find(|l| Some(l.listen) == admin) {
            return Err(invalid(
                "admin",
                format!("{} is also the listen address of {}", l.listen, l.target),
            ));
        }
        let admin_tls = match (&self.admin_tls_cert, &self.admin_tls_key, admin) {
            (None, None, _) => None,
            (Some(_), Some(_), None) => {
                return Err(invalid(
                    "admin_tls_cert",
                    "needs admin (the listener's address)",
                ))
            }
            (Some(c), Some(k), Some(_)) => Some(Arc::new(
                crate::tls::listener(
                    Path::new(c),
                    Path::new(k),
                    None,
                    Vec::new(),
                    Duration::from_secs(10),
                )
                .map_err(|e| invalid("admin_tls_cert", e.to_string()))?,
            )),
            (Some(_), None, _) => {
                return Err(invalid(
                    "admin_tls_key",
                    "admin_tls_cert needs admin_tls_key",
                ))
            }
            (None, Some(_), _) => {
                return Err(invalid(
                    "admin_tls_cert",
                    "admin_tls_key needs admin_tls_cert",
                ))
            }
        };
        Ok(Config {
            admin_tls,
            threads: threads(self.threads)?,
            max_clients: at_least_one("max_clients", self.max_clients, defaults::MAX_CLIENTS)?,
            max_client_memory: max_client_memory(self.max_client_memory.as_ref())?,
            admin,
            shutdown_timeout: duration(
                "shutdown_timeout",
                self.shutdown_timeout.as_ref(),
                Duration::from_secs(10),
            )?,
            pools,
            routes,
            listeners,
        })
    }
}

fn threads(threads: Option<usize>) -> Result<usize, ConfigError> {
    match threads {
        None | Some(0) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(n) if n > 1024 => Err(invalid("threads", "at most 1024")),
        Some(n) => Ok(n),
    }
}

pub(super) fn at_least_one(
    field: &str,
    value: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(field, "must be at least 1")),
        n => Ok(n),
    }
}

fn max_client_memory(raw: Option<&RawSize>) -> Result<usize, ConfigError> {
    let bytes = match raw {
        None => defaults::MAX_CLIENT_MEMORY,
        Some(s) => parse_size("max_client_memory", s)?,
    };
    if bytes < 1024 * 1024 {
        return Err(invalid("max_client_memory", "must be at least 1m"));
    }
    Ok(bytes as usize)
}

pub(super) fn address(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| invalid(field, format!("'{text}' is not host:port")))
}

/// Parses a size: bytes, or a number with a unit — `k`, `m`, `g` (or `kb`/`kib`, `mb`/`mib`,
/// `gb`/`gib`, all powers of 1024 as memcached's `-m` and `-I` read them), or `b`.
pub fn parse_size(field: &str, raw: &RawSize) -> Result<u64, ConfigError> {
    let s = match raw {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(s) => s,
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => 0,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| mult > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            invalid(
                field,
                format!("'{s}' is not a size (e.g. 1048576, \"1m\", \"64kb\")"),
            )
        })
}

/// Parses a duration written with its unit: `"500ms"`, `"30s"`, `"5m"`, `"1h"` (a number
/// alone in a string is ambiguous and refused: write `500` for milliseconds or `"500ms"`).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_a_duration = || {
        invalid(
            field,
            format!(
                "'{text}' is not a duration (e.g. \"30s\", \"1.5s\", \"500ms\", or 500 for milliseconds)"
            ),
        )
    };
    // Whole and fractional parts kept apart: "1.5s" is exactly 1500 ms, with no float.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(not_a_duration());
    }
    let whole: u64 = match whole {
        "" => 0,
        w => w.parse().map_err(|_| not_a_duration())?,
    };
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(invalid(
                field,
                format!("'{text}' needs a unit: \"{num}s\", \"{num}ms\" (or a whole number without quotes for milliseconds)"),
            ))
        }
        _ => {
            return Err(invalid(
                field,
                format!("'{text}': unknown unit (ms, s, m, h)"),
            ))
        }
    };
    // The fraction, to the millisecond (digits beyond are dropped).
    let mut frac_ms = 0u64;
    let mut scale = unit_ms;
    for d in frac.bytes() {
        scale /= 10;
        frac_ms += u64::from(d - b'0') * scale;
    }
    whole
        .checked_mul(unit_ms)
        .and_then(|ms| ms.checked_add(frac_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| invalid(field, format!("'{text}' is too long")))
}

/// Parses `host:port[:weight] [name]` or `memory:<size>[:weight] [name]`.
pub fn parse_server(field: &str, text: &str) -> Result<ServerConfig, ConfigError> {
    let mut words = text.split_whitespace();
    let spec = words
        .next()
        .ok_or_else(|| invalid(field, "empty server entry"))?;
    let name = words.next().map(str::to_owned);
    let shape = || {
        invalid(
            field,
            format!("'{text}': expected \"host:port:weight [name]\""),
        )
    };
    if words.next().is_some() {
        return Err(shape());
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
    // `[v6-address]:port[:weight]`, or `host:port[:weight]` (an unbracketed IPv6 address
    // works too when the weight is given, as twemproxy reads it).
    let (host, port, weight) = match spec.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(shape)?;
            let after = after.strip_prefix(':').ok_or_else(shape)?;
            match after.split_once(':') {
                Some((p, w)) => (host, p, Some(w)),
                None => (host, after, None),
            }
        }
        None => {
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [w, p, h] => (*h, *p, Some(*w)),
                [p, h] => (*h, *p, None),
                _ => return Err(shape()),
            }
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

/// The dotted name of a pool's (or a route's) key, for errors.
pub(super) struct Keys<'a>(pub &'static str, pub &'a str);

impl Keys<'_> {
    pub(super) fn of(&self, key: &str) -> String {
        format!("{}.{}.{key}", self.0, self.1)
    }
}

impl RawPool {
    /// Validates one pool.
    pub fn validate(&self, name: &str) -> Result<PoolConfig, ConfigError> {
        let f = Keys("pools", name);
        let protocol = self.protocol.unwrap_or(BackendProtocol::Memcached);
        let servers = self.servers(&f, protocol)?;
        let preserve_flags = self.preserve_flags(&f, protocol)?;
        Ok(PoolConfig {
            name: name.to_owned(),
            listen: self
                .listen
                .as_deref()
                .map(|l| address(&f.of("listen"), l))
                .transpose()?,
            hash: self.hash.unwrap_or(defaults::HASH),
            hash_tag: self.hash_tag(&f)?,
            distribution: self.distribution.unwrap_or(defaults::DISTRIBUTION),
            timeout: positive(&f.of("timeout"), self.timeout.as_ref(), defaults::TIMEOUT)?,
            connect_timeout: positive(
                &f.of("connect_timeout"),
                self.connect_timeout.as_ref(),
                defaults::CONNECT_TIMEOUT,
            )?,
            server_connections: self.server_connections(&f)?,
            servers,
            item_size_max: item_size_max(&f, self.item_size_max.as_ref())?,
            max_client_inflight: at_least_one(
                &f.of("max_client_inflight"),
                self.max_client_inflight,
                defaults::MAX_CLIENT_INFLIGHT,
            )?,
            max_client_buffer: max_client_buffer(&f, self.max_client_buffer.as_ref())?,
            max_client_connections: max_client_connections(&f, self.max_client_connections)?,
            client_timeout: client_timeout(&f, self.client_timeout.as_ref())?,
            access: access(&f, &self.client_allow, &self.client_deny)?,
            retrieval_failure: self.retrieval_failure.unwrap_or(RetrievalFailure::Miss),
            protocol,
            preserve_flags,
            warmup: self.warmup(&f, protocol)?,
            warmup_ttl: ttl(
                &f.of("warmup_ttl"),
                self.warmup_ttl.as_ref(),
                defaults::WARMUP_TTL,
            )?,
            health_check: self.health_check(&f)?,
            ejection: self.ejection(&f)?,
            memory_evict: self.memory_full.unwrap_or(MemoryFull::Evict) == MemoryFull::Evict,
            tls: listener_tls(
                &f,
                RawListenerTls {
                    cert: self.tls_cert.as_deref(),
                    key: self.tls_key.as_deref(),
                    client_ca: self.tls_client_ca.as_deref(),
                    client_names: &self.tls_client_names,
                    handshake_timeout: self.tls_handshake_timeout.as_ref(),
                },
            )?,
            server_tls: self.server_tls(&f, protocol)?,
        })
    }

    fn server_tls(
        &self,
        f: &Keys<'_>,
        protocol: BackendProtocol,
    ) -> Result<Option<Arc<BackendTls>>, ConfigError> {
        if !self.server_tls.unwrap_or(false) {
            for (key, set) in [
                ("server_tls_ca", self.server_tls_ca.is_some()),
                ("server_tls_name", self.server_tls_name.is_some()),
                ("server_tls_cert", self.server_tls_cert.is_some()),
                ("server_tls_key", self.server_tls_key.is_some()),
            ] {
                if set {
                    return Err(invalid(f.of(key), "needs server_tls = true"));
                }
            }
            return Ok(None);
        }
        if protocol == BackendProtocol::TokyoTyrant {
            return Err(invalid(f.of("server_tls"), "ttserver does not speak TLS"));
        }
        let client = match (&self.server_tls_cert, &self.server_tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((Path::new(c.as_str()), Path::new(k.as_str()))),
            (Some(_), None) => {
                return Err(invalid(
                    f.of("server_tls_key"),
                    "server_tls_cert needs server_tls_key",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    f.of("server_tls_cert"),
                    "server_tls_key needs server_tls_cert",
                ))
            }
        };
        crate::tls::backend(
            self.server_tls_ca.as_deref().map(Path::new),
            client,
            self.server_tls_name.as_deref(),
        )
        .map(|t| Some(Arc::new(t)))
        .map_err(|e| invalid(f.of("server_tls"), e.to_string()))
    }

    fn hash_tag(&self, f: &Keys<'_>) -> Result<Option<HashTag>, ConfigError> {
        match self.hash_tag.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => HashTag::new(t).map(Some).map_err(|_| {
                invalid(
                    f.of("hash_tag"),
                    format!("'{t}' must be exactly two characters, e.g. \"{{}}\""),
                )
            }),
        }
    }

    fn server_connections(&self, f: &Keys<'_>) -> Result<usize, ConfigError> {
        match self.server_connections.unwrap_or(1) {
            n @ 1..=1024 => Ok(n),
            _ => Err(invalid(
                f.of("server_connections"),
                "must be between 1 and 1024",
            )),
        }
    }

    fn servers(
        &self,
        f: &Keys<'_>,
        protocol: BackendProtocol,
    ) -> Result<Vec<ServerConfig>, ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid(f.of("servers"), "at least one server is required"));
        }
        let mut servers: Vec<ServerConfig> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            let field = format!("{}[{i}]", f.of("servers"));
            let server = parse_server(&field, s)?;
            if servers.iter().any(|o| o.identity() == server.identity()) {
                return Err(invalid(
                    field,
                    format!("'{s}' duplicates another server's ring name"),
                ));
            }
            servers.push(server);
        }
        let embedded = servers
            .iter()
            .any(|s| matches!(s.endpoint, Endpoint::Memory { .. }));
        if protocol == BackendProtocol::TokyoTyrant && embedded {
            return Err(invalid(
                f.of("servers"),
                "a tokyotyrant pool cannot hold memory: servers",
            ));
        }
        Ok(servers)
    }

    fn preserve_flags(&self, f: &Keys<'_>, protocol: BackendProtocol) -> Result<bool, ConfigError> {
        let preserve = self.preserve_flags.unwrap_or(false);
        if preserve && protocol != BackendProtocol::TokyoTyrant {
            return Err(invalid(
                f.of("preserve_flags"),
                "only applies to protocol = \"tokyotyrant\" (memcached keeps flags itself)",
            ));
        }
        Ok(preserve)
    }

    fn health_check(&self, f: &Keys<'_>) -> Result<Option<HealthCheck>, ConfigError> {
        let interval = duration(
            &f.of("health_check_interval"),
            self.health_check_interval.as_ref(),
            defaults::HEALTH_CHECK_INTERVAL,
        )?;
        let failures = match self.health_check_failures.unwrap_or(2) {
            0 => return Err(invalid(f.of("health_check_failures"), "must be at least 1")),
            n => n,
        };
        Ok((!interval.is_zero()).then_some(HealthCheck { interval, failures }))
    }

    fn warmup(&self, f: &Keys<'_>, protocol: BackendProtocol) -> Result<Duration, ConfigError> {
        let warmup = duration(
            &f.of("warmup"),
            self.warmup.as_ref(),
            Duration::from_secs(defaults::WARMUP_SECS),
        )?;
        if protocol == BackendProtocol::TokyoTyrant && !warmup.is_zero() && self.warmup.is_some() {
            return Err(invalid(
                f.of("warmup"),
                "not available for tokyotyrant pools",
            ));
        }
        Ok(warmup)
    }

    fn ejection(&self, f: &Keys<'_>) -> Result<Option<Ejection>, ConfigError> {
        if !self.auto_eject_hosts.unwrap_or(false) {
            return Ok(None);
        }
        let failure_limit = match self.server_failure_limit.unwrap_or(2) {
            0 => return Err(invalid(f.of("server_failure_limit"), "must be at least 1")),
            n => n,
        };
        let retry_timeout = positive(
            &f.of("server_retry_timeout"),
            self.server_retry_timeout.as_ref(),
            Duration::from_secs(30),
        )?;
        Ok(Some(Ejection {
            failure_limit,
            retry_timeout,
        }))
    }
}

/// A listener's largest value.
pub(super) fn item_size_max(f: &Keys<'_>, raw: Option<&RawSize>) -> Result<usize, ConfigError> {
    let bytes = match raw {
        None => defaults::ITEM_SIZE_MAX,
        Some(s) => parse_size(&f.of("item_size_max"), s)?,
    };
    if !(1024..=1024 * 1024 * 1024).contains(&bytes) {
        return Err(invalid(f.of("item_size_max"), "must be between 1k and 1g"));
    }
    Ok(bytes as usize)
}

/// A listener's per-client reply buffer.
pub(super) fn max_client_buffer(f: &Keys<'_>, raw: Option<&RawSize>) -> Result<usize, ConfigError> {
    let bytes = match raw {
        None => defaults::MAX_CLIENT_BUFFER,
        Some(s) => parse_size(&f.of("max_client_buffer"), s)?,
    };
    if bytes < 4096 {
        return Err(invalid(f.of("max_client_buffer"), "must be at least 4k"));
    }
    Ok(bytes as usize)
}

/// A listener's cap on connections.
pub(super) fn max_client_connections(
    f: &Keys<'_>,
    value: Option<usize>,
) -> Result<Option<usize>, ConfigError> {
    match value {
        Some(0) => Err(invalid(
            f.of("max_client_connections"),
            "must be at least 1",
        )),
        other => Ok(other),
    }
}

/// A listener's idle timeout (zero or absent: none).
pub(super) fn client_timeout(
    f: &Keys<'_>,
    raw: Option<&RawDuration>,
) -> Result<Option<Duration>, ConfigError> {
    let d = duration(&f.of("client_timeout"), raw, Duration::ZERO)?;
    Ok((!d.is_zero()).then_some(d))
}

/// A listener's TLS settings as written.
pub(super) struct RawListenerTls<'a> {
    pub cert: Option<&'a str>,
    pub key: Option<&'a str>,
    pub client_ca: Option<&'a str>,
    pub client_names: &'a [String],
    pub handshake_timeout: Option<&'a RawDuration>,
}

/// A listener's TLS, its files read now (so a reload re-reads them and a bad one rejects
/// the reload); none without `tls_cert`.
pub(super) fn listener_tls(
    f: &Keys<'_>,
    raw: RawListenerTls<'_>,
) -> Result<Option<Arc<ListenerTls>>, ConfigError> {
    let (cert, key) = match (raw.cert, raw.key) {
        (None, None) => {
            for (key, set) in [
                ("tls_client_ca", raw.client_ca.is_some()),
                ("tls_client_names", !raw.client_names.is_empty()),
                ("tls_handshake_timeout", raw.handshake_timeout.is_some()),
            ] {
                if set {
                    return Err(invalid(f.of(key), "needs tls_cert and tls_key"));
                }
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(invalid(f.of("tls_key"), "tls_cert needs tls_key")),
        (None, Some(_)) => return Err(invalid(f.of("tls_cert"), "tls_key needs tls_cert")),
        (Some(c), Some(k)) => (c, k),
    };
    let timeout = positive(
        &f.of("tls_handshake_timeout"),
        raw.handshake_timeout,
        Duration::from_secs(10),
    )?;
    crate::tls::listener(
        Path::new(cert),
        Path::new(key),
        raw.client_ca.map(Path::new),
        raw.client_names.to_vec(),
        timeout,
    )
    .map(|t| Some(Arc::new(t)))
    .map_err(|e| invalid(f.of("tls_cert"), e.to_string()))
}

/// A listener's access lists.
pub(super) fn access(
    f: &Keys<'_>,
    allow: &[String],
    deny: &[String],
) -> Result<AccessList, ConfigError> {
    AccessList::parse(allow, deny).map_err(|e| {
        let key = match AccessList::parse(allow, &[]) {
            Err(_) => "client_allow",
            Ok(_) => "client_deny",
        };
        invalid(f.of(key), e)
    })
}

/// A duration (an integer: milliseconds, twemproxy's unit), or `default`.
pub(super) fn duration(
    field: &str,
    raw: Option<&RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(RawDuration::Number(ms)) => Ok(Duration::from_millis(*ms)),
        Some(RawDuration::Text(t)) => parse_duration(field, t),
    }
}

/// A duration that must not be zero.
fn positive(
    field: &str,
    raw: Option<&RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match duration(field, raw, default)? {
        d if d.is_zero() => Err(invalid(
            field,
            "must be more than 0 (e.g. 500 or \"500ms\")",
        )),
        d => Ok(d),
    }
}

/// A TTL in seconds (an integer: seconds, memcached's unit), or `default`.
pub(super) fn ttl(
    field: &str,
    raw: Option<&RawDuration>,
    default: u32,
) -> Result<u32, ConfigError> {
    let secs = match raw {
        None => return Ok(default),
        Some(RawDuration::Number(s)) => *s,
        Some(RawDuration::Text(t)) => parse_duration(field, t)?.as_secs(),
    };
    match u32::try_from(secs) {
        Ok(0) => Err(invalid(field, "must be at least 1 second")),
        Ok(s) => Ok(s),
        Err(_) => Err(invalid(field, "too long")),
    }
}
