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
use tokio::task::JoinSet;
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
        Router::new(&ctx),
        urgent,
        shutdown.clone(),
    )));
    tasks.spawn(stage::run(ctx.clone(), Router::new(&ctx), shared, shutdown));
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::internal(format!("a router lane panicked: {e}")))??;
    }
    Ok(())
}

/// Batches whose deliveries may be awaiting the bus's acknowledgement at once.
const ACKS_IN_FLIGHT: usize = 4;

/// The router as a stage: routing is idempotent, so a batch that hit a passing failure is
/// routed again. It is pipelined: once a batch's deliveries have their place on the bus, the
/// next batch is routed while the bus acknowledges them (a Kafka round trip, an fsync); the
/// batch's offsets are stored when the acknowledgement comes (its records hold tickets). A
/// failed acknowledgement ends the stage, which restarts from the last commit.
struct Router {
    ctx: Context,
    acks: JoinSet<Result<()>>,
    failed: Option<Error>,
}

impl Router {
    fn new(ctx: &Context) -> Router {
        Router {
            ctx: ctx.clone(),
            acks: JoinSet::new(),
            failed: None,
        }
    }

    fn collect(&mut self, done: std::result::Result<Result<()>, tokio::task::JoinError>) {
        let outcome = done
            .map_err(|e| Error::internal(format!("an acknowledgement task failed: {e}")))
            .and_then(|r| r);
        if let Err(e) = outcome {
            self.failed.get_or_insert(e);
        }
    }
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
        let acks = route::route_batch(&self.ctx, requests)
            .instrument(span)
            .await?;
        if acks.is_empty() {
            return Ok(());
        }
        let tickets: Vec<stage::Ticket> =
            batch.open().into_iter().map(|i| batch.ticket(i)).collect();
        self.acks.spawn(async move {
            for ack in acks {
                ack.await?;
            }
            for t in tickets {
                t.finish();
            }
            Ok(())
        });
        while self.acks.len() > ACKS_IN_FLIGHT {
            if let Some(done) = self.acks.join_next().await {
                self.collect(done);
            }
        }
        Ok(())
    }

    fn wake_at(&self) -> Option<tokio::time::Instant> {
        (!self.acks.is_empty()).then(|| tokio::time::Instant::now() + stage::COMMIT_EVERY)
    }

    async fn tick(&mut self) -> Result<()> {
        while let Some(done) = self.acks.try_join_next() {
            self.collect(done);
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn drain(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        while !self.acks.is_empty() {
            match tokio::time::timeout_at(deadline, self.acks.join_next()).await {
                Ok(Some(done)) => self.collect(done),
                Ok(None) => break,
                Err(_) => {
                    // not acknowledged in time: routed again after the restart
                    self.acks.abort_all();
                    break;
                }
            }
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
