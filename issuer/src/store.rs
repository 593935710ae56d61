//! Issued credentials and the revocation bitstring, in sled.
//!
//! Trees (owned here, opened nowhere else):
//! - `credentials`: credential id → [`Record`] (JSON);
//! - `by_subject`: subject DID, NUL, credential id → ();
//! - `status_index`: list index (u32 BE) → credential id; reserves random indexes;
//! - `status`: `revocation` → the bitstring; `generation` → u64 BE, bumped per revocation.
//!
//! A mover's "issue the new privilege, revoke the old" is one multi-tree transaction, so no
//! reader ever sees both valid or neither.

use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, ProofFormat};
use federation::status::{Bitstring, LIST_BITS};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::IssuerError;

/// What the office keeps about a credential it issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) kind: CredentialKind,
    pub(crate) subject: String,
    pub(crate) format: ProofFormat,
    pub(crate) status_index: u32,
    pub(crate) issued_at: DateTime<Utc>,
    #[serde(default)]
    pub(crate) revoked_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) replaced_by: Option<String>,
    #[serde(default)]
    pub(crate) replaces: Option<String>,
    pub(crate) credential: serde_json::Value,
}

#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    credentials: sled::Tree,
    by_subject: sled::Tree,
    status_index: sled::Tree,
    status: sled::Tree,
}

const BITS_KEY: &[u8] = b"revocation";
const GENERATION_KEY: &[u8] = b"generation";

