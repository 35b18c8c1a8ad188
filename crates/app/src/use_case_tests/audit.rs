//! Use-case tests of the audit trail's core: the chain and its verification against someone who
//! writes to the database directly (change, delete, insert, reorder, cut the tail, rewrite and
//! rehash), signed checkpoints, retention, group commit under concurrent writers, applications'
//! events, and who may read the trail.

use portcullis_domain::audit::{GENESIS_HASH, event_hash};
use portcullis_domain::{ActorKind, AuditEvent, BuiltinRole, Outcome};
use portcullis_store_sqlite::{SqliteOptions, SqliteStore};
use secrecy::ExposeSecret;
use sqlx::Connection;

use super::admin::{ADMIN, forbidden, principal};
use super::*;
use crate::audit::{ApplicationEvent, AuditEntry, AuditEventFilter, RequestContext, within_request};

/// An app on a SQLite file, so a test can also open the file behind the app's back.
struct FileApp {
    t: TestApp,
    path: std::path::PathBuf,
    /// The seq of the last event written at start (the keyring's first keys): tests count from it.
    b: i64,
    _dir: tempfile::TempDir,
}

async fn file_app_with(settings: AppSettings) -> FileApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let store = SqliteStore::open(&SqliteOptions::new(path.clone())).await.unwrap();
    store.migrate().await.unwrap();
    let t = testing::app_with(store, settings);
    t.app.load_keys().await.unwrap();
    let b = all_events(&t.app).await.last().map_or(0, |e| e.seq);
    FileApp { t, path, b, _dir: dir }
}

async fn file_app() -> FileApp {
    file_app_with(testing::settings()).await
}

/// A connection of the attacker's own, with write access to the database file.
async fn raw(path: &std::path::Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

async fn exec(path: &std::path::Path, sql: &str) {
    let mut conn = raw(path).await;
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Writes `n` system events `test.event.N` through the group-commit writer.
async fn write_events(app: &App, n: usize) {
    for i in 0..n {
        app.record_audit([AuditEntry::system("test.event.written").detail("n", i)]).await.unwrap();
    }
}

async fn all_events(app: &App) -> Vec<AuditEvent> {
    let mut tx = app.store().begin_read().await.unwrap();
    let events = tx.audit_events_after(0, 100_000).await.unwrap();
    tx.rollback().await.unwrap();
    events
}

async fn verify(app: &App) -> crate::audit::VerifyReport {
    app.verify_audit_chain(&|_, _| {}).await.unwrap()
}

/// Asserts the chain is broken exactly at `seq`, for a reason containing `why`.
async fn broken_at(app: &App, seq: i64, why: &str) {
    let report = verify(app).await;
    let Some(broken) = report.broken.clone() else { panic!("tampering went unnoticed: {report:?}") };
    assert_eq!(broken.seq, seq, "{}", broken.reason);
    assert!(broken.reason.contains(why), "{}", broken.reason);
}

#[tokio::test]
async fn every_event_links_to_the_one_before_and_the_chain_verifies() {
    let f = file_app().await;
    write_events(&f.t.app, 5).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    write_events(&f.t.app, 3).await;

    let events = all_events(&f.t.app).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=f.b + 8).collect::<Vec<_>>());
    let mut prev = GENESIS_HASH;
    for event in &events {
        assert_eq!(event.prev_hash, prev);
        assert_eq!(event.hash, event_hash(&prev, event.seq, &event.record));
        prev = event.hash;
    }
    let report = verify(&f.t.app).await;
    assert_eq!(
        (report.broken, report.events, report.checkpoints, report.last_seq),
        (None, f.b as u64 + 8, 1, f.b + 8)
    );
}

#[tokio::test]
async fn changing_any_field_of_an_event_is_detected_at_that_event() {
    for change in [
        "action = 'test.event.forged'",
        "details = '{\"n\":99}'",
        "outcome = 'failure'",
        "actor_id = 'someone-else'",
        "at = at - 1000",
        "ip = x'00'",
        "request_id = 'other'",
    ] {
        let f = file_app().await;
        write_events(&f.t.app, 5).await;
        exec(&f.path, &format!("UPDATE audit_events SET {change} WHERE seq = {}", f.b + 3)).await;
        broken_at(&f.t.app, f.b + 3, "was changed after it was written").await;
    }
}

