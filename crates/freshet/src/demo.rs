//! `freshet demo`: the whole loop in one process, nothing to install. An
//! in-process Kafka-protocol broker (librdkafka's mock cluster), a synthetic
//! stream, `freshet run`'s pipeline (train, checkpoint to a temp dir, publish
//! snapshots) and a subscriber, with a live one-screen summary, the live page
//! of the loop on `--listen`, and a top-10 for a sample user at the end.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Head, ModelSpec, ScoreContext, now_ms};
use freshet_kafka::KafkaConfig;
use freshet_subscriber::{ServingModel, Subscriber, SubscriberConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::{FreshetConfig, ModelName};
use crate::produce::{pace, send_synth};
use crate::shutdown::ShutdownSignal;

/// The user whose recommendations are shown at the end.
const SAMPLE_USER: &str = "u1";

/// Flags of `freshet demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to run (`20s`, `2m`, or seconds); until Ctrl-C when absent.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Synthetic events per second.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    rate: u64,
    /// Address of the live page of the loop (and of /metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: std::net::SocketAddr,
}

/// Parses `20s`, `2m`, `500ms` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = number.parse().map_err(|_| format!("expected a duration like 20s or 2m, got {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("unknown unit {unit:?} (use ms, s or m)")),
    }
}

/// Runs `freshet demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut shutdown = ShutdownSignal::install()?;
    let cluster = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let work = tempfile::tempdir().context("a temporary checkpoint directory")?;
    let config = demo_config(&cluster.bootstrap_servers(), work.path(), args.listen);
    // The mock cluster does not implement the admin API: create topics directly.
    for topic in &config.consumer.topics {
        cluster.create_topic(topic, 4, 1)?;
    }
    cluster.create_topic(&config.consumer.dlq_topic, 1, 1)?;
    let snapshot_topic = config.publisher.topic_for(&config.name.0);
    cluster.create_topic(&snapshot_topic, 1, 1)?;

    // Subscribe before the first publish: the mock keeps only ~5 MiB per partition.
    let subscriber = Subscriber::start(&SubscriberConfig::new(config.kafka.clone(), snapshot_topic), |_| {})?;
    let producing = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = spawn_producer(&config, args.rate, Arc::clone(&producing), Arc::clone(&sent))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<&'static str>();
    let pipeline_config = config.clone();
    let options = crate::run::PipelineOptions {
        create_topics: false,
        served: Some(subscriber.view()),
        shard: freshet_core::Shard::SOLE,
    };
    let pipeline = tokio::spawn(async move {
        crate::run::pipeline(&pipeline_config, options, async move { stopped.await.unwrap_or("stop") }).await
    });
    println!("freshet demo: the live page of the loop is at http://{}/ (Ctrl-C stops)", args.listen);

    let started = Instant::now();
    let mut screen = Screen::new(args.rate, args.listen);
    let reason = loop {
        tokio::select! {
            signal = shutdown.recv() => break signal,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        screen.show(started.elapsed(), sent.load(Ordering::Relaxed), subscriber.model().as_deref());
        if args.duration.is_some_and(|limit| started.elapsed() >= limit) {
            break "duration reached";
        }
        if pipeline.is_finished() {
            break "the pipeline stopped";
        }
    };
    eprintln!("stopping ({reason}): draining, a final checkpoint and snapshot ...");
    producing.store(false, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || producer.join()).await?.map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let _ = stop.send("demo finished");
    pipeline.await??;
    // Give the subscriber a moment to apply the final snapshot.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let model = subscriber.model();
    screen.show(started.elapsed(), sent.load(Ordering::Relaxed), model.as_deref());
    match model {
        Some(model) => print_top_10(&model),
        None => println!("no snapshot was served (too short a run?)"),
    }
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

/// A small model on the mock cluster: short checkpoint interval, the
/// metrics listener (and the live page) on `listen`.
fn demo_config(bootstrap: &str, dir: &std::path::Path, listen: std::net::SocketAddr) -> FreshetConfig {
    let mut config = FreshetConfig { name: ModelName("demo".to_owned()), ..FreshetConfig::default() };
    config.kafka = KafkaConfig::new(bootstrap);
    config.consumer.group_id = "freshet-demo".to_owned();
    config.model = ModelSpec { dim: 16, ..ModelSpec::default() };
    config.checkpoint.dir = dir.join("checkpoint");
    config.checkpoint.interval_ms = 500;
    config.checkpoint.fsync = false;
    config.publisher.full_every_deltas = 10_000;
    config.metrics.listen = listen.to_string();
    config
}

/// Produces synthetic events at `rate` until `producing` clears.
fn spawn_producer(
    config: &FreshetConfig,
    rate: u64,
    producing: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let producer: ThreadedProducer<DefaultProducerContext> = config.kafka.client().set("linger.ms", "5").create()?;
    let (clicks, ratings) = (config.consumer.topics[0].clone(), config.consumer.topics[1].clone());
    let range = (config.model.rating_min, config.model.rating_max);
    Ok(std::thread::Builder::new().name("demo-producer".to_owned()).spawn(move || {
        let mut stream =
            SynthStream::new(SynthConfig { users: 2_000, items: 500, rating_range: range, ..SynthConfig::default() });
        let started = Instant::now();
        let mut index = 0;
        while producing.load(Ordering::Relaxed) {
            pace(started, index, rate);
            send_synth(&producer, &stream.next_message_at(now_ms()), &clicks, &ratings)?;
            index += 1;
            sent.store(index, Ordering::Relaxed);
        }
        producer.flush(Duration::from_secs(10))?;
        Ok(())
    })?)
}

/// The live summary: redrawn in place on a terminal, one line per second otherwise.
struct Screen {
    rate: u64,
    /// The live page's address.
    page: std::net::SocketAddr,
    terminal: bool,
    last_sent: u64,
    /// Events scored by the newest served version, and when it was shown.
    last_trained: Option<(u64, Instant)>,
}

impl Screen {
    fn new(rate: u64, page: std::net::SocketAddr) -> Self {
        Screen { rate, page, terminal: std::io::stdout().is_terminal(), last_sent: 0, last_trained: None }
    }

    fn show(&mut self, elapsed: Duration, sent: u64, model: Option<&ServingModel>) {
        let per_second = sent.saturating_sub(self.last_sent);
        self.last_sent = sent;
        let served = match model {
            None => "no snapshot served yet".to_owned(),
            Some(model) => {
                let info = model.info();
                let metrics = &info.metrics;
                let trained = metrics.rating_events + metrics.click_events;
                let trained_per_second = match self.last_trained.replace((trained, Instant::now())) {
                    Some((before, at)) => (trained.saturating_sub(before)) as f64 / at.elapsed().as_secs_f64(),
                    None => 0.0,
                };
                let figure = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.4}"));
                format!(
                    "trained {trained} ({trained_per_second:.0}/s) | snapshot v{} ({} users, {} items) | progressive RMSE {} AUC {} | freshness {} ms",
                    info.version,
                    info.rows.get("user").copied().unwrap_or(0),
                    info.rows.get("item").copied().unwrap_or(0),
                    figure(metrics.rating_rmse),
                    figure(metrics.click_auc),
                    now_ms() - info.newest_event_ms,
                )
            }
        };
        let line = format!(
            "[{:>4.0} s] produced {sent} events ({per_second}/s, target {}/s) | {served}",
            elapsed.as_secs_f64(),
            self.rate
        );
        if self.terminal {
            print!(
                "\x1b[2J\x1b[Hfreshet demo: the online-update loop on an in-process Kafka (Ctrl-C stops)\n\
                 live page: http://{}/\n\n{line}\n",
                self.page
            );
        } else {
            println!("{line}");
        }
    }
}

fn print_top_10(model: &ServingModel) {
    println!("\ntop 10 for {SAMPLE_USER} at snapshot v{} (predicted rating):", model.version());
    for (rank, item) in model
        .top_k(Head::Rating, SAMPLE_USER, 10, &ScoreContext::none().at(now_ms()), &HashSet::new())
        .iter()
        .enumerate()
    {
        println!("  {:>2}. {:<8} {:.3}", rank + 1, item.item, item.score);
    }
}
