//! InfluxDB. A Flux query (one with `|>`, what Flagger's `influxdb` provider sends)
//! goes to InfluxDB 2's `POST /api/v2/query?org=<org>` with `Authorization: Token
//! <token>` and is answered in annotated CSV; the value is the first record's
//! `_value`. Any other query is InfluxQL for InfluxDB 1.x, `GET /query?q=..` (a
//! Serin extension: Flagger speaks only Flux), answered in JSON; the value is the
//! first row's first column after `time`.
//!
//! Secret keys: `token` and `org` (Flux, both required as in Flagger); for InfluxQL
//! `token`, or `username` and `password`, and optionally `database`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use super::{BackendError, MetricBackend, base_url, http_client, join_path, secret_text, send};
use crate::router::BoxFuture;

const NAME: &str = "InfluxDB";

#[derive(Clone, PartialEq)]
enum Auth {
    Token(String),
    Basic(String, String),
}

#[derive(Clone)]
pub struct InfluxClient {
    http: reqwest::Client,
    base: url::Url,
    auth: Option<Auth>,
    org: Option<String>,
    database: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for InfluxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxClient")
            .field("address", &self.base.as_str())
            .field("org", &self.org)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Whether a query is Flux (piped functions) rather than InfluxQL.
pub fn is_flux(query: &str) -> bool {
    query.contains("|>")
}

impl InfluxClient {
    /// `query` decides which secret keys are required (Flux: `token` and `org`).
    pub fn new(
        http: &reqwest::Client,
        address: &str,
        secret: Option<&BTreeMap<String, Vec<u8>>>,
        query: &str,
        insecure_skip_verify: bool,
        timeout: Duration,
    ) -> Result<InfluxClient, BackendError> {
        let base = base_url(NAME, address)?;
        let missing = |key: &str| BackendError::Config {
            backend: NAME,
            why: format!("the provider's secret has no {key:?}"),
        };
        let (mut auth, mut org, mut database) = (None, None, None);
        if let Some(data) = secret {
            let text = |k: &str| secret_text(data, k);
            if is_flux(query) {
                auth = Some(Auth::Token(text("token").ok_or_else(|| missing("token"))?));
                org = Some(text("org").ok_or_else(|| missing("org"))?);
            } else {
                auth = match (text("token"), text("username"), text("password")) {
                    (Some(t), _, _) => Some(Auth::Token(t)),
                    (None, Some(u), Some(p)) => Some(Auth::Basic(u, p)),
                    (None, Some(_), None) => return Err(missing("password")),
                    _ => None,
                };
                database = text("database");
            }
        }
        Ok(InfluxClient {
            http: http_client(NAME, http, insecure_skip_verify)?,
            base,
            auth,
            org,
            database,
            timeout,
        })
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            None => req,
            Some(Auth::Token(t)) => {
                let mut v = match reqwest::header::HeaderValue::from_str(&format!("Token {t}")) {
                    Ok(v) => v,
                    // Not a valid header value: send none and let the server say 401.
                    Err(_) => return req,
                };
                v.set_sensitive(true);
                req.header(reqwest::header::AUTHORIZATION, v)
            }
            Some(Auth::Basic(u, p)) => req.basic_auth(u, Some(p)),
        }
    }

    /// The Flux request as InfluxDB 2's query API documents it.
    pub fn flux_request(&self, query: &str) -> reqwest::RequestBuilder {
        let mut u = join_path(&self.base, "api/v2/query");
        if let Some(org) = &self.org {
            u.query_pairs_mut().append_pair("org", org);
        }
        let req = self
            .http
            .post(u)
            .header(reqwest::header::ACCEPT, "application/csv")
            .json(&json!({
                "query": query,
                "type": "flux",
                "dialect": {
                    "header": true,
                    "delimiter": ",",
                    "annotations": ["datatype", "group", "default"],
                    "commentPrefix": "#",
                    "dateTimeFormat": "RFC3339"
                }
            }));
        self.authorize(req)
    }

