//! TLS under a TCP link: mutual authentication by certificates, and encryption of everything
//! the link sends.
//!
//! A deployment that turns TLS on names three PEM files per host ([`TlsFiles`]): the host's
//! certificate, its private key, and the CA certificate(s) every host trusts. A process loads
//! them once ([`TlsConfig::load`]), then wraps each link's socket: the connecting side with
//! [`client`], the listening side with [`server`]. Both run the whole TLS handshake before they
//! return a [`TlsStream`]; the iotstream handshake ([`super::handshake`]) then runs inside it,
//! and the link [`split`](TlsStream::split)s it into a reading half and a writing half for its
//! two threads.
//!
//! # What is authenticated, what is encrypted
//!
//! - **TLS 1.3 only**, with the ring provider's cipher suites (AES-GCM, ChaCha20-Poly1305) and
//!   key exchanges (X25519, P-256, P-384). Both ends are iotstream, so nothing older is needed.
//! - **Mutual, always.** Each side presents its certificate and proves it holds the key; each
//!   side checks the other's certificate chain against the CA file (validity dates included).
//!   A host with a certificate from another CA, or without one, is refused during the
//!   handshake, before any iotstream byte is exchanged.
//! - **The server's name.** The client checks that the server's certificate names the address
//!   it connects to, as the deployment file writes it: an IP address must be in the
//!   certificate's IP subjectAltNames, a DNS name in its DNS subjectAltNames (the subject's CN
//!   is ignored). A certificate for `10.0.0.2` does not do for a host written `plc.lan`, even if
//!   that name resolves to `10.0.0.2`: give the certificate every name the deployment uses.
//! - **The client's name is not checked**: the server accepts any certificate the CA signed.
//!   Which process may write which edge is then the iotstream handshake's business (application,
//!   deployment digest, edge, type and, with a secret, the HMAC proofs).
//! - **Encrypted and integrity-protected**: every byte after the TLS handshake, that is the
//!   whole iotstream handshake and every frame (data, end of stream, acks, heartbeats,
//!   goodbyes). TLS 1.3 also encrypts the certificates themselves.
//! - **Not hidden**: the hosts' addresses and ports, that TLS is used, the time and size of each
//!   record (so roughly how much data flows and when), and when the connection closes. An
//!   attacker on the path can still cut the connection; the link notices and reconnects.
//! - **No resumption**: every connection runs the full handshake with both certificates.
//!
//! # Threads
//!
//! A [`TlsStream`] is one rustls connection behind a mutex. Its [`TlsReader`] decrypts what it
//! reads from the socket, its [`TlsWriter`] encrypts and writes; the two can run on two
//! threads at once. Neither holds the connection's lock while blocked on the socket, so a
//! reader waiting for acks never stops the writer, and the reverse.
//!
//! # Errors
//!
//! Loading names the file and what is wrong with it ([`TlsError`]). The handshake's errors say
//! which side refused what: the side that checks a certificate from an unknown CA says
//! "TLS: the peer's certificate is not signed by the CA in 'FILE' (UnknownIssuer)", the refused
//! side that the peer refused its certificate (the alert it got). A peer without TLS is
//! recognised from its first bytes ("does not speak TLS") or from its closing the connection
//! during the handshake; a silent peer is bounded by the socket's timeouts.
//!
//! Under TLS 1.3 the client finishes its handshake before the server has checked the client's
//! certificate: a client whose certificate is refused learns it at its first read, as an
//! `io::Error` whose message is the same sentence (the iotstream handshake reads right away).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::auth::{read_local_file, FileProblem};
use rustls::client::Resumption;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection,
    InconsistentKeys, RootCertStore, ServerConfig, ServerConnection,
};

/// The most bytes a certificate, key or CA file may hold: PEM files are a few KiB, and a
/// file named by mistake (a log, a device) must not fill memory.
pub(crate) const PEM_FILE_MAX_BYTES: usize = 1 << 20;

/// The most plaintext one [`TlsWriter::write`] takes: it is encrypted into a buffer of about
/// the same size before going to the socket.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// What one socket read takes: a little more than one largest TLS record.
const READ_BUFFER_BYTES: usize = 18 * 1024;

/// How many of a non-TLS peer's first bytes an error shows.
const SHOWN_BYTES: usize = 32;

/// The three PEM files a host's TLS needs, as the deployment file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// This host's certificate, then any intermediates (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1 PEM); only its owner may
    /// read it.
    pub key: PathBuf,
    /// The CA certificate(s) that sign every host's certificate (PEM `CERTIFICATE` blocks).
    pub ca: PathBuf,
}

/// Which of the three files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// [`TlsFiles::cert`].
    Cert,
    /// [`TlsFiles::key`].
    Key,
    /// [`TlsFiles::ca`].
    Ca,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Cert => "TLS certificate file",
            FileKind::Key => "TLS key file",
            FileKind::Ca => "TLS CA file",
        })
    }
}

