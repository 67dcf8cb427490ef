//! ConfigMaps and Secrets referenced by the pod template: discovery, checksums (a
//! change starts a rollout) and the `-primary` copies the primary uses, so that a
//! canary's new config never reaches the primary before promotion.
//!
//! Secret contents are hashed and copied, never formatted: [`TrackedConfigs`] has a
//! hand-written `Debug` that prints names and checksums only.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::{
    CONFIG_TRACKING_ANNOTATION, FLAGGER_CONFIG_TRACKING_ANNOTATION, Workload, WorkloadError,
    canonical_sha256, copied_annotations,
};
use crate::crd::{CANARY_ANNOTATION, Canary, MANAGED_BY, MANAGED_BY_LABEL};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    /// Prefix of the `trackedConfigs` keys (`configmap/<name>`), as Flagger.
    pub fn key_prefix(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "configmap",
            ConfigKind::Secret => "secret",
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigKind::ConfigMap => "ConfigMap",
            ConfigKind::Secret => "Secret",
        })
    }
}

/// One ConfigMap or Secret the pod template references.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
    /// True only if every reference to it is `optional: true`.
    pub optional: bool,
}

impl ConfigRef {
    /// `configmap/<name>` or `secret/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.key_prefix(), self.name)
    }
}

/// Where the workload layer reads ConfigMaps and Secrets: the observe layer's watch
/// caches (never a GET per step). Also used to find existing `-primary` copies.
pub trait ConfigSource: Send + Sync {
    fn configmap(&self, name: &str) -> Option<ConfigMap>;
    fn secret(&self, name: &str) -> Option<Secret>;
}

/// A pair of lookup closures is a source, e.g. over two reflector stores.
impl<F, G> ConfigSource for (F, G)
where
    F: Fn(&str) -> Option<ConfigMap> + Send + Sync,
    G: Fn(&str) -> Option<Secret> + Send + Sync,
{
    fn configmap(&self, name: &str) -> Option<ConfigMap> {
        (self.0)(name)
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        (self.1)(name)
    }
}

/// An in-memory source (tests, or a snapshot taken from the caches).
#[derive(Clone, Default)]
pub struct ConfigSnapshot {
    pub configmaps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

impl ConfigSnapshot {
    pub fn insert_configmap(&mut self, cm: ConfigMap) {
        let name = cm.metadata.name.clone().unwrap_or_default();
        self.configmaps.insert(name, cm);
    }
    pub fn insert_secret(&mut self, s: Secret) {
        let name = s.metadata.name.clone().unwrap_or_default();
        self.secrets.insert(name, s);
    }
}

impl fmt::Debug for ConfigSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSnapshot")
            .field("configmaps", &self.configmaps.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConfigSource for ConfigSnapshot {
    fn configmap(&self, name: &str) -> Option<ConfigMap> {
        self.configmaps.get(name).cloned()
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned()
    }
}

/// Every ConfigMap and Secret the template references: volumes (direct and projected),
/// `env[].valueFrom` and `envFrom`, in containers and init containers. Sorted, one
/// entry per object.
pub fn config_refs(template: &PodTemplateSpec) -> Vec<ConfigRef> {
    let mut found: BTreeMap<(ConfigKind, String), bool> = BTreeMap::new();
    let mut add = |kind: ConfigKind, name: &str, optional: Option<bool>| {
        if name.is_empty() {
            return;
        }
        let optional = optional.unwrap_or(false);
        found
            .entry((kind, name.to_string()))
            .and_modify(|o| *o = *o && optional)
            .or_insert(optional);
    };
    let Some(spec) = template.spec.as_ref() else {
        return Vec::new();
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(ConfigKind::ConfigMap, &cm.name, cm.optional);
        }
        if let Some(s) = &v.secret
            && let Some(name) = &s.secret_name
        {
            add(ConfigKind::Secret, name, s.optional);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                add(ConfigKind::ConfigMap, &cm.name, cm.optional);
            }
            if let Some(s) = &src.secret {
                add(ConfigKind::Secret, &s.name, s.optional);
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for env in c.env.iter().flatten() {
            if let Some(from) = &env.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    add(ConfigKind::ConfigMap, &r.name, r.optional);
                }
                if let Some(r) = &from.secret_key_ref {
                    add(ConfigKind::Secret, &r.name, r.optional);
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                add(ConfigKind::ConfigMap, &r.name, r.optional);
            }
            if let Some(r) = &from.secret_ref {
                add(ConfigKind::Secret, &r.name, r.optional);
            }
        }
    }
    found
        .into_iter()
        .map(|((kind, name), optional)| ConfigRef {
            kind,
            name,
            optional,
        })
        .collect()
}

/// The configs Serin tracks for a target, with their contents (to copy on promotion)
/// and checksums (for `status.trackedConfigs` and the revision checksum).
#[derive(Clone, Default, PartialEq)]
pub struct TrackedConfigs {
    configmaps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
    checksums: BTreeMap<String, String>,
}

impl fmt::Debug for TrackedConfigs {
    // Never print Secret (or ConfigMap) data: checksums identify the content well enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedConfigs")
            .field("checksums", &self.checksums)
            .finish()
    }
}

