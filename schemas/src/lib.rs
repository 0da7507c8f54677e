//! The Avro records tidings carries on its bus, and their Confluent wire format
//! (magic byte 0, 4-byte big-endian schema id, Avro binary body).
//!
//! - `avro/*.avsc`: the schemas; `manifest.json` pins their ids when no registry is used
//! - [`Codec`]: encode and decode [`NotificationRequest`], [`Delivery`], [`DeliveryEvent`]
//! - [`registry`]: a Confluent-compatible schema registry client, for records of outside
//!   producers and for `tidings migrate`
//!
//! The embedded bus carries exactly the bytes the Kafka bus will.

pub mod registry;

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value;
pub use apache_avro::Schema;
use apache_avro::{from_avro_datum, write_avro_datum_ref, GenericSingleObjectReader};
use serde::{Serialize, Serializer};
use std::sync::OnceLock;
use tidings_core::bus::OutRecord;
use tidings_core::model::*;
use tidings_core::{Error, Result};

pub const NOTIFICATION_REQUEST_AVSC: &str = include_str!("../avro/NotificationRequest.avsc");
/// The first version of `NotificationRequest` (without `template_version`): records written
/// with it (id 1) still decode, by Avro schema resolution.
pub const NOTIFICATION_REQUEST_V1_AVSC: &str = include_str!("../avro/NotificationRequest.v1.avsc");
pub const DELIVERY_AVSC: &str = include_str!("../avro/Delivery.avsc");
pub const DELIVERY_EVENT_AVSC: &str = include_str!("../avro/DeliveryEvent.avsc");
pub const AUDIENCE_RECORD_AVSC: &str = include_str!("../avro/AudienceRecord.avsc");
pub const MANIFEST: &str = include_str!("../manifest.json");

/// One schema with its pinned id and subject suffix.
pub struct SchemaInfo {
    pub name: &'static str,
    pub id: u32,
    /// Subject under the topic-name strategy, without the `<prefix>.` head.
    pub subject: &'static str,
    pub text: &'static str,
    pub schema: Schema,
    /// Earlier versions (id, writer schema) whose records decode into this one.
    pub older: Vec<(u32, Schema)>,
    /// A decoder of bodies written with this version, its schema resolved once.
    reader: GenericSingleObjectReader,
}

impl std::fmt::Debug for SchemaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaInfo")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// No header: the Confluent header is split off before a body reaches the reader.
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// The schemas, parsed once.
pub struct Codec {
    pub request: SchemaInfo,
    pub delivery: SchemaInfo,
    pub event: SchemaInfo,
    pub audience: SchemaInfo,
}

/// The process-wide codec with the ids of `manifest.json`.
pub fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let manifest: serde_json::Value =
            serde_json::from_str(MANIFEST).expect("manifest.json parses");
        let id_of = |name: &str| -> u32 {
            manifest["schemas"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name))
                .and_then(|s| s["id"].as_u64())
                .expect("every schema is in manifest.json") as u32
        };
        let info = |name: &'static str, subject: &'static str, text: &'static str| {
            let schema = Schema::parse_str(text).expect("bundled schemas parse");
            SchemaInfo {
                name,
                id: id_of(name),
                subject,
                text,
                reader: GenericSingleObjectReader::new_with_header_builder(
                    schema.clone(),
                    NoHeader,
                )
                .expect("bundled schemas resolve"),
                schema,
                older: Vec::new(),
            }
        };
        let mut request = info(
            "NotificationRequest",
            "ingest-value",
            NOTIFICATION_REQUEST_AVSC,
        );
        request.older.push((
            id_of("NotificationRequest.v1"),
            Schema::parse_str(NOTIFICATION_REQUEST_V1_AVSC).expect("bundled schemas parse"),
        ));
        Codec {
            request,
            delivery: info("Delivery", "deliveries-value", DELIVERY_AVSC),
            event: info("DeliveryEvent", "events-value", DELIVERY_EVENT_AVSC),
            audience: info("AudienceRecord", "audience-value", AUDIENCE_RECORD_AVSC),
        }
    })
}

fn bad(m: impl Into<String>) -> Error {
    Error::invalid("invalid_record", m)
}

