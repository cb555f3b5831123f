//! What the decision is about: the agent's request and the facts around it at decision time.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::canonical;
use crate::inventory::TargetRef;

/// The action digest (DESIGN §6): `sha256:` and the hex SHA-256 of the RFC 8785 canonical JSON
/// of `{agent, task, action, target, params}` — exactly what an approval authorizes and a lease
/// allows. Confidence, rationale, evidence and the idempotency key are not part of it: two
/// requests with equal digests would do the same thing.
pub fn action_digest(
    agent: &str,
    task: &str,
    action: &str,
    target: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, canonical::CanonicalError> {
    use sha2::{Digest, Sha256};
    let value = serde_json::json!({
        "agent": agent, "task": task, "action": action, "target": target, "params": params,
    });
    let bytes = canonical::to_vec(&value)?;
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

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
    #[cfg_attr(feature = "openapi", schema(schema_with = target_schema))]
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
    /// Content the agent took in outside Warden (DESIGN §14): it taints the task, for this
    /// request and every later one, until a human clears it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub inputs: Vec<Input>,
}

/// `KIND:ID` with an id of one spelling: the pattern [`crate::inventory::target_pattern`].
#[cfg(feature = "openapi")]
fn target_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(crate::inventory::target_pattern()))
        .description(Some(
            "`KIND:ID`, e.g. `host:web-01`: no control, space or invisible format character, no `.` or `..` path segment",
        ))
        .examples([serde_json::json!("host:web-01")])
        .build()
}

impl ActionRequest {
    /// The request with its params as the audit log records them (RFC 8785 canonical JSON): an
    /// integral float (`4242.0`) is the integer it equals (`4242`). The server decides, digests
    /// and stores these, so a decision replayed from the log meets exactly what was decided.
    pub fn with_canonical_params(mut self) -> Self {
        let value = serde_json::Value::Object(std::mem::take(&mut self.params));
        self.params = match crate::audit::canonical::to_vec(&value)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        {
            Some(serde_json::Value::Object(m)) => m,
            // Not representable canonically (validation refuses it): kept as sent.
            _ => match value {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        };
        self
    }

    /// What makes a request malformed whatever the policy: a confidence that is not a finite
    /// number in [0, 1]. Such a request is refused as input, never decided (a decision would
    /// record a band that means nothing).
    pub fn validate(&self) -> Result<(), String> {
        if !self.confidence.is_finite() || !(0.0..=1.0).contains(&self.confidence) {
            return Err(format!("`confidence` must be a number between 0 and 1, not `{}`", self.confidence));
        }
        self.target.check()?;
        self.check_inputs()?;
        for (name, v) in &self.params {
            exact_numbers(v).map_err(|n| {
                format!(
                    "param `{name}` holds {n}, an integer beyond ±(2^53−1): it cannot be digested and logged \
                     exactly; send it as a string"
                )
            })?;
        }
        Ok(())
    }
}

impl Input {
    /// The mark it leaves on a task: the agent's word, with the request that carried it.
    pub fn mark(&self, request: Option<&str>) -> Taint {
        Taint {
            label: self.label,
            source: self.source.clone(),
            request: request.map(str::to_string),
            by: "agent".into(),
        }
    }
}

/// How many inputs one request may declare.
pub const MAX_INPUTS: usize = 16;

impl ActionRequest {
    /// At most [`MAX_INPUTS`] inputs, each with a source of 1 to 512 characters and no control
    /// character (a source is shown to approvers as it was sent).
    pub fn check_inputs(&self) -> Result<(), String> {
        if self.inputs.len() > MAX_INPUTS {
            return Err(format!("at most {MAX_INPUTS} `inputs` per request, not {}", self.inputs.len()));
        }
        match self
            .inputs
            .iter()
            .find(|i| i.source.chars().all(blank) || i.source.chars().count() > 512 || i.source.chars().any(invisible))
        {
            Some(i) => Err(format!(
                "an input's `source` must be 1 to 512 characters, not blank, without control or invisible format \
                 characters, not `{}`",
                i.source.chars().filter(|c| !invisible(*c)).take(64).collect::<String>()
            )),
            None => Ok(()),
        }
    }
}

/// The largest integer every JSON reader (and RFC 8785) holds exactly: 2^53 − 1.
pub const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// Refuses, naming it, an integer in `v` beyond ±[`MAX_EXACT_INTEGER`]: canonical JSON
/// writes numbers as IEEE doubles, so such a value would be digested and logged rounded —
/// what the log says would not be what runs.
pub fn exact_numbers(v: &serde_json::Value) -> Result<(), String> {
    match v {
        serde_json::Value::Number(n) => {
            // An integral value beyond the bound, however it was written (`2^64` or `1e300`
            // arrive as floats): JSON Schema calls it an integer too.
            let too_big = n.as_u64().is_some_and(|u| u > MAX_EXACT_INTEGER)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() > MAX_EXACT_INTEGER)
                || (n.is_f64() && n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() > MAX_EXACT_INTEGER as f64));
            if too_big { Err(n.to_string()) } else { Ok(()) }
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(exact_numbers),
        serde_json::Value::Object(m) => m.values().try_for_each(exact_numbers),
        _ => Ok(()),
    }
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
    /// Whether a trusted party (a human, or an integration with a credential of its own)
    /// asserted the trigger. An agent's word about its own task is not verified: policy must
    /// not let it raise the agent's autonomy (DESIGN §6).
    #[serde(default)]
    pub verified: bool,
    /// The agents that may act in the task (its opener named them; an agent's own task is
    /// its alone). Empty: every agent. Another agent's request in it is denied
    /// (`out_of_scope`): no agent borrows a task — and its verified facts — it was not given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// What the task's agents have taken in (DESIGN §14): every mark stays until a human
    /// clears it. Policy reads the labels as `context.task.taint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taint: Vec<Taint>,
    /// What has been done in the task (DESIGN §14): each action class that executed and
    /// succeeded here, by any of its agents, with how many times. Rolled-back executions still
    /// count (they were done); failed and unknown ones do not. Policy reads it as
    /// `context.task.history`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub history: std::collections::BTreeMap<String, u32>,
}

