//! What a data plane can serve, so that Serin never writes a route it would reject.
//!
//! Gateway API splits route features into core, extended and implementation-specific
//! ones, and every implementation supports a different subset. An implementation that
//! meets a route it cannot serve may drop the **whole route** (Traefik 3.0 does, with
//! "cannot generate rule"), taking the app dark; so every route is checked against the
//! implementation's capabilities before it is written.
//!
//! Where the capabilities come from, last one wins:
//! 1. a built-in table keyed by the GatewayClass' `spec.controllerName` (Traefik,
//!    Istio, Envoy Gateway, Contour, Kong, NGINX Gateway Fabric, Cilium, Linkerd); a
//!    controller not in the table is assumed to serve everything (the behaviour before
//!    capabilities existed), which the status says;
//! 2. the GatewayClass' `status.supportedFeatures`, where the implementation publishes
//!    it, for the standard feature names (implementation-specific ones such as regex
//!    matches keep the table's answer: no published name covers them);
//! 3. the operator flag `--gateway-features <controllerName>=<F1>,<F2>;...`, then the
//!    GatewayClass annotation `serin.dev/supported-features: <F1>,<F2>` (the complete
//!    list, for a data plane the table gets wrong).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Annotation on a GatewayClass listing every feature its data plane serves.
pub const FEATURES_ANNOTATION: &str = "serin.dev/supported-features";

/// A route feature Serin may need. Names are Gateway API's conformance feature names
/// where one exists; the `Serin*`-free others name implementation-specific behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// `matches[].headers[].type: RegularExpression` (implementation-specific).
    HeaderRegexMatch,
    /// `matches[].path.type: RegularExpression` (implementation-specific).
    PathRegexMatch,
    QueryParamMatch,
    MethodMatch,
    RequestHeaderModifier,
    ResponseHeaderModifier,
    /// A RequestHeaderModifier filter on a backendRef.
    BackendRequestHeaderModifier,
    /// A ResponseHeaderModifier filter on a backendRef (implementation-specific).
    BackendResponseHeaderModifier,
    UrlRewrite,
    RequestMirror,
    MirrorPercent,
    RequestTimeout,
    GrpcRoute,
    /// A backendRef of group `traefik.io`, kind `TraefikService` (Traefik only).
    TraefikServiceBackend,
}

impl Feature {
    pub const ALL: [Feature; 14] = [
        Feature::HeaderRegexMatch,
        Feature::PathRegexMatch,
        Feature::QueryParamMatch,
        Feature::MethodMatch,
        Feature::RequestHeaderModifier,
        Feature::ResponseHeaderModifier,
        Feature::BackendRequestHeaderModifier,
        Feature::BackendResponseHeaderModifier,
        Feature::UrlRewrite,
        Feature::RequestMirror,
        Feature::MirrorPercent,
        Feature::RequestTimeout,
        Feature::GrpcRoute,
        Feature::TraefikServiceBackend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::HeaderRegexMatch => "HTTPRouteHeaderRegexMatch",
            Feature::PathRegexMatch => "HTTPRoutePathRegexMatch",
            Feature::QueryParamMatch => "HTTPRouteQueryParamMatching",
            Feature::MethodMatch => "HTTPRouteMethodMatching",
            // Core in Gateway API; named here so that an override can take it away.
            Feature::RequestHeaderModifier => "HTTPRouteRequestHeaderModification",
            Feature::ResponseHeaderModifier => "HTTPRouteResponseHeaderModification",
            Feature::BackendRequestHeaderModifier => "HTTPRouteBackendRequestHeaderModification",
            Feature::BackendResponseHeaderModifier => "HTTPRouteBackendResponseHeaderModification",
            Feature::UrlRewrite => "HTTPRoutePathRewrite",
            Feature::RequestMirror => "HTTPRouteRequestMirror",
            Feature::MirrorPercent => "HTTPRouteRequestPercentageMirror",
            Feature::RequestTimeout => "HTTPRouteRequestTimeout",
            Feature::GrpcRoute => "GRPCRoute",
            Feature::TraefikServiceBackend => "TraefikServiceBackendRef",
        }
    }

    /// What in a route needs the feature, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::HeaderRegexMatch => "a RegularExpression header match",
            Feature::PathRegexMatch => "a RegularExpression path match",
            Feature::QueryParamMatch => "a query parameter match",
            Feature::MethodMatch => "a method match",
            Feature::RequestHeaderModifier => "a RequestHeaderModifier filter",
            Feature::ResponseHeaderModifier => "a ResponseHeaderModifier filter",
            Feature::BackendRequestHeaderModifier => "a RequestHeaderModifier backendRef filter",
            Feature::BackendResponseHeaderModifier => "a ResponseHeaderModifier backendRef filter",
            Feature::UrlRewrite => "a URLRewrite filter",
            Feature::RequestMirror => "a RequestMirror filter",
            Feature::MirrorPercent => "a RequestMirror percent",
            Feature::RequestTimeout => "a request timeout",
            Feature::GrpcRoute => "a GRPCRoute",
            Feature::TraefikServiceBackend => "a TraefikService backendRef",
        }
    }

    /// Accepts Gateway API names (and `HTTPRouteHostRewrite` as URLRewrite).
    pub fn parse(s: &str) -> Option<Feature> {
        let s = s.trim();
        if s == "HTTPRouteHostRewrite" {
            return Some(Feature::UrlRewrite);
        }
        Feature::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// Whether a published `supportedFeatures` list can speak for this feature: it has
    /// standard names only, so silence there says nothing about the others.
    fn standard(self) -> bool {
        !matches!(
            self,
            Feature::HeaderRegexMatch
                | Feature::PathRegexMatch
                | Feature::BackendResponseHeaderModifier
                | Feature::TraefikServiceBackend
                | Feature::RequestHeaderModifier
        )
    }
}

