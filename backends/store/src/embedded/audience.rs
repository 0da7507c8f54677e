//! Audiences in the embedded store: messages written once per audience, membership history,
//! and the merged view of a user's inbox (own rows and the audience messages they see).
//!
//! Tables (every key led by the tenant):
//! - `meta`: the greatest sequence written (`seq`) and the layout version (`layout`)
//! - `timeline`: `(tenant, audience key, seq)` to the message as an inbox item
//! - `audience_messages`: `(tenant, message id)` to its sequence, audiences and recipients
//! - `audience_counts`: `(tenant, message id)` to `[delivered, read]`
//! - `members`: `(tenant, user, audience key)` to the intervals `[from, to)` of sequences the
//!   user sees in that audience (`to` is `u64::MAX` while a member)
//! - `audience_size`: `(tenant, audience key)` to its member count now
//! - `marks`: `(tenant, user, seq)` to the status a user gave an audience message (sparse)
//! - `read_mark`: `(tenant, user)` to the sequence up to which every message the user has
//!   (own row or audience message) is read: "read all" writes it and nothing else
//!
//! Own rows and audience messages arrive numbered by their writer ([`tidings_core::seq`]), in
//! one time-ordered space; memberships begin and end at the clock of their write (never below
//! a sequence written before), so a message's recipients are the members when it was numbered.

use super::{from_json, inbox_rank, to_json, touch_in, INBOX, INBOX_INDEX, UNREAD, USERS};
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use std::collections::{BTreeSet, HashMap};
use tidings_core::model::{Audience, InboxItem, InboxStatus};
use tidings_core::store::{AudiencePost, AudienceSummary, Membership, UNREAD_CAP};
use tidings_core::Result;
use tidings_embedded::storage_err;

type Key2 = (&'static str, &'static str);
type Key3 = (&'static str, &'static str, &'static str);
type KeySeq = (&'static str, &'static str, u64);

pub(super) const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
pub(super) const TIMELINE: TableDefinition<'static, KeySeq, &'static [u8]> =
    TableDefinition::new("timeline");
pub(super) const AUD_MSG: TableDefinition<'static, Key2, &'static [u8]> =
    TableDefinition::new("audience_messages");
pub(super) const AUD_COUNTS: TableDefinition<'static, Key2, &'static [u8]> =
    TableDefinition::new("audience_counts");
pub(super) const MEMBERS: TableDefinition<'static, Key3, &'static [u8]> =
    TableDefinition::new("members");
pub(super) const AUD_SIZE: TableDefinition<'static, Key2, u64> =
    TableDefinition::new("audience_size");
pub(super) const MARKS: TableDefinition<'static, KeySeq, u8> = TableDefinition::new("marks");
pub(super) const READ_MARK: TableDefinition<'static, Key2, u64> = TableDefinition::new("read_mark");

/// Membership intervals kept per (user, audience); a user who joins and leaves more often
/// than this, with messages posted in between, loses sight of the messages of their oldest
/// intervals (toggles with no message in between reopen the last one, [`join`]).
const INTERVALS_KEPT: usize = 64;
/// The layout this code writes: 3 applies the read mark to own rows, 2 added audiences (1: one
/// row per recipient).
const LAYOUT: u64 = 3;

/// What `audience_messages` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct AudMsg {
    seq: u64,
    audiences: Vec<String>,
    recipients: u64,
    /// Just below the floor when it was posted: where a resume after it starts (messages
    /// posted by earlier versions have none: their sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
}

