//! The record store against the fixture bundles, counted independently from the JSON, and
//! the FHIR-server source against a stub server built from the same fixtures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gateway::records::{import_paths, EmbeddedStore, RecordError, RecordSource};
use serde_json::{json, Value};

fn fixtures(hospital: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/fhir")
        .join(hospital)
}

fn bundles(hospital: &str) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures(hospital))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect()
}

fn entries(bundle: &Value) -> &[Value] {
    bundle["entry"].as_array().unwrap()
}

/// The id a fixture resource gets: its own, else the uuid of its fullUrl.
fn fixture_id(entry: &Value) -> String {
    entry["resource"]["id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            entry["fullUrl"]
                .as_str()
                .unwrap()
                .trim_start_matches("urn:uuid:")
                .to_string()
        })
}

fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("records")).unwrap();
    (dir, store)
}

fn import_all(store: &EmbeddedStore) -> gateway::records::ImportReport {
    import_paths(store, &[fixtures("hospital-a"), fixtures("hospital-b")]).unwrap()
}

fn patient_of(bundle: &Value) -> &Value {
    entries(bundle)
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap()
}

fn mrn(patient: &Value) -> (String, String) {
    let i = patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "MR")
        .unwrap();
    (
        i["system"].as_str().unwrap().into(),
        i["value"].as_str().unwrap().into(),
    )
}

/// An import is on disk when it returns: the store reopens at once with every resource
/// and its indexes. An earlier fedgate's store (a sled folder) is refused in one line
/// naming it, and left as it was.
#[test]
fn an_import_survives_a_reopen_and_an_earlier_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records");
    let (count, patients) = {
        let store = EmbeddedStore::open(&path).unwrap();
        import_paths(&store, &[fixtures("hospital-b")]).unwrap();
        (store.count().unwrap(), store.patient_ids().unwrap())
    };
    assert!(count > 0 && !patients.is_empty());
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.count().unwrap(), count);
    assert_eq!(store.patient_ids().unwrap(), patients);
    let (_, first) = bundles("hospital-b").into_iter().next().unwrap();
    let identifier = &patient_of(&first)["identifier"][0];
    let (system, value) = (
        identifier["system"].as_str().unwrap(),
        identifier["value"].as_str().unwrap(),
    );
    assert!(store.find_patient(system, value).unwrap().is_some());

    let earlier = dir.path().join("earlier");
    std::fs::create_dir(&earlier).unwrap();
    let e = EmbeddedStore::open(&earlier).unwrap_err().to_string();
    assert!(e.contains("earlier") && e.contains("records import"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(earlier.is_dir());
}

#[test]
fn imports_every_fixture_with_independently_counted_types() {
    let (_dir, store) = store();
    let report = import_all(&store);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.bundles, 18);

    let mut per_entry: BTreeMap<String, usize> = BTreeMap::new();
    let mut distinct: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for hospital in ["hospital-a", "hospital-b"] {
        for (_, b) in bundles(hospital) {
            for e in entries(&b) {
                let ty = e["resource"]["resourceType"].as_str().unwrap().to_string();
                *per_entry.entry(ty.clone()).or_default() += 1;
                distinct.entry(ty).or_default().insert(fixture_id(e));
            }
        }
    }
    assert_eq!(report.imported, per_entry);
    let distinct: BTreeMap<String, usize> =
        distinct.into_iter().map(|(t, s)| (t, s.len())).collect();
    assert_eq!(store.count_by_type().unwrap(), distinct);
    assert_eq!(store.count().unwrap(), distinct.values().sum::<usize>());
    assert_eq!(per_entry["Observation"], 1164 + 408);
    assert_eq!(store.patient_ids().unwrap().len(), 18);
}

