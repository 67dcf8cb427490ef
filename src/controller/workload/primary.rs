//! The `-primary` workload rendered from the target, and the revision checksum that
//! tells a new release from the one already promoted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::configs::{apply_primary_configs, owned_meta};
use super::{
    REVISION_ANNOTATION, SCALE_TO_ZERO_NODE_SELECTOR, TrackedConfigs, Workload, WorkloadError,
    canonical_sha256, service_inputs,
};
use crate::crd::Canary;

/// The target's template without what Serin itself puts on the target (the DaemonSet
/// scale-to-zero node selector), so scaling never looks like a new revision.
fn user_template(target: &Workload) -> Result<PodTemplateSpec, WorkloadError> {
    let mut t = target.template()?.clone();
    if let Some(spec) = t.spec.as_mut()
        && let Some(ns) = spec.node_selector.as_mut()
    {
        ns.remove(SCALE_TO_ZERO_NODE_SELECTOR);
        if ns.is_empty() {
            // The API server drops empty maps; keep the same shape so hashes and
            // comparisons agree with what it returns.
            spec.node_selector = None;
        }
    }
    Ok(t)
}

/// Checksum of a revision: the target's pod template (labels, annotations and spec,
/// minus Serin's own scale-to-zero selector) and the checksums of its tracked configs.
/// Replicas are not part of it (they live outside the template). Flagger's
/// `lastAppliedSpec`.
pub fn revision_checksum(
    target: &Workload,
    tracked: &TrackedConfigs,
) -> Result<String, WorkloadError> {
    let template = serde_json::to_value(user_template(target)?).map_err(|e| {
        WorkloadError::serde(
            format!("serializing the pod template of {}", target.name()),
            e,
        )
    })?;
    Ok(canonical_sha256(&serde_json::json!({
        "template": template,
        "configs": tracked.checksums(),
    })))
}

/// Replicas to give the target when a new revision starts (it sits at 0 between
/// releases): `minReplicas` of the user's HPA (which scales the target) if the Canary
/// is autoscaled, as Flagger does, else the primary's
/// replicas, and never less than 1 so that the canary can be analysed. Serin does not
/// record the target's original replicas (Flagger does not either): the primary
/// carries the user's replicas from the first initialisation on.
pub fn desired_target_replicas(primary: Option<&Workload>, hpa_min_replicas: Option<i32>) -> i32 {
    hpa_min_replicas
        .or_else(|| primary.and_then(Workload::replicas))
        .unwrap_or(1)
        .max(1)
}

/// The replicas to give the target back when its Canary is deleted, or `None` when it
/// already has enough. It takes over all the traffic the primary serves, so it gets
/// the primary's replicas (which a primary HPA may have raised), never fewer than the
/// user's HPA minimum or 1; it is only scaled up, the user's HPA takes it from there.
pub fn restore_replicas(
    target: &Workload,
    primary: Option<&Workload>,
    hpa_min_replicas: Option<i32>,
) -> Option<i32> {
    let want = primary
        .and_then(Workload::replicas)
        .into_iter()
        .chain(hpa_min_replicas)
        .max()
        .unwrap_or(1)
        .max(1);
    if target.is_scaled_to_zero() {
        return Some(want);
    }
    target.replicas().filter(|have| *have < want).map(|_| want)
}

