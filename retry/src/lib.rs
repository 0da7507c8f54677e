//! The retry stage.
//!
//! - [`policy`]: exponential backoff with full jitter (the one policy, from `tidings_core::backoff`)
//! - [`hold`]: the worker that holds deliveries from `retry.<tier>` until due and re-emits them
//!   to `deliveries.<channel>`
//! - [`fail`]: what a delivery stage calls when an attempt fails: schedule the next attempt or
//!   write the dead letter

pub mod fail;
pub mod hold;
pub mod policy;

pub use policy::RetryPolicy;
