//! The audit log over HTTP, for humans and auditors: the same proofs as `warden audit proof`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use warden_store::proofs::{self, ProofRequestError};

use crate::auth::HumanCaller;
use crate::error::{ApiError, ApiResult};
use crate::state::{App, blocking};

fn proof_error(e: ProofRequestError) -> ApiError {
    match e {
        ProofRequestError::Store(e) => e.into(),
        e @ (ProofRequestError::NoCheckpoint | ProofRequestError::NoCheckpointAt(_)) => {
            ApiError::not_found("no_checkpoint", e.to_string())
        }
        ProofRequestError::Bad(m) => ApiError::invalid("invalid_proof_request", m),
    }
}

/// The latest signed checkpoint note, byte for byte.
pub async fn checkpoint(State(app): State<App>, _: HumanCaller) -> ApiResult<impl IntoResponse> {
    let note = blocking(&app, |s| {
        s.ledger()
            .store()
            .latest_checkpoint()?
            .map(|(_, n)| n)
            .ok_or_else(|| ApiError::not_found("no_checkpoint", "the log has no checkpoint yet"))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note))
}

#[derive(Debug, Deserialize)]
pub struct EntriesQuery {
    #[serde(default)]
    pub since: u64,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Entries from `since`, at most `limit` (≤ 1000): seq, leaf hash and the entry.
pub async fn entries(State(app): State<App>, _: HumanCaller, Query(q): Query<EntriesQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.clamp(1, 1000);
    blocking(&app, move |s| {
        let store = s.ledger().store();
        let rows = store.entries(q.since, limit)?;
        let entries: Vec<Value> = rows
            .iter()
            .map(|e| {
                let entry: Value = serde_json::from_slice(&e.bytes).unwrap_or(Value::Null);
                json!({"seq": e.seq, "leaf_hash": base64::engine::general_purpose::STANDARD.encode(e.leaf_hash), "entry": entry})
            })
            .collect();
        Ok(Json(json!({"size": store.size()?, "entries": entries})))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct InclusionQuery {
    pub index: u64,
    pub size: Option<u64>,
}

pub async fn inclusion(
    State(app): State<App>,
    _: HumanCaller,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<Value>> {
    blocking(&app, move |s| {
        let p = proofs::inclusion(s.ledger().store().as_ref(), q.index, q.size).map_err(proof_error)?;
        Ok(Json(serde_json::to_value(p).unwrap_or(Value::Null)))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct ConsistencyQuery {
    pub old: u64,
    pub new: Option<u64>,
}

pub async fn consistency(
    State(app): State<App>,
    _: HumanCaller,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    blocking(&app, move |s| {
        let p = proofs::consistency(s.ledger().store().as_ref(), q.old, q.new).map_err(proof_error)?;
        Ok(Json(serde_json::to_value(p).unwrap_or(Value::Null)))
    })
    .await
}
