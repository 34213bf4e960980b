//! Serving equals training, against the real broker: along a full + delta
//! chain trained on clicks and ratings that carry three context features, at
//! every published version, served scores equal the trainer's predictions
//! bit for bit — through the Rust API and through HTTP — with the session
//! rule applied at the request's time; `rank` equals `score` per candidate;
//! top-k with features equals a brute-force sort of `score`. The same for a
//! model of three shards, served as the union of their three chains.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use freshet_core::{Features, Head, ScoreContext};
use freshet_e2e::process::{free_port, get, post_json};
use freshet_e2e::snapshots::{
    CONTEXT, ModelUnderTest, Scenario, ShardedModelUnderTest, TrainedModel, Triple, same_params, same_scores,
    sample_triples, snapshot_topic_of, subscribe, wait_for_version,
};
use freshet_kafka::KafkaConfig;
use freshet_publisher::SnapshotProducer;
use freshet_subscriber::http::{RouterOptions, ServeMetrics, router, serve};
use freshet_subscriber::{ServingModel, Subscriber, SubscriberView};
use serde_json::Value;

const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Triples compared at every version.
const TRIPLES: usize = 1_000;

/// `freshet serve`'s endpoint over `view`, on a thread, until the test ends.
fn serve_http(view: SubscriberView) -> anyhow::Result<String> {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let app = router(view, ServeMetrics::new()?, RouterOptions::new(Head::Rating));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let _ = runtime.block_on(serve(address, app, std::future::pending()));
    });
    let address = address.to_string();
    for _ in 0..100 {
        if get(&address, "/healthz").0 == 200 {
            return Ok(address);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the endpoint on {address} never answered")
}

fn head_name(head: Head) -> &'static str {
    match head {
        Head::Rating => "rating",
        Head::Click => "click",
    }
}

/// The query string of a triple's features.
fn feature_params(features: &Features) -> String {
    features.iter().map(|(name, value)| format!("&f.{name}={value}")).collect()
}

/// The number after `"field":` in a JSON text, parsed straight to f32 (a
/// detour through f64 could round a second time).
fn f32_field(body: &str, field: &str) -> anyhow::Result<f32> {
    let start = body.find(&format!("\"{field}\":")).with_context(|| format!("no {field} in {body}"))? + field.len() + 3;
    let text: String = body[start..].chars().take_while(|c| !matches!(c, ',' | '}')).collect();
    Ok(text.trim().parse()?)
}

/// The numbers of the JSON array `"field": [...]`, parsed straight to f32.
fn f32_array(body: &str, field: &str) -> anyhow::Result<Vec<f32>> {
    let start =
        body.find(&format!("\"{field}\":[")).with_context(|| format!("no {field} in {body}"))? + field.len() + 4;
    let end = start + body[start..].find(']').context("an unterminated array")?;
    body[start..end].split(',').filter(|s| !s.is_empty()).map(|s| Ok(s.trim().parse()?)).collect()
}

/// Served over HTTP as the trainer predicts: `/score` for every triple.
fn http_scores_equal(
    address: &str,
    trained: &impl TrainedModel,
    version: u64,
    triples: &[Triple],
) -> anyhow::Result<()> {
    for t in triples {
        let path = format!(
            "/score?user={}&item={}&head={}&ts={}{}",
            t.user,
            t.item,
            head_name(t.head),
            t.at_ms,
            feature_params(&t.features)
        );
        let (status, body) = get(address, &path);
        if status != 200 {
            bail!("{path}: {status} {body}");
        }
        let answer: Value = serde_json::from_str(&body)?;
        if answer["version"].as_u64() != Some(version) {
            bail!("{path}: version {} served, {version} expected", answer["version"]);
        }
        let (got, want) = (f32_field(&body, "score")?, trained.predict(t.head, &t.user, &t.item, &t.context()));
        if got.to_bits() != want.to_bits() {
            bail!("{path}: served {got} over HTTP, trainer {want}");
        }
    }
    Ok(())
}

