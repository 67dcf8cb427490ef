//! Routers make the data plane carry the split the state machine decides. One trait,
//! one file per adapter, chosen by `spec.provider`.
//!
//! Every Canary gets the `kubernetes` router's Services (apex, `-primary`, `-canary`);
//! a mesh or gateway router then adds its own objects on top, as Flagger does.
//!
//! Common to all adapters:
//! - Rendering is pure (`render_*` functions, unit-tested); I/O goes through
//!   [`apply`]: read (from a watch cache of Serin's generated objects where the
//!   router takes one, else a GET), compare, merge patch guarded by resourceVersion,
//!   only when a managed field differs.
//! - `reconcile` re-renders with the split read back from the live object, so an
//!   in-flight step is never reset; a new object starts at 100% primary.
//! - Before any write: the provider's API must be served (`MissingCrd`), referenced
//!   objects must exist (`NotFound`), and `set_routes` checks that `-primary` and
//!   `-canary` Services exist, so no route ever points at a missing Service.
//! - Generated objects carry `app.kubernetes.io/managed-by: serin`,
//!   `serin.dev/canary: <name>` and (set at creation) a controller owner reference to
//!   the Canary; user-owned objects (routeRef, the user's Ingress) never do.
//! - Session affinity cookies: see [`session_cookie`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use crate::crd::{
    CANARY_ANNOTATION, Canary, CanaryService, CustomMetadata, MANAGED_BY, MANAGED_BY_LABEL,
    Provider, SessionAffinity,
};

pub mod apply;
pub mod capabilities;
pub mod gatewayapi;
pub mod istio;
pub mod kubernetes;
pub mod nginx;
pub mod smi;
pub mod traefik;

pub use gatewayapi::GatewayApiRouter;
pub use istio::IstioRouter;
pub use kubernetes::KubernetesRouter;
pub use nginx::NginxRouter;
pub use smi::SmiRouter;
pub use traefik::TraefikRouter;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A traffic split. `primary + canary == 100`; `mirror` copies requests to the canary
/// (with `mirror_weight` percent, where the provider supports it) without answering
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    pub primary: u32,
    pub canary: u32,
    pub mirror: bool,
    pub mirror_weight: Option<u32>,
}

impl Routes {
    pub const PRIMARY: Routes = Routes {
        primary: 100,
        canary: 0,
        mirror: false,
        mirror_weight: None,
    };

    pub fn weighted(canary: u32) -> Routes {
        Routes {
            primary: 100u32.saturating_sub(canary),
            canary,
            mirror: false,
            mirror_weight: None,
        }
    }

    /// Weights are checked before any write so that no bad split reaches the data plane.
    pub fn validate(&self) -> Result<(), RouterError> {
        if self.primary > 100 || self.canary > 100 || self.primary + self.canary != 100 {
            return Err(RouterError::InvalidWeights {
                primary: self.primary,
                canary: self.canary,
            });
        }
        if let Some(m) = self.mirror_weight
            && m > 100
        {
            return Err(RouterError::InvalidWeights {
                primary: self.primary,
                canary: m,
            });
        }
        Ok(())
    }
}

/// Whether the data plane reports that it accepted the routing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteStatus {
    Accepted,
    /// The implementation writes no status (Traefik 3.0.4 for HTTPRoute); the reason
    /// is shown in the Canary status.
    Unknown(String),
    NotAccepted(String),
}

