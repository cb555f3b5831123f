//! The tools an agent sees: the catalog actions its guardrail grants at level ≥ 1, each with an
//! input schema made from the action's typed params, the target and the governance fields,
//! annotations from the catalog, and a description that says what calling it will do.
//!
//! Arguments are flat: the action's params sit beside `target`, `task`, `confidence`,
//! `rationale` and `evidence` (names the catalog may not use for params, see [`RESERVED`]).

use serde_json::{Map, Value, json};
use warden_connectors::mcp::Upstreams;
use warden_core::bundle::Bundle;
use warden_core::catalog::{ActionClass, Category, ParamType};
use warden_core::mcp_map::{MappedTool, UNMAPPED_KIND, Unmapped};
use warden_core::request::{ActionRequest, Evidence};

/// The argument names that are not action params.
pub const RESERVED: &[&str] = &["target", "task", "confidence", "rationale", "evidence"];

/// What calling a tool at `level` does, in words for the model.
fn consequence(level: u8) -> &'static str {
    match level {
        1 => "advice only: your call is recorded as a recommendation for a human; nothing is executed",
        2 => "every call waits for a human approval in Warden before it executes",
        3 => {
            "executes on its own when your confidence is high and the target is not critical; otherwise it waits for a human approval"
        }
        _ => "executes on its own within your confidence thresholds and budgets (reviewed afterwards)",
    }
}

/// The highest level `agent`'s guardrail grants for `action` (0: none).
pub fn granted_level(bundle: &Bundle, agent: &str, action: &str) -> u8 {
    bundle
        .agent(agent)
        .map(|g| g.grants.iter().filter(|x| x.action == action).map(|x| x.level).max().unwrap_or(0))
        .unwrap_or(0)
}

/// The JSON Schema of one param type.
fn param_schema(ty: ParamType) -> Value {
    match ty {
        ParamType::String => json!({"type": "string"}),
        ParamType::Integer => json!({"type": "integer"}),
        ParamType::Boolean => json!({"type": "boolean"}),
        ParamType::StringList => json!({"type": "array", "items": {"type": "string"}}),
    }
}

