//! The store port, one trait per aggregate: [`Tenants`], [`Directory`] (users, tags,
//! subscriptions, memberships), [`Templates`], [`Idempotency`], [`Messages`] (routed messages
//! and audience messages), [`Inbox`], [`Sequences`] (owners' floors), [`Statuses`] and
//! [`DeadLetters`]. A backend implements
//! all of them and [`Store`]; stages hold an `Arc<dyn Store>` and call any of them on it.
//! Implementors import [`prelude`]. The conformance suite (`crate::conformance`, feature
//! `testsuite`) has one function per guarantee.
//!
//! What every backend guarantees:
//! - **Durable writes.** A call returns only once what it wrote survives a `kill -9`.
//! - **Audiences are written once.** A message to topics, tags or the whole tenant is one
//!   timeline entry per audience ([`Messages::post_audience`]), not one row per recipient. Who
//!   sees it is decided by membership history: a user sees an audience message if they were a
//!   member when it was posted (a user who joins later does not see it, one who leaves later
//!   keeps it). Reads, acks and deletes of audience messages are stored only for the users who
//!   act, and "read all" is one write per user (a read mark, for own rows too).
//! - **One order per user.** A user's own rows and the audience messages they see share one
//!   sequence space: every inbox method merges them by sequence, each message once.
//! - **Idempotent inbox.** A user's inbox holds at most one row per `(tenant, user,
//!   message_id)`, and an audience message is posted once per id, so at-least-once upstream
//!   never shows a user a message twice. A repeat numbered like the first writes the same row
//!   again; one numbered again (a request routed again) leaves the row where it was or moves
//!   it to the new sequence (a backend that writes without reading), never both.
//! - **Sequences come from the writer.** Rows and audience messages arrive numbered by their
//!   owner's [`Sequencer`](crate::seq::Sequencer) (time-ordered, unique per owner); no write
//!   needs a read before it to number a row. A row whose `(tenant, user, seq)` holds another
//!   message is refused (`sequence_taken`, the writer numbers it again).
//! - **Reads stop below the floor.** Inbox reads and resumes show only sequences below the
//!   lowest floor an owner holds ([`Sequences::hold_floor`]), so a reader resuming after one
//!   never misses a row that commits later with a smaller sequence ([`Inbox::inbox_after`]).
//!   A client that got a message by push (before reads show it) resumes from its
//!   [`Inbox::resume_point`], the floor when it was written.
//! - **Forward-only status.** An inbox row moves unread → delivered → read; deleted hides it.
//!   Setting an earlier status is a no-op.
//! - **Tenant isolation.** Every key starts with the tenant id; no call crosses tenants.

use crate::error::Result;
use crate::model::*;
use async_trait::async_trait;

/// One inbox row to write.
#[derive(Debug, Clone)]
pub struct NewInboxRow {
    pub tenant_id: String,
    pub user_id: String,
    /// The row's content, numbered by its writer (`seq`, from a [`crate::seq::Lease`]); its
    /// `status` is the store's.
    pub item: InboxItem,
}

/// A message written once for its audiences, for [`Messages::post_audience`].
#[derive(Debug, Clone)]
pub struct AudiencePost {
    pub tenant_id: String,
    /// Topics, tags and/or the whole tenant; their members at posting time see it.
    pub audiences: Vec<Audience>,
    /// Users the request listed by name: they get rows of their own, at the message's sequence.
    pub listed: Vec<String>,
    /// The content, numbered by its writer (`seq`) for every audience and listed user; its
    /// `status` is the store's.
    pub item: InboxItem,
}

/// What the store knows of an audience message, for `GET /v1/messages/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceSummary {
    pub audiences: Vec<Audience>,
    pub seq: u64,
    /// Members of each audience when it was posted, summed, plus the listed users (a user in
    /// two of its audiences is counted in each).
    pub recipients: u64,
    /// Users who acked or read it by id (a "read all" is not counted per message).
    pub delivered: u64,
    pub read: u64,
}

