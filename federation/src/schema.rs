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
    /// The same schemas for what an SD-JWT VC disclosed ([`check_disclosed`]).
    disclosed_privilege: jsonschema::Validator,
    disclosed_consent: jsonschema::Validator,
    disclosed_study: jsonschema::Validator,
}

/// Why a credential does not pass the schema of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A built-in schema did not compile (a build defect: every credential is refused).
    #[error("schemas failed to load: {0}")]
    Unavailable(#[from] LoadError),
    /// The first violations found (at most `MAX_VIOLATIONS`), each with its JSON pointer.
    #[error("{}", Violation::list(.0))]
    Invalid(Vec<Violation>),
}

/// A built-in schema that is not JSON or not a valid JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{schema}: {reason}")]
pub struct LoadError {
    schema: &'static str,
    reason: String,
}

/// One place where a credential breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the credential (`/` for the document itself).
    pointer: String,
    message: String,
}

impl Violation {
    fn list(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| format!("{}: {}", v.pointer, v.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Most violations one error lists: enough to fix a document, short enough to read.
const MAX_VIOLATIONS: usize = 5;

fn compile(name: &'static str, src: &str) -> Result<jsonschema::Validator, LoadError> {
    compile_with(name, src, false)
}

/// Compiles a type's schema; `disclosed` relaxes it for a partly disclosed credential:
/// `required` is not enforced at the top level and on `credentialSubject` (a claim left
/// undisclosed is not missing), nor `minItems` on the subject's array claims (elements
/// may be left undisclosed). Everything else (types, formats, patterns, enumerations,
/// closed objects, each disclosed array element whole) is.
fn compile_with(
    name: &'static str,
    src: &str,
    disclosed: bool,
) -> Result<jsonschema::Validator, LoadError> {
    let fail = |reason: String| LoadError {
        schema: name,
        reason,
    };
    let mut schema: Value = serde_json::from_str(src).map_err(|e| fail(e.to_string()))?;
    if disclosed {
        if let Some(root) = schema.as_object_mut() {
            root.remove("required");
        }
        if let Some(subject) = schema
            .pointer_mut("/properties/credentialSubject")
            .and_then(Value::as_object_mut)
        {
            subject.remove("required");
            if let Some(Value::Object(claims)) = subject.get_mut("properties") {
                for claim in claims.values_mut().filter_map(Value::as_object_mut) {
                    claim.remove("minItems");
                }
            }
        }
    }
    jsonschema::validator_for(&schema).map_err(|e| fail(e.to_string()))
}

fn compiled() -> Result<&'static Compiled, LoadError> {
    static COMPILED: OnceLock<Result<Compiled, LoadError>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            Ok(Compiled {
                privilege: compile("clinician-privilege", PRIVILEGE)?,
                consent: compile("patient-consent", CONSENT)?,
                study: compile("research-study", STUDY)?,
                disclosed_privilege: compile_with("clinician-privilege", PRIVILEGE, true)?,
                disclosed_consent: compile_with("patient-consent", CONSENT, true)?,
                disclosed_study: compile_with("research-study", STUDY, true)?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks a credential (without regard to its proof) against the schema of its type.
/// The error lists at most five violations, each with its JSON pointer.
pub fn check(kind: CredentialKind, credential: &Value) -> Result<(), SchemaError> {
    let compiled = compiled()?;
    let validator = match kind {
        CredentialKind::ClinicianPrivilege => &compiled.privilege,
        CredentialKind::PatientConsent => &compiled.consent,
        CredentialKind::ResearchStudy => &compiled.study,
    };
    validate(validator, credential)
}

/// Checks what an SD-JWT VC disclosed (in the shape of its type's credential) against the
/// type's schema, with `required` and the subject's `minItems` not enforced (see
/// `compile_with`): a holder may leave any claim undisclosed, but what it discloses must
/// be what the type allows.
pub fn check_disclosed(kind: CredentialKind, credential: &Value) -> Result<(), SchemaError> {
    let compiled = compiled()?;
    let validator = match kind {
        CredentialKind::ClinicianPrivilege => &compiled.disclosed_privilege,
        CredentialKind::PatientConsent => &compiled.disclosed_consent,
        CredentialKind::ResearchStudy => &compiled.disclosed_study,
    };
    validate(validator, credential)
}

fn validate(validator: &jsonschema::Validator, credential: &Value) -> Result<(), SchemaError> {
    // The common case is a valid document: `is_valid` stops at nothing to collect and is
    // several times cheaper than walking the errors of a document that has none.
    if validator.is_valid(credential) {
        return Ok(());
    }
    let violations: Vec<Violation> = validator
        .iter_errors(credential)
        .take(MAX_VIOLATIONS)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let pointer = if pointer.is_empty() {
                "/".to_string()
            } else {
                pointer
            };
            Violation {
                pointer,
                message: e.to_string(),
            }
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_examples::clinician_privilege_example;

    #[test]
    fn all_schemas_compile() {
        assert!(super::compiled().is_ok());
    }

    #[test]
    fn violations_are_listed_with_their_pointers_at_most_five() {
        let kind = CredentialKind::ClinicianPrivilege;
        assert_eq!(check(kind, &clinician_privilege_example()), Ok(()));

        let mut vc = clinician_privilege_example();
        let subject = vc["credentialSubject"].as_object_mut().unwrap();
        for field in ["name", "npi", "role", "specialty", "organization"] {
            subject.insert(field.into(), serde_json::json!(7));
        }
        subject.insert("privileges".into(), serde_json::json!("all"));
        let Err(SchemaError::Invalid(violations)) = check(kind, &vc) else {
            panic!("six wrong fields must be refused");
        };
        assert_eq!(violations.len(), MAX_VIOLATIONS);
        assert!(violations
            .iter()
            .all(|v| v.pointer.starts_with("/credentialSubject/")));
        let message = SchemaError::Invalid(violations.clone()).to_string();
        assert_eq!(message.matches("; ").count(), MAX_VIOLATIONS - 1);
        assert!(message.starts_with(&format!("{}: ", violations[0].pointer)));

        // A violation of the document itself is at `/`.
        let mut vc = clinician_privilege_example();
        vc.as_object_mut().unwrap().remove("issuer");
        let err = check(kind, &vc).unwrap_err();
        assert!(err.to_string().starts_with("/: "), "{err}");
        assert!(err.to_string().contains("issuer"), "{err}");
    }
}
