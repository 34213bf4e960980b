//! `freshet eval`: prequential replay of a ratings (and clicks) file, or of
//! the synthetic stream, straight into the trainer — no Kafka. Events are
//! replayed in timestamp order (stable: ties keep file order, ratings before
//! clicks); each micro-batch is scored before it is trained on. File layouts
//! are described in [`dataset`]. With `--shards S` the replay goes through a
//! simulated sharded model ([`ShardSimulation`]) instead of one trainer.

mod dataset;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use freshet_core::keyed::{EventRef, Events, KeyedEvents, Target};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Head, ModelSpec, TableKind};
use freshet_trainer::{ClickStats, Counters, RatingStats, ShardSimulation, SimulationTraffic, Trainer, TrainerConfig};

use crate::progress;
use dataset::{Loaded, RatingRange, RatingsFormat};

/// Malformed lines reported one by one; the rest are only counted.
const MALFORMED_SHOWN: usize = 20;

/// Arguments of `freshet eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Ratings file to replay (layouts: see --format).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["clicks", "synthetic"])]
    ratings: Option<PathBuf>,
    /// Ratings layout: MovieLens u.data / ratings.dat / ratings.csv (detected),
    /// or freshet CSV `user,item,rating,ts[,features]` (header; ts in ms).
    #[arg(long, value_enum, default_value = "movielens")]
    format: RatingsFormat,
    /// Clicks file, freshet CSV: `user,item,clicked,ts[,features]` (header;
    /// clicked 0/1; ts in ms; features `name=value;name=value`).
    #[arg(long, value_name = "FILE")]
    clicks: Option<PathBuf>,
    /// Replay N events of the synthetic planted-factor stream instead of files.
    #[arg(long, value_name = "N", conflicts_with_all = ["ratings", "clicks"])]
    synthetic: Option<u64>,
    /// Share of clicks in the synthetic stream (the rest are ratings).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, requires = "synthetic")]
    synthetic_click_share: f64,
    /// Context features of each synthetic click: 1 (device), 2 (and page,
    /// which interacts with the item) or 3 (and hour of day).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "synthetic",
          value_parser = clap::value_parser!(u8).range(1..=freshet_core::synth::MAX_SYNTH_FEATURES as i64))]
    synthetic_click_features: u8,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 42, requires = "synthetic")]
    synthetic_seed: u64,
    /// Write the replayed ratings, in replay order, as freshet CSV.
    #[arg(long, value_name = "FILE")]
    export_ratings: Option<PathBuf>,
    /// Write the replayed clicks, in replay order, as freshet CSV.
    #[arg(long, value_name = "FILE")]
    export_clicks: Option<PathBuf>,
    /// Embedding dimension (default: the model spec's).
    #[arg(long, value_name = "D")]
    dim: Option<usize>,
    /// Events per micro-batch.
    #[arg(long, value_name = "B", default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Trainer settings overriding the defaults, as JSON (keys of the
    /// `[trainer]` table), e.g. '{"learning_rate": 0.02}'.
    #[arg(long, value_name = "JSON")]
    trainer: Option<String>,
    /// Simulate the model sharded over S shards (in this one process,
    /// deterministically): events routed by user, gradients for rows owned
    /// elsewhere sent to their owners, replicas of the others' rows.
    #[arg(long, value_name = "S", default_value_t = 1)]
    shards: u32,
    /// With --shards: event time (ms) between two exchanges of gradients and
    /// replica rows; 0 exchanges after every micro-batch.
    #[arg(long, value_name = "T", default_value_t = 1_000)]
    staleness_ms: i64,
    /// Write each rating's and click's progressive prediction (a clipped
    /// rating or a click probability, from the parameters before its
    /// micro-batch), one per line in replay order, to FILE: for scoring
    /// freshet with the same code as another tool. Unsharded only.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the text summary.
    #[arg(long)]
    json: bool,
}