#[tokio::test]
async fn deleting_an_event_is_detected_where_the_gap_is() {
    let f = file_app().await;
    write_events(&f.t.app, 5).await;
    exec(&f.path, &format!("DELETE FROM audit_events WHERE seq = {}", f.b + 3)).await;
    broken_at(&f.t.app, f.b + 3, &format!("event {} is missing", f.b + 3)).await;
}

#[tokio::test]
async fn an_inserted_event_is_detected_even_with_a_correct_hash_of_its_own() {
    let f = file_app().await;
    write_events(&f.t.app, 5).await;
    // The attacker shifts events 3..5 up by one and slots a forged event in at 3, chained correctly
    // after event 2: the original event 3 (now 4) no longer follows it.
    let events = all_events(&f.t.app).await;
    let at = f.b as usize + 2;
    let seq = f.b + 3;
    let mut forged = events[at].record.clone();
    forged.id = "00000000-0000-4000-8000-000000000000".into();
    forged.action = "test.event.forged".into();
    let hash = event_hash(&events[at - 1].hash, seq, &forged);
    exec(&f.path, &format!("UPDATE audit_events SET seq = seq + 1000 WHERE seq >= {seq}")).await;
    exec(&f.path, "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000").await;
    let mut conn = raw(&f.path).await;
    sqlx::query(
        "INSERT INTO audit_events (seq, id, at, actor_kind, action, outcome, details, prev_hash, hash) \
         VALUES ($7, $1, $2, 'system', $3, 'success', $4, $5, $6)",
    )
    .bind(&forged.id)
    .bind(forged.at.as_unix_millis())
    .bind(&forged.action)
    .bind(&forged.details)
    .bind(events[at - 1].hash.as_slice())
    .bind(hash.as_slice())
    .bind(seq)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    broken_at(&f.t.app, seq + 1, "does not follow").await;
}

#[tokio::test]
async fn reordering_two_events_is_detected() {
    let f = file_app().await;
    write_events(&f.t.app, 5).await;
    let (a, b) = (f.b + 2, f.b + 3);
    exec(&f.path, &format!("UPDATE audit_events SET seq = 1000 WHERE seq = {a}")).await;
    exec(&f.path, &format!("UPDATE audit_events SET seq = {a} WHERE seq = {b}")).await;
    exec(&f.path, &format!("UPDATE audit_events SET seq = {b} WHERE seq = 1000")).await;
    broken_at(&f.t.app, a, &format!("does not follow event {}", a - 1)).await;
}

#[tokio::test]
async fn cutting_the_tail_after_a_checkpoint_is_detected_even_with_the_head_row_moved_back() {
    let f = file_app().await;
    write_events(&f.t.app, 6).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    // The attacker removes events 5 and 6 and points the head at event 4, as if they never were.
    let keep = f.b + 4;
    exec(&f.path, &format!("DELETE FROM audit_events WHERE seq > {keep}")).await;
    exec(
        &f.path,
        &format!(
            "UPDATE audit_head SET seq = {keep}, hash = (SELECT hash FROM audit_events WHERE seq = {keep})"
        ),
    )
    .await;
    broken_at(&f.t.app, keep + 1, &format!("a signed checkpoint names event {}", keep + 2)).await;
}

#[tokio::test]
async fn cutting_the_tail_past_the_last_checkpoint_is_caught_by_the_head_row() {
    let f = file_app().await;
    write_events(&f.t.app, 6).await;
    exec(&f.path, &format!("DELETE FROM audit_events WHERE seq > {}", f.b + 4)).await;
    broken_at(&f.t.app, f.b + 5, "the log's tail was cut").await;
}

#[tokio::test]
async fn rewriting_an_event_and_rehashing_everything_after_it_fails_at_the_signed_checkpoint() {
    let f = file_app().await;
    write_events(&f.t.app, 4).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    write_events(&f.t.app, 2).await;
    // A careful attacker: changes event 2 and recomputes every hash after it, and the head.
    rewrite_from(&f, f.b + 2).await;
    broken_at(&f.t.app, f.b + 4, "the chain was rewritten").await;
}

#[tokio::test]
async fn a_checkpoint_with_a_forged_signature_is_detected() {
    let f = file_app().await;
    write_events(&f.t.app, 3).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    exec(&f.path, "UPDATE audit_checkpoints SET signature = zeroblob(64)").await;
    broken_at(&f.t.app, f.b + 3, "invalid signature").await;
}

