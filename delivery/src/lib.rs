//! The delivery stage.
//!
//! - [`ws`]: the realtime connection (`/v1/ws`): auth, frames, ack/read, resume, heartbeats
//! - [`inbox`]: the user's inbox API (`/v1/inbox`), authenticated with the user JWT
//! - [`inapp`]: the consumer of `deliveries.inapp` that pushes to live connections
//! - [`audience`]: the consumer of `audience` that pushes a message to audiences once to each
//!   local connection of their members, and keeps the index of who is in which audience
//!
//! Each channel reads two topics, `deliveries.<channel>.urgent` and `deliveries.<channel>`,
//! in tasks of their own: an urgent delivery never waits behind a fan-out backlog.
//! - [`channels`]: external channels; [`channels::webhook`] is the signed HTTP POST
//! - [`settle`]: acks and reads of every connection, persisted together
//! - [`frames`]: the JSON frames the server sends
//! - [`user_auth`]: JWT checks shared by `ws` and `inbox`

pub mod audience;
pub mod channels;
pub mod frames;
pub mod inapp;
pub mod inbox;
pub mod settle;
pub mod user_auth;
pub mod ws;

use axum::Router;
use std::future::Future;
use tidings_core::model::{now_ms, Channel, DeliveryEvent, EventKind};
use tidings_core::{bus::OutRecord, Context, Error, Result};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "tidings-delivery";

/// Run `lane` on each delivery topic of `channel`, each in a task of its own; ends with the
/// first lane that fails (the others are stopped), or when all have stopped.
async fn per_lane<F, Fut>(
    ctx: &Context,
    channel: Channel,
    shutdown: CancellationToken,
    lane: F,
) -> Result<()>
where
    F: Fn(Context, String, CancellationToken) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut lanes = tokio::task::JoinSet::new();
    for (i, topic) in ctx.delivery_topics(channel).into_iter().enumerate() {
        // the urgent lane's writes (offset commits) overtake bulk ones (see `hint`)
        let urgent = i == 0;
        lanes.spawn(tidings_core::hint::urgent_if(
            urgent,
            lane(ctx.clone(), topic, shutdown.clone()),
        ));
    }
    while let Some(r) = lanes.join_next().await {
        r.map_err(|e| Error::internal(format!("a delivery lane panicked: {e}")))??;
    }
    Ok(())
}

/// The routes the delivery stage serves (with one ack and read writer for both).
pub fn routes(ctx: Context, shutdown: tokio_util::sync::CancellationToken) -> Router {
    let settler = settle::Settler::start(ctx.clone());
    inbox::routes(ctx.clone(), settler.clone()).merge(ws::routes(ctx, settler, shutdown))
}

/// Observe the end-to-end latency of `d` (ingest acceptance to push or post), now.
fn observe_latency(d: &tidings_core::model::Delivery) {
    let latency = (now_ms() - d.accepted_at_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(tidings_core::metrics_names::DELIVERY_LATENCY_SECONDS,
        "priority" => d.priority.as_str(), "channel" => d.channel.as_str())
    .record(latency);
}

/// Delivery events of one user, for [`publish_event_groups`].
pub struct EventGroup {
    pub tenant: String,
    pub user: String,
    pub channel: Channel,
    pub ids: Vec<String>,
    pub kind: EventKind,
    pub error: Option<String>,
}

/// Publish the delivery events of many users on `events` in one append (best effort:
/// statuses are already in the store).
pub async fn publish_event_groups(ctx: &Context, groups: &[EventGroup]) {
    let codec = tidings_schemas::codec();
    let at = now_ms();
    let mut records = Vec::new();
    for g in groups {
        for id in &g.ids {
            let e = DeliveryEvent {
                tenant_id: g.tenant.clone(),
                message_id: id.clone(),
                user_id: g.user.clone(),
                channel: g.channel,
                kind: g.kind,
                at_ms: at,
                error: g.error.clone(),
            };
            records.push(OutRecord::new(
                ctx.events_topic(),
                tidings_core::bus::user_key(&g.tenant, &g.user),
                codec.encode_event(&e),
            ));
        }
        metrics::counter!(tidings_core::metrics_names::EVENTS_TOTAL, "kind" => g.kind.as_str())
            .increment(g.ids.len() as u64);
    }
    if records.is_empty() {
        return;
    }
    if let Err(e) = ctx.bus.append(records).await {
        tracing::warn!(error = %e, "cannot publish delivery events");
    }
}

/// Publish one user's delivery events on `events` (best effort: statuses are already in the
/// store).
pub async fn publish_events(
    ctx: &Context,
    tenant: &str,
    user: &str,
    channel: Channel,
    ids: &[String],
    kind: EventKind,
    error: Option<String>,
) {
    let group = EventGroup {
        tenant: tenant.to_string(),
        user: user.to_string(),
        channel,
        ids: ids.to_vec(),
        kind,
        error,
    };
    publish_event_groups(ctx, &[group]).await;
}
