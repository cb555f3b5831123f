//! Who is calling: agents by JWT-SVID (DESIGN §5), humans by API token.
//!
//! The local issuer signs JWT-SVIDs with the data directory's `token.key` (EdDSA) and publishes
//! its key at `/.well-known/jwks.json`. Verification goes through `jsonwebtoken`, with the
//! algorithm taken from the key, never from the token: `none` and HS* are refused before any
//! key is looked at.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signer as _, SigningKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{ApiError, Code};

/// The audience of lease tokens; never accepted as a credential for Warden's own API.
pub const LEASE_AUDIENCE: &str = "warden-lease";

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims Warden reads from a JWT-SVID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvidClaims {
    pub sub: String,
    pub aud: Value,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Every other claim (an OIDC issuer's roles live here).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Whom a verified token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// A workload: `sub` is its SPIFFE ID.
    Agent(String),
    /// A human from an OIDC issuer, with the roles its roles claim lists.
    Human { id: String, roles: Vec<String> },
}

/// How an OIDC human is known before any mapping: `ISSUER#SUB`.
pub fn oidc_identity(issuer: &str, sub: &str) -> String {
    format!("{issuer}#{sub}")
}

/// Warden as its own token issuer.
pub struct LocalIssuer {
    issuer: String,
    key: SigningKey,
    kid: String,
    jwk: Value,
    decoding: DecodingKey,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl LocalIssuer {
    pub fn new(issuer: impl Into<String>, seed: &[u8; 32]) -> Result<Self, ApiError> {
        let key = SigningKey::from_bytes(seed);
        let x = B64URL.encode(key.verifying_key().to_bytes());
        // RFC 7638 thumbprint: SHA-256 over the required members, sorted, no whitespace.
        let thumb = Sha256::digest(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes());
        let kid = B64URL.encode(thumb);
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
        let decoding = DecodingKey::from_ed_components(&x)
            .map_err(|e| ApiError::new(Code::IssuerUnavailable, format!("the local issuer key: {e}")))?;
        Ok(LocalIssuer { issuer: issuer.into(), key, kid, jwk, decoding })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public keys, as a JWK set.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// A JWT-SVID for `sub`, valid from `now` for `ttl_secs`.
    pub fn mint(&self, sub: &str, audience: &str, now: OffsetDateTime, ttl_secs: i64) -> String {
        self.mint_with(sub, audience, now, ttl_secs, serde_json::Map::new())
    }

    /// A lease token (audience `warden-lease`): `jti` is the lease id, `scope` what it allows;
    /// tools verify it offline with `/.well-known/jwks.json` or ask `/v1/leases/introspect`.
    pub fn mint_lease(
        &self,
        sub: &str,
        lease_id: &str,
        scope: &str,
        digest: &str,
        now: OffsetDateTime,
        ttl_secs: i64,
    ) -> String {
        let mut extra = serde_json::Map::new();
        extra.insert("jti".into(), json!(lease_id));
        extra.insert("scope".into(), json!(scope));
        // The one action the lease allows (DESIGN §6): a tool can check it offline.
        extra.insert("act_digest".into(), json!(digest));
        self.mint_with(sub, LEASE_AUDIENCE, now, ttl_secs, extra)
    }

    fn mint_with(
        &self,
        sub: &str,
        audience: &str,
        now: OffsetDateTime,
        ttl_secs: i64,
        extra: serde_json::Map<String, Value>,
    ) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let iat = now.unix_timestamp();
        let claims = SvidClaims {
            sub: sub.to_string(),
            aud: json!([audience]),
            exp: iat + ttl_secs,
            iat: Some(iat),
            nbf: None,
            iss: Some(self.issuer.clone()),
            extra,
        };
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(serde_json::to_vec(&claims).unwrap_or_default())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(sig.to_bytes()))
    }
}

/// An external issuer from the configuration: SPIRE, an OIDC provider… trusted through the
/// public keys of its JWKS file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// A JWKS JSON file with its public keys.
    pub jwks_file: std::path::PathBuf,
    /// The audience its tokens must name (default: the server's).
    #[serde(default)]
    pub audience: Option<String>,
    /// Set for an OIDC issuer of *human* tokens: the claim holding their roles (an array of
    /// strings, or one space-separated string). Unset: a workload issuer of JWT-SVIDs.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// For a workload issuer: the SPIFFE trust domains it may speak for
    /// (`["acme.example"]`). Required: a token whose `sub` is outside them is refused (401
    /// `wrong_trust_domain`), so one issuer cannot mint identities of another's workloads.
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

/// Why an issuer's keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("`{path}`: {reason}")]
    Jwks { path: std::path::PathBuf, reason: String },
    #[error("issuer `{issuer}`: {reason}")]
    Config { issuer: String, reason: String },
}

