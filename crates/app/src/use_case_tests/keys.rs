//! Use-case tests of the keyring: field encryption at rest, blind-index lookups through rotations,
//! signing-key rotation on a fixed clock, KEK rotation and a wrong KEK at start.

use portcullis_store::{KeyPurpose, KeyState, PiiRow, PiiTable};

use super::*;
use crate::keys::RETIRED_KEY_GRACE_MILLIS;

const NAME: &str = "Ada Lovelace-Byron";
const IP: &str = "203.0.113.7";
const AGENT: &str = "use-case-test";

async fn signup_named(app: &App, email: &str, name: &str) {
    let mut request = signup_request(email, PASSWORD);
    request.display_name = Some(name.into());
    app.signup(request, &client()).await.unwrap();
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn jwks_kids(app: &App) -> Vec<String> {
    app.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

async fn key_of(app: &App, purpose: KeyPurpose, state: KeyState) -> Option<String> {
    app.list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.purpose == purpose && k.state == state)
        .map(|k| k.id)
}

fn with_keks(entries: &[(&str, u8)]) -> AppSettings {
    let mut settings = testing::settings();
    settings.keks = crate::KekSet::parse(&testing::kek_entries(entries)).unwrap();
    settings
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_database_file_holds_no_email_name_ip_or_user_agent_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    store.migrate().await.unwrap();
    let t = testing::app_on(store.clone());
    t.app.load_keys().await.unwrap();

    signup_named(&t.app, ALICE, NAME).await;
    login_bearer(&t.app, ALICE, PASSWORD).await;
    login_cookie(&t.app, ALICE, PASSWORD).await;
    let _ = t.app.login(ALICE, secret("wrong password"), LoginMode::Bearer, &client()).await;
    t.app.forgot_password("nobody@example.com", &client()).await.unwrap();
    t.app.signup(signup_request(ALICE, PASSWORD), &client()).await.unwrap();
    t.app.shutdown().await;

    let mut bytes = std::fs::read(&path).unwrap();
    for extra in ["portcullis.db-wal", "portcullis.db-shm"] {
        bytes.extend(std::fs::read(dir.path().join(extra)).unwrap_or_default());
    }
    assert!(bytes.len() > 4096, "the database was written");
    for clear in [ALICE, "alice", "Lovelace", IP, AGENT, "nobody@example.com"] {
        assert!(!contains(&bytes, clear), "{clear:?} is stored in clear");
    }
    // The same data reads back through the app.
    let store = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    let t = testing::app_on(store);
    t.app.load_keys().await.unwrap();
    let alice = login_bearer(&t.app, ALICE, PASSWORD).await;
    let principal = t.app.authenticate_bearer(&alice.access).unwrap();
    let profile = t.app.profile(&principal).await.unwrap();
    assert_eq!((profile.email.as_str(), profile.display_name.as_deref()), (ALICE, Some(NAME)));
    let sessions = t.app.list_sessions(&principal).await.unwrap();
    assert!(sessions.iter().all(|s| s.ip.as_deref() == Some(IP) && s.user_agent.as_deref() == Some(AGENT)));
    let events = events_of(&t.app, alice.user).await;
    assert!(
        events.iter().any(|(e, ip)| e.kind == SecurityEventKind::LoginFailed && ip.as_deref() == Some(IP))
    );
}

#[tokio::test]
async fn a_ciphertext_copied_into_another_row_or_column_does_not_decrypt() {
    let t = testing::app().await;
    signup_named(&t.app, ALICE, NAME).await;
    signup(&t.app, BOB, PASSWORD).await;
    let (alice, bob) = (user_id_of(&t.app, ALICE).await, user_id_of(&t.app, BOB).await);
    let mut tx = t.app.store().begin().await.unwrap();
    let alice_row = tx.user_by_id(alice).await.unwrap().unwrap();
    let bob_row = tx.user_by_id(bob).await.unwrap().unwrap();
    // Bob's sealed address written into Alice's row, and Alice's name into her email column.
    for fields in [vec![Some(bob_row.email.clone()), None], vec![alice_row.display_name.clone(), None]] {
        let row = PiiRow { id: alice.to_string(), key: alice_row.pii_key.clone(), fields };
        assert!(tx.reseal_pii_row(PiiTable::Users, &row, &alice_row.pii_key).await.unwrap());

        let loaded = t.app.load_user(tx.as_mut(), alice).await;

        let Err(AppError::Keyring(message)) = loaded else { panic!("expected a keyring error: {loaded:?}") };
        assert!(message.contains("users.email") && !message.contains(BOB), "{message}");
    }
    assert!(t.app.load_user(tx.as_mut(), bob).await.unwrap().is_some(), "Bob's own row still opens");
}

#[tokio::test]
async fn login_by_email_works_after_a_data_key_rotation_during_and_after_reencryption() {
    let mut settings = testing::settings();
    settings.keys.reencrypt_batch = 1;
    let t = app_with_settings(settings).await;
    for (n, address) in ["a@example.com", "b@example.com", "c@example.com"].iter().enumerate() {
        signup_named(&t.app, address, &format!("Person {n}")).await;
    }
    let old_pii = key_of(&t.app, KeyPurpose::Pii, KeyState::Active).await.unwrap();
    let old_index = key_of(&t.app, KeyPurpose::BlindIndex, KeyState::Active).await.unwrap();

    let pii = t.app.rotate_key(KeyPurpose::Pii, false).await.unwrap();
    let index = t.app.rotate_key(KeyPurpose::BlindIndex, false).await.unwrap();
    assert_eq!((pii.old_key.as_deref(), index.old_key.as_deref()), (Some(&*old_pii), Some(&*old_index)));
    // The new blind-index key waits until every node has loaded it, then the schedule promotes it.
    assert_eq!(key_of(&t.app, KeyPurpose::BlindIndex, KeyState::Next).await, Some(index.new_key.clone()));
    t.clock.advance_millis(crate::keys::BLIND_INDEX_PUBLISH_AHEAD_MILLIS);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(key_of(&t.app, KeyPurpose::BlindIndex, KeyState::Active).await, Some(index.new_key));
    // Every row still under the old keys; lookups fall back to the retired blind-index key.
    login_bearer(&t.app, "b@example.com", PASSWORD).await;
    let before = t.app.reencryption_remaining().await.unwrap();
    assert!(before >= 6, "three users under each old key, and their sessions: {before}");
    // Signing up again with a taken address is still refused while its index is under the old key.
    t.app.signup(signup_request("A@example.com", PASSWORD), &client()).await.unwrap();
    assert_eq!(count_users(&t.app).await, 3);

    let step = t.app.reencrypt_step().await.unwrap();
    assert_eq!((step.reindexed, step.remaining < before), (1, true), "{step:?}");
    for address in ["a@example.com", "b@example.com", "c@example.com"] {
        login_bearer(&t.app, address, PASSWORD).await;
    }
    let mut steps = 1;
    while t.app.reencrypt_step().await.unwrap().remaining > 0 {
        steps += 1;
        assert!(steps < 50, "re-encryption makes progress");
    }

    for address in ["a@example.com", "b@example.com", "c@example.com"] {
        let login = login_bearer(&t.app, address, PASSWORD).await;
        let profile = t.app.profile(&t.app.authenticate_bearer(&login.access).unwrap()).await.unwrap();
        assert_eq!(profile.email, address);
    }
    let mut tx = read_tx(&t.app).await;
    assert_eq!(tx.count_pii_rows_under(&old_pii).await.unwrap(), 0);
    assert_eq!(tx.count_users_indexed_under(&old_index).await.unwrap(), 0);
    tx.rollback().await.unwrap();
    // The retired keys are destroyed only after the grace period, then reads still work.
    assert!(!t.app.run_key_schedule().await.unwrap());
    t.clock.advance_millis(RETIRED_KEY_GRACE_MILLIS);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(key_of(&t.app, KeyPurpose::Pii, KeyState::Destroyed).await.as_deref(), Some(&*old_pii));
    assert_eq!(
        key_of(&t.app, KeyPurpose::BlindIndex, KeyState::Destroyed).await.as_deref(),
        Some(&*old_index)
    );
    login_bearer(&t.app, "c@example.com", PASSWORD).await;
}

#[tokio::test]
async fn a_node_that_missed_a_blind_index_promotion_still_finds_accounts_and_cannot_duplicate_one() {
    let (a, b) = two_nodes().await;
    signup(&a.app, ALICE, PASSWORD).await;
    a.app.rotate_key(KeyPurpose::BlindIndex, false).await.unwrap();
    // Node b's periodic key sync runs while the new key waits; node a then promotes it, and a
    // signup on a is indexed under the new key while b has not synced again.
    assert!(b.app.reload_keys_if_changed().await.unwrap());
    a.clock.advance_millis(crate::keys::BLIND_INDEX_PUBLISH_AHEAD_MILLIS);
    assert!(a.app.run_key_schedule().await.unwrap());
    signup(&a.app, BOB, PASSWORD).await;

    login_bearer(&b.app, BOB, PASSWORD).await;
    login_bearer(&b.app, ALICE, PASSWORD).await;
    b.app.signup(signup_request("Bob@Example.com", PASSWORD), &client()).await.unwrap();
    signup(&b.app, "carol@example.com", PASSWORD).await;

    assert_eq!(count_users(&a.app).await, 3, "no second account for Bob");
    login_bearer(&a.app, "carol@example.com", PASSWORD).await;
}

#[tokio::test]
async fn another_node_reads_rows_sealed_under_a_key_it_has_not_loaded_yet() {
    let (a, b) = two_nodes().await;
    a.app.rotate_key(KeyPurpose::Pii, false).await.unwrap();
    signup_named(&a.app, ALICE, NAME).await;

    let login = login_bearer(&b.app, ALICE, PASSWORD).await;

    let profile = b.app.profile(&b.app.authenticate_bearer(&login.access).unwrap()).await.unwrap();
    assert_eq!(profile.display_name.as_deref(), Some(NAME));
}

#[tokio::test]
async fn the_jwks_publishes_the_next_key_ahead_and_the_previous_key_until_its_tokens_expire() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let first = key_of(&t.app, KeyPurpose::Signing, KeyState::Active).await.unwrap();
    assert_eq!(jwks_kids(&t.app), vec![first.clone()]);

    // 29 days in: nothing yet; one more day (30 days minus the 1-day publish-ahead): the next key.
    t.clock.advance_millis(28 * DAY);
    assert!(!t.app.run_key_schedule().await.unwrap());
    t.clock.advance_millis(DAY);
    assert!(t.app.run_key_schedule().await.unwrap());
    let next = key_of(&t.app, KeyPurpose::Signing, KeyState::Next).await.unwrap();
    assert_eq!(jwks_kids(&t.app), vec![first.clone(), next.clone()]);
    let old_token = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert_eq!(kid_of(&old_token.access), first, "the next key does not sign yet");

    // A day later the next key signs; the previous one still verifies its live tokens.
    t.clock.advance_millis(DAY - MINUTE);
    assert!(!t.app.run_key_schedule().await.unwrap());
    t.clock.advance_millis(MINUTE);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(key_of(&t.app, KeyPurpose::Signing, KeyState::Active).await, Some(next.clone()));
    let new_token = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert_eq!(kid_of(&new_token.access), next);
    assert_eq!(jwks_kids(&t.app), vec![first.clone(), next.clone()]);

    // Once every token the old key signed has expired (with a margin of three key syncs for nodes
    // that signed with it until they synced), it leaves the JWKS and verifies nothing.
    t.clock.advance_millis(ACCESS_TTL + LEEWAY);
    assert!(!t.app.run_key_schedule().await.unwrap());
    t.clock.advance_millis(3 * crate::KEY_SYNC_SECS as i64 * SECOND);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(jwks_kids(&t.app), vec![next.clone()]);
    assert_eq!(key_of(&t.app, KeyPurpose::Signing, KeyState::Destroyed).await, Some(first));
    assert!(matches!(t.app.authenticate_bearer(&old_token.access), Err(AppError::Unauthenticated)));
}

