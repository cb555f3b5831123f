//! What every handler shares.

use std::sync::{Arc, RwLock};

use time::OffsetDateTime;
use warden_core::Bundle;
use warden_store::{Clock, DataDir, Ledger};

use crate::error::{ApiError, Code};
use crate::identity::TokenVerifier;

/// The default audience of JWT-SVIDs presented to Warden.
pub const DEFAULT_AUDIENCE: &str = "warden";
/// The local issuer's `iss`.
pub const LOCAL_ISSUER: &str = "warden-local";

/// How a server is set up beyond its data directory and bundle.
#[derive(Debug)]
pub struct ServerOptions {
    /// The audience JWT-SVIDs must name.
    pub audience: String,
    /// External issuers trusted besides the local one.
    pub issuers: Vec<crate::identity::ExternalIssuer>,
    pub limits: crate::limits::Limits,
    /// Where the bundle came from (reloadable), if from a directory.
    pub policy_dir: Option<std::path::PathBuf>,
    /// Approval notices.
    pub notify: crate::notify::NotifyOptions,
    /// How approved actions reach the tools; without one, they rest in `approved`.
    pub connector: Option<Arc<dyn warden_connectors::Connector>>,
    /// The `connectors.toml` text `connector` was built from: a tool is called only while it
    /// is the bundle in force's (a load on another node may have changed it).
    pub connectors_source: Option<String>,
    /// Global shadow mode (`warden serve --shadow`): every request is decided and recorded,
    /// nothing is executed or queued for approval.
    pub shadow: bool,
    /// How `/mcp` is served.
    pub mcp: crate::limits::McpOptions,
    /// Upstream MCP servers whose mapped tools agents call through `/mcp` (the connector
    /// routes their executions).
    pub upstreams: Option<Arc<warden_connectors::mcp::Upstreams>>,
    /// Console sessions: idle and absolute lifetimes.
    pub sessions: crate::session::Sessions,
    /// Console cookies carry `Secure` (set when serving TLS).
    pub secure_cookies: bool,
    /// Slack interactive approvals (`[slack]` in `--config`).
    pub slack: Option<crate::notify::SlackApp>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            audience: DEFAULT_AUDIENCE.to_string(),
            issuers: Vec::new(),
            limits: crate::limits::Limits::default(),
            policy_dir: None,
            notify: crate::notify::NotifyOptions::default(),
            connector: None,
            connectors_source: None,
            shadow: false,
            mcp: crate::limits::McpOptions::default(),
            upstreams: None,
            sessions: crate::session::Sessions::default(),
            secure_cookies: false,
            slack: None,
        }
    }
}

/// Shared state; handlers get it as `State<App>`.
pub type App = Arc<AppState>;

