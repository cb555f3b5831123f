//! The stores: the conformance suite on SQLite and PostgreSQL, plus what only a file on disk
//! (or a database server) can show.

mod crash;
mod data_dir;
mod postgres;
mod verify;

use std::sync::Arc;

use warden_store::{AuditLog, SCHEMA_VERSION, SqliteStore, StoreError, conformance};

#[test]
fn sqlite_in_memory_passes_the_conformance_suite() {
    conformance::run_all(&|| Arc::new(SqliteStore::open_in_memory().unwrap()));
}

#[test]
fn sqlite_on_disk_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        Arc::new(SqliteStore::open(&dir.path().join(format!("warden-{}.db", n.get()))).unwrap())
    });
}

#[test]
fn two_handles_on_one_sqlite_file_share_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    conformance::run_shared(&|| {
        n.set(n.get() + 1);
        let path = dir.path().join(format!("shared-{}.db", n.get()));
        let a: Arc<dyn warden_store::Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let b: Arc<dyn warden_store::Store> = Arc::new(SqliteStore::open(&path).unwrap());
        (a, b)
    });
}

#[test]
fn reopening_keeps_entries_and_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let root = {
        let log = SqliteStore::open(&path).unwrap();
        log.append(11, &mut |s| Ok(format!("e{s}").into_bytes())).unwrap();
        log.root(11).unwrap()
    };
    let log = SqliteStore::open(&path).unwrap();
    assert_eq!(log.size().unwrap(), 11);
    assert_eq!(log.root(11).unwrap(), root);
    assert_eq!(log.append(1, &mut |s| Ok(format!("e{s}").into_bytes())).unwrap(), 11..12);
    let mut mem = warden_core::audit::merkle::MemoryTree::new();
    (0..12).for_each(|s| mem.push_entry(format!("e{s}").as_bytes()));
    assert_eq!(log.root(12).unwrap(), mem.root());
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    drop(SqliteStore::open(&path).unwrap());
    bump_user_version(&path);
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaVersion { found }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

#[test]
fn a_version_2_database_gets_its_budget_summaries_from_its_hits() {
    use warden_store::{Batch, Change, Store, UsageLimits};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let hit =
            |target: &str, at| Change::BudgetHit { agent: "a".into(), action: "x".into(), target: target.into(), at };
        let batch = Batch::new().change(hit("h1", 10)).change(hit("h2", 20)).change(hit("h1", 30));
        store.commit_group(time::OffsetDateTime::UNIX_EPOCH, &[batch], &mut |_, _| Ok(None)).unwrap();
    }
    // What a version-2 database looks like: hits only.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v2 =
        version_3_state_tables() + "DROP TABLE budget_targets; DROP TABLE budget_minutes; PRAGMA user_version = 2;";
    conn.execute_batch(&v2).unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let u = store.budget_usage("a", "x", 25, "h1", UsageLimits::ALL).unwrap();
    assert_eq!((u.hits, u.distinct_targets, u.target_seen), (1, 1, true), "h1's latest hit is at 30");
    let u = store.budget_usage("a", "x", 0, "h2", UsageLimits::ALL).unwrap();
    assert_eq!((u.hits, u.distinct_targets, u.target_seen), (3, 2, true));
}

#[test]
fn a_version_3_database_gets_the_action_class_of_its_requests_and_approvals() {
    use warden_store::{Query, Store, Table};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    drop(SqliteStore::open(&path).unwrap());
    // What a version-3 database looks like: no `kind`, the first indexes.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut sql = version_3_state_tables();
    sql.push_str(
        r#"INSERT INTO requests VALUES ('act_1', 1, 'a', 't', 'succeeded', NULL, 5, '{"action":"edr.isolate"}');
           INSERT INTO approvals VALUES ('apr_1', 1, 'a', 't', 'pending', 'k', 6, '{"action":"idp.disable"}');
           INSERT INTO tasks VALUES ('tsk_1', 1, 'a', NULL, 'open', NULL, 7, '{"action":"not one"}');
           PRAGMA user_version = 3;"#,
    );
    conn.execute_batch(&sql).unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let kinds = |t, k: &str| {
        store
            .find(t, &Query { kind: Some(k.into()), ..Query::default() })
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(Table::Requests, "edr.isolate"), ["act_1"]);
    assert_eq!(kinds(Table::Approvals, "idp.disable"), ["apr_1"]);
    assert!(kinds(Table::Tasks, "not one").is_empty(), "only actions' records have a class");
    assert_eq!(store.get(Table::Requests, "act_1").unwrap().unwrap().kind.as_deref(), Some("edr.isolate"));
}