/// `rank` (Rust and `POST /rank`) scores each candidate as `score` does.
fn rank_is_score(
    address: &str,
    served: &ServingModel,
    trained: &impl TrainedModel,
    triples: &[Triple],
) -> anyhow::Result<()> {
    let items: Vec<String> = (0..60).map(|i| format!("i{}", i * 7 % 230)).collect();
    for t in triples.iter().take(40) {
        let context = t.context();
        let ranked = served.rank(t.head, &t.user, &items, &context);
        let body = serde_json::json!({
            "user": t.user, "items": items, "features": t.features, "head": head_name(t.head), "ts": t.at_ms,
        });
        let (status, answer) = post_json(address, "/rank", &body.to_string());
        if status != 200 {
            bail!("POST /rank: {status} {answer}");
        }
        let over_http = f32_array(&answer, "scores")?;
        for ((item, got), http) in items.iter().zip(&ranked).zip(&over_http) {
            let want = trained.predict(t.head, &t.user, item, &context);
            let score = served.score(t.head, &t.user, item, &context);
            if got.to_bits() != score.to_bits() || got.to_bits() != want.to_bits() || http.to_bits() != want.to_bits() {
                bail!("{t:?} {item}: rank {got}, score {score}, POST /rank {http}, trainer {want}");
            }
        }
    }
    Ok(())
}

/// Top-k with features is the brute-force order of `score` over every item
/// (through the Rust API and `/recommend`).
fn top_k_is_brute_force(address: &str, served: &ServingModel, triples: &[Triple]) -> anyhow::Result<()> {
    let items: Vec<String> =
        served.rows(freshet_core::TableKind::Item).filter_map(|(_, id, _)| id.map(str::to_owned)).collect();
    for t in triples.iter().take(40) {
        let context = t.context();
        let mut brute: Vec<f32> = items.iter().map(|item| served.score(t.head, &t.user, item, &context)).collect();
        brute.sort_by(|a, b| b.total_cmp(a));
        let top = served.top_k(t.head, &t.user, 10, &context, &HashSet::new());
        let got: Vec<u32> = top.iter().map(|r| r.score.to_bits()).collect();
        let want: Vec<u32> = brute[..10].iter().map(|s| s.to_bits()).collect();
        if got != want {
            bail!("{t:?}: top-k scores {top:?}, brute force {:?}", &brute[..10]);
        }
        for r in &top {
            if r.score.to_bits() != served.score(t.head, &t.user, &r.item, &context).to_bits() {
                bail!("{t:?}: {r:?} is not the item's score");
            }
        }
        let path = format!(
            "/recommend?user={}&k=10&head={}&ts={}{}",
            t.user,
            head_name(t.head),
            t.at_ms,
            feature_params(&t.features)
        );
        let (status, body) = get(address, &path);
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        let over_http: Vec<&str> =
            answer["items"].as_array().context("items")?.iter().filter_map(|i| i["item"].as_str()).collect();
        let rust: Vec<&str> = top.iter().map(|r| r.item.as_str()).collect();
        if over_http != rust {
            bail!("{path}: {over_http:?} over HTTP, {rust:?} through the Rust API");
        }
    }
    Ok(())
}

