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

/// A database made by the first PostgreSQL schema (5) gets the sessions table of 6.
#[test]
fn a_version_5_database_is_migrated() {
    let Some(pg) = warden_testpg::shared() else { return };
    let db = pg.fresh_name();
    drop(PgStore::connect(&pg.url(&db)).unwrap());
    pg.psql(&db, "DROP TABLE sessions; DROP TABLE holds; UPDATE warden_schema SET version = 5").unwrap();
    let store = PgStore::connect(&pg.url(&db)).unwrap();
    assert_eq!(pg.psql(&db, "SELECT version FROM warden_schema").unwrap().trim(), SCHEMA_VERSION.to_string());
    assert_eq!(store.get(warden_store::Table::Sessions, "s").unwrap(), None);
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
