//! Webhook calls with Flagger's JSON payload, per-call timeout, retries with
//! exponential back-off, optional TLS skip-verify and headers from a Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::crd::{Canary, Phase};

use super::prometheus::{error_chain, snippet};

/// Flagger's default webhook timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Flagger's timeout for event webhooks.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one back-off pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL {0:?} is not a valid http(s) URL")]
    BadUrl(String),
    #[error("header {0:?} from the headers Secret is not a valid HTTP header name or value")]
    BadHeader(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("timed out after {timeout:?} ({attempts} attempt(s))")]
    Timeout { timeout: Duration, attempts: u32 },
    #[error("unreachable ({attempts} attempt(s)): {why}")]
    Unreachable { why: String, attempts: u32 },
    /// Connected, but what came back was not an HTTP response (or was cut off).
    #[error("answered something that is not HTTP ({attempts} attempt(s)): {why}")]
    NotHttp { why: String, attempts: u32 },
    #[error("answered HTTP {status} ({attempts} attempt(s)){}", body_suffix(.body))]
    Status {
        status: u16,
        body: String,
        attempts: u32,
    },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl WebhookError {
    /// The HTTP status, when the webhook answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            WebhookError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Flagger's `CanaryWebhookPayload`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WebhookPayload {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub checksum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl WebhookPayload {
    pub fn new(
        canary: &Canary,
        phase: Phase,
        metadata: Option<serde_json::Value>,
    ) -> WebhookPayload {
        WebhookPayload {
            name: canary.name_str().to_string(),
            namespace: canary.namespace_or_default(),
            phase: phase.as_str().to_string(),
            checksum: canary
                .status
                .as_ref()
                .and_then(|s| s.last_applied_spec.clone())
                .unwrap_or_default(),
            metadata,
        }
    }

    /// An event payload: the webhook's own metadata plus `eventMessage`, `eventType`
    /// and `timestamp` (milliseconds since the epoch, as a string like Flagger's).
    pub fn event(
        canary: &Canary,
        phase: Phase,
        metadata: Option<&serde_json::Value>,
        message: &str,
        event_type: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> WebhookPayload {
        let mut meta = match metadata {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        meta.insert("eventMessage".into(), message.into());
        meta.insert("eventType".into(), event_type.into());
        meta.insert(
            "timestamp".into(),
            now.timestamp_millis().to_string().into(),
        );
        WebhookPayload::new(canary, phase, Some(serde_json::Value::Object(meta)))
    }
}

/// Turns a Secret into request headers: each key is a header name, its value the
/// header value (marked sensitive so it is never printed by the HTTP stack).
pub fn headers_from_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<HeaderMap, WebhookError> {
    let mut map = HeaderMap::new();
    for (key, value) in data {
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| WebhookError::BadHeader(key.clone()))?;
        let trimmed = trim_ascii_newline(value);
        let mut hv =
            HeaderValue::from_bytes(trimmed).map_err(|_| WebhookError::BadHeader(key.clone()))?;
        hv.set_sensitive(true);
        map.insert(name, hv);
    }
    Ok(map)
}

/// Secrets made with `echo` often end in a newline, which is not a valid header byte.
fn trim_ascii_newline(v: &[u8]) -> &[u8] {
    let mut end = v.len();
    while end > 0 && matches!(v[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &v[..end]
}

/// How one webhook is called.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub timeout: Duration,
    /// Extra attempts after the first one fails with a retryable error.
    pub retries: u32,
    pub disable_tls: bool,
    pub headers: HeaderMap,
    /// First pause between attempts; doubled each retry, capped at 30 s.
    pub backoff: Duration,
}

/// POSTs `payload` to `url`. Retries connection errors, timeouts, 5xx and 429 (a
/// 4xx such as a closed gate's 403 is an answer, not a fault). Returns the 2xx status.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    payload: &WebhookPayload,
    opts: &CallOptions,
) -> Result<u16, WebhookError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => return Err(WebhookError::BadUrl(url.to_string())),
    }
    let client = if opts.disable_tls {
        reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?
    } else {
        http.clone()
    };
    let mut pause = opts.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = client
            .post(url)
            .headers(opts.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .json(payload)
            .timeout(opts.timeout)
            .send()
            .await;
        let err = match result {
            Ok(resp) if resp.status().is_success() => return Ok(resp.status().as_u16()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.map(|b| snippet(&b)).unwrap_or_default();
                WebhookError::Status {
                    status,
                    body,
                    attempts: attempt,
                }
            }
            Err(e) if e.is_timeout() => WebhookError::Timeout {
                timeout: opts.timeout,
                attempts: attempt,
            },
            // "Unreachable" would send the user after the network when the server
            // is there and speaks garbage.
            Err(e) if !e.is_connect() && !e.is_builder() => WebhookError::NotHttp {
                why: error_chain(&e.without_url()),
                attempts: attempt,
            },
            Err(e) => WebhookError::Unreachable {
                why: error_chain(&e.without_url()),
                attempts: attempt,
            },
        };
        let retryable = match &err {
            WebhookError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        };
        if !retryable || attempt > opts.retries {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::prometheus::tests::{client, serve, serve_tls};
    use crate::crd::{CanarySpec, CanaryStatus};
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap as AxHeaders, StatusCode};
    use axum::routing::post;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::Mutex;

    pub(crate) fn canary() -> Canary {
        let mut c = Canary::new("podinfo", CanarySpec::default());
        c.metadata.namespace = Some("test".into());
        c.status = Some(CanaryStatus {
            last_applied_spec: Some("abc123".into()),
            ..Default::default()
        });
        c
    }

    #[derive(Default)]
    struct Seen {
        hits: AtomicU32,
        last: Mutex<Option<(serde_json::Value, AxHeaders)>>,
    }

    fn receiver(seen: Arc<Seen>) -> Router {
        async fn record(seen: &Seen, headers: AxHeaders, body: String) {
            seen.hits.fetch_add(1, Ordering::SeqCst);
            let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            *seen.last.lock().await = Some((v, headers));
        }
        Router::new()
            .route(
                "/ok",
                post(
                    |State(s): State<Arc<Seen>>, h: AxHeaders, b: String| async move {
                        record(&s, h, b).await;
                        StatusCode::OK
                    },
                ),
            )
            .route(
                "/fail",
                post(
                    |State(s): State<Arc<Seen>>, h: AxHeaders, b: String| async move {
                        record(&s, h, b).await;
                        (StatusCode::INTERNAL_SERVER_ERROR, "broken")
                    },
                ),
            )
            .route(
                "/closed",
                post(
                    |State(s): State<Arc<Seen>>, h: AxHeaders, b: String| async move {
                        record(&s, h, b).await;
                        StatusCode::FORBIDDEN
                    },
                ),
            )
            .route(
                "/slow",
                post(
                    |State(s): State<Arc<Seen>>, h: AxHeaders, b: String| async move {
                        record(&s, h, b).await;
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        StatusCode::OK
                    },
                ),
            )
            .with_state(seen)
    }

    fn opts(retries: u32, timeout_ms: u64) -> CallOptions {
        CallOptions {
            timeout: Duration::from_millis(timeout_ms),
            retries,
            disable_tls: false,
            headers: HeaderMap::new(),
            backoff: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn payload_and_secret_headers_arrive_as_sent() {
        let seen = Arc::new(Seen::default());
        let addr = serve(receiver(seen.clone())).await;
        let payload = WebhookPayload::new(
            &canary(),
            Phase::Progressing,
            Some(serde_json::json!({"cmd": "x"})),
        );
        let secret = BTreeMap::from([
            ("Authorization".to_string(), b"Bearer t0ken\n".to_vec()),
            ("X-Team".to_string(), b"blue".to_vec()),
        ]);
        let mut o = opts(0, 2000);
        o.headers = headers_from_secret(&secret).unwrap();
        assert_eq!(
            call(&client(), &format!("{addr}/ok"), &payload, &o)
                .await
                .unwrap(),
            200
        );
        let (body, headers) = seen.last.lock().await.clone().unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "checksum": "abc123", "metadata": {"cmd": "x"}})
        );
        assert_eq!(headers.get("authorization").unwrap(), "Bearer t0ken");
        assert_eq!(headers.get("x-team").unwrap(), "blue");
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        // Sensitive header values are redacted by the http crate's Debug.
        assert!(!format!("{:?}", o.headers).contains("t0ken"));
    }

    #[tokio::test]
    async fn failures_retry_then_report() {
        let seen = Arc::new(Seen::default());
        let addr = serve(receiver(seen.clone())).await;
        let payload = WebhookPayload::new(&canary(), Phase::Progressing, None);
        let err = call(&client(), &format!("{addr}/fail"), &payload, &opts(2, 2000))
            .await
            .unwrap_err();
        assert_eq!(seen.hits.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
        assert_eq!(err.status(), Some(500));
        assert!(
            err.to_string().contains("HTTP 500 (3 attempt(s)): broken"),
            "{err}"
        );

        // A 403 is an answer (a closed gate): not retried.
        let err = call(
            &client(),
            &format!("{addr}/closed"),
            &payload,
            &opts(3, 2000),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), Some(403));
        assert_eq!(seen.hits.load(Ordering::SeqCst), 4);

        let err = call(&client(), &format!("{addr}/slow"), &payload, &opts(1, 200))
            .await
            .unwrap_err();
        assert!(
            matches!(err, WebhookError::Timeout { attempts: 2, .. }),
            "{err:?}"
        );

        assert!(matches!(
            call(&client(), "not a url", &payload, &opts(0, 100)).await,
            Err(WebhookError::BadUrl(_))
        ));
        assert!(matches!(
            headers_from_secret(&BTreeMap::from([("bad header".to_string(), b"v".to_vec())])),
            Err(WebhookError::BadHeader(k)) if k == "bad header"
        ));
    }

    #[test]
    fn event_payload_has_flagger_fields() {
        let now = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let p = WebhookPayload::event(
            &canary(),
            Phase::Failed,
            Some(&serde_json::json!({"team": "a"})),
            "Rolling back podinfo.test",
            "Warning",
            now,
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "name": "podinfo", "namespace": "test", "phase": "Failed", "checksum": "abc123",
                "metadata": {"team": "a", "eventMessage": "Rolling back podinfo.test", "eventType": "Warning", "timestamp": "1700000000123"}
            })
        );
    }

    #[tokio::test]
    async fn disable_tls_accepts_a_self_signed_receiver() {
        let seen = Arc::new(Seen::default());
        let addr = serve_tls(receiver(seen.clone())).await;
        let payload = WebhookPayload::new(&canary(), Phase::Progressing, None);
        let err = call(&client(), &format!("{addr}/ok"), &payload, &opts(0, 2000))
            .await
            .unwrap_err();
        assert!(matches!(err, WebhookError::Unreachable { .. }), "{err:?}");
        assert_eq!(seen.hits.load(Ordering::SeqCst), 0);
        let mut o = opts(0, 2000);
        o.disable_tls = true;
        assert_eq!(
            call(&client(), &format!("{addr}/ok"), &payload, &o)
                .await
                .unwrap(),
            200
        );
        assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_speaking_something_else_is_not_called_unreachable() {
        // A webhook URL pointed at the wrong port: an SSH server greets and hangs up.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
            }
        });
        let payload = WebhookPayload::new(&canary(), Phase::Progressing, None);
        let err = call(
            &client(),
            &format!("http://{addr}/gate"),
            &payload,
            &opts(1, 2000),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, WebhookError::NotHttp { attempts: 2, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("answered something that is not HTTP"),
            "{err}"
        );
    }
}
