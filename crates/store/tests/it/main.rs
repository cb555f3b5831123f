//! The SQLite store: the conformance suite, plus what only a file on disk can show.

mod crash;
mod data_dir;
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
