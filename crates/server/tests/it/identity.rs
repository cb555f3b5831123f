//! Every refusal of DESIGN §5 / issue 4, each with its status and stable code.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::Signer as _;
use serde_json::{Value, json};
use warden_core::audit::entry::Actor;
use warden_core::request::AgentStatus;
use warden_server::admin;

use crate::{EDR, harness};

/// A token signed by `key` with arbitrary header and claims (a forger's or a buggy client's).
fn forge(key: &ed25519_dalek::SigningKey, header: Value, claims: Value) -> String {
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    format!("{input}.{}", B64URL.encode(key.sign(input.as_bytes()).to_bytes()))
}

fn claims(sub: &str, exp_in: i64) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({"sub": sub, "aud": ["warden"], "exp": now + exp_in, "iat": now, "iss": "warden-local"})
}

async fn code_of(h: &crate::Harness, token: Option<&str>) -> (StatusCode, String) {
    let (status, body) = h.call("GET", "/v1/tasks/none", token, None).await;
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn refusals_have_stable_codes() {
    let h = harness();
    let seed = h.app.data.token_seed().0;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let kid = h.app.tokens.local.jwks()["keys"][0]["kid"].as_str().unwrap().to_string();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let unsigned = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none"}).to_string()),
        B64URL.encode(claims(EDR, 600).to_string())
    );
    let hs256 = forge(&key, json!({"alg": "HS256", "kid": kid}), claims(EDR, 600));
    let cases: Vec<(Option<String>, StatusCode, &str)> = vec![
        (None, StatusCode::UNAUTHORIZED, "missing_token"),
        (Some("not-a-jwt".into()), StatusCode::UNAUTHORIZED, "malformed_token"),
        (Some(unsigned), StatusCode::UNAUTHORIZED, "algorithm_not_allowed"),
        (Some(hs256), StatusCode::UNAUTHORIZED, "algorithm_not_allowed"),
        (Some(forge(&other, header.clone(), claims(EDR, 600))), StatusCode::UNAUTHORIZED, "bad_signature"),
        (
            Some(forge(&key, json!({"alg": "EdDSA", "kid": "nope"}), claims(EDR, 600))),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        ),
        (Some(forge(&key, header.clone(), claims(EDR, -600))), StatusCode::UNAUTHORIZED, "token_expired"),
        (
            Some(forge(
                &key,
                header.clone(),
                json!({"sub": EDR, "aud": ["warden"], "exp": now + 900, "nbf": now + 600, "iss": "warden-local"}),
            )),
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            Some(forge(
                &key,
                header.clone(),
                json!({"sub": EDR, "aud": ["other"], "exp": now + 600, "iss": "warden-local"}),
            )),
            StatusCode::UNAUTHORIZED,
            "wrong_audience",
        ),
        (
            Some(forge(&key, header.clone(), json!({"sub": EDR, "aud": ["warden"], "exp": now + 600, "iss": "evil"}))),
            StatusCode::UNAUTHORIZED,
            "wrong_issuer",
        ),
        (Some(h.svid("spiffe://acme.example/soc/stranger")), StatusCode::FORBIDDEN, "unregistered_agent"),
        (Some("wdn_not-a-real-token".into()), StatusCode::UNAUTHORIZED, "unknown_token"),
    ];
    for (token, status, code) in cases {
        let got = code_of(&h, token.as_deref()).await;
        assert_eq!(got, (status, code.to_string()), "token {token:?}");
    }
}

#[tokio::test]
async fn suspended_and_halted_agents_are_refused() {
    let h = harness();
    let token = h.svid(EDR);
    assert_eq!(code_of(&h, Some(&token)).await.0, StatusCode::NOT_FOUND, "a valid agent gets through");
    admin::set_agent_status(h.app.ledger(), &Actor::user("admin"), EDR, AgentStatus::Suspended, "testing").unwrap();
    assert_eq!(code_of(&h, Some(&token)).await, (StatusCode::FORBIDDEN, "agent_suspended".into()));
    admin::set_agent_status(h.app.ledger(), &Actor::user("admin"), EDR, AgentStatus::Halted, "testing").unwrap();
    assert_eq!(code_of(&h, Some(&token)).await, (StatusCode::FORBIDDEN, "agent_halted".into()));
}

#[tokio::test]
async fn agents_and_humans_keep_to_their_endpoints() {
    let h = harness();
    let (status, body) = h.call("GET", "/v1/audit/checkpoint", Some(&h.svid(EDR)), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("agents_not_allowed")));
    let analyst = h.user("alice", &["soc-analyst"]);
    let body = json!({"task": "INC-1", "action": "host.isolate", "target": "host:web-42", "confidence": 0.9});
    let (status, body) = h.call("POST", "/v1/actions", Some(&analyst), Some(body)).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("humans_not_allowed")));
    let (status, _) = h.call("GET", "/v1/audit/checkpoint", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "the admin token from init works");
}

