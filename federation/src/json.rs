//! The one strict JSON reader, for every byte string fedgate parses: request bodies, and
//! above all what a signature covers (JWS protected headers and payloads, manifests,
//! status list credentials, event batches, DID documents, the log's answers).
//!
//! A signature covers bytes, but what is acted on is what a parser makes of them. Where
//! two readers of the same bytes could disagree, the signer's intent is ambiguous: a
//! consent with `"provision": "deny"` and then `"provision": "permit"` is a denial to one
//! JSON library and a permit to another (serde_json keeps the last). So every document is
//! refused unless all common readers would see the same thing: valid UTF-8, no object key
//! twice in one object, no lone UTF-16 surrogate escape (which has no Unicode value; some
//! readers replace it, some keep it, serde_json refuses it), nesting within
//! [`MAX_JSON_DEPTH`], and nothing after the value.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Maximum nesting of arrays and objects accepted by [`parse_strict`].
pub const MAX_JSON_DEPTH: usize = 64;

/// Input quoted in an error (a duplicated key, a parser message) is cut to this many
/// characters, so that a hostile document cannot inflate errors, answers or logs.
const MAX_QUOTED_CHARS: usize = 200;

/// Why a document was refused. The `Display` form may quote a little of the input (a
/// duplicated key, cut short); [`StrictJsonError::summary`] never does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    #[error("the document is not valid UTF-8 (byte {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("JSON nesting exceeds {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("duplicate object key \"{key}\"")]
    DuplicateKey { key: String },
    #[error("a string escapes a lone UTF-16 surrogate")]
    LoneSurrogate,
    /// Not JSON at all, or trailing data; the parser's message.
    #[error("{0}")]
    Malformed(String),
}

impl StrictJsonError {
    /// What is wrong, without any of the input: for errors that travel further than the
    /// caller (verification failures, access events, logs).
    pub fn summary(&self) -> &'static str {
        match self {
            StrictJsonError::InvalidUtf8 { .. } => "not valid UTF-8",
            StrictJsonError::TooDeep => "nested too deep",
            StrictJsonError::DuplicateKey { .. } => "an object key appears twice",
            StrictJsonError::LoneSurrogate => "a lone UTF-16 surrogate escape",
            StrictJsonError::Malformed(_) => "malformed JSON",
        }
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// Parses one JSON document with the rules in the module documentation, checked in this
/// order: UTF-8, nesting and surrogates (one iterative scan, so a hostile document cannot
/// exhaust the stack before the recursive parser sees it), duplicate keys, then the parse
/// proper.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(StrictJsonError::InvalidUtf8 {
            valid_up_to: err.valid_up_to(),
        });
    }
    scan(bytes)?;

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
    let malformed = |err: serde_json::Error| StrictJsonError::Malformed(cut(&err.to_string()));
    if let Err(err) = checked {
        return Err(match duplicate.into_inner() {
            Some(key) => StrictJsonError::DuplicateKey { key: cut(&key) },
            None => malformed(err),
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// The four hex digits at `at` as a UTF-16 code unit.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

const HIGH_SURROGATES: std::ops::Range<u16> = 0xD800..0xDC00;
const LOW_SURROGATES: std::ops::Range<u16> = 0xDC00..0xE000;

/// Depth and surrogate escapes, without recursion. Anything else that is wrong (bad
/// escapes, structure) is left to the parser; this scan only has to be right about
/// well-formed documents and never to accept less than the parser refuses.
fn scan(bytes: &[u8]) -> Result<(), StrictJsonError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        if in_string {
            // Only a quote or a backslash matters inside a string: jump to the next one
            // (strings are most of what is read: JWTs inside JSON, base64 attachments).
            match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                Some(at) => i += at,
                // Unterminated: the parser refuses it.
                None => break,
            }
            match bytes[i] {
                b'"' => in_string = false,
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    match hex4(bytes, i + 2) {
                        Some(unit) if HIGH_SURROGATES.contains(&unit) => {
                            // Only a low surrogate escape right after completes it.
                            let low = match bytes.get(i + 6..i + 8) {
                                Some(b"\\u") => hex4(bytes, i + 8),
                                _ => None,
                            };
                            if !low.is_some_and(|l| LOW_SURROGATES.contains(&l)) {
                                return Err(StrictJsonError::LoneSurrogate);
                            }
                            i += 12;
                        }
                        Some(unit) if LOW_SURROGATES.contains(&unit) => {
                            return Err(StrictJsonError::LoneSurrogate);
                        }
                        Some(_) => i += 6,
                        // A malformed escape: the parser refuses it.
                        None => i += 2,
                    }
                    continue;
                }
                // Any other escape is two bytes; the escaped one cannot end the string.
                b'\\' => {
                    i += 2;
                    continue;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match bytes[i] {
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
        i += 1;
    }
    Ok(())
}

/// Walks a document, recording the first object key repeated within one object (keys are
/// compared after unescaping). Recursion here is bounded by [`scan`], which has already
/// run.
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
        // Keys borrowed from the input where they have no escapes; compared one by one
        // while an object is small (most are), through a set once it is not.
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let seen = if many.is_empty() {
                few.contains(&key)
            } else {
                many.contains(&key)
            };
            if seen {
                *self.duplicate.borrow_mut() = Some(key.into_owned());
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self)?;
            if !many.is_empty() {
                many.insert(key);
            } else if few.len() < LINEAR_KEYS {
                few.push(key);
            } else {
                many.extend(few.drain(..));
                many.insert(key);
            }
        }
        Ok(())
    }
}

/// Keys of an object compared one by one below this many; above, through a set.
const LINEAR_KEYS: usize = 16;

