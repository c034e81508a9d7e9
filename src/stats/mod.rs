//! memroute's own answers to `stats` and its local subcommands, rendered from the counter
//! tables of [`crate::counters`].
//!
//! - [`stats_reply`]: `stats`, `stats backends`, `stats settings` and `stats conns`, in
//!   memcached's format.

mod reply;

pub use reply::stats_reply;
