//! A policy bundle: a directory loaded, validated and versioned as a whole.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::authority::{Authority, UndoRequirement};
use crate::binding::Bindings;
use crate::catalog::Catalog;
use crate::guardrail::Guardrail;
use crate::inventory::Inventory;
use crate::mcp_map::McpMap;
use crate::policy::CompiledPolicy;
use crate::source::{Problem, SourceFile};

/// Why a bundle could not be loaded: every problem found, each at `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy bundle: {}", summary(.problems))]
pub struct BundleError {
    pub problems: Vec<Problem>,
}

fn summary(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            format!("{} problems, first: {}", many.len(), many.first().map(ToString::to_string).unwrap_or_default())
        }
    }
}

/// A loaded, validated policy bundle. Immutable: a new version is a new `Bundle`.
#[derive(Debug)]
pub struct Bundle {
    version: String,
    catalog: Catalog,
    inventory: Inventory,
    agents: BTreeMap<String, Guardrail>,
    mcp: McpMap,
    authority: Authority,
    pub(crate) policy: CompiledPolicy,
    /// The files its version covers, as loaded: what another node loads to run the same bundle.
    files: Vec<SourceFile>,
    /// What loads but cannot be what its author meant (grants no request can use).
    warnings: Vec<Problem>,
}

/// The params hand-written rules read, as the binding check needs them: every param of every
/// action when a rule reads `context.params` as a whole.
fn params_read(policy: &CompiledPolicy, catalog: &Catalog) -> std::collections::BTreeSet<String> {
    match policy.params_read() {
        (_, true) => catalog.iter().flat_map(|a| a.params.iter().map(|p| p.name.clone())).collect(),
        (named, false) => named.clone(),
    }
}

