//! The router stage.
//!
//! - [`lanes`]: reads the four request topics, `urgent` first always, the others by weighted
//!   fair share
//! - [`route`]: one request to its recipients: expand, render, write message, inbox rows and
//!   statuses, emit one delivery per (recipient, channel)
//!
//! Offsets are committed only after the deliveries a batch produced are durable.

pub mod lanes;
pub mod route;

use std::time::Duration;
use tidings_core::bus::{Consumer, Record};
use tidings_core::model::Priority;
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const GROUP: &str = "tidings-router";

/// Run the router until shutdown.
pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
    for p in Priority::ALL {
        consumers.push(ctx.bus.consumer(GROUP, &ctx.requests_topic(p)).await?);
    }
    let r = &ctx.config.router;
    let plan = lanes::Plan::new(
        [
            r.weight_urgent,
            r.weight_high,
            r.weight_normal,
            r.weight_low,
        ],
        r.batch,
    );
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut worked = false;
        for (lane, max) in plan.round() {
            // urgent goes before every lane of the round
            let urgent = consumers[0]
                .poll(plan.max(Priority::Urgent), Duration::ZERO)
                .await?;
            if !urgent.is_empty() {
                handle(&ctx, consumers[0].as_mut(), urgent).await?;
                worked = true;
            }
            if lane == Priority::Urgent {
                continue;
            }
            let batch = consumers[lane.index()].poll(max, Duration::ZERO).await?;
            if !batch.is_empty() {
                handle(&ctx, consumers[lane.index()].as_mut(), batch).await?;
                worked = true;
            }
        }
        if worked {
            continue;
        }
        // idle: wait for the first lane with work (polls are cancel-safe)
        let (lane, batch) = {
            let [u, h, n, l] = &mut consumers[..] else {
                unreachable!("four lanes")
            };
            let wait = Duration::from_secs(1);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                b = u.poll(plan.max(Priority::Urgent), wait) => (0, b?),
                b = h.poll(plan.max(Priority::High), wait) => (1, b?),
                b = n.poll(plan.max(Priority::Normal), wait) => (2, b?),
                b = l.poll(plan.max(Priority::Low), wait) => (3, b?),
            }
        };
        if !batch.is_empty() {
            handle(&ctx, consumers[lane].as_mut(), batch).await?;
        }
    }
}

async fn handle(ctx: &Context, consumer: &mut dyn Consumer, batch: Vec<Record>) -> Result<()> {
    let span = tracing::info_span!("router", topic = consumer.topic(), records = batch.len());
    async {
        // routing is idempotent, so a batch that hit a passing backend failure is routed again
        let mut backoff = Duration::from_millis(50);
        loop {
            match route::route_batch(ctx, &batch).await {
                Ok(()) => break,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, ?backoff, "routing failed, trying the batch again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        consumer.commit_records(&batch).await
    }
    .instrument(span)
    .await
}
