//! `serin-kubelet-sim`: a kubelet stand-in for the local test cluster.
//!
//! It registers a Node and keeps it Ready (Lease + Ready condition), binds Pending
//! pods to it (there is no scheduler), and runs each pod's containers as local
//! processes inside a network namespace it creates (veth on a bridge, address in
//! the bridge's /24). It reports pod status like a kubelet: phase, podIP,
//! conditions, container states, restart counts, readiness from
//! `readinessProbe`, restarts on `livenessProbe` failure or exit with back-off,
//! and finalizes deletion. It also keeps a Prometheus file_sd list of pods
//! annotated `prometheus.io/scrape: "true"`.
//!
//! A container whose image is a local OCI image (`--image-dir`) runs that image:
//! chrooted in its own copy of the rootfs, as the image's (or `runAsUser`'s) user,
//! with the pod's ServiceAccount token, CA and namespace where in-cluster clients
//! look for them, and `KUBERNETES_SERVICE_HOST`/`PORT` naming an address the pod's
//! network namespace reaches (`--forward` relays it to the loopback API server).
//!
//! A pod annotated `serin.dev/e2e-virtual: "true"` is *virtual*: no netns, no
//! process, no probes; it is reported Running and Ready at once with an address from
//! `--virtual-subnet`, so that a benchmark of thousands of pods measures the operator
//! rather than the pods. Its API writes share `--virtual-api-concurrency` slots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Probe, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

#[path = "kubelet-sim/image.rs"]
mod image;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "serin-kubelet-sim",
    about = "Kubelet simulator for Serin's local test cluster"
)]
struct Args {
    /// Kubeconfig to use (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Name of the Node this simulator registers.
    #[arg(long, default_value = "serin-node")]
    node_name: String,
    /// Directory for pod logs and pid files (pods/).
    #[arg(long, default_value = "/tmp/serin-e2e")]
    state_dir: PathBuf,
    /// Bridge the pods' veths are attached to (must exist, with the host address).
    #[arg(long, default_value = "serin0")]
    bridge: String,
    /// The bridge's host address; pods get addresses .2 - .254 of its /24.
    #[arg(long, default_value = "10.244.0.1")]
    host_ip: Ipv4Addr,
    /// Prefix of the network namespaces this simulator creates (and may delete).
    #[arg(long, default_value = "serin-pod-")]
    netns_prefix: String,
    /// Prometheus file_sd JSON file listing pods annotated prometheus.io/scrape=true.
    #[arg(long)]
    file_sd: Option<PathBuf>,
    /// Directories searched first for a container command without a slash.
    #[arg(long, value_delimiter = ':')]
    bin_dir: Vec<PathBuf>,
    /// Longest back-off between restarts of a crashing container, in seconds.
    #[arg(long, default_value_t = 10)]
    max_backoff_secs: u64,
    /// Longest grace period honoured when stopping a pod, in seconds.
    #[arg(long, default_value_t = 5)]
    max_grace_secs: u64,
    /// Directories of local OCI images (archives `*.tar` or layout directories);
    /// a container whose image names one runs it chrooted.
    #[arg(long)]
    image_dir: Vec<PathBuf>,
    /// The API server as pods reach it (HOST:PORT), for KUBERNETES_SERVICE_HOST/PORT.
    #[arg(long)]
    kubernetes_service: Option<String>,
    /// TCP relay LISTEN=TARGET (e.g. 10.244.0.1:6443=127.0.0.1:6443): loopback-only
    /// services made reachable from the pod network. Repeatable.
    #[arg(long)]
    forward: Vec<String>,
    /// Addresses given to virtual pods (annotation `serin.dev/e2e-virtual: "true"`):
    /// the first two octets of a /16 nothing routes to.
    #[arg(long, default_value = "100.64")]
    virtual_subnet: String,
    /// API requests (binding, status, delete) in flight at once for virtual pods, so
    /// that thousands created together do not swamp a small API server.
    #[arg(long, default_value_t = 8)]
    virtual_api_concurrency: usize,
}

/// Pod annotation that makes a pod virtual (see the module docs).
const VIRTUAL_ANNOTATION: &str = "serin.dev/e2e-virtual";

fn is_virtual(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VIRTUAL_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Shared state of the simulator.
struct Sim {
    client: Client,
    args: Args,
    http: reqwest::Client,
    ips: Mutex<IpPool>,
    scrape: Mutex<BTreeMap<String, Value>>,
    images: image::ImageStore,
    /// Next address index for a virtual pod (never reused while the simulator runs).
    virtual_next: std::sync::atomic::AtomicU32,
    /// Slots for virtual pods' API writes.
    virtual_slots: tokio::sync::Semaphore,
}

struct IpPool {
    used: HashSet<u8>,
    next: u8,
}

impl IpPool {
    fn allocate(&mut self) -> Option<u8> {
        // Round-robin so a freed address is not reused at once (Endpoints and
        // Traefik may still point at it for a moment).
        for _ in 0..253 {
            let candidate = self.next;
            self.next = if self.next >= 254 { 2 } else { self.next + 1 };
            if self.used.insert(candidate) {
                return Some(candidate);
            }
        }
        None
    }
    fn release(&mut self, last: u8) {
        self.used.remove(&last);
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

async fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("serin-kubelet-sim: a rustls crypto provider was already installed");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        error!("kubelet simulator failed: {e:#}");
        std::process::exit(1);
    }
}

async fn make_client(args: &Args) -> Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context("inferring kube config")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

async fn run(args: Args) -> Result<()> {
    let client = make_client(&args).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the probe HTTP client")?;
    std::fs::create_dir_all(args.state_dir.join("pods"))
        .with_context(|| format!("creating {}/pods", args.state_dir.display()))?;
    remove_stale_netns(&args.netns_prefix).await;
    for spec in &args.forward {
        start_forward(spec).await?;
    }
    let images = image::ImageStore::new(args.image_dir.clone(), args.state_dir.join("images"));
    let args_virtual_slots = args.virtual_api_concurrency.max(1);
    let sim = Arc::new(Sim {
        client,
        args,
        http,
        ips: Mutex::new(IpPool {
            used: HashSet::new(),
            next: 2,
        }),
        scrape: Mutex::new(BTreeMap::new()),
        images,
        virtual_next: std::sync::atomic::AtomicU32::new(0),
        virtual_slots: tokio::sync::Semaphore::new(args_virtual_slots),
    });
    sim.write_file_sd();

    register_node(&sim).await?;
    info!("node {} registered and Ready", sim.args.node_name);
    let hb = tokio::spawn(heartbeat_loop(sim.clone()));

    let result = pod_loop(sim.clone()).await;
    hb.abort();
    result
}

/// Binds LISTEN of a `LISTEN=TARGET` relay now (so a taken address fails start-up)
/// and relays every connection to TARGET in the background.
async fn start_forward(spec: &str) -> Result<()> {
    let (listen, target) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--forward {spec:?}: expected LISTEN=TARGET"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--forward: listening on {listen}"))?;
    info!("relaying {listen} to {target}");
    let target = target.to_string();
    tokio::spawn(async move {
        loop {
            let (mut inbound, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("relay to {target}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let target = target.clone();
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(&target).await {
                    Ok(mut outbound) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    Err(e) => debug!("relay {peer} -> {target}: {e}"),
                }
            });
        }
    });
    Ok(())
}

