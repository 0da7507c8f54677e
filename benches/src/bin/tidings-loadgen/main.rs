//! `tidings-loadgen`: open N WebSocket clients with real JWTs, drive sends in one of the
//! patterns users have, and measure per-delivery send-to-receive latency, throughput, lost and
//! duplicate deliveries, and the server's RSS and CPU.
//!
//! ```text
//! tidings-loadgen --scenario unicast --clients 200 --rate 2000 --seconds 20 --server-pid $PID
//! tidings-loadgen --scenario topic --clients 19000 --messages 10 --server-pid $PID
//! tidings-loadgen --target centrifugo --url http://127.0.0.1:8000 --scenario topic --clients 19000 \
//!   --centrifugo-secret s --centrifugo-api-key k --server-pid $PID
//! ```
//!
//! Scenarios: `connections` (connect and hold: memory per connection), `unicast` (one user per
//! message at `--rate`), `mixed` (unicast, 1% urgent, 9% high, 40% normal, 50% low), `burst`
//! (`--burst` messages every `--burst-every-ms`), `topic` and `broadcast` (`--messages`
//! messages, one after the other, each to every client; time until the last one has it),
//! `backlog` (`--backlog` low topic messages to every client, then urgent unicast at `--rate`
//! while they drain). Every message carries `{"t": sent µs, "k": key, "p": priority}` in its
//! data; clients key deliveries by `k` to count losses and duplicates.

mod client;

use clap::{Parser, ValueEnum};
use client::{Tally, Target};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidings_benches::latency_summary;
use tidings_benches::server::Sampler;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Connections,
    Unicast,
    Mixed,
    Burst,
    Topic,
    Broadcast,
    Backlog,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value().unwrap().get_name().to_string()
    }
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value = "tidings")]
    target: Target,
    #[arg(long, value_enum, default_value = "unicast")]
    scenario: Scenario,
    /// Base URL of the server's HTTP API (WebSocket on the same host and port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// tidings: the admin token, to create the load generator's tenant.
    #[arg(long, env = "TIDINGS_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Centrifugo: `token_hmac_secret_key` (client JWTs).
    #[arg(long)]
    centrifugo_secret: Option<String>,
    /// Centrifugo: `api_key` (publish).
    #[arg(long)]
    centrifugo_api_key: Option<String>,
    /// WebSocket clients, one user each.
    #[arg(long, alias = "users", default_value_t = 100)]
    clients: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u64,
    /// Loopback source addresses to spread clients over (127.0.0.1 ..); 0 picks one per
    /// 5,000 clients.
    #[arg(long, default_value_t = 0)]
    source_ips: usize,
    /// Target sends per second; 0 sends as fast as `--concurrency` senders can.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Concurrent HTTP senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Length of the send phase (unicast, mixed, burst, backlog) or the hold (connections).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// unicast and burst: priority of every message.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// burst: messages per burst, sent as fast as possible.
    #[arg(long, default_value_t = 5000)]
    burst: u64,
    #[arg(long, default_value_t = 2000)]
    burst_every_ms: u64,
    /// topic and broadcast: messages, each sent once the previous one reached everyone.
    #[arg(long, default_value_t = 10)]
    messages: u64,
    /// topic and broadcast: pause between messages.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// backlog: low-priority topic messages (each to every client) queued before the urgent
    /// stream starts.
    #[arg(long, default_value_t = 100)]
    backlog: u64,
    /// Longest wait for outstanding deliveries after the send phase.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
    /// broadcast: users made known (`PUT /v1/users/k<i>`) before the clients connect, so the
    /// tenant has this many users besides the connected ones.
    #[arg(long, default_value_t = 0)]
    known_users: usize,
    /// The server's data directory, to measure what the store holds before and after the
    /// messages (bytes of its files).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Do not ack tidings messages (acks are on by default, as real clients send them).
    #[arg(long)]
    no_ack: bool,
    /// PID of the server, to sample its RSS and CPU from /proc (same machine only).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free text stored in the result.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the full result here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

