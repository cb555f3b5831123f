//! PostgreSQL: one database shared by any number of `warden serve` nodes.
//!
//! The state tables and the audit log have the same shape as on SQLite. What differs is who
//! else writes: other nodes. So every commit starts by locking the one row of `audit_head`
//! (`SELECT … FOR UPDATE`), which holds the log's size and last time. That lock is the fence:
//! while a node holds it, no other node can commit, so the preconditions it checks (record
//! versions, halts epoch, budgets, caps) are exact, the entries it appends get the next sequence
//! numbers, and the checkpoint it signs for the new size is stored in the same transaction —
//! two inconsistent checkpoints cannot both commit. The lock goes with the transaction: a node
//! killed mid-commit loses its connection, the database rolls the transaction back and the
//! next node takes the lock. Durable means sequenced: when a commit returns, its entries have
//! their numbers and are in the tree (the merge delay is zero).
//!
//! The driver is `tokio-postgres`, run on a small runtime of the store's own: the store's
//! methods are synchronous (as on SQLite) and work from any thread, because the connections'
//! I/O runs on that runtime and the callers only wait for answers.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use warden_core::audit::merkle::{Frontier, Hash, TreeReader, leaf_hash};

use crate::{
    AuditLog, Batch, Change, EntryBuilder, Order, Query, Record, SCHEMA_VERSION, Seal, Store, StoreError, StoredEntry,
    Table, Usage, UsageLimits,
};

/// Reader connections per node.
const READERS: usize = 4;

/// Milliseconds per budget summary bucket (as on SQLite).
const MINUTE_MS: i64 = 60_000;

/// The advisory lock two nodes starting at once take around migrations.
const MIGRATION_LOCK: i64 = 0x5741_5244_454e_0001;

/// The step from PostgreSQL schema `v` to `v + 1` (the first was 5).
fn pg_migration(v: u32) -> Option<String> {
    match v {
        5 => Some(state_table(Table::Sessions) + &state_table(Table::Holds)),
        6 => Some(EXECUTIONS_BY_KIND.to_string()),
        _ => None,
    }
}

/// Schema 7: an execution's action class as a column of its own, and the index that makes a
/// task's history one grouped count (as on SQLite).
const EXECUTIONS_BY_KIND: &str = "
    UPDATE executions SET kind = body::jsonb ->> 'action' WHERE kind IS NULL;
    CREATE INDEX executions_by_task_state_kind ON executions (task, state, kind);
";

/// The schema, in the order it is created: the PostgreSQL store starts at the version the
/// SQLite one has reached, so one number names both.
fn schema() -> String {
    let mut sql = String::from(
        "CREATE TABLE audit_entries (seq BIGINT PRIMARY KEY, bytes BYTEA NOT NULL, leaf_hash BYTEA NOT NULL);
         CREATE TABLE audit_subtrees (level INTEGER NOT NULL, start BIGINT NOT NULL, hash BYTEA NOT NULL,
                                      PRIMARY KEY (level, start));
         CREATE TABLE audit_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
         CREATE TABLE audit_head (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), size BIGINT NOT NULL,
                                  time_ns BIGINT NOT NULL);
         INSERT INTO audit_head (one, size, time_ns) VALUES (TRUE, 0, 0);
         CREATE TABLE meta (key TEXT COLLATE \"C\" PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE budget_hits (agent TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                                   at BIGINT NOT NULL);
         CREATE INDEX budget_hits_by_pair ON budget_hits (agent, action, at);
         CREATE TABLE budget_minutes (agent TEXT NOT NULL, action TEXT NOT NULL, minute BIGINT NOT NULL,
                                      hits BIGINT NOT NULL, PRIMARY KEY (agent, action, minute));
         CREATE TABLE budget_targets (agent TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                                      last_at BIGINT NOT NULL, PRIMARY KEY (agent, action, target));
         CREATE INDEX budget_targets_by_time ON budget_targets (agent, action, last_at);",
    );
    for t in Table::ALL {
        sql.push_str(&state_table(t));
    }
    for t in [Table::Requests, Table::Approvals] {
        let n = t.name();
        sql.push_str(&format!(
            "CREATE INDEX {n}_by_at ON {n} (at NULLS FIRST, id);
             CREATE INDEX {n}_by_kind ON {n} (kind, at NULLS FIRST, id);
             CREATE INDEX {n}_by_state_id ON {n} (state, id);
             CREATE INDEX {n}_by_agent_kind ON {n} (agent, kind, state, at NULLS FIRST, id);"
        ));
    }
    sql.push_str("CREATE INDEX approvals_by_agent_state ON approvals (agent, state, kind);");
    sql.push_str("CREATE INDEX executions_by_task_state_kind ON executions (task, state, kind);");
    sql
}

/// One state table and its indexes. Ids compare byte by byte (`C`), as on SQLite, whatever
/// the cluster's locale; keys are bytes, since Warden's join their parts with NUL, which
/// PostgreSQL text cannot hold; `at` sorts NULLs first ascending, as on SQLite, so the
/// indexes say so too.
fn state_table(t: Table) -> String {
    let n = t.name();
    format!(
        "CREATE TABLE {n} (id TEXT COLLATE \"C\" PRIMARY KEY, version BIGINT NOT NULL, agent TEXT COLLATE \"C\",
                           task TEXT COLLATE \"C\", state TEXT COLLATE \"C\", key BYTEA UNIQUE,
                           at BIGINT, kind TEXT COLLATE \"C\", body TEXT NOT NULL);
         CREATE INDEX {n}_by_agent ON {n} (agent, at NULLS FIRST, id);
         CREATE INDEX {n}_by_task ON {n} (task, at NULLS FIRST, id);
         CREATE INDEX {n}_by_state ON {n} (state, at NULLS FIRST, id);"
    )
}

