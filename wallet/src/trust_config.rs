//! The wallet's verifier for `import`, built from a trust file.
//!
//! Until the federation publishes a signed manifest, a wallet learns whom to trust from a
//! file (JSON, or TOML with the same keys when the name ends in `.toml`):
//!
//! ```json
//! {
//!   "trustedIssuers": {
//!     "ClinicianPrivilegeCredential": ["did:web:credentialing.hospital-a.example"],
//!     "ResearchStudyCredential": ["did:web:irb.university.example"]
//!   },
//!   "didWeb": {
//!     "did:web:credentialing.hospital-a.example": "https://credentialing.hospital-a.example/"
//!   },
//!   "devMode": false
//! }
//! ```
//!
//! - `trustedIssuers`: issuer DIDs per credential type. A patient's self-issued consent
//!   needs no entry.
//! - `didWeb`: the did:web allow-map (DID → base URL serving `/.well-known/did.json` and
//!   the status lists). Every did:web issuer must be listed; no other DID is ever fetched.
//! - `devMode`: allows plain http to loopback base URLs (tests and the demo only).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use federation::client::loopback_only_http;
use federation::credentials::CredentialKind;
use federation::did::DidResolver;
use federation::json::parse_strict as parse_strict_json;
use federation::status::StatusCache;
use federation::trust::StaticTrust;
use federation::verify::Verifier;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrustFileError, WalletError};
use crate::gateway::is_did;

/// Largest trust file read.
const MAX_TRUST_FILE_BYTES: u64 = 1024 * 1024;
/// How long a fetched status list is trusted before it is fetched again.
const STATUS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustConfig {
    #[serde(default)]
    trusted_issuers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    did_web: BTreeMap<String, String>,
    #[serde(default)]
    dev_mode: bool,
}

/// A validated trust configuration, ready to build verifiers from.
struct Checked {
    trust: Vec<(CredentialKind, String)>,
    web: Vec<(String, reqwest::Url)>,
}

