//! Load generator: sends real HTTP requests at a fixed rate, bounded in count and
//! time, and counts responses per version (`x-version` header or JSON `version`)
//! and per status. Only loopback and the local cluster's pod network
//! (10.244.0.0/16, the /24s cluster.sh hands to pods) are allowed as targets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub url: String,
    /// Requests per second.
    pub rate: f64,
    /// How long to send for; the request count is `rate * duration` (capped by `max_requests`).
    pub duration: Duration,
    pub headers: Vec<(String, String)>,
    /// Upper bound on the number of requests.
    pub max_requests: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Set to end the load early (see [`Steady`]).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl LoadSpec {
    pub fn new(url: impl Into<String>) -> Self {
        LoadSpec {
            url: url.into(),
            rate: 100.0,
            duration: Duration::from_secs(5),
            headers: Vec::new(),
            max_requests: 100_000,
            timeout: Duration::from_secs(5),
            concurrency: 64,
            stop: None,
        }
    }
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }
    /// Sets rate and duration so that exactly `n` requests go out at `rate`.
    pub fn requests(mut self, n: u64, rate: f64) -> Self {
        self.rate = rate;
        self.duration = Duration::from_secs_f64(n as f64 / rate);
        self.max_requests = n;
        self
    }
    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    /// Host header, for routing through the gateway by hostname.
    pub fn host(self, host: impl Into<String>) -> Self {
        self.header("Host", host)
    }
    pub fn total_requests(&self) -> u64 {
        ((self.rate * self.duration.as_secs_f64()).round() as u64).min(self.max_requests)
    }
}

/// What came back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub sent: u64,
    /// Requests that got an HTTP response.
    pub responses: u64,
    /// Requests that got no response (connect error, timeout).
    pub errors: u64,
    /// Responses per version ("unknown" when the response named none).
    pub by_version: BTreeMap<String, u64>,
    /// Responses per HTTP status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Responses per (version, status).
    pub by_version_status: BTreeMap<String, BTreeMap<u16, u64>>,
    pub elapsed_secs: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// First few transport errors, for diagnostics.
    pub sample_errors: Vec<String>,
    /// When (seconds after the start) requests got no answer or a 404/502/503, and
    /// what they got: where a release took the app dark, if it did (first 200).
    pub dark_at: Vec<(f64, String)>,
}

impl LoadReport {
    /// Share (0..1) of responses that came from `version`.
    pub fn version_share(&self, version: &str) -> f64 {
        if self.responses == 0 {
            return 0.0;
        }
        *self.by_version.get(version).unwrap_or(&0) as f64 / self.responses as f64
    }
    pub fn count(&self, version: &str) -> u64 {
        *self.by_version.get(version).unwrap_or(&0)
    }
    /// Requests the app did not answer: 404/502/503 from the gateway (no route, no
    /// reachable backend) or no response at all. A release must keep this at zero outside a
    /// bounded switch window.
    pub fn dark(&self) -> u64 {
        self.errors
            + [404u16, 502, 503]
                .iter()
                .map(|s| self.by_status.get(s).copied().unwrap_or(0))
                .sum::<u64>()
    }
    /// Share (0..1) of responses with status >= 500.
    pub fn server_error_share(&self) -> f64 {
        if self.responses == 0 {
            return 0.0;
        }
        let e: u64 = self
            .by_status
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum();
        e as f64 / self.responses as f64
    }
}

/// Only loopback and the local cluster's pod network may be targets.
pub fn check_target(url: &str) -> Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        bail!("only http(s) targets are supported: {url}");
    }
    let host = u.host_str().unwrap_or("");
    if host == "localhost" {
        return Ok(());
    }
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("target host must be an IP address or localhost: {url}"))?;
    let allowed = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || is_pod_network(v4),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !allowed {
        bail!(
            "refusing to send load to {ip}: only loopback and the pod network 10.244.0.0/16 are allowed"
        );
    }
    Ok(())
}

fn is_pod_network(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 244
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Steady load in the background for a whole release, stopped when the test has
/// seen what it waits for; `finish` reports on every request sent.
pub struct Steady {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<LoadReport>>,
}

impl Steady {
    /// `rate` requests per second to `url` with `Host: host`, for at most `max`.
    pub fn start(url: &str, host: &str, rate: f64, max: Duration) -> Steady {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut spec = LoadSpec::new(url).host(host).rate(rate).duration(max);
        spec.stop = Some(stop.clone());
        Steady {
            stop,
            task: tokio::spawn(async move { run(&spec).await }),
        }
    }

    pub async fn finish(self) -> Result<LoadReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.context("load task")?
    }
}

