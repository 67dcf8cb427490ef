//! Traefik router: a TraefikService `<apex>` (traefik.io/v1alpha1).
//!
//! The user's IngressRoute points at the TraefikService `<apex>` (kind TraefikService);
//! Serin owns that TraefikService and writes the split into it:
//! - weighted steps: `spec.weighted.services` = `<apex>-primary` and `<apex>-canary`
//!   (kind Service, the service port) with the weights;
//! - mirror steps: `spec.mirroring` with the main service `<apex>-primary` and a mirror
//!   to `<apex>-canary` at mirrorWeight percent (100 when unset). A mirror step with a
//!   canary weight above 0 mirrors from a second TraefikService `<apex>-weighted` that
//!   carries the split, so both hold at once.
//!
//! Traefik has no status on TraefikServices: `verify` only checks that it exists.
//! `finalize` points the TraefikService at the apex Service alone.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::apply;
use super::kubernetes::KubernetesRouter;
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, RoutingApis, ServiceInputs, api_resource,
    generated_object, require, routes_from, service_spec,
};
use crate::crd::Canary;

pub const GROUP: &str = "traefik.io";
pub const VERSION: &str = "v1alpha1";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TraefikServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted: Option<Weighted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirroring: Option<Mirroring>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Weighted {
    #[serde(default)]
    pub services: Vec<WeightedService>,
    /// Sticky sessions: Traefik sets the cookie to the chosen service and sends the
    /// requests carrying it to that service while it is in the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Sticky {
    pub cookie: StickyCookie,
}

