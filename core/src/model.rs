//! Domain types shared by every stage: what a tenant sends, what the router writes, what the
//! delivery stage pushes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The four request lanes. `Urgent` is always read first by the router.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Urgent,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority `{s}` (expected urgent, high, normal or low)"))
    }
}

/// Delivery channels this build can deliver on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The user's WebSocket connections and inbox.
    Inapp,
    /// The tenant's signed HTTP endpoint.
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Inapp, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Inapp => "inapp",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel `{s}` (expected inapp or webhook)"))
    }
}

/// A tenant: one business system that sends notifications to its own users.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// SHA-256 of the API key, hex; the key itself is shown once, at creation.
    pub api_key_hash: String,
    /// HS256 secret the tenant signs its users' JWTs with.
    pub jwt_secret: String,
    /// Where webhook deliveries go, if the tenant has set it.
    pub webhook_url: Option<String>,
    /// Secret for the webhook HMAC-SHA256 signature.
    pub webhook_secret: String,
    pub created_at_ms: i64,
    /// The credentials replaced by the last rotation, valid until `previous_until_ms`.
    #[serde(default)]
    pub previous: Option<PreviousCredentials>,
    /// A disabled tenant's keys and tokens are refused; its data is kept.
    #[serde(default)]
    pub disabled: bool,
}

/// What a rotation replaced, kept working for an overlap window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreviousCredentials {
    pub api_key_hash: String,
    pub jwt_secret: String,
    pub webhook_secret: String,
    pub until_ms: i64,
}

impl Tenant {
    /// The replaced credentials, if still within their overlap window at `now_ms`.
    pub fn previous_at(&self, now_ms: i64) -> Option<&PreviousCredentials> {
        self.previous.as_ref().filter(|p| now_ms < p.until_ms)
    }
}

/// Who a request goes to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipients {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub broadcast: bool,
}

impl Recipients {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && !self.has_audience()
    }

    /// Whether it names topics, tags or the whole tenant ([`Audience::of`] is not empty).
    pub fn has_audience(&self) -> bool {
        !self.topics.is_empty() || !self.tags.is_empty() || self.broadcast
    }
}

/// A validated, accepted send, as ingest appends it to `requests.<priority>`
/// (the `NotificationRequest` Avro record).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRequest {
    pub message_id: String,
    pub tenant_id: String,
    pub to: Recipients,
    pub template: Option<String>,
    /// The template version ingest validated; the router renders exactly this one.
    pub template_version: Option<u64>,
    /// Template variables (JSON object), or extra data shown with an inline message.
    pub data: serde_json::Value,
    pub locale: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub priority: Priority,
    pub category: Option<String>,
    pub channels: Vec<Channel>,
    pub idempotency_key: Option<String>,
    pub ttl_seconds: Option<i64>,
    pub send_at_ms: Option<i64>,
    /// When ingest accepted it; the start of the end-to-end latency.
    pub accepted_at_ms: i64,
}

/// One (recipient, channel) unit of work on `deliveries.<channel>` (the `Delivery` Avro record).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub tenant_id: String,
    pub message_id: String,
    pub user_id: String,
    pub channel: Channel,
    /// The inbox sequence of this message for this user.
    pub seq: u64,
    pub priority: Priority,
    pub category: Option<String>,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    /// Channel-specific rendered payload (the webhook JSON body).
    pub payload: Option<String>,
    pub created_at_ms: i64,
    pub accepted_at_ms: i64,
    /// 0 for the first try.
    pub attempt: u32,
    /// When a retried delivery is due again (unix ms); 0 when due now.
    pub due_at_ms: i64,
    pub last_error: Option<String>,
}

/// What happened to a delivery, published on `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Delivered,
    Read,
    Failed,
    Retrying,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Read => "read",
            EventKind::Failed => "failed",
            EventKind::Retrying => "retrying",
        }
    }
}

