//! The OperationOutcome a searchset Bundle carries to say what was withheld from it and why
//! (`search.mode = outcome`). Its issues name elements and reason codes, never values.

use serde_json::{json, Value};

use crate::tokenize::Withheld;

/// One `information` / `suppressed` issue per withheld element; `None` when nothing was
/// withheld.
pub fn withheld_outcome(withheld: &[Withheld]) -> Option<Value> {
    if withheld.is_empty() {
        return None;
    }
    let issues: Vec<Value> = withheld
        .iter()
        .map(|w| {
            let resource = match &w.resource_id {
                Some(id) => format!("{}/{id}", w.resource_type),
                None => w.resource_type.clone(),
            };
            json!({
                "severity": "information",
                "code": "suppressed",
                "details": {"coding": [{
                    "system": "https://w3id.org/fedgate/fhir/CodeSystem/withheld-reason",
                    "code": w.reason,
                }]},
                "diagnostics": format!("{resource}: {} withheld ({})", w.path, w.reason),
                "expression": [w.path],
            })
        })
        .collect();
    Some(json!({"resourceType": "OperationOutcome", "issue": issues}))
}

/// The Bundle entry holding [`withheld_outcome`], if anything was withheld.
pub fn withheld_entry(withheld: &[Withheld]) -> Option<Value> {
    withheld_outcome(withheld).map(|oo| json!({"resource": oo, "search": {"mode": "outcome"}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_suppressed_issue_per_withheld_element() {
        assert!(withheld_entry(&[]).is_none());
        let entry = withheld_entry(&[
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
        ])
        .unwrap();
        assert_eq!(entry["search"]["mode"], "outcome");
        let oo = &entry["resource"];
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let issues = oo["issue"].as_array().unwrap();
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
}
