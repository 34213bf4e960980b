//! Helpers for snapshot scenarios: a model trained on the synthetic stream,
//! a snapshot topic, raw transactional writes (to forge aborted, torn or
//! damaged snapshots), a subscriber with its event log, and bit-exact
//! comparison of served and trained parameters.

use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use freshet_core::snapshot::{ModelParams, Watermark};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Features, Feedback, Forget, Head, ModelSpec, NextOffsets, ScoreContext, TableKind, now_ms};
use freshet_kafka::{KafkaConfig, ensure_topics};
use freshet_publisher::{EncodedSnapshot, HeaderContext, Outgoing, PublisherConfig, SnapshotProducer, encode};
use freshet_subscriber::{ServingModel, Subscriber, SubscriberConfig, SubscriberEvent};
use freshet_trainer::{Trainer, TrainerConfig};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Synthetic feedback for the models under test: the stream's events at
/// growing times, optionally with the three [`CONTEXT`] features.
struct FeedbackSource {
    stream: SynthStream,
    ts: i64,
    /// Milliseconds between events.
    step_ms: i64,
    /// Whether every rating and click carries [`CONTEXT`] features.
    context: bool,
}

/// Users (`u0`…) and items (`i0`…) of the synthetic stream.
const USERS: u64 = 300;
const ITEMS: u64 = 200;

impl FeedbackSource {
    fn new(seed: u64, context: bool) -> Self {
        let stream =
            SynthStream::new(SynthConfig { seed, users: USERS as u32, items: ITEMS as u32, ..SynthConfig::default() });
        // With context, events a minute apart so users' sessions start and end.
        let step_ms = if context { 60_000 } else { 1 };
        FeedbackSource { stream, ts: 1_764_400_000_000, step_ms, context }
    }

    /// The next `events` events.
    fn next(&mut self, events: usize) -> Vec<Feedback> {
        (0..events)
            .map(|n| {
                self.ts += self.step_ms;
                let mut event = self.stream.next_event_at(self.ts);
                if self.context {
                    let features = match &mut event {
                        Feedback::Click(click) => Some(&mut click.features),
                        Feedback::Rating(rating) => Some(&mut rating.features),
                        Feedback::Forget(_) => None,
                    };
                    if let Some(features) = features {
                        for (k, (name, values)) in CONTEXT.iter().enumerate() {
                            let value = values[(n * (k + 3) + self.ts as usize / 7) % values.len()];
                            features.entry((*name).to_owned()).or_insert_with(|| value.to_owned());
                        }
                    }
                }
                event
            })
            .collect()
    }

    /// A forget event for `user`, just after the latest event.
    fn forget(&mut self, user: &str) -> Feedback {
        self.ts += 1;
        Feedback::Forget(Forget { user: user.to_owned(), ts: self.ts })
    }
}

/// What the served model is compared with: the trainer(s) of a model under test.
pub trait TrainedModel {
    /// The time of the latest event trained on (ms).
    fn now_ms(&self) -> i64;
    /// The trainers' session gap (ms).
    fn session_gap_ms(&self) -> i64;
    /// The trainer's prediction (the owning shard's, for a sharded model).
    fn predict(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32;
}

/// A small model trained on the synthetic stream, handing out snapshots.
pub struct ModelUnderTest {
    /// The trainer.
    pub trainer: Trainer,
    events: FeedbackSource,
}

/// The context features of [`ModelUnderTest::with_context`]: name and values.
pub const CONTEXT: [(&str, &[&str]); 3] = [
    ("device", &["ios", "android", "web"]),
    ("page", &["home", "search", "detail", "cart"]),
    ("hour", &["0", "6", "12", "18"]),
];

/// The dim-8 spec of the models under test, of `shards` shards.
fn spec_under_test(shards: u32) -> ModelSpec {
    ModelSpec { dim: 8, rating_min: 1.0, rating_max: 5.0, context_features: true, shards }
}

impl ModelUnderTest {
    /// A fresh dim-8 model; `seed` picks the stream.
    pub fn new(seed: u64) -> Self {
        let trainer = Trainer::new(spec_under_test(1), TrainerConfig::default()).expect("a valid trainer");
        ModelUnderTest { trainer, events: FeedbackSource::new(seed, false) }
    }