/// A label a task carries: what its agents took in that lowers what they may do on their own.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaintLabel {
    /// Content an outsider could have written (an email body, a web page, a ticket comment).
    Untrusted,
    /// Confidential data: what sends data outside needs a human after it.
    Confidential,
}

impl TaintLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintLabel::Untrusted => "untrusted",
            TaintLabel::Confidential => "confidential",
        }
    }
}

/// One mark of taint on a task: the label, and where it came from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub label: TaintLabel,
    /// What was taken in, in words (`the result of email.fetch on mailbox:cfo@…`, or what the
    /// agent declared).
    pub source: String,
    /// The request whose result it was, or that declared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Who said so: `warden` (a result it handed back) or `agent` (declared).
    pub by: String,
}

/// Content an agent declares it took in outside Warden (`inputs` on a request): a label and
/// where it came from. Declaring only adds taint; nothing an agent says removes it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub label: TaintLabel,
    /// Where it came from (a URL, a message id, a ticket): 1 to 512 characters, not blank,
    /// no control or invisible format character ([`INPUT_SOURCE`]).
    #[cfg_attr(feature = "openapi", schema(schema_with = input_source_schema))]
    pub source: String,
}

/// The characters an input's source may not hold: C0 and C1 controls, and the invisible format
/// characters that could make an approval card read otherwise (soft hyphen, the combining
/// grapheme joiner, the Arabic letter mark, the Mongolian vowel separator, zero-width and
/// direction marks, line and paragraph separators, embeddings, overrides and isolates, word
/// joiners, variation selectors, the BOM, interlinear annotations; and, checked though no
/// pattern of the OpenAPI document can say so, the tag characters U+E0000–U+E007F).
const INVISIBLE: &str = "\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u034F\\u061C\\u180E\\u200B-\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFE00-\\uFE0F\\uFEFF\\uFFF9-\\uFFFB";

