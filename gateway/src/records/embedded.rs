//! The embedded store: FHIR resources in a redb file of their own, filled by
//! `fedgate records import` (the gateway's `data_dir/records`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use storage::{Db, Schema, Snapshot, Tree, WriteTx};

use super::cache::RecordCache;
use super::*;

/// The layout of the store's file.
pub const SCHEMA: Schema = Schema {
    name: "records",
    version: 1,
};

/// The embedded FHIR store. Trees (all owned here): `records.resources` (`Type/id` →
/// JSON), `records.identifiers` (`system 0 value` → Patient ids), `records.members`
/// (`patient 0 Type 0 id`), `records.meta` (the store's generation, bumped by every
/// import, which tells a parsed record kept in memory from a stale one).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Db,
    resources: Tree,
    identifiers: Tree,
    members: Tree,
    meta: Tree,
    cache: Arc<RecordCache>,
}

/// The key of the store's generation in `records.meta`.
const GENERATION: &[u8] = b"generation";

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// An entry that passed the structural checks of an import.
struct Candidate {
    entry: usize,
    ty: String,
    id: String,
    resource: Value,
}

/// Calls `f` with the key suffix after `prefix` of each entry of `tree` under it.
fn scan_suffixes(
    snap: &Snapshot,
    tree: &Tree,
    prefix: &[u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), RecordError> {
    snap.scan_prefix(tree, prefix, |k, _| {
        f(k.get(prefix.len()..).unwrap_or_default());
        ControlFlow::Continue(())
    })?;
    Ok(())
}

impl EmbeddedStore {
    /// Opens (or creates) the store's file at `path`. An earlier fedgate's store there (a
    /// sled folder) is refused, naming it.
    pub fn open(path: &Path) -> Result<EmbeddedStore, RecordError> {
        if path.is_dir() {
            return Err(RecordError::EarlierStore {
                path: path.display().to_string(),
            });
        }
        Ok(EmbeddedStore::with_db(service::db::open_with_cache(
            path,
            SCHEMA,
            service::db::GATEWAY_CACHE_BYTES,
        )?))
    }

    /// Opens the store where `config` keeps it (see [`super::RecordSource::embedded_configured`]).
    pub fn open_configured(
        storage: &service::db::StorageConfig,
        data_dir: &Path,
    ) -> Result<EmbeddedStore, RecordError> {
        match storage.postgres(crate::db::NAME, "fedgate gateway records")? {
            Some(options) => Ok(EmbeddedStore::with_db(Db::open_postgres(&options, SCHEMA)?)),
            None => EmbeddedStore::open(&data_dir.join("records")),
        }
    }

    /// The store's trees inside an existing database.
    pub fn with_db(db: Db) -> EmbeddedStore {
        EmbeddedStore {
            resources: db.tree(RESOURCES_TREE),
            identifiers: db.tree(IDENTIFIERS_TREE),
            members: db.tree(MEMBERS_TREE),
            meta: db.tree(META_TREE),
            db,
            cache: Arc::new(RecordCache::new(0)),
        }
    }

    /// The same store, keeping up to `max_bytes` (of stored JSON) of the records it reads
    /// parsed for the next request about the same patient and types (see
    /// [`super::cache`]); 0 keeps none.
    pub fn with_record_cache(mut self, max_bytes: usize) -> EmbeddedStore {
        self.cache = Arc::new(RecordCache::new(max_bytes));
        self
    }

    /// The store's generation now: every import changes it (in the import's own write).
    pub fn generation(&self) -> Result<u64, RecordError> {
        self.generation_in(&self.db.read()?)
    }

    /// The store's generation as of `snap`: 0 before the first import.
    fn generation_in(&self, snap: &Snapshot) -> Result<u64, RecordError> {
        decode_generation(snap.get(&self.meta, GENERATION)?)
    }

    /// Imports a transaction, batch or collection Bundle; see [`EmbeddedStore::import_bundle_from`].
    pub fn import_bundle(&self, bundle: &Value) -> Result<ImportReport, RecordError> {
        self.import_bundle_from("", bundle)
    }

    /// Imports `bundle` (read from `file`, named in the report). Entries get an id if they
    /// have none (their `urn:uuid:` fullUrl, else a digest of their content, so that a
    /// re-import is idempotent), `urn:uuid:` references become `Type/id`, and malformed
    /// entries are skipped with the reason. Errors are for the bundle as a whole and for
    /// storage failures. The bundle's resources are stored in one write: all of them, on
    /// disk, or none.
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

        // 3. Rewrite and store, in one write.
        let targets: HashMap<&str, String> = full_urls
            .iter()
            .map(|(u, &ci)| {
                (
                    u.as_str(),
                    format!("{}/{}", candidates[ci].ty, candidates[ci].id),
                )
            })
            .collect();
        let mut stored = Vec::new();
        for (ci, c) in candidates.into_iter().enumerate() {
            if !valid[ci] {
                continue;
            }
            let mut resource = c.resource;
            rewrite_references(&mut resource, &targets);
            resource["id"] = Value::String(c.id.clone());
            let body = serde_json::to_vec(&resource)
                .map_err(|_| RecordError::Corrupt(format!("{}/{}", c.ty, c.id)))?;
            *report.imported.entry(c.ty.clone()).or_default() += 1;
            stored.push((c.ty, c.id, resource, body));
        }
        let store = self.clone();
        self.db.write_blocking(move |tx| {
            for (ty, id, resource, body) in &stored {
                store.put(tx, ty, id, resource, body)?;
            }
            // In the same write: no reader can see these resources with the generation
            // before them, so no record read before this import is used after it.
            let generation = decode_generation(tx.get(&store.meta, GENERATION)?)?;
            tx.insert(
                &store.meta,
                GENERATION,
                &generation.wrapping_add(1).to_be_bytes(),
            )?;
            Ok::<(), RecordError>(())
        })?;
        Ok(report)
    }

    /// Reads and imports one bundle file.
    pub fn import_file(&self, path: &Path) -> Result<ImportReport, RecordError> {
        let name = path.display().to_string();
        let bundle = read_bundle(path)?;
        self.import_bundle_from(&name, &bundle)
    }

    /// Stores one resource and its index entries, replacing those of a previous version.
    fn put(
        &self,
        tx: &mut WriteTx<'_>,
        ty: &str,
        id: &str,
        resource: &Value,
        body: &[u8],
    ) -> Result<(), RecordError> {
        let key = format!("{ty}/{id}");
        if let Some(old) = tx.insert(&self.resources, key.as_bytes(), body)? {
            if let Ok(old) = serde_json::from_slice::<Value>(&old) {
                self.unindex(tx, ty, id, &old)?;
            }
        }
        self.index(tx, ty, id, resource)
    }

    fn index(
        &self,
        tx: &mut WriteTx<'_>,
        ty: &str,
        id: &str,
        resource: &Value,
    ) -> Result<(), RecordError> {
        if ty == "Patient" {
            for (system, value) in patient_identifiers(resource) {
                let key = identifier_key(system, value);
                let mut ids = decode_ids(tx.get(&self.identifiers, &key)?)?;
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                    let body = serde_json::to_vec(&ids)
                        .map_err(|_| RecordError::Corrupt("identifier index".into()))?;
                    tx.insert(&self.identifiers, &key, &body)?;
                }
            }
        } else {
            for patient in compartment_patients(resource) {
                tx.insert(&self.members, &member_key(&patient, ty, id), &[])?;
            }
        }
        Ok(())
    }

    fn unindex(
        &self,
        tx: &mut WriteTx<'_>,
        ty: &str,
        id: &str,
        old: &Value,
    ) -> Result<(), RecordError> {
        if ty == "Patient" {
            for (system, value) in patient_identifiers(old) {
                let key = identifier_key(system, value);
                let mut ids = decode_ids(tx.get(&self.identifiers, &key)?)?;
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    tx.remove(&self.identifiers, &key)?;
                } else {
                    let body = serde_json::to_vec(&ids)
                        .map_err(|_| RecordError::Corrupt("identifier index".into()))?;
                    tx.insert(&self.identifiers, &key, &body)?;
                }
            }
        } else {
            for patient in compartment_patients(old) {
                tx.remove(&self.members, &member_key(&patient, ty, id))?;
            }
        }
        Ok(())
    }

    /// One stored resource.
    pub fn get(&self, ty: &str, id: &str) -> Result<Option<Value>, RecordError> {
        self.get_in(&self.db.read()?, ty, id)
    }

    /// One resource as of `snap`.
    fn get_in(&self, snap: &Snapshot, ty: &str, id: &str) -> Result<Option<Value>, RecordError> {
        self.get_in_counting(snap, ty, id, &std::cell::Cell::new(0))
    }

    /// [`EmbeddedStore::get_in`], adding the stored JSON's length to `bytes`.
    fn get_in_counting(
        &self,
        snap: &Snapshot,
        ty: &str,
        id: &str,
        bytes: &std::cell::Cell<usize>,
    ) -> Result<Option<Value>, RecordError> {
        if !is_type_name(ty) || !is_fhir_id(id) {
            return Ok(None);
        }
        let key = format!("{ty}/{id}");
        match snap.get(&self.resources, key.as_bytes())? {
            None => Ok(None),
            Some(body) => {
                bytes.set(bytes.get().saturating_add(body.len()));
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|_| RecordError::Corrupt(key))
            }
        }
    }

    pub fn find_patient(&self, system: &str, value: &str) -> Result<Option<String>, RecordError> {
        let ids = decode_ids(self.identifiers.get(&identifier_key(system, value))?)?;
        match ids.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(RecordError::Ambiguous),
        }
    }

    /// The patient's record, read from one snapshot of the store.
    pub fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        check_patient_id(patient_id)?;
        check_types(types)?;
        let snap = self.db.read()?;
        let wanted: HashSet<&str> = types.iter().map(String::as_str).collect();
        let ordered: BTreeSet<&str> = wanted.iter().copied().collect();
        // The generation is read in the snapshot the record is read from (even right after
        // `kept_record` read it): a record is kept under the generation it was read at.
        let cached = if self.cache.is_enabled() {
            let key = RecordCache::key(patient_id, ordered.iter().copied());
            let generation = self.generation_in(&snap)?;
            if let Some((record, _)) = self.cache.get(&key, generation) {
                metrics::counter!("fedgate_records_cache_total", "result" => "hit").increment(1);
                return Ok(record.to_vec());
            }
            metrics::counter!("fedgate_records_cache_total", "result" => "miss").increment(1);
            Some((key, generation))
        } else {
            None
        };
        let bytes = std::cell::Cell::new(0usize);
        let read = |ty: &str, id: &str| self.get_in_counting(&snap, ty, id, &bytes);
        let mut record = Vec::new();
        if wanted.contains("Patient") {
            record.extend(read("Patient", patient_id)?);
        }
        // One range scan per type asked for (`patient \0 type \0`), in type order: a
        // request for two classes must not walk a record of hundreds of resources.
        for ty in ordered {
            let prefix = member_key(patient_id, ty, "");
            let mut ids = Vec::new();
            scan_suffixes(&snap, &self.members, &prefix, |suffix| {
                if let Ok(id) = std::str::from_utf8(suffix) {
                    ids.push(id.to_string());
                }
            })?;
            for id in ids {
                record.extend(read(ty, &id)?);
            }
        }
        add_referenced(patient_id, &wanted, &mut record, read)?;
        if let Some((key, generation)) = cached {
            // The copy kept is never changed: the caller changes its own.
            self.cache
                .insert(key, generation, bytes.get(), Arc::from(record.clone()));
        }
        Ok(record)
    }

    /// The patient's record if it is kept parsed, current, and at most `max_bytes` (of
    /// stored JSON), copied; `None` otherwise (read it with
    /// [`EmbeddedStore::patient_resources`]). A copy this small is cheaper than a hand-off
    /// to another thread and back, so the exchange makes it where it runs.
    pub fn kept_record(
        &self,
        patient_id: &str,
        types: &[String],
        max_bytes: usize,
    ) -> Result<Option<Vec<Value>>, RecordError> {
        if !self.cache.is_enabled() {
            return Ok(None);
        }
        check_patient_id(patient_id)?;
        check_types(types)?;
        let ordered: BTreeSet<&str> = types.iter().map(String::as_str).collect();
        let key = RecordCache::key(patient_id, ordered.iter().copied());
        let generation = self.generation_in(&self.db.read()?)?;
        match self.cache.get(&key, generation) {
            Some((record, bytes)) if bytes <= max_bytes => {
                metrics::counter!("fedgate_records_cache_total", "result" => "hit").increment(1);
                Ok(Some(record.to_vec()))
            }
            _ => Ok(None),
        }
    }

    pub fn patient_ids(&self) -> Result<Vec<String>, RecordError> {
        let mut ids = Vec::new();
        scan_suffixes(&self.db.read()?, &self.resources, b"Patient/", |suffix| {
            if let Ok(k) = std::str::from_utf8(suffix) {
                ids.push(k.to_string());
            }
        })?;
        Ok(ids)
    }

    pub fn count(&self) -> Result<usize, RecordError> {
        Ok(usize::try_from(self.resources.len()?).unwrap_or(usize::MAX))
    }

    /// Resources held, per type.
    pub fn count_by_type(&self) -> Result<BTreeMap<String, usize>, RecordError> {
        let mut out = BTreeMap::new();
        self.resources.scan(.., |key, _| {
            let key = String::from_utf8_lossy(key);
            if let Some((ty, _)) = key.split_once('/') {
                *out.entry(ty.to_string()).or_default() += 1;
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}

/// The store's generation as stored (0 when none was: before the first import).
fn decode_generation(value: Option<Vec<u8>>) -> Result<u64, RecordError> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| RecordError::Corrupt("store generation".into())),
    }
}