/// Default micro-batch size of `freshet eval`: one event per step, the
/// protocol of per-event learners such as River and Vowpal Wabbit. Larger
/// batches score every event of a batch with the parameters from before it,
/// which costs accuracy when one user's events arrive in a burst (MovieLens
/// users rate dozens of films in one sitting).
const DEFAULT_BATCH: usize = 1;

/// Runs `freshet eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    if !(1..=freshet_core::shard::MAX_SHARDS).contains(&args.shards) {
        bail!("--shards must be between 1 and {}", freshet_core::shard::MAX_SHARDS);
    }
    if args.staleness_ms < 0 {
        bail!("--staleness-ms must not be negative");
    }
    if args.predictions.is_some() && args.shards > 1 {
        bail!("--predictions is for an unsharded model (--shards 1)");
    }
    let spec =
        ModelSpec { dim: args.dim.unwrap_or(ModelSpec::default().dim), shards: args.shards, ..ModelSpec::default() };
    spec.check()?;
    let config: TrainerConfig = match &args.trainer {
        Some(json) => serde_json::from_str(json).context("--trainer is not a valid trainer configuration")?,
        None => TrainerConfig::default(),
    };
    config.check()?;

    let new_sim = || ShardSimulation::new(spec.clone(), config.clone(), args.batch, args.staleness_ms);
    let replay = match streamed_reader(&args, &spec)? {
        Some(reader) => replay_streamed(&args, &reader, new_sim)?,
        None => replay_loaded(&args, &spec, new_sim)?,
    };
    let (count, sim) = (replay.events, &replay.sim);

    let summary = Summary {
        events: count,
        malformed: replay.malformed,
        load_s: replay.load_s,
        train_s: replay.train_s,
        batch: args.batch,
        staleness_ms: args.staleness_ms,
        sim,
    };
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

/// Bytes of a file parsed at a time when it is parsed on its own thread
/// while the events before are trained.
const PIECE_BYTES: usize = 4 << 20;

/// Events replayed between two updates of the progress bar.
const PROGRESS_EVERY: usize = 65_536;

/// Pieces parsed ahead of the trainer.
const PIECES_AHEAD: usize = 2;

/// A finished replay.
struct Replay {
    sim: ShardSimulation,
    events: u64,
    malformed: u64,
    /// Seconds until every event was parsed (and sorted).
    load_s: f64,
    /// Seconds from the start of training to its end.
    train_s: f64,
}

/// Trains `events` in order, writing the predictions first when asked.
fn replay_events(
    sim: &mut ShardSimulation,
    predictions: &mut Option<Predictions>,
    events: Events<'_>,
) -> anyhow::Result<()> {
    sim.push_events(events, |trainer, event| match predictions {
        Some(predictions) => predictions.write(trainer, event),
        None => Ok(()),
    })
}

/// The last timestamp of `events` if they are in time order and none is
/// before `after`.
fn in_time_order(events: &KeyedEvents, after: i64) -> Option<i64> {
    events.iter().try_fold(after, |last, event| (event.ts >= last).then_some(event.ts))
}

/// The one file of a replay that can be parsed while it is trained: a
/// single input file with nothing to export.
fn streamed_reader(args: &EvalArgs, spec: &ModelSpec) -> anyhow::Result<Option<dataset::Reader>> {
    if args.export_ratings.is_some() || args.export_clicks.is_some() {
        return Ok(None);
    }
    let range = RatingRange { min: spec.rating_min, max: spec.rating_max };
    match (&args.ratings, &args.clicks, args.synthetic) {
        (Some(path), None, None) => dataset::Reader::ratings(path, args.format, range).map(Some),
        (None, Some(path), None) => dataset::Reader::clicks(path).map(Some),
        _ => Ok(None),
    }
}

