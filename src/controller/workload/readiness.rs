//! Whether a workload's rollout has finished, as Flagger judges it. Pure: the
//! progress deadline of the analysis is the state machine's business; here only the
//! Deployment controller's own `ProgressDeadlineExceeded` verdict counts as failure.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};

use super::Workload;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still rolling out; the message says what is awaited.
    NotReady(String),
    /// Will not become ready without a change (the progress deadline passed).
    Failed(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// Readiness of a Deployment or DaemonSet: the controller has seen the latest spec,
/// every replica runs the current template, and at least `threshold_percent` of the
/// desired replicas are available (rounded up: 50% of 3 needs 2).
pub fn readiness(w: &Workload, threshold_percent: u32) -> Readiness {
    let threshold = threshold_percent.min(100);
    match w {
        Workload::Deployment(d) => deployment_readiness(d, threshold),
        Workload::DaemonSet(d) => daemonset_readiness(d, threshold),
    }
}

/// The fact the act layer needs before scaling the target to 0: a primary exists and
/// serves.
pub fn primary_ready(primary: Option<&Workload>, threshold_percent: u32) -> bool {
    primary.is_some_and(|p| !p.is_scaled_to_zero() && readiness(p, threshold_percent).is_ready())
}

/// Replicas needed available: ceil(desired * threshold / 100), in integers so that 100%
/// of 3 is exactly 3.
fn needed(desired: i32, threshold: u32) -> i64 {
    let desired = i64::from(desired.max(0));
    // Both factors are non-negative, so adding 99 rounds up.
    (desired * i64::from(threshold) + 99) / 100
}

fn deployment_readiness(d: &Deployment, threshold: u32) -> Readiness {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let Some(status) = d.status.as_ref() else {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: deployment {name} has no status yet"
        ));
    };
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: observed deployment {name} generation less than desired generation"
        ));
    }
    // Only trusted once the controller has observed the current generation: an old
    // deadline verdict says nothing about a new template.
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return Readiness::Failed(format!("deployment {name} exceeded its progress deadline"));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {updated} out of {desired} new replicas have been updated"
        ));
    }
    if total > updated {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {} old replicas are pending termination",
            total - updated
        ));
    }
    let need = needed(desired, threshold);
    if i64::from(available) < need {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {available} of {need} (readyThreshold {threshold}%) updated replicas are available"
        ));
    }
    Readiness::Ready
}