/// Namespaces with our prefix left by a previous run: kill what runs in them and
/// delete them.
async fn remove_stale_netns(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(pids) = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .await
        {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from `ip netns pids` of our own namespace.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        if let Err(e) = run_ip(&["netns", "delete", name]).await {
            warn!("removing stale netns {name}: {e:#}");
        } else {
            info!("removed stale netns {name}");
        }
    }
}

// ---------------------------------------------------------------- node

fn node_status(sim: &Sim) -> Value {
    let now = now_rfc3339();
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "status": {
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "250"},
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "250"},
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
                cond("Ready", "True", "KubeletReady", "serin-kubelet-sim is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": sim.args.host_ip.to_string()},
                {"type": "Hostname", "address": sim.args.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "serin-e2e", "systemUUID": "serin-e2e", "bootID": "serin-e2e",
                "kernelVersion": "", "osImage": "serin-kubelet-sim",
                "containerRuntimeVersion": "serin-sim://0.1", "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64"
            }
        }
    })
}

async fn register_node(sim: &Sim) -> Result<()> {
    let nodes: Api<Node> = Api::all(sim.client.clone());
    let name = &sim.args.node_name;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "serin.dev/simulated": "true"
            }
        },
        "spec": {}
    }))
    .context("building the Node object")?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => return Err(anyhow!(e).context(format!("creating Node {name}"))),
    }
    post_node_status(sim).await?;
    renew_lease(sim).await?;
    Ok(())
}

async fn post_node_status(sim: &Sim) -> Result<()> {
    let nodes: Api<Node> = Api::all(sim.client.clone());
    nodes
        .patch_status(
            &sim.args.node_name,
            &PatchParams::default(),
            &Patch::Merge(node_status(sim)),
        )
        .await
        .with_context(|| format!("posting status of Node {}", sim.args.node_name))?;
    Ok(())
}

async fn renew_lease(sim: &Sim) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(sim.client.clone(), "kube-node-lease");
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let spec =
        json!({"holderIdentity": sim.args.node_name, "leaseDurationSeconds": 40, "renewTime": now});
    match leases
        .patch(
            &sim.args.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": sim.args.node_name, "namespace": "kube-node-lease"},
                "spec": spec
            }))
            .context("building the node Lease")?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .context("creating the node Lease")?;
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context("renewing the node Lease")),
    }
}

async fn heartbeat_loop(sim: Arc<Sim>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&sim).await {
            warn!("{e:#}");
        }
        if let Err(e) = post_node_status(&sim).await {
            warn!("{e:#}");
        }
    }
}

// ---------------------------------------------------------------- pod watch

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Desired {
    Run,
    /// Stop the pod's processes; `finalize` deletes the pod object with grace 0.
    Stop {
        finalize: bool,
    },
}

struct PodHandle {
    tx: watch::Sender<Desired>,
    task: tokio::task::JoinHandle<()>,
}

async fn pod_loop(sim: Arc<Sim>) -> Result<()> {
    let pods: Api<Pod> = Api::all(sim.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut handles: HashMap<String, PodHandle> = HashMap::new();
    let mut binding: HashSet<String> = HashSet::new();
    let mut finalizing: HashSet<String> = HashSet::new();
    let mut init_seen: Option<HashSet<String>> = None;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = term.recv() => { info!("SIGTERM: stopping all pods"); break; }
            _ = tokio::signal::ctrl_c() => { info!("interrupt: stopping all pods"); break; }
        };
        let Some(ev) = ev else {
            warn!("pod watch stream ended");
            break;
        };
        match ev {
            Err(e) => warn!("pod watch: {e}"),
            Ok(Event::Init) => init_seen = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (init_seen.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                on_pod(&sim, pod, &mut handles, &mut binding, &mut finalizing);
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = init_seen.take() {
                    let gone: Vec<String> = handles
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        if let Some(h) = handles.remove(&uid) {
                            let _ = h.tx.send(Desired::Stop { finalize: false });
                        }
                    }
                }
            }
            Ok(Event::Apply(pod)) => on_pod(&sim, pod, &mut handles, &mut binding, &mut finalizing),
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    binding.remove(uid);
                    finalizing.remove(uid);
                    if let Some(h) = handles.remove(uid) {
                        let _ = h.tx.send(Desired::Stop { finalize: false });
                    }
                }
            }
        }
        handles.retain(|_, h| !(h.task.is_finished() && *h.tx.borrow() != Desired::Run));
    }

    // Shutdown: stop every pod's processes (pod objects are left as they are).
    let mut tasks = Vec::new();
    for (_, h) in handles.drain() {
        let _ = h.tx.send(Desired::Stop { finalize: false });
        tasks.push(h.task);
    }
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(15), all)
        .await
        .is_err()
    {
        warn!("some pods did not stop within 15 s");
    }
    Ok(())
}