/// Why TLS could not be set up, or a TLS connection failed. Each Display is one sentence
/// naming the file, or the side, at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TlsError {
    /// No file at that path.
    #[error("the {kind} {} does not exist", .path.display())]
    Missing {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("cannot read the {kind} {}: {error}", .path.display())]
    Unreadable {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
        /// The system's error.
        error: String,
    },
    /// Not a regular file (a directory, a device, a pipe).
    #[error("the {kind} {} is not a regular file", .path.display())]
    NotAFile {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
    },
    /// Larger than [`PEM_FILE_MAX_BYTES`].
    #[error("the {kind} {} holds more than 1 MiB: it is not a PEM file", .path.display())]
    TooLarge {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
    },
    /// The key file may be read or written by group or others.
    #[error(
        "permissions {mode:04o} for the TLS key file {path} are too open: group and others must \
         not read or write it, so it is refused (run: chmod 600 {path})",
        path = .path.display()
    )]
    KeyTooOpen {
        /// The path named.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM block that does not decode.
    #[error("the {kind} {} is not valid PEM: {error}", .path.display())]
    BadPem {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
        /// What the decoder said.
        error: String,
    },
    /// The certificate or CA file holds no `CERTIFICATE` block.
    #[error(
        "no certificate in the {kind} {} (it needs a PEM block \"-----BEGIN CERTIFICATE-----\")",
        .path.display()
    )]
    NoCertificate {
        /// Which file.
        kind: FileKind,
        /// The path named.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error(
        "no private key in the TLS key file {} (it needs a PEM block \"-----BEGIN PRIVATE \
         KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")",
        .path.display()
    )]
    NoKey {
        /// The path named.
        path: PathBuf,
    },
    /// The key cannot be used (an unsupported algorithm, a malformed key).
    #[error("the private key in {} cannot be used: {error}", .path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        error: String,
    },
    /// The key is not the one of the certificate.
    #[error(
        "the private key in {} does not match the certificate in {}",
        .key.display(), .cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("the TLS CA file {} holds a certificate that cannot be a CA: {error}", .path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        error: String,
    },
    /// This host's own certificate does not verify against the CA file: every peer would
    /// refuse it.
    #[error(
        "the certificate in {} is refused by the CA in {}: {error}",
        .cert.display(), .ca.display()
    )]
    CertNotFromCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// Why (UnknownIssuer, Expired, ...).
        error: String,
    },
    /// Any other refusal of rustls's while building the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The name to check the server's certificate against is neither an IP address nor a DNS
    /// name.
    #[error(
        "TLS: '{name}' is neither an IP address nor a DNS name to check the server's \
         certificate against"
    )]
    BadServerName {
        /// The name given.
        name: String,
    },
    /// The peer's certificate chain does not lead to the CA file.
    #[error("TLS: the peer's certificate is not signed by the CA in '{}' ({reason})", .ca.display())]
    UnknownCa {
        /// The CA file.
        ca: PathBuf,
        /// rustls's name for it: UnknownIssuer, or BadSignature (an issuer with the CA's name
        /// but another key).
        reason: &'static str,
    },
    /// The server's certificate does not name the address the client connected to.
    #[error(
        "TLS: the server's certificate is not valid for '{expected}': it is valid for {presented}"
    )]
    WrongName {
        /// The name the client checked.
        expected: String,
        /// The names in the certificate, or a description.
        presented: String,
    },
    /// Any other fault of the peer's certificate (expired, not yet valid, wrong usage).
    #[error("TLS: the peer's certificate is refused: {0}")]
    BadPeerCert(String),
    /// The peer sent no certificate.
    #[error("TLS: the peer presented no certificate, and each side must present one")]
    NoPeerCert,
    /// The peer refused this side's certificate (it sent an alert saying so).
    #[error(
        "TLS: the peer refused this host's certificate (alert {alert}): {meaning}; the peer's \
         log says why"
    )]
    RefusedByPeer {
        /// The alert's name.
        alert: String,
        /// What it means.
        meaning: &'static str,
    },
    /// The peer ended the handshake or the connection with another alert.
    #[error("TLS: the peer ended the connection with the alert {0}")]
    Alert(String),
    /// The peer's first bytes are not TLS.
    #[error(
        "TLS: the peer does not speak TLS (it sent \"{sent}\"): is TLS configured on one host \
         only?"
    )]
    NotTls {
        /// Its first bytes (at most 32), escaped.
        sent: String,
    },
    /// The peer closed the connection during the TLS handshake.
    #[error(
        "TLS: the peer closed the connection during the TLS handshake{}",
        if *.answered { "" } else { " without answering (does it run without TLS?)" }
    )]
    Closed {
        /// Whether it had sent anything.
        answered: bool,
    },
    /// Reading or writing the socket failed during the handshake (a timeout, a reset).
    #[error("TLS: the connection failed during the TLS handshake: {0}")]
    Io(String),
    /// Any other TLS failure.
    #[error("TLS: {0}")]
    Protocol(String),
}

