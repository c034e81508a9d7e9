//! The meta protocol on the embedded cache (to be written: see the issue).

use bytes::BytesMut;

use crate::protocol::request::Request;

use super::store::Store;

impl Store {
    /// Executes a meta request (`mg`, `ms`, `md`, `ma`, `me`), memcached 1.6.18's reply
    /// appended to `out` (nothing for what a quiet request leaves out).
    pub(super) fn meta(&self, _req: &Request, _now: u64, out: &mut BytesMut) {
        out.extend_from_slice(b"SERVER_ERROR not implemented\r\n");
    }
}
