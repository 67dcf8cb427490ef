//! Helpers for end-to-end tests against the local test cluster started by
//! `e2e/cluster.sh up`: the cluster's environment, a Kubernetes client, waiting,
//! test namespaces, the sample app, Prometheus queries and load generation.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let Some(env) = serin_e2e::ClusterEnv::for_test("my_test") else { return Ok(()) };
//! let client = env.client().await?;
//! let ns = serin_e2e::TestNamespace::create(&client, "my-test").await?;
//! # Ok(()) }
//! ```

pub mod backends;
pub mod canary;
pub mod faults;
pub mod load;
pub mod operator;
pub mod pss;
pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

/// Name the kubelet simulator resolves (via its bin dir) to the sample app binary.
pub const SAMPLE_APP: &str = "serin-sample-app";

/// Installs rustls' ring provider once (reqwest/kube are built without one).
pub fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The running cluster, as described by `e2e/cluster.sh env`.
#[derive(Clone, Debug)]
pub struct ClusterEnv {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    pub ca_file: PathBuf,
    pub admin_token: String,
    /// Token of an authenticated user with no RBAC rights (alice).
    pub user_token: String,
    /// Gateway (Traefik web entryPoint) base URL, e.g. http://127.0.0.1:8000.
    pub gateway: String,
    pub gateway_name: String,
    pub gateway_namespace: String,
    /// Prometheus base URL, e.g. http://127.0.0.1:9090.
    pub prometheus: String,
    /// Host address pods reach the host at (bridge address).
    pub host_ip: String,
    pub node: String,
}

fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

impl ClusterEnv {
    /// Reads the cluster's environment: variables from `eval "$(e2e/cluster.sh env)"`,
    /// else the env file in `$SERIN_E2E_STATE` (default /tmp/serin-e2e). Returns
    /// None when no cluster is described or its API server does not answer.
    pub fn load() -> Option<ClusterEnv> {
        let state = std::env::var("SERIN_E2E_STATE").unwrap_or_else(|_| "/tmp/serin-e2e".into());
        let mut vars = std::fs::read_to_string(PathBuf::from(&state).join("env"))
            .map(|t| parse_env_file(&t))
            .unwrap_or_default();
        for (k, v) in std::env::vars() {
            if k.starts_with("SERIN_E2E_") {
                vars.insert(k, v);
            }
        }
        let get = |k: &str| vars.get(k).cloned();
        let env = ClusterEnv {
            state_dir: PathBuf::from(get("SERIN_E2E_STATE").unwrap_or(state.clone())),
            kubeconfig: PathBuf::from(
                get("SERIN_E2E_KUBECONFIG").unwrap_or_else(|| format!("{state}/kubeconfig")),
            ),
            apiserver: get("SERIN_E2E_APISERVER")?,
            ca_file: PathBuf::from(get("SERIN_E2E_CA_FILE")?),
            admin_token: get("SERIN_E2E_ADMIN_TOKEN")?,
            user_token: get("SERIN_E2E_USER_TOKEN").unwrap_or_default(),
            gateway: get("SERIN_E2E_GATEWAY")?,
            gateway_name: get("SERIN_E2E_GATEWAY_NAME").unwrap_or_else(|| "serin-gateway".into()),
            gateway_namespace: get("SERIN_E2E_GATEWAY_NAMESPACE")
                .unwrap_or_else(|| "default".into()),
            prometheus: get("SERIN_E2E_PROMETHEUS")?,
            host_ip: get("SERIN_E2E_HOST_IP").unwrap_or_else(|| "10.244.0.1".into()),
            node: get("SERIN_E2E_NODE").unwrap_or_else(|| "serin-node".into()),
        };
        // Is anything listening?
        let addr = env
            .apiserver
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let sock: std::net::SocketAddr = addr.parse().ok()?;
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1)).ok()?;
        Some(env)
    }

    /// For a test: the cluster env, or None after printing a skip message. With
    /// `SERIN_E2E_REQUIRED=1` (CI) a missing cluster panics, failing the test.
    pub fn for_test(test: &str) -> Option<ClusterEnv> {
        match Self::load() {
            Some(e) => Some(e),
            None if required() => {
                panic!("{test}: no cluster, and SERIN_E2E_REQUIRED=1 (run e2e/cluster.sh up first)")
            }
            None => {
                // Written to the real stderr, past the test harness' capture,
                // so the skip shows in a normal `cargo test` run.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "{test}: skipped: no cluster (run e2e/cluster.sh up)"
                );
                None
            }
        }
    }

    /// An admin client for the cluster.
    pub async fn client(&self) -> Result<Client> {
        ensure_crypto();
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .context("loading kubeconfig")?;
        Client::try_from(config).context("building client")
    }

    /// A client that authenticates with `token` instead of the admin's.
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        ensure_crypto();
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .context("loading kubeconfig")?;
        config.auth_info.token = Some(token.to_string().into());
        Client::try_from(config).context("building client")
    }

    /// Where the sample app binary is, for pod templates (absolute path when the
    /// build dir is known, else the bare name the simulator resolves).
    pub fn sample_app_command(&self) -> String {
        std::env::var("SERIN_E2E_BIN_DIR")
            .map(|d| format!("{d}/{SAMPLE_APP}"))
            .ok()
            .filter(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| SAMPLE_APP.to_string())
    }
}

