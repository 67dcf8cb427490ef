//! `get` and `status`: what a release is doing and why, read from the Canary's status.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, ContentArrangement, Table, presets};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::CliError;
use super::cluster::{KubeArgs, Target};
use crate::crd::{
    ABORT_ANNOTATION, Canary, CanaryStatus, PAUSED_ANNOTATION, PROMOTE_ANNOTATION, Provider,
    RETRY_ANNOTATION, Settings, Strategy, Verdict,
};

/// The provider a Canary that names none gets; the CLI cannot know the operator's
/// `--provider`, and the status says which one it assumed.
const DEFAULT_PROVIDER: &str = "kubernetes";

/// The resolved spec, as the operator sees it. A Canary naming no provider runs on
/// the operator's `--provider`, which the CLI does not know: a weighted one cannot
/// be on `kubernetes`, so it is read as a Gateway API one (the provider changes
/// nothing the CLI shows but the route objects).
pub(super) fn settings_of(c: &Canary) -> Result<Settings, crate::crd::SpecError> {
    Settings::from_spec(&c.spec, DEFAULT_PROVIDER).or_else(|e| match c.spec.provider {
        None => Settings::from_spec(&c.spec, "gatewayapi:v1"),
        Some(_) => Err(e),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// A Canary; all in the namespace without one.
    pub name: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Canaries of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// After the list, print a row each time a Canary changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn get(args: GetArgs) -> Result<(), CliError> {
    let target = args.kube.connect().await?;
    let api: Api<Canary> = if args.all_namespaces {
        Api::all(target.client.clone())
    } else {
        target.canaries()
    };
    let canaries = match &args.name {
        Some(name) => vec![target.canary(name).await?],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| target.error(e))?
                .items
        }
    };
    let wide = args.output == Some(Output::Wide);
    match args.output {
        Some(Output::Yaml) => print!("{}", to_yaml(&canaries, args.name.is_some())?),
        Some(Output::Json) => println!("{}", to_json(&canaries, args.name.is_some())?),
        _ if canaries.is_empty() && !args.watch => {
            let scope = if args.all_namespaces {
                "any namespace".to_string()
            } else {
                format!("namespace {}", target.namespace)
            };
            eprintln!("No Canaries in {scope}.");
        }
        _ => print!(
            "{}",
            table(&canaries, args.all_namespaces, wide, Utc::now())
        ),
    }
    if args.watch {
        watch_rows(&target, api, &args, wide).await?;
    }
    Ok(())
}

async fn watch_rows(
    target: &Target,
    api: Api<Canary>,
    args: &GetArgs,
    wide: bool,
) -> Result<(), CliError> {
    let mut cfg = watcher::Config::default();
    if let Some(name) = &args.name {
        cfg = cfg.fields(&format!("metadata.name={name}"));
    }
    // The list above already printed the current state; the watch's initial list
    // is skipped so that each Canary is printed once, then on each change.
    let mut stream =
        std::pin::pin!(watcher(api, cfg).skip_while(|e| {
            futures::future::ready(!matches!(e, Ok(watcher::Event::InitDone)))
        }));
    while let Some(event) = stream.next().await {
        let canary = match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::Delete(c)) => c,
            Ok(_) => continue,
            Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                return Err(target.error(e));
            }
            Err(e) => return Err(CliError::Api(e.to_string())),
        };
        match args.output {
            Some(Output::Yaml) => print!("---\n{}", to_yaml(&[canary], true)?),
            Some(Output::Json) => println!("{}", to_json(&[canary], true)?),
            _ => {
                let t = table(&[canary], args.all_namespaces, wide, Utc::now());
                // The table above (even an empty one) carried the header, as
                // kubectl prints it once; the rows that follow line up as closely
                // as independent renders can.
                for l in t.lines().skip(1) {
                    println!("{l}");
                }
            }
        }
    }
    Ok(())
}