#[tokio::test]
async fn deleting_the_start_of_the_log_without_a_checkpoint_there_is_detected() {
    let f = file_app().await;
    write_events(&f.t.app, 5).await;
    exec(&f.path, &format!("DELETE FROM audit_events WHERE seq <= {}", f.b + 2)).await;
    broken_at(&f.t.app, f.b + 3, &format!("events before seq {} are missing", f.b + 3)).await;
}

#[tokio::test]
async fn retention_cuts_at_a_signed_checkpoint_records_the_purge_and_the_rest_still_verifies() {
    let mut settings = testing::settings();
    settings.audit.retention_days = 30;
    let f = file_app_with(settings).await;
    write_events(&f.t.app, 3).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    write_events(&f.t.app, 2).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    f.t.clock.advance_millis(20 * DAY);
    write_events(&f.t.app, 2).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    f.t.clock.advance_millis(11 * DAY);

    let purge = f.t.app.purge_audit_events().await.unwrap();
    let cut = f.b + 5;
    assert_eq!(
        (purge.deleted, purge.through_seq),
        (cut as u64, Some(cut)),
        "older than 30 days, up to a checkpoint"
    );
    let events = all_events(&f.t.app).await;
    assert_eq!(events.first().map(|e| e.seq), Some(cut + 1));
    let last = events.last().unwrap();
    assert_eq!(last.record.action, "audit.events.purged");
    assert!(last.record.details.contains(&format!("\"through_seq\":{cut}")));
    let report = verify(&f.t.app).await;
    assert_eq!((report.broken, report.anchored_at, report.events), (None, cut, 3));
    assert_eq!(report.checkpoints, 2, "the anchor and the checkpoint after the day-20 events");

    // Nothing more is due: a second run purges nothing and records nothing.
    assert_eq!(f.t.app.purge_audit_events().await.unwrap().deleted, 0);
    assert_eq!(all_events(&f.t.app).await.len(), 3);
}

#[tokio::test]
async fn checkpoints_are_due_after_enough_events_or_enough_time() {
    let mut settings = testing::settings();
    settings.audit.checkpoint_every = 5;
    settings.audit.checkpoint_interval_millis = 5 * MINUTE;
    let f = file_app_with(settings).await;
    let b = f.b;
    write_events(&f.t.app, 1).await;
    assert_eq!(
        f.t.app.checkpoint_audit_if_due().await.unwrap().map(|c| c.seq),
        Some(b + 1),
        "the first is due"
    );
    write_events(&f.t.app, 4).await;
    assert!(f.t.app.checkpoint_audit_if_due().await.unwrap().is_none(), "4 events, 0 minutes: not yet");
    write_events(&f.t.app, 1).await;
    assert_eq!(
        f.t.app.checkpoint_audit_if_due().await.unwrap().map(|c| c.seq),
        Some(b + 6),
        "5 events since"
    );
    write_events(&f.t.app, 1).await;
    f.t.clock.advance_millis(5 * MINUTE);
    assert_eq!(f.t.app.checkpoint_audit_if_due().await.unwrap().map(|c| c.seq), Some(b + 7), "time since");
    assert!(f.t.app.checkpoint_audit_if_due().await.unwrap().is_none(), "nothing new since");
}

#[tokio::test]
async fn every_checkpoint_is_copied_to_the_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints.jsonl");
    let mut settings = testing::settings();
    settings.audit.checkpoint_file = Some(file.clone());
    let f = file_app_with(settings).await;
    write_events(&f.t.app, 2).await;
    let first = f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    write_events(&f.t.app, 2).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], f.b + 2);
    assert_eq!(lines[0]["hash"], portcullis_domain::audit::hex(&first.hash));
    assert_eq!(lines[1]["seq"], f.b + 4);
}

#[tokio::test]
async fn thirty_two_concurrent_writers_form_one_valid_chain() {
    let f = file_app().await;
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let app = f.t.app.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let entry = AuditEntry::system("test.event.written").detail("writer", writer).detail("n", i);
                app.record_audit([entry]).await.unwrap();
            }
        }));
    }
    // Meanwhile, changes audited in their own transactions interleave with the group commits.
    f.t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let events = all_events(&f.t.app).await;
    assert!(events.len() >= 640, "{}", events.len());
    assert_eq!(events.last().map(|e| e.seq), Some(events.len() as i64), "no gaps");
    let report = verify(&f.t.app).await;
    assert_eq!(report.broken, None);
}

