//! Accepting connections without being worn down by them. When the process runs out of file
//! descriptors, accept fails at once and keeps failing while the pending connection stays
//! queued: every listener's accept loop backs off and says so ([`Backoff`]) instead of
//! spinning. A new connection must begin to speak within a deadline ([`Handshaking`]), so
//! connections that open and stay silent (or stop after the HTTP/2 preface) cannot pile up and
//! hold descriptors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;
use tracing::{info, warn};

/// First and longest pause after a failed accept: short enough to serve again soon after
/// descriptors free up, long enough that a loop of failures costs no CPU worth measuring.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a new connection must send before the deadline to count as speaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// gRPC: the HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame that
    /// must follow it (9). A client that stops after the preface has not completed the
    /// handshake.
    Http2,
    /// The HTTP listener: the shortest request line (`GET / HTTP/1.1\r\n`, 16 bytes), or, from
    /// a client that opens with the HTTP/2 preface, what [`Speaks::Http2`] asks.
    Http,
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP2_HANDSHAKE_BYTES: usize = HTTP2_PREFACE.len() + 9;
const HTTP_REQUEST_LINE_BYTES: usize = 16;

impl Speaks {
    /// Bytes needed, knowing the connection's first bytes (as many as have arrived).
    fn needed(self, first: &[u8]) -> usize {
        match self {
            Speaks::Http2 => HTTP2_HANDSHAKE_BYTES,
            Speaks::Http if HTTP2_PREFACE.starts_with(first) => HTTP2_HANDSHAKE_BYTES,
            Speaks::Http => HTTP_REQUEST_LINE_BYTES,
        }
    }
}

/// The accept loop's memory of failures in a row, for one listener.
#[derive(Debug)]
pub struct Backoff {
    listener: &'static str,
    pause: Duration,
    failures: u64,
}

impl Backoff {
    pub fn new(listener: &'static str) -> Backoff {
        Backoff {
            listener,
            pause: BACKOFF_MIN,
            failures: 0,
        }
    }

    /// The next connection on `listener`, pausing (doubling up to a second) after each failed
    /// accept. Logged on the first failure, then once per longest pause, and on recovery.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        info!(
                            listener = self.listener,
                            failed_accepts = self.failures,
                            "accepting connections again"
                        );
                    }
                    self.failures = 0;
                    self.pause = BACKOFF_MIN;
                    return accepted;
                }
                // The peer gave up before we took the connection: nothing is wrong here.
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    self.failures += 1;
                    if self.failures == 1 || self.pause == BACKOFF_MAX {
                        warn!(
                            listener = self.listener,
                            error = %e,
                            failed_accepts = self.failures,
                            pause_ms = self.pause.as_millis() as u64,
                            "cannot accept connections (out of file descriptors?); backing off"
                        );
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// A connection whose reads fail once its deadline passes before it has sent what its listener
/// expects ([`Speaks`]), which makes the server close it; afterwards it is the stream it wraps.
pub struct Handshaking<S> {
    stream: S,
    speaks: Speaks,
    /// The connection's first bytes, up to the length of the HTTP/2 preface.
    first: Vec<u8>,
    received: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Handshaking<S> {
    pub fn new(stream: S, deadline: Instant, speaks: Speaks) -> Self {
        Handshaking {
            stream,
            speaks,
            first: Vec::new(),
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

impl<S: Connected> Connected for Handshaking<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Handshaking<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            let new = &buf.filled()[before..];
            let room = HTTP2_PREFACE.len().saturating_sub(this.first.len());
            this.first.extend_from_slice(&new[..new.len().min(room)]);
            this.received += new.len();
            if this.received >= this.speaks.needed(&this.first) {
                this.deadline = None;
            } else if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not begin to speak within the handshake deadline",
                )));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Handshaking<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
