use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderMap as AxHeaders;
use serde_json::Value;

use super::*;
use crate::analysis::prometheus::tests::{client, serve};

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("tester reachable");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn canary(name: &str) -> Value {
    json!({"name": name, "namespace": "test", "phase": "Progressing", "checksum": "x"})
}

#[tokio::test]
async fn gates_open_close_and_check_per_canary() {
    let base = serve(router()).await;
    let url = |p: &str| format!("{base}{p}");
    assert_eq!(post_json(&url("/gate/approve"), canary("a")).await.0, 200);
    assert_eq!(post_json(&url("/gate/halt"), canary("a")).await.0, 403);

    for (prefix, _) in [("/gate", "gate"), ("/rollback", "rollback")] {
        let check = url(&format!("{prefix}/check"));
        assert_eq!(
            post_json(&check, canary("a")).await.0,
            403,
            "{prefix} closed by default"
        );
        assert_eq!(
            post_json(&url(&format!("{prefix}/open")), canary("a"))
                .await
                .0,
            202
        );
        let (status, body) = post_json(&check, canary("a")).await;
        assert_eq!(status, 200);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("open for test/a"),
            "{body}"
        );
        // Another Canary, or the same name in another namespace, is unaffected.
        assert_eq!(post_json(&check, canary("b")).await.0, 403);
        assert_eq!(
            post_json(&check, json!({"name": "a", "namespace": "other"}))
                .await
                .0,
            403
        );
        assert_eq!(
            post_json(&url(&format!("{prefix}/close")), canary("a"))
                .await
                .0,
            202
        );
        assert_eq!(post_json(&check, canary("a")).await.0, 403);
    }
    // The gate and rollback gate are separate.
    post_json(&url("/rollback/open"), canary("c")).await;
    assert_eq!(post_json(&url("/gate/check"), canary("c")).await.0, 403);

    let r = client()
        .post(url("/gate/check"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = client().get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[derive(Default)]
struct Target {
    hits: AtomicU64,
    with_header: AtomicU64,
}

async fn target() -> (String, Arc<Target>) {
    let t = Arc::new(Target::default());
    let app = Router::new()
        .route(
            "/ok",
            get(|State(t): State<Arc<Target>>, h: AxHeaders| async move {
                t.hits.fetch_add(1, Ordering::SeqCst);
                if h.get("x-canary").is_some_and(|v| v == "insider") {
                    t.with_header.fetch_add(1, Ordering::SeqCst);
                }
                "ok"
            })
            .post(|State(t): State<Arc<Target>>| async move {
                t.hits.fetch_add(1, Ordering::SeqCst);
                "posted"
            }),
        )
        .route(
            "/err",
            get(|State(t): State<Arc<Target>>| async move {
                t.hits.fetch_add(1, Ordering::SeqCst);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .with_state(t.clone());
    (serve(app).await, t)
}

fn load(url: String, rate: Value, duration: Value, extra: Value) -> Value {
    let mut meta = json!({"type": "load", "url": url, "rate": rate, "duration": duration});
    if let (Some(m), Value::Object(e)) = (meta.as_object_mut(), extra) {
        m.extend(e);
    }
    json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "metadata": meta})
}

#[tokio::test]
async fn blocking_load_sends_rate_times_duration() {
    let base = serve(router()).await;
    let (app, t) = target().await;
    let started = std::time::Instant::now();
    let (status, body) = post_json(
        &format!("{base}/"),
        load(
            format!("{app}/ok"),
            json!("40"),
            json!("500ms"),
            json!({"blocking": true, "headers": "X-Canary: insider\nAccept: */*"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["sent"], 20);
    assert_eq!(body["report"]["ok"], 20);
    assert_eq!(t.hits.load(Ordering::SeqCst), 20);
    assert_eq!(t.with_header.load(Ordering::SeqCst), 20);
    // Paced, not a burst: the last request goes out at ~475 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );

    let (status, body) = post_json(
        &format!("{base}/"),
        load(
            format!("{app}/err"),
            json!(20),
            json!(0.5),
            json!({"blocking": "true"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["report"]["sent"].as_u64(),
            body["report"]["httpErrors"].as_u64()
        ),
        (Some(10), Some(10))
    );

    let (status, body) = post_json(
        &format!("{base}/"),
        load(
            format!("{app}/ok"),
            json!(10),
            json!("300ms"),
            json!({"blocking": true, "method": "post"}),
        ),
    )
    .await;
    assert_eq!((status, body["report"]["ok"].as_u64()), (200, Some(3)));
}

#[tokio::test]
async fn background_load_is_deduplicated_and_bounded() {
    let base = serve(router()).await;
    let (app, t) = target().await;
    let spec = load(format!("{app}/ok"), json!(20), json!("400ms"), json!({}));
    let (status, body) = post_json(&format!("{base}/"), spec.clone()).await;
    assert_eq!(
        (status, body["requests"].as_u64()),
        (202, Some(8)),
        "{body}"
    );
    // The same webhook again while it runs (Flagger calls rollout hooks each interval).
    let (status, body) = post_json(&format!("{base}/"), spec.clone()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("running")));
    // 8 requests over 400 ms; a loaded machine may take longer, never more requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.hits.load(Ordering::SeqCst) < 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        t.hits.load(Ordering::SeqCst),
        8,
        "deduplicated: one load of 8"
    );
    // Finished (marked so after its last answer): the same load may start again.
    let mut again = post_json(&format!("{base}/"), spec.clone()).await;
    while again.0 == 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        again = post_json(&format!("{base}/"), spec.clone()).await;
    }
    assert_eq!(again.0, 202);

    // Limits from the config.
    let small = serve(router_with(TesterConfig {
        max_rate: 5.0,
        max_duration: Duration::from_secs(1),
        ..Default::default()
    }))
    .await;
    for (rate, duration, needle) in [
        (json!(6), json!("1s"), "metadata.rate"),
        (json!(0), json!("1s"), "metadata.rate"),
        (json!(1), json!("2s"), "metadata.duration"),
        (json!(1), json!("soon"), "metadata.duration"),
    ] {
        let (status, body) = post_json(
            &format!("{small}/"),
            load(format!("{app}/ok"), rate, duration, json!({})),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
}

#[tokio::test]
async fn shell_commands_and_bad_metadata_are_refused() {
    let base = serve(router()).await;
    let cases = [
        (
            json!({"type": "cmd", "cmd": "hey -z 1m http://podinfo"}),
            "runs no shell commands",
        ),
        (json!({"cmd": "curl http://x"}), "runs no shell commands"),
        (
            json!({"type": "bash", "cmd": "rm -rf /"}),
            "runs no shell commands",
        ),
        (json!({"type": "grpc"}), "not supported"),
        (
            json!({"type": "load", "rate": 1, "duration": "1s"}),
            "metadata.url",
        ),
        (
            json!({"type": "load", "url": "ftp://x", "rate": 1, "duration": "1s"}),
            "metadata.url",
        ),
        (
            json!({"type": "load", "url": "http://127.0.0.1:1/", "rate": 1, "duration": "1s", "headers": "no colon"}),
            "metadata.headers",
        ),
        (
            json!({"type": "load", "url": "http://127.0.0.1:1/", "rate": 1, "duration": "1s", "method": "BAD METHOD"}),
            "metadata.method",
        ),
    ];
    for (meta, needle) in cases {
        let (status, body) = post_json(
            &format!("{base}/"),
            json!({"name": "a", "namespace": "b", "metadata": meta}),
        )
        .await;
        assert_eq!(status, 400, "{meta}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(needle),
            "{body} should contain {needle}"
        );
    }
    let (status, _) = post_json(&format!("{base}/"), json!({"name": "a", "namespace": "b"})).await;
    assert_eq!(status, 400);
}

#[test]
fn header_values_are_not_echoed() {
    let meta = json!({"type": "load", "url": "http://127.0.0.1:1/", "rate": 1, "duration": "1s",
                      "headers": {"Authorization": "Bearer sekrit\n"}});
    let err = LoadSpec::from_metadata(Some(&meta), &TesterConfig::default()).unwrap_err();
    assert!(
        err.to_string().contains("Authorization") && !err.to_string().contains("sekrit"),
        "{err}"
    );
    let meta = json!({"type": "load", "url": "http://127.0.0.1:1/", "rate": "2.5", "duration": "2s",
                      "headers": {"Authorization": "Bearer sekrit"}});
    let spec = LoadSpec::from_metadata(Some(&meta), &TesterConfig::default()).unwrap();
    assert_eq!(spec.requests, 5);
    assert!(!format!("{spec:?}").contains("sekrit"));
}
