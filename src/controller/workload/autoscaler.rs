//! The primary's HorizontalPodAutoscaler, copied from the user's (`autoscalerRef`).
//!
//! k8s-openapi's `earliest` types have no `autoscaling/v2beta2`, and 1.20 servers have
//! no `autoscaling/v2`, so HPAs are handled as [`DynamicObject`]s in the version found
//! by discovery at start-up. The two versions share the spec shape Serin touches
//! (`scaleTargetRef`, `minReplicas`, `maxReplicas`, `metrics`, `behavior`), so the
//! user's spec is copied as read in the same version.

use kube::Client;
use kube::core::{ApiResource, DynamicObject, TypeMeta};
use serde_json::{Value, json};

use super::configs::owned_meta;
use super::{WorkloadError, WorkloadKind};
use crate::crd::{AutoscalerRef, Canary};

pub const HPA_KIND: &str = "HorizontalPodAutoscaler";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpaVersion {
    /// `autoscaling/v2`, served from Kubernetes 1.23.
    V2,
    /// `autoscaling/v2beta2`, for older servers (removed in 1.26).
    V2beta2,
}

impl HpaVersion {
    pub fn version(self) -> &'static str {
        match self {
            HpaVersion::V2 => "v2",
            HpaVersion::V2beta2 => "v2beta2",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            HpaVersion::V2 => "autoscaling/v2",
            HpaVersion::V2beta2 => "autoscaling/v2beta2",
        }
    }

    /// For `Api::<DynamicObject>::namespaced_with` and for watching HPAs.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: "autoscaling".into(),
            version: self.version().into(),
            api_version: self.api_version().into(),
            kind: HPA_KIND.into(),
            plural: "horizontalpodautoscalers".into(),
        }
    }

    /// Picks from the versions the `autoscaling` group serves: v2 when available.
    pub fn choose<'a>(
        served: impl IntoIterator<Item = &'a str>,
    ) -> Result<HpaVersion, WorkloadError> {
        let served: Vec<&str> = served.into_iter().collect();
        if served.contains(&"v2") {
            Ok(HpaVersion::V2)
        } else if served.contains(&"v2beta2") {
            Ok(HpaVersion::V2beta2)
        } else {
            Err(WorkloadError::NoHpaApi(served.join(", ")))
        }
    }
}

/// Asks the API server, once at start-up, which HPA version to use.
pub async fn discover_hpa_version(client: &Client) -> Result<HpaVersion, WorkloadError> {
    let group = kube::discovery::group(client, "autoscaling")
        .await
        .map_err(|e| WorkloadError::kube("discovering the autoscaling API group", e))?;
    HpaVersion::choose(group.versions())
}

/// The Canary's autoscaler, if any, once checked to be one Serin can copy: a
/// HorizontalPodAutoscaler for a Deployment. KEDA ScaledObjects are reported as
/// unsupported rather than silently ignored.
pub fn check_autoscaler_ref(canary: &Canary) -> Result<Option<&AutoscalerRef>, WorkloadError> {
    let Some(r) = canary.spec.autoscaler_ref.as_ref() else {
        return Ok(None);
    };
    if r.kind != HPA_KIND {
        return Err(WorkloadError::UnsupportedAutoscaler(r.kind.clone()));
    }
    if WorkloadKind::parse(&canary.spec.target_ref.kind)? == WorkloadKind::DaemonSet {
        return Err(WorkloadError::InvalidAutoscaler {
            name: r.name.clone(),
            why: "a DaemonSet target cannot be autoscaled: remove spec.autoscalerRef".into(),
        });
    }
    Ok(Some(r))
}

pub fn primary_hpa_name(r: &AutoscalerRef) -> String {
    format!("{}-primary", r.name)
}

/// `spec.minReplicas` of an HPA (1 when unset, the API default).
pub fn hpa_min_replicas(hpa: &DynamicObject) -> Option<i32> {
    let spec = hpa.data.get("spec")?;
    Some(
        spec.get("minReplicas")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(1),
    )
}