/// The `DeliveryEvent` Avro record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryEvent {
    pub tenant_id: String,
    pub message_id: String,
    pub user_id: String,
    pub channel: Channel,
    pub kind: EventKind,
    pub at_ms: i64,
    pub error: Option<String>,
}

/// One audience a user is in now, and the first sequence they see in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub audience: Audience,
    pub since_seq: u64,
}

/// A record of `<prefix>.audience` (the `AudienceRecord` Avro record), read whole by every
/// delivery node.
#[derive(Debug, Clone, PartialEq)]
pub enum AudienceRecord {
    /// A message posted to audiences: push `frame` once to each local connection of a user who
    /// is a member of one of them from `seq` or earlier.
    Push {
        tenant_id: String,
        message_id: String,
        audiences: Vec<Audience>,
        seq: u64,
        priority: Priority,
        /// The WebSocket `message` frame, encoded once for every connection.
        frame: String,
        accepted_at_ms: i64,
    },
    /// The audiences a user is in now, each with the first sequence they see in it (after a
    /// subscribe, an unsubscribe or a change of tags).
    Members {
        tenant_id: String,
        user_id: String,
        memberships: Vec<Membership>,
    },
}

impl AudienceRecord {
    pub fn tenant_id(&self) -> &str {
        match self {
            AudienceRecord::Push { tenant_id, .. } | AudienceRecord::Members { tenant_id, .. } => {
                tenant_id
            }
        }
    }
}

/// A message as the router stored it (what `GET /v1/messages/{id}` shows).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageRecord {
    pub tenant_id: String,
    pub message_id: String,
    pub priority: Priority,
    pub category: Option<String>,
    pub template: Option<String>,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub channels: Vec<Channel>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// Why the router could not route it (`"<code>: <message>"`), after ingest accepted it;
    /// the request is then in the tenant's dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Per-user state of an inbox row. Moves forward only: unread, delivered, read; deleted hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    Unread,
    Delivered,
    Read,
    Deleted,
}

impl InboxStatus {
    pub fn is_unread(self) -> bool {
        matches!(self, InboxStatus::Unread | InboxStatus::Delivered)
    }
}

/// One row of a user's inbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboxItem {
    #[serde(rename = "id")]
    pub message_id: String,
    pub seq: u64,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub priority: Priority,
    pub category: Option<String>,
    pub status: InboxStatus,
    pub created_at_ms: i64,
}

impl InboxItem {
    /// The WebSocket `{"type":"message", ...}` frame of this item (DESIGN.md, frames).
    pub fn frame(&self) -> String {
        serde_json::json!({
            "type": "message", "id": self.message_id, "seq": self.seq, "title": self.title,
            "body": self.body, "data": self.data, "priority": self.priority,
            "category": self.category, "created_at": rfc3339(self.created_at_ms),
        })
        .to_string()
    }
}

/// State of one (recipient, channel) delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Retrying,
    Delivered,
    Read,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryStatus {
    pub user_id: String,
    pub channel: Channel,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

impl DeliveryStatus {
    /// The in-app status of `user` after an ack or a read, stamped now.
    pub fn inapp(user: &str, state: DeliveryState) -> Self {
        DeliveryStatus {
            user_id: user.to_string(),
            channel: Channel::Inapp,
            state,
            attempts: 1,
            last_error: None,
            updated_at_ms: now_ms(),
        }
    }

    /// The status of `d` (its user and channel), stamped now.
    pub fn of(
        d: &Delivery,
        state: DeliveryState,
        attempts: u32,
        last_error: Option<String>,
    ) -> Self {
        DeliveryStatus {
            user_id: d.user_id.clone(),
            channel: d.channel,
            state,
            attempts,
            last_error,
            updated_at_ms: now_ms(),
        }
    }
}

/// A dead delivery, kept for listing and replay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqEntry {
    pub id: String,
    /// What `delivery` holds: a delivery (the default) or a whole request the router could
    /// not route.
    #[serde(default)]
    pub kind: DlqKind,
    pub tenant_id: String,
    pub message_id: String,
    pub user_id: String,
    pub channel: Channel,
    pub attempts: u32,
    pub error: String,
    pub failed_at_ms: i64,
    /// The delivery as it was, encoded in the Confluent wire format, replayed as is.
    #[serde(with = "hex_bytes")]
    pub delivery: Vec<u8>,
}

