//! The realtime connection, `GET /v1/ws`.
//!
//! Client frames: `ack` (delivered), `read`, `resume` (replay after `since`, oldest first, or
//! every unread message), `ping`. Each gets a reply: `{"type":"ok","ref":<type>,...}` or an
//! `error` frame. The server also sends `hello` once the connection is registered, `message`
//! frames, and WebSocket pings; a connection silent past the idle timeout is closed.
//!
//! Each connection remembers the last `websocket.dedup_window` ids it has sent (as 64-bit
//! hashes, 8 bytes each), so a message that arrives live and again in a replay is shown once.
//! Its send queue is bounded in frames and bytes, and every write to the client has a
//! deadline: a connection that falls behind or stops reading is closed (1008) and catches up
//! with `resume`. A connection closes when its token expires or a rotation retires the secret
//! that verified it (4001: reconnect with a fresh token), when the user opens more than the
//! per-user limit (4002, the oldest closes), and when its tenant is disabled (4003).
//!
//! Client frames are handled in order by a task of their own, so pushes keep flowing while an
//! ack is being persisted; acks waiting in its queue are persisted together (one inbox write,
//! one status write, one event append for the lot), each still answered with its own `ok`.

use crate::frames;
use crate::settle::Settler;
use crate::user_auth::{verify, User};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidings_core::http::{bearer, query, ApiError, ConnSlot};
use tidings_core::metrics_names::{DELIVERY_CLIENT_FRAMES_TOTAL, DELIVERY_CONNECTIONS};
use tidings_core::model::EventKind;
use tidings_core::presence::{
    ConnSink, CLOSE_REPLACED, CLOSE_SLOW, CLOSE_TENANT_DISABLED, CLOSE_TOKEN_EXPIRED,
};
use tidings_core::{Context, Error, ErrorKind};
use tokio::sync::mpsc::{channel, Receiver, Sender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most acks persisted together.
const ACK_BATCH: usize = 256;
/// Bytes read from a socket at a time. tungstenite's default (128 KiB) is zero-filled on the
/// first read, which made every idle connection cost ~138 KiB of RSS; client frames are small.
const READ_BUFFER: usize = 1024;
/// Client frames waiting for their handler; while it is full the connection stops reading the
/// client (TCP pushes back) and keeps pushing, pinging and replying.
const FRAME_QUEUE: usize = 1024;
/// How long a closed connection's frames already received may take to be persisted.
const FRAME_DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct WsState {
    ctx: Context,
    settler: Settler,
    shutdown: CancellationToken,
}

pub fn routes(ctx: Context, settler: Settler, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/v1/ws", get(upgrade))
        .with_state(WsState {
            ctx,
            settler,
            shutdown,
        })
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn upgrade(
    State(st): State<WsState>,
    headers: HeaderMap,
    q: Result<Query<TokenQuery>, QueryRejection>,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return ApiError(e).into_response(),
    };
    let token = bearer(&headers).map(str::to_string).or(q.token);
    let Some(token) = token else {
        return ApiError(Error::unauthorized(
            "auth_missing",
            "send the user token in `Authorization` or `?token=`",
        ))
        .into_response();
    };
    let user = match verify(&st.ctx, &token).await {
        Ok(u) => u,
        Err(e) => return ApiError(e).into_response(),
    };
    if st.ctx.presence.local_connections() >= st.ctx.config.limits.max_connections {
        return ApiError(Error::new(
            ErrorKind::Unavailable,
            "too_many_connections",
            "this node is at its connection limit",
        ))
        .into_response();
    }
    ws.max_message_size(64 * 1024)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            // the socket keeps its connection slot (see `ConnSlot`) until it closes
            let _slot = slot;
            connection(st, user, socket).await
        })
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Ack { id: String },
    Read { ids: Vec<String> },
    Resume { since: Option<String> },
    Ping,
}

/// The last ids a connection has sent, as hashes, shared by its push path and its frame
/// handler; at most `window` of them (8 bytes each).
#[derive(Clone)]
struct Sent {
    ids: Arc<Mutex<VecDeque<u64>>>,
    window: usize,
}

impl Sent {
    fn new(window: usize) -> Sent {
        Sent {
            ids: Arc::default(),
            window: window.max(1),
        }
    }

