//! Typed failures of a request memroute sent upstream: which side failed and whether trying
//! again is safe; and [`reply`], the one place a failure becomes the line a client reads.

/// What an answer from a backend was: its bytes, or why there are none.
pub type Answer = Result<bytes::Bytes, UpstreamError>;

/// Which side of memroute a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The backend (down, slow, broken, or answering nonsense).
    Backend,
    /// The client (it holds more replies than it may).
    Client,
}

/// Why a request sent upstream got no answer from its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the backend could be had (down, backing off, or every connection
    /// busy): the request was never written.
    #[error("backend unavailable")]
    Unavailable,
    /// The backend did not answer in time; it may have executed the request.
    #[error("backend timeout")]
    Timeout,
    /// The connection broke before the answer arrived; the request may have executed.
    #[error("backend connection closed")]
    Closed,
    /// The backend sent something that is no answer to the request.
    #[error("backend protocol error")]
    Protocol,
    /// The answer would have taken the client past its reply memory.
    #[error("reply beyond the client's memory")]
    ClientMemory,
}

impl UpstreamError {
    /// Which side failed.
    pub fn side(self) -> Side {
        match self {
            UpstreamError::ClientMemory => Side::Client,
            _ => Side::Backend,
        }
    }

    /// Whether sending the request again cannot execute it twice: only a request that was
    /// never written may be retried.
    pub fn retry_safe(self) -> bool {
        matches!(self, UpstreamError::Unavailable)
    }
}

/// The line a client reads for a failure: memcached's form (`SERVER_ERROR …`), and for a
/// reply beyond the client's memory memcached's own answer to a get it cannot hold.
pub fn reply(err: UpstreamError) -> &'static [u8] {
    match err {
        UpstreamError::Unavailable => b"SERVER_ERROR backend unavailable\r\n",
        UpstreamError::Timeout => b"SERVER_ERROR backend timeout\r\n",
        UpstreamError::Closed => b"SERVER_ERROR backend connection closed\r\n",
        UpstreamError::Protocol => b"SERVER_ERROR backend protocol error\r\n",
        UpstreamError::ClientMemory => b"SERVER_ERROR out of memory writing get response\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_never_written_may_be_retried() {
        use UpstreamError::*;
        for e in [Unavailable, Timeout, Closed, Protocol, ClientMemory] {
            assert_eq!(e.retry_safe(), e == Unavailable, "{e}");
            assert!(reply(e).starts_with(b"SERVER_ERROR ") && reply(e).ends_with(b"\r\n"));
        }
        assert_eq!(ClientMemory.side(), Side::Client);
        assert_eq!(Timeout.side(), Side::Backend);
    }
}
