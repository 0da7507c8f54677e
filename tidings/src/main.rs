//! The `tidings` binary: `serve` runs every stage in one process; `ingest`, `router`,
//! `delivery` and `retry` run one stage each; `migrate` creates and checks the topics (and registers the ingest schema with a registry); `schemas` prints the
//! Avro schemas with their ids.

mod http_server;
mod serve;

// glibc's malloc showed ~15% of the server's CPU under load (perf); mimalloc is cheaper for the
// many small, short-lived allocations of frames, records and transactions
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tidings_core::config::Config;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "a message center: ingest, route, deliver, retry"
)]
struct Cli {
    /// TOML config file; `TIDINGS_*` environment variables override it.
    #[arg(long, global = true, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every stage in one process (embedded backends unless configured otherwise).
    Serve,
    /// The producer and admin API, and the Avro ingest topic.
    Ingest,
    /// The router stage (health and metrics only over HTTP).
    Router,
    /// WebSocket connections, the inbox API and external channels.
    Delivery,
    /// The retry stage (health and metrics only over HTTP).
    Retry,
    /// Create and check the bus topics and the store tables; register the ingest schema with a
    /// registry (idempotent).
    Migrate,
    /// Print each Avro schema with its id and subject.
    Schemas,
    /// Render templates from stdin under a memory limit (started by the server itself).
    #[command(hide = true)]
    RenderWorker {
        #[arg(long)]
        fuel: u64,
        #[arg(long)]
        max_output: usize,
        #[arg(long)]
        memory_mb: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::RenderWorker {
        fuel,
        max_output,
        memory_mb,
    } = cli.command
    {
        // a template that grows past this fails an allocation and ends only this process
        let bytes = memory_mb * 1024 * 1024;
        rlimit::setrlimit(rlimit::Resource::AS, bytes, bytes)?;
        tidings_core::template::worker_main(tidings_core::template::Bounds { fuel, max_output })?;
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json_logs = std::env::var("TIDINGS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Command::Schemas = cli.command {
        let c = tidings_schemas::codec();
        for s in [&c.request, &c.delivery, &c.event, &c.audience] {
            println!(
                "# {} id={} subject={}.{}",
                s.name, s.id, config.topic_prefix, s.subject
            );
            println!("{}", s.text.trim());
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stages = match cli.command {
            Command::Serve => serve::Stages::all(),
            Command::Ingest => serve::Stages {
                ingest: true,
                ..Default::default()
            },
            Command::Router => serve::Stages {
                router: true,
                ..Default::default()
            },
            Command::Delivery => serve::Stages {
                delivery: true,
                ..Default::default()
            },
            Command::Retry => serve::Stages {
                retry: true,
                ..Default::default()
            },
            Command::Migrate => return serve::migrate(config).await,
            Command::Schemas | Command::RenderWorker { .. } => unreachable!("handled above"),
        };
        serve::run(config, stages).await
    })
}
