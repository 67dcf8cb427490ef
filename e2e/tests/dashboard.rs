//! The dashboards must keep working: every PromQL expression of the overview
//! (`dashboards/serin.json`) may use only metric names, and label names, that the
//! operator's `/metrics` endpoint really exposes (the truth is taken from Serin's own
//! encoder, `serin::server::Metrics`, so renaming a metric without fixing the
//! dashboard fails here rather than as empty panels in production); both dashboards
//! parse in a real Prometheus, import with a Prometheus datasource variable, and show
//! data for a real release on the local cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use serin::server::{
    ApiLabels, CanaryLabels, ErrorLabels, MetricLabels, Metrics, OutcomeLabels, ThresholdLabels,
    WorkloadLabels,
};

/// Sample names the operator exposes, with the label names each carries. One series
/// is recorded in every family first: an empty family exposes no labels.
fn exposed() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    let canary = CanaryLabels {
        name: "c".into(),
        namespace: "n".into(),
    };
    m.canary_status.get_or_create(&canary).set(0);
    m.canary_duration.get_or_create(&canary).observe(42.0);
    m.canary_weight
        .get_or_create(&WorkloadLabels {
            workload: "w".into(),
            namespace: "n".into(),
        })
        .set(10);
    m.metric_analysis
        .get_or_create(&MetricLabels {
            name: "c".into(),
            namespace: "n".into(),
            metric: "m".into(),
        })
        .set(1.5);
    m.metric_threshold
        .get_or_create(&ThresholdLabels {
            name: "c".into(),
            namespace: "n".into(),
            metric: "m".into(),
            bound: "min".into(),
        })
        .set(99.0);
    m.step_lateness.observe(0.2);
    let outcome = OutcomeLabels {
        name: "c".into(),
        namespace: "n".into(),
        deployment_strategy: "canary".into(),
    };
    m.successes.get_or_create(&outcome).inc();
    m.failures.get_or_create(&outcome).inc();
    m.reconcile_errors
        .get_or_create(&ErrorLabels { reason: "r".into() })
        .inc();
    m.reconcile_duration.observe(0.1);
    m.api_requests
        .get_or_create(&ApiLabels {
            verb: "get".into(),
            kind: "Canary".into(),
        })
        .inc();

    let text = m.encode().expect("encoding metrics");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map(|(s, _)| s).unwrap_or(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let names = out.entry(name.to_string()).or_default();
        // The fixture values above contain no commas or quotes, so a split suffices.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, _)) = pair.split_once('=') {
                names.insert(k.to_string());
            }
        }
    }
    out
}

/// What one PromQL expression uses.
#[derive(Debug, Default)]
struct Uses {
    /// Metric names, each with the label names its selector matches on.
    selectors: Vec<(String, Vec<String>)>,
    /// Label names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
    grouping: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Label names of a selector body such as `namespace=~"$namespace", name!="x"`.
fn selector_labels(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_str = false;
    let mut escaped = false;
    let mut current = String::new();
    let mut at_name = true;
    for c in body.chars() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            ',' => {
                at_name = true;
                current.clear();
            }
            c if at_name && is_ident(c) => current.push(c),
            c if at_name && !c.is_whitespace() => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                at_name = false;
            }
            _ => {}
        }
    }
    out
}

/// Index just after the string literal whose opening quote is before `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    panic!("unclosed string in PromQL");
}

/// Reads until the bracket opened just before `i` closes; returns its body and the
/// index after the closing bracket. Quoted text is skipped, so `"}"` does not close.
fn bracketed(chars: &[char], mut i: usize, open: char, close: char) -> (String, usize) {
    let mut depth = 1;
    let start = i;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip_string(chars, i + 1);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return (chars[start..i].iter().collect(), i + 1);
            }
        }
        i += 1;
    }
    panic!("unclosed {open} in PromQL");
}

