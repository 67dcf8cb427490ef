//! Gateway API router (providers `gatewayapi:v1`, `gatewayapi:v1beta1`, `linkerd`).
//!
//! **Generated mode** (no `routeRef`): one route named after the apex Service, owned by
//! the Canary. It is an `HTTPRoute`, or a `GRPCRoute` when `service.appProtocol` is
//! `grpc`/`grpcs` (the appProtocol Kubernetes and meshes use for gRPC; GRPCRoute gets
//! header matches and header/mirror filters only, as it has no paths, rewrites or
//! timeouts). Its spec:
//! - `parentRefs` from `service.gatewayRefs` (a Gateway, or a Service for GAMMA meshes);
//!   for `linkerd` with no gatewayRefs, the apex Service itself (group `core`, kind
//!   `Service`, the service port), which is how Linkerd attaches routes to a Service.
//! - `hostnames` from `service.hosts`; matches from `service.match` (uri exact/prefix/
//!   regex, headers, method, query params; default `PathPrefix /`).
//! - filters: request/response header modifiers from `service.headers`, URLRewrite from
//!   `service.rewrite` (`ReplacePrefixMatch` unless `type: ReplaceFullPath`),
//!   RequestMirror for each `service.mirror` backend; `timeouts.request` from
//!   `service.timeout` when the installed schema has timeouts.
//! - the weighted rule: backendRefs `<apex>-primary` and `<apex>-canary` with explicit
//!   `group: ""`, `kind: Service`, the service port, and the weights.
//! - A/B (`analysis.match`): one rule per entry (merged with each `service.match`) with
//!   the weighted backendRefs, and a default rule to the primary only.
//! - session affinity: the canary backendRef sets `Set-Cookie: <cookie>; Max-Age=..`
//!   via a ResponseHeaderModifier and a rule matching `Cookie: .*name.*value.*` sends
//!   the session to the canary; at canary weight 0 a rule expires the previous cookie.
//! - mirror steps: a RequestMirror filter to `<apex>-canary` on the weighted rule, with
//!   `percent` = mirrorWeight when the installed schema has it (Gateway API >= 1.2).
//!
//! **routeRef mode** (Serin extension, Flagger issues #1857 and #1888): the user owns
//! the HTTPRoute/GRPCRoute named by `spec.routeRef`. Serin edits only the backendRefs
//! of the rules that reference the apex Service: that backendRef becomes a weighted
//! `-primary`/`-canary` pair (copy of it: port, filters and any other field kept), and
//! mirror steps add/remove one RequestMirror filter pointing at `<apex>-canary`. Every
//! other rule, filter, annotation and field is written back exactly as read. The route
//! is never created, owned, labelled or deleted by Serin; `finalize` restores the apex
//! backendRef. A/B matches and session affinity need rules of their own and are
//! refused in this mode.
//!
//! `verify` reads `status.parents[].conditions`: Accepted=True at the route's current
//! generation for every parent. Implementations that write no route status (Traefik
//! 3.0.4) yield `RouteStatus::Unknown`, which the controller shows but does not fail on.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::collections::BTreeSet;

use super::apply;
use super::capabilities::{Capabilities, Feature};
use super::kubernetes::KubernetesRouter;
use super::{
    BoxFuture, RouteStatus, Router, RouterError, Routes, RoutingApis, ServiceInputs, api_resource,
    build_set_cookie, cookie_regex, generated_object, primary_session_cookie, require, routes_from,
    service_spec, session_cookie,
};
use crate::crd::{
    AbMatch, Canary, DEFAULT_SESSION_COOKIE_MAX_AGE, HttpMatchRequest, ParentReference, StringMatch,
};

pub const GROUP: &str = "gateway.networking.k8s.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
        }
    }
}

// ---- typed subset of the Gateway API route schema that Serin renders ----

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<TypedValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NamedMatch>,
    /// HTTPRoute: an HTTP method string; GRPCRoute: a method match object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TypedValue {
    pub r#type: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct NamedMatch {
    pub r#type: String,
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub r#type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<Mirror>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub backend_ref: BackendRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

/// A Service backendRef with the explicit group and kind some implementations need
/// (Traefik skips a backendRef whose group is unset).
fn service_ref(name: &str, port: i32, weight: Option<u32>) -> BackendRef {
    BackendRef {
        group: Some(String::new()),
        kind: Some("Service".into()),
        name: name.into(),
        port: Some(port),
        weight,
        ..Default::default()
    }
}

/// Schema features of the installed Gateway API that change what may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    pub kind: RouteKind,
    pub mirror_percent: bool,
    pub timeouts: bool,
    pub linkerd: bool,
    /// Session affinity through a sticky TraefikService (`<apex>-sticky`) instead of
    /// cookie regex matches and Set-Cookie filters, for data planes without those.
    pub sticky: bool,
}

// ---- match conversion (Istio-style HTTPMatchRequest -> Gateway API) ----

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// (type, value) for a header or query match; prefix/suffix become anchored regexes.
fn string_match(field: &str, m: &StringMatch) -> Result<(String, String), RouterError> {
    if let Some(v) = &m.exact {
        Ok(("Exact".into(), v.clone()))
    } else if let Some(v) = &m.regex {
        Ok(("RegularExpression".into(), v.clone()))
    } else if let Some(v) = &m.prefix {
        Ok((
            "RegularExpression".into(),
            format!("^{}.*", regex_escape(v)),
        ))
    } else if let Some(v) = &m.suffix {
        Ok((
            "RegularExpression".into(),
            format!(".*{}$", regex_escape(v)),
        ))
    } else {
        Err(RouterError::InvalidRoute(format!(
            "{field}: a match needs one of exact, prefix, suffix or regex"
        )))
    }
}

fn named_matches(
    field: &str,
    m: Option<&std::collections::BTreeMap<String, StringMatch>>,
) -> Result<Vec<NamedMatch>, RouterError> {
    let mut out = Vec::new();
    for (name, sm) in m.into_iter().flatten() {
        let (t, value) = string_match(&format!("{field}.{name}"), sm)?;
        out.push(NamedMatch {
            r#type: t,
            name: name.clone(),
            value,
        });
    }
    Ok(out)
}

pub fn convert_match(m: &HttpMatchRequest, kind: RouteKind) -> Result<RouteMatch, RouterError> {
    let mut out = RouteMatch {
        headers: named_matches("service.match.headers", m.headers.as_ref())?,
        ..Default::default()
    };
    if kind == RouteKind::Http {
        out.query_params = named_matches("service.match.queryParams", m.query_params.as_ref())?;
        if let Some(uri) = &m.uri {
            out.path = Some(if let Some(v) = &uri.exact {
                TypedValue {
                    r#type: "Exact".into(),
                    value: v.clone(),
                }
            } else if let Some(v) = &uri.prefix {
                TypedValue {
                    r#type: "PathPrefix".into(),
                    value: v.clone(),
                }
            } else if let Some(v) = &uri.regex {
                TypedValue {
                    r#type: "RegularExpression".into(),
                    value: v.clone(),
                }
            } else {
                return Err(RouterError::InvalidRoute(
                    "service.match.uri: Gateway API paths support exact, prefix or regex".into(),
                ));
            });
        }
        if let Some(method) = &m.method {
            let Some(v) = &method.exact else {
                return Err(RouterError::InvalidRoute(
                    "service.match.method: Gateway API supports exact methods only".into(),
                ));
            };
            out.method = Some(Value::String(v.to_uppercase()));
        }
    }
    Ok(out)
}

