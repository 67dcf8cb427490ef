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
    assert_eq!(BackendKind::of("datadog"), None);
}
