//! `check` and `convert`: offline, on manifests (files or rendered Helm/kustomize
//! streams), with the rules the operator applies.

use std::fmt::Write as _;

use serde_yaml::Value;

use super::CliError;
use crate::crd::{AlertProvider, Canary, MetricTemplate, Settings};

const FLAGGER: &str = "flagger.app/v1beta1";
const SERIN: &str = "serin.dev/v1beta1";
const KINDS: [&str; 3] = ["Canary", "MetricTemplate", "AlertProvider"];

/// What `check` found in one stream: a line per object checked, a line per error.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub ok: Vec<String>,
    pub errors: Vec<String>,
}

/// Every Serin (or Flagger, which Serin reads alike) object of `text`, checked; the
/// other kinds of a rendered stream are skipped. Unlike `validate`, it goes on after
/// an error, so that one run lists them all.
pub fn check(path: &str, text: &str, provider: &str) -> Report {
    let mut report = Report::default();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                report
                    .errors
                    .push(format!("{path}: document {index}: not YAML: {e}"));
                // A broken stream cannot be split reliably past this point.
                break;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !KINDS.contains(&kind) || !(api == SERIN || api == FLAGGER) {
            continue;
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let at = format!("{path}: {kind} {name}");
        let result = match kind {
            "Canary" => check_canary(&value, provider),
            "MetricTemplate" => typed::<MetricTemplate>(&value).map(|_| ()),
            _ => typed::<AlertProvider>(&value).map(|_| ()),
        };
        match result {
            Ok(()) => report.ok.push(format!("{at}: ok")),
            Err(e) => report.errors.push(format!("{at}: {e}")),
        }
    }
    report
}

/// Deserializes through text, where serde_yaml names the field path of an error
/// (`spec.provider.type: invalid type: ...`); the line and column it adds are of the
/// re-serialized document, not the user's file, so they go.
fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, String> {
    let doc = serde_yaml::to_string(value).map_err(|e| e.to_string())?;
    serde_yaml::from_str(&doc).map_err(|e| {
        let s = e.to_string();
        match s.find(" at line ") {
            Some(i) => s[..i].to_string(),
            None => s,
        }
    })
}

fn check_canary(value: &Value, provider: &str) -> Result<(), String> {
    let canary: Canary = typed(value)?;
    Settings::from_spec(&canary.spec, provider).map_err(|e| e.to_string())?;
    // The route rules (e.g. what a Gateway API route can express) are the ones
    // `validate` applies; they need the document on its own.
    let doc = serde_yaml::to_string(value).map_err(|e| e.to_string())?;
    super::validate_manifests("-", &doc, provider)
        .map(|_| ())
        .map_err(|e| {
            // `validate`'s error repeats the file and Canary `check` already names.
            let s = e.to_string();
            let prefix = format!("-: Canary {}: ", canary.metadata.name.unwrap_or_default());
            s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
        })
}

