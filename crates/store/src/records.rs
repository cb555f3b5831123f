//! The state tables. Every table has the same shape: a JSON document per record plus the few
//! keys the store indexes (agent, task, state, a unique key, a time), so the front ends own
//! their record types and the backends stay small and alike.

use serde_json::Value;

/// The state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Agents,
    Users,
    Tasks,
    Requests,
    Decisions,
    Approvals,
    Leases,
    Executions,
    Halts,
    /// Console sign-in sessions (schema 6): credentials, not acts on the estate.
    Sessions,
    /// Requests an MCP call left waiting for a human, by agent and action digest (schema 6):
    /// the same call again, on any node, attaches to its request.
    Holds,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::Agents,
        Table::Users,
        Table::Tasks,
        Table::Requests,
        Table::Decisions,
        Table::Approvals,
        Table::Leases,
        Table::Executions,
        Table::Halts,
        Table::Sessions,
        Table::Holds,
    ];

    /// The tables of schema versions 1 to 5 (what their migrations create and alter).
    pub const FIRST: [Table; 9] = [
        Table::Agents,
        Table::Users,
        Table::Tasks,
        Table::Requests,
        Table::Decisions,
        Table::Approvals,
        Table::Leases,
        Table::Executions,
        Table::Halts,
    ];

    /// The table's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Table::Agents => "agents",
            Table::Users => "users",
            Table::Tasks => "tasks",
            Table::Requests => "requests",
            Table::Decisions => "decisions",
            Table::Approvals => "approvals",
            Table::Leases => "leases",
            Table::Executions => "executions",
            Table::Halts => "halts",
            Table::Sessions => "sessions",
            Table::Holds => "holds",
        }
    }
}

/// One record of a state table.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub table: Table,
    pub id: String,
    /// 1 when inserted, +1 on every update: the optimistic-concurrency token.
    pub version: u64,
    /// The agent the record belongs to (a SPIFFE ID), when it has one.
    pub agent: Option<String>,
    /// The task the record belongs to, when it has one.
    pub task: Option<String>,
    /// The record's state (`pending`, `active`, `open`…), when it has one.
    pub state: Option<String>,
    /// A key unique within the table when set (an idempotency key, a token hash…).
    pub key: Option<String>,
    /// The time the table orders by (Unix milliseconds): creation, expiry…
    pub at: Option<i64>,
    /// The action class of a record about one action (a request, an approval), when it has one.
    pub kind: Option<String>,
    pub body: Value,
}

impl Record {
    /// A new record (version 0 until inserted) with no keys.
    pub fn new(table: Table, id: impl Into<String>, body: Value) -> Self {
        Record {
            table,
            id: id.into(),
            version: 0,
            agent: None,
            task: None,
            state: None,
            key: None,
            at: None,
            kind: None,
            body,
        }
    }
    pub fn agent(mut self, v: impl Into<String>) -> Self {
        self.agent = Some(v.into());
        self
    }
    pub fn task(mut self, v: impl Into<String>) -> Self {
        self.task = Some(v.into());
        self
    }
    pub fn state(mut self, v: impl Into<String>) -> Self {
        self.state = Some(v.into());
        self
    }
    pub fn key(mut self, v: impl Into<String>) -> Self {
        self.key = Some(v.into());
        self
    }
    pub fn at(mut self, ms: i64) -> Self {
        self.at = Some(ms);
        self
    }
    pub fn kind(mut self, v: impl Into<String>) -> Self {
        self.kind = Some(v.into());
        self
    }
}

/// One change to the state tables.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Adds a record; conflicts when its id or key is taken. Stored with version 1.
    Insert(Record),
    /// Replaces a record; `record.version` is the version it was read at, and the update
    /// conflicts if the stored one has moved on (or is gone). Stored with version + 1.
    Update(Record),
    /// Counts one use of `agent` × `action` on `target` at `at` (Unix milliseconds).
    BudgetHit { agent: String, action: String, target: String, at: i64 },
    /// Sets one of the store's own settings.
    SetMeta { key: String, value: String },
    /// Removes a record if there is one (what forgets an ended sign-in session).
    Delete { table: Table, id: String },
    /// A precondition, checked in the writer's transaction: the record is still at `version`
    /// (0: there is no such record). Changes nothing; the batch conflicts when it fails.
    Expect { table: Table, id: String, version: u64 },
    /// A precondition: the setting still has `value` (`None`: it is unset).
    ExpectMeta { key: String, value: Option<String> },
    /// A precondition: the record, if there is one, is not in `state` (what keeps a disabled
    /// user's requests in flight from committing: [`crate::Ledger`] adds it for every user a
    /// batch's entries name as actor). The batch is refused ([`StoreError::Refused`]) when it
    /// fails.
    ExpectNotState { table: Table, id: String, state: String },
    /// A precondition that makes a budget's check and its hit one step: the batch conflicts
    /// when `agent` × `action` already has `max_hits` hits at or after `since_ms`, or when
    /// `target` is new among them and `max_distinct_targets` are already reached. Put it
    /// before the [`Change::BudgetHit`] it guards.
    BudgetCheck {
        agent: String,
        action: String,
        target: String,
        since_ms: i64,
        max_hits: Option<u64>,
        max_distinct_targets: Option<u64>,
    },
    /// A precondition that makes a cap's check and what it guards one step: the batch
    /// conflicts when `max` or more records of `table` match `query` (its column filters;
    /// time bounds, order and paging are ignored). Put it before the insert it guards.
    ExpectFewer { table: Table, query: Query, max: u64 },
}

