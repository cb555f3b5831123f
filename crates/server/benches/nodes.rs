//! Many nodes on one PostgreSQL database: durable decisions per second of 1, 2 and 3 nodes
//! against one SQLite node, in the same run, and how fast a halt reaches the other nodes.
//!
//! ```text
//! cargo bench -p warden-server --bench nodes -- [SECONDS] [CONNECTIONS] [HALTS]
//! ```
//!
//! A throwaway PostgreSQL cluster (the machine's binaries, `crates/testpg`) on loopback; the
//! nodes run in this process, each with its own state, store connections, ledger and listener,
//! on one tokio runtime with the client — client, nodes and database share the machine's
//! cores. The client spreads its keep-alive connections round-robin over the nodes.

mod client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{request, run_spread};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use warden_core::Bundle;
use warden_core::audit::entry::Actor;
use warden_server::limits::Limits;
use warden_server::state::{App, ServerOptions};
use warden_server::{AppState, admin};
use warden_store::{DataDir, StoreAt, SystemClock};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

fn bundle() -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    Bundle::load(&warden_server::policy_dir::read(&dir).unwrap()).unwrap()
}

fn options() -> ServerOptions {
    ServerOptions { limits: Limits { agent_rate: 1e9, agent_burst: 1e9, ..Limits::default() }, ..Default::default() }
}

