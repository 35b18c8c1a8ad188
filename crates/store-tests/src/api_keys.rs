//! The contract of service accounts and API keys (`ApiKeyStore`): what is stored, who may own a key,
//! how keys are listed, counted, rotated, revoked and used, what deleting an owner takes with it,
//! and how the sealed ip of a key's last use takes part in re-encryption.

use std::fmt;
use std::slice;
use std::str::FromStr;

use portcullis_domain::{
    ApiKey, ApiKeyId, BuiltinRole, KeyOwner, OrganizationId, Permission, ServiceAccount, Timestamp,
    TokenHash, UserId,
};
use portcullis_store::{PiiRow, PiiTable, Sealed, Store, StoredUser};

use super::{
    Failure, Outcome, Step, at, display_name, ensure, ensure_conflict, ensure_eq, every_byte, migrated,
    organization, organization_id, resealed, sealed, token, user, user_id, write_organizations, write_users,
};

// ---------------------------------------------------------------------------------------------
// Service accounts
// ---------------------------------------------------------------------------------------------

/// Every field of a service account comes back as written; an unknown id is `None`. A name taken in
/// its organization, or an organization that does not exist, is `Conflict { entity:
/// "service_account" }`, while the same name in another organization is fine.
pub async fn a_service_account_round_trips_and_its_name_is_taken_only_within_its_organization(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let deployer = ServiceAccount {
        name: display_name("Déploiement CI")?,
        role: BuiltinRole::Auditor,
        active: false,
        created_at: at(3),
        updated_at: at(7),
        ..service_account(1, acme.id, "unused")?
    };
    write_service_accounts(store, slice::from_ref(&deployer)).await?;
    let same_name_elsewhere =
        ServiceAccount { name: deployer.name.clone(), ..service_account(4, globex.id, "x")? };

    let mut tx = store.begin().await.step("begin the same name in acme")?;
    let intruder = ServiceAccount { name: deployer.name.clone(), ..service_account(2, acme.id, "x")? };
    let taken = tx.insert_service_account(&intruder).await;
    tx.rollback().await.step("roll back after the taken name")?;
    let mut tx = store.begin().await.step("begin an account in a missing organization")?;
    let nowhere = tx.insert_service_account(&service_account(3, organization_id(9), "Nowhere")?).await;
    tx.rollback().await.step("roll back after the missing organization")?;
    write_service_accounts(store, slice::from_ref(&same_name_elsewhere)).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.service_account(deployer.id).await.step("read the account")?;
    let elsewhere = tx.service_account(same_name_elsewhere.id).await.step("read globex's account")?;
    let intruder_after = tx.service_account(intruder.id).await.step("read the refused account")?;
    let nowhere_after = tx.service_account(service_account_id(3)).await.step("read the orphan")?;
    let unknown = tx.service_account(service_account_id(9)).await.step("read an unknown id")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("the account by id", &by_id, &Some(deployer))?;
    ensure_conflict("a name taken in the organization", taken, "service_account")?;
    ensure_conflict("an account in a missing organization", nowhere, "service_account")?;
    ensure_eq("the same name in another organization", &elsewhere, &Some(same_name_elsewhere))?;
    ensure_eq("the refused account", &intruder_after, &None)?;
    ensure_eq("the orphan", &nowhere_after, &None)?;
    ensure_eq("an unknown id", &unknown, &None)
}

/// Keyset pagination of service accounts, of one organization or of all: pages in id (byte) order
/// that neither skip nor repeat, whatever order they were created in.
pub async fn service_accounts_are_listed_by_organization_a_page_at_a_time_in_id_order(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex, empty) =
        (organization(1, "acme")?, organization(2, "globex")?, organization(3, "empty")?);
    write_organizations(store, &[acme.clone(), globex.clone(), empty.clone()]).await?;
    let mut accounts = Vec::new();
    for (n, seed) in [0xa1_u8, 0x3c, 0xf0, 0x0f, 0x55].into_iter().enumerate() {
        let home = if n % 2 == 0 { acme.id } else { globex.id };
        accounts.push(service_account(seed, home, &format!("bot-{n}"))?);
    }
    write_service_accounts(store, &accounts).await?;
    let ids_of = |organization: Option<OrganizationId>| {
        let mut ids: Vec<UserId> = accounts
            .iter()
            .filter(|a| organization.is_none_or(|o| a.organization == o))
            .map(|a| a.id)
            .collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    };
    let (all_ids, acme_ids) = (ids_of(None), ids_of(Some(acme.id)));

    let mut tx = store.begin_read().await.step("begin a read")?;
    let first = tx.service_accounts(None, None, 2).await.step("first page of all")?;
    let second = tx.service_accounts(None, first.last().map(|a| a.id), 2).await.step("second page of all")?;
    let third = tx.service_accounts(None, second.last().map(|a| a.id), 2).await.step("third page of all")?;
    let acme_first = tx.service_accounts(Some(acme.id), None, 2).await.step("first page of acme")?;
    let acme_second = tx
        .service_accounts(Some(acme.id), acme_first.last().map(|a| a.id), 2)
        .await
        .step("second page of acme")?;
    let globex_all = tx.service_accounts(Some(globex.id), None, 10).await.step("all of globex")?;
    let after_last = tx.service_accounts(None, all_ids.last().copied(), 10).await.step("after the last")?;
    let of_empty = tx.service_accounts(Some(empty.id), None, 10).await.step("of an organization without")?;
    let none = tx.service_accounts(None, None, 0).await.step("a page of none")?;
    tx.commit().await.step("end the read")?;

    let ids = |pages: &[&Vec<ServiceAccount>]| -> Vec<UserId> {
        pages.iter().flat_map(|page| page.iter().map(|a| a.id)).collect()
    };
    ensure_eq("page sizes of all", &(first.len(), second.len(), third.len()), &(2, 2, 1))?;
    ensure_eq("every account once, in id order", &ids(&[&first, &second, &third]), &all_ids)?;
    ensure_eq("page sizes of acme", &(acme_first.len(), acme_second.len()), &(2, 1))?;
    ensure_eq("acme's accounts, in id order", &ids(&[&acme_first, &acme_second]), &acme_ids)?;
    ensure_eq("globex's accounts, in id order", &ids(&[&globex_all]), &ids_of(Some(globex.id)))?;
    let whole = first.iter().chain(&second).chain(&third).find(|a| a.id == accounts[2].id);
    ensure_eq("a listed account has every field", &whole, &Some(&accounts[2]))?;
    ensure_eq("nothing after the last", &after_last, &Vec::new())?;
    ensure_eq("an organization without accounts", &of_empty, &Vec::new())?;
    ensure_eq("a page of none", &none, &Vec::new())
}