/// Where the database is and how to reach it: a `postgres://` URL as libpq reads it, with
/// `sslmode` (`disable`, `prefer`, `require`) and `sslrootcert` (a PEM file of the CAs to trust
/// instead of the public roots). With TLS the server's certificate and name are always checked.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The URL with any password replaced, for messages.
    shown: String,
    /// How far a committing node's clock may be from the database's ([`MAX_SKEW_MS`]);
    /// `None` checks nothing (tests that run on a made-up clock).
    max_skew_ms: Option<i64>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` with the password (between `:` and `@` of the authority, or a `password=` parameter)
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let parts: Vec<String> = query
            .split('&')
            .map(|p| if p.starts_with("password=") { "password=***".to_string() } else { p.to_string() })
            .collect();
        out = format!("{head}{}", parts.join("&"));
    }
    out
}

impl PgTarget {
    /// Reads a `postgres://` (or `postgresql://`) URL.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let bad = |why: String| StoreError::Database(format!("`{shown}` is not a usable PostgreSQL URL: {why}"));
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("it must begin with `postgres://`".into()));
        }
        // `sslrootcert` is libpq's; the driver does not know it, so it is taken out here.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut root_file = None;
        for p in query.split('&').filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some(("sslrootcert", v)) => root_file = Some(v.to_string()),
                _ => kept.push(p),
            }
        }
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("warden");
        }
        // A node cut off mid-transaction must not hold the log's lock for long; a statement
        // stuck behind something unforeseen fails (and the request with it) instead of hanging.
        let ours = "-c idle_in_transaction_session_timeout=10000 -c statement_timeout=30000";
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {ours}"),
            None => ours.to_string(),
        };
        config.options(options);

        let mut roots = rustls::RootCertStore::empty();
        match &root_file {
            Some(path) => {
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?;
                for cert in certs {
                    let cert = cert.map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?;
                    roots.add(cert).map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(bad(format!("sslrootcert `{path}` holds no certificate")));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTarget {
            config,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            shown,
            max_skew_ms: Some(MAX_SKEW_MS),
        })
    }

    /// Commits stamped with any time are taken: for tests whose clock is made up. A real node
    /// keeps the check.
    pub fn without_clock_check(mut self) -> Self {
        self.max_skew_ms = None;
        self
    }
}

/// One connection and the statements prepared on it.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Waits for a driver future on the calling thread; its I/O runs on the store's runtime.
fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

fn db(e: tokio_postgres::Error) -> StoreError {
    // The driver's text names the server's message, never the URL or its password.
    StoreError::Database(chain(&e))
}

/// An error and its causes, `: `-separated (the driver puts the useful part in the causes).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

impl Conn {
    fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error> {
        let s = self.prepared_raw(sql)?;
        wait(self.client.query(&s, params))
    }

    fn prepared_raw(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = wait(self.client.prepare(sql))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// The statement for `sql`, prepared once per connection.
    fn prepared(&mut self, sql: &str) -> Result<Statement, StoreError> {
        self.prepared_raw(sql).map_err(db)
    }

    fn rows(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.query(sql, params).map_err(db)
    }

    fn opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    fn one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, StoreError> {
        self.opt(sql, params)?.ok_or_else(|| StoreError::Database(format!("no row from `{sql}`")))
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, tokio_postgres::Error> {
        let s = self.prepared_raw(sql)?;
        wait(self.client.execute(&s, params))
    }

    pub(crate) fn exec(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        self.execute(sql, params).map_err(db)
    }

    fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        wait(self.client.batch_execute(sql)).map_err(db)
    }
}

/// The writer connection and the tree's right edge as this node last committed it.
struct Writer {
    conn: Option<Conn>,
    frontier: Option<Frontier>,
}

/// How far a node's clock may be from the database's before its commits are refused.
pub const MAX_SKEW_MS: i64 = 2_000;

/// The channel every commit that moves the log notifies.
const CHANNEL: &str = "warden_log";

/// The store in a PostgreSQL database.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    /// Bumped when another writer's (or this one's) commit is announced.
    changes: tokio::sync::watch::Sender<u64>,
    target: PgTarget,
    writer: Mutex<Writer>,
    readers: Vec<Mutex<Option<Conn>>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropped from anywhere, an async task included: the runtime's threads are let go
        // without waiting for them.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Database(format!("value {v} is too large for the database")))
}

fn hash_of(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Database("a stored hash is not 32 bytes".into()))
}

fn conflict(table: Table, id: &str, reason: &'static str) -> StoreError {
    StoreError::Conflict { table: table.name(), id: id.to_string(), reason }
}

fn is_unique(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Failures that belong to one batch (the others in its group go on).
fn batch_level(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::Entry { .. } | StoreError::Refused { .. })
}

fn time_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// The perfect subtrees on the right edge of a tree of `size` leaves: (level, start).
fn edge(size: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut start = 0;
    for level in (0..64u32).rev() {
        if size & (1 << level) != 0 {
            out.push((level, start));
            start += 1 << level;
        }
    }
    out
}

/// Hashes already read, as a tree reader.
struct Known(HashMap<(u32, u64), Hash>);

impl TreeReader for Known {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        self.0.get(&(level, start)).copied().ok_or(StoreError::MissingSubtree { start, end: start + (1u64 << level) })
    }
}

/// The reads of the right edge of the tree of `size` leaves: the leaves and the subtrees on
/// it (two statements, for one pipeline).
fn edge_reads(size: u64) -> Vec<Step> {
    let positions = edge(size);
    let leaves: Vec<i64> = positions.iter().filter(|(l, _)| *l == 0).map(|(_, s)| bound(*s)).collect();
    let (levels, starts): (Vec<i32>, Vec<i64>) = positions
        .iter()
        .filter(|(l, _)| *l > 0)
        .map(|(l, s)| (i32::try_from(*l).unwrap_or(i32::MAX), bound(*s)))
        .unzip();
    vec![
        step("SELECT 0, seq, leaf_hash FROM audit_entries WHERE seq = ANY($1)", vec![Box::new(leaves)], Check::Read),
        step(
            "SELECT level, start, hash FROM audit_subtrees
             WHERE (level, start) IN (SELECT * FROM unnest($1::integer[], $2::bigint[]))",
            vec![Box::new(levels), Box::new(starts)],
            Check::Read,
        ),
    ]
}

/// The right edge of the tree of `size` leaves from the rows [`edge_reads`] answered (level,
/// start, hash); an error when one is missing.
fn edge_from(size: u64, rows: impl IntoIterator<Item = Row>) -> Result<Frontier, StoreError> {
    let mut known = HashMap::new();
    for r in rows {
        let level: i32 = r.get(0);
        known.insert((u32::try_from(level).unwrap_or(0), to_u64(r.get(1))), hash_of(r.get(2))?);
    }
    Frontier::load(&Known(known), size)
}

/// The right edge of the tree of `size` leaves, in one round trip.
fn load_frontier(c: &mut Conn, size: u64) -> Result<Frontier, StoreError> {
    let reads = edge_reads(size);
    let mut answers = pipeline(c, &reads)?.into_iter();
    let mut rows = Vec::new();
    for s in &reads {
        rows.extend(rows_of(next_answer(&mut answers, &s.check)?));
    }
    edge_from(size, rows)
}

