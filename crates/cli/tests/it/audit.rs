//! `warden init` and `warden audit …` on real data directories, tampered with the way an
//! attacker with file access would.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::audit::note::{Checkpoint, NoteVerifier};
use warden_core::audit::proof::{ConsistencyProof, InclusionProof};
use warden_store::{Batch, DataDir, LedgerOptions, SystemClock};

use crate::warden;

/// A data directory with `extra` more entries after the two `init` writes, one commit each.
fn data_dir(extra: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    warden().args(["init", "--data"]).arg(tmp.path()).assert().success();
    append(tmp.path(), extra);
    tmp
}

fn append(path: &Path, n: usize) {
    let dir = DataDir::open(path, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    for i in 0..n {
        let ev = Event::new(EventType::TaskOpened, Actor::user("alice")).task(format!("INC-{i}"));
        dir.ledger().commit(Batch::new().event(ev)).unwrap();
    }
}

fn audit(path: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    warden().arg("audit").arg(args[0]).arg("--data").arg(path).args(&args[1..]).assert()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(a.get_output().stdout.clone()).unwrap()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(a.get_output().stderr.clone()).unwrap()
}

fn sql(path: &Path, statement: &str) {
    rusqlite::Connection::open(path.join("warden.db")).unwrap().execute_batch(statement).unwrap();
}

#[test]
fn init_prints_the_token_once_and_refuses_to_run_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let a = warden().args(["init", "--output", "json", "--data"]).arg(tmp.path()).assert().success();
    let out: Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert!(out["admin_token"].as_str().unwrap().starts_with("wdn_"));
    assert_eq!(out["origin"], "warden.local/audit");
    let again = warden().args(["init", "--data"]).arg(tmp.path()).assert().code(1);
    assert!(stderr(&again).contains("already holds a Warden data directory"), "{}", stderr(&again));
    warden().args(["init", "--origin", "bad origin", "--data"]).arg(tmp.path().join("x")).assert().code(3);
}

#[test]
fn an_untouched_log_verifies() {
    let tmp = data_dir(30);
    let a = audit(tmp.path(), &["verify", "--output", "json"]).success();
    let out: Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!((out["ok"].clone(), out["size"].clone()), (json!(true), json!(32)));
    assert_eq!(out["checkpoints"], 31, "init signs once, then one per commit");
}

#[test]
fn one_changed_byte_is_named_by_seq() {
    let tmp = data_dir(30);
    sql(tmp.path(), "UPDATE audit_entries SET bytes = CAST(replace(CAST(bytes AS TEXT), 'INC-7', 'INC-8') AS BLOB)");
    let a = audit(tmp.path(), &["verify"]).code(2);
    assert!(stderr(&a).contains("entry 9: its stored leaf hash does not match"), "{}", stderr(&a));
    let a = audit(tmp.path(), &["verify", "--output", "json"]).code(2);
    let out: Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!((out["error"]["code"].clone(), out["error"]["seq"].clone()), (json!("leaf_mismatch"), json!(9)));
}

#[test]
fn deleted_last_entries_are_caught() {
    let tmp = data_dir(30);
    sql(tmp.path(), "DELETE FROM audit_entries WHERE seq >= 29");
    let a = audit(tmp.path(), &["verify"]).code(2);
    assert!(stderr(&a).contains("covers more entries than the log holds (29)"), "{}", stderr(&a));
}

#[test]
fn swapped_entries_are_caught() {
    let tmp = data_dir(30);
    sql(
        tmp.path(),
        "UPDATE audit_entries SET seq = -1 WHERE seq = 12; UPDATE audit_entries SET seq = 12 WHERE seq = 13; \
         UPDATE audit_entries SET seq = 13 WHERE seq = -1;",
    );
    let a = audit(tmp.path(), &["verify"]).code(2);
    assert!(stderr(&a).contains("entry 12: it says it is entry 13"), "{}", stderr(&a));
}