/// True when the identifier starting at `j` is `word`.
fn followed_by_word(chars: &[char], j: usize, word: &str) -> bool {
    let end = (j..chars.len())
        .find(|&k| !is_ident(chars[k]))
        .unwrap_or(chars.len());
    chars[j..end].iter().copied().eq(word.chars())
}

/// A small PromQL scanner: enough to tell metric names from functions, keywords,
/// numbers, strings, durations and label lists in the dashboard's expressions.
fn parse_promql(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip_string(&chars, i + 1);
        } else if c == '[' {
            // A range or subquery duration, e.g. `[$__rate_interval]`.
            let (_, next) = bracketed(&chars, i + 1, '[', ']');
            i = next;
        } else if c == '{' {
            // A selector with no metric name: `{__name__=...}` would dodge the check.
            panic!("selector without a metric name in {expr}");
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            panic!("Grafana variable outside a selector or range in {expr}");
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            if GROUPING.contains(&word.as_str()) && next == Some('(') {
                let (body, after) = bracketed(&chars, j + 1, '(', ')');
                uses.grouping.extend(
                    body.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
                i = after;
            } else if next == Some('(')
                // `sum by (le) (...)`: an aggregation whose grouping comes first.
                || KEYWORDS.contains(&word.as_str())
                || GROUPING.iter().any(|g| followed_by_word(&chars, j, g))
            {
                // A function or aggregation (its arguments are scanned next), or a
                // keyword.
            } else if next == Some('{') {
                let (body, after) = bracketed(&chars, j + 1, '{', '}');
                uses.selectors.push((word, selector_labels(&body)));
                i = after;
            } else {
                uses.selectors.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    uses
}

const DASHBOARDS: &[&str] = &["serin.json", "serin-traffic.json"];

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"))
}

/// The overview, whose queries read only the operator's own metrics.
fn dashboard() -> Value {
    load("serin.json")
}

/// All panels, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression: panel targets, and the selectors of template variables
/// (`label_values(<selector>, <label>)`), the latter with the label they read.
fn expressions(d: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target without expr");
            out.push((format!("panel {:?}", p["title"]), expr.to_string(), None));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "datasource" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: expected label_values(...)", v["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        out.push((
            format!("variable {}", v["name"]),
            selector.trim().to_string(),
            Some(label.trim().to_string()),
        ));
    }
    out
}

#[test]
fn promql_parser_tells_metrics_from_the_rest() {
    let u = parse_promql(
        r#"histogram_quantile(0.95, sum by (le, name) (rate(a_bucket{namespace=~"$ns", x!="}"}[$__rate_interval]))) / on (name) b or vector(0)"#,
    );
    assert_eq!(
        u.selectors,
        vec![
            (
                "a_bucket".to_string(),
                vec!["namespace".to_string(), "x".to_string()]
            ),
            ("b".to_string(), vec![]),
        ]
    );
    assert_eq!(u.grouping, ["le", "name", "name"]);
}