#[derive(Debug)]
pub struct AppState {
    pub data: DataDir,
    pub(crate) bundle: RwLock<Arc<Bundle>>,
    pub tokens: TokenVerifier,
    pub clock: Arc<dyn Clock>,
    /// Global shadow mode: decide and record, never execute.
    pub shadow: bool,
    /// Where the bundle is reloaded from, when it came from a directory.
    pub policy_dir: Option<std::path::PathBuf>,
    pub limits: crate::limits::Limits,
    pub rate: crate::limits::RateLimiter,
    /// Permits for requests in flight.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: crate::metrics::Metrics,
    /// Approval notices (webhooks).
    pub notifier: crate::notify::Notifier,
    /// Bumped after every approval transition: long polls wake up and look again.
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    pub connector: Option<Arc<dyn warden_connectors::Connector>>,
    /// The `connectors.toml` text `connector` was built from (see [`ServerOptions`]).
    pub connectors_source: Option<String>,
    /// The halts in force, mirrored from the store. Executions hold it for reading from their
    /// last check to the end of the tool call; a halt takes it for writing, so once a halt
    /// returns no matching action starts.
    pub halts: std::sync::RwLock<HaltGate>,
    /// How `/mcp` is served.
    pub mcp: crate::limits::McpOptions,
    /// Upstream MCP servers (their tools, as last listed).
    pub upstreams: Option<Arc<warden_connectors::mcp::Upstreams>>,
    /// Console sign-in sessions.
    pub sessions: crate::session::Sessions,
    /// Set once the server is stopping: long-lived streams (the console's events) end, so a
    /// graceful shutdown does not wait on them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Console session cookies carry `Secure` (the server speaks TLS).
    pub secure_cookies: bool,
    /// Slack interactive approvals, when configured.
    pub slack: Option<crate::notify::SlackApp>,
    /// What callers hold open, by key (`session:…`, `user:…`, `longpoll:…`, `export:…`):
    /// console event streams, long polls, audit downloads — each capped per holder.
    pub held: Arc<crate::limits::Slots>,
    /// Console sign-in attempts by address.
    pub sign_ins: crate::limits::Attempts,
    /// Slack button presses being acted on.
    pub slack_jobs: Arc<tokio::sync::Semaphore>,
    /// This node's id (`node_…`, new at every start): stamped on the tool calls it makes, and
    /// the name of its heartbeat in a shared store.
    pub node: String,
    /// Whether other nodes share the store (PostgreSQL): then what a stopped node left behind
    /// is reconciled by heartbeat, never at another node's start.
    pub shared_store: bool,
    /// Other nodes' heartbeats as this node last saw them change: (value, when, on this
    /// node's monotonic clock).
    pub(crate) beats: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// Approval-backlog refusals by agent × action: when one was last written to the log, and
    /// how many since.
    pub(crate) refusals_logged: std::sync::Mutex<std::collections::HashMap<(String, String), (i64, u64)>>,
}

impl AppState {
    pub fn ledger(&self) -> &Ledger {
        self.data.ledger()
    }

    /// Tells long polls that an approval changed.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every [`AppState::changed`] from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The policy bundle in force.
    pub fn bundle(&self) -> Result<Arc<Bundle>, ApiError> {
        self.bundle
            .read()
            .map(|b| b.clone())
            .map_err(|_| ApiError::new(Code::PolicyUnavailable, "the policy bundle is unavailable"))
    }

    /// Replaces the bundle in force.
    pub fn set_bundle(&self, bundle: Bundle) -> Result<(), ApiError> {
        self.set_bundle_with(bundle, warden_store::Batch::new())
    }

    /// Puts `bundle` in force, committing `batch` (its audit entry) with the setting that names
    /// its version, while no execution can read the bundle: an execution that decided under
    /// the old one finds the setting changed in its start commit and decides again.
    pub fn set_bundle_with(&self, bundle: Bundle, batch: warden_store::Batch) -> Result<(), ApiError> {
        let mut slot = self
            .bundle
            .write()
            .map_err(|_| ApiError::new(Code::PolicyUnavailable, "the policy bundle is unavailable"))?;
        let batch = batch.changes(bundle_changes(&bundle));
        self.ledger().commit(batch)?;
        *slot = Arc::new(bundle);
        Ok(())
    }

    /// Puts in force, on this node only, the bundle another node loaded (it is in the store,
    /// audited by that node's load): when the store names a bundle other than this node's.
    /// Whether it changed.
    pub fn follow_bundle(&self) -> Result<bool, ApiError> {
        let store = self.ledger().store();
        let Some(version) = store.meta(BUNDLE_VERSION_KEY)? else { return Ok(false) };
        if self.bundle()?.version() == version {
            return Ok(false);
        }
        let Some(bundle) = stored_bundle(store.as_ref())? else { return Ok(false) };
        let mut slot = self
            .bundle
            .write()
            .map_err(|_| ApiError::new(Code::PolicyUnavailable, "the policy bundle is unavailable"))?;
        if slot.version() != bundle.version() {
            tracing::info!(bundle = %bundle.version(), "following the bundle another node put in force");
            *slot = Arc::new(bundle);
        }
        Ok(true)
    }
}

/// The store setting that holds the files of the bundle in force (JSON `[{path, text}]`), so
/// that every node runs the bundle any one of them loaded.
pub const BUNDLE_FILES_KEY: &str = "bundle_files";

