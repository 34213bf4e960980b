//! Retained versions and rollback at scale (prints figures; not a test):
//! builds a model of N users (default 5M + 100k items, dim 32, Adam),
//! checkpoints it in full, then makes 10 checkpoints with 1 % of the users
//! dirty in each (other users every time), retaining every version. Prints
//! what a retain costs, the disk the 10 retained versions add against the
//! store itself, and the time to roll back over those 10 versions (the
//! store rewritten as version 1, then the trainer restored from it).
//!
//!     cargo bench --workspace --bench retention -- [--users N] [--dim D]

use std::time::Instant;

use freshet_checkpoint::{CheckpointStore, RetainPolicy, RollbackMode};
use freshet_core::{Feedback, ModelSpec, NextOffsets, Rating, TableKind, TopicPartition};
use freshet_trainer::{Trainer, TrainerConfig};

const ITEMS: u64 = 100_000;
const BATCH: usize = 20_000;
const VERSIONS: u64 = 10;

fn main() {
    let (mut users, mut dim) = (5_000_000u64, 32usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--users" => users = args.next().and_then(|v| v.parse().ok()).expect("--users N"),
            "--dim" => dim = args.next().and_then(|v| v.parse().ok()).expect("--dim D"),
            _ => {} // cargo bench passes --bench
        }
    }
    let spec = ModelSpec { dim, context_features: false, ..ModelSpec::default() };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), false).expect("open");
    let mut trainer = Trainer::new(spec.clone(), TrainerConfig::default()).expect("trainer");
    let mut clock = 1_764_400_000_000i64;
    let mut train = |trainer: &mut Trainer, users: &mut dyn Iterator<Item = u64>| {
        let mut batch = Vec::with_capacity(BATCH);
        for user in users {
            clock += 1;
            batch.push(Feedback::Rating(Rating {
                user: format!("u{user}"),
                item: format!("i{}", user % ITEMS),
                rating: 1.0 + (user % 9) as f32 / 2.0,
                ts: clock,
                features: Default::default(),
            }));
            if batch.len() == BATCH {
                trainer.train_batch(&batch);
                batch.clear();
            }
        }
        trainer.train_batch(&batch);
    };
    let commit = |store: &mut CheckpointStore, trainer: &mut Trainer| {
        let offsets = NextOffsets::from([(TopicPartition::new("bench", 0), store.version() as i64 + 1)]);
        store.commit(&spec, &trainer.drain_dirty(), &offsets).expect("commit")
    };

    eprintln!("building a model of {users} users + {ITEMS} items, dim {dim}");
    let started = Instant::now();
    train(&mut trainer, &mut (0..users));
    let rows: usize = TableKind::ALL.iter().map(|&t| trainer.rows(t)).sum();
    commit(&mut store, &mut trainer);
    store.retain(0).expect("retain");
    eprintln!("  {rows} rows checkpointed and retained in {:.1} s", started.elapsed().as_secs_f64());

    let policy = RetainPolicy { versions: VERSIONS as usize + 1, max_age_ms: None, every_ms: 0 };
    let mut retain_ms = Vec::new();
    for round in 1..=VERSIONS {
        let dirty = users / 100;
        // Other users each round: every 100th, shifted by the round.
        train(&mut trainer, &mut (0..dirty).map(|i| i * 100 + round));
        commit(&mut store, &mut trainer);
        let at = Instant::now();
        store.retain(round as i64).expect("retain");
        retain_ms.push(at.elapsed().as_secs_f64() * 1e3);
        store.record_published(store.version()).expect("published");
        store.prune(policy, round as i64).expect("prune");
        eprintln!("  version {} (1 % dirty) retained in {:.0} ms", store.version(), retain_ms.last().unwrap_or(&0.0));
    }
    let disk = store.retained_disk(&store.retained().expect("retained")).expect("disk");
    retain_ms.sort_by(f64::total_cmp);
    println!(
        "retain one version          median {:>7.0} ms  max {:>7.0} ms",
        retain_ms[retain_ms.len() / 2],
        retain_ms[retain_ms.len() - 1]
    );
    println!(
        "disk of {} retained versions {:>7.0} MiB beyond the store's {:.0} MiB: {:.2}x one checkpoint",
        disk.versions,
        disk.retained_only_bytes as f64 / 1048576.0,
        disk.store_bytes as f64 / 1048576.0,
        (disk.store_bytes + disk.retained_only_bytes) as f64 / disk.store_bytes as f64
    );
    drop(trainer);

    // What a running trainer does: the store rewritten and the trainer restored, side by side.
    let started = Instant::now();
    let (record, resumed) = store
        .rollback_and_restore(1, RollbackMode::Replay, "bench", 0, &spec, TrainerConfig::default())
        .expect("rollback");
    let total = started.elapsed().as_secs_f64();
    let restored_rows: usize = TableKind::ALL.iter().map(|&t| resumed.trainer.rows(t)).sum();
    drop(resumed);
    println!(
        "rollback over {VERSIONS} versions   {total:>7.2} s  (version {}: {restored_rows} rows restored)",
        record.version
    );
    // The two passes one after the other, for comparison: forward again to
    // version 11 (the same 10 % of the rows differ).
    let started = Instant::now();
    store.rollback(VERSIONS + 1, RollbackMode::Replay, "bench", 0).expect("rollback");
    let rewritten = started.elapsed().as_secs_f64();
    let resumed = store.restore(&spec, TrainerConfig::default()).expect("restore").expect("a checkpoint");
    let total = started.elapsed().as_secs_f64();
    drop(resumed);
    println!(
        "  the same in sequence      {total:>7.2} s  (store rewritten in {rewritten:.2} s, then restored in {:.2} s)",
        total - rewritten
    );
}