/// An update replaces the name, role, status and `updated_at`, and nothing else (not the
/// organization, not `created_at`); keeping one's own name is no conflict, taking a name used in
/// another organization is fine, and taking one used in the same organization is `Conflict { entity:
/// "service_account" }` that leaves both accounts alone. A missing account is reported as false.
pub async fn a_service_account_update_replaces_name_role_and_status_and_a_taken_name_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let builder = service_account(1, acme.id, "Builder")?;
    let deployer = service_account(2, acme.id, "Deployer")?;
    let scanner = service_account(3, globex.id, "Scanner")?;
    write_service_accounts(store, &[builder.clone(), deployer.clone(), scanner.clone()]).await?;

    let renamed = ServiceAccount {
        name: display_name("Scanner")?,
        role: BuiltinRole::Admin,
        active: false,
        updated_at: at(50),
        // Not the update's business: these must stay as they are.
        organization: globex.id,
        created_at: at(99),
        ..builder.clone()
    };
    let promoted = ServiceAccount { role: BuiltinRole::Owner, updated_at: at(51), ..deployer.clone() };
    let mut tx = store.begin().await.step("begin the updates")?;
    let updated = tx.update_service_account(&renamed).await.step("rename the builder")?;
    let kept_name = tx.update_service_account(&promoted).await.step("promote the deployer")?;
    let missing = tx
        .update_service_account(&service_account(9, acme.id, "Ghost")?)
        .await
        .step("update a missing account")?;
    tx.commit().await.step("commit the updates")?;
    let mut tx = store.begin().await.step("begin the taken name")?;
    let taken = tx
        .update_service_account(&ServiceAccount {
            name: renamed.name.clone(),
            updated_at: at(60),
            ..promoted.clone()
        })
        .await
        .map(|_| ());
    tx.rollback().await.step("roll back after the taken name")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let builder_after = tx.service_account(builder.id).await.step("read the builder")?;
    let deployer_after = tx.service_account(deployer.id).await.step("read the deployer")?;
    let scanner_after = tx.service_account(scanner.id).await.step("read globex's scanner")?;
    let ghost = tx.service_account(service_account_id(9)).await.step("read the missing one")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("updates found their rows", &(updated, kept_name, missing), &(true, true, false))?;
    ensure_conflict("a rename onto a name taken in the organization", taken, "service_account")?;
    let expected_builder = ServiceAccount {
        name: renamed.name.clone(),
        role: BuiltinRole::Admin,
        active: false,
        updated_at: at(50),
        ..builder
    };
    ensure_eq("the renamed account", &builder_after, &Some(expected_builder))?;
    ensure_eq("the promoted account", &deployer_after, &Some(promoted))?;
    ensure_eq("the other organization's account", &scanner_after, &Some(scanner))?;
    ensure_eq("no account was created", &ghost, &None)
}

/// Deleting a service account removes it and every key it owns (and no one else's); deleting it
/// again reports false.
pub async fn deleting_a_service_account_takes_its_keys_and_reports_false_the_second_time(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    write_organizations(store, slice::from_ref(&acme)).await?;
    let (doomed, kept) = (service_account(1, acme.id, "Doomed")?, service_account(2, acme.id, "Kept")?);
    write_service_accounts(store, &[doomed.clone(), kept.clone()]).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let doomed_keys = [
        api_key("Doomed1", KeyOwner::ServiceAccount(doomed.id), 1)?,
        api_key("Doomed2", KeyOwner::ServiceAccount(doomed.id), 2)?,
    ];
    let kept_key = api_key("Kept", KeyOwner::ServiceAccount(kept.id), 1)?;
    let alices_key = api_key("Alice", KeyOwner::User(alice.id), 1)?;
    let mut keys = doomed_keys.to_vec();
    keys.extend([kept_key.clone(), alices_key.clone()]);
    write_api_keys(store, &keys).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_service_account(doomed.id).await.step("delete")?;
    let again = tx.delete_service_account(doomed.id).await.step("delete again")?;
    let missing = tx.delete_service_account(service_account_id(9)).await.step("delete a missing one")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.service_account(doomed.id).await.step("read the deleted account")?;
    let listed = tx.service_accounts(Some(acme.id), None, 10).await.step("list acme's accounts")?;
    let mut gone = Vec::new();
    for key in &doomed_keys {
        gone.push(tx.api_key(&key.id).await.step("read a deleted account's key")?);
    }
    let its_keys = tx.api_keys_of(KeyOwner::ServiceAccount(doomed.id)).await.step("list its keys")?;
    let kept_keys = tx.api_keys_of(KeyOwner::ServiceAccount(kept.id)).await.step("list the kept keys")?;
    let alices_keys = tx.api_keys_of(KeyOwner::User(alice.id)).await.step("list alice's keys")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted once", &(deleted, again, missing), &(true, false, false))?;
    ensure_eq("the deleted account", &by_id, &None)?;
    ensure_eq("acme's accounts", &listed, &vec![kept])?;
    ensure_keys("the deleted account's keys by id", &gone.into_iter().flatten().collect::<Vec<_>>(), &[])?;
    ensure_keys("the deleted account's key list", &its_keys, &[])?;
    ensure_keys("the other account's keys", &kept_keys, &[kept_key])?;
    ensure_keys("a person's keys", &alices_keys, &[alices_key])
}

