//! Free text scrubbed of the patient's identifying values.

use super::{PSEUDONYM_PREFIX, REDACTED, TOKEN_PREFIX};

/// Strings this module produced: not scrubbed (a short secret could match inside one).
pub(super) fn is_generated(s: &str) -> bool {
    let rest = s
        .strip_prefix(TOKEN_PREFIX)
        .or_else(|| s.strip_prefix(PSEUDONYM_PREFIX));
    rest.is_some_and(|r| {
        r.len() >= 22
            && r.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    })
}

/// `text` with every whole-word, ASCII-case-insensitive occurrence of a value of
/// `secrets` replaced by [`REDACTED`]; `None` when nothing matched.
pub(super) fn scrub_text(text: &str, secrets: &[String]) -> Option<String> {
    if secrets.is_empty() || is_generated(text) {
        return None;
    }
    let mut current = text.to_string();
    let mut changed = false;
    for secret in secrets {
        if let Some(next) = replace_word(&current, secret) {
            current = next;
            changed = true;
        }
    }
    changed.then_some(current)
}

pub(super) fn is_word_byte(b: u8) -> bool {
    // Bytes of multi-byte characters count as letters, so "Luz" does not match in "Luzón".
    b.is_ascii_alphanumeric() || b >= 0x80
}

pub(super) fn replace_word(text: &str, needle: &str) -> Option<String> {
    let hay = text.as_bytes();
    let pat = needle.as_bytes();
    if pat.is_empty() || pat.len() > hay.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    let mut found = false;
    while i + pat.len() <= hay.len() {
        let matches = hay[i..i + pat.len()].eq_ignore_ascii_case(pat)
            && (i == 0 || !is_word_byte(hay[i - 1]) || !is_word_byte(pat[0]))
            && (i + pat.len() == hay.len()
                || !is_word_byte(hay[i + pat.len()])
                || !is_word_byte(pat[pat.len() - 1]));
        if matches && text.is_char_boundary(i) && text.is_char_boundary(i + pat.len()) {
            out.push_str(&text[last..i]);
            out.push_str(REDACTED);
            i += pat.len();
            last = i;
            found = true;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}