/// The app-dark guard: every request through the gateway was answered by the app
/// (no 404/502/503, no missing answer), except within one switch window of at most
/// `window` (a route or pod change the data plane applies a moment late).
pub fn assert_not_dark(what: &str, r: &LoadReport, window: Duration) {
    assert!(
        r.responses > 0,
        "{what}: no load reached the gateway: {r:?}"
    );
    // Completion order is not send order (a timeout completes late).
    let first = r.dark_at.iter().map(|d| d.0).fold(f64::MAX, f64::min);
    let last = r.dark_at.iter().map(|d| d.0).fold(0.0, f64::max);
    assert!(
        r.dark() == 0 || last - first <= window.as_secs_f64(),
        "{what}: {} requests got 404/502/503 or no answer over {:.1}s (switch window {window:?}): {:?} {:?}",
        r.dark(),
        last - first,
        r.by_status,
        r.dark_at
    );
}

/// Sends `spec.total_requests()` requests evenly spaced at `spec.rate`, waits for
/// them (each bounded by `spec.timeout`), and reports.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport> {
    check_target(&spec.url)?;
    if !(spec.rate > 0.0 && spec.rate <= 5000.0) {
        bail!("rate must be in (0, 5000] req/s, got {}", spec.rate);
    }
    crate::ensure_crypto();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(spec.timeout)
        .pool_max_idle_per_host(spec.concurrency)
        .build()
        .context("building HTTP client")?;
    let total = spec.total_requests();
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &spec.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .with_context(|| format!("bad header name {k}"))?;
        let value = reqwest::header::HeaderValue::from_str(v)
            .with_context(|| format!("bad header value for {k}"))?;
        headers.append(name, value);
    }
    let report = Arc::new(Mutex::new(LoadReport {
        url: spec.url.clone(),
        ..LoadReport::default()
    }));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let start = Instant::now();
    let hard_stop = spec.duration + spec.timeout + Duration::from_secs(10);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        if start.elapsed() > hard_stop
            || spec
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        let req = client.get(&spec.url).headers(headers.clone());
        let report = report.clone();
        let latencies = latencies.clone();
        report.lock().await.sent += 1;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let res = req.send().await;
            let outcome = match res {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header_version = resp
                        .headers()
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = resp.bytes().await.unwrap_or_default();
                    let version = header_version
                        .or_else(|| {
                            serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v.get("version")?.as_str().map(str::to_string))
                        })
                        .unwrap_or_else(|| "unknown".to_string());
                    Ok((status, version))
                }
                Err(e) => {
                    // reqwest's Display hides the cause (reset, refused, timeout).
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(c) = src {
                        msg.push_str(&format!(": {c}"));
                        src = c.source();
                    }
                    Err(msg)
                }
            };
            let at = t0.duration_since(start).as_secs_f64();
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            drop(permit);
            let mut r = report.lock().await;
            match outcome {
                Ok((status, version)) => {
                    if matches!(status, 404 | 502 | 503) && r.dark_at.len() < 200 {
                        r.dark_at.push((at, status.to_string()));
                    }
                    r.responses += 1;
                    *r.by_status.entry(status).or_default() += 1;
                    *r.by_version.entry(version.clone()).or_default() += 1;
                    *r.by_version_status
                        .entry(version)
                        .or_default()
                        .entry(status)
                        .or_default() += 1;
                    latencies.lock().await.push(ms);
                }
                Err(e) => {
                    if r.dark_at.len() < 200 {
                        r.dark_at.push((at, e.clone()));
                    }
                    r.errors += 1;
                    if r.sample_errors.len() < 5 {
                        r.sample_errors.push(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut r = report.lock().await.clone();
    r.elapsed_secs = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().await.clone();
    l.sort_by(|a, b| a.total_cmp(b));
    r.latency_p50_ms = percentile(&l, 0.5);
    r.latency_p99_ms = percentile(&l, 0.99);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_restricted() {
        assert!(check_target("http://127.0.0.1:8000/").is_ok());
        assert!(check_target("http://localhost:8000/").is_ok());
        assert!(check_target("http://10.244.0.7:8080/").is_ok());
        assert!(check_target("http://[::1]:80/").is_ok());
        assert!(check_target("http://10.0.0.1/").is_err());
        assert!(check_target("http://10.245.0.1/").is_err());
        assert!(check_target("http://192.168.1.1/").is_err());
        assert!(check_target("http://example.com/").is_err());
        assert!(check_target("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn request_count_is_bounded() {
        let s = LoadSpec::new("http://127.0.0.1/").requests(1000, 200.0);
        assert_eq!(s.total_requests(), 1000);
        let s = LoadSpec::new("http://127.0.0.1/")
            .rate(100.0)
            .duration(Duration::from_secs(3600));
        assert_eq!(s.total_requests(), 100_000);
    }

    #[tokio::test]
    async fn counts_versions_and_statuses_against_a_local_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                let (status, version) = if n.is_multiple_of(4) {
                    ("500 Internal Server Error", "v2")
                } else {
                    ("200 OK", "v1")
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("{{\"version\":\"{version}\"}}");
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let r = run(&LoadSpec::new(format!("http://{addr}/")).requests(40, 400.0))
            .await
            .unwrap();
        assert_eq!(r.sent, 40);
        assert_eq!(r.responses, 40);
        assert_eq!(r.count("v2"), 10);
        assert_eq!(r.by_status.get(&500), Some(&10));
        assert!((r.version_share("v1") - 0.75).abs() < 1e-9);
    }
}