fn to_yaml(canaries: &[Canary], single: bool) -> Result<String, CliError> {
    let v = list_value(canaries, single)?;
    serde_yaml::to_string(&v).map_err(CliError::Crds)
}

fn to_json(canaries: &[Canary], single: bool) -> Result<String, CliError> {
    let v = list_value(canaries, single)?;
    serde_json::to_string_pretty(&v).map_err(|e| CliError::Run(e.to_string()))
}

/// One object for a named Canary, else a `List` as kubectl prints.
fn list_value(canaries: &[Canary], single: bool) -> Result<serde_json::Value, CliError> {
    let items: Vec<serde_json::Value> = canaries
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).map_err(|e| CliError::Run(e.to_string()))?;
            // Objects read from a list carry no type; print them apply-ready.
            v["apiVersion"] = "serin.dev/v1beta1".into();
            v["kind"] = "Canary".into();
            Ok(v)
        })
        .collect::<Result<_, CliError>>()?;
    if single && let [one] = items.as_slice() {
        return Ok(one.clone());
    }
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

/// The `get` table, kubectl style: no borders, left-aligned, three spaces apart.
pub fn table(canaries: &[Canary], all_namespaces: bool, wide: bool, now: DateTime<Utc>) -> String {
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "PHASE", "WEIGHT", "CHECKS", "REVISION", "AGE"]);
    if wide {
        header.extend(["FAILED", "INTERVAL", "NEXT STEP", "PRIMARY", "HOLD"]);
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    for c in canaries {
        let mut row = vec![];
        if all_namespaces {
            row.push(c.namespace().unwrap_or_default());
        }
        row.extend(row_cells(c, now));
        if wide {
            row.extend(wide_cells(c, now));
        }
        t.add_row(row);
    }
    for col in t.column_iter_mut() {
        col.set_padding((0, 3));
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row_cells(c: &Canary, now: DateTime<Utc>) -> Vec<String> {
    let st = c.status_or_default();
    vec![
        c.name_any(),
        st.phase.map_or("-".into(), |p| p.to_string()),
        st.phase
            .map_or("-".into(), |_| st.canary_weight.to_string()),
        checks_cell(&st),
        short(st.last_applied_spec.as_deref()),
        c.metadata
            .creation_timestamp
            .as_ref()
            .map_or("-".into(), |t| age(now - to_chrono(&t.0))),
    ]
}

fn wide_cells(c: &Canary, now: DateTime<Utc>) -> Vec<String> {
    let st = c.status_or_default();
    let settings = settings_of(c).ok();
    vec![
        match &settings {
            Some(s) => format!("{}/{}", st.failed_checks, s.threshold),
            None => st.failed_checks.to_string(),
        },
        settings.as_ref().map_or("-".into(), |s| human(s.interval)),
        next_step(&st, settings.as_ref(), now).unwrap_or_else(|| "-".into()),
        short(st.last_promoted_spec.as_deref()),
        st.hold_reason.clone().unwrap_or_else(|| "-".into()),
    ]
}

/// Passing checks of the last analysis out of all of them.
fn checks_cell(st: &CanaryStatus) -> String {
    if st.last_analysis.is_empty() {
        return "-".into();
    }
    let pass = st
        .last_analysis
        .iter()
        .filter(|c| c.verdict == Verdict::Pass)
        .count();
    format!("{pass}/{}", st.last_analysis.len())
}

/// Revisions are checksums; eight characters tell them apart on a screen.
fn short(rev: Option<&str>) -> String {
    rev.map_or("-".into(), |r| r.chars().take(8).collect())
}

fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), 0).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// kubectl's age: `45s`, `3m20s`, `25m`, `5h10m`, `30h`, `12d`.
pub fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        28_800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn human(d: Duration) -> String {
    age(chrono::Duration::seconds(d.as_secs() as i64))
}

