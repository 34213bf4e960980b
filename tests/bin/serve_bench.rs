//! Serving benchmark tools, driven by `bench/serve.sh`:
//!
//! - `publish`: publishes a model of a given size to a snapshot topic — a
//!   synthetic one, or one trained on a MovieLens ratings file — then, once
//!   a start file appears, deltas at a steady rate with one full snapshot
//!   among them (none while a pause file exists), until a stop file appears;
//! - `load`: a closed-loop HTTP load on `/recommend` over keep-alive
//!   connections, for a bounded number of requests (loopback only), printing
//!   latency percentiles, requests/s and errors as JSON;
//! - `topk`: builds a synthetic model in process and times `top_k`,
//!   `top_k_exact`, `score` and a 1,000-item `rank` with a warm cache;
//! - `recall`: follows the snapshot topic with the subscriber library (what
//!   `freshet serve` embeds), and measures the recall@10 of top-k against
//!   the exact f32 ranking, checking that `freshet serve` answers the same.
//!
//! Usage (flags after the positional arguments):
//!   serve-bench publish BOOTSTRAP MODEL USERS ITEMS [--dim 32] [--ratings FILE]
//!       [--start FILE --stop FILE --pause FILE --deltas-per-sec 4 --delta-users 2000 --delta-items 500 --full-after 40]
//!   serve-bench load ADDRESS USERS REQUESTS [--connections 1] [--k 10] [--seconds 600]
//!   serve-bench recall BOOTSTRAP TOPIC QUERIES [--address HOST:PORT] [--candidates 256]
//!   serve-bench topk USERS ITEMS QUERIES [--dim 32] [--candidates 256]   (in process, no Kafka)

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use freshet_core::snapshot::{SnapshotMetrics, SnapshotRow, Watermark};
use freshet_core::{Feedback, Head, ModelSpec, Rating, RowLayout, ScoreContext, TableKind, hash_id};
use freshet_kafka::{KafkaConfig, ensure_topics};
use freshet_publisher::{Content, Outgoing, PublisherConfig, SnapshotProducer};
use freshet_subscriber::{Subscriber, SubscriberConfig, SubscriberEvent};
use freshet_trainer::{Trainer, TrainerConfig};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args.split_first().context("a command: publish, load or recall")?;
    let (positional, flags) = parse(rest)?;
    match command.as_str() {
        "publish" => publish(&positional, &flags),
        "load" => load(&positional, &flags),
        "recall" => recall(&positional, &flags),
        "topk" => topk(&positional, &flags),
        other => bail!("unknown command {other:?}: publish, load, recall or topk"),
    }
}

/// Positional arguments, then `--name value` flags.
fn parse(args: &[String]) -> anyhow::Result<(Vec<String>, BTreeMap<String, String>)> {
    let mut positional = Vec::new();
    let mut flags = BTreeMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.strip_prefix("--") {
            Some(name) => {
                let value = rest.next().with_context(|| format!("--{name} needs a value"))?;
                flags.insert(name.to_owned(), value.clone());
            }
            None => positional.push(arg.clone()),
        }
    }
    Ok((positional, flags))
}

fn flag<T: std::str::FromStr>(flags: &BTreeMap<String, String>, name: &str, default: T) -> anyhow::Result<T> {
    match flags.get(name) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| anyhow::anyhow!("--{name}: cannot use {value:?}")),
    }
}

/// A deterministic pseudo-random stream.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Roughly normal, mean 0, standard deviation `std`.
    fn normal(&mut self, std: f32) -> f32 {
        let sum: f32 = (0..4).map(|_| (self.next() as f32 / (1u64 << 53) as f32) - 0.5).sum();
        sum * std * 1.732
    }
}

