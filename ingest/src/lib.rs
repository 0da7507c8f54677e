//! The ingest stage: where sends enter the pipeline.
//!
//! - [`send`]: validation, message ids, idempotency and the durable append to
//!   `requests.<priority>`, shared by HTTP and the Avro topic
//! - [`api`]: the producer and admin HTTP API (`/v1/messages`, `/v1/admin`, `/v1/users`,
//!   `/v1/topics`, `/v1/templates`, `/v1/dlq`, `/v1/webhook`)
//! - [`avro_topic`]: the consumer of `<prefix>.ingest`, for producers that publish Avro

pub mod api;
pub mod avro_topic;
pub mod send;

pub use api::routes;