impl TrustConfig {
    /// Reads and validates a trust file.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: TrustFileError| WalletError::TrustConfig {
            path: path.display().to_string(),
            reason,
        };
        let size = std::fs::metadata(path).map_err(|e| fail(e.into()))?.len();
        if size > MAX_TRUST_FILE_BYTES {
            return Err(fail(TrustFileError::TooLarge));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(e.into()))?;
        let is_toml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        let config = if is_toml {
            Self::from_toml(&bytes)
        } else {
            Self::from_json(&bytes)
        }
        .map_err(fail)?;
        config.check().map_err(fail)?;
        Ok(config)
    }

    fn from_json(bytes: &[u8]) -> Result<Self, TrustFileError> {
        let value = parse_strict_json(bytes)?;
        Ok(serde_json::from_value(value)?)
    }

    fn from_toml(bytes: &[u8]) -> Result<Self, TrustFileError> {
        let text = std::str::from_utf8(bytes).map_err(|_| TrustFileError::NotUtf8)?;
        Ok(toml::from_str(text)?)
    }

    fn check(&self) -> Result<Checked, TrustFileError> {
        let mut web = Vec::new();
        for (did, base) in &self.did_web {
            if !did.starts_with("did:web:") || !is_did(did) {
                return Err(TrustFileError::NotDidWeb(did.clone()));
            }
            let mut url = reqwest::Url::parse(base).map_err(|source| TrustFileError::BadBase {
                did: did.clone(),
                base: base.clone(),
                source,
            })?;
            loopback_only_http(&url, self.dev_mode).map_err(|source| {
                TrustFileError::Transport {
                    did: did.clone(),
                    source,
                }
            })?;
            // The resolver joins `.well-known/did.json` below the base path.
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            web.push((did.clone(), url));
        }
        let mut trust = Vec::new();
        for (type_name, issuers) in &self.trusted_issuers {
            let kind = CredentialKind::from_type_name(type_name)
                .ok_or_else(|| TrustFileError::UnknownType(type_name.clone()))?;
            for issuer in issuers {
                let method_ok = issuer.starts_with("did:key:") || issuer.starts_with("did:web:");
                if !method_ok || !is_did(issuer) {
                    return Err(TrustFileError::BadIssuer(issuer.clone()));
                }
                if issuer.starts_with("did:web:") && !self.did_web.contains_key(issuer) {
                    return Err(TrustFileError::NoDidWebEntry(issuer.clone()));
                }
                trust.push((kind, issuer.clone()));
            }
        }
        Ok(Checked { trust, web })
    }

    /// A verifier that trusts exactly this configuration.
    pub fn verifier(&self) -> Result<Verifier> {
        let checked = self.check().map_err(|reason| WalletError::TrustConfig {
            path: "(trust configuration)".into(),
            reason,
        })?;
        let resolver = Arc::new(DidResolver::new(self.dev_mode));
        for (did, url) in checked.web {
            resolver.allow_web(&did, url);
        }
        let trust = StaticTrust::new();
        for (kind, issuer) in &checked.trust {
            trust.add(*kind, issuer);
        }
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            STATUS_TTL,
            self.dev_mode,
        ));
        Ok(Verifier::new(resolver, Arc::new(trust), status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_read_the_same() {
        let json = br#"{
            "trustedIssuers": {"ClinicianPrivilegeCredential": ["did:web:office.example"]},
            "didWeb": {"did:web:office.example": "https://office.example/base"},
            "devMode": false
        }"#;
        let toml = br#"
            devMode = false
            [trustedIssuers]
            ClinicianPrivilegeCredential = ["did:web:office.example"]
            [didWeb]
            "did:web:office.example" = "https://office.example/base"
        "#;
        let a = TrustConfig::from_json(json).unwrap();
        let b = TrustConfig::from_toml(toml).unwrap();
        assert_eq!(a, b);
        let v = a.verifier().unwrap();
        assert!(v
            .trust
            .is_trusted(CredentialKind::ClinicianPrivilege, "did:web:office.example"));
        assert!(!v
            .trust
            .is_trusted(CredentialKind::ResearchStudy, "did:web:office.example"));
        assert_eq!(
            v.resolver
                .web_base("did:web:office.example")
                .unwrap()
                .as_str(),
            "https://office.example/base/"
        );
    }

    #[test]
    fn bad_configurations_are_named() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"trustedIssuers": {"Nope": []}}"#,
                "unknown credential type",
            ),
            (
                br#"{"trustedIssuers": {"ResearchStudyCredential": ["did:web:irb.example"]}}"#,
                "no didWeb entry",
            ),
            (
                br#"{"trustedIssuers": {"ResearchStudyCredential": ["did:example:x"]}}"#,
                "not a did:key or did:web",
            ),
            (
                br#"{"didWeb": {"did:web:a.example": "http://a.example/"}}"#,
                "only https",
            ),
            (
                br#"{"didWeb": {"did:key:z6Mk": "https://a.example/"}}"#,
                "not a did:web",
            ),
            (br#"{"trustedIssuer": {}}"#, "unknown field"),
        ];
        for (json, expected) in cases {
            let err = TrustConfig::from_json(json)
                .and_then(|c| c.check().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
        // Loopback http is accepted in dev mode only.
        let dev = br#"{"didWeb": {"did:web:a.test": "http://127.0.0.1:9/"}, "devMode": true}"#;
        assert!(TrustConfig::from_json(dev).unwrap().verifier().is_ok());
        assert!(TrustConfig::from_json(br#"{"a":1,"a":1}"#).is_err());
    }

    #[test]
    fn a_bad_file_is_one_line_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.toml");
        std::fs::write(&path, "devMode = false\ntrustedIssuer = {}\n").unwrap();
        let err = TrustConfig::load(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                WalletError::TrustConfig {
                    reason: TrustFileError::Toml(_),
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with(&format!("trust file {}: ", path.display())),
            "{text}"
        );
        assert!(text.contains("trustedIssuer"), "{text}");

        let path = dir.path().join("trust.json");
        std::fs::write(&path, br#"{"didWeb": {"did:web:a.example": "not a url"}}"#).unwrap();
        let err = TrustConfig::load(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                WalletError::TrustConfig {
                    reason: TrustFileError::BadBase { did, .. },
                    ..
                } if did == "did:web:a.example"
            ),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            TrustConfig::load(&missing),
            Err(WalletError::TrustConfig {
                reason: TrustFileError::Read(_),
                ..
            })
        ));
    }
}
