//! `warden report autonomy`: an agent's track record per action, from the audit log alone
//! (DESIGN §13; the figures are [`warden_core::report`]'s, so an auditor can recompute them).
//! Reads a data directory's log (`--data`, `--store`) or a running server's (`--server`, a
//! human's token); the recommendations are proposals, written as guardrail diffs, never applied.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use warden_core::audit::entry::Entry;
use warden_core::report::{AutonomyReport, Calibration, Filter, Rules, Window};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per agent × action: requests, executions, rollbacks, approvals, agreement, calibration,
    /// and a recommendation (promote, hold, demote) with the evidence behind it.
    Autonomy(AutonomyArgs),
    /// Each control of OWASP ASI and NHI, NIST AI RMF, CSA MAESTRO and MITRE ATLAS: the
    /// Warden features that address it and live evidence from the log (counts, last
    /// occurrence, example entries with inclusion proofs); gaps named, never passed.
    Controls(ControlsArgs),
}

#[derive(Debug, Args)]
pub struct ControlsArgs {
    /// How far back (`7d`, `30d`, `12h`); `all` for the whole log.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Only controls of this framework (`OWASP`, `NIST`, `MAESTRO`, `ATLAS`: matched in the
    /// framework's name).
    #[arg(long)]
    pub framework: Option<String>,
    /// The log to read: `--data` (and `--store`), or a running server's (`--server`, a human's
    /// token).
    #[command(flatten)]
    pub target: crate::cmd::agent::Target,
    #[arg(long, value_enum, default_value_t)]
    pub output: ReportOutput,
}

#[derive(Debug, Args)]
pub struct AutonomyArgs {
    /// How far back (`7d`, `30d`, `12h`); `all` for the whole log.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Only this agent (SPIFFE ID).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this action class.
    #[arg(long)]
    pub action: Option<String>,
    /// Decided approvals needed before agreement counts as evidence.
    #[arg(long, default_value_t = Rules::default().min_decided)]
    pub min_decided: u64,
    /// Agreement at or above which a level-2 grant is proposed for level 3.
    #[arg(long, default_value_t = Rules::default().promote_agreement)]
    pub promote_agreement: f64,
    /// Agreement whose 95 % upper bound below this proposes a level lower.
    #[arg(long, default_value_t = Rules::default().demote_agreement)]
    pub demote_agreement: f64,
    /// The policy bundle whose guardrail files the diffs change (default: the bundle in force
    /// recorded in the store; with --server, no diffs without it).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The log to read: `--data` (and `--store`), or a running server's through
    /// `GET /v1/audit/entries` (`--server`, a human's token).
    #[command(flatten)]
    pub target: crate::cmd::agent::Target,
    /// `html`: one self-contained page (inline SVG charts, no script, nothing fetched).
    #[arg(long, value_enum, default_value_t)]
    pub output: ReportOutput,
}

/// How a report is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportOutput {
    #[default]
    Text,
    Json,
    Html,
}

pub fn run(c: ReportCommand) -> Result<(), Failure> {
    match c {
        ReportCommand::Autonomy(a) => autonomy(a),
        ReportCommand::Controls(a) => controls(a),
    }
}

/// A log's entries, read a page at a time from `fetch` (the entries from a sequence number
/// on; an empty page ends the log). The first failure ends it and is kept in `error`.
struct Paged<F> {
    fetch: F,
    next: u64,
    page: std::vec::IntoIter<(u64, Entry)>,
    error: Option<Failure>,
}

