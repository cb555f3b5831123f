//! The embedded default: one SQLite file in WAL mode with `synchronous = FULL`, so a
//! committed transaction survives a crash or power loss. One writer connection (holding the
//! tree's right edge) and, on disk, a small pool of reader connections, so reads never wait
//! for an fsync nor for each other.

use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use time::OffsetDateTime;
use warden_core::audit::merkle::{Frontier, Hash, TreeReader, leaf_hash};

use crate::{
    AuditLog, Batch, Change, EntryBuilder, Order, Query, Record, SCHEMA_VERSION, Seal, Store, StoreError, StoredEntry,
    Table, Usage, UsageLimits,
};

const AUDIT_TABLES: &str = "
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
";

/// The state tables: every one the same shape (see [`Record`]).
fn state_tables() -> String {
    let mut sql = String::from(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE budget_hits (agent TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                                   at INTEGER NOT NULL);
         CREATE INDEX budget_hits_by_pair ON budget_hits (agent, action, at);",
    );
    for t in Table::FIRST {
        let n = t.name();
        sql.push_str(&format!(
            "CREATE TABLE {n} (id TEXT PRIMARY KEY, version INTEGER NOT NULL, agent TEXT, task TEXT,
                               state TEXT, key TEXT UNIQUE, at INTEGER, body TEXT NOT NULL);
             CREATE INDEX {n}_by_agent ON {n} (agent, at);
             CREATE INDEX {n}_by_task ON {n} (task, at);
             CREATE INDEX {n}_by_state ON {n} (state, at);"
        ));
    }
    sql
}

/// Budget summaries, so that a decision's reads are bounded however many hits its window
/// holds: hits per agent × action × minute, and each target with its latest hit.
const BUDGET_SUMMARIES: &str = "
    CREATE TABLE budget_minutes (agent TEXT NOT NULL, action TEXT NOT NULL, minute INTEGER NOT NULL,
                                 hits INTEGER NOT NULL, PRIMARY KEY (agent, action, minute)) WITHOUT ROWID;
    INSERT INTO budget_minutes (agent, action, minute, hits)
        SELECT agent, action, at / 60000, count(*) FROM budget_hits GROUP BY agent, action, at / 60000;
    CREATE TABLE budget_targets (agent TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                                 last_at INTEGER NOT NULL, PRIMARY KEY (agent, action, target)) WITHOUT ROWID;
    CREATE INDEX budget_targets_by_time ON budget_targets (agent, action, last_at);
    INSERT INTO budget_targets (agent, action, target, last_at)
        SELECT agent, action, target, max(at) FROM budget_hits GROUP BY agent, action, target;
";

/// Lists page through the tables by keyset (`at`, id) and filter by action class: every
/// filter's index carries the order's columns, so a page is one index range however deep, and
/// `kind` (the action class, taken from the stored bodies) is a column of its own. An agent's
/// record for one action (its track record; the activity page's agent + action + state
/// filter) is one range of `(agent, kind, state, at, id)`.
fn paging() -> String {
    let mut sql = String::new();
    for t in Table::FIRST {
        let n = t.name();
        sql.push_str(&format!(
            "ALTER TABLE {n} ADD COLUMN kind TEXT;
             DROP INDEX {n}_by_agent;
             DROP INDEX {n}_by_task;
             DROP INDEX {n}_by_state;
             CREATE INDEX {n}_by_agent ON {n} (agent, at, id);
             CREATE INDEX {n}_by_task ON {n} (task, at, id);
             CREATE INDEX {n}_by_state ON {n} (state, at, id);"
        ));
    }
    for t in [Table::Requests, Table::Approvals] {
        let n = t.name();
        sql.push_str(&format!(
            "UPDATE {n} SET kind = json_extract(body, '$.action');
             CREATE INDEX {n}_by_at ON {n} (at, id);
             CREATE INDEX {n}_by_kind ON {n} (kind, at, id);
             CREATE INDEX {n}_by_state_id ON {n} (state, id);
             CREATE INDEX {n}_by_agent_kind ON {n} (agent, kind, state, at, id);"
        ));
    }
    sql
}

/// An agent's requests waiting for a human, counted on every approval it opens (the caps of
/// `[escalation] max_pending`): one range of pending rows, not the agent's whole history.
const PENDING_BY_AGENT: &str = "CREATE INDEX approvals_by_agent_state ON approvals (agent, state, kind);";

