//! Minimal JSON patches: compare the desired value of each managed path with what the
//! API server holds and emit an operation only where they differ. JSON patch (not
//! merge patch) so that a removed map key or a shortened list really goes away, and
//! not server-side apply, which is unreliable on the 1.20 servers Serin supports.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::WorkloadError;

/// Escapes one JSON pointer segment (RFC 6901): label keys contain `/`.
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Operations making each `path` of `existing` equal to the same path of `desired`:
/// `add` (which replaces an existing member) when desired has a value, `remove` when
/// only existing has one. Parents of the paths must exist in `existing`.
pub(crate) fn replace_paths(existing: &Value, desired: &Value, paths: &[&str]) -> Vec<Value> {
    let mut ops = Vec::new();
    for path in paths {
        let have = existing.pointer(path).filter(|v| !v.is_null());
        let want = desired.pointer(path).filter(|v| !v.is_null());
        match (have, want) {
            (h, Some(w)) if h != Some(w) => {
                ops.push(json!({"op": "add", "path": path, "value": w}))
            }
            (Some(_), None) => ops.push(json!({"op": "remove", "path": path})),
            _ => {}
        }
    }
    ops
}

/// Operations setting the given keys of the string map at `map_path` (labels,
/// annotations) without touching keys others put there.
pub(crate) fn merge_map_keys(
    existing: &Value,
    map_path: &str,
    want: &BTreeMap<String, String>,
) -> Vec<Value> {
    if want.is_empty() {
        return Vec::new();
    }
    match existing.pointer(map_path).and_then(Value::as_object) {
        None => vec![json!({"op": "add", "path": map_path, "value": want})],
        Some(have) => want
            .iter()
            .filter(|(k, v)| have.get(k.as_str()).and_then(Value::as_str) != Some(v.as_str()))
            .map(|(k, v)| json!({"op": "add", "path": format!("{map_path}/{}", escape(k)), "value": v}))
            .collect(),
    }
}

/// Typed JSON patch for `kube::api::Patch::Json`, built from plain operations.
pub(crate) fn to_patch(ops: Vec<Value>) -> Result<kube::api::Patch<()>, WorkloadError> {
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| WorkloadError::serde("building a JSON patch", e))?;
    Ok(kube::api::Patch::Json(patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differences_are_patched() {
        let have = json!({"spec": {"replicas": 2, "minReadySeconds": 5, "template": {"a": 1}}});
        let want = json!({"spec": {"replicas": 2, "template": {"a": 2}, "strategy": {"type": "Recreate"}}});
        let ops = replace_paths(
            &have,
            &want,
            &[
                "/spec/replicas",
                "/spec/minReadySeconds",
                "/spec/template",
                "/spec/strategy",
            ],
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "remove", "path": "/spec/minReadySeconds"}),
                json!({"op": "add", "path": "/spec/template", "value": {"a": 2}}),
                json!({"op": "add", "path": "/spec/strategy", "value": {"type": "Recreate"}}),
            ]
        );
        assert!(replace_paths(&have, &have, &["/spec/replicas", "/spec/template"]).is_empty());
    }

    #[test]
    fn map_keys_are_escaped_and_merged() {
        let want = BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "serin".to_string(),
            ),
            ("keep".to_string(), "same".to_string()),
        ]);
        let have = json!({"metadata": {"labels": {"keep": "same", "other": "x"}}});
        assert_eq!(
            merge_map_keys(&have, "/metadata/labels", &want),
            vec![
                json!({"op": "add", "path": "/metadata/labels/app.kubernetes.io~1managed-by", "value": "serin"})
            ]
        );
        let bare = json!({"metadata": {}});
        assert_eq!(merge_map_keys(&bare, "/metadata/labels", &want).len(), 1);
        assert_eq!(escape("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn ops_deserialize_as_json_patch() {
        let ops = vec![json!({"op": "remove", "path": "/spec/x"})];
        assert!(to_patch(ops).is_ok());
        assert!(to_patch(vec![json!({"op": "nope"})]).is_err());
    }
}
