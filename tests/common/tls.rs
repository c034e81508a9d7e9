//! TLS for the tests: a small PKI made with rcgen (a CA, a second CA nobody trusts, server
//! certificates good, expired and for the wrong host, client certificates with DNS and URI
//! identities), each written as PEM files into a temp folder; a blocking rustls client that
//! speaks the memcached text protocol; real memcached serving TLS (`memcached -Z`); and
//! `openssl s_client` / `curl` runs with a time limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::config::TempFiles;
use super::{text, value_len, Memcached};

/// The DNS identity of the allowed client certificate.
pub const CLIENT_DNS: &str = "app1.example";
/// The URI identity (SPIFFE-style) of the other allowed client certificate.
pub const CLIENT_URI: &str = "spiffe://cluster/app1";
/// The identities of a client certificate from the right CA that no allow-list names.
pub const UNLISTED_DNS: &str = "app2.example";
/// See [`UNLISTED_DNS`].
pub const UNLISTED_URI: &str = "spiffe://cluster/app2";

/// A certificate authority: its certificate (PEM file `pem`) and key, for signing.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as a PEM file (what `tls_client_ca`, `server_tls_ca`, `--cacert`
    /// take).
    pub pem: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (chain) PEM file.
    pub cert: PathBuf,
    /// The private key PEM file (PKCS#8).
    pub key: PathBuf,
    /// The certificate's DER bytes (to compare with what a peer presented).
    pub der: Vec<u8>,
    /// The certificate's PEM text.
    pub cert_pem: String,
    /// The key's PEM text.
    pub key_pem: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// The serial number.
    pub serial: u64,
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

/// The validity of a leaf certificate: (notBefore, notAfter) as (year, month, day), UTC.
pub type Validity = ((i32, u8, u8), (i32, u8, u8));

/// Valid from 2020 until 2090.
pub const VALID: Validity = ((2020, 1, 1), (2090, 1, 1));
/// Expired: valid 2020 to 2021 only.
pub const EXPIRED: Validity = ((2020, 1, 1), (2021, 1, 1));

/// The test PKI, every file in one temp folder.
pub struct Pki {
    /// The folder (also usable for config files).
    pub files: TempFiles,
    /// The CA memroute, memcached and the clients trust.
    pub ca: Authority,
    /// A CA nobody is told to trust.
    pub other_ca: Authority,
    /// Server certificate from `ca` for "localhost" and IP 127.0.0.1 (serial 100).
    pub server: Issued,
    /// Server certificate from `ca` for "wrong.example" only.
    pub wrong_host: Issued,
    /// Server certificate from `ca` for localhost/127.0.0.1, expired in 2021.
    pub expired: Issued,
    /// Server certificate for localhost/127.0.0.1 from `other_ca`.
    pub untrusted: Issued,
    /// Client certificate from `ca` with DNS SAN [`CLIENT_DNS`].
    pub client_dns: Issued,
    /// Client certificate from `ca` with only the URI SAN [`CLIENT_URI`].
    pub client_uri: Issued,
    /// Client certificate from `ca` with identities no allow-list has.
    pub client_unlisted: Issued,
    /// Client certificate with DNS SAN [`CLIENT_DNS`] but from `other_ca`.
    pub client_untrusted: Issued,
}

fn san_dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("DNS name"))
}

fn san_uri(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("URI"))
}

fn san_ip(ip: &str) -> SanType {
    SanType::IpAddress(ip.parse().expect("IP"))
}

/// The SANs of a server certificate for this machine: "localhost" and 127.0.0.1.
pub fn local_sans() -> Vec<SanType> {
    vec![san_dns("localhost"), san_ip("127.0.0.1")]
}

