//! What the pages show, as plain data for the templates (`templates/console/`). Templates are
//! compiled by askama and escape every value they interpolate (HTML-escaping is on for
//! `.html` templates, and no template uses `|safe`): an agent's rationale is text, never markup.

use askama::Template;
use axum::response::Html;
use serde_json::Value;

/// Renders a page; a template that fails to render is a 503 page, never half a page.
pub fn html<T: Template>(page: &T) -> Html<String> {
    match page.render() {
        Ok(s) => Html(s),
        Err(e) => {
            tracing::error!(error = %e, "a console page failed to render");
            Html("<!doctype html><title>Warden</title><p>this page failed to render</p>".into())
        }
    }
}

/// What every signed-in page has: who, the form token, the halts in force, where we are.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub user: String,
    pub roles: String,
    pub csrf: String,
    pub halts: Vec<HaltLine>,
    pub nav: &'static str,
    pub notice: Option<String>,
    pub admin: bool,
    /// Whether this person holds a halting role (the Halt buttons and the emergency stop).
    pub halter: bool,
}

#[derive(Debug, Clone)]
pub struct HaltLine {
    pub scope: String,
    pub reason: String,
    pub by: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub code: &'static str,
    pub message: String,
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub problem: Option<String>,
}

/// One `key: value` line, the value as text.
#[derive(Debug, Clone)]
pub struct Pair {
    pub key: String,
    pub value: String,
}

pub fn pair(key: impl Into<String>, value: impl Into<String>) -> Pair {
    Pair { key: key.into(), value: value.into() }
}

/// A JSON value as one line of text (strings without their quotes).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// An object's fields as lines, nested objects flattened to `a.b`.
pub fn pairs(v: &Value) -> Vec<Pair> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<Pair>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => out.push(pair(prefix, text(other))),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

#[derive(Debug, Clone)]
pub struct Card {
    /// Set when the agent has so many requests waiting that it may be flooding the inbox.
    pub flooding: Option<String>,
    pub id: String,
    pub agent: String,
    pub action: String,
    pub target: String,
    pub facts: Vec<Pair>,
    pub params: Vec<Pair>,
    pub digest: String,
    pub task: String,
    pub task_title: String,
    pub trigger: Vec<Pair>,
    pub verified: bool,
    pub confidence: String,
    pub rationale: String,
    pub evidence: Vec<Pair>,
    pub caps: Vec<Pair>,
    pub policies: Vec<Pair>,
    pub track: String,
    pub votes: Vec<Pair>,
    pub quorum: String,
    pub roles: String,
    pub created_at: String,
    pub expires_at: String,
    pub left: String,
    pub request: String,
    /// Why I may not approve (`None`: the button is offered).
    pub no_approve: Option<String>,
    pub no_reject: Option<String>,
}

#[derive(Template)]
#[template(path = "console/inbox.html")]
pub struct InboxPage {
    pub chrome: Chrome,
    pub cards: Vec<Card>,
    pub next: Option<String>,
    pub all: bool,
    /// Pending approvals by agent × action, largest first.
    pub backlog: Vec<BacklogLine>,
    /// The agent × action the cards are narrowed to, if any (and the query that keeps it).
    pub only: Option<(String, String)>,
    pub only_query: String,
}

/// One agent × action's pending approvals, as one line of the inbox.
#[derive(Debug, Clone)]
pub struct BacklogLine {
    pub agent: String,
    pub action: String,
    pub pending: usize,
    /// `host:web-42, host:web-43 and 35 more`.
    pub targets: String,
    /// The inbox narrowed to this agent × action.
    pub link: String,
    pub flooding: bool,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub at: String,
    pub agent: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub state: String,
}

#[derive(Template)]
#[template(path = "console/activity.html")]
pub struct ActivityPage {
    pub chrome: Chrome,
    pub rows: Vec<Row>,
    pub agent: String,
    pub action: String,
    pub outcome: String,
    /// The states to filter by, and which is chosen.
    pub outcomes: Vec<(&'static str, bool)>,
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub title: &'static str,
    pub lines: Vec<Pair>,
}

#[derive(Debug, Clone)]
pub struct Cited {
    pub seq: u64,
    pub kind: String,
    pub time: String,
    pub actor: String,
    pub verified: bool,
}

#[derive(Template)]
#[template(path = "console/action.html")]
pub struct ActionPage {
    pub chrome: Chrome,
    pub id: String,
    pub state: String,
    pub sections: Vec<Section>,
    pub entries: Vec<Cited>,
    pub checkpoint: String,
    /// The rollback form is offered (succeeded, reversible, and I hold a role for it).
    pub rollback: bool,
    pub rollback_roles: String,
}

#[derive(Debug, Clone)]
pub struct GrantLine {
    pub action: String,
    pub level: u8,
    pub conditions: String,
    pub thresholds: String,
    pub approvers: String,
    pub budget: String,
    pub breaker_open: bool,
}

#[derive(Debug, Clone)]
pub struct AgentView {
    pub id: String,
    pub status: String,
    pub owner: String,
    pub purpose: String,
    pub grants: Vec<GrantLine>,
}

#[derive(Template)]
#[template(path = "console/reports.html")]
pub struct ReportsPage {
    pub chrome: Chrome,
    /// The window's choices (`7d`, …, `all`), and the one shown.
    pub windows: Vec<&'static str>,
    pub since: String,
    /// Whose agents: "every agent", or the list.
    pub scope: String,
    pub autonomy: crate::reports::AutonomyView,
    pub controls: crate::reports::ControlsView,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
pub struct AgentsPage {
    pub chrome: Chrome,
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Clone)]
pub struct EntryLine {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub actor: String,
    pub subject: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    pub chrome: Chrome,
    pub size: u64,
    pub checkpoint: Option<String>,
    pub checkpoint_size: u64,
    pub entries: Vec<EntryLine>,
    pub verdict: Option<(bool, String)>,
}

#[derive(Debug, Clone)]
pub struct LoadLine {
    pub seq: u64,
    pub time: String,
    pub version: String,
    pub actor: String,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct PolicyGrant {
    pub agent: String,
    pub file: String,
    pub grant: GrantLine,
}

#[derive(Template)]
#[template(path = "console/policy.html")]
pub struct PolicyPage {
    pub chrome: Chrome,
    pub version: String,
    pub loads: Vec<LoadLine>,
    pub searched: u64,
    pub grants: Vec<PolicyGrant>,
}
