//! The MCP front door, each figure beside its baseline in the same run.
//!
//! ```text
//! cargo bench -p warden-server --bench mcp -- [SECONDS] [CONNECTIONS]
//! ```
//!
//! 1. Decisions: `tools/call` through `/mcp` (an MCP session per connection, Streamable HTTP,
//!    answers as SSE) beside `POST /v1/actions` for the same request on the same server —
//!    advise (`host.isolate`, confidence 0.1) and deny (`host.isolate` halted). Each call is
//!    decided and recorded durably. Runs go A B B A (the store grows meanwhile); each side's
//!    requests/s is the mean of its two runs, its percentiles the worse of the two.
//! 2. Upstream proxying: an execute through Warden to the lab EDR's MCP server
//!    (`tools/call lab-edr.enrich_alert`: decided, leased, called upstream, recorded) beside
//!    the lab's MCP server called directly with the same tool (`enrich_alert`), same client.

mod client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use client::{once, request, run, run_each};
use serde_json::{Value, json};
use warden_core::Bundle;
use warden_core::audit::entry::Actor;
use warden_server::limits::Limits;
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{DataDir, SystemClock};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";
const BOT: &str = "spiffe://acme.example/soc/enrichment-bot";

/// The example bundle, with the lab EDR's `enrich_alert` mapped to `alert.enrich`.
fn bundle_dir() -> tempfile::TempDir {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    let dir = tempfile::tempdir().unwrap();
    copy(&example, dir.path());
    let mcp = dir.path().join("mcp.toml");
    let mut text = std::fs::read_to_string(&mcp).unwrap();
    text.push_str(
        "\n[[tool]]\nupstream = \"lab-edr\"\ntool = \"enrich_alert\"\naction = \"alert.enrich\"\n\
         target = { pointer = \"/alert_id\", kind = \"alert\" }\nparams = { sources = \"/sources\" }\n",
    );
    std::fs::write(mcp, text).unwrap();
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The SSE answer's JSON-RPC message.
fn rpc(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let data = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).find(|d| !d.is_empty());
    serde_json::from_str(data.unwrap_or_else(|| text.trim())).unwrap_or_else(|_| panic!("not JSON-RPC: {text}"))
}

/// Opens an MCP session at `path` with `auth` (one header line): its `mcp-session-id`.
async fn session(addr: SocketAddr, path: &str, auth: &str) -> String {
    let headers = format!("{auth}\r\naccept: application/json, text/event-stream");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    let (status, hs, body) = once(addr, &request("POST", path, &headers, Some(&init))).await;
    assert!(status.contains(" 200"), "{status}: {}", String::from_utf8_lossy(&body));
    let id = hs.iter().find(|(k, _)| k == "mcp-session-id").map(|(_, v)| v.clone()).expect("a session id");
    let headers = format!("{headers}\r\nmcp-session-id: {id}\r\nmcp-protocol-version: 2025-11-25");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = once(addr, &request("POST", path, &headers, Some(&done))).await;
    assert!(status.contains(" 202"), "{status}");
    id
}

/// Two runs as one: requests/s averaged, the worse of each percentile.
fn mean(a: client::Run, b: client::Run) -> client::Run {
    client::Run { rps: (a.rps + b.rps) / 2.0, p50: a.p50.max(b.p50), p99: a.p99.max(b.p99) }
}

