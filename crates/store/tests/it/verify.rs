//! `verify` on a real SQLite file: clean logs pass; each kind of tampering is named.

use serde_json::json;
use time::macros::datetime;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use warden_store::verify::{VerifyFailure, verify};
use warden_store::{AuditLog, SqliteStore};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    signer: NoteSigner,
}

/// Entry `seq` of the fixture, with `tag` in its data.
fn entry(seq: u64, tag: &str) -> Vec<u8> {
    Event::new(EventType::PolicyLoaded, Actor::system("test"))
        .data(json!({ "tag": tag }))
        .to_entry_bytes(seq, datetime!(2026-11-23 06:00 UTC))
        .unwrap()
}

/// 20 entries with a signed checkpoint after entries 5, 10 and 20.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let signer = NoteSigner::new("warden.local/audit", &[3u8; 32]).unwrap();
    let log = SqliteStore::open(&path).unwrap();
    for upto in [5u64, 10, 20] {
        let n = (upto - log.size().unwrap()) as usize;
        log.append(n, &mut |s| Ok(entry(s, "n"))).unwrap();
        let cp = Checkpoint {
            origin: "warden.local/audit".into(),
            size: upto,
            root: log.root(upto).unwrap(),
            extensions: vec![],
        };
        log.put_checkpoint(upto, &cp.sign(&signer).unwrap()).unwrap();
    }
    Fixture { _dir: dir, path, signer }
}

fn check(f: &Fixture) -> Result<warden_store::verify::VerifyReport, VerifyFailure> {
    let log = SqliteStore::open(&f.path).unwrap();
    let verifier = NoteVerifier::parse(&f.signer.verifier_key()).unwrap();
    verify(&log, &verifier, &mut |_, _| {})
}

fn sql(f: &Fixture, statement: &str) {
    rusqlite::Connection::open(&f.path).unwrap().execute_batch(statement).unwrap();
}

#[test]
fn an_untouched_log_verifies() {
    let f = fixture();
    let mut calls = Vec::new();
    let log = SqliteStore::open(&f.path).unwrap();
    let verifier = NoteVerifier::parse(&f.signer.verifier_key()).unwrap();
    let report = verify(&log, &verifier, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!((report.size, report.checkpoints), (20, 3));
    assert_eq!(report.root, log.root(20).unwrap());
    assert_eq!(calls.last(), Some(&(20, 20)));
}

#[test]
fn one_changed_byte_names_the_entry() {
    let f = fixture();
    sql(
        &f,
        "UPDATE audit_entries SET bytes = CAST(replace(CAST(bytes AS TEXT), 'policy', 'pOlicy') AS BLOB) WHERE seq = 7",
    );
    assert!(matches!(check(&f), Err(VerifyFailure::LeafMismatch { seq: 7 })), "{:?}", check(&f));
}

#[test]
fn a_rewritten_entry_with_a_matching_leaf_hash_breaks_the_tree() {
    let f = fixture();
    let bytes = entry(7, "forged");
    let leaf = warden_core::audit::merkle::leaf_hash(&bytes);
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    conn.execute(
        "UPDATE audit_entries SET bytes = ?1, leaf_hash = ?2 WHERE seq = 7",
        rusqlite::params![&bytes[..], &leaf[..]],
    )
    .unwrap();
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::SubtreeMismatch { start: 6, end: 8 }), "{err}");
}

#[test]
fn deleted_last_entries_are_caught() {
    let f = fixture();
    sql(&f, "DELETE FROM audit_entries WHERE seq >= 17");
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::Truncated { checkpoint: 20, log: 17 }), "{err}");
}

#[test]
fn swapped_entries_are_caught() {
    let f = fixture();
    sql(
        &f,
        "UPDATE audit_entries SET seq = -1 WHERE seq = 2; UPDATE audit_entries SET seq = 2 WHERE seq = 3; \
         UPDATE audit_entries SET seq = 3 WHERE seq = -1;",
    );
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::BadEntry { seq: 2, .. }), "{err}");
    assert!(err.to_string().contains("moved"), "{err}");
}

#[test]
fn a_malformed_entry_is_named() {
    let f = fixture();
    let bytes = br#"{"seq": 4}"#;
    let leaf = warden_core::audit::merkle::leaf_hash(bytes);
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    conn.execute(
        "UPDATE audit_entries SET bytes = ?1, leaf_hash = ?2 WHERE seq = 4",
        rusqlite::params![&bytes[..], &leaf[..]],
    )
    .unwrap();
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::BadEntry { seq: 4, .. }), "{err}");
}

#[test]
fn swapped_entries_and_subtrees_still_fail_at_the_checkpoint() {
    let f = fixture();
    // Rebuild the whole tree consistently over rewritten entries 2 and 3 (each well-formed,
    // in its place): only the signed checkpoint can tell.
    let other = tempfile::tempdir().unwrap();
    let forged = SqliteStore::open(&other.path().join("forged.db")).unwrap();
    forged.append(20, &mut |s| Ok(entry(s, if s == 2 || s == 3 { "forged" } else { "n" }))).unwrap();
    for (size, note) in SqliteStore::open(&f.path).unwrap().checkpoints(0, 100).unwrap() {
        forged.put_checkpoint(size, &note).unwrap();
    }
    let verifier = NoteVerifier::parse(&f.signer.verifier_key()).unwrap();
    let err = verify(&forged, &verifier, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, VerifyFailure::RootMismatch { size: 5 }), "{err}");
}

#[test]
fn a_replaced_signing_key_is_caught() {
    let f = fixture();
    let log = SqliteStore::open(&f.path).unwrap();
    let impostor = NoteSigner::new("warden.local/audit", &[4u8; 32]).unwrap();
    let verifier = NoteVerifier::parse(&impostor.verifier_key()).unwrap();
    let err = verify(&log, &verifier, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, VerifyFailure::BadCheckpoint { size: 5, .. }), "{err}");
}

#[test]
fn a_changed_or_missing_stored_subtree_is_named() {
    let f = fixture();
    sql(&f, "UPDATE audit_subtrees SET hash = zeroblob(32) WHERE level = 2 AND start = 4");
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::SubtreeMismatch { start: 4, end: 8 }), "{err}");
    let f = fixture();
    sql(&f, "DELETE FROM audit_subtrees WHERE level = 3 AND start = 8");
    let err = check(&f).unwrap_err();
    assert!(matches!(err, VerifyFailure::SubtreeMismatch { start: 8, end: 16 }), "{err}");
}
