//! Criterion micro-benchmarks of the hot paths: Avro encode/decode of a request, template
//! render, recipient expansion, the merged inbox of a user in many audiences, WebSocket frame
//! encode, and the embedded bus append and read.
//!
//! `cargo bench -p tidings-benches --bench hot_paths` (add `-- <filter>` for one group).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use std::time::{Duration, Instant};
use tidings_core::bus::{Bus, OutRecord};
use tidings_core::model::*;
use tidings_core::store::prelude::*;

fn request() -> NotificationRequest {
    NotificationRequest {
        message_id: new_message_id(),
        tenant_id: "t_0123456789".into(),
        to: Recipients {
            users: vec!["alice".into(), "bob".into()],
            topics: vec!["orders".into()],
            tags: vec![],
            broadcast: false,
        },
        template: Some("order_shipped".into()),
        template_version: Some(1),
        data: json!({"order": "A-1042", "items": [{"name": "lamp", "qty": 2}], "eta": "2026-11-24T10:00:00Z"}),
        locale: Some("en".into()),
        title: None,
        body: None,
        priority: Priority::High,
        category: Some("orders".into()),
        channels: vec![Channel::Inapp],
        idempotency_key: Some("order-A-1042-shipped".into()),
        ttl_seconds: Some(86_400),
        send_at_ms: None,
        accepted_at_ms: now_ms(),
    }
}

fn avro(c: &mut Criterion) {
    let codec = tidings_schemas::codec();
    let r = request();
    let bytes = codec.encode_request(&r);
    let mut g = c.benchmark_group("avro_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec.encode_request(&r)));
    g.bench_function("decode", |b| {
        b.iter(|| codec.decode_request(&bytes).unwrap())
    });
    g.finish();
}

fn template(c: &mut Criterion) {
    let t = Template {
        version: 1,
        required: vec!["order".into()],
        inapp: InappTemplate {
            title: "Order {{ order }} shipped".into(),
            body: "{% for i in items %}{{ i.qty }} x {{ i.name }}{% if not loop.last %}, {% endif %}{% endfor %}, arriving {{ eta | dateformat(format='[year]-[month]-[day]') }}".into(),
        },
        webhook: None,
        locales: Default::default(),
    };
    let data = request().data;
    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render", |b| {
        b.iter(|| tidings_core::template::render(&t, &data, Some("en")).unwrap())
    });
    g.finish();
}

fn frame(c: &mut Criterion) {
    let r = request();
    let d = Delivery {
        tenant_id: r.tenant_id,
        message_id: r.message_id,
        user_id: "alice".into(),
        channel: Channel::Inapp,
        seq: 42,
        priority: r.priority,
        category: r.category,
        title: "Order A-1042 shipped".into(),
        body: "2 x lamp, arriving tomorrow".into(),
        data: r.data,
        payload: None,
        created_at_ms: r.accepted_at_ms,
        accepted_at_ms: r.accepted_at_ms,
        attempt: 0,
        due_at_ms: 0,
        last_error: None,
    };
    let codec = tidings_schemas::codec();
    let bytes = codec.encode_delivery(&d);
    let mut g = c.benchmark_group("delivery");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ws_frame_encode", |b| {
        b.iter(|| tidings_delivery::frames::message_from_delivery(&d))
    });
    g.bench_function("avro_decode_and_frame", |b| {
        b.iter(|| {
            let d = codec.decode_delivery(&bytes).unwrap();
            tidings_delivery::frames::message_from_delivery(&d)
        })
    });
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Recipient expansion: page through the subscribers of a 10,000-user topic.
fn expansion(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        let s =
            tidings_store::embedded::EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let subs = (0..10_000).map(|i| {
            let s = s.clone();
            async move { s.subscribe("t1", "news", &format!("user-{i:05}")).await }
        });
        futures::future::try_join_all(subs).await.unwrap();
        s
    });
    let mut g = c.benchmark_group("recipients");
    g.throughput(Throughput::Elements(10_000));
    for page in [100usize, 1000] {
        g.bench_with_input(BenchmarkId::new("topic_10k", page), &page, |b, &page| {
            b.iter(|| {
                rt.block_on(async {
                    let mut after: Option<String> = None;
                    let mut n = 0;
                    loop {
                        let p = store
                            .subscribers("t1", "news", after.as_deref(), page)
                            .await
                            .unwrap();
                        n += p.items.len();
                        match p.next {
                            Some(x) => after = Some(x),
                            None => break n,
                        }
                    }
                })
            })
        });
    }
    g.finish();
}