/// Where a Capabilities value came from, for the status and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Table,
    /// A controller the table does not know: everything is assumed.
    Assumed,
    Published,
    Flag,
    Annotation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// A readable implementation name, e.g. `Traefik 3.0 (traefik.io/gateway-controller)`.
    pub implementation: String,
    pub source: Source,
    supported: BTreeSet<Feature>,
}

/// Known controllers: (controllerName prefix, readable name, features). Best knowledge
/// of each implementation's documentation; an annotation overrides a wrong entry.
fn table(controller: &str) -> Option<(&'static str, Vec<Feature>)> {
    use Feature::*;
    let entries: [(&str, &str, Vec<Feature>); 8] = [
        // Traefik's Gateway provider as of 3.0 (newer ones publish supportedFeatures):
        // Exact header matches, Exact/PathPrefix paths, RequestHeaderModifier,
        // RequestRedirect, ExtensionRef and TraefikService backendRefs. Anything else
        // makes it skip the whole route. Query/method matches are ignored, not refused,
        // which would send unmatched requests to the canary: not supported either.
        (
            "traefik.io/gateway-controller",
            "Traefik 3.0",
            vec![RequestHeaderModifier, TraefikServiceBackend],
        ),
        (
            "istio.io/gateway-controller",
            "Istio",
            Feature::ALL_BUT_TRAEFIK.to_vec(),
        ),
        (
            "gateway.envoyproxy.io/gatewayclass-controller",
            "Envoy Gateway",
            Feature::ALL_BUT_TRAEFIK.to_vec(),
        ),
        (
            "projectcontour.io/gateway-controller",
            "Contour",
            vec![
                HeaderRegexMatch,
                PathRegexMatch,
                QueryParamMatch,
                MethodMatch,
                RequestHeaderModifier,
                ResponseHeaderModifier,
                BackendRequestHeaderModifier,
                BackendResponseHeaderModifier,
                UrlRewrite,
                RequestMirror,
                RequestTimeout,
                GrpcRoute,
            ],
        ),
        (
            "konghq.com/kic-gateway-controller",
            "Kong",
            vec![
                HeaderRegexMatch,
                PathRegexMatch,
                QueryParamMatch,
                MethodMatch,
                RequestHeaderModifier,
                ResponseHeaderModifier,
                UrlRewrite,
                GrpcRoute,
            ],
        ),
        (
            "gateway.nginx.org/nginx-gateway-controller",
            "NGINX Gateway Fabric",
            vec![
                QueryParamMatch,
                MethodMatch,
                RequestHeaderModifier,
                ResponseHeaderModifier,
                UrlRewrite,
                GrpcRoute,
            ],
        ),
        (
            "io.cilium/gateway-controller",
            "Cilium",
            vec![
                HeaderRegexMatch,
                PathRegexMatch,
                QueryParamMatch,
                MethodMatch,
                RequestHeaderModifier,
                ResponseHeaderModifier,
                BackendRequestHeaderModifier,
                UrlRewrite,
                RequestMirror,
                RequestTimeout,
                GrpcRoute,
            ],
        ),
        (
            LINKERD,
            "Linkerd",
            vec![
                HeaderRegexMatch,
                PathRegexMatch,
                QueryParamMatch,
                MethodMatch,
                RequestHeaderModifier,
                ResponseHeaderModifier,
                BackendRequestHeaderModifier,
                BackendResponseHeaderModifier,
                RequestTimeout,
                GrpcRoute,
            ],
        ),
    ];
    entries
        .into_iter()
        .find(|(c, _, _)| controller == *c)
        .map(|(_, n, f)| (n, f))
}