/// Deleting an organization deletes its service accounts, and with them their keys; another
/// organization's accounts and keys stay.
pub async fn deleting_an_organization_takes_its_service_accounts_and_their_keys(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (doomed, kept) = (organization(1, "doomed")?, organization(2, "kept")?);
    write_organizations(store, &[doomed.clone(), kept.clone()]).await?;
    let (doomed_bot, kept_bot) = (service_account(1, doomed.id, "Bot")?, service_account(2, kept.id, "Bot")?);
    write_service_accounts(store, &[doomed_bot.clone(), kept_bot.clone()]).await?;
    let doomed_key = api_key("Doomed", KeyOwner::ServiceAccount(doomed_bot.id), 1)?;
    let kept_key = api_key("Kept", KeyOwner::ServiceAccount(kept_bot.id), 1)?;
    write_api_keys(store, &[doomed_key.clone(), kept_key.clone()]).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_organization(doomed.id).await.step("delete the organization")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let bot = tx.service_account(doomed_bot.id).await.step("read its account")?;
    let of_doomed = tx.service_accounts(Some(doomed.id), None, 10).await.step("list its accounts")?;
    let all = tx.service_accounts(None, None, 10).await.step("list every account")?;
    let key = tx.api_key(&doomed_key.id).await.step("read its account's key")?;
    let kept_keys = tx.api_keys_of(KeyOwner::ServiceAccount(kept_bot.id)).await.step("list the kept keys")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("its account", &bot, &None)?;
    ensure_eq("its account list", &of_doomed, &Vec::new())?;
    ensure_eq("the accounts left", &all, &vec![kept_bot])?;
    ensure_keys("its account's key", key.as_slice(), &[])?;
    ensure_keys("the other organization's keys", &kept_keys, &[kept_key])
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// Every field of a key comes back as written, by id and in its owner's list, whether a person or a
/// service account owns it: scopes (wildcards included) in the order given, IPv4 and IPv6 networks,
/// the digests, the previous digest and its deadline, and every time; an unknown id is `None`.
pub async fn an_api_key_round_trips_every_field_whoever_owns_it(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    write_organizations(store, slice::from_ref(&acme)).await?;
    let bot = service_account(1, acme.id, "Bot")?;
    write_service_accounts(store, slice::from_ref(&bot)).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let persons = ApiKey {
        id: key_id("Person")?,
        owner: KeyOwner::User(alice.id),
        name: display_name("Déploiement — prod")?,
        scopes: ["users:read", "*:*", "organizations:*", "*:read", "api_keys:create"]
            .into_iter()
            .map(permission)
            .collect::<Result<_, _>>()?,
        allowed_cidrs: ["192.0.2.0/24", "10.0.0.1/32", "2001:db8::/32", "::1/128", "0.0.0.0/0"]
            .into_iter()
            .map(parsed)
            .collect::<Result<_, _>>()?,
        secret_hash: TokenHash(std::array::from_fn(|i| [0x00, 0xff, 0x80, 0x7f][i % 4] ^ (i as u8))),
        previous: None,
        created_at: at(1),
        expires_at: at(1 + 30 * DAY),
        revoked_at: None,
        last_used_at: None,
    };
    let bots = ApiKey {
        id: key_id("Bot")?,
        owner: KeyOwner::ServiceAccount(bot.id),
        name: display_name("Nightly export")?,
        scopes: Vec::new(),
        allowed_cidrs: Vec::new(),
        secret_hash: token(2),
        previous: Some((token(3), at(20))),
        created_at: at(2),
        expires_at: at(2 + 365 * DAY),
        revoked_at: Some(at(30)),
        last_used_at: Some(at(25)),
    };
    write_api_keys(store, &[persons.clone(), bots.clone()]).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let persons_by_id = tx.api_key(&persons.id).await.step("read the person's key")?;
    let bots_by_id = tx.api_key(&bots.id).await.step("read the service account's key")?;
    let alices = tx.api_keys_of(KeyOwner::User(alice.id)).await.step("list alice's keys")?;
    let bot_keys = tx.api_keys_of(KeyOwner::ServiceAccount(bot.id)).await.step("list the bot's keys")?;
    let unknown = tx.api_key(&key_id("Unknown")?).await.step("read an unknown key")?;
    tx.commit().await.step("end the read")?;

    ensure_keys("the person's key by id", persons_by_id.as_slice(), slice::from_ref(&persons))?;
    ensure_keys("the service account's key by id", bots_by_id.as_slice(), slice::from_ref(&bots))?;
    ensure_keys("alice's keys", &alices, &[persons])?;
    ensure_keys("the bot's keys", &bot_keys, &[bots])?;
    ensure_keys("an unknown key", unknown.as_slice(), &[])
}

/// A key whose id is taken, or whose owner does not exist (no such person, no such service account,
/// or an account of the other kind), is `Conflict { entity: "api_key" }`, and the key already there is
/// left alone.
pub async fn a_reused_api_key_id_or_a_missing_owner_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    write_organizations(store, slice::from_ref(&acme)).await?;
    let bot = service_account(1, acme.id, "Bot")?;
    write_service_accounts(store, slice::from_ref(&bot)).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let first = api_key("Taken", KeyOwner::User(alice.id), 1)?;
    write_api_keys(store, slice::from_ref(&first)).await?;

    let refused = [
        (
            "a reused id",
            ApiKey { secret_hash: token(9), ..api_key("Taken", KeyOwner::ServiceAccount(bot.id), 5)? },
        ),
        ("a missing person", api_key("NoPerson", KeyOwner::User(user_id(9)), 1)?),
        ("a missing service account", api_key("NoBot", KeyOwner::ServiceAccount(service_account_id(9)), 1)?),
        ("a person named as a service account", api_key("Crossed1", KeyOwner::ServiceAccount(alice.id), 1)?),
        ("a service account named as a person", api_key("Crossed2", KeyOwner::User(bot.id), 1)?),
    ];
    let mut outcomes = Vec::new();
    for (what, key) in &refused {
        let mut tx = store.begin().await.step("begin an insert")?;
        outcomes.push((*what, tx.insert_api_key(key).await));
        tx.rollback().await.step("roll back the insert")?;
    }

    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut left = Vec::new();
    for (_, key) in &refused[1..] {
        left.extend(tx.api_key(&key.id).await.step("read a refused key")?);
    }
    let taken = tx.api_key(&first.id).await.step("read the first key")?;
    let bot_keys = tx.api_keys_of(KeyOwner::ServiceAccount(bot.id)).await.step("list the bot's keys")?;
    let as_person = tx.api_keys_of(KeyOwner::User(bot.id)).await.step("list the bot as a person")?;
    tx.commit().await.step("end the read")?;

    for (what, outcome) in outcomes {
        ensure_conflict(what, outcome, "api_key")?;
    }
    ensure_keys("refused keys", &left, &[])?;
    ensure_keys("the first key", taken.as_slice(), &[first])?;
    ensure_keys("the bot's keys", &bot_keys, &[])?;
    ensure_keys("the bot's keys as a person", &as_person, &[])
}

