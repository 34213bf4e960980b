//! The checkpoint store on real RocksDB files: atomic commits, incremental
//! deltas, restore, spec checks, locking, corruption, backup and inspection.

use freshet_checkpoint::{CheckpointError, CheckpointStore, inspect};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Feedback, ScoreContext};
use freshet_core::{Head, ModelSpec, TableKind};
use freshet_core::{NextOffsets, TopicPartition};
use freshet_trainer::{Trainer, TrainerConfig};

fn spec() -> ModelSpec {
    ModelSpec { dim: 8, ..ModelSpec::default() }
}

fn config() -> TrainerConfig {
    TrainerConfig { min_count: 1, ..TrainerConfig::default() }
}

fn batches(seed: u64, count: usize, size: usize) -> Vec<Vec<Feedback>> {
    let mut stream =
        SynthStream::new(SynthConfig { seed, users: 300, items: 100, forget_share: 0.01, ..Default::default() });
    (0..count)
        .map(|b| (0..size).map(|i| stream.next_event_at(1_764_400_000_000 + (b * size + i) as i64)).collect())
        .collect()
}

fn offsets(next: i64) -> NextOffsets {
    NextOffsets::from([(TopicPartition::new("clicks", 0), next), (TopicPartition::new("ratings", 1), next * 2)])
}

/// Writes one checkpoint of `events` synthetic events (stream `seed`) at
/// `next` offsets into a store in `dir`, and closes it.
fn write_one_checkpoint(dir: &std::path::Path, seed: u64, events: usize, next: i64) {
    let mut store = CheckpointStore::open(dir, true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    trainer.train_batch(&batches(seed, 1, events)[0]);
    store.commit(&spec(), &trainer.drain_dirty(), &offsets(next)).expect("commit");
}

/// The store's RocksDB opened directly, around `CheckpointStore`, to damage it.
fn raw_db(dir: &std::path::Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, ["rows", "pending", "offsets", "meta"]).expect("raw open")
}

#[test]
fn commits_restore_the_exact_state_incrementally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    assert_eq!(store.load(&spec()).expect("load"), None, "empty store");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");

    let mut sizes = Vec::new();
    for (round, batch) in batches(1, 6, 400).into_iter().enumerate() {
        trainer.train_batch(&batch);
        let delta = trainer.drain_dirty();
        let stats = store.commit(&spec(), &delta, &offsets(round as i64 * 100)).expect("commit");
        assert_eq!(stats.version, round as u64 + 1);
        sizes.push(stats.rows);
        let restored = store.load(&spec()).expect("load").expect("a checkpoint");
        assert_eq!(restored.state, trainer.export_state(), "round {round}");
        assert_eq!(restored.offsets, offsets(round as i64 * 100));
        assert_eq!(restored.version, stats.version);
    }
    // Deltas carry the changed rows only: later rounds touch fewer new rows than exist.
    let total_rows: usize = TableKind::ALL.iter().map(|&t| trainer.rows(t)).sum();
    assert!(sizes[5] < total_rows, "delta of {} rows, model of {total_rows}", sizes[5]);

    // Reopening finds the same version and state.
    drop(store);
    let store = CheckpointStore::open(dir.path(), true).expect("reopen");
    assert_eq!(store.version(), 6);
    let restored = store.load(&spec()).expect("load").expect("a checkpoint");
    let twin = Trainer::restore(spec(), config(), restored.state).expect("restore");
    for user in ["u1", "u7", "u42", "unknown"] {
        for item in ["i0", "i3", "i99"] {
            for head in [Head::Rating, Head::Click] {
                let (a, b) = (
                    trainer.predict(head, user, item, &ScoreContext::none()),
                    twin.predict(head, user, item, &ScoreContext::none()),
                );
                assert_eq!(a.to_bits(), b.to_bits(), "{head:?} {user} {item}");
            }
        }
    }
    assert_eq!(twin.export_state(), trainer.export_state());

    // Streaming straight into a trainer gives the same model, offsets and version.
    let resumed = store.restore(&spec(), config()).expect("restore").expect("a checkpoint");
    assert_eq!((resumed.version, resumed.offsets), (6, offsets(500)));
    assert_eq!(resumed.trainer.export_state(), trainer.export_state());
    assert!(matches!(
        store.restore(&ModelSpec { dim: 16, ..spec() }, config()),
        Err(CheckpointError::SpecMismatch { .. })
    ));
}