fn subject_key(subject: &str, id: &str) -> Vec<u8> {
    let mut k = subject.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn encode(rec: &Record) -> Result<Vec<u8>, IssuerError> {
    serde_json::to_vec(rec).map_err(|e| IssuerError::Storage(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Record, IssuerError> {
    serde_json::from_slice(bytes).map_err(|e| IssuerError::Storage(e.to_string()))
}

fn tx_err(e: TransactionError<IssuerError>) -> IssuerError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => IssuerError::Storage(e.to_string()),
    }
}

impl Store {
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, IssuerError> {
        let db = service::db::open(path)?;
        Ok(Store {
            credentials: db.open_tree("credentials")?,
            by_subject: db.open_tree("by_subject")?,
            status_index: db.open_tree("status_index")?,
            status: db.open_tree("status")?,
            db,
        })
    }

    /// Reserves a random, unused status list index. Random allocation keeps a credential's
    /// position from revealing when it was issued.
    pub(crate) fn allocate_index(&self, credential_id: &str) -> Result<u32, IssuerError> {
        let mut rng = rand::thread_rng();
        for _ in 0..64 {
            let index: u32 = rng.gen_range(0..LIST_BITS as u32);
            let reserved = self
                .status_index
                .compare_and_swap(
                    index.to_be_bytes(),
                    None as Option<&[u8]>,
                    Some(credential_id.as_bytes()),
                )?
                .is_ok();
            if reserved {
                return Ok(index);
            }
        }
        Err(IssuerError::Conflict(
            "the status list is full; start a new list".into(),
        ))
    }

    /// Stores a new credential's record; durable when this returns (flushed without
    /// holding an async worker).
    pub(crate) async fn insert(&self, rec: &Record) -> Result<(), IssuerError> {
        let value = encode(rec)?;
        (&self.credentials, &self.by_subject)
            .transaction(|(creds, subjects)| {
                creds.insert(rec.id.as_bytes(), value.as_slice())?;
                subjects.insert(subject_key(&rec.subject, &rec.id), &[] as &[u8])?;
                Ok::<_, ConflictableTransactionError<IssuerError>>(())
            })
            .map_err(tx_err)?;
        self.db.flush_async().await?;
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Result<Record, IssuerError> {
        let bytes = self
            .credentials
            .get(id.as_bytes())?
            .ok_or_else(|| IssuerError::NotFound(format!("credential {id}")))?;
        decode(&bytes)
    }

    /// Revokes `id` and, when `replacement` is given, stores it in the same transaction.
    pub(crate) async fn revoke(
        &self,
        id: &str,
        replacement: Option<&Record>,
    ) -> Result<Record, IssuerError> {
        let new_value = replacement.map(encode).transpose()?;
        let out = (&self.credentials, &self.by_subject, &self.status)
            .transaction(|(creds, subjects, status)| {
                let abort = |e: IssuerError| ConflictableTransactionError::Abort(e);
                let bytes = creds
                    .get(id.as_bytes())?
                    .ok_or_else(|| abort(IssuerError::NotFound(format!("credential {id}"))))?;
                let mut rec = decode(&bytes).map_err(abort)?;
                if rec.revoked_at.is_some() {
                    return Err(abort(IssuerError::Conflict(format!(
                        "credential {id} is already revoked"
                    ))));
                }
                let mut bits = match status.get(BITS_KEY)? {
                    Some(b) => Bitstring::from_bytes(b.to_vec()),
                    None => Bitstring::new(),
                };
                bits.set(rec.status_index as usize, true);
                status.insert(BITS_KEY, bits.as_bytes())?;
                let generation = status
                    .get(GENERATION_KEY)?
                    .and_then(|g| <[u8; 8]>::try_from(g.as_ref()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                status.insert(GENERATION_KEY, &(generation + 1).to_be_bytes())?;
                rec.revoked_at = Some(Utc::now());
                if let (Some(new), Some(value)) = (replacement, new_value.as_ref()) {
                    rec.replaced_by = Some(new.id.clone());
                    creds.insert(new.id.as_bytes(), value.as_slice())?;
                    subjects.insert(subject_key(&new.subject, &new.id), &[] as &[u8])?;
                }
                creds.insert(id.as_bytes(), encode(&rec).map_err(abort)?)?;
                Ok(rec)
            })
            .map_err(tx_err)?;
        self.db.flush_async().await?;
        Ok(out)
    }

    pub(crate) fn by_subject(&self, subject: &str) -> Result<Vec<Record>, IssuerError> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for entry in self.by_subject.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).to_string();
            out.push(self.get(&id)?);
        }
        out.sort_by_key(|r| r.issued_at);
        Ok(out)
    }

    /// The revocation bitstring and its generation (bumped by every revocation).
    pub(crate) fn bits(&self) -> Result<(Bitstring, u64), IssuerError> {
        let bits = match self.status.get(BITS_KEY)? {
            Some(b) => Bitstring::from_bytes(b.to_vec()),
            None => Bitstring::new(),
        };
        let generation = self
            .status
            .get(GENERATION_KEY)?
            .and_then(|g| <[u8; 8]>::try_from(g.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok((bits, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, subject: &str, index: u32) -> Record {
        Record {
            id: id.into(),
            kind: CredentialKind::ClinicianPrivilege,
            subject: subject.into(),
            format: ProofFormat::Jwt,
            status_index: index,
            issued_at: Utc::now(),
            revoked_at: None,
            replaced_by: None,
            replaces: None,
            credential: serde_json::json!("x"),
        }
    }

    #[tokio::test]
    async fn mover_revokes_old_and_stores_new_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let i1 = store.allocate_index("a").unwrap();
        store.insert(&rec("a", "did:key:z1", i1)).await.unwrap();
        let i2 = store.allocate_index("b").unwrap();
        assert_ne!(i1, i2);
        let old = store
            .revoke("a", Some(&rec("b", "did:key:z1", i2)))
            .await
            .unwrap();
        assert_eq!(old.replaced_by.as_deref(), Some("b"));
        let (bits, gen) = store.bits().unwrap();
        assert_eq!(bits.get(i1 as usize), Some(true));
        assert_eq!(bits.get(i2 as usize), Some(false));
        assert_eq!(gen, 1);
        let all = store.by_subject("did:key:z1").unwrap();
        assert_eq!(all.len(), 2);
        // Revoking twice is a conflict, and a missing credential is not found.
        assert!(matches!(
            store.revoke("a", None).await,
            Err(IssuerError::Conflict(_))
        ));
        assert!(matches!(
            store.revoke("zz", None).await,
            Err(IssuerError::NotFound(_))
        ));
    }
}
