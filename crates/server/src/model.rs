//! The records the gateway keeps, typed, and how they map onto the store's tables.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use time::OffsetDateTime;
use warden_core::decision::{Cap, Decision, PolicyRef};
use warden_core::request::{AgentStatus, Evidence, TaskState};
use warden_store::{Record, Table};

use crate::error::{ApiError, Code};

/// Milliseconds since the Unix epoch: the store's `at` column.
pub fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The time of a store `at` (milliseconds since the Unix epoch).
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A fresh id: `<prefix>_`, 12 hex digits of the time in milliseconds (so ids sort by
/// creation), 16 random hex digits.
pub fn new_id(prefix: &str) -> Result<String, ApiError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|_| ApiError::new(Code::RandomUnavailable, "no randomness available"))?;
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Ok(format!("{prefix}_{:012x}{}", ms & 0xffff_ffff_ffff, b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
}

/// One page of a list, and where the next one starts (`None`: this is the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<warden_store::Cursor>,
}

/// A typed record: its table, its body and its indexed keys.
pub trait Model: Serialize + DeserializeOwned {
    const TABLE: Table;
    fn id(&self) -> &str;
    /// The record with its indexed keys (version 0: set it before an update).
    fn record(&self) -> Record;
    /// The record's table, id and body, without indexed keys: what [`Model::record`] adds its
    /// keys to.
    fn bare_record(&self) -> Record {
        Record::new(Self::TABLE, self.id(), serde_json::to_value(self).unwrap_or(Value::Null))
    }
    fn from_record(r: &Record) -> Result<Self, ApiError> {
        serde_json::from_value(r.body.clone()).map_err(|e| {
            tracing::error!(table = r.table.name(), id = %r.id, error = %e, "unreadable record");
            ApiError::new(Code::StoreUnavailable, "a stored record cannot be read")
        })
    }
}

/// A registered workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agent {
    /// Its SPIFFE ID.
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub status: AgentStatus,
    pub created_at: String,
}

impl Model for Agent {
    const TABLE: Table = Table::Agents;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        let status = serde_json::to_value(self.status).ok().and_then(|v| v.as_str().map(str::to_string));
        let mut r = self.bare_record().agent(&self.id);
        r.state = status;
        r
    }
}

/// A human principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub roles: Vec<String>,
    /// `sha256:<hex>` of the API token; the token itself is never stored.
    pub token_hash: String,
    #[serde(default = "active")]
    pub status: String,
    /// The OIDC identities (`ISSUER#SUB`) that sign in as this user: one person, one voter,
    /// whether they come with the API token or through the identity provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<String>,
}

fn active() -> String {
    "active".into()
}

impl User {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

impl Model for User {
    const TABLE: Table = Table::Users;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        self.bare_record().state(&self.status).key(&self.token_hash)
    }
}

/// What started a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Not blank: `siem`, `email-gateway`, …
    #[schema(schema_with = source_schema)]
    pub source: String,
    #[serde(default)]
    pub alert_id: String,
    #[serde(default = "unknown")]
    pub severity: String,
    #[serde(default)]
    pub summary: String,
}

fn unknown() -> String {
    "unknown".into()
}

fn source_schema() -> utoipa::openapi::schema::Object {
    crate::input::not_blank("What raised the task (not blank): `siem`, `email-gateway`, …", "siem")
}

/// An incident or mission agents work within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub trigger: Trigger,
    pub state: TaskState,
    /// Who opened it (`agent:<SPIFFE ID>` or `user:<id>`).
    pub opened_by: String,
    /// Whether a principal holding a role the bundle maps to the trigger's source asserted it
    /// (`authority.toml [sources]`; by default the approver, step-up and incident-commander
    /// roles for any source; an integration such as the email gateway gets a role of its own
    /// that the file maps to its source). A task an agent, a `tool` credential or a role-less
    /// person opened is not verified: its severity and source are only their word, and policy
    /// sees `context.task.verified == false` (DESIGN §5, §6).
    #[serde(default)]
    pub verified: bool,
    /// The role whose word verified the trigger (`authority.toml [sources]`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouched_by: Option<String>,
    /// The agents that may act in it: those its opener named, or, opened by an agent, that
    /// agent alone. Empty: every agent (an incident the whole SOC works).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    pub opened_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// What its agents took in (DESIGN §14): results Warden handed back labelled untrusted or
    /// confidential, and what agents declared (`inputs`). Only ever added to by agents and
    /// Warden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taint: Vec<warden_core::request::Taint>,
    /// What has been done in it (DESIGN §14): each action class that executed and succeeded
    /// here (rolled back since or not), with how many times. Counted from the executions when
    /// the task is read through the API; never stored. Policy reads it as
    /// `context.task.history`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub history: std::collections::BTreeMap<String, u32>,
}

