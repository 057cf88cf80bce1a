//! Payload checks for the schema types Sava validates.
//!
//! - `bytes`: anything.
//! - `string`: valid UTF-8.
//! - `int64` (Danube calls it `number`): exactly 8 bytes, a big-endian
//!   two's-complement integer.
//! - `json_schema`: a JSON document valid against the subject's JSON Schema.
//! - `avro` and `protobuf` are stored in the registry and stamped on
//!   messages, but their payloads are not checked by the broker.

use std::fmt;

use crate::error::BrokerError;

/// A compiled check for one schema version.
pub enum PayloadCheck {
    Bytes,
    String,
    Int64,
    Json(Box<jsonschema::Validator>),
    Unchecked(String),
}

impl fmt::Debug for PayloadCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

impl PayloadCheck {
    /// Compiles the check for a schema of `schema_type` with `definition`.
    pub fn compile(schema_type: &str, definition: &[u8]) -> Result<PayloadCheck, BrokerError> {
        match normalize_type(schema_type)? {
            "bytes" => Ok(PayloadCheck::Bytes),
            "string" => Ok(PayloadCheck::String),
            "int64" => Ok(PayloadCheck::Int64),
            "json_schema" => compile_json(definition),
            other => Ok(PayloadCheck::Unchecked(other.to_string())),
        }
    }

    /// The canonical name of this check's schema type.
    pub fn type_name(&self) -> &str {
        match self {
            PayloadCheck::Bytes => "bytes",
            PayloadCheck::String => "string",
            PayloadCheck::Int64 => "int64",
            PayloadCheck::Json(_) => "json_schema",
            PayloadCheck::Unchecked(name) => name,
        }
    }

    /// Why `payload` does not fit, or `None` when it does.
    pub fn violation(&self, payload: &[u8]) -> Option<String> {
        match self {
            PayloadCheck::Bytes | PayloadCheck::Unchecked(_) => None,
            PayloadCheck::String => std::str::from_utf8(payload)
                .err()
                .map(|error| format!("not valid UTF-8: {error}")),
            PayloadCheck::Int64 => (payload.len() != 8)
                .then(|| format!("an int64 is 8 bytes, this payload is {}", payload.len())),
            PayloadCheck::Json(validator) => json_violation(validator, payload),
        }
    }
}

/// Maps the type names clients send onto the ones Sava stores.
pub fn normalize_type(schema_type: &str) -> Result<&'static str, BrokerError> {
    match schema_type.to_ascii_lowercase().as_str() {
        "bytes" => Ok("bytes"),
        "string" => Ok("string"),
        "int64" | "number" => Ok("int64"),
        "json" | "json_schema" | "jsonschema" => Ok("json_schema"),
        "avro" => Ok("avro"),
        "protobuf" | "proto" => Ok("protobuf"),
        _ => Err(BrokerError::InvalidSchema(format!(
            "unknown schema type {schema_type:?}; expected bytes, string, int64, json_schema, avro or protobuf"
        ))),
    }
}

fn compile_json(definition: &[u8]) -> Result<PayloadCheck, BrokerError> {
    let document: serde_json::Value = serde_json::from_slice(definition).map_err(|error| {
        BrokerError::InvalidSchema(format!("the JSON schema is not JSON: {error}"))
    })?;
    let validator = jsonschema::validator_for(&document).map_err(|error| {
        BrokerError::InvalidSchema(format!("the JSON schema does not compile: {error}"))
    })?;
    Ok(PayloadCheck::Json(Box::new(validator)))
}

fn json_violation(validator: &jsonschema::Validator, payload: &[u8]) -> Option<String> {
    let document: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(document) => document,
        Err(error) => return Some(format!("not JSON: {error}")),
    };
    let error = validator.iter_errors(&document).next()?;
    let path = error.instance_path().to_string();
    let place = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    Some(format!("at {place}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSON: &str = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name"]}"#;

    #[test]
    fn a_json_payload_that_fits_the_schema_passes() {
        let check = PayloadCheck::compile("json_schema", PERSON.as_bytes()).unwrap();
        assert_eq!(check.violation(br#"{"name":"ada","age":36}"#), None);
    }

    #[test]
    fn a_json_payload_with_a_wrong_type_is_refused_naming_the_field() {
        let check = PayloadCheck::compile("json_schema", PERSON.as_bytes()).unwrap();
        let reason = check.violation(br#"{"name":"ada","age":"old"}"#).unwrap();
        assert!(reason.contains("/age"), "{reason}");
    }

    #[test]
    fn a_json_payload_missing_a_required_field_is_refused() {
        let check = PayloadCheck::compile("json", PERSON.as_bytes()).unwrap();
        let reason = check.violation(br#"{"age":3}"#).unwrap();
        assert!(reason.contains("name"), "{reason}");
    }

    #[test]
    fn a_payload_that_is_not_json_is_refused() {
        let check = PayloadCheck::compile("json_schema", PERSON.as_bytes()).unwrap();
        assert!(check.violation(b"{oops").unwrap().starts_with("not JSON"));
    }

    #[test]
    fn a_schema_that_is_not_json_does_not_compile() {
        let error = PayloadCheck::compile("json_schema", b"{nope").unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
    }

    #[test]
    fn strings_must_be_utf8() {
        let check = PayloadCheck::compile("string", b"").unwrap();
        assert_eq!(check.violation("héllo".as_bytes()), None);
        assert!(check.violation(&[0xff, 0xfe]).is_some());
    }

    #[test]
    fn int64_payloads_are_eight_bytes() {
        let check = PayloadCheck::compile("number", b"").unwrap();
        assert_eq!(check.violation(&42i64.to_be_bytes()), None);
        assert!(check.violation(b"42").is_some());
    }

    #[test]
    fn unknown_schema_types_are_refused() {
        assert!(PayloadCheck::compile("xml", b"").is_err());
    }
}
