//! The credential types fedgate knows, by their VC `type` names.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The credential types fedgate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum CredentialKind {
    #[serde(rename = "ClinicianPrivilegeCredential")]
    ClinicianPrivilege,
    #[serde(rename = "PatientConsentCredential")]
    PatientConsent,
    #[serde(rename = "ResearchStudyCredential")]
    ResearchStudy,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 3] = [
        CredentialKind::ClinicianPrivilege,
        CredentialKind::PatientConsent,
        CredentialKind::ResearchStudy,
    ];

    pub fn type_name(self) -> &'static str {
        match self {
            CredentialKind::ClinicianPrivilege => "ClinicianPrivilegeCredential",
            CredentialKind::PatientConsent => "PatientConsentCredential",
            CredentialKind::ResearchStudy => "ResearchStudyCredential",
        }
    }

    pub fn from_type_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_name() == name)
    }

    /// The kind named by a credential's `type` (exactly one fedgate type must be present).
    pub fn of_credential(credential: &Value) -> Result<Self, KindError> {
        let types: Vec<&str> = match credential.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(KindError::NoType),
        };
        if !types.contains(&"VerifiableCredential") {
            return Err(KindError::NotVerifiableCredential);
        }
        let kinds: Vec<CredentialKind> = types
            .iter()
            .filter_map(|t| Self::from_type_name(t))
            .collect();
        match kinds.as_slice() {
            [k] => Ok(*k),
            [] => Err(KindError::Unknown(
                types.iter().map(|t| (*t).to_string()).collect(),
            )),
            _ => Err(KindError::Ambiguous),
        }
    }
}

/// Why a credential's `type` names no single fedgate credential type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error("credential has no type")]
    NoType,
    #[error("type does not include VerifiableCredential")]
    NotVerifiableCredential,
    /// The credential's types, none of them a fedgate type.
    #[error("unknown credential type {0:?}; expected one of ClinicianPrivilegeCredential, PatientConsentCredential, ResearchStudyCredential")]
    Unknown(Vec<String>),
    #[error("a credential must have exactly one fedgate type")]
    Ambiguous,
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_credential_names_exactly_one_known_type() {
        let of = |t: Value| CredentialKind::of_credential(&json!({ "type": t }));
        assert_eq!(
            of(json!(["VerifiableCredential", "ResearchStudyCredential"])),
            Ok(CredentialKind::ResearchStudy)
        );
        assert_eq!(
            CredentialKind::of_credential(&json!({})),
            Err(KindError::NoType)
        );
        assert_eq!(
            of(json!("ResearchStudyCredential")),
            Err(KindError::NotVerifiableCredential)
        );
        let unknown = of(json!(["VerifiableCredential", "X"])).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown credential type [\"VerifiableCredential\", \"X\"]; expected one of \
             ClinicianPrivilegeCredential, PatientConsentCredential, ResearchStudyCredential"
        );
        assert_eq!(
            of(json!([
                "VerifiableCredential",
                "ResearchStudyCredential",
                "PatientConsentCredential"
            ])),
            Err(KindError::Ambiguous)
        );
    }
}