impl TlsError {
    /// Which of the three files a loading error is about: the certificate for a certificate
    /// the CA refuses or a key that does not match it; `None` for any other error.
    pub(crate) fn file(&self) -> Option<FileKind> {
        match self {
            TlsError::Missing { kind, .. }
            | TlsError::Unreadable { kind, .. }
            | TlsError::NotAFile { kind, .. }
            | TlsError::TooLarge { kind, .. }
            | TlsError::BadPem { kind, .. }
            | TlsError::NoCertificate { kind, .. } => Some(*kind),
            TlsError::KeyTooOpen { .. } | TlsError::NoKey { .. } | TlsError::BadKey { .. } => {
                Some(FileKind::Key)
            }
            TlsError::BadCa { .. } => Some(FileKind::Ca),
            TlsError::KeyMismatch { .. } | TlsError::CertNotFromCa { .. } => Some(FileKind::Cert),
            _ => None,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        let kind = match e {
            TlsError::Closed { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// A process's TLS setup, loaded once from its [`TlsFiles`]: the rustls configurations of its
/// outgoing (client) and incoming (server) connections. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// Where the trusted CA came from, for error messages.
    ca: PathBuf,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the three files: the certificate file must hold a certificate, the key
    /// file a private key matching it and be readable by its owner only (like a secret file),
    /// the CA file at least one CA certificate, and the certificate must verify against the CA
    /// (so a host with a wrong certificate fails here, not at every peer).
    pub(crate) fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let certs = read_certs(FileKind::Cert, &files.cert)?;
        let key = read_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(FileKind::Ca, &files.ca)? {
            roots.add(ca).map_err(|e| TlsError::BadCa {
                path: files.ca.clone(),
                error: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_error = |e: rustls::Error| match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            e => TlsError::BadKey {
                path: files.key.clone(),
                error: e.to_string(),
            },
        };
        let config_error = |e: rustls::Error| TlsError::Config(e.to_string());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::BadCa {
                path: files.ca.clone(),
                error: e.to_string(),
            })?;
        // Our own certificate, checked as a peer would check it.
        if let Some((end_entity, intermediates)) = certs.split_first() {
            verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .map_err(|e| TlsError::CertNotFromCa {
                    cert: files.cert.clone(),
                    ca: files.ca.clone(),
                    error: e.to_string(),
                })?;
        }
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(key_error)?;
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(key_error)?;
        client.resumption = Resumption::disabled();

        Ok(TlsConfig {
            client: Arc::new(client),
            server: Arc::new(server),
            ca: files.ca.clone(),
        })
    }
}

/// Reads a whole PEM file of `kind`, checking that it is a regular file of at most
/// [`PEM_FILE_MAX_BYTES`] and, for the key, that group and others cannot read or write it.
fn read_pem_file(kind: FileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    let private = kind == FileKind::Key;
    read_local_file(path, PEM_FILE_MAX_BYTES, private).map_err(|p| {
        let path = path.to_owned();
        match p {
            FileProblem::Missing => TlsError::Missing { kind, path },
            FileProblem::Unreadable(error) => TlsError::Unreadable { kind, path, error },
            FileProblem::NotAFile => TlsError::NotAFile { kind, path },
            FileProblem::TooOpen(mode) => TlsError::KeyTooOpen { path, mode },
            FileProblem::TooLarge => TlsError::TooLarge { kind, path },
        }
    })
}

/// The certificates of a certificate or CA file, in order; at least one.
fn read_certs(kind: FileKind, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(kind, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            kind,
            path: path.to_owned(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            kind,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of the key file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem_file(FileKind::Key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => TlsError::BadPem {
            kind: FileKind::Key,
            path: path.to_owned(),
            error: e.to_string(),
        },
    })
}

/// The host part of an address as a deployment writes it, for checking a server's
/// certificate: `10.0.0.2`, `10.0.0.2:7000`, `plc.lan:7000`, `[fe80::1]:7000`, `[::1]` and `::1`
/// give `10.0.0.2`, `10.0.0.2`, `plc.lan`, `fe80::1`, `::1`, `::1`.
pub(crate) fn host_of(address: &str) -> &str {
    if address.parse::<IpAddr>().is_ok() {
        return address;
    }
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// Runs the client's side of the TLS handshake on `tcp`, checking that the server's
/// certificate names `server_name` (the peer host's address as the deployment writes it, with
/// or without a port: see [`host_of`]). Blocks no longer than the socket's timeouts allow.
pub(crate) fn client(
    tcp: TcpStream,
    cfg: &TlsConfig,
    server_name: &str,
) -> Result<TlsStream, TlsError> {
    let host = host_of(server_name);
    let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadServerName {
        name: server_name.to_owned(),
    })?;
    let conn = ClientConnection::new(cfg.client.clone(), name)
        .map_err(|e| TlsError::Protocol(e.to_string()))?;
    handshake(tcp, Connection::Client(conn), cfg.ca.clone())
}

/// Runs the server's side of the TLS handshake on an accepted `tcp`: the client must present a
/// certificate the CA signed. Blocks no longer than the socket's timeouts allow.
pub(crate) fn server(tcp: TcpStream, cfg: &TlsConfig) -> Result<TlsStream, TlsError> {
    let conn =
        ServerConnection::new(cfg.server.clone()).map_err(|e| TlsError::Protocol(e.to_string()))?;
    handshake(tcp, Connection::Server(conn), cfg.ca.clone())
}

/// A reader that keeps the first bytes it passes on.
struct Recording<'a> {
    tcp: &'a TcpStream,
    first: Vec<u8>,
}

impl Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.tcp).read(buf)?;
        let keep = (SHOWN_BYTES - self.first.len()).min(n);
        self.first.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

/// Whether `byte` can start a TLS record (content types change_cipher_spec, alert, handshake,
/// application_data).
fn starts_tls_record(byte: u8) -> bool {
    (0x14..=0x17).contains(&byte)
}

/// Drives `conn` over `tcp` until its handshake is over.
fn handshake(tcp: TcpStream, mut conn: Connection, ca: PathBuf) -> Result<TlsStream, TlsError> {
    // A reset or a broken pipe is the peer closing too (before it read all we sent).
    let io_error = |e: io::Error, answered: bool| match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => TlsError::Closed { answered },
        _ => TlsError::Io(e.to_string()),
    };
    let mut recording = Recording {
        tcp: &tcp,
        first: Vec::new(),
    };
    // Ends: each pass sends what is due and reads at least one byte, or returns; a peer that
    // sends nothing is cut by the socket's read timeout.
    while conn.is_handshaking() {
        while conn.wants_write() {
            let answered = !recording.first.is_empty();
            conn.write_tls(&mut &tcp)
                .map_err(|e| io_error(e, answered))?;
        }
        if !conn.wants_read() {
            return Err(TlsError::Protocol(
                "the TLS handshake stalled (rustls wants neither to read nor to write)".into(),
            ));
        }
        let before = recording.first.len();
        let n = match conn.read_tls(&mut recording) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e, before > 0)),
        };
        if n == 0 {
            return Err(TlsError::Closed {
                answered: !recording.first.is_empty(),
            });
        }
        if before == 0 && !starts_tls_record(recording.first[0]) {
            // Not waiting for a whole record header: a plain peer may send fewer bytes and wait.
            return Err(TlsError::NotTls {
                sent: recording.first.escape_ascii().to_string(),
            });
        }
        if let Err(e) = conn.process_new_packets() {
            // The alert saying why, if rustls queued one; the error is what matters.
            let _ = conn.write_tls(&mut &tcp);
            close_after_alert(&tcp);
            return Err(classify(e, &ca));
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut &tcp).map_err(|e| io_error(e, true))?;
    }
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        out: Mutex::new(Vec::new()),
        tcp,
        ca,
        shut_down_here: AtomicBool::new(false),
    });
    Ok(TlsStream {
        reader: TlsReader {
            shared: shared.clone(),
            inbuf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            failed: None,
        },
        writer: TlsWriter { shared },
    })
}

