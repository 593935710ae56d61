//! PatientConsentCredential to and from a FHIR R4 `Consent` resource.
//!
//! Both directions go through one set of parsed consent terms, so what one direction
//! writes the other reads back unchanged. The mapping is strict on the way in: a FHIR
//! element that would narrow or change the consent (nested provisions, `provision.action`,
//! `provision.data`, modifier extensions, recipients other than the grantee) is refused
//! rather than dropped, because dropping a restriction would widen what a credential
//! permits. The field-by-field table is in `docs/consent-mapping.md`.

use chrono::DateTime;
use serde_json::{json, Map, Value};

/// Extension on `Consent` carrying one fedgate data domain as `valueCode`.
const DOMAINS_EXTENSION: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/consent-domains";
/// Extension on `Consent` carrying a patient identifier beyond the first, as `valueIdentifier`
/// whose `assigner` names the custodian.
const PATIENT_IDENTIFIER_EXTENSION: &str =
    "https://w3id.org/fedgate/fhir/StructureDefinition/consent-patient-identifier";
/// `Identifier.system` for identifiers that are URIs: DIDs, study ids, credential ids.
const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const LOINC_SYSTEM: &str = "http://loinc.org";
const PATIENT_CONSENT_LOINC: &str = "59284-0";
const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PARTICIPATION_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
const STUDY_PREFIX: &str = "urn:fedgate:study:";

/// HL7 v3 PurposeOfUse codes a consent may name.
pub const PURPOSES: [&str; 12] = [
    "TREAT",
    "ETREAT",
    "BTG",
    "HPAYMT",
    "HOPERAT",
    "HRESCH",
    "CAREMGT",
    "PUBHLTH",
    "HSYSADMIN",
    "PATRQT",
    "COVERAGE",
    "CLMATTCH",
];

/// fedgate data domains.
const DOMAINS: [&str; 3] = ["clinical", "billing", "research"];

const SUBJECT_FIELDS: [&str; 9] = [
    "id",
    "patientIdentifiers",
    "custodians",
    "grantee",
    "provision",
    "domains",
    "purposes",
    "dataClasses",
    "period",
];

/// `Consent.provision` elements the mapping understands; any other is refused.
const PROVISION_FIELDS: [&str; 7] = [
    "id",
    "extension",
    "type",
    "period",
    "actor",
    "purpose",
    "class",
];

/// Why a credential or a `Consent` could not be mapped. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentMappingError {
    /// The input (named) is not a JSON object.
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    /// The credential's `type` does not include `PatientConsentCredential`.
    #[error("type: the credential is not a PatientConsentCredential")]
    NotAConsentCredential,
    /// `resourceType` is absent or not `Consent`.
    #[error("resourceType: found {found}, expected \"Consent\"")]
    NotAConsent {
        /// The `resourceType` found, as JSON.
        found: String,
    },
    /// A required field is absent (or null).
    #[error("{field}: missing")]
    Missing {
        /// Path of the field, such as `provision.type`.
        field: String,
    },
    /// A field is present but its value is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A coding uses a code system the mapping does not accept in that place.
    #[error("{field}: unknown code system {system:?}")]
    UnknownSystem {
        /// Path of the coding's `system`.
        field: String,
        /// The system found.
        system: String,
    },
    /// A field the mapping cannot represent, and which cannot be dropped without changing
    /// the meaning of the consent.
    #[error("{field}: not supported by the consent mapping")]
    Unsupported {
        /// Path of the field.
        field: String,
    },
}

type Error = ConsentMappingError;
type Obj = Map<String, Value>;

fn missing(field: impl Into<String>) -> Error {
    Error::Missing {
        field: field.into(),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn field<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a Value, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(missing(join(path, key))),
        Some(v) => Ok(v),
    }
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, Error> {
    v.as_object()
        .ok_or_else(|| invalid(path, "expected an object"))
}

fn as_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, Error> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid(path, "expected a non-empty string")),
        None => Err(invalid(path, "expected a string")),
    }
}

fn as_array<'a>(v: &'a Value, path: &str) -> Result<&'a [Value], Error> {
    match v.as_array() {
        Some(a) if !a.is_empty() => Ok(a.as_slice()),
        Some(_) => Err(invalid(path, "expected a non-empty array")),
        None => Err(invalid(path, "expected an array")),
    }
}

fn req_object<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a Obj, Error> {
    as_object(field(obj, key, path)?, &join(path, key))
}

fn req_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a str, Error> {
    as_str(field(obj, key, path)?, &join(path, key))
}

fn req_array<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a [Value], Error> {
    as_array(field(obj, key, path)?, &join(path, key))
}

fn opt_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_str(v, &join(path, key)).map(Some),
    }
}

fn reject_unknown(obj: &Obj, allowed: &[&str], path: &str) -> Result<(), Error> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(join(path, k), "unknown field")),
        None => Ok(()),
    }
}

fn check_did(s: &str, path: &str) -> Result<(), Error> {
    let method_and_id = s.strip_prefix("did:").unwrap_or_default();
    let well_formed = method_and_id
        .split_once(':')
        .is_some_and(|(method, id)| !method.is_empty() && !id.is_empty())
        && !s.chars().any(char::is_whitespace);
    if well_formed {
        Ok(())
    } else {
        Err(invalid(path, "expected a DID"))
    }
}

fn did_at(obj: &Obj, key: &str, path: &str) -> Result<String, Error> {
    let s = req_str(obj, key, path)?;
    check_did(s, &join(path, key))?;
    Ok(s.to_string())
}

fn check_date_time(s: &str, path: &str) -> Result<(), Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|_| ())
        .map_err(|_| invalid(path, "expected an RFC 3339 date-time with a time zone"))
}

fn check_code(s: &str, allowed: &[&str], path: &str) -> Result<(), Error> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(invalid(path, format!("unknown code {s:?}")))
    }
}