#[test]
fn a_replaced_signing_key_is_caught() {
    let tmp = data_dir(5);
    // The attacker's own data directory provides a valid key with the same origin.
    let other = tempfile::tempdir().unwrap();
    warden().args(["init", "--data"]).arg(other.path()).assert().success();
    std::fs::copy(other.path().join("signing.key"), tmp.path().join("signing.key")).unwrap();
    let a = audit(tmp.path(), &["verify"]).code(2);
    assert!(stderr(&a).contains("`signing.key` is not the key"), "{}", stderr(&a));

    // Re-signing every checkpoint with the new key does not help: entry 0 names the old one.
    let refused = DataDir::open(tmp.path(), Arc::new(SystemClock), LedgerOptions::default()).unwrap_err();
    assert!(refused.to_string().contains("is not the key this audit log was created with"), "{refused}");
    let signer = warden_store::data_dir::read_signer(tmp.path()).unwrap();
    let store = warden_store::data_dir::open_store(tmp.path()).unwrap();
    use warden_store::AuditLog as _;
    let mut resigned = Vec::new();
    for (size, _) in store.checkpoints(0, 1000).unwrap() {
        let cp = Checkpoint {
            origin: "warden.local/audit".into(),
            size,
            root: store.root(size).unwrap(),
            extensions: vec![],
        };
        resigned.push((size, cp.sign(&signer).unwrap()));
    }
    drop(store);
    for (size, note) in resigned {
        let c = rusqlite::Connection::open(tmp.path().join("warden.db")).unwrap();
        c.execute("UPDATE audit_checkpoints SET note = ?1 WHERE size = ?2", rusqlite::params![note, size as i64])
            .unwrap();
    }
    let a = audit(tmp.path(), &["verify", "--output", "json"]).code(2);
    let out: Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(out["error"]["code"], "key_mismatch", "{out}");
    // And trusting the original key explicitly names the first bad checkpoint.
    std::fs::remove_file(tmp.path().join("signing.key")).unwrap();
    let original = stdout(&warden().args(["audit", "key", "--data"]).arg(other.path()).assert().success());
    let a = audit(tmp.path(), &["verify", "--key", original.trim()]).code(2);
    assert!(stderr(&a).contains("entry 0 records a different verifier key"), "{}", stderr(&a));
}

#[test]
fn the_log_extends_an_externally_kept_checkpoint() {
    let tmp = data_dir(3);
    let kept = tmp.path().join("kept.note");
    let note = stdout(&audit(tmp.path(), &["checkpoint"]).success());
    std::fs::write(&kept, &note).unwrap();
    append(tmp.path(), 10);
    let a = audit(tmp.path(), &["verify", "--checkpoint", kept.to_str().unwrap()]).success();
    assert!(stdout(&a).contains("extends the external checkpoint at size 5"), "{}", stdout(&a));

    // A checkpoint of another log with the same origin is refused.
    let other = data_dir(1);
    let foreign = other.path().join("foreign.note");
    std::fs::write(&foreign, stdout(&audit(other.path(), &["checkpoint"]).success())).unwrap();
    let a = audit(tmp.path(), &["verify", "--checkpoint", foreign.to_str().unwrap()]).code(2);
    assert!(stderr(&a).contains("foreign.note"), "{}", stderr(&a));
}