#[tokio::test]
async fn the_request_client_is_recorded_sealed_and_opened_for_readers() {
    let f = file_app().await;
    f.t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&f.t.app, OWNER).await;
    let context = RequestContext {
        ip: Some("198.51.100.23".into()),
        user_agent: Some("AuditTest/1.0".into()),
        request_id: Some("req-123".into()),
    };
    within_request(context, f.t.app.record_audit([AuditEntry::by(&owner, "test.event.with_client")]))
        .await
        .unwrap();

    let bytes = std::fs::read(&f.path).unwrap();
    let wal = std::fs::read(f.path.with_extension("db-wal")).unwrap_or_default();
    for haystack in [&bytes, &wal] {
        assert!(!haystack.windows(13).any(|w| w == b"198.51.100.23"), "the address is stored in clear");
        assert!(!haystack.windows(13).any(|w| w == b"AuditTest/1.0"), "the user agent is stored in clear");
    }
    let filter = AuditEventFilter { action: Some("test.event.with_client"), ..Default::default() };
    let list = f.t.app.list_audit_events(&owner, &filter).await.unwrap();
    let event = &list.events[0];
    assert_eq!(event.ip.as_deref(), Some("198.51.100.23"));
    assert_eq!(event.user_agent.as_deref(), Some("AuditTest/1.0"));
    assert_eq!(event.request_id.as_deref(), Some("req-123"));
    assert_eq!((event.actor.kind, event.actor.id.clone()), ("user", Some(owner.user_id.to_string())));
}

/// An organization, a service account in it with the given role, and a session of that account.
async fn service_in_org(role: BuiltinRole, scopes: &[&str]) -> (TestApp, Principal, String, Principal) {
    let t = testing::app().await;
    t.app.finish_bootstrap().await.unwrap();
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    let org = t.app.admin_create_organization(&owner, "acme", "Acme").await.unwrap().id.to_string();
    let account = t.app.admin_create_service_account(&owner, &org, "billing", role).await.unwrap();
    let key = crate::NewApiKey {
        name: "audit".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 30,
        allowed_cidrs: Vec::new(),
    };
    let issued = t.app.admin_create_service_account_key(&owner, &account.id.to_string(), &key).await.unwrap();
    let service = t.app.authenticate_api_key(issued.secret.expose_secret(), &client()).await.unwrap();
    (t, owner, org, service)
}