/// A synthetic trained-looking model: users and items around 64 taste
/// clusters, item biases spread like popularity, user scales and sessions.
fn synthetic_rows(users: usize, items: usize, dim: usize, draw: &mut Draw) -> Vec<SnapshotRow> {
    let centers: Vec<Vec<f32>> = (0..64).map(|_| (0..dim).map(|_| draw.normal(0.25)).collect()).collect();
    let mut rows = Vec::with_capacity(users + items);
    for u in 0..users {
        rows.push(user_row(&format!("u{u}"), &centers, dim, draw, 0));
    }
    for i in 0..items {
        rows.push(item_row(&format!("i{i}"), &centers, dim, draw));
    }
    rows
}

fn user_row(id: &str, centers: &[Vec<f32>], dim: usize, draw: &mut Draw, updated_ms: i64) -> SnapshotRow {
    let center = &centers[draw.below(centers.len() as u64) as usize];
    let mut values = vec![draw.normal(0.3), draw.normal(0.5), draw.normal(0.1), draw.normal(0.05)];
    values.extend((0..dim).map(|k| center[k] + draw.normal(0.15)));
    SnapshotRow { table: TableKind::User, key: hash_id(id), id: None, updated_ms, values }
}

fn item_row(id: &str, centers: &[Vec<f32>], dim: usize, draw: &mut Draw) -> SnapshotRow {
    let center = &centers[draw.below(centers.len() as u64) as usize];
    let mut values = vec![draw.normal(0.4), draw.normal(0.6)];
    values.extend((0..dim).map(|k| center[k] + draw.normal(0.12)));
    SnapshotRow { table: TableKind::Item, key: hash_id(id), id: Some(id.to_owned()), updated_ms: 0, values }
}

/// A model trained on a MovieLens ratings file (`userId,movieId,rating,timestamp`).
fn trained_rows(path: &Path, dim: usize) -> anyhow::Result<(Vec<SnapshotRow>, [f32; 2], i64)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events: Vec<Feedback> = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.trim().split(',').collect();
        let [user, item, rating, ts] = fields[..] else { continue };
        let (Ok(rating), Ok(ts)) = (rating.parse::<f32>(), ts.parse::<i64>()) else { continue };
        events.push(Feedback::Rating(Rating {
            user: format!("u{user}"),
            item: format!("i{item}"),
            rating,
            ts: ts * 1000,
            features: Default::default(),
        }));
    }
    events.sort_by_key(Feedback::ts);
    let spec = ModelSpec { dim, rating_min: 0.5, rating_max: 5.0, context_features: true, shards: 1 };
    let config = TrainerConfig { min_count: 1, ..TrainerConfig::default() };
    let mut trainer = Trainer::new(spec, config)?;
    for batch in events.chunks(64) {
        trainer.train_batch(batch);
    }
    let params = trainer.export_params();
    eprintln!("trained on {} ratings of {}: {} rows", events.len(), path.display(), params.rows.len());
    Ok((params.rows, params.globals, trainer.config().session_gap_ms))
}

fn outgoing(version: u64, globals: [f32; 2], gap: i64, content: Content) -> Outgoing {
    let watermark = Watermark { offsets: freshet_core::NextOffsets::new(), newest_event_ms: freshet_core::now_ms() };
    Outgoing {
        version,
        globals,
        session_gap_ms: gap,
        content,
        watermark,
        metrics: SnapshotMetrics::default(),
        rollback_to: None,
    }
}

