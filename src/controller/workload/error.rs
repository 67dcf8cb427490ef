//! Errors of the workload layer. Each carries enough context (kind, namespace, name)
//! to be shown as the Canary's one-line condition message; none ever carries the
//! contents of a ConfigMap or Secret.

use super::ConfigKind;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("spec.targetRef.kind {0:?} is not supported: use Deployment or DaemonSet")]
    UnsupportedKind(String),

    #[error("{kind} {name} has no spec")]
    MissingSpec { kind: &'static str, name: String },

    #[error(
        "{kind} {name}: spec.selector.matchLabels must contain one of app, name, app.kubernetes.io/name"
    )]
    NoSelectorLabel { kind: &'static str, name: String },

    #[error(
        "{kind} {name}: the pod template labels must carry {key}={value} like spec.selector.matchLabels"
    )]
    TemplateLabelMismatch {
        kind: &'static str,
        name: String,
        key: String,
        value: String,
    },

    #[error("{kind} {name} referenced by the pod template of {target} does not exist")]
    ConfigNotFound {
        kind: ConfigKind,
        name: String,
        target: String,
    },

    #[error(
        "spec.autoscalerRef.kind {0:?} is not supported: use HorizontalPodAutoscaler (KEDA ScaledObject support is not implemented)"
    )]
    UnsupportedAutoscaler(String),

    #[error("HorizontalPodAutoscaler {name} referenced by spec.autoscalerRef does not exist")]
    AutoscalerNotFound { name: String },

    #[error("HorizontalPodAutoscaler {name}: {why}")]
    InvalidAutoscaler { name: String, why: String },

    #[error("the cluster serves neither autoscaling/v2 nor autoscaling/v2beta2 (served: {0})")]
    NoHpaApi(String),

    #[error(
        "{object} already exists and is controlled by {owner}: Serin does not take it over; delete it or rename the target"
    )]
    OwnedByOther { object: String, owner: String },

    #[error(
        "{object} already exists and was not created by Serin (no controller, no app.kubernetes.io/managed-by=serin label): Serin does not overwrite it; delete or rename it"
    )]
    NotManaged { object: String },

    #[error("not scaling the target to 0: primary {name} is not serving ({why})")]
    PrimaryNotServing { name: String, why: String },

    #[error(
        "Canary {0} has no metadata.uid (it must come from the API server) so it cannot own objects"
    )]
    MissingUid(String),

    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    #[error("{context}: {source}")]
    Serde {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

impl WorkloadError {
    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        WorkloadError::Kube {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn serde(context: impl Into<String>, source: serde_json::Error) -> Self {
        WorkloadError::Serde {
            context: context.into(),
            source,
        }
    }

    /// Short CamelCase reason for the Canary's `Ready` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkloadError::UnsupportedKind(_) => "TargetKindUnsupported",
            WorkloadError::MissingSpec { .. } => "TargetInvalid",
            WorkloadError::NoSelectorLabel { .. } | WorkloadError::TemplateLabelMismatch { .. } => {
                "TargetSelectorInvalid"
            }
            WorkloadError::ConfigNotFound { .. } => "ConfigNotFound",
            WorkloadError::UnsupportedAutoscaler(_) => "AutoscalerUnsupported",
            WorkloadError::AutoscalerNotFound { .. } => "AutoscalerNotFound",
            WorkloadError::InvalidAutoscaler { .. } => "AutoscalerInvalid",
            WorkloadError::NoHpaApi(_) => "AutoscalerApiMissing",
            WorkloadError::MissingUid(_) => "CanaryInvalid",
            WorkloadError::PrimaryNotServing { .. } => "PrimaryNotReady",
            WorkloadError::OwnedByOther { .. } => "ObjectOwnedByOther",
            WorkloadError::NotManaged { .. } => "ObjectNotManaged",
            WorkloadError::Kube { .. } if self.is_conflict() => "Conflict",
            WorkloadError::Kube { .. } => "KubernetesApiError",
            WorkloadError::Serde { .. } => "SerializationError",
        }
    }

    /// A write lost a race: the object changed since it was read (409 Conflict) or a
    /// create found it already there (409 AlreadyExists, the watch cache was behind).
    /// The caller should requeue and retry from fresh observations.
    pub fn is_conflict(&self) -> bool {
        match self {
            WorkloadError::Kube {
                source: kube::Error::Api(status),
                ..
            } => status.is_conflict() || status.is_already_exists(),
            _ => false,
        }
    }

    /// The object to patch was gone (404): the watch cache was behind a deletion.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            WorkloadError::Kube { source: kube::Error::Api(status), .. } if status.is_not_found()
        )
    }

    /// Errors the user must fix (bad target, missing config or HPA): retrying without
    /// a change to the cluster will not help.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            WorkloadError::Kube { .. } | WorkloadError::Serde { .. }
        )
    }
}