/// The input schema of `action`'s tool.
pub fn input_schema(action: &ActionClass) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = vec![json!("target"), json!("task"), json!("confidence")];
    properties.insert(
        "target".into(),
        json!({"type": "string", "pattern": format!("^{}:{}$", action.target_kind, warden_core::inventory::id_pattern()),
               "description": format!("The {} to act on, written `{}:ID`.", action.target_kind, action.target_kind)}),
    );
    governance_properties(&mut properties);
    for p in &action.params {
        let mut schema = param_schema(p.ty);
        if let Some(d) = &p.description {
            schema["description"] = json!(d);
        }
        properties.insert(p.name.clone(), schema);
        if p.required {
            required.push(json!(p.name));
        }
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

/// Warden's own tool: open a task (an incident) to work within.
pub const OPEN_TASK: &str = "warden.open_task";
/// Warden's own tool: read where an action request stands.
pub const GET_ACTION: &str = "warden.get_action";

/// Warden's own tools (every agent has them; the catalog may not use the `warden.` namespace).
fn own_tools() -> Vec<Value> {
    vec![
        json!({
            "name": OPEN_TASK,
            "title": "Open a task",
            "description": "Open a task (an incident or mission) for your actions to belong to; pass its id as `task` \
                            when you call an action. A task you open is agent-asserted: policy does not let its \
                            trigger raise your autonomy.",
            "inputSchema": {"type": "object", "additionalProperties": false, "required": ["title", "source"],
                "properties": {
                    "id": {"type": "string", "pattern": crate::input::TASK_ID, "description": "default: a fresh `task_…` id"},
                    "title": {"type": "string", "pattern": crate::input::NOT_BLANK},
                    "source": {"type": "string", "pattern": crate::input::NOT_BLANK, "description": "what raised it: `siem`, `email-gateway`, …"},
                    "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                    "alert_id": {"type": "string"},
                    "summary": {"type": "string"}}},
            "annotations": {"title": "Open a task", "readOnlyHint": false, "destructiveHint": false, "idempotentHint": false, "openWorldHint": false},
        }),
        json!({
            "name": GET_ACTION,
            "title": "Where an action stands",
            "description": "Read the state of one of your action requests by its id (`act_…`, from an earlier \
                            call's `_meta` `warden/request`): decision, approval, execution.",
            "inputSchema": {"type": "object", "additionalProperties": false, "required": ["id"],
                "properties": {"id": {"type": "string", "minLength": 1}}},
            "annotations": {"title": "Where an action stands", "readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false},
        }),
    ]
}

/// `agent`'s tools, as MCP `Tool` objects (JSON): Warden's own, then the granted catalog
/// actions in the catalog's order, then the upstream MCP tools it may call (see
/// [`upstream_tools`]).
pub fn for_agent(bundle: &Bundle, upstreams: Option<&Upstreams>, agent: &str) -> Vec<Value> {
    let mut tools = own_tools();
    tools.extend(bundle.catalog().iter().filter_map(|action| {
        let level = granted_level(bundle, agent, &action.id);
        (level >= 1).then(|| tool(action, level))
    }));
    if let Some(u) = upstreams {
        tools.extend(upstream_tools(bundle, u, agent).into_iter().map(|(t, _)| t));
    }
    tools
}

/// What a call of an upstream tool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCall {
    /// A mapped tool: decided as its action class, performed through the upstream.
    Mapped(MappedTool),
    /// An unmapped tool of an advise-only upstream: recorded as advice under `action`.
    Advice { upstream: String, tool: String, action: String },
}

/// The upstream tools `agent` may call, each with what a call of it is: the tools `mcp.toml`
/// maps whose action the agent is granted at level ≥ 1 and whose upstream lists them now
/// (in `mcp.toml`'s order); then the unmapped tools of advise-only upstreams, when the agent
/// is granted their advice action. Unmapped tools of other upstreams are hidden.
pub fn upstream_tools(bundle: &Bundle, upstreams: &Upstreams, agent: &str) -> Vec<(Value, UpstreamCall)> {
    let map = bundle.mcp();
    let mut out = Vec::new();
    for m in map.tools() {
        let (Some(action), Some(listed)) = (bundle.catalog().get(&m.action), upstreams.tools(&m.upstream)) else {
            continue;
        };
        let level = granted_level(bundle, agent, &m.action);
        let Some(upstream_tool) = listed.iter().find(|t| t["name"] == m.tool.as_str()) else { continue };
        if level >= 1 {
            out.push((mapped_tool(m, action, upstream_tool, level), UpstreamCall::Mapped(m.clone())));
        }
    }
    for name in upstreams.names() {
        let Unmapped::Advise { action } = map.unmapped(name) else { continue };
        if granted_level(bundle, agent, action) < 1 {
            continue;
        }
        for t in upstreams.tools(name).unwrap_or_default() {
            let Some(tool) = t["name"].as_str() else { continue };
            let exposed = format!("{name}.{tool}");
            let taken = map.route(name, tool).is_some()
                || map.by_name(&exposed).is_some()
                || bundle.catalog().get(&exposed).is_some()
                || !warden_core::mcp_map::is_tool_name(&exposed);
            if !taken {
                let call =
                    UpstreamCall::Advice { upstream: name.clone(), tool: tool.to_string(), action: action.clone() };
                out.push((advice_tool(&exposed, name, &t), call));
            }
        }
    }
    out
}

/// The governance fields every tool takes besides its own arguments.
fn governance_properties(properties: &mut Map<String, Value>) {
    properties.insert(
        "task".into(),
        json!({"type": "string", "minLength": 1, "description": "The id of the open task (incident) this call belongs to."}),
    );
    properties.insert(
        "confidence".into(),
        json!({"type": "number", "minimum": 0, "maximum": 1, "description": "How sure you are that this action is right, from 0 to 1."}),
    );
    properties
        .insert("rationale".into(), json!({"type": "string", "description": "Why this action, in a sentence or two."}));
    properties.insert(
        "evidence".into(),
        json!({"type": "array", "description": "What you saw: detections, alerts, log lines.",
               "items": {"type": "object", "additionalProperties": false, "required": ["kind", "ref"],
                         "properties": {"kind": {"type": "string"}, "ref": {"type": "string"}, "summary": {"type": "string"}}}}),
    );
    properties.insert(
        "inputs".into(),
        json!({"type": "array", "maxItems": warden_core::decision::MAX_INPUTS,
               "description": "Content you took in outside Warden that someone else could have written (an email body, a web page) or that is confidential: it lowers what you may do on your own in this task.",
               "items": {"type": "object", "additionalProperties": false, "required": ["label", "source"],
                         "properties": {"label": {"enum": ["untrusted", "confidential"]},
                                        "source": {"type": "string", "minLength": 1, "maxLength": 512,
                                                   "pattern": warden_core::request::input_source_pattern()}}}}),
    );
}

/// A mapped upstream tool as the agent sees it: the upstream's arguments that the mapping
/// uses (nothing else would reach the upstream), the governance fields, the catalog's hints.
fn mapped_tool(m: &MappedTool, action: &ActionClass, upstream_tool: &Value, level: u8) -> Value {
    let names = m.argument_names();
    let upstream_props = upstream_tool["inputSchema"]["properties"].as_object().cloned().unwrap_or_default();
    let mut properties: Map<String, Value> =
        names.iter().map(|n| (n.clone(), upstream_props.get(n).cloned().unwrap_or_else(|| json!({})))).collect();
    governance_properties(&mut properties);
    let mut required: Vec<Value> = upstream_tool["inputSchema"]["required"]
        .as_array()
        .map(|r| r.iter().filter(|x| x.as_str().is_some_and(|n| names.contains(n))).cloned().collect())
        .unwrap_or_default();
    let target_arg =
        warden_core::mcp_map::pointer_tokens(&m.target_pointer).and_then(|t| t.into_iter().next()).unwrap_or_default();
    if !required.iter().any(|r| r == target_arg.as_str()) {
        required.push(json!(target_arg));
    }
    required.extend([json!("task"), json!("confidence")]);
    let description = format!(
        "{} (upstream MCP tool `{}` of `{}`, governed by Warden as `{}` on the {} at `{}`; {} risk). Your \
         autonomy level for it is {level}: {}. A refusal comes back as an error result that names why.",
        upstream_tool["description"].as_str().unwrap_or(&action.description),
        m.tool,
        m.upstream,
        m.action,
        m.target_kind,
        m.target_pointer,
        action.risk.as_str(),
        consequence(level),
    );
    json!({
        "name": m.name,
        "title": upstream_tool["title"].as_str().unwrap_or(&action.description),
        "description": description,
        "inputSchema": {"type": "object", "properties": properties, "required": required, "additionalProperties": false},
        "annotations": annotations(action),
        "_meta": {"warden/level": level, "warden/action": m.action, "warden/upstream": m.upstream},
    })
}

/// An unmapped tool of an advise-only upstream: its own schema and the governance fields.
fn advice_tool(name: &str, upstream: &str, t: &Value) -> Value {
    let mut schema = t["inputSchema"].as_object().cloned().unwrap_or_default();
    let mut properties = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    governance_properties(&mut properties);
    let mut required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    required.extend([json!("task"), json!("confidence")]);
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    json!({
        "name": name,
        "description": format!(
            "{} (upstream MCP tool of `{upstream}`). Advice only: your call is recorded as a recommendation \
             for a human; nothing is executed.",
            t["description"].as_str().unwrap_or("")
        ),
        "inputSchema": schema,
        "annotations": {"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": true},
        "_meta": {"warden/level": 1, "warden/upstream": upstream},
    })
}

/// The action request a call of an upstream tool makes, and the upstream tool that performs
/// it (`UPSTREAM/TOOL`, for a mapped tool).
pub fn upstream_request_from(
    bundle: &Bundle,
    call: &UpstreamCall,
    arguments: Option<Map<String, Value>>,
) -> Result<(ActionRequest, Option<String>), BadArguments> {
    let mut args = arguments.unwrap_or_default();
    let g = governance(&mut args)?;
    let (action_id, target, params, via) = match call {
        UpstreamCall::Mapped(m) => {
            let (target, params) = m.request_parts(&args).map_err(BadArguments)?;
            (m.action.clone(), target, params, Some(format!("{}/{}", m.upstream, m.tool)))
        }
        UpstreamCall::Advice { upstream, tool, action } => {
            let mut params = Map::new();
            params.insert("arguments".into(), Value::String(Value::Object(args).to_string()));
            (action.clone(), format!("{UNMAPPED_KIND}:{upstream}.{tool}"), params, None)
        }
    };
    let action =
        bundle.catalog().get(&action_id).ok_or_else(|| BadArguments(format!("`{action_id}` is not in the catalog")))?;
    let req = ActionRequest {
        task: g.task,
        action: action_id,
        target: target.parse().map_err(|e: String| BadArguments(e))?,
        params,
        confidence: g.confidence,
        rationale: g.rationale,
        evidence: g.evidence,
        idempotency_key: None,
        inputs: g.inputs,
    };
    req.validate().map_err(BadArguments)?;
    action.check_params(&req.params).map_err(BadArguments)?;
    Ok((req, via))
}

/// The arguments of [`OPEN_TASK`]: id, title, trigger.
pub fn open_task_from(
    arguments: Option<Map<String, Value>>,
) -> Result<(Option<String>, String, crate::model::Trigger), BadArguments> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Args {
        id: Option<String>,
        title: String,
        source: String,
        #[serde(default)]
        severity: Option<String>,
        #[serde(default)]
        alert_id: String,
        #[serde(default)]
        summary: String,
    }
    let a: Args = serde_json::from_value(Value::Object(arguments.unwrap_or_default()))
        .map_err(|e| BadArguments(format!("`{OPEN_TASK}`: {e}")))?;
    if let Some(s) = &a.severity
        && !["low", "medium", "high", "critical"].contains(&s.as_str())
    {
        return Err(BadArguments(format!("`severity` is one of low, medium, high, critical, not `{s}`")));
    }
    let trigger = crate::model::Trigger {
        source: a.source,
        alert_id: a.alert_id,
        severity: a.severity.unwrap_or_else(|| "unknown".into()),
        summary: a.summary,
    };
    Ok((a.id, a.title, trigger))
}

