//! The credential store: one database file in the wallet folder (see `holder`).
//!
//! Trees (owned here, opened nowhere else):
//! - `meta`: `holder` → the DID the store was created for, so that a store is never used
//!   with another wallet's key;
//! - `credentials`: record id → [`StoredCredential`] (JSON).
//!
//! Every write is on disk (fdatasync) before it returns: a wallet is a short-lived CLI
//! process, and an import that printed "stored" must survive it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, ProofFormat};
use federation::verify::VerifiedCredential;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use storage::{Db, Schema, StoreError, Tree};

use crate::error::{Result, WalletError};

/// The layout of the store's database.
pub(crate) const SCHEMA: Schema = Schema {
    name: "wallet",
    version: 1,
};

const HOLDER_KEY: &[u8] = b"holder";

/// A credential kept by the wallet, with what `list` and `show` print about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCredential {
    /// The credential's `id`, or `sha256:<digest>` when it has none.
    pub id: String,
    pub kind: CredentialKind,
    pub format: ProofFormat,
    pub issuer: String,
    /// The subject's identifier (a DID, or a study id).
    pub subject: String,
    /// One line about the credential, built only from its own claims and without
    /// patient identifiers.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) valid_from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    pub(crate) imported_at: DateTime<Utc>,
    /// SHA-256 of the credential as it travels.
    pub(crate) digest: String,
    /// The verified `credentialSubject`, kept so selection need not decode JWTs again.
    #[serde(rename = "credentialSubject")]
    pub(crate) claims: Value,
    /// The credential as it travels: a JWT string or a Data Integrity object.
    pub credential: Value,
    /// A withdrawn consent is kept for the record but never presented again.
    #[serde(default)]
    pub withdrawn: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// Gateways (DIDs) that acknowledged the withdrawal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawal_sent_to: Vec<String>,
    /// Gateways (DIDs) that acknowledged a registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registered_with: Vec<String>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn joined(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        None => "?".into(),
    }
}

/// The one-line summary of a verified subject. Patient identifiers (MRNs) are left out.
pub(crate) fn summarize(kind: CredentialKind, claims: &Value) -> String {
    match kind {
        CredentialKind::ClinicianPrivilege => {
            let privileges = claims
                .get("privileges")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .map(|p| format!("{} [{}]", str_at(p, "facility"), joined(p, "domains")))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            format!(
                "{} ({}) of {}; privileges at {}",
                str_at(claims, "name"),
                str_at(claims, "role"),
                str_at(claims, "organization"),
                privileges
            )
        }
        CredentialKind::PatientConsent => {
            let grantee = claims.get("grantee").unwrap_or(&Value::Null);
            let period = claims.get("period").unwrap_or(&Value::Null);
            let end = period.get("end").and_then(Value::as_str).unwrap_or("open");
            format!(
                "{} to {} {} at {}; domains {}; purposes {}; {}..{}",
                str_at(claims, "provision"),
                str_at(grantee, "kind"),
                str_at(grantee, "id"),
                joined(claims, "custodians"),
                joined(claims, "domains"),
                joined(claims, "purposes"),
                str_at(period, "start"),
                end
            )
        }
        CredentialKind::ResearchStudy => format!(
            "study {:?} sponsored by {}; purposes {}",
            str_at(claims, "title"),
            str_at(claims, "sponsor"),
            joined(claims, "purposes")
        ),
    }
}

impl StoredCredential {
    /// The record for a credential that passed the verification pipeline.
    pub(crate) fn from_verified(verified: &VerifiedCredential, credential: Value) -> Self {
        let claims = Value::clone(&verified.subject);
        StoredCredential {
            id: verified
                .id
                .clone()
                .unwrap_or_else(|| format!("sha256:{}", verified.digest)),
            kind: verified.kind,
            format: verified.format,
            issuer: verified.issuer.clone(),
            subject: claims
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            summary: summarize(verified.kind, &claims),
            valid_from: verified.valid_from,
            valid_until: verified.valid_until,
            imported_at: Utc::now(),
            digest: verified.digest.clone(),
            claims,
            credential,
            withdrawn: false,
            withdrawn_at: None,
            withdrawal_sent_to: Vec::new(),
            registered_with: Vec::new(),
        }
    }

    /// Whether the credential's own validity period covers `now`.
    pub(crate) fn is_current(&self, now: DateTime<Utc>) -> bool {
        self.valid_from.is_none_or(|f| f <= now) && self.valid_until.is_none_or(|u| now <= u)
    }
}

pub(crate) struct Store {
    path: PathBuf,
    db: Db,
    meta: Tree,
    credentials: Tree,
}

