//! The progressive-delivery state machine: a pure function of
//! `(settings, status, observations, now)` returning the actions to take, the events
//! to record and the new status. No I/O happens here.
//!
//! Checks (gates, metrics) are I/O, so the machine asks for them: when it reaches a
//! point that needs a check whose result is not in the observations it returns
//! [`Step::NeedChecks`]; the caller runs those checks and calls [`step`] again with
//! the results. Only the checks the current state really needs are ever run.
//!
//! One transition per tick, as in Flagger: a tick that acts (moves traffic, scales,
//! promotes) returns; the next tick observes the effect before going further.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{
    CanaryCondition, CanaryStatus, CheckStatus, FINALIZER, Phase, Settings, Strategy, Verdict,
    WebhookType,
};
use crate::router::Routes;

/// How ready a workload's pods are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still rolling out or not enough pods available; the message says how far.
    NotReady(String),
    /// Will not become ready (e.g. the Deployment reports ProgressDeadlineExceeded).
    Failed(String),
}

/// What the observe step found, from watch caches and the checks run this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// Checksum of the target's pod template and tracked configs.
    pub target_checksum: String,
    pub tracked_configs: BTreeMap<String, String>,
    /// Readiness of the target's pods (the canary during analysis).
    pub canary: Readiness,
    /// Whether the target has replicas (spec), i.e. is not scaled to zero.
    pub target_scaled_up: bool,
    /// `None` when the primary workload does not exist.
    pub primary: Option<Readiness>,
    /// The revision checksum the primary was last promoted to (its annotation).
    pub primary_revision: Option<String>,
    /// Value of the `serin.dev/retry` annotation.
    pub retry: Option<String>,
    /// User requests through annotations (`kubectl serin abort|promote|pause`).
    pub requests: Requests,
    /// The Canary is being deleted.
    pub deleting: bool,
    /// Which webhook types the Canary has (gates of a type with no webhook pass).
    pub webhook_types: BTreeSet<WebhookType>,
    /// Whether the Canary has metric checks.
    pub has_metrics: bool,
    pub checks: CheckResults,
    /// A route write this tick the data plane did not confirm within the bound; the
    /// last confirmed route has been restored. The release cannot go on with routes
    /// that are not served.
    pub route_rejected: Option<String>,
    /// `--max-concurrent-releases`: `Some` when every release slot is taken and this
    /// Canary's new revision must wait its turn; `None` when it may start.
    pub queued: Option<Queued>,
}

/// A release waiting for a slot under `--max-concurrent-releases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// 1 for the next to start.
    pub position: usize,
    pub limit: usize,
}

/// Steering requests read from the Canary's annotations, so that a person or a CI
/// job can act on a release without a spec change a GitOps tool would revert.
/// `abort` and `promote` are one-shot: a value differing from the one last acted on
/// (in the status) is a new request. `paused` is a state: present means paused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requests {
    /// Value of `serin.dev/abort`.
    pub abort: Option<String>,
    /// Value of `serin.dev/promote`; a `force:` prefix skips the promotion gates.
    pub promote: Option<String>,
    /// Value of `serin.dev/paused` (when the pause was asked for).
    pub paused: Option<String>,
}

/// Prefix of a `serin.dev/promote` value that promotes past closed gates.
pub const PROMOTE_FORCE_PREFIX: &str = "force:";

/// Results of the checks run this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckResults {
    pub gates: BTreeMap<WebhookType, Vec<CheckStatus>>,
    pub metrics: Option<Vec<CheckStatus>>,
}

/// Checks the machine needs before it can decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckPlan {
    pub gates: Vec<WebhookType>,
    pub metrics: bool,
}

/// An effect on the cluster. The caller performs them in order and stops at the first
/// failure without writing the new status, so the tick is retried; each is idempotent.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the primary from the target if it does not exist (never overwrite it).
    EnsurePrimary,
    /// Scale the target (canary) up to its desired replicas.
    ScaleTargetUp,
    /// Scale the target to zero; only issued once traffic is off it.
    ScaleTargetToZero,
    SetRoutes(Routes),
    /// Copy the target's pod template and tracked configs to the primary.
    Promote,
    /// Fire-and-forget webhooks (post-rollout).
    RunWebhooks(WebhookType),
    /// On deletion: scale the target back up to the replicas the primary serves with
    /// (never below what it has), so it can take the traffic back.
    RestoreTarget,
    /// On deletion, once the target is ready: traffic back on the target's own pods
    /// (the apex selects them, routes send everything to the apex).
    Finalize,
}

fn new_revision(status: &CanaryStatus, obs: &Observations) -> bool {
    status.last_applied_spec.as_deref() != Some(obs.target_checksum.as_str())
}

fn retry_requested(status: &CanaryStatus, obs: &Observations) -> bool {
    // Waiting counts when the last release failed: a retry held by confirm-rollout
    // must keep waiting, not fall back to Failed and ask again every tick.
    let failed = match status.phase {
        Some(Phase::Failed) => true,
        Some(Phase::Waiting) => status.last_applied_spec != status.last_promoted_spec,
        _ => false,
    };
    failed && obs.retry.is_some() && obs.retry != status.last_retry
}

/// Whether this tick could start a release (a settled Canary with a new revision or
/// a retry), for the admission control of `--max-concurrent-releases`, which needs
/// the answer before the machine runs.
pub fn wants_to_start(status: &CanaryStatus, obs: &Observations) -> bool {
    matches!(
        status.phase,
        Some(Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting)
    ) && !obs.deleting
        && (new_revision(status, obs) || retry_requested(status, obs))
}

pub use crate::notify::Severity;

