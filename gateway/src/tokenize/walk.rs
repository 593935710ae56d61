//! The generic walk over every element that leaves: references, dates, narrative,
//! attachments and free text; and the pruning of what removals left empty.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::classes::{classify_identifier, Action, IdentifierClass};
use super::engine::Engine;
use super::{TokenizeError, PERSON_TYPES, SHARED_TYPES};
use crate::records::{field, is_fhir_id, is_type_name};

impl Engine<'_, '_> {
    pub(super) fn walk_object(
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
        // Each entry is walked in place; those not kept are dropped after, all at once,
        // only if there are any: no key is copied, moved or hashed again. On an error the
        // whole output is dropped (`apply`).
        // Indices of the entries not kept, ascending (no allocation unless there is one).
        let mut dropped: Vec<usize> = Vec::new();
        for (i, (key, value)) in obj.iter_mut().enumerate() {
            let parent = self.path.len();
            self.path.push('.');
            self.path.push_str(key);
            let keep = if is_free_text(key, value)
                && !matches!(narrative, Action::Reveal | Action::Keep)
            {
                false
            } else if key == "presentedForm"
                && !matches!(attachments, Action::Reveal | Action::Keep)
            {
                self.withhold("", "attachments-redacted");
                false
            } else {
                let kept =
                    shared || !is_identifier_value(key) || self.identifier_value(key, value, ty)?;
                kept && self.walk_entry(key, value, ty, shared, attachments, dates)?
            };
            self.path.truncate(parent);
            if !keep {
                dropped.push(i);
            }
        }
        if !dropped.is_empty() {
            // `retain` visits the entries in order.
            let (mut i, mut next) = (0, dropped.iter().peekable());
            obj.retain(|_, _| {
                let drop = next.next_if_eq(&&i).is_some();
                i += 1;
                !drop
            });
        }
        Ok(())
    }

