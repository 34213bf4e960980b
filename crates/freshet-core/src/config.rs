//! The error every configuration check returns: it names the key.

use thiserror::Error;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid configuration `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key, as written in the configuration file.
    pub key: String,
    /// What is wrong with its value.
    pub problem: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { key: key.into(), problem: problem.into() }
    }
}
