//! Old checkpoints stay readable: stores written by earlier builds are
//! checked in as their records (every key and value of every column family,
//! `tests/fixtures/checkpoint-v<layout>.records`) with what restoring them
//! must give (`checkpoint-v<layout>.expected.json`): layouts 3 to 6,
//! which this build migrates when it opens them, and layout 7, which it
//! writes (layouts 5 to 7 with a skip rollback in them, so its audit record
//! and count are pinned too; layout 7 with a shard's high-water marks and an
//! outbox not sent yet). The tests
//! rebuild a RocksDB directory from the records and restore it with this
//! build, so a change that breaks a stored layout without a version bump (and
//! a migration or a clear refusal) fails CI.
//!
//! A new layout version gets fixture files of its own, named after it, beside
//! the old ones (which then test the migration or the refusal): with the names
//! changed below, `FRESHET_WRITE_FIXTURES=1 cargo test --workspace --test
//! fixtures` writes them (an existing file is never overwritten).
//!
//! Records file: `FCKR`, u32 LE fixture-file version (1), then per record:
//! u8 column family (0 rows, 1 pending, 2 offsets, 3 meta), u32 LE key
//! length, key, u32 LE value length, value.

use std::path::{Path, PathBuf};

use freshet_checkpoint::ExchangeCommit;
use freshet_checkpoint::{CheckpointError, CheckpointStore, RollbackMode, inspect};
use freshet_core::exchange::{Channel, ExchangeTag, HighWater, OutboxMessage};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Feedback, ModelSpec, NextOffsets, TableKind, TopicPartition, hash_id};
use freshet_trainer::{Trainer, TrainerConfig};
use serde_json::{Value, json};

const COLUMN_FAMILIES: [&str; 4] = ["rows", "pending", "offsets", "meta"];
const MAGIC: &[u8; 4] = b"FCKR";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn spec() -> ModelSpec {
    ModelSpec { dim: 8, ..ModelSpec::default() }
}

fn config() -> TrainerConfig {
    TrainerConfig { min_count: 1, ..TrainerConfig::default() }
}

/// The rows whose stored values the expected file pins, bit for bit.
const ROWS: [(TableKind, &str); 4] =
    [(TableKind::User, "u1"), (TableKind::User, "u42"), (TableKind::Item, "i3"), (TableKind::Item, "i99")];

fn pinned_rows(trainer: &Trainer) -> Vec<Value> {
    ROWS.iter()
        .map(|&(table, id)| {
            let row = trainer.row(table, hash_id(id)).unwrap_or_else(|| panic!("{id} has a row"));
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            json!({
                "id": id, "params": bits(&row.params), "m": bits(&row.m), "v": bits(&row.v),
                "steps": row.steps, "updates": row.updates, "last_update_ms": row.last_update_ms,
            })
        })
        .collect()
}

fn summary(trainer: &Trainer, version: u64, published: u64) -> Value {
    json!({
        "version": version,
        "published_version": published,
        "events_applied": trainer.counters().events_applied,
        "rows": TableKind::ALL.map(|table| trainer.rows(table)),
        "rows_pinned": pinned_rows(trainer),
        "metrics": serde_json::to_value(trainer.metrics()).expect("json"),
        "lr_scale": trainer.lr_scale(),
    })
}

/// The newest layout, which [`write_fixture`] writes.
const NEWEST: &str = "checkpoint-v7";

/// What a store holds beside the model: offsets, skipped events, rollbacks.
fn store_summary(store: &CheckpointStore, offsets: &NextOffsets) -> Value {
    json!({
        "offsets": freshet_core::offsets::by_name(offsets),
        "events_skipped": store.events_skipped(),
        "rollbacks": serde_json::to_value(store.rollbacks()).expect("json"),
    })
}

/// A shard's exchange state in a store: its marks and unsent outboxes.
fn exchange_summary(store: &CheckpointStore) -> Value {
    let marks: Vec<Value> = store
        .high_water()
        .expect("marks")
        .marks()
        .map(|(channel, tag)| json!([channel.name(), tag.sender, tag.version, tag.part]))
        .collect();
    let outboxes: Vec<Value> = store
        .outboxes()
        .expect("outboxes")
        .iter()
        .map(|outbox| {
            let messages: Vec<Value> = outbox
                .messages
                .iter()
                .map(|m| json!([m.channel.name(), m.to, m.part, String::from_utf8_lossy(&m.payload)]))
                .collect();
            json!({"version": outbox.version, "messages": messages})
        })
        .collect();
    json!({"high_water": marks, "outboxes": outboxes})
}