    /// Whether `id` is new to this connection (and remember it).
    fn first_time(&self, id: &str) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let h = h.finish();
        let mut s = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if s.contains(&h) {
            return false;
        }
        if s.len() >= self.window {
            s.pop_front();
        }
        s.push_back(h);
        true
    }
}

/// Write one message to the client within `deadline`; false when the client is gone or not
/// reading.
async fn write(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    msg: Message,
    deadline: Duration,
) -> bool {
    let send = sink.send(msg);
    tokio::pin!(send);
    // most writes complete at once: arm the deadline's timer only for one that waits, and
    // keep it on the heap (a timer is large, and this future is part of every connection's)
    if let std::task::Poll::Ready(r) = futures::poll!(send.as_mut()) {
        return r.is_ok();
    }
    let timer = Box::pin(tokio::time::sleep(deadline));
    tokio::select! {
        r = send => r.is_ok(),
        _ = timer => false,
    }
}

struct Conn {
    ctx: Context,
    settler: Settler,
    user: User,
    sent: Sent,
    /// Where replies go; a replay is sent page by page as it is read, so it never sits
    /// whole in memory (the queue is bounded: the replay waits for the client).
    out: Sender<String>,
}

/// Handle the client frames of one connection in order, batching consecutive acks; replies
/// go to `out`. Frames already received are handled even after the connection has gone (an
/// ack or a read sent just before closing still counts); the replies are then dropped.
async fn frame_handler(mut conn: Conn, mut frames: Receiver<String>, out: Sender<String>) {
    let mut held: Option<Result<ClientFrame, String>> = None;
    loop {
        let frame = match held.take() {
            Some(f) => f,
            None => match frames.recv().await {
                Some(t) => parse(&t),
                None => return,
            },
        };
        let replies = match frame {
            Ok(ClientFrame::Ack { id }) => {
                let mut ids = vec![id];
                while ids.len() < ACK_BATCH {
                    match frames.try_recv() {
                        Ok(t) => match parse(&t) {
                            Ok(ClientFrame::Ack { id }) => ids.push(id),
                            other => {
                                held = Some(other);
                                break;
                            }
                        },
                        Err(_) => break,
                    }
                }
                conn.acks(ids).await
            }
            Ok(f) => conn.client_frame(f).await,
            Err(reply) => vec![reply],
        };
        for r in replies {
            if out.send(r).await.is_err() {
                break;
            }
        }
    }
}

/// A client frame, or the error frame that answers it.
fn parse(text: &str) -> Result<ClientFrame, String> {
    serde_json::from_str(text).map_err(|e| {
        metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "invalid").increment(1);
        frames::error("invalid_frame", &format!("cannot read the frame: {e}"))
    })
}

