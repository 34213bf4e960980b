//! The live pages in a real browser (headless Chromium): the loop page of
//! `freshet demo` draws its charts from data points and shows the numbers
//! `/metrics` has; the page of `freshet serve` asks `/recommend` and lists
//! what it answers.

use std::collections::BTreeMap;
use std::time::Duration;

use freshet_core::synth::SynthConfig;
use freshet_e2e::browser::{dump_dom, elements_with, metric_lines};
use freshet_e2e::process::{
    Running, free_port, get, inspect, metric, metrics_address, trained_and_published, wait_until, write_config,
};
use freshet_e2e::{TestTopics, bootstrap, produce_synth};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");
const WAIT: Duration = Duration::from_secs(120);

fn metrics_now(address: &str) -> BTreeMap<String, f64> {
    let (status, text) = get(address, "/metrics");
    assert_eq!(status, 200);
    metric_lines(&text)
}

#[test]
fn the_loop_page_charts_the_demo_and_shows_the_numbers_of_metrics() {
    let work = tempfile::tempdir().expect("tempdir");
    let address = format!("127.0.0.1:{}", free_port());
    let demo = Running::spawn(BIN, &["demo", "--rate", "3000", "--listen", &address], work.path(), &[]);
    let history = |address: &str| {
        let (status, body) = get(address, "/loop/history");
        (status == 200).then(|| serde_json::from_str::<Value>(&body).ok()).flatten()
    };
    // Samples of a series whose key holds every one of `parts`, not null.
    let filled = |history: &Value, parts: &[&str]| {
        let series = history["series"].as_object().into_iter().flatten();
        let matching = series.filter(|(key, _)| parts.iter().all(|part| key.contains(part)));
        matching.map(|(_, values)| values.as_array().map_or(0, |v| v.iter().filter(|v| !v.is_null()).count())).max()
    };
    let warm = wait_until(WAIT, || {
        metric(&address, "freshet_snapshot_version").is_some_and(|v| v >= 3.0)
            && history(&address).is_some_and(|h| {
                h["t"].as_array().is_some_and(|t| t.len() >= 5)
                    && filled(&h, &["freshet_progressive_metric", "rating", "rmse", "window"]).is_some_and(|n| n >= 3)
                    && filled(&h, &["freshet_progressive_metric", "click", "logloss", "window"]).is_some_and(|n| n >= 3)
            })
    });
    assert!(warm, "the demo trained, published and sampled");

    let before = metrics_now(&address);
    let dom = dump_dom(&format!("http://{address}/"), Duration::from_secs(5)).expect("the page in chromium");
    let after = metrics_now(&address);

    assert!(dom.contains("class=\"uplot"), "uPlot drew the charts");
    let charts: BTreeMap<String, u64> = elements_with(&dom, "data-points")
        .into_iter()
        .map(|chart| (chart["id"].clone(), chart["data-points"].parse().expect("a count")))
        .collect();
    for chart in ["chart-rate", "chart-rating", "chart-click", "chart-versions", "chart-freshness"] {
        assert!(charts.get(chart).is_some_and(|points| *points >= 3), "{chart} holds data points: {charts:?}");
    }
    let series: Vec<String> =
        elements_with(&dom, "data-series").into_iter().map(|c| c["data-series"].clone()).collect();
    assert!(series.iter().any(|s| s.contains("served")), "the demo charts its served model too: {series:?}");

    // Every number on the page is a /metrics series, between its values
    // just before and just after the page loaded (freshness, a gauge that
    // goes both ways, only has to be there).
    let cells = elements_with(&dom, "data-key");
    let mut checked = 0;
    for cell in &cells {
        let (key, shown) = (&cell["data-key"], cell["data-value"].parse::<f64>().expect("a number"));
        if key.starts_with("served_") {
            continue;
        }
        let (Some(low), Some(high)) = (before.get(key), after.get(key)) else {
            panic!("{key} is on the page but not in /metrics");
        };
        if key != "freshet_snapshot_freshness_ms" {
            assert!(low.min(*high) <= shown && shown <= low.max(*high), "{key}: page {shown}, /metrics {low}..{high}");
        }
        checked += 1;
    }
    for key in ["freshet_events_applied", "freshet_checkpoint_version", "freshet_rows{table=\"user\"}"] {
        assert!(cells.iter().any(|cell| cell["data-key"] == key), "{key} is on the page");
    }
    assert!(checked >= 6, "{checked} numbers checked");
    assert!(demo.terminate().success(), "the demo stops cleanly");
}

#[test]
fn the_serve_page_asks_recommend_and_lists_its_answer() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let synth = SynthConfig { users: 300, items: 200, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 6_000)).expect("produce");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let metrics = metrics_address(&config);
    let running = Running::start(BIN, &["run", "--config"], &config);
    let trained = wait_until(WAIT, || trained_and_published(&metrics, produced.valid()));
    assert!(trained, "trained and published");
    assert!(running.terminate().success());
    let version = inspect(BIN, &work.path().join("checkpoint")).expect("inspect")["version"].as_u64().expect("version");
    let address = format!("127.0.0.1:{}", free_port());
    let serving = Running::start(BIN, &["serve", "--listen", &address, "--config"], &config);
    // Ready at the first version it serves; the last one is what both asks must see.
    let served = || serde_json::from_str::<Value>(&get(&address, "/version").1).ok()?["info"]["version"].as_u64();
    assert!(wait_until(WAIT, || served() == Some(version)), "serving the last version");

    let (status, body) = get(&address, "/recommend?user=u1&k=5&head=click");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let dom = dump_dom(&format!("http://{address}/#user=u1&k=5&head=click"), Duration::from_secs(3)).expect("page");
    let rows = elements_with(&dom, "data-item");
    // Scores are f32s: compared as such (serde_json's default f64 parsing
    // may differ from the browser's in the last bit of an f64).
    let shown: Vec<(String, f32)> =
        rows.iter().map(|row| (row["data-item"].clone(), row["data-score"].parse().expect("a score"))).collect();
    let asked: Vec<(String, f32)> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| (item["item"].as_str().expect("id").to_owned(), item["score"].as_f64().expect("a score") as f32))
        .collect();
    assert_eq!(shown.len(), 5, "{dom}");
    assert_eq!(shown, asked, "the page lists what /recommend answers, in order");
    let version = elements_with(&dom, "data-version");
    assert_eq!(version.first().map(|e| e["data-version"].clone()), Some(answer["version"].to_string()));
    assert_eq!(get(&address, "/?user=u1").0, 400, "the page itself takes no parameters");
    assert!(serving.terminate().success());
}
