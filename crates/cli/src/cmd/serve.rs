//! `warden serve`: the gateway on a socket, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use warden_server::AppState;
use warden_server::identity::{ExternalIssuer, IssuerConfig};
use warden_server::limits::Limits;
use warden_server::notify::NotifyOptions;
use warden_server::state::DEFAULT_AUDIENCE;
use warden_server::state::ServerOptions;
use warden_store::{DataDir, LedgerOptions, SystemClock};

use crate::Failure;
use crate::cmd::policy;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The data directory (`warden init` makes one).
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: PathBuf,
    /// Where the store is: unset (or `sqlite`) for `warden.db` in the data directory, or a
    /// `postgres://` URL (`sslmode`, `sslrootcert` as libpq reads them) shared by many nodes.
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Address to listen on; port 0 picks a free one (the chosen address is printed).
    #[arg(long, env = "WARDEN_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// A TOML file with the trusted external issuers: `[[identity.issuers]]` (agents'
    /// JWT-SVIDs) and `[[identity.oidc]]` (humans' OIDC tokens, roles from `roles_claim`),
    /// each with `issuer`, `jwks_file` (relative to the file) and optional `audience`; and
    /// `[notify]` (`public_url`, `attempts`, `backoff_ms`) with `[[notify.webhooks]]` (`name`,
    /// `url`, `format` = `json` | `slack`) for approval notices; `[slack]` (`signing_secret =
    /// "secret:NAME"`, `[slack.users]` Slack id = Warden user) for Approve / Reject buttons in
    /// Slack notices; `[[siem.sinks]]` (`name`, `kind` = `splunk_hec` | `jsonl`, `url`, `token =
    /// "secret:NAME"`, `batch`, `max_backlog`, …) to stream the audit log as OCSF events.
    /// Everything else is set by flag or `WARDEN_…` variable.
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// The policy bundle directory.
    #[arg(long, env = "WARDEN_POLICY")]
    pub policy: PathBuf,
    /// The audience JWT-SVIDs must name.
    #[arg(long, env = "WARDEN_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Check the policy directory for changes every N seconds (0: only on
    /// `POST /v1/policy/reload`). A changed bundle is swapped in only when valid; each load is
    /// audited with its version.
    #[arg(long, env = "WARDEN_POLICY_POLL", default_value_t = 2)]
    pub policy_poll: u64,
    /// Requests per second each agent may make, sustained (beyond: 429 `rate_limited`).
    #[arg(long, env = "WARDEN_AGENT_RATE", default_value_t = 50.0)]
    pub agent_rate: f64,
    /// Requests an idle agent may make at once.
    #[arg(long, env = "WARDEN_AGENT_BURST", default_value_t = 100.0)]
    pub agent_burst: f64,
    /// Requests in flight across the server (beyond: 503 `overloaded`, nothing queues).
    #[arg(long, env = "WARDEN_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Longest a request may take (beyond: 408).
    #[arg(long, env = "WARDEN_REQUEST_TIMEOUT", default_value = "15s")]
    pub request_timeout: String,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`).
    #[arg(long, env = "WARDEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "WARDEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Point a tool of the bundle's `connectors.toml` elsewhere: `NAME=URL` (repeatable).
    #[arg(long = "tool-url", value_name = "NAME=URL")]
    pub tool_urls: Vec<String>,
    /// A directory of secret files (`secret:NAME` in connectors.toml reads the file NAME when
    /// no environment variable NAME is set).
    #[arg(long, env = "WARDEN_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Shadow mode for every agent: decide and record every request, execute nothing and
    /// queue nothing for approval (each decision keeps the outcome it would have had).
    #[arg(long, env = "WARDEN_SHADOW")]
    pub shadow: bool,
    /// How long an MCP tool call waiting for a human approval is held before it answers with
    /// the pending ids (keep it below your MCP clients' request timeout).
    #[arg(long, env = "WARDEN_MCP_HOLD", default_value = "45s")]
    pub mcp_hold: String,
    /// A `Host` the MCP endpoint answers besides loopback (repeatable): requests naming
    /// another host are refused, against DNS rebinding.
    #[arg(long = "mcp-host", value_name = "HOST")]
    pub mcp_hosts: Vec<String>,
    /// A browser `Origin` the MCP endpoint accepts (repeatable); with none, requests carrying
    /// an `Origin` are accepted only from the allowed hosts.
    #[arg(long = "mcp-origin", value_name = "ORIGIN")]
    pub mcp_origins: Vec<String>,
    /// Log lines as text or JSON (to stderr; filter with `RUST_LOG`).
    #[arg(long, env = "WARDEN_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// `/mcp`'s options from the flags: loopback and the listen host are always accepted.
fn mcp_options(a: &ServeArgs, scheme: &'static str) -> Result<warden_server::limits::McpOptions, Failure> {
    let defaults = warden_server::limits::McpOptions::default();
    let hold = warden_core::duration::Duration::parse(&a.mcp_hold)
        .map_err(|e| Failure::Invalid(format!("error: `--mcp-hold`: {e}")))?;
    if hold.as_secs() == 0 || hold.as_secs() > 600 {
        return Err(Failure::Invalid(format!("error: `--mcp-hold` must be between 1s and 10m, not `{}`", a.mcp_hold)));
    }
    let mut hosts = defaults.allowed_hosts.clone();
    if let Some(host) = a.listen.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']))
        && !host.is_empty()
        && host != "0.0.0.0"
        && host != "::"
    {
        hosts.push(host.to_string());
    }
    hosts.extend(a.mcp_hosts.iter().cloned());
    Ok(warden_server::limits::McpOptions {
        hold: warden_server::limits::HoldOptions {
            budget: std::time::Duration::from_secs(hold.as_secs()),
            ..defaults.hold
        },
        allowed_hosts: hosts,
        allowed_origins: a.mcp_origins.clone(),
        scheme,
        sessions: defaults.sessions,
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    identity: IdentitySection,
    #[serde(default)]
    notify: NotifySection,
    #[serde(default)]
    mcp: McpSection,
    slack: Option<SlackSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    siem: SiemSection,
}

/// `[siem]`: where the audit log streams, as OCSF events (docs/operations.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiemSection {
    #[serde(default)]
    sinks: Vec<warden_server::siem::SinkConfig>,
}

/// `[limits]`: the bounds that keep a client from exhausting the server (docs/operations.md
/// lists each with its default and metric). Unset: the default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    header_timeout: Option<warden_core::duration::Duration>,
    body_timeout: Option<warden_core::duration::Duration>,
    write_timeout: Option<warden_core::duration::Duration>,
    tls_handshakes: Option<usize>,
    tls_handshake_timeout: Option<warden_core::duration::Duration>,
    mcp_sessions_per_agent: Option<usize>,
    mcp_session_idle: Option<warden_core::duration::Duration>,
    mcp_streams_per_session: Option<usize>,
    console_streams_per_session: Option<usize>,
    console_streams_per_user: Option<usize>,
    slack_in_flight: Option<usize>,
}

impl LimitsSection {
    /// The bounds, each set or default; a zero is refused (it would refuse everything).
    fn apply(
        &self,
        limits: &mut Limits,
        mcp: &mut warden_server::limits::McpSessions,
        path: &std::path::Path,
    ) -> Result<(), Failure> {
        let zero =
            |name: &str| Failure::Invalid(format!("error: `{}`: `[limits] {name}` must be at least 1", path.display()));
        let count = |v: Option<usize>, name: &str, into: &mut usize| -> Result<(), Failure> {
            match v {
                Some(0) => Err(zero(name)),
                Some(n) => {
                    *into = n;
                    Ok(())
                }
                None => Ok(()),
            }
        };
        let secs = |v: Option<warden_core::duration::Duration>, name: &str, into: &mut std::time::Duration| match v
            .map(|d| d.as_secs())
        {
            Some(0) => Err(zero(name)),
            Some(n) => {
                *into = std::time::Duration::from_secs(n);
                Ok(())
            }
            None => Ok(()),
        };
        let c = &mut limits.connections;
        count(self.max_connections, "max_connections", &mut c.max_open)?;
        count(self.max_connections_per_peer, "max_connections_per_peer", &mut c.max_per_peer)?;
        secs(self.header_timeout, "header_timeout", &mut c.header_timeout)?;
        secs(self.body_timeout, "body_timeout", &mut c.body_timeout)?;
        secs(self.write_timeout, "write_timeout", &mut c.write_timeout)?;
        count(self.tls_handshakes, "tls_handshakes", &mut c.tls_handshakes)?;
        secs(self.tls_handshake_timeout, "tls_handshake_timeout", &mut c.tls_handshake_timeout)?;
        count(self.mcp_sessions_per_agent, "mcp_sessions_per_agent", &mut mcp.per_agent)?;
        secs(self.mcp_session_idle, "mcp_session_idle", &mut mcp.idle)?;
        count(self.mcp_streams_per_session, "mcp_streams_per_session", &mut mcp.streams_per_session)?;
        let k = &mut limits.console;
        count(self.console_streams_per_session, "console_streams_per_session", &mut k.streams_per_session)?;
        count(self.console_streams_per_user, "console_streams_per_user", &mut k.streams_per_user)?;
        count(self.slack_in_flight, "slack_in_flight", &mut k.slack_in_flight)?;
        Ok(())
    }
}

/// `[slack]`: a Slack app whose notices carry Approve / Reject buttons.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackSection {
    /// The app's signing secret, as `secret:NAME` (an environment variable or a file of
    /// `--secrets-dir`): it is not written in the file.
    signing_secret: String,
    /// Slack user id → Warden user id: who may press the buttons, as whom.
    #[serde(default)]
    users: std::collections::BTreeMap<String, String>,
    /// Where an interaction's `response_url` may point (default `https://hooks.slack.com/`).
    response_url_prefixes: Option<Vec<String>>,
}

