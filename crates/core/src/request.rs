//! What the decision is about: the agent's request and the facts around it at decision time.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::TargetRef;

/// One piece of evidence an agent cites.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub kind: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// An agent's intent (`POST /v1/actions` body; the agent comes from its credential).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub task: String,
    pub action: String,
    /// `KIND:ID`, e.g. `host:web-01`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "host:web-01"))]
    pub target: TargetRef,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub confidence: f64,
    #[serde(default)]
    pub rationale: String,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Lifecycle state of a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    #[default]
    Open,
    Closed,
}

/// The task a request belongs to, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    pub id: String,
    #[serde(default)]
    pub state: TaskState,
    /// Trigger severity (`low`, `medium`, `high`, `critical`).
    #[serde(default = "unknown")]
    pub severity: String,
    /// Trigger source (`siem`, `email-gateway`, …).
    #[serde(default = "unknown")]
    pub source: String,
}

fn unknown() -> String {
    "unknown".into()
}

/// Status of an agent's identity record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    #[default]
    Active,
    Suspended,
    Halted,
}

/// What an emergency stop covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltScope {
    All,
    Agent,
    Action,
}

/// An emergency stop in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Halt {
    pub scope: HaltScope,
    /// The agent's SPIFFE ID or the action id, for scopes `agent` and `action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<OffsetDateTime>,
}

impl Halt {
    /// Whether this halt stops `action` by `agent` at `now`.
    pub fn matches(&self, agent: &str, action: &str, now: OffsetDateTime) -> bool {
        if self.expires_at.is_some_and(|e| e <= now) {
            return false;
        }
        match self.scope {
            HaltScope::All => true,
            HaltScope::Agent => self.id.as_deref() == Some(agent),
            HaltScope::Action => self.id.as_deref() == Some(action),
        }
    }
}

/// Budget counters for this agent × action over the last hour, as the store counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetUsage {
    /// Executions in the window.
    pub executions: u32,
    /// Distinct targets executed on in the window.
    pub distinct_targets: u32,
    /// Whether this request's target is already among them.
    pub target_seen: bool,
    /// Whether the breaker for this agent × action is open (tripped, not yet reset).
    pub breaker_open: bool,
}

/// Everything a decision depends on. [`crate::decide`] is a pure function of this and the bundle.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The agent's SPIFFE ID, from its verified credential.
    pub agent: &'a str,
    pub agent_status: AgentStatus,
    pub request: &'a ActionRequest,
    /// `None` when the task is not known; the trigger is then `unknown`.
    pub task: Option<&'a TaskInfo>,
    pub budget: BudgetUsage,
    pub halts: &'a [Halt],
    pub now: OffsetDateTime,
    /// Global shadow mode: decide and record, never execute.
    pub shadow: bool,
}
