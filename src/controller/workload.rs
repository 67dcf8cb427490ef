//! The target workload and its `-primary` copy: readiness, revision checksums, config
//! tracking, promotion and scaling.
//!
//! Pure functions (no I/O, unit-tested) decide; [`Workloads`] writes. Nothing here
//! reads a kind the controller watches: the observe layer passes the target, the
//! primary, the ConfigMaps/Secrets and the HPAs from its reflector caches.
//!
//! # Pure API
//! ```text
//! enum Workload { Deployment(Deployment), DaemonSet(DaemonSet) }   // From<Deployment>, From<DaemonSet>
//!   kind() -> WorkloadKind, name(), namespace(), metadata(), template() -> Result<&PodTemplateSpec>,
//!   selector_labels(), replicas() -> Option<i32> (None for DaemonSet), is_scaled_to_zero()
//! WorkloadKind::parse(&str) -> Result<WorkloadKind>              // spec.targetRef.kind
//! readiness(&Workload, threshold_percent: u32) -> Readiness       // Ready | NotReady(msg) | Failed(msg)
//! primary_ready(Option<&Workload>, threshold_percent) -> bool     // exists, not at 0, ready
//! service_inputs(&Workload) -> Result<ServiceInputs>
//! config_refs(&PodTemplateSpec) -> Vec<ConfigRef>                // kind, name, optional; key() = "configmap/<name>"
//! trait ConfigSource { configmap(&str) -> Option<ConfigMap>; secret(&str) -> Option<Secret> }
//!   // implemented by ConfigSnapshot and by a pair of closures (Fn(&str)->Option<ConfigMap>, Fn(&str)->Option<Secret>)
//! tracked_configs(&Workload, &dyn ConfigSource) -> Result<TrackedConfigs>   // .checksums() for status.trackedConfigs
//! revision_checksum(&Workload, &TrackedConfigs) -> Result<String> // status.lastAppliedSpec
//! render_primary(&Canary, target, &TrackedConfigs, existing_primary: Option<&Workload>) -> Result<Workload>
//! render_config_copy_configmap / render_config_copy_secret(&Canary, &src) -> Result<copy>
//! check_autoscaler_ref(&Canary) -> Result<Option<&AutoscalerRef>>  // ScaledObject: AutoscalerUnsupported
//! render_primary_hpa(&Canary, HpaVersion, user_hpa: &DynamicObject) -> Result<DynamicObject>
//! hpa_min_replicas(&DynamicObject) -> Option<i32>; primary_hpa_name(&AutoscalerRef) -> String
//! desired_target_replicas(primary: Option<&Workload>, hpa_min: Option<i32>) -> i32
//! ```
//!
//! # I/O API
//! ```text
//! discover_hpa_version(&Client) -> Result<HpaVersion>   // once at start-up; HpaVersion::api_resource() to watch HPAs
//! Workloads::new(Client, HpaVersion)
//!   ensure_primary(&Canary, target, primary: Option<&Workload>, &TrackedConfigs, &dyn ConfigSource) -> Result<bool /*created*/>
//!   promote(&Canary, target, primary: &Workload, &TrackedConfigs, &dyn ConfigSource) -> Result<bool /*changed*/>
//!   ensure_config_copies(&Canary, &TrackedConfigs, &dyn ConfigSource) -> Result<usize /*writes*/>
//!   scale_target(&Canary, target, replicas: i32) -> Result<bool>
//!   scale_target_to_zero(&Canary, target, primary: Option<&Workload>, primary_ready_threshold) -> Result<bool>
//!   revert_target(&Canary, target, primary: Option<&Workload>, hpa_min: Option<i32>) -> Result<bool>
//!   ensure_autoscaler(&Canary, user_hpa: Option<&DynamicObject>, primary_hpa: Option<&DynamicObject>) -> Result<bool>
//! WorkloadError: reason() (CamelCase), is_conflict() (409: requeue), is_not_found(), is_user_error()
//! ```
//! Every write compares first and sends a JSON patch of only what differs (no
//! server-side apply: 1.20 has bugs with it); missing objects are created. A lost race
//! is a [`WorkloadError`] with `is_conflict() == true`: requeue and retry. A create
//! that finds a `-primary` config copy or HPA the caller's cache did not hold falls
//! back to one GET and compares, so those need not be watched.
//!
//! # Scaling
//! The target runs only during analysis. After promotion or rollback it is scaled to 0
//! (DaemonSets cannot scale: Serin adds the node selector `serin.dev/scale-to-zero:
//! "true"` to the target's template, which the revision checksum ignores). When a new
//! revision starts it is scaled to [`desired_target_replicas`]: `minReplicas` of the
//! user's HPA (`autoscalerRef`, which scales the target; see [`hpa_min_replicas`]) when
//! autoscaled, else the primary's replicas, at least 1.
//! `Workloads::scale_target_to_zero` refuses unless [`primary_ready`] holds, so the
//! target is never left at 0 with nothing serving.

