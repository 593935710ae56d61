//! The JSON-LD contexts fedgate credentials use, bundled into the binary.
//!
//! Data Integrity proofs canonicalize the credential as RDF, which means expanding its
//! JSON-LD contexts. Fetching a context at verification time would let whoever controls
//! that URL change what a signed credential means, so every context is compiled in and an
//! unknown context URL is an error.

use std::collections::HashMap;
use std::sync::OnceLock;

use ssi::json_ld::ContextLoader;

/// The W3C VC Data Model 2.0 context.
pub(crate) const CREDENTIALS_V2: &str = "https://www.w3.org/ns/credentials/v2";
/// fedgate's own vocabulary: the credential types and their claims.
pub(crate) const FEDGATE_V1: &str = "https://w3id.org/fedgate/v1";
/// The bundled text of [`FEDGATE_V1`].
pub(crate) const FEDGATE_V1_JSON: &str = include_str!("../../schemas/context-v1.jsonld");

/// A loader that knows the W3C contexts ssi ships and fedgate's, and nothing else.
pub(crate) fn loader() -> ContextLoader {
    static LOADER: OnceLock<Option<ContextLoader>> = OnceLock::new();
    LOADER
        .get_or_init(|| {
            let map = HashMap::from([(FEDGATE_V1.to_string(), FEDGATE_V1_JSON.to_string())]);
            ContextLoader::default().with_context_map_from(map).ok()
        })
        .clone()
        // The bundled context is checked by a unit test; if it ever failed to parse, the
        // static W3C loader alone still refuses fedgate credentials (fail closed).
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_context_parses() {
        let map = std::collections::HashMap::from([(
            super::FEDGATE_V1.to_string(),
            super::FEDGATE_V1_JSON.to_string(),
        )]);
        assert!(ssi::json_ld::ContextLoader::default()
            .with_context_map_from(map)
            .is_ok());
    }
}