#[test]
fn finds_patients_by_mrn_and_by_other_identifiers() {
    let (_dir, store) = store();
    import_all(&store);
    for (_, b) in bundles("hospital-a") {
        let p = patient_of(&b);
        let (system, value) = mrn(p);
        assert_eq!(
            store.find_patient(&system, &value).unwrap().as_deref(),
            p["id"].as_str()
        );
        assert_eq!(store.find_patient(&system, "0000000").unwrap(), None);
        assert_eq!(store.find_patient("urn:other", &value).unwrap(), None);
    }
    for (_, b) in bundles("hospital-b") {
        let e = entries(&b)
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap();
        let i = &e["resource"]["identifier"][0];
        let found = store
            .find_patient(i["system"].as_str().unwrap(), i["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(found, Some(fixture_id(e)));
    }
}

/// References of a fixture resource, as fullUrls.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                if k == "reference" {
                    out.push(c.as_str().unwrap().to_string());
                } else {
                    refs(c, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
        _ => {}
    }
}

#[test]
fn patient_resources_hold_the_compartment_and_referenced_staff() {
    let (_dir, store) = store();
    import_all(&store);
    let types: Vec<String> = [
        "Patient",
        "Observation",
        "Claim",
        "ExplanationOfBenefit",
        "Coverage",
        "Practitioner",
    ]
    .map(String::from)
    .to_vec();
    for (_, b) in bundles("hospital-a") {
        let patient = patient_of(&b);
        let pid = patient["id"].as_str().unwrap();
        let patient_url = format!("urn:uuid:{pid}");
        let by_url: HashMap<&str, &Value> = entries(&b)
            .iter()
            .map(|e| (e["fullUrl"].as_str().unwrap(), &e["resource"]))
            .collect();
        // Independent expectation: resources of the wanted types whose subject, patient or
        // beneficiary is this patient, plus the practitioners they refer to.
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        expected.insert("Patient".into(), 1);
        let mut practitioners = BTreeSet::new();
        for e in entries(&b) {
            let r = &e["resource"];
            let ty = r["resourceType"].as_str().unwrap();
            if !types.iter().any(|t| t == ty) || ty == "Patient" || ty == "Practitioner" {
                continue;
            }
            let owner = ["subject", "patient", "beneficiary"]
                .iter()
                .any(|f| r[*f]["reference"] == patient_url.as_str());
            if owner {
                *expected.entry(ty.into()).or_default() += 1;
                let mut out = Vec::new();
                refs(r, &mut out);
                for u in out {
                    if by_url
                        .get(u.as_str())
                        .is_some_and(|t| t["resourceType"] == "Practitioner")
                    {
                        practitioners.insert(u);
                    }
                }
            }
        }
        if !practitioners.is_empty() {
            expected.insert("Practitioner".into(), practitioners.len());
        }

        let got = store.patient_resources(pid, &types).unwrap();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &got {
            *counts
                .entry(r["resourceType"].as_str().unwrap().into())
                .or_default() += 1;
            let mut out = Vec::new();
            refs(r, &mut out);
            assert!(
                out.iter().all(|u| !u.starts_with("urn:")),
                "references were rewritten"
            );
            for f in ["subject", "patient", "beneficiary"] {
                if let Some(target) = r[f]["reference"].as_str() {
                    assert_eq!(target, format!("Patient/{pid}"));
                }
            }
        }
        assert_eq!(counts, expected, "{}", pid);
        assert_eq!(got[0]["resourceType"], "Patient");
        assert!(store
            .patient_resources(pid, &["Immunization".to_string()])
            .unwrap()
            .iter()
            .all(|r| r["resourceType"] == "Immunization"));
    }
    assert!(matches!(
        store.patient_resources("bad id", &types),
        Err(RecordError::Invalid { .. })
    ));
    assert!(matches!(
        store.patient_resources("abc", &["observation".to_string()]),
        Err(RecordError::Invalid { .. })
    ));
    assert!(store
        .patient_resources("unknown", &types)
        .unwrap()
        .is_empty());
}

#[test]
fn malformed_entries_are_skipped_with_precise_reasons() {
    let (_dir, store) = store();
    let secret = "Zebulon-Quaxley";
    let huge = "x".repeat(1024 * 1024 + 10);
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
             "resource": {"resourceType": "Patient", "name": [{"family": secret}],
                          "identifier": [{"system": "urn:mrn", "value": "M-1"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
             "resource": {"resourceType": "Observation", "status": "final",
                          "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
             "request": {"method": "POST", "url": "Observation"}},
            42,
            {"resource": "Patient"},
            {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333",
             "resource": {"name": [{"family": secret}]}},
            {"fullUrl": "urn:uuid:44444444-4444-4444-8444-444444444444",
             "resource": {"resourceType": "Observation", "id": "bad id!", "note": [{"text": secret}]}},
            {"resource": {"resourceType": "Observation", "valueString": huge}},
            {"resource": {"resourceType": "Observation", "note": [{"text": secret}],
                          "subject": {"reference": "urn:uuid:99999999-9999-4999-8999-999999999999"}}},
            {"resource": {"resourceType": "Observation",
                          "hasMember": [{"reference": "urn:uuid:44444444-4444-4444-8444-444444444444"}]}},
            {"resource": {"resourceType": "Observation", "status": "final"},
             "request": {"method": "DELETE", "url": "Observation/x"}}
        ]
    });
    let report = store.import_bundle_from("bad.json", &bundle).unwrap();
    let got: Vec<(usize, Option<&str>, &str)> = report
        .skipped
        .iter()
        .map(|s| (s.entry, s.resource_type.as_deref(), s.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, None, "entry has no resource"),
            (3, None, "resource is not a JSON object"),
            (4, None, "resource has no resourceType"),
            (
                5,
                Some("Observation"),
                "id has illegal characters or length"
            ),
            (6, Some("Observation"), "resource larger than 1 MiB"),
            (
                7,
                Some("Observation"),
                "reference at subject.reference has no target in the bundle"
            ),
            (
                8,
                Some("Observation"),
                "reference at hasMember[0].reference points to skipped entry 5"
            ),
            (
                9,
                Some("Observation"),
                "only POST and PUT entries carry a resource to store"
            ),
        ]
    );
    assert!(report.skipped.iter().all(|s| s.file == "bad.json"));
    let serialized = serde_json::to_string(&report).unwrap();
    assert!(
        !serialized.contains(secret) && !serialized.contains("M-1"),
        "no PHI in reports"
    );
    assert_eq!(
        report.imported,
        BTreeMap::from([("Patient".to_string(), 1), ("Observation".to_string(), 1)])
    );
    // Nothing lost from the valid entries.
    let pid = store.find_patient("urn:mrn", "M-1").unwrap().unwrap();
    assert_eq!(pid, "11111111-1111-4111-8111-111111111111");
    let record = store
        .patient_resources(&pid, &["Patient".to_string(), "Observation".to_string()])
        .unwrap();
    assert_eq!(record.len(), 2);
    assert_eq!(record[0]["name"][0]["family"], secret);
    assert_eq!(record[1]["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(record[1]["id"], "22222222-2222-4222-8222-222222222222");

    // A reference to an entry skipped for another reason names that entry.
    let cascade = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:55555555-5555-4555-8555-555555555555",
         "resource": {"resourceType": "Patient", "id": "has space"}},
        {"resource": {"resourceType": "Observation",
                      "subject": {"reference": "urn:uuid:55555555-5555-4555-8555-555555555555"}}}
    ]});
    let r = store.import_bundle(&cascade).unwrap();
    assert_eq!(
        r.skipped[1].reason,
        "reference at subject.reference points to skipped entry 0"
    );
    assert!(r.imported.is_empty());

    // Whole-bundle problems are errors.
    for bad in [
        json!([]),
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Bundle", "type": "history"}),
        json!({"resourceType": "Bundle", "type": "collection", "entry": {}}),
    ] {
        assert!(matches!(
            store.import_bundle(&bad),
            Err(RecordError::NotABundle(_))
        ));
    }
}

