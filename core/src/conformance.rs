//! Conformance suites: every backend of a port runs the same suite, the embedded ones in plain
//! `cargo test`, the distributed ones against real servers. Each takes fresh names (`prefix`)
//! so suites can share a server. They panic on the first broken guarantee.

use crate::bus::{Bus, Consumer, OutRecord, Record, Start, TopicSpec};
use crate::model::*;
use crate::store::{AudiencePost, Claim, NewInboxRow, Store};
use std::time::Duration;

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        replication: 0,
        retention_ms: None,
    }
}

/// Poll `c` until `n` records came or `within` passed; panics on a poll error.
async fn read_n(c: &mut dyn Consumer, n: usize, within: Duration) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(
            c.poll(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

/// Poll every consumer (keeping what they read) until each holds some partitions, and their
/// assignments are disjoint and cover `partitions`, as a group settles after a member joins
/// or leaves.
async fn settle(cs: &mut [&mut Box<dyn Consumer>], partitions: u32, read: &mut [Vec<Record>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for (i, c) in cs.iter_mut().enumerate() {
            read[i].extend(c.poll(1000, Duration::from_millis(100)).await.unwrap());
        }
        let mut all: Vec<u32> = cs.iter().flat_map(|c| c.assignment()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        let everyone = cs.iter().all(|c| !c.assignment().is_empty());
        if everyone && n == partitions as usize && all == (0..partitions).collect::<Vec<_>>() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never settled: {:?}",
            cs.iter().map(|c| c.assignment()).collect::<Vec<_>>()
        );
    }
}

/// Twenty records with twenty keys, so both partitions of a small topic get some.
fn twenty_keys(topic: &str) -> Vec<OutRecord> {
    (0..20u32)
        .map(|i| {
            OutRecord::new(
                topic,
                format!("k{i}").into_bytes(),
                i.to_be_bytes().to_vec(),
            )
        })
        .collect()
}

fn value_u32(r: &Record) -> u32 {
    u32::from_be_bytes(r.value.clone().try_into().unwrap())
}

/// The bus guarantees of [`crate::bus`].
pub async fn bus_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.conf");
    let first = bus.ensure_topic(&spec(&topic, 4)).await.unwrap();
    assert!(first.created);
    assert_eq!(first.partitions, 4);
    let again = bus.ensure_topic(&spec(&topic, 8)).await.unwrap();
    assert!(!again.created, "ensure_topic is idempotent");
    assert_eq!(
        again.partitions, 4,
        "an existing topic keeps its partitions"
    );

    // order per key, positions returned in order
    let mut recs = Vec::new();
    for i in 0..50u32 {
        let key = format!("k{}", i % 5);
        recs.push(OutRecord::new(
            &topic,
            key.into_bytes(),
            i.to_be_bytes().to_vec(),
        ));
    }
    let pos = bus.append(recs).await.unwrap();
    assert_eq!(pos.len(), 50);

    let mut c = bus.consumer("g1", &topic).await.unwrap();
    assert_eq!(c.topic(), topic);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 50 {
        let batch = c.poll(17, Duration::from_secs(1)).await.unwrap();
        assert!(batch.len() <= 17);
        got.extend(batch);
        assert!(
            tokio::time::Instant::now() < deadline,
            "poll timed out after {} records",
            got.len()
        );
    }
    assert_eq!(
        c.assignment(),
        vec![0, 1, 2, 3],
        "a lone member holds every partition"
    );
    let rb = c
        .take_rebalance()
        .expect("the first assignment is reported");
    assert_eq!(rb.assigned.len(), 4);
    for k in 0..5u32 {
        let seq: Vec<u32> = got
            .iter()
            .filter(|r| r.key == format!("k{k}").into_bytes())
            .map(value_u32)
            .collect();
        let want: Vec<u32> = (0..50).filter(|i| i % 5 == k).collect();
        assert_eq!(seq, want, "order of key k{k}");
        let parts: std::collections::HashSet<u32> = got
            .iter()
            .filter(|r| r.key == format!("k{k}").into_bytes())
            .map(|r| r.partition)
            .collect();
        assert_eq!(parts.len(), 1, "one key, one partition");
    }
    for (r, p) in got.iter().filter(|r| r.key == b"k0").zip(
        pos.iter()
            .enumerate()
            .filter(|(i, _)| i % 5 == 0)
            .map(|(_, p)| p),
    ) {
        assert_eq!(
            (r.partition, r.offset),
            (p.partition, p.offset),
            "positions"
        );
    }
    assert!(c
        .poll(10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(bus.lag("g1", &topic).await.unwrap(), 50);

    // a new member starts from the last commit
    c.commit_records(&got[..20]).await.unwrap();
    drop(c);
    let committed: Vec<(u32, u64)> = crate::bus::next_offsets(&got[..20]);
    let expect_again = got
        .iter()
        .filter(|r| {
            committed
                .iter()
                .find(|(p, _)| *p == r.partition)
                .is_none_or(|(_, n)| r.offset >= *n)
        })
        .count();
    assert_eq!(bus.lag("g1", &topic).await.unwrap(), expect_again as u64);
    let mut c2 = bus.consumer("g1", &topic).await.unwrap();
    let again = read_n(c2.as_mut(), expect_again, Duration::from_secs(30)).await;
    for r in &again {
        if let Some((_, next)) = committed.iter().find(|(p, _)| *p == r.partition) {
            assert!(
                r.offset >= *next,
                "record below the committed offset came back"
            );
        }
    }
    assert_eq!(
        again.len(),
        expect_again,
        "uncommitted records are read again"
    );
    assert!(c2
        .poll(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    drop(c2);

    // another group reads everything independently
    let mut g2 = bus.consumer("g2", &topic).await.unwrap();
    assert_eq!(
        read_n(g2.as_mut(), 50, Duration::from_secs(30)).await.len(),
        50
    );

    // a waiting poll wakes up on append
    let waiter = async {
        let b = g2.poll(10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].value, b"late".to_vec());
    };
    let appender = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bus.append(vec![OutRecord::new(
            &topic,
            b"x".to_vec(),
            b"late".to_vec(),
        )])
        .await
        .unwrap();
    };
    tokio::join!(waiter, appender);
    drop(g2);

    pipelined_order_conformance(bus, prefix).await;
    group_conformance(bus, prefix).await;
    pause_conformance(bus, prefix).await;
    pause_across_rebalance_conformance(bus, prefix).await;
    start_latest_conformance(bus, prefix).await;
}

/// A group that never committed reads from the end with [`Start::Latest`] (what was appended
/// before it held a partition is skipped), and from its commits once it has some.
async fn start_latest_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.latest");
    bus.ensure_topic(&spec(&topic, 2)).await.unwrap();
    let rec = |i: u32| {
        OutRecord::new(
            &topic,
            format!("k{i}").into_bytes(),
            i.to_be_bytes().to_vec(),
        )
    };
    bus.append((0..6).map(rec).collect()).await.unwrap();
    let mut c = bus
        .consumer_from("late-reader", &topic, Start::Latest)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.assignment().len() < 2 && tokio::time::Instant::now() < deadline {
        assert!(
            c.poll(10, Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty(),
            "nothing from before it held the partitions"
        );
    }
    assert_eq!(c.assignment().len(), 2);
    // Kafka looks the end up after the assignment: give it a moment before appending
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < settle {
        assert!(c
            .poll(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
    }
    bus.append((6..10).map(rec).collect()).await.unwrap();
    let got = read_n(c.as_mut(), 4, Duration::from_secs(20)).await;
    let mut values: Vec<u32> = got
        .iter()
        .map(|r| u32::from_be_bytes(r.value[..4].try_into().unwrap()))
        .collect();
    values.sort();
    assert_eq!(values, vec![6, 7, 8, 9]);
    c.commit_records(&got).await.unwrap();
    drop(c);
    bus.append((10..12).map(rec).collect()).await.unwrap();
    let mut again = bus
        .consumer_from("late-reader", &topic, Start::Latest)
        .await
        .unwrap();
    let got = read_n(again.as_mut(), 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "a group with commits resumes from them");
}

/// Appends started one after another and awaited together keep their order per key.
async fn pipelined_order_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.pipelined");
    bus.ensure_topic(&spec(&topic, 2)).await.unwrap();
    let mut started = Vec::new();
    for batch in 0..20u32 {
        let recs = (0..50u32)
            .map(|i| {
                let v = batch * 50 + i;
                OutRecord::new(
                    &topic,
                    format!("k{}", i % 3).into_bytes(),
                    v.to_be_bytes().to_vec(),
                )
            })
            .collect();
        let mut append = bus.append(recs);
        // the first poll fixes the append's place; it is awaited later, with the others
        if let std::task::Poll::Ready(r) = futures::poll!(append.as_mut()) {
            r.unwrap();
            continue;
        }
        started.push(append);
    }
    for r in futures::future::join_all(started).await {
        r.unwrap();
    }
    let mut c = bus.consumer("pipelined", &topic).await.unwrap();
    let got = read_n(c.as_mut(), 1000, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1000);
    for k in 0..3u32 {
        let seq: Vec<u32> = got
            .iter()
            .filter(|r| r.key == format!("k{k}").into_bytes())
            .map(value_u32)
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "pipelined appends of key k{k} out of order");
    }
}

/// A partition that is revoked while paused comes back unpaused when it is assigned again;
/// one that stayed stays paused.
async fn pause_across_rebalance_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.repause");
    bus.ensure_topic(&spec(&topic, 2)).await.unwrap();
    let mut a = bus.consumer("repause", &topic).await.unwrap();
    let mut read = vec![Vec::new(), Vec::new()];
    settle(&mut [&mut a], 2, &mut read[..1]).await;
    a.pause(&[0, 1]).unwrap();
    let mut b = bus.consumer("repause", &topic).await.unwrap();
    settle(&mut [&mut a, &mut b], 2, &mut read).await;
    let kept = a.assignment();
    assert_eq!(kept.len(), 1);
    let moved = b.assignment()[0];
    drop(b);
    let mut again = vec![Vec::new()];
    settle(&mut [&mut a], 2, &mut again).await;
    assert!(again[0].is_empty() && read.iter().all(|r| r.is_empty()));
    // records on both partitions: only the one that came back is read
    let pos = bus.append(twenty_keys(&topic)).await.unwrap();
    let on_moved = pos.iter().filter(|p| p.partition == moved).count();
    assert!(on_moved > 0 && on_moved < 20);
    let got = read_n(a.as_mut(), 20, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        on_moved,
        "the partition that came back is read, the paused one not"
    );
    assert!(got.iter().all(|r| r.partition == moved));
}

/// Two members of a group split the partitions, a commit after a revoke changes nothing, and
/// the survivor takes over from the leaver's commits.
async fn group_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.group");
    bus.ensure_topic(&spec(&topic, 4)).await.unwrap();
    let append = |from: u32, to: u32| {
        let recs = (from..to)
            .map(|i| {
                OutRecord::new(
                    &topic,
                    format!("user{}", i % 16).into_bytes(),
                    i.to_be_bytes().to_vec(),
                )
            })
            .collect::<Vec<_>>();
        bus.append(recs)
    };
    append(0, 40).await.unwrap();

    // the first member takes everything and reads it
    let mut a = bus.consumer("split", &topic).await.unwrap();
    let first = read_n(a.as_mut(), 40, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 40);
    a.take_rebalance();

    // a second member joins: the partitions split, each held by one member
    let mut b = bus.consumer("split", &topic).await.unwrap();
    let mut read = vec![Vec::new(), Vec::new()];
    settle(&mut [&mut a, &mut b], 4, &mut read).await;
    assert!(
        !a.assignment().is_empty() && !b.assignment().is_empty(),
        "both members hold partitions: {:?} {:?}",
        a.assignment(),
        b.assignment()
    );
    let lost = a
        .take_rebalance()
        .expect("the first member lost partitions");
    assert!(!lost.revoked.is_empty());
    for p in &lost.revoked {
        assert!(!a.assignment().contains(p));
        assert!(b.assignment().contains(p));
    }
    // nothing was committed before the split, so the newcomer reads its partitions from 0
    let moved: Vec<&Record> = first
        .iter()
        .filter(|r| lost.revoked.contains(&r.partition))
        .collect();
    let mut b_read = std::mem::take(&mut read[1]);
    b_read.extend(
        read_n(
            b.as_mut(),
            moved.len().saturating_sub(b_read.len()),
            Duration::from_secs(10),
        )
        .await,
    );
    assert_eq!(
        b_read.len(),
        moved.len(),
        "the newcomer reads what was never committed"
    );

    // the old holder's late commit of a revoked partition moves nothing
    let late: Vec<(u32, u64)> = crate::bus::next_offsets(&first)
        .into_iter()
        .filter(|(p, _)| lost.revoked.contains(p))
        .collect();
    a.store(&late).unwrap();
    a.commit().await.unwrap();
    let kept: Vec<(u32, u64)> = crate::bus::next_offsets(&first)
        .into_iter()
        .filter(|(p, _)| a.assignment().contains(p))
        .collect();
    a.store(&kept).unwrap();
    a.commit().await.unwrap();
    let kept_records = first
        .iter()
        .filter(|r| a.assignment().contains(&r.partition))
        .count();
    assert_eq!(
        bus.lag("split", &topic).await.unwrap(),
        (40 - kept_records) as u64,
        "only the holder's commit counts"
    );

    // new records go to whoever holds their partition, once
    append(40, 80).await.unwrap();
    let mut seen: Vec<Record> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 40 && tokio::time::Instant::now() < deadline {
        for c in [&mut a, &mut b] {
            let held = c.assignment();
            for r in c.poll(100, Duration::from_millis(100)).await.unwrap() {
                assert!(
                    held.contains(&r.partition),
                    "a record of a partition not held"
                );
                seen.push(r);
            }
        }
    }
    let mut values: Vec<u32> = seen.iter().map(value_u32).collect();
    values.sort();
    assert_eq!(values, (40..80).collect::<Vec<_>>(), "each record once");

    // b commits only what it read before the second batch, and leaves: a takes over from
    // b's commits and reads b's share of the second batch
    let b_held = b.assignment();
    b.store(&crate::bus::next_offsets(&b_read)).unwrap();
    b.commit().await.unwrap();
    drop(b);
    let mut read = vec![Vec::new()];
    settle(&mut [&mut a], 4, &mut read).await;
    let gained = a.take_rebalance().expect("the survivor gained partitions");
    for p in &b_held {
        assert!(gained.assigned.contains(p));
    }
    let want: Vec<u32> = seen
        .iter()
        .filter(|r| b_held.contains(&r.partition))
        .map(value_u32)
        .collect();
    let mut taken = std::mem::take(&mut read[0]);
    taken.extend(
        read_n(
            a.as_mut(),
            want.len().saturating_sub(taken.len()),
            Duration::from_secs(10),
        )
        .await,
    );
    let mut taken: Vec<u32> = taken.iter().map(value_u32).collect();
    taken.sort();
    let mut want = want;
    want.sort();
    assert_eq!(
        taken, want,
        "the survivor resumes from the leaver's commits"
    );
    assert!(a
        .poll(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
}

/// A paused partition yields nothing while polling goes on; resumed, it continues in order.
async fn pause_conformance(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.pause");
    bus.ensure_topic(&spec(&topic, 2)).await.unwrap();
    let mut c = bus.consumer("pauser", &topic).await.unwrap();
    // join first, so the pause applies to a held partition
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.assignment().len() < 2 {
        assert!(c
            .poll(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
        assert!(tokio::time::Instant::now() < deadline, "never assigned");
    }
    let pos = bus.append(twenty_keys(&topic)).await.unwrap();
    let on0 = pos.iter().filter(|p| p.partition == 0).count();
    assert!(on0 > 0 && on0 < 20, "both partitions have records");
    c.pause(&[0]).unwrap();
    let got = read_n(c.as_mut(), 20 - on0, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 20 - on0);
    assert!(
        got.iter().all(|r| r.partition == 1),
        "a paused partition was read"
    );
    assert!(c
        .poll(10, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    c.resume(&[0]).unwrap();
    let rest = read_n(c.as_mut(), on0, Duration::from_secs(20)).await;
    assert_eq!(rest.len(), on0);
    assert!(rest.iter().all(|r| r.partition == 0));
    let offsets: Vec<u64> = rest.iter().map(|r| r.offset).collect();
    let mut sorted = offsets.clone();
    sorted.sort();
    assert_eq!(offsets, sorted, "in order after a resume");

    // stored is not committed until commit
    let mut all = got;
    all.extend(rest);
    c.store(&crate::bus::next_offsets(&all)).unwrap();
    assert_eq!(
        bus.lag("pauser", &topic).await.unwrap(),
        20,
        "a store committed"
    );
    c.commit().await.unwrap();
    assert_eq!(bus.lag("pauser", &topic).await.unwrap(), 0);
}

/// A fresh sequence, as a writer's [`crate::seq::Sequencer`] numbers rows: by the clock,
/// above every one given before.
fn next_seq() -> u64 {
    static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let mut last = LAST.lock().unwrap();
    *last = (*last + 1024).max(crate::seq::clock(crate::model::now_ms()));
    *last
}

/// A message numbered now.
fn item(id: &str, title: &str) -> InboxItem {
    InboxItem {
        message_id: id.into(),
        seq: next_seq(),
        title: title.into(),
        body: "b".into(),
        data: serde_json::json!({"k": 1}),
        priority: Priority::Normal,
        category: None,
        status: InboxStatus::Unread,
        created_at_ms: 1,
    }
}

/// The store guarantees of [`crate::store`].
pub async fn store_conformance(store: &dyn Store, prefix: &str) {
    let t1 = format!("{prefix}-t1");
    let t2 = format!("{prefix}-t2");
    for t in [&t1, &t2] {
        let tenant = Tenant {
            id: t.clone(),
            name: "n".into(),
            api_key_hash: format!("hash-{t}"),
            jwt_secret: "s".into(),
            webhook_url: None,
            webhook_secret: "w".into(),
            created_at_ms: 1,
            previous: None,
            disabled: false,
        };
        store.create_tenant(&tenant).await.unwrap();
    }
    let got = store
        .tenant_by_api_key_hash(&format!("hash-{t1}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, t1);
    assert!(store
        .tenant_by_api_key_hash("nope")
        .await
        .unwrap()
        .is_none());
    let replace = |t: Tenant| -> crate::store::TenantChange {
        Box::new(move |stored: &mut Tenant| {
            *stored = t;
            Ok(())
        })
    };
    // changes of different fields do not undo each other; a failing change changes nothing
    store
        .modify_tenant(
            &t1,
            Box::new(|t: &mut Tenant| {
                t.webhook_url = Some("http://x".into());
                Ok(())
            }),
        )
        .await
        .unwrap();
    store
        .modify_tenant(
            &t1,
            Box::new(|t: &mut Tenant| {
                t.name = "renamed".into();
                Ok(())
            }),
        )
        .await
        .unwrap();
    let e = store
        .modify_tenant(
            &t1,
            Box::new(|t: &mut Tenant| {
                t.name = "never".into();
                Err(crate::Error::invalid("nope", "refused"))
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "nope");
    let updated = store.tenant(&t1).await.unwrap().unwrap();
    assert_eq!(
        (updated.webhook_url.as_deref(), updated.name.as_str()),
        (Some("http://x"), "renamed")
    );
    assert_eq!(
        store
            .modify_tenant("nobody", replace(updated.clone()))
            .await
            .unwrap_err()
            .code,
        "tenant_not_found"
    );
    // a rotation: the new key and the previous one both find the tenant; a second rotation
    // drops the first key
    let mut rotated = updated.clone();
    rotated.previous = Some(PreviousCredentials {
        api_key_hash: rotated.api_key_hash.clone(),
        jwt_secret: "s".into(),
        webhook_secret: "w".into(),
        until_ms: 10,
    });
    rotated.api_key_hash = format!("hash2-{t1}");
    store
        .modify_tenant(&t1, replace(rotated.clone()))
        .await
        .unwrap();
    for h in [format!("hash-{t1}"), format!("hash2-{t1}")] {
        let found = store.tenant_by_api_key_hash(&h).await.unwrap();
        assert_eq!(found.map(|t| t.id), Some(t1.clone()), "{h}");
    }
    let mut again = rotated.clone();
    again.previous.as_mut().unwrap().api_key_hash = rotated.api_key_hash.clone();
    again.api_key_hash = format!("hash3-{t1}");
    store
        .modify_tenant(&t1, replace(again.clone()))
        .await
        .unwrap();
    assert!(store
        .tenant_by_api_key_hash(&format!("hash-{t1}"))
        .await
        .unwrap()
        .is_none());
    for h in [format!("hash2-{t1}"), format!("hash3-{t1}")] {
        assert!(store.tenant_by_api_key_hash(&h).await.unwrap().is_some());
    }

    directory_conformance(store, &t1, &t2).await;
    templates_conformance(store, &t1, &t2).await;
    idempotency_conformance(store, &t1, &t2).await;
    inbox_conformance(store, &t1, &t2).await;
    status_conformance(store, &t1, &t2).await;
    dead_letters_conformance(store, &t1, &t2).await;
    audience_conformance(store, prefix).await;
    store.ready().await.unwrap();
}

/// Users, tags and subscriptions: known users and tag holders paged, subscriptions both ways, each tenant apart.
async fn directory_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // users and tags, paged
    for u in ["u3", "u1", "u2"] {
        store.touch_users(&t1, &[u.to_string()]).await.unwrap();
    }
    let profile = UserProfile {
        tags: vec!["vip".into()],
        locale: Some("zh".into()),
        ..Default::default()
    };
    store.upsert_user(&t1, "u2", &profile).await.unwrap();
    store.touch_users(&t1, &["u2".to_string()]).await.unwrap();
    assert_eq!(store.user(&t1, "u2").await.unwrap().unwrap(), profile);
    // each user once, in pages, in any order
    let p = store.users(&t1, None, 2).await.unwrap();
    assert_eq!(p.items.len(), 2);
    let p2 = store.users(&t1, p.next.as_deref(), 2).await.unwrap();
    assert_eq!(p2.next, None);
    let mut all: Vec<String> = p.items.into_iter().chain(p2.items).collect();
    all.sort();
    assert_eq!(all, vec!["u1", "u2", "u3"]);
    assert!(
        store.users(&t2, None, 10).await.unwrap().items.is_empty(),
        "tenant isolation"
    );
    assert_eq!(
        store
            .users_tagged(&t1, "vip", None, 10)
            .await
            .unwrap()
            .items,
        vec!["u2"]
    );
    store
        .upsert_user(&t1, "u2", &UserProfile::default())
        .await
        .unwrap();
    assert!(
        store
            .users_tagged(&t1, "vip", None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "tag removed"
    );

    // subscriptions both ways
    store.subscribe(&t1, "orders", "u1").await.unwrap();
    store.subscribe(&t1, "orders", "u2").await.unwrap();
    store.subscribe(&t1, "news", "u1").await.unwrap();
    let mut subs = store
        .subscribers(&t1, "orders", None, 10)
        .await
        .unwrap()
        .items;
    subs.sort();
    assert_eq!(subs, vec!["u1", "u2"]);
    let mut topics = store.subscriptions(&t1, "u1").await.unwrap();
    topics.sort();
    assert_eq!(topics, vec!["news", "orders"]);
    assert!(store.unsubscribe(&t1, "orders", "u1").await.unwrap());
    assert!(!store.unsubscribe(&t1, "orders", "u1").await.unwrap());
    assert_eq!(
        store
            .subscribers(&t1, "orders", None, 10)
            .await
            .unwrap()
            .items,
        vec!["u2"]
    );
    assert!(store
        .subscribers(&t2, "orders", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
}

/// Templates: each save a new version, every kept version readable.
async fn templates_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // templates
    let tpl = Template {
        inapp: InappTemplate {
            title: "t".into(),
            body: "b".into(),
        },
        ..Default::default()
    };
    // templates: each save is a new version; every version stays readable
    assert_eq!(store.put_template(&t1, "k", &tpl).await.unwrap(), 1);
    let v1 = Template {
        version: 1,
        ..tpl.clone()
    };
    assert_eq!(store.template(&t1, "k").await.unwrap().unwrap(), v1);
    let mut changed = tpl.clone();
    changed.inapp.title = "changed".into();
    assert_eq!(store.put_template(&t1, "k", &changed).await.unwrap(), 2);
    assert_eq!(store.template(&t1, "k").await.unwrap().unwrap().version, 2);
    assert_eq!(
        store.template_version(&t1, "k", 1).await.unwrap().unwrap(),
        v1
    );
    assert_eq!(
        store
            .template_version(&t1, "k", 2)
            .await
            .unwrap()
            .unwrap()
            .inapp
            .title,
        "changed"
    );
    assert!(store.template_version(&t1, "k", 3).await.unwrap().is_none());
    assert!(store.template(&t2, "k").await.unwrap().is_none());
    assert!(store.template_version(&t2, "k", 1).await.unwrap().is_none());
}

/// Idempotency keys: the first claim wins within its time to live; confirm and release.
async fn idempotency_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // idempotency: first claim wins within the ttl, expires after, release undoes; a claim
    // carries its fingerprint and is unconfirmed until confirmed
    let existing = |id: &str, fp: &str, confirmed: bool| Claim::Existing {
        message_id: id.into(),
        fingerprint: fp.into(),
        confirmed,
    };
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m1", "f1", 1000, 500)
            .await
            .unwrap(),
        Claim::New
    );
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m2", "f2", 1400, 500)
            .await
            .unwrap(),
        existing("m1", "f1", false)
    );
    // confirming another id changes nothing; confirming the bound one sticks
    store
        .confirm_idempotency(&t1, "key", "m2", "f2", 1410)
        .await
        .unwrap();
    store
        .confirm_idempotency(&t1, "key", "m1", "f1", 1410)
        .await
        .unwrap();
    store
        .confirm_idempotency(&t1, "key", "m1", "f1", 1420)
        .await
        .unwrap();
    // a confirmed binding is never released
    store.release_idempotency(&t1, "key", "m1").await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m2", "f1", 1450, 500)
            .await
            .unwrap(),
        existing("m1", "f1", true)
    );
    assert_eq!(
        store
            .claim_idempotency(&t2, "key", "m3", "f1", 1400, 500)
            .await
            .unwrap(),
        Claim::New
    );
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m4", "f4", 1600, 500)
            .await
            .unwrap(),
        Claim::New
    );
    store.release_idempotency(&t1, "key", "m4").await.unwrap();
    // a request confirmed after a concurrent attempt released the key binds it again
    store
        .confirm_idempotency(&t1, "key", "m4", "f4", 1610)
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m9", "f4", 1620, 500)
            .await
            .unwrap(),
        existing("m4", "f4", true)
    );
    assert_eq!(
        store
            .claim_idempotency(&t1, "key", "m5", "f5", 2200, 500)
            .await
            .unwrap(),
        Claim::New
    );
}

/// The inbox of own rows: idempotent appends, growing sequences, paging both ways, status forward only.
async fn inbox_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // inbox: idempotent appends, growing seqs, paging both ways, status forward only
    let rows: Vec<NewInboxRow> = (0..5)
        .map(|i| NewInboxRow {
            tenant_id: t1.clone(),
            user_id: "u1".into(),
            item: item(&format!("m{i}"), &format!("title {i}")),
        })
        .collect();
    let a = store.append_inbox(&rows).await.unwrap();
    let given: Vec<u64> = rows.iter().map(|r| r.item.seq).collect();
    assert_eq!(a, given, "rows are at the sequences their writer gave");
    let again = store.append_inbox(&rows[1..2]).await.unwrap();
    assert_eq!(
        again[0], a[1],
        "a repeat numbered alike writes the same row"
    );
    assert_eq!(store.unread_count(&t1, "u1").await.unwrap(), 5);
    // a repeat numbered again (routed again) leaves one row, where it was or at the new one
    let mut once = rows[1].clone();
    once.user_id = "u3".into();
    let first = store.append_inbox(&[once.clone()]).await.unwrap()[0];
    once.item = item("m1", "title 1");
    let moved = store.append_inbox(&[once.clone()]).await.unwrap()[0];
    assert!(moved == first || moved == once.item.seq);
    let all = store.inbox_page(&t1, "u3", None, 10).await.unwrap();
    assert_eq!(
        (ids(&all), all[0].seq),
        (vec!["m1"], moved),
        "each message once"
    );
    assert_eq!(store.unread_count(&t1, "u3").await.unwrap(), 1);
    assert_eq!(store.unread_count(&t2, "u1").await.unwrap(), 0);

    let page = store.inbox_page(&t1, "u1", None, 2).await.unwrap();
    assert_eq!(ids(&page), vec!["m4", "m3"]);
    let page2 = store
        .inbox_page(&t1, "u1", Some(page[1].seq), 10)
        .await
        .unwrap();
    assert_eq!(ids(&page2), vec!["m2", "m1", "m0"]);
    assert_eq!(page2[0].data, serde_json::json!({"k": 1}));

    assert_eq!(store.inbox_seq(&t1, "u1", "m2").await.unwrap(), Some(a[2]));
    assert_eq!(store.inbox_seq(&t2, "u1", "m2").await.unwrap(), None);
    let after = store.inbox_after(&t1, "u1", a[2], false, 10).await.unwrap();
    assert_eq!(ids(&after), vec!["m3", "m4"]);

    let changed = store
        .set_inbox_status(
            &t1,
            "u1",
            &["m0".into(), "m1".into(), "zz".into()],
            InboxStatus::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(changed, vec!["m0", "m1"]);
    assert_eq!(
        store.unread_count(&t1, "u1").await.unwrap(),
        5,
        "delivered is still unread"
    );
    store
        .set_inbox_status(&t1, "u1", &["m0".into()], InboxStatus::Read)
        .await
        .unwrap();
    let back = store
        .set_inbox_status(&t1, "u1", &["m0".into()], InboxStatus::Delivered)
        .await
        .unwrap();
    assert!(back.is_empty(), "status never moves back");
    assert_eq!(store.unread_count(&t1, "u1").await.unwrap(), 4);
    let unread = store.inbox_after(&t1, "u1", 0, true, 10).await.unwrap();
    assert_eq!(ids(&unread), vec!["m1", "m2", "m3", "m4"]);
    store
        .set_inbox_status(&t1, "u1", &["m4".into()], InboxStatus::Deleted)
        .await
        .unwrap();
    assert_eq!(store.unread_count(&t1, "u1").await.unwrap(), 3);
    assert_eq!(
        ids(&store.inbox_page(&t1, "u1", None, 10).await.unwrap()),
        vec!["m3", "m2", "m1", "m0"]
    );
    assert_eq!(store.mark_all_read(&t1, "u1").await.unwrap(), 3);
    assert_eq!(store.unread_count(&t1, "u1").await.unwrap(), 0);
    let later = store
        .append_inbox(&[NewInboxRow {
            tenant_id: t1.clone(),
            user_id: "u1".into(),
            item: item("m9", "late"),
        }])
        .await
        .unwrap();
    assert!(later[0] > a[4], "seqs keep growing");
}

/// Messages and delivery statuses: forward only; an ack or a read moves the row and the status together.
async fn status_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // messages and delivery status
    let msg = MessageRecord {
        tenant_id: t1.clone(),
        message_id: "m0".into(),
        priority: Priority::High,
        category: Some("c".into()),
        template: None,
        title: "t".into(),
        body: "b".into(),
        data: serde_json::json!({}),
        channels: vec![Channel::Inapp],
        created_at_ms: 5,
        expires_at_ms: None,
        failure: None,
    };
    store
        .put_messages(std::slice::from_ref(&msg))
        .await
        .unwrap();
    store
        .put_messages(std::slice::from_ref(&msg))
        .await
        .unwrap();
    assert_eq!(store.message(&t1, "m0").await.unwrap().unwrap(), msg);
    assert!(store.message(&t2, "m0").await.unwrap().is_none());
    let st = |user: &str, state, attempts| DeliveryStatus {
        user_id: user.into(),
        channel: Channel::Webhook,
        state,
        attempts,
        last_error: None,
        updated_at_ms: 1,
    };
    store
        .put_delivery_status(
            &t1,
            "m0",
            &[
                st("u1", DeliveryState::Pending, 0),
                st("u2", DeliveryState::Pending, 0),
            ],
        )
        .await
        .unwrap();
    store
        .put_delivery_status(&t1, "m0", &[st("u1", DeliveryState::Delivered, 1)])
        .await
        .unwrap();
    store
        .put_delivery_status(&t1, "m0", &[st("u1", DeliveryState::Pending, 0)])
        .await
        .unwrap();
    let s = store
        .delivery_status(&t1, "m0", None, 100)
        .await
        .unwrap()
        .items;
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[0].state,
        DeliveryState::Delivered,
        "state never moves back"
    );
    assert_eq!(s[1].state, DeliveryState::Pending);
    // paged: every status once, however the pages fall
    let many: Vec<DeliveryStatus> = (0..7)
        .map(|i| st(&format!("p{i}"), DeliveryState::Pending, 0))
        .collect();
    store
        .put_delivery_status(&t1, "m-paged", &many)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .delivery_status(&t1, "m-paged", after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|s| s.user_id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
    assert!(store
        .delivery_status(&t2, "m-paged", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());

    // ack and read: inbox row and in-app status move together, forward only
    let rows: Vec<NewInboxRow> = ["s0", "s1"]
        .iter()
        .map(|id| NewInboxRow {
            tenant_id: t1.clone(),
            user_id: "u7".into(),
            item: item(id, "settled"),
        })
        .collect();
    store.append_inbox(&rows).await.unwrap();
    let inapp_state = |m: &'static str| {
        let store = &store;
        let t1 = t1.clone();
        async move {
            store
                .delivery_status(&t1, m, None, 100)
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|s| s.user_id == "u7" && s.channel == Channel::Inapp)
                .map(|s| s.state)
        }
    };
    let changed = store
        .settle_inapp(
            &t1,
            "u7",
            &["s0".into(), "nope".into()],
            InboxStatus::Delivered,
            DeliveryState::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(changed, vec!["s0"]);
    assert_eq!(inapp_state("s0").await, Some(DeliveryState::Delivered));
    assert_eq!(inapp_state("s1").await, None, "only the settled ids");
    store
        .settle_inapp(
            &t1,
            "u7",
            &["s0".into()],
            InboxStatus::Read,
            DeliveryState::Read,
        )
        .await
        .unwrap();
    let back = store
        .settle_inapp(
            &t1,
            "u7",
            &["s0".into()],
            InboxStatus::Delivered,
            DeliveryState::Delivered,
        )
        .await
        .unwrap();
    assert!(back.is_empty(), "an ack after the read changes nothing");
    assert_eq!(inapp_state("s0").await, Some(DeliveryState::Read));
    assert_eq!(store.unread_count(&t1, "u7").await.unwrap(), 1);
}

/// Dead letters: replaced by id, listed in order, removed only while they hold the replayed failure.
async fn dead_letters_conformance(store: &dyn Store, t1: &str, t2: &str) {
    let (t1, t2) = (t1.to_string(), t2.to_string());
    // dead letters
    for i in 0..3 {
        let e = DlqEntry {
            id: format!("d{i}"),
            kind: DlqKind::Delivery,
            tenant_id: t1.clone(),
            message_id: "m0".into(),
            user_id: "u1".into(),
            channel: Channel::Webhook,
            attempts: 5,
            error: "http 500".into(),
            failed_at_ms: i,
            delivery: vec![0, 1, 2],
        };
        store.dlq_put(&e).await.unwrap();
    }
    let l = store.dlq_list(&t1, None, 2).await.unwrap();
    assert_eq!(
        l.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["d0", "d1"]
    );
    assert_eq!(store.dlq_list(&t1, Some("d1"), 10).await.unwrap().len(), 1);
    // the same id again replaces the entry (a redelivered failure is one entry)
    let mut again = store.dlq_get(&t1, "d2").await.unwrap().unwrap();
    again.attempts = 6;
    store.dlq_put(&again).await.unwrap();
    let all = store.dlq_list(&t1, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].attempts, 6);
    assert!(store.dlq_get(&t2, "d2").await.unwrap().is_none());
    assert!(store.dlq_list(&t2, None, 10).await.unwrap().is_empty());
    assert_eq!(
        store.dlq_get(&t1, "d1").await.unwrap().unwrap().delivery,
        vec![0, 1, 2]
    );
    // removal only of the failure that was replayed
    assert!(!store.dlq_remove(&t1, "d1", 99).await.unwrap());
    assert!(store.dlq_remove(&t1, "d1", 1).await.unwrap());
    assert!(store.dlq_get(&t1, "d1").await.unwrap().is_none());
    assert!(!store.dlq_remove(&t1, "d1", 1).await.unwrap());
    assert!(!store.dlq_remove(&t2, "d0", 0).await.unwrap());
}

/// Every audience guarantee of [`crate::store`], each in a tenant of its own.
pub async fn audience_conformance(store: &dyn Store, prefix: &str) {
    membership_at_send_time(store, &format!("{prefix}-a1")).await;
    merged_order_and_paging(store, &format!("{prefix}-a2")).await;
    resume_across_own_and_audience(store, &format!("{prefix}-a3")).await;
    sparse_read_and_delete(store, &format!("{prefix}-a4")).await;
    read_all_is_one_mark(store, &format!("{prefix}-a5")).await;
    reads_stop_below_the_floor(store, &format!("{prefix}-a6")).await;
}

/// Rows arrive numbered by their writers and may commit out of order: reads and resumes show
/// only what is below the lowest floor an owner holds, so a resume never passes a row numbered
/// earlier that commits later, and a resume waits until every row committed before it shows;
/// "read all" marks only what reads show.
async fn reads_stop_below_the_floor(store: &dyn Store, t: &str) {
    let (o1, o2) = (format!("{t}-owner-1"), format!("{t}-owner-2"));
    store.subscribe(t, "a", "u").await.unwrap();
    let first = own(store, t, "u", "first").await;
    // o1 numbers "early" and holds its floor there; "later", numbered after, commits first
    let early = item("early", "early");
    store.hold_floor(&o1, Some(early.seq)).await.unwrap();
    let later = own(store, t, "u", "later").await;
    post(store, t, "shared", vec![topic("a")], &[]).await;
    assert!(later > early.seq);
    assert_eq!(
        page(store, t, "u").await,
        vec!["first"],
        "nothing above the floor shows"
    );
    // a resume shows every row committed before it: it waits for the floor to pass "later"
    let resume = store.inbox_after(t, "u", first, false, 10);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(200), resume).await;
    assert!(
        waited.is_err(),
        "a resume waits while rows committed before it cannot show"
    );
    assert_eq!(
        store.unread_count(t, "u").await.unwrap(),
        3,
        "counts include what does not show yet"
    );
    // read all: only what shows is read
    assert_eq!(store.mark_all_read(t, "u").await.unwrap(), 1);
    // a second owner's lower floor holds reads lower still, and the lowest floor wins
    store.hold_floor(&o2, Some(first)).await.unwrap();
    assert!(
        page(store, t, "u").await.is_empty(),
        "the lowest floor wins"
    );
    store.hold_floor(&o2, None).await.unwrap();
    // the early row commits, still at the floor: it does not show until the floor rises
    let row = NewInboxRow {
        tenant_id: t.into(),
        user_id: "u".into(),
        item: early.clone(),
    };
    let at = store.append_inbox(&[row]).await.unwrap();
    assert_eq!(at[0], early.seq, "a row keeps the sequence its writer gave");
    assert_eq!(page(store, t, "u").await, vec!["first"]);
    store.hold_floor(&o1, None).await.unwrap();
    assert_eq!(
        page(store, t, "u").await,
        vec!["shared", "later", "early", "first"],
        "by sequence, not by commit"
    );
    let resumed = store.inbox_after(t, "u", first, false, 10).await.unwrap();
    assert_eq!(ids(&resumed), vec!["early", "later", "shared"]);
    // a client pushed "later" (or "shared") before "early" committed resumes from where
    // "later" was written: "early", written after it, is replayed
    for pushed in ["later", "shared"] {
        let from = store.resume_point(t, "u", pushed).await.unwrap().unwrap();
        let at = store.inbox_seq(t, "u", pushed).await.unwrap().unwrap();
        assert!(
            from <= at.min(early.seq),
            "{pushed}: {from} above {}",
            early.seq
        );
        let replay = store.inbox_after(t, "u", from, false, 10).await.unwrap();
        assert!(
            ids(&replay).contains(&"early"),
            "{pushed}: {:?}",
            ids(&replay)
        );
    }
    let from = store.resume_point(t, "u", "first").await.unwrap().unwrap();
    assert!(from <= first);
    assert_eq!(store.resume_point(t, "u", "nope").await.unwrap(), None);
    assert_eq!(store.resume_point(t, "w", "later").await.unwrap(), None);
    assert!(
        resumed.iter().all(|i| i.status == InboxStatus::Unread),
        "what did not show was not marked read"
    );
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 3);
    assert!(store.last_seq().await.unwrap() >= resumed[2].seq);
    // a second message at a taken sequence is refused; its writer numbers it again
    let mut clash = item("clash", "clash");
    clash.seq = later;
    let refused = store
        .append_inbox(&[NewInboxRow {
            tenant_id: t.into(),
            user_id: "u".into(),
            item: clash,
        }])
        .await;
    assert!(refused.is_err(), "a taken sequence is refused");
    assert_eq!(page(store, t, "u").await.len(), 4);
}

async fn post(
    store: &dyn Store,
    t: &str,
    id: &str,
    audiences: Vec<Audience>,
    listed: &[&str],
) -> u64 {
    store
        .post_audience(&AudiencePost {
            tenant_id: t.into(),
            audiences,
            listed: listed.iter().map(|u| u.to_string()).collect(),
            item: item(id, id),
        })
        .await
        .unwrap()
}

async fn own(store: &dyn Store, t: &str, user: &str, id: &str) -> u64 {
    store
        .append_inbox(&[NewInboxRow {
            tenant_id: t.into(),
            user_id: user.into(),
            item: item(id, id),
        }])
        .await
        .unwrap()[0]
}

async fn page(store: &dyn Store, t: &str, user: &str) -> Vec<String> {
    let items = store.inbox_page(t, user, None, 100).await.unwrap();
    items.into_iter().map(|i| i.message_id).collect()
}

fn topic(n: &str) -> Audience {
    Audience::Topic(n.into())
}

/// Recipients are the members when the message is posted: a user who joins later does not see
/// it, one who leaves later keeps it; the whole tenant is every known user; tags follow the
/// profile; posting is idempotent; the summary counts members at posting time.
async fn membership_at_send_time(store: &dyn Store, t: &str) {
    store.subscribe(t, "news", "early").await.unwrap();
    store.subscribe(t, "news", "leaver").await.unwrap();
    let posted = post(store, t, "m1", vec![topic("news")], &[]).await;
    // posted again, numbered again (routed again): still one message, wherever it is now
    let first = post(store, t, "m1", vec![topic("news")], &[]).await;
    assert!(first >= posted, "posting is idempotent");
    assert_eq!(page(store, t, "early").await, vec!["m1"]);
    store.subscribe(t, "news", "late").await.unwrap();
    assert!(store.unsubscribe(t, "news", "leaver").await.unwrap());
    post(store, t, "m2", vec![topic("news")], &[]).await;
    assert_eq!(page(store, t, "early").await, vec!["m2", "m1"]);
    assert_eq!(page(store, t, "late").await, vec!["m2"], "joined after m1");
    assert_eq!(page(store, t, "leaver").await, vec!["m1"], "left before m2");
    assert_eq!(store.inbox_seq(t, "late", "m1").await.unwrap(), None);
    assert_eq!(
        store.inbox_seq(t, "leaver", "m1").await.unwrap(),
        Some(first)
    );
    // rejoining sees what is posted from then on, not what was missed
    store.subscribe(t, "news", "leaver").await.unwrap();
    post(store, t, "m3", vec![topic("news")], &[]).await;
    assert_eq!(page(store, t, "leaver").await, vec!["m3", "m1"]);

    let s = store.audience_message(t, "m1").await.unwrap().unwrap();
    assert_eq!((s.seq, s.recipients, s.delivered, s.read), (first, 2, 0, 0));
    assert_eq!(s.audiences, vec![topic("news")]);
    assert!(store.audience_message(t, "nope").await.unwrap().is_none());

    // the whole tenant: every user known when it is posted
    store.touch_users(t, &["known".into()]).await.unwrap();
    post(store, t, "all", vec![Audience::Everyone], &[]).await;
    store.touch_users(t, &["newcomer".into()]).await.unwrap();
    assert_eq!(page(store, t, "known").await, vec!["all"]);
    assert!(page(store, t, "newcomer").await.is_empty());
    assert_eq!(page(store, t, "early").await, vec!["all", "m3", "m2", "m1"]);

    // tags follow the profile
    let tagged = UserProfile {
        tags: vec!["vip".into()],
        ..Default::default()
    };
    store.upsert_user(t, "v", &tagged).await.unwrap();
    post(store, t, "g1", vec![Audience::Tag("vip".into())], &[]).await;
    store
        .upsert_user(t, "v", &UserProfile::default())
        .await
        .unwrap();
    post(store, t, "g2", vec![Audience::Tag("vip".into())], &[]).await;
    assert_eq!(page(store, t, "v").await, vec!["g1"]);
    let m = store.memberships(t, "early").await.unwrap();
    let audiences: Vec<&Audience> = m.iter().map(|m| &m.audience).collect();
    assert_eq!(audiences, vec![&Audience::Everyone, &topic("news")]);
    assert!(store
        .memberships(t, "v")
        .await
        .unwrap()
        .iter()
        .all(|m| m.audience == Audience::Everyone));
    // another tenant sees nothing of it
    let other = format!("{t}-other");
    store.subscribe(&other, "news", "early").await.unwrap();
    assert!(page(store, &other, "early").await.is_empty());
    assert!(store
        .audience_message(&other, "m1")
        .await
        .unwrap()
        .is_none());
}

/// Own rows and audience messages merge newest first by one sequence, each message once (a
/// listed user who is also a member, a member of two of its audiences), paged by cursor
/// without gaps or repeats.
async fn merged_order_and_paging(store: &dyn Store, t: &str) {
    for topic_name in ["a", "b"] {
        store.subscribe(t, topic_name, "u").await.unwrap();
    }
    let mut want = Vec::new();
    for i in 0..30 {
        let id = format!("x{i:02}");
        match i % 3 {
            0 => {
                own(store, t, "u", &id).await;
            }
            1 => {
                post(store, t, &id, vec![topic("a"), topic("b")], &[]).await;
            }
            _ => {
                post(store, t, &id, vec![topic("b")], &["u"]).await;
            }
        }
        want.push(id);
    }
    want.reverse();
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let items = store.inbox_page(t, "u", before, 7).await.unwrap();
        let Some(last) = items.last() else { break };
        assert!(
            items.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
        before = Some(last.seq);
        got.extend(items.into_iter().map(|i| i.message_id));
    }
    assert_eq!(got, want, "every message once, in order, across pages");
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 30);
}

/// Resume reads oldest first after a sequence across own rows and audiences, each once.
async fn resume_across_own_and_audience(store: &dyn Store, t: &str) {
    store.subscribe(t, "a", "u").await.unwrap();
    let s1 = own(store, t, "u", "o1").await;
    post(store, t, "p1", vec![topic("a")], &[]).await;
    own(store, t, "u", "o2").await;
    post(store, t, "p2", vec![topic("a")], &["u"]).await;
    let after = store.inbox_after(t, "u", s1, false, 100).await.unwrap();
    assert_eq!(ids(&after), vec!["p1", "o2", "p2"]);
    let seq = store.inbox_seq(t, "u", "p1").await.unwrap().unwrap();
    let after = store.inbox_after(t, "u", seq, false, 1).await.unwrap();
    assert_eq!(ids(&after), vec!["o2"], "limit holds");
    let all = store.inbox_after(t, "u", 0, true, 100).await.unwrap();
    assert_eq!(ids(&all), vec!["o1", "p1", "o2", "p2"]);
}

/// Read, ack and delete of an audience message are stored for the user who acts only, move
/// forward only, keep the unread count right, and are counted on the message.
async fn sparse_read_and_delete(store: &dyn Store, t: &str) {
    for u in ["u", "w"] {
        store.subscribe(t, "a", u).await.unwrap();
    }
    for id in ["p1", "p2", "p3"] {
        post(store, t, id, vec![topic("a")], &[]).await;
    }
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 3);
    let changed = store
        .settle_inapp(
            t,
            "u",
            &["p1".into(), "nope".into()],
            InboxStatus::Delivered,
            DeliveryState::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(changed, vec!["p1"]);
    let changed = store
        .set_inbox_status(t, "u", &["p1".into(), "p2".into()], InboxStatus::Read)
        .await
        .unwrap();
    assert_eq!(changed, vec!["p1", "p2"]);
    let back = store
        .set_inbox_status(t, "u", &["p1".into()], InboxStatus::Delivered)
        .await
        .unwrap();
    assert!(back.is_empty(), "status never moves back");
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 1);
    assert_eq!(
        store.unread_count(t, "w").await.unwrap(),
        3,
        "w did nothing"
    );
    store
        .set_inbox_status(t, "u", &["p3".into()], InboxStatus::Deleted)
        .await
        .unwrap();
    assert_eq!(page(store, t, "u").await, vec!["p2", "p1"]);
    assert_eq!(page(store, t, "w").await, vec!["p3", "p2", "p1"]);
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 0);
    let items = store.inbox_page(t, "u", None, 10).await.unwrap();
    assert!(items.iter().all(|i| i.status == InboxStatus::Read));
    let s = store.audience_message(t, "p1").await.unwrap().unwrap();
    assert_eq!((s.recipients, s.delivered, s.read), (2, 1, 1));
    let statuses = store
        .delivery_status(t, "p1", None, 100)
        .await
        .unwrap()
        .items;
    assert_eq!(statuses.len(), 1, "one entry: the user who acted");
    // many users settled in one call, each confined to what they see
    let many = store
        .settle_many(&[
            crate::store::Settle {
                tenant_id: t.into(),
                user_id: "w".into(),
                ids: vec!["p1".into(), "p2".into()],
                status: InboxStatus::Delivered,
                state: DeliveryState::Delivered,
            },
            crate::store::Settle {
                tenant_id: t.into(),
                user_id: "stranger".into(),
                ids: vec!["p1".into()],
                status: InboxStatus::Read,
                state: DeliveryState::Read,
            },
        ])
        .await
        .unwrap();
    assert_eq!(many, vec![vec!["p1".to_string(), "p2".to_string()], vec![]]);
    let s = store.audience_message(t, "p1").await.unwrap().unwrap();
    assert_eq!((s.delivered, s.read), (2, 1));
    assert_eq!(
        store.unread_count(t, "w").await.unwrap(),
        3,
        "delivered is still unread"
    );
    // a user who never saw a message cannot mark it
    assert!(store
        .set_inbox_status(t, "stranger", &["p1".into()], InboxStatus::Read)
        .await
        .unwrap()
        .is_empty());
}