/// What a dead letter is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqKind {
    /// One delivery to one user on one channel.
    #[default]
    Delivery,
    /// A request the router could not route (`delivery` holds the encoded request).
    Request,
}

impl DlqEntry {
    /// The id of the dead letter of a request the router could not route.
    pub fn id_for_request(message_id: &str) -> String {
        format!("{message_id}.request")
    }

    /// The id of the dead letter of `(message, user, channel)`: derived, not random, so a
    /// failure recorded twice (a redelivered record) is one entry. Ids of one message sort
    /// together, and message ids sort by acceptance time.
    pub fn id_for(message_id: &str, user_id: &str, channel: Channel) -> String {
        use sha2::Digest;
        let user = hex::encode(&sha2::Sha256::digest(user_id.as_bytes())[..8]);
        format!("{message_id}.{}.{user}", channel.as_str())
    }
}

/// A user as its tenant described it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserProfile {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// A stored template: sources per channel, optionally per locale.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Assigned by the store at each save (1, 2, ...); a send renders the version it was
    /// validated against, whatever is saved after it.
    #[serde(default)]
    pub version: u64,
    /// Variables a send must provide.
    #[serde(default)]
    pub required: Vec<String>,
    /// In-app variant: title and body.
    pub inapp: InappTemplate,
    /// Webhook variant: a JSON body template (rendered, then parsed as JSON).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Per-locale overrides of the in-app variant, keyed by locale (`en`, `zh-CN`).
    #[serde(default)]
    pub locales: std::collections::BTreeMap<String, InappTemplate>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InappTemplate {
    pub title: String,
    pub body: String,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text of a unix-ms timestamp.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A new time-ordered message id (UUIDv7).
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A group of a tenant's users a message can go to as a whole: written once, read by each
/// member (see `store`, "Audiences").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Audience {
    /// The subscribers of a topic.
    Topic(String),
    /// The users carrying a tag.
    Tag(String),
    /// Every known user of the tenant.
    Everyone,
}

impl Audience {
    /// The audiences a request names (topics, then tags, then the whole tenant).
    pub fn of(to: &Recipients) -> Vec<Audience> {
        let mut v: Vec<Audience> = to.topics.iter().cloned().map(Audience::Topic).collect();
        v.extend(to.tags.iter().cloned().map(Audience::Tag));
        if to.broadcast {
            v.push(Audience::Everyone);
        }
        v.sort();
        v.dedup();
        v
    }

    /// `topic`, `tag` or `broadcast`.
    pub fn kind(&self) -> &'static str {
        match self {
            Audience::Topic(_) => "topic",
            Audience::Tag(_) => "tag",
            Audience::Everyone => "broadcast",
        }
    }

    /// The topic or tag; empty for the whole tenant.
    pub fn name(&self) -> &str {
        match self {
            Audience::Topic(n) | Audience::Tag(n) => n,
            Audience::Everyone => "",
        }
    }

    /// A compact key, unique per audience of a tenant: `t:<topic>`, `g:<tag>`, `*`.
    pub fn key(&self) -> String {
        match self {
            Audience::Topic(n) => format!("t:{n}"),
            Audience::Tag(n) => format!("g:{n}"),
            Audience::Everyone => "*".to_string(),
        }
    }

    /// The audience of a [`Audience::key`].
    pub fn from_key(key: &str) -> Option<Audience> {
        if key == "*" {
            return Some(Audience::Everyone);
        }
        let (kind, name) = key.split_once(':')?;
        match kind {
            "t" => Some(Audience::Topic(name.to_string())),
            "g" => Some(Audience::Tag(name.to_string())),
            _ => None,
        }
    }
}
