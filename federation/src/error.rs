//! Errors shared by several modules of the contract.

/// A name that is not one of a closed set (a proof format, a domain, a member role), as
/// given on a command line or in a config file. The message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} ({expected})")]
pub struct ParseError {
    /// What was being parsed ("proof format", "domain", "role").
    what: &'static str,
    /// The text that was refused.
    pub(crate) value: String,
    /// The accepted names, for the message.
    expected: String,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, value: &str, expected: impl Into<String>) -> Self {
        ParseError {
            what,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_value_and_what_is_accepted() {
        let e = ParseError::new("domain", "dental", "clinical, billing or research");
        assert_eq!(
            e.to_string(),
            "unknown domain \"dental\" (clinical, billing or research)"
        );
    }
}
