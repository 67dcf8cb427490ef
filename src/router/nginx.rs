//! NGINX ingress router: a canary Ingress `<ingress>-canary` cloned from
//! `spec.ingressRef` (networking.k8s.io/v1).
//!
//! The user's Ingress is never modified: it keeps pointing at the apex Service, which
//! selects the primary pods, so it is the primary route (as in Flagger, which also
//! leaves it alone). The clone copies its spec (rules, TLS, class) with every backend
//! that names the apex Service re-pointed at `<apex>-canary`, and its labels and
//! annotations (rewrite-target and the like must apply to both), except
//! `kubectl.kubernetes.io/last-applied-configuration` and any `canary*` annotation,
//! which Serin sets itself:
//! - `nginx.ingress.kubernetes.io/canary: "true"` and `canary-weight: "<canary>"`;
//! - A/B (`analysis.match`) while the canary weight is above 0: `canary-weight: "0"`
//!   plus `canary-by-header` with `canary-by-header-value` (exact) or
//!   `canary-by-header-pattern` (regex), and `canary-by-cookie` for a `cookie` header
//!   match (the cookie's name, as ingress-nginx expects: value `always` routes to the
//!   canary).
//!
//! NGINX cannot mirror per canary: mirror steps are refused. The Ingress has no
//! acceptance status; `verify` reports `Unknown`. `finalize` deletes the clone.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};

use super::apply;
use super::kubernetes::KubernetesRouter;
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, ServiceInputs, owner_ref, routes_from,
};
use crate::crd::{CANARY_ANNOTATION, Canary, MANAGED_BY, MANAGED_BY_LABEL};

pub const GROUP: &str = "networking.k8s.io";
const PREFIX: &str = "nginx.ingress.kubernetes.io";

fn ann(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

fn ingress_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<Ingress>(&())
}

pub fn canary_ingress_name(canary: &Canary) -> Result<String, RouterError> {
    Ok(format!("{}-canary", ingress_ref(canary)?))
}

fn ingress_ref(canary: &Canary) -> Result<String, RouterError> {
    match &canary.spec.ingress_ref {
        Some(r) if r.kind == "Ingress" => Ok(r.name.clone()),
        Some(r) => Err(RouterError::InvalidRoute(format!(
            "spec.ingressRef.kind {:?}: the nginx provider needs an Ingress",
            r.kind
        ))),
        None => Err(RouterError::InvalidRoute(
            "spec.ingressRef is required with the nginx provider".into(),
        )),
    }
}

/// Header annotations for A/B: (header, exact value, regex, cookie).
fn ab_annotations(canary: &Canary) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in canary
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.r#match.iter().flatten())
    {
        for (k, v) in m.headers.iter().flatten() {
            if k.eq_ignore_ascii_case("cookie") {
                if let Some(c) = v.exact.as_ref().or(v.regex.as_ref()) {
                    out.insert(ann("canary-by-cookie"), c.clone());
                }
            } else {
                out.insert(ann("canary-by-header"), k.clone());
                if let Some(e) = &v.exact {
                    out.insert(ann("canary-by-header-value"), e.clone());
                }
                if let Some(r) = &v.regex {
                    out.insert(ann("canary-by-header-pattern"), r.clone());
                }
            }
        }
    }
    out
}

/// Renders the canary Ingress from the user's Ingress (as JSON, read from the cluster).
pub fn render_canary_ingress(
    canary: &Canary,
    user: &Value,
    routes: Routes,
) -> Result<kube::api::DynamicObject, RouterError> {
    routes.validate()?;
    if routes.mirror {
        return Err(RouterError::InvalidRoute(
            "the nginx provider cannot mirror traffic".into(),
        ));
    }
    let apex = canary.apex_name();
    let canary_svc = canary.canary_service_name();
    let mut spec = user.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut found = false;
    let mut repoint = |backend: &mut Value| {
        if backend.pointer("/service/name").and_then(Value::as_str) == Some(apex.as_str()) {
            backend["service"]["name"] = json!(canary_svc);
            found = true;
        }
    };
    if let Some(b) = spec.get_mut("defaultBackend") {
        repoint(b);
    }
    if let Some(rules) = spec.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            if let Some(paths) = rule
                .pointer_mut("/http/paths")
                .and_then(Value::as_array_mut)
            {
                for p in paths {
                    if let Some(b) = p.get_mut("backend") {
                        repoint(b);
                    }
                }
            }
        }
    }
    let user_name = user
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !found {
        return Err(RouterError::InvalidRoute(format!(
            "Ingress {user_name} has no backend pointing at the apex Service {apex}"
        )));
    }
    let mut annotations: BTreeMap<String, String> = user
        .pointer("/metadata/annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    annotations.retain(|k, _| {
        !k.starts_with(&ann("canary")) && k != "kubectl.kubernetes.io/last-applied-configuration"
    });
    annotations.insert(ann("canary"), "true".into());
    let ab = ab_annotations(canary);
    if !ab.is_empty() && routes.canary > 0 {
        annotations.insert(ann("canary-weight"), "0".into());
        annotations.extend(ab);
    } else {
        annotations.insert(ann("canary-weight"), routes.canary.to_string());
    }
    annotations.insert(CANARY_ANNOTATION.into(), canary.name_str().into());
    let mut labels: BTreeMap<String, String> = user
        .pointer("/metadata/labels")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());

    let ar = ingress_resource();
    let mut obj = kube::api::DynamicObject::new(&format!("{user_name}-canary"), &ar)
        .within(&canary.namespace_or_default())
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(labels);
    obj.metadata.annotations = Some(annotations);
    obj.metadata.owner_references = owner_ref(canary).map(|o| vec![o]);
    Ok(obj)
}