/// The exchange state the layout-7 fixture's commits write: marks of two
/// senders, an outbox per commit (the first forgotten, as sent).
fn fixture_exchange(round: i64) -> (HighWater, Vec<OutboxMessage>) {
    let mut marks = HighWater::default();
    marks.admit(Channel::Route, ExchangeTag { sender: 1, version: 7 + round as u64, part: 3 });
    marks.admit(Channel::Grads, ExchangeTag { sender: 2, version: 5, part: round as u32 });
    let channel = if round == 0 { Channel::Route } else { Channel::Grads };
    let payload = format!("message of round {round}").into_bytes();
    (marks, vec![OutboxMessage { channel, to: 1 + round as u32, part: 0, payload }])
}

/// Writes a small store the way `freshet run` does with this build's layout
/// (two checkpoints, published; a third, then a skip rollback to the second
/// as version 4), then its records and expected summary.
fn write_fixture(records: &Path, expected: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    let mut trainer = Trainer::new(spec(), config()).expect("trainer");
    let mut stream =
        SynthStream::new(SynthConfig { seed: 3, users: 60, items: 120, forget_share: 0.01, ..SynthConfig::default() });
    for round in 0..2i64 {
        let batch: Vec<Feedback> =
            (0..300).map(|i| stream.next_event_at(1_764_400_000_000 + round * 1_000 + i)).collect();
        trainer.train_batch(&batch);
        let offsets = NextOffsets::from([(TopicPartition::new("freshet.ratings", 0), 300 * (round + 1))]);
        let (high_water, outbox) = fixture_exchange(round);
        let exchange = ExchangeCommit { high_water: &high_water, outbox: &outbox };
        store.commit_with(&spec(), &trainer.drain_dirty(), &offsets, Some(exchange)).expect("commit");
    }
    store.forget_outboxes(1).expect("the first outbox sent");
    store.retain(1_764_400_001_000).expect("retain");
    store.record_published(2).expect("published");
    let model = summary(&trainer, 2, 2);
    let batch: Vec<Feedback> = (0..300).map(|i| stream.next_event_at(1_764_400_002_000 + i)).collect();
    trainer.train_batch(&batch);
    let offsets = NextOffsets::from([(TopicPartition::new("freshet.ratings", 0), 900)]);
    store.commit(&spec(), &trainer.drain_dirty(), &offsets).expect("commit");
    store.rollback(2, RollbackMode::Skip, "cli", 1_764_400_003_000).expect("rollback");
    let mut expected_summary = model;
    expected_summary["version"] = json!(4);
    expected_summary["store"] = store_summary(&store, &offsets);
    expected_summary["exchange"] = exchange_summary(&store);
    drop(store);

    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), COLUMN_FAMILIES).expect("raw open");
    let mut out = MAGIC.to_vec();
    out.extend(1u32.to_le_bytes());
    for (index, name) in COLUMN_FAMILIES.iter().enumerate() {
        let cf = db.cf_handle(name).expect("column family");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.expect("record");
            out.push(index as u8);
            for bytes in [&key[..], &value[..]] {
                out.extend(u32::try_from(bytes.len()).expect("small").to_le_bytes());
                out.extend(bytes);
            }
        }
    }
    std::fs::write(records, out).expect("write records");
    let expected_text = serde_json::to_string_pretty(&expected_summary).expect("json");
    std::fs::write(expected, expected_text + "\n").expect("write expected");
}

/// A RocksDB directory holding exactly the records of `file`.
fn rebuild(file: &Path, dir: &Path) {
    let bytes = std::fs::read(file).expect("the records fixture");
    assert_eq!(&bytes[..4], MAGIC, "a records file");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")), 1, "fixture file version");
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(&options, dir, COLUMN_FAMILIES).expect("create");
    let mut rest = &bytes[8..];
    while let Some((&family, after)) = rest.split_first() {
        let (key, after) = length_prefixed(after);
        let (value, after) = length_prefixed(after);
        rest = after;
        let cf = db.cf_handle(COLUMN_FAMILIES[usize::from(family)]).expect("column family");
        db.put_cf(cf, key, value).expect("put");
    }
}

