//! Flagger compatibility: every Flagger `flagger.app/v1beta1` example in
//! `e2e/testdata/flagger/` must be accepted by Serin with only its `apiVersion`
//! changed to `serin.dev/v1beta1`.
//!
//! - Without a cluster: the examples deserialize into Serin's types without losing a
//!   field, resolve to the expected `Settings` (or a clear error for providers Serin
//!   does not route for), and Serin's CRD schema accepts every field Flagger's does.
//! - With a cluster: each example is created on the real API server and read back;
//!   the stored `spec` must equal the sent one, so no field is pruned by the schema.
//!   Each file also passes `kubectl apply` with client-side validation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;
use serin::crd::{AlertProvider, Canary, MetricTemplate, Settings, SpecError, Strategy};

const FLAGGER_API_VERSION: &str = "flagger.app/v1beta1";
const SERIN_API_VERSION: &str = "serin.dev/v1beta1";

/// One YAML document of the examples.
struct Example {
    file: String,
    value: Value,
}

impl Example {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn label(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }

    /// The document as a Serin user would apply it: only `apiVersion` changed.
    fn as_serin(&self) -> Value {
        let mut v = self.value.clone();
        v["apiVersion"] = Value::String(SERIN_API_VERSION.into());
        v
    }
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/flagger")
}

/// Every document of every `*.yaml` directly in the testdata folder, in file order.
fn examples() -> Vec<Example> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("reading e2e/testdata/flagger")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("reading an example");
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
            if !value.is_null() {
                out.push(Example {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    out
}

/// Where two JSON values differ, one line a difference, by JSON path. Numbers are
/// compared by value: `99` sent may come back as `99.0` from an `f64` field.
fn json_diff(sent: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => json_diff(va, vb, &p, out),
                    None => out.push(format!("{p}: dropped (sent {va})")),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: added {vb}"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                json_diff(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: sent {a}, got {b}")),
    }
}

fn diff_lines(sent: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    json_diff(sent, got, "spec", &mut out);
    out
}

