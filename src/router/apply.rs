//! Get-compare-patch for the objects routers write.
//!
//! A write compares with the live object: from a watch cache of Serin's generated
//! objects where the router has one ([`LiveObjects`]), else read with a GET. A write happens
//! only when a managed field differs from what the cluster holds, so that a steady
//! state causes no API traffic and no watch events downstream. Writes are JSON merge
//! patches carrying `metadata.resourceVersion`: the API server rejects the patch with a
//! conflict if someone changed the object in between, instead of silently overwriting
//! their change (server-side apply is avoided: it has known bugs on 1.20).
//!
//! "Differs" is decided twice over: the rendered managed fields must be contained in
//! the live object (the server adds defaults, such as `weight: 1` or `protocol: TCP`,
//! which must not count as drift), and, for generated objects, a hash of the rendered
//! fields is kept in an annotation so that a field Serin stopped rendering (which
//! containment cannot see) also triggers a write.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::RouterError;

/// Annotation holding the hash of the managed fields Serin last wrote.
pub const SPEC_HASH_ANNOTATION: &str = "serin.dev/router-hash";

/// What a write did, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Patched,
    Unchanged,
}

pub fn dyn_api(client: &kube::Client, ar: &ApiResource, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, ar)
}

/// GET that maps 404 to `None` and other failures to a `RouterError` with context.
pub async fn get_opt(
    api: &Api<DynamicObject>,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<Option<DynamicObject>, RouterError> {
    api.get_opt(name).await.map_err(|source| RouterError::Kube {
        context: format!("get {} {namespace}/{name}", ar.kind),
        source,
    })
}

/// JSON pointer lookup on the object's data (`/spec/rules`); metadata is not reachable
/// this way on purpose: routers manage it through labels/annotations only.
pub fn at<'a>(obj: &'a DynamicObject, pointer: &str) -> Option<&'a Value> {
    obj.data.pointer(pointer)
}

