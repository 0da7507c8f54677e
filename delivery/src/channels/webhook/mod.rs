//! The webhook channel: each delivery is POSTed as JSON to the tenant's endpoint, signed with
//! HMAC-SHA256 over `"<timestamp>.<body>"` using the tenant's webhook secret:
//!
//! ```text
//! X-Tidings-Timestamp: 1763900000
//! X-Tidings-Signature: v1=<hex hmac>[,v1=<hex hmac>]  (during a secret rotation's overlap,
//!                                                   one per secret, newest first)
//! X-Tidings-Message-Id: <message id>   (receivers dedupe on it: delivery is at-least-once)
//! ```
//!
//! 2xx is success; 408, 429, 5xx, timeouts and connection errors are retried by the retry
//! stage; any other 4xx, and any 3xx (redirects are never followed), is permanent and goes to
//! the dead-letter queue. Requests go through the egress guard ([`super::http_client`]).

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings_core::bus::Record;
use tidings_core::metrics_names::DELIVERY_ATTEMPTS_TOTAL;
use tidings_core::model::*;
use tidings_core::stage::{Batch, Handler, Lane};
use tidings_core::{Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: String,
    pub retriable: bool,
}

/// Classify an HTTP status: `None` for success.
pub fn classify_status(status: u16) -> Option<Failure> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(Failure {
            error: format!("http {status}"),
            retriable: true,
        }),
        _ => Some(Failure {
            error: format!("http {status}"),
            retriable: false,
        }),
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body of a delivery: the template's webhook variant, or a standard envelope.
pub fn body_of(d: &Delivery) -> String {
    match &d.payload {
        Some(p) => p.clone(),
        None => serde_json::json!({
            "message_id": d.message_id, "user": d.user_id, "title": d.title, "body": d.body,
            "data": d.data, "priority": d.priority, "category": d.category,
            "created_at": rfc3339(d.created_at_ms), "attempt": d.attempt,
        })
        .to_string(),
    }
}

/// POST one delivery, signed with each of `secrets`; `Ok(())` on a 2xx.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    secrets: &[&str],
    d: &Delivery,
) -> std::result::Result<(), Failure> {
    let body = body_of(d);
    let ts = now_ms() / 1000;
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| signature(s, ts, body.as_bytes()))
        .collect();
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-tidings-timestamp", ts.to_string())
        .header("x-tidings-signature", signatures.join(","))
        .header("x-tidings-message-id", &d.message_id)
        .body(body)
        .send()
        .await;
    match res {
        Ok(r) => match classify_status(r.status().as_u16()) {
            None => Ok(()),
            Some(f) => Err(f),
        },
        Err(e) => {
            let error = super::describe(&e);
            Err(Failure {
                error: error.into(),
                retriable: error != super::REFUSED,
            })
        }
    }
}

/// The consumer of `deliveries.webhook` and `deliveries.webhook.urgent`.
pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    crate::per_lane(&ctx, Channel::Webhook, shutdown, lane).await
}

/// Deliveries read and not yet finished, per lane; past it the lane stops reading.
const MAX_IN_FLIGHT: usize = 4096;
/// A tenant with this many times its concurrency waiting has the rest deferred to the retry
/// stage (no attempt counted), so its backlog never fills the lane.
const TENANT_BACKLOG: usize = 8;
/// How long a deferred delivery waits before it is offered again, per backlog's worth of
/// its tenant's deliveries in line, up to [`MAX_DEFER`].
const DEFER: Duration = Duration::from_secs(1);
const MAX_DEFER: Duration = Duration::from_secs(30);

