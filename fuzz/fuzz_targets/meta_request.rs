//! Meta-protocol lines (`mg`, `ms`, `md`, `ma`, `mn`, `me` followed by arbitrary bytes)
//! through the client codec; the invariants are asserted by
//! `memroute::protocol::invariants::fuzz_meta_request` (shared with the regression replay in
//! `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memroute::protocol::invariants::fuzz_meta_request(data));
