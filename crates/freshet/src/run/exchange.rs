//! A shard's side of the exchange with the other shards of its model
//! (docs/scaling.md, "Exactly once across shards"):
//!
//! - [`ShardExchange`] holds the decisions, driven by the trainer loop: which
//!   received messages are new (the [`HighWater`] marks), which events are
//!   another shard's to train (forwarded), and what a checkpoint's outbox
//!   holds (the forwarded events and the gradient sums, in parts);
//! - [`ExchangeSender`] is the thread that sends each outbox, after its
//!   checkpoint is durable, in one Kafka transaction, and says which
//!   versions the broker has so the store can forget them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use freshet_consumer::Received;
use freshet_core::exchange::{
    Channel, ExchangeTag, HighWater, Outbox, OutboxMessage, grads_topic, route_topic, split_gradients,
};
use freshet_core::grads::{GradientsMessage, encode_gradients};
use freshet_core::threads::join_within;
use freshet_core::{CONTENT_TYPE_HEADER, ContentType, Feedback, Gradients, KeyedEvents, Shard, encode};
use freshet_kafka::{KafkaConfig, is_fenced, send_threaded};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tracing::{info, info_span, warn};

use super::metrics::RunMetrics;

/// Rows per gradient message part: at the widest rows (4 + 256 floats)
/// about 8 MiB, far less at usual widths; the topic takes 16 MiB records.
pub const ROWS_PER_PART: usize = 8_192;
/// Largest record the exchange topics take.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long one transaction (and the producer's initialisation) may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait before trying a failed outbox again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What one micro-batch's received messages hold that is new.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Events forwarded to this shard, new ones only.
    pub events: Vec<Feedback>,
    /// Gradient sums for this shard's rows, new ones only.
    pub gradients: Vec<Gradients>,
    /// Messages dropped as already applied, per channel.
    pub duplicates: BTreeMap<Channel, usize>,
    /// Gradient messages of another shard count, refused.
    pub refused: usize,
}

/// The exchange decisions of one shard; no I/O.
#[derive(Debug)]
pub struct ShardExchange {
    shard: Shard,
    high_water: HighWater,
    /// The events of this interval forwarded to other shards.
    forwarded: Vec<OutboxMessage>,
    /// The next route part number per receiver, this interval.
    next_part: BTreeMap<u32, u32>,
}

impl ShardExchange {
    /// Shard `shard`'s exchange, resuming with the marks of its checkpoint.
    pub fn new(shard: Shard, high_water: HighWater) -> Self {
        ShardExchange { shard, high_water, forwarded: Vec::new(), next_part: BTreeMap::new() }
    }

    /// The marks of everything applied so far.
    pub fn high_water(&self) -> &HighWater {
        &self.high_water
    }

    /// Sorts `received` into what is new (moving the marks past it) and
    /// what was applied before.
    pub fn admit(&mut self, received: Vec<Received>) -> Inbound {
        let mut inbound = Inbound::default();
        for message in received {
            if let Received::Gradients(gradients) = &message {
                if gradients.shards != self.shard.count() {
                    inbound.refused += 1;
                    continue;
                }
            }
            if !self.high_water.admit(message.channel(), message.tag()) {
                *inbound.duplicates.entry(message.channel()).or_default() += 1;
                continue;
            }
            match message {
                Received::Event { event, .. } => inbound.events.push(event),
                Received::Gradients(GradientsMessage { gradients, .. }) => inbound.gradients.push(gradients),
            }
        }
        inbound
    }

    /// Keeps the events whose user this shard owns and moves the others
    /// into the interval's outbox, for their owners; returns how many were
    /// forwarded.
    pub fn route(&mut self, events: &mut KeyedEvents) -> usize {
        let before = self.forwarded.len();
        events.retain(|event| {
            let owner = self.shard.owner(event.user);
            if owner == self.shard.index() {
                return true;
            }
            let part = self.next_part.entry(owner).or_default();
            let payload = encode(&event.to_feedback(), ContentType::Bincode);
            self.forwarded.push(OutboxMessage { channel: Channel::Route, to: owner, part: *part, payload });
            *part += 1;
            false
        });
        self.forwarded.len() - before
    }

    /// The outbox of checkpoint `version`: the events forwarded since the
    /// last one, then `gradients` (per owner, from the trainer) in parts of
    /// at most [`ROWS_PER_PART`] rows. Starts the next interval.
    pub fn outbox(&mut self, version: u64, gradients: Vec<(u32, Gradients)>) -> Vec<OutboxMessage> {
        let mut messages = std::mem::take(&mut self.forwarded);
        self.next_part.clear();
        for (owner, sums) in gradients {
            let parts = split_gradients(sums, ROWS_PER_PART);
            let count = parts.len() as u32;
            for (part, gradients) in (0u32..).zip(parts) {
                let message = GradientsMessage {
                    sender: self.shard.index(),
                    shards: self.shard.count(),
                    version,
                    part,
                    parts: count,
                    gradients,
                };
                messages.push(OutboxMessage {
                    channel: Channel::Grads,
                    to: owner,
                    part,
                    payload: encode_gradients(&message),
                });
            }
        }
        messages
    }
}

