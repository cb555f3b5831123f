//! The Merkle tree of RFC 6962 §2.1 / RFC 9162 §2.1.
//!
//! `leaf = SHA-256(0x00 ‖ entry)`, `node = SHA-256(0x01 ‖ left ‖ right)`, the empty tree's hash
//! is `SHA-256("")`. Proofs are built from hashes of *perfect* subtrees (2^k leaves starting at
//! a multiple of 2^k), read through [`TreeReader`], so a log of any size needs only
//! O(log n) reads per root or proof and never sits in memory whole.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a root or proof could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a consistency proof needs 0 < old size ({old}) ≤ new size ({new})")]
    BadSizes { old: u64, new: u64 },
    #[error("reading the tree failed: {0}")]
    Read(E),
}

/// Read access to the hashes of perfect subtrees of a log.
pub trait TreeReader {
    type Error;
    /// The hash of leaves `[start, start + 2^level)`; `start` is a multiple of `2^level` and
    /// the range lies within the log.
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly less than `n` (for `n ≥ 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, start + n)`, where `start` is a multiple of the largest power of two
/// not above `n` (true of every range the RFC's recursion visits).
fn range_hash<R: TreeReader + ?Sized>(r: &R, start: u64, n: u64) -> Result<Hash, R::Error> {
    if n.is_power_of_two() {
        return r.perfect_subtree(start, n.trailing_zeros());
    }
    let k = split(n);
    let left = r.perfect_subtree(start, k.trailing_zeros())?;
    let right = range_hash(r, start + k, n - k)?;
    Ok(node_hash(&left, &right))
}

/// The root hash of the first `size` leaves.
pub fn root<R: TreeReader + ?Sized>(r: &R, size: u64) -> Result<Hash, R::Error> {
    if size == 0 { Ok(empty_root()) } else { range_hash(r, 0, size) }
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 §2.1.3.1),
/// ordered from the leaf up.
pub fn inclusion_proof<R: TreeReader + ?Sized>(
    r: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<R::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(r, index, 0, size, &mut out).map_err(ProofError::Read)?;
    Ok(out)
}

fn path<R: TreeReader + ?Sized>(r: &R, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), R::Error> {
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(r, m, start, k, out)?;
        out.push(range_hash(r, start + k, n - k)?);
    } else {
        path(r, m - k, start + k, n - k, out)?;
        out.push(r.perfect_subtree(start, k.trailing_zeros())?);
    }
    Ok(())
}

/// The consistency proof between the trees of the first `old` and `new` leaves
/// (RFC 9162 §2.1.4.1). Empty when `old == new`.
pub fn consistency_proof<R: TreeReader + ?Sized>(r: &R, old: u64, new: u64) -> Result<Vec<Hash>, ProofError<R::Error>> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    let mut out = Vec::new();
    if old < new {
        subproof(r, old, 0, new, true, &mut out).map_err(ProofError::Read)?;
    }
    Ok(out)
}

fn subproof<R: TreeReader + ?Sized>(
    r: &R,
    m: u64,
    start: u64,
    n: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), R::Error> {
    if m == n {
        if !whole {
            out.push(range_hash(r, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(r, m, start, k, whole, out)?;
        out.push(range_hash(r, start + k, n - k)?);
    } else {
        subproof(r, m - k, start + k, n - k, false, out)?;
        out.push(r.perfect_subtree(start, k.trailing_zeros())?);
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(proof);
    let Some((first, rest)) = nodes.split_first() else { return false };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

/// The right edge of a growing tree: the perfect subtrees that cover all leaves so far, largest
/// first. Appending a leaf returns the perfect subtrees it completes, which is what a store
/// keeps to answer [`TreeReader`] queries; the root needs only the edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    edge: Vec<(u32, Hash)>,
}

/// A perfect subtree completed by an append: leaves `[start, start + 2^level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub start: u64,
    pub level: u32,
    pub hash: Hash,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves, from its reader.
    pub fn load<R: TreeReader + ?Sized>(r: &R, size: u64) -> Result<Self, R::Error> {
        let mut edge = Vec::new();
        let mut start = 0;
        for level in (0..64).rev() {
            if size & (1 << level) != 0 {
                edge.push((level, r.perfect_subtree(start, level)?));
                start += 1 << level;
            }
        }
        Ok(Self { size, edge })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds one leaf; returns every perfect subtree it completes, the leaf itself first.
    pub fn push(&mut self, leaf: Hash) -> Vec<Completed> {
        let mut done = vec![Completed { start: self.size, level: 0, hash: leaf }];
        let mut cur = (0u32, leaf);
        while let Some(&(level, left)) = self.edge.last() {
            if level != cur.0 {
                break;
            }
            self.edge.pop();
            let hash = node_hash(&left, &cur.1);
            let level = level + 1;
            let start = self.size + 1 - (1 << level);
            done.push(Completed { start, level, hash });
            cur = (level, hash);
        }
        self.edge.push(cur);
        self.size += 1;
        done
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.edge.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(&(_, last)) => iter.fold(last, |acc, (_, h)| node_hash(h, &acc)),
        }
    }
}

/// A whole tree in memory, every level kept: for tests and small logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    /// `levels[k][i]` is the hash of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_entry(&mut self, entry: &[u8]) {
        self.push(leaf_hash(entry));
    }

    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let hash = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(hash);
            level += 1;
        }
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn root(&self) -> Hash {
        root(self, self.size()).unwrap_or_else(|never| match never {})
    }
}

