//! Checks that gate each step: metric queries (built-in and `MetricTemplate`s) and
//! webhooks. Results are `CheckStatus` records, stored in the Canary status, so the
//! state machine and the user see the same verdicts.
//!
//! Every failure to evaluate a check (Prometheus down, a query that does not parse,
//! an unknown template variable, a missing Secret or template) becomes a `Fail`
//! verdict with the reason in `message`: a gate is never skipped and nothing here
//! panics. Only "no data" and "too few samples" are `Inconclusive` (the step holds).

pub mod backend;
pub mod builtin;
pub mod nodata;
pub mod prometheus;
pub mod template;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::crd::duration::parse_duration;
use crate::crd::{
    Canary, CanaryMetric, CanaryWebhook, CheckKind, CheckStatus, MetricTemplate, OnNoData, Phase,
    Settings, Verdict, WebhookType,
};
use crate::router::BoxFuture;

use backend::{BackendError, BackendKind, MetricBackend};
use builtin::{BuiltinMetric, GatewayMetrics, MetricsLabels};
use prometheus::{PromAuth, PromClient, PromError};
use template::{TemplateError, TemplateModel, render};
use webhook::{CallOptions, WebhookError, WebhookPayload};

/// Per-check timeout when neither the metric nor its template sets one.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("secret {namespace}/{name}: {why}")]
    Secret {
        namespace: String,
        name: String,
        why: String,
    },
    #[error("secret {namespace}/{name} not found")]
    MissingSecret { namespace: String, name: String },
    #[error("MetricTemplate {namespace}/{name} not found")]
    MissingTemplate { namespace: String, name: String },
    #[error(
        "MetricTemplate {template}: provider type {kind:?} is not supported (use prometheus, graphite, influxdb, datadog, newrelic or dynatrace)"
    )]
    UnsupportedProvider { template: String, kind: String },
    #[error(
        "no metrics server: set spec.metricsServer, the template's provider.address or --metrics-server"
    )]
    NoMetricsServer,
    #[error("a {0} MetricTemplate needs provider.address")]
    NoBackendAddress(&'static str),
    #[error("no threshold: set thresholdRange.min and/or thresholdRange.max")]
    NoThreshold,
    #[error("minSampleCount needs sampleCountQuery for a metric that is not built-in")]
    NoSampleCountQuery,
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error("template: {0}")]
    Template(#[from] TemplateError),
    #[error("query failed: {0}")]
    Prometheus(#[from] PromError),
    #[error("query failed: {0}")]
    Backend(#[from] BackendError),
    #[error("sample count query failed: {0}")]
    SampleCount(BackendError),
    #[error("{0}")]
    Webhook(#[from] WebhookError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl AnalysisError {
    /// The metrics server gave no answer (see [`PromError::is_unavailable`]); a
    /// check's own timeout counts too.
    pub fn is_unavailable(&self) -> bool {
        match self {
            AnalysisError::Timeout(_) => true,
            AnalysisError::Prometheus(p) => p.is_unavailable(),
            AnalysisError::Backend(b) | AnalysisError::SampleCount(b) => b.is_unavailable(),
            _ => false,
        }
    }
}

/// A Secret's data, key to bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Reads Secrets (auth headers, provider credentials). Values are never logged.
pub trait SecretSource: Send + Sync {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, AnalysisError>>;
}

/// Looks up `MetricTemplate`s (backed by a reflector store in the operator).
pub trait TemplateSource: Send + Sync {
    fn get(&self, namespace: &str, name: &str) -> Option<MetricTemplate>;
}

pub struct AnalysisCtx {
    pub http: reqwest::Client,
    /// `--metrics-server`: used when neither the Canary nor the template names one.
    pub default_metrics_server: Option<String>,
    pub secrets: Arc<dyn SecretSource>,
    pub templates: Arc<dyn TemplateSource>,
    /// `--event-webhook`: receives every event of every Canary (Flagger's
    /// `-event-webhook`), in addition to the Canaries' own `event` webhooks.
    pub event_webhook: Option<String>,
    /// Which metrics the built-ins read for `gatewayapi` Canaries.
    pub gateway_metrics: GatewayMetrics,
    /// `--metrics-labels`: the label convention the built-ins select on.
    pub metrics_labels: MetricsLabels,
    /// First pause between webhook retries (doubled each time, capped at 30 s).
    pub webhook_backoff: Duration,
}

impl AnalysisCtx {
    /// A context with Serin's defaults for the optional fields.
    pub fn new(
        http: reqwest::Client,
        default_metrics_server: Option<String>,
        secrets: Arc<dyn SecretSource>,
        templates: Arc<dyn TemplateSource>,
    ) -> AnalysisCtx {
        AnalysisCtx {
            http,
            default_metrics_server,
            secrets,
            templates,
            event_webhook: None,
            gateway_metrics: GatewayMetrics::default(),
            metrics_labels: MetricsLabels::default(),
            webhook_backoff: Duration::from_secs(1),
        }
    }

    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, AnalysisError> {
        self.secrets
            .get(namespace, name)
            .await?
            .ok_or_else(|| AnalysisError::MissingSecret {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }
}

/// The accepted range of a metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bounds {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min, self.max) {
            (Some(min), Some(max)) => write!(f, ">= {} and <= {}", num(min), num(max)),
            (Some(min), None) => write!(f, ">= {}", num(min)),
            (None, Some(max)) => write!(f, "<= {}", num(max)),
            (None, None) => f.write_str("any"),
        }
    }
}

/// A number for people: at most two decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Where a metric's query comes from (Flagger's precedence: template, then inline
/// query, then built-in by name).
fn builtin_of(metric: &CanaryMetric) -> Option<BuiltinMetric> {
    if metric.template_ref.is_some()
        || metric
            .query
            .as_deref()
            .is_some_and(|q| !q.trim().is_empty())
    {
        None
    } else {
        BuiltinMetric::from_name(&metric.name)
    }
}

/// The range a metric must stay in. `thresholdRange` wins; the deprecated
/// `threshold` is a minimum for `request-success-rate` and a maximum otherwise, as
/// in Flagger. A metric with neither is refused rather than silently passing.
pub fn bounds(metric: &CanaryMetric) -> Result<Bounds, AnalysisError> {
    if let Some(r) = &metric.threshold_range
        && (r.min.is_some() || r.max.is_some())
    {
        return Ok(Bounds {
            min: r.min,
            max: r.max,
        });
    }
    match (metric.threshold, builtin_of(metric)) {
        (Some(t), Some(BuiltinMetric::RequestSuccessRate)) => Ok(Bounds {
            min: Some(t),
            max: None,
        }),
        (Some(t), _) => Ok(Bounds {
            min: None,
            max: Some(t),
        }),
        (None, _) => Err(AnalysisError::NoThreshold),
    }
}

/// The verdict rules, in order: too few samples holds; no data follows `onNoData`
/// (default hold); otherwise the value must be within `bounds`.
pub fn judge(
    value: Option<f64>,
    samples: Option<(f64, f64)>,
    bounds: Bounds,
    on_no_data: OnNoData,
) -> (Verdict, String) {
    if let Some((count, min)) = samples
        && count < min
    {
        return (
            Verdict::Inconclusive,
            format!(
                "only {} samples, minSampleCount is {}: waiting for traffic",
                num(count),
                num(min)
            ),
        );
    }
    let Some(v) = value else {
        let verdict = match on_no_data {
            OnNoData::Hold => Verdict::Inconclusive,
            OnNoData::Fail => Verdict::Fail,
            OnNoData::Pass => Verdict::Pass,
        };
        let action = match on_no_data {
            OnNoData::Hold => "holding until data arrives",
            OnNoData::Fail => "onNoData is fail",
            OnNoData::Pass => "onNoData is pass",
        };
        return (
            verdict,
            format!("no data: the query returned no samples; {action}"),
        );
    };
    if let Some(min) = bounds.min
        && v < min
    {
        return (
            Verdict::Fail,
            format!(
                "{} is below the minimum {} by {}",
                num(v),
                num(min),
                num(min - v)
            ),
        );
    }
    if let Some(max) = bounds.max
        && v > max
    {
        return (
            Verdict::Fail,
            format!(
                "{} is above the maximum {} by {}",
                num(v),
                num(max),
                num(v - max)
            ),
        );
    }
    (Verdict::Pass, format!("{} is {}", num(v), bounds))
}

/// What a metric resolves to before it is run.
struct Plan {
    client: Box<dyn MetricBackend>,
    query: String,
    sample_query: Option<String>,
}

fn parse_timeout(field: &str, raw: Option<&str>) -> Result<Option<Duration>, AnalysisError> {
    match raw.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => Err(AnalysisError::Invalid {
                field: field.to_string(),
                why: "must be above 0".into(),
            }),
            Err(e) => Err(AnalysisError::Invalid {
                field: field.to_string(),
                why: e.to_string(),
            }),
        },
    }
}

