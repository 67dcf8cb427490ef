//! Table-driven tests of every transition, and whole releases run against a small
//! simulated world that applies the machine's actions.

use std::collections::BTreeSet;

use chrono::TimeZone;

use super::*;
use crate::crd::{CheckKind, Provider};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn settings(strategy: Strategy) -> Settings {
    Settings {
        provider: Provider::GatewayApiV1,
        strategy,
        interval: Duration::from_secs(10),
        threshold: 2,
        progress_deadline: Duration::from_secs(60),
        primary_ready_threshold: 100,
        canary_ready_threshold: 100,
        skip_analysis: false,
        suspend: false,
        revert_on_deletion: false,
    }
}

fn canary_strategy() -> Strategy {
    Strategy::Canary {
        weights: vec![10, 20, 30],
        mirror: false,
        mirror_weight: None,
        step_weight_promotion: None,
    }
}

fn obs(checksum: &str) -> Observations {
    Observations {
        target_checksum: checksum.into(),
        tracked_configs: BTreeMap::new(),
        canary: Readiness::Ready,
        target_scaled_up: false,
        primary: Some(Readiness::Ready),
        primary_revision: Some("v1".into()),
        retry: None,
        requests: Requests::default(),
        deleting: false,
        webhook_types: BTreeSet::new(),
        has_metrics: true,
        checks: CheckResults::default(),
        route_rejected: None,
        queued: None,
    }
}

fn status(phase: Phase, applied: &str) -> CanaryStatus {
    CanaryStatus {
        phase: Some(phase),
        last_applied_spec: Some(applied.into()),
        last_promoted_spec: Some("v1".into()),
        ..Default::default()
    }
}

/// A run whose canary has been ready for the settling time since `t0`.
fn settled(mut st: CanaryStatus) -> CanaryStatus {
    st.hold_reason = Some(format!("{HOLD_CANARY_SETTLING}: {CANARY_SETTLING_DETAIL}"));
    st.hold_since = Some(t0().to_rfc3339());
    st
}

fn check(name: &str, verdict: Verdict) -> CheckStatus {
    CheckStatus {
        name: name.into(),
        kind: CheckKind::Metric,
        verdict,
        value: Some(42.0),
        threshold: Some(">= 99".into()),
        message: None,
    }
}

fn with_metrics(mut o: Observations, verdict: Verdict) -> Observations {
    o.checks.metrics = Some(vec![check("request-success-rate", verdict)]);
    o
}

fn decided(s: &Settings, st: &CanaryStatus, o: &Observations, now: DateTime<Utc>) -> Decision {
    match step(s, st, o, now) {
        Step::Decided(d) => d,
        Step::NeedChecks(p) => panic!("unexpected NeedChecks({p:?}) for {st:?}"),
    }
}

fn phase_of(d: &Decision) -> Option<Phase> {
    d.status.phase
}

#[test]
fn initialization() {
    let s = settings(canary_strategy());
    let mut o = obs("v1");

    o.primary = None;
    let d = decided(&s, &CanaryStatus::default(), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Initializing));
    assert_eq!(d.actions, vec![Action::EnsurePrimary]);

    o.primary = Some(Readiness::NotReady("0 of 2 available".into()));
    let d = decided(&s, &d.status, &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Initializing));
    assert!(
        d.actions.is_empty(),
        "nothing scaled down before the primary is ready"
    );
    assert!(
        d.status
            .hold_reason
            .as_deref()
            .unwrap()
            .contains("primary not ready")
    );

    o.primary = Some(Readiness::Ready);
    o.target_scaled_up = true;
    let d = decided(&s, &d.status, &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Initialized));
    assert_eq!(
        d.actions,
        vec![Action::SetRoutes(Routes::PRIMARY)],
        "routes move first; the target is scaled down after the drain"
    );
    assert!(
        decided(&s, &d.status, &o, t0() + secs(2))
            .actions
            .is_empty()
    );
    assert_eq!(
        decided(&s, &d.status, &o, t0() + secs(6)).actions,
        vec![Action::ScaleTargetToZero]
    );
    assert_eq!(d.status.last_applied_spec.as_deref(), Some("v1"));
    assert_eq!(d.status.last_promoted_spec.as_deref(), Some("v1"));
    let promoted = d
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == "Promoted")
        .unwrap();
    assert_eq!(promoted.status, "True");
}

