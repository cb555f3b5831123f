//! Crash test: a child process commits under load (8 threads) and is killed with SIGKILL at
//! random moments, 20 times. After each kill the log must verify and every commit the child
//! had acknowledged must be there — its entries at the seqs it was told, its record too.
//!
//! The child is this same test binary, re-run with `WARDEN_CRASH_CHILD` set, executing the
//! ignored test `crash::child`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use warden_core::audit::entry::{Actor, Entry, Event, EventType};
use warden_store::data_dir::{self, DataDir};
use warden_store::verify::verify;
use warden_store::{AuditLog, Batch, Change, LedgerOptions, Record, Store, SystemClock, Table};

const ENV: &str = "WARDEN_CRASH_CHILD";

/// The child: commit forever from 8 threads, printing `ack START END TAG` once each commit
/// has returned.
#[test]
#[ignore = "run by `killed_appenders_lose_nothing_acknowledged` as its child process"]
fn child() {
    let Some(dir) = std::env::var_os(ENV) else { return };
    let dir = DataDir::open(Path::new(&dir), Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    let round = std::process::id();
    std::thread::scope(|s| {
        for t in 0..8 {
            let ledger = dir.ledger();
            s.spawn(move || {
                for n in 0.. {
                    let tag = format!("r{round}-t{t}-n{n}");
                    let events = 1 + (n % 3);
                    let mut batch =
                        Batch::new().change(Change::Insert(Record::new(Table::Tasks, &tag, serde_json::json!({}))));
                    for _ in 0..events {
                        batch = batch.event(Event::new(EventType::TaskOpened, Actor::system("crash")).task(&tag));
                    }
                    let r = ledger.commit(batch).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {} {} {tag}", r.start, r.end).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

/// A small xorshift, seeded from the clock: random kill moments without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn killed_appenders_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::init(tmp.path(), "warden.test/audit", Arc::new(SystemClock)).unwrap());
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let exe = std::env::current_exe().unwrap();
    let mut total_acks = 0;
    for kill in 0..20 {
        let mut child = Command::new(&exe)
            .args(["crash::child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).filter(|l| l.starts_with("ack ")).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(60 + next(&mut rng) % 200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(!acks.is_empty() || kill > 0, "the child acknowledged nothing before the first kill");
        total_acks += acks.len();

        let store = data_dir::open_store(tmp.path()).unwrap();
        let verifier = data_dir::recorded_verifier(&store).unwrap().unwrap();
        let report = verify(&store, &verifier, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("after kill {kill}, the log does not verify: {e}"));
        for ack in &acks {
            let parts: Vec<&str> = ack.split(' ').collect();
            let (start, end, tag) = (parts[1].parse::<u64>().unwrap(), parts[2].parse::<u64>().unwrap(), parts[3]);
            assert!(end <= report.size, "after kill {kill}: acknowledged entries {start}..{end} are gone");
            for e in store.entries(start, (end - start) as usize).unwrap() {
                let entry = Entry::parse(&e.bytes).unwrap();
                assert_eq!(entry.event.task.as_deref(), Some(tag), "after kill {kill}: entry {} is not {tag}'s", e.seq);
            }
            assert!(store.get(Table::Tasks, tag).unwrap().is_some(), "after kill {kill}: {tag}'s record is gone");
        }
    }
    eprintln!("crash test: {total_acks} acknowledged commits over 20 kills");
    assert!(total_acks > 100, "too little load to mean anything: {total_acks} acknowledged commits");
    // Reopening for writing signs whatever tail the last kill left unsigned.
    let dir = DataDir::open(tmp.path(), Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    let store = dir.ledger().store();
    assert_eq!(store.latest_checkpoint().unwrap().map(|c| c.0), Some(store.size().unwrap()));
}
