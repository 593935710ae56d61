//! What an answer leaves out, said in the answer: one `OperationOutcome` entry
//! (`search.mode = outcome`) listing every requested class that policy withheld, every
//! kind of reference whose target stays behind, and anything else removed on the way out.
//! A requester who gets fewer resources than the record holds can tell why, and a
//! reference that leads nowhere says so in itself (a `data-absent-reason` of `masked`).
//!
//! Notes name resource types, element paths and counts only: never a value from a record.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::records::{field, reference_target, resource_type};
use crate::tokenize::Withheld;

/// The FHIR extension that marks an element whose value is withheld.
pub const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// One thing left out of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// FHIR IssueType: `suppressed` (withheld by policy), `too-costly` (left to a later
    /// page), `informational`.
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath of the element the note is about, when it is one element.
    pub expression: Option<String>,
}

impl Note {
    pub fn suppressed(diagnostics: impl Into<String>) -> Note {
        Note {
            code: "suppressed",
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }
}

/// The Bundle entry of `notes`, or `None` when nothing was left out.
pub fn entry(notes: &[Note]) -> Option<Value> {
    if notes.is_empty() {
        return None;
    }
    let issues: Vec<Value> = notes
        .iter()
        .map(|n| {
            let mut issue = json!({
                "severity": "information",
                "code": n.code,
                "diagnostics": n.diagnostics,
            });
            if let Some(e) = &n.expression {
                issue["expression"] = json!([e]);
            }
            issue
        })
        .collect();
    Some(json!({
        "resource": {"resourceType": "OperationOutcome", "issue": issues},
        "search": {"mode": "outcome"},
    }))
}

/// Elements the tokenizer withheld (attachments it could not scan, or that the decision
/// redacts), one note each: the resource as it leaves, the element's path, the reason code.
pub fn withheld(items: &[Withheld]) -> Vec<Note> {
    items
        .iter()
        .map(|w| {
            let resource = match &w.resource_id {
                Some(id) => format!("{}/{id}", w.resource_type),
                None => w.resource_type.clone(),
            };
            Note {
                code: "suppressed",
                diagnostics: format!("{resource}: {} withheld ({})", w.path, w.reason),
                expression: Some(w.path.clone()),
            }
        })
        .collect()
}

/// Requested classes the decision did not grant, one note each.
pub fn dropped_classes(requested: &[String], granted: &[String]) -> Vec<Note> {
    let granted: HashSet<&str> = granted.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    requested
        .iter()
        .filter(|c| !granted.contains(c.as_str()) && seen.insert(c.as_str()))
        .map(|c| Note {
            code: "suppressed",
            diagnostics: format!("{c} withheld: the decision does not grant this data class"),
            expression: Some(c.clone()),
        })
        .collect()
}

/// The classes the decision redacts that remove whole elements (narrative, attachments),
/// one note each: what an answer lacks because of them is not noted element by element.
pub fn redacted_classes(redact: &[String]) -> Vec<Note> {
    redact
        .iter()
        .filter_map(|c| {
            let what = match c.as_str() {
                "narrative" => "narrative text (text.div, notes and comments)",
                "attachments" => "attachments (their data and urls)",
                _ => return None,
            };
            Some(Note::suppressed(format!(
                "{what} removed: the decision redacts {c}"
            )))
        })
        .collect()
}

/// Marks every literal reference in `resources` whose target is not in `present` (and is
/// not the patient the answer is about) with a `data-absent-reason` of `masked`, and
/// returns one note per target type with the number of such references.
pub fn mark_withheld_references(
    resources: &mut [Value],
    present: &Present,
    patient_id: &str,
) -> Vec<Note> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in resources.iter_mut() {
        mark(r, present, patient_id, &mut counts);
    }
    counts
        .into_iter()
        .map(|(ty, n)| {
            Note::suppressed(format!(
                "{n} reference(s) to {ty} withheld: the target is outside the granted data classes"
            ))
        })
        .collect()
}

fn mark(v: &mut Value, present: &Present, patient_id: &str, counts: &mut BTreeMap<String, usize>) {
    match v {
        Value::Object(o) => {
            // One pass over the entries: the reference is found on the way (no lookup),
            // and the extension added after (never walked: it is where the mark goes).
            let mut withheld = None;
            for (k, child) in o.iter_mut() {
                match (k.as_str(), child) {
                    ("extension", _) => {}
                    ("reference", Value::String(r)) => {
                        withheld = withheld_target(r, present, patient_id).map(str::to_string);
                    }
                    (_, child) => mark(child, present, patient_id, counts),
                }
            }
            if let Some(ty) = withheld {
                *counts.entry(ty).or_default() += 1;
                add_absent_reason(o);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| mark(i, present, patient_id, counts)),
        _ => {}
    }
}

fn withheld_target<'r>(reference: &'r str, present: &Present, patient_id: &str) -> Option<&'r str> {
    let (ty, id) = reference_target(reference)?;
    if ty == "Patient" && id == patient_id {
        return None;
    }
    (!present.contains(ty, id)).then_some(ty)
}

