//! The backoff policy lives in `tidings_core::backoff`, shared with the stage runner.

pub use tidings_core::backoff::RetryPolicy;
