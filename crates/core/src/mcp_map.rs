//! The bundle's `mcp.toml`: which tools of upstream MCP servers an agent may call through
//! Warden, and which action class each call is.
//!
//! ```toml
//! [upstreams.lab-edr]
//! unmapped = "hidden"            # the default; or "advise" with `advise_as`
//!
//! [[tool]]
//! upstream = "lab-edr"           # a `[[mcp.upstreams]]` of `warden serve --config`
//! tool = "isolate_host"          # the upstream's tool name
//! name = "lab-edr.isolate_host"  # what agents see (default `UPSTREAM.TOOL`)
//! action = "host.isolate"        # the action class a call is decided as
//! target = { pointer = "/hostname", kind = "host" }
//! params = { reason = "/comment" }                 # action param → argument
//! capture = { containment_id = "/containment_id" } # into the tool's structured result
//! captured = { containment_id = "/containment_id" } # a compensation's captured fields → argument
//! ```
//!
//! A call's arguments become an action request: the target from the argument at `target`'s
//! JSON pointer (RFC 6901) with its kind, the params from theirs. When the request executes,
//! the upstream is called with arguments **rebuilt from the request's target and params** —
//! what was decided and approved (its digest) is exactly what runs; nothing the agent sent
//! besides reaches the upstream.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::catalog::{Catalog, ParamType};
use crate::source::{Problem, SourceFile, toml_problem};

/// The argument names a mapped tool adds for governance; an upstream argument may not use them.
pub const GOVERNANCE: &[&str] = &["task", "confidence", "rationale", "evidence", "inputs"];

/// The target kind of an advise-only action for unmapped tools (`mcp_tool:UPSTREAM.TOOL`).
pub const UNMAPPED_KIND: &str = "mcp_tool";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamShape>,
    #[serde(default)]
    tool: Vec<toml::Spanned<ToolShape>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamShape {
    #[serde(default)]
    unmapped: Option<String>,
    #[serde(default)]
    advise_as: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolShape {
    upstream: String,
    tool: String,
    #[serde(default)]
    name: Option<String>,
    action: String,
    target: TargetShape,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    capture: BTreeMap<String, String>,
    #[serde(default)]
    captured: BTreeMap<String, String>,
    /// Data classes the tool reads beyond its action class's.
    #[serde(default)]
    reads: Vec<String>,
    /// The label of what it returns, joined with its action class's.
    #[serde(default)]
    result: Option<crate::catalog::Label>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetShape {
    pointer: String,
    kind: String,
}

/// What agents see of an upstream's tools that `mcp.toml` does not map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Unmapped {
    /// Not listed, not callable (the default).
    #[default]
    Hidden,
    /// Listed as advice only: a call is an `action` request on target
    /// `mcp_tool:UPSTREAM.TOOL` with the arguments as the `arguments` param (JSON text).
    Advise { action: String },
}

/// One upstream tool mapped to an action class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedTool {
    /// The name agents call it by.
    pub name: String,
    pub upstream: String,
    /// The upstream's tool name.
    pub tool: String,
    pub action: String,
    pub target_pointer: String,
    pub target_kind: String,
    /// Action param → argument pointer.
    pub params: BTreeMap<String, String>,
    /// Captured field → pointer into the tool's structured result.
    pub capture: BTreeMap<String, String>,
    /// Captured field (of the action this one compensates) → argument pointer.
    pub captured: BTreeMap<String, String>,
    /// The data classes a call reads: its action class's and those `mcp.toml` adds.
    pub reads: Vec<String>,
    /// The label of what it returns: its action class's joined with what `mcp.toml` says.
    pub result: crate::catalog::Label,
    /// Where it is defined in `mcp.toml`.
    pub line: usize,
}

/// The parsed, validated `mcp.toml` (empty when the bundle has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpMap {
    upstreams: BTreeMap<String, Unmapped>,
    tools: Vec<MappedTool>,
}

/// The tokens of a JSON pointer (RFC 6901); `None` unless it is `/…`.
pub fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    let tokens: Vec<String> = rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    let escapes_ok = rest.split('/').all(|t| {
        let b = t.as_bytes();
        b.iter().enumerate().all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
    });
    (escapes_ok && tokens.iter().all(|t| !t.is_empty())).then_some(tokens)
}

fn is_upstream_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// An MCP tool name: 1–128 of `A-Z a-z 0-9 _ - .`.
pub fn is_tool_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