fn app_event(action: &str, org: Option<&str>) -> ApplicationEvent {
    ApplicationEvent {
        action: action.into(),
        organization_id: org.map(str::to_owned),
        subject: Some("customer-42".into()),
        target_type: Some("invoice".into()),
        target_id: Some("inv-7".into()),
        details: Some(serde_json::json!({"amount": 1200, "card_token": "tok_live_secret"})),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_application_writes_events_into_the_chain_as_its_service_acting_for_its_user() {
    let (t, owner, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    let recorded = t
        .app
        .record_application_events(
            &service,
            vec![app_event("invoice.paid", Some(&org)), app_event("invoice.sent", Some(&org))],
        )
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].seq, recorded[0].seq + 1, "a batch lands in order, together");

    let filter = AuditEventFilter { action: Some("invoice."), ..Default::default() };
    let list = t.app.list_audit_events(&owner, &filter).await.unwrap();
    let paid = list.events.iter().find(|e| e.action == "invoice.paid").unwrap();
    assert_eq!(paid.actor.kind, ActorKind::Application.as_str());
    assert_eq!(paid.actor.id.as_deref(), Some(service.user_id.to_string().as_str()));
    assert_eq!(paid.actor.on_behalf_of.as_deref(), Some("customer-42"));
    assert_eq!(paid.details["amount"], 1200);
    assert_eq!(paid.details["card_token"], crate::audit::REDACTED, "secret-named details are redacted");
    assert_eq!(paid.organization_id.as_deref(), Some(org.as_str()));
    assert_eq!(verify(&t.app).await.broken, None);
}

#[tokio::test]
async fn an_application_may_write_only_inside_the_organization_its_grant_covers() {
    let (t, _, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    forbidden(t.app.record_application_events(&service, vec![app_event("invoice.paid", None)]).await);
    let before = all_events(&t.app).await.len();
    forbidden(
        t.app
            .record_application_events(
                &service,
                vec![app_event("invoice.paid", Some(&org)), app_event("invoice.paid", None)],
            )
            .await,
    );
    assert_eq!(all_events(&t.app).await.len(), before, "a refused batch writes nothing");

    let (t, _, org, member_service) = service_in_org(BuiltinRole::Member, &["profile:read"]).await;
    forbidden(
        t.app.record_application_events(&member_service, vec![app_event("invoice.paid", Some(&org))]).await,
    );
}

#[tokio::test]
async fn people_cannot_write_application_events() {
    let (t, owner, org, _) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    forbidden(t.app.record_application_events(&owner, vec![app_event("invoice.paid", Some(&org))]).await);
}

/// Found by the problem_json fuzz target: serde_json reads an object whose first key is its raw-value
/// token as raw JSON. Stored details are keyed in sorted order ("$" first), so such details would
/// read back as a string, not the object written; they are refused, at any depth.
#[tokio::test]
async fn details_holding_serde_jsons_raw_value_key_are_refused() {
    let (t, _, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    let before = all_events(&t.app).await.len();
    let token = "$serde_json::private::RawValue";
    let mut top = app_event("invoice.paid", Some(&org));
    top.details = Some(serde_json::Value::Object(
        [("amount".to_owned(), serde_json::json!(1)), (token.to_owned(), serde_json::json!("x"))]
            .into_iter()
            .collect(),
    ));
    let mut nested = app_event("invoice.paid", Some(&org));
    let inner: serde_json::Map<_, _> = [(token.to_owned(), serde_json::json!("[1]"))].into_iter().collect();
    nested.details = Some(serde_json::json!({"lines": [{"sku": "a"}, inner]}));
    let error = t.app.record_application_events(&service, vec![top, nested]).await.unwrap_err();
    let AppError::Validation(issues) = error else { panic!("{error:?}") };
    let fields: Vec<&str> = issues.iter().map(|i| i.field.as_ref()).collect();
    assert_eq!(fields, ["/events/0/details", "/events/1/details"]);
    assert_eq!(all_events(&t.app).await.len(), before);
}

#[tokio::test]
async fn a_batch_with_any_bad_event_is_refused_whole_naming_each_field_by_index() {
    let (t, _, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    let before = all_events(&t.app).await.len();
    let mut bad = app_event("Invoice Paid", Some(&org));
    bad.outcome = Some("maybe".into());
    bad.details = Some(serde_json::json!({"blob": "x".repeat(5000)}));
    let mut lone_target = app_event("invoice.paid", Some(&org));
    lone_target.target_type = None;
    let error = t
        .app
        .record_application_events(&service, vec![app_event("invoice.paid", Some(&org)), bad, lone_target])
        .await
        .unwrap_err();
    let AppError::Validation(issues) = error else { panic!("{error:?}") };
    let fields: Vec<&str> = issues.iter().map(|i| i.field.as_ref()).collect();
    assert_eq!(
        fields,
        ["/events/1/action", "/events/1/outcome", "/events/1/details", "/events/2/target_type"]
    );
    assert!(issues.iter().all(|i| !i.message.contains("Invoice Paid")), "the value is not echoed");
    assert_eq!(all_events(&t.app).await.len(), before);

    let too_many = (0..101).map(|_| app_event("invoice.paid", Some(&org))).collect();
    assert!(matches!(
        t.app.record_application_events(&service, too_many).await,
        Err(AppError::Validation(_))
    ));
    assert!(matches!(
        t.app.record_application_events(&service, Vec::new()).await,
        Err(AppError::Validation(_))
    ));
}

#[tokio::test]
async fn reading_the_trail_needs_audit_read_an_org_admin_sees_only_their_org_and_each_read_is_recorded() {
    let (t, owner, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    t.app.record_application_events(&service, vec![app_event("invoice.paid", Some(&org))]).await.unwrap();
    t.app.create_user_as_operator(ADMIN, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let org_admin_id = user_id_of(&t.app, ADMIN).await;
    t.app.admin_set_member(&owner, &org, &org_admin_id.to_string(), BuiltinRole::Admin, None).await.unwrap();
    let org_admin = principal(&t.app, ADMIN).await;
    let alice = principal(&t.app, ALICE).await;

    forbidden(t.app.list_audit_events(&alice, &AuditEventFilter::default()).await);
    forbidden(t.app.list_audit_events(&org_admin, &AuditEventFilter::default()).await);
    let scoped = AuditEventFilter { organization_id: Some(&org), ..Default::default() };
    let list = t.app.list_audit_events(&org_admin, &scoped).await.unwrap();
    assert!(!list.events.is_empty());
    assert!(list.events.iter().all(|e| e.organization_id.as_deref() == Some(org.as_str())));

    let reads = AuditEventFilter { action: Some("audit.events.read"), ..Default::default() };
    let recorded = t.app.list_audit_events(&owner, &reads).await.unwrap();
    assert!(
        recorded.events.iter().any(|e| e.actor.id.as_deref() == Some(org_admin.user_id.to_string().as_str())),
        "the organization admin's read is in the trail"
    );
}

#[tokio::test]
async fn pages_follow_each_other_newest_first_and_filters_are_checked() {
    let t = testing::app().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    write_events(&t.app, 7).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let filter = AuditEventFilter {
            action: Some("test.event."),
            after: after.as_deref(),
            limit: Some(3),
            ..Default::default()
        };
        let page = t.app.list_audit_events(&owner, &filter).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.seq));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<i64> = seen.clone();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    expected.dedup();
    assert_eq!(seen, expected, "newest first, no repeats");
    assert_eq!(seen.len(), 7);

    for filter in [
        AuditEventFilter { action: Some("User%"), ..Default::default() },
        AuditEventFilter { outcome: Some("meh"), ..Default::default() },
        AuditEventFilter { since: Some("yesterday"), ..Default::default() },
        AuditEventFilter { after: Some("-1"), ..Default::default() },
        AuditEventFilter { organization_id: Some("acme"), ..Default::default() },
        AuditEventFilter { limit: Some(0), ..Default::default() },
        AuditEventFilter { actor: Some("has space"), ..Default::default() },
    ] {
        assert!(
            matches!(t.app.list_audit_events(&owner, &filter).await, Err(AppError::Validation(_))),
            "{filter:?}"
        );
    }
}

#[tokio::test]
async fn the_scheduled_verification_raises_a_critical_security_event_when_the_chain_is_broken() {
    let f = file_app().await;
    write_events(&f.t.app, 3).await;
    assert_eq!(f.t.app.run_audit_verification().await.unwrap().broken, None);
    assert!(testing::security_events(&f.t.app, SecurityEventKind::AuditChainBroken).await.is_empty());
    let intact = || super::metrics::metric(&f.t.app, "portcullis_audit_chain_intact", &[]);
    assert_eq!(intact().await, Some(1.0));

    exec(&f.path, &format!("UPDATE audit_events SET outcome = 'denied' WHERE seq = {}", f.b + 2)).await;
    let report = f.t.app.run_audit_verification().await.unwrap();
    assert_eq!(report.broken.map(|b| b.seq), Some(f.b + 2));
    let raised = testing::security_events(&f.t.app, SecurityEventKind::AuditChainBroken).await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].details.get("seq").map(String::as_str), Some((f.b + 2).to_string().as_str()));
    assert_eq!(SecurityEventKind::AuditChainBroken.severity(), portcullis_domain::Severity::Critical);
    // Operators without the alert sinks see it too: the gauge drops and the event is counted.
    assert_eq!(intact().await, Some(0.0));
    let broken = [("kind", "audit_chain_broken"), ("severity", "critical")];
    assert_eq!(super::metrics::count(&f.t.app, "portcullis_security_events_total", &broken).await, 1.0);
}

#[tokio::test]
async fn a_change_and_its_audit_record_commit_together_or_not_at_all() {
    let t = testing::app().await;
    let before = all_events(&t.app).await.len();
    // A transaction that records an event but is dropped uncommitted leaves neither behind.
    let mut tx = t.app.store().begin().await.unwrap();
    let record =
        t.app.audit_record(AuditEntry::system("test.event.rolled_back"), &Default::default()).unwrap();
    crate::audit::append(tx.as_mut(), vec![record]).await.unwrap();
    drop(tx);
    assert_eq!(all_events(&t.app).await.len(), before);
    assert_eq!(verify(&t.app).await.broken, None);
    // And an outcome other than success is kept as given.
    t.app.record_audit([AuditEntry::system("test.event.failed").outcome(Outcome::Failure)]).await.unwrap();
    assert_eq!(all_events(&t.app).await.last().map(|e| e.record.outcome), Some(Outcome::Failure));
}

/// The same database opened by a second process (a restarted server): it shares the clock, and
/// nothing this process remembers.
async fn reopened(f: &FileApp, settings: AppSettings) -> TestApp {
    let store = SqliteStore::open(&SqliteOptions::new(f.path.clone())).await.unwrap();
    let t = testing::app_with_clock(store, settings, f.t.clock.clone());
    t.app.load_keys().await.unwrap();
    t
}

/// A careful attacker's rewrite: changes event `seq`'s action and recomputes every hash from there
/// on, and the head.
async fn rewrite_from(f: &FileApp, seq: i64) {
    let mut events = all_events(&f.t.app).await;
    let at = usize::try_from(seq - 1).unwrap();
    events[at].record.action = "test.event.forged".into();
    let mut conn = raw(&f.path).await;
    let mut prev = if at == 0 { GENESIS_HASH } else { events[at - 1].hash };
    for event in events.iter().skip(at) {
        let hash = event_hash(&prev, event.seq, &event.record);
        sqlx::query("UPDATE audit_events SET action = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&event.record.action)
            .bind(prev.as_slice())
            .bind(hash.as_slice())
            .bind(event.seq)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1").bind(prev.as_slice()).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn deleting_every_checkpoint_and_rewriting_the_chain_from_genesis_is_detected_once_the_events_are_a_day_old()
 {
    let f = file_app().await;
    write_events(&f.t.app, 4).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    f.t.clock.advance_millis(2 * DAY);
    exec(&f.path, "DELETE FROM audit_checkpoints").await;
    rewrite_from(&f, 2).await;

    // A restarted server remembers nothing: the day-old events without a checkpoint give it away.
    let restarted = reopened(&f, testing::settings()).await;
    let report = verify(&restarted.app).await;
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, 1, "{}", broken.reason);
    assert!(broken.reason.contains("no signed checkpoint covers them"), "{}", broken.reason);
    // And it will not sign the rewritten chain.
    assert!(restarted.app.checkpoint_audit_if_due().await.is_err());
    assert!(all_checkpoints(&f.path).await.is_empty());
    assert_eq!(testing::security_events(&restarted.app, SecurityEventKind::AuditChainBroken).await.len(), 1);
}

#[tokio::test]
async fn a_running_server_catches_a_rewrite_under_a_checkpoint_it_signed_even_once_the_checkpoint_is_gone() {
    let f = file_app().await;
    write_events(&f.t.app, 4).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    exec(&f.path, "DELETE FROM audit_checkpoints").await;
    rewrite_from(&f, f.b + 2).await;
    broken_at(&f.t.app, f.b + 4, "a checkpoint this server signed").await;
}

#[tokio::test]
async fn the_checkpoint_file_catches_a_fresh_rewrite_after_every_stored_checkpoint_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let with_file = || {
        let mut settings = testing::settings();
        settings.audit.checkpoint_file = Some(dir.path().join("checkpoints.jsonl"));
        settings
    };
    let f = file_app_with(with_file()).await;
    write_events(&f.t.app, 4).await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    exec(&f.path, "DELETE FROM audit_checkpoints").await;
    rewrite_from(&f, f.b + 2).await;

    let restarted = reopened(&f, with_file()).await;
    let report = verify(&restarted.app).await;
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, f.b + 4, "{}", broken.reason);
    assert!(broken.reason.contains("the checkpoint file"), "{}", broken.reason);
}

#[tokio::test]
async fn the_checkpoint_job_never_signs_a_head_that_the_events_do_not_reach() {
    let f = file_app().await;
    write_events(&f.t.app, 3).await;
    // The head is pointed at a hash no event has, as if to have the server sign a forged chain end.
    exec(&f.path, "UPDATE audit_head SET hash = zeroblob(32)").await;
    assert!(f.t.app.checkpoint_audit_if_due().await.is_err());
    assert!(all_checkpoints(&f.path).await.is_empty());
    let raised = testing::security_events(&f.t.app, SecurityEventKind::AuditChainBroken).await;
    assert_eq!(raised.len(), 1);
}

#[tokio::test]
async fn a_row_changed_so_that_it_no_longer_parses_is_reported_as_broken_and_alerts() {
    let f = file_app().await;
    write_events(&f.t.app, 3).await;
    exec(&f.path, &format!("UPDATE audit_events SET actor_kind = 'nobody' WHERE seq = {}", f.b + 2)).await;
    let report = f.t.app.run_audit_verification().await.unwrap();
    assert!(report.broken.is_some(), "a row that does not parse must not switch the check off");
    assert_eq!(testing::security_events(&f.t.app, SecurityEventKind::AuditChainBroken).await.len(), 1);
}

#[tokio::test]
async fn an_operators_explicit_checkpoint_closes_the_gap_a_crash_and_a_long_outage_leave() {
    let f = file_app().await;
    f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    // Events after the last checkpoint, then a crash (no checkpoint at shutdown) and two days down.
    write_events(&f.t.app, 3).await;
    f.t.clock.advance_millis(2 * DAY);
    let restarted = reopened(&f, testing::settings()).await;
    let broken = verify(&restarted.app).await.broken.unwrap();
    assert_eq!(broken.seq, f.b + 1, "{}", broken.reason);
    // The scheduled job will not cover them on its own; the operator's command does, after reading.
    assert!(restarted.app.checkpoint_audit_if_due().await.is_err());
    let checkpoint = restarted.app.checkpoint_audit_now(false).await.unwrap().unwrap();
    assert_eq!(checkpoint.seq, f.b + 3);
    assert_eq!(verify(&restarted.app).await.broken, None);
}

async fn all_checkpoints(path: &std::path::Path) -> Vec<i64> {
    let mut conn = raw(path).await;
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT seq FROM audit_checkpoints ORDER BY seq").fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    rows.into_iter().map(|(seq,)| seq).collect()
}

#[tokio::test]
async fn an_application_cannot_use_portcullis_own_action_names() {
    let (t, _, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    for action in ["user.login.succeeded", "audit.events.purged", "session.revoked", "key.rotated"] {
        let error =
            t.app.record_application_events(&service, vec![app_event(action, Some(&org))]).await.unwrap_err();
        let AppError::Validation(issues) = error else { panic!("{action}: {error:?}") };
        assert_eq!(issues[0].field, "/events/0/action", "{action}");
    }
}

#[tokio::test]
async fn an_organization_admin_reads_its_events_without_the_clients_addresses() {
    let (t, owner, org, service) = service_in_org(BuiltinRole::Owner, &["audit:write", "audit:read"]).await;
    let context = RequestContext {
        ip: Some("198.51.100.9".into()),
        user_agent: Some("Billing/2".into()),
        request_id: None,
    };
    within_request(
        context,
        t.app.record_application_events(&service, vec![app_event("invoice.paid", Some(&org))]),
    )
    .await
    .unwrap();
    t.app.create_user_as_operator(ADMIN, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let org_admin_id = user_id_of(&t.app, ADMIN).await;
    t.app.admin_set_member(&owner, &org, &org_admin_id.to_string(), BuiltinRole::Admin, None).await.unwrap();
    let org_admin = principal(&t.app, ADMIN).await;

    let filter =
        AuditEventFilter { organization_id: Some(&org), action: Some("invoice."), ..Default::default() };
    let scoped = t.app.list_audit_events(&org_admin, &filter).await.unwrap();
    assert_eq!((scoped.events[0].ip.as_deref(), scoped.events[0].user_agent.as_deref()), (None, None));
    let whole = t.app.list_audit_events(&owner, &filter).await.unwrap();
    assert_eq!(whole.events[0].ip.as_deref(), Some("198.51.100.9"));
}

#[tokio::test]
async fn a_refused_read_of_the_trail_is_recorded_as_denied() {
    let t = testing::app().await;
    t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let alice = principal(&t.app, ALICE).await;
    forbidden(t.app.list_audit_events(&alice, &AuditEventFilter::default()).await);
    let last = all_events(&t.app).await.pop().unwrap();
    assert_eq!((last.record.action.as_str(), last.record.outcome), ("audit.events.read", Outcome::Denied));
    assert_eq!(last.record.actor.id, Some(alice.user_id.to_string()));
}

#[tokio::test]
async fn checkpoints_signed_before_an_audit_key_rotation_still_verify_after_it() {
    let f = file_app().await;
    write_events(&f.t.app, 2).await;
    let before = f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    f.t.app.rotate_key(portcullis_store::KeyPurpose::Audit, false).await.unwrap();
    write_events(&f.t.app, 2).await;
    let after = f.t.app.checkpoint_audit_now(true).await.unwrap().unwrap();
    assert_ne!(before.key_id, after.key_id, "the new key signs");
    let report = verify(&reopened(&f, testing::settings()).await.app).await;
    assert_eq!((report.broken, report.checkpoints), (None, 2));
    assert!(
        f.t.app.rotate_key(portcullis_store::KeyPurpose::Audit, true).await.is_err(),
        "no emergency rotation"
    );
}