/// A converted stream: the YAML for stdout, and one note per field whose meaning
/// differs in Serin (for stderr).
#[derive(Debug, Default, PartialEq)]
pub struct Converted {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Flagger's Canaries, MetricTemplates and AlertProviders to Serin's: the apiVersion
/// changes and nothing else, since Serin reads every field alike; the notes name the
/// fields that behave differently (docs/migrating-from-flagger.md). Other documents
/// pass through unchanged, so a whole rendered stream can be piped through.
pub fn convert(path: &str, text: &str) -> Result<Converted, CliError> {
    let mut out = Converted::default();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut value: Value =
            serde::Deserialize::deserialize(doc).map_err(|source| CliError::Parse {
                path: path.to_string(),
                index,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let flagger = value.get("apiVersion").and_then(Value::as_str) == Some(FLAGGER);
        if flagger && KINDS.contains(&kind.as_str()) {
            value["apiVersion"] = Value::from(SERIN);
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            for note in differences(&kind, &value) {
                out.notes.push(format!("{path}: {kind} {name}: {note}"));
            }
        }
        out.yaml.push_str("---\n");
        let doc = serde_yaml::to_string(&value).map_err(CliError::Crds)?;
        let _ = write!(out.yaml, "{doc}");
    }
    Ok(out)
}

/// The fields of one converted object that Serin reads with another meaning.
fn differences(kind: &str, v: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let spec = &v["spec"];
    match kind {
        "Canary" => {
            let provider = spec["provider"].as_str().unwrap_or("");
            let gateway_like = provider.starts_with("gatewayapi") || provider == "traefik";
            let service_name = spec["service"]["name"].as_str();
            let target = spec["targetRef"]["name"].as_str();
            let metrics = spec["analysis"]["metrics"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            for (i, m) in metrics.iter().enumerate() {
                let name = m["name"].as_str().unwrap_or("?");
                let field = format!("spec.analysis.metrics[{i}] ({name})");
                if m.get("onNoData").is_none() {
                    notes.push(format!(
                        "{field}: a query with no data holds the step (inconclusive) instead of failing it; `onNoData: fail` for Flagger's behaviour"
                    ));
                }
                let builtin = m.get("templateRef").is_none() && m.get("query").is_none();
                if builtin && name == "request-duration" {
                    notes.push(format!(
                        "{field}: the built-in returns milliseconds for every provider (Flagger scaled some, and read Traefik's seconds as ms)"
                    ));
                }
                if builtin && provider.starts_with("gatewayapi") {
                    notes.push(format!(
                        "{field}: on Gateway API the built-in queries Traefik's per-service metrics, not Istio's `istio_requests_total`; a MetricTemplate keeps Flagger's query"
                    ));
                }
                if builtin && gateway_like && service_name.is_some() && service_name != target {
                    notes.push(format!(
                        "{field}: series are selected by the Service `{}-canary`, not by the target `{}`",
                        service_name.unwrap_or_default(),
                        target.unwrap_or_default()
                    ));
                }
            }
            if spec["analysis"].get("sessionAffinity").is_some() {
                notes.push("spec.analysis.sessionAffinity: the cookie value is derived from the Canary and the revision (status.sessionAffinityCookie), not random".into());
            }
            if spec.get("suspend").is_some() {
                notes.push("spec.suspend: works as in Flagger; `kubectl serin pause` holds a release without a spec change".into());
            }
        }
        "MetricTemplate" => {
            let t = spec["provider"]["type"].as_str().unwrap_or("prometheus");
            if t != "prometheus" {
                notes.push(format!(
                    "spec.provider.type {t}: Serin queries Prometheus-compatible servers only; a Canary using this template reports it as unsupported"
                ));
            }
        }
        _ => {}
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGGER_STREAM: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: other}
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  provider: gatewayapi:v1
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898, gatewayRefs: [{name: gw}]}
  analysis:
    interval: 1m
    threshold: 5
    stepWeight: 10
    maxWeight: 50
    metrics:
    - {name: request-duration, thresholdRange: {max: 500}}
    - {name: errors, templateRef: {name: errs}, thresholdRange: {max: 1}, onNoData: fail}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: errs}
spec:
  provider: {type: datadog}
  query: x
"#;

    #[test]
    fn convert_swaps_the_api_version_and_names_each_difference() {
        let c = convert("in.yaml", FLAGGER_STREAM).unwrap();
        assert!(!c.yaml.contains("flagger.app"), "{}", c.yaml);
        assert_eq!(c.yaml.matches("apiVersion: serin.dev/v1beta1").count(), 2);
        assert!(c.yaml.contains("kind: Service"), "other kinds pass through");
        let notes = c.notes.join("\n");
        pretty_assertions::assert_eq!(
            c.notes,
            [
                "in.yaml: Canary podinfo: spec.analysis.metrics[0] (request-duration): a query with no data holds the step (inconclusive) instead of failing it; `onNoData: fail` for Flagger's behaviour",
                "in.yaml: Canary podinfo: spec.analysis.metrics[0] (request-duration): the built-in returns milliseconds for every provider (Flagger scaled some, and read Traefik's seconds as ms)",
                "in.yaml: Canary podinfo: spec.analysis.metrics[0] (request-duration): on Gateway API the built-in queries Traefik's per-service metrics, not Istio's `istio_requests_total`; a MetricTemplate keeps Flagger's query",
                "in.yaml: MetricTemplate errs: spec.provider.type datadog: Serin queries Prometheus-compatible servers only; a Canary using this template reports it as unsupported",
            ],
            "{notes}"
        );
        // What convert writes, check accepts.
        let r = check("out.yaml", &c.yaml, "kubernetes");
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(r.ok.len(), 2);
    }

    #[test]
    fn check_lists_every_error_with_its_field() {
        let bad = FLAGGER_STREAM
            .replace("interval: 1m", "interval: soon")
            .replace("type: datadog", "type: [1]");
        let r = check("f.yaml", &bad, "kubernetes");
        assert_eq!(r.errors.len(), 2, "{r:?}");
        assert!(
            r.errors[0].starts_with("f.yaml: Canary podinfo: spec.analysis.interval"),
            "{r:?}"
        );
        assert!(
            r.errors[1].starts_with("f.yaml: MetricTemplate errs: "),
            "{r:?}"
        );
        assert!(r.errors[1].contains("spec.provider.type"), "{r:?}");
    }

    /// Every Flagger example the compatibility test applies converts to a stream
    /// that `check` accepts.
    #[test]
    fn flagger_examples_convert_and_check_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/testdata/flagger");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        assert!(files.len() >= 10, "{files:?}");
        let mut checked = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let path = f.display().to_string();
            let c = convert(&path, &text).unwrap();
            assert!(!c.yaml.contains("apiVersion: flagger.app"), "{path}");
            let r = check(&path, &c.yaml, "kubernetes");
            if path.ends_with("unsupported-providers.yaml") {
                // The API server takes them and the operator reports them as
                // unsupported in their status; `check` says so up front, as it
                // would of the Flagger originals.
                assert_eq!(r.errors, check(&path, &text, "kubernetes").errors);
                assert!(
                    r.errors.iter().all(|e| e.contains("is not supported")),
                    "{r:?}"
                );
                continue;
            }
            assert_eq!(r.errors, Vec::<String>::new(), "{path}");
            checked += r.ok.len();
        }
        // 28 flagger.app documents, 8 of them the unsupported providers.
        assert_eq!(checked, 20);
    }
}