/// Characters that show as blank: a source made only of them (and invisible ones) is blank.
const BLANK: &str = " \\u00A0\\u115F\\u1160\\u1680\\u2000-\\u200A\\u202F\\u205F\\u2800\\u3000\\u3164\\uFFA0";

/// `text` as it may be shown to an approver: no control or invisible format character, and at
/// most `max` characters (then `…`).
pub fn inert(text: &str, max: usize) -> String {
    let mut kept = text.chars().filter(|c| !invisible(*c));
    let mut out: String = kept.by_ref().take(max).collect();
    if kept.next().is_some() {
        out.push('…');
    }
    out
}

fn invisible(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}' | '\u{AD}' | '\u{34F}' | '\u{61C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

fn blank(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}') || invisible(c)
}

/// An input's source as the OpenAPI document states it: no [`INVISIBLE`] character, and one
/// that is not [`BLANK`].
pub fn input_source_pattern() -> String {
    format!("^[^{INVISIBLE}]*[^{INVISIBLE}{BLANK}][^{INVISIBLE}]*$")
}

#[cfg(feature = "openapi")]
fn input_source_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(512))
        .pattern(Some(input_source_pattern()))
        .description(Some("Where it came from: 1–512 characters, not blank, no control or invisible format character"))
        .examples([serde_json::json!("the body of message m-77 from an external sender")])
        .build()
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
    /// Whether the halt names what it stops: `all` takes no `id`; `agent` and `action` need a
    /// non-empty one (a halt that names nothing would stop nothing).
    pub fn validate(&self) -> Result<(), String> {
        match (self.scope, &self.id) {
            (HaltScope::All, None) => Ok(()),
            (HaltScope::All, Some(_)) => Err("scope `all` takes no `id`".into()),
            (_, None) => Err("scopes `agent` and `action` need an `id`".into()),
            // Blank as the API defines it (only spaces, tabs, CRs and LFs), not `trim`'s
            // Unicode white space: the OpenAPI document states the same rule as a pattern.
            (_, Some(id)) if id.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => Err("`id` is empty".into()),
            _ => Ok(()),
        }
    }

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
    /// The upstream MCP tool (`UPSTREAM/TOOL`) the request came through, if any: its labels
    /// (`mcp.toml`) count with the action class's.
    pub via: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_action_digest_is_sha256_of_the_canonical_action() {
        let agent = "spiffe://acme.example/soc/edr-responder";
        let d = |p| action_digest(agent, "INC-7", "process.kill", "host:web-42", &params(p)).unwrap();
        // Computed independently (Python: json.dumps(sort_keys=True, separators=(",", ":"))).
        assert_eq!(
            d(serde_json::json!({"pid": 4242})),
            "sha256:b0e4de73ff9d5bf80ce7d4f5d5c0099fb241b132ac144ac01055061b160efe42"
        );
        assert_eq!(
            d(serde_json::json!({"pid": 1})),
            "sha256:a9a6172d0f7354d44dcb1a71c1160e41f819e59dcc2034796b43f5c532ee375b"
        );
        // Member order does not matter; every covered field does.
        let a = action_digest(agent, "INC-7", "x", "host:a", &params(serde_json::json!({"a": 1, "b": 2}))).unwrap();
        let b = action_digest(agent, "INC-7", "x", "host:a", &params(serde_json::json!({"b": 2, "a": 1}))).unwrap();
        assert_eq!(a, b);
        for other in [
            action_digest(
                "spiffe://acme.example/x",
                "INC-7",
                "x",
                "host:a",
                &params(serde_json::json!({"a": 1, "b": 2})),
            ),
            action_digest(agent, "INC-8", "x", "host:a", &params(serde_json::json!({"a": 1, "b": 2}))),
            action_digest(agent, "INC-7", "y", "host:a", &params(serde_json::json!({"a": 1, "b": 2}))),
            action_digest(agent, "INC-7", "x", "host:b", &params(serde_json::json!({"a": 1, "b": 2}))),
            action_digest(agent, "INC-7", "x", "host:a", &params(serde_json::json!({"a": 1, "b": 3}))),
        ] {
            assert_ne!(other.unwrap(), a);
        }
    }
}
