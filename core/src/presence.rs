//! The presence and fan-out port: which users have live connections, and pushing a frame to
//! every connection of a user, whichever node holds it.
//!
//! Guarantees: a push reaches every connection registered before it started, at most once
//! each. Pushes are best-effort by design: the inbox is the durable copy, and a client that
//! misses a push (slow, reconnecting, another node down) gets it with `resume`. A connection
//! whose queue is full is closed (its token cancelled) rather than blocking the publisher.

use crate::error::Result;
use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What is pushed to a connection: one message, already encoded as a JSON text frame.
#[derive(Debug, Clone)]
pub struct Push {
    pub message_id: String,
    pub seq: u64,
    pub frame: Arc<str>,
}

/// The sending half a connection registers. The queue holds pointers, not pushes: tokio
/// allocates a queue's first block of 32 slots up front, so the slot size is paid by every idle
/// connection.
#[derive(Debug, Clone)]
pub struct ConnSink {
    pub tx: tokio::sync::mpsc::Sender<Arc<Push>>,
    /// Cancelled when the connection must close (queue full, shutdown).
    pub close: CancellationToken,
}

/// Identity of one registered connection.
pub type ConnId = u64;

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Register a live connection of `(tenant, user)`.
    fn attach(&self, tenant: &str, user: &str, sink: ConnSink) -> ConnId;

    /// Forget a connection.
    fn detach(&self, tenant: &str, user: &str, id: ConnId);

    /// Push to every connection of the user; returns how many took it.
    async fn push(&self, tenant: &str, user: &str, push: Push) -> Result<usize>;

    /// Live connections on this node.
    fn local_connections(&self) -> usize;

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> Result<()>;
}
