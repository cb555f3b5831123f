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
//! Sessions live in the server's memory: a restart signs everyone out. (With several nodes
//! sharing one database they will move to the store.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{ApiError, Code};
use crate::model::User;

/// The cookie's name.
pub const COOKIE: &str = "warden_session";

/// A session secret's prefix: neither an API token's (`wdn_`) nor a JWT's.
const PREFIX: &str = "wss_";

/// Sign-in sessions, by the SHA-256 of their secret.
#[derive(Debug)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
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

#[derive(Debug, Clone)]
struct Session {
    user: String,
    /// Set for a human known by an OIDC issuer's word (nothing stored): their roles as the
    /// token said, and the token's expiry caps the session's.
    oidc: Option<User>,
    csrf: String,
    last_seen: OffsetDateTime,
    expires: OffsetDateTime,
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

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions { by_hash: Mutex::new(HashMap::new()), idle, absolute }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `user` (an OIDC human: `oidc`, and the token's expiry caps the
    /// session's). The secret is for the cookie only.
    pub fn start(
        &self,
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
            last_seen: now,
            expires,
        };
        let mut map = self.map();
        // Forget ended sessions as new ones start, so the map holds only live ones.
        map.retain(|_, v| v.expires > now && now - v.last_seen < self.idle);
        map.insert(hash(&secret), session);
        Ok(secret)
    }

    /// The live session `secret` names, its idle timer touched; an ended one is forgotten.
    pub fn check(&self, secret: &str, now: OffsetDateTime) -> Result<Live, ApiError> {
        if !secret.starts_with(PREFIX) {
            return Err(signed_out("no session"));
        }
        let key = hash(secret);
        let mut map = self.map();
        let Some(found) = map.get_mut(&key) else { return Err(signed_out("no such session")) };
        if now >= found.expires || now - found.last_seen >= self.idle {
            map.remove(&key);
            return Err(signed_out("the session has expired"));
        }
        found.last_seen = now;
        Ok(Live { user: found.user.clone(), oidc: found.oidc.clone(), csrf: found.csrf.clone() })
    }

    /// Ends the session `secret` names (signing out). Ending one that is gone is no error.
    pub fn end(&self, secret: &str) {
        self.map().remove(&hash(secret));
    }

    /// Live sessions (for tests and metrics).
    pub fn count(&self) -> usize {
        self.map().len()
    }
}