/// The most marks of taint a task keeps (see [`Task::taint_with`]).
pub const MAX_TAINT: usize = 64;

/// The record `id` as a `T`, and the version it was read at.
pub fn versioned<T: Model>(store: &dyn warden_store::Store, id: &str) -> Result<Option<(T, u64)>, ApiError> {
    store.get(T::TABLE, id)?.map(|r| Ok((T::from_record(&r)?, r.version))).transpose()
}

impl Task {
    /// Adds the marks not on it yet: one per label, source and party — and, for Warden's own,
    /// per request (two results are two marks however alike their words), so an agent can
    /// neither pre-empt Warden's mark nor fold a second read into a first a human cleared.
    /// Whether any was new. A task keeps at most [`MAX_TAINT`] marks: past that, the new mark
    /// is kept and the oldest mark whose label another mark still holds goes — an agent's
    /// declaration before any of Warden's — so the labels (what policy reads) stay exact and
    /// the newest result Warden labelled is always on the task for a human to see.
    pub fn taint_with(&mut self, marks: impl IntoIterator<Item = warden_core::request::Taint>) -> bool {
        let mut added = false;
        for m in marks {
            let known = self.taint.iter().any(|t| {
                t.label == m.label
                    && t.source == m.source
                    && t.by == m.by
                    && (m.by != "warden" || t.request == m.request)
            });
            if known {
                continue;
            }
            if self.taint.len() >= MAX_TAINT {
                let held_twice = |i: usize| {
                    let label = self.taint[i].label;
                    label == m.label || self.taint.iter().filter(|t| t.label == label).count() > 1
                };
                let evict = (0..self.taint.len())
                    .find(|&i| self.taint[i].by != "warden" && held_twice(i))
                    .or_else(|| (0..self.taint.len()).find(|&i| held_twice(i)));
                match evict {
                    Some(i) => {
                        self.taint.remove(i);
                    }
                    None => continue,
                }
            }
            self.taint.push(m);
            added = true;
        }
        added
    }
}

impl Model for Task {
    const TABLE: Table = Table::Tasks;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        let state = if self.state == TaskState::Open { "open" } else { "closed" };
        // The history is counted from the executions, never stored with the task.
        let mut r = self.bare_record().task(&self.id).state(state);
        if let Some(body) = r.body.as_object_mut() {
            body.remove("history");
        }
        r
    }
}

/// An action request and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub id: String,
    pub agent: String,
    pub task: String,
    pub action: String,
    pub target: String,
    pub params: serde_json::Map<String, Value>,
    pub confidence: f64,
    pub rationale: String,
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body: the same key with another body is a conflict.
    pub request_digest: String,
    /// The action digest (DESIGN §6): SHA-256 of the canonical `{agent, task, action, target,
    /// params}`; what an approval and a lease are bound to. Empty on records older than it.
    #[serde(default)]
    pub digest: String,
    /// For a request folded into an approval another request opened: that request, whose one
    /// execution this request shares (it is never executed on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_into: Option<String>,
    /// DESIGN §8: denied | advised | pending_approval | approved | …
    pub state: String,
    pub created_at: String,
    pub created_ms: i64,
    /// The approval this request waits on (or waited on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// When an upstream MCP tool performs it (a mapped tool was called): `UPSTREAM/TOOL`.
    /// The tool's arguments are rebuilt from target and params when it executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl ActionRecord {
    /// The action digest of what this record now says under `bundle` (recomputed, not the
    /// stored one; secret params as their commitments).
    pub fn computed_digest(&self, bundle: &warden_core::Bundle) -> Result<String, ApiError> {
        bundle
            .action_digest(&self.agent, &self.task, &self.action, &self.target, &self.params)
            .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the request cannot be digested: {e}")))
    }

    /// The unique key idempotency is enforced on.
    pub fn idempotency_index(agent: &str, key: &str) -> String {
        format!("{agent}\u{0}{key}")
    }
}

impl Model for ActionRecord {
    const TABLE: Table = Table::Requests;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        let mut r = self
            .bare_record()
            .agent(&self.agent)
            .task(&self.task)
            .state(&self.state)
            .kind(&self.action)
            .at(self.created_ms);
        r.key = self.idempotency_key.as_deref().map(|k| Self::idempotency_index(&self.agent, k));
        r
    }
}

/// The decision on one request, stored under the request's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    pub agent: String,
    pub task: String,
    pub decision: Decision,
    pub decided_at: String,
    pub decided_ms: i64,
}

impl Model for DecisionRecord {
    const TABLE: Table = Table::Decisions;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        self.bare_record()
            .agent(&self.agent)
            .task(&self.task)
            .state(self.decision.outcome.to_string())
            .at(self.decided_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
    Cancelled,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
            ApprovalState::Cancelled => "cancelled",
        }
    }

    /// The state the covered requests move to (DESIGN §8 request states).
    pub(crate) fn request_state(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending_approval",
            other => other.as_str(),
        }
    }
}

