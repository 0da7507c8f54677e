//! Routing a batch of requests: render, write the message, and deliver it.
//!
//! - In-app to audiences (topics, tags, the whole tenant): the message is written once for its
//!   audiences ([`Messages::post_audience`](tidings_core::store::Messages::post_audience)) and pushed
//!   with one record on `<prefix>.audience`, whatever the audience's size; users the request
//!   lists by name get rows and deliveries of their own.
//! - Everything else (listed users, and the external channels of audience messages): expand
//!   recipients page by page, write inbox rows and delivery statuses, and emit one delivery per
//!   (recipient, channel).
//!
//! Every write is idempotent (messages by id, inbox rows by (user, message id)), so a batch
//! that is routed again after a crash changes nothing a user can see twice. Deliveries are
//! emitted again in that case; the client side absorbs them by message id.

use futures::future::try_join_all;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tidings_core::bus::{OutRecord, Record};
use tidings_core::metrics_names::{
    DLQ_TOTAL, ROUTER_AUDIENCE_POSTS_TOTAL, ROUTER_DEAD_TOTAL, ROUTER_DELIVERIES_TOTAL,
    ROUTER_REQUESTS_TOTAL,
};
use tidings_core::model::*;
use tidings_core::store::{AudiencePost, NewInboxRow, Page};
use tidings_core::{template, Context, Error, Result};
use tokio::task::JoinSet;

/// A decoded, rendered request.
#[derive(Clone)]
struct Prepared {
    req: NotificationRequest,
    title: String,
    body: String,
    payload: Option<String>,
}

impl Prepared {
    /// The message as an inbox item (its sequence is for the writer to set).
    fn item(&self) -> InboxItem {
        InboxItem {
            message_id: self.req.message_id.clone(),
            seq: 0,
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.req.data.clone(),
            priority: self.req.priority,
            category: self.req.category.clone(),
            status: InboxStatus::Unread,
            created_at_ms: self.req.accepted_at_ms,
        }
    }

    /// The first attempt of its delivery to `user` on `channel`.
    fn delivery(&self, user: &str, channel: Channel, seq: u64) -> Delivery {
        Delivery {
            tenant_id: self.req.tenant_id.clone(),
            message_id: self.req.message_id.clone(),
            user_id: user.to_string(),
            channel,
            seq,
            priority: self.req.priority,
            category: self.req.category.clone(),
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.req.data.clone(),
            payload: if channel == Channel::Webhook {
                self.payload.clone()
            } else {
                None
            },
            created_at_ms: self.req.accepted_at_ms,
            accepted_at_ms: self.req.accepted_at_ms,
            attempt: 0,
            due_at_ms: 0,
            last_error: None,
        }
    }

    /// `user`'s status on `channel` before the first attempt.
    fn pending(user: &str, channel: Channel, now: i64) -> DeliveryStatus {
        DeliveryStatus {
            user_id: user.to_string(),
            channel,
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: None,
            updated_at_ms: now,
        }
    }
}

async fn prepare(ctx: &Context, req: NotificationRequest) -> Result<Prepared> {
    tidings_core::fail_point_error("router.prepare")?;
    if ctx
        .hot
        .tenant(ctx.store.as_ref(), &req.tenant_id)
        .await?
        .is_none()
    {
        return Err(Error::invalid(
            "tenant_not_found",
            format!("tenant `{}` is gone", req.tenant_id),
        ));
    }
    let (title, body, payload) = match &req.template {
        Some(key) => {
            // the version ingest validated (requests from before versions: the latest)
            let tpl = match req.template_version {
                Some(v) => {
                    ctx.hot
                        .template_version(ctx.store.as_ref(), &req.tenant_id, key, v)
                        .await?
                }
                None => {
                    ctx.hot
                        .template(ctx.store.as_ref(), &req.tenant_id, key)
                        .await?
                }
            }
            .ok_or_else(|| {
                Error::invalid("template_not_found", format!("template `{key}` is gone"))
            })?;
            let r = ctx
                .route_templates
                .render(
                    &req.tenant_id,
                    &tpl,
                    &req.data,
                    req.locale.as_deref(),
                    template::Mode::Strict,
                )
                .await?;
            (r.title, r.body, r.webhook.map(|w| w.to_string()))
        }
        None => (
            req.title.clone().unwrap_or_default(),
            req.body.clone().unwrap_or_default(),
            None,
        ),
    };
    Ok(Prepared {
        req,
        title,
        body,
        payload,
    })
}

