//! One reconcile: observe (from watch caches), decide (the pure machine), act
//! (patches), then write the status if it changed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::machine::{
    self, Action, CheckResults, Decision, Observations, Readiness, Severity, Step,
};
use super::queue;
use super::status::status_patch;
use super::workload::{self, Workload, WorkloadKind, Workloads};
use crate::analysis::{self, AnalysisCtx};
use crate::crd::{
    ABORT_ANNOTATION, Canary, CanaryStatus, FINALIZER, MetricTemplate, PAUSED_ANNOTATION,
    PROMOTE_ANNOTATION, Phase, RETRY_ANNOTATION, Settings, WebhookType,
};
use crate::notify::{AlertEvent, Notifier};
use crate::router::{self, Router, RouterError, RoutingApis};
use crate::server::{
    CanaryLabels, ErrorLabels, MetricLabels, Metrics, OutcomeLabels, ThresholdLabels,
    WorkloadLabels,
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error(transparent)]
    Router(#[from] RouterError),
}

impl ReconcileError {
    fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "KubeApiError",
            ReconcileError::Workload(e) => e.reason(),
            ReconcileError::Router(e) => e.reason(),
        }
    }
}

/// Watch caches of everything the controller reads.
#[derive(Clone)]
pub struct Stores {
    pub canaries: Store<Canary>,
    pub deployments: Store<Deployment>,
    pub daemonsets: Store<DaemonSet>,
    pub configmaps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub templates: Store<MetricTemplate>,
    pub services: Store<Service>,
}

impl router::ServiceLookup for Store<Service> {
    fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.get(&ObjectRef::new(name).within(namespace))
            .map(|s| (*s).clone())
    }
}

pub struct Context {
    pub client: kube::Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub analysis: AnalysisCtx,
    pub notifier: Notifier,
    pub workloads: Workloads,
    pub routing: RoutingApis,
    pub default_provider: String,
    /// Set once every watch cache has its first full list.
    pub synced: Arc<std::sync::atomic::AtomicBool>,
    pub confirm: ConfirmSettings,
    /// Watch cache of the routing objects Serin generates, for the routers that take
    /// one: their step writes compare against it instead of a GET.
    pub owned_routes: Option<Arc<dyn router::apply::LiveObjects>>,
    /// The status last written per Canary, for reconciles that start from a cache
    /// that has not seen it yet.
    pub written: super::written::Written,
    /// `--max-concurrent-releases` (0: no limit) and the starts it has granted.
    pub max_releases: usize,
    pub admission: super::queue::Admission,
}

/// How route writes are confirmed on the data plane.
#[derive(Clone)]
pub struct ConfirmSettings {
    /// A write not confirmed within this is undone.
    pub timeout: Duration,
    /// Base URL of the Gateways' listeners, for probe requests.
    pub probe_url: Option<String>,
    pub http: reqwest::Client,
}

/// A probe must keep answering this long after a write: the data plane applies a
/// change within ~2-3 s (Traefik), and until then the previous route answers.
const CONFIRM_SETTLE: Duration = Duration::from_secs(4);
const CONFIRM_POLL: Duration = Duration::from_millis(250);

enum Confirmation {
    Confirmed,
    /// Nothing can confirm it (no route status, no probe address); the message says why.
    Unknown(String),
    Unconfirmed(String),
}

