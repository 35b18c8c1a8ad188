//! Crash durability (issue 9): writers load the real `portcullis` binary with two kinds of write, an
//! application's audit events (`POST /v1/audit/events`, group-committed) and accounts made by an
//! owner (`POST /v1/admin/users`, audited in the change's own transaction). Mid-load the server is
//! killed with SIGKILL, so nothing gets to flush, checkpoint or close. Then: the audit chain verifies
//! as the crash left it; the server restarts on the same data dir and database; every write that was
//! answered 2xx is there with what the answer said; and after a clean stop the chain verifies again.
//! Writes still unanswered at the kill may or may not be there, but each is all there or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};

use crate::support::PASSWORD;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const OWNER: &str = "owner@example.com";
/// Writer tasks per kind of write.
const WRITERS: usize = 3;
/// Audit events in each application request (one batch: all of them commit or none does).
const BATCH: usize = 3;
/// The kill comes once this many writes are acknowledged, at least [`MIN_EACH`] of each kind.
const KILL_AFTER: usize = 300;
const MIN_EACH: usize = 30;
/// Bound on everything that waits: a start, the load reaching the kill, a writer's request.
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the data lives: SQLite in the data dir, or a PostgreSQL database.
#[derive(Clone, Copy)]
enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

/// A `portcullis` command on `data_dir` (and the database), with a clean environment, cheap hashing
/// and no rate limits: the load must be refused by nothing but the crash.
fn portcullis(data_dir: &Path, backend: Backend<'_>) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .env("PORTCULLIS_PASSWORD__ARGON2_MEMORY_KIB", "1024")
        .env("PORTCULLIS_PASSWORD__ARGON2_ITERATIONS", "1")
        .env("PORTCULLIS_RATE_LIMITS__ENABLED", "false")
        .arg("--data-dir")
        .arg(data_dir);
    if let Backend::Postgres(url) = backend {
        command.env("PORTCULLIS_DATABASE_URL", url);
    }
    command
}

/// `portcullis serve` as a child process, its log in a file.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// Starts `serve` on port 0 and waits (bounded) until it listens and is ready.
    async fn start(data_dir: &Path, backend: Backend<'_>, log: PathBuf) -> Server {
        let child = portcullis(data_dir, backend)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server { child, base: String::new(), log };
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            let text = server.log_text();
            if let Some(after) = text.split("listening on http://127.0.0.1:").nth(1) {
                break after.chars().take_while(char::is_ascii_digit).collect::<String>();
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited ({status}) before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "serve did not listen within {PATIENCE:?}:\n{text}");
            // Polling the log for the startup line, not timing anything.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server.base = format!("http://127.0.0.1:{port}");
        let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
        assert_eq!(ready.status(), 200, "{}", server.log_text());
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no handler runs, nothing is flushed, checkpointed or closed.
    fn kill(mut self) {
        kill_process(Pid::from_child(&self.child), Signal::KILL).unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::KILL.as_raw()),
            "{status}"
        );
    }

    /// SIGTERM, expecting a clean exit.
    fn stop(mut self) {
        kill_process(Pid::from_child(&self.child), Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }
}

