use chrono::{DateTime, Utc};
use serde_json::json;

use super::classes::{classify_identifier, Action, IdentifierClass};
use super::engine::Engine;
use super::resources::{age_over_89, generalize_address};
use super::scrub::replace_word;
use super::{apply, Obligations, TokenizeContext};
use crate::vault::Vault;

#[test]
fn word_replacement_respects_boundaries_and_case() {
    assert_eq!(
        replace_word("Della is here; della!", "Della").unwrap(),
        "[redacted] is here; [redacted]!"
    );
    assert!(replace_word("Dellas", "Della").is_none());
    assert!(replace_word("100000", "00000").is_none());
    assert_eq!(
        replace_word("zip 00000.", "00000").unwrap(),
        "zip [redacted]."
    );
    assert!(replace_word("Luzón", "Luz").is_none());
    assert_eq!(
        replace_word("née Aragón x", "Aragón").unwrap(),
        "née [redacted] x"
    );
}

#[test]
fn precedence_and_fail_closed_default() {
    let o = Obligations {
        reveal: vec!["name".into()],
        tokenize: vec!["name".into(), "ssn".into()],
        pseudonymize: vec!["ssn".into()],
        generalize: vec!["dates".into()],
        ..Obligations::default()
    };
    assert_eq!(o.action(IdentifierClass::Name), Action::Reveal);
    assert_eq!(o.action(IdentifierClass::Ssn), Action::Tokenize);
    assert_eq!(o.action(IdentifierClass::Dates), Action::Generalize);
    assert_eq!(o.action(IdentifierClass::Mrn), Action::Redact);
    assert_eq!(o.action(IdentifierClass::PatientId), Action::Redact);
    assert_eq!(o.action(IdentifierClass::Narrative), Action::Keep);
    assert_eq!(o.action(IdentifierClass::ResourceIds), Action::Keep);
}

#[test]
fn unknown_class_fails_validation_and_unknown_field_parsing() {
    let typo = Obligations {
        reveal: vec!["nmae".into()],
        ..Obligations::default()
    };
    assert_eq!(
        typo.validate(),
        Err(crate::policy::UnknownClass("nmae".into()))
    );
    let mut doc = serde_json::to_value(Obligations::default()).unwrap();
    assert!(serde_json::from_value::<Obligations>(doc.clone()).is_ok());
    doc["revael"] = json!([]);
    assert!(serde_json::from_value::<Obligations>(doc).is_err());
    // A decision that leaves a list out is malformed, not one that names nothing.
    assert!(serde_json::from_value::<Obligations>(json!({})).is_err());
}

#[test]
fn identifier_classes() {
    let mk = |code: &str, system: &str| json!({"type": {"coding": [{"code": code}]}, "system": system, "value": "x"});
    assert_eq!(
        classify_identifier(&mk("MR", "urn:a")),
        IdentifierClass::Mrn
    );
    assert_eq!(
        classify_identifier(&mk("", "http://hl7.org/fhir/sid/us-ssn")),
        IdentifierClass::Ssn
    );
    assert_eq!(
        classify_identifier(&mk("PPN", "urn:a")),
        IdentifierClass::Passport
    );
    assert_eq!(
        classify_identifier(&mk("", "http://example.org/passportNumber")),
        IdentifierClass::Passport
    );
    assert_eq!(
        classify_identifier(&mk("DL", "urn:a")),
        IdentifierClass::DriversLicense
    );
    assert_eq!(
        classify_identifier(&json!({"value": "1"})),
        IdentifierClass::OtherIdentifiers
    );
}

#[test]
fn ages_and_zip3() {
    let now = DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(age_over_89("1936-11-29", now), Some(false));
    assert_eq!(age_over_89("1936-11-28", now), Some(true));
    assert_eq!(age_over_89("1937", now), Some(false));
    assert_eq!(age_over_89("1936", now), Some(true));
    assert_eq!(age_over_89("garbage", now), None);
    let mut a = json!({"line": ["1 Main"], "city": "X", "state": "NH", "postalCode": "03601-1234",
        "extension": [{"url": "geo"}], "text": "t", "district": "d"});
    generalize_address(a.as_object_mut().unwrap());
    assert_eq!(a, json!({"state": "NH", "postalCode": "000"}));
    let mut a = json!({"state": "MA", "postalCode": "02139"});
    generalize_address(a.as_object_mut().unwrap());
    assert_eq!(a, json!({"state": "MA", "postalCode": "021"}));
}

fn context_parts() -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let vault = Vault::open(db.open_tree("v").unwrap(), [1u8; 32]);
    (dir, vault)
}

#[test]
fn contained_resources_keep_local_ids_and_lose_names() {
    let (_d, vault) = context_parts();
    let key = [0u8; 32];
    let ctx = TokenizeContext {
        recipient_org: "did:web:b",
        domain: "clinical",
        pseudonym_key: &key,
        vault: &vault,
        now: Utc::now(),
    };
    let obs = json!({"resourceType": "Observation", "id": "o1",
        "contained": [{"resourceType": "RelatedPerson", "id": "rp",
                       "name": [{"family": "Kowalczyk", "given": ["Irena"]}],
                       "telecom": [{"system": "phone", "value": "555-123-4567"}]}],
        "performer": [{"reference": "#rp", "display": "Irena Kowalczyk"}],
        "extension": [{"url": "x", "valueReference": {"reference": "Patient/zz", "display": "Kowalczyk"}}]});
    let o = Obligations {
        pseudonymize: vec!["resource-ids".into()],
        ..Obligations::default()
    };
    let out = apply(vec![obs], &o, &ctx).unwrap();
    let text = serde_json::to_string(&out).unwrap();
    assert!(
        !text.contains("Kowalczyk") && !text.contains("Irena") && !text.contains("555-123"),
        "{text}"
    );
    assert_eq!(out[0]["contained"][0]["id"], "rp");
    assert_eq!(out[0]["performer"][0]["reference"], "#rp");
    assert!(out[0]["id"].as_str().unwrap().starts_with("p-"));
    assert_eq!(
        out[0]["extension"],
        json!([{"url": "x"}]),
        "patient-id redacted: the reference goes"
    );
}

#[test]
fn reference_forms() {
    let engine_ctx_key = [0u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let vault = Vault::open(db.open_tree("v").unwrap(), [1u8; 32]);
    let ctx = TokenizeContext {
        recipient_org: "did:web:b",
        domain: "clinical",
        pseudonym_key: &engine_ctx_key,
        vault: &vault,
        now: Utc::now(),
    };
    let o = Obligations::default();
    let resources = vec![json!({"resourceType": "Patient", "id": "p1"})];
    let e = Engine::new(&o, &ctx, &resources);
    assert_eq!(
        e.parse_reference("Patient/p1"),
        Some(("Patient".into(), "p1".into()))
    );
    assert_eq!(
        e.parse_reference("urn:uuid:p1"),
        Some(("Patient".into(), "p1".into()))
    );
    assert_eq!(
        e.parse_reference("https://fhir.example/r4/Observation/o1/_history/3"),
        Some(("Observation".into(), "o1".into()))
    );
    assert_eq!(e.parse_reference("Patient?identifier=a|b"), None);
    assert_eq!(e.parse_reference("urn:uuid:unknown"), None);
    assert_eq!(e.parse_reference("garbage"), None);
}
