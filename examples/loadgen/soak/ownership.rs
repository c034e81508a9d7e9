//! Soak-mode key ownership: the backends of the pool memroute serves and which of them
//! owns each key, computed from memroute's own config with memroute's own ring.

use crate::cli::Args;
use crate::shared::build_shared;
use tokio::time::Instant;

/// One backend of the pool.
pub struct SoakServer {
    /// `host:port` or `memory:<size>`.
    pub address: String,
    /// Its ring name if it has one.
    pub name: Option<String>,
    /// Where to read it directly at the end (none for embedded caches).
    pub addr: Option<std::net::SocketAddr>,
}

/// The backends and who owns which key.
pub struct SoakPlan {
    pub servers: Vec<SoakServer>,
    pub owners: Vec<u16>,
    pub volatile: Option<usize>,
}

/// Loads the config, picks the pool, computes every key's owner with memroute's ring.
pub fn soak_plan(args: &Args, path: &std::path::Path) -> Result<SoakPlan, String> {
    use memroute::config::{Endpoint, RawConfig};
    use memroute::generation::Generation;
    use memroute::ring::Distribution;

    let config = RawConfig::load(path)
        .and_then(|raw| raw.validate())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let target: Option<std::net::SocketAddr> = args.target.parse().ok();
    let generation = Generation::build(config, None).map_err(|e| e.to_string())?;
    let pool = match generation.pools.as_slice() {
        [one] => one,
        pools => pools
            .iter()
            .find(|p| p.config.listen.is_some() && p.config.listen == target)
            .ok_or_else(|| format!("no pool of {} listens on {}", path.display(), args.target))?,
    };
    if pool.config.distribution == Distribution::Random {
        return Err("soak mode needs a deterministic distribution (ketama or modula)".into());
    }
    if pool.config.servers.len() > u16::MAX as usize {
        return Err("too many servers".into());
    }
    let servers: Vec<SoakServer> = pool
        .config
        .servers
        .iter()
        .map(|s| SoakServer {
            address: s.address(),
            name: s.name.clone(),
            addr: match &s.endpoint {
                Endpoint::Tcp { addr, .. } => Some(*addr),
                Endpoint::Memory { .. } => None,
            },
        })
        .collect();
    let volatile = match &args.volatile {
        None => None,
        Some(v) => Some(
            servers
                .iter()
                .position(|s| &s.address == v || s.name.as_ref() == Some(v))
                .ok_or_else(|| {
                    let all: Vec<&str> = servers.iter().map(|s| s.address.as_str()).collect();
                    format!(
                        "--volatile {v}: not a server of the pool ({})",
                        all.join(", ")
                    )
                })?,
        ),
    };
    // Keys are built exactly as build_shared builds them.
    let sh = build_shared(args, Instant::now(), Instant::now());
    let owners = (0..args.keys)
        .map(|k| pool.ring_backends[pool.ring.server_for(sh.key(k))] as u16)
        .collect();
    Ok(SoakPlan {
        servers,
        owners,
        volatile,
    })
}