impl TrackedConfigs {
    /// `configmap/<name>` / `secret/<name>` → hex SHA-256 of the data, for
    /// `status.trackedConfigs`.
    pub fn checksums(&self) -> &BTreeMap<String, String> {
        &self.checksums
    }

    pub fn is_empty(&self) -> bool {
        self.checksums.is_empty()
    }

    pub fn is_tracked(&self, kind: ConfigKind, name: &str) -> bool {
        match kind {
            ConfigKind::ConfigMap => self.configmaps.contains_key(name),
            ConfigKind::Secret => self.secrets.contains_key(name),
        }
    }

    pub fn configmaps(&self) -> impl Iterator<Item = &ConfigMap> {
        self.configmaps.values()
    }

    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values()
    }
}

fn tracking_disabled(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|a| {
        [
            CONFIG_TRACKING_ANNOTATION,
            FLAGGER_CONFIG_TRACKING_ANNOTATION,
        ]
        .iter()
        .any(|k| {
            a.get(*k)
                .is_some_and(|v| v.eq_ignore_ascii_case("disabled"))
        })
    })
}

pub(crate) fn configmap_checksum(cm: &ConfigMap) -> String {
    canonical_sha256(&serde_json::json!({
        "data": cm.data,
        "binaryData": cm.binary_data,
    }))
}

pub(crate) fn secret_checksum(s: &Secret) -> String {
    canonical_sha256(&serde_json::json!({
        "type": s.type_,
        "data": s.data,
    }))
}

/// Resolves the target's config references against `source`. A missing optional
/// reference is skipped (the pod starts without it); a missing required one is an
/// error, since the target's pods cannot start either. Objects annotated
/// `serin.dev/config-tracking: disabled` (or Flagger's key) are left to the user.
pub fn tracked_configs(
    target: &Workload,
    source: &dyn ConfigSource,
) -> Result<TrackedConfigs, WorkloadError> {
    let mut out = TrackedConfigs::default();
    for r in config_refs(target.template()?) {
        match r.kind {
            ConfigKind::ConfigMap => match source.configmap(&r.name) {
                Some(cm) if tracking_disabled(&cm.metadata) => {}
                Some(cm) => {
                    out.checksums.insert(r.key(), configmap_checksum(&cm));
                    out.configmaps.insert(r.name.clone(), cm);
                }
                None if r.optional => {}
                None => return Err(not_found(&r, target)),
            },
            ConfigKind::Secret => match source.secret(&r.name) {
                Some(s) if tracking_disabled(&s.metadata) => {}
                Some(s) => {
                    out.checksums.insert(r.key(), secret_checksum(&s));
                    out.secrets.insert(r.name.clone(), s);
                }
                None if r.optional => {}
                None => return Err(not_found(&r, target)),
            },
        }
    }
    Ok(out)
}

fn not_found(r: &ConfigRef, target: &Workload) -> WorkloadError {
    WorkloadError::ConfigNotFound {
        kind: r.kind,
        name: r.name.clone(),
        target: format!("{} {}", target.kind(), target.name()),
    }
}

fn copy_name(name: &str) -> String {
    format!("{name}-primary")
}

