//! End-to-end tests of the local test cluster (`e2e/cluster.sh up`).
//!
//! Each test skips with a message when no cluster is running, unless
//! `SERIN_E2E_REQUIRED=1` (CI), where a missing cluster fails it. Each test uses
//! its own namespace and hostnames and deletes them at the end.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use serin_e2e::load::{LoadSpec, run as run_load};
use serin_e2e::{
    ClusterEnv, SampleApp, TestNamespace, apply_json, list_pods, pod_pid, pod_ready, process_alive,
    prom_query, prom_sum, scale_deployment, wait_deployment_available, wait_for, wait_route_serves,
};

const APP: &str = env!("CARGO_BIN_EXE_serin-sample-app");

fn http() -> reqwest::Client {
    serin_e2e::ensure_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_becomes_available_pods_answer_and_prometheus_scrapes() {
    let Some(env) = ClusterEnv::for_test("deployment_becomes_available") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-deploy")
        .await
        .expect("ns");
    let app = SampleApp::new(&ns.name, "podinfo", APP)
        .replicas(3)
        .version("v7");
    app.deploy(&client).await.expect("deploy");
    wait_deployment_available(&client, &ns.name, "podinfo", 3, Duration::from_secs(60))
        .await
        .expect("deployment available");

    let pods = list_pods(&client, &ns.name, "app=podinfo")
        .await
        .expect("pods");
    assert_eq!(pods.len(), 3, "three pods");
    let http = http();
    let mut ips = std::collections::BTreeSet::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        let subnet = env
            .host_ip
            .rsplit_once('.')
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        assert!(
            ip.starts_with(&format!("{subnet}.")),
            "pod IP {ip} in the pod network {subnet}.0/24"
        );
        ips.insert(ip.clone());
        let body: serde_json::Value = http
            .get(format!("http://{ip}:8080/"))
            .send()
            .await
            .expect("pod answers")
            .json()
            .await
            .expect("json");
        assert_eq!(body["version"], "v7");
        assert_eq!(
            body["pod"],
            name.as_str(),
            "the process at {ip} is pod {name}"
        );
    }
    assert_eq!(ips.len(), 3, "distinct pod IPs");

    // Prometheus scrapes each pod (file_sd kept by the kubelet simulator).
    let q = format!("up{{job=\"pods\",namespace=\"{}\"}} == 1", ns.name);
    wait_for(
        "Prometheus to scrape 3 pods",
        Duration::from_secs(30),
        || {
            let q = q.clone();
            let prom = env.prometheus.clone();
            async move { Ok((prom_query(&prom, &q).await?.len() == 3).then_some(())) }
        },
    )
    .await
    .expect("scraped");
    let q = format!(
        "sum(http_request_duration_seconds_count{{namespace=\"{}\",status=\"200\"}})",
        ns.name
    );
    wait_for(
        "the app's histogram in Prometheus",
        Duration::from_secs(30),
        || {
            let q = q.clone();
            let prom = env.prometheus.clone();
            async move { Ok((prom_sum(&prom, &q).await? >= 3.0).then_some(())) }
        },
    )
    .await
    .expect("histogram scraped");
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_to_zero_stops_every_process() {
    let Some(env) = ClusterEnv::for_test("scaling_to_zero_stops_every_process") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-scale")
        .await
        .expect("ns");
    SampleApp::new(&ns.name, "web", APP)
        .replicas(3)
        .deploy(&client)
        .await
        .expect("deploy");
    wait_deployment_available(&client, &ns.name, "web", 3, Duration::from_secs(60))
        .await
        .expect("available");
    let pods = list_pods(&client, &ns.name, "app=web").await.expect("pods");
    let pids: Vec<i32> = pods.iter().filter_map(pod_pid).collect();
    assert_eq!(pids.len(), 3, "a process per pod: {pids:?}");
    for pid in &pids {
        assert!(process_alive(*pid), "process {pid} runs");
    }

    scale_deployment(&client, &ns.name, "web", 0)
        .await
        .expect("scale");
    wait_for("all pods gone", Duration::from_secs(30), || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            Ok(list_pods(&client, &ns, "app=web")
                .await?
                .is_empty()
                .then_some(()))
        }
    })
    .await
    .expect("pods deleted");
    wait_for("all processes gone", Duration::from_secs(10), || {
        let pids = pids.clone();
        async move { Ok(pids.iter().all(|p| !process_alive(*p)).then_some(())) }
    })
    .await
    .expect("processes stopped");
    wait_deployment_available(&client, &ns.name, "web", 0, Duration::from_secs(20))
        .await
        .expect("deployment at 0");
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_process_is_reported_not_ready_with_restarts() {
    let Some(env) = ClusterEnv::for_test("crashing_process_is_reported_not_ready") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-crash")
        .await
        .expect("ns");
    SampleApp::new(&ns.name, "crashy", APP)
        .env("CRASH", "true")
        .deploy(&client)
        .await
        .expect("deploy");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = wait_for(
        "the crashing pod to show restarts",
        Duration::from_secs(45),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=crashy"))
                    .await?;
                Ok(list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|c| c.first())
                        .is_some_and(|c| c.restart_count >= 2)
                }))
            }
        },
    )
    .await
    .expect("restarts");
    assert!(!pod_ready(&pod), "a crash-looping pod is not Ready");
    let cs = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(!cs.ready);
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1, "the sample app exits 1 on CRASH");
    let d = wait_deployment_available(&client, &ns.name, "crashy", 1, Duration::from_secs(2)).await;
    assert!(d.is_err(), "a crash-looping deployment is not available");
    ns.cleanup().await.expect("cleanup");
}