/// One tenant's share of a lane: its own concurrency bound, and how many of its deliveries
/// are waiting or running.
#[derive(Clone)]
struct Share {
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

/// Post the deliveries of one topic (urgent, or the rest).
///
/// Each delivery runs in a task of its own under two bounds: the lane's `webhook.concurrency`
/// and its tenant's `webhook.per_tenant_concurrency`, so a slow or hanging endpoint holds
/// only its own tenant's share and nobody waits behind it. The lane keeps reading while
/// posts run (each holds a [`tidings_core::stage::Ticket`]), and the runner commits each partition up to its
/// oldest unfinished delivery.
async fn lane(ctx: Context, topic: String, shutdown: CancellationToken) -> Result<()> {
    let consumer = ctx.bus.consumer(crate::GROUP, &topic).await?;
    let client = super::http_client(
        ctx.config.egress.allow_private,
        Duration::from_millis(ctx.config.webhook.timeout_ms),
    )?;
    let concurrency = ctx.config.webhook.concurrency.max(1);
    let poster = Poster {
        ctx: ctx.clone(),
        client,
        per_tenant: ctx.config.webhook.per_tenant_concurrency.max(1),
        global: Arc::new(Semaphore::new(concurrency)),
        shares: HashMap::new(),
        running: JoinSet::new(),
    };
    let lanes = vec![Lane {
        consumer,
        max: concurrency * 4,
    }];
    tidings_core::stage::run(ctx, poster, lanes, shutdown).await
}

struct Poster {
    ctx: Context,
    client: reqwest::Client,
    per_tenant: usize,
    global: Arc<Semaphore>,
    shares: HashMap<String, Share>,
    running: JoinSet<Result<()>>,
}

impl Poster {
    fn collect(
        &mut self,
        done: std::result::Result<Result<()>, tokio::task::JoinError>,
    ) -> Result<()> {
        // a failure to record an outcome (store or bus down) restarts the lane; what was not
        // committed is posted again
        done.map_err(|e| tidings_core::Error::internal(format!("a webhook post panicked: {e}")))?
    }
}

#[async_trait]
impl Handler for Poster {
    type Item = Delivery;

    fn name(&self) -> &'static str {
        "delivery.webhook"
    }

    fn decode(&self, record: &Record) -> Result<Delivery> {
        tidings_schemas::codec().decode_delivery(&record.value)
    }

    async fn handle(&mut self, batch: &mut Batch<Delivery>) -> Result<()> {
        for i in batch.open() {
            let d = batch.entry(i).item.clone();
            let ticket = batch.ticket(i);
            let share = self
                .shares
                .entry(d.tenant_id.clone())
                .or_insert_with(|| Share {
                    permits: Arc::new(Semaphore::new(self.per_tenant)),
                    queued: Arc::default(),
                })
                .clone();
            let (ctx, client, global) =
                (self.ctx.clone(), self.client.clone(), self.global.clone());
            let per_tenant = self.per_tenant;
            share.queued.fetch_add(1, Ordering::Relaxed);
            self.running.spawn(async move {
                let result = post_in_share(&ctx, &client, &global, &share, per_tenant, d).await;
                share.queued.fetch_sub(1, Ordering::Relaxed);
                if result.is_ok() {
                    ticket.finish();
                }
                result
            });
        }
        // forget tenants with nothing queued
        if self.shares.len() > 1024 {
            self.shares
                .retain(|_, s| s.queued.load(Ordering::Relaxed) > 0);
        }
        Ok(())
    }

    fn full(&self) -> bool {
        self.running.len() >= MAX_IN_FLIGHT
    }

