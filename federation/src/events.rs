//! Access events: what a gateway reports about every decision it makes.
//!
//! No PHI: the patient appears only as a pseudonym the custodian can map back with its own
//! key, and, where the patient has a DID, as a digest of that DID so that the patient can
//! find their own history across the federation.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The JSON Schema (2020-12) of an [`AccessEvent`] as serialized.
pub const ACCESS_EVENT_SCHEMA: &str = include_str!("../../schemas/access-event.schema.json");

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessEvent {
    /// UUIDv7: time-ordered, unique, the idempotency key end to end.
    pub id: String,
    pub time: DateTime<Utc>,
    pub custodian: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// Pseudonym of the custodian's patient, keyed by the custodian's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<String>,
    /// SHA-256 of the patient's DID, when known from a consent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patient_did_digests: Vec<String>,
    pub domain: String,
    pub purpose: String,
    #[serde(default)]
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub record_count: u64,
    pub decision: Outcome,
    pub decision_id: String,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub policy_digest: String,
    #[serde(default)]
    pub credential_ids: Vec<String>,
    /// The verification check that failed, when the request never reached policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_check: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    #[serde(default)]
    pub review_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl AccessEvent {
    /// A new event id (UUIDv7).
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// The digest under which a patient's DID appears in events.
pub fn patient_did_digest(did: &str) -> String {
    hex::encode(Sha256::digest(did.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// FHIR R4 AuditEvent
// ---------------------------------------------------------------------------------------

/// Code system of the fedgate policy domains (`AuditEvent.subtype`).
pub const FHIR_DOMAIN_SYSTEM: &str = "https://w3id.org/fedgate/fhir/CodeSystem/domain";
/// Identifier system of the custodians' patient pseudonyms.
pub const FHIR_PATIENT_REF_SYSTEM: &str = "https://w3id.org/fedgate/patient-ref";
/// Base of the fedgate extension URLs on exported AuditEvents.
pub const FHIR_EXTENSION_BASE: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const URI_SYSTEM: &str = "urn:ietf:rfc:3986";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// Display of the v3 ActReason PurposeOfUse codes the federation uses.
fn purpose_display(code: &str) -> Option<&'static str> {
    Some(match code {
        "TREAT" => "treatment",
        "ETREAT" => "Emergency Treatment",
        "BTG" => "break the glass",
        "HPAYMT" => "healthcare payment",
        "HOPERAT" => "healthcare operations",
        "HRESCH" => "healthcare research",
        "CAREMGT" => "care management",
        "PUBHLTH" => "public health",
        "HSYSADMIN" => "health system administration",
        "PATRQT" => "patient requested",
        "COVERAGE" => "coverage under policy or program",
        "CLMATTCH" => "claim attachment",
        _ => return None,
    })
}

fn purpose_concept(code: &str) -> Value {
    match purpose_display(code) {
        Some(display) => {
            json!({"coding": [{"system": ACT_REASON, "code": code, "display": display}]})
        }
        // Not a code the federation knows: kept as text, never as a made-up coding.
        None => json!({ "text": code }),
    }
}

fn did_reference(did: &str, resource_type: Option<&str>) -> Value {
    let mut r = json!({"identifier": {"system": URI_SYSTEM, "value": did}});
    if let Some(t) = resource_type {
        r["type"] = json!(t);
    }
    r
}

fn detail(kind: &str, value: impl Into<String>) -> Value {
    json!({"type": kind, "valueString": value.into()})
}

fn extension(name: &str, value_key: &str, value: &str) -> Value {
    json!({"url": format!("{FHIR_EXTENSION_BASE}{name}"), value_key: value})
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The event as a FHIR R4 `AuditEvent` (IHE ATNA style), carrying nothing the event does
/// not carry and leaving out the break-glass justification (free text that may hold PHI).
///
/// - `type`: DCM 110110 "Patient Record" for every event (each is an access decision
///   about one patient's record, whether or not data left the custodian); `subtype`: the
///   policy domain, in the fedgate domain code system ([`FHIR_DOMAIN_SYSTEM`]).
/// - `action`: `E` (execute) for `detokenize`, `U` for `consent` (registering or
///   withdrawing consents), `R` (read) otherwise.
/// - `outcome`: `0` allowed, `4` denied; `outcomeDesc`: the reasons and the failed check.
/// - `purposeOfEvent`: the declared purpose as v3 ActReason, plus `BTG` under break-glass.
/// - `agent`: the requester (`requestor: true`, DCM 110152 "Destination Role ID", always
///   present, without `who` when the requester is unknown), the requester's organization,
///   and the custodian (`requestor: false`, DCM 110153 "Source Role ID"); DIDs are
///   identifiers in the `urn:ietf:rfc:3986` system.
/// - `source`: observed by the custodian's gateway, an application server.
/// - `entity`: the patient (pseudonym as `what.identifier`, DID digests as details) when
///   known, and the requested data (data classes, record count, `break-glass` and
///   `review-required` flags as details).
/// - `extension`: decision id, policy digest, credential ids and expiry, under
///   [`FHIR_EXTENSION_BASE`].
pub fn to_fhir_audit_event(e: &AccessEvent) -> Value {
    let (action, allowed) = (
        match e.domain.as_str() {
            "detokenize" => "E",
            "consent" => "U",
            _ => "R",
        },
        e.decision == Outcome::Allow,
    );
    let mut ae = json!({
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": FHIR_DOMAIN_SYSTEM, "code": e.domain}],
        "action": action,
        "recorded": instant(e.time),
        "outcome": if allowed { "0" } else { "4" },
    });
    // A FHIR id is at most 64 of [A-Za-z0-9.-]; UUIDs always are.
    if !e.id.is_empty()
        && e.id.len() <= 64
        && e.id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        ae["id"] = json!(e.id);
    }

    let mut desc: Vec<String> = e.reasons.clone();
    if let Some(check) = &e.failed_check {
        desc.push(format!("failed check: {check}"));
    }
    if !desc.is_empty() {
        ae["outcomeDesc"] = json!(desc.join("; "));
    }

    // FHIR JSON allows no empty strings nor empty arrays.
    let mut purposes = Vec::new();
    if !e.purpose.is_empty() {
        purposes.push(purpose_concept(&e.purpose));
    }
    if e.break_glass && e.purpose != "BTG" {
        purposes.push(purpose_concept("BTG"));
    }
    if !purposes.is_empty() {
        ae["purposeOfEvent"] = json!(purposes);
    }

    let destination =
        json!({"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]});
    let mut requester = json!({"type": destination, "requestor": true});
    if let Some(did) = &e.requester {
        requester["who"] = did_reference(did, None);
    }
    let mut agents = vec![requester];
    if let Some(org) = &e.requester_org {
        agents.push(json!({
            "type": destination,
            "who": did_reference(org, Some("Organization")),
            "requestor": false,
        }));
    }
    agents.push(json!({
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": did_reference(&e.custodian, Some("Organization")),
        "requestor": false,
    }));
    ae["agent"] = json!(agents);

    ae["source"] = json!({
        "observer": did_reference(&e.custodian, Some("Organization")),
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    });

    let mut entities = Vec::new();
    if e.patient_ref.is_some() || !e.patient_did_digests.is_empty() {
        let mut patient = json!({
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        });
        if let Some(r) = &e.patient_ref {
            patient["what"] =
                json!({"identifier": {"system": FHIR_PATIENT_REF_SYSTEM, "value": r}});
        }
        let digests: Vec<Value> = e
            .patient_did_digests
            .iter()
            .map(|d| detail("patient-did-digest", d.as_str()))
            .collect();
        if !digests.is_empty() {
            patient["detail"] = json!(digests);
        }
        entities.push(patient);
    }
    let mut details: Vec<Value> = e
        .data_classes
        .iter()
        .map(|c| detail("data-class", c.as_str()))
        .collect();
    details.push(detail("record-count", e.record_count.to_string()));
    if e.break_glass {
        details.push(detail("break-glass", "true"));
    }
    if e.review_required {
        details.push(detail("review-required", "true"));
    }
    entities.push(json!({
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        "detail": details,
    }));
    ae["entity"] = json!(entities);

    let mut extensions = Vec::new();
    if !e.decision_id.is_empty() {
        extensions.push(extension("decision-id", "valueString", &e.decision_id));
    }
    if !e.policy_digest.is_empty() {
        extensions.push(extension("policy-digest", "valueString", &e.policy_digest));
    }
    for id in &e.credential_ids {
        extensions.push(extension("credential-id", "valueString", id));
    }
    if let Some(t) = e.expires_at {
        extensions.push(extension("expires-at", "valueDateTime", &instant(t)));
    }
    if !extensions.is_empty() {
        ae["extension"] = json!(extensions);
    }
    ae
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const CUSTODIAN: &str = "did:web:hospital-b.example";
    const ORG: &str = "did:web:hospital-a.example";
    const REQUESTER: &str = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG";
    const PATIENT: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

    fn allow_event() -> AccessEvent {
        AccessEvent {
            id: AccessEvent::new_id(),
            time: "2025-03-01T10:15:30.123456789Z".parse().unwrap(),
            custodian: CUSTODIAN.into(),
            requester_org: Some(ORG.into()),
            requester: Some(REQUESTER.into()),
            patient_ref: Some("pr-3f9a1c".into()),
            patient_did_digests: vec![patient_did_digest(PATIENT)],
            domain: "clinical".into(),
            purpose: "TREAT".into(),
            data_classes: vec!["Observation".into(), "Condition".into()],
            record_count: 12,
            decision: Outcome::Allow,
            decision_id: uuid::Uuid::new_v4().to_string(),
            reasons: vec!["contract-and-consent".into()],
            policy_digest: "ab".repeat(32),
            credential_ids: vec!["urn:uuid:2b7c6f8e-4c1a-4f0e-9a55-0d6a1c3e9b21".into()],
            failed_check: None,
            break_glass: true,
            justification: Some("unconscious patient Jane Doe in the ED".into()),
            review_required: true,
            expires_at: Some("2025-03-01T11:15:30Z".parse().unwrap()),
        }
    }

    /// A deny that never reached policy: no requester, no patient, defaults everywhere.
    fn deny_event() -> AccessEvent {
        AccessEvent {
            id: AccessEvent::new_id(),
            time: Utc::now(),
            custodian: CUSTODIAN.into(),
            requester_org: None,
            requester: None,
            patient_ref: None,
            patient_did_digests: vec![],
            domain: "detokenize".into(),
            purpose: "NOT-A-PURPOSE".into(),
            data_classes: vec![],
            record_count: 0,
            decision: Outcome::Deny,
            decision_id: AccessEvent::new_id(),
            reasons: vec![],
            policy_digest: String::new(),
            credential_ids: vec![],
            failed_check: Some("signature".into()),
            break_glass: false,
            justification: None,
            review_required: false,
            expires_at: None,
        }
    }

    fn schema() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(ACCESS_EVENT_SCHEMA).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    #[test]
    fn serialized_events_validate_against_the_schema() {
        let v = schema();
        for e in [allow_event(), deny_event()] {
            let instance = serde_json::to_value(&e).unwrap();
            let errors: Vec<String> = v.iter_errors(&instance).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{instance}: {errors:?}");
        }
        // Every member the struct serializes is a property of the schema, and back.
        let schema: Value = serde_json::from_str(ACCESS_EVENT_SCHEMA).unwrap();
        let props: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let (allow, deny) = (
            serde_json::to_value(allow_event()).unwrap(),
            serde_json::to_value(deny_event()).unwrap(),
        );
        let members: BTreeSet<&String> = allow
            .as_object()
            .unwrap()
            .keys()
            .chain(deny.as_object().unwrap().keys())
            .collect();
        assert_eq!(props, members);
    }

    #[test]
    fn wrong_events_fail_the_schema() {
        let v = schema();
        let good = serde_json::to_value(allow_event()).unwrap();
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "unknown field",
                Box::new(|e| e["patientName"] = json!("Jane")),
            ),
            ("bad decision", Box::new(|e| e["decision"] = json!("maybe"))),
            (
                "snake case",
                Box::new(|e| {
                    let d = e.as_object_mut().unwrap().remove("decisionId").unwrap();
                    e["decision_id"] = d;
                }),
            ),
            ("bad id", Box::new(|e| e["id"] = json!("42"))),
            ("bad time", Box::new(|e| e["time"] = json!("yesterday"))),
            (
                "custodian not did:web",
                Box::new(|e| e["custodian"] = json!("did:key:z6Mk")),
            ),
            (
                "bad digest",
                Box::new(|e| e["patientDidDigests"] = json!(["ABC"])),
            ),
            ("negative count", Box::new(|e| e["recordCount"] = json!(-1))),
            ("null optional", Box::new(|e| e["requester"] = Value::Null)),
            (
                "missing purpose",
                Box::new(|e| {
                    e.as_object_mut().unwrap().remove("purpose");
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut bad = good.clone();
            mutate(&mut bad);
            assert!(!v.is_valid(&bad), "{name} passed the schema");
        }
        // The schema agrees with serde on the unknown field and the bad decision.
        let mut bad = good.clone();
        bad["patientName"] = json!("Jane");
        assert!(serde_json::from_value::<AccessEvent>(bad).is_err());
        let mut bad = good;
        bad["decision"] = json!("maybe");
        assert!(serde_json::from_value::<AccessEvent>(bad).is_err());
    }

    /// Every string leaf of `v`, with its path.
    fn leaves(v: &Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((path, s.clone())),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    leaves(x, format!("{path}[{i}]"), out)
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    leaves(x, format!("{path}.{k}"), out)
                }
            }
            _ => {}
        }
    }

    /// Every Coding in `v` has a system and a code.
    fn codings_complete(v: &Value) -> usize {
        match v {
            Value::Array(a) => a.iter().map(codings_complete).sum(),
            Value::Object(o) => {
                // An Identifier has a system and a value; anything else with either is a Coding.
                let here = usize::from(
                    o.contains_key("code")
                        || (o.contains_key("system") && !o.contains_key("value")),
                );
                if here == 1 {
                    assert!(o["system"].is_string() && o["code"].is_string(), "{v}");
                }
                here + o.values().map(codings_complete).sum::<usize>()
            }
            _ => 0,
        }
    }

    fn check_required(ae: &Value) {
        assert_eq!(ae["resourceType"], "AuditEvent");
        assert_eq!(ae["type"]["system"], DCM);
        assert!(ae["recorded"].is_string());
        let agents = ae["agent"].as_array().unwrap();
        assert!(agents.iter().all(|a| a["requestor"].is_boolean()));
        assert_eq!(agents.iter().filter(|a| a["requestor"] == true).count(), 1);
        assert!(ae["source"]["observer"]["identifier"]["value"].is_string());
        assert!(codings_complete(ae) >= 4);
        for d in ae["entity"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["detail"].as_array().cloned().unwrap_or_default())
        {
            assert!(d["type"].is_string() && d["valueString"].is_string(), "{d}");
        }
        for x in ae["extension"].as_array().unwrap() {
            assert!(x["url"].as_str().unwrap().starts_with(FHIR_EXTENSION_BASE));
        }
    }

    /// The fixed vocabulary of the mapping: systems, codes, displays, detail types, URLs.
    fn vocabulary() -> BTreeSet<String> {
        let mut v: BTreeSet<String> = [
            "AuditEvent",
            DCM,
            "110110",
            "Patient Record",
            "110152",
            "Destination Role ID",
            "110153",
            "Source Role ID",
            ACT_REASON,
            "BTG",
            "break the glass",
            "treatment",
            URI_SYSTEM,
            "Organization",
            SOURCE_TYPE,
            "4",
            "Application Server",
            ENTITY_TYPE,
            "1",
            "Person",
            "2",
            "System Object",
            OBJECT_ROLE,
            "Patient",
            "Domain Resource",
            FHIR_DOMAIN_SYSTEM,
            FHIR_PATIENT_REF_SYSTEM,
            "patient-did-digest",
            "data-class",
            "record-count",
            "break-glass",
            "review-required",
            "true",
            "R",
            "E",
            "0",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for x in [
            "decision-id",
            "policy-digest",
            "credential-id",
            "expires-at",
        ] {
            v.insert(format!("{FHIR_EXTENSION_BASE}{x}"));
        }
        v
    }

    fn event_values(e: &AccessEvent) -> BTreeSet<String> {
        let mut v: BTreeSet<String> = [
            Some(e.id.clone()),
            Some(e.custodian.clone()),
            e.requester.clone(),
            e.requester_org.clone(),
            e.patient_ref.clone(),
            Some(e.domain.clone()),
            Some(e.purpose.clone()),
            Some(e.decision_id.clone()),
            Some(e.policy_digest.clone()),
            Some(e.record_count.to_string()),
            Some(instant(e.time)),
            e.expires_at.map(instant),
        ]
        .into_iter()
        .flatten()
        .collect();
        v.extend(e.patient_did_digests.iter().cloned());
        v.extend(e.data_classes.iter().cloned());
        v.extend(e.credential_ids.iter().cloned());
        let mut desc = e.reasons.clone();
        desc.extend(e.failed_check.iter().map(|c| format!("failed check: {c}")));
        v.insert(desc.join("; "));
        v
    }

    #[test]
    fn events_convert_to_fhir_audit_events_with_nothing_added() {
        let (vocabulary, allow, deny) = (vocabulary(), allow_event(), deny_event());
        for e in [&allow, &deny] {
            let ae = to_fhir_audit_event(e);
            check_required(&ae);
            let known = event_values(e);
            let mut out = Vec::new();
            leaves(&ae, String::new(), &mut out);
            for (path, s) in out {
                assert!(
                    known.contains(&s) || vocabulary.contains(&s),
                    "{path} = {s:?} is not from the event"
                );
            }
            assert!(!ae.to_string().contains("Jane"), "the justification leaked");
        }

        let ae = to_fhir_audit_event(&allow);
        assert_eq!(ae["id"], allow.id.as_str());
        assert_eq!(ae["action"], "R");
        assert_eq!(ae["outcome"], "0");
        assert_eq!(ae["recorded"], "2025-03-01T10:15:30.123456789Z");
        assert_eq!(ae["subtype"][0]["code"], "clinical");
        assert_eq!(ae["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(ae["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
        assert_eq!(ae["agent"][0]["who"]["identifier"]["value"], REQUESTER);
        assert_eq!(ae["agent"][1]["who"]["identifier"]["value"], ORG);
        assert_eq!(ae["agent"][2]["who"]["identifier"]["value"], CUSTODIAN);
        assert_eq!(ae["agent"][2]["requestor"], false);
        assert_eq!(ae["source"]["observer"]["identifier"]["value"], CUSTODIAN);
        assert_eq!(ae["entity"][0]["what"]["identifier"]["value"], "pr-3f9a1c");
        assert_eq!(ae["entity"][0]["role"]["code"], "1");
        let details = ae["entity"][1]["detail"].to_string();
        assert!(details.contains(r#"{"type":"break-glass","valueString":"true"}"#));
        assert!(details.contains(r#"{"type":"review-required","valueString":"true"}"#));
        assert_eq!(
            ae["extension"][0]["valueString"],
            allow.decision_id.as_str()
        );
        assert_eq!(
            ae["extension"][1]["valueString"],
            allow.policy_digest.as_str()
        );

        let ae = to_fhir_audit_event(&deny);
        assert_eq!((&ae["action"], &ae["outcome"]), (&json!("E"), &json!("4")));
        assert_eq!(ae["outcomeDesc"], "failed check: signature");
        assert_eq!(ae["purposeOfEvent"], json!([{"text": "NOT-A-PURPOSE"}]));
        assert!(ae["agent"][0].get("who").is_none());
        assert_eq!(ae["agent"].as_array().unwrap().len(), 2);
        assert_eq!(ae["entity"].as_array().unwrap().len(), 1);
    }
}
