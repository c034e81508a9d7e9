//! memroute: a key-routing memcached reverse proxy.
//!
//! The data path, one module per stage:
//!
//! ```text
//! client socket → protocol::codec → plan (router, ring) → exec → backend::{connections,
//!   connection} → reply_queue (per client, in request order) → client socket
//! ```
//!
//! - [`protocol`]: the memcached text protocol: the request model, the client codec (lines
//!   read exactly as memcached reads them), reply lines and the framing of backends' replies.
//! - [`ring`]: the consistent-hash ring, twemproxy-exact, and every twemproxy key hash.
//! - `plan`: where each request's fate is decided: which backends get what, how answers
//!   come back together, what memroute answers or refuses itself.
//! - `router`: one pool's routing state in one worker (ring lookups, warm-up's previous
//!   ring, the backends).
//! - `exec`: carrying out a plan; `links`: a client's connections to the backends and the
//!   one send path every request upstream takes.
//! - `backend`: a backend (identity, health, ejection, counters, connections in each worker)
//!   and what each kind of backend is sent (`backend::message`).
//! - `gather`: replies assembled from several backends (split multi-gets, broadcasts,
//!   combined `stats`).
//! - `reply_queue`: the per-client queue that puts replies back in request order.
//! - `client`: one client connection's task: socket I/O and carrying out plans.
//! - `fallback`: after a ring change, misses retried on the previous owner and copied over.
//! - `route`: routes over pools (prefix, replicated, gutter, shadow) and their plans;
//!   `shadow`: the bounded queue shadow copies go through.
//! - `budget`: the reply memory a client (and all clients) may make memroute hold.
//! - `error`: typed upstream failures and the one mapping to protocol replies.
//! - [`generation`]: the routing snapshot all workers share; reloads and ejections swap it.
//! - [`shared`]: what the workers share (generation, counters, budget, client registry).
//! - [`server`]: listeners and worker threads; `worker`: one thread's runtime.
//! - `health`: ejection of failing backends and their return.
//! - `admission`: who may connect: per-listener access lists and connection caps.
//! - [`admin`]: the admin HTTP listener: Prometheus `/metrics`, `/health`, `/route`.
//! - [`config`]: TOML configuration, validated into typed settings.
//! - [`counters`]: counters and the one table `stats` and `/metrics` both render;
//!   `stats`: memroute's `stats` replies; `clients`: the registry `stats conns` lists.
//! - [`embedded`]: the in-process cache backend (`memory:<size>` servers).
//! - `tyrant`: Tokyo Tyrant pools: the command subset ttserver understands, flags in values.
//! - `socket`, `write_queue`: readiness-driven socket IO (TLS included); vectored writes.
//! - [`tls`]: TLS settings from PEM files: listeners (mutual TLS, allowed identities) and
//!   backends.
// One reviewed `unsafe` block: receiving into uninitialised buffer capacity (socket.rs).
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
mod admission;
mod backend;
mod budget;
mod client;
mod clients;
pub mod config;
pub mod counters;
pub mod embedded;
mod error;
mod exec;
mod fallback;
mod gather;
pub mod generation;
mod health;
mod links;
mod plan;
pub mod protocol;
mod reply_queue;
pub mod ring;
pub mod route;
mod router;
pub mod server;
mod shadow;
pub mod shared;
mod socket;
mod stats;
pub mod tls;
mod tyrant;
mod worker;
mod write_queue;