/// Waits until the data plane confirms the routing object just written: the route's
/// status (Accepted and ResolvedRefs at its generation) where the implementation
/// writes one, else a probe through the gateway that keeps answering for
/// `CONFIRM_SETTLE` without 404/502/503. A generation already confirmed is not waited on.
async fn confirm_routes(canary: &Canary, ctx: &Context, router: &dyn Router) -> Confirmation {
    let written = match router.written(canary).await {
        Ok(Some(w)) => w,
        Ok(None) => return Confirmation::Confirmed,
        Err(e) => return Confirmation::Unknown(e.to_string()),
    };
    if written.generation.is_some() && written.generation == written.confirmed_generation {
        return Confirmation::Confirmed;
    }
    let what = format!("{} {}", written.kind, written.name);
    let start = Instant::now();
    let mut ok_since: Option<Instant> = None;
    let mut last = String::from("no answer yet");
    loop {
        match router.verify(canary).await {
            Ok(router::RouteStatus::Accepted) => return Confirmation::Confirmed,
            Ok(router::RouteStatus::NotAccepted(m)) => {
                ok_since = None;
                last = format!("{what} not accepted: {m}");
            }
            Ok(router::RouteStatus::Unknown(m)) => {
                let (Some(base), Some(host)) = (&ctx.confirm.probe_url, &written.host) else {
                    return Confirmation::Unknown(m);
                };
                let url = format!("{}{}", base.trim_end_matches('/'), written.path);
                match ctx.confirm.http.get(&url).header("Host", host).send().await {
                    Ok(r) if !matches!(r.status().as_u16(), 404 | 502 | 503) => {
                        let since = *ok_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= CONFIRM_SETTLE {
                            return Confirmation::Confirmed;
                        }
                    }
                    Ok(r) => {
                        ok_since = None;
                        last = format!(
                            "a probe of {what} through the gateway ({url}, Host {host}) answered {}",
                            r.status()
                        );
                    }
                    Err(e) => {
                        ok_since = None;
                        last = format!("a probe of {what} through the gateway ({url}) failed: {e}");
                    }
                }
            }
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= ctx.confirm.timeout {
            return Confirmation::Unconfirmed(format!(
                "not confirmed within {}s: {last}",
                ctx.confirm.timeout.as_secs()
            ));
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

const FIELD_MANAGER: &str = "serin";
/// How soon a Canary whose input is broken is looked at again (a spec edit triggers
/// a reconcile at once through the watch anyway).
const BROKEN_RETRY: Duration = Duration::from_secs(60);

pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let start = Instant::now();
    let canary = match ctx.written.newer_status(&canary) {
        Some(status) => {
            ctx.metrics.stale_cache_reconciles.inc();
            debug!(canary = %canary.name_any(), "watch cache behind the last status write; deciding from the write");
            let mut newer = (*canary).clone();
            newer.status = Some(status);
            Arc::new(newer)
        }
        None => canary,
    };
    let result = reconcile_inner(&canary, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                reason: e.reason().to_string(),
            })
            .inc();
        // The user sees the failure where they look: the Ready condition and an Event.
        let mut message = e.to_string();
        if canary.metadata.deletion_timestamp.is_some()
            && canary.finalizers().iter().any(|f| f == FINALIZER)
        {
            // A delete that cannot restore the target must say how to get out of it.
            message.push_str(&format!(
                "; the Canary is being deleted and keeps the finalizer {FINALIZER} until the \
                 target is restored (remove the finalizer by hand to let it go without)"
            ));
        }
        let _ = report_not_ready(&canary, &ctx, e.reason(), &message).await;
    }
    result
}

pub fn error_policy(canary: Arc<Canary>, err: &ReconcileError, _ctx: Arc<Context>) -> Requeue {
    warn!(canary = %canary.name_any(), namespace = ?canary.namespace(), error = %err, "reconcile failed");
    Requeue::requeue(Duration::from_secs(10))
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn api(ctx: &Context, ns: &str) -> Api<Canary> {
    Api::namespaced(ctx.client.clone(), ns)
}

async fn reconcile_inner(canary: &Canary, ctx: &Context) -> Result<Requeue, ReconcileError> {
    // Before the caches are full, a missing target or primary may only be unlisted
    // yet; deciding on that would report errors or recreate what exists.
    if !ctx.synced.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Requeue::requeue(Duration::from_millis(500)));
    }
    let ns = canary.namespace_or_default();
    let name = canary.name_any();
    let deleting = canary.metadata.deletion_timestamp.is_some();
    let has_finalizer = canary.finalizers().iter().any(|f| f == FINALIZER);
    let wants_finalizer = canary.reverts_on_deletion();

    if !deleting && wants_finalizer && !has_finalizer {
        // Appended, not merged: a merge patch would replace the whole list and drop
        // other controllers' finalizers (now that every Canary gets one by default).
        let patch = workload::add_finalizer_patch(canary.metadata.finalizers.as_deref())?;
        api(ctx, &ns)
            .patch(&name, &patch_params(), &patch)
            .await
            .map_err(|source| ReconcileError::Kube {
                context: format!("adding finalizer to canary {ns}/{name}"),
                source,
            })?;
        // The patch triggers a new reconcile with the finalizer in place.
        return Ok(Requeue::await_change());
    }
    if deleting && !has_finalizer {
        return Ok(Requeue::await_change());
    }

    let settings = match Settings::from_spec(&canary.spec, &ctx.default_provider) {
        Ok(s) => s,
        Err(e) => {
            if deleting {
                remove_finalizer(canary, ctx).await?;
                return Ok(Requeue::await_change());
            }
            report_not_ready(canary, ctx, "InvalidSpec", &e.to_string()).await?;
            return Ok(Requeue::requeue(BROKEN_RETRY));
        }
    };
    if !deleting && let Some((reason, msg)) = invalid_reference(canary, ctx) {
        report_not_ready(canary, ctx, reason, &msg).await?;
        return Ok(Requeue::requeue(BROKEN_RETRY));
    }

    let target = find_workload(ctx, &canary.spec.target_ref.kind, &ns, canary.target_name());
    // A target on its way out (its namespace being deleted, say) is not one to hand
    // the traffic back to: waiting for it to become ready would only hold the delete.
    let target = target.filter(|t| !(deleting && t.metadata().deletion_timestamp.is_some()));
    let Some(target) = target else {
        if deleting {
            remove_finalizer(canary, ctx).await?;
            return Ok(Requeue::await_change());
        }
        let msg = format!(
            "{} {ns}/{} not found",
            canary.spec.target_ref.kind,
            canary.target_name()
        );
        report_not_ready(canary, ctx, "TargetNotFound", &msg).await?;
        return Ok(Requeue::requeue(BROKEN_RETRY));
    };

    if let Some(owner) =
        other_canary_for_target(canary, &ctx.stores.canaries, &ctx.default_provider)
    {
        if deleting {
            // The target and its traffic belong to the other Canary: nothing to restore.
            remove_finalizer(canary, ctx).await?;
            return Ok(Requeue::await_change());
        }
        let msg = format!(
            "{} {ns}/{} is already managed by Canary {owner}; one Canary per target",
            canary.spec.target_ref.kind,
            canary.target_name()
        );
        report_not_ready(canary, ctx, "DuplicateTarget", &msg).await?;
        return Ok(Requeue::requeue(BROKEN_RETRY));
    }

    // Restoring the target on deletion needs no metric template.
    if !deleting && let Some(missing) = missing_template(canary, &ctx.stores.templates) {
        report_not_ready(canary, ctx, "MetricTemplateNotFound", &missing).await?;
        return Ok(Requeue::requeue(BROKEN_RETRY));
    }

    if let Err(e) = workload::check_autoscaler_ref(canary) {
        report_not_ready(canary, ctx, e.reason(), &e.to_string()).await?;
        return Ok(Requeue::requeue(BROKEN_RETRY));
    }
    let inputs = workload::service_inputs(&target)?;
    let configs = config_snapshot(&ctx.stores, &target, &ns)?;
    let tracked = workload::tracked_configs(&target, &configs)?;
    let checksum = workload::revision_checksum(&target, &tracked)?;
    let primary = find_workload(
        ctx,
        &canary.spec.target_ref.kind,
        &ns,
        &canary.primary_name(),
    );

    let status = canary.status_or_default();
    let generation = canary.metadata.generation;
    let ns_services = [
        canary.apex_name(),
        canary.primary_service_name(),
        canary.canary_service_name(),
    ];
    // A new revision re-reconciles routing too (its container ports matter with
    // portDiscovery), but only when its release starts: see `Action::ScaleTargetUp`.
    let routing_stale = status.observed_generation != generation
        || matches!(status.phase, None | Some(Phase::Initializing))
        || ns_services.iter().any(|s| {
            ctx.stores
                .services
                .get(&ObjectRef::new(s).within(&ns))
                .is_none()
        });
    // Services come from the watch cache, except on a tick that (re)creates them:
    // the cache cannot hold them yet.
    let router = if routing_stale {
        router::router_with(
            settings.provider,
            ctx.client.clone(),
            &ctx.routing,
            None,
            ctx.owned_routes.clone(),
        )
    } else {
        let cache: Arc<dyn router::ServiceLookup> = Arc::new(ctx.stores.services.clone());
        router::router_with(
            settings.provider,
            ctx.client.clone(),
            &ctx.routing,
            Some(cache),
            ctx.owned_routes.clone(),
        )
    };
    // The routers point the apex at the primary's pods: before the primary is ready
    // that would take traffic away from a Service the user already had.
    let initializing = matches!(status.phase, None | Some(Phase::Initializing));
    let primary_readiness = primary
        .as_ref()
        .map(|p| to_readiness(workload::readiness(p, settings.primary_ready_threshold)));
    let primary_serving = primary_readiness == Some(Readiness::Ready);
    let routing_reconciled = routing_stale && !deleting && (!initializing || primary_serving);
    if routing_reconciled {
        router.reconcile(canary, &inputs).await?;
    }

    let primary_revision = primary
        .as_ref()
        .and_then(|p| p.template().ok())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(workload::REVISION_ANNOTATION))
        .cloned();
    let webhook_types: BTreeSet<WebhookType> = canary
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.webhooks.iter().flatten())
        .map(|w| w.kind())
        .collect();
    let mut obs = Observations {
        target_checksum: checksum.clone(),
        tracked_configs: tracked.checksums().clone(),
        canary: canary_readiness(&target, settings.canary_ready_threshold),
        target_scaled_up: !target.is_scaled_to_zero(),
        primary: primary_readiness,
        primary_revision,
        retry: canary.annotations().get(RETRY_ANNOTATION).cloned(),
        requests: machine::Requests {
            abort: canary.annotations().get(ABORT_ANNOTATION).cloned(),
            promote: canary.annotations().get(PROMOTE_ANNOTATION).cloned(),
            paused: canary.annotations().get(PAUSED_ANNOTATION).cloned(),
        },
        deleting,
        has_metrics: canary
            .spec
            .analysis
            .as_ref()
            .is_some_and(|a| a.metrics.as_ref().is_some_and(|m| !m.is_empty())),
        webhook_types,
        checks: CheckResults::default(),
        route_rejected: None,
        queued: None,
    };

    let now = Utc::now();
    let me = (ns.clone(), name.clone());
    let admitting = ctx.max_releases > 0 && machine::wants_to_start(&status, &obs);
    if admitting {
        let others: Vec<queue::Entry> = ctx
            .stores
            .canaries
            .state()
            .iter()
            .map(|c| {
                let key = (c.namespace_or_default(), c.name_any());
                queue::Entry::of(key, &ctx.written.status_of(c))
            })
            .collect();
        let since = queue::Entry::of(me.clone(), &status)
            .queued_since
            .unwrap_or(now);
        obs.queued = ctx.admission.admit(ctx.max_releases, &me, since, &others);
    }
    let mut decision = None;
    // Each round answers what the machine asked for; a gate's answer can lead it to
    // ask for one more, so allow a few rounds.
    for _ in 0..4 {
        match machine::step(&settings, &status, &obs, now) {
            Step::Decided(d) => {
                decision = Some(d);
                break;
            }
            Step::NeedChecks(plan) => {
                let phase = status.phase.unwrap_or(Phase::Initializing);
                for kind in plan.gates {
                    let results = analysis::run_webhooks(&ctx.analysis, canary, kind, phase).await;
                    obs.checks.gates.insert(kind, results);
                }
                if plan.metrics {
                    obs.checks.metrics =
                        Some(analysis::run_metric_checks(&ctx.analysis, canary, &settings).await);
                }
            }
        }
    }
    if admitting
        && obs.queued.is_none()
        && decision.as_ref().and_then(|d| d.status.phase) != Some(Phase::Progressing)
    {
        ctx.admission.release(&me);
    }
    let Some(mut decision) = decision else {
        warn!(canary = %name, namespace = %ns, "state machine did not settle");
        return Ok(Requeue::requeue(settings.interval));
    };

    act(
        canary,
        ctx,
        &decision,
        &*router,
        (!routing_reconciled).then_some(&inputs),
        &target,
        primary.as_ref(),
        &tracked,
        &configs,
        &settings,
    )
    .await?;

    decision.status.observed_generation = generation;
    if !deleting {
        machine::set_condition(
            &mut decision.status.conditions,
            machine::CONDITION_READY,
            true,
            "Reconciled",
            "The Canary and its objects are reconciled",
            now,
        );
    }
    // Confirmed only when the routes were just written: the result cannot change
    // otherwise, and each check reads the routing object.
    let routes_written = routing_reconciled
        || decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetRoutes(_)));
    if !deleting && routes_written {
        match confirm_routes(canary, ctx, &*router).await {
            Confirmation::Confirmed => {
                decision.status.router_message = None;
                router.mark_confirmed(canary).await?;
            }
            Confirmation::Unknown(m) => decision.status.router_message = Some(m),
            Confirmation::Unconfirmed(why) => {
                // Undo first: the last confirmed route serves, the unconfirmed one may not.
                let restored = router.restore_confirmed(canary).await?;
                let why = if restored {
                    format!("{why}; the last confirmed route was restored")
                } else {
                    format!("{why}; no confirmed route to restore")
                };
                warn!(canary = %name, namespace = %ns, "{why}");
                obs.route_rejected = Some(why.clone());
                if let Step::Decided(d) = machine::step(&settings, &decision.status, &obs, now) {
                    act(
                        canary,
                        ctx,
                        &d,
                        &*router,
                        Some(&inputs),
                        &target,
                        primary.as_ref(),
                        &tracked,
                        &configs,
                        &settings,
                    )
                    .await?;
                    let mut events = std::mem::take(&mut decision.events);
                    events.extend(d.events.clone());
                    decision = Decision { events, ..d };
                    decision.status.observed_generation = generation;
                }
                decision.status.router_message = Some(why);
            }
        }
    }
    write_status(canary, ctx, &status, &decision.status).await?;
    publish(canary, ctx, &decision).await;
    record_metrics(canary, ctx, &status, &decision.status, &settings);

    if deleting
        && (!settings.revert_on_deletion
            || matches!(decision.status.phase, Some(Phase::Terminated)))
    {
        remove_finalizer(canary, ctx).await?;
        return Ok(Requeue::await_change());
    }
    debug!(canary = %name, namespace = %ns, phase = ?decision.status.phase, weight = decision.status.canary_weight, "reconciled");
    Ok(Requeue::requeue(decision.requeue_after))
}