/// The tables of schema 6, shaped like every other: console sessions and the requests MCP
/// calls left waiting, in the store so any node serves any client.
fn sessions_and_holds() -> String {
    [Table::Sessions, Table::Holds]
        .iter()
        .map(|t| {
            let n = t.name();
            format!(
                "CREATE TABLE {n} (id TEXT PRIMARY KEY, version INTEGER NOT NULL, agent TEXT, task TEXT,
                                   state TEXT, key TEXT UNIQUE, at INTEGER, body TEXT NOT NULL, kind TEXT);
                 CREATE INDEX {n}_by_agent ON {n} (agent, at, id);
                 CREATE INDEX {n}_by_task ON {n} (task, at, id);
                 CREATE INDEX {n}_by_state ON {n} (state, at, id);"
            )
        })
        .collect()
}

/// Schema 7: an execution's action class is a column of its own (`kind`, taken from the stored
/// bodies), so what a task has done — its succeeded executions per class — is one grouped count
/// of one index range (DESIGN §14, `context.task.history`).
const EXECUTIONS_BY_KIND: &str = "
    UPDATE executions SET kind = json_extract(body, '$.action');
    CREATE INDEX executions_by_task_state_kind ON executions (task, state, kind);
";

/// Milliseconds per budget summary bucket.
const MINUTE_MS: i64 = 60_000;

/// Migration `i` takes the schema from version `i` to `i + 1`.
fn migration(i: u32) -> Option<String> {
    match i {
        0 => Some(AUDIT_TABLES.to_string()),
        1 => Some(state_tables()),
        2 => Some(BUDGET_SUMMARIES.to_string()),
        3 => Some(paging()),
        4 => Some(PENDING_BY_AGENT.to_string()),
        5 => Some(sessions_and_holds()),
        6 => Some(EXECUTIONS_BY_KIND.to_string()),
        _ => None,
    }
}

/// Prepared statements kept per connection. rusqlite's default (16) is fewer than the
/// statements one request runs: under load every statement was parsed again each time.
const STATEMENT_CACHE: usize = 256;

/// Reader connections per on-disk store.
const READERS: usize = 4;

/// The store in a SQLite database.
#[derive(Debug)]
pub struct SqliteStore {
    writer: Mutex<Writer>,
    /// A second connection for reads (on disk only; in memory there is one database per
    /// connection, so reads go through the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// The right edge of the tree, kept in step with the committed entries.
    frontier: Frontier,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A bound of a read: nothing stored lies beyond `i64::MAX`, so larger bounds clamp to it.
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Database(format!("value {v} is too large for the database")))
}

fn hash_of(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Database("a stored hash is not 32 bytes".into()))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Reads perfect-subtree hashes straight from a connection.
struct ConnReader<'a>(&'a Connection);

impl TreeReader for ConnReader<'_> {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        let found: Option<Vec<u8>> = if level == 0 {
            self.0
                .prepare_cached("SELECT leaf_hash FROM audit_entries WHERE seq = ?1")?
                .query_row([to_i64(start)?], |r| r.get(0))
                .optional()?
        } else {
            self.0
                .prepare_cached("SELECT hash FROM audit_subtrees WHERE level = ?1 AND start = ?2")?
                .query_row(params![level, to_i64(start)?], |r| r.get(0))
                .optional()?
        };
        match found {
            Some(h) => hash_of(h),
            None => Err(StoreError::MissingSubtree { start, end: start + (1u64 << level) }),
        }
    }
}

fn entry_count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(to_u64(conn.query_row("SELECT coalesce(max(seq) + 1, 0) FROM audit_entries", [], |r| r.get::<_, i64>(0))?))
}

/// The tree's right edge as of this transaction: the cached one, unless another process
/// (an admin command beside a running server) appended since.
fn current_frontier(conn: &Connection, cached: &Frontier) -> Result<Frontier, StoreError> {
    let size = entry_count(conn)?;
    if size == cached.size() { Ok(cached.clone()) } else { Frontier::load(&ConnReader(conn), size) }
}

