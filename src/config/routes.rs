//! Routes and listeners, validated: every name a route refers to exists, each kind gets
//! only its own keys, routes do not refer to themselves (through any chain), and no two
//! listeners share an address.
//!
//! What a route may refer to: `prefix` and `shadow` (its `primary`) wrap any route or pool;
//! `replicated` copies, `gutter`'s two sides and `shadow`'s target are pools — the
//! topologies operators build from mcrouter's and memcached's proxy's routes (prefix →
//! replicated pools, prefix → gutter, shadow of a whole listener) without policies stacked
//! inside policies whose meaning nobody could predict.

use std::collections::BTreeMap;

use super::raw::{RawRoute, RouteType};
use super::validate::{
    access, address, at_least_one, client_timeout, invalid, item_size_max, listener_tls,
    max_client_buffer, max_client_connections, ttl, Keys, RawListenerTls,
};
use super::{
    defaults, ClientSettings, ConfigError, ListenerConfig, PoolConfig, ReadPolicy, RouteConfig,
    RouteKind, Target, WritePolicy,
};

/// Validates every route against the pools.
pub(super) fn validate(
    raw: &BTreeMap<String, RawRoute>,
    pools: &[PoolConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::with_capacity(raw.len());
    for (name, r) in raw {
        let f = Keys("routes", name);
        if pools.iter().any(|p| &p.name == name) {
            return Err(invalid(
                format!("routes.{name}"),
                "a pool has the same name: names of pools and routes must differ",
            ));
        }
        only_keys_of_its_kind(&f, r)?;
        let resolve = |key: &str, text: &str| target(&f.of(key), text, raw, pools);
        let pool = |key: &str, text: &str| pool_name(&f.of(key), text, pools);
        let required = |key: &str, v: &Option<String>| {
            v.clone()
                .ok_or_else(|| invalid(f.of(key), "required for this type"))
        };
        let kind = match r.kind {
            RouteType::Prefix => {
                let mut prefixes = Vec::with_capacity(r.prefixes.len());
                for (prefix, to) in &r.prefixes {
                    if prefix.is_empty() || prefix.contains(' ') {
                        return Err(invalid(
                            f.of("prefixes"),
                            format!("'{prefix}' must be non-empty and hold no space"),
                        ));
                    }
                    prefixes.push((prefix.clone(), resolve("prefixes", to)?));
                }
                // Longest first: the first match is the longest.
                prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
                let default = resolve("default", &required("default", &r.default)?)?;
                RouteKind::Prefix { prefixes, default }
            }
            RouteType::Replicated => {
                if r.copies.len() < 2 {
                    return Err(invalid(f.of("copies"), "at least two pools are required"));
                }
                let mut copies: Vec<String> = Vec::new();
                for c in &r.copies {
                    let c = pool("copies", c)?;
                    if copies.contains(&c) {
                        return Err(invalid(f.of("copies"), format!("pool {c} is listed twice")));
                    }
                    copies.push(c);
                }
                RouteKind::Replicated {
                    copies,
                    write: r.write.unwrap_or(WritePolicy::AllSync),
                    read: r.read.unwrap_or(ReadPolicy::Failover),
                    spread_reads: r.spread_reads.unwrap_or(false),
                }
            }
            RouteType::Gutter => {
                let primary = pool("primary", &required("primary", &r.primary)?)?;
                let gutter = pool("gutter", &required("gutter", &r.gutter)?)?;
                if primary == gutter {
                    return Err(invalid(f.of("gutter"), "must differ from primary"));
                }
                let failover_ttl = ttl(
                    &f.of("failover_ttl"),
                    r.failover_ttl.as_ref(),
                    defaults::FAILOVER_TTL,
                )?;
                RouteKind::Gutter {
                    primary,
                    gutter,
                    failover_ttl,
                }
            }
            RouteType::Shadow => {
                let primary = resolve("primary", &required("primary", &r.primary)?)?;
                let shadow = pool("shadow", &required("shadow", &r.shadow)?)?;
                let fraction = r.fraction.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(invalid(f.of("fraction"), "must be between 0 and 1"));
                }
                RouteKind::Shadow {
                    primary,
                    shadow,
                    fraction,
                }
            }
        };
        routes.push(RouteConfig {
            name: name.clone(),
            kind,
        });
    }
    for r in &routes {
        no_cycle(r, &routes, &mut Vec::new())?;
        only_memcached_pools(r, pools)?;
    }
    Ok(routes)
}

