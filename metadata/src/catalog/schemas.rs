//! The schema registry part of the catalog: subjects, their versions and ids.
//!
//! A subject gets one schema id, from `/sava/counters/schema_id`, when its
//! first version is registered; versions count from 1 and are never reused,
//! even after a delete (`/sava/counters/schema_version/<subject>`). Deleting
//! the last version deletes the subject and its id.

use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;

use super::{
    Catalog, SchemaRecord, SubjectRecord, gone_or_not_found, not_found, now_ms, read, read_all,
    write,
};
use crate::error::{MetadataError, Result};
use crate::store::Transaction;

const SCHEMA_TYPES: [&str; 7] = [
    "bytes",
    "string",
    "number",
    "int64",
    "json_schema",
    "avro",
    "protobuf",
];
const COMPATIBILITY_MODES: [&str; 4] = ["none", "backward", "forward", "full"];
const DEFAULT_COMPATIBILITY_MODE: &str = "backward";

/// The keys one subject's records live under.
#[derive(Clone)]
struct SubjectKeys {
    subject: Vec<u8>,
    versions: (Vec<u8>, Vec<u8>),
    version_counter: Vec<u8>,
}

impl Catalog {
    /// Registers a schema version in `subject`, creating the subject (and its
    /// schema id) at the first registration. Returns the version and whether
    /// it is new: a type and definition identical to an existing version
    /// return that version and `false`.
    ///
    /// # Errors
    ///
    /// `Invalid` for an unknown schema type, an empty subject, or a type that
    /// differs from the subject's; store errors.
    pub async fn register_schema(
        &self,
        subject: &str,
        schema_type: &str,
        definition: &[u8],
        description: &str,
        created_by: &str,
        tags: &[String],
    ) -> Result<(SchemaRecord, bool)> {
        validate_registration(subject, schema_type)?;
        let keys = self.subject_keys(subject);
        let schema_counter = self
            .key()
            .push_str("counters")
            .push_str("schema_id")
            .build();
        let draft = SchemaRecord {
            subject: subject.to_owned(),
            schema_id: 0,
            version: 0,
            schema_type: schema_type.to_owned(),
            definition: definition.to_vec(),
            fingerprint: fingerprint(schema_type, definition),
            description: description.to_owned(),
            created_by: created_by.to_owned(),
            tags: tags.to_vec(),
            created_at_ms: now_ms(),
        };

        // The version an earlier attempt wrote, so that a retry after a commit
        // that did apply still reports it as new.
        let written: Arc<Mutex<Option<SchemaRecord>>> = Arc::default();
        let catalog = self.clone();
        self.transact(|tx| {
            let (keys, schema_counter, draft) =
                (keys.clone(), schema_counter.clone(), draft.clone());
            let (written, catalog) = (Arc::clone(&written), catalog.clone());
            async move {
                let existing: Option<SubjectRecord> = read(tx, &keys.subject).await?;
                if let Some(existing) = &existing {
                    if existing.schema_type != draft.schema_type {
                        return Err(MetadataError::Invalid {
                            reason: format!(
                                "schema subject `{}` holds `{}` schemas, not `{}`",
                                draft.subject, existing.schema_type, draft.schema_type
                            ),
                        });
                    }
                    let versions: Vec<SchemaRecord> = read_all(tx, &keys.versions).await?;
                    let same = versions.into_iter().find(|version| {
                        version.fingerprint == draft.fingerprint
                            && version.definition == draft.definition
                    });
                    if let Some(same) = same {
                        let ours = lock(&written).as_ref() == Some(&same);
                        return Ok((same, ours));
                    }
                }

                let schema_id = match &existing {
                    Some(existing) => existing.schema_id,
                    None => {
                        let id = next_counter(tx, &schema_counter).await?;
                        write(tx, &catalog.schema_id_key(id), &draft.subject)?;
                        id
                    }
                };
                let version = u32::try_from(next_counter(tx, &keys.version_counter).await?)
                    .map_err(|_| MetadataError::Invalid {
                        reason: format!(
                            "schema subject `{}` has run out of versions",
                            draft.subject
                        ),
                    })?;

                let record = SchemaRecord {
                    schema_id,
                    version,
                    ..draft
                };
                let subject = SubjectRecord {
                    subject: record.subject.clone(),
                    schema_id,
                    latest_version: version,
                    schema_type: record.schema_type.clone(),
                    compatibility_mode: existing.map_or_else(
                        || DEFAULT_COMPATIBILITY_MODE.to_owned(),
                        |existing| existing.compatibility_mode,
                    ),
                };
                write(tx, &catalog.version_key(&record.subject, version), &record)?;
                write(tx, &keys.subject, &subject)?;
                *lock(&written) = Some(record.clone());
                Ok((record, true))
            }
            .boxed()
        })
        .await
    }

