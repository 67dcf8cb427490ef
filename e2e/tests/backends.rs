//! MetricTemplates of type `graphite` and `influxdb` against the real servers
//! (Debian's graphite-carbon + graphite-web, and InfluxDB 1.x with authentication):
//! the test writes the data, the operator reads it back through the template, and
//! the value decides the release: promoted on a good value, rolled back on a bad one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::Api;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use serin_e2e::backends::{Graphite, InfluxDb};
use serin_e2e::canary::{canaries, phase, release, status};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

/// The value the feeder writes every second, as f64 bits.
struct Feed(Arc<AtomicU64>);

impl Feed {
    fn new(v: f64) -> Feed {
        Feed(Arc::new(AtomicU64::new(v.to_bits())))
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// A blue/green Canary (no data plane needed) gated by one templated metric.
fn canary(ns: &str, template: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 8080},
            "analysis": {
                "interval": "4s", "threshold": 1, "iterations": 2,
                "metrics": [{
                    "name": "success",
                    "templateRef": {"name": template},
                    "thresholdRange": {"min": 99},
                    "interval": "30s"
                }]
            }
        }
    })
}

/// Follows a release to `Succeeded` or `Failed`; returns the final phase and every
/// value of the `success` check seen on the way, with its verdict.
async fn follow(
    api: &Api<DynamicObject>,
    op: &Operator,
) -> Result<(String, BTreeSet<(String, String)>)> {
    let mut seen = BTreeSet::new();
    let mut started = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(api, "app").await?;
        for c in s["lastAnalysis"].as_array().into_iter().flatten() {
            if c["name"] == "success" {
                seen.insert((
                    c["value"].to_string(),
                    c["verdict"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        let p = phase(&s).to_string();
        started |= p == "Progressing";
        if started && (p == "Succeeded" || p == "Failed") {
            return Ok((p, seen));
        }
        if Instant::now() > deadline {
            bail!("release did not end: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn good_then_bad(
    client: &kube::Client,
    ns: &TestNamespace,
    op: &Operator,
    app: &mut SampleApp,
    feed: &Feed,
) -> Result<()> {
    let api = canaries(client, &ns.name);
    serin_e2e::canary::wait_phase(&api, "app", "Initialized", Duration::from_secs(60), op).await?;
    *app = app.clone().version("v2");
    release(client, app).await?;
    let (end, seen) = follow(&api, op).await?;
    assert_eq!(end, "Succeeded", "{seen:?}\n{}", op.log_tail(30));
    assert!(
        seen.contains(&("99.5".into(), "Pass".into())),
        "the server's value judged: {seen:?}"
    );

    feed.set(42.0);
    *app = app.clone().version("v3");
    release(client, app).await?;
    let (end, seen) = follow(&api, op).await?;
    assert_eq!(end, "Failed", "{seen:?}\n{}", op.log_tail(30));
    assert!(
        seen.contains(&("42.0".into(), "Fail".into()))
            || seen.contains(&("42".into(), "Fail".into())),
        "the bad value judged: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn graphite_template_promotes_a_good_value_and_rolls_back_a_bad_one() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("graphite_backend") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-graphite").await?;
    let graphite = Arc::new(Graphite::start(&env.state_dir, &ns.name).await?);

    // The real client against the real server: a series that does not exist is no
    // data, not zero.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let probe = serin::analysis::backend::graphite::GraphiteClient::new(
        &http,
        &graphite.url,
        None,
        false,
        Duration::from_secs(5),
    )?;
    use serin::analysis::backend::MetricBackend;
    assert_eq!(
        probe.query("target=serin.nothing.here&from=-1min").await?,
        None
    );

    let feed = Feed::new(99.5);
    let path = format!("serin.{}.app.success", ns.name);
    let (g, f, p) = (graphite.clone(), feed.0.clone(), path.clone());
    let feeder = tokio::spawn(async move {
        loop {
            let _ = g.send(&p, f64::from_bits(f.load(Ordering::Relaxed))).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "graphite-success", "namespace": ns.name},
            "spec": {
                "provider": {"type": "graphite", "address": graphite.url},
                // Flagger's form: the render query string, over several lines.
                "query": "target=serin.{{ namespace }}.{{ target }}.success\n&from=-20s"
            }
        }),
    )
    .await?;
    apply_json(&client, canary(&ns.name, "graphite-success")).await?;
    // Graphite answers what carbon has: the query must see the fed value.
    assert!(
        probe
            .query(&format!("target={path}&from=-20s"))
            .await?
            .is_some(),
        "carbon's points reach the render API"
    );
    good_then_bad(&client, &ns, &op, &mut app, &feed).await?;
    feeder.abort();
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn influxdb_template_with_credentials_gates_the_release() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("influxdb_backend") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-influx").await?;
    let influx = Arc::new(InfluxDb::start(&env.state_dir, &ns.name).await?);

    // The real server's refusals reach the check message in its own words.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let creds = |pw: &str| {
        [
            ("username".to_string(), influx.user.as_bytes().to_vec()),
            ("password".to_string(), pw.as_bytes().to_vec()),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    use serin::analysis::backend::MetricBackend;
    use serin::analysis::backend::influxdb::InfluxClient;
    let q = r#"SELECT last("value") FROM "nosuchdb"."autogen"."x""#;
    let good = creds(&influx.password);
    let probe = InfluxClient::new(
        &http,
        &influx.url,
        Some(&good),
        q,
        false,
        Duration::from_secs(5),
    )?;
    let e = probe.query(q).await.expect_err("unknown database");
    assert!(e.to_string().contains("database not found"), "{e}");
    let wrong = creds("not-the-password");
    let probe = InfluxClient::new(
        &http,
        &influx.url,
        Some(&wrong),
        q,
        false,
        Duration::from_secs(5),
    )?;
    let e = probe.query(q).await.expect_err("bad password");
    assert!(e.to_string().contains("401"), "{e}");

    let feed = Feed::new(99.5);
    let (db, f, tag) = (influx.clone(), feed.0.clone(), ns.name.clone());
    let feeder = tokio::spawn(async move {
        loop {
            let v = f64::from_bits(f.load(Ordering::Relaxed));
            let _ = db
                .write(&format!("success,ns={tag},workload=app value={v}"))
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "influx-creds", "namespace": ns.name},
            "stringData": {"username": influx.user, "password": influx.password}
        }),
    )
    .await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "influx-success", "namespace": ns.name},
            "spec": {
                "provider": {
                    "type": "influxdb", "address": influx.url,
                    "secretRef": {"name": "influx-creds"}
                },
                "query": "SELECT last(\"value\") FROM \"serin\".\"autogen\".\"success\" WHERE \"ns\" = '{{ namespace }}' AND \"workload\" = '{{ target }}' AND time > now() - 20s"
            }
        }),
    )
    .await?;
    apply_json(&client, canary(&ns.name, "influx-success")).await?;
    good_then_bad(&client, &ns, &op, &mut app, &feed).await?;
    feeder.abort();
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