/// Points every reference to a tracked config at its `-primary` copy; untracked ones
/// (missing optional, tracking disabled) keep the user's object.
pub(crate) fn apply_primary_configs(spec: &mut PodSpec, tracked: &TrackedConfigs) {
    let rename = |kind: ConfigKind, name: &mut String| {
        if tracked.is_tracked(kind, name) {
            *name = copy_name(name);
        }
    };
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut() {
            rename(ConfigKind::ConfigMap, &mut cm.name);
        }
        if let Some(name) = v.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
            rename(ConfigKind::Secret, name);
        }
        for src in v
            .projected
            .iter_mut()
            .flat_map(|p| p.sources.iter_mut().flatten())
        {
            if let Some(cm) = src.config_map.as_mut() {
                rename(ConfigKind::ConfigMap, &mut cm.name);
            }
            if let Some(s) = src.secret.as_mut() {
                rename(ConfigKind::Secret, &mut s.name);
            }
        }
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        for env in c.env.iter_mut().flatten() {
            if let Some(from) = env.value_from.as_mut() {
                if let Some(r) = from.config_map_key_ref.as_mut() {
                    rename(ConfigKind::ConfigMap, &mut r.name);
                }
                if let Some(r) = from.secret_key_ref.as_mut() {
                    rename(ConfigKind::Secret, &mut r.name);
                }
            }
        }
        for from in c.env_from.iter_mut().flatten() {
            if let Some(r) = from.config_map_ref.as_mut() {
                rename(ConfigKind::ConfigMap, &mut r.name);
            }
            if let Some(r) = from.secret_ref.as_mut() {
                rename(ConfigKind::Secret, &mut r.name);
            }
        }
    }
}

