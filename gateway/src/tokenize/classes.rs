//! The closed vocabulary of identifier classes (contract §3), what each obligation does to
//! one, and how a person's identifier is classed.

use serde_json::Value;

use super::Obligations;

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
    /// A resource's `meta` (version, last update, tags): record keeping of the custodian's
    /// server, not care; the same in every answer unless transformed, so it links them.
    Meta,
}

impl IdentifierClass {
    pub const ALL: [IdentifierClass; 15] = [
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
        IdentifierClass::Meta,
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
            IdentifierClass::Meta => "meta",
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
                | IdentifierClass::Meta
        )
    }

    /// Classes redacted when no obligation names them: the direct identifiers, and `meta`,
    /// which is no identifier of the patient but links the answers it is left in.
    pub fn redacted_by_default(self) -> bool {
        self.is_direct() || self == IdentifierClass::Meta
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

impl Obligations {
    /// The action for `class`: the first list naming it in precedence order, else redact
    /// for a direct identifier and `meta`, and keep for the others.
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
        } else if named(&self.redact) || class.redacted_by_default() {
            Action::Redact
        } else {
            Action::Keep
        }
    }
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
