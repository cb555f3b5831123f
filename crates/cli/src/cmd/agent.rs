//! `warden agent add|list|token|suspend|resume` and `warden user add|list`, directly on a data
//! directory. Each change is audited with the local operating-system user as the actor.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;
use warden_core::audit::entry::Actor;
use warden_core::duration::Duration;
use warden_core::request::AgentStatus;
use warden_server::identity::LocalIssuer;
use warden_server::state::{DEFAULT_AUDIENCE, LOCAL_ISSUER};
use warden_server::{ApiError, admin};
use warden_store::{Clock as _, DataDir, LedgerOptions, SystemClock};

use crate::Failure;
use crate::render::Output;

#[derive(Debug, Args)]
pub struct DataArg {
    /// The data directory.
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent by its SPIFFE ID.
    Add {
        /// `spiffe://<trust domain>/<path>`
        id: String,
        /// The accountable team or person.
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "")]
        purpose: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// List registered agents.
    List {
        #[command(flatten)]
        data: DataArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Mint a JWT-SVID for an agent from the local issuer (printed on stdout).
    Token {
        id: String,
        /// Lifetime: `30s`, `10m`, `1h` (at most 24h).
        #[arg(long, default_value = "10m")]
        ttl: String,
        #[arg(long, default_value = DEFAULT_AUDIENCE)]
        audience: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Suspend an agent: its tokens are refused until it is resumed.
    Suspend {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Reactivate a suspended agent.
    Resume {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a human principal; prints their API token once (stored only as a hash).
    Add {
        name: String,
        /// A role (`soc-analyst`, `incident-commander`, `iam-owner`, `admin`…); repeat for more.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[command(flatten)]
        data: DataArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List users and their roles.
    List {
        #[command(flatten)]
        data: DataArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn open(d: &DataArg) -> Result<DataDir, Failure> {
    DataDir::open(&d.data, Arc::new(SystemClock), LedgerOptions::default()).map_err(|e| match e {
        e @ warden_store::DataDirError::NotInitialized(_) => Failure::Invalid(format!("error: {e}")),
        e => Failure::Other(e.into()),
    })
}

/// The operator running this command, as the audit log's actor.
fn operator() -> Actor {
    let name = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    Actor::user(format!("local:{name}"))
}

fn api(e: ApiError) -> Failure {
    if e.status.as_u16() == 422 || e.status.as_u16() == 404 {
        Failure::Invalid(format!("error: {}", e.message))
    } else {
        Failure::Other(anyhow::anyhow!(e.message))
    }
}

pub fn run_agent(c: AgentCommand) -> Result<(), Failure> {
    match c {
        AgentCommand::Add { id, owner, purpose, data } => {
            let dir = open(&data)?;
            let a =
                admin::add_agent(dir.ledger(), &operator(), &id, &owner, &purpose, SystemClock.now()).map_err(api)?;
            outln!("registered {} (owner {})", a.id, a.owner);
        }
        AgentCommand::List { data, output } => {
            let dir = open(&data)?;
            let agents = admin::list_agents(dir.ledger()).map_err(api)?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string(&agents).map_err(anyhow::Error::from)?),
                Output::Text => {
                    for a in agents {
                        let status = serde_json::to_value(a.status).ok().and_then(|s| s.as_str().map(String::from));
                        outln!("{}  {}  owner {}  {}", a.id, status.unwrap_or_default(), a.owner, a.purpose);
                    }
                }
            }
        }
        AgentCommand::Token { id, ttl, audience, data } => {
            let ttl = Duration::parse(&ttl).map_err(|e| Failure::Invalid(format!("error: --ttl: {e}")))?;
            if ttl.as_secs() == 0 || ttl.as_secs() > 86_400 {
                return Err(Failure::Invalid("error: --ttl must be between 1s and 24h".into()));
            }
            let dir = open(&data)?;
            let agent = admin::get_agent(dir.ledger(), &id).map_err(api)?.ok_or_else(|| {
                Failure::Invalid(format!("error: `{id}` is not a registered agent (warden agent add)"))
            })?;
            if agent.status != AgentStatus::Active {
                return Err(Failure::Other(anyhow::anyhow!("agent `{id}` is not active")));
            }
            let issuer = LocalIssuer::new(LOCAL_ISSUER, &dir.token_seed().0).map_err(api)?;
            outln!("{}", issuer.mint(&id, &audience, SystemClock.now(), ttl.as_secs() as i64));
        }
        AgentCommand::Suspend { id, reason, data } => {
            let dir = open(&data)?;
            admin::set_agent_status(dir.ledger(), &operator(), &id, AgentStatus::Suspended, &reason).map_err(api)?;
            outln!("suspended {id}");
        }
        AgentCommand::Resume { id, reason, data } => {
            let dir = open(&data)?;
            admin::set_agent_status(dir.ledger(), &operator(), &id, AgentStatus::Active, &reason).map_err(api)?;
            outln!("resumed {id}");
        }
    }
    Ok(())
}

pub fn run_user(c: UserCommand) -> Result<(), Failure> {
    match c {
        UserCommand::Add { name, roles, data, output } => {
            let dir = open(&data)?;
            let (user, token) = admin::add_user(dir.ledger(), &operator(), &name, &roles).map_err(api)?;
            match output {
                Output::Json => outln!("{}", json!({"id": user.id, "roles": user.roles, "token": token})),
                Output::Text => {
                    outln!("added {} ({})", user.id, user.roles.join(", "));
                    outln!("API token (shown once, stored only as a hash):");
                    outln!("  {token}");
                }
            }
        }
        UserCommand::List { data, output } => {
            let dir = open(&data)?;
            let users = admin::list_users(dir.ledger()).map_err(api)?;
            match output {
                Output::Json => {
                    let rows: Vec<_> =
                        users.iter().map(|u| json!({"id": u.id, "roles": u.roles, "status": u.status})).collect();
                    outln!("{}", serde_json::Value::Array(rows));
                }
                Output::Text => {
                    for u in users {
                        outln!("{}  {}  {}", u.id, u.status, u.roles.join(", "));
                    }
                }
            }
        }
    }
    Ok(())
}