impl Authority {
    /// A new self-signed CA called `name`, written as `<stem>.pem` into `files`.
    pub fn new(files: &TempFiles, stem: &str, name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_string());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "memroute tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        params.serial_number = Some(1u64.into());
        let cert = params.self_signed(&key).expect("self-sign CA");
        let pem = files.write(&format!("{stem}.pem"), &cert.pem());
        Authority { cert, key, pem }
    }

    /// The CA certificate's DER bytes.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Issues a leaf certificate (a fresh key) with `sans`, written as `<stem>.pem` and
    /// `<stem>.key` into `files`.
    pub fn issue(
        &self,
        files: &TempFiles,
        stem: &str,
        sans: Vec<SanType>,
        usage: Usage,
        serial: u64,
        validity: Validity,
    ) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("memroute test {stem}"));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let ((y0, m0, d0), (y1, m1, d1)) = validity;
        params.not_before = date_time_ymd(y0, m0, d0);
        params.not_after = date_time_ymd(y1, m1, d1);
        params.serial_number = Some(serial.into());
        let not_after = params.not_after.unix_timestamp();
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Issued {
            cert: files.write(&format!("{stem}.pem"), &cert_pem),
            key: files.write(&format!("{stem}.key"), &key_pem),
            der: cert.der().to_vec(),
            cert_pem,
            key_pem,
            not_after,
            serial,
        }
    }

    /// A server certificate for localhost/127.0.0.1 valid until `not_after` (y, m, d).
    pub fn server_cert(
        &self,
        files: &TempFiles,
        stem: &str,
        serial: u64,
        not_after: (i32, u8, u8),
    ) -> Issued {
        self.issue(
            files,
            stem,
            local_sans(),
            Usage::Server,
            serial,
            ((2020, 1, 1), not_after),
        )
    }
}

impl Pki {
    /// Makes the whole PKI in a new temp folder.
    pub fn new() -> Pki {
        let files = TempFiles::new();
        let ca = Authority::new(&files, "ca", "memroute test CA");
        let other_ca = Authority::new(&files, "other-ca", "memroute untrusted test CA");
        let server = ca.server_cert(&files, "server", 100, VALID.1);
        let wrong_host = ca.issue(
            &files,
            "wrong-host",
            vec![san_dns("wrong.example")],
            Usage::Server,
            101,
            VALID,
        );
        let expired = ca.issue(&files, "expired", local_sans(), Usage::Server, 102, EXPIRED);
        let untrusted = other_ca.server_cert(&files, "untrusted", 103, VALID.1);
        let client_dns = ca.issue(
            &files,
            "client-dns",
            vec![san_dns(CLIENT_DNS)],
            Usage::Client,
            200,
            VALID,
        );
        let client_uri = ca.issue(
            &files,
            "client-uri",
            vec![san_uri(CLIENT_URI)],
            Usage::Client,
            201,
            VALID,
        );
        let client_unlisted = ca.issue(
            &files,
            "client-unlisted",
            vec![san_dns(UNLISTED_DNS), san_uri(UNLISTED_URI)],
            Usage::Client,
            202,
            VALID,
        );
        let client_untrusted = other_ca.issue(
            &files,
            "client-untrusted",
            vec![san_dns(CLIENT_DNS)],
            Usage::Client,
            203,
            VALID,
        );
        Pki {
            files,
            ca,
            other_ca,
            server,
            wrong_host,
            expired,
            untrusted,
            client_dns,
            client_uri,
            client_unlisted,
            client_untrusted,
        }
    }

    /// A path in the PKI's folder (for config and log files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.files.path(name)
    }

    /// A client config trusting [`Pki::ca`], presenting `identity` when given.
    pub fn client(&self, identity: Option<&Issued>) -> Arc<ClientConfig> {
        client_config(&self.ca.pem, identity)
    }
}

/// `key = "path"` (a TOML line).
pub fn path_key(key: &str, path: &Path) -> String {
    format!("{key} = \"{}\"\n", path.display())
}