/// `api_keys_of` lists every key of one owner, revoked and expired ones included, newest first (keys
/// made in the same millisecond in byte order of their id, so both engines agree), and no one
/// else's: not another person's, and not those of a service account under the same id kind.
/// `count_live_api_keys_of` counts only keys neither revoked nor expired at `now` (a key expiring
/// exactly at `now` is expired).
pub async fn api_keys_of_lists_one_owners_keys_newest_first_and_only_live_ones_are_counted(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    write_organizations(store, slice::from_ref(&acme)).await?;
    let bot = service_account(1, acme.id, "Bot")?;
    write_service_accounts(store, slice::from_ref(&bot)).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let now = 1_000;
    let alices = |id: &str, created: i64| api_key(id, KeyOwner::User(alice.id), created);
    let old = alices("Old", 1)?;
    let expired = ApiKey { expires_at: at(now), ..alices("Expired", 2)? };
    // Same millisecond, and ids whose byte order ('B' < 'a') differs from a natural-language one.
    let revoked = ApiKey { revoked_at: Some(at(4)), ..alices("Bravo", 3)? };
    let expiring = ApiKey { expires_at: at(now + 1), ..alices("alpha", 3)? };
    let bobs = api_key("Bob", KeyOwner::User(bob.id), 5)?;
    let bots = api_key("Bot", KeyOwner::ServiceAccount(bot.id), 6)?;
    write_api_keys(
        store,
        &[old.clone(), expiring.clone(), bobs.clone(), revoked.clone(), bots.clone(), expired.clone()],
    )
    .await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_alice = tx.api_keys_of(KeyOwner::User(alice.id)).await.step("list alice's keys")?;
    let of_bob = tx.api_keys_of(KeyOwner::User(bob.id)).await.step("list bob's keys")?;
    let of_bot = tx.api_keys_of(KeyOwner::ServiceAccount(bot.id)).await.step("list the bot's keys")?;
    let alice_as_bot =
        tx.api_keys_of(KeyOwner::ServiceAccount(alice.id)).await.step("list alice as a service account")?;
    let of_nobody = tx.api_keys_of(KeyOwner::User(user_id(9))).await.step("list a stranger's keys")?;
    let mut counts = Vec::new();
    for (owner, when) in [
        (KeyOwner::User(alice.id), at(now)),
        (KeyOwner::User(alice.id), at(now - 1)),
        (KeyOwner::User(alice.id), at(now + 1)),
        (KeyOwner::User(bob.id), at(now)),
        (KeyOwner::ServiceAccount(bot.id), at(now)),
        (KeyOwner::User(bot.id), at(now)),
        (KeyOwner::User(user_id(9)), at(now)),
    ] {
        counts.push(tx.count_live_api_keys_of(owner, when).await.step("count live keys")?);
    }
    tx.commit().await.step("end the read")?;

    ensure_keys("alice's keys, newest first", &of_alice, &[revoked, expiring, expired, old])?;
    ensure_keys("bob's keys", &of_bob, &[bobs])?;
    ensure_keys("the bot's keys", &of_bot, &[bots])?;
    ensure_keys("alice's id as a service account", &alice_as_bot, &[])?;
    ensure_keys("a stranger's keys", &of_nobody, &[])?;
    ensure_eq(
        "live keys of alice (now, a moment before, a moment after), bob, the bot, the bot as a person, a stranger",
        &counts,
        &vec![2, 3, 1, 1, 1, 0, 0],
    )
}

