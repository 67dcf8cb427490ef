//! The process entry point shared by the `serin` and `kubectl-serin` binaries.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;

use super::steer::Request;
use super::{Cli, CliError, Command};

/// Both binaries, `serin` and `kubectl-serin` (the same commands as a kubectl plugin).
pub fn main() -> ExitCode {
    // reqwest is built without a crypto provider so that kube's ring is the only one;
    // it must be installed before the first TLS client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", invoked_name());
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Crds => {
            print!("{}", crate::crd::crds_yaml()?);
            Ok(())
        }
        Command::Reference => {
            print!("{}", crate::crd::reference_markdown());
            Ok(())
        }
        Command::Validate {
            files,
            provider,
            prometheus,
            namespace,
            metrics_labels,
            gateway_controller,
            gateway_features,
        } => {
            let mut without_value = 0;
            let data_plane = gateway_controller.map(|controller| super::DataPlane {
                controller,
                features: gateway_features,
            });
            for file in files {
                let path = file.display().to_string();
                let text = if path == "-" {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|source| CliError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    s
                } else {
                    std::fs::read_to_string(&file).map_err(|source| CliError::Read {
                        path: path.clone(),
                        source,
                    })?
                };
                for name in super::validate_for(&path, &text, &provider, data_plane.as_ref())? {
                    println!("{path}: Canary {name}: ok");
                }
                if let Some(prom) = &prometheus {
                    let lines = runtime()?.block_on(super::check_metrics(
                        &path,
                        &text,
                        &provider,
                        prom,
                        namespace.as_deref(),
                        metrics_labels,
                    ))?;
                    for l in lines {
                        println!("{}", l.line);
                        without_value += usize::from(!l.has_value);
                    }
                }
            }
            if without_value > 0 {
                return Err(CliError::Run(format!(
                    "{without_value} metric check(s) got no value from Prometheus"
                )));
            }
            Ok(())
        }
        Command::Run(args) => runtime()?
            .block_on(crate::controller::run(args))
            .map_err(|e| CliError::Run(e.to_string())),
        Command::Get(args) => runtime()?.block_on(super::get::get(args)),
        Command::Status(args) => runtime()?.block_on(super::get::status(args)),
        Command::Watch(args) => runtime()?.block_on(super::watch::watch(args)),
        Command::Promote(a) => runtime()?.block_on(super::steer::steer(
            &a.steer,
            Request::Promote { force: a.force },
        )),
        Command::Abort(a) => runtime()?.block_on(super::steer::steer(&a, Request::Abort)),
        Command::Retry(a) => runtime()?.block_on(super::steer::steer(&a, Request::Retry)),
        Command::Pause(a) => runtime()?.block_on(super::steer::steer(&a, Request::Pause)),
        Command::Resume(a) => runtime()?.block_on(super::steer::steer(&a, Request::Resume)),
        Command::Check { files, provider } => {
            let mut errors = 0;
            for file in files {
                let (path, text) = read_input(&file)?;
                let r = super::convert::check(&path, &text, &provider);
                for l in &r.ok {
                    println!("{l}");
                }
                for l in &r.errors {
                    eprintln!("{l}");
                }
                errors += r.errors.len();
            }
            if errors > 0 {
                return Err(CliError::Run(format!("{errors} error(s)")));
            }
            Ok(())
        }
        Command::Convert { files } => {
            for file in files {
                let (path, text) = read_input(&file)?;
                let c = super::convert::convert(&path, &text)?;
                print!("{}", c.yaml);
                for n in c.notes {
                    eprintln!("note: {n}");
                }
            }
            Ok(())
        }
        Command::Plan {
            files,
            provider,
            no_objects,
        } => {
            for file in files {
                let (path, text) = read_input(&file)?;
                for canary in super::parse_canaries(&path, &text, &provider)? {
                    let settings = crate::crd::Settings::from_spec(&canary.spec, &provider)
                        .map_err(|source| CliError::Invalid {
                            path: path.clone(),
                            name: canary.name_str().to_string(),
                            source,
                        })?;
                    let plan = super::plan::plan(&canary, &provider)?;
                    print!(
                        "{}",
                        super::plan::format_plan(&canary, &settings, &plan, !no_objects)?
                    );
                }
            }
            Ok(())
        }
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Completions are keyed by the name the shell runs: `serin` or
            // `kubectl-serin` (which kubectl's own completion calls for plugins).
            let name = invoked_name();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            Ok(())
        }
        Command::Tester { listen } => {
            crate::controller::init_tracing(super::LogFormat::Text);
            runtime()?
                .block_on(crate::tester::serve(listen, shutdown_signal()))
                .map_err(|e| CliError::Run(e.to_string()))
        }
    }
}

fn read_input(file: &std::path::Path) -> Result<(String, String), CliError> {
    let path = file.display().to_string();
    let mut text = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

fn invoked_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("serin")
        .to_string()
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Run(format!("cannot start the async runtime: {e}")))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
