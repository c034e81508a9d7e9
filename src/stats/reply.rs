//! memroute's own answers to `stats` and its local subcommands, in memcached's
//! `STAT <name> <value>` format.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::backend::Kind;
use crate::config::{ListenerConfig, PoolConfig};
use crate::counters::{WorkerStats, BACKEND_ROWS, CLIENT_ROWS, ROUTE_ROWS};
use crate::protocol::reply;
use crate::reply_queue::Reply;
use crate::shared::Shared;

/// The reply to `stats [args]` asked on `listener` (whose first pool is `pool`), in memcached's
/// `STAT name value` format; subcommands memroute does not answer itself get `ERROR`, as
/// memcached answers an unknown one.
pub fn stats_reply(
    shared: &Shared,
    listener: &ListenerConfig,
    pool: &PoolConfig,
    args: &[u8],
) -> Reply {
    let sub = args
        .split(|b| *b == b' ')
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let generation = shared.generation();
    let sum =
        |f: &dyn Fn(&WorkerStats) -> u64| -> u64 { shared.workers().iter().map(|w| f(w)).sum() };
    let mut out = String::new();
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "STAT {name} {value}\r\n");
    };
    match sub {
        b"" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            stat("pid", &std::process::id());
            stat("uptime", &shared.uptime().as_secs());
            stat("time", &now.as_secs());
            stat("version", &reply::VERSION_STRING);
            stat("memroute_version", &env!("CARGO_PKG_VERSION"));
            stat("threads", &shared.workers().len());
            for row in CLIENT_ROWS {
                stat(row.stat, &sum(&|w| (row.get)(w)));
            }
            let cmd_get = sum(&|w| w.cmd_get.get());
            // Hits as counted where replies arrive: remote backends' VALUE items, and the
            // embedded stores' own hits (over every backend, retained ones included).
            let hits: u64 = generation
                .pools
                .iter()
                .flat_map(|p| p.all_backends())
                .map(|(b, _)| match &b.kind {
                    Kind::Remote(_) => b.stats.get_hits.get(),
                    Kind::Embedded(store) => store.stats().get_hits,
                })
                .sum();
            stat("get_hits", &hits);
            stat("get_misses", &cmd_get.saturating_sub(hits));
            stat("client_memory", &shared.budget().charged());
            stat("client_memory_limit", &generation.config.max_client_memory);
            stat(
                "replies_refused_for_memory",
                &crate::reply_queue::REFUSED_REPLIES.load(std::sync::atomic::Ordering::Relaxed),
            );
            stat("generation", &generation.id);
            let n: usize = generation.pools.iter().map(|p| p.backends.len()).sum();
            stat("backends", &n);
            let stores = generation
                .pools
                .iter()
                .flat_map(|p| p.backends.iter())
                .filter_map(|b| match &b.kind {
                    Kind::Embedded(store) => Some(store.stats()),
                    Kind::Remote(_) => None,
                });
            let mut total = crate::embedded::StoreStats::default();
            let mut any = false;
            for st in stores {
                any = true;
                total.curr_items += st.curr_items;
                total.bytes += st.bytes;
                total.limit_maxbytes += st.limit_maxbytes;
                total.evictions += st.evictions;
                total.get_hits += st.get_hits;
                total.get_misses += st.get_misses;
                total.get_expired += st.get_expired;
                total.total_items += st.total_items;
            }
            if any {
                stat("embedded_curr_items", &total.curr_items);
                stat("embedded_bytes", &total.bytes);
                stat("embedded_limit_maxbytes", &total.limit_maxbytes);
                stat("embedded_evictions", &total.evictions);
                stat("embedded_get_hits", &total.get_hits);
                stat("embedded_get_misses", &total.get_misses);
                stat("embedded_get_expired", &total.get_expired);
                stat("embedded_total_items", &total.total_items);
            }
        }
        b"backends" => {
            for pool_state in &generation.pools {
                let pool = &pool_state.config;
                for (s, retained) in pool_state.all_backends() {
                    let p = format!("{}:{}", pool.name, s.name);
                    let st = &s.stats;
                    let state = match (retained, s.is_ejected(), s.is_up()) {
                        // Removed from the pool, still read during warm-up.
                        (true, _, _) => "retained",
                        (false, true, _) => "ejected",
                        (false, false, true) => "up",
                        (false, false, false) => "down",
                    };
                    stat(&format!("{p}:state"), &state);
                    for row in BACKEND_ROWS {
                        stat(&format!("{p}:{}", row.stat), &(row.get)(st));
                    }
                    let replies = st.replies.get().max(1);
                    stat(
                        &format!("{p}:latency_us_mean"),
                        &(st.latency_us_total.get() / replies),
                    );
                }
            }
        }
        b"routes" => {
            for (name, st) in generation.all_route_stats() {
                for row in ROUTE_ROWS {
                    stat(&format!("{name}:{}", row.stat), &(row.get)(st));
                }
            }
        }
        b"settings" => settings(shared, listener, pool, &mut stat),
        b"conns" => shared.registry().render(&generation, &mut stat),
        _ => return Reply::Static(reply::ERROR),
    }
    out.push_str("END\r\n");
    Reply::Data(Bytes::from(out))
}