/// The primary as it should be for the target's current revision.
///
/// - name `<target>-primary`, the Canary's namespace, a controller owner reference to
///   the Canary, the target's labels and annotations plus `managed-by: serin`;
/// - selector and pod label `<label_key>: <label_value>-primary` (an existing primary
///   keeps its selector: it is immutable);
/// - the target's pod template, with tracked config references renamed to their
///   `-primary` copies and the revision checksum as a pod annotation;
/// - replicas: a new primary gets the target's replicas (at least 1); an existing one
///   keeps its replicas if the Canary has an autoscaler (the HPA owns them) or the
///   target is at 0, else takes the target's.
pub fn render_primary(
    canary: &Canary,
    target: &Workload,
    tracked: &TrackedConfigs,
    existing: Option<&Workload>,
) -> Result<Workload, WorkloadError> {
    let inputs = service_inputs(target)?;
    let primary_value = format!("{}-primary", inputs.label_value);
    let revision = revision_checksum(target, tracked)?;

    let mut template = user_template(target)?;
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(inputs.label_key.clone(), primary_value.clone());
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_ANNOTATION.to_string(), revision);
    if let Some(spec) = template.spec.as_mut() {
        apply_primary_configs(spec, tracked);
    }

    let mut metadata = owned_meta(canary, canary.primary_name(), target.metadata())?;
    if let Some(labels) = metadata.labels.as_mut()
        && labels.contains_key(&inputs.label_key)
    {
        labels.insert(inputs.label_key.clone(), primary_value.clone());
    }

    let selector = existing
        .and_then(|p| match p {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| s.selector.clone()),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| s.selector.clone()),
        })
        .unwrap_or_else(|| LabelSelector {
            match_labels: Some(BTreeMap::from([(inputs.label_key.clone(), primary_value)])),
            match_expressions: None,
        });

    Ok(match target {
        Workload::Deployment(d) => {
            let spec = d.spec.as_ref().ok_or_else(|| WorkloadError::MissingSpec {
                kind: "Deployment",
                name: target.name().to_string(),
            })?;
            let target_replicas = spec.replicas.unwrap_or(1);
            let existing_replicas = existing.and_then(Workload::replicas);
            let replicas = match existing_replicas {
                None => target_replicas.max(1),
                Some(have) if canary.spec.autoscaler_ref.is_some() || target_replicas < 1 => have,
                Some(_) => target_replicas,
            };
            Workload::Deployment(Deployment {
                metadata,
                spec: Some(DeploymentSpec {
                    replicas: Some(replicas),
                    selector,
                    template,
                    strategy: spec.strategy.clone(),
                    min_ready_seconds: spec.min_ready_seconds,
                    revision_history_limit: spec.revision_history_limit,
                    progress_deadline_seconds: spec.progress_deadline_seconds,
                    paused: None,
                }),
                status: None,
            })
        }
        Workload::DaemonSet(d) => {
            let spec = d.spec.as_ref().ok_or_else(|| WorkloadError::MissingSpec {
                kind: "DaemonSet",
                name: target.name().to_string(),
            })?;
            Workload::DaemonSet(DaemonSet {
                metadata,
                spec: Some(DaemonSetSpec {
                    selector,
                    template,
                    update_strategy: spec.update_strategy.clone(),
                    min_ready_seconds: spec.min_ready_seconds,
                    revision_history_limit: spec.revision_history_limit,
                }),
                status: None,
            })
        }
    })
}

