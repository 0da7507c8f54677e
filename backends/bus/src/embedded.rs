//! The embedded bus: Kafka's model (topics, partitions, keyed appends, consumer groups with
//! committed offsets) on a redb file.
//!
//! Records live in one table keyed by `(topic, partition, offset)`; committed offsets in another
//! keyed by `(group, topic, partition)`. The members of a group on a topic split its partitions
//! round-robin in order of joining; a partition moves cooperatively, as in Kafka: its holder
//! commits what it stored and lets go on its next poll, and only then may the new holder take
//! it. Appends go through the engine's group commit, so an
//! append returns after its fsync. A background task drops records every group has committed
//! (and, on topics no group reads, records older than the retention).
//!
//! Why redb: it is a pure-Rust, ACID B-tree with MVCC readers that never block the writer,
//! which is what a log with concurrent consumers needs; see `docs/architecture.md` for the
//! measurement behind the choice.

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_core::bus::{
    partition_for, Bus, Consumer, OutRecord, Position, Rebalance, Record, Start, TopicSpec,
    TopicState,
};
use tidings_core::model::now_ms;
use tidings_core::{Error, Result};
use tidings_embedded::{storage_err, Engine};

const LOG: TableDefinition<'_, (&str, u32, u64), &[u8]> = TableDefinition::new("log");
const OFFSETS: TableDefinition<'_, (&str, &str, u32), u64> = TableDefinition::new("offsets");
const TOPICS: TableDefinition<'_, &str, u32> = TableDefinition::new("topics");

struct Inner {
    engine: Engine,
    /// Partitions per topic.
    topics: Mutex<HashMap<String, u32>>,
    /// Next offset per (topic, partition).
    heads: Mutex<HashMap<(String, u32), u64>>,
    /// Per topic, bumped after every commit that appended records to it: a waiting consumer
    /// wakes for its own topic only, not for every append of the bus.
    appended: Mutex<HashMap<String, Arc<tokio::sync::watch::Sender<u64>>>>,
    /// Members and partition holders per (group, topic).
    groups: Mutex<HashMap<(String, String), Members>>,
    /// Bumped whenever a member joins, leaves or lets a partition go.
    membership: tokio::sync::watch::Sender<u64>,
    next_member: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// The append signal of `topic`.
    fn appended(&self, topic: &str) -> Arc<tokio::sync::watch::Sender<u64>> {
        let mut m = self.appended.lock().expect("appended lock");
        if let Some(tx) = m.get(topic) {
            return tx.clone();
        }
        let tx = Arc::new(tokio::sync::watch::channel(0).0);
        m.insert(topic.to_string(), tx.clone());
        tx
    }
}

/// The live members of one group on one topic, and who holds which partition.
#[derive(Default)]
struct Members {
    /// Member ids in order of joining.
    ids: Vec<u64>,
    holder: HashMap<u32, u64>,
}

impl Members {
    /// The partitions `member` should hold: round-robin over the members in joining order.
    fn target(&self, member: u64, partitions: u32) -> BTreeSet<u32> {
        let Some(i) = self.ids.iter().position(|m| *m == member) else {
            return BTreeSet::new();
        };
        let n = self.ids.len() as u32;
        (0..partitions).filter(|p| p % n == i as u32).collect()
    }
}

/// The embedded, durable, single-process bus.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

