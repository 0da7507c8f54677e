//! The Kafka bus, on librdkafka (rdkafka).
//!
//! - **Appends**: one idempotent producer per process (`acks=all`, lz4, a 5 ms linger so a
//!   burst goes out in few requests). [`Bus::append`] hands every record to librdkafka at once
//!   and returns when the brokers acknowledged all of them, or fails with `bus_unavailable`
//!   after `bus.produce_timeout_ms`. Records are partitioned by key with murmur2, as Java
//!   clients do, so outside producers and tidings agree on where a key lives.
//! - **Consumers**: one group member per [`Bus::consumer`], cooperative-sticky assignment,
//!   no automatic commits. Offsets are stored by the stage ([`Consumer::store`]) once the work
//!   is durable downstream and committed by [`Consumer::commit`]; when a partition is revoked,
//!   the rebalance callback commits what was stored for it before librdkafka lets it go, and
//!   forgets it, so a late store or commit of a lost partition moves nothing.
//! - **Admin**: topics are created with their partitions, replication and retention;
//!   lag is the high watermark minus the group's committed offset.

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_core::bus::{
    Bus, Consumer, OutRecord, Position, Rebalance, Record, Start, TopicSpec, TopicState,
};
use tidings_core::config::BusConfig;
use tidings_core::{Error, ErrorKind, Result};

/// How long admin and metadata calls may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The error of a bus that does not answer (503 `bus_unavailable`, retried by stages).
pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "bus_unavailable",
        format!("{what}: {e}"),
    )
}

fn produce_error(topic: &str) {
    metrics::counter!(tidings_core::metrics_names::BUS_PRODUCE_ERRORS_TOTAL, "topic" => topic.to_string())
        .increment(1);
}

/// librdkafka's own log lines and errors in ours: a broker outage makes every client report
/// every failed connection, so the process warns at most once per 10 s and the rest goes to
/// debug.
#[derive(Default)]
pub struct Quiet;

static LAST_WARN: Mutex<Option<std::time::Instant>> = Mutex::new(None);

impl Quiet {
    fn report(&self, what: std::fmt::Arguments<'_>) {
        let mut last = LAST_WARN.lock().expect("log lock");
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!("kafka: {what}");
        } else {
            tracing::debug!("kafka: {what}");
        }
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self.report(format_args!("{fac}: {message}")),
            _ => tracing::debug!("kafka: {fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for Quiet {}

/// The Kafka backend of the bus port.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    base: ClientConfig,
    /// `bus.kafka_properties`: applied last, so operators can change any default.
    overrides: std::collections::BTreeMap<String, String>,
    producer: FutureProducer<Quiet>,
    admin: AdminClient<Quiet>,
    /// Longest an append waits for the brokers.
    produce_timeout: Duration,
    /// Held while records are handed to librdkafka (fairly, first come first served), so
    /// appends keep the order of their first poll even when librdkafka's queue is full.
    enqueue: tokio::sync::Mutex<()>,
    /// Consumers used only to read a group's committed offsets (never subscribed).
    offset_readers: Mutex<HashMap<String, Arc<BaseConsumer<Quiet>>>>,
}

impl KafkaBus {
    /// Connect to `config.kafka_brokers` (clients connect lazily: this fails only on bad
    /// settings; [`Bus::ready`] says whether the brokers answer).
    pub fn connect(config: &BusConfig, client_id: &str) -> Result<KafkaBus> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.kafka_brokers)
            .set("client.id", client_id)
            .set_log_level(RDKafkaLogLevel::Warning);
        let overrides = config.kafka_properties.clone();
        let bad = |what: &str, e: KafkaError| {
            Error::invalid("config_invalid", format!("bus.kafka ({what}): {e}"))
        };
        let producer: FutureProducer<Quiet> = client(
            &base,
            &overrides,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("partitioner", "murmur2_random"),
                ("message.timeout.ms", &config.produce_timeout_ms.to_string()),
            ],
        )
        .create_with_context(Quiet)
        .map_err(|e| bad("producer", e))?;
        let admin: AdminClient<Quiet> = client(&base, &overrides, &[])
            .create_with_context(Quiet)
            .map_err(|e| bad("admin", e))?;
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                base,
                overrides,
                producer,
                admin,
                produce_timeout: Duration::from_millis(config.produce_timeout_ms),
                enqueue: tokio::sync::Mutex::new(()),
                offset_readers: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn offset_reader(&self, group: &str) -> Result<Arc<BaseConsumer<Quiet>>> {
        let mut readers = self.inner.offset_readers.lock().expect("readers lock");
        if let Some(c) = readers.get(group) {
            return Ok(c.clone());
        }
        let c: BaseConsumer<Quiet> = client(
            &self.inner.base,
            &self.inner.overrides,
            &[("group.id", group), ("enable.auto.commit", "false")],
        )
        .create_with_context(Quiet)
        .map_err(|e| unavailable("offset reader", e))?;
        let c = Arc::new(c);
        readers.insert(group.to_string(), c.clone());
        Ok(c)
    }

    /// Partitions of `topic` as the brokers see them (`None`: no such topic).
    async fn partitions_of(&self, topic: &str) -> Result<Option<u32>> {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        blocking(move || {
            let md = inner
                .producer
                .client()
                .fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
                .map_err(|e| unavailable("metadata", e))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as u32)
                .filter(|n| *n > 0))
        })
        .await
    }
}

