//! Routers make the data plane carry the split the state machine decides. One trait,
//! one file per adapter, chosen by `spec.provider`.
//!
//! Every Canary gets the `kubernetes` router's Services (apex, `-primary`, `-canary`);
//! a mesh or gateway router then adds its own objects on top, as Flagger does.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::ContainerPort;

use crate::crd::{Canary, Provider};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A traffic split. `primary + canary == 100`; `mirror` copies requests to the canary
/// (with `mirror_weight` percent, where the provider supports it) without answering
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    pub primary: u32,
    pub canary: u32,
    pub mirror: bool,
    pub mirror_weight: Option<u32>,
}

impl Routes {
    pub const PRIMARY: Routes = Routes {
        primary: 100,
        canary: 0,
        mirror: false,
        mirror_weight: None,
    };

    pub fn weighted(canary: u32) -> Routes {
        Routes {
            primary: 100u32.saturating_sub(canary),
            canary,
            mirror: false,
            mirror_weight: None,
        }
    }

    /// Weights are checked before any write so that no bad split reaches the data plane.
    pub fn validate(&self) -> Result<(), RouterError> {
        if self.primary > 100 || self.canary > 100 || self.primary + self.canary != 100 {
            return Err(RouterError::InvalidWeights {
                primary: self.primary,
                canary: self.canary,
            });
        }
        if let Some(m) = self.mirror_weight
            && m > 100
        {
            return Err(RouterError::InvalidWeights {
                primary: self.primary,
                canary: m,
            });
        }
        Ok(())
    }
}

/// Whether the data plane reports that it accepted the routing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteStatus {
    Accepted,
    /// The implementation writes no status (Traefik 3.0.4 for HTTPRoute); the reason
    /// is shown in the Canary status.
    Unknown(String),
    NotAccepted(String),
}

/// What routers need from the target workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceInputs {
    /// Label key selecting the target's pods (`app`, `name` or `app.kubernetes.io/name`).
    pub label_key: String,
    /// Its value on the target's (canary) pods; primary pods carry `<value>-primary`.
    pub label_value: String,
    /// Container ports of the target's pod template, for `service.portDiscovery`.
    pub container_ports: Vec<ContainerPort>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{kind}.{group} is not installed on this cluster (provider {provider})")]
    MissingCrd {
        provider: &'static str,
        group: String,
        kind: String,
    },
    #[error("{kind} {namespace}/{name} referenced by the Canary does not exist")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("invalid route: {0}")]
    InvalidRoute(String),
    #[error("invalid weights primary={primary} canary={canary}: each 0..=100, summing to 100")]
    InvalidWeights { primary: u32, canary: u32 },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {source}")]
    Serde {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

impl RouterError {
    /// Short CamelCase reason for the Canary's Ready condition.
    pub fn reason(&self) -> &'static str {
        match self {
            RouterError::MissingCrd { .. } => "RouterCrdMissing",
            RouterError::NotFound { .. } => "RouteReferenceNotFound",
            RouterError::InvalidRoute(_) => "InvalidRoute",
            RouterError::InvalidWeights { .. } => "InvalidWeights",
            RouterError::Kube { .. } | RouterError::Serde { .. } => "RouterError",
        }
    }
}

pub trait Router: Send + Sync {
    /// Creates or updates the routing objects. An in-flight split is kept: only a new
    /// object starts at 100% primary.
    fn reconcile<'a>(
        &'a self,
        canary: &'a Canary,
        inputs: &'a ServiceInputs,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Writes the split (after `Routes::validate`), only if it differs from what is there.
    fn set_routes<'a>(
        &'a self,
        canary: &'a Canary,
        routes: Routes,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Reads the split back from the routing object, the source of truth.
    fn get_routes<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<Routes, RouterError>>;

    /// Whether the data plane accepted the current routing object.
    fn verify<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<RouteStatus, RouterError>>;

    /// On Canary deletion with `revertOnDeletion`: route everything back to the
    /// target's own pods and remove what only Serin needed.
    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>>;
}

/// Which routing API versions this cluster serves, found by discovery at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingApis {
    /// `v1` or `v1beta1` for gateway.networking.k8s.io HTTPRoute, if served.
    pub httproute_version: Option<String>,
    pub grpcroute_version: Option<String>,
    pub istio: bool,
    pub traefik: bool,
    /// SMI split.smi-spec.io versions served.
    pub smi_versions: Vec<String>,
}

/// Builds the router for `provider`. Each returned router owns the apex/primary/canary
/// Services through the embedded kubernetes router.
pub fn router_for(provider: Provider, client: kube::Client, apis: &RoutingApis) -> Box<dyn Router> {
    let _ = (provider, client, apis);
    todo!("implemented by the router adapters")
}