/// When the next analysis step is due: `status.lastStepTime` + the interval.
fn next_step(st: &CanaryStatus, settings: Option<&Settings>, now: DateTime<Utc>) -> Option<String> {
    if !st.phase.is_some_and(|p| p.is_active()) {
        return None;
    }
    if st
        .hold_reason
        .as_deref()
        .is_some_and(|h| h.split(':').next() == Some(crate::controller::machine::HOLD_PAUSED))
    {
        return Some("paused".into());
    }
    let last = parse_time(st.last_step_time.as_deref()?)?;
    let interval = chrono::Duration::from_std(settings?.interval).ok()?;
    let due = last + interval;
    Some(if due <= now {
        "due now".into()
    } else {
        format!("in {}", age(due - now))
    })
}

pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let target = args.kube.connect().await?;
    let canary = target.canary(&args.name).await?;
    // Events are context, not the answer: a user without rights to them still gets
    // the status.
    let events: Api<Event> = Api::namespaced(target.client.clone(), &target.namespace);
    let selector = format!(
        "involvedObject.kind=Canary,involvedObject.name={}",
        args.name
    );
    let events = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => Some(list.items),
        Err(_) => None,
    };
    print!("{}", timeline(&canary, events.as_deref(), Utc::now()));
    Ok(())
}