/// `portcullis audit verify` on the data dir and database: exit code and output.
fn audit_verify(data_dir: &Path, backend: Backend<'_>) -> (i32, String) {
    let output = portcullis(data_dir, backend).args(["audit", "verify"]).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// The owner, made with `portcullis users create` before the first start (no setup token needed).
fn create_owner(data_dir: &Path, backend: Backend<'_>) {
    let mut child = portcullis(data_dir, backend)
        .args(["users", "create", "--email", OWNER, "--role", "owner"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "users create: {}", String::from_utf8_lossy(&output.stderr));
}

/// A request that must succeed with `status`: its JSON body.
async fn expect_status(request: reqwest::RequestBuilder, status: u16) -> Value {
    let response = request.send().await.unwrap();
    let actual = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(actual, status, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The owner's access token.
async fn login(client: &reqwest::Client, server: &Server) -> String {
    let body = json!({"email": OWNER, "password": PASSWORD});
    let tokens = expect_status(client.post(server.url("/v1/auth/login")).json(&body), 200).await;
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// An organization, a service account that is `owner` in it, and its key scoped to `audit:write`:
/// (organization id, key).
async fn audit_service(client: &reqwest::Client, server: &Server, owner: &str) -> (String, String) {
    let post = |path: &str| client.post(server.url(path)).bearer_auth(owner);
    let org = json!({"slug": "crash", "name": "Crash"});
    let org = expect_status(post("/v1/admin/organizations").json(&org), 201).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let account = json!({"organization_id": org, "name": "Loader", "role": "owner"});
    let account = expect_status(post("/v1/admin/service-accounts").json(&account), 201).await;
    let account = account["id"].as_str().unwrap();
    let key = json!({"name": "crash", "scopes": ["audit:write"], "expires_in_days": 1});
    let issued =
        expect_status(post(&format!("/v1/admin/service-accounts/{account}/api-keys")).json(&key), 201).await;
    (org, issued["key"].as_str().unwrap().to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `POST /v1/audit/events` with a batch of [`BATCH`] events.
    AuditEvents,
    /// `POST /v1/admin/users`.
    User,
}

/// One write a writer sent, named by its tag (`<kind>-<writer>-<n>`), and how it ended.
#[derive(Debug)]
struct Attempt {
    kind: Kind,
    tag: String,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Answered 2xx: the server's answer (the recorded events, or the account).
    Acknowledged(Value),
    /// Answered with another status: not acknowledged.
    Refused(u16),
    /// No (whole) answer. `in_flight`: the connection was up and the request sent before the kill
    /// was known; the rest are connection refusals after it.
    Unanswered { in_flight: bool },
}

/// What the writers share with the test: acknowledgement counts, a wake-up for each, and the kill.
#[derive(Default)]
struct Load {
    events_acked: AtomicUsize,
    users_acked: AtomicUsize,
    acked: tokio::sync::Notify,
    killed: AtomicBool,
}

/// The target ids of a batch's events.
fn event_targets(tag: &str) -> Vec<String> {
    (0..BATCH).map(|i| format!("{tag}-{i}")).collect()
}

fn user_email(tag: &str) -> String {
    format!("{tag}@example.com")
}

/// Sends writes of `kind` as fast as answers come, until one goes unanswered (the crash).
async fn writer(
    kind: Kind,
    w: usize,
    client: reqwest::Client,
    base: String,
    credential: String,
    org: String,
    load: Arc<Load>,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for n in 0.. {
        let (tag, request) = match kind {
            Kind::AuditEvents => {
                let tag = format!("ev-{w}-{n}");
                let events: Vec<Value> = event_targets(&tag)
                    .into_iter()
                    .map(|target| {
                        json!({"action": "crash.write", "organization_id": org, "subject": format!("w{w}"),
                               "target_type": "crash_write", "target_id": target, "details": {"n": n}})
                    })
                    .collect();
                let request = client
                    .post(format!("{base}/v1/audit/events"))
                    .header("x-api-key", &credential)
                    .json(&json!({"events": events}));
                (tag, request)
            }
            Kind::User => {
                let tag = format!("user-{w}-{n}");
                let body = json!({"email": user_email(&tag), "password": PASSWORD, "role": "member"});
                let request =
                    client.post(format!("{base}/v1/admin/users")).bearer_auth(&credential).json(&body);
                (tag, request)
            }
        };
        let before_kill = !load.killed.load(Ordering::SeqCst);
        // A response counts only whole: headers then a body cut by the kill is no answer.
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.text().await.map(|body| (status, body)).map_err(|_| true)
            }
            Err(error) => Err(!error.is_connect()),
        };
        let outcome = match answer {
            Ok((status, body)) if status.is_success() => {
                let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
                let counter = match kind {
                    Kind::AuditEvents => &load.events_acked,
                    Kind::User => &load.users_acked,
                };
                counter.fetch_add(1, Ordering::SeqCst);
                load.acked.notify_one();
                Outcome::Acknowledged(body)
            }
            Ok((status, _)) => Outcome::Refused(status.as_u16()),
            Err(sent) => Outcome::Unanswered { in_flight: sent && before_kill },
        };
        let done = matches!(outcome, Outcome::Unanswered { .. });
        attempts.push(Attempt { kind, tag, outcome });
        if done {
            break;
        }
    }
    attempts
}

/// Every event of the trail, oldest first, read a page at a time.
async fn all_events(client: &reqwest::Client, server: &Server, owner: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "200".to_owned())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let request = client.get(server.url("/v1/audit/events")).bearer_auth(owner).query(&query);
        let page = expect_status(request, 200).await;
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    events.reverse();
    events
}

/// Every account whose address starts with `prefix`: address → id.
async fn users_by_email(
    client: &reqwest::Client,
    server: &Server,
    owner: &str,
    prefix: &str,
) -> BTreeMap<String, String> {
    let mut users = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "200".to_owned()), ("email_prefix", prefix.to_owned())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let request = client.get(server.url("/v1/admin/users")).bearer_auth(owner).query(&query);
        let page = expect_status(request, 200).await;
        for user in page["users"].as_array().unwrap() {
            let email = user["email"].as_str().unwrap().to_owned();
            users.insert(email, user["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    users
}

/// What the restarted server holds of the load.
struct Restarted {
    /// The application's events, by target id.
    events: BTreeMap<String, Value>,
    /// The targets of `user.created` events.
    created: BTreeSet<String>,
    /// The load's accounts: address → id.
    users: BTreeMap<String, String>,
}

impl Restarted {
    fn read(trail: &[Value], users: BTreeMap<String, String>) -> Restarted {
        let target = |e: &Value| e["target"]["id"].as_str().unwrap().to_owned();
        let of = |action: &'static str| trail.iter().filter(move |e| e["action"] == action);
        Restarted {
            events: of("crash.write").map(|e| (target(e), e.clone())).collect(),
            created: of("user.created").map(target).collect(),
            users,
        }
    }

    /// What of an acknowledged write is missing or differs from the answer, each named.
    fn lost(&self, attempt: &Attempt, answer: &Value) -> Vec<String> {
        let mut lost = Vec::new();
        match attempt.kind {
            Kind::AuditEvents => {
                let recorded = answer["events"].as_array().unwrap();
                assert_eq!(recorded.len(), BATCH, "{answer}");
                for (target, promised) in event_targets(&attempt.tag).iter().zip(recorded) {
                    let found = self.events.get(target);
                    let same = |field: &str| found.is_some_and(|e| e[field] == promised[field]);
                    if !(same("id") && same("seq") && same("hash")) {
                        lost.push(format!(
                            "audit event {target}: acknowledged as {promised}, after the restart {found:?}"
                        ));
                    }
                }
            }
            Kind::User => {
                let email = user_email(&attempt.tag);
                let id = answer["id"].as_str().unwrap();
                let found = self.users.get(&email);
                if found.map(String::as_str) != Some(id) {
                    lost.push(format!("account {email}: acknowledged as {id}, after the restart {found:?}"));
                }
                if !self.created.contains(id) {
                    lost.push(format!("account {email} ({id}): its user.created event is missing"));
                }
            }
        }
        lost
    }

    /// Whether an unanswered write committed, asserting it did so whole: all of a batch's events,
    /// or an account with its `user.created` event.
    fn holds(&self, attempt: &Attempt) -> bool {
        match attempt.kind {
            Kind::AuditEvents => {
                let targets = event_targets(&attempt.tag);
                let found = targets.iter().filter(|t| self.events.contains_key(*t)).count();
                assert!(found == 0 || found == BATCH, "{}: {found} of {BATCH} events", attempt.tag);
                found == BATCH
            }
            Kind::User => {
                let email = user_email(&attempt.tag);
                let id = self.users.get(&email);
                let audited = id.is_some_and(|id| self.created.contains(id));
                assert_eq!(
                    id.is_some(),
                    audited,
                    "{email}: the account and its user.created event are apart"
                );
                id.is_some()
            }
        }
    }
}

/// How the writes of one run ended.
#[derive(Debug, Default)]
struct Tally {
    audit_batches: usize,
    accounts: usize,
    in_flight_committed: usize,
    in_flight_lost: usize,
    refused_connections: usize,
    refused: Vec<String>,
}

impl Tally {
    fn in_flight(&self) -> usize {
        self.in_flight_committed + self.in_flight_lost
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes acknowledged ({} audit batches = {} events, {} accounts); {} in flight at the kill \
             ({} committed, {} lost); {} connections refused after it; other answers: {:?}",
            self.audit_batches + self.accounts,
            self.audit_batches,
            self.audit_batches * BATCH,
            self.accounts,
            self.in_flight(),
            self.in_flight_committed,
            self.in_flight_lost,
            self.refused_connections,
            self.refused,
        )
    }
}

/// The whole scenario on one backend: load, SIGKILL, verify, restart, check every acknowledged
/// write, stop, verify.
async fn every_acknowledged_write_survives_a_sigkill(backend: Backend<'_>, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    create_owner(&data_dir, backend);
    let server = Server::start(&data_dir, backend, dir.path().join("serve-1.log")).await;
    let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap();
    let owner = login(&client, &server).await;
    let (org, key) = audit_service(&client, &server, &owner).await;

    // Arrange the load: writers of both kinds, sending as fast as they are answered.
    let load = Arc::new(Load::default());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        for (kind, credential) in [(Kind::AuditEvents, &key), (Kind::User, &owner)] {
            writers.push(tokio::spawn(writer(
                kind,
                w,
                client.clone(),
                server.base.clone(),
                credential.clone(),
                org.clone(),
                load.clone(),
            )));
        }
    }

    // Act: SIGKILL once enough writes of each kind are acknowledged, with the writers still going.
    let started = Instant::now();
    let enough = async {
        loop {
            let (events, users) =
                (load.events_acked.load(Ordering::SeqCst), load.users_acked.load(Ordering::SeqCst));
            if events >= MIN_EACH && users >= MIN_EACH && events + users >= KILL_AFTER {
                break;
            }
            load.acked.notified().await;
        }
    };
    if tokio::time::timeout(PATIENCE, enough).await.is_err() {
        let text = server.log_text();
        server.kill();
        panic!("the load did not reach {KILL_AFTER} acknowledged writes within {PATIENCE:?}:\n{text}");
    }
    load.killed.store(true, Ordering::SeqCst);
    let loaded_for = started.elapsed();
    server.kill();
    let mut attempts = Vec::new();
    for writer in writers {
        attempts.extend(writer.await.unwrap());
    }

    // The chain verifies as the crash left it: no clean-stop checkpoint, events under a day old.
    let (code, out) = audit_verify(&data_dir, backend);
    assert_eq!(code, 0, "audit verify right after the SIGKILL: {out}");
    assert!(out.contains("audit chain intact"), "{out}");

    // Restart on the same data dir and database, and read back everything.
    let server = Server::start(&data_dir, backend, dir.path().join("serve-2.log")).await;
    let owner = login(&client, &server).await;
    let events = all_events(&client, &server, &owner).await;
    let users = users_by_email(&client, &server, &owner, "user-").await;

    // The trail is one gapless sequence from 1, and each event is there once.
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "the chain has gaps or repeats");
    let restarted = Restarted::read(&events, users);
    let mut tally = Tally::default();
    let mut lost_acknowledged: Vec<String> = Vec::new();
    for attempt in &attempts {
        match &attempt.outcome {
            Outcome::Acknowledged(answer) => {
                match attempt.kind {
                    Kind::AuditEvents => tally.audit_batches += 1,
                    Kind::User => tally.accounts += 1,
                }
                lost_acknowledged.extend(restarted.lost(attempt, answer));
            }
            Outcome::Refused(status) => tally.refused.push(format!("{} {status}", attempt.tag)),
            Outcome::Unanswered { in_flight: false } => tally.refused_connections += 1,
            Outcome::Unanswered { in_flight: true } if restarted.holds(attempt) => {
                tally.in_flight_committed += 1
            }
            Outcome::Unanswered { in_flight: true } => tally.in_flight_lost += 1,
        }
    }
    eprintln!(
        "durability on {name}: SIGKILL after {loaded_for:?} of load; {tally}; {} events in the trail \
         after the restart",
        events.len()
    );
    // The test can fail: there were acknowledged writes of both kinds, and the kill cut some short.
    assert!(tally.audit_batches >= MIN_EACH && tally.accounts >= MIN_EACH, "{tally}");
    assert!(tally.in_flight() > 0, "no write was in flight when the server was killed: {tally}");
    assert!(
        lost_acknowledged.is_empty(),
        "{} acknowledged write(s) lost or changed by the crash:\n{}",
        lost_acknowledged.len(),
        lost_acknowledged.join("\n")
    );
    // Every account of the load has its user.created event (one transaction), acknowledged or not.
    for (email, id) in &restarted.users {
        assert!(restarted.created.contains(id), "{email} ({id}) exists without its user.created event");
    }

    // The restarted server takes new writes of both kinds on the chain the crash left.
    let event = json!({"events": [{"action": "crash.after", "organization_id": org, "subject": "after"}]});
    expect_status(client.post(server.url("/v1/audit/events")).header("x-api-key", &key).json(&event), 201)
        .await;
    let user = json!({"email": "after-restart@example.com", "password": PASSWORD});
    expect_status(client.post(server.url("/v1/admin/users")).bearer_auth(&owner).json(&user), 201).await;
    server.stop();
    let (code, out) = audit_verify(&data_dir, backend);
    assert_eq!(code, 0, "audit verify after the restart and a clean stop: {out}");
    assert!(out.contains("audit chain intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_sigkill_and_the_audit_chain_verifies_on_sqlite() {
    every_acknowledged_write_survives_a_sigkill(Backend::Sqlite, "SQLite").await;
}

/// The same on a fresh PostgreSQL database when `PORTCULLIS_TEST_POSTGRES_URL` names a server
/// (`.ci/run` starts one); dropped afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_sigkill_and_the_audit_chain_verifies_on_postgresql() {
    use sqlx::Connection;
    let Ok(admin_url) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL") else {
        eprintln!("skipped: PORTCULLIS_TEST_POSTGRES_URL is not set, so there is no PostgreSQL to crash on");
        return;
    };
    let name = format!("portcullis_durability_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, query) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
    let (host, _) = base.rsplit_once('/').unwrap();
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    let url = format!("{host}/{name}{query}");

    every_acknowledged_write_survives_a_sigkill(Backend::Postgres(&url), "PostgreSQL").await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}