#[test]
fn dashboard_queries_use_only_exposed_metrics_and_labels() {
    let exposed = exposed();
    // Counters are exposed with `_total`, histograms as `_bucket`/`_sum`/`_count`.
    for name in [
        "serin_canary_status",
        "serin_canary_weight",
        "serin_canary_duration_seconds_bucket",
        "serin_canary_duration_seconds_sum",
        "serin_canary_duration_seconds_count",
        "serin_canary_metric_analysis",
        "serin_canary_successes_total",
        "serin_canary_failures_total",
        "serin_reconcile_errors_total",
        "serin_reconcile_duration_seconds_bucket",
        "serin_canary_metric_threshold",
        "serin_step_lateness_seconds_bucket",
    ] {
        assert!(
            exposed.contains_key(name),
            "{name} not in {:?}",
            exposed.keys()
        );
    }

    let d = dashboard();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (place, expr, label) in expressions(&d) {
        let uses = parse_promql(&expr);
        if uses.selectors.is_empty() {
            problems.push(format!("{place}: no metric in {expr}"));
        }
        let mut available = BTreeSet::new();
        for (metric, labels) in &uses.selectors {
            used.insert(metric.clone());
            let Some(known) = exposed.get(metric) else {
                problems.push(format!("{place}: {metric} is not exposed by the operator"));
                continue;
            };
            available.extend(known.iter().cloned());
            for l in labels {
                if !known.contains(l) {
                    problems.push(format!("{place}: {metric} has no label {l}"));
                }
            }
        }
        for l in uses.grouping.iter().chain(label.iter()) {
            if !available.contains(l) {
                problems.push(format!("{place}: no metric in {expr} has label {l}"));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));

    // Every Canary and reconcile metric has a panel.
    let unused: Vec<_> = exposed
        .keys()
        .filter(|m| {
            (m.starts_with("serin_canary_")
                || m.starts_with("serin_reconcile_")
                || m.starts_with("serin_step_"))
                && !m.ends_with("_created")
        })
        .filter(|m| !used.contains(*m))
        .filter(|m| {
            // One series of a histogram is enough to chart it.
            let base = m
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            !used.iter().any(|u| u.starts_with(base))
        })
        .collect();
    assert!(unused.is_empty(), "no panel for {unused:?}");
}

#[test]
fn dashboards_are_importable() {
    for name in DASHBOARDS {
        importable(name, &load(name));
    }
}

/// What Grafana needs to import a dashboard and point it at any Prometheus: a
/// `datasource` variable every panel, query and variable uses.
fn importable(file: &str, d: &Value) {
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        (36..=41).contains(&schema),
        "{file}: schemaVersion {schema}"
    );
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v))
        .collect();
    let ds = vars
        .get("datasource")
        .unwrap_or_else(|| panic!("{file}: no $datasource variable"));
    assert_eq!(ds["type"], "datasource", "{file}");
    assert_eq!(ds["query"], "prometheus", "{file}");
    const UID: &str = "${datasource}";
    let mut ids = BTreeSet::new();
    for p in panels(d) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{file}: duplicate id"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], UID, "{file}: {}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{file}: {}: no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], UID, "{file}: {}", p["title"]);
        }
    }
    for name in ["namespace", "canary"] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("{file}: no ${name} variable"));
        assert_eq!(v["datasource"]["uid"], UID, "{file}");
    }
    // Per-Canary panels follow the variables.
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            if !expr.contains("serin_step_")
                && !expr.contains("serin_reconcile_")
                && !expr.contains("serin_kube_")
            {
                assert!(
                    expr.contains("$namespace") && expr.contains("$canary"),
                    "{file}: {}: {expr} ignores the variables",
                    p["title"]
                );
            }
        }
    }
}

