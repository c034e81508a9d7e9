//! memroute: a key-routing memcached reverse proxy.
//!
//! The data path, one module per stage:
//!
//! ```text
//! client socket → protocol::codec → router (ring) → upstream::{pool, connection}
//!               → reply_queue (per client, in request order) → client socket
//! ```
//!
//! - [`protocol`]: the memcached text protocol: requests, the client codec, reply framing.
//! - [`ring`]: the consistent-hash ring, twemproxy-exact, and every twemproxy key hash.
//! - [`generation`]: the routing snapshot all workers share; reloads and ejections swap it.
//! - [`router`]: which backend(s) answer a request; splitting multi-key retrievals.
//! - [`upstream`]: per-backend pools of pipelined connections.
//! - [`reply_queue`]: the per-client queue that puts replies back in request order.
//! - [`budget`]: the reply memory a client (and all clients) may make memroute hold.
//! - [`client`]: one client connection's task.
//! - [`server`]: listeners, shared state, reload; [`worker`]: one thread's runtime.
//! - [`admission`]: who may connect: per-listener access lists and connection caps.
//! - [`admin`]: the admin HTTP listener: Prometheus `/metrics`, `/health`, `/route`.
//! - [`warmup`]: after a ring change, misses retried on the previous owner and copied over.
//! - [`health`]: ejection of failing backends and their return.
//! - [`config`]: TOML configuration, validated into typed settings.
//! - [`embedded`]: the in-process cache backend (`memory:<size>` servers).
//! - [`tyrant`]: Tokyo Tyrant pools: the command subset ttserver understands, flags in values.
//! - [`socket`], [`write_queue`]: readiness-driven socket IO; vectored writes.
//! - [`stats`]: counters (per worker, per backend).
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod admission;
pub mod budget;
pub mod client;
pub mod config;
pub mod embedded;
pub mod generation;
pub mod health;
pub mod protocol;
pub mod reply_queue;
pub mod ring;
pub mod router;
pub mod server;
pub mod socket;
pub mod stats;
pub mod tyrant;
pub mod upstream;
pub mod warmup;
pub mod worker;
pub mod write_queue;
