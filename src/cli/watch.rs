//! `watch`: a release's progress until it ends, for a person or a CI job.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use super::cluster::KubeArgs;
use crate::crd::{Canary, Phase, Strategy, Verdict};

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Give up after this long (e.g. `10m`, `90s`): exit code 2.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// When the Canary is settled at the start, how long to wait for a release to
    /// begin (the operator notices a changed target within seconds) before the
    /// settled result is the answer.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub start_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::crd::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// How a watched release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
}

/// What one snapshot of the Canary says for `watch`: the bar's position and
/// length, a one-line message, and the outcome when the release is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub position: u64,
    pub length: u64,
    pub message: String,
    pub phase: Option<Phase>,
}

pub fn progress(c: &Canary) -> Progress {
    let st = c.status_or_default();
    let settings = super::get::settings_of(c).ok();
    let (position, length, unit): (u64, u64, &str) = match settings.as_ref().map(|s| &s.strategy) {
        Some(Strategy::AbTesting { iterations } | Strategy::BlueGreen { iterations, .. }) => {
            (st.iterations.into(), (*iterations).into(), "iterations")
        }
        Some(Strategy::Canary { weights, .. }) => (
            st.canary_weight.into(),
            weights.last().copied().unwrap_or(100).into(),
            "%",
        ),
        None => (st.canary_weight.into(), 100, "%"),
    };
    let phase = st.phase;
    let mut message = format!(
        "{} {position}/{length}{unit}",
        phase.map_or("Pending".to_string(), |p| p.to_string())
    );
    if !st.last_analysis.is_empty() {
        let checks: Vec<String> = st
            .last_analysis
            .iter()
            .map(|ch| {
                let mark = match ch.verdict {
                    Verdict::Pass => "ok",
                    Verdict::Fail => "FAIL",
                    Verdict::Inconclusive => "?",
                };
                match ch.value {
                    Some(v) => format!("{} {v:.2} {mark}", ch.name),
                    None => format!("{} {mark}", ch.name),
                }
            })
            .collect();
        message.push_str(&format!(" | {}", checks.join(", ")));
    }
    if let Some(h) = &st.hold_reason {
        message.push_str(&format!(" | waiting: {h}"));
    }
    Progress {
        position: position.min(length),
        length,
        message,
        phase,
    }
}

/// The outcome a snapshot shows, if the release is over. A Canary settled when the
/// watch starts may be about to begin the release just applied: until a release has
/// been seen under way, a settled phase counts only once `settled_long`.
pub fn outcome(c: &Canary, seen_active: bool, settled_long: bool) -> Option<Outcome> {
    let st = c.status.as_ref()?;
    if !(seen_active || settled_long) {
        return None;
    }
    match st.phase? {
        Phase::Succeeded | Phase::Initialized => Some(Outcome::Succeeded),
        Phase::Failed => Some(Outcome::Failed(
            st.conditions
                .iter()
                .find(|c| c.r#type == "Promoted")
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "rolled back".into()),
        )),
        _ => None,
    }
}

fn under_way(c: &Canary) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_active() || matches!(p, Phase::Waiting | Phase::Initializing))
}

pub async fn watch(args: WatchArgs) -> Result<(), CliError> {
    use futures::StreamExt;
    let target = args.kube.connect().await?;
    // Fails fast, with one line, on an unknown name.
    let mut current = target.canary(&args.name).await?;
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {msg}")
            .map_err(|e| CliError::Run(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_prefix(args.name.clone());
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let deadline = args.timeout.map(|t| started + t);
    let mut seen_active = false;
    let mut last_line = String::new();
    let mut changes = std::pin::pin!(super::get::changes(&target, &args.name));
    // The watch reports changes only; the tick lets a Canary that stays settled
    // reach its answer once the start timeout has passed.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        let p = progress(&current);
        bar.set_length(p.length);
        bar.set_position(p.position);
        bar.set_message(p.message.clone());
        if p.message != last_line {
            // Also as a line: CI logs have no terminal to draw the bar on.
            bar.suspend(|| eprintln!("{}: {}", args.name, p.message));
            last_line = p.message;
        }
        seen_active |= under_way(&current);
        let settled_long = started.elapsed() >= args.start_timeout;
        if let Some(o) = outcome(&current, seen_active, settled_long) {
            break o;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            bar.finish_and_clear();
            return Err(CliError::Timeout(format!(
                "Canary {} did not finish within {}s",
                args.name,
                args.timeout.unwrap_or_default().as_secs()
            )));
        }
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(c)) => current = c,
                Some(Err(e)) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
                None => {
                    bar.finish_and_clear();
                    return Err(CliError::Api(format!("the watch of Canary {} ended", args.name)));
                }
            },
            _ = tick.tick() => {}
        }
    };
    bar.finish_and_clear();
    match end {
        Outcome::Succeeded => {
            println!("Canary {}: release succeeded", args.name);
            Ok(())
        }
        Outcome::Failed(why) => Err(CliError::ReleaseFailed(format!(
            "Canary {}: release failed: {why}",
            args.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CanaryCondition, CanaryStatus};

    fn canary(status: CanaryStatus) -> Canary {
        let mut c: Canary = serde_yaml::from_str(
            "apiVersion: serin.dev/v1beta1\nkind: Canary\nmetadata: {name: web}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  service: {port: 80}\n  analysis: {interval: 10s, threshold: 2, stepWeight: 25, maxWeight: 50}\n",
        )
        .unwrap();
        c.status = Some(status);
        c
    }

    #[test]
    fn the_bar_counts_weight_toward_the_maximum() {
        let p = progress(&canary(CanaryStatus {
            phase: Some(Phase::Progressing),
            canary_weight: 25,
            ..Default::default()
        }));
        assert_eq!((p.position, p.length), (25, 50));
        assert_eq!(p.message, "Progressing 25/50%");
    }

    #[test]
    fn a_settled_canary_is_the_answer_only_after_a_release_or_the_start_timeout() {
        let failed = canary(CanaryStatus {
            phase: Some(Phase::Failed),
            conditions: vec![CanaryCondition {
                r#type: "Promoted".into(),
                status: "False".into(),
                reason: "Failed".into(),
                message: Some("Canary analysis failed".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            outcome(&failed, false, false),
            None,
            "may be about to start"
        );
        assert_eq!(
            outcome(&failed, true, false),
            Some(Outcome::Failed("Canary analysis failed".into()))
        );
        let done = canary(CanaryStatus {
            phase: Some(Phase::Succeeded),
            ..Default::default()
        });
        assert_eq!(outcome(&done, false, true), Some(Outcome::Succeeded));
        let running = canary(CanaryStatus {
            phase: Some(Phase::Promoting),
            ..Default::default()
        });
        assert_eq!(outcome(&running, true, true), None);
        assert!(under_way(&running));
    }
}
