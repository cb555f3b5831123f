//! The asset inventory (`assets.toml`, `assets.csv`): what actions touch and how much it matters.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::catalog::is_ident;
use crate::source::{Problem, SourceFile, toml_problem};

/// How critical an asset is: `tier0` (crown jewels) to `tier3` (least critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Tier0,
    Tier1,
    Tier2,
    Tier3,
}

impl Criticality {
    pub const ALL: [Criticality; 4] = [Self::Tier0, Self::Tier1, Self::Tier2, Self::Tier3];

    /// 0 for `tier0` … 3 for `tier3`: a lower number is more critical.
    pub fn tier(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tier0 => "tier0",
            Self::Tier1 => "tier1",
            Self::Tier2 => "tier2",
            Self::Tier3 => "tier3",
        }
    }
}

impl FromStr for Criticality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown criticality `{s}` (expected tier0, tier1, tier2 or tier3)"))
    }
}

/// Where an asset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Prod,
    Staging,
    Sandbox,
}

impl Environment {
    pub const ALL: [Environment; 3] = [Self::Prod, Self::Staging, Self::Sandbox];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prod => "prod",
            Self::Staging => "staging",
            Self::Sandbox => "sandbox",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown environment `{s}` (expected prod, staging or sandbox)"))
    }
}

/// What an action names as its target: `KIND:ID`, e.g. `host:web-42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetRef {
    pub kind: String,
    pub id: String,
}

impl TargetRef {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self { kind: kind.into(), id: id.into() }
    }
}

impl FromStr for TargetRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, id) =
            s.split_once(':').ok_or_else(|| format!("target `{s}` must be written `KIND:ID`, like `host:web-42`"))?;
        if !is_ident(kind) {
            return Err(format!("target kind `{kind}` must be a lowercase word, like `host`"));
        }
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(format!("target `{s}` has an empty or unprintable id"));
        }
        if let Some(c) = id.chars().find(|c| is_separator_lookalike(*c)) {
            return Err(format!("target `{s}` holds U+{:04X}, which reads as a path separator or dot", c as u32));
        }
        Ok(Self::new(kind, canonical_id(kind, id)))
    }
}

/// Unicode format characters (general category Cf) and default-ignorable code points
/// (variation selectors, fillers, combining grapheme joiner): invisible, so `breakglass-01`
/// with one in it looks like `breakglass-01` and is another string.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF
        | 0xFFA0 | 0xFFF0..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// Compatibility characters whose NFKC form is, or holds, a path separator or a dot segment
/// (`．`, `‥`, `／`, `＼`…): refused as they are written, so no canonical id gains one.
fn is_separator_lookalike(c: char) -> bool {
    matches!(c as u32, 0x2024..=0x2026 | 0xFE19 | 0xFE30 | 0xFE52 | 0xFE68 | 0xFF0E | 0xFF0F | 0xFF3C)
}

/// The one canonical form of a target id of `kind` (DESIGN §6: no case, spacing,
/// Unicode-format or path way around a forbid keyed on an asset): hosts, accounts, users and
/// mailboxes are case-folded (a host's one trailing dot dropped); an IP is written in its
/// normal form (an IPv4-mapped IPv6 address as the IPv4 address). What cannot be made
/// canonical is refused by [`check_id`].
pub fn canonical_id(kind: &str, id: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    match kind {
        "host" | "account" | "mailbox" | "user" => {
            // Compatibility forms (fullwidth `ｂ`, `１`) are the letters they stand for, any
            // case is lower case, and one trailing dot after a name character is the name
            // (`web-02.` is `web-02`); a trailing dot after anything else is left for the
            // checks (`..`, `a/.`).
            // Lower-casing an NFKC string can leave it out of NFKC (`Ϊ́` lowers to `ϊ` + an
            // accent, which NFKC composes into `ΐ`): both again until nothing changes, so the
            // canonical form of a canonical form is itself (a logged target parses back to the
            // target that was decided).
            let mut lower = id.nfkc().collect::<String>().to_lowercase();
            for _ in 0..8 {
                let again = lower.nfkc().collect::<String>().to_lowercase();
                if again == lower {
                    break;
                }
                lower = again;
            }
            match lower.strip_suffix('.') {
                Some(bare) if bare.ends_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_') => bare.to_string(),
                _ => lower,
            }
        }
        "ip" => match id.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            Ok(v4) => v4.to_string(),
            Err(_) => id.to_string(),
        },
        _ => id.to_string(),
    }
}