pub use crate::model::Membership;

/// One user's ack or read of some messages, for [`Inbox::settle_many`].
#[derive(Debug, Clone)]
pub struct Settle {
    pub tenant_id: String,
    pub user_id: String,
    pub ids: Vec<String>,
    /// What the inbox rows move to (delivered, read).
    pub status: InboxStatus,
    /// What the user's in-app delivery status moves to, for the ids that changed.
    pub state: DeliveryState,
}

/// Unread counts stop here: past it a client shows "999+".
pub const UNREAD_CAP: u64 = 999;

/// An edit of a stored tenant, for [`Tenants::modify_tenant`].
pub type TenantChange = Box<dyn FnOnce(&mut Tenant) -> Result<()> + Send>;

/// Result of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now bound to the proposed message id.
    New,
    /// The key was bound earlier, within its time to live.
    Existing {
        message_id: String,
        /// The fingerprint of the request that claimed it (empty when unknown).
        fingerprint: String,
        /// Whether that request was confirmed durably on the bus; when not, the claimer may
        /// have crashed before appending it, and a retry appends it again under this id.
        confirmed: bool,
    },
}

/// A page of a listing (users, subscribers, statuses), and where the next page starts.
///
/// Listings return each member once, in an order of the backend's choosing; `next` is an
/// opaque cursor to pass back as `after` (a backend may bucket its partitions and encode where
/// it stands), `None` on the last page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The store port, tenants: create, change in one write, look up by id and by API key.
#[async_trait]
pub trait Tenants: Send + Sync {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    /// Change a tenant in one write: `change` edits the stored tenant (its error aborts the
    /// change), and the API-key index follows its current and previous keys. Concurrent
    /// changes never undo each other (a webhook update cannot bring back a rotated key).
    async fn modify_tenant(&self, id: &str, change: TenantChange) -> Result<Tenant>;
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<Tenant>>;
}