/// Traefik 3.0's sticky cookie has no path or domain (it always sets `Path=/`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StickyCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WeightedService {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Mirroring {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default)]
    pub mirrors: Vec<MirrorService>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MirrorService {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

pub(crate) fn weighted_service(name: &str, port: i32, weight: u32) -> WeightedService {
    WeightedService {
        name: name.into(),
        kind: Some("Service".into()),
        port: Some(port),
        weight: Some(weight),
    }
}

pub fn weighted_name(canary: &Canary) -> String {
    format!("{}-weighted", canary.apex_name())
}

/// `(apex spec, spec of <apex>-weighted if a mirror step also splits)`.
pub fn render_specs(
    canary: &Canary,
    routes: Routes,
) -> Result<(TraefikServiceSpec, Option<TraefikServiceSpec>), RouterError> {
    routes.validate()?;
    let port = service_spec(canary)?.port;
    let (primary, canary_svc) = (canary.primary_service_name(), canary.canary_service_name());
    // A zero-weight service carries no traffic, and Traefik 3.0.4 drops the whole
    // TraefikService ("subset not found") when one has no endpoints, as the canary
    // scaled to zero has: leave it out (read back as weight 0).
    let both_zero = routes.primary == 0 && routes.canary == 0;
    let split = TraefikServiceSpec {
        weighted: Some(Weighted {
            services: [
                weighted_service(&primary, port, routes.primary),
                weighted_service(&canary_svc, port, routes.canary),
            ]
            .into_iter()
            .filter(|s| s.weight != Some(0) || both_zero)
            .collect(),
            sticky: None,
        }),
        mirroring: None,
    };
    if !routes.mirror {
        return Ok((split, None));
    }
    let mirror = MirrorService {
        name: canary_svc,
        kind: Some("Service".into()),
        port: Some(port),
        percent: Some(routes.mirror_weight.unwrap_or(100)),
    };
    let (main, nested) = if routes.canary == 0 {
        (
            Mirroring {
                name: primary,
                kind: Some("Service".into()),
                port: Some(port),
                mirrors: vec![mirror],
            },
            None,
        )
    } else {
        (
            Mirroring {
                name: weighted_name(canary),
                kind: Some("TraefikService".into()),
                port: None,
                mirrors: vec![mirror],
            },
            Some(split),
        )
    };
    Ok((
        TraefikServiceSpec {
            weighted: None,
            mirroring: Some(main),
        },
        nested,
    ))
}

/// Reads the split back; `nested` is `<apex>-weighted` when the apex mirrors from it.
pub fn routes_of(
    canary: &Canary,
    apex: &TraefikServiceSpec,
    nested: Option<&TraefikServiceSpec>,
) -> Result<Routes, RouterError> {
    let (primary, canary_svc) = (canary.primary_service_name(), canary.canary_service_name());
    let weights = |s: &TraefikServiceSpec| -> Option<(u32, u32)> {
        let w = s.weighted.as_ref()?;
        let get = |n: &str| {
            w.services
                .iter()
                .find(|x| x.name == n)
                .map(|x| x.weight.unwrap_or(1))
        };
        // A service left out has weight 0; a split naming neither is not ours.
        match (get(&primary), get(&canary_svc)) {
            (None, None) => None,
            (p, c) => Some((p.unwrap_or(0), c.unwrap_or(0))),
        }
    };
    if let Some(m) = &apex.mirroring {
        let mirror = m.mirrors.iter().find(|x| x.name == canary_svc);
        let (p, c) = if m.name == primary {
            (100, 0)
        } else {
            nested.and_then(weights).ok_or_else(|| {
                RouterError::InvalidRoute(format!(
                    "TraefikService {} mirrors from {} which has no split",
                    canary.apex_name(),
                    m.name
                ))
            })?
        };
        // 100% is what an unset mirrorWeight is written as.
        return routes_from(
            p,
            c,
            mirror.is_some(),
            mirror.and_then(|x| x.percent).filter(|p| *p != 100),
        );
    }
    let (p, c) = weights(apex).ok_or_else(|| {
        RouterError::InvalidRoute(format!(
            "TraefikService {} has no weighted {primary}/{canary_svc}",
            canary.apex_name()
        ))
    })?;
    routes_from(p, c, false, None)
}

/// Finalize: the apex Service alone (it then selects the target's pods) until the
/// TraefikService is garbage-collected with the Canary.
pub fn finalized_spec(canary: &Canary) -> Result<TraefikServiceSpec, RouterError> {
    let port = service_spec(canary)?.port;
    Ok(TraefikServiceSpec {
        weighted: Some(Weighted {
            services: vec![weighted_service(&canary.apex_name(), port, 100)],
            sticky: None,
        }),
        mirroring: None,
    })
}

pub struct TraefikRouter {
    k8s: KubernetesRouter,
    client: kube::Client,
    apis: RoutingApis,
}

impl TraefikRouter {
    /// Reads the backend Services from a watch cache (see `KubernetesRouter`).
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.k8s = self.k8s.with_services(services);
        self
    }

    pub fn new(client: kube::Client, apis: RoutingApis) -> Self {
        TraefikRouter {
            k8s: KubernetesRouter::new(client.clone(), false),
            client,
            apis,
        }
    }

    fn resource(&self) -> Result<kube::api::ApiResource, RouterError> {
        require(self.apis.traefik, "traefik", GROUP, "TraefikService")?;
        Ok(api_resource(
            GROUP,
            VERSION,
            "TraefikService",
            "traefikservices",
        ))
    }

    async fn live_spec(
        &self,
        canary: &Canary,
        name: &str,
    ) -> Result<Option<(kube::api::DynamicObject, TraefikServiceSpec)>, RouterError> {
        let ar = self.resource()?;
        let ns = canary.namespace_or_default();
        let Some(live) =
            apply::get_opt(&apply::dyn_api(&self.client, &ar, &ns), &ar, &ns, name).await?
        else {
            return Ok(None);
        };
        let spec = serde_json::from_value(live.data.get("spec").cloned().unwrap_or_default())
            .map_err(|source| RouterError::Serde {
                context: format!("read TraefikService {ns}/{name}"),
                source,
            })?;
        Ok(Some((live, spec)))
    }

    async fn current(&self, canary: &Canary) -> Result<Option<Routes>, RouterError> {
        let Some((_, apex)) = self.live_spec(canary, &canary.apex_name()).await? else {
            return Ok(None);
        };
        let nested = match &apex.mirroring {
            Some(m) if m.name == weighted_name(canary) => {
                self.live_spec(canary, &m.name).await?.map(|(_, s)| s)
            }
            _ => None,
        };
        routes_of(canary, &apex, nested.as_ref()).map(Some)
    }

    async fn write(&self, canary: &Canary, routes: Routes) -> Result<(), RouterError> {
        let ar = self.resource()?;
        let (apex, nested) = render_specs(canary, routes)?;
        let custom = canary.spec.service.as_ref().and_then(|s| s.apex.as_ref());
        let to_obj = |name: &str,
                      spec: &TraefikServiceSpec|
         -> Result<kube::api::DynamicObject, RouterError> {
            let v = serde_json::to_value(spec).map_err(|source| RouterError::Serde {
                context: format!("render TraefikService {name}"),
                source,
            })?;
            Ok(generated_object(
                canary,
                &ar,
                name,
                custom,
                json!({ "spec": v }),
            ))
        };
        // The nested split must exist before the apex mirrors from it.
        if let Some(n) = &nested {
            apply::ensure(
                &self.client,
                &ar,
                to_obj(&weighted_name(canary), n)?,
                &["/spec"],
            )
            .await?;
        }
        apply::ensure(
            &self.client,
            &ar,
            to_obj(&canary.apex_name(), &apex)?,
            &["/spec"],
        )
        .await?;
        if nested.is_none() {
            apply::delete_if_present(
                &self.client,
                &ar,
                &canary.namespace_or_default(),
                &weighted_name(canary),
            )
            .await?;
        }
        Ok(())
    }
}