/// Frame an Avro body in the Confluent wire format.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = header(schema_id, body.len());
    out.extend_from_slice(body);
    out
}

/// The Confluent header of `schema_id` (magic byte 0, the id big-endian), with room for a body
/// of `body_len` bytes after it.
fn header(schema_id: u32, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body_len);
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out
}

/// Split a Confluent-framed record into schema id and body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8])> {
    if bytes.len() < 5 {
        return Err(Error::invalid(
            "truncated_record",
            format!(
                "record of {} bytes is shorter than the 5-byte header",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 {
        return Err(Error::invalid(
            "bad_magic_byte",
            format!("magic byte {} (the Confluent wire format has 0)", bytes[0]),
        ));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

/// Encode a record in the Confluent wire format, straight from its fields (serde, guided by
/// the schema: no intermediate `Value` tree, no schema resolution per record).
fn encode<T: Serialize>(info: &SchemaInfo, record: &T) -> Vec<u8> {
    let mut out = header(info.id, 256);
    write_avro_datum_ref(&info.schema, record, &mut out)
        .expect("records built here match their schema");
    out
}

/// An Avro enum's symbol, by its index in the schema.
struct Symbol(u32, &'static str);

impl Serialize for Symbol {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_unit_variant("Symbol", self.0, self.1)
    }
}

fn prio(p: Priority) -> Symbol {
    Symbol(p.index() as u32, p.as_str())
}

/// `NotificationRequest.avsc`, field by field in its order.
#[derive(Serialize)]
struct RequestOut<'a> {
    message_id: Option<&'a str>,
    tenant_id: &'a str,
    to_users: &'a [String],
    to_topics: &'a [String],
    to_tags: &'a [String],
    broadcast: bool,
    template: Option<&'a str>,
    template_version: Option<i64>,
    data_json: String,
    locale: Option<&'a str>,
    title: Option<&'a str>,
    body: Option<&'a str>,
    priority: Symbol,
    category: Option<&'a str>,
    channels: Vec<&'static str>,
    idempotency_key: Option<&'a str>,
    ttl_seconds: Option<i64>,
    send_at_ms: Option<i64>,
    accepted_at_ms: i64,
}

/// `Delivery.avsc`, field by field in its order.
#[derive(Serialize)]
struct DeliveryOut<'a> {
    tenant_id: &'a str,
    message_id: &'a str,
    user_id: &'a str,
    channel: &'static str,
    seq: i64,
    priority: Symbol,
    category: Option<&'a str>,
    title: &'a str,
    body: &'a str,
    data_json: String,
    payload: Option<&'a str>,
    created_at_ms: i64,
    accepted_at_ms: i64,
    attempt: i32,
    due_at_ms: i64,
    last_error: Option<&'a str>,
}

/// `DeliveryEvent.avsc`, field by field in its order.
#[derive(Serialize)]
struct EventOut<'a> {
    tenant_id: &'a str,
    message_id: &'a str,
    user_id: &'a str,
    channel: &'static str,
    kind: Symbol,
    at_ms: i64,
    error: Option<&'a str>,
}

/// `AudienceRecord.avsc`, field by field in its order.
#[derive(Serialize)]
struct AudienceOut<'a> {
    tenant_id: &'a str,
    kind: Symbol,
    audiences: Vec<String>,
    since_seqs: Vec<i64>,
    user_id: &'a str,
    message_id: &'a str,
    seq: i64,
    priority: &'static str,
    frame: &'a str,
    accepted_at_ms: i64,
}

fn decode(info: &SchemaInfo, bytes: &[u8]) -> Result<Vec<(String, Value)>> {
    let (id, body) = unframe(bytes)?;
    if id == info.id {
        decode_body(info, None, body)
    } else if let Some((_, writer)) = info.older.iter().find(|(old, _)| *old == id) {
        // written with an earlier version: resolve it into the current one
        decode_body(info, Some(writer), body)
    } else {
        Err(Error::invalid(
            "unknown_schema_id",
            format!("schema id {id} is not {} ({})", info.id, info.name),
        ))
    }
}

/// Decode an Avro body written with `writer` (`None`: the reader's own schema) into the
/// fields of `info`'s schema, by Avro schema resolution.
fn decode_body(
    info: &SchemaInfo,
    writer: Option<&Schema>,
    mut body: &[u8],
) -> Result<Vec<(String, Value)>> {
    let undecodable = |m: String| Error::invalid("undecodable", m);
    let decoded = match writer {
        None => info.reader.read_value(&mut body),
        Some(w) => from_avro_datum(w, &mut body, Some(&info.schema)),
    };
    match decoded {
        Ok(Value::Record(fields)) => {
            if !body.is_empty() {
                return Err(undecodable(format!(
                    "{} trailing bytes after the record",
                    body.len()
                )));
            }
            Ok(fields)
        }
        Ok(_) => Err(undecodable("not a record".into())),
        Err(e) => Err(undecodable(format!("undecodable {}: {e}", info.name))),
    }
}

/// Typed access to a decoded record's fields.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn get(&self, name: &str) -> Result<&Value> {
        let v = self
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("field `{name}` missing")))?;
        Ok(match v {
            Value::Union(_, inner) => inner,
            other => other,
        })
    }
    fn str(&self, name: &str) -> Result<String> {
        match self.get(name)? {
            Value::String(x) | Value::Enum(_, x) => Ok(x.clone()),
            _ => Err(bad(format!("field `{name}` is not a string"))),
        }
    }
    fn opt_str(&self, name: &str) -> Result<Option<String>> {
        match self.get(name)? {
            Value::Null => Ok(None),
            Value::String(x) => Ok(Some(x.clone())),
            _ => Err(bad(format!("field `{name}` is not a string"))),
        }
    }
    fn long(&self, name: &str) -> Result<i64> {
        match self.get(name)? {
            Value::Long(x) => Ok(*x),
            Value::Int(x) => Ok(*x as i64),
            _ => Err(bad(format!("field `{name}` is not a number"))),
        }
    }
    fn opt_long(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name)? {
            Value::Null => Ok(None),
            _ => self.long(name).map(Some),
        }
    }
    fn strs(&self, name: &str) -> Result<Vec<String>> {
        match self.get(name)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(x) => Ok(x.clone()),
                    _ => Err(bad(format!("field `{name}` holds a non-string"))),
                })
                .collect(),
            _ => Err(bad(format!("field `{name}` is not an array"))),
        }
    }
    fn json(&self, name: &str) -> Result<serde_json::Value> {
        serde_json::from_str(&self.str(name)?)
            .map_err(|e| bad(format!("field `{name}` is not JSON: {e}")))
    }
    fn priority(&self) -> Result<Priority> {
        self.str("priority")?.parse().map_err(bad)
    }
    fn channel(&self) -> Result<Channel> {
        self.str("channel")?.parse().map_err(bad)
    }
}

