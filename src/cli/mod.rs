//! The `serin` command (also `kubectl-serin`, a kubectl plugin): the operator, CRD
//! generation, spec validation, the load tester, and the commands that show and
//! steer releases in a cluster. Errors end in a non-zero exit and one readable line.

pub mod cluster;
pub mod convert;
pub mod entry;
pub mod get;
pub mod plan;
pub mod steer;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::crd::{Canary, Settings};

#[derive(Parser, Debug)]
#[command(name = "serin", version, about = "Progressive delivery for Kubernetes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Print the CRD field reference as Markdown (docs/reference.md).
    Reference,
    /// Check Canary manifests (YAML, one or more documents) without a cluster.
    Validate {
        /// Files to check; `-` reads standard input.
        files: Vec<PathBuf>,
        #[arg(long, default_value = "kubernetes")]
        provider: String,
        /// Also run each Canary's built-in and inline metric queries once against
        /// this Prometheus and report a value or why there is none (exit 1 when a
        /// check has no value).
        #[arg(long)]
        prometheus: Option<String>,
        /// Namespace the queries select (default: the manifest's, else `default`).
        #[arg(long, requires = "prometheus")]
        namespace: Option<String>,
        #[arg(long, value_enum, default_value = "any", requires = "prometheus")]
        metrics_labels: crate::analysis::builtin::MetricsLabels,
        /// Also check Gateway API Canaries against what this data plane serves: its
        /// GatewayClass `spec.controllerName` (e.g. `traefik.io/gateway-controller`),
        /// as the operator would before writing a route.
        #[arg(long)]
        gateway_controller: Option<String>,
        /// The operator's `--gateway-features`, for the same answer.
        #[arg(long, default_value = "")]
        gateway_features: String,
    },
    /// List Canaries: NAME, PHASE, WEIGHT, CHECKS, REVISION, AGE.
    Get(get::GetArgs),
    /// Where a release is and why: weight, checks against thresholds, what it waits
    /// for, when the next step is due, the objects it owns, recent events.
    Status(get::StatusArgs),
    /// Follow a release with a progress bar; exit 0 when it succeeds, 1 when it
    /// fails, 2 at `--timeout`.
    Watch(watch::WatchArgs),
    /// Finish the release under way now (the confirm-promotion gate still applies
    /// unless `--force`).
    Promote(steer::PromoteArgs),
    /// Roll the release under way back: all traffic to the primary.
    Abort(steer::SteerArgs),
    /// Run the failed revision's analysis again.
    Retry(steer::SteerArgs),
    /// Hold the release at its current weight (no spec change, unlike `suspend`).
    Pause(steer::SteerArgs),
    /// Continue a paused release.
    Resume(steer::SteerArgs),
    /// Check Canaries, MetricTemplates and AlertProviders offline with the
    /// operator's rules: every error with its field path; non-zero exit on any.
    Check {
        /// Files (`-` is standard input); multi-document streams are fine.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The operator's `--provider`, for Canaries that name none.
        #[arg(long, default_value = "kubernetes")]
        provider: String,
    },
    /// Convert Flagger (flagger.app/v1beta1) Canaries, MetricTemplates and
    /// AlertProviders to Serin; other documents pass through. Each field whose
    /// meaning differs is named on stderr.
    Convert {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Dry run without a cluster: for a new revision, the steps, the weight at each,
    /// the checks and webhooks each calls, the shortest possible duration and the
    /// routing objects written.
    Plan {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "kubernetes")]
        provider: String,
        /// Leave out the routing objects' YAML.
        #[arg(long)]
        no_objects: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the load tester and gate service next to your apps.
    Tester {
        #[arg(long, env = "SERIN_TESTER_ADDR", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Default routing provider for Canaries that name none.
    #[arg(long, env = "SERIN_PROVIDER", default_value = "kubernetes")]
    pub provider: String,
    /// Default Prometheus-compatible address for built-in metrics.
    #[arg(long, env = "SERIN_METRICS_SERVER")]
    pub metrics_server: Option<String>,
    /// Label names the built-in queries select pods and namespaces by: `any` matches
    /// both Flagger's (`kubernetes_namespace`, `kubernetes_pod_name`) and the
    /// Prometheus Operator's (`namespace`, `pod`, `exported_*`).
    #[arg(long, env = "SERIN_METRICS_LABELS", value_enum, default_value = "any")]
    pub metrics_labels: crate::analysis::builtin::MetricsLabels,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SERIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SERIN_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(long, env = "SERIN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Leader election with a Lease (on by default; off for a single local run).
    #[arg(long, env = "SERIN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's, else `default`).
    #[arg(long, env = "SERIN_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Webhook called on every event of every Canary (Flagger's `-event-webhook`).
    #[arg(long, env = "SERIN_EVENT_WEBHOOK")]
    pub event_webhook: Option<String>,
    /// Default alert: Slack/MS Teams/Discord/Rocket/Google Chat or generic webhook URL.
    #[arg(long, env = "SERIN_ALERT_URL")]
    pub alert_url: Option<String>,
    #[arg(long, env = "SERIN_ALERT_PROVIDER", default_value = "slack")]
    pub alert_provider: String,
    #[arg(long, env = "SERIN_ALERT_SEVERITY", default_value = "info")]
    pub alert_severity: String,
    /// What Gateway API data planes serve, over the built-in table:
    /// `<controllerName>=<Feature>,<Feature>;...` (complete lists; see `serin validate --help`).
    #[arg(long, env = "SERIN_GATEWAY_FEATURES", default_value = "")]
    pub gateway_features: String,
    /// Releases under way at once across all Canaries (0: no limit); further new
    /// revisions wait in `Waiting`, in the order they arrived.
    #[arg(long, env = "SERIN_MAX_CONCURRENT_RELEASES", default_value_t = 0)]
    pub max_concurrent_releases: usize,
    /// How often the served routing APIs are discovered again; when a provider's CRDs
    /// appear after start-up (GitOps applies them in any order), the controller
    /// restarts in-process to watch them. 0 turns it off.
    #[arg(long, env = "SERIN_REDISCOVER_SECONDS", default_value_t = 60)]
    pub rediscover_seconds: u64,
    /// How long the data plane has to confirm a route write before it is undone.
    #[arg(long, env = "SERIN_ROUTE_CONFIRM_SECONDS", default_value_t = 10)]
    pub route_confirm_seconds: u64,
    /// Where the operator reaches the Gateways' listeners (e.g. `http://gateway.infra`),
    /// to confirm routes on the data plane with a probe request when the implementation
    /// writes no route status (Traefik 3.0). Unset: such routes stay unconfirmed
    /// (shown in `status.routerMessage`) and are not undone.
    #[arg(long, env = "SERIN_GATEWAY_PROBE_URL")]
    pub gateway_probe_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {index}: not a Canary: {source}")]
    Parse {
        path: String,
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: Canary {name}: {source}")]
    Invalid {
        path: String,
        name: String,
        #[source]
        source: crate::crd::SpecError,
    },
    /// A MetricTemplate or AlertProvider that does not decode; `object` is `Kind name`.
    #[error("{path}: {object}: {source}")]
    ParseObject {
        path: String,
        object: String,
        #[source]
        source: serde_yaml::Error,
    },
    /// A MetricTemplate or AlertProvider; `object` is `Kind name`.
    #[error("{path}: {object}: {source}")]
    InvalidObject {
        path: String,
        object: String,
        #[source]
        source: Box<crate::crd::SpecError>,
    },
    #[error("{path}: Canary {name}: {source}")]
    Route {
        path: String,
        name: String,
        #[source]
        source: Box<crate::router::RouterError>,
    },
    #[error("--gateway-features: {0}")]
    Features(String),
    #[error("cannot render CRDs: {0}")]
    Crds(#[from] serde_yaml::Error),
    #[error("{0}")]
    Run(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot reach the cluster at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("not allowed: {0}")]
    Denied(String),
    #[error("Canary {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    ReleaseFailed(String),
    #[error("{0}")]
    Timeout(String),
}

impl CliError {
    /// `watch` tells a CI job a failed release (1) from one still going at the
    /// timeout (2); every other error is 1 as well.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Timeout(_) => 2,
            _ => 1,
        }
    }
}

/// Where `serin validate` checks routes against a data plane's capabilities.
#[derive(Debug, Clone, Default)]
pub struct DataPlane {
    pub controller: String,
    pub features: String,
}

/// Parses every Canary document of `text` and validates it; returns the names checked.
pub fn validate_manifests(path: &str, text: &str, provider: &str) -> Result<Vec<String>, CliError> {
    validate_for(path, text, provider, None)
}

struct NoSecrets;

impl crate::analysis::SecretSource for NoSecrets {
    fn get<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> crate::router::BoxFuture<
        'a,
        Result<Option<crate::analysis::SecretData>, crate::analysis::AnalysisError>,
    > {
        Box::pin(async { Ok(None) })
    }
}

struct NoTemplates;

impl crate::analysis::TemplateSource for NoTemplates {
    fn get(&self, _namespace: &str, _name: &str) -> Option<crate::crd::MetricTemplate> {
        None
    }
}

/// One line per metric check of `serin validate --prometheus`, and whether it got a
/// value.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    pub line: String,
    pub has_value: bool,
}

