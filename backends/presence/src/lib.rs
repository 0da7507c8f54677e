//! Backends of the presence and fan-out port ([`tidings_core::presence::Presence`]), chosen by
//! `presence.backend`:
//!
//! - [`LocalPresence`]: this process's connections only (one node)
//! - `redis`: presence with TTL and pub/sub between nodes; not built into this version

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tidings_core::config::Config;
use tidings_core::metrics_names::DELIVERY_SLOW_CLOSED_TOTAL;
use tidings_core::presence::{ConnId, ConnSink, Presence, Push};
use tidings_core::{Error, Result};
use tokio::sync::mpsc::error::TrySendError;

/// Open the presence backend the config names.
pub fn open(config: &Config) -> Result<Arc<dyn Presence>> {
    match config.presence.backend.as_str() {
        "local" => Ok(Arc::new(LocalPresence::default())),
        other => Err(Error::invalid(
            "backend_unavailable",
            format!("presence.backend `{other}` is not built into this binary (available: local)"),
        )),
    }
}

/// Connections of one shard, by (tenant, user).
type Shard = RwLock<HashMap<(String, String), Vec<(ConnId, ConnSink)>>>;

/// Connections of this process, by (tenant, user). Sharded to keep lock hold times short.
pub struct LocalPresence {
    shards: Vec<Shard>,
    next_id: AtomicU64,
    count: AtomicUsize,
}

impl Default for LocalPresence {
    fn default() -> Self {
        LocalPresence {
            shards: (0..64).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
        }
    }
}

impl LocalPresence {
    fn shard(&self, tenant: &str, user: &str) -> &Shard {
        let h = tidings_core::bus::partition_for(
            format!("{tenant}\0{user}").as_bytes(),
            self.shards.len() as u32,
        );
        &self.shards[h as usize]
    }
}

#[async_trait]
impl Presence for LocalPresence {
    fn attach(&self, tenant: &str, user: &str, sink: ConnSink) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut m = self.shard(tenant, user).write().expect("presence lock");
        m.entry((tenant.to_string(), user.to_string()))
            .or_default()
            .push((id, sink));
        self.count.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn detach(&self, tenant: &str, user: &str, id: ConnId) {
        let mut m = self.shard(tenant, user).write().expect("presence lock");
        let key = (tenant.to_string(), user.to_string());
        if let Some(conns) = m.get_mut(&key) {
            let before = conns.len();
            conns.retain(|(c, _)| *c != id);
            if conns.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if conns.is_empty() {
                m.remove(&key);
            }
        }
    }

    async fn push(&self, tenant: &str, user: &str, push: Push) -> Result<usize> {
        let m = self.shard(tenant, user).read().expect("presence lock");
        let Some(conns) = m.get(&(tenant.to_string(), user.to_string())) else {
            return Ok(0);
        };
        let mut reached = 0;
        let push = Arc::new(push);
        for (_, sink) in conns {
            match sink.tx.try_send(push.clone()) {
                Ok(()) => reached += 1,
                Err(TrySendError::Full(_)) => {
                    // never block the publisher: the slow client reconnects and resumes
                    metrics::counter!(DELIVERY_SLOW_CLOSED_TOTAL).increment(1);
                    sink.close.cancel();
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        Ok(reached)
    }

    fn local_connections(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn sink(cap: usize) -> (ConnSink, tokio::sync::mpsc::Receiver<Arc<Push>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(cap);
        (
            ConnSink {
                tx,
                close: CancellationToken::new(),
            },
            rx,
        )
    }

    fn push(id: &str) -> Push {
        Push {
            message_id: id.into(),
            seq: 1,
            frame: Arc::from("{}"),
        }
    }

    #[tokio::test]
    async fn every_device_gets_it_and_a_full_queue_closes_the_connection() {
        let p = LocalPresence::default();
        let (a, mut ra) = sink(8);
        let (b, mut rb) = sink(1);
        let b_close = b.close.clone();
        let ida = p.attach("t", "u", a);
        p.attach("t", "u", b);
        assert_eq!(p.local_connections(), 2);
        assert_eq!(p.push("t", "u", push("m1")).await.unwrap(), 2);
        assert_eq!(
            p.push("t2", "u", push("m1")).await.unwrap(),
            0,
            "tenants are apart"
        );
        assert_eq!(p.push("t", "u", push("m2")).await.unwrap(), 1);
        assert!(
            b_close.is_cancelled(),
            "the slow connection is told to close"
        );
        assert_eq!(ra.recv().await.unwrap().message_id, "m1");
        assert_eq!(ra.recv().await.unwrap().message_id, "m2");
        assert_eq!(rb.recv().await.unwrap().message_id, "m1");
        p.detach("t", "u", ida);
        assert_eq!(p.local_connections(), 1);
    }
}
