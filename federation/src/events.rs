//! Access events: what a gateway reports about every decision it makes.
//!
//! No PHI: the patient appears only as a pseudonym the custodian can map back with its own
//! key, and, where the patient has a DID, as a digest of that DID so that the patient can
//! find their own history across the federation.

use std::fmt;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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
    /// The differential-privacy budget a research query spent (or was refused), absent for
    /// every other request and in events written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacySpend>,
}

/// What a research query cost: the study's privacy budget at the custodian, in whole
/// micro-ε (1 ε = 1,000,000), so that the log holds exact integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivacySpend {
    /// The study (`urn:fedgate:study:<id>`) whose budget this is.
    pub study: String,
    /// ε this query spent; 0 when it was refused.
    pub epsilon_micro: u64,
    /// What is left of the study's budget at this custodian after the query.
    pub budget_left_micro: u64,
}

/// The longest study id, in characters (the study credential's schema says the same).
const MAX_STUDY_ID_CHARS: usize = 256;

/// A study id as study credentials carry it: `urn:fedgate:study:` then `[A-Za-z0-9._-]`,
/// at most [`MAX_STUDY_ID_CHARS`] in all.
fn is_study_id(s: &str) -> bool {
    s.len() <= MAX_STUDY_ID_CHARS
        && s.strip_prefix("urn:fedgate:study:").is_some_and(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        })
}

/// An event id as events carry it and paths name it: a UUID, hyphenated (8-4-4-4-12).
pub fn is_event_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
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
// Free text: a closed vocabulary
// ---------------------------------------------------------------------------------------
//
// An event leaves the custodian and is kept for years in an append-only log: a value that
// slips into it cannot be taken back. Its free-text members are therefore either from a
// closed vocabulary (reasons, failed check, purpose, domain) or bounded and free of
// identifier-shaped text (the break-glass justification). One function,
// [`check_free_text`], decides; the gateway runs it before it records (after
// [`confine_free_text`]) and the visibility service before it logs.

/// Most reasons one event may carry.
const MAX_REASONS: usize = 32;
/// Longest reason, in characters (a class list of a large request fits).
const MAX_REASON_CHARS: usize = 2048;
/// Longest break-glass justification kept in an event, in characters.
const MAX_JUSTIFICATION_CHARS: usize = 1000;
/// Most data classes one event may name.
const MAX_DATA_CLASSES: usize = 64;

/// The HL7 v3 PurposeOfUse codes of the federation (the ones a consent may name).
pub use crate::fhir_consent::PURPOSES;

/// The gateways' policy domains.
pub const DOMAINS: [&str; 5] = ["clinical", "billing", "research", "consent", "detokenize"];

/// The roles of a clinician privilege (the credential schema's enum).
const ROLES: [&str; 9] = [
    "physician",
    "nurse",
    "nurse-practitioner",
    "physician-assistant",
    "pharmacist",
    "researcher",
    "billing-specialist",
    "care-coordinator",
    "auditor",
];

/// The tokenizer's identifier classes (docs/gateway-contract.md section 3).
pub const IDENTIFIER_CLASSES: [&str; 15] = [
    "name",
    "mrn",
    "ssn",
    "passport",
    "drivers-license",
    "other-identifiers",
    "telecom",
    "address",
    "birth-date",
    "dates",
    "patient-id",
    "resource-ids",
    "narrative",
    "attachments",
    "meta",
];

/// The checks of the verification pipeline (`federation::verify::Check`).
pub const VERIFICATION_CHECKS: [&str; 10] = [
    "format",
    "proof",
    "validity",
    "challenge",
    "domain",
    "schema",
    "issuer-trust",
    "status",
    "holder-binding",
    "disclosure",
];

/// What a reason that is not in the vocabulary becomes before the gateway records it.
const WITHHELD_REASON: &str = "reason withheld: outside the event vocabulary";

/// The reason of a research query refused because the study's privacy budget at the
/// custodian does not cover its ε.
pub const PRIVACY_BUDGET_REASON: &str =
    "the study's privacy budget at this custodian does not cover the query's epsilon";

/// The reason of a research query whose noisy release failed after its epsilon was debited:
/// nothing was released, and the epsilon stays spent.
pub const PRIVACY_MECHANISM_REASON: &str =
    "the privacy mechanism failed after the query's epsilon was spent; nothing was released";