/// The request of one `tools/call` in session `id`.
fn tool_call(path: &str, auth: &str, id: &str, tool: &str, args: Value) -> Arc<Vec<u8>> {
    let headers = format!(
        "{auth}\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {id}\r\nmcp-protocol-version: 2025-11-25"
    );
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}});
    request("POST", path, &headers, Some(&call))
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let keys = warden_lab::Keys::random();
    let lab: SocketAddr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warden_lab::serve(listener, keys.clone(), std::future::pending()));
        addr
    });
    let given = [("LAB_EDR_KEY".to_string(), keys.edr.clone())].into_iter().collect();
    let upstream = warden_connectors::mcp::UpstreamConfig {
        name: "lab-edr".into(),
        url: Some(format!("http://{lab}/edr/mcp")),
        bearer: Some("secret:LAB_EDR_KEY".into()),
        ..Default::default()
    };
    let upstreams = Arc::new(
        warden_connectors::mcp::Upstreams::start(
            vec![upstream],
            Box::new(warden_connectors::EnvSecrets { given, dir: None }),
        )
        .unwrap(),
    );
    assert!(upstreams.wait_connected(std::time::Duration::from_secs(10)));
    let connector = Arc::new(warden_connectors::mcp::Routed { http: None, mcp: upstreams.clone() });

    let policy = bundle_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (data, admin_token) = DataDir::init(tmp.path(), "bench.local/audit", Arc::new(SystemClock)).unwrap();
    let bundle = Bundle::load(&warden_server::policy_dir::read(policy.path()).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    for agent in [EDR, BOT] {
        admin::add_agent(data.ledger(), &Actor::user("bench"), agent, "team:soc", "", now).unwrap();
    }
    let limits = Limits { agent_rate: 1e9, agent_burst: 1e9, ..Limits::default() };
    let options =
        ServerOptions { limits, connector: Some(connector), upstreams: Some(upstreams), ..Default::default() };
    let app = AppState::with_options(data, bundle, Arc::new(SystemClock), options).unwrap();
    let edr_token = app.tokens.local.mint(EDR, "warden", now, 3600);
    let bot_token = app.tokens.local.mint(BOT, "warden", now, 3600);

    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warden_server::serve::serve(listener, app, std::future::pending()));
        let admin = format!("authorization: Bearer {admin_token}");
        for task in ["INC-1", "INC-2"] {
            let body = json!({"id": task, "title": "bench", "trigger": {"source": "siem"}});
            let (status, _, _) = once(addr, &request("POST", "/v1/tasks", &admin, Some(&body))).await;
            assert!(status.contains(" 201"), "{status}");
        }

        println!("MCP front door: {secs} s per run, {conns} keep-alive connections, lab and client in-process");
        println!();
        println!("| run | requests/s | p50 | p99 | cost against its baseline |");
        println!("|---|---|---|---|---|");
        let edr = format!("authorization: Bearer {edr_token}");
        let args = json!({"task": "INC-1", "target": "host:web-43", "confidence": 0.1, "reason": "bench",
                          "rationale": "bench", "evidence": [{"kind": "edr", "ref": "det:1"}]});
        // One MCP session per connection, as each agent process would have.
        let mut mcp_calls = Vec::new();
        for _ in 0..conns {
            let sid = session(addr, "/mcp", &edr).await;
            mcp_calls.push(tool_call("/mcp", &edr, &sid, "host.isolate", args.clone()));
        }
        let mcp_call = mcp_calls[0].clone();
        let v1_body = json!({"task": "INC-1", "action": "host.isolate", "target": "host:web-43", "confidence": 0.1,
                                 "params": {"reason": "bench"}, "rationale": "bench",
                                 "evidence": [{"kind": "edr", "ref": "det:1"}]});
        let v1 = request("POST", "/v1/actions", &edr, Some(&v1_body));
        // What each answers, once: the same outcome both ways.
        let (_, _, b) = once(addr, &mcp_call).await;
        assert_eq!(rpc(&b)["result"]["_meta"]["warden/state"], "advised", "{}", String::from_utf8_lossy(&b));
        let (_, _, b) = once(addr, &v1).await;
        assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["state"], "advised");
        for outcome in ["advise", "deny"] {
            if outcome == "deny" {
                let halt = json!({"scope": "action", "id": "host.isolate", "reason": "bench"});
                let (status, _, _) = once(addr, &request("POST", "/v1/halt", &admin, Some(&halt))).await;
                assert!(status.contains(" 200"), "{status}");
                let (_, _, b) = once(addr, &mcp_call).await;
                assert_eq!(rpc(&b)["result"]["_meta"]["warden/state"], "denied");
            }
            // A B B A: the store grows as the runs go, so each side gets an early and a late run.
            let a1 = run(addr, v1.clone(), secs, conns).await;
            let b1 = run_each(addr, mcp_calls.clone(), secs).await;
            let b2 = run_each(addr, mcp_calls.clone(), secs).await;
            let a2 = run(addr, v1.clone(), secs, conns).await;
            let base = mean(a1, a2);
            let mcp = mean(b1, b2);
            println!("| {outcome}: POST /v1/actions | {:.0} | {:?} | {:?} | 1.00 |", base.rps, base.p50, base.p99);
            println!(
                "| {outcome}: tools/call over /mcp | {:.0} | {:?} | {:?} | **{:.2}×** |",
                mcp.rps,
                mcp.p50,
                mcp.p99,
                base.rps / mcp.rps
            );
        }

        // Upstream proxying: the lab's MCP server direct, then through Warden.
        let lab_auth = format!("authorization: Bearer {}", keys.edr);
        let bot = format!("authorization: Bearer {bot_token}");
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..conns {
            let sid = session(lab, "/edr/mcp", &lab_auth).await;
            let args = json!({"alert_id": "ALRT-1001", "sources": ["bench"]});
            direct.push(tool_call("/edr/mcp", &lab_auth, &sid, "enrich_alert", args));
            let sid = session(addr, "/mcp", &bot).await;
            let args = json!({"alert_id": "ALRT-1001", "sources": ["bench"], "task": "INC-2", "confidence": 0.9});
            through.push(tool_call("/mcp", &bot, &sid, "lab-edr.enrich_alert", args));
        }
        let (_, _, b) = once(lab, &direct[0]).await;
        assert_eq!(rpc(&b)["result"]["structuredContent"]["alert"], "ALRT-1001");
        let (_, _, b) = once(addr, &through[0]).await;
        let answer = rpc(&b);
        assert_eq!(answer["result"]["structuredContent"]["state"], "succeeded", "{answer}");
        let base = run_each(lab, direct, secs).await;
        println!(
            "| upstream direct: tools/call enrich_alert on the lab's MCP server | {:.0} | {:?} | {:?} | 1.00 |",
            base.rps, base.p50, base.p99
        );
        // The enrichment bot's budget is 5,000 executions an hour: one short run stays under it.
        let via = run_each(addr, through, secs.min(3.0)).await;
        println!(
            "| through Warden: tools/call lab-edr.enrich_alert (decided, leased, executed upstream, recorded) | {:.0} | {:?} | {:?} | **{:.2}×** |",
            via.rps,
            via.p50,
            via.p99,
            base.rps / via.rps
        );
    });
}
