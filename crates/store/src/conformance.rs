//! The behaviour every [`Store`] backend must show. Each check takes a fresh, empty store and
//! panics with a readable message on the first difference; backends run [`run_all`] and
//! [`run_shared`] (two handles on one database) in their tests: SQLite and PostgreSQL.

use std::sync::Arc;

use serde_json::json;
use time::macros::datetime;
use warden_core::audit::entry::{Actor, Entry, Event, EventType};
use warden_core::audit::merkle::{MemoryTree, consistency_proof, inclusion_proof};
use warden_core::audit::note::{Checkpoint, NoteSigner, NoteVerifier};

use crate::{AuditLog, Batch, Change, Ledger, LedgerOptions, Query, Record, Store, StoreError, Table};

fn entry(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"type\":\"test\"}}").into_bytes()
}

/// Runs every check, each on a fresh store from `fresh`.
pub fn run_all(fresh: &dyn Fn() -> Arc<dyn Store>) {
    appends_number_entries_from_zero(&*fresh());
    roots_and_proofs_match_an_in_memory_tree(&*fresh());
    a_failing_builder_appends_nothing(&*fresh());
    concurrent_appenders_get_one_total_order(&*fresh());
    checkpoints_are_kept_by_size(&*fresh());
    reads_beyond_any_size_find_nothing(&*fresh());
    records_insert_get_and_conflict(&*fresh());
    updates_are_optimistic(&*fresh());
    find_filters_and_orders(&*fresh());
    counts_by_kind_group_what_count_counts(&*fresh());
    pages_follow_a_cursor_through_inserts(&*fresh());
    budget_usage_counts_hits_and_distinct_targets(&*fresh());
    a_conflicting_batch_leaves_nothing_and_spares_its_group(&*fresh());
    a_group_stands_batch_by_batch_as_if_committed_alone(&*fresh());
    preconditions_hold_or_the_batch_conflicts(&*fresh());
    a_cap_holds_under_concurrent_commits(fresh());
    a_budget_check_holds_under_concurrent_commits(fresh());
    ledger_commits_concurrent_batches_in_one_signed_order(fresh());
    ledger_time_never_goes_backwards(fresh());
}

/// Runs the checks of two handles on one database (two nodes, or a server and an admin
/// command beside it); `pair` makes a fresh database and opens it twice.
pub fn run_shared(pair: &dyn Fn() -> (Arc<dyn Store>, Arc<dyn Store>)) {
    let (a, b) = pair();
    two_writers_share_one_log_and_its_preconditions(a, b);
}