/// Appends `count` entries built by `build`, pushing their leaves onto `frontier` (which is
/// left as it was when this fails).
fn append_in(
    c: &mut Conn,
    frontier: &mut Frontier,
    count: usize,
    build: &mut EntryBuilder<'_>,
) -> Result<Range<u64>, StoreError> {
    let first = frontier.size();
    if count == 0 {
        return Ok(first..first);
    }
    let mut attempt = frontier.clone();
    let (mut seqs, mut bytes, mut leaves) = (Vec::with_capacity(count), Vec::with_capacity(count), Vec::new());
    let (mut levels, mut starts, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for seq in first..first + count as u64 {
        let b = build(seq).map_err(|reason| StoreError::Entry { seq, reason })?;
        let leaf = leaf_hash(&b);
        seqs.push(to_i64(seq)?);
        bytes.push(b);
        leaves.push(leaf.to_vec());
        for done in attempt.push(leaf).into_iter().filter(|d| d.level > 0) {
            levels.push(i32::try_from(done.level).unwrap_or(i32::MAX));
            starts.push(to_i64(done.start)?);
            hashes.push(done.hash.to_vec());
        }
    }
    c.exec(
        "INSERT INTO audit_entries (seq, bytes, leaf_hash)
         SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
        &[&seqs, &bytes, &leaves],
    )?;
    if !levels.is_empty() {
        c.exec(
            "INSERT INTO audit_subtrees (level, start, hash)
             SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])",
            &[&levels, &starts, &hashes],
        )?;
    }
    *frontier = attempt;
    Ok(first..first + count as u64)
}

fn body_text(r: &Record, prepared: Option<&str>) -> Result<String, StoreError> {
    match prepared {
        Some(text) => Ok(text.to_string()),
        None => serde_json::to_string(&r.body).map_err(|e| StoreError::Database(format!("record `{}`: {e}", r.id))),
    }
}

/// One bound value of a dynamic filter.
#[derive(Debug)]
enum Arg {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
}

impl Arg {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Arg::Text(s) => s,
            Arg::Bytes(b) => b,
            Arg::Int(i) => i,
        }
    }
}

/// A record's key as stored (bytes).
fn key_bytes(key: &Option<String>) -> Option<&[u8]> {
    key.as_deref().map(str::as_bytes)
}

/// The `WHERE` clause of `q`'s filters and its arguments (the same meaning as on SQLite).
fn filter(q: &Query) -> (String, Vec<Arg>) {
    let (sql, args) = crate::records::filter_sql(q, |i| format!("${i}"));
    let args = args
        .into_iter()
        .map(|b| match b {
            crate::records::Bound::Text(t) => Arg::Text(t),
            crate::records::Bound::Key(k) => Arg::Bytes(k.into_bytes()),
            crate::records::Bound::Int(i) => Arg::Int(i),
        })
        .collect();
    (sql, args)
}

fn refs(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(Arg::as_sql).collect()
}

const COLUMNS: &str = "id, version, agent, task, state, key, at, body, kind";

fn read_record(table: Table, r: &Row) -> Result<Record, StoreError> {
    let body: String = r.get(7);
    Ok(Record {
        table,
        id: r.get(0),
        version: to_u64(r.get(1)),
        agent: r.get(2),
        task: r.get(3),
        state: r.get(4),
        key: r
            .get::<_, Option<Vec<u8>>>(5)
            .map(|k| String::from_utf8(k).map_err(|_| StoreError::Database("a stored key is not UTF-8".into())))
            .transpose()?,
        at: r.get(6),
        kind: r.get(8),
        body: serde_json::from_str(&body)
            .map_err(|e| StoreError::Database(format!("record `{}` does not parse: {e}", r.get::<_, String>(0))))?,
    })
}

/// Budget use in one statement (one round trip, one snapshot).
const USAGE: &str = "SELECT
    (SELECT count(*) FROM (SELECT 1 FROM budget_hits WHERE agent = $1 AND action = $2 AND at >= $3 AND at < $4
                           LIMIT $6) AS p),
    (SELECT coalesce(sum(hits), 0)::bigint FROM budget_minutes WHERE agent = $1 AND action = $2 AND minute >= $5),
    (SELECT count(*) FROM (SELECT 1 FROM budget_targets WHERE agent = $1 AND action = $2 AND last_at >= $3
                           LIMIT $7) AS t),
    EXISTS (SELECT 1 FROM budget_targets WHERE agent = $1 AND action = $2 AND target = $8 AND last_at >= $3)";

fn usage_in(
    c: &mut Conn,
    agent: &str,
    action: &str,
    since_ms: i64,
    target: &str,
    up_to: UsageLimits,
) -> Result<Usage, StoreError> {
    let params = usage_params(agent, action, since_ms, target, up_to);
    let r = c.one(USAGE, &params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect::<Vec<_>>())?;
    Ok(usage_of(&r, up_to))
}

/// The usage a [`USAGE`] row says, each count capped at its limit.
fn usage_of(r: &Row, up_to: UsageLimits) -> Usage {
    let hits = to_u64(r.get::<_, i64>(0)).saturating_add(to_u64(r.get::<_, i64>(1))).min(up_to.hits);
    Usage { hits, distinct_targets: to_u64(r.get::<_, i64>(2)).min(up_to.distinct_targets), target_seen: r.get(3) }
}

/// The bindings of [`USAGE`].
fn usage_params(agent: &str, action: &str, since_ms: i64, target: &str, up_to: UsageLimits) -> Vec<Owned> {
    let first_whole = since_ms.div_euclid(MINUTE_MS) + i64::from(since_ms.rem_euclid(MINUTE_MS) != 0);
    vec![
        Box::new(agent.to_string()),
        Box::new(action.to_string()),
        Box::new(since_ms),
        Box::new(first_whole.saturating_mul(MINUTE_MS)),
        Box::new(first_whole),
        Box::new(bound(up_to.hits)),
        Box::new(bound(up_to.distinct_targets)),
        Box::new(target.to_string()),
    ]
}

/// A bound value owned by a pipelined statement.
type Owned = Box<dyn ToSql + Sync + Send>;

/// What a pipelined statement's answer must show for its batch to stand.
#[derive(Debug)]
enum Check {
    /// Nothing (budget counters, settings, deletes, the log's rows).
    Any,
    /// An insert: a unique violation is a conflict on the id or key.
    Inserted(Table, String),
    /// An update of exactly one row at the version read.
    Updated(Table, String),
    /// The record is at this version (0: absent).
    Version(Table, String, u64),
    /// The setting has this value.
    Meta(String, Option<String>),
    /// The record, if any, is not in this state.
    NotState(Table, String, String),
    /// Fewer than `max` records match.
    Fewer(Table, u64),
    /// The budget is not met (see [`Change::BudgetCheck`]).
    Budget { agent: String, action: String, max_hits: Option<u64>, max_distinct: Option<u64>, up_to: UsageLimits },
    /// A read whose rows the caller wants.
    Read,
    /// Transaction control (`BEGIN`, savepoints, `COMMIT`), sent as a simple query.
    Control,
}

/// One statement of a batch's pipeline.
struct Step {
    sql: String,
    params: Vec<Owned>,
    check: Check,
}

fn step(sql: impl Into<String>, params: Vec<Owned>, check: Check) -> Step {
    Step { sql: sql.into(), params, check }
}

