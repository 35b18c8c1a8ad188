//! Accept loops: plain or TLS connections served by hyper with limits, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use portcullis_web::ConnectionInfo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::tls::TlsReloader;

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection-level limits, the hard ceiling under the HTTP layer's own (friendlier) checks.
///
/// The header count is left at hyper's built-in ceiling of 100 fields (answered with a bare 431):
/// setting it explicitly makes hyper allocate its parse arrays on the heap for every request, and
/// `http.max_headers` (at most 100) already answers below it with a problem document.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client must send its complete request head within this time (slowloris defence).
    pub header_read_timeout: Duration,
    /// Largest read buffer (request head) hyper will hold.
    pub max_buf_size: usize,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting, lets in-flight
/// requests finish within the grace period, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<TlsReloader>>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(limits));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    spawn_connection(stream, peer, router.clone(), tls.clone(), builder.clone(), &graceful);
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning on a full descriptor table.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = shutdown.changed() => {
                // A dropped sender also means stop: nobody is left to ask for a graceful end.
                if changed.is_err() || *shutdown.borrow_and_update() {
                    break;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "shutdown grace period over; closing remaining connections"
        );
    }
}

fn builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_buf_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(128);
    builder
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<Arc<TlsReloader>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let info = ConnectionInfo { peer, tls: tls.is_some() };
        let service =
            TowerToHyperService::new(router.map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(info);
                request
            }));
        let result = match tls {
            Some(reloader) => {
                let acceptor = TlsAcceptor::from(reloader.current());
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, client_ip = %peer.ip(), "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client_ip = %peer.ip(), "TLS handshake timed out");
                        return;
                    }
                };
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                watcher.watch(connection.into_owned()).await
            }
            None => {
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                watcher.watch(connection.into_owned()).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, client_ip = %peer.ip(), "connection ended with an error");
        }
    });
}
