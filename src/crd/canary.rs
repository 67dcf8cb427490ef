//! The `Canary` resource. Field names, types and defaults follow Flagger's
//! `flagger.app/v1beta1` Canary so a Flagger manifest is accepted with only its
//! `apiVersion` changed; Serin's own additions are marked "Serin extension".

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::any_object;

/// Default analysis settings, shared with Flagger.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
pub const DEFAULT_MAX_WEIGHT: u32 = 100;
pub const DEFAULT_READY_THRESHOLD: u32 = 100;
pub const DEFAULT_INTERVAL: &str = "1m";
pub const DEFAULT_SESSION_COOKIE_MAX_AGE: i64 = 86400;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "serin.dev",
    version = "v1beta1",
    kind = "Canary",
    namespaced,
    status = "CanaryStatus",
    shortname = "canary",
    category = "all",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"integer","jsonPath":".status.failedChecks"}"#,
    printcolumn = r#"{"name":"Interval","type":"string","jsonPath":".spec.analysis.interval","priority":1}"#,
    printcolumn = r#"{"name":"Mirror","type":"boolean","jsonPath":".spec.analysis.mirror","priority":1}"#,
    printcolumn = r#"{"name":"StepWeight","type":"string","jsonPath":".spec.analysis.stepWeight","priority":1}"#,
    printcolumn = r#"{"name":"StepWeights","type":"string","jsonPath":".spec.analysis.stepWeights","priority":1}"#,
    printcolumn = r#"{"name":"MaxWeight","type":"string","jsonPath":".spec.analysis.maxWeight","priority":1}"#,
    printcolumn = r#"{"name":"LastTransitionTime","type":"string","jsonPath":".status.lastTransitionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Routing provider: `kubernetes`, `gatewayapi:v1`, `gatewayapi:v1beta1`, `linkerd`,
    /// `istio`, `traefik`, `smi:v1alpha1|2|3`, `nginx`, ... Empty means the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Prometheus-compatible address used by the built-in metrics of this Canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,
    /// Seconds the canary (or primary) may take to become ready before the rollout fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i64>,
    /// The workload to release: a Deployment or DaemonSet in the Canary's namespace. Serin
    /// copies it to `<name>-primary`, which serves the stable version, and scales the
    /// target itself to 0 between releases.
    pub target_ref: TargetRef,
    /// A HorizontalPodAutoscaler (or KEDA ScaledObject) of the target; Serin makes a
    /// `<name>-primary` copy that scales the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,
    /// NGINX provider: the user's Ingress; Serin writes a `<name>-canary` copy with the
    /// canary annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Option<LocalObjectReference>,
    /// Flagger: an ApisixRoute. Serin extension: also an HTTPRoute or GRPCRoute that the
    /// user owns; Serin then edits only the backendRef weights of the rules that point
    /// at the apex Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_ref: Option<LocalObjectReference>,
    /// Gloo: the upstream to route to (accepted for Flagger compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ref: Option<CrossNamespaceObjectReference>,
    /// The Services Serin generates (`<name>`, `<name>-primary`, `<name>-canary`) and the
    /// routing options every router reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<CanaryService>,
    /// Promote a new revision without analysis (no steps, no checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,
    /// Unset or true: deleting the Canary gives the traffic and the replicas back to
    /// the target before the primary goes (a finalizer). False: Flagger's behaviour,
    /// no finalizer; the target stays at 0 replicas and the primary is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,
    /// Stop acting on this Canary: no new release starts and a running one is left
    /// where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// How a release proceeds: the schedule of weights, the checks and webhooks that
    /// gate each step, and the alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment` or `DaemonSet` (`Service` is accepted for Flagger compatibility and
    /// reported as unsupported).
    pub kind: String,
    /// Name of the workload in the Canary's namespace.
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerRef {
    /// `autoscaling/v2` (or `v2beta2`; the served version is found by discovery) or
    /// `keda.sh/v1alpha1`.
    pub api_version: String,
    /// `HorizontalPodAutoscaler` or `ScaledObject`.
    pub kind: String,
    /// Name of the autoscaler in the Canary's namespace.
    pub name: String,
    /// KEDA: the queries of the primary's ScaledObject, by trigger name (Flagger's
    /// `{{.Name}}` style placeholders are replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_queries: Option<BTreeMap<String, String>>,
    /// Replica bounds for the primary's autoscaler; unset copies the target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_replicas: Option<ScalerReplicas>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalerReplicas {
    /// Lower replica bound of the primary's autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// Upper replica bound of the primary's autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// API version of the referenced object, e.g. `networking.k8s.io/v1`.
    pub api_version: String,
    /// Kind of the referenced object, e.g. `Ingress` or `HTTPRoute`.
    pub kind: String,
    /// Name of the referenced object in the Canary's namespace.
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    /// API version of the referenced object.
    pub api_version: String,
    /// Kind of the referenced object.
    pub kind: String,
    /// Name of the referenced object.
    pub name: String,
    /// Namespace of the referenced object; defaults to the Canary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The Services Serin generates (apex, `-primary`, `-canary`) and the routing options
/// every router reads.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// Apex Service name; defaults to the target name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port the generated Services expose.
    pub port: i32,
    /// Name of that port (default `http`); Istio and Linkerd read the protocol from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// `appProtocol` of the generated Services' port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `trafficDistribution` of the generated Services (Kubernetes 1.31 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// Container port (number or name) the Services send to; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// Also expose every other container port of the target on the generated Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_discovery: Option<bool>,
    /// Make the `-primary` and `-canary` Services headless (no cluster IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless: Option<bool>,
    /// Request timeout on the route, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Gateway API: timeout of each request to a backend, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<String>,
    /// App Mesh / Kuma: the mesh the generated objects join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_name: Option<String>,
    /// App Mesh: virtual services the app calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// Hostnames the route serves (Istio `hosts`, Gateway API `hostnames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Istio: write a delegate VirtualService (no hosts or gateways) for a root
    /// VirtualService to include.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<bool>,
    /// Istio HTTPMatchRequest list, also used by Gateway API routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<Vec<HttpMatchRequest>>,
    /// Retry policy of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Rewrite of the request path or authority on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Gateway API: backends that receive a copy of every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Vec<MirrorBackend>>,
    /// Headers added, set or removed on requests and responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderOperations>,
    /// Istio gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<String>>,
    /// Gateway API parentRefs (kind Gateway, or kind Service for GAMMA meshes such as Linkerd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_refs: Option<Vec<ParentReference>>,
    /// Istio: the route's CORS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Istio DestinationRule trafficPolicy, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub traffic_policy: Option<serde_json::Value>,
    /// Labels and annotations of the apex Service and routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    /// Labels and annotations of the `-primary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    /// Labels and annotations of the `-canary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
    /// Label and annotation keys on generated objects that other tools own; Serin leaves
    /// them as it finds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_metadata: Option<UnmanagedMetadata>,
}

