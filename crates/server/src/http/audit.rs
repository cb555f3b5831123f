//! The audit log over HTTP, for humans and auditors: the same proofs as `warden audit proof`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use warden_core::audit::proof::{ConsistencyProof, InclusionProof};
use warden_store::proofs::{self, ProofRequestError};

use super::extract::ApiQuery;
use crate::auth::HumanCaller;
use crate::error::{ApiError, ApiResult, Code};
use crate::input;
use crate::state::{App, blocking};

fn proof_error(e: ProofRequestError) -> ApiError {
    match e {
        ProofRequestError::Store(e) => e.into(),
        e @ (ProofRequestError::NoCheckpoint | ProofRequestError::NoCheckpointAt(_)) => {
            ApiError::new(Code::NoCheckpoint, e.to_string())
        }
        // The request is well-formed but names a proof that does not exist (a leaf beyond the
        // tree, an old size above the new): like a checkpoint that does not exist, a 404.
        ProofRequestError::Bad(m) => ApiError::new(Code::NoProof, m),
    }
}

/// The latest signed checkpoint note, byte for byte.
/// The latest signed checkpoint: a C2SP `tlog-checkpoint` in a signed note, byte-exact.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "the signed note", body = String, content_type = "text/plain"),
        (status = 404, description = "`no_checkpoint`, `no_proof`", body = crate::error::ErrorBody),
    ))]
pub async fn checkpoint(State(app): State<App>, _: HumanCaller) -> ApiResult<impl IntoResponse> {
    let note = blocking(&app, |s| {
        s.ledger()
            .store()
            .latest_checkpoint()?
            .map(|(_, n)| n)
            .ok_or_else(|| ApiError::new(Code::NoCheckpoint, "the log has no checkpoint yet"))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// The first sequence number.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub since: u64,
    /// At most this many entries (1–1000, default 100).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: u64,
}

/// A page of entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntriesPage {
    /// Entries in the whole log.
    pub size: u64,
    pub entries: Vec<EntryRow>,
}

/// One entry with its RFC 6962 leaf hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryRow {
    pub seq: u64,
    /// base64 of SHA-256(0x00 ‖ entry bytes)
    pub leaf_hash: String,
    /// The entry (`seq`, `time`, `type`, `actor`, `task`, `request`, `action`, `data`).
    #[schema(value_type = Object)]
    pub entry: Value,
}

fn default_limit() -> u64 {
    100
}

/// Entries from `since`, at most `limit` (≤ 1000): seq, leaf hash and the entry.
/// Entries from `since`, in order.
#[utoipa::path(get, path = "/v1/audit/entries", tag = "audit", security(("bearer" = [])), params(EntriesQuery),
    responses(
        (status = 200, body = EntriesPage),
        (status = 422, description = "`invalid_request`: `limit` outside 1–1000", body = crate::error::ErrorBody),
    ))]
pub async fn entries(
    State(app): State<App>,
    _: HumanCaller,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> ApiResult<Json<EntriesPage>> {
    input::at_most("since", q.since, input::MAX_INT)?;
    let limit = input::in_range("limit", q.limit, 1, 1000)? as usize;
    blocking(&app, move |s| {
        let store = s.ledger().store();
        let rows = store.entries(q.since, limit)?;
        let entries = rows
            .iter()
            .map(|e| EntryRow {
                seq: e.seq,
                leaf_hash: base64::engine::general_purpose::STANDARD.encode(e.leaf_hash),
                entry: serde_json::from_slice(&e.bytes).unwrap_or(Value::Null),
            })
            .collect();
        Ok(Json(EntriesPage { size: store.size()?, entries }))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The entry's sequence number.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub index: u64,
    /// The size of a stored checkpoint (default: the latest).
    #[param(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub size: Option<u64>,
}

/// RFC 9162 inclusion proof of entry `index` against a stored checkpoint.
#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", security(("bearer" = [])),
    params(InclusionQuery),
    responses(
        (status = 200, body = InclusionProof),
        (status = 404, description = "`no_checkpoint`, `no_proof`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request`", body = crate::error::ErrorBody),
    ))]
pub async fn inclusion(
    State(app): State<App>,
    _: HumanCaller,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> ApiResult<Json<InclusionProof>> {
    blocking(&app, move |s| {
        input::at_most("index", q.index, input::MAX_INT)?;
        if let Some(size) = q.size {
            input::in_range("size", size, 1, input::MAX_INT)?;
        }
        let p = proofs::inclusion(s.ledger().store().as_ref(), q.index, q.size).map_err(proof_error)?;
        Ok(Json(p))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older tree size.
    #[param(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub old: u64,
    /// The newer tree size, of a stored checkpoint (default: the latest).
    #[param(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub new: Option<u64>,
}

/// RFC 9162 consistency proof between two tree sizes.
#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", security(("bearer" = [])),
    params(ConsistencyQuery),
    responses(
        (status = 200, body = ConsistencyProof),
        (status = 404, description = "`no_checkpoint`, `no_proof`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request`", body = crate::error::ErrorBody),
    ))]
pub async fn consistency(
    State(app): State<App>,
    _: HumanCaller,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyProof>> {
    blocking(&app, move |s| {
        input::in_range("old", q.old, 1, input::MAX_INT)?;
        if let Some(new) = q.new {
            input::in_range("new", new, 1, input::MAX_INT)?;
        }
        let p = proofs::consistency(s.ledger().store().as_ref(), q.old, q.new).map_err(proof_error)?;
        Ok(Json(p))
    })
    .await
}
