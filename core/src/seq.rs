//! Inbox sequences, assigned by the process that writes the rows, not by the store.
//!
//! A store shared by several routers cannot hand out sequences from one counter without a read
//! (or a lightweight transaction) before every write. So each writing process is an *owner*
//! with a [`Sequencer`]: a hybrid clock that gives sequences ordered by time, unique to the
//! owner, and never smaller than one it gave before.
//!
//! A sequence is `ms << 22 | counter << 10 | owner`: milliseconds since 2024-01-01, a counter
//! within the millisecond (4,096 a millisecond; a lease that would start past the current
//! millisecond waits for it, so while the wall clock keeps up the sequencer's runs ahead of it
//! by one lease at most; it never goes back), and ten bits naming the owner (a hash of its name). Sequences taken in
//! order by one owner grow; sequences of two owners compare by time. They are above 2^53:
//! JavaScript clients read them as BigInt or not at all.
//!
//! **The floor.** Owners commit out of order: a row taken at sequence 100 may commit after one
//! taken at 101, by the same owner on another lane or by another owner. A reader that saw 101
//! and resumes after it would never see 100. So before an owner writes, it tells the store the
//! lowest sequence it may still write, its *floor*
//! ([`hold_floor`](crate::store::Sequences::hold_floor)), and inbox reads
//! and resumes stop below the lowest floor of all owners: a row shows only once nothing can
//! commit below it. Pushes do not wait for it (a client drops a repeat by message id).
//!
//! Each [`Lease`] is a run of sequences for one write; the sequencer's floor is the first
//! sequence of its oldest lease still held, published when it changes. A lease is held until
//! the write it numbers has committed or failed ([`Lease::hold_until`]): a write abandoned by a
//! cancelled caller still holds the floor until it ends.

use crate::store::Store;
use crate::Result;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// 2024-01-01T00:00:00Z, where sequence time starts.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
/// Bits below the milliseconds: a 12-bit counter and a 10-bit owner.
const MS_SHIFT: u32 = 22;
const OWNER_BITS: u32 = 10;
/// The counter's bits within a clock unit (`seq >> OWNER_BITS`): 4,096 per millisecond.
const UNITS_PER_MS_MASK: u64 = (1 << (MS_SHIFT - OWNER_BITS)) - 1;
const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
/// Ahead of the wall clock by more than a second, the clock is what is behind (a store
/// written under a faster clock, a step back): the sequencer goes on instead of waiting.
const MAX_WAIT_UNITS: u64 = 1000 << (MS_SHIFT - OWNER_BITS);

/// The smallest sequence of millisecond `now_ms` (wall clock): every sequence an owner takes at
/// or after that moment is at least this.
pub fn clock(now_ms: i64) -> u64 {
    ((now_ms - EPOCH_MS).max(0) as u64) << MS_SHIFT
}

/// The wall-clock milliseconds a sequence was taken at (its clock may have run a little ahead).
pub fn time_of(seq: u64) -> i64 {
    (seq >> MS_SHIFT) as i64 + EPOCH_MS
}

/// What the store holds of this owner's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Published {
    /// Not known: a publish failed (the store may keep an older floor, or have taken it).
    #[default]
    Unknown,
    /// The store has this floor (`None`: no floor).
    Known(Option<u64>),
}

/// What the sequencer tracks.
#[derive(Default)]
struct State {
    /// The last clock unit (`seq >> OWNER_BITS`) given out; `None` until read from the store.
    last_unit: Option<u64>,
    /// The latest wall-clock unit seen: a wall clock below it stepped back.
    wall_unit: u64,
    /// First sequence of each lease held.
    held: BTreeSet<u64>,
    /// The floor the store has (or is being told). A lease is handed out without publishing
    /// only while a floor is there, since every later sequence is above it.
    published: Published,
}

/// One owner's sequences (see the module doc).
pub struct Sequencer {
    owner: String,
    bits: u64,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Serialises publishing the floor.
    gate: tokio::sync::Mutex<()>,
}

impl Sequencer {
    /// The sequencer of owner `owner` (unique among the processes writing to `store`: the node
    /// id), publishing its floor to `store`.
    pub fn new(owner: &str, store: Arc<dyn Store>) -> Arc<Sequencer> {
        // FNV-1a: the same owner keeps its bits across restarts
        let hash = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Arc::new(Sequencer {
            owner: owner.to_string(),
            bits: hash & ((1 << OWNER_BITS) - 1),
            store,
            state: Mutex::default(),
            gate: tokio::sync::Mutex::new(()),
        })
    }

    /// `n` fresh sequences for one write, greater than every one this owner gave before, with
    /// the floor below them published.
    pub async fn lease(self: &Arc<Self>, n: usize) -> Result<Lease> {
        loop {
            // with a floor at the store, at once (or after the clock catches up)
            let fast = {
                let mut s = self.state.lock().unwrap();
                matches!(s.published, Published::Known(Some(_))).then(|| self.take_in(&mut s, n))
            };
            match fast {
                Some(Some(l)) => return Ok(l),
                Some(None) => {
                    tokio::time::sleep(AHEAD_WAIT).await;
                    continue;
                }
                None => {}
            }
            // no floor at the store: publish one before any sequence above it is used
            let _gate = self.gate.lock().await;
            if self.state.lock().unwrap().last_unit.is_none() {
                let last = self.store.last_seq().await?;
                let mut s = self.state.lock().unwrap();
                let unit = s.last_unit.unwrap_or(0).max(last >> OWNER_BITS);
                s.last_unit = Some(unit);
            }
            // the floor goes to the store before the lease is numbered: a reader of floors
            // (a join deciding whether a gap is settled) never misses a number being taken
            let floor = {
                let mut s = self.state.lock().unwrap();
                if matches!(s.published, Published::Known(Some(_))) {
                    continue;
                }
                match self.next_unit(&mut s) {
                    None => None,
                    Some(lowest) => {
                        // numbers from here on are at or above this; the oldest lease held
                        // (one left over from a publish that failed) may be lower
                        let at = (lowest << OWNER_BITS) | self.bits;
                        Some(s.held.first().map_or(at, |h| at.min(*h)))
                    }
                }
            };
            let Some(floor) = floor else {
                tokio::time::sleep(AHEAD_WAIT).await;
                continue;
            };
            if let Err(e) = self.store.hold_floor(&self.owner, Some(floor)).await {
                // the store may have taken it: publish again (nothing is numbered under it)
                self.state.lock().unwrap().published = Published::Unknown;
                tokio::spawn(self.clone().publish());
                return Err(e);
            }
            let mut s = self.state.lock().unwrap();
            s.published = Published::Known(Some(floor));
            // the clock was checked above: number at or above the published floor now
            return Ok(self.number(&mut s, floor >> OWNER_BITS, n));
        }
    }