/// A request that was accepted but cannot be routed: its message record says `failed` with
/// the reason (`GET /v1/messages/{id}`), and the request goes to the tenant's dead-letter
/// queue, from where it can be replayed.
pub async fn record_failure(
    ctx: &Context,
    req: &NotificationRequest,
    record: &Record,
    e: &Error,
) -> Result<()> {
    let reason = format!("{}: {}", e.code, e.message);
    let message = MessageRecord {
        tenant_id: req.tenant_id.clone(),
        message_id: req.message_id.clone(),
        priority: req.priority,
        category: req.category.clone(),
        template: req.template.clone(),
        title: req.title.clone().unwrap_or_default(),
        body: req.body.clone().unwrap_or_default(),
        data: req.data.clone(),
        channels: req.channels.clone(),
        created_at_ms: req.accepted_at_ms,
        expires_at_ms: None,
        failure: Some(reason.clone()),
    };
    let entry = DlqEntry {
        id: DlqEntry::id_for_request(&req.message_id),
        kind: DlqKind::Request,
        tenant_id: req.tenant_id.clone(),
        message_id: req.message_id.clone(),
        user_id: String::new(),
        channel: req.channels.first().copied().unwrap_or(Channel::Inapp),
        attempts: 1,
        error: reason,
        failed_at_ms: now_ms(),
        delivery: record.value.clone(),
    };
    // the entry first: once the message reads `failed`, its dead letter is there
    ctx.store.dlq_put(&entry).await?;
    ctx.store.put_messages(std::slice::from_ref(&message)).await
}

/// A group of recipients read from the store page by page.
enum Source<'a> {
    Topic(&'a str),
    Tag(&'a str),
    Everyone,
}

impl Source<'_> {
    async fn page(
        &self,
        ctx: &Context,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>> {
        match self {
            Source::Topic(topic) => ctx.store.subscribers(tenant, topic, after, limit).await,
            Source::Tag(tag) => ctx.store.users_tagged(tenant, tag, after, limit).await,
            Source::Everyone => ctx.store.users(tenant, after, limit).await,
        }
    }
}

/// An append of deliveries that is under way: its records have their place in their
/// partitions (see `tidings_core::bus`), the bus has not acknowledged them yet.
pub type PendingAck = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Route every request of `requests`; requests that cannot be routed are marked failed and
/// go to `dlq`. Returns the appends of deliveries still being acknowledged: the batch is done
/// once they all are.
pub async fn route_batch(
    ctx: &Context,
    requests: Vec<(&Record, NotificationRequest)>,
) -> Result<Vec<PendingAck>> {
    let mut prepared = Vec::with_capacity(requests.len());
    for (r, req) in requests {
        let kept = req.clone();
        match prepare(ctx, req).await {
            Ok(p) => prepared.push(p),
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) => {
                tracing::warn!(
                    code = e.code,
                    offset = r.offset,
                    "request dead-lettered by the router"
                );
                metrics::counter!(ROUTER_DEAD_TOTAL).increment(1);
                metrics::counter!(DLQ_TOTAL, "channel" => "router", "reason" => "invalid")
                    .increment(1);
                // accepted with a 202: the producer must be able to see it failed (and
                // operators find it on the dead-letter topic as before); the store first: a
                // retriable failure there redoes the batch before anything is appended twice
                record_failure(ctx, &kept, r, &e).await?;
                ctx.dead_letter(r, &e).await?;
            }
        }
    }
    if prepared.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<MessageRecord> = prepared
        .iter()
        .map(|p| MessageRecord {
            tenant_id: p.req.tenant_id.clone(),
            message_id: p.req.message_id.clone(),
            priority: p.req.priority,
            category: p.req.category.clone(),
            template: p.req.template.clone(),
            title: p.title.clone(),
            body: p.body.clone(),
            data: p.req.data.clone(),
            channels: p.req.channels.clone(),
            created_at_ms: p.req.accepted_at_ms,
            expires_at_ms: p.req.ttl_seconds.map(|t| p.req.accepted_at_ms + t * 1000),
            failure: None,
        })
        .collect();
    // in-app to audiences is posted once, the rest fanned out per recipient; runs of each
    // kind go in request order, so a user's personal and audience messages keep their order
    let priorities: Vec<Priority> = prepared.iter().map(|p| p.req.priority).collect();
    let mut runs: Vec<(bool, Vec<Prepared>)> = Vec::new();
    let mut external = Vec::new();
    for mut p in prepared {
        let audience = p.req.channels.contains(&Channel::Inapp) && p.req.to.has_audience();
        if audience {
            let mut rest = p.clone();
            rest.req.channels.retain(|c| *c != Channel::Inapp);
            if !rest.req.channels.is_empty() {
                external.push(rest);
            }
            p.req.channels = vec![Channel::Inapp];
        }
        match runs.last_mut() {
            Some((kind, run)) if *kind == audience => run.push(p),
            _ => runs.push((audience, vec![p])),
        }
    }
    let in_order = async {
        let mut acks = Vec::new();
        for (audience, run) in runs {
            if audience {
                acks.extend(post_audiences(ctx, &run).await?);
            } else {
                acks.extend(fan_out(ctx, Arc::new(run)).await?);
            }
        }
        Ok(acks)
    };
    // the message records and the first writes of the runs share a group commit
    let ((), mut acks, more) = tokio::try_join!(
        ctx.store.put_messages(&messages),
        in_order,
        fan_out(ctx, Arc::new(external)),
    )?;
    acks.extend(more);
    for p in priorities {
        metrics::counter!(ROUTER_REQUESTS_TOTAL, "priority" => p.as_str()).increment(1);
    }
    Ok(acks)
}

