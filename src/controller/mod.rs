//! The controller: a pure state machine (`machine`) between the code that observes the
//! cluster and the code that acts on it (`reconcile`, `workload`).

pub mod apicount;
pub mod machine;
pub mod queue;
pub mod reconcile;
pub mod status;
pub mod workload;
pub mod written;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{error, info, warn};

use crate::analysis::AnalysisCtx;
use crate::cli::{LogFormat, RunArgs};
use crate::crd::{AlertProvider, Canary, MetricTemplate};
use crate::notify::{GlobalAlerts, Notifier, Severity};
use crate::router::RoutingApis;
use crate::server::{Metrics, ServerState};
use reconcile::{Context, Stores};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API (is KUBECONFIG or in-cluster config set?): {0}")]
    Client(#[source] kube::Error),
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error("leader election: {0}")]
    Lease(String),
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colour only on a terminal: `kubectl logs` and log files show escape codes as
    // text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    init_tracing(args.log_format);
    let metrics = Arc::new(Metrics::new());
    let config = kube::Config::infer().await.map_err(|e| {
        RunError::Startup(format!(
            "no Kubernetes config (KUBECONFIG or in-cluster): {e}"
        ))
    })?;
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(RunError::Client)?
        .with_layer(&apicount::layer(metrics.clone()))
        .build();
    preflight(&client).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let state = ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::server::serve(args.listen, state, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutting down");
            let _ = tx.send(true);
        });
    }

    let lease = if args.leader_elect {
        Some(acquire_leadership(&client, &args, stop_rx.clone()).await?)
    } else {
        None
    };
    if *stop_rx.borrow() {
        return Ok(());
    }

    let result = loop {
        match run_controller(
            client.clone(),
            &args,
            metrics.clone(),
            ready.clone(),
            stop_rx.clone(),
            lease.clone(),
        )
        .await
        {
            // New routing APIs: start over with them, keeping the Lease and the server.
            Ok(Exit::ApisChanged) if !*stop_rx.borrow() => {
                ready.store(false, Ordering::Relaxed);
                continue;
            }
            Ok(_) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        warn!(error = %e, "metrics server stopped with an error");
    }
    result
}

/// Checks at start what the operator depends on, so a missing CRD is one clear line
/// rather than a stream of watch errors.
async fn preflight(client: &Client) -> Result<(), RunError> {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for name in [
        "canaries.serin.dev",
        "metrictemplates.serin.dev",
        "alertproviders.serin.dev",
    ] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(RunError::Startup(format!(
                    "CRD {name} is not installed: kubectl apply -f crds/serin.yaml"
                )));
            }
            // Without rights to read CRDs, the first watch will tell.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                warn!("cannot read CRDs (403); skipping the CRD check");
                return Ok(());
            }
            Err(e) => return Err(RunError::Client(e)),
        }
    }
    Ok(())
}

async fn acquire_leadership(
    client: &Client,
    args: &RunArgs,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::sync::watch::Receiver<bool>, RunError> {
    let ns = args
        .lease_namespace
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .unwrap_or_else(|| "default".into());
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("serin-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "serin-leader")
        .with_namespace(ns.trim())
        .with_identity(identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| RunError::Lease(e.to_string()))?;
    let (mut rx, _task) = manager.watch().await;
    info!(identity, "waiting for leadership");
    loop {
        if *rx.borrow_and_update() {
            info!(identity, "leader");
            return Ok(rx);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err(RunError::Lease("lease manager stopped".into()));
                }
            }
            _ = stop.wait_for(|s| *s) => return Ok(rx),
        }
    }
}

fn store_of<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

fn api_for<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Background tasks of one controller run, aborted when it ends.
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    fn spawn<F>(&mut self, task: F)
    where
        F: std::future::Future + Send + 'static,
    {
        self.0.push(tokio::spawn(async move {
            task.await;
        }));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Why `run_controller` returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Shutdown or lost leadership.
    Stopped,
    /// A routing API appeared after start-up; run again to use it.
    ApisChanged,
}

/// Discovers the routing APIs every `every` and returns (once) when one is served that
/// `known` lacked. The routers and the owned-route caches are built from discovery at
/// start, so a CRD installed later (GitOps applies Serin and a mesh in any order)
/// would otherwise stay `RouterCrdMissing` until someone restarted the pod.
async fn apis_gained(client: Client, known: RoutingApis, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let mut now = crate::router::discover(&client).await;
        now.gateway_features = known.gateway_features.clone();
        let gained = known.gained(&now);
        if !gained.is_empty() {
            info!(
                ?gained,
                "routing APIs now served; restarting the controller to use them"
            );
            return;
        }
    }
}

