//! Backends of the presence and fan-out port ([`tidings_core::presence::Presence`]), chosen by
//! `presence.backend`:
//!
//! - [`LocalPresence`]: this process's connections only (one node)
//! - `redis`: presence with TTL and pub/sub between nodes; not built into this version

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tidings_core::config::Config;
use tidings_core::metrics_names::DELIVERY_SLOW_CLOSED_TOTAL;
use tidings_core::model::{Audience, Membership};
use tidings_core::presence::{ConnId, ConnSink, Offer, Presence, Push};
use tidings_core::{Error, Result};

/// Open the presence backend the config names.
pub fn open(config: &Config) -> Result<Arc<dyn Presence>> {
    match config.presence.backend.as_str() {
        "local" => Ok(Arc::new(LocalPresence::new(
            config.websocket.max_connections_per_user,
            config.websocket.send_queue_bytes,
        ))),
        other => Err(Error::invalid(
            "backend_unavailable",
            format!("presence.backend `{other}` is not built into this binary (available: local)"),
        )),
    }
}

/// Connections of one shard, by (tenant, user).
type Shard = RwLock<HashMap<(String, String), Vec<(ConnId, ConnSink)>>>;

/// A user with connections here: the audiences they are in (key, first sequence) and their
/// connections.
#[derive(Default)]
struct Member {
    audiences: Vec<(String, u64)>,
    conns: Vec<(ConnId, ConnSink)>,
    /// Membership changes applied (see `Presence::load_memberships`).
    version: u64,
}

/// Which local connections an audience push goes to.
#[derive(Default)]
struct AudienceIndex {
    /// (tenant, audience key) to its members' connections, with the first sequence each sees.
    audiences: HashMap<(String, String), HashMap<ConnId, (u64, ConnSink)>>,
    /// (tenant, user) of every user with a connection here.
    users: HashMap<(String, String), Member>,
}

impl AudienceIndex {
    fn link(&mut self, tenant: &str, key: &str, since: u64, conns: &[(ConnId, ConnSink)]) {
        let a = self
            .audiences
            .entry((tenant.to_string(), key.to_string()))
            .or_default();
        for (id, sink) in conns {
            a.insert(*id, (since, sink.clone()));
        }
    }

    fn unlink(&mut self, tenant: &str, key: &str, conns: &[ConnId]) {
        let k = (tenant.to_string(), key.to_string());
        if let Some(a) = self.audiences.get_mut(&k) {
            for id in conns {
                a.remove(id);
            }
            if a.is_empty() {
                self.audiences.remove(&k);
            }
        }
    }
}

/// Connections of this process, by (tenant, user), and by audience. Sharded by user to keep
/// lock hold times short.
pub struct LocalPresence {
    shards: Vec<Shard>,
    index: RwLock<AudienceIndex>,
    next_id: AtomicU64,
    count: AtomicUsize,
    max_per_user: usize,
    max_queued_bytes: usize,
}

impl Default for LocalPresence {
    fn default() -> Self {
        let ws = tidings_core::config::WebSocketConfig::default();
        LocalPresence::new(ws.max_connections_per_user, ws.send_queue_bytes)
    }
}

impl LocalPresence {
    /// At most `max_per_user` connections of a user, each with at most `max_queued_bytes` of
    /// frames waiting.
    pub fn new(max_per_user: usize, max_queued_bytes: usize) -> LocalPresence {
        LocalPresence {
            shards: (0..64).map(|_| RwLock::new(HashMap::new())).collect(),
            index: RwLock::default(),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
            max_per_user: max_per_user.max(1),
            max_queued_bytes,
        }
    }

    /// Replace the audiences of a user with connections here, unless `only_at` is given and a
    /// change was applied since that version.
    fn apply_memberships(
        &self,
        tenant: &str,
        user: &str,
        memberships: &[Membership],
        only_at: Option<u64>,
    ) {
        let mut ix = self.index.write().expect("audience index lock");
        let Some(member) = ix.users.get_mut(&(tenant.to_string(), user.to_string())) else {
            return;
        };
        if only_at.is_some_and(|v| v != member.version) {
            return;
        }
        member.version += 1;
        let new: Vec<(String, u64)> = memberships
            .iter()
            .map(|m| (m.audience.key(), m.since_seq))
            .collect();
        let old = std::mem::replace(&mut member.audiences, new.clone());
        let conns = member.conns.clone();
        let ids: Vec<ConnId> = conns.iter().map(|(c, _)| *c).collect();
        for (a, _) in old.iter().filter(|(a, _)| !new.iter().any(|(n, _)| n == a)) {
            ix.unlink(tenant, a, &ids);
        }
        for (a, since) in &new {
            ix.link(tenant, a, *since, &conns);
        }
    }