/// One of `exact`, `prefix`, `suffix` or `regex`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    /// The value equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value ends with this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The value matches this regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name of the match, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Match on the URI scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Match on the HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Match on the Host/authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Match on request headers, by header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// Match on the port the request arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Istio: match on labels of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Istio: the gateways this match applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<String>>,
    /// Match on query parameters, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    /// Match the path without regard to case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    /// Match requests that do not carry these headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_headers: Option<BTreeMap<String, StringMatch>>,
    /// Istio: match on the namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Number of retries of a failed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Timeout of each attempt, e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Conditions that trigger a retry, e.g. `gateway-error,connect-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Path (or path prefix) written in place of the matched one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Host/authority written in place of the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Gateway API rewrite type: `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorBackend {
    /// The backend that receives the copies.
    pub backend_ref: BackendObjectReference,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    /// API group of the backend; empty for a core Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the backend; default `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the backend.
    pub name: String,
    /// Namespace of the backend; defaults to the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Port of the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Changes to request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperation>,
    /// Changes to response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperation>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperation {
    /// Headers appended, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<BTreeMap<String, String>>,
    /// Headers set (replacing any value), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<BTreeMap<String, String>>,
    /// Names of headers removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent; default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the parent: `Gateway` (default) or `Service` (GAMMA mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the parent.
    pub name: String,
    /// Namespace of the parent; defaults to the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the Gateway listener (or Service port) to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Port of the Gateway listener to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Origins allowed (exact strings; Istio's deprecated form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origin: Option<Vec<String>>,
    /// Origins allowed, as string matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<StringMatch>>,
    /// Methods allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// Request headers allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    /// How long the preflight answer may be cached, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Whether credentials may be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetadata {
    /// Labels added to the generated object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the generated object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Label and annotation keys on generated objects that other tools own; Serin
