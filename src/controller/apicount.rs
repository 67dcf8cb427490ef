//! Counts every request the operator sends to the Kubernetes API, by verb and
//! resource, into `serin_kube_api_requests_total`: the figure behind "no reads of
//! watched kinds per step, at most a few writes".

use std::sync::Arc;

use http::{Method, Request};
use tower::util::MapRequestLayer;

use crate::server::{ApiLabels, Metrics};

/// A layer for `kube::client::ClientBuilder::with_layer`.
pub fn layer<B>(
    metrics: Arc<Metrics>,
) -> MapRequestLayer<impl Fn(Request<B>) -> Request<B> + Clone> {
    MapRequestLayer::new(move |req: Request<B>| {
        let (verb, kind) = classify(req.method(), req.uri().path(), req.uri().query());
        metrics
            .api_requests
            .get_or_create(&ApiLabels {
                verb: verb.to_string(),
                kind,
            })
            .inc();
        req
    })
}

/// `(verb, resource)` of an API request, e.g. `("patch", "canaries/status")`.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segs.first() {
        Some(&"api") if segs.len() >= 2 => &segs[2..],
        Some(&"apis") if segs.len() >= 3 => &segs[3..],
        _ => return ("other", "discovery".into()),
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named) = match rest {
        [] => ("discovery".to_string(), false),
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub, ..] => (format!("{r}/{sub}"), true),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests() {
        let cases = [
            (
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments",
                Some("watch=true&resourceVersion=1"),
                ("watch", "deployments"),
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments",
                Some("limit=500"),
                ("list", "deployments"),
            ),
            (
                Method::GET,
                "/apis/gateway.networking.k8s.io/v1/namespaces/a/httproutes/web",
                None,
                ("get", "httproutes"),
            ),
            (
                Method::PATCH,
                "/apis/serin.dev/v1beta1/namespaces/a/canaries/web/status",
                None,
                ("patch", "canaries/status"),
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                None,
                ("create", "events"),
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/a/services/web",
                None,
                ("patch", "services"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                ("list", "namespaces"),
            ),
            (Method::GET, "/apis", None, ("other", "discovery")),
        ];
        for (m, path, q, (verb, kind)) in cases {
            assert_eq!(classify(&m, path, q), (verb, kind.to_string()), "{path}");
        }
    }
}
