//! The bus port: a partitioned, durable log of named topics (Kafka's model).
//!
//! What every backend guarantees:
//! - **Durable appends.** [`Bus::append`] returns only once the records would survive a
//!   `kill -9` of this process (embedded: fsynced; Kafka: acknowledged by the in-sync replicas).
//! - **Order per key.** Records with the same key land in the same partition, in append order.
//! - **Consumer groups, at-least-once.** A [`Consumer`] of a group reads every partition of its
//!   topic from the group's committed offsets. Reading does not commit: after a crash the group
//!   resumes from the last [`Consumer::commit`], so a record whose work was not committed is
//!   read again. Commit an offset only once the work it covers is durable downstream.
//! - **Cancel-safe polling.** A [`Consumer::poll`] dropped before it returns loses nothing, so
//!   stages may `select!` over several consumers.

use crate::error::Result;
use async_trait::async_trait;
use std::time::Duration;

/// A record to append.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: String,
    /// Partition key: same key, same partition, kept in order.
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        OutRecord {
            topic: topic.into(),
            key: key.into(),
            value,
        }
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Append time, unix ms.
    pub timestamp_ms: i64,
}

/// Where a record was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Create `topic` if missing (idempotent).
    async fn ensure_topic(&self, topic: &str) -> Result<()>;

    /// Append records durably; returns their positions, in the same order.
    async fn append(&self, records: Vec<OutRecord>) -> Result<Vec<Position>>;

    /// A consumer of `topic` in consumer group `group`.
    async fn consumer(&self, group: &str, topic: &str) -> Result<Box<dyn Consumer>>;

    /// Records of `topic` not yet committed by `group` (its lag), for the queue-depth gauges.
    async fn lag(&self, group: &str, topic: &str) -> Result<u64>;

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> Result<()>;
}

#[async_trait]
pub trait Consumer: Send {
    /// The topic this consumer reads.
    fn topic(&self) -> &str;

    /// Up to `max` records, waiting at most `wait` for the first one. Records come in order
    /// within a partition. Cancel-safe.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>>;

    /// Commit `(partition, next offset to read)` pairs for the group.
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<()>;

    /// Commit everything up to and including `records`.
    async fn commit_records(&mut self, records: &[Record]) -> Result<()> {
        let offsets = next_offsets(records);
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit(&offsets).await
    }
}

/// The record key of everything about one user (deliveries, events): `tenant/user`, so a
/// user's records stay in one partition, in order.
pub fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    format!("{tenant}/{user}").into_bytes()
}

/// The highest `offset + 1` per partition among `records`.
pub fn next_offsets(records: &[Record]) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for r in records {
        match out.iter_mut().find(|(p, _)| *p == r.partition) {
            Some((_, o)) => *o = (*o).max(r.offset + 1),
            None => out.push((r.partition, r.offset + 1)),
        }
    }
    out
}

/// The partition of `key` among `partitions` (FNV-1a, stable across builds and backends).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % partitions.max(1)
}