/// True when `SERIN_E2E_REQUIRED=1`: a missing cluster is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("SERIN_E2E_REQUIRED").is_ok_and(|v| v == "1" || v == "true")
}

/// A name unique to this process and moment, e.g. `split-1a2b3c`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let tag = (nanos ^ (std::process::id() << 8) ^ n.wrapping_mul(2654435761)) & 0xffffff;
    format!("{prefix}-{tag:06x}")
}

/// Polls `check` every 200 ms until it returns `Ok(Some(v))`, or fails after
/// `timeout` with the description and the last error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace for one test, deleted by [`TestNamespace::cleanup`] or, failing
/// that, on drop (best effort, with a fresh client on a helper thread).
pub struct TestNamespace {
    pub name: String,
    client: Client,
    kubeconfig: Option<PathBuf>,
    cleaned: bool,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<TestNamespace> {
        let name = unique_name(prefix);
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"serin.dev/e2e": "true"}}
        }))?;
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // The ServiceAccount admission needs the default SA (and its token) first.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_for("default service account", Duration::from_secs(30), || {
            let sas = sas.clone();
            async move {
                Ok(sas
                    .get_opt("default")
                    .await?
                    .filter(|sa| sa.secrets.as_ref().is_some_and(|s| !s.is_empty())))
            }
        })
        .await?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
            kubeconfig: ClusterEnv::load().map(|e| e.kubeconfig),
            cleaned: false,
        })
    }

    /// Deletes the namespace and waits until its pods are gone.
    pub async fn cleanup(mut self) -> Result<()> {
        self.cleaned = true;
        delete_namespace(&self.client, &self.name).await
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
    }
    release_canary_finalizers(client, name).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), name);
    wait_for(
        &format!("pods of namespace {name} to go"),
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                Ok(pods
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await
}

/// Removes Serin's finalizer from the namespace's Canaries, as a user would by hand:
/// a test's operator is usually stopped before its namespace goes, and a Canary that
/// keeps its finalizer would hold the namespace in Terminating for good. Best effort.
async fn release_canary_finalizers(client: &Client, ns: &str) {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    for c in list.items {
        if c.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()) {
            continue;
        }
        let Some(name) = c.metadata.name.as_deref() else {
            continue;
        };
        let patch = json!({"metadata": {"finalizers": null}});
        let _ = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (Some(kc), name) = (self.kubeconfig.clone(), self.name.clone()) else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                ensure_crypto();
                let Ok(k) = Kubeconfig::read_from(&kc) else {
                    return;
                };
                let Ok(cfg) =
                    Config::from_custom_kubeconfig(k, &KubeConfigOptions::default()).await
                else {
                    return;
                };
                if let Ok(c) = Client::try_from(cfg) {
                    let _ = Api::<Namespace>::all(c.clone())
                        .delete(&name, &DeleteParams::default())
                        .await;
                    release_canary_finalizers(&c, &name).await;
                }
            });
        })
        .join();
    }
}

/// The sample app as a Deployment + Service.
#[derive(Clone, Debug)]
pub struct SampleApp {
    pub name: String,
    pub namespace: String,
    pub replicas: i32,
    pub version: String,
    /// Program: absolute path, or a name the simulator resolves (`SAMPLE_APP`).
    pub command: String,
    /// Extra environment (ERROR_RATE, LATENCY_MS, READY, CRASH, MESSAGE, ...).
    pub env: Vec<(String, String)>,
    /// Labels of the pods (and the Service selector); `app: <name>` when empty.
    pub labels: BTreeMap<String, String>,
    pub port: u16,
    /// Adds `prometheus.io/scrape: "true"` and the port annotation.
    pub scrape: bool,
    /// readinessProbe httpGet /readyz every second.
    pub readiness_probe: bool,
    /// livenessProbe httpGet /healthz every second (restart after 2 failures).
    pub liveness_probe: bool,
    /// Raw container `env` entries (e.g. with `valueFrom`), added after `env`.
    pub env_raw: Vec<Value>,
    /// Raw container `envFrom` entries.
    pub env_from: Vec<Value>,
    /// Pod template annotations (besides the Prometheus ones).
    pub annotations: BTreeMap<String, String>,
    /// startupProbe httpGet on this path every second (2 failures restart).
    pub startup_probe_path: Option<String>,
}