/// A Kubernetes Event on the Canary (and, with `alert`, a notification).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub severity: Severity,
    pub reason: &'static str,
    pub message: String,
    /// Whether alert providers hear of it too.
    pub alert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    pub status: CanaryStatus,
    pub requeue_after: Duration,
}

// One Step lives per tick; boxing the decision would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    NeedChecks(CheckPlan),
    Decided(Decision),
}

/// How often to look again while waiting on something a watch may not announce.
const POLL: Duration = Duration::from_secs(5);
/// How long routes stay on the primary before the target is scaled down: data planes
/// apply a route change within a second or two (Traefik: < 2 s), and requests still
/// routed to the canary must find its pods alive.
pub const DRAIN: Duration = Duration::from_secs(5);

/// How often a queued release looks for a free slot.
const QUEUE_POLL: Duration = Duration::from_secs(5);

/// Hold key of a release paused by `serin.dev/paused`.
pub const HOLD_PAUSED: &str = "paused";
/// Hold key of a new revision waiting for a slot under `--max-concurrent-releases`;
/// the observe step orders the queue by when each Canary's hold began.
pub const HOLD_QUEUED: &str = "release queue";

/// Hold keys of a promotion that takes the primary out of traffic while it rolls.
const HOLD_DRAINING: &str = "draining primary";
const DRAINING_DETAIL: &str =
    "all traffic is on the canary; the primary rolls out once the data plane has moved off it";
const HOLD_SETTLING: &str = "primary settling";
/// Hold key of a canary whose pods are ready, before its first traffic.
const HOLD_CANARY_SETTLING: &str = "canary settling";
const CANARY_SETTLING_DETAIL: &str =
    "the canary is ready; its first traffic comes once the data plane knows its endpoints";
/// Hold keys of a deletion: the target coming back up, then traffic draining to it.
const HOLD_RESTORING: &str = "restoring the target";
// Its own key after HOLD_RESTORING, so the Event that explains it is sent.
const HOLD_TARGET_NOT_READY: &str = "target not ready";
const REASON_TARGET_NOT_READY: &str = "TargetNotReady";
const HOLD_TO_TARGET: &str = "traffic moved to the target";
const TO_TARGET_DETAIL: &str =
    "traffic is on the target; the primary goes once the data plane has moved off it";

pub const CONDITION_PROMOTED: &str = "Promoted";
pub const CONDITION_READY: &str = "Ready";

/// The state machine. See the module docs.
pub fn step(
    settings: &Settings,
    status: &CanaryStatus,
    obs: &Observations,
    now: DateTime<Utc>,
) -> Step {
    let mut m = Machine {
        settings,
        obs,
        now,
        old: status,
        status: status.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: settings.interval,
        need: CheckPlan::default(),
    };
    m.run();
    if !m.need.gates.is_empty() || m.need.metrics {
        return Step::NeedChecks(m.need);
    }
    m.finish()
}

struct Machine<'a> {
    settings: &'a Settings,
    obs: &'a Observations,
    now: DateTime<Utc>,
    old: &'a CanaryStatus,
    status: CanaryStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Duration,
    need: CheckPlan,
}

/// The outcome of a gate: all webhooks of the type answered 2xx (or there are none).
enum Gate {
    Open,
    Closed(String),
    Pending,
}

