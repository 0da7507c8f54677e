//! Wiring: open the backends the config names, start the chosen stages under one shutdown
//! token, serve HTTP (API, WebSocket, health, metrics), and drain on SIGTERM or Ctrl-C.

use crate::http_server;
use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidings_core::config::Config;
use tidings_core::metrics_names::{
    BUS_CONSUMER_LAG, BUS_QUEUE_DEPTH, DELIVERY_LATENCY_SECONDS, INGEST_ACCEPT_SECONDS,
    STAGE_BATCH_RECORDS, STAGE_BATCH_SECONDS,
};
use tidings_core::model::{Channel, Priority};
use tidings_core::{template, Context, RETRY_TIERS};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    pub ingest: bool,
    pub router: bool,
    pub delivery: bool,
    pub retry: bool,
}

impl Stages {
    pub fn all() -> Stages {
        Stages {
            ingest: true,
            router: true,
            delivery: true,
            retry: true,
        }
    }
}

/// A template renderer as the config asks: worker processes of this binary, or (with
/// `templates.sandbox = false`) this process's blocking threads. The router's has twice the
/// time limit: a send ingest rendered in time must not fail later on a busy machine.
fn renderer(config: &Config, for_router: bool) -> anyhow::Result<template::Renderer> {
    let t = &config.templates;
    let bounds = template::Bounds {
        fuel: t.fuel,
        max_output: config.limits.max_body_bytes,
    };
    let factor = if for_router { 2 } else { 1 };
    let timeout = Duration::from_millis(t.timeout_ms * factor);
    Ok(if t.sandbox {
        let exe = std::env::current_exe().context("locating this binary for render workers")?;
        template::Renderer::sandboxed(exe, bounds, timeout, t.workers, t.memory_mb)
    } else {
        template::Renderer::in_process(bounds, timeout, t.workers)
    })
}

fn open(config: Config) -> anyhow::Result<Context> {
    let err = |e: tidings_core::Error| anyhow::anyhow!("{e}");
    let store = tidings_store::open(&config).map_err(err)?;
    Ok(Context {
        seqs: tidings_core::seq::Sequencer::new(&config.node_id, store.clone()),
        // each tenant may hold half of the API's renderers
        templates: Arc::new(
            renderer(&config, false)?.with_tenant_bound(config.templates.workers.div_ceil(2)),
        ),
        hot: Arc::default(),
        route_templates: Arc::new(renderer(&config, true)?),
        bus: tidings_bus::open(&config).map_err(err)?,
        store,
        presence: tidings_presence::open(&config).map_err(err)?,
        config: Arc::new(config),
    })
}

/// A topic as `migrate` found it.
struct TopicReport {
    spec: tidings_core::bus::TopicSpec,
    state: tidings_core::bus::TopicState,
}

impl TopicReport {
    /// Fewer partitions than configured: keys would not spread as planned. tidings never adds
    /// partitions itself (that moves keys between partitions and breaks per-user order for
    /// records in flight); the operator does it at a quiet time.
    fn short(&self) -> bool {
        self.state.partitions < self.spec.partitions
    }
}

/// Create every topic the pipeline uses, as configured; existing ones are checked.
async fn ensure_topics(ctx: &Context) -> anyhow::Result<Vec<TopicReport>> {
    let mut out = Vec::new();
    for spec in ctx.topic_specs() {
        let state = ctx
            .bus
            .ensure_topic(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("topic {}: {e}", spec.name))?;
        let report = TopicReport { spec, state };
        if report.short() {
            tracing::warn!(
                topic = %report.spec.name,
                partitions = report.state.partitions,
                configured = report.spec.partitions,
                "topic has fewer partitions than configured"
            );
        }
        out.push(report);
    }
    Ok(out)
}

/// `tidings migrate`: create every topic with its partitions, replication and retention,
/// check the ones that exist (the embedded store creates its tables when opened), and with a
/// schema registry register `NotificationRequest` under `<prefix>.ingest-value`. Safe to run
/// twice. Fails when a topic has fewer partitions than configured.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let ctx = open(config)?;
    let reports = ensure_topics(&ctx).await?;
    let mut short = Vec::new();
    for r in &reports {
        let what = if r.state.created {
            "created"
        } else {
            "exists "
        };
        println!(
            "topic {what} {} partitions={} (configured {})",
            r.spec.name, r.state.partitions, r.spec.partitions
        );
        if r.short() {
            short.push(format!(
                "{} has {} partitions, configured {}",
                r.spec.name, r.state.partitions, r.spec.partitions
            ));
        }
    }
    let url = &ctx.config.bus.schema_registry_url;
    if !url.is_empty() {
        let registry =
            tidings_schemas::registry::Registry::new(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let subject = ctx.config.topic("ingest-value");
        let id = registry
            .register(&subject, tidings_schemas::NOTIFICATION_REQUEST_AVSC)
            .await
            .map_err(|e| anyhow::anyhow!("registering {subject}: {e}"))?;
        println!("schema registered {subject} id={id}");
    }
    if !short.is_empty() {
        anyhow::bail!(
            "topics with fewer partitions than configured (add partitions with the Kafka tools, \
             or lower bus.partitions): {}",
            short.join("; ")
        );
    }
    Ok(())
}

