//! Where the gateway reads the organization's FHIR R4 records: the embedded store
//! ([`EmbeddedStore`], a redb file filled by `fedgate records import`) or the organization's own FHIR
//! server ([`FhirServer`]). Both answer the same questions through [`RecordSource`].
//!
//! A patient's record is the Patient, the resources whose `subject`, `patient` or
//! `beneficiary` (Provenance: `target`) points to it, and the shared resources they refer
//! to (practitioners, organizations, locations...) when their type is asked for. A
//! resource that points to another patient is never part of it.
//!
//! Nothing this module reports (import reports, errors) carries record content or
//! identifier values.

use std::path::Path;

use serde_json::Value;

pub(crate) mod cache;
mod embedded;
mod fhir;
mod import;
mod server;
pub mod smart;

pub use embedded::*;
pub use fhir::*;
pub use import::*;
pub use server::*;

/// Largest resource accepted on import.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;
/// Largest bundle file read by [`import_paths`].
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

const RESOURCES_TREE: &str = "records.resources";
const IDENTIFIERS_TREE: &str = "records.identifiers";
const MEMBERS_TREE: &str = "records.members";
const META_TREE: &str = "records.meta";

/// Types that no patient compartment holds: searched by id, never by `?patient=`.
pub(crate) const SHARED_TYPES: [&str; 9] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Endpoint",
    "Medication",
    "Substance",
    "InsurancePlan",
];

/// Largest record (of stored JSON) copied from the record cache on the request's own
/// thread: some 20 µs of copying (`benches/records.rs`), well within what an async worker
/// may spend between two waits; a larger one is copied on the blocking pool.
const INLINE_COPY_BYTES: usize = 32 * 1024;