fn request_of(f: Fields) -> Result<NotificationRequest> {
    Ok(NotificationRequest {
        message_id: f.opt_str("message_id")?.unwrap_or_default(),
        tenant_id: f.str("tenant_id")?,
        to: Recipients {
            users: f.strs("to_users")?,
            topics: f.strs("to_topics")?,
            tags: f.strs("to_tags")?,
            broadcast: matches!(f.get("broadcast")?, Value::Boolean(true)),
        },
        template: f.opt_str("template")?,
        template_version: f.opt_long("template_version")?.map(|v| v.max(0) as u64),
        data: f.json("data_json")?,
        locale: f.opt_str("locale")?,
        title: f.opt_str("title")?,
        body: f.opt_str("body")?,
        priority: f.priority()?,
        category: f.opt_str("category")?,
        channels: f
            .strs("channels")?
            .iter()
            .map(|c| c.parse().map_err(bad))
            .collect::<Result<_>>()?,
        idempotency_key: f.opt_str("idempotency_key")?,
        ttl_seconds: f.opt_long("ttl_seconds")?,
        send_at_ms: f.opt_long("send_at_ms")?,
        accepted_at_ms: f.long("accepted_at_ms")?,
    })
}

impl Codec {
    pub fn encode_request(&self, r: &NotificationRequest) -> Vec<u8> {
        encode(
            &self.request,
            &RequestOut {
                message_id: Some(r.message_id.as_str()).filter(|m| !m.is_empty()),
                tenant_id: &r.tenant_id,
                to_users: &r.to.users,
                to_topics: &r.to.topics,
                to_tags: &r.to.tags,
                broadcast: r.to.broadcast,
                template: r.template.as_deref(),
                template_version: r.template_version.map(|v| v as i64),
                data_json: r.data.to_string(),
                locale: r.locale.as_deref(),
                title: r.title.as_deref(),
                body: r.body.as_deref(),
                priority: prio(r.priority),
                category: r.category.as_deref(),
                channels: r.channels.iter().map(|c| c.as_str()).collect(),
                idempotency_key: r.idempotency_key.as_deref(),
                ttl_seconds: r.ttl_seconds,
                send_at_ms: r.send_at_ms,
                accepted_at_ms: r.accepted_at_ms,
            },
        )
    }

