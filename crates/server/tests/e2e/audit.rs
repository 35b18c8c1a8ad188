//! The audit trail end to end: what `GET /v1/audit/events` shows of an owner's actions (client,
//! request, filters, pages, refusals), applications writing their own events with an API key, the
//! `portcullis audit` command line on a stopped server's database (verify, export, a tampered row),
//! and two servers writing into one chain at once (PostgreSQL).

use std::process::Command;

use portcullis::config::{Config, DatabaseTarget};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Go, TestApp, expect_problem, expect_unauthorized, login, login_response, on_postgres, register,
    setup_owner, spawn_app, spawn_beside, spawn_with_setup_token,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const PASSWORD: &str = "velvet otter migrates at dusk";
/// A user agent no other request of the suite sends.
const AGENT: &str = "audit-e2e/1.0 (distinctive; +https://example.com/agent)";

/// Who calls.
#[derive(Clone, Copy)]
enum As<'a> {
    Bearer(&'a str),
    Key(&'a str),
    Nobody,
}

fn with(request: reqwest::RequestBuilder, who: As<'_>) -> reqwest::RequestBuilder {
    match who {
        As::Bearer(token) => request.bearer_auth(token),
        As::Key(key) => request.header("x-api-key", key),
        As::Nobody => request,
    }
}

/// `GET /v1/audit/events` with these query parameters, as given (repeats and unknown names too).
async fn list(app: &TestApp, who: As<'_>, query: &[(&str, &str)]) -> reqwest::Response {
    with(app.call(Method::GET, "/v1/audit/events"), who).query(query).go().await
}

/// A page that must be 200: the whole body.
async fn page(app: &TestApp, who: As<'_>, query: &[(&str, &str)]) -> Value {
    let response = list(app, who, query).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{query:?}: {body}");
    body
}

/// The events of one page that must be 200.
async fn events(app: &TestApp, who: As<'_>, query: &[(&str, &str)]) -> Vec<Value> {
    page(app, who, query).await["events"].as_array().unwrap().clone()
}

/// `POST /v1/audit/events`.
async fn post_events(app: &TestApp, who: As<'_>, body: &Value) -> reqwest::Response {
    with(app.call(Method::POST, "/v1/audit/events"), who).json(body).go().await
}

/// `POST path` with a JSON body as the owner, expecting 201; the created resource.
async fn create(app: &TestApp, bearer: &str, path: &str, body: Value) -> Value {
    let response = app.call(Method::POST, path).bearer_auth(bearer).json(&body).go().await;
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{path}: {created}");
    created
}

/// The account id behind an access token.
async fn account_id(app: &TestApp, access: &str) -> String {
    let me: Value = app.me(access).await.json().await.unwrap();
    me["id"].as_str().unwrap_or_else(|| panic!("no id in {me}")).to_owned()
}

/// The fields a 422 `validation` problem names.
async fn invalid_fields(response: reqwest::Response) -> Vec<String> {
    let body = expect_problem(response, 422, "validation").await;
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {body}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn is_hash(value: &Value) -> bool {
    value.as_str().is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An organization, a service account that is `owner` in it, and that account's key scoped to
/// `audit:write audit:read`, all made over HTTP by the owner: (organization id, account id, key).
async fn audit_service(app: &TestApp, owner: &str, slug: &str) -> (String, String, String) {
    let org = create(app, owner, "/v1/admin/organizations", json!({"slug": slug, "name": "Acme"})).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let account = create(
        app,
        owner,
        "/v1/admin/service-accounts",
        json!({"organization_id": org, "name": "Billing", "role": "owner"}),
    )
    .await;
    let account = account["id"].as_str().unwrap().to_owned();
    let issued = create(
        app,
        owner,
        &format!("/v1/admin/service-accounts/{account}/api-keys"),
        json!({"name": "audit", "scopes": ["audit:write", "audit:read"], "expires_in_days": 7}),
    )
    .await;
    (org, account, issued["key"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_owners_actions_are_listed_with_client_and_request_and_filters_pages_and_refusals_hold() {
    let (app, setup_token) = spawn_with_setup_token(|_| {}).await;
    setup_owner(&app, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&app, "owner@example.com", PASSWORD).await;
    let owner_id = account_id(&app, &owner.access).await;
    register(&app, "member@example.com", PASSWORD).await;
    let member = login(&app, "member@example.com", PASSWORD).await;
    let member_id = account_id(&app, &member.access).await;

    let created = app
        .call(Method::POST, "/v1/admin/organizations")
        .bearer_auth(&owner.access)
        .header(reqwest::header::USER_AGENT, AGENT)
        .json(&json!({"slug": "acme", "name": "Acme"}))
        .go()
        .await;
    assert_eq!(created.status(), 201);
    let created_request = created.headers()["x-request-id"].to_str().unwrap().to_owned();
    let org_id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let failed =
        login_response(&app, json!({"email": "member@example.com", "password": "not the password at all"}))
            .await;
    assert_eq!(failed.status(), 401);
    let failed_request = failed.headers()["x-request-id"].to_str().unwrap().to_owned();
    let owner_as = As::Bearer(&owner.access);

    // The owner's action names who, what, on what, how it ended, and the request it came in on.
    let about_org = events(&app, owner_as, &[("target_id", &org_id)]).await;
    let event = about_org
        .iter()
        .find(|e| e["action"] == "organization.created")
        .unwrap_or_else(|| panic!("no organization.created event: {about_org:#?}"));
    assert_eq!(event["actor"], json!({"type": "user", "id": owner_id, "on_behalf_of": null}), "{event}");
    assert_eq!(event["target"], json!({"type": "organization", "id": org_id}), "{event}");
    assert_eq!(event["organization_id"], org_id, "{event}");
    assert_eq!(event["outcome"], "success", "{event}");
    assert_eq!(event["ip"], "127.0.0.1", "{event}");
    assert_eq!(event["user_agent"], AGENT, "{event}");
    assert_eq!(event["request_id"], created_request.as_str(), "{event}");
    assert!(is_hash(&event["hash"]) && is_hash(&event["prev_hash"]), "{event}");
    assert!(about_org.iter().all(|e| e["target"]["id"] == org_id.as_str()), "{about_org:#?}");

    // Filters: an action prefix, an actor (by or for), an outcome.
    let logins = events(&app, owner_as, &[("action", "user.login.")]).await;
    assert!(logins.iter().all(|e| e["action"].as_str().unwrap().starts_with("user.login.")), "{logins:#?}");
    for action in ["user.login.succeeded", "user.login.failed"] {
        assert!(logins.iter().any(|e| e["action"] == action), "no {action}: {logins:#?}");
    }
    let by_owner = events(&app, owner_as, &[("actor", &owner_id), ("limit", "200")]).await;
    assert!(
        by_owner.iter().all(|e| e["actor"]["id"] == owner_id.as_str()
            || e["actor"]["on_behalf_of"] == owner_id.as_str()),
        "{by_owner:#?}"
    );
    assert!(by_owner.iter().any(|e| e["action"] == "organization.created"), "{by_owner:#?}");
    let failures = events(&app, owner_as, &[("outcome", "failure")]).await;
    assert!(failures.iter().all(|e| e["outcome"] == "failure"), "{failures:#?}");
    let failed_login = failures
        .iter()
        .find(|e| e["action"] == "user.login.failed" && e["target"]["id"] == member_id.as_str())
        .unwrap_or_else(|| panic!("no failed login of the member: {failures:#?}"));
    assert_eq!(failed_login["actor"]["type"], "anonymous", "{failed_login}");
    assert_eq!(failed_login["request_id"], failed_request.as_str(), "{failed_login}");
    assert_eq!(failed_login["ip"], "127.0.0.1", "{failed_login}");

    // A time window: nothing before 2000 or after 2999, and this run's events in between.
    for window in [("until", "2000-01-01T00:00:00Z"), ("since", "2999-01-01T00:00:00Z")] {
        assert!(events(&app, owner_as, &[window]).await.is_empty(), "{window:?}");
    }
    let window =
        [("since", "2000-01-01T00:00:00Z"), ("until", "2999-01-01T00:00:00Z"), ("target_id", &org_id)];
    assert_eq!(events(&app, owner_as, &window).await.len(), about_org.len());

    // Pages of three, following `next`: newest first, every event once, down to the first.
    let mut seqs: Vec<i64> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 1000, "the pages never end");
        let mut query = vec![("limit", "3")];
        if let Some(after) = &after {
            query.push(("after", after));
        }
        let body = page(&app, owner_as, &query).await;
        let batch = body["events"].as_array().unwrap();
        assert!(batch.len() <= 3, "{body}");
        seqs.extend(batch.iter().map(|e| e["seq"].as_i64().unwrap()));
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(pages > 2, "the log fills several pages of three: {seqs:?}");
    assert_eq!(seqs, (1..=seqs[0]).rev().collect::<Vec<_>>(), "newest first without gaps or repeats");

    // Refusals: no credential, no permission, a malformed filter, an unknown parameter.
    expect_unauthorized(list(&app, As::Nobody, &[]).await).await;
    expect_problem(list(&app, As::Bearer(&member.access), &[]).await, 403, "forbidden").await;
    let org_filter = [("organization_id", org_id.as_str())];
    expect_problem(list(&app, As::Bearer(&member.access), &org_filter).await, 403, "forbidden").await;
    let malformed =
        [("outcome", "maybe"), ("since", "yesterday"), ("limit", "0"), ("organization_id", "acme")];
    let fields = invalid_fields(list(&app, owner_as, &malformed).await).await;
    for field in ["/outcome", "/since", "/limit", "/organization_id"] {
        assert!(fields.iter().any(|f| f == field), "{field} not named in {fields:?}");
    }
    let twice =
        invalid_fields(list(&app, owner_as, &[("action", "user."), ("action", "session.")]).await).await;
    assert_eq!(twice, ["/action"]);
    expect_problem(list(&app, owner_as, &[("colour", "blue")]).await, 400, "malformed-request").await;
    app.stop().await;
}

#[tokio::test]
async fn an_application_records_its_events_with_a_key_and_a_refused_batch_writes_nothing() {
    let (app, setup_token) = spawn_with_setup_token(|_| {}).await;
    setup_owner(&app, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&app, "owner@example.com", PASSWORD).await;
    let (org, account, key) = audit_service(&app, &owner.access, "acme").await;
    let service = As::Key(&key);
    let invoice = |n: u32| {
        json!({
            "action": "invoice.paid", "organization_id": org, "subject": "customer-42",
            "target_type": "invoice", "target_id": format!("inv-{n}"),
            "details": {"amount": n * 10, "currency": "EUR"}
        })
    };

    let response = post_events(&app, service, &json!({"events": [invoice(1), invoice(2), invoice(3)]})).await;
    assert_eq!(response.status(), 201);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let recorded: Value = response.json().await.unwrap();
    let recorded = recorded["events"].as_array().unwrap();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let seqs: Vec<i64> = recorded.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2], "one batch, consecutive places");
    assert!(recorded.iter().all(|e| is_hash(&e["hash"]) && e["id"].is_string()), "{recorded:?}");

    // The owner sees them as the application's, done for the subject; so does the key, in its
    // organization (and only there).
    let listed = events(&app, As::Bearer(&owner.access), &[("action", "invoice.")]).await;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    for (event, n) in listed.iter().zip([3, 2, 1]) {
        let place = recorded[n as usize - 1].clone();
        assert_eq!((event["seq"].clone(), event["id"].clone()), (place["seq"].clone(), place["id"].clone()));
        assert_eq!(event["hash"], place["hash"]);
        assert_eq!(
            event["actor"],
            json!({"type": "application", "id": account, "on_behalf_of": "customer-42"}),
            "{event}"
        );
        assert_eq!(event["target"], json!({"type": "invoice", "id": format!("inv-{n}")}), "{event}");
        assert_eq!(event["organization_id"], org.as_str(), "{event}");
        assert_eq!(event["details"], json!({"amount": n * 10, "currency": "EUR"}), "{event}");
        assert_eq!((event["outcome"].as_str(), event["ip"].as_str()), (Some("success"), Some("127.0.0.1")));
        assert_eq!(event["request_id"], request_id.as_str(), "{event}");
    }
    let own = events(&app, service, &[("organization_id", &org), ("action", "invoice.paid")]).await;
    assert_eq!(own.len(), 3, "{own:#?}");
    expect_problem(list(&app, service, &[("action", "invoice.")]).await, 403, "forbidden").await;

    // One bad event refuses the whole batch, naming it.
    let mut bad = invoice(5);
    bad["action"] = json!("Not An Action");
    let mut refused = invoice(4);
    refused["action"] = json!("refused.batch");
    let batch = json!({"events": [refused.clone(), bad, refused.clone()]});
    let fields = invalid_fields(post_events(&app, service, &batch).await).await;
    assert_eq!(fields, ["/events/1/action"]);
    // More than 100 events.
    let bulk: Vec<Value> =
        (0..101).map(|_| json!({"action": "bulk.event", "organization_id": org})).collect();
    let fields = invalid_fields(post_events(&app, service, &json!({"events": bulk})).await).await;
    assert_eq!(fields, ["/events"]);
    // An event for no organization: the account's audit:write is only in its own.
    let orphan = json!({"events": [{"action": "orphan.event", "subject": "customer-42"}]});
    expect_problem(post_events(&app, service, &orphan).await, 403, "forbidden").await;
    // A person, even the owner, does not write application events.
    let by_owner = post_events(&app, As::Bearer(&owner.access), &json!({"events": [refused]})).await;
    expect_problem(by_owner, 403, "forbidden").await;
    // A body over the server's limit (64 KiB by default).
    let pad = "x".repeat(70 * 1024);
    let huge = json!({"events": [{"action": "huge.event", "organization_id": org, "details": {"pad": pad}}]});
    let too_large = post_events(&app, service, &huge).await;
    assert_eq!(too_large.status(), 413, "{}", too_large.text().await.unwrap());

    for action in ["refused.", "bulk.", "orphan.", "huge."] {
        let written = events(&app, As::Bearer(&owner.access), &[("action", action)]).await;
        assert!(written.is_empty(), "a refused request wrote {action}: {written:#?}");
    }
    app.stop().await;
}

/// Runs `portcullis audit ARGS` against `config`'s data dir and database, with a clean environment.
fn audit_cli(config: &Config, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.env_clear().arg("--data-dir").arg(&config.data_dir).arg("audit").args(args);
    if let Some(url) = &config.database.url {
        command.env("PORTCULLIS_DATABASE__URL", url.expose());
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs one statement on `config`'s database directly, as someone with access to the files or the
/// database server could; it must change exactly one row.
async fn tamper(config: &Config, statement: &str) {
    use sqlx::Connection;
    let changed = match config.database_target().unwrap() {
        DatabaseTarget::Sqlite(path) => {
            let mut db =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            let done = sqlx::query(statement).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
            done.rows_affected()
        }
        DatabaseTarget::Postgres => {
            let url = config.database.url.as_ref().unwrap().expose();
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            let done = sqlx::query(statement).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
            done.rows_affected()
        }
    };
    assert_eq!(changed, 1, "{statement}");
}

#[tokio::test]
async fn the_cli_verifies_the_chain_exports_it_as_json_lines_and_finds_an_event_changed_in_the_database() {
    let app = spawn_app().await;
    register(&app, "cli@example.com", PASSWORD).await;
    let failed =
        login_response(&app, json!({"email": "cli@example.com", "password": "not the password at all"}))
            .await;
    assert_eq!(failed.status(), 401);
    // Stopped, but its data dir (and database) kept.
    let TestApp { server, config, _dir, .. } = app;
    server.shutdown().await;

    let (code, out, err) = audit_cli(&config, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit chain intact"), "{out}");

    let (code, out, err) = audit_cli(&config, &["export", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let exported: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(exported.len() >= 3, "{out}");
    let mut prev_hash = "0".repeat(64);
    for (i, event) in exported.iter().enumerate() {
        assert!(event.is_object(), "{event}");
        assert_eq!(event["seq"], i as i64 + 1, "in chain order from the first: {event}");
        assert!(is_hash(&event["hash"]), "{event}");
        assert_eq!(event["prev_hash"], prev_hash.as_str(), "each links to the one before: {event}");
        prev_hash = event["hash"].as_str().unwrap().to_owned();
    }
    assert!(exported.iter().any(|e| e["action"] == "user.login.failed"), "{out}");
    let since = ["export", "--since", "2999-01-01T00:00:00Z", "--format", "jsonl"];
    let (code, out, err) = audit_cli(&config, &since);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = audit_cli(&config, &["export", "--format", "csv"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");

    tamper(&config, "UPDATE audit_events SET action = 'x.y' WHERE seq = 3").await;
    let (code, out, err) = audit_cli(&config, &["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("broken at seq 3"), "{err}");
    assert!(!out.contains("intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_writing_at_once_into_one_database_keep_one_gapless_chain_that_verifies() {
    if !on_postgres() {
        eprintln!(
            "skipped: two servers share one database only on PostgreSQL (SQLite's data dir is locked to \
             one server); run with PORTCULLIS_E2E_ON_POSTGRES=1 and PORTCULLIS_TEST_POSTGRES_URL"
        );
        return;
    }
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 4;
    // Every client's failed login waits for a hash rather than being shed (503) on a small machine;
    // the second server takes the first one's configuration.
    let (first, setup_token) = spawn_with_setup_token(|c| c.password.max_queued_hashes = 2 * CLIENTS).await;
    let second = spawn_beside(&first).await;
    setup_owner(&first, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&first, "owner@example.com", PASSWORD).await;
    let (org, _, key) = audit_service(&first, &owner.access, "acme").await;

    let mut clients = Vec::new();
    for (s, server) in [&first, &second].into_iter().enumerate() {
        for c in 0..CLIENTS {
            let (client, base, key, org) = (server.client.clone(), server.url(""), key.clone(), org.clone());
            clients.push(tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let login = client
                        .post(format!("{base}/v1/auth/login"))
                        .json(
                            &json!({"email": format!("ghost-{s}-{c}-{r}@example.com"), "password": "wrong"}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(login.status(), 401);
                    let event = |n: usize| {
                        json!({"action": "load.event", "organization_id": org,
                               "subject": format!("client-{s}-{c}"), "details": {"round": r, "n": n}})
                    };
                    let posted = client
                        .post(format!("{base}/v1/audit/events"))
                        .header("x-api-key", &key)
                        .json(&json!({"events": [event(0), event(1)]}))
                        .send()
                        .await
                        .unwrap();
                    let status = posted.status();
                    let body: Value = posted.json().await.unwrap();
                    assert_eq!(status, 201, "{body}");
                    let seqs: Vec<i64> = body["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["seq"].as_i64().unwrap())
                        .collect();
                    assert_eq!(seqs.len(), 2);
                    assert_eq!(seqs[1], seqs[0] + 1, "a batch is contiguous even under contention");
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }

    // Every event once, in one gapless sequence, whichever server wrote it.
    let mut seqs: Vec<i64> = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut after: Option<String> = None;
    for pages in 0.. {
        assert!(pages < 1000, "the pages never end");
        let mut query = vec![("limit", "200")];
        if let Some(after) = &after {
            query.push(("after", after));
        }
        let body = page(&second, As::Bearer(&owner.access), &query).await;
        for event in body["events"].as_array().unwrap() {
            seqs.push(event["seq"].as_i64().unwrap());
            *counts.entry(event["action"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=seqs[0]).rev().collect::<Vec<_>>(), "one chain without gaps or repeats");
    assert_eq!(counts.get("load.event"), Some(&(2 * CLIENTS * ROUNDS * 2)), "{counts:?}");
    assert_eq!(counts.get("user.login.failed"), Some(&(2 * CLIENTS * ROUNDS)), "{counts:?}");

    for server in [&first, &second] {
        let report = server.server.app().verify_audit_chain(&|_, _| {}).await.unwrap();
        assert_eq!(report.broken, None, "{report:?}");
        assert!(report.last_seq >= seqs[0] && report.events as i64 == report.last_seq, "{report:?}");
    }
    second.stop().await;
    first.stop().await;
}
