//! `plan -f`: what the operator will do with a new revision, without a cluster. The
//! operator's own state machine runs against an ideal world (pods ready at once,
//! every check and gate passing), so the plan is its decisions, not a description
//! of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::CliError;
use crate::controller::machine::{
    self, Action, CheckResults, Observations, Readiness, Requests, Step,
};
use crate::crd::{
    Canary, CanaryStatus, CheckKind, CheckStatus, Phase, Provider, Settings, Verdict, WebhookType,
};
use crate::router::{self, Routes};

/// One moment of the plan where something is called or written.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    /// Time since the operator noticed the new revision.
    pub at: Duration,
    pub phase: Phase,
    pub weight: u32,
    /// Metric checks and webhooks called at this moment.
    pub calls: Vec<String>,
    /// The routes written, if any.
    pub routes: Option<Routes>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// The shortest possible duration: every pod ready and every check passing at
    /// once, as soon as it is due.
    pub shortest: Duration,
}

/// The simulation advances a second per tick; the machine itself says when a step is
/// due, so a tick with nothing due decides nothing.
const TICK: Duration = Duration::from_secs(1);
/// A release longer than a day of ticks is not planned.
const MAX_TICKS: u32 = 86_400;

pub fn plan(canary: &Canary, provider: &str) -> Result<Plan, CliError> {
    let name = canary.name_str().to_string();
    let settings =
        Settings::from_spec(&canary.spec, provider).map_err(|source| CliError::Invalid {
            path: "-".into(),
            name: name.clone(),
            source,
        })?;
    let webhooks: BTreeMap<WebhookType, Vec<String>> = canary
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.webhooks.iter().flatten())
        .fold(BTreeMap::new(), |mut m, w| {
            m.entry(w.kind())
                .or_insert_with(Vec::new)
                .push(w.name.clone());
            m
        });
    let metrics: Vec<String> = canary
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.metrics.iter().flatten())
        .map(|m| m.name.clone())
        .collect();
    let t0 = DateTime::<Utc>::UNIX_EPOCH;
    let mut now = t0;
    // A Canary initialized on revision v1; the user has just applied v2.
    let mut status = CanaryStatus {
        phase: Some(Phase::Succeeded),
        last_applied_spec: Some("v1".into()),
        last_promoted_spec: Some("v1".into()),
        last_transition_time: Some(t0.to_rfc3339()),
        ..CanaryStatus::default()
    };
    let mut primary_revision = "v1".to_string();
    let mut target_up = false;
    let mut steps = Vec::new();
    for _ in 0..MAX_TICKS {
        let mut obs = Observations {
            target_checksum: "v2".into(),
            tracked_configs: BTreeMap::new(),
            canary: if target_up {
                Readiness::Ready
            } else {
                Readiness::NotReady("scaled to zero".into())
            },
            target_scaled_up: target_up,
            primary: Some(Readiness::Ready),
            primary_revision: Some(primary_revision.clone()),
            retry: None,
            requests: Requests::default(),
            deleting: false,
            webhook_types: webhooks.keys().copied().collect(),
            has_metrics: !metrics.is_empty(),
            checks: CheckResults::default(),
            route_rejected: None,
            queued: None,
        };
        let mut calls = Vec::new();
        let decision = loop {
            match machine::step(&settings, &status, &obs, now) {
                Step::Decided(d) => break d,
                Step::NeedChecks(need) => {
                    for kind in need.gates {
                        let names = webhooks.get(&kind).cloned().unwrap_or_default();
                        for n in &names {
                            calls.push(format!("{} webhook {n}", kind.as_str()));
                        }
                        // A rollback webhook that passes asks for a rollback; the
                        // ideal world never asks.
                        let verdict = if kind == WebhookType::Rollback {
                            Verdict::Fail
                        } else {
                            Verdict::Pass
                        };
                        let results = names
                            .iter()
                            .map(|n| passed(n, CheckKind::Webhook, verdict))
                            .collect();
                        obs.checks.gates.insert(kind, results);
                    }
                    if need.metrics {
                        calls.extend(metrics.iter().map(|m| format!("metric {m}")));
                        obs.checks.metrics = Some(
                            metrics
                                .iter()
                                .map(|m| passed(m, CheckKind::Metric, Verdict::Pass))
                                .collect(),
                        );
                    }
                }
            }
        };
        let mut routes = None;
        let mut actions = Vec::new();
        for a in &decision.actions {
            match a {
                Action::SetRoutes(r) => routes = Some(*r),
                Action::ScaleTargetUp => {
                    target_up = true;
                    actions.push("scale the target up".to_string());
                }
                Action::ScaleTargetToZero => {
                    target_up = false;
                    actions.push("scale the target to zero".to_string());
                }
                Action::Promote => {
                    primary_revision = "v2".into();
                    actions.push("copy the target's pod template to the primary".to_string());
                }
                Action::RunWebhooks(kind) => {
                    for n in webhooks.get(kind).into_iter().flatten() {
                        calls.push(format!("{} webhook {n}", kind.as_str()));
                    }
                }
                Action::EnsurePrimary => actions.push("create the primary".to_string()),
                Action::Finalize | Action::RestoreTarget => {}
            }
        }
        let phase = decision.status.phase.unwrap_or(Phase::Succeeded);
        // Writes the same routes again (idempotent re-issues) are not a new step.
        let last_routes = steps.iter().rev().find_map(|s: &PlanStep| s.routes);
        let routes = routes.filter(|r| Some(*r) != last_routes);
        let changed = phase != status.phase.unwrap_or(Phase::Succeeded);
        if changed || routes.is_some() || !calls.is_empty() || !actions.is_empty() {
            steps.push(PlanStep {
                at: (now - t0).to_std().unwrap_or_default(),
                phase,
                weight: decision.status.canary_weight,
                calls,
                routes,
                actions,
            });
        }
        status = decision.status;
        if matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) && !target_up && changed {
            break;
        }
        if status.phase == Some(Phase::Succeeded) && !target_up && primary_revision == "v2" {
            break;
        }
        now += chrono::Duration::from_std(TICK).unwrap_or_default();
    }
    // Done when it reaches Succeeded; scaling the drained target down comes after.
    let shortest = steps
        .iter()
        .find(|s| s.phase == Phase::Succeeded)
        .map_or(Duration::ZERO, |s| s.at);
    Ok(Plan { steps, shortest })
}