/// What routers need from the target workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceInputs {
    /// Label key selecting the target's pods (`app`, `name` or `app.kubernetes.io/name`).
    pub label_key: String,
    /// Its value on the target's (canary) pods; primary pods carry `<value>-primary`.
    pub label_value: String,
    /// Container ports of the target's pod template, for `service.portDiscovery`.
    pub container_ports: Vec<ContainerPort>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(
        "{kind}.{group} is not installed on this cluster (provider {provider}); once it is, \
         Serin uses it within --rediscover-seconds, without a restart"
    )]
    MissingCrd {
        provider: &'static str,
        group: String,
        kind: String,
    },
    #[error("{kind} {namespace}/{name} referenced by the Canary does not exist")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("invalid route: {0}")]
    InvalidRoute(String),
    /// The route would need a feature the data plane lacks: it is not written, so
    /// the data plane keeps serving the last route it accepted.
    #[error(
        "{feature} ({what}, from {origin}) is not supported by {implementation}: the route was not written"
    )]
    Unsupported {
        feature: &'static str,
        what: &'static str,
        origin: String,
        implementation: String,
    },
    #[error("invalid weights primary={primary} canary={canary}: each 0..=100, summing to 100")]
    InvalidWeights { primary: u32, canary: u32 },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {source}")]
    Serde {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

impl RouterError {
    /// Short CamelCase reason for the Canary's Ready condition.
    pub fn reason(&self) -> &'static str {
        match self {
            RouterError::MissingCrd { .. } => "RouterCrdMissing",
            RouterError::NotFound { .. } => "RouteReferenceNotFound",
            RouterError::InvalidRoute(_) => "InvalidRoute",
            RouterError::Unsupported { .. } => "UnsupportedFeature",
            RouterError::InvalidWeights { .. } => "InvalidWeights",
            RouterError::Kube { .. } | RouterError::Serde { .. } => "RouterError",
        }
    }
}

pub trait Router: Send + Sync {
    /// Creates or updates the routing objects. An in-flight split is kept: only a new
    /// object starts at 100% primary.
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Writes the split (after `Routes::validate`), only if it differs from what is there.
    fn set_routes<'a>(
        &'a self,
        canary: &'a Canary,
        routes: Routes,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Reads the split back from the routing object, the source of truth.
    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>>;

    /// Whether the data plane accepted the current routing object.
    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>>;

    /// On Canary deletion with `revertOnDeletion`: route everything back to the
    /// target's own pods and remove what only Serin needed.
    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>>;

    /// The routing object as written, for confirming it on the data plane; `None`
    /// from routers that do not confirm their writes (the default).
    fn written<'a>(
        &'a self,
        _canary: &'a Canary,
    ) -> BoxFuture<'a, Result<Option<Written>, RouterError>> {
        Box::pin(async { Ok(None) })
    }

    /// Records the live routing object as the last one the data plane confirmed.
    fn mark_confirmed<'a>(&'a self, _canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async { Ok(()) })
    }

    /// Writes back the last confirmed routing object exactly; `false` when there is
    /// none (or it is what is live already).
    fn restore_confirmed<'a>(
        &'a self,
        _canary: &'a Canary,
    ) -> BoxFuture<'a, Result<bool, RouterError>> {
        Box::pin(async { Ok(false) })
    }
}

/// A written routing object, for confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub kind: String,
    pub name: String,
    pub generation: Option<i64>,
    /// The generation last confirmed on the data plane.
    pub confirmed_generation: Option<i64>,
    /// A hostname the route serves, for a probe request through the gateway.
    pub host: Option<String>,
    /// A path the route serves (its first PathPrefix/Exact match, else `/`).
    pub path: String,
}

/// Which routing API versions this cluster serves, found by discovery at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingApis {
    /// `v1` or `v1beta1` for gateway.networking.k8s.io HTTPRoute, if served.
    pub httproute_version: Option<String>,
    pub grpcroute_version: Option<String>,
    pub istio: bool,
    pub traefik: bool,
    /// SMI split.smi-spec.io versions served.
    pub smi_versions: Vec<String>,
    /// networking.istio.io version to write VirtualServices/DestinationRules with
    /// (`v1` or `v1beta1`); `None` with `istio` means `v1beta1`.
    pub istio_version: Option<String>,
    /// Whether the installed HTTPRoute schema has `requestMirror.percent` (Gateway API
    /// >= 1.2); without it the field would be pruned and every compare would differ.
    pub gateway_mirror_percent: bool,
    /// Whether the installed HTTPRoute schema has `rules[].timeouts` (standard channel
    /// >= 1.2, experimental before); without it `service.timeout` is not written.
    pub gateway_timeouts: bool,
    /// `--gateway-features`: per GatewayClass controllerName, the complete feature
    /// list, over the built-in table (see [`capabilities`]).
    pub gateway_features: BTreeMap<String, std::collections::BTreeSet<capabilities::Feature>>,
}

