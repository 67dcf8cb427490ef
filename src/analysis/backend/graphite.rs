//! Graphite's render API, as Flagger's `graphite` provider calls it: the template's
//! query is the render request's query string (`target=...&from=-5min`), sent to
//! `<address>/render` with `format=json`; the value is the last non-null datapoint
//! of the answer. A `secretRef` must hold `username` and `password` (basic auth).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::{BackendError, MetricBackend, base_url, http_client, join_path, secret_text, send};
use crate::router::BoxFuture;

const NAME: &str = "Graphite";

#[derive(Clone)]
pub struct GraphiteClient {
    http: reqwest::Client,
    base: url::Url,
    auth: Option<(String, String)>,
    timeout: Duration,
}

impl fmt::Debug for GraphiteClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphiteClient")
            .field("address", &self.base.as_str())
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "<redacted>")))
            .finish_non_exhaustive()
    }
}

impl GraphiteClient {
    /// `secret` is the template's `secretRef` data, when it has one.
    pub fn new(
        http: &reqwest::Client,
        address: &str,
        secret: Option<&BTreeMap<String, Vec<u8>>>,
        insecure_skip_verify: bool,
        timeout: Duration,
    ) -> Result<GraphiteClient, BackendError> {
        let base = base_url(NAME, address)?;
        let auth = match secret {
            None => None,
            Some(data) => {
                let missing = |key: &str| BackendError::Config {
                    backend: NAME,
                    why: format!("the provider's secret has no {key:?}"),
                };
                Some((
                    secret_text(data, "username").ok_or_else(|| missing("username"))?,
                    secret_text(data, "password").ok_or_else(|| missing("password"))?,
                ))
            }
        };
        Ok(GraphiteClient {
            http: http_client(NAME, http, insecure_skip_verify)?,
            base,
            auth,
            timeout,
        })
    }

    /// The render URL for a template's query: its parameters, whitespace runs
    /// collapsed as Flagger does, with `format=json`.
    pub fn render_url(&self, query: &str) -> url::Url {
        let collapsed = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut u = join_path(&self.base, "render");
        {
            let mut pairs = u.query_pairs_mut();
            // A template written over several lines leaves a space before each `&`.
            for (k, v) in url::form_urlencoded::parse(collapsed.as_bytes()) {
                if k.trim() != "format" {
                    pairs.append_pair(k.trim(), v.trim());
                }
            }
            pairs.append_pair("format", "json");
        }
        u
    }

    async fn run(&self, query: &str) -> Result<Option<f64>, BackendError> {
        let mut req = self.http.get(self.render_url(query));
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let body = send(NAME, self.base.as_str(), req, self.timeout).await?;
        last_value(&body).map_err(|why| BackendError::Decode {
            backend: NAME,
            address: self.base.to_string(),
            why,
        })
    }
}

impl MetricBackend for GraphiteClient {
    fn query<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<f64>, BackendError>> {
        Box::pin(self.run(query))
    }
}

/// The last non-null datapoint over every target of a render answer
/// (`[{"target": .., "datapoints": [[value, timestamp], ..]}, ..]`); values may be
/// numbers or numeric strings.
pub fn last_value(body: &str) -> Result<Option<f64>, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("{e}: {}", super::snippet(body)))?;
    let targets = v
        .as_array()
        .ok_or_else(|| format!("expected a list of targets: {}", super::snippet(body)))?;
    let mut last = None;
    for t in targets {
        let points = t["datapoints"].as_array().ok_or_else(|| {
            format!(
                "target without datapoints: {}",
                super::snippet(&t.to_string())
            )
        })?;
        for p in points {
            let value = match p.get(0) {
                None | Some(Value::Null) => continue,
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => Some(
                    s.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("datapoint value {s:?} is not a number"))?,
                ),
                Some(other) => return Err(format!("datapoint value {other} is not a number")),
            };
            if let Some(x) = value.filter(|x| !x.is_nan()) {
                last = Some(x);
            }
        }
    }
    Ok(last)
}