impl Store {
    /// Opens (creating if needed) the store in the database file at `path` for `holder`.
    pub(crate) fn open(path: &Path, holder: &str) -> Result<Self> {
        let db = Db::open(path, SCHEMA)?;
        let store = Store {
            path: path.to_path_buf(),
            meta: db.tree("meta"),
            credentials: db.tree("credentials"),
            db,
        };
        // The first open names the holder; every later one must be the same holder.
        let (meta, claimant) = (store.meta.clone(), holder.as_bytes().to_vec());
        let owner = store.db.write_blocking(move |tx| {
            let owner = tx.get(&meta, HOLDER_KEY)?;
            if owner.is_none() {
                tx.insert(&meta, HOLDER_KEY, &claimant)?;
            }
            Ok::<_, StoreError>(owner)
        })?;
        match owner {
            Some(bytes) if bytes == holder.as_bytes() => {}
            Some(bytes) => {
                return Err(WalletError::HolderMismatch {
                    path: path.display().to_string(),
                    store_holder: String::from_utf8_lossy(&bytes).into_owned(),
                    key_holder: holder.to_string(),
                })
            }
            None => {}
        }
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> WalletError {
        WalletError::storage(&self.path, e)
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<StoredCredential> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.err(format!(
                "record {} is unreadable ({e}); remove it",
                String::from_utf8_lossy(key)
            ))
        })
    }

    pub(crate) fn get(&self, id: &str) -> Result<Option<StoredCredential>> {
        match self.credentials.get(id.as_bytes())? {
            Some(bytes) => self.decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a new record. The same credential again is a no-op that returns the stored
    /// record (which keeps its flags, e.g. `withdrawn`); another credential under the same
    /// id is a conflict.
    pub(crate) fn insert_new(&self, record: StoredCredential) -> Result<StoredCredential> {
        let bytes = serde_json::to_vec(&record).map_err(|e| self.err(e))?;
        let (tree, key) = (self.credentials.clone(), record.id.as_bytes().to_vec());
        // Inserts unless the id is taken, and then hands back what holds it.
        let current = self.db.write_blocking(move |tx| {
            let current = tx.get(&tree, &key)?;
            if current.is_none() {
                tx.insert(&tree, &key, &bytes)?;
            }
            Ok::<_, StoreError>(current)
        })?;
        let Some(current) = current else {
            return Ok(record);
        };
        let existing = self.decode(record.id.as_bytes(), &current)?;
        if existing.digest == record.digest {
            Ok(existing)
        } else {
            Err(WalletError::IdConflict { id: record.id })
        }
    }

    /// Replaces an existing record (flags only change; the credential never does).
    pub(crate) fn update(&self, record: &StoredCredential) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| self.err(e))?;
        let (tree, key) = (self.credentials.clone(), record.id.as_bytes().to_vec());
        self.db
            .write_blocking(move |tx| tx.insert(&tree, &key, &bytes).map(|_| ()))?;
        Ok(())
    }

    /// Removes a record; whether there was one.
    pub(crate) fn remove(&self, id: &str) -> Result<bool> {
        let (tree, key) = (self.credentials.clone(), id.as_bytes().to_vec());
        let removed = self.db.write_blocking(move |tx| tx.remove(&tree, &key))?;
        Ok(removed.is_some())
    }

    /// Every record, in id order.
    pub(crate) fn all(&self) -> Result<Vec<StoredCredential>> {
        self.credentials
            .entries()?
            .iter()
            .map(|(key, bytes)| self.decode(key, bytes))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, digest: &str) -> StoredCredential {
        StoredCredential {
            id: id.into(),
            kind: CredentialKind::ClinicianPrivilege,
            format: ProofFormat::Jwt,
            issuer: "did:web:office.test".into(),
            subject: "did:key:z1".into(),
            summary: "s".into(),
            valid_from: None,
            valid_until: None,
            imported_at: Utc::now(),
            digest: digest.into(),
            claims: Value::Null,
            credential: Value::String("x.y.z".into()),
            withdrawn: false,
            withdrawn_at: None,
            withdrawal_sent_to: Vec::new(),
            registered_with: Vec::new(),
        }
    }

    #[test]
    fn writes_survive_a_reopen_and_the_store_keeps_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.redb");
        {
            let store = Store::open(&path, "did:key:holder").unwrap();
            store.insert_new(record("a", "1")).unwrap();
            store.insert_new(record("b", "2")).unwrap();
            let mut b = record("b", "2");
            b.withdrawn = true;
            store.update(&b).unwrap();
            assert!(store.remove("a").unwrap());
            assert!(!store.remove("a").unwrap());
        }
        let store = Store::open(&path, "did:key:holder").unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].withdrawn);
        assert_eq!(store.get("a").unwrap(), None);
        drop(store);
        let err = Store::open(&path, "did:key:someone-else").err().unwrap();
        assert!(matches!(err, WalletError::HolderMismatch { .. }), "{err}");
    }

    #[test]
    fn the_same_credential_again_is_kept_as_stored_and_another_under_its_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb"), "did:key:holder").unwrap();
        let mut first = record("a", "1");
        first.withdrawn = true;
        store.insert_new(first.clone()).unwrap();
        assert_eq!(store.insert_new(record("a", "1")).unwrap(), first);
        let err = store.insert_new(record("a", "2")).unwrap_err();
        assert!(matches!(err, WalletError::IdConflict { .. }), "{err}");
        assert_eq!(store.get("a").unwrap(), Some(first));
    }

    #[test]
    fn an_unreadable_record_is_named_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb"), "did:key:holder").unwrap();
        let tree = store.credentials.clone();
        store
            .db
            .write_blocking(move |tx| tx.insert(&tree, b"bad", b"{not json").map(|_| ()))
            .unwrap();
        let err = store.all().unwrap_err();
        assert!(
            err.to_string().contains("record bad is unreadable"),
            "{err}"
        );
        assert!(store.get("bad").is_err());
        assert!(store.remove("bad").unwrap());
        assert!(store.all().unwrap().is_empty());
    }
}
