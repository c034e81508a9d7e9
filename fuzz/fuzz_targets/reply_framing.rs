//! Arbitrary bytes as a backend's reply stream; the invariants are asserted by
//! `memroute::protocol::invariants::fuzz_reply_framing` (shared with the regression replay in
//! `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memroute::protocol::invariants::fuzz_reply_framing(data));
