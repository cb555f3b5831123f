//! A data directory: everything one Warden keeps on disk.
//!
//! ```text
//! warden-data/
//!   warden.db       the SQLite store (plus -wal and -shm files while open)
//!   signing.key     the Ed25519 key that signs checkpoints,
//!                   `PRIVATE+KEY+<origin>+<key id>+<base64>`, mode 0600
//!   token.key       the Ed25519 key of the local token issuer (base64 seed), mode 0600
//! ```
//!
//! With PostgreSQL (`StoreAt::Postgres`), the database holds what `warden.db` holds and the
//! directory only the two keys: every node of a cluster has a copy of the same directory.
//!
//! `init` writes entry 0 of the audit log, `store.initialized`, with the verifier key: from
//! then on the log itself says which key must have signed its checkpoints, so swapping
//! `signing.key` is caught by `audit verify`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use warden_core::audit::entry::{Actor, Entry, Event, EventType};
use warden_core::audit::note::{NoteSigner, NoteVerifier};

use crate::{
    AuditLog, Batch, Change, Clock, Ledger, LedgerOptions, PgStore, PgTarget, Record, SqliteStore, Store, StoreError,
    Table,
};

pub const DB_FILE: &str = "warden.db";
pub const KEY_FILE: &str = "signing.key";
/// The Ed25519 key of the local token issuer (JWT-SVIDs, later leases): base64 of its seed.
pub const TOKEN_KEY_FILE: &str = "token.key";
/// The checkpoint origin (and key name) unless told otherwise.
pub const DEFAULT_ORIGIN: &str = "warden.local/audit";

/// Why a data directory could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("`{0}` already holds a Warden data directory")]
    AlreadyInitialized(PathBuf),
    #[error("`{0}` is not a Warden data directory (run `warden init --data {0}`)")]
    NotInitialized(PathBuf),
    #[error("the database `{0}` already holds a Warden audit log")]
    StoreInUse(String),
    #[error("the database `{0}` holds no Warden audit log (run `warden init --store {0}`)")]
    StoreEmpty(String),
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{0}` can be read by other users; it must have mode 0600")]
    KeyPermissions(PathBuf),
    #[error("`{path}`: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("`{0}` is not the key this audit log was created with")]
    KeyMismatch(PathBuf),
    #[error("the origin `{0}` is not a valid key name (no spaces, no `+`)")]
    BadOrigin(String),
    #[error("cannot draw random bytes: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

fn random32() -> Result<[u8; 32], DataDirError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| DataDirError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh API token: `wdn_` and 43 characters of base64url (256 random bits).
pub fn new_token() -> Result<String, DataDirError> {
    Ok(format!("wdn_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random32()?)))
}

/// How a token is stored: `sha256:` and the hex digest. Tokens are 256 random bits, so a
/// plain hash is as strong as a slow one.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Where a data directory's store is.
#[derive(Debug, Clone, Default)]
pub enum StoreAt {
    /// `warden.db` in the data directory: the embedded default.
    #[default]
    File,
    /// A PostgreSQL database shared by any number of nodes; the directory keeps the keys.
    Postgres(Box<PgTarget>),
}

impl StoreAt {
    /// Reads `--store`: unset or `sqlite` is the file in the data directory, a `postgres://`
    /// URL is PostgreSQL.
    pub fn parse(value: Option<&str>) -> Result<StoreAt, StoreError> {
        match value.map(str::trim) {
            None | Some("") | Some("sqlite") => Ok(StoreAt::File),
            Some(url) => PgTarget::parse(url).map(|t| StoreAt::Postgres(Box::new(t))),
        }
    }

    /// How it is named in messages (no password).
    pub fn describe(&self, data: &Path) -> String {
        match self {
            StoreAt::File => data.join(DB_FILE).display().to_string(),
            StoreAt::Postgres(t) => t.to_string(),
        }
    }
}

/// An open data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    ledger: Arc<Ledger>,
    token_seed: TokenSeed,
    shared: bool,
}

/// The store setting naming the token key the log was created with ([`TokenSeed::id`]).
const TOKEN_KEY_ID: &str = "token_key_id";

/// The token issuer's key seed; never printed.
#[derive(Clone)]
pub struct TokenSeed(pub [u8; 32]);

