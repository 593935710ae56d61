//! Example credentials of the three types, checked against the bundled JSON Schemas and
//! the fedgate JSON-LD context. The valid examples double as fixtures for other tests.
#![cfg(test)]

use serde_json::{json, Value};

pub(crate) const CLINICIAN_PRIVILEGE_SCHEMA: &str =
    include_str!("../../schemas/clinician-privilege.schema.json");
pub(crate) const PATIENT_CONSENT_SCHEMA: &str =
    include_str!("../../schemas/patient-consent.schema.json");
pub(crate) const RESEARCH_STUDY_SCHEMA: &str =
    include_str!("../../schemas/research-study.schema.json");
const FEDGATE_CONTEXT: &str = include_str!("../../schemas/context-v1.jsonld");

pub(crate) const ISSUER: &str = "did:web:hospital-a.example";
pub(crate) const CLINICIAN: &str = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG";
pub(crate) const PATIENT: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
pub(crate) const HOSPITAL_B: &str = "did:web:hospital-b.example";
pub(crate) const STUDY: &str = "urn:fedgate:study:diabetes-outcomes-2025";

/// A valid unsigned ClinicianPrivilegeCredential.
pub(crate) fn clinician_privilege_example() -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "id": "urn:uuid:2b7c6f8e-4c1a-4f0e-9a55-0d6a1c3e9b21",
        "type": ["VerifiableCredential", "ClinicianPrivilegeCredential"],
        "issuer": ISSUER,
        "validFrom": "2025-01-01T00:00:00Z",
        "validUntil": "2026-01-01T00:00:00Z",
        "credentialSubject": {
            "id": CLINICIAN,
            "name": "Dr. Ana Example",
            "npi": "1234567893",
            "role": "physician",
            "specialty": "207R00000X",
            "organization": ISSUER,
            "privileges": [
                {"facility": ISSUER, "domains": ["clinical"], "actions": ["read", "detokenize"]},
                {"facility": HOSPITAL_B, "domains": ["clinical", "research"], "actions": ["query"]}
            ]
        },
        "credentialStatus": {
            "id": "https://hospital-a.example/status/1#94567",
            "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation",
            "statusListIndex": "94567",
            "statusListCredential": "https://hospital-a.example/status/1"
        }
    })
}

/// A valid unsigned PatientConsentCredential.
pub(crate) fn patient_consent_example() -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "id": "urn:uuid:5f1c2f5e-8b2b-4a36-9d3e-2c9f3c1d7a10",
        "type": ["VerifiableCredential", "PatientConsentCredential"],
        "issuer": ISSUER,
        "validFrom": "2025-01-01T00:00:00Z",
        "credentialSubject": {
            "id": PATIENT,
            "patientIdentifiers": [
                {"custodian": ISSUER, "system": "urn:oid:2.16.840.1.113883.3.1001", "value": "MRN-000123"},
                {"custodian": HOSPITAL_B, "system": "https://hospital-b.example/fhir/mrn", "value": "B-77-0042"}
            ],
            "custodians": [ISSUER, HOSPITAL_B],
            "grantee": {"id": STUDY, "kind": "study"},
            "provision": "permit",
            "domains": ["clinical", "research"],
            "purposes": ["HRESCH"],
            "dataClasses": ["Observation", "Condition"],
            "period": {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
        }
    })
}

/// A valid unsigned ResearchStudyCredential.
pub(crate) fn research_study_example() -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
        "id": "urn:uuid:9e0d4a52-61f3-4d0b-8f6c-7b3f2a1e5c88",
        "type": ["VerifiableCredential", "ResearchStudyCredential"],
        "issuer": ISSUER,
        "validFrom": "2025-01-01T00:00:00Z",
        "validUntil": "2027-01-01T00:00:00Z",
        "credentialSubject": {
            "id": STUDY,
            "title": "Diabetes outcomes across two hospitals",
            "sponsor": ISSUER,
            "irb": "IRB-2024-0117",
            "purposes": ["HRESCH"],
            "dataClasses": ["Observation", "Condition", "MedicationRequest"],
            "aggregateOnly": true,
            "minCellSize": 11
        }
    })
}