/// Rotating a key keeps the digest it replaces as `previous`, until the time given, and a second
/// rotation replaces that one; revoking it works once (the first time stays), and a revoked key is
/// not rotated any more. Neither touches another key, and a missing key is reported as false.
pub async fn rotating_an_api_key_keeps_the_old_digest_a_while_and_a_revoked_key_is_not_rotated(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let rotating = api_key("Rotating", KeyOwner::User(alice.id), 1)?;
    let other = api_key("Other", KeyOwner::User(alice.id), 1)?;
    write_api_keys(store, &[rotating.clone(), other.clone()]).await?;
    let missing = key_id("Missing")?;

    let mut tx = store.begin().await.step("begin the first rotation")?;
    let first = tx.rotate_api_key(&rotating.id, &token(0x11), at(500)).await.step("rotate")?;
    tx.commit().await.step("commit the first rotation")?;
    let after_first = committed_api_key(store, &rotating.id).await?;
    let mut tx = store.begin().await.step("begin the second rotation")?;
    let second = tx.rotate_api_key(&rotating.id, &token(0x22), at(600)).await.step("rotate again")?;
    tx.commit().await.step("commit the second rotation")?;
    let after_second = committed_api_key(store, &rotating.id).await?;
    let mut tx = store.begin().await.step("begin the revocation")?;
    let revoked = tx.revoke_api_key(&rotating.id, at(700)).await.step("revoke")?;
    let revoked_again = tx.revoke_api_key(&rotating.id, at(800)).await.step("revoke again")?;
    let rotated_revoked =
        tx.rotate_api_key(&rotating.id, &token(0x33), at(900)).await.step("rotate the revoked key")?;
    let rotated_missing =
        tx.rotate_api_key(&missing, &token(0x44), at(900)).await.step("rotate a missing key")?;
    let revoked_missing = tx.revoke_api_key(&missing, at(900)).await.step("revoke a missing key")?;
    tx.commit().await.step("commit the revocation")?;
    let after_revocation = committed_api_key(store, &rotating.id).await?;
    let other_after = committed_api_key(store, &other.id).await?;
    let missing_after = committed_api_key(store, &missing).await?;

    ensure_eq("rotations", &(first, second), &(true, true))?;
    let once =
        ApiKey { secret_hash: token(0x11), previous: Some((rotating.secret_hash, at(500))), ..rotating };
    ensure_keys("after the first rotation", after_first.as_slice(), slice::from_ref(&once))?;
    let twice = ApiKey { secret_hash: token(0x22), previous: Some((token(0x11), at(600))), ..once };
    ensure_keys("after the second rotation", after_second.as_slice(), slice::from_ref(&twice))?;
    ensure_eq("revocations", &(revoked, revoked_again), &(true, false))?;
    ensure_eq("rotating a revoked key", &rotated_revoked, &false)?;
    ensure_eq("a missing key rotated and revoked", &(rotated_missing, revoked_missing), &(false, false))?;
    let revoked_key = ApiKey { revoked_at: Some(at(700)), ..twice };
    ensure_keys("after the revocation", after_revocation.as_slice(), &[revoked_key])?;
    ensure_keys("the other key", other_after.as_slice(), &[other])?;
    ensure_keys("no key was created", missing_after.as_slice(), &[])
}

/// A use moves `last_used_at` forward only (an older one changes nothing, ip included) and keeps the
/// sealed ip of that use byte for byte with the key that sealed it; a use without an ip leaves none,
/// so the ip shown is always that of the last use. Before any use, and for a missing key, there is
/// no ip; other keys are not touched.
pub async fn recording_an_api_key_use_only_moves_it_forward_and_keeps_the_sealed_ip_of_that_use(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let used = api_key("Used", KeyOwner::User(alice.id), 1)?;
    let other = api_key("Other", KeyOwner::User(alice.id), 1)?;
    write_api_keys(store, &[used.clone(), other.clone()]).await?;
    let missing = key_id("Missing")?;

    let before = committed_last_ip(store, &used.id).await?;
    record_use(store, &used.id, at(10), Some(&Sealed(every_byte())), Some("pii-1")).await?;
    let first = (committed_api_key(store, &used.id).await?, committed_last_ip(store, &used.id).await?);
    record_use(store, &used.id, at(5), Some(&sealed("older")), Some("pii-2")).await?;
    let after_older = (committed_api_key(store, &used.id).await?, committed_last_ip(store, &used.id).await?);
    record_use(store, &used.id, at(20), None, None).await?;
    let without_ip = (committed_api_key(store, &used.id).await?, committed_last_ip(store, &used.id).await?);
    record_use(store, &used.id, at(30), Some(&sealed("198.51.100.7")), Some("pii-2")).await?;
    let latest = (committed_api_key(store, &used.id).await?, committed_last_ip(store, &used.id).await?);
    record_use(store, &missing, at(40), Some(&sealed("203.0.113.9")), Some("pii-2")).await?;
    let missing_after =
        (committed_api_key(store, &missing).await?, committed_last_ip(store, &missing).await?);
    let other_after =
        (committed_api_key(store, &other.id).await?, committed_last_ip(store, &other.id).await?);

    let used_at = |offset: i64| ApiKey { last_used_at: Some(at(offset)), ..used.clone() };
    let ip_under = |ip: Sealed, key: &str| Some((ip.0, key.to_owned()));
    ensure_eq("the ip before any use", &before, &None)?;
    ensure_keys("after the first use", first.0.as_slice(), &[used_at(10)])?;
    ensure_eq("the ip of the first use", &first.1, &ip_under(Sealed(every_byte()), "pii-1"))?;
    ensure_keys("after an older use", after_older.0.as_slice(), &[used_at(10)])?;
    ensure_eq("the ip after an older use", &after_older.1, &first.1)?;
    ensure_keys("after a use without an ip", without_ip.0.as_slice(), &[used_at(20)])?;
    ensure_eq("the ip after a use without one", &without_ip.1, &None)?;
    ensure_keys("after the latest use", latest.0.as_slice(), &[used_at(30)])?;
    ensure_eq("the ip of the latest use", &latest.1, &ip_under(sealed("198.51.100.7"), "pii-2"))?;
    ensure_keys("a missing key", missing_after.0.as_slice(), &[])?;
    ensure_eq("a missing key's ip", &missing_after.1, &None)?;
    ensure_keys("the other key", other_after.0.as_slice(), &[other])?;
    ensure_eq("the other key's ip", &other_after.1, &None)
}

