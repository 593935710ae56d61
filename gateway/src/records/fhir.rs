//! FHIR helpers shared by both record sources: references, compartments, identifiers.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::*;

/// Objects up to this many keys are searched by [`field`] key by key.
const SCAN_KEYS: usize = 12;

/// `obj[key]`, found by comparing keys rather than by hashing `key`.
///
/// serde_json keeps objects in their order here (its `preserve_order` feature, which
/// josekit and ssi turn on for the whole build), in an `IndexMap` that hashes every key
/// looked up with SipHash. FHIR objects hold a handful of keys: comparing them (most
/// differ in length at once) costs less than that one hash, and the tokenizer and the
/// answer look a few keys up in every object of every resource that leaves. Larger
/// objects are looked up by hash.
pub fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if obj.len() > SCAN_KEYS {
        return obj.get(key);
    }
    obj.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
}

/// The `resourceType` of a resource (see [`field`]).
pub fn resource_type(resource: &Value) -> Option<&str> {
    field(resource.as_object()?, "resourceType")?.as_str()
}

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
    // From the end, without collecting the segments: `.../Type/id` or
    // `.../Type/id/_history/version`.
    let mut segments = r.split('/').filter(|s| !s.is_empty()).rev();
    let (last, before) = (segments.next()?, segments.next()?);
    let (ty, id) = if before == "_history" {
        let id = segments.next()?;
        (segments.next()?, id)
    } else {
        (before, last)
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
pub(crate) fn references(value: &Value, out: &mut Vec<(String, String)>) {
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

pub(crate) fn identifier_key(system: &str, value: &str) -> Vec<u8> {
    [system.as_bytes(), &[0], value.as_bytes()].concat()
}

pub(crate) fn member_key(patient: &str, ty: &str, id: &str) -> Vec<u8> {
    [patient.as_bytes(), &[0], ty.as_bytes(), &[0], id.as_bytes()].concat()
}

pub(crate) fn check_types(types: &[String]) -> Result<(), RecordError> {
    match types.iter().find(|t| !is_type_name(t)) {
        Some(t) => Err(RecordError::Invalid {
            what: "resource type",
            detail: format!("{:?}", t.chars().take(64).collect::<String>()),
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_patient_id(id: &str) -> Result<(), RecordError> {
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
pub(crate) fn add_referenced(
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