impl<F: FnMut(u64) -> Result<Vec<(u64, Entry)>, Failure>> Iterator for Paged<F> {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        if self.error.is_some() {
            return None;
        }
        if self.page.len() == 0 {
            match (self.fetch)(self.next) {
                Ok(page) => self.page = page.into_iter(),
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
        let (seq, entry) = self.page.next()?;
        self.next = seq + 1;
        Some(entry)
    }
}

/// `f` over the entries `fetch` pages through; a failure to read any page is the answer.
fn over_pages<T>(
    fetch: impl FnMut(u64) -> Result<Vec<(u64, Entry)>, Failure>,
    f: impl FnOnce(&mut dyn Iterator<Item = Entry>) -> T,
) -> Result<T, Failure> {
    let mut entries = Paged { fetch, next: 0, page: Vec::new().into_iter(), error: None };
    let out = f(&mut entries);
    entries.error.map_or(Ok(out), Err)
}

/// `f` over the whole log of `target`: a data directory's store, or a server's log through
/// `GET /v1/audit/entries` (a human's token), read a page at a time.
pub fn over_log<T>(
    target: &crate::cmd::agent::Target,
    f: impl FnOnce(&mut dyn Iterator<Item = Entry>) -> T,
) -> Result<T, Failure> {
    match &target.server {
        Some(url) => {
            let client = crate::client::Client::new(url, target.token.as_deref(), target.ca_cert.as_deref())?;
            over_pages(|from| server_page(&client, from), f)
        }
        None => {
            let at = crate::store_at(target.store.as_deref())?;
            let store = warden_store::data_dir::open_store_at(&target.data, &at).map_err(crate::data_dir_failure)?;
            over_pages(|from| store_page(store.as_ref(), from), f)
        }
    }
}

/// The window `--since` names, up to now: `all`, or a duration back (`7d`, `12h`).
pub fn window(since: &str) -> Result<Window, Failure> {
    let now = time::OffsetDateTime::now_utc();
    match since {
        "all" => Ok(Window { from: None, to: None }),
        text => {
            let d = warden_core::duration::Duration::parse(text)
                .map_err(|e| Failure::Invalid(format!("error: --since `{text}`: {e}")))?;
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            Ok(Window { from: Some(now - time::Duration::seconds(secs)), to: Some(now) })
        }
    }
}

/// A page of a store's log.
fn store_page(store: &dyn warden_store::Store, from: u64) -> Result<Vec<(u64, Entry)>, Failure> {
    let unreadable = |e: String| Failure::Other(anyhow::anyhow!("the audit log cannot be read: {e}"));
    let stored = store.entries(from, 4096).map_err(|e| unreadable(e.to_string()))?;
    stored
        .iter()
        .map(|e| {
            Entry::parse(&e.bytes)
                .map(|entry| (e.seq, entry))
                .map_err(|err| unreadable(format!("entry {}: {err} (run `warden audit verify`)", e.seq)))
        })
        .collect()
}

/// A page of a server's log (`GET /v1/audit/entries`).
fn server_page(client: &crate::client::Client, from: u64) -> Result<Vec<(u64, Entry)>, Failure> {
    let page: serde_json::Value = client.get(&format!("/v1/audit/entries?since={from}&limit=1000"))?;
    page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let seq = row["seq"].as_u64().unwrap_or(from);
            serde_json::from_value::<Entry>(row["entry"].clone())
                .map(|e| (seq, e))
                .map_err(|e| Failure::Other(anyhow::anyhow!("the server's entry {seq} cannot be read: {e}")))
        })
        .collect()
}

