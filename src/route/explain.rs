//! Routes explained to operators: where a key goes on each route listener
//! (`memroute route KEY`, the admin `/route`), and the routes of a configuration as a tree
//! (`--check`).

use crate::config::{RouteKind, Target};
use crate::generation::Generation;

use super::key_hash;

/// Where `key` goes on each route listener of `generation`, as a line per listener:
/// `listener <name>: <key> -> <prefix or default> -> <route> … -> <pool>: <server>`.
pub fn explain(generation: &Generation, key: &[u8]) -> String {
    let mut out = String::new();
    for l in &generation.config.listeners {
        if let Target::Route(_) = &l.target {
            let path = explain_target(generation, &l.target, key);
            out.push_str(&format!(
                "listener {}: {} -> {path}\n",
                l.name,
                String::from_utf8_lossy(key)
            ));
        }
    }
    out
}

fn owner_name(generation: &Generation, pool: &str, key: &[u8]) -> String {
    let p = generation
        .pools
        .iter()
        .find(|p| p.config.name == pool)
        .expect("validated: the pool exists");
    let owner = &p.backends[p.ring_backends[p.ring.server_for(key)]];
    format!("pool {pool}: {}", owner.name)
}

fn explain_target(generation: &Generation, target: &Target, key: &[u8]) -> String {
    let name = match target {
        Target::Pool(p) => return owner_name(generation, p, key),
        Target::Route(r) => r,
    };
    let route = generation
        .config
        .route(name)
        .expect("validated: the route exists");
    match &route.kind {
        RouteKind::Prefix { prefixes, default } => {
            match prefixes.iter().find(|(p, _)| key.starts_with(p.as_bytes())) {
                Some((p, t)) => format!(
                    "route {name} (prefix \"{p}\") -> {}",
                    explain_target(generation, t, key)
                ),
                None => format!(
                    "route {name} (default) -> {}",
                    explain_target(generation, default, key)
                ),
            }
        }
        RouteKind::Replicated {
            copies,
            write,
            read,
            ..
        } => {
            let copies: Vec<String> = copies
                .iter()
                .map(|c| owner_name(generation, c, key))
                .collect();
            format!(
                "route {name} (replicated, writes {write}, reads {read}) -> {}",
                copies.join(", ")
            )
        }
        RouteKind::Gutter {
            primary,
            gutter,
            failover_ttl,
        } => format!(
            "route {name} (gutter, failover_ttl {failover_ttl}s) -> {}; on failure {}",
            owner_name(generation, primary, key),
            owner_name(generation, gutter, key)
        ),
        RouteKind::Shadow {
            primary,
            shadow,
            fraction,
        } => {
            let copied = f64::from(key_hash(key)) < fraction * (1u64 << 32) as f64;
            format!(
                "route {name} (shadow {:.0}%) -> {}; {} {}",
                fraction * 100.0,
                explain_target(generation, primary, key),
                if copied { "copied to" } else { "not copied to" },
                owner_name(generation, shadow, key)
            )
        }
    }
}

/// The routes of `config` as a tree, for `--check`.
pub fn describe(config: &crate::config::Config) -> String {
    let mut out = String::new();
    for r in &config.routes {
        let listen = config
            .listeners
            .iter()
            .find(|l| l.target == Target::Route(r.name.clone()))
            .map_or(String::new(), |l| format!(", listen {}", l.listen));
        match &r.kind {
            RouteKind::Prefix { prefixes, default } => {
                out.push_str(&format!("route {} (prefix{listen})\n", r.name));
                for (p, t) in prefixes {
                    out.push_str(&format!("  \"{p}\" -> {t}\n"));
                }
                out.push_str(&format!("  default -> {default}\n"));
            }
            RouteKind::Replicated {
                copies,
                write,
                read,
                spread_reads,
            } => {
                out.push_str(&format!(
                    "route {} (replicated{listen}): writes {write}, reads {read}{}\n",
                    r.name,
                    if *spread_reads { ", spread" } else { "" }
                ));
                for (i, c) in copies.iter().enumerate() {
                    let role = if i == 0 { " (designated)" } else { "" };
                    out.push_str(&format!("  copy -> pool {c}{role}\n"));
                }
            }
            RouteKind::Gutter {
                primary,
                gutter,
                failover_ttl,
            } => {
                out.push_str(&format!(
                    "route {} (gutter{listen}): failover_ttl {failover_ttl}s\n  primary -> pool {primary}\n  gutter -> pool {gutter}\n",
                    r.name
                ));
            }
            RouteKind::Shadow {
                primary,
                shadow,
                fraction,
            } => {
                out.push_str(&format!(
                    "route {} (shadow{listen}): {:.1}% of keys\n  primary -> {primary}\n  shadow -> pool {shadow}\n",
                    r.name,
                    fraction * 100.0
                ));
            }
        }
    }
    out
}