impl SampleApp {
    pub fn new(namespace: &str, name: &str, command: &str) -> SampleApp {
        SampleApp {
            name: name.into(),
            namespace: namespace.into(),
            replicas: 1,
            version: "v1".into(),
            command: command.into(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            port: 8080,
            scrape: true,
            readiness_probe: true,
            liveness_probe: false,
            env_raw: Vec::new(),
            env_from: Vec::new(),
            annotations: BTreeMap::new(),
            startup_probe_path: None,
        }
    }
    pub fn startup_probe(mut self, path: &str) -> Self {
        self.startup_probe_path = Some(path.into());
        self
    }
    /// Adds a raw `env` entry, e.g. `{"name": "MESSAGE", "valueFrom": {"configMapKeyRef": ...}}`.
    pub fn env_json(mut self, entry: Value) -> Self {
        self.env_raw.push(entry);
        self
    }
    /// Adds a raw `envFrom` entry, e.g. `{"configMapRef": {"name": "cfg"}}`.
    pub fn env_from_json(mut self, entry: Value) -> Self {
        self.env_from.push(entry);
        self
    }
    pub fn liveness(mut self, on: bool) -> Self {
        self.liveness_probe = on;
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    pub fn replicas(mut self, n: i32) -> Self {
        self.replicas = n;
        self
    }
    pub fn version(mut self, v: &str) -> Self {
        self.version = v.into();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    fn selector(&self) -> BTreeMap<String, String> {
        if self.labels.is_empty() {
            BTreeMap::from([("app".to_string(), self.name.clone())])
        } else {
            self.labels.clone()
        }
    }

    pub fn deployment(&self) -> Result<Deployment> {
        let mut env = vec![
            json!({"name": "VERSION", "value": self.version}),
            json!({"name": "PORT", "value": self.port.to_string()}),
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        ];
        env.extend(self.env.iter().map(|(k, v)| json!({"name": k, "value": v})));
        env.extend(self.env_raw.iter().cloned());
        let mut annotations = self.annotations.clone();
        if self.scrape {
            annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
            annotations.insert("prometheus.io/port".to_string(), self.port.to_string());
        }
        let mut container = json!({
            "name": "app",
            "image": format!("serin-sample-app:{}", self.version),
            "command": [self.command],
            "env": env,
            "ports": [{"name": "http", "containerPort": self.port}],
        });
        if !self.env_from.is_empty() {
            container["envFrom"] = Value::Array(self.env_from.clone());
        }
        if let Some(path) = &self.startup_probe_path {
            container["startupProbe"] = json!({
                "httpGet": {"path": path, "port": self.port},
                "periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1
            });
        }
        if self.liveness_probe {
            container["livenessProbe"] = json!({
                "httpGet": {"path": "/healthz", "port": self.port},
                "periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1
            });
        }
        if self.readiness_probe {
            container["readinessProbe"] = json!({
                "httpGet": {"path": "/readyz", "port": self.port},
                "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1
            });
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": self.selector()},
                "template": {
                    "metadata": {"labels": self.selector(), "annotations": annotations},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 2}
                }
            }
        }))?)
    }

    pub fn service(&self) -> Result<Service> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "selector": self.selector(),
                "ports": [{"name": "http", "port": 80, "targetPort": self.port}]
            }
        }))?)
    }

    /// Creates the Deployment and the Service.
    pub async fn deploy(&self, client: &Client) -> Result<()> {
        let deps: Api<Deployment> = Api::namespaced(client.clone(), &self.namespace);
        deps.create(&PostParams::default(), &self.deployment()?)
            .await
            .with_context(|| format!("creating deployment {}", self.name))?;
        let svcs: Api<Service> = Api::namespaced(client.clone(), &self.namespace);
        svcs.create(&PostParams::default(), &self.service()?)
            .await
            .with_context(|| format!("creating service {}", self.name))?;
        Ok(())
    }
}

/// Waits until the Deployment has `replicas` available replicas (and, for 0, no pods).
pub async fn wait_deployment_available(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("deployment {ns}/{name} to have {replicas} available replicas"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await?;
                let st = d.status.clone().unwrap_or_default();
                let gen_ok = st.observed_generation >= d.metadata.generation;
                let ok = gen_ok
                    && st.available_replicas.unwrap_or(0) == replicas
                    && st.updated_replicas.unwrap_or(0) == replicas
                    && st.replicas.unwrap_or(0) == replicas;
                Ok(ok.then_some(d))
            }
        },
    )
    .await
}

