//! Renders Flagger's query template variables (`{{ name }}`, `{{ namespace }}`,
//! `{{ target }}`, `{{ service }}`, `{{ ingress }}`, `{{ route }}`, `{{ interval }}`,
//! `{{ variables.KEY }}`).
//!
//! Flagger runs queries through Go's text/template with these as functions; Serin
//! supports exactly these placeholders and nothing else, so a typo is reported as an
//! error naming the variable instead of rendering an empty string into PromQL.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::crd::Canary;
use crate::crd::duration::{parse_duration, prometheus_range};

/// Flagger's default metric interval when a metric names none.
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown template variable {0:?} (known: name, namespace, target, service, ingress, route, interval, variables.KEY)"
    )]
    UnknownVariable(String),
    #[error("template variable {0:?} is not set in templateVariables")]
    MissingVariable(String),
    #[error("unterminated {{{{ at byte {0}")]
    Unterminated(usize),
    #[error("metric interval: {0}")]
    BadInterval(String),
}

/// The values a query template may refer to, as Flagger's `MetricTemplateModel`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TemplateModel {
    pub name: String,
    pub namespace: String,
    pub target: String,
    pub service: String,
    pub ingress: String,
    pub route: String,
    /// Prometheus range notation, e.g. `1m`, `30s`.
    pub interval: String,
    pub variables: BTreeMap<String, String>,
}

impl TemplateModel {
    /// Builds the model as Flagger does: `service`, `ingress` and `route` fall back to
    /// the target name when the Canary names none.
    pub fn for_canary(
        canary: &Canary,
        interval: Option<&str>,
        variables: Option<&BTreeMap<String, String>>,
    ) -> Result<TemplateModel, TemplateError> {
        let target = canary.target_name().to_string();
        let spec = &canary.spec;
        Ok(TemplateModel {
            name: canary.name_str().to_string(),
            namespace: canary.namespace_or_default(),
            service: canary.apex_name(),
            ingress: spec
                .ingress_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| target.clone()),
            route: spec
                .route_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| target.clone()),
            target,
            interval: prometheus_range(metric_interval(interval)?),
            variables: variables.cloned().unwrap_or_default(),
        })
    }

    fn lookup(&self, key: &str) -> Result<&str, TemplateError> {
        Ok(match key {
            "name" => &self.name,
            "namespace" => &self.namespace,
            "target" => &self.target,
            "service" => &self.service,
            "ingress" => &self.ingress,
            "route" => &self.route,
            "interval" => &self.interval,
            other => match other.strip_prefix("variables.") {
                Some(var) if !var.is_empty() => self
                    .variables
                    .get(var)
                    .map(String::as_str)
                    .ok_or_else(|| TemplateError::MissingVariable(other.to_string()))?,
                _ => return Err(TemplateError::UnknownVariable(other.to_string())),
            },
        })
    }
}

/// Parses a metric's `interval` (default `1m`), so the range in PromQL is always in a
/// form Prometheus accepts (e.g. `1m30s` becomes `90s`).
pub fn metric_interval(interval: Option<&str>) -> Result<Duration, TemplateError> {
    let raw = interval
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(DEFAULT_METRIC_INTERVAL);
    let d = parse_duration(raw).map_err(|e| TemplateError::BadInterval(e.to_string()))?;
    if d.is_zero() {
        return Err(TemplateError::BadInterval(format!(
            "{raw:?} must be above 0"
        )));
    }
    Ok(d)
}

/// The names a query template may refer to besides `variables.KEY`.
pub const KNOWN_VARIABLES: &[&str] = &[
    "name",
    "namespace",
    "target",
    "service",
    "ingress",
    "route",
    "interval",
];

/// The placeholder names of `query`, as `render` reads them, without their values:
/// validation can then refuse a typo before any release runs the query.
pub fn placeholders(query: &str) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    let mut rest = query;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unterminated(offset + start))?;
        names.push(trim_markers(&after[..end]).to_string());
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    Ok(names)
}

fn trim_markers(inner: &str) -> &str {
    let inner = inner.trim();
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    inner.strip_suffix('-').unwrap_or(inner).trim()
}

/// Replaces every `{{ VAR }}` (any whitespace inside the braces, Go's `{{-`/`-}}`
/// trim markers tolerated) with its value from `model`.
pub fn render(query: &str, model: &TemplateModel) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unterminated(offset + start))?;
        out.push_str(model.lookup(trim_markers(&after[..end]))?);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CanarySpec, LocalObjectReference, TargetRef};

    fn model() -> TemplateModel {
        TemplateModel {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "frontend".into(),
            ingress: "podinfo-ing".into(),
            route: "podinfo-route".into(),
            interval: "1m".into(),
            variables: BTreeMap::from([("cluster".to_string(), "dev".to_string())]),
        }
    }

    #[test]
    fn renders_every_variable_with_flexible_whitespace() {
        let cases = [
            ("{{ name }}", "podinfo"),
            ("{{namespace}}", "test"),
            ("{{   target   }}", "podinfo"),
            ("{{ service}}", "frontend"),
            ("{{ingress }}", "podinfo-ing"),
            ("{{ route }}", "podinfo-route"),
            ("[{{ interval }}]", "[1m]"),
            ("{{ variables.cluster }}", "dev"),
            ("{{- name -}}", "podinfo"),
            ("no placeholders", "no placeholders"),
            (
                "sum(rate(x{ns=\"{{ namespace }}\",c=\"{{variables.cluster}}\"}[{{ interval }}]))",
                "sum(rate(x{ns=\"test\",c=\"dev\"}[1m]))",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(render(input, &model()).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn unknown_or_missing_variables_are_named() {
        let err = render("x{a=\"{{ nmespace }}\"}", &model()).unwrap_err();
        assert_eq!(err, TemplateError::UnknownVariable("nmespace".into()));
        assert!(err.to_string().contains("\"nmespace\""));
        let err = render("{{ variables.region }}", &model()).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingVariable("variables.region".into())
        );
        assert!(err.to_string().contains("variables.region"));
        assert!(matches!(
            render("{{ variables. }}", &model()),
            Err(TemplateError::UnknownVariable(_))
        ));
        assert_eq!(
            render("abc {{ name", &model()),
            Err(TemplateError::Unterminated(4))
        );
    }

    #[test]
    fn model_falls_back_to_target_like_flagger() {
        let mut canary = Canary::new(
            "podinfo",
            CanarySpec {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "backend".into(),
                },
                ..Default::default()
            },
        );
        canary.metadata.namespace = Some("prod".into());
        let m = TemplateModel::for_canary(&canary, Some("1m30s"), None).unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.target.as_str()),
            ("podinfo", "prod", "backend")
        );
        assert_eq!(
            (m.service.as_str(), m.ingress.as_str(), m.route.as_str()),
            ("backend", "backend", "backend")
        );
        assert_eq!(m.interval, "90s");

        canary.spec.ingress_ref = Some(LocalObjectReference {
            api_version: "networking.k8s.io/v1".into(),
            kind: "Ingress".into(),
            name: "web".into(),
        });
        let m = TemplateModel::for_canary(&canary, None, None).unwrap();
        assert_eq!(m.ingress, "web");
        assert_eq!(m.interval, "1m");
        assert!(TemplateModel::for_canary(&canary, Some("soon"), None).is_err());
    }
}
