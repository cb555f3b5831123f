//! Checking a whole audit log: every entry well-formed and in its place, every leaf
//! recomputed from its bytes, every stored subtree hash and every signed checkpoint compared
//! with what the bytes imply. Streams entries and checkpoints in batches, so memory stays
//! flat whatever the log's size.

use std::collections::VecDeque;

use std::ops::Range;
use std::sync::mpsc::SyncSender;

use warden_core::audit::canonical;
use warden_core::audit::merkle::{Completed, Frontier, Hash, leaf_hash};
use warden_core::audit::note::{Checkpoint, NoteVerifier};

use crate::{AuditLog, StoreError};

const BATCH: usize = 4096;

/// What a successful check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub size: u64,
    pub root: Hash,
    pub checkpoints: u64,
}

/// The first thing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    #[error("entry {seq}: its stored leaf hash does not match its bytes")]
    LeafMismatch { seq: u64 },
    #[error("entry {seq}: {reason}")]
    BadEntry { seq: u64, reason: String },
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

/// Stored checkpoints in size order, fetched a page at a time and opened as they come.
struct Checkpoints<'a> {
    log: &'a dyn AuditLog,
    verifier: &'a NoteVerifier,
    page: VecDeque<(u64, String)>,
    next_from: u64,
    exhausted: bool,
    log_size: u64,
    seen: u64,
}

impl Checkpoints<'_> {
    /// The next checkpoint, checked (signature, size line, within the log).
    fn next_checked(&mut self) -> Result<Option<Checkpoint>, VerifyFailure> {
        if self.page.is_empty() && !self.exhausted {
            self.page = self.log.checkpoints(self.next_from, BATCH)?.into();
            self.exhausted = self.page.len() < BATCH;
        }
        let Some((size, note)) = self.page.pop_front() else { return Ok(None) };
        self.next_from = size + 1;
        self.seen += 1;
        let cp = Checkpoint::open(&note, self.verifier)
            .map_err(|e| VerifyFailure::BadCheckpoint { size, reason: e.to_string() })?;
        if cp.size != size {
            return Err(VerifyFailure::BadCheckpoint { size, reason: format!("the note says size {}", cp.size) });
        }
        if cp.origin != self.verifier.name() {
            let reason = format!("origin `{}` is not the log's `{}`", cp.origin, self.verifier.name());
            return Err(VerifyFailure::BadCheckpoint { size, reason });
        }
        if size > self.log_size {
            return Err(VerifyFailure::Truncated { checkpoint: size, log: self.log_size });
        }
        Ok(Some(cp))
    }
}

/// Compares the subtrees completed by the leaves in `leaves` with the stored ones: one
/// range read per level instead of one read per subtree.
fn check_subtrees(log: &dyn AuditLog, leaves: Range<u64>, completed: &mut [Completed]) -> Result<(), VerifyFailure> {
    completed.sort_by_key(|c| (c.level, c.start));
    for same_level in completed.chunk_by(|a, b| a.level == b.level) {
        let level = same_level[0].level;
        let first = same_level[0].start;
        let stored = log.subtrees(level, first..leaves.end)?;
        for (i, want) in same_level.iter().enumerate() {
            match stored.get(i) {
                Some((start, hash)) if *start == want.start && *hash == want.hash => {}
                _ => {
                    let end = want.start + (1 << level);
                    return Err(VerifyFailure::SubtreeMismatch { start: want.start, end });
                }
            }
        }
    }
    Ok(())
}

/// One entry as the reader thread saw it.
struct Seen {
    seq: u64,
    /// Whether the stored leaf hash matches the bytes.
    leaf_ok: bool,
    leaf: Hash,
    /// The entry's own `seq` if it is canonical JSON, or why not.
    format: Result<Option<u64>, String>,
}

/// An entry and the reader thread's verdict on its format (its own `seq`, or why not).
struct Read {
    entry: crate::StoredEntry,
    format: Result<Option<u64>, String>,
}