/// Deploys primary (v1) and canary (v2) behind Services in `ns`.
async fn deploy_pair(client: &kube::Client, ns: &str) {
    SampleApp::new(ns, "primary", APP)
        .version("v1")
        .replicas(2)
        .deploy(client)
        .await
        .expect("primary");
    SampleApp::new(ns, "canary", APP)
        .version("v2")
        .deploy(client)
        .await
        .expect("canary");
    wait_deployment_available(client, ns, "primary", 2, Duration::from_secs(60))
        .await
        .expect("primary available");
    wait_deployment_available(client, ns, "canary", 1, Duration::from_secs(60))
        .await
        .expect("canary available");
}

fn httproute(
    env: &ClusterEnv,
    ns: &str,
    host: &str,
    primary: i32,
    canary: i32,
) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "parentRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}],
            "hostnames": [host],
            "rules": [{"backendRefs": [
                {"group": "", "kind": "Service", "name": "primary", "port": 80, "weight": primary},
                {"group": "", "kind": "Service", "name": "canary", "port": 80, "weight": canary}
            ]}]
        }
    })
}

fn traefik_service(ns: &str, primary: i32, canary: i32) -> serde_json::Value {
    json!({
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TraefikService",
        "metadata": {"name": "app-weighted", "namespace": ns},
        "spec": {"weighted": {"services": [
            {"name": "primary", "port": 80, "weight": primary},
            {"name": "canary", "port": 80, "weight": canary}
        ]}}
    })
}

fn ingress_route(ns: &str, host: &str) -> serde_json::Value {
    json!({
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRoute",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "entryPoints": ["web"],
            "routes": [{
                "match": format!("Host(`{host}`)"),
                "kind": "Rule",
                "services": [{"name": "app-weighted", "kind": "TraefikService"}]
            }]
        }
    })
}

/// Sends 1000 requests and checks the canary share is 20 % ± 5 points.
async fn assert_split(
    env: &ClusterEnv,
    host: &str,
    canary_share: f64,
) -> serin_e2e::load::LoadReport {
    let r = run_load(&LoadSpec::new(&env.gateway).host(host).requests(1000, 250.0))
        .await
        .expect("load");
    eprintln!(
        "{host}: {} responses, by version {:?}, by status {:?}",
        r.responses, r.by_version, r.by_status
    );
    assert_eq!(
        r.responses, 1000,
        "every request answered: {:?}",
        r.sample_errors
    );
    assert_eq!(r.by_status.get(&200), Some(&1000), "all 200");
    assert_eq!(r.count("v1") + r.count("v2"), 1000, "only v1 and v2 answer");
    let share = r.version_share("v2");
    assert!(
        (share - canary_share).abs() <= 0.05,
        "canary share {share:.3} not within 5 points of {canary_share}"
    );
    r
}