/// Create the tables, and bring a store written by an earlier version to this layout: from
/// layout 1, the counter starts after every per-user sequence, and existing subscribers, tag
/// holders and users are members from the start; from layout 2, own-row unread counts are
/// recounted after each user's read mark.
pub(super) fn init(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(TIMELINE).map_err(storage_err)?;
    txn.open_table(AUD_MSG).map_err(storage_err)?;
    txn.open_table(AUD_COUNTS).map_err(storage_err)?;
    txn.open_table(MEMBERS).map_err(storage_err)?;
    txn.open_table(AUD_SIZE).map_err(storage_err)?;
    txn.open_table(MARKS).map_err(storage_err)?;
    txn.open_table(READ_MARK).map_err(storage_err)?;
    let layout = {
        let meta = txn.open_table(META).map_err(storage_err)?;
        let v = meta.get("layout").map_err(storage_err)?.map(|v| v.value());
        v
    };
    if layout.is_some_and(|l| l >= LAYOUT) {
        return Ok(());
    }
    if layout.is_none_or(|l| l < 2) {
        to_layout_2(txn)?;
    }
    recount_unread(txn)?;
    let mut meta = txn.open_table(META).map_err(storage_err)?;
    meta.insert("layout", LAYOUT).map_err(storage_err)?;
    Ok(())
}

/// Layout 3: own rows up to a user's read mark read as read, so only the unread rows after it
/// count. (A "read all" of layout 2 rewrote rows it had listed in an earlier read, so a row
/// written meanwhile could stay unread below the mark, counted.)
fn recount_unread(txn: &WriteTransaction) -> Result<()> {
    let marked: Vec<(String, String, u64)> = {
        let rm = txn.open_table(READ_MARK).map_err(storage_err)?;
        let mut out = Vec::new();
        for row in rm.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let (t, u) = k.value();
            out.push((t.to_string(), u.to_string(), v.value()));
        }
        out
    };
    for (t, u, mark) in &marked {
        recount_after(txn, t, u, *mark)?;
    }
    Ok(())
}

/// Set the user's count of unread own rows to those after `mark` (the ones up to it read as
/// read); returns the count.
pub(super) fn recount_after(txn: &WriteTransaction, t: &str, u: &str, mark: u64) -> Result<u64> {
    let mut n = 0u64;
    {
        let inbox = txn.open_table(INBOX).map_err(storage_err)?;
        for row in inbox
            .range((t, u, mark.saturating_add(1))..=(t, u, u64::MAX))
            .map_err(storage_err)?
        {
            let (_, v) = row.map_err(storage_err)?;
            if from_json::<InboxItem>(v.value())?.status.is_unread() {
                n += 1;
            }
        }
    }
    let mut unread = txn.open_table(UNREAD).map_err(storage_err)?;
    if n == 0 {
        unread.remove((t, u)).map_err(storage_err)?;
    } else {
        unread.insert((t, u), n).map_err(storage_err)?;
    }
    Ok(n)
}

/// Layout 2: one counter above every per-user sequence; members from the start.
fn to_layout_2(txn: &WriteTransaction) -> Result<()> {
    let mut top = 0u64;
    {
        let seqs = txn.open_table(super::USER_SEQ).map_err(storage_err)?;
        for row in seqs.iter().map_err(storage_err)? {
            let (_, v) = row.map_err(storage_err)?;
            top = top.max(v.value());
        }
    }
    let mut joins: Vec<(String, String, String)> = Vec::new();
    for (def, prefix) in [(super::SUBS, "t:"), (super::TAGS, "g:")] {
        let t = txn.open_table(def).map_err(storage_err)?;
        for row in t.iter().map_err(storage_err)? {
            let (k, _) = row.map_err(storage_err)?;
            let (tenant, name, user) = k.value();
            joins.push((tenant.into(), user.into(), format!("{prefix}{name}")));
        }
    }
    {
        let users = txn.open_table(USERS).map_err(storage_err)?;
        for row in users.iter().map_err(storage_err)? {
            let (k, _) = row.map_err(storage_err)?;
            let (tenant, user) = k.value();
            joins.push((tenant.into(), user.into(), "*".into()));
        }
    }
    raise_top(txn, top)?;
    for (t, u, key) in &joins {
        join_at(txn, t, u, key, 0, 0)?;
    }
    Ok(())
}

