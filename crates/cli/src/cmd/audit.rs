//! `warden audit verify|checkpoint|key|proof|export`: the audit log, read by anyone who has
//! the data directory (no key needed).

use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use warden_core::audit::entry::Entry;
use warden_core::audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use warden_core::audit::ocsf;
use warden_store::Store;
use warden_store::data_dir::{self, DataDirError, KEY_FILE};
use warden_store::proofs::{self, ProofRequestError};
use warden_store::verify::{VerifyFailure, verify};

use crate::Failure;
use crate::render::Output;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Args)]
pub struct DataArg {
    /// The data directory.
    #[arg(long, env = "WARDEN_DATA", default_value = "./warden-data")]
    pub data: PathBuf,
    /// Where the store is: unset (or `sqlite`) for `warden.db` in the data directory, or a
    /// `postgres://` URL (`sslmode`, `sslrootcert` as libpq reads them) shared by many nodes.
    #[arg(long, env = "WARDEN_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every leaf, subtree and root; check every stored checkpoint's signature and
    /// consistency; with `--checkpoint`, prove the log extends a checkpoint kept elsewhere.
    ///
    /// Exit 0 when everything matches; 2 naming the first entry (seq) or checkpoint that does
    /// not. Shows progress on a terminal.
    Verify(VerifyArgs),
    /// Print the latest signed checkpoint note, byte for byte.
    Checkpoint(DataArg),
    /// Print the log's verifier key: `<name>+<key id>+<base64 key>`.
    Key(DataArg),
    /// Print an inclusion proof (`--index I [--size N]`) or a consistency proof
    /// (`--old M [--new N]`) as JSON, against a stored checkpoint (default: the latest).
    Proof(ProofArgs),
    /// Print the log's entries: `raw` (the canonical bytes as hashed, one per line), `jsonl`
    /// (seq, leaf hash and entry) or `ocsf` (OCSF 1.8.0 events for SIEMs).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// A checkpoint note kept outside this data directory; the log must extend it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The verifier key to trust (default: the key the log recorded in entry 0). Pass the
    /// key itself or `@FILE`.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Inclusion proof for the entry with this seq (leaf index).
    #[arg(long, conflicts_with_all = ["old", "new"], required_unless_present = "old")]
    pub index: Option<u64>,
    /// The tree size to prove inclusion in (a stored checkpoint's size; default the latest).
    #[arg(long, requires = "index")]
    pub size: Option<u64>,
    /// Consistency proof from this tree size.
    #[arg(long)]
    pub old: Option<u64>,
    /// Consistency proof to this tree size (a stored checkpoint's size; default the latest).
    #[arg(long, requires = "old")]
    pub new: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Raw,
    Jsonl,
    Ocsf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Start at this seq (inclusive).
    #[arg(long, default_value_t = 0)]
    pub since: u64,
}

pub fn run(cmd: AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify(a) => run_verify(a),
        AuditCommand::Checkpoint(a) => {
            let store = open(&a)?;
            let log = store.as_ref();
            let (_, note) = log
                .latest_checkpoint()
                .map_err(other)?
                .ok_or_else(|| Failure::Other(anyhow::anyhow!("the log has no checkpoint yet")))?;
            out!("{note}");
            Ok(())
        }
        AuditCommand::Key(a) => {
            let store = open(&a)?;
            let log = store.as_ref();
            let key = data_dir::recorded_verifier(log).map_err(other)?.ok_or_else(|| {
                Failure::Other(anyhow::anyhow!("the log does not record its verifier key in entry 0"))
            })?;
            outln!("{}", key_text(&key, log)?);
            Ok(())
        }
        AuditCommand::Proof(a) => run_proof(a),
        AuditCommand::Export(a) => run_export(a),
    }
}

fn other(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Other(e.into())
}

fn open(a: &DataArg) -> Result<std::sync::Arc<dyn Store>, Failure> {
    let at = crate::store_at(a.store.as_deref())?;
    data_dir::open_store_at(&a.data, &at).map_err(crate::data_dir_failure)
}

