//! The native load generator: a fixed request rate for a fixed time, bounded in
//! rate, duration, total requests and requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::crd::duration::parse_duration;

use super::TesterConfig;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("metadata must be a JSON object with type: load")]
    NoMetadata,
    #[error(
        "serin tester runs no shell commands; use metadata type: load with url, rate and duration"
    )]
    ShellRefused,
    #[error("metadata.type {0:?} is not supported (use load)")]
    UnknownType(String),
    #[error("metadata.{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// What a `type: load` webhook asks for. Metadata values may be JSON numbers or
/// strings, since Flagger's metadata is a map of strings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub url: String,
    pub method: Method,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Total requests: rate x duration, capped by `TesterConfig::max_requests`.
    pub requests: u64,
    pub headers: HeaderMap,
    pub body: Option<String>,
    /// Answer the webhook only when the load is done, with its report.
    pub blocking: bool,
}

/// What happened to the requests of one load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub sent: u64,
    /// Answered with a status below 400.
    pub ok: u64,
    /// Answered with 4xx/5xx.
    pub http_errors: u64,
    /// Not answered (connection refused, timeout).
    pub transport_errors: u64,
    pub elapsed_ms: u64,
}

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.http_errors + self.transport_errors
    }
}

fn invalid(field: &'static str, why: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        field,
        why: why.into(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Headers as a JSON object, or as `Name: value` lines (how Flagger users write
/// them for hey/curl).
fn headers(v: Option<&Value>) -> Result<HeaderMap, LoadError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                pairs.push((k.clone(), v));
            }
        }
        Some(Value::String(s)) => {
            for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once(':').ok_or_else(|| {
                    invalid("headers", format!("line {line:?} is not `Name: value`"))
                })?;
                pairs.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Some(_) => {
            return Err(invalid(
                "headers",
                "must be an object or `Name: value` lines",
            ));
        }
    }
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| invalid("headers", format!("bad header name {k:?}")))?;
        // The value may be a credential: name the header, never echo the value.
        let mut value = HeaderValue::from_str(&v)
            .map_err(|_| invalid("headers", format!("bad value for header {k:?}")))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

impl LoadSpec {
    pub fn from_metadata(meta: Option<&Value>, cfg: &TesterConfig) -> Result<LoadSpec, LoadError> {
        let m = match meta {
            Some(Value::Object(m)) => m,
            _ => return Err(LoadError::NoMetadata),
        };
        if m.contains_key("cmd") {
            return Err(LoadError::ShellRefused);
        }
        match m.get("type").and_then(Value::as_str).map(str::trim) {
            Some("load") => {}
            Some("cmd" | "bash" | "shell") => return Err(LoadError::ShellRefused),
            Some(other) => return Err(LoadError::UnknownType(other.to_string())),
            None => return Err(LoadError::NoMetadata),
        }
        let url = m
            .get("url")
            .and_then(Value::as_str)
            .map(str::trim)
            .ok_or_else(|| invalid("url", "required"))?;
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(invalid("url", format!("{url:?} is not an http(s) URL"))),
        }
        let rate = m
            .get("rate")
            .and_then(number)
            .ok_or_else(|| invalid("rate", "required: requests per second"))?;
        if !(rate > 0.0 && rate <= cfg.max_rate) {
            return Err(invalid(
                "rate",
                format!("{rate} must be above 0 and at most {}", cfg.max_rate),
            ));
        }
        let duration = match m.get("duration") {
            Some(Value::String(s)) => {
                parse_duration(s).map_err(|e| invalid("duration", e.to_string()))?
            }
            Some(v) => match number(v) {
                Some(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
                _ => return Err(invalid("duration", "must be a duration such as 30s or 2m")),
            },
            None => return Err(invalid("duration", "required, e.g. 1m")),
        };
        if duration.is_zero() || duration > cfg.max_duration {
            return Err(invalid(
                "duration",
                format!(
                    "{duration:?} must be above 0 and at most {:?}",
                    cfg.max_duration
                ),
            ));
        }
        let requests = ((rate * duration.as_secs_f64()).floor() as u64).clamp(1, cfg.max_requests);
        let method = match m.get("method").and_then(Value::as_str) {
            Some(s) => Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid("method", format!("{s:?} is not an HTTP method")))?,
            None => Method::GET,
        };
        Ok(LoadSpec {
            url: url.to_string(),
            method,
            rate,
            duration,
            requests,
            headers: headers(m.get("headers"))?,
            body: m.get("body").and_then(Value::as_str).map(String::from),
            blocking: boolean(m.get("blocking")),
        })
    }
}

enum Outcome {
    Ok,
    HttpError,
    TransportError,
}

/// Sends `spec.requests` requests, the i-th at `i / rate` seconds after the start,
/// never after `spec.duration`, with at most `max_in_flight` outstanding.
pub async fn run_load(http: &reqwest::Client, spec: &LoadSpec, cfg: &TesterConfig) -> LoadReport {
    let start = Instant::now();
    let tokio_start = tokio::time::Instant::now();
    let limit = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut report = LoadReport::default();
    let tally = |report: &mut LoadReport, r: Result<Outcome, tokio::task::JoinError>| match r {
        Ok(Outcome::Ok) => report.ok += 1,
        Ok(Outcome::HttpError) => report.http_errors += 1,
        Ok(Outcome::TransportError) | Err(_) => report.transport_errors += 1,
    };
    for i in 0..spec.requests {
        tokio::time::sleep_until(tokio_start + Duration::from_secs_f64(i as f64 / spec.rate)).await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        // Waiting for a slot may have pushed us past the end: the duration is a
        // hard bound, so stop rather than catch up.
        if start.elapsed() > spec.duration {
            break;
        }
        let mut req = http
            .request(spec.method.clone(), &spec.url)
            .headers(spec.headers.clone());
        if let Some(b) = &spec.body {
            req = req.body(b.clone());
        }
        report.sent += 1;
        tasks.spawn(async move {
            let _permit = permit;
            match req.send().await {
                Ok(r) if r.status().as_u16() < 400 => Outcome::Ok,
                Ok(_) => Outcome::HttpError,
                Err(_) => Outcome::TransportError,
            }
        });
        while let Some(r) = tasks.try_join_next() {
            tally(&mut report, r);
        }
    }
    while let Some(r) = tasks.join_next().await {
        tally(&mut report, r);
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}
