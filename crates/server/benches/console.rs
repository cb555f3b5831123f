//! The console's lists and the API's paged lists with a full store, each beside `GET /healthz`
//! measured in the same run.
//!
//! ```text
//! cargo bench -p warden-server --bench console -- [SECONDS] [CONNECTIONS] [ACTIONS] [APPROVALS]
//! ```
//!
//! The store is filled with ACTIONS recorded requests (default 100,000: five agents, six
//! action classes, every state; each with its decision) and APPROVALS pending approvals
//! (default 10,000; one in ten for a role the analyst lacks), written straight into the store
//! in batches, copied from records the server itself made. A second server in the same process
//! holds a tenth as many. Each page is fetched again and again on keep-alive connections — the
//! first page and a page from the middle of each list (by cursor), filtered and not — on both
//! servers, A B B A. A page's cost is its p50 latency over `/healthz`'s on the full server,
//! and its p50 on the full server over the small one's: an indexed page costs the same.

mod client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use client::{once, request, run};
use serde_json::json;
use warden_core::Bundle;
use warden_core::audit::entry::Actor;
use warden_server::limits::Limits;
use warden_server::model::{ActionRecord, Approval, DecisionRecord, Model};
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{Batch, Change, DataDir, Query, Store, SystemClock, Table};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

/// A server on loopback whose store holds `actions` requests and `pending` approvals.
struct Server {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    admin: String,
    browser: String,
    _dir: tempfile::TempDir,
}

async fn server(actions: usize, pending: usize) -> Server {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    let dir = tempfile::tempdir().unwrap();
    let (data, admin_token) = DataDir::init(dir.path(), "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let bundle = Bundle::load(&warden_server::policy_dir::read(&example).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let agents: Vec<String> = bundle.agents().map(|g| g.id.clone()).collect();
    for g in bundle.agents() {
        admin::add_agent(data.ledger(), &Actor::user("bench"), &g.id, &g.owner, &g.purpose, now).unwrap();
    }
    let (_, ana) = admin::add_user(data.ledger(), &Actor::user("bench"), "ana", &["soc-analyst".into()], &[]).unwrap();
    let limits = Limits { agent_rate: 1e9, agent_burst: 1e9, ..Limits::default() };
    let app =
        AppState::with_options(data, bundle, Arc::new(SystemClock), ServerOptions { limits, ..Default::default() })
            .unwrap();
    let edr_token = app.tokens.local.mint(EDR, "warden", now, 3600);
    let store: Arc<dyn Store> = app.ledger().store().clone();
    let (cookie, _) = warden_server::auth::console_sign_in(&app, &ana).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(warden_server::serve::serve(listener, app, std::future::pending()));
    // Templates: one request that waits for approval, as the server records it.
    let edr = format!("authorization: Bearer {edr_token}");
    let task = json!({"id": "INC-1", "title": "bench", "trigger": {"source": "siem", "severity": "high"}});
    let (status, _, _) = once(addr, &request("POST", "/v1/tasks", &edr, Some(&task))).await;
    assert!(status.contains(" 201"), "{status}");
    let body = json!({"task": "INC-1", "action": "host.isolate", "target": "host:lt-cfo", "confidence": 0.95,
        "params": {"reason": "bench"}, "rationale": "bench", "evidence": [{"kind": "edr", "ref": "det:1"}]});
    let (status, _, b) = once(addr, &request("POST", "/v1/actions", &edr, Some(&body))).await;
    assert!(status.contains(" 200"), "{status}");
    let answer: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let id = answer["id"].as_str().unwrap();
    let approval_id = answer["decision"]["approval"]["id"].as_str().unwrap();
    let request0 = ActionRecord::from_record(&store.get(Table::Requests, id).unwrap().unwrap()).unwrap();
    let decision0 = DecisionRecord::from_record(&store.get(Table::Decisions, id).unwrap().unwrap()).unwrap();
    let approval0 = Approval::from_record(&store.get(Table::Approvals, approval_id).unwrap().unwrap()).unwrap();
    fill(store.as_ref(), &agents, 0..actions, 0..pending, actions, &request0, &decision0, &approval0);
    Server {
        addr,
        store,
        admin: format!("authorization: Bearer {admin_token}"),
        browser: format!("cookie: warden_session={cookie}"),
        _dir: dir,
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let actions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let pending: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let t = std::time::Instant::now();
        let full = server(actions, pending).await;
        let filled = t.elapsed();
        let small = server(actions / 10, pending / 10).await;
        let count = |s: &Server, state: Option<&str>, t| {
            s.store.count(t, &Query { state: state.map(str::to_string), ..Query::default() }).unwrap()
        };
        println!(
            "Console and paged lists: a server whose store holds {} requests and {} pending approvals \
             (filled in {:.1} s) against one with {} and {}, in the same process; {secs} s per run, \
             {conns} keep-alive connections, runs A B B A (small, full, full, small)",
            count(&full, None, Table::Requests),
            count(&full, Some("pending"), Table::Approvals),
            filled.as_secs_f64(),
            count(&small, None, Table::Requests),
            count(&small, Some("pending"), Table::Approvals),
        );
        println!();
        let a1 = measure(&small, secs, conns).await;
        let b1 = measure(&full, secs, conns).await;
        let b2 = measure(&full, secs, conns).await;
        let a2 = measure(&small, secs, conns).await;
        let p50 = |x: &client::Run, y: &client::Run| (x.p50 + y.p50) / 2;
        println!("| page | small store: p50 | full store: requests/s | p50 | p99 | p50 × /healthz | full ÷ small |");
        println!("|---|---|---|---|---|---|---|");
        let base = p50(&b1[0].1, &b2[0].1).as_secs_f64();
        for i in 0..a1.len() {
            let (name, s) = (a1[i].0, p50(&a1[i].1, &a2[i].1));
            let (f1, f2) = (&b1[i].1, &b2[i].1);
            let f = p50(f1, f2);
            println!(
                "| {name} | {s:?} | {:.0} | {f:?} | {:?} | **{:.1}×** | **{:.2}×** |",
                (f1.rps + f2.rps) / 2.0,
                f1.p99.max(f2.p99),
                f.as_secs_f64() / base,
                f.as_secs_f64() / s.as_secs_f64()
            );
        }
    });
}