/// Appends `count` entries inside `tx`, pushing their leaves onto `frontier`.
fn append_in(
    tx: &Transaction<'_>,
    frontier: &mut Frontier,
    count: usize,
    build: &mut EntryBuilder<'_>,
) -> Result<Range<u64>, StoreError> {
    let first = frontier.size();
    let mut put_entry = tx.prepare_cached("INSERT INTO audit_entries (seq, bytes, leaf_hash) VALUES (?1, ?2, ?3)")?;
    let mut put_subtree = tx.prepare_cached("INSERT INTO audit_subtrees (level, start, hash) VALUES (?1, ?2, ?3)")?;
    for seq in first..first + count as u64 {
        let bytes = build(seq).map_err(|reason| StoreError::Entry { seq, reason })?;
        let leaf = leaf_hash(&bytes);
        put_entry.execute(params![to_i64(seq)?, bytes, leaf.as_slice()])?;
        for done in frontier.push(leaf).into_iter().filter(|d| d.level > 0) {
            put_subtree.execute(params![done.level, to_i64(done.start)?, done.hash.as_slice()])?;
        }
    }
    Ok(first..first + count as u64)
}

/// The rows `sql` yields, counted up to `limit`.
fn count_up_to(c: &Connection, sql: &str, params: &[&dyn rusqlite::ToSql], limit: u64) -> Result<u64, StoreError> {
    if limit == 0 {
        return Ok(0);
    }
    let mut n = 0;
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    while rows.next()?.is_some() {
        n += 1;
        if n >= limit {
            break;
        }
    }
    Ok(n)
}

fn conflict(table: Table, id: &str, reason: &'static str) -> StoreError {
    StoreError::Conflict { table: table.name(), id: id.to_string(), reason }
}

fn body_text<'a>(r: &Record, prepared: Option<&'a str>) -> Result<std::borrow::Cow<'a, str>, StoreError> {
    match prepared {
        Some(text) => Ok(text.into()),
        None => serde_json::to_string(&r.body)
            .map(Into::into)
            .map_err(|e| StoreError::Database(format!("record `{}`: {e}", r.id))),
    }
}

/// Applies `change`; `body` is its record's JSON text when already encoded.
fn apply(tx: &Transaction<'_>, change: &Change, body: Option<&str>) -> Result<(), StoreError> {
    match change {
        Change::Insert(r) => {
            let sql = format!(
                "INSERT INTO {} (id, version, agent, task, state, key, at, body, kind)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                r.table.name()
            );
            let res = tx.prepare_cached(&sql)?.execute(params![
                r.id,
                r.agent,
                r.task,
                r.state,
                r.key,
                r.at,
                body_text(r, body)?.as_ref(),
                r.kind
            ]);
            match res {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(conflict(r.table, &r.id, "the id or key is already taken")),
                Err(e) => Err(e.into()),
            }
        }
        Change::Update(r) => {
            let sql = format!(
                "UPDATE {} SET version = version + 1, agent = ?3, task = ?4, state = ?5, key = ?6, at = ?7, body = ?8,
                               kind = ?9
                 WHERE id = ?1 AND version = ?2",
                r.table.name()
            );
            let res = tx.prepare_cached(&sql)?.execute(params![
                r.id,
                to_i64(r.version)?,
                r.agent,
                r.task,
                r.state,
                r.key,
                r.at,
                body_text(r, body)?.as_ref(),
                r.kind
            ]);
            match res {
                Ok(1) => Ok(()),
                Ok(_) => Err(conflict(r.table, &r.id, "the record changed since it was read, or is gone")),
                Err(e) if is_constraint(&e) => Err(conflict(r.table, &r.id, "the key is already taken")),
                Err(e) => Err(e.into()),
            }
        }
        Change::BudgetHit { agent, action, target, at } => {
            tx.prepare_cached("INSERT INTO budget_hits (agent, action, target, at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![agent, action, target, at])?;
            tx.prepare_cached(
                "INSERT INTO budget_minutes (agent, action, minute, hits) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (agent, action, minute) DO UPDATE SET hits = hits + 1",
            )?
            .execute(params![agent, action, at.div_euclid(MINUTE_MS)])?;
            tx.prepare_cached(
                "INSERT INTO budget_targets (agent, action, target, last_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (agent, action, target) DO UPDATE SET last_at = max(last_at, ?4)",
            )?
            .execute(params![agent, action, target, at])?;
            Ok(())
        }
        Change::Delete { table, id } => {
            tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", table.name()))?.execute([id])?;
            Ok(())
        }
        Change::SetMeta { key, value } => {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            )?
            .execute(params![key, value])?;
            Ok(())
        }
        Change::Expect { table, id, version } => {
            let sql = format!("SELECT version FROM {} WHERE id = ?1", table.name());
            let found: Option<i64> = tx.prepare_cached(&sql)?.query_row([id], |r| r.get(0)).optional()?;
            if found.map_or(0, to_u64) == *version {
                Ok(())
            } else {
                Err(conflict(*table, id, "a precondition failed: the record changed since it was read"))
            }
        }
        Change::ExpectNotState { table, id, state } => {
            let sql = format!("SELECT state FROM {} WHERE id = ?1", table.name());
            let found: Option<Option<String>> = tx.prepare_cached(&sql)?.query_row([id], |r| r.get(0)).optional()?;
            if found.flatten().as_deref() == Some(state.as_str()) {
                Err(StoreError::Refused { table: table.name(), id: id.clone(), state: state.clone() })
            } else {
                Ok(())
            }
        }
        Change::ExpectMeta { key, value } => {
            let found: Option<String> = tx
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            if found == *value {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    table: "meta",
                    id: key.clone(),
                    reason: "a precondition failed: the setting changed since it was read",
                })
            }
        }
        Change::ExpectFewer { table, query, max } => {
            let columns = Query {
                agent: query.agent.clone(),
                task: query.task.clone(),
                state: query.state.clone(),
                key: query.key.clone(),
                kind: query.kind.clone(),
                ..Query::default()
            };
            let (filter, args) = filter(&columns);
            let sql = format!("SELECT count(*) FROM {} WHERE {filter}", table.name());
            let n: i64 = tx.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
            if to_u64(n) < *max {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    table: table.name(),
                    id: format!("{} matching", to_u64(n)),
                    reason: "a precondition failed: as many records match as the cap allows",
                })
            }
        }
        Change::BudgetCheck { agent, action, target, since_ms, max_hits, max_distinct_targets } => {
            let up_to =
                UsageLimits { hits: max_hits.unwrap_or(0), distinct_targets: max_distinct_targets.unwrap_or(0) };
            let u = usage_in(tx, agent, action, *since_ms, target, up_to)?;
            crate::budget_verdict(&u, agent, action, *max_hits, *max_distinct_targets)
        }
    }
}

