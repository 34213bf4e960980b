//! Follows a model's snapshot topic on a thread: finds the newest full
//! snapshot, applies the deltas after it in order, and keeps up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use freshet_core::snapshot::{ChunkView, SnapshotHeader, SnapshotKind, Watermark, decode_commit};
use freshet_core::threads::join_within;
use freshet_kafka::{ClusterProbe, ClusterStatus, KafkaConfig};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::assemble::{Assembler, AssemblyError, Completed, Fed};
use crate::chain::{Plan, plan, reload_from};
use crate::inflight::{Answering, InFlight};
use crate::model::{ApplyError, Builder, DEFAULT_CANDIDATES, ServingModel};
use crate::read_ahead::{Claim, Draft, Progress};
use crate::swap::{LiveModel, Retired};

/// Priority of the thread that applies snapshots (see [`lower_priority`]).
const APPLY_PRIORITY: u8 = 25;
/// How long one poll waits.
const POLL: Duration = Duration::from_millis(100);
/// How long one poll of the committed stream waits while a read-ahead
/// consumer runs beside it (whose messages are taken between two polls).
const POLL_READING_AHEAD: Duration = Duration::from_millis(5);
/// Most read-ahead messages taken between two polls of the committed stream.
const READ_AHEAD_BURST: usize = 64;
/// Messages read back from the end first when looking for the newest chain
/// (the last message is usually a commit record; chunks are up to 512 KiB,
/// so a wide first window reads megabytes for nothing).
const FIRST_WINDOW: i64 = 4;
/// How long a backward scan waits for one window's end.
const SCAN_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and what to follow.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The Kafka connection (bootstrap servers, security settings).
    pub kafka: KafkaConfig,
    /// The snapshot topic.
    pub topic: String,
    /// Candidates a top-k scores exactly, at least (see [`ServingModel::top_k`]).
    pub top_k_candidates: usize,
    /// Whether a second consumer reads deltas before their transaction
    /// commits, so that a delta is decoded and applied to a version not yet
    /// served while the publisher waits for its checkpoint; it is served
    /// only once the committed stream delivers the same snapshot complete.
    /// Full snapshots always take the committed path.
    pub read_ahead: bool,
}

impl SubscriberConfig {
    /// Follows `topic` on `kafka` (a [`KafkaConfig`], or bootstrap servers
    /// alone) with the default settings.
    pub fn new(kafka: impl Into<KafkaConfig>, topic: impl Into<String>) -> Self {
        SubscriberConfig {
            kafka: kafka.into(),
            topic: topic.into(),
            top_k_candidates: DEFAULT_CANDIDATES,
            read_ahead: true,
        }
    }
}

/// Something the subscriber did with a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SubscriberEvent {
    /// A snapshot now serves.
    Applied(SwapReport),
    /// A complete snapshot that was not needed.
    Skipped {
        /// Its version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Messages or a snapshot that could not be used.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Which kind of snapshot a swap applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapKind {
    /// A full snapshot.
    Full,
    /// A delta.
    Delta,
}

impl SwapKind {
    /// `full` or `delta`, as JSON and metric labels write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SwapKind::Full => "full",
            SwapKind::Delta => "delta",
        }
    }
}

impl std::fmt::Display for SwapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hot swap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwapReport {
    /// The shard whose chain the snapshot is (0 for an unsharded model).
    pub shard: u32,
    /// The version now served (of that shard's chain).
    pub version: u64,
    /// Full or delta.
    pub kind: SwapKind,
    /// Rows set.
    pub rows: u64,
    /// Rows removed.
    pub tombstones: u64,
    /// Bytes of header and chunks.
    pub bytes: usize,
    /// The checksum over the header and chunks, verified equal to the commit's.
    pub checksum: u64,
    /// Whether its rows (all, or its first chunks) were applied from
    /// messages read before its transaction committed (see
    /// [`SubscriberConfig::read_ahead`]).
    pub read_ahead: bool,
    /// Now minus the newest event time the version reflects (ms).
    pub freshness_ms: i64,
    /// Now minus when the publisher built it (ms).
    pub publish_to_apply_ms: i64,
    /// Source offsets covered.
    pub watermark: Watermark,
}

