//! The HTTP listener in the clear: accepts with back-off when accepting fails, and closes
//! connections that do not begin a request within the handshake deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::accept::{Backoff, Handshaking, Speaks};

pub struct PlainListener {
    listener: TcpListener,
    backoff: Backoff,
    handshake: Duration,
}

impl PlainListener {
    pub fn new(listener: TcpListener, handshake: Duration) -> PlainListener {
        PlainListener {
            listener,
            backoff: Backoff::new("http"),
            handshake,
        }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Handshaking<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, peer) = self.backoff.accept(&self.listener).await;
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.handshake;
        (Handshaking::new(tcp, deadline, Speaks::Http), peer)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
