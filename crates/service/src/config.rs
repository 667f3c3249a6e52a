//! Layered configuration: built-in defaults, then a TOML file, then `FERROMQ_*` environment
//! variables, then command-line flags (applied by the caller). Unknown keys are errors at every
//! layer, so a typo in a ConfigMap stops the process instead of being ignored.
//!
//! Environment names: `FERROMQ_` + the key in upper case, with `__` between a section and its
//! key: `FERROMQ_NODE_ID=2`, `FERROMQ_STORAGE__FLUSH=async`. Values are parsed as TOML (numbers,
//! booleans, arrays such as `["a:1","b:2"]`) and fall back to a plain string.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, an optional TOML file and the environment.
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut value =
        toml::Value::try_from(T::default()).map_err(|err| ConfigError::Invalid(err.to_string()))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let overlay: toml::Value = toml::from_str(&text).map_err(|err| ConfigError::File {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        merge(&mut value, overlay);
        // Deserialize now so a bad file is reported as the file's fault, not the env's.
        T::deserialize(value.clone()).map_err(|err| ConfigError::File {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
    }
    for (name, raw) in env {
        let Some(key) = name.strip_prefix("FERROMQ_") else {
            continue;
        };
        // FERROMQ_LOG and FERROMQ_LOG_FORMAT belong to logging, not to service config.
        if key == "LOG" || key == "LOG_FORMAT" || key == "CONFIG" {
            continue;
        }
        let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        let parsed = parse_env_value(&raw);
        set_path(&mut value, &path, parsed).map_err(|message| ConfigError::Env {
            name: name.clone(),
            message,
        })?;
        T::deserialize(value.clone()).map_err(|err| ConfigError::Env {
            name: name.clone(),
            message: err.to_string(),
        })?;
    }
    T::deserialize(value).map_err(|err| ConfigError::Invalid(err.to_string()))
}

/// Renders `config` as TOML, for `--print-config`.
pub fn to_toml<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node = root;
    for part in parents {
        node = node
            .as_table_mut()
            .ok_or("not a section")?
            .get_mut(part)
            .ok_or_else(|| format!("unknown section {part:?}"))?;
    }
    let table = node.as_table_mut().ok_or("not a section")?;
    let Some(existing) = table.get(last) else {
        return Err(format!("unknown key {last:?}"));
    };
    // A string-typed key keeps the raw text even if it happens to parse as a number.
    let value = match (existing, value) {
        (toml::Value::String(_), toml::Value::Integer(n)) => toml::Value::String(n.to_string()),
        (_, value) => value,
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Serializes a secret (for `--print-config`) without showing it.
pub fn redact<S: serde::Serializer>(secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.is_empty() { "" } else { "<redacted>" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        node_id: u64,
        listen: String,
        peers: Vec<String>,
        storage: Storage,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Storage {
        flush: String,
        segment_bytes: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                node_id: 1,
                listen: "0.0.0.0:1".into(),
                peers: vec![],
                storage: Storage::default(),
            }
        }
    }

    impl Default for Storage {
        fn default() -> Self {
            Storage {
                flush: "sync".into(),
                segment_bytes: 1024,
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "node_id = 3\n[storage]\nsegment_bytes = 4096\n").unwrap();
        let config: Sample = load(
            Some(&path),
            env(&[
                ("FERROMQ_STORAGE__FLUSH", "async"),
                ("FERROMQ_PEERS", r#"["a:1", "b:2"]"#),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(config.storage.segment_bytes, 4096);
        assert_eq!(config.storage.flush, "async");
        assert_eq!(config.peers, vec!["a:1", "b:2"]);
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "nod_id = 3\n").unwrap();
        let err = load::<Sample>(Some(&path), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        let err = load::<Sample>(None, env(&[("FERROMQ_STORAGE__FLUSHH", "x")])).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }

    #[test]
    fn a_wrongly_typed_env_value_names_the_variable() {
        let err = load::<Sample>(None, env(&[("FERROMQ_NODE_ID", "two")])).unwrap_err();
        assert!(err.to_string().contains("FERROMQ_NODE_ID"), "{err}");
    }
}