/// The Patient ids of an identifier index entry.
fn decode_ids(value: Option<Vec<u8>>) -> Result<Vec<String>, RecordError> {
    match value {
        None => Ok(Vec::new()),
        Some(v) => {
            serde_json::from_slice(&v).map_err(|_| RecordError::Corrupt("identifier index".into()))
        }
    }
}

/// `(system, value)` of each Patient.identifier that has both.
pub(crate) fn patient_identifiers(patient: &Value) -> Vec<(&str, &str)> {
    patient["identifier"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| Some((i["system"].as_str()?, i["value"].as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn bundle_type(bundle: &Value) -> Result<&str, RecordError> {
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
pub(crate) fn assign_id(entry: &Value, ty: &str, resource: &Value) -> String {
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

pub(crate) fn join_path(path: &[String], last: &str) -> String {
    let mut out = String::new();
    for p in path.iter().map(String::as_str).chain([last]) {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

pub(crate) fn rewrite_references(v: &mut Value, targets: &HashMap<&str, String>) {
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

pub(crate) fn read_bundle(path: &Path) -> Result<Value, RecordError> {
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
pub fn import_paths(store: &EmbeddedStore, paths: &[PathBuf]) -> Result<ImportReport, RecordError> {
    import_paths_with(store, paths, |_| {})
}

/// [`import_paths`], telling `progress` how it goes.
pub fn import_paths_with(
    store: &EmbeddedStore,
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
