//! `warden store migrate`: a data directory's SQLite store into PostgreSQL.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use warden_store::data_dir::DB_FILE;

use crate::Failure;
use crate::render::Output;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a data directory's store (stopped server) into an empty PostgreSQL database: the
    /// audit log entry for entry, with the same root; every record; the settings. The data
    /// directory keeps the keys: give every node a copy and `--store` the database.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The data directory whose `warden.db` is copied.
    #[arg(long)]
    pub from: PathBuf,
    /// The empty PostgreSQL database: `postgres://…` (`sslmode`, `sslrootcert` as libpq).
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub to: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(cmd: StoreCommand) -> Result<(), Failure> {
    match cmd {
        StoreCommand::Migrate(a) => migrate(a),
    }
}

fn migrate(a: MigrateArgs) -> Result<(), Failure> {
    let db = a.from.join(DB_FILE);
    if !db.is_file() {
        return Err(Failure::Invalid(format!("error: `{}` holds no `{DB_FILE}`", a.from.display())));
    }
    let target = warden_store::PgTarget::parse(&a.to).map_err(|e| Failure::Invalid(format!("error: {e}")))?;
    let shown = target.to_string();
    let terminal = std::io::stderr().is_terminal();
    let mut last = String::new();
    let copied = warden_store::migrate::sqlite_to_postgres(&db, target, &mut |what, n| {
        if terminal {
            eprint!("\r\x1b[2Kcopying {what}: {n} rows");
        } else if what != last {
            eprintln!("copying {what}");
            last = what.to_string();
        }
    })
    .map_err(|e| Failure::Other(anyhow::anyhow!("the store was not migrated (nothing was written): {e}")))?;
    if terminal {
        eprintln!();
    }
    let root = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, copied.root);
    match a.output {
        Output::Json => outln!(
            "{}",
            json!({"to": shown, "entries": copied.entries, "checkpoints": copied.checkpoints,
                   "records": copied.records, "root": root})
        ),
        Output::Text => {
            outln!("migrated {} into {shown}", a.from.display());
            outln!("  entries      {} (root {root}, the same on both sides)", copied.entries);
            outln!("  checkpoints  {}", copied.checkpoints);
            outln!("  records      {}", copied.records);
            outln!("");
            outln!("next: give every node a copy of `{}` (its keys) and serve with --store", a.from.display());
        }
    }
    Ok(())
}
