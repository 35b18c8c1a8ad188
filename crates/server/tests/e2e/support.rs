//! The harness: `spawn_app()` starts what `portcullis serve` starts, on port 0, with a fresh data dir.
//! Logs of every test are captured (JSON) so tests can assert on them; `TEST_LOG=1` also prints them.
//! Every secret the helpers send or receive is a canary that no captured log line may hold when the
//! test binary exits (see [`canary`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use portcullis::config::Config;
use portcullis::{RunningServer, StartOptions};

pub struct TestApp {
    pub addr: SocketAddr,
    pub server: RunningServer,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// The configuration it was started with: its database URL on PostgreSQL, for the command line
    /// and for tests that look at the database itself.
    pub config: Config,
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
    // Cheap hashing keeps the suite fast; the rules under test do not depend on the cost.
    config.password.argon2_memory_kib = 1024;
    config.password.argon2_iterations = 1;
    // Every suite speaks from 127.0.0.1 and logs in as the same few people far more often than
    // anyone would: budgets are out of its way, except in the rate limit suite, which sets its own.
    generous_rate_limits(&mut config);
    config
}

/// Budgets, a lockout threshold and a stuffing threshold no suite but the abuse ones reach (the
/// timing suite alone fails 60 logins in a row for one address).
pub fn generous_rate_limits(config: &mut Config) {
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.auth_ip_per_minute, r.account_per_minute) = (1_000_000, 1_000_000, 1_000_000);
    (r.principal_per_minute, r.api_key_per_minute, r.reset_mails_per_hour) =
        (1_000_000, 1_000_000, 1_000_000);
    config.lockout.max_failures = 1000;
    // Suites fail logins for many addresses from 127.0.0.1; a stuffing block would end the run.
    config.detection.stuffing_accounts = 100_000;
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
    if let Some(url) = postgres_database().await {
        config.database.url = Some(portcullis::config::Secret::new(url));
    }
    adjust(&mut config);
    let server = portcullis::start(&config, options).await.unwrap();
    running(server, config, dir)
}

fn running(server: RunningServer, config: Config, dir: tempfile::TempDir) -> TestApp {
    TestApp {
        addr: server.local_addr(),
        server,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        data_dir: config.data_dir.clone(),
        config,
        _dir: dir,
    }
}

/// Whether this run puts every spawned server on PostgreSQL (`PORTCULLIS_E2E_ON_POSTGRES=1`).
pub fn on_postgres() -> bool {
    std::env::var("PORTCULLIS_E2E_ON_POSTGRES").ok().as_deref() == Some("1")
}

/// A second server on `first`'s database, as a second node of one installation: the same database,
/// instance secret, key-encryption key and public URL, its own data dir (and so its own data dir
/// lock). PostgreSQL only: two servers on one SQLite file are what that lock exists to refuse.
pub async fn spawn_beside(first: &TestApp) -> TestApp {
    assert!(first.config.database.url.is_some(), "a second server needs a shared (PostgreSQL) database");
    let dir = tempfile::tempdir().unwrap();
    let mut config = first.config.clone();
    config.data_dir = dir.path().join("data");
    // In development both are generated into the first server's data dir; the second reads them.
    let generated = |file: &str| {
        let text = std::fs::read_to_string(first.data_dir.join(file)).unwrap();
        Some(portcullis::config::Secret::new(text.trim_end().to_owned()))
    };
    if config.keys.kek.is_none() {
        config.keys.kek = generated(portcullis::data_dir::KEK_FILE);
    }
    if config.secrets.instance_secret.is_none() {
        config.secrets.instance_secret = generated(portcullis::data_dir::INSTANCE_SECRET_FILE);
    }
    // One installation has one public URL (the tokens' issuer); in development it is otherwise the
    // address each server bound.
    if config.http.public_url.is_none() {
        config.http.public_url = Some(first.origin());
    }
    let server = portcullis::start(&config, StartOptions::default()).await.unwrap();
    running(server, config, dir)
}