fn service_matches(canary: &Canary, kind: RouteKind) -> Result<Vec<RouteMatch>, RouterError> {
    let svc = service_spec(canary)?;
    let mut out = Vec::new();
    for m in svc.r#match.iter().flatten() {
        out.push(convert_match(m, kind)?);
    }
    if out.is_empty() && kind == RouteKind::Http {
        out.push(RouteMatch {
            path: Some(TypedValue {
                r#type: "PathPrefix".into(),
                value: "/".into(),
            }),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Adds `extra` conditions to every service match (an empty list means "match all").
fn merge(extra: &RouteMatch, base: &[RouteMatch]) -> Vec<RouteMatch> {
    if base.is_empty() {
        return vec![extra.clone()];
    }
    base.iter()
        .map(|b| {
            let mut m = b.clone();
            m.headers.extend(extra.headers.iter().cloned());
            m.query_params.extend(extra.query_params.iter().cloned());
            m
        })
        .collect()
}

fn ab_match(m: &AbMatch, kind: RouteKind) -> Result<RouteMatch, RouterError> {
    let mut out = RouteMatch {
        headers: named_matches("analysis.match.headers", m.headers.as_ref())?,
        ..Default::default()
    };
    if kind == RouteKind::Http {
        out.query_params = named_matches("analysis.match.queryParams", m.query_params.as_ref())?;
    }
    Ok(out)
}

fn header_filter(op: &crate::crd::HeaderOperation) -> HeaderFilter {
    let pairs = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| Header {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    HeaderFilter {
        set: pairs(&op.set),
        add: pairs(&op.add),
        remove: op.remove.clone().unwrap_or_default(),
    }
}

/// Filters every Serin rule carries (from `spec.service`).
fn service_filters(canary: &Canary, kind: RouteKind) -> Result<Vec<Filter>, RouterError> {
    let svc = service_spec(canary)?;
    let mut out = Vec::new();
    if let Some(h) = &svc.headers {
        if let Some(req) = &h.request {
            out.push(Filter {
                r#type: "RequestHeaderModifier".into(),
                request_header_modifier: Some(header_filter(req)),
                ..Default::default()
            });
        }
        if let Some(resp) = &h.response {
            out.push(Filter {
                r#type: "ResponseHeaderModifier".into(),
                response_header_modifier: Some(header_filter(resp)),
                ..Default::default()
            });
        }
    }
    if let Some(rw) = &svc.rewrite
        && kind == RouteKind::Http
    {
        let mut v = serde_json::Map::new();
        if let Some(host) = &rw.authority {
            v.insert("hostname".into(), json!(host));
        }
        if let Some(uri) = &rw.uri {
            let path = match rw.r#type.as_deref() {
                Some("ReplaceFullPath") => {
                    json!({"type": "ReplaceFullPath", "replaceFullPath": uri})
                }
                None | Some("ReplacePrefixMatch") => {
                    json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": uri})
                }
                Some(other) => {
                    return Err(RouterError::InvalidRoute(format!(
                        "service.rewrite.type {other:?}: use ReplaceFullPath or ReplacePrefixMatch"
                    )));
                }
            };
            v.insert("path".into(), path);
        }
        if !v.is_empty() {
            out.push(Filter {
                r#type: "URLRewrite".into(),
                url_rewrite: Some(Value::Object(v)),
                ..Default::default()
            });
        }
    }
    for m in svc.mirror.iter().flatten() {
        let b = &m.backend_ref;
        out.push(Filter {
            r#type: "RequestMirror".into(),
            request_mirror: Some(Mirror {
                backend_ref: BackendRef {
                    group: Some(b.group.clone().unwrap_or_default()),
                    kind: Some(b.kind.clone().unwrap_or_else(|| "Service".into())),
                    name: b.name.clone(),
                    namespace: b.namespace.clone(),
                    port: b.port,
                    ..Default::default()
                },
                percent: None,
            }),
            ..Default::default()
        });
    }
    Ok(out)
}

fn parent_refs(canary: &Canary, linkerd: bool) -> Result<Vec<ParentReference>, RouterError> {
    let svc = service_spec(canary)?;
    match svc.gateway_refs.clone().filter(|g| !g.is_empty()) {
        Some(refs) => Ok(refs),
        None if linkerd => Ok(vec![ParentReference {
            group: Some("core".into()),
            kind: Some("Service".into()),
            name: canary.apex_name(),
            namespace: None,
            section_name: None,
            port: Some(svc.port),
        }]),
        None => Err(RouterError::InvalidRoute(
            "service.gatewayRefs is required with Gateway API (or use spec.routeRef)".into(),
        )),
    }
}

fn set_cookie_filter(value: String) -> Filter {
    Filter {
        r#type: "ResponseHeaderModifier".into(),
        response_header_modifier: Some(HeaderFilter {
            add: vec![Header {
                name: "Set-Cookie".into(),
                value,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cookie_match(cookie: &str) -> RouteMatch {
    RouteMatch {
        headers: vec![NamedMatch {
            r#type: "RegularExpression".into(),
            name: "Cookie".into(),
            value: cookie_regex(cookie),
        }],
        ..Default::default()
    }
}

fn is_sticky(rule: &Rule, cookie_name: &str) -> bool {
    rule.matches.iter().any(|m| {
        m.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("cookie")
                && h.r#type == "RegularExpression"
                && h.value.contains(cookie_name)
        })
    })
}

/// Renders the generated route's spec for `routes`.
pub fn render_route_spec(
    canary: &Canary,
    routes: Routes,
    opts: RenderOptions,
) -> Result<RouteSpec, RouterError> {
    routes.validate()?;
    let svc = service_spec(canary)?;
    let kind = opts.kind;
    let port = svc.port;
    let primary = canary.primary_service_name();
    let canary_svc = canary.canary_service_name();
    let matches = service_matches(canary, kind)?;
    let filters = service_filters(canary, kind)?;
    let timeouts = match (&svc.timeout, kind, opts.timeouts) {
        (Some(t), RouteKind::Http, true) => Some(Timeouts {
            request: Some(t.clone()),
        }),
        (Some(_), _, _) => {
            tracing::warn!(
                canary = canary.name_str(),
                "service.timeout not written: the installed {} schema has no timeouts",
                kind.kind()
            );
            None
        }
        _ => None,
    };
    // A zero-weight backendRef carries no traffic, and Traefik 3.0.4 drops the whole
    // route when such a backend has no endpoints (the canary scaled to zero): leave
    // it out instead.
    let weighted = |p: u32, c: u32| {
        [
            service_ref(&primary, port, Some(p)),
            service_ref(&canary_svc, port, Some(c)),
        ]
        .into_iter()
        .filter(|b| b.weight != Some(0) || (p == 0 && c == 0))
        .collect::<Vec<_>>()
    };
    let mut weighted_rule = Rule {
        matches: matches.clone(),
        filters: filters.clone(),
        backend_refs: weighted(routes.primary, routes.canary),
        timeouts: timeouts.clone(),
    };
    if routes.mirror {
        weighted_rule.filters.push(Filter {
            r#type: "RequestMirror".into(),
            request_mirror: Some(Mirror {
                backend_ref: service_ref(&canary_svc, port, None),
                percent: routes.mirror_weight.filter(|_| opts.mirror_percent),
            }),
            ..Default::default()
        });
    }

    let analysis = canary.spec.analysis.as_ref();
    let ab: Vec<&AbMatch> = analysis
        .and_then(|a| a.r#match.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let mut rules = Vec::new();
    if !ab.is_empty() {
        // A/B: matching requests get the weighted split (the controller sends 100 to the
        // canary); everything else stays on the primary.
        for m in &ab {
            let extra = ab_match(m, kind)?;
            rules.push(Rule {
                matches: merge(&extra, &matches),
                ..weighted_rule.clone()
            });
        }
        rules.push(Rule {
            matches: matches.clone(),
            filters: filters.clone(),
            backend_refs: vec![service_ref(&primary, port, Some(100))],
            timeouts: timeouts.clone(),
        });
    } else if analysis.and_then(|a| a.session_affinity.as_ref()).is_some() && opts.sticky {
        // The split and the stickiness live in the TraefikService; the route only
        // points at it (see `render_sticky_spec`).
        weighted_rule.backend_refs = vec![sticky_ref(canary)];
        rules.push(weighted_rule);
    } else if let Some(sa) = analysis.and_then(|a| a.session_affinity.as_ref()) {
        let max_age = sa.max_age.unwrap_or(DEFAULT_SESSION_COOKIE_MAX_AGE);
        let status = canary.status_or_default();
        if routes.canary > 0 {
            // Responses from the canary set its cookie; requests carrying it stick to
            // the canary. With primaryCookieName, the same for the primary.
            let cookie = session_cookie(canary, sa);
            if let Some(b) = weighted_rule
                .backend_refs
                .iter_mut()
                .find(|b| b.name == canary_svc)
            {
                b.filters
                    .push(set_cookie_filter(build_set_cookie(&cookie, sa, max_age)));
            }
            rules.push(Rule {
                matches: merge(&cookie_match(&cookie), &matches),
                filters: filters.clone(),
                backend_refs: weighted(0, 100),
                timeouts: timeouts.clone(),
            });
            if let Some(pcookie) = primary_session_cookie(canary, sa) {
                if let Some(b) = weighted_rule
                    .backend_refs
                    .iter_mut()
                    .find(|b| b.name == primary)
                {
                    b.filters
                        .push(set_cookie_filter(build_set_cookie(&pcookie, sa, max_age)));
                }
                rules.push(Rule {
                    matches: merge(&cookie_match(&pcookie), &matches),
                    filters: filters.clone(),
                    backend_refs: weighted(100, 0),
                    timeouts: timeouts.clone(),
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
            let mut primary_ref = service_ref(&primary, port, Some(100));
            primary_ref
                .filters
                .push(set_cookie_filter(build_set_cookie(&prev, sa, -1)));
            rules.push(Rule {
                matches: merge(&cookie_match(&prev), &matches),
                filters: filters.clone(),
                backend_refs: vec![primary_ref],
                timeouts: timeouts.clone(),
            });
        }
        rules.push(weighted_rule);
    } else {
        rules.push(weighted_rule);
    }
    Ok(RouteSpec {
        parent_refs: parent_refs(canary, opts.linkerd)?,
        hostnames: svc.hosts.clone().unwrap_or_default(),
        rules,
    })
}

/// Name of the sticky TraefikService that carries the split in sticky mode.
pub fn sticky_name(canary: &Canary) -> String {
    format!("{}-sticky", canary.apex_name())
}

fn sticky_ref(canary: &Canary) -> BackendRef {
    BackendRef {
        group: Some(super::traefik::GROUP.into()),
        kind: Some("TraefikService".into()),
        name: sticky_name(canary),
        ..Default::default()
    }
}

/// Whether a generated route sends its traffic through the sticky TraefikService.
pub fn uses_sticky(canary: &Canary, spec: &RouteSpec) -> bool {
    let name = sticky_name(canary);
    spec.rules.iter().any(|r| {
        r.backend_refs
            .iter()
            .any(|b| b.kind.as_deref() == Some("TraefikService") && b.name == name)
    })
}

/// The sticky TraefikService's spec: Traefik's weighted round robin with a sticky
/// cookie named `sessionAffinity.cookieName`. A client keeps the backend that answered
/// its first request while that backend is in the split; one whose backend left it
/// (the canary after a promotion or rollback) is balanced again and its cookie is
/// overwritten with the new backend's. Zero-weight backends are left out, as in routes.
pub fn render_sticky_spec(
    canary: &Canary,
    routes: Routes,
) -> Result<super::traefik::TraefikServiceSpec, RouterError> {
    let sa = canary
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.session_affinity.as_ref())
        .ok_or_else(|| {
            RouterError::InvalidRoute("sticky mode needs analysis.sessionAffinity".into())
        })?;
    let (mut split, _) = super::traefik::render_specs(
        canary,
        Routes {
            mirror: false,
            mirror_weight: None,
            ..routes
        },
    )?;
    if sa.domain.is_some() || sa.path.is_some() || sa.partitioned == Some(true) {
        tracing::warn!(
            canary = canary.name_str(),
            "sessionAffinity domain/path/partitioned are not written: Traefik's sticky cookie has none (Path=/)"
        );
    }
    if let Some(w) = split.weighted.as_mut() {
        w.sticky = Some(super::traefik::Sticky {
            cookie: super::traefik::StickyCookie {
                name: sa.cookie_name.clone(),
                http_only: sa.http_only,
                secure: sa.secure,
                same_site: sa.same_site.clone(),
                max_age: Some(sa.max_age.unwrap_or(DEFAULT_SESSION_COOKIE_MAX_AGE)),
            },
        });
    }
    Ok(split)
}

/// Every feature a route spec needs from its data plane.
pub fn features_of(spec: &RouteSpec, kind: RouteKind) -> BTreeSet<Feature> {
    let mut out = BTreeSet::new();
    if kind == RouteKind::Grpc {
        out.insert(Feature::GrpcRoute);
    }
    let filter_features = |f: &Filter, backend: bool, out: &mut BTreeSet<Feature>| {
        let feature = match (f.r#type.as_str(), backend) {
            ("RequestHeaderModifier", false) => Feature::RequestHeaderModifier,
            ("RequestHeaderModifier", true) => Feature::BackendRequestHeaderModifier,
            ("ResponseHeaderModifier", false) => Feature::ResponseHeaderModifier,
            ("ResponseHeaderModifier", true) => Feature::BackendResponseHeaderModifier,
            ("URLRewrite", _) => Feature::UrlRewrite,
            ("RequestMirror", _) => {
                if f.request_mirror
                    .as_ref()
                    .is_some_and(|m| m.percent.is_some())
                {
                    out.insert(Feature::MirrorPercent);
                }
                Feature::RequestMirror
            }
            _ => return,
        };
        out.insert(feature);
    };
    for rule in &spec.rules {
        for m in &rule.matches {
            if m.headers.iter().any(|h| h.r#type == "RegularExpression") {
                out.insert(Feature::HeaderRegexMatch);
            }
            if m.path
                .as_ref()
                .is_some_and(|p| p.r#type == "RegularExpression")
            {
                out.insert(Feature::PathRegexMatch);
            }
            if !m.query_params.is_empty() {
                out.insert(Feature::QueryParamMatch);
            }
            if m.method.is_some() && kind == RouteKind::Http {
                out.insert(Feature::MethodMatch);
            }
        }
        for f in &rule.filters {
            filter_features(f, false, &mut out);
        }
        for b in &rule.backend_refs {
            if b.kind.as_deref() == Some("TraefikService") {
                out.insert(Feature::TraefikServiceBackend);
            }
            for f in &b.filters {
                filter_features(f, true, &mut out);
            }
        }
        if rule.timeouts.is_some() {
            out.insert(Feature::RequestTimeout);
        }
    }
    out
}

/// Which part of the Canary spec asks for `f`, for the refusal message.
fn origin_of(canary: &Canary, f: Feature) -> String {
    let svc = canary.spec.service.as_ref();
    let analysis = canary.spec.analysis.as_ref();
    let affinity = analysis.is_some_and(|a| a.session_affinity.is_some());
    let ab = analysis
        .and_then(|a| a.r#match.as_ref())
        .is_some_and(|m| !m.is_empty());
    let service_match = svc
        .and_then(|s| s.r#match.as_ref())
        .is_some_and(|m| !m.is_empty());
    let from = match f {
        Feature::HeaderRegexMatch if affinity && !ab => "analysis.sessionAffinity",
        Feature::HeaderRegexMatch | Feature::QueryParamMatch if ab && !service_match => {
            "analysis.match"
        }
        Feature::HeaderRegexMatch | Feature::QueryParamMatch if ab => {
            "service.match or analysis.match"
        }
        Feature::HeaderRegexMatch
        | Feature::QueryParamMatch
        | Feature::PathRegexMatch
        | Feature::MethodMatch => "service.match",
        Feature::BackendResponseHeaderModifier | Feature::TraefikServiceBackend => {
            "analysis.sessionAffinity"
        }
        Feature::RequestHeaderModifier | Feature::ResponseHeaderModifier => "service.headers",
        Feature::BackendRequestHeaderModifier => "service.headers",
        Feature::UrlRewrite => "service.rewrite",
        Feature::RequestMirror => "analysis.mirror or service.mirror",
        Feature::MirrorPercent => "analysis.mirrorWeight",
        Feature::RequestTimeout => "service.timeout",
        Feature::GrpcRoute => "service.appProtocol",
    };
    from.to_string()
}

/// Refuses a Canary whose routes need what `caps` lacks. Every split the release can
/// write is checked (idle, a weighted step, a mirror step), so the refusal comes before
/// the first write, not in the middle of a release.
pub fn check_release(
    canary: &Canary,
    opts: RenderOptions,
    caps: &Capabilities,
) -> Result<(), RouterError> {
    let mut needed = BTreeSet::new();
    let analysis = canary.spec.analysis.as_ref();
    let mut splits = vec![Routes::PRIMARY, Routes::weighted(50)];
    if analysis.and_then(|a| a.mirror) == Some(true) {
        splits.push(Routes {
            mirror: true,
            mirror_weight: analysis.and_then(|a| a.mirror_weight),
            ..Routes::PRIMARY
        });
    }
    for routes in splits {
        needed.extend(features_of(
            &render_route_spec(canary, routes, opts)?,
            opts.kind,
        ));
    }
    check_features(canary, &needed, caps)
}

fn check_features(
    canary: &Canary,
    needed: &BTreeSet<Feature>,
    caps: &Capabilities,
) -> Result<(), RouterError> {
    match caps.missing(needed).first() {
        None => Ok(()),
        Some(f) => Err(RouterError::Unsupported {
            feature: f.name(),
            what: f.describe(),
            origin: origin_of(canary, *f),
            implementation: caps.implementation.clone(),
        }),
    }
}

/// How to render for `caps`: session affinity uses the regex scheme where the data
/// plane has regex header matches and backend Set-Cookie filters, else a sticky
/// TraefikService where the data plane takes TraefikService backendRefs and the
/// cluster serves them; otherwise the regex scheme, which `check_release` refuses.
pub fn plan(
    canary: &Canary,
    mut opts: RenderOptions,
    caps: &Capabilities,
    traefik_served: bool,
) -> RenderOptions {
    let analysis = canary.spec.analysis.as_ref();
    let affinity = analysis.is_some_and(|a| a.session_affinity.is_some());
    let ab = analysis
        .and_then(|a| a.r#match.as_ref())
        .is_some_and(|m| !m.is_empty());
    let regex_ok = caps.supports(Feature::HeaderRegexMatch)
        && caps.supports(Feature::BackendResponseHeaderModifier);
    opts.sticky = affinity
        && !ab
        && !regex_ok
        && traefik_served
        && caps.supports(Feature::TraefikServiceBackend);
    opts
}

/// Reads the split back from a generated route: the first rule that carries both the
/// primary and canary backendRefs and is not a session-affinity sticky rule.
pub fn routes_of_spec(canary: &Canary, spec: &RouteSpec) -> Result<Routes, RouterError> {
    let primary = canary.primary_service_name();
    let canary_svc = canary.canary_service_name();
    let cookie_names: Vec<String> = canary
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.session_affinity.as_ref())
        .map(|s| {
            let mut names = vec![s.cookie_name.clone()];
            names.extend(s.primary_cookie_name.clone().filter(|n| !n.is_empty()));
            names
        })
        .unwrap_or_default();
    let weight_of = |r: &Rule, n: &str| -> Option<u32> {
        r.backend_refs
            .iter()
            .find(|b| b.name == n)
            .map(|b| b.weight.unwrap_or(1))
    };
    let rule = spec
        .rules
        .iter()
        .filter(|r| !cookie_names.iter().any(|c| is_sticky(r, c)))
        .find(|r| weight_of(r, &primary).is_some() || weight_of(r, &canary_svc).is_some())
        .ok_or_else(|| {
            RouterError::InvalidRoute(format!("no rule routes to {primary} or {canary_svc}"))
        })?;
    let (p, c) = (
        weight_of(rule, &primary).unwrap_or(0),
        weight_of(rule, &canary_svc).unwrap_or(0),
    );
    let mirror = rule.filters.iter().find_map(|f| {
        f.request_mirror
            .as_ref()
            .filter(|m| f.r#type == "RequestMirror" && m.backend_ref.name == canary_svc)
    });
    normalize(p, c, mirror.is_some(), mirror.and_then(|m| m.percent))
}

/// Weights are relative in Gateway API; Serin writes them summing to 100, a route
/// edited by hand may not.
fn normalize(
    p: u32,
    c: u32,
    mirror: bool,
    mirror_weight: Option<u32>,
) -> Result<Routes, RouterError> {
    let total = p + c;
    if total == 0 {
        return Err(RouterError::InvalidWeights {
            primary: p,
            canary: c,
        });
    }
    let canary = ((c as f64) * 100.0 / (total as f64)).round() as u32;
    routes_from(100 - canary, canary, mirror, mirror_weight)
}

// ---- routeRef mode: precise edits of a user-owned route ----

fn is_ref_to(b: &Value, name: &str, namespace: &str) -> bool {
    let group_ok = matches!(
        b.get("group").and_then(Value::as_str),
        None | Some("") | Some("core")
    );
    let kind_ok = matches!(
        b.get("kind").and_then(Value::as_str),
        None | Some("Service")
    );
    let ns_ok = b
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(|n| n == namespace);
    group_ok && kind_ok && ns_ok && b.get("name").and_then(Value::as_str) == Some(name)
}

/// Rewrites the user's `spec.rules`: in each rule that references the apex Service (or
/// that Serin already split), the apex backendRef becomes primary/canary backendRefs
/// with `routes` weights, or, with `routes == None` (finalize), goes back to a single
/// apex backendRef. Everything else is copied as is.
pub fn edit_user_rules(
    canary: &Canary,
    rules: &Value,
    routes: Option<Routes>,
) -> Result<Value, RouterError> {
    let ns = canary.namespace_or_default();
    let apex = canary.apex_name();
    let primary = canary.primary_service_name();
    let canary_svc = canary.canary_service_name();
    let Some(rules) = rules.as_array() else {
        return Err(RouterError::InvalidRoute(
            "the route has no spec.rules".into(),
        ));
    };
    let mut out = Vec::with_capacity(rules.len());
    let mut edited = 0;
    for rule in rules {
        let refs = rule.get("backendRefs").and_then(Value::as_array);
        let Some(refs) = refs else {
            out.push(rule.clone());
            continue;
        };
        let ours = |b: &Value| {
            is_ref_to(b, &apex, &ns)
                || is_ref_to(b, &primary, &ns)
                || is_ref_to(b, &canary_svc, &ns)
        };
        let Some(pos) = refs.iter().position(ours) else {
            out.push(rule.clone());
            continue;
        };
        edited += 1;
        // The template is the apex ref (or, once split, the primary ref that copied it).
        let template = refs
            .iter()
            .find(|b| is_ref_to(b, &apex, &ns))
            .or_else(|| refs.iter().find(|b| is_ref_to(b, &primary, &ns)))
            .unwrap_or(&refs[pos])
            .clone();
        let with = |name: &str, weight: Option<u32>| {
            let mut b = template.clone();
            if let Some(m) = b.as_object_mut() {
                m.insert("name".into(), json!(name));
                match weight {
                    Some(w) => m.insert("weight".into(), json!(w)),
                    None => m.remove("weight"),
                };
            }
            b
        };
        // Zero-weight refs are left out, as in generated routes (see render_route_spec).
        let replacement = match routes {
            Some(r) => [(&primary, r.primary), (&canary_svc, r.canary)]
                .into_iter()
                .filter(|(_, w)| *w > 0 || (r.primary == 0 && r.canary == 0))
                .map(|(n, w)| with(n, Some(w)))
                .collect(),
            None => vec![with(&apex, None)],
        };
        let mut new_refs: Vec<Value> = Vec::with_capacity(refs.len() + 1);
        for (i, b) in refs.iter().enumerate() {
            if i == pos {
                new_refs.extend(replacement.iter().cloned());
            } else if !ours(b) {
                new_refs.push(b.clone());
            }
        }
        let mut rule = rule.clone();
        if let Some(m) = rule.as_object_mut() {
            m.insert("backendRefs".into(), Value::Array(new_refs));
            // Mirror steps: the only filter Serin touches is its own mirror to the canary.
            let mirror_wanted = routes.is_some_and(|r| r.mirror);
            let is_our_mirror = |f: &Value| {
                f.get("type").and_then(Value::as_str) == Some("RequestMirror")
                    && f.pointer("/requestMirror/backendRef")
                        .is_some_and(|b| is_ref_to(b, &canary_svc, &ns))
            };
            let had_filters = m.contains_key("filters");
            let mut filters: Vec<Value> = m
                .get("filters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let before = filters.len();
            let had_ours = filters.iter().any(is_our_mirror);
            if mirror_wanted != had_ours {
                filters.retain(|f| !is_our_mirror(f));
                if mirror_wanted {
                    let port = template.get("port").cloned();
                    let mut b = json!({"group": "", "kind": "Service", "name": canary_svc});
                    if let (Some(p), Some(o)) = (port, b.as_object_mut()) {
                        o.insert("port".into(), p);
                    }
                    filters
                        .push(json!({"type": "RequestMirror", "requestMirror": {"backendRef": b}}));
                }
                if filters.is_empty() && !had_filters {
                    m.remove("filters");
                } else if filters.len() != before || mirror_wanted {
                    m.insert("filters".into(), Value::Array(filters));
                }
            }
        }
        out.push(rule);
    }
    if edited == 0 {
        return Err(RouterError::InvalidRoute(format!(
            "no rule of {} references the apex Service {apex}: Serin only splits the rules \
             whose backendRefs point at it",
            canary
                .spec
                .route_ref
                .as_ref()
                .map(|r| format!("{} {}", r.kind, r.name))
                .unwrap_or_else(|| "the route".into())
        )));
    }
    Ok(Value::Array(out))
}

/// Reads the split from a user-owned route's first edited rule; a rule still pointing
/// at the apex alone is 100% primary (the apex selects the primary pods).
pub fn routes_of_user_rules(canary: &Canary, rules: &Value) -> Result<Routes, RouterError> {
    let ns = canary.namespace_or_default();
    let (apex, primary, canary_svc) = (
        canary.apex_name(),
        canary.primary_service_name(),
        canary.canary_service_name(),
    );
    for rule in rules.as_array().into_iter().flatten() {
        let refs: Vec<&Value> = rule
            .get("backendRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let w = |n: &str| {
            refs.iter()
                .find(|b| is_ref_to(b, n, &ns))
                .map(|b| b.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32)
        };
        if w(&primary).is_some() || w(&canary_svc).is_some() {
            let (p, c) = (w(&primary).unwrap_or(0), w(&canary_svc).unwrap_or(0));
            let mirror = rule
                .get("filters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|f| {
                    f.pointer("/requestMirror/backendRef")
                        .is_some_and(|b| is_ref_to(b, &canary_svc, &ns))
                });
            return normalize(p, c, mirror, None);
        }
        if w(&apex).is_some() {
            return Ok(Routes::PRIMARY);
        }
    }
    Err(RouterError::InvalidRoute(format!(
        "no rule references the apex Service {apex} or {primary}/{canary_svc}"
    )))
}

/// Route status → `RouteStatus`.
pub fn route_status(route: &Value) -> RouteStatus {
    let generation = route
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let parents = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty());
    let Some(parents) = parents else {
        return RouteStatus::Unknown(
            "the Gateway API implementation writes no route status (status.parents is empty)"
                .into(),
        );
    };
    for p in parents {
        let parent = p
            .pointer("/parentRef/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let accepted = p
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Accepted"));
        let Some(c) = accepted else {
            return RouteStatus::Unknown(format!(
                "parent {parent} reports no Accepted condition yet"
            ));
        };
        let observed = c.get("observedGeneration").and_then(Value::as_i64);
        if let (Some(o), Some(g)) = (observed, generation)
            && o < g
        {
            return RouteStatus::Unknown(format!(
                "parent {parent} has not observed generation {g} yet (at {o})"
            ));
        }
        if c.get("status").and_then(Value::as_str) != Some("True") {
            let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            return RouteStatus::NotAccepted(format!("parent {parent}: {reason}: {msg}"));
        }
        // Accepted with a backendRef it cannot resolve still serves nothing there.
        let resolved = p
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("ResolvedRefs"));
        if let Some(r) = resolved {
            let stale = matches!(
                (r.get("observedGeneration").and_then(Value::as_i64), generation),
                (Some(o), Some(g)) if o < g
            );
            if !stale && r.get("status").and_then(Value::as_str) == Some("False") {
                let reason = r.get("reason").and_then(Value::as_str).unwrap_or("");
                let msg = r.get("message").and_then(Value::as_str).unwrap_or("");
                return RouteStatus::NotAccepted(format!(
                    "parent {parent}: ResolvedRefs {reason}: {msg}"
                ));
            }
        }
    }
    RouteStatus::Accepted
}

/// Reads the HTTPRoute CRD to learn which optional fields its schema has:
/// (`requestMirror.percent`, `rules[].timeouts`). Unknown (CRD unreadable) is "no":
/// writing a field the schema prunes would make every compare differ.
pub async fn crd_features(client: &kube::Client) -> (bool, bool) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let Ok(crd) = api.get("httproutes.gateway.networking.k8s.io").await else {
        return (false, false);
    };
    let Ok(v) = serde_json::to_value(&crd.spec) else {
        return (false, false);
    };
    (
        has_property(&v, "requestMirror", "percent"),
        has_property(&v, "rules", "timeouts"),
    )
}

fn has_property(v: &Value, parent: &str, child: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, val)| {
            (k == parent
                && (val.pointer(&format!("/properties/{child}")).is_some()
                    || val.pointer(&format!("/items/properties/{child}")).is_some()))
                || has_property(val, parent, child)
        }),
        Value::Array(a) => a.iter().any(|x| has_property(x, parent, child)),
        _ => false,
    }
}

pub struct GatewayApiRouter {
    k8s: KubernetesRouter,
    client: kube::Client,
    apis: RoutingApis,
    linkerd: bool,
}

impl GatewayApiRouter {
    /// Reads the backend Services from a watch cache (see `KubernetesRouter`).
    pub fn with_services(mut self, services: std::sync::Arc<dyn super::ServiceLookup>) -> Self {
        self.k8s = self.k8s.with_services(services);
        self
    }

    pub fn new(client: kube::Client, apis: RoutingApis, linkerd: bool) -> Self {
        GatewayApiRouter {
            k8s: KubernetesRouter::new(client.clone(), false),
            client,
            apis,
            linkerd,
        }
    }

    fn provider(&self) -> &'static str {
        if self.linkerd {
            "linkerd"
        } else {
            "gatewayapi"
        }
    }

    /// The user's route, when `spec.routeRef` names a Gateway API route.
    fn user_route(
        canary: &Canary,
    ) -> Result<Option<(RouteKind, Option<String>, String)>, RouterError> {
        let Some(r) = &canary.spec.route_ref else {
            return Ok(None);
        };
        let kind = match r.kind.as_str() {
            "HTTPRoute" => RouteKind::Http,
            "GRPCRoute" => RouteKind::Grpc,
            other => {
                return Err(RouterError::InvalidRoute(format!(
                    "spec.routeRef.kind {other:?}: the Gateway API router edits HTTPRoute or GRPCRoute"
                )));
            }
        };
        let version = match r.api_version.split_once('/') {
            Some((GROUP, v)) => Some(v.to_string()),
            None if r.api_version.is_empty() => None,
            _ => {
                return Err(RouterError::InvalidRoute(format!(
                    "spec.routeRef.apiVersion {:?} is not {GROUP}/<version>",
                    r.api_version
                )));
            }
        };
        Ok(Some((kind, version, r.name.clone())))
    }

    fn route_kind(canary: &Canary) -> Result<RouteKind, RouterError> {
        let proto = service_spec(canary)?
            .app_protocol
            .clone()
            .unwrap_or_default()
            .to_lowercase();
        Ok(if proto == "grpc" || proto == "grpcs" {
            RouteKind::Grpc
        } else {
            RouteKind::Http
        })
    }

    /// API resource for `kind`, failing with `MissingCrd` when the cluster serves none.
    fn resource(
        &self,
        kind: RouteKind,
        version: Option<String>,
    ) -> Result<kube::api::ApiResource, RouterError> {
        let served = match kind {
            RouteKind::Http => self.apis.httproute_version.clone(),
            RouteKind::Grpc => self.apis.grpcroute_version.clone(),
        };
        require(served.is_some(), self.provider(), GROUP, kind.kind())?;
        let version = version.or(served).unwrap_or_else(|| "v1".into());
        Ok(api_resource(GROUP, &version, kind.kind(), kind.plural()))
    }

    fn options(&self, kind: RouteKind) -> RenderOptions {
        RenderOptions {
            kind,
            mirror_percent: self.apis.gateway_mirror_percent,
            timeouts: self.apis.gateway_timeouts,
            linkerd: self.linkerd,
            sticky: false,
        }
    }

    /// What the data planes of `parents` serve (all of them, for a route attached to
    /// several). A Gateway is read for its class, the GatewayClass for its controller,
    /// published features and override annotation. A parent that cannot be read (403,
    /// or not found: `check_parents` reports that) is not held against the route.
    async fn capabilities(
        &self,
        canary: &Canary,
        parents: &[ParentReference],
    ) -> Result<Capabilities, RouterError> {
        let ns = canary.namespace_or_default();
        let gw_version = match self.apis.httproute_version.as_deref() {
            Some("v1beta1") => "v1beta1",
            _ => "v1",
        };
        let mut out: Option<Capabilities> = None;
        for p in parents {
            let kind = p.kind.clone().unwrap_or_else(|| "Gateway".into());
            let caps = match (kind.as_str(), p.group.as_deref()) {
                ("Gateway", None | Some(GROUP)) => {
                    let pns = p.namespace.clone().unwrap_or_else(|| ns.clone());
                    let gw_ar = api_resource(GROUP, gw_version, "Gateway", "gateways");
                    let Some(gw) = self.read_opt(&gw_ar, Some(&pns), &p.name).await? else {
                        continue;
                    };
                    let class = gw
                        .data
                        .pointer("/spec/gatewayClassName")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let gc_ar = api_resource(GROUP, gw_version, "GatewayClass", "gatewayclasses");
                    let Some(gc) = self.read_opt(&gc_ar, None, &class).await? else {
                        continue;
                    };
                    let v = serde_json::to_value(&gc).map_err(|source| RouterError::Serde {
                        context: format!("read GatewayClass {class}"),
                        source,
                    })?;
                    Capabilities::from_gateway_class(&v, &self.apis.gateway_features)
                        .map_err(RouterError::InvalidRoute)?
                }
                // GAMMA: the mesh serves the route.
                ("Service", _) if self.linkerd => {
                    Capabilities::for_controller(super::capabilities::LINKERD)
                }
                _ => continue,
            };
            out = Some(match out {
                Some(prev) => prev.intersect(&caps),
                None => caps,
            });
        }
        Ok(out.unwrap_or_else(|| {
            if self.linkerd {
                Capabilities::for_controller(super::capabilities::LINKERD)
            } else {
                Capabilities::all("an unidentified Gateway API implementation")
            }
        }))
    }

    async fn read_opt(
        &self,
        ar: &kube::api::ApiResource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<kube::api::DynamicObject>, RouterError> {
        let api: kube::Api<kube::api::DynamicObject> = match ns {
            Some(ns) => apply::dyn_api(&self.client, ar, ns),
            None => kube::Api::all_with(self.client.clone(), ar),
        };
        match api.get_opt(name).await {
            Ok(o) => Ok(o),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::warn!(kind = %ar.kind, %name, "cannot read, capabilities not known: {}", e.message);
                Ok(None)
            }
            Err(source) => Err(RouterError::Kube {
                context: format!("get {} {name}", ar.kind),
                source,
            }),
        }
    }

    /// Render options for a generated route on this Canary's data plane, after
    /// refusing a Canary whose release needs what the data plane lacks.
    async fn checked_options(
        &self,
        canary: &Canary,
        kind: RouteKind,
    ) -> Result<RenderOptions, RouterError> {
        let parents = parent_refs(canary, self.linkerd)?;
        let caps = self.capabilities(canary, &parents).await?;
        let opts = plan(canary, self.options(kind), &caps, self.apis.traefik);
        check_release(canary, opts, &caps)?;
        Ok(opts)
    }

    /// A user-owned route gets only backendRefs and, for mirror steps, a RequestMirror
    /// filter: refused when its data plane has no mirroring.
    async fn check_user_route(
        &self,
        canary: &Canary,
        live: &kube::api::DynamicObject,
    ) -> Result<(), RouterError> {
        let mirror = canary.spec.analysis.as_ref().and_then(|a| a.mirror) == Some(true);
        if !mirror {
            return Ok(());
        }
        let parents: Vec<ParentReference> = live
            .data
            .pointer("/spec/parentRefs")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let caps = self.capabilities(canary, &parents).await?;
        check_features(canary, &BTreeSet::from([Feature::RequestMirror]), &caps)
    }

    async fn sticky_live(
        &self,
        canary: &Canary,
    ) -> Result<Option<super::traefik::TraefikServiceSpec>, RouterError> {
        let ar = sticky_resource();
        let ns = canary.namespace_or_default();
        let name = sticky_name(canary);
        let Some(live) =
            apply::get_opt(&apply::dyn_api(&self.client, &ar, &ns), &ar, &ns, &name).await?
        else {
            return Ok(None);
        };
        serde_json::from_value(live.data.get("spec").cloned().unwrap_or_default())
            .map(Some)
            .map_err(|source| RouterError::Serde {
                context: format!("read TraefikService {ns}/{name}"),
                source,
            })
    }

    /// The split of a generated route, read from the sticky TraefikService when the
    /// route points at it.
    async fn routes_of_live(
        &self,
        canary: &Canary,
        spec: &RouteSpec,
    ) -> Result<Routes, RouterError> {
        if uses_sticky(canary, spec) {
            let ts = self
                .sticky_live(canary)
                .await?
                .ok_or_else(|| RouterError::NotFound {
                    kind: "TraefikService".into(),
                    namespace: canary.namespace_or_default(),
                    name: sticky_name(canary),
                })?;
            return super::traefik::routes_of(canary, &ts, None);
        }
        routes_of_spec(canary, spec)
    }

    /// Fails with `NotFound` when a parentRef names a Gateway (or a Service, for GAMMA)
    /// that does not exist: a route attached to nothing carries no traffic, and the
    /// user should hear why. A parent the operator may not read (403) is not checked.
    async fn check_parents(&self, canary: &Canary) -> Result<(), RouterError> {
        let ns = canary.namespace_or_default();
        let gw_version = match self.apis.httproute_version.as_deref() {
            Some("v1beta1") => "v1beta1",
            _ => "v1",
        };
        for p in parent_refs(canary, self.linkerd)? {
            let pns = p.namespace.clone().unwrap_or_else(|| ns.clone());
            let kind = p.kind.clone().unwrap_or_else(|| "Gateway".into());
            let ar = match (kind.as_str(), p.group.as_deref()) {
                ("Gateway", None | Some(GROUP)) => {
                    api_resource(GROUP, gw_version, "Gateway", "gateways")
                }
                ("Service", None | Some("") | Some("core")) => {
                    // The apex Service is the router's own: it exists once reconciled.
                    if p.name == canary.apex_name() && pns == ns {
                        continue;
                    }
                    kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&())
                }
                _ => continue,
            };
            match apply::dyn_api(&self.client, &ar, &pns)
                .get_opt(&p.name)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(RouterError::NotFound {
                        kind,
                        namespace: pns,
                        name: p.name.clone(),
                    });
                }
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::warn!(parent = %p.name, namespace = %pns, "cannot read parentRef, not checked: {}", e.message);
                }
                Err(source) => {
                    return Err(RouterError::Kube {
                        context: format!("get parentRef {kind} {pns}/{}", p.name),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn refuse_user_route_features(canary: &Canary) -> Result<(), RouterError> {
        let a = canary.spec.analysis.as_ref();
        if a.and_then(|a| a.r#match.as_ref())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(RouterError::InvalidRoute(
                "analysis.match (A/B) needs rules of its own and is not supported with a user-owned routeRef".into(),
            ));
        }
        if a.and_then(|a| a.session_affinity.as_ref()).is_some() {
            return Err(RouterError::InvalidRoute(
                "analysis.sessionAffinity needs rules of its own and is not supported with a user-owned routeRef".into(),
            ));
        }
        Ok(())
    }

    async fn live(
        &self,
        canary: &Canary,
        ar: &kube::api::ApiResource,
        name: &str,
    ) -> Result<Option<kube::api::DynamicObject>, RouterError> {
        let ns = canary.namespace_or_default();
        apply::get_opt(&apply::dyn_api(&self.client, ar, &ns), ar, &ns, name).await
    }

    async fn live_required(
        &self,
        canary: &Canary,
        ar: &kube::api::ApiResource,
        name: &str,
    ) -> Result<kube::api::DynamicObject, RouterError> {
        self.live(canary, ar, name)
            .await?
            .ok_or_else(|| RouterError::NotFound {
                kind: ar.kind.clone(),
                namespace: canary.namespace_or_default(),
                name: name.to_string(),
            })
    }

    /// Writes `routes` (or, for `None`, the current split / finalize as documented).
    async fn write(
        &self,
        canary: &Canary,
        routes: Option<Routes>,
        finalize: bool,
    ) -> Result<(), RouterError> {
        if let Some((kind, version, name)) = Self::user_route(canary)? {
            let ar = self.resource(kind, version)?;
            Self::refuse_user_route_features(canary)?;
            let live = self.live_required(canary, &ar, &name).await?;
            if !finalize {
                self.check_user_route(canary, &live).await?;
            }
            let rules = live
                .data
                .pointer("/spec/rules")
                .cloned()
                .unwrap_or(Value::Null);
            let target = if finalize {
                None
            } else {
                Some(match routes {
                    Some(r) => r,
                    None => routes_of_user_rules(canary, &rules)?,
                })
            };
            let new_rules = edit_user_rules(canary, &rules, target)?;
            apply::patch_user_object(&self.client, &ar, &live, &[("/spec/rules", new_rules)])
                .await?;
            return Ok(());
        }
        let kind = Self::route_kind(canary)?;
        let ar = self.resource(kind, None)?;
        let name = canary.apex_name();
        if finalize {
            // The generated route is garbage-collected with the Canary; until then it
            // sends everything to the apex, which finalize points at the target pods.
            let Some(live) = self.live(canary, &ar, &name).await? else {
                return Ok(());
            };
            let mut spec: RouteSpec =
                serde_json::from_value(live.data.get("spec").cloned().unwrap_or_default())
                    .map_err(|source| RouterError::Serde {
                        context: format!("read {} {name}", ar.kind),
                        source,
                    })?;
            finalize_rules(canary, &mut spec)?;
            let rules = serde_json::to_value(&spec.rules).map_err(|source| RouterError::Serde {
                context: format!("render {} {name}", ar.kind),
                source,
            })?;
            apply::patch_user_object(&self.client, &ar, &live, &[("/spec/rules", rules)]).await?;
            return Ok(());
        }
        let opts = self.checked_options(canary, kind).await?;
        let routes = match routes {
            Some(r) => r,
            None => match self.live(canary, &ar, &name).await? {
                Some(live) => match serde_json::from_value::<RouteSpec>(
                    live.data.get("spec").cloned().unwrap_or_default(),
                ) {
                    Ok(s) => self
                        .routes_of_live(canary, &s)
                        .await
                        .unwrap_or(Routes::PRIMARY),
                    Err(_) => Routes::PRIMARY,
                },
                None => Routes::PRIMARY,
            },
        };
        if opts.sticky {
            // The TraefikService must exist before the route points at it: a route to
            // a missing service is one Traefik cannot serve.
            let ts = render_sticky_spec(canary, routes)?;
            let ts_ar = sticky_resource();
            let v = serde_json::to_value(&ts).map_err(|source| RouterError::Serde {
                context: format!("render TraefikService {}", sticky_name(canary)),
                source,
            })?;
            let custom = canary.spec.service.as_ref().and_then(|s| s.apex.as_ref());
            let obj = generated_object(
                canary,
                &ts_ar,
                &sticky_name(canary),
                custom,
                json!({ "spec": v }),
            );
            if apply::ensure(&self.client, &ts_ar, obj, &["/spec"]).await?
                == apply::Applied::Created
            {
                // Traefik's CRD and Gateway providers load independently (each with
                // a 1 s throttle): a route switched to a TraefikService the CRD side
                // has not loaded yet answers "service does not exist" meanwhile.
                tokio::time::sleep(STICKY_SETTLE).await;
            }
        }
        let mut spec = render_route_spec(canary, routes, opts)?;
        if routes.canary == 0 && !routes.mirror {
            let confirmed = match self.live(canary, &ar, &name).await? {
                Some(live) => {
                    confirmed_spec(&live).and_then(|v| serde_json::from_value::<RouteSpec>(v).ok())
                }
                None => None,
            };
            spec = safe_primary_spec(canary, spec, opts, confirmed.as_ref())?;
        }
        let obj = route_object(canary, spec, opts, &ar)?;
        apply::ensure(&self.client, &ar, obj, &["/spec"]).await?;
        Ok(())
    }
}

/// How long a new sticky TraefikService is given to reach Traefik before a route
/// points at it.
const STICKY_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

fn sticky_resource() -> kube::api::ApiResource {
    api_resource(
        super::traefik::GROUP,
        super::traefik::VERSION,
        "TraefikService",
        "traefikservices",
    )
}

/// Finalize of a generated route: every rule sends everything to the apex Service (no
/// mirror), which finalize points at the target's pods, until the route is
/// garbage-collected with the Canary.
pub fn finalize_rules(canary: &Canary, spec: &mut RouteSpec) -> Result<(), RouterError> {
    let port = service_spec(canary)?.port;
    let apex = canary.apex_name();
    for rule in &mut spec.rules {
        rule.backend_refs = vec![service_ref(&apex, port, None)];
        rule.filters.retain(|f| f.r#type != "RequestMirror");
    }
    Ok(())
}

/// The generated route object (metadata from `service.apex`).
pub fn render_route(
    canary: &Canary,
    routes: Routes,
    opts: RenderOptions,
    ar: &kube::api::ApiResource,
) -> Result<kube::api::DynamicObject, RouterError> {
    route_object(canary, render_route_spec(canary, routes, opts)?, opts, ar)
}

fn route_object(
    canary: &Canary,
    spec: RouteSpec,
    opts: RenderOptions,
    ar: &kube::api::ApiResource,
) -> Result<kube::api::DynamicObject, RouterError> {
    let spec = serde_json::to_value(spec).map_err(|source| RouterError::Serde {
        context: format!("render {} {}", opts.kind.kind(), canary.apex_name()),
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

/// Annotations on a generated route recording the spec the data plane last confirmed
/// and at which generation, so that an unconfirmed write can be undone exactly.
pub const CONFIRMED_SPEC_ANNOTATION: &str = "serin.dev/confirmed-spec";
pub const CONFIRMED_GENERATION_ANNOTATION: &str = "serin.dev/confirmed-generation";

/// The last confirmed spec recorded on a live route.
pub fn confirmed_spec(live: &kube::api::DynamicObject) -> Option<Value> {
    live.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIRMED_SPEC_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok())
}

/// Rollback and finalization must not need anything the data plane has not already
/// served: a primary-only route needing a feature the last confirmed spec did not
/// use (the regex cookie-expiry rule, say) is written without session affinity
/// rules, and if even that needs more, the last confirmed spec is kept.
pub fn safe_primary_spec(
    canary: &Canary,
    rendered: RouteSpec,
    opts: RenderOptions,
    confirmed: Option<&RouteSpec>,
) -> Result<RouteSpec, RouterError> {
    let Some(confirmed) = confirmed else {
        return Ok(rendered);
    };
    let allowed = features_of(confirmed, opts.kind);
    if features_of(&rendered, opts.kind).is_subset(&allowed) {
        return Ok(rendered);
    }
    let mut plain = canary.clone();
    if let Some(a) = plain.spec.analysis.as_mut() {
        a.session_affinity = None;
    }
    let spec = render_route_spec(
        &plain,
        Routes::PRIMARY,
        RenderOptions {
            sticky: false,
            ..opts
        },
    )?;
    if features_of(&spec, opts.kind).is_subset(&allowed) {
        Ok(spec)
    } else {
        Ok(confirmed.clone())
    }
}

impl Router for GatewayApiRouter {
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // CRD and user-route checks come before any write, Services included.
            let kind = match Self::user_route(canary)? {
                Some((k, _, _)) => k,
                None => Self::route_kind(canary)?,
            };
            self.resource(kind, None)?;
            // The route and its parents must be usable before anything is written.
            if let Some((kind, version, name)) = Self::user_route(canary)? {
                let ar = self.resource(kind, version)?;
                Self::refuse_user_route_features(canary)?;
                let live = self.live_required(canary, &ar, &name).await?;
                let rules = live.data.pointer("/spec/rules").unwrap_or(&Value::Null);
                edit_user_rules(canary, rules, Some(Routes::PRIMARY))?;
                self.check_user_route(canary, &live).await?;
            } else {
                render_route_spec(canary, Routes::PRIMARY, self.options(kind))?;
                self.check_parents(canary).await?;
                self.checked_options(canary, kind).await?;
            }
            self.k8s.reconcile_services(canary, inputs).await?;
            self.write(canary, None, false).await
        })
    }

    fn set_routes<'a>(
        &'a self,
        canary: &'a Canary,
        routes: Routes,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            routes.validate()?;
            // CRD check first: no API traffic for a provider the cluster lacks.
            match Self::user_route(canary)? {
                Some((kind, version, _)) => self.resource(kind, version)?,
                None => self.resource(Self::route_kind(canary)?, None)?,
            };
            self.k8s.require_backends(canary).await?;
            self.write(canary, Some(routes), false).await
        })
    }

    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>> {
        Box::pin(async move {
            if let Some((kind, version, name)) = Self::user_route(canary)? {
                let ar = self.resource(kind, version)?;
                let live = self.live_required(canary, &ar, &name).await?;
                return routes_of_user_rules(
                    canary,
                    live.data.pointer("/spec/rules").unwrap_or(&Value::Null),
                );
            }
            let kind = Self::route_kind(canary)?;
            let ar = self.resource(kind, None)?;
            let live = self.live_required(canary, &ar, &canary.apex_name()).await?;
            let spec: RouteSpec =
                serde_json::from_value(live.data.get("spec").cloned().unwrap_or_default())
                    .map_err(|source| RouterError::Serde {
                        context: format!("read {} {}", ar.kind, canary.apex_name()),
                        source,
                    })?;
            self.routes_of_live(canary, &spec).await
        })
    }

    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>> {
        Box::pin(async move {
            let (ar, name) = match Self::user_route(canary)? {
                Some((kind, version, name)) => (self.resource(kind, version)?, name),
                None => (
                    self.resource(Self::route_kind(canary)?, None)?,
                    canary.apex_name(),
                ),
            };
            let live = self.live_required(canary, &ar, &name).await?;
            let v = serde_json::to_value(&live).map_err(|source| RouterError::Serde {
                context: format!("read {} {name}", ar.kind),
                source,
            })?;
            Ok(route_status(&v))
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            self.k8s.finalize(canary).await?;
            self.write(canary, None, true).await
        })
    }

    fn written<'a>(
        &'a self,
        canary: &'a Canary,
    ) -> BoxFuture<'a, Result<Option<super::Written>, RouterError>> {
        Box::pin(async move {
            // A user-owned route is not annotated by Serin, so it is not confirmed.
            if Self::user_route(canary)?.is_some() {
                return Ok(None);
            }
            let kind = Self::route_kind(canary)?;
            let ar = self.resource(kind, None)?;
            let Some(live) = self.live(canary, &ar, &canary.apex_name()).await? else {
                return Ok(None);
            };
            let confirmed_generation = live
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIRMED_GENERATION_ANNOTATION))
                .and_then(|g| g.parse().ok());
            let host = live
                .data
                .pointer("/spec/hostnames/0")
                .and_then(Value::as_str)
                .filter(|h| !h.contains('*'))
                .map(str::to_string);
            let path = live
                .data
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    r.get("matches")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find_map(|m| {
                    let p = m.get("path")?;
                    matches!(
                        p.get("type").and_then(Value::as_str),
                        Some("PathPrefix" | "Exact")
                    )
                    .then(|| p.get("value").and_then(Value::as_str))
                    .flatten()
                    .map(str::to_string)
                })
                .unwrap_or_else(|| "/".into());
            Ok(Some(super::Written {
                kind: ar.kind.clone(),
                name: canary.apex_name(),
                generation: live.metadata.generation,
                confirmed_generation,
                host,
                path,
            }))
        })
    }

    fn mark_confirmed<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            if Self::user_route(canary)?.is_some() {
                return Ok(());
            }
            let ar = self.resource(Self::route_kind(canary)?, None)?;
            let name = canary.apex_name();
            let Some(live) = self.live(canary, &ar, &name).await? else {
                return Ok(());
            };
            let spec = live.data.get("spec").cloned().unwrap_or_default();
            let generation = live.metadata.generation.unwrap_or_default().to_string();
            let text = serde_json::to_string(&spec).map_err(|source| RouterError::Serde {
                context: format!("record confirmed {} {name}", ar.kind),
                source,
            })?;
            let ann = live.metadata.annotations.clone().unwrap_or_default();
            if ann.get(CONFIRMED_GENERATION_ANNOTATION) == Some(&generation)
                && ann.get(CONFIRMED_SPEC_ANNOTATION) == Some(&text)
            {
                return Ok(());
            }
            let patch = json!({"metadata": {
                "resourceVersion": live.metadata.resource_version,
                "annotations": {
                    CONFIRMED_SPEC_ANNOTATION: text,
                    CONFIRMED_GENERATION_ANNOTATION: generation,
                }
            }});
            let ns = canary.namespace_or_default();
            apply::dyn_api(&self.client, &ar, &ns)
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .map_err(|source| RouterError::Kube {
                    context: format!("record confirmed {} {ns}/{name}", ar.kind),
                    source,
                })?;
            Ok(())
        })
    }

    fn restore_confirmed<'a>(
        &'a self,
        canary: &'a Canary,
    ) -> BoxFuture<'a, Result<bool, RouterError>> {
        Box::pin(async move {
            if Self::user_route(canary)?.is_some() {
                return Ok(false);
            }
            let ar = self.resource(Self::route_kind(canary)?, None)?;
            let name = canary.apex_name();
            let Some(live) = self.live(canary, &ar, &name).await? else {
                return Ok(false);
            };
            let Some(confirmed) = confirmed_spec(&live) else {
                return Ok(false);
            };
            let have = live.data.get("spec").cloned().unwrap_or_default();
            if have == confirmed {
                return Ok(false);
            }
            // Exactly the confirmed spec: keys it lacks are removed, arrays replaced.
            let patch = json!({
                "metadata": {"resourceVersion": live.metadata.resource_version},
                "spec": apply::merge_diff(&have, &confirmed),
            });
            let ns = canary.namespace_or_default();
            apply::dyn_api(&self.client, &ar, &ns)
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .map_err(|source| RouterError::Kube {
                    context: format!("restore confirmed {} {ns}/{name}", ar.kind),
                    source,
                })?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        CanaryAnalysis, HeaderOperation, HeaderOperations, HttpRewrite, LocalObjectReference,
        SessionAffinity,
    };
    use crate::router::kubernetes::tests::canary as base;
    use pretty_assertions::assert_eq;

    fn opts() -> RenderOptions {
        RenderOptions {
            kind: RouteKind::Http,
            mirror_percent: true,
            timeouts: true,
            linkerd: false,
            sticky: false,
        }
    }

    fn canary() -> Canary {
        let mut c = base();
        c.spec.service.as_mut().unwrap().gateway_refs = Some(vec![ParentReference {
            name: "serin-gateway".into(),
            namespace: Some("default".into()),
            ..Default::default()
        }]);
        c
    }

    fn backend(name: &str, w: u32) -> Value {
        json!({"group": "", "kind": "Service", "name": name, "port": 9898, "weight": w})
    }

    #[test]
    fn zero_weight_backends_are_left_out_and_read_back_as_zero() {
        let idle = render_route_spec(&canary(), Routes::PRIMARY, opts()).unwrap();
        let v = serde_json::to_value(&idle).unwrap();
        assert_eq!(
            v["rules"][0]["backendRefs"],
            json!([backend("podinfo-primary", 100)])
        );
        assert_eq!(routes_of_spec(&canary(), &idle).unwrap(), Routes::PRIMARY);
        let all = render_route_spec(&canary(), Routes::weighted(100), opts()).unwrap();
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(
            v["rules"][0]["backendRefs"],
            json!([backend("podinfo-canary", 100)])
        );
        assert_eq!(
            routes_of_spec(&canary(), &all).unwrap(),
            Routes::weighted(100)
        );
    }

    #[test]
    fn weighted_route_with_explicit_group_and_kind() {
        let spec = render_route_spec(&canary(), Routes::weighted(30), opts()).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({
                "parentRefs": [{"name": "serin-gateway", "namespace": "default"}],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [backend("podinfo-primary", 70), backend("podinfo-canary", 30)]
                }]
            })
        );
        assert_eq!(
            routes_of_spec(&canary(), &spec).unwrap(),
            Routes::weighted(30)
        );
    }

    #[test]
    fn service_options_become_matches_filters_and_timeouts() {
        let mut c = canary();
        let s = c.spec.service.as_mut().unwrap();
        s.hosts = Some(vec!["app.example.com".into()]);
        s.timeout = Some("15s".into());
        s.r#match = Some(vec![HttpMatchRequest {
            uri: Some(StringMatch {
                prefix: Some("/api".into()),
                ..Default::default()
            }),
            method: Some(StringMatch {
                exact: Some("get".into()),
                ..Default::default()
            }),
            headers: Some(
                [(
                    "x-env".to_string(),
                    StringMatch {
                        prefix: Some("prod.".into()),
                        ..Default::default()
                    },
                )]
                .into(),
            ),
            ..Default::default()
        }]);
        s.headers = Some(HeaderOperations {
            request: Some(HeaderOperation {
                set: Some([("x-a".to_string(), "1".to_string())].into()),
                ..Default::default()
            }),
            response: Some(HeaderOperation {
                remove: Some(vec!["x-b".into()]),
                ..Default::default()
            }),
        });
        s.rewrite = Some(HttpRewrite {
            uri: Some("/v2".into()),
            authority: Some("internal".into()),
            r#type: None,
        });
        let spec =
            serde_json::to_value(render_route_spec(&c, Routes::PRIMARY, opts()).unwrap()).unwrap();
        assert_eq!(spec["hostnames"], json!(["app.example.com"]));
        assert_eq!(
            spec["rules"][0]["matches"],
            json!([{
                "path": {"type": "PathPrefix", "value": "/api"},
                "headers": [{"type": "RegularExpression", "name": "x-env", "value": "^prod\\..*"}],
                "method": "GET"
            }])
        );
        assert_eq!(
            spec["rules"][0]["filters"],
            json!([
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-b"]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
            ])
        );
        assert_eq!(spec["rules"][0]["timeouts"], json!({"request": "15s"}));
        // Without timeouts in the installed schema, none is written.
        let no_t = render_route_spec(
            &c,
            Routes::PRIMARY,
            RenderOptions {
                timeouts: false,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(no_t.rules[0].timeouts, None);
    }

    #[test]
    fn ab_rules_per_match_then_default_to_primary() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            r#match: Some(vec![
                AbMatch {
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
                },
                AbMatch {
                    headers: Some(
                        [(
                            "cookie".to_string(),
                            StringMatch {
                                regex: Some("^(.*?;)?(canary=always)(;.*)?$".into()),
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
        let spec = render_route_spec(&c, Routes::weighted(100), opts()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(
            v["rules"][0]["matches"],
            json!([{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-canary", "value": "insider"}]}])
        );
        assert_eq!(
            v["rules"][0]["backendRefs"],
            // The zero-weight primary ref is left out (Traefik drops routes with
            // empty zero-weight backends).
            json!([backend("podinfo-canary", 100)])
        );
        assert_eq!(
            v["rules"][1]["matches"][0]["headers"][0]["type"],
            "RegularExpression"
        );
        assert_eq!(
            v["rules"][2]["backendRefs"],
            json!([backend("podinfo-primary", 100)])
        );
        assert_eq!(routes_of_spec(&c, &spec).unwrap(), Routes::weighted(100));
    }

    #[test]
    fn mirror_filter_with_percent_only_when_schema_has_it() {
        let r = Routes {
            primary: 100,
            canary: 0,
            mirror: true,
            mirror_weight: Some(20),
        };
        let spec = render_route_spec(&canary(), r, opts()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v["rules"][0]["filters"],
            json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 9898}, "percent": 20}}])
        );
        assert_eq!(routes_of_spec(&canary(), &spec).unwrap(), r);
        let old = render_route_spec(
            &canary(),
            r,
            RenderOptions {
                mirror_percent: false,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(
            old.rules[0].filters[0]
                .request_mirror
                .as_ref()
                .unwrap()
                .percent,
            None
        );
        // Back to no mirror: the filter goes.
        let plain = render_route_spec(&canary(), Routes::PRIMARY, opts()).unwrap();
        assert!(plain.rules[0].filters.is_empty());
    }

    #[test]
    fn primary_cookie_keeps_primary_sessions_on_the_primary() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(SessionAffinity {
                cookie_name: "canary-c".into(),
                primary_cookie_name: Some("primary-c".into()),
                max_age: Some(60),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut st = c.status_or_default();
        st.session_affinity_cookie = Some("canary-c=1".into());
        st.primary_session_affinity_cookie = Some("primary-c=2".into());
        c.status = Some(st);
        let spec = render_route_spec(&c, Routes::weighted(30), opts()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(
            v["rules"][1]["matches"][0]["headers"][0]["value"],
            ".*primary-c.*2.*"
        );
        // The zero-weight canary ref is left out (see `render_route_spec`).
        assert_eq!(
            v["rules"][1]["backendRefs"],
            json!([backend("podinfo-primary", 100)])
        );
        assert_eq!(
            v["rules"][2]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            "primary-c=2; Max-Age=60"
        );
        // Neither sticky rule is read as the split.
        assert_eq!(routes_of_spec(&c, &spec).unwrap(), Routes::weighted(30));
    }

    #[test]
    fn without_status_cookies_the_revision_cookie_is_used_and_expired() {
        let mut c = canary();
        let sa = SessionAffinity {
            cookie_name: "c".into(),
            ..Default::default()
        };
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(sa.clone()),
            ..Default::default()
        });
        let cookie = session_cookie(&c, &sa);
        let during =
            serde_json::to_value(render_route_spec(&c, Routes::weighted(20), opts()).unwrap())
                .unwrap();
        assert_eq!(
            during["rules"][0]["matches"][0]["headers"][0]["value"],
            cookie_regex(&cookie)
        );
        let after =
            serde_json::to_value(render_route_spec(&c, Routes::PRIMARY, opts()).unwrap()).unwrap();
        assert_eq!(
            after["rules"][0]["matches"][0]["headers"][0]["value"],
            cookie_regex(&cookie)
        );
        assert_eq!(
            after["rules"][0]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            format!("{cookie}; Max-Age=-1")
        );
    }

    #[test]
    fn session_affinity_sets_cookie_and_sticky_rule() {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(SessionAffinity {
                cookie_name: "serin-cookie".into(),
                max_age: Some(60),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut st = c.status_or_default();
        st.session_affinity_cookie = Some("serin-cookie=abc".into());
        c.status = Some(st);
        let spec = render_route_spec(&c, Routes::weighted(10), opts()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(spec.rules.len(), 2);
        assert_eq!(
            v["rules"][0]["matches"],
            json!([{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "RegularExpression", "name": "Cookie", "value": ".*serin-cookie.*abc.*"}]}])
        );
        assert_eq!(
            v["rules"][0]["backendRefs"],
            // The zero-weight primary ref is left out (Traefik drops routes with
            // empty zero-weight backends).
            json!([backend("podinfo-canary", 100)])
        );
        assert_eq!(
            v["rules"][1]["backendRefs"][1]["filters"],
            json!([{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": "serin-cookie=abc; Max-Age=60"}]}}])
        );
        // The sticky 0/100 rule is not mistaken for the split.
        assert_eq!(routes_of_spec(&c, &spec).unwrap(), Routes::weighted(10));
        // Weight 0 after the run: the previous cookie is expired on the primary.
        let done = render_route_spec(&c, Routes::PRIMARY, opts()).unwrap();
        let v = serde_json::to_value(&done).unwrap();
        assert_eq!(
            v["rules"][0]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            "serin-cookie=abc; Max-Age=-1"
        );
        assert_eq!(routes_of_spec(&c, &done).unwrap(), Routes::PRIMARY);
    }

    fn affinity_canary() -> Canary {
        let mut c = canary();
        c.spec.analysis = Some(CanaryAnalysis {
            session_affinity: Some(SessionAffinity {
                cookie_name: "flagger-cookie".into(),
                max_age: Some(120),
                http_only: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    }

    fn traefik() -> Capabilities {
        Capabilities::for_controller("traefik.io/gateway-controller")
    }

    #[test]
    fn the_regex_affinity_scheme_is_refused_on_traefik_3_0_naming_feature_and_implementation() {
        let c = affinity_canary();
        // Without the TraefikService API there is no scheme Traefik can serve.
        let o = plan(&c, opts(), &traefik(), false);
        assert!(!o.sticky);
        let err = check_release(&c, o, &traefik()).unwrap_err();
        assert_eq!(err.reason(), "UnsupportedFeature");
        let msg = err.to_string();
        for part in [
            "HTTPRouteHeaderRegexMatch",
            "analysis.sessionAffinity",
            "Traefik 3.0",
            "traefik.io/gateway-controller",
            "not written",
        ] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
        // Where regex matches and backend filters exist, the regex scheme stays.
        let istio = Capabilities::for_controller("istio.io/gateway-controller");
        let o = plan(&c, opts(), &istio, true);
        assert!(!o.sticky);
        check_release(&c, o, &istio).unwrap();
    }

    #[test]
    fn affinity_on_traefik_goes_through_a_sticky_traefik_service() {
        let c = affinity_canary();
        let o = plan(&c, opts(), &traefik(), true);
        assert!(o.sticky);
        check_release(&c, o, &traefik()).unwrap();
        for routes in [Routes::PRIMARY, Routes::weighted(10), Routes::weighted(50)] {
            let spec = render_route_spec(&c, routes, o).unwrap();
            let v = serde_json::to_value(&spec).unwrap();
            // One rule, no regex, no filters: only what Traefik 3.0 serves.
            assert_eq!(spec.rules.len(), 1, "{v}");
            assert_eq!(
                v["rules"][0]["backendRefs"],
                json!([{"group": "traefik.io", "kind": "TraefikService", "name": "podinfo-sticky"}])
            );
            assert!(uses_sticky(&c, &spec));
            assert_eq!(
                features_of(&spec, RouteKind::Http),
                BTreeSet::from([Feature::TraefikServiceBackend])
            );
            let ts = render_sticky_spec(&c, routes).unwrap();
            assert_eq!(
                crate::router::traefik::routes_of(&c, &ts, None).unwrap(),
                routes
            );
            let tv = serde_json::to_value(&ts).unwrap();
            assert_eq!(
                tv["weighted"]["sticky"],
                json!({"cookie": {"name": "flagger-cookie", "httpOnly": true, "maxAge": 120}})
            );
        }
        // After the run the canary leaves the split: its cookie no longer matches a
        // backend, so its clients land on the primary.
        let idle = serde_json::to_value(render_sticky_spec(&c, Routes::PRIMARY).unwrap()).unwrap();
        assert_eq!(
            idle["weighted"]["services"],
            json!([{"name": "podinfo-primary", "kind": "Service", "port": 9898, "weight": 100}])
        );
    }

    #[test]
    fn rollback_writes_only_features_already_confirmed() {
        let c = affinity_canary();
        // What Traefik last confirmed: the plain split, before affinity was asked for.
        let confirmed = render_route_spec(&canary(), Routes::weighted(10), opts()).unwrap();
        let regex_primary = render_route_spec(&c, Routes::PRIMARY, opts()).unwrap();
        assert!(features_of(&regex_primary, RouteKind::Http).contains(&Feature::HeaderRegexMatch));
        let safe = safe_primary_spec(&c, regex_primary.clone(), opts(), Some(&confirmed)).unwrap();
        assert!(
            features_of(&safe, RouteKind::Http)
                .is_subset(&features_of(&confirmed, RouteKind::Http)),
            "{safe:?}"
        );
        assert_eq!(routes_of_spec(&c, &safe).unwrap(), Routes::PRIMARY);
        // Once the regex scheme has been confirmed, its cookie-expiry rule is kept.
        let same =
            safe_primary_spec(&c, regex_primary.clone(), opts(), Some(&regex_primary)).unwrap();
        assert_eq!(same, regex_primary);
        // Nothing confirmed yet: as rendered (the capability check already passed).
        assert_eq!(
            safe_primary_spec(&c, regex_primary.clone(), opts(), None).unwrap(),
            regex_primary
        );
    }

    #[test]
    fn features_of_routes_name_every_extra() {
        let mut c = canary();
        let svc = c.spec.service.as_mut().unwrap();
        svc.headers = Some(HeaderOperations {
            response: Some(HeaderOperation {
                set: Some([("x".to_string(), "y".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        svc.timeout = Some("5s".into());
        c.spec.analysis = Some(CanaryAnalysis {
            mirror: Some(true),
            mirror_weight: Some(20),
            ..Default::default()
        });
        let err = check_release(&c, opts(), &traefik())
            .unwrap_err()
            .to_string();
        // The first missing feature in a stable order, and where it comes from.
        assert!(err.contains("HTTPRouteResponseHeaderModification"), "{err}");
        assert!(err.contains("service.headers"), "{err}");
        let mirror = render_route_spec(
            &c,
            Routes {
                mirror: true,
                mirror_weight: Some(20),
                ..Routes::PRIMARY
            },
            opts(),
        )
        .unwrap();
        let f = features_of(&mirror, RouteKind::Http);
        for want in [
            Feature::ResponseHeaderModifier,
            Feature::RequestTimeout,
            Feature::RequestMirror,
            Feature::MirrorPercent,
        ] {
            assert!(f.contains(&want), "{want:?} in {f:?}");
        }
        assert!(!f.contains(&Feature::HeaderRegexMatch));
        // A plain canary needs nothing beyond core: Traefik 3.0 takes it.
        check_release(&canary(), opts(), &traefik()).unwrap();
    }

    #[test]
    fn finalize_sends_every_rule_to_the_apex() {
        let r = Routes {
            primary: 50,
            canary: 50,
            mirror: true,
            mirror_weight: None,
        };
        let mut spec = render_route_spec(&canary(), r, opts()).unwrap();
        finalize_rules(&canary(), &mut spec).unwrap();
        assert_eq!(
            serde_json::to_value(&spec.rules).unwrap(),
            json!([{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": "podinfo", "port": 9898}]
            }])
        );
    }

    #[test]
    fn linkerd_defaults_parent_to_apex_service_and_gateway_needs_refs() {
        let c = base();
        let spec = render_route_spec(
            &c,
            Routes::PRIMARY,
            RenderOptions {
                linkerd: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&spec.parent_refs).unwrap(),
            json!([{"group": "core", "kind": "Service", "name": "podinfo", "port": 9898}])
        );
        assert!(matches!(
            render_route_spec(&c, Routes::PRIMARY, opts()),
            Err(RouterError::InvalidRoute(_))
        ));
        assert!(matches!(
            render_route_spec(
                &canary(),
                Routes {
                    primary: 60,
                    canary: 60,
                    mirror: false,
                    mirror_weight: None
                },
                opts()
            ),
            Err(RouterError::InvalidWeights { .. })
        ));
    }

    #[test]
    fn grpc_route_has_no_paths_or_timeouts() {
        let mut c = canary();
        c.spec.service.as_mut().unwrap().app_protocol = Some("grpc".into());
        c.spec.service.as_mut().unwrap().timeout = Some("5s".into());
        assert_eq!(GatewayApiRouter::route_kind(&c).unwrap(), RouteKind::Grpc);
        let spec = render_route_spec(
            &c,
            Routes::weighted(5),
            RenderOptions {
                kind: RouteKind::Grpc,
                ..opts()
            },
        )
        .unwrap();
        assert!(spec.rules[0].matches.is_empty());
        assert_eq!(spec.rules[0].timeouts, None);
    }

    fn user_route() -> Value {
        json!([
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-admin", "value": "1"}]}}],
                "backendRefs": [{"name": "admin", "port": 80}]
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "podinfo.internal"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": "podinfo", "port": 9898, "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-b", "value": "2"}]}}]}],
                "x-future-field": {"kept": true}
            }
        ])
    }

    fn route_ref_canary() -> Canary {
        let mut c = base();
        c.spec.route_ref = Some(LocalObjectReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            name: "user-route".into(),
        });
        c
    }

    #[test]
    fn route_ref_splits_only_the_apex_backend_and_keeps_the_rest() {
        let c = route_ref_canary();
        let before = user_route();
        let after = edit_user_rules(&c, &before, Some(Routes::weighted(25))).unwrap();
        // The other rule is untouched, byte for byte.
        assert_eq!(after[0], before[0]);
        // In the apex rule only backendRefs changed; the backendRef's own fields are kept.
        let mut expected = before[1].clone();
        let mut p = before[1]["backendRefs"][0].clone();
        p["name"] = json!("podinfo-primary");
        p["weight"] = json!(75);
        let mut k = before[1]["backendRefs"][0].clone();
        k["name"] = json!("podinfo-canary");
        k["weight"] = json!(25);
        expected["backendRefs"] = json!([p, k]);
        assert_eq!(after[1], expected);
        assert_eq!(
            routes_of_user_rules(&c, &after).unwrap(),
            Routes::weighted(25)
        );
        assert_eq!(routes_of_user_rules(&c, &before).unwrap(), Routes::PRIMARY);
        // A further step edits the split in place; finalize restores the original.
        let again = edit_user_rules(&c, &after, Some(Routes::weighted(50))).unwrap();
        assert_eq!(again[1]["backendRefs"][1]["weight"], 50);
        assert_eq!(again[1]["backendRefs"].as_array().unwrap().len(), 2);
        let restored = edit_user_rules(&c, &again, None).unwrap();
        assert_eq!(restored, before);
    }

    #[test]
    fn route_ref_mirror_adds_and_removes_only_its_own_filter() {
        let c = route_ref_canary();
        let before = user_route();
        let m = Routes {
            primary: 100,
            canary: 0,
            mirror: true,
            mirror_weight: None,
        };
        let mirrored = edit_user_rules(&c, &before, Some(m)).unwrap();
        let filters = mirrored[1]["filters"].as_array().unwrap();
        assert_eq!(filters[0], before[1]["filters"][0]);
        assert_eq!(
            filters[1]["requestMirror"]["backendRef"]["name"],
            "podinfo-canary"
        );
        assert_eq!(routes_of_user_rules(&c, &mirrored).unwrap(), m);
        let unmirrored = edit_user_rules(&c, &mirrored, Some(Routes::PRIMARY)).unwrap();
        assert_eq!(unmirrored[1]["filters"], before[1]["filters"]);
        assert_eq!(edit_user_rules(&c, &unmirrored, None).unwrap(), before);
    }

    #[test]
    fn route_ref_without_apex_rule_is_rejected() {
        let c = route_ref_canary();
        let rules = json!([{"backendRefs": [{"name": "other", "port": 80}]}]);
        let err = edit_user_rules(&c, &rules, Some(Routes::PRIMARY)).unwrap_err();
        assert!(matches!(err, RouterError::InvalidRoute(_)));
        assert!(err.to_string().contains("HTTPRoute user-route"), "{err}");
        // A/B is refused in routeRef mode.
        let mut ab = route_ref_canary();
        ab.spec.analysis = Some(CanaryAnalysis {
            r#match: Some(vec![AbMatch::default()]),
            ..Default::default()
        });
        assert!(GatewayApiRouter::refuse_user_route_features(&ab).is_err());
        let mut bad = route_ref_canary();
        bad.spec.route_ref.as_mut().unwrap().kind = "ApisixRoute".into();
        assert!(GatewayApiRouter::user_route(&bad).is_err());
    }

    #[test]
    fn status_parents_decide_acceptance() {
        let none = json!({"metadata": {"generation": 2}, "status": {}});
        assert!(
            matches!(route_status(&none), RouteStatus::Unknown(m) if m.contains("writes no route status"))
        );
        let ok = json!({"metadata": {"generation": 2}, "status": {"parents": [{"parentRef": {"name": "gw"}, "conditions": [{"type": "Accepted", "status": "True", "observedGeneration": 2}]}]}});
        assert_eq!(route_status(&ok), RouteStatus::Accepted);
        let stale = json!({"metadata": {"generation": 3}, "status": {"parents": [{"parentRef": {"name": "gw"}, "conditions": [{"type": "Accepted", "status": "True", "observedGeneration": 2}]}]}});
        assert!(matches!(route_status(&stale), RouteStatus::Unknown(_)));
        let no = json!({"metadata": {"generation": 2}, "status": {"parents": [{"parentRef": {"name": "gw"}, "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners", "message": "no listener", "observedGeneration": 2}]}]}});
        assert_eq!(
            route_status(&no),
            RouteStatus::NotAccepted("parent gw: NotAllowedByListeners: no listener".into())
        );
    }

    #[test]
    fn schema_feature_detection() {
        let with = json!({"versions": [{"schema": {"openAPIV3Schema": {"properties": {"spec": {"properties": {"rules": {"items": {"properties": {"timeouts": {}, "filters": {"items": {"properties": {"requestMirror": {"properties": {"percent": {}}}}}}}}}}}}}}}]});
        assert!(has_property(&with, "requestMirror", "percent"));
        assert!(has_property(&with, "rules", "timeouts"));
        assert!(!has_property(
            &json!({"rules": {"items": {"properties": {}}}}),
            "rules",
            "timeouts"
        ));
    }
}
