//! `freshet eval` as a user runs it: the three MovieLens layouts, freshet CSV
//! ratings and clicks, malformed lines reported by number, and the JSON
//! summary. The files are written from the synthetic stream.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freshet")).arg("eval").args(args).output().expect("run freshet eval")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Runs the synthetic stream, exporting what it replayed; returns its summary.
fn synthetic(dir: &Path, events: u64, click_share: f64) -> Value {
    let (ratings, clicks) = (dir.join("ratings.csv"), dir.join("clicks.csv"));
    json_of(&eval(&[
        "--synthetic",
        &events.to_string(),
        "--synthetic-click-share",
        &click_share.to_string(),
        "--export-ratings",
        path_str(&ratings),
        "--export-clicks",
        path_str(&clicks),
        "--json",
    ]))
}

#[test]
fn replaying_the_exported_files_gives_the_synthetic_runs_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let direct = synthetic(dir.path(), 6_000, 0.3);
    let ratings = dir.path().join("ratings.csv");
    let clicks = dir.path().join("clicks.csv");
    let replayed =
        json_of(&eval(&["--ratings", path_str(&ratings), "--format", "csv", "--clicks", path_str(&clicks), "--json"]));
    for key in ["events", "ratings", "clicks", "rmse", "mae", "logloss", "auc"] {
        assert_eq!(replayed[key], direct[key], "{key}: replayed {replayed}, direct {direct}");
    }
    assert!(direct["clicks"].as_u64().expect("clicks") > 1_000, "{direct}");
    assert!(direct["auc"].as_f64().expect("auc") > 0.5, "{direct}");
    assert!(replayed["events_per_s"].as_f64().expect("events/s") > 0.0);
    assert_eq!(replayed["malformed"], 0);
}

/// The same ratings as `u.data`, `ratings.dat` and `ratings.csv`, lines
/// reversed (the replay sorts them by time) and one malformed line each: the
/// three give the same metrics, with the bad line reported by its number.
#[test]
fn the_three_movielens_layouts_replay_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    synthetic(dir.path(), 3_000, 0.0);
    let exported = std::fs::read_to_string(dir.path().join("ratings.csv")).expect("exported ratings");
    // freshet CSV `user,item,rating,ts,features`, ts in ms; MovieLens wants seconds.
    let mut rows: Vec<[String; 4]> = exported
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let seconds = f[3].parse::<i64>().expect("ts") / 1000;
            [f[0].to_owned(), f[1].to_owned(), f[2].to_owned(), seconds.to_string()]
        })
        .collect();
    rows.reverse();
    let layouts = [
        ("u.data", "\t", None),
        ("ratings.dat", "::", None),
        ("ratings.csv", ",", Some("userId,movieId,rating,timestamp")),
    ];
    let mut summaries = Vec::new();
    for (name, separator, header) in layouts {
        let mut text: Vec<String> = header.map(str::to_owned).into_iter().collect();
        text.extend(rows.iter().map(|row| row.join(separator)));
        let bad_line = text.len() / 2 + 1;
        text.insert(bad_line - 1, ["u1", "i1", "lots", "1"].join(separator));
        let path = dir.path().join(name);
        std::fs::write(&path, text.join("\r\n") + "\r\n").expect("write");
        let output = eval(&["--ratings", path_str(&path), "--json"]);
        let summary = json_of(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{}:{bad_line}: skipped malformed line: bad rating \"lots\"", path.display())),
            "{name}: {stderr}"
        );
        assert_eq!((summary["events"].as_u64(), summary["malformed"].as_u64()), (Some(3_000), Some(1)), "{summary}");
        assert!(summary["logloss"].is_null() && summary["auc"].is_null(), "{summary}");
        summaries.push(summary);
    }
    for summary in &summaries[1..] {
        assert_eq!((&summary["rmse"], &summary["mae"]), (&summaries[0]["rmse"], &summaries[0]["mae"]));
    }
    let rmse = summaries[0]["rmse"].as_f64().expect("rmse");
    assert!(rmse > 0.0 && rmse < 1.0, "{}", summaries[0]);
}

