//! Data directories: init, reopen, and what is refused.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use warden_core::audit::entry::{Entry, EventType};
use warden_store::data_dir::{self, DataDir, DataDirError, KEY_FILE, recorded_verifier, token_hash};
use warden_store::verify::verify;
use warden_store::{LedgerOptions, Query, SystemClock, Table};

fn init(path: &std::path::Path) -> (DataDir, String) {
    DataDir::init(path, "warden.test/audit", Arc::new(SystemClock)).unwrap()
}

#[test]
fn init_writes_a_private_key_entry_zero_and_a_hashed_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data");
    let (dir, token) = init(&path);
    assert!(token.starts_with("wdn_") && token.len() == 47, "{token}");
    let mode = std::fs::metadata(path.join(KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let store = dir.ledger().store();
    let users = store.find(Table::Users, &Query { key: Some(token_hash(&token)), ..Query::default() }).unwrap();
    assert_eq!(users.len(), 1, "the admin is found by the hash of its token");
    assert_eq!(users[0].body["roles"], serde_json::json!(["admin"]));
    let everything: Vec<u8> = std::fs::read(path.join("warden.db")).unwrap();
    assert!(!everything.windows(token.len()).any(|w| w == token.as_bytes()), "the token itself is not stored");

    let first = Entry::parse(&store.entries(0, 1).unwrap()[0].bytes).unwrap();
    assert_eq!(first.event.kind, EventType::StoreInitialized);
    assert_eq!(first.event.data["verifier_key"], dir.ledger().signer().verifier_key());
    assert!(!String::from_utf8_lossy(&store.entries(0, 10).unwrap()[1].bytes).contains("wdn_"));
    let verifier = recorded_verifier(store.as_ref()).unwrap().unwrap();
    let report = verify(store.as_ref(), &verifier, &mut |_, _| {}).unwrap();
    assert_eq!((report.size, report.checkpoints), (2, 1));
}

#[test]
fn a_data_directory_reopens_and_is_not_initialised_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = init(tmp.path());
    let key = dir.ledger().signer().verifier_key();
    drop(dir);
    let again = DataDir::init(tmp.path(), "warden.test/audit", Arc::new(SystemClock));
    assert!(matches!(again, Err(DataDirError::AlreadyInitialized(_))), "{again:?}");
    let dir = DataDir::open(tmp.path(), Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    assert_eq!(dir.ledger().signer().verifier_key(), key);
    assert_eq!(dir.ledger().store().size().unwrap(), 2);
}

#[test]
fn a_readable_key_and_a_missing_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = DataDir::open(&tmp.path().join("nope"), Arc::new(SystemClock), LedgerOptions::default());
    assert!(matches!(missing, Err(DataDirError::NotInitialized(_))), "{missing:?}");
    let (dir, _) = init(tmp.path());
    drop(dir);
    std::fs::set_permissions(tmp.path().join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = DataDir::open(tmp.path(), Arc::new(SystemClock), LedgerOptions::default());
    assert!(matches!(open, Err(DataDirError::KeyPermissions(_))), "{open:?}");
    assert!(data_dir::open_store(tmp.path()).is_ok(), "auditors need no key");
}

#[test]
fn a_bad_origin_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data");
    let err = DataDir::init(&path, "has space", Arc::new(SystemClock)).unwrap_err();
    assert!(matches!(err, DataDirError::BadOrigin(_)), "{err}");
    assert!(!path.exists());
}

/// Nodes check each other's tokens: a node whose token key is not the one the log was created
/// with (a directory copied from elsewhere, a key regenerated) is refused, naming the file.
#[test]
fn a_token_key_other_than_the_logs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data");
    drop(init(&path));
    let other = tempfile::tempdir().unwrap();
    drop(init(&other.path().join("data")));
    std::fs::remove_file(path.join(data_dir::TOKEN_KEY_FILE)).unwrap();
    std::fs::copy(other.path().join("data").join(data_dir::TOKEN_KEY_FILE), path.join(data_dir::TOKEN_KEY_FILE))
        .unwrap();
    match DataDir::open(&path, Arc::new(SystemClock), LedgerOptions::default()) {
        Err(DataDirError::KeyMismatch(p)) => assert!(p.ends_with(data_dir::TOKEN_KEY_FILE), "{p:?}"),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
}

/// On PostgreSQL the database holds the log and the directory the keys: a second `init`
/// against the same database is refused and leaves no keys behind; a node opening a database
/// with no log is told to run `init`.
#[test]
fn a_postgres_store_is_initialised_once_and_must_be() {
    let Some(pg) = warden_testpg::shared() else { return };
    let url = pg.fresh_database();
    let at = warden_store::StoreAt::parse(Some(&url)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = DataDir::open_at(tmp.path(), &at, Arc::new(SystemClock), LedgerOptions::default());
    assert!(matches!(empty, Err(DataDirError::NotInitialized(_))), "{empty:?}");
    let (dir, _) = DataDir::init_at(&tmp.path().join("a"), &at, "warden.test/audit", Arc::new(SystemClock)).unwrap();
    assert!(dir.is_shared());
    assert!(!tmp.path().join("a").join(data_dir::DB_FILE).exists(), "no SQLite file beside a PostgreSQL store");
    let again = DataDir::init_at(&tmp.path().join("b"), &at, "warden.test/audit", Arc::new(SystemClock));
    assert!(matches!(again, Err(DataDirError::StoreInUse(_))), "{again:?}");
    assert!(!tmp.path().join("b").exists(), "nothing left behind");
    // Keys without a log: the database was emptied (or another named).
    let other = warden_store::StoreAt::parse(Some(&pg.fresh_database())).unwrap();
    let keys_only = DataDir::open_at(&tmp.path().join("a"), &other, Arc::new(SystemClock), LedgerOptions::default());
    assert!(matches!(keys_only, Err(DataDirError::StoreEmpty(_))), "{keys_only:?}");
}
