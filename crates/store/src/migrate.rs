//! Moving a data directory's SQLite store into PostgreSQL (`warden store migrate`): every
//! table copied as it is — the log's entries, subtree hashes and checkpoints byte for byte,
//! the state tables with their versions, the settings and the budget counters — in one
//! PostgreSQL transaction, from one snapshot of the SQLite file taken under its write lock (a
//! server writing to it makes the copy wait, then fail, rather than copy half a commit).
//! Afterwards the two logs are compared: same size, same root.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use tokio_postgres::types::ToSql;

use crate::postgres::{Conn, PgStore};
use crate::{AuditLog, PgTarget, SqliteStore, Store, StoreError, Table};

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub entries: u64,
    pub checkpoints: u64,
    pub records: u64,
    pub root: warden_core::audit::merkle::Hash,
}

/// Rows copied per statement.
const CHUNK: usize = 2_000;

/// Copies the SQLite store at `db` into the empty PostgreSQL database at `to`, reporting
/// progress (`what`, rows so far) as it goes. Nothing is written to PostgreSQL unless all
/// of it is; a database that already holds a log is refused.
pub fn sqlite_to_postgres(db: &Path, to: PgTarget, progress: &mut dyn FnMut(&str, u64)) -> Result<Copied, StoreError> {
    // Opening applies the SQLite migrations, so both sides have this build's schema.
    let source_store = SqliteStore::open(db)?;
    let target = PgStore::open(to)?;
    if target.size()? > 0 || target.meta("origin")?.is_some() {
        return Err(StoreError::Database(format!(
            "the database `{}` already holds a Warden log; migrate into an empty one",
            target.target()
        )));
    }
    let mut src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    src.busy_timeout(std::time::Duration::from_secs(10))?;
    // The write lock: no commit lands while the copy reads.
    let snapshot = src.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let copied = target.with_transaction(&mut |c| copy(&snapshot, c, progress))?;
    drop(snapshot);
    // The same log on both sides.
    let size = source_store.size()?;
    if target.size()? != size || (size > 0 && target.root(size)? != source_store.root(size)?) {
        return Err(StoreError::Database("the copied log does not match its source".into()));
    }
    Ok(Copied { root: source_store.root(size)?, ..copied })
}

/// A column value read from SQLite, written to PostgreSQL.
#[derive(Debug)]
enum Col {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Col {
    fn sql_type(&self) -> &'static str {
        match self {
            Col::Int(_) => "bigint[]",
            Col::Text(_) => "text[]",
            Col::Bytes(_) => "bytea[]",
        }
    }
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Col::Int(v) => v,
            Col::Text(v) => v,
            Col::Bytes(v) => v,
        }
    }
    fn push(&mut self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
        match self {
            Col::Int(v) => v.push(row.get(i)?),
            Col::Text(v) => v.push(row.get(i)?),
            // Keys are text on SQLite and bytes on PostgreSQL.
            Col::Bytes(v) => v.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => None,
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => Some(t.to_vec()),
                other => return Err(rusqlite::Error::InvalidColumnType(i, "key".into(), other.data_type())),
            }),
        }
        Ok(())
    }
    fn clear(&mut self) {
        match self {
            Col::Int(v) => v.clear(),
            Col::Text(v) => v.clear(),
            Col::Bytes(v) => v.clear(),
        }
    }
}

/// Copies table `name`'s `columns` (each with its kind: `i`nt, `t`ext, `b`ytes), a chunk at a
/// time; the rows copied.
fn copy_table(
    src: &Connection,
    dst: &mut Conn,
    name: &str,
    columns: &[(&str, char)],
    progress: &mut dyn FnMut(&str, u64),
) -> Result<u64, StoreError> {
    let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let mut cols: Vec<Col> = columns
        .iter()
        .map(|(_, k)| match k {
            'i' => Col::Int(Vec::new()),
            'b' => Col::Bytes(Vec::new()),
            _ => Col::Text(Vec::new()),
        })
        .collect();
    let unnest: Vec<String> = cols.iter().enumerate().map(|(i, c)| format!("${}::{}", i + 1, c.sql_type())).collect();
    let insert = format!("INSERT INTO {name} ({}) SELECT * FROM unnest({})", list.join(", "), unnest.join(", "));
    let mut stmt = src.prepare(&format!("SELECT {} FROM {name}", list.join(", ")))?;
    let mut rows = stmt.query([])?;
    let (mut n, mut pending) = (0u64, 0usize);
    let flush = |cols: &mut Vec<Col>, dst: &mut Conn| -> Result<(), StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Col::as_sql).collect();
        dst.exec(&insert, &params)?;
        cols.iter_mut().for_each(Col::clear);
        Ok(())
    };
    while let Some(row) = rows.next()? {
        for (i, c) in cols.iter_mut().enumerate() {
            c.push(row, i)?;
        }
        n += 1;
        pending += 1;
        if pending == CHUNK {
            flush(&mut cols, dst)?;
            pending = 0;
            progress(name, n);
        }
    }
    if pending > 0 {
        flush(&mut cols, dst)?;
    }
    progress(name, n);
    Ok(n)
}

fn copy(src: &Connection, dst: &mut Conn, progress: &mut dyn FnMut(&str, u64)) -> Result<Copied, StoreError> {
    let entries = copy_table(src, dst, "audit_entries", &[("seq", 'i'), ("bytes", 'b'), ("leaf_hash", 'b')], progress)?;
    copy_table(src, dst, "audit_subtrees", &[("level", 'i'), ("start", 'i'), ("hash", 'b')], progress)?;
    let checkpoints = copy_table(src, dst, "audit_checkpoints", &[("size", 'i'), ("note", 't')], progress)?;
    dst.exec("UPDATE audit_head SET size = $1", &[&i64::try_from(entries).unwrap_or(i64::MAX)])?;
    copy_table(src, dst, "meta", &[("key", 't'), ("value", 't')], progress)?;
    copy_table(src, dst, "budget_hits", &[("agent", 't'), ("action", 't'), ("target", 't'), ("at", 'i')], progress)?;
    copy_table(
        src,
        dst,
        "budget_minutes",
        &[("agent", 't'), ("action", 't'), ("minute", 'i'), ("hits", 'i')],
        progress,
    )?;
    copy_table(
        src,
        dst,
        "budget_targets",
        &[("agent", 't'), ("action", 't'), ("target", 't'), ("last_at", 'i')],
        progress,
    )?;
    let mut records = 0;
    for t in Table::ALL {
        records += copy_table(
            src,
            dst,
            t.name(),
            &[
                ("id", 't'),
                ("version", 'i'),
                ("agent", 't'),
                ("task", 't'),
                ("state", 't'),
                ("key", 'b'),
                ("at", 'i'),
                ("body", 't'),
                ("kind", 't'),
            ],
            progress,
        )?;
    }
    Ok(Copied { entries, checkpoints, records, root: [0; 32] })
}