fn on_pod(
    sim: &Arc<Sim>,
    pod: Pod,
    handles: &mut HashMap<String, PodHandle>,
    binding: &mut HashSet<String>,
    finalizing: &mut HashSet<String>,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let node = spec.node_name.clone();
    let ours = node.as_deref() == Some(sim.args.node_name.as_str());
    if pod.metadata.deletion_timestamp.is_some() {
        if let Some(h) = handles.get(&uid) {
            let _ = h.tx.send(Desired::Stop { finalize: true });
        } else if (ours || node.is_none()) && finalizing.insert(uid.clone()) {
            let sim = sim.clone();
            tokio::spawn(async move {
                let _slot = if is_virtual(&pod) {
                    sim.virtual_slots.acquire().await.ok()
                } else {
                    None
                };
                finalize_delete(&sim, &pod).await
            });
        }
        return;
    }
    if node.is_none() {
        let scheduler = spec
            .scheduler_name
            .as_deref()
            .unwrap_or("default-scheduler");
        if scheduler == "default-scheduler" && binding.insert(uid) {
            let sim = sim.clone();
            tokio::spawn(async move { bind_pod(&sim, &pod).await });
        }
        return;
    }
    if !ours || handles.contains_key(&uid) {
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return;
    }
    let (tx, rx) = watch::channel(Desired::Run);
    let task = if is_virtual(&pod) {
        tokio::spawn(run_virtual_pod(sim.clone(), pod, rx))
    } else {
        tokio::spawn(run_pod(sim.clone(), pod, rx))
    };
    handles.insert(uid, PodHandle { tx, task });
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

fn pods_api(sim: &Sim, pod: &Pod) -> Api<Pod> {
    Api::namespaced(
        sim.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
}

async fn bind_pod(sim: &Sim, pod: &Pod) {
    let _slot = if is_virtual(pod) {
        sim.virtual_slots.acquire().await.ok()
    } else {
        None
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = pods_api(sim, pod);
    let body = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": pod.metadata.namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": sim.args.node_name}
    });
    for attempt in 0..5 {
        match api
            .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &body)
            .await
        {
            Ok(_) => {
                debug!("bound {} to {}", pod_key(pod), sim.args.node_name);
                return;
            }
            // Already bound, or gone: nothing to do.
            Err(e) if matches!(api_code(&e), Some(409) | Some(404)) => return,
            Err(e) => {
                warn!("binding {} (attempt {}): {e}", pod_key(pod), attempt + 1);
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
        }
    }
}

async fn finalize_delete(sim: &Sim, pod: &Pod) {
    let Some(name) = pod.metadata.name.as_deref() else {
        return;
    };
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    for attempt in 0..5u64 {
        match pods_api(sim, pod).delete(name, &dp).await {
            Ok(_) => return,
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => return,
            Err(e) => {
                warn!("deleting {} (attempt {}): {e}", pod_key(pod), attempt + 1);
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
        }
    }
}

// ---------------------------------------------------------------- pod runtime

struct Netns {
    name: String,
    host_veth: String,
    ip: Ipv4Addr,
    last_octet: u8,
}

async fn setup_netns(sim: &Sim, uid: &str) -> Result<Netns> {
    let short: String = uid.chars().filter(|c| *c != '-').take(10).collect();
    let name = format!("{}{short}", sim.args.netns_prefix);
    let host_veth = format!("sh{short}");
    let peer = format!("sp{short}");
    let last_octet = sim
        .ips
        .lock()
        .map_err(|_| anyhow!("ip pool lock poisoned"))?
        .allocate()
        .ok_or_else(|| anyhow!("no free pod address left"))?;
    let o = sim.args.host_ip.octets();
    let ip = Ipv4Addr::new(o[0], o[1], o[2], last_octet);
    let netns = Netns {
        name,
        host_veth,
        ip,
        last_octet,
    };
    let gw = sim.args.host_ip.to_string();
    let cidr = format!("{ip}/24");
    let n = netns.name.as_str();
    let steps: Vec<Vec<&str>> = vec![
        vec!["netns", "add", n],
        vec![
            "link",
            "add",
            &netns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            n,
        ],
        vec!["link", "set", &netns.host_veth, "master", &sim.args.bridge],
        vec!["link", "set", &netns.host_veth, "up"],
        vec!["-n", n, "link", "set", &peer, "name", "eth0"],
        vec!["-n", n, "addr", "add", &cidr, "dev", "eth0"],
        vec!["-n", n, "link", "set", "eth0", "up"],
        vec!["-n", n, "link", "set", "lo", "up"],
        vec!["-n", n, "route", "add", "default", "via", &gw],
    ];
    for step in steps {
        if let Err(e) = run_ip(&step).await {
            teardown_netns(sim, &netns).await;
            return Err(e);
        }
    }
    Ok(netns)
}

async fn teardown_netns(sim: &Sim, netns: &Netns) {
    if let Err(e) = run_ip(&["netns", "delete", &netns.name]).await {
        debug!("deleting netns {}: {e:#}", netns.name);
    }
    // Deleting the namespace removes the veth pair; make sure of it.
    let _ = run_ip(&["link", "delete", &netns.host_veth]).await;
    if let Ok(mut pool) = sim.ips.lock() {
        pool.release(netns.last_octet);
    }
}

#[derive(Default)]
struct ProbeState {
    next_at: Option<Instant>,
    successes: i32,
    failures: i32,
}

struct ContainerRt {
    spec: Container,
    child: Option<Child>,
    pid: Option<u32>,
    started_at: Option<String>,
    started_instant: Option<Instant>,
    restart_count: i32,
    backoff: Duration,
    next_start: Instant,
    /// The container will not be (re)started (restartPolicy).
    done: bool,
    waiting: Option<(String, String)>,
    last_terminated: Option<Value>,
    current_terminated: Option<Value>,
    ready: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
    /// The startupProbe (if any) has succeeded since the last start.
    startup_done: bool,
    pid_file: PathBuf,
    log_file: PathBuf,
    /// Manifest digest of the local image it runs, if any.
    image_id: Option<String>,
    /// This container's copy of its image's rootfs (removed with the pod).
    rootfs: PathBuf,
}

impl ContainerRt {
    fn running(&self) -> bool {
        self.child.is_some()
    }
}

fn signal_group(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the process group of a child this simulator spawned
        // with process_group(0), so pgid == pid.
        unsafe {
            if libc::kill(-pid, sig) != 0 {
                libc::kill(pid, sig);
            }
        }
    }
}

