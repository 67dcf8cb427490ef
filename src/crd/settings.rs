//! The validated view of a Canary spec: defaults applied, durations parsed, the
//! strategy decided. Everything downstream works from `Settings`, so a spec error is
//! found once, here, and reported as one readable line.

use std::time::Duration;

use super::canary::*;
use super::duration::parse_duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.analysis is required")]
    MissingAnalysis,
    #[error("spec.service is required (with at least service.port)")]
    MissingService,
    #[error("spec.targetRef.kind {0:?} is not supported: use Deployment or DaemonSet")]
    UnsupportedTargetKind(String),
    #[error(
        "spec.provider {0:?} is not supported: use one of kubernetes, gatewayapi:v1, gatewayapi:v1beta1, linkerd, istio, traefik, smi:v1alpha1, smi:v1alpha2, smi:v1alpha3, nginx"
    )]
    UnknownProvider(String),
    #[error("spec.analysis.interval: {0}")]
    BadInterval(String),
    #[error("spec.analysis.{field}: {value} is above 100")]
    WeightAbove100 { field: &'static str, value: u32 },
    #[error("spec.analysis.stepWeights must increase strictly and be above 0: {0:?}")]
    StepWeightsNotIncreasing(Vec<u32>),
    #[error("spec.analysis needs iterations (A/B, blue/green) or stepWeight/stepWeights (canary)")]
    NoStrategy,
    #[error(
        "spec.analysis.stepWeight: provider {0} cannot split traffic by weight: use analysis.iterations (blue/green)"
    )]
    WeightsUnsupported(String),
    #[error(
        "spec.analysis.match: provider {0} cannot route by request match (A/B): use a mesh or gateway provider"
    )]
    MatchUnsupported(String),
    #[error("spec.analysis.mirror: provider {0} cannot mirror traffic")]
    MirrorUnsupported(String),
    #[error("spec.analysis.{field}: {why}")]
    Invalid { field: String, why: String },
    /// Any field, by its full path (`spec.service.port`, `spec.provider.address`).
    #[error("{path}: {why}")]
    Field { path: String, why: String },
}

/// A routing provider, parsed from `spec.provider` (Flagger's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Kubernetes,
    GatewayApiV1,
    GatewayApiV1beta1,
    Linkerd,
    Istio,
    Traefik,
    Smi(SmiVersion),
    Nginx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmiVersion {
    V1alpha1,
    V1alpha2,
    V1alpha3,
}

