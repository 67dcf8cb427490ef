//! A Prometheus-compatible query client (Prometheus, Thanos, Mimir, VictoriaMetrics)
//! on top of prometheus-http-query.
//!
//! One configured `reqwest::Client` carries TLS (skip-verify) and, for the series and
//! label lookups that explain "no data", the template's headers and credentials;
//! instant queries send those headers per request so the operator's shared client
//! (and its connection pool) serves every check. Prometheus' own error
//! (`errorType`, `error`) reaches the check message unchanged: that is what tells a
//! user their PromQL does not parse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as ApiError, Selector};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

/// Longest part of an unexpected response body quoted in an error.
const BODY_SNIPPET: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("metrics server address {0:?} is not a valid http(s) URL")]
    BadAddress(String),
    #[error("header {0:?} is not a valid HTTP header name or value")]
    BadHeader(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("Prometheus at {address} timed out after {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("Prometheus at {address} is unreachable: {why}")]
    Unreachable { address: String, why: String },
    #[error("Prometheus at {address} answered HTTP {status}: {body}")]
    Http {
        address: String,
        status: u16,
        body: String,
    },
    /// Prometheus refused the query, e.g. `bad_data` for a query that does not parse.
    #[error("query rejected ({error_type}): {error}")]
    Query { error_type: String, error: String },
    #[error("cannot decode the response of {address}: {why}")]
    Decode { address: String, why: String },
    #[error("query returned a {0}; use a query returning one instant value")]
    UnsupportedResult(String),
}

impl PromError {
    /// True when the server did not answer the query at all: down, unreachable,
    /// too slow, or a proxy in front of it saying it is unavailable. Such an error
    /// says nothing about the canary.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PromError::Timeout { .. } | PromError::Unreachable { .. } => true,
            PromError::Http { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// True when Prometheus itself says the query is invalid (does not parse).
    pub fn is_bad_query(&self) -> bool {
        matches!(self, PromError::Query { error_type, .. } if error_type == "bad_data")
    }
}

/// Credentials read from a template's `secretRef`. `Debug` never prints them.
#[derive(Clone, PartialEq)]
pub enum PromAuth {
    Bearer(String),
    Basic { username: String, password: String },
}

impl fmt::Debug for PromAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            PromAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl PromAuth {
    /// Reads Flagger's Secret keys: `token` (bearer) wins over `username`+`password`.
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Option<PromAuth> {
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(token) = text("token") {
            return Some(PromAuth::Bearer(token));
        }
        match (text("username"), text("password")) {
            (Some(username), Some(password)) => Some(PromAuth::Basic { username, password }),
            _ => None,
        }
    }

    fn header(&self) -> Result<HeaderValue, PromError> {
        use base64::Engine;
        let raw = match self {
            PromAuth::Bearer(t) => format!("Bearer {t}"),
            PromAuth::Basic { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            ),
        };
        let mut v = HeaderValue::from_str(&raw)
            .map_err(|_| PromError::BadHeader("Authorization".into()))?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// What Prometheus holds for one metric name: the evidence behind a "no data".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeriesSummary {
    /// Every series of the metric name (within the lookback).
    pub series: Vec<BTreeMap<String, String>>,
    /// The label names those series carry (`__name__` left out).
    pub label_names: BTreeSet<String>,
}

#[derive(Clone)]
pub struct PromClient {
    api: Client,
    address: String,
    insecure_skip_verify: bool,
    headers: HeaderMap,
    timeout: Duration,
}

impl fmt::Debug for PromClient {
    // Headers may hold credentials: only the address is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromClient")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PromClient {
    /// `http` is reused unless `insecure_skip_verify` needs a client of its own.
    pub fn new(
        http: &reqwest::Client,
        address: &str,
        headers: Option<&BTreeMap<String, Vec<String>>>,
        auth: Option<PromAuth>,
        insecure_skip_verify: bool,
        timeout: Duration,
    ) -> Result<PromClient, PromError> {
        let address = address.trim().trim_end_matches('/').to_string();
        match url::Url::parse(&address) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(PromError::BadAddress(address)),
        }
        let mut map = HeaderMap::new();
        for (name, values) in headers.into_iter().flatten() {
            let hn = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PromError::BadHeader(name.clone()))?;
            for v in values {
                let hv =
                    HeaderValue::from_str(v).map_err(|_| PromError::BadHeader(name.clone()))?;
                map.append(hn.clone(), hv);
            }
        }
        if let Some(auth) = &auth {
            map.insert(AUTHORIZATION, auth.header()?);
        }
        let http = if insecure_skip_verify {
            reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .map_err(|e| PromError::Client(e.to_string()))?
        } else {
            http.clone()
        };
        let api =
            Client::from(http, &address).map_err(|_| PromError::BadAddress(address.clone()))?;
        Ok(PromClient {
            api,
            address,
            insecure_skip_verify,
            headers: map,
            timeout,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs an instant query. `Ok(None)` means no data: an empty result or NaN (what
    /// a ratio or `histogram_quantile` gives over zero requests).
    pub async fn query(&self, query: &str) -> Result<Option<f64>, PromError> {
        let mut req = self
            .api
            .query(query)
            // Prometheus stops evaluating when the check gives up waiting.
            .timeout(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX));
        for (name, value) in &self.headers {
            req = req.header(name.clone(), value.clone());
        }
        let answer = self.bounded(req.get()).await?;
        let value = match answer.data() {
            Data::Vector(v) => match v.first() {
                Some(s) => s.sample().value(),
                None => return Ok(None),
            },
            Data::Scalar(s) => s.value(),
            Data::Matrix(_) => return Err(PromError::UnsupportedResult("matrix result".into())),
        };
        Ok(if value.is_nan() { None } else { Some(value) })
    }

    /// Every series of `metric` seen in the last `lookback`, and their label names.
    pub async fn series_of(
        &self,
        metric: &str,
        lookback: Duration,
    ) -> Result<SeriesSummary, PromError> {
        let api = self.with_default_headers()?;
        let end = chrono::Utc::now().timestamp();
        let start = end - i64::try_from(lookback.as_secs()).unwrap_or(0);
        let selector = Selector::new().metric(metric);
        let series = api
            .series([&selector])
            .map_err(|e| self.api_error(e))?
            .start(start)
            .end(end);
        let names = api
            .label_names()
            .selectors([&selector])
            .start(start)
            .end(end);
        let (series, names) = futures::join!(self.bounded(series.get()), self.bounded(names.get()));
        let series = series?
            .into_iter()
            .map(|s: HashMap<String, String>| {
                s.into_iter()
                    .filter(|(k, _)| k != "__name__")
                    .collect::<BTreeMap<_, _>>()
            })
            .collect();
        Ok(SeriesSummary {
            series,
            label_names: names?.into_iter().filter(|n| n != "__name__").collect(),
        })
    }

    /// The crate's series and label lookups take no per-request headers, so a
    /// template's headers and credentials go in as a client's defaults. Built only
    /// when a "no data" is being explained, off the path of every check.
    fn with_default_headers(&self) -> Result<Client, PromError> {
        if self.headers.is_empty() {
            return Ok(self.api.clone());
        }
        let http = reqwest::Client::builder()
            .default_headers(self.headers.clone())
            .tls_danger_accept_invalid_certs(self.insecure_skip_verify)
            .build()
            .map_err(|e| PromError::Client(e.to_string()))?;
        Client::from(http, &self.address).map_err(|_| PromError::BadAddress(self.address.clone()))
    }

    /// Runs `call` within the check's timeout and maps the crate's errors.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, PromError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|e| self.api_error(e)),
            Err(_) => Err(PromError::Timeout {
                address: self.address.clone(),
                timeout: self.timeout,
            }),
        }
    }

    fn api_error(&self, e: ApiError) -> PromError {
        match e {
            ApiError::Prometheus(p) => PromError::Query {
                error_type: p.error_type().to_string(),
                error: p.message().to_string(),
            },
            ApiError::Client(c) => match c.inner() {
                Some(r) if r.is_timeout() => PromError::Timeout {
                    address: self.address.clone(),
                    timeout: self.timeout,
                },
                // A non-JSON answer: a proxy's or load balancer's error page.
                Some(r) if r.status().is_some() => PromError::Http {
                    address: self.address.clone(),
                    status: r.status().map(|s| s.as_u16()).unwrap_or_default(),
                    body: c.to_string(),
                },
                Some(r) if r.is_connect() || r.is_request() => PromError::Unreachable {
                    address: self.address.clone(),
                    why: causes(&c.to_string(), r),
                },
                Some(r) => PromError::Decode {
                    address: self.address.clone(),
                    why: causes(&c.to_string(), r),
                },
                None => PromError::Decode {
                    address: self.address.clone(),
                    why: c.to_string(),
                },
            },
            other => PromError::Decode {
                address: self.address.clone(),
                why: other.to_string(),
            },
        }
    }
}

/// `what` and the causes of `e`, without `e`'s own text: reqwest's names the URL,
/// and with it the whole query.
fn causes(what: &str, e: &reqwest::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(source) => format!("{what}: {}", error_chain(source)),
        None => what.to_string(),
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.chars().count() <= BODY_SNIPPET {
        return body.to_string();
    }
    let cut: String = body.chars().take(BODY_SNIPPET).collect();
    format!("{cut}...")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Query;
    use axum::http::header::CONTENT_TYPE;
    use axum::http::{HeaderMap as AxHeaders, StatusCode};
    use axum::routing::get;
    use std::collections::HashMap;

    pub(crate) fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().build().expect("test client")
    }

    pub(crate) async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    /// A TLS listener with a self-signed certificate (test-only key in testdata/),
    /// to check that skip-verify options really change what the client accepts.
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((stream, addr)) = self.tcp.accept().await else {
                    continue;
                };
                // A client that rejects the certificate fails the handshake: keep
                // serving the next connection.
                if let Ok(tls) = self.acceptor.accept(stream).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    pub(crate) async fn serve_tls(app: Router) -> String {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = CertificateDer::pem_slice_iter(include_bytes!("testdata/test-only-cert.pem"))
            .collect::<Result<Vec<_>, _>>()
            .expect("test cert");
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/test-only-key.pem"))
            .expect("test key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("https://{addr}")
    }

    /// A fake Prometheus: the answer depends on the query text, so each case below
    /// exercises one kind of response.
    pub(crate) fn fake_prometheus() -> Router {
        Router::new().route(
            "/api/v1/query",
            get(|Query(q): Query<HashMap<String, String>>, headers: AxHeaders| async move {
                let query = q.get("query").cloned().unwrap_or_default();
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let json = |status: StatusCode, body: String| {
                    (status, [(CONTENT_TYPE, "application/json")], body)
                };
                let text = |status: StatusCode, body: &str| {
                    (status, [(CONTENT_TYPE, "text/plain")], body.to_string())
                };
                let ok = |v: &str| {
                    json(
                        StatusCode::OK,
                        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.1,"{v}"]}}]}}}}"#),
                    )
                };
                match query.as_str() {
                    "empty" => json(
                        StatusCode::OK,
                        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_string(),
                    ),
                    "nan" => ok("NaN"),
                    "scalar" => json(
                        StatusCode::OK,
                        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42.5"]}}"#.to_string(),
                    ),
                    "matrix" => json(
                        StatusCode::OK,
                        r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.to_string(),
                    ),
                    "boom" => text(StatusCode::INTERNAL_SERVER_ERROR, "internal failure"),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        ok("1")
                    }
                    "whoami" => {
                        if auth == "Bearer s3cret" {
                            ok("1")
                        } else if auth.starts_with("Basic ") {
                            ok("2")
                        } else {
                            text(StatusCode::UNAUTHORIZED, "unauthorized")
                        }
                    }
                    "tenant" => {
                        let t = headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()).unwrap_or("");
                        if t == "team-a" { ok("7") } else { text(StatusCode::UNAUTHORIZED, "no tenant") }
                    }
                    q if q.starts_with("value:") => ok(&q["value:".len()..]),
                    q => json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({
                            "status": "error",
                            "errorType": "bad_data",
                            "error": format!("invalid parameter \"query\": 1:1: parse error: unexpected {q:?}"),
                        })
                        .to_string(),
                    ),
                }
            }),
        )
    }

    fn prom(addr: &str, auth: Option<PromAuth>, timeout: Duration) -> PromClient {
        PromClient::new(&client(), addr, None, auth, false, timeout).expect("client")
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let addr = serve(fake_prometheus()).await;
        let p = prom(&format!("{addr}/"), None, Duration::from_secs(2));
        assert_eq!(p.query("value:99.5").await.unwrap(), Some(99.5));
        assert_eq!(p.query("scalar").await.unwrap(), Some(42.5));
        assert_eq!(p.query("empty").await.unwrap(), None);
        assert_eq!(p.query("nan").await.unwrap(), None);
        assert!(matches!(
            p.query("matrix").await,
            Err(PromError::UnsupportedResult(_))
        ));

        let err = p.query("sum(").await.unwrap_err();
        assert!(err.is_bad_query(), "{err:?}");
        assert!(err.to_string().contains("parse error"), "{err}");

        let err = p.query("boom").await.unwrap_err();
        assert!(
            matches!(err, PromError::Http { status: 500, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("HTTP 500"), "{err}");
    }

    #[tokio::test]
    async fn timeout_and_unreachable_are_errors() {
        let addr = serve(fake_prometheus()).await;
        let p = prom(&addr, None, Duration::from_millis(200));
        let err = p.query("slow").await.unwrap_err();
        assert!(matches!(err, PromError::Timeout { .. }), "{err:?}");

        // A port nothing listens on: bind, learn the port, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let err = prom(&dead, None, Duration::from_secs(2))
            .query("value:1")
            .await
            .unwrap_err();
        assert!(matches!(err, PromError::Unreachable { .. }), "{err:?}");

        assert!(matches!(
            PromClient::new(
                &client(),
                "prometheus:9090",
                None,
                None,
                false,
                Duration::from_secs(1)
            ),
            Err(PromError::BadAddress(_))
        ));
    }

    #[tokio::test]
    async fn auth_and_headers_are_sent() {
        let addr = serve(fake_prometheus()).await;
        let t = Duration::from_secs(2);
        assert!(prom(&addr, None, t).query("whoami").await.is_err());
        let bearer = PromAuth::from_secret(&BTreeMap::from([(
            "token".to_string(),
            b"s3cret\n".to_vec(),
        )]));
        assert_eq!(
            prom(&addr, bearer, t).query("whoami").await.unwrap(),
            Some(1.0)
        );
        let basic = PromAuth::from_secret(&BTreeMap::from([
            ("username".to_string(), b"u".to_vec()),
            ("password".to_string(), b"p".to_vec()),
        ]));
        assert!(
            format!("{basic:?}").contains("<redacted>") && !format!("{basic:?}").contains("\"p\"")
        );
        assert_eq!(
            prom(&addr, basic, t).query("whoami").await.unwrap(),
            Some(2.0)
        );

        let headers = BTreeMap::from([("X-Scope-OrgID".to_string(), vec!["team-a".to_string()])]);
        let p = PromClient::new(&client(), &addr, Some(&headers), None, false, t).unwrap();
        assert_eq!(p.query("tenant").await.unwrap(), Some(7.0));
    }

    #[tokio::test]
    async fn insecure_skip_verify_accepts_a_self_signed_server() {
        let addr = serve_tls(fake_prometheus()).await;
        let t = Duration::from_secs(2);
        let strict = PromClient::new(&client(), &addr, None, None, false, t).unwrap();
        let err = strict.query("value:1").await.unwrap_err();
        assert!(matches!(err, PromError::Unreachable { .. }), "{err:?}");
        let lax = PromClient::new(&client(), &addr, None, None, true, t).unwrap();
        assert_eq!(lax.query("value:1").await.unwrap(), Some(1.0));
    }
}