/// Replays one file parsed on a thread of its own, piece by piece, while
/// this one trains the pieces before: when the file is in time order (as a
/// log is), parsing costs no time of its own. A file found out of order is
/// parsed again whole, sorted and replayed from the start by a new model,
/// so the result is the one of [`replay_loaded`] either way.
fn replay_streamed(
    args: &EvalArgs,
    reader: &dataset::Reader,
    new_sim: impl Fn() -> Result<ShardSimulation, freshet_core::ConfigError>,
) -> anyhow::Result<Replay> {
    let started = Instant::now();
    let bar = progress::bar(reader.size()?, "bytes");
    let mut sim = new_sim()?;
    let mut predictions = args.predictions.as_deref().map(Predictions::create).transpose()?;
    let (mut trained, mut malformed) = (0u64, Vec::new());
    let mut last_ts = Some(i64::MIN);
    let parsed_s = std::thread::scope(|scope| -> anyhow::Result<f64> {
        let (pieces, parsed) = std::sync::mpsc::sync_channel::<Loaded>(PIECES_AHEAD);
        // Pieces trained go back to the parser, which fills them again.
        let (spare, spares) = std::sync::mpsc::channel::<Loaded>();
        let parser = scope.spawn(move || -> anyhow::Result<f64> {
            reader.read_pieces(PIECE_BYTES, || spares.try_recv().ok(), |piece| pieces.send(piece).is_ok())?;
            Ok(started.elapsed().as_secs_f64())
        });
        for mut piece in parsed {
            last_ts = last_ts.and_then(|last| in_time_order(&piece.events, last));
            if last_ts.is_none() {
                break; // the parser stops at its next piece
            }
            replay_events(&mut sim, &mut predictions, piece.events.as_events())?;
            trained += piece.events.len() as u64;
            bar.inc(piece.bytes);
            malformed.append(&mut piece.malformed);
            let _ = spare.send(piece);
        }
        parser.join().map_err(|_| anyhow::anyhow!("the parsing thread panicked"))?
    })?;
    if last_ts.is_some() {
        report_malformed(&malformed);
        sim.finish();
        finish(predictions)?;
        bar.finish_and_clear();
        let train_s = started.elapsed().as_secs_f64();
        return Ok(Replay { sim, events: trained, malformed: malformed.len() as u64, load_s: parsed_s, train_s });
    }
    eprintln!("{}: not in time order; sorting it and replaying from the start", reader.path().display());
    bar.finish_and_clear();
    replay_all(args, reader.read_all()?, started, new_sim)
}

/// Replays every input loaded first.
fn replay_loaded(
    args: &EvalArgs,
    spec: &ModelSpec,
    new_sim: impl Fn() -> Result<ShardSimulation, freshet_core::ConfigError>,
) -> anyhow::Result<Replay> {
    let started = Instant::now();
    replay_all(args, load(args, spec)?, started, new_sim)
}

/// Replays `loaded` (read since `started`) sorted by time, exporting it
/// first when asked.
fn replay_all(
    args: &EvalArgs,
    loaded: Loaded,
    started: Instant,
    new_sim: impl Fn() -> Result<ShardSimulation, freshet_core::ConfigError>,
) -> anyhow::Result<Replay> {
    report_malformed(&loaded.malformed);
    let mut events = loaded.events;
    events.sort_by_time();
    let load_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.export_ratings {
        dataset::write_csv(path, &events, false)?;
    }
    if let Some(path) = &args.export_clicks {
        dataset::write_csv(path, &events, true)?;
    }
    let (sim, train_s) = replay_sorted(args, &events, new_sim)?;
    Ok(Replay { sim, events: events.len() as u64, malformed: loaded.malformed.len() as u64, load_s, train_s })
}

