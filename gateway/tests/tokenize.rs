//! Obligations applied to every hospital-a patient's full record: nothing identifying
//! leaves in clear unless revealed, pseudonyms and tokens behave per recipient, and the
//! references of the output hold together.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use gateway::policy::{sample_input, PolicyHolder, PolicyOptions};
use gateway::records::EmbeddedStore;
use gateway::tokenize::{
    apply, Action, IdentifierClass, Obligations, TokenizeContext, TokenizeError, AGE_BAND_EXTENSION,
};
use gateway::vault::{Vault, VaultError};
use serde_json::{json, Value};

const KEY: [u8; 32] = [42u8; 32];
const ORG_A: &str = "did:web:hospital-b.example";
const ORG_B: &str = "did:web:clinic-c.example";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn fixture_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/fhir/hospital-a");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

struct Env {
    store: EmbeddedStore,
    vault: Vault,
    types: Vec<String>,
    /// Holds the databases' files.
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("records")).unwrap();
    for f in fixture_files() {
        store.import_file(&f).unwrap();
    }
    let db = gateway::db::open(dir.path()).unwrap();
    let vault = Vault::open(db.tree("vault"), KEY);
    let types = store.count_by_type().unwrap().into_keys().collect();
    Env {
        _dir: dir,
        store,
        vault,
        types,
    }
}

fn ctx<'a>(env: &'a Env, recipient: &'a str) -> TokenizeContext<'a> {
    TokenizeContext {
        recipient_org: recipient,
        domain: "clinical",
        pseudonym_key: &KEY,
        vault: &env.vault,
        now: now(),
    }
}

/// Obligations from the lists given, the rest as in the fail-closed default (a decision
/// names every field; these tests name only the ones they are about).
fn obligations(partial: Value) -> Obligations {
    let mut doc = serde_json::to_value(Obligations::default()).unwrap();
    for (k, v) in partial.as_object().unwrap() {
        doc[k] = v.clone();
    }
    serde_json::from_value(doc).unwrap()
}

/// `treatment_obligations` of policies/common.rego.
fn treat() -> Obligations {
    serde_json::from_value(json!({
        "reveal": ["address", "birth-date", "mrn", "name", "telecom"],
        "tokenize": ["drivers-license", "other-identifiers", "passport", "ssn"],
        "pseudonymize": ["patient-id", "resource-ids"],
        "generalize": [], "redact": [],
        "aggregate_only": false, "min_cell_size": null, "max_records": 5000
    }))
    .unwrap()
}

/// An identifying value of the source Patient, with the class it belongs to.
struct Secret {
    class: &'static str,
    value: String,
}

/// Every identifying value of the bundle's Patient, read straight from the JSON.
fn secrets(patient: &Value) -> Vec<Secret> {
    let mut out = Vec::new();
    let mut add = |class: &'static str, v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(Secret {
                class,
                value: s.to_string(),
            });
        }
    };
    add("patient-id", &patient["id"]);
    for i in patient["identifier"].as_array().unwrap() {
        let code = i["type"]["coding"][0]["code"].as_str().unwrap_or("");
        let class = match code {
            "MR" => "mrn",
            "SS" => "ssn",
            "PPN" => "passport",
            "DL" => "drivers-license",
            _ => "other-identifiers",
        };
        add(class, &i["value"]);
    }
    for n in patient["name"].as_array().unwrap() {
        add("name", &n["family"]);
        for g in n["given"].as_array().unwrap() {
            add("name", g);
        }
    }
    for t in patient["telecom"].as_array().unwrap() {
        add("telecom", &t["value"]);
    }
    for a in patient["address"].as_array().unwrap() {
        for l in a["line"].as_array().unwrap() {
            add("address", l);
        }
        add("address", &a["city"]);
        add("address", &a["postalCode"]);
    }
    out
}

/// The serialized output plus the decoded text of every attachment in it.
fn haystack(output: &[Value]) -> String {
    fn attachments(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                if let Some(d) = o.get("data").and_then(Value::as_str) {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    out.push('\n');
                }
                o.values().for_each(|c| attachments(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| attachments(c, out)),
            _ => {}
        }
    }
    let mut hay = serde_json::to_string(output).unwrap();
    output.iter().for_each(|r| attachments(r, &mut hay));
    hay
}

