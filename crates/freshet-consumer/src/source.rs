//! The Kafka source: a consumer-group member on its own thread that decodes and
//! validates messages, routes rejects to the dead-letter topic and hands
//! micro-batches to its reader over a bounded channel (a slow reader slows
//! reading; memory stays bounded).
//!
//! Offsets are never auto-committed. Partitions start from an explicit
//! offsets map when it has them (a checkpoint's offsets), else as
//! [`StartFrom`] says. The reader calls [`Source::acknowledge`] once the
//! offsets of a batch are durable on its side; that updates where a partition
//! resumes after a rebalance and commits them to the group for lag tools.
//! A revocation first hands over the open batch, then a [`Revocation`] the
//! reader acknowledges (after checkpointing) before the partitions are let go.
//! A consumer librdkafka gives up on (a fatal error) is replaced the same
//! way: its partitions are handed back as revoked, then a new member joins.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use freshet_core::exchange::{Channel, ExchangeTag};
use freshet_core::grads::decode_gradients;
use freshet_core::offsets::{NextOffsets, TopicPartition, describe};
use freshet_core::{CONTENT_TYPE_HEADER, Decoder, Rejection, now_ms};
use freshet_kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::batch::{BatchBuilder, MicroBatch, Received};
use crate::config::{ConsumerConfig, StartFrom};
use crate::dlq::{DeadLetters, SourcePosition};
use crate::error::ConsumerError;

/// How long a poll waits when no batch is open.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Messages read between two readings of the clocks and two looks at the
/// requests of other threads (acknowledgements, rewinds): reading the
/// clocks for every message took a tenth of the consumer thread.
const MESSAGES_PER_LOOK: u32 = 64;
/// How often a blocked hand-over re-checks for shutdown.
const HANDOVER_RETRY: Duration = Duration::from_millis(5);

/// What the source tells its reader, in order.
#[derive(Debug)]
pub enum SourceEvent {
    /// These partitions were assigned to this member.
    Assigned(Vec<TopicPartition>),
    /// A micro-batch of consumed messages.
    Batch(MicroBatch),
    /// These partitions are being taken away; every batch of theirs was
    /// handed over before this. Acknowledge once their state is durable.
    Revoked(Revocation),
    /// A [`Acknowledger::rewind`] took effect: every batch before this one
    /// was read before it (drop them), every batch after it reads from the
    /// offsets rewound to.
    Rewound,
}

/// A pending revocation; the partitions are let go once it is acknowledged
/// (or dropped, or the revoke timeout passes).
#[derive(Debug)]
pub struct Revocation {
    /// The partitions being revoked.
    pub partitions: Vec<TopicPartition>,
    done: Option<std_mpsc::SyncSender<()>>,
}

impl Revocation {
    /// Lets the partitions go.
    pub fn acknowledge(self) {
        if let Some(done) = self.done {
            // The source may have stopped waiting (timeout or shutdown); nothing to do then.
            let _ = done.send(());
        }
    }
}

/// Acknowledges durable offsets to a [`Source`]; cheap to clone.
#[derive(Clone)]
pub struct Acknowledger {
    shared: Arc<Shared>,
    commits: std_mpsc::Sender<NextOffsets>,
}

impl Acknowledger {
    /// See [`Source::acknowledge`].
    pub fn acknowledge(&self, offsets: &NextOffsets) {
        advance(&mut lock(&self.shared.resume), offsets);
        // The thread may already have stopped; the resume map is updated regardless.
        let _ = self.commits.send(offsets.clone());
    }

    /// Moves reading back (or anywhere) to `to`, for a rollback that trains
    /// events again: the consumer thread drops its open batch, seeks each
    /// assigned partition of `to` there (one not assigned starts there when
    /// it is) and then sends [`SourceEvent::Rewound`]. A seek that fails
    /// stops the source with the error.
    pub fn rewind(&self, to: &NextOffsets) {
        *lock(&self.shared.rewind) = Some(to.clone());
    }

