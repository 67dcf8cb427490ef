//! SMI router: a TrafficSplit `<apex>` (split.smi-spec.io v1alpha1, v1alpha2 or
//! v1alpha3, per `spec.provider`), for legacy Linkerd and OSM installations.
//!
//! `spec.service` is the apex Service (the root service clients call) and
//! `spec.backends` are `<apex>-primary` and `<apex>-canary` with the weights. In
//! v1alpha1 a weight is a resource.Quantity (written as a plain integer string such as
//! `"75"`, as Flagger does; read back in any Quantity form, e.g. `"750m"`, and
//! normalised to percent); in v1alpha2/3 it is an integer. SMI has no mirroring and no
//! status: mirror steps are refused and `verify` reports `Unknown`. `finalize` sends
//! everything to the apex Service (which then selects the target's pods).

use serde_json::{Value, json};

use super::apply;
use super::kubernetes::KubernetesRouter;
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, RoutingApis, ServiceInputs, api_resource,
    generated_object, require, routes_from,
};
use crate::crd::{Canary, SmiVersion};

pub const GROUP: &str = "split.smi-spec.io";

fn version_str(v: SmiVersion) -> &'static str {
    match v {
        SmiVersion::V1alpha1 => "v1alpha1",
        SmiVersion::V1alpha2 => "v1alpha2",
        SmiVersion::V1alpha3 => "v1alpha3",
    }
}

fn weight_value(v: SmiVersion, w: u32) -> Value {
    match v {
        SmiVersion::V1alpha1 => json!(w.to_string()),
        _ => json!(w),
    }
}

/// A Quantity or integer weight as a number (`"500m"` = 0.5).
pub fn parse_weight(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let (num, scale) = match s.strip_suffix('m') {
                Some(n) => (n, 0.001),
                None => match s.strip_suffix('k') {
                    Some(n) => (n, 1000.0),
                    None => (s, 1.0),
                },
            };
            num.parse::<f64>().ok().map(|x| x * scale)
        }
        _ => None,
    }
}

pub fn render_spec(canary: &Canary, routes: Routes, v: SmiVersion) -> Result<Value, RouterError> {
    routes.validate()?;
    if routes.mirror {
        return Err(RouterError::InvalidRoute(
            "SMI TrafficSplit cannot mirror traffic".into(),
        ));
    }
    Ok(json!({
        "service": canary.apex_name(),
        "backends": [
            {"service": canary.primary_service_name(), "weight": weight_value(v, routes.primary)},
            {"service": canary.canary_service_name(), "weight": weight_value(v, routes.canary)},
        ]
    }))
}

pub fn routes_of(canary: &Canary, spec: &Value) -> Result<Routes, RouterError> {
    let backends = spec
        .get("backends")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let w = |name: &str| {
        backends
            .iter()
            .find(|b| b.get("service").and_then(Value::as_str) == Some(name))
            .and_then(|b| b.get("weight").and_then(parse_weight))
    };
    let (Some(p), Some(c)) = (
        w(&canary.primary_service_name()),
        w(&canary.canary_service_name()),
    ) else {
        return Err(RouterError::InvalidRoute(format!(
            "TrafficSplit {} has no backends {} and {}",
            canary.apex_name(),
            canary.primary_service_name(),
            canary.canary_service_name()
        )));
    };
    let total = p + c;
    if total <= 0.0 {
        return Err(RouterError::InvalidWeights {
            primary: p as u32,
            canary: c as u32,
        });
    }
    let cw = (c * 100.0 / total).round() as u32;
    routes_from(100 - cw, cw, false, None)
}

/// Finalize: the apex Service as the only backend (it then selects the target's pods)
/// until the TrafficSplit is garbage-collected with the Canary.
pub fn finalized_backends(canary: &Canary, v: SmiVersion) -> Value {
    json!([{"service": canary.apex_name(), "weight": weight_value(v, 100)}])
}

pub struct SmiRouter {
    k8s: KubernetesRouter,
    client: kube::Client,
    apis: RoutingApis,
    version: SmiVersion,
}

