//! The one typed configuration: a TOML file (`--config`), then `TIDINGS_*` environment
//! overrides, then [`Config::validate`]. Every key has a default, so an empty file is valid.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A secret that never prints.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The most requests per batch and recipients per page the router takes (see `validate`).
pub const ROUTER_MAX_RUN: usize = 50_000;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP and WebSocket listen address (`TIDINGS_HTTP_ADDR`).
    pub http_addr: String,
    /// Where the embedded bus and store keep their files (`TIDINGS_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Token for `/v1/admin` (`TIDINGS_ADMIN_TOKEN`); admin routes are off while it is empty.
    pub admin_token: Secret,
    /// This node's name in logs and presence, and of its consumer group on the audience topic
    /// (`TIDINGS_NODE_ID`). Empty: [`Config::load`] makes it the host's name and the HTTP
    /// port, unique among nodes (two on one host listen on different ports) and the same
    /// across restarts.
    pub node_id: String,
    /// Prefix of every bus topic.
    pub topic_prefix: String,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub presence: PresenceConfig,
    pub limits: Limits,
    pub router: RouterConfig,
    pub websocket: WebSocketConfig,
    pub webhook: WebhookConfig,
    pub retry: RetryConfig,
    pub templates: TemplateConfig,
    pub egress: EgressConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
}