/// JSON-pointer paths of the primary's spec that promotion owns.
pub(crate) fn managed_spec_paths(w: &Workload) -> &'static [&'static str] {
    match w {
        Workload::Deployment(_) => &[
            "/spec/template",
            "/spec/replicas",
            "/spec/strategy",
            "/spec/minReadySeconds",
            "/spec/revisionHistoryLimit",
            "/spec/progressDeadlineSeconds",
        ],
        Workload::DaemonSet(_) => &[
            "/spec/template",
            "/spec/updateStrategy",
            "/spec/minReadySeconds",
            "/spec/revisionHistoryLimit",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ConfigSnapshot, config_refs, tracked_configs};
    use super::*;
    use crate::crd::{AutoscalerRef, CANARY_ANNOTATION, MANAGED_BY_LABEL};

    fn tracked_for(target: &Workload, cms: &[(&str, &str)]) -> TrackedConfigs {
        let mut src = ConfigSnapshot::default();
        for (name, value) in cms {
            src.insert_configmap(configmap(name, &[("key", value)]));
        }
        tracked_configs(target, &src).unwrap()
    }

    #[test]
    fn checksum_is_stable_and_follows_template_and_configs() {
        let target = Workload::Deployment(deployment_with_configmap_volume("podinfo", "settings"));
        let t1 = tracked_for(&target, &[("settings", "a")]);
        let c1 = revision_checksum(&target, &t1).unwrap();
        assert_eq!(c1, revision_checksum(&target, &t1).unwrap());
        assert_eq!(c1.len(), 64);

        // Same object decoded from JSON with a different key order.
        let json = serde_json::to_string(&target_as_reordered_json(&target)).unwrap();
        let reparsed: Deployment = serde_json::from_str(&json).unwrap();
        assert_eq!(
            c1,
            revision_checksum(&Workload::Deployment(reparsed), &t1).unwrap()
        );

        // A tracked ConfigMap changes: a new revision.
        let t2 = tracked_for(&target, &[("settings", "b")]);
        assert_ne!(c1, revision_checksum(&target, &t2).unwrap());

        // The image changes: a new revision.
        let mut d = deployment_with_configmap_volume("podinfo", "settings");
        set_image(&mut d, "ghcr.io/stefanprodan/podinfo:6.1.0");
        assert_ne!(
            c1,
            revision_checksum(&Workload::Deployment(d.clone()), &t1).unwrap()
        );

        // Replicas change: not a revision.
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(7);
        }
        let mut same = deployment_with_configmap_volume("podinfo", "settings");
        if let Some(s) = same.spec.as_mut() {
            s.replicas = Some(0);
        }
        assert_eq!(
            c1,
            revision_checksum(&Workload::Deployment(same), &t1).unwrap()
        );
    }

    #[test]
    fn checksum_ignores_daemonset_scale_to_zero_selector() {
        let ds = daemonset("agent");
        let tracked = TrackedConfigs::default();
        let before = revision_checksum(&Workload::DaemonSet(ds.clone()), &tracked).unwrap();
        let mut zero = ds.clone();
        set_scale_to_zero(&mut zero);
        assert_eq!(
            before,
            revision_checksum(&Workload::DaemonSet(zero), &tracked).unwrap()
        );
        // A user node selector is part of the revision, alongside Serin's one.
        let mut user = ds;
        set_node_selector(&mut user, "disk", "ssd");
        let with_user = revision_checksum(&Workload::DaemonSet(user.clone()), &tracked).unwrap();
        assert_ne!(before, with_user);
        set_scale_to_zero(&mut user);
        assert_eq!(
            with_user,
            revision_checksum(&Workload::DaemonSet(user), &tracked).unwrap()
        );
    }

    #[test]
    fn primary_deployment_is_rendered_from_target() {
        let canary = canary("podinfo");
        let mut d = deployment_with_configmap_volume("podinfo", "settings");
        d.metadata.labels = Some(BTreeMap::from([
            ("app".to_string(), "podinfo".to_string()),
            ("team".to_string(), "web".to_string()),
        ]));
        d.metadata.annotations = Some(BTreeMap::from([
            (
                "deployment.kubernetes.io/revision".to_string(),
                "3".to_string(),
            ),
            ("owner".to_string(), "me".to_string()),
        ]));
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(3);
            s.min_ready_seconds = Some(5);
            if let Some(m) = s.template.metadata.as_mut() {
                m.annotations = Some(BTreeMap::from([(
                    "prometheus.io/scrape".to_string(),
                    "true".to_string(),
                )]));
            }
        }
        let target = Workload::Deployment(d);
        let tracked = tracked_for(&target, &[("settings", "a")]);
        let Workload::Deployment(p) = render_primary(&canary, &target, &tracked, None).unwrap()
        else {
            panic!("a Deployment target renders a Deployment primary");
        };
        let meta = &p.metadata;
        assert_eq!(meta.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(meta.namespace.as_deref(), Some("test"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("app").map(String::as_str),
            Some("podinfo-primary")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some("serin")
        );
        let ann = meta.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("owner").map(String::as_str), Some("me"));
        assert_eq!(
            ann.get(CANARY_ANNOTATION).map(String::as_str),
            Some("podinfo")
        );
        assert!(!ann.contains_key("deployment.kubernetes.io/revision"));
        let owner = &meta.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Canary", "podinfo", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));

        let spec = p.spec.unwrap_or_default();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.min_ready_seconds, Some(5));
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([(
                "app".to_string(),
                "podinfo-primary".to_string()
            )]))
        );
        let tmeta = spec.template.metadata.clone().unwrap_or_default();
        assert_eq!(
            tmeta
                .labels
                .unwrap_or_default()
                .get("app")
                .map(String::as_str),
            Some("podinfo-primary")
        );
        let tann = tmeta.annotations.unwrap_or_default();
        assert_eq!(
            tann.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            tann.get(REVISION_ANNOTATION),
            Some(&revision_checksum(&target, &tracked).unwrap())
        );
        let refs: Vec<String> = config_refs(&spec.template)
            .into_iter()
            .map(|r| r.key())
            .collect();
        assert_eq!(refs, ["configmap/settings-primary"]);
    }

    #[test]
    fn primary_replicas_rules() {
        let canary_plain = canary("podinfo");
        let mut canary_hpa = canary("podinfo");
        canary_hpa.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: "autoscaling/v2".into(),
            kind: "HorizontalPodAutoscaler".into(),
            name: "podinfo".into(),
            ..Default::default()
        });
        let with_replicas = |n: i32| {
            let mut d = deployment("podinfo");
            if let Some(s) = d.spec.as_mut() {
                s.replicas = Some(n);
            }
            Workload::Deployment(d)
        };
        let existing = with_replicas(4);
        // (canary, target replicas, existing primary, want)
        let cases: Vec<(&Canary, i32, Option<&Workload>, i32)> = vec![
            (&canary_plain, 3, None, 3),
            (&canary_plain, 0, None, 1),
            (&canary_plain, 2, Some(&existing), 2),
            (&canary_plain, 0, Some(&existing), 4),
            (&canary_hpa, 2, Some(&existing), 4),
            (&canary_hpa, 2, None, 2),
        ];
        let tracked = TrackedConfigs::default();
        for (c, target_replicas, existing, want) in cases {
            let p = render_primary(c, &with_replicas(target_replicas), &tracked, existing).unwrap();
            assert_eq!(
                p.replicas(),
                Some(want),
                "target {target_replicas}, existing {:?}, hpa {}",
                existing.and_then(Workload::replicas),
                c.spec.autoscaler_ref.is_some()
            );
        }
    }

    #[test]
    fn existing_primary_keeps_its_selector() {
        let canary = canary("podinfo");
        let mut old = deployment("podinfo-primary");
        if let Some(s) = old.spec.as_mut() {
            s.selector.match_labels = Some(BTreeMap::from([(
                "name".to_string(),
                "legacy-primary".to_string(),
            )]));
        }
        let p = render_primary(
            &canary,
            &Workload::Deployment(deployment("podinfo")),
            &TrackedConfigs::default(),
            Some(&Workload::Deployment(old)),
        )
        .unwrap();
        assert_eq!(
            p.selector_labels()
                .and_then(|l| l.get("name"))
                .map(String::as_str),
            Some("legacy-primary")
        );
    }

    #[test]
    fn primary_daemonset_drops_scale_to_zero_selector() {
        let canary = canary("agent");
        let mut ds = daemonset("agent");
        set_node_selector(&mut ds, "disk", "ssd");
        set_scale_to_zero(&mut ds);
        let target = Workload::DaemonSet(ds);
        let Workload::DaemonSet(p) =
            render_primary(&canary, &target, &TrackedConfigs::default(), None).unwrap()
        else {
            panic!("a DaemonSet target renders a DaemonSet primary");
        };
        let ns = p
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        assert_eq!(
            ns,
            BTreeMap::from([("disk".to_string(), "ssd".to_string())])
        );
        assert_eq!(p.metadata.name.as_deref(), Some("agent-primary"));
        assert_eq!(
            p.spec.and_then(|s| s.selector.match_labels),
            Some(BTreeMap::from([(
                "app".to_string(),
                "agent-primary".to_string()
            )]))
        );
    }

    #[test]
    fn target_replicas_when_a_revision_starts() {
        let mut d = deployment("podinfo-primary");
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(3);
        }
        let primary = Workload::Deployment(d);
        assert_eq!(desired_target_replicas(Some(&primary), None), 3);
        assert_eq!(desired_target_replicas(Some(&primary), Some(2)), 2);
        assert_eq!(desired_target_replicas(None, None), 1);
        assert_eq!(desired_target_replicas(None, Some(0)), 1);
        let ds = Workload::DaemonSet(daemonset("agent-primary"));
        assert_eq!(desired_target_replicas(Some(&ds), None), 1);
    }

    #[test]
    fn restore_replicas_takes_over_what_the_primary_serves_with() {
        let mut primary = deployment("podinfo-primary");
        primary.spec.as_mut().unwrap().replicas = Some(5);
        let primary = Workload::Deployment(primary);
        let mut zero = deployment("podinfo");
        zero.spec.as_mut().unwrap().replicas = Some(0);
        let zero = Workload::Deployment(zero);
        // At zero: the primary's replicas, or the HPA minimum if higher.
        assert_eq!(restore_replicas(&zero, Some(&primary), None), Some(5));
        assert_eq!(restore_replicas(&zero, Some(&primary), Some(7)), Some(7));
        assert_eq!(restore_replicas(&zero, None, None), Some(1));
        // Mid-release with fewer pods than the primary: up to the primary's.
        let two = Workload::Deployment(deployment("podinfo"));
        assert_eq!(restore_replicas(&two, Some(&primary), None), Some(5));
        // Never scaled down.
        assert_eq!(restore_replicas(&two, None, Some(1)), None);
    }
}