/// Every reason an event may carry: fixed texts, and templates whose slots take values of
/// closed sets only. Slots: `{purpose}` ([`PURPOSES`]), `{domain}` ([`DOMAINS`]), `{role}`
/// ([`ROLES`]), `{identifier-class}` ([`IDENTIFIER_CLASSES`]), `{check}`
/// ([`VERIFICATION_CHECKS`]), `{classes}` (FHIR resource type names, letters only,
/// comma-separated), `{count}` (one to three digits) and `{duration}` (a number of `ms` or
/// `s`).
/// The shipped policies (policies/*.rego) and the gateway's own messages use exactly these;
/// a gateway test keeps the two in step.
const REASON_TEMPLATES: &[&str] = &[
    // The gateway: verification, and failures of the policy engine.
    "verification failed: {check}",
    "policy evaluation aborted",
    "policy evaluation failed: unusable input",
    "policy evaluation failed: undefined decision",
    "policy evaluation failed: malformed decision",
    "policy evaluation failed: timeout",
    "policy evaluation failed: time limit of {duration} exceeded",
    "policy evaluation failed: memory limit exceeded",
    "policy evaluation failed: instruction limit exceeded",
    "policy evaluation failed: error",
    "policy evaluation failed: unknown identifier class in obligations",
    "policy evaluation failed: decision widens the requested data classes",
    "policy evaluation failed: break-glass without an expiry",
    "policy bundle failed to load",
    // After an allow, when the data could not be served (the decision stands, nothing left).
    "not served: the record source failed",
    "not served: the answer could not be prepared",
    "no policy for this domain",
    "denied by policy",
    "unknown token",
    "the token was not issued to this organization",
    WITHHELD_REASON,
    // The policies, every domain.
    "denied by default: no {domain} rule applied",
    "purpose {purpose} is not a {domain} purpose",
    "the patient is not known at this custodian",
    "no clinician privilege credential of the requester was presented",
    "the privilege credential names another organization than the requester's",
    "no {domain} read privilege at this custodian",
    "role {role} has no access to the {domain} domain",
    "no registry contract between this custodian and the requester's organization covers {domain}/{purpose}",
    "an explicit deny consent for {domain}/{purpose} applies and wins over any permit",
    "a deny consent was presented whose scope or period could not be read",
    "no consent permits {domain}/{purpose} for the requested data classes",
    "a self-issued consent was presented under a DID this custodian has not linked to the patient",
    "outside the requester's shift at this custodian",
    "consent permits {purpose} for {classes}",
    "{classes} dropped: no consent covers it",
    // Clinical.
    "break-glass {purpose} without consent for {classes}; review required",
    "{classes} dropped: not allowed for role {role}",
    "no requested data class is allowed for role {role}",
    "no consent permits {domain}/{purpose} and break-glass needs a justification of at least {count} characters",
    // Billing.
    "{classes} dropped: not a billing class for role {role}",
    "no requested data class is a billing class allowed for role {role}",
    // Research.
    "the study may query {classes} in aggregate",
    "no research study credential was presented",
    "the requester's organization is not the study's sponsor",
    "the study is not approved for {purpose}",
    "no data classes were requested",
    "requested classes outside the study's approved classes: {classes}",
    // Research, the gateway: the study's privacy budget.
    PRIVACY_BUDGET_REASON,
    PRIVACY_MECHANISM_REASON,
    // Detokenize.
    "{identifier-class} token of the {domain} domain may be detokenized for {purpose}",
    "purpose {purpose} does not allow detokenization",
    "the token was not issued to the requester's organization",
    "only tokens of the clinical domain can be detokenized",
    "the token's class is not an identifier class",
    "no detokenize privilege for {domain} at this custodian",
    "role {role} may not detokenize",
];

/// The kinds of identifier-shaped text refused in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierShape {
    Email,
    Date,
    Ssn,
    Phone,
    DigitRun,
}

impl fmt::Display for IdentifierShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentifierShape::Email => "an email address",
            IdentifierShape::Date => "a date",
            IdentifierShape::Ssn => "a social security number",
            IdentifierShape::Phone => "a phone number",
            IdentifierShape::DigitRun => "a long run of digits",
        })
    }
}

/// Why an event's free text is refused. Names the member, never quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTextError {
    #[error("{field}: at most {max} entries")]
    TooMany { field: &'static str, max: usize },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: String, max: usize },
    #[error("{field} holds {shape}; identifier-shaped text is refused in events")]
    IdentifierShaped {
        field: String,
        shape: IdentifierShape,
    },
    #[error("{field} holds control characters")]
    ControlCharacters { field: String },
    #[error("{field} is not in the event vocabulary")]
    OutsideVocabulary { field: String },
}

