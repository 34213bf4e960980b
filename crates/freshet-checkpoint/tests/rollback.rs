//! Retained versions and rollback on real RocksDB files: copies kept and
//! pruned by policy, a rollback in either mode restoring a version's exact
//! state as a new version, the counts that keep every event counted once,
//! and refusals naming why.

use freshet_checkpoint::{CheckpointError, CheckpointStore, RetainPolicy, RollbackMode, inspect};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Feedback, ModelSpec, NextOffsets, TopicPartition};
use freshet_trainer::{Trainer, TrainerConfig, TrainerState};

fn spec() -> ModelSpec {
    ModelSpec { dim: 8, ..ModelSpec::default() }
}

fn config() -> TrainerConfig {
    TrainerConfig { min_count: 2, ..TrainerConfig::default() }
}

fn offsets(next: i64) -> NextOffsets {
    NextOffsets::from([(TopicPartition::new("clicks", 0), next), (TopicPartition::new("ratings", 1), next * 2)])
}

/// A store with versions 1..=`versions`, each `size` synthetic events (with
/// forgets, so rows are removed too) at offsets `100 × version`, retained
/// and published; returns it with the trainer and each version's state.
fn trained(dir: &std::path::Path, versions: u64, size: usize) -> (CheckpointStore, Trainer, Vec<TrainerState>) {
    let mut store = CheckpointStore::open(dir, true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    let mut stream =
        SynthStream::new(SynthConfig { seed: 7, users: 400, items: 120, forget_share: 0.02, ..Default::default() });
    let mut states = vec![trainer.export_state()];
    for version in 1..=versions {
        let events: Vec<Feedback> =
            (0..size).map(|i| stream.next_event_at(1_764_400_000_000 + (version as usize * size + i) as i64)).collect();
        trainer.train_batch(&events);
        store.commit(&spec(), &trainer.drain_dirty(), &offsets(100 * version as i64)).expect("commit");
        store.retain(1_000 * version as i64).expect("retain").expect("a copy");
        store.record_published(version).expect("published");
        states.push(trainer.export_state());
    }
    (store, trainer, states)
}

fn retained_versions(store: &CheckpointStore) -> Vec<u64> {
    store.retained().expect("retained").iter().map(|r| r.version).collect()
}

#[test]
fn copies_are_kept_per_policy_and_cost_less_than_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _, _) = trained(dir.path(), 6, 300);
    assert_eq!(retained_versions(&store), vec![1, 2, 3, 4, 5, 6]);
    // Retaining the same version again keeps the one copy.
    assert_eq!(store.retain(99_000).expect("retain").map(|r| (r.version, r.created_ms)), Some((6, 6_000)));
    assert_eq!(retained_versions(&store), vec![1, 2, 3, 4, 5, 6]);

    let pruned = store.prune(RetainPolicy { versions: 3, max_age_ms: None, every_ms: 0 }, 7_000).expect("prune");
    assert_eq!(pruned, vec![1, 2, 3]);
    assert_eq!(retained_versions(&store), vec![4, 5, 6]);
    // By age: only the newest published copy is young enough, or kept anyway.
    store.prune(RetainPolicy { versions: 3, max_age_ms: Some(500), every_ms: 0 }, 6_400).expect("prune");
    assert_eq!(retained_versions(&store), vec![6]);

    let disk = store.retained_disk(&store.retained().expect("retained")).expect("disk");
    assert_eq!(disk.versions, 1);
    assert!(disk.store_bytes > 0);
    let inspection = inspect(dir.path()).expect("inspect");
    assert_eq!(inspection.retained.iter().map(|r| r.version).collect::<Vec<_>>(), vec![6]);
    assert_eq!(inspection.retained_disk.versions, 1);
    assert!(inspection.retained[0].bytes > 0);
}

#[test]
fn replay_restores_the_version_and_its_offsets_as_a_new_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _, states) = trained(dir.path(), 5, 400);
    let record = store.rollback(3, RollbackMode::Replay, "cli", 42).expect("rollback");
    assert_eq!((record.version, record.to_version, record.from_version), (6, 3, 5));
    assert_eq!(store.version(), 6, "versions never go down");
    assert_eq!(store.published_version(), 5);
    let loaded = store.load(&spec()).expect("load").expect("a checkpoint");
    assert_eq!(loaded.state, states[3], "rows, pending counts, optimizer state, counters and metrics of version 3");
    assert_eq!(loaded.offsets, offsets(300));
    assert_eq!(store.events_skipped(), 0);
    assert_eq!(record.events_applied_after, states[3].dense.counters.events_applied);
    assert_eq!(record.events_applied_before, states[5].dense.counters.events_applied);
    assert!(record.ranges.is_empty());
    assert_eq!(store.current_rollback(), Some(&record));

    // The trainer a running rollback restores (from the retained copy, while
    // the batch is written) is the one the store now holds.
    let (again, resumed) =
        store.rollback_and_restore(2, RollbackMode::Replay, "admin", 43, &spec(), config()).expect("rollback");
    assert_eq!((again.version, resumed.version, resumed.offsets.clone()), (7, 7, offsets(200)));
    assert_eq!(resumed.trainer.export_state(), states[2]);
    assert_eq!(store.load(&spec()).expect("load").expect("a checkpoint").state, states[2]);
    let refused =
        store.rollback_and_restore(1, RollbackMode::Replay, "admin", 44, &ModelSpec { dim: 16, ..spec() }, config());
    assert!(matches!(refused, Err(CheckpointError::SpecMismatch { .. })), "{refused:?}");
    let record = store.rollback(3, RollbackMode::Replay, "cli", 42).expect("rollback");

    // It survives a reopen, and the restored trainer trains on.
    drop(store);
    let store = CheckpointStore::open(dir.path(), true).expect("reopen");
    assert_eq!((store.version(), store.rollbacks().len()), (8, 3));
    let resumed = store.restore(&spec(), config()).expect("restore").expect("a checkpoint");
    assert_eq!(resumed.trainer.export_state(), states[3]);
    assert_eq!(inspect(dir.path()).expect("inspect").rollbacks.last(), Some(&record));
}