fn daemonset_readiness(d: &DaemonSet, threshold: u32) -> Readiness {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let Some(status) = d.status.as_ref() else {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: daemonset {name} has no status yet"
        ));
    };
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: observed daemonset {name} generation less than desired generation"
        ));
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {updated} out of {desired} scheduled pods have been updated"
        ));
    }
    let need = needed(desired, threshold);
    if i64::from(available) < need {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {available} of {need} (readyThreshold {threshold}%) updated pods are available"
        ));
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentCondition, DeploymentStatus};

    struct DepCase {
        name: &'static str,
        generation: i64,
        observed: i64,
        desired: i32,
        replicas: i32,
        updated: i32,
        available: i32,
        deadline: bool,
        threshold: u32,
        want: &'static str,
    }

    fn verdict(r: &Readiness) -> String {
        match r {
            Readiness::Ready => "ready".into(),
            Readiness::NotReady(m) => format!("waiting: {m}"),
            Readiness::Failed(m) => format!("failed: {m}"),
        }
    }

    #[test]
    fn deployment_table() {
        let base = DepCase {
            name: "",
            generation: 2,
            observed: 2,
            desired: 3,
            replicas: 3,
            updated: 3,
            available: 3,
            deadline: false,
            threshold: 100,
            want: "",
        };
        let cases = [
            DepCase {
                name: "all available",
                want: "ready",
                ..base
            },
            DepCase {
                name: "old generation",
                observed: 1,
                want: "waiting: waiting for rollout to finish: observed deployment podinfo generation less than desired generation",
                ..base
            },
            DepCase {
                name: "not all updated",
                updated: 1,
                available: 1,
                want: "waiting: waiting for rollout to finish: 1 out of 3 new replicas have been updated",
                ..base
            },
            DepCase {
                name: "old pending termination",
                replicas: 4,
                want: "waiting: waiting for rollout to finish: 1 old replicas are pending termination",
                ..base
            },
            DepCase {
                name: "1 of 3 available",
                available: 1,
                want: "waiting: waiting for rollout to finish: 1 of 3 (readyThreshold 100%) updated replicas are available",
                ..base
            },
            DepCase {
                name: "threshold 50 rounds up",
                available: 1,
                threshold: 50,
                want: "waiting: waiting for rollout to finish: 1 of 2 (readyThreshold 50%) updated replicas are available",
                ..base
            },
            DepCase {
                name: "threshold 50 met",
                available: 2,
                threshold: 50,
                want: "ready",
                ..base
            },
            DepCase {
                name: "deadline exceeded",
                available: 0,
                deadline: true,
                want: "failed: deployment podinfo exceeded its progress deadline",
                ..base
            },
            DepCase {
                name: "stale deadline ignored until observed",
                observed: 1,
                deadline: true,
                want: "waiting: waiting for rollout to finish: observed deployment podinfo generation less than desired generation",
                ..base
            },
            DepCase {
                name: "scaled to zero",
                desired: 0,
                replicas: 0,
                updated: 0,
                available: 0,
                want: "ready",
                ..base
            },
            DepCase {
                name: "threshold above 100 clamped",
                threshold: 150,
                want: "ready",
                ..base
            },
        ];
        for c in cases {
            let mut d = deployment("podinfo");
            d.metadata.generation = Some(c.generation);
            if let Some(s) = d.spec.as_mut() {
                s.replicas = Some(c.desired);
            }
            d.status = Some(DeploymentStatus {
                observed_generation: Some(c.observed),
                replicas: Some(c.replicas),
                updated_replicas: Some(c.updated),
                available_replicas: Some(c.available),
                conditions: c.deadline.then(|| {
                    vec![DeploymentCondition {
                        type_: "Progressing".into(),
                        status: "False".into(),
                        reason: Some("ProgressDeadlineExceeded".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            });
            let got = verdict(&readiness(&Workload::Deployment(d), c.threshold));
            assert_eq!(got, c.want, "case {:?}", c.name);
        }
    }

    #[test]
    fn deployment_without_status_waits() {
        let r = readiness(&Workload::Deployment(deployment("podinfo")), 100);
        assert!(
            matches!(r, Readiness::NotReady(ref m) if m.contains("no status")),
            "{r:?}"
        );
    }

    #[test]
    fn daemonset_table() {
        // (desired, updated, available, threshold, want)
        let cases: &[(i32, i32, i32, u32, &str)] = &[
            (3, 3, 3, 100, "ready"),
            (
                3,
                2,
                2,
                100,
                "waiting: waiting for rollout to finish: 2 out of 3 scheduled pods have been updated",
            ),
            (
                3,
                3,
                1,
                100,
                "waiting: waiting for rollout to finish: 1 of 3 (readyThreshold 100%) updated pods are available",
            ),
            (3, 3, 2, 60, "ready"),
            (0, 0, 0, 100, "ready"),
        ];
        for &(desired, updated, available, threshold, want) in cases {
            let mut d = daemonset("agent");
            d.metadata.generation = Some(1);
            d.status = Some(DaemonSetStatus {
                observed_generation: Some(1),
                desired_number_scheduled: desired,
                updated_number_scheduled: Some(updated),
                number_available: Some(available),
                ..Default::default()
            });
            let got = verdict(&readiness(&Workload::DaemonSet(d), threshold));
            assert_eq!(
                got, want,
                "case {desired}/{updated}/{available}@{threshold}"
            );
        }
    }

    #[test]
    fn primary_ready_needs_a_serving_primary() {
        assert!(!primary_ready(None, 100));
        let mut d = deployment("podinfo-primary");
        d.metadata.generation = Some(1);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        });
        assert!(primary_ready(Some(&Workload::Deployment(d.clone())), 100));
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(0);
        }
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(
            !primary_ready(Some(&Workload::Deployment(d)), 100),
            "a primary at 0 replicas serves nothing"
        );
    }
}