impl Provider {
    pub fn parse(s: &str) -> Result<Provider, SpecError> {
        Ok(match s {
            "kubernetes" => Provider::Kubernetes,
            "gatewayapi" | "gatewayapi:v1" => Provider::GatewayApiV1,
            "gatewayapi:v1beta1" => Provider::GatewayApiV1beta1,
            "linkerd" => Provider::Linkerd,
            "istio" => Provider::Istio,
            "traefik" => Provider::Traefik,
            "smi" | "smi:v1alpha1" => Provider::Smi(SmiVersion::V1alpha1),
            "smi:v1alpha2" => Provider::Smi(SmiVersion::V1alpha2),
            "smi:v1alpha3" => Provider::Smi(SmiVersion::V1alpha3),
            "nginx" => Provider::Nginx,
            other => return Err(SpecError::UnknownProvider(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Kubernetes => "kubernetes",
            Provider::GatewayApiV1 => "gatewayapi:v1",
            Provider::GatewayApiV1beta1 => "gatewayapi:v1beta1",
            Provider::Linkerd => "linkerd",
            Provider::Istio => "istio",
            Provider::Traefik => "traefik",
            Provider::Smi(SmiVersion::V1alpha1) => "smi:v1alpha1",
            Provider::Smi(SmiVersion::V1alpha2) => "smi:v1alpha2",
            Provider::Smi(SmiVersion::V1alpha3) => "smi:v1alpha3",
            Provider::Nginx => "nginx",
        }
    }

    fn supports_weights(self) -> bool {
        !matches!(self, Provider::Kubernetes)
    }

    fn supports_match(self) -> bool {
        matches!(
            self,
            Provider::GatewayApiV1
                | Provider::GatewayApiV1beta1
                | Provider::Linkerd
                | Provider::Istio
                | Provider::Nginx
        )
    }

    fn supports_mirror(self) -> bool {
        matches!(
            self,
            Provider::GatewayApiV1
                | Provider::GatewayApiV1beta1
                | Provider::Linkerd
                | Provider::Istio
                | Provider::Traefik
        )
    }
}

/// How traffic moves during analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Weighted canary: the canary weight takes each value of `weights` in turn; the
    /// last one is the maximum. With `mirror_weight`, traffic is also mirrored.
    Canary {
        weights: Vec<u32>,
        mirror: bool,
        mirror_weight: Option<u32>,
        step_weight_promotion: Option<u32>,
    },
    /// Requests matching `analysis.match` go to the canary for `iterations` checks.
    AbTesting { iterations: u32 },
    /// The canary gets no live traffic (or a mirrored copy) for `iterations` checks,
    /// then all traffic switches.
    BlueGreen { iterations: u32, mirror: bool },
}

/// The resolved spec, with Flagger's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub provider: Provider,
    pub strategy: Strategy,
    pub interval: Duration,
    pub threshold: u32,
    pub progress_deadline: Duration,
    pub primary_ready_threshold: u32,
    pub canary_ready_threshold: u32,
    pub skip_analysis: bool,
    pub suspend: bool,
    pub revert_on_deletion: bool,
}

impl Settings {
    /// Validates `spec`. `default_provider` is the operator's `--provider` flag.
    pub fn from_spec(spec: &CanarySpec, default_provider: &str) -> Result<Settings, SpecError> {
        match spec.target_ref.kind.as_str() {
            "Deployment" | "DaemonSet" => {}
            other => return Err(SpecError::UnsupportedTargetKind(other.to_string())),
        }
        let provider_name = spec
            .provider
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(default_provider);
        let provider = Provider::parse(provider_name)?;
        if spec.service.is_none() {
            return Err(SpecError::MissingService);
        }
        let analysis = spec.analysis.as_ref().ok_or(SpecError::MissingAnalysis)?;
        super::validate::canary_fields(spec)?;
        let interval = match analysis.interval.as_deref() {
            Some(i) => parse_duration(i).map_err(|e| SpecError::BadInterval(e.to_string()))?,
            None => Duration::from_secs(60),
        };
        if interval.is_zero() {
            return Err(SpecError::BadInterval("must be above 0".into()));
        }
        for (field, v) in [
            ("maxWeight", analysis.max_weight),
            ("stepWeight", analysis.step_weight),
            ("stepWeightPromotion", analysis.step_weight_promotion),
            ("mirrorWeight", analysis.mirror_weight),
            ("primaryReadyThreshold", analysis.primary_ready_threshold),
            ("canaryReadyThreshold", analysis.canary_ready_threshold),
        ] {
            if let Some(value) = v
                && value > 100
            {
                return Err(SpecError::WeightAbove100 { field, value });
            }
        }
        if let Some(ws) = &analysis.step_weights {
            if let Some(&value) = ws.iter().find(|&&w| w > 100) {
                return Err(SpecError::WeightAbove100 {
                    field: "stepWeights",
                    value,
                });
            }
            if ws.first() == Some(&0) || ws.windows(2).any(|w| w[1] <= w[0]) {
                return Err(SpecError::StepWeightsNotIncreasing(ws.clone()));
            }
        }
        for m in analysis.metrics.iter().flatten() {
            if let Some(i) = &m.interval {
                positive(i).map_err(|why| SpecError::Invalid {
                    field: format!("metrics[{}].interval", m.name),
                    why,
                })?;
            }
            if m.query.is_none() && m.template_ref.is_none() && !is_builtin_metric(&m.name) {
                return Err(SpecError::Invalid {
                    field: format!("metrics[{}]", m.name),
                    why: "needs a query or a templateRef (built-in names: request-success-rate, request-duration)".into(),
                });
            }
        }
        for w in analysis.webhooks.iter().flatten() {
            if let Some(t) = &w.timeout {
                positive(t).map_err(|why| SpecError::Invalid {
                    field: format!("webhooks[{}].timeout", w.name),
                    why,
                })?;
            }
        }

        let iterations = analysis.iterations.unwrap_or(0);
        let has_match = analysis.r#match.as_ref().is_some_and(|m| !m.is_empty());
        let mirror = analysis.mirror.unwrap_or(false);
        let strategy = if iterations > 0 && has_match {
            if !provider.supports_match() {
                return Err(SpecError::MatchUnsupported(provider.as_str().into()));
            }
            Strategy::AbTesting { iterations }
        } else if iterations > 0 {
            Strategy::BlueGreen { iterations, mirror }
        } else {
            let weights = canary_weights(analysis)?;
            if !provider.supports_weights() {
                return Err(SpecError::WeightsUnsupported(provider.as_str().into()));
            }
            Strategy::Canary {
                weights,
                mirror,
                mirror_weight: analysis.mirror_weight,
                step_weight_promotion: analysis.step_weight_promotion.filter(|w| *w > 0),
            }
        };
        if mirror && !provider.supports_mirror() {
            return Err(SpecError::MirrorUnsupported(provider.as_str().into()));
        }

        Ok(Settings {
            provider,
            strategy,
            interval,
            threshold: analysis.threshold.filter(|t| *t > 0).unwrap_or(1),
            progress_deadline: Duration::from_secs(
                spec.progress_deadline_seconds
                    .filter(|s| *s > 0)
                    .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS) as u64,
            ),
            primary_ready_threshold: analysis
                .primary_ready_threshold
                .unwrap_or(DEFAULT_READY_THRESHOLD),
            canary_ready_threshold: analysis
                .canary_ready_threshold
                .unwrap_or(DEFAULT_READY_THRESHOLD),
            skip_analysis: spec.skip_analysis.unwrap_or(false),
            suspend: spec.suspend.unwrap_or(false),
            // Unlike Flagger, on unless turned off: a Canary deleted without it leaves
            // the target at zero and the primary garbage-collected, the app dark.
            revert_on_deletion: spec.revert_on_deletion.unwrap_or(true),
        })
    }
}