/// # Panics
/// When asked for a subtree outside the tree, which [`root`] and the proof functions never do
/// for sizes up to [`MemoryTree::size`].
impl TreeReader for MemoryTree {
    type Error = std::convert::Infallible;
    fn perfect_subtree(&self, start: u64, level: u32) -> Result<Hash, Self::Error> {
        Ok(self.levels[level as usize][(start >> level) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The inputs of the RFC 6962 test vectors used by Certificate Transparency implementations.
    fn ct_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ]
    }

    #[test]
    fn known_answer_roots() {
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        assert_eq!(hex(&empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let mut tree = MemoryTree::new();
        let mut frontier = Frontier::default();
        for (leaf, want) in ct_leaves().iter().zip(roots) {
            tree.push_entry(leaf);
            frontier.push(leaf_hash(leaf));
            assert_eq!(hex(&tree.root()), want, "size {}", tree.size());
            assert_eq!(hex(&frontier.root()), want, "frontier size {}", frontier.size());
        }
    }

    #[test]
    fn known_answer_proofs() {
        let mut tree = MemoryTree::new();
        for leaf in ct_leaves() {
            tree.push_entry(&leaf);
        }
        // Inclusion of leaf 0 in the tree of 8 (from the same CT test data).
        let p = inclusion_proof(&tree, 0, 8).unwrap();
        let want = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(p.iter().map(hex).collect::<Vec<_>>(), want);
        // Consistency 1 → 8.
        let c = consistency_proof(&tree, 1, 8).unwrap();
        assert_eq!(c.iter().map(hex).collect::<Vec<_>>(), want);
        // Consistency 6 → 8.
        let c = consistency_proof(&tree, 6, 8).unwrap();
        let want = [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ];
        assert_eq!(c.iter().map(hex).collect::<Vec<_>>(), want);
    }

    #[test]
    fn frontier_reports_completed_subtrees_and_reloads() {
        let mut tree = MemoryTree::new();
        let mut f = Frontier::default();
        for i in 0..13u8 {
            tree.push_entry(&[i]);
            let done = f.push(leaf_hash(&[i]));
            for c in done {
                assert_eq!(Ok(c.hash), tree.perfect_subtree(c.start, c.level));
            }
            assert_eq!(Frontier::load(&tree, tree.size()).unwrap(), f);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut tree = MemoryTree::new();
        tree.push_entry(b"a");
        assert_eq!(inclusion_proof(&tree, 1, 1), Err(ProofError::IndexOutOfRange { index: 1, size: 1 }));
        assert_eq!(consistency_proof(&tree, 0, 1), Err(ProofError::BadSizes { old: 0, new: 1 }));
        assert_eq!(consistency_proof(&tree, 1, 1), Ok(vec![]));
        assert!(verify_consistency(1, 1, &tree.root(), &tree.root(), &[]));
        assert!(!verify_inclusion(&leaf_hash(b"a"), 1, 1, &[], &tree.root()));
    }
}
