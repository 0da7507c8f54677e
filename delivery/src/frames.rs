//! Server-to-client frames, JSON text.

use serde_json::json;
use tidings_core::model::{rfc3339, Delivery, InboxItem};

/// `{"type":"message", ...}` for a delivery pushed live.
pub fn message_from_delivery(d: &Delivery) -> String {
    json!({
        "type": "message", "id": d.message_id, "seq": d.seq, "title": d.title, "body": d.body,
        "data": d.data, "priority": d.priority, "category": d.category,
        "created_at": rfc3339(d.created_at_ms),
    })
    .to_string()
}

/// `{"type":"message", ...}` for an inbox row replayed on resume.
pub fn message_from_item(i: &InboxItem) -> String {
    i.frame()
}

/// `{"type":"error","code","message"}`
pub fn error(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

/// An inbox row as the HTTP API shows it.
pub fn inbox_item_json(i: &InboxItem) -> serde_json::Value {
    json!({
        "id": i.message_id, "seq": i.seq, "title": i.title, "body": i.body, "data": i.data,
        "priority": i.priority, "category": i.category, "status": i.status,
        "created_at": rfc3339(i.created_at_ms),
    })
}
