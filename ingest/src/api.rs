//! The producer and admin HTTP API. Every handler answers JSON; errors are
//! `{"error": {"code", "message"}}` with stable codes.

use crate::send::{accept, validate, SendBody};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tidings_core::auth::{hash_api_key, random_token, secrets_equal};
use tidings_core::http::{bearer, body_json, query, tenant_of, ApiResult};
use tidings_core::model::*;
use tidings_core::{bus::OutRecord, template, Context, Error, ErrorKind};

/// The routes ingest serves.
pub fn routes(ctx: Context) -> Router {
    // axum's own limit sits above ours so that `body_json` can answer with the stable code
    let limit = ctx.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant))
        .route("/v1/admin/tenants/{id}/rotate", post(rotate_tenant))
        .route("/v1/admin/tenants/{id}/disable", post(disable_tenant))
        .route("/v1/admin/tenants/{id}/enable", post(enable_tenant))
        .route("/v1/webhook", put(set_webhook))
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/users/{user}", put(put_user).get(get_user))
        .route(
            "/v1/topics/{topic}/subscribers/{user}",
            put(subscribe).delete(unsubscribe),
        )
        .route("/v1/templates/{key}", put(put_template).get(get_template))
        .route("/v1/templates/{key}/preview", post(preview))
        .route("/v1/dlq", get(dlq_list))
        .route("/v1/dlq/{id}/replay", post(dlq_replay))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ctx)
}

fn limit(ctx: &Context) -> usize {
    ctx.config.limits.max_body_bytes
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    #[serde(default)]
    name: String,
    #[serde(default)]
    webhook_url: Option<String>,
}

/// A webhook URL through the egress guard (`invalid_url`, `url_not_allowed`).
fn check_url(ctx: &Context, url: &str) -> Result<(), Error> {
    tidings_core::egress::check_url(url, ctx.config.egress.allow_private)
}

async fn create_tenant(
    State(ctx): State<Context>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin(&ctx, &headers)?;
    let req: NewTenant = match body {
        Ok(b) if b.is_empty() => NewTenant::default(),
        other => body_json(other, limit(&ctx))?,
    };
    if let Some(u) = &req.webhook_url {
        check_url(&ctx, u)?;
    }
    let api_key = random_token("tk_");
    let tenant = Tenant {
        id: new_message_id(),
        name: req.name,
        api_key_hash: hash_api_key(&api_key),
        jwt_secret: random_token("js_"),
        webhook_url: req.webhook_url,
        webhook_secret: random_token("whs_"),
        created_at_ms: now_ms(),
        previous: None,
        disabled: false,
    };
    ctx.store.create_tenant(&tenant).await?;
    tracing::info!(tenant = %tenant.id, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant_id": tenant.id, "name": tenant.name, "api_key": api_key,
            "jwt_secret": tenant.jwt_secret, "webhook_url": tenant.webhook_url,
            "webhook_secret": tenant.webhook_secret,
        })),
    ))
}

