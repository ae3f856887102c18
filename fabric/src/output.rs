//! How commands print jobs: text for people, one JSON object for programs.

use fabric_proto::{FabricError, JobRecord};
use serde_json::{json, Value};

/// The JSON shape of a job: at least `job`, `state`, and `result` or `error`.
pub fn job_json(record: &JobRecord) -> Value {
    let mut value = json!({
        "job": record.id,
        "tenant": record.tenant,
        "state": record.state.as_str(),
        "function": record.function,
        "component": record.component,
        "submitted_ms": record.submitted_ms,
        "started_ms": record.started_ms,
        "finished_ms": record.finished_ms,
    });
    if let Some(result) = &record.result {
        // A result that is not valid JSON is kept as a string.
        value["result"] = serde_json::from_str(result).unwrap_or_else(|_| Value::String(result.clone()));
    }
    if let Some(error) = &record.error {
        value["error"] = error_json(error);
    }
    value
}

/// The JSON shape of an error.
pub fn error_json(error: &FabricError) -> Value {
    json!({ "kind": error.kind.as_str(), "message": error.message })
}

/// A job's result for a person: a JSON string unquoted, anything else as JSON.
pub fn result_text(record: &JobRecord) -> Option<String> {
    let result = record.result.as_ref()?;
    Some(match serde_json::from_str::<Value>(result) {
        Ok(Value::String(s)) => s,
        _ => result.clone(),
    })
}

/// One line per job for `fabric jobs`.
pub fn job_line(record: &JobRecord) -> String {
    let took = match (record.started_ms, record.finished_ms) {
        (Some(s), Some(f)) => format!("{:.3}s", f.saturating_sub(s) as f64 / 1000.0),
        _ => "-".to_string(),
    };
    let component: String = record.component.chars().take(12).collect();
    format!("{:<18} {:<10} {:<16} {:<12} {:>9}", record.id, record.state.as_str(), record.function, component, took)
}
