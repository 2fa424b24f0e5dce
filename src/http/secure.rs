//! The HTTP listener over TLS: the gRPC listeners' [`tls::Acceptor`] (same files, same client
//! CA, same reload), offering HTTP/1.1 beside HTTP/2. Handshakes run in tasks of their own so
//! a slow or silent client never holds up the others; failed handshakes are only logged. Like
//! every listener, accepting backs off when it fails and a connection must finish its handshake
//! and begin a request within the handshake deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::accept::{Backoff, Handshaking, Speaks};
use crate::task::AbortOnDrop;
use crate::tls;

/// Handshakes finished but not yet taken by the server.
const BACKLOG: usize = 64;

/// What `axum::serve` accepts connections from: TLS streams whose handshake succeeded.
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(Handshaking<TlsStream<TcpStream>>, SocketAddr)>,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: tls::Acceptor, handshake: Duration) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let accepting = AbortOnDrop(tokio::spawn(async move {
            let mut backoff = Backoff::new("http");
            loop {
                let (tcp, peer) = backoff.accept(&listener).await;
                let _ = tcp.set_nodelay(true);
                let deadline = Instant::now() + handshake;
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout_at(deadline, acceptor.accept_http(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Handshaking::new(stream, deadline, Speaks::Http), peer)).await;
                        }
                        Ok(Err(e)) => debug!(error = %e, %peer, "HTTP TLS handshake failed"),
                        Err(_) => debug!(%peer, "HTTP TLS handshake not finished within the handshake deadline"),
                    }
                });
            }
        }));
        Ok(TlsListener {
            addr,
            ready,
            _accepting: accepting,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Handshaking<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task ends only with this listener; never reached while serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