/// `n` nodes on the store at `at` (a fresh one), keys in `keys`: their states.
fn nodes(keys: &Path, at: &StoreAt, n: usize) -> Vec<App> {
    let (first, _) = DataDir::init_at(keys, at, "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let now = time::OffsetDateTime::now_utc();
    admin::add_agent(first.ledger(), &Actor::user("bench"), EDR, "team:endpoint-response", "", now).unwrap();
    let mut apps = vec![AppState::with_options(first, bundle(), Arc::new(SystemClock), options()).unwrap()];
    for _ in 1..n {
        let data = DataDir::open_at(keys, at, Arc::new(SystemClock), Default::default()).unwrap();
        apps.push(AppState::with_options(data, bundle(), Arc::new(SystemClock), options()).unwrap());
    }
    apps
}

async fn listen(apps: &[App]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for app in apps {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(warden_server::serve::serve(listener, app.clone(), std::future::pending()));
        tokio::spawn(warden_server::serve::keep_in_step(app.clone(), Duration::from_millis(250)));
    }
    addrs
}

async fn call(addr: SocketAddr, method: &str, path: &str, auth: &str, body: Option<&serde_json::Value>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = request(method, path, auth, body).as_ref().clone();
    // One request on this connection.
    let at = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    req.splice(at..at, b"\r\nconnection: close".iter().copied());
    s.write_all(&req).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn ask(confidence: f64) -> serde_json::Value {
    json!({"task": "INC-7", "action": "host.isolate", "target": "host:web-01", "confidence": confidence,
           "params": {"reason": "beacon"}, "rationale": "bench", "evidence": [{"kind": "edr", "ref": "d:1"}]})
}

/// CPU time so far, in clock ticks (1/100 s): the whole machine's busy time, and this
/// process's (the client and the nodes; the rest is the database, mostly).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let machine = stat.lines().next().map_or(0, |l| {
        let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
    });
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let own = own.rsplit_once(')').map_or(0, |(_, rest)| {
        // After the name: state, ppid, … cmajflt, then utime and stime (proc(5) fields 14, 15).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        at(11) + at(12)
    });
    (machine, own)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let halts: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let pg = warden_testpg::Cluster::start().expect("PostgreSQL binaries for the bench");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("nodes: {secs} s per run, {conns} keep-alive connections spread over the nodes, all in-process");
    println!(
        "| store | nodes | durable advise decisions/s | p50 | p99 | ratio to one PostgreSQL node | commits per transaction | cores busy | CPU per decision: all, of it the bench process | in the store's transactions per decision |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // SQLite first and last: the machine's drift over the run shows in the two.
    let mut results = Vec::new();
    for (name, n) in [("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 2), ("PostgreSQL", 3), ("SQLite", 1)] {
        let keys = tempfile::tempdir().unwrap();
        let at = if name == "SQLite" { StoreAt::File } else { StoreAt::parse(Some(&pg.fresh_database())).unwrap() };
        let apps = nodes(keys.path(), &at, n);
        let token = apps[0].tokens.local.mint(EDR, "warden", time::OffsetDateTime::now_utc(), 3600);
        let auth = format!("authorization: Bearer {token}");
        let (r, cpu) = rt.block_on(async {
            let addrs = listen(&apps).await;
            let task = json!({"id": "INC-7", "title": "bench", "trigger": {"source": "edr", "severity": "high"}});
            assert!(call(addrs[0], "POST", "/v1/tasks", &auth, Some(&task)).await.starts_with("HTTP/1.1 201"));
            let (before, at) = (cpu_ticks(), Instant::now());
            let r = run_spread(&addrs, request("POST", "/v1/actions", &auth, Some(&ask(0.3))), secs, conns).await;
            let (after, took) = (cpu_ticks(), at.elapsed().as_secs_f64());
            // Busy cores, and CPU seconds per decision (all, and the bench process's part).
            let (all, own) = ((after.0 - before.0) as f64 / 100.0, (after.1 - before.1) as f64 / 100.0);
            let decisions = r.rps * took;
            (r, (all / took, all / decisions, own / decisions))
        });
        let stats: Vec<_> = apps.iter().map(|a| a.ledger().group_stats()).collect();
        let (batches, groups) = stats.iter().fold((0, 0), |(b, g), s| (b + s.batches, g + s.groups));
        // Time inside the store's transactions per decision: on one node, the part that holds
        // the log's lock (with more, waiting for it too).
        let busy: f64 = stats.iter().map(|s| s.busy.as_secs_f64()).sum::<f64>() / batches.max(1) as f64;
        results.push((name, n, r, batches as f64 / groups.max(1) as f64, cpu, busy));
    }
    let base = results.iter().find(|(name, n, ..)| *name == "PostgreSQL" && *n == 1).map(|r| r.2.rps).unwrap();
    for (name, n, r, per_group, (busy, per, own), held) in &results {
        println!(
            "| {name} | {n} | {:.0} | {:?} | {:?} | {:.2} | {per_group:.1} | {busy:.2} | {:.0} µs, {:.0} µs | {:.0} µs |",
            r.rps,
            r.p50,
            r.p99,
            r.rps / base,
            per * 1e6,
            own * 1e6,
            held * 1e6
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if let Some((.., (_, per, _), _)) = results.iter().find(|(name, n, ..)| *name == "PostgreSQL" && *n == 1) {
        println!(
            "this machine's ceiling at one PostgreSQL node's CPU per decision: {cores} cores / {:.0} µs = {:.0} decisions/s ({:.2}× one node)",
            per * 1e6,
            cores / per,
            cores / per / base
        );
    }

    // A halt on node A under load: how long the call takes, and how long until node B's
    // mirror of the halts has it (B refuses matching actions from the halt's commit on
    // whatever its mirror says: the start commit checks the epoch).
    let keys = tempfile::tempdir().unwrap();
    let apps = nodes(keys.path(), &StoreAt::parse(Some(&pg.fresh_database())).unwrap(), 3);
    let roles = ["incident-commander".to_string(), "admin".to_string()];
    let (_, admin_token) = admin::add_user(apps[0].ledger(), &Actor::user("bench"), "ic", &roles, &[]).unwrap();
    let token = apps[0].tokens.local.mint(EDR, "warden", time::OffsetDateTime::now_utc(), 3600);
    let (auth, admin) = (format!("authorization: Bearer {token}"), format!("authorization: Bearer {admin_token}"));
    let (mut calls, mut seen) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let addrs = listen(&apps).await;
        let task = json!({"id": "INC-7", "title": "bench", "trigger": {"source": "edr", "severity": "high"}});
        assert!(call(addrs[0], "POST", "/v1/tasks", &auth, Some(&task)).await.starts_with("HTTP/1.1 201"));
        let (spread, req) = (addrs.clone(), request("POST", "/v1/actions", &auth, Some(&ask(0.3))));
        let load = tokio::spawn(async move { run_spread(&spread, req, (halts as f64) * 0.35, conns / 2).await });
        let halt = json!({"scope": "action", "id": "host.isolate", "reason": "bench"});
        let resume = json!({"scope": "action", "id": "host.isolate", "reason": "bench over"});
        for _ in 0..halts {
            let t = Instant::now();
            let out = call(addrs[0], "POST", "/v1/halt", &admin, Some(&halt)).await;
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            calls.push(t.elapsed());
            let returned = Instant::now();
            while apps[1].halts.read().unwrap().list.is_empty() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            seen.push(returned.elapsed());
            let out = call(addrs[1], "POST", "/v1/actions", &auth, Some(&ask(0.95))).await;
            assert!(out.contains("halt"), "node B did not refuse after the halt returned: {out}");
            assert!(call(addrs[0], "POST", "/v1/resume", &admin, Some(&resume)).await.starts_with("HTTP/1.1 200"));
            while !apps[1].halts.read().unwrap().list.is_empty() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = load.await;
    });
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    println!(
        "\nhalt on node A under load ({halts} times, 3 nodes): the call {:?} p50 / {:?} p99; node B's mirror had it \
         {:?} p50 / {:?} p99 after the call returned; node B refused every matching request sent after it returned",
        pct(&mut calls, 0.5),
        pct(&mut calls, 0.99),
        pct(&mut seen, 0.5),
        pct(&mut seen, 0.99)
    );
}
