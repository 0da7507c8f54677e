//! The stage runner: the one consumer loop every stage runs (ingest's Avro topic, the router,
//! the in-app and webhook channels, the retry hold). A stage is a [`Handler`]; [`run`] owns
//! everything around it:
//!
//! - **Reading**: it polls one or more lanes (consumers), each with its own batch size, in
//!   weighted rounds (the router's priority lanes); an idle runner waits on all lanes at once.
//! - **Decoding**: a record the handler cannot decode goes to `dlq` with its reason, is
//!   counted (`tidings_stage_dead_letters_total{stage,reason}`), and never stalls its
//!   partition.
//! - **Retrying**: a batch that fails with a retriable error (a backend is down) is tried
//!   again with [`RetryPolicy::stage`], minus the records the handler already finished. While
//!   it waits, the lanes' partitions are paused and polling goes on, so the group does not
//!   evict the member.
//! - **Failing for good**: a batch that fails with a permanent error is split and each record
//!   handled alone; one that still fails is handed to [`Handler::failed`] and dead-lettered,
//!   and the stage moves on (it never restarts on the same batch forever).
//! - **Offsets**: each record read is tracked in a [`Ledger`] until done; a handler that
//!   finishes work later (webhook posts, held retries) takes a [`Ticket`] for it. Offsets are
//!   stored up to the oldest unfinished record of each partition and committed at most every
//!   [`COMMIT_EVERY`] per lane (an idle lane with finished work wakes up for it), and at
//!   shutdown: a commit is a write to the group's offsets (an fsync, a Kafka round trip), so
//!   it is never paid per record.
//! - **Rebalances**: when a lane loses partitions, the ledger forgets them (tickets of the lost
//!   partitions no longer count) and the handler drops what it holds of them
//!   ([`Handler::revoked`]); their new holder reads them again from the last commit.
//! - **Backpressure**: while [`Handler::full`] says so, the lanes are paused.

use crate::backoff::RetryPolicy;
use crate::bus::{Bus, OutRecord};
use crate::bus::{Consumer, Record};
use crate::metrics_names::{STAGE_BATCH_RECORDS, STAGE_BATCH_SECONDS, STAGE_DEAD_LETTERS_TOTAL};
use crate::{Context, Error, Result};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a finished record waits for its offset to be committed: commits (an fsync on the
/// embedded bus, a round trip on Kafka) stay off the path from one batch to the next.
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// How long an idle runner waits on its lanes before it looks around (shutdown, timers).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// What a stage does with the records of its lanes.
#[async_trait]
pub trait Handler: Send + 'static {
    type Item: Send + Sync + 'static;

    /// The stage's name in logs and metrics (bounded: a constant).
    fn name(&self) -> &'static str;

    /// Turn a record into the handler's item; an error dead-letters the record.
    fn decode(&self, record: &Record) -> Result<Self::Item>;

    /// Work on the unfinished entries of `batch` (all from one lane, in partition order). On
    /// `Ok`, every entry is done except those the handler deferred with [`Batch::ticket`].
    /// A retriable error has the batch tried again (entries marked with [`Batch::finish`] are
    /// skipped); a permanent one has each entry tried alone.
    async fn handle(&mut self, batch: &mut Batch<Self::Item>) -> Result<()>;

    /// An entry that failed alone with a permanent error, before the runner dead-letters it
    /// (the router marks the message failed). A retriable error here is retried.
    async fn failed(&mut self, _record: &Record, _item: &Self::Item, _error: &Error) -> Result<()> {
        Ok(())
    }

    /// Partitions of lane `lane` were revoked: drop what is held of them (their tickets no
    /// longer count).
    fn revoked(&mut self, _lane: usize, _partitions: &[u32]) {}

    /// Whether reading should pause (the handler holds as much as it may).
    fn full(&self) -> bool {
        false
    }

    /// When the handler wants [`Handler::tick`] called with no new records (a retry falls
    /// due).
    fn wake_at(&self) -> Option<Instant> {
        None
    }

    /// Work that is not driven by new records (re-emitting what fell due, collecting
    /// background work); called every turn. An error ends the stage (it is restarted).
    async fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    /// Shutdown: finish or give up background work by `deadline`.
    async fn drain(&mut self, _deadline: Instant) -> Result<()> {
        Ok(())
    }
}

