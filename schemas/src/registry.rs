//! A client of a Confluent-compatible schema registry (the REST API of Confluent Schema
//! Registry, Karapace, Redpanda, Apicurio's compatibility layer): schemas by id for records
//! that outside producers wrote, and registration for `tidings migrate`.
//!
//! Schemas are immutable once registered, so each id is fetched once and kept. An id the
//! registry does not know is remembered for a minute, so a flood of records with a bad id
//! does not become a flood of registry requests.

use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidings_core::{Error, ErrorKind, Result};

/// Largest schema text accepted from the registry.
const MAX_SCHEMA_BYTES: usize = 1 << 20;
const MISSING_TTL: Duration = Duration::from_secs(60);

enum Known {
    Schema(Arc<Schema>),
    Missing(Instant),
}

pub struct Registry {
    base: String,
    http: reqwest::Client,
    known: Mutex<HashMap<u32, Known>>,
}

fn unavailable(m: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "registry_unavailable",
        format!("schema registry: {m}"),
    )
}

impl Registry {
    pub fn new(url: &str) -> Result<Registry> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::internal(format!("registry client: {e}")))?;
        Ok(Registry {
            base: url.trim_end_matches('/').to_string(),
            http,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The writer schema registered under `id`: `unknown_schema_id` if the registry has none
    /// (permanent), `registry_unavailable` if it cannot be asked (retriable).
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>> {
        match self.known.lock().expect("registry cache").get(&id) {
            Some(Known::Schema(s)) => return Ok(s.clone()),
            Some(Known::Missing(at)) if at.elapsed() < MISSING_TTL => {
                return Err(unknown(id));
            }
            _ => {}
        }
        let res = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .header("accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(unavailable)?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            self.known
                .lock()
                .expect("registry cache")
                .insert(id, Known::Missing(Instant::now()));
            return Err(unknown(id));
        }
        if !res.status().is_success() {
            return Err(unavailable(format!(
                "GET /schemas/ids/{id}: {}",
                res.status()
            )));
        }
        let body = res.bytes().await.map_err(unavailable)?;
        if body.len() > MAX_SCHEMA_BYTES {
            return Err(unavailable(format!("schema {id} is over 1 MiB")));
        }
        #[derive(serde::Deserialize)]
        struct ById {
            schema: String,
            #[serde(rename = "schemaType", default)]
            schema_type: Option<String>,
        }
        let found: ById = serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("GET /schemas/ids/{id}: {e}")))?;
        if found.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return Err(Error::invalid(
                "unknown_schema_id",
                format!("schema id {id} is not an Avro schema"),
            ));
        }
        let schema = Schema::parse_str(&found.schema).map_err(|e| {
            Error::invalid(
                "unknown_schema_id",
                format!("schema id {id} does not parse as Avro: {e}"),
            )
        })?;
        let schema = Arc::new(schema);
        self.known
            .lock()
            .expect("registry cache")
            .insert(id, Known::Schema(schema.clone()));
        Ok(schema)
    }

    /// Register `schema` (Avro JSON) under `subject`; returns its id. Registering a schema
    /// that is already there returns the same id (safe to run twice).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let res = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.base))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .map_err(unavailable)?;
        let status = res.status();
        let body: serde_json::Value = res.json().await.map_err(unavailable)?;
        if !status.is_success() {
            return Err(Error::invalid(
                "schema_refused",
                format!("the registry refused the schema for {subject}: {status} {body}"),
            ));
        }
        body["id"]
            .as_u64()
            .map(|id| id as u32)
            .ok_or_else(|| unavailable(format!("no id in {body}")))
    }
}

fn unknown(id: u32) -> Error {
    Error::invalid(
        "unknown_schema_id",
        format!("the schema registry has no schema {id}"),
    )
}
