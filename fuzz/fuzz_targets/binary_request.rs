//! Binary-protocol packets through `memroute::protocol::binary::step` and replies through
//! `binary::encode`; the invariants are asserted by
//! `memroute::protocol::invariants::fuzz_binary_request` (shared with the regression replay
//! in `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memroute::protocol::invariants::fuzz_binary_request(data));
