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
    pub fn of_credential(credential: &Value) -> Result<Self, String> {
        let types: Vec<&str> = match credential.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err("credential has no type".into()),
        };
        if !types.contains(&"VerifiableCredential") {
            return Err("type does not include VerifiableCredential".into());
        }
        let kinds: Vec<CredentialKind> = types
            .iter()
            .filter_map(|t| Self::from_type_name(t))
            .collect();
        match kinds.as_slice() {
            [k] => Ok(*k),
            [] => Err(format!(
                "unknown credential type {:?}; expected one of ClinicianPrivilegeCredential, PatientConsentCredential, ResearchStudyCredential",
                types
            )),
            _ => Err("a credential must have exactly one fedgate type".into()),
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}
