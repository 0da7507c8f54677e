//! End-to-end on Apache Kafka: the real binary with `TIDINGS_BUS=kafka` on the broker that
//! `scripts/test.sh` starts (`scripts/services/kafka.sh`). Each test has topics of its own
//! (`TIDINGS_TOPIC_PREFIX`), so tests share the broker.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn brokers() -> String {
    std::env::var("TIDINGS_TEST_KAFKA").expect(
        "TIDINGS_TEST_KAFKA is not set: run scripts/test.sh, or start a broker with \
         scripts/services/kafka.sh start <dir> and export what it prints",
    )
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The settings that put a server on the test broker under `prefix`.
fn on_kafka(prefix: &str) -> Vec<(String, String)> {
    vec![
        ("TIDINGS_BUS".into(), "kafka".into()),
        ("TIDINGS_KAFKA_BROKERS".into(), brokers()),
        ("TIDINGS_TOPIC_PREFIX".into(), prefix.into()),
    ]
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter()
        .map(|(k, val)| (k.as_str(), val.as_str()))
        .collect()
}

/// Run `tidings migrate` with `env`; (success, stdout, stderr).
fn migrate(env: &[(String, String)], data: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("migrate")
        .env("TIDINGS_DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run tidings migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_creates_every_topic_checks_them_and_is_safe_twice() {
    let prefix = unique("mig");
    let data = tempfile::tempdir().unwrap();
    let mut env = on_kafka(&prefix);
    env.push(("TIDINGS_BUS_PARTITIONS".into(), "2".into()));

    let (ok, out, err) = migrate(&env, data.path());
    assert!(ok, "migrate failed: {err}");
    let created = out
        .lines()
        .filter(|l| l.starts_with("topic created"))
        .count();
    assert_eq!(created, 14, "every topic created: {out}");
    for t in [
        "ingest",
        "requests.urgent",
        "deliveries.inapp.urgent",
        "retry.long",
        "dlq",
        "audience",
    ] {
        assert!(
            out.contains(&format!("{prefix}.{t} partitions=2")),
            "{t} missing: {out}"
        );
    }

    // again: nothing to do, nothing changed
    let (ok, again, err) = migrate(&env, data.path());
    assert!(ok, "second migrate failed: {err}");
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("topic exists"))
            .count(),
        created
    );
    assert!(!again.contains("topic created"));

    // a config that wants more partitions than the topics have is reported, not used silently
    env.retain(|(k, _)| k != "TIDINGS_BUS_PARTITIONS");
    env.push(("TIDINGS_BUS_PARTITIONS".into(), "4".into()));
    let (ok, _, err) = migrate(&env, data.path());
    assert!(!ok, "short topics must fail the migration");
    assert!(err.contains("fewer partitions than configured"), "{err}");
    assert!(
        err.contains(&format!(
            "{prefix}.requests.low has 2 partitions, configured 4"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_runs_on_kafka() {
    let prefix = unique("pipe");
    let mut env = on_kafka(&prefix);
    env.push(("TIDINGS_RETRY_WEBHOOK_BASE_MS".into(), "50".into()));
    env.push(("TIDINGS_RETRY_WEBHOOK_CAP_MS".into(), "200".into()));
    let s = Server::start(&pairs(&env)).await;
    let hook = receiver(vec![503, 200]).await;
    let t = s
        .tenant_with(json!({"name": "kafka-shop", "webhook_url": hook.url}))
        .await;
    let mut alice = Ws::connect(&s, &t.token("alice")).await;

    // in-app over ingest -> requests -> router -> deliveries -> delivery, every hop on Kafka
    let mut ids = Vec::new();
    for (i, p) in ["low", "normal", "high", "urgent"].iter().enumerate() {
        ids.push(
            s.send(
                &t,
                json!({"to": {"users": ["alice"]}, "title": format!("t{i}"), "body": "b", "priority": p}),
            )
            .await,
        );
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let m = alice
            .next_message(30 * SEC)
            .await
            .unwrap_or_else(|| panic!("only {} of {} arrived", got.len(), ids.len()));
        got.push(m["id"].as_str().unwrap().to_string());
    }
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "each message once");
    let inbox = s.inbox_all(&t.token("alice")).await;
    assert_eq!(inbox.len(), 4);

    // a topic message: one record on `audience`, read by this node's own group from the end;
    // the membership record of a subscribe reaches the live connection's index the same way.
    // The group may still be joining (a new node starts from the end): try until it holds
    // its partitions.
    let mut pushed = None;
    let mut sent = Vec::new();
    for _ in 0..10 {
        let (st, _) = s
            .api(&t, "PUT", "/v1/topics/k-news/subscribers/alice", None)
            .await;
        assert_eq!(st, 204);
        let id = s
            .send(&t, json!({"to": {"topics": ["k-news"]}, "title": "news"}))
            .await;
        sent.push(id);
        if let Some(m) = alice.next_message(3 * SEC).await {
            pushed = Some(m["id"].as_str().unwrap().to_string());
            break;
        }
    }
    let pushed = pushed.expect("a topic message was pushed through the audience topic");
    assert!(sent.contains(&pushed), "{pushed} is one of {sent:?}");
    let inbox = s.inbox_all(&t.token("alice")).await;
    assert!(inbox.iter().any(|i| i["id"] == pushed.as_str()));

    // a webhook that fails once goes through retry.short on Kafka and is delivered
    let id = s
        .send(
            &t,
            json!({"to": {"users": ["bob"]}, "title": "w", "body": "b", "channels": ["webhook"]}),
        )
        .await;
    let r = wait_status(&s, &t, &id, "delivered").await;
    assert_eq!(r["attempts"], 2, "{r}");
    assert_eq!(hook.hits.lock().unwrap().len(), 2);

    // lag and rebalance metrics come from the Kafka consumers
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = s.metrics().await;
        if m.contains("tidings_bus_rebalances_total") && m.contains("tidings_bus_consumer_lag") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bus metrics missing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn registry() -> String {
    std::env::var("TIDINGS_TEST_REGISTRY")
        .expect("TIDINGS_TEST_REGISTRY is not set: run scripts/test.sh")
}

/// Run `docs/examples/producer.py` (the documented Python producer) with `args`.
fn python_producer(args: &[&str]) -> serde_json::Value {
    let python = std::env::var("TIDINGS_TEST_PYTHON")
        .expect("TIDINGS_TEST_PYTHON is not set: run scripts/test.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/producer.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run the Python producer");
    assert!(
        out.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the producer prints its result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_producers_publish_avro_through_a_registry_as_schemas_evolve() {
    let prefix = unique("avro");
    let data = tempfile::tempdir().unwrap();
    let mut env = on_kafka(&prefix);
    env.push(("TIDINGS_SCHEMA_REGISTRY_URL".into(), registry()));
    let (ok, out, err) = migrate(&env, data.path());
    assert!(ok, "migrate failed: {err}");
    assert!(
        out.contains(&format!("schema registered {prefix}.ingest-value id=")),
        "{out}"
    );
    let s = Server::start(&pairs(&env)).await;
    let t = s.tenant().await;
    let mut alice = Ws::connect(&s, &t.token("alice")).await;
    let brokers = brokers();
    let reg = registry();
    let common = [
        "--brokers",
        brokers.as_str(),
        "--prefix",
        prefix.as_str(),
        "--registry",
        reg.as_str(),
        "--tenant",
        t.id.as_str(),
        "--user",
        "alice",
    ];

    // the schema as migrate registered it
    let first = python_producer(&[&common[..], &["--title", "from python"]].concat());
    let m = alice
        .next_message(30 * SEC)
        .await
        .expect("the first record arrives");
    assert_eq!(m["title"], "from python");

    // a producer moves to a later version (field added with a default, one removed), and
    // also publishes what cannot be used: every one is dead-lettered, none stalls the
    // partition, and the good record after them arrives
    let second =
        python_producer(&[&common[..], &["--evolve", "--bad", "--title", "evolved"]].concat());
    assert_ne!(
        first["schema_id"], second["schema_id"],
        "a new version was registered"
    );
    let m = alice
        .next_message(30 * SEC)
        .await
        .expect("the evolved record arrives");
    assert_eq!(m["title"], "evolved");
    assert!(alice
        .next_message(500 * std::time::Duration::from_millis(1))
        .await
        .is_none());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let want = [
        "bad_magic_byte",
        "unknown_schema_id",
        "undecodable",
        "truncated_record",
        "tenant_not_found",
    ];
    loop {
        let m = s.metrics().await;
        let missing: Vec<&&str> = want
            .iter()
            .filter(|r| {
                !m.contains(&format!(
                    "tidings_stage_dead_letters_total{{stage=\"ingest\",reason=\"{r}\"}} 1"
                ))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters not counted by reason: {missing:?}\n{}",
            m.lines()
                .filter(|l| l.contains("dead_letters"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The router reads urgent first: an urgent send overtakes a backlog of 100,000 low
/// requests already in the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_overtakes_a_backlog_of_100k_low_requests() {
    let prefix = unique("prio");
    let data = tempfile::tempdir().unwrap();
    let env = on_kafka(&prefix);
    let (ok, _, err) = migrate(&env, data.path());
    assert!(ok, "migrate failed: {err}");
    let s = Server::start(&pairs(&env)).await;
    let t = s.tenant().await;
    let mut alice = Ws::connect(&s, &t.token("alice")).await;

    // the backlog, written to the broker while the router is running
    let python = std::env::var("TIDINGS_TEST_PYTHON").expect("run scripts/test.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backlog.py");
    let avsc = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/avro/NotificationRequest.avsc"
    );
    let out = Command::new(python)
        .args([script, &brokers(), &prefix, &t.id, "100000", avsc, "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let routed_low = |m: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with("tidings_router_requests_total{priority=\"low\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // the router is busy with the backlog
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while routed_low(&s.metrics().await) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog is not being routed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = std::time::Instant::now();
    let id = s
        .send(
            &t,
            json!({"to": {"users": ["alice"]}, "title": "now", "body": "b", "priority": "urgent"}),
        )
        .await;
    let m = alice.next_message(30 * SEC).await.expect("urgent arrives");
    let took = sent.elapsed();
    assert_eq!(m["id"], id.as_str());
    let low_done = routed_low(&s.metrics().await);
    assert!(
        low_done < 100_000,
        "urgent waited for the whole backlog ({low_done} low routed first, {took:?})"
    );
    eprintln!(
        "urgent arrived in {took:?} with {} low requests still queued",
        100_000 - low_done
    );
}

/// A broker of a test's own (`scripts/services/kafka.sh`), stopped when dropped.
struct OwnBroker {
    dir: tempfile::TempDir,
    addr: String,
}

const KAFKA_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services/kafka.sh");

impl OwnBroker {
    fn start() -> OwnBroker {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(KAFKA_SH)
            .args(["start", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("export TIDINGS_TEST_KAFKA="))
            .expect("kafka.sh prints the address")
            .to_string();
        OwnBroker { dir, addr }
    }

    fn run(&self, what: &str) {
        let out = Command::new(KAFKA_SH)
            .args([what, self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(KAFKA_SH)
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// Stop the broker mid-stream and start it again: sends answer 503 `bus_unavailable` within
/// the produce timeout while it is down, `/readyz` says so, the server recovers by itself,
/// and nothing that got a 202 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_that_was_accepted() {
    let broker = OwnBroker::start();
    let prefix = unique("fault");
    let mut env = on_kafka(&prefix);
    env.retain(|(k, _)| k != "TIDINGS_KAFKA_BROKERS");
    env.push(("TIDINGS_KAFKA_BROKERS".into(), broker.addr.clone()));
    env.push(("TIDINGS_BUS_PRODUCE_TIMEOUT_MS".into(), "2000".into()));
    let s = Server::start(&pairs(&env)).await;
    let t = s.tenant().await;
    let mut accepted = Vec::new();
    let send = |i: usize| {
        let (http, url, key) = (s.http.clone(), s.url("/v1/messages"), t.api_key.clone());
        async move {
            let started = std::time::Instant::now();
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"to": {"users": ["alice"]}, "title": format!("m{i}"), "body": "b"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body, started.elapsed())
        }
    };
    for i in 0..20 {
        let (st, body, _) = send(i).await;
        assert_eq!(st, 202, "{body}");
        accepted.push(body["message_id"].as_str().unwrap().to_string());
    }

    broker.run("stop");
    // down: sends fail fast and clearly, readiness says why
    for i in 20..23 {
        let (st, body, took) = send(i).await;
        eprintln!("send {i} during the outage: {st} in {took:?}");
        assert_eq!(st, 503, "{body}");
        assert_eq!(body["error"]["code"], "bus_unavailable", "{body}");
        assert!(took < Duration::from_secs(5), "a send hung for {took:?}");
    }
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("bus"));

    broker.run("launch");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.http.get(s.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // back: sends are accepted again (a producer may need a moment to reconnect)
    let mut i = 23;
    while accepted.len() < 40 {
        let (st, body, _) = send(i).await;
        i += 1;
        match st {
            202 => accepted.push(body["message_id"].as_str().unwrap().to_string()),
            503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "sends never recovered: {body}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{other}: {body}"),
        }
    }

    // every accepted message reaches alice's inbox
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let inbox = s.inbox_all(&t.token("alice")).await;
        let have: std::collections::HashSet<&str> =
            inbox.iter().filter_map(|m| m["id"].as_str()).collect();
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !have.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} accepted messages never arrived",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
