//! `warden`: the command line. Thin: parse arguments, call the library, map results to the
//! exit-code contract (0 ok, 1 failure, 2 denied / verification failed, 3 invalid input).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bundle_dir;
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

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(c) => cmd::policy::run(c),
        Command::Demo(a) => cmd::demo::run(a),
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