#[tokio::test]
async fn a_token_signed_by_the_previous_key_verifies_until_it_expires_and_not_after() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    // A manual rotation publishes the next key, which signs one publish-ahead period later.
    let rotation = t.app.rotate_key(KeyPurpose::Signing, false).await.unwrap();
    assert_eq!(rotation.active_from.as_unix_millis(), testing::START + DAY);
    let again = t.app.rotate_key(KeyPurpose::Signing, false).await;
    assert!(matches!(again, Err(AppError::Validation(_))), "one next key at a time: {again:?}");
    t.clock.advance_millis(DAY - MINUTE);
    let before_switch = login_bearer(&t.app, ALICE, PASSWORD).await;
    t.clock.advance_millis(MINUTE);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(kid_of(&login_bearer(&t.app, ALICE, PASSWORD).await.access), rotation.new_key);

    assert!(t.app.authenticate_bearer(&before_switch.access).is_ok(), "verifies after the switch");
    t.clock.advance_millis(ACCESS_TTL - MINUTE + LEEWAY - SECOND);
    assert!(t.app.authenticate_bearer(&before_switch.access).is_ok(), "verifies until it expires");
    t.clock.advance_millis(SECOND);
    assert!(matches!(t.app.authenticate_bearer(&before_switch.access), Err(AppError::Unauthenticated)));
}