#[test]
fn the_checkpoint_is_printed_byte_exact_and_the_key_opens_it() {
    let tmp = data_dir(2);
    let note = stdout(&audit(tmp.path(), &["checkpoint"]).success());
    let store = warden_store::data_dir::open_store(tmp.path()).unwrap();
    use warden_store::AuditLog as _;
    assert_eq!(note, store.latest_checkpoint().unwrap().unwrap().1);
    let key = stdout(&audit(tmp.path(), &["key"]).success());
    let key = key.trim_end();
    let parts: Vec<&str> = key.splitn(3, '+').collect();
    assert_eq!(parts[0], "warden.local/audit");
    assert!(parts[1].len() == 8 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let cp = Checkpoint::open(&note, &NoteVerifier::parse(key).unwrap()).unwrap();
    assert_eq!(cp.size, 4);
}

#[test]
fn proofs_verify_against_the_signed_checkpoints() {
    let tmp = data_dir(9);
    let store = warden_store::data_dir::open_store(tmp.path()).unwrap();
    use warden_store::AuditLog as _;
    let verifier = warden_store::data_dir::recorded_verifier(&store).unwrap().unwrap();
    let root_at = |n: u64| Checkpoint::open(&store.checkpoint_at(n).unwrap().unwrap(), &verifier).unwrap().root;

    let p: InclusionProof =
        serde_json::from_str(&stdout(&audit(tmp.path(), &["proof", "--index", "4"]).success())).unwrap();
    assert_eq!((p.leaf_index, p.tree_size), (4, 11));
    assert_eq!(p.leaf_hash, store.entries(4, 1).unwrap()[0].leaf_hash);
    assert!(p.verify(&root_at(11)));
    let p: InclusionProof =
        serde_json::from_str(&stdout(&audit(tmp.path(), &["proof", "--index", "4", "--size", "7"]).success())).unwrap();
    assert!(p.verify(&root_at(7)));

    let c: ConsistencyProof =
        serde_json::from_str(&stdout(&audit(tmp.path(), &["proof", "--old", "3", "--new", "10"]).success())).unwrap();
    assert!(c.verify(&root_at(3), &root_at(10)));

    let a = audit(tmp.path(), &["proof", "--index", "11"]).code(3);
    assert!(stderr(&a).contains("outside a tree of size 11"), "{}", stderr(&a));
    store.put_checkpoint(99, "x\n").ok();
    let a = audit(tmp.path(), &["proof", "--index", "1", "--size", "8"]).success();
    assert!(!stdout(&a).is_empty());
    audit(tmp.path(), &["proof", "--old", "0"]).code(3);
    audit(tmp.path(), &["proof"]).code(3);
}

#[test]
fn exports_carry_the_hashed_bytes() {
    let tmp = data_dir(4);
    let store = warden_store::data_dir::open_store(tmp.path()).unwrap();
    use warden_store::AuditLog as _;
    let raw = stdout(&audit(tmp.path(), &["export", "--format", "raw"]).success());
    let stored: Vec<Vec<u8>> = store.entries(0, 100).unwrap().into_iter().map(|e| e.bytes).collect();
    let lines: Vec<&[u8]> = raw.as_bytes().split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, stored.iter().map(Vec::as_slice).collect::<Vec<_>>());

    let jsonl = stdout(&audit(tmp.path(), &["export", "--format", "jsonl", "--since", "4"]).success());
    let rows: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(rows[0]["entry"]["type"], "task.opened");
    assert_eq!(rows[0]["entry"]["task"], "INC-2");

    // Task and user bookkeeping has no OCSF class: nothing to export yet.
    let ocsf = stdout(&audit(tmp.path(), &["export", "--format", "ocsf"]).success());
    assert_eq!(ocsf, "");
}

#[test]
fn a_missing_data_directory_is_invalid_input() {
    let tmp = tempfile::tempdir().unwrap();
    let a = audit(&tmp.path().join("none"), &["verify"]).code(3);
    assert!(stderr(&a).contains("is not a Warden data directory"), "{}", stderr(&a));
    warden().args(["audit", "export", "--format", "xml"]).assert().code(3);
}

/// The Python that runs `tests/audit/auditor.py`: `WARDEN_PYTHON` or `python3`, if it has
/// `cryptography`. CI installs it and sets `CI`, so there a missing module is a failure.
fn auditor_python() -> Option<String> {
    let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("`{python}` cannot import `cryptography`; CI must install it");
    }
    ok.then_some(python)
}

#[test]
fn an_independent_auditor_agrees() {
    let Some(python) = auditor_python() else {
        eprintln!("skipped: no Python with `cryptography` (pip install cryptography, or set WARDEN_PYTHON)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/audit/auditor.py");
    let tmp = data_dir(35);
    let run = || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(assert_cmd::cargo::cargo_bin("warden"))
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("37 entries, checkpoint 37"), "{text}");
    // The auditor is not a rubber stamp: one rewritten entry (leaf hash and all) fails it.
    let forged = Event::new(EventType::TaskOpened, Actor::user("mallory"))
        .task("INC-3")
        .to_entry_bytes(5, time::OffsetDateTime::now_utc())
        .unwrap();
    let leaf = warden_core::audit::merkle::leaf_hash(&forged);
    rusqlite::Connection::open(tmp.path().join("warden.db"))
        .unwrap()
        .execute(
            "UPDATE audit_entries SET bytes = ?1, leaf_hash = ?2 WHERE seq = 5",
            rusqlite::params![forged, &leaf[..]],
        )
        .unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("root is not the root"), "{:?}", out);
}

#[test]
fn a_readable_key_is_still_compared_and_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = data_dir(1);
    std::fs::set_permissions(tmp.path().join("signing.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = audit(tmp.path(), &["verify"]).success();
    assert!(stderr(&a).contains("can be read by other users"), "{}", stderr(&a));
}
