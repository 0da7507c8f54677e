//! The JSON error body every HTTP surface answers with.

use crate::error::{Error, ErrorKind};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An [`Error`] on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self.0.kind {
            ErrorKind::Invalid if self.0.code.starts_with("invalid_json") => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.0.code, "message": self.0.message}});
        (self.status(), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body with stable error codes: `invalid_json` for syntax, `invalid_request` for a
/// body of the wrong shape, `payload_too_large` over `limit` bytes.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, Error> {
    if body.len() > limit {
        return Err(Error::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            format!("body is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::invalid("invalid_json", format!("body is not valid JSON: {e}"))
        } else {
            Error::invalid("invalid_request", e.to_string())
        }
    })
}