/// Key of Linkerd's entry: its routes attach to Services, with no GatewayClass.
pub const LINKERD: &str = "linkerd.io/gateway-controller";

impl Feature {
    const ALL_BUT_TRAEFIK: [Feature; 13] = [
        Feature::HeaderRegexMatch,
        Feature::PathRegexMatch,
        Feature::QueryParamMatch,
        Feature::MethodMatch,
        Feature::RequestHeaderModifier,
        Feature::ResponseHeaderModifier,
        Feature::BackendRequestHeaderModifier,
        Feature::BackendResponseHeaderModifier,
        Feature::UrlRewrite,
        Feature::RequestMirror,
        Feature::MirrorPercent,
        Feature::RequestTimeout,
        Feature::GrpcRoute,
    ];
}

/// Parses `--gateway-features`: `<controllerName>=<F1>,<F2>;<controllerName>=...`.
pub fn parse_overrides(s: &str) -> Result<BTreeMap<String, BTreeSet<Feature>>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((controller, list)) = part.split_once('=') else {
            return Err(format!(
                "{part:?}: expected <controllerName>=<Feature>,<Feature>"
            ));
        };
        out.insert(controller.trim().to_string(), parse_list(list)?);
    }
    Ok(out)
}

fn parse_list(list: &str) -> Result<BTreeSet<Feature>, String> {
    let mut set = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let f = Feature::parse(name).ok_or_else(|| {
            format!(
                "unknown feature {name:?} (known: {})",
                Feature::ALL.map(Feature::name).join(", ")
            )
        })?;
        set.insert(f);
    }
    Ok(set)
}

impl Capabilities {
    /// Everything (tests, callers without a data plane to ask).
    pub fn all(implementation: &str) -> Capabilities {
        Capabilities {
            implementation: implementation.into(),
            source: Source::Assumed,
            supported: Feature::ALL.into_iter().collect(),
        }
    }

    /// The built-in table's answer for `controller`.
    pub fn for_controller(controller: &str) -> Capabilities {
        match table(controller) {
            Some((name, features)) => Capabilities {
                implementation: format!("{name} ({controller})"),
                source: Source::Table,
                supported: features.into_iter().collect(),
            },
            None => Capabilities {
                source: Source::Assumed,
                ..Capabilities::all(controller)
            },
        }
    }

