//! Reading JSON request bodies field by field, so that every mistake gets a precise 422 that
//! names the field, never echoes the value (it may be personal data), and a PATCH can tell an
//! absent field from `null`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::{self, Phone, Region};

/// A field of a JSON object: absent, explicitly `null`, or a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    /// For optional fields on create: absent and null both mean "none".
    pub fn into_option(self) -> Option<T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    /// For PATCH of an optional field: `None` unchanged, `Some(None)` cleared.
    pub fn into_patch(self) -> Option<Option<T>> {
        match self {
            Field::Absent => None,
            Field::Null => Some(None),
            Field::Value(v) => Some(Some(v)),
        }
    }

    /// For PATCH of a required field: absent is unchanged, null is an error.
    pub fn into_required_patch(self, name: &str) -> Result<Option<T>, ApiError> {
        match self {
            Field::Absent => Ok(None),
            Field::Null => Err(ApiError::invalid(name, "cannot be null")),
            Field::Value(v) => Ok(Some(v)),
        }
    }

    /// For a required field on create.
    pub fn required(self, name: &str) -> Result<T, ApiError> {
        match self {
            Field::Value(v) => Ok(v),
            _ => Err(ApiError::invalid(name, "is required")),
        }
    }
}

/// A JSON object body.
#[derive(Debug)]
pub struct Body {
    map: Map<String, Value>,
}

impl Body {
    /// 400 unless the bytes are a JSON object.
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body { map }),
            Ok(_) => Err(ApiError::Malformed(
                "The body must be a JSON object.".into(),
            )),
            Err(_) => Err(ApiError::Malformed("The body is not valid JSON.".into())),
        }
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// 422 on the first field not in `allowed`.
    pub fn deny_unknown(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let name: String = k.chars().take(64).filter(|c| !c.is_control()).collect();
                Err(ApiError::Invalid(format!(
                    "Unknown field `{name}`; expected one of: {}.",
                    allowed.join(", ")
                )))
            }
        }
    }

    fn raw(&self, name: &str) -> Field<&Value> {
        match self.map.get(name) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(v) => Field::Value(v),
        }
    }

    fn map_value<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Field<T>, ApiError> {
        Ok(match self.raw(name) {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(v) => Field::Value(f(v).map_err(|p| ApiError::invalid(name, p))?),
        })
    }

    /// A string of at most `max` characters without NUL bytes.
    pub fn text(&self, name: &str, max: usize) -> Result<Field<String>, ApiError> {
        self.map_value(name, |v| {
            let s = v.as_str().ok_or("must be a string")?;
            domain::check_text(s, max)?;
            Ok(s.to_string())
        })
    }

    /// A text that must not be blank; trimmed.
    pub fn non_empty_text(&self, name: &str, max: usize) -> Result<Field<String>, ApiError> {
        self.map_value(name, |v| {
            let s = v.as_str().ok_or("must be a string")?;
            domain::check_text(s, max)?;
            let s = s.trim();
            if s.is_empty() {
                return Err("must not be empty".into());
            }
            Ok(s.to_string())
        })
    }

    pub fn phone(&self, name: &str, region: Region) -> Result<Field<Phone>, ApiError> {
        self.map_value(name, |v| {
            let s = v.as_str().ok_or("must be a string")?;
            Phone::parse(s, region).map_err(|e| format!("is not a usable phone number ({e})"))
        })
    }

    pub fn uuid(&self, name: &str) -> Result<Field<Uuid>, ApiError> {
        self.map_value(name, |v| {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| "must be a UUID string".to_string())
        })
    }

    pub fn parsed<T: FromStr<Err = String>>(&self, name: &str) -> Result<Field<T>, ApiError> {
        self.map_value(name, |v| v.as_str().ok_or("must be a string")?.parse::<T>())
    }

    pub fn timezone(&self, name: &str) -> Result<Field<String>, ApiError> {
        self.map_value(name, |v| {
            let s = v.as_str().ok_or("must be a string")?;
            domain::check_timezone(s)?;
            Ok(s.to_string())
        })
    }

    pub fn email(&self, name: &str) -> Result<Field<String>, ApiError> {
        self.map_value(name, |v| {
            let s = v.as_str().ok_or("must be a string")?.trim();
            domain::check_email(s)?;
            Ok(s.to_string())
        })
    }

    /// An RFC 3339 timestamp.
    pub fn timestamp(&self, name: &str) -> Result<Field<DateTime<Utc>>, ApiError> {
        self.map_value(name, |v| {
            v.as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| "must be an RFC 3339 timestamp".to_string())
        })
    }

    /// A JSON object (no NUL characters anywhere inside, as Postgres refuses them).
    pub fn object(&self, name: &str) -> Result<Field<Value>, ApiError> {
        self.map_value(name, |v| {
            if !v.is_object() {
                return Err("must be a JSON object".into());
            }
            check_json(v)?;
            Ok(v.clone())
        })
    }

    /// Any JSON value (no NUL characters anywhere inside).
    pub fn json(&self, name: &str) -> Result<Field<Value>, ApiError> {
        self.map_value(name, |v| {
            check_json(v)?;
            Ok(v.clone())
        })
    }
}