fn passed(name: &str, kind: CheckKind, verdict: Verdict) -> CheckStatus {
    CheckStatus {
        name: name.to_string(),
        kind,
        verdict,
        value: None,
        threshold: None,
        message: None,
    }
}

/// The routing objects written for `routes`, as YAML, for the providers whose
/// objects render without a cluster.
pub fn render_routes(
    canary: &Canary,
    provider: Provider,
    routes: Routes,
) -> Result<String, CliError> {
    use crate::router::gatewayapi::{RenderOptions, RouteKind};
    let err = |e: router::RouterError| CliError::Run(e.to_string());
    let out = match provider {
        Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 | Provider::Linkerd => {
            let grpc = canary
                .spec
                .service
                .as_ref()
                .and_then(|s| s.app_protocol.as_deref())
                .is_some_and(|p| p.to_ascii_lowercase().starts_with("grpc"));
            let kind = if grpc {
                RouteKind::Grpc
            } else {
                RouteKind::Http
            };
            let opts = RenderOptions {
                kind,
                mirror_percent: true,
                timeouts: true,
                linkerd: provider == Provider::Linkerd,
                sticky: false,
            };
            let version = if provider == Provider::GatewayApiV1beta1 {
                "v1beta1"
            } else {
                "v1"
            };
            let plural = if grpc { "grpcroutes" } else { "httproutes" };
            let ar =
                router::api_resource("gateway.networking.k8s.io", version, kind.kind(), plural);
            let obj = router::gatewayapi::render_route(canary, routes, opts, &ar).map_err(err)?;
            yaml(&obj)?
        }
        Provider::Istio => {
            let ar = router::api_resource(
                "networking.istio.io",
                "v1beta1",
                "VirtualService",
                "virtualservices",
            );
            let obj = router::istio::render_virtual_service(canary, routes, &ar).map_err(err)?;
            yaml(&obj)?
        }
        Provider::Traefik => {
            let (spec, _) = router::traefik::render_specs(canary, routes).map_err(err)?;
            let obj = serde_json::json!({
                "apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService",
                "metadata": {"name": canary.apex_name(), "namespace": canary.namespace_or_default()},
                "spec": spec,
            });
            yaml(&obj)?
        }
        Provider::Smi(v) => {
            let spec = router::smi::render_spec(canary, routes, v).map_err(err)?;
            let obj = serde_json::json!({
                "kind": "TrafficSplit",
                "metadata": {"name": canary.apex_name(), "namespace": canary.namespace_or_default()},
                "spec": spec,
            });
            yaml(&obj)?
        }
        Provider::Kubernetes => format!(
            "# Service {} selects the {} pods\n",
            canary.apex_name(),
            if routes.canary > 0 {
                "canary (target)"
            } else {
                "primary"
            }
        ),
        Provider::Nginx => format!(
            "# Ingress {}-canary: nginx.ingress.kubernetes.io/canary-weight: \"{}\"\n",
            canary
                .spec
                .ingress_ref
                .as_ref()
                .map_or("?", |i| i.name.as_str()),
            routes.canary
        ),
    };
    Ok(out)
}

