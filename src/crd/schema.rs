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