fn add_absent_reason(o: &mut Map<String, Value>) {
    let ext = json!({"url": DATA_ABSENT_REASON, "valueCode": "masked"});
    match o.get_mut("extension") {
        Some(Value::Array(list)) => list.push(ext),
        _ => {
            o.insert("extension".into(), json!([ext]));
        }
    }
}

/// `(type, id)` of every resource of an answer: ids by type, so that a reference is
/// looked up without making strings of its parts.
#[derive(Debug, Default)]
pub struct Present(HashMap<String, HashSet<String>>);

impl Present {
    pub fn of(resources: &[Value]) -> Present {
        let mut present = Present::default();
        present.add(resources);
        present
    }

    pub fn add(&mut self, resources: &[Value]) {
        for r in resources {
            let id = r
                .as_object()
                .and_then(|o| field(o, "id"))
                .and_then(Value::as_str);
            if let (Some(ty), Some(id)) = (resource_type(r), id) {
                self.0
                    .entry(ty.to_string())
                    .or_default()
                    .insert(id.to_string());
            }
        }
    }

    pub fn contains(&self, ty: &str, id: &str) -> bool {
        self.0.get(ty).is_some_and(|ids| ids.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_narrative_and_attachments_are_said() {
        let notes = redacted_classes(&["name".into(), "narrative".into(), "attachments".into()]);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].diagnostics.starts_with("narrative text"));
        assert!(notes[1].diagnostics.ends_with("redacts attachments"));
    }

    #[test]
    fn dropped_classes_are_named_once() {
        let notes = dropped_classes(
            &[
                "Condition".into(),
                "ImagingStudy".into(),
                "ImagingStudy".into(),
                "Goal".into(),
            ],
            &["Condition".into()],
        );
        let text: Vec<&str> = notes.iter().map(|n| n.diagnostics.as_str()).collect();
        assert_eq!(notes.len(), 2, "{text:?}");
        assert!(text[0].starts_with("ImagingStudy withheld"));
        assert!(text[1].starts_with("Goal withheld"));
        assert!(dropped_classes(&["Condition".into()], &["Condition".into()]).is_empty());
    }

    #[test]
    fn withheld_attachments_are_named_by_path_and_reason() {
        let notes = withheld(&[
            Withheld {
                resource_type: "DocumentReference".into(),
                resource_id: Some("p-abc".into()),
                path: "DocumentReference.content[0].attachment.data".into(),
                reason: "attachment-not-scannable",
            },
            Withheld {
                resource_type: "Media".into(),
                resource_id: None,
                path: "Media.content.url".into(),
                reason: "attachment-url-not-scanned",
            },
        ]);
        let e = entry(&notes).unwrap();
        assert_eq!(e["search"]["mode"], "outcome");
        let issues = e["resource"]["issue"].as_array().unwrap();
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0]["severity"], "information");
        assert_eq!(issues[0]["code"], "suppressed");
        assert_eq!(
            issues[0]["diagnostics"],
            "DocumentReference/p-abc: DocumentReference.content[0].attachment.data withheld (attachment-not-scannable)"
        );
        assert_eq!(
            issues[0]["expression"],
            json!(["DocumentReference.content[0].attachment.data"])
        );
        assert_eq!(
            issues[1]["diagnostics"],
            "Media: Media.content.url withheld (attachment-url-not-scanned)"
        );
    }

    #[test]
    fn references_to_what_stays_behind_say_so() {
        let mut resources = vec![
            json!({"resourceType": "DiagnosticReport", "id": "r1",
                   "subject": {"reference": "Patient/p1"},
                   "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}],
                   "performer": [{"reference": "Practitioner/x", "extension": [{"url": "u"}]}]}),
            json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}}),
        ];
        let present = Present::of(&resources);
        let notes = mark_withheld_references(&mut resources, &present, "p1");
        let text: Vec<&str> = notes.iter().map(|n| n.diagnostics.as_str()).collect();
        assert_eq!(
            text,
            [
                "1 reference(s) to Observation withheld: the target is outside the granted data classes",
                "1 reference(s) to Practitioner withheld: the target is outside the granted data classes"
            ]
        );
        let r = &resources[0];
        assert!(r["subject"].get("extension").is_none());
        assert!(r["result"][0].get("extension").is_none());
        assert_eq!(r["result"][1]["extension"][0]["valueCode"], "masked");
        assert_eq!(r["performer"][0]["extension"][1]["url"], DATA_ABSENT_REASON);
        let e = entry(&notes).unwrap();
        assert_eq!(e["search"]["mode"], "outcome");
        assert_eq!(e["resource"]["issue"].as_array().unwrap().len(), 2);
        assert!(entry(&[]).is_none());
    }
}
