//! Building a server's state: the issuers, the halt mirror, the notifier; the audited load of
//! the bundle; and the reconciliation of what a stopped server left behind. The composition
//! root of the services, run once per start.

use std::sync::{Arc, RwLock};

use warden_core::Bundle;
use warden_store::{Clock, DataDir};

use crate::error::ApiError;
use crate::identity::{LocalIssuer, TokenVerifier};
use crate::state::{App, AppState, LOCAL_ISSUER, ServerOptions};

impl AppState {
    pub fn new(data: DataDir, bundle: Bundle, audience: &str, clock: Arc<dyn Clock>) -> Result<App, ApiError> {
        let options = ServerOptions { audience: audience.to_string(), ..ServerOptions::default() };
        Self::with_options(data, bundle, clock, options)
    }

    /// The state for a one-off change from the command line on a data directory (`warden task
    /// open|close --data`): the bundle in force as the store records it, no policy load, no
    /// notices, and — unlike a server's start — no reconciliation of executions (a server may
    /// be running on the same store; what it is executing is its own).
    pub fn offline(data: DataDir, clock: Arc<dyn Clock>) -> Result<App, ApiError> {
        let store = data.ledger().store().clone();
        let bundle = crate::state::stored_bundle(store.as_ref())?.ok_or_else(|| {
            ApiError::new(
                crate::error::Code::PolicyUnavailable,
                "no policy bundle is in force in this data directory: serve it once (`warden serve --policy …`), or use --server",
            )
        })?;
        Self::assemble(data, bundle, clock, ServerOptions::default())
    }

    /// The state for a server; when the bundle came from a directory, its load is audited.
    pub fn with_options(
        data: DataDir,
        bundle: Bundle,
        clock: Arc<dyn Clock>,
        options: ServerOptions,
    ) -> Result<App, ApiError> {
        // The version in force, as executions' start commits expect it. A node started on a
        // shared store with a policy directory that holds a bundle once in force and since
        // replaced (a node left behind by a deploy) runs the one in force instead: an old
        // directory never rolls the policy back for every node.
        let store = data.ledger().store().clone();
        let in_force = store.meta(crate::state::BUNDLE_VERSION_KEY)?;
        let stale = data.is_shared()
            && options.policy_dir.is_some()
            && in_force.as_deref().is_some_and(|v| v != bundle.version())
            && store.meta(&crate::state::bundle_seen_key(bundle.version()))?.is_some();
        let adopted = if stale { crate::state::stored_bundle(store.as_ref())? } else { None };
        let bundle = match adopted {
            Some(current) => {
                tracing::warn!(
                    directory = %bundle.version(), in_force = %current.version(),
                    "the policy directory holds a bundle that was replaced; running the one in force"
                );
                current
            }
            None => {
                let mut batch = warden_store::Batch::new().changes(crate::state::bundle_changes(&bundle));
                if let Some(dir) = &options.policy_dir {
                    let event = crate::policy_dir::loaded_event(
                        &bundle,
                        warden_core::audit::entry::Actor::system("warden"),
                        &dir.display().to_string(),
                    );
                    batch = batch.event(event);
                }
                data.ledger().commit(batch)?;
                bundle
            }
        };
        let app = Self::assemble(data, bundle, clock, options)?;
        if app.shared_store {
            crate::node::beat(&app)?;
        }
        let unknown = crate::execution::reconcile_after_restart(&app)?;
        if !unknown.is_empty() {
            tracing::warn!(executions = ?unknown, "executions interrupted by a stop are now `unknown`: reconcile them");
        }
        Ok(app)
    }

    /// The state itself, around `bundle` (already in force): shared by a server's start and a
    /// one-off change on a data directory.
    fn assemble(data: DataDir, bundle: Bundle, clock: Arc<dyn Clock>, options: ServerOptions) -> Result<App, ApiError> {
        let local = LocalIssuer::new(LOCAL_ISSUER, &data.token_seed().0)?;
        let tokens = TokenVerifier::new(options.audience, local, options.issuers);
        let limits = options.limits;
        let notify = options.notify;
        let halts = crate::halt::load_gate(data.ledger().store().as_ref())?;
        let notifier = crate::notify::Notifier::start(notify, data.ledger_handle());
        let node = crate::model::new_id("node")?;
        let shared_store = data.is_shared();
        Ok(Arc::new(AppState {
            data,
            bundle: RwLock::new(Arc::new(bundle)),
            tokens,
            clock,
            shadow: options.shadow,
            policy_dir: options.policy_dir,
            limits,
            rate: crate::limits::RateLimiter::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.in_flight)),
            metrics: crate::metrics::Metrics::default(),
            notifier,
            changes: tokio::sync::watch::Sender::new(0),
            connector: options.connector,
            connectors_source: options.connectors_source,
            halts: std::sync::RwLock::new(halts),
            mcp: options.mcp,
            upstreams: options.upstreams,
            sessions: options.sessions,
            stopping: tokio::sync::watch::Sender::new(false),
            secure_cookies: options.secure_cookies,
            slack: options.slack,
            held: Arc::default(),
            sign_ins: crate::limits::Attempts::default(),
            slack_jobs: Arc::new(tokio::sync::Semaphore::new(limits.console.slack_in_flight)),
            refusals_logged: Default::default(),
            node,
            shared_store,
            beats: Default::default(),
        }))
    }
}
