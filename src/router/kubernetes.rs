//! The `kubernetes` router: the three ClusterIP Services every Canary gets.
//!
//! - `<apex>` selects the primary pods (`<label_key>: <label_value>-primary`): clients
//!   keep using the name they always used and reach the stable version.
//! - `<apex>-primary` selects the primary pods and `<apex>-canary` the target's own pods
//!   (`<label_key>: <label_value>`): mesh and gateway routers split between these two.
//!
//! It runs first for every provider. For provider `kubernetes` (blue/green only, no
//! weights) it is also the traffic router: `set_routes` switches the apex Service's
//! selector between primary pods (primary 100) and target pods (canary 100), and
//! `get_routes` reads the split back from that selector. `reconcile` keeps whatever the
//! apex currently selects, so an in-flight switch is not undone.
//!
//! Ports come from `service.port`/`portName` (default `http`)/`targetPort` (default the
//! port)/`appProtocol`, plus every container port with `portDiscovery`. `headless`
//! sets `clusterIP: None`, which the API server only accepts at creation (clusterIP is
//! immutable), so it is applied when the Services are created. Only the selector and
//! ports are managed on existing Services; other fields and other tools' metadata stay.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::apply::{self, Applied};
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, ServiceInputs, generated_object,
    service_spec,
};
use crate::crd::Canary;

pub struct KubernetesRouter {
    client: kube::Client,
    /// Provider `kubernetes`: the apex selector is the traffic switch.
    switch_apex: bool,
    /// The operator's watch cache of Services, when it has one: reads come from it
    /// instead of the API server.
    services: Option<std::sync::Arc<dyn super::ServiceLookup>>,
}

/// Which pods the apex Service selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApexTarget {
    Primary,
    /// The target's own pods: blue/green switched to the canary, or finalized.
    Target,
}

fn service_resource() -> ApiResource {
    ApiResource::erase::<Service>(&())
}

/// The Service ports: the main port, then (with `portDiscovery`) every other container
/// port of the target, each once, named after the container port.
pub fn render_ports(
    canary: &Canary,
    inputs: &ServiceInputs,
) -> Result<Vec<ServicePort>, RouterError> {
    let svc = service_spec(canary)?;
    let main_name = svc.port_name.clone().unwrap_or_else(|| "http".to_string());
    let target = svc
        .target_port
        .clone()
        .filter(|t| !matches!(t, IntOrString::Int(0)))
        .unwrap_or(IntOrString::Int(svc.port));
    let mut ports = vec![ServicePort {
        name: Some(main_name.clone()),
        port: svc.port,
        protocol: Some("TCP".into()),
        target_port: Some(target.clone()),
        app_protocol: svc.app_protocol.clone(),
        ..Default::default()
    }];
    if svc.port_discovery == Some(true) {
        for cp in &inputs.container_ports {
            let same_as_main = cp.container_port == svc.port
                || target == IntOrString::Int(cp.container_port)
                || cp
                    .name
                    .as_ref()
                    .is_some_and(|n| target == IntOrString::String(n.clone()));
            let name = cp
                .name
                .clone()
                .unwrap_or_else(|| format!("tcp-{}", cp.container_port));
            let dup = ports
                .iter()
                .any(|p| p.port == cp.container_port || p.name.as_deref() == Some(name.as_str()));
            if same_as_main || dup {
                continue;
            }
            ports.push(ServicePort {
                name: Some(name),
                port: cp.container_port,
                protocol: Some(cp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                target_port: Some(IntOrString::Int(cp.container_port)),
                ..Default::default()
            });
        }
    }
    Ok(ports)
}

/// Renders `(apex, primary, canary)` Services.
pub fn render_services(
    canary: &Canary,
    inputs: &ServiceInputs,
    apex_target: ApexTarget,
) -> Result<[DynamicObject; 3], RouterError> {
    let svc = service_spec(canary)?;
    if inputs.label_key.is_empty() || inputs.label_value.is_empty() {
        return Err(RouterError::InvalidRoute(
            "the target's pod selector label is unknown (label key/value empty)".into(),
        ));
    }
    let ports = render_ports(canary, inputs)?;
    let primary_sel = BTreeMap::from([(
        inputs.label_key.clone(),
        format!("{}-primary", inputs.label_value),
    )]);
    let target_sel = BTreeMap::from([(inputs.label_key.clone(), inputs.label_value.clone())]);
    let apex_sel = match apex_target {
        ApexTarget::Primary => primary_sel.clone(),
        ApexTarget::Target => target_sel.clone(),
    };
    let ar = service_resource();
    let one = |name: String,
               selector: BTreeMap<String, String>,
               custom|
     -> Result<DynamicObject, RouterError> {
        let spec = ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(ports.clone()),
            cluster_ip: (svc.headless == Some(true)).then(|| "None".to_string()),
            ..Default::default()
        };
        let spec = serde_json::to_value(spec).map_err(|source| RouterError::Serde {
            context: format!("render Service {name}"),
            source,
        })?;
        Ok(generated_object(
            canary,
            &ar,
            &name,
            custom,
            json!({ "spec": spec }),
        ))
    };
    Ok([
        one(canary.apex_name(), apex_sel, svc.apex.as_ref())?,
        one(
            canary.primary_service_name(),
            primary_sel,
            svc.primary.as_ref(),
        )?,
        one(
            canary.canary_service_name(),
            target_sel,
            svc.canary.as_ref(),
        )?,
    ])
}

