//! Loading a service's TOML configuration, the same way for every service: read, parse
//! (unknown keys are errors), take relative paths from the file's folder, validate. A bad
//! config is one line naming the file and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid {
        path: String,
        key: &'static str,
        message: String,
    },
}

/// A service configuration file.
pub trait ServiceConfig: DeserializeOwned {
    /// Makes every relative path relative to `base`, the config file's folder.
    fn resolve_paths(&mut self, base: &Path);
    /// Checks the values; `path` names the file in errors.
    fn validate(&self, path: &str) -> Result<(), ConfigError>;
}

/// Reads, parses, resolves and validates a config file.
pub fn load<T: ServiceConfig>(path: &Path) -> Result<T, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    let mut cfg: T = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: p.clone(),
        message: e.message().to_string(),
    })?;
    cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    cfg.validate(&p)?;
    Ok(cfg)
}

/// Makes `p` relative to `base` if it is relative.
pub fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// The listener's TLS files, relative to `base`.
pub fn resolve_listen(base: &Path, listen: &mut crate::http::ListenConfig) {
    for p in [listen.tls_cert.as_mut(), listen.tls_key.as_mut()]
        .into_iter()
        .flatten()
    {
        resolve(base, p);
    }
}

/// `[bundle]`: the JSON-LD contexts, JSON Schemas and related resources a service knows
/// beyond fedgate's own, each URL mapped to a file read at start-up. Nothing a credential
/// names is ever fetched.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// Context URL → JSON-LD context file.
    #[serde(default)]
    pub contexts: std::collections::BTreeMap<String, PathBuf>,
    /// Schema URL (a `credentialSchema` id) → JSON Schema file.
    #[serde(default)]
    pub schemas: std::collections::BTreeMap<String, PathBuf>,
    /// Resource URL (a `relatedResource` id) → the resource's file.
    #[serde(default)]
    pub resources: std::collections::BTreeMap<String, PathBuf>,
}

impl BundleConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in self
            .contexts
            .values_mut()
            .chain(self.schemas.values_mut())
            .chain(self.resources.values_mut())
        {
            resolve(base, p);
        }
    }

    /// Reads the files and builds the bundle; `path` (the config file) and the key are
    /// named in errors.
    pub fn load(&self, path: &str) -> Result<federation::bundle::Bundle, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        let read = |key: &'static str, url: &str, file: &Path| {
            std::fs::read(file)
                .map_err(|e| invalid(key, format!("{url}: cannot read {}: {e}", file.display())))
        };
        let mut contexts = std::collections::HashMap::new();
        for (url, file) in &self.contexts {
            let bytes = read("bundle.contexts", url, file)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid("bundle.contexts", format!("{url}: not UTF-8")))?;
            contexts.insert(url.clone(), text);
        }
        let mut schemas = std::collections::HashMap::new();
        for (url, file) in &self.schemas {
            let bytes = read("bundle.schemas", url, file)?;
            let schema = federation::json::parse_strict(&bytes).map_err(|e| {
                invalid(
                    "bundle.schemas",
                    format!("{url}: not strict JSON: {}", e.summary()),
                )
            })?;
            schemas.insert(url.clone(), schema);
        }
        let mut resources = std::collections::HashMap::new();
        for (url, file) in &self.resources {
            resources.insert(url.clone(), read("bundle.resources", url, file)?);
        }
        federation::bundle::Bundle::empty()
            .with_contexts(contexts)
            .map_err(|e| invalid("bundle.contexts", e.to_string()))?
            .with_schemas(schemas)
            .map_err(|e| invalid("bundle.schemas", e.to_string()))?
            .with_resources(resources)
            .map_err(|e| invalid("bundle.resources", e.to_string()))
    }
}