    /// From a GatewayClass object (JSON): table, published features, flag, annotation.
    pub fn from_gateway_class(
        class: &Value,
        overrides: &BTreeMap<String, BTreeSet<Feature>>,
    ) -> Result<Capabilities, String> {
        let controller = class
            .pointer("/spec/controllerName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut caps = Capabilities::for_controller(controller);
        // Gateway API 1.1 publishes strings, 1.2+ objects with a name.
        let published: Vec<String> = class
            .pointer("/status/supportedFeatures")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                f.as_str()
                    .or_else(|| f.get("name").and_then(Value::as_str))
                    .map(str::to_string)
            })
            .collect();
        if !published.is_empty() {
            let named: BTreeSet<Feature> =
                published.iter().filter_map(|n| Feature::parse(n)).collect();
            for f in Feature::ALL.into_iter().filter(|f| f.standard()) {
                if named.contains(&f) {
                    caps.supported.insert(f);
                } else {
                    caps.supported.remove(&f);
                }
            }
            caps.source = Source::Published;
        }
        if let Some(set) = overrides.get(controller) {
            caps.supported = set.clone();
            caps.source = Source::Flag;
        }
        if let Some(list) = class
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(FEATURES_ANNOTATION))
            .and_then(Value::as_str)
        {
            caps.supported = parse_list(list).map_err(|e| {
                format!(
                    "GatewayClass {} annotation {FEATURES_ANNOTATION}: {e}",
                    class
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                )
            })?;
            caps.source = Source::Annotation;
        }
        Ok(caps)
    }

    pub fn supports(&self, f: Feature) -> bool {
        self.supported.contains(&f)
    }

    /// The features of `needed` this data plane lacks, in a stable order.
    pub fn missing(&self, needed: &BTreeSet<Feature>) -> Vec<Feature> {
        needed
            .iter()
            .copied()
            .filter(|f| !self.supports(*f))
            .collect()
    }

    /// Only what both serve: a route attached to several Gateways must suit them all.
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        if self == other {
            return self.clone();
        }
        Capabilities {
            implementation: format!("{} and {}", self.implementation, other.implementation),
            source: self.source.clone(),
            supported: self
                .supported
                .intersection(&other.supported)
                .copied()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn traefik_3_0_lacks_regex_and_response_filters() {
        let c = Capabilities::for_controller("traefik.io/gateway-controller");
        assert_eq!(c.source, Source::Table);
        assert!(
            c.implementation.contains("Traefik 3.0"),
            "{}",
            c.implementation
        );
        for f in [
            Feature::HeaderRegexMatch,
            Feature::ResponseHeaderModifier,
            Feature::BackendResponseHeaderModifier,
            Feature::RequestMirror,
            Feature::QueryParamMatch,
        ] {
            assert!(!c.supports(f), "{f:?}");
        }
        assert!(c.supports(Feature::TraefikServiceBackend));
        assert!(c.supports(Feature::RequestHeaderModifier));
        let istio = Capabilities::for_controller("istio.io/gateway-controller");
        assert!(istio.supports(Feature::HeaderRegexMatch));
        assert!(!istio.supports(Feature::TraefikServiceBackend));
        let unknown = Capabilities::for_controller("example.com/gw");
        assert_eq!(unknown.source, Source::Assumed);
        assert!(unknown.supports(Feature::HeaderRegexMatch));
    }

    #[test]
    fn published_features_then_flag_then_annotation() {
        let mut class = json!({
            "metadata": {"name": "gw"},
            "spec": {"controllerName": "example.com/gw"},
            "status": {"supportedFeatures": [{"name": "HTTPRoute"}, {"name": "HTTPRouteQueryParamMatching"}]}
        });
        let none = BTreeMap::new();
        let c = Capabilities::from_gateway_class(&class, &none).unwrap();
        assert_eq!(c.source, Source::Published);
        assert!(c.supports(Feature::QueryParamMatch));
        assert!(!c.supports(Feature::RequestMirror), "not published");
        // Regex matches have no standard name: the table (here: assumed) decides.
        assert!(c.supports(Feature::HeaderRegexMatch));
        // Gateway API 1.1 publishes plain strings.
        class["status"]["supportedFeatures"] = json!(["HTTPRouteRequestMirror"]);
        let c = Capabilities::from_gateway_class(&class, &none).unwrap();
        assert!(c.supports(Feature::RequestMirror) && !c.supports(Feature::QueryParamMatch));

        let flags = parse_overrides("example.com/gw=HTTPRouteHeaderRegexMatch; other=").unwrap();
        let c = Capabilities::from_gateway_class(&class, &flags).unwrap();
        assert_eq!(c.source, Source::Flag);
        assert_eq!(
            c.missing(&BTreeSet::from([Feature::RequestMirror])),
            vec![Feature::RequestMirror]
        );
        assert!(c.supports(Feature::HeaderRegexMatch));

        class["metadata"]["annotations"] =
            json!({FEATURES_ANNOTATION: "HTTPRouteResponseHeaderModification"});
        let c = Capabilities::from_gateway_class(&class, &flags).unwrap();
        assert_eq!(c.source, Source::Annotation);
        assert!(c.supports(Feature::ResponseHeaderModifier));
        assert!(!c.supports(Feature::HeaderRegexMatch));

        class["metadata"]["annotations"] = json!({FEATURES_ANNOTATION: "Bogus"});
        let err = Capabilities::from_gateway_class(&class, &flags).unwrap_err();
        assert!(err.contains("Bogus") && err.contains("gw"), "{err}");
        assert!(parse_overrides("no-equals-sign").is_err());
    }

    #[test]
    fn intersection_keeps_what_both_serve() {
        let t = Capabilities::for_controller("traefik.io/gateway-controller");
        let i = Capabilities::for_controller("istio.io/gateway-controller");
        let both = t.intersect(&i);
        assert!(both.supports(Feature::RequestHeaderModifier));
        assert!(!both.supports(Feature::HeaderRegexMatch));
        assert!(!both.supports(Feature::TraefikServiceBackend));
    }
}