#[tokio::test]
async fn an_emergency_rotation_stops_the_old_key_at_once_and_revokes_the_sessions_it_served() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    signup(&t.app, BOB, PASSWORD).await;
    let alice = login_bearer(&t.app, ALICE, PASSWORD).await;
    let bob = login_bearer(&t.app, BOB, PASSWORD).await;
    let browser = login_cookie(&t.app, BOB, PASSWORD).await;
    let old = kid_of(&alice.access);
    let waiting = t.app.rotate_key(KeyPurpose::Signing, false).await.unwrap().new_key;

    let rotation = t.app.rotate_key(KeyPurpose::Signing, true).await.unwrap();

    assert_eq!((rotation.old_key.as_deref(), rotation.revoked_sessions), (Some(&*old), 2));
    assert_eq!(jwks_kids(&t.app), vec![rotation.new_key.clone()], "the waiting next key went too");
    for token in [&alice.access, &bob.access] {
        assert!(matches!(t.app.authenticate_bearer(token), Err(AppError::Unauthenticated)));
    }
    assert!(t.app.refresh(&alice.refresh, &client()).await.is_err(), "the session is revoked");
    assert!(t.app.authenticate_cookie(&browser.cookie).await.is_ok(), "cookie sessions hold no token");
    let again = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert_eq!(kid_of(&again.access), rotation.new_key);
    assert!(t.app.authenticate_bearer(&again.access).is_ok());
    let mut destroyed: Vec<String> = t
        .app
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.purpose == KeyPurpose::Signing && k.state == KeyState::Destroyed)
        .map(|k| k.id)
        .collect();
    // Both were made at the same instant of the fixed clock, so the listing orders them by id.
    let mut expected = vec![old, waiting];
    destroyed.sort();
    expected.sort();
    assert_eq!(destroyed, expected);
    let emergency = t.app.rotate_key(KeyPurpose::Pii, true).await;
    assert!(matches!(emergency, Err(AppError::Validation(_))), "{emergency:?}");
}

