//! Bounded under abuse: each bound of docs/operations.md is attacked here — a slowloris, a
//! trickled body, more connections than the cap (from one address and from two), idle
//! kept-alive sockets, an agent opening MCP sessions without end, streams per session and per
//! person, sign-in guessing, and an agent flooding the approval inbox (one at a time and all
//! at once). Each test shows the bound holds *and* that what is below it is untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use warden_server::limits::{Connections, Limits};
use warden_server::state::ServerOptions;
use warden_store::SystemClock;

use crate::{EDR, Harness, example_dir, harness_options};

/// A harness served on a real socket with `limits`; its address.
async fn served(limits: Limits, options: ServerOptions) -> (Harness, std::net::SocketAddr) {
    let h = harness_options(Arc::new(SystemClock), ServerOptions { limits, ..options });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warden_server::serve::serve(listener, h.app.clone(), std::future::pending()));
    (h, addr)
}

fn quick(connections: Connections) -> Limits {
    Limits { agent_rate: 1e6, agent_burst: 1e6, connections, ..Limits::default() }
}

/// Reads until the peer closes (or `within` passes): whatever arrived, and whether it closed.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// One request on a fresh connection, answered in full: (status, body).
async fn request(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    let (raw, _) = read_to_close(&mut s, Duration::from_secs(10)).await;
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[tokio::test]
async fn a_slowloris_is_closed_within_the_header_timeout_and_others_are_served_meanwhile() {
    let bounds = Connections { header_timeout: Duration::from_secs(1), ..Connections::default() };
    let (h, addr) = served(quick(bounds), ServerOptions::default()).await;
    let mut lorises = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        lorises.push(s);
    }
    crate::eventually(|| (h.app.metrics.open_connections() == 50).then_some(())).await;
    // While they hang, a client that says what it wants is answered.
    let (status, _) = request(addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n", "").await;
    assert_eq!(status, 200);
    let started = Instant::now();
    for s in &mut lorises {
        // A byte now and then does not reset the clock: the whole header has the deadline.
        let _ = s.write_all(b"a").await;
        let (_, closed) = read_to_close(s, Duration::from_secs(5)).await;
        assert!(closed, "a half-sent header is cut off");
    }
    assert!(started.elapsed() < Duration::from_secs(4), "closed within seconds, not {:?}", started.elapsed());
    crate::eventually(|| (h.app.metrics.open_connections() == 0).then_some(())).await;
}

#[tokio::test]
async fn a_kept_alive_connection_that_goes_quiet_is_closed() {
    let bounds = Connections { header_timeout: Duration::from_secs(1), ..Connections::default() };
    let (_h, addr) = served(quick(bounds), ServerOptions::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then nothing: closed once the header clock of the next request runs out.
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed && started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_a_prompt_one_is_served() {
    let bounds = Connections { body_timeout: Duration::from_secs(1), ..Connections::default() };
    let (h, addr) = served(quick(bounds), ServerOptions::default()).await;
    let token = h.svid(EDR);
    let body = json!({"id": "INC-1", "title": "t", "trigger": {"source": "edr", "severity": "high"}}).to_string();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // A byte every 300 ms: each arrives well within any per-read timeout, the whole never.
    let trickle = async {
        for b in body.as_bytes()[..20].iter() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let started = Instant::now();
    trickle.await;
    let (raw, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("\"request_timeout\""), "{raw}");
    assert!(closed, "the connection is closed after a body timeout");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(h.app.metrics.refusals("body_timeout") >= 1);
    // Nothing of the trickled request was recorded.
    let (status, _) = h.call("GET", "/v1/tasks/INC-1", Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same request sent at once is served.
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n"
    );
    let (status, answer) = request(addr, &head, &body).await;
    assert_eq!(status, 201, "{answer}");
}

/// A connection from `ip` (a loopback address of its own).
async fn connect_from(ip: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().unwrap())?;
    socket.connect(addr).await
}

#[tokio::test]
async fn connections_past_the_caps_are_refused_with_503_and_freed_slots_are_reused() {
    let bounds = Connections { max_open: 6, max_per_peer: 4, ..Connections::default() };
    let (h, addr) = served(quick(bounds), ServerOptions::default()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", addr).await.unwrap());
    }
    crate::eventually(|| (h.app.metrics.open_connections() == 4).then_some(())).await;
    // A fifth from the same address: refused, with a reason, and closed.
    let mut fifth = connect_from("127.0.0.1", addr).await.unwrap();
    let (raw, closed) = read_to_close(&mut fifth, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 503") && raw.contains("\"overloaded\""), "{raw}");
    assert!(closed);
    assert_eq!(h.app.metrics.refusals("connections_per_peer"), 1);
    // Another address still gets in, up to the total.
    let mut other = Vec::new();
    for _ in 0..2 {
        other.push(connect_from("127.0.0.2", addr).await.unwrap());
    }
    crate::eventually(|| (h.app.metrics.open_connections() == 6).then_some(())).await;
    let mut over = connect_from("127.0.0.3", addr).await.unwrap();
    let (raw, _) = read_to_close(&mut over, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert_eq!(h.app.metrics.refusals("connections"), 1);
    // One closes: its slot serves the next client.
    drop(held.pop());
    crate::eventually(|| (h.app.metrics.open_connections() == 5).then_some(())).await;
    let (status, _) = request(addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n", "").await;
    assert_eq!(status, 200);
    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("warden_refusals_total{cap=\"connections\"} 1\n"), "{metrics}");
    assert!(metrics.contains("warden_refusals_total{cap=\"connections_per_peer\"} 1\n"), "{metrics}");
    assert!(metrics.contains("warden_open_connections 5\n"), "{metrics}");
}

// ---- approvals: human attention is a budget ------------------------------------------------

/// The example bundle with EDR's pending approvals capped at `per_action` per action and `all`
/// over all.
fn capped(per_action: u32, all: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy(&example_dir(), dir.path());
    let file = dir.path().join("agents/edr-responder.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replacen(
        "approval_expiry = \"10m\"",
        &format!("approval_expiry = \"10m\"\nmax_pending = {all}\nmax_pending_per_action = {per_action}"),
        1,
    );
    std::fs::write(file, text).unwrap();
    dir
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
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

fn capped_harness(per_action: u32, all: u32) -> (Harness, tempfile::TempDir) {
    capped_harness_at(per_action, all, Arc::new(SystemClock))
}

fn capped_harness_at(per_action: u32, all: u32, clock: Arc<dyn warden_store::Clock>) -> (Harness, tempfile::TempDir) {
    let dir = capped(per_action, all);
    let h = harness_options(
        clock,
        ServerOptions {
            policy_dir: Some(dir.path().to_path_buf()),
            limits: quick(Connections::default()),
            ..Default::default()
        },
    );
    (h, dir)
}

async fn open_task(h: &Harness, token: &str, id: &str) {
    let body = json!({"id": id, "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    let (status, answer) = h.call("POST", "/v1/tasks", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

fn kill(pid: u64) -> Value {
    json!({"task": "INC-9", "action": "process.kill", "target": "host:web-42", "confidence": 0.8,
           "params": {"pid": pid}, "rationale": "malware", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

fn isolate(host: &str) -> Value {
    json!({"task": "INC-9", "action": "host.isolate", "target": host, "confidence": 0.8,
           "params": {"reason": "beacon"}, "rationale": "beacon", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

fn log_types(h: &Harness) -> Vec<String> {
    let store = h.app.ledger().store();
    store
        .entries(0, 100_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.bytes).unwrap()["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_approval_cap_refuses_the_request_after_it_and_nothing_before_it() {
    let clock = Arc::new(warden_store::ManualClock::new(time::OffsetDateTime::now_utc()));
    let (h, _dir) = capped_harness_at(3, 50, clock.clone());
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    for pid in 1..=3 {
        let (status, answer) = h.call("POST", "/v1/actions", Some(&token), Some(kill(pid))).await;
        assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{answer}");
    }
    let before = h.app.ledger().store().size().unwrap();
    let (status, e) = h.call("POST", "/v1/actions", Some(&token), Some(kill(4))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(e["error"]["code"], "approval_backlog");
    assert_eq!(e["error"]["details"], json!({"cap": "max_pending_per_action", "max": 3, "pending": 3}));
    // Refused, recorded as refused, and nothing queued: the inbox still holds three.
    let (_, inbox) = h.call("GET", "/v1/approvals", Some(&h.admin), None).await;
    assert_eq!(inbox.as_array().unwrap().len(), 3, "{inbox}");
    let types = log_types(&h);
    assert_eq!(types.iter().filter(|t| *t == "approval.refused").count(), 1);
    assert_eq!(types.iter().filter(|t| *t == "breaker.tripped").count(), 1, "the breaker trips once");
    assert!(!types[before as usize..].contains(&"action.requested".to_string()), "no request was recorded");
    // More of the flood: refused again, but the owners already know — no second trip.
    for pid in 5..=9 {
        let (status, e) = h.call("POST", "/v1/actions", Some(&token), Some(kill(pid))).await;
        assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("approval_backlog")));
    }
    let types = log_types(&h);
    assert_eq!(types.iter().filter(|t| *t == "breaker.tripped").count(), 1, "notified once, not per request");
    // Every refusal is counted; the log takes the first, then one a minute standing for the
    // rest (`count`), so the flood cannot grow it.
    assert_eq!(types.iter().filter(|t| *t == "approval.refused").count(), 1);
    assert_eq!(h.app.metrics.refusals("approval_backlog"), 6);
    clock.advance(time::Duration::seconds(61));
    let (status, _) = h.call("POST", "/v1/actions", Some(&token), Some(kill(11))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let refused: Vec<Value> = h
        .app
        .ledger()
        .store()
        .entries(0, 100_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.bytes).unwrap())
        .filter(|e| e["type"] == "approval.refused")
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!((refused[0]["data"]["count"].as_u64(), refused[1]["data"]["count"].as_u64()), (Some(1), Some(6)));
    // The same action again (same digest) folds into its approval: never refused.
    let (status, answer) = h.call("POST", "/v1/actions", Some(&token), Some(kill(2))).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{answer}");
    // Another action has its own cap; a human answering one frees a place.
    let (status, answer) = h.call("POST", "/v1/actions", Some(&token), Some(isolate("host:db-payments-01"))).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{answer}");
    let analyst = h.user("ana", &["soc-analyst"]);
    let first = inbox[0]["id"].as_str().unwrap();
    let (status, _) =
        h.call("POST", &format!("/v1/approvals/{first}/reject"), Some(&analyst), Some(json!({"reason": "no"}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = h.call("POST", "/v1/actions", Some(&token), Some(kill(10))).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{answer}");
}

#[tokio::test]
async fn racing_requests_cannot_pass_the_cap_together() {
    let (h, _dir) = capped_harness(4, 50);
    let h = Arc::new(h);
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    let tasks: Vec<_> = (0..24)
        .map(|pid| {
            let (h, token) = (h.clone(), token.clone());
            tokio::spawn(async move { h.call("POST", "/v1/actions", Some(&token), Some(kill(100 + pid))).await })
        })
        .collect();
    let mut pending = 0;
    for t in tasks {
        let (status, answer) = t.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(answer["state"], "pending_approval");
                pending += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(answer["error"]["code"], "approval_backlog"),
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(pending, 4, "exactly the cap got in");
    let (_, inbox) = h.call("GET", "/v1/approvals", Some(&h.admin), None).await;
    assert_eq!(inbox.as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn the_agent_wide_cap_counts_every_action() {
    let (h, _dir) = capped_harness(10, 3);
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    for body in [kill(1), kill(2), isolate("host:db-payments-01")] {
        let (status, answer) = h.call("POST", "/v1/actions", Some(&token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, e) = h.call("POST", "/v1/actions", Some(&token), Some(isolate("host:db-payments-02"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(e["error"]["details"]["cap"], "max_pending");
    // The metric shows the backlog by agent.
    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains(&format!("warden_pending_approvals_by_agent{{agent=\"{EDR}\"}} 3\n")), "{metrics}");
    assert!(metrics.contains("warden_refusals_total{cap=\"approval_backlog\"} 1\n"), "{metrics}");
}

#[tokio::test]
async fn the_inbox_groups_a_flood_so_one_request_cannot_hide_in_it() {
    let (h, _dir) = capped_harness(20, 50);
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    for pid in 1..=12 {
        let (status, _) = h.call("POST", "/v1/actions", Some(&token), Some(kill(pid))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // The one that matters, after the flood.
    let (status, _) = h.call("POST", "/v1/actions", Some(&token), Some(isolate("host:db-payments-01"))).await;
    assert_eq!(status, StatusCode::OK);
    let backlogs = warden_server::approvals::backlogs(h.app.ledger().store().as_ref(), None).unwrap();
    let lines: Vec<(String, usize)> = backlogs.iter().map(|b| (b.action.clone(), b.pending)).collect();
    assert_eq!(lines, [("process.kill".to_string(), 12), ("host.isolate".to_string(), 1)]);
    assert_eq!(backlogs[0].targets, ["host:web-42"]);
    assert_eq!(backlogs[0].agent_pending, 13);
}

// ---- MCP sessions ---------------------------------------------------------------------------

fn mcp_harness(sessions: warden_server::limits::McpSessions) -> Harness {
    let mcp = warden_server::limits::McpOptions { sessions, ..Default::default() };
    harness_options(
        Arc::new(SystemClock),
        ServerOptions { mcp, limits: quick(Connections::default()), ..Default::default() },
    )
}

async fn list_tools(h: &Harness, token: &str, sid: &str) -> StatusCode {
    let (status, _, _) =
        crate::stranger::mcp(h, token, Some(sid), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    status
}

/// A standalone stream (`GET /mcp`) on `sid`, left open: the answer, its body unread.
async fn open_stream(h: &Harness, token: &str, sid: &str) -> axum::response::Response {
    use tower::ServiceExt as _;
    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/mcp")
        .header("host", "127.0.0.1")
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(axum::body::Body::empty())
        .unwrap();
    h.router.clone().oneshot(req).await.unwrap()
}

async fn initialize(h: &Harness, token: &str) -> (StatusCode, Value) {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "flood", "version": "1"}}});
    let (status, _, v) = crate::stranger::mcp(h, token, None, init).await;
    (status, v)
}

#[tokio::test]
async fn an_agent_past_its_session_cap_reclaims_its_oldest_idle_session() {
    use warden_server::limits::McpSessions;
    let h = mcp_harness(McpSessions { per_agent: 2, ..McpSessions::default() });
    let edr = h.svid(EDR);
    let first = crate::stranger::mcp_session(&h, &edr).await;
    let second = crate::stranger::mcp_session(&h, &edr).await;
    assert_eq!(list_tools(&h, &edr, &first).await, StatusCode::OK);
    // `first` was used last: `second` is now the oldest idle one, and goes.
    let third = crate::stranger::mcp_session(&h, &edr).await;
    assert_eq!(list_tools(&h, &edr, &second).await, StatusCode::NOT_FOUND, "reclaimed");
    assert_eq!(list_tools(&h, &edr, &first).await, StatusCode::OK);
    assert_eq!(list_tools(&h, &edr, &third).await, StatusCode::OK);
    assert_eq!(h.app.metrics.sessions("mcp"), 2);
    // Ten thousand `initialize` would hold two sessions, never more.
    for _ in 0..20 {
        let (status, v) = initialize(&h, &edr).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    assert_eq!(h.app.metrics.sessions("mcp"), 2);
    assert!(h.app.metrics.refusals("mcp_sessions_reclaimed") >= 21);
    // Another agent's sessions are its own to count.
    let phish = h.svid(crate::PHISH);
    crate::stranger::mcp_session(&h, &phish).await;
    assert_eq!(h.app.metrics.sessions("mcp"), 3);
}

#[tokio::test]
async fn when_every_session_is_busy_one_more_is_refused_naming_the_cap() {
    use warden_server::limits::McpSessions;
    let h = mcp_harness(McpSessions { per_agent: 2, ..McpSessions::default() });
    let edr = h.svid(EDR);
    let a = crate::stranger::mcp_session(&h, &edr).await;
    let b = crate::stranger::mcp_session(&h, &edr).await;
    let stream_a = open_stream(&h, &edr, &a).await;
    let stream_b = open_stream(&h, &edr, &b).await;
    assert_eq!((stream_a.status(), stream_b.status()), (StatusCode::OK, StatusCode::OK));
    let (status, e) = initialize(&h, &edr).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(e["error"]["code"], "too_many_sessions");
    assert!(e["error"]["message"].as_str().unwrap().contains("holds 2 MCP sessions"), "{e}");
    assert_eq!(list_tools(&h, &edr, &a).await, StatusCode::OK, "nothing was reclaimed");
    // The stream on `a` ends: `a` is idle again and may be reclaimed.
    drop(stream_a);
    let (status, v) = initialize(&h, &edr).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(list_tools(&h, &edr, &a).await, StatusCode::NOT_FOUND);
    drop(stream_b);
}

#[tokio::test]
async fn standalone_streams_per_session_are_capped() {
    use warden_server::limits::McpSessions;
    let h = mcp_harness(McpSessions { streams_per_session: 1, ..McpSessions::default() });
    let edr = h.svid(EDR);
    let sid = crate::stranger::mcp_session(&h, &edr).await;
    let first = open_stream(&h, &edr, &sid).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = open_stream(&h, &edr, &sid).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    drop((first, second));
    let third = open_stream(&h, &edr, &sid).await;
    assert_eq!(third.status(), StatusCode::OK, "a closed stream frees its place");
}

#[tokio::test]
async fn an_idle_session_expires() {
    use warden_server::limits::McpSessions;
    let h = mcp_harness(McpSessions { idle: Duration::from_millis(300), ..McpSessions::default() });
    let edr = h.svid(EDR);
    let sid = crate::stranger::mcp_session(&h, &edr).await;
    assert_eq!(list_tools(&h, &edr, &sid).await, StatusCode::OK);
    crate::eventually(|| (h.app.metrics.sessions("mcp") == 0).then_some(())).await;
    assert_eq!(list_tools(&h, &edr, &sid).await, StatusCode::NOT_FOUND, "expired: the client opens a new one");
    crate::stranger::mcp_session(&h, &edr).await;
}

// ---- console ----------------------------------------------------------------------------------

#[tokio::test]
async fn the_inbox_shows_a_flood_as_one_line_and_warns_on_its_cards() {
    let (h, _dir) = capped_harness(20, 50);
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    for pid in 1..=12 {
        let (status, _) = h.call("POST", "/v1/actions", Some(&token), Some(kill(pid))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = h.call("POST", "/v1/actions", Some(&token), Some(isolate("host:db-payments-01"))).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = crate::console::sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let page = crate::console::get(&h, "/console/inbox", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    let line = format!(
        "<code>{EDR}</code>: 12 pending <code>process.kill</code> on host:web-42</a> — <strong>may be flooding</strong>"
    );
    assert!(page.body.contains(&line), "{}", page.body);
    assert!(
        page.body.contains(&format!(
            "<code>{EDR}</code>: 1 pending <code>host.isolate</code> on host:db-payments-01</a></li>"
        )),
        "the lone request has its own line"
    );
    assert!(page.body.contains("it may be flooding the inbox"), "a card of the flood says so");
    // The line's link narrows the inbox to that agent × action.
    let narrowed = crate::console::get(
        &h,
        "/console/inbox?agent=spiffe%3A%2F%2Facme.example%2Fsoc%2Fedr-responder&action=host.isolate",
        Some(&cookie),
    )
    .await;
    assert_eq!(narrowed.body.matches("class=\"card\"").count(), 1, "{}", narrowed.body);
    assert!(narrowed.body.contains("host:db-payments-01"));
}

#[tokio::test]
async fn event_streams_are_capped_per_sign_in_and_per_person() {
    let bounds =
        warden_server::limits::ConsoleBounds { streams_per_session: 2, streams_per_user: 3, ..Default::default() };
    let h = harness_options(
        Arc::new(SystemClock),
        ServerOptions { limits: Limits { console: bounds, ..quick(Connections::default()) }, ..Default::default() },
    );
    let token = h.user("ana", &["soc-analyst"]);
    let (one, two) = (crate::console::sign_in(&h, &token).await, crate::console::sign_in(&h, &token).await);
    let open = |cookie: String| {
        let router = h.router.clone();
        async move {
            use tower::ServiceExt as _;
            let req = axum::http::Request::builder()
                .uri("/console/events")
                .header("host", "warden.test")
                .header("cookie", cookie)
                .body(axum::body::Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap()
        }
    };
    let a = open(one.clone()).await;
    let b = open(one.clone()).await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open(one.clone()).await;
    assert_eq!(c.status(), StatusCode::TOO_MANY_REQUESTS, "a third tab of one sign-in");
    let d = open(two.clone()).await;
    assert_eq!(d.status(), StatusCode::OK, "another sign-in of the same person");
    let e = open(two.clone()).await;
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS, "the person's cap over sign-ins");
    assert_eq!(h.app.metrics.sessions("console_events"), 3);
    drop((a, b, c, d, e));
    crate::eventually(|| (h.app.metrics.sessions("console_events") == 0).then_some(())).await;
    assert_eq!(open(one).await.status(), StatusCode::OK, "closed streams free their places");
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let (h, addr) = served(quick(Connections::default()), ServerOptions::default()).await;
    let good = h.user("ana", &["soc-analyst"]);
    let attempt = |token: String| async move {
        let form = serde_urlencoded::to_string([("token", token)]).unwrap();
        let head = format!(
            "POST /console/sign-in HTTP/1.1\r\nhost: {addr}\r\norigin: http://{addr}\r\ncontent-type: application/x-www-form-urlencoded\r\n"
        );
        request(addr, &head, &form).await.0
    };
    for i in 0..10 {
        assert_eq!(attempt(format!("wdn_guess{i}")).await, 401, "guess {i} is judged");
    }
    // The eleventh from this address is refused before its token is looked at — even a good one.
    assert_eq!(attempt("wdn_guess10".into()).await, 429);
    assert_eq!(attempt(good).await, 429);
    assert!(h.app.metrics.refusals("sign_in_attempts") >= 2);
}

// ---- what the independent attack found (issue 24) ----------------------------------------------

/// A connection that announces a body and sends none: it holds a socket until the body
/// timeout, never one of the permits everyone else needs.
async fn stalled_body(addr: std::net::SocketAddr, path: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: http://127.0.0.1\r\n{extra}content-length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn stalled_bodies_hold_no_permit_on_any_door() {
    let limits = Limits { in_flight: 4, ..quick(Connections::default()) };
    let (h, addr) = served(limits, ServerOptions::default()).await;
    let token = h.svid(EDR);
    let mut held = Vec::new();
    // No credentials needed for the first two; the third is an agent's own session.
    for _ in 0..8 {
        held.push(
            stalled_body(
                addr,
                "/v1/integrations/slack/interactions",
                "content-type: application/x-www-form-urlencoded\r\n",
            )
            .await,
        );
    }
    for _ in 0..70 {
        held.push(stalled_body(addr, "/console/sign-in", "content-type: application/x-www-form-urlencoded\r\n").await);
    }
    let mcp = format!(
        "authorization: Bearer {token}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\n"
    );
    for _ in 0..8 {
        held.push(stalled_body(addr, "/mcp", &mcp).await);
    }
    crate::eventually(|| (h.app.metrics.open_connections() >= 86).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every door still answers someone else.
    let body = json!({"id": "INC-1", "title": "t", "trigger": {"source": "edr", "severity": "high"}}).to_string();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n"
    );
    assert_eq!(request(addr, &head, &body).await.0, 201);
    assert_eq!(request(addr, "GET /readyz HTTP/1.1\r\nhost: x\r\n", "").await.0, 200);
    assert_eq!(request(addr, "GET /console/sign-in HTTP/1.1\r\nhost: x\r\n", "").await.0, 200);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let head = format!("POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{mcp}");
    assert_eq!(request(addr, &head, &init).await.0, 200);
    assert_eq!(h.app.metrics.refusals("in_flight_v1") + h.app.metrics.refusals("in_flight_mcp"), 0);
    assert_eq!(h.app.metrics.refusals("in_flight_console"), 0);
    drop(held);
}

#[tokio::test]
async fn an_answer_nobody_reads_ends_its_connection_at_the_write_timeout() {
    let bounds = Connections { write_timeout: Duration::from_secs(1), ..Connections::default() };
    let (h, addr) = served(quick(bounds), ServerOptions::default()).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    // Ask for the 100 KB document 400 times over, pipelined, and read nothing.
    let ask = "GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(400);
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(ask.as_bytes())).await;
    crate::eventually(|| (h.app.metrics.open_connections() == 0).then_some(())).await;
    drop(s);
}

#[tokio::test]
async fn long_polls_are_capped_per_caller_and_in_all_and_the_rest_answer_at_once() {
    let limits = Limits { in_flight: 8, ..quick(Connections::default()) };
    let (h, _dir) = {
        let dir = capped(20, 50);
        let h = harness_options(
            Arc::new(SystemClock),
            ServerOptions { policy_dir: Some(dir.path().to_path_buf()), limits, ..Default::default() },
        );
        (Arc::new(h), dir)
    };
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    let (_, pending) = h.call("POST", "/v1/actions", Some(&token), Some(kill(1))).await;
    let id = pending["id"].as_str().unwrap().to_string();
    let path = format!("/v1/actions/{id}?wait=60s");
    // Half the permits (4) may wait; they do.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (h, token, path) = (h.clone(), token.clone(), path.clone());
            tokio::spawn(async move { h.call("GET", &path, Some(&token), None).await })
        })
        .collect();
    crate::eventually(|| (h.app.held.held("longpoll:all") == 4).then_some(())).await;
    // The fifth answers at once with the state now.
    let started = Instant::now();
    let (status, answer) = h.call("GET", &path, Some(&token), None).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(h.app.metrics.refusals("long_polls"), 1);
    // And the permits left serve everyone else.
    let (status, _) = h.call("GET", "/v1/tasks/INC-9", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn audit_downloads_are_capped_per_person() {
    let (h, _dir) = capped_harness(20, 50);
    let token = h.svid(EDR);
    open_task(&h, &token, "INC-9").await;
    h.call("POST", "/v1/actions", Some(&token), Some(kill(1))).await;
    let cookie = crate::console::sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let open = || {
        let (router, cookie) = (h.router.clone(), cookie.clone());
        async move {
            use tower::ServiceExt as _;
            let req = axum::http::Request::builder()
                .uri("/console/audit/ocsf.jsonl")
                .header("host", "warden.test")
                .header("cookie", cookie)
                .body(axum::body::Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap()
        }
    };
    let (a, b) = (open().await, open().await);
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open().await;
    assert_eq!(c.status(), StatusCode::TOO_MANY_REQUESTS, "a third download of one person while two run");
    drop((a, b));
    let d = open().await;
    assert_eq!(d.status(), StatusCode::OK, "a finished (or abandoned) download frees its place");
    use http_body_util::BodyExt as _;
    let text = String::from_utf8(d.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.lines().count() >= 2, "the request and its decision: {text}");
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{text}");
}