/// Whether every field of `want` is present with the same value in `have`. Objects may
/// carry extra keys in `have` (server defaults); arrays must match element by element.
pub fn contained(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contained(wv, hv),
            // An explicit null or empty value wanted is satisfied by absence.
            None => is_empty(wv),
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| contained(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (w, h) => w == h,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// RFC 7386 merge patch turning `from` into `to` (keys only in `from` become null).
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut out = Map::new();
            for (k, tv) in t {
                match f.get(k) {
                    Some(fv) if fv == tv => {}
                    Some(fv) => {
                        out.insert(k.clone(), merge_diff(fv, tv));
                    }
                    None => {
                        out.insert(k.clone(), tv.clone());
                    }
                }
            }
            for k in f.keys() {
                if !t.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

/// Stable hash of the managed fields (serde_json maps serialize with sorted keys).
pub fn hash_fields(fields: &[(&str, Value)]) -> String {
    let mut h = Sha256::new();
    for (p, v) in fields {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(v.to_string().as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Sets `value` at a `/a/b` pointer in `root`, creating intermediate objects.
pub fn set_at(root: &mut Value, pointer: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return;
        }
        cur = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn merged_map(
    live: Option<&BTreeMap<String, String>>,
    want: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let live = live.cloned().unwrap_or_default();
    if want.iter().all(|(k, v)| live.get(k) == Some(v)) {
        return None;
    }
    Some(want.clone())
}

/// Creates `desired` (with its owner reference) or brings the `paths` of the live object
/// (and the desired labels and annotations) in line with it. Only those paths are written:
/// everything else on the live object (status, server-set fields such as a Service's
/// clusterIP, other tools' labels) is left alone.
pub async fn ensure(
    client: &kube::Client,
    ar: &ApiResource,
    desired: DynamicObject,
    paths: &[&str],
) -> Result<Applied, RouterError> {
    ensure_owning(client, ar, desired, paths, &[]).await
}

/// `ensure`, where annotations whose key starts with one of `owned_prefixes` belong to
/// Serin: one that is on the live object but no longer rendered is removed (NGINX's
/// `canary-by-header` after an A/B run, for instance).
pub async fn ensure_owning(
    client: &kube::Client,
    ar: &ApiResource,
    desired: DynamicObject,
    paths: &[&str],
    owned_prefixes: &[&str],
) -> Result<Applied, RouterError> {
    ensure_from(client, ar, desired, paths, owned_prefixes, None).await
}

/// Where routers find the live objects they write without an API read: a watch cache
/// of the objects Serin generates.
pub trait LiveObjects: Send + Sync {
    /// The cached object; `None` when the cache does not hold it (it is then read).
    fn live(&self, ar: &ApiResource, namespace: &str, name: &str) -> Option<DynamicObject>;
}

/// `ensure_owning`, comparing against the cached object when `cache` holds it, so a
/// step costs no GET. The write carries the cached resourceVersion: if the cache was
/// behind, the API server answers 409 (or 404 for an object deleted meanwhile) and the
/// object is read and compared again, once.
pub async fn ensure_from(
    client: &kube::Client,
    ar: &ApiResource,
    mut desired: DynamicObject,
    paths: &[&str],
    owned_prefixes: &[&str],
    cache: Option<&dyn LiveObjects>,
) -> Result<Applied, RouterError> {
    let namespace = desired.metadata.namespace.clone().unwrap_or_default();
    let name = desired.metadata.name.clone().unwrap_or_default();
    let api = dyn_api(client, ar, &namespace);
    let fields: Vec<(&str, Value)> = paths
        .iter()
        .map(|p| (*p, at(&desired, p).cloned().unwrap_or(Value::Null)))
        .collect();
    let hash = hash_fields(&fields);
    desired
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash.clone());

    let mut cached = cache.and_then(|c| c.live(ar, &namespace, &name));
    loop {
        let from_cache = cached.is_some();
        let live = match cached.take() {
            Some(l) => l,
            None => match get_opt(&api, ar, &namespace, &name).await? {
                Some(l) => l,
                None => {
                    api.create(&PostParams::default(), &desired)
                        .await
                        .map_err(|source| RouterError::Kube {
                            context: format!("create {} {namespace}/{name}", ar.kind),
                            source,
                        })?;
                    return Ok(Applied::Created);
                }
            },
        };
        let Some(patch) = patch_for(&live, &desired, &fields, owned_prefixes) else {
            return Ok(Applied::Unchanged);
        };
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Applied::Patched),
            Err(kube::Error::Api(e)) if from_cache && matches!(e.code, 404 | 409) => continue,
            Err(source) => {
                return Err(RouterError::Kube {
                    context: format!("patch {} {namespace}/{name}", ar.kind),
                    source,
                });
            }
        }
    }
}

/// The merge patch that brings `live` to `desired` on `fields`, or `None` when nothing
/// managed differs. Pure, so the compare logic is unit-tested without a cluster.
pub fn patch_for(
    live: &DynamicObject,
    desired: &DynamicObject,
    fields: &[(&str, Value)],
    owned_prefixes: &[&str],
) -> Option<Value> {
    let want_hash = desired
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION));
    let live_hash = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION));
    let fields_differ = want_hash != live_hash
        || fields.iter().any(|(p, want)| match at(live, p) {
            Some(have) => !contained(want, have),
            None => !is_empty(want),
        });

    let mut patch = Value::Object(Map::new());
    let mut changed = false;
    if fields_differ {
        for (p, want) in fields {
            let have = at(live, p).cloned().unwrap_or(Value::Null);
            set_at(&mut patch, p, merge_diff(&have, want));
        }
        changed = true;
    }
    if let Some(labels) = desired.metadata.labels.as_ref()
        && let Some(m) = merged_map(live.metadata.labels.as_ref(), labels)
    {
        set_at(
            &mut patch,
            "/metadata/labels",
            serde_json::to_value(m).unwrap_or_default(),
        );
        changed = true;
    }
    let want_ann = desired.metadata.annotations.clone().unwrap_or_default();
    let mut ann_patch: Map<String, Value> =
        merged_map(live.metadata.annotations.as_ref(), &want_ann)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
    for k in live.metadata.annotations.iter().flat_map(|a| a.keys()) {
        if !want_ann.contains_key(k) && owned_prefixes.iter().any(|p| k.starts_with(p)) {
            ann_patch.insert(k.clone(), Value::Null);
        }
    }
    if !ann_patch.is_empty() {
        set_at(
            &mut patch,
            "/metadata/annotations",
            Value::Object(ann_patch),
        );
        changed = true;
    }
    // Owner references are set at creation only: an object that existed before Serin
    // (a user's own apex Service, say) must not be garbage-collected with the Canary,
    // and may already have a controller of its own.
    if !changed {
        return None;
    }
    if let Some(rv) = &live.metadata.resource_version {
        set_at(
            &mut patch,
            "/metadata/resourceVersion",
            Value::String(rv.clone()),
        );
    }
    Some(patch)
}

