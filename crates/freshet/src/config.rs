//! The configuration file (TOML). Every table maps to one component's
//! settings struct; unknown keys are errors, and every check names the key.
//! See deploy/freshet.toml for a documented example.

use std::path::{Path, PathBuf};

use anyhow::Context;
use freshet_consumer::ConsumerConfig;
use freshet_core::ModelSpec;
use freshet_core::{ConfigError, ValidationConfig};
use freshet_kafka::KafkaConfig;
use freshet_publisher::PublisherConfig;
use freshet_subscriber::http::ServeConfig;
use freshet_trainer::TrainerConfig;
use serde::{Deserialize, Serialize};

/// Everything `freshet run` is configured with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshetConfig {
    /// The model's name (one trainer per name).
    pub name: ModelName,
    /// `[kafka]`: the connection every Kafka client of the process uses.
    pub kafka: KafkaConfig,
    /// `[consumer]`: the Kafka source.
    pub consumer: ConsumerConfig,
    /// `[validation]`: limits events must respect.
    pub validation: ValidationConfig,
    /// `[model]`: the model's shape (must match the checkpoint).
    pub model: ModelSpec,
    /// `[trainer]`: optimisation, admission, expiry, metrics.
    pub trainer: TrainerConfig,
    /// `[checkpoint]`: the durable store.
    pub checkpoint: CheckpointSettings,
    /// `[publisher]`: snapshots for serving processes.
    pub publisher: PublisherConfig,
    /// `[metrics]`: the Prometheus and health endpoint.
    pub metrics: MetricsSettings,
    /// `[serve]`: how `freshet serve` answers.
    pub serve: ServeConfig,
    /// `[admin]`: operator requests (rollback, backup) on the metrics listener.
    pub admin: AdminSettings,
}

/// `[admin]` settings: `POST /admin/rollback`, `POST /admin/backup` and
/// `GET /admin/versions` on the metrics listener, for requests bearing the
/// token. Off by default.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Serve the admin endpoints.
    pub enabled: bool,
    /// The bearer token requests must carry (at least 16 characters); best
    /// given as `FRESHET_ADMIN__TOKEN` rather than in the file. Never logged.
    pub token: String,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("enabled", &self.enabled)
            .field("token", &freshet_kafka::REDACTED)
            .finish()
    }
}

/// Fewest characters of an admin token.
const MIN_TOKEN_LEN: usize = 16;

/// `[metrics]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz` (`host:port`; port 0
    /// picks a free one, logged at start); empty turns the endpoint off.
    pub listen: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { listen: "127.0.0.1:9464".to_owned() }
    }
}

impl MetricsSettings {
    /// The address to listen on, if any.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            ConfigError::new("metrics.listen", format!("must be host:port or empty, got {:?}", self.listen))
        })
    }
}

/// A model name: letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelName(pub String);

impl Default for ModelName {
    fn default() -> Self {
        ModelName("default".to_owned())
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[checkpoint]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSettings {
    /// The RocksDB directory.
    pub dir: PathBuf,
    /// Checkpoint at least this often while events arrive (ms, from one
    /// checkpoint's start to the next's)...
    pub interval_ms: u64,
    /// ...or after this many applied events, whichever comes first.
    pub interval_events: u64,
    /// fsync each checkpoint (the WAL is always on).
    pub fsync: bool,
    /// Published versions kept as rollback targets (copies under
    /// `<dir>/versions/`, sharing unchanged files by hard links); 0 keeps
    /// none, which leaves nothing to roll back to.
    pub retain_versions: usize,
    /// A retained version older than this (ms) is pruned, except the newest
    /// published one.
    pub retain_ms: u64,
    /// A checkpoint is retained only when the newest retained version is
    /// at least this old (ms); 0 retains every checkpoint. A copy flushes
    /// RocksDB's memtables on the trainer thread.
    pub retain_every_ms: u64,
}

impl CheckpointSettings {
    /// What to keep as rollback targets.
    pub fn retain_policy(&self) -> freshet_checkpoint::RetainPolicy {
        freshet_checkpoint::RetainPolicy {
            versions: self.retain_versions,
            max_age_ms: Some(self.retain_ms),
            every_ms: self.retain_every_ms,
        }
    }
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            dir: PathBuf::from("freshet-data/checkpoint"),
            interval_ms: 1_000,
            interval_events: 500_000,
            fsync: true,
            retain_versions: 10,
            retain_ms: 24 * 3_600_000,
            retain_every_ms: 10_000,
        }
    }
}