#[test]
fn bad_arguments_fail_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.csv");
    let output = eval(&["--ratings", path_str(&missing)]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"), "{output:?}");
    let output = eval(&["--synthetic", "10", "--trainer", r#"{"session_gap_ms": 0}"#]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("trainer.session_gap_ms"), "{output:?}");
}

/// The predictions written by `--predictions` are the ones the progressive
/// metrics took: RMSE, MAE and log loss recomputed from the file equal the
/// summary's; the clicks carry three context features when asked.
#[test]
fn written_predictions_are_the_progressive_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clicks = dir.path().join("clicks.csv");
    json_of(&eval(&[
        "--synthetic",
        "4000",
        "--synthetic-click-share",
        "0.5",
        "--synthetic-click-features",
        "3",
        "--export-clicks",
        path_str(&clicks),
        "--export-ratings",
        path_str(&dir.path().join("ratings.csv")),
        "--json",
    ]));
    let exported = std::fs::read_to_string(&clicks).expect("exported clicks");
    let first = exported.lines().nth(1).expect("a click");
    assert!(first.contains("device=") && first.contains(";hour=h") && first.contains(";page="), "{first}");

    for batch in ["1", "16"] {
        let predictions = dir.path().join(format!("predictions-{batch}"));
        let summary = json_of(&eval(&[
            "--ratings",
            path_str(&dir.path().join("ratings.csv")),
            "--format",
            "csv",
            "--clicks",
            path_str(&clicks),
            "--batch",
            batch,
            "--predictions",
            path_str(&predictions),
            "--json",
        ]));
        // The replay order: by time, the files' events interleaved.
        let mut labelled: Vec<(i64, bool, f64)> = Vec::new();
        for (file, click) in [("ratings.csv", false), ("clicks.csv", true)] {
            let text = std::fs::read_to_string(dir.path().join(file)).expect("exported");
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split(',').collect();
                labelled.push((f[3].parse().expect("ts"), click, f[2].parse().expect("label")));
            }
        }
        labelled.sort_by_key(|&(ts, ..)| ts);
        let written: Vec<f64> = std::fs::read_to_string(&predictions)
            .expect("predictions")
            .lines()
            .map(|line| line.parse().expect("a number"))
            .collect();
        assert_eq!(written.len(), labelled.len());
        let (mut se, mut ae, mut ratings, mut loss, mut clicks_seen) = (0.0, 0.0, 0u32, 0.0, 0u32);
        for (&p, &(_, click, y)) in written.iter().zip(&labelled) {
            if click {
                let p = p.clamp(1e-7, 1.0 - 1e-7);
                loss -= if y > 0.5 { p.ln() } else { (1.0 - p).ln() };
                clicks_seen += 1;
            } else {
                se += (p - y) * (p - y);
                ae += (p - y).abs();
                ratings += 1;
            }
        }
        let close = |key: &str, recomputed: f64| {
            let reported = summary[key].as_f64().expect("a figure");
            assert!((reported - recomputed).abs() < 1e-4, "batch {batch} {key}: {reported} vs {recomputed}");
        };
        close("rmse", (se / f64::from(ratings)).sqrt());
        close("mae", ae / f64::from(ratings));
        close("logloss", loss / f64::from(clicks_seen));
    }
    let refused = eval(&["--synthetic", "10", "--shards", "2", "--predictions", "x", "--json"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--predictions"));
}

/// A file of more than one parsed piece (4 MiB each) is parsed on its own thread
/// while the trainer trains the pieces before; the same file with its last
/// two events swapped is found out of order after pieces were trained, and
/// replayed again sorted. Both replay exactly as the file loaded whole and
/// sorted first (which `--export-clicks` forces), prediction for prediction.
#[test]
fn a_file_parsed_while_it_is_trained_replays_as_one_loaded_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clicks = dir.path().join("clicks.csv");
    json_of(&eval(&[
        "--synthetic",
        "100000",
        "--synthetic-click-share",
        "1",
        "--synthetic-click-features",
        "3",
        "--export-clicks",
        path_str(&clicks),
        "--json",
    ]));
    let text = std::fs::read_to_string(&clicks).expect("exported");
    assert!(text.len() > 4 << 20, "more than one piece: {} bytes", text.len());
    let mut lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    lines.swap(n - 1, n - 2);
    let swapped = dir.path().join("swapped.csv");
    std::fs::write(&swapped, lines.join("\n") + "\n").expect("written");

    for (name, file) in [("in order", &clicks), ("last two swapped", &swapped)] {
        let run = |extra: &[&str], predictions: &Path| {
            let mut args = vec!["--clicks", path_str(file), "--predictions", path_str(predictions), "--json"];
            args.extend_from_slice(extra);
            let summary = json_of(&eval(&args));
            (summary, std::fs::read_to_string(predictions).expect("predictions"))
        };
        let (streamed, streamed_predictions) = run(&[], &dir.path().join("streamed.preds"));
        let copy = dir.path().join("copy.csv");
        let (loaded, loaded_predictions) = run(&["--export-clicks", path_str(&copy)], &dir.path().join("loaded.preds"));
        for key in ["events", "clicks", "logloss", "auc", "malformed"] {
            assert_eq!(streamed[key], loaded[key], "{name} {key}: streamed {streamed}, loaded {loaded}");
        }
        assert_eq!(streamed["events"], 100_000, "{name}");
        assert!(streamed_predictions == loaded_predictions, "{name}: the predictions differ");
    }
}
