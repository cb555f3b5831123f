//! `warden init`: a new data directory.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::json;
use warden_store::SystemClock;
use warden_store::data_dir::{DEFAULT_ORIGIN, DataDir, DataDirError};

use crate::Failure;
use crate::render::Output;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The data directory to create (it may exist, but must not hold a data directory).
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: PathBuf,
    /// Where the store is: unset (or `sqlite`) for `warden.db` in the data directory, or a
    /// `postgres://` URL (`sslmode`, `sslrootcert` as libpq reads them) shared by many nodes.
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// The audit log's origin: the first line of every checkpoint and the signing key's name.
    #[arg(long, default_value = DEFAULT_ORIGIN)]
    pub origin: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: InitArgs) -> Result<(), Failure> {
    let at = crate::store_at(args.store.as_deref())?;
    let (dir, token) = match DataDir::init_at(&args.data, &at, &args.origin, Arc::new(SystemClock)) {
        Ok(done) => done,
        Err(e @ DataDirError::BadOrigin(_)) => return Err(Failure::Invalid(format!("error: {e}"))),
        Err(e) => return Err(Failure::Other(e.into())),
    };
    let key = dir.ledger().signer().verifier_key();
    match args.output {
        Output::Json => outln!(
            "{}",
            json!({"data": args.data, "origin": dir.ledger().origin(), "verifier_key": key, "admin_token": token})
        ),
        Output::Text => {
            outln!("initialised {}", args.data.display());
            outln!("  origin        {}", dir.ledger().origin());
            outln!("  verifier key  {key}");
            outln!(
                "  signing key   {} (mode 0600; back it up, keep it secret)",
                args.data.join("signing.key").display()
            );
            outln!("");
            outln!("admin token (shown once, stored only as a hash):");
            outln!("  {token}");
        }
    }
    Ok(())
}