/// Counters of the subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SubscriberStats {
    /// Full snapshots applied.
    pub fulls_applied: u64,
    /// Deltas applied.
    pub deltas_applied: u64,
    /// Complete snapshots skipped.
    pub skipped: u64,
    /// Rejections (damaged, out of sequence, unusable).
    pub rejected: u64,
    /// Bytes of applied snapshots.
    pub bytes_applied: u64,
    /// Deltas built whole from messages read before their transaction committed.
    pub read_ahead_built: u64,
    /// Deltas served with rows applied (all, or their first chunks) from
    /// messages read before their transaction committed.
    pub read_ahead_applied: u64,
    /// Publish-to-apply latency of the newest swap (ms).
    pub last_publish_to_apply_ms: i64,
    /// Whether the subscriber has read everything every partition of the
    /// topic held when it began following (it reached their end, or read a
    /// message written after), even while snapshots keep coming.
    pub caught_up: bool,
}

/// Why the subscriber could not start.
#[derive(Debug, Error)]
pub enum SubscribeError {
    /// The Kafka client failed.
    #[error("snapshot consumer: {0}")]
    Kafka(#[from] KafkaError),
    /// The thread could not start.
    #[error("starting the subscriber thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running subscription: the live model plus the thread that updates it.
pub struct Subscriber {
    view: SubscriberView,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Asks the cluster whether it answers, for [`SubscriberView::cluster_answers`].
    _probe: ClusterProbe,
}

/// A cheap, cloneable read-only view of a subscription, for request handlers.
#[derive(Debug, Clone)]
pub struct SubscriberView {
    live: Arc<LiveModel>,
    stats: Arc<Mutex<SubscriberStats>>,
    in_flight: InFlight,
    /// `None` when no Kafka cluster feeds the model.
    cluster: Option<ClusterStatus>,
}

impl SubscriberView {
    /// A view of `live`, which something other than a [`Subscriber`] updates.
    pub fn of(live: Arc<LiveModel>) -> Self {
        SubscriberView { live, stats: Arc::default(), in_flight: InFlight::default(), cluster: None }
    }

    /// The same view, with readiness following `cluster`.
    #[cfg(test)]
    pub(crate) fn fed_by(mut self, cluster: ClusterStatus) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Whether the Kafka cluster the snapshots come from answered its newest
    /// metadata request (asked every second); `None` for a view that no
    /// cluster feeds ([`SubscriberView::of`]).
    pub fn cluster_answers(&self) -> Option<bool> {
        self.cluster.as_ref().map(ClusterStatus::answers)
    }

    /// The model served now (`None` until the first full snapshot applies).
    pub fn model(&self) -> Option<Arc<ServingModel>> {
        self.live.load()
    }

    /// The counters now.
    pub fn stats(&self) -> SubscriberStats {
        *self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a request being answered until the guard drops: the
    /// subscriber applies snapshots around requests that fill the cores.
    pub fn answering(&self) -> Answering {
        self.in_flight.enter()
    }
}

impl Subscriber {
    /// Starts following `config.topic`; `on_event` runs on the subscriber
    /// thread after each applied, skipped or rejected snapshot.
    pub fn start(
        config: &SubscriberConfig,
        on_event: impl FnMut(&SubscriberEvent) + Send + 'static,
    ) -> Result<Self, SubscribeError> {
        let live = Arc::new(LiveModel::default());
        let stats = Arc::new(Mutex::new(SubscriberStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, candidates) = (config.topic.clone(), config.top_k_candidates);
        let in_flight = InFlight::default();
        let probe = ClusterProbe::start(&config.kafka, |answers| {
            if answers {
                info!("the Kafka cluster of the snapshots answers");
            } else {
                warn!("the Kafka cluster of the snapshots does not answer: serving the version held, not ready");
            }
        })?;
        let view = SubscriberView {
            live: Arc::clone(&live),
            stats: Arc::clone(&stats),
            in_flight: in_flight.clone(),
            cluster: Some(probe.status()),
        };
        let config = config.clone();
        let (created, creation) = std::sync::mpsc::sync_channel(1);
        let stopping = Arc::clone(&stop);
        let run = move || {
            if let Err(error) = lower_priority() {
                debug!(error, "the subscriber thread keeps its priority");
            }
            // Made here, so that librdkafka's threads inherit the lowered priority.
            let consumers = consumer(&config, Isolation::Committed).and_then(|committed| {
                let ahead = config.read_ahead.then(|| consumer(&config, Isolation::Uncommitted)).transpose()?;
                Ok((committed, ahead))
            });
            let (consumer, ahead) = match consumers {
                Ok(consumers) => consumers,
                Err(error) => return drop(created.send(Err(error))),
            };
            let _ = created.send(Ok(()));
            let follower = Follower {
                consumer: Arc::new(consumer),
                ahead: ahead.map(Arc::new),
                committed_idle: false,
                topic,
                live,
                retired: Retired::default(),
                candidates,
                assembled: None,
                chains: Vec::new(),
                stats,
                in_flight,
                stop: stopping,
                on_event: Box::new(on_event),
            };
            follower.run();
        };
        let thread = std::thread::Builder::new().name("freshet-subscriber".to_owned()).spawn(run)?;
        let created = creation
            .recv()
            .unwrap_or_else(|_| Err(KafkaError::ClientCreation("the subscriber thread ended".to_owned())));
        if let Err(error) = created {
            let _ = thread.join();
            return Err(error.into());
        }
        Ok(Subscriber { view, stop, thread: Some(thread), _probe: probe })
    }

    /// The model served now (`None` until the first full snapshot applies).
    pub fn model(&self) -> Option<Arc<ServingModel>> {
        self.view.model()
    }

    /// The counters now.
    pub fn stats(&self) -> SubscriberStats {
        self.view.stats()
    }

    /// A read-only view for request handlers.
    pub fn view(&self) -> SubscriberView {
        self.view.clone()
    }

    /// Stops the thread, waiting at most `timeout`.
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && !join_within(thread, timeout)
        {
            warn!(?timeout, "the subscriber thread did not stop in time; leaving it");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Client context that reports reaching the end of the topic (an event
/// the follower asks for, to know it caught up) at debug level, not as an error.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            debug!(reason, "end of the snapshot topic");
        } else {
            tracing::error!(%error, reason, "snapshot consumer");
        }
    }
}

impl ConsumerContext for QuietEof {}

struct Follower {
    /// Shared, so a polled message (which borrows it) and the follower's
    /// other state can be used together.
    consumer: Arc<BaseConsumer<QuietEof>>,
    /// The read-ahead consumer (uncommitted messages), if reading ahead.
    ahead: Option<Arc<BaseConsumer<QuietEof>>>,
    /// Whether the committed consumer's last poll found nothing waiting.
    committed_idle: bool,
    topic: String,
    live: Arc<LiveModel>,
    /// Versions swapped out, freed here once their readers are done.
    retired: Retired,
    candidates: usize,
    /// The newest version of every shard's part: served once no shard is
    /// missing (at once for an unsharded model).
    assembled: Option<ServingModel>,
    /// Each partition's chain: partition `k` carries shard `k`'s snapshots.
    chains: Vec<Chain>,
    stats: Arc<Mutex<SubscriberStats>>,
    /// Requests being answered: the builder stands aside while they fill the cores.
    in_flight: InFlight,
    stop: Arc<AtomicBool>,
    on_event: Box<dyn FnMut(&SubscriberEvent) + Send>,
}

/// One partition of the snapshot topic as the follower reads it (chain
/// `k` is partition `k`).
struct Chain {
    assembler: Assembler,
    /// What is being done with the open snapshot.
    building: Option<Building>,
    /// Header offset of the full snapshot the served chain starts from.
    chain_start: Option<i64>,
    /// Header offsets of snapshots found damaged: never reload from them.
    rejected_headers: HashSet<i64>,
    /// Where reading goes on after a reassignment: past the newest message handled.
    position: Offset,
    /// Whether the end of the partition was reached at least once: the
    /// end-of-partition event, or a message at or past `end_at_start`.
    reached_end: bool,
    /// The partition's end offset when following began. librdkafka's
    /// end-of-partition event needs a fetch to come back empty, which never
    /// happens while snapshots come more often than its fetch wait (500 ms);
    /// a message at or past this offset also says everything there was
    /// when following began has been read.
    end_at_start: i64,
    /// Versions of this chain put together so far: a draft is adopted
    /// only onto the generation it was made on.
    generation: u64,
    /// Deltas read ahead of their commit.
    draft: Draft,
    /// Whether the read-ahead stopped at a full snapshot of this partition.
    ahead_paused: bool,
}

impl Chain {
    /// A chain read from `start` (the newest full snapshot's header), or
    /// from the beginning of a partition with none, whose end is at `end` now.
    fn new(start: Option<i64>, end: i64) -> Self {
        Chain {
            assembler: Assembler::new(),
            building: None,
            chain_start: None,
            rejected_headers: HashSet::new(),
            position: start.map_or(Offset::Beginning, Offset::Offset),
            reached_end: false,
            end_at_start: end,
            generation: 0,
            draft: Draft::default(),
            ahead_paused: false,
        }
    }

    /// The drafted builder of `done`, if it was read ahead on this chain's
    /// version now (see [`Draft::adopt`]).
    fn adopt(&mut self, done: &Completed) -> Option<Box<Builder>> {
        self.draft.adopt(done, self.generation)
    }
}

/// The open snapshot, by its [`Plan`].
enum Building {
    /// The next version, being built as chunks arrive; the first `drafted`
    /// chunks were applied already, read ahead.
    Apply { builder: Box<Builder>, drafted: u32 },
    /// The next version, already built from the same messages read ahead.
    Drafted,
    /// The served version again.
    Repeat,
    /// Not needed.
    Skip(&'static str),
    /// A delta on a version not served.
    Broken { base: u64, served: Option<u64> },
    /// Its content cannot be served; reported once it is complete.
    Failed(String),
}

/// Which messages a snapshot consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Those of committed transactions: the stream that decides what is served.
    Committed,
    /// Every message as it is written (see [`crate::read_ahead`]).
    Uncommitted,
}

impl Building {
    /// Applies `chunk` if this builds the version and the read-ahead did
    /// not apply it already (chunks come in order, from index 0).
    fn apply(&mut self, chunk: &ChunkView<'_>) -> Result<(), ApplyError> {
        match self {
            Building::Apply { builder, drafted } if chunk.index >= *drafted => builder.apply_view(chunk),
            _ => Ok(()),
        }
    }
}

/// The snapshot consumer of `config`.
fn consumer(config: &SubscriberConfig, isolation: Isolation) -> Result<BaseConsumer<QuietEof>, KafkaError> {
    consumer_config(config, isolation).create_with_context(QuietEof)
}

fn consumer_config(config: &SubscriberConfig, isolation: Isolation) -> ClientConfig {
    // The read-ahead holds less: it stops at full snapshots, and a delta
    // it has not applied yet is fetched again by the committed consumer.
    let (level, eof, queued_kbytes) = match isolation {
        Isolation::Committed => ("read_committed", "true", "8192"),
        Isolation::Uncommitted => ("read_uncommitted", "false", "2048"),
    };
    let mut client = config.kafka.consumer_client();
    client
        .set("group.id", format!("freshet-subscriber-{}-{}", std::process::id(), freshet_core::now_ms()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", level)
        .set("enable.partition.eof", eof)
        .set("fetch.message.max.bytes", (4 * 1024 * 1024).to_string())
        .set("fetch.max.bytes", (4 * 1024 * 1024).to_string())
        // Snapshots are applied as they arrive: a small read-ahead keeps
        // serving memory near the model's own size.
        .set("queued.max.messages.kbytes", queued_kbytes);
    client
}

/// Lowers the calling thread to nice 10 (thread-priority's 25 of 0–99):
/// requests come first, and it still gets a tenth of a core that requests
/// keep busy. (`SCHED_IDLE`, measured: no lower p99 while deltas apply,
/// and a busy core left it 120 versions behind.)
fn lower_priority() -> Result<(), String> {
    let value = thread_priority::ThreadPriorityValue::try_from(APPLY_PRIORITY).map_err(|error| error.to_owned())?;
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Crossplatform(value))
        .map_err(|error| error.to_string())
}

impl Follower {
    /// The counters, to update.
    fn stats(&self) -> MutexGuard<'_, SubscriberStats> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(mut self) {
        let starts = loop {
            match self.chain_starts() {
                Ok(starts) => break starts,
                Err(error) if !self.stopped() => {
                    warn!(%error, topic = %self.topic, "looking for the newest full snapshots; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(_) => return,
            }
        };
        info!(topic = %self.topic, ?starts, "following snapshots");
        self.chains = starts.into_iter().map(|(start, end)| Chain::new(start, end)).collect();
        if let Err(error) = self.assign() {
            warn!(%error, "assigning the snapshot topic");
            return;
        }
        while !self.stopped() {
            if !self.retired.is_empty() {
                let _ = self.in_flight.stand_aside();
                self.retired.collect();
            }
            let poll = match self.ahead.clone() {
                Some(ahead) => {
                    self.read_ahead(&ahead);
                    POLL_READING_AHEAD
                }
                None => POLL,
            };
            let consumer = Arc::clone(&self.consumer);
            let polled = consumer.poll(poll);
            self.committed_idle = polled.is_none();
            let Some(result) = polled else { continue };
            match result {
                Ok(message) => {
                    let Some(k) = self.chain_of(message.partition()) else { continue };
                    let chain = &mut self.chains[k];
                    chain.position = Offset::Offset(message.offset() + 1);
                    let past_start = message.offset() >= chain.end_at_start;
                    let fed = chain.assembler.feed(message.offset(), message.payload().unwrap_or_default());
                    self.handle(k, message.offset(), fed);
                    if past_start {
                        self.reached_end(k);
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(k) = self.chain_of(partition) {
                        self.reached_end(k);
                    }
                }
                Err(error) => warn!(%error, "snapshot consumer"),
            }
        }
    }

    /// Takes the messages the read-ahead consumer has (a bounded burst)
    /// past what the committed stream has handled into the drafts. A draft
    /// starts only while the committed stream has nothing waiting (its last
    /// poll found no message): catching up, both consumers read the same
    /// snapshots and the committed one would build them first.
    fn read_ahead(&mut self, ahead: &BaseConsumer<QuietEof>) {
        for _ in 0..READ_AHEAD_BURST {
            let message = match ahead.poll(Duration::ZERO) {
                None => return,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    debug!(%error, "snapshot read-ahead consumer");
                    continue;
                }
            };
            let Some(k) = self.chain_of(message.partition()) else { continue };
            let chain = &self.chains[k];
            if matches!(chain.position, Offset::Offset(next) if message.offset() < next) {
                continue;
            }
            let generation = chain.generation;
            let mut draft = std::mem::take(&mut self.chains[k].draft);
            let progress = draft.feed(message.offset(), message.payload().unwrap_or_default(), generation, |header| {
                if !self.committed_idle {
                    return None;
                }
                let _ = self.in_flight.stand_aside();
                match self.check_shard(k, header).map(|()| self.plan(k, header)) {
                    Ok(Building::Apply { builder, .. }) => Some(builder),
                    _ => None,
                }
            });
            self.chains[k].draft = draft;
            match progress {
                Progress::Ready => {
                    self.stats().read_ahead_built += 1;
                }
                Progress::Full => self.pause_ahead(ahead, k),
                Progress::Nothing => {}
            }
        }
    }

    /// Stops the read-ahead of partition `k` at a full snapshot (the
    /// committed stream reads it; fetching it twice costs the serving core
    /// and the read-ahead's queue), until [`Follower::resume_ahead`].
    fn pause_ahead(&mut self, ahead: &BaseConsumer<QuietEof>, k: usize) {
        let mut partition = TopicPartitionList::new();
        partition.add_partition(&self.topic, k as i32);
        match ahead.pause(&partition) {
            Ok(()) => self.chains[k].ahead_paused = true,
            Err(error) => debug!(%error, "pausing the snapshot read-ahead"),
        }
    }

    /// After the committed stream finished a snapshot: a read-ahead paused
    /// at a full snapshot goes on from where the committed stream is.
    fn resume_ahead(&mut self) {
        if !self.chains.iter().any(|chain| chain.ahead_paused) {
            return;
        }
        if let Err(error) = self.assignment().and_then(|assignment| self.assign_ahead(&assignment)) {
            warn!(%error, "resuming the snapshot read-ahead");
        }
    }

    /// Notes that chain `k` read everything its partition held when following began.
    fn reached_end(&mut self, k: usize) {
        self.chains[k].reached_end = true;
        let caught_up = self.chains.iter().all(|chain| chain.reached_end);
        self.stats().caught_up |= caught_up;
    }

    fn chain_of(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition).ok().filter(|&k| k < self.chains.len())
    }

    /// Whether chain `k` may carry `header`: shard `k`'s snapshot, of a
    /// model of at most as many shards as the topic has partitions.
    fn check_shard(&self, k: usize, header: &SnapshotHeader) -> Result<(), String> {
        let (shard, shards, partitions) = (header.shard as usize, header.spec.shards as usize, self.chains.len());
        if shard != k {
            return Err(format!(
                "snapshot {} of shard {shard} on partition {k}: shard k publishes on partition k",
                header.version
            ));
        }
        if shards > partitions {
            return Err(format!(
                "snapshot {} of a model of {shards} shards on a topic of {partitions} partitions: the other shards' \
                 chains cannot be followed",
                header.version
            ));
        }
        Ok(())
    }

    fn handle(&mut self, k: usize, offset: i64, fed: Result<Fed, AssemblyError>) {
        match fed {
            Ok(Fed::Header(header)) => {
                let chain = &mut self.chains[k];
                let claim = chain.draft.claim(offset, chain.generation);
                let building = match (self.check_shard(k, &header), claim) {
                    (Err(reason), _) => Building::Failed(reason),
                    (Ok(()), Claim::Ready) => Building::Drafted,
                    (Ok(()), Claim::Partial { builder, applied }) => Building::Apply { builder, drafted: applied },
                    (Ok(()), Claim::Nothing) => {
                        // Starting a version copies its base's tables in one go: not while requests fill the cores.
                        let _ = self.in_flight.stand_aside();
                        self.plan(k, &header)
                    }
                };
                let chain = &mut self.chains[k];
                if !matches!(building, Building::Apply { .. }) {
                    chain.assembler.skip_rows();
                }
                chain.building = Some(building);
            }
            Ok(Fed::Chunk(chunk)) => {
                let chain = &mut self.chains[k];
                if let Some(building) = &mut chain.building
                    && let Err(error) = building.apply(&chunk)
                {
                    chain.building = Some(Building::Failed(format!("snapshot {}: {error}", chunk.version)));
                    chain.assembler.skip_rows();
                }
            }
            Ok(Fed::Skipped) => {}
            Ok(Fed::Complete(done)) => {
                self.complete(k, done);
                self.resume_ahead();
            }
            Err(error) => {
                let chain = &mut self.chains[k];
                chain.building = None;
                if let AssemblyError::Damaged { header_offset, .. } = &error {
                    chain.rejected_headers.insert(*header_offset);
                }
                self.reject(error.to_string());
                self.resume_ahead();
            }
        }
    }

    /// What to do with `header`, a snapshot of `shard`'s chain.
    fn plan(&self, shard: usize, header: &SnapshotHeader) -> Building {
        let assembled = self.assembled.as_ref();
        let served = assembled.and_then(|model| model.shard_version(shard as u32));
        let apply = |builder: Builder| Building::Apply {
            builder: Box::new(builder.standing_aside_for(self.in_flight.clone())),
            drafted: 0,
        };
        match plan(served, header.kind, header.version) {
            Plan::Full => Builder::full(header, assembled, self.candidates)
                .map_or_else(|error| Building::Failed(format!("full snapshot {}: {error}", header.version)), apply),
            Plan::Delta => match assembled {
                Some(base) => Builder::delta(header, base)
                    .map_or_else(|error| Building::Failed(format!("delta {}: {error}", header.version)), apply),
                None => Building::Skip("no full snapshot served yet"),
            },
            Plan::Repeat => Building::Repeat,
            Plan::Skip(reason) => Building::Skip(reason),
            Plan::Broken { base } => Building::Broken { base, served },
        }
    }

    fn complete(&mut self, k: usize, done: Completed) {
        let version = done.header.version;
        match self.chains[k].building.take() {
            Some(Building::Apply { builder, drafted }) => {
                let shard = done.header.shard;
                let served = self.assembled.as_ref().and_then(|model| model.shard_version(shard));
                if done.header.kind == SnapshotKind::Full && served.is_some_and(|served| served > version) {
                    warn!(shard, served, version, "a full snapshot of an older version: the model was reset");
                }
                let model = (*builder).finish_onto(self.assembled.as_ref(), done.chain_start_offset);
                self.put_together(k, &done, model, drafted > 0);
            }
            Some(Building::Drafted) => match self.chains[k].adopt(&done) {
                Some(builder) => {
                    let model = builder.finish_onto(self.assembled.as_ref(), done.chain_start_offset);
                    self.put_together(k, &done, model, true);
                }
                // The same offsets with other bytes: the log was rewritten under us.
                None => self.reject(format!(
                    "snapshot {version} at offset {}: the committed messages differ from those read ahead",
                    done.header_offset
                )),
            },
            Some(Building::Repeat) => {
                // The same version again (a publisher restart): same parameters, newer chain.
                self.chains[k].chain_start = Some(done.header_offset);
                self.skip(version, "version already served; following its chain");
            }
            Some(Building::Skip(reason)) => self.skip(version, reason),
            Some(Building::Broken { base, served }) => {
                self.reject(format!(
                    "delta {version} of shard {} needs version {base}, serving {served:?}: chain broken",
                    done.header.shard
                ));
                self.reload(k);
            }
            Some(Building::Failed(reason)) => {
                if done.header.kind == SnapshotKind::Full {
                    self.chains[k].rejected_headers.insert(done.header_offset);
                }
                self.reject(reason);
            }
            None => self.reject(format!("snapshot {version} completed without a header")),
        }
    }

    /// Makes `model`, the version `done` built on chain `k`, the newest
    /// one, and serves it once no shard is missing.
    fn put_together(&mut self, k: usize, done: &Completed, model: ServingModel, read_ahead: bool) {
        if read_ahead {
            self.stats().read_ahead_applied += 1;
        }
        if done.header.kind == SnapshotKind::Full {
            self.chains[k].chain_start = Some(done.header_offset);
        }
        let missing = model.missing_shards();
        let previous = missing.is_empty().then(|| self.live.store(model.clone()));
        self.assembled = Some(model);
        self.chains[k].generation += 1;
        match previous {
            Some(previous) => {
                // Freeing a version is one go too.
                let _ = self.in_flight.stand_aside();
                self.retired.push(previous);
                self.applied(done, read_ahead);
            }
            None => {
                self.skip(done.header.version, &format!("waiting for the first full snapshot of shards {missing:?}"))
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// After a broken chain on partition `k`: seek it to its newest full
    /// snapshot if that is not the one served (else the next full snapshot
    /// repairs the chain); the other partitions read on where they were.
    fn reload(&mut self, k: usize) {
        let partition = k as i32;
        let newest = self.newest_chain_start(partition);
        let chain = &mut self.chains[k];
        match newest.map(|newest| reload_from(newest, chain.chain_start, &chain.rejected_headers)) {
            Ok(Some(start)) => {
                info!(partition, start, "reloading from the newest full snapshot");
                chain.position = Offset::Offset(start);
                chain.assembler.reset();
            }
            Ok(_) => info!(partition, "waiting for the next full snapshot"),
            Err(error) => warn!(%error, partition, "looking for the newest full snapshot"),
        }
        if let Err(error) = self.assign() {
            warn!(%error, "assigning the snapshot topic again");
        }
    }

    fn applied(&mut self, snapshot: &Completed, read_ahead: bool) {
        let now = freshet_core::now_ms();
        let header = &snapshot.header;
        let report = SwapReport {
            shard: header.shard,
            version: header.version,
            kind: if header.kind == SnapshotKind::Full { SwapKind::Full } else { SwapKind::Delta },
            rows: header.rows.iter().sum(),
            tombstones: header.tombstones,
            bytes: snapshot.bytes,
            checksum: snapshot.checksum,
            read_ahead,
            freshness_ms: now.saturating_sub(header.watermark.newest_event_ms),
            publish_to_apply_ms: now.saturating_sub(header.created_ms),
            watermark: header.watermark.clone(),
        };
        debug!(?report, "snapshot applied");
        {
            let mut stats = self.stats();
            if header.kind == SnapshotKind::Full {
                stats.fulls_applied += 1;
            } else {
                stats.deltas_applied += 1;
            }
            stats.bytes_applied += snapshot.bytes as u64;
            stats.last_publish_to_apply_ms = report.publish_to_apply_ms;
        }
        (self.on_event)(&SubscriberEvent::Applied(report));
    }

    fn skip(&mut self, version: u64, reason: &str) {
        debug!(version, reason, "snapshot skipped");
        self.stats().skipped += 1;
        (self.on_event)(&SubscriberEvent::Skipped { version, reason: reason.to_owned() });
    }

    fn reject(&mut self, reason: String) {
        warn!(reason, "snapshot rejected");
        self.stats().rejected += 1;
        (self.on_event)(&SubscriberEvent::Rejected { reason });
    }

    /// Every partition at its chain's position.
    fn assignment(&self) -> Result<TopicPartitionList, KafkaError> {
        let mut assignment = TopicPartitionList::new();
        for (partition, chain) in self.chains.iter().enumerate() {
            assignment.add_partition_offset(&self.topic, partition as i32, chain.position)?;
        }
        Ok(assignment)
    }

    /// Assigns every partition at its chain's position, to the read-ahead
    /// consumer too.
    fn assign(&mut self) -> Result<(), KafkaError> {
        let assignment = self.assignment()?;
        self.consumer.assign(&assignment)?;
        self.assign_ahead(&assignment)
    }

    /// Assigns the read-ahead consumer `assignment`: its drafts start again
    /// there, none paused.
    fn assign_ahead(&mut self, assignment: &TopicPartitionList) -> Result<(), KafkaError> {
        for chain in &mut self.chains {
            chain.draft.reset();
            chain.ahead_paused = false;
        }
        match &self.ahead {
            Some(ahead) => ahead.assign(assignment).and_then(|()| ahead.resume(assignment)),
            None => Ok(()),
        }
    }

    /// The newest chain start of every partition of the topic (`None`
    /// where a partition has no commit record yet) and its end offset now.
    fn chain_starts(&mut self) -> Result<Vec<(Option<i64>, i64)>, KafkaError> {
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let partitions = match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => topic.partitions().len(),
            Some(topic) => {
                let code = topic.error().map_or(RDKafkaErrorCode::UnknownTopicOrPartition, RDKafkaErrorCode::from);
                return Err(KafkaError::MetadataFetch(code));
            }
            None => return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)),
        };
        (0..partitions as i32).map(|partition| self.newest_chain_start_and_end(partition)).collect()
    }

    /// The chain start named by the newest commit record of `partition`,
    /// reading backwards from the end in growing windows; `None` when it
    /// has none.
    fn newest_chain_start(&mut self, partition: i32) -> Result<Option<i64>, KafkaError> {
        self.newest_chain_start_and_end(partition).map(|(start, _)| start)
    }

    /// [`Follower::newest_chain_start`], and the partition's end offset it
    /// read back from.
    fn newest_chain_start_and_end(&mut self, partition: i32) -> Result<(Option<i64>, i64), KafkaError> {
        let (low, high) = self.consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10))?;
        let mut window = FIRST_WINDOW;
        loop {
            let from = (high - window).max(low);
            if let Some(start) = self.scan_for_commit(partition, from, high)? {
                return Ok((Some(start), high));
            }
            if from == low {
                return Ok((None, high));
            }
            window = window.saturating_mul(8);
        }
    }

    /// The chain start of the last commit record in `[from, until)` of
    /// `partition`, read with the consumer assigned to it alone.
    fn scan_for_commit(&mut self, partition: i32, from: i64, until: i64) -> Result<Option<i64>, KafkaError> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(from))?;
        self.consumer.assign(&assignment)?;
        let mut found = None;
        let deadline = Instant::now() + SCAN_TIMEOUT;
        while from < until && Instant::now() < deadline && !self.stopped() {
            match self.consumer.poll(POLL) {
                Some(Ok(message)) => {
                    if let Some(commit) = decode_commit(message.payload().unwrap_or_default()) {
                        found = Some(commit.chain_start_offset);
                    }
                    if message.offset() + 1 >= until {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    return Err(error);
                }
                Some(Err(error)) => warn!(%error, "scanning the snapshot topic"),
                None => {}
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::{TableKind, hash_id};

    use super::*;
    use crate::fixtures::{served_users, user_snapshot};

    /// A delta whose first chunk the read-ahead applied is finished by the
    /// committed stream from its next chunk on, every chunk applied once.
    #[test]
    fn a_handed_over_draft_is_finished_from_its_first_chunk_not_drafted() {
        let base = served_users(&[("u1", 0.5), ("u2", 0.5)]);
        let drafted = user_snapshot(2, SnapshotKind::Delta { base_version: 1 }, &[("u1", 2.0), ("u2", 3.0)]);
        let mut assembler = Assembler::new();
        let Ok(Fed::Header(header)) = assembler.feed(0, &drafted[0]) else { panic!("a header") };
        let mut builder = Box::new(Builder::delta(&header, &base).expect("on its base"));
        let Ok(Fed::Chunk(first)) = assembler.feed(1, &drafted[1]) else { panic!("a chunk") };
        builder.apply_view(&first).expect("applies");

        // The committed stream's copy of the first chunk, told apart here by
        // other values: passed over, as it was applied already.
        let other = user_snapshot(2, SnapshotKind::Delta { base_version: 1 }, &[("u1", 9.0), ("u2", 9.0)]);
        let mut committed = Assembler::new();
        let chunks: Vec<_> = (0..).zip(&other).map(|(offset, value)| committed.feed(offset, value)).collect();
        let mut building = Building::Apply { builder, drafted: 1 };
        for fed in &chunks {
            if let Ok(Fed::Chunk(chunk)) = fed {
                building.apply(chunk).expect("applies");
            }
        }
        let Building::Apply { builder, .. } = building else { unreachable!() };
        let model = builder.finish_onto(Some(&base), 0);
        let row = |id: &str| model.row(TableKind::User, hash_id(id)).expect("a user row");
        assert!(row("u1").iter().all(|&v| v == 2.0), "the drafted first chunk kept: {:?}", row("u1"));
        assert!(row("u2").iter().all(|&v| v == 9.0), "the second chunk applied: {:?}", row("u2"));
    }

    /// librdkafka's own backoff once the small read-ahead is full is a
    /// second per stall (see [`freshet_kafka::FETCH_QUEUE_BACKOFF_MS`]); a
    /// setting in the configuration wins.
    #[test]
    fn the_snapshot_consumer_fetches_again_soon_after_its_read_ahead_drains() {
        let default = consumer_config(&SubscriberConfig::new("127.0.0.1:9092", "snapshots"), Isolation::Committed);
        assert_eq!(default.get("fetch.queue.backoff.ms"), Some(freshet_kafka::FETCH_QUEUE_BACKOFF_MS));
        assert_eq!(default.get("queued.max.messages.kbytes"), Some("8192"));

        let mut kafka = KafkaConfig::new("127.0.0.1:9092");
        kafka.settings.insert("fetch.queue.backoff.ms".to_owned(), "250".to_owned());
        let configured = consumer_config(&SubscriberConfig::new(kafka, "snapshots"), Isolation::Committed);
        assert_eq!(configured.get("fetch.queue.backoff.ms"), Some("250"));
    }
}
