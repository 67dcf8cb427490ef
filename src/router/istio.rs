//! Istio router: a VirtualService `<apex>` and DestinationRules `<apex>-primary` and
//! `<apex>-canary` (networking.istio.io, `v1beta1` or `v1` as discovered).
//!
//! - DestinationRules: `host` = the `-primary`/`-canary` Service, `trafficPolicy` from
//!   `service.trafficPolicy` as written (TLS mode, load balancer, ...), so that both
//!   versions get the same policy.
//! - VirtualService: `hosts` = `service.hosts` plus the apex name (unless `*` or already
//!   there), `gateways` = `service.gateways` or `mesh`; with `service.delegation` both
//!   are empty (a delegate VirtualService must have none, and setting hosts or gateways
//!   with delegation is refused). One HTTP route carries `service.match`, `rewrite`
//!   (uri/authority), `timeout`, `retries`, `corsPolicy`, `headers` and the weighted
//!   destinations; with `appProtocol: tcp` a TCP route (port matches) instead.
//! - A/B: a first route whose matches are each `analysis.match` entry merged with each
//!   `service.match`, with the weighted destinations, then a route to the primary.
//! - Mirror steps: `mirror` = the canary host and `mirrorPercentage` = mirrorWeight.
//! - Session affinity (as Flagger): the canary destination of the weighted route adds
//!   `Set-Cookie` to responses, and a route named `sticky-route` sends requests that
//!   carry the cookie to the canary; at canary weight 0, the sticky route sends the
//!   previous run's cookie to the primary and expires it.
//!
//! Destinations carry a port only with `portDiscovery` behind a non-mesh gateway or
//! with delegation (Flagger's rule: then the Service has several ports to choose from).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::apply;
use super::kubernetes::KubernetesRouter;
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, RoutingApis, ServiceInputs, api_resource,
    build_set_cookie, cookie_regex, generated_object, primary_session_cookie, require, routes_from,
    service_spec, session_cookie,
};
use crate::crd::{
    Canary, CorsPolicy, DEFAULT_SESSION_COOKIE_MAX_AGE, HeaderOperation, HeaderOperations,
    HttpMatchRequest, HttpRetry, StringMatch,
};

pub const GROUP: &str = "networking.istio.io";
pub const STICKY_ROUTE: &str = "sticky-route";
pub const STICKY_PRIMARY_ROUTE: &str = "sticky-route-primary";

