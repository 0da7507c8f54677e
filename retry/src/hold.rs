//! Holding deliveries until due. The worker reads `retry.<tier>`, keeps what it read in a
//! timer heap, and re-emits each delivery to `deliveries.<channel>` when due. Each held
//! delivery keeps a [`Ticket`], so the stage runner commits a partition only up to its oldest
//! delivery not yet re-emitted: a crash re-reads (and re-holds) what was pending, at least
//! once, nothing lost. The heap is bounded: when full, the runner pauses the topic (it keeps
//! polling, so the group keeps the member) until something falls due. A partition that moves
//! to another member is dropped from the heap; its new holder reads it again from the commit.

use async_trait::async_trait;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use tidings_core::bus::{OutRecord, Record};
use tidings_core::metrics_names::{RETRY_PENDING, RETRY_REEMITTED_TOTAL};
use tidings_core::model::{now_ms, Delivery};
use tidings_core::stage::{Batch, Handler, Lane, Ticket};
use tidings_core::{Context, Result};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-retry";
const MAX_HELD: usize = 100_000;
/// Most deliveries re-emitted in one append.
const EMIT_BATCH: usize = 1024;

/// Run the worker of one tier until shutdown.
pub async fn run(ctx: Context, tier: &'static str, shutdown: CancellationToken) -> Result<()> {
    let consumer = ctx.bus.consumer(GROUP, &ctx.retry_topic(tier)).await?;
    let lanes = vec![Lane {
        consumer,
        max: 1024,
    }];
    let hold = Hold {
        ctx: ctx.clone(),
        tier,
        heap: BinaryHeap::new(),
        held: BTreeMap::new(),
        backoff_until: None,
    };
    tidings_core::stage::run(ctx, hold, lanes, shutdown).await
}

/// A delivery waiting for its time.
struct Held {
    ticket: Ticket,
    key: Vec<u8>,
    value: Vec<u8>,
    topic: String,
    channel: &'static str,
}

struct Hold {
    ctx: Context,
    tier: &'static str,
    /// (due, partition, offset), soonest first
    heap: BinaryHeap<Reverse<(i64, u32, u64)>>,
    held: BTreeMap<(u32, u64), Held>,
    /// After a failed re-emit, when to try again.
    backoff_until: Option<Instant>,
}

#[async_trait]
impl Handler for Hold {
    type Item = Delivery;

    fn name(&self) -> &'static str {
        "retry"
    }

    fn decode(&self, record: &Record) -> Result<Delivery> {
        tidings_schemas::codec().decode_delivery(&record.value)
    }

    async fn handle(&mut self, batch: &mut Batch<Delivery>) -> Result<()> {
        for i in batch.open() {
            let e = batch.entry(i);
            let (p, o) = (e.record.partition, e.record.offset);
            let due = e.item.due_at_ms;
            let held = Held {
                key: e.record.key.clone(),
                value: e.record.value.clone(),
                topic: self.ctx.deliveries_topic(e.item.channel, e.item.priority),
                channel: e.item.channel.as_str(),
                ticket: batch.ticket(i),
            };
            if self.held.insert((p, o), held).is_none() {
                self.heap.push(Reverse((due, p, o)));
            }
        }
        metrics::gauge!(RETRY_PENDING, "tier" => self.tier).set(self.held.len() as f64);
        Ok(())
    }

    fn revoked(&mut self, _lane: usize, partitions: &[u32]) {
        self.held.retain(|(p, _), _| !partitions.contains(p));
        self.heap
            .retain(|Reverse((_, p, _))| !partitions.contains(p));
        metrics::gauge!(RETRY_PENDING, "tier" => self.tier).set(self.held.len() as f64);
    }

    fn full(&self) -> bool {
        self.held.len() >= MAX_HELD
    }

    fn wake_at(&self) -> Option<Instant> {
        let Reverse((due, _, _)) = self.heap.peek()?;
        let wait = (*due - now_ms()).max(0) as u64;
        let at = Instant::now() + std::time::Duration::from_millis(wait);
        Some(self.backoff_until.map_or(at, |b| b.max(at)))
    }

    /// Re-emit everything due, a batch at a time.
    async fn tick(&mut self) -> Result<()> {
        if self.backoff_until.is_some_and(|b| Instant::now() < b) {
            return Ok(());
        }
        self.backoff_until = None;
        loop {
            let now = now_ms();
            let mut out = Vec::new();
            let mut emitted = Vec::new();
            while let Some(Reverse((due, p, o))) = self.heap.peek().copied() {
                if due > now || out.len() >= EMIT_BATCH {
                    break;
                }
                self.heap.pop();
                if let Some(h) = self.held.get(&(p, o)) {
                    out.push(OutRecord::new(
                        h.topic.clone(),
                        h.key.clone(),
                        h.value.clone(),
                    ));
                    emitted.push((due, p, o));
                }
            }
            if out.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.ctx.bus.append(out).await {
                // put them back: they are re-emitted on a later turn
                for (due, p, o) in emitted {
                    self.heap.push(Reverse((due, p, o)));
                }
                return if e.is_retriable() {
                    tracing::warn!(tier = self.tier, error = %e, "re-emitting failed; trying again in 1 s");
                    self.backoff_until = Some(Instant::now() + std::time::Duration::from_secs(1));
                    Ok(())
                } else {
                    Err(e)
                };
            }
            for (_, p, o) in emitted {
                if let Some(h) = self.held.remove(&(p, o)) {
                    metrics::counter!(RETRY_REEMITTED_TOTAL, "channel" => h.channel).increment(1);
                    h.ticket.finish();
                }
            }
            metrics::gauge!(RETRY_PENDING, "tier" => self.tier).set(self.held.len() as f64);
        }
    }
}
