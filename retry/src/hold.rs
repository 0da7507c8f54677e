//! Holding deliveries until due. The worker reads `retry.<tier>`, keeps what it read in a
//! timer heap, and re-emits each delivery to `deliveries.<channel>` when due. It commits a
//! partition only up to its oldest delivery not yet re-emitted, so a crash re-reads (and
//! re-holds) what was pending: at-least-once, nothing lost. The heap is bounded: when full, the
//! worker stops reading until something falls due.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;
use tidings_core::bus::OutRecord;
use tidings_core::metrics_names::{RETRY_PENDING, RETRY_REEMITTED_TOTAL};
use tidings_core::model::now_ms;
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-retry";
const MAX_HELD: usize = 100_000;

/// Which offsets of each partition are read but not yet done, to commit no further than them.
#[derive(Default, Debug)]
pub struct Pending {
    held: BTreeMap<u32, BTreeSet<u64>>,
    read_to: BTreeMap<u32, u64>,
}

impl Pending {
    pub fn read(&mut self, partition: u32, offset: u64) {
        self.held.entry(partition).or_default().insert(offset);
        let r = self.read_to.entry(partition).or_insert(0);
        *r = (*r).max(offset + 1);
    }

    pub fn done(&mut self, partition: u32, offset: u64) {
        if let Some(s) = self.held.get_mut(&partition) {
            s.remove(&offset);
        }
    }

    /// `(partition, next offset)` safe to commit: the oldest held offset, or all that was read.
    pub fn committable(&self) -> Vec<(u32, u64)> {
        self.read_to
            .iter()
            .map(|(p, read_to)| {
                let oldest = self.held.get(p).and_then(|s| s.iter().next().copied());
                (*p, oldest.unwrap_or(*read_to))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.held.values().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run the worker of one tier until shutdown.
pub async fn run(ctx: Context, tier: &'static str, shutdown: CancellationToken) -> Result<()> {
    let mut consumer = ctx.bus.consumer(GROUP, &ctx.retry_topic(tier)).await?;
    let codec = tidings_schemas::codec();
    // (due, partition, offset) -> the delivery bytes
    let mut heap: BinaryHeap<Reverse<(i64, u32, u64)>> = BinaryHeap::new();
    let mut bodies: BTreeMap<(u32, u64), (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut pending = Pending::default();
    loop {
        let now = now_ms();
        let next_due = heap.peek().map(|Reverse((due, _, _))| *due);
        let wait = next_due
            .map(|d| Duration::from_millis((d - now).max(0) as u64))
            .unwrap_or(Duration::from_secs(1));
        if next_due.is_none_or(|d| d > now) {
            let records = if heap.len() >= MAX_HELD {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => Vec::new(),
                }
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = consumer.poll(1024, wait) => r?,
                }
            };
            for r in records {
                match codec.decode_delivery(&r.value) {
                    Ok(d) => {
                        heap.push(Reverse((d.due_at_ms, r.partition, r.offset)));
                        bodies.insert((r.partition, r.offset), (r.key, r.value));
                        pending.read(r.partition, r.offset);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, tier, "undecodable retry record dropped to dlq");
                        ctx.bus
                            .append(vec![OutRecord::new(ctx.dlq_topic(), r.key, r.value)])
                            .await?;
                        pending.read(r.partition, r.offset);
                        pending.done(r.partition, r.offset);
                    }
                }
            }
        }
        // re-emit everything due
        let now = now_ms();
        let mut out = Vec::new();
        let mut emitted = Vec::new();
        while let Some(Reverse((due, p, o))) = heap.peek().copied() {
            if due > now || out.len() >= 1024 {
                break;
            }
            heap.pop();
            if let Some((key, value)) = bodies.remove(&(p, o)) {
                let d = codec.decode_delivery(&value)?;
                metrics::counter!(RETRY_REEMITTED_TOTAL, "channel" => d.channel.as_str())
                    .increment(1);
                out.push(OutRecord::new(
                    ctx.deliveries_topic(d.channel, d.priority),
                    key,
                    value,
                ));
                emitted.push((p, o));
            }
        }
        if !out.is_empty() {
            ctx.bus.append(out).await?;
            for (p, o) in emitted {
                pending.done(p, o);
            }
        }
        let commit = pending.committable();
        if !commit.is_empty() {
            consumer.commit(&commit).await?;
        }
        metrics::gauge!(RETRY_PENDING, "tier" => tier).set(pending.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn commits_stop_at_the_oldest_held_offset() {
        let mut p = Pending::default();
        for o in 0..5 {
            p.read(0, o);
        }
        p.read(1, 7);
        p.done(0, 0);
        p.done(0, 2);
        assert_eq!(p.committable(), vec![(0, 1), (1, 7)]);
        p.done(0, 1);
        p.done(0, 3);
        p.done(0, 4);
        p.done(1, 7);
        assert_eq!(p.committable(), vec![(0, 5), (1, 8)]);
        assert!(p.is_empty());
    }
}