/// Write each in-app audience message once and emit its push (one record for every
/// connection of its members) and the deliveries of the users it lists by name; returns their
/// append once it has its place on the bus, unless it is acknowledged already.
async fn post_audiences(ctx: &Context, posts: &[Prepared]) -> Result<Option<PendingAck>> {
    if posts.is_empty() {
        return Ok(None);
    }
    let audiences: Vec<Vec<Audience>> = posts.iter().map(|p| Audience::of(&p.req.to)).collect();
    let lease = ctx.seqs.lease(posts.len()).await?;
    let all: Vec<AudiencePost> = posts
        .iter()
        .zip(&audiences)
        .enumerate()
        .map(|(i, (p, a))| {
            let mut item = p.item();
            item.seq = lease.seq(i);
            AudiencePost {
                tenant_id: p.req.tenant_id.clone(),
                audiences: a.clone(),
                listed: p.req.to.users.clone(),
                item,
            }
        })
        .collect();
    let store = ctx.store.clone();
    // every post runs to its end before the lease ends (a failed one must not leave the
    // others to commit below a risen floor)
    let posted = lease.hold_until(async move {
        let done = futures::future::join_all(all.iter().map(|post| store.post_audience(post)));
        done.await.into_iter().collect::<Result<Vec<u64>>>()
    });
    let now = now_ms();
    // the listed users' pending statuses share the posts' group commit
    let statuses = try_join_all(
        posts
            .iter()
            .filter(|p| !p.req.to.users.is_empty())
            .map(|p| {
                let st: Vec<DeliveryStatus> = p
                    .req
                    .to
                    .users
                    .iter()
                    .map(|u| Prepared::pending(u, Channel::Inapp, now))
                    .collect();
                async move {
                    ctx.store
                        .put_delivery_status(&p.req.tenant_id, &p.req.message_id, &st)
                        .await
                }
            }),
    );
    let (posted, _) = tokio::try_join!(posted, statuses)?;
    let codec = tidings_schemas::codec();
    let mut out = Vec::new();
    for ((p, &seq), audiences) in posts.iter().zip(&posted).zip(audiences) {
        let mut it = p.item();
        it.seq = seq;
        let push = AudienceRecord::Push {
            tenant_id: p.req.tenant_id.clone(),
            message_id: p.req.message_id.clone(),
            audiences,
            seq,
            priority: p.req.priority,
            frame: it.frame(),
            accepted_at_ms: p.req.accepted_at_ms,
        };
        out.push(codec.audience_record(ctx.audience_topic(), &push));
        metrics::counter!(ROUTER_AUDIENCE_POSTS_TOTAL).increment(1);
        let mut listed = p.req.to.users.clone();
        listed.sort();
        listed.dedup();
        for u in listed {
            out.push(delivery_record(ctx, &p.delivery(&u, Channel::Inapp, seq)));
        }
    }
    place(ctx, out).await
}