#[tokio::test]
async fn a_token_cached_by_another_node_stops_working_there_once_it_syncs_an_emergency_rotation() {
    let (a, b) = two_nodes().await;
    signup(&a.app, ALICE, PASSWORD).await;
    let alice = login_bearer(&a.app, ALICE, PASSWORD).await;
    assert!(b.app.authenticate_bearer(&alice.access).is_ok(), "verified and cached on node b");

    a.app.rotate_key(KeyPurpose::Signing, true).await.unwrap();
    // Node b has not synced revocations, only its keys: the destroyed key's token must still go.
    assert!(b.app.authenticate_bearer(&alice.access).is_ok(), "before its key sync, b still knows the key");
    assert!(b.app.reload_keys_if_changed().await.unwrap());

    assert!(matches!(b.app.authenticate_bearer(&alice.access), Err(AppError::Unauthenticated)));
}

#[tokio::test]
async fn a_row_that_does_not_open_is_skipped_by_the_reencryption_and_the_rest_still_move() {
    let t = testing::app().await;
    signup_named(&t.app, ALICE, NAME).await;
    signup_named(&t.app, BOB, NAME).await;
    let (alice, bob) = (user_id_of(&t.app, ALICE).await, user_id_of(&t.app, BOB).await);
    let mut tx = t.app.store().begin().await.unwrap();
    let bob_row = tx.user_by_id(bob).await.unwrap().unwrap();
    let alice_row = tx.user_by_id(alice).await.unwrap().unwrap();
    let planted = PiiRow {
        id: alice.to_string(),
        key: alice_row.pii_key.clone(),
        fields: vec![Some(bob_row.email.clone()), alice_row.display_name.clone()],
    };
    assert!(tx.reseal_pii_row(PiiTable::Users, &planted, &alice_row.pii_key).await.unwrap());
    tx.commit().await.unwrap();
    t.app.rotate_key(KeyPurpose::Pii, false).await.unwrap();

    let step = t.app.reencrypt_step().await.unwrap();

    assert_eq!(step.skipped, 1, "{step:?}");
    assert!(step.resealed >= 1, "Bob's row and the sessions moved: {step:?}");
    assert_eq!(step.remaining, 1, "only the bad row is left under the retired key");
    login_bearer(&t.app, BOB, PASSWORD).await;
}