/// The `status` report: where the release is, why, what it waits for, and what it
/// owns. Pure, so that its wording is tested.
pub fn timeline(c: &Canary, events: Option<&[Event]>, now: DateTime<Utc>) -> String {
    let st = c.status_or_default();
    let settings = settings_of(c);
    let mut o = String::new();
    let ago = |t: Option<&str>| -> String {
        match t.and_then(parse_time) {
            Some(t) => format!("{} ({} ago)", t.format("%H:%M:%SZ"), age(now - t)),
            None => "-".into(),
        }
    };
    let _ = writeln!(
        o,
        "Canary {}/{}: {}/{}",
        c.namespace().unwrap_or_default(),
        c.name_any(),
        c.spec.target_ref.kind,
        c.spec.target_ref.name
    );
    let s = match &settings {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(o, "  invalid spec: {e}");
            return o;
        }
    };
    let provider = match &c.spec.provider {
        Some(p) => p.clone(),
        None => format!("{DEFAULT_PROVIDER} (unless the operator's --provider says otherwise)"),
    };
    let _ = writeln!(
        o,
        "  provider {provider}, interval {}, threshold {}",
        human(s.interval),
        s.threshold
    );
    let Some(phase) = st.phase else {
        let _ = writeln!(o, "  not yet seen by the operator (no status)");
        return o;
    };
    let _ = writeln!(
        o,
        "Phase:      {phase} since {}",
        ago(st.last_transition_time.as_deref())
    );
    match &s.strategy {
        Strategy::Canary { weights, .. } => {
            let max = weights.last().copied().unwrap_or(100);
            let steps = weights
                .iter()
                .map(|w| {
                    if *w == st.canary_weight && phase.is_active() {
                        format!("[{w}]")
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                o,
                "Weight:     {}% of {max}% (steps {steps})",
                st.canary_weight
            );
        }
        Strategy::AbTesting { iterations } | Strategy::BlueGreen { iterations, .. } => {
            let _ = writeln!(o, "Iterations: {} of {iterations}", st.iterations);
        }
    }
    let _ = writeln!(
        o,
        "Revision:   {} (primary at {})",
        short(st.last_applied_spec.as_deref()),
        short(st.last_promoted_spec.as_deref())
    );
    let _ = writeln!(
        o,
        "Failed:     {} of {} checks",
        st.failed_checks, s.threshold
    );
    if phase.is_active() {
        let _ = writeln!(o, "Last step:  {}", ago(st.last_step_time.as_deref()));
        if let Some(next) = next_step(&st, Some(s), now) {
            let due = st
                .last_step_time
                .as_deref()
                .and_then(parse_time)
                .and_then(|t| Some(t + chrono::Duration::from_std(s.interval).ok()?));
            let at = due
                .map(|d| d.format("%H:%M:%SZ").to_string())
                .unwrap_or_default();
            let _ = writeln!(o, "Next step:  {at} ({next})");
        }
    }
    if let Some(h) = &st.hold_reason {
        let _ = writeln!(
            o,
            "Waiting:    {h} (since {})",
            ago(st.hold_since.as_deref())
        );
    }
    if let Some(r) = &st.router_message {
        let _ = writeln!(o, "Router:     {r}");
    }
    let requests = pending_requests(c, &st);
    if !requests.is_empty() {
        let _ = writeln!(o, "Requests:   {}", requests.join("; "));
    }
    if !st.last_analysis.is_empty() {
        let _ = writeln!(
            o,
            "\nLast analysis ({}):",
            ago(st.last_step_time.as_deref())
        );
        let mut t = Table::new();
        t.load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(["CHECK", "KIND", "VALUE", "THRESHOLD", "VERDICT", "MESSAGE"]);
        for ch in &st.last_analysis {
            t.add_row([
                ch.name.clone(),
                format!("{:?}", ch.kind).to_lowercase(),
                ch.value.map_or("-".into(), format_value),
                ch.threshold.clone().unwrap_or_else(|| "-".into()),
                format!("{:?}", ch.verdict),
                ch.message.clone().unwrap_or_default(),
            ]);
        }
        for col in t.column_iter_mut() {
            col.set_padding((2, 1));
        }
        for line in t.to_string().lines() {
            let _ = writeln!(o, "{}", line.trim_end());
        }
    }
    let _ = writeln!(o, "\nOwned objects:");
    for obj in owned(c, s) {
        let _ = writeln!(o, "  {obj}");
    }
    if let Some(events) = events {
        let mut events: Vec<&Event> = events.iter().collect();
        events.sort_by_key(|e| event_time(e));
        let _ = writeln!(o, "\nEvents:");
        if events.is_empty() {
            let _ = writeln!(o, "  none");
        }
        // The last ones are what explains the current state.
        for e in events.iter().rev().take(10).rev() {
            let when = event_time(e)
                .map(|t| format!("{}", t.format("%H:%M:%SZ")))
                .unwrap_or_else(|| "-".into());
            let count = e
                .count
                .filter(|n| *n > 1)
                .map(|n| format!(" (x{n})"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {when}  {}{count}: {}",
                e.reason.as_deref().unwrap_or("-"),
                e.message.as_deref().unwrap_or("")
            );
        }
    }
    o
}

fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    e.last_timestamp
        .as_ref()
        .map(|t| to_chrono(&t.0))
        .or_else(|| e.event_time.as_ref().map(|t| to_chrono(&t.0)))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| to_chrono(&t.0))
        })
}

/// Steering requests in the annotations the operator has not acted on yet.
fn pending_requests(c: &Canary, st: &CanaryStatus) -> Vec<String> {
    let a = c.annotations();
    let mut out = Vec::new();
    if let Some(v) = a.get(PAUSED_ANNOTATION) {
        out.push(format!("paused at {v} (resume to continue)"));
    }
    let pending = |key: &str, last: &Option<String>| {
        a.get(key).filter(|v| Some(*v) != last.as_ref()).cloned()
    };
    if let Some(v) = pending(ABORT_ANNOTATION, &st.last_abort) {
        out.push(format!("abort {v} not yet acted on"));
    }
    if let Some(v) = pending(PROMOTE_ANNOTATION, &st.last_promote) {
        out.push(format!("promote {v} not yet acted on"));
    }
    if let Some(v) = pending(RETRY_ANNOTATION, &st.last_retry) {
        out.push(format!("retry {v} not yet acted on"));
    }
    out
}

