//! TLS for the listeners: certificate and key from PEM files, optional client-certificate
//! verification (mTLS) against a CA bundle, and reloading. The files are read again on SIGHUP
//! and whenever one of them changes (checked every few seconds); a reload that fails keeps the
//! configuration in use and logs why. Every new connection gets the configuration current at
//! its handshake; open connections keep theirs.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{error, info};

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to one of these (mTLS) when set.
    pub client_ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()]
            .into_iter()
            .flatten()
    }
}

/// How often the files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The configurations in use: the gRPC listeners offer only HTTP/2 (gRPC needs it); the HTTP
/// listener offers HTTP/1.1 too, which browsers, curl and most HTTP clients may pick.
#[derive(Clone)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl Configs {
    fn load(files: &Files) -> Result<Configs, String> {
        let grpc = load(files)?;
        let mut http = (*grpc).clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Configs {
            grpc,
            http: Arc::new(http),
        })
    }
}

/// Reads the files into a server configuration that speaks HTTP/2 (gRPC needs it).
pub fn load(files: &Files) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("cannot read TLS key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read client CA bundle {}: {e}", ca.display()))?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(format!("no usable CA certificate in {}", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client CA bundle {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "TLS certificate {} and key {} do not fit: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration in use, replaced on reload; one for every listener, so gRPC and HTTP
/// always present the same certificate and ask for the same client certificates.
#[derive(Clone)]
pub struct Acceptor {
    files: Files,
    current: Arc<RwLock<Configs>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("files", &self.files).finish()
    }
}

impl Acceptor {
    /// Loads the files; fails if they are unusable (the sidecar does not start without them).
    pub fn new(files: Files) -> Result<Acceptor, String> {
        let config = Configs::load(&files)?;
        Ok(Acceptor {
            files,
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Reads the files again; keeps the old configuration if they are not usable.
    pub fn reload(&self, why: &str) {
        match Configs::load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap() = config;
                info!(cert = %self.files.cert.display(), why, "TLS configuration reloaded");
            }
            Err(e) => error!(why, "TLS reload failed, keeping the previous configuration: {e}"),
        }
    }

    /// Reloads on SIGHUP and when a file's modification time or size changes, until dropped.
    pub fn watch(&self) -> crate::task::AbortOnDrop {
        let this = self.clone();
        crate::task::AbortOnDrop(tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = this.stamps();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                #[cfg(unix)]
                let sighup = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let sighup = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = sighup => {
                        seen = this.stamps();
                        this.reload("SIGHUP");
                    }
                    _ = tick.tick() => {
                        let now = this.stamps();
                        if now != seen {
                            seen = now;
                            this.reload("files changed");
                        }
                    }
                }
            }
        }))
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files
            .paths()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }

    /// The TLS handshake on one accepted gRPC connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let config = self.current.read().unwrap().grpc.clone();
        handshake(config, tcp).await
    }

    /// The TLS handshake on one accepted HTTP connection (HTTP/1.1 or HTTP/2).
    pub async fn accept_http(&self, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let config = self.current.read().unwrap().http.clone();
        handshake(config, tcp).await
    }
}

async fn handshake(config: Arc<ServerConfig>, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// An accepted connection, in the clear or over TLS: the one type the gRPC server is given.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(s) => s.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}
