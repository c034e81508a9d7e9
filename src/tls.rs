//! TLS settings built from the PEM files a configuration names: what a listener serves
//! (certificate chain, key, and optionally the CA client certificates must chain to and the
//! identities allowed), and how memroute connects to TLS backends. rustls does the protocol;
//! the socket drives it ([`crate::socket::Socket`]). Files are read when the configuration
//! is validated, so a reload re-reads them and a bad one rejects the reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, …).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// Another setting is wrong.
    #[error("{0}")]
    Setting(String),
}

/// What a TLS listener serves.
pub struct ListenerTls {
    /// rustls's settings (certificate, key, client verification).
    pub config: Arc<ServerConfig>,
    /// Client identities allowed (SAN DNS names or URIs); empty: any verified client.
    pub allowed: Vec<String>,
    /// A handshake not finished in this long is abandoned.
    pub handshake_timeout: Duration,
    /// When the served certificate expires, seconds since the Unix epoch.
    pub not_after: i64,
    /// The files read (watched: a change reloads them).
    pub files: Vec<PathBuf>,
    /// The served certificate (DER), to tell a reload whether it changed.
    pub leaf: CertificateDer<'static>,
}

/// How memroute connects to a pool's TLS backends.
pub struct BackendTls {
    /// rustls's settings (trusted CAs, client certificate).
    pub config: Arc<ClientConfig>,
    /// The name the backends' certificates must carry; none: each server's host.
    pub server_name: Option<ServerName<'static>>,
    /// The files read (watched: a change reloads them).
    pub files: Vec<PathBuf>,
}

// By hand: rustls's settings print session state that differs between two loads of the
// same files (and a reload compares settings by their Debug text).
impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("files", &self.files)
            .field("allowed", &self.allowed)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("files", &self.files)
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |why: String| TlsError::File {
        path: path.to_owned(),
        why,
    };
    let list = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if list.is_empty() {
        return Err(file("no PEM certificate in it".into()));
    }
    Ok(list)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        why: format!("no usable PEM private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::File {
            path: path.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// The subject alternative names (DNS names and URIs) and expiry of a certificate.
pub fn identities(cert: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    Ok((names, parsed.validity().not_after.timestamp()))
}

/// A listener's TLS from its certificate chain and key, and optionally the CA that client
/// certificates must chain to (mutual TLS) and the client identities allowed.
pub fn listener(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    allowed: Vec<String>,
    handshake_timeout: Duration,
) -> Result<ListenerTls, TlsError> {
    let chain = certs(cert)?;
    let (_, not_after) = identities(&chain[0]).map_err(|why| TlsError::File {
        path: cert.to_owned(),
        why,
    })?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Setting(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if !allowed.is_empty() => {
            return Err(TlsError::Setting(
                "client identities need tls_client_ca (clients without a verified certificate have none)".into(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let leaf = chain[0].clone();
    let config = builder.with_single_cert(chain, key(key_path)?)?;
    Ok(ListenerTls {
        config: Arc::new(config),
        allowed,
        handshake_timeout,
        not_after,
        leaf,
        files: [Some(cert), Some(key_path), client_ca]
            .into_iter()
            .flatten()
            .map(Path::to_owned)
            .collect(),
    })
}

/// TLS to a pool's backends: trusting `ca` (else the system's CAs), presenting a client
/// certificate when given, checking `server_name` (else each server's host).
pub fn backend(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
    server_name: Option<&str>,
) -> Result<BackendTls, TlsError> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(TlsError::Setting(
                    "no system CA certificates found: set server_tls_ca".into(),
                ));
            }
            store
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key_path)) => builder.with_client_auth_cert(certs(cert)?, key(key_path)?)?,
        None => builder.with_no_client_auth(),
    };
    // Backend connections live long, so resuming sessions saves little; and memcached 1.6
    // requiring client certificates answers a resumed handshake with a fatal alert unless
    // it keeps a session cache.
    config.resumption = rustls::client::Resumption::disabled();
    let server_name = server_name
        .map(|n| {
            ServerName::try_from(n.to_owned())
                .map_err(|e| TlsError::Setting(format!("server_tls_name '{n}': {e}")))
        })
        .transpose()?;
    let mut files: Vec<PathBuf> = ca.into_iter().map(Path::to_owned).collect();
    if let Some((cert, key)) = client {
        files.extend([cert.to_owned(), key.to_owned()]);
    }
    Ok(BackendTls {
        config: Arc::new(config),
        server_name,
        files,
    })
}

/// The name to check a backend's certificate against: the configured one, else its host.
pub fn server_name(tls: &BackendTls, host: &str) -> Result<ServerName<'static>, String> {
    match &tls.server_name {
        Some(n) => Ok(n.clone()),
        None => ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}")),
    }
}

/// Whether a client presenting `peer` (its certificate chain, leaf first) may connect.
pub fn allowed(tls: &ListenerTls, peer: Option<&[CertificateDer<'static>]>) -> Result<(), String> {
    if tls.allowed.is_empty() {
        return Ok(());
    }
    let Some(leaf) = peer.and_then(|p| p.first()) else {
        return Err("no client certificate".into());
    };
    let (names, _) = identities(leaf)?;
    match names.iter().any(|n| tls.allowed.iter().any(|a| a == n)) {
        true => Ok(()),
        false => Err(format!("client identities {names:?} are not allowed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    struct Files(tempfile::TempDir);

    impl Files {
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    #[test]
    fn identities_are_matched_by_dns_name_or_uri_and_bad_files_are_named() {
        let files = Files(tempfile::tempdir().unwrap());
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["app1.internal".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://prod/app1".try_into().unwrap()));
        let client = params.signed_by(&key, &ca, &ca_key).unwrap();
        let (names, not_after) = identities(client.der()).unwrap();
        assert_eq!(names, ["app1.internal", "spiffe://prod/app1"]);
        assert!(not_after > 0);

        let cert = files.write("c.pem", &client.pem());
        let key_path = files.write("k.pem", &key.serialize_pem());
        let ca_path = files.write("ca.pem", &ca.pem());
        let listen = |allowed: &[&str]| {
            let allowed = allowed.iter().map(|s| s.to_string()).collect();
            listener(
                &cert,
                &key_path,
                Some(&ca_path),
                allowed,
                Duration::from_secs(1),
            )
            .unwrap()
        };
        let chain = [client.der().clone()];
        assert!(
            allowed(&listen(&[]), None).is_ok(),
            "no list: any verified client"
        );
        assert!(allowed(&listen(&["spiffe://prod/app1"]), Some(&chain)).is_ok());
        assert!(allowed(&listen(&["app1.internal"]), Some(&chain)).is_ok());
        assert!(allowed(&listen(&["app2.internal"]), Some(&chain)).is_err());
        assert!(allowed(&listen(&["app1.internal"]), None).is_err());

        // A key that is not the certificate's, garbage, and names without a CA are refused.
        let other = files.write("other.pem", &KeyPair::generate().unwrap().serialize_pem());
        assert!(listener(&cert, &other, None, Vec::new(), Duration::from_secs(1)).is_err());
        let junk = files.write("junk.pem", "not a certificate\n");
        let e = listener(&junk, &key_path, None, Vec::new(), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let names = vec!["app1.internal".to_string()];
        assert!(listener(&cert, &key_path, None, names, Duration::from_secs(1)).is_err());
    }
}