/// Pages of recipients being written at once: their writes share group commits, and one
/// page's delivery append overlaps the next page's inbox rows.
const PAGES_IN_FLIGHT: usize = 4;

/// Pages written at once, in order of the requests they come from. Pages run concurrently
/// only while no user is in two of them: a user's rows (and so their sequences) and deliveries
/// stay in request order. Dropping it aborts the pages still running (their writes are
/// idempotent), so a failed batch leaves nothing behind but what it already wrote.
struct Pages {
    ctx: Context,
    prepared: Arc<Vec<Prepared>>,
    urgent: bool,
    running: JoinSet<Result<Option<PendingAck>>>,
    /// Users of the pages started since everything in flight last finished.
    users: HashSet<String>,
    /// The delivery appends of finished pages, not yet acknowledged.
    acks: Vec<PendingAck>,
}

/// Past this many users remembered, wait for the pages in flight and start afresh.
const USERS_REMEMBERED: usize = 16 * 1024;

impl Pages {
    async fn start(&mut self, pairs: Vec<(usize, String)>) -> Result<()> {
        if pairs.iter().any(|(_, u)| self.users.contains(u)) || self.users.len() >= USERS_REMEMBERED
        {
            self.wait_below(1).await?;
            self.users.clear();
        }
        self.users.extend(pairs.iter().map(|(_, u)| u.clone()));
        let (ctx, prepared) = (self.ctx.clone(), self.prepared.clone());
        self.running
            .spawn(tidings_core::hint::urgent_if(self.urgent, async move {
                flush(&ctx, &prepared, pairs).await
            }));
        self.wait_below(PAGES_IN_FLIGHT).await
    }

    /// Wait for page writes until fewer than `n` are in flight; the first failure ends the
    /// batch (it is routed again).
    async fn wait_below(&mut self, n: usize) -> Result<()> {
        while self.running.len() >= n {
            match self.running.join_next().await {
                Some(Ok(r)) => self.acks.extend(r?),
                Some(Err(e)) => return Err(Error::internal(format!("a page write failed: {e}"))),
                None => break,
            }
        }
        Ok(())
    }
}

