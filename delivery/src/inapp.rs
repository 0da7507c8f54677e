//! The consumer of `deliveries.inapp`: push each delivery to every live connection of its
//! user. A user with no connection loses nothing: the row is in the inbox, and `resume`
//! replays it.

use crate::frames::message_from_delivery;
use std::sync::Arc;
use std::time::Duration;
use tidings_core::bus::Record;
use tidings_core::metrics_names::{DELIVERY_ATTEMPTS_TOTAL, DELIVERY_LATENCY_SECONDS};
use tidings_core::model::{now_ms, Channel};
use tidings_core::presence::Push;
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let mut consumer = ctx
        .bus
        .consumer(crate::GROUP, &ctx.deliveries_topic(Channel::Inapp))
        .await?;
    loop {
        let records = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = consumer.poll(1024, Duration::from_secs(1)) => r?,
        };
        if records.is_empty() {
            continue;
        }
        let span = tracing::debug_span!("delivery", channel = "inapp", records = records.len());
        push_all(&ctx, &records).instrument(span).await?;
        consumer.commit_records(&records).await?;
    }
}

async fn push_all(ctx: &Context, records: &[Record]) -> Result<()> {
    let codec = tidings_schemas::codec();
    for r in records {
        let d = match codec.decode_delivery(&r.value) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, offset = r.offset, "undecodable delivery skipped");
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
            let latency = (now_ms() - d.accepted_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(DELIVERY_LATENCY_SECONDS, "priority" => d.priority.as_str(), "channel" => "inapp").record(latency);
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "pushed")
                .increment(1);
        } else {
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "inapp", "outcome" => "offline").increment(1);
        }
    }
    Ok(())
}