/// Metadata of an object Serin generates from `src` for `canary`: the source's labels
/// and content annotations, plus the managed-by label, the Canary annotation and a
/// controller owner reference to the Canary (so deleting the Canary collects it).
pub(crate) fn owned_meta(
    canary: &Canary,
    name: String,
    src: &ObjectMeta,
) -> Result<ObjectMeta, WorkloadError> {
    let owner = canary
        .controller_owner_ref(&())
        .ok_or_else(|| WorkloadError::MissingUid(canary.name_str().to_string()))?;
    let mut labels = src.labels.clone().unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    let mut annotations = copied_annotations(src.annotations.as_ref());
    annotations.insert(CANARY_ANNOTATION.to_string(), canary.name_str().to_string());
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(canary.namespace_or_default()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// The `<name>-primary` copy of a tracked ConfigMap. `immutable` is not copied: Serin
/// must be able to update its copy at the next promotion.
pub fn render_config_copy_configmap(
    canary: &Canary,
    src: &ConfigMap,
) -> Result<ConfigMap, WorkloadError> {
    let name = copy_name(src.metadata.name.as_deref().unwrap_or(""));
    Ok(ConfigMap {
        metadata: owned_meta(canary, name, &src.metadata)?,
        data: src.data.clone(),
        binary_data: src.binary_data.clone(),
        immutable: None,
    })
}

/// The `<name>-primary` copy of a tracked Secret (same type and data).
pub fn render_config_copy_secret(canary: &Canary, src: &Secret) -> Result<Secret, WorkloadError> {
    let name = copy_name(src.metadata.name.as_deref().unwrap_or(""));
    Ok(Secret {
        metadata: owned_meta(canary, name, &src.metadata)?,
        data: src.data.clone(),
        type_: src.type_.clone(),
        string_data: None,
        immutable: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource,
        EnvFromSource, EnvVar, EnvVarSource, ProjectedVolumeSource, SecretEnvSource,
        SecretKeySelector, SecretProjection, SecretVolumeSource, Volume, VolumeProjection,
    };

    fn r(kind: ConfigKind, name: &str, optional: bool) -> ConfigRef {
        ConfigRef {
            kind,
            name: name.into(),
            optional,
        }
    }

    /// A template referencing configs in every supported way.
    pub(crate) fn template_with_every_ref() -> PodTemplateSpec {
        let mut d = deployment("podinfo");
        let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
            panic!("fixture has a pod spec");
        };
        spec.volumes = Some(vec![
            Volume {
                name: "cm-vol".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cm-volume".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "secret-vol".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("secret-volume".into()),
                    optional: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "projected".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "cm-projected".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            secret: Some(SecretProjection {
                                name: "secret-projected".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        let c = &mut spec.containers[0];
        c.env = Some(vec![
            EnvVar {
                name: "A".into(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "cm-env".into(),
                        key: "a".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            EnvVar {
                name: "B".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "secret-env".into(),
                        key: "b".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            EnvVar {
                name: "PLAIN".into(),
                value: Some("x".into()),
                ..Default::default()
            },
        ]);
        c.env_from = Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm-envfrom".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "secret-envfrom".into(),
                    optional: None,
                }),
                ..Default::default()
            },
            // The same object referenced optionally and then required: required wins.
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm-env".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            },
        ]);
        let mut init = c.clone();
        init.name = "init".into();
        init.env = None;
        init.env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: "secret-init".into(),
                optional: None,
            }),
            ..Default::default()
        }]);
        spec.init_containers = Some(vec![init]);
        d.spec.map(|s| s.template).unwrap_or_default()
    }

    #[test]
    fn discovers_every_kind_of_reference() {
        use ConfigKind::*;
        let got = config_refs(&template_with_every_ref());
        let want = vec![
            r(ConfigMap, "cm-env", false),
            r(ConfigMap, "cm-envfrom", true),
            r(ConfigMap, "cm-projected", false),
            r(ConfigMap, "cm-volume", false),
            r(Secret, "secret-env", true),
            r(Secret, "secret-envfrom", false),
            r(Secret, "secret-init", false),
            r(Secret, "secret-projected", false),
            r(Secret, "secret-volume", true),
        ];
        pretty_assertions::assert_eq!(got, want);
        assert_eq!(got[0].key(), "configmap/cm-env");
        assert_eq!(got[4].key(), "secret/secret-env");
        assert!(config_refs(&PodTemplateSpec::default()).is_empty());
    }

    fn source_for_every_ref(skip: &[&str]) -> ConfigSnapshot {
        let mut src = ConfigSnapshot::default();
        for r in config_refs(&template_with_every_ref()) {
            if skip.contains(&r.name.as_str()) {
                continue;
            }
            match r.kind {
                ConfigKind::ConfigMap => src.insert_configmap(configmap(&r.name, &[("k", "v")])),
                ConfigKind::Secret => src.insert_secret(secret(&r.name, &[("k", "v")])),
            }
        }
        src
    }

    fn target_with_every_ref() -> Workload {
        let mut d = deployment("podinfo");
        if let Some(s) = d.spec.as_mut() {
            s.template = template_with_every_ref();
        }
        Workload::Deployment(d)
    }

    #[test]
    fn tracks_present_configs_and_skips_missing_optional_and_disabled() {
        let target = target_with_every_ref();
        let mut src = source_for_every_ref(&["cm-envfrom", "secret-env"]);
        let mut disabled = configmap("cm-projected", &[("k", "v")]);
        disabled.metadata.annotations = Some(BTreeMap::from([(
            FLAGGER_CONFIG_TRACKING_ANNOTATION.to_string(),
            "disabled".to_string(),
        )]));
        src.insert_configmap(disabled);
        let mut disabled = secret("secret-projected", &[("k", "v")]);
        disabled.metadata.annotations = Some(BTreeMap::from([(
            CONFIG_TRACKING_ANNOTATION.to_string(),
            "disabled".to_string(),
        )]));
        src.insert_secret(disabled);

        let tracked = tracked_configs(&target, &src).unwrap();
        let keys: Vec<_> = tracked.checksums().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "configmap/cm-env",
                "configmap/cm-volume",
                "secret/secret-envfrom",
                "secret/secret-init",
                "secret/secret-volume"
            ]
        );
        assert!(tracked.checksums().values().all(|c| c.len() == 64));
        assert!(tracked.is_tracked(ConfigKind::ConfigMap, "cm-env"));
        assert!(!tracked.is_tracked(ConfigKind::ConfigMap, "cm-projected"));
    }

    #[test]
    fn missing_required_config_is_an_error() {
        let target = target_with_every_ref();
        let src = source_for_every_ref(&["secret-envfrom"]);
        let err = tracked_configs(&target, &src).unwrap_err();
        assert_eq!(err.reason(), "ConfigNotFound");
        assert_eq!(
            err.to_string(),
            "Secret secret-envfrom referenced by the pod template of Deployment podinfo does not exist"
        );
    }

    #[test]
    fn checksums_follow_data_only() {
        let a = configmap("c", &[("k", "v"), ("j", "w")]);
        let mut b = configmap("c", &[("j", "w"), ("k", "v")]);
        b.metadata.labels = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
        assert_eq!(configmap_checksum(&a), configmap_checksum(&b));
        let c = configmap("c", &[("k", "v2"), ("j", "w")]);
        assert_ne!(configmap_checksum(&a), configmap_checksum(&c));
        let mut s1 = secret("s", &[("k", "v")]);
        let s2 = secret("s", &[("k", "v")]);
        assert_eq!(secret_checksum(&s1), secret_checksum(&s2));
        if let Some(d) = s1.data.as_mut() {
            d.insert("k".into(), ByteString(b"other".to_vec()));
        }
        assert_ne!(secret_checksum(&s1), secret_checksum(&s2));
    }

    #[test]
    fn debug_output_never_contains_secret_data() {
        let target = Workload::Deployment(deployment_with_secret_env("podinfo", "creds"));
        let mut src = ConfigSnapshot::default();
        src.insert_secret(secret("creds", &[("password", "hunter2-very-secret")]));
        let tracked = tracked_configs(&target, &src).unwrap();
        let printed = format!("{tracked:?} {src:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            !printed.contains(&base64_of("hunter2-very-secret")),
            "{printed}"
        );
        assert!(printed.contains("secret/creds"));
    }

    #[test]
    fn primary_refs_point_at_copies_of_tracked_configs_only() {
        let target = target_with_every_ref();
        let src = source_for_every_ref(&["cm-envfrom", "secret-env"]);
        let tracked = tracked_configs(&target, &src).unwrap();
        let mut spec = template_with_every_ref().spec.unwrap_or_default();
        apply_primary_configs(&mut spec, &tracked);
        let renamed: PodTemplateSpec = PodTemplateSpec {
            metadata: None,
            spec: Some(spec),
        };
        let names: Vec<String> = config_refs(&renamed).into_iter().map(|r| r.key()).collect();
        assert_eq!(
            names,
            [
                "configmap/cm-env-primary",
                "configmap/cm-envfrom", // optional and missing: unchanged
                "configmap/cm-projected-primary",
                "configmap/cm-volume-primary",
                "secret/secret-env", // optional and missing: unchanged
                "secret/secret-envfrom-primary",
                "secret/secret-init-primary",
                "secret/secret-projected-primary",
                "secret/secret-volume-primary",
            ]
        );
    }

    #[test]
    fn config_copies_are_owned_and_labelled() {
        let canary = canary("podinfo");
        let mut src = secret("creds", &[("password", "x")]);
        src.immutable = Some(true);
        src.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            "{...}".to_string(),
        )]));
        let copy = render_config_copy_secret(&canary, &src).unwrap();
        assert_eq!(copy.metadata.name.as_deref(), Some("creds-primary"));
        assert_eq!(copy.data, src.data);
        assert_eq!(copy.type_.as_deref(), Some("Opaque"));
        assert_eq!(copy.immutable, None);
        let labels = copy.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some("serin")
        );
        let ann = copy.metadata.annotations.unwrap_or_default();
        assert_eq!(
            ann.get(CANARY_ANNOTATION).map(String::as_str),
            Some("podinfo")
        );
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        let owners = copy.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Canary");
        assert_eq!(owners[0].controller, Some(true));

        let cm =
            render_config_copy_configmap(&canary, &configmap("settings", &[("a", "b")])).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("settings-primary"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("test"));

        let mut no_uid = canary.clone();
        no_uid.metadata.uid = None;
        let err = render_config_copy_configmap(&no_uid, &configmap("settings", &[])).unwrap_err();
        assert_eq!(err.reason(), "CanaryInvalid");
    }
}
