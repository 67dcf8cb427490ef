//! Field checks of the user's strings that the API server's schema cannot express
//! (durations, URLs, header names, regexes, ranges between fields). The operator and
//! `kubectl serin check` call the same functions, so a spec `check` accepts is one
//! the operator accepts, and every refusal names the field path.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::canary::*;
use super::duration::parse_duration;
use super::settings::SpecError;
use super::{AlertProviderSpec, MetricTemplateSpec};

fn field(path: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError::Field {
        path: path.into(),
        why: why.into(),
    }
}

/// A duration that must be above zero; empty counts as unset.
pub fn positive_duration(path: &str, raw: Option<&str>) -> Result<Option<Duration>, SpecError> {
    let Some(s) = raw.filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let d = parse_duration(s).map_err(|e| field(path, e.to_string()))?;
    if d.is_zero() {
        return Err(field(path, format!("{s:?} must be above 0")));
    }
    Ok(Some(d))
}

/// An absolute http(s) URL with a host.
pub fn http_url(path: &str, raw: &str) -> Result<url::Url, SpecError> {
    // The value may be a credential (a Slack hook): the message never repeats it.
    let url =
        url::Url::parse(raw.trim()).map_err(|e| field(path, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(field(path, "must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(field(path, "the URL has no host"));
    }
    Ok(url)
}

/// A proxy URL as reqwest takes it (http, https, socks5).
fn proxy_url(path: &str, raw: &str) -> Result<(), SpecError> {
    let url =
        url::Url::parse(raw.trim()).map_err(|e| field(path, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err(field(path, "must be an http, https or socks5 URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(field(path, "the URL has no host"));
    }
    Ok(())
}

/// An RFC 1123 DNS label (Service names, and the names Serin derives from them).
pub fn dns_label(path: &str, s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(field(
            path,
            format!("{s:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"),
        ))
    }
}

/// An RFC 1123 subdomain (object names such as Deployments and Secrets).
pub fn dns_subdomain(path: &str, s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(field(path, format!("{s:?} is not a valid object name")))
    }
}

pub fn port(path: &str, p: i64) -> Result<(), SpecError> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(field(path, format!("{p} is not a port (1-65535)")))
    }
}

/// An HTTP header name (token characters, as RFC 9110 defines them).
pub fn header_name(path: &str, name: &str) -> Result<(), SpecError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| field(path, format!("{name:?} is not a valid HTTP header name")))
}

pub fn regex(path: &str, re: &str) -> Result<(), SpecError> {
    regex_syntax::Parser::new()
        .parse(re)
        .map(|_| ())
        .map_err(|e| {
            // The parser's message spans lines (a caret under the pattern): one line here.
            let first = e.to_string();
            let why = first
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with("error:"))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| "invalid".into());
            field(path, format!("regex {re:?}: {why}"))
        })
}

/// Exactly one of `exact`, `prefix`, `suffix`, `regex`, and a regex that compiles.
pub fn string_match(path: &str, m: &StringMatch) -> Result<(), SpecError> {
    let set = [&m.exact, &m.prefix, &m.suffix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        return Err(field(
            path,
            format!("needs exactly one of exact, prefix, suffix or regex ({set} set)"),
        ));
    }
    if let Some(re) = &m.regex {
        regex(&format!("{path}.regex"), re)?;
    }
    Ok(())
}

fn header_matches(
    path: &str,
    headers: Option<&BTreeMap<String, StringMatch>>,
) -> Result<(), SpecError> {
    for (name, m) in headers.into_iter().flatten() {
        let p = format!("{path}[{name}]");
        header_name(&p, name)?;
        string_match(&p, m)?;
    }
    Ok(())
}

fn query_params(
    path: &str,
    params: Option<&BTreeMap<String, StringMatch>>,
) -> Result<(), SpecError> {
    for (name, m) in params.into_iter().flatten() {
        let p = format!("{path}[{name}]");
        if name.is_empty() {
            return Err(field(p, "a query parameter name must not be empty"));
        }
        string_match(&p, m)?;
    }
    Ok(())
}

fn non_empty(path: &str, s: &str) -> Result<(), SpecError> {
    if s.trim().is_empty() {
        Err(field(path, "must not be empty"))
    } else {
        Ok(())
    }
}