/// An object key, borrowed from the input when it has no escape to undo.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_string())))
            }

            fn visit_string<E>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(bytes: &[u8]) -> StrictJsonError {
        parse_strict(bytes).unwrap_err()
    }

    #[test]
    fn duplicate_keys_at_any_depth_and_after_unescaping() {
        assert_eq!(
            err(br#"{"provision":"deny","provision":"permit"}"#),
            StrictJsonError::DuplicateKey {
                key: "provision".into()
            }
        );
        assert!(matches!(
            err(br#"[{"b":{"c":[{"d":1,"d":2}]}}]"#),
            StrictJsonError::DuplicateKey { .. }
        ));
        assert!(matches!(
            err(br#"{"a":1,"\u0061":2}"#),
            StrictJsonError::DuplicateKey { .. }
        ));
        // The same key in sibling objects is fine.
        assert!(parse_strict(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#).is_ok());
        // A long key is quoted cut short, and never in the summary.
        let long = "Z".repeat(10_000);
        let e = err(format!(r#"{{"{long}":1,"{long}":2}}"#).as_bytes());
        assert!(e.to_string().len() < 300);
        assert!(!e.summary().contains('Z'));
    }

    /// What serde_json makes of lone surrogates, and that they are refused by name
    /// before it is asked.
    #[test]
    fn lone_surrogates_are_refused_explicitly() {
        // serde_json refuses them into a Value, as a generic syntax error: no dependence
        // on that, but worth knowing if it ever changes.
        assert!(serde_json::from_slice::<Value>(br#""\ud800""#).is_err());
        assert!(serde_json::from_slice::<Value>(br#""\udc00""#).is_err());
        for doc in [
            &br#""\ud800""#[..],
            br#""\uDBFF""#,
            br#""\udc00""#,
            br#""\uDFFF x""#,
            br#"{"\ud800":1}"#,
            br#"{"a":"x\ud800y"}"#,
            br#"["\ud800\u0041"]"#,
            br#"["\ud800\ud800"]"#,
            br#"["\udc00\ud800"]"#,
            br#"["\ud800\n"]"#,
            br#"["\ud800"#,
        ] {
            assert_eq!(
                err(doc),
                StrictJsonError::LoneSurrogate,
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        // A pair is one character; an escaped backslash before "u" is no escape.
        assert_eq!(parse_strict(br#""\ud83d\ude00""#).unwrap(), json!("😀"));
        assert_eq!(
            parse_strict(br#"{"k":"\\ud800"}"#).unwrap(),
            json!({"k": "\\ud800"})
        );
        assert_eq!(parse_strict(br#""\u00e9\\""#).unwrap(), json!("é\\"));
    }

    #[test]
    fn depth_utf8_and_syntax() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_strict(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            err(nested(MAX_JSON_DEPTH + 1).as_bytes()),
            StrictJsonError::TooDeep
        );
        // Far beyond any stack: refused by the scan, not by a crash.
        assert_eq!(
            err("{\"a\":".repeat(1_000_000).as_bytes()),
            StrictJsonError::TooDeep
        );
        // Brackets inside strings, including after escaped quotes, do not count.
        let in_string = format!(r#"{{"k":"\"{}\\"}}"#, "[".repeat(1000));
        assert!(parse_strict(in_string.as_bytes()).is_ok(), "{in_string}");

        assert_eq!(
            err(b"{\"a\":\"\xff\"}"),
            StrictJsonError::InvalidUtf8 { valid_up_to: 6 }
        );
        for doc in [
            &b"{"[..],
            b"[1,]",
            b"1 2",
            b"\xef\xbb\xbf{}",
            br#""\u12""#,
            b"",
        ] {
            assert!(
                matches!(err(doc), StrictJsonError::Malformed(_)),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        assert_eq!(
            parse_strict(
                br#"{"n":-1,"f":1.5,"u":18446744073709551615,"s":"\u00e9","z":null,"t":true}"#
            )
            .unwrap(),
            json!({"n":-1,"f":1.5,"u":18446744073709551615u64,"s":"é","z":null,"t":true})
        );
    }

    /// Objects of every size around the switch from comparing keys one by one to a set:
    /// a key repeated anywhere (first and last, next to each other, across the switch,
    /// written with an escape) is found, and distinct keys are kept whole.
    #[test]
    fn duplicates_found_in_objects_of_every_size() {
        let object = |keys: &[String]| {
            let fields: Vec<String> = keys.iter().map(|k| format!(r#""{k}":1"#)).collect();
            format!("{{{}}}", fields.join(","))
        };
        for n in 1..=3 * LINEAR_KEYS {
            let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            let doc = parse_strict(object(&keys).as_bytes()).unwrap();
            assert_eq!(doc.as_object().unwrap().len(), n);
            for (at, again) in [(0, n), (n - 1, n), (0, n / 2), (n / 2, n / 2 + 1)] {
                let mut with = keys.clone();
                with.insert(again.min(with.len()), keys[at].clone());
                assert_eq!(
                    err(object(&with).as_bytes()),
                    StrictJsonError::DuplicateKey {
                        key: keys[at].clone()
                    },
                    "{n} keys, k{at} again at {again}"
                );
                // The repeat written with an escape is the same key.
                let mut escaped = keys.clone();
                escaped.insert(
                    again.min(escaped.len()),
                    format!("\\u006b{}", &keys[at][1..]),
                );
                assert!(matches!(
                    err(object(&escaped).as_bytes()),
                    StrictJsonError::DuplicateKey { .. }
                ));
            }
        }
    }
}
