//! The consumer of `<prefix>.ingest`: `NotificationRequest` records that producers publish
//! straight to the bus. Each is handled exactly like an HTTP send; a record that cannot be
//! decoded, names an unknown or disabled tenant or fails validation goes to `dlq` with the reason and never
//! stalls the partition.

use crate::send::{accept, body_of, validate};
use std::time::Duration;
use tidings_core::metrics_names::DLQ_TOTAL;
use tidings_core::{Context, Error, Result};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-ingest";

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let topic = ctx.config.topic("ingest");
    let mut consumer = ctx.bus.consumer(GROUP, &topic).await?;
    let codec = tidings_schemas::codec();
    loop {
        let records = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = consumer.poll(256, Duration::from_secs(1)) => r?,
        };
        if records.is_empty() {
            continue;
        }
        for r in &records {
            let outcome: Result<()> = async {
                let req = codec.decode_request(&r.value)?;
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
                let valid = validate(&ctx, &ctx.route_templates, &tenant, body_of(&req)).await?;
                accept(&ctx, valid).await.map(|_| ())
            }
            .await;
            match outcome {
                Ok(()) => {}
                Err(e) if e.is_retriable() => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        code = e.code,
                        partition = r.partition,
                        offset = r.offset,
                        "ingest record dead-lettered"
                    );
                    metrics::counter!(DLQ_TOTAL, "channel" => "ingest", "reason" => "invalid")
                        .increment(1);
                    ctx.dead_letter(r, &e).await?;
                }
            }
        }
        consumer.commit_records(&records).await?;
    }
}