/// Each row: starting phase and observations, and the phase and actions expected.
#[test]
fn transition_table() {
    struct Row {
        name: &'static str,
        settings: Settings,
        status: CanaryStatus,
        obs: Observations,
        now: DateTime<Utc>,
        phase: Phase,
        actions: Vec<Action>,
        weight: u32,
    }
    let s = settings(canary_strategy());
    let progressing = |weight: u32, failed: u32| CanaryStatus {
        canary_weight: weight,
        failed_checks: failed,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let later = t0() + secs(11);
    let rows = vec![
        Row {
            name: "idle, same revision: nothing",
            settings: s.clone(),
            status: status(Phase::Succeeded, "v1"),
            obs: obs("v1"),
            now: t0(),
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "new revision starts a release",
            settings: s.clone(),
            status: status(Phase::Succeeded, "v1"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Progressing,
            actions: vec![Action::ScaleTargetUp],
            weight: 0,
        },
        Row {
            name: "failed revision stays failed",
            settings: s.clone(),
            status: status(Phase::Failed, "v2"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Failed,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "a new revision after a failure starts again",
            settings: s.clone(),
            status: status(Phase::Failed, "v2"),
            obs: obs("v3"),
            now: t0(),
            phase: Phase::Progressing,
            actions: vec![Action::ScaleTargetUp],
            weight: 0,
        },
        Row {
            name: "first step: a canary just ready gets no traffic until the data plane can know it",
            settings: s.clone(),
            status: status(Phase::Progressing, "v2"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Progressing,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "first step: settled, no analysis at weight 0, traffic moves to the first weight",
            settings: s.clone(),
            status: settled(status(Phase::Progressing, "v2")),
            obs: obs("v2"),
            now: t0() + DRAIN,
            phase: Phase::Progressing,
            actions: vec![Action::SetRoutes(Routes::weighted(10))],
            weight: 10,
        },
        Row {
            name: "an unconfirmed route mid-analysis fails the release, routes to the primary",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: Observations {
                route_rejected: Some("probe answered 404 for 10s".into()),
                ..obs("v2")
            },
            now: t0() + secs(1),
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "an unconfirmed route while waiting for promotion fails the release too",
            settings: s.clone(),
            status: CanaryStatus {
                phase: Some(Phase::WaitingPromotion),
                ..progressing(30, 0)
            },
            obs: Observations {
                route_rejected: Some("not accepted".into()),
                ..obs("v2")
            },
            now: t0() + secs(1),
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "an unconfirmed route outside a release keeps the phase and writes nothing",
            settings: s.clone(),
            status: status(Phase::Succeeded, "v1"),
            obs: Observations {
                route_rejected: Some("not accepted".into()),
                ..obs("v2")
            },
            now: t0(),
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "not due yet: hold",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: obs("v2"),
            now: t0() + secs(5),
            phase: Phase::Progressing,
            actions: vec![],
            weight: 10,
        },
        Row {
            name: "checks pass: next weight",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: with_metrics(obs("v2"), Verdict::Pass),
            now: later,
            phase: Phase::Progressing,
            actions: vec![Action::SetRoutes(Routes::weighted(20))],
            weight: 20,
        },
        Row {
            name: "check fails below threshold: weight holds",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: with_metrics(obs("v2"), Verdict::Fail),
            now: later,
            phase: Phase::Progressing,
            actions: vec![],
            weight: 10,
        },
        Row {
            name: "check fails at threshold: rollback",
            settings: s.clone(),
            status: progressing(20, 1),
            obs: with_metrics(obs("v2"), Verdict::Fail),
            now: later,
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "no data: inconclusive holds without a failed check",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: with_metrics(obs("v2"), Verdict::Inconclusive),
            now: later,
            phase: Phase::Progressing,
            actions: vec![],
            weight: 10,
        },
        Row {
            name: "max weight and checks pass: all traffic to the canary, the primary waits",
            settings: s.clone(),
            status: progressing(30, 0),
            obs: with_metrics(obs("v2"), Verdict::Pass),
            now: later,
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            })],
            weight: 100,
        },
        Row {
            name: "stepped promotion: the primary rolls at once, the canary keeps its weight",
            settings: settings(Strategy::Canary {
                weights: vec![10, 20, 30],
                mirror: false,
                mirror_weight: None,
                step_weight_promotion: Some(10),
            }),
            status: progressing(30, 0),
            obs: with_metrics(obs("v2"), Verdict::Pass),
            now: later,
            phase: Phase::Promoting,
            actions: vec![Action::Promote],
            weight: 30,
        },
        Row {
            name: "promoting, drain not over: keep all traffic on the canary, hold the primary",
            settings: s.clone(),
            status: CanaryStatus {
                canary_weight: 100,
                hold_reason: Some("draining primary: x".into()),
                hold_since: Some((later - secs(2)).to_rfc3339()),
                ..status(Phase::Promoting, "v2")
            },
            obs: obs("v2"),
            now: later,
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            })],
            weight: 100,
        },
        Row {
            name: "promoting, primary drained: patch the primary",
            settings: s.clone(),
            status: CanaryStatus {
                canary_weight: 100,
                hold_reason: Some("draining primary: x".into()),
                hold_since: Some((later - secs(6)).to_rfc3339()),
                ..status(Phase::Promoting, "v2")
            },
            obs: obs("v2"),
            now: later,
            phase: Phase::Promoting,
            actions: vec![
                Action::SetRoutes(Routes {
                    primary: 0,
                    canary: 100,
                    mirror: false,
                    mirror_weight: None,
                }),
                Action::Promote,
            ],
            weight: 100,
        },
        Row {
            name: "primary ready at the new revision: let its endpoints settle first",
            settings: s.clone(),
            status: CanaryStatus {
                canary_weight: 100,
                hold_reason: Some("primary rolling out: x".into()),
                hold_since: Some(t0().to_rfc3339()),
                ..status(Phase::Promoting, "v2")
            },
            obs: Observations {
                primary_revision: Some("v2".into()),
                ..obs("v2")
            },
            now: later,
            phase: Phase::Promoting,
            actions: vec![],
            weight: 100,
        },
        Row {
            name: "canary crashing: rollback",
            settings: s.clone(),
            status: progressing(10, 0),
            obs: Observations {
                canary: Readiness::Failed("ProgressDeadlineExceeded".into()),
                ..obs("v2")
            },
            now: later,
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "new revision mid-analysis: restart from the primary",
            settings: s.clone(),
            status: progressing(20, 1),
            obs: obs("v3"),
            now: later,
            phase: Phase::Progressing,
            actions: vec![Action::SetRoutes(Routes::PRIMARY), Action::ScaleTargetUp],
            weight: 0,
        },
        Row {
            name: "primary ready and settled: traffic back to primary",
            settings: s.clone(),
            status: CanaryStatus {
                canary_weight: 100,
                hold_reason: Some("primary settling: x".into()),
                hold_since: Some((later - secs(6)).to_rfc3339()),
                ..status(Phase::Promoting, "v2")
            },
            obs: Observations {
                primary_revision: Some("v2".into()),
                ..obs("v2")
            },
            now: later,
            phase: Phase::Finalising,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "promotion not yet visible on the primary: promote again and hold",
            settings: s.clone(),
            status: CanaryStatus {
                canary_weight: 100,
                hold_reason: Some("promoting: x".into()),
                hold_since: Some(t0().to_rfc3339()),
                ..status(Phase::Promoting, "v2")
            },
            obs: obs("v2"),
            now: later,
            phase: Phase::Promoting,
            actions: vec![
                Action::SetRoutes(Routes {
                    primary: 0,
                    canary: 100,
                    mirror: false,
                    mirror_weight: None,
                }),
                Action::Promote,
            ],
            weight: 100,
        },
        Row {
            name: "finalising: routes to the primary, succeed",
            settings: s.clone(),
            status: status(Phase::Finalising, "v2"),
            obs: obs("v2"),
            now: later,
            phase: Phase::Succeeded,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "settled, routes drained: scale the target down",
            settings: s.clone(),
            status: CanaryStatus {
                last_transition_time: Some(t0().to_rfc3339()),
                ..status(Phase::Failed, "v2")
            },
            obs: Observations {
                target_scaled_up: true,
                ..obs("v2")
            },
            now: t0() + secs(6),
            phase: Phase::Failed,
            actions: vec![Action::ScaleTargetToZero],
            weight: 0,
        },
        Row {
            name: "settled, still draining: wait",
            settings: s.clone(),
            status: CanaryStatus {
                last_transition_time: Some(t0().to_rfc3339()),
                ..status(Phase::Succeeded, "v2")
            },
            obs: Observations {
                target_scaled_up: true,
                ..obs("v2")
            },
            now: t0() + secs(2),
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "skipAnalysis promotes as soon as the canary is ready",
            settings: Settings {
                skip_analysis: true,
                ..s.clone()
            },
            status: status(Phase::Progressing, "v2"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            })],
            weight: 100,
        },
        Row {
            name: "suspend: nothing moves",
            settings: Settings {
                suspend: true,
                ..s.clone()
            },
            status: status(Phase::Succeeded, "v1"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
        },
        Row {
            name: "blue/green first iteration: routes stay on primary",
            settings: settings(Strategy::BlueGreen {
                iterations: 2,
                mirror: false,
            }),
            status: status(Phase::Progressing, "v2"),
            obs: obs("v2"),
            now: t0(),
            phase: Phase::Progressing,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
        },
        Row {
            name: "blue/green done: all traffic to the canary, the primary waits",
            settings: settings(Strategy::BlueGreen {
                iterations: 2,
                mirror: false,
            }),
            status: CanaryStatus {
                iterations: 2,
                last_step_time: Some(t0().to_rfc3339()),
                ..status(Phase::Progressing, "v2")
            },
            obs: with_metrics(obs("v2"), Verdict::Pass),
            now: later,
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            })],
            weight: 100,
        },
        Row {
            name: "A/B first iteration: matched traffic to canary",
            settings: settings(Strategy::AbTesting { iterations: 3 }),
            status: settled(status(Phase::Progressing, "v2")),
            obs: obs("v2"),
            now: t0() + DRAIN,
            phase: Phase::Progressing,
            actions: vec![Action::SetRoutes(Routes {
                primary: 0,
                canary: 100,
                mirror: false,
                mirror_weight: None,
            })],
            weight: 0,
        },
    ];
    for row in rows {
        let d = decided(&row.settings, &row.status, &row.obs, row.now);
        assert_eq!(phase_of(&d), Some(row.phase), "{}: phase", row.name);
        assert_eq!(d.actions, row.actions, "{}: actions", row.name);
        assert_eq!(d.status.canary_weight, row.weight, "{}: weight", row.name);
    }
}

