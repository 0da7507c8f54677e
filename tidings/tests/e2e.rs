//! End-to-end: the real binary over real sockets, on embedded backends.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_on_every_device_ack_read_and_inbox() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let mut a1 = Ws::connect(&s, &t.token("alice")).await;
    let mut a2 = Ws::connect(&s, &t.token("alice")).await;
    let mut b = Ws::connect(&s, &t.token("bob")).await;

    // listed users: every device of every recipient
    let id = s.send(&t, json!({"to": {"users": ["alice", "bob"]}, "title": "hi", "body": "there", "data": {"k": 1}, "category": "greet"})).await;
    for ws in [&mut a1, &mut a2, &mut b] {
        let m = ws.next_message(5 * SEC).await.expect("pushed");
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["title"], "hi");
        assert_eq!(m["data"]["k"], 1);
        assert_eq!(m["priority"], "normal");
        assert!(m["seq"].as_u64().unwrap() >= 1);
    }
    let (st, unread) = s
        .user_api(&t.token("alice"), "GET", "/v1/inbox/unread_count", None)
        .await;
    assert_eq!((st, unread["unread"].as_u64()), (200, Some(1)));

    // ack marks delivered, read marks read
    a1.send(json!({"type": "ack", "id": id})).await;
    let r = a1.until("ok", 5 * SEC).await;
    assert_eq!(r.last().unwrap()["ref"], "ack");
    let inbox = s.inbox_all(&t.token("alice")).await;
    assert_eq!(inbox[0]["status"], "delivered");
    a1.send(json!({"type": "read", "ids": [id]})).await;
    let r = a1.until("ok", 5 * SEC).await;
    assert_eq!(r.last().unwrap()["ids"], json!([id]));
    let inbox = s.inbox_all(&t.token("alice")).await;
    assert_eq!(inbox[0]["status"], "read");
    let (_, unread) = s
        .user_api(&t.token("alice"), "GET", "/v1/inbox/unread_count", None)
        .await;
    assert_eq!(unread["unread"], 0);
    let (_, unread) = s
        .user_api(&t.token("bob"), "GET", "/v1/inbox/unread_count", None)
        .await;
    assert_eq!(unread["unread"], 1);

    // per-recipient status
    let (st, msg) = s.api(&t, "GET", &format!("/v1/messages/{id}"), None).await;
    assert_eq!(st, 200);
    let rec = msg["recipients"].as_array().unwrap();
    let of = |u: &str| rec.iter().find(|r| r["user"] == u).unwrap()["status"].clone();
    assert_eq!(of("alice"), "read");
    assert_eq!(of("bob"), "pending");

    // topics
    let (st, _) = s
        .api(&t, "PUT", "/v1/topics/orders/subscribers/carol", None)
        .await;
    assert_eq!(st, 204);
    let mut c = Ws::connect(&s, &t.token("carol")).await;
    let tid = s
        .send(&t, json!({"to": {"topics": ["orders"]}, "title": "order"}))
        .await;
    assert_eq!(c.next_message(5 * SEC).await.unwrap()["id"], tid.as_str());

    // broadcast reaches every known user (dave is known by his profile only)
    let (st, _) = s
        .api(
            &t,
            "PUT",
            "/v1/users/dave",
            Some(json!({"tags": ["vip"], "locale": "en"})),
        )
        .await;
    assert_eq!(st, 200);
    let bid = s
        .send(
            &t,
            json!({"to": {"broadcast": true}, "title": "all", "priority": "high"}),
        )
        .await;
    for ws in [&mut a1, &mut a2, &mut b, &mut c] {
        let m = ws.next_message(5 * SEC).await.unwrap();
        assert_eq!(m["id"], bid.as_str());
    }
    // tags
    let gid = s
        .send(&t, json!({"to": {"tags": ["vip"]}, "title": "vip only"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dave = s.inbox_all(&t.token("dave")).await;
    let ids: Vec<&str> = dave.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![gid.as_str(), bid.as_str()], "newest first");

    // paging newest first with cursors
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            s.send(
                &t,
                json!({"to": {"users": ["erin"]}, "title": format!("n{i}")}),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, p1) = s
        .user_api(&t.token("erin"), "GET", "/v1/inbox?limit=2", None)
        .await;
    let ids: Vec<&str> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![sent[4].as_str(), sent[3].as_str()]);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = s
        .user_api(
            &t.token("erin"),
            "GET",
            &format!("/v1/inbox?limit=10&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 3);
    assert!(p2["next_cursor"].is_null());
    // read all, delete one
    let (st, r) = s
        .user_api(
            &t.token("erin"),
            "POST",
            "/v1/inbox/read",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!((st, r["marked"].as_u64()), (200, Some(5)));
    let (st, _) = s
        .user_api(
            &t.token("erin"),
            "DELETE",
            &format!("/v1/inbox/{}", sent[0]),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(s.inbox_all(&t.token("erin")).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_get_everything_on_resume_once_oldest_first() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            s.send(
                &t,
                json!({"to": {"users": ["u"]}, "title": format!("m{i}")}),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    ws.send(json!({"type": "resume"})).await;
    let frames = ws.until("ok", 5 * SEC).await;
    let got: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "oldest first, each once"
    );
    // a second resume on the same connection sends nothing twice
    ws.send(json!({"type": "resume"})).await;
    let again = ws.until("ok", 5 * SEC).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["replayed"], 0);
    // a new connection resumes after the last message it saw
    let mut ws2 = Ws::connect(&s, &t.token("u")).await;
    ws2.send(json!({"type": "resume", "since": ids[1]})).await;
    let frames = ws2.until("ok", 5 * SEC).await;
    let got: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[3].as_str()]);
    ws2.send(json!({"type": "resume", "since": "no-such-id"}))
        .await;
    let e = ws2.next_frame(5 * SEC).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_message"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_overtakes_a_low_backlog_and_low_drains_under_high() {
    // small batches, so that the low backlog spans many router rounds: urgent can wait behind
    // at most the one low batch being routed when it arrives
    let s = Server::start(&[("TIDINGS_ROUTER_BATCH", "4")]).await;
    let t = s.tenant().await;
    // a fan-out backlog: LOW messages to a topic of SUBS subscribers
    const SUBS: usize = 200;
    const LOW: usize = 200;
    for i in 0..SUBS {
        let (st, _) = s
            .api(
                &t,
                "PUT",
                &format!("/v1/topics/crowd/subscribers/c{i}"),
                None,
            )
            .await;
        assert_eq!(st, 204);
    }
    s.api(&t, "PUT", "/v1/topics/crowd/subscribers/probe", None)
        .await;
    let mut probe = Ws::connect(&s, &t.token("probe")).await;
    let mut boss = Ws::connect(&s, &t.token("boss")).await;
    let low_ids: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    {
        let futs = (0..LOW).map(|i| s.send(&t, json!({"to": {"topics": ["crowd"]}, "title": format!("low {i}"), "priority": "low"})));
        for id in futures::future::join_all(futs).await {
            low_ids.lock().unwrap().push(id);
        }
    }
    let urgent = s
        .send(
            &t,
            json!({"to": {"users": ["boss"]}, "title": "fire", "priority": "urgent"}),
        )
        .await;
    let m = boss.next_message(30 * SEC).await.expect("urgent arrives");
    assert_eq!(m["id"], urgent.as_str());
    // how much of the low backlog the probe had seen when urgent arrived
    let mut low_seen = 0;
    while probe.next_message(Duration::from_millis(1)).await.is_some() {
        low_seen += 1;
    }
    assert!(
        low_seen < LOW / 2,
        "urgent waited behind {low_seen} of {LOW} low messages"
    );

    // a steady stream of high to boss; low keeps draining meanwhile
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, s2, t2) = (stop.clone(), s.http.clone(), t.clone());
        let url = s.url("/v1/messages");
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = s2
                    .post(&url)
                    .bearer_auth(&t2.api_key)
                    .json(&json!({"to": {"users": ["boss"]}, "title": "high", "priority": "high"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                n += 1;
            }
            n
        })
    };
    let mut during = 0;
    let stream_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while low_seen + during < LOW && tokio::time::Instant::now() < stream_until {
        if probe
            .next_message(Duration::from_millis(200))
            .await
            .is_some()
        {
            during += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let highs = sender.await.unwrap();
    assert!(highs > 0);
    assert!(during > 0, "low made no progress under {highs} high sends");
    let mut after = 0;
    while low_seen + during + after < LOW {
        match probe.next_message(Duration::from_secs(30)).await {
            Some(_) => after += 1,
            None => break,
        }
    }
    assert_eq!(
        low_seen + during + after,
        LOW,
        "every low message arrives ({during} while high streamed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_per_channel_and_bad_ones_are_refused_at_send() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let tpl = json!({
        "required": ["order"],
        "inapp": {
            "title": "Order {{ order }} {{ status | default('shipped') }}",
            "body": "{% if vip %}Dear VIP, {% endif %}{% for i in items %}{{ i | upper }} {% endfor %}on {{ at | dateformat(format='[year]-[month]-[day]') }}"
        },
        "locales": {"zh": {"title": "订单 {{ order }} 已发货", "body": "-"}},
        "webhook": "{\"order\": {{ order | tojson }}, \"kind\": \"shipped\"}"
    });
    let (st, v) = s.api(&t, "PUT", "/v1/templates/shipped", Some(tpl)).await;
    assert_eq!(st, 200, "{v}");
    let data = json!({"order": "A-17", "vip": true, "items": ["a", "b"], "at": 1763900000});
    let (st, p) = s
        .api(
            &t,
            "POST",
            "/v1/templates/shipped/preview",
            Some(json!({"data": data})),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["inapp"]["title"], "Order A-17 shipped");
    assert_eq!(p["inapp"]["body"], "Dear VIP, A B on 2025-11-23");
    assert_eq!(p["webhook"], json!({"order": "A-17", "kind": "shipped"}));
    let (_, p) = s
        .api(
            &t,
            "POST",
            "/v1/templates/shipped/preview",
            Some(json!({"data": data, "locale": "zh-CN"})),
        )
        .await;
    assert_eq!(p["inapp"]["title"], "订单 A-17 已发货");

    let mut ws = Ws::connect(&s, &t.token("u")).await;
    s.send(
        &t,
        json!({"to": {"users": ["u"]}, "template": "shipped", "data": data}),
    )
    .await;
    let m = ws.next_message(5 * SEC).await.unwrap();
    assert_eq!(m["title"], "Order A-17 shipped");

    let cases = [
        (
            json!({"to": {"users": ["u"]}, "template": "nope"}),
            "template_not_found",
        ),
        (
            json!({"to": {"users": ["u"]}, "template": "shipped", "data": {"vip": false}}),
            "template_variable_missing",
        ),
    ];
    for (body, code) in cases {
        let (st, v) = s.api(&t, "POST", "/v1/messages", Some(body)).await;
        assert_eq!((st, v["error"]["code"].as_str()), (422, Some(code)));
    }
    let (st, v) = s
        .api(
            &t,
            "PUT",
            "/v1/templates/bad",
            Some(json!({"inapp": {"title": "{{ x", "body": ""}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("template_invalid"))
    );
    // a variable used by the template but not given
    s.api(
        &t,
        "PUT",
        "/v1/templates/loose",
        Some(json!({"inapp": {"title": "{{ who }}", "body": ""}})),
    )
    .await;
    let (st, v) = s
        .api(
            &t,
            "POST",
            "/v1/messages",
            Some(json!({"to": {"users": ["u"]}, "template": "loose"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("template_variable_missing"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_dead_lettered_and_replayed() {
    use hmac::{Hmac, Mac};
    let s = Server::start(&[
        ("TIDINGS_RETRY_WEBHOOK_BASE_MS", "50"),
        ("TIDINGS_RETRY_WEBHOOK_CAP_MS", "200"),
        ("TIDINGS_RETRY_WEBHOOK_MAX_ATTEMPTS", "4"),
    ])
    .await;
    let rx = receiver(vec![503, 429, 200]).await;
    let t = s
        .tenant_with(json!({"name": "hooks", "webhook_url": rx.url}))
        .await;
    let id = s
        .send(
            &t,
            json!({"to": {"users": ["u"]}, "title": "paid", "channels": ["webhook"]}),
        )
        .await;
    let st = wait_status(&s, &t, &id, "delivered").await;
    assert_eq!(st["attempts"], 3, "503 and 429 retried, then 200");
    {
        let hits = rx.hits.lock().unwrap();
        assert_eq!(hits.len(), 3);
        let (headers, body) = &hits[2];
        let ts = headers["x-tidings-timestamp"].to_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(t.webhook_secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["x-tidings-signature"].to_str().unwrap(), want);
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["message_id"], id.as_str());
        assert_eq!(v["title"], "paid");
    }

    // a 4xx is permanent: straight to the DLQ, status failed with the error
    *rx.script.lock().unwrap() = vec![400];
    let id2 = s
        .send(
            &t,
            json!({"to": {"users": ["v"]}, "title": "bad", "channels": ["webhook"]}),
        )
        .await;
    let st = wait_status(&s, &t, &id2, "failed").await;
    assert_eq!(st["last_error"], "http 400");
    assert_eq!(st["attempts"], 1);
    // exhausted retries also land there
    *rx.script.lock().unwrap() = vec![500];
    let id3 = s
        .send(
            &t,
            json!({"to": {"users": ["w"]}, "title": "down", "channels": ["webhook"]}),
        )
        .await;
    let st = wait_status(&s, &t, &id3, "failed").await;
    assert_eq!(st["attempts"], 4);
    assert_eq!(st["last_error"], "http 500");

    let (code, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    assert_eq!(code, 200);
    let items = dlq["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    // the endpoint recovers; replay both
    *rx.script.lock().unwrap() = vec![200];
    for it in items {
        let (code, _) = s
            .api(
                &t,
                "POST",
                &format!("/v1/dlq/{}/replay", it["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(code, 202);
    }
    wait_status(&s, &t, &id2, "delivered").await;
    wait_status(&s, &t, &id3, "delivered").await;
    let (_, dlq) = s.api(&t, "GET", "/v1/dlq", None).await;
    assert!(dlq["items"].as_array().unwrap().is_empty());
    let (code, v) = s.api(&t, "POST", "/v1/dlq/nope/replay", None).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("dlq_entry_not_found"))
    );
    assert!(s.metrics().await.contains("tidings_dlq_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_id_and_delivers_once() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let other = s.tenant().await;
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    let body = json!({"to": {"users": ["u"]}, "title": "once", "idempotency_key": "order-1"});
    let (st1, a) = s.api(&t, "POST", "/v1/messages", Some(body.clone())).await;
    let (st2, b) = s.api(&t, "POST", "/v1/messages", Some(body.clone())).await;
    assert_eq!((st1, st2), (202, 202));
    assert_eq!(a["message_id"], b["message_id"]);
    assert_eq!(b["duplicate"], true);
    // the same key from another tenant is another message
    let (_, c) = s.api(&other, "POST", "/v1/messages", Some(body)).await;
    assert_ne!(a["message_id"], c["message_id"]);
    assert_eq!(
        ws.next_message(5 * SEC).await.unwrap()["id"],
        a["message_id"]
    );
    assert!(
        ws.next_message(Duration::from_millis(700)).await.is_none(),
        "delivered once"
    );
    assert_eq!(s.inbox_all(&t.token("u")).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_codes_and_the_server_keeps_serving() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let other = s.tenant().await;
    let post = |key: &str, body: String| {
        s.http
            .post(s.url("/v1/messages"))
            .bearer_auth(key.to_string())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let code_of = |r: reqwest::Response| async move {
        let st = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (st, v["error"]["code"].as_str().unwrap().to_string())
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        (
            json!({"to": {}, "title": "x"}).to_string(),
            422,
            "no_recipients",
        ),
        (
            json!({"to": {"users": ["u"]}, "title": "x", "priority": "asap"}).to_string(),
            422,
            "invalid_priority",
        ),
        (
            json!({"to": {"users": ["u"]}, "title": "x", "channels": ["pigeon"]}).to_string(),
            422,
            "invalid_channel",
        ),
        (
            json!({"to": {"users": ["u"]}, "title": "x", "channels": ["webhook"]}).to_string(),
            422,
            "channel_not_configured",
        ),
        (
            json!({"to": {"users": ["u"]}}).to_string(),
            422,
            "missing_content",
        ),
        (
            json!({"to": {"users": ["u"]}, "title": "x", "bogus": 1}).to_string(),
            422,
            "invalid_request",
        ),
        (
            json!({"to": {"users": ["u"]}, "title": "x".repeat(70_000)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (st, code) = code_of(post(&t.api_key, body).await.unwrap()).await;
        assert_eq!((st, code.as_str()), (want_status, want_code));
    }
    let (st, code) = code_of(
        post(
            "tk_wrong",
            json!({"to": {"users": ["u"]}, "title": "x"}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((st, code.as_str()), (401, "auth_invalid_key"));
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "auth_missing".to_string()));
    let r = s
        .http
        .post(s.url("/v1/admin/tenants"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await.0, 401);

    // user tokens: expired, signed by another tenant's secret, garbage
    let expired = t.token_exp("u", -3600);
    let (st, v) = s.user_api(&expired, "GET", "/v1/inbox", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("auth_token_expired"))
    );
    let forged = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"sub": "u", "tid": t.id, "exp": now + 600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(other.jwt_secret.as_bytes()),
        )
        .unwrap()
    };
    let (st, v) = s.user_api(&forged, "GET", "/v1/inbox", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("auth_invalid_token"))
    );
    let (st, _) = s
        .user_api("garbage", "GET", "/v1/inbox/unread_count", None)
        .await;
    assert_eq!(st, 401);
    let ws_err =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={expired}", s.addr)).await;
    assert!(ws_err.is_err(), "an expired token cannot open a connection");

    // garbage frames get error frames; the connection keeps working
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    for bad in [
        "not json",
        "{\"type\":\"launch\"}",
        "{\"type\":\"ack\"}",
        "[1,2]",
    ] {
        ws.send_raw(Message::Text(bad.into())).await;
        let f = ws.next_frame(5 * SEC).await.unwrap();
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("invalid_frame")),
            "{bad}"
        );
    }
    ws.send_raw(Message::Binary(vec![0, 159, 146, 150].into()))
        .await;
    assert_eq!(
        ws.next_frame(5 * SEC).await.unwrap()["code"],
        "invalid_frame"
    );
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_frame(5 * SEC).await.unwrap()["type"], "pong");
    let id = s
        .send(&t, json!({"to": {"users": ["u"]}, "title": "still here"}))
        .await;
    assert_eq!(ws.next_message(5 * SEC).await.unwrap()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_send_survives_sigkill_exactly_once() {
    let mut s = Server::start(&[]).await;
    let t = s.tenant().await;
    let accepted: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for w in 0..4 {
        let (acc, stop, http, url, key) = (
            accepted.clone(),
            stop.clone(),
            s.http.clone(),
            s.url("/v1/messages"),
            t.api_key.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"to": {"users": ["victim"]}, "title": format!("w{w}-{i}")});
                match http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap();
                        acc.lock()
                            .unwrap()
                            .push(v["message_id"].as_str().unwrap().to_string());
                    }
                    // the process died mid-request: no 202, no promise
                    _ => break,
                }
                i += 1;
            }
        }));
    }
    while accepted.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in senders {
        h.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    s.restart().await;

    let token = t.token("victim");
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let inbox = loop {
        let inbox = s.inbox_all(&token).await;
        let have: HashSet<&str> = inbox.iter().map(|i| i["id"].as_str().unwrap()).collect();
        if want.is_subset(&have) || tokio::time::Instant::now() > deadline {
            break inbox;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<&str> = inbox.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no message twice in the inbox");
    let missing: Vec<&&str> = want.iter().filter(|id| !unique.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted sends lost: {missing:?}",
        missing.len(),
        want.len()
    );

    let mut ws = Ws::connect(&s, &token).await;
    ws.send(json!({"type": "resume"})).await;
    let frames = ws.until("ok", 30 * SEC).await;
    let got: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let got_set: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "the client gets each once");
    assert!(
        want.is_subset(&got_set),
        "every accepted send reaches the reconnected client"
    );
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let mut ws = Ws::connect(&s, &t.token("u")).await;
    s.send(
        &t,
        json!({"to": {"users": ["u"]}, "title": "m", "priority": "high"}),
    )
    .await;
    ws.next_message(5 * SEC).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = s.metrics().await;
    for name in [
        "tidings_delivery_latency_seconds_bucket{priority=\"high\",channel=\"inapp\"",
        "tidings_delivery_connections 1",
        "tidings_ingest_requests_total{priority=\"high\",outcome=\"accepted\"} 1",
        "tidings_router_requests_total{priority=\"high\"} 1",
        "tidings_router_deliveries_total{channel=\"inapp\"} 1",
        "tidings_bus_queue_depth{topic=\"requests.urgent\"} 0",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
}

/// Acks sent back to back are persisted together, each still answered in order, and a frame
/// between them is answered in its place; pushes keep arriving while acks are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_acks_is_answered_in_order_and_every_one_persisted() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let mut ws = Ws::connect(&s, &t.token("erin")).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            s.send(
                &t,
                json!({"to": {"users": ["erin"]}, "title": format!("m{i}")}),
            )
            .await,
        );
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let m = ws.next_message(10 * SEC).await.expect("pushed");
        got.push(m["id"].as_str().unwrap().to_string());
    }
    // 15 acks, a ping, 15 more acks, all written before reading any reply
    for (i, id) in ids.iter().enumerate() {
        if i == 15 {
            ws.send(json!({"type": "ping"})).await;
        }
        ws.send(json!({"type": "ack", "id": id})).await;
    }
    let mut replies = Vec::new();
    while replies.len() < 31 {
        let f = ws.next_frame(10 * SEC).await.expect("a reply");
        if f["type"] == "message" {
            continue;
        }
        replies.push(f);
    }
    for (i, r) in replies.iter().enumerate() {
        match i {
            15 => assert_eq!(r["type"], "pong", "{replies:?}"),
            _ => {
                let k = if i < 15 { i } else { i - 1 };
                assert_eq!(r["type"], "ok", "{r}");
                assert_eq!(r["ref"], "ack");
                assert_eq!(r["id"], ids[k].as_str(), "replies in frame order");
            }
        }
    }
    // every ack reached the inbox and the per-recipient status
    let inbox = s.inbox_all(&t.token("erin")).await;
    assert_eq!(inbox.len(), 30);
    assert!(
        inbox.iter().all(|m| m["status"] == "delivered"),
        "{inbox:?}"
    );
    for id in &ids {
        let (_, m) = s.api(&t, "GET", &format!("/v1/messages/{id}"), None).await;
        assert_eq!(m["recipients"][0]["status"], "delivered", "{m}");
    }
    // and a message sent now is still pushed on the same connection
    let late = s
        .send(&t, json!({"to": {"users": ["erin"]}, "title": "late"}))
        .await;
    assert_eq!(
        ws.next_message(10 * SEC).await.unwrap()["id"],
        late.as_str()
    );
}

/// A read sent right before the client closes still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sent_just_before_closing_is_persisted() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let mut ws = Ws::connect(&s, &t.token("fay")).await;
    let id = s
        .send(&t, json!({"to": {"users": ["fay"]}, "title": "bye"}))
        .await;
    assert_eq!(ws.next_message(10 * SEC).await.unwrap()["id"], id.as_str());
    ws.send(json!({"type": "read", "ids": [id]})).await;
    ws.send_raw(Message::Close(None)).await;
    drop(ws);
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let inbox = s.inbox_all(&t.token("fay")).await;
        if inbox[0]["status"] == "read" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read was lost: {inbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
