//! Alerts to chat systems and generic webhooks (`AlertProvider`).
//!
//! Payloads follow Flagger's notifiers (slack, msteams, discord, rocket, gchat), so
//! existing hooks and bots keep working; `webhook` is Serin's generic JSON POST.
//! Provider addresses are often secrets themselves (a Slack hook URL is a
//! credential): errors name the alert and provider, never the address or token.

mod payload;

use std::sync::Arc;
use std::time::Duration;

use crate::analysis::{AnalysisError, SecretSource};
use crate::crd::{AlertProvider, Canary, CanaryAlert, CheckStatus, Phase};

pub use payload::{Field, Message, render};

/// Default sender name in chat systems (Flagger uses "flagger").
pub const DEFAULT_USERNAME: &str = "serin";
/// Default channel when a provider names none (Flagger's default).
pub const DEFAULT_CHANNEL: &str = "general";
/// Slack's API endpoint, used when a provider has a token but no address.
pub const SLACK_API_URL: &str = "https://slack.com/api/chat.postMessage";
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("severity {0:?} is not one of info, warn, error")]
    BadSeverity(String),
    #[error("AlertProvider {namespace}/{name} not found")]
    MissingProvider { namespace: String, name: String },
    #[error(
        "alert {alert}: provider type {kind:?} is not supported (slack, msteams, discord, rocket, gchat, webhook)"
    )]
    UnsupportedType { alert: String, kind: String },
    #[error(
        "alert {alert}: no address (set spec.address or an `address` key in the provider's Secret)"
    )]
    NoAddress { alert: String },
    #[error("alert {alert}: the address is not a valid http(s) URL")]
    BadAddress { alert: String },
    #[error("alert {alert}: the proxy is not a valid URL")]
    BadProxy { alert: String },
    #[error("alert {alert}: {source}")]
    Secret {
        alert: String,
        #[source]
        source: AnalysisError,
    },
    #[error("alert {alert}: building the HTTP client: {why}")]
    Client { alert: String, why: String },
    #[error("alert {alert}: delivery failed: {why}")]
    Delivery { alert: String, why: String },
    #[error("alert {alert}: the receiver answered HTTP {status}")]
    Status { alert: String, status: u16 },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<NotifyError>),
}

/// How serious an event is. An alert is sent when the event's severity is at least
/// the alert's (`info` alerts get everything, `error` alerts only errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum Severity {
    #[default]
    Info,
    Warn,
    Error,
}

