//! Regression tests of the hostile probe (issue 11): each drives the real binary the way the
//! probe did and fails on the code before the fix.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_are_refused_at_save_preview_and_send() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    // the probe's 70-byte template renders 1 GB whatever the data: refused when saved
    let (st, v) = s
        .api(
            &t,
            "PUT",
            "/v1/templates/gb",
            Some(json!({"inapp": {"title": "x",
                "body": "{% for i in range(10) %}{{ 'x'*100000000 }}{% endfor %}"}})),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (422, Some("template_limit_exceeded")),
        "{v}"
    );
    // one whose size comes from the data is saved, then refused at preview and at send
    let (st, v) = s
        .api(
            &t,
            "PUT",
            "/v1/templates/big",
            Some(json!({"inapp": {"title": "t", "body": "{{ 'x' * n }}"}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .api(
            &t,
            "POST",
            "/v1/templates/big/preview",
            Some(json!({"data": {"n": 20_000_000}})),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (422, Some("template_limit_exceeded")),
        "{v}"
    );
    let (st, v) = s
        .api(
            &t,
            "POST",
            "/v1/messages",
            Some(
                json!({"to": {"users": ["a", "b"]}, "template": "big", "data": {"n": 20_000_000}}),
            ),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (422, Some("template_limit_exceeded")),
        "{v}"
    );
    // within bounds it still renders
    let (st, v) = s
        .api(
            &t,
            "POST",
            "/v1/templates/big/preview",
            Some(json!({"data": {"n": 3}})),
        )
        .await;
    assert_eq!((st, v["inapp"]["body"].as_str()), (200, Some("xxx")), "{v}");

    // memory: each concatenation is one instruction, so only the worker's memory limit
    // stops this one; the server itself does not grow
    let before = rss_mib(s.pid());
    s.api(
        &t,
        "PUT",
        "/v1/templates/grow",
        Some(json!({"inapp": {"title": "t",
            "body": "{% set s = x * 100000000 %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s | length }}"}})),
    )
    .await;
    let (st, v) = s
        .api(
            &t,
            "POST",
            "/v1/templates/grow/preview",
            Some(json!({"data": {"x": "x"}})),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (422, Some("template_limit_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("memory"),
        "{v}"
    );
    let after = rss_mib(s.pid());
    assert!(
        after < before + 100,
        "server RSS grew from {before} to {after} MiB"
    );

    // work: nested 100k loops are refused when saved; with the bound in the data, two
    // previews end with the stable code, and health answers while they run
    let nested = |n: &str| {
        json!({"inapp": {"title": "t",
            "body": format!("{{% for i in range({n}) %}}{{% for j in range({n}) %}}{{{{ i }}}}{{% endfor %}}{{% endfor %}}")}})
    };
    let (st, v) = s
        .api(&t, "PUT", "/v1/templates/spin", Some(nested("100000")))
        .await;
    assert_eq!(
        (st, code(&v)),
        (422, Some("template_limit_exceeded")),
        "{v}"
    );
    let (st, v) = s
        .api(&t, "PUT", "/v1/templates/spin", Some(nested("n")))
        .await;
    assert_eq!(st, 200, "{v}");
    let spin = || {
        s.api(
            &t,
            "POST",
            "/v1/templates/spin/preview",
            Some(json!({"data": {"n": 100000}})),
        )
    };
    let health = async {
        let started = Instant::now();
        let r = s.http.get(s.url("/healthz")).send().await.unwrap();
        assert!(r.status().is_success());
        started.elapsed()
    };
    // another tenant's preview renders meanwhile: a tenant holds only its share
    let other = s.tenant().await;
    s.api(
        &other,
        "PUT",
        "/v1/templates/hi",
        Some(json!({"inapp": {"title": "hi {{ n }}", "body": "b"}})),
    )
    .await;
    let other_preview = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.api(
            &other,
            "POST",
            "/v1/templates/hi/preview",
            Some(json!({"data": {"n": 1}})),
        )
        .await
    };
    let ((st1, v1), (st2, v2), took, (st3, v3)) =
        tokio::join!(spin(), spin(), health, other_preview);
    // each of the tenant's own previews ends with its limit, or is refused while the
    // other holds the tenant's share
    for (st, v) in [(st1, &v1), (st2, &v2)] {
        assert!(
            (st, code(v)) == (422, Some("template_limit_exceeded"))
                || (st, code(v)) == (503, Some("render_busy")),
            "{v}"
        );
    }
    assert!(
        [code(&v1), code(&v2)].contains(&Some("template_limit_exceeded")),
        "{v1} {v2}"
    );
    assert_eq!(
        (st3, v3["inapp"]["title"].as_str()),
        (200, Some("hi 1")),
        "{v3}"
    );
    assert!(took < Duration::from_secs(2), "healthz took {took:?}");

    // the server is fine and still delivers
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    let id = s
        .send(&t, json!({"to": {"users": ["u"]}, "title": "still here"}))
        .await;
    assert_eq!(ws.next_message(5 * SEC).await.unwrap()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_that_lead_inside_are_refused() {
    let s = Server::start(&[("TIDINGS_EGRESS_ALLOW_PRIVATE", "false")]).await;
    let t = s.tenant().await;
    for (url, want) in [
        ("http://127.0.0.1:9000/x", "url_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "url_not_allowed",
        ),
        ("http://10.0.0.8/", "url_not_allowed"),
        ("http://[::1]:8080/", "url_not_allowed"),
        ("http://[::ffff:127.0.0.1]/", "url_not_allowed"),
        ("http://0x7f000001/", "url_not_allowed"),
        ("http://localhost:8080/", "url_not_allowed"),
        ("http://", "invalid_url"),
        ("not a url", "invalid_url"),
        ("http+unix://%2Fvar%2Frun%2Fdocker.sock/info", "invalid_url"),
        ("unix:/var/run/docker.sock", "invalid_url"),
    ] {
        let (st, v) = s
            .api(&t, "PUT", "/v1/webhook", Some(json!({"url": url})))
            .await;
        assert_eq!((st, code(&v)), (422, Some(want)), "{url}: {v}");
    }
    let r = s
        .http
        .post(s.url("/v1/admin/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "x", "webhook_url": "http://127.0.0.1:22/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let (st, _) = s
        .api(
            &t,
            "PUT",
            "/v1/webhook",
            Some(json!({"url": "https://hooks.example.com/tidings"})),
        )
        .await;
    assert_eq!(st, 200);
}

/// An endpoint that answers every POST with a redirect to `location`.
async fn redirector(status: u16, location: String) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let location = location.clone();
            async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::LOCATION, location)],
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_errors_do_not_reveal_ports() {
    // private targets allowed, as for a receiver on this machine: the other protections hold
    let s = Server::start(&[
        ("TIDINGS_RETRY_WEBHOOK_BASE_MS", "50"),
        ("TIDINGS_RETRY_WEBHOOK_CAP_MS", "100"),
        ("TIDINGS_RETRY_WEBHOOK_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let inside = receiver(vec![200]).await;
    for status in [302, 307, 308] {
        let hook = redirector(status, inside.url.clone()).await;
        let t = s
            .tenant_with(json!({"name": "r", "webhook_url": hook}))
            .await;
        let id = s
            .send(
                &t,
                json!({"to": {"users": ["u"]}, "title": "x", "channels": ["webhook"]}),
            )
            .await;
        let st = wait_status(&s, &t, &id, "failed").await;
        assert_eq!(st["last_error"], format!("http {status}"));
    }
    assert!(
        inside.hits.lock().unwrap().is_empty(),
        "a redirect was followed"
    );

    // a closed port and a port that accepts then hangs up read the same to the tenant
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = hangup.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (sock, _) = hangup.accept().await.unwrap();
            drop(sock);
        }
    });
    let mut errors = Vec::new();
    for port in [closed, open] {
        let t = s
            .tenant_with(json!({"name": "p", "webhook_url": format!("http://127.0.0.1:{port}/")}))
            .await;
        let id = s
            .send(
                &t,
                json!({"to": {"users": ["u"]}, "title": "x", "channels": ["webhook"]}),
            )
            .await;
        let st = wait_status(&s, &t, &id, "failed").await;
        errors.push(st["last_error"].as_str().unwrap().to_string());
    }
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("refused") && !e.contains("127.0.0.1")),
        "{errors:?}"
    );
    assert_eq!(errors[0], "connection failed", "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_with_another_body_is_a_conflict() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let body = json!({"to": {"users": ["u"]}, "title": "pay 10", "idempotency_key": "k1"});
    let (st, a) = s.api(&t, "POST", "/v1/messages", Some(body.clone())).await;
    assert_eq!(st, 202);
    let (st, b) = s.api(&t, "POST", "/v1/messages", Some(body)).await;
    assert_eq!((st, b["duplicate"].as_bool()), (202, Some(true)));
    assert_eq!(a["message_id"], b["message_id"]);
    let other = json!({"to": {"users": ["u"]}, "title": "pay 1000", "idempotency_key": "k1"});
    let (st, v) = s.api(&t, "POST", "/v1/messages", Some(other)).await;
    assert_eq!((st, code(&v)), (409, Some("idempotency_conflict")), "{v}");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_claiming_a_key_and_appending_loses_nothing() {
    let mut s = Server::start(&[("TIDINGS_FAIL_POINT", "ingest.after_claim")]).await;
    let t = s.tenant().await;
    let body = json!({"to": {"users": ["u"]}, "title": "once", "idempotency_key": "order-7"});
    // the process dies after binding the key, before the request reaches the bus
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .bearer_auth(&t.api_key)
        .json(&body)
        .send()
        .await;
    assert!(r.is_err(), "the fail point should have ended the process");
    assert!(s.wait_exit(Duration::from_secs(10)));
    s.set_env("TIDINGS_FAIL_POINT", "");
    s.start_again().await;
    // the producer retries: it gets the key's id, and the message really is delivered
    let (st, v) = s.api(&t, "POST", "/v1/messages", Some(body.clone())).await;
    assert_eq!(st, 202, "{v}");
    let id = v["message_id"].as_str().unwrap().to_string();
    let token = t.token("u");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = s.inbox_all(&token).await;
        if items.iter().any(|i| i["id"] == id.as_str()) {
            assert_eq!(items.len(), 1);
            break;
        }
        assert!(Instant::now() < deadline, "the retried send never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and a further retry is a plain duplicate
    let (st, v) = s.api(&t, "POST", "/v1/messages", Some(body)).await;
    assert_eq!((st, v["message_id"].as_str()), (202, Some(id.as_str())));
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_dlq_replay_loses_nothing() {
    let mut s = Server::start(&[]).await;
    let rx = receiver(vec![400]).await;
    let t = s
        .tenant_with(json!({"name": "d", "webhook_url": rx.url}))
        .await;
    let id = s
        .send(
            &t,
            json!({"to": {"users": ["u"]}, "title": "x", "channels": ["webhook"]}),
        )
        .await;
    wait_status(&s, &t, &id, "failed").await;
    let (_, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    let entry = dlq["items"][0]["id"].as_str().unwrap().to_string();
    *rx.script.lock().unwrap() = vec![200];
    // crash between the replay's two steps
    s.set_env("TIDINGS_FAIL_POINT", "dlq.after_append");
    s.restart().await;
    let r = s
        .http
        .post(s.url(&format!("/v1/dlq/{entry}/replay")))
        .bearer_auth(&t.api_key)
        .send()
        .await;
    assert!(r.is_err(), "the fail point should have ended the process");
    assert!(s.wait_exit(Duration::from_secs(10)));
    s.set_env("TIDINGS_FAIL_POINT", "");
    s.start_again().await;
    // the replay was on the bus before the crash: it is delivered (at least once: the
    // crashed process may have posted it before its offset was committed)
    wait_status(&s, &t, &id, "delivered").await;
    assert!(rx.hits.lock().unwrap().len() >= 2);
}

/// The value of an unlabelled gauge or counter in the metrics text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// The close code a connection gets, reading (and dropping) frames until then.
async fn close_code(ws: &mut Ws, timeout: Duration) -> Option<u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn jwt(t: &Tenant, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(t.jwt_secret.as_bytes()),
    )
    .unwrap()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed() {
    let s = Server::start(&[("TIDINGS_WS_WRITE_TIMEOUT_SECONDS", "1")]).await;
    let t = s.tenant().await;
    // connects, then never reads again
    let stuck = Ws::connect(&s, &t.token("u")).await;
    assert_eq!(
        metric(&s.metrics().await, "tidings_delivery_connections"),
        1.0
    );
    let body = "x".repeat(60_000);
    for _ in 0..150 {
        s.send(
            &t,
            json!({"to": {"users": ["u"]}, "title": "big", "body": body}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&s.metrics().await, "tidings_delivery_connections") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stuck);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s
            .user_api(&t.token("u"), "GET", "/v1/inbox/unread_count", None)
            .await;
        if v["unread"] == 150 {
            break;
        }
        assert!(Instant::now() < deadline, "not every send was routed: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the user catches up on a new connection
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    ws.send(json!({"type": "resume"})).await;
    // replayed, or pushed live if its delivery was still on its way: each once
    let mut ids = std::collections::HashSet::new();
    for f in ws.until("ok", 30 * SEC).await {
        if f["type"] == "message" {
            assert!(ids.insert(f["id"].to_string()), "shown twice: {f}");
        }
    }
    while ids.len() < 150 {
        let m = ws
            .next_message(10 * SEC)
            .await
            .expect("a message is missing");
        assert!(ids.insert(m["id"].to_string()), "shown twice: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped_and_expired_tokens_close() {
    let s = Server::start(&[("TIDINGS_WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let t = s.tenant().await;
    let mut first = Ws::connect(&s, &t.token("u")).await;
    let _second = Ws::connect(&s, &t.token("u")).await;
    let mut third = Ws::connect(&s, &t.token("u")).await;
    assert_eq!(close_code(&mut first, 5 * SEC).await, Some(4002));
    // the newest works
    let id = s
        .send(&t, json!({"to": {"users": ["u"]}, "title": "hi"}))
        .await;
    assert_eq!(
        third.next_message(5 * SEC).await.unwrap()["id"],
        id.as_str()
    );

    // a connection closes when its token expires, telling the client to get a new one
    let short = jwt(&t, json!({"sub": "v", "tid": t.id, "exp": now_s() + 2}));
    let mut ws = Ws::connect(&s, &short).await;
    let started = Instant::now();
    assert_eq!(close_code(&mut ws, 10 * SEC).await, Some(4001));
    assert!(started.elapsed() < Duration::from_secs(9));

    // nbf ahead, and lifetimes past the configured bound, are refused
    for (claims, want) in [
        (
            json!({"sub": "v", "tid": t.id, "exp": now_s() + 600, "nbf": now_s() + 300}),
            "auth_token_not_yet_valid",
        ),
        (
            json!({"sub": "v", "tid": t.id, "exp": i64::MAX}),
            "auth_token_lifetime",
        ),
        (
            json!({"sub": "v", "tid": t.id, "exp": now_s() + 30 * 86_400}),
            "auth_token_lifetime",
        ),
    ] {
        let (st, v) = s.user_api(&jwt(&t, claims), "GET", "/v1/inbox", None).await;
        assert_eq!((st, code(&v)), (401, Some(want)), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_http_clients_are_cut_off_and_query_errors_are_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(&[("TIDINGS_HTTP_HEADER_READ_TIMEOUT_MS", "1000")]).await;
    let t = s.tenant().await;
    // slowloris: headers that never end; and a socket that never sends a byte
    let mut slow = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    for sock in [&mut slow, &mut idle] {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server kept a silent connection");
    }
    // bad query strings answer the JSON error
    let (st, v) = s
        .user_api(&t.token("u"), "GET", "/v1/inbox?limit=-1", None)
        .await;
    assert_eq!((st, code(&v)), (422, Some("invalid_query")), "{v}");
    let (st, v) = s.api(&t, "GET", "/v1/dlq?limit=x", None).await;
    assert_eq!((st, code(&v)), (422, Some("invalid_query")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_past_the_open_file_limit_do_not_stop_the_server() {
    // the test itself needs room for its sockets
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let s =
        Server::start_with_nofile(1024, &[("TIDINGS_HTTP_HEADER_READ_TIMEOUT_MS", "1500")]).await;
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(&s.addr).await.unwrap());
    }
    // the cap keeps accept working; idle sockets are cut at the header deadline, and health
    // (and metrics) answer again while the client still holds all of them
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let get = |path: &'static str| {
            let req = s.http.get(s.url(path)).send();
            async move {
                let r = tokio::time::timeout(Duration::from_secs(1), req)
                    .await
                    .ok()?
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.text().await.ok()
            }
        };
        if get("/healthz").await.is_some() {
            if let Some(m) = get("/metrics").await {
                break m;
            }
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = metric(&metrics, "tidings_http_connections_refused_total");
    assert!(refused > 0.0, "the cap was never reached");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_and_credentials_rotate_and_tenants_disable() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(&[]).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(s.dir.path()), 0o700);
    for f in ["bus.redb", "store.redb"] {
        assert_eq!(mode(&s.dir.path().join(f)), 0o600, "{f}");
    }

    let t = s.tenant().await;
    let old_token = t.token("u");
    let admin = |path: String, body: Value| {
        let req = s.http.post(s.url(&path)).bearer_auth(ADMIN).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    // rotate with an overlap: old and new both work
    let (st, v) = admin(
        format!("/v1/admin/tenants/{}/rotate", t.id),
        json!({"overlap_seconds": 600}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let new = Tenant {
        id: t.id.clone(),
        api_key: v["api_key"].as_str().unwrap().into(),
        jwt_secret: v["jwt_secret"].as_str().unwrap().into(),
        webhook_secret: v["webhook_secret"].as_str().unwrap().into(),
    };
    assert_ne!(new.api_key, t.api_key);
    for key in [&t, &new] {
        s.send(key, json!({"to": {"users": ["u"]}, "title": "x"}))
            .await;
    }
    for token in [&old_token, &new.token("u")] {
        assert_eq!(s.user_api(token, "GET", "/v1/inbox", None).await.0, 200);
    }
    // a connection opened with the first secret (valid through the overlap), and one with
    // the second
    let mut ws_first = Ws::connect(&s, &old_token).await;
    let mut ws_second = Ws::connect(&s, &new.token("w")).await;
    // rotate again without overlap: the first credentials stop at once
    let (st, v) = admin(
        format!("/v1/admin/tenants/{}/rotate", t.id),
        json!({"overlap_seconds": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let newest = Tenant {
        id: t.id.clone(),
        api_key: v["api_key"].as_str().unwrap().into(),
        jwt_secret: v["jwt_secret"].as_str().unwrap().into(),
        webhook_secret: v["webhook_secret"].as_str().unwrap().into(),
    };
    for old in [&t, &new] {
        let (st, v) = s
            .api(
                old,
                "POST",
                "/v1/messages",
                Some(json!({"to": {"users": ["u"]}, "title": "x"})),
            )
            .await;
        assert_eq!((st, code(&v)), (401, Some("auth_invalid_key")), "{v}");
    }
    let (st, _) = s.user_api(&old_token, "GET", "/v1/inbox", None).await;
    assert_eq!(st, 401);
    // the connection of the gone secret is closed (reconnect with a fresh token); the one of
    // the replaced secret lives through the overlap... which was 0: it closes too
    assert_eq!(close_code(&mut ws_first, 5 * SEC).await, Some(4001));
    assert_eq!(close_code(&mut ws_second, 5 * SEC).await, Some(4001));
    let mut ws_newest = Ws::connect(&s, &newest.token("w")).await;
    ws_newest.send(json!({"type": "ping"})).await;
    assert_eq!(ws_newest.next_frame(5 * SEC).await.unwrap()["type"], "pong");
    drop(ws_newest);
    s.send(&newest, json!({"to": {"users": ["u"]}, "title": "x"}))
        .await;

    // disable: keys and tokens refused, live connections closed, data kept; enable again
    let mut ws = Ws::connect(&s, &newest.token("u")).await;
    let (st, _) = admin(format!("/v1/admin/tenants/{}/disable", t.id), json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(close_code(&mut ws, 5 * SEC).await, Some(4003));
    let (st, v) = s
        .api(
            &newest,
            "POST",
            "/v1/messages",
            Some(json!({"to": {"users": ["u"]}, "title": "x"})),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some("tenant_disabled")), "{v}");
    let (st, v) = s
        .user_api(&newest.token("u"), "GET", "/v1/inbox", None)
        .await;
    assert_eq!((st, code(&v)), (403, Some("tenant_disabled")), "{v}");
    let (st, _) = admin(format!("/v1/admin/tenants/{}/enable", t.id), json!({})).await;
    assert_eq!(st, 200);
    let items = s.inbox_all(&newest.token("u")).await;
    assert_eq!(items.len(), 3, "the inbox was kept");
    // admin routes need the admin token
    let r = s
        .http
        .post(s.url(&format!("/v1/admin/tenants/{}/disable", t.id)))
        .bearer_auth(&newest.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_not_ready_and_recovers_without_a_restart() {
    // a small disk of its own: a tmpfs (needs root, as on the CI machine)
    let mount = tempfile::tempdir().unwrap().keep();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let data = mount.join("data");
    let s = Server::start(&[("TIDINGS_DATA_DIR", data.to_str().unwrap())]).await;
    let t = s.tenant().await;
    let ballast = mount.join("ballast");
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&mount)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    // leave about 2 MiB
    std::fs::write(&ballast, vec![1u8; free.saturating_sub(2 << 20)]).unwrap();
    let body = "y".repeat(50_000);
    let mut refused = None;
    for _ in 0..200 {
        let (st, v) = s
            .api(
                &t,
                "POST",
                "/v1/messages",
                Some(json!({"to": {"users": ["u"]}, "title": "t", "body": body})),
            )
            .await;
        if st != 202 {
            refused = Some((st, v));
            break;
        }
    }
    let (st, v) = refused.expect("the disk never filled");
    assert_eq!((st, code(&v)), (503, Some("storage_error")), "{v}");
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "ready while writes fail");
    // space comes back: ready again and sends accepted, same process
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.http.get(s.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ws = Ws::connect(&s, &t.token("w")).await;
    let id = s
        .send(&t, json!({"to": {"users": ["w"]}, "title": "back"}))
        .await;
    assert_eq!(ws.next_message(10 * SEC).await.unwrap()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_renders_the_template_version_it_was_validated_against() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let v1 = json!({"required": ["order"], "inapp": {"title": "v1 {{ order }}", "body": "b"}});
    let v2 = json!({"required": ["parcel"], "inapp": {"title": "v2 {{ parcel }}", "body": "b"}});
    let (st, v) = s
        .api(&t, "PUT", "/v1/templates/ship", Some(v1.clone()))
        .await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(1)), "{v}");
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    // sends validated against version 1, with the template changed under them (the probe
    // lost 29 of 50 this way)
    let mut want = std::collections::HashMap::new();
    for i in 0..50 {
        let (tpl, data, title) = if i % 2 == 0 {
            (&v1, json!({"order": i}), format!("v1 {i}"))
        } else {
            (&v2, json!({"parcel": i}), format!("v2 {i}"))
        };
        s.api(&t, "PUT", "/v1/templates/ship", Some(tpl.clone()))
            .await;
        let id = s
            .send(
                &t,
                json!({"to": {"users": ["u"]}, "template": "ship", "data": data}),
            )
            .await;
        want.insert(id, title);
    }
    while !want.is_empty() {
        let m = ws.next_message(10 * SEC).await.expect("a send was lost");
        let id = m["id"].as_str().unwrap();
        assert_eq!(want.remove(id).as_deref(), m["title"].as_str(), "{m}");
    }
    let (_, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    assert!(dlq["items"].as_array().unwrap().is_empty(), "{dlq}");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_fails_after_its_202_is_visible_and_replayable() {
    let mut s = Server::start(&[("TIDINGS_FAIL_POINT", "router.prepare")]).await;
    let t = s.tenant().await;
    let id = s
        .send(&t, json!({"to": {"users": ["u"]}, "title": "late failure"}))
        .await;
    // the producer sees it failed, with the reason, and finds it in its dead-letter queue
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let (st, m) = s.api(&t, "GET", &format!("/v1/messages/{id}"), None).await;
        if st == 200 {
            break m;
        }
        assert!(Instant::now() < deadline, "the failed send is not visible");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error"].as_str().unwrap().starts_with("fail_point"),
        "{m}"
    );
    let (_, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    let items = dlq["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dlq}");
    assert_eq!(
        (items[0]["kind"].as_str(), items[0]["message_id"].as_str()),
        (Some("request"), Some(id.as_str()))
    );
    // once the cause is gone, a replay routes it
    s.set_env("TIDINGS_FAIL_POINT", "");
    s.restart().await;
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    let entry = items[0]["id"].as_str().unwrap();
    let (st, _) = s
        .api(&t, "POST", &format!("/v1/dlq/{entry}/replay"), None)
        .await;
    assert_eq!(st, 202);
    assert_eq!(ws.next_message(10 * SEC).await.unwrap()["id"], id.as_str());
    let (_, m) = s.api(&t, "GET", &format!("/v1/messages/{id}"), None).await;
    assert_eq!(m["status"], "routed", "{m}");
    let (_, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    assert!(dlq["items"].as_array().unwrap().is_empty(), "{dlq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_endpoint_does_not_delay_another_tenant() {
    use axum::routing::post;
    let s = Server::start(&[("TIDINGS_WEBHOOK_TIMEOUT_MS", "2000")]).await;
    // tenant A's endpoint never answers
    let hang = axum::Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, hang).await.unwrap() });
    let a = s
        .tenant_with(json!({"name": "a", "webhook_url": hang_url}))
        .await;
    let rx = receiver(vec![200]).await;
    let b = s
        .tenant_with(json!({"name": "b", "webhook_url": rx.url}))
        .await;
    let users: Vec<String> = (0..600).map(|i| format!("u{i}")).collect();
    s.send(
        &a,
        json!({"to": {"users": users}, "title": "a", "channels": ["webhook"]}),
    )
    .await;
    // let A's deliveries reach the webhook lane first
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let id = s
        .send(
            &b,
            json!({"to": {"users": ["v"]}, "title": "b", "channels": ["webhook"]}),
        )
        .await;
    wait_status(&s, &b, &id, "delivered").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1900),
        "tenant B waited {took:?} behind tenant A's endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_trickles_in_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(&[("TIDINGS_HTTP_REQUEST_TIMEOUT_MS", "2000")]).await;
    let t = s.tenant().await;
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 50000\r\n\r\n{{",
        t.api_key
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // one byte a while, never the whole body: answered and closed within seconds anyway
    let started = Instant::now();
    let mut answer = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let _ = sock.write_all(b" ").await;
            let mut buf = [0u8; 4096];
            tokio::select! {
                r = sock.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "a trickling body held the connection for {:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}
