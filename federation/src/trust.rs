//! Which issuers are trusted for which credential type.
//!
//! The verification pipeline asks a [`TrustSource`]; the federation's signed registry is
//! one, a static map from configuration is another. A patient's consent is special: the
//! patient may issue it to themselves (issuer == subject), so a self-issued consent is
//! trusted without being listed, and only for that patient.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::credentials::CredentialKind;

pub trait TrustSource: Send + Sync {
    /// Whether `issuer` may issue credentials of `kind`.
    fn is_trusted(&self, kind: CredentialKind, issuer: &str) -> bool;

    /// For a credential of none of fedgate's types, with these `type` values: whether
    /// `issuer` may issue it, or `None` when trust is configured for none of its types
    /// (the VC API's verify endpoints then make no issuer-trust check). Access decisions
    /// never take such a credential.
    fn is_trusted_for_types(&self, _types: &[String], _issuer: &str) -> Option<bool> {
        None
    }
}

/// Trust from configuration: a list of issuer DIDs per credential type.
#[derive(Default)]
pub struct StaticTrust {
    issuers: RwLock<HashMap<CredentialKind, HashSet<String>>>,
    /// Issuers per other credential type name (the VC API's generic verification).
    others: RwLock<HashMap<String, HashSet<String>>>,
}

impl StaticTrust {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trust(self, kind: CredentialKind, issuer: &str) -> Self {
        self.add(kind, issuer);
        self
    }

    pub fn add(&self, kind: CredentialKind, issuer: &str) {
        if let Ok(mut map) = self.issuers.write() {
            map.entry(kind).or_default().insert(issuer.to_string());
        }
    }

    /// Trusts `issuer` for credentials whose `type` includes `type_name` (none of
    /// fedgate's three).
    pub fn add_type(&self, type_name: &str, issuer: &str) {
        if let Ok(mut map) = self.others.write() {
            map.entry(type_name.to_string())
                .or_default()
                .insert(issuer.to_string());
        }
    }

    #[cfg(test)]
    pub(crate) fn remove(&self, kind: CredentialKind, issuer: &str) {
        if let Ok(mut map) = self.issuers.write() {
            if let Some(set) = map.get_mut(&kind) {
                set.remove(issuer);
            }
        }
    }
}

impl TrustSource for StaticTrust {
    fn is_trusted(&self, kind: CredentialKind, issuer: &str) -> bool {
        // A poisoned lock means a writer panicked mid-update: trust nothing (fail closed).
        self.issuers
            .read()
            .map(|m| m.get(&kind).is_some_and(|s| s.contains(issuer)))
            .unwrap_or(false)
    }

    /// Every type of the credential that trust is configured for must list the issuer.
    fn is_trusted_for_types(&self, types: &[String], issuer: &str) -> Option<bool> {
        let Ok(map) = self.others.read() else {
            return Some(false);
        };
        let configured: Vec<&HashSet<String>> = types.iter().filter_map(|t| map.get(t)).collect();
        if configured.is_empty() {
            None
        } else {
            Some(configured.iter().all(|s| s.contains(issuer)))
        }
    }
}
