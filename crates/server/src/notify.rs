//! Telling humans an approval needs them: webhooks, generic JSON or a Slack-compatible
//! incoming-webhook payload, sent when an approval opens, escalates and expires.
//!
//! Delivery never blocks or endangers the approval: notices go into a bounded queue drained by
//! one thread, each retried with exponential backoff; a notice that cannot be delivered (or
//! that finds the queue full) is audited as `notification.failed`, and the approval carries on.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_store::{Batch, Ledger};

use crate::model::Approval;

/// Notices waiting for delivery, at most.
const QUEUE: usize = 1024;

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Escalated,
    Expired,
    /// A budget breaker tripped: the agent × action now goes to humans until reset.
    BreakerTripped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "approval.requested",
            Kind::Escalated => "approval.escalated",
            Kind::Expired => "approval.expired",
            Kind::BreakerTripped => "breaker.tripped",
        }
    }
}

/// The payload shape a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"event", "approval": {…}, "links": {…}}`
    #[default]
    Json,
    /// A Slack incoming-webhook message: `{"text", "blocks": […]}`.
    Slack,
}

/// One configured webhook (`[[notify.webhooks]]` in `warden.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A name for logs and the audit log (never the URL, which may hold a secret).
    #[serde(default = "default_name")]
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub format: Format,
}

fn default_name() -> String {
    "webhook".into()
}

/// How notices are delivered.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    pub webhooks: Vec<Webhook>,
    /// Attempts per notice and webhook (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; doubled each time after.
    pub backoff: Duration,
    pub timeout: Duration,
    /// The server's address as people reach it, for links (`https://warden.soc.example`).
    pub public_url: String,
    /// Slack notices carry Approve / Reject buttons (a Slack app with interactivity is
    /// configured: `[slack]`).
    pub slack_buttons: bool,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            webhooks: Vec::new(),
            attempts: 4,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            public_url: "http://127.0.0.1:8443".into(),
            slack_buttons: false,
        }
    }
}

/// The generic JSON payload.
pub fn json_payload(kind: Kind, a: &Approval, public_url: &str) -> Value {
    json!({
        "event": kind.as_str(),
        "approval": {
            "id": a.id, "state": a.state, "agent": a.agent, "owner": a.owner, "task": a.task,
            "action": a.action, "target": a.target, "target_facts": a.target_facts, "params": a.params,
            "digest": a.digest, "confidence": a.confidence, "rationale": a.rationale,
            "evidence": a.evidence, "roles": a.roles, "quorum": a.quorum, "votes": a.votes.len(),
            "expires_at": a.expires_at, "caps": a.caps, "requests": a.requests,
        },
        "links": links(a, public_url),
    })
}

fn links(a: &Approval, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    json!({
        "approval": format!("{base}/v1/approvals/{}", a.id),
        "task": format!("{base}/v1/tasks/{}", a.task),
        "request": a.requests.first().map(|r| format!("{base}/v1/actions/{r}")),
    })
}

/// Text for a Slack `mrkdwn` field: `&`, `<` and `>` escaped as Slack asks, so nothing
/// interpolated can become a mention (`<!channel>`), a link (`<url|label>`) or markup that
/// spans into the next field.
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Text for a Slack `plain_text` object (never formatted or linked), cut to its 3,000-character limit.
fn plain(s: &str) -> String {
    if s.chars().count() <= 2_990 { s.to_string() } else { s.chars().take(2_990).chain("…".chars()).collect() }
}