/// What the operator creates for this Canary, by its naming rules.
fn owned(c: &Canary, s: &Settings) -> Vec<String> {
    let mut out = vec![
        format!("{}/{} (primary)", c.spec.target_ref.kind, c.primary_name()),
        format!("Service/{} (apex)", c.apex_name()),
        format!("Service/{}", c.primary_service_name()),
        format!("Service/{}", c.canary_service_name()),
    ];
    let apex = c.apex_name();
    let route = match s.provider {
        Provider::Kubernetes => None,
        Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 | Provider::Linkerd => {
            let grpc = c
                .spec
                .service
                .as_ref()
                .and_then(|s| s.app_protocol.as_deref())
                .is_some_and(|p| p.to_ascii_lowercase().starts_with("grpc"));
            Some(format!(
                "{}/{apex}",
                if grpc { "GRPCRoute" } else { "HTTPRoute" }
            ))
        }
        Provider::Istio => Some(format!(
            "VirtualService/{apex}, DestinationRule/{}, DestinationRule/{}",
            c.primary_service_name(),
            c.canary_service_name()
        )),
        Provider::Traefik => Some(format!("TraefikService/{apex}")),
        Provider::Smi(_) => Some(format!("TrafficSplit/{apex}")),
        Provider::Nginx => c
            .spec
            .ingress_ref
            .as_ref()
            .map(|i| format!("Ingress/{}-canary", i.name)),
    };
    if let Some(r) = route {
        out.push(format!("{r} (routes)"));
    }
    out
}