/// Grants that can never be used because their action (or an upstream MCP tool mapped to it)
/// reads a data class the agent's `[data] allowed` does not list: every such request is denied
/// `data_not_allowed`.
fn unusable_grants(agents: &BTreeMap<String, Guardrail>, catalog: &Catalog, mcp: &McpMap) -> Vec<Problem> {
    let mut out = Vec::new();
    for g in agents.values() {
        for grant in g.grants.iter().filter(|gr| gr.level > 0) {
            let Some(class) = catalog.get(&grant.action) else { continue };
            let missing = |reads: &[String]| -> Vec<String> {
                reads.iter().filter(|c| !g.allowed_data.contains(c)).map(|c| format!("`{c}`")).collect()
            };
            let never = missing(&class.reads);
            if !never.is_empty() {
                out.push(Problem {
                    file: g.file.clone(),
                    line: Some(grant.line),
                    message: format!(
                        "the grant of `{}` can never be used: it reads {}, which `[data] allowed` does not list",
                        grant.action,
                        never.join(", ")
                    ),
                });
                continue;
            }
            for tool in mcp.tools().iter().filter(|t| t.action == grant.action) {
                let more = missing(&tool.reads);
                if !more.is_empty() {
                    out.push(Problem {
                        file: g.file.clone(),
                        line: Some(grant.line),
                        message: format!(
                            "the grant of `{}` can never be used through upstream tool `{}` (mcp.toml:{}): it reads {}, \
                             which `[data] allowed` does not list",
                            grant.action,
                            tool.name,
                            tool.line,
                            more.join(", ")
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Files of a bundle that take part in decisions (and so in its version). `connectors.toml`
/// is one: it says which calls carry their target, which caps what may be granted.
pub fn is_policy_file(path: &str) -> bool {
    matches!(path, "actions.toml" | "assets.toml" | "assets.csv" | "mcp.toml" | "authority.toml" | "connectors.toml")
        || (path.starts_with("agents/") && path.ends_with(".toml") && path.matches('/').count() == 1)
        || (path.starts_with("cedar/") && path.ends_with(".cedar") && path.matches('/').count() == 1)
}

/// The bundle version: SHA-256 over the policy files sorted by path, each fed as
/// `path NUL length NUL content` with CRLF normalised to LF; written `sha256:<hex>`.
pub fn bundle_version(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().filter(|f| is_policy_file(&f.path)).collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for f in sorted {
        let text = f.text.replace("\r\n", "\n");
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(text.len().to_string().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::from("sha256:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Bundle {
    /// Loads a bundle from its files (paths relative to the bundle root). Files outside the
    /// bundle layout (`README.md`, `tests/…`) are ignored; a misplaced file under `agents/`
    /// or `cedar/` is an error. All problems are reported together.
    pub fn load(files: &[SourceFile]) -> Result<Self, BundleError> {
        let mut problems = Vec::new();
        let find = |name: &str| files.iter().find(|f| f.path == name);
        for f in files {
            let stray = (f.path.starts_with("agents/") || f.path.starts_with("cedar/")) && !is_policy_file(&f.path);
            if stray {
                problems
                    .push(Problem::in_file(&f.path, "unexpected file: agents/ holds `*.toml`, cedar/ holds `*.cedar`"));
            }
        }

        let catalog = match find("actions.toml") {
            None => {
                problems.push(Problem::in_file("actions.toml", "missing: a bundle needs an action catalog"));
                None
            }
            Some(f) => Catalog::parse(f).map_err(|p| problems.extend(p)).ok(),
        };

        let mut inventory = Inventory::default();
        for (name, parse) in [
            ("assets.toml", Inventory::parse_toml as fn(&SourceFile) -> Result<Inventory, Vec<Problem>>),
            ("assets.csv", Inventory::parse_csv),
        ] {
            if let Some(f) = find(name) {
                match parse(f) {
                    Ok(inv) => {
                        for msg in inventory.merge(inv) {
                            problems.push(Problem::in_file(name, msg));
                        }
                    }
                    Err(p) => problems.extend(p),
                }
            }
        }

        let mut agents: BTreeMap<String, Guardrail> = BTreeMap::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        if let Some(catalog) = &catalog {
            let mut agent_files: Vec<&SourceFile> =
                files.iter().filter(|f| f.path.starts_with("agents/") && is_policy_file(&f.path)).collect();
            agent_files.sort_by(|a, b| a.path.cmp(&b.path));
            for f in agent_files {
                let g = match Guardrail::parse(f, catalog) {
                    Ok(g) => g,
                    Err(p) => {
                        problems.extend(p);
                        continue;
                    }
                };
                if let Some(prev) = agents.get(&g.id) {
                    problems.push(Problem {
                        file: f.path.clone(),
                        line: Some(g.id_line),
                        message: format!("duplicate agent id `{}` (also in {})", g.id, prev.file),
                    });
                    continue;
                }
                if let Some(prev) = names.insert(g.name.clone(), g.file.clone()) {
                    problems
                        .push(Problem::in_file(&f.path, format!("duplicate agent name `{}` (also in {prev})", g.name)));
                    continue;
                }
                agents.insert(g.id.clone(), g);
            }
        }

        // Upstream MCP tools mapped to action classes; advise-only actions granted as such.
        let mut mcp = McpMap::default();
        if let (Some(catalog), Some(f)) = (&catalog, find("mcp.toml")) {
            match McpMap::parse(f, catalog) {
                Ok(m) => mcp = m,
                Err(p) => problems.extend(p),
            }
        }
        for (upstream, action) in mcp.advise_actions() {
            for g in agents.values() {
                for grant in g.grants.iter().filter(|x| &x.action == action && x.level > 1) {
                    problems.push(Problem {
                        file: g.file.clone(),
                        line: Some(grant.line),
                        message: format!(
                            "`{action}` takes the unmapped tools of upstream `{upstream}` (mcp.toml), which are \
                             advice only: grant it at level 1, not {}",
                            grant.level
                        ),
                    });
                }
            }
        }

        // Who may stop, close and vouch: `authority.toml` over the defaults the guardrails imply.
        let guardrail_refs: Vec<&Guardrail> = agents.values().collect();
        let authority = match find("authority.toml") {
            None => Authority::defaults(&guardrail_refs),
            Some(f) => Authority::parse(f, &guardrail_refs).unwrap_or_else(|p| {
                problems.extend(p);
                Authority::defaults(&guardrail_refs)
            }),
        };

        let (Some(catalog), true) = (catalog, problems.is_empty()) else {
            problems.sort();
            return Err(BundleError { problems });
        };
        let mut cedar_files: Vec<SourceFile> =
            files.iter().filter(|f| f.path.starts_with("cedar/") && is_policy_file(&f.path)).cloned().collect();
        cedar_files.sort_by(|a, b| a.path.cmp(&b.path));
        let guardrails: Vec<Guardrail> = agents.values().cloned().collect();
        let policy = CompiledPolicy::build(&catalog, &inventory, &guardrails, &cedar_files)
            .map_err(|problems| BundleError { problems })?;

        // Checks that need the compiled policy: hand-written permits can grant levels too.
        let mut problems = Vec::new();
        for (upstream, action) in mcp.advise_actions() {
            for (id, file, line, level) in policy.permits_above(action, 1) {
                if file.starts_with("cedar/") {
                    problems.push(Problem {
                        file,
                        line: Some(line),
                        message: format!(
                            "`{id}` grants `{action}` at level {level}, but it takes the unmapped tools of upstream \
                             `{upstream}` (mcp.toml), which are advice only: at most level 1"
                        ),
                    });
                }
            }
        }
        let bindings = match find("connectors.toml") {
            None => Bindings::default(),
            Some(f) => match crate::binding::check(f, &catalog, &params_read(&policy, &catalog)) {
                Ok(b) => b,
                Err(p) => {
                    problems.extend(p);
                    Bindings::default()
                }
            },
        };
        for (action, (_, connector_line)) in &bindings.unbound {
            for (id, file, line, level) in policy.permits_above(action, crate::binding::UNBOUND_MAX_LEVEL) {
                problems.push(Problem {
                    file,
                    line: Some(line),
                    message: format!(
                        "`{id}` grants `{action}` at level {level}, but its call does not carry the target \
                         (connectors.toml:{connector_line}, `target_bound = false`): at most level {}",
                        crate::binding::UNBOUND_MAX_LEVEL
                    ),
                });
            }
        }
        if !problems.is_empty() {
            problems.sort();
            problems.dedup();
            return Err(BundleError { problems });
        }
        let kept = files.iter().filter(|f| is_policy_file(&f.path)).cloned().collect();
        let warnings = unusable_grants(&agents, &catalog, &mcp);
        Ok(Self {
            version: bundle_version(files),
            catalog,
            inventory,
            agents,
            mcp,
            authority,
            policy,
            files: kept,
            warnings,
        })
    }

    /// Grants no request can use, and why (`warden policy validate` prints them).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// `sha256:<hex>` of the bundle's canonical content; see [`bundle_version`].
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The files that make it (those its version covers): loading them gives the same bundle.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The bundle's `mcp.toml` (empty without one).
    pub fn mcp(&self) -> &McpMap {
        &self.mcp
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The action digest (DESIGN §6) of a request under this bundle's catalog: secret params
    /// enter it as their commitments ([`crate::catalog::secret_commitment`]), so the log that
    /// records only commitments still proves every digest.
    pub fn action_digest(
        &self,
        agent: &str,
        task: &str,
        action: &str,
        target: &str,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, crate::audit::canonical::CanonicalError> {
        let shown = self.shown_params(action, params);
        crate::request::action_digest(agent, task, action, target, &shown)
    }

    /// `params` of `action` as Warden shows and records them: secret values as commitments.
    pub fn shown_params(
        &self,
        action: &str,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        self.catalog.get(action).map_or_else(|| params.clone(), |c| c.redacted(params))
    }

    /// Who may halt, close others' tasks and vouch for trigger sources (`authority.toml`, or
    /// the defaults the guardrails imply).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// What undoing `agent`'s execution needs: `compensation` on `target`, under this bundle.
    pub fn undo_requirement(
        &self,
        agent: &str,
        compensation: &str,
        target: &crate::inventory::TargetRef,
    ) -> UndoRequirement {
        crate::authority::undo_requirement(&self.catalog, &self.inventory, self.agent(agent), compensation, target)
    }

    pub fn agent(&self, id: &str) -> Option<&Guardrail> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Guardrail> {
        self.agents.values()
    }

    /// The action classes whose counts in `context.task.history` a decision of `action` may
    /// read: what a front end must count for it (and nothing else matters to it).
    /// Whether a hand-written rule reads param `name` (by `has`, `.` or index, however spelt), or
    /// every param (using `context.params` as a whole).
    pub fn reads_param(&self, name: &str) -> bool {
        self.policy.reads_param(name)
    }

    pub fn history_read(&self, action: &str) -> impl Iterator<Item = &str> {
        self.policy.history_read(action)
    }

    /// The generated Cedar schema (Cedar schema syntax).
    pub fn cedar_schema(&self) -> &str {
        self.policy.schema_text()
    }

    /// Every policy in the bundle as Cedar source: compiled guardrails, then hand-written files.
    pub fn cedar_policies(&self) -> &str {
        self.policy.policy_text()
    }

    /// Forgets what the bundle remembered about known targets (the verdicts of policies that
    /// do not read the request context). Answers do not change; the next decision on each
    /// target pays to work them out again. For benchmarks and memory pressure.
    pub fn clear_memo(&self) {
        self.policy.clear_memo();
    }

    /// How many Cedar policies the bundle holds.
    pub fn policy_count(&self) -> usize {
        self.policy.policy_count()
    }
}