fn canary_metrics_server(ctx: &AnalysisCtx, canary: &Canary) -> Option<String> {
    canary
        .spec
        .metrics_server
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            ctx.default_metrics_server
                .clone()
                .filter(|s| !s.trim().is_empty())
        })
}

/// The window a check looks back over: its `interval` (default 1m), but never past
/// the run's first step. Every built-in selects the canary by the target's name,
/// which the previous release's canary had too (and it served all traffic during
/// that promotion): a window reaching back into it dilutes this revision's errors
/// with the last one's successes. A window too short for the scrape interval gives
/// no data, which holds the step until it has grown.
fn run_window(
    metric: &str,
    configured: Option<&str>,
    traffic_since: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<String, AnalysisError> {
    let configured = configured
        .filter(|i| !i.trim().is_empty())
        .unwrap_or(template::DEFAULT_METRIC_INTERVAL);
    let full = parse_duration(configured).map_err(|e| AnalysisError::Invalid {
        field: format!("metrics[{metric}].interval"),
        why: e.to_string(),
    })?;
    let since = traffic_since
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok());
    Ok(match since {
        Some(run) if run < full => format!("{}s", run.as_secs_f64().ceil().max(1.0) as u64),
        _ => configured.to_string(),
    })
}

/// Resolves template, Secret, address and query text. Async only for the Secret.
async fn plan(
    ctx: &AnalysisCtx,
    canary: &Canary,
    settings: &Settings,
    metric: &CanaryMetric,
    timeout: Duration,
) -> Result<Plan, AnalysisError> {
    let window = run_window(
        &metric.name,
        metric.interval.as_deref(),
        canary
            .status
            .as_ref()
            .and_then(|s| s.traffic_since.as_deref()),
        chrono::Utc::now(),
    )?;
    let model = TemplateModel::for_canary(
        canary,
        Some(window.as_str()),
        metric.template_variables.as_ref(),
    )?;
    let builtin = builtin_of(metric);
    let (client, query) = if let Some(tref) = &metric.template_ref {
        let ns = tref
            .namespace
            .clone()
            .unwrap_or_else(|| canary.namespace_or_default());
        let tpl =
            ctx.templates
                .get(&ns, &tref.name)
                .ok_or_else(|| AnalysisError::MissingTemplate {
                    namespace: ns.clone(),
                    name: tref.name.clone(),
                })?;
        let provider = &tpl.spec.provider;
        let Some(kind) = BackendKind::of(provider.r#type.as_str()) else {
            return Err(AnalysisError::UnsupportedProvider {
                template: format!("{ns}/{}", tref.name),
                kind: provider.r#type.clone(),
            });
        };
        let secret = match &provider.secret_ref {
            Some(sref) => Some(ctx.secret(&ns, &sref.name).await?),
            None => None,
        };
        let query = render(&tpl.spec.query, &model)?;
        let skip_verify = provider.insecure_skip_verify.unwrap_or(false);
        let template_address = provider.address.clone().filter(|a| !a.trim().is_empty());
        let client: Box<dyn MetricBackend> = match kind {
            BackendKind::Prometheus => {
                // Flagger reads the address from the Secret when it has one; Serin
                // then falls back to the template's, then the Canary's / operator's
                // server.
                let address = secret
                    .as_ref()
                    .and_then(|s| s.get("address"))
                    .map(|a| String::from_utf8_lossy(a).trim().to_string())
                    .filter(|a| !a.is_empty())
                    .or(template_address)
                    .or_else(|| canary_metrics_server(ctx, canary))
                    .ok_or(AnalysisError::NoMetricsServer)?;
                let auth = secret.as_ref().and_then(PromAuth::from_secret);
                Box::new(PromClient::new(
                    &ctx.http,
                    &address,
                    provider.headers.as_ref(),
                    auth,
                    skip_verify,
                    timeout,
                )?)
            }
            // The Canary's metricsServer is a Prometheus: other backends need their
            // own address, as in Flagger.
            BackendKind::Graphite => Box::new(backend::graphite::GraphiteClient::new(
                &ctx.http,
                &template_address.ok_or(AnalysisError::NoBackendAddress("graphite"))?,
                secret.as_ref(),
                skip_verify,
                timeout,
            )?),
            BackendKind::Saas(kind) => {
                let interval = parse_duration(&window).map_err(|e| AnalysisError::Invalid {
                    field: format!("metrics[{}].interval", metric.name),
                    why: e.to_string(),
                })?;
                Box::new(backend::saas::SaasClient::new(
                    kind,
                    &ctx.http,
                    template_address.as_deref(),
                    secret.as_ref(),
                    interval,
                    skip_verify,
                    timeout,
                )?)
            }
            BackendKind::InfluxDb => Box::new(backend::influxdb::InfluxClient::new(
                &ctx.http,
                &template_address.ok_or(AnalysisError::NoBackendAddress("influxdb"))?,
                secret.as_ref(),
                &query,
                skip_verify,
                timeout,
            )?),
        };
        (client, query)
    } else {
        let address = canary_metrics_server(ctx, canary).ok_or(AnalysisError::NoMetricsServer)?;
        let client: Box<dyn MetricBackend> = Box::new(PromClient::new(
            &ctx.http, &address, None, None, false, timeout,
        )?);
        let query = match (&metric.query, builtin) {
            (_, Some(b)) => builtin::query(
                settings.provider,
                ctx.gateway_metrics,
                ctx.metrics_labels,
                b,
                &model,
            )?,
            (Some(q), None) => render(q, &model)?,
            (None, None) => {
                return Err(AnalysisError::Invalid {
                    field: format!("metrics[{}]", metric.name),
                    why: "needs a query or a templateRef".into(),
                });
            }
        };
        (client, query)
    };
    let sample_query = match (&metric.sample_count_query, metric.min_sample_count) {
        (Some(q), _) if !q.trim().is_empty() => Some(render(q, &model)?),
        (_, Some(_)) => match builtin {
            Some(_) => Some(builtin::query(
                settings.provider,
                ctx.gateway_metrics,
                ctx.metrics_labels,
                BuiltinMetric::RequestCount,
                &model,
            )?),
            None => return Err(AnalysisError::NoSampleCountQuery),
        },
        _ => None,
    };
    Ok(Plan {
        client,
        query,
        sample_query,
    })
}

