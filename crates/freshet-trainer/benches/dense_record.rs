//! The dense state a checkpoint writes every time: encoded and decoded as
//! the layout-4 explicit record (`DenseState::write_record`) against layout
//! 3's bincode of the serde derives, in one run, with full metric windows
//! (the default 10,000 events per head) and clicks spread over the AUC bins.

// `criterion_group!` generates a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use freshet_core::ModelSpec;
use freshet_core::record::{RecordReader, RecordWriter};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_trainer::{DenseState, Trainer, TrainerConfig};

fn dense_state() -> DenseState {
    let mut trainer = Trainer::new(ModelSpec::default(), TrainerConfig::default()).expect("trainer");
    let mut stream = SynthStream::new(SynthConfig { users: 5_000, items: 2_000, ..SynthConfig::default() });
    for batch in 0..100 {
        let events: Vec<_> = (0..500).map(|i| stream.next_event_at(1_764_400_000_000 + batch * 500 + i)).collect();
        trainer.train_batch(&events);
    }
    trainer.export_state().dense
}

fn record(dense: &DenseState) -> Vec<u8> {
    let mut writer = RecordWriter::default();
    dense.write_record(&mut writer);
    writer.into_bytes()
}

fn bench(c: &mut Criterion) {
    let dense = dense_state();
    let config = bincode::config::standard();
    let layout_4 = record(&dense);
    let layout_3 = bincode::serde::encode_to_vec(&dense, config).expect("encodes");
    println!("dense state bytes: layout 4 {}, layout 3 {}", layout_4.len(), layout_3.len());
    let mut group = c.benchmark_group("dense_state");
    group.bench_function("encode/layout_4_record", |b| b.iter(|| record(black_box(&dense))));
    group.bench_function("encode/layout_3_bincode", |b| {
        b.iter(|| bincode::serde::encode_to_vec(black_box(&dense), config).expect("encodes"))
    });
    group.bench_function("decode/layout_4_record", |b| {
        b.iter(|| DenseState::read_record(&mut RecordReader::new(black_box(&layout_4), "dense")).expect("decodes"))
    });
    group.bench_function("decode/layout_3_bincode", |b| {
        b.iter(|| bincode::serde::decode_from_slice::<DenseState, _>(black_box(&layout_3), config).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
