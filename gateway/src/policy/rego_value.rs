//! The policy input as regorus holds it, serialized straight into regorus values.
//!
//! Why by hand: regorus reads values from JSON text or from a `serde_json::Value`, and both
//! cost more than the VM's run of a small domain's decision (parsing the text interns every
//! key; the tree is a second copy of the input). A serde serializer into `regorus::Value`
//! skips both; no crate provides one. Only what JSON can express is produced, as
//! serde_json would write it: `None` and unit are null, unit variants are their name,
//! other variants are one-key objects, map keys must serialize to strings.
//!
//! And back: [`from_rego`] reads a type from a regorus value (the decision document) as
//! serde_json would read the same document's text, without writing the text first (which
//! cost as much as reading it).

use std::collections::BTreeMap;

use regorus::Value;
use serde::de::{self, Deserialize, IntoDeserializer};
use serde::ser::{self, Serialize};

/// `value` as serde_json would write it, as a regorus value.
pub fn to_rego<T: Serialize + ?Sized>(value: &T) -> Result<Value, Error> {
    value.serialize(Serializer)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

struct Serializer;

/// An array being built.
pub struct Seq(Vec<Value>);

/// An object being built; `variant` wraps it as `{variant: object}` when done.
pub struct Map {
    fields: BTreeMap<Value, Value>,
    key: Option<Value>,
    variant: Option<&'static str>,
    /// serde_json's number under `arbitrary_precision`, which the workspace enables: a
    /// struct of one field holding the number's text.
    number: bool,
}

/// The struct name serde_json gives a number under `arbitrary_precision`.
const JSON_NUMBER: &str = "$serde_json::private::Number";

/// An array that becomes `{variant: array}`.
pub struct VariantSeq(&'static str, Vec<Value>);

fn wrap(variant: &'static str, value: Value) -> Value {
    let mut outer = BTreeMap::new();
    outer.insert(Value::from(variant), value);
    Value::from(outer)
}

/// `serialize_<int>` methods: each integer as the 64-bit integer of its sign.
macro_rules! integers {
    ($($method:ident: $t:ty => $wide:ty),* $(,)?) => {
        $(fn $method(self, v: $t) -> Result<Value, Error> {
            Ok(Value::from(<$wide>::from(v)))
        })*
    };
}

impl ser::Serializer for Serializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = VariantSeq;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Map;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    integers! {
        serialize_i8: i8 => i64,
        serialize_i16: i16 => i64,
        serialize_i32: i32 => i64,
        serialize_i64: i64 => i64,
        serialize_u8: u8 => u64,
        serialize_u16: u16 => u64,
        serialize_u32: u32 => u64,
        serialize_u64: u64 => u64,
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        // As serde_json: a number that JSON cannot hold is null.
        Ok(if v.is_finite() {
            Value::from(v)
        } else {
            Value::Null
        })
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::from(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::from(
            v.iter()
                .map(|b| Value::from(u64::from(*b)))
                .collect::<Vec<_>>(),
        ))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(wrap(variant, value.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Error> {
        Ok(Seq(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSeq, Error> {
        Ok(VariantSeq(variant, Vec::with_capacity(len)))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Map, Error> {
        Ok(Map {
            fields: BTreeMap::new(),
            key: None,
            variant: None,
            number: false,
        })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Map, Error> {
        let mut map = self.serialize_map(Some(len))?;
        map.number = name == JSON_NUMBER;
        Ok(map)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Map, Error> {
        Ok(Map {
            fields: BTreeMap::new(),
            key: None,
            variant: Some(variant),
            number: false,
        })
    }
}

impl ser::SerializeSeq for Seq {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.push(value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::from(self.0))
    }
}

/// Tuples and tuple structs are arrays: each element as [`Seq`] takes it.
macro_rules! as_seq {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$trait for Seq {
            type Ok = Value;
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                ser::SerializeSeq::serialize_element(self, value)
            }
            fn end(self) -> Result<Value, Error> {
                ser::SerializeSeq::end(self)
            }
        })*
    };
}

as_seq!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl ser::SerializeTupleVariant for VariantSeq {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.1.push(value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(wrap(self.0, Value::from(self.1)))
    }
}

impl Map {
    fn insert(&mut self, key: &'static str, value: Value) {
        self.fields.insert(Value::from(key), value);
    }

    fn done(self) -> Result<Value, Error> {
        if self.number {
            // The number's own JSON text, read as regorus reads numbers.
            return match self.fields.values().next() {
                Some(Value::String(text)) => Value::from_json_str(text)
                    .ok()
                    .filter(|v| matches!(v, Value::Number(_)))
                    .ok_or_else(|| Error("a malformed number".into())),
                _ => Err(Error("a malformed number".into())),
            };
        }
        let object = Value::from(self.fields);
        Ok(match self.variant {
            Some(variant) => wrap(variant, object),
            None => object,
        })
    }
}

impl ser::SerializeMap for Map {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        match key.serialize(Serializer)? {
            key @ Value::String(_) => {
                self.key = Some(key);
                Ok(())
            }
            _ => Err(Error("a map key that is not a string".into())),
        }
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("a map value without its key".into()))?;
        self.fields.insert(key, value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        self.done()
    }
}

impl ser::SerializeStruct for Map {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let value = value.serialize(Serializer)?;
        self.insert(key, value);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        self.done()
    }
}

impl ser::SerializeStructVariant for Map {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Value, Error> {
        self.done()
    }
}

/// `T` read from `value` as serde_json reads the same document from its text: sets are
/// arrays, null is `None` (or unit), numbers are the first of u64, i64 and f64 that holds
/// them. An undefined value is an error.
pub fn from_rego<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, Error> {
    T::deserialize(Reader(value))
}

/// A deserializer over a borrowed regorus value.
struct Reader<'a>(&'a Value);

impl<'de> de::Deserializer<'de> for Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::custom("a number out of range"))
                }
            }
            Value::String(text) => visitor.visit_borrowed_str(text),
            Value::Array(items) => visit_seq(visitor, items.iter()),
            Value::Set(items) => visit_seq(visitor, items.iter()),
            Value::Object(fields) => {
                let mut map = de::value::MapDeserializer::new(
                    fields.iter().map(|(k, v)| (Reader(k), Reader(v))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
            Value::Undefined => Err(de::Error::custom("an undefined value")),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// A unit variant is its name; any other variant a one-key object, as serde_json has them.
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(_) => visitor.visit_enum(Variant(Reader(self.0), None)),
            Value::Object(fields) if fields.len() == 1 => match fields.iter().next() {
                Some((name, content)) => visitor.visit_enum(Variant(Reader(name), Some(content))),
                None => Err(de::Error::custom(
                    "an empty object where a variant was expected",
                )),
            },
            _ => Err(de::Error::custom(
                "a variant must be a string or an object of one key",
            )),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, Error> for Reader<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// An enum's variant: its name, and its content unless it is a unit variant.
struct Variant<'a>(Reader<'a>, Option<&'a Value>);

impl<'de> de::EnumAccess<'de> for Variant<'de> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let name = seed.deserialize(Reader(self.0 .0))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'de> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        match self.1 {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(de::Error::custom("a unit variant with content")),
        }
    }
    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(Reader(self.content()?))
    }
    fn tuple_variant<V: de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(Reader(self.content()?), visitor)
    }
    fn struct_variant<V: de::Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(Reader(self.content()?), visitor)
    }
}