    pub fn decode_request(&self, bytes: &[u8]) -> Result<NotificationRequest> {
        request_of(Fields(decode(&self.request, bytes)?))
    }

    /// Decode a `NotificationRequest` body (without its 5-byte header) that a producer wrote
    /// with `writer`, another version of the schema (found in a registry): fields the writer
    /// lacks take their defaults, fields it added are skipped.
    pub fn decode_request_written_with(
        &self,
        writer: &Schema,
        body: &[u8],
    ) -> Result<NotificationRequest> {
        request_of(Fields(decode_body(&self.request, Some(writer), body)?))
    }

    pub fn encode_delivery(&self, d: &Delivery) -> Vec<u8> {
        encode(
            &self.delivery,
            &DeliveryOut {
                tenant_id: &d.tenant_id,
                message_id: &d.message_id,
                user_id: &d.user_id,
                channel: d.channel.as_str(),
                seq: d.seq as i64,
                priority: prio(d.priority),
                category: d.category.as_deref(),
                title: &d.title,
                body: &d.body,
                data_json: d.data.to_string(),
                payload: d.payload.as_deref(),
                created_at_ms: d.created_at_ms,
                accepted_at_ms: d.accepted_at_ms,
                attempt: d.attempt as i32,
                due_at_ms: d.due_at_ms,
                last_error: d.last_error.as_deref(),
            },
        )
    }

    pub fn decode_delivery(&self, bytes: &[u8]) -> Result<Delivery> {
        let f = Fields(decode(&self.delivery, bytes)?);
        Ok(Delivery {
            tenant_id: f.str("tenant_id")?,
            message_id: f.str("message_id")?,
            user_id: f.str("user_id")?,
            channel: f.channel()?,
            seq: f.long("seq")? as u64,
            priority: f.priority()?,
            category: f.opt_str("category")?,
            title: f.str("title")?,
            body: f.str("body")?,
            data: f.json("data_json")?,
            payload: f.opt_str("payload")?,
            created_at_ms: f.long("created_at_ms")?,
            accepted_at_ms: f.long("accepted_at_ms")?,
            attempt: f.long("attempt")? as u32,
            due_at_ms: f.long("due_at_ms")?,
            last_error: f.opt_str("last_error")?,
        })
    }

    pub fn encode_event(&self, e: &DeliveryEvent) -> Vec<u8> {
        let kind = match e.kind {
            EventKind::Delivered => 0,
            EventKind::Read => 1,
            EventKind::Failed => 2,
            EventKind::Retrying => 3,
        };
        encode(
            &self.event,
            &EventOut {
                tenant_id: &e.tenant_id,
                message_id: &e.message_id,
                user_id: &e.user_id,
                channel: e.channel.as_str(),
                kind: Symbol(kind, e.kind.as_str()),
                at_ms: e.at_ms,
                error: e.error.as_deref(),
            },
        )
    }