fn is_sticky(h: &HttpRoute) -> bool {
    h.name
        .as_deref()
        .is_some_and(|n| n == STICKY_ROUTE || n == STICKY_PRIMARY_ROUTE)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TcpRoute {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<Destination>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Destination {
    pub destination: Target,
    #[serde(default)]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderOperations>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Target {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Percent {
    pub value: f64,
}

fn is_tcp(canary: &Canary) -> bool {
    canary
        .spec
        .service
        .as_ref()
        .and_then(|s| s.app_protocol.as_deref())
        .is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
}

fn destination(canary: &Canary, host: &str, weight: u32) -> Result<Destination, RouterError> {
    let svc = service_spec(canary)?;
    let behind_gateway = svc
        .gateways
        .as_ref()
        .and_then(|g| g.first())
        .is_some_and(|g| g != "mesh");
    let port = (svc.port_discovery == Some(true)
        && (behind_gateway || svc.delegation == Some(true)))
    .then_some(PortSelector {
        number: svc.port as u32,
    });
    Ok(Destination {
        destination: Target {
            host: host.into(),
            port,
        },
        weight,
        headers: None,
    })
}

/// Merges each `extra` match into each base match (Flagger's mergeMatchConditions).
fn merge_matches(extra: &[HttpMatchRequest], base: &[HttpMatchRequest]) -> Vec<HttpMatchRequest> {
    if base.is_empty() {
        return extra.to_vec();
    }
    let mut out = Vec::new();
    for e in extra {
        for b in base {
            let mut m = b.clone();
            if let Some(h) = &e.headers {
                m.headers
                    .get_or_insert_with(Default::default)
                    .extend(h.clone());
            }
            if let Some(q) = &e.query_params {
                m.query_params
                    .get_or_insert_with(Default::default)
                    .extend(q.clone());
            }
            if let Some(s) = &e.source_labels {
                m.source_labels
                    .get_or_insert_with(Default::default)
                    .extend(s.clone());
            }
            out.push(m);
        }
    }
    out
}

fn cookie_match(cookie: &str) -> HttpMatchRequest {
    HttpMatchRequest {
        headers: Some(
            [(
                "Cookie".to_string(),
                StringMatch {
                    regex: Some(cookie_regex(cookie)),
                    ..Default::default()
                },
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn set_cookie_headers(value: String) -> HeaderOperations {
    HeaderOperations {
        request: None,
        response: Some(HeaderOperation {
            add: Some([("Set-Cookie".to_string(), value)].into()),
            ..Default::default()
        }),
    }
}

/// The VirtualService spec for `routes`.
pub fn render_virtual_service_spec(
    canary: &Canary,
    routes: Routes,
) -> Result<VirtualServiceSpec, RouterError> {
    routes.validate()?;
    let svc = service_spec(canary)?;
    let apex = canary.apex_name();
    let (primary, canary_svc) = (canary.primary_service_name(), canary.canary_service_name());
    let delegation = svc.delegation == Some(true);
    let user_hosts = svc.hosts.clone().unwrap_or_default();
    let user_gateways = svc.gateways.clone().unwrap_or_default();
    if delegation && (!user_hosts.is_empty() || !user_gateways.is_empty()) {
        return Err(RouterError::InvalidRoute(
            "service.delegation: a delegate VirtualService cannot have hosts or gateways".into(),
        ));
    }
    let (hosts, gateways) = if delegation {
        (vec![], vec![])
    } else {
        let mut hosts = user_hosts;
        if !hosts.iter().any(|h| h == &apex || h == "*") {
            hosts.push(apex.clone());
        }
        let gateways = if user_gateways.is_empty() {
            vec!["mesh".to_string()]
        } else {
            user_gateways
        };
        (hosts, gateways)
    };
    let weighted = vec![
        destination(canary, &primary, routes.primary)?,
        destination(canary, &canary_svc, routes.canary)?,
    ];
    if is_tcp(canary) {
        let matches = svc
            .r#match
            .iter()
            .flatten()
            .filter_map(|m| m.port.map(|p| json!({ "port": p })))
            .collect();
        return Ok(VirtualServiceSpec {
            hosts,
            gateways,
            tcp: vec![TcpRoute {
                r#match: matches,
                route: weighted,
            }],
            ..Default::default()
        });
    }
    let service_match = svc.r#match.clone().unwrap_or_default();
    let rewrite = svc.rewrite.as_ref().and_then(|r| {
        let mut m = serde_json::Map::new();
        if let Some(u) = &r.uri {
            m.insert("uri".into(), json!(u));
        }
        if let Some(a) = &r.authority {
            m.insert("authority".into(), json!(a));
        }
        (!m.is_empty()).then_some(Value::Object(m))
    });
    let base = HttpRoute {
        r#match: service_match.clone(),
        rewrite,
        timeout: svc.timeout.clone(),
        retries: svc.retries.clone(),
        cors_policy: svc.cors_policy.clone(),
        headers: svc.headers.clone(),
        ..Default::default()
    };
    let mut weighted_route = HttpRoute {
        route: weighted,
        ..base.clone()
    };
    if routes.mirror {
        weighted_route.mirror = Some(Target {
            host: canary_svc.clone(),
            port: None,
        });
        weighted_route.mirror_percentage =
            routes.mirror_weight.map(|w| Percent { value: w as f64 });
    }

    let analysis = canary.spec.analysis.as_ref();
    let ab: Vec<HttpMatchRequest> = analysis
        .and_then(|a| a.r#match.as_ref())
        .into_iter()
        .flatten()
        .map(|m| HttpMatchRequest {
            headers: m.headers.clone(),
            query_params: m.query_params.clone(),
            source_labels: m.source_labels.clone(),
            ..Default::default()
        })
        .collect();
    let mut http = Vec::new();
    if !ab.is_empty() {
        http.push(HttpRoute {
            r#match: merge_matches(&ab, &service_match),
            ..weighted_route
        });
        http.push(HttpRoute {
            route: vec![destination(canary, &primary, 100)?],
            ..base
        });
    } else if let Some(sa) = analysis.and_then(|a| a.session_affinity.as_ref()) {
        let max_age = sa.max_age.unwrap_or(DEFAULT_SESSION_COOKIE_MAX_AGE);
        let status = canary.status_or_default();
        if routes.canary > 0 {
            let cookie = session_cookie(canary, sa);
            for d in &mut weighted_route.route {
                if d.destination.host == canary_svc {
                    d.headers = Some(set_cookie_headers(build_set_cookie(&cookie, sa, max_age)));
                }
            }
            http.push(HttpRoute {
                name: Some(STICKY_ROUTE.into()),
                r#match: merge_matches(&[cookie_match(&cookie)], &service_match),
                route: vec![
                    destination(canary, &primary, 0)?,
                    destination(canary, &canary_svc, 100)?,
                ],
                mirror: None,
                mirror_percentage: None,
                ..weighted_route.clone()
            });
            // With primaryCookieName, sessions first answered by the primary stay there.
            if let Some(pcookie) = primary_session_cookie(canary, sa) {
                for d in &mut weighted_route.route {
                    if d.destination.host == primary {
                        d.headers =
                            Some(set_cookie_headers(build_set_cookie(&pcookie, sa, max_age)));
                    }
                }
                http.push(HttpRoute {
                    name: Some(STICKY_PRIMARY_ROUTE.into()),
                    r#match: merge_matches(&[cookie_match(&pcookie)], &service_match),
                    route: vec![
                        destination(canary, &primary, 100)?,
                        destination(canary, &canary_svc, 0)?,
                    ],
                    mirror: None,
                    mirror_percentage: None,
                    ..weighted_route.clone()
                });
            }
        } else {
            // No canary traffic: sessions carrying the run's cookie (the previous one
            // recorded in the status, else this revision's) go to the primary and the
            // cookie is expired.
            let prev = status
                .previous_session_affinity_cookie
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| session_cookie(canary, sa));
            let mut to_primary = destination(canary, &primary, 100)?;
            to_primary.headers = Some(set_cookie_headers(build_set_cookie(&prev, sa, -1)));
            http.push(HttpRoute {
                name: Some(STICKY_ROUTE.into()),
                r#match: merge_matches(&[cookie_match(&prev)], &service_match),
                route: vec![to_primary],
                ..base.clone()
            });
        }
        http.push(weighted_route);
    } else {
        http.push(weighted_route);
    }
    Ok(VirtualServiceSpec {
        hosts,
        gateways,
        http,
        tcp: vec![],
    })
}

/// Reads the split from the first non-sticky route that has both destinations.
pub fn routes_of_virtual_service(
    canary: &Canary,
    spec: &VirtualServiceSpec,
) -> Result<Routes, RouterError> {
    let (primary, canary_svc) = (canary.primary_service_name(), canary.canary_service_name());
    let w = |route: &[Destination], host: &str| {
        route
            .iter()
            .find(|d| d.destination.host == host)
            .map(|d| d.weight)
    };
    if is_tcp(canary) {
        for t in &spec.tcp {
            if let (Some(p), Some(c)) = (w(&t.route, &primary), w(&t.route, &canary_svc)) {
                return routes_from(p, c, false, None);
            }
        }
    }
    for h in spec.http.iter().filter(|h| !is_sticky(h)) {
        if let (Some(p), Some(c)) = (w(&h.route, &primary), w(&h.route, &canary_svc)) {
            let mirror = h.mirror.as_ref().is_some_and(|m| m.host == canary_svc);
            let mw = h.mirror_percentage.as_ref().map(|p| p.value.round() as u32);
            return routes_from(p, c, mirror, mw.filter(|_| mirror));
        }
    }
    Err(RouterError::InvalidRoute(format!(
        "VirtualService {} has no route to both {primary} and {canary_svc}",
        canary.apex_name()
    )))
}

pub fn render_destination_rules(
    canary: &Canary,
    ar: &kube::api::ApiResource,
) -> Result<[kube::api::DynamicObject; 2], RouterError> {
    let svc = service_spec(canary)?;
    let one = |host: String, custom| {
        let mut spec = json!({ "host": host });
        if let Some(tp) = &svc.traffic_policy {
            spec["trafficPolicy"] = tp.clone();
        }
        generated_object(canary, ar, &host, custom, json!({ "spec": spec }))
    };
    Ok([
        one(canary.primary_service_name(), svc.primary.as_ref()),
        one(canary.canary_service_name(), svc.canary.as_ref()),
    ])
}

pub fn render_virtual_service(
    canary: &Canary,
    routes: Routes,
    ar: &kube::api::ApiResource,
) -> Result<kube::api::DynamicObject, RouterError> {
    let spec = render_virtual_service_spec(canary, routes)?;
    let spec = serde_json::to_value(spec).map_err(|source| RouterError::Serde {
        context: format!("render VirtualService {}", canary.apex_name()),
        source,
    })?;
    let custom = canary.spec.service.as_ref().and_then(|s| s.apex.as_ref());
    Ok(generated_object(
        canary,
        ar,
        &canary.apex_name(),
        custom,
        json!({ "spec": spec }),
    ))
}

/// Finalize: until the VirtualService is garbage-collected with the Canary, every route
/// sends everything to the apex host, which finalize points at the target's pods.
pub fn finalize_virtual_service(
    canary: &Canary,
    spec: &mut VirtualServiceSpec,
) -> Result<(), RouterError> {
    let apex = destination(canary, &canary.apex_name(), 100)?;
    spec.http.retain(|h| !is_sticky(h));
    for h in &mut spec.http {
        h.route = vec![apex.clone()];
        h.mirror = None;
        h.mirror_percentage = None;
    }
    for t in &mut spec.tcp {
        t.route = vec![apex.clone()];
    }
    Ok(())
}

pub struct IstioRouter {
    k8s: KubernetesRouter,
    client: kube::Client,
    apis: RoutingApis,
    live: Option<std::sync::Arc<dyn apply::LiveObjects>>,
}

impl IstioRouter {
    /// Reads the backend Services from a watch cache (see `KubernetesRouter`).
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.k8s = self.k8s.with_services(services);
        self
    }

    /// Reads the VirtualService and DestinationRules from a watch cache of Serin's
    /// objects: a step then writes without reading first.
    pub fn with_live(mut self, live: std::sync::Arc<dyn apply::LiveObjects>) -> Self {
        self.live = Some(live);
        self
    }

    pub fn new(client: kube::Client, apis: RoutingApis) -> Self {
        IstioRouter {
            k8s: KubernetesRouter::new(client.clone(), false),
            client,
            apis,
            live: None,
        }
    }

    fn version(&self) -> String {
        self.apis
            .istio_version
            .clone()
            .unwrap_or_else(|| "v1beta1".into())
    }

    fn vs_resource(&self) -> Result<kube::api::ApiResource, RouterError> {
        require(self.apis.istio, "istio", GROUP, "VirtualService")?;
        Ok(api_resource(
            GROUP,
            &self.version(),
            "VirtualService",
            "virtualservices",
        ))
    }

    fn dr_resource(&self) -> kube::api::ApiResource {
        api_resource(
            GROUP,
            &self.version(),
            "DestinationRule",
            "destinationrules",
        )
    }

    async fn live_spec(
        &self,
        canary: &Canary,
    ) -> Result<Option<(kube::api::DynamicObject, VirtualServiceSpec)>, RouterError> {
        let ar = self.vs_resource()?;
        let ns = canary.namespace_or_default();
        let name = canary.apex_name();
        let cached = self.live.as_ref().and_then(|c| c.live(&ar, &ns, &name));
        let live = match cached {
            Some(l) => l,
            None => {
                match apply::get_opt(&apply::dyn_api(&self.client, &ar, &ns), &ar, &ns, &name)
                    .await?
                {
                    Some(l) => l,
                    None => return Ok(None),
                }
            }
        };
        let spec = serde_json::from_value(live.data.get("spec").cloned().unwrap_or_default())
            .map_err(|source| RouterError::Serde {
                context: format!("read VirtualService {ns}/{name}"),
                source,
            })?;
        Ok(Some((live, spec)))
    }

    async fn write(&self, canary: &Canary, routes: Routes) -> Result<(), RouterError> {
        let ar = self.vs_resource()?;
        let vs = render_virtual_service(canary, routes, &ar)?;
        apply::ensure_from(&self.client, &ar, vs, &["/spec"], &[], self.live.as_deref()).await?;
        Ok(())
    }
}

impl Router for IstioRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.vs_resource()?;
            // Validate the VirtualService before writing anything.
            render_virtual_service_spec(canary, Routes::PRIMARY)?;
            self.k8s.reconcile_services(canary, inputs).await?;
            let dr = self.dr_resource();
            for obj in render_destination_rules(canary, &dr)? {
                apply::ensure_from(
                    &self.client,
                    &dr,
                    obj,
                    &["/spec"],
                    &[],
                    self.live.as_deref(),
                )
                .await?;
            }
            let current = match self.live_spec(canary).await? {
                Some((_, spec)) => {
                    routes_of_virtual_service(canary, &spec).unwrap_or(Routes::PRIMARY)
                }
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
            self.vs_resource()?;
            self.k8s.require_backends(canary).await?;
            self.write(canary, routes).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            let (_, spec) = self
                .live_spec(canary)
                .await?
                .ok_or_else(|| RouterError::NotFound {
                    kind: "VirtualService".into(),
                    namespace: canary.namespace_or_default(),
                    name: canary.apex_name(),
                })?;
            routes_of_virtual_service(canary, &spec)
        })
    }

    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        Box::pin(async move {
            // Istio reports config problems through istioctl analyze, not on the object.
            match self.live_spec(canary).await? {
                Some(_) => Ok(RouteStatus::Accepted),
                None => Err(RouterError::NotFound {
                    kind: "VirtualService".into(),
                    namespace: canary.namespace_or_default(),
                    name: canary.apex_name(),
                }),
            }
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.k8s.finalize(canary).await?;
            let Some((live, mut spec)) = self.live_spec(canary).await? else {
                return Ok(());
            };
            finalize_virtual_service(canary, &mut spec)?;
            let v = serde_json::to_value(&spec).map_err(|source| RouterError::Serde {
                context: format!("render VirtualService {}", canary.apex_name()),
                source,
            })?;
            apply::patch_user_object(&self.client, &self.vs_resource()?, &live, &[("/spec", v)])
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AbMatch, CanaryAnalysis, HttpRewrite, SessionAffinity};
    use crate::router::kubernetes::tests::canary;
    use pretty_assertions::assert_eq;

    fn dest(host: &str, w: u32) -> Value {
        json!({"destination": {"host": host}, "weight": w})
    }

    #[test]
    fn weighted_virtual_service_with_service_options() {
        let mut c = canary();
        let s = c.spec.service.as_mut().unwrap();
        s.hosts = Some(vec!["app.example.com".into()]);
        s.gateways = Some(vec!["public-gateway.istio-system.svc.cluster.local".into()]);
        s.timeout = Some("30s".into());
        s.retries = Some(HttpRetry {
            attempts: Some(3),
            per_try_timeout: Some("1s".into()),
            retry_on: Some("5xx".into()),
        });
        s.rewrite = Some(HttpRewrite {
            uri: Some("/".into()),
            authority: None,
            r#type: Some("ReplacePrefixMatch".into()),
        });
        s.r#match = Some(vec![HttpMatchRequest {
            uri: Some(StringMatch {
                prefix: Some("/api".into()),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let v =
            serde_json::to_value(render_virtual_service_spec(&c, Routes::weighted(40)).unwrap())
                .unwrap();
        assert_eq!(
            v,
            json!({
                "hosts": ["app.example.com", "podinfo"],
                "gateways": ["public-gateway.istio-system.svc.cluster.local"],
                "http": [{
                    "match": [{"uri": {"prefix": "/api"}}],
                    "route": [dest("podinfo-primary", 60), dest("podinfo-canary", 40)],
                    "rewrite": {"uri": "/"},
                    "timeout": "30s",
                    "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"}
                }]
            })
        );
        let spec: VirtualServiceSpec = serde_json::from_value(v).unwrap();
        assert_eq!(
            routes_of_virtual_service(&c, &spec).unwrap(),
            Routes::weighted(40)
        );
    }

    #[test]
    fn mesh_default_delegation_and_tcp() {
        let c = canary();
        let spec = render_virtual_service_spec(&c, Routes::PRIMARY).unwrap();
        assert_eq!(
            (spec.hosts.clone(), spec.gateways.clone()),
            (vec!["podinfo".to_string()], vec!["mesh".to_string()])
        );
        let mut d = canary();
        d.spec.service.as_mut().unwrap().delegation = Some(true);
        let spec = render_virtual_service_spec(&d, Routes::PRIMARY).unwrap();
        assert!(spec.hosts.is_empty() && spec.gateways.is_empty());
        d.spec.service.as_mut().unwrap().hosts = Some(vec!["x".into()]);
        assert!(matches!(
            render_virtual_service_spec(&d, Routes::PRIMARY),
            Err(RouterError::InvalidRoute(_))
        ));
        let mut t = canary();
        t.spec.service.as_mut().unwrap().app_protocol = Some("TCP".into());
        let spec = render_virtual_service_spec(&t, Routes::weighted(20)).unwrap();
        assert!(spec.http.is_empty());
        assert_eq!(
            serde_json::to_value(&spec.tcp).unwrap(),
            json!([{"route": [dest("podinfo-primary", 80), dest("podinfo-canary", 20)]}])
        );
        assert_eq!(
            routes_of_virtual_service(&t, &spec).unwrap(),
            Routes::weighted(20)
        );
    }

    #[test]
    fn ab_and_mirror() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            r#match: Some(vec![AbMatch {
                headers: Some(
                    [(
                        "x-canary".to_string(),
                        StringMatch {
                            exact: Some("insider".into()),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let v =
            serde_json::to_value(render_virtual_service_spec(&c, Routes::weighted(100)).unwrap())
                .unwrap();
        assert_eq!(
            v["http"][0]["match"],
            json!([{"headers": {"x-canary": {"exact": "insider"}}}])
        );
        assert_eq!(
            v["http"][0]["route"],
            json!([dest("podinfo-primary", 0), dest("podinfo-canary", 100)])
        );
        assert_eq!(
            v["http"][1],
            json!({"route": [dest("podinfo-primary", 100)]})
        );

        let m = Routes {
            primary: 100,
            canary: 0,
            mirror: true,
            mirror_weight: Some(50),
        };
        let spec = render_virtual_service_spec(&canary(), m).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["http"][0]["mirror"], json!({"host": "podinfo-canary"}));
        assert_eq!(v["http"][0]["mirrorPercentage"], json!({"value": 50.0}));
        assert_eq!(routes_of_virtual_service(&canary(), &spec).unwrap(), m);
    }

    #[test]
    fn primary_cookie_sticky_route() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(SessionAffinity {
                cookie_name: "canary-c".into(),
                primary_cookie_name: Some("primary-c".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = render_virtual_service_spec(&c, Routes::weighted(20)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let pcookie = crate::router::primary_session_cookie(
            &c,
            c.spec
                .analysis
                .as_ref()
                .unwrap()
                .session_affinity
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        assert!(pcookie.starts_with("primary-c="), "{pcookie}");
        assert_eq!(v["http"][1]["name"], STICKY_PRIMARY_ROUTE);
        assert_eq!(
            v["http"][1]["route"],
            json!([dest("podinfo-primary", 100), dest("podinfo-canary", 0)])
        );
        assert_eq!(
            v["http"][2]["route"][0]["headers"]["response"]["add"]["Set-Cookie"],
            format!("{pcookie}; Max-Age=86400")
        );
        assert_eq!(
            routes_of_virtual_service(&c, &spec).unwrap(),
            Routes::weighted(20)
        );
    }

    #[test]
    fn session_affinity_sticky_route() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(SessionAffinity {
                cookie_name: "flagger-cookie".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut st = c.status_or_default();
        st.session_affinity_cookie = Some("flagger-cookie=xyz".into());
        c.status = Some(st);
        let spec = render_virtual_service_spec(&c, Routes::weighted(10)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["http"][0]["name"], STICKY_ROUTE);
        assert_eq!(
            v["http"][0]["match"],
            json!([{"headers": {"Cookie": {"regex": ".*flagger-cookie.*xyz.*"}}}])
        );
        assert_eq!(
            v["http"][0]["route"],
            json!([dest("podinfo-primary", 0), dest("podinfo-canary", 100)])
        );
        assert_eq!(
            v["http"][1]["route"][1]["headers"],
            json!({"response": {"add": {"Set-Cookie": "flagger-cookie=xyz; Max-Age=86400"}}})
        );
        assert_eq!(
            routes_of_virtual_service(&c, &spec).unwrap(),
            Routes::weighted(10)
        );
    }

    #[test]
    fn finalize_routes_everything_to_the_apex() {
        let m = Routes {
            primary: 100,
            canary: 0,
            mirror: true,
            mirror_weight: Some(5),
        };
        let mut spec = render_virtual_service_spec(&canary(), m).unwrap();
        finalize_virtual_service(&canary(), &mut spec).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"hosts": ["podinfo"], "gateways": ["mesh"], "http": [{"route": [dest("podinfo", 100)]}]})
        );
    }

    #[test]
    fn destination_rules_pass_traffic_policy_through() {
        let mut c = canary();
        c.spec.service.as_mut().unwrap().traffic_policy =
            Some(json!({"tls": {"mode": "ISTIO_MUTUAL"}}));
        let ar = api_resource(GROUP, "v1beta1", "DestinationRule", "destinationrules");
        let [p, k] = render_destination_rules(&c, &ar).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(
            p.data["spec"],
            json!({"host": "podinfo-primary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
        );
        assert_eq!(k.data["spec"]["host"], "podinfo-canary");
    }
}
