//! The router stage.
//!
//! - [`lanes`]: the weighted fair share of the `high`, `normal` and `low` request topics
//! - [`route`]: one request to its recipients: expand, render, write message, inbox rows and
//!   statuses, emit one delivery per (recipient, channel)
//!
//! `urgent` has a task of its own, so an urgent request never waits for the batch another lane
//! is routing (a low fan-out to many thousands of users can take seconds); the other three
//! lanes share one task by weight. Offsets are committed only after the deliveries a batch
//! produced are durable.

pub mod lanes;
pub mod route;

use std::time::Duration;
use tidings_core::bus::{Consumer, Record};
use tidings_core::model::Priority;
use tidings_core::{hint, Context, Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const GROUP: &str = "tidings-router";

/// Run the router until shutdown.
pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
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
    let urgent = ctx
        .bus
        .consumer(GROUP, &ctx.requests_topic(Priority::Urgent))
        .await?;
    let mut shared = Vec::new();
    for p in [Priority::High, Priority::Normal, Priority::Low] {
        shared.push(ctx.bus.consumer(GROUP, &ctx.requests_topic(p)).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    // its writes overtake the bulk ones queued for the disk (see `hint`)
    tasks.spawn(hint::urgent(urgent_lane(
        ctx.clone(),
        urgent,
        plan.max(Priority::Urgent),
        shutdown.clone(),
    )));
    tasks.spawn(shared_lanes(ctx.clone(), shared, plan, shutdown));
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::internal(format!("a router lane panicked: {e}")))??;
    }
    Ok(())
}

/// Route urgent requests as they come.
async fn urgent_lane(
    ctx: Context,
    mut consumer: Box<dyn Consumer>,
    max: usize,
    shutdown: CancellationToken,
) -> Result<()> {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = consumer.poll(max, Duration::from_secs(1)) => b?,
        };
        if !batch.is_empty() {
            handle(&ctx, consumer.as_mut(), batch).await?;
        }
    }
}

/// Route `high`, `normal` and `low` (in that order in `consumers`) by weighted rounds.
async fn shared_lanes(
    ctx: Context,
    mut consumers: Vec<Box<dyn Consumer>>,
    plan: lanes::Plan,
    shutdown: CancellationToken,
) -> Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut worked = false;
        for (i, (_, max)) in plan.round().into_iter().enumerate() {
            let batch = consumers[i].poll(max, Duration::ZERO).await?;
            if !batch.is_empty() {
                handle(&ctx, consumers[i].as_mut(), batch).await?;
                worked = true;
            }
        }
        if worked {
            continue;
        }
        // idle: wait for the first lane with work (polls are cancel-safe)
        let (lane, batch) = {
            let [h, n, l] = &mut consumers[..] else {
                unreachable!("three lanes")
            };
            let wait = Duration::from_secs(1);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                b = h.poll(plan.max(Priority::High), wait) => (0, b?),
                b = n.poll(plan.max(Priority::Normal), wait) => (1, b?),
                b = l.poll(plan.max(Priority::Low), wait) => (2, b?),
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