/// A client's settings: the brokers, its own defaults, then the operator's overrides.
fn client(
    base: &ClientConfig,
    overrides: &std::collections::BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut c = base.clone();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in overrides {
        c.set(k, v);
    }
    c
}

/// Run a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("a bus call panicked: {e}")))?
}

#[async_trait]
impl Bus for KafkaBus {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicState> {
        if let Some(partitions) = self.partitions_of(&spec.name).await? {
            return Ok(TopicState {
                created: false,
                partitions,
            });
        }
        let replication = if spec.replication == 0 {
            -1
        } else {
            spec.replication as i32
        };
        let retention = spec.retention_ms.map(|ms| ms.to_string());
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions.max(1) as i32,
            TopicReplication::Fixed(replication),
        );
        if let Some(r) = retention.as_deref() {
            topic = topic.set("retention.ms", r);
        }
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .inner
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| unavailable("create topic", e))?;
        let mut created = false;
        for r in results {
            match r {
                Ok(_) => created = true,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(match code {
                        RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::TopicAuthorizationFailed => Error::invalid(
                            "topic_refused",
                            format!("the brokers refused topic `{name}`: {code}"),
                        ),
                        _ => unavailable("create topic", code),
                    })
                }
            }
        }
        // a new topic's metadata reaches every broker a moment after it is created
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(partitions) = self.partitions_of(&spec.name).await? {
                return Ok(TopicState {
                    created,
                    partitions,
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(unavailable("create topic", "the topic never appeared"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn append(&self, records: Vec<OutRecord>) -> Result<Vec<Position>> {
        let mut waiting = Vec::with_capacity(records.len());
        let turn = self.inner.enqueue.lock().await;
        for r in &records {
            let mut record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.value);
            loop {
                match self.inner.producer.send_result(record) {
                    Ok(f) => {
                        waiting.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: wait for some of it to go out
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        produce_error(&r.topic);
                        return Err(unavailable("append", e));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(waiting.len());
        let mut failed = None;
        drop(turn);
        // librdkafka expires messages on a coarse timer: hold the caller to the deadline (a
        // record that expires later is reported as failed; at-least-once covers one that made
        // it after all)
        let results = tokio::time::timeout(
            self.inner.produce_timeout,
            futures::future::join_all(waiting),
        )
        .await
        .map_err(|_| {
            for r in &records {
                produce_error(&r.topic);
            }
            unavailable(
                "append",
                format!(
                    "the brokers did not acknowledge within {:?}",
                    self.inner.produce_timeout
                ),
            )
        })?;
        for (f, r) in results.into_iter().zip(&records) {
            match f {
                Ok(Ok(d)) => out.push(Position {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Ok(Err((e, _))) => {
                    produce_error(&r.topic);
                    failed.get_or_insert(unavailable("append", e));
                }
                Err(_) => {
                    produce_error(&r.topic);
                    failed.get_or_insert(unavailable("append", "the producer went away"));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    async fn consumer_from(
        &self,
        group: &str,
        topic: &str,
        start: Start,
    ) -> Result<Box<dyn Consumer>> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let context = GroupContext {
            topic: topic.to_string(),
            shared: shared.clone(),
            logs: Quiet,
        };
        let consumer: StreamConsumer<GroupContext> = client(
            &self.inner.base,
            &self.inner.overrides,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                (
                    "auto.offset.reset",
                    match start {
                        Start::Earliest => "earliest",
                        Start::Latest => "latest",
                    },
                ),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create_with_context(context)
        .map_err(|e| unavailable("consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| unavailable("subscribe", e))?;
        Ok(Box::new(KafkaConsumer {
            topic: topic.to_string(),
            consumer: Arc::new(consumer),
            shared,
        }))
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<u64> {
        let Some(partitions) = self.partitions_of(topic).await? else {
            return Err(Error::invalid(
                "topic_not_found",
                format!("topic `{topic}` does not exist"),
            ));
        };
        let reader = self.offset_reader(group)?;
        let topic = topic.to_string();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p as i32);
            }
            let committed = reader
                .committed_offsets(tpl, ADMIN_TIMEOUT)
                .map_err(|e| unavailable("committed offsets", e))?;
            let mut lag = 0u64;
            for p in 0..partitions {
                let (low, high) = reader
                    .fetch_watermarks(&topic, p as i32, ADMIN_TIMEOUT)
                    .map_err(|e| unavailable("watermarks", e))?;
                let from = match committed
                    .find_partition(&topic, p as i32)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                lag += (high - from.max(low)).max(0) as u64;
            }
            Ok(lag)
        })
        .await
    }

    async fn ready(&self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let md = inner
                .producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map_err(|e| unavailable("brokers", e))?;
            if md.brokers().is_empty() {
                return Err(unavailable("brokers", "no broker answers"));
            }
            Ok(())
        })
        .await
    }
}

/// What the rebalance callbacks and the consumer share.
#[derive(Default)]
struct Shared {
    assignment: BTreeSet<u32>,
    changes: Option<Rebalance>,
    /// Offsets stored and not yet committed.
    stored: BTreeMap<u32, u64>,
}

struct GroupContext {
    topic: String,
    shared: Arc<Mutex<Shared>>,
    logs: Quiet,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason)
    }
}

impl GroupContext {
    fn ours(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        base: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = self.ours(tpl);
        // commit what was stored for the partitions about to go, then forget them
        let offsets: Vec<(u32, u64)> = {
            let mut s = self.shared.lock().expect("shared lock");
            let out = revoked
                .iter()
                .filter_map(|p| s.stored.remove(p).map(|o| (*p, o)))
                .collect();
            for p in &revoked {
                s.assignment.remove(p);
            }
            s.changes
                .get_or_insert_with(Rebalance::default)
                .merge(Rebalance {
                    revoked: revoked.clone(),
                    assigned: Vec::new(),
                });
            out
        };
        if !offsets.is_empty() {
            let tpl = offsets_list(&self.topic, &offsets);
            // the callback runs inside a poll on an async worker: tell the runtime this one
            // blocks for a broker round trip (longer while the coordinator is away), so the
            // worker's other tasks move on meanwhile
            let commit = || base.commit(&tpl, CommitMode::Sync);
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let done = if multi_thread {
                tokio::task::block_in_place(commit)
            } else {
                commit()
            };
            if let Err(e) = done {
                tracing::warn!(topic = %self.topic, error = %e, "commit before a revoke failed");
            }
        }
        tracing::info!(topic = %self.topic, partitions = ?revoked, "partitions revoked");
        metrics::counter!(tidings_core::metrics_names::BUS_REBALANCES_TOTAL, "kind" => "revoked")
            .increment(1);
    }

    fn post_rebalance(
        &self,
        base: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                let assigned = self.ours(tpl);
                // librdkafka keeps a partition's pause across a revoke and a later assign: a
                // partition comes back running, and the stage pauses it again if it must
                if let Err(e) = base.resume(tpl) {
                    tracing::warn!(topic = %self.topic, error = %e, "resuming assigned partitions failed");
                }
                let mut s = self.shared.lock().expect("shared lock");
                s.assignment.extend(assigned.iter().copied());
                s.changes
                    .get_or_insert_with(Rebalance::default)
                    .merge(Rebalance {
                        revoked: Vec::new(),
                        assigned: assigned.clone(),
                    });
                drop(s);
                tracing::info!(topic = %self.topic, partitions = ?assigned, "partitions assigned");
                metrics::counter!(tidings_core::metrics_names::BUS_REBALANCES_TOTAL, "kind" => "assigned")
                    .increment(1);
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "rebalance failed");
            }
            rdkafka::consumer::Rebalance::Revoke(_) => {}
        }
    }
}

fn offsets_list(topic: &str, offsets: &[(u32, u64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        // the offset is valid by construction
        let _ = tpl.add_partition_offset(topic, *p as i32, Offset::Offset(*o as i64));
    }
    tpl
}

struct KafkaConsumer {
    topic: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Mutex<Shared>>,
}

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        topic: m.topic().to_string(),
        partition: m.partition() as u32,
        offset: m.offset() as u64,
        key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

/// Errors a consumer reports and then gets over by itself (brokers going away and back).
fn passing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(r) => r,
        };
        match first {
            Ok(m) => out.push(record_of(&m)),
            Err(e) if passing(&e) => {
                tracing::debug!(topic = %self.topic, error = %e, "consumer error");
                return Ok(out);
            }
            Err(e) => return Err(unavailable("poll", e)),
        }
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(record_of(&m)),
                Some(Err(e)) => {
                    tracing::debug!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        // a revoke served while taking the rest leaves records of partitions no longer held:
        // their new holder reads them from the last commit
        let s = self.shared.lock().expect("shared lock");
        out.retain(|r| s.assignment.contains(&r.partition));
        Ok(out)
    }

    fn assignment(&self) -> Vec<u32> {
        let s = self.shared.lock().expect("shared lock");
        s.assignment.iter().copied().collect()
    }

    fn take_rebalance(&mut self) -> Option<Rebalance> {
        self.shared.lock().expect("shared lock").changes.take()
    }

    fn pause(&mut self, partitions: &[u32]) -> Result<()> {
        let held = self.held(partitions);
        if held.is_empty() {
            return Ok(());
        }
        self.consumer
            .pause(&partitions_list(&self.topic, &held))
            .map_err(|e| unavailable("pause", e))
    }

    fn resume(&mut self, partitions: &[u32]) -> Result<()> {
        let held = self.held(partitions);
        if held.is_empty() {
            return Ok(());
        }
        self.consumer
            .resume(&partitions_list(&self.topic, &held))
            .map_err(|e| unavailable("resume", e))
    }

    fn store(&mut self, offsets: &[(u32, u64)]) -> Result<()> {
        let mut s = self.shared.lock().expect("shared lock");
        for (p, o) in offsets {
            if s.assignment.contains(p) {
                let e = s.stored.entry(*p).or_insert(0);
                *e = (*e).max(*o);
            }
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        let offsets: Vec<(u32, u64)> = {
            let s = self.shared.lock().expect("shared lock");
            s.stored.iter().map(|(p, o)| (*p, *o)).collect()
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let sent = offsets.clone();
        let shared = self.shared.clone();
        blocking(move || {
            // only partitions still held; a revoke in between committed and dropped the rest
            let tpl = {
                let s = shared.lock().expect("shared lock");
                let held: Vec<(u32, u64)> = sent
                    .into_iter()
                    .filter(|(p, _)| s.assignment.contains(p))
                    .collect();
                offsets_list(&topic, &held)
            };
            if tpl.count() == 0 {
                return Ok(());
            }
            // any failure (a rebalance in progress, the coordinator away) keeps what was
            // stored: the next commit tries again, and a revoke meanwhile commits it first
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| unavailable("commit", e))
        })
        .await?;
        let mut s = self.shared.lock().expect("shared lock");
        for (p, o) in offsets {
            if s.stored.get(&p) == Some(&o) {
                s.stored.remove(&p);
            }
        }
        Ok(())
    }
}

impl KafkaConsumer {
    fn held(&self, partitions: &[u32]) -> Vec<u32> {
        let s = self.shared.lock().expect("shared lock");
        partitions
            .iter()
            .filter(|p| s.assignment.contains(p))
            .copied()
            .collect()
    }
}

fn partitions_list(topic: &str, partitions: &[u32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p as i32);
    }
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker `scripts/test.sh` started (`scripts/services/kafka.sh`).
    pub fn brokers() -> String {
        std::env::var("TIDINGS_TEST_KAFKA").expect(
            "TIDINGS_TEST_KAFKA is not set: run scripts/test.sh, or start a broker with \
             scripts/services/kafka.sh start <dir> and export what it prints",
        )
    }

    fn unique(name: &str) -> String {
        format!(
            "{name}-{}-{}",
            std::process::id(),
            tidings_core::model::now_ms()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_a_real_broker() {
        let config = BusConfig {
            backend: "kafka".into(),
            kafka_brokers: brokers(),
            ..Default::default()
        };
        let bus = KafkaBus::connect(&config, "conformance").unwrap();
        bus.ready().await.unwrap();
        let prefix = unique("conf");
        tidings_core::conformance::bus_conformance(&bus, &prefix).await;
        tidings_core::conformance::runner_conformance(Arc::new(bus), &prefix).await;
    }
}
