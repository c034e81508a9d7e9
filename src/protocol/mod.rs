//! The memcached text, meta and binary protocols: decoded requests, the client codec, reply
//! framing, and the binary protocol's translation to meta.

pub mod binary;
pub mod codec;
#[cfg(any(test, feature = "fuzzing"))]
pub mod invariants;
pub mod meta;
pub mod numbers;
pub mod reply;
pub mod request;

pub use codec::{ClientCodec, CodecLimits, Decoded, Stream};
pub use request::{Command, KeyToken, Request};
