//! Consents patients register with this custodian, and withdrawals.
//!
//! Clinical and billing requests carry their consents in the presentation; research queries
//! cannot (a study has no relation to each patient), so the cohort is formed only from
//! consents patients registered here. A withdrawal is remembered by credential id and wins
//! over any presentation of the same consent.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use federation::verify::VerifiedCredential;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Snapshot, StoreError, WriteTx};

use crate::db::{Db, Tree};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredConsent {
    pub id: String,
    pub patient_did: String,
    /// The custodian's Patient.id the consent's identifiers resolved to at registration.
    pub patient_id: Option<String>,
    pub issuer: String,
    pub subject: Value,
    pub registered_at: DateTime<Utc>,
}

/// The trees this module owns.
const CONSENTS: &str = "consents";
const WITHDRAWN: &str = "consent_withdrawals";
const BY_PATIENT: &str = "consents_by_patient";
const BY_GRANTEE: &str = "consents_by_grantee";
const LINKS: &str = "patient_links";

#[derive(Clone)]
pub struct ConsentStore {
    db: Db,
    consents: Tree,
    withdrawn: Tree,
    /// `patient id ‖ consent id` → patient DID: every exchange looks up the DIDs of its
    /// patient, and a scan of every registered consent per request does not scale.
    by_patient: Tree,
    /// `grantee ‖ consent id` → (): a research query forms its cohort from the consents
    /// granted to its study or sponsor, not from every consent held.
    by_grantee: Tree,
    /// `patient id ‖ DID` → when linked: the DIDs this custodian has confirmed belong to
    /// the patient. A self-issued consent speaks for the patient only through a link.
    links: Tree,
}

/// The index key prefix of a value (a patient id, a grantee): its length first, so that
/// no value is a prefix of another's key.
fn index_prefix(value: &str) -> Vec<u8> {
    let mut k = (value.len() as u32).to_be_bytes().to_vec();
    k.extend_from_slice(value.as_bytes());
    k
}

fn index_key(value: &str, consent_id: &str) -> Vec<u8> {
    let mut k = index_prefix(value);
    k.extend_from_slice(consent_id.as_bytes());
    k
}

fn grantee_of(c: &StoredConsent) -> Option<&str> {
    c.subject["grantee"]["id"]
        .as_str()
        .filter(|g| !g.is_empty())
}

