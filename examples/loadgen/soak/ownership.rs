//! Soak-mode key ownership: the backends memroute serves the target from and which of them
//! owns each key, computed from memroute's own config with memroute's own rings. The target
//! is a pool's listener (one copy: the pool), or a replicated route's (one copy per pool of
//! the route, each with its own ring: every key has an owner in each).

use crate::cli::Args;
use crate::shared::build_shared;
use memroute::config::{ReadPolicy, WritePolicy};
use tokio::time::Instant;

/// One backend.
pub struct SoakServer {
    /// `host:port` or `memory:<size>`.
    pub address: String,
    /// Its ring name if it has one.
    pub name: Option<String>,
    /// Where to read it directly at the end (none for embedded caches).
    pub addr: Option<std::net::SocketAddr>,
    /// The copy (index into `SoakPlan::copies`) it belongs to.
    pub copy: usize,
}

/// One copy of the data: a pool, and each key's owner in it.
pub struct SoakCopy {
    pub pool: String,
    /// Owner of each key (index into `SoakPlan::servers`).
    pub owners: Vec<u16>,
}

/// The replicated route the target listens for.
pub struct Replication {
    pub route: String,
    pub write: WritePolicy,
    pub read: ReadPolicy,
}

/// The backends and who owns which key.
pub struct SoakPlan {
    pub servers: Vec<SoakServer>,
    /// One copy, or (replicated) the route's copies in order, the designated one first.
    pub copies: Vec<SoakCopy>,
    pub volatile: Option<usize>,
    pub replication: Option<Replication>,
}

/// Loads the config, picks the pool (or the replicated route's pools), computes every key's
/// owner in each with memroute's ring.
pub fn soak_plan(args: &Args, path: &std::path::Path) -> Result<SoakPlan, String> {
    use memroute::config::{Endpoint, RawConfig, RouteKind, Target};
    use memroute::generation::{Generation, PoolState};
    use memroute::ring::Distribution;

    let config = RawConfig::load(path)
        .and_then(|raw| raw.validate())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let target: Option<std::net::SocketAddr> = args.target.parse().ok();
    let generation = Generation::build(config, None).map_err(|e| e.to_string())?;
    let pool_named = |name: &str| -> Result<&PoolState, String> {
        generation
            .pools
            .iter()
            .find(|p| p.config.name == name)
            .ok_or_else(|| format!("no pool {name}"))
    };
    let route = generation
        .config
        .listeners
        .iter()
        .find(|l| Some(l.listen) == target)
        .and_then(|l| match &l.target {
            Target::Route(name) => Some(name),
            Target::Pool(_) => None,
        });
    let (pools, replication): (Vec<&PoolState>, _) = match route {
        Some(name) => {
            let r = generation.config.route(name).expect("a listener's route");
            let RouteKind::Replicated {
                copies,
                write,
                read,
                ..
            } = &r.kind
            else {
                return Err(format!(
                    "route {name} listens on {}: soak mode serves pools and replicated routes only",
                    args.target
                ));
            };
            let pools = copies
                .iter()
                .map(|c| pool_named(c))
                .collect::<Result<_, _>>()?;
            let replication = Replication {
                route: name.clone(),
                write: *write,
                read: *read,
            };
            (pools, Some(replication))
        }
        None => {
            let pool = match generation.pools.as_slice() {
                [one] => one,
                pools => pools
                    .iter()
                    .find(|p| p.config.listen.is_some() && p.config.listen == target)
                    .ok_or_else(|| {
                        format!("no pool of {} listens on {}", path.display(), args.target)
                    })?,
            };
            (vec![pool], None)
        }
    };
    let mut servers: Vec<SoakServer> = Vec::new();
    for (copy, pool) in pools.iter().enumerate() {
        if pool.config.distribution == Distribution::Random {
            return Err("soak mode needs a deterministic distribution (ketama or modula)".into());
        }
        for s in &pool.config.servers {
            let address = s.address();
            if servers.iter().any(|o| o.address == address) {
                return Err(format!("{address} is in more than one copy"));
            }
            servers.push(SoakServer {
                address,
                name: s.name.clone(),
                addr: match &s.endpoint {
                    Endpoint::Tcp { addr, .. } => Some(*addr),
                    Endpoint::Memory { .. } => None,
                },
                copy,
            });
        }
    }
    if servers.len() > u16::MAX as usize {
        return Err("too many servers".into());
    }
    let volatile = match &args.volatile {
        None => None,
        Some(v) => Some(
            servers
                .iter()
                .position(|s| &s.address == v || s.name.as_ref() == Some(v))
                .ok_or_else(|| {
                    let all: Vec<&str> = servers.iter().map(|s| s.address.as_str()).collect();
                    let of = match replication {
                        Some(_) => "the route's copies",
                        None => "the pool",
                    };
                    format!("--volatile {v}: not a server of {of} ({})", all.join(", "))
                })?,
        ),
    };
    // Keys are built exactly as build_shared builds them.
    let sh = build_shared(args, Instant::now(), Instant::now());
    let mut copies = Vec::with_capacity(pools.len());
    let mut first = 0;
    for pool in pools {
        let owners = (0..args.keys)
            .map(|k| (first + pool.ring_backends[pool.ring.server_for(sh.key(k))]) as u16)
            .collect();
        copies.push(SoakCopy {
            pool: pool.config.name.clone(),
            owners,
        });
        first += pool.config.servers.len();
    }
    Ok(SoakPlan {
        servers,
        copies,
        volatile,
        replication,
    })
}