/// Reads the split from the canary Ingress annotations.
pub fn routes_of(annotations: &BTreeMap<String, String>) -> Result<Routes, RouterError> {
    let by_match = ["canary-by-header", "canary-by-cookie"]
        .iter()
        .any(|k| annotations.contains_key(&ann(k)));
    if by_match {
        return Ok(Routes::weighted(100));
    }
    let w = annotations
        .get(&ann("canary-weight"))
        .map(String::as_str)
        .unwrap_or("0");
    let c: u32 = w.trim().parse().map_err(|_| {
        RouterError::InvalidRoute(format!("{} is not a number: {w:?}", ann("canary-weight")))
    })?;
    routes_from(100u32.saturating_sub(c), c, false, None)
}

pub struct NginxRouter {
    k8s: KubernetesRouter,
    client: kube::Client,
}

impl NginxRouter {
    /// Reads the backend Services from a watch cache (see `KubernetesRouter`).
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.k8s = self.k8s.with_services(services);
        self
    }

    pub fn new(client: kube::Client) -> Self {
        NginxRouter {
            k8s: KubernetesRouter::new(client.clone(), false),
            client,
        }
    }

    async fn get(
        &self,
        canary: &Canary,
        name: &str,
    ) -> Result<Option<kube::api::DynamicObject>, RouterError> {
        let ar = ingress_resource();
        let ns = canary.namespace_or_default();
        apply::get_opt(&apply::dyn_api(&self.client, &ar, &ns), &ar, &ns, name).await
    }

    async fn user_ingress(&self, canary: &Canary) -> Result<Value, RouterError> {
        let name = ingress_ref(canary)?;
        let obj = self
            .get(canary, &name)
            .await?
            .ok_or_else(|| RouterError::NotFound {
                kind: "Ingress".into(),
                namespace: canary.namespace_or_default(),
                name: name.clone(),
            })?;
        serde_json::to_value(obj).map_err(|source| RouterError::Serde {
            context: format!("read Ingress {name}"),
            source,
        })
    }

    async fn current(&self, canary: &Canary) -> Result<Option<Routes>, RouterError> {
        let Some(live) = self.get(canary, &canary_ingress_name(canary)?).await? else {
            return Ok(None);
        };
        routes_of(&live.metadata.annotations.unwrap_or_default()).map(Some)
    }

    async fn write(&self, canary: &Canary, routes: Routes) -> Result<(), RouterError> {
        let user = self.user_ingress(canary).await?;
        let obj = render_canary_ingress(canary, &user, routes)?;
        let owned = ann("canary-by-");
        apply::ensure_owning(
            &self.client,
            &ingress_resource(),
            obj,
            &["/spec"],
            &[owned.as_str()],
        )
        .await?;
        Ok(())
    }
}