/// A filter over one table; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub agent: Option<String>,
    pub task: Option<String>,
    pub state: Option<String>,
    pub key: Option<String>,
    pub kind: Option<String>,
    /// `at` ≥ this (records without `at` never match a time bound).
    pub at_from: Option<i64>,
    /// `at` < this.
    pub at_to: Option<i64>,
    /// Newest first instead of oldest first.
    pub descending: bool,
    /// What orders the results (ties broken by id).
    pub order: Order,
    /// Keyset pagination: only records after this one in the query's order (strictly after
    /// its `at` and id, or its id alone under [`Order::Id`]) — the last record of the previous
    /// page. Records inserted meanwhile never shift a page.
    pub after: Option<Cursor>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// The order of [`Store::find`]'s results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// By `at`, then id (records without `at` first).
    #[default]
    At,
    /// By id alone: creation order for ids that begin with their time, as Warden's do.
    Id,
}

/// Where a page ends: the last record's `at` and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: Option<i64>,
    pub id: String,
}

impl Cursor {
    /// The cursor after `r`.
    pub fn after(r: &Record) -> Self {
        Cursor { at: r.at, id: r.id.clone() }
    }
}

/// A value bound into a filter's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bound {
    Text(String),
    /// A record's unique key (text on SQLite, bytes on PostgreSQL).
    Key(String),
    Int(i64),
}

/// The `WHERE` clause of `q`'s filters, its placeholders written by `ph` (1-based), and the
/// values to bind: one meaning for every backend.
pub(crate) fn filter_sql(q: &Query, ph: fn(usize) -> String) -> (String, Vec<Bound>) {
    let mut sql = String::from("1 = 1");
    let mut args = Vec::new();
    let bind = |args: &mut Vec<Bound>, b: Bound| {
        args.push(b);
        ph(args.len())
    };
    for (column, value) in [("agent", &q.agent), ("task", &q.task), ("state", &q.state), ("kind", &q.kind)] {
        if let Some(v) = value {
            let p = bind(&mut args, Bound::Text(v.clone()));
            sql.push_str(&format!(" AND {column} = {p}"));
        }
    }
    if let Some(k) = &q.key {
        let p = bind(&mut args, Bound::Key(k.clone()));
        sql.push_str(&format!(" AND key = {p}"));
    }
    if let Some(from) = q.at_from {
        let p = bind(&mut args, Bound::Int(from));
        sql.push_str(&format!(" AND at >= {p}"));
    }
    if let Some(to) = q.at_to {
        let p = bind(&mut args, Bound::Int(to));
        sql.push_str(&format!(" AND at < {p}"));
    }
    if let Some(after) = &q.after {
        let cmp = if q.descending { "<" } else { ">" };
        let id = bind(&mut args, Bound::Text(after.id.clone()));
        match (q.order, after.at) {
            (Order::Id, _) => sql.push_str(&format!(" AND id {cmp} {id}")),
            // A row value, so the index's (at, id) range is sought, not scanned. Rows without
            // `at` (first ascending, last descending) are not paged past.
            (Order::At, Some(at)) => {
                let at = bind(&mut args, Bound::Int(at));
                sql.push_str(&format!(" AND (at, id) {cmp} ({at}, {id})"));
            }
            (Order::At, None) if q.descending => sql.push_str(&format!(" AND at IS NULL AND id < {id}")),
            (Order::At, None) => sql.push_str(&format!(" AND (at IS NOT NULL OR id > {id})")),
        }
    }
    (sql, args)
}

/// The grouped count of [`crate::Store::count_by_kind`] over `table`, for a `WHERE` clause
/// made by [`filter_sql`]: one meaning for every backend.
pub(crate) fn count_by_kind_sql(table: Table, filter: &str) -> String {
    format!(
        "SELECT kind, count(*) FROM {} WHERE {filter} AND kind IS NOT NULL GROUP BY kind ORDER BY kind",
        table.name()
    )
}