/// The listener keys serving `cert` (`tls_cert`, `tls_key`).
pub fn listener_keys(cert: &Issued) -> String {
    format!(
        "{}{}",
        path_key("tls_cert", &cert.cert),
        path_key("tls_key", &cert.key)
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A rustls client config trusting the CA certificates in `ca`, presenting `identity`
/// (certificate and key) when given. Session resumption is off: every connection makes a
/// full handshake, so each one sees the certificate served now and is counted alike.
pub fn client_config(ca: &Path, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca) {
        roots.add(c).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                read_certs(&id.cert),
                PrivateKeyDer::from_pem_file(&id.key).expect("client key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A blocking memcached text-protocol client over rustls (sync API), with a read timeout so
/// a hang fails the test.
pub struct TlsClient {
    /// The TLS stream.
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects to 127.0.0.1:`port`, checking the server's certificate for IP 127.0.0.1;
    /// panics unless the handshake completes.
    pub fn connect(port: u16, config: Arc<ClientConfig>) -> TlsClient {
        Self::try_connect(port, config, "127.0.0.1")
            .unwrap_or_else(|e| panic!("TLS handshake with 127.0.0.1:{port}: {e}"))
    }

    /// Connects and completes the handshake (as far as the client sees it: with TLS 1.3 a
    /// server that refuses the client's certificate says so on the first read) checking the
    /// certificate for `name` (a DNS name or an IP address).
    pub fn try_connect(
        port: u16,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::io::Result<TlsClient> {
        let sock = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        sock.set_write_timeout(Some(Duration::from_secs(10)))?;
        sock.set_nodelay(true)?;
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, server_name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// The DER of the certificate the server presented (its leaf).
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("a server certificate")
            .to_vec()
    }

    /// Sets the socket's read timeout.
    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.sock.set_read_timeout(Some(t)).unwrap();
    }

    /// Writes bytes (and flushes them as TLS records).
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.try_send(bytes.as_ref()).expect("TLS write");
    }

    /// Writes bytes; the error, if any.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads what has arrived; Ok(false) when the server closed the connection.
    fn try_fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 65536];
        let got = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..got]);
        Ok(got > 0)
    }

    fn fill(&mut self) {
        match self.try_fill() {
            Ok(true) => {}
            Ok(false) => panic!("connection closed after {:?}", text(&self.buf)),
            Err(e) => panic!("TLS read: {e} after {:?}", text(&self.buf)),
        }
    }

    /// One line, including its `\r\n`; an error if the connection fails or closes first.
    pub fn try_read_line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            match self.try_fill() {
                Ok(true) => {}
                Ok(false) => return Err(format!("closed after {:?}", text(&self.buf))),
                Err(e) => return Err(format!("{e} after {:?}", text(&self.buf))),
            }
        }
    }

    /// One line, including its `\r\n`.
    pub fn read_line(&mut self) -> Vec<u8> {
        self.try_read_line()
            .unwrap_or_else(|e| panic!("TLS read: {e}"))
    }

    /// Exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill();
        }
        self.buf.drain(..n).collect()
    }

    /// One retrieval reply (through `END` or an error line).
    pub fn read_retrieval(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line();
            out.extend_from_slice(&line);
            if line.starts_with(b"VALUE ") {
                let len = value_len(&line).expect("data length in a VALUE line");
                out.extend(self.read_n(len + 2));
            } else {
                return out;
            }
        }
    }

    /// Sends one request and reads its whole reply as text (a retrieval through `END`,
    /// anything else one line).
    pub fn call(&mut self, request: impl AsRef<[u8]>) -> String {
        let request = request.as_ref();
        self.send(request);
        if request.starts_with(b"get") {
            text(&self.read_retrieval())
        } else {
            text(&self.read_line())
        }
    }

    /// `set` (flags 0) then expect `STORED`.
    pub fn set(&mut self, key: &str, value: &[u8]) {
        let got = self.call(super::set_request_bytes(key, 0, value));
        assert_eq!(got, "STORED\r\n", "set {key} over TLS");
    }

    /// `get` of one key: the value, or None on a miss.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send(format!("get {key}\r\n"));
        let reply = self.read_retrieval();
        if reply == b"END\r\n" {
            return None;
        }
        assert!(
            reply.starts_with(b"VALUE "),
            "get {key}: {:?}",
            text(&reply)
        );
        let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        Some(reply[header_end..reply.len() - 7].to_vec())
    }

    /// Reads until the server closes (cleanly or not); what arrived before, and how it
    /// ended (None: close_notify or EOF; Some(error)).
    pub fn read_until_closed(&mut self) -> (Vec<u8>, Option<std::io::Error>) {
        loop {
            match self.try_fill() {
                Ok(true) => {}
                Ok(false) => return (std::mem::take(&mut self.buf), None),
                Err(e) => return (std::mem::take(&mut self.buf), Some(e)),
            }
        }
    }
}