async fn run_controller(
    client: Client,
    args: &RunArgs,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
    lease: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Exit, RunError> {
    let ns = args.namespace.as_deref();
    let cfg = watcher::Config::default();
    let mut routing = crate::router::discover(&client).await;
    routing.gateway_features = crate::router::capabilities::parse_overrides(&args.gateway_features)
        .map_err(|e| RunError::Startup(format!("--gateway-features: {e}")))?;
    let hpa = workload::discover_hpa_version(&client)
        .await
        .map_err(|e| RunError::Startup(format!("autoscaling API discovery: {e}")))?;
    info!(?routing, ?hpa, "discovered APIs");
    // Everything this run spawns ends with it, so a restart for new APIs leaves no
    // watch of the old run behind.
    let mut tasks = Tasks::default();
    let (gained_tx, mut gained_rx) = tokio::sync::watch::channel(false);
    if args.rediscover_seconds > 0 {
        let (client, known) = (client.clone(), routing.clone());
        let every = std::time::Duration::from_secs(args.rediscover_seconds);
        tasks.spawn(async move {
            apis_gained(client, known, every).await;
            let _ = gained_tx.send(true);
        });
    }

    let controller = Controller::new(api_for::<Canary>(&client, ns), cfg.clone());
    let canaries = controller.store();
    let (deployments, dep_stream) = store_of(api_for::<Deployment>(&client, ns), cfg.clone());
    let (daemonsets, ds_stream) = store_of(api_for::<DaemonSet>(&client, ns), cfg.clone());
    let (configmaps, cm_stream) = store_of(api_for::<ConfigMap>(&client, ns), cfg.clone());
    let (secrets, secret_stream) = store_of(api_for::<Secret>(&client, ns), cfg.clone());
    let (templates, tpl_stream) = store_of(api_for::<MetricTemplate>(&client, ns), cfg.clone());
    let (services, svc_stream) = store_of(api_for::<Service>(&client, ns), cfg.clone());
    let (providers, provider_stream) = store_of(api_for::<AlertProvider>(&client, ns), cfg.clone());

    let secret_source = Arc::new(StoreSecrets(secrets.clone()));
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| RunError::Startup(format!("HTTP client: {e}")))?;
    let mut analysis = AnalysisCtx::new(
        http.clone(),
        args.metrics_server.clone(),
        secret_source.clone(),
        Arc::new(StoreTemplates(templates.clone())),
    );
    analysis.event_webhook = args.event_webhook.clone();
    analysis.metrics_labels = args.metrics_labels;
    let global = match &args.alert_url {
        Some(url) if !url.trim().is_empty() => Some(GlobalAlerts {
            provider_type: args.alert_provider.clone(),
            url: url.clone(),
            severity: Severity::parse(Some(&args.alert_severity))
                .map_err(|e| RunError::Startup(format!("--alert-severity: {e}")))?,
            ..Default::default()
        }),
        _ => None,
    };
    let notifier = Notifier {
        http,
        secrets: secret_source,
        providers: Arc::new(StoreProviders(providers.clone())),
        global,
    };
    let reporter = Reporter {
        controller: "serin".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let owned_routes = owned_route_cache(&client, ns, &routing, &mut tasks);
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: Stores {
            canaries: canaries.clone(),
            deployments: deployments.clone(),
            daemonsets: daemonsets.clone(),
            configmaps: configmaps.clone(),
            secrets: secrets.clone(),
            templates: templates.clone(),
            services: services.clone(),
        },
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        analysis,
        notifier,
        workloads: workload::Workloads::new(client.clone(), hpa),
        routing,
        default_provider: args.provider.clone(),
        synced: ready.clone(),
        confirm: reconcile::ConfirmSettings {
            timeout: std::time::Duration::from_secs(args.route_confirm_seconds),
            probe_url: args.gateway_probe_url.clone(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| RunError::Startup(format!("probe HTTP client: {e}")))?,
        },
        owned_routes,
        written: Default::default(),
        max_releases: args.max_concurrent_releases,
        admission: Default::default(),
    });

    let (c1, c2, c3, c4, c5, c6) = (
        canaries.clone(),
        canaries.clone(),
        canaries.clone(),
        canaries.clone(),
        canaries.clone(),
        canaries.clone(),
    );
    let controller = controller
        .owns_stream(svc_stream)
        .watches_stream(dep_stream, move |d: Deployment| {
            reconcile::canaries_for_workload(
                &c1,
                d.metadata.namespace.clone(),
                d.metadata.name.as_deref().unwrap_or(""),
            )
        })
        .watches_stream(ds_stream, move |d: DaemonSet| {
            reconcile::canaries_for_workload(
                &c2,
                d.metadata.namespace.clone(),
                d.metadata.name.as_deref().unwrap_or(""),
            )
        })
        .watches_stream(cm_stream, move |c: ConfigMap| {
            reconcile::canaries_in_namespace(&c3, c.metadata.namespace.clone())
        })
        .watches_stream(secret_stream, move |s: Secret| {
            reconcile::canaries_in_namespace(&c4, s.metadata.namespace.clone())
        })
        .watches_stream(tpl_stream, move |t: MetricTemplate| {
            reconcile::canaries_in_namespace(&c5, t.metadata.namespace.clone())
        })
        // A Canary refused for a malformed AlertProvider (`invalid_reference`) is
        // looked at again as soon as the provider is fixed.
        .watches_stream(provider_stream, move |p: AlertProvider| {
            reconcile::canaries_in_namespace(&c6, p.metadata.namespace.clone())
        });

    // Ready once every cache has its first full list.
    {
        let ready = ready.clone();
        let stores = ctx.stores.clone();
        tasks.spawn(async move {
            let synced = async {
                wait_ready(&stores.canaries).await;
                wait_ready(&stores.deployments).await;
                wait_ready(&stores.daemonsets).await;
                wait_ready(&stores.configmaps).await;
                wait_ready(&stores.secrets).await;
                wait_ready(&stores.templates).await;
                wait_ready(&stores.services).await;
            };
            synced.await;
            ready.store(true, Ordering::Relaxed);
            info!("caches synced");
        });
    }

    let shutdown = {
        let mut stop = stop.clone();
        let mut lease = lease.clone();
        let mut gained = gained_rx.clone();
        async move {
            let lost = async {
                match lease.as_mut() {
                    Some(l) => {
                        let _ = l.wait_for(|leader| !*leader).await;
                        error!("lost leadership; stopping");
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {},
                _ = lost => {},
                _ = gained.wait_for(|g| *g) => {},
            }
        }
    };
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    if *gained_rx.borrow_and_update() {
        Ok(Exit::ApisChanged)
    } else {
        Ok(Exit::Stopped)
    }
}

/// Waits until `store` has its first full list. kube-runtime's readiness signal keeps
/// one waker, and the Controller waits on the Canary store too, so a lone waiter can
/// miss its wake-up: poll again every half second.
async fn wait_ready<K>(store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(
        std::time::Duration::from_millis(500),
        store.wait_until_ready(),
    )
    .await
    .is_err()
    {}
}

/// Watch caches of the routing objects Serin generates (label
/// `app.kubernetes.io/managed-by: serin`), by resource plural. Istio's only for now:
/// other routers still read before they write.
struct OwnedRoutes {
    stores: Vec<(kube::api::ApiResource, Store<kube::api::DynamicObject>)>,
}

impl crate::router::apply::LiveObjects for OwnedRoutes {
    fn live(
        &self,
        ar: &kube::api::ApiResource,
        namespace: &str,
        name: &str,
    ) -> Option<kube::api::DynamicObject> {
        let (ar, store) = self.stores.iter().find(|(a, _)| {
            a.plural == ar.plural && a.group == ar.group && a.version == ar.version
        })?;
        store
            .get(&reflector::ObjectRef::new_with(name, ar.clone()).within(namespace))
            .map(|o| (*o).clone())
    }
}

fn owned_route_cache(
    client: &Client,
    ns: Option<&str>,
    routing: &crate::router::RoutingApis,
    tasks: &mut Tasks,
) -> Option<Arc<dyn crate::router::apply::LiveObjects>> {
    if !routing.istio {
        return None;
    }
    let version = routing
        .istio_version
        .clone()
        .unwrap_or_else(|| "v1beta1".into());
    let selector = format!(
        "{}={}",
        crate::crd::MANAGED_BY_LABEL,
        crate::crd::MANAGED_BY
    );
    let mut stores = Vec::new();
    for (kind, plural) in [
        ("VirtualService", "virtualservices"),
        ("DestinationRule", "destinationrules"),
    ] {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(crate::router::istio::GROUP, &version, kind),
            plural,
        );
        let api: Api<kube::api::DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let writer = reflector::store::Writer::new(ar.clone());
        let reader = writer.as_reader();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector)),
        )
        .default_backoff()
        .touched_objects();
        // Nothing reconciles on these events: the cache only has to be current when a
        // step compares against it (a stale entry costs one 409 and a GET).
        tasks.spawn(stream.for_each(|_| async {}));
        stores.push((ar, reader));
    }
    Some(Arc::new(OwnedRoutes { stores }))
}

struct StoreSecrets(Store<Secret>);

impl crate::analysis::SecretSource for StoreSecrets {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> crate::router::BoxFuture<
        'a,
        Result<Option<crate::analysis::SecretData>, crate::analysis::AnalysisError>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .get(&reflector::ObjectRef::new(name).within(namespace))
                .map(|s| {
                    s.data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                }))
        })
    }
}

struct StoreProviders(Store<AlertProvider>);

impl crate::notify::ProviderSource for StoreProviders {
    fn get(&self, namespace: &str, name: &str) -> Option<AlertProvider> {
        self.0
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|p| (*p).clone())
    }
}

struct StoreTemplates(Store<MetricTemplate>);

impl crate::analysis::TemplateSource for StoreTemplates {
    fn get(&self, namespace: &str, name: &str) -> Option<MetricTemplate> {
        self.0
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|t| (*t).clone())
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
