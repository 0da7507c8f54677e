//! The bus port: a partitioned, durable log of named topics (Kafka's model).
//!
//! What every backend guarantees (the conformance suite, `crate::conformance`, checks each):
//! - **Durable appends.** [`Bus::append`] returns only once the records would survive a
//!   `kill -9` of this process (embedded: fsynced; Kafka: acknowledged by the in-sync replicas).
//! - **Order per key.** Records with the same key land in the same partition, in append order.
//!   An append's place in that order is fixed when its future is first polled, so a caller may
//!   start an append, go on, and await it later (the router starts its next batch while the
//!   last one's deliveries are being acknowledged): what an append first polled later appends
//!   never lands ahead of it in a partition.
//! - **Consumer groups split partitions.** The live consumers of one group on one topic share
//!   its partitions: each partition is held by one of them at a time. When a consumer joins or
//!   leaves, partitions move; a consumer learns what it gained and lost from
//!   [`Consumer::take_rebalance`] after a poll, and from then on reads only what it holds.
//! - **Stored is not committed.** [`Consumer::store`] marks the work before an offset as
//!   durable downstream; [`Consumer::commit`] makes the stored offsets the group's. Backends
//!   also commit what was stored before they give a partition up, and a consumer that no longer
//!   holds a partition can neither store nor commit it (its late work never moves the new
//!   holder's position). After a crash the group resumes from the last commit, so a record
//!   whose work was not committed is read again: at-least-once.
//! - **Pause without leaving.** A paused partition yields nothing while its consumer keeps
//!   polling (Kafka evicts a member that stops polling); resuming continues after the last
//!   record polled.
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

/// How a topic should be: `tidings migrate` and start-up create it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// Copies of each partition; 0 takes the cluster's default (embedded: ignored).
    pub replication: u16,
    /// How long records are kept, ms; `None` keeps the backend's default.
    pub retention_ms: Option<u64>,
}

/// What [`Bus::ensure_topic`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicState {
    /// Whether this call created it.
    pub created: bool,
    /// Partitions it has now (an existing topic keeps its own count).
    pub partitions: u32,
}

/// Where a group starts reading a partition it never committed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record kept: work queues, where every record must be handled.
    Earliest,
    /// Records appended after the consumer got the partition: live feeds a new reader has no
    /// use for the past of (a new delivery node and the audience pushes).
    Latest,
}

/// Partitions a consumer gained and lost, in the order the backend reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebalance {
    pub revoked: Vec<u32>,
    pub assigned: Vec<u32>,
}

impl Rebalance {
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.assigned.is_empty()
    }

    /// Fold a later change into this one.
    pub fn merge(&mut self, later: Rebalance) {
        for p in later.revoked {
            self.assigned.retain(|a| *a != p);
            if !self.revoked.contains(&p) {
                self.revoked.push(p);
            }
        }
        for p in later.assigned {
            if !self.assigned.contains(&p) {
                self.assigned.push(p);
            }
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Create the topic if missing (idempotent); an existing topic is left as it is and its
    /// partition count returned.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicState>;

    /// Append records durably; returns their positions, in the same order. The records take
    /// their place in their partitions' order on the first poll (see the module docs).
    async fn append(&self, records: Vec<OutRecord>) -> Result<Vec<Position>>;

    /// A new member of consumer group `group` reading `topic`; a partition the group never
    /// committed on is read from `start`.
    async fn consumer_from(
        &self,
        group: &str,
        topic: &str,
        start: Start,
    ) -> Result<Box<dyn Consumer>>;

    /// A new member of consumer group `group` reading `topic`, from the oldest record where the
    /// group never committed.
    async fn consumer(&self, group: &str, topic: &str) -> Result<Box<dyn Consumer>> {
        self.consumer_from(group, topic, Start::Earliest).await
    }

    /// Records of `topic` not yet committed by `group` (its lag), for the lag gauges.
    async fn lag(&self, group: &str, topic: &str) -> Result<u64>;

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> Result<()>;
}

#[async_trait]
pub trait Consumer: Send {
    /// The topic this consumer reads.
    fn topic(&self) -> &str;

    /// Up to `max` records of the partitions it holds and has not paused, waiting at most
    /// `wait` for the first one. Records come in order within a partition. Cancel-safe.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>>;

    /// The partitions this consumer holds now.
    fn assignment(&self) -> Vec<u32>;

    /// What was gained and lost since the last call (`None`: nothing). Work in flight on a
    /// revoked partition must be finished or abandoned: its offsets can no longer be stored.
    fn take_rebalance(&mut self) -> Option<Rebalance>;

    /// Stop reading these partitions (held ones; others are ignored) while polling goes on.
    fn pause(&mut self, partitions: &[u32]) -> Result<()>;

    /// Read these partitions again, from after the last record polled.
    fn resume(&mut self, partitions: &[u32]) -> Result<()>;

    /// Mark `(partition, next offset to read)` pairs as done; offsets of partitions this
    /// consumer does not hold are dropped. Nothing is durable until [`Consumer::commit`].
    fn store(&mut self, offsets: &[(u32, u64)]) -> Result<()>;

    /// Make the stored offsets the group's, durably.
    async fn commit(&mut self) -> Result<()>;

    /// Store and commit everything up to and including `records`.
    async fn commit_records(&mut self, records: &[Record]) -> Result<()> {
        let offsets = next_offsets(records);
        if offsets.is_empty() {
            return Ok(());
        }
        self.store(&offsets)?;
        self.commit().await
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
