//! The embedded default: one SQLite file in WAL mode with `synchronous = FULL`, so a
//! committed append survives a crash or power loss.

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use warden_core::audit::merkle::{Frontier, Hash, TreeReader, leaf_hash};

use crate::{AuditLog, EntryBuilder, SCHEMA_VERSION, StoreError, StoredEntry};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE audit_entries (
        seq INTEGER PRIMARY KEY,
        bytes BLOB NOT NULL,
        leaf_hash BLOB NOT NULL
    );
    CREATE TABLE audit_subtrees (
        level INTEGER NOT NULL,
        start INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, start)
    ) WITHOUT ROWID;
    CREATE TABLE audit_checkpoints (
        size INTEGER PRIMARY KEY,
        note TEXT NOT NULL
    );
"];

/// The audit log in a SQLite database.
#[derive(Debug)]
pub struct SqliteStore {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// The right edge of the tree, kept in step with the committed entries.
    frontier: Frontier,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Database(format!("value {v} is too large for the database")))
}

fn hash_of(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Database("a stored hash is not 32 bytes".into()))
}

/// Reads perfect-subtree hashes straight from a connection.
struct ConnReader<'a>(&'a Connection);

impl TreeReader for ConnReader<'_> {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        let found: Option<Vec<u8>> = if level == 0 {
            self.0
                .query_row("SELECT leaf_hash FROM audit_entries WHERE seq = ?1", [to_i64(start)?], |r| r.get(0))
                .optional()?
        } else {
            self.0
                .query_row(
                    "SELECT hash FROM audit_subtrees WHERE level = ?1 AND start = ?2",
                    params![level, to_i64(start)?],
                    |r| r.get(0),
                )
                .optional()?
        };
        match found {
            Some(h) => hash_of(h),
            None => Err(StoreError::MissingSubtree { start, end: start + (1u64 << level) }),
        }
    }
}

fn entry_count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(to_u64(conn.query_row("SELECT count(*) FROM audit_entries", [], |r| r.get::<_, i64>(0))?))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations, and
    /// refuses a database written by a newer schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion { found: version });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
        let size = entry_count(&conn)?;
        let frontier = Frontier::load(&ConnReader(&conn), size)?;
        Ok(Self { inner: Mutex::new(Inner { conn, frontier }) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Database("the store lock is poisoned".into()))
    }
}

impl TreeReader for SqliteStore {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        let inner = self.lock()?;
        ConnReader(&inner.conn).perfect_subtree(start, level)
    }
}

impl AuditLog for SqliteStore {
    fn append(&self, count: usize, build: &mut EntryBuilder<'_>) -> Result<Range<u64>, StoreError> {
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let mut frontier = inner.frontier.clone();
        let first = frontier.size();
        let tx = inner.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut put_entry =
                tx.prepare_cached("INSERT INTO audit_entries (seq, bytes, leaf_hash) VALUES (?1, ?2, ?3)")?;
            let mut put_subtree =
                tx.prepare_cached("INSERT INTO audit_subtrees (level, start, hash) VALUES (?1, ?2, ?3)")?;
            for seq in first..first + count as u64 {
                let bytes = build(seq).map_err(|reason| StoreError::Entry { seq, reason })?;
                let leaf = leaf_hash(&bytes);
                put_entry.execute(params![to_i64(seq)?, bytes, leaf.as_slice()])?;
                for done in frontier.push(leaf).into_iter().filter(|d| d.level > 0) {
                    put_subtree.execute(params![done.level, to_i64(done.start)?, done.hash.as_slice()])?;
                }
            }
        }
        tx.commit()?;
        inner.frontier = frontier;
        Ok(first..first + count as u64)
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.frontier.size())
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        let inner = self.lock()?;
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT seq, bytes, leaf_hash FROM audit_entries WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![to_i64(from)?, to_i64(limit as u64)?], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        rows.map(|row| {
            let (seq, bytes, hash) = row?;
            Ok(StoredEntry { seq: to_u64(seq), bytes, leaf_hash: hash_of(hash)? })
        })
        .collect()
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let inner = self.lock()?;
        inner.conn.execute(
            "INSERT INTO audit_checkpoints (size, note) VALUES (?1, ?2) ON CONFLICT (size) DO NOTHING",
            params![to_i64(size)?, note],
        )?;
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .conn
            .query_row("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1", [], |r| {
                Ok((to_u64(r.get(0)?), r.get(1)?))
            })
            .optional()?)
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let inner = self.lock()?;
        let mut stmt = inner.conn.prepare_cached("SELECT size, note FROM audit_checkpoints ORDER BY size")?;
        let rows = stmt.query_map([], |r| Ok((to_u64(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