mod autoscaler;
mod configs;
mod error;
mod io;
mod patch;
mod primary;
mod readiness;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

pub use crate::router::ServiceInputs;
pub use autoscaler::{
    HPA_KIND, HpaVersion, check_autoscaler_ref, discover_hpa_version, hpa_min_replicas,
    primary_hpa_name, render_primary_hpa,
};
pub use configs::{
    ConfigKind, ConfigRef, ConfigSnapshot, ConfigSource, TrackedConfigs, config_refs,
    render_config_copy_configmap, render_config_copy_secret, tracked_configs,
};
pub use error::WorkloadError;
pub use io::Workloads;
pub use patch::add_finalizer_patch;
pub use primary::{desired_target_replicas, render_primary, restore_replicas, revision_checksum};
pub use readiness::{Readiness, primary_ready, readiness};

/// Node selector that keeps a "scaled to zero" DaemonSet target's pods off every node.
pub const SCALE_TO_ZERO_NODE_SELECTOR: &str = "serin.dev/scale-to-zero";
/// Annotation on a ConfigMap/Secret that opts it out of tracking (Serin's key).
pub const CONFIG_TRACKING_ANNOTATION: &str = "serin.dev/config-tracking";
/// Flagger's key for the same, accepted so Flagger manifests behave the same.
pub const FLAGGER_CONFIG_TRACKING_ANNOTATION: &str = "flagger.app/config-tracking";
/// Annotation on the primary's pod template carrying the revision checksum. A config
/// change leaves the template's `-primary` references unchanged, so without it the
/// primary pods would not roll when only a ConfigMap or Secret changed (Flagger uses
/// a random `flagger-id` for this; a checksum keeps promotion idempotent).
pub const REVISION_ANNOTATION: &str = "serin.dev/revision";

/// Labels tried, in order, to find the target's pod selector label (as Flagger).
pub const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];

/// Annotations never copied to generated objects: they describe the source object.
const NON_COPIED_ANNOTATIONS: [&str; 2] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
}

impl WorkloadKind {
    /// Parses `spec.targetRef.kind`.
    pub fn parse(kind: &str) -> Result<WorkloadKind, WorkloadError> {
        match kind {
            "Deployment" => Ok(WorkloadKind::Deployment),
            "DaemonSet" => Ok(WorkloadKind::DaemonSet),
            other => Err(WorkloadError::UnsupportedKind(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target or primary workload, as read from the API server.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    DaemonSet(DaemonSet),
}

impl From<Deployment> for Workload {
    fn from(d: Deployment) -> Self {
        Workload::Deployment(d)
    }
}

impl From<DaemonSet> for Workload {
    fn from(d: DaemonSet) -> Self {
        Workload::DaemonSet(d)
    }
}

/// Serializes as the inner object (with its `apiVersion` and `kind`).
impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workload::Deployment(d) => d.serialize(s),
            Workload::DaemonSet(d) => d.serialize(s),
        }
    }
}

impl Workload {
    pub fn kind(&self) -> WorkloadKind {
        match self {
            Workload::Deployment(_) => WorkloadKind::Deployment,
            Workload::DaemonSet(_) => WorkloadKind::DaemonSet,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The pod template; objects from the API server always have one.
    pub fn template(&self) -> Result<&PodTemplateSpec, WorkloadError> {
        let template = match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| &s.template),
        };
        template.ok_or_else(|| self.missing_spec())
    }

    /// `spec.selector.matchLabels`, if any.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
        }
    }

    /// Desired replicas of a Deployment (the API server defaults an unset value to 1);
    /// `None` for a DaemonSet, whose pod count follows the nodes.
    pub fn replicas(&self) -> Option<i32> {
        match self {
            Workload::Deployment(d) => Some(d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)),
            Workload::DaemonSet(_) => None,
        }
    }

    /// Whether Serin's "scaled to 0" state holds: 0 replicas, or for a DaemonSet the
    /// scale-to-zero node selector.
    pub fn is_scaled_to_zero(&self) -> bool {
        match self {
            Workload::Deployment(_) => self.replicas() == Some(0),
            Workload::DaemonSet(d) => d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.node_selector.as_ref())
                .is_some_and(|ns| ns.contains_key(SCALE_TO_ZERO_NODE_SELECTOR)),
        }
    }

    fn missing_spec(&self) -> WorkloadError {
        WorkloadError::MissingSpec {
            kind: self.kind().as_str(),
            name: self.name().to_string(),
        }
    }
}

