//! Issue #10 item 5: `--max-concurrent-releases`. Three new revisions arrive at once
//! with a limit of one: one release runs at a time (sampled from the API server all
//! along), the others wait in `Waiting` with their place in the release queue, and
//! all three are promoted in turn.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, wait_phase};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

const ACTIVE: [&str; 4] = ["Progressing", "WaitingPromotion", "Promoting", "Finalising"];

fn canary(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {"port": 8080},
            "analysis": {"interval": "2s", "threshold": 1, "iterations": 2}
        }
    })
}

#[tokio::test]
async fn with_a_limit_of_one_releases_run_one_at_a_time_in_arrival_order() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("queue") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-queue").await?;
    let op = Operator::start(
        &env,
        &ns.name,
        &["--provider", "kubernetes", "--max-concurrent-releases", "1"],
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let names = ["q-a", "q-b", "q-c"];
    let mut apps = Vec::new();
    for name in names {
        let app = SampleApp::new(&ns.name, name, &env.sample_app_command());
        app.deploy(&client).await?;
        apply_json(&client, canary(&ns.name, name)).await?;
        apps.push(app);
    }
    for name in names {
        wait_phase(&api, name, "Initialized", Duration::from_secs(90), &op).await?;
    }
    for app in &mut apps {
        *app = app.clone().version("v2");
        release(&client, app).await?;
    }

    // Sample every Canary until all are promoted again.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut max_active = 0;
    let mut started: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut queued_seen: BTreeMap<&str, String> = BTreeMap::new();
    let mut joined: BTreeMap<&str, chrono::DateTime<chrono::FixedOffset>> = BTreeMap::new();
    loop {
        let mut active = 0;
        let mut done = 0;
        for name in names {
            let s = status(&api, name).await?;
            let p = phase(&s);
            if ACTIVE.contains(&p) {
                active += 1;
                started.entry(name).or_insert_with(Instant::now);
            }
            if let Some(reason) = s["holdReason"].as_str()
                && reason.starts_with("release queue")
            {
                assert_eq!(p, "Waiting", "a queued release is Waiting: {s}");
                queued_seen
                    .entry(name)
                    .or_insert_with(|| reason.to_string());
                if let Some(t) = s["holdSince"].as_str()
                    && let Ok(t) = chrono::DateTime::parse_from_rfc3339(t)
                {
                    joined.entry(name).or_insert(t);
                }
            }
            if p == "Succeeded" {
                done += 1;
            }
        }
        max_active = max_active.max(active);
        if done == names.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not all promoted in time; started {started:?}, queued {queued_seen:?}\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("max active {max_active}; queued {queued_seen:?}");
    assert_eq!(max_active, 1, "never more than one release at a time");
    assert_eq!(started.len(), 3, "each release ran: {started:?}");
    assert!(
        queued_seen.len() >= 2,
        "two of three waited in the queue with a reason: {queued_seen:?}"
    );
    for reason in queued_seen.values() {
        assert!(
            reason.contains("of 1 release slots"),
            "the reason names the limit: {reason}"
        );
    }
    // Arrival order: those that waited started in the order they joined the queue.
    let mut by_join: Vec<&str> = joined.keys().copied().collect();
    by_join.sort_by_key(|n| joined[n]);
    let mut by_start = by_join.clone();
    by_start.sort_by_key(|n| started[n]);
    assert_eq!(by_start, by_join, "queue order: joined {joined:?}");
    Ok(())
}