fn set_at(root: &mut Map<String, Value>, tokens: &[String], value: Value) {
    let Some((last, path)) = tokens.split_last() else { return };
    let mut here = root;
    for t in path {
        let next = here.entry(t.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(m) = next else { return };
        here = m;
    }
    here.insert(last.clone(), value);
}

fn get_at<'a>(root: &'a Map<String, Value>, tokens: &[String]) -> Option<&'a Value> {
    let (first, rest) = tokens.split_first()?;
    let mut here = root.get(first)?;
    for t in rest {
        here = here.as_object()?.get(t)?;
    }
    Some(here)
}

impl MappedTool {
    /// Every argument pointer this mapping reads or writes.
    fn pointers(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.target_pointer).chain(self.params.values()).chain(self.captured.values())
    }

    /// The top-level argument names the mapping uses (what an agent may pass).
    pub fn argument_names(&self) -> BTreeSet<String> {
        self.pointers().filter_map(|p| pointer_tokens(p)?.into_iter().next()).collect()
    }

    /// The target (`KIND:ID`) and params an agent's arguments make (governance fields taken
    /// out already). An argument the mapping does not use is refused: it would not run.
    pub fn request_parts(&self, args: &Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
        let known = self.argument_names();
        if let Some(extra) = args.keys().find(|k| !known.contains(*k)) {
            return Err(format!("`{}` takes no argument `{extra}`", self.name));
        }
        let tokens = pointer_tokens(&self.target_pointer).unwrap_or_default();
        let id = match get_at(args, &tokens) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(format!("the target at `{}` must be a string, not `{other}`", self.target_pointer));
            }
            None => return Err(format!("the target argument at `{}` is required", self.target_pointer)),
        };
        let mut params = Map::new();
        for (name, pointer) in &self.params {
            if let Some(v) = get_at(args, &pointer_tokens(pointer).unwrap_or_default())
                && !v.is_null()
            {
                params.insert(name.clone(), v.clone());
            }
        }
        Ok((format!("{}:{id}", self.target_kind), params))
    }

    /// The upstream's arguments for a request: rebuilt from its target id, params and (for a
    /// compensation) what the compensated action captured — never from what the agent sent.
    pub fn arguments(
        &self,
        target_id: &str,
        params: &Map<String, Value>,
        captured: &Map<String, Value>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        set_at(&mut out, &pointer_tokens(&self.target_pointer).unwrap_or_default(), Value::String(target_id.into()));
        for (name, pointer) in &self.params {
            if let Some(v) = params.get(name) {
                set_at(&mut out, &pointer_tokens(pointer).unwrap_or_default(), v.clone());
            }
        }
        for (name, pointer) in &self.captured {
            if let Some(v) = captured.get(name) {
                set_at(&mut out, &pointer_tokens(pointer).unwrap_or_default(), v.clone());
            }
        }
        out
    }

    /// The `capture` fields found in a tool's structured result; the names of those missing.
    pub fn captures(&self, result: &Value) -> (Map<String, Value>, Vec<String>) {
        let (mut found, mut missing) = (Map::new(), Vec::new());
        for (name, pointer) in &self.capture {
            match result.pointer(pointer) {
                Some(v) if !v.is_null() => {
                    found.insert(name.clone(), v.clone());
                }
                _ => missing.push(name.clone()),
            }
        }
        (found, missing)
    }
}