async fn stop_child(c: &mut ContainerRt, grace: Duration) -> Option<i32> {
    let mut child = c.child.take()?;
    let pid = c.pid.take();
    if let Some(pid) = pid {
        signal_group(pid, libc::SIGTERM);
    }
    let code = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(st)) => st.code().or(Some(143)),
        _ => {
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            let _ = child.kill().await;
            Some(137)
        }
    };
    // Anything left in the group (children of the process) goes too.
    if let Some(pid) = pid {
        signal_group(pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(&c.pid_file);
    code
}

/// Resolve the program of a container: command (or the image's base name when no
/// command is given), looked up in --bin-dir then PATH when it has no slash.
fn resolve_program(sim: &Sim, c: &Container, env: &[(String, String)]) -> Result<Vec<String>> {
    let expand = |s: &String| expand_vars(s, env);
    let mut argv: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(expand).collect(),
        _ => {
            let image = c.image.clone().unwrap_or_default();
            let base = image.rsplit('/').next().unwrap_or("");
            let base = base.split(['@', ':']).next().unwrap_or("");
            if base.is_empty() {
                bail!("container {} has neither command nor image", c.name);
            }
            vec![base.to_string()]
        }
    };
    argv.extend(c.args.iter().flatten().map(expand));
    let prog = argv[0].clone();
    if !prog.contains('/') {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let found = sim
            .args
            .bin_dir
            .iter()
            .chain(path_dirs.iter())
            .map(|d| d.join(&prog))
            .find(|p| is_executable(p));
        match found {
            Some(p) => argv[0] = p.to_string_lossy().into_owned(),
            None => bail!("executable {prog:?} not found in --bin-dir or PATH"),
        }
    } else if !is_executable(Path::new(&prog)) {
        bail!("{prog} is not an executable file");
    }
    Ok(argv)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Kubernetes' `$(VAR)` expansion in command/args; `$$` escapes.
fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            if let Some(end) = inner.find(')') {
                let name = &inner[..end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("$(");
                        out.push_str(name);
                        out.push(')');
                    }
                }
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Resolve the container's environment: envFrom first, then env (which wins).
/// An error is a (reason, message) pair for the container's waiting state.
async fn resolve_env(
    sim: &Sim,
    pod: &Pod,
    ip: Ipv4Addr,
    c: &Container,
) -> std::result::Result<Vec<(String, String)>, (String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), ns);
    let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
    let mut out: Vec<(String, String)> = Vec::new();

    async fn cm_data(
        api: &Api<ConfigMap>,
        name: &str,
    ) -> std::result::Result<Option<BTreeMap<String, String>>, String> {
        match api.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm.data.unwrap_or_default())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading configmap {name}: {e}")),
        }
    }
    async fn secret_data(
        api: &Api<Secret>,
        name: &str,
    ) -> std::result::Result<Option<BTreeMap<String, String>>, String> {
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading secret {name}: {e}")),
        }
    }

    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        if let Some(r) = &src.config_map_ref {
            match cm_data(&cms, &r.name).await.map_err(cfg_err)? {
                Some(d) => out.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
                None if r.optional == Some(true) => {}
                None => return Err(cfg_err(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &src.secret_ref {
            match secret_data(&secrets, &r.name).await.map_err(cfg_err)? {
                Some(d) => out.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
                None if r.optional == Some(true) => {}
                None => return Err(cfg_err(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(expand_vars(v, &out))
        } else if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                match cm_data(&cms, &r.name).await.map_err(cfg_err)? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(cfg_err(format!(
                                "key {} not found in configmap {}",
                                r.key, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(cfg_err(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &vf.secret_key_ref {
                match secret_data(&secrets, &r.name).await.map_err(cfg_err)? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(cfg_err(format!(
                                "key {} not found in secret {}",
                                r.key, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(cfg_err(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(f) = &vf.field_ref {
                Some(field_value(pod, ip, &f.field_path, &sim.args))
            } else {
                // resourceFieldRef: no resource accounting here.
                Some("0".to_string())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            out.retain(|(k, _)| k != &e.name);
            out.push((e.name.clone(), v));
        }
    }
    Ok(out)
}

fn field_value(pod: &Pod, ip: Ipv4Addr, path: &str, args: &Args) -> String {
    let m = &pod.metadata;
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|l| l.get(key).cloned())
            .unwrap_or_default()
    };
    if let Some(k) = path
        .strip_prefix("metadata.labels['")
        .and_then(|r| r.strip_suffix("']"))
    {
        return label(&m.labels, k);
    }
    if let Some(k) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|r| r.strip_suffix("']"))
    {
        return label(&m.annotations, k);
    }
    match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "status.podIP" => ip.to_string(),
        "status.hostIP" => args.host_ip.to_string(),
        "spec.nodeName" => args.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn start_container(
    sim: &Sim,
    pod: &Pod,
    netns: &Netns,
    c: &mut ContainerRt,
) -> std::result::Result<(), (String, String)> {
    let env = resolve_env(sim, pod, netns.ip, &c.spec).await?;
    let local = sim
        .images
        .get(c.spec.image.as_deref().unwrap_or(""))
        .await
        .map_err(|e| ("ErrImagePull".to_string(), format!("{e:#}")))?;
    if let Some(img) = local {
        return start_image_container(sim, pod, netns, c, &img, env).await;
    }
    let env: Vec<(String, String)> = service_env(sim).into_iter().chain(env).collect();
    let argv = resolve_program(sim, &c.spec, &env)
        .map_err(|e| ("RunContainerError".to_string(), format!("{e:#}")))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log_file)
        .map_err(|e| {
            (
                "RunContainerError".to_string(),
                format!("opening {}: {e}", c.log_file.display()),
            )
        })?;
    let log2 = log
        .try_clone()
        .map_err(|e| ("RunContainerError".to_string(), format!("log file: {e}")))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &netns.name])
        .args(&argv)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", "/root")
        .env("HOSTNAME", pod.metadata.name.as_deref().unwrap_or(""))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = c
        .spec
        .working_dir
        .as_deref()
        .filter(|d| Path::new(d).is_dir())
    {
        cmd.current_dir(dir);
    } else {
        cmd.current_dir(&sim.args.state_dir);
    }
    let child = cmd.spawn().map_err(|e| {
        (
            "RunContainerError".to_string(),
            format!("starting {}: {e}", argv[0]),
        )
    })?;
    let pid = child.id();
    if let Some(pid) = pid {
        let _ = std::fs::write(&c.pid_file, pid.to_string());
    }
    info!(
        "{} container {}: started {} (pid {:?})",
        pod_key(pod),
        c.spec.name,
        argv.join(" "),
        pid
    );
    mark_started(c, child, pid);
    Ok(())
}

/// KUBERNETES_SERVICE_HOST/PORT as a kubelet sets them, pointing at the address
/// the pods reach the API server at.
/// A (re)started process begins a new run: fresh probes, not ready, no last exit.
fn mark_started(c: &mut ContainerRt, child: Child, pid: Option<u32>) {
    c.child = Some(child);
    c.pid = pid;
    c.started_at = Some(now_rfc3339());
    c.started_instant = Some(Instant::now());
    c.waiting = None;
    c.current_terminated = None;
    c.readiness = ProbeState::default();
    c.liveness = ProbeState::default();
    c.startup = ProbeState::default();
    c.startup_done = c.spec.startup_probe.is_none();
    c.ready = false;
}

fn service_env(sim: &Sim) -> Vec<(String, String)> {
    let Some((host, port)) = sim
        .args
        .kubernetes_service
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
    else {
        return Vec::new();
    };
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.into()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.into()),
        ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
    ]
}

/// The token, CA and namespace of the pod's ServiceAccount, from the token Secret
/// 1.20's token controller creates for it.
async fn service_account_data(
    sim: &Sim,
    pod: &Pod,
) -> std::result::Result<(Vec<u8>, Vec<u8>, String), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), ns);
    let sa = sas
        .get_opt(sa_name)
        .await
        .map_err(|e| format!("reading serviceaccount {sa_name}: {e}"))?
        .ok_or_else(|| format!("serviceaccount \"{sa_name}\" not found"))?;
    for r in sa.secrets.iter().flatten() {
        let Some(name) = r.name.as_deref() else {
            continue;
        };
        let Some(secret) = secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("reading secret {name}: {e}"))?
        else {
            continue;
        };
        if secret.type_.as_deref() != Some("kubernetes.io/service-account-token") {
            continue;
        }
        let data = secret.data.unwrap_or_default();
        if let Some(token) = data.get("token") {
            let ca = data.get("ca.crt").map(|b| b.0.clone()).unwrap_or_default();
            return Ok((token.0.clone(), ca, ns.to_string()));
        }
    }
    Err(format!("serviceaccount {sa_name} has no token Secret yet"))
}

fn write_service_account(rootfs: &Path, token: &[u8], ca: &[u8], ns: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = rootfs.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&dir)?;
    for (name, body) in [
        ("token", token),
        ("ca.crt", ca),
        ("namespace", ns.as_bytes()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, body)?;
        // A Secret volume's default mode (0644): readable by any runAsUser.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The device nodes every container runtime provides: programs expect them (a
/// static binary's getrandom falls back to /dev/urandom, for one).
fn populate_dev(rootfs: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dev = rootfs.join("dev");
    std::fs::create_dir_all(&dev)?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("device path contains NUL"))?;
        // SAFETY: mknod(2) on a path we own; 0666 as runtimes create them.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    }
    Ok(())
}

/// uid, gid and supplementary groups a container runs with: securityContext
/// (container over pod) over the image's USER; runAsNonRoot is enforced like the
/// kubelet does.
fn container_identity(
    pod: &Pod,
    c: &Container,
    img: &image::Image,
) -> std::result::Result<(u32, u32, Vec<u32>), String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c_sc = c.security_context.as_ref();
    let (img_uid, img_gid) = match img.config.user.as_deref() {
        Some(u) => image::parse_user(u).map_err(|e| format!("{e:#}"))?,
        None => (0, None),
    };
    let id = |v: Option<i64>, what: &str| -> std::result::Result<Option<u32>, String> {
        v.map(|v| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range")))
            .transpose()
    };
    let uid = id(
        c_sc.and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user)),
        "runAsUser",
    )?
    .unwrap_or(img_uid);
    let gid = id(
        c_sc.and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group)),
        "runAsGroup",
    )?
    .or(img_gid)
    .unwrap_or(0);
    let non_root = c_sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let mut groups = Vec::new();
    for g in pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod_sc.and_then(|s| s.fs_group))
    {
        groups.extend(id(Some(g), "supplementalGroups")?);
    }
    Ok((uid, gid, groups))
}

