//! Runs the real `serin` binary against the local cluster, authenticated as the
//! ServiceAccount that `kustomize/rbac` creates, so every end-to-end test also tests
//! that the shipped RBAC is enough.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::{ClusterEnv, wait_for};

/// The repository root (this crate lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where `cargo build` put the workspace binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SERIN_E2E_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("debug")
}

static INSTALLED: OnceCell<String> = OnceCell::const_new();

async fn kubectl(env: &ClusterEnv, args: &[&str]) -> Result<()> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .current_dir(repo_root())
        .output()
        .await
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs the CRDs and the operator's RBAC (once per test process) and returns the
/// operator ServiceAccount's token.
pub async fn install(env: &ClusterEnv) -> Result<String> {
    INSTALLED
        .get_or_try_init(|| async {
            kubectl(env, &["apply", "-f", "crds/serin.yaml"]).await?;
            kubectl(env, &["apply", "-k", "kustomize/rbac"]).await?;
            let client = env.client().await?;
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "serin-system");
            let secrets: Api<Secret> = Api::namespaced(client.clone(), "serin-system");
            // 1.20's token controller creates the ServiceAccount's token Secret.
            wait_for(
                "serin ServiceAccount token",
                Duration::from_secs(30),
                || {
                    let sas = sas.clone();
                    let secrets = secrets.clone();
                    async move {
                        let Some(sa) = sas.get_opt("serin").await? else {
                            return Ok(None);
                        };
                        for r in sa.secrets.unwrap_or_default() {
                            let Some(name) = r.name else { continue };
                            if let Some(s) = secrets.get_opt(&name).await?
                                && let Some(tok) = s.data.as_ref().and_then(|d| d.get("token"))
                            {
                                return Ok(Some(String::from_utf8(tok.0.clone())?));
                            }
                        }
                        Ok(None)
                    }
                },
            )
            .await
        })
        .await
        .cloned()
}

/// A running operator; killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `serin run` for `namespace` with the operator's own ServiceAccount and
    /// waits until it is ready.
    pub async fn start(env: &ClusterEnv, namespace: &str, extra: &[&str]) -> Result<Operator> {
        let mut op = Self::spawn(env, namespace, extra).await?;
        op.wait_ready(Duration::from_secs(30)).await?;
        Ok(op)
    }

    /// Starts `serin run` without waiting for it to be ready (a standby replica under
    /// leader election is never ready).
    pub async fn spawn(env: &ClusterEnv, namespace: &str, extra: &[&str]) -> Result<Operator> {
        let token = install(env).await?;
        let bin = bin_dir().join("serin");
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build --workspace` first",
                bin.display()
            );
        }
        let kubeconfig = env
            .state_dir
            .join(format!("operator-{namespace}.kubeconfig"));
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: serin\n  user:\n    token: {}\ncontexts:\n- name: serin\n  context: {{cluster: local, user: serin}}\ncurrent-context: serin\n",
            env.apiserver,
            env.ca_file.display(),
            token
        );
        std::fs::write(&kubeconfig, kc).context("writing operator kubeconfig")?;
        let port = free_port()?;
        let log = env
            .state_dir
            .join(format!("operator-{namespace}-{port}.log"));
        let log_file = std::fs::File::create(&log).context("creating operator log")?;
        let log_err = log_file.try_clone()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--namespace")
            .arg(namespace)
            .args(
                (!extra.iter().any(|a| a.starts_with("--leader-elect")))
                    .then_some("--leader-elect=false"),
            )
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-server")
            .arg(&env.prometheus)
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,serin=debug")
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let metrics_url = format!("http://127.0.0.1:{port}");
        Ok(Operator {
            child,
            metrics_url,
            log,
        })
    }

    /// Waits until `/readyz` answers 200; fails with the log's tail otherwise.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let ready = format!("{}/readyz", self.metrics_url);
        let http = reqwest::Client::new();
        let res = wait_for("operator ready", timeout, || {
            let http = http.clone();
            let ready = ready.clone();
            async move {
                Ok(http
                    .get(&ready)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await;
        if let Err(e) = res {
            let tail = self.log_tail(30);
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("operator exited ({status}): {tail}");
            }
            return Err(anyhow!("{e}: {tail}"));
        }
        Ok(())
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.metrics_url))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The last lines of the operator's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has ended (crashed), else `None`.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The operator's process id, for reading its resource use from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.metrics_url))
            .await?
            .text()
            .await?)
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