const PRIORITIES: [&str; 4] = ["urgent", "high", "normal", "low"];
const CHANNEL: &str = "bench";
/// Keys of backlog messages start here, apart from the stream's.
const BACKLOG_KEYS: u64 = 1 << 40;

/// How to reach the server under test.
struct Server {
    target: Target,
    http: reqwest::Client,
    url: String,
    /// tidings: tenant id, API key, JWT secret; Centrifugo: "", API key, JWT secret.
    tenant: String,
    key: String,
    secret: String,
}

impl Server {
    async fn setup(args: &Args) -> anyhow::Result<Server> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(64))
            .build()?;
        let url = args.url.trim_end_matches('/').to_string();
        match args.target {
            Target::Tidings => {
                let admin = args
                    .admin_token
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("--admin-token is required for tidings"))?;
                let t: Value = http
                    .post(format!("{url}/v1/admin/tenants"))
                    .bearer_auth(admin)
                    .json(&json!({"name": "loadgen"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                Ok(Server {
                    target: args.target,
                    http,
                    url,
                    tenant: s("tenant_id"),
                    key: s("api_key"),
                    secret: s("jwt_secret"),
                })
            }
            Target::Centrifugo => Ok(Server {
                target: args.target,
                http,
                url,
                tenant: String::new(),
                key: args
                    .centrifugo_api_key
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("--centrifugo-api-key is required"))?,
                secret: args
                    .centrifugo_secret
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("--centrifugo-secret is required"))?,
            }),
        }
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
        let claims = match self.target {
            Target::Tidings => json!({"sub": user, "tid": self.tenant, "exp": exp}),
            Target::Centrifugo => json!({"sub": user, "exp": exp}),
        };
        Ok(jsonwebtoken::encode(
            &Default::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )?)
    }

    fn ws_url(&self, token: &str) -> String {
        let base = self.url.replacen("http", "ws", 1);
        match self.target {
            Target::Tidings => format!("{base}/v1/ws?token={token}"),
            Target::Centrifugo => format!("{base}/connection/websocket"),
        }
    }

    async fn addr(&self) -> anyhow::Result<SocketAddr> {
        let hostport = self
            .url
            .split("://")
            .nth(1)
            .unwrap_or(&self.url)
            .split('/')
            .next()
            .unwrap_or_default();
        tokio::net::lookup_host(hostport)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {hostport}"))
    }

    /// Make users `k0..k<n>` known to the tenant with an empty profile.
    async fn make_known(&self, n: usize, concurrency: usize) -> anyhow::Result<()> {
        self.put_each(n, concurrency, |i| format!("/v1/users/k{i}"))
            .await
    }

    /// Subscribe users `0..n` to the bench topic (tidings; Centrifugo clients subscribe
    /// themselves on connect).
    async fn subscribe_all(&self, n: usize, concurrency: usize) -> anyhow::Result<()> {
        if self.target != Target::Tidings {
            return Ok(());
        }
        self.put_each(n, concurrency, |i| {
            format!("/v1/topics/{CHANNEL}/subscribers/u{i}")
        })
        .await
    }

    /// `PUT {}` to `path(i)` for every `i` in `0..n`, `concurrency` at a time.
    async fn put_each(
        &self,
        n: usize,
        concurrency: usize,
        path: fn(usize) -> String,
    ) -> anyhow::Result<()> {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (http, url, key, next) = (
                self.http.clone(),
                self.url.clone(),
                self.key.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    http.put(format!("{url}{}", path(i)))
                        .bearer_auth(&key)
                        .json(&json!({}))
                        .send()
                        .await?
                        .error_for_status()?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    /// Send one message; `to` is a user, or `None` for the bench topic (or broadcast).
    /// `stamp` is the send time to record (µs since the epoch): the time the message was due
    /// in a paced stream, so that a sender running late counts its delay as latency (no
    /// coordinated omission); now when `None`.
    async fn send(
        &self,
        to: Option<&str>,
        broadcast: bool,
        prio: usize,
        key: u64,
        stamp: Option<u64>,
    ) -> anyhow::Result<()> {
        let data = json!({"t": stamp.unwrap_or_else(now_us), "k": key, "p": prio});
        let resp = match self.target {
            Target::Tidings => {
                let to = match (to, broadcast) {
                    (Some(u), _) => json!({"users": [u]}),
                    (None, true) => json!({"broadcast": true}),
                    (None, false) => json!({"topics": [CHANNEL]}),
                };
                let body =
                    json!({"to": to, "title": "load", "priority": PRIORITIES[prio], "data": data});
                self.http
                    .post(format!("{}/v1/messages", self.url))
                    .bearer_auth(&self.key)
                    .json(&body)
                    .send()
                    .await?
            }
            Target::Centrifugo => {
                let channel = match to {
                    Some(u) => format!("#{u}"),
                    None => CHANNEL.to_string(),
                };
                self.http
                    .post(format!("{}/api/publish", self.url))
                    .header("X-API-Key", &self.key)
                    .json(&json!({"channel": channel, "data": data}))
                    .send()
                    .await?
            }
        };
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "send answered {status}");
        Ok(())
    }
}