fn finite(path: &str, v: f64) -> Result<(), SpecError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(field(path, format!("{v} is not a number")))
    }
}

/// Everything in a Canary spec beyond what `Settings::from_spec` resolves: the
/// strings it carries to routers, checks and alerts.
pub fn canary_fields(spec: &CanarySpec) -> Result<(), SpecError> {
    dns_subdomain("spec.targetRef.name", &spec.target_ref.name)?;
    if let Some(s) = spec.progress_deadline_seconds
        && s < 0
    {
        return Err(field(
            "spec.progressDeadlineSeconds",
            format!("{s} is negative"),
        ));
    }
    if let Some(m) = spec
        .metrics_server
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        http_url("spec.metricsServer", m)?;
    }
    if let Some(svc) = &spec.service {
        service(svc)?;
    }
    if let Some(a) = &spec.analysis {
        analysis(a)?;
    }
    Ok(())
}

fn service(svc: &CanaryService) -> Result<(), SpecError> {
    if let Some(name) = &svc.name {
        dns_label("spec.service.name", name)?;
        // `-primary` and `-canary` are appended to it.
        if name.len() > 63 - "-primary".len() {
            return Err(field(
                "spec.service.name",
                format!("{name:?} is too long for the -primary Service (at most 55)"),
            ));
        }
    }
    port("spec.service.port", svc.port.into())?;
    match &svc.target_port {
        Some(IntOrString::Int(p)) => port("spec.service.targetPort", (*p).into())?,
        Some(IntOrString::String(s)) if s.is_empty() => {
            return Err(field("spec.service.targetPort", "must not be empty"));
        }
        _ => {}
    }
    positive_duration("spec.service.timeout", svc.timeout.as_deref())?;
    positive_duration(
        "spec.service.backendTimeout",
        svc.backend_timeout.as_deref(),
    )?;
    if let Some(r) = &svc.retries {
        if let Some(n) = r.attempts
            && n < 0
        {
            return Err(field(
                "spec.service.retries.attempts",
                format!("{n} is negative"),
            ));
        }
        positive_duration(
            "spec.service.retries.perTryTimeout",
            r.per_try_timeout.as_deref(),
        )?;
    }
    for (i, m) in svc.r#match.iter().flatten().enumerate() {
        let p = format!("spec.service.match[{i}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(&format!("{p}.{name}"), sm)?;
            }
        }
        header_matches(&format!("{p}.headers"), m.headers.as_ref())?;
        header_matches(&format!("{p}.withoutHeaders"), m.without_headers.as_ref())?;
        query_params(&format!("{p}.queryParams"), m.query_params.as_ref())?;
        if let Some(port_) = m.port {
            port(&format!("{p}.port"), port_.into())?;
        }
    }
    if let Some(h) = &svc.headers {
        for (dir, op) in [("request", &h.request), ("response", &h.response)] {
            let Some(op) = op else { continue };
            let p = format!("spec.service.headers.{dir}");
            for (verb, map) in [("add", &op.add), ("set", &op.set)] {
                for (name, value) in map.iter().flatten() {
                    header_name(&format!("{p}.{verb}[{name}]"), name)?;
                    http::HeaderValue::from_str(value).map_err(|_| {
                        field(
                            format!("{p}.{verb}[{name}]"),
                            "the value has characters a header cannot carry",
                        )
                    })?;
                }
            }
            for name in op.remove.iter().flatten() {
                header_name(&format!("{p}.remove"), name)?;
            }
        }
    }
    Ok(())
}