#[test]
fn failed_checks_count_and_reset() {
    let s = settings(canary_strategy());
    let st = CanaryStatus {
        canary_weight: 10,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let d = decided(
        &s,
        &st,
        &with_metrics(obs("v2"), Verdict::Fail),
        t0() + secs(11),
    );
    assert_eq!(d.status.failed_checks, 1);
    let warn = d.events.iter().find(|e| e.reason == "FailedCheck").unwrap();
    assert!(
        warn.message
            .contains("request-success-rate 42 (want >= 99)"),
        "{}",
        warn.message
    );
    assert_eq!(d.status.last_analysis.len(), 1);
    // A new release resets the count.
    let d = decided(&s, &status(Phase::Failed, "v2"), &obs("v3"), t0());
    assert_eq!(d.status.failed_checks, 0);
}

#[test]
fn inconclusive_past_the_deadline_rolls_back() {
    let s = settings(canary_strategy());
    let st = CanaryStatus {
        canary_weight: 10,
        last_step_time: Some(t0().to_rfc3339()),
        hold_reason: Some("analysis inconclusive: no data".into()),
        hold_since: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let o = with_metrics(obs("v2"), Verdict::Inconclusive);
    let d = decided(&s, &st, &o, t0() + secs(30));
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert_eq!(d.status.failed_checks, 0);
    assert_eq!(
        d.status.hold_since, st.hold_since,
        "the hold keeps its start"
    );
    let reason = d.status.hold_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("analysis inconclusive: 30s left before the progress deadline (60s); "),
        "{reason}"
    );
    let d = decided(&s, &st, &o, t0() + secs(61));
    assert_eq!(phase_of(&d), Some(Phase::Failed));
}

#[test]
fn a_hold_countdown_is_rewritten_only_once_it_is_a_poll_period_off() {
    let s = settings(canary_strategy());
    let o = Observations {
        canary: Readiness::NotReady("0 of 1 available".into()),
        ..obs("v2")
    };
    let first = decided(&s, &status(Phase::Progressing, "v2"), &o, t0()).status;
    let shown = first.hold_reason.clone().unwrap_or_default();
    assert!(shown.starts_with("canary not ready: 60s left"), "{shown}");
    // Reconciles a few seconds later (each status write brings one) leave it as it is,
    // so the status does not change and is not written again.
    let again = decided(&s, &first, &o, t0() + secs(4)).status;
    assert_eq!(again, first);
    let later = decided(&s, &again, &o, t0() + secs(5)).status;
    let shown = later.hold_reason.clone().unwrap_or_default();
    assert!(shown.starts_with("canary not ready: 55s left"), "{shown}");
    // Another detail is shown at once.
    let o2 = Observations {
        canary: Readiness::NotReady("1 of 2 available".into()),
        ..obs("v2")
    };
    let other = decided(&s, &later, &o2, t0() + secs(6)).status;
    let shown = other.hold_reason.unwrap_or_default();
    assert!(shown.starts_with("canary not ready: 54s left"), "{shown}");
}

#[test]
fn canary_not_ready_until_deadline() {
    let s = settings(canary_strategy());
    let o = Observations {
        canary: Readiness::NotReady("0 of 1 available".into()),
        ..obs("v2")
    };
    let d = decided(&s, &status(Phase::Progressing, "v2"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert!(d.actions.is_empty());
    assert_eq!(d.events.len(), 1, "one event when the hold starts");
    let d2 = decided(&s, &d.status, &o, t0() + secs(30));
    assert!(d2.events.is_empty(), "no event spam while the hold lasts");
    let d3 = decided(&s, &d2.status, &o, t0() + secs(61));
    assert_eq!(phase_of(&d3), Some(Phase::Failed));
    assert!(
        d3.events
            .iter()
            .any(|e| e.message.contains("not ready within 60s"))
    );
}

#[test]
fn gates_are_asked_for_only_when_needed() {
    let s = settings(canary_strategy());
    let mut o = obs("v2");
    o.webhook_types = [
        WebhookType::ConfirmRollout,
        WebhookType::ConfirmPromotion,
        WebhookType::PreRollout,
    ]
    .into_iter()
    .collect();
    // Idle with no new revision asks for nothing.
    assert!(matches!(
        step(&s, &status(Phase::Succeeded, "v2"), &o, t0()),
        Step::Decided(_)
    ));
    // A new revision asks for confirm-rollout only.
    match step(&s, &status(Phase::Succeeded, "v1"), &o, t0()) {
        Step::NeedChecks(p) => assert_eq!(p.gates, vec![WebhookType::ConfirmRollout]),
        other => panic!("{other:?}"),
    }
    // Closed: Waiting, with the reason.
    o.checks.gates.insert(
        WebhookType::ConfirmRollout,
        vec![CheckStatus {
            verdict: Verdict::Fail,
            message: Some("403 Forbidden".into()),
            ..check("approval", Verdict::Fail)
        }],
    );
    let d = decided(&s, &status(Phase::Succeeded, "v1"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Waiting));
    assert!(d.status.hold_reason.unwrap().contains("403"));
    // Open: Progressing.
    o.checks.gates.insert(
        WebhookType::ConfirmRollout,
        vec![check("approval", Verdict::Pass)],
    );
    let d = decided(&s, &status(Phase::Waiting, "v1"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    // First step (once the canary has settled) asks for pre-rollout, not metrics.
    let settling = decided(&s, &d.status, &o, t0());
    assert!(settling.actions.is_empty(), "{settling:?}");
    match step(&s, &settling.status, &o, t0() + DRAIN) {
        Step::NeedChecks(p) => {
            assert_eq!(p.gates, vec![WebhookType::PreRollout]);
            assert!(!p.metrics);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_release_held_by_confirm_rollout_keeps_the_target_at_zero() {
    let s = settings(canary_strategy());
    let mut o = obs("v3");
    o.target_scaled_up = true;
    o.webhook_types = [WebhookType::ConfirmRollout].into_iter().collect();
    o.checks.gates.insert(
        WebhookType::ConfirmRollout,
        vec![check("gate", Verdict::Fail)],
    );
    // Failed a while ago with the target still up: held in Waiting, it drains.
    let st = CanaryStatus {
        last_transition_time: Some(t0().to_rfc3339()),
        ..status(Phase::Failed, "v2")
    };
    let d = decided(&s, &st, &o, t0() + secs(6));
    assert_eq!(phase_of(&d), Some(Phase::Failed), "the target drains first");
    assert_eq!(d.actions, vec![Action::ScaleTargetToZero]);
    o.target_scaled_up = false;
    let d = decided(&s, &st, &o, t0() + secs(7));
    assert_eq!(phase_of(&d), Some(Phase::Waiting));
    assert!(d.actions.is_empty(), "nothing scales up while held");
}

#[test]
fn a_new_revision_waits_for_the_drained_target_to_reach_zero() {
    let s = settings(canary_strategy());
    let mut o = obs("v3");
    o.target_scaled_up = true;
    let st = CanaryStatus {
        last_transition_time: Some(t0().to_rfc3339()),
        ..status(Phase::Succeeded, "v2")
    };
    let d = decided(&s, &st, &o, t0() + secs(2));
    assert_eq!(
        (phase_of(&d), d.actions.clone()),
        (Some(Phase::Succeeded), vec![])
    );
    let d = decided(&s, &st, &o, t0() + secs(6));
    assert_eq!(d.actions, vec![Action::ScaleTargetToZero]);
    o.target_scaled_up = false;
    let d = decided(&s, &st, &o, t0() + secs(7));
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert_eq!(d.actions, vec![Action::ScaleTargetUp], "fresh pods");
}

#[test]
fn confirm_promotion_holds_in_waiting_promotion() {
    let s = settings(canary_strategy());
    let mut o = with_metrics(obs("v2"), Verdict::Pass);
    o.webhook_types = [WebhookType::ConfirmPromotion].into_iter().collect();
    o.checks.gates.insert(
        WebhookType::ConfirmPromotion,
        vec![check("gate", Verdict::Fail)],
    );
    let st = CanaryStatus {
        canary_weight: 30,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let d = decided(&s, &st, &o, t0() + secs(11));
    assert_eq!(phase_of(&d), Some(Phase::WaitingPromotion));
    assert!(d.actions.is_empty());
    o.checks.gates.insert(
        WebhookType::ConfirmPromotion,
        vec![check("gate", Verdict::Pass)],
    );
    let d = decided(&s, &d.status, &o, t0() + secs(22));
    assert_eq!(phase_of(&d), Some(Phase::Promoting));
    assert_eq!(
        d.actions,
        vec![Action::SetRoutes(Routes {
            primary: 0,
            canary: 100,
            mirror: false,
            mirror_weight: None,
        })]
    );
}

#[test]
fn rollback_webhook_rolls_back() {
    let s = settings(canary_strategy());
    let mut o = with_metrics(obs("v2"), Verdict::Pass);
    o.webhook_types = [WebhookType::Rollback].into_iter().collect();
    let st = CanaryStatus {
        canary_weight: 10,
        ..status(Phase::Progressing, "v2")
    };
    assert!(matches!(step(&s, &st, &o, t0()), Step::NeedChecks(_)));
    o.checks
        .gates
        .insert(WebhookType::Rollback, vec![check("rb", Verdict::Fail)]);
    assert_eq!(
        phase_of(&decided(&s, &st, &o, t0())),
        Some(Phase::Progressing)
    );
    o.checks
        .gates
        .insert(WebhookType::Rollback, vec![check("rb", Verdict::Pass)]);
    assert_eq!(phase_of(&decided(&s, &st, &o, t0())), Some(Phase::Failed));
}

#[test]
fn retry_annotation_restarts_a_failed_revision_once() {
    let s = settings(canary_strategy());
    let mut o = obs("v2");
    o.retry = Some("1".into());
    let d = decided(&s, &status(Phase::Failed, "v2"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert_eq!(d.status.last_retry.as_deref(), Some("1"));
    let failed_again = CanaryStatus {
        last_retry: Some("1".into()),
        ..status(Phase::Failed, "v2")
    };
    assert_eq!(
        phase_of(&decided(&s, &failed_again, &o, t0())),
        Some(Phase::Failed)
    );
}

#[test]
fn retry_value_older_than_the_failure_is_no_request() {
    let s = settings(canary_strategy());
    let mut o = obs("v2");
    o.retry = Some("1".into());
    o.canary = Readiness::Failed("crash loop".into());
    // The value was there while the release ran; the release then fails.
    let d = decided(&s, &status(Phase::Progressing, "v2"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Failed));
    assert_eq!(d.status.last_retry.as_deref(), Some("1"));
    let d = decided(&s, &d.status, &o, t0() + secs(10));
    assert_eq!(
        phase_of(&d),
        Some(Phase::Failed),
        "not re-run on the old value"
    );
    assert!(d.actions.is_empty());
    // A value set after the failure is a request.
    o.retry = Some("2".into());
    let d = decided(&s, &d.status, &o, t0() + secs(20));
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert_eq!(d.status.last_retry.as_deref(), Some("2"));
}

#[test]
fn retry_held_by_confirm_rollout_waits_without_flapping() {
    let s = settings(canary_strategy());
    let mut o = obs("v2");
    o.retry = Some("1".into());
    o.webhook_types = [WebhookType::ConfirmRollout].into_iter().collect();
    o.checks.gates.insert(
        WebhookType::ConfirmRollout,
        vec![check("approval", Verdict::Fail)],
    );
    let d = decided(&s, &status(Phase::Failed, "v2"), &o, t0());
    assert_eq!(phase_of(&d), Some(Phase::Waiting));
    assert_eq!(d.events.len(), 1);
    // Still closed: the retry keeps waiting, with no new event.
    let d = decided(&s, &d.status, &o, t0() + secs(10));
    assert_eq!(phase_of(&d), Some(Phase::Waiting));
    assert!(d.events.is_empty(), "{:?}", d.events);
    // Opened: the retry runs.
    o.checks.gates.insert(
        WebhookType::ConfirmRollout,
        vec![check("approval", Verdict::Pass)],
    );
    let d = decided(&s, &d.status, &o, t0() + secs(20));
    assert_eq!(phase_of(&d), Some(Phase::Progressing));
    assert_eq!(d.status.last_retry.as_deref(), Some("1"));
    // Withdrawn while waiting: back to Failed.
    o.retry = None;
    let waiting = CanaryStatus {
        hold_reason: Some("confirm-rollout: closed".into()),
        ..status(Phase::Waiting, "v2")
    };
    assert_eq!(
        phase_of(&decided(&s, &waiting, &o, t0())),
        Some(Phase::Failed)
    );
}

fn deleting(o: Observations) -> Observations {
    Observations {
        deleting: true,
        ..o
    }
}

fn reverting() -> Settings {
    Settings {
        revert_on_deletion: true,
        ..settings(canary_strategy())
    }
}

fn draining_to_target(since: DateTime<Utc>) -> CanaryStatus {
    CanaryStatus {
        hold_reason: Some(format!("{HOLD_TO_TARGET}: {TO_TARGET_DETAIL}")),
        hold_since: Some(since.to_rfc3339()),
        ..status(Phase::Terminating, "v1")
    }
}

/// Each stage of a deletion with `revertOnDeletion` (the default): what it does, the
/// phase it leaves (anything but Terminated keeps the finalizer) and when it looks again.
#[test]
fn deletion_stages() {
    let at_zero = deleting(obs("v1"));
    let up_ready = deleting(Observations {
        target_scaled_up: true,
        ..obs("v1")
    });
    let up_not_ready = deleting(Observations {
        target_scaled_up: true,
        canary: Readiness::NotReady("0 of 2 available".into()),
        ..obs("v1")
    });
    let up_failed = deleting(Observations {
        target_scaled_up: true,
        canary: Readiness::Failed("ProgressDeadlineExceeded".into()),
        ..obs("v2")
    });
    let no_primary = deleting(Observations {
        primary: None,
        primary_revision: None,
        target_scaled_up: true,
        ..obs("v1")
    });
    let primary_not_ready = deleting(Observations {
        primary: Some(Readiness::NotReady("0 of 2 available".into())),
        target_scaled_up: true,
        ..obs("v1")
    });
    let fresh = CanaryStatus::default();
    let initializing = CanaryStatus {
        phase: Some(Phase::Initializing),
        ..Default::default()
    };
    let splitting = CanaryStatus {
        canary_weight: 30,
        ..status(Phase::Progressing, "v2")
    };
    struct Case<'a> {
        name: &'a str,
        st: CanaryStatus,
        o: &'a Observations,
        now: DateTime<Utc>,
        actions: Vec<Action>,
        phase: Phase,
        requeue: Duration,
    }
    let cases = [
        Case {
            name: "never initialized: the finalizer goes at once",
            st: fresh.clone(),
            o: &no_primary,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminated,
            requeue: Duration::from_secs(10),
        },
        Case {
            name: "initializing, no primary yet: the finalizer goes at once",
            st: initializing.clone(),
            o: &no_primary,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminated,
            requeue: Duration::from_secs(10),
        },
        Case {
            name: "initializing, primary not ready: the finalizer goes at once",
            st: initializing.clone(),
            o: &primary_not_ready,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminated,
            requeue: Duration::from_secs(10),
        },
        Case {
            name: "initializing with a ready primary: the full hand-back",
            st: initializing,
            o: &up_ready,
            now: t0(),
            actions: vec![Action::RestoreTarget, Action::Finalize],
            phase: Phase::Terminating,
            requeue: DRAIN,
        },
        Case {
            name: "target at zero: scale it up, traffic stays on the primary",
            st: status(Phase::Succeeded, "v1"),
            o: &at_zero,
            now: t0(),
            actions: vec![Action::RestoreTarget],
            phase: Phase::Terminating,
            requeue: POLL,
        },
        Case {
            name: "target not ready yet: hold, keep the finalizer",
            st: status(Phase::Terminating, "v1"),
            o: &up_not_ready,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminating,
            requeue: POLL,
        },
        Case {
            name: "target will not become ready: hold, keep the finalizer",
            st: status(Phase::Failed, "v2"),
            o: &up_failed,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminating,
            requeue: POLL,
        },
        Case {
            name: "mid-release, canary not ready: everything on the primary meanwhile",
            st: splitting,
            o: &up_not_ready,
            now: t0(),
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            phase: Phase::Terminating,
            requeue: POLL,
        },
        Case {
            name: "target ready: traffic to it, drain starts",
            st: status(Phase::Terminating, "v1"),
            o: &up_ready,
            now: t0(),
            actions: vec![Action::RestoreTarget, Action::Finalize],
            phase: Phase::Terminating,
            requeue: DRAIN,
        },
        Case {
            name: "draining: wait out the rest, nothing rewritten",
            st: draining_to_target(t0()),
            o: &up_ready,
            now: t0() + secs(2),
            actions: vec![],
            phase: Phase::Terminating,
            requeue: DRAIN - Duration::from_secs(2),
        },
        Case {
            name: "drained: Terminated, the finalizer goes",
            st: draining_to_target(t0()),
            o: &up_ready,
            now: t0() + chrono::Duration::from_std(DRAIN).unwrap(),
            actions: vec![],
            phase: Phase::Terminated,
            requeue: POLL,
        },
        Case {
            name: "terminated: nothing more",
            st: status(Phase::Terminated, "v1"),
            o: &up_ready,
            now: t0(),
            actions: vec![],
            phase: Phase::Terminated,
            requeue: Duration::from_secs(10),
        },
    ];
    let s = reverting();
    for c in cases {
        let d = decided(&s, &c.st, c.o, c.now);
        assert_eq!(d.actions, c.actions, "{}: actions", c.name);
        assert_eq!(phase_of(&d), Some(c.phase), "{}: phase", c.name);
        assert_eq!(d.requeue_after, c.requeue, "{}: requeue", c.name);
    }
}

#[test]
fn deletion_hold_explains_the_finalizer() {
    let o = deleting(Observations {
        target_scaled_up: true,
        canary: Readiness::NotReady("0 of 2 available".into()),
        ..obs("v1")
    });
    let d = decided(&reverting(), &status(Phase::Succeeded, "v1"), &o, t0());
    let ready = d
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == CONDITION_READY)
        .expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "TargetNotReady");
    let msg = ready.message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("0 of 2 available") && msg.contains("remove the finalizer by hand"),
        "{msg}"
    );
    assert!(msg.contains(FINALIZER), "{msg}");
    assert_eq!(d.events.len(), 1, "{:?}", d.events);
    assert_eq!(d.events[0].reason, "TargetNotReady");
    // The hold keeps its start: a second tick does not restart it or repeat the Event.
    let again = decided(&reverting(), &d.status, &o, t0() + secs(5));
    assert_eq!(again.status.hold_since, d.status.hold_since);
    assert!(again.events.is_empty(), "{:?}", again.events);
    // Coming from the scale-up stage, the not-ready hold still gets its own Event.
    let scaling = decided(
        &reverting(),
        &status(Phase::Succeeded, "v1"),
        &deleting(obs("v1")),
        t0(),
    );
    assert_eq!(scaling.actions, vec![Action::RestoreTarget]);
    let after = decided(&reverting(), &scaling.status, &o, t0() + secs(5));
    assert_eq!(
        after.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["TargetNotReady"]
    );
    // Once the target is ready the condition says so, not the stale hold.
    let ready_now = Observations {
        canary: Readiness::Ready,
        ..o
    };
    let moved = decided(&reverting(), &again.status, &ready_now, t0() + secs(10));
    assert_eq!(moved.actions, vec![Action::RestoreTarget, Action::Finalize]);
    let ready = moved
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == CONDITION_READY)
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "TargetReady")
    );
}

/// `revertOnDeletion: false` is Flagger's behaviour: nothing is restored, the phase
/// stays, and the caller lets the Canary go (it never had the finalizer).
#[test]
fn deletion_opted_out_does_nothing() {
    let s = settings(canary_strategy());
    assert!(!s.revert_on_deletion);
    let st = status(Phase::Succeeded, "v1");
    let d = decided(&s, &st, &deleting(obs("v1")), t0());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(phase_of(&d), Some(Phase::Succeeded));
    assert!(d.events.is_empty());
}

#[test]
fn step_weight_promotion_shifts_back_in_steps() {
    let s = settings(Strategy::Canary {
        weights: vec![50],
        mirror: false,
        mirror_weight: None,
        step_weight_promotion: Some(20),
    });
    let o = Observations {
        primary_revision: Some("v2".into()),
        ..obs("v2")
    };
    let mut st = CanaryStatus {
        canary_weight: 50,
        ..status(Phase::Promoting, "v2")
    };
    let mut weights = vec![];
    let mut now = t0();
    for _ in 0..10 {
        let d = decided(&s, &st, &o, now);
        weights.push(d.status.canary_weight);
        st = d.status;
        now += secs(11);
        if st.phase == Some(Phase::Finalising) {
            break;
        }
    }
    assert_eq!(weights, vec![30, 10, 0]);
}

// ---- whole releases in a simulated world ---------------------------------------

/// A tiny world: applies actions the way the cluster would, so the machine's actions
/// are checked for their effect, not only their shape.
struct World {
    target_revision: String,
    target_replicas: i32,
    primary_revision: Option<String>,
    routes: Routes,
    canary_healthy: bool,
    metrics: Verdict,
    post_rollout_calls: u32,
    /// The world's clock and when the routes last changed: the primary may only be
    /// patched once traffic has been off it for `DRAIN`.
    at: DateTime<Utc>,
    routes_changed_at: DateTime<Utc>,
    /// The Canary is being deleted, and whether traffic was handed back to the target.
    deleting: bool,
    finalized: bool,
}

impl World {
    fn observe(&self) -> Observations {
        Observations {
            target_checksum: self.target_revision.clone(),
            target_scaled_up: self.target_replicas > 0,
            canary: if self.target_replicas == 0 {
                Readiness::NotReady("scaled to zero".into())
            } else if self.canary_healthy {
                Readiness::Ready
            } else {
                Readiness::NotReady("0 of 1 available (CrashLoopBackOff)".into())
            },
            primary: self.primary_revision.as_ref().map(|_| Readiness::Ready),
            primary_revision: self.primary_revision.clone(),
            has_metrics: true,
            webhook_types: [WebhookType::PostRollout].into_iter().collect(),
            deleting: self.deleting,
            ..obs("")
        }
    }

    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::EnsurePrimary => {
                    self.primary_revision
                        .get_or_insert(self.target_revision.clone());
                }
                Action::ScaleTargetUp => self.target_replicas = 1,
                Action::ScaleTargetToZero => {
                    assert_eq!(self.routes.canary, 0, "scaled down while serving traffic");
                    self.target_replicas = 0
                }
                Action::SetRoutes(r) => {
                    if r.canary > 0 {
                        assert!(
                            self.target_replicas > 0 && self.canary_healthy,
                            "traffic sent to a canary that is not ready"
                        );
                    }
                    if self.routes != *r {
                        self.routes_changed_at = self.at;
                    }
                    self.routes = *r
                }
                Action::Promote => {
                    assert_eq!(self.routes.primary, 0, "primary patched while serving");
                    assert!(
                        (self.at - self.routes_changed_at).to_std().unwrap() >= DRAIN,
                        "primary patched before the data plane moved off it"
                    );
                    self.primary_revision = Some(self.target_revision.clone())
                }
                Action::RunWebhooks(_) => self.post_rollout_calls += 1,
                Action::RestoreTarget => {
                    self.target_replicas = self.target_replicas.max(1);
                }
                Action::Finalize => {
                    assert!(
                        self.target_replicas > 0 && self.canary_healthy,
                        "traffic handed to a target that is not ready"
                    );
                    self.routes = Routes::weighted(100);
                    self.routes_changed_at = self.at;
                    self.finalized = true;
                }
            }
        }
    }
}

/// Runs ticks until the phase settles; returns the trace of (phase, weight).
fn run(
    s: &Settings,
    world: &mut World,
    st: &mut CanaryStatus,
    now: &mut DateTime<Utc>,
) -> Vec<(Phase, u32)> {
    let mut trace = vec![];
    for _ in 0..200 {
        let mut o = world.observe();
        let d = match step(s, st, &o, *now) {
            Step::Decided(d) => d,
            Step::NeedChecks(plan) => {
                if plan.metrics {
                    o.checks.metrics = Some(vec![check("request-success-rate", world.metrics)]);
                }
                decided(s, st, &o, *now)
            }
        };
        world.at = *now;
        world.apply(&d.actions);
        *st = d.status;
        let p = st.phase.unwrap();
        if trace.last() != Some(&(p, st.canary_weight)) {
            trace.push((p, st.canary_weight));
        }
        *now += chrono::Duration::from_std(d.requeue_after.max(Duration::from_secs(1))).unwrap();
        if matches!(p, Phase::Succeeded | Phase::Failed | Phase::Initialized)
            && d.actions.is_empty()
        {
            break;
        }
    }
    trace
}

#[test]
fn good_release_is_promoted_and_bad_one_rolled_back() {
    use Phase::*;
    let s = settings(canary_strategy());
    let mut world = World {
        target_revision: "v1".into(),
        target_replicas: 2,
        primary_revision: None,
        routes: Routes::PRIMARY,
        canary_healthy: true,
        metrics: Verdict::Pass,
        post_rollout_calls: 0,
        at: t0(),
        routes_changed_at: t0(),
        deleting: false,
        finalized: false,
    };
    let mut st = CanaryStatus::default();
    let mut now = t0();
    let init = run(&s, &mut world, &mut st, &mut now);
    assert_eq!(init, vec![(Initializing, 0), (Initialized, 0)]);
    assert_eq!(world.target_replicas, 0);

    world.target_revision = "v2".into();
    let good = run(&s, &mut world, &mut st, &mut now);
    assert_eq!(
        good,
        vec![
            (Progressing, 0),
            (Progressing, 10),
            (Progressing, 20),
            (Progressing, 30),
            (Promoting, 100),
            (Finalising, 0),
            (Succeeded, 0)
        ]
    );
    assert_eq!(world.primary_revision.as_deref(), Some("v2"));
    assert_eq!(world.routes, Routes::PRIMARY);
    assert_eq!(world.target_replicas, 0);
    assert_eq!(world.post_rollout_calls, 1);

    world.target_revision = "v3".into();
    world.metrics = Verdict::Fail;
    let bad = run(&s, &mut world, &mut st, &mut now);
    assert_eq!(bad, vec![(Progressing, 0), (Progressing, 10), (Failed, 0)]);
    assert_eq!(
        world.primary_revision.as_deref(),
        Some("v2"),
        "primary untouched"
    );
    assert_eq!(world.routes, Routes::PRIMARY);
    assert_eq!(world.target_replicas, 0);
    assert_eq!(st.failed_checks, 2);
}

/// A whole deletion in the simulated world: the target comes back, traffic moves to it
/// only once it is ready, and the finalizer may go only `DRAIN` after that.
#[test]
fn deleting_an_initialized_canary_hands_the_app_back_without_a_gap() {
    let s = reverting();
    let mut world = World {
        target_revision: "v1".into(),
        target_replicas: 2,
        primary_revision: None,
        routes: Routes::PRIMARY,
        canary_healthy: true,
        metrics: Verdict::Pass,
        post_rollout_calls: 0,
        at: t0(),
        routes_changed_at: t0(),
        deleting: false,
        finalized: false,
    };
    let mut st = CanaryStatus::default();
    let mut now = t0();
    run(&s, &mut world, &mut st, &mut now);
    assert_eq!(st.phase, Some(Phase::Initialized));
    assert_eq!(world.target_replicas, 0);

    world.deleting = true;
    // The target's pods take a few ticks to become ready.
    world.canary_healthy = false;
    let mut terminated_at = None;
    for tick in 0..50 {
        if tick == 3 {
            world.canary_healthy = true;
        }
        let d = decided(&s, &st, &world.observe(), now);
        world.at = now;
        world.apply(&d.actions);
        st = d.status;
        if st.phase == Some(Phase::Terminated) {
            terminated_at = Some(now);
            break;
        }
        assert_eq!(st.phase, Some(Phase::Terminating));
        if !world.finalized {
            assert_eq!(world.routes, Routes::PRIMARY, "primary serves meanwhile");
        }
        now += chrono::Duration::from_std(d.requeue_after).unwrap();
    }
    let terminated_at = terminated_at.expect("the deletion completes");
    assert!(world.finalized, "traffic handed back");
    assert_eq!(world.routes, Routes::weighted(100));
    assert!(world.target_replicas > 0);
    assert!(
        (terminated_at - world.routes_changed_at).to_std().unwrap() >= DRAIN,
        "finalizer dropped before the data plane moved to the target"
    );
}

#[test]
fn crashing_canary_never_gets_traffic_and_fails_at_the_deadline() {
    let s = settings(canary_strategy());
    let mut world = World {
        target_revision: "v2".into(),
        target_replicas: 0,
        primary_revision: Some("v1".into()),
        routes: Routes::PRIMARY,
        canary_healthy: false,
        metrics: Verdict::Pass,
        post_rollout_calls: 0,
        at: t0(),
        routes_changed_at: t0(),
        deleting: false,
        finalized: false,
    };
    let mut st = status(Phase::Succeeded, "v1");
    let mut now = t0();
    let start = now;
    let trace = run(&s, &mut world, &mut st, &mut now);
    assert_eq!(trace, vec![(Phase::Progressing, 0), (Phase::Failed, 0)]);
    let failed_at = parse_time(st.last_transition_time.as_deref().unwrap()).unwrap();
    let took = (failed_at - start).num_seconds();
    assert!(
        (60..=75).contains(&took),
        "failed after {took}s, deadline 60s"
    );
    assert_eq!(world.primary_revision.as_deref(), Some("v1"));
}

#[test]
fn an_unconfirmed_route_is_reported_with_its_reason_and_alerted() {
    let s = settings(canary_strategy());
    let st = CanaryStatus {
        canary_weight: 20,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let o = Observations {
        route_rejected: Some("HTTPRoute podinfo answered 404 through the gateway".into()),
        ..obs("v2")
    };
    let d = decided(&s, &st, &o, t0() + secs(1));
    assert_eq!(d.status.canary_weight, 0);
    let failed = d
        .events
        .iter()
        .find(|e| e.reason == "Failed")
        .expect("a Failed event");
    assert!(failed.alert, "the alert hears of it");
    assert!(
        failed.message.contains("not confirmed") && failed.message.contains("404"),
        "{}",
        failed.message
    );
    // No analysis ran: the decision came from the route alone.
    assert!(matches!(
        step(&s, &st, &o, t0() + secs(1)),
        Step::Decided(_)
    ));
    // Outside a release: an Error event with an alert, the phase kept.
    let idle = decided(
        &s,
        &status(Phase::Succeeded, "v1"),
        &Observations { ..o.clone() },
        t0(),
    );
    let e = idle
        .events
        .iter()
        .find(|e| e.reason == "RouteNotConfirmed")
        .expect("event");
    assert!(e.alert && e.severity == Severity::Error);
}

fn requested(abort: Option<&str>, promote: Option<&str>, paused: Option<&str>) -> Observations {
    Observations {
        requests: Requests {
            abort: abort.map(Into::into),
            promote: promote.map(Into::into),
            paused: paused.map(Into::into),
        },
        ..with_metrics(obs("v2"), Verdict::Pass)
    }
}

const DRAIN_ROUTES: Routes = Routes {
    primary: 0,
    canary: 100,
    mirror: false,
    mirror_weight: None,
};

/// `kubectl serin abort|promote|pause|resume`: each row a request in the
/// annotations, the phase, actions and weight it leads to, and which request the
/// status then records as acted on.
#[test]
fn steering_requests_table() {
    struct Row {
        name: &'static str,
        status: CanaryStatus,
        obs: Observations,
        gate: Option<Verdict>,
        phase: Phase,
        actions: Vec<Action>,
        weight: u32,
        last_abort: Option<&'static str>,
        last_promote: Option<&'static str>,
        hold: Option<&'static str>,
    }
    let s = settings(canary_strategy());
    // Mid-release at 20%, the step not yet due: only a request moves it now.
    let mid = CanaryStatus {
        canary_weight: 20,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let now = t0() + secs(3);
    let rows = vec![
        Row {
            name: "abort mid-release rolls back at once, not at the next step",
            status: mid.clone(),
            obs: requested(Some("t1"), None, None),
            gate: None,
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
            last_abort: Some("t1"),
            last_promote: None,
            hold: None,
        },
        Row {
            name: "an abort already acted on is no request",
            status: CanaryStatus {
                last_abort: Some("t1".into()),
                ..mid.clone()
            },
            obs: requested(Some("t1"), None, None),
            gate: None,
            phase: Phase::Progressing,
            actions: vec![],
            weight: 20,
            last_abort: Some("t1"),
            last_promote: None,
            hold: None,
        },
        Row {
            name: "abort while paused still rolls back",
            status: mid.clone(),
            obs: requested(Some("t1"), None, Some("t0")),
            gate: None,
            phase: Phase::Failed,
            actions: vec![Action::SetRoutes(Routes::PRIMARY)],
            weight: 0,
            last_abort: Some("t1"),
            last_promote: None,
            hold: None,
        },
        Row {
            name: "abort outside a release is recorded as seen and does nothing",
            status: status(Phase::Succeeded, "v1"),
            obs: Observations {
                requests: Requests {
                    abort: Some("t1".into()),
                    ..Requests::default()
                },
                ..obs("v1")
            },
            gate: None,
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
            last_abort: Some("t1"),
            last_promote: None,
            hold: None,
        },
        Row {
            name: "promote skips the remaining steps and promotes now",
            status: mid.clone(),
            obs: requested(None, Some("t1"), None),
            gate: None,
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(DRAIN_ROUTES)],
            weight: 100,
            last_abort: None,
            last_promote: Some("t1"),
            hold: Some(HOLD_DRAINING),
        },
        Row {
            name: "promote still obeys a closed confirm-promotion gate",
            status: mid.clone(),
            obs: requested(None, Some("t1"), None),
            gate: Some(Verdict::Fail),
            phase: Phase::WaitingPromotion,
            actions: vec![],
            weight: 20,
            last_abort: None,
            // Still pending: the gate opening later promotes without analysis.
            last_promote: None,
            hold: Some("confirm-promotion"),
        },
        Row {
            name: "promote with force goes past the closed gate",
            status: mid.clone(),
            obs: requested(None, Some("force:t1"), None),
            gate: Some(Verdict::Fail),
            phase: Phase::Promoting,
            actions: vec![Action::SetRoutes(DRAIN_ROUTES)],
            weight: 100,
            last_abort: None,
            last_promote: Some("force:t1"),
            hold: Some(HOLD_DRAINING),
        },
        Row {
            name: "a promote already acted on is no request",
            status: CanaryStatus {
                last_promote: Some("t1".into()),
                ..mid.clone()
            },
            obs: requested(None, Some("t1"), None),
            gate: None,
            phase: Phase::Progressing,
            actions: vec![],
            weight: 20,
            last_abort: None,
            last_promote: Some("t1"),
            hold: None,
        },
        Row {
            name: "paused: a due step does not advance, the weight holds",
            status: mid.clone(),
            obs: requested(None, None, Some("t0")),
            gate: None,
            phase: Phase::Progressing,
            actions: vec![],
            weight: 20,
            last_abort: None,
            last_promote: None,
            hold: Some(HOLD_PAUSED),
        },
        Row {
            name: "paused: a new revision does not start a release",
            status: status(Phase::Succeeded, "v1"),
            obs: requested(None, None, Some("t0")),
            gate: None,
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
            last_abort: None,
            last_promote: None,
            hold: Some(HOLD_PAUSED),
        },
        Row {
            name: "paused, the waiting revision withdrawn: the hold goes",
            status: CanaryStatus {
                hold_reason: Some("paused: asked at t0".into()),
                hold_since: Some(t0().to_rfc3339()),
                ..status(Phase::Succeeded, "v1")
            },
            obs: Observations {
                requests: Requests {
                    paused: Some("t0".into()),
                    ..Requests::default()
                },
                ..obs("v1")
            },
            gate: None,
            phase: Phase::Succeeded,
            actions: vec![],
            weight: 0,
            last_abort: None,
            last_promote: None,
            hold: None,
        },
    ];
    for r in rows {
        let mut o = r.obs;
        if let Some(v) = r.gate {
            o.webhook_types.insert(WebhookType::ConfirmPromotion);
            o.checks
                .gates
                .insert(WebhookType::ConfirmPromotion, vec![check("gate", v)]);
        }
        // The "not due" rows are checked at 3 s; pause is checked where a step is due.
        let at = if r.hold == Some(HOLD_PAUSED) {
            t0() + secs(11)
        } else {
            now
        };
        let d = decided(&s, &r.status, &o, at);
        assert_eq!(d.status.phase, Some(r.phase), "{}", r.name);
        assert_eq!(d.actions, r.actions, "{}", r.name);
        assert_eq!(d.status.canary_weight, r.weight, "{}", r.name);
        assert_eq!(d.status.last_abort.as_deref(), r.last_abort, "{}", r.name);
        assert_eq!(
            d.status.last_promote.as_deref(),
            r.last_promote,
            "{}",
            r.name
        );
        let hold = d.status.hold_reason.as_deref();
        match r.hold {
            Some(key) => assert!(
                hold.is_some_and(|h| h.starts_with(key)),
                "{}: hold {hold:?}",
                r.name
            ),
            None => assert_eq!(hold, None, "{}", r.name),
        }
    }
}

/// Pause holds for as long as it is asked, past the progress deadline, and the
/// first tick after `resume` takes the due step.
#[test]
fn pause_holds_past_the_deadline_and_resume_continues() {
    let s = settings(canary_strategy());
    let mut st = CanaryStatus {
        canary_weight: 10,
        last_step_time: Some(t0().to_rfc3339()),
        ..status(Phase::Progressing, "v2")
    };
    let paused = requested(None, None, Some("t0"));
    let mut events = Vec::new();
    for tick in 1..=12 {
        let d = decided(&s, &st, &paused, t0() + secs(tick * 10));
        assert_eq!(d.status.phase, Some(Phase::Progressing), "tick {tick}");
        assert_eq!(d.status.canary_weight, 10, "tick {tick}");
        assert!(d.actions.is_empty(), "tick {tick}: {:?}", d.actions);
        events.extend(d.events.iter().map(|e| e.reason));
        st = d.status;
    }
    assert_eq!(events, ["Paused"], "one event for the whole pause");
    let d = decided(&s, &st, &requested(None, None, None), t0() + secs(130));
    assert_eq!(d.status.canary_weight, 20);
    assert_eq!(d.status.hold_reason, None);
    assert_eq!(
        d.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["Resumed", "Advance"]
    );
}

/// A forced promotion on a release held at the gate does not run the analysis.
#[test]
fn promote_from_waiting_promotion_needs_no_analysis() {
    let s = settings(canary_strategy());
    let st = CanaryStatus {
        canary_weight: 30,
        last_step_time: Some(t0().to_rfc3339()),
        hold_reason: Some("confirm-promotion: closed".into()),
        ..status(Phase::WaitingPromotion, "v2")
    };
    let mut o = requested(None, Some("force:1"), None);
    // No metric results: a machine that tried to analyse would ask for them.
    o.checks.metrics = None;
    o.webhook_types.insert(WebhookType::ConfirmPromotion);
    let d = decided(&s, &st, &o, t0() + secs(1));
    assert_eq!(d.status.phase, Some(Phase::Promoting));
    assert_eq!(d.status.last_promote.as_deref(), Some("force:1"));
}

/// `--max-concurrent-releases`: a new revision without a slot waits in `Waiting`
/// with its place in the queue, unbounded by the progress deadline, and starts as
/// soon as the observe step gives it a slot; a running release is never queued.
#[test]
fn a_queued_revision_waits_its_turn_then_starts() {
    let s = settings(canary_strategy());
    let queued = |position| Observations {
        queued: Some(Queued { position, limit: 2 }),
        ..obs("v2")
    };
    let d = decided(&s, &status(Phase::Succeeded, "v1"), &queued(3), t0());
    assert_eq!(d.status.phase, Some(Phase::Waiting));
    assert!(
        d.actions.is_empty(),
        "nothing scaled or routed: {:?}",
        d.actions
    );
    let reason = d.status.hold_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(HOLD_QUEUED)
            && reason.contains("position 3")
            && reason.contains("2 release slots"),
        "{reason}"
    );
    assert!(
        d.events.iter().any(|e| e.reason == "Queued"),
        "{:?}",
        d.events
    );
    assert!(d.requeue_after <= QUEUE_POLL);

    // Still queued long past the progress deadline: it keeps waiting, the queue
    // position moves, and the time it joined the queue (its order) is kept.
    let later = t0() + secs(3600);
    let d2 = decided(&s, &d.status, &queued(1), later);
    assert_eq!(
        d2.status.phase,
        Some(Phase::Waiting),
        "not failed by the deadline"
    );
    assert_eq!(
        d2.status.hold_since, d.status.hold_since,
        "queue order kept"
    );
    assert!(
        d2.events.is_empty(),
        "one Event on joining the queue: {:?}",
        d2.events
    );

    // A slot: the release starts as any other.
    let d3 = decided(&s, &d2.status, &obs("v2"), later + secs(5));
    assert_eq!(d3.status.phase, Some(Phase::Progressing));
    assert_eq!(d3.actions, vec![Action::ScaleTargetUp]);
    assert_eq!(d3.status.hold_reason, None);

    // The revision is withdrawn while queued: back to the settled phase.
    let d4 = decided(
        &s,
        &d2.status,
        &Observations {
            queued: Some(Queued {
                position: 1,
                limit: 2,
            }),
            ..obs("v1")
        },
        later,
    );
    assert_eq!(d4.status.phase, Some(Phase::Succeeded));
}

#[test]
fn a_running_release_is_never_held_by_the_queue() {
    let s = settings(canary_strategy());
    let mut st = status(Phase::Progressing, "v2");
    st.canary_weight = 10;
    st.last_step_time = Some(t0().to_rfc3339());
    let o = Observations {
        queued: Some(Queued {
            position: 1,
            limit: 1,
        }),
        ..with_metrics(obs("v2"), Verdict::Pass)
    };
    let d = decided(&s, &st, &o, t0() + secs(61));
    assert_eq!(d.status.phase, Some(Phase::Progressing));
    assert!(
        d.status.canary_weight > 10,
        "the step advanced: {:?}",
        d.status
    );
}
