//! A bare axum hello-world answering `GET /healthz`: the baseline that `scripts/bench/healthz.sh`
//! compares Portcullis's full middleware stack against. Usage: `bare_axum [ADDR] [headers]`
//! (default 127.0.0.1:18181). With `headers` it also sends Portcullis's security headers, so the
//! benchmark can tell the cost of sending them from the cost of the middleware that decides them.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::response::Response;
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
    let mut app = Router::new().route("/healthz", get(healthz));
    if std::env::args().nth(2).as_deref() == Some("headers") {
        app = app.layer(axum::middleware::map_response(|mut response: Response| async move {
            portcullis_web::apply_security_headers(response.headers_mut(), None);
            response
        }));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
