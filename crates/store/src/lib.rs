//! Warden's durable store: the state tables (agents, users, tasks, requests, decisions,
//! approvals, leases, executions, halts, budget counters) and the audit log (entries, the
//! Merkle tree's perfect-subtree hashes, signed checkpoints).
//!
//! ```text
//! caller ──Batch{changes, events}──► Ledger (group commit, seq + time, signs checkpoints)
//!                                       │ commit_group: one transaction, one fsync
//!                                       ▼
//!                                   dyn Store (SqliteStore; the conformance suite says what
//!                                              any other backend must do)
//! ```
//!
//! Every state change travels with the audit events that describe it, in one transaction:
//! there is no way to change a table without the log saying so.

pub mod conformance;
pub mod data_dir;
mod ledger;
pub mod migrate;
mod postgres;
pub mod proofs;
mod records;
mod sqlite;
pub mod verify;

use std::ops::Range;

use time::OffsetDateTime;
use warden_core::audit::entry::Event;
use warden_core::audit::merkle::{Hash, TreeReader};

pub use data_dir::{DataDir, DataDirError, StoreAt};
pub use ledger::{Clock, GroupStats, Ledger, LedgerOptions, ManualClock, SystemClock, USER_DISABLED};
pub use postgres::{MAX_SKEW_MS, PgStore, PgTarget, redact_url};
pub use records::{Change, Cursor, Order, Query, Record, Table};
pub use sqlite::SqliteStore;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 7;

/// Why the store could not do what was asked. Nothing was changed when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the database error: {0}")]
    Database(String),
    #[error("the database has schema version {found}; this build knows version {SCHEMA_VERSION}")]
    SchemaVersion { found: u32 },
    #[error("the audit log is missing hashes for leaves {start}..{end}")]
    MissingSubtree { start: u64, end: u64 },
    #[error("cannot build audit entry {seq}: {reason}")]
    Entry { seq: u64, reason: String },
    /// An insert met an existing id or key, or an update met a newer version.
    #[error("conflict in `{table}` on `{id}`: {reason}")]
    Conflict { table: &'static str, id: String, reason: &'static str },
    /// A batch's [`Change::ExpectNotState`] failed: the record is in the state it must not be.
    #[error("`{id}` in `{table}` is {state}")]
    Refused { table: &'static str, id: String, state: String },
    #[error("cannot sign the checkpoint: {0}")]
    Checkpoint(String),
    #[error("the store is closed")]
    Closed,
    /// A shared store refuses commits from a node whose clock is too far from the database's:
    /// across nodes, windows, expiries and heartbeats are compared by time.
    #[error("this node's clock is {skew_ms} ms off the database's (at most {max_ms} ms is allowed): fix its time")]
    ClockSkew { skew_ms: i64, max_ms: i64 },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// One stored audit entry: its sequence number (= leaf index), its bytes as hashed, its leaf hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub leaf_hash: Hash,
}

/// Builds the bytes of the entry with a given sequence number (entries carry their own `seq`).
pub type EntryBuilder<'a> = dyn FnMut(u64) -> Result<Vec<u8>, String> + 'a;

/// The append-only audit log: the part of the store auditors read.
pub trait AuditLog: TreeReader<Error = StoreError> + Send + Sync {
    /// Appends `count` raw entries in one total order; `build(seq)` makes each entry's bytes.
    /// When this returns `Ok`, the entries are durable. On error nothing was appended.
    /// Warden itself writes through [`Ledger`]; this is the primitive under it.
    fn append(&self, count: usize, build: &mut EntryBuilder<'_>) -> Result<Range<u64>, StoreError>;
    /// The number of entries.
    fn size(&self) -> Result<u64, StoreError>;
    /// Entries `from..` in order, at most `limit`.
    fn entries(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError>;
    /// The root hash of the first `size` entries.
    fn root(&self, size: u64) -> Result<Hash, StoreError> {
        warden_core::audit::merkle::root(self, size)
    }
    /// The stored hashes of the perfect subtrees at `level` (≥ 1) whose first leaf is in
    /// `starts`, in order: what a verifier compares its own hashes with, a range at a time.
    fn subtrees(&self, level: u32, starts: Range<u64>) -> Result<Vec<(u64, Hash)>, StoreError> {
        let step = 1u64 << level;
        let first = starts.start.div_ceil(step) * step;
        (first..starts.end).step_by(step as usize).map(|s| Ok((s, self.perfect_subtree(s, level)?))).collect()
    }
    /// Stores a signed checkpoint note for tree `size` (a second note for a size is ignored).
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError>;
    /// The newest stored checkpoint: (size, note).
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The checkpoint stored for exactly `size`, if any.
    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError>;
    /// Stored checkpoints with size ≥ `from_size`, oldest first, at most `limit`.
    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
}

/// Budget use of one agent × action in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub hits: u64,
    pub distinct_targets: u64,
    pub target_seen: bool,
}

/// Where [`Store::budget_usage`] may stop counting: a decision only compares the counts with
/// its budgets, so counting beyond the largest budget would only cost time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    pub hits: u64,
    pub distinct_targets: u64,
}

