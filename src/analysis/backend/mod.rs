//! Metric backends behind one trait: a `MetricTemplate`'s `provider.type` picks one,
//! and every check, whatever answers it, ends in a value, no data, or an error with
//! the backend's own words. Prometheus-compatible servers go through
//! `prometheus-http-query` (`super::prometheus`); Graphite and InfluxDB speak their
//! own HTTP APIs, as Flagger's providers of the same type do.

pub mod graphite;
pub mod influxdb;
pub mod saas;

use std::collections::BTreeMap;
use std::time::Duration;

use super::prometheus::{PromClient, PromError};
use crate::router::BoxFuture;

/// Longest part of an error body quoted in a check's message.
const BODY_SNIPPET: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error("{backend}: {why}")]
    Config { backend: &'static str, why: String },
    #[error("{backend} at {address} timed out after {timeout:?}")]
    Timeout {
        backend: &'static str,
        address: String,
        timeout: Duration,
    },
    #[error("{backend} at {address} is unreachable: {why}")]
    Unreachable {
        backend: &'static str,
        address: String,
        why: String,
    },
    #[error("{backend} at {address} answered HTTP {status}: {body}")]
    Http {
        backend: &'static str,
        address: String,
        status: u16,
        body: String,
    },
    /// The backend refused the query and said why (InfluxDB's `error`, Flux's
    /// `message`).
    #[error("{backend} rejected the query: {why}")]
    Query { backend: &'static str, why: String },
    #[error("cannot decode the answer of {backend} at {address}: {why}")]
    Decode {
        backend: &'static str,
        address: String,
        why: String,
    },
}

impl BackendError {
    /// See [`PromError::is_unavailable`]: no answer, so no evidence either way.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BackendError::Prometheus(p) => p.is_unavailable(),
            BackendError::Timeout { .. } | BackendError::Unreachable { .. } => true,
            BackendError::Http { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }
}

/// A server that answers a check's query with one number, or none.
pub trait MetricBackend: Send + Sync {
    /// `Ok(None)` is no data: the step is inconclusive, not failed.
    fn query<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<f64>, BackendError>>;

    /// The Prometheus client behind this backend, for the series lookups that
    /// explain a "no data"; other backends have no such API.
    fn prometheus(&self) -> Option<&PromClient> {
        None
    }
}

impl MetricBackend for PromClient {
    fn query<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<f64>, BackendError>> {
        Box::pin(async move { Ok(PromClient::query(self, query).await?) })
    }

    fn prometheus(&self) -> Option<&PromClient> {
        Some(self)
    }
}

/// `provider.type` values and the backend each names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Prometheus,
    Graphite,
    InfluxDb,
    Saas(saas::Saas),
}

impl BackendKind {
    /// `None` for a type Flagger knows and Serin does not serve yet.
    pub fn of(provider_type: &str) -> Option<BackendKind> {
        match provider_type {
            "prometheus" | "thanos" | "mimir" | "victoriametrics" | "" => {
                Some(BackendKind::Prometheus)
            }
            "graphite" => Some(BackendKind::Graphite),
            "influxdb" => Some(BackendKind::InfluxDb),
            "datadog" => Some(BackendKind::Saas(saas::Saas::Datadog)),
            "newrelic" => Some(BackendKind::Saas(saas::Saas::NewRelic)),
            "dynatrace" => Some(BackendKind::Saas(saas::Saas::Dynatrace)),
            _ => None,
        }
    }
}

/// A Secret value as trimmed text; empty counts as absent.
pub(crate) fn secret_text(data: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    data.get(key)
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The address as a base URL, or the error a user can act on.
pub(crate) fn base_url(backend: &'static str, address: &str) -> Result<url::Url, BackendError> {
    let trimmed = address.trim();
    match url::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        _ => Err(BackendError::Config {
            backend,
            why: format!("address {trimmed:?} is not a valid http(s) URL"),
        }),
    }
}

/// `base` with `segment` appended to its path (a Graphite behind `/graphite/` keeps
/// its prefix).
pub(crate) fn join_path(base: &url::Url, segment: &str) -> url::Url {
    let mut u = base.clone();
    let path = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        segment.trim_start_matches('/')
    );
    u.set_path(&path);
    u.set_query(None);
    u
}

/// Sends `req` within `timeout`; maps transport failures and HTTP errors, keeping a
/// snippet of the body the server sent with an error status.
pub(crate) async fn send(
    backend: &'static str,
    address: &str,
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<String, BackendError> {
    let resp = match tokio::time::timeout(timeout, req.timeout(timeout).send()).await {
        Err(_) => {
            return Err(BackendError::Timeout {
                backend,
                address: address.into(),
                timeout,
            });
        }
        Ok(Err(e)) if e.is_timeout() => {
            return Err(BackendError::Timeout {
                backend,
                address: address.into(),
                timeout,
            });
        }
        Ok(Err(e)) => {
            return Err(BackendError::Unreachable {
                backend,
                address: address.into(),
                why: e.without_url().to_string(),
            });
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let body = resp.text().await.map_err(|e| BackendError::Decode {
        backend,
        address: address.into(),
        why: e.without_url().to_string(),
    })?;
    if status.is_client_error() || status.is_server_error() {
        return Err(BackendError::Http {
            backend,
            address: address.into(),
            status: status.as_u16(),
            body: snippet(&body),
        });
    }
    Ok(body)
}

pub(crate) fn snippet(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_SNIPPET) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body.to_string(),
    }
}

/// The client for `insecure_skip_verify`, else the operator's shared one.
pub(crate) fn http_client(
    backend: &'static str,
    shared: &reqwest::Client,
    insecure_skip_verify: bool,
) -> Result<reqwest::Client, BackendError> {
    if !insecure_skip_verify {
        return Ok(shared.clone());
    }
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| BackendError::Config {
            backend,
            why: format!("building the HTTP client: {e}"),
        })
}

#[cfg(test)]
mod tests;
