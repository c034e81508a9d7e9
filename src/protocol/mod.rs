//! The memcached text protocol: decoded requests, the client codec, and reply framing.

pub mod codec;
pub mod invariants;
pub mod numbers;
pub mod reply;
pub mod request;

pub use codec::{ClientCodec, CodecLimits, Decoded, Stream};
pub use request::{Command, Request};