/// The user's read mark in a write.
pub(super) fn read_mark(txn: &WriteTransaction, t: &str, u: &str) -> Result<u64> {
    read_mark_of(&txn.open_table(READ_MARK).map_err(storage_err)?, t, u)
}

/// The user's read mark: every message (own row or audience message) up to it is read.
fn read_mark_of(rm: &impl ReadableTable<Key2, u64>, t: &str, u: &str) -> Result<u64> {
    Ok(rm
        .get((t, u))
        .map_err(storage_err)?
        .map_or(0, |v| v.value()))
}

/// The greatest sequence written, in `meta`.
pub(super) fn top_of(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64> {
    Ok(meta
        .get("seq")
        .map_err(storage_err)?
        .map_or(0, |v| v.value()))
}

/// The greatest sequence written.
fn top(txn: &WriteTransaction) -> Result<u64> {
    top_of(&txn.open_table(META).map_err(storage_err)?)
}

/// Note that sequences up to `seq` are written.
pub(super) fn raise_top(txn: &WriteTransaction, seq: u64) -> Result<()> {
    if seq > top(txn)? {
        let mut meta = txn.open_table(META).map_err(storage_err)?;
        meta.insert("seq", seq).map_err(storage_err)?;
    }
    Ok(())
}

/// Where a membership changed now begins or ends: the clock, and above every sequence
/// written (a message numbered before the change, committed after it, is not the new
/// member's; one numbered after it is).
fn now_stamp(txn: &WriteTransaction) -> Result<u64> {
    Ok(tidings_core::seq::clock(tidings_core::model::now_ms()).max(top(txn)? + 1))
}

fn intervals(raw: Option<&[u8]>) -> Result<Vec<[u64; 2]>> {
    raw.map(from_json)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The user's intervals in audience `key` (none when never a member).
fn intervals_at(
    m: &impl ReadableTable<Key3, &'static [u8]>,
    t: &str,
    u: &str,
    key: &str,
) -> Result<Vec<[u64; 2]>> {
    let raw = m
        .get((t, u, key))
        .map_err(storage_err)?
        .map(|v| v.value().to_vec());
    intervals(raw.as_deref())
}

/// Make the user a member of `key` from now on; false if they were one. `settled`: no owner
/// may still write a sequence below it. When the gap since the user left holds no message of
/// the audience and is settled (nothing can still be posted into it), the last interval is
/// reopened instead of a new one opened: a user who subscribes and unsubscribes again and
/// again between messages keeps one interval, not one per toggle.
pub(super) fn join(
    txn: &WriteTransaction,
    t: &str,
    u: &str,
    key: &str,
    settled: u64,
) -> Result<bool> {
    let from = now_stamp(txn)?;
    join_at(txn, t, u, key, from, settled)
}

/// [`join`] from sequence `from`.
fn join_at(
    txn: &WriteTransaction,
    t: &str,
    u: &str,
    key: &str,
    from: u64,
    settled: u64,
) -> Result<bool> {
    let mut m = txn.open_table(MEMBERS).map_err(storage_err)?;
    let mut iv = intervals_at(&m, t, u, key)?;
    match iv.last_mut() {
        Some(last) if last[1] == u64::MAX => return Ok(false),
        Some(last) if from <= settled && empty_gap(txn, t, key, last[1], from)? => {
            last[1] = u64::MAX;
        }
        _ => {
            iv.push([from, u64::MAX]);
            if iv.len() > INTERVALS_KEPT {
                iv.remove(0);
            }
        }
    }
    m.insert((t, u, key), to_json(&iv)?.as_slice())
        .map_err(storage_err)?;
    drop(m);
    add_size(txn, t, key, 1)?;
    Ok(true)
}

/// Whether audience `key` has no message with a sequence in `[from, to)`.
fn empty_gap(txn: &WriteTransaction, t: &str, key: &str, from: u64, to: u64) -> Result<bool> {
    let tl = txn.open_table(TIMELINE).map_err(storage_err)?;
    let empty = tl
        .range((t, key, from)..(t, key, to))
        .map_err(storage_err)?
        .next()
        .is_none();
    Ok(empty)
}

/// End the user's membership of `key`: messages posted from now on are not theirs; false if
/// they were not a member.
pub(super) fn leave(txn: &WriteTransaction, t: &str, u: &str, key: &str) -> Result<bool> {
    let to = now_stamp(txn)?;
    let mut m = txn.open_table(MEMBERS).map_err(storage_err)?;
    let mut iv = intervals_at(&m, t, u, key)?;
    match iv.last_mut() {
        Some(last) if last[1] == u64::MAX => last[1] = to,
        _ => return Ok(false),
    }
    // an interval that saw nothing is dropped
    iv.retain(|i| i[0] < i[1]);
    m.insert((t, u, key), to_json(&iv)?.as_slice())
        .map_err(storage_err)?;
    drop(m);
    add_size(txn, t, key, -1)?;
    Ok(true)
}

fn add_size(txn: &WriteTransaction, t: &str, key: &str, delta: i64) -> Result<()> {
    let mut s = txn.open_table(AUD_SIZE).map_err(storage_err)?;
    let cur = s
        .get((t, key))
        .map_err(storage_err)?
        .map_or(0, |v| v.value());
    s.insert((t, key), (cur as i64 + delta).max(0) as u64)
        .map_err(storage_err)?;
    Ok(())
}

/// Write an audience message once (see [`tidings_core::store::Messages::post_audience`]);
/// every message that commits after it is numbered above `from` (just below the floor).
pub(super) fn post(txn: &WriteTransaction, p: &AudiencePost, from: u64) -> Result<u64> {
    let (t, id) = (p.tenant_id.as_str(), p.item.message_id.as_str());
    {
        let am = txn.open_table(AUD_MSG).map_err(storage_err)?;
        let known = am
            .get((t, id))
            .map_err(storage_err)?
            .map(|v| from_json::<AudMsg>(v.value()))
            .transpose()?;
        if let Some(m) = known {
            return Ok(m.seq);
        }
    }
    let seq = p.item.seq;
    if seq == 0 {
        return Err(tidings_core::Error::internal(
            "an audience message without a sequence",
        ));
    }
    let mut item = p.item.clone();
    item.status = InboxStatus::Unread;
    let raw = to_json(&item)?;
    let keys: Vec<String> = p.audiences.iter().map(Audience::key).collect();
    let mut listed: Vec<&String> = p.listed.iter().collect();
    listed.sort();
    listed.dedup();
    // check before writing anything: a closure's writes commit even if it errs
    let mut fresh = Vec::with_capacity(listed.len());
    {
        let tl = txn.open_table(TIMELINE).map_err(storage_err)?;
        for key in &keys {
            if tl
                .get((t, key.as_str(), seq))
                .map_err(storage_err)?
                .is_some()
            {
                return Err(super::sequence_taken(seq));
            }
        }
        let idx = txn.open_table(INBOX_INDEX).map_err(storage_err)?;
        let inbox = txn.open_table(INBOX).map_err(storage_err)?;
        for u in listed {
            if idx.get((t, u.as_str(), id)).map_err(storage_err)?.is_some() {
                continue;
            }
            if inbox
                .get((t, u.as_str(), seq))
                .map_err(storage_err)?
                .is_some()
            {
                return Err(super::sequence_taken(seq));
            }
            fresh.push(u);
        }
    }
    let mut recipients = 0;
    {
        let mut tl = txn.open_table(TIMELINE).map_err(storage_err)?;
        let sizes = txn.open_table(AUD_SIZE).map_err(storage_err)?;
        for key in &keys {
            tl.insert((t, key.as_str(), seq), raw.as_slice())
                .map_err(storage_err)?;
            recipients += sizes
                .get((t, key.as_str()))
                .map_err(storage_err)?
                .map_or(0, |v| v.value());
        }
    }
    if !fresh.is_empty() {
        let own_raw = to_json(&super::StoredRow {
            item: item.clone(),
            from: Some(from),
        })?;
        {
            let mut idx = txn.open_table(INBOX_INDEX).map_err(storage_err)?;
            let mut inbox = txn.open_table(INBOX).map_err(storage_err)?;
            let mut unread = txn.open_table(UNREAD).map_err(storage_err)?;
            for u in &fresh {
                idx.insert((t, u.as_str(), id), seq).map_err(storage_err)?;
                inbox
                    .insert((t, u.as_str(), seq), own_raw.as_slice())
                    .map_err(storage_err)?;
                let n = unread
                    .get((t, u.as_str()))
                    .map_err(storage_err)?
                    .map_or(0, |v| v.value());
                unread.insert((t, u.as_str()), n + 1).map_err(storage_err)?;
            }
        }
        recipients += fresh.len() as u64;
        for u in fresh {
            touch_in(txn, t, u)?;
        }
    }
    let mut am = txn.open_table(AUD_MSG).map_err(storage_err)?;
    let m = AudMsg {
        seq,
        audiences: keys,
        recipients,
        from: Some(from),
    };
    am.insert((t, id), to_json(&m)?.as_slice())
        .map_err(storage_err)?;
    drop(am);
    raise_top(txn, seq)?;
    Ok(seq)
}

/// The audience message `id`, if the user was a member of one of its audiences when it was
/// posted.
fn visible(r: &ReadTransaction, t: &str, u: &str, id: &str) -> Result<Option<AudMsg>> {
    let am = r.open_table(AUD_MSG).map_err(storage_err)?;
    let members = r.open_table(MEMBERS).map_err(storage_err)?;
    let Some(v) = am.get((t, id)).map_err(storage_err)? else {
        return Ok(None);
    };
    let m: AudMsg = from_json(v.value())?;
    Ok(member_at(&members, t, u, &m.audiences, m.seq)?.then_some(m))
}

/// Whether the user was a member of one of `audiences` when `seq` was posted.
fn member_at(
    members: &impl ReadableTable<Key3, &'static [u8]>,
    t: &str,
    u: &str,
    audiences: &[String],
    seq: u64,
) -> Result<bool> {
    for key in audiences {
        let iv = intervals_at(members, t, u, key)?;
        if iv.iter().any(|i| i[0] <= seq && seq < i[1]) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where a resume after audience message `id` starts, if the user sees it.
pub(super) fn resume_point(r: &ReadTransaction, t: &str, u: &str, id: &str) -> Result<Option<u64>> {
    Ok(visible(r, t, u, id)?.map(|m| super::resume_from(m.seq, m.from)))
}

/// The sequence of audience message `id` in the user's inbox, if they see it.
pub(super) fn seq_of(r: &ReadTransaction, t: &str, u: &str, id: &str) -> Result<Option<u64>> {
    Ok(visible(r, t, u, id)?.map(|m| m.seq))
}

/// The status of the audience message at `seq` for a user: their mark, or read below their
/// read mark, or unread.
fn status_of(mark: Option<u8>, seq: u64, read_mark: u64) -> InboxStatus {
    let marked = match mark {
        Some(1) => InboxStatus::Delivered,
        Some(2) => InboxStatus::Read,
        Some(3) => InboxStatus::Deleted,
        _ => InboxStatus::Unread,
    };
    seen_as(marked, seq, read_mark)
}

/// The status a user sees of a message at `seq` stored as `stored` (an own row's status, an
/// audience message's mark): read when the user's read mark ("read all") is at or past it.
pub(super) fn seen_as(stored: InboxStatus, seq: u64, read_mark: u64) -> InboxStatus {
    if seq <= read_mark && stored < InboxStatus::Read {
        InboxStatus::Read
    } else {
        stored
    }
}

/// Acks and reads of audience messages counted in one write transaction, per (tenant,
/// message id): `[delivered, read]`, added to `audience_counts` once at its end
/// ([`add_counts`]), so a thousand acks of one message rewrite its counts once.
type Counts = std::collections::BTreeMap<(String, String), [u64; 2]>;

/// Add what a transaction counted to the messages' counts.
fn add_counts(txn: &WriteTransaction, counts: Counts) -> Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(AUD_COUNTS).map_err(storage_err)?;
    for ((tenant, id), d) in counts {
        let mut c: [u64; 2] = t
            .get((tenant.as_str(), id.as_str()))
            .map_err(storage_err)?
            .map(|v| from_json(v.value()))
            .transpose()?
            .unwrap_or_default();
        c[0] += d[0];
        c[1] += d[1];
        t.insert((tenant.as_str(), id.as_str()), to_json(&c)?.as_slice())
            .map_err(storage_err)?;
    }
    Ok(())
}

/// The audience side of acks and reads in one write: the tables opened once, each audience
/// message decoded once, and the counts added once at [`Marks::finish`]. A fan-out's acks
/// arrive together, so one write carries thousands of users acking the same message.
pub(super) struct Marks<'t> {
    read_mark: Table<'t, Key2, u64>,
    am: Table<'t, Key2, &'static [u8]>,
    members: Table<'t, Key3, &'static [u8]>,
    marks: Table<'t, KeySeq, u8>,
    /// Audience messages looked up in this write, by `tenant \0 id`: sequence and audiences.
    known: HashMap<String, Option<(u64, Vec<String>)>>,
    key: String,
    counts: Counts,
}

impl<'t> Marks<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Marks<'t>> {
        Ok(Marks {
            read_mark: txn.open_table(READ_MARK).map_err(storage_err)?,
            am: txn.open_table(AUD_MSG).map_err(storage_err)?,
            members: txn.open_table(MEMBERS).map_err(storage_err)?,
            marks: txn.open_table(MARKS).map_err(storage_err)?,
            known: HashMap::new(),
            key: String::new(),
            counts: Counts::new(),
        })
    }

    /// The user's read mark: every message (own or audience) up to it is read.
    pub(super) fn read_mark(&self, t: &str, u: &str) -> Result<u64> {
        read_mark_of(&self.read_mark, t, u)
    }

    /// Move the audience messages `ids` the user sees forward to `status` (sparse marks), for
    /// a user whose read mark is `read_mark`; returns the ids that changed.
    pub(super) fn set_status(
        &mut self,
        t: &str,
        u: &str,
        ids: &[&String],
        status: InboxStatus,
        read_mark: u64,
    ) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for id in ids {
            self.key.clear();
            self.key.push_str(t);
            self.key.push('\0');
            self.key.push_str(id);
            if !self.known.contains_key(self.key.as_str()) {
                let m = match self.am.get((t, id.as_str())).map_err(storage_err)? {
                    Some(v) => {
                        let m: AudMsg = from_json(v.value())?;
                        Some((m.seq, m.audiences))
                    }
                    None => None,
                };
                self.known.insert(self.key.clone(), m);
            }
            let Some((seq, audiences)) = &self.known[self.key.as_str()] else {
                continue;
            };
            let seq = *seq;
            if !member_at(&self.members, t, u, audiences, seq)? {
                continue;
            }
            let mark = self
                .marks
                .get((t, u, seq))
                .map_err(storage_err)?
                .map(|v| v.value());
            let before = status_of(mark, seq, read_mark);
            if inbox_rank(status) <= inbox_rank(before) {
                continue;
            }
            self.marks
                .insert((t, u, seq), inbox_rank(status))
                .map_err(storage_err)?;
            if status != InboxStatus::Deleted {
                let c = self
                    .counts
                    .entry((t.to_string(), id.to_string()))
                    .or_default();
                if before == InboxStatus::Unread {
                    c[0] += 1;
                }
                if status == InboxStatus::Read {
                    c[1] += 1;
                }
            }
            changed.push(id.to_string());
        }
        Ok(changed)
    }

    /// Close the tables and add what was counted to the messages' counts.
    pub(super) fn finish(self, txn: &WriteTransaction) -> Result<()> {
        let counts = self.counts;
        add_counts(txn, counts)
    }
}