/// With `PORTCULLIS_E2E_ON_POSTGRES=1` and `PORTCULLIS_TEST_POSTGRES_URL` set, a fresh database on that
/// server for each spawned app, so the suites run on PostgreSQL too (`.ci/run` runs the account suites
/// a second time this way). The databases are left to the throwaway server.
async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if !on_postgres() {
        return None;
    }
    let admin_url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .expect("PORTCULLIS_E2E_ON_POSTGRES=1 needs PORTCULLIS_TEST_POSTGRES_URL");
    let name = format!(
        "portcullis_e2e_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), ""), |(b, q)| (b, q));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    Some(format!("{}/{name}{query}", &base[..path]))
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

/// The hook `serve` installs (`telemetry::log_panic`: a panic becomes an error line inside the
/// current span), installed once for the whole binary and chained before the test harness's own,
/// so other tests' failures still print. Once, because two chained copies would log each panic twice.
pub fn log_panics() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            portcullis::telemetry::log_panic(info);
            previous(info);
        }));
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
    let router =
        portcullis_web::with_middleware(routes, &portcullis_web::WebConfig::default(), None).unwrap();
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

// ---------------------------------------------------------------------------------------------------
// Accounts, sessions and tokens (issue 3): requests, the mail outbox, credentials and JWT tooling.
// ---------------------------------------------------------------------------------------------------

/// A password every account policy accepts (zxcvbn score ≥ 3, no test identifier in it).
pub const PASSWORD: &str = "Plover-quartz-Ember-731";
/// A second strong password, for changes and resets.
pub const NEW_PASSWORD: &str = "Mangrove+Tinsel+Orbit-58";

/// How long a background email may take to reach the outbox before a test gives up.
const MAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl TestApp {
    /// A request to `path` on this server, to finish with headers, a body and [`Go::go`].
    pub fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// `POST path` with a JSON body and no credentials.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, path).json(body).go().await
    }

    /// `GET /v1/me` with a bearer access token.
    pub async fn me(&self, access_token: &str) -> reqwest::Response {
        self.call(reqwest::Method::GET, "/v1/me").bearer_auth(access_token).go().await
    }

    /// The status of `GET /v1/me` with a bearer access token.
    pub async fn me_status(&self, access_token: &str) -> u16 {
        self.me(access_token).await.status().as_u16()
    }

    /// The status of `POST /v1/auth/refresh` with `refresh_token`; the response, if wanted, via
    /// [`TestApp::refresh`].
    pub async fn refresh_status(&self, refresh_token: &str) -> u16 {
        self.refresh(refresh_token).await.status().as_u16()
    }

    /// `POST /v1/auth/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.post_json("/v1/auth/refresh", &serde_json::json!({ "refresh_token": refresh_token })).await
    }

    /// `http://<addr>`: this server's origin, as a browser on its own pages sends it.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The development outbox: `<data_dir>/outbox`.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }
}

/// `send().await.unwrap()`, so a request reads as one chain; the secrets it carries become canaries
/// (see [`canaries_sent`]).
pub trait Go {
    fn go(self) -> impl std::future::Future<Output = reqwest::Response>;
}

impl Go for reqwest::RequestBuilder {
    async fn go(self) -> reqwest::Response {
        let (client, request) = self.build_split();
        let request = request.unwrap();
        canaries_sent(&request);
        client.execute(request).await.unwrap()
    }
}

/// Tokens from a token-mode login or a refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl Tokens {
    /// Reads a 200 token response, checking its shape (RFC 6749 section 5.1 names).
    pub async fn from_response(response: reqwest::Response) -> Tokens {
        assert_eq!(response.status(), 200, "expected tokens");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        let expires_in = body["expires_in"].as_i64().unwrap_or_else(|| panic!("no expires_in: {body}"));
        assert!((890..=900).contains(&expires_in), "expires_in {expires_in}");
        let tokens = Tokens {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().unwrap().to_owned(),
        };
        canary(Canary::AccessToken, &tokens.access);
        canary(Canary::RefreshToken, &tokens.refresh);
        tokens
    }

    /// The session id (`sid` claim) of the access token.
    pub fn session_id(&self) -> String {
        jwt_parts(&self.access).1["sid"].as_str().unwrap().to_owned()
    }
}

