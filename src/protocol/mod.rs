//! The memcached text and meta protocols: decoded requests, the client codec, and reply
//! framing.

pub mod codec;
#[cfg(any(test, feature = "fuzzing"))]
pub mod invariants;
pub mod meta;
pub mod numbers;
pub mod reply;
pub mod request;

pub use codec::{ClientCodec, CodecLimits, Decoded, Stream};
pub use request::{Command, KeyToken, Request};