/// `/healthz` and each page of `srv`, fetched for `secs` on `conns` connections.
async fn measure(srv: &Server, secs: f64, conns: usize) -> Vec<(&'static str, client::Run)> {
    let (addr, store, admin, browser) = (srv.addr, srv.store.as_ref(), &srv.admin, &srv.browser);
    let approvals =
        store.count(Table::Approvals, &Query { state: Some("pending".into()), ..Query::default() }).unwrap();
    let actions = store.count(Table::Requests, &Query::default()).unwrap();
    let mid_approval = nth(store, Table::Approvals, approvals as usize / 2, false).id;
    let mid_action = nth(store, Table::Requests, actions as usize / 2, true);
    let mid_action = format!("{}.{}", mid_action.at.unwrap(), mid_action.id);
    let agent = urlencode(EDR);
    let pages: Vec<(&'static str, String, &String)> = vec![
        ("inbox, first page (mine)", "/console/inbox".into(), browser),
        ("inbox, a page from the middle", format!("/console/inbox?after={mid_approval}"), browser),
        ("activity, first page", "/console/activity".into(), browser),
        (
            "activity, by agent + action + state",
            format!("/console/activity?agent={agent}&action=host.isolate&outcome=succeeded"),
            browser,
        ),
        ("activity, a page from the middle", format!("/console/activity?after={mid_action}"), browser),
        ("agents", "/console/agents".into(), browser),
        ("GET /v1/approvals?limit=100", "/v1/approvals?limit=100".into(), admin),
        ("GET /v1/approvals, middle page", format!("/v1/approvals?limit=100&after={mid_approval}"), admin),
        ("GET /v1/actions?limit=100", "/v1/actions?limit=100".into(), admin),
        ("GET /v1/actions, middle page", format!("/v1/actions?limit=100&after={mid_action}"), admin),
    ];
    // Every page answers 200 with something in it before it is timed.
    for (name, path, header) in &pages {
        let (status, _, body) = once(addr, &request("GET", path, header, None)).await;
        assert!(status.contains(" 200"), "{name}: {status}");
        assert!(body.len() > 500, "{name}: {}", String::from_utf8_lossy(&body));
    }
    let mut out =
        vec![("GET /healthz (baseline)", run(addr, request("GET", "/healthz", "x-bench: 1", None), secs, conns).await)];
    for (name, path, header) in &pages {
        out.push((*name, run(addr, request("GET", path, header, None), secs, conns).await));
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `n`th record of `table` in its list's order (approvals oldest first by id, requests
/// newest first).
fn nth(store: &dyn Store, table: Table, n: usize, newest_first: bool) -> warden_store::Record {
    let order = if newest_first { warden_store::Order::At } else { warden_store::Order::Id };
    let q = Query { descending: newest_first, order, limit: n + 1, ..Query::default() };
    store.find(table, &q).unwrap().pop().unwrap()
}

/// Writes `actions` requests with their decisions and `pending` approvals, copied from the
/// templates, in batches.
#[allow(clippy::too_many_arguments)]
fn fill(
    store: &dyn Store,
    agents: &[String],
    actions: std::ops::Range<usize>,
    pending: std::ops::Range<usize>,
    total: usize,
    request0: &ActionRecord,
    decision0: &DecisionRecord,
    approval0: &Approval,
) {
    const KINDS: [&str; 6] =
        ["host.isolate", "email.quarantine", "alert.enrich", "account.disable", "ip.block", "file.quarantine"];
    const STATES: [&str; 6] = ["succeeded", "denied", "advised", "pending_approval", "failed", "rolled_back"];
    let start_ms = request0.created_ms - total as i64 * 1000;
    let mut batch = Batch::new();
    let flush = |batch: &mut Batch| {
        let b = std::mem::take(batch);
        store.commit_group(time::OffsetDateTime::now_utc(), &[b], &mut |_, _| Ok(None)).unwrap();
    };
    for i in actions {
        let mut r = request0.clone();
        r.id = format!("act_{:012x}{:016x}", start_ms + i as i64 * 1000, i);
        r.agent = agents[i % agents.len()].clone();
        r.action = KINDS[i % KINDS.len()].to_string();
        r.state = STATES[(i / 7) % STATES.len()].to_string();
        r.target = format!("host:bench-{:05}", i % 5000);
        r.created_ms = start_ms + i as i64 * 1000;
        r.idempotency_key = None;
        r.approval = None;
        let mut d = decision0.clone();
        d.id = r.id.clone();
        d.agent = r.agent.clone();
        d.decided_ms = r.created_ms;
        batch = batch.change(Change::Insert(r.record())).change(Change::Insert(d.record()));
        if batch.changes.len() >= 4000 {
            flush(&mut batch);
        }
    }
    for i in pending {
        let mut a = approval0.clone();
        a.id = format!("apr_{:012x}{:016x}", start_ms + i as i64 * 1000, i);
        a.digest = format!("sha256:{i:064x}");
        a.target = format!("host:bench-{i:05}");
        a.requests = vec![format!("act_bench_{i}")];
        if i % 10 == 9 {
            a.roles = vec!["iam-owner".into()];
        }
        batch = batch.change(Change::Insert(a.record()));
        if batch.changes.len() >= 4000 {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}
