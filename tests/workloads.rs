//! The workload layer against a real API server (the local cluster from
//! `e2e/cluster.sh up`, or any cluster `KUBECONFIG` points at).
//!
//! Skipped with a message when no cluster is reachable; fails instead when
//! `SERIN_E2E_REQUIRED=1`. Works in a fresh namespace, deleted at the end. Uses a real
//! Canary as owner when the Serin CRDs are installed, else an in-memory one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::json;
use serin::controller::workload::{
    ConfigSnapshot, REVISION_ANNOTATION, SCALE_TO_ZERO_NODE_SELECTOR, Workload, Workloads,
    discover_hpa_version, primary_ready, readiness, revision_checksum, tracked_configs,
};
use serin::crd::{AutoscalerRef, Canary, CanaryService, CanarySpec, TargetRef};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn cluster() -> Option<Client> {
    let required = std::env::var("SERIN_E2E_REQUIRED").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "SERIN_E2E_REQUIRED=1 but no cluster: {why}");
        println!(
            "SKIPPED: no reachable cluster ({why}); run e2e/cluster.sh up and eval $(e2e/cluster.sh env)"
        );
        None
    };
    if std::env::var_os("KUBECONFIG").is_none() {
        return skip("KUBECONFIG is not set".into());
    }
    let config = match Config::infer().await {
        Ok(c) => c,
        Err(e) => return skip(format!("kubeconfig: {e}")),
    };
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => return skip(format!("client: {e}")),
    };
    match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
        Ok(Ok(_)) => Some(client),
        Ok(Err(e)) => skip(format!("API server: {e}")),
        Err(_) => skip("API server did not answer in 5s".into()),
    }
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the Canary CRD is installed. This test does not install it: the cluster is
/// shared, and a CRD it created would shadow the one the operator's tests install.
async fn canary_crd_installed(client: &Client) -> bool {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.get_opt("canaries.serin.dev")
        .await
        .ok()
        .flatten()
        .is_some()
}

fn deployment(ns: &str) -> Result<Deployment, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": ns, "labels": {"app": "podinfo", "team": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app", "image": "busybox", "command": ["sleep", "3600"],
                        "envFrom": [
                            {"configMapRef": {"name": "podinfo-config"}},
                            {"secretRef": {"name": "podinfo-secret"}},
                            {"configMapRef": {"name": "absent-optional", "optional": true}}
                        ],
                        "ports": [{"name": "http", "containerPort": 9898}]
                    }]
                }
            }
        }
    }))
}

fn daemonset(ns: &str) -> Result<DaemonSet, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "agent", "image": "busybox", "command": ["sleep", "3600"]}]
                }
            }
        }
    }))
}

fn configmap(ns: &str, greeting: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::core::ObjectMeta {
            name: Some("podinfo-config".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "GREETING".to_string(),
            greeting.to_string(),
        )])),
        ..Default::default()
    }
}

async fn snapshot(client: &Client, ns: &str) -> Result<ConfigSnapshot, kube::Error> {
    let mut s = ConfigSnapshot::default();
    for cm in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
    {
        s.insert_configmap(cm);
    }
    for sec in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
    {
        s.insert_secret(sec);
    }
    Ok(s)
}