/// The re-encryption job finds a key's sealed ip when it is under another key (the row named by the
/// key's public id, its one field `last_used_ip`, in id order up to the limit; keys never used, or
/// used without an ip, hold nothing and are never found), reseals it only while it is still under the
/// key it was read under, and counts it under its key.
pub async fn an_api_keys_last_ip_is_found_resealed_and_counted(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    // The account's own sealed fields are under a key of their own, so only keys are counted below.
    let alice = user(1, "alice@example.com");
    let alice = StoredUser { pii_key: "pii-users".to_owned(), ..alice };
    write_users(store, slice::from_ref(&alice)).await?;
    let owner = KeyOwner::User(alice.id);
    // Written out of id order: "Echo" < "Kilo" < "Lima".
    let (kilo, echo, lima) =
        (api_key("Kilo", owner, 1)?, api_key("Echo", owner, 2)?, api_key("Lima", owner, 3)?);
    let (unused, anonymous) = (api_key("Mike", owner, 4)?, api_key("November", owner, 5)?);
    write_api_keys(store, &[kilo.clone(), echo.clone(), lima.clone(), unused.clone(), anonymous.clone()])
        .await?;
    let ip =
        |key: &ApiKey| Sealed([b"ip of ".as_slice(), key.id.as_str().as_bytes(), &every_byte()].concat());
    record_use(store, &kilo.id, at(10), Some(&ip(&kilo)), Some("pii-1")).await?;
    record_use(store, &echo.id, at(11), Some(&ip(&echo)), Some("pii-1")).await?;
    record_use(store, &lima.id, at(12), Some(&ip(&lima)), Some("pii-2")).await?;
    record_use(store, &anonymous.id, at(13), None, None).await?;
    let row = |key: &ApiKey, under: &str| PiiRow {
        id: key.id.as_str().to_owned(),
        key: under.to_owned(),
        fields: vec![Some(ip(key))],
    };

    let mut tx = store.begin_read().await.step("begin the finding")?;
    let mut found = Vec::new();
    for (key, limit) in [("pii-2", 10), ("pii-2", 1), ("pii-1", 10), ("pii-3", 10), ("pii-2", 0)] {
        found.push(tx.pii_rows_not_under(PiiTable::ApiKeys, key, limit).await.step("find rows")?);
    }
    let mut before = Vec::new();
    for key in ["pii-1", "pii-2"] {
        before.push(tx.count_pii_rows_under(key).await.step("count rows before the reseal")?);
    }
    tx.commit().await.step("end the finding")?;

    let mut tx = store.begin().await.step("begin the reseal")?;
    let read = tx.pii_rows_not_under(PiiTable::ApiKeys, "pii-2", 10).await.step("read a batch")?;
    let mut resealed_rows = Vec::new();
    for row in &read {
        let new = PiiRow { fields: row.fields.iter().map(resealed).collect(), ..row.clone() };
        resealed_rows.push(tx.reseal_pii_row(PiiTable::ApiKeys, &new, "pii-2").await.step("reseal a row")?);
    }
    tx.commit().await.step("commit the reseal")?;
    let mut tx = store.begin().await.step("begin the stale reseal")?;
    let mut stale = Vec::new();
    for row in &read {
        let other = PiiRow { fields: vec![Some(sealed("stale"))], ..row.clone() };
        stale.push(
            tx.reseal_pii_row(PiiTable::ApiKeys, &other, "pii-3").await.step("reseal from a stale read")?,
        );
    }
    tx.commit().await.step("commit the stale reseal")?;

    let mut tx = store.begin_read().await.step("begin the reads")?;
    let left = tx.pii_rows_not_under(PiiTable::ApiKeys, "pii-2", 10).await.step("find rows left")?;
    let mut after = Vec::new();
    for key in ["pii-1", "pii-2", "pii-3"] {
        after.push(tx.count_pii_rows_under(key).await.step("count rows after the reseal")?);
    }
    let mut ips = Vec::new();
    let mut keys = Vec::new();
    for key in [&echo, &kilo, &lima, &unused, &anonymous] {
        ips.push(tx.api_key_last_ip(&key.id).await.step("read a last ip")?.map(|(s, k)| (s.0, k)));
        keys.extend(tx.api_key(&key.id).await.step("read a key")?);
    }
    tx.commit().await.step("end the reads")?;

    let expected_found = vec![
        vec![row(&echo, "pii-1"), row(&kilo, "pii-1")],
        vec![row(&echo, "pii-1")],
        vec![row(&lima, "pii-2")],
        vec![row(&echo, "pii-1"), row(&kilo, "pii-1"), row(&lima, "pii-2")],
        Vec::new(),
    ];
    ensure_eq("rows not under pii-2, pii-2 (one), pii-1, pii-3, pii-2 (none)", &found, &expected_found)?;
    ensure_eq("rows under pii-1 and pii-2 before", &before, &vec![2, 1])?;
    ensure_eq("the batch read for the reseal", &read, &expected_found[0])?;
    ensure_eq("rows resealed", &resealed_rows, &vec![true; 2])?;
    ensure_eq("rows resealed from a stale read", &stale, &vec![false; 2])?;
    ensure_eq("rows left under other keys", &left, &Vec::new())?;
    ensure_eq("rows under pii-1, pii-2 and pii-3 after", &after, &vec![0, 3, 0])?;
    let moved = |key: &ApiKey| resealed(&Some(ip(key))).map(|s| (s.0, "pii-2".to_owned()));
    let expected_ips = vec![moved(&echo), moved(&kilo), Some((ip(&lima).0, "pii-2".to_owned())), None, None];
    ensure_eq("last ips of echo, kilo, lima, mike and november", &ips, &expected_ips)?;
    // A reseal changes the sealed ip and its key, nothing else about the key.
    let last_used = |key: &ApiKey, offset: i64| ApiKey { last_used_at: Some(at(offset)), ..key.clone() };
    ensure_keys(
        "the keys after the reseal",
        &keys,
        &[
            last_used(&echo, 11),
            last_used(&kilo, 10),
            last_used(&lima, 12),
            unused,
            last_used(&anonymous, 13),
        ],
    )
}

