//! `freshet run`: consumer → trainer (its own thread) → checkpoint, resuming
//! from the offsets in the checkpoint, never from the group's.

mod trainer_loop;

use std::path::PathBuf;

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;
use freshet_consumer::{NextOffsets, Source, TopicPartition, TopicSpec, ensure_topics};
use freshet_core::Decoder;
use freshet_trainer::Trainer;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{FreshetConfig, ModelName};
use trainer_loop::TrainerLoop;

/// Partitions of an input topic that `freshet run` creates because it is missing.
const DEFAULT_INPUT_PARTITIONS: i32 = 4;

/// Flags of `freshet run`; flags win over the environment, which wins over the file.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); see deploy/freshet.toml.
    #[arg(long, env = "FRESHET_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides consumer.bootstrap).
    #[arg(long, env = "FRESHET_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Model name (overrides name).
    #[arg(long, env = "FRESHET_MODEL")]
    model: Option<String>,
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
        let mut config = match &self.config {
            Some(path) => FreshetConfig::from_file(path)?,
            None => FreshetConfig::default(),
        };
        if let Some(bootstrap) = &self.bootstrap {
            config.consumer.bootstrap = bootstrap.clone();
        }
        if let Some(model) = &self.model {
            config.name = ModelName(model.clone());
        }
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
    if args.check {
        println!("{}", json!({"ok": true, "config": config}));
        return Ok(());
    }
    let mut consumer = config.consumer.clone();
    // Static membership: a restarted trainer takes its partitions back at
    // once instead of waiting for its crashed predecessor's session to expire.
    consumer.kafka.entry("group.instance.id".to_owned()).or_insert_with(|| format!("freshet-{}", config.name));
    let consumer = &consumer;
    let mut topics: Vec<TopicSpec> =
        consumer.topics.iter().map(|t| TopicSpec::new(t, DEFAULT_INPUT_PARTITIONS)).collect();
    topics.push(TopicSpec::new(&consumer.dlq_topic, 1));
    ensure_topics(&consumer.bootstrap, &consumer.kafka, &topics).await.context("creating topics")?;

    let store = CheckpointStore::open(&config.checkpoint.dir, config.checkpoint.fsync)?;
    let (trainer, start) = match store.restore(&config.model, config.trainer.clone())? {
        Some(resumed) => {
            let offsets: NextOffsets = resumed
                .offsets
                .iter()
                .map(|((topic, partition), next)| (TopicPartition::new(topic, *partition), *next))
                .collect();
            info!(version = resumed.version, "resuming from checkpoint");
            (resumed.trainer, offsets)
        }
        None => {
            info!("no checkpoint yet: starting a new model");
            (Trainer::new(config.model.clone(), config.trainer.clone())?, NextOffsets::new())
        }
    };
    info!(model = %config.name, dir = %config.checkpoint.dir.display(), "freshet run starting");
    let (source, events) = Source::start(consumer, Decoder::new(config.validation.clone()), start.clone())
        .context("starting the consumer")?;

    let trainer_loop = TrainerLoop::new(trainer, store, source.acknowledger(), config.checkpoint.clone(), start);
    let runtime = tokio::runtime::Handle::current();
    let (finished, trainer_done) = oneshot::channel();
    let thread = std::thread::Builder::new().name("freshet-trainer".to_owned()).spawn(move || {
        let result = trainer_loop.run(&runtime, events);
        let _ = finished.send(());
        result
    })?;

    tokio::select! {
        signal = shutdown_signal() => info!(signal, "shutting down: draining, then a final checkpoint"),
        _ = trainer_done => warn!("the trainer stopped"),
    }
    let stopped = tokio::task::spawn_blocking(move || source.stop()).await?;
    let trained = tokio::task::spawn_blocking(move || thread.join()).await?;
    let trained = trained.map_err(|_| anyhow::anyhow!("the trainer thread panicked"))?;
    trained?;
    stopped.context("stopping the consumer")?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