/// Which records of one consumer are read and not yet done, to store offsets no further than
/// the oldest unfinished one. Shared with the [`Ticket`]s of work that finishes later.
#[derive(Default, Debug)]
struct LedgerState {
    held: BTreeMap<u32, BTreeSet<u64>>,
    read_to: BTreeMap<u32, u64>,
    /// Bumped when a partition is revoked: older tickets no longer count.
    epoch: BTreeMap<u32, u64>,
}

/// The read-but-unfinished records of one lane.
#[derive(Clone, Default, Debug)]
pub struct Ledger {
    state: Arc<Mutex<LedgerState>>,
}

impl Ledger {
    pub fn read(&self, partition: u32, offset: u64) {
        let mut s = self.state.lock().expect("ledger lock");
        s.held.entry(partition).or_default().insert(offset);
        let r = s.read_to.entry(partition).or_insert(0);
        *r = (*r).max(offset + 1);
    }

    pub fn done(&self, partition: u32, offset: u64) {
        let mut s = self.state.lock().expect("ledger lock");
        if let Some(set) = s.held.get_mut(&partition) {
            set.remove(&offset);
        }
    }

    fn epoch(&self, partition: u32) -> u64 {
        let s = self.state.lock().expect("ledger lock");
        s.epoch.get(&partition).copied().unwrap_or(0)
    }

    /// Forget revoked partitions: nothing of them is stored again until they come back.
    pub fn forget(&self, partitions: &[u32]) {
        let mut s = self.state.lock().expect("ledger lock");
        for p in partitions {
            s.held.remove(p);
            s.read_to.remove(p);
            *s.epoch.entry(*p).or_insert(0) += 1;
        }
    }

    /// `(partition, next offset)` safe to store: the oldest unfinished offset, or all read.
    pub fn committable(&self) -> Vec<(u32, u64)> {
        let s = self.state.lock().expect("ledger lock");
        s.read_to
            .iter()
            .map(|(p, read_to)| {
                let oldest = s.held.get(p).and_then(|set| set.iter().next().copied());
                (*p, oldest.unwrap_or(*read_to))
            })
            .collect()
    }

    /// Records read and not yet done.
    pub fn len(&self) -> usize {
        let s = self.state.lock().expect("ledger lock");
        s.held.values().map(|set| set.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A record whose work finishes after its batch: [`Ticket::finish`] marks it done, unless its
/// partition was revoked since (then its new holder redoes it).
#[derive(Debug)]
pub struct Ticket {
    ledger: Ledger,
    partition: u32,
    offset: u64,
    epoch: u64,
}

impl Ticket {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn finish(self) {
        if self.ledger.epoch(self.partition) == self.epoch {
            self.ledger.done(self.partition, self.offset);
        }
    }
}

/// One decoded record of a batch.
pub struct Entry<T> {
    pub record: Record,
    pub item: T,
    state: EntryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Open,
    Finished,
    Deferred,
}

/// The records a handler works on: decoded, from one lane.
pub struct Batch<T> {
    lane: usize,
    entries: Vec<Entry<T>>,
    ledger: Ledger,
}

impl<T> Batch<T> {
    /// Which lane (index into the lanes given to [`run`]) the batch came from.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Indices of the entries not finished or deferred.
    pub fn open(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|i| self.entries[*i].state == EntryState::Open)
            .collect()
    }

    pub fn entry(&self, i: usize) -> &Entry<T> {
        &self.entries[i]
    }

    /// The open entries, in order.
    pub fn iter_open(&self) -> impl Iterator<Item = &Entry<T>> {
        self.entries.iter().filter(|e| e.state == EntryState::Open)
    }

    /// Entry `i` is done (a retry of the batch skips it).
    pub fn finish(&mut self, i: usize) {
        let e = &mut self.entries[i];
        if e.state == EntryState::Open {
            e.state = EntryState::Finished;
            self.ledger.done(e.record.partition, e.record.offset);
        }
    }

    /// Entry `i` finishes later, when the returned ticket does.
    pub fn ticket(&mut self, i: usize) -> Ticket {
        let e = &mut self.entries[i];
        e.state = EntryState::Deferred;
        Ticket {
            ledger: self.ledger.clone(),
            partition: e.record.partition,
            offset: e.record.offset,
            epoch: self.ledger.epoch(e.record.partition),
        }
    }

    fn finish_open(&mut self) {
        for i in self.open() {
            self.finish(i);
        }
    }

    fn len_open(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Open)
            .count()
    }

    /// Drop the open entries of revoked partitions.
    fn drop_partitions(&mut self, partitions: &[u32]) {
        self.entries
            .retain(|e| e.state != EntryState::Open || !partitions.contains(&e.record.partition));
    }

    /// Split the open entries into one-entry batches.
    fn split(self) -> Vec<Batch<T>> {
        let (lane, ledger) = (self.lane, self.ledger);
        self.entries
            .into_iter()
            .filter(|e| e.state == EntryState::Open)
            .map(|e| Batch {
                lane,
                entries: vec![e],
                ledger: ledger.clone(),
            })
            .collect()
    }
}

/// One consumer the runner reads, taking up to `max` records a turn.
pub struct Lane {
    pub consumer: Box<dyn Consumer>,
    pub max: usize,
}

struct LaneState {
    lane: Lane,
    ledger: Ledger,
    /// Whether this lane's partitions are paused, and which.
    paused: Vec<u32>,
    /// The offsets last committed.
    committed: Vec<(u32, u64)>,
    last_commit: std::time::Instant,
    /// Records a paused poll returned anyway (a backend may hand over what it had already
    /// fetched): handled on the next turn, never dropped.
    backlog: Vec<Record>,
}

impl LaneState {
    /// Apply a rebalance the consumer saw; returns the revoked partitions.
    fn rebalanced(&mut self) -> Vec<u32> {
        let Some(rb) = self.lane.consumer.take_rebalance() else {
            return Vec::new();
        };
        // a partition that comes (back) starts afresh from the group's commit: nothing read
        // or ticketed before counts for it
        self.ledger.forget(&rb.revoked);
        self.ledger.forget(&rb.assigned);
        self.paused
            .retain(|p| !rb.revoked.contains(p) && !rb.assigned.contains(p));
        self.backlog.retain(|r| !rb.revoked.contains(&r.partition));
        rb.revoked
    }