    /// A fresh model whose ratings and clicks carry the three [`CONTEXT`]
    /// features, with events a minute apart so users' sessions start and end.
    pub fn with_context(seed: u64) -> Self {
        ModelUnderTest { events: FeedbackSource::new(seed, true), ..ModelUnderTest::new(seed) }
    }

    /// The time of the latest event trained on (ms).
    pub fn now_ms(&self) -> i64 {
        self.events.ts
    }

    /// Trains on `events` more synthetic events.
    pub fn train(&mut self, events: usize) {
        for chunk in self.events.next(events).chunks(256) {
            self.trainer.train_batch(chunk);
        }
    }

    /// Forgets `user` (as a forget event would).
    pub fn forget(&mut self, user: &str) {
        let forget = self.events.forget(user);
        self.trainer.train_batch(&[forget]);
    }

    /// The whole model as version `version` (clears the change record).
    pub fn full(&mut self, version: u64) -> Outgoing {
        self.trainer.drain_dirty();
        Outgoing::full(
            version,
            self.trainer.export_params(),
            self.watermark(),
            self.trainer.metrics().snapshot_metrics(),
        )
    }

    /// The changes since the previous hand-off as version `version`.
    pub fn delta(&mut self, version: u64) -> Outgoing {
        let delta = self.trainer.drain_dirty().params(self.trainer.config().session_gap_ms);
        Outgoing::delta(version - 1, version, delta, self.watermark(), self.trainer.metrics().snapshot_metrics())
    }

    fn watermark(&self) -> Watermark {
        Watermark { offsets: NextOffsets::new(), newest_event_ms: self.trainer.clock_ms() }
    }
}

impl TrainedModel for ModelUnderTest {
    fn now_ms(&self) -> i64 {
        ModelUnderTest::now_ms(self)
    }

    fn session_gap_ms(&self) -> i64 {
        self.trainer.config().session_gap_ms
    }

    fn predict(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32 {
        self.trainer.predict(head, user, item, context)
    }
}

/// A model of S shard trainers, trained as S `freshet run --shard k` train
/// it, in one process: each shard trains its own users' events (the stream's
/// with the [`CONTEXT`] features), the gradient sums for rows other shards
/// own go to their owners after every micro-batch of 256 events, and after
/// each published version every shard takes the other shards' rows into
/// its replicas, as it would from their snapshot chains.
pub struct ShardedModelUnderTest {
    /// Shard k's trainer at k.
    pub trainers: Vec<Trainer>,
    events: FeedbackSource,
}

impl ShardedModelUnderTest {
    /// A fresh dim-8 model of `shards` shards; `seed` picks the stream.
    pub fn new(seed: u64, shards: u32) -> Self {
        let trainers = (0..shards)
            .map(|k| {
                let shard = freshet_core::Shard::new(k, shards).expect("a valid shard");
                Trainer::new_shard(spec_under_test(shards), TrainerConfig::default(), shard).expect("a valid trainer")
            })
            .collect();
        ShardedModelUnderTest { trainers, events: FeedbackSource::new(seed, true) }
    }

    /// The shard count.
    pub fn shards(&self) -> u32 {
        self.trainers.len() as u32
    }

    /// The trainer of the shard that owns `user`.
    pub fn owner(&self, user: &str) -> &Trainer {
        &self.trainers[freshet_core::shard_of(freshet_core::hash_id(user), self.shards()) as usize]
    }