/// Refuses a target id that has no one spelling: whitespace, Unicode format characters
/// (invisible: `breakglass-01` with a zero-width space in it looks the same and is another
/// string), `.`/`..` path segments, and for kind `ip` anything but one address (a range is not
/// a target).
pub fn check_id(id: &str) -> Result<(), String> {
    if let Some(c) = id.chars().find(|c| c.is_whitespace() || is_format_char(*c)) {
        return Err(format!(
            "target id `{}` holds U+{:04X}, a space or an invisible format character: an id has one spelling",
            id.escape_debug(),
            c as u32
        ));
    }
    if id.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err(format!("target id `{id}` holds a `.` or `..` path segment"));
    }
    Ok(())
}

/// Whether `ip:ID` names one address: a range, a name or a typo is not a target. The
/// decision denies such a request (`invalid_request`); the inventory refuses such an asset.
pub fn check_ip(kind: &str, id: &str) -> Result<(), String> {
    if kind == "ip" && id.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "target `ip:{id}` must be one IPv4 or IPv6 address (a range only for an action whose catalog entry \
             says `target_ranges = true`)"
        ));
    }
    Ok(())
}

/// Whether `id` is a CIDR range in its normal form (`10.0.0.0/8`, `2001:db8::/32`): the
/// address is the network's first (no host bits set) and the prefix fits the family.
pub fn is_cidr(id: &str) -> bool {
    let Some((addr, len)) = id.split_once('/') else { return false };
    let (Ok(addr), Ok(len)) = (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) else { return false };
    match addr {
        std::net::IpAddr::V4(a) => {
            len <= 32 && (len == 32 || u32::from(a) & (u32::MAX >> len) == 0) && id == format!("{a}/{len}")
        }
        std::net::IpAddr::V6(a) => {
            len <= 128 && (len == 128 || u128::from(a) & (u128::MAX >> len) == 0) && id == format!("{a}/{len}")
        }
    }
}

/// One character an id may hold (not `/` or `\\`, which separate segments): no control,
/// space or Unicode format character — the same set [`check_id`] refuses, as a regex class.
const ID_CHAR: &str = "[^\\x00-\\x20\\x7f-\\xa0\\u00ad\\u034f\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2024-\\u2026\\u2028-\\u202f\\u205f-\\u206f\\u3000\\u3164\\ufe00-\\ufe0f\\ufe19\\ufe30\\ufe52\\ufe68\\ufeff\\uff0e\\uff0f\\uff3c\\uffa0\\ufff0-\\ufffb\\U000110bd\\U000110cd\\U00013430-\\U0001343f\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0000-\\U000e0fff/\\\\";

/// The pattern of a target id [`check_id`] accepts (for API schemas): segments separated by
/// `/` or `\\`, none of them `.` or `..`, of [`ID_CHAR`]s.
pub fn id_pattern() -> String {
    let c = format!("{ID_CHAR}]");
    let a = format!("{ID_CHAR}.]");
    let nonempty = format!("(?:{a}{c}*|\\.{a}{c}*|\\.\\.{c}+)");
    format!("(?:(?:{nonempty}?[/\\\\])+{nonempty}?|{nonempty})")
}

/// The pattern of a whole target, `KIND:ID` ([`TargetRef`] and [`check_id`] accept exactly it).
pub fn target_pattern() -> String {
    format!("^[a-z][a-z0-9_]*:{}$", id_pattern())
}

impl TargetRef {
    /// [`check_id`] of this target: whether it is one an action may name.
    pub fn check(&self) -> Result<(), String> {
        check_id(&self.id)
    }
}