/// Closes a connection refused during the TLS handshake so that the peer reads the alert just
/// written: the writing direction first (the alert, then the end of the stream), then what the
/// peer has sent meanwhile is read and dropped, for at most a second. Closing a socket with
/// unread bytes in it sends a reset, and a reset can discard the alert at the peer before it
/// reads it (a TLS 1.3 client sends its first data right after its Finished), leaving it with
/// "closed without answering" instead of the reason.
fn close_after_alert(tcp: &TcpStream) {
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    // Ends: at the peer's end of stream, an error, or the deadline.
    while std::time::Instant::now() < deadline {
        match (&mut &*tcp).read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// What rustls's error means for an iotstream operator.
fn classify(e: rustls::Error, ca: &Path) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => TlsError::UnknownCa {
            ca: ca.to_owned(),
            reason: "UnknownIssuer",
        },
        E::InvalidCertificate(CertificateError::BadSignature) => TlsError::UnknownCa {
            ca: ca.to_owned(),
            reason: "BadSignature",
        },
        E::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => TlsError::WrongName {
            expected: expected.to_str().into_owned(),
            presented: if presented.is_empty() {
                "no name (it has no subjectAltName)".to_owned()
            } else {
                presented
                    .iter()
                    .map(|n| bare_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        },
        E::InvalidCertificate(CertificateError::NotValidForName) => TlsError::WrongName {
            expected: "the address connected to".to_owned(),
            presented: "other names".to_owned(),
        },
        E::InvalidCertificate(c) => TlsError::BadPeerCert(c.to_string()),
        E::NoCertificatesPresented => TlsError::NoPeerCert,
        E::AlertReceived(alert) => {
            let meaning = match alert {
                AlertDescription::UnknownCA => {
                    Some("it is not signed by a CA the peer trusts (another deployment's CA?)")
                }
                AlertDescription::BadCertificate => {
                    Some("the peer found it bad (a server certificate without this address?)")
                }
                AlertDescription::CertificateExpired => Some("it has expired"),
                AlertDescription::CertificateRequired => Some("the peer wants one"),
                AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRevoked => Some("the peer cannot accept it"),
                _ => None,
            };
            match meaning {
                Some(meaning) => TlsError::RefusedByPeer {
                    alert: format!("{alert:?}"),
                    meaning,
                },
                None => TlsError::Alert(format!("{alert:?}")),
            }
        }
        e => TlsError::Protocol(e.to_string()),
    }
}

/// A name as rustls shows a certificate's names (`IpAddress(10.0.0.2)`, `DnsName("plc.lan")`),
/// without the decoration; any other form as it is.
fn bare_name(shown: &str) -> &str {
    for kind in ["IpAddress(", "DnsName("] {
        if let Some(inner) = shown.strip_prefix(kind).and_then(|s| s.strip_suffix(')')) {
            return inner.trim_matches('"');
        }
    }
    shown
}

/// The state both halves share.
struct Shared {
    /// The rustls connection: plaintext and TLS records buffered in both directions. Held
    /// only to move bytes in or out, never across a socket read or write.
    conn: Mutex<Connection>,
    /// Serialises socket writes (records must reach the socket in the order rustls made them),
    /// and holds the encrypted bytes on their way. Taken before `conn`, never after.
    out: Mutex<Vec<u8>>,
    tcp: TcpStream,
    /// The CA file, for error messages.
    ca: PathBuf,
    /// [`TlsWriter::shutdown`] was called: the reader's end of file is not the peer's doing.
    shut_down_here: AtomicBool,
}

/// `m`'s guard; a lock poisoned by a panicking thread is an error, not a second panic.
fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("TLS: a thread using this connection panicked"))
}

