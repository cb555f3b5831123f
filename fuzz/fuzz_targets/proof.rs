//! Proof verification: arbitrary proofs, indexes and sizes never panic, and an inclusion proof
//! for a leaf that is not in the tree never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_core::audit::merkle::{self, MemoryTree};

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let size = u64::from(data[0] % 64) + 1;
    let index = u64::from(data[1]) % (size + 2);
    let mut tree = MemoryTree::default();
    for i in 0..size {
        tree.push(merkle::leaf_hash(&i.to_be_bytes()));
    }
    let root = tree.root();
    let proof: Vec<merkle::Hash> = data[2..].chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
    let stranger = merkle::leaf_hash(b"not a leaf of this tree");
    assert!(!merkle::verify_inclusion(&stranger, index, size, &proof, &root), "a stranger was proven included");
    let old = u64::from(data[1]) % (size + 1);
    let _ = merkle::verify_consistency(old, size, &root, &root, &proof);
});
