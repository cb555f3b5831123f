//! The one way Warden writes: batches of changes with their audit events, committed in groups
//! (many callers, one transaction, one fsync), stamped with a time that never goes backwards,
//! and sealed with a signed checkpoint.
//!
//! Group commit is leader/follower: a caller queues its batch; if no commit is running it
//! becomes the leader, takes everything queued (up to `max_group`), commits it and hands each
//! caller its own result. Callers wait for their own batch, so the queue never holds more
//! than one batch per waiting caller.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use warden_core::audit::merkle::Hash;
use warden_core::audit::note::{Checkpoint, NoteSigner};

use warden_core::audit::entry::ActorKind;

use crate::{Batch, Change, Store, StoreError, Table};

/// The state of a disabled user's record: no commit names them as actor.
pub const USER_DISABLED: &str = "disabled";

/// Where the time comes from (a fake in tests).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told: for tests of expiry and windows, and for replays.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(std::sync::Mutex::new(start))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: time::Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.0.lock().map(|t| *t).unwrap_or_else(|p| *p.into_inner())
    }
}

/// How the ledger commits and signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerOptions {
    /// Sign a checkpoint with a commit group only when this long has passed since the last
    /// one; zero signs after every group. [`Ledger::checkpoint`] signs the tail on demand.
    pub checkpoint_every: Duration,
    /// The most batches one transaction takes.
    pub max_group: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions { checkpoint_every: Duration::ZERO, max_group: 512 }
    }
}

/// What [`Ledger::commit`] gives back: where the batch's events landed.
pub type Receipt = Range<u64>;

#[derive(Debug, Default)]
struct State {
    queue: Vec<(u64, Batch)>,
    done: HashMap<u64, Result<Receipt, StoreError>>,
    next_ticket: u64,
    leader: bool,
    last_time: Option<OffsetDateTime>,
    last_signed: Option<Instant>,
    stats: GroupStats,
}

/// How well group commit is grouping: batches committed and the transactions (fsyncs) that
/// carried them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub groups: u64,
    pub batches: u64,
    /// Time spent inside the store's group transactions (writes, fsync, signing).
    pub busy: Duration,
    /// Groups the store refused as a whole (disk full, I/O error): nothing of them applied.
    pub failed: u64,
    /// Whether the last group failed so; the next that commits clears it.
    pub failing: bool,
}

/// The store's single writer.
pub struct Ledger {
    store: Arc<dyn Store>,
    signer: NoteSigner,
    clock: Arc<dyn Clock>,
    options: LedgerOptions,
    state: Mutex<State>,
    turn: Condvar,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("origin", &self.signer.name()).field("options", &self.options).finish()
    }
}

impl Ledger {
    /// A ledger over `store` whose checkpoints `signer` signs, with the origin line = the
    /// signer's key name. Signs the unsigned tail a crash may have left.
    pub fn open(
        store: Arc<dyn Store>,
        signer: NoteSigner,
        clock: Arc<dyn Clock>,
        options: LedgerOptions,
    ) -> Result<Self, StoreError> {
        let ledger = Ledger { store, signer, clock, options, state: Mutex::default(), turn: Condvar::new() };
        ledger.checkpoint()?;
        Ok(ledger)
    }

    /// The time on the ledger's clock (what its next commit will be stamped near).
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn signer(&self) -> &NoteSigner {
        &self.signer
    }

    /// The checkpoint origin line.
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| StoreError::Database("the ledger lock is poisoned".into()))
    }

    /// Commits `batch`: its changes and events are durable when this returns `Ok`, with the
    /// events at the returned sequence numbers. On error nothing of the batch was applied.
    pub fn commit(&self, mut batch: Batch) -> Result<Receipt, StoreError> {
        // Nothing commits in the name of a disabled user: a request of theirs that was
        // admitted before the disable committed is refused at its commit, whatever path it
        // took (a vote, a halt, an admin change), on any node.
        let mut users: Vec<&str> =
            batch.events.iter().filter(|e| e.actor.kind == ActorKind::User).map(|e| e.actor.id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let checks: Vec<Change> = users
            .into_iter()
            .map(|id| Change::ExpectNotState { table: Table::Users, id: id.to_string(), state: USER_DISABLED.into() })
            .collect();
        batch.changes.extend(checks);
        // Encode before queueing: the writer's turn is the one thing commits wait for.
        batch.prepare();
        let mut st = self.lock()?;
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, batch));
        loop {
            if let Some(result) = st.done.remove(&ticket) {
                return result;
            }
            if st.leader {
                st = self.turn.wait(st).map_err(|_| StoreError::Database("the ledger lock is poisoned".into()))?;
                continue;
            }
            st.leader = true;
            let take = st.queue.len().min(self.options.max_group.max(1));
            let group: Vec<(u64, Batch)> = st.queue.drain(..take).collect();
            let now = self.clock.now();
            let time = st.last_time.map_or(now, |last| last.max(now));
            st.last_time = Some(time);
            let due = self.options.checkpoint_every.is_zero()
                || st.last_signed.is_none_or(|t| t.elapsed() >= self.options.checkpoint_every);
            drop(st);

            let (tickets, batches): (Vec<u64>, Vec<Batch>) = group.into_iter().unzip();
            let mut signed = false;
            let started = Instant::now();
            let result = self.store.commit_group(time, &batches, &mut |size, root| {
                if !due {
                    return Ok(None);
                }
                signed = true;
                self.sign(size, root).map(Some)
            });

            st = self.lock()?;
            match result {
                Ok(results) => {
                    st.stats.groups += 1;
                    st.stats.busy += started.elapsed();
                    st.stats.batches += results.len() as u64;
                    st.stats.failing = false;
                    st.done.extend(tickets.into_iter().zip(results));
                    if signed {
                        st.last_signed = Some(Instant::now());
                    }
                }
                Err(e) => {
                    st.stats.failed += 1;
                    st.stats.failing = true;
                    st.done.extend(tickets.into_iter().map(|t| (t, Err(e.clone()))));
                }
            }
            st.leader = false;
            self.turn.notify_all();
        }
    }

    /// Group commit's counters since the ledger was opened.
    pub fn group_stats(&self) -> GroupStats {
        self.state.lock().map(|st| st.stats).unwrap_or_default()
    }

    fn sign(&self, size: u64, root: &Hash) -> Result<String, String> {
        let cp = Checkpoint { origin: self.signer.name().to_string(), size, root: *root, extensions: vec![] };
        cp.sign(&self.signer).map_err(|e| e.to_string())
    }

    /// Signs and stores a checkpoint of the whole log if the newest one does not cover it;
    /// returns the latest checkpoint note, if the log has any.
    pub fn checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        // Take the leader's role, so no commit moves the tree while we read it.
        let mut st = self.lock()?;
        while st.leader {
            st = self.turn.wait(st).map_err(|_| StoreError::Database("the ledger lock is poisoned".into()))?;
        }
        st.leader = true;
        drop(st);
        let result = (|| {
            let size = self.store.size()?;
            let latest = self.store.latest_checkpoint()?;
            if size == 0 || latest.as_ref().is_some_and(|(s, _)| *s >= size) {
                return Ok(latest);
            }
            let note = self.sign(size, &self.store.root(size)?).map_err(StoreError::Checkpoint)?;
            self.store.put_checkpoint(size, &note)?;
            Ok(Some((size, note)))
        })();
        let mut st = self.lock()?;
        st.leader = false;
        if matches!(result, Ok(Some(_))) {
            st.last_signed = Some(Instant::now());
        }
        self.turn.notify_all();
        result
    }
}
