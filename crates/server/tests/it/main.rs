//! The gateway in-process: the real router, a real data directory and the example bundle; no
//! sockets. Tokens for agents come from the local issuer; humans use API tokens.

mod admin_api;
mod api;
mod approvals;
mod attack26b;
mod attack26c;
mod attack27;
mod attack27b;
mod authority;
mod authority_table;
mod bounds;
mod console;
mod controls;
mod data;
mod disable;
mod errors;
mod escapes;
mod execution;
mod explain;
mod identity;
mod layers;
mod mcp;
mod model;
mod nodes;
mod openapi;
mod reload;
mod report;
mod siem;
mod simulate;
mod slack;
mod stranger;
mod taint;
mod tls;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;
use warden_core::audit::entry::Actor;
use warden_core::{Bundle, SourceFile};
use warden_server::identity::{ExternalIssuer, IssuerConfig};
use warden_server::notify::NotifyOptions;
use warden_server::state::ServerOptions;
use warden_server::{App, AppState, admin, router};
use warden_store::{Clock, DataDir, SystemClock};

pub const EDR: &str = "spiffe://acme.example/soc/edr-responder";
pub const PHISH: &str = "spiffe://acme.example/soc/phish-triage";

#[allow(missing_debug_implementations)]
pub struct Harness {
    pub _dir: tempfile::TempDir,
    /// Where its store is (the data directory's file, or a PostgreSQL database).
    pub at: warden_store::StoreAt,
    pub app: App,
    pub router: Router,
    pub admin: String,
}

/// The bundle at `root`, read the way the server reads it.
pub fn read_bundle(root: &Path) -> Vec<SourceFile> {
    warden_server::policy_dir::read(root).unwrap()
}

/// Polls `f` every 25 ms until it gives a value (5 s at most).
pub async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("timed out waiting");
}

/// The issuer of `tests/fixtures/issuer` (test-only keys), trusted with audience `warden`.
pub const SPIRE: &str = "https://spire.acme.example";

pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/issuer").join(name)
}

/// An OIDC issuer of human tokens (the same test keys under another `kid` prefix).
pub const IDP: &str = "https://idp.acme.example";

pub fn external_issuers() -> Vec<ExternalIssuer> {
    let spire = IssuerConfig {
        issuer: SPIRE.into(),
        jwks_file: fixture("jwks.json"),
        audience: None,
        roles_claim: None,
        trust_domains: vec!["acme.example".into()],
    };
    let idp = IssuerConfig {
        issuer: IDP.into(),
        jwks_file: fixture("idp-jwks.json"),
        audience: None,
        roles_claim: Some("groups".into()),
        trust_domains: Vec::new(),
    };
    vec![ExternalIssuer::load(&spire).unwrap(), ExternalIssuer::load(&idp).unwrap()]
}

pub fn example_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy")
}

/// A fresh data directory with the example bundle and its five agents registered.
pub fn harness() -> Harness {
    harness_from(None)
}

/// The same, with the bundle read from `policy_dir` (reloadable).
pub fn harness_from(policy_dir: Option<&Path>) -> Harness {
    harness_with(policy_dir, Arc::new(SystemClock), NotifyOptions::default())
}

/// The example bundle, a clock of the test's own and notices to `notify`'s webhooks.
pub fn harness_with(policy_dir: Option<&Path>, clock: Arc<dyn Clock>, notify: NotifyOptions) -> Harness {
    harness_full(policy_dir, clock, notify, None)
}

/// The lab estate on a free loopback port (its own runtime thread): its URL and keys.
pub fn lab() -> (String, warden_lab::Keys) {
    let keys = warden_lab::Keys::random();
    (warden_lab::spawn(keys.clone(), std::time::Duration::ZERO), keys)
}

/// The example bundle's connectors, pointed at `url` with `keys`.
pub fn connector(url: &str, keys: &warden_lab::Keys) -> Arc<dyn warden_connectors::Connector> {
    let text = std::fs::read_to_string(example_dir().join("connectors.toml")).unwrap();
    let tools = ["edr", "idp", "firewall", "mail", "ticketing", "siem"]
        .iter()
        .map(|t| (t.to_string(), url.to_string()))
        .collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let secrets = warden_connectors::EnvSecrets { given, dir: None };
    Arc::new(warden_connectors::HttpConnector::from_toml(&text, &tools, Box::new(secrets)).unwrap())
}

/// A harness whose executions reach a fresh lab estate: the harness, the lab's URL and keys.
pub fn harness_lab() -> (Harness, String, warden_lab::Keys) {
    let (url, keys) = lab();
    let h = harness_full(None, Arc::new(SystemClock), NotifyOptions::default(), Some(connector(&url, &keys)));
    (h, url, keys)
}

