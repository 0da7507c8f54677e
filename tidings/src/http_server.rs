//! The HTTP server: an accept loop with a connection cap kept below the open-file limit, a
//! deadline for request headers (which also closes idle keep-alive connections) and one for
//! request bodies, upgrades for WebSockets, and a graceful stop.
//!
//! Each accepted connection takes a slot; a connection over the cap is closed at once, so
//! `accept` never fails for want of file descriptors and a flood of idle sockets cannot take
//! the server down. A WebSocket keeps its connection's slot until it closes
//! ([`tidings_core::http::ConnSlot`]).

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tidings_core::config::Config;
use tidings_core::http::{ConnSlot, BODY_DEADLINE};
use tidings_core::metrics_names::HTTP_CONNECTIONS_REFUSED_TOTAL;
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

/// A request body that fails once `timer` fires before it has all arrived.
struct DeadlineBody {
    inner: Incoming,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BODY_DEADLINE.into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
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
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(slot.clone());
            // a body must arrive whole within the deadline (one that trickles in fails, and
            // the handler answers 408); handlers themselves are never cut off mid-way
            let req = if hyper::body::Body::is_end_stream(req.body()) {
                req.map(axum::body::Body::new)
            } else {
                req.map(|inner| {
                    axum::body::Body::new(DeadlineBody {
                        inner,
                        timer: Box::pin(tokio::time::sleep(request_timeout)),
                    })
                })
            };
            app.clone().oneshot(req)
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