/// The Slack-compatible payload: a header, the facts as fields, the rationale, the links;
/// with `buttons`, Approve / Reject while the approval waits (pressing one calls back into the
/// same approval rules: [`crate::slack`]).
pub fn slack_payload(kind: Kind, a: &Approval, public_url: &str, buttons: bool) -> Value {
    let title = match kind {
        Kind::Created => "Approval needed",
        Kind::Escalated => "Approval escalated: still waiting",
        Kind::Expired => "Approval expired without a decision",
        Kind::BreakerTripped => "Budget breaker tripped",
    };
    let l = links(a, public_url);
    let e = slack_escape;
    let text = format!("{title}: {} on {} by {}", e(&a.action), e(&a.target), e(&a.agent));
    // Exactly what approving authorizes comes first — the params (secrets redacted), the
    // target's facts, the task and the digest that binds them — every value escaped; what the
    // agent wrote comes last, as plain text that Slack neither formats nor links.
    let params = serde_json::to_string_pretty(&a.params).unwrap_or_default();
    let facts = a.target_facts.as_ref().map_or_else(
        || "not recorded".to_string(),
        |f| {
            format!(
                "{} · {} · owner {}{}",
                e(f["criticality"].as_str().unwrap_or("?")),
                e(f["environment"].as_str().unwrap_or("?")),
                e(f["owner"].as_str().unwrap_or("?")),
                if f["privileged"].as_bool() == Some(true) { " · privileged" } else { "" }
            )
        },
    );
    let evidence = if a.evidence.is_empty() {
        "none".to_string()
    } else {
        a.evidence
            .iter()
            .map(|x| format!("- {} {} {}", x.kind, x.reference, x.summary.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let agent_words = plain(&format!("Rationale: {}\nEvidence:\n{evidence}", a.rationale));
    // The decision's caps: what lowered it — the input the task took in among them (DESIGN §14).
    let why = if a.caps.is_empty() {
        "its grant is below autonomy".to_string()
    } else {
        a.caps.iter().map(|c| format!("{}: {}", c.code.as_str(), c.reason)).collect::<Vec<_>>().join("\n")
    };
    let mut message = json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Action*\n{}", e(&a.action))},
                {"type": "mrkdwn", "text": format!("*Target*\n{}", e(&a.target))},
                {"type": "mrkdwn", "text": format!("*Target facts (inventory)*\n{facts}")},
                {"type": "mrkdwn", "text": format!("*Agent*\n{}", e(&a.agent))},
                {"type": "mrkdwn", "text": format!("*Task*\n{}", e(&a.task))},
                {"type": "mrkdwn", "text": format!("*Approvers*\n{} (quorum {})", e(&a.roles.join(", ")), a.quorum)},
                {"type": "mrkdwn", "text": format!("*Expires*\n{}", e(&a.expires_at))},
                {"type": "mrkdwn", "text": format!("*Confidence (agent's claim)*\n{:.2}", a.confidence)},
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Why a human decides*"}},
            {"type": "section", "text": {"type": "plain_text", "text": plain(&why)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Params (what approving runs)*"}},
            {"type": "section", "text": {"type": "plain_text", "text": plain(&params)}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("<{}|approval {}> · <{}|task {}>",
                    e(l["approval"].as_str().unwrap_or_default()), e(&a.id),
                    e(l["task"].as_str().unwrap_or_default()), e(&a.task))},
                {"type": "mrkdwn", "text": format!("digest {}", e(&a.digest))},
            ]},
            {"type": "divider"},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*The agent's own words* (shown as written, not checked by Warden)"}},
            {"type": "section", "text": {"type": "plain_text", "text": agent_words}},
        ],
    });
    if !a.votes.is_empty()
        && let Some(blocks) = message["blocks"].as_array_mut()
    {
        let votes = a.votes.iter().map(|v| format!("{} ({})", e(&v.user), e(&v.role))).collect::<Vec<_>>().join(", ");
        let line = format!("*Approved so far* ({} of {}): {votes}", a.votes.len(), a.quorum);
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line}}));
    }
    if buttons
        && a.state == crate::model::ApprovalState::Pending
        && matches!(kind, Kind::Created | Kind::Escalated)
        && let Some(blocks) = message["blocks"].as_array_mut()
    {
        blocks.push(json!({"type": "actions", "block_id": "warden_decide", "elements": [
            {"type": "button", "action_id": SLACK_APPROVE, "style": "primary", "value": a.id,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": SLACK_REJECT, "style": "danger", "value": a.id,
             "text": {"type": "plain_text", "text": "Reject"},
             "confirm": {"title": {"type": "plain_text", "text": "Reject this action?"},
                         "text": {"type": "plain_text", "text": plain(&format!("{} on {} will not run.", a.action, a.target))},
                         "confirm": {"type": "plain_text", "text": "Reject"},
                         "deny": {"type": "plain_text", "text": "Cancel"}}},
        ]}));
    }
    message
}