#[test]
fn a_store_of_another_layout_version_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_one_checkpoint(dir.path(), 7, 100, 1);
    {
        // What the first layout (bincode rows) wrote as its version.
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle("meta").expect("meta cf"), b"format", [1u8]).expect("write");
    }
    let error = CheckpointStore::open(dir.path(), true).expect_err("refused");
    assert!(matches!(error, CheckpointError::Layout { found: 1, supported: 7 }), "{error:?}");
    assert!(error.to_string().contains("layout version 1"), "{error}");
}

#[test]
fn another_spec_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), false).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    trainer.train_batch(&batches(2, 1, 100)[0]);
    store.commit(&spec(), &trainer.drain_dirty(), &NextOffsets::new()).expect("commit");
    let other = ModelSpec { dim: 16, ..spec() };
    assert!(matches!(store.load(&other), Err(CheckpointError::SpecMismatch { .. })));
    assert!(matches!(
        store.commit(&other, &trainer.drain_dirty(), &NextOffsets::new()),
        Err(CheckpointError::SpecMismatch { .. })
    ));
    let message = store.load(&other).expect_err("refused").to_string();
    assert!(message.contains("dim: 16") && message.contains("dim: 8"), "{message}");
    // Another shard count is refused as such, naming the key to set.
    let resharded = ModelSpec { shards: 2, ..spec() };
    let error = store.restore(&resharded, config()).map(|_| ()).expect_err("refused");
    assert!(matches!(error, CheckpointError::ShardsChanged { stored: 1, configured: 2 }), "{error:?}");
    assert!(error.to_string().contains("model.shards = 2"), "{error}");
    drop(store);
    let reopened = CheckpointStore::open(dir.path(), false).expect("open");
    assert!(matches!(reopened.load(&resharded), Err(CheckpointError::ShardsChanged { .. })), "kept across opens");
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = CheckpointStore::open(dir.path(), false).expect("open");
    let second = CheckpointStore::open(dir.path(), false);
    assert!(matches!(second, Err(CheckpointError::InUse { .. })), "{second:?}");
}

#[test]
fn damaged_values_and_directories_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_one_checkpoint(dir.path(), 3, 200, 5);
    // A row whose bytes are garbage.
    {
        let db = raw_db(dir.path());
        let rows = db.cf_handle("rows").expect("rows cf");
        let (key, _) = db.iterator_cf(rows, rocksdb::IteratorMode::Start).next().expect("a row").expect("readable");
        db.put_cf(rows, key, [0xffu8; 7]).expect("overwrite");
    }
    let store = CheckpointStore::open(dir.path(), true).expect("open");
    let error = store.load(&spec()).expect_err("corrupt row");
    assert!(matches!(error, CheckpointError::Corrupt(_)), "{error}");
    let error = store.restore(&spec(), config()).expect_err("corrupt row");
    assert!(matches!(error, CheckpointError::Corrupt(_)), "{error}");
    drop(store);

    // A directory whose RocksDB manifest is gone.
    let current = dir.path().join("CURRENT");
    std::fs::write(&current, "MANIFEST-999999\n").expect("damage CURRENT");
    let error = CheckpointStore::open(dir.path(), true).expect_err("unopenable");
    assert!(matches!(error, CheckpointError::Open { .. }), "{error}");
}

