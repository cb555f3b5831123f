//! The action catalog (`actions.toml`): every action class an agent may ask for.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::duration::Duration;
use crate::source::{Problem, SourceFile, toml_problem};

/// What kind of work an action does; drives step-up and confidence rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Enrichment,
    Ticketing,
    Containment,
    Identity,
    Network,
    Secrets,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Enrichment,
        Category::Ticketing,
        Category::Containment,
        Category::Identity,
        Category::Network,
        Category::Secrets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Enrichment => "enrichment",
            Category::Ticketing => "ticketing",
            Category::Containment => "containment",
            Category::Identity => "identity",
            Category::Network => "network",
            Category::Secrets => "secrets",
        }
    }

    /// Identity and secrets actions always need a step-up approver below level 4.
    pub fn needs_step_up(self) -> bool {
        matches!(self, Category::Identity | Category::Secrets)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The impact of an action if it is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

/// Whether data can be taken at its word (DESIGN.md §14): what an outsider could have written
/// — an email body, an attachment, a web page, a ticket comment, threat-intel free text — is
/// `untrusted`. Ordered: joining two labels keeps the less trusted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    #[default]
    Trusted,
    Untrusted,
}

impl Integrity {
    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Trusted => "trusted",
            Integrity::Untrusted => "untrusted",
        }
    }
}

/// Who may see data. Ordered: joining two labels keeps the more confidential.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidentiality {
    Public,
    #[default]
    Internal,
    Confidential,
}

impl Confidentiality {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidentiality::Public => "public",
            Confidentiality::Internal => "internal",
            Confidentiality::Confidential => "confidential",
        }
    }
}

/// The label of data: its integrity and its confidentiality (default: trusted, internal).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    #[serde(default)]
    pub integrity: Integrity,
    #[serde(default)]
    pub confidentiality: Confidentiality,
}

impl Label {
    /// The label of data made of both: the less trusted, the more confidential.
    pub fn join(self, other: Label) -> Label {
        Label {
            integrity: self.integrity.max(other.integrity),
            confidentiality: self.confidentiality.max(other.confidentiality),
        }
    }
}

/// A data class (`email.body`, `threat-intel`): dot-separated words of lowercase letters,
/// digits, `_` and `-`, each starting with a letter.
pub fn is_data_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|w| {
            let mut chars = w.chars();
            matches!(chars.next(), Some('a'..='z'))
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        })
}

/// The type of one action parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Boolean,
    StringList,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::StringList => "string_list",
        }
    }

    fn accepts(self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match self {
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::StringList => matches!(value, Value::Array(items) if items.iter().all(Value::is_string)),
        }
    }
}

/// One parameter of an action class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The value is a secret (a reset password, a token): wherever Warden shows or records the
    /// request — the audit log, explain, the console, notices, exports — and in the action
    /// digest, its value is replaced by its commitment ([`secret_commitment`]); only the
    /// connector sees it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// What a secret parameter's value is shown as: this, then its SHA-256.
pub const REDACTED: &str = "[redacted]";

/// A secret value as Warden records and digests it: `[redacted] sha256:HEX`, the SHA-256 of
/// the value's canonical JSON. The action digest covers this commitment, so an auditor can
/// recompute every digest from the log alone, and the value that runs is bound to it (the
/// executor recomputes it from the value it sends). A low-entropy secret can be guessed
/// against its hash: secrets sent as params are the tool's to generate (reset passwords,
/// one-time tokens), not guessable ones.
pub fn secret_commitment(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let bytes = crate::audit::canonical::to_vec(value).unwrap_or_else(|_| value.to_string().into_bytes());
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("{REDACTED} sha256:{hex}")
}

