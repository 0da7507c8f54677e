//! Accepting a send: validate, render-check, assign an id, claim the idempotency key, append
//! durably. A 202 is answered only after [`accept`] returns.

use serde::Deserialize;
use std::time::Instant;
use tidings_core::metrics_names::{INGEST_ACCEPT_SECONDS, INGEST_REQUESTS_TOTAL};
use tidings_core::model::*;
use tidings_core::store::Claim;
use tidings_core::{bus::OutRecord, template, Context, Error, ErrorKind, Result};

/// The JSON body of `POST /v1/messages`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    #[serde(default)]
    pub to: Recipients,
    pub template: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    pub locale: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub priority: Option<String>,
    pub category: Option<String>,
    pub channels: Option<Vec<String>>,
    pub idempotency_key: Option<String>,
    pub ttl_seconds: Option<i64>,
    pub send_at: Option<String>,
}

/// What [`accept`] answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub message_id: String,
    /// True when an earlier send with the same idempotency key answered this id.
    pub duplicate: bool,
}

const MAX_ID_LEN: usize = 256;

fn check_ids(kind: &str, ids: &[String], limit: usize) -> Result<()> {
    if ids.len() > limit {
        return Err(Error::invalid(
            "too_many_recipients",
            format!("to.{kind}: {} entries; the limit is {limit}", ids.len()),
        ));
    }
    if let Some(bad) = ids.iter().find(|i| i.is_empty() || i.len() > MAX_ID_LEN) {
        return Err(Error::invalid(
            "invalid_recipient",
            format!("to.{kind}: `{bad}` must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    Ok(())
}

/// Turn a send body into a request: every check that can fail is done here, so nothing the
/// pipeline accepts fails later for a reason the producer could have been told.
///
/// Templates render on `renderer`: the API's (a busy tenant is refused with `render_busy`)
/// for HTTP sends, one that waits for its turn for records of the Avro ingest topic, which
/// cannot be answered later.
pub async fn validate(
    ctx: &Context,
    renderer: &template::Renderer,
    tenant: &Tenant,
    body: SendBody,
) -> Result<NotificationRequest> {
    let limits = &ctx.config.limits;
    if body.to.is_empty() {
        return Err(Error::invalid(
            "no_recipients",
            "to: name users, topics, tags or broadcast",
        ));
    }
    check_ids("users", &body.to.users, limits.max_listed_recipients)?;
    check_ids("topics", &body.to.topics, limits.max_listed_recipients)?;
    check_ids("tags", &body.to.tags, limits.max_listed_recipients)?;
    let priority = match &body.priority {
        None => Priority::Normal,
        Some(p) => p
            .parse()
            .map_err(|m: String| Error::invalid("invalid_priority", m))?,
    };
    let mut channels = Vec::new();
    for c in body
        .channels
        .clone()
        .unwrap_or_else(|| vec!["inapp".into()])
    {
        let c: Channel = c
            .parse()
            .map_err(|m: String| Error::invalid("invalid_channel", m))?;
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.is_empty() {
        return Err(Error::invalid(
            "invalid_channel",
            "channels: name at least one channel",
        ));
    }
    if channels.contains(&Channel::Webhook) && tenant.webhook_url.is_none() {
        return Err(Error::invalid(
            "channel_not_configured",
            "channels: webhook needs the tenant's webhook endpoint (PUT /v1/webhook)",
        ));
    }
    let data = body
        .data
        .clone()
        .unwrap_or(serde_json::Value::Object(Default::default()));
    if !data.is_object() {
        return Err(Error::invalid(
            "invalid_request",
            "data: must be a JSON object",
        ));
    }
    let template_version = match &body.template {
        Some(key) => {
            let tpl = ctx
                .hot
                .template(ctx.store.as_ref(), &tenant.id, key)
                .await?
                .ok_or_else(|| {
                    Error::invalid(
                        "template_not_found",
                        format!("template `{key}` does not exist"),
                    )
                })?;
            renderer
                .render(
                    &tenant.id,
                    &tpl,
                    &data,
                    body.locale.as_deref(),
                    template::Mode::Strict,
                )
                .await?;
            // the router renders this version, whatever is saved meanwhile
            Some(tpl.version.max(1))
        }
        None => {
            if body.title.as_deref().unwrap_or("").is_empty()
                && body.body.as_deref().unwrap_or("").is_empty()
            {
                return Err(Error::invalid(
                    "missing_content",
                    "give a template, or a title or body",
                ));
            }
            None
        }
    };
    if body.ttl_seconds.is_some_and(|t| t <= 0) {
        return Err(Error::invalid(
            "invalid_ttl",
            "ttl_seconds: must be positive",
        ));
    }
    if let Some(at) = &body.send_at {
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                Error::invalid("invalid_send_at", format!("send_at: not RFC 3339: {e}"))
            })?;
        if (t.unix_timestamp_nanos() / 1_000_000) as i64 > now_ms() + 1000 {
            return Err(Error::invalid(
                "send_at_unsupported",
                "send_at: scheduled sends are not supported by this version yet",
            ));
        }
    }
    if body
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_ID_LEN)
    {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!("idempotency_key: must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    Ok(NotificationRequest {
        message_id: String::new(),
        tenant_id: tenant.id.clone(),
        to: body.to,
        template: body.template,
        template_version,
        data,
        locale: body.locale,
        title: body.title,
        body: body.body,
        priority,
        category: body.category,
        channels,
        idempotency_key: body.idempotency_key,
        ttl_seconds: body.ttl_seconds,
        send_at_ms: None,
        accepted_at_ms: 0,
    })
}

/// Assign the id, apply the idempotency key and append durably to `requests.<priority>`.
pub async fn accept(ctx: &Context, req: NotificationRequest) -> Result<Accepted> {
    // an urgent send's writes overtake bulk ones queued for the disk
    let urgent = req.priority == Priority::Urgent;
    tidings_core::hint::urgent_if(urgent, accept_inner(ctx, req)).await
}

/// What makes two sends with one idempotency key the same request: every field the producer
/// chose, hashed.
pub fn fingerprint(req: &NotificationRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut r = req.clone();
    r.message_id.clear();
    r.accepted_at_ms = 0;
    // set by ingest, not the producer: a template saved between two retries is no conflict
    r.template_version = None;
    let canonical = tidings_schemas::codec().encode_request(&r);
    hex::encode(Sha256::digest(&canonical))
}

async fn accept_inner(ctx: &Context, mut req: NotificationRequest) -> Result<Accepted> {
    let started = Instant::now();
    let priority = req.priority.as_str();
    req.message_id = new_message_id();
    req.accepted_at_ms = now_ms();
    let mut duplicate = false;
    let fp = if req.idempotency_key.is_some() {
        fingerprint(&req)
    } else {
        String::new()
    };
    if let Some(key) = &req.idempotency_key {
        let ttl = ctx.config.store.idempotency_ttl_seconds as i64 * 1000;
        let claim = ctx
            .store
            .claim_idempotency(
                &req.tenant_id,
                key,
                &req.message_id,
                &fp,
                req.accepted_at_ms,
                ttl,
            )
            .await?;
        if let Claim::Existing {
            message_id,
            fingerprint,
            confirmed,
        } = claim
        {
            if !fingerprint.is_empty() && fingerprint != fp {
                metrics::counter!(INGEST_REQUESTS_TOTAL, "priority" => priority, "outcome" => "conflict").increment(1);
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "idempotency_conflict",
                    format!("idempotency_key `{key}` was used for a different request (message {message_id})"),
                ));
            }
            metrics::counter!(INGEST_REQUESTS_TOTAL, "priority" => priority, "outcome" => "duplicate").increment(1);
            if confirmed {
                return Ok(Accepted {
                    message_id,
                    duplicate: true,
                });
            }
            // the first attempt may have stopped between its claim and its append: append
            // again under the claimed id (the pipeline is idempotent by message id)
            req.message_id = message_id;
            duplicate = true;
        }
    }
    tidings_core::fail_point("ingest.after_claim");
    let record = OutRecord::new(
        ctx.requests_topic(req.priority),
        request_key(&req),
        tidings_schemas::codec().encode_request(&req),
    );
    if let Err(e) = ctx.bus.append(vec![record]).await {
        if let Some(key) = req.idempotency_key.as_ref().filter(|_| !duplicate) {
            // the send was not accepted: let a retry of it claim the key again
            let _ = ctx
                .store
                .release_idempotency(&req.tenant_id, key, &req.message_id)
                .await;
        }
        metrics::counter!(INGEST_REQUESTS_TOTAL, "priority" => priority, "outcome" => "failed")
            .increment(1);
        return Err(e);
    }
    if let Some(key) = &req.idempotency_key {
        // the request is on the bus whatever happens now; an unconfirmed key only costs a
        // retry of this send a second (harmless) append
        if let Err(e) = ctx
            .store
            .confirm_idempotency(&req.tenant_id, key, &req.message_id, &fp, now_ms())
            .await
        {
            tracing::warn!(error = %e, "cannot confirm an idempotency key");
        }
    }
    if !duplicate {
        metrics::counter!(INGEST_REQUESTS_TOTAL, "priority" => priority, "outcome" => "accepted")
            .increment(1);
    }
    metrics::histogram!(INGEST_ACCEPT_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(Accepted {
        message_id: req.message_id,
        duplicate,
    })
}

/// The send body equivalent to a request published on the Avro ingest topic.
pub fn body_of(req: &NotificationRequest) -> SendBody {
    SendBody {
        to: req.to.clone(),
        template: req.template.clone(),
        data: Some(req.data.clone()),
        locale: req.locale.clone(),
        title: req.title.clone(),
        body: req.body.clone(),
        priority: Some(req.priority.as_str().into()),
        category: req.category.clone(),
        channels: Some(
            req.channels
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
        ),
        idempotency_key: req.idempotency_key.clone(),
        ttl_seconds: req.ttl_seconds,
        send_at: None,
    }
}

/// The partition key of a request. A send to one listed user (the bulk of the traffic) is
/// keyed by tenant and user, like that user's deliveries: one tenant's sends spread over every
/// partition, and so over every router, while each user's sends stay in one partition, in
/// order. A send to several users or to an audience is keyed by tenant, so a tenant's fan-outs
/// stay in order with each other; it is not ordered against unicasts to the same users (no
/// single partition holds all its recipients).
pub fn request_key(req: &NotificationRequest) -> Vec<u8> {
    let to = &req.to;
    match to.users.as_slice() {
        [user] if to.topics.is_empty() && to.tags.is_empty() && !to.broadcast => {
            tidings_core::bus::user_key(&req.tenant_id, user)
        }
        _ => req.tenant_id.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(to: Recipients) -> NotificationRequest {
        NotificationRequest {
            message_id: "m".into(),
            tenant_id: "t1".into(),
            to,
            template: None,
            template_version: None,
            data: serde_json::json!({}),
            locale: None,
            title: None,
            body: None,
            priority: Priority::Normal,
            category: None,
            channels: vec![Channel::Inapp],
            idempotency_key: None,
            ttl_seconds: None,
            send_at_ms: None,
            accepted_at_ms: 0,
        }
    }

    #[test]
    fn unicasts_are_keyed_by_user_and_fan_outs_by_tenant() {
        let one = |u: &str| Recipients {
            users: vec![u.into()],
            ..Default::default()
        };
        assert_eq!(request_key(&request(one("alice"))), b"t1/alice".to_vec());
        assert_ne!(
            request_key(&request(one("alice"))),
            request_key(&request(one("bob"))),
            "one tenant's unicasts spread"
        );
        let two = Recipients {
            users: vec!["alice".into(), "bob".into()],
            ..Default::default()
        };
        assert_eq!(request_key(&request(two)), b"t1".to_vec());
        let audience = Recipients {
            users: vec!["alice".into()],
            topics: vec!["orders".into()],
            ..Default::default()
        };
        assert_eq!(request_key(&request(audience)), b"t1".to_vec());
    }
}