/// A trusted external issuer and its keys by `kid`.
pub struct ExternalIssuer {
    pub issuer: String,
    pub audience: Option<String>,
    /// Humans' issuers name their roles claim; workload issuers do not.
    pub roles_claim: Option<String>,
    /// The SPIFFE trust domains a workload issuer may speak for.
    pub trust_domains: Vec<String>,
    keys: std::collections::HashMap<String, (Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("ExternalIssuer").field("issuer", &self.issuer).field("kids", &kids).finish()
    }
}

/// The algorithm a JWK is for: its `alg`, or what its key type implies. Symmetric keys are
/// refused.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    if let Some(alg) = &jwk.common.key_algorithm {
        let name = serde_json::to_value(alg).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        return match name.parse::<Algorithm>() {
            Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => Ok(a),
            _ => Err(format!("algorithm `{name}` is not accepted")),
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Ok(Algorithm::ES256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Ok(Algorithm::ES384),
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        _ => Err("symmetric and unknown keys are not accepted".into()),
    }
}

impl ExternalIssuer {
    /// Loads the issuer's JWKS file; every key needs a `kid`.
    pub fn load(cfg: &IssuerConfig) -> Result<Self, IssuerError> {
        let config = |reason: &str| IssuerError::Config { issuer: cfg.issuer.clone(), reason: reason.to_string() };
        if cfg.roles_claim.is_none() && cfg.trust_domains.is_empty() {
            return Err(config(
                "a workload issuer needs `trust_domains`: the SPIFFE trust domains it may speak for, \
                 e.g. `trust_domains = [\"acme.example\"]`",
            ));
        }
        for d in &cfg.trust_domains {
            let ok =
                !d.is_empty() && d.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
            if !ok {
                return Err(config(&format!(
                    "trust domain `{d}` must be lowercase letters, digits, `.`, `-` or `_` (no `spiffe://`)"
                )));
            }
        }
        let bad = |reason: String| IssuerError::Jwks { path: cfg.jwks_file.clone(), reason };
        let text = std::fs::read_to_string(&cfg.jwks_file).map_err(|e| bad(e.to_string()))?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
        let mut keys = std::collections::HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or_else(|| bad("every key needs a `kid`".into()))?;
            let alg = jwk_algorithm(jwk).map_err(|e| bad(format!("key `{kid}`: {e}")))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key `{kid}`: {e}")))?;
            keys.insert(kid, (alg, key));
        }
        if keys.is_empty() {
            return Err(bad("the key set is empty".into()));
        }
        Ok(ExternalIssuer {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            roles_claim: cfg.roles_claim.clone(),
            trust_domains: cfg.trust_domains.clone(),
            keys,
        })
    }
}

/// Checks JWT-SVIDs against the trusted issuers (the local one and any configured) and an
/// audience.
#[derive(Debug)]
pub struct TokenVerifier {
    pub audience: String,
    pub local: LocalIssuer,
    pub external: Vec<ExternalIssuer>,
    /// Tokens already verified, by SHA-256 of the token: a signature is checked once per
    /// token, not once per request. Keys are fixed for the verifier's life, so a verdict stays
    /// true until the token's `exp`, which every hit checks again.
    cache: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    subject: Subject,
    exp: i64,
    nbf: Option<i64>,
}

/// A verified token: its claims, the roles claim of a human issuer, and the trust domains of
/// an external workload issuer (`None` for the local issuer).
type Verdict = (SvidClaims, Option<String>, Option<Vec<String>>);