fn autonomy(a: AutonomyArgs) -> Result<(), Failure> {
    let window = window(&a.since)?;
    for (name, v) in [("--promote-agreement", a.promote_agreement), ("--demote-agreement", a.demote_agreement)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Failure::Invalid(format!("error: {name} must be 0 to 1, not {v}")));
        }
    }
    let rules = Rules {
        min_decided: a.min_decided,
        promote_agreement: a.promote_agreement,
        demote_agreement: a.demote_agreement,
        ..Rules::default()
    };
    let filter = Filter { agent: a.agent.clone(), action: a.action.clone(), ..Default::default() };
    let policy = match &a.policy {
        Some(dir) => Some(crate::cmd::policy::load(dir)?.1.files().to_vec()),
        None => None,
    };
    let (report, files) = match &a.target.server {
        Some(url) => {
            let client = crate::client::Client::new(url, a.target.token.as_deref(), a.target.ca_cert.as_deref())?;
            let report = over_pages(
                |from| server_page(&client, from),
                |e| warden_core::report::autonomy(e, window, &filter, &rules),
            )?;
            (report, policy.unwrap_or_default())
        }
        None => {
            let at = crate::store_at(a.target.store.as_deref())?;
            let store = warden_store::data_dir::open_store_at(&a.target.data, &at).map_err(crate::data_dir_failure)?;
            let report = of_store(store.as_ref(), window, &filter, &rules)?;
            let files = policy.unwrap_or_else(|| {
                warden_server::state::stored_bundle(store.as_ref())
                    .ok()
                    .flatten()
                    .map(|b| b.files().to_vec())
                    .unwrap_or_default()
            });
            (report, files)
        }
    };
    let diffs = diffs(&report, &files);
    match a.output {
        ReportOutput::Html => {
            let page = warden_server::reports::autonomy_html(&report, &diffs, a.since.as_str())
                .map_err(|e| anyhow::anyhow!("the report did not render: {e}"))?;
            outln!("{page}");
        }
        ReportOutput::Json => {
            let mut v = serde_json::to_value(&report).map_err(anyhow::Error::from)?;
            for (row, d) in v["rows"].as_array_mut().into_iter().flatten().zip(&diffs) {
                row["recommendation"]["diff"] = serde_json::json!(d);
            }
            outln!("{v}");
        }
        ReportOutput::Text => outln!("{}", text(&report, &diffs, a.since.as_str())),
    }
    Ok(())
}

/// The autonomy report of a store's whole log, read a batch at a time.
pub fn of_store(
    store: &dyn warden_store::Store,
    window: Window,
    filter: &Filter,
    rules: &Rules,
) -> Result<AutonomyReport, Failure> {
    over_pages(|from| store_page(store, from), |e| warden_core::report::autonomy(e, window, filter, rules))
}

/// Each row's proposed guardrail diff, from the bundle's `files`.
pub fn diffs(report: &AutonomyReport, files: &[warden_core::SourceFile]) -> Vec<Option<String>> {
    warden_core::report::diffs(report, files)
}

fn counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "—".into(), |s| format!("{s:.1} s"))
}

fn calibration(c: &Calibration, min: u64) -> String {
    match (c.ece, c.brier) {
        (Some(ece), Some(brier)) if c.samples >= min => {
            format!("{} samples, ECE {ece:.3}, Brier {brier:.3}", c.samples)
        }
        (Some(ece), Some(brier)) => {
            format!("{} samples (not enough evidence; ECE {ece:.3}, Brier {brier:.3})", c.samples)
        }
        _ => "no samples".into(),
    }
}

