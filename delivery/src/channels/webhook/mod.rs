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

use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;
use tidings_core::metrics_names::DELIVERY_ATTEMPTS_TOTAL;
use tidings_core::model::*;
use tidings_core::{Context, Result};
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
                // an address the guard refuses stays refused
                retriable: error != "destination address not allowed",
            })
        }
    }
}

/// The consumer of `deliveries.webhook` and `deliveries.webhook.urgent`.
pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    crate::per_lane(&ctx, Channel::Webhook, shutdown, lane).await
}

/// Post the deliveries of one topic (urgent, or the rest).
async fn lane(ctx: Context, topic: String, shutdown: CancellationToken) -> Result<()> {
    let mut consumer = ctx.bus.consumer(crate::GROUP, &topic).await?;
    let client = super::http_client(
        ctx.config.egress.allow_private,
        Duration::from_millis(ctx.config.webhook.timeout_ms),
    )?;
    let concurrency = ctx.config.webhook.concurrency.max(1);
    let codec = tidings_schemas::codec();
    loop {
        let records = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = consumer.poll(concurrency * 4, Duration::from_secs(1)) => r?,
        };
        if records.is_empty() {
            continue;
        }
        let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
        let mut jobs = Vec::new();
        for r in &records {
            let d = match codec.decode_delivery(&r.value) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable webhook delivery skipped");
                    continue;
                }
            };
            if !tenants.contains_key(&d.tenant_id) {
                let t = ctx.store.tenant(&d.tenant_id).await?;
                tenants.insert(d.tenant_id.clone(), t);
            }
            let tenant = tenants.get(&d.tenant_id).cloned().flatten();
            jobs.push((d, tenant));
        }
        let span = tracing::info_span!("delivery", channel = "webhook", records = jobs.len());
        let results: Vec<Result<()>> = futures::stream::iter(jobs)
            .map(|(d, tenant)| {
                let (ctx, client) = (&ctx, &client);
                async move { attempt(ctx, client, d, tenant).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .instrument(span)
            .await;
        // a failure to record an outcome (store or bus down) leaves the batch uncommitted
        results.into_iter().collect::<Result<Vec<()>>>()?;
        consumer.commit_records(&records).await?;
    }
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
