//! The tools an agent sees: the catalog actions its guardrail grants at level ≥ 1, each with an
//! input schema made from the action's typed params, the target and the governance fields,
//! annotations from the catalog, and a description that says what calling it will do.
//!
//! Arguments are flat: the action's params sit beside `target`, `task`, `confidence`,
//! `rationale` and `evidence` (names the catalog may not use for params, see [`RESERVED`]).

use serde_json::{Map, Value, json};
use warden_core::bundle::Bundle;
use warden_core::catalog::{ActionClass, Category, ParamType};
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
        json!({"type": "string", "pattern": format!("^{}:[^\\x00-\\x1f\\x7f-\\x9f]+$", action.target_kind),
               "description": format!("The {} to act on, written `{}:ID`.", action.target_kind, action.target_kind)}),
    );
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

/// `agent`'s tools, as MCP `Tool` objects (JSON, in the order of the catalog).
pub fn for_agent(bundle: &Bundle, agent: &str) -> Vec<Value> {
    bundle
        .catalog()
        .iter()
        .filter_map(|action| {
            let level = granted_level(bundle, agent, &action.id);
            (level >= 1).then(|| tool(action, level))
        })
        .collect()
}

fn tool(action: &ActionClass, level: u8) -> Value {
    let enrichment = action.category == Category::Enrichment;
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
        "annotations": {
            "title": action.description,
            "readOnlyHint": enrichment,
            "destructiveHint": !enrichment && !action.reversible,
            "idempotentHint": enrichment,
            "openWorldHint": true,
        },
        "_meta": {"warden/level": level, "warden/category": action.category.as_str(), "warden/owner": action.owner},
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
    let mut take_string = |name: &str, required: bool| -> Result<Option<String>, BadArguments> {
        match args.remove(name) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(bad(format!("`{name}` is required"))),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(bad(format!("`{name}` must be a string, not `{other}`"))),
        }
    };
    let target = take_string("target", true)?.unwrap_or_default();
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
    let target = target.parse().map_err(|e: String| bad(e))?;
    if task.is_empty() {
        return Err(bad("`task` is empty".into()));
    }
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
    };
    req.validate().map_err(bad)?;
    action.check_params(&req.params).map_err(bad)?;
    Ok(req)
}