impl Router for NginxRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // The user's Ingress must exist and reference the apex before any write.
            let user = self.user_ingress(canary).await?;
            render_canary_ingress(canary, &user, Routes::PRIMARY)?;
            self.k8s.reconcile_services(canary, inputs).await?;
            let current = self
                .current(canary)
                .await
                .ok()
                .flatten()
                .unwrap_or(Routes::PRIMARY);
            self.write(canary, current).await
        })
    }

    fn set_routes<'a>(
        &'a self,
        canary: &'a Canary,
        routes: Routes,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            routes.validate()?;
            self.k8s.require_backends(canary).await?;
            self.write(canary, routes).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            self.current(canary).await?.ok_or(RouterError::NotFound {
                kind: "Ingress".into(),
                namespace: canary.namespace_or_default(),
                name: canary_ingress_name(canary)?,
            })
        })
    }

    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        Box::pin(async move {
            let name = canary_ingress_name(canary)?;
            match self.get(canary, &name).await? {
                Some(_) => Ok(RouteStatus::Unknown(
                    "ingress-nginx writes no acceptance status on Ingresses".into(),
                )),
                None => Err(RouterError::NotFound {
                    kind: "Ingress".into(),
                    namespace: canary.namespace_or_default(),
                    name,
                }),
            }
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.k8s.finalize(canary).await?;
            apply::delete_if_present(
                &self.client,
                &ingress_resource(),
                &canary.namespace_or_default(),
                &canary_ingress_name(canary)?,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AbMatch, CanaryAnalysis, LocalObjectReference, StringMatch};
    use crate::router::kubernetes::tests::canary as base;
    use pretty_assertions::assert_eq;

    fn canary() -> Canary {
        let mut c = base();
        c.spec.ingress_ref = Some(LocalObjectReference {
            api_version: "networking.k8s.io/v1".into(),
            kind: "Ingress".into(),
            name: "podinfo".into(),
        });
        c
    }

    fn user() -> Value {
        json!({
            "metadata": {"name": "podinfo", "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/", "kubectl.kubernetes.io/last-applied-configuration": "{}"}, "labels": {"app": "podinfo"}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "podinfo", "port": {"number": 80}}}},
                {"path": "/other", "pathType": "Prefix", "backend": {"service": {"name": "other", "port": {"number": 80}}}}
            ]}}]}
        })
    }

    #[test]
    fn clone_points_at_canary_service_with_weight() {
        let obj = render_canary_ingress(&canary(), &user(), Routes::weighted(30)).unwrap();
        assert_eq!(obj.metadata.name.as_deref(), Some("podinfo-canary"));
        let paths = &obj.data["spec"]["rules"][0]["http"]["paths"];
        assert_eq!(paths[0]["backend"]["service"]["name"], "podinfo-canary");
        assert_eq!(paths[1]["backend"]["service"]["name"], "other");
        assert_eq!(obj.data["spec"]["ingressClassName"], "nginx");
        let a = obj.metadata.annotations.clone().unwrap();
        assert_eq!(a["nginx.ingress.kubernetes.io/canary"], "true");
        assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight"], "30");
        assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/");
        assert!(!a.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(routes_of(&a).unwrap(), Routes::weighted(30));
    }

    #[test]
    fn ab_annotations_only_while_canary_has_weight() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            r#match: Some(vec![
                AbMatch {
                    headers: Some(
                        [(
                            "x-canary".to_string(),
                            StringMatch {
                                regex: Some(".*insider.*".into()),
                                ..Default::default()
                            },
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                AbMatch {
                    headers: Some(
                        [(
                            "cookie".to_string(),
                            StringMatch {
                                exact: Some("canary".into()),
                                ..Default::default()
                            },
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let obj = render_canary_ingress(&c, &user(), Routes::weighted(100)).unwrap();
        let a = obj.metadata.annotations.clone().unwrap();
        assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight"], "0");
        assert_eq!(
            a["nginx.ingress.kubernetes.io/canary-by-header"],
            "x-canary"
        );
        assert_eq!(
            a["nginx.ingress.kubernetes.io/canary-by-header-pattern"],
            ".*insider.*"
        );
        assert_eq!(a["nginx.ingress.kubernetes.io/canary-by-cookie"], "canary");
        assert_eq!(routes_of(&a).unwrap(), Routes::weighted(100));
        let off = render_canary_ingress(&c, &user(), Routes::PRIMARY).unwrap();
        let a = off.metadata.annotations.unwrap();
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/canary-by-header"));
        assert_eq!(routes_of(&a).unwrap(), Routes::PRIMARY);
    }

    #[test]
    fn bad_input() {
        let no_apex = json!({"metadata": {"name": "podinfo"}, "spec": {"rules": []}});
        assert!(matches!(
            render_canary_ingress(&canary(), &no_apex, Routes::PRIMARY),
            Err(RouterError::InvalidRoute(_))
        ));
        assert!(
            render_canary_ingress(
                &canary(),
                &user(),
                Routes {
                    mirror: true,
                    ..Routes::PRIMARY
                }
            )
            .is_err()
        );
        assert!(ingress_ref(&base()).is_err());
    }
}