    /// Version `version` of schema id `schema_id`, or its latest version.
    pub async fn schema(
        &self,
        schema_id: u64,
        version: Option<u32>,
    ) -> Result<Option<SchemaRecord>> {
        let id_key = self.schema_id_key(schema_id);
        let catalog = self.clone();
        self.transact(|tx| {
            let (id_key, catalog) = (id_key.clone(), catalog.clone());
            async move {
                let Some(subject) = read::<String>(tx, &id_key).await? else {
                    return Ok(None);
                };
                match version {
                    Some(version) => read(tx, &catalog.version_key(&subject, version)).await,
                    None => catalog.read_latest(tx, &subject).await,
                }
            }
            .boxed()
        })
        .await
    }

    /// The latest version of `subject`.
    pub async fn latest_schema(&self, subject: &str) -> Result<Option<SchemaRecord>> {
        let (subject, catalog) = (subject.to_owned(), self.clone());
        self.transact(|tx| {
            let (subject, catalog) = (subject.clone(), catalog.clone());
            async move { catalog.read_latest(tx, &subject).await }.boxed()
        })
        .await
    }

    /// Every version of `subject`, oldest first.
    pub async fn schema_versions(&self, subject: &str) -> Result<Vec<SchemaRecord>> {
        self.get_all(self.subject_keys(subject).versions).await
    }

    /// Schema subject `subject`, if it exists.
    pub async fn subject(&self, subject: &str) -> Result<Option<SubjectRecord>> {
        self.get(self.subject_keys(subject).subject).await
    }

    /// Every subject, sorted by name.
    pub async fn list_subjects(&self) -> Result<Vec<SubjectRecord>> {
        self.get_all(self.key().push_str("schemas").push_str("subjects").range())
            .await
    }

    /// Sets the compatibility mode of `subject`.
    ///
    /// # Errors
    ///
    /// `Invalid` for a mode other than `none`, `backward`, `forward` and
    /// `full`; `NotFound` for an unknown subject; store errors.
    pub async fn set_compatibility_mode(&self, subject: &str, mode: &str) -> Result<SubjectRecord> {
        if !COMPATIBILITY_MODES.contains(&mode) {
            return Err(MetadataError::Invalid {
                reason: format!(
                    "compatibility mode `{mode}` is not one of {}",
                    COMPATIBILITY_MODES.join(", ")
                ),
            });
        }
        let key = self.subject_keys(subject).subject;
        let what = format!("schema subject `{subject}`");
        let mode = mode.to_owned();

        self.transact(|tx| {
            let (key, what, mode) = (key.clone(), what.clone(), mode.clone());
            async move {
                let mut record: SubjectRecord =
                    read(tx, &key).await?.ok_or_else(|| not_found(what))?;
                record.compatibility_mode = mode;
                write(tx, &key, &record)?;
                Ok(record)
            }
            .boxed()
        })
        .await
    }