/// Why the consent store could not answer or remember.
#[derive(Debug, thiserror::Error)]
pub enum ConsentStoreError {
    #[error("consent store: {0}")]
    Storage(#[from] StoreError),
    #[error("consent store: a consent could not be encoded or decoded: {0}")]
    Encode(#[from] serde_json::Error),
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a consent's period covers `now`.
pub fn period_covers(subject: &Value, now: DateTime<Utc>) -> bool {
    let period = &subject["period"];
    let start = period["start"].as_str().and_then(federation::time::parse);
    let end = period["end"].as_str().and_then(federation::time::parse);
    start.is_some_and(|s| s <= now) && end.is_none_or(|e| now <= e)
}

impl ConsentStore {
    /// The consent store in the gateway's database; a store written before its indexes
    /// existed gets them (one write, waited for here: call it at start).
    pub fn open(db: &Db) -> Result<Self, ConsentStoreError> {
        let store = ConsentStore {
            db: db.clone(),
            consents: db.tree(CONSENTS),
            withdrawn: db.tree(WITHDRAWN),
            by_patient: db.tree(BY_PATIENT),
            by_grantee: db.tree(BY_GRANTEE),
            links: db.tree(LINKS),
        };
        let indexer = store.clone();
        db.write_blocking(move |tx| indexer.reindex_if_missing(tx))?;
        Ok(store)
    }

    /// Builds the indexes of a store written before they existed: a consent without its
    /// index entries gets them. A write that changes nothing commits nothing.
    fn reindex_if_missing(&self, tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
        let mut stored = Vec::new();
        tx.scan(&self.consents, .., |_, v| {
            // An entry that does not decode names no index entry to build.
            if let Ok(c) = serde_json::from_slice::<StoredConsent>(v) {
                stored.push(c);
            }
            std::ops::ControlFlow::Continue(())
        })?;
        for c in &stored {
            if let Some(pid) = &c.patient_id {
                let key = index_key(pid, &c.id);
                if tx.get(&self.by_patient, &key)?.is_none() {
                    tx.insert(&self.by_patient, &key, c.patient_did.as_bytes())?;
                }
            }
            if let Some(grantee) = grantee_of(c) {
                let key = index_key(grantee, &c.id);
                if tx.get(&self.by_grantee, &key)?.is_none() {
                    tx.insert(&self.by_grantee, &key, &[])?;
                }
            }
        }
        Ok(())
    }

    /// Stores a consent; on disk when this returns.
    pub async fn register(
        &self,
        vc: &VerifiedCredential,
        patient_id: Option<String>,
    ) -> Result<StoredConsent, ConsentStoreError> {
        let id = vc.id.clone().unwrap_or_else(|| vc.digest.clone());
        let stored = StoredConsent {
            id: id.clone(),
            patient_did: vc.subject["id"].as_str().unwrap_or_default().to_string(),
            patient_id,
            issuer: vc.issuer.clone(),
            subject: Value::clone(&vc.subject),
            registered_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&stored)?;
        // The consent and its index entries change together (one write), and a
        // re-registration that resolved to another patient drops the old entries.
        let (store, new) = (self.clone(), stored.clone());
        self.db
            .write(move |tx| {
                if let Some(old) = tx.insert(&store.consents, id.as_bytes(), &bytes)? {
                    if let Ok(old) = serde_json::from_slice::<StoredConsent>(&old) {
                        if let Some(pid) = &old.patient_id {
                            tx.remove(&store.by_patient, &index_key(pid, &id))?;
                        }
                        if let Some(grantee) = grantee_of(&old) {
                            tx.remove(&store.by_grantee, &index_key(grantee, &id))?;
                        }
                    }
                }
                if let Some(pid) = &new.patient_id {
                    tx.insert(
                        &store.by_patient,
                        &index_key(pid, &id),
                        new.patient_did.as_bytes(),
                    )?;
                }
                if let Some(grantee) = grantee_of(&new) {
                    tx.insert(&store.by_grantee, &index_key(grantee, &id), &[])?;
                }
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(stored)
    }

    /// Remembers a withdrawal; on disk when this returns.
    pub async fn withdraw(&self, id: &str) -> Result<(), ConsentStoreError> {
        self.withdrawn
            .insert(id.as_bytes(), Utc::now().to_rfc3339().as_bytes())
            .await?;
        Ok(())
    }

    pub fn is_withdrawn(&self, id: &str) -> bool {
        // If the store cannot answer, treat the consent as withdrawn (fail closed).
        self.withdrawn.contains_key(id.as_bytes()).unwrap_or(true)
    }

    /// The consent registered under `id`. A storage failure or an entry that does not
    /// decode is an error, not "no consent": a registered deny that cannot be read must
    /// not let its patient into a cohort.
    pub fn get(&self, id: &str) -> Result<Option<StoredConsent>, ConsentStoreError> {
        match self.consents.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The issuer of a stored consent, read without the rest of it.
    fn issuer_in(&self, snap: &Snapshot, id: &str) -> Result<Option<String>, ConsentStoreError> {
        #[derive(serde::Deserialize)]
        struct Issuer {
            issuer: String,
        }
        match snap.get(&self.consents, id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice::<Issuer>(&v)?.issuer)),
            None => Ok(None),
        }
    }

    /// The suffixes (consent ids, DIDs) of the index entries under `prefix`.
    fn index_suffixes(tree: &Tree, prefix: &[u8]) -> Result<Vec<String>, ConsentStoreError> {
        let mut out = Vec::new();
        for (key, _) in tree.scan_prefix(prefix)? {
            // Suffixes are written from strings; one that is not UTF-8 names nothing.
            if let Some(Ok(suffix)) = key
                .get(prefix.len()..)
                .map(|s| String::from_utf8(s.to_vec()))
            {
                out.push(suffix);
            }
        }
        Ok(out)
    }

    /// Consents (not withdrawn) granted to any of `grantees`, from the grantee index.
    fn granted_to(&self, grantees: &[&str]) -> Result<Vec<StoredConsent>, ConsentStoreError> {
        let mut ids: Vec<String> = Vec::new();
        for grantee in grantees.iter().filter(|g| !g.is_empty()) {
            ids.extend(Self::index_suffixes(
                &self.by_grantee,
                &index_prefix(grantee),
            )?);
        }
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            if let Some(c) = self.get(&id)? {
                if !self.is_withdrawn(&c.id) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Links `did` to the custodian's patient `patient_id`: from now on the patient's
    /// self-issued consents under that DID speak for them. Durable when it returns.
    pub async fn link(&self, patient_id: &str, did: &str) -> Result<(), ConsentStoreError> {
        self.links
            .insert(
                &index_key(patient_id, did),
                Utc::now().to_rfc3339().as_bytes(),
            )
            .await?;
        Ok(())
    }

    /// Removes a link; returns whether there was one. On disk when this returns.
    pub async fn unlink(&self, patient_id: &str, did: &str) -> Result<bool, ConsentStoreError> {
        let (links, key) = (self.links.clone(), index_key(patient_id, did));
        let had = self
            .db
            .write(move |tx| tx.remove(&links, &key))
            .await?
            .is_some();
        Ok(had)
    }

    /// Whether this custodian has linked `did` to `patient_id` (a storage error: no).
    pub fn is_linked(&self, patient_id: &str, did: &str) -> bool {
        self.links
            .contains_key(&index_key(patient_id, did))
            .unwrap_or(false)
    }

    /// Whether a consent's DID speaks for `patient_id`: it is linked, or the consent comes
    /// from an issuer other than the patient (trusted for consents, so it vouches for the
    /// link), or links are not required.
    pub fn speaks_for(
        &self,
        patient_id: &str,
        did: &str,
        issuer: &str,
        require_links: bool,
    ) -> bool {
        !require_links || issuer != did || self.is_linked(patient_id, did)
    }

    /// DIDs of the patient behind a custodian patient id: linked ones, and those of
    /// consents registered here that speak for the patient (withdrawn ones included: the
    /// history is still theirs).
    /// A storage failure is an error: an access the patient cannot find in their history
    /// is not a plausible answer.
    pub fn dids_for_patient(
        &self,
        patient_id: &str,
        require_links: bool,
    ) -> Result<Vec<String>, ConsentStoreError> {
        // Every exchange asks this: one read transaction for all of it, not one per entry.
        let snap = self.db.read()?;
        let prefix = index_prefix(patient_id);
        let suffix = |key: &[u8]| {
            key.get(prefix.len()..)
                .and_then(|s| std::str::from_utf8(s).ok())
                .map(str::to_string)
        };
        let mut dids = BTreeSet::new();
        snap.scan_prefix(&self.links, &prefix, |key, _| {
            // Suffixes are written from strings; one that is not UTF-8 names nothing.
            dids.extend(suffix(key));
            ControlFlow::Continue(())
        })?;
        // The index holds each consent's patient DID (consent id → DID).
        let mut registered = Vec::new();
        snap.scan_prefix(&self.by_patient, &prefix, |key, did| {
            if let (Some(consent_id), Ok(did)) = (suffix(key), std::str::from_utf8(did)) {
                if !did.is_empty() {
                    registered.push((consent_id, did.to_string()));
                }
            }
            ControlFlow::Continue(())
        })?;
        for (consent_id, did) in registered {
            // A linked DID is the patient's whoever issued the consent; for another, the
            // issuer is read from the consent, and only when a self-issued one must be
            // linked to count.
            if require_links && !dids.contains(&did) {
                let Some(issuer) = self.issuer_in(&snap, &consent_id)? else {
                    continue;
                };
                if issuer == did {
                    continue;
                }
            }
            dids.insert(did);
        }
        Ok(dids.into_iter().collect())
    }

    /// Patients (custodian ids) whose registered consent permits `purpose` in the research
    /// domain to this study or its sponsor now, unless any registered deny for them matches.
    /// A self-issued permit counts only when it speaks for its patient (see
    /// [`ConsentStore::speaks_for`]); any registered deny counts.
    pub fn research_cohort(
        &self,
        study_id: &str,
        sponsor: &str,
        purpose: &str,
        now: DateTime<Utc>,
        require_links: bool,
    ) -> Result<Vec<String>, ConsentStoreError> {
        let all = self.granted_to(&[study_id, sponsor])?;
        let matches = |c: &StoredConsent| {
            let grantee = c.subject["grantee"]["id"].as_str().unwrap_or_default();
            (grantee == study_id || grantee == sponsor)
                && strs(&c.subject, "domains").iter().any(|d| d == "research")
                && strs(&c.subject, "purposes").iter().any(|p| p == purpose)
                && period_covers(&c.subject, now)
        };
        let denied: Vec<&str> = all
            .iter()
            .filter(|c| c.subject["provision"] == "deny" && matches(c))
            .filter_map(|c| c.patient_id.as_deref())
            .collect();
        let mut out: Vec<String> = all
            .iter()
            .filter(|c| c.subject["provision"] == "permit" && matches(c))
            .filter(|c| {
                c.patient_id.as_deref().is_some_and(|pid| {
                    self.speaks_for(pid, &c.patient_did, &c.issuer, require_links)
                })
            })
            .filter_map(|c| c.patient_id.clone())
            .filter(|p| !denied.contains(&p.as_str()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::credentials::{CredentialKind, ProofFormat};
    use serde_json::json;

    fn consent(id: &str, patient_did: &str) -> VerifiedCredential {
        VerifiedCredential {
            id: Some(id.to_string()),
            kind: CredentialKind::PatientConsent,
            format: ProofFormat::Jwt,
            issuer: patient_did.to_string(),
            subject: json!({"id": patient_did, "provision": "permit"}).into(),
            valid_from: None,
            valid_until: None,
            status: None,
            digest: format!("digest-{id}"),
            checks: vec![],
            holder: None,
            disclosed: None,
        }
    }

    #[tokio::test]
    async fn patient_dids_come_from_the_index_and_follow_re_registration() {
        let db = crate::db::temporary().unwrap();
        let store = ConsentStore::open(&db).unwrap();
        for (id, did, patient) in [
            ("urn:c:1", "did:key:a1", Some("p1")),
            ("urn:c:2", "did:key:a2", Some("p1")),
            ("urn:c:3", "did:key:b", Some("p10")),
            ("urn:c:4", "did:key:none", None),
        ] {
            store
                .register(&consent(id, did), patient.map(str::to_string))
                .await
                .unwrap();
        }
        assert_eq!(
            store.dids_for_patient("p1", false).unwrap(),
            ["did:key:a1", "did:key:a2"]
        );
        // "p1" is a prefix of "p10" as a string, never as an index key.
        assert_eq!(store.dids_for_patient("p10", false).unwrap(), ["did:key:b"]);
        assert!(store.dids_for_patient("p", false).unwrap().is_empty());

        // The same consent registered again resolves to another patient: it moves.
        store
            .register(&consent("urn:c:2", "did:key:a2"), Some("p10".into()))
            .await
            .unwrap();
        assert_eq!(store.dids_for_patient("p1", false).unwrap(), ["did:key:a1"]);
        assert_eq!(
            store.dids_for_patient("p10", false).unwrap(),
            ["did:key:a2", "did:key:b"]
        );

        // Withdrawn consents still name the patient: the history is still theirs.
        store.withdraw("urn:c:1").await.unwrap();
        assert_eq!(store.dids_for_patient("p1", false).unwrap(), ["did:key:a1"]);

        // When links are required, a self-issued consent's DID counts only once linked;
        // a linked DID counts without any consent.
        assert!(store.dids_for_patient("p1", true).unwrap().is_empty());
        store.link("p1", "did:key:a1").await.unwrap();
        store.link("p1", "did:key:portal").await.unwrap();
        assert_eq!(
            store.dids_for_patient("p1", true).unwrap(),
            ["did:key:a1", "did:key:portal"]
        );
        assert!(store.is_linked("p1", "did:key:a1") && !store.is_linked("p10", "did:key:a1"));
        assert!(store.unlink("p1", "did:key:portal").await.unwrap());
        assert!(!store.unlink("p1", "did:key:portal").await.unwrap());
        assert_eq!(store.dids_for_patient("p1", true).unwrap(), ["did:key:a1"]);
        // A consent from another issuer vouches for its DID.
        let mut vouched = consent("urn:c:5", "did:key:c");
        vouched.issuer = "did:web:consent-office.example".into();
        store.register(&vouched, Some("p10".into())).await.unwrap();
        assert_eq!(store.dids_for_patient("p10", true).unwrap(), ["did:key:c"]);
    }

    #[tokio::test]
    async fn a_store_without_the_index_is_reindexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        {
            let db = Db::open(&path, crate::db::SCHEMA).unwrap();
            let store = ConsentStore::open(&db).unwrap();
            store
                .register(&consent("urn:c:1", "did:key:a1"), Some("p1".into()))
                .await
                .unwrap();
            // As written before the index existed.
            let index = db.tree(BY_PATIENT);
            for (key, _) in index.entries().unwrap() {
                index.remove(&key).await.unwrap();
            }
            assert!(store.dids_for_patient("p1", false).unwrap().is_empty());
        }
        // The file is closed with its last handle: it reopens at once.
        let db = Db::open(&path, crate::db::SCHEMA).unwrap();
        let store = ConsentStore::open(&db).unwrap();
        assert_eq!(store.dids_for_patient("p1", false).unwrap(), ["did:key:a1"]);
    }

    /// Consents, withdrawals and links are on disk once their calls return: a restart
    /// finds all of them, indexes included.
    #[tokio::test]
    async fn a_restart_keeps_consents_withdrawals_and_links() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::db::open(dir.path()).unwrap();
            let store = ConsentStore::open(&db).unwrap();
            store
                .register(&consent("urn:c:1", "did:key:a1"), Some("p1".into()))
                .await
                .unwrap();
            store
                .register(
                    &research("urn:r:1", "p2", "urn:study:s", "research", "permit"),
                    Some("p2".into()),
                )
                .await
                .unwrap();
            store.withdraw("urn:c:1").await.unwrap();
            store.link("p2", "did:key:p2").await.unwrap();
        }
        let db = crate::db::open(dir.path()).unwrap();
        let store = ConsentStore::open(&db).unwrap();
        assert!(store.get("urn:c:1").unwrap().is_some());
        assert!(store.is_withdrawn("urn:c:1") && !store.is_withdrawn("urn:r:1"));
        assert!(store.is_linked("p2", "did:key:p2"));
        assert_eq!(store.dids_for_patient("p1", false).unwrap(), ["did:key:a1"]);
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            store
                .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, true)
                .unwrap(),
            ["p2"]
        );
    }

    fn research(
        id: &str,
        patient: &str,
        grantee: &str,
        domain: &str,
        provision: &str,
    ) -> VerifiedCredential {
        let mut c = consent(id, &format!("did:key:{patient}"));
        c.subject = std::sync::Arc::new(json!({
            "id": format!("did:key:{patient}"),
            "provision": provision,
            "grantee": {"id": grantee},
            "domains": [domain],
            "purposes": ["HRESCH"],
            "period": {"start": "2026-01-01T00:00:00Z"},
        }));
        c
    }

    #[tokio::test]
    async fn research_cohorts_come_from_the_grantee_index() {
        let db = crate::db::temporary().unwrap();
        let store = ConsentStore::open(&db).unwrap();
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let cases = [
            ("urn:r:1", "p1", "urn:study:s", "research", "permit"),
            ("urn:r:2", "p2", "did:web:sponsor", "research", "permit"),
            ("urn:r:3", "p3", "urn:study:t", "research", "permit"),
            ("urn:r:4", "p4", "urn:study:s", "clinical", "permit"),
            ("urn:r:5", "p5", "urn:study:s", "research", "permit"),
            ("urn:r:6", "p5", "urn:study:s", "research", "deny"),
            ("urn:r:7", "p6", "urn:study:s", "research", "permit"),
            ("urn:r:8", "p7", "urn:study:t", "research", "permit"),
        ];
        for (id, patient, grantee, domain, provision) in cases {
            store
                .register(
                    &research(id, patient, grantee, domain, provision),
                    Some(patient.into()),
                )
                .await
                .unwrap();
        }
        store.withdraw("urn:r:7").await.unwrap();
        // Registered again, now granted to the study: it moves in the index.
        store
            .register(
                &research("urn:r:8", "p7", "urn:study:s", "research", "permit"),
                Some("p7".into()),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, false)
                .unwrap(),
            ["p1", "p2", "p7"]
        );
        assert_eq!(
            store
                .research_cohort("urn:study:t", "did:web:nobody", "HRESCH", now, false)
                .unwrap(),
            ["p3"]
        );
        assert!(store
            .research_cohort("urn:study:s", "did:web:sponsor", "PUBHLTH", now, false)
            .unwrap()
            .is_empty());

        // When links are required, a self-issued permit enrols its patient only once the
        // custodian has linked the DID; a registered deny counts either way.
        assert!(store
            .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, true)
            .unwrap()
            .is_empty());
        for patient in ["p2", "p5"] {
            store
                .link(patient, &format!("did:key:{patient}"))
                .await
                .unwrap();
        }
        assert_eq!(
            store
                .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, true)
                .unwrap(),
            ["p2"]
        );
    }
}