/// The argument of [`GET_ACTION`]: the request id.
pub fn get_action_from(arguments: Option<Map<String, Value>>) -> Result<String, BadArguments> {
    match arguments.unwrap_or_default().remove("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id),
        _ => Err(BadArguments(format!("`{GET_ACTION}` takes `id`, a request id (`act_…`)"))),
    }
}

fn tool(action: &ActionClass, level: u8) -> Value {
    let description = format!(
        "{} (target: {}; {} risk{}). Your autonomy level for it is {level}: {}. Warden decides every call \
         against policy and records it; a refusal comes back as an error result that names why.",
        action.description,
        action.target_kind,
        action.risk.as_str(),
        if action.reversible { ", reversible" } else { ", irreversible" },
        consequence(level),
    );
    json!({
        "name": action.id,
        "title": action.description,
        "description": description,
        "inputSchema": input_schema(action),
        "annotations": annotations(action),
        "_meta": {"warden/level": level, "warden/category": action.category.as_str(), "warden/owner": action.owner},
    })
}

/// A tool's annotations, from the catalog: reads are read-only and idempotent, irreversible
/// actions destructive.
fn annotations(action: &ActionClass) -> Value {
    let enrichment = action.category == Category::Enrichment;
    json!({
        "title": action.description,
        "readOnlyHint": enrichment,
        "destructiveHint": !enrichment && !action.reversible,
        "idempotentHint": enrichment,
        "openWorldHint": true,
    })
}