/// Deleting a person's account deletes every key it owns, with the sealed ip of its last use, and
/// no one else's.
pub async fn deleting_an_account_takes_its_api_keys(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (doomed, kept) = (user(1, "doomed@example.com"), user(2, "kept@example.com"));
    write_users(store, &[doomed.clone(), kept.clone()]).await?;
    let doomed_keys = [
        api_key("Doomed1", KeyOwner::User(doomed.id), 1)?,
        api_key("Doomed2", KeyOwner::User(doomed.id), 2)?,
    ];
    let kept_key = api_key("Kept", KeyOwner::User(kept.id), 1)?;
    let mut keys = doomed_keys.to_vec();
    keys.push(kept_key.clone());
    write_api_keys(store, &keys).await?;
    record_use(store, &doomed_keys[0].id, at(10), Some(&sealed("192.0.2.1")), Some("pii-keys")).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_user(doomed.id, at(20)).await.step("delete the account")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut gone = Vec::new();
    for key in &doomed_keys {
        gone.extend(tx.api_key(&key.id).await.step("read a deleted account's key")?);
    }
    let its_keys = tx.api_keys_of(KeyOwner::User(doomed.id)).await.step("list its keys")?;
    let live = tx.count_live_api_keys_of(KeyOwner::User(doomed.id), at(20)).await.step("count its keys")?;
    let sealed_left = tx.count_pii_rows_under("pii-keys").await.step("count the sealed ips")?;
    let kept_keys = tx.api_keys_of(KeyOwner::User(kept.id)).await.step("list the other account's keys")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_keys("its keys by id", &gone, &[])?;
    ensure_keys("its key list", &its_keys, &[])?;
    ensure_eq("its live keys", &live, &0)?;
    ensure_eq("sealed ips left", &sealed_left, &0)?;
    ensure_keys("the other account's keys", &kept_keys, &[kept_key])
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const DAY: i64 = 86_400_000;

/// A service account's id: drawn from its own seeds, so it never equals a fixture person's
/// ([`user_id`]), as the two tables never share an id.
fn service_account_id(seed: u8) -> UserId {
    let mut bytes = [seed; 16];
    bytes[0] = 0x5a;
    bytes[15] = !seed;
    UserId::from_random_bytes(bytes)
}

/// An active member account of `organization`, created and last updated at [`T0`](super::at) plus
/// the seed.
fn service_account(seed: u8, organization: OrganizationId, name: &str) -> Result<ServiceAccount, Failure> {
    Ok(ServiceAccount {
        id: service_account_id(seed),
        organization,
        name: display_name(name)?,
        role: BuiltinRole::Member,
        active: true,
        created_at: at(i64::from(seed)),
        updated_at: at(i64::from(seed)),
    })
}

/// A key id starting with `prefix` (base62), padded with `0` to its 22 characters, so that tests
/// choose the byte order of ids.
fn key_id(prefix: &str) -> Result<ApiKeyId, Failure> {
    let text = format!("{prefix:0<22}");
    ApiKeyId::parse(&text).map_err(|e| Failure(format!("fixture key id {text:?}: {e}")))
}

fn permission(text: &str) -> Result<Permission, Failure> {
    Permission::parse(text).map_err(|e| Failure(format!("fixture permission {text:?}: {e}")))
}

/// Parses fixture text into whatever type the caller needs (networks, here), without this crate
/// naming the parsing crate.
fn parsed<T: FromStr>(text: &str) -> Result<T, Failure>
where
    T::Err: fmt::Display,
{
    text.parse().map_err(|e| Failure(format!("fixture {text:?}: {e}")))
}

/// A key with id [`key_id(id)`](key_id), named after it, made `created` milliseconds after
/// [`T0`](super::at) and good for 90 days, allowed to read users from anywhere, never rotated, revoked
/// or used; its secret digest is derived from the id, so two keys never share one.
fn api_key(id: &str, owner: KeyOwner, created: i64) -> Result<ApiKey, Failure> {
    Ok(ApiKey {
        id: key_id(id)?,
        owner,
        name: display_name(&format!("Key {id}"))?,
        scopes: vec![permission("users:read")?],
        allowed_cidrs: Vec::new(),
        secret_hash: TokenHash(std::array::from_fn(|i| id.as_bytes().get(i).copied().unwrap_or(0xa5))),
        previous: None,
        created_at: at(created),
        expires_at: at(created + 90 * DAY),
        revoked_at: None,
        last_used_at: None,
    })
}

/// Every field of a key, digests included, since `ApiKey`'s own `Debug` leaves most of them out.
fn described(keys: &[ApiKey]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{{ id: {}, owner: {:?}, name: {:?}, scopes: {:?}, allowed_cidrs: {:?}, secret_hash: {}, \
                 previous: {:?}, created_at: {:?}, expires_at: {:?}, revoked_at: {:?}, last_used_at: {:?} }}",
                k.id,
                k.owner,
                k.name.as_str(),
                k.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                k.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                k.secret_hash.to_hex(),
                k.previous.map(|(hash, until)| (hash.to_hex(), until)),
                k.created_at,
                k.expires_at,
                k.revoked_at,
                k.last_used_at,
            )
        })
        .collect()
}