    /// How many consumers the source replaced after librdkafka gave up on
    /// one (a fatal error), since it started.
    pub fn consumers_replaced(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    /// How many partitions the source reads now: assigned and not revoked,
    /// as the reader is told ([`SourceEvent::Assigned`] comes after the
    /// count grows, [`SourceEvent::Revoked`] after it shrinks).
    pub fn partitions_assigned(&self) -> usize {
        lock(&self.shared.assigned).len()
    }
}

/// What a source reads beyond its configuration: for one shard of a sharded
/// model, a fixed set of partitions instead of the group's, and the topics
/// the other shards send on.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    /// Read exactly these partitions (assigned directly, never rebalanced;
    /// the group only keeps the acknowledged offsets for lag tools); `None`:
    /// subscribe to the configured topics as a group member.
    pub partitions: Option<Vec<TopicPartition>>,
    /// The exchange topics among those partitions, whose messages become
    /// [`Received`] instead of events.
    pub exchange: Option<ExchangeTopics>,
}

/// The topics shards of one model send each other on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeTopics {
    /// Forwarded events (`freshet.route.<model>`).
    pub route: String,
    /// Gradient sums (`freshet.grads.<model>`).
    pub grads: String,
}

impl ExchangeTopics {
    /// The channel `topic` is, if it is one of these.
    pub fn channel_of(&self, topic: &str) -> Option<Channel> {
        match topic {
            t if t == self.route => Some(Channel::Route),
            t if t == self.grads => Some(Channel::Grads),
            _ => None,
        }
    }
}

/// A running Kafka source.
pub struct Source {
    shared: Arc<Shared>,
    acknowledger: Acknowledger,
    finished: std_mpsc::Receiver<Result<(), ConsumerError>>,
    thread: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl Source {
    /// Joins the group and starts consuming. `start` holds explicit next
    /// offsets (from a checkpoint); other partitions start as configured.
    pub fn start(
        kafka: &KafkaConfig,
        config: &ConsumerConfig,
        decoder: Decoder,
        start: NextOffsets,
    ) -> Result<(Source, mpsc::Receiver<SourceEvent>), ConsumerError> {
        Source::start_with(kafka, config, decoder, start, ReadPlan::default())
    }

    /// [`Source::start`] reading what `plan` says.
    pub fn start_with(
        kafka: &KafkaConfig,
        config: &ConsumerConfig,
        decoder: Decoder,
        start: NextOffsets,
        plan: ReadPlan,
    ) -> Result<(Source, mpsc::Receiver<SourceEvent>), ConsumerError> {
        kafka.check()?;
        config.check()?;
        let (events, reader) = mpsc::channel(config.channel_capacity);
        let pipeline = Pipeline {
            builder: BatchBuilder::new(config.batch_max_messages, config.batch_max_age()),
            dead_letters: DeadLetters::new(kafka, config)?,
            events: Some(events),
            decoder,
            exchange: plan.exchange,
            reader_gone: false,
        };
        let shared = Arc::new(Shared {
            pipeline: Mutex::new(pipeline),
            resume: Mutex::new(start),
            rewind: Mutex::new(None),
            start_from: config.start_from,
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            revoke_timeout: Duration::from_millis(config.revoke_timeout_ms),
            assigned: Mutex::new(BTreeSet::new()),
            replaced: AtomicU64::new(0),
        });
        let connector = Connector::new(kafka, config, plan.partitions);
        let consumer = connector.connect(&shared)?;

        let (acknowledged, commits) = std_mpsc::channel();
        let (finish, finished) = std_mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("freshet-source".to_owned())
            .spawn(move || {
                let (result, consumer) = consume(consumer, &connector, &thread_shared, &commits);
                let closing = Instant::now();
                drop(consumer);
                debug!(elapsed_ms = closing.elapsed().as_millis() as u64, "consumer closed");
                // Acknowledgers keep the shared state alive: close the channel explicitly.
                lock(&thread_shared.pipeline).events = None;
                let _ = finish.send(result);
            })
            .map_err(ConsumerError::Spawn)?;
        Ok((
            Source {
                acknowledger: Acknowledger { shared: Arc::clone(&shared), commits: acknowledged },
                shared,
                finished,
                thread: Some(thread),
                shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            },
            reader,
        ))
    }

    /// Tells the source that the state reflecting `offsets` is durable: a
    /// partition assigned again later resumes there, and the offsets are
    /// committed to the group so that lag tools see them.
    pub fn acknowledge(&self, offsets: &NextOffsets) {
        self.acknowledger.acknowledge(offsets);
    }

    /// See [`Acknowledger::partitions_assigned`].
    pub fn partitions_assigned(&self) -> usize {
        self.acknowledger.partitions_assigned()
    }

    /// A handle for acknowledging from another thread than the one that stops the source.
    pub fn acknowledger(&self) -> Acknowledger {
        self.acknowledger.clone()
    }

    /// Stops consuming: the open batch is handed over if the reader has room,
    /// the consumer leaves the group, and the thread is joined. Gives up after
    /// the shutdown timeout rather than hanging.
    pub fn stop(mut self) -> Result<(), ConsumerError> {
        self.shared.stop.store(true, Ordering::Release);
        let result = match self.finished.recv_timeout(self.shutdown_timeout) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                warn!(timeout_ms = self.shutdown_timeout.as_millis() as u64, "consumer shutdown timed out");
                return Err(ConsumerError::ShutdownTimedOut(self.shutdown_timeout.as_millis() as u64));
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(ConsumerError::Panicked),
        };
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| ConsumerError::Panicked)?;
        }
        result
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// State shared by the consumer thread and the rebalance callbacks it runs.
struct Shared {
    pipeline: Mutex<Pipeline>,
    resume: Mutex<NextOffsets>,
    /// A rewind asked for and not done yet.
    rewind: Mutex<Option<NextOffsets>>,
    start_from: StartFrom,
    stop: AtomicBool,
    failure: Mutex<Option<ConsumerError>>,
    revoke_timeout: Duration,
    /// The partitions assigned and not handed back yet (as the reader was told).
    assigned: Mutex<BTreeSet<TopicPartition>>,
    /// Consumers replaced after a fatal error.
    replaced: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records `partitions` as assigned and tells the reader.
    fn took(&self, partitions: Vec<TopicPartition>) {
        info!(partitions = %describe(&partitions), "partitions assigned");
        lock(&self.assigned).extend(partitions.iter().cloned());
        lock(&self.pipeline).hand_over(SourceEvent::Assigned(partitions), &self.stop);
    }

