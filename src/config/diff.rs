//! What a reload changes: one line per change, for the log, so an operator reading it knows
//! what the new file did (and that an unchanged file did nothing).

use super::{Config, ListenerConfig, PoolConfig};

/// The changes from `old` to `new`, one sentence each; empty when nothing changed.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    listeners(&old.listeners, &new.listeners, &mut out);
    pools(&old.pools, &new.pools, &mut out);
    for r in &new.routes {
        match old.route(&r.name) {
            None => out.push(format!("route {} added", r.name)),
            Some(o) if o != r => out.push(format!("route {} changed", r.name)),
            Some(_) => {}
        }
    }
    for r in &old.routes {
        if new.route(&r.name).is_none() {
            out.push(format!("route {} removed", r.name));
        }
    }
    if old.admin != new.admin {
        out.push(format!(
            "admin listener {} -> {}",
            show(old.admin.as_ref()),
            show(new.admin.as_ref())
        ));
    }
    let globals = [
        ("max_clients", old.max_clients, new.max_clients),
        (
            "max_client_memory",
            old.max_client_memory,
            new.max_client_memory,
        ),
    ];
    for (key, was, is) in globals {
        if was != is {
            out.push(format!("{key} {was} -> {is}"));
        }
    }
    if old.shutdown_timeout != new.shutdown_timeout {
        out.push(format!(
            "shutdown_timeout {:?} -> {:?}",
            old.shutdown_timeout, new.shutdown_timeout
        ));
    }
    out
}

fn show(addr: Option<&std::net::SocketAddr>) -> String {
    addr.map_or("none".to_string(), |a| a.to_string())
}

fn listeners(old: &[ListenerConfig], new: &[ListenerConfig], out: &mut Vec<String>) {
    for l in new {
        match old.iter().find(|o| o.name == l.name) {
            None => out.push(format!(
                "listener {} added on {} ({})",
                l.name, l.listen, l.target
            )),
            Some(o) if o.listen != l.listen => out.push(format!(
                "listener {} moved from {} to {}",
                l.name, o.listen, l.listen
            )),
            Some(o) if o.target != l.target => out.push(format!(
                "listener {} now serves {} (was {})",
                l.name, l.target, o.target
            )),
            Some(_) => {}
        }
        let leaf = |l: &ListenerConfig| l.client.tls.as_ref().map(|t| t.leaf.clone());
        let was = old.iter().find(|o| o.name == l.name).and_then(leaf);
        match (&l.client.tls, was) {
            (Some(t), was) if was.as_ref() != Some(&t.leaf) => out.push(format!(
                "listener {}: TLS certificate {} (expires at Unix time {})",
                l.name,
                t.files[0].display(),
                t.not_after
            )),
            (None, Some(_)) => out.push(format!("listener {}: TLS turned off", l.name)),
            _ => {}
        }
    }
    for o in old {
        if !new.iter().any(|l| l.name == o.name) {
            out.push(format!("listener {} on {} removed", o.name, o.listen));
        }
    }
}

fn pools(old: &[PoolConfig], new: &[PoolConfig], out: &mut Vec<String>) {
    for p in new {
        let Some(o) = old.iter().find(|o| o.name == p.name) else {
            out.push(format!(
                "pool {} added with {} backends",
                p.name,
                p.servers.len()
            ));
            continue;
        };
        let names = |c: &PoolConfig| -> Vec<(String, u32)> {
            c.servers.iter().map(|s| (s.address(), s.weight)).collect()
        };
        let (was, is) = (names(o), names(p));
        for (addr, weight) in &is {
            match was.iter().find(|(a, _)| a == addr) {
                None => out.push(format!("pool {}: backend {addr} added", p.name)),
                Some((_, w)) if w != weight => out.push(format!(
                    "pool {}: backend {addr} weight {w} -> {weight}",
                    p.name
                )),
                Some(_) => {}
            }
        }
        for (addr, _) in &was {
            if !is.iter().any(|(a, _)| a == addr) {
                out.push(format!("pool {}: backend {addr} removed", p.name));
            }
        }
        // Every other setting, compared as a whole: the line says to look at the file.
        let settings = |c: &PoolConfig| {
            let mut c = c.clone();
            c.servers.clear();
            format!("{c:?}")
        };
        if settings(o) != settings(p) {
            out.push(format!("pool {}: settings changed", p.name));
        }
    }
    for o in old {
        if !new.iter().any(|p| p.name == o.name) {
            out.push(format!("pool {} removed", o.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn config(text: &str) -> Config {
        RawConfig::parse(text).unwrap().validate().unwrap()
    }

    #[test]
    fn an_unchanged_file_changes_nothing_and_each_change_is_one_line() {
        let a = config(
            "[pools.p]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1:1\", \"127.0.0.1:2:1\"]\n",
        );
        assert!(changes(&a, &a).is_empty());
        let b = config(
            "admin = \"127.0.0.1:9\"\n[pools.p]\nlisten = \"127.0.0.1:5\"\ntimeout = 7\nservers = [\"127.0.0.1:2:2\", \"127.0.0.1:3:1\"]\n\
             [pools.q]\nlisten = \"127.0.0.1:6\"\nservers = [\"127.0.0.1:4:1\"]\n",
        );
        assert_eq!(
            changes(&a, &b),
            [
                "listener p moved from 127.0.0.1:0 to 127.0.0.1:5",
                "listener q added on 127.0.0.1:6 (pool q)",
                "pool p: backend 127.0.0.1:2 weight 1 -> 2",
                "pool p: backend 127.0.0.1:3 added",
                "pool p: backend 127.0.0.1:1 removed",
                "pool p: settings changed",
                "pool q added with 1 backends",
                "admin listener none -> 127.0.0.1:9",
            ]
        );
        let back = changes(&b, &a);
        assert!(back.contains(&"pool q removed".to_string()), "{back:?}");
        assert!(
            back.contains(&"listener q on 127.0.0.1:6 removed".to_string()),
            "{back:?}"
        );
    }
}