impl Shared {
    /// Moves every record rustls has ready into `out`.
    fn take_records(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut conn = lock(&self.conn)?;
        // Ends: each write_tls moves at least one buffered byte into `out`.
        while conn.wants_write() {
            conn.write_tls(out)?;
        }
        Ok(())
    }

    /// Sends what rustls has ready (the alert of an error, say) unless a writer is busy (it
    /// sends it after its own records). Best effort: the caller has a worse error to report.
    fn try_send_pending(&self) {
        if let Ok(mut out) = self.out.try_lock() {
            if self.take_records(&mut out).is_ok() {
                let _ = (&self.tcp).write_all(&out);
            }
            out.clear();
        }
    }
}

/// A TLS connection after its handshake, whole: `Read` and `Write` for one thread (the
/// iotstream handshake), then [`split`](TlsStream::split) for two.
pub(crate) struct TlsStream {
    reader: TlsReader,
    writer: TlsWriter,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.tcp().peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The reading and the writing half, for two threads.
    pub(crate) fn split(self) -> io::Result<(TlsReader, TlsWriter)> {
        Ok((self.reader, self.writer))
    }

    /// The socket underneath: for its addresses and timeouts. Reading or writing it directly
    /// would break the TLS stream.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.writer.shared.tcp
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The reading half: decrypts what comes from the socket. `Ok(0)` is the end of the stream:
/// the peer closed TLS cleanly (close_notify), or this side shut the connection down. A peer
/// that closes the socket without close_notify is an `UnexpectedEof` error (the stream may
/// have been cut short).
pub(crate) struct TlsReader {
    shared: Arc<Shared>,
    /// Bytes read from the socket, `start..end` not yet given to rustls.
    inbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The TLS error that ended the stream, repeated by every later read.
    failed: Option<(io::ErrorKind, String)>,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        // Ends: each pass returns, gives rustls at least one byte of `inbuf`, or reads the
        // socket, which blocks at most its read timeout and returns at least one byte or the
        // end of file (after which rustls answers Ok(0) or UnexpectedEof).
        loop {
            {
                let mut conn = lock(&self.shared.conn)?;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::UnexpectedEof
                            && self.shared.shut_down_here.load(Ordering::Acquire) =>
                    {
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut pending = &self.inbuf[self.start..self.end];
                    let n = conn.read_tls(&mut pending)?;
                    // Zero: rustls got close_notify and takes nothing more; drop the rest.
                    self.start = if n == 0 { self.end } else { self.start + n };
                    if let Err(e) = conn.process_new_packets() {
                        drop(conn);
                        self.shared.try_send_pending();
                        let e: io::Error = classify(e, &self.shared.ca).into();
                        self.failed = Some((e.kind(), e.to_string()));
                        return Err(e);
                    }
                    continue;
                }
            }
            // Not holding `conn`: the writer goes on while this waits.
            let n = match (&self.shared.tcp).read(&mut self.inbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.shared.shut_down_here.load(Ordering::Acquire) => return Ok(0),
                Err(e) => return Err(e),
            };
            if n == 0 {
                // Tell rustls about the end of file; its reader then says which kind.
                let mut conn = lock(&self.shared.conn)?;
                conn.read_tls(&mut io::empty())?;
                continue;
            }
            self.start = 0;
            self.end = n;
        }
    }
}

/// The writing half: encrypts and sends. Each `write` sends its records before it returns
/// (at most 64 KiB of plaintext per call), so `flush` has nothing left to do but the socket's.
pub(crate) struct TlsWriter {
    shared: Arc<Shared>,
}

impl TlsWriter {
    /// Closes the connection both ways: sends close_notify (unless another write is under
    /// way), then shuts the socket down, which wakes a [`TlsReader`] blocked in a read (it
    /// returns `Ok(0)`).
    #[cfg(test)]
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        self.shared.shut_down_here.store(true, Ordering::Release);
        if let Ok(mut conn) = self.shared.conn.lock() {
            conn.send_close_notify();
        }
        self.shared.try_send_pending();
        match self.shared.tcp.shutdown(std::net::Shutdown::Both) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = lock(&self.shared.out)?;
        let taken = {
            let mut conn = lock(&self.shared.conn)?;
            let taken = conn
                .writer()
                .write(&buf[..buf.len().min(WRITE_CHUNK_BYTES)])?;
            // Ends: each write_tls moves at least one buffered byte into `out`.
            while conn.wants_write() {
                conn.write_tls(&mut *out)?;
            }
            taken
        };
        // Not holding `conn`: the reader goes on while this waits for room in the socket.
        let sent = (&self.shared.tcp).write_all(&out);
        out.clear();
        sent?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut out = lock(&self.shared.out)?;
        self.shared.take_records(&mut out)?;
        let sent = (&self.shared.tcp).write_all(&out);
        out.clear();
        sent?;
        (&self.shared.tcp).flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transport::tcp::handshake::{client_handshake, server_handshake, HandshakeError};
    use crate::transport::tcp::wire::tests::sample_hello;
    use crate::transport::tcp::wire::Hello;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use std::fs;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::thread;
    use std::time::Duration;