impl McpMap {
    /// Parses and checks `mcp.toml` against the catalog; every problem at once.
    pub fn parse(file: &SourceFile, catalog: &Catalog) -> Result<Self, Vec<Problem>> {
        let shape: FileShape = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
        let mut problems = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, u) in shape.upstreams {
            if !is_upstream_name(&name) {
                problems.push(Problem::in_file(
                    &file.path,
                    format!("upstream `{name}` must be a lowercase name (letters, digits, `-`, `_`)"),
                ));
            }
            let mode = match (u.unmapped.as_deref(), u.advise_as) {
                (None | Some("hidden"), None) => Unmapped::Hidden,
                (Some("advise"), Some(action)) => {
                    match catalog.get(&action) {
                        None => problems.push(Problem::in_file(
                            &file.path,
                            format!("upstream `{name}`: `advise_as` names `{action}`, which is not in actions.toml"),
                        )),
                        Some(a) => {
                            let takes_arguments =
                                a.params.iter().any(|p| p.name == "arguments" && p.ty == ParamType::String);
                            if a.target_kind != UNMAPPED_KIND || !takes_arguments {
                                problems.push(Problem::in_file(
                                    &file.path,
                                    format!(
                                        "upstream `{name}`: `{action}` cannot take unmapped calls: it needs target \
                                         `{UNMAPPED_KIND}` and a string param `arguments`"
                                    ),
                                ));
                            }
                        }
                    }
                    Unmapped::Advise { action }
                }
                (Some("advise"), None) => {
                    problems.push(Problem::in_file(
                        &file.path,
                        format!("upstream `{name}`: `unmapped = \"advise\"` needs `advise_as`, the action class such calls are recorded as"),
                    ));
                    Unmapped::Hidden
                }
                (None | Some("hidden"), Some(_)) => {
                    problems.push(Problem::in_file(
                        &file.path,
                        format!("upstream `{name}`: `advise_as` goes with `unmapped = \"advise\"`"),
                    ));
                    Unmapped::Hidden
                }
                (Some(other), _) => {
                    problems.push(Problem::in_file(
                        &file.path,
                        format!("upstream `{name}`: `unmapped` is `hidden` or `advise`, not `{other}`"),
                    ));
                    Unmapped::Hidden
                }
            };
            upstreams.insert(name, mode);
        }