impl<'a> Variant<'a> {
    fn content(&self) -> Result<&'a Value, Error> {
        self.1.ok_or_else(|| {
            de::Error::custom("a variant without content where content was expected")
        })
    }
}

fn visit_seq<'de, V: de::Visitor<'de>>(
    visitor: V,
    items: impl Iterator<Item = &'de Value>,
) -> Result<V::Value, Error> {
    let mut seq = de::value::SeqDeserializer::new(items.map(Reader));
    let value = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{sample_inputs, DOMAINS};

    /// The same value as regorus's own reading of serde_json's text, for every sample input.
    #[test]
    fn inputs_convert_as_their_json_text_reads() {
        let mut compared = 0;
        for domain in DOMAINS {
            for mut input in sample_inputs(domain) {
                // Selective disclosure paths: strings, numbers and null from the wire.
                for c in &mut input.consents {
                    c.disclosed = Some(vec![
                        vec![serde_json::json!("period"), serde_json::json!("start")],
                        vec![serde_json::json!("dataClasses"), serde_json::json!(null)],
                        vec![
                            serde_json::json!("x"),
                            serde_json::json!(-3),
                            serde_json::json!(2.5),
                        ],
                    ]);
                }
                let text = serde_json::to_string(&input).unwrap();
                assert_eq!(
                    to_rego(&input).unwrap(),
                    Value::from_json_str(&text).unwrap()
                );
                compared += 1;
            }
        }
        assert!(compared >= 20);
    }

    #[test]
    fn what_json_cannot_say_is_refused_or_null() {
        // Numbers of a JSON tree (arbitrary precision in this workspace) stay numbers.
        assert_eq!(
            to_rego(&serde_json::json!([7, -3, 2.5, 12345678901234567890u64])).unwrap(),
            Value::from_json_str("[7, -3, 2.5, 12345678901234567890]").unwrap()
        );
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(1u8, "one");
        assert!(to_rego(&bad).is_err());
        assert_eq!(to_rego(&f64::NAN).unwrap(), Value::Null);
        assert_eq!(to_rego(&None::<u8>).unwrap(), Value::Null);
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            Pair(u8, u8),
            Named { a: u8 },
        }
        assert_eq!(to_rego(&E::Unit).unwrap(), Value::from("Unit"));
        assert_eq!(
            to_rego(&E::Pair(1, 2)).unwrap(),
            Value::from_json_str(r#"{"Pair":[1,2]}"#).unwrap()
        );
        assert_eq!(
            to_rego(&E::Named { a: 1 }).unwrap(),
            Value::from_json_str(r#"{"Named":{"a":1}}"#).unwrap()
        );
    }
}

#[cfg(test)]
mod reading {
    use super::*;
    use crate::policy::{sample_inputs, Decision, PolicyInput, DOMAINS};

    /// What serde_json makes of the value's own text.
    fn through_text<T: serde::de::DeserializeOwned>(value: &Value) -> Option<T> {
        let text = value.to_json_str().ok()?;
        serde_json::from_str(&text).ok()
    }

    #[test]
    fn every_sample_input_reads_back_as_itself() {
        let mut read = 0;
        for domain in DOMAINS {
            for input in sample_inputs(domain) {
                let value = to_rego(&input).unwrap();
                let back: PolicyInput = from_rego(&value).unwrap();
                assert_eq!(back, input);
                read += 1;
            }
        }
        assert!(read >= 20);
    }

    #[test]
    fn variants_read_back_as_they_were_written() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum E {
            Unit,
            One(u8),
            Pair(u8, i8),
            Named { a: Option<String> },
        }
        for e in [
            E::Unit,
            E::One(7),
            E::Pair(1, -2),
            E::Named { a: None },
            E::Named {
                a: Some("x".into()),
            },
        ] {
            let value = to_rego(&e).unwrap();
            assert_eq!(from_rego::<E>(&value).unwrap(), e);
        }
        for bad in [
            r#""Other""#,
            r#"{"Unit": 1}"#,
            r#"{"One": 1, "Pair": [1, 2]}"#,
            "[1]",
            r#"{"One": "x"}"#,
        ] {
            let value = Value::from_json_str(bad).unwrap();
            assert!(from_rego::<E>(&value).is_err(), "{bad}");
            assert!(serde_json::from_str::<E>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions_read_as_their_text_reads() {
        let allow = r#"{"allow": true, "reasons": ["consent permits TREAT for Condition"],
            "data_classes": ["Condition"], "obligations": {"reveal": ["name"], "tokenize": [],
            "pseudonymize": ["patient-id"], "generalize": [], "redact": [],
            "aggregate_only": false, "min_cell_size": null, "max_records": 5000},
            "break_glass": false, "review_required": false, "expires_at": null}"#;
        let good = Value::from_json_str(allow).unwrap();
        let d: Decision = from_rego(&good).unwrap();
        assert_eq!(Some(&d), through_text::<Decision>(&good).as_ref());
        assert!(d.allow);
        assert_eq!(d.obligations.max_records, Some(5000));
        assert_eq!(d.obligations.min_cell_size, None);
        assert!(!d.obligations.shift_dates);

        // Each change: read exactly as serde_json reads the text, accepted or refused.
        let changes: &[(&str, &str)] = &[
            // A set where an array is expected (what the policies build).
            (
                "\"data_classes\": [\"Condition\"]",
                "\"data_classes\": [\"Condition\"]",
            ),
            ("\"max_records\": 5000", "\"max_records\": 5000.5"),
            ("\"max_records\": 5000", "\"max_records\": -1"),
            ("\"max_records\": 5000", "\"max_records\": 12345678901"),
            ("\"max_records\": 5000", "\"max_records\": \"5000\""),
            ("\"allow\": true", "\"allow\": \"true\""),
            ("\"allow\": true", "\"allow\": null"),
            ("\"allow\": true, ", ""),
            (
                "\"expires_at\": null",
                "\"expires_at\": \"2026-12-04T10:00:00Z\"",
            ),
            ("\"expires_at\": null", "\"expires_at\": 7"),
            ("\"expires_at\": null", "\"expires_at\": null, \"extra\": 1"),
            (
                "\"aggregate_only\": false",
                "\"aggregate_only\": false, \"shift_dates\": true",
            ),
            (
                "\"reasons\": [\"consent permits TREAT for Condition\"]",
                "\"reasons\": [1]",
            ),
            (
                "\"reasons\": [\"consent permits TREAT for Condition\"]",
                "\"reasons\": {}",
            ),
        ];
        let mut accepted = 0;
        let mut refused = 0;
        for (from, to) in changes {
            assert!(allow.contains(from), "{from}");
            let text = allow.replacen(from, to, 1);
            let value = Value::from_json_str(&text).unwrap();
            let direct = from_rego::<Decision>(&value).ok();
            assert_eq!(direct, serde_json::from_str::<Decision>(&text).ok(), "{to}");
            if direct.is_some() {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted >= 3 && refused >= 8, "{accepted} {refused}");

        // A set of classes, as the policies' rules hold them, reads as a sorted list.
        let mut fields: BTreeMap<Value, Value> = good
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let set: std::collections::BTreeSet<Value> = ["Observation", "Condition"]
            .into_iter()
            .map(Value::from)
            .collect();
        fields.insert(Value::from("data_classes"), Value::from(set));
        let d: Decision = from_rego(&Value::from(fields)).unwrap();
        assert_eq!(d.data_classes, ["Condition", "Observation"]);
        assert!(from_rego::<Decision>(&Value::Undefined).is_err());
        assert!(from_rego::<Decision>(&Value::Null).is_err());
    }
}
