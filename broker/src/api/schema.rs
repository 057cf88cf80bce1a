//! The `danube_schema.SchemaRegistry` service over the catalog's schema
//! records.
//!
//! Compatibility checks compare JSON Schemas structurally: `backward` means
//! data written with the old version can be read with the new one (the new
//! version requires no property the old one lacked, and keeps the type of
//! every property both declare); `forward` is the reverse; `full` is both;
//! `none` accepts anything of the same type. Other schema types are
//! compatible when the type is the same.

use std::sync::Arc;

use sava_metadata::SchemaRecord;
use sava_proto::danube_schema as pb;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::schema::normalize_type;

#[derive(Clone, Debug)]
pub struct SchemaRegistryApi {
    broker: Arc<Broker>,
}

impl SchemaRegistryApi {
    pub fn new(broker: Arc<Broker>) -> SchemaRegistryApi {
        SchemaRegistryApi { broker }
    }
}

#[tonic::async_trait]
impl pb::schema_registry_server::SchemaRegistry for SchemaRegistryApi {
    async fn register_schema(
        &self,
        request: Request<pb::RegisterSchemaRequest>,
    ) -> Result<Response<pb::RegisterSchemaResponse>, Status> {
        let r = request.into_inner();
        if let Some(existing) = self
            .broker
            .catalog()
            .latest_schema(&r.subject)
            .await
            .map_err(BrokerError::from)?
        {
            let subject = self
                .broker
                .catalog()
                .subject(&r.subject)
                .await
                .map_err(BrokerError::from)?;
            let mode = subject.map_or_else(|| "backward".to_string(), |s| s.compatibility_mode);
            let errors =
                compatibility_errors(&existing, &r.schema_type, &r.schema_definition, &mode)?;
            if !errors.is_empty() {
                return Err(BrokerError::InvalidSchema(format!(
                    "the new schema for {} breaks {mode} compatibility: {}",
                    r.subject,
                    errors.join("; ")
                ))
                .into());
            }
        }
        let (record, is_new) = self
            .broker
            .register_schema(
                &r.subject,
                &r.schema_type,
                &r.schema_definition,
                &r.description,
                &r.created_by,
                &r.tags,
            )
            .await?;
        Ok(Response::new(pb::RegisterSchemaResponse {
            schema_id: record.schema_id,
            version: record.version,
            is_new_version: is_new,
            fingerprint: record.fingerprint,
        }))
    }

    async fn get_schema(
        &self,
        request: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        let r = request.into_inner();
        let record = self
            .broker
            .catalog()
            .schema(r.schema_id, r.version)
            .await
            .map_err(BrokerError::from)?
            .ok_or_else(|| match r.version {
                Some(v) => {
                    BrokerError::SchemaNotFound(format!("with id {} version {v}", r.schema_id))
                }
                None => BrokerError::SchemaNotFound(format!("with id {}", r.schema_id)),
            })?;
        Ok(Response::new(self.describe(record).await?))
    }

    async fn get_latest_schema(
        &self,
        request: Request<pb::GetLatestSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        let subject = request.into_inner().subject;
        let record = self
            .broker
            .catalog()
            .latest_schema(&subject)
            .await
            .map_err(BrokerError::from)?
            .ok_or(BrokerError::SchemaNotFound(subject))?;
        Ok(Response::new(self.describe(record).await?))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let subject = request.into_inner().subject;
        let records = self
            .broker
            .catalog()
            .schema_versions(&subject)
            .await
            .map_err(BrokerError::from)?;
        if records.is_empty() {
            return Err(BrokerError::SchemaNotFound(subject).into());
        }
        let versions = records
            .into_iter()
            .map(|r| pb::SchemaVersionInfo {
                version: r.version,
                created_at: r.created_at_ms,
                created_by: r.created_by,
                description: r.description,
                fingerprint: r.fingerprint,
                schema_id: r.schema_id,
            })
            .collect();
        Ok(Response::new(pb::ListVersionsResponse { versions }))
    }