    /// While posts run, look in every commit period: finished ones free room and offsets.
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        (!self.running.is_empty())
            .then(|| tokio::time::Instant::now() + tidings_core::stage::COMMIT_EVERY)
    }

    async fn tick(&mut self) -> Result<()> {
        while let Some(done) = self.running.try_join_next() {
            self.collect(done)?;
        }
        Ok(())
    }

    async fn drain(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        // posts in flight finish (bounded by the request timeout); the rest is posted again
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(done)) => self.collect(done)?,
                Ok(None) => break,
                Err(_) => {
                    self.running.abort_all();
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Post `d` within its tenant's share, or defer it when the tenant's backlog is full.
async fn post_in_share(
    ctx: &Context,
    client: &reqwest::Client,
    global: &Semaphore,
    share: &Share,
    per_tenant: usize,
    d: Delivery,
) -> Result<()> {
    let queued = share.queued.load(Ordering::Relaxed);
    let backlog = per_tenant * TENANT_BACKLOG;
    if queued > backlog {
        metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "webhook", "outcome" => "deferred")
            .increment(1);
        // the longer the tenant's line, the later it comes back (1 s per backlog's worth)
        let delay = (DEFER * (queued / backlog) as u32).min(MAX_DEFER);
        return tidings_retry::fail::defer(ctx, d, delay).await;
    }
    let _mine = share
        .permits
        .acquire()
        .await
        .map_err(|_| tidings_core::Error::internal("tenant share closed"))?;
    let _lane = global
        .acquire()
        .await
        .map_err(|_| tidings_core::Error::internal("lane closed"))?;
    let tenant = ctx.hot.tenant(ctx.store.as_ref(), &d.tenant_id).await?;
    let span = tracing::info_span!("delivery", channel = "webhook");
    attempt(ctx, client, d, tenant).instrument(span).await
}

async fn attempt(
    ctx: &Context,
    client: &reqwest::Client,
    d: Delivery,
    tenant: Option<Tenant>,
) -> Result<()> {
    let outcome = match tenant.as_ref().and_then(|t| {
        let mut secrets = vec![t.webhook_secret.as_str()];
        secrets.extend(t.previous_at(now_ms()).map(|p| p.webhook_secret.as_str()));
        t.webhook_url.as_deref().map(|u| (u, secrets))
    }) {
        // checked again: an address literal never reaches the resolver, and the URL may
        // have been stored before the guard existed
        Some((url, secrets)) => {
            match tidings_core::egress::check_url(url, ctx.config.egress.allow_private) {
                Ok(_) => post(client, url, &secrets, &d).await,
                Err(e) => Err(Failure {
                    error: e.message,
                    retriable: false,
                }),
            }
        }
        None => Err(Failure {
            error: "the tenant has no webhook endpoint".into(),
            retriable: false,
        }),
    };
    match outcome {
        Ok(()) => {
            crate::observe_latency(&d);
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "webhook", "outcome" => "delivered").increment(1);
            ctx.set_status(&d, DeliveryState::Delivered, d.attempt + 1, None)
                .await?;
            crate::publish_events(
                ctx,
                &d.tenant_id,
                &d.user_id,
                Channel::Webhook,
                std::slice::from_ref(&d.message_id),
                EventKind::Delivered,
                None,
            )
            .await;
            Ok(())
        }
        Err(f) => {
            tracing::info!(attempt = d.attempt, error = %f.error, retriable = f.retriable, "webhook attempt failed");
            let (tenant_id, user_id, message_id) =
                (d.tenant_id.clone(), d.user_id.clone(), d.message_id.clone());
            let out =
                tidings_retry::fail::attempt_failed(ctx, d, f.error.clone(), f.retriable).await?;
            let outcome = match out {
                tidings_retry::fail::Outcome::Scheduled => "retry",
                tidings_retry::fail::Outcome::Dead => "dead",
            };
            metrics::counter!(DELIVERY_ATTEMPTS_TOTAL, "channel" => "webhook", "outcome" => outcome).increment(1);
            let kind = if outcome == "dead" {
                EventKind::Failed
            } else {
                EventKind::Retrying
            };
            crate::publish_events(
                ctx,
                &tenant_id,
                &user_id,
                Channel::Webhook,
                &[message_id],
                kind,
                Some(f.error),
            )
            .await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(204), None);
        assert!(classify_status(500).unwrap().retriable);
        assert!(classify_status(429).unwrap().retriable);
        assert!(classify_status(408).unwrap().retriable);
        assert!(!classify_status(400).unwrap().retriable);
        assert!(!classify_status(410).unwrap().retriable);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // expected value computed independently with Python's hmac module
        assert_eq!(
            signature("secret", 1700000000, b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