    /// Trains on `events` more synthetic events (and a forget of `forget`
    /// after them).
    pub fn train(&mut self, events: usize, forget: Option<&str>) {
        let mut events = self.events.next(events);
        events.extend(forget.map(|user| self.events.forget(user)));
        let shards = self.shards();
        for chunk in events.chunks(256) {
            let mut batches = vec![Vec::new(); shards as usize];
            for event in chunk {
                batches[freshet_core::shard_of(freshet_core::hash_id(event.user()), shards) as usize]
                    .push(event.clone());
            }
            let mut inboxes = vec![Vec::new(); shards as usize];
            for (trainer, batch) in self.trainers.iter_mut().zip(&batches) {
                trainer.train_batch(batch);
                for (owner, gradients) in trainer.take_gradients() {
                    inboxes[owner as usize].push(gradients);
                }
            }
            for (trainer, inbox) in self.trainers.iter_mut().zip(&inboxes) {
                if !inbox.is_empty() {
                    trainer.apply_gradients(inbox).expect("gradients for owned rows");
                }
            }
        }
    }

    /// Every shard's snapshot of version `version` (full for version 1,
    /// deltas after it), shard k's at k; then every shard's replicas take
    /// the other shards' rows of it.
    pub fn version(&mut self, version: u64) -> Vec<Outgoing> {
        let changes: Vec<_> = self.trainers.iter_mut().map(Trainer::drain_params).collect();
        let outgoing = self
            .trainers
            .iter()
            .zip(&changes)
            .map(|(trainer, delta)| {
                let watermark = Watermark { offsets: NextOffsets::new(), newest_event_ms: trainer.clock_ms() };
                let metrics = trainer.metrics().snapshot_metrics();
                match version {
                    1 => Outgoing::full(version, trainer.export_params(), watermark, metrics),
                    _ => Outgoing::delta(version - 1, version, delta.clone(), watermark, metrics),
                }
            })
            .collect();
        for (from, delta) in changes.iter().enumerate() {
            for (to, trainer) in self.trainers.iter_mut().enumerate() {
                if to != from {
                    trainer.apply_replica(from as u32, delta).expect("rows of the model's width");
                }
            }
        }
        outgoing
    }

    /// Every shard's parameters: the rows each owns, and shard 0's globals.
    pub fn export_params(&self) -> ModelParams {
        let mut params = self.trainers[0].export_params();
        for trainer in &self.trainers[1..] {
            params.rows.extend(trainer.export_params().rows);
        }
        params
    }
}

impl TrainedModel for ShardedModelUnderTest {
    fn now_ms(&self) -> i64 {
        self.events.ts
    }

    fn session_gap_ms(&self) -> i64 {
        self.trainers[0].config().session_gap_ms
    }

    fn predict(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32 {
        self.owner(user).predict(head, user, item, context)
    }
}

/// Publisher settings for tests (16 KiB chunks, so models span many
/// messages) and the snapshot topic they name, created.
pub fn snapshot_topic(bootstrap: &str, model: &str) -> anyhow::Result<PublisherConfig> {
    snapshot_topic_of(bootstrap, model, 1)
}

/// [`snapshot_topic`] for a model of `shards` shards (a partition each).
pub fn snapshot_topic_of(bootstrap: &str, model: &str, shards: u32) -> anyhow::Result<PublisherConfig> {
    let config = PublisherConfig { chunk_bytes: 16 * 1024, ..PublisherConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(ensure_topics(&KafkaConfig::new(bootstrap), &[config.topic_spec(model, shards)]))?;
    Ok(config)
}

/// A transactional producer with `transactional_id`, initialised.
pub fn raw_transactional(bootstrap: &str, transactional_id: &str) -> anyhow::Result<FutureProducer> {
    let producer: FutureProducer = KafkaConfig::new(bootstrap)
        .client()
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "60000")
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    Ok(producer)
}

/// Produces `values` to partition 0 of `topic` in order; returns their offsets.
pub fn send_values(producer: &FutureProducer, topic: &str, values: &[Vec<u8>]) -> anyhow::Result<Vec<i64>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut deliveries = Vec::new();
        for value in values {
            let record = FutureRecord::<[u8], [u8]>::to(topic).payload(value).partition(0);
            deliveries.push(producer.send_result(record).map_err(|(error, _)| error)?);
        }
        let mut offsets = Vec::new();
        for delivery in deliveries {
            let delivered = delivery.await?.map_err(|(error, _)| error)?;
            offsets.push(delivered.offset);
        }
        Ok(offsets)
    })
}

