//! API errors: a status and a JSON body `{"error": "..."}` that says what was wrong without
//! leaking internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use suitcase_store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    /// 500, with the detail logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error (see the server log)".into(),
        }
    }
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::InvalidPublishId(_) | StoreError::InvalidFileName(_) | StoreError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            StoreError::SequenceNotIncreasing { .. } | StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::NoSpace | StoreError::ReadOnly => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => return ApiError::internal(e),
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<suitcase_suit::Error> for ApiError {
    fn from(e: suitcase_suit::Error) -> Self {
        ApiError::bad_request(format!("manifest: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}