/// A browser session from a cookie-mode login: the cookie's value and the CSRF token.
#[derive(Debug, Clone)]
pub struct CookieSession {
    pub cookie: String,
    pub csrf: String,
}

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";

/// Sending a browser session by hand (reqwest over http keeps no `Secure` cookie).
pub trait WithSession {
    /// The session cookie and its CSRF token, as the UI sends them.
    fn session(self, session: &CookieSession) -> Self;
    /// The session cookie only.
    fn session_cookie(self, session: &CookieSession) -> Self;
}

impl WithSession for reqwest::RequestBuilder {
    fn session(self, session: &CookieSession) -> Self {
        self.session_cookie(session).header("x-csrf-token", &session.csrf)
    }

    fn session_cookie(self, session: &CookieSession) -> Self {
        self.header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={}", session.cookie))
    }
}

/// The session cookie a response sets (the whole `Set-Cookie` value), if it sets one.
pub fn set_session_cookie(response: &reqwest::Response) -> Option<String> {
    let set_cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{SESSION_COOKIE}=")))
        .map(str::to_owned)?;
    let value = set_cookie.split(';').next().and_then(|pair| pair.split_once('=')).map_or("", |(_, v)| v);
    canary(Canary::SessionCookie, value);
    Some(set_cookie)
}

/// `POST /v1/auth/signup` with email and password, expecting the uniform 202.
pub async fn signup(app: &TestApp, email: &str, password: &str) {
    let response =
        app.post_json("/v1/auth/signup", &serde_json::json!({ "email": email, "password": password })).await;
    assert_eq!(response.status(), 202, "signup {email}: {}", response.text().await.unwrap());
}

/// Verifies `email` with the link from its verification mail.
pub async fn verify(app: &TestApp, email: &str) {
    let token = wait_for_link(app, email, "verify-email").await;
    let response = app.post_json("/v1/auth/verify-email", &serde_json::json!({ "token": token })).await;
    assert_eq!(response.status(), 204, "verify {email}: {}", response.text().await.unwrap());
}

/// A verified account: signup, then the emailed link.
pub async fn register(app: &TestApp, email: &str, password: &str) {
    signup(app, email, password).await;
    verify(app, email).await;
}

/// `POST /v1/auth/login` (JSON body as given).
pub async fn login_response(app: &TestApp, body: serde_json::Value) -> reqwest::Response {
    app.post_json("/v1/auth/login", &body).await
}

/// A token-mode login that must succeed.
pub async fn login(app: &TestApp, email: &str, password: &str) -> Tokens {
    Tokens::from_response(
        login_response(app, serde_json::json!({ "email": email, "password": password })).await,
    )
    .await
}

/// A token-mode login with a chosen `User-Agent`.
pub async fn login_as_agent(app: &TestApp, email: &str, password: &str, agent: &str) -> Tokens {
    let response = app
        .call(reqwest::Method::POST, "/v1/auth/login")
        .header(reqwest::header::USER_AGENT, agent)
        .json(&serde_json::json!({ "email": email, "password": password }))
        .go()
        .await;
    Tokens::from_response(response).await
}

/// A cookie-mode login that must succeed.
pub async fn login_cookie(app: &TestApp, email: &str, password: &str) -> CookieSession {
    let response =
        login_response(app, serde_json::json!({ "email": email, "password": password, "mode": "cookie" }))
            .await;
    assert_eq!(response.status(), 200, "cookie login");
    let set_cookie = set_session_cookie(&response).expect("a cookie login sets the session cookie");
    let value = set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    canary(Canary::CsrfToken, &csrf);
    CookieSession { cookie: value, csrf }
}

/// Asserts that `response` is the problem `slug` with `status` (RFC 9457 shape, request id included)
/// and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16, slug: &str) -> serde_json::Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "expected {status} {slug}, got {actual}: {text}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["type"], format!("urn:portcullis:problem:{slug}"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    body
}

