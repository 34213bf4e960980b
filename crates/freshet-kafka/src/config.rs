//! The `[kafka]` table: what every client of a process connects with.

use std::collections::BTreeMap;

use freshet_core::ConfigError;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// Settings freshet's clients set themselves; a pass-through value for one
/// of them is an error (each has a dedicated setting, or none on purpose).
pub(crate) const OWNED_KEYS: [&str; 10] = [
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "transaction.timeout.ms",
];

/// Parts of a key whose value is a secret: shown as [`REDACTED`].
const SECRET_MARKERS: [&str; 4] = ["password", "secret", "ssl.key.pem", "sasl.oauthbearer.config"];

/// What a secret setting is shown as.
pub const REDACTED: &str = "<redacted>";

/// `fetch.queue.backoff.ms` of [`KafkaConfig::consumer_client`]: how long a
/// consumer whose read-ahead is full waits before fetching again. At
/// librdkafka's 1 s default, measured: a subscriber (8 MB read-ahead) idled
/// ~950 ms after every two or three 3 MB deltas and fell seconds behind four
/// a second; `freshet run` replaying 2M events was paced by the pauses
/// (335k events/s three times over; 345k-419k at 10 ms).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The Kafka connection every client of one process shares: the `[kafka]`
/// table, `bootstrap` plus any librdkafka setting as it is
/// (`"security.protocol" = "SASL_SSL"`, `"sasl.username" = ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub bootstrap: String,
    /// librdkafka settings passed through to every client.
    #[serde(flatten)]
    pub settings: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::new("127.0.0.1:9092")
    }
}

/// Bootstrap servers alone.
impl From<&str> for KafkaConfig {
    fn from(bootstrap: &str) -> Self {
        KafkaConfig::new(bootstrap)
    }
}

/// Bootstrap servers alone.
impl From<&String> for KafkaConfig {
    fn from(bootstrap: &String) -> Self {
        KafkaConfig::new(bootstrap.as_str())
    }
}

/// Bootstrap servers alone.
impl From<String> for KafkaConfig {
    fn from(bootstrap: String) -> Self {
        KafkaConfig::new(bootstrap)
    }
}

impl KafkaConfig {
    /// `bootstrap` with no other setting.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaConfig { bootstrap: bootstrap.into(), settings: BTreeMap::new() }
    }

    /// Checks the settings, naming the offending key (`kafka.<key>`).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.bootstrap.trim().is_empty() {
            return Err(ConfigError::new("kafka.bootstrap", "must not be empty"));
        }
        if let Some(key) = self.settings.keys().find(|key| OWNED_KEYS.contains(&key.as_str())) {
            return Err(ConfigError::new(
                format!("kafka.{key}"),
                "is set by freshet itself; use the dedicated setting",
            ));
        }
        Ok(())
    }

    /// A client configuration with the bootstrap servers and every
    /// pass-through setting; the caller adds its own keys.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    /// [`KafkaConfig::client`] for a consumer that reads steadily: unless
    /// configured, it fetches again [`FETCH_QUEUE_BACKOFF_MS`] after its
    /// read-ahead drains below the limit, not librdkafka's 1 s.
    pub fn consumer_client(&self) -> ClientConfig {
        let mut config = self.client();
        if config.get("fetch.queue.backoff.ms").is_none() {
            config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        }
        config
    }

    /// A copy safe to print or log: secret settings are replaced by [`REDACTED`].
    pub fn redacted(&self) -> KafkaConfig {
        let mut copy = self.clone();
        redact(&mut copy.settings);
        copy
    }
}

/// Replaces the value of every secret librdkafka setting (passwords, secrets,
/// private keys) by [`REDACTED`].
pub fn redact(settings: &mut BTreeMap<String, String>) {
    for (key, value) in settings {
        if SECRET_MARKERS.iter().any(|marker| key.contains(marker)) {
            *value = REDACTED.to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &str, value: &str) -> KafkaConfig {
        let mut config = KafkaConfig::default();
        config.settings.insert(key.to_owned(), value.to_owned());
        config
    }

    #[test]
    fn consumers_fetch_again_soon_unless_configured_otherwise() {
        let default = KafkaConfig::default().consumer_client();
        assert_eq!(default.get("fetch.queue.backoff.ms"), Some(FETCH_QUEUE_BACKOFF_MS));
        assert_eq!(default.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let configured = with("fetch.queue.backoff.ms", "250").consumer_client();
        assert_eq!(configured.get("fetch.queue.backoff.ms"), Some("250"));
        // Producers and admin clients take no consumer settings.
        assert_eq!(KafkaConfig::default().client().get("fetch.queue.backoff.ms"), None);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(KafkaConfig::default().check(), Ok(()));
        assert_eq!(KafkaConfig::new(" ").check().expect_err("empty").key, "kafka.bootstrap");
        for key in OWNED_KEYS {
            assert_eq!(with(key, "x").check().expect_err("owned").key, format!("kafka.{key}"));
        }
        assert_eq!(with("security.protocol", "SASL_SSL").check(), Ok(()));
    }

    #[test]
    fn every_setting_reaches_the_client_and_secrets_are_hidden() {
        let mut config = with("sasl.password", "p");
        config.settings.insert("sasl.username".into(), "u".into());
        let client = config.client();
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!((client.get("sasl.password"), client.get("sasl.username")), (Some("p"), Some("u")));
        let shown = config.redacted();
        assert_eq!(
            (shown.settings["sasl.password"].as_str(), shown.settings["sasl.username"].as_str()),
            (REDACTED, "u")
        );
        assert_eq!(shown.bootstrap, config.bootstrap);
    }

    #[test]
    fn the_table_reads_bootstrap_and_passes_every_other_key_through() {
        let config: KafkaConfig =
            toml::from_str("bootstrap = \"b:9092\"\n\"security.protocol\" = \"SSL\"\n").expect("a [kafka] table");
        assert_eq!(config.bootstrap, "b:9092");
        assert_eq!(config.settings, BTreeMap::from([("security.protocol".to_owned(), "SSL".to_owned())]));
        assert_eq!(toml::from_str::<KafkaConfig>("").expect("empty"), KafkaConfig::default());
        let error = toml::from_str::<KafkaConfig>("\"linger.ms\" = 5\n").expect_err("not a string");
        assert!(error.to_string().contains("string"), "{error}");
    }
}