/// "Read all" marks every own row and every audience message posted so far read, not the
/// ones posted after it; an ack after it moves nothing back, the unread count follows.
async fn read_all_is_one_mark(store: &dyn Store, t: &str) {
    store.subscribe(t, "a", "u").await.unwrap();
    for i in 0..5 {
        post(store, t, &format!("p{i}"), vec![topic("a")], &[]).await;
    }
    own(store, t, "u", "o1").await;
    own(store, t, "u", "o2").await;
    let o = |id: &str| vec![id.to_string()];
    store
        .set_inbox_status(t, "u", &o("o2"), InboxStatus::Delivered)
        .await
        .unwrap();
    // delivered is not read yet
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 7);
    assert_eq!(store.mark_all_read(t, "u").await.unwrap(), 7);
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 0);
    // own rows are read too, without being rewritten one by one
    let items = store.inbox_page(t, "u", None, 100).await.unwrap();
    assert_eq!(items.len(), 7);
    assert!(
        items.iter().all(|i| i.status == InboxStatus::Read),
        "everything before the read mark reads as read: {items:?}"
    );
    assert!(
        store
            .settle_inapp(
                t,
                "u",
                &o("o1"),
                InboxStatus::Delivered,
                DeliveryState::Delivered
            )
            .await
            .unwrap()
            .is_empty(),
        "an ack after read-all moves nothing back"
    );
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 0);
    post(store, t, "later", vec![topic("a")], &[]).await;
    own(store, t, "u", "o3").await;
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 2);
    let unread = store.inbox_after(t, "u", 0, true, 100).await.unwrap();
    assert_eq!(ids(&unread), vec!["later", "o3"]);
    // deleting a row read by the mark hides it and leaves the count alone
    store
        .set_inbox_status(t, "u", &o("o1"), InboxStatus::Deleted)
        .await
        .unwrap();
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 2);
    assert!(!ids(&store.inbox_page(t, "u", None, 100).await.unwrap()).contains(&"o1"));
    store
        .settle_inapp(t, "u", &o("o3"), InboxStatus::Read, DeliveryState::Read)
        .await
        .unwrap();
    assert_eq!(store.unread_count(t, "u").await.unwrap(), 1);
}