    fn fail(&self, error: ConsumerError) {
        lock(&self.failure).get_or_insert(error);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decoding, dead-lettering and batching of consumed messages.
struct Pipeline {
    builder: BatchBuilder,
    dead_letters: DeadLetters,
    /// Dropped when the consumer thread ends, which closes the reader's channel.
    events: Option<mpsc::Sender<SourceEvent>>,
    decoder: Decoder,
    /// The exchange topics, for a shard of a sharded model.
    exchange: Option<ExchangeTopics>,
    reader_gone: bool,
}

/// A header's value by name (case-insensitive), if the message has it.
fn header_value<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers()?.iter().find(|h| h.key.eq_ignore_ascii_case(name)).and_then(|h| h.value)
}

impl Pipeline {
    /// Decodes `message` (validated against the clock `now_ms`) into the open
    /// batch, or dead-letters it.
    fn handle(&mut self, message: &BorrowedMessage<'_>, now_ms: i64) -> Result<(), ConsumerError> {
        let content_type = header_value(message, CONTENT_TYPE_HEADER);
        let payload = message.payload().unwrap_or_default();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let decoded = match self.exchange.as_ref().and_then(|exchange| exchange.channel_of(topic)) {
            None => self.builder.push_event(topic, partition, offset, |events| {
                self.decoder.decode_into(payload, content_type, now_ms, events)
            }),
            Some(Channel::Grads) => decode_gradients(payload)
                .map(|gradients| self.builder.push_received(topic, partition, offset, Received::Gradients(gradients)))
                .map_err(|error| Rejection::MalformedExchange { message: error.to_string() }),
            Some(Channel::Route) => ExchangeTag::from_headers(|name| header_value(message, name))
                .ok_or_else(|| Rejection::MalformedExchange { message: "no sender tag headers".to_owned() })
                .and_then(|tag| Ok((tag, self.decoder.decode_forwarded(payload, content_type)?)))
                .map(|(tag, event)| {
                    self.builder.push_received(topic, partition, offset, Received::Event { tag, event })
                }),
        };
        if let Err(rejection) = decoded {
            debug!(%topic, partition, offset, reason = %rejection.reason(), "message rejected");
            let from = SourcePosition { topic, partition, offset };
            self.dead_letters.send(from, message.key(), message.payload(), content_type, &rejection)?;
            self.builder.push_rejected(topic, partition, offset, rejection.reason());
        }
        Ok(())
    }

    /// Hands the open batch over once its dead letters are durable.
    fn flush(&mut self, stop: &AtomicBool) -> Result<(), ConsumerError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        self.dead_letters.flush(stop)?;
        let batch = self.builder.take();
        debug!(events = batch.events.len(), rejected = batch.rejected_count(), "batch ready");
        self.hand_over(SourceEvent::Batch(batch), stop);
        Ok(())
    }

