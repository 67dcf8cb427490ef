//! Minimal JSON patches: compare the desired value of each managed path with what the
//! API server holds and emit an operation only where they differ. JSON patch (not
//! merge patch) so that a removed map key or a shortened list really goes away, and
//! not server-side apply, which is unreliable on the 1.20 servers Serin supports.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::primary::managed_spec_paths;
use super::{SCALE_TO_ZERO_NODE_SELECTOR, Workload, WorkloadError};
use crate::crd::{Canary, FINALIZER, MANAGED_BY, MANAGED_BY_LABEL};

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

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, WorkloadError> {
    serde_json::to_value(v).map_err(|e| WorkloadError::serde("serializing an object to compare", e))
}

/// Before Serin changes an existing object it would own (primary, config copy, primary
/// HPA): nothing if the Canary already owns it; an owner reference making the Canary
/// its controller if nobody controls it and it carries Serin's managed-by label (left
/// orphaned by `--cascade=orphan`); else an error, since it is not Serin's to
/// overwrite (a user's object with a clashing name, or Flagger's).
pub(crate) fn ownership_ops(
    meta: &ObjectMeta,
    canary: &Canary,
    object: &str,
) -> Result<Vec<Value>, WorkloadError> {
    let owner = canary
        .controller_owner_ref(&())
        .ok_or_else(|| WorkloadError::MissingUid(canary.name_str().to_string()))?;
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs.iter().any(|r| r.uid == owner.uid) {
        return Ok(Vec::new());
    }
    if let Some(other) = refs.iter().find(|r| r.controller == Some(true)) {
        return Err(WorkloadError::OwnedByOther {
            object: object.to_string(),
            owner: format!("{} {} (uid {})", other.kind, other.name, other.uid),
        });
    }
    let managed = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    if !managed {
        return Err(WorkloadError::NotManaged {
            object: object.to_string(),
        });
    }
    let owner = serde_json::to_value(owner)
        .map_err(|e| WorkloadError::serde("serializing an owner reference", e))?;
    Ok(vec![if refs.is_empty() {
        json!({"op": "add", "path": "/metadata/ownerReferences", "value": [owner]})
    } else {
        json!({"op": "add", "path": "/metadata/ownerReferences/-", "value": owner})
    }])
}

/// What promotion changes on the existing primary to make it `desired`: ownership
/// (see [`ownership_ops`]), the managed spec paths, and the desired labels and
/// annotations (others' keys are kept).
pub(crate) fn promote_ops(
    canary: &Canary,
    existing: &Workload,
    desired: &Workload,
) -> Result<Vec<Value>, WorkloadError> {
    let object = format!("{} {}", existing.kind(), existing.name());
    let mut ops = ownership_ops(existing.metadata(), canary, &object)?;
    let (have, want) = (to_json(existing)?, to_json(desired)?);
    ops.extend(replace_paths(&have, &want, managed_spec_paths(desired)));
    let meta = desired.metadata();
    ops.extend(merge_map_keys(
        &have,
        "/metadata/labels",
        &meta.labels.clone().unwrap_or_default(),
    ));
    ops.extend(merge_map_keys(
        &have,
        "/metadata/annotations",
        &meta.annotations.clone().unwrap_or_default(),
    ));
    Ok(ops)
}

/// What scaling the target to `replicas` changes: a Deployment's replicas; for a
/// DaemonSet, the scale-to-zero node selector added at 0 and removed above 0.
pub(crate) fn scale_ops(target: &Workload, replicas: i32) -> Result<Vec<Value>, WorkloadError> {
    const NODE_SELECTOR: &str = "/spec/template/spec/nodeSelector";
    Ok(match target {
        Workload::Deployment(_) if target.replicas() == Some(replicas) => Vec::new(),
        Workload::Deployment(_) => {
            vec![json!({"op": "add", "path": "/spec/replicas", "value": replicas})]
        }
        Workload::DaemonSet(_) => match (replicas, target.is_scaled_to_zero()) {
            (0, false) => merge_map_keys(
                &to_json(target)?,
                NODE_SELECTOR,
                &BTreeMap::from([(SCALE_TO_ZERO_NODE_SELECTOR.to_string(), "true".to_string())]),
            ),
            (n, true) if n > 0 => vec![json!({
                "op": "remove",
                "path": format!("{NODE_SELECTOR}/{}", escape(SCALE_TO_ZERO_NODE_SELECTOR)),
            })],
            _ => Vec::new(),
        },
    })
}

/// Typed JSON patch for `kube::api::Patch::Json`, built from plain operations.
pub(crate) fn to_patch(ops: Vec<Value>) -> Result<kube::api::Patch<()>, WorkloadError> {
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| WorkloadError::serde("building a JSON patch", e))?;
    Ok(kube::api::Patch::Json(patch))
}

/// Appends `serin.dev/finalizer` to an object's finalizers, leaving the others: a
/// merge patch would replace the whole list.
pub fn add_finalizer_patch(
    existing: Option<&[String]>,
) -> Result<kube::api::Patch<()>, WorkloadError> {
    to_patch(vec![add_finalizer_op(existing)])
}

