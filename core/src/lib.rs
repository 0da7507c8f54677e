//! tidings-core: what every stage and backend shares.
//!
//! - [`model`]: domain types (tenants, requests, deliveries, inbox rows, templates)
//! - [`config`]: the typed configuration and its `TIDINGS_*` overrides
//! - [`error`]: the classified error type; [`http`] turns it into JSON error bodies
//! - [`bus`], [`store`], [`presence`]: the three ports, each a documented trait
//! - [`conformance`]: the test suites every backend of a port must pass
//! - [`template`]: minijinja rendering; [`auth`]: API keys and user JWTs
//! - [`metrics_names`]: every metric name, declared once

pub mod auth;
pub mod bus;
pub mod config;
pub mod conformance;
pub mod error;
pub mod http;
pub mod metrics_names;
pub mod model;
pub mod presence;
pub mod store;
pub mod template;

pub use error::{Error, ErrorKind, Result};