/// Connect `n` clients at `rate` per second from `spread` source addresses; returns how many
/// failed.
async fn connect_all(
    server: &Arc<Server>,
    args: &Args,
    tally: &Arc<Tally>,
    sampler: Option<&Sampler>,
) -> anyhow::Result<u64> {
    let addr = server.addr().await?;
    let spread = if args.source_ips == 0 {
        1 + args.clients / 5_000
    } else {
        args.source_ips
    };
    let channel = matches!(
        args.scenario,
        Scenario::Topic | Scenario::Broadcast | Scenario::Backlog | Scenario::Connections
    )
    .then_some(CHANNEL);
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    for i in 0..args.clients {
        let due = Duration::from_secs_f64(i as f64 / args.connect_rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let (server, tally2, failed, first_error) = (
            server.clone(),
            tally.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let (target, ack) = (args.target, !args.no_ack);
        tokio::spawn(async move {
            let user = format!("u{i}");
            let conn = async {
                let token = server.token(&user)?;
                let mut ws =
                    client::open(&server.ws_url(&token), addr, client::source_ip(i, spread))
                        .await?;
                client::handshake(&mut ws, target, &token, channel).await?;
                anyhow::Ok(ws)
            };
            match conn.await {
                Ok(ws) => {
                    drop(permit);
                    tally2.connected.fetch_add(1, Ordering::Relaxed);
                    client::read_loop(ws, target, ack, tally2).await;
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                }
            }
        });
        if i % 5000 == 4999 {
            progress(
                &format!("connecting {}/{}", i + 1, args.clients),
                tally,
                sampler,
            );
        }
    }
    let wait = Instant::now();
    while tally.connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
        < args.clients as u64
        && wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let f = failed.load(Ordering::Relaxed);
    eprintln!(
        "connected {} clients in {:.1} s from {spread} source address(es), {f} failed{}",
        tally.connected.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        first_error
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(f)
}

fn progress(what: &str, tally: &Tally, sampler: Option<&Sampler>) {
    let server = sampler
        .and_then(|s| s.last())
        .map(|s| format!("   server {:.0} MiB {:.0}% cpu", s.rss_mib, s.cpu_percent))
        .unwrap_or_default();
    eprintln!(
        "{what:<24} connected {:>7}   received {:>10}{server}",
        tally.connected.load(Ordering::Relaxed),
        tally.received.load(Ordering::Relaxed)
    );
}

/// Sends of a stream: message `n` is due at `due(n)` after the start.
fn stream_due(args: &Args, n: u64) -> Option<Duration> {
    match args.scenario {
        Scenario::Burst => Some(Duration::from_millis(
            (n / args.burst.max(1)) * args.burst_every_ms,
        )),
        _ if args.rate == 0 => None,
        _ => Some(Duration::from_secs_f64(n as f64 / args.rate as f64)),
    }
}

fn stream_priority(args: &Args, n: u64) -> usize {
    match args.scenario {
        Scenario::Mixed => match n % 100 {
            0 => 0,
            1..=9 => 1,
            10..=49 => 2,
            _ => 3,
        },
        Scenario::Backlog => 0,
        _ => PRIORITIES
            .iter()
            .position(|p| *p == args.priority)
            .unwrap_or(2),
    }
}

/// Send unicast messages for `--seconds`; returns (sent, failed).
async fn stream(
    server: &Arc<Server>,
    args: &Arc<Args>,
    tally: &Arc<Tally>,
    sampler: Option<&Sampler>,
) -> anyhow::Result<(u64, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let start_us = now_us();
    let end = start + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (server, args, next, sent, failed) = (
            server.clone(),
            args.clone(),
            next.clone(),
            sent.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let stamp = match stream_due(&args, n) {
                    Some(due) => {
                        let at = start + due;
                        if at >= end {
                            return;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        Some(start_us + due.as_micros() as u64)
                    }
                    None if Instant::now() >= end => return,
                    None => None,
                };
                let user = format!("u{}", (n as usize * 7919) % args.clients);
                match server
                    .send(Some(&user), false, stream_priority(&args, n), n, stamp)
                    .await
                {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let ticker = {
        let (tally, sent) = (tally.clone(), sent.clone());
        let sampler = sampler.cloned();
        tokio::spawn(async move {
            let mut s = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s += 1;
                let what = format!("{s:>4}s sent {}", sent.load(Ordering::Relaxed));
                progress(&what, &tally, sampler.as_ref());
            }
        })
    };
    for w in workers {
        w.await?;
    }
    ticker.abort();
    Ok((sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
}

/// Send `--messages` fan-out messages one after the other; returns (sent, failed, the time
/// until each reached every client in ms).
async fn fan_out(
    server: &Arc<Server>,
    args: &Args,
    tally: &Arc<Tally>,
    clients: u64,
) -> anyhow::Result<(u64, u64, Vec<u64>)> {
    let (mut sent, mut failed, mut all_us) = (0, 0, Vec::new());
    for k in 0..args.messages {
        let t0 = now_us();
        if let Err(e) = server
            .send(None, args.scenario == Scenario::Broadcast, 2, k, None)
            .await
        {
            eprintln!("send {k} failed: {e:#}");
            failed += 1;
            continue;
        }
        sent += 1;
        let wait = Instant::now();
        loop {
            let got = tally.per_message.lock().unwrap().get(&k).copied();
            if let Some((n, last)) = got {
                if n >= clients {
                    all_us.push(last.saturating_sub(t0));
                    eprintln!(
                        "message {k}: all {n} clients had it after {:.1} ms",
                        last.saturating_sub(t0) as f64 / 1000.0
                    );
                    break;
                }
            }
            if wait.elapsed() > Duration::from_secs(args.drain_seconds) {
                eprintln!("message {k}: reached {:?} of {clients} clients", got);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    Ok((sent, failed, all_us))
}

/// Queue `--backlog` low topic messages as fast as the senders go; returns (sent, failed).
async fn queue_backlog(server: &Arc<Server>, args: &Args) -> anyhow::Result<(u64, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(16) {
        let (server, next, sent, failed, total) = (
            server.clone(),
            next.clone(),
            sent.clone(),
            failed.clone(),
            args.backlog,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                match server.send(None, false, 3, BACKLOG_KEYS + n, None).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.target == Target::Centrifugo
        && !matches!(args.scenario, Scenario::Connections | Scenario::Topic)
    {
        anyhow::bail!("the centrifugo client mode runs the connections and topic scenarios");
    }
    let sampler = args
        .server_pid
        .map(|pid| Sampler::start(pid, Duration::from_millis(500)));
    let rss_before = sampler.as_ref().map(|s| s.rss_mib_now());
    let server = Arc::new(Server::setup(&args).await?);
    let fan = matches!(
        args.scenario,
        Scenario::Topic | Scenario::Broadcast | Scenario::Backlog
    );
    if args.known_users > 0 && server.target == Target::Tidings {
        let t = Instant::now();
        server.make_known(args.known_users, 64).await?;
        eprintln!(
            "made {} users known in {:.1} s",
            args.known_users,
            t.elapsed().as_secs_f64()
        );
    }
    if fan || args.scenario == Scenario::Connections {
        let t = Instant::now();
        server.subscribe_all(args.clients, 64).await?;
        if server.target == Target::Tidings {
            eprintln!(
                "subscribed {} users to `{CHANNEL}` in {:.1} s",
                args.clients,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let tally = Arc::new(Tally::new(fan));
    let connect_failed = connect_all(&server, &args, &tally, sampler.as_ref()).await?;
    if connect_failed > 0 {
        eprintln!(
            "warning: {connect_failed} clients failed to connect; messages to them count as lost"
        );
    }
    let clients = tally.connected.load(Ordering::Relaxed);
    // let connection set-up settle before measuring memory
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = sampler.as_ref().map(|s| s.rss_mib_now());
    let phase_start_s = sampler.as_ref().map_or(0.0, |s| s.elapsed_s());
    let store_before = args
        .data_dir
        .as_deref()
        .map(|d| (dir_bytes(d), file_bytes(&d.join("store.redb"))));
    let phase_start = now_us();
    let own_ticks = tidings_benches::server::cpu_ticks(std::process::id()).unwrap_or(0);
    let t = Instant::now();

    let mut result = json!({});
    let (sent, failed, expected) = match args.scenario {
        Scenario::Connections => {
            for s in 1..=args.seconds {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(&format!("{s:>4}s holding"), &tally, sampler.as_ref());
            }
            (0, 0, 0)
        }
        Scenario::Unicast | Scenario::Mixed | Scenario::Burst => {
            let (sent, failed) = stream(&server, &args, &tally, sampler.as_ref()).await?;
            (sent, failed, sent)
        }
        Scenario::Topic | Scenario::Broadcast => {
            let (sent, failed, mut all_us) = fan_out(&server, &args, &tally, clients).await?;
            result["fanout"] = json!({
                "subscribers": clients,
                "all_delivered_ms": latency_summary(&mut all_us),
            });
            (sent, failed, sent * clients)
        }
        Scenario::Backlog => {
            let (low_sent, low_failed) = queue_backlog(&server, &args).await?;
            eprintln!(
                "queued {low_sent} low messages ({} deliveries) in {:.1} s",
                low_sent * clients,
                t.elapsed().as_secs_f64()
            );
            let (sent, failed) = stream(&server, &args, &tally, sampler.as_ref()).await?;
            result["backlog"] =
                json!({"low_messages": low_sent, "low_deliveries": low_sent * clients});
            (
                low_sent + sent,
                low_failed + failed,
                low_sent * clients + sent,
            )
        }
    };
    let send_s = t.elapsed().as_secs_f64();
    let drain = Instant::now();
    while tally.received.load(Ordering::Relaxed) < expected
        && drain.elapsed() < Duration::from_secs(args.drain_seconds)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if drain.elapsed().as_millis() % 1000 < 50 {
            progress("draining", &tally, sampler.as_ref());
        }
    }
    let received = tally.received.load(Ordering::Relaxed);
    let last = tally.last_us.load(Ordering::Relaxed);
    let delivery_s = (last.saturating_sub(phase_start) as f64 / 1e6).max(1e-3);
    let phase_end_s = sampler.as_ref().map_or(0.0, |s| s.elapsed_s());
    // the load generator's own CPU over the send phase and the drain (it shares the machine)
    let own_cpu = tidings_benches::server::cpu_ticks(std::process::id())
        .unwrap_or(0)
        .saturating_sub(own_ticks) as f64
        / tidings_benches::server::TICKS_PER_S
        / t.elapsed().as_secs_f64().max(1e-3)
        * 100.0;

    let mut all = Vec::new();
    let mut by_priority = json!({});
    for (i, p) in PRIORITIES.iter().enumerate() {
        let mut v = tally.latency_us[i].lock().unwrap().clone();
        all.extend_from_slice(&v);
        if !v.is_empty() {
            by_priority[p] = latency_summary(&mut v);
        }
    }
    let obj = result.as_object_mut().unwrap();
    let fields = json!({
        "scenario": args.scenario.name(), "target": args.target.as_str(), "label": args.label,
        "clients": clients, "connect_failed": connect_failed,
        "target_rate": args.rate, "send_seconds": send_s,
        "sent": sent, "send_errors": failed, "expected": expected, "received": received,
        "lost": expected.saturating_sub(received),
        "duplicates": tally.duplicates.load(Ordering::Relaxed),
        "throughput_per_s": if args.scenario == Scenario::Connections { 0.0 } else { sent as f64 / send_s },
        "deliveries_per_s": received as f64 / delivery_s,
        "latency_ms": latency_summary(&mut all),
        "by_priority": by_priority,
        "loadgen_cpu_percent": own_cpu,
    });
    obj.extend(fields.as_object().unwrap().clone());
    if let (Some(dir), Some((before, store))) = (&args.data_dir, store_before) {
        let (after, store_after) = (dir_bytes(dir), file_bytes(&dir.join("store.redb")));
        obj.insert(
            "data_dir_bytes".into(),
            json!({"before": before, "after": after, "grew": after as i64 - before as i64,
                   "store_before": store, "store_after": store_after,
                   "store_grew": store_after as i64 - store as i64}),
        );
    }
    if let (Some(s), Some(before), Some(connected)) = (&sampler, rss_before, rss_connected) {
        obj.insert(
            "server".into(),
            json!({
                "pid": args.server_pid,
                "rss_mib_before": before,
                "rss_mib_connected": connected,
                "rss_kib_per_connection": if clients > 0 { (connected - before) * 1024.0 / clients as f64 } else { 0.0 },
                "rss_mib_peak": s.peak_rss_mib(),
                "cpu_percent_avg": s.cpu_between(phase_start_s, phase_end_s),
                "samples": s.series(),
            }),
        );
    }
    report(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}

fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

fn report(r: &Value) {
    println!(
        "{} / {}: {} clients   sent {}   expected {}   received {}   lost {}   dup {}",
        r["target"].as_str().unwrap_or_default(),
        r["scenario"].as_str().unwrap_or_default(),
        r["clients"],
        r["sent"],
        r["expected"],
        r["received"],
        r["lost"],
        r["duplicates"]
    );
    println!(
        "sent {:.0} msg/s over {:.1} s; delivered {:.0}/s",
        r["throughput_per_s"].as_f64().unwrap_or(0.0),
        r["send_seconds"].as_f64().unwrap_or(0.0),
        r["deliveries_per_s"].as_f64().unwrap_or(0.0)
    );
    let row = |name: &str, l: &Value| {
        println!(
            "{name:<14} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  (n={})",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["count"]
        )
    };
    row("latency ms", &r["latency_ms"]);
    if let Some(m) = r["by_priority"].as_object() {
        if m.len() > 1 {
            for (p, l) in m {
                row(&format!("  {p}"), l);
            }
        }
    }
    if !r["fanout"].is_null() {
        row("to all, ms", &r["fanout"]["all_delivered_ms"]);
    }
    if let Some(d) = r["data_dir_bytes"].as_object() {
        println!(
            "data dir {} bytes before the messages, {} after ({:+}); store.redb {} to {} ({:+})",
            d["before"],
            d["after"],
            d["grew"],
            d["store_before"],
            d["store_after"],
            d["store_grew"]
        );
    }
    if let Some(s) = r["server"].as_object() {
        println!(
            "server RSS {:.1} MiB before, {:.1} MiB connected ({:.1} KiB/connection), {:.1} MiB peak; CPU {:.0}% during sends",
            s["rss_mib_before"].as_f64().unwrap_or(0.0),
            s["rss_mib_connected"].as_f64().unwrap_or(0.0),
            s["rss_kib_per_connection"].as_f64().unwrap_or(0.0),
            s["rss_mib_peak"].as_f64().unwrap_or(0.0),
            s["cpu_percent_avg"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "load generator CPU {:.0}% over the run",
        r["loadgen_cpu_percent"].as_f64().unwrap_or(0.0)
    );
}