/// The most verified tokens remembered; beyond it the cache starts over.
const CACHE_MAX: usize = 4096;

fn refused(code: Code, message: &str) -> ApiError {
    ApiError::new(code, message)
}

impl TokenVerifier {
    pub fn new(audience: String, local: LocalIssuer, external: Vec<ExternalIssuer>) -> Self {
        TokenVerifier { audience, local, external, cache: Default::default() }
    }

    /// Whom `token` speaks for: an agent (JWT-SVID) or, from an OIDC issuer, a human; or the
    /// precise reason it is refused.
    /// [`TokenVerifier::subject`], and when the token expires (a console session never
    /// outlives the ID token it began with).
    pub fn subject_with_expiry(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<(Subject, Option<OffsetDateTime>), ApiError> {
        let subject = self.subject(token, now)?;
        let (claims, _, _) = self.verify_with(token, now)?;
        Ok((subject, OffsetDateTime::from_unix_timestamp(claims.exp).ok()))
    }

    pub fn subject(&self, token: &str, now: OffsetDateTime) -> Result<Subject, ApiError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let t = now.unix_timestamp();
        let leeway = LEEWAY_SECS as i64;
        if let Ok(cache) = self.cache.lock()
            && let Some(v) = cache.get(&digest)
            && t <= v.exp + leeway
            && v.nbf.is_none_or(|nbf| nbf <= t + leeway)
        {
            return Ok(v.subject.clone());
        }
        // Not remembered, or no longer in its validity window: verify in full (which names the
        // precise refusal).
        let (claims, roles_claim, domains) = self.verify_with(token, now)?;
        let (exp, nbf) = (claims.exp, claims.nbf);
        let subject = match roles_claim {
            None => {
                // An external workload issuer speaks only for its own trust domains.
                if let Some(domains) = domains {
                    let domain = claims.sub.strip_prefix("spiffe://").and_then(|r| r.split('/').next()).unwrap_or("");
                    if !domains.iter().any(|d| d == domain) {
                        return Err(refused(
                            Code::WrongTrustDomain,
                            &format!("the token's issuer may not speak for trust domain `{domain}`"),
                        ));
                    }
                }
                Subject::Agent(claims.sub)
            }
            Some(claim) => {
                let roles = match claims.extra.get(&claim) {
                    Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                    _ => Vec::new(),
                };
                // Namespaced by issuer: two issuers' `ana`, or an issuer's `ana` and the local
                // user `ana`, are different people unless a Warden user maps them
                // (`warden user add --oidc ISSUER#SUB`).
                let issuer = claims.iss.clone().unwrap_or_default();
                Subject::Human { id: oidc_identity(&issuer, &claims.sub), roles }
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest, Verified { subject: subject.clone(), exp, nbf });
        }
        Ok(subject)
    }