/// A u32 LE length, that many bytes, and what follows them.
fn length_prefixed(bytes: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = bytes.split_at(4);
    rest.split_at(u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize)
}

/// Rebuilds fixture `name` in a fresh directory (writing it first, with
/// `FRESHET_WRITE_FIXTURES` set, when it is missing and of this build's
/// layout), checks that `inspect` and a restore give its expected summary,
/// and returns the directory.
fn check_fixture(name: &str) -> tempfile::TempDir {
    let (records, expected) =
        (fixtures().join(format!("{name}.records")), fixtures().join(format!("{name}.expected.json")));
    if std::env::var_os("FRESHET_WRITE_FIXTURES").is_some() && !records.exists() {
        assert_eq!(name, NEWEST, "only this build's layout can be written");
        write_fixture(&records, &expected);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    rebuild(&records, dir.path());
    let mut expected: Value = serde_json::from_slice(&std::fs::read(&expected).expect("expected")).expect("json");
    let store_expected = expected.as_object_mut().expect("an object").remove("store");
    let exchange_expected = expected.as_object_mut().expect("an object").remove("exchange");
    let report = inspect(dir.path()).expect("inspectable as it is");
    assert_eq!(report.version, expected["version"].as_u64().expect("version"));
    assert_eq!(serde_json::to_value(report.metrics).expect("json"), expected["metrics"], "{name}: metrics as stored");
    assert_eq!(report.events_applied, expected["events_applied"].as_u64().expect("events"));
    let store = CheckpointStore::open(dir.path(), false).expect("opens");
    let resumed = store.restore(&spec(), config()).expect("restores").expect("a checkpoint");
    assert_eq!(summary(&resumed.trainer, resumed.version, resumed.published_version), expected, "{name}");
    let no_exchange = json!({"high_water": [], "outboxes": []});
    assert_eq!(exchange_summary(&store), exchange_expected.unwrap_or(no_exchange), "{name}: marks and outboxes");
    match store_expected {
        Some(store_expected) => assert_eq!(store_summary(&store, &resumed.offsets), store_expected, "{name}"),
        None => {
            assert_eq!(resumed.offsets, NextOffsets::from([(TopicPartition::new("freshet.ratings", 0), 600)]));
            assert_eq!(
                (store.events_skipped(), store.rollbacks().len()),
                (0, 0),
                "{name}: no rollbacks before layout 5"
            );
        }
    }
    dir
}

/// The layout version a store directory records.
fn layout_of(dir: &Path) -> u8 {
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, COLUMN_FAMILIES).expect("raw open");
    let format = db.get_cf(db.cf_handle("meta").expect("meta"), b"format").expect("read").expect("a format key");
    assert_eq!(format.len(), 1, "a small bincode u32");
    format[0]
}

#[test]
fn a_layout_3_checkpoint_written_by_an_earlier_build_is_migrated_and_restores_exactly() {
    let dir = check_fixture("checkpoint-v3");
    assert_eq!(layout_of(dir.path()), 7, "migrated when opened");
    // Opened again, it restores the same (as layout 7 now), and keeps training.
    let store = CheckpointStore::open(dir.path(), false).expect("opens");
    let mut trainer = store.restore(&spec(), config()).expect("restores").expect("a checkpoint").trainer;
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("checkpoint-v3.expected.json")).expect("expected"))
            .expect("json");
    assert_eq!(summary(&trainer, 2, 2), expected);
    let mut stream = SynthStream::new(SynthConfig { seed: 4, users: 60, items: 120, ..SynthConfig::default() });
    let batch: Vec<Feedback> = (0..100).map(|i| stream.next_event_at(1_764_400_010_000 + i)).collect();
    trainer.train_batch(&batch);
    assert_eq!(trainer.counters().events_applied, 700);
}

#[test]
fn a_layout_4_checkpoint_is_migrated_and_restores_exactly() {
    let dir = check_fixture("checkpoint-v4");
    assert_eq!(layout_of(dir.path()), 7, "migrated when opened");
}

