//! Per-resource rules: persons (identifiers, names, telecoms, addresses, birth date,
//! contacts), devices, coverages, the business identifiers of other resources, identifiers
//! given as extension values, and DICOM UIDs.

use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Map, Value};

use super::classes::{classify_identifier, Action, IdentifierClass};
use super::engine::{as_objects, is_name_extension, Engine};
use super::walk::looks_like_date;
use super::{
    TokenizeError, AGE_BAND_EXTENSION, PERSON_TYPES, PSEUDONYM_EXTENSION, SHARED_TYPES,
    TOKEN_EXTENSION,
};
use crate::vault::hmac_sha256;

/// ZIP3 areas of 20,000 people or fewer (Safe Harbor, 2000 census): reported as "000".
pub(super) const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

impl Engine<'_, '_> {
    /// One resource; `contained` ones keep their ids, which only `#id` references in the
    /// same container use.
    pub(super) fn resource(
        &mut self,
        obj: &mut Map<String, Value>,
        contained: bool,
    ) -> Result<(), TokenizeError> {
        let ty = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.meta(obj, &ty, contained);
        if !contained {
            let new = match obj.get("id") {
                Some(Value::String(id)) => self.map_id(&ty, id),
                _ => None,
            };
            self.current.1.clone_from(&new);
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
        if ty == "ImagingStudy" {
            self.dicom_uids(obj);
        }
        if ty == "Binary" {
            // A Binary is an attachment of its own (contentType, data).
            self.attachment(obj, self.action(IdentifierClass::Attachments));
        }
        let shared = SHARED_TYPES.contains(&ty.as_str());
        self.walk_object(obj, &ty, shared)
    }

    /// Patient and RelatedPerson: identifiers, names, telecoms, addresses, birth date,
    /// photo and contacts.
    pub(super) fn person(
        &mut self,
        ty: &str,
        obj: &mut Map<String, Value>,
    ) -> Result<(), TokenizeError> {
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
    pub(super) fn identifiers(
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
    pub(super) fn resource_identifiers(&mut self, obj: &mut Map<String, Value>) {
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

    /// An identifier given outside `identifier`: an extension's (or a Task input's)
    /// `valueIdentifier`, `valueId`, `valueOid` or `valueUuid` (`key: value`). The walk would
    /// only scrub it of the patient's known values, and an identifier nobody listed links
    /// every answer it is in. Typed as a person's (SSN, MRN, passport, driver's licence) it
    /// follows that class; otherwise it is one of the resource's business identifiers
    /// (`resource-ids`), or on a Patient or RelatedPerson one of theirs
    /// (`other-identifiers`). An id, OID or UUID has no pseudonym of its type and goes
    /// unless its class is revealed. Whether it stays.
    pub(super) fn identifier_value(
        &mut self,
        key: &str,
        value: &mut Value,
        ty: &str,
    ) -> Result<bool, TokenizeError> {
        let person = PERSON_TYPES.contains(&ty);
        let class = match (key, &*value) {
            ("valueIdentifier", ident) => match classify_identifier(ident) {
                IdentifierClass::OtherIdentifiers if !person => IdentifierClass::ResourceIds,
                class => class,
            },
            _ if person => IdentifierClass::OtherIdentifiers,
            _ => IdentifierClass::ResourceIds,
        };
        let action = self.action(class);
        match (key, value) {
            (_, _) if matches!(action, Action::Reveal | Action::Keep) => {}
            ("valueIdentifier", Value::Object(ident))
                if matches!(action, Action::Tokenize | Action::Pseudonymize) =>
            {
                if class == IdentifierClass::ResourceIds {
                    match ident.get("value") {
                        Some(Value::String(v)) => {
                            let p = self.pseudonym(class, v);
                            ident.insert("value".into(), Value::String(p));
                        }
                        _ => {
                            ident.remove("value");
                        }
                    }
                } else {
                    self.protect_field(ident, "value", class)?;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The DICOM UIDs of an ImagingStudy's series and instances: globally unique, the same
    /// in every copy of the images, so they go with the resource ids. A pseudonymized one is
    /// a UID again (`2.25.` and a number, DICOM's form for UIDs made without a registered
    /// root), per recipient and domain.
    pub(super) fn dicom_uids(&mut self, obj: &mut Map<String, Value>) {
        let action = self.action(IdentifierClass::ResourceIds);
        let Some(Value::Array(series)) = obj.get_mut("series") else {
            return;
        };
        for s in series.iter_mut().filter_map(Value::as_object_mut) {
            self.dicom_uid(s, action);
            if let Some(Value::Array(instances)) = s.get_mut("instance") {
                for i in instances.iter_mut().filter_map(Value::as_object_mut) {
                    self.dicom_uid(i, action);
                }
            }
        }
    }

    fn dicom_uid(&self, obj: &mut Map<String, Value>, action: Action) {
        match action {
            Action::Reveal | Action::Keep => {}
            Action::Generalize | Action::Redact => {
                obj.remove("uid");
            }
            Action::Tokenize | Action::Pseudonymize => match obj.get("uid") {
                Some(Value::String(uid)) => {
                    let mac = hmac_sha256(
                        self.ctx.pseudonym_key,
                        &[
                            self.ctx.recipient_org.as_bytes(),
                            self.ctx.domain.as_bytes(),
                            IdentifierClass::ResourceIds.as_str().as_bytes(),
                            format!("dicom-uid/{uid}").as_bytes(),
                        ],
                    );
                    let mut n = [0u8; 16];
                    n.copy_from_slice(&mac[..16]);
                    let uid = format!("2.25.{}", u128::from_be_bytes(n));
                    obj.insert("uid".into(), Value::String(uid));
                }
                _ => {
                    obj.remove("uid");
                }
            },
        }
    }

    /// A device attached to the patient: its serial numbers identify them (Safe Harbor).
    pub(super) fn device(&mut self, obj: &mut Map<String, Value>) -> Result<(), TokenizeError> {
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

    pub(super) fn names(
        &mut self,
        obj: &mut Map<String, Value>,
        key: &str,
    ) -> Result<(), TokenizeError> {
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

    pub(super) fn protect_list(
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

    pub(super) fn telecoms(
        &mut self,
        obj: &mut Map<String, Value>,
        key: &str,
    ) -> Result<(), TokenizeError> {
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

    pub(super) fn addresses(
        &mut self,
        obj: &mut Map<String, Value>,
        key: &str,
    ) -> Result<(), TokenizeError> {
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

    pub(super) fn birth_date(
        &mut self,
        ty: &str,
        obj: &mut Map<String, Value>,
    ) -> Result<(), TokenizeError> {
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
}

pub(super) fn primitive_extension(url: &str, value: String) -> Value {
    json!({"extension": [{"url": url, "valueString": value}]})
}

/// Safe Harbor address: state and ZIP3 (restricted areas as "000"); country, use and type
/// are less specific than the state and stay.
pub(super) fn generalize_address(a: &mut Map<String, Value>) {
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
pub(super) fn age_over_89(date: &str, now: DateTime<Utc>) -> Option<bool> {
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
