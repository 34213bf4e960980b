//! `freshet run`: consumer → trainer (its own thread) → checkpoint →
//! snapshot publisher (its own thread), resuming from the offsets in the
//! checkpoint, never from the group's.

mod admin;
mod exchange;
mod metrics;
mod observe;
mod replicas;
mod trainer_loop;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;
use freshet_consumer::{ExchangeTopics, ReadPlan, Source};
use freshet_core::exchange::{grads_topic, route_topic};
use freshet_core::{Decoder, NextOffsets, Shard, TopicPartition, assigned_partitions};
use freshet_kafka::{TopicSpec, ensure_topics, partition_counts};
use freshet_publisher::{FullPolicy, PublisherHandle, SnapshotProducer};
use freshet_trainer::Trainer;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::cli_args::ConfigArgs;
use crate::config::FreshetConfig;
use crate::shutdown::ShutdownSignal;
use trainer_loop::TrainerLoop;

/// Partitions of an input topic that `freshet run` creates because it is missing.
const DEFAULT_INPUT_PARTITIONS: i32 = 4;

/// Flags of `freshet run`; flags win over the environment, which wins over the file.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Checkpoint directory (overrides checkpoint.dir).
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Check the configuration, print it as JSON and exit.
    #[arg(long)]
    check: bool,
    /// The shard this process trains, 0 to `model.shards` - 1; needed when
    /// the model has more than one (a StatefulSet ordinal, say).
    #[arg(long, env = "FRESHET_SHARD")]
    shard: Option<u32>,
}

impl RunArgs {
    /// The configuration: the file (or defaults) with the overrides applied, checked.
    pub fn resolve(&self) -> anyhow::Result<FreshetConfig> {
        let mut config = self.config.load()?;
        if let Some(dir) = &self.checkpoint_dir {
            config.checkpoint.dir = dir.clone();
        }
        config.check()?;
        Ok(config)
    }
}

/// Runs `freshet run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let shard = shard_of_run(&config, args.shard)?;
    if args.check {
        println!("{}", json!({"ok": true, "shard": shard.index(), "config": config.redacted()}));
        return Ok(());
    }
    let mut shutdown = ShutdownSignal::install()?;
    let options = PipelineOptions { create_topics: true, served: None, shard };
    pipeline(&config, options, async move { shutdown.recv().await }).await
}

/// How long `/healthz` keeps reporting a trainer's failure before the
/// process exits with it.
const FAILURE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The shard a run trains: `--shard` of `model.shards`, which a sharded
/// model needs and an unsharded one may give only as 0.
fn shard_of_run(config: &FreshetConfig, shard: Option<u32>) -> Result<Shard, freshet_core::ConfigError> {
    let shards = config.model.shards;
    match shard {
        None if shards > 1 => Err(freshet_core::ConfigError::new(
            "--shard",
            format!("is needed: model.shards is {shards}, so each process trains one shard, 0 to {}", shards - 1),
        )),
        None => Ok(Shard::SOLE),
        Some(index) => Shard::new(index, shards).map_err(|_| {
            freshet_core::ConfigError::new(
                "--shard",
                format!("is {index}; model.shards is {shards}, so 0 to {}", shards - 1),
            )
        }),
    }
}

/// How [`pipeline`] runs beyond its configuration.
pub struct PipelineOptions {
    /// Create missing topics through the admin API.
    pub create_topics: bool,
    /// A subscriber in the same process (the demo's), whose served version
    /// and freshness the live page charts too.
    pub served: Option<freshet_subscriber::SubscriberView>,
    /// The shard this process trains ([`Shard::SOLE`] unsharded).
    pub shard: Shard,
}