    fn set_paused(&mut self, pause: bool) -> Result<()> {
        if pause {
            let held = self.lane.consumer.assignment();
            let new: Vec<u32> = held
                .into_iter()
                .filter(|p| !self.paused.contains(p))
                .collect();
            if !new.is_empty() {
                self.lane.consumer.pause(&new)?;
                self.paused.extend(new);
            }
        } else if !self.paused.is_empty() {
            let all = std::mem::take(&mut self.paused);
            self.lane.consumer.resume(&all)?;
        }
        Ok(())
    }

    /// Store what is done and commit it if due (or `force`).
    async fn commit(&mut self, force: bool) -> Result<()> {
        let offsets = self.ledger.committable();
        if offsets == self.committed {
            return Ok(());
        }
        self.lane.consumer.store(&offsets)?;
        if force || self.last_commit.elapsed() >= COMMIT_EVERY {
            self.last_commit = std::time::Instant::now();
            match self.lane.consumer.commit().await {
                Ok(()) => self.committed = offsets,
                // stays stored; the next period commits it (and a revoke commits it first)
                Err(e) if e.is_retriable() => {
                    tracing::warn!(topic = self.lane.consumer.topic(), error = %e, "commit failed; trying again");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Run `handler` over `lanes` until `shutdown`; lanes are served in order each turn (put
/// the most urgent first). Returns an error only for failures that are not a record's: the
/// caller restarts the stage, which resumes from the committed offsets.
pub async fn run<H: Handler>(
    ctx: Context,
    handler: H,
    lanes: Vec<Lane>,
    shutdown: CancellationToken,
) -> Result<()> {
    let dlq = DeadLetters {
        bus: ctx.bus.clone(),
        topic: ctx.dlq_topic(),
    };
    run_with(dlq, handler, lanes, shutdown).await
}

/// Where the runner sends records it cannot use.
#[derive(Clone)]
pub struct DeadLetters {
    pub bus: Arc<dyn Bus>,
    /// `<prefix>.dlq`
    pub topic: String,
}

impl DeadLetters {
    /// The dead letter of `record`: its value prefixed with the reason
    /// (`"<code>: <message>\n"`), under its own key.
    pub fn letter(topic: &str, record: &Record, err: &Error) -> OutRecord {
        let mut value = format!("{}: {}\n", err.code, err.message).into_bytes();
        value.extend_from_slice(&record.value);
        OutRecord::new(topic, record.key.clone(), value)
    }
}

/// [`run`] with the dead-letter topic given (tests run stages without a whole [`Context`]).
pub async fn run_with<H: Handler>(
    dlq: DeadLetters,
    mut handler: H,
    lanes: Vec<Lane>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut lanes: Vec<LaneState> = lanes
        .into_iter()
        .map(|lane| LaneState {
            lane,
            ledger: Ledger::default(),
            paused: Vec::new(),
            committed: Vec::new(),
            last_commit: std::time::Instant::now(),
            backlog: Vec::new(),
        })
        .collect();
    let result = turns(&dlq, &mut handler, &mut lanes, &shutdown).await;
    // shutdown or failure: let background work finish by a deadline, commit what is done
    let deadline = Instant::now() + Duration::from_secs(5);
    let drained = handler.drain(deadline).await;
    for l in lanes.iter_mut() {
        l.rebalanced();
        if let Err(e) = l.commit(true).await {
            tracing::warn!(stage = handler.name(), error = %e, "final commit failed");
        }
    }
    result.and(drained)
}

async fn turns<H: Handler>(
    dlq: &DeadLetters,
    handler: &mut H,
    lanes: &mut [LaneState],
    shutdown: &CancellationToken,
) -> Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        handler.tick().await?;
        let full = handler.full();
        for l in lanes.iter_mut() {
            l.set_paused(full)?;
        }
        // one weighted round: each lane once, without waiting
        let mut worked = false;
        for i in 0..lanes.len() {
            let max = lanes[i].lane.max;
            let records = if lanes[i].backlog.is_empty() {
                lanes[i].lane.consumer.poll(max, Duration::ZERO).await?
            } else {
                std::mem::take(&mut lanes[i].backlog)
            };
            worked |= after_poll(dlq, handler, lanes, i, records, shutdown).await?;
        }
        for l in lanes.iter_mut() {
            l.commit(false).await?;
        }
        if worked {
            continue;
        }
        // idle: wait on every lane at once (polls are cancel-safe), or a timer, or shutdown
        let mut wait = IDLE_WAIT;
        if let Some(at) = handler.wake_at() {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        for l in lanes.iter() {
            if l.ledger.committable() != l.committed {
                // finished work to commit when its period is up
                wait = wait.min(COMMIT_EVERY.saturating_sub(l.last_commit.elapsed()));
            }
        }
        let (i, records) = {
            let polls = lanes.iter_mut().enumerate().map(|(i, l)| {
                let max = l.lane.max;
                Box::pin(async move { (i, l.lane.consumer.poll(max, wait).await) })
            });
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ((i, r), _, _) = futures::future::select_all(polls) => (i, r?),
            }
        };
        after_poll(dlq, handler, lanes, i, records, shutdown).await?;
    }
}

/// Handle a lane's rebalance and the records it polled; says whether there were any.
async fn after_poll<H: Handler>(
    dlq: &DeadLetters,
    handler: &mut H,
    lanes: &mut [LaneState],
    i: usize,
    records: Vec<Record>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let revoked = lanes[i].rebalanced();
    if !revoked.is_empty() {
        handler.revoked(i, &revoked);
    }
    if records.is_empty() {
        return Ok(false);
    }
    let ledger = lanes[i].ledger.clone();
    let mut entries: Vec<Entry<H::Item>> = Vec::with_capacity(records.len());
    // partitions revoked while a dead letter waited for the bus: their new holder reads them
    let mut lost: Vec<u32> = Vec::new();
    for r in records {
        if lost.contains(&r.partition) {
            continue;
        }
        ledger.read(r.partition, r.offset);
        match handler.decode(&r) {
            Ok(item) => entries.push(Entry {
                record: r,
                item,
                state: EntryState::Open,
            }),
            Err(e) => {
                let revoked = dead_letter(dlq, handler, i, &r, &e, lanes, shutdown).await?;
                if !revoked.contains(&r.partition) {
                    ledger.done(r.partition, r.offset);
                }
                if !revoked.is_empty() {
                    lost.extend(revoked);
                    entries.retain(|en| !lost.contains(&en.record.partition));
                }
            }
        }
    }
    if entries.is_empty() {
        return Ok(true);
    }
    let batch = Batch {
        lane: i,
        entries,
        ledger,
    };
    let started = std::time::Instant::now();
    let stage = handler.name();
    metrics::histogram!(STAGE_BATCH_RECORDS, "stage" => stage).record(batch.entries.len() as f64);
    let result = process(dlq, handler, lanes, batch, shutdown).await;
    metrics::histogram!(STAGE_BATCH_SECONDS, "stage" => stage)
        .record(started.elapsed().as_secs_f64());
    result.map(|()| true)
}

/// Handle a batch to the end: retry what is retriable, split what fails for good, dead-letter
/// a record that fails alone.
async fn process<H: Handler>(
    dlq: &DeadLetters,
    handler: &mut H,
    lanes: &mut [LaneState],
    batch: Batch<H::Item>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut queue = vec![batch];
    while let Some(mut batch) = queue.pop() {
        let mut attempt = 0u32;
        loop {
            if batch.len_open() == 0 {
                break;
            }
            match handler.handle(&mut batch).await {
                Ok(()) => {
                    batch.finish_open();
                    break;
                }
                Err(e) if e.is_retriable() => {
                    let revoked = wait_out(handler, lanes, attempt, &e, shutdown).await?;
                    let ours: Vec<u32> = revoked
                        .iter()
                        .filter(|(lane, _)| *lane == batch.lane)
                        .map(|(_, p)| *p)
                        .collect();
                    // lost partitions are their new holder's to handle, queued records too
                    batch.drop_partitions(&ours);
                    for q in queue.iter_mut() {
                        q.drop_partitions(&ours);
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(e) if batch.len_open() > 1 => {
                    tracing::warn!(stage = handler.name(), error = %e, records = batch.len_open(),
                        "a batch failed for good; handling its records one by one");
                    let mut alone = batch.split();
                    alone.reverse();
                    queue.extend(alone);
                    break;
                }
                Err(e) => {
                    let Some(i) = batch.open().first().copied() else {
                        break;
                    };
                    let entry = &batch.entries[i];
                    let (lane, partition) = (batch.lane, entry.record.partition);
                    let mut attempt = 0u32;
                    let mut lost = false;
                    loop {
                        match handler.failed(&entry.record, &entry.item, &e).await {
                            Ok(()) => break,
                            Err(f) if f.is_retriable() => {
                                let revoked =
                                    wait_out(handler, lanes, attempt, &f, shutdown).await?;
                                let ours: Vec<u32> = revoked
                                    .iter()
                                    .filter(|(l, _)| *l == lane)
                                    .map(|(_, p)| *p)
                                    .collect();
                                for q in queue.iter_mut() {
                                    q.drop_partitions(&ours);
                                }
                                if shutdown.is_cancelled() {
                                    // read again after the restart
                                    return Ok(());
                                }
                                if ours.contains(&partition) {
                                    // its new holder handles it
                                    lost = true;
                                    break;
                                }
                                attempt = attempt.saturating_add(1);
                            }
                            Err(f) => {
                                tracing::error!(stage = handler.name(), error = %f, "recording a failed record failed");
                                break;
                            }
                        }
                    }
                    if lost {
                        break;
                    }
                    let record = entry.record.clone();
                    let revoked =
                        dead_letter(dlq, handler, lane, &record, &e, lanes, shutdown).await?;
                    if !revoked.contains(&partition) {
                        batch.finish(i);
                    }
                    // partitions lost meanwhile are their new holders' to handle, this
                    // record's too when it is among them
                    batch.drop_partitions(&revoked);
                    for q in queue.iter_mut() {
                        q.drop_partitions(&revoked);
                    }
                    break;
                }
            }
            if shutdown.is_cancelled() {
                // what is not finished is read again after the restart
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Wait out a passing failure: pause every lane and keep polling them (a Kafka member that
/// stops polling is evicted), then resume. Returns the (lane, partition) pairs revoked
/// meanwhile.
async fn wait_out<H: Handler>(
    handler: &mut H,
    lanes: &mut [LaneState],
    attempt: u32,
    e: &Error,
    shutdown: &CancellationToken,
) -> Result<Vec<(usize, u32)>> {
    let delay = RetryPolicy::stage()
        .next_delay(attempt, &mut rand::thread_rng())
        .unwrap_or(Duration::from_secs(5));
    tracing::warn!(stage = handler.name(), error = %e, ?delay, attempt, "retrying after a passing failure");
    let until = Instant::now() + delay;
    for l in lanes.iter_mut() {
        l.set_paused(true)?;
    }
    let mut revoked_all = Vec::new();
    loop {
        for (i, l) in lanes.iter_mut().enumerate() {
            let left = until.saturating_duration_since(Instant::now());
            let polled = l
                .lane
                .consumer
                .poll(1, left.min(Duration::from_millis(100)))
                .await?;
            // paused: nothing should come, but rebalances do (and must be followed)
            let revoked = l.rebalanced();
            let held = l.lane.consumer.assignment();
            l.backlog
                .extend(polled.into_iter().filter(|r| held.contains(&r.partition)));
            if !revoked.is_empty() {
                handler.revoked(i, &revoked);
                revoked_all.extend(revoked.into_iter().map(|p| (i, p)));
            }
            // newly assigned partitions join the pause
            l.set_paused(true)?;
        }
        if Instant::now() >= until || shutdown.is_cancelled() {
            break;
        }
    }
    let full = handler.full();
    for l in lanes.iter_mut() {
        l.set_paused(full)?;
    }
    Ok(revoked_all)
}

/// Send `record` (polled on lane `lane`) to `dlq` with the reason, counted by stage and
/// reason. A bus that is down is waited out like any passing failure, the lanes paused and
/// still polled (a Kafka member that stops polling is evicted). Returns the partitions of
/// lane `lane` revoked meanwhile: their records are their new holders' to read again, this
/// one too (then it was not written) when its partition is among them.
async fn dead_letter<H: Handler>(
    dlq: &DeadLetters,
    handler: &mut H,
    lane: usize,
    record: &Record,
    e: &Error,
    lanes: &mut [LaneState],
    shutdown: &CancellationToken,
) -> Result<Vec<u32>> {
    let stage = handler.name();
    tracing::warn!(stage, code = e.code, topic = %record.topic, partition = record.partition,
        offset = record.offset, "record dead-lettered");
    metrics::counter!(STAGE_DEAD_LETTERS_TOTAL, "stage" => stage, "reason" => e.code).increment(1);
    let mut attempt = 0u32;
    let mut lost = Vec::new();
    loop {
        match dlq
            .bus
            .append(vec![DeadLetters::letter(&dlq.topic, record, e)])
            .await
        {
            Ok(_) => return Ok(lost),
            Err(f) if f.is_retriable() && !shutdown.is_cancelled() => {
                let revoked = wait_out(handler, lanes, attempt, &f, shutdown).await?;
                lost.extend(
                    revoked
                        .into_iter()
                        .filter(|(l, _)| *l == lane)
                        .map(|(_, p)| p),
                );
                if lost.contains(&record.partition) {
                    return Ok(lost);
                }
                attempt = attempt.saturating_add(1);
            }
            Err(f) => return Err(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stop_at_the_oldest_unfinished_record() {
        let l = Ledger::default();
        for o in 0..5 {
            l.read(0, o);
        }
        l.read(1, 7);
        l.done(0, 0);
        l.done(0, 2);
        assert_eq!(l.committable(), vec![(0, 1), (1, 7)]);
        l.done(0, 1);
        l.done(0, 3);
        l.done(0, 4);
        l.done(1, 7);
        assert_eq!(l.committable(), vec![(0, 5), (1, 8)]);
        assert!(l.is_empty());
    }

    #[test]
    fn tickets_of_a_revoked_partition_do_not_count() {
        let l = Ledger::default();
        l.read(3, 10);
        let mut batch: Batch<()> = Batch {
            lane: 0,
            entries: vec![Entry {
                record: Record {
                    topic: "t".into(),
                    partition: 3,
                    offset: 10,
                    key: vec![],
                    value: vec![],
                    timestamp_ms: 0,
                },
                item: (),
                state: EntryState::Open,
            }],
            ledger: l.clone(),
        };
        let t = batch.ticket(0);
        l.forget(&[3]);
        // the partition comes back, record 10 is read again and not yet done
        l.read(3, 10);
        t.finish();
        assert_eq!(
            l.committable(),
            vec![(3, 10)],
            "a stale ticket finished new work"
        );
    }
}