impl TokenSeed {
    /// A name for the key that tells keys apart and reveals nothing of it: the first 16 bytes,
    /// in hex, of SHA-256 over a label and the seed.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"warden token key id\n");
        h.update(self.0);
        h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSeed(..)")
    }
}

impl DataDir {
    /// Creates a data directory at `path` (which may exist but must not hold one): a new
    /// signing key, the database, entry 0 and the `admin` user. Returns the admin token, which
    /// is stored only as a hash. Nothing is left behind on failure.
    pub fn init(path: &Path, origin: &str, clock: Arc<dyn Clock>) -> Result<(DataDir, String), DataDirError> {
        Self::init_at(path, &StoreAt::File, origin, clock)
    }

    /// [`DataDir::init`] with the store at `at`. For PostgreSQL the database must hold no log
    /// yet; the directory gets the keys (copy it to every other node).
    pub fn init_at(
        path: &Path,
        at: &StoreAt,
        origin: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<(DataDir, String), DataDirError> {
        if path.join(DB_FILE).exists() || path.join(KEY_FILE).exists() {
            return Err(DataDirError::AlreadyInitialized(path.to_path_buf()));
        }
        let signer = NoteSigner::new(origin, &random32()?).map_err(|_| DataDirError::BadOrigin(origin.to_string()))?;
        let created_dir = !path.exists();
        fs::create_dir_all(path).map_err(io(path))?;
        #[cfg(unix)]
        if created_dir {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io(path))?;
        }
        let result = Self::init_in(path, at, signer, clock);
        if result.is_err() {
            for f in [KEY_FILE, TOKEN_KEY_FILE, DB_FILE, "warden.db-wal", "warden.db-shm"] {
                let _ = fs::remove_file(path.join(f));
            }
            if created_dir {
                let _ = fs::remove_dir(path);
            }
        }
        result
    }

    fn init_in(
        path: &Path,
        at: &StoreAt,
        signer: NoteSigner,
        clock: Arc<dyn Clock>,
    ) -> Result<(DataDir, String), DataDirError> {
        let store: Arc<dyn Store> = match at {
            StoreAt::File => Arc::new(SqliteStore::open(&path.join(DB_FILE))?),
            StoreAt::Postgres(t) => {
                let store = PgStore::open((**t).clone())?;
                if store.size()? > 0 {
                    return Err(DataDirError::StoreInUse(t.to_string()));
                }
                Arc::new(store)
            }
        };
        let key_path = path.join(KEY_FILE);
        write_private(&key_path, &format!("{}\n", signer.to_private_key()))?;
        let token_seed = token_seed(path)?;
        let verifier_key = signer.verifier_key();
        let ledger = Ledger::open(store, signer, clock, LedgerOptions::default())?;
        let token = new_token()?;
        let system = Actor::system("warden");
        let admin = Record::new(
            Table::Users,
            "admin",
            json!({"id": "admin", "roles": ["admin"], "token_hash": token_hash(&token)}),
        )
        .state("active")
        .key(token_hash(&token));
        ledger.commit(
            Batch::new()
                .change(Change::SetMeta { key: "origin".into(), value: ledger.origin().to_string() })
                .change(Change::SetMeta { key: "verifier_key".into(), value: verifier_key.clone() })
                .change(Change::SetMeta { key: TOKEN_KEY_ID.into(), value: token_seed.id() })
                .change(Change::Insert(admin))
                .event(Event::new(EventType::StoreInitialized, system.clone()).data(json!({
                    "origin": ledger.origin(),
                    "verifier_key": verifier_key,
                    "schema_version": crate::SCHEMA_VERSION,
                })))
                .event(Event::new(EventType::UserAdded, system).data(json!({"id": "admin", "roles": ["admin"]}))),
        )?;
        Ok((
            DataDir {
                path: path.to_path_buf(),
                ledger: Arc::new(ledger),
                token_seed,
                shared: matches!(at, StoreAt::Postgres(_)),
            },
            token,
        ))
    }

    /// Opens an initialised data directory for writing.
    pub fn open(path: &Path, clock: Arc<dyn Clock>, options: LedgerOptions) -> Result<DataDir, DataDirError> {
        Self::open_at(path, &StoreAt::File, clock, options)
    }