fn yaml<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_yaml::to_string(v).map_err(CliError::Crds)
}

/// The plan as text: one block per moment, the routing objects under the weights.
pub fn format_plan(
    canary: &Canary,
    settings: &Settings,
    plan: &Plan,
    objects: bool,
) -> Result<String, CliError> {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Canary {} ({}, interval {}s): a new revision of {}/{}",
        canary.name_str(),
        canary
            .spec
            .provider
            .as_deref()
            .unwrap_or("the operator's --provider"),
        settings.interval.as_secs(),
        canary.spec.target_ref.kind,
        canary.spec.target_ref.name
    );
    for s in &plan.steps {
        let _ = write!(
            o,
            "\n+{:>4}s  {:<16} weight {:>3}",
            s.at.as_secs(),
            s.phase.as_str(),
            s.weight
        );
        if let Some(r) = s.routes {
            let _ = write!(o, "  routes primary {} / canary {}", r.primary, r.canary);
            if r.mirror {
                let _ = write!(
                    o,
                    " (mirror{})",
                    r.mirror_weight
                        .map(|w| format!(" {w}%"))
                        .unwrap_or_default()
                );
            }
        }
        let _ = writeln!(o);
        for a in &s.actions {
            let _ = writeln!(o, "        {a}");
        }
        for c in &s.calls {
            let _ = writeln!(o, "        calls {c}");
        }
        if objects && let Some(r) = s.routes {
            for line in render_routes(canary, settings.provider, r)?.lines() {
                let _ = writeln!(o, "        | {line}");
            }
        }
    }
    let _ = writeln!(
        o,
        "\nShortest possible duration: {}s (pods ready at once, every check passing)",
        plan.shortest.as_secs()
    );
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(analysis: &str) -> Canary {
        serde_yaml::from_str(&format!(
            "apiVersion: serin.dev/v1beta1\nkind: Canary\nmetadata: {{name: web, namespace: shop}}\nspec:\n  provider: gatewayapi:v1\n  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  service: {{port: 80, gatewayRefs: [{{name: gw}}]}}\n  analysis: {analysis}\n"
        ))
        .unwrap()
    }

    #[test]
    fn plan_walks_the_weights_calls_the_checks_and_promotes() {
        let c = canary(
            "{interval: 10s, threshold: 2, stepWeight: 20, maxWeight: 40, metrics: [{name: request-success-rate, thresholdRange: {min: 99}}], webhooks: [{name: gate, type: confirm-promotion, url: http://x}]}",
        );
        let p = plan(&c, "kubernetes").unwrap();
        let weights: Vec<u32> = p
            .steps
            .iter()
            .filter_map(|s| s.routes.map(|r| r.canary))
            .collect();
        // 20, 40, then all on the canary while the primary rolls, then back.
        assert_eq!(weights, [20, 40, 100, 0], "{p:#?}");
        let metric_calls = p
            .steps
            .iter()
            .flat_map(|s| &s.calls)
            .filter(|c| c.as_str() == "metric request-success-rate")
            .count();
        assert_eq!(metric_calls, 2, "analysed at 20 and at 40: {p:#?}");
        assert!(
            p.steps.iter().any(|s| s
                .calls
                .iter()
                .any(|c| c == "confirm-promotion webhook gate")),
            "{p:#?}"
        );
        assert_eq!(p.steps.last().map(|s| s.phase), Some(Phase::Succeeded));
        // Two intervals of analysis after the first step at least.
        assert!(p.shortest >= Duration::from_secs(20), "{:?}", p.shortest);
        let text = format_plan(
            &c,
            &Settings::from_spec(&c.spec, "kubernetes").unwrap(),
            &p,
            true,
        )
        .unwrap();
        assert!(text.contains("kind: HTTPRoute"), "{text}");
        assert!(text.contains("name: web-canary"), "{text}");
        assert!(text.contains("Shortest possible duration"), "{text}");
    }
}
