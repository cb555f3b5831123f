//! `warden agent add|list|token|suspend|resume` and `warden user add|list`: directly on a data
//! directory (`--data`, the local operating-system user is the audit log's actor), or against
//! a running server (`--server URL --token T`, the token's human is the actor). Both paths
//! apply the same rules and audit every change.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;
use warden_core::audit::entry::Actor;
use warden_core::duration::Duration;
use warden_core::request::AgentStatus;
use warden_server::identity::LocalIssuer;
use warden_server::model::Agent;
use warden_server::state::{DEFAULT_AUDIENCE, LOCAL_ISSUER};
use warden_server::{ApiError, Code, admin};
use warden_store::{Clock as _, DataDir, LedgerOptions, SystemClock};

use crate::Failure;
use crate::client::{Client, failure_for, segment};
use crate::render::Output;

/// Where the change goes: a data directory, or a running server.
#[derive(Debug, Args)]
pub struct Target {
    /// The data directory (when no `--server` is named).
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: PathBuf,
    /// Where the store is: unset (or `sqlite`) for `warden.db` in the data directory, or a
    /// `postgres://` URL (`sslmode`, `sslrootcert` as libpq reads them) shared by many nodes.
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A running Warden server to administer instead (`http://…` or `https://…`).
    #[arg(long, env = "WARDEN_SERVER")]
    pub server: Option<String>,
    /// An API token (role `admin` for changes) to call `--server` with.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates to trust when the server's certificate comes from a private CA.
    #[arg(long, env = "WARDEN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
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
        target: Target,
    },
    /// List registered agents.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Mint a JWT-SVID for an active agent from the local issuer (printed on stdout). Minting
    /// is audited; the token is not.
    Token {
        id: String,
        /// Lifetime: `30s`, `10m`, `1h` (at most 24h).
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// The audience (default `warden`; with `--server`, the server's).
        #[arg(long)]
        audience: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Suspend an agent: its tokens are refused until it is resumed.
    Suspend {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reactivate a suspended agent.
    Resume {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
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
        /// An OIDC identity, `ISSUER#SUB`, that signs in as this user (one person, one
        /// voter); repeat for more.
        #[arg(long = "oidc")]
        oidc: Vec<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List users and their roles.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Disable a user: their API token, OIDC sign-in and console sessions are refused at
    /// once, on every node (votes already cast stay).
    Disable {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reactivate a disabled user.
    Enable {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
}

/// A user as shown: never the token hash.
#[derive(Debug, Deserialize)]
struct UserRow {
    id: String,
    roles: Vec<String>,
    status: String,
}

/// A new user and their token, shown once.
#[derive(Debug, Deserialize)]
struct NewUser {
    id: String,
    roles: Vec<String>,
    token: String,
}

#[derive(Debug, Deserialize)]
struct Minted {
    token: String,
}

/// The seam between the two ways of administering: the same operations on either side.
#[derive(Debug)]
enum Admin {
    Local(Box<DataDir>),
    Remote(Client),
}

fn api(e: ApiError) -> Failure {
    failure_for(e.status().as_u16(), e.code.as_str(), &e.message)
}

/// The operator running this command, as the audit log's actor.
fn operator() -> Actor {
    let name = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    Actor::user(format!("local:{name}"))
}

impl Admin {
    fn open(t: &Target) -> Result<Admin, Failure> {
        if let Some(server) = &t.server {
            return Client::new(server, t.token.as_deref(), t.ca_cert.as_deref()).map(Admin::Remote);
        }
        let at = crate::store_at(t.store.as_deref())?;
        DataDir::open_at(&t.data, &at, Arc::new(SystemClock), LedgerOptions::default())
            .map(|d| Admin::Local(Box::new(d)))
            .map_err(crate::data_dir_failure)
    }

    fn add_agent(&self, id: &str, owner: &str, purpose: &str) -> Result<Agent, Failure> {
        match self {
            Admin::Local(d) => {
                admin::add_agent(d.ledger(), &operator(), id, owner, purpose, SystemClock.now()).map_err(api)
            }
            Admin::Remote(c) => c.post("/v1/agents", &json!({"id": id, "owner": owner, "purpose": purpose})),
        }
    }

    fn list_agents(&self) -> Result<Vec<Agent>, Failure> {
        match self {
            Admin::Local(d) => admin::list_agents(d.ledger()).map_err(api),
            Admin::Remote(c) => c.get("/v1/agents"),
        }
    }

    fn set_status(&self, id: &str, status: AgentStatus, reason: &str) -> Result<Agent, Failure> {
        match self {
            Admin::Local(d) => admin::set_agent_status(d.ledger(), &operator(), id, status, reason).map_err(api),
            Admin::Remote(c) => {
                let verb = if status == AgentStatus::Active { "resume" } else { "suspend" };
                c.post(&format!("/v1/agents/{}/{verb}", segment(id)), &json!({"reason": reason}))
            }
        }
    }

    fn mint(&self, id: &str, ttl: Duration, audience: Option<&str>) -> Result<String, Failure> {
        match self {
            Admin::Local(d) => {
                let agent = admin::get_agent(d.ledger(), id).map_err(api)?.ok_or_else(|| {
                    Failure::Invalid(format!("error: `{id}` is not a registered agent (warden agent add)"))
                })?;
                if agent.status != AgentStatus::Active {
                    return Err(api(ApiError::new(Code::AgentNotActive, format!("agent `{id}` is not active"))));
                }
                let audience = audience.unwrap_or(DEFAULT_AUDIENCE);
                admin::record_token_minted(d.ledger(), &operator(), id, audience, ttl.as_secs()).map_err(api)?;
                let issuer = LocalIssuer::new(LOCAL_ISSUER, &d.token_seed().0).map_err(api)?;
                Ok(issuer.mint(id, audience, SystemClock.now(), ttl.as_secs() as i64))
            }
            Admin::Remote(c) => {
                let mut body = json!({"ttl": format!("{}s", ttl.as_secs())});
                if let Some(a) = audience {
                    body["audience"] = json!(a);
                }
                c.post::<Minted>(&format!("/v1/agents/{}/token", segment(id)), &body).map(|m| m.token)
            }
        }
    }

    fn add_user(&self, name: &str, roles: &[String], oidc: &[String]) -> Result<NewUser, Failure> {
        match self {
            Admin::Local(d) => {
                let (user, token) = admin::add_user(d.ledger(), &operator(), name, roles, oidc).map_err(api)?;
                Ok(NewUser { id: user.id, roles: user.roles, token })
            }
            Admin::Remote(c) => c.post("/v1/users", &json!({"id": name, "roles": roles, "oidc": oidc})),
        }
    }

    fn set_user_status(&self, name: &str, active: bool, reason: &str) -> Result<UserRow, Failure> {
        match self {
            Admin::Local(d) => admin::set_user_status(d.ledger(), &operator(), name, active, reason)
                .map(|u| UserRow { id: u.id, roles: u.roles, status: u.status })
                .map_err(api),
            Admin::Remote(c) => {
                let verb = if active { "enable" } else { "disable" };
                c.post(&format!("/v1/users/{}/{verb}", segment(name)), &json!({"reason": reason}))
            }
        }
    }

    fn list_users(&self) -> Result<Vec<UserRow>, Failure> {
        match self {
            Admin::Local(d) => Ok(admin::list_users(d.ledger())
                .map_err(api)?
                .into_iter()
                .map(|u| UserRow { id: u.id, roles: u.roles, status: u.status })
                .collect()),
            Admin::Remote(c) => c.get("/v1/users"),
        }
    }
}

fn status_text(s: AgentStatus) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

pub fn run_agent(c: AgentCommand) -> Result<(), Failure> {
    match c {
        AgentCommand::Add { id, owner, purpose, target } => {
            let a = Admin::open(&target)?.add_agent(&id, &owner, &purpose)?;
            outln!("registered {} (owner {})", a.id, a.owner);
        }
        AgentCommand::List { target, output } => {
            let agents = Admin::open(&target)?.list_agents()?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string(&agents).map_err(anyhow::Error::from)?),
                Output::Text => {
                    for a in agents {
                        outln!("{}  {}  owner {}  {}", a.id, status_text(a.status), a.owner, a.purpose);
                    }
                }
            }
        }
        AgentCommand::Token { id, ttl, audience, target } => {
            let ttl = Duration::parse(&ttl).map_err(|e| Failure::Invalid(format!("error: --ttl: {e}")))?;
            if ttl.as_secs() == 0 || ttl.as_secs() > 86_400 {
                return Err(Failure::Invalid("error: --ttl must be between 1s and 24h".into()));
            }
            outln!("{}", Admin::open(&target)?.mint(&id, ttl, audience.as_deref())?);
        }
        AgentCommand::Suspend { id, reason, target } => {
            Admin::open(&target)?.set_status(&id, AgentStatus::Suspended, &reason)?;
            outln!("suspended {id}");
        }
        AgentCommand::Resume { id, reason, target } => {
            Admin::open(&target)?.set_status(&id, AgentStatus::Active, &reason)?;
            outln!("resumed {id}");
        }
    }
    Ok(())
}

pub fn run_user(c: UserCommand) -> Result<(), Failure> {
    match c {
        UserCommand::Add { name, roles, oidc, target, output } => {
            let user = Admin::open(&target)?.add_user(&name, &roles, &oidc)?;
            match output {
                Output::Json => outln!("{}", json!({"id": user.id, "roles": user.roles, "token": user.token})),
                Output::Text => {
                    outln!("added {} ({})", user.id, user.roles.join(", "));
                    outln!("API token (shown once, stored only as a hash):");
                    outln!("  {}", user.token);
                }
            }
        }
        UserCommand::List { target, output } => {
            let users = Admin::open(&target)?.list_users()?;
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
        UserCommand::Disable { name, reason, target } => {
            let u = Admin::open(&target)?.set_user_status(&name, false, &reason)?;
            outln!("disabled {} ({})", u.id, u.roles.join(", "));
        }
        UserCommand::Enable { name, reason, target } => {
            let u = Admin::open(&target)?.set_user_status(&name, true, &reason)?;
            outln!("enabled {} ({})", u.id, u.roles.join(", "));
        }
    }
    Ok(())
}
