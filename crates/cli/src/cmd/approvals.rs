//! `warden approvals list|show|approve|reject`: the approval inbox of a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::Failure;
use crate::client::{Client, segment};
use crate::render::Output;

/// A running server and the human calling it.
#[derive(Debug, Args)]
pub struct Remote {
    /// The Warden server (`http://…` or `https://…`).
    #[arg(long, env = "WARDEN_SERVER")]
    pub server: String,
    /// Your API token (or an OIDC token); you must hold one of an approval's roles to decide it.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates to trust when the server's certificate comes from a private CA.
    #[arg(long, env = "WARDEN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl Remote {
    pub fn client(&self) -> Result<Client, Failure> {
        Client::new(&self.server, self.token.as_deref(), self.ca_cert.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The inbox: approvals in a state (default pending), soonest expiry first.
    List {
        /// pending | approved | rejected | expired | cancelled
        #[arg(long, default_value = "pending")]
        state: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One approval: the request, the agent's reasoning and its track record for the action.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Approve; counts once toward the quorum.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Narrow the action: a shorter lease than the catalog's (`2m`).
        #[arg(long)]
        lease_ttl: Option<String>,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Reject, with a reason (required).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn summary_line(a: &Value) -> String {
    format!(
        "{}  {}  expires {}  {} {} on {}  confidence {:.2}  votes {}/{}  roles {}",
        s(a, "id"),
        s(a, "state"),
        s(a, "expires_at"),
        s(a, "agent"),
        s(a, "action"),
        s(a, "target"),
        a["confidence"].as_f64().unwrap_or(0.0),
        a["votes"].as_array().map_or(0, Vec::len),
        a["quorum"].as_u64().unwrap_or(0),
        a["roles"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
    )
}

fn details(a: &Value) -> String {
    let mut out = summary_line(a);
    // Exactly what approving authorizes (DESIGN §6): the params (secrets redacted), the
    // target's inventory facts, the task, and the digest that binds them.
    out.push_str(&format!("\n  digest      {}", s(a, "digest")));
    out.push_str(&format!("\n  params      {}", a["params"]));
    let f = &a["target_facts"];
    if f.is_object() {
        out.push_str(&format!(
            "\n  target      {} · {} · {} · owner {}{}{}",
            s(a, "target"),
            s(f, "criticality"),
            s(f, "environment"),
            s(f, "owner"),
            if f["privileged"] == true { " · privileged" } else { "" },
            if f["known"] == false { " · not in the inventory (treated as the worst case)" } else { "" }
        ));
        let tags: Vec<&str> = f["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !tags.is_empty() {
            out.push_str(&format!("\n  tags        {}", tags.join(", ")));
        }
    }
    out.push_str(&format!("\n  task        {}", s(a, "task")));
    out.push_str(&format!(
        "\n  owner       {}{}",
        s(a, "owner"),
        if a["separation_of_duties"] == true { " (may not approve)" } else { "" }
    ));
    out.push_str(&format!("\n  rationale   {}", s(a, "rationale")));
    for e in a["evidence"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  evidence    {} {}  {}", s(e, "kind"), s(e, "ref"), s(e, "summary")));
    }
    for c in a["caps"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  cap         {}: {}", s(c, "code"), s(c, "reason")));
    }
    for p in a["policies"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  policy      {}  owner {}  {}:{}",
            s(p, "id"),
            s(p, "owner"),
            s(p, "file"),
            p["line"]
        ));
    }
    for v in a["votes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  vote        {} ({}) at {}  {}",
            s(v, "user"),
            s(v, "role"),
            s(v, "at"),
            s(v, "reason")
        ));
    }
    let t = &a["track_record"];
    if t.is_object() {
        out.push_str(&format!(
            "\n  record      last {} days: {} approved, {} rejected, {} expired, {} rolled back",
            t["days"], t["approved"], t["rejected"], t["expired"], t["rolled_back"]
        ));
    }
    if let Some(by) = a["decided_by"].as_str() {
        out.push_str(&format!("\n  decided     by {by} at {}  {}", s(a, "decided_at"), s(a, "reason")));
    }
    out
}

fn print(v: &Value, output: Output, text: impl Fn(&Value) -> String) -> Result<(), Failure> {
    match output {
        Output::Json => outln!("{v}"),
        Output::Text => outln!("{}", text(v)),
    }
    Ok(())
}

pub fn run(c: ApprovalsCommand) -> Result<(), Failure> {
    match c {
        ApprovalsCommand::List { state, remote, output } => {
            // Every page (oldest first), up to 10,000 approvals.
            let list = Value::Array(
                remote.client()?.get_all(&format!("/v1/approvals?state={}&limit=1000", segment(&state)), 10)?,
            );
            print(&list, output, |l| {
                let rows = l.as_array().map(|a| a.iter().map(summary_line).collect::<Vec<_>>()).unwrap_or_default();
                if rows.is_empty() { format!("no {state} approvals") } else { rows.join("\n") }
            })
        }
        ApprovalsCommand::Show { id, remote, output } => {
            let a: Value = remote.client()?.get(&format!("/v1/approvals/{}", segment(&id)))?;
            print(&a, output, details)
        }
        ApprovalsCommand::Approve { id, reason, lease_ttl, remote, output } => {
            let mut body = json!({});
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            if let Some(t) = lease_ttl {
                body["lease_ttl"] = json!(t);
            }
            let a: Value = remote.client()?.post(&format!("/v1/approvals/{}/approve", segment(&id)), &body)?;
            print(&a, output, details)
        }
        ApprovalsCommand::Reject { id, reason, remote, output } => {
            let a: Value =
                remote.client()?.post(&format!("/v1/approvals/{}/reject", segment(&id)), &json!({"reason": reason}))?;
            print(&a, output, details)
        }
    }
}