    /// Offer `push` to one connection without blocking (a slow client is closed, reconnects
    /// and resumes); whether it was queued.
    fn offer(&self, sink: &ConnSink, push: &Arc<Push>) -> bool {
        match sink.offer(push.clone(), self.max_queued_bytes) {
            Offer::Queued => true,
            Offer::Slow => {
                metrics::counter!(DELIVERY_SLOW_CLOSED_TOTAL).increment(1);
                false
            }
            Offer::Gone => false,
        }
    }

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
        let conns = m.entry((tenant.to_string(), user.to_string())).or_default();
        // connections already told to close are on their way out; count the others
        let open = conns
            .iter()
            .filter(|(_, s)| !s.close.is_cancelled())
            .count();
        if open >= self.max_per_user {
            let excess = open + 1 - self.max_per_user;
            for (_, s) in conns
                .iter()
                .filter(|(_, s)| !s.close.is_cancelled())
                .take(excess)
            {
                s.close_with(tidings_core::presence::CLOSE_REPLACED);
            }
        }
        conns.push((id, sink.clone()));
        drop(m);
        self.count.fetch_add(1, Ordering::Relaxed);
        // a user already known here: the new connection joins their audiences at once
        let mut ix = self.index.write().expect("audience index lock");
        let key = (tenant.to_string(), user.to_string());
        let member = ix.users.entry(key.clone()).or_default();
        member.conns.push((id, sink.clone()));
        let audiences = member.audiences.clone();
        for (a, since) in audiences {
            ix.link(tenant, &a, since, &[(id, sink.clone())]);
        }
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
        drop(m);
        let mut ix = self.index.write().expect("audience index lock");
        let Some(member) = ix.users.get_mut(&key) else {
            return;
        };
        member.conns.retain(|(c, _)| *c != id);
        let audiences = member.audiences.clone();
        if member.conns.is_empty() {
            ix.users.remove(&key);
        }
        for (a, _) in audiences {
            ix.unlink(tenant, &a, &[id]);
        }
    }

    fn set_memberships(&self, tenant: &str, user: &str, memberships: &[Membership]) {
        self.apply_memberships(tenant, user, memberships, None);
    }

    fn membership_version(&self, tenant: &str, user: &str) -> u64 {
        let ix = self.index.read().expect("audience index lock");
        ix.users
            .get(&(tenant.to_string(), user.to_string()))
            .map_or(0, |m| m.version)
    }

    fn load_memberships(&self, tenant: &str, user: &str, memberships: &[Membership], version: u64) {
        self.apply_memberships(tenant, user, memberships, Some(version));
    }

    fn push_audience(&self, tenant: &str, audiences: &[Audience], seq: u64, push: Push) -> usize {
        let ix = self.index.read().expect("audience index lock");
        let push = Arc::new(push);
        let mut reached = 0;
        // a connection in two of the audiences gets the message once
        let mut offered: HashSet<ConnId> = HashSet::new();
        for a in audiences {
            let Some(conns) = ix.audiences.get(&(tenant.to_string(), a.key())) else {
                continue;
            };
            for (id, (since, sink)) in conns {
                if *since > seq || (audiences.len() > 1 && !offered.insert(*id)) {
                    continue;
                }
                reached += usize::from(self.offer(sink, &push));
            }
        }
        reached
    }

    async fn push(&self, tenant: &str, user: &str, push: Push) -> Result<usize> {
        let m = self.shard(tenant, user).read().expect("presence lock");
        let Some(conns) = m.get(&(tenant.to_string(), user.to_string())) else {
            return Ok(0);
        };
        let mut reached = 0;
        let push = Arc::new(push);
        for (_, sink) in conns {
            reached += usize::from(self.offer(sink, &push));
        }
        Ok(reached)
    }

    fn close_tenant(&self, tenant: &str, keep: &[u64], code: u16) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            let m = shard.read().expect("presence lock");
            for ((t, _), conns) in m.iter() {
                if t == tenant {
                    for (_, s) in conns {
                        let tag = s.shared.credential.load(Ordering::Relaxed);
                        if !keep.contains(&tag) {
                            s.close_with(code);
                            closed += 1;
                        }
                    }
                }
            }
        }
        closed
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
    use tidings_core::presence::{CLOSE_REPLACED, CLOSE_SLOW};

    fn sink(cap: usize) -> (ConnSink, tokio::sync::mpsc::Receiver<Arc<Push>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(cap);
        (ConnSink::new(tx, 0), rx)
    }

    fn push(id: &str) -> Push {
        Push {
            message_id: id.into(),
            seq: 1,
            frame: bytes::Bytes::from_static(b"{}"),
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

    fn topic(n: &str) -> Audience {
        Audience::Topic(n.into())
    }

    fn member(of: &[(&str, u64)]) -> Vec<Membership> {
        of.iter()
            .map(|(t, since_seq)| Membership {
                audience: topic(t),
                since_seq: *since_seq,
            })
            .collect()
    }

    /// An audience push reaches each connection of its members once, from their first
    /// sequence on, and follows connects, disconnects and membership changes.
    #[tokio::test]
    async fn audience_pushes_follow_the_index() {
        let p = LocalPresence::default();
        let (a1, mut ra1) = sink(8);
        let (a2, mut ra2) = sink(8);
        let (b, mut rb) = sink(8);
        let a1_id = p.attach("t", "a", a1);
        p.set_memberships("t", "a", &member(&[("x", 1), ("y", 1)]));
        // a second connection of a known user joins their audiences at once
        p.attach("t", "a", a2);
        p.attach("t", "b", b);
        p.set_memberships("t", "b", &member(&[("x", 5)]));
        // before b's first sequence: a's two connections only, each once for two audiences
        assert_eq!(
            p.push_audience("t", &[topic("x"), topic("y")], 3, push("m1")),
            2
        );
        assert_eq!(p.push_audience("t", &[topic("x")], 5, push("m2")), 3);
        assert_eq!(
            p.push_audience("t2", &[topic("x")], 9, push("m3")),
            0,
            "tenants are apart"
        );
        // memberships are replaced, and unknown users ignored
        p.set_memberships("t", "b", &member(&[("y", 6)]));
        p.set_memberships("t", "nobody", &member(&[("x", 1)]));
        assert_eq!(p.push_audience("t", &[topic("x")], 7, push("m4")), 2);
        p.detach("t", "a", a1_id);
        assert_eq!(p.push_audience("t", &[topic("y")], 8, push("m5")), 2);
        let ids = |r: &mut tokio::sync::mpsc::Receiver<Arc<Push>>| {
            let mut v = Vec::new();
            while let Ok(p) = r.try_recv() {
                v.push(p.message_id.clone());
            }
            v
        };
        assert_eq!(ids(&mut ra1), vec!["m1", "m2", "m4"]);
        assert_eq!(ids(&mut ra2), vec!["m1", "m2", "m4", "m5"]);
        assert_eq!(ids(&mut rb), vec!["m2", "m5"]);
        assert!(p.index.read().unwrap().users.len() == 2);

        // a load from the store that started before a change was applied is dropped
        let before = p.membership_version("t", "b");
        p.set_memberships("t", "b", &member(&[("z", 9)]));
        p.load_memberships("t", "b", &member(&[("y", 6)]), before);
        assert_eq!(
            p.push_audience("t", &[topic("y")], 10, push("m6")),
            1,
            "a2 only"
        );
        assert_eq!(
            p.push_audience("t", &[topic("z")], 10, push("m7")),
            1,
            "b kept z"
        );
        let now = p.membership_version("t", "b");
        p.load_memberships("t", "b", &member(&[("y", 6)]), now);
        assert_eq!(
            p.push_audience("t", &[topic("y")], 11, push("m8")),
            2,
            "a2 and b"
        );
    }

    #[tokio::test]
    async fn queues_are_bounded_in_bytes_and_users_in_connections() {
        let p = LocalPresence::new(2, 10);
        let (a, mut ra) = sink(100);
        let a_shared = a.shared.clone();
        let a_close = a.close.clone();
        p.attach("t", "u", a);
        let big = |id: &str| Push {
            message_id: id.into(),
            seq: 1,
            frame: bytes::Bytes::from_static(b"123456"),
        };
        assert_eq!(p.push("t", "u", big("m1")).await.unwrap(), 1);
        // 12 bytes would be queued: over 10
        assert_eq!(p.push("t", "u", big("m2")).await.unwrap(), 0);
        assert!(a_close.is_cancelled());
        assert_eq!(a_shared.reason.load(Ordering::Relaxed), CLOSE_SLOW);
        let got = ra.recv().await.unwrap();
        ConnSink::taken(&a_shared, &got);
        assert_eq!(a_shared.queued_bytes.load(Ordering::Relaxed), 0);

        // a third connection of one user closes the oldest open one
        let (b, _rb) = sink(8);
        let (c, _rc) = sink(8);
        let (d, _rd) = sink(8);
        let (b_close, b_shared, c_close) = (b.close.clone(), b.shared.clone(), c.close.clone());
        p.attach("t", "v", b);
        p.attach("t", "v", c);
        assert!(!b_close.is_cancelled());
        p.attach("t", "v", d);
        assert!(b_close.is_cancelled() && !c_close.is_cancelled());
        assert_eq!(b_shared.reason.load(Ordering::Relaxed), CLOSE_REPLACED);

        // a tenant's connections close except those verified by a kept secret
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let (e, f) = (ConnSink::new(tx.clone(), 7), ConnSink::new(tx, 8));
        let (e_close, f_close) = (e.close.clone(), f.close.clone());
        p.attach("t3", "x", e);
        p.attach("t3", "y", f);
        assert_eq!(p.close_tenant("t3", &[8], 4001), 1);
        assert!(e_close.is_cancelled() && !f_close.is_cancelled());
        assert_eq!(p.close_tenant("t3", &[], 4003), 2);
        assert!(f_close.is_cancelled());
    }
}