/// `[mcp]`: upstream MCP servers whose tools the bundle's `mcp.toml` maps to action classes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct McpSection {
    #[serde(default)]
    upstreams: Vec<warden_connectors::mcp::UpstreamConfig>,
}

/// `[notify]`: where approval notices go.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifySection {
    /// How people reach this server, for links in notices (default `http://<--listen>`).
    public_url: Option<String>,
    /// Attempts per notice and webhook (default 4).
    attempts: Option<u32>,
    /// Milliseconds before the second attempt, doubled after each (default 500).
    backoff_ms: Option<u64>,
    #[serde(default)]
    webhooks: Vec<warden_server::notify::Webhook>,
}

/// What `--config` holds.
#[derive(Debug, Default)]
struct Config {
    limits: LimitsSection,
    issuers: Vec<ExternalIssuer>,
    notify: NotifySection,
    upstreams: Vec<warden_connectors::mcp::UpstreamConfig>,
    slack: Option<SlackSection>,
    siem: Vec<warden_server::siem::SinkConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySection {
    /// Workload issuers (JWT-SVIDs for agents).
    #[serde(default)]
    issuers: Vec<IssuerConfig>,
    /// OIDC issuers of human tokens; `roles_claim` defaults to `roles`.
    #[serde(default)]
    oidc: Vec<IssuerConfig>,
}

/// Reads `--config`: the external issuers with their keys, and the notifications.
fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let cfg: ConfigFile =
        toml::from_str(&text).map_err(|e| Failure::Invalid(format!("error: `{}`: {e}", path.display())))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let humans = cfg.identity.oidc.into_iter().map(|mut i| {
        i.roles_claim.get_or_insert_with(|| "roles".to_string());
        i
    });
    let workloads = cfg.identity.issuers.into_iter().map(|mut i| {
        i.roles_claim = None;
        i
    });
    let issuers = workloads
        .chain(humans)
        .map(|mut i| {
            i.jwks_file = base.join(&i.jwks_file);
            ExternalIssuer::load(&i).map_err(|e| Failure::Invalid(format!("error: {e}")))
        })
        .collect::<Result<_, _>>()?;
    for w in &cfg.notify.webhooks {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            return Err(Failure::Invalid(format!(
                "error: `{}`: webhook `{}` needs an http:// or https:// url",
                path.display(),
                w.name
            )));
        }
    }
    for u in &cfg.mcp.upstreams {
        u.check().map_err(|e| Failure::Invalid(format!("error: `{}`: {}", path.display(), e.0)))?;
    }
    if let Some(slack) = &cfg.slack
        && !slack.signing_secret.starts_with("secret:")
    {
        return Err(Failure::Invalid(format!(
            "error: `{}`: `[slack] signing_secret` must be `secret:NAME` (an environment variable or a file of \
             --secrets-dir), not the secret itself",
            path.display()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    for sink in &cfg.siem.sinks {
        if !names.insert(sink.name.as_str()) {
            return Err(Failure::Invalid(format!(
                "error: `{}`: two `[[siem.sinks]]` are named `{}`",
                path.display(),
                sink.name
            )));
        }
    }
    Ok(Config {
        limits: cfg.limits,
        issuers,
        notify: cfg.notify,
        upstreams: cfg.mcp.upstreams,
        slack: cfg.slack,
        siem: cfg.siem.sinks,
    })
}

/// The Slack app of `[slack]`, its signing secret resolved.
fn slack_app(a: &ServeArgs, cfg: Option<SlackSection>) -> Result<Option<warden_server::notify::SlackApp>, Failure> {
    let Some(cfg) = cfg else { return Ok(None) };
    let name = cfg.signing_secret.trim_start_matches("secret:");
    let secrets = warden_connectors::EnvSecrets { given: Default::default(), dir: a.secrets_dir.clone() };
    let secret = warden_connectors::Secrets::get(&secrets, name)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Failure::Invalid(format!("error: `[slack] signing_secret`: no secret `{name}` is set")))?;
    Ok(Some(warden_server::notify::SlackApp {
        signing_secret: secret,
        users: cfg.users,
        response_url_prefixes: cfg
            .response_url_prefixes
            .unwrap_or_else(warden_server::notify::SlackApp::default_prefixes),
    }))
}

/// The bundle's `connectors.toml`, if it has one: without it, approved actions rest in
/// `approved` (nothing reaches a tool).
/// The connector and the `connectors.toml` text it was built from.
type Loaded = (Arc<dyn warden_connectors::Connector>, String);

fn load_connectors(a: &ServeArgs) -> Result<Option<Loaded>, Failure> {
    let mut urls = std::collections::BTreeMap::new();
    for t in &a.tool_urls {
        let (name, url) =
            t.split_once('=').ok_or_else(|| Failure::Invalid(format!("error: --tool-url `{t}` must be NAME=URL")))?;
        urls.insert(name.to_string(), url.to_string());
    }
    let path = a.policy.join("connectors.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && urls.is_empty() => return Ok(None),
        Err(e) => return Err(Failure::Invalid(format!("error: `{}`: {e}", path.display()))),
    };
    let secrets = warden_connectors::EnvSecrets { given: Default::default(), dir: a.secrets_dir.clone() };
    let c = warden_connectors::HttpConnector::from_toml(&text, &urls, Box::new(secrets))
        .map_err(|e| Failure::Invalid(format!("error: `{}`: {e}", path.display())))?;
    tracing::info!(actions = c.actions().count(), "connectors loaded");
    // A tool that does not answer now is worth a warning, not a refusal to start: its actions
    // fail (closed) until it does.
    for (tool, health) in warden_connectors::Connector::health(&c) {
        if let Err(e) = health {
            tracing::warn!(%tool, error = %e, "a tool does not answer");
        }
    }
    Ok(Some((Arc::new(c), text)))
}

/// Opens a session to each `[[mcp.upstreams]]` (in the background; one that does not answer
/// is retried, its tools absent until it does). An upstream `mcp.toml` names but the config
/// does not is worth a warning: its tools are not offered.
fn start_upstreams(
    a: &ServeArgs,
    bundle: &warden_core::Bundle,
    configs: Vec<warden_connectors::mcp::UpstreamConfig>,
) -> Result<Option<Arc<warden_connectors::mcp::Upstreams>>, Failure> {
    for name in bundle.mcp().upstreams() {
        if !configs.iter().any(|c| &c.name == name) {
            tracing::warn!(upstream = %name, "mcp.toml maps tools of an upstream the config does not name; they are not offered");
        }
    }
    if configs.is_empty() {
        return Ok(None);
    }
    let secrets = warden_connectors::EnvSecrets { given: Default::default(), dir: a.secrets_dir.clone() };
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let upstreams = warden_connectors::mcp::Upstreams::start(configs, Box::new(secrets))
        .map_err(|e| Failure::Invalid(format!("error: {}", e.0)))?;
    if !upstreams.wait_connected(std::time::Duration::from_secs(5)) {
        for (name, health) in upstreams.health() {
            if let Err(e) = health {
                tracing::warn!(upstream = %name, error = %e, "an upstream MCP server does not answer yet; retrying");
            }
        }
    }
    tracing::info!(upstreams = ?names, "upstream MCP servers configured");
    Ok(Some(Arc::new(upstreams)))
}

pub fn run(a: ServeArgs) -> Result<(), Failure> {
    init_logs(a.log_format);
    let (_, bundle) = policy::load(&a.policy)?;
    let version = bundle.version().to_string();
    let clock = Arc::new(SystemClock);
    let at = warden_store::StoreAt::parse(a.store.as_deref()).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let data = DataDir::open_at(&a.data, &at, clock.clone(), LedgerOptions::default()).with_context(|| {
        format!("opening the data directory `{}` (store {})", a.data.display(), at.describe(&a.data))
    })?;
    let timeout = warden_core::duration::Duration::parse(&a.request_timeout)
        .map_err(|e| Failure::Invalid(format!("error: --request-timeout: {e}")))?;
    if a.agent_rate <= 0.0 || a.agent_burst < 1.0 || a.max_in_flight == 0 || timeout.as_secs() == 0 {
        return Err(Failure::Invalid("error: limits must be positive".into()));
    }
    let mut limits = Limits {
        agent_rate: a.agent_rate,
        agent_burst: a.agent_burst,
        in_flight: a.max_in_flight,
        timeout: std::time::Duration::from_secs(timeout.as_secs()),
        ..Limits::default()
    };
    let config = match &a.config {
        Some(path) => load_config(path)?,
        None => Config::default(),
    };
    let mut mcp_sessions = warden_server::limits::McpSessions::default();
    if let Some(path) = &a.config {
        config.limits.apply(&mut limits, &mut mcp_sessions, path)?;
    }
    let scheme = if a.tls_cert.is_some() { "https" } else { "http" };
    let defaults = NotifyOptions::default();
    let notify = NotifyOptions {
        public_url: config.notify.public_url.unwrap_or_else(|| format!("{scheme}://{}", a.listen)),
        attempts: config.notify.attempts.unwrap_or(defaults.attempts),
        backoff: config.notify.backoff_ms.map_or(defaults.backoff, std::time::Duration::from_millis),
        webhooks: config.notify.webhooks,
        slack_buttons: config.slack.is_some(),
        ..defaults
    };
    let slack = slack_app(&a, config.slack)?;
    let secrets = warden_connectors::EnvSecrets { given: Default::default(), dir: a.secrets_dir.clone() };
    let sinks = config
        .siem
        .into_iter()
        .map(|c| {
            warden_server::siem::Sink::from_config(c, |name| warden_connectors::Secrets::get(&secrets, name))
                .map_err(|e| Failure::Invalid(format!("error: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut connector, connectors_source) = match load_connectors(&a)? {
        Some((c, text)) => (Some(c), Some(text)),
        None => (None, None),
    };
    let upstreams = start_upstreams(&a, &bundle, config.upstreams)?;
    if let Some(mcp) = &upstreams {
        // Mapped upstream tools run through their upstream; everything else as before.
        connector = Some(Arc::new(warden_connectors::mcp::Routed { http: connector, mcp: mcp.clone() }));
    }
    let options = ServerOptions {
        audience: a.audience.clone(),
        issuers: config.issuers,
        limits,
        policy_dir: Some(a.policy.clone()),
        notify,
        connector,
        connectors_source,
        shadow: a.shadow,
        mcp: warden_server::limits::McpOptions { sessions: mcp_sessions, ..mcp_options(&a, scheme)? },
        upstreams,
        sessions: Default::default(),
        secure_cookies: a.tls_cert.is_some(),
        slack,
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            Some(warden_server::tls::acceptor(cert, key).map_err(|e| Failure::Invalid(format!("error: {e}")))?)
        }
        _ => None,
    };
    let app = AppState::with_options(data, bundle, clock, options).map_err(|e| anyhow::anyhow!(e.message))?;
    let watch = (a.policy_poll > 0).then(|| std::time::Duration::from_secs(a.policy_poll));
    if !sinks.is_empty() {
        let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(sinks = ?names, "streaming the audit log to SIEMs");
    }
    let streams = warden_server::siem::start(&app, sinks);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on `{}`", a.listen))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, %scheme, bundle = %version, "warden is serving");
        outln!("listening on {addr}");
        if let Some(every) = watch {
            tokio::spawn(warden_server::serve::watch_policy(app.clone(), every));
        }
        tokio::spawn(warden_server::serve::sweep_approvals(app.clone(), std::time::Duration::from_secs(1)));
        tokio::spawn(warden_server::serve::keep_in_step(app.clone(), std::time::Duration::from_millis(250)));
        let stop = warden_server::serve::signals();
        match tls {
            Some(acceptor) => {
                let listener =
                    warden_server::tls::TlsListener::with_bounds(listener, acceptor, &app.limits.connections)
                        .context("starting TLS")?;
                warden_server::serve::serve(listener, app, stop).await.context("serving")?;
            }
            None => warden_server::serve::serve(listener, app, stop).await.context("serving")?,
        }
        tracing::info!("stopped: in-flight requests finished, the log's tail signed");
        Ok::<(), anyhow::Error>(())
    })?;
    // The sinks finish their current step; what they did not send waits in the log.
    streams.stop();
    Ok(())
}