/// What routers need from the target: the selector label (first of `app`, `name`,
/// `app.kubernetes.io/name` in `spec.selector.matchLabels`, which must also label the
/// pod template) and the containers' ports for `service.portDiscovery`.
pub fn service_inputs(target: &Workload) -> Result<ServiceInputs, WorkloadError> {
    let kind = target.kind().as_str();
    let name = target.name().to_string();
    let selector = target.selector_labels();
    let (key, value) = SELECTOR_LABELS
        .iter()
        .find_map(|k| {
            selector
                .and_then(|s| s.get(*k))
                .map(|v| (k.to_string(), v.clone()))
        })
        .ok_or_else(|| WorkloadError::NoSelectorLabel {
            kind,
            name: name.clone(),
        })?;
    let template = target.template()?;
    let template_value = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(&key));
    if template_value != Some(&value) {
        // The API server rejects such a Deployment, but a hand-built object must not
        // yield a primary whose selector matches no pod.
        return Err(WorkloadError::TemplateLabelMismatch {
            kind,
            name,
            key,
            value,
        });
    }
    let container_ports = template
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .cloned()
        .collect();
    Ok(ServiceInputs {
        label_key: key,
        label_value: value,
        container_ports,
    })
}

/// Hex SHA-256 of a JSON value serialized with object keys sorted at every level, so
/// the hash does not depend on map ordering (e.g. `serde_json`'s `preserve_order`
/// feature being switched on by some other crate).
pub(crate) fn canonical_sha256(value: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    hex::encode(hasher.finalize())
}

fn write_canonical(value: &serde_json::Value, h: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(Value::String(k.clone()).to_string().as_bytes());
                h.update(b":");
                if let Some(v) = map.get(k) {
                    write_canonical(v, h);
                }
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                write_canonical(v, h);
            }
            h.update(b"]");
        }
        scalar => h.update(scalar.to_string().as_bytes()),
    }
}

/// Copies the annotations that describe the object's content, not its history.
pub(crate) fn copied_annotations(
    src: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    src.into_iter()
        .flatten()
        .filter(|(k, _)| !NON_COPIED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(
            WorkloadKind::parse("Deployment").ok(),
            Some(WorkloadKind::Deployment)
        );
        assert_eq!(
            WorkloadKind::parse("DaemonSet").ok(),
            Some(WorkloadKind::DaemonSet)
        );
        let err = WorkloadKind::parse("StatefulSet").unwrap_err();
        assert_eq!(err.reason(), "TargetKindUnsupported");
        assert!(err.to_string().contains("\"StatefulSet\""));
    }

    #[test]
    fn service_inputs_pick_first_known_label() {
        // (selector and template labels, expected (key, value) or an error)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (&[("app", "podinfo")], Some(("app", "podinfo"))),
            (&[("name", "x"), ("app", "y")], Some(("app", "y"))),
            (
                &[("app.kubernetes.io/name", "z"), ("name", "n")],
                Some(("name", "n")),
            ),
            (
                &[("app.kubernetes.io/name", "z")],
                Some(("app.kubernetes.io/name", "z")),
            ),
            (&[("tier", "web")], None),
        ];
        for (labels, want) in cases {
            let w = Workload::Deployment(deployment_with_labels("podinfo", labels));
            match (service_inputs(&w), want) {
                (Ok(si), Some((k, v))) => {
                    assert_eq!((si.label_key.as_str(), si.label_value.as_str()), (*k, *v));
                    assert_eq!(si.container_ports.len(), 1);
                    assert_eq!(si.container_ports[0].container_port, 9898);
                }
                (Err(e), None) => {
                    assert_eq!(e.reason(), "TargetSelectorInvalid");
                    assert!(
                        e.to_string().contains("must contain one of app, name"),
                        "{e}"
                    );
                }
                (got, want) => panic!("labels {labels:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn service_inputs_reject_template_not_matching_selector() {
        let mut d = deployment("podinfo");
        if let Some(spec) = d.spec.as_mut() {
            spec.template.metadata = None;
        }
        let err = service_inputs(&Workload::Deployment(d)).unwrap_err();
        assert!(
            matches!(err, WorkloadError::TemplateLabelMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn canonical_hash_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"s"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[{"p":3,"q":2},1]},"b":1}"#).unwrap();
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        assert_ne!(
            canonical_sha256(&a),
            canonical_sha256(&c),
            "array order is meaningful"
        );
        assert_eq!(canonical_sha256(&a).len(), 64);
    }

    #[test]
    fn scaled_to_zero() {
        let mut d = deployment("podinfo");
        assert!(!Workload::Deployment(d.clone()).is_scaled_to_zero());
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(0);
        }
        assert!(Workload::Deployment(d).is_scaled_to_zero());
        let mut ds = daemonset("agent");
        assert!(!Workload::DaemonSet(ds.clone()).is_scaled_to_zero());
        set_scale_to_zero(&mut ds);
        let w = Workload::DaemonSet(ds);
        assert!(w.is_scaled_to_zero());
        assert_eq!(w.replicas(), None);
    }
}