#[tokio::test]
async fn primary_promotion_scaling_and_hpa_on_a_real_api_server() -> TestResult {
    let Some(client) = cluster().await else {
        return Ok(());
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let ns = format!("serin-workloads-{nanos}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let result = scenario(&client, &ns).await;
    // Clean up even on failure; the namespace takes everything with it.
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result
}

async fn scenario(client: &Client, ns: &str) -> TestResult {
    let canaries: Api<Canary> = Api::namespaced(client.clone(), ns);
    let mut canary = Canary::new(
        "podinfo",
        CanarySpec {
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "podinfo".into(),
            },
            service: Some(CanaryService {
                port: 9898,
                ..Default::default()
            }),
            // Any Serin operator watching this cluster must leave the test alone.
            suspend: Some(true),
            ..Default::default()
        },
    );
    canary.metadata.namespace = Some(ns.into());
    let canary = if canary_crd_installed(client).await {
        canaries.create(&PostParams::default(), &canary).await?
    } else {
        // Without the CRD the garbage collector cannot resolve the owner kind and
        // leaves the dependents alone (it never deletes on an unknown kind), so an
        // in-memory Canary with a made-up uid is a faithful enough owner.
        println!("canaries.serin.dev is not installed: owning objects by an in-memory Canary");
        canary.metadata.uid = Some(format!("{ns}-uid"));
        canary
    };

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    cms.create(&PostParams::default(), &configmap(ns, "hello"))
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "podinfo-secret", "namespace": ns},
                "stringData": {"TOKEN": "s3cr3t"}
            }))?,
        )
        .await?;
    let target = Workload::Deployment(
        deployments
            .create(&PostParams::default(), &deployment(ns)?)
            .await?,
    );

    let hpa_version = discover_hpa_version(client).await?;
    println!("HPA version: {}", hpa_version.api_version());
    let workloads = Workloads::new(client.clone(), hpa_version);

    // Initialisation: primary and config copies created, owned by the Canary.
    let configs = snapshot(client, ns).await?;
    let tracked = tracked_configs(&target, &configs)?;
    assert_eq!(
        tracked.checksums().keys().collect::<Vec<_>>(),
        ["configmap/podinfo-config", "secret/podinfo-secret"]
    );
    assert!(
        workloads
            .ensure_primary(&canary, &target, None, &tracked, &configs)
            .await?
    );
    let primary = deployments.get("podinfo-primary").await?;
    let spec = primary.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector.match_labels,
        Some(BTreeMap::from([(
            "app".to_string(),
            "podinfo-primary".to_string()
        )]))
    );
    let owner = primary
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(Some(&owner[0].uid), canary.metadata.uid.as_ref());
    let labels = primary.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("serin")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    let env_from = spec.template.spec.clone().unwrap_or_default().containers[0]
        .env_from
        .clone()
        .unwrap_or_default();
    let refs: Vec<String> = env_from
        .iter()
        .filter_map(|e| {
            e.config_map_ref
                .as_ref()
                .map(|r| r.name.clone())
                .or_else(|| e.secret_ref.as_ref().map(|r| r.name.clone()))
        })
        .collect();
    assert_eq!(
        refs,
        [
            "podinfo-config-primary",
            "podinfo-secret-primary",
            "absent-optional"
        ]
    );
    let copy = cms.get("podinfo-config-primary").await?;
    assert_eq!(
        copy.data
            .clone()
            .unwrap_or_default()
            .get("GREETING")
            .map(String::as_str),
        Some("hello")
    );
    assert_eq!(copy.metadata.owner_references.map(|o| o.len()), Some(1));
    let secret_copy = secrets.get("podinfo-secret-primary").await?;
    assert_eq!(
        secret_copy
            .data
            .unwrap_or_default()
            .get("TOKEN")
            .map(|b| b.0.clone()),
        Some(b"s3cr3t".to_vec())
    );

    // A stale cache (primary unknown) makes the create lose a race: a conflict.
    let err = workloads
        .ensure_primary(&canary, &target, None, &tracked, &configs)
        .await
        .err()
        .ok_or("creating an existing primary must fail")?;
    assert!(err.is_conflict(), "{err}");
    let primary = Workload::Deployment(primary);
    assert!(
        !workloads
            .ensure_primary(&canary, &target, Some(&primary), &tracked, &configs)
            .await?
    );

    // Nothing changed: promotion writes nothing (the comparison survives defaulting).
    let configs = snapshot(client, ns).await?;
    assert!(
        !workloads
            .promote(&canary, &target, &primary, &tracked, &configs)
            .await?
    );

    // The ConfigMap changes: a new revision, promoted to the copy and the primary.
    let rev1 = revision_checksum(&target, &tracked)?;
    cms.replace("podinfo-config", &PostParams::default(), &{
        let mut cm = cms.get("podinfo-config").await?;
        cm.data = configmap(ns, "bonjour").data;
        cm
    })
    .await?;
    let configs = snapshot(client, ns).await?;
    let tracked2 = tracked_configs(&target, &configs)?;
    let rev2 = revision_checksum(&target, &tracked2)?;
    assert_ne!(rev1, rev2);
    assert!(
        workloads
            .promote(&canary, &target, &primary, &tracked2, &configs)
            .await?
    );
    let copy = cms.get("podinfo-config-primary").await?;
    assert_eq!(
        copy.data
            .unwrap_or_default()
            .get("GREETING")
            .map(String::as_str),
        Some("bonjour")
    );
    let primary = Workload::Deployment(deployments.get("podinfo-primary").await?);
    let pod_annotations = primary
        .template()?
        .metadata
        .clone()
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(pod_annotations.get(REVISION_ANNOTATION), Some(&rev2));
    let configs = snapshot(client, ns).await?;
    assert!(
        !workloads
            .promote(&canary, &target, &primary, &tracked2, &configs)
            .await?
    );

    // The primary rolls out (pods run on the cluster's kubelet).
    let primary = eventually("the primary to be ready", Duration::from_secs(120), || {
        let api = deployments.clone();
        async move {
            let p = Workload::Deployment(api.get("podinfo-primary").await.ok()?);
            primary_ready(Some(&p), 100).then_some(p)
        }
    })
    .await?;

    // After promotion the target goes to 0; its revision does not change.
    let target = Workload::Deployment(deployments.get("podinfo").await?);
    let err = workloads
        .scale_target_to_zero(&canary, &target, None, 100)
        .await
        .err()
        .ok_or("scaling to 0 with no primary must be refused")?;
    assert_eq!(err.reason(), "PrimaryNotReady");
    assert!(
        workloads
            .scale_target_to_zero(&canary, &target, Some(&primary), 100)
            .await?
    );
    let target = Workload::Deployment(deployments.get("podinfo").await?);
    assert_eq!(target.replicas(), Some(0));
    assert!(!workloads.scale_target(&canary, &target, 0).await?);
    assert_eq!(revision_checksum(&target, &tracked2)?, rev2);

    // revertOnDeletion gives it the primary's replicas back.
    assert!(
        workloads
            .revert_target(&canary, &target, Some(&primary), None)
            .await?
    );
    let target = Workload::Deployment(deployments.get("podinfo").await?);
    assert_eq!(target.replicas(), Some(2));
    let ready = eventually(
        "the target to be ready again",
        Duration::from_secs(120),
        || {
            let api = deployments.clone();
            async move {
                let t = Workload::Deployment(api.get("podinfo").await.ok()?);
                readiness(&t, 100).is_ready().then_some(())
            }
        },
    )
    .await;
    ready?;

    // HPA: `<hpa>-primary` targets the primary, in the discovered version.
    let hpas: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &hpa_version.api_resource());
    let user_hpa: DynamicObject = serde_json::from_value(json!({
        "apiVersion": hpa_version.api_version(), "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "podinfo", "namespace": ns},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "minReplicas": 2, "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 90}}}]
        }
    }))?;
    let user_hpa = hpas.create(&PostParams::default(), &user_hpa).await?;
    let mut autoscaled = canary.clone();
    autoscaled.spec.autoscaler_ref = Some(AutoscalerRef {
        api_version: hpa_version.api_version().into(),
        kind: "HorizontalPodAutoscaler".into(),
        name: "podinfo".into(),
        ..Default::default()
    });
    let err = workloads
        .ensure_autoscaler(&autoscaled, None, None)
        .await
        .err()
        .ok_or("a missing user HPA must be reported")?;
    assert_eq!(err.reason(), "AutoscalerNotFound");
    assert!(
        workloads
            .ensure_autoscaler(&autoscaled, Some(&user_hpa), None)
            .await?
    );
    let primary_hpa = hpas.get("podinfo-primary").await?;
    assert_eq!(
        primary_hpa.data["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo-primary"})
    );
    assert_eq!(primary_hpa.data["spec"]["maxReplicas"], json!(4));
    assert!(
        !workloads
            .ensure_autoscaler(&autoscaled, Some(&user_hpa), Some(&primary_hpa))
            .await?,
        "an unchanged HPA is not written"
    );
    // A cache that does not hold the primary HPA: create finds it and compares.
    assert!(
        !workloads
            .ensure_autoscaler(&autoscaled, Some(&user_hpa), None)
            .await?
    );

    // DaemonSet: "scaled to 0" by node selector, which is not a new revision.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds = Workload::DaemonSet(
        daemonsets
            .create(&PostParams::default(), &daemonset(ns)?)
            .await?,
    );
    let none = Default::default();
    let ds_rev = revision_checksum(&ds, &none)?;
    assert!(workloads.scale_target(&canary, &ds, 0).await?);
    let ds = Workload::DaemonSet(daemonsets.get("agent").await?);
    assert!(ds.is_scaled_to_zero());
    let selector = ds
        .template()?
        .spec
        .clone()
        .and_then(|s| s.node_selector)
        .unwrap_or_default();
    assert_eq!(
        selector
            .get(SCALE_TO_ZERO_NODE_SELECTOR)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(revision_checksum(&ds, &none)?, ds_rev);
    assert!(workloads.scale_target(&canary, &ds, 1).await?);
    let ds = Workload::DaemonSet(daemonsets.get("agent").await?);
    assert!(!ds.is_scaled_to_zero());
    assert_eq!(revision_checksum(&ds, &none)?, ds_rev);
    Ok(())
}
