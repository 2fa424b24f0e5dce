//! The HTTP listener over TLS: the gRPC listeners' [`tls::Acceptor`] (same files, same client
//! CA, same reload), offering HTTP/1.1 beside HTTP/2. Handshakes run in tasks of their own so
//! a slow or silent client never holds up the others; failed handshakes are only logged.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::dispatch::AbortOnDrop;
use crate::tls;

/// Handshakes finished but not yet taken by the server.
const BACKLOG: usize = 64;

/// What `axum::serve` accepts connections from: TLS streams whose handshake succeeded.
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: tls::Acceptor) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let accepting = AbortOnDrop(tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, mostly: give closing connections a moment.
                        warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor.accept_http(tcp).await {
                        Ok(stream) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(e) => debug!(error = %e, %peer, "HTTP TLS handshake failed"),
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
    type Io = TlsStream<TcpStream>;
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
