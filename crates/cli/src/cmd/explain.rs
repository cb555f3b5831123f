//! `warden explain ACTION_ID`: who is accountable for an action, from a running server.

use clap::Args;
use serde_json::Value;

use crate::Failure;
use crate::client::segment;
use crate::render::Output;

/// The accountability chain of one action: trigger → agent → request → decision → approvals →
/// lease → execution → rollback → who should have intervened, each audit entry proven against
/// the latest signed checkpoint. Exit 2 if any proof fails. Asks `--server`, or reads
/// `--data` directly.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The action request id (`act_…`).
    pub action_id: String,
    /// A running server to ask (`--token` or `WARDEN_TOKEN` for a human's token).
    #[arg(long, env = "WARDEN_SERVER")]
    pub server: Option<String>,
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "WARDEN_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Without --server: the data directory to read.
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: std::path::PathBuf,
    /// Where the store is: unset (or `sqlite`) for `warden.db` in the data directory, or a
    /// `postgres://` URL (`sslmode`, `sslrootcert` as libpq reads them) shared by many nodes.
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Without --server: the policy bundle whose escalation rules apply (the built-in example
    /// bundle when omitted).
    #[arg(long)]
    pub policy: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// The explanation as text, one fact per line.
pub fn text(e: &Value) -> String {
    let mut out = Vec::new();
    let a = &e["action"];
    out.push(format!(
        "{} {} on {} — {} ({})",
        s(&a["id"]),
        s(&a["action"]),
        s(&a["target"]),
        s(&a["state"]),
        s(&a["created_at"])
    ));
    let t = &e["trigger"];
    out.push(format!(
        "trigger    task {} \"{}\" from {} alert {} severity {} ({})",
        s(&t["task"]),
        s(&t["title"]),
        s(&t["source"]),
        s(&t["alert_id"]),
        s(&t["severity"]),
        if t["verified"] == true {
            "verified".to_string()
        } else {
            format!("asserted by {}, unverified", s(&t["opened_by"]))
        }
    ));
    out.extend(crate::cmd::task::taint_and_history(t));
    let g = &e["agent"];
    out.push(format!("agent      {} owner {} — {}", s(&g["id"]), s(&g["owner"]), s(&g["purpose"])));
    let r = &e["request"];
    out.push(format!("request    confidence {} — {}", s(&r["confidence"]), s(&r["rationale"])));
    out.push(format!("digest     {}  params {}", s(&r["digest"]), r["params"]));
    for ev in r["evidence"].as_array().into_iter().flatten() {
        out.push(format!("           evidence {} {}", s(&ev["kind"]), s(&ev["ref"])));
    }
    let d = &e["decision"];
    out.push(format!(
        "decision   {} at level {} (granted {}), bundle {}",
        s(&d["outcome"]),
        s(&d["effective_level"]),
        s(&d["granted_level"]),
        s(&d["bundle_version"])
    ));
    for p in d["policies"].as_array().into_iter().flatten() {
        out.push(format!(
            "           policy {} owner {} {}:{}",
            s(&p["id"]),
            s(&p["owner"]),
            s(&p["file"]),
            s(&p["line"])
        ));
    }
    for c in d["caps"].as_array().into_iter().flatten() {
        out.push(format!("           cap {}: {}", s(&c["code"]), s(&c["reason"])));
    }
    if let Some(ap) = e["approval"].as_object() {
        out.push(format!(
            "approval   {} {} (roles {}, quorum {})",
            s(&ap["id"]),
            s(&ap["state"]),
            s(&ap["roles"]),
            s(&ap["quorum"])
        ));
        for v in ap["votes"].as_array().into_iter().flatten() {
            out.push(format!(
                "           {} as {} at {}: {}",
                s(&v["user"]),
                s(&v["role"]),
                s(&v["at"]),
                s(&v["reason"])
            ));
        }
    }
    if let Some(l) = e["lease"].as_object() {
        out.push(format!(
            "lease      {} scope \"{}\" {} → {}, {} ({})",
            s(&l["id"]),
            s(&l["scope"]),
            s(&l["issued_at"]),
            s(&l["expires_at"]),
            s(&l["state"]),
            s(&l["revoked_reason"])
        ));
    }
    if let Some(x) = e["execution"].as_object() {
        out.push(format!(
            "execution  {} via {} (HTTP {}) {}",
            s(&x["state"]),
            s(&x["connector"]),
            s(&x["tool_status"]),
            s(&x["answer"])
        ));
    }
    if let Some(rb) = e["rollback"].as_object() {
        out.push(format!(
            "rollback   {} by {} at {}: {}",
            s(&rb["action"]),
            s(&rb["by"]),
            s(&rb["at"]),
            if rb["succeeded"] == true { "succeeded" } else { "failed" }
        ));
    }
    let x = &e["escalation"];
    out.push(format!(
        "accountable workflow owner {}, policy owners {}, agent owner {}; approvers {}; incident commander {}",
        s(&x["workflow_owner"]),
        s(&x["policy_owners"]),
        s(&x["agent_owner"]),
        s(&x["approver_roles"]),
        s(&x["incident_commander"])
    ));
    let cp = &e["checkpoint"];
    let entries = e["entries"].as_array().cloned().unwrap_or_default();
    let ok = entries.iter().filter(|c| c["verified"] == true).count();
    out.push(format!(
        "audit      {ok}/{} entries proven against checkpoint {} (size {}):",
        entries.len(),
        s(&cp["origin"]),
        s(&cp["size"])
    ));
    for c in &entries {
        out.push(format!(
            "           #{} {} {} by {} {}",
            s(&c["seq"]),
            s(&c["time"]),
            s(&c["type"]),
            s(&c["actor"]),
            if c["verified"] == true { "✓" } else { "✗ PROOF FAILED" }
        ));
    }
    out.join("\n")
}

fn local(a: &ExplainArgs) -> Result<Value, Failure> {
    let bundle = match &a.policy {
        Some(dir) => crate::cmd::policy::load(dir)?.1,
        None => {
            let files: Vec<warden_core::SourceFile> = crate::bundle_dir::example();
            warden_core::Bundle::load(&files)
                .map_err(|e| anyhow::anyhow!("the built-in example bundle is invalid: {e}"))?
        }
    };
    let at = crate::store_at(a.store.as_deref())?;
    let dir = warden_store::DataDir::open_at(
        &a.data,
        &at,
        std::sync::Arc::new(warden_store::SystemClock),
        warden_store::LedgerOptions::default(),
    )
    .map_err(crate::data_dir_failure)?;
    let e = warden_server::explain::explain_in(dir.ledger().store().as_ref(), &bundle, &a.action_id)
        .map_err(|e| crate::client::failure_for(e.status().as_u16(), e.code.as_str(), &e.message))?;
    if e.decision["bundle_version"].as_str() != Some(bundle.version()) {
        eprintln!(
            "note: the action was decided under bundle {}; the escalation path shown is from {}",
            e.decision["bundle_version"].as_str().unwrap_or("?"),
            bundle.version()
        );
    }
    Ok(serde_json::to_value(e).map_err(anyhow::Error::from)?)
}

pub fn run(a: ExplainArgs) -> Result<(), Failure> {
    let e: Value = match &a.server {
        Some(server) => {
            let client = crate::client::Client::new(server, a.token.as_deref(), a.ca_cert.as_deref())?;
            client.get(&format!("/v1/explain/{}", segment(&a.action_id)))?
        }
        None => local(&a)?,
    };
    match a.output {
        Output::Json => outln!("{e}"),
        Output::Text => outln!("{}", text(&e)),
    }
    let failed = e["entries"].as_array().into_iter().flatten().any(|c| c["verified"] != true);
    if failed {
        eprintln!("error: an audit entry does not prove against the signed checkpoint");
        return Err(Failure::Denied);
    }
    Ok(())
}