/// Check the admin token.
fn admin(ctx: &Context, headers: &HeaderMap) -> Result<(), Error> {
    let admin = &ctx.config.admin_token.0;
    if admin.is_empty() {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "admin_disabled",
            "set TIDINGS_ADMIN_TOKEN to enable the admin API",
        ));
    }
    match bearer(headers) {
        Some(t) if secrets_equal(t, admin) => Ok(()),
        Some(_) => Err(Error::unauthorized(
            "auth_invalid_admin_token",
            "wrong admin token",
        )),
        None => Err(Error::unauthorized(
            "auth_missing",
            "send the admin token as `Authorization: Bearer <token>`",
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the replaced key and secrets keep working, seconds.
    overlap_seconds: Option<i64>,
}

/// `POST /v1/admin/tenants/{id}/rotate`: new API key, JWT secret and webhook secret; the
/// replaced ones keep working for the overlap window (a second rotation ends the first's).
async fn rotate_tenant(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    admin(&ctx, &headers)?;
    let req: RotateBody = match body {
        Ok(b) if b.is_empty() => RotateBody::default(),
        other => body_json(other, limit(&ctx))?,
    };
    let overlap = req
        .overlap_seconds
        .unwrap_or(ctx.config.auth.rotation_overlap_seconds);
    if !(0..=30 * 86_400).contains(&overlap) {
        return Err(
            Error::invalid("invalid_overlap", "overlap_seconds: 0 to 2592000 (30 days)").into(),
        );
    }
    let until = now_ms() + overlap * 1000;
    let api_key = random_token("tk_");
    let key_hash = hash_api_key(&api_key);
    let tenant = ctx
        .store
        .modify_tenant(
            &id,
            Box::new(move |t: &mut Tenant| {
                t.previous = Some(PreviousCredentials {
                    api_key_hash: std::mem::replace(&mut t.api_key_hash, key_hash),
                    jwt_secret: std::mem::replace(&mut t.jwt_secret, random_token("js_")),
                    webhook_secret: std::mem::replace(&mut t.webhook_secret, random_token("whs_")),
                    until_ms: until,
                });
                Ok(())
            }),
        )
        .await?;
    ctx.hot.forget_tenant(&tenant.id);
    tracing::info!(tenant = %tenant.id, overlap, "tenant credentials rotated");
    // connections verified by a secret no longer valid close now (4001: reconnect with a
    // fresh token), again shortly after (one verified just before the rotation may attach
    // after this sweep), and those of the replaced secret when its overlap ends
    close_stale_connections(&ctx, &tenant.id).await;
    let (c, id) = (ctx.clone(), tenant.id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        close_stale_connections(&c, &id).await;
        if overlap > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(overlap as u64 * 1000)).await;
            close_stale_connections(&c, &id).await;
        }
    });
    Ok(Json(json!({
        "tenant_id": tenant.id, "api_key": api_key, "jwt_secret": tenant.jwt_secret,
        "webhook_secret": tenant.webhook_secret, "previous_valid_until": rfc3339(until),
    })))
}

/// Close this node's connections of a tenant whose token was verified by a secret that is
/// no longer valid (neither current nor within a rotation's overlap).
async fn close_stale_connections(ctx: &Context, tenant: &str) {
    let t = match ctx.store.tenant(tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(tenant, error = %e, "cannot check connections after a rotation");
            return;
        }
    };
    let mut keep = vec![tidings_core::auth::secret_tag(&t.jwt_secret)];
    keep.extend(
        t.previous_at(now_ms())
            .map(|p| tidings_core::auth::secret_tag(&p.jwt_secret)),
    );
    let closed =
        ctx.presence
            .close_tenant(tenant, &keep, tidings_core::presence::CLOSE_TOKEN_EXPIRED);
    if closed > 0 {
        tracing::info!(tenant, closed, "connections of a rotated-out secret closed");
    }
}

/// `POST /v1/admin/tenants/{id}/disable` and `/enable`: a disabled tenant's keys and tokens
/// are refused and its connections closed; its data is kept.
async fn set_disabled(
    ctx: Context,
    headers: HeaderMap,
    id: String,
    disabled: bool,
) -> ApiResult<Json<Value>> {
    admin(&ctx, &headers)?;
    let tenant = ctx
        .store
        .modify_tenant(
            &id,
            Box::new(move |t: &mut Tenant| {
                t.disabled = disabled;
                Ok(())
            }),
        )
        .await?;
    ctx.hot.forget_tenant(&tenant.id);
    if disabled {
        let closed = ctx.presence.close_tenant(
            &tenant.id,
            &[],
            tidings_core::presence::CLOSE_TENANT_DISABLED,
        );
        tracing::info!(tenant = %tenant.id, closed, "tenant disabled");
    }
    Ok(Json(json!({"tenant_id": tenant.id, "disabled": disabled})))
}

async fn disable_tenant(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_disabled(ctx, headers, id, true).await
}