/// Budget use of `agent` × `action` since `since_ms`, read on `c` (a reader's snapshot or the
/// writer's transaction); each count stops at its limit in `up_to`.
fn usage_in(
    c: &Connection,
    agent: &str,
    action: &str,
    since_ms: i64,
    target: &str,
    up_to: UsageLimits,
) -> Result<Usage, StoreError> {
    // Hits: the raw rows of the window's first, partial minute, then whole minutes.
    let first_whole = since_ms.div_euclid(MINUTE_MS) + i64::from(since_ms.rem_euclid(MINUTE_MS) != 0);
    // Counted by stepping, stopping at the limit: a `LIMIT ?` in a subquery makes SQLite
    // prepare the statement again whenever the bound value changes.
    let partial = count_up_to(
        c,
        "SELECT 1 FROM budget_hits WHERE agent = ?1 AND action = ?2 AND at >= ?3 AND at < ?4",
        params![agent, action, since_ms, first_whole.saturating_mul(MINUTE_MS)],
        up_to.hits,
    )?;
    let whole: i64 = c
        .prepare_cached(
            "SELECT coalesce(sum(hits), 0) FROM budget_minutes WHERE agent = ?1 AND action = ?2 AND minute >= ?3",
        )?
        .query_row(params![agent, action, first_whole], |r| r.get(0))?;
    let hits = partial.saturating_add(to_u64(whole)).min(up_to.hits);
    let distinct_targets = count_up_to(
        c,
        "SELECT 1 FROM budget_targets WHERE agent = ?1 AND action = ?2 AND last_at >= ?3",
        params![agent, action, since_ms],
        up_to.distinct_targets,
    )?;
    let target_seen = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM budget_targets
             WHERE agent = ?1 AND action = ?2 AND target = ?3 AND last_at >= ?4)",
        )?
        .query_row(params![agent, action, target, since_ms], |r| r.get(0))?;
    Ok(Usage { hits, distinct_targets, target_seen })
}

/// Failures that belong to one batch (the others in its group go on).
fn batch_level(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::Entry { .. } | StoreError::Refused { .. })
}

/// The `WHERE` clause of `q`'s filters and its arguments.
fn filter(q: &Query) -> (String, Vec<rusqlite::types::Value>) {
    let (sql, args) = crate::records::filter_sql(q, |i| format!("?{i}"));
    let args = args
        .into_iter()
        .map(|b| match b {
            crate::records::Bound::Text(t) | crate::records::Bound::Key(t) => t.into(),
            crate::records::Bound::Int(i) => i.into(),
        })
        .collect();
    (sql, args)
}