/// Schema 7: executions stored before it get their action class as a column, and count in
/// their task's history.
#[test]
fn a_version_6_database_gets_the_action_class_of_its_executions() {
    use warden_store::{Query, Store, Table};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        r#"DROP INDEX executions_by_task_state_kind;
           INSERT INTO executions VALUES ('ex_1', 1, 'a', 't', 'succeeded', NULL, 5, '{"action":"host.isolate"}', NULL);
           INSERT INTO executions VALUES ('ex_2', 1, 'a', 't', 'failed', NULL, 6, '{"action":"host.isolate"}', NULL);
           PRAGMA user_version = 6;"#,
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let q = Query { task: Some("t".into()), state: Some("succeeded".into()), ..Query::default() };
    assert_eq!(store.count_by_kind(Table::Executions, &q).unwrap(), [("host.isolate".to_string(), 1)]);
}

/// SQL that puts back the state tables as schema version 3 had them (empty).
fn version_3_state_tables() -> String {
    let mut sql = String::from("DROP TABLE sessions; DROP TABLE holds;");
    for t in warden_store::Table::FIRST {
        let n = t.name();
        sql.push_str(&format!(
            "DROP TABLE {n};
             CREATE TABLE {n} (id TEXT PRIMARY KEY, version INTEGER NOT NULL, agent TEXT, task TEXT,
                               state TEXT, key TEXT UNIQUE, at INTEGER, body TEXT NOT NULL);
             CREATE INDEX {n}_by_agent ON {n} (agent, at);
             CREATE INDEX {n}_by_task ON {n} (task, at);
             CREATE INDEX {n}_by_state ON {n} (state, at);"
        ));
    }
    sql
}

/// Bumps `user_version` by editing the SQLite header (bytes 60..64, big-endian), as a newer
/// Warden would have left it.
fn bump_user_version(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let v = u32::from_be_bytes(bytes[60..64].try_into().unwrap());
    assert_eq!(v, SCHEMA_VERSION);
    bytes[60..64].copy_from_slice(&(v + 1).to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn under_load_checkpoints_can_wait_for_the_interval_and_the_tail_is_signed_on_demand() {
    use std::time::Duration;
    use warden_core::audit::entry::{Actor, Event, EventType};
    use warden_core::audit::note::NoteSigner;
    use warden_store::{Batch, Ledger, LedgerOptions, SystemClock};
    let store: Arc<dyn warden_store::Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let signer = NoteSigner::new("warden.test/audit", &[1u8; 32]).unwrap();
    let options = LedgerOptions { checkpoint_every: Duration::from_secs(3600), ..LedgerOptions::default() };
    let ledger = Ledger::open(store.clone(), signer, Arc::new(SystemClock), options).unwrap();
    for _ in 0..5 {
        ledger.commit(Batch::new().event(Event::new(EventType::PolicyLoaded, Actor::system("t")))).unwrap();
    }
    let sizes: Vec<u64> = store.checkpoints(0, 100).unwrap().into_iter().map(|c| c.0).collect();
    assert_eq!(sizes, [1], "only the first commit of the interval was sealed");
    assert_eq!(ledger.checkpoint().unwrap().map(|c| c.0), Some(5));
    assert_eq!(ledger.checkpoint().unwrap().map(|c| c.0), Some(5), "nothing new: no second note");
    assert_eq!(store.checkpoints(0, 100).unwrap().len(), 2);
}
