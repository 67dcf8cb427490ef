//! The install as users run it: build the image (`make image`), point a copy of the
//! kustomization at it, `kubectl apply -k`, and the operator runs as a pod from that
//! image (the kubelet simulator unpacks it and runs it chrooted) with in-cluster
//! config and its own ServiceAccount; a Canary is promoted; `kubectl delete -k`
//! removes everything. Also: every provider overlay renders and passes the API
//! server's dry run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, pod_versions, release, status};
use serin_e2e::operator::repo_root;
use serin_e2e::{
    ClusterEnv, SampleApp, TestNamespace, apply_json, list_pods, pod_pid, pod_ready, unique_name,
    wait_for,
};
use tokio::process::Command;

/// The install test deletes serin-system and the CRDs; the overlay test needs
/// serin-system to exist for its dry run. They take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OVERLAYS: [&str; 6] = [
    "gatewayapi",
    "linkerd",
    "istio",
    "traefik",
    "nginx",
    "kubernetes",
];

async fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl(env: &ClusterEnv) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", &env.kubeconfig);
    c
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A scratch copy of the install manifests (`kustomize/` and `crds/`), so the test
/// edits what users edit without touching the tracked files.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Result<Workdir> {
        let dir = std::env::temp_dir().join(unique_name("serin-install"));
        let root = repo_root();
        copy_dir(&root.join("kustomize"), &dir.join("kustomize"))?;
        copy_dir(&root.join("crds"), &dir.join("crds"))?;
        Ok(Workdir(dir))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// On a failing test, removes the install anyway: an operator left watching every
/// namespace would act on the next tests' Canaries.
struct Uninstall {
    kubeconfig: PathBuf,
    site: PathBuf,
    armed: bool,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::process::Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .args(["delete", "--ignore-not-found", "--wait=false", "-k"])
                .arg(&self.site)
                .output();
        }
    }
}

/// `kustomize edit set image serin=<image>` in `dir`; without a kustomize binary,
/// the same `images:` entry written by hand (what the docs tell kubectl-only users).
async fn set_image(dir: &Path, image: &str) -> Result<()> {
    if which("kustomize") {
        run(
            Command::new("kustomize")
                .args(["edit", "set", "image", &format!("serin={image}")])
                .current_dir(dir),
            "kustomize edit set image",
        )
        .await?;
        return Ok(());
    }
    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let path = dir.join("kustomization.yaml");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!(
        "images:\n  - name: serin\n    newName: {name}\n    newTag: \"{tag}\"\n"
    ));
    std::fs::write(&path, text)?;
    Ok(())
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// `make image` (scripts/image.sh, so a machine without make runs it too): returns
/// the OCI archive and the image's tag.
async fn build_image() -> Result<(PathBuf, String)> {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/image.sh"))
        .env("SERIN_INSTALL_DEPS", "1");
    // The variables cargo sets for this test would change the inner build's
    // fingerprints and rebuild the release binary on every other run.
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_TARGET_DIR" && k != "CARGO_HOME")
            || k == "CARGO"
            || k.starts_with("RUSTC")
        {
            cmd.env_remove(k);
        }
    }
    let out = run(&mut cmd, "scripts/image.sh (make image)").await?;
    println!("make image: {:?}\n{}", started.elapsed(), out.trim());
    let archive = out
        .lines()
        .find_map(|l| l.strip_prefix("archive: "))
        .map(PathBuf::from)
        .context("make image printed no archive path")?;
    let tag = out
        .lines()
        .find_map(|l| l.strip_prefix("image "))
        .and_then(|l| {
            l.split(':')
                .take(2)
                .collect::<Vec<_>>()
                .get(1)
                .map(|s| s.to_string())
        })
        .context("make image printed no tag")?;
    Ok((archive, tag))
}

/// The manifest digest `index.json` of an OCI archive names for its image.
async fn archive_digest(archive: &Path) -> Result<String> {
    let index = run(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json"),
        "reading the archive's index.json",
    )
    .await?;
    let v: Value = serde_json::from_str(&index)?;
    v["manifests"][0]["digest"]
        .as_str()
        .map(str::to_string)
        .context("index.json names no manifest")
}

fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn pod_log(env: &ClusterEnv, pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    std::fs::read_to_string(
        env.state_dir
            .join("pods")
            .join(format!("serin-system_{name}_serin.log")),
    )
    .unwrap_or_default()
}