impl SmiRouter {
    /// Reads the backend Services from a watch cache (see `KubernetesRouter`).
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.k8s = self.k8s.with_services(services);
        self
    }

    pub fn new(client: kube::Client, apis: RoutingApis, version: SmiVersion) -> Self {
        SmiRouter {
            k8s: KubernetesRouter::new(client.clone(), false),
            client,
            apis,
            version,
        }
    }

    fn resource(&self) -> Result<kube::api::ApiResource, RouterError> {
        let v = version_str(self.version);
        require(
            self.apis.smi_versions.iter().any(|s| s == v),
            "smi",
            GROUP,
            &format!("TrafficSplit ({v})"),
        )?;
        Ok(api_resource(GROUP, v, "TrafficSplit", "trafficsplits"))
    }

    async fn live(&self, canary: &Canary) -> Result<Option<kube::api::DynamicObject>, RouterError> {
        let ar = self.resource()?;
        let ns = canary.namespace_or_default();
        apply::get_opt(
            &apply::dyn_api(&self.client, &ar, &ns),
            &ar,
            &ns,
            &canary.apex_name(),
        )
        .await
    }

    async fn write(&self, canary: &Canary, routes: Routes) -> Result<(), RouterError> {
        let ar = self.resource()?;
        let spec = render_spec(canary, routes, self.version)?;
        let custom = canary.spec.service.as_ref().and_then(|s| s.apex.as_ref());
        let obj = generated_object(
            canary,
            &ar,
            &canary.apex_name(),
            custom,
            json!({ "spec": spec }),
        );
        apply::ensure(&self.client, &ar, obj, &["/spec"]).await?;
        Ok(())
    }

    fn not_found(canary: &Canary) -> RouterError {
        RouterError::NotFound {
            kind: "TrafficSplit".into(),
            namespace: canary.namespace_or_default(),
            name: canary.apex_name(),
        }
    }
}

impl Router for SmiRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.resource()?;
            self.k8s.reconcile_services(canary, inputs).await?;
            let current = match self.live(canary).await? {
                Some(l) => routes_of(canary, l.data.get("spec").unwrap_or(&Value::Null))
                    .unwrap_or(Routes::PRIMARY),
                None => Routes::PRIMARY,
            };
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
            self.resource()?;
            self.k8s.require_backends(canary).await?;
            self.write(canary, routes).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            let live = self
                .live(canary)
                .await?
                .ok_or_else(|| Self::not_found(canary))?;
            routes_of(canary, live.data.get("spec").unwrap_or(&Value::Null))
        })
    }

    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        Box::pin(async move {
            self.live(canary)
                .await?
                .ok_or_else(|| Self::not_found(canary))?;
            Ok(RouteStatus::Unknown(
                "SMI TrafficSplit has no status".into(),
            ))
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.k8s.finalize(canary).await?;
            let Some(live) = self.live(canary).await? else {
                return Ok(());
            };
            let backends = finalized_backends(canary, self.version);
            apply::patch_user_object(
                &self.client,
                &self.resource()?,
                &live,
                &[("/spec/backends", backends)],
            )
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::kubernetes::tests::canary;
    use pretty_assertions::assert_eq;

    #[test]
    fn v1alpha1_quantities_and_v1alpha2_integers() {
        let c = canary();
        let v1 = render_spec(&c, Routes::weighted(50), SmiVersion::V1alpha1).unwrap();
        assert_eq!(
            v1,
            json!({"service": "podinfo", "backends": [
                {"service": "podinfo-primary", "weight": "50"},
                {"service": "podinfo-canary", "weight": "50"}
            ]})
        );
        assert_eq!(routes_of(&c, &v1).unwrap(), Routes::weighted(50));
        let v2 = render_spec(&c, Routes::weighted(10), SmiVersion::V1alpha3).unwrap();
        assert_eq!(v2["backends"][1]["weight"], 10);
        assert_eq!(routes_of(&c, &v2).unwrap(), Routes::weighted(10));
        // Linkerd-style milli quantities normalise to percent.
        let milli = json!({"backends": [{"service": "podinfo-primary", "weight": "750m"}, {"service": "podinfo-canary", "weight": "250m"}]});
        assert_eq!(routes_of(&c, &milli).unwrap(), Routes::weighted(25));
        assert!(
            render_spec(
                &c,
                Routes {
                    mirror: true,
                    ..Routes::PRIMARY
                },
                SmiVersion::V1alpha2
            )
            .is_err()
        );
        assert_eq!(
            finalized_backends(&c, SmiVersion::V1alpha1),
            json!([{"service": "podinfo", "weight": "100"}])
        );
    }
}
