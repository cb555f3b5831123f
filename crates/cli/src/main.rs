//! `warden`: the command line. Thin: parse arguments, call the library, map results to the
//! exit-code contract (0 ok, 1 failure, 2 denied / verification failed, 3 invalid input).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` that ends the process quietly when stdout is closed (`warden … | head`).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::emit(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same broken-pipe handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::emit(&format!($($arg)*)) };
}

mod bundle_dir;
mod client;
mod cmd;
mod render;

/// Warden: the authority broker that decides what SOC agents may do.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 ok, 1 failure, 2 denied or verification failed, 3 invalid input.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write, validate and test policy bundles.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Walk through the example bundle's decisions, one scenario at a time.
    Demo(cmd::demo::DemoArgs),
    /// Create a data directory: the store, the audit log's signing key, the admin token.
    Init(cmd::init::InitArgs),
    /// Verify, prove and export the tamper-evident audit log.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Run the gateway: agents' action requests over HTTP.
    Serve(cmd::serve::ServeArgs),
    /// Register agents, mint their JWT-SVIDs, suspend them.
    #[command(subcommand)]
    Agent(cmd::agent::AgentCommand),
    /// Add human principals and their roles.
    #[command(subcommand)]
    User(cmd::agent::UserCommand),
    /// The approval inbox of a running server: list, show, approve, reject.
    #[command(subcommand)]
    Approvals(cmd::approvals::ApprovalsCommand),
    /// The lab estate: a fake SOC on loopback for demos and tests.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// MCP for local clients: `warden mcp stdio` bridges stdin/stdout to a server's `/mcp`.
    #[command(subcommand)]
    Mcp(cmd::mcp::McpCommand),
    /// Emergency stop of a running server: no matching action starts once this returns.
    Halt(cmd::respond::HaltArgs),
    /// Lift a halt (role admin).
    Resume(cmd::respond::ResumeArgs),
    /// Undo executed actions through their compensations.
    Rollback(cmd::respond::RollbackArgs),
    /// Budget breakers.
    #[command(subcommand)]
    Breaker(cmd::respond::BreakerCommand),
    /// Who is accountable for an action: the whole chain, each audit entry proven.
    Explain(cmd::explain::ExplainArgs),
    /// Reports from the audit log alone: `report autonomy` (track record, agreement,
    /// calibration, promote/hold/demote proposals).
    #[command(subcommand)]
    Report(cmd::report::ReportCommand),
    /// Tasks: open and close them on a running server; show and list them.
    #[command(subcommand)]
    Task(cmd::task::TaskCommand),
    /// The store itself: move a data directory's SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
}

/// How a command ended, beyond plain success.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: a request was denied or a check did not pass (already reported).
    Denied,
    /// Exit 3: the input was invalid (message for stderr).
    Invalid(String),
    /// Exit 1: something went wrong.
    Other(anyhow::Error),
}

/// Reads `--store` (see [`warden_store::StoreAt::parse`]); a bad URL is invalid input.
pub fn store_at(store: Option<&str>) -> Result<warden_store::StoreAt, Failure> {
    warden_store::StoreAt::parse(store).map_err(|e| Failure::Invalid(format!("error: {e}")))
}

/// A data directory that cannot be opened: not initialised (or an empty database) is the
/// user's to fix; anything else is a failure.
pub fn data_dir_failure(e: warden_store::DataDirError) -> Failure {
    use warden_store::DataDirError as E;
    match e {
        e @ (E::NotInitialized(_) | E::StoreEmpty(_)) => Failure::Invalid(format!("error: {e}")),
        e => Failure::Other(e.into()),
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Writes to stdout; a reader that went away is not an error worth a panic.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// mimalloc: under load glibc's malloc spent ~19 % of the gateway's CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One TLS crypto provider for every client in the binary (ring, as the server's).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    // Usage errors are invalid input (exit 3), not clap's default 2, which means "denied".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Policy(c) => cmd::policy::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Audit(c) => cmd::audit::run(c),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Agent(c) => cmd::agent::run_agent(c),
        Command::User(c) => cmd::agent::run_user(c),
        Command::Approvals(c) => cmd::approvals::run(c),
        Command::Lab(c) => cmd::lab::run(c),
        Command::Mcp(c) => cmd::mcp::run(c),
        Command::Halt(a) => cmd::respond::halt(a),
        Command::Resume(a) => cmd::respond::resume(a),
        Command::Rollback(a) => cmd::respond::rollback(a),
        Command::Breaker(c) => cmd::respond::breaker(c),
        Command::Explain(a) => cmd::explain::run(a),
        Command::Task(c) => cmd::task::run(c),
        Command::Report(c) => cmd::report::run(c),
        Command::Store(c) => cmd::store::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Denied) => ExitCode::from(2),
        Err(Failure::Invalid(msg)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::from(3)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
