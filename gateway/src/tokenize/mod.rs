//! Obligations of a decision applied to the FHIR resources that leave the gateway
//! (docs/gateway-contract.md §3): each identifier class is revealed, tokenized (vault),
//! pseudonymized (HMAC per recipient and domain), generalized (HIPAA Safe Harbor) or
//! redacted, with the precedence reveal > tokenize > pseudonymize > generalize > redact.
//!
//! Fail closed: a direct-identifier class that no obligation names is redacted, and so is
//! `meta`, the server's record keeping, which links answers. Classes without a meaningful
//! form of an operation fall to the stricter one: `generalize` of a name, number, telecom,
//! id or `meta` is a redaction, `tokenize`/`pseudonymize` of dates, narrative or
//! attachments is a redaction, and `tokenize` of ids or `meta` is a pseudonym (ids must
//! stay consistent across the references of a response, and the custodian can recompute
//! them).
//!
//! Besides the structured fields, every free-text string that leaves (narratives, notes,
//! displays, text attachments) is scrubbed of the values of the patient's direct
//! identifiers that are not revealed: a value copied into free text is not protected by
//! transforming only its structured field.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the entry point [`apply`] (or its halves [`walk`] and [`Walked::commit`]), the context, pseudonyms |
//! | `classes.rs` | the identifier classes, actions and their precedence |
//! | `engine.rs` | the engine's state: the patient's identifying values, value transforms |
//! | `resources.rs` | per-resource rules: persons, identifiers (also in extensions, DICOM UIDs), names, telecoms, addresses, birth dates |
//! | `meta.rs` | a resource's `meta`: what of the server's record keeping leaves |
//! | `walk.rs` | the generic walk: references, dates, free text, pruning |
//! | `attachments.rs` | attachments: decoded, scrubbed or removed |
//! | `scrub.rs` | free-text scrubbing |

mod attachments;
mod classes;
mod engine;
mod meta;
mod resources;
mod scrub;
#[cfg(test)]
mod tests;
mod walk;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::vault::{hmac_sha256, NewTokens, Vault, VaultError};

pub use classes::{classify_identifier, Action, IdentifierClass};
use engine::Engine;
use walk::prune;

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

/// The tokenizer applies a decision's obligations as the policy engine read them.
pub use crate::policy::Obligations;

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
    pseudonym_text(&mac)
}

/// A pseudonym as it is written: `p-` and the MAC in base64url.
fn pseudonym_text(mac: &[u8; 32]) -> String {
    format!("{PSEUDONYM_PREFIX}{}", federation::b64::encode(mac))
}

/// A pseudonym only the key holder can recompute, for the custodian's own records (e.g.
/// the patient reference in access events): HMAC(key, purpose ‖ 0 ‖ value), prefixed `p-`.
pub fn keyed_pseudonym(key: &[u8; 32], purpose: &str, value: &str) -> String {
    pseudonym_text(&hmac_sha256(key, &[purpose.as_bytes(), value.as_bytes()]))
}

/// An element withheld from a response, for the OperationOutcome that says so. It names
/// the resource as it leaves (its type and output id), the element's path from the resource
/// (`DocumentReference.content[0].attachment.data`) and a reason code; never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub resource_type: String,
    /// The id as it leaves (a pseudonym, or none when ids are redacted).
    pub resource_id: Option<String>,
    pub path: String,
    /// `attachment-not-scannable`, `attachment-undecodable`, `attachment-url-not-scanned`,
    /// `attachments-redacted`, or `date-is-birth-date` (a date that would give away a
    /// birth date that is not revealed).
    pub reason: &'static str,
}

/// What the tokenizer lets leave, and what it withheld.
#[derive(Debug, Default)]
pub struct Tokenized {
    pub resources: Vec<Value>,
    pub withheld: Vec<Withheld>,
}

/// Applies `obligations` to the resources of one response. Provenance resources and
/// `meta.source` are always removed, the rest of `meta` unless the `meta` class is named
/// (`meta.rs`); with `max_records` the output is cut to that many resources, Patient first.
/// Blocks on the vault's write when it mints tokens: [`walk`] and [`Walked::commit`] are
/// its two halves, for a caller that runs the first where the second may not run.
pub fn apply(
    resources: Vec<Value>,
    obligations: &Obligations,
    ctx: &TokenizeContext<'_>,
) -> Result<Tokenized, TokenizeError> {
    walk(resources, obligations, ctx)?.commit(ctx.vault)
}

