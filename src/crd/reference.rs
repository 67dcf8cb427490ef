//! The CRD field reference (`docs/reference.md`), generated from the same schemas as
//! `crds/`, so that what the docs say a field is and what the API server accepts
//! cannot drift apart.

use std::fmt::Write as _;

use serde_json::Value;

use super::all_crds;

/// Markdown: one section per CRD, one table row per field, in schema order of
/// nesting (a field's children follow it).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# CRD field reference\n\n\
         Generated from the CRD schemas by `serin reference` (`make crds` writes this file;\n\
         a test fails when it is stale). Fields are listed by their path: `[]` is an item\n\
         of a list, `{key}` a value of a map. The [README](../README.md) and the other\n\
         [docs](README.md) explain how the fields work together.\n",
    );
    for crd in all_crds() {
        let kind = crd.spec.names.kind.clone();
        for version in &crd.spec.versions {
            let Some(schema) = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
            else {
                continue;
            };
            let _ = write!(
                out,
                "\n## {kind} (`{}/{}`)\n\n",
                crd.spec.group, version.name
            );
            out.push_str("| Field | Type | Description |\n|---|---|---|\n");
            let props = schema.get("properties");
            for part in ["spec", "status"] {
                if let Some(s) = props.and_then(|p| p.get(part)) {
                    walk(&mut out, part, s, is_required(&schema, part));
                }
            }
        }
    }
    out
}

fn is_required(parent: &Value, field: &str) -> bool {
    parent
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|f| f.as_str() == Some(field)))
}

fn walk(out: &mut String, path: &str, schema: &Value, required: bool) {
    row(out, path, schema, required);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(
                out,
                &format!("{path}.{name}"),
                child,
                is_required(schema, name),
            );
        }
    }
    if let Some(items) = schema.get("items")
        && let Some(props) = items.get("properties").and_then(Value::as_object)
    {
        for (name, child) in props {
            walk(
                out,
                &format!("{path}[].{name}"),
                child,
                is_required(items, name),
            );
        }
    }
    if let Some(values) = schema.get("additionalProperties")
        && let Some(props) = values.get("properties").and_then(Value::as_object)
    {
        for (name, child) in props {
            walk(
                out,
                &format!("{path}{{key}}.{name}"),
                child,
                is_required(values, name),
            );
        }
    }
}

fn row(out: &mut String, path: &str, schema: &Value, required: bool) {
    let mut ty = type_name(schema);
    if required {
        ty.push_str(", required");
    }
    let mut desc = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // kube's generated root descriptions name Rust types, not anything a user writes.
    if desc.starts_with("Auto-generated derived type") {
        desc.clear();
    }
    let mut extra = Vec::new();
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| {
                if v.is_empty() {
                    "`\"\"`".to_string()
                } else {
                    format!("`{v}`")
                }
            })
            .collect();
        extra.push(format!("One of {}.", names.join(", ")));
    }
    let num = |v: &Value| match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        _ => v.to_string(),
    };
    match (
        schema.get("minimum").map(num),
        schema.get("maximum").map(num),
    ) {
        (Some(min), Some(max)) => extra.push(format!("From {min} to {max}.")),
        (Some(min), None) => extra.push(format!("At least {min}.")),
        (None, Some(max)) => extra.push(format!("At most {max}.")),
        (None, None) => {}
    }
    for e in extra {
        if !desc.is_empty() {
            desc.push(' ');
        }
        desc.push_str(&e);
    }
    let _ = writeln!(out, "| `{path}` | {ty} | {} |", desc.replace('|', "\\|"));
}

fn type_name(schema: &Value) -> String {
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return "integer or string".to_string();
    }
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        && schema.get("properties").is_none()
    {
        return "object (any fields)".to_string();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => match schema.get("items") {
            Some(items) => format!("list of {}", type_name(items)),
            None => "list".to_string(),
        },
        Some("object") => match schema.get("additionalProperties") {
            Some(values) if values.is_object() => format!("map of {}", type_name(values)),
            _ => "object".to_string(),
        },
        Some(t) => t.to_string(),
        None => "any".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canary_field_is_listed_with_its_type() {
        let md = reference_markdown();
        for line in [
            "| `spec.targetRef.name` | string, required |",
            "| `spec.analysis.stepWeights` | list of integer |",
            "| `spec.analysis.metrics[].thresholdRange.max` | number |",
            "| `spec.service.targetPort` | integer or string |",
            "| `spec.analysis.webhooks[].metadata` | object (any fields) |",
            "| `spec.provider.headers` | map of list of string |",
        ] {
            assert!(md.contains(line), "missing {line:?}");
        }
        assert!(md.contains("## AlertProvider (`serin.dev/v1beta1`)"));
        assert!(!md.contains("Auto-generated"));
    }

    /// `docs/reference.md` is generated; a stale copy documents fields that are not
    /// the ones the API server accepts.
    #[test]
    fn generated_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
        let on_disk = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run `make crds`"));
        assert!(
            on_disk == reference_markdown(),
            "docs/reference.md is stale: run `make crds`"
        );
    }
}