fn read_record(table: Table, r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let body: String = r.get(7)?;
    Ok(Record {
        table,
        id: r.get(0)?,
        version: to_u64(r.get(1)?),
        agent: r.get(2)?,
        task: r.get(3)?,
        state: r.get(4)?,
        key: r.get(5)?,
        at: r.get(6)?,
        kind: r.get(8)?,
        body: serde_json::from_str(&body)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e)))?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations, and
    /// refuses a database written by a newer schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut store = Self::init(Connection::open(path)?)?;
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            store.readers.push(Mutex::new(reader));
        }
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Each batch of a commit group runs in a savepoint; its undo journal (the statement
        // sub-journal) stays in memory instead of a temp file, written page by page.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion { found: version });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for i in version..SCHEMA_VERSION {
            let sql = migration(i).ok_or(StoreError::SchemaVersion { found: i })?;
            tx.execute_batch(&sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
        let size = entry_count(&conn)?;
        let frontier = Frontier::load(&ConnReader(&conn), size)?;
        Ok(Self { writer: Mutex::new(Writer { conn, frontier }), readers: Vec::new(), next_reader: Default::default() })
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        self.writer.lock().map_err(|_| StoreError::Database("the store lock is poisoned".into()))
    }

    /// Runs `f` on a connection for reading.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.readers.is_empty() {
            return f(&self.writer()?.conn);
        }
        // The first free reader, else wait for one picked by a rotating counter.
        for r in &self.readers {
            if let Ok(conn) = r.try_lock() {
                return f(&conn);
            }
        }
        let i = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].lock().map_err(|_| StoreError::Database("the store lock is poisoned".into()))?;
        f(&conn)
    }
}

impl TreeReader for SqliteStore {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        self.read(|c| ConnReader(c).perfect_subtree(start, level))
    }
}

impl AuditLog for SqliteStore {
    fn append(&self, count: usize, build: &mut EntryBuilder<'_>) -> Result<Range<u64>, StoreError> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let tx = w.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut frontier = current_frontier(&tx, &w.frontier)?;
        let range = append_in(&tx, &mut frontier, count, build)?;
        tx.commit()?;
        w.frontier = frontier;
        Ok(range)
    }