/// The 401 `unauthorized` answer, with its Bearer challenge (RFC 6750 section 3).
pub async fn expect_unauthorized(response: reqwest::Response) -> serde_json::Value {
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = expect_problem(response, 401, "unauthorized").await;
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="portcullis""#));
    body
}

/// Asserts a 422 `validation` problem whose `errors` name `field` (a JSON pointer), and that the
/// whole answer never contains `secret` (the submitted password). Returns the field's message.
pub async fn expect_field_error(response: reqwest::Response, field: &str, secret: &str) -> String {
    let body = expect_problem(response, 422, "validation").await;
    assert!(!body.to_string().contains(secret), "the 422 answer echoes the submitted secret: {body}");
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("no errors list: {body}"));
    let error =
        errors.iter().find(|e| e["field"] == field).unwrap_or_else(|| panic!("no error for {field}: {body}"));
    let message = error["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

// ----- the mail outbox -----

/// Every message in the outbox, oldest first (file names start with the unix millis), each with its
/// body decoded (see [`decode_eml`]).
pub fn outbox(app: &TestApp) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(app.outbox_dir()) else { return Vec::new() };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    names.iter().filter_map(|p| std::fs::read_to_string(p).ok()).map(|raw| decode_eml(&raw)).collect()
}

/// Whether a (decoded) message is addressed to `to` (ASCII case-insensitive) and its subject contains
/// `subject_contains`.
fn addressed(eml: &str, to: &str, subject_contains: &str) -> bool {
    let to_matches = eml_header(eml, "To").is_some_and(|t| {
        let t = t.trim();
        let bare = t.rsplit_once('<').map_or(t, |(_, rest)| rest.trim_end_matches('>'));
        bare.eq_ignore_ascii_case(to)
    });
    to_matches && eml_header(eml, "Subject").is_some_and(|s| s.contains(subject_contains))
}

/// Waits (bounded) until `count` messages to `to` whose subject contains `subject_contains` are in
/// the outbox; returns them, oldest first, bodies decoded.
pub async fn wait_for_emails(app: &TestApp, to: &str, subject_contains: &str, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let found: Vec<String> =
            outbox(app).into_iter().filter(|m| addressed(m, to, subject_contains)).collect();
        if found.len() >= count {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            let subjects: Vec<String> = outbox(app)
                .iter()
                .map(|m| format!("{:?} → {:?}", eml_header(m, "Subject"), eml_header(m, "To")))
                .collect();
            panic!(
                "waited {MAIL_WAIT:?} for {count} email(s) to {to} with subject containing \
                 {subject_contains:?}; outbox has: {subjects:?}"
            );
        }
        // Polling the outbox, not timing anything: the mail is sent by a background task.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) for the first message to `to` whose subject contains `subject_contains`; returns
/// the whole message with its body decoded.
pub async fn wait_for_email(app: &TestApp, to: &str, subject_contains: &str) -> String {
    wait_for_emails(app, to, subject_contains, 1).await.remove(0)
}

/// Waits (bounded) for the newest message to `to` that carries a `/ui/<page>#token=` link, and
/// returns the token.
pub async fn wait_for_link(app: &TestApp, to: &str, page: &str) -> String {
    let marker = format!("/ui/{page}#token=");
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let found = outbox(app).into_iter().rev().find(|m| addressed(m, to, "") && m.contains(&marker));
        if let Some(eml) = found {
            return token_from(&eml, page);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {MAIL_WAIT:?} for an email to {to} with a {marker} link"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The token of the `/ui/<page>#token=` link in a message returned by [`wait_for_email`] (bodies are
/// already decoded there, so a quoted-printable `=3D` or soft line break cannot split the token).
pub fn token_from(eml: &str, page: &str) -> String {
    let marker = format!("/ui/{page}#token=");
    let start = eml.find(&marker).unwrap_or_else(|| panic!("no {marker} link in:\n{eml}")) + marker.len();
    let token: String =
        eml[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert_eq!(token.len(), 43, "a link token is 32 random bytes in base64url: {token:?}");
    canary(Canary::LinkToken, &token);
    token
}

/// The whole link (`<public_url>/ui/<page>#token=...`) in a decoded message.
pub fn link_from(eml: &str, page: &str) -> String {
    let token = token_from(eml, page);
    let end = eml.find(&token).unwrap() + token.len();
    let start = eml[..end].rfind(|c: char| c.is_whitespace()).map_or(0, |i| i + 1);
    eml[start..end].to_owned()
}

/// One header of a message (unfolded), the first if repeated.
pub fn eml_header(eml: &str, name: &str) -> Option<String> {
    let head = eml.split("\r\n\r\n").next().unwrap_or(eml);
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

/// A raw RFC 5322 message with folded headers unfolded and the body decoded from its
/// Content-Transfer-Encoding (quoted-printable soft breaks and `=XX`, or base64), as one string.
pub fn decode_eml(raw: &str) -> String {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim_start());
            }
            _ => lines.push(line.to_owned()),
        }
    }
    let head = lines.join("\r\n");
    let encoding = eml_header(&head, "Content-Transfer-Encoding").unwrap_or_default().to_ascii_lowercase();
    let body = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            use base64::Engine;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(compact).unwrap())
                .into_owned()
        }
        _ => body.to_owned(),
    };
    format!("{head}\r\n\r\n{body}")
}