/// The merged inbox of a user in 50 topics that received 10,000 audience messages (200 each,
/// round robin) plus 100 personal rows: one page of 50, newest first, from the top and from
/// cursors spread over the history; and the unread count. Prints p50 and p99 of single reads
/// besides criterion's mean.
fn inbox(c: &mut Criterion) {
    use tidings_core::store::{AudiencePost, NewInboxRow};
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        let s =
            tidings_store::embedded::EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        for t in 0..50 {
            s.subscribe("t1", &format!("topic-{t}"), "reader")
                .await
                .unwrap();
        }
        // numbered as a router numbers them: by the clock, one owner
        let next = std::sync::atomic::AtomicU64::new(tidings_core::seq::clock(now_ms()));
        let item = |id: String| InboxItem {
            message_id: id,
            seq: next.fetch_add(1024, std::sync::atomic::Ordering::Relaxed),
            title: "Order A-1042 shipped".into(),
            body: "2 x lamp, arriving 2026-11-24".into(),
            data: json!({"order": "A-1042"}),
            priority: Priority::Normal,
            category: Some("orders".into()),
            status: InboxStatus::Unread,
            created_at_ms: now_ms(),
        };
        for chunk in 0..40 {
            let posts = (0..250).map(|j| {
                let i = chunk * 250 + j;
                let s = s.clone();
                let post = AudiencePost {
                    tenant_id: "t1".into(),
                    audiences: vec![Audience::Topic(format!("topic-{}", i % 50))],
                    listed: vec![],
                    item: item(format!("m{i:05}")),
                };
                async move { s.post_audience(&post).await }
            });
            futures::future::try_join_all(posts).await.unwrap();
            let own = NewInboxRow {
                tenant_id: "t1".into(),
                user_id: "reader".into(),
                item: item(format!("own{chunk:03}")),
            };
            s.append_inbox(std::slice::from_ref(&own)).await.unwrap();
        }
        s
    });
    let seqs: Vec<u64> = rt.block_on(async {
        let mut v = Vec::new();
        let mut before = None;
        loop {
            let page = store.inbox_page("t1", "reader", before, 500).await.unwrap();
            let Some(last) = page.last() else { break v };
            before = Some(last.seq);
            v.extend(page.iter().map(|i| i.seq));
        }
    });
    assert_eq!(seqs.len(), 10_040);
    let mut g = c.benchmark_group("inbox_50_topics_10k");
    let mut single = Vec::new();
    g.bench_function("page_of_50", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 7919) % seqs.len();
            let before = if k.is_multiple_of(4) {
                None
            } else {
                Some(seqs[k])
            };
            let t = Instant::now();
            let page = rt
                .block_on(store.inbox_page("t1", "reader", before, 50))
                .unwrap();
            single.push(t.elapsed());
            page
        })
    });
    g.bench_function("unread_count", |b| {
        b.iter(|| rt.block_on(store.unread_count("t1", "reader")).unwrap())
    });
    g.finish();
    single.sort();
    if !single.is_empty() {
        let at = |q: f64| single[((single.len() - 1) as f64 * q) as usize];
        eprintln!(
            "inbox page of 50 over {} reads: p50 {:?}, p99 {:?}, max {:?}",
            single.len(),
            at(0.5),
            at(0.99),
            single[single.len() - 1]
        );
    }
}

/// The embedded bus: durable appends of 256 records of 300 bytes (one fsynced group), and
/// polls of 256.
fn bus(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let bus = tidings_bus::embedded::EmbeddedBus::open(
        &dir.path().join("bus.redb"),
        Duration::from_secs(3600),
    )
    .unwrap();
    rt.block_on(bus.ensure_topic(&tidings_core::bus::TopicSpec {
        name: "bench".into(),
        partitions: 8,
        replication: 0,
        retention_ms: None,
    }))
    .unwrap();
    let batch = |n: usize| -> Vec<OutRecord> {
        (0..n)
            .map(|i| OutRecord::new("bench", format!("user-{i}").into_bytes(), vec![7u8; 300]))
            .collect()
    };
    let mut g = c.benchmark_group("embedded_bus");
    g.throughput(Throughput::Elements(256));
    g.sample_size(30);
    g.bench_function("append_256", |b| {
        b.iter(|| rt.block_on(bus.append(batch(256))).unwrap())
    });
    // a long topic to read from, then fresh consumer groups as each one reaches the end
    rt.block_on(async {
        for _ in 0..400 {
            bus.append(batch(256)).await.unwrap();
        }
    });
    g.bench_function("poll_and_commit_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut group = 0;
                let mut c = bus.consumer("g0", "bench").await.unwrap();
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    loop {
                        let t = Instant::now();
                        let got = c.poll(256, Duration::ZERO).await.unwrap();
                        let n = got.len();
                        c.commit_records(&got).await.unwrap();
                        spent += t.elapsed();
                        if n > 0 {
                            break;
                        }
                        group += 1;
                        c = bus.consumer(&format!("g{group}"), "bench").await.unwrap();
                    }
                }
                spent
            })
        })
    });
    g.finish();
}

criterion_group!(benches, avro, template, frame, expansion, inbox, bus);
criterion_main!(benches);
