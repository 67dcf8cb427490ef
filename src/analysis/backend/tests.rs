//! Each backend against a local server that checks the request the way the real
//! API documents it and answers in its documented shapes, errors included. The
//! e2e tests run Graphite and InfluxDB 1.x themselves (`e2e/tests/backends.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};

use super::graphite::{self, GraphiteClient};
use super::influxdb::{self, InfluxClient};
use super::*;
use crate::analysis::prometheus::tests::{client, serve};

const T: Duration = Duration::from_secs(5);

fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn graphite_answers_give_the_last_non_null_point() {
    let body = r#"[{"target": "a", "datapoints": [[1.5, 1], [null, 2], [2.5, 3], [null, 4]]},
                   {"target": "b", "datapoints": [["7.25", 5], [null, 6]]}]"#;
    assert_eq!(graphite::last_value(body), Ok(Some(7.25)));
    assert_eq!(
        graphite::last_value(r#"[{"target": "a", "datapoints": [[null, 1]]}]"#),
        Ok(None)
    );
    assert_eq!(graphite::last_value("[]"), Ok(None));
    assert!(graphite::last_value("<html>").is_err());
    assert!(graphite::last_value(r#"[{"target": "a", "datapoints": [["x", 1]]}]"#).is_err());
}

#[test]
fn graphite_render_url_keeps_the_path_and_asks_for_json() {
    let c = GraphiteClient::new(&client(), "http://g.example:8080/graphite/", None, false, T)
        .expect("client");
    let u = c.render_url("target=sumSeries(app.{{a,b}}.errors)\n  &from=-5min&format=raw");
    assert_eq!(u.path(), "/graphite/render");
    let q: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    assert_eq!(
        q,
        vec![
            ("target".into(), "sumSeries(app.{{a,b}}.errors)".into()),
            ("from".into(), "-5min".into()),
            ("format".into(), "json".into()),
        ]
    );
}

#[tokio::test]
async fn graphite_sends_basic_auth_and_reads_the_value() {
    let seen = Arc::new(Mutex::new(Vec::<(String, Option<String>)>::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/render",
        get(move |RawQuery(q): RawQuery, h: HeaderMap| {
            let s = s.clone();
            async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                s.lock()
                    .unwrap()
                    .push((q.unwrap_or_default(), auth.clone()));
                // base64("flagger:s3cret")
                if auth.as_deref() != Some("Basic ZmxhZ2dlcjpzM2NyZXQ=") {
                    return (StatusCode::UNAUTHORIZED, "bad credentials".to_string());
                }
                (
                    StatusCode::OK,
                    r#"[{"target": "x", "datapoints": [[99.5, 1], [null, 2]]}]"#.to_string(),
                )
            }
        }),
    );
    let addr = serve(app).await;
    let good = secret(&[("username", "flagger"), ("password", "s3cret")]);
    let c = GraphiteClient::new(&client(), &addr, Some(&good), false, T).expect("client");
    assert_eq!(
        c.query("target=app.success&from=-1min")
            .await
            .expect("query"),
        Some(99.5)
    );
    let (q, _) = seen.lock().unwrap()[0].clone();
    assert_eq!(q, "target=app.success&from=-1min&format=json");

    let wrong = secret(&[("username", "flagger"), ("password", "nope")]);
    let c = GraphiteClient::new(&client(), &addr, Some(&wrong), false, T).expect("client");
    let e = c.query("target=app.success").await.expect_err("401");
    assert!(
        matches!(&e, BackendError::Http { status: 401, body, .. } if body == "bad credentials"),
        "{e}"
    );
    // A Secret without the password is refused before any request, naming the key.
    let e = GraphiteClient::new(
        &client(),
        &addr,
        Some(&secret(&[("username", "u")])),
        false,
        T,
    )
    .expect_err("no password");
    assert!(e.to_string().contains("\"password\""), "{e}");
}

#[test]
fn flux_answers_in_annotated_csv() {
    let csv = "#datatype,string,long,dateTime:RFC3339,double\r\n\
               #group,false,false,true,false\r\n\
               #default,_result,,,\r\n\
               ,result,table,_time,_value\r\n\
               ,,0,2026-12-03T17:00:00Z,42.5\r\n\
               ,,0,2026-12-03T17:00:01Z,43\r\n\r\n";
    assert_eq!(influxdb::flux_value(csv), Ok(Some(42.5)));
    assert_eq!(influxdb::flux_value(""), Ok(None));
    assert_eq!(
        influxdb::flux_value("#datatype,string,long,double\n,result,table,_value\n,,0,\n"),
        Ok(None)
    );
    let err = "#datatype,string,string\n#group,true,true\n#default,,\n,error,reference\n,\"type error: \"\"x\"\" undefined\",897\n";
    assert_eq!(
        influxdb::flux_value(err),
        Err(influxdb::FluxAnswer::Error(
            "type error: \"x\" undefined".into()
        ))
    );
    assert!(matches!(
        influxdb::flux_value(",result,table,count\n,,0,3\n"),
        Err(influxdb::FluxAnswer::Bad(_))
    ));
}

#[test]
fn influxql_answers_in_json() {
    let ok = r#"{"results":[{"statement_id":0,"series":[{"name":"req","columns":["time","last"],"values":[[1796319928,99.5]]}]}]}"#;
    assert_eq!(influxdb::influxql_value(ok), Ok(Some(99.5)));
    assert_eq!(
        influxdb::influxql_value(r#"{"results":[{"statement_id":0}]}"#),
        Ok(None)
    );
    assert_eq!(
        influxdb::influxql_value(
            r#"{"results":[{"statement_id":0,"error":"database not found: x"}]}"#
        ),
        Err(influxdb::FluxAnswer::Error("database not found: x".into()))
    );
    assert_eq!(
        influxdb::influxql_value(r#"{"error":"error parsing query: found EOF"}"#),
        Err(influxdb::FluxAnswer::Error(
            "error parsing query: found EOF".into()
        ))
    );
}

/// InfluxDB 2's query API as documented: `POST /api/v2/query?org=`, a token, a JSON
/// body with the Flux text; refusals as `{"code", "message"}`.
#[tokio::test]
async fn flux_request_is_what_influxdb_2_documents() {
    let app = Router::new().route(
        "/api/v2/query",
        post(
            |Query(q): Query<HashMap<String, String>>, h: HeaderMap, body: String| async move {
                let auth = h.get("authorization").and_then(|v| v.to_str().ok());
                if auth != Some("Token t0ken") {
                    return (
                        StatusCode::UNAUTHORIZED,
                        r#"{"code":"unauthorized","message":"unauthorized access"}"#.to_string(),
                    );
                }
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if q.get("org").map(String::as_str) != Some("acme")
                    || v["type"] != "flux"
                    || h.get("content-type").and_then(|v| v.to_str().ok())
                        != Some("application/json")
                {
                    return (StatusCode::BAD_REQUEST, "unexpected request".to_string());
                }
                let flux = v["query"].as_str().unwrap_or_default();
                if flux.contains("nosuchbucket") {
                    return (
                        StatusCode::NOT_FOUND,
                        r#"{"code":"not found","message":"failed to initialize execute state: could not find bucket \"nosuchbucket\""}"#
                            .to_string(),
                    );
                }
                (
                    StatusCode::OK,
                    "#datatype,string,long,double\r\n#group,false,false,false\r\n#default,_result,,\r\n,result,table,_value\r\n,,0,12\r\n"
                        .to_string(),
                )
            },
        ),
    );
    let addr = serve(app).await;
    let flux = r#"from(bucket: "default") |> range(start: -2h) |> count()"#;
    let good = secret(&[("token", "t0ken"), ("org", "acme")]);
    let c = InfluxClient::new(&client(), &addr, Some(&good), flux, false, T).expect("client");
    assert_eq!(c.query(flux).await.expect("query"), Some(12.0));

    let missing = r#"from(bucket: "nosuchbucket") |> range(start: -1m)"#;
    let e = c.query(missing).await.expect_err("404");
    assert!(
        matches!(&e, BackendError::Query { why, .. } if why.contains("could not find bucket")),
        "{e}"
    );
    let bad = secret(&[("token", "wrong"), ("org", "acme")]);
    let c = InfluxClient::new(&client(), &addr, Some(&bad), flux, false, T).expect("client");
    let e = c.query(flux).await.expect_err("401");
    assert!(e.to_string().contains("unauthorized access"), "{e}");
    // Flux needs both keys, as in Flagger.
    let e = InfluxClient::new(
        &client(),
        &addr,
        Some(&secret(&[("token", "t")])),
        flux,
        false,
        T,
    )
    .expect_err("no org");
    assert!(e.to_string().contains("\"org\""), "{e}");
}

#[tokio::test]
async fn a_backend_that_does_not_answer_times_out() {
    let app = Router::new().route(
        "/render",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "[]"
        }),
    );
    let addr = serve(app).await;
    let c = GraphiteClient::new(&client(), &addr, None, false, Duration::from_millis(200))
        .expect("client");
    let e = c.query("target=x").await.expect_err("timeout");
    assert!(matches!(e, BackendError::Timeout { .. }), "{e}");
}

#[test]
fn provider_types() {
    for t in ["prometheus", "thanos", "mimir", "victoriametrics", ""] {
        assert_eq!(BackendKind::of(t), Some(BackendKind::Prometheus));
    }
    assert_eq!(BackendKind::of("graphite"), Some(BackendKind::Graphite));
    assert_eq!(BackendKind::of("influxdb"), Some(BackendKind::InfluxDb));
    assert_eq!(
        BackendKind::of("datadog"),
        Some(BackendKind::Saas(super::saas::Saas::Datadog))
    );
    assert_eq!(BackendKind::of("cloudwatch"), None);
}

// ---- Datadog, New Relic, Dynatrace: the requests their APIs document ----------

use super::saas::{Saas, SaasClient, value_of};

#[test]
fn saas_answers_in_their_documented_shapes() {
    let dd = r#"{"status":"ok","series":[{"metric":"m","pointlist":[[1796319928000.0, 0.97],[1796319938000.0, 0.5]]}]}"#;
    assert_eq!(value_of(Saas::Datadog, dd), Ok(Some(0.97)));
    assert_eq!(value_of(Saas::Datadog, r#"{"series":[]}"#), Ok(None));
    assert_eq!(
        value_of(Saas::Datadog, r#"{"series":[{"pointlist":[[1.0, null]]}]}"#),
        Ok(None)
    );
    let nr = r#"{"results":[{"result": 12.5}],"metadata":{}}"#;
    assert_eq!(value_of(Saas::NewRelic, nr), Ok(Some(12.5)));
    assert_eq!(
        value_of(Saas::NewRelic, r#"{"results":[{"result": null}]}"#),
        Ok(None)
    );
    let dt = r#"{"totalCount":1,"result":[{"metricId":"m","data":[{"dimensions":[],"timestamps":[1],"values":[3.0]},{"dimensions":[],"timestamps":[2],"values":[4.5]}]}]}"#;
    assert_eq!(value_of(Saas::Dynatrace, dt), Ok(Some(4.5)));
    assert_eq!(
        value_of(Saas::Dynatrace, r#"{"result":[{"data":[]}]}"#),
        Ok(None)
    );
    assert!(value_of(Saas::Datadog, "<html>").is_err());
}

#[test]
fn saas_requests_ask_for_the_window_flagger_asks_for() {
    let interval = Duration::from_secs(60);
    let dd = secret(&[("datadog_api_key", "a"), ("datadog_application_key", "b")]);
    let c = SaasClient::new(
        Saas::Datadog,
        &client(),
        None,
        Some(&dd),
        interval,
        false,
        T,
    )
    .expect("client");
    let u = c.url("avg:m{*}", 1_000_000);
    assert_eq!(u.host_str(), Some("api.datadoghq.com"));
    assert_eq!(u.path(), "/api/v1/query");
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["query"], "avg:m{*}");
    assert_eq!(q["from"], (1_000_000 - 600).to_string());
    assert_eq!(q["to"], "1000000");

    let nr = secret(&[("newrelic_account_id", "42"), ("newrelic_query_key", "k")]);
    let c = SaasClient::new(
        Saas::NewRelic,
        &client(),
        None,
        Some(&nr),
        interval,
        false,
        T,
    )
    .expect("client");
    let u = c.url("SELECT count(*) FROM Transaction", 0);
    assert_eq!(u.path(), "/v1/accounts/42/query");
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(
        q["nrql"],
        "SELECT count(*) FROM Transaction SINCE 60 seconds ago"
    );

    let dt = secret(&[("dynatrace_token", "t")]);
    let c = SaasClient::new(
        Saas::Dynatrace,
        &client(),
        Some("https://abc.live.dynatrace.com"),
        Some(&dt),
        interval,
        false,
        T,
    )
    .expect("client");
    let u = c.url("builtin:service.response.time", 1_000);
    assert_eq!(u.path(), "/api/v2/metrics/query");
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["resolution"], "Inf");
    assert_eq!(q["from"], (1_000_000 - 600_000).to_string());
    assert_eq!(q["to"], "1000000");
    // Dynatrace has no default environment; a missing key is named.
    let e = SaasClient::new(
        Saas::Dynatrace,
        &client(),
        None,
        Some(&dt),
        interval,
        false,
        T,
    )
    .expect_err("no address");
    assert!(e.to_string().contains("provider.address"), "{e}");
    let e = SaasClient::new(Saas::Datadog, &client(), None, None, interval, false, T)
        .expect_err("no secret");
    assert!(e.to_string().contains("datadog_api_key"), "{e}");
}

/// One local server per API: it answers only a request carrying the documented
/// credentials header, and errors in the API's own error shape.
#[tokio::test]
async fn saas_backends_send_their_credentials_and_keep_the_error_text() {
    async fn check(
        h: &HeaderMap,
        name: &str,
        want: &str,
        ok: &'static str,
        err: &'static str,
    ) -> (StatusCode, &'static str) {
        if h.get(name).and_then(|v| v.to_str().ok()) == Some(want) {
            (StatusCode::OK, ok)
        } else {
            (StatusCode::FORBIDDEN, err)
        }
    }
    let app = Router::new()
        .route(
            "/api/v1/query",
            get(|h: HeaderMap| async move {
                if h.get("dd-application-key").and_then(|v| v.to_str().ok()) != Some("app") {
                    return (StatusCode::FORBIDDEN, r#"{"errors": ["Forbidden"]}"#);
                }
                check(
                    &h,
                    "dd-api-key",
                    "api",
                    r#"{"series":[{"pointlist":[[1.0, 99.9]]}]}"#,
                    r#"{"errors": ["Forbidden"]}"#,
                )
                .await
            }),
        )
        .route(
            "/v1/accounts/{id}/query",
            get(|h: HeaderMap| async move {
                check(
                    &h,
                    "x-query-key",
                    "qk",
                    r#"{"results":[{"result": 7}]}"#,
                    r#"{"error": "Invalid query key"}"#,
                )
                .await
            }),
        )
        .route(
            "/api/v2/metrics/query",
            get(|h: HeaderMap| async move {
                check(
                    &h,
                    "authorization",
                    "Api-Token dt",
                    r#"{"result":[{"data":[{"values":[250.0]}]}]}"#,
                    r#"{"error":{"code":403,"message":"Token is missing required scope"}}"#,
                )
                .await
            }),
        );
    let addr = serve(app).await;
    let i = Duration::from_secs(30);
    let run = |kind, s: BTreeMap<String, Vec<u8>>| {
        let addr = addr.clone();
        async move {
            SaasClient::new(kind, &client(), Some(&addr), Some(&s), i, false, T)
                .expect("client")
                .query("q")
                .await
        }
    };
    let dd = |k: &str| secret(&[("datadog_api_key", k), ("datadog_application_key", "app")]);
    assert_eq!(run(Saas::Datadog, dd("api")).await.expect("dd"), Some(99.9));
    let e = run(Saas::Datadog, dd("wrong")).await.expect_err("403");
    assert!(e.to_string().contains("Forbidden"), "{e}");
    let nr = |k: &str| secret(&[("newrelic_account_id", "1"), ("newrelic_query_key", k)]);
    assert_eq!(run(Saas::NewRelic, nr("qk")).await.expect("nr"), Some(7.0));
    let e = run(Saas::NewRelic, nr("no")).await.expect_err("403");
    assert!(e.to_string().contains("Invalid query key"), "{e}");
    let dt = |k: &str| secret(&[("dynatrace_token", k)]);
    assert_eq!(
        run(Saas::Dynatrace, dt("dt")).await.expect("dt"),
        Some(250.0)
    );
    let e = run(Saas::Dynatrace, dt("x")).await.expect_err("403");
    assert!(e.to_string().contains("required scope"), "{e}");
}

#[test]
fn credentials_never_show_in_debug() {
    let dd = secret(&[
        ("datadog_api_key", "SECRET-API"),
        ("datadog_application_key", "SECRET-APP"),
    ]);
    let c = SaasClient::new(
        Saas::Datadog,
        &client(),
        None,
        Some(&dd),
        Duration::from_secs(60),
        false,
        T,
    )
    .expect("client");
    let shown = format!("{c:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    let g = GraphiteClient::new(
        &client(),
        "http://g",
        Some(&secret(&[("username", "u"), ("password", "SECRET-PW")])),
        false,
        T,
    )
    .expect("client");
    assert!(!format!("{g:?}").contains("SECRET"));
}

/// The graphite, influxdb and SaaS backends share `http_client`: the operator's
/// verifying client unless the template sets `insecureSkipVerify`.
#[tokio::test]
async fn backends_verify_tls_unless_the_template_skips_it() {
    use crate::analysis::prometheus::tests::{client, serve_tls};
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let addr = serve_tls(app).await;
    let strict = super::http_client("graphite", &client(), false).unwrap();
    let err = strict.get(&addr).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let lax = super::http_client("graphite", &client(), true).unwrap();
    assert_eq!(
        lax.get(&addr).send().await.unwrap().text().await.unwrap(),
        "ok"
    );
}
