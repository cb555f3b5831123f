//! The audit log's mathematics: the RFC 6962 Merkle tree with inclusion and consistency proofs
//! (RFC 9162 §2.1), and signed checkpoints (C2SP `tlog-checkpoint` in a `signed-note`).
//! Storage lives elsewhere; this module only hashes, proves and verifies.

pub mod canonical;
pub mod merkle;
pub mod note;