type Measured = (Option<f64>, Option<(f64, f64)>, Plan);

/// Queries the value (and the sample count, when asked for).
async fn measure(
    ctx: &AnalysisCtx,
    canary: &Canary,
    settings: &Settings,
    metric: &CanaryMetric,
    timeout: Duration,
) -> Result<Measured, AnalysisError> {
    let plan = plan(ctx, canary, settings, metric, timeout).await?;
    // Both queries at once: the check's timeout then bounds one round trip, not two.
    let count = async {
        match (&plan.sample_query, metric.min_sample_count) {
            (Some(q), Some(min)) => plan
                .client
                .query(q)
                .await
                .map(|c| Some((c.unwrap_or(0.0), min)))
                .map_err(AnalysisError::SampleCount),
            _ => Ok(None),
        }
    };
    let (samples, value) = futures::join!(count, plan.client.query(&plan.query));
    let (samples, value) = (samples?, value.map_err(AnalysisError::Backend)?);
    Ok((value, samples, plan))
}

/// The message of a check without samples: what was asked, what Prometheus has,
/// and (for a built-in) where the label convention is set.
async fn explain_no_data(
    plan: &Plan,
    namespace: &str,
    builtin_labels: Option<MetricsLabels>,
    timeout: Duration,
    judged: &str,
) -> String {
    let Some(prom) = plan.client.prometheus() else {
        return format!("{judged}. Query: {}", plan.query);
    };
    let found =
        match tokio::time::timeout(timeout, nodata::explain(prom, &plan.query, namespace)).await {
            Ok(text) => text,
            Err(_) => format!("looking up the series timed out after {timeout:?}"),
        };
    let hint = match builtin_labels {
        Some(l) => format!(
            "; see --metrics-labels (built-ins select on the {} label convention)",
            l.as_str()
        ),
        None => String::new(),
    };
    format!("{judged}. {found}{hint}. Query: {}", plan.query)
}