fn encode(ts: i64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + key.len() + value.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

fn decode(topic: &str, partition: u32, offset: u64, raw: &[u8]) -> Result<Record> {
    if raw.len() < 12 {
        return Err(Error::internal("corrupt bus record"));
    }
    let ts = i64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
    let klen = u32::from_be_bytes(raw[8..12].try_into().unwrap_or_default()) as usize;
    if raw.len() < 12 + klen {
        return Err(Error::internal("corrupt bus record"));
    }
    Ok(Record {
        topic: topic.to_string(),
        partition,
        offset,
        key: raw[12..12 + klen].to_vec(),
        value: raw[12 + klen..].to_vec(),
        timestamp_ms: ts,
    })
}

impl EmbeddedBus {
    /// Open (or create) the bus file; starts the retention task if a tokio runtime is running.
    pub fn open(path: &Path, retention: Duration) -> Result<EmbeddedBus> {
        let engine = Engine::open(path, "bus", |txn| {
            txn.open_table(LOG).map_err(storage_err)?;
            txn.open_table(OFFSETS).map_err(storage_err)?;
            txn.open_table(TOPICS).map_err(storage_err)?;
            Ok(())
        })?;
        let mut topics = HashMap::new();
        let mut heads = HashMap::new();
        {
            let r = engine.read()?;
            let t = r.open_table(TOPICS).map_err(storage_err)?;
            let log = r.open_table(LOG).map_err(storage_err)?;
            for row in t.iter().map_err(storage_err)? {
                let (name, parts) = row.map_err(storage_err)?;
                let (name, parts) = (name.value().to_string(), parts.value());
                for p in 0..parts {
                    let last = log
                        .range((name.as_str(), p, 0)..=(name.as_str(), p, u64::MAX))
                        .map_err(storage_err)?
                        .next_back()
                        .transpose()
                        .map_err(storage_err)?
                        .map(|(k, _)| k.value().2 + 1);
                    // a topic whose records were all dropped by retention continues after the
                    // highest committed offset of any group
                    let committed = committed_max(&r, &name, p)?;
                    heads.insert((name.clone(), p), last.unwrap_or(0).max(committed));
                }
                topics.insert(name, parts);
            }
        }
        let (membership, _) = tokio::sync::watch::channel(0);
        let bus = EmbeddedBus {
            inner: Arc::new(Inner {
                engine,
                topics: Mutex::new(topics),
                heads: Mutex::new(heads),
                appended: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                membership,
                next_member: std::sync::atomic::AtomicU64::new(1),
            }),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&bus.inner);
            handle.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    let bus = EmbeddedBus { inner };
                    if let Err(e) = bus.trim(retention).await {
                        tracing::warn!(error = %e, "bus retention pass failed");
                    }
                }
            });
        }
        Ok(bus)
    }

    /// A new member of `group` on `topic`.
    fn member(&self, group: &str, topic: &str, start: Start) -> Result<EmbeddedConsumer> {
        let partitions = self.partitions(topic)?;
        let id = self
            .inner
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .groups
            .lock()
            .expect("groups lock")
            .entry((group.to_string(), topic.to_string()))
            .or_default()
            .ids
            .push(id);
        self.inner.membership.send_modify(|v| *v += 1);
        Ok(EmbeddedConsumer {
            bus: self.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
            id,
            positions: BTreeMap::new(),
            paused: BTreeSet::new(),
            stored: BTreeMap::new(),
            committed: BTreeMap::new(),
            changes: None,
            next_partition: 0,
            start,
        })
    }

    fn partitions(&self, topic: &str) -> Result<u32> {
        self.inner
            .topics
            .lock()
            .expect("topics lock")
            .get(topic)
            .copied()
            .ok_or_else(|| {
                Error::invalid("topic_not_found", format!("topic `{topic}` does not exist"))
            })
    }

    /// Drop records below every group's committed offset, and records older than `retention`
    /// on topics no group has committed on.
    pub async fn trim(&self, retention: Duration) -> Result<u64> {
        let topics: Vec<(String, u32)> = self
            .inner
            .topics
            .lock()
            .expect("topics lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let cutoff = now_ms() - retention.as_millis() as i64;
        let mut dropped = 0;
        for (topic, parts) in topics {
            for p in 0..parts {
                let limit = {
                    let r = self.inner.engine.read()?;
                    committed_min(&r, &topic, p)?
                };
                let topic = topic.clone();
                dropped += self
                    .inner
                    .engine
                    .write(move |txn| {
                        let mut log = txn.open_table(LOG).map_err(storage_err)?;
                        let mut doomed = Vec::new();
                        for row in log
                            .range((topic.as_str(), p, 0)..=(topic.as_str(), p, u64::MAX))
                            .map_err(storage_err)?
                        {
                            let (k, v) = row.map_err(storage_err)?;
                            let off = k.value().2;
                            let old = match limit {
                                Some(min) => off < min,
                                None => {
                                    let raw = v.value();
                                    raw.len() >= 8
                                        && i64::from_be_bytes(
                                            raw[..8].try_into().unwrap_or_default(),
                                        ) < cutoff
                                }
                            };
                            if !old || doomed.len() >= 50_000 {
                                break;
                            }
                            doomed.push(off);
                        }
                        for off in &doomed {
                            log.remove((topic.as_str(), p, *off)).map_err(storage_err)?;
                        }
                        Ok(doomed.len() as u64)
                    })
                    .await?;
            }
        }
        Ok(dropped)
    }
}