/// State the sender thread shares with the trainer loop.
#[derive(Default)]
struct Shared {
    /// Every outbox up to this version is committed to the broker.
    sent_through: AtomicU64,
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// The thread that sends outboxes, in order, each in one transaction.
pub struct ExchangeSender {
    outboxes: Option<mpsc::Sender<Outbox>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ExchangeSender {
    /// Starts the sender of shard `shard` of `model`, with the
    /// transactional id `freshet-exchange-<model>-shard-<k>` (so a second
    /// instance of the shard fences the first).
    pub fn spawn(kafka: &KafkaConfig, model: &str, shard: Shard, metrics: RunMetrics) -> anyhow::Result<Self> {
        let mut client = kafka.client();
        client
            .set("transactional.id", format!("freshet-exchange-{model}-shard-{}", shard.index()))
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis().to_string())
            .set("linger.ms", "5")
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
        let topics = Topics { route: route_topic(model), grads: grads_topic(model), sender: shard.index() };
        let shared = Arc::new(Shared::default());
        let (outboxes, incoming) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("freshet-exchange".to_owned())
            .spawn(move || send_loop(&client, &topics, &incoming, &thread_shared, &metrics))
            .context("starting the exchange sender")?;
        Ok(ExchangeSender { outboxes: Some(outboxes), shared, thread: Some(thread) })
    }

    /// Sends `outbox` after every one submitted before it.
    pub fn submit(&self, outbox: Outbox) {
        if let Some(outboxes) = &self.outboxes {
            // A stopped sender has reported why (failure); the outbox stays in the store.
            let _ = outboxes.send(outbox);
        }
    }

    /// Every outbox up to this version is with the broker.
    pub fn sent_through(&self) -> u64 {
        self.shared.sent_through.load(Ordering::Acquire)
    }