        let mut tools: Vec<MappedTool> = Vec::new();
        for spanned in shape.tool {
            let line = file.line_at(spanned.span().start);
            let t = spanned.into_inner();
            let at = |m: String| Problem { file: file.path.clone(), line: Some(line), message: m };
            let name = t.name.clone().unwrap_or_else(|| format!("{}.{}", t.upstream, t.tool));
            let before = problems.len();
            if !is_upstream_name(&t.upstream) {
                problems.push(at(format!("upstream `{}` must be a lowercase name", t.upstream)));
            }
            if !is_tool_name(&t.tool) {
                problems.push(at(format!("`{}` is not an MCP tool name", t.tool)));
            }
            if !is_tool_name(&name) {
                problems.push(at(format!("`{name}` is not an MCP tool name (1–128 of A-Z a-z 0-9 _ - .)")));
            }
            if name.starts_with("warden.") {
                problems.push(at(format!("`{name}`: the `warden.` namespace is Warden's own")));
            }
            if catalog.get(&name).is_some() {
                problems.push(at(format!("`{name}` is also an action in actions.toml; name the tool otherwise")));
            }
            if let Some(prev) = tools.iter().find(|p| p.name == name) {
                problems.push(at(format!("tool name `{name}` is mapped twice (also at line {})", prev.line)));
            }
            if let Some(prev) = tools.iter().find(|p| p.upstream == t.upstream && p.tool == t.tool) {
                problems
                    .push(at(format!("`{}` of `{}` is mapped twice (also at line {})", t.tool, t.upstream, prev.line)));
            }
            for c in &t.reads {
                if !crate::catalog::is_data_class(c) {
                    problems
                        .push(at(format!("data class `{c}` must be dot-separated lowercase words, like `email.body`")));
                }
            }
            let (mut reads, mut result) = (Vec::new(), t.result.unwrap_or_default());
            match catalog.get(&t.action) {
                None => problems.push(at(format!("action `{}` is not in actions.toml", t.action))),
                Some(a) => {
                    reads.clone_from(&a.reads);
                    result = result.join(a.result);
                    if a.target_kind != t.target.kind {
                        problems
                            .push(at(format!("`{}` targets `{}`, not `{}`", t.action, a.target_kind, t.target.kind)));
                    }
                    for p in t.params.keys() {
                        if !a.params.iter().any(|x| &x.name == p) {
                            problems.push(at(format!("`{}` has no param `{p}`", t.action)));
                        }
                    }
                    for p in a.params.iter().filter(|p| p.required) {
                        if !t.params.contains_key(&p.name) {
                            problems
                                .push(at(format!("`{}` requires param `{}`; map it to an argument", t.action, p.name)));
                        }
                    }
                }
            }
            let pointers: Vec<&String> =
                std::iter::once(&t.target.pointer).chain(t.params.values()).chain(t.captured.values()).collect();
            for p in pointers.iter().copied().chain(t.capture.values()) {
                if pointer_tokens(p).is_none() {
                    problems.push(at(format!("`{p}` is not a JSON pointer to a field (`/name`, `/a/b`)")));
                }
            }
            for (i, a) in pointers.iter().enumerate() {
                for b in pointers.iter().skip(i + 1) {
                    let (x, y) = (a.as_str(), b.as_str());
                    if x == y || y.starts_with(&format!("{x}/")) || x.starts_with(&format!("{y}/")) {
                        problems.push(at(format!("arguments `{x}` and `{y}` overlap; each must be its own field")));
                    }
                }
            }
            for p in &pointers {
                if let Some(first) = pointer_tokens(p).and_then(|t| t.into_iter().next())
                    && GOVERNANCE.contains(&first.as_str())
                {
                    problems.push(at(format!(
                        "argument `{first}` is one Warden adds to every tool ({}); the upstream's cannot be mapped",
                        GOVERNANCE.join(", ")
                    )));
                }
            }
            if problems.len() > before {
                continue;
            }
            upstreams.entry(t.upstream.clone()).or_default();
            tools.push(MappedTool {
                name,
                upstream: t.upstream,
                tool: t.tool,
                action: t.action,
                target_pointer: t.target.pointer,
                target_kind: t.target.kind,
                params: t.params,
                capture: t.capture,
                captured: t.captured,
                reads: {
                    for c in t.reads {
                        if !reads.contains(&c) {
                            reads.push(c);
                        }
                    }
                    reads
                },
                result,
                line,
            });
        }
        if problems.is_empty() { Ok(Self { upstreams, tools }) } else { Err(problems) }
    }

    /// Every mapped tool, in file order.
    pub fn tools(&self) -> &[MappedTool] {
        &self.tools
    }

    /// The mapped tool agents call `name`.
    pub fn by_name(&self, name: &str) -> Option<&MappedTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The mapping of `upstream`'s `tool`.
    pub fn route(&self, upstream: &str, tool: &str) -> Option<&MappedTool> {
        self.tools.iter().find(|t| t.upstream == upstream && t.tool == tool)
    }

    /// A tool of `upstream` mapped to `action` (a compensation runs where its action ran).
    pub fn for_action(&self, upstream: &str, action: &str) -> Option<&MappedTool> {
        self.tools.iter().find(|t| t.upstream == upstream && t.action == action)
    }

    /// What agents see of `upstream`'s unmapped tools.
    pub fn unmapped(&self, upstream: &str) -> &Unmapped {
        static HIDDEN: Unmapped = Unmapped::Hidden;
        self.upstreams.get(upstream).unwrap_or(&HIDDEN)
    }

    /// The upstreams `mcp.toml` names.
    pub fn upstreams(&self) -> impl Iterator<Item = &String> {
        self.upstreams.keys()
    }

    /// The actions unmapped calls are recorded as (advise-only).
    pub fn advise_actions(&self) -> impl Iterator<Item = (&String, &String)> {
        self.upstreams.iter().filter_map(|(u, m)| match m {
            Unmapped::Advise { action } => Some((u, action)),
            Unmapped::Hidden => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
[[action]]
id = "host.isolate"
description = "Isolate a host"
category = "containment"
risk = "high"
reversible = true
compensation = "host.release"
target = "host"
tool = "edr"
owner = "team:ir"
params = [{ name = "reason", type = "string", required = true }]

[[action]]
id = "host.release"
description = "Release a host"
category = "containment"
risk = "medium"
reversible = false
target = "host"
tool = "edr"
owner = "team:ir"

[[action]]
id = "mcp.call"
description = "An unmapped upstream tool"
category = "enrichment"
risk = "medium"
reversible = false
target = "mcp_tool"
tool = "mcp"
owner = "team:ir"
params = [{ name = "arguments", type = "string" }]
"#;

    const MAP: &str = r#"
[upstreams.lab-edr]
unmapped = "advise"
advise_as = "mcp.call"

[[tool]]
upstream = "lab-edr"
tool = "isolate_host"
action = "host.isolate"
target = { pointer = "/host/name", kind = "host" }
params = { reason = "/comment" }
capture = { containment_id = "/containment_id" }

[[tool]]
upstream = "lab-edr"
tool = "release_host"
action = "host.release"
target = { pointer = "/hostname", kind = "host" }
captured = { containment_id = "/containment_id" }
"#;

    fn catalog() -> Catalog {
        Catalog::parse(&SourceFile::new("actions.toml", CATALOG)).unwrap()
    }

    fn map(text: &str) -> Result<McpMap, Vec<Problem>> {
        McpMap::parse(&SourceFile::new("mcp.toml", text), &catalog())
    }

    #[test]
    fn arguments_make_the_request_and_the_request_makes_the_arguments() {
        let m = map(MAP).unwrap();
        let t = m.by_name("lab-edr.isolate_host").unwrap();
        let args = serde_json::json!({"host": {"name": "web-42"}, "comment": "beacon"});
        let (target, params) = t.request_parts(args.as_object().unwrap()).unwrap();
        assert_eq!((target.as_str(), params["reason"].as_str()), ("host:web-42", Some("beacon")));
        let rebuilt = t.arguments("web-42", &params, &Map::new());
        assert_eq!(Value::Object(rebuilt), args, "what runs is what was decided");
        // An argument the mapping does not use would not run: refused, not dropped.
        let extra = serde_json::json!({"host": {"name": "web-42"}, "comment": "x", "force": true});
        assert!(t.request_parts(extra.as_object().unwrap()).unwrap_err().contains("`force`"));
        let missing = serde_json::json!({"comment": "x"});
        assert!(t.request_parts(missing.as_object().unwrap()).unwrap_err().contains("/host/name"));
        // The compensation runs where the action ran, with what it captured.
        let r = m.for_action("lab-edr", "host.release").unwrap();
        let mut captured = Map::new();
        captured.insert("containment_id".into(), "c-1".into());
        assert_eq!(
            Value::Object(r.arguments("web-42", &Map::new(), &captured)),
            serde_json::json!({"hostname": "web-42", "containment_id": "c-1"})
        );
        let (found, missing) = t.captures(&serde_json::json!({"containment_id": "c-9"}));
        assert_eq!((found["containment_id"].as_str(), missing.len()), (Some("c-9"), 0));
        assert_eq!(m.unmapped("lab-edr"), &Unmapped::Advise { action: "mcp.call".into() });
        assert_eq!(m.unmapped("other"), &Unmapped::Hidden);
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(pointer_tokens("/a~1b/c~0d"), Some(vec!["a/b".to_string(), "c~d".to_string()]));
        for bad in ["", "a", "/", "/a//b", "/a~2"] {
            assert_eq!(pointer_tokens(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_mappings_are_refused_with_the_reason_and_line() {
        let tool = |extra: &str| {
            format!(
                "[[tool]]\nupstream = \"lab-edr\"\ntool = \"isolate_host\"\naction = \"host.isolate\"\n\
                 target = {{ pointer = \"/hostname\", kind = \"host\" }}\nparams = {{ reason = \"/comment\" }}\n{extra}"
            )
        };
        assert!(map(&tool("")).is_ok());
        for (text, why) in [
            (tool("").replace("host.isolate", "host.nuke"), "`host.nuke` is not in actions.toml"),
            (tool("").replace("kind = \"host\"", "kind = \"account\""), "targets `host`, not `account`"),
            (tool("").replace("params = { reason = \"/comment\" }", ""), "requires param `reason`"),
            (tool("").replace("reason = \"/comment\"", "reason = \"/comment\", force = \"/f\""), "no param `force`"),
            (tool("").replace("/comment", "/hostname"), "overlap"),
            (tool("").replace("/comment", "comment"), "not a JSON pointer"),
            (tool("").replace("/comment", "/task"), "one Warden adds"),
            (tool("name = \"host.isolate\""), "also an action"),
            (tool("name = \"warden.isolate\""), "namespace"),
            (tool("name = \"has space\""), "not an MCP tool name"),
            (format!("{}\n{}", tool(""), tool("")), "mapped twice"),
            ("[upstreams.x]\nunmapped = \"advise\"\n".to_string(), "needs `advise_as`"),
            (
                "[upstreams.x]\nunmapped = \"advise\"\nadvise_as = \"host.release\"\n".to_string(),
                "cannot take unmapped calls",
            ),
            ("[upstreams.x]\nunmapped = \"loud\"\n".to_string(), "not `loud`"),
            ("[[tool]]\nupstream = \"x\"\n".to_string(), "missing field"),
        ] {
            let problems = map(&text).unwrap_err();
            assert!(problems.iter().any(|p| p.message.contains(why)), "{text}\n→ {problems:?}\nshould say {why}");
        }
        let problems = map(&tool("").replace("host.isolate", "host.nuke")).unwrap_err();
        assert_eq!(problems[0].line, Some(1), "{problems:?}");
    }
}