/// Why arguments do not make an action request (a JSON-RPC invalid-params error: nothing is
/// recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadArguments(pub String);

/// The action request `arguments` make for `action`: the governance fields taken out, the rest
/// the params — checked against the schema's rules here, and against the catalog's by the
/// pipeline.
pub fn request_from(
    action: &ActionClass,
    arguments: Option<Map<String, Value>>,
) -> Result<ActionRequest, BadArguments> {
    let mut args = arguments.unwrap_or_default();
    let bad = |m: String| BadArguments(m);
    let target = match args.remove("target") {
        None | Some(Value::Null) => return Err(bad("`target` is required".into())),
        Some(Value::String(s)) => s,
        Some(other) => return Err(bad(format!("`target` must be a string, not `{other}`"))),
    };
    let Governance { task, confidence, rationale, evidence, inputs } = governance(&mut args)?;
    let target = target.parse().map_err(|e: String| bad(e))?;
    for name in args.keys() {
        if !action.params.iter().any(|p| &p.name == name) {
            return Err(bad(format!("`{}` takes no argument `{name}`", action.id)));
        }
    }
    let req = ActionRequest {
        task,
        action: action.id.clone(),
        target,
        params: args,
        confidence,
        rationale,
        evidence,
        idempotency_key: None,
        inputs,
    };
    req.validate().map_err(bad)?;
    action.check_params(&req.params).map_err(bad)?;
    Ok(req)
}

/// The governance fields of a call.
struct Governance {
    task: String,
    confidence: f64,
    rationale: String,
    evidence: Vec<Evidence>,
    inputs: Vec<warden_core::request::Input>,
}

/// Takes the governance fields out of `args` (what is left is the tool's own arguments).
fn governance(args: &mut Map<String, Value>) -> Result<Governance, BadArguments> {
    let bad = |m: String| BadArguments(m);
    let mut take_string = |name: &str, required: bool| -> Result<Option<String>, BadArguments> {
        match args.remove(name) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(bad(format!("`{name}` is required"))),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(bad(format!("`{name}` must be a string, not `{other}`"))),
        }
    };
    let task = take_string("task", true)?.unwrap_or_default();
    let rationale = take_string("rationale", false)?.unwrap_or_default();
    let confidence = match args.remove("confidence") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        None | Some(Value::Null) => return Err(bad("`confidence` is required".into())),
        Some(other) => return Err(bad(format!("`confidence` must be a number, not `{other}`"))),
    };
    let evidence: Vec<Evidence> = match args.remove("evidence") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| bad(format!("`evidence`: {e}")))?,
    };
    let inputs = match args.remove("inputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| bad(format!("`inputs`: {e}")))?,
    };
    if task.is_empty() {
        return Err(bad("`task` is empty".into()));
    }
    Ok(Governance { task, confidence, rationale, evidence, inputs })
}