/// The training pipeline until `shutdown` resolves (naming why) or the
/// trainer stops: topics (created through the admin API when
/// `options.create_topics`), restore, metrics and the live page, publisher,
/// source and trainer thread; then a drain and a final checkpoint.
pub async fn pipeline(
    config: &FreshetConfig,
    options: PipelineOptions,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let shard = options.shard;
    anyhow::ensure!(
        shard.count() == config.model.shards,
        "shard {shard:?} of a model of {} shards",
        config.model.shards
    );
    let mut consumer = config.consumer.clone();
    if !shard.is_sharded() {
        // Static membership: a restarted trainer takes its partitions back at
        // once instead of waiting for its crashed predecessor's session to expire.
        consumer.group_instance_id.get_or_insert_with(|| format!("freshet-{}", config.name));
    }
    let consumer = &consumer;
    let shards = shard.count() as i32;
    // Missing inputs get a multiple of the shard count (each shard reads whole partitions).
    let input_partitions = (DEFAULT_INPUT_PARTITIONS as u32).div_ceil(shard.count()) as i32 * shards;
    let mut topics: Vec<TopicSpec> = consumer.topics.iter().map(|t| TopicSpec::new(t, input_partitions)).collect();
    topics.push(TopicSpec::new(&consumer.dlq_topic, 1));
    if config.publisher.enabled {
        topics.push(config.publisher.topic_spec(&config.name.0, shard.count()));
    }
    let exchange_topics = shard
        .is_sharded()
        .then(|| ExchangeTopics { route: route_topic(&config.name.0), grads: grads_topic(&config.name.0) });
    if let Some(exchange) = &exchange_topics {
        for name in [&exchange.route, &exchange.grads] {
            let mut spec = TopicSpec::new(name, shards);
            spec.configs.insert("max.message.bytes".to_owned(), exchange::MAX_MESSAGE_BYTES.to_string());
            topics.push(spec);
        }
    }
    if options.create_topics {
        ensure_topics(&config.kafka, &topics).await.context("creating topics")?;
    }
    let plan = read_plan(config, shard, exchange_topics).await?;

    let store = CheckpointStore::open(&config.checkpoint.dir, config.checkpoint.fsync)?;
    let (trainer, start) = match store.restore(&config.model, config.trainer.clone())? {
        Some(resumed) if resumed.trainer.shard() != shard => anyhow::bail!(
            "{} holds shard {} of the model, not shard {} (--shard): each shard has a checkpoint directory of its own",
            config.checkpoint.dir.display(),
            resumed.trainer.shard().index(),
            shard.index()
        ),
        Some(resumed) => {
            info!(version = resumed.version, shard = shard.index(), "resuming from checkpoint");
            (resumed.trainer, resumed.offsets)
        }
        None => {
            info!(shard = shard.index(), "no checkpoint yet: starting a new model");
            (Trainer::new_shard(config.model.clone(), config.trainer.clone(), shard)?, NextOffsets::new())
        }
    };
    let metrics = metrics::RunMetrics::new().context("registering metrics")?;
    // Kept for the whole run: readiness follows the cluster's answers.
    let cluster = observe::watch_cluster(config)?;
    let health = std::sync::Arc::new(observe::Health::new(cluster.status()));
    let history = crate::page::History::default();
    let mut routes = crate::page::loop_routes(history.clone(), &config.name.0);
    let admin_requests = if config.admin.enabled {
        let (requests, receiver) = tokio::sync::mpsc::channel(8);
        routes = routes.merge(admin::routes(&config.admin.token, requests));
        Some(receiver)
    } else {
        None
    };
    if let Some(listen) = config.metrics.address()? {
        let address = observe::start(listen, metrics.clone(), std::sync::Arc::clone(&health), routes)
            .await
            .with_context(|| format!("metrics.listen {listen}"))?;
        info!(page = %format!("http://{address}/"), "the live page of the loop");
        observe::spawn_lag_task(config, metrics.clone())?;
        observe::spawn_sampler(metrics.clone(), history, options.served);
    }
    let publisher = start_publisher(config, &metrics, shard)?;
    let sharded = match shard.is_sharded() {
        true => {
            let sender = exchange::ExchangeSender::spawn(&config.kafka, &config.name.0, shard, metrics.clone())?;
            let marks = store.high_water().context("reading the high-water marks")?;
            let replicas = match config.publisher.enabled {
                true => Some(replicas::ReplicaFeed::start(
                    &config.kafka,
                    &config.publisher.topic_for(&config.name.0),
                    shard,
                )?),
                false => {
                    warn!(
                        "publishing is off: this shard's replicas of other shards' rows stay at their initial values"
                    );
                    None
                }
            };
            Some(trainer_loop::Sharded::new(exchange::ShardExchange::new(shard, marks), sender, replicas))
        }
        false => None,
    };
    info!(model = %config.name, dir = %config.checkpoint.dir.display(), "freshet run starting");
    let (source, events) = Source::start_with(
        &config.kafka,
        consumer,
        Decoder::new(config.validation.clone().for_model(&config.model)),
        start.clone(),
        plan,
    )
    .context("starting the consumer")?;

    let rollback_after = config.publisher.quality_gate.rollback_after_ms.map(std::time::Duration::from_millis);
    let trainer_loop = TrainerLoop::new(
        trainer,
        store,
        source.acknowledger(),
        config.checkpoint.clone(),
        publisher,
        metrics,
        start,
        rollback_after.filter(|_| config.publisher.enabled),
        admin_requests,
        sharded,
    );
    let runtime = tokio::runtime::Handle::current();
    let (finished, trainer_done) = oneshot::channel();
    let trainer_health = std::sync::Arc::clone(&health);
    let thread = std::thread::Builder::new().name("freshet-trainer".to_owned()).spawn(move || {
        trainer_health.alive.store(true, Ordering::Relaxed);
        let result = trainer_loop.run(&runtime, events);
        if let Err(error) = &result {
            *trainer_health.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{error:#}"));
        }
        trainer_health.alive.store(false, Ordering::Relaxed);
        let _ = finished.send(());
        result
    })?;
    health.ready.store(true, Ordering::Relaxed);

    tokio::select! {
        signal = shutdown => info!(signal, "shutting down: draining, then a final checkpoint"),
        _ = trainer_done => {
            warn!("the trainer stopped");
            if health.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                // Keep /healthz and /metrics answering why for a moment, so
                // a probe or a scrape sees the reason and not only the exit.
                tokio::time::sleep(FAILURE_LINGER).await;
            }
        }
    }
    health.ready.store(false, Ordering::Relaxed);
    let stopped = tokio::task::spawn_blocking(move || source.stop()).await?;
    let trained = tokio::task::spawn_blocking(move || thread.join()).await?;
    let trained = trained.map_err(|_| anyhow::anyhow!("the trainer thread panicked"))?;
    trained?;
    stopped.context("stopping the consumer")?;
    Ok(())
}