/// The `<hpa>-primary` HPA: the user's spec targeting the primary, with
/// `primaryScalerReplicas` overrides, owned by the Canary, in `version`.
pub fn render_primary_hpa(
    canary: &Canary,
    version: HpaVersion,
    user_hpa: &DynamicObject,
) -> Result<DynamicObject, WorkloadError> {
    let Some(r) = check_autoscaler_ref(canary)? else {
        return Err(WorkloadError::InvalidAutoscaler {
            name: user_hpa.metadata.name.clone().unwrap_or_default(),
            why: "the Canary has no spec.autoscalerRef".into(),
        });
    };
    let invalid = |why: &str| WorkloadError::InvalidAutoscaler {
        name: r.name.clone(),
        why: why.to_string(),
    };
    let mut spec = user_hpa
        .data
        .get("spec")
        .filter(|s| s.is_object())
        .cloned()
        .ok_or_else(|| invalid("has no spec"))?;
    let target = &canary.spec.target_ref;
    let api_version = if target.api_version.is_empty() {
        "apps/v1"
    } else {
        target.api_version.as_str()
    };
    spec["scaleTargetRef"] = json!({
        "apiVersion": api_version,
        "kind": target.kind,
        "name": canary.primary_name(),
    });
    if let Some(o) = r.primary_scaler_replicas.as_ref() {
        if let Some(min) = o.min_replicas {
            spec["minReplicas"] = json!(min);
        }
        if let Some(max) = o.max_replicas {
            spec["maxReplicas"] = json!(max);
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    let max = spec
        .get("maxReplicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid("spec.maxReplicas is missing"))?;
    if min > max {
        return Err(invalid(&format!(
            "minReplicas {min} is above maxReplicas {max} for the primary (check primaryScalerReplicas)"
        )));
    }
    Ok(DynamicObject {
        types: Some(TypeMeta {
            api_version: version.api_version().into(),
            kind: HPA_KIND.into(),
        }),
        metadata: owned_meta(canary, primary_hpa_name(r), &user_hpa.metadata)?,
        data: json!({ "spec": spec }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::canary;
    use super::*;
    use crate::crd::ScalerReplicas;
    use kube::core::ObjectMeta;

    fn autoscaled(kind: &str) -> Canary {
        let mut c = canary("podinfo");
        c.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: "autoscaling/v2".into(),
            kind: kind.into(),
            name: "podinfo".into(),
            ..Default::default()
        });
        c
    }

    fn user_hpa(api_version: &str) -> DynamicObject {
        DynamicObject {
            types: Some(TypeMeta {
                api_version: api_version.into(),
                kind: HPA_KIND.into(),
            }),
            metadata: ObjectMeta {
                name: Some("podinfo".into()),
                namespace: Some("test".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            data: json!({
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                    "minReplicas": 2,
                    "maxReplicas": 4,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 99}}}],
                },
                "status": {"currentReplicas": 2},
            }),
        }
    }

    #[test]
    fn renders_for_each_version() {
        for version in [HpaVersion::V2, HpaVersion::V2beta2] {
            let c = autoscaled(HPA_KIND);
            let hpa = render_primary_hpa(&c, version, &user_hpa(version.api_version())).unwrap();
            let types = hpa.types.clone().unwrap_or_default();
            assert_eq!(types.api_version, version.api_version());
            assert_eq!(types.kind, "HorizontalPodAutoscaler");
            assert_eq!(hpa.metadata.name.as_deref(), Some("podinfo-primary"));
            assert_eq!(
                hpa.metadata.resource_version, None,
                "a fresh object, not the user's"
            );
            assert_eq!(
                hpa.metadata.owner_references.as_ref().map(Vec::len),
                Some(1)
            );
            assert_eq!(
                hpa.data["spec"]["scaleTargetRef"],
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo-primary"})
            );
            assert_eq!(hpa.data["spec"]["minReplicas"], json!(2));
            assert_eq!(
                hpa.data["spec"]["metrics"][0]["resource"]["name"],
                json!("cpu")
            );
            assert!(hpa.data.get("status").is_none());
            // The body the API server receives names the chosen version.
            let body = serde_json::to_value(&hpa).unwrap();
            assert_eq!(body["apiVersion"], json!(version.api_version()));
        }
    }

    #[test]
    fn primary_scaler_replicas_override() {
        let mut c = autoscaled(HPA_KIND);
        if let Some(r) = c.spec.autoscaler_ref.as_mut() {
            r.primary_scaler_replicas = Some(ScalerReplicas {
                min_replicas: Some(3),
                max_replicas: Some(10),
            });
        }
        let hpa = render_primary_hpa(&c, HpaVersion::V2, &user_hpa("autoscaling/v2")).unwrap();
        assert_eq!(hpa.data["spec"]["minReplicas"], json!(3));
        assert_eq!(hpa.data["spec"]["maxReplicas"], json!(10));
        assert_eq!(hpa_min_replicas(&hpa), Some(3));

        if let Some(r) = c.spec.autoscaler_ref.as_mut() {
            r.primary_scaler_replicas = Some(ScalerReplicas {
                min_replicas: Some(8),
                max_replicas: None,
            });
        }
        let err = render_primary_hpa(&c, HpaVersion::V2, &user_hpa("autoscaling/v2")).unwrap_err();
        assert_eq!(err.reason(), "AutoscalerInvalid");
        assert!(
            err.to_string()
                .contains("minReplicas 8 is above maxReplicas 4"),
            "{err}"
        );
    }

    #[test]
    fn autoscaler_ref_checks() {
        assert!(check_autoscaler_ref(&canary("podinfo")).unwrap().is_none());
        assert!(
            check_autoscaler_ref(&autoscaled(HPA_KIND))
                .unwrap()
                .is_some()
        );
        let err = check_autoscaler_ref(&autoscaled("ScaledObject")).unwrap_err();
        assert_eq!(err.reason(), "AutoscalerUnsupported");
        assert!(err.to_string().contains("ScaledObject"), "{err}");
        let mut ds = autoscaled(HPA_KIND);
        ds.spec.target_ref.kind = "DaemonSet".into();
        assert_eq!(
            check_autoscaler_ref(&ds).unwrap_err().reason(),
            "AutoscalerInvalid"
        );
        let mut no_spec = user_hpa("autoscaling/v2");
        no_spec.data = json!({});
        let err = render_primary_hpa(&autoscaled(HPA_KIND), HpaVersion::V2, &no_spec).unwrap_err();
        assert!(err.to_string().contains("has no spec"), "{err}");
    }

    #[test]
    fn version_choice() {
        assert_eq!(
            HpaVersion::choose(["v1", "v2", "v2beta2"]).ok(),
            Some(HpaVersion::V2)
        );
        assert_eq!(
            HpaVersion::choose(["v1", "v2beta1", "v2beta2"]).ok(),
            Some(HpaVersion::V2beta2)
        );
        let err = HpaVersion::choose(["v1"]).unwrap_err();
        assert_eq!(err.reason(), "AutoscalerApiMissing");
        assert_eq!(
            HpaVersion::V2beta2.api_resource().api_version,
            "autoscaling/v2beta2"
        );
    }
}