/// Every key path in a document, arrays written `[]`, e.g.
/// `spec.analysis.webhooks[].metadata.cmd`.
fn key_paths(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn examples_are_flagger_documents_covering_the_documented_fields() {
    let all = examples();
    assert!(all.len() >= 20, "only {} examples", all.len());
    let mut seen = BTreeSet::new();
    for ex in &all {
        assert_eq!(
            ex.value["apiVersion"],
            FLAGGER_API_VERSION,
            "{}: examples must be written for Flagger",
            ex.label()
        );
        assert!(
            matches!(ex.kind(), "Canary" | "MetricTemplate" | "AlertProvider"),
            "{}: unexpected kind",
            ex.label()
        );
        assert!(
            seen.insert((ex.kind().to_string(), ex.name().to_string())),
            "{}: duplicate name (the cluster test creates all in one namespace)",
            ex.label()
        );
    }

    // The examples are the compatibility contract: these fields must each be
    // exercised somewhere, so that removing an example cannot silently narrow it.
    let mut paths = BTreeSet::new();
    for ex in &all {
        key_paths(&ex.value, "", &mut paths);
    }
    let wanted = [
        "spec.service.match[].headers",
        "spec.service.retries.retryOn",
        "spec.service.headers.request.add",
        "spec.service.headers.response.remove",
        "spec.service.corsPolicy.allowOrigins[].regex",
        "spec.service.trafficPolicy.tls.mode",
        "spec.service.trafficPolicy.loadBalancer.simple",
        "spec.service.trafficPolicy.loadBalancer.consistentHash",
        "spec.service.gateways",
        "spec.service.hosts",
        "spec.service.rewrite.uri",
        "spec.service.rewrite.type",
        "spec.service.timeout",
        "spec.service.gatewayRefs[].sectionName",
        "spec.service.mirror[].backendRef.port",
        "spec.service.primary.labels",
        "spec.service.canary.annotations",
        "spec.service.apex.labels",
        "spec.service.unmanagedMetadata.labels",
        "spec.service.unmanagedMetadata.annotations",
        "spec.service.portDiscovery",
        "spec.service.targetPort",
        "spec.service.meshName",
        "spec.service.backends",
        "spec.ingressRef.kind",
        "spec.upstreamRef.namespace",
        "spec.routeRef.kind",
        "spec.autoscalerRef.primaryScalerReplicas.minReplicas",
        "spec.autoscalerRef.primaryScalerReplicas.maxReplicas",
        "spec.autoscalerRef.primaryScalerQueries",
        "spec.progressDeadlineSeconds",
        "spec.skipAnalysis",
        "spec.revertOnDeletion",
        "spec.suspend",
        "spec.analysis.iterations",
        "spec.analysis.mirror",
        "spec.analysis.mirrorWeight",
        "spec.analysis.stepWeights",
        "spec.analysis.stepWeightPromotion",
        "spec.analysis.match[].headers",
        "spec.analysis.sessionAffinity.cookieName",
        "spec.analysis.metrics[].thresholdRange.min",
        "spec.analysis.metrics[].templateRef.namespace",
        "spec.analysis.metrics[].templateVariables",
        "spec.analysis.metrics[].query",
        "spec.analysis.alerts[].providerRef.name",
        "spec.analysis.webhooks[].metadata",
        "spec.analysis.webhooks[].muteAlert",
        "spec.provider.headers",
        "spec.provider.secretRef.name",
        "spec.provider.insecureSkipVerify",
        "spec.channel",
        "spec.username",
        "spec.proxy",
        "spec.secretRef.name",
    ];
    let missing: Vec<_> = wanted.iter().filter(|p| !paths.contains(**p)).collect();
    assert!(missing.is_empty(), "no example uses {missing:?}");

    let canaries = || all.iter().filter(|e| e.kind() == "Canary");
    let hook_types: BTreeSet<&str> = canaries()
        .flat_map(|c| {
            c.value["spec"]["analysis"]["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .map(|w| w["type"].as_str().unwrap_or("(unset)"))
        .collect();
    let want_hooks = BTreeSet::from([
        "(unset)",
        "confirm-rollout",
        "pre-rollout",
        "rollout",
        "confirm-traffic-increase",
        "confirm-promotion",
        "post-rollout",
        "rollback",
        "event",
    ]);
    assert_eq!(hook_types, want_hooks, "webhook types used by the examples");
    let targets: BTreeSet<&str> = canaries()
        .filter_map(|c| c.value["spec"]["targetRef"]["kind"].as_str())
        .collect();
    assert!(targets.contains("Deployment") && targets.contains("DaemonSet"));
}

/// What `Settings::from_spec` must make of each example Canary.
#[derive(Debug)]
enum Expect {
    Canary(Vec<u32>, Option<u32>),
    AbTesting(u32),
    BlueGreen(u32, bool),
    Error(SpecError),
}

fn expectations() -> BTreeMap<&'static str, Expect> {
    let unknown = |p: &str| Expect::Error(SpecError::UnknownProvider(p.into()));
    BTreeMap::from([
        ("podinfo", Expect::Canary(vec![10, 20, 30, 40, 50], None)),
        ("abtest", Expect::AbTesting(10)),
        ("mirrored", Expect::BlueGreen(10, true)),
        ("bluegreen", Expect::BlueGreen(10, false)),
        (
            "linkerd-app",
            Expect::Canary((1..=10).map(|i| i * 5).collect(), None),
        ),
        (
            "gwapi",
            Expect::Canary(vec![1, 5, 10, 25, 50, 80], Some(25)),
        ),
        (
            "nginx-app",
            Expect::Canary((1..=10).map(|i| i * 5).collect(), None),
        ),
        ("nginx-ab", Expect::AbTesting(10)),
        (
            "traefik-app",
            Expect::Canary((1..=10).map(|i| i * 5).collect(), None),
        ),
        ("node-agent", Expect::BlueGreen(5, false)),
        ("keda-app", Expect::Canary(vec![10, 20, 30, 40, 50], None)),
        ("smi-app", Expect::Canary(vec![5, 10, 25, 50], None)),
        ("contour-app", unknown("contour")),
        ("gloo-app", unknown("gloo")),
        ("appmesh-app", unknown("appmesh:v1beta2")),
        // The target kind is checked before the provider, and a Knative Service is
        // not a workload Serin can copy: that is the first (and clearer) error.
        (
            "knative-app",
            Expect::Error(SpecError::UnsupportedTargetKind("Service".into())),
        ),
        ("apisix-app", unknown("apisix")),
        ("skipper-app", unknown("skipper")),
        ("kuma-app", unknown("kuma")),
        ("osm-app", unknown("osm")),
    ])
}

#[test]
fn examples_deserialize_into_serin_types_without_loss() {
    for ex in examples() {
        let doc = ex.as_serin();
        let spec = &doc["spec"];
        // Serializing the typed spec back must give the same document: a field the
        // Rust types do not know would be invisible to the operator.
        let back = match ex.kind() {
            "Canary" => {
                let c: Canary = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", ex.label()));
                serde_json::to_value(&c.spec).unwrap()
            }
            "MetricTemplate" => {
                let t: MetricTemplate = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", ex.label()));
                serde_json::to_value(&t.spec).unwrap()
            }
            "AlertProvider" => {
                let a: AlertProvider = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", ex.label()));
                serde_json::to_value(&a.spec).unwrap()
            }
            other => panic!("{}: unexpected kind {other}", ex.label()),
        };
        let diff = diff_lines(spec, &back);
        assert!(diff.is_empty(), "{}:\n{}", ex.label(), diff.join("\n"));
    }
}

#[test]
fn example_canaries_resolve_like_flagger() {
    let mut want = expectations();
    for ex in examples().into_iter().filter(|e| e.kind() == "Canary") {
        let canary: Canary = serde_json::from_value(ex.as_serin()).unwrap();
        let expect = want
            .remove(ex.name())
            .unwrap_or_else(|| panic!("{}: add an expectation for it", ex.label()));
        let got = Settings::from_spec(&canary.spec, "kubernetes");
        match (&expect, got) {
            (Expect::Error(e), Err(got)) => {
                assert_eq!(&got, e, "{}", ex.label());
                // One readable line that names the offending value.
                let msg = got.to_string();
                assert!(!msg.contains('\n'), "{msg}");
                let named = canary.spec.provider.clone().unwrap_or_default();
                assert!(
                    msg.contains(&named) || msg.contains(&canary.spec.target_ref.kind),
                    "{}: {msg}",
                    ex.label()
                );
            }
            (Expect::Error(e), Ok(s)) => {
                panic!("{}: expected {e:?}, resolved to {s:?}", ex.label())
            }
            (_, Err(e)) => panic!("{}: expected {expect:?}, got error {e}", ex.label()),
            (_, Ok(s)) => {
                let ok = match (&expect, &s.strategy) {
                    (
                        Expect::Canary(w, p),
                        Strategy::Canary {
                            weights,
                            step_weight_promotion,
                            ..
                        },
                    ) => w == weights && p == step_weight_promotion,
                    (Expect::AbTesting(n), Strategy::AbTesting { iterations }) => n == iterations,
                    (Expect::BlueGreen(n, m), Strategy::BlueGreen { iterations, mirror }) => {
                        n == iterations && m == mirror
                    }
                    _ => false,
                };
                assert!(
                    ok,
                    "{}: expected {expect:?}, got {:?}",
                    ex.label(),
                    s.strategy
                );
                // The lifecycle switches and deadline are read, not defaulted over.
                let spec = &canary.spec;
                assert_eq!(s.skip_analysis, spec.skip_analysis.unwrap_or(false));
                assert_eq!(s.suspend, spec.suspend.unwrap_or(false));
                // Serin's one departure: unset means revert (see the migration notes).
                assert_eq!(
                    s.revert_on_deletion,
                    spec.revert_on_deletion.unwrap_or(true)
                );
                if let Some(secs) = spec.progress_deadline_seconds {
                    assert_eq!(s.progress_deadline, Duration::from_secs(secs as u64));
                }
            }
        }
    }
    assert!(want.is_empty(), "no example for {:?}", want.keys());
}

/// Parses one CRD's v1beta1 schema out of a multi-document CRD stream, by kind.
fn crd_schemas(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| {
            let kind = d["spec"]["names"]["kind"].as_str().unwrap().to_string();
            let version = d["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "v1beta1")
                .unwrap_or_else(|| panic!("{kind}: no v1beta1"));
            (kind, version["schema"]["openAPIV3Schema"].clone())
        })
        .collect()
}

/// Fields Flagger requires at a schema node: its own `required`, plus those every
/// `oneOf` branch requires.
fn effective_required(s: &Value) -> BTreeSet<String> {
    let strs = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut req = strs(&s["required"]);
    if let Some(branches) = s["oneOf"].as_array() {
        let mut common: Option<BTreeSet<String>> = None;
        for b in branches {
            let r = strs(&b["required"]);
            common = Some(match common {
                None => r,
                Some(c) => c.intersection(&r).cloned().collect(),
            });
        }
        req.extend(common.unwrap_or_default());
    }
    req
}

/// Walks Flagger's schema node `f` alongside Serin's `s` and reports anything valid
/// for Flagger that Serin would prune or reject.
fn check_schema(path: &str, f: &Value, s: &Value, problems: &mut Vec<String>) {
    if s["x-kubernetes-preserve-unknown-fields"] == true {
        // Serin keeps the subtree as written (e.g. trafficPolicy, webhook metadata).
        return;
    }
    let (ft, st) = (f["type"].as_str(), s["type"].as_str());
    // Flagger types counts (weights, thresholds, seconds) as `number`; Serin as
    // `integer`. Every documented value is whole, so only fractions are refused.
    let compatible = ft.is_none() || ft == st || (ft == Some("number") && st == Some("integer"));
    if !compatible {
        problems.push(format!("{path}: Flagger type {ft:?}, Serin {st:?}"));
    }
    if let Some(allowed) = s["enum"].as_array() {
        for v in f["enum"].as_array().into_iter().flatten() {
            if !allowed.contains(v) {
                problems.push(format!("{path}: Serin's enum lacks {v}"));
            }
        }
        if f["enum"].is_null() {
            problems.push(format!(
                "{path}: Serin restricts to {allowed:?}, Flagger does not"
            ));
        }
    }
    let extra: Vec<_> = effective_required(s)
        .difference(&effective_required(f))
        .cloned()
        .collect();
    if !extra.is_empty() {
        problems.push(format!("{path}: Serin also requires {extra:?}"));
    }
    if let Some(props) = f["properties"].as_object() {
        for (k, fp) in props {
            match s["properties"].get(k) {
                Some(sp) => check_schema(&format!("{path}.{k}"), fp, sp, problems),
                None => problems.push(format!("{path}.{k}: not in Serin's schema (pruned)")),
            }
        }
    }
    if !f["items"].is_null() {
        // Flagger writes `mirror`'s `required: [backendRef]` on the array rather than
        // on its items; it means the items.
        let mut items = f["items"].clone();
        if !f["required"].is_null() && items["required"].is_null() {
            items["required"] = f["required"].clone();
        }
        check_schema(&format!("{path}[]"), &items, &s["items"], problems);
    }
    if f["additionalProperties"].is_object() {
        check_schema(
            &format!("{path}{{}}"),
            &f["additionalProperties"],
            &s["additionalProperties"],
            problems,
        );
    }
}

#[test]
fn serin_schema_accepts_everything_flaggers_does() {
    let text = std::fs::read_to_string(testdata().join("reference/flagger-v1beta1-crd.yaml"))
        .expect("reading Flagger's CRDs");
    let flagger_docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("Flagger CRD YAML"))
        .collect();
    let flagger = crd_schemas(flagger_docs);
    let serin_docs = serin::crd::all_crds()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let serin = crd_schemas(serin_docs);
    assert_eq!(
        flagger.keys().collect::<Vec<_>>(),
        serin.keys().collect::<Vec<_>>(),
        "the same kinds"
    );
    let mut problems = Vec::new();
    for (kind, f) in &flagger {
        // Only the spec: status is written by the operator, not by users.
        check_schema(
            &format!("{kind}.spec"),
            &f["properties"]["spec"],
            &serin[kind]["properties"]["spec"],
            &mut problems,
        );
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The API resource of a Serin kind.
fn api_resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "Canary" => "canaries",
        "MetricTemplate" => "metrictemplates",
        "AlertProvider" => "alertproviders",
        other => panic!("unexpected kind {other}"),
    };
    let gvk = GroupVersionKind::gvk(serin::crd::GROUP, serin::crd::VERSION, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

/// Creates one example and returns how the stored spec differs from the sent one.
async fn round_trip(client: &Client, ns: &str, ex: &Example) -> Result<Vec<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &api_resource(ex.kind()));
    let mut doc = ex.as_serin();
    doc["metadata"]["namespace"] = Value::String(ns.into());
    let obj: DynamicObject = serde_json::from_value(doc.clone())?;
    // The CRDs were just applied: until the API server serves them, creation 404s.
    // Any other answer is final, so it ends the wait rather than being retried.
    let created = serin_e2e::wait_for(
        &format!("{} to be served", ex.label()),
        Duration::from_secs(30),
        || {
            let (api, obj) = (api.clone(), obj.clone());
            async move {
                match api.create(&PostParams::default(), &obj).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    other => Ok(Some(other)),
                }
            }
        },
    )
    .await?;
    created.with_context(|| format!("{}: rejected by the API server", ex.label()))?;
    let stored = api.get(ex.name()).await?;
    Ok(diff_lines(&doc["spec"], &stored.data["spec"]))
}

/// Applies one example file with kubectl as a user would, server-side dry run with
/// client-side validation on: kubectl 1.20 validates against the published OpenAPI
/// and has refused schemas the API server itself accepts (a null enum value).
async fn kubectl_dry_run(env: &serin_e2e::ClusterEnv, ns: &str, file: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let text = std::fs::read_to_string(file)?.replace(FLAGGER_API_VERSION, SERIN_API_VERSION);
    let mut child = tokio::process::Command::new("kubectl")
        .args([
            "apply",
            "--dry-run=server",
            "--validate=true",
            "-n",
            ns,
            "-f",
            "-",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    let mut stdin = child.stdin.take().context("kubectl stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{}: kubectl apply: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[tokio::test]
async fn flagger_examples_round_trip_through_the_api_server() -> Result<()> {
    let Some(env) = serin_e2e::ClusterEnv::for_test("flagger_examples_round_trip") else {
        return Ok(());
    };
    serin_e2e::operator::install(&env).await?;
    let client = env.client().await?;
    let ns = serin_e2e::TestNamespace::create(&client, "flagger-compat").await?;
    let mut failures = Vec::new();
    let mut files: Vec<String> = examples().into_iter().map(|e| e.file).collect();
    files.dedup();
    for file in &files {
        if let Err(e) = kubectl_dry_run(&env, &ns.name, &testdata().join(file)).await {
            failures.push(format!("{e:#}"));
        }
    }
    let all = examples();
    for ex in &all {
        match round_trip(&client, &ns.name, ex).await {
            Ok(diff) if diff.is_empty() => {}
            Ok(diff) => failures.push(format!("{}:\n  {}", ex.label(), diff.join("\n  "))),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    ns.cleanup().await?;
    if !failures.is_empty() {
        bail!(
            "{} problems with {} examples on the API server:\n{}",
            failures.len(),
            all.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