impl RoutingApis {
    /// Everything served, with every optional field (Istio at `v1beta1`, which every
    /// Istio since 1.5 serves): for unit tests and for callers that cannot run discovery.
    pub fn all() -> RoutingApis {
        RoutingApis {
            httproute_version: Some("v1".into()),
            grpcroute_version: Some("v1".into()),
            istio: true,
            traefik: true,
            smi_versions: vec!["v1alpha1".into(), "v1alpha2".into(), "v1alpha3".into()],
            istio_version: Some("v1beta1".into()),
            gateway_mirror_percent: true,
            gateway_timeouts: true,
            gateway_features: BTreeMap::new(),
        }
    }
}

impl RoutingApis {
    /// The routing APIs `newer` serves that `self` does not (a CRD installed, or a
    /// newer version of one), by name. Losses are not reported: a discovery that
    /// failed for a moment looks like one, and the routers' own requests tell the
    /// Canaries about a CRD that is really gone.
    pub fn gained(&self, newer: &RoutingApis) -> Vec<String> {
        let mut gained = Vec::new();
        let mut version = |what: &str, old: &Option<String>, new: &Option<String>| {
            if let Some(v) = new
                && old.as_ref() != Some(v)
            {
                gained.push(format!("{what} {v}"));
            }
        };
        version(
            "HTTPRoute",
            &self.httproute_version,
            &newer.httproute_version,
        );
        version(
            "GRPCRoute",
            &self.grpcroute_version,
            &newer.grpcroute_version,
        );
        let istio_old = self
            .istio
            .then(|| self.istio_version.clone().unwrap_or_default());
        let istio_new = newer
            .istio
            .then(|| newer.istio_version.clone().unwrap_or_default());
        version("VirtualService", &istio_old, &istio_new);
        if newer.traefik && !self.traefik {
            gained.push("TraefikService".into());
        }
        for v in &newer.smi_versions {
            if !self.smi_versions.contains(v) {
                gained.push(format!("TrafficSplit {v}"));
            }
        }
        if newer.gateway_mirror_percent && !self.gateway_mirror_percent {
            gained.push("HTTPRoute requestMirror.percent".into());
        }
        if newer.gateway_timeouts && !self.gateway_timeouts {
            gained.push("HTTPRoute timeouts".into());
        }
        gained
    }
}

