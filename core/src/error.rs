//! The one error type of the library crates, classified by whose fault it is and whether a
//! retry can help. HTTP handlers turn it into `{"error": {"code", "message"}}`.

use std::fmt;

/// Whose fault an error is, which fixes its HTTP status and whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something wrong (400/422). Never retried.
    Invalid,
    /// Missing or bad credentials (401).
    Unauthorized,
    /// Valid credentials, not allowed (403).
    Forbidden,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request conflicts with stored state (409).
    Conflict,
    /// A body over the configured limit (413).
    TooLarge,
    /// A backend is unreachable or overloaded (503). Retried with backoff.
    Unavailable,
    /// A bug or corrupted state on our side (500).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    /// Stable machine-readable code, e.g. `template_not_found`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "backend_unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", message)
    }

    /// Whether trying again later can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
