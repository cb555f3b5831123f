//! The console in-process: sessions, CSRF, the security headers, escaping, and the same rules
//! as the API behind every button. (Chromium drives the same pages in `tests/console/`.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use warden_server::notify::NotifyOptions;
use warden_store::ManualClock;

use crate::{EDR, Harness, harness_with};

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

pub(crate) async fn send(h: &Harness, req: Request<Body>) -> Page {
    let res = h.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Page { status, headers, body: String::from_utf8_lossy(&bytes).into() }
}

pub(crate) async fn get(h: &Harness, path: &str, cookie: Option<&str>) -> Page {
    let mut req = Request::builder().uri(path).header("host", "warden.test");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    send(h, req.body(Body::empty()).unwrap()).await
}

pub(crate) async fn post(h: &Harness, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    post_from(h, path, cookie, form, Some("http://warden.test")).await
}

async fn post_from(h: &Harness, path: &str, cookie: Option<&str>, form: &[(&str, &str)], origin: Option<&str>) -> Page {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "warden.test")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    send(h, req.body(Body::from(body)).unwrap()).await
}

/// Signs in with `token`; the cookie (`name=value`) to send back.
pub(crate) async fn sign_in(h: &Harness, token: &str) -> String {
    let p = post(h, "/console/sign-in", None, &[("token", token)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let set = p.headers["set-cookie"].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// The CSRF token the page's forms carry.
pub(crate) fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

fn clocked() -> (Harness, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    (harness_with(None, clock.clone(), NotifyOptions::default()), clock)
}

/// EDR asks to isolate the payments database (an approval, quorum 1), with what an attacker
/// controlling the agent might write.
async fn pending_isolation(h: &Harness, rationale: &str, summary: &str) -> (String, String) {
    let agent = h.svid(EDR);
    let task = json!({"id": "INC-9", "title": "<b>bold</b> task \"title\"", "trigger": {"source": "<svg onload=alert(3)>", "severity": "high"}});
    let (status, _) = h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await;
    assert_eq!(status, StatusCode::CREATED);
    let body = json!({"task": "INC-9", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "<script>alert('p')</script>"}, "rationale": rationale,
        "evidence": [{"kind": "edr", "ref": "det:<i>9</i>", "summary": summary}]});
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    assert_eq!((status, a["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{a}");
    (a["decision"]["approval"]["id"].as_str().unwrap().to_string(), a["id"].as_str().unwrap().to_string())
}

async fn approval_state(h: &Harness, id: &str) -> String {
    let (_, a) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    a["state"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_token_becomes_a_strict_cookie_and_agents_cannot_sign_in() {
    let (h, _) = clocked();
    let ana = h.user("ana", &["soc-analyst"]);
    let p = post(&h, "/console/sign-in", None, &[("token", &ana)]).await;
    assert_eq!((p.status, p.headers["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/console/inbox"));
    let set = p.headers["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "not over plain HTTP: {set}");
    assert!(!set.contains(&ana), "the cookie is not the token");
    assert_eq!(h.app.sessions.count(h.app.ledger().store().as_ref()).unwrap(), 1);
    // An agent's JWT-SVID: refused, no cookie, no session.
    let p = post(&h, "/console/sign-in", None, &[("token", &h.svid(EDR))]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("Agents cannot sign in") && p.headers.get("set-cookie").is_none());
    for bad in ["wdn_nothing", "", "eyJhbGciOiJub25lIn0.e30."] {
        let p = post(&h, "/console/sign-in", None, &[("token", bad)]).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(p.headers.get("set-cookie").is_none());
    }
    assert_eq!(h.app.sessions.count(h.app.ledger().store().as_ref()).unwrap(), 1);
}

#[tokio::test]
async fn sessions_and_bearer_tokens_never_stand_in_for_each_other() {
    let (h, _) = clocked();
    let ana = h.user("ana", &["soc-analyst"]);
    let cookie = sign_in(&h, &ana).await;
    let secret = cookie.split_once('=').unwrap().1;
    // The session secret as an API bearer token: refused.
    let (status, e) = h.call("GET", "/v1/approvals", Some(secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    // The API token as the cookie, or as a bearer header on the console: sign in first.
    let p = get(&h, "/console/inbox", Some(&format!("warden_session={ana}"))).await;
    assert_eq!((p.status, p.headers["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/console/sign-in"));
    let req = Request::builder().uri("/console/inbox").header("authorization", format!("Bearer {ana}"));
    let p = send(&h, req.body(Body::empty()).unwrap()).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    // The session works where it belongs.
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sessions_end_on_sign_out_idleness_and_age() {
    let (h, clock) = clocked();
    let ana = h.user("ana", &["soc-analyst"]);
    let cookie = sign_in(&h, &ana).await;
    let page = get(&h, "/console/inbox", Some(&cookie)).await.body;
    // Sign-out needs the form token too (a cross-site sign-out is a nuisance, not a right).
    assert_eq!(post(&h, "/console/sign-out", Some(&cookie), &[]).await.status, StatusCode::FORBIDDEN);
    let p = post(&h, "/console/sign-out", Some(&cookie), &[("csrf", &csrf(&page))]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(p.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::SEE_OTHER, "revoked server-side");
    // Idle: 29 minutes apart is fine, 30 is not.
    let cookie = sign_in(&h, &ana).await;
    clock.advance(time::Duration::minutes(29));
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::OK);
    clock.advance(time::Duration::minutes(30));
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::SEE_OTHER);
    // Absolute: busy all day, still signed out after 12 hours.
    let cookie = sign_in(&h, &ana).await;
    for _ in 0..24 {
        clock.advance(time::Duration::minutes(29));
        assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::OK);
    }
    clock.advance(time::Duration::minutes(29));
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_page_carries_a_strict_policy() {
    let (h, _) = clocked();
    let cookie = sign_in(&h, &h.admin.clone()).await;
    let (_, request) = pending_isolation(&h, "r", "s").await;
    for path in [
        "/console/sign-in".to_string(),
        "/console/inbox".into(),
        "/console/activity".into(),
        format!("/console/actions/{request}"),
        "/console/agents".into(),
        "/console/audit".into(),
        "/console/policy".into(),
        "/console/reports".into(),
        "/console/actions/act_none".into(),
    ] {
        let p = get(&h, &path, Some(&cookie)).await;
        let csp = p.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(p.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(p.headers["x-frame-options"], "DENY");
        assert!(
            !p.body.contains("<script>") && !p.body.contains(" onclick=") && !p.body.contains("style="),
            "{path}: no inline script or style"
        );
        if path.ends_with("act_none") {
            assert_eq!(p.status, StatusCode::NOT_FOUND);
            assert!(p.body.contains("unknown_action"));
        } else {
            assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        }
    }
}

#[tokio::test]
async fn what_an_agent_wrote_renders_inert() {
    let (h, _) = clocked();
    let cookie = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let (_, request) =
        pending_isolation(&h, "<script>alert(1)</script> \"quoted\" 'single'", "<img src=x onerror=alert(2)>").await;
    for path in ["/console/inbox".to_string(), format!("/console/actions/{request}"), "/console/activity".into()] {
        let body = get(&h, &path, Some(&cookie)).await.body;
        for raw in ["<script>alert", "<img src=x", "<svg onload", "<b>bold</b>", "<i>9</i>"] {
            assert!(!body.contains(raw), "{path} renders `{raw}` as markup");
        }
        if path == "/console/inbox" {
            for escaped in [
                "&#60;script&#62;alert(1)&#60;/script&#62;",
                "&#60;img src=x onerror=alert(2)&#62;",
                "&#60;b&#62;bold&#60;/b&#62;",
            ] {
                assert!(body.contains(escaped), "{path} shows `{escaped}` as text");
            }
        }
    }
}

#[tokio::test]
async fn forms_need_the_sessions_token_and_this_site() {
    let (h, _) = clocked();
    let ana = h.user("ana", &["soc-analyst"]);
    let bo = h.user("bo", &["soc-analyst"]);
    let (id, _) = pending_isolation(&h, "r", "s").await;
    let cookie = sign_in(&h, &ana).await;
    let other = sign_in(&h, &bo).await;
    let theirs = csrf(&get(&h, "/console/inbox", Some(&other)).await.body);
    let mine = csrf(&get(&h, "/console/inbox", Some(&cookie)).await.body);
    let path = format!("/console/approvals/{id}/approve");
    for form in [vec![], vec![("csrf", "")], vec![("csrf", theirs.as_str())], vec![("csrf", "x")]] {
        let p = post(&h, &path, Some(&cookie), &form).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(p.body.contains("csrf_rejected"));
    }
    for origin in ["https://evil.example", "null", "http://warden.test.evil.example"] {
        let p = post_from(&h, &path, Some(&cookie), &[("csrf", &mine)], Some(origin)).await;
        assert_eq!((p.status, p.body.contains("cross_site")), (StatusCode::FORBIDDEN, true), "{origin}");
    }
    // Where the browser says where the form came from, only this origin passes (a sibling
    // subdomain is `same-site`), whatever the Origin header claims.
    for site in ["cross-site", "same-site", "none"] {
        let req = Request::builder()
            .method("POST")
            .uri(&path)
            .header("host", "warden.test")
            .header("origin", "http://warden.test")
            .header("sec-fetch-site", site)
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={mine}")))
            .unwrap();
        assert_eq!(send(&h, req).await.status, StatusCode::FORBIDDEN, "{site}");
    }
    assert_eq!(approval_state(&h, &id).await, "pending", "nothing was decided");
    // Without a session at all: sign in first.
    assert_eq!(post(&h, &path, None, &[("csrf", &mine)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(approval_state(&h, &id).await, "pending");
    // The right token from this site decides.
    let p = post(&h, &path, Some(&cookie), &[("csrf", &mine), ("reason", "confirmed")]).await;
    assert_eq!(
        (p.status, p.headers["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/console/inbox?done=executed")
    );
    assert_eq!(approval_state(&h, &id).await, "approved");
}

#[tokio::test]
async fn a_button_i_may_not_press_is_not_offered_and_is_refused_anyway() {
    let (h, _) = clocked();
    let (id, _) = pending_isolation(&h, "r", "s").await;
    // The agent's owner (separation of duties) and someone without an approver role.
    let owner = h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    let intern = h.user("ivy", &["intern"]);
    for (token, why) in [(&owner, "separation of duties"), (&intern, "approving needs one of the roles")] {
        let cookie = sign_in(&h, token).await;
        let page = get(&h, "/console/inbox?all=1", Some(&cookie)).await.body;
        assert!(page.contains(&id), "the approval is listed");
        assert!(!page.contains(&format!("/console/approvals/{id}/approve")), "no approve button");
        assert!(!page.contains(&format!("/console/approvals/{id}/reject")), "no reject button");
        assert!(page.contains("You cannot approve"), "{why}");
        let token = csrf(&page);
        let p = post(&h, &format!("/console/approvals/{id}/approve"), Some(&cookie), &[("csrf", &token)]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        let p =
            post(&h, &format!("/console/approvals/{id}/reject"), Some(&cookie), &[("csrf", &token), ("reason", "x")])
                .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
    }
    // My inbox: only what I hold a role for.
    let cookie = sign_in(&h, &intern).await;
    assert!(!get(&h, "/console/inbox", Some(&cookie)).await.body.contains(&id));
    assert_eq!(approval_state(&h, &id).await, "pending");
    // A rejection needs a reason, here as in the API.
    let ana = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let token = csrf(&get(&h, "/console/inbox", Some(&ana)).await.body);
    let p =
        post(&h, &format!("/console/approvals/{id}/reject"), Some(&ana), &[("csrf", &token), ("reason", " ")]).await;
    assert_eq!((p.status, p.body.contains("reason_required")), (StatusCode::UNPROCESSABLE_ENTITY, true));
    assert_eq!(approval_state(&h, &id).await, "pending");
}

#[tokio::test]
async fn the_emergency_stop_needs_a_confirmation_and_then_shows_on_every_page() {
    let (h, _) = clocked();
    let ic = sign_in(&h, &h.user("ivan", &["incident-commander"])).await;
    let token = csrf(&get(&h, "/console/agents", Some(&ic)).await.body);
    let p = post(&h, "/console/halt", Some(&ic), &[("csrf", &token), ("scope", "all"), ("reason", "ransomware")]).await;
    assert_eq!((p.status, p.body.contains("invalid_halt")), (StatusCode::UNPROCESSABLE_ENTITY, true));
    let (_, halts) = h.call("GET", "/v1/halts", Some(&h.admin), None).await;
    assert_eq!(halts, json!([]), "nothing halted without the confirmation");
    let form =
        [("csrf", token.as_str()), ("scope", "all"), ("reason", "ransomware <b>spreading</b>"), ("confirm", "yes")];
    assert_eq!(post(&h, "/console/halt", Some(&ic), &form).await.status, StatusCode::SEE_OTHER);
    let (_, halts) = h.call("GET", "/v1/halts", Some(&h.admin), None).await;
    assert_eq!(halts.as_array().unwrap().len(), 1);
    for path in ["/console/inbox", "/console/activity", "/console/agents", "/console/audit", "/console/policy"] {
        let body = get(&h, path, Some(&ic)).await.body;
        assert!(body.contains("Emergency stop in force"), "{path}");
        assert!(body.contains("ransomware &#60;b&#62;spreading&#60;/b&#62;"), "{path}");
    }
    // An agent's request is now denied; resuming is for admins only.
    let (_, a) = h
        .call(
            "POST",
            "/v1/tasks",
            Some(&h.svid(EDR)),
            Some(json!({"id": "T", "title": "t", "trigger": {"source": "edr"}})),
        )
        .await;
    assert!(a.is_object());
    let p = post(&h, "/console/resume", Some(&ic), &[("csrf", &token), ("reason", "contained")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let admin = sign_in(&h, &h.admin.clone()).await;
    let t = csrf(&get(&h, "/console/agents", Some(&admin)).await.body);
    assert_eq!(
        post(&h, "/console/resume", Some(&admin), &[("csrf", &t), ("reason", "contained")]).await.status,
        StatusCode::SEE_OTHER
    );
    assert!(!get(&h, "/console/agents", Some(&admin)).await.body.contains("Emergency stop in force"));
}

#[tokio::test]
async fn the_audit_page_verifies_and_exports() {
    let (h, _) = clocked();
    let cookie = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    pending_isolation(&h, "r", "s").await;
    let token = csrf(&get(&h, "/console/audit", Some(&cookie)).await.body);
    let p = post(&h, "/console/audit/verify", Some(&cookie), &[("csrf", &token)]).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("verified:"), "{}", p.body);
    let p = get(&h, "/console/audit/ocsf.jsonl", Some(&cookie)).await;
    assert_eq!(p.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = p.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2 && lines.iter().all(|l| l["class_uid"].is_number()), "{}", p.body);
    // A log longer than one chunk of the stream (interleaved with entries OCSF has no class
    // for): every classed entry, once, in order.
    use warden_core::audit::entry::{Actor, Event, EventType};
    let mut batch = warden_store::Batch::new();
    for i in 0..2500 {
        let e = Event::new(EventType::ActionRequested, Actor::agent(EDR)).task("INC-9").action("host.isolate");
        batch = batch.event(e.request(format!("act_{i}")).data(json!({"n": i})));
    }
    h.app.ledger().commit(batch).unwrap();
    let store = h.app.ledger().store();
    let product = warden_core::audit::ocsf::Product { version: env!("CARGO_PKG_VERSION").to_string() };
    let expected: Vec<u64> = store
        .entries(0, 10_000)
        .unwrap()
        .iter()
        .filter_map(|e| {
            let entry: warden_core::audit::entry::Entry = serde_json::from_slice(&e.bytes).unwrap();
            warden_core::audit::ocsf::event(&entry, &product).map(|_| e.seq)
        })
        .collect();
    assert!(expected.len() > 2000, "the stream spans several chunks ({})", expected.len());
    let body = get(&h, "/console/audit/ocsf.jsonl", Some(&cookie)).await.body;
    let seqs: Vec<u64> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["metadata"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, expected);
    // Tampering with a stored entry is found and named.
    crate::raw_sql(
        &h,
        "UPDATE audit_entries SET bytes = CAST('{}' AS BLOB) WHERE seq = 1",
        "UPDATE audit_entries SET bytes = '{}'::bytea WHERE seq = 1",
    );
    let p = post(&h, "/console/audit/verify", Some(&cookie), &[("csrf", &token)]).await;
    assert!(p.body.contains("does not verify") && p.body.contains("entry 1"), "{}", p.body);
}

#[tokio::test]
async fn the_event_stream_says_when_something_was_recorded() {
    let (h, _) = clocked();
    let cookie = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let req = Request::builder().uri("/console/events").header("cookie", &cookie).body(Body::empty()).unwrap();
    let res = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    // Nothing recorded yet: no event within a second.
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(1200), body.frame()).await;
    assert!(quiet.is_err(), "no event while nothing happens");
    pending_isolation(&h, "r", "s").await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("event: change\ndata: "), "{text}");
    // Without a session, no stream.
    let p = get(&h, "/console/events", None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
}

/// A browser holding the event stream open does not keep a stopping server up.
#[tokio::test]
async fn stopping_the_server_ends_open_event_streams() {
    let (h, _) = clocked();
    let cookie = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warden_server::serve::serve(listener, h.app.clone(), async move {
        let _ = stopped.await;
    }));
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /console/events HTTP/1.1\r\nhost: {addr}\r\ncookie: {cookie}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = conn.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    stop.send(()).unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "the server stopped with a stream open: {done:?}");
    drop(conn);
}

/// An OIDC ID token signs a human in with the roles its claim lists; the session ends when
/// the token would have, however active; a token from no trusted issuer is refused.
#[tokio::test]
async fn an_oidc_id_token_signs_in_until_it_expires() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let (h, clock) = clocked();
    let now = h.app.now().unix_timestamp();
    let key = EncodingKey::from_ec_pem(&std::fs::read(crate::fixture("ec.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-ec".into());
    let claims = json!({"sub": "bob@acme.example", "aud": "warden", "exp": now + 600, "iss": crate::IDP, "groups": ["soc-analyst"]});
    let token = encode(&header, &claims, &key).unwrap();
    let (id, _) = pending_isolation(&h, "r", "s").await;
    let cookie = sign_in(&h, &token).await;
    let page = get(&h, "/console/inbox", Some(&cookie)).await;
    assert!(page.body.contains("bob@acme.example") && page.body.contains(&id), "bob's inbox, with his role's approval");
    assert!(page.body.contains(&format!("/console/approvals/{id}/approve")), "and he may approve it");
    clock.advance(time::Duration::minutes(9));
    assert_eq!(get(&h, "/console/inbox", Some(&cookie)).await.status, StatusCode::OK);
    clock.advance(time::Duration::minutes(2));
    assert_eq!(
        get(&h, "/console/inbox", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER,
        "the token's expiry ends it"
    );
    // Signed by a key no issuer has: refused.
    let mut forged = Header::new(Algorithm::ES256);
    forged.kid = Some("nobody".into());
    let p = post(&h, "/console/sign-in", None, &[("token", &encode(&forged, &claims, &key).unwrap())]).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

/// The agents page's buttons: halt (anyone), suspend and resume (admins), a breaker reset
/// only when tripped — each needing a reason, each refused as the API refuses it.
#[tokio::test]
async fn agent_buttons_follow_the_same_roles_as_the_api() {
    let (h, _) = clocked();
    let ana = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let page = get(&h, "/console/agents", Some(&ana)).await.body;
    assert!(page.contains(EDR) && page.contains("host.isolate"), "agents and their grants");
    assert!(!page.contains("value=\"suspend\""), "no suspend button for a non-admin");
    let token = csrf(&page);
    let status = |agent: &str, to: &str, reason: &str| {
        vec![
            ("csrf", token.clone()),
            ("agent", agent.to_string()),
            ("to", to.to_string()),
            ("reason", reason.to_string()),
        ]
    };
    let form = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let send = |cookie: String, v: Vec<(&'static str, String)>| {
        let h = &h;
        async move {
            let f = form(&v);
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(h, "/console/agents/status", Some(&cookie), &refs).await
        }
    };
    let p = send(ana.clone(), status(EDR, "suspend", "test")).await;
    assert_eq!((p.status, p.body.contains("missing_role")), (StatusCode::FORBIDDEN, true));
    let p = send(ana.clone(), status(EDR, "halt", " ")).await;
    assert_eq!((p.status, p.body.contains("reason_required")), (StatusCode::UNPROCESSABLE_ENTITY, true));
    assert_eq!(send(ana.clone(), status(EDR, "halt", "beaconing")).await.status, StatusCode::SEE_OTHER);
    let (_, agent) = h
        .call("GET", &format!("/v1/agents/{}", EDR.replace(':', "%3A").replace('/', "%2F")), Some(&h.admin), None)
        .await;
    assert_eq!(agent["status"], "halted", "{agent}");
    let admin = sign_in(&h, &h.admin.clone()).await;
    let token = csrf(&get(&h, "/console/agents", Some(&admin)).await.body);
    let with = |agent: &str, to: &str| {
        vec![
            ("csrf", token.clone()),
            ("agent", agent.to_string()),
            ("to", to.to_string()),
            ("reason", "ok".to_string()),
        ]
    };
    assert_eq!(send(admin.clone(), with(crate::PHISH, "suspend")).await.status, StatusCode::SEE_OTHER);
    let (_, agent) = h
        .call(
            "GET",
            &format!("/v1/agents/{}", crate::PHISH.replace(':', "%3A").replace('/', "%2F")),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(agent["status"], "suspended");
    assert_eq!(send(admin.clone(), with(crate::PHISH, "resume")).await.status, StatusCode::SEE_OTHER);
    let p = send(admin.clone(), with(crate::PHISH, "delete")).await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A breaker that is not tripped is not reset.
    let form = [("csrf", token.as_str()), ("agent", EDR), ("action", "host.isolate"), ("reason", "ok")];
    let p = post(&h, "/console/breakers/reset", Some(&admin), &form).await;
    assert_eq!((p.status, p.body.contains("breaker_closed")), (StatusCode::CONFLICT, true));
    // The policy page names the bundle and the grants with their files.
    let page = get(&h, "/console/policy", Some(&admin)).await.body;
    assert!(page.contains(h.app.bundle().unwrap().version()) && page.contains("agents/edr-responder.toml:"));
}

/// Rolling back from the action page: offered to those who may, refused to those who may not,
/// and it undoes the action in the lab.
#[tokio::test]
async fn the_action_page_rolls_back_for_those_allowed() {
    let (h, url, _) = crate::harness_lab();
    let (approval, request) = pending_isolation(&h, "r", "s").await;
    let ana_token = h.user("ana", &["soc-analyst"]);
    let ana = sign_in(&h, &ana_token).await;
    let token = csrf(&get(&h, "/console/inbox", Some(&ana)).await.body);
    let p = post(&h, &format!("/console/approvals/{approval}/approve"), Some(&ana), &[("csrf", &token)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let lab = |url: &str| {
        let body: Value = ureq::get(&format!("{url}/state")).call().unwrap().body_mut().read_json().unwrap();
        body["edr"]["hosts"]["db-payments-01"]["status"].clone()
    };
    assert_eq!(lab(&url), "contained");
    let intern = sign_in(&h, &h.user("ivy", &["intern"])).await;
    let page = get(&h, &format!("/console/actions/{request}"), Some(&intern)).await.body;
    assert!(page.contains("succeeded") && !page.contains("/rollback\""), "no rollback button for an intern");
    let p = post(&h, &format!("/console/actions/{request}/rollback"), Some(&intern), &[("csrf", &csrf(&page))]).await;
    assert_eq!((p.status, p.body.contains("missing_role")), (StatusCode::FORBIDDEN, true));
    let page = get(&h, &format!("/console/actions/{request}"), Some(&ana)).await.body;
    assert!(page.contains(&format!("/console/actions/{request}/rollback")), "offered to an approver");
    let p = post(&h, &format!("/console/actions/{request}/rollback"), Some(&ana), &[("csrf", &csrf(&page))]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(lab(&url), "normal", "the containment is lifted in the lab");
    let page = get(&h, &format!("/console/actions/{request}?done=rolled_back"), Some(&ana)).await.body;
    assert!(page.contains("Rolled back.") && page.contains("rolled_back"));
}

/// The Halt buttons and the emergency stop are offered exactly to those the one authority
/// check lets halt; a `tool` credential signed in sees neither, and is refused anyway.
#[tokio::test]
async fn halting_is_offered_only_to_halting_roles() {
    let (h, _) = clocked();
    let tool = h.user("edr-tool", &["tool"]);
    let ana = h.user("ana", &["soc-analyst"]);
    for (token, offered) in [(&tool, false), (&ana, true)] {
        let cookie = sign_in(&h, token).await;
        let page = get(&h, "/console/agents", Some(&cookie)).await.body;
        assert_eq!(page.contains("id=\"estop-form\""), offered, "the emergency stop");
        assert_eq!(page.contains("value=\"halt\""), offered, "the agents' Halt button");
        if !offered {
            let form =
                [("csrf", csrf(&page)), ("scope", "all".into()), ("reason", "x".into()), ("confirm", "yes".into())];
            let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let p = post(&h, "/console/halt", Some(&cookie), &fields).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "refused anyway");
        }
    }
}

/// The Reports page: the track record of the agents this person oversees (their roles approve
/// for them), the figures of `warden report autonomy`, and every control once; an admin sees
/// every agent; a window that is not offered is refused.
#[tokio::test]
async fn the_reports_page_shows_the_agents_a_person_oversees() {
    let (h, _) = clocked();
    pending_isolation(&h, "r", "s").await;
    let net = h.svid("spiffe://acme.example/soc/network-guard");
    let task = json!({"id": "INC-N", "title": "t", "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&net), Some(task)).await.0, StatusCode::CREATED);
    let block = json!({"task": "INC-N", "action": "ip.block", "target": "ip:203.0.113.66", "confidence": 0.95,
        "params": {"reason": "c2", "duration_minutes": 60}, "rationale": "r", "evidence": [{"kind": "siem", "ref": "a:1"}]});
    assert_eq!(h.call("POST", "/v1/actions", Some(&net), Some(block)).await.0, StatusCode::OK);
    let edr_row = "spiffe://acme.example/soc/edr-responder × host.isolate";
    let net_row = "spiffe://acme.example/soc/network-guard × ip.block";

    // An analyst approves for the EDR responder, not for the network guard.
    let ana = sign_in(&h, &h.user("ana", &["soc-analyst"])).await;
    let p = get(&h, "/console/reports?since=all", Some(&ana)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains(edr_row) && !p.body.contains(net_row), "{}", p.body);
    assert!(p.body.contains("require_approval: 1"), "the EDR row's outcome mix");
    assert!(p.body.contains("aria-label=\"outcome mix over time\""), "the timeline");
    assert!(!p.body.contains("style=") && !p.body.contains("<script>"));
    // Every control of the mapping, once.
    for c in warden_core::controls::Mapping::shipped().controls {
        assert_eq!(p.body.matches(&format!("<strong>{}</strong>", c.id)).count(), 1, "{}", c.id);
    }
    // A network engineer sees the network guard only.
    let nel = sign_in(&h, &h.user("nel", &["network-engineer"])).await;
    let p = get(&h, "/console/reports?since=7d", Some(&nel)).await;
    assert!(p.body.contains(net_row) && !p.body.contains(edr_row), "{}", p.body);
    // An admin sees every agent.
    let admin = sign_in(&h, &h.admin.clone()).await;
    let p = get(&h, "/console/reports", Some(&admin)).await;
    assert!(p.body.contains("every agent") && p.body.contains(net_row) && p.body.contains(edr_row));
    // A window the page does not offer.
    let p = get(&h, "/console/reports?since=1y", Some(&admin)).await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    assert!(p.body.contains("invalid_request"));
    // No session, no report.
    let p = get(&h, "/console/reports", None).await;
    assert_ne!(p.status, StatusCode::OK);
}
