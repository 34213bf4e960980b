//! `freshet run`: consumer → trainer (its own thread) → checkpoint →
//! snapshot publisher (its own thread), resuming from the offsets in the
//! checkpoint, never from the group's.

mod admin;
mod metrics;
mod observe;
mod trainer_loop;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;
use freshet_consumer::Source;
use freshet_core::Decoder;
use freshet_core::NextOffsets;
use freshet_kafka::{TopicSpec, ensure_topics};
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
    one_shard(&config)?;
    if args.check {
        println!("{}", json!({"ok": true, "config": config.redacted()}));
        return Ok(());
    }
    let mut shutdown = ShutdownSignal::install()?;
    let options = PipelineOptions { create_topics: true, served: None };
    pipeline(&config, options, async move { shutdown.recv().await }).await
}

/// How long `/healthz` keeps reporting a trainer's failure before the
/// process exits with it.
const FAILURE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Refuses a sharded model: `model.shards` is recorded in checkpoints and
/// snapshots already, but the route and gradient topics that let S
/// processes train one model are not built yet.
fn one_shard(config: &FreshetConfig) -> Result<(), freshet_core::ConfigError> {
    match config.model.shards {
        1 => Ok(()),
        shards => Err(freshet_core::ConfigError::new(
            "model.shards",
            format!(
                "is {shards}: training a sharded model over several `freshet run` processes is not built yet \
                 (docs/scaling.md); `freshet eval --shards` simulates one"
            ),
        )),
    }
}

/// How [`pipeline`] runs beyond its configuration.
pub struct PipelineOptions {
    /// Create missing topics through the admin API.
    pub create_topics: bool,
    /// A subscriber in the same process (the demo's), whose served version
    /// and freshness the live page charts too.
    pub served: Option<freshet_subscriber::SubscriberView>,
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
    one_shard(config)?;
    let mut consumer = config.consumer.clone();
    // Static membership: a restarted trainer takes its partitions back at
    // once instead of waiting for its crashed predecessor's session to expire.
    consumer.group_instance_id.get_or_insert_with(|| format!("freshet-{}", config.name));
    let consumer = &consumer;
    let mut topics: Vec<TopicSpec> =
        consumer.topics.iter().map(|t| TopicSpec::new(t, DEFAULT_INPUT_PARTITIONS)).collect();
    topics.push(TopicSpec::new(&consumer.dlq_topic, 1));
    if config.publisher.enabled {
        topics.push(config.publisher.topic_spec(&config.name.0));
    }
    if options.create_topics {
        ensure_topics(&config.kafka, &topics).await.context("creating topics")?;
    }

    let store = CheckpointStore::open(&config.checkpoint.dir, config.checkpoint.fsync)?;
    let (trainer, start) = match store.restore(&config.model, config.trainer.clone())? {
        Some(resumed) => {
            info!(version = resumed.version, "resuming from checkpoint");
            (resumed.trainer, resumed.offsets)
        }
        None => {
            info!("no checkpoint yet: starting a new model");
            (Trainer::new(config.model.clone(), config.trainer.clone())?, NextOffsets::new())
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
    let publisher = start_publisher(config, &metrics)?;
    info!(model = %config.name, dir = %config.checkpoint.dir.display(), "freshet run starting");
    let (source, events) = Source::start(
        &config.kafka,
        consumer,
        Decoder::new(config.validation.clone().for_model(&config.model)),
        start.clone(),
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
fn start_publisher(config: &FreshetConfig, metrics: &metrics::RunMetrics) -> anyhow::Result<Option<PublisherHandle>> {
    let settings = &config.publisher;
    if !settings.enabled {
        return Ok(None);
    }
    let producer =
        SnapshotProducer::connect(&config.kafka, settings, &config.name.0, &config.model, freshet_core::Shard::SOLE)
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
