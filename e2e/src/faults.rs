//! Stopping and starting one component of the local cluster (`e2e/cluster.sh
//! stop|start COMPONENT`) for the dependency-fault tests. A stopped component is
//! started again when its guard is dropped, so a failing test (a panic included)
//! leaves the cluster whole for the tests after it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ClusterEnv;
use crate::operator::repo_root;

/// A component `cluster.sh` can stop and start on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    ApiServer,
    Prometheus,
    Traefik,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::ApiServer => "apiserver",
            Component::Prometheus => "prometheus",
            Component::Traefik => "traefik",
        }
    }
}

/// Runs `cluster.sh VERB COMPONENT` for the instance at `state_dir`: its env file
/// names the ports, bridge and netns prefix that instance was started with.
fn cluster_sh(state_dir: &std::path::Path, verb: &str, c: Component) -> Result<Duration> {
    let script: PathBuf = repo_root().join("e2e/cluster.sh");
    let env_file = std::fs::read_to_string(state_dir.join("env"))
        .with_context(|| format!("reading {}/env", state_dir.display()))?;
    let vars = env_file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()));
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(verb)
        .arg(c.name())
        .envs(vars)
        .output()
        .with_context(|| format!("running {} {verb} {}", script.display(), c.name()))?;
    if !out.status.success() {
        bail!(
            "cluster.sh {verb} {} failed: {}",
            c.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(start.elapsed())
}

/// A stopped component; [`Stopped::start`] brings it back, and so does dropping it.
pub struct Stopped {
    component: Component,
    state_dir: PathBuf,
    started: bool,
}

/// Stops `c` (SIGTERM, then SIGKILL after its grace) and returns its guard.
pub fn stop(env: &ClusterEnv, c: Component) -> Result<Stopped> {
    // The guard exists before the stop runs: a stop that fails halfway still gets
    // its start on drop.
    let guard = Stopped {
        component: c,
        state_dir: env.state_dir.clone(),
        started: false,
    };
    cluster_sh(&env.state_dir, "stop", c)?;
    Ok(guard)
}

impl Stopped {
    /// Starts the component again and waits until it serves; returns how long that took.
    pub async fn start(mut self) -> Result<Duration> {
        let (dir, c) = (self.state_dir.clone(), self.component);
        let took = tokio::task::spawn_blocking(move || cluster_sh(&dir, "start", c))
            .await
            .context("cluster.sh start task")??;
        self.started = true;
        Ok(took)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.started {
            return;
        }
        if let Err(e) = cluster_sh(&self.state_dir, "start", self.component) {
            eprintln!(
                "restarting {} after a failed test: {e:#}",
                self.component.name()
            );
        }
    }
}

/// Stops `c`, keeps it down for `down`, starts it again; returns when it serves.
pub async fn restart(env: &ClusterEnv, c: Component, down: Duration) -> Result<Duration> {
    let stopped = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || stop(&env, c))
            .await
            .context("cluster.sh stop task")??
    };
    tokio::time::sleep(down).await;
    stopped.start().await
}
