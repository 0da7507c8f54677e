//! The user's own inbox over HTTP: newest first, cursor-paged by sequence.

use crate::frames::inbox_item_json;
use crate::settle::Settler;
use crate::user_auth::from_headers;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tidings_core::http::{body_json, query, ApiResult};
use tidings_core::model::{EventKind, InboxStatus};
use tidings_core::{Context, Error};

#[derive(Clone)]
struct InboxState {
    ctx: Context,
    settler: Settler,
}

pub fn routes(ctx: Context, settler: Settler) -> Router {
    Router::new()
        .route("/v1/inbox", get(list))
        .route("/v1/inbox/unread_count", get(unread))
        .route("/v1/inbox/read", post(read))
        .route("/v1/inbox/{id}", delete(remove))
        .with_state(InboxState { ctx, settler })
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    State(InboxState { ctx, .. }): State<InboxState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let user = from_headers(&ctx, &headers).await?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| Error::invalid("invalid_cursor", "cursor: not one this API gave"))?,
        ),
    };
    let items = ctx
        .store
        .inbox_page(&user.tenant, &user.user, before, limit)
        .await?;
    let next = if items.len() == limit {
        items.last().map(|i| i.seq.to_string())
    } else {
        None
    };
    Ok(Json(
        json!({"items": items.iter().map(inbox_item_json).collect::<Vec<_>>(), "next_cursor": next}),
    ))
}

async fn unread(
    State(InboxState { ctx, .. }): State<InboxState>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let user = from_headers(&ctx, &headers).await?;
    let n = ctx.store.unread_count(&user.tenant, &user.user).await?;
    Ok(Json(json!({"unread": n})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

async fn read(
    State(InboxState { ctx, settler }): State<InboxState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let user = from_headers(&ctx, &headers).await?;
    let req: ReadBody = body_json(body, ctx.config.limits.max_body_bytes)?;
    if req.all {
        let n = ctx.store.mark_all_read(&user.tenant, &user.user).await?;
        return Ok(Json(json!({"marked": n})));
    }
    if req.ids.is_empty() {
        return Err(Error::invalid("invalid_request", "give `ids` or `all: true`").into());
    }
    let changed = settler
        .settle(&user.tenant, &user.user, req.ids, EventKind::Read)
        .await?;
    Ok(Json(json!({"marked": changed.len()})))
}

async fn remove(
    State(InboxState { ctx, .. }): State<InboxState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let user = from_headers(&ctx, &headers).await?;
    if ctx
        .store
        .inbox_seq(&user.tenant, &user.user, &id)
        .await?
        .is_none()
    {
        return Err(Error::not_found(
            "message_not_found",
            format!("no message `{id}` in this inbox"),
        )
        .into());
    }
    ctx.store
        .set_inbox_status(&user.tenant, &user.user, &[id], InboxStatus::Deleted)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
