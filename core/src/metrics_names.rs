//! Every metric tidings exports, declared once. Names follow `tidings_<stage>_<what>_<unit>`;
//! labels are bounded (priority, channel, outcome, topic names, kind), never user or message ids.

/// Sends answered by ingest; labels `priority`, `outcome` (accepted, duplicate, rejected).
pub const INGEST_REQUESTS_TOTAL: &str = "tidings_ingest_requests_total";
/// Time to accept a send (validate, claim, durable append), seconds.
pub const INGEST_ACCEPT_SECONDS: &str = "tidings_ingest_accept_seconds";
/// Requests the router finished; label `priority`.
pub const ROUTER_REQUESTS_TOTAL: &str = "tidings_router_requests_total";
/// Deliveries the router emitted; label `channel`.
pub const ROUTER_DELIVERIES_TOTAL: &str = "tidings_router_deliveries_total";
/// Messages the router wrote once for their audiences (topics, tags, broadcast).
pub const ROUTER_AUDIENCE_POSTS_TOTAL: &str = "tidings_router_audience_posts_total";
/// Requests the router dead-lettered (render failed, tenant gone).
pub const ROUTER_DEAD_TOTAL: &str = "tidings_router_dead_total";
/// Deliveries attempted; labels `channel`, `outcome` (pushed, offline, delivered, retry, dead).
pub const DELIVERY_ATTEMPTS_TOTAL: &str = "tidings_delivery_attempts_total";
/// Ingest acceptance to push (or external success); labels `priority`, `channel`.
pub const DELIVERY_LATENCY_SECONDS: &str = "tidings_delivery_latency_seconds";
/// Connections an audience message was pushed to on this node.
pub const DELIVERY_AUDIENCE_PUSHES_TOTAL: &str = "tidings_delivery_audience_pushes_total";
/// Open WebSocket connections on this node.
pub const DELIVERY_CONNECTIONS: &str = "tidings_delivery_connections";
/// Connections closed because they fell behind.
pub const DELIVERY_SLOW_CLOSED_TOTAL: &str = "tidings_delivery_slow_closed_total";
/// Client frames received; label `type` (ack, read, resume, ping, invalid).
pub const DELIVERY_CLIENT_FRAMES_TOTAL: &str = "tidings_delivery_client_frames_total";
/// Deliveries scheduled for another attempt; label `channel`.
pub const RETRY_SCHEDULED_TOTAL: &str = "tidings_retry_scheduled_total";
/// Deliveries held by the retry stage until due.
pub const RETRY_PENDING: &str = "tidings_retry_pending";
/// Deliveries re-emitted when due; label `channel`.
pub const RETRY_REEMITTED_TOTAL: &str = "tidings_retry_reemitted_total";
/// Dead letters written; labels `channel`, `reason` (exhausted, permanent, invalid).
pub const DLQ_TOTAL: &str = "tidings_dlq_total";
/// Uncommitted records per consumed topic; label `topic` (the short name).
pub const BUS_QUEUE_DEPTH: &str = "tidings_bus_queue_depth";
/// Delivery events seen on `events`; label `kind`.
pub const EVENTS_TOTAL: &str = "tidings_events_total";
/// Counter: HTTP connections closed at accept because the connection cap was reached.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "tidings_http_connections_refused_total";
/// Records of a topic its consumer group has not committed yet; labels `topic` (the short
/// name) and `group`.
pub const BUS_CONSUMER_LAG: &str = "tidings_bus_consumer_lag";
/// Partitions a consumer gained or lost; label `kind` (assigned, revoked).
pub const BUS_REBALANCES_TOTAL: &str = "tidings_bus_rebalances_total";
/// Records the bus refused or timed out; label `topic` (the full name).
pub const BUS_PRODUCE_ERRORS_TOTAL: &str = "tidings_bus_produce_errors_total";
/// Records a stage could not use and sent to `dlq`; labels `stage`, `reason` (an error code).
pub const STAGE_DEAD_LETTERS_TOTAL: &str = "tidings_stage_dead_letters_total";
/// Records per batch a stage handled; label `stage`.
pub const STAGE_BATCH_RECORDS: &str = "tidings_stage_batch_records";
/// Time a stage took to handle one batch, retries included, seconds; label `stage`.
pub const STAGE_BATCH_SECONDS: &str = "tidings_stage_batch_seconds";
