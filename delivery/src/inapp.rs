//! The consumer of `deliveries.inapp`: push each delivery to every live connection of its
//! user. A user with no connection loses nothing: the row is in the inbox, and `resume`
//! replays it.
//!
//! Offsets are committed every [`crate::COMMIT_EVERY`] (and when the topic runs dry or the stage
//! stops), not after each batch: a push is best-effort and already idempotent on the client,
//! so after a crash at most that much is pushed again, and the fsync of a commit stays off the
//! path from one batch to the next.

use crate::frames::message_from_delivery;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidings_core::bus::{next_offsets, Consumer, Record};
use tidings_core::metrics_names::DELIVERY_ATTEMPTS_TOTAL;
use tidings_core::model::Channel;
use tidings_core::presence::Push;
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    crate::per_lane(&ctx, Channel::Inapp, shutdown, lane).await
}

/// Push the deliveries of one topic (urgent, or the rest).
async fn lane(ctx: Context, topic: String, shutdown: CancellationToken) -> Result<()> {
    let mut consumer = ctx.bus.consumer(crate::GROUP, &topic).await?;
    let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    loop {
        let wait = if pending.is_empty() {
            Duration::from_secs(1)
        } else {
            crate::COMMIT_EVERY
        };
        let records = tokio::select! {
            _ = shutdown.cancelled() => {
                commit(consumer.as_mut(), &mut pending).await?;
                return Ok(());
            }
            r = consumer.poll(1024, wait) => r?,
        };
        if records.is_empty() {
            commit(consumer.as_mut(), &mut pending).await?;
            last_commit = Instant::now();
            continue;
        }
        let span = tracing::debug_span!("delivery", channel = "inapp", records = records.len());
        push_all(&ctx, &records).instrument(span).await?;
        for (p, o) in next_offsets(&records) {
            let e = pending.entry(p).or_default();
            *e = (*e).max(o);
        }
        if last_commit.elapsed() >= crate::COMMIT_EVERY {
            commit(consumer.as_mut(), &mut pending).await?;
            last_commit = Instant::now();
        }
    }
}

async fn commit(consumer: &mut dyn Consumer, pending: &mut BTreeMap<u32, u64>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let offsets: Vec<(u32, u64)> = pending.iter().map(|(p, o)| (*p, *o)).collect();
    consumer.commit(&offsets).await?;
    pending.clear();
    Ok(())
}

async fn push_all(ctx: &Context, records: &[Record]) -> Result<()> {
    let codec = tidings_schemas::codec();
    for r in records {
        let d = match codec.decode_delivery(&r.value) {
            Ok(d) => d,
            Err(e) => {
                // kept for operators on the dead-letter topic, never silently dropped
                tracing::warn!(error = %e, offset = r.offset, "undecodable delivery dead-lettered");
                ctx.dead_letter(r, &e).await?;
                continue;
            }
        };
        let push = Push {
            message_id: d.message_id.clone(),
            seq: d.seq,
            frame: Arc::from(message_from_delivery(&d)),
        };
        let reached = ctx.presence.push(&d.tenant_id, &d.user_id, push).await?;
        if reached > 0 {
            crate::observe_latency(&d);
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "pushed")
                .increment(1);
        } else {
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "offline").increment(1);
        }
    }
    Ok(())
}