/// The verifier key as text: entry 0 records it as given, so print that.
fn key_text(key: &NoteVerifier, log: &dyn Store) -> Result<String, Failure> {
    let first = log.entries(0, 1).map_err(other)?;
    let entry = first.first().and_then(|e| Entry::parse(&e.bytes).ok());
    let text = entry.and_then(|e| e.event.data.get("verifier_key").and_then(|v| v.as_str()).map(str::to_string));
    text.filter(|t| NoteVerifier::parse(t).is_ok_and(|v| &v == key))
        .ok_or_else(|| other(anyhow::anyhow!("the log's verifier key cannot be read")))
}

/// A verification failure: its stable code and message.
fn failed(output: Output, code: &str, message: &str, seq: Option<u64>) -> Failure {
    match output {
        Output::Json => outln!("{}", json!({"ok": false, "error": {"code": code, "message": message, "seq": seq}})),
        Output::Text => eprintln!("verification FAILED: {message}"),
    }
    Failure::Denied
}

fn run_verify(a: VerifyArgs) -> Result<(), Failure> {
    let store = open(&a.data)?;
    let log = store.as_ref();
    let recorded = data_dir::recorded_verifier(log).map_err(other)?;
    let trusted = match &a.key {
        Some(k) => {
            let text = match k.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading `{file}`"))?,
                None => k.clone(),
            };
            Some(NoteVerifier::parse(text.trim()).map_err(|e| Failure::Invalid(format!("error: --key: {e}")))?)
        }
        None => None,
    };
    let verifier = match (&trusted, &recorded) {
        (Some(t), Some(r)) if t != r => {
            return Err(failed(
                a.output,
                "key_mismatch",
                "entry 0 records a different verifier key than --key",
                Some(0),
            ));
        }
        (Some(t), _) => t.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            let msg = "entry 0 does not record the log's verifier key; pass the key with --key";
            return Err(failed(a.output, "no_key", msg, Some(0)));
        }
    };
    // The key on disk must be the log's own: a swapped key would sign a rewritten history.
    if a.data.data.join(KEY_FILE).exists() {
        let signer = match data_dir::read_signer(&a.data.data) {
            Err(DataDirError::KeyPermissions(path)) => {
                // An auditor still compares it; the server would refuse to start with it.
                eprintln!("warning: `{}` can be read by other users; it must have mode 0600", path.display());
                std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| NoteSigner::from_private_key(&t).map_err(|e| e.to_string()))
            }
            other => other.map_err(|e| e.to_string()),
        };
        match signer {
            Ok(signer) if NoteVerifier::parse(&signer.verifier_key()).is_ok_and(|v| v == verifier) => {}
            Ok(_) => {
                let msg = format!("`{KEY_FILE}` is not the key this log's checkpoints are signed with");
                return Err(failed(a.output, "key_mismatch", &msg, None));
            }
            Err(e) => return Err(failed(a.output, "key_mismatch", &e, None)),
        }
    }
    let mut bar = Progress::new();
    let result = verify(log, &verifier, &mut |done, total| bar.update(done, total));
    bar.finish();
    let report = match result {
        Ok(r) => r,
        Err(f) => {
            let (code, seq) = failure_code(&f);
            return Err(failed(a.output, code, &f.to_string(), seq));
        }
    };
    let mut extends = None;
    if let Some(file) = &a.checkpoint {
        let note = std::fs::read_to_string(file).with_context(|| format!("reading `{}`", file.display()))?;
        let cp = match Checkpoint::open(&note, &verifier) {
            Ok(cp) => cp,
            Err(e) => return Err(failed(a.output, "external_checkpoint", &format!("`{}`: {e}", file.display()), None)),
        };
        if cp.origin != verifier.name() || cp.size > report.size || log.root(cp.size).map_err(other)? != cp.root {
            let msg = format!(
                "the log (size {}) does not extend the checkpoint in `{}` (size {})",
                report.size,
                file.display(),
                cp.size
            );
            return Err(failed(a.output, "external_checkpoint", &msg, None));
        }
        extends = Some(cp.size);
    }
    let root = B64.encode(report.root);
    match a.output {
        Output::Json => outln!(
            "{}",
            json!({"ok": true, "size": report.size, "root": root, "checkpoints": report.checkpoints, "extends": extends})
        ),
        Output::Text => {
            outln!("ok: {} entries, {} signed checkpoints, root {root}", report.size, report.checkpoints);
            if let Some(n) = extends {
                outln!("ok: the log extends the external checkpoint at size {n}");
            }
        }
    }
    Ok(())
}