/// Runs the built-in and inline metrics of every Canary of `text` once against
/// `prometheus`, as the operator would at a step (MetricTemplates need the cluster
/// and are skipped).
pub async fn check_metrics(
    path: &str,
    text: &str,
    provider: &str,
    prometheus: &str,
    namespace: Option<&str>,
    labels: crate::analysis::builtin::MetricsLabels,
) -> Result<Vec<CheckLine>, CliError> {
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| CliError::Run(format!("HTTP client: {e}")))?;
    let mut ctx = crate::analysis::AnalysisCtx::new(
        http,
        Some(prometheus.to_string()),
        std::sync::Arc::new(NoSecrets),
        std::sync::Arc::new(NoTemplates),
    );
    ctx.metrics_labels = labels;
    let mut out = Vec::new();
    for mut canary in parse_canaries(path, text, provider)? {
        let name = canary.metadata.name.clone().unwrap_or_default();
        if let Some(ns) = namespace {
            canary.metadata.namespace = Some(ns.to_string());
        }
        if let Some(metrics) = canary
            .spec
            .analysis
            .as_mut()
            .and_then(|a| a.metrics.as_mut())
        {
            metrics.retain(|m| m.template_ref.is_none());
        }
        let settings =
            Settings::from_spec(&canary.spec, provider).map_err(|source| CliError::Invalid {
                path: path.to_string(),
                name: name.clone(),
                source,
            })?;
        for check in crate::analysis::run_metric_checks(&ctx, &canary, &settings).await {
            let value = check.value.map(|v| format!(" = {v}")).unwrap_or_default();
            out.push(CheckLine {
                line: format!(
                    "{path}: Canary {name}: {}{value}: {:?}: {}",
                    check.name,
                    check.verdict,
                    check.message.unwrap_or_default()
                ),
                has_value: check.value.is_some(),
            });
        }
    }
    Ok(out)
}

