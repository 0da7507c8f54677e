//! The WebSocket clients: one per user, connected from a spread of loopback source addresses,
//! speaking tidings' frames or Centrifugo's JSON protocol, recording every delivery.

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Bytes read from a socket at a time (a larger frame grows the buffer as it needs).
const READ_BUFFER: usize = 4096;

/// Which server the clients speak to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Tidings,
    Centrifugo,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Tidings => "tidings",
            Target::Centrifugo => "centrifugo",
        }
    }
}

/// What every client records, shared by all of them.
#[derive(Default)]
pub struct Tally {
    /// Distinct (client, message) deliveries.
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub connected: AtomicU64,
    /// Latest arrival, µs since the epoch.
    pub last_us: AtomicU64,
    /// Send-to-receive latency in µs, by priority index (0 urgent .. 3 low).
    pub latency_us: [Mutex<Vec<u64>>; 4],
    /// Per message key: deliveries so far and the latest arrival (µs since the epoch).
    pub per_message: Mutex<HashMap<u64, (u64, u64)>>,
    /// Record `per_message` (fan-out scenarios only: it costs a lock per delivery).
    pub track_messages: bool,
}

impl Tally {
    pub fn new(track_messages: bool) -> Tally {
        Tally {
            track_messages,
            ..Default::default()
        }
    }

    fn record(&self, seen: &mut HashSet<u64>, stamp: &Stamp) {
        let (sent, key) = (stamp.t, stamp.k);
        let now = crate::now_us();
        if !seen.insert(key) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        let prio = stamp.p.min(3) as usize;
        self.latency_us[prio]
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
        if self.track_messages {
            let mut m = self.per_message.lock().unwrap();
            let e = m.entry(key).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(now);
        }
    }
}

/// What the load generator puts in every message's data: send time (µs), key, priority index.
#[derive(Deserialize)]
pub struct Stamp {
    t: u64,
    k: u64,
    #[serde(default = "normal")]
    p: u64,
}

fn normal() -> u64 {
    2
}

/// The fields of a tidings frame the clients read (typed: parsing is most of a client's work).
#[derive(Deserialize)]
struct TidingsFrame {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: String,
    data: Option<Stamp>,
}

/// A Centrifugo push: `{"push":{"channel":..,"pub":{"data":..}}}`.
#[derive(Deserialize)]
struct CentrifugoFrame {
    push: Option<CentrifugoPush>,
}

#[derive(Deserialize)]
struct CentrifugoPush {
    #[serde(rename = "pub")]
    publication: Option<CentrifugoPub>,
}

#[derive(Deserialize)]
struct CentrifugoPub {
    data: Stamp,
}

/// The `n`th loopback source address of `spread` (127.0.0.1 .. 127.0.0.spread), so that more
/// than one address's worth of ephemeral ports (about 28k here) can reach one server port.
pub fn source_ip(i: usize, spread: usize) -> Ipv4Addr {
    let j = 1 + (i % spread.max(1)) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + j)
}

/// Open a WebSocket to `url` from `from`.
pub async fn open(url: &str, server: SocketAddr, from: Ipv4Addr) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.into(), 0))?;
    let stream = sock.connect(server).await?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before every read: its 128 KiB default
    // made the memset ~40% of this process's CPU during a fan-out; frames here are small
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Handshake after the upgrade: tidings says `hello`; Centrifugo needs `connect` and, when
/// `channel` is given, `subscribe`.
pub async fn handshake(
    ws: &mut Ws,
    target: Target,
    token: &str,
    channel: Option<&str>,
) -> anyhow::Result<()> {
    match target {
        Target::Tidings => {
            let first = next_text(ws).await?;
            anyhow::ensure!(first.contains("\"hello\""), "expected hello, got {first}");
        }
        Target::Centrifugo => {
            ws.send(Message::Text(
                json!({"id": 1, "connect": {"token": token}})
                    .to_string()
                    .into(),
            ))
            .await?;
            let r = next_text(ws).await?;
            anyhow::ensure!(r.contains("\"connect\""), "connect refused: {r}");
            if let Some(ch) = channel {
                ws.send(Message::Text(
                    json!({"id": 2, "subscribe": {"channel": ch}})
                        .to_string()
                        .into(),
                ))
                .await?;
                let r = next_text(ws).await?;
                anyhow::ensure!(r.contains("\"subscribe\""), "subscribe refused: {r}");
            }
        }
    }
    Ok(())
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            return Ok(t.as_str().to_string());
        }
    }
    anyhow::bail!("closed during the handshake")
}

/// Read deliveries until the connection ends, recording each; tidings messages are acked when
/// `ack` is set, Centrifugo's `{}` pings answered.
pub async fn read_loop(mut ws: Ws, target: Target, ack: bool, tally: Arc<Tally>) {
    let mut seen = HashSet::new();
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        match target {
            Target::Tidings => {
                let Ok(f) = serde_json::from_str::<TidingsFrame>(t.as_str()) else {
                    continue;
                };
                let (true, Some(stamp)) = (f.ty == "message", &f.data) else {
                    continue;
                };
                tally.record(&mut seen, stamp);
                if ack {
                    let frame = json!({"type": "ack", "id": f.id}).to_string();
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                }
            }
            Target::Centrifugo => {
                // one WebSocket message may carry several newline-separated frames
                for line in t.as_str().lines() {
                    if line.trim() == "{}" {
                        let _ = ws.send(Message::Text("{}".into())).await;
                        continue;
                    }
                    let Ok(CentrifugoFrame {
                        push:
                            Some(CentrifugoPush {
                                publication: Some(p),
                            }),
                    }) = serde_json::from_str(line)
                    else {
                        continue;
                    };
                    tally.record(&mut seen, &p.data);
                }
            }
        }
    }
    tally.connected.fetch_sub(1, Ordering::Relaxed);
}