#[tokio::test]
async fn the_jwks_publishes_the_key_tokens_verify_with() {
    let h = harness();
    let (status, jwks) = h.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    // Verify a minted token with nothing but the published JWK and a JWT library.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["warden"]);
    let data = jsonwebtoken::decode::<Value>(&h.svid(EDR), &key, &v).unwrap();
    assert_eq!(data.claims["sub"], EDR);
    assert!(!jwks.to_string().contains("\"d\""), "no private key material");
}

#[tokio::test]
async fn a_runaway_agent_is_rate_limited_and_others_are_not() {
    use std::sync::Arc;
    use warden_server::limits::Limits;
    let dir = tempfile::tempdir().unwrap();
    let (data, _) =
        warden_store::DataDir::init(dir.path(), "warden.test/audit", Arc::new(warden_store::SystemClock)).unwrap();
    let bundle = warden_core::Bundle::load(&crate::read_bundle(&crate::example_dir())).unwrap();
    let now = time::OffsetDateTime::now_utc();
    for id in [EDR, crate::PHISH] {
        admin::add_agent(data.ledger(), &Actor::user("admin"), id, "team", "", now).unwrap();
    }
    let limits = Limits { agent_rate: 0.001, agent_burst: 3.0, ..Limits::default() };
    let options = warden_server::state::ServerOptions { limits, ..Default::default() };
    let app =
        warden_server::AppState::with_options(data, bundle, Arc::new(warden_store::SystemClock), options).unwrap();
    let h = crate::Harness {
        _dir: dir,
        at: warden_store::StoreAt::File,
        router: warden_server::router(app.clone()),
        app,
        admin: String::new(),
    };
    let edr = h.svid(EDR);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code_of(&h, Some(&edr)).await);
    }
    assert_eq!(codes[..3].iter().map(|c| c.0).collect::<Vec<_>>(), [StatusCode::NOT_FOUND; 3]);
    assert_eq!(codes[3], (StatusCode::TOO_MANY_REQUESTS, "rate_limited".to_string()));
    assert_eq!(code_of(&h, Some(&h.svid(crate::PHISH))).await.0, StatusCode::NOT_FOUND, "another agent is unaffected");
}

/// Tokens from an external issuer, minted by a JWT library (not Warden's code) with each of
/// the three key types its JWKS publishes.
#[tokio::test]
async fn external_issuers_are_trusted_through_their_jwks() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let h = harness();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims =
        |sub: &str, iss: &str, aud: &str| json!({"sub": sub, "aud": aud, "exp": now + 300, "iat": now, "iss": iss});
    let pem = |name: &str| std::fs::read(crate::fixture(name)).unwrap();
    let keys = [
        (Algorithm::RS256, "spire-rsa", EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap()),
        (Algorithm::ES256, "spire-ec", EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap()),
        (Algorithm::EdDSA, "spire-ed", EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap()),
    ];
    for (alg, kid, key) in &keys {
        let mut header = Header::new(*alg);
        header.kid = Some(kid.to_string());
        let token = encode(&header, &claims(EDR, crate::SPIRE, "warden"), key).unwrap();
        assert_eq!(code_of(&h, Some(&token)).await.0, StatusCode::NOT_FOUND, "{alg:?} token accepted");
        let wrong_iss = encode(&header, &claims(EDR, "https://other.example", "warden"), key).unwrap();
        assert_eq!(code_of(&h, Some(&wrong_iss)).await, (StatusCode::UNAUTHORIZED, "wrong_issuer".into()), "{alg:?}");
        let wrong_aud = encode(&header, &claims(EDR, crate::SPIRE, "elsewhere"), key).unwrap();
        assert_eq!(code_of(&h, Some(&wrong_aud)).await, (StatusCode::UNAUTHORIZED, "wrong_audience".into()), "{alg:?}");
        let stranger = encode(&header, &claims("spiffe://acme.example/x", crate::SPIRE, "warden"), key).unwrap();
        assert_eq!(code_of(&h, Some(&stranger)).await, (StatusCode::FORBIDDEN, "unregistered_agent".into()));
    }
    // A key used with another algorithm than its own is refused (RS256 key, ES256 header).
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("spire-rsa".into());
    let token = encode(&header, &claims(EDR, crate::SPIRE, "warden"), &keys[1].2).unwrap();
    assert_eq!(code_of(&h, Some(&token)).await, (StatusCode::UNAUTHORIZED, "algorithm_not_allowed".into()));
    // Signed by a key in no key set, claiming the Ed25519 key's kid: the signature fails.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("spire-ed".into());
    let other = EncodingKey::from_ed_pem(&pem("other-ed25519.pem")).unwrap();
    let token = encode(&header, &claims(EDR, crate::SPIRE, "warden"), &other).unwrap();
    assert_eq!(code_of(&h, Some(&token)).await, (StatusCode::UNAUTHORIZED, "bad_signature".into()));
}

