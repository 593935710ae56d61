//! The engine's state for one response: the actions, the resource ids, the identifying
//! values of the patient to scrub from free text, and the transforms of one value.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::classes::{classify_identifier, Action, IdentifierClass};
use super::scrub::{Generic, Scrubber, Secrets};
use super::{pseudonym_text, Obligations, TokenizeContext, TokenizeError, Withheld, PERSON_TYPES};
use crate::records::field;
use crate::vault::HmacPrefix;

pub(super) struct Engine<'a, 'c> {
    pub(super) ctx: &'a TokenizeContext<'c>,
    /// The action of each class, by its place in [`IdentifierClass::ALL`]: looked up for
    /// every element walked.
    actions: [Action; IdentifierClass::ALL.len()],
    /// The pseudonyms of this response, each computed once.
    pseudonyms: RefCell<Pseudonyms>,
    /// Resource id → type, to resolve `urn:uuid:` references.
    pub(super) id_types: HashMap<String, String>,
    /// The values of the patient's direct identifiers that are not revealed, and the
    /// generic shapes of the classes that are not: removed from every string that leaves.
    pub(super) scrubber: Scrubber,
    /// Tokens minted for this output, written to the vault before it leaves.
    pub(super) new_tokens: crate::vault::NewTokens,
    /// The decision shifts every date after tokenization (`shift_dates`): a date that
    /// falls on the birth date then gives nothing away and stays.
    pub(super) dates_shifted: bool,
    /// What was withheld, for the response's OperationOutcome.
    pub(super) withheld: Vec<Withheld>,
    /// The top-level resource being walked: its type and its id as it leaves.
    pub(super) current: (String, Option<String>),
    /// The element path being walked, from the top-level resource (`Type.a[0].b`).
    pub(super) path: String,
}