    pub fn encode_audience(&self, r: &AudienceRecord) -> Vec<u8> {
        let record = match r {
            AudienceRecord::Push {
                tenant_id,
                message_id,
                audiences,
                seq,
                priority,
                frame,
                accepted_at_ms,
            } => AudienceOut {
                tenant_id,
                kind: Symbol(0, "push"),
                audiences: audiences.iter().map(Audience::key).collect(),
                since_seqs: Vec::new(),
                user_id: "",
                message_id,
                seq: *seq as i64,
                priority: priority.as_str(),
                frame,
                accepted_at_ms: *accepted_at_ms,
            },
            AudienceRecord::Members {
                tenant_id,
                user_id,
                memberships,
            } => AudienceOut {
                tenant_id,
                kind: Symbol(1, "members"),
                audiences: memberships.iter().map(|m| m.audience.key()).collect(),
                since_seqs: memberships.iter().map(|m| m.since_seq as i64).collect(),
                user_id,
                message_id: "",
                seq: 0,
                priority: "normal",
                frame: "",
                accepted_at_ms: 0,
            },
        };
        encode(&self.audience, &record)
    }

    /// `r` as a record of the audience topic `topic`, keyed by its tenant: a tenant's
    /// membership changes and pushes are read in the order they were appended.
    pub fn audience_record(&self, topic: String, r: &AudienceRecord) -> OutRecord {
        OutRecord::new(
            topic,
            r.tenant_id().as_bytes().to_vec(),
            self.encode_audience(r),
        )
    }

    pub fn decode_audience(&self, bytes: &[u8]) -> Result<AudienceRecord> {
        let f = Fields(decode(&self.audience, bytes)?);
        let audiences = f
            .strs("audiences")?
            .iter()
            .map(|k| Audience::from_key(k).ok_or_else(|| bad(format!("audience `{k}`"))))
            .collect::<Result<Vec<_>>>()?;
        match f.str("kind")?.as_str() {
            "push" => Ok(AudienceRecord::Push {
                tenant_id: f.str("tenant_id")?,
                message_id: f.str("message_id")?,
                audiences,
                seq: f.long("seq")?.max(0) as u64,
                priority: f.priority()?,
                frame: f.str("frame")?,
                accepted_at_ms: f.long("accepted_at_ms")?,
            }),
            "members" => {
                let since: Vec<u64> = match f.get("since_seqs")? {
                    Value::Array(v) => v
                        .iter()
                        .map(|x| match x {
                            Value::Long(n) => Ok((*n).max(0) as u64),
                            _ => Err(bad("since_seqs holds a non-number")),
                        })
                        .collect::<Result<_>>()?,
                    _ => return Err(bad("since_seqs is not an array")),
                };
                if since.len() != audiences.len() {
                    return Err(bad("since_seqs and audiences differ in length"));
                }
                Ok(AudienceRecord::Members {
                    tenant_id: f.str("tenant_id")?,
                    user_id: f.str("user_id")?,
                    memberships: audiences
                        .into_iter()
                        .zip(since)
                        .map(|(audience, since_seq)| Membership {
                            audience,
                            since_seq,
                        })
                        .collect(),
                })
            }
            other => Err(bad(format!("audience record kind `{other}`"))),
        }
    }