async fn connection(st: WsState, user: User, socket: WebSocket) {
    let ctx = st.ctx.clone();
    let wcfg = ctx.config.websocket.clone();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = channel(wcfg.send_queue);
    let conn_sink = ConnSink::new(tx, user.credential);
    let (close, shared) = (conn_sink.close.clone(), conn_sink.shared.clone());
    let conn_id = ctx.presence.attach(&user.tenant, &user.user, conn_sink);
    let write_deadline = Duration::from_secs(wcfg.write_timeout_seconds.max(1));
    let expires = {
        // at most a year ahead: whatever the configured lifetime, no overflow
        let left = (user.expires_at - tidings_core::model::now_ms() / 1000).clamp(0, 366 * 86_400);
        tokio::time::Instant::now() + Duration::from_secs(left as u64)
    };
    metrics::gauge!(DELIVERY_CONNECTIONS).increment(1.0);
    if let Err(e) = ctx
        .store
        .touch_users(&user.tenant, std::slice::from_ref(&user.user))
        .await
    {
        tracing::warn!(error = %e, "cannot record the user as known");
    }
    // after the attach: a membership change from now on reaches the index either way
    if let Err(e) = crate::audience::load_members(&ctx, &user.tenant, &user.user).await {
        tracing::warn!(error = %e, "cannot load the user's audiences: audience messages arrive on resume");
    }
    let sent = Sent::new(wcfg.dedup_window);
    // the frame handler (a task and two queues) starts with the first client frame: most
    // connections sit idle, and each byte of an idle connection counts at 100k of them
    let mut handler: Option<(Sender<String>, JoinHandle<()>)> = None;
    let mut replies: Option<Receiver<String>> = None;
    let hello = json!({"type": "hello", "user": user.user, "node": ctx.config.node_id}).to_string();
    let mut ping = tokio::time::interval(Duration::from_secs(wcfg.ping_interval_seconds.max(1)));
    ping.tick().await;
    let idle = Duration::from_secs(wcfg.idle_timeout_seconds.max(1));
    let mut last_heard = Instant::now();
    let mut closing: Option<(u16, &'static str)> = None;
    // the expiry timer is armed only once the token ends within a ping period: most tokens
    // outlive their connections, and every byte of an idle connection counts
    let ping_period = Duration::from_secs(wcfg.ping_interval_seconds.max(1));
    let arm = |expires: tokio::time::Instant| {
        (expires <= tokio::time::Instant::now() + ping_period)
            .then(|| Box::pin(tokio::time::sleep_until(expires)))
    };
    let mut token_expiry = arm(expires);
    // made once, not on every turn of the loop: a fan-out wakes every connection once
    let closed = close.cancelled();
    let shutting_down = st.shutdown.cancelled();
    tokio::pin!(closed, shutting_down);
    if write(&mut sink, Message::Text(hello.into()), write_deadline).await {
        loop {
            tokio::select! {
                _ = &mut closed => {
                    closing = Some(match shared.reason.load(std::sync::atomic::Ordering::Relaxed) {
                        CLOSE_REPLACED => (CLOSE_REPLACED, "too many connections of this user: the oldest was closed"),
                        CLOSE_TENANT_DISABLED => (CLOSE_TENANT_DISABLED, "the tenant is disabled"),
                        CLOSE_TOKEN_EXPIRED => (CLOSE_TOKEN_EXPIRED, "the token's secret was rotated out: reconnect with a fresh token"),
                        _ => (CLOSE_SLOW, "send queue full: reconnect and resume"),
                    });
                    break;
                }
                _ = &mut shutting_down => { closing = Some((1001, "server shutting down")); break; }
                _ = async { token_expiry.as_mut().expect("armed").await }, if token_expiry.is_some() => {
                    closing = Some((CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a fresh token"));
                    break;
                }
                _ = ping.tick() => {
                    if token_expiry.is_none() {
                        token_expiry = arm(expires);
                    }
                    if last_heard.elapsed() > idle {
                        closing = Some((1000, "idle timeout"));
                        break;
                    }
                    if !write(&mut sink, Message::Ping(Default::default()), write_deadline).await { break; }
                }
                push = rx.recv() => {
                    let Some(push) = push else { break };
                    ConnSink::taken(&shared, &push);
                    // the frame's bytes are shared with every connection it goes to, not copied
                    let Ok(text) = Utf8Bytes::try_from(push.frame.clone()) else { continue };
                    if sent.first_time(&push.message_id)
                        && !write(&mut sink, Message::Text(text), write_deadline).await
                    {
                        break;
                    }
                }
                reply = async {
                    match replies.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(reply) = reply else { break };
                    if !write(&mut sink, Message::Text(reply.into()), write_deadline).await { break; }
                }
                // read the client only while its frames have room (`capacity` is what is free)
                msg = stream.next(), if handler.as_ref().is_none_or(|(f, _)| f.capacity() > 0) => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            let (frames, _) = handler.get_or_insert_with(|| {
                                let (frames_tx, frames_rx) = channel(FRAME_QUEUE);
                                let (replies_tx, replies_rx) = channel(FRAME_QUEUE);
                                replies = Some(replies_rx);
                                let conn = Conn { ctx: ctx.clone(), settler: st.settler.clone(), user: user.clone(), sent: sent.clone(), out: replies_tx.clone() };
                                (frames_tx, tokio::spawn(frame_handler(conn, frames_rx, replies_tx)))
                            });
                            // room was checked above and this loop is the only sender
                            if frames.send(t.as_str().to_string()).await.is_err() { break; }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "invalid").increment(1);
                            let e = frames::error("invalid_frame", "frames are JSON text");
                            if !write(&mut sink, Message::Text(e.into()), write_deadline).await { break; }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }
    if let Some((code, reason)) = closing {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        // a client that does not read does not get to hold the connection open
        let _ = write(&mut sink, frame, Duration::from_secs(1)).await;
    }
    // let the handler finish the frames it has (no replies: the socket is done)
    drop(replies);
    if let Some((frames, h)) = handler {
        drop(frames);
        let abort = h.abort_handle();
        if tokio::time::timeout(FRAME_DRAIN, h).await.is_err() {
            tracing::warn!("frames of a closed connection were not persisted in time");
            abort.abort();
        }
    }
    ctx.presence.detach(&user.tenant, &user.user, conn_id);
    metrics::gauge!(DELIVERY_CONNECTIONS).decrement(1.0);
}

impl Conn {
    /// Persist a run of acks together; one reply per ack, in order.
    async fn acks(&mut self, ids: Vec<String>) -> Vec<String> {
        metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "ack")
            .increment(ids.len() as u64);
        let (t, u) = (self.user.tenant.as_str(), self.user.user.as_str());
        let result = self
            .settler
            .settle(t, u, ids.clone(), EventKind::Delivered)
            .await
            .map(|_| ());
        ids.iter()
            .map(|id| match &result {
                Ok(()) => json!({"type": "ok", "ref": "ack", "id": id}).to_string(),
                Err(e) => frames::error(e.code, &e.message),
            })
            .collect()
    }

    /// Handle one client frame other than `ack`; returns the frames to send back, in order.
    async fn client_frame(&mut self, frame: ClientFrame) -> Vec<String> {
        let (t, u) = (self.user.tenant.clone(), self.user.user.clone());
        let result: tidings_core::Result<Vec<String>> = async {
            match frame {
                ClientFrame::Ack { id } => Ok(self.acks(vec![id]).await),
                ClientFrame::Read { ids } => {
                    metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "read").increment(1);
                    if ids.len() > 1000 {
                        return Err(Error::invalid(
                            "too_many_ids",
                            "read: at most 1000 ids per frame",
                        ));
                    }
                    let changed = self.settler.settle(&t, &u, ids, EventKind::Read).await?;
                    Ok(vec![
                        json!({"type": "ok", "ref": "read", "ids": changed}).to_string()
                    ])
                }
                ClientFrame::Resume { since } => {
                    metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "resume")
                        .increment(1);
                    self.resume(since).await
                }
                ClientFrame::Ping => {
                    metrics::counter!(DELIVERY_CLIENT_FRAMES_TOTAL, "type" => "ping").increment(1);
                    Ok(vec![json!({"type": "pong"}).to_string()])
                }
            }
        }
        .await;
        result.unwrap_or_else(|e| vec![frames::error(e.code, &e.message)])
    }

    /// Replay, oldest first, the inbox after `since` (every unread row without it).
    async fn resume(&mut self, since: Option<String>) -> tidings_core::Result<Vec<String>> {
        let (t, u) = (self.user.tenant.clone(), self.user.user.clone());
        let (mut after, unread_only) = match &since {
            Some(id) => {
                // from the floor when `since` was written: a message written after it but
                // numbered before it (another lane's) is replayed; `since` itself is not
                self.sent.first_time(id);
                let seq = self
                    .ctx
                    .store
                    .resume_point(&t, &u, id)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid(
                            "unknown_message",
                            format!("resume: `{id}` is not in this inbox"),
                        )
                    })?;
                (seq, false)
            }
            None => (0, true),
        };
        let page = self.ctx.config.websocket.resume_page;
        let mut replayed = 0usize;
        loop {
            let items = self
                .ctx
                .store
                .inbox_after(&t, &u, after, unread_only, page)
                .await?;
            let Some(last) = items.last() else { break };
            after = last.seq;
            for item in &items {
                if self.sent.first_time(&item.message_id) {
                    if self
                        .out
                        .send(frames::message_from_item(item))
                        .await
                        .is_err()
                    {
                        // the connection is gone
                        return Ok(Vec::new());
                    }
                    replayed += 1;
                }
            }
            if items.len() < page {
                break;
            }
        }
        Ok(vec![
            json!({"type": "ok", "ref": "resume", "replayed": replayed}).to_string(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sent_window_is_bounded() {
        let sent = Sent::new(3);
        assert!(sent.first_time("a"));
        assert!(!sent.first_time("a"));
        for id in ["b", "c", "d"] {
            assert!(sent.first_time(id));
        }
        // "a" fell out of the window; the window never holds more than 3
        assert_eq!(sent.ids.lock().unwrap().len(), 3);
        assert!(sent.first_time("a"));
        assert!(!sent.first_time("d"));
    }
}
