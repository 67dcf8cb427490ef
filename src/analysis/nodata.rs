//! Explains a query that returned no samples: which metric names it reads, whether
//! Prometheus has any series of them, and which of the labels it selects on those
//! series lack. A bare "no data" sends users to switch analysis off; "the metric has
//! 4 series in your namespace, none with `kubernetes_pod_name`" tells them what to fix.

use std::collections::BTreeSet;
use std::time::Duration;

use super::prometheus::{PromClient, SeriesSummary};

/// How far back series are looked up: long enough to see a pod that stopped being
/// scraped a moment ago, short enough to leave out last week's.
pub const LOOKBACK: Duration = Duration::from_secs(15 * 60);

/// Metric names looked up per query; the rest are only named.
const MAX_METRICS: usize = 4;

/// Label names listed in a message, so a metric with many labels stays readable.
const MAX_LABELS: usize = 12;

/// One vector selector of a query: the metric name and the label names it matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSelector {
    pub metric: String,
    pub labels: Vec<String>,
}

const KEYWORDS: [&str; 14] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "start",
];

/// The vector selectors of a PromQL expression, in order. A small scanner rather
/// than a parser: it only has to find `name{...}`, `name[...]` and bare names, and
/// skip strings, numbers, durations, function calls and grouping label lists.
pub fn selectors(query: &str) -> Vec<VectorSelector> {
    let b = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c == b'[' {
            i = skip_past(b, i, b']');
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'{' {
            // `{__name__="x", ...}`: a selector without a metric name in front.
            let (matchers, end) = matchers(query, i);
            if let Some((_, name)) = matchers.iter().find(|(l, _)| l == "__name__")
                && let Some(name) = name.clone()
            {
                out.push(VectorSelector {
                    metric: name,
                    labels: label_names(&matchers),
                });
            }
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let name = &query[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let keyword = KEYWORDS.contains(&name.to_ascii_lowercase().as_str());
            match b.get(j) {
                Some(b'(') => {
                    if matches!(
                        name,
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    ) {
                        i = skip_past(b, j, b')');
                    }
                }
                Some(b'{') if !keyword => {
                    let (m, end) = matchers(query, j);
                    out.push(VectorSelector {
                        metric: name.to_string(),
                        labels: label_names(&m),
                    });
                    i = end;
                }
                _ if !keyword => out.push(VectorSelector {
                    metric: name.to_string(),
                    labels: Vec::new(),
                }),
                _ => {}
            }
        } else {
            i += 1;
        }
    }
    out
}

fn label_names(matchers: &[(String, Option<String>)]) -> Vec<String> {
    matchers
        .iter()
        .map(|(l, _)| l.clone())
        .filter(|l| l != "__name__")
        .collect()
}

/// Index just past the string literal starting at `i` (backslash escapes honoured).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

fn skip_past(b: &[u8], i: usize, close: u8) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if matches!(b[j], b'"' | b'\'' | b'`') {
            j = skip_string(b, j);
            continue;
        }
        if b[j] == close {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The matchers of `{...}` starting at `i`: each label, with its value when the
/// matcher is an equality (needed for `__name__`). Returns the index past `}`.
fn matchers(query: &str, i: usize) -> (Vec<(String, Option<String>)>, usize) {
    let b = query.as_bytes();
    let mut out = Vec::new();
    let mut j = i + 1;
    loop {
        while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b',') {
            j += 1;
        }
        if j >= b.len() {
            return (out, j);
        }
        if b[j] == b'}' {
            return (out, j + 1);
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        if j == start {
            // Not a label name: give up on this selector rather than loop.
            return (out, skip_past(b, i, b'}'));
        }
        let label = query[start..j].to_string();
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let op_start = j;
        while j < b.len() && matches!(b[j], b'=' | b'!' | b'~') {
            j += 1;
        }
        let equality = &query[op_start..j] == "=";
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let value = if j < b.len() && matches!(b[j], b'"' | b'\'' | b'`') {
            let end = skip_string(b, j);
            let v = query.get(j + 1..end.saturating_sub(1)).unwrap_or_default();
            j = end;
            equality.then(|| v.to_string())
        } else {
            None
        };
        out.push((label, value));
    }
}

/// What Prometheus has for one metric, said against what the query asked for.
pub fn describe(
    metric: &str,
    wanted: &[Vec<String>],
    namespace: &str,
    found: &SeriesSummary,
) -> String {
    if found.series.is_empty() {
        return format!(
            "{metric} has no series at all (is the app scraped, and does it export {metric}?)"
        );
    }
    let in_ns: Vec<_> = found
        .series
        .iter()
        .filter(|s| s.values().any(|v| v == namespace))
        .collect();
    let listed = {
        let names: Vec<&str> = found.label_names.iter().map(String::as_str).collect();
        let mut s = names
            .iter()
            .take(MAX_LABELS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > MAX_LABELS {
            s.push_str(&format!(" and {} more", names.len() - MAX_LABELS));
        }
        s
    };
    if in_ns.is_empty() {
        return format!(
            "{metric} has {} series, none with a label naming namespace {namespace} (is the app in this namespace scraped?); its labels are: {listed}",
            found.series.len()
        );
    }
    let scope = format!("{} series in namespace {namespace}", in_ns.len());
    let pool = in_ns;
    let have: BTreeSet<&str> = pool
        .iter()
        .flat_map(|s| s.keys().map(String::as_str))
        .collect();
    // Each selector of the metric is an alternative (one per label convention): it
    // is enough that one of them finds every label.
    let missing: Vec<Vec<&str>> = wanted
        .iter()
        .map(|labels| {
            labels
                .iter()
                .map(String::as_str)
                .filter(|l| !have.contains(l))
                .collect::<Vec<_>>()
        })
        .collect();
    if missing.is_empty() || missing.iter().any(Vec::is_empty) {
        return format!(
            "{metric} has {scope} with every label the query selects on, but none match its values in the interval (no requests reached the canary yet?)"
        );
    }
    let none_with = missing
        .iter()
        .map(|m| m.join(", "))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" nor ");
    format!("{metric} has {scope}, none with {none_with}; its labels are: {listed}")
}

/// Looks the query's metrics up in Prometheus and says what exists. Lookup errors
/// are part of the text: the explanation must never turn a hold into a failure.
pub async fn explain(client: &PromClient, query: &str, namespace: &str) -> String {
    let mut by_metric: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for sel in selectors(query) {
        match by_metric.iter_mut().find(|(m, _)| *m == sel.metric) {
            Some((_, alts)) => {
                if !alts.contains(&sel.labels) {
                    alts.push(sel.labels);
                }
            }
            None => by_metric.push((sel.metric, vec![sel.labels])),
        }
    }
    if by_metric.is_empty() {
        return "the query reads no metric by name".into();
    }
    let lookups = by_metric
        .iter()
        .take(MAX_METRICS)
        .map(|(metric, _)| client.series_of(metric, LOOKBACK));
    let found = futures::future::join_all(lookups).await;
    let mut parts: Vec<String> = by_metric
        .iter()
        .zip(found)
        .map(|((metric, wanted), found)| match found {
            Ok(f) => describe(metric, wanted, namespace, &f),
            Err(e) => format!("cannot list the series of {metric}: {e}"),
        })
        .collect();
    if by_metric.len() > MAX_METRICS {
        parts.push(format!(
            "{} more metrics not looked up",
            by_metric.len() - MAX_METRICS
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sel(metric: &str, labels: &[&str]) -> VectorSelector {
        VectorSelector {
            metric: metric.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn finds_the_selectors_of_builtin_shaped_queries() {
        let q = r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{kubernetes_namespace="t", kubernetes_pod_name=~"a-[0-9a-z]+(-[0-9]+)"}[1m])) by (le) or sum(rate(http_request_duration_seconds_bucket{namespace="t", pod=~"a-.+"}[1m])) by (le)) * 1000"#;
        assert_eq!(
            selectors(q),
            vec![
                sel(
                    "http_request_duration_seconds_bucket",
                    &["kubernetes_namespace", "kubernetes_pod_name"]
                ),
                sel(
                    "http_request_duration_seconds_bucket",
                    &["namespace", "pod"]
                ),
            ]
        );
        let q = r#"(sum(rate(x_total{code!~"5..", a="}{"}[30s] offset 1m)) or vector(0)) / sum(up) * 100"#;
        assert_eq!(
            selectors(q),
            vec![sel("x_total", &["code", "a"]), sel("up", &[])]
        );
        assert_eq!(
            selectors(r#"count({__name__="foo", job="j"})"#),
            vec![sel("foo", &["job"])]
        );
        assert_eq!(selectors("vector(1) + 2.5e3"), vec![]);
    }

    fn series(labels: &[&[(&str, &str)]]) -> SeriesSummary {
        let series: Vec<BTreeMap<String, String>> = labels
            .iter()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        let label_names = series.iter().flat_map(|s| s.keys().cloned()).collect();
        SeriesSummary {
            series,
            label_names,
        }
    }

    #[test]
    fn describes_what_exists_against_what_was_asked() {
        let wanted = vec![vec![
            "kubernetes_namespace".to_string(),
            "kubernetes_pod_name".to_string(),
        ]];
        let found = series(&[
            &[("namespace", "x"), ("pod", "a-1-2"), ("status", "200")],
            &[("namespace", "x"), ("pod", "a-1-3"), ("status", "200")],
            &[("namespace", "y"), ("pod", "b-1-3"), ("status", "200")],
        ]);
        let m = describe("http_requests", &wanted, "x", &found);
        assert_eq!(
            m,
            "http_requests has 2 series in namespace x, none with kubernetes_namespace, kubernetes_pod_name; its labels are: namespace, pod, status"
        );
        let m = describe("http_requests", &wanted, "z", &found);
        assert_eq!(
            m,
            "http_requests has 3 series, none with a label naming namespace z (is the app in this namespace scraped?); its labels are: namespace, pod, status"
        );
        // One alternative finds its labels: the values are what does not match.
        let both = vec![
            wanted[0].clone(),
            vec!["namespace".to_string(), "pod".to_string()],
        ];
        let m = describe("http_requests", &both, "x", &found);
        assert!(m.contains("with every label the query selects on"), "{m}");
        let m = describe("http_requests", &wanted, "x", &SeriesSummary::default());
        assert!(m.contains("has no series at all"), "{m}");
    }
}