/// Runs one metric check to a verdict, within its own timeout.
pub async fn check_metric(
    ctx: &AnalysisCtx,
    canary: &Canary,
    settings: &Settings,
    metric: &CanaryMetric,
) -> CheckStatus {
    let fail = |threshold: Option<String>, e: AnalysisError| CheckStatus {
        name: metric.name.clone(),
        kind: CheckKind::Metric,
        verdict: Verdict::Fail,
        value: None,
        threshold,
        message: Some(e.to_string()),
    };
    let bounds = match bounds(metric) {
        Ok(b) => b,
        Err(e) => return fail(None, e),
    };
    let threshold = Some(bounds.to_string());
    let template_timeout = metric
        .template_ref
        .as_ref()
        .and_then(|t| {
            let ns = t
                .namespace
                .clone()
                .unwrap_or_else(|| canary.namespace_or_default());
            ctx.templates.get(&ns, &t.name)
        })
        .and_then(|t| t.spec.provider.timeout);
    let timeout = match parse_timeout(
        &format!("metrics[{}].timeout", metric.name),
        metric.timeout.as_deref(),
    )
    .and_then(|t| match t {
        Some(t) => Ok(Some(t)),
        None => parse_timeout(
            "MetricTemplate provider.timeout",
            template_timeout.as_deref(),
        ),
    }) {
        Ok(t) => t.unwrap_or(DEFAULT_CHECK_TIMEOUT),
        Err(e) => return fail(threshold, e),
    };
    // A metrics server that is down or too slow is no evidence against the canary:
    // like no data, the step holds (and fails at the progress deadline) rather than
    // counting a failed check, so that a Prometheus restart cannot roll back every
    // release under way. `onNoData: fail` asks for missing evidence to fail.
    let unavailable = |threshold: Option<String>, e: AnalysisError| {
        let (verdict, action) = match metric.on_no_data.unwrap_or_default() {
            OnNoData::Fail => (Verdict::Fail, "onNoData is fail"),
            OnNoData::Hold | OnNoData::Pass => (
                Verdict::Inconclusive,
                "holding until it answers or the progress deadline",
            ),
        };
        CheckStatus {
            name: metric.name.clone(),
            kind: CheckKind::Metric,
            verdict,
            value: None,
            threshold,
            message: Some(format!("metrics server unavailable: {e}; {action}")),
        }
    };
    let measured =
        tokio::time::timeout(timeout, measure(ctx, canary, settings, metric, timeout)).await;
    let (value, samples, plan) = match measured {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.is_unavailable() => return unavailable(threshold, e),
        Ok(Err(e)) => return fail(threshold, e),
        Err(_) => return unavailable(threshold, AnalysisError::Timeout(timeout)),
    };
    let (verdict, mut message) = judge(
        value,
        samples,
        bounds,
        metric.on_no_data.unwrap_or_default(),
    );
    let too_few = samples.is_some_and(|(count, min)| count < min);
    if value.is_none() && !too_few {
        message = explain_no_data(
            &plan,
            &canary.namespace_or_default(),
            builtin_of(metric).map(|_| ctx.metrics_labels),
            timeout,
            &message,
        )
        .await;
    }
    CheckStatus {
        name: metric.name.clone(),
        kind: CheckKind::Metric,
        verdict,
        value,
        threshold,
        message: Some(message),
    }
}