/// RFC 2045 section 6.7: `=` + line break is a soft break, `=XX` one byte.
fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if bytes[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let Some(hex) = bytes.get(i + 1..i + 3)
                && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ----- the setup token -----

/// A log writer that keeps its own copy of what one server start logs, and passes everything on to
/// the binary-wide capture.
#[derive(Clone)]
struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Capture(logs().clone()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Spawns a server on a fresh database and returns it with the setup token it logged at start.
///
/// Tests run in parallel and every fresh server logs its own token, so the global capture cannot say
/// whose a token is; the start is therefore run under its own subscriber (for this future only), whose
/// lines are also copied to the global capture.
pub async fn spawn_with_setup_token(adjust: impl FnOnce(&mut Config)) -> (TestApp, String) {
    use tracing::instrument::WithSubscriber;
    init_logs();
    let own = Arc::new(Mutex::new(Vec::new()));
    let writer = Tee(own.clone());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .finish();
    let app = spawn_with(adjust).with_subscriber(subscriber).await;
    let text = String::from_utf8_lossy(&own.lock().unwrap()).into_owned();
    let token = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|line| {
            let token = line["setup_token"].as_str()?.to_owned();
            let message = line["message"].as_str().unwrap_or_default().to_ascii_lowercase();
            assert!(message.contains("setup token"), "the setup token's log line says what it is: {message}");
            Some(token)
        })
        .unwrap_or_else(|| panic!("a fresh server logs a setup token; its start logged:\n{text}"));
    (app, token)
}

/// Creates the first owner with the setup token and returns the owner's profile.
pub async fn setup_owner(app: &TestApp, setup_token: &str, email: &str, password: &str) -> serde_json::Value {
    let response = app
        .post_json(
            "/v1/auth/setup",
            &serde_json::json!({ "setup_token": setup_token, "email": email, "password": password }),
        )
        .await;
    assert_eq!(response.status(), 201, "setup: {}", response.text().await.unwrap());
    response.json().await.unwrap()
}

// ----- JWT tooling (no JOSE library among the dev-dependencies; see tokens.rs) -----

/// base64url without padding (RFC 7515 section 2).
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn unb64url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// A compact JWS's header, claims and signature.
pub fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts: {token}");
    (
        serde_json::from_slice(&unb64url(parts[0])).unwrap(),
        serde_json::from_slice(&unb64url(parts[1])).unwrap(),
        unb64url(parts[2]),
    )
}

/// A compact JWS from a header and claims, with `sign` over the signing input.
pub fn jwt_with(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    let input =
        format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64url(&signature))
}