/// One approver's vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vote {
    pub user: String,
    /// The required role the approver holds.
    pub role: String,
    pub at: String,
    #[serde(default)]
    pub reason: String,
}

/// A request waiting for humans, and what they decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    /// `apr_…`
    pub id: String,
    pub state: ApprovalState,
    pub agent: String,
    /// The agent's accountable owner (separation of duties).
    pub owner: String,
    pub task: String,
    pub action: String,
    pub target: String,
    /// The action digest (DESIGN §6) of exactly what approving authorizes: agent, task,
    /// action, target and params. Only requests with this digest fold into the approval.
    #[serde(default)]
    pub digest: String,
    /// The parameters approving authorizes, those the catalog marks `secret` redacted.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// What the inventory says of the target (criticality, environment, owner, privileged,
    /// tags; the worst case for a target it does not know), when the decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub target_facts: Option<serde_json::Value>,
    /// The request that opened it — the one that executes once it is approved — then
    /// identical ones (same digest) folded into it, which share that one execution.
    pub requests: Vec<String>,
    pub confidence: f64,
    pub rationale: String,
    pub evidence: Vec<Evidence>,
    /// Any one of these roles may approve.
    pub roles: Vec<String>,
    /// Distinct approvers needed.
    pub quorum: u32,
    /// The agent's owner may not approve.
    pub separation_of_duties: bool,
    pub notify: Vec<String>,
    /// Why the decision went to humans.
    pub caps: Vec<Cap>,
    pub policies: Vec<PolicyRef>,
    pub bundle_version: String,
    /// The action's lease TTL from the catalog, in seconds: approvers may shorten it, never
    /// lengthen it.
    pub lease_ttl_secs: u64,
    /// The shortest lease TTL an approver set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowed_lease_ttl_secs: Option<u64>,
    pub created_at: String,
    pub created_ms: i64,
    pub expires_at: String,
    pub expires_ms: i64,
    pub votes: Vec<Vote>,
    /// Whether the escalation notice went out.
    #[serde(default)]
    pub escalated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// The human (or `system`) whose action ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For an undo approval (a rollback that needs more than one person): the execution it
    /// undoes. It covers no request; approving it runs the compensation `action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
}

impl Approval {
    /// When the sweeper must next look at this pending approval: its escalation notice (two
    /// thirds through its time), then its expiry.
    pub fn due_ms(&self) -> i64 {
        if self.escalated { self.expires_ms } else { self.created_ms + (self.expires_ms - self.created_ms) * 2 / 3 }
    }
}

/// Identical pending requests — the same action digest: agent, task, action, target and
/// params — fold into one approval.
pub fn fold_key(digest: &str) -> String {
    format!("fold\u{0}{digest}")
}

impl Model for Approval {
    const TABLE: Table = Table::Approvals;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        let mut r =
            self.bare_record().agent(&self.agent).task(&self.task).state(self.state.as_str()).kind(&self.action);
        // Only a pending approval holds its fold key, so a new one can open once it ends. Its
        // `at` is when the sweeper is next due, so a sweep reads only what is due; an ended
        // one's is its expiry.
        if self.state == ApprovalState::Pending {
            // An approval from before digests keeps the key it was stored with.
            let key = if self.digest.is_empty() {
                format!("fold\u{0}{}\u{0}{}\u{0}{}", self.agent, self.action, self.target)
            } else {
                fold_key(&self.digest)
            };
            r = r.key(key).at(self.due_ms());
        } else {
            r = r.at(self.expires_ms);
        }
        r
    }
}

/// A halt as stored: the halt itself and who set and lifted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaltRecord {
    /// `halt_…`
    pub id: String,
    #[schema(value_type = Object)]
    pub halt: warden_core::request::Halt,
    pub set_by: String,
    pub set_at: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_reason: Option<String>,
}

impl Model for HaltRecord {
    const TABLE: Table = Table::Halts;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        self.bare_record().state(if self.active { "active" } else { "lifted" })
    }
}

/// The halts in force, from the store.
pub fn active_halts(store: &dyn warden_store::Store) -> Result<Vec<warden_core::request::Halt>, ApiError> {
    Ok(halt_records(store, true)?.into_iter().map(|(r, _)| r.halt).collect())
}

/// Halt records (active ones, or all), with their versions.
pub fn halt_records(store: &dyn warden_store::Store, only_active: bool) -> Result<Vec<(HaltRecord, u64)>, ApiError> {
    let q = warden_store::Query { state: only_active.then(|| "active".to_string()), ..warden_store::Query::default() };
    store.find(Table::Halts, &q)?.iter().map(|r| Ok((HaltRecord::from_record(r)?, r.version))).collect()
}