#[allow(clippy::too_many_arguments)]
async fn act(
    canary: &Canary,
    ctx: &Context,
    decision: &Decision,
    router: &dyn Router,
    // The routing inputs when routing was not reconciled earlier in this tick.
    routing: Option<&router::ServiceInputs>,
    target: &Workload,
    primary: Option<&Workload>,
    tracked: &workload::TrackedConfigs,
    configs: &workload::ConfigSnapshot,
    settings: &Settings,
) -> Result<(), ReconcileError> {
    for action in &decision.actions {
        debug!(canary = %canary.name_any(), ?action, "acting");
        match action {
            Action::EnsurePrimary => {
                ctx.workloads
                    .ensure_primary(canary, target, primary, tracked, configs)
                    .await?;
                ensure_autoscaler(canary, ctx).await?;
            }
            Action::ScaleTargetUp => {
                // A release starts: bring the routing objects up to date with the new
                // revision (ports) before its pods start.
                if let Some(inputs) = routing {
                    router.reconcile(canary, inputs).await?;
                }
                let hpa_min = user_hpa(canary, ctx)
                    .await?
                    .as_ref()
                    .and_then(workload::hpa_min_replicas);
                let replicas = workload::desired_target_replicas(primary, hpa_min);
                ctx.workloads.scale_target(canary, target, replicas).await?;
            }
            Action::ScaleTargetToZero => {
                // Refused (an error, so the tick is retried) while no primary serves.
                ctx.workloads
                    .scale_target_to_zero(canary, target, primary, settings.primary_ready_threshold)
                    .await?;
            }
            Action::SetRoutes(routes) => router.set_routes(canary, *routes).await?,
            Action::Promote => {
                if let Some(p) = primary {
                    ctx.workloads
                        .promote(canary, target, p, tracked, configs)
                        .await?;
                } else {
                    ctx.workloads
                        .ensure_primary(canary, target, None, tracked, configs)
                        .await?;
                }
                ensure_autoscaler(canary, ctx).await?;
            }
            Action::RunWebhooks(kind) => {
                let phase = decision.status.phase.unwrap_or(Phase::Succeeded);
                for r in analysis::run_webhooks(&ctx.analysis, canary, *kind, phase).await {
                    if r.verdict != crate::crd::Verdict::Pass {
                        warn!(canary = %canary.name_any(), webhook = %r.name, message = ?r.message, "{} webhook failed", kind.as_str());
                    }
                }
            }
            Action::RestoreTarget => {
                let hpa_min = user_hpa(canary, ctx)
                    .await?
                    .as_ref()
                    .and_then(workload::hpa_min_replicas);
                ctx.workloads
                    .revert_target(canary, target, primary, hpa_min)
                    .await?;
            }
            Action::Finalize => router.finalize(canary).await?,
        }
    }
    Ok(())
}

