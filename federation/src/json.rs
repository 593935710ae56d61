//! The one strict JSON reader: every request body and every byte string whose signature
//! is checked is read through [`parse_strict`], so that no two readers of the same bytes
//! can see different documents.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Maximum nesting of arrays/objects accepted by [`parse_strict`].
pub const MAX_JSON_DEPTH: usize = 64;

/// Serde messages may quote input; they are cut before being echoed.
const MAX_ECHOED_CHARS: usize = 200;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    #[error("the document is not valid UTF-8 (byte {at})")]
    InvalidUtf8 { at: usize },
    #[error("JSON nesting exceeds {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("duplicate object key \"{key}\"")]
    DuplicateKey { key: String },
    #[error("{0}")]
    Malformed(String),
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses a JSON document with the checks every fedgate input gets: valid UTF-8, at most
/// [`MAX_JSON_DEPTH`] levels of nesting, no duplicate object keys at any depth, no
/// trailing data.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(StrictJsonError::InvalidUtf8 {
            at: err.valid_up_to(),
        });
    }
    check_depth(bytes)?;

    // Checked in a pass of its own, then parsed by serde_json proper: building the Value
    // here would have to mimic serde_json's internals (e.g. with `arbitrary_precision`,
    // numbers arrive as private single-key maps).
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let checked = UniqueKeys {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    let malformed = |err: serde_json::Error| {
        StrictJsonError::Malformed(truncate_chars(&err.to_string(), MAX_ECHOED_CHARS))
    };
    if let Err(err) = checked {
        return Err(match duplicate.into_inner() {
            Some(key) => StrictJsonError::DuplicateKey {
                key: truncate_chars(&key, MAX_ECHOED_CHARS),
            },
            None => malformed(err),
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// Iterative scan, so a hostile document cannot exhaust the stack before the parser (which
/// recurses) ever sees it. Structure errors are left to the parser.
fn check_depth(bytes: &[u8]) -> Result<(), StrictJsonError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(StrictJsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Walks a document, recording the first object key repeated within one object. Recursion
/// here is bounded by [`check_depth`], which has already run.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                let message = format!("duplicate key {key}");
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom(message));
            }
            map.next_value_seed(self)?;
            keys.insert(key);
        }
        Ok(())
    }
}