/// Two ledgers, each with its own writer, on one database: every entry lands once in one
/// total order, every checkpoint either signs is consistent with that order, and a cap and a
/// budget checked by both hold exactly.
pub fn two_writers_share_one_log_and_its_preconditions(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let signer = || NoteSigner::new("conformance.test/audit", &[7u8; 32]).unwrap();
    let verifier = NoteVerifier::parse(&signer().verifier_key()).unwrap();
    let open = |s: &Arc<dyn Store>| {
        Ledger::open(s.clone(), signer(), Arc::new(crate::SystemClock), LedgerOptions::default()).unwrap()
    };
    let ledgers = [open(&a), open(&b)];
    let cap = Change::ExpectFewer {
        table: Table::Approvals,
        query: Query { agent: Some("a".into()), state: Some("pending".into()), ..Query::default() },
        max: 6,
    };
    let budget = |target: String| Change::BudgetCheck {
        agent: "a".into(),
        action: "x".into(),
        target,
        since_ms: 0,
        max_hits: Some(9),
        max_distinct_targets: None,
    };
    let (admitted, spent) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (ledger, cap, budget, admitted, spent) = (&ledgers[t % 2], &cap, &budget, &admitted, &spent);
            scope.spawn(move || {
                for i in 0..12 {
                    let id = format!("n{t}-{i}");
                    let r = Record::new(Table::Tasks, &id, json!({})).task(&id).state("open");
                    let got = ledger
                        .commit(Batch::new().change(Change::Insert(r)).event(ev(EventType::TaskOpened).task(&id)))
                        .unwrap();
                    assert_eq!(store_entry(ledger.store().as_ref(), got.start).event.task.as_deref(), Some(&*id));
                    let pending = Record::new(Table::Approvals, &id, json!({})).agent("a").state("pending");
                    match ledger.commit(
                        Batch::new()
                            .change(cap.clone())
                            .change(Change::Insert(pending))
                            .event(ev(EventType::DecisionMade)),
                    ) {
                        Ok(_) => _ = admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    let hit = Change::BudgetHit { agent: "a".into(), action: "x".into(), target: id.clone(), at: 5 };
                    match ledger.commit(Batch::new().change(budget(id)).change(hit).event(ev(EventType::DecisionMade)))
                    {
                        Ok(_) => _ = spent.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 6, "the cap held across both writers");
    assert_eq!(spent.into_inner(), 9, "the budget held across both writers");
    let size = 8 * 12 + 6 + 9;
    for s in [&a, &b] {
        assert_eq!(s.size().unwrap(), size, "both see the whole log");
        assert_eq!(s.find(Table::Tasks, &Query::default()).unwrap().len(), 96);
    }
    let seqs: Vec<u64> = a.entries(0, 1_000).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..size).collect::<Vec<_>>(), "one total order, no gap, no repeat");
    let mut mem = MemoryTree::new();
    for e in a.entries(0, 1_000).unwrap() {
        mem.push_entry(&e.bytes);
    }
    assert_eq!(b.root(size).unwrap(), mem.root(), "the stored tree is the tree of the entries");
    let checkpoints = b.checkpoints(0, 10_000).unwrap();
    assert!(checkpoints.iter().any(|(s, _)| *s == size), "the last group was sealed");
    for (s, note) in checkpoints {
        let cp = Checkpoint::open(&note, &verifier).unwrap();
        assert_eq!(cp.root, warden_core::audit::merkle::root(&mem, s).unwrap(), "checkpoint {s} fits the one log");
    }
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
    let sizes: Vec<u64> = log.checkpoints(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(sizes, vec![1, 3, 5]);
    let sizes: Vec<u64> = log.checkpoints(2, 1).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(sizes, vec![3], "paged from a size");
    assert_eq!(log.checkpoint_at(3).unwrap().as_deref(), Some("three\n"));
    assert_eq!(log.checkpoint_at(4).unwrap(), None);
}

/// Any `u64` a client sends as a bound is a valid question: beyond the log there is nothing.
pub fn reads_beyond_any_size_find_nothing(log: &dyn AuditLog) {
    log.append(1, &mut |s| Ok(entry(s))).unwrap();
    log.put_checkpoint(1, "one\n").unwrap();
    for big in [u64::MAX, i64::MAX as u64 + 1, i64::MAX as u64] {
        assert!(log.entries(big, 10).unwrap().is_empty(), "{big}");
        assert!(log.checkpoints(big, 10).unwrap().is_empty(), "{big}");
        assert_eq!(log.checkpoint_at(big).unwrap(), None, "{big}");
        assert!(log.subtrees(0, big..u64::MAX).unwrap().is_empty(), "{big}");
    }
    assert_eq!(log.entries(0, usize::MAX).unwrap().len(), 1);
}

const T0: time::OffsetDateTime = datetime!(2026-11-23 06:00 UTC);

fn no_seal(_: u64, _: &warden_core::audit::merkle::Hash) -> Result<Option<String>, String> {
    Ok(None)
}

fn commit(store: &dyn Store, batch: Batch) -> Result<std::ops::Range<u64>, StoreError> {
    store.commit_group(T0, &[batch], &mut no_seal).unwrap().remove(0)
}

fn agent(id: &str, state: &str) -> Record {
    Record::new(Table::Agents, id, json!({"owner": "soc"})).agent(id).state(state).at(1)
}

fn ev(kind: EventType) -> Event {
    Event::new(kind, Actor::system("conformance"))
}

pub fn records_insert_get_and_conflict(store: &dyn Store) {
    for table in Table::ALL {
        let r = Record::new(table, "r1", json!({"n": 1})).key(format!("k-{}", table.name()));
        commit(store, Batch::new().change(Change::Insert(r.clone()))).unwrap();
        let got = store.get(table, "r1").unwrap().expect("inserted record");
        assert_eq!((got.version, got.body.clone(), got.key.clone()), (1, json!({"n": 1}), r.key.clone()), "{table:?}");
        let again = commit(store, Batch::new().change(Change::Insert(r.clone())));
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "duplicate id in {table:?}: {again:?}");
        let same_key = Record::new(table, "r2", json!({})).key(format!("k-{}", table.name()));
        let again = commit(store, Batch::new().change(Change::Insert(same_key)));
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "duplicate key in {table:?}: {again:?}");
        assert_eq!(store.get(table, "r2").unwrap(), None);
        // Deleting frees the id and the key; deleting what is gone is no error.
        commit(store, Batch::new().change(Change::Delete { table, id: "r1".into() })).unwrap();
        assert_eq!(store.get(table, "r1").unwrap(), None, "{table:?}");
        commit(store, Batch::new().change(Change::Delete { table, id: "r1".into() })).unwrap();
        commit(store, Batch::new().change(Change::Insert(r.clone()))).unwrap();
    }
    assert_eq!(store.get(Table::Agents, "nobody").unwrap(), None);
    // Warden joins a key's parts with NUL (agent NUL idempotency key); bodies may hold one.
    let key = "spiffe://a.test/x\u{0}k-1".to_string();
    let r = Record::new(Table::Requests, "nul", json!({"s": "a\u{0}b"})).key(&key);
    commit(store, Batch::new().change(Change::Insert(r))).unwrap();
    let found = store.find(Table::Requests, &Query { key: Some(key.clone()), ..Query::default() }).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].key.as_deref(), &found[0].body), (Some(key.as_str()), &json!({"s": "a\u{0}b"})));
    let twin = Record::new(Table::Requests, "nul2", json!({})).key(&key);
    assert!(matches!(commit(store, Batch::new().change(Change::Insert(twin))), Err(StoreError::Conflict { .. })));
    let other = Record::new(Table::Requests, "nul3", json!({})).key("spiffe://a.test/x\u{0}k-2");
    commit(store, Batch::new().change(Change::Insert(other))).unwrap();
}