/// Replays `events` (in time order) through a new model.
fn replay_sorted(
    args: &EvalArgs,
    events: &KeyedEvents,
    new_sim: impl Fn() -> Result<ShardSimulation, freshet_core::ConfigError>,
) -> anyhow::Result<(ShardSimulation, f64)> {
    let bar = progress::bar(events.len() as u64, "events");
    let mut sim = new_sim()?;
    let mut predictions = args.predictions.as_deref().map(Predictions::create).transpose()?;
    let train_start = Instant::now();
    let all = events.as_events();
    for from in (0..all.len()).step_by(PROGRESS_EVERY) {
        let to = (from + PROGRESS_EVERY).min(all.len());
        replay_events(&mut sim, &mut predictions, all.slice(from..to))?;
        bar.set_position(to as u64);
    }
    sim.finish();
    finish(predictions)?;
    bar.finish_and_clear();
    Ok((sim, train_start.elapsed().as_secs_f64()))
}

fn finish(predictions: Option<Predictions>) -> anyhow::Result<()> {
    predictions.map_or(Ok(()), Predictions::finish)
}

/// The progressive predictions of a replay, written as they are made.
struct Predictions {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl Predictions {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Predictions { path: path.to_owned(), out: std::io::BufWriter::new(file) })
    }

    /// The prediction `trainer` makes of `event` before its micro-batch
    /// trains (the events before it in the batch are not trained yet
    /// either: the progressive score, as the trainer's metrics take it).
    fn write(&mut self, trainer: &Trainer, event: EventRef<'_>) -> anyhow::Result<()> {
        let head = match event.target {
            Target::Rating(_) => Head::Rating,
            Target::Click(_) => Head::Click,
            Target::Forget => return Ok(()),
        };
        let prediction = trainer.predict_keys(head, event.user, event.item, event.features, Some(event.ts));
        writeln!(self.out, "{prediction}").with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The events to replay, in file order (ratings first, then clicks).
fn load(args: &EvalArgs, spec: &ModelSpec) -> anyhow::Result<Loaded> {
    if let Some(n) = args.synthetic {
        if !(0.0..=1.0).contains(&args.synthetic_click_share) {
            bail!("--synthetic-click-share must be in [0, 1]");
        }
        let cfg = SynthConfig {
            seed: args.synthetic_seed,
            click_share: args.synthetic_click_share,
            click_features: usize::from(args.synthetic_click_features),
            ..SynthConfig::default()
        };
        let (start, step) = (cfg.start_ts, cfg.ts_step_ms);
        let mut stream = SynthStream::new(cfg);
        let mut events = KeyedEvents::with_capacity(usize::try_from(n).unwrap_or(0), 0, 0);
        for i in 0..n {
            events.push(&stream.next_event_at(start + i as i64 * step));
        }
        return Ok(Loaded { events, malformed: Vec::new(), bytes: 0 });
    }
    let range = RatingRange { min: spec.rating_min, max: spec.rating_max };
    let mut loaded = match &args.ratings {
        Some(path) => dataset::read_ratings(path, args.format, range)?,
        None => Loaded::default(),
    };
    if let Some(path) = &args.clicks {
        let clicks = dataset::read_clicks(path)?;
        loaded.events.append(&clicks.events);
        loaded.malformed.extend(clicks.malformed);
        loaded.bytes += clicks.bytes;
    }
    Ok(loaded)
}

fn report_malformed(malformed: &[dataset::Malformed]) {
    for bad in malformed.iter().take(MALFORMED_SHOWN) {
        eprintln!("{}:{}: skipped malformed line: {}", bad.path.display(), bad.line, bad.reason);
    }
    if malformed.len() > MALFORMED_SHOWN {
        eprintln!("... and {} more malformed lines", malformed.len() - MALFORMED_SHOWN);
    }
}

struct Summary<'a> {
    events: u64,
    malformed: u64,
    load_s: f64,
    train_s: f64,
    batch: usize,
    staleness_ms: i64,
    sim: &'a ShardSimulation,
}

/// The progressive figures of a replay: cumulative over every shard, and
/// over the sliding window for an unsharded model (windows of several
/// shards cover different events and do not add up).
struct Figures {
    rating: RatingStats,
    click: ClickStats,
    window: Option<(RatingStats, ClickStats)>,
}