fn failure_code(f: &VerifyFailure) -> (&'static str, Option<u64>) {
    match f {
        VerifyFailure::LeafMismatch { seq } => ("leaf_mismatch", Some(*seq)),
        VerifyFailure::BadEntry { seq, .. } => ("bad_entry", Some(*seq)),
        VerifyFailure::Missing { seq, .. } => ("missing_entry", Some(*seq)),
        VerifyFailure::SubtreeMismatch { start, .. } => ("subtree_mismatch", Some(*start)),
        VerifyFailure::BadCheckpoint { .. } => ("bad_checkpoint", None),
        VerifyFailure::RootMismatch { .. } => ("root_mismatch", None),
        VerifyFailure::Truncated { log, .. } => ("truncated", Some(*log)),
        VerifyFailure::Store(_) => ("store_error", None),
    }
}

/// A progress bar on stderr, only when stderr is a terminal.
struct Progress {
    on: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Progress { on: std::io::stderr().is_terminal(), last: None }
    }
    fn update(&mut self, done: u64, total: u64) {
        if !self.on || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Some(Instant::now());
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let filled = (pct / 4) as usize;
        eprint!("\rverifying [{}{}] {pct:>3}%  {done}/{total} entries", "#".repeat(filled), "-".repeat(25 - filled));
    }
    fn finish(&mut self) {
        if self.on && self.last.is_some() {
            eprint!("\r{}\r", " ".repeat(70));
        }
    }
}

fn proof_failure(e: ProofRequestError) -> Failure {
    match e {
        ProofRequestError::Store(e) => other(e),
        ProofRequestError::NoCheckpoint => other(anyhow::anyhow!("the log has no checkpoint yet")),
        e @ ProofRequestError::NoCheckpointAt(_) => {
            Failure::Invalid(format!("error: {e} (see `warden audit checkpoint` for the latest)"))
        }
        ProofRequestError::Bad(e) => Failure::Invalid(format!("error: {e}")),
    }
}

fn run_proof(a: ProofArgs) -> Result<(), Failure> {
    let store = open(&a.data)?;
    let log = store.as_ref();
    let value = if let Some(index) = a.index {
        serde_json::to_value(proofs::inclusion(log, index, a.size).map_err(proof_failure)?)
    } else if let Some(old) = a.old {
        serde_json::to_value(proofs::consistency(log, old, a.new).map_err(proof_failure)?)
    } else {
        return Err(Failure::Invalid("error: pass --index I or --old M".into()));
    };
    outln!("{}", value.map_err(other)?);
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<(), Failure> {
    let store = open(&a.data)?;
    let log = store.as_ref();
    let product = ocsf::Product { version: env!("CARGO_PKG_VERSION").to_string() };
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    let mut from = a.since;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let batch = log.entries(from, 4096)?;
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            for e in batch {
                match a.format {
                    ExportFormat::Raw => {
                        w.write_all(&e.bytes)?;
                        w.write_all(b"\n")?;
                    }
                    ExportFormat::Jsonl => {
                        let entry: serde_json::Value = serde_json::from_slice(&e.bytes)
                            .with_context(|| format!("entry {} is not JSON (run `warden audit verify`)", e.seq))?;
                        let line = json!({"seq": e.seq, "leaf_hash": B64.encode(e.leaf_hash), "entry": entry});
                        writeln!(w, "{line}")?;
                    }
                    ExportFormat::Ocsf => {
                        let entry = Entry::parse(&e.bytes)
                            .with_context(|| format!("entry {} (run `warden audit verify`)", e.seq))?;
                        if let Some(ev) = ocsf::event(&entry, &product) {
                            writeln!(w, "{ev}")?;
                        }
                    }
                }
            }
        }
        w.flush()?;
        Ok(())
    })();
    match result {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        other_result => other_result.map_err(Failure::Other),
    }
}
