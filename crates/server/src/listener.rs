//! Accept loops: plain or TLS connections served by hyper with limits, and graceful shutdown.
//!
//! Every connection holds a permit from a semaphore of `http.max_connections`; when none is left
//! the loop stops accepting (the kernel's backlog queues, then refuses) instead of running out of
//! file descriptors. A connection that has not sent a complete first request within the header
//! timeout is closed, whatever protocol it claims, so idle sockets cannot pile up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_app::Metrics;
use portcullis_web::ConnectionInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
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
    /// A client must send its complete request head within this time (slowloris defence); also the
    /// deadline for the first request on a new connection, whatever its protocol.
    pub header_read_timeout: Duration,
    /// Largest read buffer (request head) hyper will hold.
    pub max_buf_size: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
}

/// At most this many refused-handshake lines a second per listener: a client can fail handshakes as
/// fast as it can open connections, and a log line costs more than the connection. The metric still
/// counts every one, and the next line logged says how many were left out.
const HANDSHAKE_LINES_PER_SEC: u32 = 10;

/// What a TLS listener needs besides its socket: the certificate in service, and the metrics and log
/// budget for handshakes it refuses.
#[derive(Debug, Clone)]
pub struct TlsEndpoint {
    reloader: Arc<TlsReloader>,
    metrics: Metrics,
    log_budget: Arc<LogBudget>,
}

impl TlsEndpoint {
    pub fn new(reloader: Arc<TlsReloader>, metrics: Metrics) -> Self {
        Self { reloader, metrics, log_budget: Arc::default() }
    }
}

/// A per-second allowance of log lines, and the count of lines left out since the last one logged.
#[derive(Debug, Default)]
struct LogBudget(std::sync::Mutex<LogWindow>);

#[derive(Debug, Default)]
struct LogWindow {
    started: Option<tokio::time::Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// `Some(lines left out before this one)` when a line may be logged at `now`.
    fn take(&self, now: tokio::time::Instant) -> Option<u64> {
        let mut window = self.0.lock().ok()?;
        if window.started.is_none_or(|started| now.duration_since(started) >= Duration::from_secs(1)) {
            window.started = Some(now);
            window.used = 0;
        }
        if window.used < HANDSHAKE_LINES_PER_SEC {
            window.used += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// Why a TLS handshake did not complete: a closed set, so it can be a metric label and a stable log
/// field (ASVS V16.3.4), and never carries the peer's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeFailure {
    /// Nothing in common: an old protocol version, no shared cipher suite, group or signature scheme
    /// (downgrade attempts and old clients land here).
    Incompatible,
    /// Not TLS, or a malformed handshake message (scanners, plain HTTP sent to the TLS port).
    Malformed,
    /// The client refused us with an alert, most often because it does not trust our certificate.
    ClientAlert,
    /// The connection closed or reset mid-handshake.
    Closed,
    /// No complete handshake within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    Other,
}

impl HandshakeFailure {
    fn of(error: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                Self::Incompatible
            }
            Some(rustls::Error::InvalidMessage(_) | rustls::Error::PeerMisbehaved(_)) => Self::Malformed,
            Some(rustls::Error::AlertReceived(_)) => Self::ClientAlert,
            Some(_) => Self::Other,
            None => match error.kind() {
                ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Self::Closed,
                ErrorKind::InvalidData => Self::Malformed,
                _ => Self::Other,
            },
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Incompatible => "incompatible",
            Self::Malformed => "malformed",
            Self::ClientAlert => "client_alert",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting, lets in-flight
/// requests finish within the grace period, aborts what is left, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsEndpoint>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // Wait for a free slot before accepting: backpressure instead of descriptor exhaustion.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop_requested(&mut shutdown) => break,
            Some(_) = connections.join_next() => continue,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection = Connection {
                        peer,
                        router: router.clone(),
                        builder: builder.clone(),
                        limits,
                        shutdown: shutdown.clone(),
                        _permit: permit,
                    };
                    connections.spawn(connection.run(stream, tls.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // Out of descriptors or memory: back off instead of spinning on the same error.
                    if matches!(error.raw_os_error(), Some(12 | 23 | 24 | 105)) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            _ = stop_requested(&mut shutdown) => break,
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            remaining = connections.len(),
            "shutdown grace period over; closing remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Resolves once shutdown has been asked for (or nobody is left to ask).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
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
        .max_concurrent_streams(128)
        // Dead peers are found and their connections closed instead of held forever.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One accepted connection and what it needs to be served.
struct Connection {
    peer: SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
    /// Returned to the pool when the connection ends.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsEndpoint>) {
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else { return self.serve(stream, false).await };
        let acceptor = TlsAcceptor::from(tls.reloader.current());
        let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => return self.serve(stream, true).await,
            Ok(Err(error)) => (HandshakeFailure::of(&error), Some(error)),
            Err(_) => (HandshakeFailure::Timeout, None),
        };
        // The metric counts every failure; it is what an alert watches (a jump in `incompatible` is a
        // downgrade probe; in `client_alert`, a certificate clients stopped trusting).
        let (reason, error) = failure;
        tls.metrics.tls_handshake_failed(reason.as_str());
        let error = error.as_ref().map(tracing::field::display);
        let (client_ip, client_port) = (self.peer.ip(), self.peer.port());
        // A connection dropped or left idle (port scans, TCP health checks) is no refusal: debug.
        if matches!(reason, HandshakeFailure::Closed | HandshakeFailure::Timeout) {
            tracing::debug!(reason = reason.as_str(), error, %client_ip, client_port, "TLS handshake failed");
            return;
        }
        // Info, not warn: scanners and old clients make these all day; at most a few lines a second.
        // rustls's error text names protocol facts only, never the peer's bytes.
        if let Some(suppressed) = tls.log_budget.take(tokio::time::Instant::now()) {
            tracing::info!(
                reason = reason.as_str(),
                error,
                %client_ip,
                client_port,
                suppressed,
                "TLS handshake failed"
            );
        }
    }

    async fn serve<S>(mut self, stream: S, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = ConnectionInfo { peer: self.peer, tls };
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = first_request.clone();
        let service =
            TowerToHyperService::new(self.router.map_request(move |mut request: http::Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(info);
                request
            }));
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let first_deadline = tokio::time::sleep(self.limits.header_read_timeout);
        tokio::pin!(first_deadline);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                // Protocol detection and an idle HTTP/2 connection have no timeout of their own.
                () = &mut first_deadline, if !closing && !first_request.load(Ordering::Relaxed) => {
                    tracing::debug!(client_ip = %self.peer.ip(), "no request before the header timeout; closing");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stop_requested(&mut self.shutdown), if !closing => {
                    // Finish the request in flight, then close (HTTP/1 `Connection: close`, HTTP/2 GOAWAY).
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, client_ip = %self.peer.ip(), "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_handshakes_are_logged_a_few_a_second_and_the_next_line_counts_the_rest() {
        let budget = LogBudget::default();
        let start = tokio::time::Instant::now();
        let first_second: Vec<Option<u64>> = (0..25).map(|_| budget.take(start)).collect();
        let logged = first_second.iter().filter(|taken| taken.is_some()).count();
        assert_eq!(logged, HANDSHAKE_LINES_PER_SEC as usize);
        assert!(first_second.iter().flatten().all(|left_out| *left_out == 0));
        // The next second's first line says how many the last one left out.
        assert_eq!(budget.take(start + Duration::from_millis(1000)), Some(15));
        assert_eq!(budget.take(start + Duration::from_millis(1001)), Some(0));
    }
}