/// Waits for the Canary `app` to reach `want`; returns its status and every phase seen.
async fn wait_canary(api: &Api<DynamicObject>, want: &str) -> Result<(Value, BTreeSet<String>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut phases = BTreeSet::new();
    loop {
        let s = status(api, "app").await?;
        phases.insert(phase(&s).to_string());
        if phase(&s) == want {
            return Ok((s, phases));
        }
        if phase(&s) == "Failed" || Instant::now() > deadline {
            bail!("canary: wanted {want}, status {s}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn serin_pods(env: &ClusterEnv) -> Result<Vec<Pod>> {
    list_pods(
        &env.client().await?,
        "serin-system",
        "app.kubernetes.io/name=serin",
    )
    .await
}

#[tokio::test]
async fn install_with_kustomize_runs_the_image_and_promotes() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("install_with_kustomize") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;

    let (archive, version) = build_image().await?;
    let digest = archive_digest(&archive).await?;
    let images = env.state_dir.join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(&archive, images.join("serin.oci.tar"))
        .context("handing the image to the node")?;

    // What users do: their own kustomization on top of the shipped overlay, with the
    // image they built, two replicas for leader election.
    let work = Workdir::new()?;
    let site = work.0.join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(
        site.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../kustomize/overlays/kubernetes\n\
         replicas:\n  - name: serin\n    count: 2\n",
    )?;
    set_image(&site, &format!("localhost/serin:{version}")).await?;

    let mut uninstall = Uninstall {
        kubeconfig: env.kubeconfig.clone(),
        site: site.clone(),
        armed: true,
    };
    let roles_before = serin_roles(&env).await?;
    let started = Instant::now();
    run(
        kubectl(&env).arg("apply").arg("-k").arg(&site),
        "kubectl apply -k",
    )
    .await?;

    // One pod becomes Ready (the Lease holder); the other stands by, not ready.
    let leader = wait_for("a Ready serin pod", Duration::from_secs(120), || async {
        let pods = serin_pods(&env).await?;
        Ok(pods.into_iter().find(pod_ready))
    })
    .await
    .with_context(|| {
        format!(
            "operator pods: {}",
            std::fs::read_dir(env.state_dir.join("pods"))
                .map(|d| d
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("serin-system_"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n---\n"))
                .unwrap_or_default()
        )
    })?;
    println!(
        "kubectl apply -k -> operator Ready: {:?}",
        started.elapsed()
    );
    let leader_name = leader.metadata.name.clone().unwrap_or_default();

    let spec = leader.spec.clone().unwrap_or_default();
    assert_eq!(spec.service_account_name.as_deref(), Some("serin"));
    let cs = leader
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .context("no container status")?;
    assert_eq!(cs.image, format!("localhost/serin:{version}"));
    assert_eq!(
        cs.image_id, digest,
        "the pod runs the image make image built"
    );
    // The process is the image's: chrooted into its own rootfs, as uid/gid 65532,
    // and it has nothing but in-cluster config to reach the API server with.
    let pid = pod_pid(&leader).context("no pid")?;
    let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
    assert_ne!(root, Path::new("/"), "operator not chrooted");
    assert!(
        root.join("var/run/secrets/kubernetes.io/serviceaccount/token")
            .is_file()
    );
    assert!(!root.join("bin/sh").exists(), "the image has no shell");
    assert_eq!(
        proc_status_field(pid, "Uid").as_deref(),
        Some("65532 65532 65532 65532")
    );
    assert_eq!(
        proc_status_field(pid, "Gid").as_deref(),
        Some("65532 65532 65532 65532")
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("KUBERNETES_SERVICE_HOST="), "{environ}");
    assert!(!environ.contains("KUBECONFIG="), "{environ}");

    let lease = Api::<Lease>::namespaced(client.clone(), "serin-system")
        .get("serin-leader")
        .await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(leader_name.as_str()),
        "the Ready pod holds the Lease"
    );
    let pods = serin_pods(&env).await?;
    assert_eq!(pods.len(), 2, "two replicas");
    let standby = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some(leader_name.as_str()))
        .cloned()
        .context("no standby pod")?;
    assert!(!pod_ready(&standby), "the standby must not be Ready");

    // A release through the installed operator.
    let ns = TestNamespace::create(&client, "e2e-install").await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {"interval": "3s", "threshold": 1, "iterations": 2}
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let leader_log = || pod_log(&env, &leader);
    wait_canary(&api, "Initialized")
        .await
        .with_context(|| format!("leader log:\n{}", leader_log()))?;
    app = app.version("v2");
    release(&client, &app).await?;
    let (done, phases) = wait_canary(&api, "Succeeded")
        .await
        .with_context(|| format!("leader log:\n{}", leader_log()))?;
    assert!(phases.contains("Progressing"), "{phases:?}");
    assert_eq!(done["lastPromotedSpec"], done["lastAppliedSpec"]);
    wait_for("primary on v2", Duration::from_secs(30), || async {
        let v = pod_versions(&client, &ns.name, "app=app-primary").await?;
        Ok((v == ["v2"]).then_some(()))
    })
    .await?;

    // Only the Lease holder acted: the standby never got past waiting for it.
    let standby_log = pod_log(&env, &standby);
    assert!(
        standby_log.contains("waiting for leadership"),
        "standby log:\n{standby_log}"
    );
    // Every Event about the release was recorded by the Lease holder.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await?;
    let reporters: BTreeSet<String> = events
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("serin"))
        .map(|e| e.reporting_instance.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        reporters,
        BTreeSet::from([leader_name.clone()]),
        "Events of the release come from the leader only"
    );
    ns.cleanup().await?;

    // kubectl delete -k removes all of it: pods (processes), namespace, RBAC, CRDs.
    let pids: Vec<i32> = serin_pods(&env).await?.iter().filter_map(pod_pid).collect();
    run(
        kubectl(&env)
            .arg("delete")
            .arg("-k")
            .arg(&site)
            .arg("--wait=true")
            .arg("--timeout=120s"),
        "kubectl delete -k",
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        "serin-system and the CRDs gone",
        Duration::from_secs(120),
        || async {
            let ns_gone = namespaces.get_opt("serin-system").await?.is_none();
            let crd_gone = crds.get_opt("canaries.serin.dev").await?.is_none();
            Ok((ns_gone && crd_gone).then_some(()))
        },
    )
    .await?;
    let roles = serin_roles(&env).await?;
    // Other test binaries' operators run with `kustomize/rbac` (every router's roles)
    // on the same cluster: only what this install added must be gone.
    let left: Vec<&String> = roles.difference(&roles_before).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    wait_for(
        "operator processes gone",
        Duration::from_secs(30),
        || async {
            Ok(pids
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
                .then_some(()))
        },
    )
    .await?;
    uninstall.armed = false;
    let _ = std::fs::remove_file(images.join("serin.oci.tar"));
    Ok(())
}

/// Every overlay renders with `kubectl kustomize`, names its provider, grants only
/// its router's routing API, and passes the API server's dry run.
#[tokio::test]
async fn every_overlay_renders_and_passes_server_dry_run() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("overlays_dry_run") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    // A dry run creates nothing, so objects in serin-system need it to exist; and
    // the Canary CRD must be there for the CRD's own dry-run update.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let created = if namespaces.get_opt("serin-system").await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "serin-system"}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
        true
    } else {
        false
    };
    let root = repo_root();
    let mut failures = Vec::new();
    for name in OVERLAYS {
        let dir = root.join("kustomize/overlays").join(name);
        let rendered = run(
            kubectl(&env).arg("kustomize").arg(&dir),
            &format!("kubectl kustomize overlays/{name}"),
        )
        .await?;
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
            .map(|d| serde::Deserialize::deserialize(d).map_err(anyhow::Error::from))
            .collect::<Result<_>>()?;
        let routing_groups: BTreeSet<String> = docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("ClusterRole"))
            .flat_map(|d| d["rules"].as_sequence().cloned().unwrap_or_default())
            .flat_map(|r| r["apiGroups"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|g| g.as_str().map(str::to_string))
            .filter(|g| {
                [
                    "gateway.networking.k8s.io",
                    "networking.istio.io",
                    "traefik.io",
                    "split.smi-spec.io",
                    "networking.k8s.io",
                ]
                .contains(&g.as_str())
            })
            .collect();
        let want: &[&str] = match name {
            "gatewayapi" | "linkerd" => &["gateway.networking.k8s.io"],
            "istio" => &["networking.istio.io"],
            "traefik" => &["traefik.io"],
            "nginx" => &["networking.k8s.io"],
            _ => &[],
        };
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        if routing_groups != want {
            failures.push(format!(
                "{name}: routing rights {routing_groups:?}, want {want:?}"
            ));
        }
        let args: Vec<String> = docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Deployment"))
            .flat_map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let provider = if name == "gatewayapi" {
            "gatewayapi:v1"
        } else {
            name
        };
        if !args.contains(&format!("--provider={provider}"))
            || !args.iter().any(|a| a.starts_with("--metrics-server="))
        {
            failures.push(format!("{name}: operator args {args:?}"));
        }
        let mut child = kubectl(&env)
            .args(["apply", "--dry-run=server", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(rendered.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            failures.push(format!(
                "{name}: server dry run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        } else {
            println!(
                "overlays/{name}: {} objects pass the server dry run",
                String::from_utf8_lossy(&out.stdout).lines().count()
            );
        }
    }
    if created {
        let _ = namespaces.delete("serin-system", &Default::default()).await;
        wait_for("serin-system gone", Duration::from_secs(60), || async {
            Ok(namespaces
                .get_opt("serin-system")
                .await?
                .is_none()
                .then_some(()))
        })
        .await?;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Serin's cluster-scoped RBAC objects by name.
async fn serin_roles(env: &ClusterEnv) -> Result<BTreeSet<String>> {
    let out = run(
        kubectl(env).args([
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            "app.kubernetes.io/name=serin",
            "-o",
            "name",
        ]),
        "kubectl get clusterroles",
    )
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}