pub fn updates_are_optimistic(store: &dyn Store) {
    commit(store, Batch::new().change(Change::Insert(agent("a", "active")))).unwrap();
    let mut r = store.get(Table::Agents, "a").unwrap().unwrap();
    r.state = Some("suspended".into());
    commit(store, Batch::new().change(Change::Update(r.clone()))).unwrap();
    let now = store.get(Table::Agents, "a").unwrap().unwrap();
    assert_eq!((now.version, now.state.as_deref()), (2, Some("suspended")));
    // A second writer that read version 1 loses.
    r.state = Some("halted".into());
    let stale = commit(store, Batch::new().change(Change::Update(r.clone())));
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    assert_eq!(store.get(Table::Agents, "a").unwrap().unwrap().state.as_deref(), Some("suspended"));
    let mut gone = r;
    gone.id = "nobody".into();
    assert!(matches!(commit(store, Batch::new().change(Change::Update(gone))), Err(StoreError::Conflict { .. })));
}

pub fn find_filters_and_orders(store: &dyn Store) {
    let mut batch = Batch::new();
    for (i, (agent, task, state)) in
        [("a1", "t1", "pending"), ("a1", "t2", "approved"), ("a2", "t1", "pending"), ("a1", "t1", "pending")]
            .into_iter()
            .enumerate()
    {
        let r = Record::new(Table::Approvals, format!("ap{i}"), json!({})).agent(agent).task(task).state(state);
        batch = batch.change(Change::Insert(r.at(100 - i as i64)));
    }
    commit(store, batch).unwrap();
    let ids =
        |q: Query| -> Vec<String> { store.find(Table::Approvals, &q).unwrap().into_iter().map(|r| r.id).collect() };
    assert_eq!(ids(Query::default()), ["ap3", "ap2", "ap1", "ap0"], "ordered by `at`");
    assert_eq!(ids(Query { descending: true, limit: 2, ..Query::default() }), ["ap0", "ap1"]);
    assert_eq!(
        ids(Query { agent: Some("a1".into()), state: Some("pending".into()), ..Query::default() }),
        ["ap3", "ap0"]
    );
    assert_eq!(ids(Query { task: Some("t1".into()), ..Query::default() }), ["ap3", "ap2", "ap0"]);
    assert_eq!(ids(Query { at_from: Some(98), at_to: Some(100), ..Query::default() }), ["ap2", "ap1"]);
    assert!(ids(Query { agent: Some("a3".into()), ..Query::default() }).is_empty());
    assert!(store.find(Table::Leases, &Query::default()).unwrap().is_empty(), "tables are separate");
    // Counting applies the same filters, ignoring order and limit.
    let count = |q: Query| store.count(Table::Approvals, &q).unwrap();
    assert_eq!(count(Query::default()), 4);
    assert_eq!(count(Query { state: Some("pending".into()), limit: 1, descending: true, ..Query::default() }), 3);
    assert_eq!(count(Query { agent: Some("a1".into()), state: Some("pending".into()), ..Query::default() }), 2);
    assert_eq!(count(Query { at_from: Some(98), at_to: Some(100), ..Query::default() }), 2);
    assert_eq!(count(Query { agent: Some("a3".into()), ..Query::default() }), 0);
    assert_eq!(store.count(Table::Leases, &Query::default()).unwrap(), 0);
}