/// Every listener: pools' and routes' `listen`, each address once; at least one.
pub(super) fn listeners(
    raw: &BTreeMap<String, RawRoute>,
    pools: &[PoolConfig],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut out: Vec<ListenerConfig> = Vec::new();
    for p in pools {
        if let Some(listen) = p.listen {
            out.push(ListenerConfig {
                name: p.name.clone(),
                listen,
                target: Target::Pool(p.name.clone()),
                client: p.client_settings(),
            });
        }
    }
    for (name, r) in raw {
        let f = Keys("routes", name);
        let Some(listen) = &r.listen else { continue };
        out.push(ListenerConfig {
            name: name.clone(),
            listen: address(&f.of("listen"), listen)?,
            target: Target::Route(name.clone()),
            client: ClientSettings {
                item_size_max: item_size_max(&f, r.item_size_max.as_ref())?,
                max_client_inflight: at_least_one(
                    &f.of("max_client_inflight"),
                    r.max_client_inflight,
                    defaults::MAX_CLIENT_INFLIGHT,
                )?,
                max_client_buffer: max_client_buffer(&f, r.max_client_buffer.as_ref())?,
                max_client_connections: max_client_connections(&f, r.max_client_connections)?,
                client_timeout: client_timeout(&f, r.client_timeout.as_ref())?,
                access: access(&f, &r.client_allow, &r.client_deny)?,
                tls: listener_tls(
                    &f,
                    RawListenerTls {
                        cert: r.tls_cert.as_deref(),
                        key: r.tls_key.as_deref(),
                        client_ca: r.tls_client_ca.as_deref(),
                        client_names: &r.tls_client_names,
                        handshake_timeout: r.tls_handshake_timeout.as_ref(),
                    },
                )?,
            },
        });
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i].iter().find(|b| b.listen == a.listen) {
            let table = match a.target {
                Target::Pool(_) => "pools",
                Target::Route(_) => "routes",
            };
            return Err(invalid(
                format!("{table}.{}.listen", a.name),
                format!("{} is already used by {}", a.listen, b.target),
            ));
        }
    }
    if out.is_empty() {
        return Err(invalid(
            "listen",
            "no pool or route has a listen address: clients could not connect",
        ));
    }
    Ok(out)
}

/// Replicated, gutter and shadow routes send requests between pools and rewrite some (TTL
/// caps, meta deletes): they need pools that speak memcached's protocol in full.
fn only_memcached_pools(r: &RouteConfig, pools: &[PoolConfig]) -> Result<(), ConfigError> {
    let (key, names): (&str, Vec<&String>) = match &r.kind {
        RouteKind::Replicated { copies, .. } => ("copies", copies.iter().collect()),
        RouteKind::Gutter {
            primary, gutter, ..
        } => ("gutter", vec![primary, gutter]),
        RouteKind::Shadow { shadow, .. } => ("shadow", vec![shadow]),
        RouteKind::Prefix { .. } => return Ok(()),
    };
    for name in names {
        let pool = pools.iter().find(|p| &p.name == name).expect("resolved");
        if pool.protocol != super::BackendProtocol::Memcached {
            return Err(invalid(
                format!("routes.{}.{key}", r.name),
                format!("pool {name} is a tokyotyrant pool: only memcached pools can be here"),
            ));
        }
    }
    Ok(())
}

