//! Fixtures for the workload tests: objects shaped as the API server returns them.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, PodSpec,
    PodTemplateSpec, Secret, SecretEnvSource, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::SCALE_TO_ZERO_NODE_SELECTOR;
use super::Workload;
use crate::crd::{Canary, CanarySpec, TargetRef};

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod_template(labels: &[(&str, &str)]) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(map(labels)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "podinfod".into(),
                image: Some("ghcr.io/stefanprodan/podinfo:6.0.0".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 9898,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

pub fn deployment_with_labels(name: &str, labels: &[(&str, &str)]) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("test".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(map(labels)),
                match_expressions: None,
            },
            template: pod_template(labels),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn deployment(name: &str) -> Deployment {
    deployment_with_labels(name, &[("app", name)])
}

pub fn daemonset(name: &str) -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("test".into()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(map(&[("app", name)])),
                match_expressions: None,
            },
            template: pod_template(&[("app", name)]),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn set_node_selector(ds: &mut DaemonSet, key: &str, value: &str) {
    if let Some(spec) = ds.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
    }
}

pub fn set_scale_to_zero(ds: &mut DaemonSet) {
    set_node_selector(ds, SCALE_TO_ZERO_NODE_SELECTOR, "true");
}

pub fn set_image(d: &mut Deployment, image: &str) {
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].image = Some(image.into());
    }
}

pub fn deployment_with_configmap_volume(name: &str, cm: &str) -> Deployment {
    let mut d = deployment(name);
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.volumes = Some(vec![Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.into(),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    d
}

pub fn deployment_with_secret_env(name: &str, secret: &str) -> Deployment {
    let mut d = deployment(name);
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.into(),
                optional: None,
            }),
            ..Default::default()
        }]);
    }
    d
}

pub fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("test".into()),
            ..Default::default()
        },
        data: Some(map(data)),
        ..Default::default()
    }
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("test".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

pub fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn canary(target: &str) -> Canary {
    let mut c = Canary::new(
        target,
        CanarySpec {
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: target.into(),
            },
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("test".into());
    c.metadata.uid = Some("uid-1".into());
    c
}

/// The workload as JSON with every object's keys in reverse order, to show that
/// hashing does not depend on the order in which fields arrive.
pub fn target_as_reordered_json(w: &Workload) -> serde_json::Value {
    fn reverse(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.reverse();
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, reverse(v))).collect(),
                )
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(reverse).collect())
            }
            other => other,
        }
    }
    let v = match w {
        Workload::Deployment(d) => serde_json::to_value(d),
        Workload::DaemonSet(d) => serde_json::to_value(d),
    };
    reverse(v.unwrap_or_default())
}
