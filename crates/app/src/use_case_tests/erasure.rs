//! Erasure (issue 9): a person erasing their account, or an administrator erasing it, leaves
//! nothing that names or reaches the person: not in clear, not as a blind index, not as a sealed
//! value anyone can still open; the audit trail keeps the account's id and still verifies.

use portcullis_domain::BuiltinRole;
use secrecy::ExposeSecret;

use super::*;
use crate::NewApiKey;
use crate::audit::VerifyReport;
use crate::audit::{AuditEventFilter, RequestContext, within_request};
use crate::security_events::SecurityEventFilter;

const NAME: &str = "Alice Pleasance Liddell";
const ALICE_IP: &str = "198.51.100.23";
const ALICE_AGENT: &str = "alices-browser/7.1";
const BOB_IP: &str = "192.0.2.44";
const BOB_AGENT: &str = "bobs-browser/3.0";

fn from(ip: &str, agent: &str) -> RequestContext {
    RequestContext { ip: Some(ip.into()), user_agent: Some(agent.into()), request_id: None }
}

fn client_of(ip: &str, agent: &str) -> ClientContext {
    ClientContext { ip: Some(ip.into()), user_agent: Some(agent.into()) }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file with its write-ahead log: every byte the store holds.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.join("portcullis.db")).unwrap();
    for extra in ["portcullis.db-wal", "portcullis.db-shm"] {
        bytes.extend(std::fs::read(dir.join(extra)).unwrap_or_default());
    }
    bytes
}

/// Every audit event and security event as the owner reads them, opened, as one text.
async fn everything_the_owner_reads(app: &App, owner: &Principal) -> String {
    let mut text = String::new();
    let mut after: Option<String> = None;
    loop {
        let filter =
            AuditEventFilter { after: after.as_deref(), limit: Some(200), ..AuditEventFilter::default() };
        let page = app.list_audit_events(owner, &filter).await.unwrap();
        text.push_str(&format!("{:?}", page.events));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let events = app.admin_list_security_events(owner, &SecurityEventFilter::default()).await.unwrap();
    text.push_str(&format!("{events:?}"));
    text
}

struct Scene {
    t: TestApp,
    dir: tempfile::TempDir,
    owner: Principal,
    alice: Principal,
    alice_id: UserId,
    alice_refresh: String,
    alice_key: String,
    email_indexes: Vec<[u8; 32]>,
    person_key: Vec<u8>,
}

/// Alice with a name, sessions from her own address and browser, an API key she used, a second
/// factor, a failed login and a lockout counter; Bob beside her from another address.
async fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("portcullis.db"))).await.unwrap();
    store.migrate().await.unwrap();
    let t = testing::app_on(store);
    t.app.load_keys().await.unwrap();
    t.app.finish_bootstrap().await.unwrap();
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = super::admin::principal(&t.app, OWNER).await;

    let alices = client_of(ALICE_IP, ALICE_AGENT);
    let request = SignupRequest { display_name: Some(NAME.into()), ..signup_request(ALICE, PASSWORD) };
    within_request(from(ALICE_IP, ALICE_AGENT), t.app.signup(request, &alices)).await.unwrap();
    signup(&t.app, BOB, PASSWORD).await;

    let LoginOutcome::Authenticated { credentials, .. } = within_request(
        from(ALICE_IP, ALICE_AGENT),
        t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &alices),
    )
    .await
    .unwrap() else {
        panic!("expected a session")
    };
    let (access, alice_refresh) = bearer_tokens(credentials);
    let alice = t.app.authenticate_bearer(&access).unwrap();
    let alice_id = alice.user_id;
    let new_key = NewApiKey {
        name: "alices laptop".into(),
        scopes: vec!["profile:read".into()],
        expires_in_days: 30,
        allowed_cidrs: vec![],
    };
    let issued =
        within_request(from(ALICE_IP, ALICE_AGENT), t.app.create_my_api_key(&alice, &new_key)).await.unwrap();
    let alice_key = issued.secret.expose_secret().to_owned();
    t.app.authenticate_api_key(&alice_key, &alices).await.unwrap();
    within_request(from(ALICE_IP, ALICE_AGENT), t.app.enroll_totp(&alice, "Phone")).await.unwrap();

    // A failure after her login: the lockout counter under her address's blind index stays.
    let wrong = t.app.login(ALICE, secret("still not it"), LoginMode::Bearer, &alices);
    assert!(within_request(from(ALICE_IP, ALICE_AGENT), wrong).await.is_err());

    let bobs = client_of(BOB_IP, BOB_AGENT);
    within_request(from(BOB_IP, BOB_AGENT), t.app.login(BOB, secret(PASSWORD), LoginMode::Bearer, &bobs))
        .await
        .unwrap();

    let email_indexes: Vec<[u8; 32]> = t
        .app
        .loaded_keys()
        .fields
        .email_indexes(&portcullis_domain::Email::parse(ALICE).unwrap())
        .into_iter()
        .map(|index| index.0)
        .collect();
    let mut tx = read_tx(&t.app).await;
    let person_key = tx.person_key(alice_id).await.unwrap().expect("her requests made her a key").secret.0;
    tx.rollback().await.unwrap();

    // Before: the owner reads her address and browser in the trail, and the file holds her digests.
    let seen = everything_the_owner_reads(&t.app, &owner).await;
    assert!(seen.contains(ALICE_IP) && seen.contains(ALICE_AGENT), "the scene is visible before");
    let bytes = database_bytes(dir.path());
    assert!(contains(&bytes, &person_key));
    assert!(email_indexes_in(&email_indexes, &bytes));

    Scene { t, dir, owner, alice, alice_id, alice_refresh, alice_key, email_indexes, person_key }
}

