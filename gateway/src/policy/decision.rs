//! The decision document of `data.fedgate.<domain>.decision` (docs/gateway-contract.md §2)
//! and its obligations: read from the engine's output as they are, and handed as they are
//! to the tokenizer, so that what the policy said and what is applied cannot drift apart.

use serde::{Deserialize, Serialize};

/// Identifier classes of the tokenizer (docs/gateway-contract.md §3): the access events'
/// vocabulary and the obligations name the same classes.
pub use federation::events::IDENTIFIER_CLASSES;

/// Identifier obligations and limits of an allowed decision (contract §2).
///
/// The lists and `aggregate_only` are required (the limits may be left out, as null): a
/// policy that forgets `redact` made a malformed decision, which is a deny, rather than
/// one that silently keeps narrative and attachments. Class names are checked by [`Obligations::validate`], which both the engine (on every
/// allow) and the tokenizer (before applying) call; `Default` is the fail-closed set that
/// names nothing, so that every direct identifier is redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    pub reveal: Vec<String>,
    pub tokenize: Vec<String>,
    pub pseudonymize: Vec<String>,
    pub generalize: Vec<String>,
    pub redact: Vec<String>,
    pub aggregate_only: bool,
    pub min_cell_size: Option<u32>,
    pub max_records: Option<u32>,
    /// Move every date of the answer by one offset per patient and recipient
    /// ([`crate::dates`]); for domains that do not reveal the birth date. Absent is false.
    #[serde(default)]
    pub shift_dates: bool,
}

/// A class name outside [`IDENTIFIER_CLASSES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown identifier class {0:?} in obligations")]
pub struct UnknownClass(pub String);

impl Obligations {
    /// Every class named by any of the five lists.
    pub fn classes(&self) -> impl Iterator<Item = &String> {
        self.reveal
            .iter()
            .chain(&self.tokenize)
            .chain(&self.pseudonymize)
            .chain(&self.generalize)
            .chain(&self.redact)
    }

    /// Every class name must belong to the vocabulary: a typo in a policy fails closed.
    pub fn validate(&self) -> Result<(), UnknownClass> {
        match self
            .classes()
            .find(|c| !IDENTIFIER_CLASSES.contains(&c.as_str()))
        {
            Some(c) => Err(UnknownClass(c.clone())),
            None => Ok(()),
        }
    }
}

/// The decision document of `data.fedgate.<domain>.decision` (contract §2), plus the
/// digest of the bundle that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
    pub data_classes: Vec<String>,
    pub obligations: Obligations,
    pub break_glass: bool,
    pub review_required: bool,
    pub expires_at: Option<String>,
    /// Filled by the engine, never by the policy.
    #[serde(default, skip_deserializing)]
    pub policy_digest: String,
}

impl Decision {
    /// A deny with one reason and no digest.
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision {
            allow: false,
            reasons: vec![reason.into()],
            data_classes: Vec::new(),
            obligations: Obligations::default(),
            break_glass: false,
            review_required: false,
            expires_at: None,
            policy_digest: String::new(),
        }
    }

    pub(super) fn with_digest(mut self, digest: &str) -> Decision {
        self.policy_digest = digest.to_string();
        self
    }
}