/// The report as text: a block per agent × action, then the approvers.
pub fn text(r: &AutonomyReport, diffs: &[Option<String>], since: &str) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "autonomy report — since {since}: {} of {} log entries; rules: {} decided approvals for evidence, promote at \
         ≥ {:.0} % agreement, demote below {:.0} %",
        r.in_window,
        r.entries,
        r.rules.min_decided,
        r.rules.promote_agreement * 100.0,
        r.rules.demote_agreement * 100.0
    ));
    if r.rows.is_empty() {
        out.push("no agent requests in the window".into());
    }
    for (row, diff) in r.rows.iter().zip(diffs) {
        out.push(String::new());
        out.push(format!("{} × {}", row.agent, row.action));
        out.push(format!("  requests     {} · bands {}", counts(&row.requests), counts(&row.bands)));
        if !row.shadow.is_empty() {
            let h = &row.shadow_humans;
            out.push(format!(
                "  shadow       would have: {} · then humans, on the same action and target: approved {}, rejected {}, no verdict {}",
                counts(&row.shadow),
                h.approved,
                h.rejected,
                h.unseen
            ));
        }
        let x = &row.executions;
        out.push(format!(
            "  executions   succeeded {}, failed {}, unknown {} · rolled back {} · breaker trips {}",
            x.succeeded, x.failed, x.unknown, row.rollbacks, row.breaker_trips
        ));
        let ap = &row.approvals;
        out.push(format!(
            "  approvals    approved {}, rejected {}, expired {}, cancelled {} · decided in {} median, {} p90 · by {}",
            ap.approved,
            ap.rejected,
            ap.expired,
            ap.cancelled,
            secs(ap.median_secs),
            secs(ap.p90_secs),
            counts(&ap.deciders)
        ));
        out.push(match &row.agreement {
            Some(g) => format!(
                "  agreement    {} of {} ({:.1} %, 95 % interval {:.1}–{:.1} %){}",
                ap.approved,
                g.decided,
                g.rate * 100.0,
                g.low * 100.0,
                g.high * 100.0,
                if g.decided < r.rules.min_decided { " — not enough evidence" } else { "" }
            ),
            None => "  agreement    no decided approvals".into(),
        });
        out.push(format!(
            "  calibration  verdicts: {} · outcomes: {}",
            calibration(&row.calibration_verdicts, r.rules.min_decided),
            calibration(&row.calibration_outcomes, r.rules.min_decided)
        ));
        let rec = &row.recommendation;
        let levels = match (rec.level, rec.proposed_level) {
            (Some(l), Some(p)) => format!(" (level {l} → {p})"),
            (Some(l), None) => format!(" (level {l})"),
            _ => String::new(),
        };
        out.push(format!("  → {}{levels}: {}", rec.verdict, rec.reasons.join("; ")));
        if let Some(g) = &rec.grant {
            out.push(format!("    grant      {g}"));
        }
        if !rec.evidence.is_empty() {
            let ids: Vec<String> = rec.evidence.iter().map(u64::to_string).collect();
            out.push(format!("    evidence   audit entries {} (warden audit proof --index N)", ids.join(", ")));
        }
        if let Some(d) = diff {
            out.push("    proposed change (never applied by Warden):".into());
            out.extend(d.lines().map(|l| format!("      {l}")));
        }
    }
    if !r.approvers.is_empty() {
        out.push(String::new());
        out.push("approvers".into());
        for l in &r.approvers {
            out.push(format!(
                "  {}  {} decisions ({} approved), {} · median {} · {} quick{}",
                l.approver,
                l.decisions,
                l.approved,
                l.per_hour.map_or_else(|| "—/h".into(), |h| format!("{h:.1}/h")),
                secs(l.median_secs),
                l.quick,
                if l.flags.is_empty() { String::new() } else { format!(" · ⚠ {}", l.flags.join("; ")) }
            ));
        }
    }
    if !r.roles.is_empty() {
        out.push(String::new());
        out.push("roles".into());
        for l in &r.roles {
            out.push(format!(
                "  {}  asked {} · votes {} ({}) · expired {}",
                l.role,
                l.asked,
                l.votes,
                l.votes_per_hour.map_or_else(|| "—/h".into(), |h| format!("{h:.1}/h")),
                l.expired
            ));
        }
    }
    out.join("\n")
}

/// The inclusion proofs of `seqs` against the latest checkpoint, by sequence number.
fn proofs_of(
    seqs: &std::collections::BTreeSet<u64>,
    mut prove: impl FnMut(u64) -> Result<serde_json::Value, Failure>,
) -> Result<std::collections::BTreeMap<u64, serde_json::Value>, Failure> {
    seqs.iter().map(|&seq| prove(seq).map(|p| (seq, p))).collect()
}

