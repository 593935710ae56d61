//! What a service knows beyond fedgate's own types, from its configuration and never from
//! the network: JSON-LD contexts (for Data Integrity), JSON Schemas (`credentialSchema` of
//! type `JsonSchema`) and related resources (`relatedResource` digests).
//!
//! A credential that names a context this service does not have fails to expand, and so
//! fails `proof`; one that names a schema it does not have fails `schema`: nothing a
//! credential names is ever fetched, since whoever controls that URL would then decide
//! what the credential means or whether it is valid.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use ssi::json_ld::ContextLoader;

use crate::context::{CREDENTIALS_V2, FEDGATE_V1};

/// Contexts, schemas and resources bundled by configuration.
#[derive(Clone)]
pub struct Bundle {
    loader: ContextLoader,
    context_urls: Vec<String>,
    schemas: HashMap<String, Arc<jsonschema::Validator>>,
    resources: HashMap<String, Arc<[u8]>>,
}

/// Why a bundled context, schema or resource was refused (at start-up, naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("context {0}: fedgate's own and the W3C contexts cannot be replaced")]
    ReservedContext(String),
    #[error("context {url}: {reason}")]
    Context { url: String, reason: String },
    #[error("schema {url}: {reason}")]
    Schema { url: String, reason: String },
    #[error("{0} is not an absolute URL")]
    NotUrl(String),
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            loader: crate::context::loader(),
            context_urls: Vec::new(),
            schemas: HashMap::new(),
            resources: HashMap::new(),
        }
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("contexts", &self.context_urls)
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn is_absolute_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok()
}

impl Bundle {
    /// Nothing beyond fedgate's own contexts and schemas.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds JSON-LD contexts (URL → the context document's text). The W3C contexts and
    /// fedgate's are built in and cannot be replaced.
    pub fn with_contexts(mut self, contexts: HashMap<String, String>) -> Result<Self, BundleError> {
        if contexts.is_empty() {
            return Ok(self);
        }
        let mut map = HashMap::new();
        for (url, text) in contexts {
            if url == CREDENTIALS_V2 || url == FEDGATE_V1 || url.starts_with("https://www.w3.org/")
            {
                return Err(BundleError::ReservedContext(url));
            }
            if !is_absolute_url(&url) {
                return Err(BundleError::NotUrl(url));
            }
            let parsed =
                crate::json::parse_strict(text.as_bytes()).map_err(|e| BundleError::Context {
                    url: url.clone(),
                    reason: format!("not strict JSON: {}", e.summary()),
                })?;
            if parsed.get("@context").is_none() {
                return Err(BundleError::Context {
                    url,
                    reason: "has no @context".into(),
                });
            }
            self.context_urls.push(url.clone());
            map.insert(url, text);
        }
        map.insert(
            FEDGATE_V1.to_string(),
            crate::context::FEDGATE_V1_JSON.to_string(),
        );
        self.loader = ContextLoader::default()
            .with_context_map_from(map)
            .map_err(|e| BundleError::Context {
                url: self.context_urls.join(", "),
                reason: e.to_string(),
            })?;
        Ok(self)
    }

