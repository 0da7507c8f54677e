//! Test harness: start the real `tidings` binary on a free port with its own data dir, talk to
//! it over real sockets.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub struct Server {
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// Environment of the server process; changes take effect at the next restart.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// Start the process with this open-file limit (soft and hard), as `ulimit -n` would.
    pub nofile: Option<u64>,
}

pub const ADMIN: &str = "test-admin-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub async fn start(env: &[(&str, &str)]) -> Server {
        Server::start_with(None, env).await
    }

    /// Start under `ulimit -n <nofile>` (soft and hard: the server cannot raise it).
    pub async fn start_with_nofile(nofile: u64, env: &[(&str, &str)]) -> Server {
        Server::start_with(Some(nofile), env).await
    }

    async fn start_with(nofile: Option<u64>, env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            addr: format!("127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().unwrap(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            http: reqwest::Client::new(),
            nofile,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let exe = env!("CARGO_BIN_EXE_tidings");
        let mut cmd = match self.nofile {
            None => Command::new(exe),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(exe);
                c
            }
        };
        cmd.arg("serve")
            .env("TIDINGS_HTTP_ADDR", &self.addr)
            .env("TIDINGS_DATA_DIR", self.dir.path())
            .env("TIDINGS_ADMIN_TOKEN", ADMIN)
            .env(
                "RUST_LOG",
                std::env::var("TIDINGS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("TIDINGS_EGRESS_ALLOW_PRIVATE", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start tidings"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "tidings did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Set (or replace) an environment variable for the next restart.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Wait for the process to exit by itself (a fail point), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().unwrap().is_some() {
                    self.child = None;
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Start again after the process exited by itself.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn().await;
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        // a new process on the same port and data dir
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn tenant(&self) -> Tenant {
        self.tenant_with(json!({"name": "t"})).await
    }

    pub async fn tenant_with(&self, body: Value) -> Tenant {
        let r = self
            .http
            .post(self.url("/v1/admin/tenants"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        Tenant {
            id: v["tenant_id"].as_str().unwrap().into(),
            api_key: v["api_key"].as_str().unwrap().into(),
            jwt_secret: v["jwt_secret"].as_str().unwrap().into(),
            webhook_secret: v["webhook_secret"].as_str().unwrap().into(),
        }
    }

    /// A request with the tenant's API key; returns status and JSON body.
    pub async fn api(
        &self,
        t: &Tenant,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path)).bearer_auth(&t.api_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn send(&self, t: &Tenant, body: Value) -> String {
        let (s, v) = self.api(t, "POST", "/v1/messages", Some(body)).await;
        assert_eq!(s, 202, "{v}");
        v["message_id"].as_str().unwrap().to_string()
    }

    /// A request with a user's JWT.
    pub async fn user_api(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Every inbox item of a user, newest first, following cursors.
    pub async fn inbox_all(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let (s, v) = self
                .user_api(
                    token,
                    "GET",
                    &format!("/v1/inbox?limit=200&cursor={cursor}"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["items"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return out,
            }
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: String,
    pub api_key: String,
    pub jwt_secret: String,
    pub webhook_secret: String,
}

impl Tenant {
    pub fn token(&self, user: &str) -> String {
        self.token_exp(user, 3600)
    }

    pub fn token_exp(&self, user: &str, secs_from_now: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"sub": user, "tid": self.id, "exp": now + secs_from_now});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .unwrap()
    }
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client.
pub struct Ws {
    pub stream: WsStream,
}

impl Ws {
    /// Connect with `?token=` and wait for `hello` (the connection is registered by then).
    pub async fn connect(server: &Server, token: &str) -> Ws {
        let url = format!("ws://{}/v1/ws?token={token}", server.addr);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let mut ws = Ws { stream };
        let hello = ws.next_frame(Duration::from_secs(10)).await.expect("hello");
        assert_eq!(hello["type"], "hello");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next JSON text frame, or None on timeout or close.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match m.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next `message` frame.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await?;
            if f["type"] == "message" {
                return Some(f);
            }
        }
    }

    /// Frames until one of `type` arrives (included).
    pub async fn until(&mut self, ty: &str, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .next_frame(left)
                .await
                .unwrap_or_else(|| panic!("no `{ty}` frame; got {out:?}"));
            let done = f["type"] == ty;
            out.push(f);
            if done {
                return out;
            }
        }
    }
}

pub const SEC: Duration = Duration::from_secs(1);

/// A webhook receiver that answers from a script of statuses and records what it got.
pub struct Receiver {
    pub url: String,
    pub hits: Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    pub script: Arc<std::sync::Mutex<Vec<u16>>>,
}

pub async fn receiver(script: Vec<u16>) -> Receiver {
    use axum::routing::post;
    let hits: Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>> = Default::default();
    let script = Arc::new(std::sync::Mutex::new(script));
    let (h, sc) = (hits.clone(), script.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let (h, sc) = (h.clone(), sc.clone());
            async move {
                h.lock().unwrap().push((headers, body));
                let mut s = sc.lock().unwrap();
                let code = if s.len() > 1 { s.remove(0) } else { s[0] };
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Receiver { url, hits, script }
}

pub async fn wait_status(s: &Server, t: &Tenant, id: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, m) = s.api(t, "GET", &format!("/v1/messages/{id}"), None).await;
        if st == 200 {
            let r = m["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["channel"] == "webhook")
                .cloned();
            if let Some(r) = r {
                if r["status"] == want {
                    return r;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never became {want}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
