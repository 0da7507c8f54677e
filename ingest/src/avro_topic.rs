//! The consumer of `<prefix>.ingest`: `NotificationRequest` records that producers publish
//! straight to the bus in the Confluent wire format. Each is handled exactly like an HTTP
//! send. A record that cannot be used goes to `dlq` with its reason and never stalls the
//! partition (the stage runner does it, counted by reason): `truncated_record`,
//! `bad_magic_byte`, `unknown_schema_id`, `undecodable`, or the code validation gives (an
//! unknown or disabled tenant, a bad recipient list...).
//!
//! Schema ids resolve through the schema registry when `bus.schema_registry_url` is set:
//! a record written with another version of the schema (a field added with a default, one
//! removed) decodes by Avro schema resolution against the writer's schema. Without a
//! registry, ids are the ones pinned in `schemas/manifest.json`.

use crate::send::{accept, body_of, validate};
use async_trait::async_trait;
use tidings_core::bus::Record;
use tidings_core::model::NotificationRequest;
use tidings_core::stage::{Batch, Handler, Lane};
use tidings_core::{Context, Error, Result};
use tidings_schemas::registry::Registry;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-ingest";

pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let topic = ctx.config.topic("ingest");
    let consumer = ctx.bus.consumer(GROUP, &topic).await?;
    let lanes = vec![Lane { consumer, max: 256 }];
    let url = &ctx.config.bus.schema_registry_url;
    let registry = (!url.is_empty()).then(|| Registry::new(url)).transpose()?;
    let handler = IngestTopic {
        ctx: ctx.clone(),
        registry,
    };
    tidings_core::stage::run(ctx, handler, lanes, shutdown).await
}

struct IngestTopic {
    ctx: Context,
    registry: Option<Registry>,
}

/// A record as the runner hands it over: decoded with a pinned schema, or framed with a
/// registry id still to resolve (an async lookup, done in `handle`).
enum Incoming {
    Decoded(Box<NotificationRequest>),
    Written { id: u32, body: Vec<u8> },
}

#[async_trait]
impl Handler for IngestTopic {
    type Item = Incoming;

    fn name(&self) -> &'static str {
        "ingest"
    }

    fn decode(&self, record: &Record) -> Result<Incoming> {
        match self.registry {
            None => Ok(Incoming::Decoded(Box::new(
                tidings_schemas::codec().decode_request(&record.value)?,
            ))),
            Some(_) => {
                let (id, body) = tidings_schemas::unframe(&record.value)?;
                Ok(Incoming::Written {
                    id,
                    body: body.to_vec(),
                })
            }
        }
    }

    /// One record at a time, each finished as soon as it is accepted: a retry after a
    /// passing failure never accepts a record twice, and a record that fails for good stops
    /// the batch so the runner dead-letters just it.
    async fn handle(&mut self, batch: &mut Batch<Incoming>) -> Result<()> {
        let ctx = &self.ctx;
        for i in batch.open() {
            let req = match (&batch.entry(i).item, &self.registry) {
                (Incoming::Decoded(req), _) => (**req).clone(),
                (Incoming::Written { id, body }, Some(registry)) => {
                    let writer = registry.schema(*id).await?;
                    tidings_schemas::codec().decode_request_written_with(&writer, body)?
                }
                (Incoming::Written { .. }, None) => {
                    return Err(Error::internal("a registry record without a registry"))
                }
            };
            let req = &req;
            let tenant = ctx
                .hot
                .tenant(ctx.store.as_ref(), &req.tenant_id)
                .await?
                .ok_or_else(|| {
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
