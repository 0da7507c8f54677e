//! The consumer of `<prefix>.ingest`: `NotificationRequest` records that producers publish
//! straight to the bus. Each is handled exactly like an HTTP send. A record that cannot be
//! decoded, names an unknown or disabled tenant or fails validation goes to `dlq` with the
//! reason (the stage runner does it, counted by reason) and never stalls the partition.

use crate::send::{accept, body_of, validate};
use async_trait::async_trait;
use tidings_core::bus::Record;
use tidings_core::model::NotificationRequest;
use tidings_core::stage::{Batch, Handler, Lane};
use tidings_core::{Context, Error, Result};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-ingest";

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let topic = ctx.config.topic("ingest");
    let consumer = ctx.bus.consumer(GROUP, &topic).await?;
    let lanes = vec![Lane { consumer, max: 256 }];
    tidings_core::stage::run(ctx.clone(), IngestTopic { ctx }, lanes, shutdown).await
}

struct IngestTopic {
    ctx: Context,
}

#[async_trait]
impl Handler for IngestTopic {
    type Item = NotificationRequest;

    fn name(&self) -> &'static str {
        "ingest"
    }

    fn decode(&self, record: &Record) -> Result<NotificationRequest> {
        tidings_schemas::codec().decode_request(&record.value)
    }

    /// One record at a time, each finished as soon as it is accepted: a retry after a
    /// passing failure never accepts a record twice, and a record that fails for good stops
    /// the batch so the runner dead-letters just it.
    async fn handle(&mut self, batch: &mut Batch<NotificationRequest>) -> Result<()> {
        let ctx = &self.ctx;
        for i in batch.open() {
            let req = &batch.entry(i).item;
            let tenant = ctx.store.tenant(&req.tenant_id).await?.ok_or_else(|| {
                Error::invalid(
                    "tenant_not_found",
                    format!("tenant `{}` does not exist", req.tenant_id),
                )
            })?;
            if tenant.disabled {
                return Err(tidings_core::http::tenant_disabled());
            }
            // records cannot be answered later: wait for a renderer, never `render_busy`
            let valid = validate(ctx, &ctx.route_templates, &tenant, body_of(req)).await?;
            accept(ctx, valid).await?;
            batch.finish(i);
        }
        Ok(())
    }
}