/// Keys of earlier releases, refused with where they went.
const MOVED_KEYS: [(&str, &str, &str); 4] = [
    ("validation", "rating_min", "model.rating_min (ratings are accepted in the model's range)"),
    ("validation", "rating_max", "model.rating_max (ratings are accepted in the model's range)"),
    ("consumer", "bootstrap", "kafka.bootstrap"),
    ("consumer", "kafka", "the [kafka] table (shared by every Kafka client of the process)"),
];

impl FreshetConfig {
    /// Reads a TOML file; syntax errors and unknown keys name the line and key.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        FreshetConfig::parse(&text).with_context(|| format!("in configuration file {}", path.display()))
    }

    /// Parses a configuration text; a key of an earlier release is an error
    /// saying where it moved.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Ok(table) = text.parse::<toml::Table>() {
            for (section, key, moved_to) in MOVED_KEYS {
                if table.get(section).and_then(|s| s.get(key)).is_some() {
                    anyhow::bail!("{section}.{key}: moved to {moved_to}");
                }
            }
        }
        Ok(toml::from_str(text)?)
    }

    /// The file (or the defaults) with the `FRESHET_<TABLE>__<KEY>`
    /// environment overrides applied; flags come on top, then [`Self::check`].
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let config = match path {
            Some(path) => FreshetConfig::from_file(path)?,
            None => FreshetConfig::default(),
        };
        FreshetConfig::with_overrides(&config, std::env::vars().collect())
    }

    /// `config` with the overrides among `vars` applied; a variable for a
    /// key of an earlier release is an error saying where it moved.
    fn with_overrides(config: &FreshetConfig, vars: Vec<(String, String)>) -> anyhow::Result<Self> {
        for (name, _) in &vars {
            let Some(path) = crate::env_overrides::key_path_of(name) else { continue };
            if let Some((section, key, moved_to)) =
                MOVED_KEYS.iter().find(|(section, key, _)| path.len() == 2 && path[0] == *section && path[1] == *key)
            {
                anyhow::bail!("environment variable {name}: {section}.{key} moved to {moved_to}");
            }
        }
        crate::env_overrides::apply(config, vars)
    }

    /// A copy safe to print or log: secret Kafka settings are replaced.
    pub fn redacted(&self) -> FreshetConfig {
        let mut copy = self.clone();
        copy.kafka = self.kafka.redacted();
        freshet_kafka::redact(&mut copy.publisher.kafka);
        if !copy.admin.token.is_empty() {
            copy.admin.token = freshet_kafka::REDACTED.to_owned();
        }
        copy
    }

    /// Checks every section, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let name = &self.name.0;
        if name.is_empty()
            || name.len() > 200
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new("name", "must be 1 to 200 of letters, digits, '.', '_' or '-'"));
        }
        self.kafka.check()?;
        self.consumer.check()?;
        self.validation.check()?;
        self.model.check()?;
        self.trainer.check()?;
        self.publisher.check()?;
        self.metrics.address()?;
        self.serve.check()?;
        let checkpoint = &self.checkpoint;
        if checkpoint.dir.as_os_str().is_empty() {
            return Err(ConfigError::new("checkpoint.dir", "must not be empty"));
        }
        if checkpoint.interval_ms == 0 {
            return Err(ConfigError::new("checkpoint.interval_ms", "must be positive"));
        }
        if checkpoint.interval_events == 0 {
            return Err(ConfigError::new("checkpoint.interval_events", "must be positive"));
        }
        if checkpoint.retain_ms == 0 {
            return Err(ConfigError::new("checkpoint.retain_ms", "must be positive"));
        }
        if self.publisher.quality_gate.rollback_after_ms.is_some() && checkpoint.retain_versions == 0 {
            return Err(ConfigError::new(
                "publisher.quality_gate.rollback_after_ms",
                "needs checkpoint.retain_versions > 0 (a version to roll back to)",
            ));
        }
        if self.admin.enabled {
            if self.admin.token.chars().count() < MIN_TOKEN_LEN {
                return Err(ConfigError::new(
                    "admin.token",
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters when admin.enabled (or set FRESHET_ADMIN__TOKEN)"
                    ),
                ));
            }
            if self.metrics.listen.is_empty() {
                return Err(ConfigError::new(
                    "admin.enabled",
                    "needs metrics.listen (the admin endpoints are served there)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_kafka::REDACTED;

    fn parse(text: &str) -> anyhow::Result<FreshetConfig> {
        FreshetConfig::parse(text)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(FreshetConfig::default().check(), Ok(()));
    }

    #[test]
    fn the_example_file_is_valid() {
        let config =
            FreshetConfig::from_file(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/freshet.toml")))
                .expect("deploy/freshet.toml parses");
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn secrets_are_redacted() {
        let config = parse(
            "[kafka]\n\"sasl.password\" = \"p\"\n\"sasl.username\" = \"u\"\n[publisher.kafka]\n\"ssl.key.password\" = \"k\"\n",
        )
        .expect("parses");
        let shown = config.redacted();
        assert_eq!(shown.kafka.settings["sasl.password"], REDACTED);
        assert_eq!(shown.kafka.settings["sasl.username"], "u");
        assert_eq!(shown.publisher.kafka["ssl.key.password"], REDACTED);
        let config = parse("[admin]\nenabled = true\ntoken = \"0123456789abcdef-secret\"\n").expect("parses");
        assert_eq!(config.check(), Ok(()));
        assert_eq!(config.redacted().admin.token, REDACTED);
        assert!(!format!("{config:?}").contains("0123456789abcdef-secret"), "Debug never shows the token");
    }

    #[test]
    fn keys_of_earlier_releases_say_where_they_moved() {
        let error = parse("[consumer]\nbootstrap = \"b:9092\"\n").expect_err("moved");
        assert_eq!(error.to_string(), "consumer.bootstrap: moved to kafka.bootstrap");
        let error = parse("[consumer.kafka]\n\"security.protocol\" = \"SSL\"\n").expect_err("moved");
        assert!(error.to_string().starts_with("consumer.kafka: moved to the [kafka] table"), "{error}");
        let error = parse("[validation]\nrating_max = 10.0\n").expect_err("moved");
        assert!(error.to_string().starts_with("validation.rating_max: moved to model.rating_max"), "{error}");
        let vars = vec![("FRESHET_VALIDATION__RATING_MIN".to_owned(), "0".to_owned())];
        let error = FreshetConfig::with_overrides(&FreshetConfig::default(), vars).expect_err("moved");
        assert_eq!(
            error.to_string(),
            "environment variable FRESHET_VALIDATION__RATING_MIN: validation.rating_min moved to model.rating_min \
             (ratings are accepted in the model's range)"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = parse("[model]\ndimm = 8\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("dimm"), "{error:#}");
        let error = parse("nmae = \"x\"\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("nmae"), "{error:#}");
    }

    #[test]
    fn invalid_values_are_named() {
        let key_of = |text: &str| parse(text).expect("parses").check().expect_err("invalid").key;
        assert_eq!(key_of("name = \"a b\"\n"), "name");
        assert_eq!(key_of("[model]\ndim = 3\n"), "model.dim");
        assert_eq!(key_of("[checkpoint]\ninterval_ms = 0\n"), "checkpoint.interval_ms");
        assert_eq!(key_of("[consumer]\ntopics = []\n"), "consumer.topics");
        assert_eq!(key_of("[kafka]\n\"group.id\" = \"g\"\n"), "kafka.group.id");
        assert_eq!(key_of("[kafka]\nbootstrap = \"\"\n"), "kafka.bootstrap");
        assert_eq!(key_of("[publisher]\nchunk_bytes = 1\n"), "publisher.chunk_bytes");
        assert_eq!(key_of("[metrics]\nlisten = \"nowhere\"\n"), "metrics.listen");
        assert_eq!(key_of("[serve]\nmax_rank_items = 0\n"), "serve.max_rank_items");
        assert_eq!(key_of("[checkpoint]\nretain_ms = 0\n"), "checkpoint.retain_ms");
        assert_eq!(key_of("[admin]\nenabled = true\ntoken = \"short\"\n"), "admin.token");
        assert_eq!(key_of("[admin]\nenabled = true\n"), "admin.token");
        assert_eq!(
            key_of("[checkpoint]\nretain_versions = 0\n[publisher.quality_gate]\nrollback_after_ms = 5000\n"),
            "publisher.quality_gate.rollback_after_ms"
        );
        assert_eq!(
            key_of("[publisher.quality_gate]\nrollback_after_ms = 0\n"),
            "publisher.quality_gate.rollback_after_ms"
        );
    }
}