    /// Sends an event to the reader, waiting for room unless shutting down.
    /// Returns whether it was delivered.
    fn hand_over(&mut self, mut event: SourceEvent, stop: &AtomicBool) -> bool {
        let Some(events) = &self.events else {
            self.reader_gone = true;
            return false;
        };
        loop {
            match events.try_send(event) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.reader_gone = true;
                    return false;
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if stop.load(Ordering::Acquire) {
                        return false;
                    }
                    event = back;
                    std::thread::sleep(HANDOVER_RETRY);
                }
            }
        }
    }
}

/// How a consumer of the source is made: the same settings each time.
struct Connector {
    client: ClientConfig,
    group_id: String,
    topics: Vec<String>,
    /// Partitions assigned directly instead of subscribing (a shard's).
    partitions: Option<Vec<TopicPartition>>,
}

impl Connector {
    fn new(kafka: &KafkaConfig, config: &ConsumerConfig, partitions: Option<Vec<TopicPartition>>) -> Self {
        let auto_offset_reset = match config.start_from {
            StartFrom::Latest => "latest",
            StartFrom::Committed | StartFrom::Earliest => "earliest",
        };
        let mut client = kafka.consumer_client();
        if let Some(instance) = &config.group_instance_id {
            client.set("group.instance.id", instance);
        }
        // Larger fetches keep the fetch pipeline ahead of decoding (measured:
        // ~265k msgs/s at librdkafka's 1 MiB default, ~400k at 4 MiB).
        if client.get("max.partition.fetch.bytes").is_none() {
            client.set("max.partition.fetch.bytes", "4194304");
        }
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", auto_offset_reset)
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false");
        Connector { client, group_id: config.group_id.clone(), topics: config.topics.clone(), partitions }
    }

    /// A new group member subscribed to the topics, or a consumer of the
    /// fixed partitions, each starting where [`SourceContext::position`] says.
    fn connect(&self, shared: &Arc<Shared>) -> Result<BaseConsumer<SourceContext>, ConsumerError> {
        let context = SourceContext { shared: Arc::clone(shared), retired: AtomicBool::new(false) };
        let consumer: BaseConsumer<SourceContext> = self.client.create_with_context(context)?;
        let Some(partitions) = &self.partitions else {
            let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics)?;
            info!(group = %self.group_id, topics = ?self.topics, "kafka source subscribed");
            return Ok(consumer);
        };
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for tp in partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        consumer.context().position(&mut tpl);
        consumer.assign(&tpl)?;
        shared.took(partitions.clone());
        Ok(consumer)
    }
}