/// `count_by_kind`: the same filters as `count`, one figure per kind, in kind order; records
/// without a kind are left out, and what matches nothing is not listed (a task's history,
/// DESIGN §14).
pub fn counts_by_kind_group_what_count_counts(store: &dyn Store) {
    let mut batch = Batch::new();
    for (i, (task, state, kind)) in [
        ("t1", "succeeded", Some("host.isolate")),
        ("t1", "succeeded", Some("alert.enrich")),
        ("t1", "succeeded", Some("host.isolate")),
        ("t1", "failed", Some("host.isolate")),
        ("t2", "succeeded", Some("host.isolate")),
        ("t1", "succeeded", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = Record::new(Table::Executions, format!("ex{i}"), json!({})).task(task).state(state);
        if let Some(k) = kind {
            r = r.kind(k);
        }
        batch = batch.change(Change::Insert(r));
    }
    commit(store, batch).unwrap();
    let by_kind = |task: &str, state: &str| {
        let q = Query { task: Some(task.into()), state: Some(state.into()), ..Query::default() };
        store.count_by_kind(Table::Executions, &q).unwrap()
    };
    assert_eq!(by_kind("t1", "succeeded"), [("alert.enrich".to_string(), 1), ("host.isolate".to_string(), 2)]);
    assert_eq!(by_kind("t1", "failed"), [("host.isolate".to_string(), 1)]);
    assert_eq!(by_kind("t2", "succeeded"), [("host.isolate".to_string(), 1)]);
    assert!(by_kind("t3", "succeeded").is_empty());
    assert!(store.count_by_kind(Table::Requests, &Query::default()).unwrap().is_empty(), "tables are separate");
}

/// Keyset pages: every record exactly once, in order, under both orders and directions, with
/// filters (the action class among them), however records are inserted between pages.
pub fn pages_follow_a_cursor_through_inserts(store: &dyn Store) {
    use crate::{Cursor, Order};
    // Ties on `at` on purpose: the id breaks them.
    let rec = |i: usize, at: i64| {
        Record::new(Table::Requests, format!("r{i:03}"), json!({}))
            .agent(if i.is_multiple_of(3) { "a0" } else { "a1" })
            .kind(if i.is_multiple_of(2) { "edr.isolate" } else { "idp.disable" })
            .state("succeeded")
            .at(at)
    };
    let mut batch = Batch::new();
    for i in 0..40 {
        batch = batch.change(Change::Insert(rec(i, (i / 4) as i64 * 10)));
    }
    commit(store, batch).unwrap();
    let walk = |base: Query, page: usize, insert_from: Option<usize>| -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = None;
        let mut extra = insert_from;
        loop {
            let q = Query { after: after.clone(), limit: page, ..base.clone() };
            let got = store.find(Table::Requests, &q).unwrap();
            assert!(got.len() <= page);
            // Records inserted between pages, before and after the cursor: none may shift
            // the next page.
            if let Some(n) = extra.as_mut() {
                let b = Batch::new().change(Change::Insert(rec(*n, -5))).change(Change::Insert(rec(*n + 1, 1_000)));
                commit(store, b).unwrap();
                *n += 2;
            }
            match got.last() {
                Some(last) => after = Some(Cursor::after(last)),
                None => break,
            }
            seen.extend(got.into_iter().map(|r| r.id));
        }
        seen
    };
    let all =
        |q: Query| -> Vec<String> { store.find(Table::Requests, &q).unwrap().into_iter().map(|r| r.id).collect() };
    for descending in [false, true] {
        for order in [Order::At, Order::Id] {
            for base in [
                Query { descending, order, ..Query::default() },
                Query { descending, order, agent: Some("a1".into()), ..Query::default() },
                Query { descending, order, kind: Some("edr.isolate".into()), ..Query::default() },
                Query { descending, order, state: Some("succeeded".into()), at_from: Some(20), ..Query::default() },
            ] {
                let whole = all(base.clone());
                assert!(!whole.is_empty());
                for page in [1, 3, 7, 100] {
                    assert_eq!(walk(base.clone(), page, None), whole, "pages of {page} under {base:?}");
                }
            }
        }
    }
    assert_eq!(all(Query { kind: Some("edr.isolate".into()), ..Query::default() }).len(), 20);
    assert_eq!(
        store.count(Table::Requests, &Query { kind: Some("idp.disable".into()), ..Query::default() }).unwrap(),
        20
    );
    let by_id = all(Query { order: Order::Id, ..Query::default() });
    assert_eq!(by_id.first().map(String::as_str), Some("r000"));
    // Walking newest first while records arrive at both ends: the walk is the snapshot's
    // records from the cursor on, plus (ascending) the ones inserted past it.
    let before = all(Query { descending: true, ..Query::default() });
    let walked = walk(Query { descending: true, ..Query::default() }, 5, Some(100));
    let old_new: Vec<String> = walked.iter().filter(|id| id.as_str() < "r100").cloned().collect();
    assert_eq!(old_new, before, "records inserted meanwhile never shift or repeat a page");
    let mut dedup = walked.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), walked.len(), "no record twice");
}

