//! The embedded store: one redb file, one table per kind of row, every key led by the tenant
//! id. Writes go through the engine's group commit (fsync before the call returns).
//!
//! [`audience`] holds the audience tables and the merged inbox view.

mod audience;

use async_trait::async_trait;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use tidings_core::model::*;
use tidings_core::store::prelude::*;
use tidings_core::store::{
    AudiencePost, AudienceSummary, Claim, Membership, NewInboxRow, Page, Settle, Store,
    TenantChange,
};
use tidings_core::{Error, Result};
use tidings_embedded::{storage_err, Engine};

type T1 = TableDefinition<'static, &'static str, &'static [u8]>;
type T2 = TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;
type T3 = TableDefinition<'static, (&'static str, &'static str, &'static str), u8>;

const TENANTS: T1 = TableDefinition::new("tenants");
const API_KEYS: T1 = TableDefinition::new("api_keys");
const USERS: T2 = TableDefinition::new("users");
const TAGS: T3 = TableDefinition::new("tags");
const SUBS: T3 = TableDefinition::new("subscribers");
const USER_SUBS: T3 = TableDefinition::new("subscriptions");
const TEMPLATES: T2 = TableDefinition::new("templates");
const IDEMPOTENCY: T2 = TableDefinition::new("idempotency");
const MESSAGES: T2 = TableDefinition::new("messages");
const INBOX: TableDefinition<'static, (&'static str, &'static str, u64), &'static [u8]> =
    TableDefinition::new("inbox");
const INBOX_INDEX: TableDefinition<'static, (&'static str, &'static str, &'static str), u64> =
    TableDefinition::new("inbox_index");
/// Per-user sequences of layout 1, read once when the store moves to layout 2.
const USER_SEQ: TableDefinition<'static, (&'static str, &'static str), u64> =
    TableDefinition::new("user_seq");
const UNREAD: TableDefinition<'static, (&'static str, &'static str), u64> =
    TableDefinition::new("unread");
const STATUS: TableDefinition<
    'static,
    (&'static str, &'static str, &'static str, &'static str),
    &'static [u8],
> = TableDefinition::new("delivery_status");
const DLQ: T2 = TableDefinition::new("dlq");
/// Versions kept per template; a send still pinned to an older one (accepted, not yet
/// routed, after this many saves) fails visibly with `template_not_found`.
const TEMPLATE_VERSIONS_KEPT: u64 = 100;
const TEMPLATE_VERSIONS: TableDefinition<
    'static,
    (&'static str, &'static str, u64),
    &'static [u8],
> = TableDefinition::new("template_versions");

/// An idempotency key's binding.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdemRecord {
    message_id: String,
    at_ms: i64,
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    confirmed: bool,
}

impl IdemRecord {
    /// Read a binding, including the `[message_id, at_ms]` form of earlier versions (those
    /// were written only after a successful append: confirmed, fingerprint unknown).
    fn read(raw: &[u8]) -> Result<IdemRecord> {
        if let Ok((message_id, at_ms)) = serde_json::from_slice::<(String, i64)>(raw) {
            return Ok(IdemRecord {
                message_id,
                at_ms,
                fingerprint: String::new(),
                confirmed: true,
            });
        }
        from_json(raw)
    }

    /// Write this binding of `(tenant, key)`.
    fn put(
        &self,
        t: &mut Table<'_, (&'static str, &'static str), &'static [u8]>,
        tenant: &str,
        key: &str,
    ) -> Result<()> {
        t.insert((tenant, key), to_json(self)?.as_slice())
            .map_err(storage_err)?;
        Ok(())
    }

    /// The binding of `(tenant, key)` in the idempotency table.
    fn get(
        t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        tenant: &str,
        key: &str,
    ) -> Result<Option<IdemRecord>> {
        t.get((tenant, key))
            .map_err(storage_err)?
            .map(|v| IdemRecord::read(v.value()))
            .transpose()
    }
}

fn bad_cursor() -> Error {
    Error::invalid("invalid_cursor", "cursor: not one this API gave")
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::internal(format!("encode: {e}")))
}

fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::internal(format!("corrupt row: {e}")))
}

/// An own row as the `inbox` table holds it: the item, and where a resume after it starts
/// (`from`, just below the floor when it was written; rows of earlier versions have none:
/// their sequence). Reads of pages decode the item alone.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRow {
    #[serde(flatten)]
    item: InboxItem,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
}

/// Where a resume after a message at `seq`, written when everything committed after it would
/// be above `from`, starts.
fn resume_from(seq: u64, from: Option<u64>) -> u64 {
    from.map_or(seq, |f| f.min(seq))
}

fn inbox_rank(s: InboxStatus) -> u8 {
    s as u8
}

fn delivery_rank(s: DeliveryState) -> u8 {
    match s {
        DeliveryState::Pending | DeliveryState::Retrying | DeliveryState::Failed => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Read => 2,
    }
}

/// A row at a sequence the user's inbox already holds for another message.
fn sequence_taken(seq: u64) -> Error {
    Error::internal(format!(
        "sequence_taken: {seq} holds another message (its writer numbers it again)"
    ))
}

/// Where the owners of sequences stand (see [`tidings_core::seq`]). Kept in memory: every
/// owner writing to this store is in this process, and starts again with it.
#[derive(Default)]
struct Floors {
    /// The lowest sequence each owner may still write.
    by_owner: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The greatest sequence written or being written (raised before each write).
    written: std::sync::atomic::AtomicU64,
    /// Woken whenever a floor moves.
    moved: tokio::sync::Notify,
}