/// An entry of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionClass {
    pub id: String,
    pub description: String,
    pub category: Category,
    pub risk: Risk,
    pub reversible: bool,
    /// The action that undoes this one, when `reversible`.
    pub compensation: Option<String>,
    /// The asset kind this action touches (`host`, `account`, …).
    pub target_kind: String,
    /// The connector (tool) that performs it.
    pub tool: String,
    /// The team accountable for the workflow this action belongs to.
    pub owner: String,
    pub lease_ttl: Duration,
    pub params: Vec<ParamSpec>,
    /// For an `ip` action: whether its target may be a range (`ip:10.0.0.0/8`), not only one
    /// address. Off by default: a range is not a target unless the catalog says so.
    pub target_ranges: bool,
    /// The data classes it reads (`[data] allowed` of the agent must list every one).
    pub reads: Vec<String>,
    /// The label of what it returns to the agent.
    pub result: Label,
    /// It sends data outside the organisation (mail out, a ticket in a customer's system).
    pub egress: bool,
}

impl ActionClass {
    /// Read-only actions have no side effects and are never held back by confidence bands.
    pub fn read_only(&self) -> bool {
        self.category == Category::Enrichment
    }

    /// `params` as Warden shows, records and digests them: every parameter the catalog marks
    /// `secret` replaced by its [`secret_commitment`].
    pub fn redacted(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        params
            .iter()
            .map(|(k, v)| {
                let secret = self.params.iter().any(|p| &p.name == k && p.secret);
                (k.clone(), if secret { serde_json::Value::String(secret_commitment(v)) } else { v.clone() })
            })
            .collect()
    }

    /// Checks `params` against this action's schema: no unknown names, every required one
    /// present, every value of its declared type.
    pub fn check_params(&self, params: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        for (name, value) in params {
            let spec = self
                .params
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| format!("action `{}` has no parameter `{name}`", self.id))?;
            if !spec.ty.accepts(value) {
                return Err(format!("parameter `{name}` of action `{}` must be of type {}", self.id, spec.ty.as_str()));
            }
        }
        if let Some(missing) = self.params.iter().find(|p| p.required && !params.contains_key(&p.name)) {
            return Err(format!("action `{}` requires parameter `{}`", self.id, missing.name));
        }
        Ok(())
    }
}

/// The loaded catalog, keyed by action id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    actions: BTreeMap<String, ActionClass>,
}

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default, rename = "action")]
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    category: Category,
    risk: Risk,
    reversible: Spanned<bool>,
    compensation: Option<Spanned<String>>,
    target: Spanned<String>,
    tool: Spanned<String>,
    owner: Spanned<String>,
    lease_ttl: Option<Duration>,
    #[serde(default)]
    params: Vec<Spanned<ParamSpec>>,
    #[serde(default)]
    target_ranges: bool,
    #[serde(default)]
    reads: Vec<Spanned<String>>,
    #[serde(default)]
    result: Label,
    #[serde(default)]
    egress: bool,
}

/// Checks a list of data classes: each well-formed, none twice. The problems, with spans.
pub(crate) fn check_data_classes(
    file: &SourceFile,
    classes: &[Spanned<String>],
    what: &str,
    problems: &mut Vec<Problem>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for c in classes {
        let name = c.get_ref().as_str();
        if !is_data_class(name) {
            problems.push(file.problem_at(
                Some(c.span()),
                format!("{what}: data class `{name}` must be dot-separated lowercase words, like `email.body`"),
            ));
        } else if seen.contains(&name) {
            problems.push(file.problem_at(Some(c.span()), format!("{what}: data class `{name}` is listed twice")));
        }
        seen.push(name);
    }
}

/// `host.isolate`: dot-separated lowercase words.
pub fn is_action_id(s: &str) -> bool {
    s.split('.').count() >= 2 && s.split('.').all(is_ident)
}