/// The stored records of one action, oldest first.
async fn stored_events(app: &App, action: &str) -> Vec<portcullis_domain::AuditRecord> {
    let mut tx = read_tx(app).await;
    let events = tx.audit_events_after(0, 10_000).await.unwrap();
    tx.rollback().await.unwrap();
    events.into_iter().map(|e| e.record).filter(|r| r.action == action).collect()
}

fn email_indexes_in(indexes: &[[u8; 32]], bytes: &[u8]) -> bool {
    indexes.iter().any(|index| contains(bytes, index))
}

/// Everything an erasure must leave, checked the same way for both paths.
async fn assert_erased(s: &Scene) {
    let app = &s.t.app;
    // Nothing readable: the owner holds every keyring key and opens every sealed field it lists.
    let seen = everything_the_owner_reads(app, &s.owner).await;
    for gone in [ALICE, NAME, ALICE_IP, ALICE_AGENT] {
        assert!(!seen.contains(gone), "{gone:?} is still readable");
    }
    assert!(seen.contains(BOB_IP) && seen.contains(BOB_AGENT), "Bob's requests are untouched");
    // The trail keeps her id as a pseudonym, and still verifies.
    assert!(seen.contains(&s.alice_id.to_string()), "her events stay under her id");
    let report: VerifyReport = app.verify_audit_chain(&|_, _| {}).await.unwrap();
    assert!(report.broken.is_none(), "{report:?}");

    let mut tx = read_tx(app).await;
    assert!(tx.user_by_id(s.alice_id).await.unwrap().is_none());
    assert!(tx.person_key(s.alice_id).await.unwrap().is_none());
    let sessions = tx.session_history(s.alice_id, None, 100).await.unwrap();
    assert!(!sessions.is_empty(), "her sessions stay as revoked rows, for other nodes");
    for record in sessions {
        let session = record.stored;
        assert!(session.session.revoked_at.is_some() && session.ip.is_none() && session.user_agent.is_none());
    }
    tx.rollback().await.unwrap();

    // Her credentials are dead (a login with her address would count a failure under its blind
    // index again, so it is not tried here).
    assert!(app.refresh(&s.alice_refresh, &client()).await.is_err());
    assert!(app.authenticate_api_key(&s.alice_key, &client()).await.is_err());

    // Nothing stored: not in clear, not as a blind index of her address, not her sealed key.
    app.shutdown().await;
    let bytes = database_bytes(s.dir.path());
    assert!(bytes.len() > 4096);
    for clear in [ALICE, "alice", "Liddell", ALICE_IP, ALICE_AGENT] {
        assert!(!contains(&bytes, clear.as_bytes()), "{clear:?} is stored in clear");
    }
    assert!(!email_indexes_in(&s.email_indexes, &bytes), "a blind index of her address is stored");
    assert!(!contains(&bytes, &s.person_key), "her sealed person key is stored");
}