/// Upper bound of shared resources pulled into one record by reference.
const MAX_REFERENCED: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record store: {0}")]
    Storage(#[from] storage::StoreError),
    /// The store's path holds an earlier fedgate's store (a sled folder), which this one
    /// does not read.
    #[error("{path} is an earlier fedgate's record store (a folder); move it away and import the bundles again with `fedgate records import`")]
    EarlierStore { path: String },
    #[error("stored resource {0} is corrupt")]
    Corrupt(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("not an importable Bundle: {0}")]
    NotABundle(String),
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("FHIR server URL: {0}")]
    Url(String),
    #[error(transparent)]
    Outbound(#[from] federation::client::ClientError),
    #[error("FHIR server request ({what}) failed: {detail}")]
    Request { what: &'static str, detail: String },
    #[error("FHIR server answered HTTP {status} to the {what}")]
    Status { status: u16, what: &'static str },
    #[error("FHIR server response to the {what} exceeds {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("FHIR server response to the {what} is not valid: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("FHIR server paging: {0}")]
    Paging(String),
    #[error("the identifier matches more than one patient")]
    Ambiguous,
    /// The server's answer contradicts the request (another patient's resources, another
    /// resource than the one read): nothing of it is served.
    #[error("FHIR server answer to the {what} is inconsistent: {detail}")]
    Inconsistent { what: &'static str, detail: String },
    /// The server declares Patient `$everything` but did not answer it usefully.
    #[error("FHIR server refused Patient $everything: {0}")]
    EverythingRefused(String),
    /// One exchange's reads together went past the byte or resource budget.
    #[error("the record exceeds the per-exchange budget of {0}")]
    Budget(String),
    /// The record source did not answer within the fetch deadline.
    #[error("the FHIR server did not answer within {0} s")]
    Timeout(u64),
    #[error("record store task failed: {0}")]
    Task(String),
    /// The gateway could not authorize itself to the FHIR server (SMART Backend Services,
    /// mutual TLS): the custodian's configuration or authorization server, never the
    /// requester's doing.
    #[error("FHIR server authorization: {0}")]
    Auth(smart::SmartError),
}

impl RecordError {
    /// A server's "no" to an optional request (`$everything`): the same question asked
    /// another way may still be answered.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            RecordError::EverythingRefused(_)
                | RecordError::Auth(smart::SmartError::Forbidden { .. })
                | RecordError::Status {
                    status: 400 | 403 | 405 | 422 | 501,
                    ..
                }
        )
    }
}

// ---------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------

/// The gateway's record source.
#[derive(Debug, Clone)]
pub enum RecordSource {
    Embedded(EmbeddedStore),
    Fhir(FhirServer),
}

impl RecordSource {
    /// The embedded store in the file at `path` (created if missing).
    pub fn embedded(path: &Path) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Embedded(EmbeddedStore::open(path)?))
    }

    /// The embedded store where the gateway's `[storage]` keeps it: `data_dir/records`, or,
    /// with PostgreSQL storage, the gateway's schema (so that every replica reads the same
    /// records).
    pub fn embedded_configured(
        storage: &service::db::StorageConfig,
        data_dir: &Path,
    ) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Embedded(EmbeddedStore::open_configured(
            storage, data_dir,
        )?))
    }

    /// The same source, keeping up to `max_bytes` of parsed records for the next request
    /// about the same patient (the embedded store only: a FHIR server's records are its
    /// own, read fresh every time).
    pub fn with_record_cache(self, max_bytes: usize) -> RecordSource {
        match self {
            RecordSource::Embedded(s) => RecordSource::Embedded(s.with_record_cache(max_bytes)),
            fhir => fhir,
        }
    }

    /// The organization's FHIR server at `base` (https; http only to loopback in dev mode).
    pub fn fhir_server(base: &str, dev_mode: bool) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Fhir(FhirServer::new(base, dev_mode)?))
    }

    /// [`RecordSource::fhir_server`], authenticating as `auth` says.
    pub fn fhir_server_with(
        base: &str,
        dev_mode: bool,
        auth: &smart::FhirAuth,
    ) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Fhir(FhirServer::connect(
            base, dev_mode, auth,
        )?))
    }

    /// The id of the Patient holding identifier `system|value`, if any.
    pub async fn find_patient(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>, RecordError> {
        match self {
            // One point read of the identifier index, on this thread like the consent
            // store's reads: cheaper than a hand-off to the blocking pool and back.
            RecordSource::Embedded(s) => s.find_patient(system, value),
            RecordSource::Fhir(f) => f.find_patient(system, value).await,
        }
    }

    /// The embedded store's generation (what an answer made from it is kept under); `None`
    /// for a FHIR server, whose records this gateway cannot tell apart in time.
    pub fn generation(&self) -> Result<Option<u64>, RecordError> {
        match self {
            // One point read, on this thread like the patient's lookup.
            RecordSource::Embedded(s) => s.generation().map(Some),
            RecordSource::Fhir(_) => Ok(None),
        }
    }

    /// The patient's resources of the given types (see the module documentation).
    pub async fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        match self {
            RecordSource::Embedded(s) => {
                // A small record kept parsed is copied on this thread, like the patient's
                // lookup; reading one (parsing it) goes to the blocking pool.
                if let Some(record) = s.kept_record(patient_id, types, INLINE_COPY_BYTES)? {
                    return Ok(record);
                }
                let (s, id, types) = (s.clone(), patient_id.to_string(), types.to_vec());
                blocking(move || s.patient_resources(&id, &types)).await
            }
            RecordSource::Fhir(f) => f.patient_resources(patient_id, types).await,
        }
    }

    /// Ids of every Patient.
    pub async fn patient_ids(&self) -> Result<Vec<String>, RecordError> {
        match self {
            RecordSource::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.patient_ids()).await
            }
            RecordSource::Fhir(f) => f.patient_ids().await,
        }
    }

    /// Resources held by the embedded store; for a FHIR server, the Patients it reports
    /// (FHIR has no standard whole-server count).
    pub async fn count(&self) -> Result<usize, RecordError> {
        match self {
            RecordSource::Embedded(s) => {
                let s = s.clone();
                blocking(move || s.count()).await
            }
            RecordSource::Fhir(f) => f.count().await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RecordError> + Send + 'static,
) -> Result<T, RecordError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RecordError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    #[test]
    fn reference_targets() {
        assert_eq!(reference_target("Patient/abc"), Some(("Patient", "abc")));
        assert_eq!(
            reference_target("https://x/fhir/Patient/abc/_history/2"),
            Some(("Patient", "abc"))
        );
        assert_eq!(reference_target("urn:uuid:abc"), None);
        assert_eq!(reference_target("Patient?identifier=x"), None);
        assert_eq!(reference_target("patient/abc"), None);
        assert_eq!(reference_target("Patient/a_b"), None);
        assert_eq!(reference_target("Patient/abc/_history"), None);
        assert_eq!(reference_target("_history/2"), None);
        assert_eq!(reference_target("Patient/_history/2"), None);
        assert_eq!(
            reference_target("//Patient//abc//_history/2/"),
            Some(("Patient", "abc"))
        );
        assert_eq!(reference_target("abc"), None);
        assert_eq!(reference_target(""), None);
    }

    #[test]
    fn a_field_is_found_by_scan_or_hash_alike() {
        for n in [0usize, 1, 5, 12, 13, 40] {
            let obj: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
            for i in 0..n + 2 {
                let key = format!("k{i}");
                assert_eq!(field(&obj, &key), obj.get(&key), "{n} keys, {key}");
            }
            assert_eq!(field(&obj, ""), None);
        }
        let r = json!({"id": "x", "resourceType": "Condition"});
        assert_eq!(resource_type(&r), Some("Condition"));
        assert_eq!(resource_type(&json!({"resourceType": 7})), None);
        assert_eq!(resource_type(&json!(["Condition"])), None);
    }

    #[test]
    fn compartments() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            compartment_patients(&obs),
            BTreeSet::from(["p1".to_string()])
        );
        let cov = json!({"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p2"}, "payor": [{"reference": "Organization/o"}]});
        assert_eq!(
            compartment_patients(&cov),
            BTreeSet::from(["p2".to_string()])
        );
        let prac = json!({"resourceType": "Practitioner", "id": "x"});
        assert!(compartment_patients(&prac).is_empty());
    }

    #[test]
    fn token_escaping() {
        assert_eq!(escape_token(r"a|b,c$d\e"), r"a\|b\,c\$d\\e");
    }

    #[test]
    fn paths_in_reasons() {
        assert_eq!(
            join_path(&["result".into(), "[2]".into()], "reference"),
            "result[2].reference"
        );
    }
}