/// Lowest committed offset of `(topic, partition)` over all groups; `None` when no group
/// committed there.
fn committed_min(r: &redb::ReadTransaction, topic: &str, p: u32) -> Result<Option<u64>> {
    Ok(committed_all(r, topic, p)?.into_iter().min())
}

fn committed_max(r: &redb::ReadTransaction, topic: &str, p: u32) -> Result<u64> {
    Ok(committed_all(r, topic, p)?.into_iter().max().unwrap_or(0))
}

fn committed_all(r: &redb::ReadTransaction, topic: &str, p: u32) -> Result<Vec<u64>> {
    let t = r.open_table(OFFSETS).map_err(storage_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(storage_err)? {
        let (k, v) = row.map_err(storage_err)?;
        let (_, t2, p2) = k.value();
        if t2 == topic && p2 == p {
            out.push(v.value());
        }
    }
    Ok(out)
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicState> {
        if let Some(p) = self
            .inner
            .topics
            .lock()
            .expect("topics lock")
            .get(&spec.name)
        {
            return Ok(TopicState {
                created: false,
                partitions: *p,
            });
        }
        let parts = spec.partitions.max(1);
        let name = spec.name.clone();
        let inner = self.inner.clone();
        self.inner
            .engine
            .write(move |txn| {
                let mut t = txn.open_table(TOPICS).map_err(storage_err)?;
                let existing = t
                    .get(name.as_str())
                    .map_err(storage_err)?
                    .map(|v| v.value());
                let state = match existing {
                    Some(p) => TopicState {
                        created: false,
                        partitions: p,
                    },
                    None => {
                        t.insert(name.as_str(), parts).map_err(storage_err)?;
                        TopicState {
                            created: true,
                            partitions: parts,
                        }
                    }
                };
                let mut heads = inner.heads.lock().expect("heads lock");
                for p in 0..state.partitions {
                    heads.entry((name.clone(), p)).or_insert(0);
                }
                inner
                    .topics
                    .lock()
                    .expect("topics lock")
                    .insert(name, state.partitions);
                Ok(state)
            })
            .await
    }

    async fn append(&self, records: Vec<OutRecord>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut parts = Vec::with_capacity(records.len());
        for r in &records {
            parts.push(partition_for(&r.key, self.partitions(&r.topic)?));
        }
        // the append signals of the topics written, to wake their consumers after the commit
        let mut topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let signals: Vec<_> = topics.iter().map(|t| self.inner.appended(t)).collect();
        let inner = self.inner.clone();
        let positions = self
            .inner
            .engine
            .write(move |txn| {
                let mut log = txn.open_table(LOG).map_err(storage_err)?;
                let mut heads = inner.heads.lock().expect("heads lock");
                let ts = now_ms();
                let mut out = Vec::with_capacity(records.len());
                for (r, p) in records.iter().zip(parts) {
                    let head = heads.entry((r.topic.clone(), p)).or_insert(0);
                    let offset = *head;
                    log.insert(
                        (r.topic.as_str(), p, offset),
                        encode(ts, &r.key, &r.value).as_slice(),
                    )
                    .map_err(storage_err)?;
                    *head += 1;
                    out.push(Position {
                        partition: p,
                        offset,
                    });
                }
                Ok(out)
            })
            .await?;
        for s in signals {
            s.send_modify(|v| *v += 1);
        }
        Ok(positions)
    }

    async fn consumer_from(
        &self,
        group: &str,
        topic: &str,
        start: Start,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.member(group, topic, start)?))
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<u64> {
        let parts = self.partitions(topic)?;
        let r = self.inner.engine.read()?;
        let t = r.open_table(OFFSETS).map_err(storage_err)?;
        let heads = self.inner.heads.lock().expect("heads lock").clone();
        let mut lag = 0;
        for p in 0..parts {
            let committed = t
                .get((group, topic, p))
                .map_err(storage_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            let head = heads.get(&(topic.to_string(), p)).copied().unwrap_or(0);
            lag += head.saturating_sub(committed);
        }
        Ok(lag)
    }

    async fn ready(&self) -> Result<()> {
        self.inner.engine.ready()
    }
}

struct EmbeddedConsumer {
    bus: EmbeddedBus,
    group: String,
    topic: String,
    partitions: u32,
    /// This member's id in its group.
    id: u64,
    /// The partitions held, with the next offset to read in each.
    positions: BTreeMap<u32, u64>,
    paused: BTreeSet<u32>,
    /// Offsets marked done, and the part of them already committed.
    stored: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    /// Changes of the assignment not yet taken.
    changes: Option<Rebalance>,
    /// Where the next poll starts, so no partition starves.
    next_partition: usize,
    /// Where a partition the group never committed on is read from.
    start: Start,
}

impl EmbeddedConsumer {
    fn key(&self) -> (String, String) {
        (self.group.clone(), self.topic.clone())
    }

    /// Follow the group's membership: give up what another member should hold (committing
    /// what was stored for it first), and take what is ours and free.
    async fn sync(&mut self) -> Result<()> {
        let target = {
            let groups = self.bus.inner.groups.lock().expect("groups lock");
            groups
                .get(&self.key())
                .map(|m| m.target(self.id, self.partitions))
                .unwrap_or_default()
        };
        let revoked: Vec<u32> = self
            .positions
            .keys()
            .filter(|p| !target.contains(p))
            .copied()
            .collect();
        if !revoked.is_empty() {
            self.commit_partitions(&revoked).await?;
            let mut groups = self.bus.inner.groups.lock().expect("groups lock");
            if let Some(m) = groups.get_mut(&self.key()) {
                for p in &revoked {
                    if m.holder.get(p) == Some(&self.id) {
                        m.holder.remove(p);
                    }
                }
            }
            for p in &revoked {
                self.positions.remove(p);
                self.paused.remove(p);
                self.stored.remove(p);
                self.committed.remove(p);
            }
            self.bus.inner.membership.send_modify(|v| *v += 1);
        }
        {
            // a claim a failed sync left behind (holder set, never read) that is no longer
            // ours to take: let go, or its new holder would wait for it forever
            let mut groups = self.bus.inner.groups.lock().expect("groups lock");
            let mut released = false;
            if let Some(m) = groups.get_mut(&self.key()) {
                let positions = &self.positions;
                m.holder.retain(|p, id| {
                    let stale = *id == self.id && !target.contains(p) && !positions.contains_key(p);
                    released |= stale;
                    !stale
                });
            }
            drop(groups);
            if released {
                self.bus.inner.membership.send_modify(|v| *v += 1);
            }
        }
        let wanted: Vec<u32> = target
            .iter()
            .filter(|p| !self.positions.contains_key(p))
            .copied()
            .collect();
        let mut assigned = Vec::new();
        if !wanted.is_empty() {
            let mut groups = self.bus.inner.groups.lock().expect("groups lock");
            if let Some(m) = groups.get_mut(&self.key()) {
                for p in wanted {
                    // ours already: claimed by a sync that failed before it read the offset
                    let ours = match m.holder.entry(p) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(self.id);
                            true
                        }
                        std::collections::hash_map::Entry::Occupied(e) => *e.get() == self.id,
                    };
                    if ours {
                        assigned.push(p);
                    }
                }
            }
        }
        if !assigned.is_empty() {
            // the previous holder committed before letting go: start from the group's offset
            let r = self.bus.inner.engine.read()?;
            let t = r.open_table(OFFSETS).map_err(storage_err)?;
            let heads = self.bus.inner.heads.lock().expect("heads lock").clone();
            for p in &assigned {
                let committed = t
                    .get((self.group.as_str(), self.topic.as_str(), *p))
                    .map_err(storage_err)?
                    .map(|v| v.value());
                let from = committed.unwrap_or_else(|| match self.start {
                    Start::Earliest => 0,
                    Start::Latest => heads.get(&(self.topic.clone(), *p)).copied().unwrap_or(0),
                });
                self.positions.insert(*p, from);
            }
        }
        if !revoked.is_empty() || !assigned.is_empty() {
            self.changes
                .get_or_insert_with(Rebalance::default)
                .merge(Rebalance { revoked, assigned });
        }
        Ok(())
    }

    fn read(&mut self, max: usize) -> Result<Vec<Record>> {
        let held: Vec<u32> = self
            .positions
            .keys()
            .filter(|p| !self.paused.contains(p))
            .copied()
            .collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let r = self.bus.inner.engine.read()?;
        let log = r.open_table(LOG).map_err(storage_err)?;
        let n = held.len();
        let mut out = Vec::new();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let p = held[(self.next_partition + i) % n];
            let from = self.positions[&p];
            let range = log
                .range((self.topic.as_str(), p, from)..=(self.topic.as_str(), p, u64::MAX))
                .map_err(storage_err)?;
            for row in range {
                if out.len() >= max {
                    break;
                }
                let (k, v) = row.map_err(storage_err)?;
                let off = k.value().2;
                out.push(decode(&self.topic, p, off, v.value())?);
                self.positions.insert(p, off + 1);
            }
        }
        self.next_partition = (self.next_partition + 1) % n.max(1);
        Ok(out)
    }

    /// Commit what was stored for `partitions` and not yet committed.
    async fn commit_partitions(&mut self, partitions: &[u32]) -> Result<()> {
        let offsets: Vec<(u32, u64)> = partitions
            .iter()
            .filter_map(|p| {
                let s = *self.stored.get(p)?;
                (self.committed.get(p) != Some(&s)).then_some((*p, s))
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let group = self.group.clone();
        let topic = self.topic.clone();
        let write = offsets.clone();
        self.bus
            .inner
            .engine
            .write(move |txn| {
                let mut t = txn.open_table(OFFSETS).map_err(storage_err)?;
                for (p, next) in write {
                    let cur = t
                        .get((group.as_str(), topic.as_str(), p))
                        .map_err(storage_err)?
                        .map(|v| v.value());
                    if cur.is_none_or(|c| c < next) {
                        t.insert((group.as_str(), topic.as_str(), p), next)
                            .map_err(storage_err)?;
                    }
                }
                Ok(())
            })
            .await?;
        self.committed.extend(offsets);
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        // leave the group: what was stored and not committed is read again by the next holder
        let mut groups = self.bus.inner.groups.lock().expect("groups lock");
        if let Some(m) = groups.get_mut(&self.key()) {
            m.ids.retain(|id| *id != self.id);
            m.holder.retain(|_, id| *id != self.id);
            if m.ids.is_empty() {
                groups.remove(&self.key());
            }
        }
        drop(groups);
        self.bus.inner.membership.send_modify(|v| *v += 1);
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut appended = self.bus.inner.appended(&self.topic).subscribe();
        let mut membership = self.bus.inner.membership.subscribe();
        loop {
            appended.borrow_and_update();
            membership.borrow_and_update();
            self.sync().await?;
            let got = self.read(max.max(1))?;
            if !got.is_empty() {
                return Ok(got);
            }
            tokio::select! {
                r = appended.changed() => if r.is_err() { return Ok(Vec::new()) },
                r = membership.changed() => if r.is_err() { return Ok(Vec::new()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    fn assignment(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    fn take_rebalance(&mut self) -> Option<Rebalance> {
        self.changes.take()
    }

    fn pause(&mut self, partitions: &[u32]) -> Result<()> {
        for p in partitions {
            if self.positions.contains_key(p) {
                self.paused.insert(*p);
            }
        }
        Ok(())
    }

    fn resume(&mut self, partitions: &[u32]) -> Result<()> {
        for p in partitions {
            self.paused.remove(p);
        }
        Ok(())
    }

    fn store(&mut self, offsets: &[(u32, u64)]) -> Result<()> {
        for (p, o) in offsets {
            if self.positions.contains_key(p) {
                let e = self.stored.entry(*p).or_insert(0);
                *e = (*e).max(*o);
            }
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        let held: Vec<u32> = self.positions.keys().copied().collect();
        self.commit_partitions(&held).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_partitions(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions: 2,
            replication: 0,
            retention_ms: None,
        }
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let bus =
            EmbeddedBus::open(&dir.path().join("bus.redb"), Duration::from_secs(3600)).unwrap();
        tidings_core::conformance::bus_conformance(&bus, "t").await;
        tidings_core::conformance::runner_conformance(std::sync::Arc::new(bus), "t").await;
    }

    /// A partition claimed by a sync that failed before reading its offset is taken by the
    /// next sync, not left held by nobody until the stage restarts.
    #[tokio::test]
    async fn a_claim_interrupted_by_a_failed_read_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let bus =
            EmbeddedBus::open(&dir.path().join("bus.redb"), Duration::from_secs(3600)).unwrap();
        bus.ensure_topic(&two_partitions("a")).await.unwrap();
        bus.append(vec![OutRecord::new("a", vec![1], vec![1])])
            .await
            .unwrap();
        let mut c = bus.member("g", "a", Start::Earliest).unwrap();
        c.sync().await.unwrap();
        assert_eq!(c.assignment(), vec![0, 1]);
        // what a failed offset read leaves: the group says we hold 1, we have no position
        c.positions.remove(&1);
        c.sync().await.unwrap();
        assert_eq!(c.assignment(), vec![0, 1]);
        let got = c.poll(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        // and when the partition is another member's by then, it is let go for them
        c.positions.remove(&1);
        let mut d = bus.member("g", "a", Start::Earliest).unwrap();
        c.sync().await.unwrap();
        d.sync().await.unwrap();
        assert_eq!((c.assignment(), d.assignment()), (vec![0], vec![1]));
    }

    #[tokio::test]
    async fn survives_reopen_and_trims_what_every_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.redb");
        {
            let bus = EmbeddedBus::open(&path, Duration::from_secs(3600)).unwrap();
            bus.ensure_topic(&two_partitions("a")).await.unwrap();
            let recs = (0..10u8)
                .map(|i| OutRecord::new("a", vec![i], vec![i]))
                .collect();
            bus.append(recs).await.unwrap();
            let mut c = bus.consumer("g", "a").await.unwrap();
            let got = c.poll(4, Duration::from_secs(1)).await.unwrap();
            c.commit_records(&got).await.unwrap();
            drop(c);
        }
        // the writer thread lets go of the file once its queue closes, a moment after the drop
        let mut tries = 0;
        let bus = loop {
            match EmbeddedBus::open(&path, Duration::from_secs(3600)) {
                Ok(b) => break b,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "bus file still locked");
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(bus.lag("g", "a").await.unwrap(), 6);
        let dropped = bus.trim(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(dropped, 4);
        let mut c = bus.consumer("g", "a").await.unwrap();
        let rest = c.poll(100, Duration::from_secs(1)).await.unwrap();
        assert_eq!(rest.len(), 6);
        // offsets continue after reopen
        let pos = bus
            .append(vec![OutRecord::new("a", vec![0], vec![99])])
            .await
            .unwrap();
        assert!(pos[0].offset > 0);
    }
}
