//! Where the gateway reads the organization's FHIR R4 records: the embedded sled store
//! ([`SledStore`], filled by `fedgate records import`) or the organization's own FHIR
//! server ([`FhirServer`]). Both answer the same questions through [`RecordSource`].
//!
//! A patient's record is the Patient, the resources whose `subject`, `patient` or
//! `beneficiary` (Provenance: `target`) points to it, and the shared resources they refer
//! to (practitioners, organizations, locations...) when their type is asked for. A
//! resource that points to another patient is never part of it.
//!
//! Nothing this module reports (import reports, errors) carries record content or
//! identifier values.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Largest resource accepted on import.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;
/// Largest bundle file read by [`import_paths`].
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

const RESOURCES_TREE: &str = "records.resources";
const IDENTIFIERS_TREE: &str = "records.identifiers";
const MEMBERS_TREE: &str = "records.members";

/// Types that no patient compartment holds: searched by id, never by `?patient=`.
const SHARED_TYPES: [&str; 9] = [
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

/// Upper bound of shared resources pulled into one record by reference.
const MAX_REFERENCED: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record store: {0}")]
    Storage(#[from] sled::Error),
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
    #[error("record store task failed: {0}")]
    Task(String),
}

// ---------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------

/// The gateway's record source.
#[derive(Debug, Clone)]
pub enum RecordSource {
    Embedded(SledStore),
    Fhir(FhirServer),
}

impl RecordSource {
    /// The embedded store in `dir` (created if missing).
    pub fn embedded(dir: &Path) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Embedded(SledStore::open(dir)?))
    }

    /// The organization's FHIR server at `base` (https; http only to loopback in dev mode).
    pub fn fhir_server(base: &str, dev_mode: bool) -> Result<RecordSource, RecordError> {
        Ok(RecordSource::Fhir(FhirServer::new(base, dev_mode)?))
    }

    /// The id of the Patient holding identifier `system|value`, if any.
    pub async fn find_patient(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>, RecordError> {
        match self {
            RecordSource::Embedded(s) => {
                let (s, system, value) = (s.clone(), system.to_string(), value.to_string());
                blocking(move || s.find_patient(&system, &value)).await
            }
            RecordSource::Fhir(f) => f.find_patient(system, value).await,
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

// ---------------------------------------------------------------------------------------
// FHIR helpers
// ---------------------------------------------------------------------------------------

/// FHIR resource type names: an ASCII capital, then letters.
pub fn is_type_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphabetic)
}

/// FHIR ids: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// `Type/id` of a literal reference, relative or absolute (with or without `_history`).
pub fn reference_target(r: &str) -> Option<(&str, &str)> {
    if r.starts_with('#') || r.starts_with("urn:") || r.contains('?') {
        return None;
    }
    let path: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
    let n = path.len();
    let (ty, id) = if n >= 4 && path[n - 2] == "_history" {
        (path[n - 4], path[n - 3])
    } else if n >= 2 {
        (path[n - 2], path[n - 1])
    } else {
        return None;
    };
    (is_type_name(ty) && is_fhir_id(id)).then_some((ty, id))
}

/// Patients whose compartment holds `resource`: the Patient targets of its `subject`,
/// `patient` and `beneficiary` (Provenance: `target`).
pub fn compartment_patients(resource: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fields = vec!["subject", "patient", "beneficiary"];
    if resource["resourceType"] == "Provenance" {
        fields.push("target");
    }
    for field in fields {
        let refs: Vec<&Value> = match &resource[field] {
            Value::Array(items) => items.iter().collect(),
            v @ Value::Object(_) => vec![v],
            _ => Vec::new(),
        };
        for r in refs {
            if let Some(("Patient", id)) = r["reference"].as_str().and_then(reference_target) {
                out.insert(id.to_string());
            }
        }
    }
    out
}

/// Every literal `Type/id` reference in `value`.
fn references(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(o) => {
            for (k, v) in o {
                if k == "reference" {
                    if let Some((t, i)) = v.as_str().and_then(reference_target) {
                        out.push((t.to_string(), i.to_string()));
                    }
                } else {
                    references(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn identifier_key(system: &str, value: &str) -> Vec<u8> {
    [system.as_bytes(), &[0], value.as_bytes()].concat()
}

fn member_key(patient: &str, ty: &str, id: &str) -> Vec<u8> {
    [patient.as_bytes(), &[0], ty.as_bytes(), &[0], id.as_bytes()].concat()
}

fn check_types(types: &[String]) -> Result<(), RecordError> {
    match types.iter().find(|t| !is_type_name(t)) {
        Some(t) => Err(RecordError::Invalid {
            what: "resource type",
            detail: format!("{:?}", t.chars().take(64).collect::<String>()),
        }),
        None => Ok(()),
    }
}

fn check_patient_id(id: &str) -> Result<(), RecordError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(RecordError::Invalid {
            what: "patient id",
            detail: "not a FHIR id".into(),
        })
    }
}

/// Adds to `record` the shared resources of `wanted` types its resources refer to, via
/// `fetch`, leaving out any that belongs to another patient's compartment.
fn add_referenced(
    patient_id: &str,
    wanted: &HashSet<&str>,
    record: &mut Vec<Value>,
    mut fetch: impl FnMut(&str, &str) -> Result<Option<Value>, RecordError>,
) -> Result<(), RecordError> {
    let mut seen: HashSet<(String, String)> = record
        .iter()
        .filter_map(|r| {
            Some((
                r["resourceType"].as_str()?.to_string(),
                r["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut next = 0;
    let mut added = 0;
    while next < record.len() {
        let mut refs = Vec::new();
        references(&record[next], &mut refs);
        next += 1;
        for (ty, id) in refs {
            if ty == "Patient"
                || !wanted.contains(ty.as_str())
                || !seen.insert((ty.clone(), id.clone()))
            {
                continue;
            }
            if added >= MAX_REFERENCED {
                return Ok(());
            }
            let Some(resource) = fetch(&ty, &id)? else {
                continue;
            };
            let owners = compartment_patients(&resource);
            if owners.is_empty() || owners.contains(patient_id) {
                record.push(resource);
                added += 1;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Import reports
// ---------------------------------------------------------------------------------------

/// An entry left out of an import, and why. Never the entry's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub file: String,
    /// Index in `Bundle.entry`.
    pub entry: usize,
    pub resource_type: Option<String>,
    pub reason: String,
}

/// A file that could not be imported at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedFile {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Bundles imported (with or without skipped entries).
    pub bundles: usize,
    /// Resources written, per type.
    pub imported: BTreeMap<String, usize>,
    pub skipped: Vec<Skipped>,
    /// Files that could not be read or parsed (only from [`import_paths`]).
    pub failed: Vec<FailedFile>,
}

impl ImportReport {
    pub fn merge(&mut self, other: ImportReport) {
        self.bundles += other.bundles;
        for (t, n) in other.imported {
            *self.imported.entry(t).or_default() += n;
        }
        self.skipped.extend(other.skipped);
        self.failed.extend(other.failed);
    }

    pub fn total_imported(&self) -> usize {
        self.imported.values().sum()
    }
}

// ---------------------------------------------------------------------------------------
// The embedded store
// ---------------------------------------------------------------------------------------

/// The embedded FHIR store. Trees (all owned here): `records.resources` (`Type/id` →
/// JSON), `records.identifiers` (`system 0 value` → Patient ids), `records.members`
/// (`patient 0 Type 0 id`).
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    resources: sled::Tree,
    identifiers: sled::Tree,
    members: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// An entry that passed the structural checks of an import.
struct Candidate {
    entry: usize,
    ty: String,
    id: String,
    resource: Value,
}

impl SledStore {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, RecordError> {
        SledStore::with_db(service::db::open(dir)?)
    }

    /// The store's trees inside an existing database.
    pub fn with_db(db: sled::Db) -> Result<SledStore, RecordError> {
        Ok(SledStore {
            resources: db.open_tree(RESOURCES_TREE)?,
            identifiers: db.open_tree(IDENTIFIERS_TREE)?,
            members: db.open_tree(MEMBERS_TREE)?,
            db,
        })
    }

    /// Imports a transaction, batch or collection Bundle; see [`SledStore::import_bundle_from`].
    pub fn import_bundle(&self, bundle: &Value) -> Result<ImportReport, RecordError> {
        self.import_bundle_from("", bundle)
    }

    /// Imports `bundle` (read from `file`, named in the report). Entries get an id if they
    /// have none (their `urn:uuid:` fullUrl, else a digest of their content, so that a
    /// re-import is idempotent), `urn:uuid:` references become `Type/id`, and malformed
    /// entries are skipped with the reason. Errors are for the bundle as a whole and for
    /// storage failures.
    pub fn import_bundle_from(
        &self,
        file: &str,
        bundle: &Value,
    ) -> Result<ImportReport, RecordError> {
        let kind = bundle_type(bundle)?;
        let entries: &[Value] = match bundle.get("entry") {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(_) => return Err(RecordError::NotABundle("entry is not an array".into())),
        };
        let mut report = ImportReport {
            bundles: 1,
            ..ImportReport::default()
        };
        let mut skip = |entry: usize, ty: Option<&str>, reason: String| {
            report.skipped.push(Skipped {
                file: file.to_string(),
                entry,
                resource_type: ty.map(str::to_string),
                reason,
            });
        };

        // 1. Structure, ids, fullUrls.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut full_urls: HashMap<String, usize> = HashMap::new();
        let mut keys: HashSet<String> = HashSet::new();
        // fullUrls of entries skipped here, so that references to them say so.
        let mut skipped_urls: HashMap<String, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            match check_entry(entry, kind) {
                Err((ty, reason)) => {
                    if let Some(u) = entry.get("fullUrl").and_then(Value::as_str) {
                        skipped_urls.entry(u.to_string()).or_insert(i);
                    }
                    skip(i, ty.as_deref(), reason);
                }
                Ok(c) => {
                    let key = format!("{}/{}", c.ty, c.id);
                    let full_url = entry.get("fullUrl").and_then(Value::as_str);
                    if full_url.is_some_and(|u| full_urls.contains_key(u)) {
                        skip(i, Some(&c.ty), "duplicate fullUrl in the bundle".into());
                        continue;
                    }
                    if !keys.insert(key) {
                        skip(
                            i,
                            Some(&c.ty),
                            "duplicate resource type and id in the bundle".into(),
                        );
                        continue;
                    }
                    if let Some(u) = full_url {
                        full_urls.insert(u.to_string(), candidates.len());
                    }
                    candidates.push(Candidate {
                        entry: i,
                        ty: c.ty,
                        id: c.id,
                        resource: c.resource,
                    });
                }
            }
        }

        // 2. References: an entry pointing to a fullUrl the bundle does not hold, or to a
        //    skipped entry, is skipped in turn (until nothing changes).
        let mut valid = vec![true; candidates.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for ci in 0..candidates.len() {
                if !valid[ci] {
                    continue;
                }
                let c = &candidates[ci];
                let known = Known {
                    full_urls: &full_urls,
                    skipped_urls: &skipped_urls,
                    valid: &valid,
                    candidates: &candidates,
                };
                if let Some(reason) = find_unresolved(&c.resource, &mut Vec::new(), &known) {
                    valid[ci] = false;
                    changed = true;
                    skip(c.entry, Some(&c.ty), reason);
                }
            }
        }
        report.skipped.sort_by_key(|s| s.entry);

        // 3. Rewrite and store.
        let targets: HashMap<&str, String> = full_urls
            .iter()
            .map(|(u, &ci)| {
                (
                    u.as_str(),
                    format!("{}/{}", candidates[ci].ty, candidates[ci].id),
                )
            })
            .collect();
        for (ci, c) in candidates.iter().enumerate() {
            if !valid[ci] {
                continue;
            }
            let mut resource = c.resource.clone();
            rewrite_references(&mut resource, &targets);
            resource["id"] = Value::String(c.id.clone());
            self.put(&c.ty, &c.id, &resource)?;
            *report.imported.entry(c.ty.clone()).or_default() += 1;
        }
        self.db.flush()?;
        Ok(report)
    }

    /// Reads and imports one bundle file.
    pub fn import_file(&self, path: &Path) -> Result<ImportReport, RecordError> {
        let name = path.display().to_string();
        let bundle = read_bundle(path)?;
        self.import_bundle_from(&name, &bundle)
    }

    /// Stores one resource and its index entries, replacing those of a previous version.
    fn put(&self, ty: &str, id: &str, resource: &Value) -> Result<(), RecordError> {
        let key = format!("{ty}/{id}");
        let body = serde_json::to_vec(resource).map_err(|_| RecordError::Corrupt(key.clone()))?;
        if let Some(old) = self.resources.insert(key.as_bytes(), body)? {
            if let Ok(old) = serde_json::from_slice::<Value>(&old) {
                self.unindex(ty, id, &old)?;
            }
        }
        self.index(ty, id, resource)
    }

    fn index(&self, ty: &str, id: &str, resource: &Value) -> Result<(), RecordError> {
        if ty == "Patient" {
            for (system, value) in patient_identifiers(resource) {
                let key = identifier_key(system, value);
                let mut ids = self.identifier_ids(&key)?;
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                    let body = serde_json::to_vec(&ids)
                        .map_err(|_| RecordError::Corrupt("identifier index".into()))?;
                    self.identifiers.insert(key, body)?;
                }
            }
        } else {
            for patient in compartment_patients(resource) {
                self.members.insert(member_key(&patient, ty, id), &[])?;
            }
        }
        Ok(())
    }

    fn unindex(&self, ty: &str, id: &str, old: &Value) -> Result<(), RecordError> {
        if ty == "Patient" {
            for (system, value) in patient_identifiers(old) {
                let key = identifier_key(system, value);
                let mut ids = self.identifier_ids(&key)?;
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    self.identifiers.remove(key)?;
                } else {
                    let body = serde_json::to_vec(&ids)
                        .map_err(|_| RecordError::Corrupt("identifier index".into()))?;
                    self.identifiers.insert(key, body)?;
                }
            }
        } else {
            for patient in compartment_patients(old) {
                self.members.remove(member_key(&patient, ty, id))?;
            }
        }
        Ok(())
    }

    fn identifier_ids(&self, key: &[u8]) -> Result<Vec<String>, RecordError> {
        match self.identifiers.get(key)? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|_| RecordError::Corrupt("identifier index".into())),
        }
    }

    /// One stored resource.
    pub fn get(&self, ty: &str, id: &str) -> Result<Option<Value>, RecordError> {
        if !is_type_name(ty) || !is_fhir_id(id) {
            return Ok(None);
        }
        let key = format!("{ty}/{id}");
        match self.resources.get(key.as_bytes())? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|_| RecordError::Corrupt(key)),
        }
    }

    pub fn find_patient(&self, system: &str, value: &str) -> Result<Option<String>, RecordError> {
        let ids = self.identifier_ids(&identifier_key(system, value))?;
        match ids.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(RecordError::Ambiguous),
        }
    }

    pub fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        check_patient_id(patient_id)?;
        check_types(types)?;
        let wanted: HashSet<&str> = types.iter().map(String::as_str).collect();
        let mut record = Vec::new();
        if wanted.contains("Patient") {
            record.extend(self.get("Patient", patient_id)?);
        }
        // One range scan per type asked for (`patient \0 type \0`), in type order: a
        // request for two classes must not walk a record of hundreds of resources.
        let ordered: BTreeSet<&str> = wanted.iter().copied().collect();
        for ty in ordered {
            let prefix = member_key(patient_id, ty, "");
            for item in self.members.scan_prefix(&prefix) {
                let (key, _) = item?;
                let Ok(id) = std::str::from_utf8(&key[prefix.len()..]) else {
                    continue;
                };
                record.extend(self.get(ty, id)?);
            }
        }
        add_referenced(patient_id, &wanted, &mut record, |t, i| self.get(t, i))?;
        Ok(record)
    }

    pub fn patient_ids(&self) -> Result<Vec<String>, RecordError> {
        let mut ids = Vec::new();
        for item in self.resources.scan_prefix(b"Patient/") {
            let (key, _) = item?;
            if let Ok(k) = std::str::from_utf8(&key[b"Patient/".len()..]) {
                ids.push(k.to_string());
            }
        }
        Ok(ids)
    }

    pub fn count(&self) -> Result<usize, RecordError> {
        Ok(self.resources.len())
    }

    /// Resources held, per type.
    pub fn count_by_type(&self) -> Result<BTreeMap<String, usize>, RecordError> {
        let mut out = BTreeMap::new();
        for item in self.resources.iter() {
            let (key, _) = item?;
            let key = String::from_utf8_lossy(&key);
            if let Some((ty, _)) = key.split_once('/') {
                *out.entry(ty.to_string()).or_default() += 1;
            }
        }
        Ok(out)
    }
}

/// `(system, value)` of each Patient.identifier that has both.
fn patient_identifiers(patient: &Value) -> Vec<(&str, &str)> {
    patient["identifier"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| Some((i["system"].as_str()?, i["value"].as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn bundle_type(bundle: &Value) -> Result<&str, RecordError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(RecordError::NotABundle("resourceType is not Bundle".into()));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some(t @ ("transaction" | "batch" | "collection" | "searchset")) => Ok(t),
        Some(other) => Err(RecordError::NotABundle(format!(
            "bundle type {:?} is not transaction, batch or collection",
            other.chars().take(32).collect::<String>()
        ))),
        None => Err(RecordError::NotABundle("bundle type is missing".into())),
    }
}

struct Checked {
    ty: String,
    id: String,
    resource: Value,
}

/// The structural checks of one entry; on failure, the type (if known) and the reason.
fn check_entry(entry: &Value, kind: &str) -> Result<Checked, (Option<String>, String)> {
    let Some(resource) = entry.get("resource") else {
        return Err((None, "entry has no resource".into()));
    };
    if !resource.is_object() {
        return Err((None, "resource is not a JSON object".into()));
    }
    let ty = match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if is_type_name(t) => t.to_string(),
        Some(_) => return Err((None, "resourceType is not a FHIR type name".into())),
        None => return Err((None, "resource has no resourceType".into())),
    };
    let fail = |reason: &str| Err((Some(ty.clone()), reason.to_string()));
    if ty == "Bundle" {
        return fail("nested Bundle resources are not imported");
    }
    let size = serde_json::to_vec(resource)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_RESOURCE_BYTES {
        return fail("resource larger than 1 MiB");
    }
    if kind == "transaction" || kind == "batch" {
        let method = entry["request"]["method"].as_str().unwrap_or("POST");
        if !matches!(method, "POST" | "PUT") {
            return fail("only POST and PUT entries carry a resource to store");
        }
    }
    let id = match resource.get("id") {
        Some(Value::String(id)) if is_fhir_id(id) => id.clone(),
        Some(_) => return fail("id has illegal characters or length"),
        None => assign_id(entry, &ty, resource),
    };
    Ok(Checked {
        ty,
        id,
        resource: resource.clone(),
    })
}

/// An id for a resource that has none: its `urn:uuid:` fullUrl, the id of a `PUT Type/id`
/// or of an absolute fullUrl, else a digest of its content (stable across re-imports).
fn assign_id(entry: &Value, ty: &str, resource: &Value) -> String {
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(uuid) = full_url.strip_prefix("urn:uuid:") {
        if is_fhir_id(uuid) {
            return uuid.to_ascii_lowercase();
        }
    }
    for candidate in [
        full_url,
        entry["request"]["url"].as_str().unwrap_or_default(),
    ] {
        if let Some((t, id)) = reference_target(candidate) {
            if t == ty {
                return id.to_string();
            }
        }
    }
    let digest = Sha256::digest(serde_json::to_vec(resource).unwrap_or_default());
    hex::encode(&digest[..16])
}

/// What the reference check of an import knows about the bundle.
struct Known<'a> {
    full_urls: &'a HashMap<String, usize>,
    skipped_urls: &'a HashMap<String, usize>,
    valid: &'a [bool],
    candidates: &'a [Candidate],
}

/// The reason a resource cannot be stored because of one of its references, if any.
fn find_unresolved(v: &Value, path: &mut Vec<String>, known: &Known<'_>) -> Option<String> {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "reference" {
                    let at = || join_path(path, k);
                    let Some(r) = child.as_str() else {
                        return Some(format!("reference at {} is not a string", at()));
                    };
                    let skipped = match known.full_urls.get(r) {
                        Some(&ci) if !known.valid[ci] => Some(known.candidates[ci].entry),
                        Some(_) => None,
                        None => known.skipped_urls.get(r).copied(),
                    };
                    if let Some(entry) = skipped {
                        return Some(format!(
                            "reference at {} points to skipped entry {entry}",
                            at()
                        ));
                    }
                    if r.starts_with("urn:") && !known.full_urls.contains_key(r) {
                        return Some(format!("reference at {} has no target in the bundle", at()));
                    }
                } else {
                    path.push(k.clone());
                    let found = find_unresolved(child, path, known);
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
            }
            None
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                let found = find_unresolved(child, path, known);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

fn join_path(path: &[String], last: &str) -> String {
    let mut out = String::new();
    for p in path.iter().map(String::as_str).chain([last]) {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

fn rewrite_references(v: &mut Value, targets: &HashMap<&str, String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference" {
                    if let Some(new) = child.as_str().and_then(|r| targets.get(r)) {
                        *child = Value::String(new.clone());
                    }
                } else {
                    rewrite_references(child, targets);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| rewrite_references(c, targets)),
        _ => {}
    }
}

fn read_bundle(path: &Path) -> Result<Value, RecordError> {
    let file = path.display().to_string();
    let fail = |reason: String| RecordError::File {
        file: file.clone(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    // serde_json's error names only a line and column, never content.
    serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))
}

/// Files to import from `paths`: files as given, directories as their `*.json` files
/// (sorted, not recursive).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RecordError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let read = std::fs::read_dir(p).map_err(|e| RecordError::File {
                file: p.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut files: Vec<PathBuf> = read
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// How an import goes, for a caller that shows it (the CLI draws a progress bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportProgress<'a> {
    /// Before the first file: how many files and bytes there are.
    Started { files: usize, bytes: u64 },
    /// File `index` (from 0) is being read.
    File { index: usize, name: &'a str },
    /// A file is done (imported or failed): its size in bytes.
    Done { bytes: u64 },
    /// The import stopped on a storage failure.
    Abandoned,
}

/// `fedgate records import`: every bundle of `paths` into `store`. A file that cannot be
/// read or parsed is listed in `failed` and the others go on; only a storage failure stops
/// the import.
pub fn import_paths(store: &SledStore, paths: &[PathBuf]) -> Result<ImportReport, RecordError> {
    import_paths_with(store, paths, |_| {})
}

/// [`import_paths`], telling `progress` how it goes.
pub fn import_paths_with(
    store: &SledStore,
    paths: &[PathBuf],
    mut progress: impl FnMut(ImportProgress<'_>),
) -> Result<ImportReport, RecordError> {
    let files = expand_paths(paths)?;
    let size = |f: &PathBuf| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    progress(ImportProgress::Started {
        files: files.len(),
        bytes: files.iter().map(size).sum(),
    });
    let mut report = ImportReport::default();
    for (index, file) in files.iter().enumerate() {
        let name = file.display().to_string();
        progress(ImportProgress::File { index, name: &name });
        let result = read_bundle(file).and_then(|bundle| store.import_bundle_from(&name, &bundle));
        match result {
            Ok(r) => report.merge(r),
            Err(RecordError::Storage(e)) => {
                progress(ImportProgress::Abandoned);
                return Err(RecordError::Storage(e));
            }
            Err(e) => report.failed.push(FailedFile {
                file: name,
                reason: match e {
                    RecordError::File { reason, .. } => reason,
                    other => other.to_string(),
                },
            }),
        }
        progress(ImportProgress::Done { bytes: size(file) });
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// The organization's FHIR server
// ---------------------------------------------------------------------------------------

/// A FHIR R4 server reached over HTTP(S) with the fedgate client rules (no redirects,
/// timeouts, https only but for loopback in dev mode). `next` links are followed only to
/// the server's own origin and up to a page cap; responses are size-limited.
#[derive(Debug, Clone)]
pub struct FhirServer {
    base: reqwest::Url,
    client: reqwest::Client,
    dev_mode: bool,
    max_pages: usize,
    max_response_bytes: usize,
}

impl FhirServer {
    pub fn new(base: &str, dev_mode: bool) -> Result<FhirServer, RecordError> {
        let mut base = reqwest::Url::parse(base).map_err(|e| RecordError::Url(e.to_string()))?;
        federation::client::loopback_only_http(&base, dev_mode)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(RecordError::Url(
                "the base URL has a query or fragment".into(),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(FhirServer {
            base,
            client: federation::client::http_client(),
            dev_mode,
            max_pages: 100,
            max_response_bytes: 32 * 1024 * 1024,
        })
    }

    /// Changes the page cap and the per-response size limit.
    pub fn with_limits(mut self, max_pages: usize, max_response_bytes: usize) -> FhirServer {
        self.max_pages = max_pages.max(1);
        self.max_response_bytes = max_response_bytes;
        self
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, RecordError> {
        self.base
            .join(path)
            .map_err(|e| RecordError::Url(e.to_string()))
    }

    /// GET `url` as FHIR JSON; `Ok(None)` on 404 and 410.
    async fn get(
        &self,
        url: &reqwest::Url,
        what: &'static str,
    ) -> Result<Option<Value>, RecordError> {
        federation::client::loopback_only_http(url, self.dev_mode)?;
        // reqwest errors name the URL, whose query may hold an identifier: drop it.
        let req_err = |e: reqwest::Error| RecordError::Request {
            what,
            detail: e.without_url().to_string(),
        };
        let mut resp = self
            .client
            .get(url.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/fhir+json, application/json",
            )
            .send()
            .await
            .map_err(req_err)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(RecordError::Status {
                status: status.as_u16(),
                what,
            });
        }
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(RecordError::TooLarge { what, limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(req_err)? {
            if body.len() + chunk.len() > limit {
                return Err(RecordError::TooLarge { what, limit });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| RecordError::Malformed {
                what,
                detail: e.to_string(),
            })
    }

    /// Every resource of a search, following `next` links on the same origin.
    async fn search(
        &self,
        first: reqwest::Url,
        what: &'static str,
    ) -> Result<Vec<Value>, RecordError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..self.max_pages {
            let Some(bundle) = self.get(&url, what).await? else {
                return Ok(out);
            };
            if bundle["resourceType"] != "Bundle" {
                return Err(RecordError::Malformed {
                    what,
                    detail: "not a Bundle".into(),
                });
            }
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                if entry["search"]["mode"]
                    .as_str()
                    .is_some_and(|m| m == "outcome")
                {
                    continue;
                }
                if entry["resource"].is_object() {
                    out.push(entry["resource"].clone());
                }
            }
            let next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str());
            let Some(next) = next else {
                return Ok(out);
            };
            let next = url
                .join(next)
                .map_err(|_| RecordError::Paging("the next link is not a URL".into()))?;
            if next.origin() != self.base.origin() {
                return Err(RecordError::Paging(
                    "the next link leads to another origin; refusing to follow it".into(),
                ));
            }
            url = next;
        }
        Err(RecordError::Paging(format!(
            "more than {} pages; refusing an incomplete answer",
            self.max_pages
        )))
    }

    pub async fn find_patient(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut().append_pair(
            "identifier",
            &format!("{}|{}", escape_token(system), escape_token(value)),
        );
        let found = self.search(url, "patient search").await?;
        let ids: BTreeSet<&str> = found
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            // The server's matching is not trusted: the identifier must be there.
            .filter(|r| patient_identifiers(r).contains(&(system, value)))
            .filter_map(|r| r["id"].as_str())
            .filter(|id| is_fhir_id(id))
            .collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.into_iter().next().map(str::to_string)),
            _ => Err(RecordError::Ambiguous),
        }
    }

    async fn read(&self, ty: &str, id: &str) -> Result<Option<Value>, RecordError> {
        if !is_type_name(ty) || !is_fhir_id(id) {
            return Ok(None);
        }
        let url = self.url(&format!("{ty}/{id}"))?;
        let resource = self.get(&url, "resource read").await?;
        Ok(resource.filter(|r| r["resourceType"] == ty && r["id"] == id))
    }

    pub async fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        check_patient_id(patient_id)?;
        check_types(types)?;
        let wanted: HashSet<&str> = types.iter().map(String::as_str).collect();
        let mut record = Vec::new();
        let mut seen = HashSet::new();
        if wanted.contains("Patient") {
            record.extend(self.read("Patient", patient_id).await?);
        }
        let mut searched = BTreeSet::new();
        for ty in types {
            if ty == "Patient" || SHARED_TYPES.contains(&ty.as_str()) || !searched.insert(ty) {
                continue;
            }
            let mut url = self.url(ty)?;
            url.query_pairs_mut().append_pair("patient", patient_id);
            for r in self.search(url, "compartment search").await? {
                // Only what really is in this patient's compartment, once.
                let in_compartment = r["resourceType"] == ty.as_str()
                    && compartment_patients(&r).contains(patient_id)
                    && r["id"]
                        .as_str()
                        .is_some_and(|id| seen.insert(format!("{ty}/{id}")));
                if in_compartment {
                    record.push(r);
                }
            }
        }
        // Shared resources by reference, read one by one (as `add_referenced` does).
        let mut seen_refs: HashSet<(String, String)> = record
            .iter()
            .filter_map(|r| {
                Some((
                    r["resourceType"].as_str()?.to_string(),
                    r["id"].as_str()?.to_string(),
                ))
            })
            .collect();
        let mut next = 0;
        let mut added = 0;
        while next < record.len() && added < MAX_REFERENCED {
            let mut refs = Vec::new();
            references(&record[next], &mut refs);
            next += 1;
            for (ty, id) in refs {
                if ty == "Patient"
                    || !wanted.contains(ty.as_str())
                    || !seen_refs.insert((ty.clone(), id.clone()))
                {
                    continue;
                }
                let Some(resource) = self.read(&ty, &id).await? else {
                    continue;
                };
                let owners = compartment_patients(&resource);
                if owners.is_empty() || owners.contains(patient_id) {
                    record.push(resource);
                    added += 1;
                }
            }
        }
        Ok(record)
    }

    pub async fn patient_ids(&self) -> Result<Vec<String>, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut()
            .append_pair("_elements", "id")
            .append_pair("_count", "500");
        let found = self.search(url, "patient list").await?;
        Ok(found
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect())
    }

    pub async fn count(&self) -> Result<usize, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut().append_pair("_summary", "count");
        let bundle = self
            .get(&url, "patient count")
            .await?
            .unwrap_or(Value::Null);
        bundle["total"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(RecordError::Malformed {
                what: "patient count",
                detail: "no total".into(),
            })
    }
}

/// FHIR token search escaping of `|`, `,`, `$` and `\`.
fn escape_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
