//! End-to-end: messages to topics, tags and the whole tenant are written once and pushed once
//! per connection, and users see no difference from a personal message. The real binary over
//! real sockets, on embedded backends.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Poll until the message is routed (its record exists), and return it.
async fn routed(s: &Server, t: &Tenant, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, m) = s.api(t, "GET", &format!("/v1/messages/{id}"), None).await;
        if st == 200 {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never routed: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

async fn unread(s: &Server, token: &str) -> u64 {
    let (st, v) = s
        .user_api(token, "GET", "/v1/inbox/unread_count", None)
        .await;
    assert_eq!(st, 200, "{v}");
    v["unread"].as_u64().unwrap()
}

async fn put(s: &Server, t: &Tenant, path: &str, body: Option<Value>) {
    let (st, v) = s.api(t, "PUT", path, body).await;
    assert!(st == 204 || st == 200, "{path}: {st} {v}");
}

/// Recipients are the members at send time: a later subscriber does not see the message, an
/// unsubscriber keeps it. It merges into each inbox with personal messages, newest first,
/// paged without gaps or repeats; reads and deletes are each user's own; "read all" covers
/// it; the status answers the audience and its counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_messages_reach_the_members_at_send_time_and_read_like_personal_ones() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    for u in ["ann", "ben"] {
        put(&s, &t, &format!("/v1/topics/news/subscribers/{u}"), None).await;
    }
    let mut ann = Ws::connect(&s, &t.token("ann")).await;
    let first = s
        .send(&t, json!({"to": {"topics": ["news"]}, "title": "first"}))
        .await;
    let m = ann.next_message(5 * SEC).await.expect("pushed live");
    assert_eq!(
        (m["id"].as_str(), m["title"].as_str()),
        (Some(first.as_str()), Some("first"))
    );
    let seq = m["seq"].as_u64().unwrap();

    // membership changes after the send do not change who has it
    put(&s, &t, "/v1/topics/news/subscribers/cat", None).await;
    let (st, _) = s
        .api(&t, "DELETE", "/v1/topics/news/subscribers/ben", None)
        .await;
    assert_eq!(st, 204);
    let personal = s
        .send(
            &t,
            json!({"to": {"users": ["ann", "ben", "cat"]}, "title": "personal"}),
        )
        .await;
    let second = s
        .send(&t, json!({"to": {"topics": ["news"]}, "title": "second"}))
        .await;
    routed(&s, &t, &second).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            ann.next_message(5 * SEC).await.expect("pushed")["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    seen.sort();
    let mut want = vec![personal.clone(), second.clone()];
    want.sort();
    assert_eq!(seen, want);
    // the personal message is routed before or with the second: wait for both to be stored
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    while s.inbox_all(&t.token("cat")).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids(&s.inbox_all(&t.token("ann")).await),
        vec![second.clone(), personal.clone(), first.clone()]
    );
    assert_eq!(
        ids(&s.inbox_all(&t.token("ben")).await),
        vec![personal.clone(), first.clone()],
        "ben left after `first`"
    );
    assert_eq!(
        ids(&s.inbox_all(&t.token("cat")).await),
        vec![second.clone(), personal.clone()],
        "cat joined after `first`"
    );

    // the same item as a personal one, paged by cursor without gaps or repeats
    let (st, page) = s
        .user_api(&t.token("ann"), "GET", "/v1/inbox?limit=1", None)
        .await;
    assert_eq!(st, 200);
    let mut got = ids(page["items"].as_array().unwrap());
    let mut cursor = page["next_cursor"].as_str().unwrap().to_string();
    loop {
        let (_, page) = s
            .user_api(
                &t.token("ann"),
                "GET",
                &format!("/v1/inbox?limit=1&cursor={cursor}"),
                None,
            )
            .await;
        got.extend(ids(page["items"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(got, vec![second.clone(), personal.clone(), first.clone()]);
    let item = &s.inbox_all(&t.token("ann")).await[2];
    assert_eq!(
        (item["seq"].as_u64(), item["status"].as_str()),
        (Some(seq), Some("unread"))
    );

    // reads, acks and deletes are each user's own
    assert_eq!(unread(&s, &t.token("ann")).await, 3);
    ann.send(json!({"type": "ack", "id": first})).await;
    assert_eq!(ann.until("ok", 5 * SEC).await.last().unwrap()["ref"], "ack");
    let (st, r) = s
        .user_api(
            &t.token("ann"),
            "POST",
            "/v1/inbox/read",
            Some(json!({"ids": [first]})),
        )
        .await;
    assert_eq!((st, r["marked"].as_u64()), (200, Some(1)));
    assert_eq!(unread(&s, &t.token("ann")).await, 2);
    assert_eq!(
        unread(&s, &t.token("ben")).await,
        2,
        "ben's own state is untouched"
    );
    let (st, _) = s
        .user_api(
            &t.token("ben"),
            "DELETE",
            &format!("/v1/inbox/{first}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        ids(&s.inbox_all(&t.token("ben")).await),
        vec![personal.clone()]
    );
    assert_eq!(s.inbox_all(&t.token("ann")).await.len(), 3);
    let (st, _) = s
        .user_api(
            &t.token("cat"),
            "DELETE",
            &format!("/v1/inbox/{first}"),
            None,
        )
        .await;
    assert_eq!(st, 404, "cat never had it");

    // status: the audience, the counts, and the entries that exist
    let m = routed(&s, &t, &first).await;
    assert_eq!(m["audience"], json!({"kind": "topic", "name": "news"}));
    assert_eq!(
        m["counts"],
        json!({"recipients": 2, "delivered": 1, "read": 1}),
        "{m}"
    );
    let rec = m["recipients"].as_array().unwrap();
    assert_eq!(rec.len(), 1, "only ann acted: {m}");
    assert_eq!(
        (rec[0]["user"].as_str(), rec[0]["status"].as_str()),
        (Some("ann"), Some("read"))
    );

    // recipients are paged
    let mut users = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, m) = s
            .api(
                &t,
                "GET",
                &format!("/v1/messages/{personal}?limit=2&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{m}");
        let rec = m["recipients"].as_array().unwrap();
        assert!(rec.len() <= 2);
        users.extend(rec.iter().map(|r| r["user"].as_str().unwrap().to_string()));
        match m["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    users.sort();
    assert_eq!(users, vec!["ann", "ben", "cat"]);
    let (st, e) = s
        .api(
            &t,
            "GET",
            &format!("/v1/messages/{personal}?cursor=zz"),
            None,
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (422, Some("invalid_cursor")),
        "{e}"
    );

    // read all: every message so far, not the next one
    let (st, r) = s
        .user_api(
            &t.token("cat"),
            "POST",
            "/v1/inbox/read",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!((st, r["marked"].as_u64()), (200, Some(2)));
    assert_eq!(unread(&s, &t.token("cat")).await, 0);
    let third = s
        .send(&t, json!({"to": {"topics": ["news"]}, "title": "third"}))
        .await;
    routed(&s, &t, &third).await;
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    while unread(&s, &t.token("cat")).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the next message is unread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses: Vec<String> = s
        .inbox_all(&t.token("cat"))
        .await
        .iter()
        .map(|i| i["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, vec!["unread", "read", "read"]);

    // resume: oldest first, each once, across personal and audience messages
    let mut cat = Ws::connect(&s, &t.token("cat")).await;
    cat.send(json!({"type": "resume", "since": personal})).await;
    let frames = cat.until("ok", 5 * SEC).await;
    let replayed: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(replayed, vec![second.as_str(), third.as_str()]);
    cat.send(json!({"type": "resume"})).await;
    let frames = cat.until("ok", 5 * SEC).await;
    assert_eq!(
        frames.last().unwrap()["replayed"],
        0,
        "sent once per connection"
    );
}

/// A live connection follows its user's memberships: subscribing, unsubscribing and changing
/// tags while connected change what is pushed to it; a broadcast reaches every connection of
/// every known user once, even a user in two of its audiences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_follow_memberships_while_connected() {
    let s = Server::start(&[]).await;
    let t = s.tenant().await;
    let mut dan1 = Ws::connect(&s, &t.token("dan")).await;
    let mut dan2 = Ws::connect(&s, &t.token("dan")).await;
    let mut eve = Ws::connect(&s, &t.token("eve")).await;

    // dan subscribes while connected: both of his connections get the next topic message
    put(&s, &t, "/v1/topics/deals/subscribers/dan", None).await;
    let id = s
        .send(&t, json!({"to": {"topics": ["deals"]}, "title": "deal"}))
        .await;
    for ws in [&mut dan1, &mut dan2] {
        assert_eq!(
            ws.next_message(5 * SEC).await.expect("pushed")["id"],
            id.as_str()
        );
    }
    // eve gets a tag while connected; a message to the tag and the topic reaches each once
    put(&s, &t, "/v1/users/eve", Some(json!({"tags": ["gold"]}))).await;
    put(&s, &t, "/v1/topics/deals/subscribers/eve", None).await;
    let both = s
        .send(
            &t,
            json!({"to": {"topics": ["deals"], "tags": ["gold"]}, "title": "both"}),
        )
        .await;
    assert_eq!(
        eve.next_message(5 * SEC).await.expect("pushed")["id"],
        both.as_str()
    );
    for ws in [&mut dan1, &mut dan2] {
        assert_eq!(
            ws.next_message(5 * SEC).await.expect("pushed")["id"],
            both.as_str()
        );
    }
    // dan leaves the topic, eve loses the tag: a message to both reaches eve by the topic only
    let (st, _) = s
        .api(&t, "DELETE", "/v1/topics/deals/subscribers/dan", None)
        .await;
    assert_eq!(st, 204);
    put(&s, &t, "/v1/users/eve", Some(json!({"tags": []}))).await;
    let after = s
        .send(&t, json!({"to": {"tags": ["gold"]}, "title": "gold only"}))
        .await;
    let deal = s
        .send(&t, json!({"to": {"topics": ["deals"]}, "title": "deal 2"}))
        .await;
    assert_eq!(
        eve.next_message(5 * SEC).await.expect("pushed")["id"],
        deal.as_str(),
        "not the tag message"
    );
    // a broadcast: every connection once; the first frame dan sees is the broadcast, not the
    // topic or tag messages he is no longer in
    let all = s
        .send(&t, json!({"to": {"broadcast": true}, "title": "all"}))
        .await;
    for ws in [&mut dan1, &mut dan2, &mut eve] {
        assert_eq!(
            ws.next_message(5 * SEC).await.expect("pushed")["id"],
            all.as_str()
        );
    }
    // what eve's inbox holds matches what was pushed
    let eve_inbox = ids(&s.inbox_all(&t.token("eve")).await);
    assert_eq!(eve_inbox, vec![all.clone(), deal.clone(), both.clone()]);
    assert!(!eve_inbox.contains(&after));
    let m = routed(&s, &t, &all).await;
    assert_eq!(m["audience"], json!({"kind": "broadcast", "name": ""}));
    assert_eq!(m["counts"]["recipients"], 2);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("tidings_router_audience_posts_total"),
        "{metrics}"
    );
    assert!(metrics.contains("tidings_delivery_audience_pushes_total"));
}