    /// A certificate authority made for one test.
    pub(crate) struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pem: String,
    }

    pub(crate) fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A host's certificate and key (PEM), signed by `ca`, for `names` (IP or DNS), usable
    /// as server and as client.
    fn host_cert(ca: &Ca, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS setup for links on 127.0.0.1, its files in `dir`: a CA, and one host
    /// certificate signed by it that every side uses.
    pub(crate) fn loopback_config(dir: &Path) -> TlsConfig {
        let ca = ca("test CA");
        TlsConfig::load(&host_files(dir, "host", &ca, &["127.0.0.1"], &[&ca])).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Writes a host's three files into `dir` under names starting with `host`; the CA file
    /// holds `cas`.
    pub(crate) fn host_files(
        dir: &Path,
        host: &str,
        signer: &Ca,
        names: &[&str],
        cas: &[&Ca],
    ) -> TlsFiles {
        let (cert, key) = host_cert(signer, names);
        let ca_pem: String = cas.iter().map(|c| c.pem.as_str()).collect();
        TlsFiles {
            cert: write(dir, &format!("{host}-cert.pem"), &cert, 0o644),
            key: write(dir, &format!("{host}-key.pem"), &key, 0o600),
            ca: write(dir, &format!("{host}-ca.pem"), &ca_pem, 0o644),
        }
    }

    /// A connected loopback pair, both ends with timeouts so that a broken test fails instead
    /// of hanging. The sockets close when dropped.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        (client, server)
    }

    /// Both sides' TLS handshakes over a loopback pair, the server's on a thread.
    fn connect(
        client_files: &TlsFiles,
        server_files: &TlsFiles,
        server_name: &str,
    ) -> (Result<TlsStream, TlsError>, Result<TlsStream, TlsError>) {
        let client_cfg = TlsConfig::load(client_files).unwrap();
        let server_cfg = TlsConfig::load(server_files).unwrap();
        let (c, s) = pair();
        let server_side = thread::spawn(move || server(s, &server_cfg));
        let client_side = client(c, &client_cfg, server_name);
        (client_side, server_side.join().unwrap())
    }

    /// The byte at offset `i` of a test stream: not periodic over short spans, so a lost or
    /// repeated record shows.
    fn pattern(i: usize, seed: u8) -> u8 {
        (i as u8) ^ ((i >> 11) as u8).wrapping_mul(31) ^ seed
    }

    const STREAM_BYTES: usize = 10 * 1024 * 1024;

    fn send_stream(mut w: impl Write, seed: u8) {
        let block: Vec<u8> = (0..STREAM_BYTES).map(|i| pattern(i, seed)).collect();
        // Uneven writes, to cross record boundaries anywhere.
        let mut at = 0;
        for size in [1, 7, 4096, 16 * 1024 + 3, 100_000].iter().cycle() {
            if at == block.len() {
                break;
            }
            let end = (at + size).min(block.len());
            w.write_all(&block[at..end]).unwrap();
            at = end;
        }
        w.flush().unwrap();
    }

    fn receive_stream(mut r: impl Read, seed: u8) {
        let mut got = vec![0; STREAM_BYTES];
        r.read_exact(&mut got).unwrap();
        let first_wrong = (0..STREAM_BYTES).find(|&i| got[i] != pattern(i, seed));
        assert_eq!(first_wrong, None, "the stream arrived altered");
    }

    #[test]
    fn ten_megabytes_each_way_at_once_through_split_halves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("plant CA");
        let a = host_files(dir.path(), "a", &ca, &["127.0.0.1"], &[&ca]);
        let b = host_files(dir.path(), "b", &ca, &["127.0.0.1"], &[&ca]);
        let (client, server) = connect(&a, &b, "127.0.0.1");
        let (mut client, mut server) = (client.unwrap(), server.unwrap());

        // Whole streams first, as the iotstream handshake uses them.
        client.write_all(b"hello over TLS").unwrap();
        let mut hello = [0; 14];
        server.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello over TLS");
        server.write_all(b"ok").unwrap();
        let mut ok = [0; 2];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok");

        // Then four threads: each side writes 10 MB while reading the other's 10 MB.
        let (client_r, client_w) = client.split().unwrap();
        let (mut server_r, server_w) = server.split().unwrap();
        thread::scope(|s| {
            s.spawn(|| send_stream(&mut { client_w }, 1));
            s.spawn(|| send_stream(&mut { server_w }, 2));
            s.spawn(|| receive_stream(client_r, 2));
            s.spawn(|| receive_stream(&mut server_r, 1));
        });
        // The writers are dropped; the server's reader has taken every byte and then sees
        // the end of the socket without close_notify.
        let err = server_r.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn shutdown_ends_both_readers_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("plant CA");
        let a = host_files(dir.path(), "a", &ca, &["127.0.0.1"], &[&ca]);
        let (client, server) = connect(&a, &a, "127.0.0.1");
        let (mut client_r, client_w) = client.unwrap().split().unwrap();
        let (mut server_r, _server_w) = server.unwrap().split().unwrap();
        thread::scope(|s| {
            // Blocked in a read (nothing comes) when its writer shuts the connection down.
            let blocked = s.spawn(move || client_r.read(&mut [0; 8]).unwrap());
            client_w.shutdown().unwrap();
            assert_eq!(blocked.join().unwrap(), 0);
        });
        // The server got the close_notify: a clean end of stream.
        assert_eq!(server_r.read(&mut [0; 8]).unwrap(), 0);
    }

    #[test]
    fn a_client_certificate_from_an_unknown_ca_is_refused_by_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let other = ca("other CA");
        // The client trusts the server's CA, but its own certificate comes from another.
        let client_files = host_files(dir.path(), "a", &other, &["127.0.0.1"], &[&plant, &other]);
        let server_files = host_files(dir.path(), "b", &plant, &["127.0.0.1"], &[&plant]);
        let (client, server) = connect(&client_files, &server_files, "127.0.0.1");
        assert_eq!(
            server.unwrap_err().to_string(),
            format!(
                "TLS: the peer's certificate is not signed by the CA in '{}' (UnknownIssuer)",
                server_files.ca.display()
            )
        );
        // TLS 1.3: the client's handshake was over before the server checked; its first
        // read (after writing, as the iotstream client does) says what happened.
        let mut client = client.unwrap();
        let _ = client.write_all(b"Hello");
        let err = client.read(&mut [0; 8]).unwrap_err();
        let expected =
            "TLS: the peer refused this host's certificate (alert UnknownCA): it is not \
                        signed by a CA the peer trusts (another deployment's CA?); the peer's log \
                        says why";
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), expected);
        // And so does every later read.
        assert_eq!(client.read(&mut [0; 8]).unwrap_err().to_string(), expected);
    }

    #[test]
    fn a_server_certificate_from_an_unknown_ca_is_refused_by_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let other = ca("other CA");
        let client_files = host_files(dir.path(), "a", &plant, &["127.0.0.1"], &[&plant]);
        let server_files = host_files(dir.path(), "b", &other, &["127.0.0.1"], &[&plant, &other]);
        let (client, server) = connect(&client_files, &server_files, "127.0.0.1");
        assert_eq!(
            client.unwrap_err().to_string(),
            format!(
                "TLS: the peer's certificate is not signed by the CA in '{}' (UnknownIssuer)",
                client_files.ca.display()
            )
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            "TLS: the peer refused this host's certificate (alert UnknownCA): it is not signed by \
             a CA the peer trusts (another deployment's CA?); the peer's log says why"
        );
    }

    #[test]
    fn a_server_certificate_for_another_address_is_refused_by_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let a = host_files(dir.path(), "a", &plant, &["127.0.0.1"], &[&plant]);
        let b = host_files(
            dir.path(),
            "b",
            &plant,
            &["127.0.0.1", "plc.lan"],
            &[&plant],
        );
        let (client, server) = connect(&a, &b, "127.0.0.2:7000");
        assert_eq!(
            client.unwrap_err().to_string(),
            "TLS: the server's certificate is not valid for '127.0.0.2': it is valid for \
             127.0.0.1, plc.lan"
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            "TLS: the peer refused this host's certificate (alert BadCertificate): the peer found \
             it bad (a server certificate without this address?); the peer's log says why"
        );
        // The DNS name in the certificate is accepted, though the client connected by address.
        let (client, server) = connect(&a, &b, "plc.lan:7000");
        client.unwrap();
        server.unwrap();
        let (client, _) = connect(&a, &b, "scada.lan");
        assert_eq!(
            client.unwrap_err().to_string(),
            "TLS: the server's certificate is not valid for 'scada.lan': it is valid for \
             127.0.0.1, plc.lan"
        );
    }

    #[test]
    fn a_name_that_is_no_address_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let a = host_files(dir.path(), "a", &plant, &["127.0.0.1"], &[&plant]);
        let cfg = TlsConfig::load(&a).unwrap();
        let (c, _s) = pair();
        assert_eq!(
            client(c, &cfg, "not a host!").unwrap_err().to_string(),
            "TLS: 'not a host!' is neither an IP address nor a DNS name to check the server's \
             certificate against"
        );
    }

    #[test]
    fn host_of_takes_the_host_out_of_an_address() {
        for (address, host) in [
            ("10.0.0.2", "10.0.0.2"),
            ("10.0.0.2:7000", "10.0.0.2"),
            ("plc.lan", "plc.lan"),
            ("plc.lan:7000", "plc.lan"),
            ("[fe80::1]:7000", "fe80::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("fe80::1:2", "fe80::1:2"),
        ] {
            assert_eq!(host_of(address), host, "{address}");
        }
    }

    fn hello() -> Hello {
        Hello {
            authenticated: false,
            ..sample_hello()
        }
    }

    #[test]
    fn a_plain_client_at_a_tls_server_gets_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let b = host_files(dir.path(), "b", &plant, &["127.0.0.1"], &[&plant]);
        let cfg = TlsConfig::load(&b).unwrap();
        let (mut c, s) = pair();
        let server_side = thread::spawn(move || server(s, &cfg).map(|_| ()));
        let client_err = client_handshake(&mut c, &hello(), None).unwrap_err();
        assert_eq!(
            server_side.join().unwrap().unwrap_err().to_string(),
            format!(
                r#"TLS: the peer does not speak TLS (it sent "\x87\x00\x00\x00\x10IOTSTRM1\x{:02x}\x00\x05\x00plant\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07"): is TLS configured on one host only?"#,
                super::super::wire::VERSION
            )
        );
        // The TLS server closed the connection: the plain client sees it closed or reset.
        match client_err {
            HandshakeError::Closed => {}
            HandshakeError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("unexpected client error: {other}"),
        }
    }

    #[test]
    fn a_tls_client_at_a_plain_server_gets_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let plant = ca("plant CA");
        let a = host_files(dir.path(), "a", &plant, &["127.0.0.1"], &[&plant]);
        let cfg = TlsConfig::load(&a).unwrap();
        let (c, mut s) = pair();
        let server_side = thread::spawn(move || {
            let r = server_handshake(&mut s, None, |_| Ok(0)).map(|_| ());
            drop(s);
            r
        });
        let client_err = client(c, &cfg, "127.0.0.1").unwrap_err();
        let server_err = server_side.join().unwrap().unwrap_err().to_string();
        assert!(
            server_err.starts_with(r#"the peer is not an iotstream process (it sent "\x16\x03"#),
            "{server_err}"
        );
        assert_eq!(
            client_err.to_string(),
            "TLS: the peer closed the connection during the TLS handshake without answering \
             (does it run without TLS?)"
        );
    }

    /// What loading `files` says, with the temporary directory's path written `DIR`.
    fn load_error(files: &TlsFiles, dir: &Path) -> String {
        TlsConfig::load(files)
            .unwrap_err()
            .to_string()
            .replace(&dir.display().to_string(), "DIR")
    }

    #[test]
    fn files_missing_empty_or_mixed_up_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let plant = ca("plant CA");
        let good = host_files(dir, "a", &plant, &["127.0.0.1"], &[&plant]);
        let other = host_files(dir, "b", &plant, &["127.0.0.1"], &[&plant]);
        TlsConfig::load(&good).unwrap();
        let with = |f: &dyn Fn(&mut TlsFiles)| {
            let mut files = good.clone();
            f(&mut files);
            load_error(&files, dir)
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with(&|f| f.cert = dir.join("nope.pem")),
                "the TLS certificate file DIR/nope.pem does not exist",
            ),
            (
                with(&|f| f.key = dir.join("nope.pem")),
                "the TLS key file DIR/nope.pem does not exist",
            ),
            (
                with(&|f| f.ca = dir.join("nope.pem")),
                "the TLS CA file DIR/nope.pem does not exist",
            ),
            (
                with(&|f| f.ca = dir.to_owned()),
                "the TLS CA file DIR is not a regular file",
            ),
            (
                with(&|f| f.cert = write(dir, "empty.pem", "", 0o644)),
                "no certificate in the TLS certificate file DIR/empty.pem (it needs a PEM block \
                 \"-----BEGIN CERTIFICATE-----\")",
            ),
            (
                // The key file named as the CA file.
                with(&|f| f.ca = f.key.clone()),
                "no certificate in the TLS CA file DIR/a-key.pem (it needs a PEM block \
                 \"-----BEGIN CERTIFICATE-----\")",
            ),
            (
                // The certificate named as the key file.
                with(&|f| f.key = write(dir, "cert-as-key.pem", &plant.pem, 0o600)),
                "no private key in the TLS key file DIR/cert-as-key.pem (it needs a PEM block \
                 \"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \
                 \"-----BEGIN RSA PRIVATE KEY-----\")",
            ),
            (
                with(&|f| f.key = other.key.clone()),
                "the private key in DIR/b-key.pem does not match the certificate in \
                 DIR/a-cert.pem",
            ),
            (
                with(&|f| {
                    f.cert = write(
                        dir,
                        "broken.pem",
                        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                        0o644,
                    )
                }),
                "the TLS certificate file DIR/broken.pem is not valid PEM: base64 decode error: \
                 InvalidCharacter(33)",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_as_ssh_does() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let plant = ca("plant CA");
        let files = host_files(dir, "a", &plant, &["127.0.0.1"], &[&plant]);
        for mode in [0o640, 0o604, 0o620] {
            fs::set_permissions(&files.key, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                load_error(&files, dir),
                format!(
                    "permissions {mode:04o} for the TLS key file DIR/a-key.pem are too open: \
                     group and others must not read or write it, so it is refused (run: chmod \
                     600 DIR/a-key.pem)"
                )
            );
        }
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o400)).unwrap();
        TlsConfig::load(&files).unwrap();
    }

    #[test]
    fn a_certificate_the_ca_did_not_sign_is_refused_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let plant = ca("plant CA");
        let other = ca("other CA");
        let files = host_files(dir, "a", &other, &["127.0.0.1"], &[&plant]);
        assert_eq!(
            load_error(&files, dir),
            "the certificate in DIR/a-cert.pem is refused by the CA in DIR/a-ca.pem: invalid \
             peer certificate: UnknownIssuer"
        );
    }
}