#[test]
fn reimport_is_idempotent() {
    let (_dir, store) = store();
    let first = import_all(&store);
    let counts = store.count_by_type().unwrap();
    let b = &bundles("hospital-a")[0].1;
    let (system, value) = mrn(patient_of(b));
    let pid = store.find_patient(&system, &value).unwrap().unwrap();
    let all: Vec<String> = counts.keys().cloned().collect();
    let before = store.patient_resources(&pid, &all).unwrap();

    let second = import_all(&store);
    assert_eq!(first, second);
    assert_eq!(store.count_by_type().unwrap(), counts);
    assert_eq!(
        store.find_patient(&system, &value).unwrap(),
        Some(pid.clone())
    );
    assert_eq!(store.patient_resources(&pid, &all).unwrap(), before);
    for (_, b) in bundles("hospital-b") {
        let e = entries(&b)
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap();
        let i = &e["resource"]["identifier"][0];
        assert!(store
            .find_patient(i["system"].as_str().unwrap(), i["value"].as_str().unwrap())
            .unwrap()
            .is_some());
    }
}

#[test]
fn unreadable_files_are_reported_and_the_rest_imported() {
    let (dir, store) = store();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{ not json").unwrap();
    let missing = dir.path().join("missing.json");
    let report = import_paths(&store, &[broken.clone(), missing, fixtures("hospital-b")]).unwrap();
    assert_eq!(report.failed.len(), 2);
    assert!(report.failed[0].reason.starts_with("not JSON"));
    assert_eq!(report.bundles, 12);
}

// ---------------------------------------------------------------------------------------
// A stub FHIR server serving the hospital-b fixtures
// ---------------------------------------------------------------------------------------

const PAGE: usize = 7;

struct Stub {
    resources: Vec<Value>,
    origin: String,
    /// Declares and answers `Patient/{id}/$everything`.
    everything: bool,
    /// Requests seen: `$everything` and type searches by `?patient=`.
    everything_calls: std::sync::atomic::AtomicUsize,
    type_searches: std::sync::atomic::AtomicUsize,
}

/// The fixtures as a FHIR server would hold them: ids from the fullUrls, references as
/// `Type/id`. Built here, independently of the importer.
fn stub_resources() -> Vec<Value> {
    let mut out = Vec::new();
    for (_, b) in bundles("hospital-b") {
        let urls: HashMap<String, String> = entries(&b)
            .iter()
            .map(|e| {
                let ty = e["resource"]["resourceType"].as_str().unwrap();
                (
                    e["fullUrl"].as_str().unwrap().to_string(),
                    format!("{ty}/{}", fixture_id(e)),
                )
            })
            .collect();
        for e in entries(&b) {
            let mut r = e["resource"].clone();
            r["id"] = json!(fixture_id(e));
            let mut text = serde_json::to_string(&r).unwrap();
            for (u, t) in &urls {
                text = text.replace(&format!("\"{u}\""), &format!("\"{t}\""));
            }
            out.push(serde_json::from_str(&text).unwrap());
        }
    }
    out
}

fn searchset(resources: Vec<Value>, next: Option<String>) -> Json<Value> {
    let mut b = json!({
        "resourceType": "Bundle", "type": "searchset", "total": resources.len(),
        "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        b["link"] = json!([{"relation": "self", "url": "x"}, {"relation": "next", "url": n}]);
    }
    Json(b)
}

async fn search(
    State(s): State<Arc<Stub>>,
    UrlPath(ty): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let of_type = s
        .resources
        .iter()
        .filter(|r| r["resourceType"] == ty.as_str());
    if ty == "Patient" {
        if q.get("_summary").is_some_and(|v| v == "count") {
            return Json(
                json!({"resourceType": "Bundle", "type": "searchset", "total": of_type.count()}),
            )
            .into_response();
        }
        let Some((system, value)) = q.get("identifier").and_then(|i| i.split_once('|')) else {
            return searchset(of_type.cloned().collect(), None).into_response();
        };
        let found = of_type
            .filter(|p| {
                p["identifier"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|i| i["system"] == system && i["value"] == value)
            })
            .cloned()
            .collect();
        return searchset(found, None).into_response();
    }
    let Some(patient) = q.get("patient") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    s.type_searches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let target = format!("Patient/{patient}");
    let matching: Vec<Value> = of_type
        .filter(|r| {
            ["subject", "patient", "beneficiary"]
                .iter()
                .any(|f| r[*f]["reference"] == target.as_str())
        })
        .cloned()
        .collect();
    let page: usize = q.get("_page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let chunk: Vec<Value> = matching
        .iter()
        .skip(page * PAGE)
        .take(PAGE)
        .cloned()
        .collect();
    let more = (page + 1) * PAGE < matching.len();
    let next = if patient == "elsewhere" {
        // Same host and port under another name: another origin all the same.
        Some(format!(
            "{}/fhir/{ty}?patient={patient}&_page=1",
            s.origin.replace("127.0.0.1", "localhost")
        ))
    } else {
        more.then(|| {
            format!(
                "{}/fhir/{ty}?patient={patient}&_page={}",
                s.origin,
                page + 1
            )
        })
    };
    searchset(chunk, next).into_response()
}

async fn read(
    State(s): State<Arc<Stub>>,
    UrlPath((ty, id)): UrlPath<(String, String)>,
) -> Response {
    match s
        .resources
        .iter()
        .find(|r| r["resourceType"] == ty.as_str() && r["id"] == id.as_str())
    {
        Some(r) => Json(r.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_stub() -> String {
    start_stub_with(false).await.0
}

/// `$everything` as a server that declares it answers: the patient, their compartment
/// and the shared resources (marked `include`), of the `_type`s asked, in pages. For
/// patient `leaky`, another patient's Observation too.
async fn everything(
    State(s): State<Arc<Stub>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.everything_calls
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let Some(types) = q.get("_type") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let types: BTreeSet<&str> = types.split(',').collect();
    let target = format!("Patient/{id}");
    let mut found: Vec<(Value, &str)> = s
        .resources
        .iter()
        .filter(|r| types.contains(r["resourceType"].as_str().unwrap()))
        .filter_map(|r| {
            let ty = r["resourceType"].as_str().unwrap();
            if ty == "Patient" {
                (r["id"] == id.as_str()).then_some((r.clone(), "match"))
            } else if ["subject", "patient", "beneficiary"]
                .iter()
                .any(|f| r[*f]["reference"] == target.as_str())
            {
                Some((r.clone(), "match"))
            } else if ty == "Practitioner" || ty == "Organization" {
                Some((r.clone(), "include"))
            } else {
                None
            }
        })
        .collect();
    if id == "refusing" {
        return StatusCode::FORBIDDEN.into_response();
    }
    if id == "leaky" {
        found.push((json!({"resourceType": "Patient", "id": "leaky"}), "match"));
        found.push((
            json!({"resourceType": "Observation", "id": "x1", "subject": {"reference": "Patient/someone-else"}}),
            "match",
        ));
    }
    let page: usize = q.get("_page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let chunk: Vec<Value> = found
        .iter()
        .skip(page * PAGE)
        .take(PAGE)
        .map(|(r, mode)| json!({"resource": r, "search": {"mode": mode}}))
        .collect();
    let mut b = json!({"resourceType": "Bundle", "type": "searchset", "entry": chunk});
    if (page + 1) * PAGE < found.len() {
        let next = format!(
            "{}/fhir/Patient/{id}/$everything?_type={}&_page={}",
            s.origin,
            q["_type"],
            page + 1
        );
        b["link"] = json!([{"relation": "next", "url": next}]);
    }
    Json(b).into_response()
}

async fn start_stub_with(declares_everything: bool) -> (String, Arc<Stub>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let stub = Arc::new(Stub {
        resources: stub_resources(),
        origin: origin.clone(),
        everything: declares_everything,
        everything_calls: Default::default(),
        type_searches: Default::default(),
    });
    let metadata = |State(s): State<Arc<Stub>>| async move {
        let ops = if s.everything {
            json!([{"name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}])
        } else {
            json!([])
        };
        Json(
            json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "rest": [{"mode": "server", "resource": [
                {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "operation": ops}]}]}),
        )
    };
    let app = Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/{ty}", get(search))
        .route("/fhir/{ty}/{id}", get(read))
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .with_state(stub.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("{origin}/fhir"), stub)
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| {
        format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        )
    });
    v
}

#[tokio::test]
async fn fhir_server_source_matches_the_embedded_store() {
    let base = start_stub().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("r")).unwrap();
    import_paths(&store, &[fixtures("hospital-b")]).unwrap();
    let embedded = RecordSource::Embedded(store);
    let server = RecordSource::fhir_server(&base, true).unwrap();

    let types: Vec<String> = [
        "Patient",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
        "Practitioner",
    ]
    .map(String::from)
    .to_vec();
    let mut compared = 0;
    for (_, b) in bundles("hospital-b") {
        let p = entries(&b)
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap();
        let ident = &p["resource"]["identifier"][0];
        let (system, value) = (
            ident["system"].as_str().unwrap(),
            ident["value"].as_str().unwrap(),
        );
        let from_server = server.find_patient(system, value).await.unwrap();
        assert_eq!(
            from_server,
            embedded.find_patient(system, value).await.unwrap()
        );
        let pid = from_server.unwrap();
        let a = sorted(server.patient_resources(&pid, &types).await.unwrap());
        let b2 = sorted(embedded.patient_resources(&pid, &types).await.unwrap());
        assert!(a.len() > PAGE, "several pages were followed");
        assert_eq!(a, b2);
        compared += a.len();
    }
    assert!(compared > 400);
    assert_eq!(server.find_patient("urn:none", "x").await.unwrap(), None);
    assert_eq!(server.count().await.unwrap(), 12);
    let mut ids = server.patient_ids().await.unwrap();
    let mut ids2 = embedded.patient_ids().await.unwrap();
    ids.sort();
    ids2.sort();
    assert_eq!(ids, ids2);
}

/// A server that declares `$everything` is asked with it (in pages, with `_type`), and
/// gives the same records as type searches and the embedded store; an answer holding
/// another patient's resource fails closed.
#[tokio::test]
async fn fhir_server_everything_matches_the_embedded_store() {
    use std::sync::atomic::Ordering;
    let (base, stub) = start_stub_with(true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("r")).unwrap();
    import_paths(&store, &[fixtures("hospital-b")]).unwrap();
    let embedded = RecordSource::Embedded(store);
    let server = gateway::records::FhirServer::new(&base, true).unwrap();
    let caps = server.capabilities().await.unwrap();
    assert!(caps.everything);
    assert_eq!(caps.fhir_version.as_deref(), Some("4.0.1"));
    let types: Vec<String> = [
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "Practitioner",
    ]
    .map(String::from)
    .to_vec();
    let mut compared = 0;
    for (_, b) in bundles("hospital-b") {
        let pid = fixture_id(
            entries(&b)
                .iter()
                .find(|e| e["resource"]["resourceType"] == "Patient")
                .unwrap(),
        );
        let a = sorted(server.patient_resources(&pid, &types).await.unwrap());
        let want = sorted(embedded.patient_resources(&pid, &types).await.unwrap());
        assert_eq!(a, want);
        compared += a.len();
    }
    assert!(compared > 100, "{compared}");
    assert!(
        stub.everything_calls.load(Ordering::SeqCst) > 12,
        "pages followed"
    );
    assert_eq!(stub.type_searches.load(Ordering::SeqCst), 0);
    assert!(matches!(
        server.patient_resources("leaky", &types).await,
        Err(RecordError::Inconsistent { .. })
    ));
    // Refused (403) or answered without the patient: the type searches ask instead.
    let searches = stub.type_searches.load(Ordering::SeqCst);
    for id in ["refusing", "unknown-here"] {
        assert!(server
            .patient_resources(id, &types)
            .await
            .unwrap()
            .is_empty());
    }
    assert!(stub.type_searches.load(Ordering::SeqCst) > searches);

    // Told not to, the same server is asked by type searches.
    let searches = gateway::records::FhirServer::new(&base, true)
        .unwrap()
        .without_everything();
    let calls = stub.everything_calls.load(Ordering::SeqCst);
    let pid = fixture_id(
        entries(&bundles("hospital-b")[0].1)
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap(),
    );
    let a = sorted(searches.patient_resources(&pid, &types).await.unwrap());
    assert_eq!(
        a,
        sorted(embedded.patient_resources(&pid, &types).await.unwrap())
    );
    assert_eq!(stub.everything_calls.load(Ordering::SeqCst), calls);
    assert!(stub.type_searches.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn fhir_server_limits_fail_closed() {
    let base = start_stub().await;
    let b = &bundles("hospital-b")[0].1;
    let pid = fixture_id(
        entries(b)
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap(),
    );
    let obs = vec!["Observation".to_string()];

    let capped = gateway::records::FhirServer::new(&base, true)
        .unwrap()
        .with_limits(2, 1 << 20);
    assert!(matches!(
        capped.patient_resources(&pid, &obs).await,
        Err(RecordError::Paging(_))
    ));

    let small = gateway::records::FhirServer::new(&base, true)
        .unwrap()
        .with_limits(100, 2000);
    assert!(matches!(
        small.patient_resources(&pid, &obs).await,
        Err(RecordError::TooLarge { .. })
    ));

    // A next link to another origin is not followed.
    let server = gateway::records::FhirServer::new(&base, true).unwrap();
    assert_eq!(
        server.patient_resources(&pid, &obs).await.unwrap().len(),
        34
    );
    assert!(matches!(
        server.patient_resources("elsewhere", &obs).await,
        Err(RecordError::Paging(_))
    ));

    // Outbound rules: https, or http to loopback in dev mode only.
    assert!(RecordSource::fhir_server("http://fhir.example.org/r4", true).is_err());
    assert!(RecordSource::fhir_server(&base, false).is_err());
    assert!(RecordSource::fhir_server("https://fhir.example.org/r4", false).is_ok());
    assert!(RecordSource::fhir_server("not a url", true).is_err());
}

/// A FHIR server that answers each test patient in one wrong way.
async fn start_misbehaving() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let busy = Arc::new(AtomicUsize::new(0));
    let origin2 = origin.clone();
    let search = move |UrlPath(ty): UrlPath<String>, Query(q): Query<HashMap<String, String>>| {
        let busy = busy.clone();
        let origin = origin2.clone();
        async move {
            let patient = q.get("patient").cloned().unwrap_or_default();
            if q.get("_count").map(String::as_str) != Some("1000") {
                return StatusCode::BAD_REQUEST.into_response();
            }
            let obs = |who: &str, i: usize| json!({"resourceType": ty, "id": format!("o{i}"), "subject": {"reference": format!("Patient/{who}")}});
            match patient.as_str() {
                "mixed" => {
                    searchset(vec![obs("mixed", 1), obs("someone-else", 2)], None).into_response()
                }
                "busy" => {
                    if busy.fetch_add(1, Ordering::SeqCst) < 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response()
                    } else {
                        searchset(vec![obs("busy", 1)], None).into_response()
                    }
                }
                "slow" => {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    searchset(vec![], None).into_response()
                }
                "endless" => {
                    // Every page full and a next link to itself.
                    let page = (0..500).map(|i| obs("endless", i)).collect();
                    let next = format!("{origin}/fhir/{ty}?patient=endless&_count=1000");
                    searchset(page, Some(next)).into_response()
                }
                _ => searchset(vec![obs(&patient, 1)], None).into_response(),
            }
        }
    };
    let read = |UrlPath((ty, id)): UrlPath<(String, String)>| async move {
        // Asked for one patient, answers with another.
        let id = if id == "swapped" {
            "p2".to_string()
        } else {
            id
        };
        Json(json!({"resourceType": ty, "id": id})).into_response()
    };
    let app = Router::new()
        .route("/fhir/{ty}", get(search))
        .route("/fhir/{ty}/{id}", get(read));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("{origin}/fhir")
}

/// What the server answers that contradicts the request fails closed; a busy server is
/// asked again; a slow one runs into the deadline; an endless one into the budget.
#[tokio::test]
async fn fhir_server_answers_are_checked_retried_and_bounded() {
    let base = start_misbehaving().await;
    let server = gateway::records::FhirServer::new(&base, true)
        .unwrap()
        .with_budget(64 << 20, 2_000, std::time::Duration::from_secs(2));
    let obs = vec!["Observation".to_string()];
    let with_patient = vec!["Patient".to_string(), "Observation".to_string()];

    // Searches ask for _count (the stub refuses a search without it).
    assert_eq!(
        server.patient_resources("fine", &obs).await.unwrap().len(),
        1
    );
    assert!(matches!(
        server.patient_resources("swapped", &with_patient).await,
        Err(RecordError::Inconsistent { .. })
    ));
    assert!(matches!(
        server.patient_resources("mixed", &obs).await,
        Err(RecordError::Inconsistent { .. })
    ));
    // 503 twice with Retry-After: 0, then an answer.
    assert_eq!(
        server.patient_resources("busy", &obs).await.unwrap().len(),
        1
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        server.patient_resources("slow", &obs).await,
        Err(RecordError::Timeout(2))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert!(matches!(
        server.patient_resources("endless", &obs).await,
        Err(RecordError::Budget(_))
    ));
}

/// Records kept parsed are the records the store holds: the same answer from memory as
/// from the store, whatever the order of the types asked for, untouched by what a caller
/// does to its copy, and never the old one after an import, also through a second handle
/// on the store (as a replica sharing it) whose copy the import made stale.
#[test]
fn records_kept_parsed_are_never_stale() {
    let (_dir, plain) = store();
    import_all(&plain);
    let cached = plain.clone().with_record_cache(8 << 20);
    let replica = plain.clone().with_record_cache(8 << 20);
    let (file, bundle) = bundles("hospital-a").swap_remove(0);
    let (system, value) = mrn(patient_of(&bundle));
    let pid = plain.find_patient(&system, &value).unwrap().unwrap();
    let types = vec!["Patient".to_string(), "Condition".to_string()];
    let reversed: Vec<String> = types.iter().rev().cloned().collect();

    let fresh = plain.patient_resources(&pid, &types).unwrap();
    assert!(fresh.len() > 1, "{} resources", fresh.len());
    // Nothing kept before the first read, nor ever without a cache.
    assert_eq!(cached.kept_record(&pid, &types, usize::MAX).unwrap(), None);
    assert_eq!(plain.kept_record(&pid, &types, usize::MAX).unwrap(), None);
    let mut first = cached.patient_resources(&pid, &types).unwrap();
    assert_eq!(first, fresh);
    // Kept, and handed out only up to the size asked for.
    assert_eq!(
        cached.kept_record(&pid, &reversed, usize::MAX).unwrap(),
        Some(fresh.clone())
    );
    assert_eq!(cached.kept_record(&pid, &types, 10).unwrap(), None);
    assert_eq!(cached.patient_resources(&pid, &reversed).unwrap(), fresh);
    assert_eq!(replica.patient_resources(&pid, &types).unwrap(), fresh);
    // What a caller does to its copy stays with it.
    first[0]["id"] = Value::String("changed".into());
    assert_eq!(cached.patient_resources(&pid, &types).unwrap(), fresh);

    // A Condition amended and the bundle imported again.
    let mut amended = bundle.clone();
    let condition = amended["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["resource"]["resourceType"] == "Condition")
        .unwrap();
    condition["resource"]["note"] = serde_json::json!([{"text": "amended after review"}]);
    plain
        .import_bundle_from(&file.display().to_string(), &amended)
        .unwrap();
    let now = plain.patient_resources(&pid, &types).unwrap();
    assert_ne!(now, fresh);
    assert!(now
        .iter()
        .any(|r| r["note"][0]["text"] == "amended after review"));
    assert_eq!(cached.kept_record(&pid, &types, usize::MAX).unwrap(), None);
    assert_eq!(cached.patient_resources(&pid, &types).unwrap(), now);
    assert_eq!(
        cached.kept_record(&pid, &types, usize::MAX).unwrap(),
        Some(now.clone())
    );
    assert_eq!(replica.patient_resources(&pid, &reversed).unwrap(), now);

    // Off, or smaller than the record: read from the store every time, alike.
    let off = plain.clone().with_record_cache(0);
    let tiny = plain.clone().with_record_cache(64);
    assert_eq!(off.patient_resources(&pid, &types).unwrap(), now);
    assert_eq!(tiny.patient_resources(&pid, &types).unwrap(), now);
    assert_eq!(tiny.patient_resources(&pid, &types).unwrap(), now);
}
