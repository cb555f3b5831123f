//! Audit log benchmarks, each beside its physical limit measured in the same run.
//!
//! ```text
//! cargo bench -p warden-store --bench audit -- append [SECONDS]
//!     raw write+fdatasync loop vs durable commits through the Ledger with 1, 8 and 64
//!     concurrent appenders (one ~250-byte entry per commit)
//! cargo bench -p warden-store --bench audit -- requests [SECONDS] [THREADS]
//!     only the request-sized batches (2 records + 2 entries per commit), for profiling
//! cargo bench -p warden-store --bench audit -- build DIR [ENTRIES]
//!     a data directory with ENTRIES (default 1,000,000) entries, 1,000 per commit, for
//!     `warden audit verify` to be timed and measured on (scripts/bench-audit)
//! cargo bench -p warden-store --bench audit -- verify DIR
//!     in-process verify of DIR vs SHA-256 over the same entry bytes
//! ```
//!
//! Files go to `WARDEN_BENCH_DIR` (default: the system temp dir), so the fsync baseline and
//! the database share a disk.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::audit::merkle::TreeReader as _;
use warden_store::data_dir::{self, DataDir};
use warden_store::verify::verify;
use warden_store::{AuditLog, Batch, SystemClock};

fn bench_dir() -> PathBuf {
    std::env::var_os("WARDEN_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// A realistic entry: a decision on a host, ~250 bytes of canonical JSON.
fn event(i: u64) -> Event {
    Event::new(EventType::DecisionMade, Actor::agent("spiffe://acme.example/soc/edr-responder"))
        .task("INC-7")
        .request(format!("req_{i:012}"))
        .action("host.isolate")
        .data(serde_json::json!({"target": "host:web-42", "decision": {"outcome": "execute", "effective_level": 3}}))
}

/// Raw baseline: append 256 bytes and fdatasync, in a loop, for `secs`.
fn raw_fsync(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("warden-bench-fsync.dat");
    let mut f = std::fs::File::create(&path).unwrap();
    let record = [b'x'; 256];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&record).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    rate
}

/// What one `POST /v1/actions` commits: two records and two entries. Ids and times grow
/// across all appenders, as the gateway's time-ordered ids do.
fn request_batch(_: u64) -> Batch {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("act_{i:016x}");
    let body = serde_json::json!({"id": id, "agent": "spiffe://acme.example/soc/edr-responder", "task": "INC-7",
        "action": "host.isolate", "target": "host:web-42", "params": {"reason": "beacon"}, "confidence": 0.3,
        "rationale": "bench", "evidence": [{"kind": "edr", "ref": "d:1"}], "state": "advised"});
    let rec = |t| {
        warden_store::Record::new(t, &id, body.clone())
            .agent("spiffe://acme.example/soc/edr-responder")
            .task("INC-7")
            .state("advised")
            .at(i as i64)
    };
    Batch::new()
        .change(warden_store::Change::Insert(rec(warden_store::Table::Requests)))
        .change(warden_store::Change::Insert(rec(warden_store::Table::Decisions)))
        .event(event(i).data(body.clone()))
        .event(event(i).data(body))
}

/// Durable commits per second through the Ledger with `threads` concurrent appenders.
fn ledger_rate(dir: &Path, threads: usize, secs: f64) -> (f64, u64) {
    ledger_rate_with(dir, threads, secs, &|i| Batch::new().event(event(i)))
}

fn ledger_rate_with(dir: &Path, threads: usize, secs: f64, make: &(dyn Fn(u64) -> Batch + Sync)) -> (f64, u64) {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let (data, _) = DataDir::init(tmp.path(), "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let ledger = data.ledger();
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (done, stop) = (&done, &stop);
            s.spawn(move || {
                let mut i = t as u64 * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    ledger.commit(make(i)).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let checkpoints = ledger.store().checkpoints(0, usize::MAX >> 1).unwrap().len() as u64;
    (done.load(Ordering::Relaxed) as f64 / elapsed, checkpoints)
}

fn append(secs: f64) {
    let dir = bench_dir();
    println!("durable appends, {secs} s each, in {}", dir.display());
    let raw = raw_fsync(&dir, secs);
    println!("| run | commits/s | ratio to raw write+fdatasync | checkpoints signed |");
    println!("|---|---|---|---|");
    println!("| raw write(256 B) + fdatasync loop | {raw:.0} | 1.00 | — |");
    for threads in [1, 8, 64] {
        let (rate, cps) = ledger_rate(&dir, threads, secs);
        println!("| Ledger, {threads} appender(s) | {rate:.0} | {:.2} | {cps} |", rate / raw);
    }
    let (rate, cps) = ledger_rate_with(&dir, 32, secs, &request_batch);
    println!(
        "| Ledger, 32 appenders, request-sized batches (2 records + 2 entries) | {rate:.0} | {:.2} | {cps} |",
        rate / raw
    );
}

fn build(dir: &Path, entries: u64) {
    let start = Instant::now();
    let (data, _) = DataDir::init(dir, "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let ledger = data.ledger();
    let mut i = ledger.store().size().unwrap();
    while i < entries {
        let n = (entries - i).min(1000);
        let mut batch = Batch::new();
        for k in 0..n {
            batch = batch.event(event(i + k));
        }
        ledger.commit(batch).unwrap();
        i += n;
        if i % 100_000 < 1000 {
            eprint!("\rbuilt {i}/{entries}");
        }
    }
    eprintln!();
    println!("built {} entries in {:.1} s at {}", i, start.elapsed().as_secs_f64(), dir.display());
}

fn verify_vs_sha(dir: &Path) {
    let store = data_dir::open_store(dir).unwrap();
    let verifier = data_dir::recorded_verifier(&store).unwrap().unwrap();
    let size = store.size().unwrap();
    // Baseline: SHA-256 over the same bytes, already in memory.
    let mut bytes = Vec::new();
    let mut from = 0;
    while from < size {
        let page = store.entries(from, 4096).unwrap();
        from = page.last().unwrap().seq + 1;
        for e in page {
            bytes.extend_from_slice(&e.bytes);
        }
    }
    let start = Instant::now();
    let digest = Sha256::digest(&bytes);
    let sha = start.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    if std::env::var_os("BREAKDOWN").is_some() {
        let t = Instant::now();
        let mut from = 0;
        let mut n = 0u64;
        while from < size {
            let page = store.entries(from, 4096).unwrap();
            from = page.last().unwrap().seq + 1;
            n += page.len() as u64;
        }
        println!("scan only: {:.2}s ({n})", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut from = 0;
        while from < size {
            let page = store.entries(from, 4096).unwrap();
            from = page.last().unwrap().seq + 1;
            for e in page {
                std::hint::black_box(warden_core::audit::merkle::leaf_hash(&e.bytes));
            }
        }
        println!("scan+leaf: {:.2}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        for chunk in bytes.chunks(300) {
            std::hint::black_box(warden_core::audit::merkle::leaf_hash(chunk));
        }
        println!("leaf hashing 300B chunks in memory: {:.2}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let page = store.entries(0, 100_000).unwrap();
        let t2 = Instant::now();
        for e in &page {
            std::hint::black_box(warden_core::audit::entry::Entry::parse(&e.bytes).unwrap());
        }
        println!("fetch 100k: {:.2}s; parse 100k: {:.2}s", (t2 - t).as_secs_f64(), t2.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..100_000u64 {
            std::hint::black_box(store.perfect_subtree(i & !1, 1).unwrap());
        }
        println!("100k subtree point reads: {:.2}s", t.elapsed().as_secs_f64());
    }
    let start = Instant::now();
    let report = verify(&store, &verifier, &mut |_, _| {}).unwrap();
    let t = start.elapsed().as_secs_f64();
    let mb = bytes.len() as f64 / 1e6;
    println!("| run | time | MB/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| SHA-256 over the {size} entries' bytes ({mb:.0} MB, in memory) | {sha:.2} s | {:.0} | 1.00 |",
        mb / sha
    );
    println!(
        "| verify: {} entries, {} checkpoints, from SQLite | {t:.2} s | {:.0} | {:.2} |",
        report.size,
        report.checkpoints,
        mb / t,
        sha / t
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("append") => append(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0)),
        Some("requests") => {
            // Only the request-sized phase, for profiling the commit path.
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
            let threads = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
            let (rate, cps) = ledger_rate_with(&bench_dir(), threads, secs, &request_batch);
            println!("request-sized batches, {threads} appenders: {rate:.0} commits/s, {cps} checkpoints");
        }
        Some("build") => build(Path::new(&args[1]), args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000)),
        Some("verify") => verify_vs_sha(Path::new(&args[1])),
        _ => {
            eprintln!(
                "usage: cargo bench -p warden-store --bench audit -- append [SECONDS] | requests [SECONDS] [THREADS] | build DIR [ENTRIES] | verify DIR"
            );
        }
    }
}
