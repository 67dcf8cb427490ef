//! What the cluster commands share: the kubectl-style connection flags and errors
//! that fit on one line.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::CliError;
use crate::crd::Canary;

/// `--kubeconfig`, `--context` and `-n` as kubectl reads them; without
/// `--kubeconfig` the `KUBECONFIG` variable (a path list) and then `~/.kube/config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: `KUBECONFIG`, else `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace (default: the context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// A connected client and the namespace the command acts in.
pub struct Target {
    pub client: Client,
    pub namespace: String,
    pub server: String,
}

impl KubeArgs {
    pub async fn connect(&self) -> Result<Target, CliError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    CliError::Kubeconfig(format!("{}: {}", path.display(), one_line(&e)))
                })?;
                Config::from_custom_kubeconfig(kc, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| CliError::Kubeconfig(one_line(&e)))?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig(one_line(&e)))?;
        Ok(Target {
            client,
            namespace,
            server,
        })
    }
}

impl Target {
    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One Canary, or an error naming it when it does not exist.
    pub async fn canary(&self, name: &str) -> Result<Canary, CliError> {
        self.canaries()
            .get_opt(name)
            .await
            .map_err(|e| self.error(e))?
            .ok_or_else(|| CliError::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_string(),
            })
    }

    /// A kube error as one line: what failed, not the client's debug dump.
    pub fn error(&self, e: kube::Error) -> CliError {
        api_error(&self.server, e)
    }
}

pub fn api_error(server: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 401 => CliError::Api(format!(
            "unauthorized at {server}: the kubeconfig's credentials were refused"
        )),
        kube::Error::Api(s) if s.code == 403 => CliError::Denied(s.message.clone()),
        // An object that does not exist is a NotFound Status; a bare 404 means the
        // API server has no such resource at all.
        kube::Error::Api(s) if s.code == 404 && s.reason != "NotFound" => CliError::Api(format!(
            "{server} serves no serin.dev/v1beta1 Canaries: are Serin's CRDs installed?"
        )),
        kube::Error::Api(s) => CliError::Api(format!("{} ({})", s.message, s.reason)),
        other => CliError::Unreachable {
            server: server.to_string(),
            cause: one_line(&other),
        },
    }
}

/// An error and its sources on one line, each cause once (kube's wrappers repeat
/// their source's text in their own).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_one_line_and_say_what_is_wrong() {
        let status = |code: u16, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                reason: "Forbidden".into(),
                ..Default::default()
            }))
        };
        let e = api_error(
            "https://k",
            status(
                403,
                "canaries.serin.dev \"x\" is forbidden: User \"alice\" cannot get",
            ),
        );
        assert_eq!(
            e.to_string(),
            "not allowed: canaries.serin.dev \"x\" is forbidden: User \"alice\" cannot get"
        );
        let e = api_error("https://k", status(401, "Unauthorized"));
        assert!(
            e.to_string().starts_with("unauthorized at https://k"),
            "{e}"
        );
    }
}
