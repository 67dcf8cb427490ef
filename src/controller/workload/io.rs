//! The writes of the workload layer. Every method takes what the observe layer holds
//! in its watch caches (target, primary, configs, HPAs) and reads nothing itself,
//! except after a create found an object its caller did not know about (a `-primary`
//! config copy or HPA the caches may not hold), where one GET replaces a guess.
//!
//! Each write compares first and sends only the differences as a JSON patch.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::autoscaler::{check_autoscaler_ref, render_primary_hpa};
use super::configs::{render_config_copy_configmap, render_config_copy_secret};
use super::patch::{
    merge_map_keys, ownership_ops, promote_ops, replace_paths, scale_ops, to_patch,
};
use super::primary::{render_primary, restore_replicas};
use super::{
    ConfigSource, HpaVersion, Readiness, TrackedConfigs, Workload, WorkloadError, primary_ready,
    readiness,
};
use crate::crd::Canary;

const FIELD_MANAGER: &str = "serin";

/// Writes workloads, config copies and HPAs for Canaries.
#[derive(Clone)]
pub struct Workloads {
    client: Client,
    hpa: HpaVersion,
}

impl Workloads {
    /// `hpa` comes from [`super::discover_hpa_version`] at start-up.
    pub fn new(client: Client, hpa: HpaVersion) -> Self {
        Workloads { client, hpa }
    }

    pub fn hpa_version(&self) -> HpaVersion {
        self.hpa
    }

    /// Initialisation: creates the `-primary` config copies and the primary from the
    /// target if the primary does not exist yet; returns whether it was created. An
    /// existing primary keeps what it runs (only [`Workloads::promote`] changes that);
    /// it is adopted if nobody controls it, and an error if someone else does.
    pub async fn ensure_primary(
        &self,
        canary: &Canary,
        target: &Workload,
        primary: Option<&Workload>,
        tracked: &TrackedConfigs,
        configs: &dyn ConfigSource,
    ) -> Result<bool, WorkloadError> {
        if let Some(p) = primary {
            let object = format!("{} {}", p.kind(), p.name());
            let ops = ownership_ops(p.metadata(), canary, &object)?;
            self.patch_workload(p, &canary.namespace_or_default(), p.name(), ops)
                .await?;
            return Ok(false);
        }
        // Copies first: the primary's pods reference them and would not start without.
        self.ensure_config_copies(canary, tracked, configs).await?;
        let desired = render_primary(canary, target, tracked, None)?;
        let ns = canary.namespace_or_default();
        let what = format!("{} {ns}/{}", desired.kind(), canary.primary_name());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let res = match &desired {
            Workload::Deployment(d) => self.api::<Deployment>(&ns).create(&pp, d).await.map(|_| ()),
            Workload::DaemonSet(d) => self.api::<DaemonSet>(&ns).create(&pp, d).await.map(|_| ()),
        };
        res.map_err(|e| WorkloadError::kube(format!("creating {what}"), e))?;
        Ok(true)
    }

    /// Promotion: updates the `-primary` config copies, then the primary's pod
    /// template (and replicas, strategy...) from the target's current revision.
    /// Returns whether the primary changed. The primary HPA is the business of
    /// [`Workloads::ensure_autoscaler`], which the act layer calls alongside.
    pub async fn promote(
        &self,
        canary: &Canary,
        target: &Workload,
        primary: &Workload,
        tracked: &TrackedConfigs,
        configs: &dyn ConfigSource,
    ) -> Result<bool, WorkloadError> {
        self.ensure_config_copies(canary, tracked, configs).await?;
        let desired = render_primary(canary, target, tracked, Some(primary))?;
        let ops = promote_ops(canary, primary, &desired)?;
        self.patch_workload(
            &desired,
            &canary.namespace_or_default(),
            &canary.primary_name(),
            ops,
        )
        .await
    }