fn add_finalizer_op(existing: Option<&[String]>) -> Value {
    match existing {
        None => json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
        Some(_) => json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{TrackedConfigs, render_primary};
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
    fn deployment_scale_ops() {
        let d = Workload::Deployment(deployment("podinfo"));
        assert!(
            scale_ops(&d, 2).unwrap().is_empty(),
            "fixture already has 2"
        );
        assert_eq!(
            scale_ops(&d, 0).unwrap(),
            vec![json!({"op": "add", "path": "/spec/replicas", "value": 0})]
        );
    }

    #[test]
    fn daemonset_scale_ops_use_the_node_selector() {
        let bare = Workload::DaemonSet(daemonset("agent"));
        assert_eq!(
            scale_ops(&bare, 0).unwrap(),
            vec![
                json!({"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"serin.dev/scale-to-zero": "true"}})
            ]
        );
        assert!(scale_ops(&bare, 1).unwrap().is_empty());
        let mut with_user = daemonset("agent");
        set_node_selector(&mut with_user, "disk", "ssd");
        assert_eq!(
            scale_ops(&Workload::DaemonSet(with_user.clone()), 0).unwrap(),
            vec![
                json!({"op": "add", "path": "/spec/template/spec/nodeSelector/serin.dev~1scale-to-zero", "value": "true"})
            ],
            "the user's selector stays"
        );
        set_scale_to_zero(&mut with_user);
        let zero = Workload::DaemonSet(with_user);
        assert!(scale_ops(&zero, 0).unwrap().is_empty());
        assert_eq!(
            scale_ops(&zero, 3).unwrap(),
            vec![
                json!({"op": "remove", "path": "/spec/template/spec/nodeSelector/serin.dev~1scale-to-zero"})
            ]
        );
    }

    #[test]
    fn promote_ops_touch_only_what_changed() {
        let canary = canary("podinfo");
        let none = TrackedConfigs::default();
        let target = Workload::Deployment(deployment("podinfo"));
        let primary = render_primary(&canary, &target, &none, None).unwrap();
        // The primary as the server would hold it, with a label another tool added.
        let mut existing = primary.clone();
        if let Workload::Deployment(d) = &mut existing {
            d.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert("argocd".into(), "x".into());
        }
        let same = render_primary(&canary, &target, &none, Some(&existing)).unwrap();
        assert!(promote_ops(&canary, &existing, &same).unwrap().is_empty());

        let mut next = deployment("podinfo");
        set_image(&mut next, "podinfo:2");
        let desired =
            render_primary(&canary, &Workload::Deployment(next), &none, Some(&existing)).unwrap();
        let ops = promote_ops(&canary, &existing, &desired).unwrap();
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(
            paths,
            ["/spec/template"],
            "replicas, labels and the other tool's label untouched"
        );
        assert_eq!(
            ops[0]["value"]["spec"]["containers"][0]["image"],
            json!("podinfo:2")
        );
    }

    #[test]
    fn ownership_is_checked_before_overwriting() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let canary = canary("podinfo");
        let ours = canary.controller_owner_ref(&()).unwrap();
        let reference = |uid: &str, controller: bool| OwnerReference {
            api_version: "flagger.app/v1beta1".into(),
            kind: "Canary".into(),
            name: "podinfo".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        };
        let meta = |refs: Option<Vec<OwnerReference>>| ObjectMeta {
            owner_references: refs,
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.into(),
                MANAGED_BY.into(),
            )])),
            ..Default::default()
        };
        assert!(
            ownership_ops(&meta(Some(vec![ours.clone()])), &canary, "x")
                .unwrap()
                .is_empty()
        );
        let adopt = ownership_ops(&meta(None), &canary, "x").unwrap();
        assert_eq!(adopt[0]["path"], json!("/metadata/ownerReferences"));
        assert_eq!(adopt[0]["value"][0]["uid"], json!("uid-1"));
        assert_eq!(adopt[0]["value"][0]["controller"], json!(true));
        let append =
            ownership_ops(&meta(Some(vec![reference("u2", false)])), &canary, "x").unwrap();
        assert_eq!(append[0]["path"], json!("/metadata/ownerReferences/-"));
        let err = ownership_ops(
            &meta(Some(vec![reference("flagger-uid", true)])),
            &canary,
            "Deployment podinfo-primary",
        )
        .unwrap_err();
        assert_eq!(err.reason(), "ObjectOwnedByOther");
        assert!(
            err.to_string().contains("Deployment podinfo-primary"),
            "{err}"
        );
        assert!(err.to_string().contains("flagger-uid"), "{err}");
        // Unowned but not labelled as Serin's: a user's object with a clashing name.
        let users = ObjectMeta::default();
        let err = ownership_ops(&users, &canary, "ConfigMap settings-primary").unwrap_err();
        assert_eq!(err.reason(), "ObjectNotManaged");
    }

    #[test]
    fn finalizer_is_appended_to_others() {
        assert_eq!(
            add_finalizer_op(None),
            json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
        );
        let theirs = vec!["example.com/keep".to_string()];
        assert_eq!(
            add_finalizer_op(Some(&theirs)),
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
        );
        assert!(add_finalizer_patch(Some(&theirs)).is_ok());
    }

    #[test]
    fn ops_deserialize_as_json_patch() {
        let ops = vec![json!({"op": "remove", "path": "/spec/x"})];
        assert!(to_patch(ops).is_ok());
        assert!(to_patch(vec![json!({"op": "nope"})]).is_err());
    }
}