/// SHA-256 from rustls' ring provider (already a dependency; the server has no `sha2`).
fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13().unwrap();
    suite.common.hash_provider.hash(data).as_ref().to_vec()
}

/// HMAC-SHA256 (RFC 2104) over [`sha256`], for forging HS256 tokens.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut key = if key.len() > BLOCK { sha256(key) } else { key.to_vec() };
    key.resize(BLOCK, 0);
    let mut inner: Vec<u8> = key.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = key.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(app: &TestApp) -> serde_json::Value {
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Whether `token`'s signature verifies under `jwk` (OKP Ed25519 or EC P-256), checked with ring
/// through rustls' WebPKI algorithms, independently of the server's own code.
pub fn signature_verifies(token: &str, jwk: &serde_json::Value) -> bool {
    use rustls::pki_types::alg_id;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = unb64url(signature);
    let (public_key, key_alg, sig_alg, signature) = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
        (Some("OKP"), Some("Ed25519")) => {
            (unb64url(jwk["x"].as_str().unwrap()), alg_id::ED25519, alg_id::ED25519, signature)
        }
        (Some("EC"), Some("P-256")) => {
            let mut point = vec![0x04];
            point.extend(unb64url(jwk["x"].as_str().unwrap()));
            point.extend(unb64url(jwk["y"].as_str().unwrap()));
            if signature.len() != 64 {
                return false;
            }
            (point, alg_id::ECDSA_P256, alg_id::ECDSA_SHA256, ecdsa_der(&signature))
        }
        other => panic!("unexpected key type {other:?}"),
    };
    let algorithm = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
        .iter()
        .find(|a| a.public_key_alg_id() == key_alg && a.signature_alg_id() == sig_alg)
        .copied()
        .expect("ring verifies this algorithm");
    algorithm.verify_signature(&public_key, input.as_bytes(), &signature).is_ok()
}

/// A JWS ECDSA signature (r ‖ s, RFC 7518 section 3.4) as the DER `SEQUENCE { r, s }` ring expects.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let mut value: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if value.first().is_none_or(|b| b & 0x80 != 0) {
            value.insert(0, 0);
        }
        let mut out = vec![0x02, value.len() as u8];
        out.extend(value);
        out
    }
    let mut body = integer(&raw[..32]);
    body.extend(integer(&raw[32..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

// ---------------------------------------------------------------------------------------------------
// Log hygiene over the whole run (issue 11, ASVS 16.2.5): every secret the helpers send or receive is
// registered as a canary, and when the test binary exits no captured log line may hold one.
// ---------------------------------------------------------------------------------------------------

/// What a canary is, named in the report when one turns up in a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Canary {
    Password,
    AccessToken,
    RefreshToken,
    SessionCookie,
    CsrfToken,
    /// The token of an emailed link (verification, password reset, invite).
    LinkToken,
    ChallengeToken,
    ApiKey,
    TotpSecret,
    RecoveryCode,
}

impl Canary {
    pub fn label(self) -> &'static str {
        match self {
            Canary::Password => "password",
            Canary::AccessToken => "access token",
            Canary::RefreshToken => "refresh token",
            Canary::SessionCookie => "session cookie",
            Canary::CsrfToken => "CSRF token",
            Canary::LinkToken => "emailed link token",
            Canary::ChallengeToken => "MFA challenge token",
            Canary::ApiKey => "API key",
            Canary::TotpSecret => "TOTP secret",
            Canary::RecoveryCode => "recovery code",
        }
    }
}

/// Values shorter than this are not canaries: a test's `"wrong"` or a six-digit TOTP code turns up in
/// a log line by chance (inside a timestamp, a word, a count) far too often to mean anything.
pub const MIN_CANARY_LEN: usize = 8;

/// Every registered canary, by value (the first kind it was registered as wins).
fn registry() -> &'static Mutex<BTreeMap<String, Canary>> {
    static CANARIES: OnceLock<Mutex<BTreeMap<String, Canary>>> = OnceLock::new();
    CANARIES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// A lock that outlives a test that panicked while holding it: the exit check must still run.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a secret a test sent or received. When the test binary exits, every line captured from
/// any test is searched for it; a hit fails the run (see [`install_exit_check`]).
pub fn canary(kind: Canary, value: &str) {
    if value.len() < MIN_CANARY_LEN {
        return;
    }
    install_exit_check();
    lock(registry()).entry(value.to_owned()).or_insert(kind);
}

/// The secrets in a request about to be sent: bearer tokens and API keys, the session cookie, the
/// CSRF token, and the passwords and tokens of a JSON body. The setup token is left out: the server
/// logs it at start on purpose, for the operator (`portcullis::start`).
fn canaries_sent(request: &reqwest::Request) {
    for (name, value) in request.headers() {
        let Ok(value) = value.to_str() else { continue };
        match name.as_str() {
            "authorization" => {
                if let Some(token) = value.strip_prefix("Bearer ") {
                    let kind = if token.starts_with("pcs_") { Canary::ApiKey } else { Canary::AccessToken };
                    canary(kind, token);
                }
            }
            "x-api-key" => canary(Canary::ApiKey, value),
            "x-csrf-token" => canary(Canary::CsrfToken, value),
            "cookie" => {
                for pair in value.split(';') {
                    if let Some((SESSION_COOKIE, cookie)) = pair.trim().split_once('=') {
                        canary(Canary::SessionCookie, cookie);
                    }
                }
            }
            _ => {}
        }
    }
    let body = request.body().and_then(reqwest::Body::as_bytes);
    if let Some(json) = body.and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok()) {
        canaries_in_json(&json);
    }
}

