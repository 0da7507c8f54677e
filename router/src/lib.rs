//! The router stage.
//!
//! - [`lanes`]: the weighted fair share of the `high`, `normal` and `low` request topics
//! - [`route`]: one request to its recipients: expand, render, write message, inbox rows and
//!   statuses, emit one delivery per (recipient, channel)
//!
//! `urgent` has a task of its own, so an urgent request never waits for the batch another lane
//! is routing (a low fan-out to many thousands of users can take seconds); the other three
//! lanes share one stage runner by weight. Offsets are stored only after the deliveries a
//! batch produced are durable.

pub mod lanes;
pub mod route;

use async_trait::async_trait;
use tidings_core::bus::Record;
use tidings_core::model::{NotificationRequest, Priority};
use tidings_core::stage::{self, Batch, Handler, Lane};
use tidings_core::{hint, Context, Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const GROUP: &str = "tidings-router";

/// Run the router until shutdown: the urgent lane in a task of its own, the other three in
/// one runner by weighted rounds (high, normal, low: each lane once a round, taking up to
/// `weight × batch` requests).
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
    let urgent = vec![Lane {
        consumer: ctx
            .bus
            .consumer(GROUP, &ctx.requests_topic(Priority::Urgent))
            .await?,
        max: plan.max(Priority::Urgent),
    }];
    let mut shared = Vec::new();
    for (p, max) in plan.round() {
        shared.push(Lane {
            consumer: ctx.bus.consumer(GROUP, &ctx.requests_topic(p)).await?,
            max,
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    // its writes overtake the bulk ones queued for the disk (see `hint`)
    tasks.spawn(hint::urgent(stage::run(
        ctx.clone(),
        Router { ctx: ctx.clone() },
        urgent,
        shutdown.clone(),
    )));
    tasks.spawn(stage::run(
        ctx.clone(),
        Router { ctx: ctx.clone() },
        shared,
        shutdown,
    ));
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::internal(format!("a router lane panicked: {e}")))??;
    }
    Ok(())
}

/// The router as a stage: routing is idempotent, so a batch that hit a passing failure is
/// routed again.
struct Router {
    ctx: Context,
}

#[async_trait]
impl Handler for Router {
    type Item = NotificationRequest;

    fn name(&self) -> &'static str {
        "router"
    }

    fn decode(&self, record: &Record) -> Result<NotificationRequest> {
        tidings_schemas::codec().decode_request(&record.value)
    }

    async fn handle(&mut self, batch: &mut Batch<NotificationRequest>) -> Result<()> {
        let requests: Vec<(&Record, NotificationRequest)> = batch
            .iter_open()
            .map(|e| (&e.record, e.item.clone()))
            .collect();
        let span = tracing::info_span!("router", records = requests.len());
        route::route_batch(&self.ctx, requests)
            .instrument(span)
            .await
    }

    async fn failed(
        &mut self,
        record: &Record,
        req: &NotificationRequest,
        error: &Error,
    ) -> Result<()> {
        route::record_failure(&self.ctx, req, record, error).await
    }
}