fn publish(positional: &[String], flags: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let [bootstrap, model, users, items] = positional else {
        bail!("usage: serve-bench publish BOOTSTRAP MODEL USERS ITEMS [flags]");
    };
    let (users, items): (usize, usize) = (users.parse().context("USERS")?, items.parse().context("ITEMS")?);
    let dim: usize = flag(flags, "dim", 32)?;
    let spec = ModelSpec { dim, rating_min: 0.5, rating_max: 5.0, context_features: true, shards: 1 };
    let mut draw = Draw(7);
    let (mut rows, globals, gap) = match flags.get("ratings") {
        Some(path) => trained_rows(Path::new(path), dim)?,
        None => (synthetic_rows(users, items, dim, &mut draw), [3.5, -1.0], 3_600_000),
    };
    rows.sort_by_key(|row| (row.table, row.key));
    let config = PublisherConfig { full_interval_ms: 86_400_000, ..PublisherConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(ensure_topics(&KafkaConfig::new(bootstrap), &[config.topic_spec(model, 1)]))?;
    let mut producer =
        SnapshotProducer::connect(&KafkaConfig::new(bootstrap), &config, model, &spec, freshet_core::Shard::SOLE)?;
    let started = Instant::now();
    let published = producer.publish(&outgoing(1, globals, gap, Content::Full(rows.clone())))?;
    let param_bytes: usize = rows.iter().map(|row| 4 * row.values.len()).sum();
    let counts = TableKind::ALL.map(|table| rows.iter().filter(|row| row.table == table).count());
    println!(
        "{}",
        json!({
            "published": "full", "version": 1, "rows": counts, "param_bytes": param_bytes,
            "bytes": published.bytes, "seconds": started.elapsed().as_secs_f64(),
        })
    );
    let (Some(start), Some(stop)) = (flags.get("start"), flags.get("stop")) else { return Ok(()) };
    while !Path::new(start).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rate: f64 = flag(flags, "deltas-per-sec", 4.0)?;
    let delta_users: usize = flag(flags, "delta-users", 2_000)?;
    let delta_items: usize = flag(flags, "delta-items", 500)?;
    let full_after: u64 = flag(flags, "full-after", 40)?;
    let centers: Vec<Vec<f32>> = (0..64).map(|_| (0..dim).map(|_| draw.normal(0.25)).collect()).collect();
    let position: BTreeMap<(TableKind, u64), usize> =
        rows.iter().enumerate().map(|(at, row)| ((row.table, row.key), at)).collect();
    let (user_keys, item_ids): (Vec<u64>, Vec<String>) = (
        rows.iter().filter(|r| r.table == TableKind::User).map(|r| r.key).collect(),
        rows.iter().filter_map(|r| r.id.clone()).collect(),
    );
    let (mut version, mut deltas, mut delta_bytes, mut full_bytes) = (1u64, 0u64, 0usize, 0usize);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let paused = || flags.get("pause").is_some_and(|pause| Path::new(pause).exists());
    while !Path::new(stop).exists() {
        if paused() {
            std::thread::sleep(Duration::from_millis(20));
            next = Instant::now();
            continue;
        }
        version += 1;
        let content = {
            let mut changes = BTreeMap::new();
            for _ in 0..delta_users {
                let key = user_keys[draw.below(user_keys.len() as u64) as usize];
                let at = position[&(TableKind::User, key)];
                let mut row = user_row("", &centers, dim, &mut draw, freshet_core::now_ms());
                row.key = key;
                rows[at] = row.clone();
                changes.insert((TableKind::User, key), Some(row));
            }
            for _ in 0..delta_items.min(item_ids.len()) {
                let id = &item_ids[draw.below(item_ids.len() as u64) as usize];
                let at = position[&(TableKind::Item, hash_id(id))];
                let row = item_row(id, &centers, dim, &mut draw);
                rows[at] = row.clone();
                changes.insert((TableKind::Item, row.key), Some(row));
            }
            Content::Delta { base_version: version - 1, changes }
        };
        let published = producer.publish(&outgoing(version, globals, gap, content))?;
        deltas += 1;
        delta_bytes += published.bytes;
        if version == full_after + 1 {
            // As `freshet run` does when a full snapshot is due: the delta,
            // then the same version in full (for subscribers that join).
            full_bytes = producer.publish(&outgoing(version, globals, gap, Content::Full(rows.clone())))?.bytes;
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    println!(
        "{}",
        json!({"published": "deltas", "deltas": deltas, "last_version": version,
               "delta_bytes_mean": delta_bytes / deltas.max(1) as usize, "full_bytes": full_bytes})
    );
    Ok(())
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
    address: String,
}

impl Connection {
    fn open(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Connection { reader: BufReader::new(stream), address: address.to_owned() })
    }

    /// Sends a GET and reads the whole answer: status and body.
    fn get(&mut self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        // One write a request: with Nagle off, pieces would go out as separate segments.
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.address);
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("a status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn load(positional: &[String], flags: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let [address, users, requests] = positional else {
        bail!("usage: serve-bench load ADDRESS USERS REQUESTS [flags]");
    };
    let (users, requests): (u64, usize) = (users.parse().context("USERS")?, requests.parse().context("REQUESTS")?);
    let connections: usize = flag(flags, "connections", 1)?;
    let k: usize = flag(flags, "k", 10)?;
    let seconds: f64 = flag(flags, "seconds", 600.0)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (address, issued) = (address.clone(), Arc::clone(&issued));
            std::thread::spawn(move || -> (Vec<f64>, usize) {
                let mut draw = Draw(1000 + c as u64);
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                let Ok(mut connection) = Connection::open(&address) else { return (latencies, requests) };
                while issued.fetch_add(1, Ordering::Relaxed) < requests && Instant::now() < deadline {
                    let path = format!("/recommend?user=u{}&k={k}", draw.below(users));
                    let sent = Instant::now();
                    match connection.get(&path) {
                        Ok((200, _)) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            match Connection::open(&address) {
                                Ok(fresh) => connection = fresh,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (l, e) = worker.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "requests": latencies.len(), "errors": errors, "connections": connections, "seconds": elapsed,
            "rps": latencies.len() as f64 / elapsed,
            "p50_ms": percentile(&latencies, 0.50), "p90_ms": percentile(&latencies, 0.90),
            "p99_ms": percentile(&latencies, 0.99), "p999_ms": percentile(&latencies, 0.999),
            "max_ms": latencies.last().copied().unwrap_or(0.0),
        })
    );
    Ok(())
}

fn recall(positional: &[String], flags: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let [bootstrap, topic, queries] = positional else {
        bail!("usage: serve-bench recall BOOTSTRAP TOPIC QUERIES [flags]");
    };
    let queries: usize = queries.parse().context("QUERIES")?;
    let candidates: Vec<usize> = match flags.get("candidates") {
        None => vec![freshet_subscriber::DEFAULT_CANDIDATES],
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>().context("--candidates")?,
    };
    let (applied, on_applied) = std::sync::mpsc::channel();
    let config = SubscriberConfig { top_k_candidates: candidates[0], ..SubscriberConfig::new(bootstrap, topic) };
    let subscriber = Subscriber::start(&config, move |event| {
        if let SubscriberEvent::Applied(report) = event {
            let _ = applied.send(report.version);
        }
    })?;
    let started = Instant::now();
    on_applied.recv_timeout(Duration::from_secs(600)).context("no snapshot applied within 10 minutes")?;
    let load_seconds = started.elapsed().as_secs_f64();
    // Compare with `freshet serve` at the version it serves.
    if let Some(address) = flags.get("address") {
        let (_, body) = Connection::open(address)?.get("/version")?;
        let served: serde_json::Value = serde_json::from_slice(&body)?;
        let target = served["info"]["version"].as_u64().context("the served version")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while subscriber.model().is_none_or(|m| m.version() < target) {
            if Instant::now() > deadline {
                bail!("version {target} was not reached");
            }
            let _ = on_applied.recv_timeout(Duration::from_secs(1));
        }
    }
    let model = subscriber.model().context("a model")?;
    let count = |table: TableKind| model.info().rows.get(table.name()).copied().unwrap_or(0);
    let (items, users) = (count(TableKind::Item), count(TableKind::User));
    let spec = model.spec().clone();
    let param_bytes: usize =
        TableKind::ALL.iter().map(|&table| count(table) * 4 * RowLayout::new(table, spec.dim).width()).sum();
    // Users by id: the synthetic ids are u0…; a trained model's too (u<userId>).
    let user_ids: Vec<String> = (0..users as u64 * 4)
        .map(|n| format!("u{n}"))
        .filter(|id| model.user_updated_ms(id).is_some())
        .take(users)
        .collect();
    let mut draw = Draw(99);
    let mut results = Vec::new();
    for &count in &candidates {
        let mut model_with = (*model).clone();
        model_with.set_top_k_candidates(count);
        let (mut found, mut timed, mut exact_timed) = (0usize, Vec::new(), Vec::new());
        for _ in 0..queries {
            let user = &user_ids[draw.below(user_ids.len() as u64) as usize];
            let head = if draw.below(2) == 0 { Head::Rating } else { Head::Click };
            let context = ScoreContext::none();
            let t = Instant::now();
            let exact = model_with.top_k_exact(head, user, 10, &context, &HashSet::new());
            exact_timed.push(t.elapsed().as_secs_f64() * 1e3);
            let truth: HashSet<&str> = exact.iter().map(|r| r.item.as_str()).collect();
            let t = Instant::now();
            let top = model_with.top_k(head, user, 10, &context, &HashSet::new());
            timed.push(t.elapsed().as_secs_f64() * 1e3);
            found += top.iter().filter(|r| truth.contains(r.item.as_str())).count();
        }
        timed.sort_by(f64::total_cmp);
        exact_timed.sort_by(f64::total_cmp);
        results.push(json!({
            "candidates": count, "recall_at_10": found as f64 / (10 * queries) as f64,
            "top_k_p50_ms": percentile(&timed, 0.5), "top_k_p99_ms": percentile(&timed, 0.99),
            "exact_scan_p50_ms": percentile(&exact_timed, 0.5), "exact_scan_p99_ms": percentile(&exact_timed, 0.99),
        }));
    }
    let mut same_as_served = serde_json::Value::Null;
    if let Some(address) = flags.get("address") {
        let mut connection = Connection::open(address)?;
        let mut equal = 0;
        for user in user_ids.iter().take(50) {
            let (_, body) = connection.get(&format!("/recommend?user={user}&k=10&head=rating"))?;
            let served: serde_json::Value = serde_json::from_slice(&body)?;
            let ours =
                model.top_k(Head::Rating, user, 10, &ScoreContext::none().at(freshet_core::now_ms()), &HashSet::new());
            let theirs: Vec<&str> =
                served["items"].as_array().into_iter().flatten().filter_map(|i| i["item"].as_str()).collect();
            let same = served["version"].as_u64() == Some(model.version())
                && theirs == ours.iter().map(|r| r.item.as_str()).collect::<Vec<_>>();
            equal += usize::from(same);
        }
        same_as_served = json!(equal);
    }
    println!(
        "{}",
        json!({
            "version": model.version(), "users": users, "items": items, "dim": spec.dim,
            "param_bytes": param_bytes, "heap_bytes": model.heap_bytes(), "load_seconds": load_seconds,
            "results": results, "served_answers_equal_of_50": same_as_served,
        })
    );
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

fn topk(positional: &[String], flags: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let [users, items, queries] = positional else {
        bail!("usage: serve-bench topk USERS ITEMS QUERIES [flags]");
    };
    let (users, items, queries): (usize, usize, usize) =
        (users.parse().context("USERS")?, items.parse().context("ITEMS")?, queries.parse().context("QUERIES")?);
    let dim: usize = flag(flags, "dim", 32)?;
    let candidates: usize = flag(flags, "candidates", freshet_subscriber::DEFAULT_CANDIDATES)?;
    let spec = ModelSpec { dim, rating_min: 0.5, rating_max: 5.0, context_features: true, shards: 1 };
    let mut draw = Draw(7);
    let mut rows = synthetic_rows(users, items, dim, &mut draw);
    rows.sort_by_key(|row| (row.table, row.key));
    let counts = TableKind::ALL.map(|table| rows.iter().filter(|row| row.table == table).count() as u64);
    let header = freshet_core::snapshot::SnapshotHeader {
        model: "topk".to_owned(),
        version: 1,
        kind: freshet_core::snapshot::SnapshotKind::Full,
        created_ms: 0,
        watermark: Watermark::default(),
        spec,
        globals: [3.5, -1.0],
        session_gap_ms: 3_600_000,
        rows: counts,
        tombstones: 0,
        chain_start_offset: None,
        metrics: SnapshotMetrics::default(),
        rollback_to: None,
        shard: 0,
    };
    let encoded: usize = rows.iter().map(|row| freshet_core::snapshot::encoded_row_len(row, Default::default())).sum();
    let building = Instant::now();
    let mut builder = freshet_subscriber::Builder::full(&header, None, candidates)?;
    for (index, chunk) in rows.chunks(4096).enumerate() {
        let chunk = freshet_core::snapshot::SnapshotChunk {
            version: 1,
            index: index as u32,
            rows: chunk.to_vec(),
            tombstones: Vec::new(),
        };
        builder.apply(&chunk)?;
    }
    drop(rows);
    let model = builder.finish(0);
    let build_seconds = building.elapsed().as_secs_f64();
    eprintln!("built {} rows ({encoded} snapshot bytes) in {build_seconds:.2} s", users + items);
    let user_ids: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
    let item_ids: Vec<String> = (0..1000).map(|i| format!("i{}", i * 7 % items.max(1))).collect();
    let context = ScoreContext::none();
    let none = HashSet::new();
    let time = |f: &mut dyn FnMut(&str)| -> (f64, f64) {
        let mut draw = Draw(5);
        let mut timed: Vec<f64> = (0..queries)
            .map(|_| {
                let user = &user_ids[draw.below(users as u64) as usize];
                let t = Instant::now();
                f(user);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        timed.sort_by(f64::total_cmp);
        (percentile(&timed, 0.5), percentile(&timed, 0.99))
    };
    let (found, mut asked) = (std::cell::Cell::new(0usize), 0usize);
    let mut draw = Draw(5);
    for _ in 0..queries.min(100) {
        let user = &user_ids[draw.below(users as u64) as usize];
        let exact: HashSet<String> =
            model.top_k_exact(Head::Rating, user, 10, &context, &none).into_iter().map(|r| r.item).collect();
        let top = model.top_k(Head::Rating, user, 10, &context, &none);
        found.set(found.get() + top.iter().filter(|r| exact.contains(&r.item)).count());
        asked += 10;
    }
    let top_k = time(&mut |user| drop(model.top_k(Head::Rating, user, 10, &context, &none)));
    if flags.contains_key("only-top-k") {
        println!("{}", json!({"items": items, "top_k_ms": {"p50": top_k.0, "p99": top_k.1}}));
        return Ok(());
    }
    let exact = time(&mut |user| drop(model.top_k_exact(Head::Rating, user, 10, &context, &none)));
    let score = time(&mut |user| {
        let _ = model.score(Head::Rating, user, "i1", &context);
    });
    let rank = time(&mut |user| drop(model.rank(Head::Rating, user, &item_ids, &context)));
    println!(
        "{}",
        json!({
            "users": users, "items": items, "dim": dim, "candidates": candidates, "queries": queries,
            "recall_at_10": found.get() as f64 / asked as f64,
            "top_k_ms": {"p50": top_k.0, "p99": top_k.1}, "top_k_exact_ms": {"p50": exact.0, "p99": exact.1},
            "score_ms": {"p50": score.0, "p99": score.1}, "rank_1000_ms": {"p50": rank.0, "p99": rank.1},
            "heap_bytes": model.heap_bytes(),
        })
    );
    Ok(())
}