    async fn check_compatibility(
        &self,
        request: Request<pb::CheckCompatibilityRequest>,
    ) -> Result<Response<pb::CheckCompatibilityResponse>, Status> {
        let r = request.into_inner();
        let catalog = self.broker.catalog();
        let Some(latest) = catalog
            .latest_schema(&r.subject)
            .await
            .map_err(BrokerError::from)?
        else {
            return Ok(Response::new(pb::CheckCompatibilityResponse {
                is_compatible: true,
                errors: vec![],
            }));
        };
        let mode = match r.compatibility_mode {
            Some(mode) => mode,
            None => catalog
                .subject(&r.subject)
                .await
                .map_err(BrokerError::from)?
                .map_or_else(|| "backward".to_string(), |s| s.compatibility_mode),
        };
        let errors =
            compatibility_errors(&latest, &r.schema_type, &r.new_schema_definition, &mode)?;
        Ok(Response::new(pb::CheckCompatibilityResponse {
            is_compatible: errors.is_empty(),
            errors,
        }))
    }

    async fn delete_schema_version(
        &self,
        request: Request<pb::DeleteSchemaVersionRequest>,
    ) -> Result<Response<pb::DeleteSchemaVersionResponse>, Status> {
        let r = request.into_inner();
        self.broker
            .catalog()
            .delete_schema_version(&r.subject, r.version)
            .await
            .map_err(BrokerError::from)?;
        Ok(Response::new(pb::DeleteSchemaVersionResponse {
            success: true,
            message: format!("deleted version {} of {}", r.version, r.subject),
        }))
    }

    async fn set_compatibility_mode(
        &self,
        request: Request<pb::SetCompatibilityModeRequest>,
    ) -> Result<Response<pb::SetCompatibilityModeResponse>, Status> {
        let r = request.into_inner();
        let mode = r.compatibility_mode.to_ascii_lowercase();
        let subject = match self
            .broker
            .catalog()
            .set_compatibility_mode(&r.subject, &mode)
            .await
        {
            Ok(subject) => subject,
            Err(sava_metadata::MetadataError::NotFound { .. }) => {
                return Err(BrokerError::SchemaNotFound(r.subject).into());
            }
            Err(error) => return Err(BrokerError::from(error).into()),
        };
        Ok(Response::new(pb::SetCompatibilityModeResponse {
            success: true,
            message: format!("{} is now {}", subject.subject, subject.compatibility_mode),
        }))
    }

    async fn configure_topic_schema(
        &self,
        _request: Request<pb::ConfigureTopicSchemaRequest>,
    ) -> Result<Response<pb::ConfigureTopicSchemaResponse>, Status> {
        Err(Status::unimplemented(
            "configuring a topic's schema after creation is not supported; a topic takes its schema from its first producer",
        ))
    }

    async fn update_topic_validation_policy(
        &self,
        _request: Request<pb::UpdateTopicValidationPolicyRequest>,
    ) -> Result<Response<pb::UpdateTopicValidationPolicyResponse>, Status> {
        Err(Status::unimplemented(
            "sava always enforces a topic's schema; the validation policy cannot be changed",
        ))
    }

