//! `verify` on a real SQLite file: clean logs pass; each kind of tampering is named.

use warden_core::audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use warden_store::verify::{VerifyFailure, verify};
use warden_store::{AuditLog, SqliteStore};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    signer: NoteSigner,
}

/// 20 entries with a signed checkpoint after entries 5, 10 and 20.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let signer = NoteSigner::new("warden.local/audit", &[3u8; 32]).unwrap();
    let log = SqliteStore::open(&path).unwrap();
    for upto in [5u64, 10, 20] {
        let n = (upto - log.size().unwrap()) as usize;
        log.append(n, &mut |s| Ok(format!("{{\"seq\":{s}}}").into_bytes())).unwrap();
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
    sql(&f, "UPDATE audit_entries SET bytes = CAST('{\"seq\":8}' || ' ' AS BLOB) WHERE seq = 7");
    assert!(matches!(check(&f), Err(VerifyFailure::LeafMismatch { seq: 7 })), "{:?}", check(&f));
}

#[test]
fn a_rewritten_entry_with_a_matching_leaf_hash_breaks_the_tree() {
    let f = fixture();
    let bytes = b"{\"seq\":7,\"forged\":true}";
    let leaf = warden_core::audit::merkle::leaf_hash(bytes);
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
    assert!(matches!(err, VerifyFailure::SubtreeMismatch { start: 2, end: 4 }), "{err}");
}

#[test]
fn swapped_entries_and_subtrees_still_fail_at_the_checkpoint() {
    let f = fixture();
    let log = SqliteStore::open(&f.path).unwrap();
    let entries = log.entries(0, 100).unwrap();
    drop(log);
    // Rebuild the whole tree consistently over the swapped order: only the signed checkpoint
    // can tell.
    let other = tempfile::tempdir().unwrap();
    let forged = SqliteStore::open(&other.path().join("forged.db")).unwrap();
    let mut order: Vec<usize> = (0..20).collect();
    order.swap(2, 3);
    forged.append(20, &mut |s| Ok(entries[order[s as usize]].bytes.clone())).unwrap();
    for (size, note) in SqliteStore::open(&f.path).unwrap().checkpoints().unwrap() {
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
