//! Obligations of a decision applied to the FHIR resources that leave the gateway
//! (docs/gateway-contract.md §3): each identifier class is revealed, tokenized (vault),
//! pseudonymized (HMAC per recipient and domain), generalized (HIPAA Safe Harbor) or
//! redacted, with the precedence reveal > tokenize > pseudonymize > generalize > redact.
//!
//! Fail closed: a direct-identifier class that no obligation names is redacted. Classes
//! without a meaningful form of an operation fall to the stricter one: `generalize` of a
//! name, number, telecom or id is a redaction, `tokenize`/`pseudonymize` of dates,
//! narrative or attachments is a redaction, and `tokenize` of ids is a pseudonym (ids must
//! stay consistent across the references of a response, and the custodian can recompute
//! them).
//!
//! Besides the structured fields, every free-text string that leaves (narratives, notes,
//! displays, text attachments) is scrubbed of the values of the patient's direct
//! identifiers that are not revealed: a value copied into free text is not protected by
//! transforming only its structured field.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Map, Value};

use crate::records::{is_fhir_id, is_type_name};
use crate::vault::{hmac_sha256, Vault, VaultError};

/// Extension put on a Patient whose age is over 89 when the birth date is generalized.
pub const AGE_BAND_EXTENSION: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/age-band";
/// Primitive extension holding the vault token of a tokenized date (`_birthDate`).
pub const TOKEN_EXTENSION: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/token";
/// Primitive extension holding the pseudonym of a pseudonymized date.
pub const PSEUDONYM_EXTENSION: &str = "https://w3id.org/fedgate/fhir/StructureDefinition/pseudonym";

/// What replaces an identifier value found in free text.
pub const REDACTED: &str = "[redacted]";
const PSEUDONYM_PREFIX: &str = "p-";
const TOKEN_PREFIX: &str = "tok_";

/// ZIP3 areas of 20,000 people or fewer (Safe Harbor, 2000 census): reported as "000".
const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Resource types that are about the organization and its staff, not about the patient
/// (the records' shared types): their names and identifiers are kept and their text is
/// not scrubbed.
use crate::records::SHARED_TYPES;

/// Resource types whose names, telecoms, addresses and identifiers are a person's direct
/// identifiers.
const PERSON_TYPES: [&str; 2] = ["Patient", "RelatedPerson"];

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("unknown identifier class {0:?} in obligations")]
    UnknownClass(String),
    #[error("token vault: {0}")]
    Vault(#[from] VaultError),
}

/// The closed vocabulary of identifier classes (contract §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierClass {
    Name,
    Mrn,
    Ssn,
    Passport,
    DriversLicense,
    OtherIdentifiers,
    Telecom,
    Address,
    BirthDate,
    Dates,
    PatientId,
    ResourceIds,
    Narrative,
    Attachments,
}

impl IdentifierClass {
    pub const ALL: [IdentifierClass; 14] = [
        IdentifierClass::Name,
        IdentifierClass::Mrn,
        IdentifierClass::Ssn,
        IdentifierClass::Passport,
        IdentifierClass::DriversLicense,
        IdentifierClass::OtherIdentifiers,
        IdentifierClass::Telecom,
        IdentifierClass::Address,
        IdentifierClass::BirthDate,
        IdentifierClass::Dates,
        IdentifierClass::PatientId,
        IdentifierClass::ResourceIds,
        IdentifierClass::Narrative,
        IdentifierClass::Attachments,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierClass::Name => "name",
            IdentifierClass::Mrn => "mrn",
            IdentifierClass::Ssn => "ssn",
            IdentifierClass::Passport => "passport",
            IdentifierClass::DriversLicense => "drivers-license",
            IdentifierClass::OtherIdentifiers => "other-identifiers",
            IdentifierClass::Telecom => "telecom",
            IdentifierClass::Address => "address",
            IdentifierClass::BirthDate => "birth-date",
            IdentifierClass::Dates => "dates",
            IdentifierClass::PatientId => "patient-id",
            IdentifierClass::ResourceIds => "resource-ids",
            IdentifierClass::Narrative => "narrative",
            IdentifierClass::Attachments => "attachments",
        }
    }

    pub fn parse(name: &str) -> Option<IdentifierClass> {
        IdentifierClass::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
    }

    /// Direct identifiers are redacted when no obligation names them.
    pub fn is_direct(self) -> bool {
        !matches!(
            self,
            IdentifierClass::Dates
                | IdentifierClass::ResourceIds
                | IdentifierClass::Narrative
                | IdentifierClass::Attachments
        )
    }
}

/// What happens to one class, after precedence and the fail-closed default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Named by `reveal`.
    Reveal,
    /// Named by no obligation and not a direct identifier: left as it is.
    Keep,
    Tokenize,
    Pseudonymize,
    Generalize,
    Redact,
}

/// The tokenizer applies a decision's obligations as the policy engine read them.
pub use crate::policy::Obligations;

impl Obligations {
    /// The action for `class`: the first list naming it in precedence order, else redact
    /// for a direct identifier and keep for the others.
    pub fn action(&self, class: IdentifierClass) -> Action {
        let named = |list: &[String]| list.iter().any(|c| c == class.as_str());
        if named(&self.reveal) {
            Action::Reveal
        } else if named(&self.tokenize) {
            Action::Tokenize
        } else if named(&self.pseudonymize) {
            Action::Pseudonymize
        } else if named(&self.generalize) {
            Action::Generalize
        } else if named(&self.redact) || class.is_direct() {
            Action::Redact
        } else {
            Action::Keep
        }
    }
}

