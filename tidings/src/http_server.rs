//! The HTTP server: an accept loop with a connection cap kept below the open-file limit, a
//! deadline for request headers (which also closes idle keep-alive connections), upgrades
//! for WebSockets, and a graceful stop.
//!
//! Each accepted connection takes a slot; a connection over the cap is closed at once, so
//! `accept` never fails for want of file descriptors and a flood of idle sockets cannot take
//! the server down. A WebSocket keeps its connection's slot until it closes
//! ([`tidings_core::http::ConnSlot`]).

use axum::response::IntoResponse;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tidings_core::config::Config;
use tidings_core::http::{ApiError, ConnSlot};
use tidings_core::metrics_names::HTTP_CONNECTIONS_REFUSED_TOTAL;
use tidings_core::{Error, ErrorKind};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// File descriptors kept out of the connection cap: data files, the render workers' pipes,
/// the listener, and outbound connections (webhooks) on top.
fn reserve(config: &Config) -> u64 {
    // two renderer pools (API and router), three pipes per worker
    256 + 4 * config.webhook.concurrency as u64 + 6 * config.templates.workers as u64
}

/// The process's open-file limit, raised from its soft value to the hard one.
pub fn raise_nofile() -> (u64, u64) {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => {
            let raised = rlimit::increase_nofile_limit(hard).unwrap_or(soft);
            (raised, hard)
        }
        Err(_) => (1024, 1024),
    }
}

/// The connection cap: the configured one, lowered to fit the open-file limit.
pub fn connection_cap(config: &Config, nofile: u64) -> usize {
    let fit = nofile.saturating_sub(reserve(config)).max(16);
    (config.http.max_connections as u64).min(fit) as usize
}

/// Serve `app` on `listener` until `shutdown`, then let connections finish for up to 10 s.
/// HTTP/1.1 only: the producer API, the inbox and WebSocket upgrades all speak it, and
/// protocol detection would read before the header deadline starts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &Config,
    cap: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let request_timeout = Duration::from_millis(config.http.request_timeout_ms);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.http.header_read_timeout_ms));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // out of descriptors despite the cap (something else holds many): wait
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = ConnSlot(Arc::new(slot));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(slot.clone());
            let answer = app.clone().oneshot(req);
            // a request (its body included: one trickling in) gets a deadline as a whole;
            // WebSocket upgrades answer at once and live on past it
            async move {
                match tokio::time::timeout(request_timeout, answer).await {
                    Ok(r) => r,
                    Err(_) => Ok(ApiError(Error::new(
                        ErrorKind::Invalid,
                        "request_timeout",
                        "the request took longer than http.request_timeout_ms",
                    ))
                    .into_response()),
                }
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // finish the request in flight, then close
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    // every slot back means every connection (WebSockets included) has closed
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("http connections still open after 10 s; stopping anyway");
    }
}
