//! A resource's `meta`: the custodian server's record keeping. Its values are the same in
//! every answer the resource is in, whoever it is for, so whatever of it leaves unchanged
//! links answers that pseudonyms per recipient and domain keep apart. It is data under the
//! `meta` class, redacted unless an obligation names it:
//!
//! | element | `reveal` | `tokenize`, `pseudonymize` | `generalize`, `redact`, unnamed |
//! |---|---|---|---|
//! | `versionId` | kept (a FHIR id) | pseudonym of the resource's version, per recipient and domain | removed |
//! | `lastUpdated` | kept, then as `dates` says (and shifted under `shift_dates`) | removed | removed |
//! | `tag` | kept | removed | removed |
//! | `security` | kept | HL7 security labels only | HL7 security labels only |
//! | `profile` | canonical URLs kept | the same | the same |
//! | `source`, `extension`, `id`, anything else | removed | removed | removed |
//!
//! Why `profile` stays: a profile's canonical URL says what shape the resource has (US Core
//! and the like), the same for every patient; one that is no canonical URL or that holds
//! one of the patient's values goes. Why HL7 security labels stay: a confidentiality code
//! (`R`, `V`) or a sensitivity or handling code (`PSY`, `42CFRPart2`, `NORDSCLCD`) tells the
//! recipient how to treat what it receives, and a code of a closed HL7 vocabulary is shared
//! by every resource so labelled; only `system` and `code` leave, and a code shaped like no
//! code of those systems goes. Labels of any other system, like tags, are whatever the
//! custodian's software wrote there (batch names, routing, internal ids) and go.
//! `source` names the custodian's feeds and request ids and goes whatever policy says.
//! A contained resource never has a version or a last update (FHIR dom-4): both go.

use serde_json::{Map, Value};

use super::classes::{Action, IdentifierClass};
use super::engine::Engine;
use crate::records::is_fhir_id;

const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// The whole v3 Confidentiality code system.
const CONFIDENTIALITY_CODES: [&str; 6] = ["U", "L", "M", "N", "R", "V"];
/// The other HL7 code systems of FHIR R4's security labels: sensitivity and compartments
/// (ActCode), handling (obligation and refrain policies), integrity (ObservationValue),
/// purpose of use (ActReason) and privacy law (ActUSPrivacyLaw).
const LABEL_SYSTEMS: [&str; 6] = [
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://terminology.hl7.org/CodeSystem/v3-ObligationPolicy",
    "http://terminology.hl7.org/CodeSystem/v3-RefrainPolicy",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "http://terminology.hl7.org/CodeSystem/v3-ActUSPrivacyLaw",
];
/// The longest code of those systems used as a label is shorter (`42CFRPart2`, `NORDSCLCD`).
const MAX_LABEL_CODE: usize = 16;
/// Longer than any canonical URL a profile has.
const MAX_CANONICAL: usize = 512;

impl Engine<'_, '_> {
    /// `obj.meta` of a resource of type `ty`, before its id is rewritten (a pseudonymized
    /// `versionId` is one of the resource's own version).
    pub(super) fn meta(&mut self, obj: &mut Map<String, Value>, ty: &str, contained: bool) {
        let Some(Value::Object(meta)) = obj.remove("meta") else {
            return;
        };
        let action = self.action(IdentifierClass::Meta);
        let revealed = matches!(action, Action::Reveal | Action::Keep);
        let mut out = Map::new();
        if !contained {
            match (meta.get("versionId"), action) {
                (Some(Value::String(v)), Action::Reveal | Action::Keep) if is_fhir_id(v) => {
                    out.insert("versionId".into(), Value::String(v.clone()));
                }
                (Some(Value::String(v)), Action::Tokenize | Action::Pseudonymize) => {
                    if let Some(Value::String(id)) = obj.get("id") {
                        // Per recipient and domain like the id, and one per version: a
                        // recipient can tell that a resource changed, and nothing more.
                        let version = format!("{ty}/{id}/_history/{v}");
                        let p = self.pseudonym(IdentifierClass::Meta, &version);
                        out.insert("versionId".into(), Value::String(p.replace('_', ".")));
                    }
                }
                _ => {}
            }
            if revealed {
                if let Some(t @ Value::String(_)) = meta.get("lastUpdated") {
                    out.insert("lastUpdated".into(), t.clone());
                }
            }
        }
        if let Some(Value::Array(profiles)) = meta.get("profile") {
            let kept: Vec<Value> = profiles
                .iter()
                .filter_map(Value::as_str)
                .filter(|p| is_canonical(p) && self.scrubber.scrub(p, false).is_none())
                .map(|p| Value::String(p.to_string()))
                .collect();
            if !kept.is_empty() {
                out.insert("profile".into(), Value::Array(kept));
            }
        }
        let security = match meta.get("security") {
            Some(labels) if revealed => Some(labels.clone()),
            Some(Value::Array(labels)) => {
                let kept: Vec<Value> = labels.iter().filter_map(hl7_label).collect();
                (!kept.is_empty()).then_some(Value::Array(kept))
            }
            _ => None,
        };
        if let Some(labels) = security {
            out.insert("security".into(), labels);
        }
        if revealed {
            if let Some(tags) = meta.get("tag") {
                out.insert("tag".into(), tags.clone());
            }
        }
        if !out.is_empty() {
            obj.insert("meta".into(), Value::Object(out));
        }
    }
}

/// A security label of an HL7 code system, as `system` and `code` only; `None` for any
/// other coding.
fn hl7_label(coding: &Value) -> Option<Value> {
    let system = coding.get("system")?.as_str()?;
    let code = coding.get("code")?.as_str()?;
    let known = if system == CONFIDENTIALITY {
        CONFIDENTIALITY_CODES.contains(&code)
    } else {
        LABEL_SYSTEMS.contains(&system)
            && (1..=MAX_LABEL_CODE).contains(&code.len())
            && code.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    known.then(|| serde_json::json!({"system": system, "code": code}))
}

/// An absolute canonical URL (`http(s)://` or `urn:`, an optional `|version`), nothing
/// else: no whitespace, no query, no fragment.
fn is_canonical(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("urn:"))
        && s.len() <= MAX_CANONICAL
        && !s.contains(['?', '#'])
        && s.bytes().all(|b| b.is_ascii_graphic())
}