    /// The element `key: value` of an object, its path already in `self.path`; whether it
    /// stays.
    fn walk_entry(
        &mut self,
        key: &str,
        value: &mut Value,
        ty: &str,
        shared: bool,
        attachments: Action,
        dates: Action,
    ) -> Result<bool, TokenizeError> {
        match value {
            Value::Object(child) => {
                if field(child, "resourceType")
                    .and_then(Value::as_str)
                    .is_some()
                {
                    // A contained (or nested) resource gets the full treatment.
                    self.resource(child, true)?;
                    return Ok(true);
                }
                if is_attachment_key(key, ty) || looks_like_attachment(child) {
                    self.attachment(child, attachments);
                }
                self.walk_object(child, ty, shared)?;
                Ok(true)
            }
            Value::Array(items) => {
                let attachment = is_attachment_key(key, ty) || key == "presentedForm";
                for (i, item) in items.iter_mut().enumerate() {
                    let parent = self.path.len();
                    // Writing into a String cannot fail.
                    let _ = write!(self.path, "[{i}]");
                    let walked =
                        self.walk_item(item, key, ty, shared, attachment, attachments, dates);
                    self.path.truncate(parent);
                    walked?;
                }
                Ok(true)
            }
            Value::String(s) => {
                if key == "birthDate" {
                    return Ok(true);
                }
                if is_date_key(key) && looks_like_date(s) {
                    return Ok(match date_action(dates) {
                        // A date that is the hidden birth date (a condition recorded at
                        // birth) would give it away.
                        DateOp::Keep if !self.dates_shifted && self.scrubber.is_birth_date(s) => {
                            self.withhold("", "date-is-birth-date");
                            false
                        }
                        DateOp::Keep => true,
                        DateOp::Year => {
                            let year = s[..4].to_string();
                            *s = year;
                            true
                        }
                        DateOp::Remove => false,
                    });
                }
                if !shared {
                    self.scrub_string(key, s);
                }
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// A string that leaves, scrubbed of the patient's values (and, unless it is a code of
    /// a closed vocabulary, of generic identifier shapes).
    fn scrub_string(&self, key: &str, s: &mut String) {
        if skip_scrub(key) {
            return;
        }
        if let Some(clean) = self.scrubber.scrub(s, !is_vocabulary(key)) {
            *s = clean;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_item(
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
                if field(child, "resourceType")
                    .and_then(Value::as_str)
                    .is_some()
                {
                    return self.resource(child, true);
                }
                if attachment || looks_like_attachment(child) {
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
                        DateOp::Keep if !self.dates_shifted && self.scrubber.is_birth_date(s) => {
                            *item = Value::Null;
                            self.withhold("", "date-is-birth-date");
                        }
                        DateOp::Keep => {}
                        DateOp::Year => *s = s[..4].to_string(),
                        // Removed from the array by `prune`.
                        DateOp::Remove => *item = Value::Null,
                    }
                } else if !shared {
                    self.scrub_string(key, s);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A Reference: the target is rewritten to its new id or removed, the display of a
    /// person follows the `name` class, a logical identifier its identifier class.
    pub(super) fn reference(&mut self, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
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
    pub(super) fn parse_reference(&self, r: &str) -> Option<(String, String)> {
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
}

pub(super) enum DateOp {
    Keep,
    Year,
    Remove,
}

pub(super) fn date_action(action: Action) -> DateOp {
    match action {
        Action::Reveal | Action::Keep => DateOp::Keep,
        Action::Generalize => DateOp::Year,
        Action::Tokenize | Action::Pseudonymize | Action::Redact => DateOp::Remove,
    }
}

pub(super) fn is_reference(obj: &Map<String, Value>) -> bool {
    if field(obj, "reference").is_some_and(Value::is_string) {
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
        && field(obj, "type").is_none_or(Value::is_string)
        && (field(obj, "identifier").is_some_and(Value::is_object)
            || field(obj, "display").is_some_and(Value::is_string))
}

pub(super) fn is_free_text(key: &str, value: &Value) -> bool {
    match key {
        "note" => true,
        "text" => value.is_object(),
        "comment" | "description" | "conclusion" | "patientInstruction" => value.is_string(),
        _ => false,
    }
}

/// Keys whose value is an identifier of some record or thing: an extension's (or a Task
/// input's) `value[x]` of an identifier type.
fn is_identifier_value(key: &str) -> bool {
    matches!(
        key,
        "valueIdentifier" | "valueId" | "valueOid" | "valueUuid"
    )
}

pub(super) fn is_attachment_key(key: &str, ty: &str) -> bool {
    matches!(
        key,
        "attachment"
            | "valueAttachment"
            | "contentAttachment"
            | "sourceAttachment"
            | "legallyBindingAttachment"
            | "photo"
    ) || (ty == "Media" && key == "content")
}

/// Keys whose values are dates or date-times (checked together with [`looks_like_date`],
/// so that a code such as "1191" under an unrelated key is never taken for a year).
pub(super) fn is_date_key(key: &str) -> bool {
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

pub(super) fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4
        && b.len() <= 40
        && b[..4].iter().all(u8::is_ascii_digit)
        && (b.len() == 4 || b[4] == b'-')
        && b.iter()
            .all(|c| c.is_ascii_digit() || b"-:T.+Z".contains(c))
}

/// Keys whose strings are structure, not text: ids and references (rewritten
/// separately), systems, profiles, content types, and attachment data (decoded and scrubbed
/// by [`Engine::attachment`]).
pub(super) fn skip_scrub(key: &str) -> bool {
    matches!(
        key,
        "reference" | "id" | "system" | "resourceType" | "contentType" | "profile" | "data"
    )
}

/// Keys whose strings are codes of a closed vocabulary: scrubbed of the patient's values
/// (a code has no business holding one) but not of generic shapes, which codes may have.
fn is_vocabulary(key: &str) -> bool {
    matches!(
        key,
        "code" | "unit" | "status" | "use" | "gender" | "language" | "version"
    )
}

/// An Attachment under a key not listed in [`is_attachment_key`]: data or a url with a
/// content type, or a Signature's data (which may be the image of a signature).
/// `SampledData.data` (waveforms, no content type) is not one.
fn looks_like_attachment(obj: &Map<String, Value>) -> bool {
    let content = field(obj, "data").is_some_and(Value::is_string)
        || field(obj, "url").is_some_and(Value::is_string);
    content && (field(obj, "contentType").is_some() || field(obj, "sigFormat").is_some())
}

/// Removes nulls and the objects and arrays left empty by removals (FHIR forbids empty
/// elements).
pub(super) fn prune(obj: &mut Map<String, Value>) {
    obj.retain(|_, v| prune_value(v));
}

pub(super) fn prune_value(v: &mut Value) -> bool {
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
