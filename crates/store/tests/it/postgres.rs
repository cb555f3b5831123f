//! The PostgreSQL store, on a real server (a throwaway cluster): the conformance suite, two
//! nodes on one database, TLS, and what happens when the database goes away.

use std::sync::Arc;

use warden_store::{AuditLog, Batch, PgStore, SCHEMA_VERSION, Store, StoreError, conformance};

/// A fresh database; the suite stamps commits with made-up times, so no clock check.
fn fresh(pg: &warden_testpg::Cluster) -> Arc<dyn Store> {
    open(&pg.fresh_database())
}

fn open(url: &str) -> Arc<dyn Store> {
    Arc::new(PgStore::open(warden_store::PgTarget::parse(url).unwrap().without_clock_check()).unwrap())
}

#[test]
fn postgres_passes_the_conformance_suite() {
    let Some(pg) = warden_testpg::shared() else { return };
    conformance::run_all(&|| fresh(pg));
}

#[test]
fn two_nodes_on_one_postgres_database_share_one_log() {
    let Some(pg) = warden_testpg::shared() else { return };
    conformance::run_shared(&|| {
        let url = pg.fresh_database();
        (open(&url), open(&url))
    });
}

#[test]
fn postgres_over_tls_checks_the_server_certificate() {
    let Some(pg) = warden_testpg::shared() else { return };
    let db = pg.fresh_name();
    let store = PgStore::connect(&pg.tls_url(&db)).unwrap();
    store.append(2, &mut |s| Ok(format!("e{s}").into_bytes())).unwrap();
    let over_tls = pg.psql(&db, "SELECT count(*) FROM pg_stat_ssl WHERE ssl").unwrap();
    assert!(over_tls.trim().parse::<u32>().unwrap() >= 1, "the store's connections use TLS");
    // A certificate nobody vouches for is refused: with no `sslrootcert`, the public roots.
    let url = format!("postgres://postgres@localhost:{}/{db}?sslmode=require", pg.port());
    let err = PgStore::connect(&url).unwrap_err().to_string();
    assert!(err.contains("cannot connect") && err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let Some(pg) = warden_testpg::shared() else { return };
    let db = pg.fresh_name();
    drop(PgStore::connect(&pg.url(&db)).unwrap());
    pg.psql(&db, "UPDATE warden_schema SET version = version + 1").unwrap();
    match PgStore::connect(&pg.url(&db)) {
        Err(StoreError::SchemaVersion { found }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

/// A database made by the first PostgreSQL schema (5) gets the sessions table of 6, and the
/// executions' action classes as a column (7): an execution stored before counts in its task's
/// history.
#[test]
fn a_version_5_database_is_migrated() {
    let Some(pg) = warden_testpg::shared() else { return };
    let db = pg.fresh_name();
    drop(PgStore::connect(&pg.url(&db)).unwrap());
    pg.psql(
        &db,
        "DROP TABLE sessions; DROP TABLE holds; DROP INDEX executions_by_task_state_kind; \
         INSERT INTO executions (id, version, task, state, body) \
         VALUES ('ex1', 1, 't1', 'succeeded', '{\"action\": \"host.isolate\"}'); \
         UPDATE warden_schema SET version = 5",
    )
    .unwrap();
    let store = PgStore::connect(&pg.url(&db)).unwrap();
    assert_eq!(pg.psql(&db, "SELECT version FROM warden_schema").unwrap().trim(), SCHEMA_VERSION.to_string());
    assert_eq!(store.get(warden_store::Table::Sessions, "s").unwrap(), None);
    let q = warden_store::Query { task: Some("t1".into()), state: Some("succeeded".into()), ..Default::default() };
    assert_eq!(store.count_by_kind(warden_store::Table::Executions, &q).unwrap(), [("host.isolate".to_string(), 1)]);
}

#[test]
fn nodes_starting_together_create_the_schema_once() {
    let Some(pg) = warden_testpg::shared() else { return };
    let url = pg.fresh_database();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url).map(|_| ()))
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
}

#[test]
fn a_password_never_reaches_an_error() {
    let Some(pg) = warden_testpg::shared() else { return };
    let url = format!("postgres://nobody:hunter2@127.0.0.1:{}/none?sslmode=disable", pg.port());
    let err = PgStore::connect(&url).unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("nobody:***@127.0.0.1"), "{err}");
}

/// With the database gone every call fails (nothing is reported done), and the same store
/// carries on once the database is back: no restart of the node.
#[test]
fn the_store_fails_closed_while_the_database_is_down_and_recovers() {
    let Some(_) = warden_testpg::shared() else { return };
    let pg = warden_testpg::Cluster::start().unwrap();
    let store = PgStore::connect(&pg.fresh_database()).unwrap();
    let mut entry = |s: u64| Ok(format!("e{s}").into_bytes());
    store.append(3, &mut entry).unwrap();
    pg.stop();
    assert!(matches!(store.append(1, &mut entry), Err(StoreError::Database(_))));
    assert!(store.size().is_err());
    let commit = store.commit_group(time::OffsetDateTime::now_utc(), &[Batch::new()], &mut |_, _| Ok(None));
    assert!(commit.is_err());
    pg.start_again().unwrap();
    let mut back = None;
    for _ in 0..50 {
        match store.append(1, &mut entry) {
            Ok(r) => {
                back = Some(r);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    assert_eq!(back, Some(3..4), "nothing that failed was appended; the log continues");
    assert_eq!(store.size().unwrap(), 4);
    let mut mem = warden_core::audit::merkle::MemoryTree::new();
    (0..4).for_each(|s| mem.push_entry(format!("e{s}").as_bytes()));
    assert_eq!(store.root(4).unwrap(), mem.root());
}

/// A commit on one node is announced to the others (LISTEN/NOTIFY) within moments, so they
/// need not poll to see it.
#[test]
fn a_commit_on_one_node_is_announced_to_the_others() {
    let Some(pg) = warden_testpg::shared() else { return };
    let url = pg.fresh_database();
    let (a, b) = (PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap());
    let mut rx = a.changes().expect("PostgreSQL announces commits");
    // The listener is up once it has said so (its first bump).
    let started = std::time::Instant::now();
    while *rx.borrow_and_update() == 0 && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = *rx.borrow_and_update();
    b.append(1, &mut |s| Ok(format!("e{s}").into_bytes())).unwrap();
    let started = std::time::Instant::now();
    while *rx.borrow() == before && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_ne!(*rx.borrow(), before, "no notice within {:?}", started.elapsed());
    assert!(warden_store::SqliteStore::open_in_memory().unwrap().changes().is_none());
}

/// Nodes compare times (budget windows, expiries, heartbeats), so a node whose clock is off the
/// database's by more than two seconds commits nothing — not even a heartbeat — until it is
/// fixed; within the bound it commits as ever.
#[test]
fn a_node_with_a_skewed_clock_commits_nothing() {
    let Some(pg) = warden_testpg::shared() else { return };
    let store = PgStore::connect(&pg.fresh_database()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let batch = || Batch::new().change(warden_store::Change::SetMeta { key: "k".into(), value: "v".into() });
    for skew in [time::Duration::seconds(20), time::Duration::seconds(-20), time::Duration::hours(1)] {
        match store.commit_group(now + skew, &[batch()], &mut |_, _| Ok(None)) {
            Err(StoreError::ClockSkew { skew_ms, max_ms }) => {
                assert_eq!(max_ms, warden_store::MAX_SKEW_MS);
                assert!((skew_ms - skew.whole_milliseconds() as i64).abs() < 1_000, "{skew_ms} for {skew}");
            }
            other => panic!("a commit {skew} off the database's clock: {other:?}"),
        }
    }
    assert_eq!(store.meta("k").unwrap(), None, "nothing of them was applied");
    store.commit_group(now + time::Duration::milliseconds(500), &[batch()], &mut |_, _| Ok(None)).unwrap();
    assert_eq!(store.meta("k").unwrap().as_deref(), Some("v"));
}

// The writer's pipeline, attacked (a review of the one-round-trip commit found the first three:
// a group resending its rest after each failure, a MultiXact per commit, a stale cached edge).

mod pipeline {
    use std::sync::Arc;

    use warden_core::audit::entry::{Actor, Event, EventType};
    use warden_core::audit::merkle::MemoryTree;
    use warden_store::{AuditLog, Batch, Change, PgStore, Record, Store, StoreError, Table};

    fn open(url: &str) -> Arc<PgStore> {
        Arc::new(PgStore::open(warden_store::PgTarget::parse(url).unwrap().without_clock_check()).unwrap())
    }

    fn ev(by: &str) -> Event {
        Event::new(EventType::DecisionMade, Actor::system("pipeline")).data(serde_json::json!({"by": by}))
    }

    const T0: time::OffsetDateTime = time::macros::datetime!(2026-11-23 06:00 UTC);

    fn one(store: &PgStore, by: &str) -> std::ops::Range<u64> {
        store.commit_group(T0, &[Batch::new().event(ev(by))], &mut |_, _| Ok(None)).unwrap().remove(0).unwrap()
    }

    fn insert(id: &str) -> Change {
        Change::Insert(Record::new(Table::Agents, id, serde_json::json!({})).agent(id).state("active").at(1))
    }

    /// The stored log: numbered from 0 without a gap, and its stored root that of its entries.
    fn consistent(s: &PgStore) -> MemoryTree {
        let mut mem = MemoryTree::new();
        let entries = s.entries(0, 100_000).unwrap();
        assert_eq!(entries.len() as u64, s.size().unwrap());
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64);
            mem.push_entry(&e.bytes);
        }
        if !entries.is_empty() {
            assert_eq!(s.root(entries.len() as u64).unwrap(), mem.root(), "the stored tree is its entries'");
        }
        mem
    }

    /// 512 batches racing for a budget of one hit in one group (a burst of one agent's
    /// requests decided on the same facts): one stands, and the group costs a few transaction
    /// ids per batch (a batch sent again after a failure takes one for itself and one for the
    /// savepoint it is nested in), not one per batch per failure before it (131,349 and four
    /// minutes under the log's lock, before the fix).
    #[test]
    fn a_group_where_almost_every_batch_fails_costs_about_one_pass() {
        let Some(pg) = warden_testpg::shared() else { return };
        let db = pg.fresh_name();
        let store = open(&pg.url(&db));
        one(&store, "warm-up");
        let check = || Change::BudgetCheck {
            agent: "a".into(),
            action: "x".into(),
            target: "h".into(),
            since_ms: 0,
            max_hits: Some(1),
            max_distinct_targets: None,
        };
        let hit = || Change::BudgetHit { agent: "a".into(), action: "x".into(), target: "h".into(), at: 1_000 };
        let n = 512;
        let batches: Vec<Batch> = (0..n).map(|_| Batch::new().change(check()).change(hit()).event(ev("b"))).collect();
        let xid = || pg.psql(&db, "SELECT txid_current()").unwrap().trim().parse::<u64>().unwrap();
        let before = xid();
        let results = store.commit_group(T0, &batches, &mut |_, _| Ok(None)).unwrap();
        let used = xid() - before - 1;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results[1..].iter().all(|r| matches!(r, Err(StoreError::Conflict { .. }))));
        assert!(used <= 5 * n as u64, "{used} transaction ids for a group of {n}");
        consistent(&store);
    }

    /// The head's update is the transaction's own, not a savepoint's: no MultiXact per commit.
    /// (A cluster of its own: the count is the cluster's.)
    #[test]
    fn commits_make_no_multixacts() {
        if warden_testpg::shared().is_none() {
            return;
        }
        let cluster = warden_testpg::Cluster::start().unwrap();
        let pg = &cluster;
        let db = pg.fresh_name();
        let store = open(&pg.url(&db));
        let multixacts = || {
            pg.psql(&db, "CHECKPOINT").unwrap();
            pg.psql(&db, "SELECT next_multixact_id FROM pg_control_checkpoint()")
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        one(&store, "warm-up");
        let before = multixacts();
        for i in 0..50 {
            let batches = [
                Batch::new().change(insert(&format!("a{i}"))).event(ev("x")),
                Batch::new().change(insert(&format!("a{i}"))).event(ev("refused")),
                Batch::new().event(ev("y")),
            ];
            store.commit_group(T0, &batches, &mut |_, _| Ok(None)).unwrap();
        }
        assert_eq!(multixacts() - before, 0);
        consistent(&store);
    }

    /// The log back at `size` entries, as a restore would leave it.
    fn rewind(size: u64) -> String {
        format!(
            "DELETE FROM audit_entries WHERE seq >= {size}; DELETE FROM audit_subtrees WHERE start + (1::bigint << level) > {size};
             DELETE FROM audit_checkpoints WHERE size > {size}; UPDATE audit_head SET size = {size}"
        )
    }

    /// A log rewound behind a node's back (a restore, a failover to a lagging replica) and
    /// grown again by another node past the first's cached edge: the first reads the edge
    /// again instead of extending a prefix the log no longer has.
    #[test]
    fn a_cached_edge_the_log_no_longer_has_is_read_again() {
        let Some(pg) = warden_testpg::shared() else { return };
        let db = pg.fresh_name();
        let (a, b) = (open(&pg.url(&db)), open(&pg.url(&db)));
        one(&a, "a0");
        one(&a, "a1");
        pg.psql(&db, &rewind(1)).unwrap();
        one(&b, "b1");
        one(&b, "b2");
        let mut sealed = None;
        a.commit_group(T0, &[Batch::new().event(ev("a3"))], &mut |size, root| {
            sealed = Some((size, *root));
            Ok(None)
        })
        .unwrap();
        let mem = consistent(&a);
        assert_eq!(sealed, Some((4, mem.root())), "the seal is the stored entries' root");
        // Rewound to exactly the cached size again: the same.
        pg.psql(&db, &rewind(3)).unwrap();
        one(&b, "b3");
        one(&b, "b4");
        one(&a, "a5");
        consistent(&a);
        // And a cache ahead of the head (the database lost the node's last commit).
        pg.psql(&db, &rewind(4)).unwrap();
        assert_eq!(one(&a, "a6"), 4..5);
        consistent(&a);
    }

    /// On a fresh connection (nothing prepared yet), the last batches of a group are refused
    /// by the database: the transaction leaves the aborted batch before anything is prepared,
    /// and the batch before them commits with its checkpoint.
    #[test]
    fn a_fresh_writer_whose_last_batches_are_refused_commits_the_rest() {
        let Some(pg) = warden_testpg::shared() else { return };
        let s = open(&pg.fresh_database());
        let batches = [
            Batch::new().change(insert("x")).event(ev("x")),
            Batch::new().change(insert("x")).event(ev("x again")),
            Batch::new().change(insert("x")).event(ev("x again")),
        ];
        let r = s.commit_group(T0, &batches, &mut |size, _| Ok(Some(format!("n{size}\n")))).unwrap();
        assert_eq!(r[0], Ok(0..1));
        assert!(r[1..].iter().all(|r| matches!(r, Err(StoreError::Conflict { .. }))), "{r:?}");
        assert_eq!(s.latest_checkpoint().unwrap(), Some((1, "n1\n".into())));
        let r = s.commit_group(T0, &batches, &mut |_, _| Ok(None)).unwrap();
        assert!(r.iter().all(|r| matches!(r, Err(StoreError::Conflict { .. }))), "{r:?}");
        assert_eq!(s.size().unwrap(), 1);
        // A refused batch, then one without entries.
        let r =
            s.commit_group(T0, &[Batch::new().change(insert("x")), Batch::new().change(insert("y"))], &mut |_, _| {
                Ok(None)
            });
        let r = r.unwrap();
        assert!(r[0].is_err() && r[1].is_ok(), "{r:?}");
        assert!(s.get(Table::Agents, "y").unwrap().is_some());
        one(&s, "after");
        consistent(&s);
    }

    /// The writer's connection killed inside a group's transaction (after the batches, while
    /// the checkpoint is signed): the group reports failure, nothing of it is stored, and the
    /// next commit carries on from the stored log.
    #[test]
    fn a_writer_killed_inside_its_transaction_commits_nothing_and_says_so() {
        let Some(pg) = warden_testpg::shared() else { return };
        let db = pg.fresh_name();
        let s = open(&pg.url(&db));
        one(&s, "first");
        let hit = || Change::BudgetHit { agent: "a".into(), action: "x".into(), target: "h".into(), at: 1_000 };
        let batches: Vec<Batch> = (0..20).map(|i| Batch::new().change(hit()).event(ev(&format!("b{i}")))).collect();
        let r = s.commit_group(T0, &batches, &mut |_, _| {
            let killed = pg
                .psql(
                    &db,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND state = 'idle in transaction'",
                )
                .unwrap();
            assert_eq!(killed.trim(), "1", "the writer, waiting in its transaction");
            Ok(Some("note\n".into()))
        });
        assert!(r.is_err(), "{r:?}");
        assert_eq!(s.size().unwrap(), 1);
        assert_eq!(pg.psql(&db, "SELECT count(*) FROM budget_hits").unwrap().trim(), "0");
        assert_eq!(one(&s, "next"), 1..2);
        consistent(&s);
    }
}