fn check_data_class(s: &str, path: &str) -> Result<(), Error> {
    let mut chars = s.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && s.len() >= 2
        && chars.all(|c| c.is_ascii_alphabetic());
    if well_formed {
        Ok(())
    } else {
        Err(invalid(path, "expected a FHIR resource type name"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProvisionType {
    Permit,
    Deny,
}

impl ProvisionType {
    fn parse(s: &str, path: &str) -> Result<Self, Error> {
        match s {
            "permit" => Ok(Self::Permit),
            "deny" => Ok(Self::Deny),
            other => Err(invalid(
                path,
                format!("expected permit or deny, found {other:?}"),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::Deny => "deny",
        }
    }

    fn policy_rule(self) -> &'static str {
        match self {
            Self::Permit => "OPTIN",
            Self::Deny => "OPTOUT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GranteeKind {
    Clinician,
    Organization,
    Study,
}

impl GranteeKind {
    fn parse(s: &str, path: &str) -> Result<Self, Error> {
        match s {
            "clinician" => Ok(Self::Clinician),
            "organization" => Ok(Self::Organization),
            "study" => Ok(Self::Study),
            other => Err(invalid(
                path,
                format!("expected clinician, organization or study, found {other:?}"),
            )),
        }
    }

    fn from_fhir_type(s: &str, path: &str) -> Result<Self, Error> {
        match s {
            "Practitioner" => Ok(Self::Clinician),
            "Organization" => Ok(Self::Organization),
            "ResearchStudy" => Ok(Self::Study),
            other => Err(invalid(
                path,
                format!("expected Practitioner, Organization or ResearchStudy, found {other:?}"),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Clinician => "clinician",
            Self::Organization => "organization",
            Self::Study => "study",
        }
    }

    fn fhir_type(self) -> &'static str {
        match self {
            Self::Clinician => "Practitioner",
            Self::Organization => "Organization",
            Self::Study => "ResearchStudy",
        }
    }

    fn check_id(self, id: &str, path: &str) -> Result<(), Error> {
        match self {
            Self::Study => {
                let rest = id.strip_prefix(STUDY_PREFIX).unwrap_or_default();
                let well_formed = !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if well_formed {
                    Ok(())
                } else {
                    Err(invalid(path, "expected a study id urn:fedgate:study:..."))
                }
            }
            Self::Clinician | Self::Organization => check_did(id, path),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PatientIdentifier {
    custodian: String,
    system: String,
    value: String,
}

/// The terms of a consent, as both representations carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsentTerms {
    patient: String,
    identifiers: Vec<PatientIdentifier>,
    custodians: Vec<String>,
    grantee_id: String,
    grantee_kind: GranteeKind,
    provision: ProvisionType,
    domains: Vec<String>,
    purposes: Vec<String>,
    data_classes: Vec<String>,
    start: String,
    end: Option<String>,
}

fn check_period(start: &str, end: Option<&str>, path: &str) -> Result<(), Error> {
    check_date_time(start, &join(path, "start"))?;
    if let Some(end) = end {
        let end_path = join(path, "end");
        check_date_time(end, &end_path)?;
        let before = match (
            DateTime::parse_from_rfc3339(start),
            DateTime::parse_from_rfc3339(end),
        ) {
            (Ok(s), Ok(e)) => e < s,
            _ => false,
        };
        if before {
            return Err(invalid(end_path, "ends before the period starts"));
        }
    }
    Ok(())
}

fn strings<F>(items: &[Value], path: &str, check: F) -> Result<Vec<String>, Error>
where
    F: Fn(&str, &str) -> Result<(), Error>,
{
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_path = format!("{path}[{i}]");
            let s = as_str(item, &item_path)?;
            check(s, &item_path)?;
            Ok(s.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The credential side.

fn terms_from_subject(subject: &Obj) -> Result<ConsentTerms, Error> {
    let p = "credentialSubject";
    reject_unknown(subject, &SUBJECT_FIELDS, p)?;

    let patient = did_at(subject, "id", p)?;

    let ids_path = join(p, "patientIdentifiers");
    let identifiers = req_array(subject, "patientIdentifiers", p)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{ids_path}[{i}]");
            let o = as_object(item, &path)?;
            reject_unknown(o, &["custodian", "system", "value"], &path)?;
            Ok(PatientIdentifier {
                custodian: did_at(o, "custodian", &path)?,
                system: req_str(o, "system", &path)?.to_string(),
                value: req_str(o, "value", &path)?.to_string(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;

    let custodians = strings(
        req_array(subject, "custodians", p)?,
        &join(p, "custodians"),
        check_did,
    )?;

    let grantee_path = join(p, "grantee");
    let grantee = req_object(subject, "grantee", p)?;
    reject_unknown(grantee, &["id", "kind"], &grantee_path)?;
    let grantee_kind = GranteeKind::parse(
        req_str(grantee, "kind", &grantee_path)?,
        &join(&grantee_path, "kind"),
    )?;
    let grantee_id = req_str(grantee, "id", &grantee_path)?.to_string();
    grantee_kind.check_id(&grantee_id, &join(&grantee_path, "id"))?;

    let provision = ProvisionType::parse(req_str(subject, "provision", p)?, &join(p, "provision"))?;
    let domains = strings(
        req_array(subject, "domains", p)?,
        &join(p, "domains"),
        |s, path| check_code(s, &DOMAINS, path),
    )?;
    let purposes = strings(
        req_array(subject, "purposes", p)?,
        &join(p, "purposes"),
        |s, path| check_code(s, &PURPOSES, path),
    )?;
    let data_classes = strings(
        req_array(subject, "dataClasses", p)?,
        &join(p, "dataClasses"),
        check_data_class,
    )?;

    let period_path = join(p, "period");
    let period = req_object(subject, "period", p)?;
    reject_unknown(period, &["start", "end"], &period_path)?;
    let start = req_str(period, "start", &period_path)?.to_string();
    let end = opt_str(period, "end", &period_path)?.map(str::to_string);
    check_period(&start, end.as_deref(), &period_path)?;

    Ok(ConsentTerms {
        patient,
        identifiers,
        custodians,
        grantee_id,
        grantee_kind,
        provision,
        domains,
        purposes,
        data_classes,
        start,
        end,
    })
}

fn terms_to_subject(t: &ConsentTerms) -> Value {
    let mut period = Map::new();
    period.insert("start".to_string(), json!(t.start));
    if let Some(end) = &t.end {
        period.insert("end".to_string(), json!(end));
    }
    json!({
        "id": t.patient,
        "patientIdentifiers": t.identifiers.iter().map(|i| json!({
            "custodian": i.custodian,
            "system": i.system,
            "value": i.value,
        })).collect::<Vec<_>>(),
        "custodians": t.custodians,
        "grantee": {"id": t.grantee_id, "kind": t.grantee_kind.as_str()},
        "provision": t.provision.as_str(),
        "domains": t.domains,
        "purposes": t.purposes,
        "dataClasses": t.data_classes,
        "period": period,
    })
}

fn is_consent_credential(vc: &Obj) -> bool {
    match vc.get("type") {
        Some(Value::String(s)) => s == "PatientConsentCredential",
        Some(Value::Array(types)) => types
            .iter()
            .any(|t| t.as_str() == Some("PatientConsentCredential")),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The FHIR side.

fn uri_identifier(value: &str) -> Value {
    json!({"system": URI_SYSTEM, "value": value})
}

fn uri_reference(value: &str, resource_type: &str) -> Value {
    json!({"type": resource_type, "identifier": uri_identifier(value)})
}

fn fhir_identifier(i: &PatientIdentifier) -> Value {
    json!({
        "system": i.system,
        "value": i.value,
        "assigner": uri_reference(&i.custodian, "Organization"),
    })
}

fn coding(system: &str, code: &str) -> Value {
    json!({"system": system, "code": code})
}

fn terms_to_fhir(t: &ConsentTerms, valid_from: &str, credential_id: Option<&str>) -> Value {
    let mut extensions: Vec<Value> = t
        .domains
        .iter()
        .map(|d| json!({"url": DOMAINS_EXTENSION, "valueCode": d}))
        .collect();
    extensions.extend(t.identifiers.iter().skip(1).map(
        |i| json!({"url": PATIENT_IDENTIFIER_EXTENSION, "valueIdentifier": fhir_identifier(i)}),
    ));

    let mut period = Map::new();
    period.insert("start".to_string(), json!(t.start));
    if let Some(end) = &t.end {
        period.insert("end".to_string(), json!(end));
    }

    let mut consent = json!({
        "resourceType": "Consent",
        "extension": extensions,
        "status": "active",
        "scope": {"coding": [{
            "system": CONSENT_SCOPE_SYSTEM,
            "code": "patient-privacy",
            "display": "Privacy Consent",
        }]},
        "category": [{"coding": [{
            "system": LOINC_SYSTEM,
            "code": PATIENT_CONSENT_LOINC,
            "display": "Patient Consent",
        }]}],
        "dateTime": valid_from,
        "performer": [uri_reference(&t.patient, "Patient")],
        "organization": t.custodians.iter()
            .map(|c| uri_reference(c, "Organization"))
            .collect::<Vec<_>>(),
        "policyRule": {"coding": [coding(ACT_CODE_SYSTEM, t.provision.policy_rule())]},
        "provision": {
            "type": t.provision.as_str(),
            "period": period,
            "actor": [{
                "role": {"coding": [coding(PARTICIPATION_TYPE_SYSTEM, "IRCP")]},
                "reference": uri_reference(&t.grantee_id, t.grantee_kind.fhir_type()),
            }],
            "purpose": t.purposes.iter()
                .map(|p| coding(ACT_REASON_SYSTEM, p))
                .collect::<Vec<_>>(),
            "class": t.data_classes.iter()
                .map(|c| coding(RESOURCE_TYPES_SYSTEM, c))
                .collect::<Vec<_>>(),
        },
    });
    if let Some(obj) = consent.as_object_mut() {
        if let Some(first) = t.identifiers.first() {
            obj.insert(
                "patient".to_string(),
                json!({"identifier": fhir_identifier(first)}),
            );
        }
        if let Some(id) = credential_id {
            obj.insert(
                "sourceReference".to_string(),
                json!({"identifier": uri_identifier(id)}),
            );
        }
    }
    consent
}

/// The value of a Reference that names its target by a URI identifier.
fn uri_reference_value<'a>(reference: &'a Obj, path: &str) -> Result<&'a str, Error> {
    let id_path = join(path, "identifier");
    let identifier = req_object(reference, "identifier", path)?;
    let system = req_str(identifier, "system", &id_path)?;
    if system != URI_SYSTEM {
        return Err(Error::UnknownSystem {
            field: join(&id_path, "system"),
            system: system.to_string(),
        });
    }
    req_str(identifier, "value", &id_path)
}

fn identifier_from_fhir(v: &Value, path: &str) -> Result<PatientIdentifier, Error> {
    let o = as_object(v, path)?;
    let assigner_path = join(path, "assigner");
    let assigner = req_object(o, "assigner", path)?;
    let custodian = uri_reference_value(assigner, &assigner_path)?;
    check_did(custodian, &join(&assigner_path, "identifier.value"))?;
    Ok(PatientIdentifier {
        custodian: custodian.to_string(),
        system: req_str(o, "system", path)?.to_string(),
        value: req_str(o, "value", path)?.to_string(),
    })
}

/// The code of a Coding, which must be from `system`.
fn coding_code<'a>(v: &'a Value, system: &str, path: &str) -> Result<&'a str, Error> {
    let o = as_object(v, path)?;
    let found = req_str(o, "system", path)?;
    if found != system {
        return Err(Error::UnknownSystem {
            field: join(path, "system"),
            system: found.to_string(),
        });
    }
    req_str(o, "code", path)
}

fn reject_modifier_extensions(obj: &Obj, path: &str) -> Result<(), Error> {
    match obj.get("modifierExtension") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(_) => Err(Error::Unsupported {
            field: join(path, "modifierExtension"),
        }),
    }
}

/// Whether a CodeableConcept (at `path`) holds the coding `system#code`.
fn has_coding(obj: &Obj, key: &str, system: &str, code: &str, path: &str) -> Result<bool, Error> {
    let concept_path = join(path, key);
    let concept = req_object(obj, key, path)?;
    let codings = req_array(concept, "coding", &concept_path)?;
    let mut found = false;
    for (i, c) in codings.iter().enumerate() {
        let c_path = format!("{concept_path}.coding[{i}]");
        let c = as_object(c, &c_path)?;
        if opt_str(c, "system", &c_path)? == Some(system)
            && opt_str(c, "code", &c_path)? == Some(code)
        {
            found = true;
        }
    }
    Ok(found)
}

fn check_policy_rule(consent: &Obj, provision: ProvisionType) -> Result<(), Error> {
    let Some(rule) = consent.get("policyRule").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let rule = as_object(rule, "policyRule")?;
    let codings = req_array(rule, "coding", "policyRule")?;
    for (i, c) in codings.iter().enumerate() {
        let path = format!("policyRule.coding[{i}]");
        let code = coding_code(c, ACT_CODE_SYSTEM, &path)?;
        if code != provision.policy_rule() {
            return Err(invalid(
                join(&path, "code"),
                format!(
                    "{code:?} contradicts provision.type {:?}",
                    provision.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn terms_from_fhir(consent: &Obj) -> Result<ConsentTerms, Error> {
    match consent.get("resourceType") {
        Some(Value::String(s)) if s == "Consent" => {}
        other => {
            return Err(Error::NotAConsent {
                found: other.map_or_else(|| "nothing".to_string(), Value::to_string),
            })
        }
    }
    reject_modifier_extensions(consent, "")?;
    if consent.get("implicitRules").is_some_and(|v| !v.is_null()) {
        return Err(Error::Unsupported {
            field: "implicitRules".to_string(),
        });
    }

    let status = req_str(consent, "status", "")?;
    if status != "active" {
        return Err(invalid(
            "status",
            format!("expected active, found {status:?}"),
        ));
    }
    if !has_coding(
        consent,
        "scope",
        CONSENT_SCOPE_SYSTEM,
        "patient-privacy",
        "",
    )? {
        return Err(invalid("scope", "expected consentscope#patient-privacy"));
    }

    // Patient: the first identifier on Consent.patient, the others in extensions.
    let patient_ref = req_object(consent, "patient", "")?;
    let first = field(patient_ref, "identifier", "patient")?;
    let mut identifiers = vec![identifier_from_fhir(first, "patient.identifier")?];
    let mut domains = Vec::new();
    if let Some(ext) = consent.get("extension").filter(|v| !v.is_null()) {
        let ext = ext
            .as_array()
            .ok_or_else(|| invalid("extension", "expected an array"))?;
        for (i, e) in ext.iter().enumerate() {
            let path = format!("extension[{i}]");
            let e = as_object(e, &path)?;
            match req_str(e, "url", &path)? {
                DOMAINS_EXTENSION => {
                    let code = req_str(e, "valueCode", &path)?;
                    check_code(code, &DOMAINS, &join(&path, "valueCode"))?;
                    domains.push(code.to_string());
                }
                PATIENT_IDENTIFIER_EXTENSION => {
                    let value_path = join(&path, "valueIdentifier");
                    let v = field(e, "valueIdentifier", &path)?;
                    identifiers.push(identifier_from_fhir(v, &value_path)?);
                }
                _ => {}
            }
        }
    }
    if domains.is_empty() {
        return Err(missing(format!("extension[{DOMAINS_EXTENSION}]")));
    }

    // The patient's DID is the performer named by a URI identifier and not typed as
    // anything but a Patient.
    let mut patient = None;
    for (i, p) in req_array(consent, "performer", "")?.iter().enumerate() {
        let path = format!("performer[{i}]");
        let p = as_object(p, &path)?;
        let is_uri = p
            .get("identifier")
            .and_then(|id| id.get("system"))
            .and_then(Value::as_str)
            == Some(URI_SYSTEM);
        let is_patient = match p.get("type") {
            None | Some(Value::Null) => true,
            Some(t) => t.as_str() == Some("Patient"),
        };
        if !is_uri || !is_patient {
            continue;
        }
        let did = uri_reference_value(p, &path)?;
        check_did(did, &join(&path, "identifier.value"))?;
        if patient.replace(did.to_string()).is_some() {
            return Err(invalid("performer", "more than one performer names a DID"));
        }
    }
    let patient = patient.ok_or_else(|| missing("performer.identifier"))?;

    let mut custodians = Vec::new();
    for (i, o) in req_array(consent, "organization", "")?.iter().enumerate() {
        let path = format!("organization[{i}]");
        let did = uri_reference_value(as_object(o, &path)?, &path)?;
        check_did(did, &join(&path, "identifier.value"))?;
        custodians.push(did.to_string());
    }

    let provision = req_object(consent, "provision", "")?;
    reject_modifier_extensions(provision, "provision")?;
    if let Some(k) = provision
        .keys()
        .find(|k| !PROVISION_FIELDS.contains(&k.as_str()) && k.as_str() != "modifierExtension")
    {
        return Err(Error::Unsupported {
            field: join("provision", k),
        });
    }
    let provision_type =
        ProvisionType::parse(req_str(provision, "type", "provision")?, "provision.type")?;
    check_policy_rule(consent, provision_type)?;

    let period = req_object(provision, "period", "provision")?;
    let start = req_str(period, "start", "provision.period")?.to_string();
    let end = opt_str(period, "end", "provision.period")?.map(str::to_string);
    check_period(&start, end.as_deref(), "provision.period")?;

    let actors = req_array(provision, "actor", "provision")?;
    if actors.len() > 1 {
        return Err(Error::Unsupported {
            field: "provision.actor[1]".to_string(),
        });
    }
    let mut grantee = None;
    for (i, a) in actors.iter().enumerate() {
        let path = format!("provision.actor[{i}]");
        let a = as_object(a, &path)?;
        if !has_coding(a, "role", PARTICIPATION_TYPE_SYSTEM, "IRCP", &path)? {
            return Err(invalid(
                join(&path, "role"),
                "expected v3-ParticipationType#IRCP",
            ));
        }
        let ref_path = join(&path, "reference");
        let reference = req_object(a, "reference", &path)?;
        let id = uri_reference_value(reference, &ref_path)?;
        let kind = GranteeKind::from_fhir_type(
            req_str(reference, "type", &ref_path)?,
            &join(&ref_path, "type"),
        )?;
        kind.check_id(id, &join(&ref_path, "identifier.value"))?;
        grantee = Some((id.to_string(), kind));
    }
    let (grantee_id, grantee_kind) = grantee.ok_or_else(|| missing("provision.actor"))?;

    let purposes = req_array(provision, "purpose", "provision")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = format!("provision.purpose[{i}]");
            let code = coding_code(c, ACT_REASON_SYSTEM, &path)?;
            check_code(code, &PURPOSES, &join(&path, "code"))?;
            Ok(code.to_string())
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let data_classes = req_array(provision, "class", "provision")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = format!("provision.class[{i}]");
            let code = coding_code(c, RESOURCE_TYPES_SYSTEM, &path)?;
            check_data_class(code, &join(&path, "code"))?;
            Ok(code.to_string())
        })
        .collect::<Result<Vec<_>, Error>>()?;

    Ok(ConsentTerms {
        patient,
        identifiers,
        custodians,
        grantee_id,
        grantee_kind,
        provision: provision_type,
        domains,
        purposes,
        data_classes,
        start,
        end,
    })
}

// ---------------------------------------------------------------------------
// Public API.

/// Maps a PatientConsentCredential (unsigned, or signed with any proof, which is ignored)
/// to a FHIR R4 `Consent` resource.
///
/// `Consent.dateTime` is the credential's `validFrom`, and `Consent.sourceReference` names
/// the credential by its `id` when it has one. No name of the patient is written.
pub fn consent_credential_to_fhir(vc: &Value) -> Result<Value, ConsentMappingError> {
    let vc = vc
        .as_object()
        .ok_or(ConsentMappingError::NotAnObject("credential"))?;
    if !is_consent_credential(vc) {
        return Err(ConsentMappingError::NotAConsentCredential);
    }
    let valid_from = req_str(vc, "validFrom", "")?;
    check_date_time(valid_from, "validFrom")?;
    let credential_id = opt_str(vc, "id", "")?;
    let subject = req_object(vc, "credentialSubject", "")?;
    let terms = terms_from_subject(subject)?;
    Ok(terms_to_fhir(&terms, valid_from, credential_id))
}

/// Maps a FHIR R4 `Consent` resource to the `credentialSubject` of a PatientConsentCredential.
///
/// Elements that cannot be represented in a credential and would change the meaning of the
/// consent if dropped are refused with [`ConsentMappingError::Unsupported`]; descriptive
/// elements (`id`, `meta`, `text`, `identifier`, `category`, `dateTime`, `policy`,
/// `sourceReference`, unknown non-modifier extensions) are not carried over.
pub fn fhir_to_consent_subject(consent: &Value) -> Result<Value, ConsentMappingError> {
    let consent = consent
        .as_object()
        .ok_or(ConsentMappingError::NotAnObject("Consent"))?;
    let terms = terms_from_fhir(consent)?;
    Ok(terms_to_subject(&terms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../schemas/patient-consent.schema.json");

    const PATIENT: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
    const HOSPITAL_A: &str = "did:web:hospital-a.example";
    const HOSPITAL_B: &str = "did:web:hospital-b.example%3A8443";

    fn permit_subject() -> Value {
        json!({
            "id": PATIENT,
            "patientIdentifiers": [
                {"custodian": HOSPITAL_A, "system": "urn:oid:2.16.840.1.113883.3.1001", "value": "MRN-000123"},
                {"custodian": HOSPITAL_B, "system": "https://hospital-b.example/fhir/mrn", "value": "B-77-0042"}
            ],
            "custodians": [HOSPITAL_A, HOSPITAL_B],
            "grantee": {"id": "urn:fedgate:study:diabetes-outcomes-2025", "kind": "study"},
            "provision": "permit",
            "domains": ["clinical", "research"],
            "purposes": ["HRESCH", "TREAT", "PUBHLTH"],
            "dataClasses": ["Observation", "Condition", "MedicationRequest"],
            "period": {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
        })
    }

    fn deny_subject() -> Value {
        json!({
            "id": PATIENT,
            "patientIdentifiers": [
                {"custodian": HOSPITAL_A, "system": "urn:oid:2.16.840.1.113883.3.1001", "value": "MRN-000123"}
            ],
            "custodians": [HOSPITAL_A],
            "grantee": {"id": "did:web:billing-co.example", "kind": "organization"},
            "provision": "deny",
            "domains": ["billing"],
            "purposes": ["HPAYMT"],
            "dataClasses": ["Claim"],
            "period": {"start": "2025-03-01T12:00:00+01:00"}
        })
    }

    fn credential(subject: Value) -> Value {
        json!({
            "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/fedgate/v1"],
            "id": "urn:uuid:5f1c2f5e-8b2b-4a36-9d3e-2c9f3c1d7a10",
            "type": ["VerifiableCredential", "PatientConsentCredential"],
            "issuer": HOSPITAL_A,
            "validFrom": "2025-01-01T00:00:00Z",
            "credentialSubject": subject
        })
    }

    /// A Consent as a FHIR server might hold it, in exactly the shape the mapping writes,
    /// plus descriptive elements the mapping does not carry.
    fn fhir_consent() -> Value {
        json!({
            "resourceType": "Consent",
            "id": "consent-1",
            "meta": {"versionId": "3"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Consent</div>"},
            "extension": [
                {"url": DOMAINS_EXTENSION, "valueCode": "clinical"},
                {"url": PATIENT_IDENTIFIER_EXTENSION, "valueIdentifier": {
                    "system": "https://hospital-b.example/fhir/mrn",
                    "value": "B-77-0042",
                    "assigner": {"type": "Organization", "identifier": {"system": URI_SYSTEM, "value": HOSPITAL_B}}
                }}
            ],
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy", "display": "Privacy Consent"}]},
            "category": [{"coding": [{"system": LOINC_SYSTEM, "code": "59284-0", "display": "Patient Consent"}]}],
            "patient": {"identifier": {
                "system": "urn:oid:2.16.840.1.113883.3.1001",
                "value": "MRN-000123",
                "assigner": {"type": "Organization", "identifier": {"system": URI_SYSTEM, "value": HOSPITAL_A}}
            }},
            "dateTime": "2025-02-01T09:30:00Z",
            "performer": [{"type": "Patient", "identifier": {"system": URI_SYSTEM, "value": PATIENT}}],
            "organization": [
                {"type": "Organization", "identifier": {"system": URI_SYSTEM, "value": HOSPITAL_A}},
                {"type": "Organization", "identifier": {"system": URI_SYSTEM, "value": HOSPITAL_B}}
            ],
            "sourceReference": {"identifier": {"system": URI_SYSTEM, "value": "urn:uuid:0d9b1a8e-3f43-4f7e-bb1e-8c1f0c0b2a55"}},
            "policyRule": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTIN"}]},
            "provision": {
                "type": "permit",
                "period": {"start": "2025-02-01T00:00:00Z", "end": "2025-08-01T00:00:00Z"},
                "actor": [{
                    "role": {"coding": [{"system": PARTICIPATION_TYPE_SYSTEM, "code": "IRCP"}]},
                    "reference": {"type": "Practitioner", "identifier": {"system": URI_SYSTEM, "value": "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG"}}
                }],
                "purpose": [
                    {"system": ACT_REASON_SYSTEM, "code": "TREAT"},
                    {"system": ACT_REASON_SYSTEM, "code": "ETREAT"}
                ],
                "class": [
                    {"system": RESOURCE_TYPES_SYSTEM, "code": "AllergyIntolerance"},
                    {"system": RESOURCE_TYPES_SYSTEM, "code": "Observation"}
                ]
            }
        })
    }

    fn schema_errors(instance: &Value) -> Vec<String> {
        let schema: Value = serde_json::from_str(SCHEMA).expect("schema parses");
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    #[test]
    fn permit_round_trips_through_fhir() {
        let subject = permit_subject();
        let fhir = consent_credential_to_fhir(&credential(subject.clone())).expect("to FHIR");
        assert_eq!(fhir["resourceType"], "Consent");
        assert_eq!(fhir["status"], "active");
        assert_eq!(fhir["dateTime"], "2025-01-01T00:00:00Z");
        assert_eq!(fhir["policyRule"]["coding"][0]["code"], "OPTIN");
        assert_eq!(fhir["provision"]["type"], "permit");
        assert_eq!(
            fhir["provision"]["actor"][0]["reference"]["type"],
            "ResearchStudy"
        );
        assert_eq!(
            fhir["provision"]["purpose"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(fhir["patient"]["identifier"]["value"], "MRN-000123");
        assert_eq!(fhir["performer"][0]["identifier"]["value"], PATIENT);
        assert_eq!(
            fhir["sourceReference"]["identifier"]["value"],
            "urn:uuid:5f1c2f5e-8b2b-4a36-9d3e-2c9f3c1d7a10"
        );
        assert!(fhir.get("patient").and_then(|p| p.get("display")).is_none());
        let back = fhir_to_consent_subject(&fhir).expect("from FHIR");
        assert_eq!(back, subject);
    }

    #[test]
    fn deny_round_trips_through_fhir() {
        let subject = deny_subject();
        let fhir = consent_credential_to_fhir(&credential(subject.clone())).expect("to FHIR");
        assert_eq!(fhir["policyRule"]["coding"][0]["code"], "OPTOUT");
        assert_eq!(fhir["provision"]["type"], "deny");
        assert_eq!(
            fhir["provision"]["actor"][0]["reference"]["type"],
            "Organization"
        );
        assert!(fhir["provision"]["period"].get("end").is_none());
        let back = fhir_to_consent_subject(&fhir).expect("from FHIR");
        assert_eq!(back, subject);
    }

    #[test]
    fn credential_without_id_has_no_source_reference() {
        let mut vc = credential(deny_subject());
        vc.as_object_mut().expect("object").remove("id");
        let fhir = consent_credential_to_fhir(&vc).expect("to FHIR");
        assert!(fhir.get("sourceReference").is_none());
    }

    #[test]
    fn fhir_round_trips_through_subject() {
        let original = fhir_consent();
        let subject = fhir_to_consent_subject(&original).expect("from FHIR");
        assert_eq!(subject["grantee"]["kind"], "clinician");
        assert_eq!(subject["patientIdentifiers"][1]["custodian"], HOSPITAL_B);

        let mut vc = credential(subject);
        vc["validFrom"] = original["dateTime"].clone();
        vc["id"] = original["sourceReference"]["identifier"]["value"].clone();
        let back = consent_credential_to_fhir(&vc).expect("to FHIR");

        let mut expected = original.clone();
        let obj = expected.as_object_mut().expect("object");
        for unmapped in ["id", "meta", "text"] {
            obj.remove(unmapped);
        }
        assert_eq!(back, expected);
    }

    #[test]
    fn produced_subject_passes_the_schema() {
        for subject in [
            permit_subject(),
            deny_subject(),
            fhir_to_consent_subject(&fhir_consent()).expect("from FHIR"),
        ] {
            let fhir = consent_credential_to_fhir(&credential(subject)).expect("to FHIR");
            let produced = fhir_to_consent_subject(&fhir).expect("from FHIR");
            let vc = credential(produced);
            assert_eq!(schema_errors(&vc), Vec::<String>::new());
        }
    }

    #[test]
    fn schema_rejects_a_violating_credential() {
        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["dataClasses"] = json!(["*"]);
        assert!(!schema_errors(&vc).is_empty());

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["purposes"] = json!(["MARKETING"]);
        assert!(!schema_errors(&vc).is_empty());

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["patientName"] = json!("Jane Doe");
        assert!(!schema_errors(&vc).is_empty());
    }

    #[test]
    fn credential_side_errors() {
        assert_eq!(
            consent_credential_to_fhir(&json!("text")),
            Err(Error::NotAnObject("credential"))
        );
        let mut vc = credential(permit_subject());
        vc["type"] = json!(["VerifiableCredential", "ResearchStudyCredential"]);
        assert_eq!(
            consent_credential_to_fhir(&vc),
            Err(Error::NotAConsentCredential)
        );

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["name"] = json!("Jane Doe");
        assert!(matches!(
            consent_credential_to_fhir(&vc),
            Err(Error::Invalid { field, .. }) if field == "credentialSubject.name"
        ));

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]
            .as_object_mut()
            .expect("object")
            .remove("custodians");
        assert_eq!(
            consent_credential_to_fhir(&vc),
            Err(missing("credentialSubject.custodians"))
        );

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["grantee"]["id"] = json!("did:web:not-a-study.example");
        assert!(matches!(
            consent_credential_to_fhir(&vc),
            Err(Error::Invalid { field, .. }) if field == "credentialSubject.grantee.id"
        ));

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["period"]["end"] = json!("2024-01-01T00:00:00Z");
        assert!(matches!(
            consent_credential_to_fhir(&vc),
            Err(Error::Invalid { field, .. }) if field == "credentialSubject.period.end"
        ));

        let mut vc = credential(permit_subject());
        vc["credentialSubject"]["dataClasses"] = json!(["*"]);
        assert!(matches!(
            consent_credential_to_fhir(&vc),
            Err(Error::Invalid { field, .. }) if field == "credentialSubject.dataClasses[0]"
        ));
    }

    #[test]
    fn signed_credential_maps_like_unsigned() {
        let unsigned = credential(permit_subject());
        let mut signed = unsigned.clone();
        signed["proof"] = json!({"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022", "proofValue": "z58"});
        assert_eq!(
            consent_credential_to_fhir(&signed),
            consent_credential_to_fhir(&unsigned)
        );
    }

    fn mutated(edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = fhir_consent();
        edit(&mut v);
        v
    }

    fn remove(v: &mut Value, key: &str) {
        if let Some(o) = v.as_object_mut() {
            o.remove(key);
        }
    }

    #[test]
    fn hostile_fhir_is_refused() {
        assert_eq!(
            fhir_to_consent_subject(&json!([1, 2])),
            Err(Error::NotAnObject("Consent"))
        );
        assert_eq!(
            fhir_to_consent_subject(&json!(null)),
            Err(Error::NotAnObject("Consent"))
        );
        assert!(matches!(
            fhir_to_consent_subject(&mutated(|v| v["resourceType"] = json!("Patient"))),
            Err(Error::NotAConsent { .. })
        ));
        assert!(matches!(
            fhir_to_consent_subject(&mutated(|v| remove(v, "resourceType"))),
            Err(Error::NotAConsent { .. })
        ));
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| remove(v, "provision"))),
            Err(missing("provision"))
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| remove(&mut v["provision"], "type"))),
            Err(missing("provision.type"))
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| {
                v["provision"]["purpose"][1]["system"] = json!("http://snomed.info/sct")
            })),
            Err(Error::UnknownSystem {
                field: "provision.purpose[1].system".to_string(),
                system: "http://snomed.info/sct".to_string(),
            })
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| {
                remove(&mut v["provision"]["actor"][0]["reference"], "identifier")
            })),
            Err(missing("provision.actor[0].reference.identifier"))
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| {
                v["provision"]["actor"][0]["reference"] = json!({"reference": "Practitioner/123"})
            })),
            Err(missing("provision.actor[0].reference.identifier"))
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| v["provision"]["actor"] = json!([]))),
            Err(invalid("provision.actor", "expected a non-empty array"))
        );
        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| remove(&mut v["provision"], "actor"))),
            Err(missing("provision.actor"))
        );
    }

    #[test]
    fn patient_is_the_did_performer_typed_patient() {
        let with_witness = mutated(|v| {
            let witness = json!({"type": "Practitioner", "identifier": {"system": URI_SYSTEM, "value": "did:web:witness.example"}});
            let guardian = json!({"display": "Guardian", "identifier": {"system": "urn:oid:1.2.3", "value": "G-1"}});
            v["performer"] = json!([witness, guardian, v["performer"][0].clone()]);
        });
        let subject = fhir_to_consent_subject(&with_witness).expect("from FHIR");
        assert_eq!(subject["id"], PATIENT);

        let two = mutated(|v| {
            let other =
                json!({"identifier": {"system": URI_SYSTEM, "value": "did:web:other.example"}});
            v["performer"] = json!([v["performer"][0].clone(), other]);
        });
        assert!(matches!(
            fhir_to_consent_subject(&two),
            Err(Error::Invalid { field, .. }) if field == "performer"
        ));
    }

    #[test]
    fn fhir_that_would_widen_the_consent_is_refused() {
        let cases: Vec<(Value, &str)> = vec![
            (
                mutated(|v| v["provision"]["action"] = json!([{"coding": [{"code": "access"}]}])),
                "provision.action",
            ),
            (
                mutated(|v| v["provision"]["provision"] = json!([{"type": "deny"}])),
                "provision.provision",
            ),
            (
                mutated(|v| v["provision"]["data"] = json!([{"meaning": "instance"}])),
                "provision.data",
            ),
            (
                mutated(|v| v["modifierExtension"] = json!([{"url": "https://x.example"}])),
                "modifierExtension",
            ),
            (
                mutated(|v| v["implicitRules"] = json!("https://rules.example/consent")),
                "implicitRules",
            ),
            (
                mutated(|v| {
                    v["provision"]["modifierExtension"] = json!([{"url": "https://x.example"}])
                }),
                "provision.modifierExtension",
            ),
            (
                mutated(|v| {
                    let actor = v["provision"]["actor"][0].clone();
                    v["provision"]["actor"] = json!([actor.clone(), actor]);
                }),
                "provision.actor[1]",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(
                fhir_to_consent_subject(&input),
                Err(Error::Unsupported {
                    field: field.to_string()
                })
            );
        }

        for (input, field) in [
            (
                mutated(|v| remove(&mut v["provision"], "class")),
                "provision.class",
            ),
            (
                mutated(|v| remove(&mut v["provision"], "purpose")),
                "provision.purpose",
            ),
            (mutated(|v| remove(v, "organization")), "organization"),
            (mutated(|v| remove(v, "performer")), "performer"),
            (
                mutated(|v| remove(&mut v["patient"]["identifier"], "assigner")),
                "patient.identifier.assigner",
            ),
        ] {
            assert_eq!(fhir_to_consent_subject(&input), Err(missing(field)));
        }

        for (input, field) in [
            (mutated(|v| v["status"] = json!("inactive")), "status"),
            (
                mutated(|v| v["scope"]["coding"][0]["code"] = json!("research")),
                "scope",
            ),
            (
                mutated(|v| v["policyRule"]["coding"][0]["code"] = json!("OPTOUT")),
                "policyRule.coding[0].code",
            ),
            (
                mutated(|v| v["provision"]["type"] = json!("maybe")),
                "provision.type",
            ),
            (
                mutated(|v| v["provision"]["class"][0]["code"] = json!("*")),
                "provision.class[0].code",
            ),
            (
                mutated(|v| v["provision"]["purpose"][0]["code"] = json!("MARKETING")),
                "provision.purpose[0].code",
            ),
            (
                mutated(|v| v["provision"]["period"]["start"] = json!("2025-02-01")),
                "provision.period.start",
            ),
            (
                mutated(|v| {
                    v["provision"]["actor"][0]["role"]["coding"][0]["code"] = json!("PRCP")
                }),
                "provision.actor[0].role",
            ),
            (
                mutated(|v| v["provision"]["actor"][0]["reference"]["type"] = json!("Patient")),
                "provision.actor[0].reference.type",
            ),
            (
                mutated(|v| v["extension"][0]["valueCode"] = json!("genomic")),
                "extension[0].valueCode",
            ),
        ] {
            assert!(
                matches!(fhir_to_consent_subject(&input), Err(Error::Invalid { field: f, .. }) if f == field),
                "{field}"
            );
        }

        assert_eq!(
            fhir_to_consent_subject(&mutated(|v| {
                v["extension"] = json!([{"url": "https://other.example/ext", "valueString": "x"}])
            })),
            Err(missing(format!("extension[{DOMAINS_EXTENSION}]")))
        );
    }

    /// Every JSON pointer in `v`, parents before children.
    fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
        out.push(prefix.clone());
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    pointers(child, format!("{prefix}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    pointers(child, format!("{prefix}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn no_input_makes_the_mapping_panic() {
        let replacements = [
            json!(null),
            json!(true),
            json!(-1),
            json!(""),
            json!("did:"),
            json!([]),
            json!({}),
            json!([null]),
        ];
        let seeds = [
            fhir_consent(),
            consent_credential_to_fhir(&credential(permit_subject())).expect("to FHIR"),
        ];
        let mut tried = 0;
        for seed in &seeds {
            let mut paths = Vec::new();
            pointers(seed, String::new(), &mut paths);
            for path in paths {
                for r in &replacements {
                    let mut v = seed.clone();
                    if let Some(slot) = v.pointer_mut(&path) {
                        *slot = r.clone();
                    }
                    let _ = fhir_to_consent_subject(&v);
                    tried += 1;
                }
            }
        }
        let vc = credential(permit_subject());
        let mut paths = Vec::new();
        pointers(&vc, String::new(), &mut paths);
        for path in paths {
            for r in &replacements {
                let mut v = vc.clone();
                if let Some(slot) = v.pointer_mut(&path) {
                    *slot = r.clone();
                }
                let _ = consent_credential_to_fhir(&v);
                tried += 1;
            }
        }
        assert!(tried > 500);
    }
}