/// The ConfigMaps and Secrets the target references, from the watch caches.
fn config_snapshot(
    stores: &Stores,
    target: &Workload,
    ns: &str,
) -> Result<workload::ConfigSnapshot, ReconcileError> {
    let mut snap = workload::ConfigSnapshot::default();
    for r in workload::config_refs(target.template()?) {
        match r.kind {
            workload::ConfigKind::ConfigMap => {
                if let Some(cm) = stores.configmaps.get(&ObjectRef::new(&r.name).within(ns)) {
                    snap.insert_configmap((*cm).clone());
                }
            }
            workload::ConfigKind::Secret => {
                if let Some(s) = stores.secrets.get(&ObjectRef::new(&r.name).within(ns)) {
                    snap.insert_secret((*s).clone());
                }
            }
        }
    }
    Ok(snap)
}

/// The user's HPA named by `autoscalerRef`. Read only when an action needs it
/// (a release starting, a promotion), not every step, so it is not watched.
async fn user_hpa(
    canary: &Canary,
    ctx: &Context,
) -> Result<Option<kube::api::DynamicObject>, ReconcileError> {
    let Some(r) = workload::check_autoscaler_ref(canary)? else {
        return Ok(None);
    };
    get_hpa(ctx, &canary.namespace_or_default(), &r.name).await
}

