//! `tidings-loadgen`: open N WebSocket clients with real JWTs, send unicast messages over HTTP
//! at a target rate (or as fast as `--concurrency` allows), and measure send-to-receive latency
//! per delivery, sustained throughput, lost and duplicate deliveries.
//!
//! ```text
//! tidings-loadgen --url http://127.0.0.1:8080 --admin-token demo --users 200 --rate 2000 --seconds 20
//! ```

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidings_benches::percentile;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of the tidings HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "TIDINGS_ADMIN_TOKEN")]
    admin_token: String,
    /// WebSocket clients, one user each.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Target sends per second; 0 sends as fast as the workers can.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Concurrent HTTP senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = "normal")]
    priority: String,
    /// Write the full result here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let tenant: Value = http
        .post(format!("{}/v1/admin/tenants", args.url))
        .bearer_auth(&args.admin_token)
        .json(&json!({"name": "loadgen"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (tid, key, secret) = (
        tenant["tenant_id"].as_str().unwrap().to_string(),
        tenant["api_key"].as_str().unwrap().to_string(),
        tenant["jwt_secret"].as_str().unwrap().to_string(),
    );
    let ws_base = args.url.replacen("http", "ws", 1);
    let latencies: Arc<Mutex<Vec<u64>>> = Default::default();
    let seen: Arc<Mutex<HashSet<String>>> = Default::default();
    let dups = Arc::new(AtomicU64::new(0));
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    eprintln!("connecting {} clients", args.users);
    let mut readers = Vec::new();
    for i in 0..args.users {
        let claims = json!({"sub": format!("u{i}"), "tid": tid, "exp": exp});
        let token = jsonwebtoken::encode(
            &Default::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?;
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/v1/ws?token={token}")).await?;
        ws.next().await; // hello
        let (lat, seen, dups) = (latencies.clone(), seen.clone(), dups.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] != "message" {
                        continue;
                    }
                    let sent = v["data"]["t"].as_u64().unwrap_or(0);
                    lat.lock().unwrap().push(now_us().saturating_sub(sent));
                    let id = v["id"].as_str().unwrap_or("").to_string();
                    if !seen.lock().unwrap().insert(id.clone()) {
                        dups.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = ws
                        .send(Message::Text(
                            json!({"type": "ack", "id": id}).to_string().into(),
                        ))
                        .await;
                }
            }
        }));
    }
    eprintln!(
        "sending for {} s at {} msg/s",
        args.seconds,
        if args.rate == 0 {
            "max".to_string()
        } else {
            args.rate.to_string()
        }
    );
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (http, url, key, sent, failed, stop, prio) = (
            http.clone(),
            format!("{}/v1/messages", args.url),
            key.clone(),
            sent.clone(),
            failed.clone(),
            stop.clone(),
            args.priority.clone(),
        );
        let (users, per_worker) = (args.users, args.rate as f64 / args.concurrency as f64);
        workers.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if per_worker > 0.0 {
                    let due = Duration::from_secs_f64(n as f64 / per_worker);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let user = format!("u{}", (n as usize * 7919 + w) % users);
                let body = json!({"to": {"users": [user]}, "title": "load", "priority": prio, "data": {"t": now_us()}});
                match http.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(r) if r.status() == 202 => sent.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }));
    }
    for s in 1..=args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "{s:>4}s sent {:>9} received {:>9}",
            sent.load(Ordering::Relaxed),
            latencies.lock().unwrap().len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    let drain = Instant::now();
    while (seen.lock().unwrap().len() as u64) < total && drain.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let received = seen.lock().unwrap().len() as u64;
    let ms = |us: u64| us as f64 / 1000.0;
    let result = json!({
        "users": args.users, "target_rate": args.rate, "seconds": elapsed, "priority": args.priority,
        "sent": total, "send_errors": failed.load(Ordering::Relaxed), "received": received,
        "lost": total.saturating_sub(received), "duplicates": dups.load(Ordering::Relaxed),
        "throughput_per_s": total as f64 / elapsed,
        "latency_ms": {"p50": ms(percentile(&lat, 50.0)), "p90": ms(percentile(&lat, 90.0)), "p99": ms(percentile(&lat, 99.0)),
                       "p999": ms(percentile(&lat, 99.9)), "max": ms(lat.last().copied().unwrap_or(0))},
    });
    println!(
        "users {:>8}   sent {:>9}   received {:>9}   lost {:>5}   dup {:>5}",
        args.users, total, received, result["lost"], result["duplicates"]
    );
    println!(
        "throughput {:.0} msg/s over {:.1} s",
        result["throughput_per_s"].as_f64().unwrap(),
        elapsed
    );
    let l = &result["latency_ms"];
    println!(
        "latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
    );
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    for r in readers {
        r.abort();
    }
    Ok(())
}