/// `<host name>-<HTTP port>` (the host's name is a pod's or container's own; `node` where it
/// cannot be read).
fn default_node_id(http_addr: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    match http_addr.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() => format!("{host}-{port}"),
        _ => host,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            admin_token: Secret::default(),
            node_id: String::new(),
            topic_prefix: "tidings".into(),
            bus: BusConfig::default(),
            store: StoreConfig::default(),
            presence: PresenceConfig::default(),
            limits: Limits::default(),
            router: RouterConfig::default(),
            websocket: WebSocketConfig::default(),
            webhook: WebhookConfig::default(),
            retry: RetryConfig::default(),
            templates: TemplateConfig::default(),
            egress: EgressConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `embedded` or `kafka` (`TIDINGS_BUS`).
    pub backend: String,
    /// Partitions per topic.
    pub partitions: u32,
    /// `TIDINGS_KAFKA_BROKERS`.
    pub kafka_brokers: String,
    /// `TIDINGS_SCHEMA_REGISTRY_URL`.
    pub schema_registry_url: String,
    /// How long records are kept, in hours (Kafka: the topics' `retention.ms`; embedded:
    /// records no group reads).
    pub retention_hours: u64,
    /// Kafka: copies of each partition when `tidings migrate` creates a topic (0: the
    /// cluster's `default.replication.factor`). Production clusters want 3.
    pub replication_factor: u16,
    /// Kafka: partitions of the request topics, if not `partitions` (requests are keyed by
    /// tenant and user, so more partitions spread one tenant over more routers).
    pub request_partitions: u32,
    /// Longest an append waits for the brokers before it fails with `bus_unavailable`
    /// (`TIDINGS_BUS_PRODUCE_TIMEOUT_MS`).
    pub produce_timeout_ms: u64,
    /// Extra librdkafka properties for every Kafka client (TLS, SASL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`.
    pub kafka_properties: std::collections::BTreeMap<String, String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            backend: "embedded".into(),
            partitions: 4,
            kafka_brokers: "127.0.0.1:9092".into(),
            schema_registry_url: String::new(),
            retention_hours: 168,
            replication_factor: 0,
            request_partitions: 0,
            produce_timeout_ms: 5_000,
            kafka_properties: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` or `scylla` (`TIDINGS_STORE`).
    pub backend: String,
    /// `TIDINGS_SCYLLA_NODES`, comma separated.
    pub scylla_nodes: String,
    /// How long an idempotency key holds its first message id, in seconds.
    pub idempotency_ttl_seconds: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "embedded".into(),
            scylla_nodes: "127.0.0.1:9042".into(),
            idempotency_ttl_seconds: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// `local` or `redis` (`TIDINGS_PRESENCE`).
    pub backend: String,
    /// `TIDINGS_REDIS_URL`.
    pub redis_url: String,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            backend: "local".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Most listed users, topics or tags in one send.
    pub max_listed_recipients: usize,
    /// Most concurrent WebSocket connections on this node.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_listed_recipients: 10_000,
            max_connections: 200_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Fair-share weights of high, normal and low (urgent is always read first).
    pub weight_high: u32,
    pub weight_normal: u32,
    pub weight_low: u32,
    /// Weight of urgent, used as its batch multiplier.
    pub weight_urgent: u32,
    /// Requests per weight unit in one scheduling round.
    pub batch: usize,
    /// Recipients expanded per page for topics, tags and broadcasts.
    pub page_size: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            weight_urgent: 8,
            weight_high: 4,
            weight_normal: 2,
            weight_low: 1,
            batch: 128,
            page_size: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Server ping period, seconds.
    pub ping_interval_seconds: u64,
    /// A connection silent for this long is closed, seconds.
    pub idle_timeout_seconds: u64,
    /// Frames queued per connection; a connection that falls this far behind is closed and
    /// catches up with `resume`.
    pub send_queue: usize,
    /// Bytes of frames queued per connection; past it the connection is closed the same way.
    pub send_queue_bytes: usize,
    /// A write to a client that does not complete in this long closes the connection, seconds.
    pub write_timeout_seconds: u64,
    /// Most connections of one user on this node; the oldest is closed for a new one.
    pub max_connections_per_user: usize,
    /// Message ids each connection remembers to show a message once (live and replayed).
    pub dedup_window: usize,
    /// Messages replayed per store page on `resume`.
    pub resume_page: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_seconds: 20,
            idle_timeout_seconds: 60,
            send_queue: 1024,
            send_queue_bytes: 1024 * 1024,
            write_timeout_seconds: 10,
            max_connections_per_user: 16,
            dedup_window: 1024,
            resume_page: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Per-request timeout, milliseconds.
    pub timeout_ms: u64,
    /// Concurrent webhook requests per lane (urgent, and the rest) of a delivery node.
    pub concurrency: usize,
    /// Concurrent webhook requests of one tenant per lane: a slow endpoint holds only its
    /// own share.
    pub per_tenant_concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout_ms: 5_000,
            concurrency: 64,
            per_tenant_concurrency: 8,
        }
    }
}

/// Bounds of tenant templates (see `tidings_core::template`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// VM instructions one render may execute.
    pub fuel: u64,
    /// Wall-clock limit of one render, milliseconds.
    pub timeout_ms: u64,
    /// Renders running at once (worker processes).
    pub workers: usize,
    /// Address space of each render worker, MiB.
    pub memory_mb: u64,
    /// Render in worker processes (`true`) or on this process's blocking threads, where
    /// memory is not bounded (`TIDINGS_TEMPLATE_SANDBOX`).
    pub sandbox: bool,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig {
            fuel: 200_000,
            timeout_ms: 2_000,
            workers: 2,
            memory_mb: 512,
            sandbox: true,
        }
    }
}

/// Outbound requests to tenant-chosen addresses (webhooks, later the channel providers).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Allow loopback, private, link-local and unique-local targets
    /// (`TIDINGS_EGRESS_ALLOW_PRIVATE`). Off in production; tests turn it on.
    pub allow_private: bool,
}

/// The HTTP server's own protections.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A client must send a request's headers within this long of connecting or of the
    /// previous response, milliseconds: slow senders and idle keep-alive connections close.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive whole within this long of its headers, milliseconds (a
    /// body that trickles in is answered 408 and its connection closed).
    pub request_timeout_ms: u64,
    /// Most open HTTP connections (WebSockets included); kept below the open-file limit.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 250_000,
        }
    }
}

/// User tokens.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Longest accepted token lifetime (`exp` - `iat`, or `exp` - now), seconds.
    pub max_token_lifetime_seconds: i64,
    /// How long a rotated key or secret keeps working next to the new one, seconds.
    pub rotation_overlap_seconds: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_token_lifetime_seconds: 7 * 86_400,
            rotation_overlap_seconds: 86_400,
        }
    }
}

/// Backoff policy of one channel.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicyConfig {
    /// Total attempts, the first included.
    pub max_attempts: u32,
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
}

impl Default for RetryPolicyConfig {
    fn default() -> Self {
        RetryPolicyConfig {
            max_attempts: 5,
            base_ms: 1_000,
            factor: 2.0,
            cap_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub webhook: RetryPolicyConfig,
    pub inapp: RetryPolicyConfig,
}

/// The environment overrides, key by key.
const ENV_KEYS: &[&str] = &[
    "TIDINGS_HTTP_ADDR",
    "TIDINGS_DATA_DIR",
    "TIDINGS_ADMIN_TOKEN",
    "TIDINGS_NODE_ID",
    "TIDINGS_TOPIC_PREFIX",
    "TIDINGS_BUS",
    "TIDINGS_BUS_PARTITIONS",
    "TIDINGS_KAFKA_BROKERS",
    "TIDINGS_BUS_PRODUCE_TIMEOUT_MS",
    "TIDINGS_SCHEMA_REGISTRY_URL",
    "TIDINGS_STORE",
    "TIDINGS_SCYLLA_NODES",
    "TIDINGS_PRESENCE",
    "TIDINGS_REDIS_URL",
    "TIDINGS_MAX_BODY_BYTES",
    "TIDINGS_WEBHOOK_TIMEOUT_MS",
    "TIDINGS_ROUTER_BATCH",
    "TIDINGS_RETRY_WEBHOOK_MAX_ATTEMPTS",
    "TIDINGS_RETRY_WEBHOOK_BASE_MS",
    "TIDINGS_RETRY_WEBHOOK_CAP_MS",
    "TIDINGS_EGRESS_ALLOW_PRIVATE",
    "TIDINGS_TEMPLATE_SANDBOX",
    "TIDINGS_TEMPLATE_TIMEOUT_MS",
    "TIDINGS_HTTP_HEADER_READ_TIMEOUT_MS",
    "TIDINGS_HTTP_MAX_CONNECTIONS",
    "TIDINGS_HTTP_REQUEST_TIMEOUT_MS",
    "TIDINGS_WS_MAX_CONNECTIONS_PER_USER",
    "TIDINGS_WS_WRITE_TIMEOUT_SECONDS",
];

impl Config {
    /// Parse a TOML document.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::invalid("config_invalid", e.to_string()))
    }

    /// Load `path` (or the defaults), apply the environment, validate.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::invalid(
                        "config_invalid",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                Config::from_toml(&text)?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        if cfg.node_id.is_empty() {
            cfg.node_id = default_node_id(&cfg.http_addr);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Apply `TIDINGS_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        for key in ENV_KEYS {
            let Some(v) = get(key) else { continue };
            let num = |v: &str| -> Result<u64> {
                v.parse().map_err(|_| {
                    Error::invalid("config_invalid", format!("{key}: `{v}` is not a number"))
                })
            };
            let flag = |v: &str| -> Result<bool> {
                match v {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(Error::invalid(
                        "config_invalid",
                        format!("{key}: `{v}` is not true or false"),
                    )),
                }
            };
            match *key {
                "TIDINGS_HTTP_ADDR" => self.http_addr = v,
                "TIDINGS_DATA_DIR" => self.data_dir = PathBuf::from(v),
                "TIDINGS_ADMIN_TOKEN" => self.admin_token = Secret(v),
                "TIDINGS_NODE_ID" => self.node_id = v,
                "TIDINGS_TOPIC_PREFIX" => self.topic_prefix = v,
                "TIDINGS_BUS" => self.bus.backend = v,
                "TIDINGS_BUS_PARTITIONS" => self.bus.partitions = num(&v)? as u32,
                "TIDINGS_KAFKA_BROKERS" => self.bus.kafka_brokers = v,
                "TIDINGS_BUS_PRODUCE_TIMEOUT_MS" => self.bus.produce_timeout_ms = num(&v)?,
                "TIDINGS_SCHEMA_REGISTRY_URL" => self.bus.schema_registry_url = v,
                "TIDINGS_STORE" => self.store.backend = v,
                "TIDINGS_SCYLLA_NODES" => self.store.scylla_nodes = v,
                "TIDINGS_PRESENCE" => self.presence.backend = v,
                "TIDINGS_REDIS_URL" => self.presence.redis_url = v,
                "TIDINGS_MAX_BODY_BYTES" => self.limits.max_body_bytes = num(&v)? as usize,
                "TIDINGS_WEBHOOK_TIMEOUT_MS" => self.webhook.timeout_ms = num(&v)?,
                "TIDINGS_ROUTER_BATCH" => self.router.batch = num(&v)? as usize,
                "TIDINGS_RETRY_WEBHOOK_MAX_ATTEMPTS" => {
                    self.retry.webhook.max_attempts = num(&v)? as u32
                }
                "TIDINGS_RETRY_WEBHOOK_BASE_MS" => self.retry.webhook.base_ms = num(&v)?,
                "TIDINGS_RETRY_WEBHOOK_CAP_MS" => self.retry.webhook.cap_ms = num(&v)?,
                "TIDINGS_EGRESS_ALLOW_PRIVATE" => self.egress.allow_private = flag(&v)?,
                "TIDINGS_TEMPLATE_SANDBOX" => self.templates.sandbox = flag(&v)?,
                "TIDINGS_TEMPLATE_TIMEOUT_MS" => self.templates.timeout_ms = num(&v)?,
                "TIDINGS_HTTP_HEADER_READ_TIMEOUT_MS" => {
                    self.http.header_read_timeout_ms = num(&v)?
                }
                "TIDINGS_HTTP_MAX_CONNECTIONS" => self.http.max_connections = num(&v)? as usize,
                "TIDINGS_HTTP_REQUEST_TIMEOUT_MS" => self.http.request_timeout_ms = num(&v)?,
                "TIDINGS_WS_MAX_CONNECTIONS_PER_USER" => {
                    self.websocket.max_connections_per_user = num(&v)? as usize
                }
                "TIDINGS_WS_WRITE_TIMEOUT_SECONDS" => {
                    self.websocket.write_timeout_seconds = num(&v)?
                }
                _ => unreachable!("every ENV_KEYS entry is matched"),
            }
        }
        Ok(())
    }

    /// Check values that parse but make no sense; messages name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("config_invalid", m));
        if self.http_addr.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!("http_addr: `{}` is not host:port", self.http_addr));
        }
        if !["embedded", "kafka"].contains(&self.bus.backend.as_str()) {
            return bad(format!(
                "bus.backend: `{}` (expected embedded or kafka)",
                self.bus.backend
            ));
        }
        if !["embedded", "scylla"].contains(&self.store.backend.as_str()) {
            return bad(format!(
                "store.backend: `{}` (expected embedded or scylla)",
                self.store.backend
            ));
        }
        if !["local", "redis"].contains(&self.presence.backend.as_str()) {
            return bad(format!(
                "presence.backend: `{}` (expected local or redis)",
                self.presence.backend
            ));
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return bad("bus.partitions: must be 1..=1024".into());
        }
        if self.bus.request_partitions > 1024 || self.bus.produce_timeout_ms == 0 {
            return bad(
                "bus: request_partitions must be 0..=1024, produce_timeout_ms positive".into(),
            );
        }
        if self.limits.max_body_bytes < 1024 {
            return bad("limits.max_body_bytes: must be at least 1024".into());
        }
        // a page (or a batch of audience posts) is numbered by one lease of sequences, which
        // must stay well below 50 ms of the sequencer's clock (crate::seq)
        if !(1..=ROUTER_MAX_RUN).contains(&self.router.batch)
            || !(1..=ROUTER_MAX_RUN).contains(&self.router.page_size)
        {
            return bad(format!(
                "router.batch and router.page_size: must be 1..={ROUTER_MAX_RUN}"
            ));
        }
        if [
            self.router.weight_high,
            self.router.weight_normal,
            self.router.weight_low,
        ]
        .contains(&0)
        {
            return bad("router.weight_*: must be positive".into());
        }
        let ws = &self.websocket;
        if ws.send_queue == 0
            || ws.send_queue_bytes < 1024
            || ws.max_connections_per_user == 0
            || ws.write_timeout_seconds == 0
            || ws.dedup_window == 0
        {
            return bad("websocket: send_queue, max_connections_per_user, write_timeout_seconds and dedup_window must be positive, send_queue_bytes at least 1024".into());
        }
        let t = &self.templates;
        if t.fuel == 0 || t.timeout_ms == 0 || t.workers == 0 || t.memory_mb < 64 {
            return bad(
                "templates: fuel, timeout_ms and workers must be positive, memory_mb at least 64"
                    .into(),
            );
        }
        if self.http.header_read_timeout_ms == 0
            || self.http.request_timeout_ms == 0
            || self.http.max_connections == 0
        {
            return bad("http: header_read_timeout_ms, request_timeout_ms and max_connections must be positive".into());
        }
        if self.webhook.per_tenant_concurrency == 0 || self.webhook.concurrency == 0 {
            return bad("webhook: concurrency and per_tenant_concurrency must be positive".into());
        }
        if self.auth.max_token_lifetime_seconds <= 0 || self.auth.rotation_overlap_seconds < 0 {
            return bad("auth: max_token_lifetime_seconds must be positive, rotation_overlap_seconds not negative".into());
        }
        for (name, p) in [
            ("retry.webhook", &self.retry.webhook),
            ("retry.inapp", &self.retry.inapp),
        ] {
            if p.max_attempts == 0 || p.factor < 1.0 || p.base_ms == 0 || p.cap_ms < p.base_ms {
                return bad(format!(
                    "{name}: need max_attempts >= 1, factor >= 1, base_ms > 0, cap_ms >= base_ms"
                ));
            }
        }
        Ok(())
    }

    /// The full name of a bus topic: `<prefix>.<name>`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{}", self.topic_prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_node_id_is_the_host_and_port() {
        let a = default_node_id("127.0.0.1:8080");
        let b = default_node_id("0.0.0.0:8081");
        assert!(a.ends_with("-8080") && b.ends_with("-8081"), "{a} {b}");
        assert_ne!(a, b, "two nodes on one host differ");
        assert_eq!(
            default_node_id("[::1]:9000").rsplit_once('-').unwrap().1,
            "9000"
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn router_runs_are_bounded() {
        let mut c = Config::default();
        c.router.page_size = ROUTER_MAX_RUN;
        c.validate().unwrap();
        c.router.page_size = ROUTER_MAX_RUN + 1;
        assert!(c.validate().is_err(), "one lease of sequences per page");
        c.router.page_size = 1000;
        c.router.batch = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::from_toml("http_adr = \"x\"").unwrap_err();
        assert_eq!(e.code, "config_invalid");
        assert!(e.message.contains("http_adr"), "{}", e.message);
    }

    #[test]
    fn env_overrides_and_validation_name_the_key() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "TIDINGS_HTTP_ADDR" => Some("127.0.0.1:9999".into()),
            "TIDINGS_BUS" => Some("carrier-pigeon".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:9999");
        let e = c.validate().unwrap_err();
        assert!(e.message.starts_with("bus.backend"), "{}", e.message);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config {
            admin_token: Secret("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
