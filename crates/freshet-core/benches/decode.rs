//! What a consumer does with every message: decode and validate it, then
//! key it for the trainer. `decode_into` (the consumer's path: straight
//! into a batch's `KeyedEvents`, text borrowed from the payload) against
//! `decode` to an owned `Feedback` followed by `KeyedEvents::push` (the path
//! before it), on the same synthetic messages in each format, batches of
//! 1,000 as the consumer makes them.
//!
//! `cargo bench --workspace --bench decode`

// `criterion_group!` generates a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{ContentType, Decoder, KeyedEvents, encode};

const MESSAGES: usize = 20_000;
const BATCH: usize = 1_000;
const START_MS: i64 = 1_764_400_000_000;

fn bench(c: &mut Criterion) {
    let decoder = Decoder::default();
    let now = START_MS + MESSAGES as i64;
    let mut stream = SynthStream::new(SynthConfig { click_features: 3, ..SynthConfig::default() });
    let events: Vec<_> = (0..MESSAGES).map(|i| stream.next_event_at(START_MS + i as i64)).collect();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for format in [ContentType::Json, ContentType::Bincode] {
        let payloads: Vec<Vec<u8>> = events.iter().map(|event| encode(event, format)).collect();
        let header = Some(format.mime().as_bytes());
        let name = if format == ContentType::Json { "json" } else { "bincode" };
        group.bench_function(format!("{name}/decode_into"), |b| {
            let mut keyed = KeyedEvents::new();
            b.iter(|| {
                for batch in payloads.chunks(BATCH) {
                    keyed = KeyedEvents::new();
                    for payload in batch {
                        decoder.decode_into(black_box(payload), header, now, &mut keyed).expect("valid");
                    }
                }
                black_box(&keyed);
            })
        });
        group.bench_function(format!("{name}/decode_then_push"), |b| {
            let mut keyed = KeyedEvents::new();
            b.iter(|| {
                for batch in payloads.chunks(BATCH) {
                    let decoded: Vec<_> = batch
                        .iter()
                        .map(|payload| decoder.decode(black_box(payload), header, now).expect("valid"))
                        .collect();
                    keyed = KeyedEvents::new();
                    for event in &decoded {
                        keyed.push(event);
                    }
                }
                black_box(&keyed);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
