//! Layered configuration: the struct's serde defaults, then a TOML file, then
//! `GWB_`-prefixed environment variables (`GWB_SECTION__KEY=value`, `__` nests).
//!
//! The merged document is re-parsed as TOML text so that an error names the key and
//! line that is wrong, and `deny_unknown_fields` on the service structs turns typos
//! into start-up errors instead of silently ignored settings.

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

pub const ENV_PREFIX: &str = "GWB_";

/// The variable naming the config file itself (the services' `--config`). It shares
/// the prefix but is not a setting, so the overlay skips it.
pub const CONFIG_PATH_ENV: &str = "GWB_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from defaults, the optional TOML file and the process environment.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// Same as [`load`] with an explicit environment (tests pass their own).
pub fn load_with_env<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            text.parse::<Table>()
                .map_err(|e| ConfigError::Syntax { path: path.display().to_string(), message: e.to_string() })?
        }
        None => Table::new(),
    };
    let mut env: Vec<(String, String)> =
        env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != CONFIG_PATH_ENV).collect();
    // Deterministic order, so the outcome never depends on the environment's order.
    env.sort();
    for (name, value) in &env {
        overlay_env(&mut table, name, value)?;
    }
    let text = toml::to_string(&table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    toml::from_str(&text).map_err(|e| {
        let mut message = e.message().to_string();
        if let Some(key) = e.span().and_then(|span| key_at(&text, span.start)) {
            message = format!("`{key}`: {message}");
        }
        if !env.is_empty() {
            let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
            message.push_str(&format!(" (environment overrides applied: {})", names.join(", ")));
        }
        ConfigError::Invalid(message)
    })
}

/// The dotted key (`section.key`) of the line holding byte `offset` of `text`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut section = String::new();
    let mut position = 0;
    for line in text.lines() {
        let end = position + line.len();
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        if offset <= end {
            let key = trimmed.split('=').next()?.trim().trim_matches('"');
            if trimmed.starts_with('[') || key.is_empty() {
                return None;
            }
            return Some(if section.is_empty() { key.to_string() } else { format!("{section}.{key}") });
        }
        position = end + 1;
    }
    None
}

fn overlay_env(table: &mut Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let key_path: Vec<String> =
        name[ENV_PREFIX.len()..].split("__").map(|segment| segment.to_ascii_lowercase()).collect();
    if key_path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            name: name.to_string(),
            message: "empty key segment (use GWB_SECTION__KEY)".into(),
        });
    }
    let Some((leaf, sections)) = key_path.split_last() else {
        return Ok(());
    };
    let mut current = table;
    for section in sections {
        let entry = current.entry(section.clone()).or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(inner) => inner,
            _ => {
                return Err(ConfigError::Env {
                    name: name.to_string(),
                    message: format!("`{section}` is a value, not a section"),
                });
            }
        };
    }
    current.insert(leaf.clone(), parse_env_value(raw));
    Ok(())
}

/// Environment values are TOML literals when they parse as one (`30`, `true`,
/// `["a","b"]`), else plain strings, so `GWB_GRAPH__TENANT_ID=contoso.com` needs no
/// quoting.
fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default = "default_name")]
        name: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn default_name() -> String {
        "default".into()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = std::env::temp_dir().join(format!("gwb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("c.toml");
        std::fs::write(&file, "name = \"file\"\n[inner]\nport = 1\n").ok();
        let got: Sample =
            load_with_env(Some(&file), env(&[("GWB_INNER__PORT", "2")])).ok().unwrap_or_else(|| panic!("load"));
        assert_eq!(got, Sample { name: "file".into(), inner: Inner { port: 2, tags: vec![] } });
        let got: Sample = load_with_env(None, env(&[("GWB_NAME", "contoso.com"), ("GWB_INNER__TAGS", r#"["a","b"]"#)]))
            .ok()
            .unwrap_or_else(|| panic!("load"));
        assert_eq!(got.name, "contoso.com");
        assert_eq!(got.inner.tags, vec!["a", "b"]);
        let defaults: Sample = load_with_env(None, env(&[("OTHER", "x"), (CONFIG_PATH_ENV, "/etc/gwb/x.toml")]))
            .ok()
            .unwrap_or_else(|| panic!("load"));
        assert_eq!(defaults.name, "default");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let err = load_with_env::<Sample>(None, env(&[("GWB_INNER__PROT", "2")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`inner.prot`"), "{err}");
        let err = load_with_env::<Sample>(None, env(&[("GWB_INNER__PORT", "\"x\"")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`inner.port`") && err.contains("GWB_INNER__PORT"), "{err}");
    }
}