#[test]
fn skip_keeps_the_offsets_and_counts_the_events_left_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _, states) = trained(dir.path(), 5, 400);
    let applied = |version: usize| states[version].dense.counters.events_applied;
    let record = store.rollback(2, RollbackMode::Skip, "quality_gate", 42).expect("rollback");
    let loaded = store.load(&spec()).expect("load").expect("a checkpoint");
    assert_eq!(loaded.state, states[2]);
    assert_eq!(loaded.offsets, offsets(500), "a skip resumes where reading had reached");
    assert_eq!(store.events_skipped(), applied(5) - applied(2));
    assert_eq!(record.events_skipped_after, store.events_skipped());
    let ranges: Vec<(String, i32, i64, i64)> =
        record.ranges.iter().map(|r| (r.topic.clone(), r.partition, r.from, r.to)).collect();
    assert_eq!(ranges, vec![("clicks".into(), 0, 200, 500), ("ratings".into(), 1, 400, 1000)]);
    assert!(store.current_rollback().is_some());

    // A commit after it: no longer the current rollback; the count stays.
    let mut trainer = Trainer::restore(spec(), config(), loaded.state).expect("restore");
    let mut stream = SynthStream::new(SynthConfig { seed: 8, users: 400, items: 120, ..Default::default() });
    let more: Vec<Feedback> = (0..50).map(|i| stream.next_event_at(1_764_500_000_000 + i)).collect();
    trainer.train_batch(&more);
    store.commit(&spec(), &trainer.drain_dirty(), &offsets(600)).expect("commit");
    assert_eq!(store.current_rollback(), None);
    assert_eq!(store.events_skipped(), applied(5) - applied(2));
}

#[test]
fn refusals_name_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _, _) = trained(dir.path(), 4, 200);
    store.prune(RetainPolicy { versions: 2, max_age_ms: None, every_ms: 0 }, 5_000).expect("prune");
    match store.rollback(1, RollbackMode::Skip, "cli", 0) {
        Err(CheckpointError::NotRetained { version: 1, retained }) => assert_eq!(retained, vec![3, 4]),
        other => panic!("expected NotRetained, got {other:?}"),
    }
    // Back to 3 with a replay, then a skip "forward" to 4 would count events
    // read after 3 that are read again: refused; a replay to 4 is fine.
    store.rollback(3, RollbackMode::Replay, "cli", 0).expect("replay");
    let refused = store.rollback(4, RollbackMode::Skip, "cli", 0).expect_err("skip ahead");
    assert!(matches!(&refused, CheckpointError::Rollback(why) if why.contains("replay")), "{refused}");
    assert_eq!(store.version(), 5, "a refused rollback writes nothing");
    store.rollback(4, RollbackMode::Replay, "cli", 0).expect("replay forward");
    assert_eq!(store.load(&spec()).expect("load").expect("state").offsets, offsets(400));
}

#[test]
fn a_flush_ahead_of_a_retain_leaves_every_copy_and_the_store_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    let mut stream =
        SynthStream::new(SynthConfig { seed: 9, users: 400, items: 120, forget_share: 0.02, ..Default::default() });
    let mut states = vec![trainer.export_state()];
    for version in 1..=6u64 {
        let events: Vec<Feedback> =
            (0..300).map(|i| stream.next_event_at(1_764_400_000_000 + (version * 300 + i) as i64)).collect();
        trainer.train_batch(&events);
        store.commit(&spec(), &trainer.drain_dirty(), &offsets(100 * version as i64)).expect("commit");
        states.push(trainer.export_state());
        // The trainer loop's order: a flush started (not waited for) one
        // checkpoint ahead of the copy, a checkpoint while it runs, then the copy.
        match version % 2 {
            1 => {
                let before = store.memory().memtables;
                store.flush_ahead().expect("flush ahead");
                // Not waited for by the call; the memtables empty once it is done.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while store.memory().memtables >= before {
                    assert!(std::time::Instant::now() < deadline, "the flush ahead never ran ({before} bytes)");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            _ => {
                store.retain(1_000 * version as i64).expect("retain").expect("a copy");
                store.record_published(version).expect("published");
            }
        }
    }
    assert_eq!(retained_versions(&store), vec![2, 4, 6]);
    for version in [2usize, 4] {
        let (_, resumed) = store
            .rollback_and_restore(version as u64, RollbackMode::Replay, "test", 50, &spec(), config())
            .expect("rollback");
        assert_eq!(resumed.trainer.export_state(), states[version], "the copy of version {version}");
    }
    // A flush ahead with nothing after it, then a reopen: the newest rollback's state.
    store.flush_ahead().expect("flush ahead");
    drop(store);
    let store = CheckpointStore::open(dir.path(), true).expect("reopen");
    let resumed = store.restore(&spec(), config()).expect("restore").expect("a checkpoint");
    assert_eq!(resumed.trainer.export_state(), states[4]);
}