/// A tripped breaker, as notices show it.
#[derive(Debug, Clone)]
pub struct BreakerTrip {
    pub agent: String,
    pub action: String,
    pub task: String,
    pub request: String,
    pub caps: Value,
}

fn breaker_json(b: &BreakerTrip, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    json!({
        "event": Kind::BreakerTripped.as_str(),
        "breaker": {"agent": b.agent, "action": b.action, "task": b.task, "request": b.request, "caps": b.caps},
        "links": if b.request.is_empty() {
            json!({"task": format!("{base}/v1/tasks/{}", b.task), "inbox": format!("{base}/console/inbox")})
        } else {
            json!({"request": format!("{base}/v1/actions/{}", b.request), "task": format!("{base}/v1/tasks/{}", b.task)})
        },
    })
}

/// A breaker tripped by the approval backlog, not by a budget (the first cap says which).
fn by_backlog(b: &BreakerTrip) -> bool {
    b.caps.get(0).and_then(|c| c.get("code")).and_then(Value::as_str) == Some("approval_backlog")
}

fn breaker_slack(b: &BreakerTrip, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    let title = if by_backlog(b) { "Approval backlog: breaker tripped" } else { "Budget breaker tripped" };
    let context = if b.request.is_empty() {
        let reason = b.caps.get(0).and_then(|c| c.get("reason")).and_then(Value::as_str).unwrap_or_default();
        format!("{} — <{}/console/inbox|the inbox>", slack_escape(reason), slack_escape(base))
    } else {
        format!("<{}/v1/actions/{}|request {}>", slack_escape(base), slack_escape(&b.request), slack_escape(&b.request))
    };
    json!({
        "text": format!("{title}: {} × {}", slack_escape(&b.agent), slack_escape(&b.action)),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Agent*\n{}", slack_escape(&b.agent))},
                {"type": "mrkdwn", "text": format!("*Action*\n{}", slack_escape(&b.action))},
                {"type": "mrkdwn", "text": "*Now*\nevery request goes to a human until `warden breaker reset`"},
            ]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    })
}

#[derive(Debug)]
enum Job {
    Approval { kind: Kind, approval: Box<Approval> },
    Breaker(BreakerTrip),
}

impl Job {
    fn kind(&self) -> Kind {
        match self {
            Job::Approval { kind, .. } => *kind,
            Job::Breaker(_) => Kind::BreakerTripped,
        }
    }
}

/// Sends notices; cheap to call from a request's path (it only queues).
#[derive(Debug)]
pub struct Notifier {
    tx: Option<SyncSender<Job>>,
    /// Where failed deliveries are audited.
    ledger: Option<Arc<Ledger>>,
    /// The server's address as people reach it (for links in messages).
    public_url: String,
}

impl Notifier {
    /// A notifier that sends nothing (no webhook configured).
    pub fn disabled() -> Self {
        Notifier { tx: None, ledger: None, public_url: NotifyOptions::default().public_url }
    }

    /// The server's address as people reach it.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Starts the delivery thread for `options.webhooks`; failures are audited in `ledger`.
    pub fn start(options: NotifyOptions, ledger: Arc<Ledger>) -> Self {
        let ledger = Some(ledger);
        let public_url = options.public_url.clone();
        if options.webhooks.is_empty() {
            return Notifier { tx: None, ledger, public_url };
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let worker_ledger = ledger.clone();
        let spawned = std::thread::Builder::new()
            .name("warden-notify".into())
            .spawn(move || deliver_all(rx, &options, &worker_ledger));
        match spawned {
            Ok(_) => Notifier { tx: Some(tx), ledger, public_url },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the notifier; notices will be audited as failed");
                Notifier { tx: None, ledger, public_url }
            }
        }
    }

    /// Queues a notice about `approval`; never blocks.
    pub fn send(&self, kind: Kind, approval: &Approval) {
        self.queue(Job::Approval { kind, approval: Box::new(approval.clone()) });
    }

    /// Queues a notice about a tripped breaker; never blocks.
    pub fn breaker(&self, trip: BreakerTrip) {
        self.queue(Job::Breaker(trip));
    }

