//! Custom resources: `Canary`, `MetricTemplate`, `AlertProvider` (group `serin.dev`,
//! version `v1beta1`), and the resolved, validated view of a Canary spec that the
//! rest of the operator works from.

mod alert;
mod canary;
pub mod duration;
mod reference;
mod schema;
mod settings;
mod template;
pub mod validate;

pub use alert::{AlertProvider, AlertProviderSpec};
pub use canary::*;
pub use reference::reference_markdown;
pub use settings::{Provider, Settings, SmiVersion, SpecError, Strategy};
pub use template::{MetricProvider, MetricTemplate, MetricTemplateSpec};

use kube::CustomResourceExt;

pub const GROUP: &str = "serin.dev";
pub const VERSION: &str = "v1beta1";

/// Annotation whose new value restarts a failed revision without a spec change.
pub const RETRY_ANNOTATION: &str = "serin.dev/retry";
/// Annotation whose new value rolls the release under way back (`kubectl serin abort`).
pub const ABORT_ANNOTATION: &str = "serin.dev/abort";
/// Annotation whose new value finishes the release under way now (`kubectl serin
/// promote`); a `force:` prefix also skips the promotion gates.
pub const PROMOTE_ANNOTATION: &str = "serin.dev/promote";
/// Annotation whose presence holds the release at its weight (`kubectl serin pause`;
/// `resume` removes it). Unlike `spec.suspend` it causes no drift in a GitOps repo.
pub const PAUSED_ANNOTATION: &str = "serin.dev/paused";
/// Finalizer Serin holds on Canaries whose deletion must restore the target.
pub const FINALIZER: &str = "serin.dev/finalizer";
/// Label and annotation the operator puts on objects it generates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "serin";
/// Annotation on generated objects naming the Canary that owns them.
pub const CANARY_ANNOTATION: &str = "serin.dev/canary";

/// Every CRD Serin serves, in the order `serin crds` prints them.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![Canary::crd(), MetricTemplate::crd(), AlertProvider::crd()]
}

/// The CRDs as one multi-document YAML stream, as written to `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

impl Canary {
    pub fn namespace_or_default(&self) -> String {
        self.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string())
    }

    pub fn name_str(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// Name of the user's workload, which runs the canary during analysis.
    pub fn target_name(&self) -> &str {
        &self.spec.target_ref.name
    }

    /// Whether deleting this Canary restores the target first (through the
    /// finalizer): unless `revertOnDeletion` is explicitly false.
    pub fn reverts_on_deletion(&self) -> bool {
        self.spec.revert_on_deletion.unwrap_or(true)
    }

    /// Name of the copy that serves stable traffic.
    pub fn primary_name(&self) -> String {
        format!("{}-primary", self.target_name())
    }

    /// Apex Service name: `service.name`, else the target name.
    pub fn apex_name(&self) -> String {
        self.spec
            .service
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.target_name().to_string())
    }

    pub fn primary_service_name(&self) -> String {
        format!("{}-primary", self.apex_name())
    }

    pub fn canary_service_name(&self) -> String {
        format!("{}-canary", self.apex_name())
    }

    pub fn status_or_default(&self) -> CanaryStatus {
        self.status.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_structural_and_named() {
        let crds = all_crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "canaries.serin.dev",
                "metrictemplates.serin.dev",
                "alertproviders.serin.dev"
            ]
        );
        let yaml = crds_yaml().unwrap();
        assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
        // 1.20's kubectl rejects a null among enum values.
        assert!(
            !yaml.lines().any(|l| l.trim() == "- null"),
            "null in an enum"
        );
    }

    #[test]
    fn revert_on_deletion_is_on_unless_explicitly_false() {
        let with = |v: Option<bool>| {
            let mut c = Canary::new("app", CanarySpec::default());
            c.spec.revert_on_deletion = v;
            c.reverts_on_deletion()
        };
        assert!(with(None), "unset: the finalizer restores the target");
        assert!(with(Some(true)));
        assert!(!with(Some(false)), "explicit false: Flagger's behaviour");
    }

    /// `crds/` is generated by `serin crds`; a stale copy would install a schema that
    /// does not match the code.
    #[test]
    fn generated_crds_are_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/serin.yaml");
        let on_disk = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run `cargo run -- crds > crds/serin.yaml`"));
        assert!(
            on_disk == crds_yaml().unwrap(),
            "crds/serin.yaml is stale: run `cargo run -- crds > crds/serin.yaml`"
        );
    }
}
