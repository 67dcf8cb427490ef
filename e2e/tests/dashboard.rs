//! `dashboards/serin.json` must keep working against the operator: every PromQL
//! expression may use only metric names, and label names, that the operator's
//! `/metrics` endpoint really exposes. The truth is taken from Serin's own encoder
//! (`serin::server::Metrics`), so renaming a metric without fixing the dashboard
//! fails here rather than as empty panels in production.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use serin::server::{
    ApiLabels, CanaryLabels, ErrorLabels, MetricLabels, Metrics, OutcomeLabels, WorkloadLabels,
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

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/serin.json");
    let text = std::fs::read_to_string(&path).expect("reading dashboards/serin.json");
    serde_json::from_str(&text).expect("dashboards/serin.json is not valid JSON")
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
            (m.starts_with("serin_canary_") || m.starts_with("serin_reconcile_"))
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
fn dashboard_is_importable() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input"
    );
    // On import Grafana replaces `${DS_PROMETHEUS}` only where it is written, so
    // every panel and query must use it.
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v))
        .collect();
    for name in ["namespace", "canary"] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no ${name} variable"));
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}");
    }
    // Per-Canary panels follow the variables.
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.contains("serin_canary_") {
                assert!(
                    expr.contains("$namespace") && expr.contains("$canary"),
                    "{}: {expr} ignores the variables",
                    p["title"]
                );
            }
        }
    }
}

/// The cluster's Prometheus parses every expression, with Grafana's variables
/// replaced the way Grafana would (all values selected).
#[tokio::test]
async fn dashboard_queries_are_valid_promql() -> anyhow::Result<()> {
    let Some(env) = serin_e2e::ClusterEnv::for_test("dashboard_queries_are_valid_promql") else {
        return Ok(());
    };
    let mut bad = Vec::new();
    for (place, expr, _) in expressions(&dashboard()) {
        let query = expr
            .replace("$namespace", ".*")
            .replace("$canary", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h");
        if let Err(e) = serin_e2e::prom_query(&env.prometheus, &query).await {
            bad.push(format!("{place}: {e:#}"));
        }
    }
    anyhow::ensure!(bad.is_empty(), "\n{}", bad.join("\n"));
    Ok(())
}