/// Pods matching a label selector.
pub async fn list_pods(client: &Client, ns: &str, selector: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// The local process id the kubelet simulator reports for a pod's first container
/// (`containerID: serin-sim://<pid>`).
pub fn pod_pid(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_deref()?
        .strip_prefix("serin-sim://")?
        .parse()
        .ok()
}

/// True while a process with this pid exists.
pub fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Scales a Deployment (merge patch on the scale-relevant field).
pub async fn scale_deployment(client: &Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .with_context(|| format!("scaling {ns}/{name} to {replicas}"))?;
    Ok(())
}

/// Creates or replaces an arbitrary object given as JSON (any group/kind), via
/// discovery of its API resource. Handy for HTTPRoutes, TraefikServices, ...
pub async fn apply_json(client: &Client, obj: Value) -> Result<kube::api::DynamicObject> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("no apiVersion"))?;
    let kind = obj["kind"].as_str().ok_or_else(|| anyhow!("no kind"))?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let _ = ApiResource::from_gvk(&gvk);
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("no metadata.name"))?
        .to_string();
    let api: Api<DynamicObject> = match (caps.scope, obj["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            bail!("{kind} {name} is namespaced but has no metadata.namespace")
        }
        _ => Api::all_with(client.clone(), &ar),
    };
    let mut dynobj: DynamicObject = serde_json::from_value(obj.clone())?;
    match api.get_opt(&name).await? {
        None => Ok(api.create(&PostParams::default(), &dynobj).await?),
        Some(existing) => {
            dynobj.metadata.resource_version = existing.metadata.resource_version;
            Ok(api.replace(&name, &PostParams::default(), &dynobj).await?)
        }
    }
}

/// Waits until requests through the gateway with `Host: host` answer 200 and
/// every version in `versions` has answered (the route is programmed in Traefik).
pub async fn wait_route_serves(
    gateway: &str,
    host: &str,
    versions: &[&str],
    timeout: Duration,
) -> Result<()> {
    wait_for(
        &format!("gateway {gateway} to route Host {host} to versions {versions:?}"),
        timeout,
        || async move {
            let r = load::run(&load::LoadSpec::new(gateway).host(host).requests(40, 400.0)).await?;
            let all_ok = r.by_status.get(&200) == Some(&40);
            let seen = versions.iter().all(|v| r.count(v) > 0);
            Ok((all_ok && seen).then_some(()))
        },
    )
    .await
}

/// One sample of a Prometheus instant-query result.
#[derive(Clone, Debug)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Runs an instant PromQL query and returns its vector (or scalar as one sample).
pub async fn prom_query(prometheus: &str, query: &str) -> Result<Vec<PromSample>> {
    ensure_crypto();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp: Value = client
        .get(format!("{}/api/v1/query", prometheus.trim_end_matches('/')))
        .query(&[("query", query)])
        .send()
        .await
        .with_context(|| format!("querying Prometheus: {query}"))?
        .json()
        .await
        .context("decoding Prometheus answer")?;
    if resp["status"] != "success" {
        bail!("Prometheus query {query} failed: {resp}");
    }
    let data = &resp["data"];
    let parse = |v: &Value| -> f64 {
        v.get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => Ok(data["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| PromSample {
                        labels: serde_json::from_value(s["metric"].clone()).unwrap_or_default(),
                        value: parse(&s["value"]),
                    })
                    .collect()
            })
            .unwrap_or_default()),
        Some("scalar") => Ok(vec![PromSample {
            labels: BTreeMap::new(),
            value: parse(&data["result"]),
        }]),
        other => bail!("unexpected Prometheus result type {other:?} for {query}"),
    }
}

/// Sum of the values of an instant query (0 when it returned nothing).
pub async fn prom_sum(prometheus: &str, query: &str) -> Result<f64> {
    Ok(prom_query(prometheus, query)
        .await?
        .iter()
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file() {
        let m = parse_env_file("export A=1\nexport B=\"x y\"\n# c\n");
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some("x y"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }

    #[test]
    fn sample_app_manifests() {
        let app = SampleApp::new("ns", "web", "/bin/app")
            .replicas(3)
            .version("v2");
        let d = app.deployment().unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.command.as_deref(), Some(&["/bin/app".to_string()][..]));
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "VERSION" && e.value.as_deref() == Some("v2"))
        );
        let s = app.service().unwrap();
        assert_eq!(
            s.spec
                .unwrap()
                .selector
                .unwrap()
                .get("app")
                .map(String::as_str),
            Some("web")
        );
    }
}