/// Grafana's variables replaced the way Grafana would with every value selected
/// (`All` is `.*`).
fn all_selected(expr: &str) -> String {
    expr.replace("$namespace", ".*")
        .replace("$canary", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
}

/// The cluster's Prometheus parses every expression of both dashboards.
#[tokio::test]
async fn dashboard_queries_are_valid_promql() -> anyhow::Result<()> {
    let Some(env) = serin_e2e::ClusterEnv::for_test("dashboard_queries_are_valid_promql") else {
        return Ok(());
    };
    let mut bad = Vec::new();
    for name in DASHBOARDS {
        for (place, expr, _) in expressions(&load(name)) {
            if let Err(e) = serin_e2e::prom_query(&env.prometheus, &all_selected(&expr)).await {
                bad.push(format!("{name} {place}: {e:#}"));
            }
        }
    }
    anyhow::ensure!(bad.is_empty(), "\n{}", bad.join("\n"));
    Ok(())
}

/// Removes the operator's scrape entry when the test ends.
struct Scraped(std::path::PathBuf);

impl Drop for Scraped {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Panels that may rightly be empty after one good release: errors that did not
/// happen, and the data planes this cluster does not run.
fn may_be_empty(file: &str, title: &str, expr: &str) -> bool {
    match file {
        "serin.json" => title == "Reconcile errors" || expr.contains("serin_canary_failures"),
        _ => !(title.starts_with("Traefik:") || title.starts_with("App:")),
    }
}

/// During and right after a real release on Traefik, with the operator scraped by
/// the cluster's Prometheus, every panel that must have data has some: the overview
/// (phases, weights, checks against thresholds, step lateness, API requests per
/// step, promotions, duration) and the canary-vs-primary panels of Traefik and of
/// the app's own metrics. Queries run with the dashboard's variables set to this
/// Canary, as a user would pick it.
#[tokio::test]
async fn dashboard_panels_have_data_for_a_real_release() -> anyhow::Result<()> {
    use serde_json::json;
    use serin_e2e::canary::{canaries, phase, release, status, weight};
    use serin_e2e::{SampleApp, TestNamespace, apply_json, load, operator::Operator};
    use std::time::{Duration, Instant};

    let Some(env) = serin_e2e::ClusterEnv::for_test("dashboard_panels_have_data") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-dash").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let dir = env.state_dir.join("prometheus").join("exporters");
    anyhow::ensure!(
        dir.is_dir(),
        "{} missing: run e2e/cluster.sh up",
        dir.display()
    );
    let entry = dir.join(format!("{}-operator.json", ns.name));
    let target = op.metrics_url.trim_start_matches("http://").to_string();
    std::fs::write(
        entry.with_extension("tmp"),
        json!([{"targets": [target]}]).to_string(),
    )?;
    std::fs::rename(entry.with_extension("tmp"), &entry)?;
    let _scraped = Scraped(entry);

    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(1);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "progressDeadlineSeconds": 60,
                "service": {
                    "port": 8080,
                    "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": {
                    "interval": "10s", "threshold": 2, "stepWeights": [20, 40, 60],
                    "metrics": [
                        {"name": "request-success-rate", "interval": "30s",
                         "thresholdRange": {"min": 95}},
                        {"name": "request-duration", "interval": "30s",
                         "thresholdRange": {"max": 500}}
                    ]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while phase(&status(&api, "web").await?) != "Initialized" {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not initialized\n{}",
            op.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(240));
    app = app.version("v2");
    release(&client, &app).await?;

    // Panels are judged twice: mid-release (weights, canary traffic) and after
    // the promotion (promotions, release duration); a panel has data if either
    // look found a number.
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    for file in DASHBOARDS {
        for p in panels(&load(file)) {
            let title = p["title"].as_str().unwrap_or("").to_string();
            if p["type"] == "row" {
                continue;
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("");
                if may_be_empty(file, &title, expr) {
                    continue;
                }
                pending.insert(
                    format!("{file} {title} {}", t["refId"]),
                    expr.replace("$namespace", &ns.name)
                        .replace("$canary", "web")
                        .replace("$__rate_interval", "1m")
                        .replace("$__range", "1h"),
                );
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut looked_mid = false;
    loop {
        let s = status(&api, "web").await?;
        let done = phase(&s) == "Succeeded";
        anyhow::ensure!(
            phase(&s) != "Failed",
            "release failed: {s}\n{}",
            op.log_tail(30)
        );
        // Mid-release: once the second step has been analysed (a step lateness
        // needs two steps in a row).
        let mid = phase(&s) == "Progressing" && weight(&s) >= 40;
        if (mid && !looked_mid) || done {
            looked_mid |= mid;
            // Prometheus scrapes every second; give the last changes a moment.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut found = Vec::new();
            for (place, query) in &pending {
                let samples = serin_e2e::prom_query(&env.prometheus, query).await?;
                if samples.iter().any(|x| x.value.is_finite()) {
                    found.push(place.clone());
                }
            }
            for place in found {
                pending.remove(&place);
            }
        }
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "release did not end: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let through = bg.finish().await?;
    anyhow::ensure!(through.responses > 0, "no load: {through:?}");
    anyhow::ensure!(
        pending.is_empty(),
        "panels without data for a real release:\n{}",
        pending
            .iter()
            .map(|(p, q)| format!("{p}: {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