fn analysis(a: &CanaryAnalysis) -> Result<(), SpecError> {
    if let Some(0) = a.max_weight {
        return Err(field("spec.analysis.maxWeight", "must be above 0"));
    }
    for (i, m) in a.r#match.iter().flatten().enumerate() {
        let p = format!("spec.analysis.match[{i}]");
        header_matches(&format!("{p}.headers"), m.headers.as_ref())?;
        query_params(&format!("{p}.queryParams"), m.query_params.as_ref())?;
    }
    for m in a.metrics.iter().flatten() {
        let p = format!("spec.analysis.metrics[{}]", m.name);
        non_empty(&format!("{p}.name"), &m.name)?;
        positive_duration(&format!("{p}.timeout"), m.timeout.as_deref())?;
        let has_range = m
            .threshold_range
            .as_ref()
            .is_some_and(|r| r.min.is_some() || r.max.is_some());
        if !has_range && m.threshold.is_none() {
            return Err(field(
                format!("{p}.thresholdRange"),
                "needs min and/or max (or the deprecated threshold)",
            ));
        }
        if let Some(t) = m.threshold {
            finite(&format!("{p}.threshold"), t)?;
        }
        if let Some(r) = &m.threshold_range {
            if let Some(v) = r.min {
                finite(&format!("{p}.thresholdRange.min"), v)?;
            }
            if let Some(v) = r.max {
                finite(&format!("{p}.thresholdRange.max"), v)?;
            }
            if let (Some(min), Some(max)) = (r.min, r.max)
                && min > max
            {
                return Err(field(
                    format!("{p}.thresholdRange"),
                    format!("min {min} is above max {max}: no value can pass"),
                ));
            }
        }
        if let Some(n) = m.min_sample_count {
            if !(n.is_finite() && n >= 0.0) {
                return Err(field(
                    format!("{p}.minSampleCount"),
                    format!("{n} must be a number of requests, 0 or more"),
                ));
            }
            let custom = m.query.is_some() || m.template_ref.is_some();
            if custom
                && m.sample_count_query
                    .as_deref()
                    .is_none_or(|q| q.trim().is_empty())
            {
                return Err(field(
                    format!("{p}.sampleCountQuery"),
                    "minSampleCount needs sampleCountQuery for a metric that is not built-in",
                ));
            }
        }
        // An inline query is rendered with the metric's own variables, so unset
        // means none: `variables.KEY` must be set here, not left to the check.
        let empty = BTreeMap::new();
        let vars = Some(m.template_variables.as_ref().unwrap_or(&empty));
        if let Some(q) = &m.query {
            non_empty(&format!("{p}.query"), q)?;
            query_template(&format!("{p}.query"), q, vars)?;
        }
        if let Some(q) = &m.sample_count_query {
            query_template(&format!("{p}.sampleCountQuery"), q, vars)?;
        }
        if let Some(t) = &m.template_ref {
            dns_subdomain(&format!("{p}.templateRef.name"), &t.name)?;
        }
    }
    for w in a.webhooks.iter().flatten() {
        let p = format!("spec.analysis.webhooks[{}]", w.name);
        non_empty(&format!("{p}.name"), &w.name)?;
        http_url(&format!("{p}.url"), &w.url)?;
        if let Some(s) = &w.headers_secret_ref {
            dns_subdomain(&format!("{p}.headersSecretRef.name"), &s.name)?;
        }
    }
    for al in a.alerts.iter().flatten() {
        let p = format!("spec.analysis.alerts[{}]", al.name);
        non_empty(&format!("{p}.name"), &al.name)?;
        match al.severity.as_deref().map(str::trim).unwrap_or("") {
            "" | "info" | "warn" | "warning" | "error" => {}
            other => {
                return Err(field(
                    format!("{p}.severity"),
                    format!("{other:?} is not one of info, warn, error"),
                ));
            }
        }
        dns_subdomain(&format!("{p}.providerRef.name"), &al.provider_ref.name)?;
    }
    if let Some(s) = &a.session_affinity {
        let p = "spec.analysis.sessionAffinity";
        cookie_name(&format!("{p}.cookieName"), &s.cookie_name)?;
        if let Some(c) = &s.primary_cookie_name {
            cookie_name(&format!("{p}.primaryCookieName"), c)?;
            if *c == s.cookie_name {
                return Err(field(
                    format!("{p}.primaryCookieName"),
                    "must differ from cookieName",
                ));
            }
        }
        if let Some(age) = s.max_age
            && age < 0
        {
            return Err(field(format!("{p}.maxAge"), format!("{age} is negative")));
        }
        if let Some(ss) = &s.same_site
            && !matches!(ss.as_str(), "Strict" | "Lax" | "None")
        {
            return Err(field(
                format!("{p}.sameSite"),
                format!("{ss:?} is not one of Strict, Lax, None"),
            ));
        }
    }
    Ok(())
}

