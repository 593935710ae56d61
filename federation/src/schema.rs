//! JSON Schemas of the credential types, compiled once and checked on issue and on verify.

use std::sync::OnceLock;

use serde_json::Value;

use crate::kind::CredentialKind;

const PRIVILEGE: &str = include_str!("../../schemas/clinician-privilege.schema.json");
const CONSENT: &str = include_str!("../../schemas/patient-consent.schema.json");
const STUDY: &str = include_str!("../../schemas/research-study.schema.json");

struct Compiled {
    privilege: jsonschema::Validator,
    consent: jsonschema::Validator,
    study: jsonschema::Validator,
}

fn compile(src: &str) -> Result<jsonschema::Validator, String> {
    let schema: Value = serde_json::from_str(src).map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
}

fn compiled() -> Result<&'static Compiled, String> {
    static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            Ok(Compiled {
                privilege: compile(PRIVILEGE)?,
                consent: compile(CONSENT)?,
                study: compile(STUDY)?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks a credential (without regard to its proof) against the schema of its type.
/// The error lists at most five violations, each with its JSON pointer.
pub fn check(kind: CredentialKind, credential: &Value) -> Result<(), String> {
    let compiled = compiled().map_err(|e| format!("schemas failed to load: {e}"))?;
    let validator = match kind {
        CredentialKind::ClinicianPrivilege => &compiled.privilege,
        CredentialKind::PatientConsent => &compiled.consent,
        CredentialKind::ResearchStudy => &compiled.study,
    };
    // The common case is a valid document: `is_valid` stops at nothing to collect and is
    // several times cheaper than walking the errors of a document that has none.
    if validator.is_valid(credential) {
        return Ok(());
    }
    let errors: Vec<String> = validator
        .iter_errors(credential)
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("{path}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_schemas_compile() {
        assert!(super::compiled().is_ok());
    }
}