    pub fn decode_event(&self, bytes: &[u8]) -> Result<DeliveryEvent> {
        let f = Fields(decode(&self.event, bytes)?);
        let kind = match f.str("kind")?.as_str() {
            "delivered" => EventKind::Delivered,
            "read" => EventKind::Read,
            "failed" => EventKind::Failed,
            "retrying" => EventKind::Retrying,
            other => return Err(bad(format!("unknown event kind `{other}`"))),
        };
        Ok(DeliveryEvent {
            tenant_id: f.str("tenant_id")?,
            message_id: f.str("message_id")?,
            user_id: f.str("user_id")?,
            channel: f.channel()?,
            kind,
            at_ms: f.long("at_ms")?,
            error: f.opt_str("error")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::to_avro_datum;
    use proptest::prelude::*;

    // records as apache-avro's `Value` trees: the library's own, validated encoding
    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    fn opt_s(v: &Option<String>) -> Value {
        match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(x) => Value::Union(1, Box::new(s(x))),
        }
    }

    fn opt_l(v: Option<i64>) -> Value {
        match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(x) => Value::Union(1, Box::new(Value::Long(x))),
        }
    }

    fn arr(v: &[String]) -> Value {
        Value::Array(v.iter().map(|x| s(x)).collect())
    }

    fn prio_value(p: Priority) -> Value {
        Value::Enum(p.index() as u32, p.as_str().to_string())
    }

    fn rec(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// A request as a `Value` of the current schema.
    fn request_value(r: &NotificationRequest) -> Value {
        let channels: Vec<String> = r.channels.iter().map(|c| c.as_str().to_string()).collect();
        rec(vec![
            (
                "message_id",
                opt_s(&Some(r.message_id.clone()).filter(|m| !m.is_empty())),
            ),
            ("tenant_id", s(&r.tenant_id)),
            ("to_users", arr(&r.to.users)),
            ("to_topics", arr(&r.to.topics)),
            ("to_tags", arr(&r.to.tags)),
            ("broadcast", Value::Boolean(r.to.broadcast)),
            ("template", opt_s(&r.template)),
            (
                "template_version",
                opt_l(r.template_version.map(|v| v as i64)),
            ),
            ("data_json", s(&r.data.to_string())),
            ("locale", opt_s(&r.locale)),
            ("title", opt_s(&r.title)),
            ("body", opt_s(&r.body)),
            ("priority", prio_value(r.priority)),
            ("category", opt_s(&r.category)),
            ("channels", arr(&channels)),
            ("idempotency_key", opt_s(&r.idempotency_key)),
            ("ttl_seconds", opt_l(r.ttl_seconds)),
            ("send_at_ms", opt_l(r.send_at_ms)),
            ("accepted_at_ms", Value::Long(r.accepted_at_ms)),
        ])
    }

    fn any_priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.to_vec())
    }

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop::option::of(".{0,20}")
    }

    prop_compose! {
        fn any_request()(
            id in "[a-f0-9-]{1,36}", tenant in "[a-z0-9]{1,12}",
            users in prop::collection::vec("[a-z0-9]{1,8}", 0..5),
            topics in prop::collection::vec(".{0,8}", 0..3),
            broadcast in any::<bool>(), template in opt_string(), title in opt_string(),
            body in opt_string(), priority in any_priority(), key in opt_string(),
            ttl in prop::option::of(any::<i64>()), send_at in prop::option::of(any::<i64>()),
            accepted in any::<i64>(), n in any::<i32>(), webhook in any::<bool>(),
            version in prop::option::of(0u64..1 << 40),
        ) -> NotificationRequest {
            NotificationRequest {
                message_id: id, tenant_id: tenant,
                to: Recipients { users, topics, tags: vec![], broadcast },
                template, template_version: version, data: serde_json::json!({"n": n}), locale: None,
                title, body, priority,
                category: Some("c".into()),
                channels: if webhook { vec![Channel::Inapp, Channel::Webhook] } else { vec![] },
                idempotency_key: key, ttl_seconds: ttl, send_at_ms: send_at, accepted_at_ms: accepted,
            }
        }
    }

    proptest! {
        /// The serde encoding writes the same bytes as the library's validated `Value` path.
        #[test]
        fn request_bytes_match_the_value_encoding(r in any_request()) {
            let c = codec();
            let ours = c.encode_request(&r);
            let theirs = to_avro_datum(&c.request.schema, request_value(&r)).unwrap();
            prop_assert_eq!(&ours[5..], &theirs[..]);
        }

        #[test]
        fn request_round_trips(r in any_request()) {
            let c = codec();
            let bytes = c.encode_request(&r);
            prop_assert_eq!(bytes[0], 0);
            prop_assert_eq!(c.decode_request(&bytes).unwrap(), r);
        }

        #[test]
        fn delivery_round_trips(
            user in ".{0,10}", seq in 0u64..u64::MAX / 2, p in any_priority(),
            title in ".{0,30}", payload in opt_string(), attempt in 0u32..100, err in opt_string(),
        ) {
            let d = Delivery {
                tenant_id: "t".into(), message_id: "m".into(), user_id: user, channel: Channel::Webhook,
                seq, priority: p, category: None, title, body: "b".into(),
                data: serde_json::json!({"a": [1, 2]}), payload, created_at_ms: 1, accepted_at_ms: 2,
                attempt, due_at_ms: 3, last_error: err,
            };
            let c = codec();
            prop_assert_eq!(c.decode_delivery(&c.encode_delivery(&d)).unwrap(), d);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let c = codec();
            let _ = c.decode_request(&bytes);
            let _ = c.decode_delivery(&bytes);
            let _ = c.decode_event(&bytes);
        }
    }

    /// A record written with version 1 of the schema (before `template_version`) decodes,
    /// with the new field at its default.
    #[test]
    fn audience_records_round_trip() {
        let c = codec();
        for r in [
            AudienceRecord::Push {
                tenant_id: "t".into(),
                message_id: "m".into(),
                audiences: vec![Audience::Topic("a:b".into()), Audience::Everyone],
                seq: 42,
                priority: Priority::Urgent,
                frame: "{}".into(),
                accepted_at_ms: 7,
            },
            AudienceRecord::Members {
                tenant_id: "t".into(),
                user_id: "u".into(),
                memberships: vec![
                    Membership {
                        audience: Audience::Tag("vip".into()),
                        since_seq: 3,
                    },
                    Membership {
                        audience: Audience::Everyone,
                        since_seq: 1,
                    },
                ],
            },
        ] {
            assert_eq!(c.decode_audience(&c.encode_audience(&r)).unwrap(), r);
        }
    }

    #[test]
    fn first_version_records_still_decode() {
        let c = codec();
        let v1 = Schema::parse_str(NOTIFICATION_REQUEST_V1_AVSC).unwrap();
        let fields = vec![
            ("message_id", opt_s(&Some("m1".into()))),
            ("tenant_id", s("t")),
            ("to_users", arr(&["u".into()])),
            ("to_topics", arr(&[])),
            ("to_tags", arr(&[])),
            ("broadcast", Value::Boolean(false)),
            ("template", opt_s(&Some("k".into()))),
            ("data_json", s("{}")),
            ("locale", opt_s(&None)),
            ("title", opt_s(&None)),
            ("body", opt_s(&None)),
            ("priority", prio_value(Priority::Low)),
            ("category", opt_s(&None)),
            ("channels", arr(&["inapp".into()])),
            ("idempotency_key", opt_s(&None)),
            ("ttl_seconds", opt_l(None)),
            ("send_at_ms", opt_l(None)),
            ("accepted_at_ms", Value::Long(5)),
        ];
        let body = to_avro_datum(&v1, rec(fields)).unwrap();
        let r = c.decode_request(&frame(1, &body)).unwrap();
        assert_eq!(r.message_id, "m1");
        assert_eq!(r.template.as_deref(), Some("k"));
        assert_eq!(r.template_version, None);
        assert_eq!(r.priority, Priority::Low);
        // and the current version carries it
        let mut r2 = r.clone();
        r2.template_version = Some(3);
        let bytes = c.encode_request(&r2);
        assert_eq!(&bytes[1..5], &4u32.to_be_bytes());
        assert_eq!(c.decode_request(&bytes).unwrap(), r2);
    }

    #[test]
    fn event_round_trips_and_framing_is_checked() {
        let c = codec();
        let e = DeliveryEvent {
            tenant_id: "t".into(),
            message_id: "m".into(),
            user_id: "u".into(),
            channel: Channel::Inapp,
            kind: EventKind::Read,
            at_ms: 9,
            error: None,
        };
        let bytes = c.encode_event(&e);
        assert_eq!(&bytes[1..5], &3u32.to_be_bytes());
        assert_eq!(c.decode_event(&bytes).unwrap(), e);
        assert_eq!(
            c.decode_delivery(&bytes).unwrap_err().code,
            "unknown_schema_id"
        );
        assert_eq!(
            unframe(&[1, 0, 0, 0, 1]).unwrap_err().code,
            "bad_magic_byte"
        );
        assert_eq!(unframe(&[0, 0]).unwrap_err().code, "truncated_record");
        assert_eq!(
            c.decode_delivery(&frame(2, &[0xff; 3])).unwrap_err().code,
            "undecodable"
        );
    }
}
