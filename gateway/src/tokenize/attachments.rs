//! Attachments: text content is decoded, scrubbed like every other string and encoded again
//! (with its size and hash made true again); content that cannot be scanned (PDF, images,
//! DICOM, unknown or undeclared types, unknown charsets, content behind a url that the
//! gateway does not fetch) is withheld unless the decision reveals attachments. Every
//! withheld attachment is reported.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};

use super::classes::Action;
use super::engine::Engine;

/// Media types whose content is text the scrubber can read.
const SCANNABLE: [&str; 12] = [
    "text/plain",
    "text/html",
    "text/markdown",
    "text/x-markdown",
    "text/xml",
    "text/csv",
    "application/json",
    "application/xml",
    "application/fhir+json",
    "application/fhir+xml",
    "application/json+fhir",
    "application/xhtml+xml",
];

/// How the bytes of a scannable attachment are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charset {
    Utf8,
    /// One byte per character, read as U+0000..U+00FF (ISO-8859-1; also windows-1252,
    /// whose letters the scrubber looks for sit at the same places).
    Latin1,
}

/// The charset of `content_type` when its media type is scannable and its charset known.
pub(super) fn scannable(content_type: &str) -> Option<Charset> {
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    if !SCANNABLE.contains(&media.as_str()) {
        return None;
    }
    let mut charset = Charset::Utf8;
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim().trim_matches('"').to_ascii_lowercase();
            charset = match value.as_str() {
                "utf-8" | "utf8" | "us-ascii" | "ascii" => Charset::Utf8,
                "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "windows-1252" | "cp1252" => {
                    Charset::Latin1
                }
                _ => return None,
            };
        }
    }
    Some(charset)
}

fn decode_text(bytes: Vec<u8>, charset: Charset) -> Option<String> {
    match charset {
        Charset::Utf8 => String::from_utf8(bytes).ok(),
        Charset::Latin1 => Some(bytes.into_iter().map(char::from).collect()),
    }
}

fn encode_text(text: &str, charset: Charset) -> Option<Vec<u8>> {
    match charset {
        Charset::Utf8 => Some(text.as_bytes().to_vec()),
        Charset::Latin1 => text.chars().map(|c| u8::try_from(c).ok()).collect(),
    }
}

/// `Attachment.hash`: the base64 SHA-1 of the data (FHIR R4).
pub(super) fn attachment_hash(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(bytes))
}

impl Engine<'_, '_> {
    /// An Attachment under the `attachments` action (`self.path` is its path).
    pub(super) fn attachment(&mut self, obj: &mut Map<String, Value>, action: Action) {
        let has_content = obj.contains_key("data") || obj.contains_key("url");
        if !matches!(action, Action::Reveal | Action::Keep) {
            for key in ["data", "url", "hash", "size"] {
                obj.remove(key);
            }
            if has_content {
                self.withhold("", "attachments-redacted");
            }
            return;
        }
        let revealed = action == Action::Reveal;
        // The gateway fetches nothing: content behind a url is never scanned.
        if obj.contains_key("url") && !revealed {
            obj.remove("url");
            if !obj.contains_key("data") {
                obj.remove("hash");
                obj.remove("size");
            }
            self.withhold(".url", "attachment-url-not-scanned");
        }
        let Some(data) = obj.get("data") else {
            return;
        };
        let charset = obj
            .get("contentType")
            .and_then(Value::as_str)
            .and_then(scannable);
        let decoded = data.as_str().and_then(|d| {
            let compact: String = d.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .ok()
        });
        let reason = match (charset, decoded) {
            (Some(charset), Some(bytes)) => match decode_text(bytes, charset) {
                Some(text) => {
                    if let Some(clean) = self.scrubber.scrub(&text, true) {
                        match encode_text(&clean, charset) {
                            Some(bytes) => self.replace_data(obj, &bytes),
                            // Unreachable for text decoded from that charset; fail closed.
                            None => self.drop_data(obj, "attachment-undecodable"),
                        }
                    }
                    return;
                }
                None => "attachment-undecodable",
            },
            (Some(_), None) => "attachment-undecodable",
            (None, _) => "attachment-not-scannable",
        };
        if !revealed {
            self.drop_data(obj, reason);
        }
    }

    fn replace_data(&mut self, obj: &mut Map<String, Value>, bytes: &[u8]) {
        let engine = base64::engine::general_purpose::STANDARD;
        obj.insert("data".into(), Value::String(engine.encode(bytes)));
        // `size` is a number in R4 and a string (integer64) in R5: kept in its form.
        let size = match obj.get("size") {
            Some(Value::String(_)) => Value::String(bytes.len().to_string()),
            _ => json!(bytes.len()),
        };
        obj.insert("size".into(), size);
        if obj.contains_key("hash") {
            obj.insert("hash".into(), Value::String(attachment_hash(bytes)));
        }
    }

    fn drop_data(&mut self, obj: &mut Map<String, Value>, reason: &'static str) {
        for key in ["data", "hash", "size"] {
            obj.remove(key);
        }
        self.withhold(".data", reason);
    }
}
