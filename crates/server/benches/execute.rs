//! Execution benchmarks, each beside its baseline in the same run.
//!
//! ```text
//! cargo bench -p warden-server --bench execute -- path [SECONDS] [CONNECTIONS]
//!     POST /v1/actions on the execute path (enrichment: decided, recorded, executed against
//!     the lab with a lease, recorded again) beside the same call made to the lab directly
//! cargo bench -p warden-server --bench execute -- halt
//!     POST /v1/halt (scope all) with 0, 1,000 and 10,000 active leases, beside committing the
//!     same revocations as one plain batch
//! ```

mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use client::{request, run};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use warden_core::Bundle;
use warden_core::audit::entry::Actor;
use warden_core::request::{Halt, HaltScope};
use warden_server::execution::{Lease, LeaseState};
use warden_server::limits::Limits;
use warden_server::model::Model as _;
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{Batch, Change, DataDir, SystemClock};

const BOT: &str = "spiffe://acme.example/soc/enrichment-bot";

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy")
}

fn app(tmp: &Path, connector: Option<Arc<dyn warden_connectors::Connector>>) -> warden_server::App {
    let (data, _) = DataDir::init(tmp, "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let bundle = Bundle::load(&warden_server::policy_dir::read(&example()).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    admin::add_agent(data.ledger(), &Actor::user("bench"), BOT, "team:soc-engineering", "", now).unwrap();
    let limits = Limits { agent_rate: 1e9, agent_burst: 1e9, ..Limits::default() };
    AppState::with_options(
        data,
        bundle,
        Arc::new(SystemClock),
        ServerOptions { limits, connector, ..Default::default() },
    )
    .unwrap()
}

fn path(secs: f64, conns: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let keys = warden_lab::Keys::random();
    let lab_addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warden_lab::serve(listener, keys.clone(), std::future::pending()));
        addr
    });
    let text = std::fs::read_to_string(example().join("connectors.toml")).unwrap();
    let tools = [("siem".to_string(), format!("http://{lab_addr}"))].into_iter().collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let connector: Arc<dyn warden_connectors::Connector> = Arc::new(
        warden_connectors::HttpConnector::from_toml(
            &text,
            &tools,
            Box::new(warden_connectors::EnvSecrets { given, dir: None }),
        )
        .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let app = app(tmp.path(), Some(connector));
    let token = app.tokens.local.mint(BOT, "warden", time::OffsetDateTime::now_utc(), 3600);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warden_server::serve::serve(listener, app, std::future::pending()));
        let auth = format!("authorization: Bearer {token}");
        let task = json!({"id": "INC-1", "title": "bench", "trigger": {"source": "siem"}});
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request("POST", "/v1/tasks", &auth, Some(&task))).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[9..12], b"201");
        println!("execute path: {secs} s per run, {conns} keep-alive connections, lab and client in-process");
        println!("| run | requests/s | p50 | p99 | ratio to the lab direct |");
        println!("|---|---|---|---|---|");
        let direct = request("POST", "/siem/api/alerts/ALRT-1001/enrich", &format!("x-api-key: {}", keys.siem), Some(&json!({"sources": "bench"})));
        let client::Run { rps: lab, p50, p99 } = run(lab_addr, direct, secs, conns).await;
        println!("| lab direct: POST /siem/api/alerts/{{id}}/enrich | {lab:.0} | {p50:?} | {p99:?} | 1.00 |");
        // The enrichment bot's budget is 5,000 executions an hour: keep under it.
        let body = json!({"task": "INC-1", "action": "alert.enrich", "target": "alert:ALRT-1001", "confidence": 0.9,
            "params": {"sources": ["threat-intel"]}});
        let client::Run { rps, p50, p99 } = run(addr, request("POST", "/v1/actions", &auth, Some(&body)), secs, conns).await;
        println!(
            "| POST /v1/actions, execute path (decided, leased, executed, recorded) | {rps:.0} | {p50:?} | {p99:?} | {:.2} |",
            rps / lab
        );
    });
}

fn lease(i: usize) -> Lease {
    Lease {
        id: format!("lease_bench_{i:06}"),
        state: LeaseState::Active,
        agent: BOT.into(),
        task: "INC-1".into(),
        request: format!("act_bench_{i:06}"),
        scope: "alert.enrich alert:ALRT-1001".into(),
        digest: String::new(),
        max_uses: 1,
        uses: 1,
        issued_at: "2026-11-23T00:00:00Z".into(),
        expires_at: "2099-01-01T00:00:00Z".into(),
        expires_ms: 4_070_908_800_000,
        revoked_at: None,
        revoked_reason: None,
    }
}

fn seed(app: &AppState, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut batch = Batch::new();
        for i in chunk {
            batch = batch.change(Change::Insert(lease(*i).record()));
        }
        app.ledger().commit(batch).unwrap();
    }
}

fn halt() {
    println!("halt latency (scope all), one run each");
    println!("| active leases | halt (find, revoke, cancel, commit) | plain batch of the same revocations | ratio |");
    println!("|---|---|---|---|");
    for n in [0, 1_000, 10_000] {
        // Baseline: the same revocations committed as one batch, nothing else.
        let tmp = tempfile::tempdir().unwrap();
        let base_app = app(tmp.path(), None);
        seed(&base_app, n);
        let now = time::OffsetDateTime::now_utc();
        let mut batch = Batch::new();
        for i in 0..n {
            let b = warden_server::execution::revoke_changes(&lease(i), 1, &Actor::user("bench"), "bench", now);
            batch.changes.extend(b.changes);
            batch.events.extend(b.events);
        }
        let t = Instant::now();
        base_app.ledger().commit(batch).unwrap();
        let base = t.elapsed();

        let tmp = tempfile::tempdir().unwrap();
        let halt_app = app(tmp.path(), None);
        seed(&halt_app, n);
        let t = Instant::now();
        let h = Halt { scope: HaltScope::All, id: None, reason: "bench".into(), expires_at: None };
        let done = warden_server::halt::set(&halt_app, h, &bench_admin(), false).unwrap();
        let took = t.elapsed();
        assert_eq!(done.revoked_leases.len(), n);
        let ratio = if n == 0 { "—".to_string() } else { format!("{:.2}", took.as_secs_f64() / base.as_secs_f64()) };
        println!("| {n} | {took:?} | {} | {ratio} |", if n == 0 { "—".to_string() } else { format!("{base:?}") });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("path") => path(
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0),
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16),
        ),
        Some("halt") => halt(),
        _ => eprintln!("usage: cargo bench -p warden-server --bench execute -- path [SECONDS] [CONNECTIONS] | halt"),
    }
}

/// The bench's caller for halts: an admin.
fn bench_admin() -> warden_server::auth::Caller {
    warden_server::auth::Caller::Human(warden_server::model::User {
        id: "bench".into(),
        roles: vec!["admin".into()],
        token_hash: String::new(),
        status: "active".into(),
        oidc: Vec::new(),
    })
}
