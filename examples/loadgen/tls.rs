//! TLS to the target (`--tls-ca`, `--tls-name`): the client settings (`TlsClient`) and a
//! connection that is plain TCP or TLS over it (`Stream`). A plain `Stream` costs one
//! `match` per read or write over the bare `TcpStream`; the open loop splits each kind into
//! its own halves (`TcpStream::into_split` stays lock-free).

use crate::cli::Args;
use crate::protocol::{connect, CONNECT_TIMEOUT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How to connect with TLS: the trusted CA and the name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsClient {
    /// The settings `--tls-ca` / `--tls-name` ask for; None without `--tls-ca`.
    pub fn from_args(a: &Args) -> Result<Option<TlsClient>, String> {
        let Some(ca) = &a.tls_ca else {
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--tls-ca {}: no certificate", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(a.tls_name.clone())
            .map_err(|e| format!("--tls-name {}: {e}", a.tls_name))?;
        Ok(Some(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        }))
    }
}

/// A connection to the target: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's state is large and a plain connection should not carry its size.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to `target` (TCP, no Nagle) and, with `tls`, completes the TLS handshake; the
/// connect and the handshake get `CONNECT_TIMEOUT` each.
pub async fn open(target: &str, tls: Option<&TlsClient>) -> io::Result<Stream> {
    let s = connect(target).await?;
    let Some(t) = tls else {
        return Ok(Stream::Plain(s));
    };
    let s = tokio::time::timeout(CONNECT_TIMEOUT, t.connector.connect(t.name.clone(), s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Stream::Tls(Box::new(s)))
}

impl Stream {
    /// Writes all of `w`. TLS flushes too: tokio-rustls may keep encrypted records it
    /// could not write yet, and nothing else would send them before we wait for replies.
    pub async fn send(&mut self, w: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(w).await,
            Stream::Tls(s) => {
                s.write_all(w).await?;
                s.flush().await
            }
        }
    }

    /// The negotiated TLS version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`;
    /// None on plain TCP.
    pub fn tls_session(&self) -> Option<String> {
        let Stream::Tls(s) = self else {
            return None;
        };
        let c = s.get_ref().1;
        let version = c.protocol_version().map(|v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        Some(format!(
            "{} {}",
            version.as_deref().unwrap_or("?"),
            suite.as_deref().unwrap_or("?")
        ))
    }

    /// Ends the connection: TLS sends its close_notify first (a second at most), so the
    /// server sees a clean close rather than a truncated stream; plain TCP is just dropped.
    pub async fn close(self) {
        if let Stream::Tls(mut s) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