/// Whether `needle` occurs in `hay` as a whole word, ignoring ASCII case.
fn contains_word(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    h.match_indices(&n)
        .any(|(i, _)| !word(h[..i].chars().next_back()) && !word(h[i + n.len()..].chars().next()))
}

fn fixture(path: &Path) -> (Value, Value) {
    let bundle: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    (bundle, patient)
}

/// Every reference resolves to a resource of the output (or to a contained one).
fn assert_references_resolve(output: &[Value]) {
    let ids: HashSet<String> = output
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect();
    fn walk(v: &Value, ids: &HashSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, c) in o {
                    if k == "reference" {
                        let r = c.as_str().unwrap();
                        assert!(
                            r.starts_with('#') || ids.contains(r),
                            "dangling reference {r}"
                        );
                    } else {
                        walk(c, ids);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, ids)),
            _ => {}
        }
    }
    output.iter().for_each(|r| walk(r, &ids));
}

fn patient_out(output: &[Value]) -> &Value {
    assert_eq!(output[0]["resourceType"], "Patient");
    &output[0]
}

#[test]
fn no_identifier_leaves_in_clear_unless_revealed() {
    let env = env();
    let revealed_by_treat = ["name", "mrn", "telecom", "address"];
    for file in fixture_files() {
        let (_, patient) = fixture(&file);
        let pid = patient["id"].as_str().unwrap();
        let record = env.store.patient_resources(pid, &env.types).unwrap();
        assert!(record.len() > 100);
        let secrets = secrets(&patient);
        assert!(secrets.len() >= 10);
        // The scan is not vacuous: it finds every value in the record as stored.
        let source = haystack(&record);
        assert!(secrets.iter().all(|s| contains_word(&source, &s.value)));

        for (label, obligations, revealed) in [
            ("treat", treat(), &revealed_by_treat[..]),
            ("fail-closed default", Obligations::default(), &[][..]),
        ] {
            let out = apply(record.clone(), &obligations, &ctx(&env, ORG_A))
                .unwrap()
                .resources;
            let hay = haystack(&out);
            for s in &secrets {
                let found = contains_word(&hay, &s.value);
                if revealed.contains(&s.class) {
                    assert!(found, "{label}: revealed {} value missing", s.class);
                } else {
                    assert!(
                        !found,
                        "{label}: {} value {:?} left in clear ({})",
                        s.class,
                        s.value,
                        file.display()
                    );
                }
            }
            assert!(out.iter().all(|r| r["resourceType"] != "Provenance"));
            assert!(out.iter().all(|r| r["meta"]["source"].is_null()));
            assert_references_resolve(&out);
            // Practitioner names are not the patient's: kept.
            let staff = out
                .iter()
                .filter(|r| r["resourceType"] == "Practitioner")
                .count();
            assert!(staff > 0);
            assert!(out
                .iter()
                .filter(|r| r["resourceType"] == "Practitioner")
                .all(|r| r["name"][0]["family"].is_string()));
        }
    }
}