/// A check value with at most three decimals and no trailing zeros: `99.5`, `812`.
fn format_value(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A Canary's changes, as `watch` follows them.
pub(super) fn changes(
    target: &Target,
    name: &str,
) -> impl futures::Stream<Item = Result<Canary, CliError>> + use<> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let server = target.server.clone();
    watcher(target.canaries(), cfg)
        .applied_objects()
        .map_err(move |e| match e {
            watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
                super::cluster::api_error(&server, e)
            }
            e => CliError::Api(e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CheckKind, CheckStatus, Phase};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn canary(name: &str, status: Option<CanaryStatus>) -> Canary {
        let mut c: Canary = serde_yaml::from_str(&format!(
            r#"
apiVersion: serin.dev/v1beta1
kind: Canary
metadata:
  name: {name}
  namespace: shop
  creationTimestamp: "2026-01-01T11:00:00Z"
  annotations: {{serin.dev/paused: "2026-01-01T11:59:00Z"}}
spec:
  provider: gatewayapi:v1
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  service: {{port: 80, gatewayRefs: [{{name: gw}}]}}
  analysis: {{interval: 30s, threshold: 3, stepWeight: 10, maxWeight: 30}}
"#
        ))
        .unwrap();
        c.status = status;
        c
    }

    fn progressing() -> CanaryStatus {
        CanaryStatus {
            phase: Some(Phase::Progressing),
            canary_weight: 20,
            failed_checks: 1,
            last_applied_spec: Some("abcdef0123456789".into()),
            last_promoted_spec: Some("99887766554433".into()),
            last_transition_time: Some("2026-01-01T11:58:00Z".into()),
            last_step_time: Some("2026-01-01T11:59:50Z".into()),
            hold_reason: Some("paused: asked at 2026-01-01T11:59:00Z".into()),
            hold_since: Some("2026-01-01T11:59:00Z".into()),
            last_analysis: vec![
                CheckStatus {
                    name: "request-success-rate".into(),
                    kind: CheckKind::Metric,
                    verdict: Verdict::Pass,
                    value: Some(99.5),
                    threshold: Some(">= 99".into()),
                    message: None,
                },
                CheckStatus {
                    name: "request-duration".into(),
                    kind: CheckKind::Metric,
                    verdict: Verdict::Fail,
                    value: Some(812.0),
                    threshold: Some("<= 500".into()),
                    message: None,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn table_rows_line_up_like_kubectl() {
        let rows = [canary("web", Some(progressing())), canary("api", None)];
        assert_eq!(
            table(&rows, false, false, t0()),
            "\
NAME   PHASE         WEIGHT   CHECKS   REVISION   AGE
web    Progressing   20       1/2      abcdef01   60m
api    -             -        -        -          60m
"
        );
        let wide = table(&rows[..1], true, true, t0());
        assert_eq!(
            wide.lines().next().unwrap(),
            "NAMESPACE   NAME   PHASE         WEIGHT   CHECKS   REVISION   AGE   FAILED   INTERVAL   NEXT STEP   PRIMARY    HOLD"
        );
        assert!(
            wide.lines().nth(1).unwrap().starts_with(
                "shop        web    Progressing   20       1/2      abcdef01   60m   1/3      30s        paused      99887766   paused:"
            ),
            "{wide}"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = chrono::Duration::seconds;
        assert_eq!(age(s(59)), "59s");
        assert_eq!(age(s(200)), "3m20s");
        assert_eq!(age(s(1500)), "25m");
        assert_eq!(age(s(4 * 3600 + 600)), "4h10m");
        assert_eq!(age(s(30 * 3600)), "30h");
        assert_eq!(age(s(12 * 86_400)), "12d");
        assert_eq!(age(s(-5)), "0s", "clock skew shows no negative age");
    }

    #[test]
    fn status_timeline_says_where_why_and_what_next() {
        let out = timeline(&canary("web", Some(progressing())), Some(&[]), t0());
        let expected = "\
Canary shop/web: Deployment/web
  provider gatewayapi:v1, interval 30s, threshold 3
Phase:      Progressing since 11:58:00Z (2m0s ago)
Weight:     20% of 30% (steps 10 [20] 30)
Revision:   abcdef01 (primary at 99887766)
Failed:     1 of 3 checks
Last step:  11:59:50Z (10s ago)
Next step:  12:00:20Z (paused)
Waiting:    paused: asked at 2026-01-01T11:59:00Z (since 11:59:00Z (60s ago))
Requests:   paused at 2026-01-01T11:59:00Z (resume to continue)

Last analysis (11:59:50Z (10s ago)):
  CHECK                  KIND     VALUE   THRESHOLD   VERDICT   MESSAGE
  request-success-rate   metric   99.5    >= 99       Pass
  request-duration       metric   812     <= 500      Fail

Owned objects:
  Deployment/web-primary (primary)
  Service/web (apex)
  Service/web-primary
  Service/web-canary
  HTTPRoute/web (routes)

Events:
  none
";
        pretty_assertions::assert_eq!(out, expected);
    }

    #[test]
    fn the_next_step_is_the_last_one_plus_the_interval() {
        let mut st = progressing();
        st.hold_reason = None;
        let c = canary("web", Some(st));
        assert!(
            timeline(&c, None, t0()).contains("Next step:  12:00:20Z (in 20s)\n"),
            "{}",
            timeline(&c, None, t0())
        );
        let late = t0() + chrono::Duration::seconds(25);
        assert!(timeline(&c, None, late).contains("Next step:  12:00:20Z (due now)\n"));
    }

    #[test]
    fn status_of_a_canary_the_operator_has_not_seen() {
        let out = timeline(&canary("web", None), None, t0());
        assert!(
            out.ends_with("not yet seen by the operator (no status)\n"),
            "{out}"
        );
    }

    #[test]
    fn a_pending_abort_is_shown_until_acted_on() {
        let mut c = canary("web", Some(progressing()));
        c.metadata
            .annotations
            .get_or_insert_default()
            .insert(ABORT_ANNOTATION.into(), "t1".into());
        assert!(timeline(&c, None, t0()).contains("abort t1 not yet acted on"));
        if let Some(s) = c.status.as_mut() {
            s.last_abort = Some("t1".into());
        }
        assert!(!timeline(&c, None, t0()).contains("abort t1"));
    }
}
