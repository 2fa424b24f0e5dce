//! Messages too large for the configured limit: gRPC's convention (and what clients test for)
//! is RESOURCE_EXHAUSTED, where tonic answers OUT_OF_RANGE. A request too large is refused
//! with a trailers-only response, so its status sits in the headers; a response too large is
//! noticed while its body is encoded, after the headers went out, so its status sits in the
//! trailers. Both places are rewritten here, on both listeners (the outermost layer but one).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};

/// Rewrites tonic's "message too large" OUT_OF_RANGE into RESOURCE_EXHAUSTED, in the headers
/// now and in the trailers when they come.
pub fn refusal_codes(response: http::Response<Body>) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    rewrite(&mut parts.headers);
    http::Response::from_parts(parts, Body::new(Trailers(body)))
}

fn rewrite(headers: &mut HeaderMap) {
    let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or("");
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
    // tonic's message: "Error, encoded message length too large: found N bytes, the limit is: M
    // bytes" (percent-encoded on the wire).
    if status == "11" && (message.contains("length too large") || message.contains("length%20too%20large")) {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
}

/// A response body whose trailers go through [`rewrite`].
struct Trailers(Body);

impl http_body::Body for Trailers {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx).map_ok(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