fn ids(items: &[InboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.message_id.as_str()).collect()
}

/// A bus whose appends fail as unavailable `refusals` times, then pass through.
struct Refusing {
    inner: std::sync::Arc<dyn Bus>,
    refusals: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Bus for Refusing {
    async fn ensure_topic(&self, spec: &TopicSpec) -> crate::Result<crate::bus::TopicState> {
        self.inner.ensure_topic(spec).await
    }
    async fn append(&self, records: Vec<OutRecord>) -> crate::Result<Vec<crate::bus::Position>> {
        use std::sync::atomic::Ordering;
        let left = self.refusals.load(Ordering::Relaxed);
        if left > 0 {
            self.refusals.store(left - 1, Ordering::Relaxed);
            return Err(crate::Error::unavailable("the bus is down (test)"));
        }
        self.inner.append(records).await
    }
    async fn consumer_from(
        &self,
        group: &str,
        topic: &str,
        start: Start,
    ) -> crate::Result<Box<dyn Consumer>> {
        self.inner.consumer_from(group, topic, start).await
    }
    async fn lag(&self, group: &str, topic: &str) -> crate::Result<u64> {
        self.inner.lag(group, topic).await
    }
    async fn ready(&self) -> crate::Result<()> {
        self.inner.ready().await
    }
}

/// The stage runner ([`crate::stage`]) on a backend: undecodable records and records that
/// fail for good are dead-lettered with their reason (each once, also when the dead-letter
/// topic refuses appends for a while), passing failures are retried without redoing finished
/// records, order within a partition holds, the stage never stops on a bad record, and
/// everything ends committed.
pub async fn runner_conformance(bus: std::sync::Arc<dyn Bus>, prefix: &str) {
    use crate::stage::{Batch, DeadLetters, Handler, Lane};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen {
        handled: Vec<u32>,
        failed: Vec<u32>,
        attempts_of_7: u32,
    }
    struct Picky {
        seen: Arc<Mutex<Seen>>,
    }
    #[async_trait::async_trait]
    impl Handler for Picky {
        type Item = u32;
        fn name(&self) -> &'static str {
            "test"
        }
        fn decode(&self, r: &Record) -> crate::Result<u32> {
            let bytes: [u8; 4] = r
                .value
                .clone()
                .try_into()
                .map_err(|_| crate::Error::invalid("undecodable", "not four bytes"))?;
            Ok(u32::from_be_bytes(bytes))
        }
        async fn handle(&mut self, batch: &mut Batch<u32>) -> crate::Result<()> {
            for i in batch.open() {
                let v = batch.entry(i).item;
                let mut seen = self.seen.lock().unwrap();
                if v == 13 {
                    return Err(crate::Error::invalid("unlucky", "thirteen"));
                }
                if v == 7 {
                    seen.attempts_of_7 += 1;
                    if seen.attempts_of_7 < 3 {
                        return Err(crate::Error::unavailable("seven is shy"));
                    }
                }
                seen.handled.push(v);
                drop(seen);
                batch.finish(i);
            }
            Ok(())
        }
        async fn failed(&mut self, _r: &Record, v: &u32, _e: &crate::Error) -> crate::Result<()> {
            self.seen.lock().unwrap().failed.push(*v);
            Ok(())
        }
    }