/// After a weight change to 0/100 at `t0`, measures how long until 20
/// consecutive responses all come from v2.
async fn time_until_all_canary(env: &ClusterEnv, host: &str, t0: Instant) -> Duration {
    wait_for(
        "the weight change to take effect",
        Duration::from_secs(10),
        || async {
            let r = run_load(&LoadSpec::new(&env.gateway).host(host).requests(20, 400.0)).await?;
            Ok((r.count("v2") == 20).then_some(()))
        },
    )
    .await
    .expect("weight change took effect");
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_weights_split_real_traffic() {
    let Some(env) = ClusterEnv::for_test("httproute_weights_split_real_traffic") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-httproute")
        .await
        .expect("ns");
    deploy_pair(&client, &ns.name).await;
    let host = format!("{}.e2e.test", ns.name);
    apply_json(&client, httproute(&env, &ns.name, &host, 80, 20))
        .await
        .expect("httproute");
    wait_route_serves(&env.gateway, &host, &["v1", "v2"], Duration::from_secs(30))
        .await
        .expect("route serves");
    assert_split(&env, &host, 0.20).await;

    let t0 = Instant::now();
    apply_json(&client, httproute(&env, &ns.name, &host, 0, 100))
        .await
        .expect("weight change");
    let took = time_until_all_canary(&env, &host, t0).await;
    eprintln!("HTTPRoute weight change took effect in {took:?}");
    assert!(
        took <= Duration::from_secs(5),
        "weight change took {took:?}"
    );
    assert_split(&env, &host, 1.0).await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefikservice_weights_split_real_traffic() {
    let Some(env) = ClusterEnv::for_test("traefikservice_weights_split_real_traffic") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-traefiksvc")
        .await
        .expect("ns");
    deploy_pair(&client, &ns.name).await;
    let host = format!("{}.e2e.test", ns.name);
    apply_json(&client, traefik_service(&ns.name, 80, 20))
        .await
        .expect("traefikservice");
    apply_json(&client, ingress_route(&ns.name, &host))
        .await
        .expect("ingressroute");
    wait_route_serves(&env.gateway, &host, &["v1", "v2"], Duration::from_secs(30))
        .await
        .expect("route serves");
    assert_split(&env, &host, 0.20).await;

    let t0 = Instant::now();
    apply_json(&client, traefik_service(&ns.name, 0, 100))
        .await
        .expect("weight change");
    let took = time_until_all_canary(&env, &host, t0).await;
    eprintln!("TraefikService weight change took effect in {took:?}");
    assert!(
        took <= Duration::from_secs(5),
        "weight change took {took:?}"
    );
    assert_split(&env, &host, 1.0).await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_split_matches_load_generator_counts() {
    let Some(env) = ClusterEnv::for_test("promql_split_matches_load_generator_counts") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-promsplit")
        .await
        .expect("ns");
    deploy_pair(&client, &ns.name).await;
    let host = format!("{}.e2e.test", ns.name);
    apply_json(&client, httproute(&env, &ns.name, &host, 70, 30))
        .await
        .expect("httproute");
    // Warm-up creates both per-service series in Traefik; then stay quiet long
    // enough that the measured window holds only the load below.
    wait_route_serves(&env.gateway, &host, &["v1", "v2"], Duration::from_secs(30))
        .await
        .expect("route serves");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = run_load(
        &LoadSpec::new(&env.gateway)
            .host(&host)
            .requests(1000, 250.0),
    )
    .await
    .expect("load");
    assert_eq!(r.responses, 1000, "{:?}", r.sample_errors);
    let gen_share = r.version_share("v2");

    let sel_all = format!(
        "traefik_service_requests_total{{service=~\"{}-(primary|canary)-.*\"}}",
        ns.name
    );
    let sel_canary = format!(
        "traefik_service_requests_total{{service=~\"{}-canary-.*\"}}",
        ns.name
    );
    // Counter deltas since `before`, computed by Prometheus.
    let measured = wait_for(
        "Prometheus to have scraped all 1000 requests",
        Duration::from_secs(20),
        || {
            let (sel_all, sel_canary, prom) =
                (sel_all.clone(), sel_canary.clone(), env.prometheus.clone());
            async move {
                let off = format!("{}ms", before.elapsed().as_millis());
                // `or vector(0)`: a series born inside the window counts from 0.
                let total_q =
                    format!("sum({sel_all}) - (sum({sel_all} offset {off}) or vector(0))");
                let share_q = format!(
                    "(sum({sel_canary}) - (sum({sel_canary} offset {off}) or vector(0))) / ({total_q})"
                );
                let total = prom_sum(&prom, &total_q).await?;
                if total < 1000.0 {
                    return Ok(None);
                }
                let share = prom_sum(&prom, &share_q).await?;
                Ok(Some((total, share)))
            }
        },
    )
    .await;
    let (total, share) = match measured {
        Ok(v) => v,
        Err(e) => {
            let now = prom_query(&env.prometheus, &sel_all).await;
            panic!("{e:#}; series now: {now:?}; load generator: {r:?}");
        }
    };
    eprintln!(
        "load generator: v2 share {gen_share:.4} of {}; PromQL: share {share:.4} of {total}",
        r.responses
    );
    assert!(
        (total - 1000.0).abs() < 1.0,
        "Prometheus counted {total} requests, the generator 1000"
    );
    assert!(
        (share - gen_share).abs() <= 0.02,
        "PromQL share {share:.4} vs load generator {gen_share:.4}"
    );
    assert!(
        (share - 0.30).abs() <= 0.05,
        "PromQL share {share:.4} vs weight 30 %"
    );
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_rbac_rights_is_refused() {
    let Some(env) = ClusterEnv::for_test("token_without_rbac_rights_is_refused") else {
        return;
    };
    assert!(!env.user_token.is_empty(), "SERIN_E2E_USER_TOKEN set");
    let admin = env.client().await.expect("client");
    let ns = TestNamespace::create(&admin, "e2e-rbac").await.expect("ns");
    let user = env
        .client_with_token(&env.user_token)
        .await
        .expect("user client");
    let pods: Api<Pod> = Api::namespaced(user.clone(), &ns.name);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "refused with 403: {s:?}"),
        other => panic!("expected 403 for a user without rights, got {other:?}"),
    }
    // A bogus token is not a user at all.
    let anon = env.client_with_token("not-a-token").await.expect("client");
    match Api::<Pod>::namespaced(anon, &ns.name)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("expected 401 for an unknown token, got {other:?}"),
    }
    // Granting a Role makes the same token work: RBAC, not the token, decided.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader", "namespace": ns.name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice-reads-pods", "namespace": ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    });
    apply_json(&admin, role).await.expect("role");
    apply_json(&admin, binding).await.expect("binding");
    wait_for("the RoleBinding to apply", Duration::from_secs(10), || {
        let pods = pods.clone();
        async move { Ok(pods.list(&ListParams::default()).await.ok().map(|_| ())) }
    })
    .await
    .expect("granted");
    // Still nothing outside that namespace.
    let other: Api<Pod> = Api::namespaced(user, "default");
    assert!(matches!(
        other.list(&ListParams::default()).await,
        Err(kube::Error::Api(s)) if s.code == 403
    ));
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_decide_readiness_and_restarts() {
    let Some(env) = ClusterEnv::for_test("probes_decide_readiness_and_restarts") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-probes")
        .await
        .expect("ns");
    // Runs, but its readiness probe fails: Running, not Ready, not an endpoint.
    SampleApp::new(&ns.name, "notready", APP)
        .env("READY", "false")
        .deploy(&client)
        .await
        .expect("notready");
    // Its liveness probe fails: the simulator restarts it though it never exits.
    SampleApp::new(&ns.name, "unhealthy", APP)
        .env("HEALTHY", "false")
        .liveness(true)
        .deploy(&client)
        .await
        .expect("unhealthy");

    // Its startup probe never passes: never started, never ready, restarted.
    SampleApp::new(&ns.name, "nostart", APP)
        .env("READY", "false")
        .startup_probe("/readyz")
        .deploy(&client)
        .await
        .expect("nostart");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let notready = wait_for("the not-ready pod to run", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=notready"))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && pod_pid(p).is_some()
            }))
        }
    })
    .await
    .expect("running");
    // Give the readiness probe several periods: it must stay not ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = pods
        .get(notready.metadata.name.as_deref().unwrap())
        .await
        .expect("pod");
    assert!(
        !pod_ready(&p),
        "readinessProbe failing: pod must not be Ready"
    );
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let eps: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), &ns.name);
    let ep = eps.get("notready").await.expect("endpoints");
    let subsets = ep.subsets.unwrap_or_default();
    let ready: Vec<_> = subsets
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .collect();
    let not_ready: Vec<_> = subsets
        .iter()
        .flat_map(|s| s.not_ready_addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    assert!(ready.is_empty(), "no ready endpoint: {ready:?}");
    assert_eq!(not_ready, vec![ip.clone()], "listed as not ready");
    // The process itself answers: only the probe keeps it out.
    let resp = http()
        .get(format!("http://{ip}:8080/readyz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 503);

    let restarted = wait_for("the liveness restart", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=unhealthy"))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .is_some_and(|c| c.restart_count >= 1)
            }))
        }
    })
    .await
    .expect("liveness restart");
    let cs = &restarted
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(
        cs.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "lastState.terminated after a liveness kill"
    );

    let nostart = wait_for("the startup-probe restart", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=nostart"))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .is_some_and(|c| c.restart_count >= 1)
            }))
        }
    })
    .await
    .expect("startup probe restart");
    let cs = &nostart
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(cs.started, Some(false), "startup probe never passed");
    assert!(!pod_ready(&nostart));
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_secret_values_reach_the_process() {
    let Some(env) = ClusterEnv::for_test("configmap_and_secret_values_reach_the_process") else {
        return;
    };
    let client = env.client().await.expect("client");
    let ns = TestNamespace::create(&client, "e2e-config")
        .await
        .expect("ns");
    let cm = |msg: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "app-config", "namespace": ns.name},
               "data": {"MESSAGE": msg, "LATENCY_MS": "0"}})
    };
    apply_json(&client, cm("hello-1")).await.expect("configmap");
    apply_json(
        &client,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "app-secret", "namespace": ns.name},
               "stringData": {"version": "v-secret"}}),
    )
    .await
    .expect("secret");
    SampleApp::new(&ns.name, "cfg", APP)
        .env_from_json(json!({"configMapRef": {"name": "app-config"}}))
        .env_json(json!({"name": "VERSION", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "version"}}}))
        .deploy(&client)
        .await
        .expect("deploy");
    wait_deployment_available(&client, &ns.name, "cfg", 1, Duration::from_secs(60))
        .await
        .expect("available");
    let answer = |client: kube::Client, ns: String| async move {
        let pods = list_pods(&client, &ns, "app=cfg").await?;
        let ready: Vec<_> = pods
            .iter()
            .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        if ready.len() != 1 || pods.len() != 1 {
            return Ok(None);
        }
        let ip = ready[0]
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let body: serde_json::Value = http()
            .get(format!("http://{ip}:8080/"))
            .send()
            .await?
            .json()
            .await?;
        Ok(Some(body))
    };
    let body = wait_for("the pod to answer", Duration::from_secs(20), || {
        answer(client.clone(), ns.name.clone())
    })
    .await
    .expect("answer");
    assert_eq!(body["message"], "hello-1", "envFrom configMapRef");
    assert_eq!(
        body["version"], "v-secret",
        "secretKeyRef (VERSION from env wins over the default)"
    );

    // A ConfigMap change plus a template change (what a config-tracking
    // operator does) gives a process with the new value.
    apply_json(&client, cm("hello-2"))
        .await
        .expect("configmap update");
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    deps.patch(
        "cfg",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"serin.dev/config-hash": "2"}}}}})),
    )
    .await
    .expect("rollout");
    wait_for(
        "the new process to answer with the new message",
        Duration::from_secs(45),
        || {
            let f = answer(client.clone(), ns.name.clone());
            async move { Ok(f.await?.filter(|b| b["message"] == "hello-2")) }
        },
    )
    .await
    .expect("new message");
    ns.cleanup().await.expect("cleanup");
}