/// How long a resume waits for the rows committed before it to show.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a page waits for them: then it shows what it can (a page is not a cursor a
/// client resumes from, and reads must not fail while writes stall).
const PAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Floors {
    /// Reads show sequences below this: the lowest floor, or past everything written when no
    /// owner holds one. Read under the floors' lock, so a floor published after it is above
    /// every sequence it lets through.
    fn stable(&self) -> u64 {
        let by_owner = self.by_owner.lock().unwrap();
        match by_owner.values().min() {
            Some(f) => *f,
            None => self
                .written
                .load(std::sync::atomic::Ordering::Acquire)
                .saturating_add(1),
        }
    }

    /// The stable point once every sequence committed before the call is below it: the writes
    /// numbered under it end (one write each, queued behind the engine's groups at most).
    /// `None` after `wait`.
    async fn settled(&self, wait: std::time::Duration) -> Option<u64> {
        let target = self.written.load(std::sync::atomic::Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let stable = self.stable();
            if stable > target {
                return Some(stable);
            }
            tokio::time::timeout_at(deadline, moved).await.ok()?;
        }
    }

    /// No owner may still write a sequence below this (`u64::MAX` when none holds a floor: an
    /// owner publishes its floor before it numbers a lease, so every lease not covered is
    /// numbered by the clock after this call).
    fn settled_now(&self) -> u64 {
        let by_owner = self.by_owner.lock().unwrap();
        by_owner.values().min().copied().unwrap_or(u64::MAX)
    }

    fn wrote(&self, seq: u64) {
        self.written
            .fetch_max(seq, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The embedded, durable, single-process store.
#[derive(Clone)]
pub struct EmbeddedStore {
    engine: Engine,
    floors: std::sync::Arc<Floors>,
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let engine = Engine::open(path, "store", |txn| {
            for t in [TENANTS, API_KEYS] {
                txn.open_table(t).map_err(storage_err)?;
            }
            for t in [USERS, TEMPLATES, IDEMPOTENCY, MESSAGES, DLQ] {
                txn.open_table(t).map_err(storage_err)?;
            }
            for t in [TAGS, SUBS, USER_SUBS] {
                txn.open_table(t).map_err(storage_err)?;
            }
            txn.open_table(INBOX).map_err(storage_err)?;
            txn.open_table(TEMPLATE_VERSIONS).map_err(storage_err)?;
            txn.open_table(INBOX_INDEX).map_err(storage_err)?;
            txn.open_table(USER_SEQ).map_err(storage_err)?;
            txn.open_table(UNREAD).map_err(storage_err)?;
            txn.open_table(STATUS).map_err(storage_err)?;
            audience::init(txn)
        })?;
        let store = EmbeddedStore {
            engine,
            floors: std::sync::Arc::default(),
        };
        store.floors.wrote(store.top()?);
        Ok(store)
    }

    /// The greatest sequence written.
    fn top(&self) -> Result<u64> {
        let r = self.engine.read()?;
        audience::top_of(&r.open_table(audience::META).map_err(storage_err)?)
    }

    fn get2<V: DeserializeOwned>(&self, def: T2, a: &str, b: &str) -> Result<Option<V>> {
        let r = self.engine.read()?;
        let t = r.open_table(def).map_err(storage_err)?;
        let v = t.get((a, b)).map_err(storage_err)?;
        v.map(|v| from_json(v.value())).transpose()
    }

    /// Third components of `(a, b, *)` keys after `after`, in order.
    fn page3(
        &self,
        def: T3,
        a: &str,
        b: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>> {
        let r = self.engine.read()?;
        let t = r.open_table(def).map_err(storage_err)?;
        let rows = t
            .range((a, b, after.unwrap_or(""))..)
            .map_err(storage_err)?;
        let keys = rows.map(|row| {
            let (k, _) = row.map_err(storage_err)?;
            let (ka, kb, kc) = k.value();
            Ok((ka == a && kb == b).then(|| kc.to_string()))
        });
        page_of(keys, after, limit)
    }
}

/// A page of the keys `keys` yields from a range read started at `after` (`None` ends the
/// range: a key past the prefix): `after` itself is skipped, and `next` is the last key when
/// more follow.
fn page_of(
    keys: impl Iterator<Item = Result<Option<String>>>,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<String>> {
    let mut items = Vec::new();
    let mut more = false;
    for key in keys {
        let Some(key) = key? else { break };
        if after == Some(key.as_str()) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(key);
    }
    let next = if more { items.last().cloned() } else { None };
    Ok(Page { items, next })
}

/// Write one delivery status unless the stored one is further along (statuses only move
/// forward).
fn put_status_in(
    t: &mut redb::Table<'_, (&str, &str, &str, &str), &[u8]>,
    tenant: &str,
    message_id: &str,
    s: &DeliveryStatus,
) -> Result<()> {
    let key = (tenant, message_id, s.user_id.as_str(), s.channel.as_str());
    let old: Option<DeliveryStatus> = t
        .get(key)
        .map_err(storage_err)?
        .map(|v| from_json(v.value()))
        .transpose()?;
    if old.is_some_and(|o| delivery_rank(o.state) > delivery_rank(s.state)) {
        return Ok(());
    }
    t.insert(key, to_json(s)?.as_slice()).map_err(storage_err)?;
    Ok(())
}

/// Acks, reads and deletes in one write: own rows, their unread counts, the in-app statuses
/// and the audience marks, with every table opened once however many users the write
/// carries ([`Inbox::settle_many`] folds a fan-out's acks into one).
struct Settling<'t> {
    idx: Table<'t, (&'static str, &'static str, &'static str), u64>,
    inbox: Table<'t, (&'static str, &'static str, u64), &'static [u8]>,
    unread: Table<'t, (&'static str, &'static str), u64>,
    status: Table<'t, (&'static str, &'static str, &'static str, &'static str), &'static [u8]>,
    marks: audience::Marks<'t>,
}

impl<'t> Settling<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Settling<'t>> {
        Ok(Settling {
            idx: txn.open_table(INBOX_INDEX).map_err(storage_err)?,
            inbox: txn.open_table(INBOX).map_err(storage_err)?,
            unread: txn.open_table(UNREAD).map_err(storage_err)?,
            status: txn.open_table(STATUS).map_err(storage_err)?,
            marks: audience::Marks::open(txn)?,
        })
    }

    /// Move the user's messages `ids` (own rows or audience messages they see) forward to
    /// `status`; returns the ids that changed. Unknown ids are skipped.
    fn set_status(
        &mut self,
        tenant: &str,
        user: &str,
        ids: &[String],
        status: InboxStatus,
    ) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        let mut others = Vec::new();
        let mut unread_delta: i64 = 0;
        let read_mark = self.marks.read_mark(tenant, user)?;
        for id in ids {
            let Some(seq) = self
                .idx
                .get((tenant, user, id.as_str()))
                .map_err(storage_err)?
                .map(|v| v.value())
            else {
                others.push(id);
                continue;
            };
            let Some(raw) = self
                .inbox
                .get((tenant, user, seq))
                .map_err(storage_err)?
                .map(|v| v.value().to_vec())
            else {
                continue;
            };
            let mut row: StoredRow = from_json(&raw)?;
            let before = audience::seen_as(row.item.status, seq, read_mark);
            if inbox_rank(status) <= inbox_rank(before) {
                continue;
            }
            if before.is_unread() && !status.is_unread() {
                unread_delta -= 1;
            }
            row.item.status = status;
            self.inbox
                .insert((tenant, user, seq), to_json(&row)?.as_slice())
                .map_err(storage_err)?;
            changed.push(id.clone());
        }
        if unread_delta != 0 {
            let cur = self
                .unread
                .get((tenant, user))
                .map_err(storage_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            let next = (cur as i64 + unread_delta).max(0) as u64;
            self.unread
                .insert((tenant, user), next)
                .map_err(storage_err)?;
        }
        // ids without an own row: audience messages the user may see
        changed.extend(
            self.marks
                .set_status(tenant, user, &others, status, read_mark)?,
        );
        Ok(changed)
    }

    /// Close the tables and add the audience counts.
    fn finish(self, txn: &WriteTransaction) -> Result<()> {
        let Settling { marks, .. } = self;
        marks.finish(txn)
    }
}

/// Make the user known (a member of the whole tenant from now on) unless they are.
fn touch_in(txn: &WriteTransaction, tenant: &str, user: &str) -> Result<()> {
    let mut users = txn.open_table(USERS).map_err(storage_err)?;
    if users.get((tenant, user)).map_err(storage_err)?.is_none() {
        users
            .insert((tenant, user), b"{}".as_slice())
            .map_err(storage_err)?;
        drop(users);
        // a user never known has no interval to reopen
        audience::join(txn, tenant, user, "*", 0)?;
    }
    Ok(())
}

#[async_trait]
impl Tenants for EmbeddedStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let tenant = tenant.clone();
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(TENANTS).map_err(storage_err)?;
                if t.get(tenant.id.as_str()).map_err(storage_err)?.is_some() {
                    return Err(Error::new(
                        tidings_core::ErrorKind::Conflict,
                        "tenant_exists",
                        format!("tenant `{}` exists", tenant.id),
                    ));
                }
                t.insert(tenant.id.as_str(), to_json(&tenant)?.as_slice())
                    .map_err(storage_err)?;
                let mut k = txn.open_table(API_KEYS).map_err(storage_err)?;
                k.insert(tenant.api_key_hash.as_str(), tenant.id.as_bytes())
                    .map_err(storage_err)?;
                Ok(())
            })
            .await
    }

    async fn modify_tenant(&self, id: &str, change: TenantChange) -> Result<Tenant> {
        let id = id.to_string();
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(TENANTS).map_err(storage_err)?;
                let old: Option<Tenant> = t
                    .get(id.as_str())
                    .map_err(storage_err)?
                    .map(|v| from_json(v.value()))
                    .transpose()?;
                let Some(old) = old else {
                    return Err(Error::not_found("tenant_not_found", "no such tenant"));
                };
                let mut tenant = old.clone();
                change(&mut tenant)?;
                tenant.id = old.id.clone();
                t.insert(tenant.id.as_str(), to_json(&tenant)?.as_slice())
                    .map_err(storage_err)?;
                // index every key the tenant still has (current and previous), no other
                let keys = |t: &Tenant| {
                    let mut v = vec![t.api_key_hash.clone()];
                    v.extend(t.previous.as_ref().map(|p| p.api_key_hash.clone()));
                    v
                };
                let (before, after) = (keys(&old), keys(&tenant));
                if before != after {
                    let mut k = txn.open_table(API_KEYS).map_err(storage_err)?;
                    for h in before.iter().filter(|h| !after.contains(h)) {
                        k.remove(h.as_str()).map_err(storage_err)?;
                    }
                    for h in &after {
                        k.insert(h.as_str(), tenant.id.as_bytes())
                            .map_err(storage_err)?;
                    }
                }
                Ok(tenant)
            })
            .await
    }

    async fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let r = self.engine.read()?;
        let t = r.open_table(TENANTS).map_err(storage_err)?;
        let v = t.get(id).map_err(storage_err)?;
        v.map(|v| from_json(v.value())).transpose()
    }

    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<Tenant>> {
        let id = {
            let r = self.engine.read()?;
            let t = r.open_table(API_KEYS).map_err(storage_err)?;
            let v = t.get(hash).map_err(storage_err)?;
            v.map(|v| String::from_utf8_lossy(v.value()).into_owned())
        };
        match id {
            Some(id) => self.tenant(&id).await,
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Directory for EmbeddedStore {
    async fn upsert_user(&self, tenant: &str, user: &str, profile: &UserProfile) -> Result<()> {
        let (tenant, user, profile) = (tenant.to_string(), user.to_string(), profile.clone());
        let floors = self.floors.clone();
        self.engine
            .write(move |txn| {
                let (t, u) = (tenant.as_str(), user.as_str());
                touch_in(txn, t, u)?;
                let mut users = txn.open_table(USERS).map_err(storage_err)?;
                let old: UserProfile = match users.get((t, u)).map_err(storage_err)? {
                    Some(v) => from_json(v.value())?,
                    None => UserProfile::default(),
                };
                users
                    .insert((t, u), to_json(&profile)?.as_slice())
                    .map_err(storage_err)?;
                drop(users);
                let mut tags = txn.open_table(TAGS).map_err(storage_err)?;
                for tag in old.tags.iter().filter(|g| !profile.tags.contains(g)) {
                    tags.remove((t, tag.as_str(), u)).map_err(storage_err)?;
                }
                for tag in &profile.tags {
                    tags.insert((t, tag.as_str(), u), 1).map_err(storage_err)?;
                }
                drop(tags);
                for tag in old.tags.iter().filter(|g| !profile.tags.contains(g)) {
                    audience::leave(txn, t, u, &format!("g:{tag}"))?;
                }
                let settled = floors.settled_now();
                for tag in &profile.tags {
                    audience::join(txn, t, u, &format!("g:{tag}"), settled)?;
                }
                Ok(())
            })
            .await
    }

    async fn user(&self, tenant: &str, user: &str) -> Result<Option<UserProfile>> {
        self.get2(USERS, tenant, user)
    }

    async fn touch_users(&self, tenant: &str, users: &[String]) -> Result<()> {
        // skip the write when every user is known already (the common case)
        let missing: Vec<String> = {
            let r = self.engine.read()?;
            let t = r.open_table(USERS).map_err(storage_err)?;
            let mut m = Vec::new();
            for u in users {
                if t.get((tenant, u.as_str())).map_err(storage_err)?.is_none() {
                    m.push(u.clone());
                }
            }
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        let tenant = tenant.to_string();
        self.engine
            .write(move |txn| {
                for u in &missing {
                    touch_in(txn, &tenant, u)?;
                }
                Ok(())
            })
            .await
    }

    async fn users(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Page<String>> {
        let r = self.engine.read()?;
        let t = r.open_table(USERS).map_err(storage_err)?;
        let rows = t
            .range((tenant, after.unwrap_or(""))..)
            .map_err(storage_err)?;
        let keys = rows.map(|row| {
            let (k, _) = row.map_err(storage_err)?;
            let (kt, ku) = k.value();
            Ok((kt == tenant).then(|| ku.to_string()))
        });
        page_of(keys, after, limit)
    }

    async fn users_tagged(
        &self,
        tenant: &str,
        tag: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>> {
        self.page3(TAGS, tenant, tag, after, limit)
    }

    async fn subscribe(&self, tenant: &str, topic: &str, user: &str) -> Result<()> {
        let (tenant, topic, user) = (tenant.to_string(), topic.to_string(), user.to_string());
        let floors = self.floors.clone();
        self.engine
            .write(move |txn| {
                let mut s = txn.open_table(SUBS).map_err(storage_err)?;
                s.insert((tenant.as_str(), topic.as_str(), user.as_str()), 1)
                    .map_err(storage_err)?;
                let mut us = txn.open_table(USER_SUBS).map_err(storage_err)?;
                us.insert((tenant.as_str(), user.as_str(), topic.as_str()), 1)
                    .map_err(storage_err)?;
                drop((s, us));
                touch_in(txn, &tenant, &user)?;
                let settled = floors.settled_now();
                audience::join(txn, &tenant, &user, &format!("t:{topic}"), settled)?;
                Ok(())
            })
            .await
    }

    async fn unsubscribe(&self, tenant: &str, topic: &str, user: &str) -> Result<bool> {
        let (tenant, topic, user) = (tenant.to_string(), topic.to_string(), user.to_string());
        self.engine
            .write(move |txn| {
                let mut s = txn.open_table(SUBS).map_err(storage_err)?;
                let was = s
                    .remove((tenant.as_str(), topic.as_str(), user.as_str()))
                    .map_err(storage_err)?
                    .is_some();
                let mut us = txn.open_table(USER_SUBS).map_err(storage_err)?;
                us.remove((tenant.as_str(), user.as_str(), topic.as_str()))
                    .map_err(storage_err)?;
                drop((s, us));
                if was {
                    audience::leave(txn, &tenant, &user, &format!("t:{topic}"))?;
                }
                Ok(was)
            })
            .await
    }

    async fn subscribers(
        &self,
        tenant: &str,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>> {
        self.page3(SUBS, tenant, topic, after, limit)
    }

    async fn subscriptions(&self, tenant: &str, user: &str) -> Result<Vec<String>> {
        Ok(self.page3(USER_SUBS, tenant, user, None, usize::MAX)?.items)
    }

    async fn memberships(&self, tenant: &str, user: &str) -> Result<Vec<Membership>> {
        audience::memberships(&self.engine.read()?, tenant, user)
    }
}

#[async_trait]
impl Templates for EmbeddedStore {
    async fn put_template(&self, tenant: &str, key: &str, template: &Template) -> Result<u64> {
        let (tenant, key, mut template) = (tenant.to_string(), key.to_string(), template.clone());
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(TEMPLATES).map_err(storage_err)?;
                let latest: Option<Template> = t
                    .get((tenant.as_str(), key.as_str()))
                    .map_err(storage_err)?
                    .map(|v| from_json(v.value()))
                    .transpose()?;
                let mut v = txn.open_table(TEMPLATE_VERSIONS).map_err(storage_err)?;
                if let Some(mut legacy) = latest.clone().filter(|l| l.version == 0) {
                    // saved before versions existed: keep it as version 1, for the sends
                    // accepted against it
                    legacy.version = 1;
                    v.insert(
                        (tenant.as_str(), key.as_str(), 1),
                        to_json(&legacy)?.as_slice(),
                    )
                    .map_err(storage_err)?;
                }
                template.version = latest.map_or(1, |l| l.version.max(1) + 1);
                let raw = to_json(&template)?;
                t.insert((tenant.as_str(), key.as_str()), raw.as_slice())
                    .map_err(storage_err)?;
                v.insert(
                    (tenant.as_str(), key.as_str(), template.version),
                    raw.as_slice(),
                )
                .map_err(storage_err)?;
                // keep the last TEMPLATE_VERSIONS_KEPT: a tenant saving in a loop cannot
                // fill the disk
                if let Some(old) = template.version.checked_sub(TEMPLATE_VERSIONS_KEPT) {
                    v.remove((tenant.as_str(), key.as_str(), old))
                        .map_err(storage_err)?;
                }
                Ok(template.version)
            })
            .await
    }

    async fn template(&self, tenant: &str, key: &str) -> Result<Option<Template>> {
        self.get2(TEMPLATES, tenant, key)
    }

    async fn template_version(
        &self,
        tenant: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<Template>> {
        let r = self.engine.read()?;
        let t = r.open_table(TEMPLATE_VERSIONS).map_err(storage_err)?;
        if let Some(v) = t.get((tenant, key, version)).map_err(storage_err)? {
            return from_json(v.value()).map(Some);
        }
        // a template saved before versions existed is its own version 1
        let latest: Option<Template> = self.get2(TEMPLATES, tenant, key)?;
        Ok(latest.filter(|l| l.version.max(1) == version))
    }
}

#[async_trait]
impl Idempotency for EmbeddedStore {
    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        message_id: &str,
        fingerprint: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Claim> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        let rec = IdemRecord {
            message_id: message_id.to_string(),
            at_ms: now_ms,
            fingerprint: fingerprint.to_string(),
            confirmed: false,
        };
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(IDEMPOTENCY).map_err(storage_err)?;
                let existing = IdemRecord::get(&t, &tenant, &key)?;
                if let Some(prev) = existing {
                    if now_ms - prev.at_ms < ttl_ms {
                        return Ok(Claim::Existing {
                            message_id: prev.message_id,
                            fingerprint: prev.fingerprint,
                            confirmed: prev.confirmed,
                        });
                    }
                }
                rec.put(&mut t, &tenant, &key)?;
                Ok(Claim::New)
            })
            .await
    }

    async fn confirm_idempotency(
        &self,
        tenant: &str,
        key: &str,
        message_id: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<()> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        let fresh = IdemRecord {
            message_id: message_id.to_string(),
            at_ms: now_ms,
            fingerprint: fingerprint.to_string(),
            confirmed: true,
        };
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(IDEMPOTENCY).map_err(storage_err)?;
                let rec = match IdemRecord::get(&t, &tenant, &key)? {
                    None => fresh,
                    Some(mut r) if r.message_id == fresh.message_id && !r.confirmed => {
                        r.confirmed = true;
                        r
                    }
                    Some(_) => return Ok(()),
                };
                rec.put(&mut t, &tenant, &key)?;
                Ok(())
            })
            .await
    }

    async fn release_idempotency(&self, tenant: &str, key: &str, message_id: &str) -> Result<()> {
        let (tenant, key, id) = (tenant.to_string(), key.to_string(), message_id.to_string());
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(IDEMPOTENCY).map_err(storage_err)?;
                let existing = IdemRecord::get(&t, &tenant, &key)?;
                // a confirmed binding stays: another request (a retry) got its message onto
                // the bus under this id
                if existing.is_some_and(|r| r.message_id == id && !r.confirmed) {
                    t.remove((tenant.as_str(), key.as_str()))
                        .map_err(storage_err)?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Messages for EmbeddedStore {
    async fn put_messages(&self, messages: &[MessageRecord]) -> Result<()> {
        let rows: Vec<(String, String, Vec<u8>)> = messages
            .iter()
            .map(|m| Ok((m.tenant_id.clone(), m.message_id.clone(), to_json(m)?)))
            .collect::<Result<_>>()?;
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(MESSAGES).map_err(storage_err)?;
                for (tenant, id, raw) in &rows {
                    t.insert((tenant.as_str(), id.as_str()), raw.as_slice())
                        .map_err(storage_err)?;
                }
                Ok(())
            })
            .await
    }

    async fn message(&self, tenant: &str, message_id: &str) -> Result<Option<MessageRecord>> {
        self.get2(MESSAGES, tenant, message_id)
    }

    async fn post_audience(&self, post: &AudiencePost) -> Result<u64> {
        let post = post.clone();
        let seq = post.item.seq;
        // counted before the commit: a row that commits is never above `written` (its own
        // lease's floor keeps it from showing until the write ends)
        self.floors.wrote(seq);
        let floors = self.floors.clone();
        let posted = self
            .engine
            .write(move |txn| audience::post(txn, &post, floors.stable().saturating_sub(1)))
            .await?;
        Ok(posted)
    }

    async fn audience_message(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Option<AudienceSummary>> {
        audience::summary(&self.engine.read()?, tenant, message_id)
    }
}

#[async_trait]
impl Inbox for EmbeddedStore {
    async fn append_inbox(&self, rows: &[NewInboxRow]) -> Result<Vec<u64>> {
        if rows.iter().any(|r| r.item.seq == 0) {
            return Err(Error::internal("an inbox row without a sequence"));
        }
        let rows = rows.to_vec();
        let top = rows.iter().map(|r| r.item.seq).max().unwrap_or(0);
        // counted before the commit (see `post_audience`)
        self.floors.wrote(top);
        let floors = self.floors.clone();
        let out = self
            .engine
            .write(move |txn| {
                // every row that commits after these is numbered above this (below the floor)
                let from = Some(floors.stable().saturating_sub(1));
                let mut out = Vec::with_capacity(rows.len());
                let mut new_users = Vec::new();
                let mut idx = txn.open_table(INBOX_INDEX).map_err(storage_err)?;
                let mut inbox = txn.open_table(INBOX).map_err(storage_err)?;
                let mut unread = txn.open_table(UNREAD).map_err(storage_err)?;
                let users = txn.open_table(USERS).map_err(storage_err)?;
                // check every row before writing any: a closure's writes commit even if it errs
                let mut new_ids: std::collections::HashMap<(&str, &str, &str), u64> =
                    std::collections::HashMap::new();
                let mut taken = std::collections::HashSet::new();
                let mut fresh = Vec::with_capacity(rows.len());
                for row in &rows {
                    let (t, u, id) = (
                        row.tenant_id.as_str(),
                        row.user_id.as_str(),
                        row.item.message_id.as_str(),
                    );
                    let known = match idx.get((t, u, id)).map_err(storage_err)? {
                        Some(v) => Some(v.value()),
                        None => new_ids.get(&(t, u, id)).copied(),
                    };
                    if let Some(seq) = known {
                        out.push(seq);
                        fresh.push(false);
                        continue;
                    }
                    let seq = row.item.seq;
                    if !taken.insert((t, u, seq))
                        || inbox.get((t, u, seq)).map_err(storage_err)?.is_some()
                    {
                        return Err(sequence_taken(seq));
                    }
                    new_ids.insert((t, u, id), seq);
                    out.push(seq);
                    fresh.push(true);
                }
                for (row, _) in rows.iter().zip(&fresh).filter(|(_, f)| **f) {
                    let (t, u, id) = (
                        row.tenant_id.as_str(),
                        row.user_id.as_str(),
                        row.item.message_id.as_str(),
                    );
                    let seq = row.item.seq;
                    let mut item = row.item.clone();
                    item.status = InboxStatus::Unread;
                    inbox
                        .insert((t, u, seq), to_json(&StoredRow { item, from })?.as_slice())
                        .map_err(storage_err)?;
                    idx.insert((t, u, id), seq).map_err(storage_err)?;
                    let n = unread
                        .get((t, u))
                        .map_err(storage_err)?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    unread.insert((t, u), n + 1).map_err(storage_err)?;
                    if users.get((t, u)).map_err(storage_err)?.is_none() {
                        new_users.push((t, u));
                    }
                }
                drop((idx, inbox, unread, users));
                audience::raise_top(txn, top)?;
                for (t, u) in new_users {
                    touch_in(txn, t, u)?;
                }
                Ok(out)
            })
            .await?;
        Ok(out)
    }

    async fn inbox_page(
        &self,
        tenant: &str,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InboxItem>> {
        // a message the user was pushed is on the page: wait for the rows committed before
        let stable = match self.floors.settled(PAGE_WAIT).await {
            Some(s) => s,
            None => self.floors.stable(),
        };
        let r = self.engine.read()?;
        let scan = audience::Scan {
            above: 0,
            below: before.unwrap_or(u64::MAX).min(stable),
            newest_first: true,
            unread_only: false,
            limit,
        };
        audience::scan(&r, tenant, user, scan)
    }

    async fn inbox_after(
        &self,
        tenant: &str,
        user: &str,
        after: u64,
        unread_only: bool,
        limit: usize,
    ) -> Result<Vec<InboxItem>> {
        // a resume shows every row committed before it: wait for the floor to pass them
        let stable = self.floors.settled(SETTLE_WAIT).await.ok_or_else(|| {
            Error::unavailable(
                "inbox writes are behind: the rows before this read have not all shown yet",
            )
        })?;
        let r = self.engine.read()?;
        let scan = audience::Scan {
            above: after,
            below: stable,
            newest_first: false,
            unread_only,
            limit,
        };
        audience::scan(&r, tenant, user, scan)
    }

    async fn inbox_seq(&self, tenant: &str, user: &str, message_id: &str) -> Result<Option<u64>> {
        let r = self.engine.read()?;
        let t = r.open_table(INBOX_INDEX).map_err(storage_err)?;
        if let Some(v) = t.get((tenant, user, message_id)).map_err(storage_err)? {
            return Ok(Some(v.value()));
        }
        audience::seq_of(&r, tenant, user, message_id)
    }

    async fn resume_point(
        &self,
        tenant: &str,
        user: &str,
        message_id: &str,
    ) -> Result<Option<u64>> {
        let r = self.engine.read()?;
        let idx = r.open_table(INBOX_INDEX).map_err(storage_err)?;
        if let Some(seq) = idx
            .get((tenant, user, message_id))
            .map_err(storage_err)?
            .map(|v| v.value())
        {
            let inbox = r.open_table(INBOX).map_err(storage_err)?;
            let from = match inbox.get((tenant, user, seq)).map_err(storage_err)? {
                Some(v) => from_json::<StoredRow>(v.value())?.from,
                None => None,
            };
            return Ok(Some(resume_from(seq, from)));
        }
        audience::resume_point(&r, tenant, user, message_id)
    }

    async fn unread_count(&self, tenant: &str, user: &str) -> Result<u64> {
        let r = self.engine.read()?;
        let t = r.open_table(UNREAD).map_err(storage_err)?;
        let own = t
            .get((tenant, user))
            .map_err(storage_err)?
            .map_or(0, |v| v.value());
        Ok(own + audience::unread(&r, tenant, user, u64::MAX)?)
    }

    async fn set_inbox_status(
        &self,
        tenant: &str,
        user: &str,
        ids: &[String],
        status: InboxStatus,
    ) -> Result<Vec<String>> {
        let (tenant, user, ids) = (tenant.to_string(), user.to_string(), ids.to_vec());
        self.engine
            .write(move |txn| {
                let mut settling = Settling::open(txn)?;
                let changed = settling.set_status(&tenant, &user, &ids, status)?;
                settling.finish(txn)?;
                Ok(changed)
            })
            .await
    }

    async fn settle_inapp(
        &self,
        tenant: &str,
        user: &str,
        ids: &[String],
        status: InboxStatus,
        state: DeliveryState,
    ) -> Result<Vec<String>> {
        // one write for the rows and the statuses: a batch of one
        let one = Settle {
            tenant_id: tenant.to_string(),
            user_id: user.to_string(),
            ids: ids.to_vec(),
            status,
            state,
        };
        let mut changed = self.settle_many(&[one]).await?;
        Ok(changed.pop().unwrap_or_default())
    }

    async fn settle_many(&self, batch: &[Settle]) -> Result<Vec<Vec<String>>> {
        let batch = batch.to_vec();
        self.engine
            .write(move |txn| {
                let mut settling = Settling::open(txn)?;
                let mut out = Vec::with_capacity(batch.len());
                for s in &batch {
                    let (t, u) = (s.tenant_id.as_str(), s.user_id.as_str());
                    let changed = settling.set_status(t, u, &s.ids, s.status)?;
                    let st = DeliveryStatus::inapp(u, s.state);
                    for id in &changed {
                        put_status_in(&mut settling.status, t, id, &st)?;
                    }
                    out.push(changed);
                }
                settling.finish(txn)?;
                Ok(out)
            })
            .await
    }

    async fn mark_all_read(&self, tenant: &str, user: &str) -> Result<u64> {
        // one read mark for own rows and audience messages alike, up to what reads show now:
        // rows are not rewritten
        let mark = self.floors.stable().saturating_sub(1);
        let shared = audience::unread(&self.engine.read()?, tenant, user, mark.saturating_add(1))?;
        let (tenant, user) = (tenant.to_string(), user.to_string());
        let own = self
            .engine
            .write(move |txn| {
                let (t, u) = (tenant.as_str(), user.as_str());
                // rows above the mark (numbered, not yet shown) stay unread and counted; a
                // mark never moves back
                let mark = mark.max(audience::read_mark(txn, t, u)?);
                let own = txn
                    .open_table(UNREAD)
                    .map_err(storage_err)?
                    .get((t, u))
                    .map_err(storage_err)?
                    .map_or(0, |v| v.value());
                let above = audience::recount_after(txn, t, u, mark)?;
                audience::read_all(txn, t, u, mark)?;
                Ok(own.saturating_sub(above))
            })
            .await?;
        Ok(own + shared)
    }
}

#[async_trait]
impl Sequences for EmbeddedStore {
    async fn last_seq(&self) -> Result<u64> {
        self.top()
    }

    async fn hold_floor(&self, owner: &str, floor: Option<u64>) -> Result<()> {
        {
            let mut by_owner = self.floors.by_owner.lock().unwrap();
            match floor {
                Some(f) => by_owner.insert(owner.to_string(), f),
                None => by_owner.remove(owner),
            };
        }
        self.floors.moved.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl Statuses for EmbeddedStore {
    async fn put_delivery_status(
        &self,
        tenant: &str,
        message_id: &str,
        statuses: &[DeliveryStatus],
    ) -> Result<()> {
        let (tenant, id, statuses) = (
            tenant.to_string(),
            message_id.to_string(),
            statuses.to_vec(),
        );
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(STATUS).map_err(storage_err)?;
                for s in &statuses {
                    put_status_in(&mut t, &tenant, &id, s)?;
                }
                Ok(())
            })
            .await
    }

    async fn delivery_status(
        &self,
        tenant: &str,
        message_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryStatus>> {
        // the cursor is the last (user, channel) key read, hex-encoded
        let last: Option<(String, String)> = match after {
            None => None,
            Some(c) => {
                let raw = hex::decode(c).map_err(|_| bad_cursor())?;
                let text = String::from_utf8(raw).map_err(|_| bad_cursor())?;
                let (u, ch) = text.split_once('\0').ok_or_else(bad_cursor)?;
                Some((u.to_string(), ch.to_string()))
            }
        };
        let r = self.engine.read()?;
        let t = r.open_table(STATUS).map_err(storage_err)?;
        let (u0, c0) = last
            .as_ref()
            .map_or(("", ""), |(u, c)| (u.as_str(), c.as_str()));
        let mut items = Vec::new();
        let mut next = None;
        let mut read: Option<String> = None;
        for row in t
            .range((tenant, message_id, u0, c0)..)
            .map_err(storage_err)?
        {
            let (k, v) = row.map_err(storage_err)?;
            let (kt, km, ku, kc) = k.value();
            if kt != tenant || km != message_id {
                break;
            }
            if last.is_some() && (ku, kc) == (u0, c0) {
                continue;
            }
            if items.len() == limit {
                // there is more: the next page starts after the last row read
                next = read.map(hex::encode);
                break;
            }
            items.push(from_json::<DeliveryStatus>(v.value())?);
            read = Some(format!("{ku}\0{kc}"));
        }
        Ok(Page { items, next })
    }
}

#[async_trait]
impl DeadLetters for EmbeddedStore {
    async fn dlq_put(&self, entry: &DlqEntry) -> Result<()> {
        let (tenant, id, raw) = (entry.tenant_id.clone(), entry.id.clone(), to_json(entry)?);
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(DLQ).map_err(storage_err)?;
                t.insert((tenant.as_str(), id.as_str()), raw.as_slice())
                    .map_err(storage_err)?;
                Ok(())
            })
            .await
    }

    async fn dlq_list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DlqEntry>> {
        let r = self.engine.read()?;
        let t = r.open_table(DLQ).map_err(storage_err)?;
        let start = after.unwrap_or("");
        let mut out = Vec::new();
        for row in t.range((tenant, start)..).map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let (kt, kid) = k.value();
            if kt != tenant || out.len() >= limit {
                break;
            }
            if after.is_some() && kid == start {
                continue;
            }
            out.push(from_json(v.value())?);
        }
        Ok(out)
    }

    async fn dlq_get(&self, tenant: &str, id: &str) -> Result<Option<DlqEntry>> {
        self.get2(DLQ, tenant, id)
    }

    async fn dlq_remove(&self, tenant: &str, id: &str, failed_at_ms: i64) -> Result<bool> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.engine
            .write(move |txn| {
                let mut t = txn.open_table(DLQ).map_err(storage_err)?;
                let current: Option<DlqEntry> = t
                    .get((tenant.as_str(), id.as_str()))
                    .map_err(storage_err)?
                    .map(|v| from_json(v.value()))
                    .transpose()?;
                if current.is_none_or(|e| e.failed_at_ms != failed_at_ms) {
                    return Ok(false);
                }
                t.remove((tenant.as_str(), id.as_str()))
                    .map_err(storage_err)?;
                Ok(true)
            })
            .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ready(&self) -> Result<()> {
        self.engine.ready()?;
        self.engine.read().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        tidings_core::conformance::store_conformance(&store, "c").await;
    }

    /// A row of user `u` of tenant `t` at sequence `seq`.
    fn row(id: &str, seq: u64) -> NewInboxRow {
        NewInboxRow {
            tenant_id: "t".into(),
            user_id: "u".into(),
            item: InboxItem {
                message_id: id.into(),
                seq,
                title: String::new(),
                body: String::new(),
                data: serde_json::Value::Null,
                priority: Priority::Normal,
                category: None,
                status: InboxStatus::Unread,
                created_at_ms: 0,
            },
        }
    }

    /// A store written before audiences (per-user sequences, no membership history) moves to
    /// one space above every old sequence, and its subscribers and users are members.
    #[tokio::test]
    async fn an_older_layout_is_brought_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        store.subscribe("t", "news", "u").await.unwrap();
        store
            .engine
            .write(|txn| {
                // as layout 1 left it: a per-user sequence, no members, no counter
                let mut seqs = txn.open_table(USER_SEQ).map_err(storage_err)?;
                seqs.insert(("t", "u"), 41).map_err(storage_err)?;
                let mut m = txn.open_table(audience::MEMBERS).map_err(storage_err)?;
                m.remove(("t", "u", "t:news")).map_err(storage_err)?;
                m.remove(("t", "u", "*")).map_err(storage_err)?;
                let mut meta = txn.open_table(audience::META).map_err(storage_err)?;
                meta.remove("layout").map_err(storage_err)?;
                meta.remove("seq").map_err(storage_err)?;
                Ok(())
            })
            .await
            .unwrap();
        store.engine.write(audience::init).await.unwrap();
        assert_eq!(store.last_seq().await.unwrap(), 41, "owners start above it");
        let m = store.memberships("t", "u").await.unwrap();
        assert_eq!(m.len(), 2, "member of the tenant and the topic: {m:?}");
    }

    /// A "read all" of layout 2 could leave an own row written during it unread below the read
    /// mark, counted; layout 3 reads it as read and recounts.
    #[tokio::test]
    async fn layout_2_unread_counts_are_recounted_after_the_read_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let below = store.append_inbox(&[row("below", 1)]).await.unwrap()[0];
        store.append_inbox(&[row("after", 2)]).await.unwrap();
        store
            .engine
            .write(move |txn| {
                // as layout 2 could leave it: the mark past "below", both still counted
                let mut rm = txn.open_table(audience::READ_MARK).map_err(storage_err)?;
                rm.insert(("t", "u"), below).map_err(storage_err)?;
                let mut unread = txn.open_table(UNREAD).map_err(storage_err)?;
                unread.insert(("t", "u"), 2).map_err(storage_err)?;
                let mut meta = txn.open_table(audience::META).map_err(storage_err)?;
                meta.insert("layout", 2).map_err(storage_err)?;
                Ok(())
            })
            .await
            .unwrap();
        store.engine.write(audience::init).await.unwrap();
        assert_eq!(store.unread_count("t", "u").await.unwrap(), 1);
        let changed = store
            .set_inbox_status("t", "u", &["after".to_string()], InboxStatus::Read)
            .await
            .unwrap();
        assert_eq!(changed, vec!["after".to_string()]);
        assert_eq!(store.unread_count("t", "u").await.unwrap(), 0);
    }

    /// A fresh store, shared as the router shares it, and a sequencer numbering for it (the
    /// directory lives as long as the first part is kept).
    fn sequenced() -> (
        tempfile::TempDir,
        std::sync::Arc<dyn Store>,
        std::sync::Arc<tidings_core::seq::Sequencer>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let seqs = tidings_core::seq::Sequencer::new("node-a", store.clone());
        (dir, store, seqs)
    }

    /// The ids of user `u`'s inbox page, once it holds `n` rows (the floor of a lease that
    /// ended is withdrawn by a task of its own).
    async fn page_of_n(store: &dyn Store, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let page = store.inbox_page("t", "u", None, 10).await.unwrap();
            if page.len() >= n || std::time::Instant::now() > deadline {
                return page.into_iter().map(|i| i.message_id).collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A router's sequencer over this store: each lease's floor is at the store before its
    /// sequences are used, reads wait for the oldest lease held, and rows show in sequence
    /// order whatever order they commit in.
    #[tokio::test]
    async fn leases_hold_reads_below_their_first_sequence() {
        let (_dir, store, seqs) = sequenced();
        let a = seqs.lease(1).await.unwrap();
        let b = seqs.lease(2).await.unwrap();
        let (a0, b0, b1) = (a.seq(0), b.seq(0), b.seq(1));
        assert!(a0 < b0 && b0 < b1, "{a0} {b0} {b1}");
        store
            .append_inbox(&[row("b0", b0), row("b1", b1)])
            .await
            .unwrap();
        drop(b);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let page = store.inbox_page("t", "u", None, 10).await.unwrap();
        assert!(page.is_empty(), "a's lease holds reads");
        store.append_inbox(&[row("a0", a0)]).await.unwrap();
        drop(a);
        assert_eq!(page_of_n(&*store, 3).await, vec!["b1", "b0", "a0"]);
        let c = seqs.lease(1).await.unwrap();
        assert!(c.seq(0) > b1, "a new lease starts above every one before");
        // a new sequencer of the same store (a restart) starts above what is written
        drop(c);
        let again = tidings_core::seq::Sequencer::new("node-a", store.clone());
        assert!(again.lease(1).await.unwrap().seq(0) > b1);
    }

    /// A resume shows every row committed before it: one numbered above a lease still held
    /// waits for that lease (whose row may commit after it, numbered before it) to end.
    #[tokio::test]
    async fn a_resume_waits_for_the_rows_committed_before_it() {
        let (_dir, store, seqs) = sequenced();
        let slow = seqs.lease(1).await.unwrap();
        let fast = seqs.lease(1).await.unwrap();
        store
            .append_inbox(&[row("pushed", fast.seq(0))])
            .await
            .unwrap();
        drop(fast);
        let s = store.clone();
        let resume = tokio::spawn(async move { s.inbox_after("t", "u", 0, false, 10).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!resume.is_finished(), "the resume waits for the slow lease");
        store
            .append_inbox(&[row("late", slow.seq(0))])
            .await
            .unwrap();
        drop(slow);
        let got = resume.await.unwrap().unwrap();
        let ids: Vec<&str> = got.iter().map(|i| i.message_id.as_str()).collect();
        assert_eq!(ids, vec!["late", "pushed"]);
    }

    /// A burst of sequences does not run the clock ahead: the next lease waits for the wall
    /// clock, so membership changes stamped by it order against sequences to the millisecond.
    #[tokio::test]
    async fn a_burst_waits_for_the_clock() {
        let (_dir, _store, seqs) = sequenced();
        for _ in 0..5 {
            // 3 milliseconds' worth of sequences each
            let big = seqs.lease(3 * 4096).await.unwrap();
            let next = seqs.lease(1).await.unwrap();
            assert!(next.seq(0) > big.seq(3 * 4096 - 1));
            let at = tidings_core::seq::time_of(next.seq(0));
            assert!(at <= now_ms(), "{at} ahead of {}", now_ms());
        }
    }

    /// A store written under a clock far ahead of this one (a data dir moved between machines)
    /// does not stall the sequencer: it goes on above the greatest sequence at once.
    #[tokio::test]
    async fn a_store_from_a_faster_clock_does_not_stall_numbering() {
        let (_dir, store, _) = sequenced();
        let ahead = tidings_core::seq::clock(now_ms() + 3_600_000);
        store.append_inbox(&[row("future", ahead)]).await.unwrap();
        let seqs = tidings_core::seq::Sequencer::new("node-a", store.clone());
        let quick = std::time::Duration::from_secs(1);
        for _ in 0..3 {
            let l = tokio::time::timeout(quick, seqs.lease(1)).await;
            assert!(l.expect("no wait for the clock").unwrap().seq(0) > ahead);
        }
    }

    /// Toggling a subscription with no message in between keeps one interval (the 64-interval
    /// history is not used up by toggles); a message posted in a gap still splits it, and
    /// is not the user's; a gap that an owner may still post into is not closed.
    #[tokio::test]
    async fn toggles_without_messages_keep_one_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let intervals = |store: &EmbeddedStore| {
            let r = store.engine.read().unwrap();
            let m = r.open_table(audience::MEMBERS).unwrap();
            let raw = m.get(("t", "u", "t:news")).unwrap().unwrap();
            from_json::<Vec<[u64; 2]>>(raw.value()).unwrap().len()
        };
        for _ in 0..100 {
            store.subscribe("t", "news", "u").await.unwrap();
            store.unsubscribe("t", "news", "u").await.unwrap();
        }
        assert_eq!(intervals(&store), 1);
        // a message while the user is out splits the history, and is not theirs
        let post = AudiencePost {
            tenant_id: "t".into(),
            audiences: vec![Audience::Topic("news".into())],
            listed: vec![],
            item: row("gap", tidings_core::seq::clock(now_ms())).item,
        };
        store.post_audience(&post).await.unwrap();
        store.subscribe("t", "news", "u").await.unwrap();
        assert_eq!(intervals(&store), 2);
        assert_eq!(store.inbox_seq("t", "u", "gap").await.unwrap(), None);
        // an owner holding a floor inside the gap could still post into it: a new interval
        store.unsubscribe("t", "news", "u").await.unwrap();
        let below = tidings_core::seq::clock(now_ms());
        store.hold_floor("router", Some(below)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        store.subscribe("t", "news", "u").await.unwrap();
        assert_eq!(intervals(&store), 3);
        store.hold_floor("router", None).await.unwrap();
    }

    /// A numbered write whose caller stops waiting still holds its floor until it ends: it
    /// cannot commit below rows a reader has already been shown.
    #[tokio::test]
    async fn an_abandoned_write_holds_its_floor_until_it_ends() {
        let (_dir, store, seqs) = sequenced();
        let slow = seqs.lease(1).await.unwrap();
        let (s, at) = (store.clone(), slow.seq(0));
        let write = slow.hold_until(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            s.append_inbox(&[row("slow", at)]).await
        });
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), write).await;
        assert!(gave_up.is_err(), "the caller stopped waiting");
        let fast = seqs.lease(1).await.unwrap();
        store
            .append_inbox(&[row("fast", fast.seq(0))])
            .await
            .unwrap();
        drop(fast);
        // the page waits for the abandoned write (it holds the floor below "fast"), never
        // showing "fast" without it
        let page = store.inbox_page("t", "u", None, 10).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|i| i.message_id.as_str()).collect();
        assert_eq!(ids, vec!["fast", "slow"]);
    }

    fn tpl(title: &str) -> Template {
        Template {
            inapp: InappTemplate {
                title: title.into(),
                body: String::new(),
            },
            ..Default::default()
        }
    }

    /// A template saved before versions existed (version 0) stays readable as version 1
    /// after the next save; only the last TEMPLATE_VERSIONS_KEPT versions are kept.
    #[tokio::test]
    async fn template_versions_keep_the_legacy_one_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let legacy = to_json(&tpl("legacy")).unwrap();
        store
            .engine
            .write(move |txn| {
                let mut t = txn.open_table(TEMPLATES).map_err(storage_err)?;
                t.insert(("t", "k"), legacy.as_slice())
                    .map_err(storage_err)?;
                Ok(())
            })
            .await
            .unwrap();
        let v1 = store.template_version("t", "k", 1).await.unwrap().unwrap();
        assert_eq!(v1.inapp.title, "legacy");
        assert_eq!(store.put_template("t", "k", &tpl("two")).await.unwrap(), 2);
        let v1 = store.template_version("t", "k", 1).await.unwrap().unwrap();
        assert_eq!((v1.version, v1.inapp.title.as_str()), (1, "legacy"));
        for i in 3..=TEMPLATE_VERSIONS_KEPT + 1 {
            assert_eq!(store.put_template("t", "k", &tpl("n")).await.unwrap(), i);
        }
        assert!(store.template_version("t", "k", 1).await.unwrap().is_none());
        assert!(store.template_version("t", "k", 2).await.unwrap().is_some());
    }
}