#[tokio::test]
async fn erasing_ones_account_leaves_nothing_that_names_or_reaches_the_person() {
    let s = scene().await;

    within_request(from(ALICE_IP, ALICE_AGENT), s.t.app.erase_own_account(&s.alice)).await.unwrap();

    let events = stored_events(&s.t.app, "user.deleted").await;
    let [erased] = events.as_slice() else { panic!("one erasure event: {events:?}") };
    assert_eq!(erased.target_id.as_deref(), Some(s.alice_id.to_string().as_str()));
    assert!(erased.details.contains(r#""via":"self""#), "{}", erased.details);
    assert!(erased.ip.is_some(), "the request's address is recorded, sealed under her key, and gone with it");
    assert_erased(&s).await;
}

#[tokio::test]
async fn an_administrator_erases_an_account_the_same_way() {
    let s = scene().await;

    s.t.app.admin_delete_user(&s.owner, &s.alice_id.to_string()).await.unwrap();

    assert_erased(&s).await;
}

#[tokio::test]
async fn erasure_needs_a_recent_session_of_the_person_and_spares_the_last_owner() {
    let s = scene().await;
    let app = &s.t.app;
    let by_key = app.authenticate_api_key(&s.alice_key, &client_of(ALICE_IP, ALICE_AGENT)).await.unwrap();

    assert!(matches!(app.erase_own_account(&by_key).await, Err(AppError::Forbidden(_))));
    let last_owner = app.erase_own_account(&s.owner).await;
    assert!(
        matches!(&last_owner, Err(AppError::Forbidden(why)) if why.contains("last active owner")),
        "{last_owner:?}"
    );
    s.t.clock.advance_millis(11 * MINUTE);
    assert!(matches!(app.erase_own_account(&s.alice).await, Err(AppError::ReauthenticationRequired { .. })));

    let mut tx = read_tx(app).await;
    assert!(tx.user_by_id(s.alice_id).await.unwrap().is_some(), "refusals change nothing");
    assert!(tx.user_by_id(s.owner.user_id).await.unwrap().is_some());
    assert!(tx.person_key(s.alice_id).await.unwrap().is_some());
    tx.rollback().await.unwrap();
    assert!(stored_events(app, "user.deleted").await.is_empty());
}

#[tokio::test]
async fn the_next_backup_after_an_erasure_holds_nothing_of_the_person() {
    let s = scene().await;
    #[expect(
        deprecated,
        reason = "X25519 recipients are what the age tool packaged by Debian (1.1) reads; see ADR 0012"
    )]
    let identity = age::x25519::Identity::generate();
    let settings = crate::BackupSettings {
        recipients: vec![identity.to_public().to_string()],
        identity_file: None,
        passphrase: None,
        retention_days: 30,
        keep_min: 1,
        staging_dir: s.dir.path().join("staging"),
    };
    let folder = s.dir.path().join("backups");
    let target = std::sync::Arc::new(crate::FolderTarget::new(folder.clone()));
    let backups = crate::Backups::new(s.t.app.clone(), target, settings).unwrap();
    s.t.app.admin_delete_user(&s.owner, &s.alice_id.to_string()).await.unwrap();

    let created = backups.create(&|_, _| {}).await.unwrap();

    // Every cell of every table in the archive, as bytes.
    let file = std::fs::File::open(folder.join(crate::backup::archive_name(&created.id))).unwrap();
    let identities: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity)];
    let mut reader =
        crate::backup::ArchiveReader::open(file, &identities, &created.id, &s.t.app.inner.settings.keks)
            .unwrap();
    let (mut cells, mut rows, mut table) = (Vec::new(), 0, String::new());
    loop {
        match reader.next_item().unwrap() {
            crate::backup::Item::Table(header) => table = header.name,
            crate::backup::Item::Row(row) => {
                rows += 1;
                if table == "users" || table == "person_keys" {
                    assert!(!format!("{row:?}").contains(&s.alice_id.to_string()), "{table} keeps her row");
                }
                for cell in row {
                    match cell {
                        portcullis_store::Cell::Text(text) => cells.extend(text.into_bytes()),
                        portcullis_store::Cell::Bytes(bytes) => cells.extend(bytes),
                        portcullis_store::Cell::Int(_) | portcullis_store::Cell::Null => {}
                    }
                    cells.push(0);
                }
            }
            crate::backup::Item::End(_) => break,
        }
    }
    assert!(rows > 30, "the archive holds the installation: {rows} rows");
    for clear in [ALICE, NAME, ALICE_IP, ALICE_AGENT] {
        assert!(!contains(&cells, clear.as_bytes()), "{clear:?} is in the backup");
    }
    assert!(!email_indexes_in(&s.email_indexes, &cells), "a blind index of her address is in the backup");
    assert!(!contains(&cells, &s.person_key), "her sealed person key is in the backup");
    // The search finds what is there: Bob's blind index.
    let bob = portcullis_domain::Email::parse(BOB).unwrap();
    let bobs: Vec<[u8; 32]> =
        s.t.app.loaded_keys().fields.email_indexes(&bob).into_iter().map(|i| i.0).collect();
    assert!(email_indexes_in(&bobs, &cells), "Bob's blind index is in the backup");
}

#[tokio::test]
async fn another_node_that_opened_the_persons_details_cannot_open_them_after_the_erasure() {
    let (a, b) = two_nodes().await;
    a.app.finish_bootstrap().await.unwrap();
    a.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let alices = client_of(ALICE_IP, ALICE_AGENT);
    within_request(from(ALICE_IP, ALICE_AGENT), a.app.signup(signup_request(ALICE, PASSWORD), &alices))
        .await
        .unwrap();
    let alice_id = user_id_of(&a.app, ALICE).await;
    // Node B reads the trail as the owner: it opens her details, and keeps her key in its cache.
    let owner_on_b = super::admin::principal(&b.app, OWNER).await;
    assert!(everything_the_owner_reads(&b.app, &owner_on_b).await.contains(ALICE_IP), "visible before");

    let owner_on_a = super::admin::principal(&a.app, OWNER).await;
    a.app.admin_delete_user(&owner_on_a, &alice_id.to_string()).await.unwrap();

    let seen = everything_the_owner_reads(&b.app, &owner_on_b).await;
    assert!(!seen.contains(ALICE_IP) && !seen.contains(ALICE_AGENT), "node B still opens them");
}
