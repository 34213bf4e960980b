//! `FRESHET_<TABLE>__<KEY>` environment variables override any key of the
//! configuration file: `__` separates levels, names are case-insensitive, and
//! inside a `kafka` table `_` stands for `.` (librdkafka keys use dots), e.g.
//! `FRESHET_CHECKPOINT__INTERVAL_MS=250` or
//! `FRESHET_KAFKA__SASL_PASSWORD=…`. Values are TOML literals
//! (`250`, `true`, `"text"`); anything that does not parse as one is a string.
//! A librdkafka setting (a key inside a `kafka` table other than
//! `bootstrap`) is always taken as the text it is, as librdkafka takes every
//! setting: `FRESHET_KAFKA__QUEUED_MAX_MESSAGES_KBYTES=16384`.

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Prefix of override variables.
const PREFIX: &str = "FRESHET_";
/// Level separator in variable names.
const SEPARATOR: &str = "__";

/// `config` with every override from `vars` applied; an unknown key or a bad
/// value is an error naming the variable.
pub fn apply<T: Serialize + DeserializeOwned + Clone>(
    config: &T,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<T> {
    let mut overrides: Vec<(String, String)> = vars.into_iter().filter(|(name, _)| is_override(name)).collect();
    if overrides.is_empty() {
        return Ok(config.clone());
    }
    overrides.sort();
    let mut table = Table::try_from(config).context("serialising the configuration")?;
    for (name, value) in &overrides {
        let path = key_path(name)?;
        let value = if is_librdkafka_setting(&path) { Value::String(value.clone()) } else { literal(value) };
        insert(&mut table, &path, value).with_context(|| format!("environment variable {name}"))?;
        // Checked one at a time, so an error names its variable.
        T::deserialize(table.clone())
            .with_context(|| format!("environment variable {name} (key {})", path.join(".")))?;
    }
    Ok(T::deserialize(table)?)
}

/// Whether variable `name` overrides a key.
fn is_override(name: &str) -> bool {
    name.starts_with(PREFIX) && name.contains(SEPARATOR)
}

/// The key path an override variable stands for (`None`: not an override).
pub fn key_path_of(name: &str) -> Option<Vec<String>> {
    is_override(name).then(|| key_path(name).ok()).flatten()
}

/// The dotted key a variable name stands for.
fn key_path(name: &str) -> anyhow::Result<Vec<String>> {
    let mut path: Vec<String> = Vec::new();
    for part in name[PREFIX.len()..].split(SEPARATOR) {
        if part.is_empty() {
            bail!("environment variable {name}: empty key segment");
        }
        let part = part.to_ascii_lowercase();
        let in_kafka_table = path.last().is_some_and(|parent| parent == "kafka");
        path.push(if in_kafka_table { part.replace('_', ".") } else { part });
    }
    Ok(path)
}

/// Whether `path` names a librdkafka setting: a key inside a `kafka` table
/// (`[kafka]`, `[publisher.kafka]`) other than the bootstrap servers.
fn is_librdkafka_setting(path: &[String]) -> bool {
    matches!(path, [.., parent, key] if parent == "kafka" && key != "bootstrap")
}

/// A TOML literal, or the text as a string.
fn literal(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

fn insert(table: &mut Table, path: &[String], value: Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut current = table;
    for parent in parents {
        let entry = current.entry(parent.clone()).or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().with_context(|| format!("`{parent}` is not a table"))?;
    }
    // Values of string-typed keys (a topic named `123`) stay strings.
    let value = match (current.get(last), value) {
        (Some(Value::String(_)), other) if !other.is_str() => Value::String(other.to_string()),
        (_, value) => value,
    };
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FreshetConfig;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn variables_override_nested_keys_and_kafka_settings() {
        let config = apply(
            &FreshetConfig::default(),
            vars(&[
                ("FRESHET_CHECKPOINT__INTERVAL_MS", "250"),
                ("FRESHET_MODEL__DIM", "16"),
                ("FRESHET_CONSUMER__TOPICS", r#"["a", "b"]"#),
                ("FRESHET_KAFKA__SASL_PASSWORD", "s3cret"),
                ("FRESHET_KAFKA__BOOTSTRAP", "b:9092"),
                ("FRESHET_PUBLISHER__TOPIC", "snaps"),
                ("FRESHET_NAME", "ignored: no separator"),
                ("HOME", "/elsewhere"),
            ]),
        )
        .expect("valid overrides");
        assert_eq!(config.checkpoint.interval_ms, 250);
        assert_eq!(config.model.dim, 16);
        assert_eq!(config.consumer.topics, ["a", "b"]);
        assert_eq!(config.kafka.settings.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert_eq!(config.kafka.bootstrap, "b:9092");
        assert_eq!(config.publisher.topic.as_deref(), Some("snaps"));
        assert_eq!(config.name, FreshetConfig::default().name);
    }

    #[test]
    fn librdkafka_settings_are_taken_as_text_whatever_they_look_like() {
        let config = apply(
            &FreshetConfig::default(),
            vars(&[
                ("FRESHET_KAFKA__QUEUED_MAX_MESSAGES_KBYTES", "16384"),
                ("FRESHET_KAFKA__ENABLE_SSL_CERTIFICATE_VERIFICATION", "false"),
                ("FRESHET_PUBLISHER__KAFKA__LINGER_MS", "5"),
            ]),
        )
        .expect("valid overrides");
        let setting = |key: &str| config.kafka.settings.get(key).map(String::as_str);
        assert_eq!(setting("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(setting("enable.ssl.certificate.verification"), Some("false"));
        assert_eq!(config.publisher.kafka.get("linger.ms").map(String::as_str), Some("5"));
    }

    #[test]
    fn an_unknown_key_or_bad_value_names_the_variable() {
        let error = apply(&FreshetConfig::default(), vars(&[("FRESHET_CHECKPOINT__INTERVL_MS", "5")]))
            .expect_err("unknown key");
        assert!(format!("{error:#}").contains("FRESHET_CHECKPOINT__INTERVL_MS"), "{error:#}");
        let error = apply(&FreshetConfig::default(), vars(&[("FRESHET_MODEL__DIM", "big")])).expect_err("bad value");
        assert!(format!("{error:#}").contains("FRESHET_MODEL__DIM"), "{error:#}");
    }

    #[test]
    fn string_keys_keep_numeric_looking_values_as_text() {
        let config = apply(&FreshetConfig::default(), vars(&[("FRESHET_CONSUMER__GROUP_ID", "42")])).expect("valid");
        assert_eq!(config.consumer.group_id, "42");
    }
}