/// leaves them as it finds them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedMetadata {
    /// Label keys Serin never sets or removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Annotation keys Serin never sets or removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Vec<String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Time between steps, e.g. `1m`, `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Number of checks for A/B and blue/green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    /// Failed checks tolerated before rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Highest canary weight (percent) before promotion; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    /// Weight (percent) added at each step: 5 gives 5, 10, 15, ... up to `maxWeight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// Explicit weight at each step, e.g. `[1, 5, 25, 50]`, instead of `stepWeight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<u32>>,
    /// Weight (percent) moved to the primary at each promotion step; unset moves all
    /// traffic at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight_promotion: Option<u32>,
    /// Blue/green with mirroring: the canary receives a copy of the primary's traffic
    /// (answers discarded) during `iterations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    /// Percentage of requests mirrored; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<u32>,
    /// Percentage of the primary's pods that must be ready before traffic moves to it;
    /// default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ready_threshold: Option<u32>,
    /// Percentage of the canary's pods that must be ready before traffic moves to it;
    /// default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ready_threshold: Option<u32>,
    /// A/B testing: requests matching any of these go to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<Vec<AbMatch>>,
    /// Metric checks run at every step; a failing one counts towards `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<CanaryMetric>>,
    /// Where notifications about this Canary go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<CanaryAlert>>,
    /// HTTP gates and notifications, by type (`confirm-rollout`, `pre-rollout`,
    /// `rollout`, `confirm-traffic-increase`, `confirm-promotion`, `post-rollout`,
    /// `rollback`, `event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<CanaryWebhook>>,
    /// Sticky canary: a client that reached the canary gets a cookie and stays there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbMatch {
    /// Request headers that send a request to the canary, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// Query parameters that send a request to the canary, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    /// Istio: labels of calling workloads whose requests go to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<BTreeMap<String, String>>,
}

/// What a metric check does when its query returns no samples (Serin extension).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnNoData {
    /// Hold the step (no weight change, no failed check) until data arrives or the
    /// progress deadline passes.
    #[default]
    Hold,
    Fail,
    Pass,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryMetric {
    /// Name of the check; `request-success-rate` and `request-duration` are built in
    /// for every provider.
    pub name: String,
    /// Window the query looks back over, e.g. `1m`; default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Deprecated in Flagger: for built-in metrics, the minimum success rate (percent)
    /// or the maximum duration (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The range a passing value lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// PromQL query run against the Canary's `metricsServer` (instead of a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A MetricTemplate that holds the provider and the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// Values for `{{ variables.KEY }}` in the template's query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<BTreeMap<String, String>>,
    /// Serin extension: verdict when the query returns no samples. Default `hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    /// Serin extension: a PromQL query returning the number of requests seen in the
    /// interval; below `minSampleCount` the check is inconclusive rather than judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sample_count: Option<f64>,
    /// Serin extension: a query returning the number of requests in the window, compared
    /// with `minSampleCount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_count_query: Option<String>,
    /// Serin extension: per-check timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdRange {
    /// Lowest passing value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest passing value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the referenced object.
    pub name: String,
    /// Its namespace; defaults to the Canary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    /// Name of the alert, for logs.
    pub name: String,
    /// `info` (also when empty), `warn` or `error`: the lowest severity sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The AlertProvider that sends it.
    pub provider_ref: TemplateRef,
}

#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Flagger treats an empty type as `rollout`.
    #[serde(rename = "")]
    Unspecified,
    ConfirmRollout,
    PreRollout,
    #[default]
    Rollout,
    ConfirmTrafficIncrease,
    ConfirmPromotion,
    PostRollout,
    Rollback,
    Event,
}