fn see(r: Read) -> Seen {
    let leaf = leaf_hash(&r.entry.bytes);
    Seen { seq: r.entry.seq, leaf_ok: leaf == r.entry.leaf_hash, leaf, format: r.format }
}

/// Reads the log from 0 to `size` a page at a time, checking each entry's format, and hands
/// the pages over; stops when the receiver goes away.
fn read_pages(log: &dyn AuditLog, size: u64, tx: SyncSender<Result<Vec<Read>, StoreError>>) {
    let mut from = 0;
    while from < size {
        let page = match log.entries(from, BATCH) {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let Some(last) = page.last() else {
            let _ = tx.send(Ok(Vec::new()));
            return;
        };
        from = last.seq + 1;
        let page = page
            .into_iter()
            .map(|e| {
                let format = canonical::check(&e.bytes).map(|top| top.seq).map_err(|err| err.to_string());
                Read { entry: e, format }
            })
            .collect();
        if tx.send(Ok(page)).is_err() {
            return;
        }
    }
}

/// Verifies `log` against checkpoints signed by `verifier`; `progress(done, total)` is called
/// after each batch of entries. One thread reads and hashes entries while this one builds
/// the tree and compares subtrees and checkpoints.
pub fn verify(
    log: &dyn AuditLog,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let size = log.size()?;
    let mut checkpoints =
        Checkpoints { log, verifier, page: VecDeque::new(), next_from: 0, exhausted: false, log_size: size, seen: 0 };
    let mut next_cp = checkpoints.next_checked()?;
    let mut frontier = Frontier::default();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        scope.spawn(move || read_pages(log, size, tx));
        loop {
            while let Some(cp) = next_cp.as_ref().filter(|cp| cp.size == frontier.size()) {
                if cp.root != frontier.root() {
                    return Err(VerifyFailure::RootMismatch { size: cp.size });
                }
                next_cp = checkpoints.next_checked()?;
            }
            if frontier.size() >= size {
                break;
            }
            let batch = rx.recv().map_err(|_| StoreError::Database("the log reader stopped".into()))??;
            if batch.is_empty() {
                return Err(VerifyFailure::Missing { seq: frontier.size(), found: size });
            }
            let batch_start = frontier.size();
            let mut completed = Vec::new();
            let mut root_mismatch = None;
            for e in batch.into_iter().map(see) {
                let seq = frontier.size();
                if e.seq != seq {
                    return Err(VerifyFailure::Missing { seq, found: e.seq });
                }
                if !e.leaf_ok {
                    return Err(VerifyFailure::LeafMismatch { seq });
                }
                match e.format {
                    Ok(Some(own)) if own == seq => {}
                    Ok(Some(own)) => {
                        let reason = format!("it says it is entry {own}: entries were moved");
                        return Err(VerifyFailure::BadEntry { seq, reason });
                    }
                    Ok(None) => return Err(VerifyFailure::BadEntry { seq, reason: "it has no `seq`".into() }),
                    Err(reason) => return Err(VerifyFailure::BadEntry { seq, reason }),
                }
                completed.extend(frontier.push(e.leaf).into_iter().filter(|d| d.level > 0));
                while let Some(cp) = next_cp.as_ref().filter(|cp| cp.size == frontier.size()) {
                    if cp.root != frontier.root() && root_mismatch.is_none() {
                        root_mismatch = Some(cp.size);
                    }
                    next_cp = checkpoints.next_checked()?;
                }
            }
            // A bad stored subtree names entries more precisely than the checkpoint it breaks.
            check_subtrees(log, batch_start..frontier.size(), &mut completed)?;
            if let Some(size) = root_mismatch {
                return Err(VerifyFailure::RootMismatch { size });
            }
            progress(frontier.size(), size);
        }
        Ok(VerifyReport { size, root: frontier.root(), checkpoints: checkpoints.seen })
    })
}