/// Connects with `config`, sends `version`, reads one line: Ok(the line) when served, else
/// Err(what happened: a failed handshake, an alert, a close).
pub fn attempt(port: u16, config: Arc<ClientConfig>) -> Result<String, String> {
    let mut c =
        TlsClient::try_connect(port, config, "127.0.0.1").map_err(|e| format!("handshake: {e}"))?;
    c.set_read_timeout(Duration::from_secs(5));
    c.try_send(b"version\r\n")
        .map_err(|e| format!("write: {e}"))?;
    c.try_read_line().map(|l| text(&l))
}

/// Real memcached serving TLS only (`-Z`) with `cert`; `extra_opts` are further `-o`
/// options (e.g. `ssl_ca_cert=…`, `ssl_verify_mode=2`).
pub fn memcached_tls(cert: &Issued, extra_opts: &[String]) -> Memcached {
    let mut opts = vec![
        format!("ssl_chain_cert={}", cert.cert.display()),
        format!("ssl_key={}", cert.key.display()),
    ];
    opts.extend(extra_opts.iter().cloned());
    let opts = opts.join(",");
    Memcached::start_with(&["-Z", "-o", &opts])
}

/// A finished (or killed) helper process.
#[derive(Debug)]
pub struct Run {
    /// The command line.
    pub what: String,
    /// Its exit status; None when it was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// Everything about the run, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} -> {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    /// Whether it exited with status `code`.
    pub fn exited(&self, code: i32) -> bool {
        self.status.and_then(|s| s.code()) == Some(code)
    }
}

/// Runs `program` with `args`, `input` on its stdin (then closed), its output in temp
/// files; killed after `limit`.
pub fn run(program: &str, args: &[&str], input: &[u8], limit: Duration) -> Run {
    assert!(
        Path::new(program).exists(),
        "{program} is missing: run scripts/test.sh, which installs the test dependencies"
    );
    let what = format!("{program} {}", args.join(" "));
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(program)
        .args(args)
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    {
        // Stdin is written and closed before waiting (small inputs fit the pipe).
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input);
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &PathBuf| text(&std::fs::read(p).unwrap_or_default());
    Run {
        what,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// `openssl s_client -quiet` to 127.0.0.1:`port` trusting `ca` (verification failures
/// abort; the certificate must carry IP 127.0.0.1), with `input` sent once connected.
pub fn s_client(port: u16, ca: &Path, input: &[u8]) -> Run {
    let connect = format!("127.0.0.1:{port}");
    run(
        "/usr/bin/openssl",
        &[
            "s_client",
            "-quiet",
            "-connect",
            &connect,
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
        ],
        input,
        Duration::from_secs(10),
    )
}

/// `curl` over HTTPS for `url`, trusting `ca`: the run, its stdout being the body and the
/// status code on a last line of its own.
pub fn curl(url: &str, ca: &Path) -> Run {
    run(
        "/usr/bin/curl",
        &[
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "--write-out",
            "\n%{http_code}",
            url,
        ],
        b"",
        Duration::from_secs(15),
    )
}