    /// Why the sender stopped, if it did (another instance of the shard took over).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends what is queued, waiting at most `timeout` (what is not sent
    /// stays in the store's outbox and goes out after the next start).
    pub fn close(&mut self, timeout: Duration) -> u64 {
        drop(self.outboxes.take());
        if let Some(thread) = self.thread.take() {
            if !join_within(thread, timeout) {
                self.shared.stop.store(true, Ordering::Release);
                warn!("the exchange sender did not finish in time; the rest is sent after the next start");
            }
        }
        self.sent_through()
    }
}

impl Drop for ExchangeSender {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Where the messages go.
struct Topics {
    route: String,
    grads: String,
    sender: u32,
}

type ExchangeProducer = ThreadedProducer<DefaultProducerContext>;

/// Sends every outbox that arrives, each until the broker has it: a failed
/// transaction is aborted and its producer replaced (a new producer with
/// the transactional id finishes whatever the old one left open), so an
/// outbox may reach the broker twice, never half (receivers drop the second
/// by its tags). Stops when the channel closes, when told to, or on a fence.
fn send_loop(
    client: &rdkafka::ClientConfig,
    topics: &Topics,
    incoming: &mpsc::Receiver<Outbox>,
    shared: &Shared,
    metrics: &RunMetrics,
) {
    let mut producer: Option<ExchangeProducer> = None;
    for outbox in incoming {
        let _span = info_span!("exchange_send", version = outbox.version, messages = outbox.messages.len()).entered();
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let attempt = match producer.take() {
                Some(ready) => Ok(ready),
                None => connect(client),
            }
            .and_then(|ready| match send(&ready, topics, &outbox) {
                Ok(()) => Ok(ready),
                Err(error) => Err((error, Some(ready))),
            });
            match attempt {
                Ok(ready) => {
                    producer = Some(ready);
                    shared.sent_through.store(outbox.version, Ordering::Release);
                    metrics.exchange_sent(outbox.version, &outbox);
                    break;
                }
                Err((error, _)) if is_fenced(&error) => {
                    let message = format!("fenced: another instance of this shard sends its exchange ({error})");
                    *shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
                    return;
                }
                Err((error, failed)) => {
                    warn!(%error, "the exchange transaction failed; trying again with a new producer");
                    if let Some(failed) = failed {
                        let _ = failed.abort_transaction(TRANSACTION_TIMEOUT);
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
}

/// A transactional producer, initialised (fencing any earlier one).
fn connect(client: &rdkafka::ClientConfig) -> Result<ExchangeProducer, (KafkaError, Option<ExchangeProducer>)> {
    let producer: ExchangeProducer = client.create().map_err(|error| (error, None))?;
    producer.init_transactions(TRANSACTION_TIMEOUT).map_err(|error| (error, None))?;
    info!("exchange producer ready");
    Ok(producer)
}

/// Sends `outbox` in one transaction and commits it.
fn send(producer: &ExchangeProducer, topics: &Topics, outbox: &Outbox) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for message in &outbox.messages {
        let partition = message.to as i32;
        let record = match message.channel {
            Channel::Route => {
                let tag: ExchangeTag = outbox.tag(topics.sender, message);
                let headers = tag.headers().into_iter().fold(
                    OwnedHeaders::new()
                        .insert(Header { key: CONTENT_TYPE_HEADER, value: Some(ContentType::Bincode.mime()) }),
                    |headers, (key, value)| headers.insert(Header { key, value: Some(&value) }),
                );
                BaseRecord::<(), [u8]>::to(&topics.route)
                    .partition(partition)
                    .payload(&message.payload[..])
                    .headers(headers)
            }
            Channel::Grads => BaseRecord::to(&topics.grads).partition(partition).payload(&message.payload[..]),
        };
        send_threaded(producer, record)?;
    }
    producer.commit_transaction(TRANSACTION_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_core::{Click, Decoder, Features, hash_id};

    fn click(user: &str) -> Feedback {
        // A value holding the pair separator: a forwarded event keeps every feature as it was.
        let features = Features::from([("device".into(), "ios;x=1".into()), ("page".into(), "home".into())]);
        Feedback::Click(Click { user: user.into(), item: "i1".into(), clicked: true, ts: 1, features })
    }

    #[test]
    fn events_of_other_shards_users_are_forwarded_once_numbered_per_owner() {
        let shard = Shard::new(0, 3).expect("shard");
        let mut exchange = ShardExchange::new(shard, HighWater::default());
        let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
        let mut events = KeyedEvents::new();
        for user in &users {
            events.push(&click(user));
        }
        let forwarded = exchange.route(&mut events);
        assert!(events.iter().all(|e| shard.owns(hash_id(e.user_id)) && e.to_feedback() == click(e.user_id)));
        assert_eq!(events.len() + forwarded, 60);
        assert!(forwarded > 0 && !events.is_empty());
        let outbox = exchange.outbox(5, Vec::new());
        assert_eq!(outbox.len(), forwarded);
        for message in &outbox {
            let bincode = Some(ContentType::Bincode.mime().as_bytes());
            let event =
                Decoder::default().decode_forwarded(&message.payload, bincode).expect("a forwarded event decodes");
            assert_eq!(event, click(event.user()), "forwarded as it was read");
            assert_eq!(shard.owner(hash_id(event.user())), message.to);
        }
        for owner in [1, 2] {
            let parts: Vec<u32> = outbox.iter().filter(|m| m.to == owner).map(|m| m.part).collect();
            assert_eq!(parts, (0..parts.len() as u32).collect::<Vec<_>>(), "parts count from 0 per owner");
        }
        assert!(exchange.outbox(6, Vec::new()).is_empty(), "an outbox starts the next interval");
    }

    #[test]
    fn received_messages_count_once_and_other_shard_counts_are_refused() {
        let shard = Shard::new(1, 2).expect("shard");
        let mut exchange = ShardExchange::new(shard, HighWater::default());
        let event = |part| Received::Event { tag: ExchangeTag { sender: 0, version: 3, part }, event: click("u") };
        let gradients = |shards, version| {
            Received::Gradients(GradientsMessage {
                sender: 0,
                shards,
                version,
                part: 0,
                parts: 1,
                gradients: Gradients::default(),
            })
        };
        let inbound =
            exchange.admit(vec![event(0), event(1), event(1), gradients(2, 3), gradients(2, 3), gradients(3, 4)]);
        assert_eq!((inbound.events.len(), inbound.gradients.len(), inbound.refused), (2, 1, 1));
        assert_eq!(inbound.duplicates, BTreeMap::from([(Channel::Route, 1), (Channel::Grads, 1)]));
        let again = exchange.admit(vec![event(0), gradients(2, 3)]);
        assert!(again.events.is_empty() && again.gradients.is_empty(), "a resent version is dropped");
    }

    #[test]
    fn gradients_go_out_in_tagged_parts_of_the_checkpoint_version() {
        let shard = Shard::new(2, 3).expect("shard");
        let mut exchange = ShardExchange::new(shard, HighWater::default());
        let messages = exchange.outbox(9, vec![(0, Gradients::default())]);
        assert_eq!(messages.len(), 1);
        let decoded = freshet_core::grads::decode_gradients(&messages[0].payload).expect("decodes");
        assert_eq!((decoded.sender, decoded.shards, decoded.version, decoded.part, decoded.parts), (2, 3, 9, 0, 1));
        assert_eq!((messages[0].channel, messages[0].to), (Channel::Grads, 0));
    }
}