/// Writes new values at `paths` of a user-owned object, guarded by its resourceVersion,
/// touching nothing else (no labels, annotations or owner references are added).
pub async fn patch_user_object(
    client: &kube::Client,
    ar: &ApiResource,
    live: &DynamicObject,
    fields: &[(&str, Value)],
) -> Result<Applied, RouterError> {
    if fields.iter().all(|(p, v)| at(live, p) == Some(v)) {
        return Ok(Applied::Unchanged);
    }
    let namespace = live.metadata.namespace.clone().unwrap_or_default();
    let name = live.metadata.name.clone().unwrap_or_default();
    let mut patch = Value::Object(Map::new());
    for (p, v) in fields {
        set_at(&mut patch, p, v.clone());
    }
    if let Some(rv) = &live.metadata.resource_version {
        set_at(
            &mut patch,
            "/metadata/resourceVersion",
            Value::String(rv.clone()),
        );
    }
    dyn_api(client, ar, &namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| RouterError::Kube {
            context: format!("patch {} {namespace}/{name}", ar.kind),
            source,
        })?;
    Ok(Applied::Patched)
}

/// Deletes an object if present (404 is success: the goal is its absence).
pub async fn delete_if_present(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<(), RouterError> {
    match dyn_api(client, ar, namespace)
        .delete(name, &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(RouterError::Kube {
            context: format!("delete {} {namespace}/{name}", ar.kind),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_tolerates_server_defaults_but_not_changes() {
        let want = json!({"rules": [{"backendRefs": [{"name": "a", "weight": 10}]}]});
        let have = json!({"rules": [{"backendRefs": [{"name": "a", "weight": 10, "group": ""}]}]});
        assert!(contained(&want, &have));
        let changed = json!({"rules": [{"backendRefs": [{"name": "a", "weight": 20}]}]});
        assert!(!contained(&changed, &have));
        let extra_rule = json!({"rules": [{}, {}]});
        assert!(!contained(&extra_rule, &have));
    }

    #[test]
    fn merge_diff_nulls_removed_keys_and_replaces_arrays() {
        let from = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let to = json!({"b": {"c": 2}, "l": [3]});
        assert_eq!(
            merge_diff(&from, &to),
            json!({"a": null, "b": {"d": null}, "l": [3]})
        );
    }

    fn obj(spec: Value, hash: Option<&str>) -> DynamicObject {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "x/v1", "kind": "X",
            "metadata": {"name": "n", "namespace": "ns", "resourceVersion": "7"},
            "spec": spec
        }))
        .unwrap();
        if let Some(h) = hash {
            o.metadata.annotations =
                Some([(SPEC_HASH_ANNOTATION.to_string(), h.to_string())].into());
        }
        o
    }

    #[test]
    fn patch_only_when_managed_fields_differ() {
        let spec = json!({"w": 1});
        let fields = [("/spec", spec.clone())];
        let h = hash_fields(&fields);
        let desired = obj(spec.clone(), Some(&h));
        // Same hash and contained (live has a server default): nothing to write.
        let live = obj(json!({"w": 1, "defaulted": true}), Some(&h));
        assert_eq!(patch_for(&live, &desired, &fields, &[]), None);
        // Drift on the live object: write, guarded by resourceVersion.
        let drifted = obj(json!({"w": 2}), Some(&h));
        let p = patch_for(&drifted, &desired, &fields, &[]).unwrap();
        assert_eq!(p["spec"], json!({"w": 1}));
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        // An owned annotation no longer rendered is removed; others' stay.
        let mut stale = obj(json!({"w": 1}), Some(&h));
        let ann = stale.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert("x/canary-by-header".into(), "h".into());
        ann.insert("other".into(), "kept".into());
        let p = patch_for(&stale, &desired, &fields, &["x/canary-by"]).unwrap();
        assert_eq!(
            p["metadata"]["annotations"],
            json!({"x/canary-by-header": null})
        );
        assert!(p.get("spec").is_none());
    }

    struct OneObject(DynamicObject);

    impl LiveObjects for OneObject {
        fn live(&self, _: &ApiResource, _: &str, _: &str) -> Option<DynamicObject> {
            Some(self.0.clone())
        }
    }

    /// A fake API server holding one object at resourceVersion 8 with spec {"w": 2}:
    /// a PATCH carrying another resourceVersion gets 409. Records "METHOD rv" lines.
    async fn fake_api() -> (kube::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::extract::State;
        use std::sync::{Arc, Mutex};
        type Log = Arc<Mutex<Vec<String>>>;
        let log: Log = Arc::default();
        async fn get(State(log): State<Log>) -> axum::Json<Value> {
            log.lock().unwrap().push("GET".into());
            let mut o = obj(json!({"w": 2}), None);
            o.metadata.resource_version = Some("8".into());
            axum::Json(serde_json::to_value(o).unwrap())
        }
        async fn patch(
            State(log): State<Log>,
            body: axum::body::Bytes,
        ) -> (axum::http::StatusCode, axum::Json<Value>) {
            let p: Value = serde_json::from_slice(&body).unwrap();
            let rv = p["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push(format!("PATCH {rv}"));
            if rv != "8" {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "conflict", "reason": "Conflict", "code": 409});
                return (axum::http::StatusCode::CONFLICT, axum::Json(status));
            }
            let o = obj(p["spec"].clone(), None);
            (
                axum::http::StatusCode::OK,
                axum::Json(serde_json::to_value(o).unwrap()),
            )
        }
        let app = axum::Router::new()
            .route(
                "/apis/x/v1/namespaces/ns/xs/n",
                axum::routing::get(get).patch(patch),
            )
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (kube::Client::try_from(config).unwrap(), log)
    }

    fn ar() -> ApiResource {
        ApiResource::from_gvk_with_plural(&kube::core::GroupVersionKind::gvk("x", "v1", "X"), "xs")
    }

    #[tokio::test]
    async fn a_cached_object_saves_the_get_and_a_stale_one_costs_a_conflict_and_a_read() {
        let (client, log) = fake_api().await;
        let desired = obj(json!({"w": 2}), None);
        let h = hash_fields(&[("/spec", json!({"w": 2}))]);
        // The cache holds what is wanted: no request at all.
        let mut fresh = obj(json!({"w": 2}), Some(&h));
        fresh.metadata.resource_version = Some("8".into());
        let cache = OneObject(fresh);
        let r = ensure_from(
            &client,
            &ar(),
            desired.clone(),
            &["/spec"],
            &[],
            Some(&cache),
        )
        .await;
        assert_eq!(r.unwrap(), Applied::Unchanged);
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
        // A cached object behind the server: its write is refused, then read and redone.
        let stale = OneObject(obj(json!({"w": 1}), Some(&h)));
        let want = obj(json!({"w": 3}), None);
        let r = ensure_from(&client, &ar(), want, &["/spec"], &[], Some(&stale)).await;
        assert_eq!(r.unwrap(), Applied::Patched);
        assert_eq!(*log.lock().unwrap(), ["PATCH 7", "GET", "PATCH 8"]);
    }
}
