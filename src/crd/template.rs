//! `MetricTemplate`: a reusable query against a metrics provider.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canary::SecretRef;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "serin.dev",
    version = "v1beta1",
    kind = "MetricTemplate",
    namespaced,
    derive = "PartialEq",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    /// Where the query runs.
    pub provider: MetricProvider,
    /// Query text; `{{ name }}`, `{{ namespace }}`, `{{ target }}`, `{{ service }}`,
    /// `{{ ingress }}`, `{{ route }}`, `{{ interval }}` and `{{ variables.KEY }}` are
    /// replaced before it is sent.
    pub query: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// `prometheus` (also Thanos, Mimir, VictoriaMetrics), `graphite`, `influxdb`
    /// (Flux for InfluxDB 2; InfluxQL for 1.x), `datadog`, `newrelic` or `dynatrace`. Flagger's other provider types are
    /// accepted and reported as unsupported.
    pub r#type: String,
    /// Base address of the backend's API, e.g. `http://prometheus.monitoring:9090`;
    /// the Secret's `address` key wins when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Extra HTTP headers sent with each query, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// Secret with `username`/`password` (basic auth) or `token` (bearer), and
    /// optionally `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Region of the backend's API, for providers that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Skip TLS certificate verification for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Serin extension: query timeout, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}