pub fn harness_full(
    policy_dir: Option<&Path>,
    clock: Arc<dyn Clock>,
    notify: NotifyOptions,
    connector: Option<Arc<dyn warden_connectors::Connector>>,
) -> Harness {
    // The connectors' source is the bundle's (the example's, or the policy directory's).
    let connectors_source = connector
        .as_ref()
        .and_then(|_| std::fs::read_to_string(policy_dir.unwrap_or(&example_dir()).join("connectors.toml")).ok());
    let options = ServerOptions {
        policy_dir: policy_dir.map(Path::to_path_buf),
        issuers: external_issuers(),
        notify,
        connector,
        connectors_source,
        ..Default::default()
    };
    harness_options(clock, options)
}

/// Where the harness keeps its store: SQLite, or with `WARDEN_TEST_STORE=postgres` a fresh
/// database on the test process's PostgreSQL cluster (so the whole suite runs on either).
pub fn test_store() -> warden_store::StoreAt {
    if std::env::var("WARDEN_TEST_STORE").is_ok_and(|v| v == "postgres") {
        let pg = warden_testpg::shared().expect("WARDEN_TEST_STORE=postgres needs PostgreSQL");
        // Many tests move a made-up clock by hours: no clock check (the store tests keep one).
        let target = warden_store::PgTarget::parse(&pg.fresh_database()).unwrap().without_clock_check();
        return warden_store::StoreAt::Postgres(Box::new(target));
    }
    warden_store::StoreAt::File
}

/// A second node on the harness's store (a second handle on its SQLite file, or another
/// connection pool on its PostgreSQL database), set up with `options`: its state and router.
/// One request to `router` (any node's), as [`Harness::call`] sends it: the status and the
/// answer as JSON (or its text, as a JSON string).
pub async fn call_router(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

pub fn second_node(h: &Harness, options: ServerOptions) -> (App, Router) {
    let data = DataDir::open_at(h._dir.path(), &h.at, Arc::new(SystemClock), Default::default()).unwrap();
    let bundle = Bundle::load(&read_bundle(&example_dir())).unwrap();
    let app = AppState::with_options(data, bundle, Arc::new(SystemClock), options).unwrap();
    (app.clone(), router(app))
}

/// Runs `sql` on the harness's database, behind the server's back (to tamper with it).
pub fn raw_sql(h: &Harness, sqlite: &str, postgres: &str) {
    match &h.at {
        warden_store::StoreAt::File => {
            let conn = rusqlite::Connection::open(h._dir.path().join("warden.db")).unwrap();
            conn.execute_batch(sqlite).unwrap();
        }
        warden_store::StoreAt::Postgres(t) => {
            let url = t.to_string();
            let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
            warden_testpg::shared().unwrap().psql(db, postgres).unwrap();
        }
    }
}

/// A fresh data directory with the bundle's agents registered (the example's, or the one at
/// `options.policy_dir`), and a server set up with `options`.
pub fn harness_options(clock: Arc<dyn Clock>, options: ServerOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let at = test_store();
    let (data, admin_token) = DataDir::init_at(dir.path(), &at, "warden.test/audit", clock.clone()).unwrap();
    let files = read_bundle(options.policy_dir.as_deref().unwrap_or(&example_dir()));
    let bundle = Bundle::load(&files).unwrap();
    let now = clock.now();
    for g in bundle.agents() {
        admin::add_agent(data.ledger(), &Actor::user("admin"), &g.id, &g.owner, &g.purpose, now).unwrap();
    }
    let app = AppState::with_options(data, bundle, clock, options).unwrap();
    Harness { _dir: dir, at, router: router(app.clone()), app, admin: admin_token }
}

impl Harness {
    /// A JWT-SVID for `agent` from the local issuer, valid 10 minutes.
    pub fn svid(&self, agent: &str) -> String {
        self.app.tokens.local.mint(agent, "warden", self.app.now(), 600)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call_router(&self.router, method, path, token, body).await
    }

    /// A GET with the answer's headers too.
    pub async fn get_with_headers(&self, path: &str, token: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Every page of a list, following `Link: <…>; rel="next"` from `path`.
    pub async fn walk(&self, path: &str, token: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let (status, headers, page) = self.get_with_headers(&p, token).await;
            assert_eq!(status, StatusCode::OK, "{p}: {page}");
            all.extend(page.as_array().unwrap().iter().cloned());
            next = headers.get("link").map(|l| {
                let l = l.to_str().unwrap();
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                l[1..l.find('>').unwrap()].to_string()
            });
            assert!(all.len() <= 100_000, "the walk does not end");
        }
        all
    }

    /// A form-encoded POST.
    pub async fn call_form(&self, path: &str, token: &str, form: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A human with `roles`, and their token.
    pub fn user(&self, id: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        admin::add_user(self.app.ledger(), &Actor::user("admin"), id, &roles, &[]).unwrap().1
    }
}