/// A cookie name is an RFC 6265 token: what a header name may hold.
fn cookie_name(path: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(field(path, format!("{name:?} is not a valid cookie name")));
    }
    Ok(())
}

/// The placeholders of a query are all known, and every `variables.KEY` it uses is
/// set in `variables` (when the Canary's variables are known: `Some`).
pub fn query_template(
    path: &str,
    query: &str,
    variables: Option<&BTreeMap<String, String>>,
) -> Result<(), SpecError> {
    let names =
        crate::analysis::template::placeholders(query).map_err(|e| field(path, e.to_string()))?;
    for name in names {
        match name.strip_prefix("variables.") {
            Some(key) if !key.is_empty() => {
                if let Some(vars) = variables
                    && !vars.contains_key(key)
                {
                    return Err(field(
                        path,
                        format!("template variable {name:?} is not set in templateVariables"),
                    ));
                }
            }
            _ => {
                if !crate::analysis::template::KNOWN_VARIABLES.contains(&name.as_str()) {
                    return Err(field(
                        path,
                        crate::analysis::template::TemplateError::UnknownVariable(name).to_string(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Metric backends Serin queries (`BackendKind::of`); Flagger's others are refused
/// here rather than failing every check of every release.
pub fn metric_template(spec: &MetricTemplateSpec) -> Result<(), SpecError> {
    let p = &spec.provider;
    if crate::analysis::backend::BackendKind::of(p.r#type.as_str()).is_none() {
        return Err(field(
            "spec.provider.type",
            format!(
                "{:?} is not supported (use prometheus, graphite, influxdb, datadog, newrelic or dynatrace)",
                p.r#type
            ),
        ));
    }
    if let Some(a) = p.address.as_deref().filter(|a| !a.trim().is_empty()) {
        http_url("spec.provider.address", a)?;
    }
    positive_duration("spec.provider.timeout", p.timeout.as_deref())?;
    for (name, values) in p.headers.iter().flatten() {
        let hp = format!("spec.provider.headers[{name}]");
        header_name(&hp, name)?;
        for v in values {
            http::HeaderValue::from_str(v)
                .map_err(|_| field(&hp, "a value has characters a header cannot carry"))?;
        }
    }
    if let Some(s) = &p.secret_ref {
        dns_subdomain("spec.provider.secretRef.name", &s.name)?;
    }
    non_empty("spec.query", &spec.query)?;
    query_template("spec.query", &spec.query, None)
}

pub fn alert_provider(spec: &AlertProviderSpec) -> Result<(), SpecError> {
    if crate::notify::ProviderKind::parse(&spec.r#type).is_none() {
        return Err(field(
            "spec.type",
            format!(
                "{:?} is not supported (slack, msteams, discord, rocket, gchat, webhook)",
                spec.r#type
            ),
        ));
    }
    if let Some(a) = spec.address.as_deref().filter(|a| !a.trim().is_empty()) {
        http_url("spec.address", a)?;
    }
    if let Some(a) = spec.proxy.as_deref().filter(|a| !a.trim().is_empty()) {
        proxy_url("spec.proxy", a)?;
    }
    match &spec.secret_ref {
        Some(s) => dns_subdomain("spec.secretRef.name", &s.name)?,
        None if spec.address.as_deref().is_none_or(|a| a.trim().is_empty()) => {
            return Err(field(
                "spec.address",
                "is required unless spec.secretRef names a Secret with an address key",
            ));
        }
        None => {}
    }
    Ok(())
}

/// A MetricTemplate as one metric of `canary` uses it: its own fields, then the
/// variables its query needs from the metric's `templateVariables`.
pub fn template_for_metric(
    metric: &CanaryMetric,
    template_name: &str,
    spec: &MetricTemplateSpec,
) -> Result<(), SpecError> {
    let in_template = |e: SpecError| match e {
        SpecError::Field { path, why } => {
            field(format!("MetricTemplate {template_name}: {path}"), why)
        }
        other => other,
    };
    metric_template(spec).map_err(in_template)?;
    let empty = BTreeMap::new();
    query_template(
        &format!("spec.analysis.metrics[{}].templateVariables", metric.name),
        &spec.query,
        Some(metric.template_variables.as_ref().unwrap_or(&empty)),
    )
}

#[cfg(test)]
mod tests;