/// The runtime refuses a zero interval or timeout (`metric_interval`,
/// `parse_timeout`), so validation does too; empty is unset there as well.
fn positive(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Ok(());
    }
    match parse_duration(raw) {
        Ok(d) if d.is_zero() => Err(format!("{raw:?} must be above 0")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn is_builtin_metric(name: &str) -> bool {
    matches!(name, "request-success-rate" | "request-duration")
}

/// The successive canary weights: `stepWeights` as given, or `stepWeight` steps up to
/// `maxWeight` (the last step capped at it), as Flagger advances them.
fn canary_weights(analysis: &CanaryAnalysis) -> Result<Vec<u32>, SpecError> {
    if let Some(ws) = analysis.step_weights.as_ref().filter(|w| !w.is_empty()) {
        return Ok(ws.clone());
    }
    let step = analysis
        .step_weight
        .filter(|s| *s > 0)
        .ok_or(SpecError::NoStrategy)?;
    let max = analysis.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT).max(1);
    let mut weights = Vec::new();
    let mut w = 0;
    while w < max {
        w = (w + step).min(max);
        weights.push(w);
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(analysis: CanaryAnalysis) -> CanarySpec {
        CanarySpec {
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "app".into(),
            },
            service: Some(CanaryService {
                port: 80,
                ..Default::default()
            }),
            analysis: Some(analysis),
            ..Default::default()
        }
    }

    fn weights(step: Option<u32>, max: Option<u32>, list: Option<Vec<u32>>) -> CanaryAnalysis {
        CanaryAnalysis {
            interval: Some("10s".into()),
            step_weight: step,
            max_weight: max,
            step_weights: list,
            ..Default::default()
        }
    }

    #[test]
    fn step_weights_are_resolved() {
        let cases: Vec<(CanaryAnalysis, Vec<u32>)> = vec![
            (weights(Some(10), Some(50), None), vec![10, 20, 30, 40, 50]),
            (weights(Some(20), None, None), vec![20, 40, 60, 80, 100]),
            (weights(Some(30), Some(50), None), vec![30, 50]),
            (
                weights(None, None, Some(vec![1, 5, 25, 80])),
                vec![1, 5, 25, 80],
            ),
        ];
        for (analysis, want) in cases {
            let s = Settings::from_spec(&spec(analysis.clone()), "istio").unwrap();
            match s.strategy {
                Strategy::Canary { weights, .. } => assert_eq!(weights, want, "{analysis:?}"),
                other => panic!("expected canary, got {other:?}"),
            }
        }
    }

    #[test]
    fn strategy_is_chosen_like_flagger() {
        let ab = CanaryAnalysis {
            iterations: Some(5),
            r#match: Some(vec![AbMatch::default()]),
            ..Default::default()
        };
        assert_eq!(
            Settings::from_spec(&spec(ab), "istio").unwrap().strategy,
            Strategy::AbTesting { iterations: 5 }
        );
        let bg = CanaryAnalysis {
            iterations: Some(3),
            mirror: Some(true),
            ..Default::default()
        };
        assert_eq!(
            Settings::from_spec(&spec(bg), "istio").unwrap().strategy,
            Strategy::BlueGreen {
                iterations: 3,
                mirror: true
            }
        );
    }

    #[test]
    fn defaults_match_flagger() {
        let s = Settings::from_spec(&spec(weights(Some(10), None, None)), "kubernetes:x");
        assert_eq!(s, Err(SpecError::UnknownProvider("kubernetes:x".into())));
        let s = Settings::from_spec(&spec(weights(Some(10), None, None)), "istio").unwrap();
        assert_eq!(s.threshold, 1);
        assert_eq!(s.progress_deadline, Duration::from_secs(600));
        assert_eq!(s.primary_ready_threshold, 100);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert!(!s.skip_analysis && !s.suspend && s.revert_on_deletion);
    }

    #[test]
    fn bad_input_is_one_readable_error() {
        let mut bad_interval = spec(weights(Some(10), None, None));
        bad_interval.analysis.as_mut().unwrap().interval = Some("ten seconds".into());
        let mut bad_kind = spec(weights(Some(10), None, None));
        bad_kind.target_ref.kind = "StatefulSet".into();
        let mut bad_provider = spec(weights(Some(10), None, None));
        bad_provider.provider = Some("envoy".into());
        let mut no_service = spec(weights(Some(10), None, None));
        no_service.service = None;
        let cases: Vec<(CanarySpec, &str, &str)> = vec![
            (bad_interval, "istio", "spec.analysis.interval"),
            (bad_kind, "istio", "StatefulSet"),
            (bad_provider, "istio", "\"envoy\" is not supported"),
            (no_service, "istio", "spec.service is required"),
            (
                spec(weights(Some(110), None, None)),
                "istio",
                "stepWeight: 110 is above 100",
            ),
            (
                spec(weights(None, None, Some(vec![10, 5]))),
                "istio",
                "must increase",
            ),
            (
                spec(weights(None, None, Some(vec![10, 150]))),
                "istio",
                "150 is above 100",
            ),
            (spec(weights(None, None, None)), "istio", "needs iterations"),
            (
                spec(weights(Some(10), None, None)),
                "kubernetes",
                "cannot split traffic",
            ),
        ];
        for (s, provider, needle) in cases {
            let err = Settings::from_spec(&s, provider).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn metric_without_query_must_be_builtin() {
        let mut a = weights(Some(10), None, None);
        a.metrics = Some(vec![CanaryMetric {
            name: "error-budget".into(),
            ..Default::default()
        }]);
        let err = Settings::from_spec(&spec(a), "istio").unwrap_err();
        assert!(err.to_string().contains("error-budget"));
    }
}
