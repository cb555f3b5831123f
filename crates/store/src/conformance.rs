//! The behaviour every [`AuditLog`] backend must show. Each check takes a fresh, empty log and
//! panics with a readable message on the first difference; backends run [`run_all`] in their
//! tests.

use warden_core::audit::merkle::{MemoryTree, consistency_proof, inclusion_proof};

use crate::AuditLog;

fn entry(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"type\":\"test\"}}").into_bytes()
}

/// Runs every check, each on a fresh log from `fresh`.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn AuditLog>) {
    appends_number_entries_from_zero(&*fresh());
    roots_and_proofs_match_an_in_memory_tree(&*fresh());
    a_failing_builder_appends_nothing(&*fresh());
    concurrent_appenders_get_one_total_order(&*fresh());
    checkpoints_are_kept_by_size(&*fresh());
}

pub fn appends_number_entries_from_zero(log: &dyn AuditLog) {
    assert_eq!(log.size().unwrap(), 0);
    assert_eq!(log.append(3, &mut |s| Ok(entry(s))).unwrap(), 0..3);
    assert_eq!(log.append(2, &mut |s| Ok(entry(s))).unwrap(), 3..5);
    assert_eq!(log.size().unwrap(), 5);
    let all = log.entries(0, 100).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(all[4].bytes, entry(4));
    assert_eq!(all[4].leaf_hash, warden_core::audit::merkle::leaf_hash(&entry(4)));
    assert_eq!(log.entries(3, 1).unwrap().len(), 1);
    assert!(log.entries(5, 10).unwrap().is_empty());
}

pub fn roots_and_proofs_match_an_in_memory_tree(log: &dyn AuditLog) {
    let mut mem = MemoryTree::new();
    for batch in [1usize, 2, 5, 1, 8, 13, 3] {
        let range = log.append(batch, &mut |s| Ok(entry(s))).unwrap();
        for s in range {
            mem.push_entry(&entry(s));
        }
        let size = log.size().unwrap();
        assert_eq!(log.root(size).unwrap(), mem.root(), "root at size {size}");
        for old in 1..=size {
            assert_eq!(log.root(old).unwrap(), warden_core::audit::merkle::root(&mem, old).unwrap());
            assert_eq!(consistency_proof(log, old, size).unwrap(), consistency_proof(&mem, old, size).unwrap());
            assert_eq!(inclusion_proof(log, old - 1, size).unwrap(), inclusion_proof(&mem, old - 1, size).unwrap());
        }
    }
}

pub fn a_failing_builder_appends_nothing(log: &dyn AuditLog) {
    log.append(2, &mut |s| Ok(entry(s))).unwrap();
    let root = log.root(2).unwrap();
    let err = log.append(3, &mut |s| if s == 3 { Err("no".into()) } else { Ok(entry(s)) }).unwrap_err();
    assert!(err.to_string().contains("entry 3"), "{err}");
    assert_eq!(log.size().unwrap(), 2);
    assert_eq!(log.root(2).unwrap(), root);
    assert_eq!(log.append(1, &mut |s| Ok(entry(s))).unwrap(), 2..3, "the next append continues where the log is");
}

pub fn concurrent_appenders_get_one_total_order(log: &dyn AuditLog) {
    let threads = 8;
    let per = 25;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per {
                    let range = log.append(1, &mut |s| Ok(entry(s))).unwrap();
                    assert_eq!(range.end - range.start, 1);
                }
            });
        }
    });
    let all = log.entries(0, 10_000).unwrap();
    assert_eq!(all.len(), threads * per);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.bytes, entry(i as u64), "each entry was built with its own seq");
    }
    let mut mem = MemoryTree::new();
    all.iter().for_each(|e| mem.push_entry(&e.bytes));
    assert_eq!(log.root(all.len() as u64).unwrap(), mem.root());
}

pub fn checkpoints_are_kept_by_size(log: &dyn AuditLog) {
    assert_eq!(log.latest_checkpoint().unwrap(), None);
    log.put_checkpoint(1, "one\n").unwrap();
    log.put_checkpoint(5, "five\n").unwrap();
    log.put_checkpoint(3, "three\n").unwrap();
    log.put_checkpoint(5, "a second note for 5 is ignored\n").unwrap();
    assert_eq!(log.latest_checkpoint().unwrap(), Some((5, "five\n".into())));
    let sizes: Vec<u64> = log.checkpoints().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(sizes, vec![1, 3, 5]);
}