/// The store port, users, their profiles and tags, topic subscriptions, and the audiences they are in.
#[async_trait]
pub trait Directory: Send + Sync {
    async fn upsert_user(&self, tenant: &str, user: &str, profile: &UserProfile) -> Result<()>;
    async fn user(&self, tenant: &str, user: &str) -> Result<Option<UserProfile>>;
    /// Make users known without touching existing profiles.
    async fn touch_users(&self, tenant: &str, users: &[String]) -> Result<()>;
    /// Known users, a page after the cursor `after` (see [`Page`]).
    async fn users(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Page<String>>;
    /// Users carrying `tag`, a page after the cursor `after` (see [`Page`]).
    async fn users_tagged(
        &self,
        tenant: &str,
        tag: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>>;
    async fn subscribe(&self, tenant: &str, topic: &str, user: &str) -> Result<()>;
    async fn unsubscribe(&self, tenant: &str, topic: &str, user: &str) -> Result<bool>;
    /// Subscribers of `topic`, a page after the cursor `after` (see [`Page`]).
    async fn subscribers(
        &self,
        tenant: &str,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>>;
    async fn subscriptions(&self, tenant: &str, user: &str) -> Result<Vec<String>>;
    /// The audiences the user is in now (every known user is in [`Audience::Everyone`]).
    async fn memberships(&self, tenant: &str, user: &str) -> Result<Vec<Membership>>;
}

/// The store port, versioned templates.
#[async_trait]
pub trait Templates: Send + Sync {
    /// Save a new version of a template; returns its version (the previous one plus 1).
    /// Earlier versions stay readable (at least the last 100), so a send accepted against one
    /// renders with it.
    async fn put_template(&self, tenant: &str, key: &str, template: &Template) -> Result<u64>;
    /// The latest version.
    async fn template(&self, tenant: &str, key: &str) -> Result<Option<Template>>;
    /// One version.
    async fn template_version(
        &self,
        tenant: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<Template>>;
}

/// The store port, idempotency keys.
#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Bind `key` to `message_id` and the request's `fingerprint`, unconfirmed, unless it is
    /// bound, younger than `ttl_ms`, to another.
    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        message_id: &str,
        fingerprint: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Claim>;
    /// Record that the request of `message_id` is on the bus: the key's binding to it becomes
    /// confirmed, or, if the key is free again (released by a concurrent attempt that
    /// failed), is bound to it confirmed. No-op if the key is bound to another id.
    async fn confirm_idempotency(
        &self,
        tenant: &str,
        key: &str,
        message_id: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<()>;
    /// Undo a claim whose request could not be accepted; a confirmed binding stays.
    async fn release_idempotency(&self, tenant: &str, key: &str, message_id: &str) -> Result<()>;
}

/// The store port, messages as routed, and audience messages written once.
#[async_trait]
pub trait Messages: Send + Sync {
    /// Write messages (idempotent by id).
    async fn put_messages(&self, messages: &[MessageRecord]) -> Result<()>;
    async fn message(&self, tenant: &str, message_id: &str) -> Result<Option<MessageRecord>>;
    /// Write a message once for its audiences (and rows of their own for its listed users), at
    /// its sequence `post.item.seq`; idempotent by message id. Returns the sequence it is at
    /// (see "Idempotent inbox" for a repeat numbered again).
    async fn post_audience(&self, post: &AudiencePost) -> Result<u64>;
    /// The audiences and counts of an audience message; `None` for a personal one.
    async fn audience_message(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Option<AudienceSummary>>;
}

/// The store port, each user's inbox: own rows merged with the audience messages they see.
#[async_trait]
pub trait Inbox: Statuses {
    /// Write inbox rows at their sequences, one per (tenant, user, message id); returns the
    /// sequence each is at, in input order (see "Idempotent inbox" for a repeat numbered
    /// again).
    async fn append_inbox(&self, rows: &[NewInboxRow]) -> Result<Vec<u64>>;
    /// Newest first, visible rows and audience messages with `seq < before` (all when `None`).
    /// It waits a moment (the backend's bound) for the rows committed before the call to show,
    /// so a message the user was pushed is on the page, then shows what it can.
    async fn inbox_page(
        &self,
        tenant: &str,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InboxItem>>;
    /// Oldest first, visible rows with `seq > after`; only unread ones when `unread_only`.
    /// It first waits until every row committed before the call shows (the writes numbered
    /// below them end), so a resume never misses a message committed while the client was
    /// away; `Unavailable` if that takes longer than the backend's bound.
    async fn inbox_after(
        &self,
        tenant: &str,
        user: &str,
        after: u64,
        unread_only: bool,
        limit: usize,
    ) -> Result<Vec<InboxItem>>;
    /// The sequence of a message in the user's inbox (own row or audience message they see).
    async fn inbox_seq(&self, tenant: &str, user: &str, message_id: &str) -> Result<Option<u64>>;
    /// Where a resume after message `message_id` starts (`None` when the user does not have
    /// it): at most its sequence, and below the floor when it was written, so
    /// `inbox_after` from it replays every message written after it, even one numbered
    /// before it (a client drops the few it had by id).
    async fn resume_point(&self, tenant: &str, user: &str, message_id: &str)
        -> Result<Option<u64>>;
    /// Unread own rows and audience messages, at most [`UNREAD_CAP`] of the latter.
    async fn unread_count(&self, tenant: &str, user: &str) -> Result<u64>;
    /// Move rows forward to `status`; returns the ids that changed. Unknown ids are skipped.
    async fn set_inbox_status(
        &self,
        tenant: &str,
        user: &str,
        ids: &[String],
        status: InboxStatus,
    ) -> Result<Vec<String>>;
    /// Move inbox rows forward to `status` and, for the ids that changed, the user's in-app
    /// delivery status to `state` (an ack, a read): one write where the backend can, so an ack
    /// costs one round to the disk. Returns the ids that changed.
    async fn settle_inapp(
        &self,
        tenant: &str,
        user: &str,
        ids: &[String],
        status: InboxStatus,
        state: DeliveryState,
    ) -> Result<Vec<String>> {
        let changed = self.set_inbox_status(tenant, user, ids, status).await?;
        let st = DeliveryStatus::inapp(user, state);
        for id in &changed {
            self.put_delivery_status(tenant, id, std::slice::from_ref(&st))
                .await?;
        }
        Ok(changed)
    }
    /// [`Inbox::settle_inapp`] for many users at once, in one write where the backend can
    /// (the acks of a fan-out arrive together); the ids that changed, in input order.
    async fn settle_many(&self, batch: &[Settle]) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(batch.len());
        for s in batch {
            out.push(
                self.settle_inapp(&s.tenant_id, &s.user_id, &s.ids, s.status, s.state)
                    .await?,
            );
        }
        Ok(out)
    }
    /// Mark every own row and every audience message the user has so far read, by one read
    /// mark (rows are not rewritten one by one); returns how many were unread (audience
    /// messages counted up to [`UNREAD_CAP`]).
    async fn mark_all_read(&self, tenant: &str, user: &str) -> Result<u64>;
}

/// The store port, where the writers of sequences stand (see [`crate::seq`]).
#[async_trait]
pub trait Sequences: Send + Sync {
    /// The greatest sequence the store holds; a new owner's clock starts above it.
    async fn last_seq(&self) -> Result<u64>;
    /// Owner `owner` may still write rows and audience messages at sequences from `floor` on
    /// (`None`: at none, for now). From the call's return, inbox reads and resumes show only
    /// sequences below the lowest floor of all owners; a shared backend keeps floors with a
    /// lease, so an owner that died stops holding reads back.
    async fn hold_floor(&self, owner: &str, floor: Option<u64>) -> Result<()>;
}

/// The store port, per (message, user, channel) delivery statuses.
#[async_trait]
pub trait Statuses: Send + Sync {
    /// Upsert statuses of `(message, user, channel)`; a state never moves back from a later one
    /// (delivered, read, failed) to pending or retrying.
    async fn put_delivery_status(
        &self,
        tenant: &str,
        message_id: &str,
        statuses: &[DeliveryStatus],
    ) -> Result<()>;
    /// A message's statuses, `limit` at a time, in an order of the backend's choosing, after
    /// `after` (the opaque `next` of the previous page): a broadcast acked by a million users
    /// is read page by page.
    async fn delivery_status(
        &self,
        tenant: &str,
        message_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryStatus>>;
}

/// The store port, the tenant's dead-letter queue.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Write an entry; an entry with the same id is replaced (ids are derived from the
    /// delivery, [`DlqEntry::id_for`], so a redelivered failure is one entry).
    async fn dlq_put(&self, entry: &DlqEntry) -> Result<()>;
    /// Entries of a tenant, oldest first, after id `after`.
    async fn dlq_list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DlqEntry>>;
    /// One entry.
    async fn dlq_get(&self, tenant: &str, id: &str) -> Result<Option<DlqEntry>>;
    /// Remove an entry after its replay is on the bus, only if it is still the failure that
    /// was replayed (`failed_at_ms`): a new failure of the replay keeps its entry.
    async fn dlq_remove(&self, tenant: &str, id: &str, failed_at_ms: i64) -> Result<bool>;
}

/// Every aggregate of the store port, as one backend implements them.
#[async_trait]
pub trait Store:
    Tenants
    + Directory
    + Templates
    + Idempotency
    + Messages
    + Inbox
    + Sequences
    + Statuses
    + DeadLetters
    + 'static
{
    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> Result<()>;
}

/// The traits of the store port, to call them on `dyn Store`.
pub mod prelude {
    pub use super::{
        DeadLetters, Directory, Idempotency, Inbox, Messages, Sequences, Statuses, Store,
        Templates, Tenants,
    };
}
