//! A real browser for the live pages: headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs) loads a page, runs its scripts and
//! prints the document as they left it; the tests read its elements'
//! attributes.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a page may take, its scripts included.
const PAGE_TIMEOUT: Duration = Duration::from_secs(90);

/// The document of `url` after `settle` of the page's own time (timers and
/// fetches run meanwhile), as headless Chromium serializes it.
pub fn dump_dom(url: &str, settle: Duration) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", settle.as_millis()))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium (apt-get install chromium)")?;
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("chromium did not finish {url} within {PAGE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("chromium failed on {url}: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The attributes of every element of `dom` that has attribute `name`, in
/// document order (entities in values decoded).
pub fn elements_with(dom: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let Some(close) = tag_end(rest) else { break };
        let attributes = parse_attributes(&rest[..close]);
        if attributes.contains_key(name) {
            found.push(attributes);
        }
        rest = &rest[close..];
    }
    found
}

/// Where the tag that starts `text` ends (its `>` outside quotes).
fn tag_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    text.char_indices().find_map(|(at, c)| match c {
        '"' => {
            quoted = !quoted;
            None
        }
        '>' if !quoted => Some(at),
        _ => None,
    })
}

/// `name="value"` pairs of a tag's text (after `<`).
fn parse_attributes(tag: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let mut rest = tag.split_once(char::is_whitespace).map_or("", |(_, after)| after);
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_owned();
        let after = &rest[eq + 2..];
        let Some(end) = after.find('"') else { break };
        attributes.insert(name, decode(&after[..end]));
        rest = &after[end + 1..];
    }
    attributes
}

fn decode(value: &str) -> String {
    value.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Every sample line of a Prometheus text exposition, by series key.
pub fn metric_lines(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_with_entities_decoded() {
        let dom = r#"<html><body data-samples="3"><td class="number" data-key="freshet_rows{table=&quot;user&quot;}" data-value="12">12</td><p>a > b</p></body></html>"#;
        let cells = elements_with(dom, "data-key");
        assert_eq!(cells.len(), 1);
        assert_eq!(cells[0]["data-key"], r#"freshet_rows{table="user"}"#);
        assert_eq!(cells[0]["data-value"], "12");
        assert_eq!(elements_with(dom, "data-samples")[0]["data-samples"], "3");
        let lines = metric_lines("# HELP x y\nx 3\nx{a=\"b c\"} 4.5\n");
        assert_eq!(lines["x{a=\"b c\"}"], 4.5);
        assert_eq!(lines.len(), 2);
    }
}
