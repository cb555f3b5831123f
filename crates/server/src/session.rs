//! Console sessions: a human signs in once with an API token (or an OIDC ID token) and gets a
//! session — a random secret sent back only as an `HttpOnly` cookie. The server keeps the
//! secret's SHA-256, never the secret; every use checks the idle and the absolute expiry and
//! re-reads the user, so a disabled user or a changed role takes effect at once. Sign-out
//! forgets the session.
//!
//! Sessions and bearer tokens never stand in for each other: a session secret is not an API
//! token nor a JWT (the API refuses it), and the console reads only its cookie, never an
//! `Authorization` header.
//!
//! Sessions live in the store (table `sessions`, keyed by the secret's hash): a sign-in on one
//! node is good on every node, and a sign-out or an expiry ends it everywhere. They are
//! credentials, not acts on the estate, so their table is the one the audit log does not
//! describe. The idle timer is written back at most every tenth of the idle timeout (at least
//! every 10 s), not on every page: a session may live up to that much past its idle timeout.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use warden_store::{Batch, Change, Ledger, Query, Record, Table};

use crate::error::{ApiError, Code};
use crate::model::{User, millis};

/// The cookie's name.
pub const COOKIE: &str = "warden_session";

/// A session secret's prefix: neither an API token's (`wdn_`) nor a JWT's.
const PREFIX: &str = "wss_";

/// How console sessions last; the sessions themselves are in the store.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    /// Signed out after this long without a request.
    pub idle: Duration,
    /// Signed out this long after signing in, however active.
    pub absolute: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(Duration::from_secs(30 * 60), Duration::from_secs(12 * 3600))
    }
}

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user: String,
    /// Set for a human known by an OIDC issuer's word (nothing stored): their roles as the
    /// token said, and the token's expiry caps the session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oidc: Option<User>,
    csrf: String,
    last_seen_ms: i64,
    expires_ms: i64,
}

/// A live session: whose, and the token every form of it carries.
#[derive(Debug, Clone)]
pub struct Live {
    /// The user's id (an API-token user is re-read from the store on every use).
    pub user: String,
    /// An OIDC human, as their token said.
    pub oidc: Option<User>,
    pub csrf: String,
}

fn hash(secret: &str) -> String {
    warden_store::data_dir::token_hash(secret)
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|_| ApiError::new(Code::RandomUnavailable, "no randomness available"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn signed_out(why: &str) -> ApiError {
    ApiError::new(Code::UnknownToken, format!("not signed in: {why}"))
}

/// At most this many ended sessions are forgotten per sign-in.
const SWEEP: usize = 64;

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions { idle, absolute }
    }

    fn idle_ms(&self) -> i64 {
        i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX)
    }

    /// How stale the stored idle timer may get before a page writes it back.
    fn touch_every_ms(&self) -> i64 {
        (self.idle_ms() / 10).max(10_000).min(self.idle_ms())
    }

    /// Starts a session for `user` (an OIDC human: `oidc`, and the token's expiry caps the
    /// session's). The secret is for the cookie only; ended sessions are forgotten meanwhile.
    pub fn start(
        &self,
        ledger: &Ledger,
        user: &User,
        oidc: bool,
        cap: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<String, ApiError> {
        let secret = format!("{PREFIX}{}", random_hex(32)?);
        let mut expires = now + self.absolute;
        if let Some(cap) = cap {
            expires = expires.min(cap);
        }
        let session = Session {
            user: user.id.clone(),
            oidc: oidc.then(|| user.clone()),
            csrf: random_hex(24)?,
            last_seen_ms: millis(now),
            expires_ms: millis(expires),
        };
        let record = record(&hash(&secret), &session, 0)?;
        let mut batch = Batch::new().change(Change::Insert(record));
        // Sessions past their absolute end (`at`), and idle ones among the oldest.
        let store = ledger.store();
        let q = Query { state: Some("live".into()), at_to: Some(millis(now)), limit: SWEEP, ..Query::default() };
        for r in store.find(Table::Sessions, &q)? {
            batch = batch.change(Change::Delete { table: Table::Sessions, id: r.id });
        }
        ledger.commit(batch)?;
        Ok(secret)
    }

    /// The live session `secret` names, its idle timer touched (see the module's note); an
    /// ended one is forgotten.
    pub fn check(&self, ledger: &Ledger, secret: &str, now: OffsetDateTime) -> Result<Live, ApiError> {
        if !secret.starts_with(PREFIX) {
            return Err(signed_out("no session"));
        }
        let key = hash(secret);
        let Some(r) = ledger.store().get(Table::Sessions, &key)? else { return Err(signed_out("no such session")) };
        let mut found: Session = serde_json::from_value(r.body.clone())
            .map_err(|e| ApiError::new(Code::Internal, format!("a stored session does not read: {e}")))?;
        let now_ms = millis(now);
        if now_ms >= found.expires_ms || now_ms - found.last_seen_ms >= self.idle_ms() {
            self.end(ledger, secret)?;
            return Err(signed_out("the session has expired"));
        }
        if now_ms - found.last_seen_ms >= self.touch_every_ms() {
            found.last_seen_ms = now_ms;
            // Two pages at once: one write wins, and that is enough.
            match ledger.commit(Batch::new().change(Change::Update(record(&key, &found, r.version)?))) {
                Ok(_) | Err(warden_store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Live { user: found.user, oidc: found.oidc, csrf: found.csrf })
    }

    /// Ends the session `secret` names (signing out), on every node. Ending one that is gone
    /// is no error.
    pub fn end(&self, ledger: &Ledger, secret: &str) -> Result<(), ApiError> {
        ledger.commit(Batch::new().change(Change::Delete { table: Table::Sessions, id: hash(secret) }))?;
        Ok(())
    }

    /// Sessions not yet forgotten (for tests and metrics).
    pub fn count(&self, store: &dyn warden_store::Store) -> Result<u64, ApiError> {
        Ok(store.count(Table::Sessions, &Query { state: Some("live".into()), ..Query::default() })?)
    }
}

/// A session as a record: its id the secret's hash, `at` its absolute end.
fn record(id: &str, session: &Session, version: u64) -> Result<Record, ApiError> {
    let body = serde_json::to_value(session)
        .map_err(|e| ApiError::new(Code::Internal, format!("a session does not encode: {e}")))?;
    let mut r = Record::new(Table::Sessions, id, body).agent(&session.user).state("live").at(session.expires_ms);
    r.version = version;
    Ok(r)
}