impl Machine<'_> {
    fn run(&mut self) {
        let phase = self.status.phase;
        if self.obs.deleting {
            return self.deleting();
        }
        if self.settings.suspend {
            self.requeue = self.settings.interval;
            return;
        }
        // A retry value asks to re-run the revision that has failed when it is set. One
        // already there before (set at creation, kept in a GitOps manifest) is taken as
        // seen, or the next failure would be re-run without anyone asking. Waiting may
        // be a retry held by confirm-rollout, so it keeps the request pending.
        if !matches!(phase, Some(Phase::Failed | Phase::Waiting)) {
            self.status.last_retry.clone_from(&self.obs.retry);
        }
        // Abort and promote act on a release under way; a value set outside one (or
        // left in a manifest) is taken as seen, as retry is, so that it cannot act
        // on a later release nobody asked about.
        if !matches!(phase, Some(Phase::Progressing | Phase::WaitingPromotion)) {
            self.status.last_abort.clone_from(&self.obs.requests.abort);
            self.status
                .last_promote
                .clone_from(&self.obs.requests.promote);
        }
        if let Some(why) = self.obs.route_rejected.clone() {
            return self.route_rejected(&why);
        }
        match phase {
            None | Some(Phase::Initializing) => self.initialize(),
            Some(Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting) => {
                self.idle()
            }
            Some(Phase::Progressing | Phase::WaitingPromotion) => self.progressing(),
            Some(Phase::Promoting) => self.promoting(),
            Some(Phase::Finalising) => self.finalising(),
            Some(Phase::Terminating | Phase::Terminated) => {}
        }
    }

    fn finish(mut self) -> Step {
        let phase = self.status.phase;
        if phase != self.old.phase {
            self.status.last_transition_time = Some(self.now.to_rfc3339());
        }
        if let Some(phase) = phase {
            let promoted = matches!(phase, Phase::Initialized | Phase::Succeeded);
            let message = match phase {
                Phase::Succeeded => {
                    "Canary analysis completed successfully, promotion finished.".to_string()
                }
                Phase::Initialized => "Deployment initialization completed.".to_string(),
                Phase::Failed => {
                    "Canary analysis failed; traffic is back on the primary.".to_string()
                }
                other => match &self.status.hold_reason {
                    Some(h) => format!("{other}: {h}"),
                    None => format!("New revision detected, {}.", other.as_str().to_lowercase()),
                },
            };
            set_condition(
                &mut self.status.conditions,
                CONDITION_PROMOTED,
                promoted,
                phase.as_str(),
                &message,
                self.now,
            );
        }
        Step::Decided(Decision {
            actions: self.actions,
            events: self.events,
            status: self.status,
            requeue_after: self.requeue,
        })
    }

    fn event(&mut self, severity: Severity, reason: &'static str, message: String, alert: bool) {
        self.events.push(Event {
            severity,
            reason,
            message,
            alert,
        });
    }

    // ---- holds ----------------------------------------------------------------

    /// Holds the release for `key` (e.g. "primary not ready"), recording since when.
    /// Returns true when the hold has lasted longer than the progress deadline.
    fn hold(&mut self, key: &str, detail: &str) -> bool {
        self.hold_with(key, detail, false)
    }

    /// A hold that fails the release at the progress deadline: its reason says how
    /// long is left, so a user sees the clock before it runs out.
    fn hold_until_deadline(&mut self, key: &str, detail: &str) -> bool {
        self.hold_with(key, detail, true)
    }

    fn hold_with(&mut self, key: &str, detail: &str, deadline_bound: bool) -> bool {
        let same_kind = self
            .old
            .hold_reason
            .as_deref()
            .is_some_and(|r| r.split(':').next() == Some(key));
        if !same_kind {
            self.status.hold_since = Some(self.now.to_rfc3339());
        }
        let since = self
            .status
            .hold_since
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(self.now);
        let held = (self.now - since).to_std().unwrap_or_default();
        let deadline = self.settings.progress_deadline;
        // The clock goes first: a long detail (a no-data check quotes its query) is
        // what an Event's length limit cuts.
        let reason = if deadline_bound {
            let left = deadline.saturating_sub(held).as_secs();
            let tail = format!(
                "s left before the progress deadline ({}s); {detail}",
                deadline.as_secs()
            );
            // Every status write brings the Canary back through its watch: a countdown
            // rewritten each second keeps a holding release writing its status in a
            // loop (40 status patches a release at 100 canaries). The shown clock is
            // refreshed once it is a poll period off.
            let shown = self
                .old
                .hold_reason
                .as_deref()
                .and_then(|r| r.strip_prefix(key)?.strip_prefix(": ")?.strip_suffix(&tail))
                .and_then(|n| n.parse::<u64>().ok());
            match shown {
                Some(n) if same_kind && n.abs_diff(left) < POLL.as_secs() => {
                    format!("{key}: {n}{tail}")
                }
                _ => format!("{key}: {left}{tail}"),
            }
        } else {
            format!("{key}: {detail}")
        };
        if !same_kind {
            // kube's event recorder folds Events of one reason into a series that
            // keeps its first note: a hold that explains itself (no data, a canary
            // not ready) needs a reason of its own, or an earlier "primary not
            // ready" is all `kubectl get events` shows.
            let event_reason = match key {
                "analysis inconclusive" => "Inconclusive",
                "canary not ready" => "CanaryNotReady",
                HOLD_TARGET_NOT_READY => "TargetNotReady",
                HOLD_PAUSED => "Paused",
                HOLD_QUEUED => "Queued",
                _ => "Holding",
            };
            self.event(
                Severity::Info,
                event_reason,
                format!("Holding: {reason}"),
                false,
            );
        }
        self.status.hold_reason = Some(reason);
        self.requeue = self.requeue.min(POLL);
        held > deadline
    }

    fn clear_hold(&mut self) {
        self.status.hold_reason = None;
        self.status.hold_since = None;
    }

    // ---- gates ----------------------------------------------------------------

    fn gate(&mut self, kind: WebhookType) -> Gate {
        if !self.obs.webhook_types.contains(&kind) {
            return Gate::Open;
        }
        match self.obs.checks.gates.get(&kind) {
            None => {
                if !self.need.gates.contains(&kind) {
                    self.need.gates.push(kind);
                }
                Gate::Pending
            }
            Some(results) => {
                if let Some(failed) = results.iter().find(|c| c.verdict != Verdict::Pass) {
                    Gate::Closed(format!(
                        "{} webhook {} {}",
                        kind.as_str(),
                        failed.name,
                        failed.message.as_deref().unwrap_or("did not pass")
                    ))
                } else {
                    Gate::Open
                }
            }
        }
    }

    /// The rollback gate is inverted: a webhook answering 2xx asks for a rollback.
    fn rollback_requested(&mut self) -> Option<bool> {
        if !self.obs.webhook_types.contains(&WebhookType::Rollback) {
            return Some(false);
        }
        match self.obs.checks.gates.get(&WebhookType::Rollback) {
            None => {
                self.need.gates.push(WebhookType::Rollback);
                None
            }
            Some(results) => Some(results.iter().any(|c| c.verdict == Verdict::Pass)),
        }
    }

    // ---- phases ---------------------------------------------------------------

    /// Deletion with `revertOnDeletion` (the default): the target takes the traffic
    /// back before the finalizer goes, so the garbage collector removes the primary
    /// only once nothing routes to it. Each stage waits (requeues) rather than blocks:
    /// target scaled up and ready, traffic moved, `DRAIN` for the data plane to
    /// follow, then `Terminated`, which lets the caller drop the finalizer.
    fn deleting(&mut self) {
        if !self.settings.revert_on_deletion {
            return;
        }
        let phase = self.status.phase;
        if phase == Some(Phase::Terminated) {
            return;
        }
        // Before initialization the target is what serves: routes move to the primary
        // only once it is ready. With no serving primary to hand over from, waiting
        // would only hold up the delete.
        if matches!(phase, None | Some(Phase::Initializing))
            && self.obs.primary != Some(Readiness::Ready)
        {
            self.status.phase = Some(Phase::Terminated);
            self.clear_hold();
            self.event(
                Severity::Info,
                "Terminated",
                "Canary deleted before it initialized: the target still serves, nothing to restore"
                    .into(),
                false,
            );
            return;
        }
        self.status.phase = Some(Phase::Terminating);
        self.requeue = POLL;
        if self.old_hold_is(HOLD_TO_TARGET) {
            let drained = self.held();
            if drained >= DRAIN {
                self.status.phase = Some(Phase::Terminated);
                self.status.canary_weight = 0;
                self.clear_hold();
                self.event(
                    Severity::Info,
                    "Terminated",
                    "Canary deleted: the target serves again; the primary and the generated objects go with the Canary".into(),
                    false,
                );
            } else {
                self.requeue = DRAIN - drained;
            }
            return;
        }
        if !self.obs.target_scaled_up {
            self.actions.push(Action::RestoreTarget);
            self.hold(
                HOLD_RESTORING,
                "scaling the target back up; the primary keeps serving until it is ready",
            );
            return;
        }
        match self.obs.canary.clone() {
            Readiness::Ready => {
                // Mid-release the target may have fewer replicas than the primary
                // serves with; RestoreTarget only ever scales up.
                self.actions.push(Action::RestoreTarget);
                self.actions.push(Action::Finalize);
                self.status.hold_since = Some(self.now.to_rfc3339());
                self.status.hold_reason = Some(format!("{HOLD_TO_TARGET}: {TO_TARGET_DETAIL}"));
                self.requeue = DRAIN;
                let was_held =
                    self.status.conditions.iter().any(|c| {
                        c.r#type == CONDITION_READY && c.reason == REASON_TARGET_NOT_READY
                    });
                if was_held {
                    set_condition(
                        &mut self.status.conditions,
                        CONDITION_READY,
                        true,
                        "TargetReady",
                        "Canary deleted: the target is ready and takes the traffic back",
                        self.now,
                    );
                }
                self.event(
                    Severity::Info,
                    "Terminating",
                    format!("Canary deleted: {TO_TARGET_DETAIL}"),
                    false,
                );
            }
            Readiness::NotReady(why) | Readiness::Failed(why) => {
                // Traffic on a canary that is not ready would fail: while the target
                // comes up, the primary (if it can) serves everything.
                let was_splitting = matches!(
                    self.old.phase,
                    Some(
                        Phase::Progressing
                            | Phase::WaitingPromotion
                            | Phase::Promoting
                            | Phase::Finalising
                    )
                ) || self.old.canary_weight > 0;
                if was_splitting && self.obs.primary == Some(Readiness::Ready) {
                    self.actions.push(Action::SetRoutes(Routes::PRIMARY));
                    self.status.canary_weight = 0;
                }
                let detail = format!(
                    "{why}; the primary keeps serving and the finalizer {FINALIZER} stays \
                         until the target is ready (remove the finalizer by hand to let the \
                         Canary go without restoring the target)"
                );
                self.hold(HOLD_TARGET_NOT_READY, &detail);
                set_condition(
                    &mut self.status.conditions,
                    CONDITION_READY,
                    false,
                    REASON_TARGET_NOT_READY,
                    &format!("Canary deleted, target not ready: {detail}"),
                    self.now,
                );
            }
        }
    }

    fn old_hold_is(&self, key: &str) -> bool {
        self.old
            .hold_reason
            .as_deref()
            .is_some_and(|r| r.split(':').next() == Some(key))
    }

    fn initialize(&mut self) {
        match &self.obs.primary {
            None => {
                self.actions.push(Action::EnsurePrimary);
                self.status.phase = Some(Phase::Initializing);
                self.requeue = POLL;
                if self.old.phase.is_none() {
                    self.event(
                        Severity::Info,
                        "Initializing",
                        "Creating the primary from the target".into(),
                        false,
                    );
                }
            }
            Some(Readiness::Ready) => {
                self.actions.push(Action::SetRoutes(Routes::PRIMARY));
                self.status.phase = Some(Phase::Initialized);
                self.requeue = DRAIN;
                self.status.last_applied_spec = Some(self.obs.target_checksum.clone());
                self.status.last_promoted_spec = Some(self.obs.target_checksum.clone());
                self.status.tracked_configs = self.tracked();
                self.status.canary_weight = 0;
                self.clear_hold();
                self.event(
                    Severity::Info,
                    "Initialized",
                    "Initialization done: the primary serves; the target is scaled down once traffic has drained".into(),
                    true,
                );
            }
            Some(Readiness::NotReady(why) | Readiness::Failed(why)) => {
                let why = why.clone();
                self.status.phase = Some(Phase::Initializing);
                // The target keeps serving until the primary is ready, so there is no
                // rollback to do: only keep waiting, visibly.
                self.hold("primary not ready", &why);
            }
        }
    }

    fn tracked(&self) -> Option<BTreeMap<String, String>> {
        Some(self.obs.tracked_configs.clone()).filter(|t| !t.is_empty())
    }

    fn new_revision(&self) -> bool {
        new_revision(&self.status, self.obs)
    }

    fn retry_requested(&self) -> bool {
        retry_requested(&self.status, self.obs)
    }

    fn abort_requested(&self) -> bool {
        let r = &self.obs.requests.abort;
        r.is_some() && *r != self.status.last_abort
    }

    /// A pending promote request, and whether it is forced.
    fn promote_requested(&self) -> Option<bool> {
        let r = self.obs.requests.promote.as_deref()?;
        if Some(r) == self.status.last_promote.as_deref() {
            return None;
        }
        Some(r.starts_with(PROMOTE_FORCE_PREFIX))
    }

    fn was_paused(&self) -> bool {
        self.old
            .hold_reason
            .as_deref()
            .is_some_and(|r| r.split(':').next() == Some(HOLD_PAUSED))
    }

    fn idle(&mut self) {
        let retry = self.retry_requested();
        let pending = self.new_revision() || retry;
        if self.obs.target_scaled_up {
            self.scale_down_after_drain();
            if pending {
                // A release starts from fresh target pods: running ones keep the
                // configuration they started with, so a ConfigMap-only change would
                // not reach them.
                self.requeue = self.requeue.min(POLL);
                return;
            }
        }
        if pending && let Some(since) = self.obs.requests.paused.clone() {
            // A paused Canary starts no release either: the new revision waits.
            self.hold(
                HOLD_PAUSED,
                &format!("asked at {since}; the new revision waits for `resume`"),
            );
            self.requeue = self.settings.interval;
            return;
        }
        if pending && let Some(q) = self.obs.queued {
            // Not bound by the progress deadline: the wait is for other releases, not
            // for this one's pods or data.
            self.hold(
                HOLD_QUEUED,
                &format!(
                    "position {} for one of {} release slots (--max-concurrent-releases)",
                    q.position, q.limit
                ),
            );
            self.status.phase = Some(Phase::Waiting);
            self.requeue = self.requeue.min(QUEUE_POLL);
            return;
        }
        if !pending && self.was_paused() {
            // The revision that waited for `resume` was withdrawn meanwhile.
            self.clear_hold();
        }
        if !pending {
            if self.status.phase == Some(Phase::Waiting) {
                // The revision we were waiting to start was reverted by the user.
                self.status.phase = Some(self.old_settled_phase());
                self.clear_hold();
            }
            return;
        }
        match self.gate(WebhookType::ConfirmRollout) {
            Gate::Pending => {}
            Gate::Closed(why) => {
                self.status.phase = Some(Phase::Waiting);
                if self.old.phase != Some(Phase::Waiting) {
                    self.event(Severity::Info, "Waiting", format!("Halted: {why}"), true);
                }
                self.status.hold_reason = Some(format!("confirm-rollout: {why}"));
            }
            Gate::Open => {
                if retry {
                    self.status.last_retry = self.obs.retry.clone();
                }
                self.start_release(if retry {
                    "Retry requested: restarting analysis"
                } else {
                    "New revision detected: scaling up the target"
                });
            }
        }
    }

    /// In a settled phase the target serves no traffic: once the routes have been on
    /// the primary for `DRAIN`, scale it to zero.
    fn scale_down_after_drain(&mut self) {
        if !self.obs.target_scaled_up {
            return;
        }
        let settled = self.elapsed_since(self.status.last_transition_time.as_deref());
        if settled >= DRAIN {
            self.actions.push(Action::ScaleTargetToZero);
        } else {
            self.requeue = self.requeue.min(DRAIN - settled);
        }
    }

    /// The settled phase to return to when a waiting revision is withdrawn.
    fn old_settled_phase(&self) -> Phase {
        if self.status.last_promoted_spec == self.status.last_applied_spec {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    }

    fn start_release(&mut self, message: &str) {
        self.status.phase = Some(Phase::Progressing);
        self.status.last_applied_spec = Some(self.obs.target_checksum.clone());
        self.status.tracked_configs = self.tracked();
        self.status.canary_weight = 0;
        self.status.iterations = 0;
        self.status.failed_checks = 0;
        self.status.last_step_time = None;
        self.status.traffic_since = None;
        self.status.last_analysis.clear();
        self.clear_hold();
        self.actions.push(Action::ScaleTargetUp);
        self.requeue = POLL;
        self.event(Severity::Info, "Progressing", message.to_string(), true);
    }

    fn progressing(&mut self) {
        if self.new_revision() {
            // A new revision mid-analysis: the traffic moves back to the primary and
            // the analysis starts over with the new pods.
            self.actions.push(Action::SetRoutes(Routes::PRIMARY));
            self.start_release("New revision detected during analysis: restarting");
            return;
        }
        if self.abort_requested() {
            self.status.last_abort.clone_from(&self.obs.requests.abort);
            return self.rollback("Rolling back: aborted by the user (serin.dev/abort)");
        }
        if self.was_paused() && self.obs.requests.paused.is_none() {
            self.event(
                Severity::Info,
                "Resumed",
                "Resumed: the analysis continues".into(),
                false,
            );
            self.clear_hold();
        }
        match self.rollback_requested() {
            None => return,
            Some(true) => return self.rollback("Rolling back: a rollback webhook asked for it"),
            Some(false) => {}
        }
        match &self.obs.canary {
            Readiness::Failed(why) => {
                let why = why.clone();
                return self.rollback(&format!(
                    "Rolling back: canary failed to become ready: {why}"
                ));
            }
            Readiness::NotReady(why) => {
                let why = why.clone();
                if self.hold_until_deadline("canary not ready", &why) {
                    return self.rollback(&format!(
                        "Rolling back: canary not ready within {}s: {why}",
                        self.settings.progress_deadline.as_secs()
                    ));
                }
                return;
            }
            Readiness::Ready => {}
        }
        match &self.obs.primary {
            Some(Readiness::Ready) => {}
            Some(Readiness::NotReady(why) | Readiness::Failed(why)) => {
                let why = why.clone();
                self.hold("primary not ready", &why);
                return;
            }
            None => {
                self.actions.push(Action::EnsurePrimary);
                self.hold("primary missing", "recreating the primary");
                return;
            }
        }
        if self.settings.skip_analysis {
            self.clear_hold();
            return self.promote("Analysis skipped (skipAnalysis): promoting");
        }
        if let Some(force) = self.promote_requested() {
            // The remaining steps and their analysis are skipped; the promotion gate
            // still decides unless forced.
            self.clear_hold();
            if force {
                return self.promote(
                    "Promotion forced by the user (serin.dev/promote): promoting past the gates",
                );
            }
            return self.confirm_promotion();
        }
        if let Some(since) = self.obs.requests.paused.clone() {
            // The weight stays where it is and no analysis runs; this hold is not
            // bound by the progress deadline, a person asked for it.
            self.hold(
                HOLD_PAUSED,
                &format!("asked at {since}; `resume` continues"),
            );
            self.requeue = self.settings.interval;
            return;
        }
        if self.status.failed_checks >= self.settings.threshold {
            return self.rollback(&format!(
                "Rolling back: failed checks threshold reached {}",
                self.status.failed_checks
            ));
        }
        if self
            .status
            .hold_reason
            .as_deref()
            .is_some_and(|h| h.starts_with("canary not ready") || h.starts_with("primary"))
        {
            self.clear_hold();
        }
        let first = self.status.canary_weight == 0 && self.status.iterations == 0;
        // Only before the run's first step: a failed pre-rollout gate sets the step
        // clock, and its retries need no second settling.
        // Blue/green sends users nothing before the promotion, which comes iterations
        // later: only the strategies whose first step is real traffic settle.
        let first_traffic = !matches!(self.settings.strategy, Strategy::BlueGreen { .. });
        if first && first_traffic && self.status.last_step_time.is_none() && self.canary_settling()
        {
            return;
        }
        if let Some(wait) = self.until_due() {
            self.requeue = wait;
            return;
        }
        if first {
            match self.gate(WebhookType::PreRollout) {
                Gate::Pending => return,
                Gate::Closed(why) => {
                    return self.failed_check(&format!("Pre-rollout check failed: {why}"));
                }
                Gate::Open => {}
            }
        } else if self.status.phase != Some(Phase::WaitingPromotion) || self.obs.has_metrics {
            match self.analyse() {
                None => return,
                Some(Verdict::Fail) => return,
                Some(Verdict::Inconclusive) => return,
                Some(Verdict::Pass) => {}
            }
        }
        self.clear_hold();
        if first && self.status.traffic_since.is_none() {
            self.status.traffic_since = Some(self.now.to_rfc3339());
        }
        self.advance();
    }

    /// Whether the release still waits for the data plane to learn the canary's
    /// endpoints. Its pods turn ready before the gateway knows them (Traefik has taken
    /// over 3 s on a loaded machine), and a weight step in between sends the canary's
    /// share to a backend with no endpoints: 503s. Silent (no Event): it is part of
    /// every release, like the promotion's settling.
    fn canary_settling(&mut self) -> bool {
        if self.old_hold_is(HOLD_CANARY_SETTLING) {
            let held = self.held();
            if held >= DRAIN {
                self.clear_hold();
                return false;
            }
            self.requeue = self.requeue.min(DRAIN - held);
            return true;
        }
        self.status.hold_since = Some(self.now.to_rfc3339());
        self.status.hold_reason = Some(format!("{HOLD_CANARY_SETTLING}: {CANARY_SETTLING_DETAIL}"));
        self.requeue = self.requeue.min(DRAIN);
        true
    }

    /// Time left before the next analysis step, or `None` when it is due.
    fn until_due(&self) -> Option<Duration> {
        let last = self.status.last_step_time.as_deref().and_then(parse_time)?;
        let elapsed = (self.now - last).to_std().unwrap_or_default();
        (elapsed < self.settings.interval).then(|| self.settings.interval - elapsed)
    }

    /// Runs the rollout webhooks and metric checks; returns the combined verdict once
    /// they are in.
    fn analyse(&mut self) -> Option<Verdict> {
        let webhooks = match self.gate(WebhookType::Rollout) {
            Gate::Pending => None,
            Gate::Open | Gate::Closed(_) => Some(
                self.obs
                    .checks
                    .gates
                    .get(&WebhookType::Rollout)
                    .cloned()
                    .unwrap_or_default(),
            ),
        };
        let metrics = if self.obs.has_metrics {
            match &self.obs.checks.metrics {
                Some(m) => Some(m.clone()),
                None => {
                    self.need.metrics = true;
                    None
                }
            }
        } else {
            Some(Vec::new())
        };
        let (webhooks, metrics) = (webhooks?, metrics?);
        let results: Vec<CheckStatus> = webhooks.into_iter().chain(metrics).collect();
        self.status.last_analysis = results.clone();
        self.status.last_step_time = Some(self.now.to_rfc3339());
        self.requeue = self.settings.interval;

        let failed: Vec<&CheckStatus> = results
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect();
        if !failed.is_empty() {
            let summary = failed
                .iter()
                .map(|c| describe(c))
                .collect::<Vec<_>>()
                .join("; ");
            self.failed_check(&format!("Halt advancement: {summary}"));
            return Some(Verdict::Fail);
        }
        if let Some(c) = results.iter().find(|c| c.verdict == Verdict::Inconclusive) {
            let detail = describe(c);
            if self.hold_until_deadline("analysis inconclusive", &detail) {
                self.rollback(&format!(
                    "Rolling back: no conclusive analysis within {}s: {detail}",
                    self.settings.progress_deadline.as_secs()
                ));
            }
            // Inconclusive steps are re-checked at the interval, not the poll period.
            self.requeue = self.settings.interval;
            return Some(Verdict::Inconclusive);
        }
        Some(Verdict::Pass)
    }

    fn failed_check(&mut self, message: &str) {
        self.status.failed_checks += 1;
        self.status.last_step_time = Some(self.now.to_rfc3339());
        self.requeue = self.settings.interval;
        self.clear_hold();
        self.event(Severity::Warn, "FailedCheck", message.to_string(), true);
        if self.status.failed_checks >= self.settings.threshold {
            let why = format!(
                "Rolling back: failed checks threshold reached {} ({message})",
                self.status.failed_checks
            );
            self.rollback(&why);
        }
    }

    fn advance(&mut self) {
        self.status.last_step_time = Some(self.now.to_rfc3339());
        self.requeue = self.settings.interval;
        match self.settings.strategy.clone() {
            Strategy::Canary {
                weights,
                mirror,
                mirror_weight,
                ..
            } => {
                let current = self.status.canary_weight;
                let max = weights.last().copied().unwrap_or(100);
                if current < max {
                    match self.gate(WebhookType::ConfirmTrafficIncrease) {
                        Gate::Pending => {}
                        Gate::Closed(why) => {
                            self.status.hold_reason =
                                Some(format!("confirm-traffic-increase: {why}"));
                        }
                        Gate::Open => {
                            let next = weights
                                .iter()
                                .copied()
                                .find(|w| *w > current)
                                .unwrap_or(max);
                            let mut routes = Routes::weighted(next);
                            if mirror && mirror_weight.is_some() {
                                routes.mirror = true;
                                routes.mirror_weight = mirror_weight;
                            }
                            self.actions.push(Action::SetRoutes(routes));
                            self.status.canary_weight = next;
                            self.event(
                                Severity::Info,
                                "Advance",
                                format!("Advance canary weight {next}"),
                                false,
                            );
                        }
                    }
                } else {
                    self.confirm_promotion();
                }
            }
            Strategy::AbTesting { iterations } | Strategy::BlueGreen { iterations, .. } => {
                if self.status.iterations < iterations {
                    if self.status.iterations == 0 {
                        self.actions.push(Action::SetRoutes(self.analysis_routes()));
                    }
                    self.status.iterations += 1;
                    self.event(
                        Severity::Info,
                        "Advance",
                        format!("Advance iteration {}/{iterations}", self.status.iterations),
                        false,
                    );
                } else {
                    self.confirm_promotion();
                }
            }
        }
    }

    /// Routes during A/B and blue/green analysis.
    fn analysis_routes(&self) -> Routes {
        match self.settings.strategy {
            // Matched requests go to the canary; routers keep the default route on
            // the primary.
            Strategy::AbTesting { .. } => Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            },
            Strategy::BlueGreen { mirror, .. } => Routes {
                mirror,
                ..Routes::PRIMARY
            },
            Strategy::Canary { .. } => Routes::PRIMARY,
        }
    }

    fn confirm_promotion(&mut self) {
        match self.gate(WebhookType::ConfirmPromotion) {
            Gate::Pending => {}
            Gate::Closed(why) => {
                if self.status.phase != Some(Phase::WaitingPromotion) {
                    self.event(
                        Severity::Info,
                        "WaitingPromotion",
                        format!("Halted: {why}"),
                        true,
                    );
                }
                self.status.phase = Some(Phase::WaitingPromotion);
                self.status.hold_reason = Some(format!("confirm-promotion: {why}"));
            }
            Gate::Open => self.promote("Analysis passed: promoting the canary"),
        }
    }

    /// Whether the primary is taken out of traffic before it rolls out. Its old pods
    /// are deleted as the new ones become ready, and a data plane that learns of
    /// that a moment late sends requests to pods that are gone; with all traffic on
    /// the (ready, analysed) canary meanwhile, the primary's rollout is invisible.
    /// A/B keeps the unmatched traffic on the primary (no router can move "all" of
    /// it by a match), and a stepped promotion keeps Flagger's order, where the
    /// primary rolls first and then takes traffic back step by step.
    fn drains_primary(&self) -> bool {
        match self.settings.strategy {
            Strategy::BlueGreen { .. } => true,
            Strategy::Canary {
                step_weight_promotion,
                ..
            } => step_weight_promotion.is_none(),
            Strategy::AbTesting { .. } => false,
        }
    }

    /// How long the current hold has lasted.
    fn held(&self) -> Duration {
        self.elapsed_since(self.status.hold_since.as_deref())
    }

    /// Time from an RFC 3339 stamp to now; none (or unreadable) counts as now.
    fn elapsed_since(&self, stamp: Option<&str>) -> Duration {
        let since = stamp.and_then(parse_time).unwrap_or(self.now);
        (self.now - since).to_std().unwrap_or_default()
    }

    fn promote(&mut self, message: &str) {
        self.status
            .last_promote
            .clone_from(&self.obs.requests.promote);
        self.status.phase = Some(Phase::Promoting);
        self.status.last_step_time = Some(self.now.to_rfc3339());
        self.clear_hold();
        self.requeue = POLL;
        self.event(Severity::Info, "Promoting", message.to_string(), true);
        if self.drains_primary() {
            // All traffic to the canary first; the primary is patched once the data
            // plane has moved off it (see `promoting`).
            self.actions.push(Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            }));
            self.status.canary_weight = 100;
            self.hold(HOLD_DRAINING, DRAINING_DETAIL);
            self.requeue = DRAIN;
        } else {
            self.actions.push(Action::Promote);
        }
    }

    fn promoting(&mut self) {
        let promoted =
            self.obs.primary_revision.as_deref() == self.status.last_applied_spec.as_deref();
        let drains = self.drains_primary();
        if drains && !promoted {
            // Keep the canary serving everything on every tick (idempotent), also
            // after a restart that lost the tick which wrote it.
            self.actions.push(Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            }));
            self.status.canary_weight = 100;
        }
        match (&self.obs.primary, promoted) {
            (Some(Readiness::Ready), true) => {}
            (None, _) => {
                self.actions.push(Action::EnsurePrimary);
                self.hold("primary missing", "recreating the primary");
                return;
            }
            (_, false) => {
                if drains {
                    let draining = self
                        .old
                        .hold_reason
                        .as_deref()
                        .is_none_or(|r| r.starts_with(HOLD_DRAINING));
                    if draining {
                        self.hold(HOLD_DRAINING, DRAINING_DETAIL);
                        let held = self.held();
                        if held < DRAIN {
                            self.requeue = DRAIN - held;
                            return;
                        }
                    }
                }
                // The promotion patch has not reached the primary yet (or failed):
                // issue it again, it is idempotent.
                self.actions.push(Action::Promote);
                self.hold("promoting", "primary not yet at the new revision");
                return;
            }
            (Some(Readiness::NotReady(why) | Readiness::Failed(why)), true) => {
                let why = why.clone();
                self.hold("primary rolling out", &why);
                return;
            }
        }
        if drains {
            // The primary is ready at the new revision; its endpoints reach the data
            // plane a moment after its pods turn ready. Traffic goes back after that.
            self.hold(
                HOLD_SETTLING,
                "the primary is ready; traffic returns to it once the data plane knows its endpoints",
            );
            let held = self.held();
            if held < DRAIN {
                self.requeue = DRAIN - held;
                return;
            }
        }
        self.clear_hold();
        if let Strategy::Canary {
            step_weight_promotion: Some(step),
            ..
        } = self.settings.strategy
            && self.status.canary_weight > 0
        {
            // Primary runs the new version: shift traffic back to it in steps.
            if let Some(wait) = self.until_due() {
                self.requeue = wait;
                return;
            }
            let next = self.status.canary_weight.saturating_sub(step);
            self.status.canary_weight = next;
            self.status.last_step_time = Some(self.now.to_rfc3339());
            self.actions.push(Action::SetRoutes(Routes::weighted(next)));
            self.requeue = self.settings.interval;
            if next > 0 {
                return;
            }
        } else {
            self.actions.push(Action::SetRoutes(Routes::PRIMARY));
        }
        self.status.canary_weight = 0;
        self.status.phase = Some(Phase::Finalising);
        self.requeue = POLL;
    }

    fn finalising(&mut self) {
        // The target is scaled down once the routes have drained (see `idle`).
        self.actions.push(Action::SetRoutes(Routes::PRIMARY));
        if self.obs.webhook_types.contains(&WebhookType::PostRollout) {
            self.actions
                .push(Action::RunWebhooks(WebhookType::PostRollout));
        }
        self.status.phase = Some(Phase::Succeeded);
        self.status.canary_weight = 0;
        self.status.last_promoted_spec = self.status.last_applied_spec.clone();
        self.clear_hold();
        self.requeue = DRAIN;
        self.event(
            Severity::Info,
            "Succeeded",
            "Promotion completed: the primary runs the new revision".into(),
            true,
        );
    }

    /// The data plane did not confirm a route write. During analysis that fails the
    /// release (its routes are what the analysis measures); otherwise the phase stays
    /// and the next tick writes again, while users and alerts hear why.
    fn route_rejected(&mut self, why: &str) {
        match self.status.phase {
            Some(Phase::Progressing | Phase::WaitingPromotion) => self.rollback(&format!(
                "Rolling back: the route was not confirmed by the data plane: {why}"
            )),
            _ => {
                self.requeue = self.requeue.min(POLL);
                self.event(
                    Severity::Error,
                    "RouteNotConfirmed",
                    format!("The route was not confirmed by the data plane: {why}"),
                    true,
                );
            }
        }
    }

    fn rollback(&mut self, message: &str) {
        // Routes only: the target is scaled down once traffic has drained (see `idle`).
        self.actions.push(Action::SetRoutes(Routes::PRIMARY));
        if self.obs.webhook_types.contains(&WebhookType::PostRollout) {
            self.actions
                .push(Action::RunWebhooks(WebhookType::PostRollout));
        }
        self.status.phase = Some(Phase::Failed);
        self.status.canary_weight = 0;
        self.status.iterations = 0;
        self.clear_hold();
        self.requeue = DRAIN;
        self.event(Severity::Error, "Failed", message.to_string(), true);
    }
}

/// One readable line for a check: `request-success-rate 80.5 (want >= 99): ...`.
pub fn describe(c: &CheckStatus) -> String {
    let mut s = c.name.clone();
    if let Some(v) = c.value {
        s.push_str(&format!(" {}", format_value(v)));
    }
    if let Some(t) = &c.threshold {
        s.push_str(&format!(" (want {t})"));
    }
    if let Some(m) = &c.message {
        s.push_str(&format!(": {m}"));
    }
    s
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
pub fn set_condition(
    conditions: &mut Vec<CanaryCondition>,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let status = if ok { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.r#type == kind) {
        if c.status == status && c.reason == reason && c.message.as_deref() == Some(message) {
            return;
        }
        if c.status != status {
            c.last_transition_time = Some(now.to_rfc3339());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = Some(message.into());
        c.last_update_time = Some(now.to_rfc3339());
        return;
    }
    conditions.push(CanaryCondition {
        r#type: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: Some(message.into()),
        last_update_time: Some(now.to_rfc3339()),
        last_transition_time: Some(now.to_rfc3339()),
    });
}

#[cfg(test)]
mod tests;