/// Set the user's read mark to `mark` (one write): own rows and audience messages up to it
/// read as read. A mark never moves back.
pub(super) fn read_all(txn: &WriteTransaction, t: &str, u: &str, mark: u64) -> Result<()> {
    let mut rm = txn.open_table(READ_MARK).map_err(storage_err)?;
    if mark > read_mark_of(&rm, t, u)? {
        rm.insert((t, u), mark).map_err(storage_err)?;
    }
    Ok(())
}

/// The audiences of a message and its counts.
pub(super) fn summary(r: &ReadTransaction, t: &str, id: &str) -> Result<Option<AudienceSummary>> {
    let am = r.open_table(AUD_MSG).map_err(storage_err)?;
    let Some(v) = am.get((t, id)).map_err(storage_err)? else {
        return Ok(None);
    };
    let m: AudMsg = from_json(v.value())?;
    let counts = r.open_table(AUD_COUNTS).map_err(storage_err)?;
    let c: [u64; 2] = counts
        .get((t, id))
        .map_err(storage_err)?
        .map(|v| from_json(v.value()))
        .transpose()?
        .unwrap_or_default();
    Ok(Some(AudienceSummary {
        audiences: m
            .audiences
            .iter()
            .filter_map(|k| Audience::from_key(k))
            .collect(),
        seq: m.seq,
        recipients: m.recipients,
        delivered: c[0],
        read: c[1],
    }))
}

