//! A bare axum hello-world answering `GET /healthz`: the baseline that `scripts/bench/healthz.sh`
//! compares Portcullis's full middleware stack against. Usage: `bare_axum [ADDR]` (default
//! 127.0.0.1:18181).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::routing::get;

/// The same body Portcullis's `/healthz` returns, with no middleware around it.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 18181)),
    };
    let app = Router::new().route("/healthz", get(healthz));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