/// The verdict of a [`Change::BudgetCheck`] on the usage read in the writer's transaction:
/// a conflict when `max_hits` are used, or when the target is new and `max_distinct_targets`
/// are reached. One rule for every backend.
pub(crate) fn budget_verdict(
    u: &Usage,
    agent: &str,
    action: &str,
    max_hits: Option<u64>,
    max_distinct_targets: Option<u64>,
) -> Result<(), StoreError> {
    let over_hits = max_hits.is_some_and(|m| u.hits >= m);
    let over_targets = max_distinct_targets.is_some_and(|m| !u.target_seen && u.distinct_targets >= m);
    if over_hits || over_targets {
        Err(StoreError::Conflict {
            table: "budget_hits",
            id: format!("{agent} {action}"),
            reason: "the budget was used up since it was read",
        })
    } else {
        Ok(())
    }
}

impl UsageLimits {
    /// Count everything.
    pub const ALL: UsageLimits = UsageLimits { hits: u64::MAX, distinct_targets: u64::MAX };
}

/// A group of changes and the audit events that describe them: all applied, or none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub events: Vec<Event>,
    /// Encoding done before the writer's turn ([`Ledger`] does it); a store uses it when
    /// present and encodes for itself otherwise.
    prepared: Option<Prepared>,
}

/// A batch's record bodies (JSON text, one per change, `None` where the change has no
/// record) and entry templates (one per event).
#[derive(Debug, Clone, PartialEq)]
struct Prepared {
    bodies: Vec<Option<String>>,
    entries: Vec<warden_core::audit::entry::EntryTemplate>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    /// A batch of `changes` described by `events`.
    pub fn of(changes: Vec<Change>, events: Vec<Event>) -> Self {
        Batch { changes, events, prepared: None }
    }
    /// Encodes the record bodies and entry templates now, so that the single writer only
    /// stamps and stores them. Anything that does not encode is left for the store, which
    /// reports it as before.
    pub(crate) fn prepare(&mut self) {
        let bodies = self
            .changes
            .iter()
            .map(|c| match c {
                Change::Insert(r) | Change::Update(r) => serde_json::to_string(&r.body).ok(),
                Change::BudgetHit { .. }
                | Change::SetMeta { .. }
                | Change::Delete { .. }
                | Change::Expect { .. }
                | Change::ExpectMeta { .. }
                | Change::ExpectNotState { .. }
                | Change::BudgetCheck { .. }
                | Change::ExpectFewer { .. } => None,
            })
            .collect();
        if let Ok(entries) = self.events.iter().map(Event::template).collect::<Result<Vec<_>, _>>() {
            self.prepared = Some(Prepared { bodies, entries });
        }
    }
    /// The prepared body of change `i`, if any.
    pub(crate) fn body(&self, i: usize) -> Option<&str> {
        self.prepared.as_ref().and_then(|p| p.bodies.get(i)).and_then(|b| b.as_deref())
    }
    /// The prepared template of event `i`, if any.
    pub(crate) fn template(&self, i: usize) -> Option<&warden_core::audit::entry::EntryTemplate> {
        self.prepared.as_ref().and_then(|p| p.entries.get(i))
    }
    pub fn change(mut self, c: Change) -> Self {
        self.changes.push(c);
        self
    }
    pub fn changes(mut self, cs: impl IntoIterator<Item = Change>) -> Self {
        self.changes.extend(cs);
        self
    }
    pub fn event(mut self, e: Event) -> Self {
        self.events.push(e);
        self
    }
}

/// Signs the checkpoint for a tree of `size` with `root`, or declines (`Ok(None)`).
pub type Seal<'a> = dyn FnMut(u64, &Hash) -> Result<Option<String>, String> + 'a;

/// The whole store: state tables and the audit log, written together.
pub trait Store: AuditLog {
    /// In one durable transaction, for each batch in order: applies its changes and appends
    /// its events as entries stamped `time` — or, when a change conflicts or an entry cannot
    /// be built, leaves nothing of that batch and reports why in its slot. Then, if anything
    /// was appended, asks `seal` for a checkpoint of the new tree and stores it in the same
    /// transaction. An `Err` means nothing of any batch was committed.
    fn commit_group(
        &self,
        time: OffsetDateTime,
        batches: &[Batch],
        seal: &mut Seal<'_>,
    ) -> Result<Vec<Result<Range<u64>, StoreError>>, StoreError>;
    /// One record by id.
    fn get(&self, table: Table, id: &str) -> Result<Option<Record>, StoreError>;
    /// Records matching every filter of `query`, ordered by `at` then id.
    fn find(&self, table: Table, query: &Query) -> Result<Vec<Record>, StoreError>;
    /// How many records match every filter of `query` (its order and limit aside), without
    /// reading them.
    fn count(&self, table: Table, query: &Query) -> Result<u64, StoreError>;
    /// How many records match every filter of `query`, per `kind` (records without one are
    /// left out), in `kind` order: one grouped count, without reading the records.
    fn count_by_kind(&self, table: Table, query: &Query) -> Result<Vec<(String, u64)>, StoreError>;
    /// Budget hits of `agent` × `action` at or after `since_ms` (Unix milliseconds), their
    /// distinct targets, and whether `target` is among them. Each count stops at its limit in
    /// `up_to` (exact below it), so the cost is bounded by the budgets, not by the traffic.
    fn budget_usage(
        &self,
        agent: &str,
        action: &str,
        since_ms: i64,
        target: &str,
        up_to: UsageLimits,
    ) -> Result<Usage, StoreError>;
    /// A value of the store's own settings (origin, verifier key…).
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Where a store shared with other writers says the log moved (PostgreSQL's
    /// LISTEN/NOTIFY): the value changes soon after any writer's commit. `None` when the store
    /// has no such signal; readers then look for themselves from time to time.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