/// Every audience the user has been in, with the intervals they see.
fn history(r: &ReadTransaction, t: &str, u: &str) -> Result<Vec<(String, Vec<[u64; 2]>)>> {
    let m = r.open_table(MEMBERS).map_err(storage_err)?;
    let mut out = Vec::new();
    for row in m.range((t, u, "")..).map_err(storage_err)? {
        let (k, v) = row.map_err(storage_err)?;
        let (kt, ku, key) = k.value();
        if kt != t || ku != u {
            break;
        }
        out.push((key.to_string(), intervals(Some(v.value()))?));
    }
    Ok(out)
}

/// The audiences the user is in now.
pub(super) fn memberships(r: &ReadTransaction, t: &str, u: &str) -> Result<Vec<Membership>> {
    Ok(history(r, t, u)?
        .into_iter()
        .filter_map(|(key, iv)| {
            let last = iv.last()?;
            (last[1] == u64::MAX).then_some(())?;
            Some(Membership {
                audience: Audience::from_key(&key)?,
                since_seq: last[0],
            })
        })
        .collect())
}

/// What part of a user's merged inbox to read.
pub(super) struct Scan {
    /// Sequences strictly between these.
    pub above: u64,
    pub below: u64,
    pub newest_first: bool,
    pub unread_only: bool,
    pub limit: usize,
}