/// Identifier shapes, checked in this order (a date is reported as a date, not as a run of
/// digits). `\d` is Unicode-aware, so full-width and other scripts' digits count too.
fn shape_patterns() -> &'static [(IdentifierShape, Regex)] {
    static PATTERNS: OnceLock<Vec<(IdentifierShape, Regex)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        const MONTH: &str = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?";
        let sources = [
            (
                IdentifierShape::Email,
                r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+".to_string(),
            ),
            (
                IdentifierShape::Date,
                format!(
                    r"(?i)\b\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}\b|\b\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}\b|\b{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{MONTH},?\s+\d{{2,4}}\b"
                ),
            ),
            (
                IdentifierShape::Ssn,
                r"\b\d{3}[-\s.]?\d{2}[-\s.]?\d{4}\b".to_string(),
            ),
            (
                IdentifierShape::Phone,
                r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\b\d{3})[\s.-]?\d{3}[\s.-]?\d{4}\b|\+\d(?:[\s().-]*\d){6,}".to_string(),
            ),
            // Five digits in a row (a ZIP code, an MRN), or seven separated only by
            // punctuation and spaces.
            (
                IdentifierShape::DigitRun,
                r"\d{5,}|\d(?:[\s().+/-]*\d){6,}".to_string(),
            ),
        ];
        sources
            .into_iter()
            // The patterns are constants: a failure here is a programming error that the
            // unit tests catch; it drops the pattern rather than panicking on input.
            .filter_map(|(shape, source)| Regex::new(&source).ok().map(|re| (shape, re)))
            .collect()
    })
}

/// The first identifier shape found in `text`, if any.
fn identifier_shape(text: &str) -> Option<IdentifierShape> {
    shape_patterns()
        .iter()
        .find(|(_, re)| re.is_match(text))
        .map(|(shape, _)| *shape)
}

/// Replaces what looks like an identifier by `[removed]` and control characters by spaces.
fn scrub_identifiers(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for (_, re) in shape_patterns() {
        out = re.replace_all(&out, "[removed]").into_owned();
    }
    // Replacing can join what was apart only in theory; fail closed if it did.
    if identifier_shape(&out).is_some() {
        return "[removed]".into();
    }
    out
}

/// The regex of one slot of [`REASON_TEMPLATES`].
fn slot_pattern(slot: &str) -> Option<String> {
    let alternatives = |set: &[&str]| {
        let escaped: Vec<String> = set.iter().map(|s| regex::escape(s)).collect();
        format!("(?:{})", escaped.join("|"))
    };
    // Lengths are bounded by the reason's, counts by the request's.
    const CLASS: &str = "[A-Z][A-Za-z]+";
    Some(match slot {
        "purpose" => alternatives(&PURPOSES),
        "domain" => alternatives(&DOMAINS),
        "role" => alternatives(&ROLES),
        "identifier-class" => alternatives(&IDENTIFIER_CLASSES),
        "check" => alternatives(&VERIFICATION_CHECKS),
        "classes" => format!("{CLASS}(?:, {CLASS})*"),
        "count" => "[0-9]{1,3}".to_string(),
        "duration" => "[0-9]{1,6} (?:ms|s)".to_string(),
        _ => return None,
    })
}

/// A template as an anchored regex: its text literal, its slots by [`slot_pattern`].
fn template_pattern(template: &str) -> Option<String> {
    let mut out = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}')? + open;
        out.push_str(&slot_pattern(&rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    out.push_str(&regex::escape(rest));
    out.push('$');
    Some(out)
}

fn reason_set() -> &'static RegexSet {
    static SET: OnceLock<RegexSet> = OnceLock::new();
    SET.get_or_init(|| {
        let patterns: Vec<String> = REASON_TEMPLATES
            .iter()
            .filter_map(|t| template_pattern(t))
            .collect();
        // Constant input (tested); an unusable set matches nothing, which refuses every
        // reason: failing closed.
        RegexSet::new(patterns).unwrap_or_else(|_| RegexSet::empty())
    })
}

/// Whether `reason` is one of [`REASON_TEMPLATES`] with its slots filled from their sets.
fn is_vocabulary_reason(reason: &str) -> bool {
    reason.chars().count() <= MAX_REASON_CHARS && reason_set().is_match(reason)
}