    /// The claims of a lease token signed by the local issuer (signature, issuer and audience
    /// checked; expiry is the caller's to judge against the lease record).
    pub fn lease_claims(&self, token: &str) -> Option<SvidClaims> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_audience(&[LEASE_AUDIENCE]);
        v.set_issuer(&[self.local.issuer()]);
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.kid.as_deref() != Some(self.local.kid.as_str()) {
            return None;
        }
        jsonwebtoken::decode::<SvidClaims>(token, &self.local.decoding, &v).ok().map(|d| d.claims)
    }

    /// The verified claims of a token (agents' or humans').
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<SvidClaims, ApiError> {
        self.verify_with(token, now).map(|(c, _, _)| c)
    }

    /// The verified claims, the roles claim of a human issuer, and the trust domains of an
    /// external workload issuer (`None` for the local issuer).
    fn verify_with(&self, token: &str, now: OffsetDateTime) -> Result<Verdict, ApiError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(refused(Code::MalformedToken, "the token is not a compact JWT"));
        };
        let header: Value = B64URL
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| refused(Code::MalformedToken, "the token's header is not base64url JSON"))?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let allowed = ["EdDSA", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "PS512"];
        if !allowed.contains(&alg) {
            return Err(refused(Code::AlgorithmNotAllowed, &format!("the algorithm `{alg}` is not accepted")));
        }
        let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
        // The key decides the algorithm, issuer and audience; the token only names the key.
        let (key_alg, key, issuer, audience, roles_claim, domains) = if kid == self.local.kid {
            (Algorithm::EdDSA, &self.local.decoding, self.local.issuer(), self.audience.as_str(), None, None)
        } else {
            self.external
                .iter()
                .find_map(|x| {
                    x.keys.get(kid).map(|(a, k)| {
                        let aud = x.audience.as_deref().unwrap_or(&self.audience);
                        (*a, k, x.issuer.as_str(), aud, x.roles_claim.clone(), Some(x.trust_domains.clone()))
                    })
                })
                .ok_or_else(|| refused(Code::UnknownKey, &format!("no trusted issuer has a key `{kid}`")))?
        };
        if alg.parse::<Algorithm>().ok() != Some(key_alg) {
            return Err(refused(Code::AlgorithmNotAllowed, &format!("key `{kid}` does not sign with `{alg}`")));
        }
        let mut v = Validation::new(key_alg);
        // Times are checked below against the server's clock, not the library's.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_audience(&[audience]);
        v.set_issuer(&[issuer]);
        // `iss` is required: a token that does not say who issued it is refused.
        v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        let data = jsonwebtoken::decode::<SvidClaims>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::MissingRequiredClaim(c) => {
                refused(Code::MissingClaim, &format!("the token lacks the required claim `{c}`"))
            }
            ErrorKind::InvalidSignature => refused(Code::BadSignature, "the token's signature does not verify"),
            ErrorKind::ExpiredSignature => refused(Code::TokenExpired, "the token has expired"),
            ErrorKind::ImmatureSignature => refused(Code::TokenNotYetValid, "the token is not valid yet"),
            ErrorKind::InvalidAudience => {
                refused(Code::WrongAudience, &format!("the token's audience does not include `{audience}`"))
            }
            ErrorKind::InvalidIssuer => refused(Code::WrongIssuer, "the token's issuer is not the key's issuer"),
            _ => refused(Code::MalformedToken, &format!("the token cannot be read: {e}")),
        })?;
        let claims = data.claims;
        let (t, leeway) = (now.unix_timestamp(), LEEWAY_SECS as i64);
        if claims.exp + leeway < t {
            return Err(refused(Code::TokenExpired, "the token has expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > t + leeway) {
            return Err(refused(Code::TokenNotYetValid, "the token is not valid yet"));
        }
        if claims.iat.is_some_and(|iat| iat > t + leeway) {
            return Err(refused(Code::TokenNotYetValid, "the token was issued in the future"));
        }
        Ok((claims, roles_claim, domains))
    }
}

/// Constant-time equality for secrets' digests.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn a_remembered_token_still_expires() {
        let local = LocalIssuer::new("warden-local", &[7; 32]).unwrap();
        let now = OffsetDateTime::now_utc();
        let token = local.mint("spiffe://a/b", "warden", now, 60);
        let v = TokenVerifier::new("warden".into(), local, Vec::new());
        assert_eq!(v.subject(&token, now).unwrap(), Subject::Agent("spiffe://a/b".into()));
        // Remembered: a second check is a hit.
        assert_eq!(
            v.subject(&token, now + time::Duration::seconds(59)).unwrap(),
            Subject::Agent("spiffe://a/b".into())
        );
        // Past exp + leeway, the hit is refused by the full check with its precise code.
        let late = now + time::Duration::seconds(60 + LEEWAY_SECS as i64 + 1);
        assert_eq!(v.subject(&token, late).unwrap_err().code.as_str(), "token_expired");
        // And a token that fails is never remembered.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let flipped: String =
            sig.chars().enumerate().map(|(i, c)| if i == 5 { if c == 'A' { 'B' } else { 'A' } } else { c }).collect();
        let forged = format!("{head}.{flipped}");
        assert!(v.subject(&forged, now).is_err());
        assert!(v.subject(&forged, now).is_err());
    }
}