/// Who the output is for, and the keys that protect it.
pub struct TokenizeContext<'a> {
    /// The requesting organization's DID: pseudonyms and tokens are bound to it.
    pub recipient_org: &'a str,
    /// The data domain of the request (clinical, billing, research).
    pub domain: &'a str,
    pub pseudonym_key: &'a [u8; 32],
    pub vault: &'a Vault,
    /// The decision time: ages for the 90+ rule are computed at this instant.
    pub now: DateTime<Utc>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// HMAC-SHA256(key, recipient ‖ 0 ‖ domain ‖ 0 ‖ class ‖ 0 ‖ value), base64url, prefixed
/// `p-`: stable for one recipient and domain, unlinkable across them.
pub fn pseudonym(
    key: &[u8; 32],
    recipient_org: &str,
    domain: &str,
    class: &str,
    value: &str,
) -> String {
    let mac = hmac_sha256(
        key,
        &[
            recipient_org.as_bytes(),
            domain.as_bytes(),
            class.as_bytes(),
            value.as_bytes(),
        ],
    );
    format!("{PSEUDONYM_PREFIX}{}", b64url(&mac))
}

/// A pseudonym only the key holder can recompute, for the custodian's own records (e.g.
/// the patient reference in access events): HMAC(key, purpose ‖ 0 ‖ value), prefixed `p-`.
pub fn keyed_pseudonym(key: &[u8; 32], purpose: &str, value: &str) -> String {
    let mac = hmac_sha256(key, &[purpose.as_bytes(), value.as_bytes()]);
    format!("{PSEUDONYM_PREFIX}{}", b64url(&mac))
}

/// The class of an identifier of a person, from its type code (v2-0203) or system.
pub fn classify_identifier(identifier: &Value) -> IdentifierClass {
    let codes: Vec<&str> = identifier["type"]["coding"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["code"].as_str()).collect())
        .unwrap_or_default();
    let system = identifier["system"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let has = |code: &str| codes.iter().any(|c| c.eq_ignore_ascii_case(code));
    // The most sensitive reading wins when the signals disagree.
    if has("SS") || system == "http://hl7.org/fhir/sid/us-ssn" || system.ends_with("/us-ssn") {
        IdentifierClass::Ssn
    } else if has("PPN") || system.contains("passport") {
        IdentifierClass::Passport
    } else if has("DL") || system.contains("driver") {
        IdentifierClass::DriversLicense
    } else if has("MR") {
        IdentifierClass::Mrn
    } else {
        IdentifierClass::OtherIdentifiers
    }
}

/// Applies `obligations` to the resources of one response. Provenance resources and
/// `meta.source` are always removed; with `max_records` the output is cut to that many
/// resources, Patient first.
pub fn apply(
    resources: Vec<Value>,
    obligations: &Obligations,
    ctx: &TokenizeContext<'_>,
) -> Result<Vec<Value>, TokenizeError> {
    obligations
        .validate()
        .map_err(|e| TokenizeError::UnknownClass(e.0))?;
    let mut resources: Vec<Value> = resources
        .into_iter()
        .filter(|r| {
            r.as_object().is_some_and(|o| {
                o.get("resourceType")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "Provenance")
            })
        })
        .collect();
    resources.sort_by_key(|r| r["resourceType"] != "Patient");
    if let Some(max) = obligations.max_records {
        resources.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }

    let mut engine = Engine::new(obligations, ctx, &resources);
    for resource in &mut resources {
        if let Value::Object(obj) = resource {
            engine.resource(obj, false)?;
            prune(obj);
        }
    }
    if engine.created_tokens {
        ctx.vault.flush()?;
    }
    Ok(resources)
}

struct Engine<'a, 'c> {
    ctx: &'a TokenizeContext<'c>,
    actions: HashMap<IdentifierClass, Action>,
    /// Resource id → type, to resolve `urn:uuid:` references.
    id_types: HashMap<String, String>,
    /// Values of the patient's direct identifiers that are not revealed, lowercase-free:
    /// matched ASCII-case-insensitively on word boundaries in free text.
    scrub: Vec<String>,
    created_tokens: bool,
}