/// The secrets of a JSON request body, by field name, at any depth. `code` is left to the suites:
/// a TOTP code is a few digits, a recovery code is registered where a suite reads it.
fn canaries_in_json(value: &serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                let kind = match name.as_str() {
                    "password" | "current_password" | "new_password" => Some(Canary::Password),
                    "refresh_token" => Some(Canary::RefreshToken),
                    "token" => Some(Canary::LinkToken),
                    "challenge_token" => Some(Canary::ChallengeToken),
                    _ => None,
                };
                match (kind, field.as_str()) {
                    (Some(kind), Some(secret)) => canary(kind, secret),
                    _ => canaries_in_json(field),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(canaries_in_json),
        _ => {}
    }
}

/// Registers [`check_logs_at_exit`] to run when the process exits, once.
///
/// Why at exit: libtest has no hook after the last test, and a test that looked at the logs could
/// only see what the tests before it logged, and only when it was selected. Every way the harness
/// ends goes through the C library's `exit` (libtest's `process::exit` on a failure, `main`
/// returning otherwise), which runs the `atexit` handlers, so the check sees everything that every
/// selected test logged, whatever the filter. `shutdown_hooks` is a safe wrapper over `atexit`; the
/// workspace forbids `unsafe` code, tests included, so `libc::atexit` cannot be called from here.
fn install_exit_check() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        assert!(shutdown_hooks::add_shutdown_hook(check_logs_at_exit), "atexit refused the log check");
    });
}

/// Most leaking lines printed; the rest are counted.
const LEAKS_SHOWN: usize = 20;