    async fn get_topic_schema_config(
        &self,
        request: Request<pb::GetTopicSchemaConfigRequest>,
    ) -> Result<Response<pb::GetTopicSchemaConfigResponse>, Status> {
        let name = request.into_inner().topic_name;
        let record = self
            .broker
            .catalog()
            .topic(&name)
            .await
            .map_err(BrokerError::from)?
            .ok_or(BrokerError::TopicNotFound(name))?;
        let response = match record.schema {
            Some(schema) => pb::GetTopicSchemaConfigResponse {
                schema_subject: schema.subject,
                validation_policy: "enforce".into(),
                enable_payload_validation: true,
                schema_id: schema.schema_id,
            },
            None => pb::GetTopicSchemaConfigResponse {
                validation_policy: "none".into(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn list_subjects(
        &self,
        _request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let subjects = self
            .broker
            .catalog()
            .list_subjects()
            .await
            .map_err(BrokerError::from)?;
        let subjects = subjects
            .into_iter()
            .map(|s| pb::SubjectSummary {
                subject: s.subject,
                schema_type: s.schema_type,
                latest_version: s.latest_version,
                compatibility_mode: s.compatibility_mode.to_ascii_uppercase(),
                schema_id: s.schema_id,
                tags: vec![],
            })
            .collect();
        Ok(Response::new(pb::ListSubjectsResponse { subjects }))
    }
}

impl SchemaRegistryApi {
    async fn describe(&self, record: SchemaRecord) -> Result<pb::GetSchemaResponse, BrokerError> {
        let mode = self
            .broker
            .catalog()
            .subject(&record.subject)
            .await?
            .map_or_else(|| "backward".to_string(), |s| s.compatibility_mode);
        Ok(pb::GetSchemaResponse {
            schema_id: record.schema_id,
            version: record.version,
            subject: record.subject,
            schema_type: record.schema_type,
            schema_definition: record.definition.into(),
            description: record.description,
            created_at: record.created_at_ms,
            created_by: record.created_by,
            tags: record.tags,
            fingerprint: record.fingerprint,
            compatibility_mode: mode,
        })
    }
}

/// Why `definition` may not follow `existing` under `mode`.
fn compatibility_errors(
    existing: &SchemaRecord,
    schema_type: &str,
    definition: &[u8],
    mode: &str,
) -> Result<Vec<String>, BrokerError> {
    let new_type = normalize_type(schema_type)?;
    if new_type != existing.schema_type {
        return Ok(vec![format!(
            "the schema type changes from {} to {new_type}",
            existing.schema_type
        )]);
    }
    if new_type != "json_schema" || mode == "none" {
        return Ok(vec![]);
    }
    let parse = |bytes: &[u8]| -> Result<Value, BrokerError> {
        serde_json::from_slice(bytes)
            .map_err(|e| BrokerError::InvalidSchema(format!("the JSON schema is not JSON: {e}")))
    };
    let (old, new) = (parse(&existing.definition)?, parse(definition)?);
    let mut errors = Vec::new();
    if matches!(mode, "backward" | "full") {
        errors.extend(reader_errors(&old, &new));
    }
    if matches!(mode, "forward" | "full") {
        errors.extend(reader_errors(&new, &old));
    }
    Ok(errors)
}

/// Why data written under `writer` may not be read under `reader`.
fn reader_errors(writer: &Value, reader: &Value) -> Vec<String> {
    let properties = |schema: &Value| schema.get("properties").and_then(Value::as_object).cloned();
    let required = |schema: &Value| -> Vec<String> {
        schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let writer_props = properties(writer).unwrap_or_default();
    let reader_props = properties(reader).unwrap_or_default();

    let mut errors = Vec::new();
    for field in required(reader) {
        if !writer_props.contains_key(&field) {
            errors.push(format!(
                "property {field:?} is required but older data lacks it"
            ));
        }
    }
    for (field, reader_schema) in &reader_props {
        let Some(writer_schema) = writer_props.get(field) else {
            continue;
        };
        if reader_schema.get("type") != writer_schema.get("type") {
            errors.push(format!("property {field:?} changes type"));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(definition: &str) -> SchemaRecord {
        SchemaRecord {
            subject: "s".into(),
            schema_id: 1,
            version: 1,
            schema_type: "json_schema".into(),
            definition: definition.as_bytes().to_vec(),
            fingerprint: String::new(),
            description: String::new(),
            created_by: String::new(),
            tags: vec![],
            created_at_ms: 0,
        }
    }

    const V1: &str = r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#;

    #[test]
    fn adding_an_optional_property_is_backward_compatible() {
        let v2 = r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}},"required":["a"]}"#;
        assert!(
            compatibility_errors(&record(V1), "json_schema", v2.as_bytes(), "backward")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn adding_a_required_property_is_not_backward_compatible() {
        let v2 = r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}},"required":["a","b"]}"#;
        let errors =
            compatibility_errors(&record(V1), "json_schema", v2.as_bytes(), "backward").unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn changing_a_property_type_is_incompatible_in_every_direction_but_none() {
        let v2 = r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#;
        for mode in ["backward", "forward", "full"] {
            assert!(
                !compatibility_errors(&record(V1), "json_schema", v2.as_bytes(), mode)
                    .unwrap()
                    .is_empty()
            );
        }
        assert!(
            compatibility_errors(&record(V1), "json_schema", v2.as_bytes(), "none")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn changing_the_schema_type_is_incompatible() {
        let errors = compatibility_errors(&record(V1), "string", b"", "none").unwrap();
        assert!(!errors.is_empty());
    }
}
