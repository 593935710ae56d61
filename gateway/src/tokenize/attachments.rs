//! Attachments: text data is decoded and scrubbed, data that cannot be checked and urls
//! go unless attachments are revealed.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::classes::Action;
use super::engine::Engine;
use super::scrub::scrub_text;

impl Engine<'_, '_> {
    /// An Attachment under the `attachments` action: removed data and url, or text data
    /// scrubbed of unrevealed identifiers (binary data that cannot be checked goes unless
    /// attachments are explicitly revealed).
    pub(super) fn attachment(&mut self, obj: &mut Map<String, Value>, action: Action) {
        match action {
            Action::Reveal | Action::Keep => {
                let Some(data) = obj.get("data").and_then(Value::as_str) else {
                    return;
                };
                let engine = base64::engine::general_purpose::STANDARD;
                let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let text = engine
                    .decode(compact.as_bytes())
                    .ok()
                    .map(String::from_utf8);
                match text {
                    Some(Ok(text)) => {
                        if let Some(clean) = scrub_text(&text, &self.scrub) {
                            obj.insert(
                                "data".into(),
                                Value::String(engine.encode(clean.as_bytes())),
                            );
                            obj.insert("size".into(), json!(clean.len()));
                            obj.remove("hash");
                        }
                    }
                    Some(Err(_)) if action == Action::Reveal || self.scrub.is_empty() => {}
                    _ => {
                        obj.remove("data");
                        obj.remove("hash");
                        obj.remove("size");
                    }
                }
            }
            _ => {
                for key in ["data", "url", "hash", "size"] {
                    obj.remove(key);
                }
            }
        }
    }
}
