//! From the file as written to the typed configuration: one small check per key, each
//! naming the key it is about (`pools.main.timeout: must be at least 1 (milliseconds)`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::raw::{MemoryFull, RawConfig, RawPool, RawSize};
use super::{
    defaults, BackendProtocol, Config, ConfigError, Ejection, Endpoint, PoolConfig,
    RetrievalFailure, ServerConfig,
};
use crate::admission::AccessList;
use crate::ring::HashTag;

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
        Ok(Config {
            threads: threads(self.threads)?,
            max_clients: at_least_one("max_clients", self.max_clients, defaults::MAX_CLIENTS)?,
            max_client_memory: max_client_memory(self.max_client_memory.as_ref())?,
            admin: self
                .admin
                .as_deref()
                .map(|a| address("admin", a))
                .transpose()?,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout.unwrap_or(10_000)),
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

/// Parses a size: bytes, or a number with `k`, `m` or `g`.
pub fn parse_size(field: &str, raw: &RawSize) -> Result<u64, ConfigError> {
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
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(invalid(
            field,
            format!("'{text}': unknown unit (ms, s, m, h)"),
        )),
    }
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
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host, port, weight) = match parts.as_slice() {
        [w, p, h] => (*h, *p, Some(*w)),
        [p, h] => (*h, *p, None),
        _ => return Err(shape()),
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
            timeout: milliseconds(&f.of("timeout"), self.timeout, defaults::TIMEOUT_MS)?,
            connect_timeout: milliseconds(
                &f.of("connect_timeout"),
                self.connect_timeout,
                defaults::CONNECT_TIMEOUT_MS,
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
            client_timeout: client_timeout(&f, self.client_timeout.as_deref())?,
            access: access(&f, &self.client_allow, &self.client_deny)?,
            retrieval_failure: self.retrieval_failure.unwrap_or(RetrievalFailure::Miss),
            protocol,
            preserve_flags,
            warmup: self.warmup(&f, protocol)?,
            warmup_ttl: self.warmup_ttl.unwrap_or(defaults::WARMUP_TTL),
            ejection: self.ejection(&f)?,
            memory_evict: self.memory_full.unwrap_or(MemoryFull::Evict) == MemoryFull::Evict,
        })
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

    fn warmup(&self, f: &Keys<'_>, protocol: BackendProtocol) -> Result<Duration, ConfigError> {
        let warmup = match &self.warmup {
            None => Duration::from_secs(defaults::WARMUP_SECS),
            Some(t) => parse_duration(&f.of("warmup"), t)?,
        };
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
        let retry_timeout = milliseconds(
            &f.of("server_retry_timeout"),
            self.server_retry_timeout,
            30_000,
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
    text: Option<&str>,
) -> Result<Option<Duration>, ConfigError> {
    match text {
        None => Ok(None),
        Some(t) => Ok(Some(parse_duration(&f.of("client_timeout"), t)?).filter(|d| !d.is_zero())),
    }
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

/// A positive number of milliseconds.
fn milliseconds(field: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(field, "must be at least 1 (milliseconds)")),
        n => Ok(Duration::from_millis(n)),
    }
}
