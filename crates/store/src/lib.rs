//! Warden's durable store. So far: the audit log — entries, the Merkle tree's perfect-subtree
//! hashes, and signed checkpoints — behind the [`AuditLog`] trait, with an embedded SQLite
//! implementation and a [`conformance`] suite any backend must pass.

pub mod conformance;
mod sqlite;
pub mod verify;

use std::ops::Range;

use warden_core::audit::merkle::{Hash, TreeReader};

pub use sqlite::SqliteStore;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the store could not do what was asked. Nothing was changed when an error is returned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database error: {0}")]
    Database(String),
    #[error("the database has schema version {found}; this build knows version {SCHEMA_VERSION}")]
    SchemaVersion { found: u32 },
    #[error("the audit log is missing hashes for leaves {start}..{end}")]
    MissingSubtree { start: u64, end: u64 },
    #[error("cannot build audit entry {seq}: {reason}")]
    Entry { seq: u64, reason: String },
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

/// The append-only audit log.
pub trait AuditLog: TreeReader<Error = StoreError> + Send + Sync {
    /// Appends `count` entries in one total order; `build(seq)` makes each entry's bytes.
    /// When this returns `Ok`, the entries are durable. On error nothing was appended.
    fn append(&self, count: usize, build: &mut EntryBuilder<'_>) -> Result<Range<u64>, StoreError>;
    /// The number of entries.
    fn size(&self) -> Result<u64, StoreError>;
    /// Entries `from..` in order, at most `limit`.
    fn entries(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError>;
    /// The root hash of the first `size` entries.
    fn root(&self, size: u64) -> Result<Hash, StoreError> {
        warden_core::audit::merkle::root(self, size)
    }
    /// Stores a signed checkpoint note for tree `size`.
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError>;
    /// The newest stored checkpoint: (size, note).
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Every stored checkpoint, oldest first.
    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError>;
}
