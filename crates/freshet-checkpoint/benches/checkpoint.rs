//! Checkpoint cost benchmark (prints figures; not a test):
//! builds a model of N rows (default 5M users + 100k items, dim 32, Adam),
//! then measures a full checkpoint and incremental ones with 1 % and 10 % of
//! the rows dirty (time and bytes), the restore time, and, in a fresh
//! process, the peak RSS of a restore against the raw parameter + optimizer
//! bytes.
//!
//!     cargo bench -p freshet-checkpoint --bench checkpoint -- [--users N] [--dim D]

use std::path::Path;
use std::time::Instant;

use freshet_checkpoint::{CheckpointStore, CommitStats};
use freshet_core::{Feedback, Rating};
use freshet_core::{ModelSpec, TableKind};
use freshet_core::{NextOffsets, TopicPartition};
use freshet_trainer::{Trainer, TrainerConfig};

const ITEMS: u64 = 100_000;
const BATCH: u64 = 20_000;

struct Args {
    users: u64,
    dim: usize,
    restore_only: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args { users: 5_000_000, dim: 32, restore_only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--users" => args.users = it.next().and_then(|v| v.parse().ok()).expect("--users N"),
            "--dim" => args.dim = it.next().and_then(|v| v.parse().ok()).expect("--dim D"),
            "--restore-only" => args.restore_only = it.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn spec(dim: usize) -> ModelSpec {
    ModelSpec { dim, context_features: false, ..ModelSpec::default() }
}

fn rating(user: u64, item: u64, ts: i64) -> Feedback {
    Feedback::Rating(Rating {
        user: format!("u{user}"),
        item: format!("i{item}"),
        rating: 1.0 + (user % 9) as f32 / 2.0,
        ts,
        features: Default::default(),
    })
}

/// Trains one rating for each user in `users` (items cycle over `items`).
fn touch(trainer: &mut Trainer, users: impl Iterator<Item = u64>, items: u64, label: &str, total: u64) {
    let mut batch = Vec::with_capacity(BATCH as usize);
    let mut done = 0u64;
    let started = Instant::now();
    for user in users {
        batch.push(rating(user, user % items, 1_764_400_000_000 + done as i64));
        if batch.len() as u64 == BATCH {
            trainer.train_batch(&batch);
            done += batch.len() as u64;
            batch.clear();
            if done % (total / 10).max(BATCH) < BATCH {
                eprintln!("  {label}: {done}/{total} events ({:.1} s)", started.elapsed().as_secs_f64());
            }
        }
    }
    trainer.train_batch(&batch);
}

fn checkpoint(store: &mut CheckpointStore, trainer: &mut Trainer, spec: &ModelSpec) -> (CommitStats, usize) {
    let delta = trainer.drain_dirty();
    let rows = delta.rows.len();
    let offsets = NextOffsets::from([(TopicPartition::new("bench", 0), store.version() as i64)]);
    (store.commit(spec, &delta, &offsets).expect("commit"), rows)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Restores the store in `dir`: rows, seconds, and floats per row in the
/// arenas (parameters and the optimizer moments kept).
fn restore(dir: &Path, dim: usize) -> (usize, f64, usize) {
    let spec = spec(dim);
    let started = Instant::now();
    let store = CheckpointStore::open(dir, true).expect("open");
    let trainer = store.restore(&spec, TrainerConfig::default()).expect("restore").expect("a checkpoint").trainer;
    let seconds = started.elapsed().as_secs_f64();
    let rows = TableKind::ALL.iter().map(|&t| trainer.rows(t)).sum();
    let (_, keys) = trainer.table_params(TableKind::User);
    let row = trainer.row(TableKind::User, keys[0]).expect("a user row");
    (rows, seconds, row.params.len() + row.m.len() + row.v.len())
}

fn main() {
    let args = parse_args();
    if let Some(dir) = args.restore_only {
        let (rows, seconds, floats) = restore(Path::new(&dir), args.dim);
        println!("{rows} {seconds} {floats} {}", vm_hwm_kib());
        return;
    }
    let spec = spec(args.dim);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(dir.path(), true).expect("open");
    let mut trainer = Trainer::new(spec.clone(), TrainerConfig::default()).expect("trainer");

    eprintln!("building a model of {} users + {ITEMS} items, dim {}", args.users, args.dim);
    touch(&mut trainer, 0..args.users, ITEMS, "build", args.users);
    let rows: usize = TableKind::ALL.iter().map(|&t| trainer.rows(t)).sum();
    let (full, _) = checkpoint(&mut store, &mut trainer, &spec);
    println!(
        "full checkpoint     {rows:>9} rows  {:>8.1} MiB  {:>8.0} ms",
        full.bytes as f64 / 1048576.0,
        full.elapsed.as_secs_f64() * 1e3
    );
    for percent in [1u64, 10] {
        let count = args.users * percent / 100;
        let stride = 100 / percent;
        touch(&mut trainer, (0..count).map(|i| i * stride), 1_000, &format!("{percent}% dirty"), count);
        let (stats, dirty) = checkpoint(&mut store, &mut trainer, &spec);
        println!(
            "{percent:>3}% dirty          {dirty:>9} rows  {:>8.1} MiB  {:>8.0} ms  ({:.1} % of full time, {:.1} % of full bytes)",
            stats.bytes as f64 / 1048576.0,
            stats.elapsed.as_secs_f64() * 1e3,
            100.0 * stats.elapsed.as_secs_f64() / full.elapsed.as_secs_f64(),
            100.0 * stats.bytes as f64 / full.bytes as f64,
        );
    }
    drop(trainer);
    drop(store);

    eprintln!("restoring in a fresh process");
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--restore-only", &dir.path().display().to_string(), "--dim", &args.dim.to_string()])
        .output()
        .expect("restore process");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let [restored_rows, seconds, floats_per_row, hwm_kib] = fields[..] else {
        panic!("restore process failed: {}", String::from_utf8_lossy(&output.stderr));
    };
    // Raw bytes: each row's parameters and the optimizer moments it keeps, f32.
    let raw = restored_rows * floats_per_row * 4.0;
    println!("restore             {restored_rows:>9} rows  {seconds:>8.2} s");
    println!(
        "restore peak RSS    {:>8.0} MiB against {:.0} MiB raw parameters + optimizer state ({:.2}x)",
        hwm_kib / 1024.0,
        raw / 1048576.0,
        hwm_kib * 1024.0 / raw
    );
}