    /// [`DataDir::open`] with the store at `at`.
    pub fn open_at(
        path: &Path,
        at: &StoreAt,
        clock: Arc<dyn Clock>,
        options: LedgerOptions,
    ) -> Result<DataDir, DataDirError> {
        let signer = read_signer(path)?;
        let store = open_store_at(path, at)?;
        // Refuse to sign for a log that names another key: it would look like a rewrite.
        let mine = NoteVerifier::parse(&signer.verifier_key()).ok();
        if let Some(recorded) = recorded_verifier(store.as_ref())?
            && Some(&recorded) != mine.as_ref()
        {
            return Err(DataDirError::KeyMismatch(path.join(KEY_FILE)));
        }
        let token_seed = token_seed(path)?;
        // Tokens one node issues are checked by the others: every node needs the same key.
        if let Some(recorded) = store.meta(TOKEN_KEY_ID)?
            && recorded != token_seed.id()
        {
            return Err(DataDirError::KeyMismatch(path.join(TOKEN_KEY_FILE)));
        }
        let ledger = Ledger::open(store, signer, clock, options)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            ledger: Arc::new(ledger),
            token_seed,
            shared: matches!(at, StoreAt::Postgres(_)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether other nodes may share the store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// A handle to the ledger for what outlives a borrow (the notifier's delivery thread).
    pub fn ledger_handle(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// The seed of the local token issuer's Ed25519 key.
    pub fn token_seed(&self) -> &TokenSeed {
        &self.token_seed
    }
}

/// Reads `token.key`, creating it (mode 0600) in a data directory that predates it.
fn token_seed(path: &Path) -> Result<TokenSeed, DataDirError> {
    let key_path = path.join(TOKEN_KEY_FILE);
    if !key_path.exists() {
        let seed = random32()?;
        write_private(&key_path, &format!("{}\n", base64::engine::general_purpose::STANDARD.encode(seed)))?;
    }
    check_private(&key_path)?;
    let text = fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| DataDirError::BadKey { path: key_path.clone(), reason: "expected 32 bytes of base64".into() })?;
    Ok(TokenSeed(bytes))
}

fn check_private(key_path: &Path) -> Result<(), DataDirError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(key_path).map_err(io(key_path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(DataDirError::KeyPermissions(key_path.to_path_buf()));
        }
    }
    Ok(())
}

/// Opens the store of an initialised data directory without its key (for auditors).
pub fn open_store(path: &Path) -> Result<SqliteStore, DataDirError> {
    let db = path.join(DB_FILE);
    if !db.is_file() {
        return Err(DataDirError::NotInitialized(path.to_path_buf()));
    }
    Ok(SqliteStore::open(&db)?)
}

/// Opens the store at `at` (for `File`, the one in `path`), refusing one that holds no log.
pub fn open_store_at(path: &Path, at: &StoreAt) -> Result<Arc<dyn Store>, DataDirError> {
    match at {
        StoreAt::File => Ok(Arc::new(open_store(path)?)),
        StoreAt::Postgres(t) => {
            let store = PgStore::open((**t).clone())?;
            if store.size()? == 0 {
                return Err(DataDirError::StoreEmpty(t.to_string()));
            }
            Ok(Arc::new(store))
        }
    }
}

/// Reads the data directory's signing key, refusing one others can read.
pub fn read_signer(path: &Path) -> Result<NoteSigner, DataDirError> {
    let key_path = path.join(KEY_FILE);
    if !key_path.exists() {
        return Err(DataDirError::NotInitialized(path.to_path_buf()));
    }
    check_private(&key_path)?;
    let text = fs::read_to_string(&key_path).map_err(io(&key_path))?;
    NoteSigner::from_private_key(&text).map_err(|e| DataDirError::BadKey { path: key_path, reason: e.to_string() })
}

/// The verifier key the log records in its first entry (`store.initialized`).
pub fn recorded_verifier(log: &dyn AuditLog) -> Result<Option<NoteVerifier>, StoreError> {
    let Some(first) = log.entries(0, 1)?.into_iter().next() else { return Ok(None) };
    let Ok(entry) = Entry::parse(&first.bytes) else { return Ok(None) };
    if entry.event.kind != EventType::StoreInitialized {
        return Ok(None);
    }
    let key = entry.event.data.get("verifier_key").and_then(|v| v.as_str());
    Ok(key.and_then(|k| NoteVerifier::parse(k).ok()))
}

fn write_private(path: &Path, text: &str) -> Result<(), DataDirError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io(path))
}
