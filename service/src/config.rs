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
