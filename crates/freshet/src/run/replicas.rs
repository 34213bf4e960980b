//! The thread that feeds a shard's read-only replicas: it reads the other
//! shards' snapshot chains (partition j of the snapshot topic is shard j's)
//! from their start, read_committed, and hands every snapshot that
//! completes intact to the trainer loop as a [`ReplicaDelta`]
//! (`freshet_subscriber::ReplicaDeltas`), which the loop applies between
//! batches (`Trainer::apply_replica`). Replica rows are never checkpointed,
//! so a restarted shard reads the chains again from their start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use freshet_core::Shard;
use freshet_core::threads::join_within;
use freshet_kafka::KafkaConfig;
use freshet_subscriber::{ReplicaDelta, ReplicaDeltas};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long one poll waits.
const POLL: Duration = Duration::from_millis(100);
/// Completed snapshots waiting for the trainer loop.
const QUEUE: usize = 4;

/// A running replica feed.
pub struct ReplicaFeed {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReplicaFeed {
    /// Starts reading every other shard's partition of `topic`.
    pub fn start(
        kafka: &KafkaConfig,
        topic: &str,
        shard: Shard,
    ) -> anyhow::Result<(Self, mpsc::Receiver<ReplicaDelta>)> {
        let mut client = kafka.consumer_client();
        client
            .set("group.id", format!("freshet-replicas-{topic}-shard-{}", shard.index()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("fetch.message.max.bytes", (4 * 1024 * 1024).to_string());
        let consumer: BaseConsumer = client.create().context("a consumer for the replicas")?;
        let mut partitions = TopicPartitionList::new();
        let others: Vec<u32> = (0..shard.count()).filter(|&j| j != shard.index()).collect();
        for &other in &others {
            partitions.add_partition_offset(topic, other as i32, Offset::Beginning)?;
        }
        consumer.assign(&partitions)?;
        info!(topic, shards = ?others, "replicas follow the other shards' snapshot chains");
        let (sender, receiver) = mpsc::channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("freshet-replicas".to_owned())
            .spawn(move || follow(&consumer, shard.count(), &sender, &thread_stop))
            .context("starting the replica feed")?;
        Ok((ReplicaFeed { stop, thread: Some(thread) }, receiver))
    }

    /// Stops the feed, waiting at most `timeout`.
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if !join_within(thread, timeout) {
                warn!("the replica feed did not stop in time");
            }
        }
    }
}

impl Drop for ReplicaFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Reads until told to stop or the loop is gone.
fn follow(consumer: &BaseConsumer, shards: u32, sender: &mpsc::Sender<ReplicaDelta>, stop: &AtomicBool) {
    let mut chains: Vec<ReplicaDeltas> = (0..shards).map(|_| ReplicaDeltas::new()).collect();
    while !stop.load(Ordering::Acquire) {
        let message = match consumer.poll(POLL) {
            None => continue,
            Some(Err(error)) => {
                warn!(%error, "reading the other shards' snapshots");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let Some(chain) = usize::try_from(message.partition()).ok().and_then(|p| chains.get_mut(p)) else { continue };
        match chain.feed(message.offset(), message.payload().unwrap_or_default()) {
            Ok(None) => {}
            Ok(Some(done)) if done.shard as i32 != message.partition() => {
                warn!(shard = done.shard, partition = message.partition(), "a snapshot of another shard's partition");
            }
            Ok(Some(done)) => {
                if sender.blocking_send(done).is_err() {
                    return; // the trainer loop is gone
                }
            }
            Err(error) => warn!(%error, partition = message.partition(), "a snapshot passed over"),
        }
    }
}