/// Starts a container from a local image: its own rootfs copy, the ServiceAccount
/// files, the image's environment, then chroot + setuid inside the pod's netns.
async fn start_image_container(
    sim: &Sim,
    pod: &Pod,
    netns: &Netns,
    c: &mut ContainerRt,
    img: &image::Image,
    env: Vec<(String, String)>,
) -> std::result::Result<(), (String, String)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
    let run_err = |m: String| ("RunContainerError".to_string(), m);
    let (uid, gid, groups) = container_identity(pod, &c.spec, img).map_err(cfg_err)?;
    if !c.rootfs.is_dir() {
        let out = Command::new("cp")
            .arg("-a")
            .arg(&img.rootfs)
            .arg(&c.rootfs)
            .output()
            .await
            .map_err(|e| run_err(format!("copying the rootfs: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&c.rootfs);
            return Err(run_err(format!(
                "copying the rootfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    populate_dev(&c.rootfs).map_err(|e| run_err(format!("creating /dev in the rootfs: {e}")))?;
    let automount = pod
        .spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        != Some(false);
    if automount {
        let (token, ca, ns) = service_account_data(sim, pod).await.map_err(cfg_err)?;
        write_service_account(&c.rootfs, &token, &ca, &ns)
            .map_err(|e| run_err(format!("writing the serviceaccount files: {e}")))?;
    }

    // The image's environment, then what a kubelet adds, then the container's own.
    let mut full: Vec<(String, String)> = img.config.env.clone();
    if !full.iter().any(|(k, _)| k == "PATH") {
        full.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    full.push((
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    ));
    full.extend(service_env(sim));
    for (k, v) in env.iter() {
        full.retain(|(fk, _)| fk != k);
        full.push((k.clone(), v.clone()));
    }
    let expand = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| expand_vars(s, &full)).collect::<Vec<_>>())
    };
    let argv = image::container_argv(
        &img.config,
        expand(&c.spec.command).as_deref(),
        expand(&c.spec.args).as_deref(),
    );
    let Some(first) = argv.first() else {
        return Err(run_err(
            "no command: neither the container nor the image names one".into(),
        ));
    };
    let path_var = full
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let prog = image::resolve_in_rootfs(&c.rootfs, first, &path_var)
        .map_err(|e| run_err(format!("{e:#}")))?;
    let wd = c
        .spec
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| img.config.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    if !wd.starts_with('/') {
        return Err(cfg_err(format!("workingDir {wd:?} is not absolute")));
    }
    // Container runtimes create a missing working directory.
    std::fs::create_dir_all(c.rootfs.join(wd.trim_start_matches('/')))
        .map_err(|e| run_err(format!("creating workingDir {wd}: {e}")))?;

    let netns_file = std::fs::File::open(format!("/run/netns/{}", netns.name))
        .map_err(|e| run_err(format!("opening netns {}: {e}", netns.name)))?;
    let netns_fd = netns_file.as_raw_fd();
    let root_c = std::ffi::CString::new(c.rootfs.as_os_str().as_bytes())
        .map_err(|_| run_err("rootfs path contains NUL".into()))?;
    let wd_c = std::ffi::CString::new(wd.clone())
        .map_err(|_| cfg_err("workingDir contains NUL".into()))?;
    let gids: Vec<libc::gid_t> = groups;

    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log_file)
        .map_err(|e| run_err(format!("opening {}: {e}", c.log_file.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| run_err(format!("log file: {e}")))?;
    let mut cmd = Command::new(&prog);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(full.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: between fork and exec only async-signal-safe system calls run, on
    // values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
            check(libc::chroot(root_c.as_ptr()))?;
            check(libc::chdir(wd_c.as_ptr()))?;
            // Groups before the uid: after setuid there is no right to change them.
            check(libc::setgroups(gids.len(), gids.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| run_err(format!("starting {prog} in {}: {e}", c.rootfs.display())))?;
    drop(netns_file);
    let pid = child.id();
    if let Some(pid) = pid {
        let _ = std::fs::write(&c.pid_file, pid.to_string());
    }
    info!(
        "{} container {}: started {} from image {} ({}) as {uid}:{gid} (pid {:?})",
        pod_key(pod),
        c.spec.name,
        argv.join(" "),
        c.spec.image.as_deref().unwrap_or(""),
        img.digest,
        pid
    );
    c.image_id = Some(img.digest.clone());
    mark_started(c, child, pid);
    Ok(())
}

fn probe_port(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs one probe attempt: true when it succeeded.
async fn probe_once(sim: &Sim, probe: &Probe, ip: Ipv4Addr, c: &Container) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &probe.http_get {
        let Some(port) = probe_port(&h.port, c) else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        // Probes go to the pod's own address only (never to httpGet.host).
        let url = format!("http://{ip}:{port}{path}");
        let mut req = sim.http.get(&url).timeout(timeout);
        for hh in h.http_headers.iter().flatten() {
            req = req.header(hh.name.as_str(), hh.value.as_str());
        }
        return match req.send().await {
            Ok(r) => r.status().is_success() || r.status().is_redirection(),
            Err(_) => false,
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = probe_port(&t.port, c) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        );
    }
    // exec and grpc probes are not simulated: treat them as passing.
    true
}

/// Advances a probe; returns Some(new verdict) when the thresholds flip it.
async fn run_probe(
    sim: &Sim,
    probe: &Probe,
    st: &mut ProbeState,
    started: Instant,
    ip: Ipv4Addr,
    c: &Container,
) -> Option<bool> {
    let now = Instant::now();
    let first =
        started + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let due = st.next_at.unwrap_or(first);
    if now < due {
        return None;
    }
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    st.next_at = Some(now + period);
    if probe_once(sim, probe, ip, c).await {
        st.successes += 1;
        st.failures = 0;
        if st.successes >= probe.success_threshold.unwrap_or(1).max(1) {
            return Some(true);
        }
    } else {
        st.failures += 1;
        st.successes = 0;
        if st.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
            return Some(false);
        }
    }
    None
}

fn terminated_json(code: i32, started: Option<&String>, reason: Option<&str>) -> Value {
    let reason = reason.unwrap_or(if code == 0 { "Completed" } else { "Error" });
    json!({"terminated": {"exitCode": code, "reason": reason,
        "startedAt": started, "finishedAt": now_rfc3339()}})
}

struct Conditions {
    times: HashMap<&'static str, (bool, String)>,
}

impl Conditions {
    fn get(&mut self, t: &'static str, status: bool) -> Value {
        let entry = self
            .times
            .entry(t)
            .or_insert_with(|| (status, now_rfc3339()));
        if entry.0 != status {
            *entry = (status, now_rfc3339());
        }
        json!({"type": t, "status": if status {"True"} else {"False"},
               "lastProbeTime": null, "lastTransitionTime": entry.1})
    }
}

/// A virtual pod: Running and Ready at once, with an address nothing routes to and no
/// process; stopping it only deletes the object (when asked to finalize).
async fn run_virtual_pod(sim: Arc<Sim>, pod: Pod, mut rx: watch::Receiver<Desired>) {
    let key = pod_key(&pod);
    let api = pods_api(&sim, &pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.clone() else {
        return;
    };
    let n = sim
        .virtual_next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Host part 1..=254 of each /24 in the /16, so no address ends in .0 or .255.
    let ip = format!(
        "{}.{}.{}",
        sim.args.virtual_subnet,
        (n / 254) % 256,
        n % 254 + 1
    );
    let now = now_rfc3339();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "ready": true, "started": true, "restartCount": 0,
                "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "containerID": format!("serin-sim://virtual-{n}"),
                "state": {"running": {"startedAt": now}}, "lastState": {},
            })
        })
        .collect();
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": sim.args.host_ip.to_string(),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": statuses,
    }});
    let mut backoff = Duration::from_millis(200);
    loop {
        if *rx.borrow() != Desired::Run {
            break;
        }
        let result = {
            let _slot = sim.virtual_slots.acquire().await.ok();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
        };
        match result {
            Ok(_) => {
                debug!("{key}: virtual pod Ready at {ip}");
                break;
            }
            Err(e) if api_code(&e) == Some(404) => return,
            Err(e) => {
                warn!("{key}: virtual pod status update failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = rx.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    while *rx.borrow_and_update() == Desired::Run {
        if rx.changed().await.is_err() {
            return;
        }
    }
    let desired = *rx.borrow();
    let _slot = sim.virtual_slots.acquire().await.ok();
    finish(&sim, &pod, desired).await;
}

async fn run_pod(sim: Arc<Sim>, pod: Pod, mut rx: watch::Receiver<Desired>) {
    let key = pod_key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api = pods_api(&sim, &pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.clone() else {
        return;
    };
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let grace = Duration::from_secs(
        (spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64)
            .min(sim.args.max_grace_secs),
    );
    let start_time = now_rfc3339();
    let mut conds = Conditions {
        times: HashMap::new(),
    };
    let mut last_status: Option<Value> = None;

    // Network namespace (retry until it works or the pod goes away).
    let netns = loop {
        let desired = *rx.borrow();
        if desired != Desired::Run {
            finish(&sim, &pod, desired).await;
            return;
        }
        match setup_netns(&sim, &uid).await {
            Ok(n) => break n,
            Err(e) => {
                warn!("{key}: network setup failed: {e:#}");
                let patch = json!({"status": {"phase": "Pending", "conditions": [
                    conds.get("PodScheduled", true),
                    {"type": "Ready", "status": "False", "reason": "NetworkNotReady", "message": format!("{e:#}")}
                ]}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = rx.changed() => {}
                }
            }
        }
    };
    info!("{key}: netns {} address {}", netns.name, netns.ip);

    let safe_name = format!(
        "{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        name
    );
    let pods_dir = sim.args.state_dir.join("pods");
    let mut containers: Vec<ContainerRt> = spec
        .containers
        .iter()
        .map(|c| ContainerRt {
            spec: c.clone(),
            child: None,
            pid: None,
            started_at: None,
            started_instant: None,
            restart_count: 0,
            backoff: Duration::from_secs(1),
            next_start: Instant::now(),
            done: false,
            waiting: Some(("ContainerCreating".into(), String::new())),
            last_terminated: None,
            current_terminated: None,
            ready: false,
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            startup: ProbeState::default(),
            startup_done: false,
            pid_file: pods_dir.join(format!("{uid}-{}.pid", c.name)),
            log_file: pods_dir.join(format!("{safe_name}_{}.log", c.name)),
            image_id: None,
            rootfs: pods_dir.join(format!("{uid}-{}.rootfs", c.name)),
        })
        .collect();

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = rx.changed() => {}
        }
        let desired = *rx.borrow();
        if desired != Desired::Run {
            break;
        }
        for c in containers.iter_mut() {
            // Exited?
            if let Some(child) = c.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        let code = st.code().unwrap_or(128 + st.signal_or(9));
                        info!("{key} container {}: exited with {code}", c.spec.name);
                        let _ = std::fs::remove_file(&c.pid_file);
                        c.child = None;
                        c.pid = None;
                        c.ready = false;
                        on_exit(c, code, &restart_policy, sim.args.max_backoff_secs);
                    }
                    Ok(None) => {}
                    Err(e) => warn!("{key} container {}: wait: {e}", c.spec.name),
                }
            }
            // (Re)start when due.
            if c.child.is_none() && !c.done && Instant::now() >= c.next_start {
                let is_restart = c.started_at.is_some();
                match start_container(&sim, &pod, &netns, c).await {
                    Ok(()) => {
                        if is_restart {
                            c.restart_count += 1;
                        }
                    }
                    Err((reason, msg)) => {
                        warn!("{key} container {}: {reason}: {msg}", c.spec.name);
                        c.waiting = Some((reason, msg));
                        c.next_start = Instant::now() + c.backoff;
                        c.backoff =
                            (c.backoff * 2).min(Duration::from_secs(sim.args.max_backoff_secs));
                    }
                }
            }
            // Probes.
            if let (true, Some(started)) = (c.running(), c.started_instant) {
                // startupProbe: nothing else is probed (and the container is not
                // ready) until it succeeds; its failure restarts the container.
                if !c.startup_done
                    && let Some(p) = c.spec.startup_probe.clone()
                {
                    match run_probe(&sim, &p, &mut c.startup, started, netns.ip, &c.spec).await {
                        Some(true) => c.startup_done = true,
                        Some(false) => {
                            info!(
                                "{key} container {}: startup probe failed, restarting",
                                c.spec.name
                            );
                            let code = stop_child(c, grace).await.unwrap_or(137);
                            c.ready = false;
                            on_exit(c, code, &restart_policy, sim.args.max_backoff_secs);
                            continue;
                        }
                        None => {}
                    }
                    if !c.startup_done {
                        c.ready = false;
                        continue;
                    }
                }
                if let Some(p) = c.spec.liveness_probe.clone()
                    && run_probe(&sim, &p, &mut c.liveness, started, netns.ip, &c.spec).await
                        == Some(false)
                {
                    info!(
                        "{key} container {}: liveness probe failed, restarting",
                        c.spec.name
                    );
                    let code = stop_child(c, grace).await.unwrap_or(137);
                    c.ready = false;
                    on_exit(c, code, &restart_policy, sim.args.max_backoff_secs);
                    // Liveness restarts are not crash back-off in the first instance.
                    continue;
                }
                match c.spec.readiness_probe.clone() {
                    Some(p) => {
                        if let Some(v) =
                            run_probe(&sim, &p, &mut c.readiness, started, netns.ip, &c.spec).await
                        {
                            c.ready = v;
                        }
                    }
                    None => c.ready = true,
                }
                // A container that stays up for a while earns its back-off reset.
                if started.elapsed() > Duration::from_secs(30) {
                    c.backoff = Duration::from_secs(1);
                }
            }
        }

        let status = pod_status(&sim, &netns, &containers, &start_time, &mut conds);
        update_scrape(&sim, &pod, &uid, &netns, &containers);
        if last_status.as_ref() != Some(&status) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => last_status = Some(status),
                Err(e) if api_code(&e) == Some(404) => {
                    debug!("{key}: gone while updating status");
                    break;
                }
                Err(e) => warn!("{key}: status update failed: {e}"),
            }
        }
    }

    // Stop.
    let desired = *rx.borrow();
    for c in containers.iter_mut() {
        if c.running() {
            let code = stop_child(c, grace).await;
            info!("{key} container {}: stopped ({code:?})", c.spec.name);
        }
    }
    remove_scrape(&sim, &uid);
    for c in &containers {
        if c.image_id.is_some()
            && let Err(e) = std::fs::remove_dir_all(&c.rootfs)
        {
            debug!("{key}: removing {}: {e}", c.rootfs.display());
        }
    }
    teardown_netns(&sim, &netns).await;
    info!("{key}: stopped, netns {} removed", netns.name);
    finish(&sim, &pod, desired).await;
}

