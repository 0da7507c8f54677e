//! The consumer of `<prefix>.audience`: every delivery node reads all of it, in a consumer
//! group of its own (`tidings-delivery-<node id>`), starting from the end when the node is new.
//!
//! - a `push` record is one message to audiences: its frame, encoded once by the router, goes
//!   to each local connection of the audiences' members (the presence index), once each;
//! - a `members` record says which audiences a user is in now, after a subscribe, an
//!   unsubscribe or a change of tags: the index follows it.
//!
//! A push is best-effort like every push: a connection that misses one (it connected a moment
//! later, it was slow) finds the message in its inbox and gets it with `resume`.

use async_trait::async_trait;
use tidings_core::bus::{Record, Start};
use tidings_core::metrics_names::{DELIVERY_AUDIENCE_PUSHES_TOTAL, DELIVERY_LATENCY_SECONDS};
use tidings_core::model::{now_ms, AudienceRecord};
use tidings_core::presence::Push;
use tidings_core::stage::{Batch, Handler, Lane};
use tidings_core::{Context, Result};
use tokio_util::sync::CancellationToken;

/// The consumer group of this node on the audience topic.
pub fn group(ctx: &Context) -> String {
    format!("{}-{}", crate::GROUP, ctx.config.node_id)
}

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let consumer = ctx
        .bus
        .consumer_from(&group(&ctx), &ctx.audience_topic(), Start::Latest)
        .await?;
    let lanes = vec![Lane {
        consumer,
        max: 1024,
    }];
    let handler = Fanout { ctx: ctx.clone() };
    tidings_core::stage::run(ctx, handler, lanes, shutdown).await
}

struct Fanout {
    ctx: Context,
}

#[async_trait]
impl Handler for Fanout {
    type Item = AudienceRecord;

    fn name(&self) -> &'static str {
        "delivery.audience"
    }

    fn decode(&self, record: &Record) -> Result<AudienceRecord> {
        tidings_schemas::codec().decode_audience(&record.value)
    }

    async fn handle(&mut self, batch: &mut Batch<AudienceRecord>) -> Result<()> {
        for i in batch.open() {
            apply(&self.ctx, &batch.entry(i).item);
            batch.finish(i);
        }
        Ok(())
    }
}

fn apply(ctx: &Context, r: &AudienceRecord) {
    match r {
        AudienceRecord::Push {
            tenant_id,
            message_id,
            audiences,
            seq,
            priority,
            frame,
            accepted_at_ms,
        } => {
            let push = Push {
                message_id: message_id.clone(),
                seq: *seq,
                frame: bytes::Bytes::from(frame.clone()),
            };
            let reached = ctx.presence.push_audience(tenant_id, audiences, *seq, push);
            metrics::counter!(DELIVERY_AUDIENCE_PUSHES_TOTAL).increment(reached as u64);
            if reached > 0 {
                let latency = (now_ms() - accepted_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(DELIVERY_LATENCY_SECONDS,
                    "priority" => priority.as_str(), "channel" => "inapp")
                .record(latency);
            }
        }
        AudienceRecord::Members {
            tenant_id,
            user_id,
            memberships,
        } => ctx
            .presence
            .set_memberships(tenant_id, user_id, memberships),
    }
}

/// Load the audiences of a user who just connected here into the index.
/// A `members` record applied while the store is read wins: it is at least as fresh.
pub async fn load_members(ctx: &Context, tenant: &str, user: &str) -> Result<()> {
    let version = ctx.presence.membership_version(tenant, user);
    let memberships = ctx.store.memberships(tenant, user).await?;
    ctx.presence
        .load_memberships(tenant, user, &memberships, version);
    Ok(())
}