    /// A lease, unless it would start past the current millisecond (the leases before it used
    /// this one's counter up): then `None`, and the caller waits for the clock. So the clock
    /// runs ahead of the wall clock by one lease at most, and a membership change stamped by
    /// the wall clock is ordered against every sequence to the millisecond. After the wall
    /// clock stepped back, or when it is more than a second behind, the sequencer goes on from
    /// where it was instead of waiting.
    fn take_in(self: &Arc<Self>, s: &mut State, n: usize) -> Option<Lease> {
        let unit = self.next_unit(s)?;
        Some(self.number(s, unit, n))
    }

    /// The unit the next lease starts at, or `None` while it must wait for the clock.
    fn next_unit(&self, s: &mut State) -> Option<u64> {
        let now_unit = clock(crate::model::now_ms()) >> OWNER_BITS;
        let stepped_back = now_unit < s.wall_unit;
        s.wall_unit = s.wall_unit.max(now_unit);
        let unit = s.last_unit.map_or(now_unit, |l| (l + 1).max(now_unit));
        let ahead = unit.saturating_sub(now_unit | UNITS_PER_MS_MASK);
        if ahead > 0 && ahead < MAX_WAIT_UNITS && !stepped_back {
            return None;
        }
        Some(unit)
    }

    /// Number a lease of `n` from unit `at_least` or the next free one, whichever is later.
    fn number(self: &Arc<Self>, s: &mut State, at_least: u64, n: usize) -> Lease {
        let now_unit = clock(crate::model::now_ms()) >> OWNER_BITS;
        let unit = s
            .last_unit
            .map_or(now_unit, |l| (l + 1).max(now_unit))
            .max(at_least);
        // a write of no rows still holds one sequence: leases stay distinct
        s.last_unit = Some(unit + n.max(1) as u64 - 1);
        let first = (unit << OWNER_BITS) | self.bits;
        s.held.insert(first);
        Lease {
            owner: self.clone(),
            first,
        }
    }

    /// Tell the store the floor as it stands now (the oldest lease held, or none), again until
    /// the store takes it.
    async fn publish(self: Arc<Self>) {
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let gate = self.gate.lock().await;
            let floor = {
                let mut s = self.state.lock().unwrap();
                let floor = s.held.first().copied();
                if s.published == Published::Known(floor) {
                    return;
                }
                // set before telling the store: a raised floor is above no lease still held,
                // and with none, a new lease waits for this gate and publishes its own
                s.published = Published::Known(floor);
                floor
            };
            match self.store.hold_floor(&self.owner, floor).await {
                Ok(()) => return,
                Err(e) => {
                    // the store may keep the older floor: reads wait until a publish lands;
                    // meanwhile a new lease publishes its own first
                    tracing::warn!(owner = %self.owner, error = %e, "publishing the sequence floor failed");
                    self.state.lock().unwrap().published = Published::Unknown;
                    drop(gate);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }
}

/// A run of sequences taken for one write (see [`Sequencer::lease`]); dropping it lets the
/// floor rise past them.
pub struct Lease {
    owner: Arc<Sequencer>,
    first: u64,
}

impl Lease {
    /// The `i`-th sequence of the run.
    pub fn seq(&self, i: usize) -> u64 {
        self.first + ((i as u64) << OWNER_BITS)
    }

    /// Run the write `fut` to its end, holding the lease until then even if the caller stops
    /// waiting (the write may still commit, and must not commit below a risen floor).
    pub async fn hold_until<T: Send + 'static>(
        self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        // a task of its own does not inherit the urgent mark: carry it over
        let urgent = crate::hint::is_urgent();
        let write = tokio::spawn(crate::hint::urgent_if(urgent, async move {
            let out = fut.await;
            drop(self);
            out
        }));
        write
            .await
            .map_err(|e| crate::Error::internal(format!("a numbered write ended: {e}")))?
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let changed = {
            let mut s = self.owner.state.lock().unwrap();
            s.held.remove(&self.first);
            s.published != Published::Known(s.held.first().copied())
        };
        if changed {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(self.owner.clone().publish());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_fills_one_millisecond() {
        assert_eq!(UNITS_PER_MS_MASK, 4095);
        assert_eq!(clock(EPOCH_MS + 1) >> OWNER_BITS, 4096);
    }

    #[test]
    fn the_clock_orders_by_time_and_round_trips() {
        let t = 1_800_000_000_000;
        assert!(clock(t) < clock(t + 1));
        assert_eq!(time_of(clock(t)), t);
        assert_eq!(clock(0), 0);
    }
}