impl TryFrom<String> for TargetRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TargetRef> for String {
    fn from(t: TargetRef) -> String {
        t.to_string()
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// One asset of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub kind: String,
    pub id: String,
    pub criticality: Criticality,
    pub environment: Environment,
    pub owner: String,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Other spellings of this asset's id (an FQDN, a UPN): a request naming one is decided
    /// as this asset, so a forbid keyed on it holds whatever the agent calls it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Asset {
    /// What Warden assumes about a target it does not know: the worst case.
    pub fn unknown(target: &TargetRef) -> Self {
        Self {
            kind: target.kind.clone(),
            id: target.id.clone(),
            criticality: Criticality::Tier0,
            environment: Environment::Prod,
            owner: "unknown".into(),
            privileged: true,
            tags: Vec::new(),
            aliases: Vec::new(),
        }
    }

    pub fn target(&self) -> TargetRef {
        TargetRef::new(self.kind.clone(), self.id.clone())
    }
}

/// All known assets, keyed by `KIND:ID`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    assets: BTreeMap<TargetRef, Asset>,
    /// Each alias (canonical) → the asset it names.
    aliases: BTreeMap<TargetRef, TargetRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default, rename = "asset")]
    assets: Vec<Spanned<Asset>>,
}

impl Inventory {
    /// Parses `assets.toml`.
    pub fn parse_toml(file: &SourceFile) -> Result<Self, Vec<Problem>> {
        let raw: RawInventory = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
        let mut inv = Self::default();
        let mut problems = Vec::new();
        for a in raw.assets {
            let span = a.span();
            if let Err(msg) = inv.insert(a.into_inner()) {
                problems.push(file.problem_at(Some(span), msg));
            }
        }
        if problems.is_empty() { Ok(inv) } else { Err(problems) }
    }