#[tokio::test]
async fn a_kek_rotation_rewraps_every_key_and_leaves_every_row_readable() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let old = testing::app_with(store.clone(), with_keks(&[("old", 1)]));
    old.app.load_keys().await.unwrap();
    signup_named(&old.app, ALICE, NAME).await;
    old.app.rotate_key(KeyPurpose::Pii, false).await.unwrap();

    let both = testing::app_with(store.clone(), with_keks(&[("new", 2), ("old", 1)]));
    both.app.load_keys().await.unwrap();
    let rewrapped = both.app.rotate_kek().await.unwrap();

    let keys = both.app.list_keys().await.unwrap();
    assert_eq!(rewrapped, keys.len() as u64, "{keys:?}");
    assert!(keys.iter().all(|k| k.kek_id == "new"), "{keys:?}");
    let only_new = testing::app_with(store.clone(), with_keks(&[("new", 2)]));
    only_new.app.load_keys().await.unwrap();
    let login = login_bearer(&only_new.app, ALICE, PASSWORD).await;
    let profile =
        only_new.app.profile(&only_new.app.authenticate_bearer(&login.access).unwrap()).await.unwrap();
    assert_eq!(profile.display_name.as_deref(), Some(NAME));
    let only_old = testing::app_with(store, with_keks(&[("old", 1)]));
    let refused = only_old.app.load_keys().await;
    assert!(matches!(&refused, Err(AppError::Keyring(m)) if m.contains("`new`")), "{refused:?}");
}

#[tokio::test]
async fn a_wrong_kek_at_start_fails_with_a_clear_message_and_changes_nothing() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let right = testing::app_with(store.clone(), with_keks(&[("main", 1)]));
    right.app.load_keys().await.unwrap();
    signup(&right.app, ALICE, PASSWORD).await;
    let before = right.app.list_keys().await.unwrap();

    let wrong = testing::app_with(store.clone(), with_keks(&[("main", 9)]));
    let result = wrong.app.finish_bootstrap().await;

    let Err(AppError::Keyring(message)) = result else { panic!("expected a keyring error: {result:?}") };
    assert!(message.contains("KEK `main` does not open"), "{message}");
    assert!(!wrong.app.can_sign_tokens());
    assert_eq!(right.app.list_keys().await.unwrap(), before, "no key was added or changed");
    assert_eq!(count_users(&right.app).await, 1);
}
