//! The harness: `spawn_app()` starts what `portcullis serve` starts, on port 0, with a fresh data dir.
//! Logs of every test are captured (JSON) so tests can assert on them; `TEST_LOG=1` also prints them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use portcullis::config::Config;
use portcullis::{RunningServer, StartOptions};

pub struct TestApp {
    pub addr: SocketAddr,
    pub server: RunningServer,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A test configuration: development mode, loopback port 0, data dir inside `dir`.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.http.shutdown_grace_secs = 5;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with_options(adjust, StartOptions::default()).await
}

pub async fn spawn_with_options(adjust: impl FnOnce(&mut Config), options: StartOptions) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    adjust(&mut config);
    let server = portcullis::start(&config, options).await.unwrap();
    TestApp {
        addr: server.local_addr(),
        server,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        data_dir: config.data_dir.clone(),
        _dir: dir,
    }
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

/// Installs the capturing subscriber once for the whole test binary, at debug level so that the
/// hygiene tests see everything the server could log.
pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let capture = Capture(logs().clone());
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter("debug")
            .with_writer(move || capture.clone())
            .try_init();
    });
}

/// Every captured log line, parsed.
pub fn log_lines() -> Vec<serde_json::Value> {
    let bytes = logs().lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// All captured log text, raw.
pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// The access-log line of one request, found by its request id.
pub fn access_log_of(request_id: &str) -> serde_json::Value {
    log_lines()
        .into_iter()
        .find(|line| line["span"]["request_id"] == request_id && line["message"] == "request completed")
        .unwrap_or_else(|| panic!("no access log line for request {request_id}"))
}

/// A CA and a leaf certificate for localhost/127.0.0.1 signed by it, as PEM (ca, cert, key).
pub fn test_certificates(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("Portcullis test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params.distinguished_name.push(DnType::CommonName, format!("localhost {name}"));
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// The real accept loop (`portcullis::listener::serve`) around probe routes behind the production
/// middleware stack, for behaviour the real routes cannot show (a handler that waits, one that
/// panics). Returns the address, the shutdown switch and the loop's task.
pub async fn serve_probe(
    routes: axum::Router,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    init_logs();
    let router = portcullis_web::with_middleware(routes, &portcullis_web::WebConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = portcullis::listener::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_buf_size: 65536,
        max_connections: 16,
        shutdown_grace: std::time::Duration::from_secs(10),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(portcullis::listener::serve(listener, router, None, limits, stopped));
    (addr, stop, server)
}