/// A transaction control statement (or several, `;`-separated) in a pipeline.
fn control(sql: impl Into<String>) -> Step {
    step(sql, Vec::new(), Check::Control)
}

/// `lead` (a record's id, and for an update its version) followed by the record's columns:
/// agent, task, state, key, at, body, kind.
fn record_params(mut lead: Vec<Owned>, r: &Record, body: Option<&str>) -> Result<Vec<Owned>, StoreError> {
    lead.extend::<[Owned; 7]>([
        Box::new(r.agent.clone()),
        Box::new(r.task.clone()),
        Box::new(r.state.clone()),
        Box::new(key_bytes(&r.key).map(<[u8]>::to_vec)),
        Box::new(r.at),
        Box::new(body_text(r, body)?),
        Box::new(r.kind.clone()),
    ]);
    Ok(lead)
}

/// The statements that apply `change` inside the writer's transaction (under the log's lock,
/// so every check is exact), with what to check in their answers.
fn steps_of(change: &Change, body: Option<&str>, out: &mut Vec<Step>) -> Result<(), StoreError> {
    match change {
        Change::Insert(r) => out.push(step(
            format!(
                "INSERT INTO {} (id, version, agent, task, state, key, at, body, kind)
                 VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8)",
                r.table.name()
            ),
            record_params(vec![Box::new(r.id.clone())], r, body)?,
            Check::Inserted(r.table, r.id.clone()),
        )),
        Change::Update(r) => out.push(step(
            format!(
                "UPDATE {} SET version = version + 1, agent = $3, task = $4, state = $5, key = $6, at = $7,
                               body = $8, kind = $9
                 WHERE id = $1 AND version = $2",
                r.table.name()
            ),
            record_params(vec![Box::new(r.id.clone()), Box::new(to_i64(r.version)?)], r, body)?,
            Check::Updated(r.table, r.id.clone()),
        )),
        Change::BudgetHit { agent, action, target, at } => {
            let p = || -> Vec<Owned> {
                vec![Box::new(agent.clone()), Box::new(action.clone()), Box::new(target.clone()), Box::new(*at)]
            };
            out.push(step(
                "INSERT INTO budget_hits (agent, action, target, at) VALUES ($1, $2, $3, $4)",
                p(),
                Check::Any,
            ));
            out.push(step(
                "INSERT INTO budget_minutes (agent, action, minute, hits) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (agent, action, minute) DO UPDATE SET hits = budget_minutes.hits + 1",
                vec![Box::new(agent.clone()), Box::new(action.clone()), Box::new(at.div_euclid(MINUTE_MS))],
                Check::Any,
            ));
            out.push(step(
                "INSERT INTO budget_targets (agent, action, target, last_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (agent, action, target)
                 DO UPDATE SET last_at = greatest(budget_targets.last_at, EXCLUDED.last_at)",
                p(),
                Check::Any,
            ));
        }
        Change::SetMeta { key, value } => out.push(step(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            vec![Box::new(key.clone()), Box::new(value.clone())],
            Check::Any,
        )),
        Change::Delete { table, id } => out.push(step(
            format!("DELETE FROM {} WHERE id = $1", table.name()),
            vec![Box::new(id.clone())],
            Check::Any,
        )),
        Change::Expect { table, id, version } => out.push(step(
            format!("SELECT version FROM {} WHERE id = $1", table.name()),
            vec![Box::new(id.clone())],
            Check::Version(*table, id.clone(), *version),
        )),
        Change::ExpectNotState { table, id, state } => out.push(step(
            format!("SELECT state FROM {} WHERE id = $1", table.name()),
            vec![Box::new(id.clone())],
            Check::NotState(*table, id.clone(), state.clone()),
        )),
        Change::ExpectMeta { key, value } => out.push(step(
            "SELECT value FROM meta WHERE key = $1",
            vec![Box::new(key.clone())],
            Check::Meta(key.clone(), value.clone()),
        )),
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
            let params = args
                .into_iter()
                .map(|a| -> Owned {
                    match a {
                        Arg::Text(t) => Box::new(t),
                        Arg::Bytes(b) => Box::new(b),
                        Arg::Int(i) => Box::new(i),
                    }
                })
                .collect();
            out.push(step(
                format!("SELECT count(*) FROM {} WHERE {filter}", table.name()),
                params,
                Check::Fewer(*table, *max),
            ));
        }
        Change::BudgetCheck { agent, action, target, since_ms, max_hits, max_distinct_targets } => {
            let up_to =
                UsageLimits { hits: max_hits.unwrap_or(0), distinct_targets: max_distinct_targets.unwrap_or(0) };
            out.push(step(
                USAGE,
                usage_params(agent, action, *since_ms, target, up_to),
                Check::Budget {
                    agent: agent.clone(),
                    action: action.clone(),
                    max_hits: *max_hits,
                    max_distinct: *max_distinct_targets,
                    up_to,
                },
            ));
        }
    }
    Ok(())
}

/// What a pipelined statement answered.
enum Answer {
    Rows(Vec<Row>),
    Count(u64),
}

/// Whether `answer` stands by its check: `Err` is the batch's conflict.
fn judge(check: &Check, answer: Result<Answer, tokio_postgres::Error>) -> Result<(), StoreError> {
    let answer = match answer {
        Ok(a) => a,
        Err(e) if is_unique(&e) => {
            return Err(match check {
                Check::Inserted(t, id) => conflict(*t, id, "the id or key is already taken"),
                Check::Updated(t, id) => conflict(*t, id, "the key is already taken"),
                _ => db(e),
            });
        }
        Err(e) => return Err(db(e)),
    };
    let rows = |a: &Answer| match a {
        Answer::Rows(r) => r.first().cloned(),
        Answer::Count(_) => None,
    };
    match check {
        Check::Any | Check::Inserted(..) | Check::Read | Check::Control => Ok(()),
        Check::Updated(t, id) => match answer {
            Answer::Count(1) => Ok(()),
            _ => Err(conflict(*t, id, "the record changed since it was read, or is gone")),
        },
        Check::Version(t, id, version) => {
            let found = rows(&answer).map_or(0, |r| to_u64(r.get(0)));
            if found == *version {
                Ok(())
            } else {
                Err(conflict(*t, id, "a precondition failed: the record changed since it was read"))
            }
        }
        Check::Meta(key, value) => {
            let found: Option<String> = rows(&answer).map(|r| r.get(0));
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
        Check::NotState(t, id, state) => {
            let found: Option<String> = rows(&answer).and_then(|r| r.get(0));
            if found.as_deref() == Some(state.as_str()) {
                Err(StoreError::Refused { table: t.name(), id: id.clone(), state: state.clone() })
            } else {
                Ok(())
            }
        }
        Check::Fewer(t, max) => {
            let n = rows(&answer).map_or(0, |r| to_u64(r.get::<_, i64>(0)));
            if n < *max {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    table: t.name(),
                    id: format!("{n} matching"),
                    reason: "a precondition failed: as many records match as the cap allows",
                })
            }
        }
        Check::Budget { agent, action, max_hits, max_distinct, up_to } => {
            let r = rows(&answer).ok_or_else(|| StoreError::Database("no budget row".into()))?;
            crate::budget_verdict(&usage_of(&r, *up_to), agent, action, *max_hits, *max_distinct)
        }
    }
}