#[test]
fn clinical_treat_shape() {
    let env = env();
    let (_, patient) = fixture(&fixture_files()[0]);
    let pid = patient["id"].as_str().unwrap();
    let record = env.store.patient_resources(pid, &env.types).unwrap();
    let out = apply(record.clone(), &treat(), &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let p = patient_out(&out);
    assert_eq!(p["name"], patient["name"]);
    assert_eq!(p["birthDate"], patient["birthDate"]);
    assert_eq!(p["address"], patient["address"]);
    let idents = p["identifier"].as_array().unwrap();
    assert_eq!(
        idents.len(),
        patient["identifier"].as_array().unwrap().len()
    );
    for (o, i) in idents.iter().zip(patient["identifier"].as_array().unwrap()) {
        // The kind of identifier stays visible.
        assert_eq!(o["system"], i["system"]);
        assert_eq!(o["type"], i["type"]);
        if i["type"]["coding"][0]["code"] == "MR" {
            assert_eq!(o["value"], i["value"]);
        } else {
            assert!(o["value"].as_str().unwrap().starts_with("tok_"));
        }
    }
    assert!(p["id"].as_str().unwrap().starts_with("p-"));
    // Encounter.subject.display is the patient's name: revealed here.
    let enc = out
        .iter()
        .find(|r| r["resourceType"] == "Encounter")
        .unwrap();
    assert_eq!(
        enc["subject"]["reference"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
    assert!(enc["subject"]["display"].is_string());

    let default = apply(record, &Obligations::default(), &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let p = patient_out(&default);
    for k in [
        "id",
        "name",
        "identifier",
        "telecom",
        "address",
        "birthDate",
    ] {
        assert!(p.get(k).is_none(), "{k} redacted by default");
    }
    let enc = default
        .iter()
        .find(|r| r["resourceType"] == "Encounter")
        .unwrap();
    assert!(
        enc.get("subject").is_none(),
        "the reference and display of a redacted patient go"
    );
    assert_eq!(p["gender"], patient["gender"]);
}

#[test]
fn pseudonyms_and_tokens_are_per_recipient() {
    let env = env();
    let (_, patient) = fixture(&fixture_files()[0]);
    let pid = patient["id"].as_str().unwrap();
    let record = env.store.patient_resources(pid, &env.types).unwrap();
    let a1 = apply(record.clone(), &treat(), &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let a2 = apply(record.clone(), &treat(), &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let b = apply(record.clone(), &treat(), &ctx(&env, ORG_B))
        .unwrap()
        .resources;
    assert_eq!(a1, a2, "same recipient: same pseudonyms and reused tokens");
    let id = |o: &[Value]| patient_out(o)["id"].as_str().unwrap().to_string();
    assert_ne!(id(&a1), id(&b));
    let ids = |o: &[Value]| {
        o.iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect::<BTreeSet<_>>()
    };
    assert!(
        ids(&a1).is_disjoint(&ids(&b)),
        "no id links the two recipients' copies"
    );

    let mut billing = ctx(&env, ORG_A);
    billing.domain = "billing";
    let a_billing = apply(record, &treat(), &billing).unwrap().resources;
    assert_ne!(id(&a1), id(&a_billing), "pseudonyms differ per domain");

    let ssn = |o: &[Value]| {
        patient_out(o)["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"]["coding"][0]["code"] == "SS")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let source_ssn = patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "SS")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    let (ta, tb) = (ssn(&a1), ssn(&b));
    assert_ne!(ta, tb);
    assert_eq!(env.vault.reveal(&ta, ORG_A).unwrap(), source_ssn);
    assert_eq!(env.vault.reveal(&tb, ORG_B).unwrap(), source_ssn);
    assert!(matches!(
        env.vault.reveal(&ta, ORG_B),
        Err(VaultError::WrongRecipient)
    ));
    let info = env.vault.get(&ta).unwrap();
    assert_eq!(
        (
            info.recipient_org.as_str(),
            info.domain.as_str(),
            info.class.as_str()
        ),
        (ORG_A, "clinical", "ssn")
    );
}

#[test]
fn generalize_is_safe_harbor() {
    let env = env();
    let research = obligations(json!({
        "pseudonymize": ["patient-id", "resource-ids"],
        "generalize": ["address", "birth-date", "dates"],
        "redact": ["attachments", "narrative", "name", "telecom", "mrn", "ssn", "passport",
                   "other-identifiers", "drivers-license"]
    }));
    for file in fixture_files() {
        let (_, patient) = fixture(&file);
        let pid = patient["id"].as_str().unwrap();
        let record = env.store.patient_resources(pid, &env.types).unwrap();
        let out = apply(record, &research, &ctx(&env, ORG_A))
            .unwrap()
            .resources;
        let p = patient_out(&out);
        assert_eq!(p["birthDate"], &patient["birthDate"].as_str().unwrap()[..4]);
        let zip3 = &patient["address"][0]["postalCode"].as_str().unwrap()[..3];
        assert_eq!(
            p["address"][0],
            json!({"state": patient["address"][0]["state"], "postalCode": zip3, "country": "US", "use": "home"})
        );
        let text = serde_json::to_string(&out).unwrap();
        // No month or day of any date is left.
        let full_date = text.as_bytes().windows(8).any(|w| {
            w[0] == b'"'
                && w[1..5].iter().all(u8::is_ascii_digit)
                && w[5] == b'-'
                && w[6..8].iter().all(u8::is_ascii_digit)
        });
        assert!(!full_date, "a full date left in {}", file.display());
        assert!(!text.contains("\"data\""));
    }

    // A patient born in 1920, living in a restricted ZIP3 area.
    let old = json!({
        "resourceType": "Patient", "id": "old", "birthDate": "1920-03-04",
        "address": [{"line": ["1 Main St"], "city": "Lebanon", "state": "NH", "postalCode": "03601",
                     "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation"}]}],
        "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}]
    });
    let out = apply(vec![old], &research, &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let p = &out[0];
    assert!(p.get("birthDate").is_none());
    assert_eq!(p["address"][0], json!({"state": "NH", "postalCode": "000"}));
    let exts = p["extension"].as_array().unwrap();
    assert!(exts.contains(&json!({"url": AGE_BAND_EXTENSION, "valueString": "90+"})));
    assert_eq!(exts.len(), 2);
}

#[test]
fn unknown_obligation_class_is_an_error() {
    let typo = obligations(json!({"reveal": ["name", "ssn-typo"]}));
    let err = typo.validate().unwrap_err();
    assert!(err.to_string().contains("ssn-typo"));
    let mut hide = serde_json::to_value(Obligations::default()).unwrap();
    hide["hide"] = json!(["name"]);
    assert!(serde_json::from_value::<Obligations>(hide).is_err());

    let env = env();
    let built = Obligations {
        redact: vec!["everything".into()],
        ..Obligations::default()
    };
    let r = apply(
        vec![json!({"resourceType": "Patient", "id": "x"})],
        &built,
        &ctx(&env, ORG_A),
    );
    assert!(matches!(r, Err(TokenizeError::UnknownClass(c)) if c == "everything"));
}

#[test]
fn max_records_keeps_the_patient_first() {
    let env = env();
    let (_, patient) = fixture(&fixture_files()[0]);
    let mut record = env
        .store
        .patient_resources(patient["id"].as_str().unwrap(), &env.types)
        .unwrap();
    record.reverse();
    let mut o = treat();
    o.max_records = Some(3);
    let out = apply(record, &o, &ctx(&env, ORG_A)).unwrap().resources;
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["resourceType"], "Patient");
}

#[test]
fn free_text_and_references_of_a_hand_made_record() {
    let env = env();
    let record = vec![
        json!({"resourceType": "Patient", "id": "pat-1",
               "meta": {"source": "#internal-feed"},
               "text": {"status": "generated", "div": "<div>Zelda Quimby, MRN 12345678</div>"},
               "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn", "value": "12345678"},
                              {"type": {"coding": [{"code": "DL"}]}, "system": "urn:dl", "value": "D1234567"}],
               "name": [{"family": "Quimby", "given": ["Zelda"]}],
               "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                              "valueDateTime": "1980-01-02T03:04:05Z"}]},
               "birthDate": "1980-01-02",
               "photo": [{"contentType": "image/jpeg", "data": "AAAA"}],
               "contact": [{"name": {"family": "Quimby", "given": ["Otto"]}, "telecom": [{"system": "phone", "value": "555-000-1111"}]}]}),
        json!({"resourceType": "Observation", "id": "obs-1", "status": "final",
               "subject": {"reference": "Patient/pat-1", "display": "Zelda Quimby"},
               "performer": [{"reference": "Practitioner/doc-1", "display": "Dr. Ada Lovelace"}],
               "note": [{"text": "Zelda said her number 555-000-1111 changed"}],
               "valueString": "Quimby family history",
               "effectiveDateTime": "2024-05-06T07:08:09Z"}),
        json!({"resourceType": "DocumentReference", "id": "doc-1", "status": "current",
               "subject": {"reference": "https://fhir.hospital.example/r4/Patient/pat-1/_history/3"},
               "content": [{"attachment": {"contentType": "text/plain",
                   "data": base64::engine::general_purpose::STANDARD.encode("Patient Zelda QUIMBY, DL D1234567.")}}]}),
        json!({"resourceType": "Practitioner", "id": "doc-1", "name": [{"family": "Lovelace", "given": ["Ada"]}]}),
        json!({"resourceType": "Provenance", "id": "prov", "target": [{"reference": "Patient/pat-1"}]}),
        json!({"resourceType": "Claim", "id": "c1", "patient": {"identifier": {"system": "urn:mrn", "value": "12345678",
               "type": {"coding": [{"code": "MR"}]}}}, "provider": {"reference": "Patient?identifier=urn:mrn|12345678"}}),
    ];
    // Names revealed, everything else by default; narrative and attachments unnamed.
    let o = obligations(json!({"reveal": ["name"], "pseudonymize": ["patient-id"]}));
    let out = apply(record.clone(), &o, &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let hay = haystack(&out);
    for gone in [
        "12345678",
        "D1234567",
        "555-000-1111",
        "1980-01-02",
        "#internal-feed",
        "pat-1",
        "T03:04:05",
    ] {
        assert!(!hay.contains(gone), "{gone} left in {hay}");
    }
    for kept in [
        "Zelda",
        "Quimby",
        "Otto",
        "Lovelace",
        "Dr. Ada Lovelace",
        "2024-05-06T07:08:09Z",
    ] {
        assert!(hay.contains(kept), "{kept} missing");
    }
    assert_eq!(out.len(), 5);
    assert!(out[0].get("photo").is_none() || o.reveal.contains(&"name".to_string()));
    let pid = out[0]["id"].as_str().unwrap();
    assert_eq!(out[2]["subject"]["reference"], format!("Patient/{pid}"));
    assert!(
        out[4].get("patient").is_none(),
        "a logical MRN reference follows the mrn class"
    );
    assert!(
        out[4].get("provider").is_none(),
        "a search reference cannot be kept"
    );
    assert_references_resolve(&out);

    // Nothing revealed: free text loses the names too, references to the patient go.
    let out = apply(record, &Obligations::default(), &ctx(&env, ORG_A))
        .unwrap()
        .resources;
    let hay = haystack(&out);
    for gone in [
        "Zelda",
        "Quimby",
        "Otto",
        "12345678",
        "D1234567",
        "555-000-1111",
        "pat-1",
    ] {
        assert!(!contains_word(&hay, gone), "{gone} left in {hay}");
    }
    assert!(hay.contains("Lovelace"));
    assert!(out[0].get("photo").is_none());
    assert!(out[1]["subject"].is_null());
    assert_eq!(out[1]["performer"][0]["display"], "Dr. Ada Lovelace");
    assert_references_resolve(&out);
}

// ---------------------------------------------------------------------------------------
// Linking: two answers about one patient, for other recipients or domains
// ---------------------------------------------------------------------------------------

/// The obligations the shipped policies decide for TREAT (clinical) and HPAYMT (billing).
fn shipped_decisions() -> (Obligations, Obligations) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let holder = PolicyHolder::with_options(
        &dir,
        PolicyOptions {
            time_limit: std::time::Duration::from_secs(5),
            ..PolicyOptions::default()
        },
    );
    let treat = holder.evaluate("clinical", &sample_input("clinical"));
    let hpaymt = holder.evaluate("billing", &sample_input("billing"));
    assert!(treat.allow && hpaymt.allow);
    (treat.obligations, hpaymt.obligations)
}

/// Where a string sits in an answer: the resource type, the element path without indices
/// (`Observation.code.coding.display`) and the object that holds it.
struct Place {
    ty: String,
    path: String,
    parent: Value,
}

/// Every string leaf of `answer`, with where it sits.
fn string_leaves(answer: &[Value]) -> Vec<(String, Place)> {
    fn walk(v: &Value, ty: &str, path: &str, parent: &Value, out: &mut Vec<(String, Place)>) {
        match v {
            Value::String(s) => out.push((
                s.clone(),
                Place {
                    ty: ty.to_string(),
                    path: path.to_string(),
                    parent: parent.clone(),
                },
            )),
            Value::Array(items) => items.iter().for_each(|i| walk(i, ty, path, parent, out)),
            Value::Object(o) => {
                for (k, c) in o {
                    walk(c, ty, &format!("{path}.{k}"), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in answer {
        let ty = r["resourceType"].as_str().unwrap();
        walk(r, ty, ty, &Value::Null, &mut out);
    }
    out
}

fn keeps(o: &Obligations, class: IdentifierClass) -> bool {
    matches!(o.action(class), Action::Reveal | Action::Keep)
}

/// Why a string two answers share at `place` does not link them, or `None`. Deliberately
/// narrow: a value is let through only for what it is where it sits, never for looking
/// harmless.
///
/// - **The same for every patient**: the resource type; `system`, `code`, `unit`,
///   `currency` and the status-like codes of closed vocabularies; a code's `display` and a
///   CodeableConcept's `text` (the terminology's words); extension URLs and profiles
///   (canonical URLs: what shape the resource has); HL7 security labels (`system` and
///   `code`, covered above).
/// - **About the organization and its staff** (Organization, Practitioner, PractitionerRole,
///   Location): the same in every patient's answer, except their ids and `meta`.
/// - **What both decisions release**, class by class: the patient's name, birth date,
///   address, telecom and MRN when both reveal them (state, country and the ZIP3 also when
///   both generalize the address); dates when both keep them as they are and neither
///   shifts them; narrative and attachments when both keep them; and the clinical content
///   of the resources asked for (a result written as text, a dosage instruction, a goal's
///   description, a document's title).
///
/// Never: ids, references, pseudonyms, tokens, and nothing under `meta` but profiles and
/// HL7 labels: `meta` is governed by its own class, which the shipped policies do not name.
fn not_linking(place: &Place, x: &Obligations, y: &Obligations) -> Option<&'static str> {
    use IdentifierClass::*;
    let both = |c: IdentifierClass| keeps(x, c) && keeps(y, c);
    let path = place.path.as_str();
    let key = path.rsplit('.').next().unwrap_or_default();
    let rest = path.split_once('.').map_or("", |(_, rest)| rest);
    let person = place.ty == "Patient" || place.ty == "RelatedPerson";
    if key == "id" || key == "reference" {
        return None;
    }
    if rest.starts_with("meta.") {
        return match rest {
            "meta.profile" => Some("a profile's canonical URL"),
            "meta.security.system" | "meta.security.code" => Some("an HL7 security label"),
            _ => None,
        };
    }
    if matches!(
        key,
        "resourceType"
            | "system"
            | "code"
            | "unit"
            | "currency"
            | "status"
            | "intent"
            | "use"
            | "gender"
            | "lifecycleStatus"
            | "outcome"
            | "contentType"
    ) || path.ends_with("coding.display")
        || path.ends_with("extension.url")
        || (key == "text" && place.parent.get("coding").is_some())
    {
        return Some("structure or a closed vocabulary");
    }
    if [
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
    ]
    .contains(&place.ty.as_str())
    {
        return Some("the organization and its staff");
    }
    // A reference's display (a code's was taken above) is a person's name.
    if (person && rest.starts_with("name.")) || key == "display" {
        return both(Name).then_some("a name both decisions reveal");
    }
    if person && rest == "birthDate" {
        return both(BirthDate).then_some("a birth date both decisions reveal");
    }
    if person && rest.starts_with("address.") {
        let coarse =
            |o: &Obligations| matches!(o.action(Address), Action::Reveal | Action::Generalize);
        let safe_harbor = matches!(key, "state" | "country" | "postalCode");
        return if both(Address) || (safe_harbor && coarse(x) && coarse(y)) {
            Some("an address part both decisions release")
        } else {
            None
        };
    }
    if person && rest == "telecom.value" {
        return both(Telecom).then_some("a telecom both decisions reveal");
    }
    if person && rest == "identifier.value" {
        let mrn = place.parent["type"]["coding"][0]["code"] == "MR";
        return (mrn && both(Mrn)).then_some("an MRN both decisions reveal");
    }
    let date = place.parent[key]
        .as_str()
        .is_some_and(|s| s.len() >= 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-');
    if date {
        let unshifted = !x.shift_dates && !y.shift_dates;
        return (both(Dates) && unshifted).then_some("a date both decisions keep as it is");
    }
    if rest.starts_with("text.")
        || rest.starts_with("note.")
        || matches!(key, "description" | "conclusion" | "comment")
    {
        return both(Narrative).then_some("narrative both decisions keep");
    }
    if matches!(
        path,
        "Observation.valueString"
            | "MedicationRequest.dosageInstruction.text"
            | "Goal.description.text"
            | "DocumentReference.content.attachment.title"
    ) {
        return Some("clinical content of the resource");
    }
    if rest.starts_with("content.attachment.") || rest.starts_with("presentedForm.") {
        return both(Attachments).then_some("an attachment both decisions keep");
    }
    None
}

/// The same synthetic patient, its resources stored by a server with their `meta`
/// (versions, instants, the request that wrote them, sync tags and jobs), answered for two
/// recipients in two domains under the shipped policies' obligations, every resource in
/// every answer (the strongest case: each resource in both answers of every pair). Any two
/// answers share only values that link nothing (see [`not_linking`]); the server's record
/// keeping leaves none at all.
#[test]
fn answers_for_other_recipients_or_domains_share_nothing_that_links_them() {
    let (treat, hpaymt) = shipped_decisions();
    let patient = synth::Generator::new(synth::Options {
        seed: 23,
        min_resources: 160,
        max_resources: 160,
        ..synth::Options::default()
    })
    .patient();
    let record: Vec<Value> = patient.bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    assert!(record.iter().all(|r| r["meta"]["versionId"].is_string()));
    let env = env();
    let answers: Vec<(&str, &str, &Obligations, Vec<Value>)> = [
        (ORG_A, "clinical", &treat),
        (ORG_B, "clinical", &treat),
        (ORG_A, "billing", &hpaymt),
        (ORG_B, "billing", &hpaymt),
    ]
    .into_iter()
    .map(|(recipient, domain, obligations)| {
        let ctx = TokenizeContext {
            recipient_org: recipient,
            domain,
            pseudonym_key: &KEY,
            vault: &env.vault,
            now: now(),
        };
        let mut o = obligations.clone();
        o.max_records = None;
        let mut out = apply(record.clone(), &o, &ctx).unwrap().resources;
        if o.shift_dates {
            let days = gateway::dates::offset_days(&KEY, &patient.identity.patient_id, recipient);
            gateway::dates::shift(&mut out, days);
        }
        assert_eq!(out.len(), record.len() - patient.count("Provenance"));
        (recipient, domain, obligations, out)
    })
    .collect();

    // The server's record keeping is gone from every answer: no version, instant, source,
    // tag or job; profiles and HL7 labels only.
    let source_meta: BTreeSet<String> = record
        .iter()
        .flat_map(|r| {
            let m = &r["meta"];
            [
                m["lastUpdated"].as_str(),
                m["source"].as_str(),
                m["tag"][0]["code"].as_str(),
                m["extension"][0]["valueString"].as_str(),
            ]
        })
        .flatten()
        .map(str::to_string)
        .collect();
    assert!(source_meta.len() > record.len());
    for (recipient, domain, _, out) in &answers {
        let text = serde_json::to_string(out).unwrap();
        for v in &source_meta {
            assert!(!text.contains(v.as_str()), "{recipient} {domain}: {v} left");
        }
        for r in out {
            let meta = r["meta"].as_object().unwrap();
            assert!(
                meta.keys().all(|k| k == "profile" || k == "security"),
                "{recipient} {domain}: {r}"
            );
            assert_eq!(r["meta"]["security"][0].as_object().unwrap().len(), 2);
        }
    }

    // Pairwise: every string both answers hold links nothing.
    let leaves: Vec<Vec<(String, Place)>> = answers.iter().map(|a| string_leaves(&a.3)).collect();
    let mut shared_checked = 0;
    let mut failures = Vec::new();
    for i in 0..answers.len() {
        for j in i + 1..answers.len() {
            let (xr, xd, xo, _) = &answers[i];
            let (yr, yd, yo, _) = &answers[j];
            let values =
                |n: usize| -> HashSet<&str> { leaves[n].iter().map(|(v, _)| v.as_str()).collect() };
            let (vx, vy) = (values(i), values(j));
            let shared: HashSet<&str> = vx.intersection(&vy).copied().collect();
            assert!(!shared.is_empty());
            let mut linking = BTreeSet::new();
            for n in [i, j] {
                for (v, place) in &leaves[n] {
                    if !shared.contains(v.as_str()) {
                        continue;
                    }
                    if v.starts_with("p-") || v.starts_with("tok_") {
                        linking.insert(format!("{} = {v:?} (a pseudonym or token)", place.path));
                    } else if not_linking(place, xo, yo).is_none() {
                        linking.insert(format!("{} = {v:?}", place.path));
                    }
                    shared_checked += 1;
                }
            }
            if !linking.is_empty() {
                failures.push(format!(
                    "{xr} {xd} and {yr} {yd} share values that link them:\n{}",
                    linking.into_iter().collect::<Vec<_>>().join("\n")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(shared_checked > 1000, "{shared_checked}");
}
