//! After a failed attempt: schedule the next one on `retry.<tier>`, or dead-letter it.

use crate::policy::RetryPolicy;
use tidings_core::bus::OutRecord;
use tidings_core::metrics_names::{DLQ_TOTAL, RETRY_SCHEDULED_TOTAL};
use tidings_core::model::*;
use tidings_core::{Context, Result, SHORT_TIER_MS};

/// How a failed attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Scheduled,
    Dead,
}

fn policy_for(ctx: &Context, channel: Channel) -> RetryPolicy {
    match channel {
        Channel::Webhook => RetryPolicy::from(&ctx.config.retry.webhook),
        Channel::Inapp => RetryPolicy::from(&ctx.config.retry.inapp),
    }
}

/// Record a failed attempt of `d`: retriable failures with attempts left go to the retry stage,
/// the rest to the dead-letter queue (topic and store) with the delivery marked failed.
pub async fn attempt_failed(
    ctx: &Context,
    mut d: Delivery,
    error: String,
    retriable: bool,
) -> Result<Outcome> {
    let policy = policy_for(ctx, d.channel);
    let delay = if retriable {
        policy.next_delay(d.attempt, &mut rand::thread_rng())
    } else {
        None
    };
    let codec = tidings_schemas::codec();
    let now = now_ms();
    let key = tidings_core::bus::user_key(&d.tenant_id, &d.user_id);
    let attempts = d.attempt + 1;
    d.last_error = Some(error.clone());
    match delay {
        Some(delay) => {
            d.attempt += 1;
            schedule(ctx, &mut d, delay).await?;
            ctx.set_status(&d, DeliveryState::Retrying, attempts, Some(error))
                .await?;
            metrics::counter!(RETRY_SCHEDULED_TOTAL, "channel" => d.channel.as_str()).increment(1);
            Ok(Outcome::Scheduled)
        }
        None => {
            let encoded = codec.encode_delivery(&d);
            let entry = DlqEntry {
                id: DlqEntry::id_for(&d.message_id, &d.user_id, d.channel),
                kind: DlqKind::Delivery,
                tenant_id: d.tenant_id.clone(),
                message_id: d.message_id.clone(),
                user_id: d.user_id.clone(),
                channel: d.channel,
                attempts,
                error: error.clone(),
                failed_at_ms: now,
                delivery: encoded.clone(),
            };
            ctx.bus
                .append(vec![OutRecord::new(ctx.dlq_topic(), key, encoded)])
                .await?;
            ctx.store.dlq_put(&entry).await?;
            ctx.set_status(&d, DeliveryState::Failed, attempts, Some(error))
                .await?;
            let reason = if retriable { "exhausted" } else { "permanent" };
            metrics::counter!(DLQ_TOTAL, "channel" => d.channel.as_str(), "reason" => reason)
                .increment(1);
            tracing::warn!(channel = %d.channel, attempts, reason, "delivery dead-lettered");
            Ok(Outcome::Dead)
        }
    }
}

/// Hand `d` to the retry stage, due in `delay`, without counting an attempt: a channel defers
/// what it has no room for right now (a tenant over its share), so it never waits in line.
pub async fn defer(ctx: &Context, mut d: Delivery, delay: std::time::Duration) -> Result<()> {
    schedule(ctx, &mut d, delay).await
}

/// Append `d` to the retry tier that holds `delay`, due then.
async fn schedule(ctx: &Context, d: &mut Delivery, delay: std::time::Duration) -> Result<()> {
    d.due_at_ms = now_ms() + delay.as_millis() as i64;
    let tier = if (delay.as_millis() as u64) < SHORT_TIER_MS {
        "short"
    } else {
        "long"
    };
    ctx.bus
        .append(vec![OutRecord::new(
            ctx.retry_topic(tier),
            tidings_core::bus::user_key(&d.tenant_id, &d.user_id),
            tidings_schemas::codec().encode_delivery(d),
        )])
        .await?;
    Ok(())
}