#[test]
fn served_scores_equal_the_trainers_predictions_bit_for_bit_at_every_version() -> anyhow::Result<()> {
    let mut scenario = Scenario::with_model("served-equals-trained", ModelUnderTest::with_context(11))?;
    let mut producer = scenario.producer()?;
    let (subscriber, log) = scenario.subscribe()?;
    let address = serve_http(subscriber.view())?;

    scenario.trained.train(6_000);
    producer.publish(&scenario.trained.full(1))?;
    for version in 1..=6u64 {
        if version > 1 {
            scenario.trained.train(1_500);
            if version == 4 {
                scenario.trained.forget("u7");
            }
            producer.publish(&scenario.trained.delta(version))?;
        }
        wait_for_version(&log, version, APPLY_TIMEOUT)?;
        let served = subscriber.model().context("served")?;
        assert_eq!(served.version(), version);
        same_params(&served, &scenario.trained.trainer.export_params())?;
        let triples = sample_triples(&scenario.trained, TRIPLES, version);
        assert!(triples.iter().any(|t| t.features.len() == CONTEXT.len()), "some triples carry all three features");
        let sessions = triples
            .iter()
            .filter(|t| t.head == Head::Rating)
            .filter_map(|t| {
                served.user_updated_ms(&t.user).map(|updated| {
                    ScoreContext::new(&t.features).at(t.at_ms).session_active(updated, served.info().session_gap_ms)
                })
            })
            .collect::<Vec<bool>>();
        assert!(sessions.contains(&true) && sessions.contains(&false), "requests in sessions and after them");
        same_scores(&served, &scenario.trained, &triples)?;
        http_scores_equal(&address, &scenario.trained, version, &triples)?;
        rank_is_score(&address, &served, &scenario.trained, &triples)?;
        top_k_is_brute_force(&address, &served, &triples)?;
    }
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

/// The served model once every shard's chain is at `version`.
fn wait_for_shards(subscriber: &Subscriber, shards: u32, version: u64) -> anyhow::Result<Arc<ServingModel>> {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        if let Some(model) = subscriber.model()
            && (0..shards).all(|shard| model.shard_version(shard) == Some(version))
        {
            return Ok(model);
        }
        if Instant::now() > deadline {
            let at = subscriber.model().map(|model| model.info().shards.clone());
            bail!("the shards did not all reach version {version} within {APPLY_TIMEOUT:?}: {at:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_sharded_model_is_served_as_the_union_of_its_chains_equal_to_its_trainers_bit_for_bit() -> anyhow::Result<()> {
    const SHARDS: u32 = 3;
    let (bootstrap, model) = (freshet_e2e::bootstrap(), freshet_e2e::unique("served-sharded"));
    let config = snapshot_topic_of(&bootstrap, &model, SHARDS)?;
    let mut trained = ShardedModelUnderTest::new(12, SHARDS);
    let spec = trained.trainers[0].spec().clone();
    let mut producers = (0..SHARDS)
        .map(|k| {
            let shard = freshet_core::Shard::new(k, SHARDS)?;
            Ok(SnapshotProducer::connect(&KafkaConfig::new(&bootstrap), &config, &model, &spec, shard)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (subscriber, _log) = subscribe(&bootstrap, &config.topic_for(&model))?;
    let address = serve_http(subscriber.view())?;

    trained.train(6_000, None);
    for version in 1..=5u64 {
        if version > 1 {
            trained.train(1_500, (version == 4).then_some("u7"));
        }
        let outgoing = trained.version(version);
        // The shards publish at once: their chains' messages interleave.
        std::thread::scope(|scope| {
            let publishing: Vec<_> = producers
                .iter_mut()
                .zip(&outgoing)
                .map(|(producer, outgoing)| scope.spawn(move || producer.publish(outgoing).map(|_| ())))
                .collect();
            publishing.into_iter().try_for_each(|publish| publish.join().expect("a publishing thread"))
        })?;
        let served = wait_for_shards(&subscriber, SHARDS, version)?;
        assert_eq!(served.version(), version);
        assert!(served.missing_shards().is_empty());
        same_params(&served, &trained.export_params())?;
        let triples = sample_triples(&trained, TRIPLES, version);
        let owners: HashSet<u32> =
            triples.iter().map(|t| freshet_core::shard_of(freshet_core::hash_id(&t.user), SHARDS)).collect();
        assert_eq!(owners.len(), SHARDS as usize, "users of every shard are asked about");
        same_scores(&served, &trained, &triples)?;
        http_scores_equal(&address, &trained, version, &triples)?;
        rank_is_score(&address, &served, &trained, &triples)?;
        top_k_is_brute_force(&address, &served, &triples)?;
        let (status, body) = get(&address, "/version");
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("/version: {status} {body}"))?;
        let shards: Vec<(u64, u64)> = answer["shards"]
            .as_array()
            .context("shards")?
            .iter()
            .filter_map(|shard| Some((shard["shard"].as_u64()?, shard["version"].as_u64()?)))
            .collect();
        assert_eq!(shards, (0..u64::from(SHARDS)).map(|k| (k, version)).collect::<Vec<_>>(), "{body}");
        assert!(answer["shards"][0]["freshness_ms"].is_i64(), "{body}");
    }
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}