impl WebhookType {
    /// The effective type: an unspecified type is a rollout check.
    pub fn effective(self) -> WebhookType {
        match self {
            WebhookType::Unspecified => WebhookType::Rollout,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self.effective() {
            WebhookType::ConfirmRollout => "confirm-rollout",
            WebhookType::PreRollout => "pre-rollout",
            WebhookType::Rollout | WebhookType::Unspecified => "rollout",
            WebhookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            WebhookType::ConfirmPromotion => "confirm-promotion",
            WebhookType::PostRollout => "post-rollout",
            WebhookType::Rollback => "rollback",
            WebhookType::Event => "event",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryWebhook {
    /// Name of the webhook, shown in status and Events.
    pub name: String,
    /// When it is called; empty means `rollout` (at every step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<WebhookType>,
    /// Address POSTed to; a gate passes on a 2xx answer.
    pub url: String,
    /// Request timeout, e.g. `30s`; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries of a failed request before the call counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Do not send an alert when this webhook fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
    /// Skip TLS certificate verification for this webhook.
    #[serde(
        default,
        rename = "disableTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_tls: Option<bool>,
    /// Key-value pairs sent in the payload's `metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub metadata: Option<serde_json::Value>,
    /// Serin extension: headers sent with the request, each value read from a key of
    /// a Secret in the Canary's namespace (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretRef>,
}

impl CanaryWebhook {
    pub fn kind(&self) -> WebhookType {
        self.r#type.unwrap_or_default().effective()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret in the same namespace.
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Cookie set for clients sent to the canary.
    pub cookie_name: String,
    /// Cookie set for clients sent to the primary (so they stay there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    /// Cookie `Domain` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Cookie `HttpOnly` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// Cookie lifetime in seconds; default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
    /// Cookie `Partitioned` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
    /// Cookie `Path` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Cookie `SameSite` attribute: `Strict`, `Lax` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    /// Cookie `Secure` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    Initializing,
    Initialized,
    Waiting,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
    Terminating,
    Terminated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
            Phase::Terminated => "Terminated",
        }
    }

    /// Phases in which a release is under way (analysis or promotion).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Where the release is: Initializing, Initialized, Waiting, Progressing,
    /// WaitingPromotion, Promoting, Finalising, Succeeded, Failed, Terminating, Terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::phase")]
    pub phase: Option<Phase>,
    /// Failed checks in the current release, compared with `analysis.threshold`.
    #[serde(default)]
    pub failed_checks: u32,
    /// Percentage of traffic the canary receives now.
    #[serde(default)]
    pub canary_weight: u32,
    /// Checks run in the current A/B or blue/green release.
    #[serde(default)]
    pub iterations: u32,
    /// Checksums of the ConfigMaps and Secrets the target references, by
    /// `configmap/<name>` or `secret/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked_configs: Option<BTreeMap<String, String>>,
    /// Checksum of the target's pod template and tracked configs the current release
    /// started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Checksum of the last revision promoted to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    /// When the phase last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The cookie (name=value) that pins clients to the current canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_cookie: Option<String>,
    /// The cookie (name=value) that pins clients to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_session_affinity_cookie: Option<String>,
    /// The cookie of the previous release, expired on clients that still send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_session_affinity_cookie: Option<String>,
    /// `Promoted` (Flagger's) and `Ready` (whether the spec and its references are
    /// usable, with the reason if not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CanaryCondition>,
    /// Serin extension: generation of the spec last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Serin extension: the last analysis, one entry a check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_analysis: Vec<CheckStatus>,
    /// Serin extension: when the current step started (RFC 3339); the interval timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step_time: Option<String>,
    /// Serin extension: when the current run took its first step (RFC 3339). Metric
    /// windows (`{{ interval }}`) never reach further back, so that a verdict is
    /// about this revision's requests, not the previous release's, whose series
    /// have the same names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_since: Option<String>,
    /// Serin extension: the value of the `serin.dev/retry` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retry: Option<String>,
    /// Serin extension: the value of the `serin.dev/abort` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_abort: Option<String>,
    /// Serin extension: the value of the `serin.dev/promote` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promote: Option<String>,
    /// Serin extension: why the release is holding (waiting for readiness, for data, for
    /// a gate), and since when (RFC 3339); a hold longer than the progress deadline fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_reason: Option<String>,
    /// When the current hold began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_since: Option<String>,
    /// Serin extension: the router's report on whether the data plane accepted the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryCondition {
    /// `Promoted` or `Ready`.
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One word for why, e.g. `Succeeded`, `InvalidSpec`.
    pub reason: String,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
    /// No verdict yet (no data, too few samples): the step holds.
    Inconclusive,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CheckKind {
    Metric,
    Webhook,
    Readiness,
}

/// One check of the last analysis, so that why Serin acted is readable from the Canary.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// Name of the metric check or webhook.
    pub name: String,
    /// `metric`, `webhook` or `readiness`.
    pub kind: CheckKind,
    /// `Pass`, `Fail` or `Inconclusive` (the step holds).
    pub verdict: Verdict,
    /// The value the check measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Human-readable threshold, e.g. `>= 99`, `<= 500`, `2xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// Why, when the value alone does not say (an error, no data, a webhook's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
