//! Checking a whole audit log: every leaf recomputed from its bytes, every stored subtree hash
//! and every signed checkpoint compared with what the bytes imply. Streams the log in batches,
//! so memory stays flat whatever its size.

use warden_core::audit::merkle::{Frontier, Hash, leaf_hash};
use warden_core::audit::note::{Checkpoint, NoteVerifier};

use crate::{AuditLog, StoreError};

const BATCH: usize = 4096;

/// What a successful check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub size: u64,
    pub root: Hash,
    pub checkpoints: usize,
}

/// The first thing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    #[error("entry {seq}: its stored leaf hash does not match its bytes")]
    LeafMismatch { seq: u64 },
    #[error("entry {seq} is missing (the next stored entry is {found})")]
    Missing { seq: u64, found: u64 },
    #[error("entries {start}..{end}: the stored subtree hash does not match the entries")]
    SubtreeMismatch { start: u64, end: u64 },
    #[error("checkpoint at size {size}: {reason}")]
    BadCheckpoint { size: u64, reason: String },
    #[error("checkpoint at size {size}: its root does not match the log's first {size} entries")]
    RootMismatch { size: u64 },
    #[error("checkpoint at size {checkpoint} covers more entries than the log holds ({log})")]
    Truncated { checkpoint: u64, log: u64 },
    #[error("reading the log failed: {0}")]
    Store(#[from] StoreError),
}

/// Verifies `log` against checkpoints signed by `verifier`; `progress(done, total)` is called
/// after each batch.
pub fn verify(
    log: &dyn AuditLog,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let size = log.size()?;
    let mut checkpoints = Vec::new();
    for (cp_size, note) in log.checkpoints()? {
        let cp = Checkpoint::open(&note, verifier)
            .map_err(|e| VerifyFailure::BadCheckpoint { size: cp_size, reason: e.to_string() })?;
        if cp.size != cp_size {
            let reason = format!("the note says size {}", cp.size);
            return Err(VerifyFailure::BadCheckpoint { size: cp_size, reason });
        }
        if cp_size > size {
            return Err(VerifyFailure::Truncated { checkpoint: cp_size, log: size });
        }
        checkpoints.push(cp);
    }
    let mut pending = checkpoints.iter().peekable();
    let mut frontier = Frontier::default();
    while frontier.size() < size {
        let batch = log.entries(frontier.size(), BATCH)?;
        if batch.is_empty() {
            return Err(VerifyFailure::Missing { seq: frontier.size(), found: size });
        }
        for e in batch {
            let seq = frontier.size();
            if e.seq != seq {
                return Err(VerifyFailure::Missing { seq, found: e.seq });
            }
            let leaf = leaf_hash(&e.bytes);
            if leaf != e.leaf_hash {
                return Err(VerifyFailure::LeafMismatch { seq });
            }
            for done in frontier.push(leaf).into_iter().filter(|d| d.level > 0) {
                if log.perfect_subtree(done.start, done.level)? != done.hash {
                    let end = done.start + (1 << done.level);
                    return Err(VerifyFailure::SubtreeMismatch { start: done.start, end });
                }
            }
            while let Some(cp) = pending.next_if(|cp| cp.size == frontier.size()) {
                if cp.root != frontier.root() {
                    return Err(VerifyFailure::RootMismatch { size: cp.size });
                }
            }
        }
        progress(frontier.size(), size);
    }
    for cp in pending {
        // Only a checkpoint of the empty log can remain here.
        if cp.root != frontier.root() {
            return Err(VerifyFailure::RootMismatch { size: cp.size });
        }
    }
    Ok(VerifyReport { size, root: frontier.root(), checkpoints: checkpoints.len() })
}