/// A route's keys that do not belong to its type are refused (they would be ignored).
fn only_keys_of_its_kind(f: &Keys<'_>, r: &RawRoute) -> Result<(), ConfigError> {
    let kind = r.kind;
    let present: [(&str, bool, &[RouteType]); 11] = [
        ("prefixes", !r.prefixes.is_empty(), &[RouteType::Prefix]),
        ("default", r.default.is_some(), &[RouteType::Prefix]),
        ("copies", !r.copies.is_empty(), &[RouteType::Replicated]),
        ("write", r.write.is_some(), &[RouteType::Replicated]),
        ("read", r.read.is_some(), &[RouteType::Replicated]),
        (
            "spread_reads",
            r.spread_reads.is_some(),
            &[RouteType::Replicated],
        ),
        (
            "primary",
            r.primary.is_some(),
            &[RouteType::Gutter, RouteType::Shadow],
        ),
        ("gutter", r.gutter.is_some(), &[RouteType::Gutter]),
        (
            "failover_ttl",
            r.failover_ttl.is_some(),
            &[RouteType::Gutter],
        ),
        ("shadow", r.shadow.is_some(), &[RouteType::Shadow]),
        ("fraction", r.fraction.is_some(), &[RouteType::Shadow]),
    ];
    for (key, set, kinds) in present {
        if set && !kinds.contains(&kind) {
            let names: Vec<String> = kinds
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect();
            return Err(invalid(
                f.of(key),
                format!("only for type = \"{}\"", names.join("\" or \"")),
            ));
        }
    }
    Ok(())
}

/// `text` as a route or pool name.
fn target(
    field: &str,
    text: &str,
    routes: &BTreeMap<String, RawRoute>,
    pools: &[PoolConfig],
) -> Result<Target, ConfigError> {
    if pools.iter().any(|p| p.name == text) {
        return Ok(Target::Pool(text.to_owned()));
    }
    if routes.contains_key(text) {
        return Ok(Target::Route(text.to_owned()));
    }
    Err(invalid(
        field,
        format!("no pool or route is named '{text}'"),
    ))
}

/// `text` as a pool name.
fn pool_name(field: &str, text: &str, pools: &[PoolConfig]) -> Result<String, ConfigError> {
    match pools.iter().any(|p| p.name == text) {
        true => Ok(text.to_owned()),
        false => Err(invalid(field, format!("no pool is named '{text}'"))),
    }
}

