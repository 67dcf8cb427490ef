//! Hosted metric APIs, each called as Flagger's provider of the same type calls it
//! (same endpoint, Secret keys, headers and time window), so a MetricTemplate moves
//! over unchanged:
//!
//! | type | request | Secret keys | value |
//! |---|---|---|---|
//! | `datadog` | `GET <address or https://api.datadoghq.com>/api/v1/query?query=&from=&to=`, `from` = now - 10 x interval | `datadog_api_key`, `datadog_application_key` (headers `DD-API-KEY`, `DD-APPLICATION-KEY`) | first point of the first series |
//! | `newrelic` | `GET <address or https://insights-api.newrelic.com>/v1/accounts/<id>/query?nrql=<query> SINCE <interval> seconds ago` | `newrelic_account_id`, `newrelic_query_key` (header `X-Query-Key`) | `results[0].result` |
//! | `dynatrace` | `GET <address>/api/v2/metrics/query?metricSelector=&resolution=Inf&from=&to=` (ms), `from` = now - 10 x interval | `dynatrace_token` (`Authorization: Api-Token ..`) | first value of the last data entry of the first result |
//!
//! A null where the value should be is no data (inconclusive); Flagger reads some of
//! them as 0.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::{BackendError, MetricBackend, base_url, http_client, join_path, secret_text, send};
use crate::router::BoxFuture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saas {
    Datadog,
    NewRelic,
    Dynatrace,
}

impl Saas {
    pub fn name(self) -> &'static str {
        match self {
            Saas::Datadog => "Datadog",
            Saas::NewRelic => "New Relic",
            Saas::Dynatrace => "Dynatrace",
        }
    }
}

#[derive(Clone)]
pub struct SaasClient {
    kind: Saas,
    http: reqwest::Client,
    endpoint: url::Url,
    headers: HeaderMap,
    /// The check's `interval`: the window each API is asked about.
    interval: Duration,
    timeout: Duration,
}

impl fmt::Debug for SaasClient {
    // Headers carry the API keys: only the endpoint is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaasClient")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

fn sensitive(
    backend: &'static str,
    name: &'static str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), BackendError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| BackendError::Config {
        backend,
        why: format!("the secret's value for header {name} is not a valid header value"),
    })?;
    v.set_sensitive(true);
    Ok((HeaderName::from_static(name), v))
}

impl SaasClient {
    pub fn new(
        kind: Saas,
        http: &reqwest::Client,
        address: Option<&str>,
        secret: Option<&BTreeMap<String, Vec<u8>>>,
        interval: Duration,
        insecure_skip_verify: bool,
        timeout: Duration,
    ) -> Result<SaasClient, BackendError> {
        let backend = kind.name();
        let empty = BTreeMap::new();
        let data = secret.unwrap_or(&empty);
        let key = |k: &str| {
            secret_text(data, k).ok_or_else(|| BackendError::Config {
                backend,
                why: format!("the provider's secret has no {k:?}"),
            })
        };
        let mut headers = HeaderMap::new();
        let endpoint = match kind {
            Saas::Datadog => {
                for (secret_key, header) in [
                    ("datadog_api_key", "dd-api-key"),
                    ("datadog_application_key", "dd-application-key"),
                ] {
                    let (n, v) = sensitive(backend, header, &key(secret_key)?)?;
                    headers.insert(n, v);
                }
                let base = base_url(backend, address.unwrap_or("https://api.datadoghq.com"))?;
                join_path(&base, "api/v1/query")
            }
            Saas::NewRelic => {
                let account = key("newrelic_account_id")?;
                let (n, v) = sensitive(backend, "x-query-key", &key("newrelic_query_key")?)?;
                headers.insert(n, v);
                let base = base_url(
                    backend,
                    address.unwrap_or("https://insights-api.newrelic.com"),
                )?;
                join_path(&base, &format!("v1/accounts/{account}/query"))
            }
            Saas::Dynatrace => {
                let address = address.ok_or_else(|| BackendError::Config {
                    backend,
                    why: "provider.address (the environment URL) is required".into(),
                })?;
                let token = key("dynatrace_token")?;
                let (n, v) = sensitive(backend, "authorization", &format!("Api-Token {token}"))?;
                headers.insert(n, v);
                join_path(&base_url(backend, address)?, "api/v2/metrics/query")
            }
        };
        Ok(SaasClient {
            kind,
            http: http_client(backend, http, insecure_skip_verify)?,
            endpoint,
            headers,
            interval,
            timeout,
        })
    }

    /// The request URL for `query` at `now` (Unix seconds).
    pub fn url(&self, query: &str, now: i64) -> url::Url {
        let mut u = self.endpoint.clone();
        let secs = self.interval.as_secs() as i64;
        {
            let mut q = u.query_pairs_mut();
            match self.kind {
                Saas::Datadog => {
                    q.append_pair("query", query);
                    q.append_pair("from", &(now - 10 * secs).to_string());
                    q.append_pair("to", &now.to_string());
                }
                Saas::NewRelic => {
                    q.append_pair("nrql", &format!("{query} SINCE {secs} seconds ago"));
                }
                Saas::Dynatrace => {
                    let (now_ms, delta_ms) = (now * 1000, 10 * self.interval.as_millis() as i64);
                    q.append_pair("metricSelector", query);
                    q.append_pair("resolution", "Inf");
                    q.append_pair("from", &(now_ms - delta_ms).to_string());
                    q.append_pair("to", &now_ms.to_string());
                }
            }
        }
        u
    }

    async fn run(&self, query: &str) -> Result<Option<f64>, BackendError> {
        let backend = self.kind.name();
        let url = self.url(query.trim(), chrono::Utc::now().timestamp());
        let req = self.http.get(url).headers(self.headers.clone());
        let body = send(backend, self.endpoint.as_str(), req, self.timeout).await?;
        value_of(self.kind, &body).map_err(|why| BackendError::Decode {
            backend,
            address: self.endpoint.to_string(),
            why,
        })
    }
}

impl MetricBackend for SaasClient {
    fn query<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<f64>, BackendError>> {
        Box::pin(self.run(query))
    }
}

fn number(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64().filter(|x| !x.is_nan())),
        other => Err(format!("value {other} is not a number")),
    }
}

/// The value in an answer of `kind`, by the rule in the module's table.
pub fn value_of(kind: Saas, body: &str) -> Result<Option<f64>, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("{e}: {}", super::snippet(body)))?;
    match kind {
        Saas::Datadog => match v["series"].as_array().and_then(|s| s.first()) {
            None => Ok(None),
            Some(series) => match series["pointlist"].as_array().and_then(|p| p.first()) {
                None => Ok(None),
                Some(point) => number(point.get(1).unwrap_or(&Value::Null)),
            },
        },
        Saas::NewRelic => match v["results"].as_array() {
            Some(r) if r.len() == 1 => number(&r[0]["result"]),
            _ => Ok(None),
        },
        Saas::Dynatrace => {
            let data = v["result"]
                .as_array()
                .and_then(|r| r.first())
                .and_then(|r| r["data"].as_array());
            match data.and_then(|d| d.last()) {
                None => Ok(None),
                Some(d) => number(
                    d["values"]
                        .as_array()
                        .and_then(|vs| vs.first())
                        .unwrap_or(&Value::Null),
                ),
            }
        }
    }
}