/// Runs every metric of `spec.analysis.metrics` concurrently, each with its own timeout.
pub async fn run_metric_checks(
    ctx: &AnalysisCtx,
    canary: &Canary,
    settings: &Settings,
) -> Vec<CheckStatus> {
    let metrics = canary
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.metrics.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    futures::future::join_all(
        metrics
            .iter()
            .map(|m| check_metric(ctx, canary, settings, m)),
    )
    .await
}

fn webhook_options(
    ctx: &AnalysisCtx,
    hook: &CanaryWebhook,
    default_timeout: Duration,
) -> Result<CallOptions, AnalysisError> {
    let timeout = parse_timeout(
        &format!("webhooks[{}].timeout", hook.name),
        hook.timeout.as_deref(),
    )?
    .unwrap_or(default_timeout);
    Ok(CallOptions {
        timeout,
        retries: hook.retries.unwrap_or(0),
        disable_tls: hook.disable_tls.unwrap_or(false),
        headers: Default::default(),
        backoff: ctx.webhook_backoff,
    })
}

async fn call_webhook(
    ctx: &AnalysisCtx,
    canary: &Canary,
    hook: &CanaryWebhook,
    payload: &WebhookPayload,
    default_timeout: Duration,
) -> Result<u16, AnalysisError> {
    let mut opts = webhook_options(ctx, hook, default_timeout)?;
    if let Some(sref) = &hook.headers_secret_ref {
        let data = ctx
            .secret(&canary.namespace_or_default(), &sref.name)
            .await?;
        opts.headers = webhook::headers_from_secret(&data)?;
    }
    Ok(webhook::call(&ctx.http, &hook.url, payload, &opts).await?)
}

