//! `warden task open|close|show|list` (DESIGN §8): the incidents agents work within.
//!
//! Every command works against a running server (`--server URL --token T`: the token's human
//! is the actor) or a data directory (`--data`). On a data directory, opening and closing act
//! as the local operator (`local:$USER`, with `admin`'s rights, as `warden agent suspend --data`
//! does) through the same rules as the server — who vouches for the trigger, the approvals a
//! close cancels and the leases it revokes — under the bundle in force recorded in the store.

use std::sync::Arc;

use clap::Subcommand;
use serde_json::{Value, json};
use warden_core::request::TaskState;
use warden_store::{DataDir, LedgerOptions, SystemClock};

use crate::Failure;
use crate::client::{Client, failure_for, segment};
use crate::cmd::agent::Target;
use crate::render::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    Open,
    Closed,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Open a task (201 from the server; `verified` when your role vouches for its source).
    Open {
        /// What it is about.
        #[arg(long)]
        title: String,
        /// What raised it (`siem`, `email-gateway`, `phish-report`, …).
        #[arg(long)]
        source: String,
        #[arg(long, default_value = "unknown")]
        severity: String,
        #[arg(long)]
        alert_id: Option<String>,
        #[arg(long)]
        summary: Option<String>,
        /// Its id (`INC-4711`); default a fresh `task_…`.
        #[arg(long)]
        id: Option<String>,
        /// An agent that may act in it (SPIFFE ID; repeat). None named: every agent.
        #[arg(long = "agent")]
        agents: Vec<String>,
        #[command(flatten)]
        server: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Close a task: its pending approvals are cancelled, its active leases revoked.
    Close {
        id: String,
        #[command(flatten)]
        server: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One task: its trigger, who may act, its taint and its history.
    Show {
        id: String,
        #[command(flatten)]
        source: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Tasks, newest id first.
    List {
        /// Only open or only closed tasks.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// At most this many (1–10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        source: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn local(source: &Target) -> Result<DataDir, Failure> {
    let at = crate::store_at(source.store.as_deref())?;
    DataDir::open_at(&source.data, &at, Arc::new(SystemClock), LedgerOptions::default())
        .map_err(crate::data_dir_failure)
}

/// The server's rules over a data directory, for one change (no reconciliation: a server may
/// be running on it).
fn offline(source: &Target) -> Result<warden_server::App, Failure> {
    warden_server::AppState::offline(local(source)?, Arc::new(SystemClock)).map_err(api)
}

/// The person at this terminal, acting on a data directory they can write: `admin`'s rights.
fn operator() -> warden_server::auth::Caller {
    let name = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    warden_server::auth::Caller::Human(warden_server::model::User {
        id: format!("local:{name}"),
        roles: vec!["admin".into()],
        token_hash: String::new(),
        status: "active".into(),
        oidc: Vec::new(),
    })
}

fn api(e: warden_server::ApiError) -> Failure {
    failure_for(e.status().as_u16(), e.code.as_str(), &e.message)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("—")
}

/// A task as text, one fact per line.
pub fn text(t: &Value) -> String {
    let mut out = Vec::new();
    let trigger = &t["trigger"];
    out.push(format!("{} — {} ({})", s(&t["id"]), s(&t["title"]), s(&t["state"])));
    out.push(format!(
        "trigger    {} alert {} severity {} — {}",
        s(&trigger["source"]),
        s(&trigger["alert_id"]),
        s(&trigger["severity"]),
        if t["verified"] == true {
            format!("verified by {}", s(&t["vouched_by"]))
        } else {
            format!("asserted by {}, unverified", s(&t["opened_by"]))
        }
    ));
    out.push(format!("opened     {} by {}", s(&t["opened_at"]), s(&t["opened_by"])));
    if t["closed_at"].is_string() {
        out.push(format!("closed     {} by {}", s(&t["closed_at"]), s(&t["closed_by"])));
    }
    let agents: Vec<&str> = t["agents"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push(format!("agents     {}", if agents.is_empty() { "every agent".to_string() } else { agents.join(", ") }));
    out.extend(taint_and_history(t));
    out.join("\n")
}

/// A task's marks of taint and its history, a line each (also in `warden explain`).
pub fn taint_and_history(t: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in t["taint"].as_array().into_iter().flatten() {
        out.push(format!(
            "taint      {}: {} (by {}{})",
            s(&m["label"]),
            s(&m["source"]),
            s(&m["by"]),
            m["request"].as_str().map(|r| format!(", {r}")).unwrap_or_default()
        ));
    }
    if let Some(h) = t["history"].as_object().filter(|h| !h.is_empty()) {
        let done: Vec<String> = h.iter().map(|(class, n)| format!("{class} ×{n}")).collect();
        out.push(format!("history    done in the task: {}", done.join(", ")));
    }
    out
}

fn print_one(t: &Value, output: Output) {
    match output {
        Output::Json => outln!("{t}"),
        Output::Text => outln!("{}", text(t)),
    }
}

pub fn run(c: TaskCommand) -> Result<(), Failure> {
    match c {
        TaskCommand::Open { title, source, severity, alert_id, summary, id, agents, server, output } => {
            let mut body = json!({"title": title, "trigger": {"source": source, "severity": severity}});
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            if let Some(a) = alert_id {
                body["trigger"]["alert_id"] = json!(a);
            }
            if let Some(sm) = summary {
                body["trigger"]["summary"] = json!(sm);
            }
            if !agents.is_empty() {
                body["agents"] = json!(agents.clone());
            }
            let t: Value = match &server.server {
                Some(url) => {
                    Client::new(url, server.token.as_deref(), server.ca_cert.as_deref())?.post("/v1/tasks", &body)?
                }
                None => {
                    let trigger: warden_server::model::Trigger = serde_json::from_value(body["trigger"].clone())
                        .map_err(|e| Failure::Invalid(format!("error: {e}")))?;
                    let id = body["id"].as_str().map(str::to_string);
                    let title = body["title"].as_str().unwrap_or_default().to_string();
                    let app = offline(&server)?;
                    let t = warden_server::tasks::open(&app, &operator(), id, title, trigger, agents).map_err(api)?;
                    serde_json::to_value(t).map_err(anyhow::Error::from)?
                }
            };
            print_one(&t, output);
        }
        TaskCommand::Close { id, server, output } => {
            let t: Value = match &server.server {
                Some(url) => Client::new(url, server.token.as_deref(), server.ca_cert.as_deref())?
                    .post(&format!("/v1/tasks/{}/close", segment(&id)), &json!({}))?,
                None => {
                    let app = offline(&server)?;
                    let t = warden_server::tasks::close(&app, &operator(), &id).map_err(api)?;
                    serde_json::to_value(t).map_err(anyhow::Error::from)?
                }
            };
            print_one(&t, output);
        }
        TaskCommand::Show { id, source, output } => {
            let t: Value = match &source.server {
                Some(url) => Client::new(url, source.token.as_deref(), source.ca_cert.as_deref())?
                    .get(&format!("/v1/tasks/{}", segment(&id)))?,
                None => {
                    let dir = local(&source)?;
                    let task = warden_server::tasks::get_in(dir.ledger().store().as_ref(), &id).map_err(api)?;
                    serde_json::to_value(task).map_err(anyhow::Error::from)?
                }
            };
            print_one(&t, output);
        }
        TaskCommand::List { state, limit, source, output } => {
            if !(1..=10_000).contains(&limit) {
                return Err(Failure::Invalid(format!("error: --limit must be 1 to 10000, not {limit}")));
            }
            let state_text = state.map(|st| if st == StateArg::Open { "open" } else { "closed" });
            let tasks: Vec<Value> = match &source.server {
                Some(url) => {
                    let c = Client::new(url, source.token.as_deref(), source.ca_cert.as_deref())?;
                    let page = limit.min(1000);
                    let path = match state_text {
                        Some(st) => format!("/v1/tasks?state={st}&limit={page}"),
                        None => format!("/v1/tasks?limit={page}"),
                    };
                    let mut all = c.get_all(&path, limit.div_ceil(page))?;
                    all.truncate(limit);
                    all
                }
                None => {
                    let dir = local(&source)?;
                    let state = state.map(|st| if st == StateArg::Open { TaskState::Open } else { TaskState::Closed });
                    let (mut all, mut after) = (Vec::new(), None);
                    while all.len() < limit {
                        let page = warden_server::tasks::list_in(
                            dir.ledger().store().as_ref(),
                            state,
                            after.take(),
                            (limit - all.len()).min(1000),
                        )
                        .map_err(api)?;
                        all.extend(page.items.into_iter().map(|t| serde_json::to_value(t).unwrap_or(Value::Null)));
                        match page.next {
                            Some(c) => after = Some(c.id),
                            None => break,
                        }
                    }
                    all
                }
            };
            match output {
                Output::Json => outln!("{}", Value::Array(tasks)),
                Output::Text => {
                    outln!("{:<28} {:<7} {:<14} {:<9} {:<6} {}", "ID", "STATE", "SOURCE", "SEVERITY", "TAINT", "TITLE");
                    for t in &tasks {
                        let taint = t["taint"].as_array().map_or(0, Vec::len);
                        outln!(
                            "{:<28} {:<7} {:<14} {:<9} {:<6} {}",
                            s(&t["id"]),
                            s(&t["state"]),
                            s(&t["trigger"]["source"]),
                            s(&t["trigger"]["severity"]),
                            taint,
                            s(&t["title"])
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