    pub fn influxql_request(&self, query: &str) -> reqwest::RequestBuilder {
        let mut u = join_path(&self.base, "query");
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("q", query.trim());
            q.append_pair("epoch", "s");
            if let Some(db) = &self.database {
                q.append_pair("db", db);
            }
        }
        self.authorize(self.http.get(u))
    }

    async fn run(&self, query: &str) -> Result<Option<f64>, BackendError> {
        let address = self.base.as_str();
        let decode = |why: String| BackendError::Decode {
            backend: NAME,
            address: address.to_string(),
            why,
        };
        let rejected = |why: String| BackendError::Query { backend: NAME, why };
        if is_flux(query) {
            let body = match send(NAME, address, self.flux_request(query), self.timeout).await {
                // InfluxDB 2 explains a refused query in `{"code", "message"}`.
                Err(BackendError::Http { body, status, .. })
                    if serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(String::from))
                        .is_some() =>
                {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    return Err(rejected(format!(
                        "HTTP {status}: {}",
                        v["message"].as_str().unwrap_or_default()
                    )));
                }
                other => other?,
            };
            match flux_value(&body) {
                Ok(v) => Ok(v),
                Err(FluxAnswer::Error(why)) => Err(rejected(why)),
                Err(FluxAnswer::Bad(why)) => Err(decode(why)),
            }
        } else {
            let body = send(NAME, address, self.influxql_request(query), self.timeout).await?;
            match influxql_value(&body) {
                Ok(v) => Ok(v),
                Err(FluxAnswer::Error(why)) => Err(rejected(why)),
                Err(FluxAnswer::Bad(why)) => Err(decode(why)),
            }
        }
    }
}

impl MetricBackend for InfluxClient {
    fn query<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Option<f64>, BackendError>> {
        Box::pin(self.run(query))
    }
}

/// Why an answer gave no value: the server's error, or a body that is not what
/// its API documents.
#[derive(Debug, PartialEq)]
pub enum FluxAnswer {
    Error(String),
    Bad(String),
}

/// Splits one CSV line, honouring double quotes (`""` is a quote inside them).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The first record's `_value` in an annotated-CSV answer. An empty answer or an
/// empty `_value` is no data; an `error` table is the server's error.
pub fn flux_value(body: &str) -> Result<Option<f64>, FluxAnswer> {
    let mut header: Option<Vec<String>> = None;
    for line in body.lines().map(|l| l.trim_end_matches('\r')) {
        if line.trim().is_empty() {
            // A blank line ends a table; the next one has its own header.
            header = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let fields = csv_fields(line);
        let Some(cols) = &header else {
            header = Some(fields);
            continue;
        };
        let at = |name: &str| cols.iter().position(|c| c == name);
        if let (Some(e), None) = (at("error"), at("_value")) {
            let why = fields.get(e).cloned().unwrap_or_default();
            return Err(FluxAnswer::Error(why));
        }
        let Some(i) = at("_value") else {
            return Err(FluxAnswer::Bad(format!(
                "no _value column in {}",
                super::snippet(&cols.join(","))
            )));
        };
        let raw = fields.get(i).map(|s| s.trim()).unwrap_or_default();
        if raw.is_empty() {
            return Ok(None);
        }
        return raw
            .parse::<f64>()
            .map(|v| (!v.is_nan()).then_some(v))
            .map_err(|_| FluxAnswer::Bad(format!("_value {raw:?} is not a number")));
    }
    Ok(None)
}

/// The first row's first value column of an InfluxQL answer
/// (`{"results": [{"series": [{"columns": ["time", ..], "values": [[..]]}]}]}`).
pub fn influxql_value(body: &str) -> Result<Option<f64>, FluxAnswer> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| FluxAnswer::Bad(format!("{e}: {}", super::snippet(body))))?;
    if let Some(e) = v["error"].as_str() {
        return Err(FluxAnswer::Error(e.to_string()));
    }
    let result = &v["results"][0];
    if let Some(e) = result["error"].as_str() {
        return Err(FluxAnswer::Error(e.to_string()));
    }
    let Some(series) = result["series"].as_array().and_then(|s| s.first()) else {
        return Ok(None);
    };
    let cols = series["columns"].as_array().cloned().unwrap_or_default();
    let i = cols
        .iter()
        .position(|c| c != "time")
        .ok_or_else(|| FluxAnswer::Bad("no value column".into()))?;
    match series["values"][0].get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(FluxAnswer::Bad(format!("value {other} is not a number"))),
    }
}
