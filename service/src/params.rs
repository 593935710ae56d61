//! Path parameters: each is checked against the format of what it names before anything
//! is looked up, so that a malformed identifier is a 400 naming the parameter (never an
//! empty 200 that reads as "exists, but has nothing"), and a well-formed one that names
//! nothing is the handler's 404.
//!
//! The problem never echoes the value: a path can carry anything, and problems are logged.

use crate::http::Problem;

/// A path parameter that does not have its format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path parameter `{name}` must be {expected}")]
pub struct ParamError {
    name: &'static str,
    expected: &'static str,
}

impl ParamError {
    /// 400 `invalid-parameter`, with the parameter's name in `parameter`.
    pub fn problem(&self) -> Problem {
        crate::http::bad_request("invalid-parameter", self.to_string()).with("parameter", self.name)
    }
}

/// The subject of a credential: a DID, or the id of a research study
/// (`urn:fedgate:study:<id>`, the one subject id the credential schemas allow besides DIDs).
pub fn subject<'a>(name: &'static str, value: &'a str) -> Result<&'a str, ParamError> {
    let study = value.strip_prefix("urn:fedgate:study:").is_some_and(|id| {
        (1..=200).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if study || federation::did::parse_did(value).is_ok() {
        Ok(value)
    } else {
        Err(ParamError {
            name,
            expected: "a DID (did:key or did:web) or a study id (urn:fedgate:study:<id>)",
        })
    }
}

/// An access event id: a hyphenated UUID ([`federation::events::is_event_id`]).
pub fn event_id<'a>(name: &'static str, value: &'a str) -> Result<&'a str, ParamError> {
    if federation::events::is_event_id(value) {
        Ok(value)
    } else {
        Err(ParamError {
            name,
            expected: "an event id (a UUID, 8-4-4-4-12 hex digits)",
        })
    }
}

/// A policy domain's name: lowercase ASCII letters and inner hyphens, at most 32. Whether
/// the name is a domain the endpoint serves is the handler's 404.
pub fn domain<'a>(name: &'static str, value: &'a str) -> Result<&'a str, ParamError> {
    let ok = (1..=32).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value)
    } else {
        Err(ParamError {
            name,
            expected: "a domain name (lowercase letters, such as clinical)",
        })
    }
}

/// Longest credential id accepted in a path.
const MAX_CREDENTIAL_ID_BYTES: usize = 2048;

/// A credential id as the credential schemas define it: a URI (`scheme:rest`, no white
/// space), e.g. `urn:uuid:<uuid>`.
pub fn credential_id<'a>(name: &'static str, value: &'a str) -> Result<&'a str, ParamError> {
    let ok = value.len() <= MAX_CREDENTIAL_ID_BYTES
        && value.split_once(':').is_some_and(|(scheme, rest)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
                && !rest.is_empty()
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if ok {
        Ok(value)
    } else {
        Err(ParamError {
            name,
            expected: "a credential id (a URI such as urn:uuid:<uuid>)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let key = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        assert!(subject("subject", key).is_ok());
        assert!(subject("subject", "did:web:hospital-a.example").is_ok());
        assert!(subject("subject", "urn:fedgate:study:s-1").is_ok());
        for bad in ["../../etc", "..%2f..%2fetc", "did:web:..%2f..%2fetc", "x"] {
            assert!(subject("subject", bad).is_err(), "{bad}");
        }
        assert!(subject("did", "urn:fedgate:study:diabetes-2026").is_ok());
        assert!(subject("did", "urn:fedgate:study:../x").is_err());
        assert!(subject("did", key).is_ok());

        let id = uuid::Uuid::now_v7().to_string();
        assert!(event_id("event_id", &id).is_ok());
        for bad in ["../../etc", "", "0190", &id[..35], &format!("{{{id}}}")] {
            assert!(event_id("event_id", bad).is_err(), "{bad}");
        }

        assert!(domain("domain", "clinical").is_ok());
        assert!(domain("domain", "research").is_ok());
        for bad in [
            "../../etc",
            "",
            "Clinical",
            "clinical;x",
            "-a",
            &"a".repeat(33),
        ] {
            assert!(domain("domain", bad).is_err(), "{bad}");
        }

        assert!(credential_id("id", &format!("urn:uuid:{id}")).is_ok());
        assert!(credential_id("id", "https://issuer.example/credentials/1").is_ok());
        for bad in ["../../etc", "urn:", ":x", "1urn:x", "urn:a b", ""] {
            assert!(credential_id("id", bad).is_err(), "{bad}");
        }
        let long = format!("urn:{}", "a".repeat(MAX_CREDENTIAL_ID_BYTES));
        assert!(credential_id("id", &long).is_err());
    }

    #[test]
    fn the_problem_names_the_parameter_and_not_the_value() {
        let e = subject("subject", "../../etc/passwd").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("`subject`") && !text.contains("passwd"),
            "{text}"
        );
        let _ = e.problem();
    }
}