async fn get_hpa(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<kube::api::DynamicObject>, ReconcileError> {
    let ar = ctx.workloads.hpa_version().api_resource();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    api.get_opt(name)
        .await
        .map_err(|source| ReconcileError::Kube {
            context: format!("reading HorizontalPodAutoscaler {ns}/{name}"),
            source,
        })
}

async fn ensure_autoscaler(canary: &Canary, ctx: &Context) -> Result<(), ReconcileError> {
    let Some(r) = workload::check_autoscaler_ref(canary)? else {
        return Ok(());
    };
    let ns = canary.namespace_or_default();
    let user = get_hpa(ctx, &ns, &r.name).await?;
    let primary = get_hpa(ctx, &ns, &workload::primary_hpa_name(r)).await?;
    ctx.workloads
        .ensure_autoscaler(canary, user.as_ref(), primary.as_ref())
        .await?;
    Ok(())
}

/// The target's readiness to take canary traffic. A target at zero replicas has no
/// pods, whatever its rollout status says: right after a release scales it up, the
/// watch cache can still hold the Deployment at 0 with a finished rollout of nothing,
/// which reads as ready, and traffic moved to pods that do not exist yet (seen in
/// the chaos test: weight 30 given 0.6 s after the scale-up, the route dropped by
/// Traefik for want of endpoints).
fn canary_readiness(target: &Workload, threshold: u32) -> Readiness {
    if target.is_scaled_to_zero() {
        return Readiness::NotReady(
            "the target is scaled to zero; waiting for it to scale up".into(),
        );
    }
    to_readiness(workload::readiness(target, threshold))
}

fn to_readiness(r: workload::Readiness) -> Readiness {
    match r {
        workload::Readiness::Ready => Readiness::Ready,
        workload::Readiness::NotReady(m) => Readiness::NotReady(m),
        workload::Readiness::Failed(m) => Readiness::Failed(m),
    }
}

fn find_workload(ctx: &Context, kind: &str, ns: &str, name: &str) -> Option<Workload> {
    match WorkloadKind::parse(kind).ok()? {
        WorkloadKind::Deployment => ctx
            .stores
            .deployments
            .get(&ObjectRef::new(name).within(ns))
            .map(|d| Workload::Deployment((*d).clone())),
        WorkloadKind::DaemonSet => ctx
            .stores
            .daemonsets
            .get(&ObjectRef::new(name).within(ns))
            .map(|d| Workload::DaemonSet((*d).clone())),
    }
}

/// The Canary that owns the target when another one claims it too: the oldest wins,
/// so that a second Canary cannot take over a running release. A Canary whose spec
/// does not validate can never run, so it claims nothing.
fn other_canary_for_target(
    canary: &Canary,
    store: &Store<Canary>,
    default_provider: &str,
) -> Option<String> {
    let key = |c: &Canary| {
        (
            c.metadata.creation_timestamp.clone().map(|t| t.0),
            c.name_any(),
        )
    };
    store
        .state()
        .into_iter()
        .filter(|c| {
            c.namespace() == canary.namespace()
                && c.name_any() != canary.name_any()
                && c.spec.target_ref.kind == canary.spec.target_ref.kind
                && c.spec.target_ref.name == canary.spec.target_ref.name
                && c.metadata.deletion_timestamp.is_none()
                && Settings::from_spec(&c.spec, default_provider).is_ok()
        })
        .filter(|c| key(c) < key(canary))
        .map(|c| c.name_any())
        .min()
}

/// The MetricTemplates and AlertProviders the Canary names, checked by the same
/// rules as `kubectl serin check`: a malformed one stops the release before it
/// starts instead of failing each of its checks or alerts. Missing ones are
/// reported later (`missing_template`), as before.
fn invalid_reference(canary: &Canary, ctx: &Context) -> Option<(&'static str, String)> {
    let ns = canary.namespace_or_default();
    let analysis = canary.spec.analysis.as_ref()?;
    for m in analysis.metrics.iter().flatten() {
        let Some(r) = &m.template_ref else { continue };
        let tns = r.namespace.clone().unwrap_or_else(|| ns.clone());
        let Some(t) = ctx
            .stores
            .templates
            .get(&ObjectRef::new(&r.name).within(&tns))
        else {
            continue;
        };
        let name = format!("{tns}/{}", r.name);
        if let Err(e) = crate::crd::validate::template_for_metric(m, &name, &t.spec) {
            return Some(("InvalidMetricTemplate", e.to_string()));
        }
    }
    for a in analysis.alerts.iter().flatten() {
        let pns = a
            .provider_ref
            .namespace
            .clone()
            .unwrap_or_else(|| ns.clone());
        let Some(p) = ctx.notifier.providers.get(&pns, &a.provider_ref.name) else {
            continue;
        };
        if let Err(e) = crate::crd::validate::alert_provider(&p.spec) {
            return Some((
                "InvalidAlertProvider",
                format!("AlertProvider {pns}/{}: {e}", a.provider_ref.name),
            ));
        }
    }
    None
}

fn missing_template(canary: &Canary, store: &Store<MetricTemplate>) -> Option<String> {
    let ns = canary.namespace_or_default();
    for m in canary
        .spec
        .analysis
        .iter()
        .flat_map(|a| a.metrics.iter().flatten())
    {
        if let Some(r) = &m.template_ref {
            let tns = r.namespace.clone().unwrap_or_else(|| ns.clone());
            if store.get(&ObjectRef::new(&r.name).within(&tns)).is_none() {
                return Some(format!(
                    "metric {}: MetricTemplate {tns}/{} not found",
                    m.name, r.name
                ));
            }
        }
    }
    None
}

async fn remove_finalizer(canary: &Canary, ctx: &Context) -> Result<(), ReconcileError> {
    let ns = canary.namespace_or_default();
    let name = canary.name_any();
    let kept: Vec<String> = canary
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": kept}});
    match api(ctx, &ns)
        .patch(&name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Kube {
            context: format!("removing finalizer from canary {ns}/{name}"),
            source,
        }),
    }
}