/// Sends every step at once — one round trip — and answers each in order. A step after one
/// that failed in the database is refused with it (the transaction is aborted), so callers
/// read the answers up to the first that does not stand.
fn pipeline(c: &mut Conn, steps: &[Step]) -> Result<Vec<Result<Answer, tokio_postgres::Error>>, StoreError> {
    // A statement not yet prepared on this connection is prepared first — after the control
    // statements that lead (they may be what takes the transaction out of an aborted batch).
    let mut steps = steps;
    let mut early = Vec::new();
    if steps.iter().any(|s| !matches!(s.check, Check::Control) && !c.statements.contains_key(&s.sql)) {
        while let Some((first, rest)) = steps.split_first()
            && matches!(first.check, Check::Control)
        {
            early.push(wait(c.client.batch_execute(&first.sql)).map(|()| Answer::Count(0)));
            if early.last().is_some_and(Result::is_err) {
                return Ok(early);
            }
            steps = rest;
        }
    }
    let statements = steps
        .iter()
        .map(|s| match s.check {
            Check::Control => Ok(None),
            _ => c.prepared(&s.sql).map(Some),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = &c.client;
    type Fut<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Answer, tokio_postgres::Error>> + 'a>>;
    let mut futures: Vec<Fut<'_>> = Vec::with_capacity(steps.len());
    for (s, statement) in steps.iter().zip(&statements) {
        let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = matches!(
            s.check,
            Check::Version(..)
                | Check::Meta(..)
                | Check::NotState(..)
                | Check::Fewer(..)
                | Check::Budget { .. }
                | Check::Read
        );
        futures.push(match statement {
            None => Box::pin(async move { client.batch_execute(&s.sql).await.map(|()| Answer::Count(0)) }),
            Some(statement) if rows => {
                Box::pin(async move { client.query(statement, &params).await.map(Answer::Rows) })
            }
            Some(statement) => Box::pin(async move { client.execute(statement, &params).await.map(Answer::Count) }),
        });
    }
    let mut answers: Vec<Option<Result<Answer, tokio_postgres::Error>>> = (0..futures.len()).map(|_| None).collect();
    // Polled in order, so the requests go out in order, all before the first answer is read.
    wait(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(answers.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    }));
    early.extend(answers.into_iter().map(|a| a.expect("every future finished")));
    Ok(early)
}

/// Batch `index`'s statements, appended to `out`: its savepoint (`b<index>`, nested in the
/// previous batch's, so rolling back to it undoes this batch and every one sent after it), its
/// changes and its entries, stamped with the sequence numbers they take if every batch before
/// it stands (pushed onto `attempt`). `Ok(Err(…))` when an entry cannot be built: nothing of
/// the batch is appended and it fails alone.
fn batch_steps(
    batch: &Batch,
    index: usize,
    attempt: &mut Frontier,
    time: OffsetDateTime,
    out: &mut Vec<Step>,
) -> Result<Result<Range<u64>, StoreError>, StoreError> {
    let mut steps = vec![control(format!("SAVEPOINT b{index}"))];
    for (i, change) in batch.changes.iter().enumerate() {
        steps_of(change, batch.body(i), &mut steps)?;
    }
    let mut grown = attempt.clone();
    let first = grown.size();
    let mut events = batch.events.iter().enumerate();
    let (mut seqs, mut bytes, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
    let (mut levels, mut starts, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for seq in first..first + batch.events.len() as u64 {
        let (i, ev) = events.next().ok_or(StoreError::Entry { seq, reason: "fewer events than entries".into() })?;
        let b = match batch.template(i) {
            Some(t) => t.render(seq, time),
            None => ev.to_entry_bytes(seq, time),
        };
        let b = match b {
            Ok(b) => b,
            Err(e) => return Ok(Err(StoreError::Entry { seq, reason: e.to_string() })),
        };
        let leaf = leaf_hash(&b);
        seqs.push(to_i64(seq)?);
        bytes.push(b);
        leaves.push(leaf.to_vec());
        for done in grown.push(leaf).into_iter().filter(|d| d.level > 0) {
            levels.push(i32::try_from(done.level).unwrap_or(i32::MAX));
            starts.push(to_i64(done.start)?);
            hashes.push(done.hash.to_vec());
        }
    }
    if !seqs.is_empty() {
        steps.push(step(
            "INSERT INTO audit_entries (seq, bytes, leaf_hash) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
            vec![Box::new(seqs), Box::new(bytes), Box::new(leaves)],
            Check::Any,
        ));
    }
    if !levels.is_empty() {
        steps.push(step(
            "INSERT INTO audit_subtrees (level, start, hash) SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])",
            vec![Box::new(levels), Box::new(starts), Box::new(hashes)],
            Check::Any,
        ));
    }
    out.extend(steps);
    *attempt = grown;
    Ok(Ok(first..first + batch.events.len() as u64))
}

/// What one locked transaction of the writer does, given the tree as it stands; the steps it
/// leaves in the last argument go out with the commit, in its round trip.
type Work<'a, T> =
    dyn FnMut(&mut Conn, &mut Frontier, &mut OffsetDateTime, &mut Vec<Step>) -> Result<T, StoreError> + 'a;

/// The log's head, locked: its size, its last time and the database's clock.
const HEAD: &str = "SELECT size, time_ns, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                    FROM audit_head FOR UPDATE";

/// Leaves from a cached edge to the head, read in the head's round trip; more than this many
/// and the edge is read whole instead.
const CATCH_UP: i64 = 4096;

/// The next answer of a pipeline, which must stand by `check`.
fn next_answer(
    answers: &mut impl Iterator<Item = Result<Answer, tokio_postgres::Error>>,
    check: &Check,
) -> Result<Answer, StoreError> {
    match answers.next() {
        Some(Ok(a)) => Ok(a),
        Some(Err(e)) => judge(check, Err(e)).map(|()| Answer::Count(0)),
        None => Err(StoreError::Database("a pipelined statement got no answer".into())),
    }
}

/// The rows of a read's answer.
fn rows_of(a: Answer) -> Vec<Row> {
    match a {
        Answer::Rows(r) => r,
        Answer::Count(_) => Vec::new(),
    }
}

impl PgStore {
    /// Connects to the database at `target`, creating the schema in an empty database and
    /// refusing one written by a newer build.
    pub fn open(target: PgTarget) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the database runtime: {e}")))?;
        let store = PgStore {
            changes: tokio::sync::watch::Sender::new(0),
            runtime: Some(runtime),
            target,
            writer: Mutex::new(Writer { conn: None, frontier: None }),
            readers: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next_reader: AtomicUsize::new(0),
        };
        store.migrate()?;
        store.listen();
        Ok(store)
    }

    /// Listens on [`CHANNEL`] on a connection of its own for as long as the store lives,
    /// bumping [`Store::changes`] on every notice; reconnects a second after losing it (and
    /// bumps then too: notices may have been missed meanwhile).
    fn listen(&self) {
        let Some(rt) = self.runtime.as_ref() else { return };
        let (config, tls, tx) = (self.target.config.clone(), self.target.tls.clone(), self.changes.clone());
        rt.spawn(async move {
            loop {
                if let Ok((client, mut connection)) = config.connect(tls.clone()).await {
                    // The client must outlive the listening: it is handed back when LISTEN is done.
                    let listening = async move {
                        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                        Ok::<_, tokio_postgres::Error>(client)
                    };
                    // The connection must be driven for LISTEN to complete: both at once.
                    let mut listening = std::pin::pin!(listening);
                    let mut kept = None;
                    loop {
                        let msg = std::future::poll_fn(|cx| {
                            if kept.is_none()
                                && let std::task::Poll::Ready(r) = listening.as_mut().poll(cx)
                            {
                                match r {
                                    Ok(client) => kept = Some(client),
                                    Err(_) => return std::task::Poll::Ready(None),
                                }
                                tx.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            connection.poll_message(cx)
                        })
                        .await;
                        match msg {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                tx.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Connects to `url` (see [`PgTarget`]).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(PgTarget::parse(url)?)
    }

    /// Runs `f` in one transaction holding the log's lock (for a bulk copy into it).
    pub(crate) fn with_transaction<T>(
        &self,
        f: &mut dyn FnMut(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let value = self.locked(OffsetDateTime::UNIX_EPOCH, &mut |c, _, _, _| f(c))?;
        // The copy moved the log behind the cached edge's back.
        Self::lock(&self.writer)?.frontier = None;
        Ok(value)
    }

    /// The database, as shown in messages (no password).
    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    fn dial(&self) -> Result<Conn, StoreError> {
        let rt = self.runtime.as_ref().ok_or(StoreError::Closed)?;
        let config = self.target.config.clone();
        let tls = self.target.tls.clone();
        let task = rt.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let shown = &self.target.shown;
        let client = wait(task)
            .map_err(|_| StoreError::Database("the database connection task failed".into()))?
            .map_err(|e| StoreError::Database(format!("cannot connect to `{shown}`: {}", chain(&e))))?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    /// Runs `f` on `slot`'s connection (made first if there is none); a connection found
    /// broken afterwards is let go, so the next use makes a new one.
    fn on<T>(
        &self,
        slot: &mut Option<Conn>,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = Some(self.dial()?);
        }
        let conn = slot.as_mut().ok_or(StoreError::Closed)?;
        let result = f(conn);
        if conn.client.is_closed() {
            *slot = None;
        }
        result
    }

    fn lock<'a, T>(m: &'a Mutex<T>) -> Result<MutexGuard<'a, T>, StoreError> {
        m.lock().map_err(|_| StoreError::Database("the store lock is poisoned".into()))
    }

    /// Runs `f` on a reader connection.
    fn read<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        for r in &self.readers {
            if let Ok(mut slot) = r.try_lock() {
                return self.on(&mut slot, f);
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let mut slot = Self::lock(&self.readers[i])?;
        self.on(&mut slot, f)
    }

    /// Runs `work` in one transaction holding the log's lock: the tree as it stands (this
    /// node's cached edge, or read again when another node appended), the time the log last
    /// moved to (raised to at least `time`). Commits when `work` succeeds; on any error rolls
    /// back and forgets the cached edge.
    fn locked<T>(&self, time: OffsetDateTime, work: &mut Work<'_, T>) -> Result<T, StoreError> {
        let mut guard = Self::lock(&self.writer)?;
        let w = &mut *guard;
        let cached = w.frontier.take();
        let mut frontier_out = None;
        let result = self.on(&mut w.conn, |c| {
            let outcome = (|| {
                // One round trip: the transaction, the lock, and the leaves other nodes
                // appended since this one's cached edge (read once the lock is held).
                // The cached edge is checked against the stored hashes at its own size too:
                // a log rewound behind this node's back (a restore, a failover to a replica
                // that lagged) and grown again must not be extended from a prefix it no longer
                // has.
                let mut first = vec![control("BEGIN"), step(HEAD, Vec::new(), Check::Read)];
                if let Some(f) = &cached {
                    first.extend(edge_reads(f.size()));
                    first.push(step(
                        "SELECT seq, leaf_hash FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
                        vec![Box::new(to_i64(f.size())?), Box::new(CATCH_UP + 1)],
                        Check::Read,
                    ));
                }
                let mut answers = pipeline(c, &first)?.into_iter();
                next_answer(&mut answers, &Check::Control)?;
                let head = rows_of(next_answer(&mut answers, &Check::Read)?)
                    .into_iter()
                    .next()
                    .ok_or_else(|| StoreError::Database("the log's head is missing".into()))?;
                let appended = match &cached {
                    Some(f) => {
                        let mut stored = rows_of(next_answer(&mut answers, &Check::Read)?);
                        stored.extend(rows_of(next_answer(&mut answers, &Check::Read)?));
                        let appended = rows_of(next_answer(&mut answers, &Check::Read)?);
                        edge_from(f.size(), stored).is_ok_and(|e| e == *f).then_some(appended)
                    }
                    None => None,
                };
                let size = to_u64(head.get(0));
                // Nodes compare times (budget windows, expiries, heartbeats): one whose clock
                // is off the database's by more than MAX_SKEW writes nothing.
                if let Some(max_ms) = self.target.max_skew_ms
                    && time != OffsetDateTime::UNIX_EPOCH
                {
                    let node_ms = i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
                    let skew_ms = node_ms - head.get::<_, i64>(2);
                    if skew_ms.abs() > max_ms {
                        return Err(StoreError::ClockSkew { skew_ms, max_ms });
                    }
                }
                let last = OffsetDateTime::from_unix_timestamp_nanos(i128::from(head.get::<_, i64>(1)))
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let mut frontier = match (cached, appended) {
                    (Some(f), Some(rows)) if f.size() <= size && rows.len() as u64 == size - f.size() => {
                        catch_up(f, &rows)?
                    }
                    _ => load_frontier(c, size)?,
                };
                let mut time = time.max(last);
                let mut tail = Vec::new();
                let value = work(c, &mut frontier, &mut time, &mut tail)?;
                // The head moves and the transaction commits in the work's last round trip.
                let mut end = String::new();
                if frontier.size() != size {
                    // Numbers only; the notice goes out at commit.
                    end = format!(
                        "UPDATE audit_head SET size = {}, time_ns = {}; NOTIFY {CHANNEL}, '{}'; ",
                        to_i64(frontier.size())?,
                        time_ns(time),
                        frontier.size()
                    );
                }
                end.push_str("COMMIT");
                tail.push(control(end));
                // An error in the commit leaves the outcome unknown to this node (it may have
                // reached the disk): it reports failure, and the edge is read again.
                let mut answers = pipeline(c, &tail)?.into_iter();
                for s in &tail {
                    next_answer(&mut answers, &s.check)?;
                }
                Ok((value, frontier))
            })();
            match outcome {
                Ok((value, frontier)) => {
                    frontier_out = Some(frontier);
                    Ok(value)
                }
                Err(e) => {
                    if !c.client.is_closed() {
                        let _ = c.simple("ROLLBACK");
                    }
                    Err(e)
                }
            }
        });
        w.frontier = frontier_out;
        result
    }
}

/// `cached` moved on by the leaves appended after it (`rows`: seq, leaf hash, in order).
fn catch_up(mut cached: Frontier, rows: &[Row]) -> Result<Frontier, StoreError> {
    for r in rows {
        let seq = to_u64(r.get(0));
        if seq != cached.size() {
            return Err(StoreError::Entry { seq, reason: format!("expected entry {} next", cached.size()) });
        }
        cached.push(hash_of(r.get(1))?);
    }
    Ok(cached)
}

impl TreeReader for PgStore {
    type Error = StoreError;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, StoreError> {
        let found = self.read(|c| {
            Ok(if level == 0 {
                c.opt("SELECT leaf_hash FROM audit_entries WHERE seq = $1", &[&to_i64(start)?])?
            } else {
                let l = i32::try_from(level).unwrap_or(i32::MAX);
                c.opt("SELECT hash FROM audit_subtrees WHERE level = $1 AND start = $2", &[&l, &to_i64(start)?])?
            })
        })?;
        match found {
            Some(r) => hash_of(r.get(0)),
            None => Err(StoreError::MissingSubtree { start, end: start + (1u64 << level) }),
        }
    }
}

impl AuditLog for PgStore {
    fn append(&self, count: usize, build: &mut EntryBuilder<'_>) -> Result<Range<u64>, StoreError> {
        let now = OffsetDateTime::now_utc();
        self.locked(now, &mut |c, frontier, _, _| append_in(c, frontier, count, build))
    }

    fn size(&self) -> Result<u64, StoreError> {
        self.read(|c| Ok(to_u64(c.one("SELECT size FROM audit_head", &[])?.get(0))))
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        self.read(|c| {
            c.rows(
                "SELECT seq, bytes, leaf_hash FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&bound(from), &bound(limit as u64)],
            )?
            .into_iter()
            .map(|r| Ok(StoredEntry { seq: to_u64(r.get(0)), bytes: r.get(1), leaf_hash: hash_of(r.get(2))? }))
            .collect()
        })
    }

    fn subtrees(&self, level: u32, starts: Range<u64>) -> Result<Vec<(u64, Hash)>, StoreError> {
        let l = i32::try_from(level).unwrap_or(i32::MAX);
        self.read(|c| {
            c.rows(
                "SELECT start, hash FROM audit_subtrees WHERE level = $1 AND start >= $2 AND start < $3 ORDER BY start",
                &[&l, &bound(starts.start), &bound(starts.end)],
            )?
            .into_iter()
            .map(|r| Ok((to_u64(r.get(0)), hash_of(r.get(1))?)))
            .collect()
        })
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let size = to_i64(size)?;
        let mut guard = Self::lock(&self.writer)?;
        self.on(&mut guard.conn, |c| {
            c.exec(
                "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING",
                &[&size, &note],
            )?;
            Ok(())
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|c| {
            Ok(c.opt("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1", &[])?
                .map(|r| (to_u64(r.get(0)), r.get(1))))
        })
    }

    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.opt("SELECT note FROM audit_checkpoints WHERE size = $1", &[&bound(size)])?.map(|r| r.get(0)))
        })
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.read(|c| {
            Ok(c.rows(
                "SELECT size, note FROM audit_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2",
                &[&bound(from_size), &bound(limit as u64)],
            )?
            .into_iter()
            .map(|r| (to_u64(r.get(0)), r.get(1)))
            .collect())
        })
    }
}

impl Store for PgStore {
    fn commit_group(
        &self,
        time: OffsetDateTime,
        batches: &[Batch],
        seal: &mut Seal<'_>,
    ) -> Result<Vec<Result<Range<u64>, StoreError>>, StoreError> {
        self.locked(time, &mut |c, frontier, time, tail| {
            let time = *time;
            let start = frontier.size();
            let mut results: Vec<Option<Result<Range<u64>, StoreError>>> = batches.iter().map(|_| None).collect();
            // The batches go out together, in one round trip, each in a savepoint nested in
            // the one before, as if all stood. When one does not, the transaction goes back to
            // its savepoint (undoing it and all sent after it) and those after it go out
            // again. So that a group in which many fail (batches decided on the same facts,
            // racing for one record) does not resend the rest once per failure, a failure
            // halves how many go out together next, and a round in which all stood doubles it:
            // at worst about a round trip per batch, as one at a time.
            let mut lead = None;
            let mut from = 0;
            let mut window = batches.len();
            // The first savepoint taken: released (with all inside it) before the head moves,
            // so the head's update is the transaction's own and not a savepoint's (which
            // PostgreSQL would record as a MultiXact on the row it locked, at every commit).
            let mut outer = None;
            while from < batches.len() {
                let mut steps: Vec<Step> = lead.take().into_iter().collect();
                let led = steps.len();
                let mut attempt = frontier.clone();
                let mut sent = Vec::new();
                let mut next = batches.len();
                for (i, batch) in batches.iter().enumerate().skip(from) {
                    if sent.len() == window {
                        next = i;
                        break;
                    }
                    let at = steps.len();
                    match batch_steps(batch, i, &mut attempt, time, &mut steps)? {
                        Ok(range) => {
                            outer.get_or_insert(i);
                            sent.push((i, at..steps.len(), range, attempt.clone()));
                        }
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
                from = next;
                if sent.is_empty() {
                    lead = steps.into_iter().next();
                    break;
                }
                let mut answers = pipeline(c, &steps)?.into_iter();
                for s in &steps[..led] {
                    next_answer(&mut answers, &s.check)?;
                }
                for (i, span, range, after) in sent {
                    let mut failed = None;
                    for s in &steps[span] {
                        let answer = answers
                            .next()
                            .ok_or_else(|| StoreError::Database("a pipelined statement got no answer".into()))?;
                        match judge(&s.check, answer) {
                            Ok(()) => {}
                            Err(e) if batch_level(&e) => {
                                failed = Some(e);
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    match failed {
                        None => {
                            *frontier = after;
                            results[i] = Some(Ok(range));
                        }
                        Some(e) => {
                            results[i] = Some(Err(e));
                            for later in &mut results[i + 1..] {
                                *later = None;
                            }
                            lead = Some(control(format!("ROLLBACK TO SAVEPOINT b{i}")));
                            from = i + 1;
                            window = (window / 2).max(1);
                            break;
                        }
                    }
                }
                if lead.is_none() {
                    window = window.saturating_mul(2);
                }
            }
            let ending: Vec<String> =
                lead.map(|l| l.sql).into_iter().chain(outer.map(|o| format!("RELEASE SAVEPOINT b{o}"))).collect();
            if !ending.is_empty() {
                tail.push(control(ending.join("; ")));
            }
            if frontier.size() > start
                && let Some(note) = seal(frontier.size(), &frontier.root()).map_err(StoreError::Checkpoint)?
            {
                tail.push(step(
                    "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2)",
                    vec![Box::new(to_i64(frontier.size())?), Box::new(note)],
                    Check::Any,
                ));
            }
            results
                .into_iter()
                .map(|r| r.ok_or_else(|| StoreError::Database("a batch was left undecided".into())))
                .collect()
        })
    }

    fn get(&self, table: Table, id: &str) -> Result<Option<Record>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE id = $1", table.name());
        self.read(|c| c.opt(&sql, &[&id])?.map(|r| read_record(table, &r)).transpose())
    }

    fn find(&self, table: Table, q: &Query) -> Result<Vec<Record>, StoreError> {
        let (filter, mut args) = filter(q);
        let mut sql = format!("SELECT {COLUMNS} FROM {} WHERE {filter}", table.name());
        match (q.order, q.descending) {
            (Order::At, false) => sql.push_str(" ORDER BY at ASC NULLS FIRST, id ASC"),
            (Order::At, true) => sql.push_str(" ORDER BY at DESC NULLS LAST, id DESC"),
            (Order::Id, false) => sql.push_str(" ORDER BY id ASC"),
            (Order::Id, true) => sql.push_str(" ORDER BY id DESC"),
        }
        if q.limit > 0 {
            args.push(Arg::Int(bound(q.limit as u64)));
            sql.push_str(&format!(" LIMIT ${}", args.len()));
        }
        self.read(|c| c.rows(&sql, &refs(&args))?.iter().map(|r| read_record(table, r)).collect())
    }

    fn count(&self, table: Table, q: &Query) -> Result<u64, StoreError> {
        let (filter, args) = filter(q);
        let sql = format!("SELECT count(*) FROM {} WHERE {filter}", table.name());
        self.read(|c| Ok(to_u64(c.one(&sql, &refs(&args))?.get(0))))
    }

    fn count_by_kind(&self, table: Table, q: &Query) -> Result<Vec<(String, u64)>, StoreError> {
        let (filter, args) = filter(q);
        let sql = crate::records::count_by_kind_sql(table, &filter);
        self.read(|c| {
            Ok(c.rows(&sql, &refs(&args))?
                .iter()
                .map(|r| (r.get::<_, String>(0), to_u64(r.get::<_, i64>(1))))
                .collect())
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
        self.read(|c| usage_in(c, agent, action, since_ms, target, up_to))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| Ok(c.opt("SELECT value FROM meta WHERE key = $1", &[&key])?.map(|r| r.get(0))))
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

impl PgStore {
    /// Creates the schema in an empty database, or checks the version of an existing one.
    /// Two nodes starting at once take turns (an advisory lock).
    fn migrate(&self) -> Result<(), StoreError> {
        let mut guard = Self::lock(&self.writer)?;
        self.on(&mut guard.conn, |c| {
            c.exec("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
            let result = (|| {
                c.simple("CREATE TABLE IF NOT EXISTS warden_schema (version INTEGER NOT NULL)")?;
                let found = c.opt("SELECT version FROM warden_schema", &[])?.map(|r| r.get::<_, i32>(0));
                let found = u32::try_from(found.unwrap_or(0)).unwrap_or(0);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion { found });
                }
                if found == 0 {
                    c.simple("BEGIN")?;
                    let created = c
                        .simple(&schema())
                        .and_then(|()| {
                            c.exec("INSERT INTO warden_schema (version) VALUES ($1)", &[&(SCHEMA_VERSION as i32)])
                        })
                        .and_then(|_| c.simple("COMMIT"));
                    if created.is_err() && !c.client.is_closed() {
                        let _ = c.simple("ROLLBACK");
                    }
                    created?;
                } else if found < SCHEMA_VERSION {
                    c.simple("BEGIN")?;
                    let stepped = (found..SCHEMA_VERSION)
                        .try_for_each(|v| match pg_migration(v) {
                            // Versions below the first PostgreSQL schema never existed here.
                            None => Err(StoreError::SchemaVersion { found }),
                            Some(sql) => c.simple(&sql),
                        })
                        .and_then(|()| {
                            c.exec("UPDATE warden_schema SET version = $1", &[&(SCHEMA_VERSION as i32)]).map(|_| ())
                        })
                        .and_then(|()| c.simple("COMMIT"));
                    if stepped.is_err() && !c.client.is_closed() {
                        let _ = c.simple("ROLLBACK");
                    }
                    stepped?;
                }
                Ok(())
            })();
            let _ = c.exec("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://warden:s3cret@db:5432/w"), "postgres://warden:***@db:5432/w");
        assert_eq!(
            redact_url("postgres://db/w?user=a&password=s3cret&sslmode=require"),
            "postgres://db/w?user=a&password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://warden@db/w"), "postgres://warden@db/w");
        let err = PgTarget::parse("postgres://u:s3cret@db/w?nonsense=1").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("u:***@db"), "{err}");
    }

    #[test]
    fn the_edge_covers_the_tree() {
        assert_eq!(edge(0), vec![]);
        assert_eq!(edge(1), vec![(0, 0)]);
        assert_eq!(edge(6), vec![(2, 0), (1, 4)]);
        assert_eq!(edge(7), vec![(2, 0), (1, 4), (0, 6)]);
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        let err = PgTarget::parse("mysql://db/w").unwrap_err().to_string();
        assert!(err.contains("postgres://"), "{err}");
        let err = PgTarget::parse("postgres://db/w?sslrootcert=/nonexistent.pem").unwrap_err().to_string();
        assert!(err.contains("/nonexistent.pem"), "{err}");
    }
}
