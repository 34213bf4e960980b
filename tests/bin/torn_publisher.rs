//! A publisher that dies mid-transaction: it opens a Kafka transaction under
//! a model's transactional id, sends a full snapshot's header and half of its
//! chunks, prints `ready`, and waits to be killed.
//!
//! Usage: `torn-publisher BOOTSTRAP MODEL`

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use freshet_core::now_ms;
use freshet_e2e::snapshots::{ModelUnderTest, raw_transactional, send_values, snapshot_topic};
use freshet_publisher::{HeaderContext, encode};
use rdkafka::producer::Producer;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (bootstrap, model) = (args.next().context("BOOTSTRAP")?, args.next().context("MODEL")?);
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(99);
    trained.train(4_000);
    let outgoing = trained.full(1);
    let spec = trained.trainer.spec().clone();
    let context = HeaderContext {
        model: &model,
        spec: &spec,
        shard: 0,
        created_ms: now_ms(),
        chain_start_offset: None,
        value_encoding: Default::default(),
    };
    let encoded = encode(&outgoing, context, config.chunk_bytes);
    anyhow::ensure!(encoded.chunks.len() >= 2, "the torn snapshot needs several chunks");
    let producer = raw_transactional(&bootstrap, &format!("freshet-publisher-{model}"))?;
    producer.begin_transaction()?;
    let mut values = vec![encoded.header_value.clone()];
    values.extend(encoded.chunks[..encoded.chunks.len() / 2].iter().cloned());
    send_values(&producer, &config.topic_for(&model), &values)?;
    println!("ready");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}
