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
            ErrorKind::Invalid if self.0.code == "request_timeout" => StatusCode::REQUEST_TIMEOUT,
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

/// Parse a JSON body taken with `Result<Bytes, BytesRejection>`, mapping the extractor's own
/// rejection (over axum's body limit) to `payload_too_large`.
pub fn body_json<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<T, Error> {
    match body {
        Ok(b) => parse_json(&b, limit),
        // the server's body deadline (tidings/src/http_server.rs) fired
        Err(rej) if rej.body_text().contains(BODY_DEADLINE) => Err(Error::invalid(
            "request_timeout",
            "the request body did not arrive within http.request_timeout_ms",
        )),
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Error::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            format!("body is over the limit of {limit} bytes"),
        )),
        Err(rej) => Err(Error::invalid("invalid_request", rej.body_text())),
    }
}

/// The error a request body gives when it has not all arrived by the server's deadline.
pub const BODY_DEADLINE: &str = "request body deadline passed";

/// A query string, or `invalid_query` (422, the JSON error body) when it does not parse.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    q.map(|axum::extract::Query(v)| v)
        .map_err(|rej| Error::invalid("invalid_query", rej.body_text()))
}

/// The HTTP connection a request came on holds one of the server's connection slots; a
/// WebSocket keeps the slot of its connection for as long as it lives.
#[derive(Clone, Debug)]
pub struct ConnSlot(pub std::sync::Arc<tokio::sync::OwnedSemaphorePermit>);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The tenant an API key belongs to (`auth_missing` / `auth_invalid_key` otherwise).
pub async fn tenant_of(
    ctx: &crate::Context,
    headers: &axum::http::HeaderMap,
) -> Result<crate::model::Tenant, Error> {
    let key = bearer(headers).ok_or_else(|| {
        Error::unauthorized(
            "auth_missing",
            "send the tenant API key as `Authorization: Bearer <key>`",
        )
    })?;
    let hash = crate::auth::hash_api_key(key);
    let tenant = ctx
        .hot
        .tenant_by_api_key_hash(ctx.store.as_ref(), &hash)
        .await?
        .ok_or_else(|| Error::unauthorized("auth_invalid_key", "unknown API key"))?;
    let current = crate::auth::secrets_equal(&tenant.api_key_hash, &hash);
    let previous = tenant
        .previous_at(crate::model::now_ms())
        .is_some_and(|p| crate::auth::secrets_equal(&p.api_key_hash, &hash));
    if !current && !previous {
        return Err(Error::unauthorized(
            "auth_invalid_key",
            "this API key was rotated out",
        ));
    }
    if tenant.disabled {
        return Err(tenant_disabled());
    }
    Ok(tenant)
}

/// The error of a disabled tenant's credentials.
pub fn tenant_disabled() -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "tenant_disabled",
        "this tenant is disabled",
    )
}