/// Connects the snapshot producer (fencing any earlier instance of the
/// model) and starts the publisher thread, unless publishing is off.
fn start_publisher(
    config: &FreshetConfig,
    metrics: &metrics::RunMetrics,
    shard: Shard,
) -> anyhow::Result<Option<PublisherHandle>> {
    let settings = &config.publisher;
    if !settings.enabled {
        return Ok(None);
    }
    let producer = SnapshotProducer::connect(&config.kafka, settings, &config.name.0, &config.model, shard)
        .context("connecting the snapshot publisher")?;
    info!(topic = producer.topic(), "publishing snapshots");
    let policy = FullPolicy {
        every_deltas: settings.full_every_deltas,
        interval: std::time::Duration::from_millis(settings.full_interval_ms),
    };
    let metrics = metrics.clone();
    let on_event = move |event: freshet_publisher::PublisherEvent<'_>| metrics.publisher_event(event);
    Ok(Some(PublisherHandle::spawn(producer, settings.quality_gate, policy, on_event)?))
}

/// What a run's source reads: the group's partitions unsharded; shard k's
/// input partitions (`p mod S = k`, checked: every input topic has the same
/// partition count, a multiple of S) and partition k of the exchange topics
/// when sharded.
async fn read_plan(config: &FreshetConfig, shard: Shard, exchange: Option<ExchangeTopics>) -> anyhow::Result<ReadPlan> {
    let Some(exchange) = exchange else { return Ok(ReadPlan::default()) };
    let kafka = config.kafka.clone();
    let inputs = config.consumer.topics.clone();
    let counts = tokio::task::spawn_blocking(move || partition_counts(&kafka, &inputs)).await??;
    let named: Vec<(&str, u32)> = counts.iter().map(|(topic, count)| (topic.as_str(), *count)).collect();
    let mut partitions = assigned_partitions(&named, shard)?;
    let k = shard.index() as i32;
    partitions.push(TopicPartition::new(&exchange.route, k));
    partitions.push(TopicPartition::new(&exchange.grads, k));
    info!(shard = k, partitions = %freshet_core::offsets::describe(&partitions), "the shard's partitions");
    Ok(ReadPlan { partitions: Some(partitions), exchange: Some(exchange) })
}