/// Calls the Canary's webhooks of `kind` (retries and timeouts per webhook). A
/// webhook passes when it answers 2xx.
///
/// Webhooks of one kind run one after another in the order written, as in Flagger
/// (a pre-rollout load test may have to finish before a smoke test); all of them
/// run, so the status shows every gate. For `rollback` webhooks, `Pass` (2xx) means
/// "roll back now".
pub async fn run_webhooks(
    ctx: &AnalysisCtx,
    canary: &Canary,
    kind: WebhookType,
    phase: Phase,
) -> Vec<CheckStatus> {
    let hooks = canary
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.webhooks.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let kind = kind.effective();
    let mut out = Vec::new();
    for hook in hooks.iter().filter(|h| h.kind() == kind) {
        let payload = WebhookPayload::new(canary, phase, hook.metadata.clone());
        let result = call_webhook(ctx, canary, hook, &payload, webhook::DEFAULT_TIMEOUT).await;
        out.push(webhook_status(hook, result));
    }
    out
}

fn webhook_status(hook: &CanaryWebhook, result: Result<u16, AnalysisError>) -> CheckStatus {
    let (verdict, value, message) = match result {
        Ok(code) => (
            Verdict::Pass,
            Some(code),
            format!("{} answered HTTP {code}", hook.kind().as_str()),
        ),
        Err(e) => {
            let code = match &e {
                AnalysisError::Webhook(w) => w.status(),
                _ => None,
            };
            (
                Verdict::Fail,
                code,
                format!("{} webhook failed: {e}", hook.kind().as_str()),
            )
        }
    };
    CheckStatus {
        name: hook.name.clone(),
        kind: CheckKind::Webhook,
        verdict,
        value: value.map(f64::from),
        threshold: Some("2xx".into()),
        message: Some(message),
    }
}

/// True when the check is a webhook whose spec sets `muteAlert`: its failure must
/// not raise an alert (the Event is still recorded).
pub fn is_alert_muted(canary: &Canary, check: &CheckStatus) -> bool {
    check.kind == CheckKind::Webhook
        && canary
            .spec
            .analysis
            .as_ref()
            .and_then(|a| a.webhooks.as_ref())
            .is_some_and(|hooks| {
                hooks
                    .iter()
                    .any(|h| h.name == check.name && h.mute_alert.unwrap_or(false))
            })
}

/// The outcome of one event delivery (`name` is the webhook's, or `--event-webhook`).
#[derive(Debug)]
pub struct EventDelivery {
    pub name: String,
    pub result: Result<(), AnalysisError>,
}

/// Sends an event (what a Kubernetes Event says) to the global event webhook and to
/// the Canary's `event` webhooks, concurrently, each with Flagger's 5 s default.
/// `event_type` is `Normal` or `Warning`. Failures are returned, never raised: an
/// event that cannot be delivered must not stop a rollout.
pub async fn send_event(
    ctx: &AnalysisCtx,
    canary: &Canary,
    phase: Phase,
    message: &str,
    event_type: &str,
) -> Vec<EventDelivery> {
    let now = chrono::Utc::now();
    let mut hooks: Vec<CanaryWebhook> = canary
        .spec
        .analysis
        .as_ref()
        .and_then(|a| a.webhooks.as_ref())
        .map(|hs| {
            hs.iter()
                .filter(|h| h.kind() == WebhookType::Event)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(url) = ctx.event_webhook.as_ref().filter(|u| !u.trim().is_empty()) {
        hooks.push(CanaryWebhook {
            name: "--event-webhook".into(),
            r#type: Some(WebhookType::Event),
            url: url.clone(),
            ..Default::default()
        });
    }
    let sends = hooks.iter().map(|hook| async move {
        let payload = WebhookPayload::event(
            canary,
            phase,
            hook.metadata.as_ref(),
            message,
            event_type,
            now,
        );
        EventDelivery {
            name: hook.name.clone(),
            result: call_webhook(ctx, canary, hook, &payload, webhook::EVENT_TIMEOUT)
                .await
                .map(|_| ()),
        }
    });
    futures::future::join_all(sends).await
}

#[cfg(test)]
mod tests;