/// Finds which routing APIs the cluster serves. A group that is absent (or that the
/// operator may not list) is recorded as not served rather than failing start-up: the
/// routers then report `MissingCrd` for the Canaries that need it, and other Canaries
/// are unaffected.
pub async fn discover(client: &kube::Client) -> RoutingApis {
    use kube::discovery::oneshot;
    let mut apis = RoutingApis::default();
    let kinds_of = |g: &kube::discovery::ApiGroup| -> Vec<(String, String)> {
        g.versions()
            .flat_map(|v| {
                g.versioned_resources(v)
                    .into_iter()
                    .map(|(ar, _)| (ar.version.clone(), ar.kind.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // Newest first: the first served version wins.
    let pick = |kinds: &[(String, String)], kind: &str, order: &[&str]| -> Option<String> {
        order
            .iter()
            .find(|v| kinds.iter().any(|(kv, k)| kv == *v && k == kind))
            .map(|v| v.to_string())
    };
    if let Ok(g) = oneshot::group(client, gatewayapi::GROUP).await {
        let kinds = kinds_of(&g);
        apis.httproute_version = pick(&kinds, "HTTPRoute", &["v1", "v1beta1"]);
        apis.grpcroute_version = pick(&kinds, "GRPCRoute", &["v1", "v1alpha2"]);
        let (percent, timeouts) = gatewayapi::crd_features(client).await;
        apis.gateway_mirror_percent = percent;
        apis.gateway_timeouts = timeouts;
    }
    if let Ok(g) = oneshot::group(client, istio::GROUP).await {
        let kinds = kinds_of(&g);
        apis.istio_version = pick(&kinds, "VirtualService", &["v1", "v1beta1"]);
        apis.istio = apis.istio_version.is_some();
    }
    if let Ok(g) = oneshot::group(client, traefik::GROUP).await {
        apis.traefik = kinds_of(&g).iter().any(|(_, k)| k == "TraefikService");
    }
    if let Ok(g) = oneshot::group(client, smi::GROUP).await {
        let kinds = kinds_of(&g);
        for v in ["v1alpha1", "v1alpha2", "v1alpha3"] {
            if kinds.iter().any(|(kv, k)| kv == v && k == "TrafficSplit") {
                apis.smi_versions.push(v.to_string());
            }
        }
    }
    apis
}

/// Builds the router for `provider`. Each returned router owns the apex/primary/canary
/// Services through the embedded kubernetes router.
pub fn router_for(provider: Provider, client: kube::Client, apis: &RoutingApis) -> Box<dyn Router> {
    router_with(provider, client, apis, None, None)
}

/// Looks Services up in the operator's watch cache.
pub trait ServiceLookup: Send + Sync {
    fn service(&self, namespace: &str, name: &str) -> Option<k8s_openapi::api::core::v1::Service>;
}

/// `router_for`, reading Services from `services` and the routing objects Serin
/// generates from `live` when given (no API read per step).
pub fn router_with(
    provider: Provider,
    client: kube::Client,
    apis: &RoutingApis,
    services: Option<std::sync::Arc<dyn ServiceLookup>>,
    live: Option<std::sync::Arc<dyn apply::LiveObjects>>,
) -> Box<dyn Router> {
    macro_rules! cached {
        ($r:expr) => {
            match services {
                Some(s) => Box::new($r.with_services(s)),
                None => Box::new($r),
            }
        };
    }
    match provider {
        Provider::Kubernetes => cached!(KubernetesRouter::new(client, true)),
        Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 => {
            cached!(GatewayApiRouter::new(client, apis.clone(), false))
        }
        Provider::Linkerd => cached!(GatewayApiRouter::new(client, apis.clone(), true)),
        Provider::Istio => {
            let r = IstioRouter::new(client, apis.clone());
            let r = match live {
                Some(l) => r.with_live(l),
                None => r,
            };
            cached!(r)
        }
        Provider::Traefik => cached!(TraefikRouter::new(client, apis.clone())),
        Provider::Smi(v) => cached!(SmiRouter::new(client, apis.clone(), v)),
        Provider::Nginx => cached!(NginxRouter::new(client)),
    }
}

// ---- helpers shared by the adapters ----

pub(crate) fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub(crate) fn service_spec(canary: &Canary) -> Result<&CanaryService, RouterError> {
    canary
        .spec
        .service
        .as_ref()
        .ok_or_else(|| RouterError::InvalidRoute("spec.service is required".into()))
}

/// Labels and annotations for an object generated for `canary`: the user's custom
/// metadata for that object, minus the keys declared unmanaged, plus Serin's markers.
pub(crate) fn generated_metadata(
    canary: &Canary,
    custom: Option<&CustomMetadata>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let unmanaged = canary
        .spec
        .service
        .as_ref()
        .and_then(|s| s.unmanaged_metadata.as_ref());
    let skip_labels: Vec<String> = unmanaged.and_then(|u| u.labels.clone()).unwrap_or_default();
    let skip_ann: Vec<String> = unmanaged
        .and_then(|u| u.annotations.clone())
        .unwrap_or_default();
    let mut labels: BTreeMap<String, String> = custom
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !skip_labels.contains(k))
        .collect();
    let mut annotations: BTreeMap<String, String> = custom
        .and_then(|c| c.annotations.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !skip_ann.contains(k))
        .collect();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    annotations.insert(CANARY_ANNOTATION.into(), canary.name_str().into());
    (labels, annotations)
}

/// Controller owner reference to the Canary, so generated objects are garbage-collected
/// with it. `None` for a Canary that has no uid yet (unit tests).
pub(crate) fn owner_ref(canary: &Canary) -> Option<OwnerReference> {
    canary.controller_owner_ref(&())
}

/// A generated object with Serin's metadata and `data` (spec etc.).
pub(crate) fn generated_object(
    canary: &Canary,
    ar: &ApiResource,
    name: &str,
    custom: Option<&CustomMetadata>,
    data: serde_json::Value,
) -> DynamicObject {
    let (labels, annotations) = generated_metadata(canary, custom);
    let mut obj = DynamicObject::new(name, ar)
        .within(&canary.namespace_or_default())
        .data(data);
    obj.metadata.labels = Some(labels);
    obj.metadata.annotations = Some(annotations);
    obj.metadata.owner_references = owner_ref(canary).map(|o| vec![o]);
    obj
}

/// Fails before any write when the routing API the provider needs is not served.
pub(crate) fn require(
    served: bool,
    provider: &'static str,
    group: &str,
    kind: &str,
) -> Result<(), RouterError> {
    if served {
        Ok(())
    } else {
        Err(RouterError::MissingCrd {
            provider,
            group: group.into(),
            kind: kind.into(),
        })
    }
}

/// The value of the session-affinity cookie (`name=value`) for the current canary run:
/// the one recorded in the Canary status, or else one derived from the Canary's
/// identity and the revision under analysis. Deriving it (instead of Flagger's random
/// value stored by the router) keeps routers free of status writes and makes a re-render
/// produce the same cookie; the controller may store it in `status.sessionAffinityCookie`.
pub fn session_cookie(canary: &Canary, affinity: &SessionAffinity) -> String {
    let status = canary.status_or_default();
    if let Some(c) = status.session_affinity_cookie.filter(|c| !c.is_empty()) {
        return c;
    }
    derived_cookie(canary, &affinity.cookie_name)
}

/// The primary's cookie (`primaryCookieName=value`) for the current run, when
/// `sessionAffinity.primaryCookieName` is set: sessions first answered by the primary
/// stay on the primary while the canary's weight grows. From
/// `status.primarySessionAffinityCookie`, else derived like [`session_cookie`].
pub fn primary_session_cookie(canary: &Canary, affinity: &SessionAffinity) -> Option<String> {
    let name = affinity
        .primary_cookie_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let status = canary.status_or_default();
    Some(
        status
            .primary_session_affinity_cookie
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| derived_cookie(canary, name)),
    )
}

fn derived_cookie(canary: &Canary, cookie_name: &str) -> String {
    let status = canary.status_or_default();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(canary.namespace_or_default().as_bytes());
    h.update(b"/");
    h.update(canary.name_str().as_bytes());
    h.update(b"/");
    h.update(canary.metadata.uid.as_deref().unwrap_or("").as_bytes());
    h.update(b"/");
    h.update(status.last_applied_spec.as_deref().unwrap_or("").as_bytes());
    h.update(b"/");
    h.update(cookie_name.as_bytes());
    format!("{cookie_name}={}", hex::encode(&h.finalize()[..10]))
}

/// `Set-Cookie` value for `cookie` (`name=value`) with the attributes the user set,
/// as Flagger's `BuildCookie` does.
pub(crate) fn build_set_cookie(cookie: &str, a: &SessionAffinity, max_age: i64) -> String {
    let mut out = format!("{cookie}; Max-Age={max_age}");
    if let Some(d) = &a.domain {
        out.push_str(&format!("; Domain={d}"));
    }
    if a.http_only == Some(true) {
        out.push_str("; HttpOnly");
    }
    if a.partitioned == Some(true) {
        out.push_str("; Partitioned");
    }
    if let Some(p) = &a.path {
        out.push_str(&format!("; Path={p}"));
    }
    if let Some(s) = &a.same_site {
        out.push_str(&format!("; SameSite={s}"));
    }
    if a.secure == Some(true) {
        out.push_str("; Secure");
    }
    out
}

/// Regex matching a `Cookie` request header that carries `cookie` (`name=value`).
pub(crate) fn cookie_regex(cookie: &str) -> String {
    let (k, v) = cookie.split_once('=').unwrap_or((cookie, ""));
    format!(".*{k}.*{v}.*")
}

/// Splits a ±100 total read back from a data plane into `Routes`, rejecting splits that
/// do not add up so that a hand-edited object is reported rather than trusted.
pub(crate) fn routes_from(
    primary: u32,
    canary: u32,
    mirror: bool,
    mirror_weight: Option<u32>,
) -> Result<Routes, RouterError> {
    let r = Routes {
        primary,
        canary,
        mirror,
        mirror_weight,
    };
    r.validate()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SmiVersion;
    use crate::router::kubernetes::tests::{canary, inputs};

    /// A client whose server does not exist: any API call fails with a Kube error, so a
    #[test]
    fn gained_names_what_became_served_and_ignores_losses() {
        let none = RoutingApis::default();
        let all = RoutingApis::all();
        let gained = none.gained(&all);
        for api in [
            "HTTPRoute v1",
            "GRPCRoute v1",
            "TraefikService",
            "TrafficSplit v1alpha3",
        ] {
            assert!(
                gained.iter().any(|g| g == api),
                "{api} missing from {gained:?}"
            );
        }
        assert!(gained.iter().any(|g| g.starts_with("VirtualService")));
        assert!(all.gained(&none).is_empty(), "a loss is not a gain");
        assert!(all.gained(&all).is_empty());
        let mut beta = all.clone();
        beta.httproute_version = Some("v1beta1".into());
        assert_eq!(
            beta.gained(&all),
            ["HTTPRoute v1"],
            "an upgraded CRD is a gain"
        );
    }

    /// `MissingCrd` result proves the check came before any request.
    fn offline_client() -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("static URL"));
        kube::Client::try_from(config).expect("client from static config")
    }

    #[tokio::test]
    async fn every_provider_has_a_router_and_missing_crds_fail_before_any_call() {
        let client = offline_client();
        let none = RoutingApis::default();
        for p in [
            Provider::GatewayApiV1,
            Provider::GatewayApiV1beta1,
            Provider::Linkerd,
            Provider::Istio,
            Provider::Traefik,
            Provider::Smi(SmiVersion::V1alpha1),
            Provider::Smi(SmiVersion::V1alpha3),
        ] {
            let router = router_for(p, client.clone(), &none);
            let mut c = canary();
            if let Some(s) = c.spec.service.as_mut() {
                s.gateway_refs = Some(vec![crate::crd::ParentReference {
                    name: "gw".into(),
                    ..Default::default()
                }]);
            }
            let err = router.reconcile(&c, &inputs()).await.unwrap_err();
            assert!(
                matches!(err, RouterError::MissingCrd { .. }),
                "{p:?}: {err}"
            );
            let err = router
                .set_routes(&c, Routes::weighted(10))
                .await
                .unwrap_err();
            assert!(
                matches!(err, RouterError::MissingCrd { .. }),
                "{p:?}: {err}"
            );
        }
        // Bad weights are refused before any call, whatever the provider.
        for p in [Provider::Kubernetes, Provider::Nginx, Provider::Istio] {
            let router = router_for(p, client.clone(), &RoutingApis::all());
            let bad = Routes {
                primary: 70,
                canary: 40,
                mirror: false,
                mirror_weight: None,
            };
            let err = router.set_routes(&canary(), bad).await.unwrap_err();
            assert!(
                matches!(err, RouterError::InvalidWeights { .. }),
                "{p:?}: {err}"
            );
        }
    }

    #[test]
    fn session_cookie_prefers_status_and_is_stable_otherwise() {
        let a = SessionAffinity {
            cookie_name: "c".into(),
            ..Default::default()
        };
        let mut c = canary();
        let derived = session_cookie(&c, &a);
        assert!(derived.starts_with("c=") && derived.len() > 10, "{derived}");
        assert_eq!(session_cookie(&c, &a), derived, "stable across renders");
        let mut st = c.status_or_default();
        st.last_applied_spec = Some("rev2".into());
        c.status = Some(st.clone());
        assert_ne!(
            session_cookie(&c, &a),
            derived,
            "a new revision gets a new cookie"
        );
        st.session_affinity_cookie = Some("c=fromstatus".into());
        c.status = Some(st);
        assert_eq!(session_cookie(&c, &a), "c=fromstatus");
        let full = SessionAffinity {
            cookie_name: "c".into(),
            domain: Some("example.com".into()),
            http_only: Some(true),
            path: Some("/".into()),
            same_site: Some("Strict".into()),
            secure: Some(true),
            ..Default::default()
        };
        assert_eq!(
            build_set_cookie("c=v", &full, 60),
            "c=v; Max-Age=60; Domain=example.com; HttpOnly; Path=/; SameSite=Strict; Secure"
        );
    }
}
