//! The audit log's mathematics and formats: the RFC 6962 Merkle tree with inclusion and
//! consistency proofs (RFC 9162 §2.1), signed checkpoints (C2SP `tlog-checkpoint` in a
//! `signed-note`), the entry format (RFC 8785 canonical JSON) and its OCSF export.
//! Storage lives elsewhere; this module only formats, hashes, proves and verifies.

pub mod canonical;
pub mod entry;
pub mod merkle;
pub mod note;
pub mod ocsf;
pub mod proof;