impl Severity {
    /// Flagger's names; empty (or absent) means `info`.
    pub fn parse(s: Option<&str>) -> Result<Severity, NotifyError> {
        match s.map(str::trim).unwrap_or("") {
            "" | "info" => Ok(Severity::Info),
            "warn" | "warning" => Ok(Severity::Warn),
            "error" => Ok(Severity::Error),
            other => Err(NotifyError::BadSeverity(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// Something that happened to a Canary, worth telling people about.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub severity: Severity,
    pub phase: Phase,
    /// One line, e.g. "Rolling back podinfo.test: failed checks threshold reached 1".
    pub message: String,
    /// The check that caused it, with its value and threshold.
    pub failed_check: Option<CheckStatus>,
}

/// Looks up `AlertProvider`s (a reflector store in the operator).
pub trait ProviderSource: Send + Sync {
    fn get(&self, namespace: &str, name: &str) -> Option<AlertProvider>;
}

/// Operator-wide alerting, from flags: used for Canaries that declare no `alerts`.
#[derive(Clone, Default, PartialEq)]
pub struct GlobalAlerts {
    /// `slack`, `msteams`, `discord`, `rocket`, `gchat` or `webhook`.
    pub provider_type: String,
    pub url: String,
    /// Lowest severity sent.
    pub severity: Severity,
    pub username: Option<String>,
    pub channel: Option<String>,
    pub proxy: Option<String>,
}

impl std::fmt::Debug for GlobalAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL is a credential for most chat systems.
        f.debug_struct("GlobalAlerts")
            .field("provider_type", &self.provider_type)
            .field("url", &"<redacted>")
            .field("severity", &self.severity)
            .field("username", &self.username)
            .field("channel", &self.channel)
            .finish()
    }
}

/// Chat system kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Slack,
    MsTeams,
    Discord,
    Rocket,
    GChat,
    Webhook,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<ProviderKind> {
        Some(match s.trim() {
            "slack" => ProviderKind::Slack,
            "msteams" => ProviderKind::MsTeams,
            "discord" => ProviderKind::Discord,
            "rocket" => ProviderKind::Rocket,
            "gchat" => ProviderKind::GChat,
            "webhook" => ProviderKind::Webhook,
            _ => return None,
        })
    }
}

/// A resolved destination: everything needed to POST one alert.
#[derive(Clone)]
pub struct Target {
    pub alert: String,
    pub kind: ProviderKind,
    pub url: String,
    pub token: Option<String>,
    pub proxy: Option<String>,
    pub username: String,
    pub channel: String,
}

pub struct Notifier {
    pub http: reqwest::Client,
    pub secrets: Arc<dyn SecretSource>,
    pub providers: Arc<dyn ProviderSource>,
    pub global: Option<GlobalAlerts>,
}

impl Notifier {
    /// Sends `event` to every alert of the Canary whose severity it meets (or to the
    /// global defaults when the Canary has no alerts). Returns how many were sent;
    /// all deliveries are attempted even when one fails, and failures are returned.
    pub async fn notify(&self, canary: &Canary, event: &AlertEvent) -> Result<usize, NotifyError> {
        let alerts: &[CanaryAlert] = canary
            .spec
            .analysis
            .as_ref()
            .and_then(|a| a.alerts.as_deref())
            .unwrap_or_default();
        let mut errors = Vec::new();
        let mut targets = Vec::new();
        if alerts.is_empty() {
            if let Some(g) = self.global.as_ref().filter(|g| !g.url.trim().is_empty())
                && event.severity >= g.severity
            {
                match self.global_target(g) {
                    Ok(t) => targets.push(t),
                    Err(e) => errors.push(e),
                }
            }
        } else {
            for alert in alerts {
                match Severity::parse(alert.severity.as_deref()) {
                    Ok(min) if event.severity < min => continue,
                    Ok(_) => {}
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
                match self.resolve(canary, alert).await {
                    Ok(t) => targets.push(t),
                    Err(e) => errors.push(e),
                }
            }
        }
        let sends = targets.iter().map(|t| self.send(t, canary, event));
        let mut sent = 0;
        for r in futures::future::join_all(sends).await {
            match r {
                Ok(()) => sent += 1,
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(sent),
            1 => Err(errors.remove(0)),
            _ => Err(NotifyError::Several(errors)),
        }
    }

    fn global_target(&self, g: &GlobalAlerts) -> Result<Target, NotifyError> {
        let alert = "--alert-url".to_string();
        let kind =
            ProviderKind::parse(&g.provider_type).ok_or_else(|| NotifyError::UnsupportedType {
                alert: alert.clone(),
                kind: g.provider_type.clone(),
            })?;
        Ok(Target {
            alert,
            kind,
            url: g.url.trim().to_string(),
            token: None,
            proxy: g.proxy.clone().filter(|p| !p.trim().is_empty()),
            username: g
                .username
                .clone()
                .unwrap_or_else(|| DEFAULT_USERNAME.into()),
            channel: g.channel.clone().unwrap_or_else(|| DEFAULT_CHANNEL.into()),
        })
    }

    /// Reads the AlertProvider and its Secret (`address`, `token`, `proxy` keys; the
    /// Secret wins over the spec, as in Flagger).
    async fn resolve(&self, canary: &Canary, alert: &CanaryAlert) -> Result<Target, NotifyError> {
        let ns = alert
            .provider_ref
            .namespace
            .clone()
            .unwrap_or_else(|| canary.namespace_or_default());
        let provider = self
            .providers
            .get(&ns, &alert.provider_ref.name)
            .ok_or_else(|| NotifyError::MissingProvider {
                namespace: ns.clone(),
                name: alert.provider_ref.name.clone(),
            })?;
        let spec = &provider.spec;
        let kind =
            ProviderKind::parse(&spec.r#type).ok_or_else(|| NotifyError::UnsupportedType {
                alert: alert.name.clone(),
                kind: spec.r#type.clone(),
            })?;
        let secret = match &spec.secret_ref {
            Some(sref) => {
                let data = self
                    .secrets
                    .get(&ns, &sref.name)
                    .await
                    .map_err(|source| NotifyError::Secret {
                        alert: alert.name.clone(),
                        source,
                    })?
                    .ok_or_else(|| NotifyError::Secret {
                        alert: alert.name.clone(),
                        source: AnalysisError::MissingSecret {
                            namespace: ns.clone(),
                            name: sref.name.clone(),
                        },
                    })?;
                Some(data)
            }
            None => None,
        };
        let from_secret = |key: &str| {
            secret
                .as_ref()
                .and_then(|s| s.get(key))
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let token = from_secret("token");
        let url = from_secret("address")
            .or_else(|| spec.address.clone().filter(|a| !a.trim().is_empty()))
            .or_else(|| {
                (kind == ProviderKind::Slack && token.is_some()).then(|| SLACK_API_URL.to_string())
            })
            .ok_or_else(|| NotifyError::NoAddress {
                alert: alert.name.clone(),
            })?;
        Ok(Target {
            alert: alert.name.clone(),
            kind,
            url,
            token,
            proxy: from_secret("proxy")
                .or_else(|| spec.proxy.clone().filter(|p| !p.trim().is_empty())),
            username: spec
                .username
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_USERNAME.into()),
            channel: spec
                .channel
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| DEFAULT_CHANNEL.into()),
        })
    }

    /// POSTs one alert.
    pub async fn send(
        &self,
        target: &Target,
        canary: &Canary,
        event: &AlertEvent,
    ) -> Result<(), NotifyError> {
        let alert = || target.alert.clone();
        let mut url =
            url::Url::parse(&target.url).map_err(|_| NotifyError::BadAddress { alert: alert() })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::BadAddress { alert: alert() });
        }
        // Discord takes Slack's format on its `/slack` endpoint (as Flagger posts).
        if target.kind == ProviderKind::Discord && !url.path().ends_with("/slack") {
            let path = format!("{}/slack", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        let client = match &target.proxy {
            Some(p) => {
                let proxy = reqwest::Proxy::all(p.as_str())
                    .map_err(|_| NotifyError::BadProxy { alert: alert() })?;
                reqwest::Client::builder()
                    .proxy(proxy)
                    .build()
                    .map_err(|e| NotifyError::Client {
                        alert: alert(),
                        why: e.without_url().to_string(),
                    })?
            }
            None => self.http.clone(),
        };
        let body = render(target, &Message::new(canary, event));
        let mut req = client.post(url).json(&body).timeout(SEND_TIMEOUT);
        if let Some(t) = &target.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| NotifyError::Delivery {
            alert: alert(),
            why: crate::analysis::prometheus::error_chain(&e.without_url()),
        })?;
        if !resp.status().is_success() {
            return Err(NotifyError::Status {
                alert: alert(),
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
