//! Reading one record file. Checks run from the outside in (file, JSON,
//! object, schema, fields) so the error says what is wrong, not just "invalid".

use crate::ReportError;
use frugal_eval::record::{Record, SCHEMA};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A record with the file it came from (notes and provenance cite it).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub record: Record,
}

/// Tasks of each kind that the report knows how to show.
pub const EVAL_TASKS: &[&str] = &["perplexity", "kld", "lambada", "hellaswag", "mc"];

/// Read and check one result file.
pub fn read_record(path: &Path) -> Result<Loaded, ReportError> {
    // A record is a few KiB: refuse to read a model file passed by mistake.
    const MAX_RECORD_BYTES: u64 = 16 << 20;
    if let Ok(m) = std::fs::metadata(path) {
        if m.len() > MAX_RECORD_BYTES {
            return Err(ReportError::NotRecord {
                path: path.to_path_buf(),
                reason: format!(
                    "{} bytes: far larger than a result record (is it a model or data file?)",
                    m.len()
                ),
            });
        }
    }
    let bytes = std::fs::read(path).map_err(|error| ReportError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_record(path, &bytes)
}

/// Check the bytes of a result file; `path` only names it in errors.
pub fn parse_record(path: &Path, bytes: &[u8]) -> Result<Loaded, ReportError> {
    let not = |reason: String| ReportError::NotRecord {
        path: path.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|error| ReportError::Json {
        path: path.to_path_buf(),
        error,
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| not(format!("the JSON is {}, not an object", json_kind(&value))))?;
    let schema = obj
        .get("schema")
        .ok_or_else(|| not("no `schema` field".into()))?;
    let schema = schema
        .as_u64()
        .ok_or_else(|| not(format!("`schema` is {schema}, not a whole number")))?;
    if schema != u64::from(SCHEMA) {
        return Err(ReportError::Schema {
            path: path.to_path_buf(),
            found: schema,
            supported: SCHEMA,
        });
    }
    let record: Record = serde_json::from_value(value).map_err(|e| not(e.to_string()))?;
    match record.kind.as_str() {
        "eval" | "bench" => {}
        k => return Err(not(format!("kind {k:?} is neither \"eval\" nor \"bench\""))),
    }
    if record.kind == "bench" && record.task != "bench" {
        return Err(not(format!(
            "a bench record with task {:?} (expected \"bench\")",
            record.task
        )));
    }
    if !record.metrics.is_object() {
        return Err(not("`metrics` is not an object".into()));
    }
    if record.model.sha256.trim().is_empty() {
        return Err(not("the model has no sha256".into()));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        record,
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