    fn size(&self) -> Result<u64, StoreError> {
        self.read(entry_count)
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, bytes, leaf_hash FROM audit_entries WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![bound(from), bound(limit as u64)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            rows.map(|row| {
                let (seq, bytes, hash) = row?;
                Ok(StoredEntry { seq: to_u64(seq), bytes, leaf_hash: hash_of(hash)? })
            })
            .collect()
        })
    }

    fn subtrees(&self, level: u32, starts: Range<u64>) -> Result<Vec<(u64, Hash)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT start, hash FROM audit_subtrees WHERE level = ?1 AND start >= ?2 AND start < ?3 ORDER BY start",
            )?;
            let rows = stmt.query_map(params![level, bound(starts.start), bound(starts.end)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            rows.map(|row| {
                let (start, hash) = row?;
                Ok((to_u64(start), hash_of(hash)?))
            })
            .collect()
        })
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        self.writer()?.conn.execute(
            "INSERT INTO audit_checkpoints (size, note) VALUES (?1, ?2) ON CONFLICT (size) DO NOTHING",
            params![to_i64(size)?, note],
        )?;
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1", [], |r| {
                Ok((to_u64(r.get(0)?), r.get(1)?))
            })
            .optional()?)
        })
    }

    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT note FROM audit_checkpoints WHERE size = ?1", [bound(size)], |r| r.get(0))
                .optional()?)
        })
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT size, note FROM audit_checkpoints WHERE size >= ?1 ORDER BY size LIMIT ?2")?;
            let rows =
                stmt.query_map(params![bound(from_size), bound(limit as u64)], |r| Ok((to_u64(r.get(0)?), r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

impl Store for SqliteStore {
    fn commit_group(
        &self,
        time: OffsetDateTime,
        batches: &[Batch],
        seal: &mut Seal<'_>,
    ) -> Result<Vec<Result<Range<u64>, StoreError>>, StoreError> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let tx = w.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut frontier = current_frontier(&tx, &w.frontier)?;
        let start = frontier.size();
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            tx.execute_batch("SAVEPOINT batch")?;
            let mut attempt = frontier.clone();
            let outcome =
                batch.changes.iter().enumerate().try_for_each(|(i, c)| apply(&tx, c, batch.body(i))).and_then(|()| {
                    let mut events = batch.events.iter().enumerate();
                    append_in(&tx, &mut attempt, batch.events.len(), &mut |seq| {
                        let (i, ev) = events.next().ok_or("fewer events than entries")?;
                        match batch.template(i) {
                            Some(t) => t.render(seq, time),
                            None => ev.to_entry_bytes(seq, time),
                        }
                        .map_err(|e| e.to_string())
                    })
                });
            match outcome {
                Ok(range) => {
                    tx.execute_batch("RELEASE batch")?;
                    frontier = attempt;
                    results.push(Ok(range));
                }
                Err(e) if batch_level(&e) => {
                    tx.execute_batch("ROLLBACK TO batch; RELEASE batch")?;
                    results.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        if frontier.size() > start
            && let Some(note) = seal(frontier.size(), &frontier.root()).map_err(StoreError::Checkpoint)?
        {
            tx.prepare_cached("INSERT INTO audit_checkpoints (size, note) VALUES (?1, ?2)")?
                .execute(params![to_i64(frontier.size())?, note])?;
        }
        tx.commit()?;
        w.frontier = frontier;
        Ok(results)
    }

    fn get(&self, table: Table, id: &str) -> Result<Option<Record>, StoreError> {
        self.read(|c| {
            let sql = format!(
                "SELECT id, version, agent, task, state, key, at, body, kind FROM {} WHERE id = ?1",
                table.name()
            );
            Ok(c.prepare_cached(&sql)?.query_row([id], |r| read_record(table, r)).optional()?)
        })
    }

    fn find(&self, table: Table, q: &Query) -> Result<Vec<Record>, StoreError> {
        let (filter, args) = filter(q);
        let mut sql =
            format!("SELECT id, version, agent, task, state, key, at, body, kind FROM {} WHERE {filter}", table.name());
        let dir = if q.descending { "DESC" } else { "ASC" };
        match q.order {
            Order::At => sql.push_str(&format!(" ORDER BY at {dir}, id {dir}")),
            Order::Id => sql.push_str(&format!(" ORDER BY id {dir}")),
        }
        if q.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", q.limit));
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| read_record(table, r))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn count(&self, table: Table, q: &Query) -> Result<u64, StoreError> {
        let (filter, args) = filter(q);
        let sql = format!("SELECT count(*) FROM {} WHERE {filter}", table.name());
        self.read(|c| {
            let n: i64 = c.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
            Ok(to_u64(n))
        })
    }

    fn count_by_kind(&self, table: Table, q: &Query) -> Result<Vec<(String, u64)>, StoreError> {
        let (filter, args) = filter(q);
        let sql = crate::records::count_by_kind_sql(table, &filter);
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, to_u64(r.get::<_, i64>(1)?)))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn budget_usage(
        &self,
        agent: &str,
        action: &str,
        since_ms: i64,
        target: &str,
        up_to: UsageLimits,
    ) -> Result<Usage, StoreError> {
        self.read(|c| {
            // One read transaction for the four reads: one snapshot, and one round of WAL
            // read locks instead of four.
            let tx = c.unchecked_transaction()?;
            let usage = usage_in(&tx, agent, action, since_ms, target, up_to)?;
            tx.commit()?;
            Ok(usage)
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite makes for counting `q`'s matches in `table`.
    fn plan(store: &SqliteStore, table: Table, q: &Query) -> String {
        let (filter, args) = filter(q);
        let sql = format!("EXPLAIN QUERY PLAN SELECT count(*) FROM {} WHERE {filter}", table.name());
        let w = store.writer().unwrap();
        let mut stmt = w.conn.prepare(&sql).unwrap();
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3)).unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    }

    /// The approval caps are counted on every approval opened, inside the writer's
    /// transaction: over the agent's pending rows, never its whole history.
    #[test]
    fn pending_approvals_are_counted_by_index() {
        let store = SqliteStore::open_in_memory().unwrap();
        let agent = Query { agent: Some("a".into()), state: Some("pending".into()), ..Query::default() };
        let action = Query { kind: Some("host.isolate".into()), ..agent.clone() };
        for q in [&agent, &action] {
            let p = plan(&store, Table::Approvals, q);
            assert!(p.contains("USING COVERING INDEX approvals_by_agent_state"), "{p}");
        }
    }
}