impl<'a, 'c> Engine<'a, 'c> {
    pub(super) fn new(
        obligations: &Obligations,
        ctx: &'a TokenizeContext<'c>,
        resources: &[Value],
    ) -> Self {
        let mut actions = [Action::Redact; IdentifierClass::ALL.len()];
        for (slot, class) in actions.iter_mut().zip(IdentifierClass::ALL) {
            *slot = obligations.action(class);
        }
        let mut engine = Engine {
            ctx,
            actions,
            pseudonyms: RefCell::new(Pseudonyms::default()),
            id_types: HashMap::new(),
            scrubber: Scrubber::new(Secrets::default(), Generic::default()),
            new_tokens: crate::vault::NewTokens::default(),
            dates_shifted: obligations.shift_dates,
            withheld: Vec::new(),
            current: (String::new(), None),
            path: String::new(),
        };
        let mut secrets = Secrets::default();
        for r in resources {
            if let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) {
                engine.id_types.insert(id.to_string(), t.to_string());
            }
            engine.collect_secrets(r, &mut secrets);
        }
        let generic = Generic {
            ssn: engine.hidden(IdentifierClass::Ssn),
            telecom: engine.hidden(IdentifierClass::Telecom),
            urls: engine.hidden(IdentifierClass::OtherIdentifiers),
        };
        // One automaton per response (one patient), whatever the number of strings.
        engine.scrubber = Scrubber::new(secrets, generic);
        engine
    }

    /// Notes that the element at the current path (and `suffix`) was withheld.
    pub(super) fn withhold(&mut self, suffix: &str, reason: &'static str) {
        let (resource_type, resource_id) = self.current.clone();
        self.withheld.push(Withheld {
            resource_type,
            resource_id,
            path: format!("{}{suffix}", self.path),
            reason,
        });
    }

    pub(super) fn action(&self, class: IdentifierClass) -> Action {
        IdentifierClass::ALL
            .iter()
            .position(|c| *c == class)
            .and_then(|i| self.actions.get(i))
            .copied()
            .unwrap_or(Action::Redact)
    }

    /// Gathers the identifying values of every person (top level or contained) whose class
    /// is not revealed.
    pub(super) fn collect_secrets(&self, value: &Value, out: &mut Secrets) {
        match value {
            Value::Object(obj) => {
                let ty = field(obj, "resourceType").and_then(Value::as_str);
                if let Some(ty) = ty.filter(|t| PERSON_TYPES.contains(t)) {
                    self.person_secrets(ty, obj, out);
                }
                if ty == Some("Coverage") && self.hidden(IdentifierClass::OtherIdentifiers) {
                    out.value(obj.get("subscriberId"));
                    for i in array(obj.get("identifier")) {
                        out.value(i.get("value"));
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

    pub(super) fn hidden(&self, class: IdentifierClass) -> bool {
        !matches!(self.action(class), Action::Reveal | Action::Keep)
    }

    pub(super) fn person_secrets(&self, ty: &str, obj: &Map<String, Value>, out: &mut Secrets) {
        if ty == "Patient" && self.hidden(IdentifierClass::PatientId) {
            out.value(obj.get("id"));
        }
        for ident in array(obj.get("identifier")) {
            if self.hidden(classify_identifier(ident)) {
                out.value(ident.get("value"));
            }
        }
        if self.hidden(IdentifierClass::BirthDate) {
            out.birth_date(obj.get("birthDate"));
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
                out.name(ext.get("valueString"));
            }
        }
        if self.hidden(IdentifierClass::Name) {
            for n in names {
                out.name(n.get("family"));
                out.name(n.get("text"));
                for g in array(n.get("given")) {
                    out.name(Some(g));
                }
            }
        }
        if self.hidden(IdentifierClass::Telecom) {
            for t in telecoms {
                match t.get("system").and_then(Value::as_str) {
                    Some("phone" | "fax" | "sms" | "pager") => out.phone(t.get("value")),
                    _ => out.value(t.get("value")),
                }
            }
        }
        if self.hidden(IdentifierClass::Address) {
            for a in addresses {
                for key in ["city", "district", "text"] {
                    out.value(a.get(key));
                }
                out.postal_code(a.get("postalCode"));
                for l in array(a.get("line")) {
                    out.value(Some(l));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Values
    // ---------------------------------------------------------------------------------

    pub(super) fn token(
        &mut self,
        class: IdentifierClass,
        value: &str,
    ) -> Result<String, TokenizeError> {
        Ok(self.ctx.vault.put_staged(
            value,
            class.as_str(),
            self.ctx.recipient_org,
            self.ctx.domain,
            &mut self.new_tokens,
        )?)
    }

    /// [`pseudonym`](super::pseudonym) of `value` for this response's recipient and domain.
    pub(super) fn pseudonym(&self, class: IdentifierClass, value: &str) -> String {
        self.pseudonyms.borrow_mut().get(self.ctx, class, value)
    }

    /// A string of a direct identifier under its class's action: `None` removes it.
    /// Generalization has no meaning for these values and removes them.
    pub(super) fn protect(
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
    pub(super) fn protect_field(
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
    pub(super) fn map_id(&self, ty: &str, id: &str) -> Option<String> {
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
}

/// The pseudonyms of one response. A record names the same resources again and again (every
/// resource's subject, encounter, performer), and each pseudonym is an HMAC: each is
/// computed once, with the key, recipient, domain and class absorbed once per class.
#[derive(Default)]
struct Pseudonyms {
    /// Per class: the MAC with its prefix absorbed, and the pseudonyms made so far.
    classes: HashMap<IdentifierClass, (HmacPrefix, HashMap<String, String>)>,
}

impl Pseudonyms {
    fn get(&mut self, ctx: &TokenizeContext<'_>, class: IdentifierClass, value: &str) -> String {
        let (prefix, known) = self.classes.entry(class).or_insert_with(|| {
            let prefix = HmacPrefix::new(
                ctx.pseudonym_key,
                &[
                    ctx.recipient_org.as_bytes(),
                    ctx.domain.as_bytes(),
                    class.as_str().as_bytes(),
                ],
            );
            (prefix, HashMap::new())
        });
        if let Some(p) = known.get(value) {
            return p.clone();
        }
        let p = pseudonym_text(&prefix.mac(value.as_bytes()));
        known.insert(value.to_string(), p.clone());
        p
    }
}

pub(super) fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    let items: &[Value] = match v {
        Some(Value::Array(a)) => a,
        Some(other) => std::slice::from_ref(other),
        None => &[],
    };
    items.iter()
}

/// The objects of a value that is either one object or an array of them.
pub(super) fn as_objects(v: &mut Value) -> Vec<&mut Map<String, Value>> {
    match v {
        Value::Object(o) => vec![o],
        Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn is_name_extension(ext: &Value) -> bool {
    ext["url"].as_str().is_some_and(|u| {
        u.ends_with("mothersMaidenName") || u.ends_with("patient-mothersMaidenName")
    })
}