fn ensure_keys(what: &str, actual: &[ApiKey], expected: &[ApiKey]) -> Outcome {
    ensure(actual == expected, || {
        format!("{what}: expected {:#?}, got {:#?}", described(expected), described(actual))
    })
}

/// Inserts and commits the service accounts in a transaction of their own.
async fn write_service_accounts(store: &dyn Store, accounts: &[ServiceAccount]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for account in accounts {
        tx.insert_service_account(account).await.step("insert a service account")?;
    }
    tx.commit().await.step("commit the service accounts")
}

/// Inserts and commits the keys in a transaction of their own.
async fn write_api_keys(store: &dyn Store, keys: &[ApiKey]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for key in keys {
        tx.insert_api_key(key).await.step("insert an API key")?;
    }
    tx.commit().await.step("commit the API keys")
}

/// Records one use and commits it, as one authenticated request does.
async fn record_use(
    store: &dyn Store,
    id: &ApiKeyId,
    when: Timestamp,
    ip: Option<&Sealed>,
    pii_key: Option<&str>,
) -> Outcome {
    let mut tx = store.begin().await.step("begin a use")?;
    tx.record_api_key_use(id, when, ip, pii_key).await.step("record a use")?;
    tx.commit().await.step("commit the use")
}

/// The key as a new read transaction sees it.
async fn committed_api_key(store: &dyn Store, id: &ApiKeyId) -> Result<Option<ApiKey>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.api_key(id).await.step("read the key")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The sealed ip of the key's last use (as bytes, so a failure shows them) and the key that sealed
/// it, as a new read transaction sees them.
async fn committed_last_ip(store: &dyn Store, id: &ApiKeyId) -> Result<Option<(Vec<u8>, String)>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.api_key_last_ip(id).await.step("read the last ip")?;
    reader.commit().await.step("end the read")?;
    Ok(found.map(|(ip, key)| (ip.0, key)))
}

/// A service account holds exactly the custom roles it was given, only its own organization's
/// (another's, or a missing one, is `Conflict { entity: "service_account" }`), in name order; it is
/// listed among a role's holders beside members; deleting the role or the account ends the holding.
pub async fn a_service_account_holds_its_organizations_custom_roles_and_is_listed_among_their_holders(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    let globex = organization(2, "globex")?;
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let make_role = |seed: u8,
                     organization: OrganizationId,
                     name: &str|
     -> Result<portcullis_domain::CustomRole, Failure> {
        Ok(portcullis_domain::CustomRole {
            id: portcullis_domain::RoleId::from_random_bytes([seed; 16]),
            organization,
            name: portcullis_domain::RoleName::parse(name).map_err(|e| Failure(format!("{e}")))?,
            permissions: vec![Permission::parse("invoices:*").map_err(|e| Failure(format!("{e}")))?],
            created_at: at(0),
            updated_at: at(0),
        })
    };
    let zeta = make_role(31, acme.id, "zeta")?;
    let alpha = make_role(32, acme.id, "alpha")?;
    let foreign = make_role(33, globex.id, "foreign")?;
    let account = service_account(1, acme.id, "Robot")?;
    let mut tx = store.begin().await.step("begin a write")?;
    for role in [&zeta, &alpha, &foreign] {
        tx.insert_role(role).await.step("insert a role")?;
    }
    tx.insert_service_account(&account).await.step("insert the service account")?;
    tx.set_service_account_roles(acme.id, account.id, &[zeta.id, alpha.id, zeta.id])
        .await
        .step("give two roles")?;
    tx.commit().await.step("commit")?;

    let mut tx = store.begin().await.step("begin a write")?;
    let refused = tx.set_service_account_roles(acme.id, account.id, &[foreign.id]).await;
    drop(tx);
    ensure_conflict("another organization's role", refused, "service_account")?;
    let mut tx = store.begin().await.step("begin a write")?;
    let refused = tx.set_service_account_roles(globex.id, account.id, &[foreign.id]).await;
    drop(tx);
    ensure_conflict("a service account of another organization", refused, "service_account")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let held = tx.service_account_roles(account.id).await.step("its roles")?;
    let holders = tx.role_holders(acme.id, zeta.id, 10).await.step("zeta's holders")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("its roles, in name order", &held, &vec![alpha.clone(), zeta.clone()])?;
    ensure_eq("zeta's holders", &holders, &vec![account.id])?;

    let mut tx = store.begin().await.step("begin a write")?;
    tx.delete_role(acme.id, zeta.id).await.step("delete zeta")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let held = tx.service_account_roles(account.id).await.step("its roles")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("zeta's holding went with zeta", &held, &vec![alpha.clone()])?;

    let mut tx = store.begin().await.step("begin a write")?;
    tx.delete_service_account(account.id).await.step("delete the account")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let holders = tx.role_holders(acme.id, alpha.id, 10).await.step("alpha's holders")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("the account's holdings went with it", &holders, &Vec::<UserId>::new())
}