/// Refuses NUL characters in any string or key of a JSON document.
pub fn check_json(v: &Value) -> Result<(), String> {
    let bad = || Err("must not contain NUL characters".to_string());
    match v {
        Value::String(s) if s.contains('\0') => bad(),
        Value::Array(items) => items.iter().try_for_each(check_json),
        Value::Object(map) => {
            for (k, v) in map {
                if k.contains('\0') {
                    return bad();
                }
                check_json(v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    fn body(json: &str) -> Body {
        Body::parse(&Bytes::from(json.to_string())).unwrap()
    }

    #[test]
    fn only_objects_are_bodies() {
        for bad in ["", "nope", "[]", "42", "\"s\"", "null", "{"] {
            assert!(matches!(
                Body::parse(&Bytes::from(bad)),
                Err(ApiError::Malformed(_))
            ));
        }
    }

    #[test]
    fn absent_null_and_value_are_distinct() {
        let b = body(r#"{"a": null, "b": "x"}"#);
        assert_eq!(b.text("a", 10).unwrap(), Field::Null);
        assert_eq!(b.text("b", 10).unwrap(), Field::Value("x".into()));
        assert_eq!(b.text("c", 10).unwrap(), Field::Absent);
        assert_eq!(b.text("a", 10).unwrap().into_patch(), Some(None));
        assert_eq!(b.text("c", 10).unwrap().into_patch(), None);
        assert!(b.text("a", 10).unwrap().into_required_patch("a").is_err());
    }

    #[test]
    fn wrong_types_name_the_field_without_the_value() {
        let b = body(r#"{"name": 42, "id": "secret-value", "s": "bogus", "m": [1]}"#);
        let msg = b.text("name", 10).unwrap_err().to_string();
        assert!(msg.contains("`name`"), "{msg}");
        let msg = b.uuid("id").unwrap_err().to_string();
        assert!(!msg.contains("secret-value"), "{msg}");
        assert!(b
            .parsed::<crate::domain::LeadStatus>("s")
            .unwrap_err()
            .to_string()
            .contains("one of"));
        assert!(b.object("m").is_err());
    }

    #[test]
    fn nul_bytes_are_refused_everywhere() {
        let b = body(r#"{"t": "a\u0000b", "o": {"k": ["x\u0000"]}, "p": {"a\u0000": 1}}"#);
        assert!(b.text("t", 100).is_err());
        assert!(b.object("o").is_err());
        assert!(b.object("p").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let b = body(r#"{"name": "x", "colour": "red"}"#);
        let msg = b.deny_unknown(&["name"]).unwrap_err().to_string();
        assert!(msg.contains("`colour`"), "{msg}");
        assert!(b.deny_unknown(&["name", "colour"]).is_ok());
    }
}