/// Paths managed on existing Services: clusterIP and the like are server-owned.
const SERVICE_PATHS: &[&str] = &["/spec/selector", "/spec/ports"];

/// Which pods a live apex Service selects: target pods when its selector value does not
/// end in `-primary`.
pub fn apex_target_of(apex: &DynamicObject) -> ApexTarget {
    let targets_canary = apex
        .data
        .pointer("/spec/selector")
        .and_then(|s| s.as_object())
        .is_some_and(|m| {
            !m.is_empty()
                && m.values()
                    .any(|v| v.as_str().is_some_and(|v| !v.ends_with("-primary")))
        });
    if targets_canary {
        ApexTarget::Target
    } else {
        ApexTarget::Primary
    }
}

impl KubernetesRouter {
    pub fn new(client: kube::Client, switch_apex: bool) -> Self {
        KubernetesRouter {
            client,
            switch_apex,
            services: None,
        }
    }

    /// Reads Services from `services` (a watch cache) rather than the API server.
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.services = Some(services);
        self
    }

    async fn get_service(
        &self,
        canary: &Canary,
        name: &str,
    ) -> Result<Option<DynamicObject>, RouterError> {
        let ar = service_resource();
        let ns = canary.namespace_or_default();
        if let Some(cache) = &self.services {
            return cache
                .service(&ns, name)
                .map(|svc| {
                    serde_json::to_value(svc)
                        .and_then(serde_json::from_value::<DynamicObject>)
                        .map_err(|source| RouterError::Serde {
                            context: format!("cached Service {ns}/{name}"),
                            source,
                        })
                })
                .transpose();
        }
        apply::get_opt(&apply::dyn_api(&self.client, &ar, &ns), &ar, &ns, name).await
    }

    /// Fails with `NotFound` unless both `-primary` and `-canary` Services exist, so no
    /// router ever points traffic at a Service that is not there.
    pub async fn require_backends(&self, canary: &Canary) -> Result<(), RouterError> {
        for name in [canary.primary_service_name(), canary.canary_service_name()] {
            if self.get_service(canary, &name).await?.is_none() {
                return Err(RouterError::NotFound {
                    kind: "Service".into(),
                    namespace: canary.namespace_or_default(),
                    name,
                });
            }
        }
        Ok(())
    }

    pub async fn reconcile_services(
        &self,
        canary: &Canary,
        inputs: &ServiceInputs,
    ) -> Result<[Applied; 3], RouterError> {
        let mut apex_target = ApexTarget::Primary;
        // Only an apex Serin already manages can be mid-switch: a user's pre-existing
        // Service of that name selects the target pods because it predates Serin, and
        // is taken over pointing at the primary like any new apex.
        if self.switch_apex
            && let Some(live) = self.get_service(canary, &canary.apex_name()).await?
            && live
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(apply::SPEC_HASH_ANNOTATION))
        {
            apex_target = apex_target_of(&live);
        }
        let [apex, primary, canary_svc] = render_services(canary, inputs, apex_target)?;
        let ar = service_resource();
        // Backends first, apex last: the apex never selects pods before the Services
        // that mesh routers reference exist.
        let p = apply::ensure(&self.client, &ar, primary, SERVICE_PATHS).await?;
        let c = apply::ensure(&self.client, &ar, canary_svc, SERVICE_PATHS).await?;
        let a = apply::ensure(&self.client, &ar, apex, SERVICE_PATHS).await?;
        Ok([a, p, c])
    }

    /// Points the apex Service at the pods the `-primary` or `-canary` Service selects.
    async fn switch(&self, canary: &Canary, to: ApexTarget) -> Result<(), RouterError> {
        let ns = canary.namespace_or_default();
        let from = match to {
            ApexTarget::Primary => canary.primary_service_name(),
            ApexTarget::Target => canary.canary_service_name(),
        };
        let source =
            self.get_service(canary, &from)
                .await?
                .ok_or_else(|| RouterError::NotFound {
                    kind: "Service".into(),
                    namespace: ns.clone(),
                    name: from.clone(),
                })?;
        let selector = source
            .data
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or_default();
        let apex_name = canary.apex_name();
        let apex =
            self.get_service(canary, &apex_name)
                .await?
                .ok_or_else(|| RouterError::NotFound {
                    kind: "Service".into(),
                    namespace: ns.clone(),
                    name: apex_name.clone(),
                })?;
        let have = apex
            .data
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or_default();
        let fields = [("/spec/selector", apply::merge_diff(&have, &selector))];
        if have == selector {
            return Ok(());
        }
        apply::patch_user_object(&self.client, &service_resource(), &apex, &fields).await?;
        Ok(())
    }
}