/// A lowercase identifier: `[a-z][a-z0-9_]*`.
pub fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z')) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Catalog {
    /// Parses and checks `actions.toml`. Every problem is collected, not just the first.
    pub fn parse(file: &SourceFile) -> Result<Self, Vec<Problem>> {
        let raw: RawCatalog = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
        let mut problems = Vec::new();
        let mut actions = BTreeMap::new();
        let mut compensations = Vec::new();
        for a in raw.actions {
            let id = a.id.get_ref().clone();
            if !is_action_id(&id) {
                problems.push(file.problem_at(
                    Some(a.id.span()),
                    format!("action id `{id}` must be dot-separated lowercase words, like `host.isolate`"),
                ));
                continue;
            }
            if id.starts_with("warden.") {
                problems.push(file.problem_at(
                    Some(a.id.span()),
                    format!("action id `{id}`: the `warden.` namespace is Warden's own (its MCP tools)"),
                ));
                continue;
            }
            if actions.contains_key(&id) {
                problems.push(file.problem_at(Some(a.id.span()), format!("duplicate action `{id}`")));
                continue;
            }
            let target_kind = a.target.get_ref().clone();
            if !is_ident(&target_kind) {
                problems.push(file.problem_at(
                    Some(a.target.span()),
                    format!("target kind `{target_kind}` must be a lowercase word, like `host`"),
                ));
            }
            for field in [&a.tool, &a.owner] {
                if field.get_ref().trim().is_empty() {
                    problems
                        .push(file.problem_at(Some(field.span()), format!("action `{id}`: value must not be empty")));
                }
            }
            let mut seen = Vec::new();
            for p in &a.params {
                let name = &p.get_ref().name;
                if !is_ident(name) {
                    problems.push(
                        file.problem_at(
                            Some(p.span()),
                            format!("parameter name `{name}` must be a lowercase identifier"),
                        ),
                    );
                } else if seen.contains(name) {
                    problems.push(file.problem_at(Some(p.span()), format!("duplicate parameter `{name}`")));
                }
                // The log records a secret as its commitment, a string: a secret of another type
                // could not be decided again from the log as it was decided.
                if p.get_ref().secret && p.get_ref().ty != ParamType::String {
                    problems.push(file.problem_at(
                        Some(p.span()),
                        format!("secret parameter `{name}` must be of type `string` (a secret is recorded as its commitment)"),
                    ));
                }
                seen.push(name.clone());
            }
            check_data_classes(file, &a.reads, &format!("action `{id}` `reads`"), &mut problems);
            match (*a.reversible.get_ref(), &a.compensation) {
                (true, None) => problems.push(file.problem_at(
                    Some(a.reversible.span()),
                    format!("action `{id}` is reversible but names no `compensation`"),
                )),
                (false, Some(c)) => {
                    problems.push(file.problem_at(
                        Some(c.span()),
                        format!("action `{id}` names a compensation but is not `reversible`"),
                    ))
                }
                (true, Some(c)) => compensations.push((id.clone(), c.clone())),
                (false, None) => {}
            }
            actions.insert(
                id.clone(),
                ActionClass {
                    id,
                    description: a.description,
                    category: a.category,
                    risk: a.risk,
                    reversible: *a.reversible.get_ref(),
                    compensation: a.compensation.map(|c| c.into_inner()),
                    target_kind,
                    tool: a.tool.into_inner(),
                    owner: a.owner.into_inner(),
                    lease_ttl: a.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
                    params: a.params.into_iter().map(Spanned::into_inner).collect(),
                    target_ranges: a.target_ranges,
                    reads: a.reads.into_iter().map(Spanned::into_inner).collect(),
                    result: a.result,
                    egress: a.egress,
                },
            );
        }
        for (id, comp) in compensations {
            match actions.get(comp.get_ref()) {
                None => problems.push(file.problem_at(
                    Some(comp.span()),
                    format!("compensation of `{id}` names a missing action `{}`", comp.get_ref()),
                )),
                Some(c) if c.target_kind != actions[&id].target_kind => problems.push(file.problem_at(
                    Some(comp.span()),
                    format!(
                        "compensation `{}` of `{id}` targets `{}`, not `{}`",
                        c.id, c.target_kind, actions[&id].target_kind
                    ),
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() { Ok(Self { actions }) } else { Err(problems) }
    }

    pub fn get(&self, id: &str) -> Option<&ActionClass> {
        self.actions.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ActionClass> {
        self.actions.values()
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Catalog, Vec<Problem>> {
        Catalog::parse(&SourceFile::new("actions.toml", text))
    }

    const ISOLATE: &str = r#"
[[action]]
id = "host.isolate"
category = "containment"
risk = "high"
reversible = true
compensation = "host.release"
target = "host"
tool = "edr"
owner = "team:endpoint"
params = [{ name = "reason", type = "string", required = true }]

[[action]]
id = "host.release"
category = "containment"
risk = "medium"
reversible = true
compensation = "host.isolate"
target = "host"
tool = "edr"
owner = "team:endpoint"
lease_ttl = "2m"
"#;

    #[test]
    fn parses_a_reversible_pair() {
        let c = parse(ISOLATE).unwrap();
        let iso = c.get("host.isolate").unwrap();
        assert_eq!(iso.compensation.as_deref(), Some("host.release"));
        assert_eq!(iso.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.get("host.release").unwrap().lease_ttl.as_secs(), 120);
    }

    #[test]
    fn compensation_naming_a_missing_action_is_located() {
        let text = ISOLATE.replace("compensation = \"host.release\"", "compensation = \"host.relase\"");
        let errs = parse(&text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(7));
        assert!(errs[0].message.contains("missing action `host.relase`"), "{}", errs[0]);
    }

    #[test]
    fn duplicate_ids_and_unknown_categories_are_errors() {
        let dup = format!(
            "{ISOLATE}\n{}",
            &ISOLATE[ISOLATE.find("[[action]]").unwrap()..ISOLATE.find("\n\n[[action]]").unwrap()]
        );
        let errs = parse(&dup).unwrap_err();
        assert!(errs.iter().any(|e| e.message == "duplicate action `host.isolate`"), "{errs:?}");

        let errs = parse(&ISOLATE.replacen("containment", "containmnet", 1)).unwrap_err();
        assert_eq!(errs[0].line, Some(4));
        assert!(errs[0].message.contains("containmnet"));
    }

    #[test]
    fn the_warden_namespace_is_reserved() {
        let text = ISOLATE.replace("id = \"host.release\"", "id = \"warden.open_task\"");
        let errs = parse(&text).unwrap_err();
        assert!(errs.iter().any(|e| e.message.contains("`warden.` namespace")), "{errs:?}");
    }

    #[test]
    fn reversible_needs_a_compensation_and_vice_versa() {
        let errs = parse(&ISOLATE.replacen("compensation = \"host.release\"\n", "", 1)).unwrap_err();
        assert!(errs[0].message.contains("names no `compensation`"));
        let errs = parse(&ISOLATE.replacen("reversible = true", "reversible = false", 1)).unwrap_err();
        assert!(errs[0].message.contains("is not `reversible`"));
    }

    #[test]
    fn params_are_checked_against_the_schema() {
        let c = parse(ISOLATE).unwrap();
        let iso = c.get("host.isolate").unwrap();
        let ok: serde_json::Map<_, _> = serde_json::from_str(r#"{"reason":"c2 beacon"}"#).unwrap();
        assert!(iso.check_params(&ok).is_ok());
        let missing = serde_json::Map::new();
        assert!(iso.check_params(&missing).unwrap_err().contains("requires parameter `reason`"));
        let wrong: serde_json::Map<_, _> = serde_json::from_str(r#"{"reason":7}"#).unwrap();
        assert!(iso.check_params(&wrong).unwrap_err().contains("type string"));
        let extra: serde_json::Map<_, _> = serde_json::from_str(r#"{"reason":"x","force":true}"#).unwrap();
        assert!(iso.check_params(&extra).unwrap_err().contains("no parameter `force`"));
    }
}
