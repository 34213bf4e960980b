//! `freshet demo` runs the whole loop on the in-process mock cluster and stops
//! cleanly on `--duration` or on Ctrl-C (SIGINT), ending with a top-10.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_freshet");

/// A free loopback address for the demo's page (tests run in parallel).
fn listen() -> String {
    format!("127.0.0.1:{}", freshet_e2e::process::free_port())
}

/// The ranked lines of the final top-10 (`  1. i184     4.762`).
fn top_10(stdout: &str) -> Vec<String> {
    let after = stdout.split("top 10 for u1").nth(1).unwrap_or_default();
    after
        .lines()
        .skip(1)
        .filter(|line| line.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_trains_publishes_and_serves_within_its_duration() {
    let address = listen();
    let output =
        Command::new(BIN).args(["demo", "--duration", "6s", "--listen", &address]).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.lines().next().is_some_and(|line| line.contains(&format!("http://{address}/"))), "{stdout}");
    assert!(stdout.contains("snapshot v"), "a snapshot was served: {stdout}");
    assert!(stdout.contains("progressive RMSE 0."), "{stdout}");
    assert_eq!(top_10(&stdout).len(), 10, "{stdout}");
}

#[test]
fn ctrl_c_stops_the_demo_cleanly() {
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", &listen()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("snapshot v") || Instant::now() > deadline {
            break;
        }
    }
    assert!(seen.contains("snapshot v"), "no snapshot before the deadline: {seen}");
    Command::new("kill").args(["-INT", &demo.id().to_string()]).status().expect("SIGINT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = demo.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
    assert_eq!(top_10(&rest.join("\n")).len(), 10, "{rest:?}");
}