fn validator(src: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(src).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Applies `edit` to a copy of `example` and asserts the schema rejects the result.
fn assert_rejected(src: &str, example: &Value, what: &str, edit: impl FnOnce(&mut Value)) {
    let mut instance = example.clone();
    edit(&mut instance);
    assert!(
        !errors(&validator(src), &instance).is_empty(),
        "schema accepted {what}: {instance}"
    );
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().expect("object").remove(key);
}

fn all() -> [(&'static str, Value); 3] {
    [
        (CLINICIAN_PRIVILEGE_SCHEMA, clinician_privilege_example()),
        (PATIENT_CONSENT_SCHEMA, patient_consent_example()),
        (RESEARCH_STUDY_SCHEMA, research_study_example()),
    ]
}

#[test]
fn valid_examples_pass() {
    for (src, example) in all() {
        assert_eq!(errors(&validator(src), &example), Vec::<String>::new());
    }
}

#[test]
fn signed_examples_pass() {
    for (src, mut example) in all() {
        example["proof"] = json!({
            "type": "DataIntegrityProof",
            "cryptosuite": "eddsa-rdfc-2022",
            "created": "2025-01-01T00:00:00Z",
            "verificationMethod": "did:web:hospital-a.example#key-1",
            "proofPurpose": "assertionMethod",
            "proofValue": "z3FXQjecWufY46yg5abdVZsXqLhxhueuSoZgNSARiKBk9czhSePTFehP8c3PGfb6a22gkfUKKiUKPqbPjb6yVaHPM"
        });
        example["credentialSchema"] = json!({
            "id": "https://w3id.org/fedgate/schemas/example.schema.json",
            "type": "JsonSchema"
        });
        assert_eq!(errors(&validator(src), &example), Vec::<String>::new());
    }
}

#[test]
fn common_envelope_violations_fail() {
    for (src, example) in all() {
        assert_rejected(src, &example, "an unknown top-level field", |v| {
            v["evidence"] = json!([{"type": "Note"}]);
        });
        assert_rejected(src, &example, "a missing VerifiableCredential type", |v| {
            v["type"] = json!(["PatientConsentCredential"]);
        });
        assert_rejected(src, &example, "contexts in the wrong order", |v| {
            v["@context"] = json!([
                "https://w3id.org/fedgate/v1",
                "https://www.w3.org/ns/credentials/v2"
            ]);
        });
        assert_rejected(src, &example, "no fedgate context", |v| {
            v["@context"] = json!(["https://www.w3.org/ns/credentials/v2"]);
        });
        assert_rejected(
            src,
            &example,
            "an issuer that is not did:key or did:web",
            |v| {
                v["issuer"] = json!("https://hospital-a.example");
            },
        );
        assert_rejected(src, &example, "a date without a time", |v| {
            v["validFrom"] = json!("2025-01-01");
        });
        assert_rejected(src, &example, "a missing validFrom", |v| {
            remove(v, "validFrom")
        });
        assert_rejected(src, &example, "a status entry of another type", |v| {
            v["credentialStatus"] = json!({
                "type": "StatusList2021Entry",
                "statusPurpose": "revocation",
                "statusListIndex": "1",
                "statusListCredential": "https://hospital-a.example/status/1"
            });
        });
        assert_rejected(src, &example, "a non-numeric status index", |v| {
            v["credentialStatus"] = json!({
                "type": "BitstringStatusListEntry",
                "statusPurpose": "revocation",
                "statusListIndex": "1a",
                "statusListCredential": "https://hospital-a.example/status/1"
            });
        });
        assert_rejected(src, &example, "an unknown subject field", |v| {
            v["credentialSubject"]["email"] = json!("someone@example.org");
        });
    }
}

#[test]
fn invalid_clinician_privileges_fail() {
    let src = CLINICIAN_PRIVILEGE_SCHEMA;
    let ex = clinician_privilege_example();
    assert_rejected(src, &ex, "a bad role", |v| {
        v["credentialSubject"]["role"] = json!("surgeon-in-chief");
    });
    assert_rejected(src, &ex, "a missing npi", |v| {
        remove(&mut v["credentialSubject"], "npi");
    });
    assert_rejected(src, &ex, "a 9-digit npi", |v| {
        v["credentialSubject"]["npi"] = json!("123456789");
    });
    assert_rejected(src, &ex, "a specialty that is not a NUCC code", |v| {
        v["credentialSubject"]["specialty"] = json!("cardiology");
    });
    assert_rejected(src, &ex, "an empty name", |v| {
        v["credentialSubject"]["name"] = json!("");
    });
    assert_rejected(src, &ex, "no privileges", |v| {
        v["credentialSubject"]["privileges"] = json!([]);
    });
    assert_rejected(src, &ex, "a bad privilege domain", |v| {
        v["credentialSubject"]["privileges"][0]["domains"] = json!(["genomic"]);
    });
    assert_rejected(src, &ex, "a repeated privilege domain", |v| {
        v["credentialSubject"]["privileges"][0]["domains"] = json!(["clinical", "clinical"]);
    });
    assert_rejected(src, &ex, "a bad action", |v| {
        v["credentialSubject"]["privileges"][0]["actions"] = json!(["write"]);
    });
    assert_rejected(src, &ex, "a privilege without a facility", |v| {
        remove(&mut v["credentialSubject"]["privileges"][1], "facility");
    });
    assert_rejected(src, &ex, "the wrong credential type", |v| {
        v["type"] = json!(["VerifiableCredential", "PatientConsentCredential"]);
    });
}

#[test]
fn invalid_patient_consents_fail() {
    let src = PATIENT_CONSENT_SCHEMA;
    let ex = patient_consent_example();
    assert_rejected(src, &ex, "a bad provision", |v| {
        v["credentialSubject"]["provision"] = json!("allow");
    });
    assert_rejected(src, &ex, "a missing grantee", |v| {
        remove(&mut v["credentialSubject"], "grantee");
    });
    assert_rejected(src, &ex, "a wildcard data class", |v| {
        v["credentialSubject"]["dataClasses"] = json!(["*"]);
    });
    assert_rejected(src, &ex, "a purpose outside PurposeOfUse", |v| {
        v["credentialSubject"]["purposes"] = json!(["MARKETING"]);
    });
    assert_rejected(src, &ex, "no purposes", |v| {
        v["credentialSubject"]["purposes"] = json!([]);
    });
    assert_rejected(src, &ex, "a study grantee named by a DID", |v| {
        v["credentialSubject"]["grantee"]["id"] = json!(CLINICIAN);
    });
    assert_rejected(src, &ex, "a clinician grantee named by a study id", |v| {
        v["credentialSubject"]["grantee"] = json!({"id": STUDY, "kind": "clinician"});
    });
    assert_rejected(src, &ex, "a period without a start", |v| {
        remove(&mut v["credentialSubject"]["period"], "start");
    });
    assert_rejected(src, &ex, "an identifier value over 64 characters", |v| {
        v["credentialSubject"]["patientIdentifiers"][0]["value"] = json!("9".repeat(65));
    });
    assert_rejected(src, &ex, "no custodians", |v| {
        v["credentialSubject"]["custodians"] = json!([]);
    });
    assert_rejected(src, &ex, "a patient name", |v| {
        v["credentialSubject"]["name"] = json!("Jane Doe");
    });
}

#[test]
fn invalid_research_studies_fail() {
    let src = RESEARCH_STUDY_SCHEMA;
    let ex = research_study_example();
    assert_rejected(src, &ex, "a purpose outside PurposeOfUse", |v| {
        v["credentialSubject"]["purposes"] = json!(["RESEARCH"]);
    });
    assert_rejected(src, &ex, "a missing sponsor", |v| {
        remove(&mut v["credentialSubject"], "sponsor");
    });
    assert_rejected(src, &ex, "a missing validUntil", |v| {
        remove(v, "validUntil")
    });
    assert_rejected(src, &ex, "a minCellSize of 0", |v| {
        v["credentialSubject"]["minCellSize"] = json!(0);
    });
    assert_rejected(src, &ex, "a fractional minCellSize", |v| {
        v["credentialSubject"]["minCellSize"] = json!(5.5);
    });
    assert_rejected(src, &ex, "a study id outside urn:fedgate:study:", |v| {
        v["credentialSubject"]["id"] = json!("urn:uuid:9e0d4a52-61f3-4d0b-8f6c-7b3f2a1e5c88");
    });
    assert_rejected(src, &ex, "a study id over 256 characters", |v| {
        v["credentialSubject"]["id"] = json!(format!("urn:fedgate:study:{}", "x".repeat(239)));
    });
    assert_rejected(src, &ex, "aggregateOnly as a string", |v| {
        v["credentialSubject"]["aggregateOnly"] = json!("true");
    });
    assert_rejected(src, &ex, "a wildcard data class", |v| {
        v["credentialSubject"]["dataClasses"] = json!(["*"]);
    });
    for (what, eps) in [
        ("an epsilonBudget of 0", json!(0)),
        ("a negative epsilonBudget", json!(-1)),
        ("an epsilonBudget over 100", json!(1000)),
        ("an epsilonBudget as a string", json!("2")),
    ] {
        assert_rejected(src, &ex, what, |v| {
            v["credentialSubject"]["epsilonBudget"] = eps;
        });
    }
}

#[test]
fn a_study_may_cap_its_privacy_budget() {
    let mut study = research_study_example();
    study["credentialSubject"]["epsilonBudget"] = json!(2.5);
    assert_eq!(
        errors(&validator(RESEARCH_STUDY_SCHEMA), &study),
        Vec::<String>::new()
    );
    let subject: crate::credentials::StudySubject =
        serde_json::from_value(study["credentialSubject"].clone()).unwrap();
    assert_eq!(subject.epsilon_budget, Some(2.5));
}

#[test]
fn optional_fields_may_be_absent() {
    let mut study = research_study_example();
    remove(&mut study["credentialSubject"], "irb");
    remove(&mut study, "id");
    assert_eq!(
        errors(&validator(RESEARCH_STUDY_SCHEMA), &study),
        Vec::<String>::new()
    );

    let mut consent = patient_consent_example();
    remove(&mut consent["credentialSubject"]["period"], "end");
    remove(&mut consent, "id");
    assert_eq!(
        errors(&validator(PATIENT_CONSENT_SCHEMA), &consent),
        Vec::<String>::new()
    );
}

/// Every entry of every `properties` map carries a `description`.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    match schema {
        Value::Object(o) => {
            let in_condition = ["/if", "/then", "/else"].iter().any(|c| path.contains(c));
            if let Some(Value::Object(props)) = o.get("properties") {
                for (name, prop) in props {
                    if !in_condition && prop.get("description").is_none() {
                        out.push(format!("{path}/properties/{name}"));
                    }
                }
            }
            for (k, v) in o {
                undocumented(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                undocumented(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_property_is_described() {
    for (src, _) in all() {
        let schema: Value = serde_json::from_str(src).expect("schema is JSON");
        let mut missing = Vec::new();
        undocumented(&schema, "", &mut missing);
        assert_eq!(missing, Vec::<String>::new());
    }
}

/// Terms the W3C VC 2.0 context defines, which the fedgate context must not redefine.
const V2_TERMS: [&str; 22] = [
    "id",
    "type",
    "name",
    "description",
    "digestMultibase",
    "digestSRI",
    "mediaType",
    "issuer",
    "validFrom",
    "validUntil",
    "credentialSubject",
    "credentialStatus",
    "credentialSchema",
    "proof",
    "evidence",
    "termsOfUse",
    "refreshService",
    "relatedResource",
    "renderMethod",
    "confidenceMethod",
    "holder",
    "verifiableCredential",
];

fn context_terms() -> serde_json::Map<String, Value> {
    let context: Value = serde_json::from_str(FEDGATE_CONTEXT).expect("context is JSON");
    context["@context"]
        .as_object()
        .expect("@context is an object")
        .clone()
}

#[test]
fn context_is_protected_1_1_without_vocab() {
    let terms = context_terms();
    assert_eq!(terms.get("@version"), Some(&json!(1.1)));
    assert_eq!(terms.get("@protected"), Some(&json!(true)));
    assert!(!terms.contains_key("@vocab"));
    for term in V2_TERMS {
        assert!(!terms.contains_key(term), "{term} is redefined");
    }
    for (term, iri) in terms.iter().filter(|(t, _)| !t.starts_with('@')) {
        assert_eq!(iri, &json!(format!("https://w3id.org/fedgate#{term}")));
    }
}

/// Property names used anywhere inside `v`.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                out.push(k.clone());
                keys(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|child| keys(child, out)),
        _ => {}
    }
}

#[test]
fn context_defines_every_subject_term_and_type() {
    let terms = context_terms();
    for (_, example) in all() {
        let mut used = Vec::new();
        keys(&example["credentialSubject"], &mut used);
        for key in used {
            assert!(
                terms.contains_key(&key)
                    || ["id", "type", "name", "description"].contains(&key.as_str()),
                "{key} is not defined by any context"
            );
        }
        let specific = example["type"][1].as_str().expect("type");
        assert!(terms.contains_key(specific), "{specific} is not defined");
    }
}
