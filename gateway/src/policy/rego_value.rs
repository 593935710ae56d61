//! The policy input as regorus holds it, serialized straight into regorus values.
//!
//! Why by hand: regorus reads values from JSON text or from a `serde_json::Value`, and both
//! cost more than the VM's run of a small domain's decision (parsing the text interns every
//! key; the tree is a second copy of the input). A serde serializer into `regorus::Value`
//! skips both; no crate provides one. Only what JSON can express is produced, as
//! serde_json would write it: `None` and unit are null, unit variants are their name,
//! other variants are one-key objects, map keys must serialize to strings.

use std::collections::BTreeMap;

use regorus::Value;
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