/// Fails if following `route`'s targets leads back to a route on `path`.
fn no_cycle<'a>(
    route: &'a RouteConfig,
    routes: &'a [RouteConfig],
    path: &mut Vec<&'a str>,
) -> Result<(), ConfigError> {
    if path.contains(&route.name.as_str()) {
        path.push(&route.name);
        return Err(invalid(
            format!("routes.{}", path[0]),
            format!(
                "routes refer to each other in a circle: {}",
                path.join(" → ")
            ),
        ));
    }
    path.push(&route.name);
    let next: Vec<&Target> = match &route.kind {
        RouteKind::Prefix { prefixes, default } => {
            prefixes.iter().map(|(_, t)| t).chain([default]).collect()
        }
        RouteKind::Shadow { primary, .. } => vec![primary],
        RouteKind::Replicated { .. } | RouteKind::Gutter { .. } => Vec::new(),
    };
    for t in next {
        if let Target::Route(name) = t {
            let r = routes.iter().find(|r| &r.name == name).expect("resolved");
            no_cycle(r, routes, path)?;
        }
    }
    path.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{RawConfig, RouteKind, Target};

    const POOLS: &str = r#"
        [pools.a]
        listen = "127.0.0.1:22121"
        servers = ["127.0.0.1:11211:1"]
        [pools.b]
        servers = ["127.0.0.1:11212:1"]
        [pools.c]
        servers = ["127.0.0.1:11213:1"]
    "#;

    fn config(routes: &str) -> Result<crate::config::Config, String> {
        RawConfig::parse(&format!("{POOLS}\n{routes}"))
            .and_then(|r| r.validate())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_of_route_reads_with_its_defaults() {
        let c = config(
            r#"
            [routes.front]
            type = "prefix"
            listen = "127.0.0.1:22122"
            prefixes = { "user:" = "users", "user:vip:" = "b", "sess:" = "guarded" }
            default = "shadowed"
            max_client_buffer = "1m"
            [routes.users]
            type = "replicated"
            copies = ["b", "c"]
            [routes.guarded]
            type = "gutter"
            primary = "b"
            gutter = "c"
            [routes.shadowed]
            type = "shadow"
            primary = "a"
            shadow = "c"
            fraction = 0.25
        "#,
        )
        .unwrap();
        let front = c.route("front").unwrap();
        let RouteKind::Prefix { prefixes, default } = &front.kind else {
            panic!("{front:?}")
        };
        // Longest prefix first.
        assert_eq!(prefixes[0], ("user:vip:".into(), Target::Pool("b".into())));
        assert_eq!(default, &Target::Route("shadowed".into()));
        assert!(matches!(
            c.route("users").unwrap().kind,
            RouteKind::Replicated {
                write: crate::config::WritePolicy::AllSync,
                read: crate::config::ReadPolicy::Failover,
                spread_reads: false,
                ..
            }
        ));
        assert!(matches!(
            c.route("guarded").unwrap().kind,
            RouteKind::Gutter {
                failover_ttl: 300,
                ..
            }
        ));
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "front"]);
        assert_eq!(c.listeners[1].client.max_client_buffer, 1024 * 1024);
        assert_eq!(c.pool("b").unwrap().listen, None);
    }

    #[test]
    fn mistakes_are_named_by_key() {
        let err = |routes: &str| config(routes).unwrap_err();
        let e = err("[routes.r]\ntype = \"prefix\"\ndefault = \"nope\"\n");
        assert!(e.contains("routes.r.default") && e.contains("nope"), "{e}");
        let e = err("[routes.r]\ntype = \"replicated\"\ncopies = [\"b\"]\n");
        assert!(e.contains("routes.r.copies"), "{e}");
        let e = err("[routes.r]\ntype = \"replicated\"\ncopies = [\"b\", \"b\"]\n");
        assert!(e.contains("listed twice"), "{e}");
        let e = err("[routes.r]\ntype = \"gutter\"\nprimary = \"b\"\ngutter = \"b\"\n");
        assert!(e.contains("routes.r.gutter"), "{e}");
        let e = err("[routes.r]\ntype = \"gutter\"\nprimary = \"b\"\n");
        assert!(e.contains("routes.r.gutter: required"), "{e}");
        let e =
            err("[routes.r]\ntype = \"shadow\"\nprimary = \"a\"\nshadow = \"c\"\nfraction = 2.0\n");
        assert!(e.contains("routes.r.fraction"), "{e}");
        let e = err("[routes.r]\ntype = \"prefix\"\ndefault = \"a\"\ncopies = [\"b\", \"c\"]\n");
        assert!(
            e.contains("routes.r.copies: only for type = \"replicated\""),
            "{e}"
        );
        let e = err("[routes.a]\ntype = \"prefix\"\ndefault = \"b\"\n");
        assert!(e.contains("same name"), "{e}");
        // A replicated route's copies are pools.
        let e = err(
            "[routes.r]\ntype = \"replicated\"\ncopies = [\"b\", \"g\"]\n\
             [routes.g]\ntype = \"gutter\"\nprimary = \"b\"\ngutter = \"c\"\n",
        );
        assert!(e.contains("no pool is named 'g'"), "{e}");
        let e =
            err("[routes.r]\ntype = \"prefix\"\nlisten = \"127.0.0.1:22121\"\ndefault = \"a\"\n");
        assert!(e.contains("routes.r.listen") && e.contains("pool a"), "{e}");
    }

    #[test]
    fn routes_referring_to_each_other_in_a_circle_are_refused() {
        let e = config(
            r#"
            [routes.x]
            type = "prefix"
            prefixes = { "p:" = "y" }
            default = "a"
            [routes.y]
            type = "shadow"
            primary = "x"
            shadow = "c"
        "#,
        )
        .unwrap_err();
        assert!(e.contains("circle: x → y → x"), "{e}");
    }

    #[test]
    fn without_any_listener_a_config_is_refused() {
        let e = RawConfig::parse("[pools.a]\nservers = [\"127.0.0.1:11211:1\"]\n")
            .and_then(|r| r.validate())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
