//! `warden halt`, `warden resume`, `warden rollback`, `warden breaker reset`: emergency
//! response against a running server.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::Failure;
use crate::client::segment;
use crate::cmd::approvals::Remote;
use crate::render::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    All,
    Agent,
    Action,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Agent => "agent",
            Scope::Action => "action",
        }
    }
}

/// Emergency stop: from the moment this returns, no matching action starts; the matching
/// leases are revoked and pending approvals cancelled.
#[derive(Debug, Args)]
pub struct HaltArgs {
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// The agent's SPIFFE ID (scope agent) or the action class (scope action).
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub reason: String,
    /// Also roll back the matching actions of open tasks.
    #[arg(long)]
    pub rollback: bool,
    /// When the halt lapses by itself (RFC 3339).
    #[arg(long)]
    pub expires_at: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// Lift a halt (role `admin`).
#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[arg(long, value_enum)]
    pub scope: Scope,
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub remote: Remote,
}

/// Undo executed actions through their compensation: one by id, or every rollback-able one
/// of a task, or of an agent over a period.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The action request id (`act_…`).
    #[arg(conflicts_with_all = ["task", "agent"], required_unless_present_any = ["task", "agent"])]
    pub action_id: Option<String>,
    /// Every succeeded, reversible action of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Every succeeded, reversible action of this agent (with --since).
    #[arg(long, requires = "since")]
    pub agent: Option<String>,
    /// How far back, with --agent or --task: `30m`, `1h`, `2d`.
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close a tripped budget breaker (role `admin`); budgets count afresh.
    Reset {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        action: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn halt(a: HaltArgs) -> Result<(), Failure> {
    let mut body = json!({"scope": a.scope.as_str(), "reason": a.reason, "rollback": a.rollback});
    if let Some(id) = &a.id {
        body["id"] = json!(id);
    }
    if let Some(t) = &a.expires_at {
        body["expires_at"] = json!(t);
    }
    let h: Value = a.remote.client()?.post("/v1/halt", &body)?;
    match a.output {
        Output::Json => outln!("{h}"),
        Output::Text => {
            let n = |k: &str| h[k].as_array().map_or(0, Vec::len);
            outln!(
                "halted {} {}: {}",
                a.scope.as_str(),
                a.id.as_deref().unwrap_or(""),
                h["halt"]["id"].as_str().unwrap_or("")
            );
            outln!("  leases revoked       {}", n("revoked_leases"));
            outln!("  approvals cancelled  {}", n("cancelled_approvals"));
            if a.rollback {
                outln!("  rolled back          {}", n("rolled_back"));
                for f in h["rollback_failures"].as_array().into_iter().flatten() {
                    outln!("  rollback failed      {}", f.as_str().unwrap_or(""));
                }
            }
        }
    }
    if h["rollback_failures"].as_array().is_some_and(|f| !f.is_empty()) {
        return Err(Failure::Other(anyhow::anyhow!("some rollbacks failed")));
    }
    Ok(())
}

pub fn resume(a: ResumeArgs) -> Result<(), Failure> {
    let mut body = json!({"scope": a.scope.as_str(), "reason": a.reason});
    if let Some(id) = &a.id {
        body["id"] = json!(id);
    }
    let lifted: Value = a.remote.client()?.post("/v1/resume", &body)?;
    outln!("lifted {} halt(s)", lifted.as_array().map_or(0, Vec::len));
    Ok(())
}

pub fn rollback(a: RollbackArgs) -> Result<(), Failure> {
    let client = a.remote.client()?;
    let ids: Vec<String> = match &a.action_id {
        Some(id) => vec![id.clone()],
        None => {
            let mut q = vec!["state=succeeded".to_string(), "limit=1000".to_string()];
            if let Some(t) = &a.task {
                q.push(format!("task={}", segment(t)));
            }
            if let Some(ag) = &a.agent {
                q.push(format!("agent={}", segment(ag)));
            }
            if let Some(s) = &a.since {
                q.push(format!("since={}", segment(s)));
            }
            let list: Value = client.get(&format!("/v1/actions?{}", q.join("&")))?;
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["execution"]["compensation"].is_string())
                .filter_map(|a| a["id"].as_str().map(String::from))
                .collect()
        }
    };
    let mut results = Vec::new();
    let mut failed = 0;
    for id in &ids {
        match client.post::<Value>(&format!("/v1/actions/{}/rollback", segment(id)), &json!({})) {
            Ok(e) => results.push(json!({"id": id, "state": e["state"], "compensation": e["rollback"]["action"]})),
            Err(f) => {
                failed += 1;
                let message = match &f {
                    Failure::Invalid(m) => m.clone(),
                    Failure::Other(e) => e.to_string(),
                    Failure::Denied => "denied".into(),
                };
                results.push(json!({"id": id, "error": message}));
                if ids.len() == 1 {
                    return Err(f);
                }
            }
        }
    }
    match a.output {
        Output::Json => outln!("{}", Value::Array(results)),
        Output::Text => {
            if results.is_empty() {
                outln!("nothing to roll back");
            }
            for r in &results {
                match r["error"].as_str() {
                    Some(e) => outln!("{}  failed: {e}", r["id"].as_str().unwrap_or("")),
                    None => outln!(
                        "{}  {} ({})",
                        r["id"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["compensation"].as_str().unwrap_or("")
                    ),
                }
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Other(anyhow::anyhow!("{failed} of {} rollbacks failed", ids.len())));
    }
    Ok(())
}

pub fn breaker(c: BreakerCommand) -> Result<(), Failure> {
    let BreakerCommand::Reset { agent, action, reason, remote } = c;
    let r: Value =
        remote.client()?.post("/v1/breakers/reset", &json!({"agent": agent, "action": action, "reason": reason}))?;
    outln!("reset the breaker of {agent} × {action} at {}", r["reset_at"].as_str().unwrap_or(""));
    Ok(())
}