/// Expand every request's recipients page by page, writing and emitting each page as it
/// fills, up to [`PAGES_IN_FLIGHT`] pages at a time; returns the appends still being
/// acknowledged.
async fn fan_out(ctx: &Context, prepared: Arc<Vec<Prepared>>) -> Result<Vec<PendingAck>> {
    let page = ctx.config.router.page_size;
    let mut pending: Vec<(usize, String)> = Vec::new();
    let mut pages = Pages {
        ctx: ctx.clone(),
        prepared: prepared.clone(),
        urgent: tidings_core::hint::is_urgent(),
        running: JoinSet::new(),
        users: HashSet::new(),
        acks: Vec::new(),
    };
    for (i, p) in prepared.iter().enumerate() {
        let to = &p.req.to;
        let t = p.req.tenant_id.as_str();
        for u in &to.users {
            pending.push((i, u.clone()));
            if pending.len() >= page {
                pages.start(std::mem::take(&mut pending)).await?;
            }
        }
        let sources = to
            .topics
            .iter()
            .map(|t| Source::Topic(t))
            .chain(to.tags.iter().map(|t| Source::Tag(t)))
            .chain(to.broadcast.then_some(Source::Everyone));
        for source in sources {
            let mut after: Option<String> = None;
            loop {
                let pg = source.page(ctx, t, after.as_deref(), page).await?;
                pending.extend(pg.items.into_iter().map(|u| (i, u)));
                if pending.len() >= page {
                    pages.start(std::mem::take(&mut pending)).await?;
                }
                match pg.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
    }
    if !pending.is_empty() {
        pages.start(pending).await?;
    }
    pages.wait_below(1).await?;
    Ok(std::mem::take(&mut pages.acks))
}

/// Write inbox rows and statuses for `(request, user)` pairs and emit their deliveries:
/// returns their append once it has its place on the bus, unless it is acknowledged already.
async fn flush(
    ctx: &Context,
    prepared: &[Prepared],
    mut pairs: Vec<(usize, String)>,
) -> Result<Option<PendingAck>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    // the same user twice for one request (listed and subscribed) in a page is one recipient
    pairs.sort();
    pairs.dedup();
    let inbox_pairs: Vec<&(usize, String)> = pairs
        .iter()
        .filter(|(i, _)| prepared[*i].req.channels.contains(&Channel::Inapp))
        .collect();
    // the rows are numbered by this process: no store read before they are written
    let lease = match inbox_pairs.len() {
        0 => None,
        n => Some(ctx.seqs.lease(n).await?),
    };
    let rows: Vec<NewInboxRow> = inbox_pairs
        .iter()
        .zip(lease.iter().flat_map(|l| (0..).map(|n| l.seq(n))))
        .map(|((i, u), seq)| {
            let p = &prepared[*i];
            let mut item = p.item();
            item.seq = seq;
            NewInboxRow {
                tenant_id: p.req.tenant_id.clone(),
                user_id: u.clone(),
                item,
            }
        })
        .collect();
    let mut users_by_request: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
    for (i, u) in &pairs {
        users_by_request.entry(*i).or_default().push(u);
    }
    let touch = try_join_all(
        users_by_request
            .iter()
            .filter(|(i, _)| !prepared[**i].req.channels.contains(&Channel::Inapp))
            .map(|(i, users)| {
                let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
                let t = prepared[*i].req.tenant_id.clone();
                async move { ctx.store.touch_users(&t, &users).await }
            }),
    );
    let now = now_ms();
    let statuses = try_join_all(users_by_request.iter().map(|(i, users)| {
        let p = &prepared[*i];
        let st: Vec<DeliveryStatus> = users
            .iter()
            .flat_map(|u| p.req.channels.iter().map(|c| Prepared::pending(u, *c, now)))
            .collect();
        async move {
            ctx.store
                .put_delivery_status(&p.req.tenant_id, &p.req.message_id, &st)
                .await
        }
    }));
    let store = ctx.store.clone();
    let appended = async move {
        match lease {
            None => Ok(Vec::new()),
            Some(l) => {
                l.hold_until(async move { store.append_inbox(&rows).await })
                    .await
            }
        }
    };
    let (seqs, _, _) = tokio::try_join!(appended, statuses, touch)?;
    let mut seq_of: std::collections::HashMap<(usize, &str), u64> =
        std::collections::HashMap::new();
    for ((i, u), seq) in inbox_pairs.iter().zip(&seqs) {
        seq_of.insert((*i, u.as_str()), *seq);
    }
    let mut out = Vec::new();
    for (i, u) in &pairs {
        let p = &prepared[*i];
        for c in &p.req.channels {
            let seq = seq_of.get(&(*i, u.as_str())).copied().unwrap_or(0);
            out.push(delivery_record(ctx, &p.delivery(u, *c, seq)));
        }
    }
    place(ctx, out).await
}

/// Start appending `out`: the first poll gives the records their place (a user's stay in
/// request order); returns the acknowledgement still to come, which the router awaits while it
/// routes the next batch, or nothing when the bus has acknowledged already.
async fn place(ctx: &Context, out: Vec<OutRecord>) -> Result<Option<PendingAck>> {
    let bus = ctx.bus.clone();
    let mut ack: PendingAck = Box::pin(async move { bus.append(out).await.map(|_| ()) });
    match futures::poll!(ack.as_mut()) {
        Poll::Ready(r) => r.map(|()| None),
        Poll::Pending => Ok(Some(ack)),
    }
}

/// The record of delivery `d` on its channel's topic, counted.
fn delivery_record(ctx: &Context, d: &Delivery) -> OutRecord {
    metrics::counter!(ROUTER_DELIVERIES_TOTAL, "channel" => d.channel.as_str()).increment(1);
    OutRecord::new(
        ctx.deliveries_topic(d.channel, d.priority),
        tidings_core::bus::user_key(&d.tenant_id, &d.user_id),
        tidings_schemas::codec().encode_delivery(d),
    )
}
