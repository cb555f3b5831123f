//! Proofs as JSON, the wire format auditors check with their own code:
//!
//! ```json
//! {"leaf_index": 3, "tree_size": 8, "leaf_hash": "<base64>", "hashes": ["<base64>", …]}
//! {"old_size": 4, "new_size": 8, "hashes": ["<base64>", …]}
//! ```
//!
//! Hashes are standard base64 of 32 bytes, ordered as in RFC 9162 §2.1.3 / §2.1.4.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::merkle::{self, Hash, ProofError, TreeReader};

/// Proof that leaf `leaf_index` is in the tree of `tree_size` leaves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub leaf_hash: Hash,
    #[serde(with = "b64_list")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub hashes: Vec<Hash>,
}

impl InclusionProof {
    /// Builds the proof from a log's stored hashes.
    pub fn build<R: TreeReader + ?Sized>(r: &R, index: u64, size: u64) -> Result<Self, ProofError<R::Error>> {
        let hashes = merkle::inclusion_proof(r, index, size)?;
        let leaf_hash = r.perfect_subtree(index, 0).map_err(ProofError::Read)?;
        Ok(Self { leaf_index: index, tree_size: size, leaf_hash, hashes })
    }

    /// Whether the proof leads from its leaf to `root`.
    pub fn verify(&self, root: &Hash) -> bool {
        merkle::verify_inclusion(&self.leaf_hash, self.leaf_index, self.tree_size, &self.hashes, root)
    }
}

/// Proof that the tree of `new_size` leaves extends the tree of `old_size` leaves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    #[serde(with = "b64_list")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    pub fn build<R: TreeReader + ?Sized>(r: &R, old: u64, new: u64) -> Result<Self, ProofError<R::Error>> {
        Ok(Self { old_size: old, new_size: new, hashes: merkle::consistency_proof(r, old, new)? })
    }

    /// Whether the proof shows `new_root` extends `old_root`.
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> bool {
        merkle::verify_consistency(self.old_size, self.new_size, old_root, new_root, &self.hashes)
    }
}

fn decode(s: &str) -> Option<Hash> {
    B64.decode(s).ok()?.try_into().ok()
}

mod b64 {
    use super::*;
    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(h))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| serde::de::Error::custom("a hash must be 32 bytes of standard base64"))
    }
}

mod b64_list {
    use super::*;
    pub fn serialize<S: Serializer>(hs: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hs.iter().map(|h| B64.encode(h)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| decode(s).ok_or_else(|| serde::de::Error::custom("a hash must be 32 bytes of standard base64")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::MemoryTree;

    #[test]
    fn proofs_round_trip_as_json_and_verify() {
        let mut t = MemoryTree::new();
        (0..7u8).for_each(|i| t.push_entry(&[i]));
        let p = InclusionProof::build(&t, 3, 7).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["leaf_index"], 3);
        assert_eq!(json["hashes"].as_array().unwrap().len(), 3);
        let back: InclusionProof = serde_json::from_value(json).unwrap();
        assert!(back.verify(&t.root()));
        let c = ConsistencyProof::build(&t, 4, 7).unwrap();
        let back: ConsistencyProof = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert!(back.verify(&merkle::root(&t, 4).unwrap(), &t.root()));
        assert!(serde_json::from_str::<ConsistencyProof>(r#"{"old_size":1,"new_size":2,"hashes":["AAAA"]}"#).is_err());
    }
}
