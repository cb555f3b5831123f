//! Properties of the Merkle tree: proofs verify, and any flipped bit makes them fail.

use proptest::prelude::*;
use warden_core::audit::merkle::{
    Hash, MemoryTree, consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
};

fn tree(size: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..size {
        t.push_entry(format!("entry {i}").as_bytes());
    }
    t
}

fn flip(h: &mut Hash, bit: usize) {
    h[bit / 8 % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn inclusion_proofs_verify_and_any_flipped_bit_fails(size in 1u64..400, index_seed in any::<u64>(), bit in 0usize..256, which in any::<prop::sample::Index>()) {
        let t = tree(size);
        let index = index_seed % size;
        let root = t.root();
        let leaf = leaf_hash(format!("entry {index}").as_bytes());
        let proof = inclusion_proof(&t, index, size).unwrap();
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root));

        let mut bad_leaf = leaf;
        flip(&mut bad_leaf, bit);
        prop_assert!(!verify_inclusion(&bad_leaf, index, size, &proof, &root));
        let mut bad_root = root;
        flip(&mut bad_root, bit);
        prop_assert!(!verify_inclusion(&leaf, index, size, &proof, &bad_root));
        if !proof.is_empty() {
            let mut bad = proof.clone();
            flip(&mut bad[which.index(proof.len())], bit);
            prop_assert!(!verify_inclusion(&leaf, index, size, &bad, &root));
            prop_assert!(!verify_inclusion(&leaf, index, size, &proof[1..], &root));
        }
    }

    #[test]
    fn consistency_proofs_verify_and_any_flipped_bit_fails(new in 1u64..400, old_seed in any::<u64>(), bit in 0usize..256, which in any::<prop::sample::Index>()) {
        let t = tree(new);
        let old = old_seed % new + 1;
        let old_root = tree(old).root();
        let new_root = t.root();
        let proof = consistency_proof(&t, old, new).unwrap();
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof));

        let mut bad_old = old_root;
        flip(&mut bad_old, bit);
        prop_assert!(!verify_consistency(old, new, &bad_old, &new_root, &proof));
        let mut bad_new = new_root;
        flip(&mut bad_new, bit);
        prop_assert!(!verify_consistency(old, new, &old_root, &bad_new, &proof));
        if !proof.is_empty() {
            let mut bad = proof.clone();
            flip(&mut bad[which.index(proof.len())], bit);
            prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &bad));
        }
    }
}