async fn enable_tenant(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_disabled(ctx, headers, id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: Option<String>,
}

async fn set_webhook(
    State(ctx): State<Context>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let req: WebhookBody = body_json(body, limit(&ctx))?;
    if let Some(u) = &req.url {
        check_url(&ctx, u)?;
    }
    // only the URL changes, in one write: nothing else read above is written back
    let tenant = ctx
        .store
        .modify_tenant(
            &tenant.id,
            Box::new(move |t: &mut Tenant| {
                if t.disabled {
                    return Err(tidings_core::http::tenant_disabled());
                }
                t.webhook_url = req.url;
                Ok(())
            }),
        )
        .await?;
    ctx.hot.forget_tenant(&tenant.id);
    Ok(Json(
        json!({"url": tenant.webhook_url, "secret": tenant.webhook_secret}),
    ))
}

async fn send(
    State(ctx): State<Context>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let result = async {
        let tenant = tenant_of(&ctx, &headers).await?;
        let body: SendBody = body_json(body, limit(&ctx))?;
        let req = validate(&ctx, &ctx.templates, &tenant, body).await?;
        accept(&ctx, req).await
    }
    .await;
    match result {
        Ok(a) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"message_id": a.message_id, "duplicate": a.duplicate})),
        )),
        Err(e) => {
            if !e.is_retriable() {
                metrics::counter!(tidings_core::metrics_names::INGEST_REQUESTS_TOTAL, "priority" => "unknown", "outcome" => "rejected").increment(1);
            }
            tracing::debug!(code = e.code, "send refused");
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
struct RecipientsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn message(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<RecipientsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let q = query(q)?;
    let m = ctx.store.message(&tenant.id, &id).await?.ok_or_else(|| {
        Error::not_found("message_not_found", format!("no routed message `{id}`"))
    })?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    let after = q.cursor.as_deref().filter(|c| !c.is_empty());
    let statuses = ctx
        .store
        .delivery_status(&tenant.id, &id, after, limit)
        .await?;
    let recipients: Vec<Value> = statuses
        .items
        .iter()
        .map(|s| {
            json!({"user": s.user_id, "channel": s.channel, "status": s.state, "attempts": s.attempts,
                   "last_error": s.last_error, "updated_at": rfc3339(s.updated_at_ms)})
        })
        .collect();
    let mut out = json!({
        "message_id": m.message_id, "priority": m.priority, "category": m.category,
        "template": m.template, "title": m.title, "body": m.body, "data": m.data,
        "channels": m.channels, "created_at": rfc3339(m.created_at_ms), "recipients": recipients,
        "status": if m.failure.is_some() { "failed" } else { "routed" }, "error": m.failure,
        "next_cursor": statuses.next,
    });
    // an audience message: its audiences and counts; `recipients` holds the entries that
    // exist (users listed by name, users who acked or read it)
    if let Some(a) = ctx.store.audience_message(&tenant.id, &id).await? {
        let audiences: Vec<Value> = a
            .audiences
            .iter()
            .map(|x| json!({"kind": x.kind(), "name": x.name()}))
            .collect();
        out["audience"] = audiences.first().cloned().unwrap_or(Value::Null);
        out["audiences"] = Value::Array(audiences);
        out["counts"] =
            json!({"recipients": a.recipients, "delivered": a.delivered, "read": a.read});
    }
    Ok(Json(out))
}

async fn put_user(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let profile: UserProfile = body_json(body, limit(&ctx))?;
    ctx.store.upsert_user(&tenant.id, &user, &profile).await?;
    publish_members(&ctx, &tenant.id, &user).await?;
    Ok(Json(json!({"user": user, "profile": profile})))
}

async fn get_user(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let profile =
        ctx.store.user(&tenant.id, &user).await?.ok_or_else(|| {
            Error::not_found("user_not_found", format!("user `{user}` is not known"))
        })?;
    let topics = ctx.store.subscriptions(&tenant.id, &user).await?;
    Ok(Json(
        json!({"user": user, "profile": profile, "topics": topics}),
    ))
}

async fn subscribe(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path((topic, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant = tenant_of(&ctx, &headers).await?;
    ctx.store.subscribe(&tenant.id, &topic, &user).await?;
    publish_members(&ctx, &tenant.id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unsubscribe(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path((topic, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant = tenant_of(&ctx, &headers).await?;
    if ctx.store.unsubscribe(&tenant.id, &topic, &user).await? {
        publish_members(&ctx, &tenant.id, &user).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(
            "subscription_not_found",
            "the user is not subscribed to that topic",
        )
        .into())
    }
}

async fn put_template(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let mut tpl: Template = body_json(body, limit(&ctx))?;
    template::check(&tpl)?;
    // a template over a bound whatever the data is refused now, not at its first send
    ctx.render(&tenant.id, &tpl, &json!({}), None, template::Mode::Trial)
        .await?;
    tpl.version = ctx.store.put_template(&tenant.id, &key, &tpl).await?;
    ctx.hot.forget_template(&tenant.id, &key);
    Ok(Json(
        json!({"key": key, "version": tpl.version, "template": tpl}),
    ))
}

async fn get_template(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let tpl = ctx.store.template(&tenant.id, &key).await?.ok_or_else(|| {
        Error::not_found(
            "template_not_found",
            format!("template `{key}` does not exist"),
        )
    })?;
    Ok(Json(json!({"key": key, "template": tpl})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    locale: Option<String>,
}

async fn preview(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let req: PreviewBody = body_json(body, limit(&ctx))?;
    let tpl = ctx.store.template(&tenant.id, &key).await?.ok_or_else(|| {
        Error::not_found(
            "template_not_found",
            format!("template `{key}` does not exist"),
        )
    })?;
    let data = req.data.unwrap_or(json!({}));
    let r = ctx
        .render(
            &tenant.id,
            &tpl,
            &data,
            req.locale.as_deref(),
            template::Mode::Strict,
        )
        .await?;
    Ok(Json(
        json!({"inapp": {"title": r.title, "body": r.body}, "webhook": r.webhook}),
    ))
}

#[derive(Deserialize)]
struct DlqQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn dlq_list(
    State(ctx): State<Context>,
    headers: HeaderMap,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = ctx
        .store
        .dlq_list(&tenant.id, q.after.as_deref(), limit)
        .await?;
    let next = if entries.len() == limit {
        entries.last().map(|e| e.id.clone())
    } else {
        None
    };
    let items: Vec<Value> = entries
        .iter()
        .map(|e| json!({"id": e.id, "kind": e.kind, "message_id": e.message_id, "user": e.user_id, "channel": e.channel,
                        "attempts": e.attempts, "error": e.error, "failed_at": rfc3339(e.failed_at_ms)}))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

async fn dlq_replay(
    State(ctx): State<Context>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_of(&ctx, &headers).await?;
    let entry =
        ctx.store.dlq_get(&tenant.id, &id).await?.ok_or_else(|| {
            Error::not_found("dlq_entry_not_found", format!("no dead letter `{id}`"))
        })?;
    let codec = tidings_schemas::codec();
    match entry.kind {
        DlqKind::Request => {
            // a request the router could not route: route it again, as it was accepted
            // (the cause may have been passing: a store fault, a tenant re-enabled)
            let req = codec.decode_request(&entry.delivery)?;
            let rec = OutRecord::new(
                ctx.requests_topic(req.priority),
                req.tenant_id.as_bytes().to_vec(),
                entry.delivery.clone(),
            );
            ctx.bus.append(vec![rec]).await?;
        }
        DlqKind::Delivery => {
            let mut d = codec.decode_delivery(&entry.delivery)?;
            d.attempt = 0;
            d.due_at_ms = 0;
            d.last_error = None;
            let rec = OutRecord::new(
                ctx.deliveries_topic(d.channel, d.priority),
                tidings_core::bus::user_key(&d.tenant_id, &d.user_id),
                codec.encode_delivery(&d),
            );
            // on the bus first, then out of the queue: a crash in between leaves the entry
            // to be replayed again (at least once), never a lost one
            ctx.bus.append(vec![rec]).await?;
            tidings_core::fail_point("dlq.after_append");
            ctx.set_status(
                &d,
                DeliveryState::Retrying,
                entry.attempts,
                Some(entry.error.clone()),
            )
            .await?;
        }
    }
    ctx.store
        .dlq_remove(&tenant.id, &id, entry.failed_at_ms)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": id, "message_id": entry.message_id})),
    ))
}

/// Tell every delivery node the audiences `user` is in now (after the store changed them), on
/// `<prefix>.audience`: their indexes of who is in which audience follow it.
async fn publish_members(ctx: &Context, tenant: &str, user: &str) -> tidings_core::Result<()> {
    let memberships = ctx.store.memberships(tenant, user).await?;
    let r = AudienceRecord::Members {
        tenant_id: tenant.to_string(),
        user_id: user.to_string(),
        memberships,
    };
    let record = tidings_schemas::codec().audience_record(ctx.audience_topic(), &r);
    ctx.bus.append(vec![record]).await.map(|_| ())
}
