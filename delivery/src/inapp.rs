//! The consumer of `deliveries.inapp`: push each delivery to every live connection of its
//! user. A user with no connection loses nothing: the row is in the inbox, and `resume`
//! replays it.
//!
//! The stage runner ([`tidings_core::stage`]) commits every
//! [`tidings_core::stage::COMMIT_EVERY`], not after each batch: a push is best-effort and
//! already idempotent on the client, so after a crash at most that much is pushed again.

use crate::frames::message_from_delivery;
use async_trait::async_trait;
use tidings_core::bus::Record;
use tidings_core::metrics_names::DELIVERY_ATTEMPTS_TOTAL;
use tidings_core::model::{Channel, Delivery};
use tidings_core::presence::Push;
use tidings_core::stage::{Batch, Handler, Lane};
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    crate::per_lane(&ctx, Channel::Inapp, shutdown, lane).await
}

/// Push the deliveries of one topic (urgent, or the rest).
async fn lane(ctx: Context, topic: String, shutdown: CancellationToken) -> Result<()> {
    let consumer = ctx.bus.consumer(crate::GROUP, &topic).await?;
    let lanes = vec![Lane {
        consumer,
        max: 1024,
    }];
    let handler = Pusher { ctx: ctx.clone() };
    tidings_core::stage::run(ctx, handler, lanes, shutdown).await
}

struct Pusher {
    ctx: Context,
}

#[async_trait]
impl Handler for Pusher {
    type Item = Delivery;

    fn name(&self) -> &'static str {
        "delivery.inapp"
    }

    fn decode(&self, record: &Record) -> Result<Delivery> {
        tidings_schemas::codec().decode_delivery(&record.value)
    }

    async fn handle(&mut self, batch: &mut Batch<Delivery>) -> Result<()> {
        let span =
            tracing::debug_span!("delivery", channel = "inapp", records = batch.open().len());
        async {
            for i in batch.open() {
                push(&self.ctx, &batch.entry(i).item).await?;
                batch.finish(i);
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

async fn push(ctx: &Context, d: &Delivery) -> Result<()> {
    let push = Push {
        message_id: d.message_id.clone(),
        seq: d.seq,
        frame: bytes::Bytes::from(message_from_delivery(d)),
    };
    let reached = ctx.presence.push(&d.tenant_id, &d.user_id, push).await?;
    if reached > 0 {
        crate::observe_latency(d);
        metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "pushed")
            .increment(1);
    } else {
        metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "offline")
            .increment(1);
    }
    Ok(())
}
