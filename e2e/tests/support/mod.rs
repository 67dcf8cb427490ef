//! Helpers shared by test binaries that need the `serin` crate itself (a
//! dev-dependency, so they cannot live in the `serin_e2e` library).

use std::net::SocketAddr;

use anyhow::Result;

/// Serves `serin tester`'s routes (gates, load generator) on an ephemeral loopback
/// port, as the operator would reach the tester Deployment in a cluster.
pub async fn serve_tester() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, serin::tester::router()).await;
    });
    Ok(addr)
}