/// How long to wait before trying again to make a consumer.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Runs [`consume_loop`] until it ends; a consumer librdkafka gives up on
/// (a fatal error: e.g. a static member fenced after a broker outage longer
/// than the session timeout) is replaced: its partitions are handed over as
/// revoked first (the reader checkpoints them, so the new member resumes
/// exactly where the state is), then a new member joins. Returns the result
/// and the consumer to close.
fn consume(
    mut consumer: BaseConsumer<SourceContext>,
    connector: &Connector,
    shared: &Arc<Shared>,
    commits: &std_mpsc::Receiver<NextOffsets>,
) -> (Result<(), ConsumerError>, BaseConsumer<SourceContext>) {
    loop {
        let error = match consume_loop(&consumer, shared, commits) {
            Err(ConsumerError::Fatal(error)) if !shared.stopping() => error,
            other => return (other, consumer),
        };
        warn!(%error, "the Kafka consumer failed for good; handing its partitions back and joining with a new one");
        consumer.context().retire();
        let fresh = loop {
            match connector.connect(shared) {
                Ok(fresh) => break fresh,
                Err(error) if !shared.stopping() => {
                    warn!(%error, "a new consumer could not be made; trying again");
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(error) => return (Err(error), consumer),
            }
        };
        close_in_background(std::mem::replace(&mut consumer, fresh));
        shared.replaced.fetch_add(1, Ordering::Relaxed);
    }
}

/// Closes a replaced consumer on a thread of its own: closing a member of a
/// group can take long (or hang) and nothing waits for it.
fn close_in_background(consumer: BaseConsumer<SourceContext>) {
    let closing = std::thread::Builder::new().name("freshet-source-close".to_owned()).spawn(move || drop(consumer));
    if let Err(error) = closing {
        warn!(%error, "no thread to close the replaced consumer on; it is leaked");
    }
}

fn consume_loop(
    consumer: &BaseConsumer<SourceContext>,
    shared: &Shared,
    commits: &std_mpsc::Receiver<NextOffsets>,
) -> Result<(), ConsumerError> {
    let mut clock = Clock::now();
    let mut messages = 0u32;
    while !shared.stopping() {
        if messages == 0 {
            if let Some(error) = lock(&shared.failure).take() {
                return Err(error);
            }
            while let Ok(offsets) = commits.try_recv() {
                commit(consumer, &offsets, CommitMode::Async);
            }
            let rewind = lock(&shared.rewind).take();
            if let Some(to) = rewind {
                rewind_to(consumer, shared, &to)?;
            }
        }
        let wait = lock(&shared.pipeline).builder.time_left(clock.at, IDLE_POLL);
        let polled = consumer.poll(wait);
        let mut pipeline = lock(&shared.pipeline);
        match polled {
            Some(Ok(message)) => {
                pipeline.handle(&message, clock.wall_ms)?;
                messages = (messages + 1) % MESSAGES_PER_LOOK;
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => return Err(ConsumerError::Fatal(error)),
            Some(Err(error)) => {
                warn!(%error, "kafka consumer error");
                messages = 0;
            }
            // The poll waited: look again now.
            None => messages = 0,
        }
        if messages == 0 {
            clock = Clock::now();
        }
        if pipeline.builder.is_due(clock.at) {
            pipeline.flush(&shared.stop)?;
        }
        if pipeline.reader_gone {
            info!("batch reader is gone; stopping the source");
            break;
        }
    }
    lock(&shared.pipeline).flush(&shared.stop)?;
    for offsets in commits.try_iter() {
        commit(consumer, &offsets, CommitMode::Sync);
    }
    Ok(())
}

/// The time as the consumer loop last read it: both clocks, read together
/// every [`MESSAGES_PER_LOOK`] messages and after every poll that waited.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// For batch ages.
    at: Instant,
    /// For the events' time window (epoch ms).
    wall_ms: i64,
}

impl Clock {
    fn now() -> Self {
        Clock { at: Instant::now(), wall_ms: now_ms() }
    }
}

/// How long one partition's seek may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the open batch, seeks the assigned partitions of `to` (the others
/// start there when assigned), and tells the reader with [`SourceEvent::Rewound`].
fn rewind_to(consumer: &BaseConsumer<SourceContext>, shared: &Shared, to: &NextOffsets) -> Result<(), ConsumerError> {
    let mut pipeline = lock(&shared.pipeline);
    let dropped = pipeline.builder.take();
    let assigned = consumer.assignment()?;
    for (tp, &next) in to {
        if assigned.find_partition(&tp.topic, tp.partition).is_some() {
            consumer.seek(&tp.topic, tp.partition, Offset::Offset(next), SEEK_TIMEOUT)?;
        }
        lock(&shared.resume).insert(tp.clone(), next);
    }
    info!(
        partitions = to.len(),
        dropped_events = dropped.events.len(),
        to = %describe(&to.keys().cloned().collect::<Vec<_>>()),
        "source rewound"
    );
    pipeline.hand_over(SourceEvent::Rewound, &shared.stop);
    Ok(())
}

fn commit(consumer: &BaseConsumer<SourceContext>, offsets: &NextOffsets, mode: CommitMode) {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (tp, &next) in offsets {
        if let Err(error) = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next)) {
            warn!(%tp, %error, "cannot commit offset");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        warn!(%error, "offset commit to the group failed (lag tools only; resume uses the checkpoint)");
    }
}

/// Moves each partition's resume position to its acknowledged offset; a
/// position never moves back (an acknowledgement that arrives late, after a
/// newer one, changes nothing).
fn advance(resume: &mut NextOffsets, acknowledged: &NextOffsets) {
    for (tp, &next) in acknowledged {
        let entry = resume.entry(tp.clone()).or_insert(next);
        *entry = (*entry).max(next);
    }
}

/// Where an assigned partition starts: at the offset the caller knows for it
/// (a checkpoint's, or one acknowledged since), else as `start_from` says;
/// `None` leaves it to the group's committed offset.
fn start_offset(known: Option<i64>, start_from: StartFrom) -> Option<Offset> {
    match (known, start_from) {
        (Some(next), _) => Some(Offset::Offset(next)),
        (None, StartFrom::Committed) => None,
        (None, StartFrom::Earliest) => Some(Offset::Beginning),
        (None, StartFrom::Latest) => Some(Offset::End),
    }
}