/// The output of [`walk`]: ready to leave once the tokens it minted are on disk.
#[must_use = "the tokens minted must be committed before the output leaves"]
pub struct Walked {
    tokenized: Tokenized,
    new_tokens: NewTokens,
}

impl Walked {
    /// Whether [`Walked::commit`] writes (it blocks then); without new tokens it only hands
    /// the output over.
    pub fn writes(&self) -> bool {
        !self.new_tokens.is_empty()
    }

    /// Writes the tokens the walk minted, in one write (on disk when it returns), and
    /// returns the output, with any token another replica stored first for the same value
    /// in place of the one minted here.
    pub fn commit(self, vault: &Vault) -> Result<Tokenized, TokenizeError> {
        let Walked {
            mut tokenized,
            new_tokens,
        } = self;
        let replaced = vault.commit(new_tokens)?;
        if !replaced.is_empty() {
            for resource in &mut tokenized.resources {
                replace_tokens(resource, &replaced);
            }
        }
        Ok(tokenized)
    }
}

/// The first half of [`apply`]: every transformation, with tokens looked up in the vault
/// (reads only) and new ones minted in memory, none written yet.
pub fn walk(
    resources: Vec<Value>,
    obligations: &Obligations,
    ctx: &TokenizeContext<'_>,
) -> Result<Walked, TokenizeError> {
    obligations
        .validate()
        .map_err(|e| TokenizeError::UnknownClass(e.0))?;
    let mut resources: Vec<Value> = resources
        .into_iter()
        .filter(|r| crate::records::resource_type(r).is_some_and(|t| t != "Provenance"))
        .collect();
    resources.sort_by_key(|r| crate::records::resource_type(r) != Some("Patient"));
    if let Some(max) = obligations.max_records {
        resources.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }

    let mut engine = Engine::new(obligations, ctx, &resources);
    let walked = walk_all(&mut engine, &mut resources);
    let new_tokens = std::mem::take(&mut engine.new_tokens);
    if let Err(e) = walked {
        ctx.vault.forget(new_tokens);
        return Err(e);
    }
    // Every token in the output is on disk before the output can leave (the commit).
    Ok(Walked {
        tokenized: Tokenized {
            resources,
            withheld: engine.withheld,
        },
        new_tokens,
    })
}

/// Whether `resources` hold at most `max` bytes of JSON, roughly (strings and keys by
/// length, other values by a few bytes each); stops counting once past it.
pub fn at_most_bytes(resources: &[Value], max: usize) -> bool {
    fn size(v: &Value, left: &mut usize) -> bool {
        let own = match v {
            Value::String(s) => s.len() + 2,
            Value::Array(_) | Value::Object(_) => 2,
            _ => 8,
        };
        let Some(rest) = left.checked_sub(own) else {
            return false;
        };
        *left = rest;
        match v {
            Value::Array(items) => items.iter().all(|i| size(i, left)),
            Value::Object(fields) => fields.iter().all(|(k, v)| {
                left.checked_sub(k.len() + 3)
                    .map(|rest| *left = rest)
                    .is_some()
                    && size(v, left)
            }),
            _ => true,
        }
    }
    let mut left = max;
    resources.iter().all(|r| size(r, &mut left))
}

/// Puts the stored token in place of each replaced one. Tokens stand whole as string
/// values (an identifier's value, an extension's), and are 128 random bits: no other
/// string equals one.
fn replace_tokens(value: &mut Value, replaced: &crate::vault::Replaced) {
    match value {
        Value::String(s) => {
            if let Some(stored) = replaced.get(s) {
                *s = stored.to_string();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| replace_tokens(v, replaced)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|v| replace_tokens(v, replaced)),
        _ => {}
    }
}

fn walk_all(engine: &mut Engine<'_, '_>, resources: &mut [Value]) -> Result<(), TokenizeError> {
    for resource in resources {
        if let Value::Object(obj) = resource {
            let ty = crate::records::field(obj, "resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            engine.path.clear();
            engine.path.push_str(ty);
            engine.current = (ty.to_string(), None);
            engine.resource(obj, false)?;
            prune(obj);
        }
    }
    Ok(())
}