/// The reason an event records for a failed verification check: the check's name only.
/// The detail (which can quote the presentation) goes to the requester, never to the log.
pub fn verification_reason(check: &str) -> String {
    if VERIFICATION_CHECKS.contains(&check) {
        format!("verification failed: {check}")
    } else {
        WITHHELD_REASON.to_string()
    }
}

fn check_text(field: String, text: &str, max: usize) -> Result<(), EventTextError> {
    if text.chars().count() > max {
        return Err(EventTextError::TooLong { field, max });
    }
    if text.chars().any(char::is_control) {
        return Err(EventTextError::ControlCharacters { field });
    }
    if let Some(shape) = identifier_shape(text) {
        return Err(EventTextError::IdentifierShaped { field, shape });
    }
    Ok(())
}

/// The one check of an event's free text, run by the gateway before it records and by the
/// visibility service before it logs: reasons are bounded and from `REASON_TEMPLATES`;
/// the failed check, purpose and domain from their closed sets; data classes are FHIR
/// resource type names; the justification is bounded and holds nothing identifier-shaped.
pub fn check_free_text(event: &AccessEvent) -> Result<(), EventTextError> {
    if event.reasons.len() > MAX_REASONS {
        return Err(EventTextError::TooMany {
            field: "reasons",
            max: MAX_REASONS,
        });
    }
    for (i, reason) in event.reasons.iter().enumerate() {
        let field = format!("reasons[{i}]");
        check_text(field.clone(), reason, MAX_REASON_CHARS)?;
        if !is_vocabulary_reason(reason) {
            return Err(EventTextError::OutsideVocabulary { field });
        }
    }
    if let Some(check) = &event.failed_check {
        if !VERIFICATION_CHECKS.contains(&check.as_str()) {
            return Err(EventTextError::OutsideVocabulary {
                field: "failedCheck".into(),
            });
        }
    }
    if !PURPOSES.contains(&event.purpose.as_str()) {
        return Err(EventTextError::OutsideVocabulary {
            field: "purpose".into(),
        });
    }
    if !DOMAINS.contains(&event.domain.as_str()) {
        return Err(EventTextError::OutsideVocabulary {
            field: "domain".into(),
        });
    }
    if event.data_classes.len() > MAX_DATA_CLASSES {
        return Err(EventTextError::TooMany {
            field: "dataClasses",
            max: MAX_DATA_CLASSES,
        });
    }
    for (i, class) in event.data_classes.iter().enumerate() {
        if !is_resource_type_name(class) {
            return Err(EventTextError::OutsideVocabulary {
                field: format!("dataClasses[{i}]"),
            });
        }
    }
    if let Some(j) = &event.justification {
        check_text("justification".into(), j, MAX_JUSTIFICATION_CHARS)?;
    }
    if let Some(p) = &event.privacy {
        if !is_study_id(&p.study) {
            return Err(EventTextError::OutsideVocabulary {
                field: "privacy.study".into(),
            });
        }
    }
    Ok(())
}

/// A FHIR resource type name: an ASCII capital then ASCII letters, 2 to 64 of them.
fn is_resource_type_name(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
}

/// Brings a gateway's event inside [`check_free_text`] where it can without losing the
/// decision: a reason outside the vocabulary keeps its head when that is in the vocabulary
/// (`policy bundle failed to load: <why>` → `policy bundle failed to load`) and is withheld
/// otherwise; reasons beyond `MAX_REASONS` are dropped; the justification is scrubbed of
/// identifier-shaped text and cut to `MAX_JUSTIFICATION_CHARS`. Returns how many members
/// it changed, for the gateway's log (which names no content either).
pub fn confine_free_text(event: &mut AccessEvent) -> usize {
    let mut changed = 0;
    let mut reasons: Vec<String> = Vec::with_capacity(event.reasons.len());
    for reason in event.reasons.drain(..) {
        let kept = if is_vocabulary_reason(&reason) && identifier_shape(&reason).is_none() {
            reason
        } else {
            changed += 1;
            match reason.split_once(": ") {
                Some((head, _)) if is_vocabulary_reason(head) => head.to_string(),
                _ => WITHHELD_REASON.to_string(),
            }
        };
        if !reasons.contains(&kept) {
            reasons.push(kept);
        }
    }
    if reasons.len() > MAX_REASONS {
        reasons.truncate(MAX_REASONS);
        changed += 1;
    }
    event.reasons = reasons;
    if let Some(j) = event.justification.take() {
        let mut scrubbed = scrub_identifiers(&j);
        if let Some((cut, _)) = scrubbed.char_indices().nth(MAX_JUSTIFICATION_CHARS) {
            scrubbed.truncate(cut);
        }
        if scrubbed != j {
            changed += 1;
        }
        event.justification = Some(scrubbed);
    }
    changed
}

