//! gRPC unary calls over a bare HTTP/2 connection.
//!
//! tonic's client enforces `grpc-timeout` itself and reports its own CANCELLED when it expires,
//! so it can never show what the server answers to a call whose deadline passed. This client
//! sends the header and nothing more: the status returned is exactly the server's.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tonic::Status;

/// One HTTP/2 connection to the sidecar.
#[derive(Clone)]
pub struct RawConnection {
    addr: SocketAddr,
    send: h2::client::SendRequest<Bytes>,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        RawConnection { addr, send }
    }

    /// Calls `TaskHubSidecarService/<method>` and returns the decoded reply or the server's status.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
        grpc_timeout: Option<&str>,
    ) -> Result<Resp, Status> {
        let mut builder = http::Request::post(format!("http://{}/TaskHubSidecarService/{method}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(timeout) = grpc_timeout {
            builder = builder.header("grpc-timeout", timeout);
        }
        let encoded = request.encode_to_vec();
        let mut body = BytesMut::with_capacity(5 + encoded.len());
        body.extend_from_slice(&[0]);
        body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        body.extend_from_slice(&encoded);

        let mut send = self.send.clone().ready().await.expect("connection ready");
        let (response, mut stream) = send.send_request(builder.body(()).expect("request"), false).expect("send request");
        stream.send_data(body.freeze(), true).expect("send body");
        let (head, mut recv) = response.await.expect("response headers").into_parts();
        assert_eq!(head.status, http::StatusCode::OK, "gRPC answers over HTTP 200");
        // A trailers-only answer carries the status in the headers.
        if let Some(status) = Status::from_header_map(&head.headers) {
            return status_or(status, Bytes::new());
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("response body");
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("trailers").expect("a gRPC answer ends with trailers");
        let status = Status::from_header_map(&trailers).expect("grpc-status in the trailers");
        status_or(status, data.freeze())
    }
}

fn status_or<Resp: prost::Message + Default>(status: Status, mut data: Bytes) -> Result<Resp, Status> {
    if status.code() != tonic::Code::Ok {
        return Err(status);
    }
    assert!(data.len() >= 5, "an OK unary answer holds one message");
    assert_eq!(data.get_u8(), 0, "uncompressed");
    let len = data.get_u32() as usize;
    Ok(Resp::decode(&data[..len]).expect("decode response"))
}