impl Router for KubernetesRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.reconcile_services(canary, inputs).await?;
            Ok(())
        })
    }

    fn set_routes<'a>(
        &'a self,
        canary: &'a Canary,
        routes: Routes,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            routes.validate()?;
            if !self.switch_apex {
                return Ok(());
            }
            if routes.mirror {
                return Err(RouterError::InvalidRoute(
                    "provider kubernetes cannot mirror traffic".into(),
                ));
            }
            let to = match (routes.primary, routes.canary) {
                (100, 0) => ApexTarget::Primary,
                (0, 100) => ApexTarget::Target,
                (p, c) => {
                    return Err(RouterError::InvalidRoute(format!(
                        "provider kubernetes switches all traffic at once (blue/green); \
                         it cannot split primary={p} canary={c}"
                    )));
                }
            };
            self.switch(canary, to).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            let name = canary.apex_name();
            let apex =
                self.get_service(canary, &name)
                    .await?
                    .ok_or_else(|| RouterError::NotFound {
                        kind: "Service".into(),
                        namespace: canary.namespace_or_default(),
                        name,
                    })?;
            Ok(match apex_target_of(&apex) {
                ApexTarget::Primary => Routes::PRIMARY,
                ApexTarget::Target => Routes::weighted(100),
            })
        })
    }

    fn verify<'a>(
        &'a self,
        _canary: &'a Canary,
    ) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        // A Service has no acceptance status: once written, kube-proxy/endpoints act on it.
        Box::pin(async move { Ok(RouteStatus::Accepted) })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        // The primary is about to go: the apex goes back to the target's own pods, as
        // it was before Serin (Flagger does the same).
        Box::pin(async move { self.switch(canary, ApexTarget::Target).await })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{CanaryService, CanarySpec, CustomMetadata, TargetRef, UnmanagedMetadata};
    use k8s_openapi::api::core::v1::ContainerPort;

    pub fn canary() -> Canary {
        let mut c = Canary::new(
            "podinfo",
            CanarySpec {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "podinfo".into(),
                },
                service: Some(CanaryService {
                    port: 9898,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("test".into());
        c
    }

    pub fn inputs() -> ServiceInputs {
        ServiceInputs {
            label_key: "app".into(),
            label_value: "podinfo".into(),
            container_ports: vec![],
        }
    }

    #[test]
    fn three_services_with_selectors_and_markers() {
        let [apex, primary, can] =
            render_services(&canary(), &inputs(), ApexTarget::Primary).unwrap();
        assert_eq!(apex.metadata.name.as_deref(), Some("podinfo"));
        assert_eq!(
            apex.data["spec"]["selector"],
            json!({"app": "podinfo-primary"})
        );
        assert_eq!(primary.metadata.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(
            primary.data["spec"]["selector"],
            json!({"app": "podinfo-primary"})
        );
        assert_eq!(can.metadata.name.as_deref(), Some("podinfo-canary"));
        assert_eq!(can.data["spec"]["selector"], json!({"app": "podinfo"}));
        assert_eq!(
            apex.data["spec"]["ports"],
            json!([{"name": "http", "port": 9898, "protocol": "TCP", "targetPort": 9898}])
        );
        assert_eq!(
            apex.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "serin"
        );
        assert_eq!(
            apex.metadata.annotations.as_ref().unwrap()["serin.dev/canary"],
            "podinfo"
        );
        assert!(apex.data["spec"].get("clusterIP").is_none());
        let [switched, ..] = render_services(&canary(), &inputs(), ApexTarget::Target).unwrap();
        assert_eq!(switched.data["spec"]["selector"], json!({"app": "podinfo"}));
        assert_eq!(apex_target_of(&switched), ApexTarget::Target);
        assert_eq!(apex_target_of(&apex), ApexTarget::Primary);
    }

    #[test]
    fn ports_discovery_headless_and_custom_metadata() {
        let mut c = canary();
        let svc = c.spec.service.as_mut().unwrap();
        svc.port_name = Some("web".into());
        svc.target_port = Some(IntOrString::String("http".into()));
        svc.app_protocol = Some("http".into());
        svc.port_discovery = Some(true);
        svc.headless = Some(true);
        svc.apex = Some(CustomMetadata {
            labels: Some(
                [
                    ("team".to_string(), "a".to_string()),
                    ("owned-elsewhere".to_string(), "x".to_string()),
                ]
                .into(),
            ),
            annotations: None,
        });
        svc.unmanaged_metadata = Some(UnmanagedMetadata {
            labels: Some(vec!["owned-elsewhere".into()]),
            annotations: None,
        });
        let mut inp = inputs();
        inp.container_ports = vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: 9898,
                ..Default::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: 9999,
                ..Default::default()
            },
            ContainerPort {
                name: None,
                container_port: 8080,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ];
        let [apex, ..] = render_services(&c, &inp, ApexTarget::Primary).unwrap();
        assert_eq!(
            apex.data["spec"]["ports"],
            json!([
                {"name": "web", "port": 9898, "protocol": "TCP", "targetPort": "http", "appProtocol": "http"},
                {"name": "grpc", "port": 9999, "protocol": "TCP", "targetPort": 9999},
                {"name": "tcp-8080", "port": 8080, "protocol": "UDP", "targetPort": 8080}
            ])
        );
        assert_eq!(apex.data["spec"]["clusterIP"], "None");
        let labels = apex.metadata.labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert!(!labels.contains_key("owned-elsewhere"));
    }

    #[test]
    fn missing_selector_label_is_an_error() {
        let mut inp = inputs();
        inp.label_value.clear();
        assert!(matches!(
            render_services(&canary(), &inp, ApexTarget::Primary),
            Err(RouterError::InvalidRoute(_))
        ));
    }
}
