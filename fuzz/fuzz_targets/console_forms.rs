//! The console's forms, through the real router over a real data directory: any form body
//! posted to any form either is refused or acted on, never a server error; a body without the
//! session's CSRF token changes nothing (the log does not grow); a sign-in with a token nobody
//! was given never yields a session.
//!
//! The fuzzer cannot know the session's CSRF token, so the literal `CSRF` in its input stands
//! for it: the forms' own fields get exercised behind the check too.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;
use warden_core::audit::entry::Actor;
use warden_core::{Bundle, SourceFile};
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin};
use warden_store::{DataDir, SystemClock};

struct World {
    rt: tokio::runtime::Runtime,
    app: warden_server::App,
    router: axum::Router,
    cookie: String,
    csrf: String,
}

/// The forms, each with the path it posts to (`{approval}` and `{action}` stand for ids).
/// Signing out is left out: it would end the one session every input uses.
const FORMS: &[&str] = &[
    "/console/sign-in",
    "/console/approvals/{approval}/approve",
    "/console/approvals/{approval}/reject",
    "/console/actions/{action}/rollback",
    "/console/agents/status",
    "/console/breakers/reset",
    "/console/halt",
    "/console/resume",
    "/console/audit/verify",
];

async fn send(router: &axum::Router, path: &str, cookie: Option<&str>, body: Vec<u8>) -> (StatusCode, String, bool) {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "warden.test")
        .header("origin", "http://warden.test")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let (status, cookie_set) = (res.status(), res.headers().contains_key("set-cookie"));
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned(), cookie_set)
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let clock = Arc::new(SystemClock);
        let (data, _) = DataDir::init(dir.path(), "warden.fuzz/audit", clock.clone()).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let files: Vec<SourceFile> = warden_server::policy_dir::read(&root).unwrap();
        let bundle = Bundle::load(&files).unwrap();
        for g in bundle.agents() {
            admin::add_agent(data.ledger(), &Actor::user("admin"), &g.id, &g.owner, &g.purpose, clock_now()).unwrap();
        }
        let roles = vec!["soc-analyst".to_string(), "incident-commander".to_string()];
        let (_, token) = admin::add_user(data.ledger(), &Actor::user("admin"), "ana", &roles, &[]).unwrap();
        let app = rt.block_on(async { AppState::with_options(data, bundle, clock, ServerOptions::default()).unwrap() });
        let router = warden_server::router(app.clone());
        let (cookie, csrf) = rt.block_on(async {
            let form = format!("token={token}");
            let res = router
                .clone()
                .oneshot(
                    Request::builder()
                        .method("POST")
                        .uri("/console/sign-in")
                        .header("host", "warden.test")
                        .header("origin", "http://warden.test")
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Body::from(form))
                        .unwrap(),
                )
                .await
                .unwrap();
            let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
            let cookie = set.split(';').next().unwrap().to_string();
            let page = router
                .clone()
                .oneshot(
                    Request::builder()
                        .uri("/console/agents")
                        .header("host", "warden.test")
                        .header("cookie", &cookie)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let page = String::from_utf8_lossy(&page.into_body().collect().await.unwrap().to_bytes()).into_owned();
            let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
            (cookie, page[at..at + page[at..].find('"').unwrap()].to_string())
        });
        World { rt, app, router, cookie, csrf }
    })
}

fn clock_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else { return };
    let w = world();
    let form = FORMS[usize::from(*pick) % FORMS.len()]
        .replace("{approval}", "apr_01a2000000000000000000000000")
        .replace("{action}", "act_01a2000000000000000000000000");
    let with_token = String::from_utf8_lossy(body).contains("CSRF");
    let body: Vec<u8> = String::from_utf8_lossy(body).replace("CSRF", &w.csrf).into_bytes();
    let before = w.app.ledger().store().size().unwrap();
    let (status, page, cookie_set) = w.rt.block_on(send(&w.router, &form, Some(&w.cookie), body));
    assert!(!status.is_server_error(), "{form}: {status} {page}");
    if form == "/console/sign-in" {
        assert!(!cookie_set || status != StatusCode::SEE_OTHER, "a made-up token signed in");
    } else if !with_token {
        assert_eq!(w.app.ledger().store().size().unwrap(), before, "{form} acted without the CSRF token");
    }
});