    /// Creates or updates the `<name>-primary` copy of every tracked ConfigMap and
    /// Secret; `configs` is asked for the existing copies. Returns the number of writes.
    pub async fn ensure_config_copies(
        &self,
        canary: &Canary,
        tracked: &TrackedConfigs,
        configs: &dyn ConfigSource,
    ) -> Result<usize, WorkloadError> {
        let ns = canary.namespace_or_default();
        let mut writes = 0;
        for cm in tracked.configmaps() {
            let desired = render_config_copy_configmap(canary, cm)?;
            let existing = desired
                .metadata
                .name
                .as_deref()
                .and_then(|n| configs.configmap(n));
            let api = self.api::<ConfigMap>(&ns);
            if upsert(
                canary,
                &api,
                existing,
                &desired,
                &["/data", "/binaryData"],
                "ConfigMap",
            )
            .await?
            {
                writes += 1;
            }
        }
        for s in tracked.secrets() {
            let desired = render_config_copy_secret(canary, s)?;
            let existing = desired
                .metadata
                .name
                .as_deref()
                .and_then(|n| configs.secret(n));
            let api = self.api::<Secret>(&ns);
            if upsert(canary, &api, existing, &desired, &["/data"], "Secret").await? {
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Scales the target: a Deployment's replicas, or for a DaemonSet (which cannot
    /// scale) the scale-to-zero node selector, added at 0 and removed above. Returns
    /// whether anything was written. The caller only scales to 0 while a primary
    /// serves (see [`super::primary_ready`]).
    pub async fn scale_target(
        &self,
        canary: &Canary,
        target: &Workload,
        replicas: i32,
    ) -> Result<bool, WorkloadError> {
        let ops = scale_ops(target, replicas)?;
        self.patch_workload(target, &canary.namespace_or_default(), target.name(), ops)
            .await
    }

    /// Scales the target to 0 only if the primary serves (exists, is not itself at 0,
    /// and is ready at `primary_ready_threshold` percent): the target must never be
    /// left at 0 with nothing serving. Use this rather than `scale_target(.., 0)`.
    pub async fn scale_target_to_zero(
        &self,
        canary: &Canary,
        target: &Workload,
        primary: Option<&Workload>,
        primary_ready_threshold: u32,
    ) -> Result<bool, WorkloadError> {
        if !primary_ready(primary, primary_ready_threshold) {
            let why = match primary.map(|p| readiness(p, primary_ready_threshold)) {
                None => "it does not exist".to_string(),
                Some(Readiness::NotReady(m) | Readiness::Failed(m)) => m,
                Some(Readiness::Ready) => "it is scaled to 0".to_string(),
            };
            return Err(WorkloadError::PrimaryNotServing {
                name: canary.primary_name(),
                why,
            });
        }
        self.scale_target(canary, target, 0).await
    }

    /// On deletion: gives the target the pods to take over the primary's traffic
    /// (see [`restore_replicas`]). The primary is left for the garbage collector
    /// through its owner reference, once the finalizer goes.
    pub async fn revert_target(
        &self,
        canary: &Canary,
        target: &Workload,
        primary: Option<&Workload>,
        hpa_min_replicas: Option<i32>,
    ) -> Result<bool, WorkloadError> {
        match restore_replicas(target, primary, hpa_min_replicas) {
            Some(replicas) => self.scale_target(canary, target, replicas).await,
            None => Ok(false),
        }
    }

    /// Creates or updates `<hpa>-primary` from the user's HPA (`user_hpa`, from the
    /// watch cache; `None` if it does not exist). No-op without `autoscalerRef`.
    /// Returns whether anything was written.
    pub async fn ensure_autoscaler(
        &self,
        canary: &Canary,
        user_hpa: Option<&DynamicObject>,
        primary_hpa: Option<&DynamicObject>,
    ) -> Result<bool, WorkloadError> {
        let Some(r) = check_autoscaler_ref(canary)? else {
            return Ok(false);
        };
        let user_hpa = user_hpa.ok_or_else(|| WorkloadError::AutoscalerNotFound {
            name: r.name.clone(),
        })?;
        let desired = render_primary_hpa(canary, self.hpa, user_hpa)?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &canary.namespace_or_default(),
            &self.hpa.api_resource(),
        );
        upsert(
            canary,
            &api,
            primary_hpa.cloned(),
            &desired,
            &["/spec"],
            "HorizontalPodAutoscaler",
        )
        .await
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn patch_workload(
        &self,
        kind_of: &Workload,
        ns: &str,
        name: &str,
        ops: Vec<Value>,
    ) -> Result<bool, WorkloadError> {
        if ops.is_empty() {
            return Ok(false);
        }
        let what = format!("patching {} {ns}/{name}", kind_of.kind());
        let res = match kind_of {
            Workload::Deployment(_) => self
                .api::<Deployment>(ns)
                .patch(name, &patch_params(), &to_patch(ops)?)
                .await
                .map(|_| ()),
            Workload::DaemonSet(_) => self
                .api::<DaemonSet>(ns)
                .patch(name, &patch_params(), &to_patch(ops)?)
                .await
                .map(|_| ()),
        };
        res.map_err(|e| WorkloadError::kube(what, e))?;
        Ok(true)
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, WorkloadError> {
    serde_json::to_value(v).map_err(|e| WorkloadError::serde("serializing an object to compare", e))
}

/// Creates `desired` if `existing` is `None`, else (once the Canary may own it, see
/// `ownership_ops`) patches the `paths` and the desired labels/annotations that differ. A create that finds the object already
/// there (the caller's cache did not hold it) falls back to one GET and a patch.
/// Returns whether anything was written. Never formats the objects: they may be
/// Secrets.
async fn upsert<K>(
    canary: &Canary,
    api: &Api<K>,
    existing: Option<K>,
    desired: &K,
    paths: &[&str],
    kind: &str,
) -> Result<bool, WorkloadError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let ns = desired.meta().namespace.clone().unwrap_or_default();
    let what = format!("{kind} {ns}/{name}");
    let existing = match existing {
        Some(e) => e,
        None => {
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&pp, desired).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    api.get(&name).await.map_err(|e| {
                        WorkloadError::kube(format!("reading {what} after create found it"), e)
                    })?
                }
                Err(e) => return Err(WorkloadError::kube(format!("creating {what}"), e)),
            }
        }
    };
    let mut ops = ownership_ops(existing.meta(), canary, &what)?;
    let (have, want) = (to_json(&existing)?, to_json(desired)?);
    ops.extend(replace_paths(&have, &want, paths));
    let meta = desired.meta();
    ops.extend(merge_map_keys(
        &have,
        "/metadata/labels",
        &meta.labels.clone().unwrap_or_default(),
    ));
    ops.extend(merge_map_keys(
        &have,
        "/metadata/annotations",
        &meta.annotations.clone().unwrap_or_default(),
    ));
    if ops.is_empty() {
        return Ok(false);
    }
    let patch: Patch<()> = to_patch(ops)?;
    api.patch(&name, &patch_params(), &patch)
        .await
        .map_err(|e| WorkloadError::kube(format!("patching {what}"), e))?;
    Ok(true)
}