    fn queue(&self, job: Job) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                audit_failure(&self.ledger, &job, "all", 0, "the notification queue is full")
            }
            Err(TrySendError::Disconnected(job)) => {
                audit_failure(&self.ledger, &job, "all", 0, "the notifier has stopped")
            }
        }
    }
}

fn deliver_all(rx: Receiver<Job>, options: &NotifyOptions, ledger: &Option<Arc<Ledger>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A redirect is not delivery, and is never followed: a webhook's answer cannot send
        // the notice (or its headers) elsewhere.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_global(Some(options.timeout))
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    while let Ok(job) = rx.recv() {
        for hook in &options.webhooks {
            let payload = match (&job, hook.format) {
                (Job::Approval { kind, approval }, Format::Json) => json_payload(*kind, approval, &options.public_url),
                (Job::Approval { kind, approval }, Format::Slack) => {
                    slack_payload(*kind, approval, &options.public_url, options.slack_buttons)
                }
                (Job::Breaker(b), Format::Json) => breaker_json(b, &options.public_url),
                (Job::Breaker(b), Format::Slack) => breaker_slack(b, &options.public_url),
            };
            let attempts = options.attempts.max(1);
            let mut last = String::new();
            let mut delivered = false;
            for n in 0..attempts {
                if n > 0 {
                    std::thread::sleep(options.backoff.saturating_mul(1 << (n - 1).min(16)));
                }
                match agent.post(&hook.url).send_json(&payload) {
                    Ok(res) if res.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(res) => last = format!("HTTP {}", res.status().as_u16()),
                    // The error may quote the URL; keep only its kind.
                    Err(e) => last = error_kind(&e),
                }
            }
            if !delivered {
                tracing::warn!(webhook = %hook.name, notice = job.kind().as_str(), reason = %last, "notification failed");
                audit_failure(ledger, &job, &hook.name, attempts, &last);
            }
        }
    }
}

fn error_kind(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(io) => format!("connection failed ({:?})", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        _ => "request failed".into(),
    }
}

fn audit_failure(ledger: &Option<Arc<Ledger>>, job: &Job, webhook: &str, attempts: u32, reason: &str) {
    let Some(ledger) = ledger else { return };
    let (task, action, request, subject) = match job {
        Job::Approval { approval: a, .. } => (&a.task, &a.action, a.requests.first(), json!({"approval": a.id})),
        Job::Breaker(b) => (&b.task, &b.action, Some(&b.request), json!({"agent": b.agent})),
    };
    let mut data = json!({"notice": job.kind().as_str(), "webhook": webhook, "attempts": attempts, "reason": reason});
    if let (Some(d), Some(extra)) = (data.as_object_mut(), subject.as_object()) {
        d.extend(extra.clone());
    }
    let mut event =
        Event::new(EventType::NotificationFailed, Actor::system("notifier")).task(task).action(action).data(data);
    if let Some(r) = request {
        event = event.request(r);
    }
    if let Err(e) = ledger.commit(Batch::new().event(event)) {
        tracing::error!(error = %e, "cannot audit a failed notification");
    }
}

/// The `action_id`s of a Slack notice's buttons.
pub const SLACK_APPROVE: &str = "warden_approve";
pub const SLACK_REJECT: &str = "warden_reject";

/// A Slack app whose interactive messages approve and reject (`[slack]` in `--config`): the
/// signing secret its callbacks are verified with, and which Warden user each Slack user is.
#[derive(Clone)]
pub struct SlackApp {
    pub signing_secret: String,
    /// Slack user id (`U0123ABCD`) → Warden user id.
    pub users: std::collections::BTreeMap<String, String>,
    /// Where an interaction's `response_url` may point (default `https://hooks.slack.com/`).
    pub response_url_prefixes: Vec<String>,
}

impl SlackApp {
    /// Slack's own hosts for `response_url`.
    pub fn default_prefixes() -> Vec<String> {
        vec!["https://hooks.slack.com/".into()]
    }
}

impl std::fmt::Debug for SlackApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApp")
            .field("signing_secret", &"[redacted]")
            .field("users", &self.users)
            .field("response_url_prefixes", &self.response_url_prefixes)
            .finish()
    }
}