trait SignalOr {
    fn signal_or(&self, d: i32) -> i32;
}
impl SignalOr for std::process::ExitStatus {
    fn signal_or(&self, d: i32) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.signal().unwrap_or(d)
    }
}

fn on_exit(c: &mut ContainerRt, code: i32, restart_policy: &str, max_backoff: u64) {
    let term = terminated_json(code, c.started_at.as_ref(), None);
    c.started_instant = None;
    let restart = match restart_policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    };
    if restart {
        c.last_terminated = Some(term);
        c.current_terminated = None;
        c.waiting = Some((
            "CrashLoopBackOff".into(),
            format!(
                "back-off {}s restarting failed container {}",
                c.backoff.as_secs(),
                c.spec.name
            ),
        ));
        c.next_start = Instant::now() + c.backoff;
        c.backoff = (c.backoff * 2).min(Duration::from_secs(max_backoff));
    } else {
        c.done = true;
        c.waiting = None;
        c.current_terminated = Some(term);
    }
}

async fn finish(sim: &Sim, pod: &Pod, desired: Desired) {
    if desired == (Desired::Stop { finalize: true }) {
        finalize_delete(sim, pod).await;
    }
}

fn pod_status(
    sim: &Sim,
    netns: &Netns,
    containers: &[ContainerRt],
    start_time: &str,
    conds: &mut Conditions,
) -> Value {
    let all_ready = containers.iter().all(|c| c.ready && c.running());
    let all_done = containers.iter().all(|c| c.done);
    let phase = if all_done {
        let ok = containers.iter().all(|c| {
            c.current_terminated
                .as_ref()
                .and_then(|t| t["terminated"]["exitCode"].as_i64())
                == Some(0)
        });
        if ok { "Succeeded" } else { "Failed" }
    } else {
        "Running"
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = if c.running() {
                json!({"running": {"startedAt": c.started_at}})
            } else if let Some(t) = &c.current_terminated {
                t.clone()
            } else {
                let (reason, message) = c.waiting.clone().unwrap_or_default();
                json!({"waiting": {"reason": reason, "message": message}})
            };
            json!({
                "name": c.spec.name,
                "ready": c.ready && c.running(),
                "started": c.running() && c.startup_done,
                "restartCount": c.restart_count,
                "image": c.spec.image.clone().unwrap_or_default(),
                "imageID": c.image_id.clone().unwrap_or_default(),
                "containerID": c.pid.map(|p| format!("serin-sim://{p}")),
                "state": state,
                "lastState": c.last_terminated.clone().unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    let ip = netns.ip.to_string();
    json!({"status": {
        "phase": phase,
        "hostIP": sim.args.host_ip.to_string(),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start_time,
        "conditions": [
            conds.get("Initialized", true),
            conds.get("Ready", all_ready),
            conds.get("ContainersReady", all_ready),
            conds.get("PodScheduled", true),
        ],
        "containerStatuses": statuses,
    }})
}

// ---------------------------------------------------------------- Prometheus file_sd

fn sanitize_label(k: &str) -> String {
    k.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn update_scrape(sim: &Sim, pod: &Pod, uid: &str, netns: &Netns, containers: &[ContainerRt]) {
    if sim.args.file_sd.is_none() {
        return;
    }
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    let wanted = ann.get("prometheus.io/scrape").map(String::as_str) == Some("true")
        && containers.iter().any(ContainerRt::running);
    let entry = if wanted {
        let port = ann
            .get("prometheus.io/port")
            .and_then(|p| p.parse::<u16>().ok())
            .or_else(|| {
                containers
                    .iter()
                    .flat_map(|c| c.spec.ports.iter().flatten())
                    .next()
                    .and_then(|p| u16::try_from(p.container_port).ok())
            })
            .unwrap_or(8080);
        let mut labels = serde_json::Map::new();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            labels.insert(sanitize_label(k), json!(v));
        }
        labels.insert(
            "namespace".into(),
            json!(pod.metadata.namespace.as_deref().unwrap_or("default")),
        );
        labels.insert("pod".into(), json!(pod.metadata.name));
        if let Some(p) = ann.get("prometheus.io/path") {
            labels.insert("__metrics_path__".into(), json!(p));
        }
        Some(json!({"targets": [format!("{}:{port}", netns.ip)], "labels": labels}))
    } else {
        None
    };
    let changed = match sim.scrape.lock() {
        Ok(mut m) => match entry {
            Some(e) => m.insert(uid.to_string(), e.clone()) != Some(e),
            None => m.remove(uid).is_some(),
        },
        Err(_) => false,
    };
    if changed {
        sim.write_file_sd();
    }
}

fn remove_scrape(sim: &Sim, uid: &str) {
    let changed = sim
        .scrape
        .lock()
        .map(|mut m| m.remove(uid).is_some())
        .unwrap_or(false);
    if changed {
        sim.write_file_sd();
    }
}

impl Sim {
    fn write_file_sd(&self) {
        let Some(path) = &self.args.file_sd else {
            return;
        };
        let list: Vec<Value> = match self.scrape.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        let tmp = path.with_extension("json.tmp");
        let body = Value::Array(list).to_string();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
            warn!("writing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_kubernetes_vars() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand_vars("x$(A)y", &env), "x1y");
        assert_eq!(expand_vars("$(B)", &env), "$(B)");
        assert_eq!(expand_vars("$$(A)", &env), "$(A)");
        assert_eq!(expand_vars("cost $5", &env), "cost $5");
    }

    #[test]
    fn ip_pool_round_robin() {
        let mut p = IpPool {
            used: HashSet::new(),
            next: 2,
        };
        assert_eq!(p.allocate(), Some(2));
        assert_eq!(p.allocate(), Some(3));
        p.release(2);
        assert_eq!(p.allocate(), Some(4));
        for _ in 0..251 {
            assert!(p.allocate().is_some());
        }
        assert_eq!(p.allocate(), None);
    }
}
