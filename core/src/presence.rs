//! The presence and fan-out port: which users have live connections, and pushing a frame to
//! every connection of a user, whichever node holds it.
//!
//! Guarantees: a push reaches every connection registered before it started, at most once
//! each. An audience push reaches each connection of the audience's members once, found
//! through an index this node keeps (audience to connections) as users connect and their
//! memberships change. Pushes are best-effort by design: the inbox is the durable copy, and a client that
//! misses a push (slow, reconnecting, another node down) gets it with `resume`. A connection
//! whose queue is full is closed (its token cancelled) rather than blocking the publisher.

use crate::error::Result;
use crate::model::{Audience, Membership};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// WebSocket close code: the connection fell behind (queue full in frames or bytes);
/// reconnect and `resume`. A client that stops reading (a write past its deadline) is
/// dropped without a close frame: it would not read one.
pub const CLOSE_SLOW: u16 = 1008;
/// WebSocket close code: the token expired; reconnect with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// WebSocket close code: the user opened more connections than allowed; this, the oldest,
/// was closed for the newest.
pub const CLOSE_REPLACED: u16 = 4002;
/// WebSocket close code: the tenant was disabled; do not reconnect.
pub const CLOSE_TENANT_DISABLED: u16 = 4003;

/// What is pushed to a connection: one message, already encoded as a JSON text frame (UTF-8),
/// shared without copying by every connection it goes to.
#[derive(Debug, Clone)]
pub struct Push {
    pub message_id: String,
    pub seq: u64,
    pub frame: bytes::Bytes,
}

/// The sending half a connection registers. The queue holds pointers, not pushes: tokio
/// allocates a queue's first block of 32 slots up front, so the slot size is paid by every idle
/// connection.
#[derive(Debug, Clone)]
pub struct ConnSink {
    pub tx: tokio::sync::mpsc::Sender<Arc<Push>>,
    /// Cancelled when the connection must close (queue full, replaced); `shared.reason`
    /// says why.
    pub close: CancellationToken,
    pub shared: Arc<ConnShared>,
}

/// What a connection and its publishers share.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Bytes of frames queued and not yet written (the connection subtracts what it takes).
    pub queued_bytes: AtomicUsize,
    /// The close code the connection was told to close with (0: not told).
    pub reason: AtomicU16,
    /// The tag of the secret that verified the connection's token ([`crate::auth::secret_tag`]).
    pub credential: std::sync::atomic::AtomicU64,
}

impl ConnSink {
    /// The sink of a connection whose token was verified by the secret tagged `credential`.
    pub fn new(tx: tokio::sync::mpsc::Sender<Arc<Push>>, credential: u64) -> ConnSink {
        ConnSink {
            tx,
            close: CancellationToken::new(),
            shared: Arc::new(ConnShared {
                credential: credential.into(),
                ..Default::default()
            }),
        }
    }

    /// Tell the connection to close with `code` (the first reason given wins).
    pub fn close_with(&self, code: u16) {
        let _ = self
            .shared
            .reason
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.close.cancel();
    }

    /// Queue `push` unless that puts the connection over `max_bytes` queued or its queue is
    /// full; then tell it to close ([`CLOSE_SLOW`]) and answer false. Never blocks.
    pub fn offer(&self, push: Arc<Push>, max_bytes: usize) -> Offer {
        let len = push.frame.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close_with(CLOSE_SLOW);
            return Offer::Slow;
        }
        match self.tx.try_send(push) {
            Ok(()) => Offer::Queued,
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => {
                        self.close_with(CLOSE_SLOW);
                        Offer::Slow
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => Offer::Gone,
                }
            }
        }
    }

    /// The connection took `push` off its queue.
    pub fn taken(shared: &ConnShared, push: &Push) {
        shared
            .queued_bytes
            .fetch_sub(push.frame.len(), Ordering::Relaxed);
    }
}

/// What became of an offered push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The connection is behind and was told to close.
    Slow,
    /// The connection is gone.
    Gone,
}

/// Identity of one registered connection.
pub type ConnId = u64;

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Register a live connection of `(tenant, user)`. Past the per-user limit the user's
    /// oldest open connection is told to close ([`CLOSE_REPLACED`]).
    fn attach(&self, tenant: &str, user: &str, sink: ConnSink) -> ConnId;

    /// Forget a connection.
    fn detach(&self, tenant: &str, user: &str, id: ConnId);

    /// Push to every connection of the user; returns how many took it.
    async fn push(&self, tenant: &str, user: &str, push: Push) -> Result<usize>;

    /// Set the audiences this node pushes the user's connections for, each with the first
    /// sequence the user sees in it (replacing what was set before); ignored for a user with
    /// no connection on this node.
    fn set_memberships(&self, tenant: &str, user: &str, memberships: &[Membership]);

    /// How many membership changes this node has applied for the user's connections (0 for
    /// a user with none here): read it before reading the user's memberships from the store.
    fn membership_version(&self, tenant: &str, user: &str) -> u64;

    /// [`Presence::set_memberships`] with what the store answered for a read that started at
    /// `version`; skipped if a change was applied since (it is at least as fresh).
    fn load_memberships(&self, tenant: &str, user: &str, memberships: &[Membership], version: u64);

    /// Push one shared frame to every connection on this node of a user who is a member of one
    /// of `audiences` from `seq` or earlier, each connection once; returns how many took it.
    fn push_audience(&self, tenant: &str, audiences: &[Audience], seq: u64, push: Push) -> usize;

    /// Tell the connections of `tenant` on this node to close with `code`, except those
    /// verified by a secret tagged in `keep` (a rotation keeps the valid ones; disabling keeps
    /// none); returns how many were told.
    fn close_tenant(&self, tenant: &str, keep: &[u64], code: u16) -> usize;

    /// Live connections on this node.
    fn local_connections(&self) -> usize;

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> Result<()>;
}