/// The `atexit` handler: searches every captured line for every canary, and on a hit prints each
/// leaking line with the canaries masked and aborts. Aborting, not exiting: `exit` is already under
/// way, and std refuses a second one (so does C: calling it again is undefined), while `_exit`
/// would need `unsafe`. Either way the process ends by a signal and `cargo test` fails.
extern "C" fn check_logs_at_exit() {
    let canaries = lock(registry()).clone();
    let text = String::from_utf8_lossy(&lock(logs())).into_owned();
    let leaks = find_leaks(&text, &canaries);
    let mut stderr = std::io::stderr().lock();
    if leaks.is_empty() {
        let mut kinds: BTreeMap<Canary, usize> = BTreeMap::new();
        canaries.values().for_each(|kind| *kinds.entry(*kind).or_default() += 1);
        let kinds: Vec<String> = kinds.iter().map(|(kind, n)| format!("{n} {}", kind.label())).collect();
        let lines = text.lines().count();
        let _ = writeln!(stderr, "log hygiene: no secret in {lines} log lines ({})", kinds.join(", "));
        return;
    }
    let _ = writeln!(
        stderr,
        "\nlog hygiene: {} captured log line(s) hold a secret the tests sent or received:",
        leaks.len()
    );
    for leak in leaks.iter().take(LEAKS_SHOWN) {
        let kinds: Vec<&str> = leak.kinds.iter().map(|k| k.label()).collect();
        let _ = writeln!(stderr, "  [{}] {}", kinds.join(", "), leak.masked_line);
    }
    if leaks.len() > LEAKS_SHOWN {
        let _ = writeln!(stderr, "  ... and {} more", leaks.len() - LEAKS_SHOWN);
    }
    let _ = stderr.flush();
    std::process::abort();
}

/// A log line that holds canaries: their kinds, and the line with each of them masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub kinds: Vec<Canary>,
    pub masked_line: String,
}

/// Bits of the prefix filter in [`find_leaks`] (2^20: 128 KiB, about 1% full for ten thousand
/// canaries).
const FILTER_BITS_LOG2: u32 = 20;

/// The filter bit of an eight-byte window.
fn filter_bit(window: u64) -> usize {
    (window.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS_LOG2)) as usize
}

/// The lines of `log` that hold any of `canaries`, raw or as a JSON string escapes it.
///
/// The whole run logs tens of megabytes and registers thousands of canaries, unoptimized: one
/// substring search per canary would take minutes. Instead every canary is indexed by its first
/// [`MIN_CANARY_LEN`] bytes, and each position of the log is looked up once (a bit filter first).
pub fn find_leaks(log: &str, canaries: &BTreeMap<String, Canary>) -> Vec<Leak> {
    let mut needles: Vec<(String, Canary)> = Vec::new();
    for (value, kind) in canaries.iter().filter(|(value, _)| value.len() >= MIN_CANARY_LEN) {
        needles.push((value.clone(), *kind));
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped.trim_start_matches('"').trim_end_matches('"');
        if escaped != value {
            needles.push((escaped.to_owned(), *kind));
        }
    }
    let prefix = |bytes: &[u8]| -> u64 {
        let mut window = [0u8; 8];
        window.copy_from_slice(&bytes[..MIN_CANARY_LEN]);
        u64::from_le_bytes(window)
    };
    let mut by_prefix: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut filter = vec![0u64; (1 << FILTER_BITS_LOG2) / 64];
    for (i, (needle, _)) in needles.iter().enumerate() {
        let window = prefix(needle.as_bytes());
        by_prefix.entry(window).or_default().push(i);
        let bit = filter_bit(window);
        filter[bit / 64] |= 1 << (bit % 64);
    }
    let mut leaks = Vec::new();
    for line in log.lines() {
        let bytes = line.as_bytes();
        let mut found: Vec<usize> = Vec::new();
        for start in 0..(bytes.len() + 1).saturating_sub(MIN_CANARY_LEN) {
            let window = prefix(&bytes[start..]);
            let bit = filter_bit(window);
            if filter[bit / 64] & (1 << (bit % 64)) == 0 {
                continue;
            }
            for &i in by_prefix.get(&window).into_iter().flatten() {
                if bytes[start..].starts_with(needles[i].0.as_bytes()) && !found.contains(&i) {
                    found.push(i);
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        // Longest first, so a canary that contains another is masked whole.
        found.sort_by_key(|&i| std::cmp::Reverse(needles[i].0.len()));
        let mut masked_line = line.to_owned();
        let mut kinds = Vec::new();
        for &i in &found {
            let (needle, kind) = &needles[i];
            masked_line = masked_line.replace(needle.as_str(), &format!("[{}]", kind.label()));
            kinds.push(*kind);
        }
        kinds.sort();
        kinds.dedup();
        leaks.push(Leak { kinds, masked_line });
    }
    leaks
}