/// The store setting that says a bundle version was once in force.
pub fn bundle_seen_key(version: &str) -> String {
    format!("bundle_seen:{version}")
}

/// The changes that put `bundle` in force in the store: its version, its files, and the note
/// that it has been in force.
pub fn bundle_changes(bundle: &Bundle) -> Vec<warden_store::Change> {
    let files: Vec<serde_json::Value> =
        bundle.files().iter().map(|f| serde_json::json!({"path": f.path, "text": f.text})).collect();
    vec![
        warden_store::Change::SetMeta { key: BUNDLE_VERSION_KEY.into(), value: bundle.version().to_string() },
        warden_store::Change::SetMeta {
            key: BUNDLE_FILES_KEY.into(),
            value: serde_json::Value::from(files).to_string(),
        },
        warden_store::Change::SetMeta { key: bundle_seen_key(bundle.version()), value: "1".into() },
    ]
}

/// The bundle in force as the store holds it, when it holds its files.
pub fn stored_bundle(store: &dyn warden_store::Store) -> Result<Option<Bundle>, ApiError> {
    let Some(text) = store.meta(BUNDLE_FILES_KEY)? else { return Ok(None) };
    let bad = |why: String| ApiError::new(Code::PolicyUnavailable, format!("the stored bundle cannot be read: {why}"));
    let files: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let files: Vec<warden_core::SourceFile> = files
        .iter()
        .map(|f| {
            let path = f["path"].as_str().ok_or_else(|| bad("a file without a path".into()))?;
            let text = f["text"].as_str().ok_or_else(|| bad("a file without text".into()))?;
            Ok(warden_core::SourceFile::new(path, text))
        })
        .collect::<Result<_, ApiError>>()?;
    Bundle::load(&files).map(Some).map_err(|e| bad(e.to_string()))
}

/// Runs store work (SQLite, fsync) off the async workers.
pub async fn blocking<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|_| ApiError::new(Code::Internal, "a worker failed; look up what it recorded before retrying"))?
}

/// The store setting that holds node `id`'s heartbeat (Unix milliseconds; 0 after a clean stop).
pub fn node_key(id: &str) -> String {
    format!("node:{id}")
}

/// How often a node on a shared store writes its heartbeat.
pub const NODE_HEARTBEAT_MS: i64 = 2_000;

/// How long a node's heartbeat may stay unchanged (as another node's clock counts) before
/// the node counts as gone, and the tool calls it had started become `unknown`.
pub const NODE_DEAD_AFTER_MS: i64 = 10_000;

/// The setting every halt, resume and halt expiry changes, in the same commit, to a value never
/// used before: a commit that relied on the halts it read expects it unchanged.
pub const HALTS_EPOCH_KEY: &str = "halts_epoch";

/// The store setting that holds the version of the bundle in force: written in the commit
/// that audits a load, and a precondition of every execution's start commit, so nothing
/// decided under one bundle starts after another replaced it.
pub const BUNDLE_VERSION_KEY: &str = "bundle_version";

/// The halts in force as this server knows them (mirrored from the store by every halt and
/// resume before it returns), and the epoch they were read at.
#[derive(Debug, Clone, Default)]
pub struct HaltGate {
    pub list: Vec<warden_core::request::Halt>,
    /// The value of [`HALTS_EPOCH_KEY`] when `list` was read.
    pub epoch: Option<String>,
}

impl HaltGate {
    /// The first halt in force that stops `action` by `agent` at `now`.
    pub fn matching(&self, agent: &str, action: &str, now: OffsetDateTime) -> Option<&warden_core::request::Halt> {
        self.list.iter().find(|h| h.matches(agent, action, now))
    }

    /// The precondition that no halt or resume has committed since this gate was read.
    pub fn unchanged(&self) -> warden_store::Change {
        warden_store::Change::ExpectMeta { key: HALTS_EPOCH_KEY.into(), value: self.epoch.clone() }
    }
}