pub fn budget_usage_counts_hits_and_distinct_targets(store: &dyn Store) {
    let hit = |target: &str, at: i64| Change::BudgetHit {
        agent: "a".into(),
        action: "host.isolate".into(),
        target: target.into(),
        at,
    };
    commit(store, Batch::new().change(hit("h1", 10)).change(hit("h1", 20)).change(hit("h2", 30)).change(hit("h3", 40)))
        .unwrap();
    commit(
        store,
        Batch::new().change(Change::BudgetHit {
            agent: "a".into(),
            action: "account.disable".into(),
            target: "u1".into(),
            at: 35,
        }),
    )
    .unwrap();
    let usage = |agent: &str, since: i64, target: &str| {
        let u = store.budget_usage(agent, "host.isolate", since, target, crate::UsageLimits::ALL).unwrap();
        (u.hits, u.distinct_targets, u.target_seen)
    };
    assert_eq!(usage("a", 0, "h1"), (4, 3, true));
    assert_eq!(usage("a", 20, "h9"), (3, 3, false));
    assert_eq!(usage("a", 21, "h1"), (2, 2, false), "h1's hits are older than the window");
    assert_eq!(usage("a", 41, "h3"), (0, 0, false));
    assert_eq!(usage("b", 0, "h1"), (0, 0, false));
    // Counts stop at their limits (exact below them); "seen" never depends on them.
    let up_to = |hits, distinct_targets| {
        let u =
            store.budget_usage("a", "host.isolate", 0, "h1", crate::UsageLimits { hits, distinct_targets }).unwrap();
        (u.hits, u.distinct_targets, u.target_seen)
    };
    assert_eq!(up_to(2, 2), (2, 2, true));
    assert_eq!(up_to(5, 3), (4, 3, true));
    assert_eq!(up_to(0, 0), (0, 0, true));
    // Windows that start inside a minute, on one, and span several.
    let m = |at: i64| Change::BudgetHit { agent: "m".into(), action: "x".into(), target: format!("t{at}"), at };
    commit(store, Batch::new().change(m(59_999)).change(m(60_000)).change(m(60_001)).change(m(120_500))).unwrap();
    let hits = |since: i64| store.budget_usage("m", "x", since, "t0", crate::UsageLimits::ALL).unwrap().hits;
    assert_eq!([hits(0), hits(30_000), hits(59_999), hits(60_000), hits(60_001), hits(61_000)], [4, 4, 4, 3, 2, 1]);
    assert_eq!([hits(120_000), hits(120_500), hits(120_501), hits(-5)], [1, 1, 0, 4]);
    let capped = store.budget_usage("m", "x", 0, "t0", crate::UsageLimits { hits: 3, distinct_targets: 2 }).unwrap();
    assert_eq!((capped.hits, capped.distinct_targets), (3, 2));
    // A target hit again moves into the window: distinct targets count it once.
    commit(store, Batch::new().change(hit("h1", 50))).unwrap();
    assert_eq!(usage("a", 41, "h1"), (1, 1, true));
    assert_eq!(usage("a", 0, "h1"), (5, 3, true));
    commit(store, Batch::new().change(Change::SetMeta { key: "origin".into(), value: "x".into() })).unwrap();
    commit(store, Batch::new().change(Change::SetMeta { key: "origin".into(), value: "y".into() })).unwrap();
    assert_eq!(store.meta("origin").unwrap().as_deref(), Some("y"));
    assert_eq!(store.meta("missing").unwrap(), None);
}

pub fn preconditions_hold_or_the_batch_conflicts(store: &dyn Store) {
    commit(store, Batch::new().change(Change::Insert(agent("p", "active")))).unwrap();
    let expect = |version| Change::Expect { table: Table::Agents, id: "p".into(), version };
    let task = |id: &str| Change::Insert(Record::new(Table::Tasks, id, json!({})).state("open"));
    commit(store, Batch::new().change(expect(1)).change(task("t1")).event(ev(EventType::TaskOpened))).unwrap();
    let size = store.size().unwrap();
    for (stale, why) in [(2, "a version not reached"), (0, "absent, but it exists")] {
        let r = commit(store, Batch::new().change(expect(stale)).change(task("t2")).event(ev(EventType::TaskOpened)));
        assert!(matches!(r, Err(StoreError::Conflict { .. })), "{why}: {r:?}");
    }
    assert!(store.get(Table::Tasks, "t2").unwrap().is_none(), "a failed precondition applies nothing");
    assert_eq!(store.size().unwrap(), size, "and appends nothing");
    // After an update the old version no longer holds.
    let mut r = store.get(Table::Agents, "p").unwrap().unwrap();
    r.state = Some("suspended".into());
    commit(store, Batch::new().change(Change::Update(r))).unwrap();
    assert!(commit(store, Batch::new().change(expect(1))).is_err());
    commit(store, Batch::new().change(expect(2))).unwrap();
    let absent = Change::Expect { table: Table::Agents, id: "nobody".into(), version: 0 };
    commit(store, Batch::new().change(absent)).unwrap();
    // Settings: the expected value, or unset.
    let meta = |value: Option<&str>| Change::ExpectMeta { key: "epoch".into(), value: value.map(str::to_string) };
    commit(store, Batch::new().change(meta(None))).unwrap();
    assert!(commit(store, Batch::new().change(meta(Some("e1")))).is_err());
    commit(store, Batch::new().change(Change::SetMeta { key: "epoch".into(), value: "e1".into() })).unwrap();
    commit(store, Batch::new().change(meta(Some("e1")))).unwrap();
    assert!(commit(store, Batch::new().change(meta(None))).is_err());
    assert!(commit(store, Batch::new().change(meta(Some("e0")))).is_err());
    // A record not in a state: absent or in another state passes; in it, the batch is refused.
    let not = |id: &str| Change::ExpectNotState { table: Table::Agents, id: id.into(), state: "disabled".into() };
    commit(store, Batch::new().change(not("p")).change(not("nobody"))).unwrap();
    commit(store, Batch::new().change(Change::Insert(agent("d", "disabled")))).unwrap();
    let size = store.size().unwrap();
    let r = commit(store, Batch::new().change(not("d")).change(task("t3")).event(ev(EventType::TaskOpened)));
    assert!(
        matches!(&r, Err(StoreError::Refused { table: "agents", id, state }) if id == "d" && state == "disabled"),
        "{r:?}"
    );
    assert!(store.get(Table::Tasks, "t3").unwrap().is_none(), "a refused batch applies nothing");
    assert_eq!(store.size().unwrap(), size);
}