async fn write_status(
    canary: &Canary,
    ctx: &Context,
    old: &CanaryStatus,
    new: &CanaryStatus,
) -> Result<(), ReconcileError> {
    let Some(patch) = status_patch(canary.status.as_ref().map(|_| old), new) else {
        return Ok(());
    };
    let ns = canary.namespace_or_default();
    let name = canary.name_any();
    match api(ctx, &ns)
        .patch_status(&name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(returned) => {
            ctx.written.record(&returned);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.written.forget(canary);
            Ok(())
        }
        Err(source) => Err(ReconcileError::Kube {
            context: format!("writing status of canary {ns}/{name}"),
            source,
        }),
    }
}

/// Sets `Ready=False` with `reason` and records an Event, once per distinct message.
async fn report_not_ready(
    canary: &Canary,
    ctx: &Context,
    reason: &'static str,
    message: &str,
) -> Result<(), ReconcileError> {
    let old = canary.status_or_default();
    let mut new = old.clone();
    machine::set_condition(
        &mut new.conditions,
        machine::CONDITION_READY,
        false,
        reason,
        message,
        Utc::now(),
    );
    new.observed_generation = canary.metadata.generation;
    if new.conditions == old.conditions {
        return Ok(());
    }
    warn!(canary = %canary.name_any(), namespace = ?canary.namespace(), reason, message, "canary not ready");
    write_status(canary, ctx, &old, &new).await?;
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(truncate(message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &canary.object_ref(&())).await {
        warn!(error = %e, "cannot record event");
    }
    Ok(())
}

async fn publish(canary: &Canary, ctx: &Context, decision: &Decision) {
    for e in &decision.events {
        info!(canary = %canary.name_any(), namespace = ?canary.namespace(), reason = e.reason, "{}", e.message);
        let ev = KubeEvent {
            type_: if e.severity >= Severity::Warn {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_string(),
            note: Some(truncate(&e.message, 1000)),
            action: "Analysis".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &canary.object_ref(&())).await {
            warn!(error = %err, "cannot record event");
        }
        let phase = decision.status.phase.unwrap_or(Phase::Initializing);
        let event_type = if e.severity >= Severity::Warn {
            "Warning"
        } else {
            "Normal"
        };
        for d in analysis::send_event(&ctx.analysis, canary, phase, &e.message, event_type).await {
            if let Err(err) = d.result {
                warn!(canary = %canary.name_any(), webhook = %d.name, error = %err, "event webhook failed");
            }
        }
        if e.alert {
            let failed_check = decision
                .status
                .last_analysis
                .iter()
                .find(|c| c.verdict == crate::crd::Verdict::Fail)
                .filter(|c| !analysis::is_alert_muted(canary, c))
                .cloned();
            let alert = AlertEvent {
                severity: e.severity,
                phase,
                message: format!(
                    "{}.{}: {}",
                    canary.name_any(),
                    canary.namespace_or_default(),
                    e.message
                ),
                failed_check,
            };
            if let Err(err) = ctx.notifier.notify(canary, &alert).await {
                warn!(canary = %canary.name_any(), error = %err, "alert not delivered");
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn record_metrics(
    canary: &Canary,
    ctx: &Context,
    old: &CanaryStatus,
    new: &CanaryStatus,
    settings: &Settings,
) {
    let ns = canary.namespace_or_default();
    let labels = CanaryLabels {
        name: canary.name_any(),
        namespace: ns.clone(),
    };
    let m = &ctx.metrics;
    let code = match new.phase {
        Some(Phase::Succeeded | Phase::Initialized) => 1,
        Some(Phase::Failed) => 2,
        _ => 0,
    };
    m.canary_status.get_or_create(&labels).set(code);
    m.canary_weight
        .get_or_create(&WorkloadLabels {
            workload: canary.target_name().to_string(),
            namespace: ns.clone(),
        })
        .set(new.canary_weight as i64);
    m.canary_weight
        .get_or_create(&WorkloadLabels {
            workload: canary.primary_name(),
            namespace: ns.clone(),
        })
        .set(100 - new.canary_weight.min(100) as i64);
    for c in &new.last_analysis {
        if let Some(v) = c.value {
            m.metric_analysis
                .get_or_create(&MetricLabels {
                    name: canary.name_any(),
                    namespace: ns.clone(),
                    metric: c.name.clone(),
                })
                .set(v);
        }
        for (bound, value) in threshold_bounds(c.threshold.as_deref().unwrap_or("")) {
            m.metric_threshold
                .get_or_create(&ThresholdLabels {
                    name: canary.name_any(),
                    namespace: ns.clone(),
                    metric: c.name.clone(),
                    bound: bound.into(),
                })
                .set(value);
        }
    }
    if let Some(late) = step_lateness(old, new, settings.interval) {
        m.step_lateness.observe(late.as_secs_f64());
    }
    let strategy = match settings.strategy {
        crate::crd::Strategy::Canary { .. } => "canary",
        crate::crd::Strategy::AbTesting { .. } => "ab-testing",
        crate::crd::Strategy::BlueGreen { .. } => "blue-green",
    };
    let outcome = OutcomeLabels {
        name: canary.name_any(),
        namespace: ns,
        deployment_strategy: strategy.into(),
    };
    // The series exist at zero before the first release ends: `rate` and `increase`
    // cannot see the step of a series whose first sample already holds it, and the
    // first promotion of a Canary would chart as none.
    let _ = m.successes.get_or_create(&outcome);
    let _ = m.failures.get_or_create(&outcome);
    let _ = m.canary_duration.get_or_create(&labels);
    if new.phase != old.phase {
        let started = old
            .last_transition_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        match new.phase {
            Some(Phase::Succeeded) => {
                m.successes.get_or_create(&outcome).inc();
            }
            Some(Phase::Failed) => {
                m.failures.get_or_create(&outcome).inc();
            }
            _ => {}
        }
        if matches!(new.phase, Some(Phase::Succeeded | Phase::Failed))
            && let Some(t) = started
        {
            let secs = (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0;
            m.canary_duration
                .get_or_create(&labels)
                .observe(secs.max(0.0));
        }
    }
}

/// `(bound, value)` of a check's threshold text (`>= 99`, `<= 500`,
/// `>= 2 and <= 3`); a webhook's `2xx` has none.
fn threshold_bounds(text: &str) -> Vec<(&'static str, f64)> {
    text.split(" and ")
        .filter_map(|part| {
            let part = part.trim();
            if let Some(v) = part.strip_prefix(">=") {
                v.trim().parse().ok().map(|v| ("min", v))
            } else if let Some(v) = part.strip_prefix("<=") {
                v.trim().parse().ok().map(|v| ("max", v))
            } else {
                None
            }
        })
        .collect()
}

/// How late this tick's analysis step ran: its time minus the previous step's plus
/// the interval. Only for a step that followed another without a hold between them
/// (a hold is the release waiting on purpose, not the operator being late).
fn step_lateness(
    old: &CanaryStatus,
    new: &CanaryStatus,
    interval: std::time::Duration,
) -> Option<std::time::Duration> {
    let analysing = |p: Option<Phase>| {
        matches!(
            p,
            Some(Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting)
        )
    };
    if !analysing(old.phase) || !analysing(new.phase) || old.hold_reason.is_some() {
        return None;
    }
    let parse = |t: Option<&str>| {
        t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let (prev, this) = (
        parse(old.last_step_time.as_deref())?,
        parse(new.last_step_time.as_deref())?,
    );
    if this <= prev {
        return None;
    }
    let due = prev + chrono::Duration::from_std(interval).ok()?;
    Some((this - due).to_std().unwrap_or_default())
}

/// Maps a watched object to the Canaries that must look at it: those in its
/// namespace whose target (or its primary) it is.
pub fn canaries_for_workload(
    store: &Store<Canary>,
    ns: Option<String>,
    name: &str,
) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .into_iter()
        .filter(|c| c.namespace() == ns)
        .filter(|c| c.target_name() == name || c.primary_name() == name)
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

/// ConfigMaps and Secrets can be referenced by any Canary's target in their namespace.
pub fn canaries_in_namespace(store: &Store<Canary>, ns: Option<String>) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .into_iter()
        .filter(|c| c.namespace() == ns)
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_target_at_zero_is_never_ready_for_traffic() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        let mut d = workload::testutil::deployment("web");
        // What the cache holds just before it sees the scale-up: 0 wanted, 0 running,
        // the rollout of nothing finished.
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(0);
        }
        d.metadata.generation = Some(3);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(0),
            updated_replicas: Some(0),
            available_replicas: Some(0),
            ..Default::default()
        });
        let w = Workload::Deployment(d.clone());
        assert!(
            workload::readiness(&w, 100).is_ready(),
            "sanity: a finished rollout"
        );
        assert!(
            matches!(canary_readiness(&w, 100), Readiness::NotReady(m) if m.contains("scaled to zero"))
        );
        // Scaled up and available: ready.
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(2);
        }
        d.status = Some(DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        });
        assert_eq!(
            canary_readiness(&Workload::Deployment(d), 100),
            Readiness::Ready
        );
    }

    #[test]
    fn threshold_text_gives_its_bounds() {
        assert_eq!(threshold_bounds(">= 99"), vec![("min", 99.0)]);
        assert_eq!(threshold_bounds("<= 500"), vec![("max", 500.0)]);
        assert_eq!(
            threshold_bounds(">= 2 and <= 3.5"),
            vec![("min", 2.0), ("max", 3.5)]
        );
        assert!(threshold_bounds("2xx").is_empty());
        assert!(threshold_bounds("").is_empty());
    }

    fn at(phase: Phase, step: &str, hold: Option<&str>) -> CanaryStatus {
        CanaryStatus {
            phase: Some(phase),
            last_step_time: Some(step.into()),
            hold_reason: hold.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn lateness_is_the_step_time_past_its_due_time() {
        let i = Duration::from_secs(10);
        let old = at(Phase::Progressing, "2026-01-01T00:00:00Z", None);
        let new = at(Phase::Progressing, "2026-01-01T00:00:10.250Z", None);
        assert_eq!(
            step_lateness(&old, &new, i),
            Some(Duration::from_millis(250))
        );
        // Early (a retry after an error) counts as on time.
        let early = at(Phase::Progressing, "2026-01-01T00:00:09Z", None);
        assert_eq!(step_lateness(&old, &early, i), Some(Duration::ZERO));
        // The same step seen twice, a hold before it, or no release: nothing.
        assert_eq!(step_lateness(&old, &old, i), None);
        let held = at(
            Phase::Progressing,
            "2026-01-01T00:00:00Z",
            Some("analysis inconclusive: x"),
        );
        assert_eq!(step_lateness(&held, &new, i), None);
        let settled = at(Phase::Succeeded, "2026-01-01T00:00:00Z", None);
        assert_eq!(step_lateness(&settled, &new, i), None);
    }
}