/// A subscriber on `topic` and the log of its events.
pub fn subscribe(bootstrap: &str, topic: &str) -> anyhow::Result<(Subscriber, Receiver<SubscriberEvent>)> {
    let (events, log) = channel();
    let config = SubscriberConfig::new(bootstrap, topic);
    let subscriber = Subscriber::start(&config, move |event: &SubscriberEvent| {
        let _ = events.send(event.clone());
    })?;
    Ok((subscriber, log))
}

/// Events up to and including the swap to `version`.
pub fn wait_for_version(
    log: &Receiver<SubscriberEvent>,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<SubscriberEvent>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(event) = log.recv_timeout(left) else { break };
        let done = matches!(&event, SubscriberEvent::Applied(report) if report.version == version);
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
    bail!("version {version} was not applied within {timeout:?}; events: {seen:?}")
}

/// Events arriving within `quiet` (the subscriber should stay idle).
pub fn events_within(log: &Receiver<SubscriberEvent>, quiet: Duration) -> Vec<SubscriberEvent> {
    let deadline = Instant::now() + quiet;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match log.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(_) => break,
        }
    }
    seen
}

/// Checks that the served parameters equal the trainer's, bit for bit.
pub fn same_params(served: &ServingModel, trained: &ModelParams) -> anyhow::Result<()> {
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    if bits(&served.globals()) != bits(&trained.globals) {
        bail!("global biases differ: served {:?}, trained {:?}", served.globals(), trained.globals);
    }
    for table in TableKind::ALL {
        let trained_rows = trained.rows.iter().filter(|row| row.table == table).count();
        let served_rows = served.rows(table).count();
        if served_rows != trained_rows {
            bail!("{table:?}: {served_rows} rows served, {trained_rows} trained");
        }
    }
    for row in &trained.rows {
        let served_row = served.row(row.table, row.key).with_context(|| format!("row {row:?} is not served"))?;
        if bits(&served_row) != bits(&row.values) {
            bail!("row {:?}/{:#x} differs: served {served_row:?}, trained {:?}", row.table, row.key, row.values);
        }
    }
    Ok(())
}

/// One scoring question: a head, a user, an item, context features and the
/// request's time.
#[derive(Debug, Clone)]
pub struct Triple {
    /// The head.
    pub head: Head,
    /// A user id (some unknown to the model).
    pub user: String,
    /// An item id (some unknown to the model).
    pub item: String,
    /// ScoreContext features (some values unknown to the model).
    pub features: Features,
    /// Request time (ms): some within a user's session, some after it ended.
    pub at_ms: i64,
}

impl Triple {
    /// The triple's scoring context.
    pub fn context(&self) -> ScoreContext<'_> {
        ScoreContext::new(&self.features).at(self.at_ms)
    }
}

/// `count` questions drawn with `seed` for a model trained by `trained`:
/// users and items of the stream and unknown ones, any subset of the
/// [`CONTEXT`] features with known and unknown values, and times from the
/// latest event to three session gaps later.
pub fn sample_triples(trained: &impl TrainedModel, count: usize, seed: u64) -> Vec<Triple> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut draw = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let gap = trained.session_gap_ms() as u64;
    (0..count)
        .map(|_| {
            let head = if draw(2) == 0 { Head::Rating } else { Head::Click };
            let user = if draw(20) == 0 { format!("stranger{}", draw(100)) } else { format!("u{}", draw(USERS)) };
            let item = if draw(20) == 0 { format!("novel{}", draw(100)) } else { format!("i{}", draw(ITEMS)) };
            let mut features = Features::new();
            for (name, values) in CONTEXT {
                match draw(4) {
                    0 => {}
                    1 => {
                        features.insert(name.to_owned(), "unseen".to_owned());
                    }
                    _ => {
                        features.insert(name.to_owned(), values[draw(values.len() as u64) as usize].to_owned());
                    }
                }
            }
            let at_ms = trained.now_ms() - 600_000 + draw(3 * gap) as i64;
            Triple { head, user, item, features, at_ms }
        })
        .collect()
}