    let topic = format!("{prefix}.stage");
    let dlq = format!("{prefix}.stage-dlq");
    bus.ensure_topic(&spec(&topic, 2)).await.unwrap();
    bus.ensure_topic(&spec(&dlq, 1)).await.unwrap();
    let mut recs: Vec<OutRecord> = (0..20u32)
        .map(|i| OutRecord::new(&topic, b"one-key".to_vec(), i.to_be_bytes().to_vec()))
        .collect();
    recs.insert(
        5,
        OutRecord::new(&topic, b"one-key".to_vec(), b"??".to_vec()),
    );
    bus.append(recs).await.unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let lanes = vec![Lane {
        consumer: bus.consumer("stage", &topic).await.unwrap(),
        max: 64,
    }];
    // the dead-letter topic refuses the first appends, as a bus that is down does: the
    // runner waits them out (polling, paused) and writes each letter once
    let letters = DeadLetters {
        bus: Arc::new(Refusing {
            inner: bus.clone(),
            refusals: std::sync::atomic::AtomicU32::new(2),
        }),
        topic: dlq.clone(),
    };
    let runner = tokio::spawn(crate::stage::run_with(
        letters,
        Picky { seen: seen.clone() },
        lanes,
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().handled.len() < 19 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stage stalled: {:?}",
            seen.lock().unwrap().handled
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // everything is committed soon after (the runner commits every 100 ms)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bus.lag("stage", &topic).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    {
        let seen = seen.lock().unwrap();
        let want: Vec<u32> = (0..20).filter(|v| *v != 13).collect();
        assert_eq!(seen.handled, want, "each once, in order");
        assert_eq!(seen.failed, vec![13]);
        assert_eq!(seen.attempts_of_7, 3, "retried until it passed");
    }

    let mut reader = bus.consumer("dlq-reader", &dlq).await.unwrap();
    let letters = read_n(reader.as_mut(), 2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2);
    assert!(
        reader
            .poll(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "each letter once"
    );
    assert!(letters[0]
        .value
        .starts_with(b"undecodable: not four bytes\n??"));
    assert!(letters[1].value.starts_with(b"unlucky: thirteen\n"));
    assert_eq!(
        &letters[1].value[letters[1].value.len() - 4..],
        &13u32.to_be_bytes()
    );
}