/// Rebalance callbacks, run by librdkafka inside `poll` on the consumer thread.
struct SourceContext {
    shared: Arc<Shared>,
    /// Set once the consumer is replaced: its callbacks then only let go.
    retired: AtomicBool,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            _ if self.retired.load(Ordering::Acquire) => consumer.unassign(),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position(tpl);
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                self.shared.took(partitions_of(tpl));
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.hand_over_revocation(partitions_of(tpl));
                if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() }
            }
            other => {
                warn!(error = ?other, "rebalance error; handing the assignment back");
                self.hand_back_all();
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            warn!(%error, "applying the rebalance failed");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            debug!(%error, partitions = offsets.count(), "group offset commit failed");
        }
    }
}

impl SourceContext {
    /// Hands back every partition still assigned (as revoked) and makes the
    /// consumer's callbacks only let go from now on: it is being replaced.
    fn retire(&self) {
        self.hand_back_all();
        self.retired.store(true, Ordering::Release);
    }

    /// Hands over a revocation of every partition the reader holds.
    fn hand_back_all(&self) {
        let partitions: Vec<TopicPartition> = lock(&self.shared.assigned).iter().cloned().collect();
        if !partitions.is_empty() {
            self.hand_over_revocation(partitions);
        }
    }

    /// Sets each assigned partition's start: the explicit offset if known,
    /// else as `start_from` says.
    fn position(&self, tpl: &mut TopicPartitionList) {
        let resume = lock(&self.shared.resume);
        for mut element in tpl.elements() {
            let tp = TopicPartition::new(element.topic(), element.partition());
            let Some(offset) = start_offset(resume.get(&tp).copied(), self.shared.start_from) else { continue };
            if let Err(error) = element.set_offset(offset) {
                warn!(%tp, %error, "cannot set the start offset");
            }
        }
    }

    /// Hands over the open batch, then the revocation, and waits for the
    /// reader's acknowledgement (not while shutting down: the reader then
    /// checkpoints after the channel closes).
    fn hand_over_revocation(&self, partitions: Vec<TopicPartition>) {
        info!(partitions = %describe(&partitions), "partitions revoked");
        {
            let mut assigned = lock(&self.shared.assigned);
            for tp in &partitions {
                assigned.remove(tp);
            }
        }
        let stop = &self.shared.stop;
        let mut pipeline = lock(&self.shared.pipeline);
        if let Err(error) = pipeline.flush(stop) {
            self.shared.fail(error);
            return;
        }
        let (done, acknowledged) = std_mpsc::sync_channel(1);
        let revocation = Revocation { partitions, done: Some(done) };
        let delivered = pipeline.hand_over(SourceEvent::Revoked(revocation), stop);
        drop(pipeline);
        if delivered && !self.shared.stopping() {
            match acknowledged.recv_timeout(self.shared.revoke_timeout) {
                Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    warn!(
                        timeout_ms = self.shared.revoke_timeout.as_millis() as u64,
                        "revocation not acknowledged in time"
                    );
                }
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_positions_only_move_forward() {
        let tp = |partition| TopicPartition::new("t", partition);
        let mut resume = NextOffsets::from([(tp(0), 10), (tp(1), 5)]);
        advance(&mut resume, &NextOffsets::from([(tp(0), 12), (tp(1), 3), (tp(2), 7)]));
        assert_eq!(resume, NextOffsets::from([(tp(0), 12), (tp(1), 5), (tp(2), 7)]));
        advance(&mut resume, &NextOffsets::new());
        assert_eq!(resume[&tp(0)], 12);
    }

    #[test]
    fn a_known_offset_wins_over_every_start_policy() {
        let cases = [
            (Some(7), StartFrom::Committed, Some(Offset::Offset(7))),
            (Some(7), StartFrom::Earliest, Some(Offset::Offset(7))),
            (Some(0), StartFrom::Latest, Some(Offset::Offset(0))),
            (None, StartFrom::Committed, None),
            (None, StartFrom::Earliest, Some(Offset::Beginning)),
            (None, StartFrom::Latest, Some(Offset::End)),
        ];
        for (known, start_from, expected) in cases {
            assert_eq!(start_offset(known, start_from), expected, "{known:?} {start_from:?}");
        }
    }
}