/// Run a stage, restarting it after a failure: stages resume from committed offsets, so a
/// restart loses nothing.
fn supervise<F, Fut>(tasks: &mut JoinSet<()>, name: &'static str, shutdown: CancellationToken, f: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = tidings_core::Result<()>> + Send,
{
    tasks.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match f().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(stage = name, error = %e, ?backoff, "stage failed, restarting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
}

fn metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let latency = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY_SECONDS.into()), &latency)?
        .set_buckets_for_metric(Matcher::Full(INGEST_ACCEPT_SECONDS.into()), &latency)?
        .set_buckets_for_metric(Matcher::Full(STAGE_BATCH_SECONDS.into()), &latency)?
        .set_buckets_for_metric(
            Matcher::Full(STAGE_BATCH_RECORDS.into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// The (group, topic) pairs this process consumes, for the queue-depth gauges.
fn consumed(ctx: &Context, stages: Stages) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if stages.ingest {
        v.push((
            tidings_ingest::avro_topic::GROUP.to_string(),
            ctx.config.topic("ingest"),
        ));
    }
    if stages.router {
        v.extend(
            Priority::ALL
                .iter()
                .map(|p| (tidings_router::GROUP.to_string(), ctx.requests_topic(*p))),
        );
    }
    if stages.delivery {
        v.extend(
            Channel::ALL
                .iter()
                .flat_map(|c| ctx.delivery_topics(*c))
                .map(|t| (tidings_delivery::GROUP.to_string(), t)),
        );
        v.push((tidings_delivery::audience::group(ctx), ctx.audience_topic()));
    }
    if stages.retry {
        v.extend(
            RETRY_TIERS
                .iter()
                .map(|t| (tidings_retry::hold::GROUP.to_string(), ctx.retry_topic(t))),
        );
    }
    v
}

pub async fn run(config: Config, stages: Stages) -> anyhow::Result<()> {
    let prom = metrics_recorder()?;
    let addr = config.http_addr.clone();
    let ctx = open(config)?;
    ensure_topics(&ctx).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    if stages.ingest {
        let (c, s) = (ctx.clone(), shutdown.clone());
        supervise(&mut tasks, "ingest", shutdown.clone(), move || {
            tidings_ingest::avro_topic::run(c.clone(), s.clone())
        });
    }
    if stages.router {
        let (c, s) = (ctx.clone(), shutdown.clone());
        supervise(&mut tasks, "router", shutdown.clone(), move || {
            tidings_router::run(c.clone(), s.clone())
        });
    }
    if stages.delivery {
        let (c, s) = (ctx.clone(), shutdown.clone());
        supervise(&mut tasks, "delivery-inapp", shutdown.clone(), move || {
            tidings_delivery::inapp::run(c.clone(), s.clone())
        });
        let (c, s) = (ctx.clone(), shutdown.clone());
        supervise(
            &mut tasks,
            "delivery-audience",
            shutdown.clone(),
            move || tidings_delivery::audience::run(c.clone(), s.clone()),
        );
        let (c, s) = (ctx.clone(), shutdown.clone());
        supervise(
            &mut tasks,
            "delivery-webhook",
            shutdown.clone(),
            move || tidings_delivery::channels::webhook::run(c.clone(), s.clone()),
        );
    }
    if stages.retry {
        for tier in RETRY_TIERS {
            let (c, s) = (ctx.clone(), shutdown.clone());
            supervise(&mut tasks, "retry", shutdown.clone(), move || {
                tidings_retry::hold::run(c.clone(), tier, s.clone())
            });
        }
    }
    // queue depths and metric upkeep
    {
        let (c, s, prom) = (ctx.clone(), shutdown.clone(), prom.clone());
        let pairs = consumed(&ctx, stages);
        let prefix = format!("{}.", ctx.config.topic_prefix);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for (group, topic) in &pairs {
                    if let Ok(lag) = c.bus.lag(group, topic).await {
                        let short = topic.strip_prefix(&prefix).unwrap_or(topic).to_string();
                        metrics::gauge!(BUS_QUEUE_DEPTH, "topic" => short.clone()).set(lag as f64);
                        metrics::gauge!(BUS_CONSUMER_LAG, "topic" => short, "group" => group.clone())
                            .set(lag as f64);
                    }
                }
                prom.run_upkeep();
            }
        });
    }

    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || std::future::ready(prom.render())))
        .with_state(ctx.clone());
    if stages.ingest {
        app = app.merge(tidings_ingest::routes(ctx.clone()));
    }
    if stages.delivery {
        app = app.merge(tidings_delivery::routes(ctx.clone(), shutdown.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let (nofile, nofile_hard) = http_server::raise_nofile();
    let cap = http_server::connection_cap(&ctx.config, nofile);
    if cap < ctx.config.http.max_connections {
        tracing::warn!(
            configured = ctx.config.http.max_connections,
            cap,
            nofile,
            "http.max_connections lowered to fit the open-file limit"
        );
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        node = %ctx.config.node_id,
        ?stages,
        nofile,
        nofile_hard,
        http_connections = cap,
        websocket_connections = ctx.config.limits.max_connections.min(cap),
        header_read_timeout_ms = ctx.config.http.header_read_timeout_ms,
        "tidings listening"
    );

    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        s.cancel();
    });
    http_server::serve(listener, app, &ctx.config, cap, shutdown.clone()).await;
    shutdown.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("stages did not stop within 10 s");
    }
    Ok(())
}

async fn readyz(State(ctx): State<Context>) -> impl IntoResponse {
    let checks = [
        ("bus", ctx.bus.ready().await),
        ("store", ctx.store.ready().await),
        ("presence", ctx.presence.ready().await),
    ];
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failed.join("\n"))
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