impl Summary<'_> {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.train_s.max(1e-9)
    }

    fn shards(&self) -> &[freshet_trainer::Trainer] {
        self.sim.shards()
    }

    fn figures(&self) -> Figures {
        let (rating, click) = self.sim.metrics();
        let window = match self.shards() {
            [one] => Some((one.metrics().rating_window, one.metrics().click_window)),
            _ => None,
        };
        Figures { rating, click, window }
    }

    /// A counter summed over the shards.
    fn count(&self, counter: fn(&Counters) -> u64) -> u64 {
        self.shards().iter().map(|t| counter(t.counters())).sum()
    }

    /// Rows of a table, each counted at its owner.
    fn rows(&self, kind: TableKind) -> usize {
        self.shards().iter().map(|t| t.rows(kind)).sum()
    }

    fn dim(&self) -> usize {
        self.shards()[0].spec().dim
    }

    fn json(&self) -> serde_json::Value {
        let f = self.figures();
        let window = f.window.map(|(rating, click)| {
            serde_json::json!({
                "rmse": rating.rmse,
                "mae": rating.mae,
                "logloss": click.logloss,
                "auc": click.auc,
            })
        });
        let SimulationTraffic { syncs, gradient_messages, gradient_rows, replica_rows } = self.sim.traffic();
        serde_json::json!({
            "events": self.events,
            "ratings": self.count(|c| c.ratings),
            "clicks": self.count(|c| c.clicks),
            "malformed": self.malformed,
            "rmse": f.rating.rmse,
            "mae": f.rating.mae,
            "logloss": f.click.logloss,
            "auc": f.click.auc,
            "window": window,
            "events_per_s": self.events_per_s(),
            "train_s": self.train_s,
            "load_s": self.load_s,
            "dim": self.dim(),
            "batch": self.batch,
            "shards": self.shards().len(),
            "staleness_ms": self.staleness_ms,
            "traffic": {
                "syncs": syncs,
                "gradient_messages": gradient_messages,
                "gradient_rows": gradient_rows,
                "replica_rows": replica_rows,
            },
            "rows": {
                "users": self.rows(TableKind::User),
                "items": self.rows(TableKind::Item),
                "features": self.rows(TableKind::Feature),
            },
            "nonfinite_skipped": self.count(|c| c.nonfinite_skipped),
            "sessions_restarted": self.count(|c| c.sessions_restarted),
        })
    }

    fn text(&self) -> String {
        let f = self.figures();
        let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        let (rating_window, click_window) = match f.window {
            Some((r, c)) => (
                format!("   (last {} in window: RMSE {}  MAE {})", r.count, num(r.rmse), num(r.mae)),
                format!("   (last {} in window: log loss {}  AUC {})", c.count, num(c.logloss), num(c.auc)),
            ),
            None => (String::new(), String::new()),
        };
        let mut text = format!(
            "events       {} ({} ratings, {} clicks; {} malformed lines skipped)\n\
             ratings      RMSE {}  MAE {}{rating_window}\n\
             clicks       log loss {}  AUC {}{click_window}\n\
             throughput   {:.0} events/s training (dim {}, batch {}); {:.2} s training, {:.2} s loading\n",
            self.events,
            self.count(|c| c.ratings),
            self.count(|c| c.clicks),
            self.malformed,
            num(f.rating.rmse),
            num(f.rating.mae),
            num(f.click.logloss),
            num(f.click.auc),
            self.events_per_s(),
            self.dim(),
            self.batch,
            self.train_s,
            self.load_s,
        );
        if self.shards().len() > 1 {
            let t = self.sim.traffic();
            text.push_str(&format!(
                "shards       {} simulated in one process, exchanging every {} ms of event time: \
                 {} exchanges, {} gradient messages ({} rows), {} replica rows set\n",
                self.shards().len(),
                self.staleness_ms,
                t.syncs,
                t.gradient_messages,
                t.gradient_rows,
                t.replica_rows,
            ));
        }
        text
    }
}