#[test]
fn a_layout_5_checkpoint_with_a_rollback_is_migrated_as_one_shard_and_restores_exactly() {
    let dir = check_fixture("checkpoint-v5");
    assert_eq!(layout_of(dir.path()), 7, "migrated when opened");
    let store = CheckpointStore::open(dir.path(), false).expect("opens");
    let rollback = store.current_rollback().expect("version 4 is the rollback's");
    assert_eq!((rollback.to_version, rollback.mode, store.events_skipped()), (2, RollbackMode::Skip, 300));
    assert_eq!(inspect(dir.path()).expect("inspects").spec.map(|spec| spec.shards), Some(1));
    assert_eq!(store.shard(), 0, "no shard record: shard 0");
    let resharded = ModelSpec { shards: 2, ..spec() };
    let error = store.restore(&resharded, config()).map(|_| ()).expect_err("of one shard");
    assert!(matches!(error, CheckpointError::ShardsChanged { stored: 1, configured: 2 }), "{error:?}");
}

#[test]
fn a_layout_6_checkpoint_with_a_rollback_is_migrated_without_marks_or_outboxes() {
    let dir = check_fixture("checkpoint-v6");
    assert_eq!(layout_of(dir.path()), 7, "migrated when opened");
    let report = inspect(dir.path()).expect("inspects");
    assert!(report.high_water.is_empty() && report.outboxes.is_empty());
}

#[test]
fn a_layout_7_checkpoint_with_a_rollback_and_an_outbox_restores_exactly() {
    let dir = check_fixture(NEWEST);
    assert_eq!(layout_of(dir.path()), 7);
    let report = inspect(dir.path()).expect("inspects");
    assert_eq!(report.outboxes, vec![(2, 1)], "version 2's outbox, not yet sent");
    assert_eq!(report.high_water.len(), 2);
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), COLUMN_FAMILIES).expect("raw open");
        let shard = db.get_cf(db.cf_handle("meta").expect("meta"), b"shard").expect("read");
        assert_eq!(shard.as_deref(), Some(&0u32.to_le_bytes()[..]), "the shard, a u32 LE record");
    }
    let store = CheckpointStore::open(dir.path(), false).expect("opens");
    assert_eq!(store.shard(), 0);
    let rollback = store.current_rollback().expect("version 4 is the rollback's");
    assert_eq!((rollback.to_version, rollback.mode, store.events_skipped()), (2, RollbackMode::Skip, 300));
    assert_eq!(inspect(dir.path()).expect("inspects").spec.map(|spec| spec.shards), Some(1));
}

#[test]
fn every_layout_holds_the_same_model_in_different_bytes() {
    let read = |name: &str| -> Value {
        let mut summary: Value =
            serde_json::from_slice(&std::fs::read(fixtures().join(format!("{name}.expected.json"))).expect("expected"))
                .expect("json");
        let fields = summary.as_object_mut().expect("an object");
        fields.remove("store");
        fields.remove("exchange");
        fields.remove("version");
        summary
    };
    assert_eq!(read("checkpoint-v3"), read("checkpoint-v4"), "the same model, written by either layout");
    assert_eq!(read("checkpoint-v4"), read("checkpoint-v5"), "version 2's model again, after the rollback");
    assert_eq!(read("checkpoint-v5"), read("checkpoint-v6"));
    assert_eq!(read("checkpoint-v6"), read(NEWEST));
    let records = |name: &str| std::fs::read(fixtures().join(format!("{name}.records"))).expect("records");
    assert_ne!(records("checkpoint-v3"), records("checkpoint-v4"));
    assert_ne!(records("checkpoint-v4"), records("checkpoint-v5"));
    assert_ne!(records("checkpoint-v5"), records("checkpoint-v6"));
    assert_ne!(records("checkpoint-v6"), records(NEWEST));
}

#[test]
fn a_store_of_an_unknown_layout_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    rebuild(&fixtures().join("checkpoint-v3.records"), dir.path());
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), COLUMN_FAMILIES).expect("raw");
        // The layout version is a bincode u32 (varint): 99 is one byte.
        db.put_cf(db.cf_handle("meta").expect("meta"), b"format", [99u8]).expect("put");
    }
    let error = CheckpointStore::open(dir.path(), false).expect_err("refused");
    assert!(matches!(error, CheckpointError::Layout { found: 99, supported: 7 }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("layout version 99") && message.contains("version 7"), "{message}");
    assert!(!message.contains("corrupt"), "an unknown layout is not damage: {message}");
}