/// `stats settings`: memroute's settings under memcached's names where one applies (those a
/// client or monitoring tool reads: limits, ports, the protocol, what is enabled), then the
/// pool's own.
fn settings(
    shared: &Shared,
    listener: &ListenerConfig,
    pool: &PoolConfig,
    stat: &mut dyn FnMut(&str, &dyn std::fmt::Display),
) {
    let client = &listener.client;
    let generation = shared.generation();
    let config = &generation.config;
    let embedded: usize = pool
        .servers
        .iter()
        .filter_map(|s| match s.endpoint {
            crate::config::Endpoint::Memory { limit, .. } => Some(limit),
            crate::config::Endpoint::Tcp { .. } => None,
        })
        .sum();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    stat("maxbytes", &embedded);
    stat("maxconns", &config.max_clients);
    stat("tcpport", &listener.listen.port());
    stat("udpport", &0);
    stat("inter", &listener.listen.ip());
    stat("verbosity", &0);
    stat("evictions", &if pool.memory_evict { "on" } else { "off" });
    stat("domain_socket", &"NULL");
    stat("shutdown_command", &"no");
    stat("num_threads", &config.threads);
    stat("cas_enabled", &"yes");
    stat("tcp_backlog", &4096);
    stat("binding_protocol", &"ascii");
    stat("auth_enabled_sasl", &"no");
    stat("auth_enabled_ascii", &"no");
    stat("item_size_max", &client.item_size_max);
    stat("maxconns_fast", &"yes");
    stat("flush_enabled", &"yes");
    stat("dump_enabled", &"yes");
    stat(
        "idle_timeout",
        &client.client_timeout.map_or(0, |d| d.as_secs()),
    );
    stat("ssl_enabled", &"no");
    stat("memroute_listener", &listener.name);
    stat("memroute_pool", &pool.name);
    stat("memroute_servers", &pool.servers.len());
    stat("memroute_hash", &pool.hash);
    stat("memroute_distribution", &pool.distribution);
    stat(
        "memroute_hash_tag",
        &pool.hash_tag.map_or("none".to_string(), |t| t.to_string()),
    );
    stat("memroute_timeout_ms", &pool.timeout.as_millis());
    stat(
        "memroute_connect_timeout_ms",
        &pool.connect_timeout.as_millis(),
    );
    stat("memroute_server_connections", &pool.server_connections);
    stat("memroute_max_client_inflight", &client.max_client_inflight);
    stat("memroute_max_client_buffer", &client.max_client_buffer);
    stat("memroute_max_client_memory", &config.max_client_memory);
    stat(
        "memroute_max_client_connections",
        &client.max_client_connections.unwrap_or(0),
    );
    stat(
        "memroute_retrieval_failure",
        &match pool.retrieval_failure {
            crate::config::RetrievalFailure::Miss => "miss",
            crate::config::RetrievalFailure::Error => "error",
        },
    );
    stat(
        "memroute_protocol",
        &match pool.protocol {
            crate::config::BackendProtocol::Memcached => "memcached",
            crate::config::BackendProtocol::TokyoTyrant => "tokyotyrant",
        },
    );
    stat("memroute_warmup_secs", &pool.warmup.as_secs());
    stat(
        "memroute_auto_eject_hosts",
        &yes_no(pool.ejection.is_some()),
    );
}