    /// Deletes one version of `subject`. The subject's latest version falls
    /// back to the newest one left; deleting the last one deletes the subject
    /// and its schema id.
    ///
    /// # Errors
    ///
    /// `NotFound` when the version does not exist; store errors.
    pub async fn delete_schema_version(&self, subject: &str, version: u32) -> Result<()> {
        let keys = self.subject_keys(subject);
        let version_key = self.version_key(subject, version);
        let what = format!("version {version} of schema subject `{subject}`");
        let catalog = self.clone();
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));

        self.transact(|tx| {
            let (keys, version_key, what) = (keys.clone(), version_key.clone(), what.clone());
            let (catalog, seen) = (catalog.clone(), Arc::clone(&seen));
            async move {
                if tx.get(&version_key).await?.is_none() {
                    return gone_or_not_found(&seen, what);
                }
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
                tx.clear(&version_key);

                let Some(mut record) = read::<SubjectRecord>(tx, &keys.subject).await? else {
                    return Ok(());
                };
                let left: Vec<SchemaRecord> = read_all(tx, &keys.versions).await?;
                match left.last() {
                    Some(newest) => {
                        record.latest_version = newest.version;
                        write(tx, &keys.subject, &record)
                    }
                    None => {
                        tx.clear(&keys.subject);
                        tx.clear(&keys.version_counter);
                        tx.clear(&catalog.schema_id_key(record.schema_id));
                        Ok(())
                    }
                }
            }
            .boxed()
        })
        .await
    }

    async fn read_latest(
        &self,
        tx: &mut dyn Transaction,
        subject: &str,
    ) -> Result<Option<SchemaRecord>> {
        let key = self.subject_keys(subject).subject;
        let Some(record) = read::<SubjectRecord>(tx, &key).await? else {
            return Ok(None);
        };
        read(tx, &self.version_key(subject, record.latest_version)).await
    }

    fn subject_keys(&self, subject: &str) -> SubjectKeys {
        let schemas = self.key().push_str("schemas");
        SubjectKeys {
            subject: schemas
                .clone()
                .push_str("subjects")
                .push_str(subject)
                .build(),
            versions: schemas.push_str("versions").push_str(subject).range(),
            version_counter: self
                .key()
                .push_str("counters")
                .push_str("schema_version")
                .push_str(subject)
                .build(),
        }
    }

    fn version_key(&self, subject: &str, version: u32) -> Vec<u8> {
        let versions = self.key().push_str("schemas").push_str("versions");
        versions
            .push_str(subject)
            .push_u64(u64::from(version))
            .build()
    }

    fn schema_id_key(&self, schema_id: u64) -> Vec<u8> {
        let ids = self.key().push_str("schemas").push_str("ids");
        ids.push_u64(schema_id).build()
    }
}

fn validate_registration(subject: &str, schema_type: &str) -> Result<()> {
    if subject.is_empty() {
        return Err(MetadataError::Invalid {
            reason: "schema subject must not be empty".to_owned(),
        });
    }
    if !SCHEMA_TYPES.contains(&schema_type) {
        return Err(MetadataError::Invalid {
            reason: format!(
                "schema type `{schema_type}` is not one of {}",
                SCHEMA_TYPES.join(", ")
            ),
        });
    }
    Ok(())
}

/// Reads the little-endian counter at `key` (missing is 0), stores it plus
/// one and returns the new value.
async fn next_counter(tx: &mut dyn Transaction, key: &[u8]) -> Result<u64> {
    let current = match tx.get(key).await? {
        Some(value) => {
            let digits =
                <[u8; 8]>::try_from(value.as_ref()).map_err(|_| MetadataError::Corrupt {
                    key: crate::keys::display_key(key),
                    reason: format!("a counter must be 8 bytes, found {}", value.len()),
                })?;
            u64::try_from(i64::from_le_bytes(digits)).unwrap_or(0)
        }
        None => 0,
    };
    let next = current + 1;
    tx.set(key, &(next as i64).to_le_bytes());
    Ok(next)
}

/// The 64-bit FNV-1a hash of the type, a zero byte and the definition, in hex.
fn fingerprint(schema_type: &str, definition: &[u8]) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    let bytes = schema_type.as_bytes().iter().chain(&[0]).chain(definition);
    let hash = bytes.fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:016x}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