/// A human's OIDC token: roles from the configured claim; a human endpoint admits them, an
/// agent endpoint does not, and a role they lack is refused.
#[tokio::test]
async fn oidc_humans_carry_their_roles() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let h = harness();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = EncodingKey::from_ec_pem(&std::fs::read(crate::fixture("ec.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-ec".into());
    let token = |groups: Value| {
        let claims =
            json!({"sub": "bob@acme.example", "aud": "warden", "exp": now + 300, "iss": crate::IDP, "groups": groups});
        encode(&header, &claims, &key).unwrap()
    };
    let admin = token(json!(["soc-analyst", "admin"]));
    let (status, _) = h.call("GET", "/v1/audit/checkpoint", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "an OIDC human reaches a human endpoint");
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&token(json!("soc-analyst"))), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("missing_role")));
    let body = json!({"task": "INC-1", "action": "host.isolate", "target": "host:web-42", "confidence": 0.9});
    let (status, body) = h.call("POST", "/v1/actions", Some(&admin), Some(body)).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("humans_not_allowed")));
    let task = json!({"id": "INC-9", "title": "t", "trigger": {"source": "manual"}});
    let (_, task) = h.call("POST", "/v1/tasks", Some(&admin), Some(task)).await;
    assert_eq!(
        task["opened_by"],
        format!("user:{}#bob@acme.example", crate::IDP),
        "audited under the human's own id, namespaced by the issuer that vouched for it"
    );
}

/// One person, one voter: an OIDC identity mapped to a Warden user is that user — their roles,
/// their status, their one vote — and an unmapped one never speaks for a local user of the
/// same name.
#[tokio::test]
async fn an_oidc_login_is_the_user_it_is_mapped_to_and_votes_once() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let h = harness();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = EncodingKey::from_ec_pem(&std::fs::read(crate::fixture("ec.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-ec".into());
    let token = |sub: &str, groups: Value| {
        let claims = json!({"sub": sub, "aud": "warden", "exp": now + 300, "iss": crate::IDP, "groups": groups});
        encode(&header, &claims, &key).unwrap()
    };
    // ivy's API token, and her OIDC identity mapped to her.
    let body = json!({"id": "ivy", "roles": ["iam-owner"], "oidc": [format!("{}#00u-ivy", crate::IDP)]});
    let (status, added) = h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let ivy_api = added["token"].as_str().unwrap().to_string();
    // The same identity cannot be mapped twice.
    let body = json!({"id": "ivy2", "roles": ["iam-owner"], "oidc": [format!("{}#00u-ivy", crate::IDP)]});
    let (status, _) = h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Her IdP says admin: Warden's record says iam-owner, and Warden's record wins.
    let ivy_oidc = token("00u-ivy", json!(["admin"]));
    let (status, _) = h.call("POST", "/v1/policy/reload", Some(&ivy_oidc), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a mapped person has the Warden user's roles");
    // A two-person approval: her API token and her OIDC login are one voter.
    let iam = h.svid("spiffe://acme.example/soc/identity-responder");
    let task = json!({"id": "INC-51", "title": "t", "trigger": {"source": "idp"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&h.admin), Some(task)).await.0, StatusCode::CREATED);
    let req = json!({"task": "INC-51", "action": "account.disable", "target": "account:adm-jdoe", "confidence": 0.97,
        "params": {"reason": "x"}, "rationale": "r", "evidence": [{"kind": "a", "ref": "1"}, {"kind": "a", "ref": "2"}]});
    let (_, asked) = h.call("POST", "/v1/actions", Some(&iam), Some(req)).await;
    let approval = asked["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/approvals/{approval}/approve");
    let (status, v) = h.call("POST", &path, Some(&ivy_api), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, e) = h.call("POST", &path, Some(&ivy_oidc), Some(json!({}))).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_voted")), "{e}");
    // An unmapped identity named like a local user is someone else, with only its token's roles.
    let stranger = token("ivy", json!(["iam-owner"]));
    let (status, v) = h.call("POST", &path, Some(&stranger), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["votes"][1]["user"], format!("{}#ivy", crate::IDP), "{v}");
}
