//! Load benchmark: `POST /v1/actions` on the advise and deny paths (decided, recorded durably,
//! answered) beside `GET /healthz` (the framework floor), on the same server in the same run.
//!
//! ```text
//! cargo bench -p warden-server --bench load -- [SECONDS] [CONNECTIONS]
//! ```
//!
//! The server runs in this process on 127.0.0.1:0 with a fresh data directory in
//! `WARDEN_BENCH_DIR` (default: the temp dir); the client is a minimal HTTP/1.1 keep-alive
//! client on the same runtime, so client and server share the machine's cores.

mod client;

use std::path::Path;
use std::sync::Arc;

use client::{request, run};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use warden_core::Bundle;
use warden_core::audit::entry::Actor;
use warden_server::limits::Limits;
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{DataDir, SystemClock};

/// The allocator `warden` itself uses (see crates/cli/src/main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let base = std::env::var_os("WARDEN_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let (data, _) = DataDir::init(tmp.path(), "bench.local/audit", Arc::new(SystemClock)).unwrap();
    // An experiment: `WARDEN_BENCH_DROP_INDEXES="requests_by_at requests_by_kind …"` measures
    // what those indexes cost every insert.
    if let Ok(names) = std::env::var("WARDEN_BENCH_DROP_INDEXES") {
        let conn = rusqlite::Connection::open(tmp.path().join("warden.db")).unwrap();
        for name in names.split_whitespace() {
            conn.execute_batch(&format!("DROP INDEX {name}")).unwrap();
        }
        println!("dropped indexes: {names}");
    }
    let bundle = Bundle::load(
        &warden_server::policy_dir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    admin::add_agent(data.ledger(), &Actor::user("bench"), EDR, "team:endpoint-response", "", now).unwrap();
    let limits = Limits { agent_rate: 1e9, agent_burst: 1e9, ..Limits::default() };
    let options = ServerOptions { limits, ..Default::default() };
    let app = AppState::with_options(data, bundle, Arc::new(SystemClock), options).unwrap();
    let token = app.tokens.local.mint(EDR, "warden", now, 3600);
    let auth = format!("authorization: Bearer {token}");

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = app.clone();
        tokio::spawn(warden_server::serve::serve(listener, app, std::future::pending()));
        let task = json!({"id": "INC-7", "title": "bench", "trigger": {"source": "edr", "severity": "high"}});
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request("POST", "/v1/tasks", &auth, Some(&task))).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[9..12], b"201");

        let ask = |action: &str, confidence: f64| {
            json!({"task": "INC-7", "action": action, "target": "host:web-01", "confidence": confidence,
                   "params": {"reason": "beacon"}, "rationale": "bench", "evidence": [{"kind": "edr", "ref": "d:1"}]})
        };
        println!("load: {secs} s per run, {conns} keep-alive connections, client in-process");
        println!("| run | requests/s | p50 | p99 | ratio to healthz |");
        println!("|---|---|---|---|---|");
        let floor = run(addr, request("GET", "/healthz", &auth, None), secs, conns).await;
        println!("| GET /healthz | {:.0} | {:?} | {:?} | 1.00 |", floor.rps, floor.p50, floor.p99);
        let dry =
            run(addr, request("POST", "/v1/decisions", &auth, Some(&ask("host.isolate", 0.3))), secs, conns).await;
        println!(
            "| POST /v1/decisions (advise, dry run: nothing recorded) | {:.0} | {:?} | {:?} | {:.2} |",
            dry.rps,
            dry.p50,
            dry.p99,
            dry.rps / floor.rps
        );
        let mut groups = Vec::new();
        for (name, body) in [("advise", ask("host.isolate", 0.3)), ("deny", ask("host.wipe", 0.95))] {
            let before = probe.ledger().group_stats();
            let r = run(addr, request("POST", "/v1/actions", &auth, Some(&body)), secs, conns).await;
            let after = probe.ledger().group_stats();
            let (b, g) = (after.batches - before.batches, after.groups - before.groups);
            let busy = after.busy - before.busy;
            groups.push(format!(
                "{name}: {b} commits in {g} groups ({:.1} per fsync), {:?} per group, store busy {:.0} % of the run",
                b as f64 / g.max(1) as f64,
                busy / g.max(1) as u32,
                100.0 * busy.as_secs_f64() / secs
            ));
            println!(
                "| POST /v1/actions ({name}, durable audit) | {:.0} | {:?} | {:?} | {:.2} |",
                r.rps,
                r.p50,
                r.p99,
                r.rps / floor.rps
            );
        }
        println!("\ngroup commit: {}", groups.join("; "));
    });
}