// ---------------------------------------------------------------------------------------
// FHIR R4 AuditEvent
// ---------------------------------------------------------------------------------------

/// Code system of the fedgate policy domains (`AuditEvent.subtype`).
const FHIR_DOMAIN_SYSTEM: &str = "https://w3id.org/fedgate/fhir/CodeSystem/domain";
/// Identifier system of the custodians' patient pseudonyms.
const FHIR_PATIENT_REF_SYSTEM: &str = "https://w3id.org/fedgate/patient-ref";
/// Base of the fedgate extension URLs on exported AuditEvents.
const FHIR_EXTENSION_BASE: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/";
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
///   policy domain, in the fedgate domain code system (`FHIR_DOMAIN_SYSTEM`).
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
///   `FHIR_EXTENSION_BASE`.
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
    if let Some(p) = &e.privacy {
        details.push(detail("study", p.study.as_str()));
        details.push(detail("epsilon-micro", p.epsilon_micro.to_string()));
        details.push(detail("budget-left-micro", p.budget_left_micro.to_string()));
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

    #[test]
    fn a_policy_limit_names_its_duration_and_nothing_else() {
        for ok in [
            "policy evaluation failed: time limit of 50 ms exceeded",
            "policy evaluation failed: time limit of 2 s exceeded",
            "policy evaluation failed: memory limit exceeded",
        ] {
            assert!(is_vocabulary_reason(ok), "{ok}");
        }
        for bad in [
            "policy evaluation failed: time limit of 50 years exceeded",
            "policy evaluation failed: time limit of 1234567 ms exceeded",
            "policy evaluation failed: time limit of MRN123 ms exceeded",
        ] {
            assert!(!is_vocabulary_reason(bad), "{bad}");
        }
    }
    use std::collections::BTreeSet;

    /// The JSON Schema (2020-12) of an [`AccessEvent`] as serialized.
    const ACCESS_EVENT_SCHEMA: &str = include_str!("../../schemas/access-event.schema.json");

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
            reasons: vec!["consent permits TREAT for Condition, Observation".into()],
            policy_digest: "ab".repeat(32),
            credential_ids: vec!["urn:uuid:2b7c6f8e-4c1a-4f0e-9a55-0d6a1c3e9b21".into()],
            failed_check: None,
            break_glass: true,
            justification: Some("unconscious patient Jane Doe in the ED".into()),
            review_required: true,
            expires_at: Some("2025-03-01T11:15:30Z".parse().unwrap()),
            privacy: None,
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
            failed_check: Some("proof".into()),
            break_glass: false,
            justification: None,
            review_required: false,
            expires_at: None,
            privacy: None,
        }
    }

    /// A research query: what it spent of the study's privacy budget.
    fn research_event() -> AccessEvent {
        AccessEvent {
            domain: "research".into(),
            purpose: "HRESCH".into(),
            patient_ref: None,
            patient_did_digests: vec![],
            record_count: 0,
            reasons: vec!["the study may query Observation, Patient in aggregate".into()],
            justification: None,
            break_glass: false,
            review_required: false,
            expires_at: None,
            privacy: Some(PrivacySpend {
                study: "urn:fedgate:study:cohort-1".into(),
                epsilon_micro: 500_000,
                budget_left_micro: 2_500_000,
            }),
            ..allow_event()
        }
    }

    fn schema() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(ACCESS_EVENT_SCHEMA).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    #[test]
    fn serialized_events_validate_against_the_schema() {
        let v = schema();
        for e in [allow_event(), deny_event(), research_event()] {
            let instance = serde_json::to_value(&e).unwrap();
            let errors: Vec<String> = v.iter_errors(&instance).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{instance}: {errors:?}");
        }
        // Every member the struct serializes is a property of the schema, and back.
        let schema: Value = serde_json::from_str(ACCESS_EVENT_SCHEMA).unwrap();
        let props: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let (allow, deny, research) = (
            serde_json::to_value(allow_event()).unwrap(),
            serde_json::to_value(deny_event()).unwrap(),
            serde_json::to_value(research_event()).unwrap(),
        );
        let members: BTreeSet<&String> = allow
            .as_object()
            .unwrap()
            .keys()
            .chain(deny.as_object().unwrap().keys())
            .chain(research.as_object().unwrap().keys())
            .collect();
        assert_eq!(props, members);
    }

    #[test]
    fn privacy_spend_is_optional_exact_and_checked() {
        // Events written before the member existed still read, and write back without it.
        let mut old = serde_json::to_value(allow_event()).unwrap();
        assert!(old.get("privacy").is_none());
        old.as_object_mut().unwrap().remove("privacy");
        let back: AccessEvent = serde_json::from_value(old).unwrap();
        assert_eq!(back.privacy, None);
        // A research event round-trips, passes the free-text check and says what it spent.
        let e = research_event();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["privacy"],
            json!({"study": "urn:fedgate:study:cohort-1", "epsilonMicro": 500000,
                "budgetLeftMicro": 2500000})
        );
        assert_eq!(serde_json::from_value::<AccessEvent>(v.clone()).unwrap(), e);
        check_free_text(&e).unwrap();
        let ae = to_fhir_audit_event(&e).to_string();
        assert!(
            ae.contains("epsilon-micro") && ae.contains("500000"),
            "{ae}"
        );
        // A study that is not a study id, a negative or fractional spend, an extra member.
        let mut bad = e.clone();
        bad.privacy.as_mut().unwrap().study = "Jane Doe 1931-02-14".into();
        assert!(check_free_text(&bad).is_err());
        bad.privacy.as_mut().unwrap().study = format!("urn:fedgate:study:{}", "a".repeat(300));
        assert!(check_free_text(&bad).is_err());
        assert!(is_study_id(&format!(
            "urn:fedgate:study:{}",
            "a".repeat(238)
        )));
        assert!(!is_study_id("urn:fedgate:study:"));
        let validator = schema();
        for (k, x) in [
            ("epsilonMicro", json!(-1)),
            ("epsilonMicro", json!(0.5)),
            ("budgetLeftMicro", json!("1")),
            ("study", json!("patient-42")),
            ("extra", json!(1)),
        ] {
            let mut bad = v.clone();
            bad["privacy"][k] = x;
            assert!(!validator.is_valid(&bad), "{k}");
        }
        let mut bad = v;
        bad["privacy"]["extra"] = json!(1);
        assert!(serde_json::from_value::<AccessEvent>(bad).is_err());
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
        assert_eq!(ae["outcomeDesc"], "failed check: proof");
        assert_eq!(ae["purposeOfEvent"], json!([{"text": "NOT-A-PURPOSE"}]));
        assert!(ae["agent"][0].get("who").is_none());
        assert_eq!(ae["agent"].as_array().unwrap().len(), 2);
        assert_eq!(ae["entity"].as_array().unwrap().len(), 1);
    }

    // --- free text ---------------------------------------------------------------------

    fn with_reason(reason: &str) -> AccessEvent {
        let mut e = allow_event();
        e.reasons = vec![reason.to_string()];
        e
    }

    fn shape_of(reason: &str) -> Option<IdentifierShape> {
        match check_free_text(&with_reason(reason)) {
            Err(EventTextError::IdentifierShaped { field, shape }) => {
                assert_eq!(field, "reasons[0]");
                Some(shape)
            }
            _ => None,
        }
    }

    #[test]
    fn the_shipped_reasons_are_in_the_vocabulary() {
        for reason in [
            "consent permits TREAT for Condition, Observation",
            "break-glass ETREAT without consent for Observation, Patient; review required",
            "DocumentReference, Procedure dropped: not allowed for role pharmacist",
            "Coverage dropped: no consent covers it",
            "purpose HPAYMT is not a clinical purpose",
            "no registry contract between this custodian and the requester's organization covers research/HRESCH",
            "no consent permits clinical/ETREAT and break-glass needs a justification of at least 20 characters",
            "ssn token of the clinical domain may be detokenized for TREAT",
            "the study may query Condition, Observation in aggregate",
            "denied by default: no billing rule applied",
            "policy bundle failed to load",
            WITHHELD_REASON,
        ] {
            assert_eq!(check_free_text(&with_reason(reason)), Ok(()), "{reason}");
        }
        for check in VERIFICATION_CHECKS {
            assert!(is_vocabulary_reason(&verification_reason(check)), "{check}");
        }
        assert_eq!(verification_reason("made-up"), WITHHELD_REASON);
        // Every template compiles: the set has one pattern per template.
        assert_eq!(reason_set().len(), REASON_TEMPLATES.len());
    }

    #[test]
    fn ssn_shaped_reasons_are_refused_with_or_without_separators() {
        for ssn in ["123-45-6789", "123456789", "123 45 6789", "123.45.6789"] {
            assert_eq!(
                shape_of(&format!("patient {ssn} is not known")),
                Some(IdentifierShape::Ssn),
                "{ssn}"
            );
        }
        // Full-width digits are digits too.
        assert_eq!(
            shape_of("ssn １２３-４５-６７８９"),
            Some(IdentifierShape::Ssn)
        );
    }

    #[test]
    fn phone_shaped_reasons_are_refused() {
        for phone in [
            "555-123-4567",
            "(555) 123-4567",
            "555.123.4567",
            "+44 20 7946 0958",
        ] {
            assert_eq!(
                shape_of(&format!("call {phone}")),
                Some(IdentifierShape::Phone),
                "{phone}"
            );
        }
    }

    #[test]
    fn email_shaped_reasons_are_refused() {
        assert_eq!(
            shape_of("no consent for jane.doe@example.org"),
            Some(IdentifierShape::Email)
        );
    }

    #[test]
    fn date_shaped_reasons_are_refused() {
        for date in [
            "1980-03-15",
            "03/15/1980",
            "15.03.80",
            "March 15, 1980",
            "15 Mar 1980",
        ] {
            assert_eq!(
                shape_of(&format!("born {date}")),
                Some(IdentifierShape::Date),
                "{date}"
            );
        }
    }

    #[test]
    fn long_digit_runs_are_refused() {
        for run in ["MRN 12345", "00012345678901", "1 2 3 4 5 6 7"] {
            assert_eq!(shape_of(run), Some(IdentifierShape::DigitRun), "{run}");
        }
        // Short numbers are not identifiers.
        assert_eq!(shape_of("at least 20 characters"), None);
    }

    #[test]
    fn reasons_outside_the_grammar_are_refused() {
        for reason in [
            "Jane Doe has no consent",
            // A template with a value that is not from its set.
            "purpose jane is not a clinical purpose",
            "role surgeon may not detokenize",
            "consent permits TREAT for Observation; Jane Doe",
            "consent permits TREAT for jane",
            // Fixed text with a detail appended.
            "policy bundle failed to load: /etc/fedgate/policies/clinical.rego",
            "verification failed: schema: name \"Jane\" is not allowed",
            "",
        ] {
            assert_eq!(
                check_free_text(&with_reason(reason)),
                Err(EventTextError::OutsideVocabulary {
                    field: "reasons[0]".into()
                }),
                "{reason}"
            );
        }
        let e = check_free_text(&with_reason("denied by policy\n")).unwrap_err();
        assert_eq!(
            e,
            EventTextError::ControlCharacters {
                field: "reasons[0]".into()
            }
        );
    }

    #[test]
    fn reasons_are_bounded_in_count_and_length() {
        let mut e = allow_event();
        e.reasons = vec!["denied by policy".into(); MAX_REASONS];
        assert_eq!(check_free_text(&e), Ok(()));
        e.reasons.push("denied by policy".into());
        assert!(matches!(
            check_free_text(&e),
            Err(EventTextError::TooMany {
                field: "reasons",
                ..
            })
        ));
        let long = format!(
            "consent permits TREAT for Observation{}",
            ", Observation".repeat(MAX_REASON_CHARS / 13)
        );
        assert!(matches!(
            check_free_text(&with_reason(&long)),
            Err(EventTextError::TooLong { .. })
        ));
    }

    #[test]
    fn closed_members_refuse_values_outside_their_sets() {
        type Mutation = Box<dyn Fn(&mut AccessEvent)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "failedCheck",
                Box::new(|e| e.failed_check = Some("123-45-6789".into())),
            ),
            ("purpose", Box::new(|e| e.purpose = "Jane Doe".into())),
            ("domain", Box::new(|e| e.domain = "jane".into())),
            (
                "dataClasses[2]",
                Box::new(|e| e.data_classes.push("123-45-6789".into())),
            ),
        ];
        for (field, mutate) in cases {
            let mut e = allow_event();
            mutate(&mut e);
            assert_eq!(
                check_free_text(&e),
                Err(EventTextError::OutsideVocabulary {
                    field: field.into()
                }),
                "{field}"
            );
        }
        let mut e = allow_event();
        e.justification = Some("patient SSN 123-45-6789, call 555-123-4567".into());
        assert_eq!(
            check_free_text(&e),
            Err(EventTextError::IdentifierShaped {
                field: "justification".into(),
                shape: IdentifierShape::Ssn
            })
        );
        e.justification = Some("x".repeat(MAX_JUSTIFICATION_CHARS + 1));
        assert!(matches!(
            check_free_text(&e),
            Err(EventTextError::TooLong { .. })
        ));
    }

    #[test]
    fn refusals_name_the_member_never_the_content() {
        let e = check_free_text(&with_reason("patient 123-45-6789")).unwrap_err();
        assert!(!e.to_string().contains("6789"), "{e}");
    }

    #[test]
    fn confining_keeps_vocabulary_heads_and_withholds_the_rest() {
        let mut e = allow_event();
        e.reasons = vec![
            "consent permits TREAT for Observation".into(),
            "policy bundle failed to load: clinical.rego:12:3: error".into(),
            "patient 123-45-6789 unknown".into(),
            "Jane Doe: no consent".into(),
        ];
        e.justification =
            Some("unconscious, SSN 123-45-6789, wife at 555-123-4567 or a@b.org\u{7}".into());
        assert!(confine_free_text(&mut e) > 0);
        assert_eq!(
            e.reasons,
            [
                "consent permits TREAT for Observation",
                "policy bundle failed to load",
                WITHHELD_REASON,
            ]
        );
        assert_eq!(
            e.justification.as_deref(),
            Some("unconscious, SSN [removed], wife at [removed] or [removed] ")
        );
        assert_eq!(check_free_text(&e), Ok(()));
        // What is already inside is left alone.
        let mut same = e.clone();
        assert_eq!(confine_free_text(&mut same), 0);
        assert_eq!(same, e);

        e.reasons = vec!["denied by policy".into(); MAX_REASONS + 5];
        e.reasons.extend((0..40).map(|i| format!("x{i}: y")));
        confine_free_text(&mut e);
        assert!(e.reasons.len() <= MAX_REASONS);
        e.justification = Some("é".repeat(MAX_JUSTIFICATION_CHARS * 2));
        confine_free_text(&mut e);
        assert_eq!(check_free_text(&e), Ok(()));
    }

    /// Every message of the shipped policies (policies/*.rego) and every fixed deny of the
    /// gateway is in the vocabulary: a policy change that adds or rewords a message fails
    /// here until REASON_TEMPLATES follows, instead of being withheld in production.
    #[test]
    fn the_shipped_policy_messages_are_in_the_vocabulary() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let literal = Regex::new(r#""([^"\\]*)""#).unwrap();
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(root.join("policies")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".rego") || name.ends_with("_test.rego") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.split('#').next().unwrap_or_default();
                for c in literal.captures_iter(code) {
                    // Messages have words; table entries and the ", " separator have none.
                    let m = &c[1];
                    if m.split(' ').filter(|w| !w.is_empty()).count() > 1 {
                        messages.push((name.clone(), m.to_string()));
                    }
                }
            }
        }
        let deny = Regex::new(r#"Decision::deny\(\s*"([^"\\]*)""#).unwrap();
        let mut sources = vec![root.join("gateway/src")];
        let mut files = Vec::new();
        while let Some(dir) = sources.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs")
                {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 10, "the gateway's sources were not found");
        for path in files {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // Production code only: a test may deny with any text.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for c in deny.captures_iter(code) {
                messages.push((file.clone(), c[1].to_string()));
            }
        }
        assert!(messages.len() > 40, "found only {messages:?}");
        // A placeholder stands for a value of some slot: the message is in the vocabulary
        // when one choice of sample values makes it a vocabulary reason.
        let samples = [
            "TREAT",
            "clinical",
            "nurse",
            "ssn",
            "Observation, Patient",
            "20",
        ];
        let placeholder = Regex::new("%[svd]").unwrap();
        for (file, m) in messages {
            let slots = placeholder.find_iter(&m).count() as u32;
            let found = (0..samples.len().pow(slots)).any(|mut pick| {
                let filled = placeholder.replace_all(&m, |_: &regex::Captures| {
                    let s = samples[pick % samples.len()];
                    pick /= samples.len();
                    s
                });
                is_vocabulary_reason(&filled)
            });
            assert!(found, "{file}: {m:?} is not in REASON_TEMPLATES");
        }
    }
}
