//! Schema overrides for fields passed through as arbitrary JSON.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object whose fields the API server keeps as written.
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true
    })
}

/// `status.phase`: a nullable string enum. The derived schema lists `null` among the
/// enum values, which kubectl's validation on 1.20 rejects.
pub fn phase(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "enum": [
            "Initializing", "Initialized", "Waiting", "Progressing", "WaitingPromotion",
            "Promoting", "Finalising", "Succeeded", "Failed", "Terminating", "Terminated"
        ]
    })
}
