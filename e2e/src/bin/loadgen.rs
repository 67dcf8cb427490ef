//! `serin-loadgen`: send HTTP load to a local target and print a JSON report of
//! responses per version and per status.
//!
//! Example: `serin-loadgen --url http://127.0.0.1:8000/ --host app.example --rate 200 --duration 5`

use std::time::Duration;

use clap::Parser;
use serin_e2e::load::{LoadSpec, run};

#[derive(Parser, Debug)]
#[command(
    name = "serin-loadgen",
    about = "Bounded HTTP load generator for the local test cluster"
)]
struct Args {
    /// Target URL (loopback or the cluster's pod network only).
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// At most this many requests.
    #[arg(long, default_value_t = 100_000)]
    max_requests: u64,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Host header (shortcut for -H "Host: ...").
    #[arg(long)]
    host: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut spec = LoadSpec::new(&args.url)
        .rate(args.rate)
        .duration(Duration::from_secs_f64(args.duration.max(0.0)));
    spec.max_requests = args.max_requests;
    spec.timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) => spec = spec.header(k.trim(), v.trim()),
            None => {
                eprintln!("serin-loadgen: header must be 'Name: value', got {h:?}");
                std::process::exit(2);
            }
        }
    }
    if let Some(host) = &args.host {
        spec = spec.host(host);
    }
    match run(&spec).await {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("serin-loadgen: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("serin-loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}