fn controls(a: ControlsArgs) -> Result<(), Failure> {
    use warden_core::controls::{ControlsReport, Mapping};
    let window = window(&a.since)?;
    let mapping = Mapping::shipped();
    let examples = |r: &ControlsReport| -> std::collections::BTreeSet<u64> {
        r.controls.iter().flat_map(|c| c.examples.iter().copied()).collect()
    };
    let (mut report, proofs) = match &a.target.server {
        Some(url) => {
            let client = crate::client::Client::new(url, a.target.token.as_deref(), a.target.ca_cert.as_deref())?;
            let report = over_pages(
                |from| server_page(&client, from),
                |e| warden_core::controls::controls(e, window, &mapping),
            )?;
            let proofs =
                proofs_of(&examples(&report), |seq| client.get(&format!("/v1/audit/proof/inclusion?index={seq}")))?;
            (report, proofs)
        }
        None => {
            let at = crate::store_at(a.target.store.as_deref())?;
            let store = warden_store::data_dir::open_store_at(&a.target.data, &at).map_err(crate::data_dir_failure)?;
            let report = over_pages(
                |from| store_page(store.as_ref(), from),
                |e| warden_core::controls::controls(e, window, &mapping),
            )?;
            let proofs = proofs_of(&examples(&report), |seq| {
                let p = warden_store::proofs::inclusion(store.as_ref(), seq, None)
                    .map_err(|e| Failure::Other(anyhow::anyhow!("no inclusion proof of entry {seq}: {e}")))?;
                serde_json::to_value(p).map_err(|e| Failure::Other(e.into()))
            })?;
            (report, proofs)
        }
    };
    if let Some(f) = &a.framework {
        let f = f.to_lowercase();
        report.controls.retain(|c| c.framework.to_lowercase().contains(&f));
        if report.controls.is_empty() {
            return Err(Failure::Invalid(format!("error: --framework `{f}` names no framework of the mapping")));
        }
        report.summary.clear();
        for c in &report.controls {
            *report.summary.entry(c.status).or_default() += 1;
        }
    }
    match a.output {
        ReportOutput::Json => {
            let mut v = serde_json::to_value(&report).map_err(anyhow::Error::from)?;
            v["proofs"] = serde_json::to_value(&proofs).map_err(anyhow::Error::from)?;
            outln!("{v}");
        }
        ReportOutput::Html => {
            let page = warden_server::reports::controls_html(&report, &proofs, a.since.as_str())
                .map_err(|e| anyhow::anyhow!("the report did not render: {e}"))?;
            outln!("{page}");
        }
        ReportOutput::Text => outln!("{}", controls_text(&report, &proofs, &a.since)),
    }
    Ok(())
}

/// The controls report as text: a summary, then a block per framework.
pub fn controls_text(
    r: &warden_core::controls::ControlsReport,
    proofs: &std::collections::BTreeMap<u64, serde_json::Value>,
    since: &str,
) -> String {
    let mut out = vec![format!(
        "controls report — since {since}: {} of {} log entries · {}",
        r.in_window,
        r.entries,
        r.summary.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect::<Vec<_>>().join(", ")
    )];
    let mut framework = "";
    for c in &r.controls {
        if c.framework != framework {
            framework = &c.framework;
            out.push(String::new());
            out.push(framework.to_string());
        }
        out.push(format!("  {:<12} {:<16} {}", c.id, c.status.as_str(), c.title));
        if !c.features.is_empty() {
            out.push(format!("               features  {}", c.features.join(", ")));
        }
        if c.evidence > 0 {
            let last = c.last.as_ref().map_or(String::new(), |(seq, t)| format!(", last #{seq} at {t}"));
            let ex: Vec<String> = c
                .examples
                .iter()
                .map(|s| {
                    let size = proofs.get(s).and_then(|p| p["tree_size"].as_u64());
                    size.map_or_else(|| format!("#{s}"), |n| format!("#{s} (proved in tree {n})"))
                })
                .collect();
            out.push(format!("               evidence  {} entries{last}; e.g. {}", c.evidence, ex.join(", ")));
        }
        if let Some(g) = &c.gap {
            out.push(format!("               gap       {g}"));
        }
        if let Some(n) = &c.note {
            out.push(format!("               note      {n}"));
        }
    }
    out.push(String::new());
    out.push("each example's inclusion proof: `--output json` (`proofs`), or `warden audit proof --index N`".into());
    out.join("\n")
}
