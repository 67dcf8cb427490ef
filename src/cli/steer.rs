//! `promote`, `abort`, `retry`, `pause`, `resume`: requests written as annotations,
//! never into the spec, so that a GitOps tool syncing the spec sees no drift. The
//! operator acts on them (see `controller::machine::Requests`); each leaves an Event.

use chrono::{SecondsFormat, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

use super::CliError;
use super::cluster::{KubeArgs, Target, one_line};
use crate::controller::machine::PROMOTE_FORCE_PREFIX;
use crate::crd::{
    ABORT_ANNOTATION, Canary, PAUSED_ANNOTATION, PROMOTE_ANNOTATION, Phase, RETRY_ANNOTATION,
};

#[derive(clap::Args, Debug, Clone)]
pub struct SteerArgs {
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub steer: SteerArgs,
    /// Promote even when a confirm-promotion webhook says no.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Promote { force: bool },
    Abort,
    Retry,
    Pause,
    Resume,
}

impl Request {
    fn annotation(self) -> &'static str {
        match self {
            Request::Promote { .. } => PROMOTE_ANNOTATION,
            Request::Abort => ABORT_ANNOTATION,
            Request::Retry => RETRY_ANNOTATION,
            Request::Pause | Request::Resume => PAUSED_ANNOTATION,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Request::Promote { .. } => "PromoteRequested",
            Request::Abort => "AbortRequested",
            Request::Retry => "RetryRequested",
            Request::Pause => "PauseRequested",
            Request::Resume => "ResumeRequested",
        }
    }

    /// Why the request makes no sense in `phase`, if it does not. The operator would
    /// take it as seen and do nothing; saying so here is kinder than silence.
    pub fn refusal(self, c: &Canary) -> Option<String> {
        let phase = c.status.as_ref().and_then(|s| s.phase);
        let shown = phase.map_or("not yet initialized".to_string(), |p| p.to_string());
        let name = c.name_any();
        match self {
            Request::Promote { .. } | Request::Abort
                if !matches!(phase, Some(Phase::Progressing | Phase::WaitingPromotion)) =>
            {
                Some(format!(
                    "Canary {name} is {shown}: there is no analysis under way to {}",
                    if self == Request::Abort {
                        "abort"
                    } else {
                        "promote"
                    }
                ))
            }
            Request::Retry if phase != Some(Phase::Failed) => Some(format!(
                "Canary {name} is {shown}: only a failed revision can be retried"
            )),
            _ => None,
        }
    }

    /// The annotation value: a new one each time, so that a repeated request is a
    /// new request and one already acted on is recognised by its value.
    fn value(self, now: chrono::DateTime<Utc>) -> Option<String> {
        let stamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        match self {
            Request::Promote { force: true } => Some(format!("{PROMOTE_FORCE_PREFIX}{stamp}")),
            Request::Resume => None,
            _ => Some(stamp),
        }
    }
}

pub async fn steer(args: &SteerArgs, request: Request) -> Result<(), CliError> {
    let target = args.kube.connect().await?;
    let canary = target.canary(&args.name).await?;
    if let Some(why) = request.refusal(&canary) {
        return Err(CliError::Refused(why));
    }
    let paused = canary.annotations().contains_key(PAUSED_ANNOTATION);
    match request {
        Request::Pause if paused => {
            println!("Canary {} is already paused", args.name);
            return Ok(());
        }
        Request::Resume if !paused => {
            println!("Canary {} is not paused", args.name);
            return Ok(());
        }
        _ => {}
    }
    let value = request.value(Utc::now());
    let patch = serde_json::json!({
        "metadata": {"annotations": {request.annotation(): value}}
    });
    target
        .canaries()
        .patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| target.error(e))?;
    let note = match &value {
        Some(v) => format!("{}={v} set by kubectl-serin", request.annotation()),
        None => format!("{} removed by kubectl-serin", request.annotation()),
    };
    // The request stands without its Event (the operator records its own when it
    // acts), so a user who may not write Events is warned, not failed.
    if let Err(e) = record(&target, &canary, request, &note).await {
        eprintln!("warning: no Event recorded: {}", one_line(&e));
    }
    println!("Canary {}: {note}", args.name);
    Ok(())
}

async fn record(
    target: &Target,
    canary: &Canary,
    request: Request,
    note: &str,
) -> Result<(), kube::Error> {
    let reporter = Reporter {
        controller: "kubectl-serin".into(),
        instance: None,
    };
    let recorder = Recorder::new(target.client.clone(), reporter);
    let ev = Event {
        type_: EventType::Normal,
        reason: request.reason().into(),
        note: Some(note.to_string()),
        action: "Steer".into(),
        secondary: None,
    };
    recorder.publish(&ev, &canary.object_ref(&())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CanaryStatus;

    fn canary(phase: Option<Phase>) -> Canary {
        let mut c: Canary = serde_yaml::from_str(
            "apiVersion: serin.dev/v1beta1\nkind: Canary\nmetadata: {name: app}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: app}\n",
        )
        .unwrap();
        c.status = Some(CanaryStatus {
            phase,
            ..Default::default()
        });
        c
    }

    #[test]
    fn requests_outside_their_phase_are_refused_with_the_reason() {
        let done = canary(Some(Phase::Succeeded));
        assert_eq!(
            Request::Abort.refusal(&done).as_deref(),
            Some("Canary app is Succeeded: there is no analysis under way to abort")
        );
        assert!(Request::Promote { force: true }.refusal(&done).is_some());
        assert!(Request::Retry.refusal(&done).is_some());
        assert_eq!(Request::Pause.refusal(&done), None);
        let running = canary(Some(Phase::WaitingPromotion));
        assert_eq!(Request::Promote { force: false }.refusal(&running), None);
        assert_eq!(Request::Abort.refusal(&running), None);
        assert_eq!(Request::Retry.refusal(&canary(Some(Phase::Failed))), None);
    }

    #[test]
    fn each_request_has_a_new_value_and_force_is_marked() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 5_000_000).unwrap();
        assert_eq!(
            Request::Abort.value(t).as_deref(),
            Some("2027-01-15T08:00:00.005Z")
        );
        assert_ne!(
            Request::Abort.value(t),
            Request::Abort.value(t + chrono::Duration::milliseconds(1))
        );
        assert_eq!(
            Request::Promote { force: true }.value(t).as_deref(),
            Some("force:2027-01-15T08:00:00.005Z")
        );
        assert_eq!(
            Request::Resume.value(t),
            None,
            "resume removes the annotation"
        );
    }
}