/// `validate_manifests`, plus the operator's refuse-before-writing check of Gateway
/// API Canaries against `data_plane`.
pub fn validate_for(
    path: &str,
    text: &str,
    provider: &str,
    data_plane: Option<&DataPlane>,
) -> Result<Vec<String>, CliError> {
    use crate::router::capabilities::{Capabilities, parse_overrides};
    use crate::router::gatewayapi::{self, RenderOptions, RouteKind};
    let caps = match data_plane {
        None => None,
        Some(d) => {
            let overrides = parse_overrides(&d.features).map_err(CliError::Features)?;
            let class = serde_json::json!({"spec": {"controllerName": d.controller}});
            Some(Capabilities::from_gateway_class(&class, &overrides).map_err(CliError::Features)?)
        }
    };
    let templates = check_templates_and_providers(path, text)?;
    let mut names = Vec::new();
    for canary in parse_canaries(path, text, provider)? {
        let name = canary.metadata.name.clone().unwrap_or_default();
        // The operator checks a referenced template against the metric that uses
        // it (`invalid_reference`); so does `check`, for templates in the same file.
        for m in canary
            .spec
            .analysis
            .iter()
            .flat_map(|a| a.metrics.iter().flatten())
        {
            let Some(r) = &m.template_ref else { continue };
            if let Some(t) = templates.get(&r.name) {
                crate::crd::validate::template_for_metric(m, &r.name, &t.spec).map_err(
                    |source| CliError::Invalid {
                        path: path.to_string(),
                        name: name.clone(),
                        source,
                    },
                )?;
            }
        }
        let settings =
            Settings::from_spec(&canary.spec, provider).map_err(|source| CliError::Invalid {
                path: path.to_string(),
                name: name.clone(),
                source,
            })?;
        use crate::crd::Provider;
        let gateway = matches!(
            settings.provider,
            Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 | Provider::Linkerd
        );
        if let (Some(caps), true) = (&caps, gateway && canary.spec.route_ref.is_none()) {
            let grpc = canary
                .spec
                .service
                .as_ref()
                .and_then(|s| s.app_protocol.as_deref())
                .is_some_and(|p| p.eq_ignore_ascii_case("grpc") || p.eq_ignore_ascii_case("grpcs"));
            let opts = RenderOptions {
                kind: if grpc {
                    RouteKind::Grpc
                } else {
                    RouteKind::Http
                },
                mirror_percent: true,
                timeouts: true,
                linkerd: settings.provider == Provider::Linkerd,
                sticky: false,
            };
            // Offline there is no discovery: a data plane that takes TraefikService
            // backendRefs is taken to have their CRDs installed.
            let opts = gatewayapi::plan(&canary, opts, caps, true);
            gatewayapi::check_release(&canary, opts, caps).map_err(|source| CliError::Route {
                path: path.to_string(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        }
        names.push(name);
    }
    Ok(names)
}

/// Checks the MetricTemplates and AlertProviders of `text` by the operator's rules;
/// returns the templates by name for the Canaries that refer to them.
fn check_templates_and_providers(
    path: &str,
    text: &str,
) -> Result<std::collections::BTreeMap<String, crate::crd::MetricTemplate>, CliError> {
    use crate::crd::{AlertProvider, MetricTemplate, validate};
    let mut templates = std::collections::BTreeMap::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let parse = |source| CliError::Parse {
            path: path.to_string(),
            index,
            source,
        };
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).map_err(parse)?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let object = format!(
            "{kind} {}",
            value["metadata"]["name"].as_str().unwrap_or_default()
        );
        let undecodable = |source| CliError::ParseObject {
            path: path.to_string(),
            object: object.clone(),
            source,
        };
        // Decoding from text, not from `value`, keeps the field path in the error.
        let text = serde_yaml::to_string(&value).map_err(parse)?;
        let invalid = |name: Option<String>, source| CliError::InvalidObject {
            path: path.to_string(),
            object: format!("{kind} {}", name.unwrap_or_default()),
            source: Box::new(source),
        };
        match kind {
            "MetricTemplate" => {
                let t: MetricTemplate = serde_yaml::from_str(&text).map_err(undecodable)?;
                validate::metric_template(&t.spec)
                    .map_err(|e| invalid(t.metadata.name.clone(), e))?;
                templates.insert(t.metadata.name.clone().unwrap_or_default(), t);
            }
            "AlertProvider" => {
                let a: AlertProvider = serde_yaml::from_str(&text).map_err(undecodable)?;
                validate::alert_provider(&a.spec)
                    .map_err(|e| invalid(a.metadata.name.clone(), e))?;
            }
            _ => {}
        }
    }
    Ok(templates)
}

pub(crate) fn parse_canaries(
    path: &str,
    text: &str,
    provider: &str,
) -> Result<Vec<Canary>, CliError> {
    let mut canaries = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).map_err(|source| CliError::Parse {
                path: path.to_string(),
                index,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != "Canary" {
            continue;
        }
        let canary: Canary = serde_yaml::from_value(value).map_err(|source| CliError::Parse {
            path: path.to_string(),
            index,
            source,
        })?;
        let name = canary.metadata.name.clone().unwrap_or_default();
        Settings::from_spec(&canary.spec, provider).map_err(|source| CliError::Invalid {
            path: path.to_string(),
            name: name.clone(),
            source,
        })?;
        canaries.push(canary);
    }
    Ok(canaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis: {interval: 1m, threshold: 5, iterations: 10}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"#;

    #[test]
    fn validate_refuses_what_the_named_data_plane_lacks() {
        let doc = r#"
apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  provider: gatewayapi:v1
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service:
    port: 9898
    gatewayRefs: [{name: gw}]
    headers: {response: {set: {x-served-by: serin}}}
  analysis: {interval: 1m, threshold: 5, stepWeight: 10, maxWeight: 50}
"#;
        let traefik = DataPlane {
            controller: "traefik.io/gateway-controller".into(),
            features: String::new(),
        };
        let err = validate_for("f.yaml", doc, "kubernetes", Some(&traefik))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTPRouteResponseHeaderModification")
                && err.contains("Traefik 3.0")
                && err.contains("service.headers"),
            "{err}"
        );
        // Without a data plane, or with one that has the feature, it passes.
        validate_manifests("f.yaml", doc, "kubernetes").unwrap();
        let istio = DataPlane {
            controller: "istio.io/gateway-controller".into(),
            features: String::new(),
        };
        validate_for("f.yaml", doc, "kubernetes", Some(&istio)).unwrap();
        // The operator's override flag gives the same answer here.
        let overridden = DataPlane {
            features: "traefik.io/gateway-controller=HTTPRouteResponseHeaderModification".into(),
            ..traefik
        };
        validate_for("f.yaml", doc, "kubernetes", Some(&overridden)).unwrap();
    }

    /// `check` refuses what the operator refuses: a malformed MetricTemplate or
    /// AlertProvider, and a template whose variables its metric does not set.
    #[test]
    fn check_refuses_malformed_templates_and_providers() {
        let tpl = |q: &str| {
            format!(
                "apiVersion: serin.dev/v1beta1\nkind: MetricTemplate\nmetadata: {{name: t}}\n\
                 spec: {{provider: {{type: prometheus}}, query: '{q}'}}\n"
            )
        };
        let canary = r#"---
apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis:
    interval: 1m
    iterations: 3
    metrics: [{name: m, templateRef: {name: t}, thresholdRange: {max: 1}}]
"#;
        let ok = format!("{}{canary}", tpl("up"));
        assert_eq!(
            validate_manifests("f.yaml", &ok, "kubernetes").unwrap(),
            ["podinfo"]
        );
        let err = validate_manifests("f.yaml", &tpl("{{ nam }}"), "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("MetricTemplate t: spec.query"), "{err}");
        let needs_var = format!("{}{canary}", tpl("x{c=\"{{ variables.c }}\"}"));
        let err = validate_manifests("f.yaml", &needs_var, "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Canary podinfo: spec.analysis.metrics[m].templateVariables"),
            "{err}"
        );
        let alert =
            "kind: AlertProvider\nmetadata: {name: a}\nspec: {type: slack, address: 'not a url'}\n";
        let err = validate_manifests("f.yaml", alert, "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("AlertProvider a: spec.address"), "{err}");
        let undecodable =
            "kind: MetricTemplate\nmetadata: {name: t}\nspec: {provider: {type: [1]}, query: x}\n";
        let err = validate_manifests("f.yaml", undecodable, "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.yaml: MetricTemplate t: spec.provider.type"),
            "{err}"
        );
    }

    #[test]
    fn validates_canaries_and_skips_other_kinds() {
        assert_eq!(
            validate_manifests("f.yaml", GOOD, "kubernetes").unwrap(),
            ["podinfo"]
        );
    }

    /// `serin validate --prometheus`: the built-ins run once and say whether they
    /// found data, and why not.
    #[tokio::test]
    async fn validate_runs_builtins_against_prometheus() {
        use axum::extract::Query;
        use axum::routing::get;
        use std::collections::HashMap;
        let json = |body: serde_json::Value| {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
        };
        let app =
            axum::Router::new()
                .route(
                    "/api/v1/query",
                    get(move |Query(q): Query<HashMap<String, String>>| async move {
                        let query = q.get("query").cloned().unwrap_or_default();
                        // Only the operator's label convention has data here.
                        let result = if query.contains(r#"pod=~"podinfo-"#) {
                            serde_json::json!([{"metric": {}, "value": [1, "100"]}])
                        } else {
                            serde_json::json!([])
                        };
                        json(serde_json::json!({"status": "success",
                        "data": {"resultType": "vector", "result": result}}))
                    }),
                )
                .route(
                    "/api/v1/series",
                    get(move || async move {
                        json(serde_json::json!({"status": "success", "data": []}))
                    }),
                )
                .route(
                    "/api/v1/labels",
                    get(move || async move {
                        json(serde_json::json!({"status": "success", "data": []}))
                    }),
                );
        let prom = crate::analysis::prometheus::tests::serve(app).await;
        let _ = crate::analysis::prometheus::tests::client();
        let manifest = GOOD.replace(
            "analysis: {interval: 1m, threshold: 5, iterations: 10}",
            "analysis: {interval: 1m, threshold: 5, iterations: 10, metrics: [{name: request-success-rate, thresholdRange: {min: 99}}]}",
        );
        use crate::analysis::builtin::MetricsLabels;
        let lines = check_metrics(
            "f.yaml",
            &manifest,
            "kubernetes",
            &prom,
            Some("test"),
            MetricsLabels::Any,
        )
        .await
        .unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].has_value, "{lines:?}");
        assert!(
            lines[0]
                .line
                .starts_with("f.yaml: Canary podinfo: request-success-rate = 100: Pass"),
            "{lines:?}"
        );
        let lines = check_metrics(
            "f.yaml",
            &manifest,
            "kubernetes",
            &prom,
            Some("test"),
            MetricsLabels::Flagger,
        )
        .await
        .unwrap();
        assert!(!lines[0].has_value, "{lines:?}");
        assert!(
            lines[0].line.contains("Inconclusive: no data")
                && lines[0]
                    .line
                    .contains("http_request_duration_seconds_count has no series at all"),
            "{lines:?}"
        );
    }

    #[test]
    fn one_readable_line_for_a_bad_canary() {
        let bad = GOOD.replace("interval: 1m", "interval: soon");
        let err = validate_manifests("f.yaml", &bad, "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.yaml: Canary podinfo: spec.analysis.interval"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let weights = GOOD.replace("iterations: 10", "stepWeight: 10");
        let err = validate_manifests("f.yaml", &weights, "kubernetes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot split traffic by weight"), "{err}");
    }
}