/// A cap on matching records (`ExpectFewer`) checked in the writer's transaction: writers
/// racing to insert past it get exactly `max` in, and records that do not match do not count.
pub fn a_cap_holds_under_concurrent_commits(store: Arc<dyn Store>) {
    let q = Query { agent: Some("a".into()), state: Some("pending".into()), ..Query::default() };
    let cap = |max| Change::ExpectFewer { table: Table::Approvals, query: q.clone(), max };
    let rec = |id: String, agent: &str, state: &str| {
        Change::Insert(Record::new(Table::Approvals, &id, json!({})).agent(agent).state(state))
    };
    // Records of another agent or state never count.
    commit(&*store, Batch::new().change(rec("other".into(), "b", "pending"))).unwrap();
    commit(&*store, Batch::new().change(rec("done".into(), "a", "approved"))).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let cap = cap(5);
            std::thread::spawn(move || {
                (0..4)
                    .filter(|i| {
                        let batch = Batch::new().change(cap.clone()).change(rec(format!("p{t}-{i}"), "a", "pending"));
                        commit(&*store, batch).is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 5, "exactly the cap got in");
    assert_eq!(store.count(Table::Approvals, &q).unwrap(), 5);
    let r = commit(&*store, Batch::new().change(cap(5)).change(rec("late".into(), "a", "pending")));
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
    assert!(store.get(Table::Approvals, "late").unwrap().is_none(), "a refused batch applies nothing");
    commit(&*store, Batch::new().change(cap(6)).change(rec("sixth".into(), "a", "pending"))).unwrap();
}

/// Budget check and hit as one step: many writers racing for a budget of `max` get exactly
/// `max` hits, for hits per window and for distinct targets alike.
pub fn a_budget_check_holds_under_concurrent_commits(store: Arc<dyn Store>) {
    let signer = NoteSigner::new("conformance.test/audit", &[5u8; 32]).unwrap();
    let ledger = Ledger::open(store.clone(), signer, Arc::new(crate::SystemClock), LedgerOptions::default()).unwrap();
    let checked = |action: &str, target: String, max_hits, max_distinct_targets| {
        Batch::new()
            .change(Change::BudgetCheck {
                agent: "a".into(),
                action: action.into(),
                target: target.clone(),
                since_ms: 0,
                max_hits,
                max_distinct_targets,
            })
            .change(Change::BudgetHit { agent: "a".into(), action: action.into(), target, at: 1_000 })
            .event(ev(EventType::DecisionMade))
    };
    let won = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (ledger, won, checked) = (&ledger, &won, &checked);
            scope.spawn(move || {
                for i in 0..8 {
                    // Same target: only the hit count binds. New targets: only the distinct count.
                    for (action, target, hits, distinct) in
                        [("x", "h".to_string(), Some(10), None), ("y", format!("h{t}-{i}"), None, Some(7))]
                    {
                        match ledger.commit(checked(action, target, hits, distinct)) {
                            Ok(_) => {
                                won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(StoreError::Conflict { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let usage = |action: &str| store.budget_usage("a", action, 0, "h", crate::UsageLimits::ALL).unwrap();
    assert_eq!(usage("x").hits, 10, "64 racing hits against a budget of 10");
    assert_eq!(usage("y").distinct_targets, 7, "64 racing new targets against a budget of 7");
    assert_eq!(won.into_inner(), 17);
    // A target already seen passes the distinct-targets check; a new one does not.
    let seen = (0..8)
        .flat_map(|t| (0..8).map(move |i| format!("h{t}-{i}")))
        .find(|h| store.budget_usage("a", "y", 0, h, crate::UsageLimits::ALL).unwrap().target_seen)
        .expect("a target that won");
    ledger.commit(checked("y", seen, None, Some(7))).unwrap();
    let again = ledger.commit(checked("y", "fresh".into(), None, Some(7)));
    assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
}

pub fn a_conflicting_batch_leaves_nothing_and_spares_its_group(store: &dyn Store) {
    commit(store, Batch::new().change(Change::Insert(agent("taken", "active"))).event(ev(EventType::AgentAdded)))
        .unwrap();
    let good1 = Batch::new().change(Change::Insert(agent("b1", "active"))).event(ev(EventType::AgentAdded));
    let bad = Batch::new()
        .change(Change::Insert(agent("b2", "active")))
        .change(Change::Insert(agent("taken", "active")))
        .event(ev(EventType::AgentAdded))
        .event(ev(EventType::AgentAdded));
    // A change of a kind no earlier batch made (a backend preparing statements on first use
    // must not trip over the failed batch before it).
    let good2 = Batch::new()
        .change(Change::Insert(agent("b3", "active")))
        .change(Change::SetMeta { key: "after_a_failure".into(), value: "set".into() })
        .event(ev(EventType::AgentAdded))
        .event(ev(EventType::TaskOpened));
    let mut sealed = Vec::new();
    let results = store
        .commit_group(T0, &[good1, bad, good2], &mut |size, root| {
            sealed.push((size, *root));
            Ok(Some(format!("note for {size}\n")))
        })
        .unwrap();
    assert_eq!(results[0], Ok(1..2));
    assert!(matches!(results[1], Err(StoreError::Conflict { .. })), "{:?}", results[1]);
    assert_eq!(results[2], Ok(2..4), "the next batch takes the seqs the failed one would have");
    assert_eq!(store.get(Table::Agents, "b2").unwrap(), None, "nothing of the failed batch");
    assert!(store.get(Table::Agents, "b3").unwrap().is_some());
    assert_eq!(store.meta("after_a_failure").unwrap().as_deref(), Some("set"));
    assert_eq!(store.size().unwrap(), 4);
    assert_eq!(sealed, vec![(4, store.root(4).unwrap())], "one seal, for the group's final tree");
    assert_eq!(store.latest_checkpoint().unwrap(), Some((4, "note for 4\n".into())));
    let entries = store.entries(0, 10).unwrap();
    for e in &entries {
        let parsed = Entry::parse(&e.bytes).expect("entries are canonical");
        assert_eq!(parsed.seq, e.seq);
        assert_eq!(parsed.time, "2026-11-23T06:00:00.000Z");
    }
    assert_eq!(Entry::parse(&entries[3].bytes).unwrap().event.kind, EventType::TaskOpened);
    // A group in which nothing lands is not sealed.
    let results = store
        .commit_group(T0, &[Batch::new().change(Change::Insert(agent("taken", "x")))], &mut |_, _| {
            panic!("nothing to seal")
        })
        .unwrap();
    assert!(results[0].is_err());
}

/// One group with batches that fail anywhere (first, middle, last, several in a row), by a
/// precondition judged from an answer or by the database refusing a statement, and batches
/// that depend on earlier ones in the group: each batch ends as it would committed alone after
/// those before it, and a failed batch's changes are seen by none after it.
pub fn a_group_stands_batch_by_batch_as_if_committed_alone(store: &dyn Store) {
    let expect = |id: &str, version| Change::Expect { table: Table::Agents, id: id.into(), version };
    let insert = |id: &str| Change::Insert(agent(id, "active"));
    let hit = || Change::BudgetHit { agent: "a".into(), action: "x".into(), target: "h".into(), at: 1_000 };
    let batches = [
        // 0: fails first: what it expects does not exist.
        Batch::new().change(expect("missing", 1)).change(insert("f0")).event(ev(EventType::AgentAdded)),
        // 1: stands.
        Batch::new().change(insert("g1")).event(ev(EventType::AgentAdded)),
        // 2: stands on 1's insert.
        Batch::new().change(expect("g1", 1)).change(insert("g2")).event(ev(EventType::AgentAdded)),
        // 3: fails on 0's insert, which was undone.
        Batch::new().change(expect("f0", 1)).event(ev(EventType::AgentAdded)),
        // 4: the database refuses it (1 took the id); right after another failure.
        Batch::new().change(insert("g1")).event(ev(EventType::AgentAdded)),
        // 5, 6: a setting, then a batch that expects it.
        Batch::new().change(Change::SetMeta { key: "k".into(), value: "v".into() }).event(ev(EventType::TaskOpened)),
        Batch::new()
            .change(Change::ExpectMeta { key: "k".into(), value: Some("v".into()) })
            .change(insert("g6"))
            .event(ev(EventType::AgentAdded)),
        // 7: a budget hit; 8: its check, which 7 used up.
        Batch::new().change(hit()).event(ev(EventType::DecisionMade)),
        Batch::new()
            .change(Change::BudgetCheck {
                agent: "a".into(),
                action: "x".into(),
                target: "h".into(),
                since_ms: 0,
                max_hits: Some(1),
                max_distinct_targets: None,
            })
            .change(hit())
            .event(ev(EventType::DecisionMade)),
        // 9: fails last: g1, g2 and g6 are active, the cap is three.
        Batch::new()
            .change(Change::ExpectFewer {
                table: Table::Agents,
                query: Query { state: Some("active".into()), ..Query::default() },
                max: 3,
            })
            .change(insert("f9"))
            .event(ev(EventType::AgentAdded)),
    ];
    let results = store.commit_group(T0, &batches, &mut |size, _| Ok(Some(format!("note for {size}\n")))).unwrap();
    let stood: Vec<_> = results.iter().map(|r| r.as_ref().ok().cloned()).collect();
    assert_eq!(
        stood,
        [None, Some(0..1), Some(1..2), None, None, Some(2..3), Some(3..4), Some(4..5), None, None],
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, StoreError::Conflict { .. }), "{r:?}");
    }
    for (id, kept) in [("f0", false), ("g1", true), ("g2", true), ("g6", true), ("f9", false)] {
        assert_eq!(store.get(Table::Agents, id).unwrap().is_some(), kept, "{id}");
    }
    assert_eq!(store.get(Table::Agents, "g1").unwrap().unwrap().version, 1, "4 changed nothing");
    assert_eq!(store.meta("k").unwrap().as_deref(), Some("v"));
    assert_eq!(store.budget_usage("a", "x", 0, "h", crate::UsageLimits::ALL).unwrap().hits, 1);
    // The log holds the standing batches' entries, numbered in order, under one checkpoint.
    assert_eq!(store.size().unwrap(), 5);
    let mut mem = MemoryTree::new();
    for (i, e) in store.entries(0, 10).unwrap().iter().enumerate() {
        assert_eq!(Entry::parse(&e.bytes).unwrap().seq, i as u64);
        mem.push_entry(&e.bytes);
    }
    assert_eq!(store.root(5).unwrap(), mem.root());
    assert_eq!(store.latest_checkpoint().unwrap(), Some((5, "note for 5\n".into())));
    // And the writer carries on from there.
    commit(store, Batch::new().change(expect("g2", 1)).event(ev(EventType::AgentAdded))).unwrap();
    assert_eq!(store.size().unwrap(), 6);
}

pub fn ledger_commits_concurrent_batches_in_one_signed_order(store: Arc<dyn Store>) {
    let signer = NoteSigner::new("conformance.test/audit", &[5u8; 32]).unwrap();
    let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
    let ledger = Ledger::open(store.clone(), signer, Arc::new(crate::SystemClock), LedgerOptions::default()).unwrap();
    let threads = 16;
    let per = 10;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let ledger = &ledger;
            scope.spawn(move || {
                for i in 0..per {
                    let id = format!("task-{t}-{i}");
                    let r = Record::new(Table::Tasks, &id, json!({})).task(&id).state("open");
                    let got = ledger
                        .commit(Batch::new().change(Change::Insert(r)).event(ev(EventType::TaskOpened).task(&id)))
                        .unwrap();
                    assert_eq!(got.end - got.start, 1);
                    let entry = store_entry(ledger.store().as_ref(), got.start);
                    assert_eq!(entry.event.task.as_deref(), Some(id.as_str()), "the receipt points at our entry");
                }
            });
        }
    });
    let size = (threads * per) as u64;
    assert_eq!(store.size().unwrap(), size);
    assert_eq!(store.find(Table::Tasks, &Query::default()).unwrap().len(), threads * per);
    let (cp_size, note) = store.latest_checkpoint().unwrap().expect("a checkpoint");
    assert_eq!(cp_size, size, "the last group was sealed");
    let cp = Checkpoint::open(&note, &verifier).unwrap();
    assert_eq!(cp.root, store.root(size).unwrap());
    assert_eq!(cp.origin, "conformance.test/audit");
    for (s, note) in store.checkpoints(0, 10_000).unwrap() {
        let cp = Checkpoint::open(&note, &verifier).unwrap();
        assert_eq!(cp.root, store.root(s).unwrap(), "every checkpoint is consistent with the log");
    }
    // Group commit: fewer transactions than batches is the point, but never required.
    assert!(store.checkpoints(0, 10_000).unwrap().len() as u64 <= size);
    let stats = ledger.group_stats();
    assert_eq!(stats.batches, size, "every batch counted once");
    assert!((1..=size).contains(&stats.groups), "{stats:?}");
    // Opening signed an empty log's checkpoint without a group; every signed size is a group's end.
    assert!(store.checkpoints(1, 10_000).unwrap().len() as u64 <= stats.groups);
}

fn store_entry(store: &dyn Store, seq: u64) -> Entry {
    Entry::parse(&store.entries(seq, 1).unwrap()[0].bytes).unwrap()
}

#[derive(Debug)]
struct Backwards(std::sync::Mutex<Vec<time::OffsetDateTime>>);

impl crate::Clock for Backwards {
    fn now(&self) -> time::OffsetDateTime {
        self.0.lock().unwrap().pop().unwrap_or(T0)
    }
}

pub fn ledger_time_never_goes_backwards(store: Arc<dyn Store>) {
    let signer = NoteSigner::new("conformance.test/audit", &[6u8; 32]).unwrap();
    // Popped from the end: 06:05, then 06:01 (a clock step backwards), then 06:07.
    let clock = Backwards(std::sync::Mutex::new(vec![
        datetime!(2026-11-23 06:07 UTC),
        datetime!(2026-11-23 06:01 UTC),
        datetime!(2026-11-23 06:05 UTC),
    ]));
    let ledger = Ledger::open(store.clone(), signer, Arc::new(clock), LedgerOptions::default()).unwrap();
    for _ in 0..3 {
        ledger.commit(Batch::new().event(ev(EventType::PolicyLoaded))).unwrap();
    }
    let times: Vec<String> = (0..3).map(|s| store_entry(store.as_ref(), s).time).collect();
    assert_eq!(times, ["2026-11-23T06:05:00.000Z", "2026-11-23T06:05:00.000Z", "2026-11-23T06:07:00.000Z"]);
}