impl<'a, 'c> Engine<'a, 'c> {
    fn new(obligations: &Obligations, ctx: &'a TokenizeContext<'c>, resources: &[Value]) -> Self {
        let actions = IdentifierClass::ALL
            .into_iter()
            .map(|c| (c, obligations.action(c)))
            .collect();
        let mut engine = Engine {
            ctx,
            actions,
            id_types: HashMap::new(),
            scrub: Vec::new(),
            created_tokens: false,
        };
        let mut scrub = HashSet::new();
        for r in resources {
            if let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) {
                engine.id_types.insert(id.to_string(), t.to_string());
            }
            engine.collect_secrets(r, &mut scrub);
        }
        let mut scrub: Vec<String> = scrub.into_iter().collect();
        // Longest first, so a full line is replaced before a word inside it.
        scrub.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        engine.scrub = scrub;
        engine
    }

    fn action(&self, class: IdentifierClass) -> Action {
        self.actions.get(&class).copied().unwrap_or(Action::Redact)
    }

    /// Gathers the identifying values of every person (top level or contained) whose class
    /// is not revealed.
    fn collect_secrets(&self, value: &Value, out: &mut HashSet<String>) {
        match value {
            Value::Object(obj) => {
                let ty = obj.get("resourceType").and_then(Value::as_str);
                if let Some(ty) = ty.filter(|t| PERSON_TYPES.contains(t)) {
                    self.person_secrets(ty, obj, out);
                }
                if ty == Some("Coverage") && self.hidden(IdentifierClass::OtherIdentifiers) {
                    add_secret(out, obj.get("subscriberId"));
                    for i in array(obj.get("identifier")) {
                        add_secret(out, i.get("value"));
                    }
                }
                for v in obj.values() {
                    self.collect_secrets(v, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    self.collect_secrets(v, out);
                }
            }
            _ => {}
        }
    }

    fn hidden(&self, class: IdentifierClass) -> bool {
        !matches!(self.action(class), Action::Reveal | Action::Keep)
    }

    fn person_secrets(&self, ty: &str, obj: &Map<String, Value>, out: &mut HashSet<String>) {
        if ty == "Patient" && self.hidden(IdentifierClass::PatientId) {
            add_secret(out, obj.get("id"));
        }
        for ident in array(obj.get("identifier")) {
            if self.hidden(classify_identifier(ident)) {
                add_secret(out, ident.get("value"));
            }
        }
        if self.hidden(IdentifierClass::BirthDate) {
            add_secret(out, obj.get("birthDate"));
        }
        let mut names: Vec<&Value> = array(obj.get("name")).collect();
        let mut telecoms: Vec<&Value> = array(obj.get("telecom")).collect();
        let mut addresses: Vec<&Value> = array(obj.get("address")).collect();
        for contact in array(obj.get("contact")) {
            names.extend(contact.get("name"));
            telecoms.extend(array(contact.get("telecom")));
            addresses.extend(contact.get("address"));
        }
        for ext in array(obj.get("extension")) {
            if let Some(a) = ext.get("valueAddress") {
                addresses.push(a);
            }
            if let Some(n) = ext.get("valueHumanName") {
                names.push(n);
            }
            if is_name_extension(&ext["url"]) && self.hidden(IdentifierClass::Name) {
                add_secret(out, ext.get("valueString"));
            }
        }
        if self.hidden(IdentifierClass::Name) {
            for n in names {
                add_secret(out, n.get("family"));
                add_secret(out, n.get("text"));
                for g in array(n.get("given")) {
                    add_secret(out, Some(g));
                }
            }
        }
        if self.hidden(IdentifierClass::Telecom) {
            for t in telecoms {
                add_secret(out, t.get("value"));
            }
        }
        if self.hidden(IdentifierClass::Address) {
            for a in addresses {
                for key in ["city", "district", "postalCode", "text"] {
                    add_secret(out, a.get(key));
                }
                for l in array(a.get("line")) {
                    add_secret(out, Some(l));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Values
    // ---------------------------------------------------------------------------------

    fn token(&mut self, class: IdentifierClass, value: &str) -> Result<String, TokenizeError> {
        let (token, created) = self.ctx.vault.put_tracked(
            value,
            class.as_str(),
            self.ctx.recipient_org,
            self.ctx.domain,
        )?;
        self.created_tokens |= created;
        Ok(token)
    }

    fn pseudonym(&self, class: IdentifierClass, value: &str) -> String {
        pseudonym(
            self.ctx.pseudonym_key,
            self.ctx.recipient_org,
            self.ctx.domain,
            class.as_str(),
            value,
        )
    }

    /// A string of a direct identifier under its class's action: `None` removes it.
    /// Generalization has no meaning for these values and removes them.
    fn protect(
        &mut self,
        class: IdentifierClass,
        value: &str,
    ) -> Result<Option<String>, TokenizeError> {
        Ok(match self.action(class) {
            Action::Reveal | Action::Keep => Some(value.to_string()),
            Action::Tokenize => Some(self.token(class, value)?),
            Action::Pseudonymize => Some(self.pseudonym(class, value)),
            Action::Generalize | Action::Redact => None,
        })
    }

    /// Applies [`Engine::protect`] to the string at `obj[key]`, removing the key when the
    /// value goes.
    fn protect_field(
        &mut self,
        obj: &mut Map<String, Value>,
        key: &str,
        class: IdentifierClass,
    ) -> Result<(), TokenizeError> {
        match obj.get(key) {
            None => {}
            Some(Value::String(s)) => {
                let s = s.clone();
                match self.protect(class, &s)? {
                    Some(v) => {
                        obj.insert(key.to_string(), Value::String(v));
                    }
                    None => {
                        obj.remove(key);
                    }
                }
            }
            // A malformed value of an identifying field cannot be transformed: drop it
            // unless the class is revealed.
            Some(_) if self.hidden(class) => {
                obj.remove(key);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// `new id` of a resource (`None`: the id and every reference to it are removed).
    fn map_id(&self, ty: &str, id: &str) -> Option<String> {
        if ty == "Provenance" {
            return None;
        }
        let (class, input) = if ty == "Patient" {
            (IdentifierClass::PatientId, id.to_string())
        } else {
            (IdentifierClass::ResourceIds, format!("{ty}/{id}"))
        };
        match self.action(class) {
            Action::Reveal | Action::Keep => Some(id.to_string()),
            // FHIR ids allow [A-Za-z0-9-.] only: '.' stands in for base64url's '_'.
            Action::Tokenize | Action::Pseudonymize => {
                Some(self.pseudonym(class, &input).replace('_', "."))
            }
            Action::Generalize | Action::Redact => None,
        }
    }

    // ---------------------------------------------------------------------------------
    // Resources
    // ---------------------------------------------------------------------------------

    /// One resource; `contained` ones keep their ids, which only `#id` references in the
    /// same container use.
    fn resource(
        &mut self,
        obj: &mut Map<String, Value>,
        contained: bool,
    ) -> Result<(), TokenizeError> {
        let ty = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(Value::Object(meta)) = obj.get_mut("meta") {
            meta.remove("source");
        }
        if !contained {
            let new = match obj.get("id") {
                Some(Value::String(id)) => self.map_id(&ty, id),
                _ => None,
            };
            match new {
                Some(new) => {
                    obj.insert("id".into(), Value::String(new));
                }
                None => {
                    obj.remove("id");
                }
            }
        }
        if PERSON_TYPES.contains(&ty.as_str()) {
            self.person(&ty, obj)?;
        } else if ty == "Device" {
            self.device(obj)?;
        } else if ty == "Coverage" {
            self.protect_field(obj, "subscriberId", IdentifierClass::OtherIdentifiers)?;
            self.identifiers(obj, |_| IdentifierClass::OtherIdentifiers)?;
        } else if !SHARED_TYPES.contains(&ty.as_str()) {
            self.resource_identifiers(obj);
        }
        let shared = SHARED_TYPES.contains(&ty.as_str());
        self.walk_object(obj, &ty, shared)
    }

    /// Patient and RelatedPerson: identifiers, names, telecoms, addresses, birth date,
    /// photo and contacts.
    fn person(&mut self, ty: &str, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
        self.identifiers(obj, classify_identifier)?;
        self.names(obj, "name")?;
        self.telecoms(obj, "telecom")?;
        self.addresses(obj, "address")?;
        self.birth_date(ty, obj)?;
        if self.action(IdentifierClass::Name) != Action::Reveal {
            // A face identifies like a name.
            obj.remove("photo");
        }
        if let Some(Value::Array(contacts)) = obj.get_mut("contact") {
            let mut contacts = std::mem::take(contacts);
            for c in &mut contacts {
                if let Value::Object(c) = c {
                    self.names(c, "name")?;
                    self.telecoms(c, "telecom")?;
                    self.addresses(c, "address")?;
                }
            }
            obj.insert("contact".into(), Value::Array(contacts));
        }
        if let Some(Value::Array(exts)) = obj.get_mut("extension") {
            let exts = std::mem::take(exts);
            let mut kept = Vec::with_capacity(exts.len());
            for mut ext in exts {
                let Value::Object(e) = &mut ext else { continue };
                if e.contains_key("valueAddress") {
                    self.addresses(e, "valueAddress")?;
                    if !e.contains_key("valueAddress") {
                        continue;
                    }
                }
                if e.contains_key("valueHumanName") {
                    self.names(e, "valueHumanName")?;
                    if !e.contains_key("valueHumanName") {
                        continue;
                    }
                }
                if is_name_extension(e.get("url").unwrap_or(&Value::Null)) {
                    self.protect_field(e, "valueString", IdentifierClass::Name)?;
                    if !e.contains_key("valueString") {
                        continue;
                    }
                }
                kept.push(ext);
            }
            obj.insert("extension".into(), Value::Array(kept));
        }
        Ok(())
    }

    /// `identifier[]` of `obj`, each under the class `classify` gives it: the system and
    /// type stay, the value is transformed, or the whole entry is dropped.
    fn identifiers(
        &mut self,
        obj: &mut Map<String, Value>,
        classify: impl Fn(&Value) -> IdentifierClass,
    ) -> Result<(), TokenizeError> {
        let Some(list) = obj.get_mut("identifier") else {
            return Ok(());
        };
        let items = match std::mem::take(list) {
            Value::Array(items) => items,
            other => vec![other],
        };
        let mut kept = Vec::with_capacity(items.len());
        for mut item in items {
            let class = classify(&item);
            let Value::Object(ident) = &mut item else {
                continue;
            };
            match self.action(class) {
                Action::Reveal | Action::Keep => {}
                Action::Generalize | Action::Redact => continue,
                Action::Tokenize | Action::Pseudonymize => {
                    self.protect_field(ident, "value", class)?;
                }
            }
            kept.push(item);
        }
        obj.insert("identifier".into(), Value::Array(kept));
        Ok(())
    }

    /// Business identifiers of the patient's other resources (claims, encounters...) go
    /// with their ids.
    fn resource_identifiers(&mut self, obj: &mut Map<String, Value>) {
        let action = self.action(IdentifierClass::ResourceIds);
        let Some(list) = obj.get_mut("identifier") else {
            return;
        };
        match action {
            Action::Reveal | Action::Keep => {}
            Action::Generalize | Action::Redact => {
                obj.remove("identifier");
            }
            Action::Tokenize | Action::Pseudonymize => {
                let items = match std::mem::take(list) {
                    Value::Array(items) => items,
                    other => vec![other],
                };
                let mut kept = Vec::new();
                for mut item in items {
                    if let Some(v) = item.get("value").and_then(Value::as_str) {
                        let p = self.pseudonym(IdentifierClass::ResourceIds, v);
                        item["value"] = Value::String(p);
                        kept.push(item);
                    } else if item.is_object() {
                        kept.push(item);
                    }
                }
                obj.insert("identifier".into(), Value::Array(kept));
            }
        }
    }

    /// A device attached to the patient: its serial numbers identify them (Safe Harbor).
    fn device(&mut self, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
        let class = IdentifierClass::OtherIdentifiers;
        self.identifiers(obj, |_| class)?;
        for key in ["serialNumber", "lotNumber", "distinctIdentifier"] {
            self.protect_field(obj, key, class)?;
        }
        if let Some(Value::Array(carriers)) = obj.get_mut("udiCarrier") {
            let mut carriers = std::mem::take(carriers);
            for c in &mut carriers {
                if let Value::Object(c) = c {
                    for key in ["deviceIdentifier", "carrierHRF", "carrierAIDC"] {
                        self.protect_field(c, key, class)?;
                    }
                }
            }
            obj.insert("udiCarrier".into(), Value::Array(carriers));
        }
        Ok(())
    }

    fn names(&mut self, obj: &mut Map<String, Value>, key: &str) -> Result<(), TokenizeError> {
        let class = IdentifierClass::Name;
        match self.action(class) {
            Action::Reveal | Action::Keep => Ok(()),
            Action::Generalize | Action::Redact => {
                obj.remove(key);
                Ok(())
            }
            Action::Tokenize | Action::Pseudonymize => {
                let Some(v) = obj.get_mut(key) else {
                    return Ok(());
                };
                let mut v = v.take();
                for name in as_objects(&mut v) {
                    self.protect_field(name, "family", class)?;
                    self.protect_field(name, "text", class)?;
                    self.protect_list(name, "given", class)?;
                }
                obj.insert(key.to_string(), v);
                Ok(())
            }
        }
    }

    fn protect_list(
        &mut self,
        obj: &mut Map<String, Value>,
        key: &str,
        class: IdentifierClass,
    ) -> Result<(), TokenizeError> {
        let Some(Value::Array(items)) = obj.get_mut(key) else {
            if obj.contains_key(key) && self.hidden(class) {
                obj.remove(key);
            }
            return Ok(());
        };
        let items = std::mem::take(items);
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Value::String(s) = &item {
                if let Some(v) = self.protect(class, s)? {
                    out.push(Value::String(v));
                }
            }
        }
        obj.insert(key.to_string(), Value::Array(out));
        Ok(())
    }

    fn telecoms(&mut self, obj: &mut Map<String, Value>, key: &str) -> Result<(), TokenizeError> {
        let class = IdentifierClass::Telecom;
        match self.action(class) {
            Action::Reveal | Action::Keep => Ok(()),
            Action::Generalize | Action::Redact => {
                obj.remove(key);
                Ok(())
            }
            Action::Tokenize | Action::Pseudonymize => {
                let Some(v) = obj.get_mut(key) else {
                    return Ok(());
                };
                let mut v = v.take();
                for t in as_objects(&mut v) {
                    self.protect_field(t, "value", class)?;
                }
                obj.insert(key.to_string(), v);
                Ok(())
            }
        }
    }

    fn addresses(&mut self, obj: &mut Map<String, Value>, key: &str) -> Result<(), TokenizeError> {
        let class = IdentifierClass::Address;
        let action = self.action(class);
        match action {
            Action::Reveal | Action::Keep => Ok(()),
            Action::Redact => {
                obj.remove(key);
                Ok(())
            }
            Action::Generalize => {
                let Some(v) = obj.get_mut(key) else {
                    return Ok(());
                };
                for a in as_objects(v) {
                    generalize_address(a);
                }
                Ok(())
            }
            Action::Tokenize | Action::Pseudonymize => {
                let Some(v) = obj.get_mut(key) else {
                    return Ok(());
                };
                let mut v = v.take();
                for a in as_objects(&mut v) {
                    // Coordinates are as precise as the street address.
                    a.remove("extension");
                    for field in ["city", "district", "postalCode", "text"] {
                        self.protect_field(a, field, class)?;
                    }
                    self.protect_list(a, "line", class)?;
                }
                obj.insert(key.to_string(), v);
                Ok(())
            }
        }
    }

    fn birth_date(&mut self, ty: &str, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
        let class = IdentifierClass::BirthDate;
        let action = self.action(class);
        if action == Action::Reveal {
            return Ok(());
        }
        // `_birthDate` may carry the birth time (patient-birthTime): never kept alone.
        obj.remove("_birthDate");
        let Some(value) = obj.remove("birthDate") else {
            return Ok(());
        };
        let Some(date) = value.as_str() else {
            return Ok(());
        };
        match action {
            Action::Reveal | Action::Keep => {
                obj.insert("birthDate".into(), value.clone());
            }
            Action::Redact => {}
            Action::Tokenize => {
                let token = self.token(class, date)?;
                obj.insert(
                    "_birthDate".into(),
                    primitive_extension(TOKEN_EXTENSION, token),
                );
            }
            Action::Pseudonymize => {
                let p = self.pseudonym(class, date);
                obj.insert(
                    "_birthDate".into(),
                    primitive_extension(PSEUDONYM_EXTENSION, p),
                );
            }
            Action::Generalize => match age_over_89(date, self.ctx.now) {
                // Unparseable: nothing safe to keep.
                None => {}
                Some(true) if ty == "Patient" || ty == "RelatedPerson" => {
                    let band = json!({"url": AGE_BAND_EXTENSION, "valueString": "90+"});
                    match obj.get_mut("extension") {
                        Some(Value::Array(exts)) => exts.push(band),
                        _ => {
                            obj.insert("extension".into(), Value::Array(vec![band]));
                        }
                    }
                }
                Some(true) => {}
                Some(false) => {
                    obj.insert("birthDate".into(), Value::String(date[..4].to_string()));
                }
            },
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // The generic walk: references, dates, narrative, attachments, free text
    // ---------------------------------------------------------------------------------

    fn walk_object(
        &mut self,
        obj: &mut Map<String, Value>,
        ty: &str,
        shared: bool,
    ) -> Result<(), TokenizeError> {
        if is_reference(obj) {
            self.reference(obj)?;
        }
        let narrative = self.action(IdentifierClass::Narrative);
        let attachments = self.action(IdentifierClass::Attachments);
        let dates = self.action(IdentifierClass::Dates);
        let keys: Vec<String> = obj.keys().cloned().collect();
        for key in keys {
            let Some(value) = obj.get_mut(&key) else {
                continue;
            };
            if is_free_text(&key, value) && !matches!(narrative, Action::Reveal | Action::Keep) {
                obj.remove(&key);
                continue;
            }
            if key == "presentedForm" && !matches!(attachments, Action::Reveal | Action::Keep) {
                obj.remove(&key);
                continue;
            }
            match value {
                Value::Object(child) => {
                    if child.get("resourceType").and_then(Value::as_str).is_some() {
                        // A contained (or nested) resource gets the full treatment.
                        self.resource(child, true)?;
                        continue;
                    }
                    if is_attachment_key(&key, ty) {
                        self.attachment(child, attachments);
                    }
                    self.walk_object(child, ty, shared)?;
                }
                Value::Array(items) => {
                    let attachment = is_attachment_key(&key, ty) || key == "presentedForm";
                    for item in items.iter_mut() {
                        self.walk_item(item, &key, ty, shared, attachment, attachments, dates)?;
                    }
                }
                Value::String(_) => {
                    if key == "birthDate" {
                        continue;
                    }
                    if is_date_key(&key) {
                        if let Some(Value::String(s)) = obj.get(&key) {
                            if looks_like_date(s) {
                                match date_action(dates) {
                                    DateOp::Keep => {}
                                    DateOp::Year => {
                                        let year = s[..4].to_string();
                                        obj.insert(key.clone(), Value::String(year));
                                    }
                                    DateOp::Remove => {
                                        obj.remove(&key);
                                    }
                                }
                                continue;
                            }
                        }
                    }
                    if !shared && !skip_scrub(&key) {
                        if let Some(Value::String(s)) = obj.get_mut(&key) {
                            if let Some(clean) = scrub_text(s, &self.scrub) {
                                *s = clean;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_item(
        &mut self,
        item: &mut Value,
        key: &str,
        ty: &str,
        shared: bool,
        attachment: bool,
        attachments: Action,
        dates: Action,
    ) -> Result<(), TokenizeError> {
        match item {
            Value::Object(child) => {
                if child.get("resourceType").and_then(Value::as_str).is_some() {
                    return self.resource(child, true);
                }
                if attachment {
                    self.attachment(child, attachments);
                }
                self.walk_object(child, ty, shared)
            }
            Value::Array(inner) => {
                for v in inner.iter_mut() {
                    self.walk_item(v, key, ty, shared, attachment, attachments, dates)?;
                }
                Ok(())
            }
            Value::String(s) => {
                if is_date_key(key) && looks_like_date(s) {
                    match date_action(dates) {
                        DateOp::Keep => {}
                        DateOp::Year => *s = s[..4].to_string(),
                        // Removed from the array by `prune`.
                        DateOp::Remove => *item = Value::Null,
                    }
                } else if !shared && !skip_scrub(key) {
                    if let Some(clean) = scrub_text(s, &self.scrub) {
                        *s = clean;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A Reference: the target is rewritten to its new id or removed, the display of a
    /// person follows the `name` class, a logical identifier its identifier class.
    fn reference(&mut self, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
        let mut target_type = obj
            .get("type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('/').next().unwrap_or(t).to_string());
        if let Some(r) = obj.get("reference") {
            let rewritten = match r.as_str() {
                Some(r) if r.starts_with('#') => Some(r.to_string()),
                Some(r) => match self.parse_reference(r) {
                    Some((ty, id)) => {
                        let new = self.map_id(&ty, &id).map(|new| format!("{ty}/{new}"));
                        target_type = Some(ty);
                        new
                    }
                    None => None,
                },
                None => None,
            };
            match rewritten {
                Some(r) => {
                    obj.insert("reference".into(), Value::String(r));
                }
                None => {
                    obj.remove("reference");
                }
            }
        }
        let about_person = match target_type.as_deref() {
            Some(t) => PERSON_TYPES.contains(&t),
            // Unknown target: its display could be a patient's name.
            None => true,
        };
        let non_patient = target_type
            .as_deref()
            .is_some_and(|t| SHARED_TYPES.contains(&t));
        if about_person {
            self.protect_field(obj, "display", IdentifierClass::Name)?;
        }
        if !non_patient {
            if let Some(Value::Object(ident)) = obj.get_mut("identifier") {
                let class = classify_identifier(&Value::Object(ident.clone()));
                match self.action(class) {
                    Action::Reveal | Action::Keep => {}
                    Action::Generalize | Action::Redact => {
                        obj.remove("identifier");
                    }
                    Action::Tokenize | Action::Pseudonymize => {
                        let mut ident = std::mem::take(ident);
                        self.protect_field(&mut ident, "value", class)?;
                        obj.insert("identifier".into(), Value::Object(ident));
                    }
                }
            }
        }
        Ok(())
    }

    /// `Type/id` of a reference, relative, absolute or `urn:uuid:`; `None` for forms that
    /// cannot be rewritten safely (searches, unknown uuids), which are then removed.
    fn parse_reference(&self, r: &str) -> Option<(String, String)> {
        if let Some(uuid) = r.strip_prefix("urn:uuid:") {
            let ty = self.id_types.get(uuid)?;
            return Some((ty.clone(), uuid.to_string()));
        }
        if r.contains('?') || r.contains('#') {
            return None;
        }
        let path: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
        let n = path.len();
        let (ty, id) = if n >= 4 && path[n - 2] == "_history" {
            (path[n - 4], path[n - 3])
        } else if n >= 2 {
            (path[n - 2], path[n - 1])
        } else {
            return None;
        };
        (is_type_name(ty) && is_fhir_id(id)).then(|| (ty.to_string(), id.to_string()))
    }

    /// An Attachment under the `attachments` action: removed data and url, or text data
    /// scrubbed of unrevealed identifiers (binary data that cannot be checked goes unless
    /// attachments are explicitly revealed).
    fn attachment(&mut self, obj: &mut Map<String, Value>, action: Action) {
        match action {
            Action::Reveal | Action::Keep => {
                let Some(data) = obj.get("data").and_then(Value::as_str) else {
                    return;
                };
                let engine = base64::engine::general_purpose::STANDARD;
                let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let text = engine
                    .decode(compact.as_bytes())
                    .ok()
                    .map(String::from_utf8);
                match text {
                    Some(Ok(text)) => {
                        if let Some(clean) = scrub_text(&text, &self.scrub) {
                            obj.insert(
                                "data".into(),
                                Value::String(engine.encode(clean.as_bytes())),
                            );
                            obj.insert("size".into(), json!(clean.len()));
                            obj.remove("hash");
                        }
                    }
                    Some(Err(_)) if action == Action::Reveal || self.scrub.is_empty() => {}
                    _ => {
                        obj.remove("data");
                        obj.remove("hash");
                        obj.remove("size");
                    }
                }
            }
            _ => {
                for key in ["data", "url", "hash", "size"] {
                    obj.remove(key);
                }
            }
        }
    }
}

enum DateOp {
    Keep,
    Year,
    Remove,
}

fn date_action(action: Action) -> DateOp {
    match action {
        Action::Reveal | Action::Keep => DateOp::Keep,
        Action::Generalize => DateOp::Year,
        Action::Tokenize | Action::Pseudonymize | Action::Redact => DateOp::Remove,
    }
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    let items: &[Value] = match v {
        Some(Value::Array(a)) => a,
        Some(other) => std::slice::from_ref(other),
        None => &[],
    };
    items.iter()
}

/// The objects of a value that is either one object or an array of them.
fn as_objects(v: &mut Value) -> Vec<&mut Map<String, Value>> {
    match v {
        Value::Object(o) => vec![o],
        Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).collect(),
        _ => Vec::new(),
    }
}

fn add_secret(out: &mut HashSet<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        let s = s.trim();
        // Single letters (initials) would blank out every such letter in free text.
        if s.chars().count() >= 2 {
            out.insert(s.to_string());
        }
    }
}

fn is_name_extension(ext: &Value) -> bool {
    ext["url"].as_str().is_some_and(|u| {
        u.ends_with("mothersMaidenName") || u.ends_with("patient-mothersMaidenName")
    })
}

fn primitive_extension(url: &str, value: String) -> Value {
    json!({"extension": [{"url": url, "valueString": value}]})
}

/// Safe Harbor address: state and ZIP3 (restricted areas as "000"); country, use and type
/// are less specific than the state and stay.
fn generalize_address(a: &mut Map<String, Value>) {
    let zip3 = a
        .get("postalCode")
        .and_then(Value::as_str)
        .map(|z| {
            z.chars()
                .filter(char::is_ascii_digit)
                .take(3)
                .collect::<String>()
        })
        .filter(|z| z.len() == 3)
        .map(|z| {
            if RESTRICTED_ZIP3.contains(&z.as_str()) {
                "000".to_string()
            } else {
                z
            }
        });
    a.retain(|k, _| matches!(k.as_str(), "use" | "type" | "state" | "country"));
    if let Some(z) = zip3 {
        a.insert("postalCode".into(), Value::String(z));
    }
}

/// Whether the person born on `date` (YYYY, YYYY-MM or YYYY-MM-DD) may be over 89 at
/// `now`; a partial date counts from its earliest day, so the answer errs on "over".
fn age_over_89(date: &str, now: DateTime<Utc>) -> Option<bool> {
    if !looks_like_date(date) {
        return None;
    }
    let year: i32 = date.get(..4)?.parse().ok()?;
    let month: u32 = date.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let day: u32 = date.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(1);
    let mut age = now.year() - year;
    if (now.month(), now.day()) < (month, day) {
        age -= 1;
    }
    Some(age > 89)
}

fn is_reference(obj: &Map<String, Value>) -> bool {
    if obj.get("reference").is_some_and(Value::is_string) {
        return true;
    }
    // A logical reference (identifier) or a display-only one.
    let keys_ok = obj.keys().all(|k| {
        matches!(
            k.as_str(),
            "reference" | "type" | "identifier" | "display" | "id" | "extension"
        )
    });
    keys_ok
        && obj.get("type").is_none_or(Value::is_string)
        && (obj.get("identifier").is_some_and(Value::is_object)
            || obj.get("display").is_some_and(Value::is_string))
}

fn is_free_text(key: &str, value: &Value) -> bool {
    match key {
        "note" => true,
        "text" => value.is_object(),
        "comment" | "description" | "conclusion" | "patientInstruction" => value.is_string(),
        _ => false,
    }
}

fn is_attachment_key(key: &str, ty: &str) -> bool {
    matches!(
        key,
        "attachment" | "valueAttachment" | "contentAttachment" | "photo"
    ) || (ty == "Media" && key == "content")
}

/// Keys whose values are dates or date-times (checked together with [`looks_like_date`],
/// so that a code such as "1191" under an unrelated key is never taken for a year).
fn is_date_key(key: &str) -> bool {
    key.ends_with("Date")
        || key.ends_with("DateTime")
        || key.ends_with("Instant")
        || matches!(
            key,
            "date"
                | "start"
                | "end"
                | "issued"
                | "created"
                | "recorded"
                | "authoredOn"
                | "lastUpdated"
                | "timestamp"
                | "started"
                | "sent"
                | "received"
                | "dateWritten"
                | "event"
                | "asserted"
                | "whenHandedOver"
                | "whenPrepared"
        )
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4
        && b.len() <= 40
        && b[..4].iter().all(u8::is_ascii_digit)
        && (b.len() == 4 || b[4] == b'-')
        && b.iter()
            .all(|c| c.is_ascii_digit() || b"-:T.+Z".contains(c))
}

/// Keys whose strings are structure, not text: codes, systems, ids and references (the
/// latter two are rewritten separately).
fn skip_scrub(key: &str) -> bool {
    matches!(
        key,
        "reference"
            | "id"
            | "system"
            | "code"
            | "unit"
            | "status"
            | "use"
            | "resourceType"
            | "gender"
            | "language"
            | "contentType"
            | "profile"
            | "data"
    )
}

/// Strings this module produced: not scrubbed (a short secret could match inside one).
fn is_generated(s: &str) -> bool {
    let rest = s
        .strip_prefix(TOKEN_PREFIX)
        .or_else(|| s.strip_prefix(PSEUDONYM_PREFIX));
    rest.is_some_and(|r| {
        r.len() >= 22
            && r.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    })
}

/// `text` with every whole-word, ASCII-case-insensitive occurrence of a value of
/// `secrets` replaced by [`REDACTED`]; `None` when nothing matched.
fn scrub_text(text: &str, secrets: &[String]) -> Option<String> {
    if secrets.is_empty() || is_generated(text) {
        return None;
    }
    let mut current = text.to_string();
    let mut changed = false;
    for secret in secrets {
        if let Some(next) = replace_word(&current, secret) {
            current = next;
            changed = true;
        }
    }
    changed.then_some(current)
}

fn is_word_byte(b: u8) -> bool {
    // Bytes of multi-byte characters count as letters, so "Luz" does not match in "Luzón".
    b.is_ascii_alphanumeric() || b >= 0x80
}

fn replace_word(text: &str, needle: &str) -> Option<String> {
    let hay = text.as_bytes();
    let pat = needle.as_bytes();
    if pat.is_empty() || pat.len() > hay.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    let mut found = false;
    while i + pat.len() <= hay.len() {
        let matches = hay[i..i + pat.len()].eq_ignore_ascii_case(pat)
            && (i == 0 || !is_word_byte(hay[i - 1]) || !is_word_byte(pat[0]))
            && (i + pat.len() == hay.len()
                || !is_word_byte(hay[i + pat.len()])
                || !is_word_byte(pat[pat.len() - 1]));
        if matches && text.is_char_boundary(i) && text.is_char_boundary(i + pat.len()) {
            out.push_str(&text[last..i]);
            out.push_str(REDACTED);
            i += pat.len();
            last = i;
            found = true;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// Removes nulls and the objects and arrays left empty by removals (FHIR forbids empty
/// elements).
fn prune(obj: &mut Map<String, Value>) {
    obj.retain(|_, v| prune_value(v));
}

fn prune_value(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(o) => {
            prune(o);
            !o.is_empty()
        }
        Value::Array(items) => {
            items.retain_mut(prune_value);
            !items.is_empty()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
