//! Proofs against signed checkpoints: what `warden audit proof` and the HTTP audit endpoints
//! both answer, in one place.

use warden_core::audit::merkle::ProofError;
use warden_core::audit::proof::{ConsistencyProof, InclusionProof};

use crate::{AuditLog, StoreError};

/// Why a proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProofRequestError {
    #[error("there is no signed checkpoint at size {0}")]
    NoCheckpointAt(u64),
    #[error("the log has no checkpoint yet")]
    NoCheckpoint,
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ProofError<StoreError>> for ProofRequestError {
    fn from(e: ProofError<StoreError>) -> Self {
        match e {
            ProofError::Read(e) => ProofRequestError::Store(e),
            other => ProofRequestError::Bad(other.to_string()),
        }
    }
}

/// `asked`, if a checkpoint is stored at that size, or the latest checkpoint's size.
pub fn checkpoint_size(log: &dyn AuditLog, asked: Option<u64>) -> Result<u64, ProofRequestError> {
    match asked {
        Some(n) => match log.checkpoint_at(n)? {
            Some(_) => Ok(n),
            None => Err(ProofRequestError::NoCheckpointAt(n)),
        },
        None => log.latest_checkpoint()?.map(|(n, _)| n).ok_or(ProofRequestError::NoCheckpoint),
    }
}

/// Inclusion of entry `index` in the checkpointed tree of `size` (default: the latest).
pub fn inclusion(log: &dyn AuditLog, index: u64, size: Option<u64>) -> Result<InclusionProof, ProofRequestError> {
    let size = checkpoint_size(log, size)?;
    Ok(InclusionProof::build(log, index, size)?)
}

/// Consistency of the tree of `old` entries with the checkpointed tree of `new` (default:
/// the latest).
pub fn consistency(log: &dyn AuditLog, old: u64, new: Option<u64>) -> Result<ConsistencyProof, ProofRequestError> {
    let new = checkpoint_size(log, new)?;
    Ok(ConsistencyProof::build(log, old, new)?)
}
