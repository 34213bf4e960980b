//! The update loop: rating events per second through `Trainer::train_batch`
//! on a model of 1M users × 100k items (every row admitted beforehand), at
//! dim 16, 32 and 64 with micro-batches of 256, and at dim 32 across batch
//! sizes. Events are built before timing; the loop includes hashing ids,
//! progressive scoring, gradient sums and the optimizer steps.

// `criterion_group!` generates a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use freshet_core::ModelSpec;
use freshet_core::{Features, Feedback, Rating};
use freshet_trainer::{Trainer, TrainerConfig};

const USERS: u64 = 1_000_000;
const ITEMS: u64 = 100_000;
/// Events trained per timed iteration.
const EVENTS_PER_ITER: usize = 1 << 14;

/// A deterministic stream of ratings over all users and items (SplitMix64).
fn ratings(n: usize, seed: u64) -> Vec<Feedback> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|i| {
            let user = next() % USERS;
            let item = next() % ITEMS;
            Feedback::Rating(Rating {
                user: format!("u{user}"),
                item: format!("i{item}"),
                rating: 1.0 + (next() % 9) as f32 * 0.5,
                ts: 1_700_000_000_000 + i as i64,
                features: Features::new(),
            })
        })
        .collect()
}

/// A trainer with a row for every user and item.
fn populated(dim: usize) -> Trainer {
    let spec = ModelSpec { dim, ..ModelSpec::default() };
    let mut trainer = Trainer::new(spec, TrainerConfig::default()).expect("valid configuration");
    let all: Vec<Feedback> = (0..USERS)
        .map(|u| {
            Feedback::Rating(Rating {
                user: format!("u{u}"),
                item: format!("i{}", u % ITEMS),
                rating: 3.0,
                ts: 1_600_000_000_000,
                features: Features::new(),
            })
        })
        .collect();
    for batch in all.chunks(4096) {
        trainer.train_batch(batch);
    }
    trainer
}

fn bench(c: &mut Criterion, group_name: &str, cases: &[(usize, usize)]) {
    let events = ratings(EVENTS_PER_ITER * 8, 7);
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(EVENTS_PER_ITER as u64));
    group.sample_size(20);
    for &(dim, batch) in cases {
        let mut trainer = populated(dim);
        let mut offset = 0;
        group.bench_function(BenchmarkId::new(format!("dim{dim}"), format!("batch{batch}")), |b| {
            b.iter(|| {
                let slice = &events[offset..offset + EVENTS_PER_ITER];
                offset = (offset + EVENTS_PER_ITER) % events.len();
                for chunk in slice.chunks(batch) {
                    black_box(trainer.train_batch(chunk));
                }
            })
        });
    }
    group.finish();
}

fn update_loop(c: &mut Criterion) {
    bench(c, "update_loop", &[(16, 256), (32, 256), (64, 256)]);
}

fn batch_size(c: &mut Criterion) {
    bench(c, "batch_size", &[(32, 1), (32, 16)]);
}

criterion_group!(benches, update_loop, batch_size);
criterion_main!(benches);