#[test]
fn backup_is_a_consistent_restorable_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backup_root = tempfile::tempdir().expect("tempdir");
    let backup = backup_root.path().join("copy");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    for batch in batches(4, 3, 300) {
        trainer.train_batch(&batch);
        store.commit(&spec(), &trainer.drain_dirty(), &offsets(9)).expect("commit");
    }
    store.backup(&backup).expect("backup");
    let expected = store.load(&spec()).expect("load");
    // Later checkpoints do not change the copy.
    trainer.train_batch(&batches(5, 1, 300)[0]);
    store.commit(&spec(), &trainer.drain_dirty(), &offsets(10)).expect("commit");
    let copy = CheckpointStore::open(&backup, true).expect("open the copy");
    assert_eq!(copy.load(&spec()).expect("load copy"), expected);
}

#[test]
fn inspection_works_while_the_writer_holds_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    let events = batches(6, 2, 500);
    let mut applied = 0;
    for batch in &events {
        trainer.train_batch(batch);
        applied += batch.len() as u64;
        store.commit(&spec(), &trainer.drain_dirty(), &offsets(77)).expect("commit");
    }
    store.record_published(2).expect("published");
    let report = inspect(dir.path()).expect("inspect");
    assert_eq!(report.version, 2);
    assert_eq!(report.published_version, 2);
    assert_eq!(report.events_applied, applied);
    assert_eq!(report.offsets["clicks/0"], 77);
    assert_eq!(report.offsets["ratings/1"], 154);
    for table in TableKind::ALL {
        assert_eq!(report.rows_by_table[&table], trainer.rows(table) as u64, "{table:?}");
        assert_eq!(report.updates_by_table[&table], trainer.update_count_sum(table), "{table:?}");
    }
    assert_eq!(report.spec, Some(spec()));
    assert!(report.size_on_disk_bytes > 0);
    assert!(inspect(&dir.path().join("nope")).is_err());
}

#[test]
fn a_shard_restores_as_that_shard_and_its_directory_refuses_another() {
    let sharded = ModelSpec { shards: 2, ..spec() };
    let shard = freshet_core::Shard::new(1, 2).expect("valid");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), false).expect("open");
    let mut trainer = Trainer::new_shard(sharded.clone(), config(), shard).expect("trainer");
    let users_of_shard: Vec<Feedback> = batches(5, 1, 2_000)
        .remove(0)
        .into_iter()
        .filter(|event| shard.owns(freshet_core::hash_id(event.user())))
        .collect();
    trainer.train_batch(&users_of_shard);
    store.commit(&sharded, &trainer.drain_dirty(), &offsets(10)).expect("commit");
    assert_eq!(store.shard(), 1);
    drop(store);

    let store = CheckpointStore::open(dir.path(), false).expect("open");
    assert_eq!((store.shard(), inspect(dir.path()).expect("inspects").shard), (1, 1));
    let resumed = store.restore(&sharded, config()).expect("restores").expect("a checkpoint");
    assert_eq!(resumed.trainer.shard(), shard);
    assert_eq!(resumed.trainer.export_state(), trainer.export_state(), "the shard's rows, as trained");
    let error = store.restore(&spec(), config()).map(|_| ()).expect_err("a model of one shard");
    assert!(matches!(error, CheckpointError::ShardsChanged { stored: 2, configured: 1 }), "{error:?}");
    // Another shard's trainer does not write into this shard's directory.
    let mut store = store;
    let mut other =
        Trainer::new_shard(sharded.clone(), config(), freshet_core::Shard::new(0, 2).expect("valid")).expect("trainer");
    other.train_batch(&batches(6, 1, 100)[0]);
    let error = store.commit(&sharded, &other.drain_dirty(), &offsets(20)).expect_err("another shard");
    assert!(matches!(error, CheckpointError::OtherShard { stored: 1, trainer: 0 }), "{error:?}");
    assert!(error.to_string().contains("directory of its own"), "{error}");
    assert_eq!(store.version(), 1, "nothing written");
}
