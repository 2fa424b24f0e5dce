//! Error answers: a status code and a JSON body `{"Message": "..."}`, the shape of the
//! Durable Functions API's errors. The one mapping from gRPC statuses to HTTP codes is here.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use crate::auth::Denied;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::AlreadyExists => StatusCode::CONFLICT,
            // Purging a live instance, rewinding one that did not fail.
            Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, s.message())
    }
}

/// Keys that do not allow a call: 401 without a valid key, 403 with one of too low a role.
impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        let status = match d {
            Denied::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, d.to_string())
    }
}

/// A store failure: the same codes and plain messages the gRPC handlers answer with (the
/// cause is logged there), as HTTP.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(crate::grpc::status::store(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "Message": self.message }).to_string();
        (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// Answers any path no route matches.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