type Range = redb::Range<'static, KeySeq, &'static [u8]>;

/// Read the user's own rows and the audience messages they see, merged by sequence, each
/// once (an own row wins over the audience copy of the same message), deleted ones skipped.
pub(super) fn scan(r: &ReadTransaction, t: &str, u: &str, s: Scan) -> Result<Vec<InboxItem>> {
    let mut out = Vec::new();
    if s.above == u64::MAX || s.above + 1 >= s.below || s.limit == 0 {
        return Ok(out);
    }
    let (lo, hi) = (s.above + 1, s.below);
    let inbox = r.open_table(INBOX).map_err(storage_err)?;
    let tl = r.open_table(TIMELINE).map_err(storage_err)?;
    let marks = r.open_table(MARKS).map_err(storage_err)?;
    let read_mark = read_mark_of(&r.open_table(READ_MARK).map_err(storage_err)?, t, u)?;
    // (range, own)
    let mut sources: Vec<(Range, bool)> = vec![(
        inbox.range((t, u, lo)..(t, u, hi)).map_err(storage_err)?,
        true,
    )];
    for (key, iv) in history(r, t, u)? {
        for i in iv {
            let (a, b) = (lo.max(i[0]), hi.min(i[1]));
            if a < b {
                sources.push((
                    tl.range((t, key.as_str(), a)..(t, key.as_str(), b))
                        .map_err(storage_err)?,
                    false,
                ));
            }
        }
    }
    let step = |r: &mut Range| -> Result<Option<(u64, Vec<u8>)>> {
        let next = if s.newest_first {
            r.next_back()
        } else {
            r.next()
        };
        next.transpose()
            .map_err(storage_err)
            .map(|o| o.map(|(k, v)| (k.value().2, v.value().to_vec())))
    };
    let mut heads: Vec<Option<(u64, Vec<u8>)>> = Vec::with_capacity(sources.len());
    for (range, _) in sources.iter_mut() {
        heads.push(step(range)?);
    }
    loop {
        let best = heads.iter().flatten().map(|(seq, _)| *seq).reduce(|a, b| {
            if s.newest_first {
                a.max(b)
            } else {
                a.min(b)
            }
        });
        let Some(seq) = best else { break };
        // take every head at this sequence (one message in several audiences), own first
        let mut taken: Option<(Vec<u8>, bool)> = None;
        for (i, head) in heads.iter_mut().enumerate() {
            if head.as_ref().is_some_and(|(q, _)| *q == seq) {
                let (_, raw) = head.take().expect("checked");
                let own = sources[i].1;
                if taken.as_ref().is_none_or(|(_, o)| own && !*o) {
                    taken = Some((raw, own));
                }
                *head = step(&mut sources[i].0)?;
            }
        }
        let Some((raw, own)) = taken else { break };
        let mut item: InboxItem = from_json(&raw)?;
        item.status = if own {
            seen_as(item.status, seq, read_mark)
        } else {
            let mark = marks
                .get((t, u, seq))
                .map_err(storage_err)?
                .map(|v| v.value());
            status_of(mark, seq, read_mark)
        };
        if item.status == InboxStatus::Deleted || (s.unread_only && !item.status.is_unread()) {
            continue;
        }
        out.push(item);
        if out.len() >= s.limit {
            break;
        }
    }
    Ok(out)
}

