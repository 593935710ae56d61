//! The credential store, in sled.
//!
//! Trees (owned here, opened nowhere else):
//! - `meta`: `holder` → the DID the store was created for, so that a store is never used
//!   with another wallet's key;
//! - `credentials`: record id → [`StoredCredential`] (JSON).
//!
//! Every write is flushed before it returns: a wallet is a short-lived CLI process, and an
//! import that printed "stored" must survive it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, ProofFormat};
use federation::verify::VerifiedCredential;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, WalletError};

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
        let claims = verified.subject.clone();
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
    db: sled::Db,
    meta: sled::Tree,
    credentials: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the store at `path` for `holder`.
    pub(crate) fn open(path: &Path, holder: &str) -> Result<Self> {
        let err = |e: sled::Error| WalletError::storage(path, e);
        let db = sled::open(path).map_err(err)?;
        let store = Store {
            path: path.to_path_buf(),
            meta: db.open_tree("meta").map_err(err)?,
            credentials: db.open_tree("credentials").map_err(err)?,
            db,
        };
        match store.meta.get(HOLDER_KEY).map_err(err)? {
            Some(bytes) if bytes.as_ref() == holder.as_bytes() => {}
            Some(bytes) => {
                return Err(WalletError::HolderMismatch {
                    path: path.display().to_string(),
                    store_holder: String::from_utf8_lossy(&bytes).into_owned(),
                    key_holder: holder.to_string(),
                })
            }
            None => {
                store
                    .meta
                    .insert(HOLDER_KEY, holder.as_bytes())
                    .map_err(err)?;
                store.flush()?;
            }
        }
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> WalletError {
        WalletError::storage(&self.path, e)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
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
        match self
            .credentials
            .get(id.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(bytes) => self.decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a new record. The same credential again is a no-op that returns the stored
    /// record (which keeps its flags, e.g. `withdrawn`); another credential under the same
    /// id is a conflict.
    pub(crate) fn insert_new(&self, record: StoredCredential) -> Result<StoredCredential> {
        let bytes = serde_json::to_vec(&record).map_err(|e| self.err(e))?;
        let swapped = self
            .credentials
            .compare_and_swap(record.id.as_bytes(), None::<&[u8]>, Some(bytes))
            .map_err(|e| self.err(e))?;
        match swapped {
            Ok(()) => {
                self.flush()?;
                Ok(record)
            }
            Err(cas) => {
                let existing = match cas.current {
                    Some(current) => self.decode(record.id.as_bytes(), &current)?,
                    None => return Err(self.err("concurrent update; try again")),
                };
                if existing.digest == record.digest {
                    Ok(existing)
                } else {
                    Err(WalletError::IdConflict { id: record.id })
                }
            }
        }
    }

    /// Replaces an existing record (flags only change; the credential never does).
    pub(crate) fn update(&self, record: &StoredCredential) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| self.err(e))?;
        self.credentials
            .insert(record.id.as_bytes(), bytes)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Removes a record; whether there was one.
    pub(crate) fn remove(&self, id: &str) -> Result<bool> {
        let removed = self
            .credentials
            .remove(id.as_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()?;
        Ok(removed.is_some())
    }

    /// Every record, in id order.
    pub(crate) fn all(&self) -> Result<Vec<StoredCredential>> {
        self.credentials
            .iter()
            .map(|item| {
                let (key, bytes) = item.map_err(|e| self.err(e))?;
                self.decode(&key, &bytes)
            })
            .collect()
    }
}