impl Router for TraefikRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.resource()?;
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
            self.resource()?;
            self.k8s.require_backends(canary).await?;
            self.write(canary, routes).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            self.current(canary)
                .await?
                .ok_or_else(|| RouterError::NotFound {
                    kind: "TraefikService".into(),
                    namespace: canary.namespace_or_default(),
                    name: canary.apex_name(),
                })
        })
    }

    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        Box::pin(async move {
            match self.live_spec(canary, &canary.apex_name()).await? {
                Some(_) => Ok(RouteStatus::Unknown(
                    "Traefik writes no status on TraefikServices".into(),
                )),
                None => Err(RouterError::NotFound {
                    kind: "TraefikService".into(),
                    namespace: canary.namespace_or_default(),
                    name: canary.apex_name(),
                }),
            }
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.k8s.finalize(canary).await?;
            let Some((live, _)) = self.live_spec(canary, &canary.apex_name()).await? else {
                return Ok(());
            };
            let spec = finalized_spec(canary)?;
            let v = serde_json::to_value(&spec).map_err(|source| RouterError::Serde {
                context: format!("render TraefikService {}", canary.apex_name()),
                source,
            })?;
            let ar = self.resource()?;
            apply::patch_user_object(&self.client, &ar, &live, &[("/spec", v)]).await?;
            apply::delete_if_present(
                &self.client,
                &ar,
                &canary.namespace_or_default(),
                &weighted_name(canary),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::kubernetes::tests::canary;
    use pretty_assertions::assert_eq;

    #[test]
    fn weighted_services() {
        let (apex, nested) = render_specs(&canary(), Routes::weighted(25)).unwrap();
        assert!(nested.is_none());
        assert_eq!(
            serde_json::to_value(&apex).unwrap(),
            json!({"weighted": {"services": [
                {"name": "podinfo-primary", "kind": "Service", "port": 9898, "weight": 75},
                {"name": "podinfo-canary", "kind": "Service", "port": 9898, "weight": 25}
            ]}})
        );
        assert_eq!(
            routes_of(&canary(), &apex, None).unwrap(),
            Routes::weighted(25)
        );
    }

    #[test]
    fn finalize_points_at_the_apex() {
        assert_eq!(
            serde_json::to_value(finalized_spec(&canary()).unwrap()).unwrap(),
            json!({"weighted": {"services": [{"name": "podinfo", "kind": "Service", "port": 9898, "weight": 100}]}})
        );
    }

    #[test]
    fn zero_weight_services_are_left_out_and_read_back_as_zero() {
        for (routes, only) in [
            (Routes::weighted(0), "podinfo-primary"),
            (Routes::weighted(100), "podinfo-canary"),
        ] {
            let (apex, _) = render_specs(&canary(), routes).unwrap();
            let names: Vec<_> = apex
                .weighted
                .as_ref()
                .unwrap()
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, [only]);
            assert_eq!(routes_of(&canary(), &apex, None).unwrap(), routes);
        }
        let empty = TraefikServiceSpec {
            weighted: Some(Weighted {
                services: vec![],
                sticky: None,
            }),
            mirroring: None,
        };
        assert!(routes_of(&canary(), &empty, None).is_err());
    }

    #[test]
    fn mirroring_from_primary_and_from_a_split() {
        let m = Routes {
            primary: 100,
            canary: 0,
            mirror: true,
            mirror_weight: Some(30),
        };
        let (apex, nested) = render_specs(&canary(), m).unwrap();
        assert!(nested.is_none());
        assert_eq!(
            serde_json::to_value(&apex).unwrap(),
            json!({"mirroring": {"name": "podinfo-primary", "kind": "Service", "port": 9898, "mirrors": [
                {"name": "podinfo-canary", "kind": "Service", "port": 9898, "percent": 30}
            ]}})
        );
        assert_eq!(routes_of(&canary(), &apex, None).unwrap(), m);
        let both = Routes {
            primary: 80,
            canary: 20,
            mirror: true,
            mirror_weight: None,
        };
        let (apex, nested) = render_specs(&canary(), both).unwrap();
        let mir = apex.mirroring.as_ref().unwrap();
        assert_eq!(
            (mir.name.as_str(), mir.kind.as_deref()),
            ("podinfo-weighted", Some("TraefikService"))
        );
        assert_eq!(mir.mirrors[0].percent, Some(100));
        assert_eq!(routes_of(&canary(), &apex, nested.as_ref()).unwrap(), both);
        assert!(routes_of(&canary(), &apex, None).is_err());
    }
}