    /// Adds JSON Schemas (URL → the schema), each compiled now.
    pub fn with_schemas(mut self, schemas: HashMap<String, Value>) -> Result<Self, BundleError> {
        for (url, schema) in schemas {
            if !is_absolute_url(&url) {
                return Err(BundleError::NotUrl(url));
            }
            let validator =
                jsonschema::validator_for(&schema).map_err(|e| BundleError::Schema {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            self.schemas.insert(url, Arc::new(validator));
        }
        Ok(self)
    }

    /// Adds related resources (URL → their bytes), whose digests credentials may commit to.
    pub fn with_resources(
        mut self,
        resources: HashMap<String, Vec<u8>>,
    ) -> Result<Self, BundleError> {
        for (url, bytes) in resources {
            if !is_absolute_url(&url) {
                return Err(BundleError::NotUrl(url));
            }
            self.resources.insert(url, Arc::from(bytes));
        }
        Ok(self)
    }

    pub(crate) fn loader(&self) -> ContextLoader {
        self.loader.clone()
    }

    pub(crate) fn schema(&self, url: &str) -> Option<&jsonschema::Validator> {
        self.schemas.get(url).map(Arc::as_ref)
    }

    pub(crate) fn resource(&self, url: &str) -> Option<&[u8]> {
        self.resources.get(url).map(|b| &b[..])
    }
}

/// Whether `digest` (`digestSRI`: `sha256-`, `sha384-` or `sha512-` and standard base64)
/// is the digest of `bytes`. `None`: not a form this reader knows.
pub(crate) fn sri_matches(digest: &str, bytes: &[u8]) -> Option<bool> {
    use base64::Engine;
    use sha2::Digest;
    let (alg, b64) = digest.split_once('-')?;
    let expected = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let actual = match alg {
        "sha256" => sha2::Sha256::digest(bytes).to_vec(),
        "sha384" => sha2::Sha384::digest(bytes).to_vec(),
        "sha512" => sha2::Sha512::digest(bytes).to_vec(),
        _ => return None,
    };
    Some(actual == expected)
}

/// Whether `digest` (`digestMultibase`: a multibase multihash of SHA-256, SHA-384 or
/// SHA-512) is the digest of `bytes`. `None`: not a form this reader knows.
pub(crate) fn multibase_matches(digest: &str, bytes: &[u8]) -> Option<bool> {
    use sha2::Digest;
    let (_, decoded) = multibase::decode(digest).ok()?;
    let (code, len, rest) = match decoded.as_slice() {
        [code, len, rest @ ..] => (*code, *len as usize, rest),
        _ => return None,
    };
    let actual = match code {
        0x12 => sha2::Sha256::digest(bytes).to_vec(),
        0x20 => sha2::Sha384::digest(bytes).to_vec(),
        0x13 => sha2::Sha512::digest(bytes).to_vec(),
        _ => return None,
    };
    if rest.len() != len {
        return Some(false);
    }
    Some(actual == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_both_forms() {
        use base64::Engine;
        use sha2::Digest;
        let bytes = b"a bundled resource";
        let sri = format!(
            "sha384-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(bytes))
        );
        assert_eq!(sri_matches(&sri, bytes), Some(true));
        assert_eq!(sri_matches(&sri, b"another"), Some(false));
        assert_eq!(sri_matches("md5-AAAA", bytes), None);
        let mut mh = vec![0x12, 32];
        mh.extend_from_slice(&sha2::Sha256::digest(bytes));
        let mb = multibase::encode(multibase::Base::Base58Btc, &mh);
        assert_eq!(multibase_matches(&mb, bytes), Some(true));
        assert_eq!(multibase_matches(&mb, b"another"), Some(false));
        assert_eq!(multibase_matches("not multibase", bytes), None);
    }

    #[test]
    fn reserved_contexts_and_bad_documents_are_refused() {
        let one = |url: &str, text: &str| {
            Bundle::empty().with_contexts(HashMap::from([(url.to_string(), text.to_string())]))
        };
        assert!(matches!(
            one(CREDENTIALS_V2, r#"{"@context": {}}"#),
            Err(BundleError::ReservedContext(_))
        ));
        assert!(matches!(
            one("https://example.org/ctx", r#"{"a": 1}"#),
            Err(BundleError::Context { .. })
        ));
        assert!(one(
            "https://example.org/ctx",
            r#"{"@context": {"x": "https://example.org/x"}}"#
        )
        .is_ok());
        let schema = Bundle::empty().with_schemas(HashMap::from([(
            "https://example.org/s".to_string(),
            serde_json::json!({"type": 7}),
        )]));
        assert!(matches!(schema, Err(BundleError::Schema { .. })));
    }
}