    /// Parses an inventory export in CSV with the header
    /// `kind,id,criticality,environment,owner,privileged,tags` (tags separated by `;`).
    pub fn parse_csv(file: &SourceFile) -> Result<Self, Vec<Problem>> {
        const HEADER: [&str; 7] = ["kind", "id", "criticality", "environment", "owner", "privileged", "tags"];
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file.text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| vec![Problem { file: file.path.clone(), line: Some(1), message: e.to_string() }])?
            .clone();
        if header.iter().collect::<Vec<_>>() != HEADER {
            return Err(vec![Problem {
                file: file.path.clone(),
                line: Some(1),
                message: format!("header must be `{}`", HEADER.join(",")),
            }]);
        }
        let mut inv = Self::default();
        let mut problems = Vec::new();
        for record in reader.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map(|p| p.line() as usize);
                    problems.push(Problem { file: file.path.clone(), line, message: e.to_string() });
                    continue;
                }
            };
            let line = record.position().map(|p| p.line() as usize);
            let at = |message: String| Problem { file: file.path.clone(), line, message };
            let parsed = (|| -> Result<Asset, String> {
                let privileged = match &record[5] {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" | "" => false,
                    other => return Err(format!("privileged must be true or false, not `{other}`")),
                };
                Ok(Asset {
                    kind: record[0].to_string(),
                    id: record[1].to_string(),
                    criticality: record[2].parse()?,
                    environment: record[3].parse()?,
                    owner: record[4].to_string(),
                    privileged,
                    tags: record[6].split(';').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
                    aliases: Vec::new(),
                })
            })();
            match parsed.and_then(|a| inv.insert(a)) {
                Ok(()) => {}
                Err(msg) => problems.push(at(msg)),
            }
        }
        if problems.is_empty() { Ok(inv) } else { Err(problems) }
    }

    /// Adds one asset; an invalid kind or a second asset with the same `KIND:ID` is refused.
    pub fn insert(&mut self, asset: Asset) -> Result<(), String> {
        if !is_ident(&asset.kind) {
            return Err(format!("asset kind `{}` must be a lowercase word, like `host`", asset.kind));
        }
        if asset.id.is_empty() || asset.id.chars().any(char::is_control) {
            return Err(format!("asset of kind `{}` has an empty or unprintable id", asset.kind));
        }
        let mut asset = asset;
        check_id(&asset.id)
            .and_then(|()| check_ip(&asset.kind, &asset.id))
            .map_err(|e| format!("asset `{}:{}`: {e}", asset.kind, asset.id))?;
        asset.id = canonical_id(&asset.kind, &asset.id);
        let key = asset.target();
        if self.assets.contains_key(&key) || self.aliases.contains_key(&key) {
            return Err(format!("duplicate asset `{key}`"));
        }
        let mut aliases = Vec::new();
        for alias in &asset.aliases {
            check_id(alias).map_err(|e| format!("alias of `{key}`: {e}"))?;
            let id = canonical_id(&asset.kind, alias);
            let alias = TargetRef::new(asset.kind.clone(), id);
            if alias == key || self.assets.contains_key(&alias) || self.aliases.contains_key(&alias) {
                return Err(format!("alias `{alias}` of `{key}` names another asset or repeats one"));
            }
            aliases.push(alias);
        }
        for alias in aliases {
            self.aliases.insert(alias, key.clone());
        }
        self.assets.insert(key, asset);
        Ok(())
    }

    /// The asset's own reference for `target` when `target` is one of its aliases; otherwise
    /// `target` itself.
    pub fn resolve(&self, target: &TargetRef) -> TargetRef {
        self.aliases.get(target).cloned().unwrap_or_else(|| target.clone())
    }

    /// Merges `other` in; duplicates are reported, not overwritten.
    pub fn merge(&mut self, other: Inventory) -> Vec<String> {
        other.assets.into_values().filter_map(|a| self.insert(a).err()).collect()
    }

    /// The asset `target` names, by its id or one of its aliases.
    pub fn get(&self, target: &TargetRef) -> Option<&Asset> {
        self.assets.get(target).or_else(|| self.aliases.get(target).and_then(|k| self.assets.get(k)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.assets.values()
    }

    pub fn len(&self) -> usize {
        self.assets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cidr_in_normal_form_only() {
        for (id, ok) in [
            ("10.0.0.0/8", true),
            ("10.0.0.1/8", false),
            ("10.0.0.0/33", false),
            ("2001:db8::/32", true),
            ("2001:DB8::/32", false),
            ("10.0.0.0", false),
            ("10.0.0.0/08", false),
            ("0.0.0.0/0", true),
        ] {
            assert_eq!(is_cidr(id), ok, "{id}");
        }
    }

    #[test]
    fn target_refs_parse_kind_and_id() {
        let t: TargetRef = "ip:2001:db8::1".parse().unwrap();
        assert_eq!((t.kind.as_str(), t.id.as_str()), ("ip", "2001:db8::1"));
        assert!("web-42".parse::<TargetRef>().unwrap_err().contains("KIND:ID"));
        assert!("Host:x".parse::<TargetRef>().is_err());
        assert!("host:".parse::<TargetRef>().is_err());
    }

    #[test]
    fn unknown_targets_are_the_worst_case() {
        let a = Asset::unknown(&"host:ghost".parse().unwrap());
        assert_eq!(a.criticality, Criticality::Tier0);
        assert!(a.privileged);
        assert_eq!(a.environment, Environment::Prod);
    }

    #[test]
    fn toml_inventory_reports_duplicates_with_lines() {
        let text = r#"
[[asset]]
kind = "host"
id = "web-1"
criticality = "tier2"
environment = "prod"
owner = "team:web"

[[asset]]
kind = "host"
id = "web-1"
criticality = "tier3"
environment = "staging"
owner = "team:web"
"#;
        let errs = Inventory::parse_toml(&SourceFile::new("assets.toml", text)).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].to_string(), "assets.toml:9: duplicate asset `host:web-1`");
    }

    #[test]
    fn csv_inventory_parses_tags_and_locates_bad_rows() {
        let text = "kind,id,criticality,environment,owner,privileged,tags\n\
                    account,adm-jdoe,tier0,prod,team:iam,true,admin;break-glass\n\
                    host,web-2,tier9,prod,team:web,false,\n";
        let errs = Inventory::parse_csv(&SourceFile::new("assets.csv", text)).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0].message.contains("tier9"));

        let ok = text.replace("tier9", "tier2");
        let inv = Inventory::parse_csv(&SourceFile::new("assets.csv", ok)).unwrap();
        let adm = inv.get(&"account:adm-jdoe".parse().unwrap()).unwrap();
        assert!(adm.privileged);
        assert_eq!(adm.tags, ["admin", "break-glass"]);
        assert_eq!(inv.len(), 2);
    }

    #[test]
    fn csv_with_a_wrong_header_is_refused() {
        let errs = Inventory::parse_csv(&SourceFile::new("a.csv", "id,kind\nx,y\n")).unwrap_err();
        assert!(errs[0].message.starts_with("header must be"));
    }
}