/// Unread audience messages the user sees (not counting own rows) below sequence `below`, up
/// to [`UNREAD_CAP`].
pub(super) fn unread(r: &ReadTransaction, t: &str, u: &str, below: u64) -> Result<u64> {
    let read_mark = read_mark_of(&r.open_table(READ_MARK).map_err(storage_err)?, t, u)?;
    let tl = r.open_table(TIMELINE).map_err(storage_err)?;
    let marks = r.open_table(MARKS).map_err(storage_err)?;
    let inbox = r.open_table(INBOX).map_err(storage_err)?;
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    for (key, iv) in history(r, t, u)? {
        for i in iv.iter().rev() {
            let from = i[0].max(read_mark.saturating_add(1));
            let to = i[1].min(below);
            if from >= to {
                continue;
            }
            for row in tl
                .range((t, key.as_str(), from)..(t, key.as_str(), to))
                .map_err(storage_err)?
                .rev()
            {
                let (k, _) = row.map_err(storage_err)?;
                let seq = k.value().2;
                if seen.contains(&seq) {
                    continue;
                }
                let mark = marks
                    .get((t, u, seq))
                    .map_err(storage_err)?
                    .map(|v| v.value());
                if !status_of(mark, seq, read_mark).is_unread()
                    || inbox.get((t, u, seq)).map_err(storage_err)?.is_some()
                {
                    continue;
                }
                seen.insert(seq);
                if seen.len() as u64 >= UNREAD_CAP {
                    return Ok(UNREAD_CAP);
                }
            }
        }
    }
    Ok(seen.len() as u64)
}