/// Checks that the served model answers every triple exactly as the trainer
/// predicts, bit for bit.
pub fn same_scores(served: &ServingModel, trained: &impl TrainedModel, triples: &[Triple]) -> anyhow::Result<()> {
    for t in triples {
        let context = t.context();
        let (got, want) =
            (served.score(t.head, &t.user, &t.item, &context), trained.predict(t.head, &t.user, &t.item, &context));
        if got.to_bits() != want.to_bits() {
            bail!("{t:?}: served {got}, trainer {want}");
        }
    }
    Ok(())
}

/// One model's snapshot topic on the broker, a model to publish, and ways to
/// write genuine or forged snapshots to it.
pub struct Scenario {
    /// The broker.
    pub bootstrap: String,
    /// The model's (unique) name.
    pub model: String,
    /// Publisher settings naming its topic.
    pub config: PublisherConfig,
    /// The model published.
    pub trained: ModelUnderTest,
}

impl Scenario {
    /// A fresh snapshot topic for a model named after `name`; `seed` picks its stream.
    pub fn new(name: &str, seed: u64) -> anyhow::Result<Self> {
        Scenario::with_model(name, ModelUnderTest::new(seed))
    }

    /// A fresh snapshot topic for `trained`, named after `name`.
    pub fn with_model(name: &str, trained: ModelUnderTest) -> anyhow::Result<Self> {
        let bootstrap = crate::bootstrap();
        let model = crate::unique(name);
        let config = snapshot_topic(&bootstrap, &model)?;
        Ok(Scenario { bootstrap, model, config, trained })
    }

    /// The snapshot topic.
    pub fn topic(&self) -> String {
        self.config.topic_for(&self.model)
    }

    /// A publisher instance of the model (fencing any earlier one).
    pub fn producer(&self) -> anyhow::Result<SnapshotProducer> {
        let spec = self.trained.trainer.spec();
        Ok(SnapshotProducer::connect(
            &KafkaConfig::new(&self.bootstrap),
            &self.config,
            &self.model,
            spec,
            freshet_core::Shard::SOLE,
        )?)
    }

    /// A subscriber on the topic and its event log.
    pub fn subscribe(&self) -> anyhow::Result<(Subscriber, Receiver<SubscriberEvent>)> {
        subscribe(&self.bootstrap, &self.topic())
    }

    /// The message values of a complete snapshot of `outgoing` chained at
    /// `chain_start`, after `tamper` had its way with the encoded messages
    /// (the commit keeps the untampered checksum).
    pub fn forge(
        &self,
        outgoing: &Outgoing,
        chain_start: i64,
        tamper: impl FnOnce(&mut EncodedSnapshot),
    ) -> Vec<Vec<u8>> {
        let spec = self.trained.trainer.spec();
        let context = HeaderContext {
            model: &self.model,
            spec,
            shard: 0,
            created_ms: now_ms(),
            chain_start_offset: Some(chain_start),
            value_encoding: Default::default(),
        };
        let mut encoded = encode(outgoing, context, self.config.chunk_bytes);
        tamper(&mut encoded);
        let mut values = vec![encoded.header_value.clone()];
        values.extend(encoded.chunks.iter().cloned());
        values.push(encoded.commit_value(chain_start));
        values
    }

    /// Writes `values` in one transaction under another transactional id,
    /// then commits it or aborts it.
    pub fn write_in_transaction(&self, values: &[Vec<u8>], commit: bool) -> anyhow::Result<()> {
        let producer = raw_transactional(&self.bootstrap, &crate::unique("forger"))?;
        producer.begin_transaction()?;
        send_values(&producer, &self.topic(), values)?;
        if commit {
            producer.commit_transaction(Duration::from_secs(30))?;
        } else {
            producer.abort_transaction(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Checks that `subscriber` serves exactly the trained parameters, then stops it.
    pub fn assert_served_and_stop(&self, subscriber: Subscriber) -> anyhow::Result<()> {
        let served = subscriber.model().context("no model served")?;
        same_params(&served, &self.trained.trainer.export_params())?;
        subscriber.stop(Duration::from_secs(5));
        Ok(())
    }
}
